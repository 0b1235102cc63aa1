"""Reading the owner's own files that their mode keeps the owner out of.

An unprivileged store keeps modes as the archive gives them, and cannot
bypass them as root does: ``/etc/shadow`` is ``0000`` in Fedora and RHEL
images, ``sudo`` is ``4111``.  To copy, export or compare such a file, its
owner's read bit is added for the moment of the ``open`` and the mode put
back at once (the open file stays readable; the file's times are untouched).
Root never gets here: its opens do not fail for a mode.

A directory of mode ``0000`` cannot be served that way: a walk stays inside
it.  For the commands that read whole trees, :func:`enter_owner_namespace`
makes the process root of a user namespace that maps only its own user and
group, as rootless podman's storage runs, where the owner reads and
searches its own files and directories whatever their modes.
"""

from __future__ import annotations

import os
import stat

#: How files are opened for reading: never through a symlink.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_readable(name: str, dir_fd: int | None = None, flags: int = READ_FLAGS) -> int:
    """``os.open(name, flags, dir_fd=dir_fd)``, or, refused for its mode, the same regular file
    of ours opened as above; PermissionError as before for anything else."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        pass
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        inode = f"/proc/self/fd/{path_fd}"  # the very file opened above, whatever its name now
        for _ in range(_TRIES):
            st = os.fstat(path_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                break
            mode = stat.S_IMODE(st.st_mode)
            try:
                if mode & 0o400:  # another reader's grant: it serves, unless taken back meanwhile
                    return os.open(inode, flags & ~os.O_NOFOLLOW)
                os.chmod(inode, mode | 0o400)
                try:
                    return os.open(inode, flags & ~os.O_NOFOLLOW)
                finally:
                    os.chmod(inode, mode)
            except PermissionError:
                continue  # another reader took its grant back between our chmod and open: again
            except OSError as e:  # no grant at all (a read-only file system): refused as before
                raise PermissionError(e.errno, e.strerror, name) from e
        raise PermissionError(13, os.strerror(13), name)
    finally:
        os.close(path_fd)


#: Rounds of grant and open before giving up (readers of one file race only briefly).
_TRIES = 100


def enter_owner_namespace() -> bool:
    """Make this process (single-threaded, not root) root of a new user namespace mapping
    only its own user and group, for the rest of its life; whether it did.

    There, the capabilities that pass over modes hold for every file the user
    owns (and for no other), so a tree the user owns is read whole whatever
    its modes; files made there are the user's as before.  Owners and groups
    the map lacks read as the overflow id (65534): a user with supplementary
    groups (whose files may carry them) is left outside, and so should be a
    process reading other users' files.  Mounts cannot be made there (the
    mount namespace stays the machine's, and set-user-ID helpers lose their
    power).  :func:`graphdriver.fs.privileged` stays false.  False, and
    nothing changed, where unprivileged user namespaces are disabled;
    :class:`~graphdriver.errors.Unsupported` if the namespace was made but its
    maps could not be written (it cannot be left again).
    """
    import graphdriver.fs

    if os.geteuid() == 0 or graphdriver.fs._in_owner_namespace:
        return False
    uid, gid = os.geteuid(), os.getegid()
    if set(os.getgroups()) - {gid}:
        return False
    try:
        # A process that changed its ids is not dumpable: its /proc files are root's, and
        # the maps of a namespace it made could not be written.
        if os.stat("/proc/self/uid_map").st_uid != uid:
            return False
    except OSError:
        return False
    if "HOME" not in os.environ:  # found by name: in the namespace, the user is uid 0
        import pwd

        try:
            os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
        except KeyError:
            pass
    if not _unshare_user() and not (_last_thread_gone() and _unshare_user()):
        return False
    graphdriver.fs._in_owner_namespace = True
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as e:
        from graphdriver.errors import Unsupported

        raise Unsupported("reading files as their owner",
                          f"the user namespace's {name} could not be written ({e.strerror})") from e
    return True


def _unshare_user() -> bool:
    """``unshare(CLONE_NEWUSER)``; whether it worked (a process of several threads cannot)."""
    unshare = getattr(os, "unshare", None)  # Python 3.12 and later
    if unshare is None:
        from graphdriver.fs import syscalls

        return syscalls.unshare_user()
    try:
        unshare(os.CLONE_NEWUSER)  # type: ignore[attr-defined]
    except OSError:
        return False
    return True


def _last_thread_gone() -> bool:
    """Wait (a second at most) until this process is one thread, where no thread of Python's
    runs any more but one just joined may still be ending in the kernel."""
    import sys

    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return False
    import time

    for _ in range(1000):
        try:
            if len(os.listdir("/proc/self/task")) == 1:
                return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


def closed_folder(root: str) -> str | None:
    """The first folder in the tree at *root* (itself included) that this user owns and may
    not list or search (its mode lacks the owner's ``r`` or ``x``), or None.  Symlinks are
    not followed; folders the user may not reach or that are not the user's are left out."""
    uid = os.geteuid()
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == uid and st.st_mode & 0o500 != 0o500:
            return path
        try:
            with os.scandir(path) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return None

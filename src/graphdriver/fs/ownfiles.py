"""Reading the owner's own files that their mode keeps the owner out of.

An unprivileged store keeps modes as the archive gives them, and cannot
bypass them as root does: ``/etc/shadow`` is ``0000`` in Fedora and RHEL
images, ``sudo`` is ``4111``.  To copy, export or compare such a file, or read
its ``user.*`` xattrs (which need read permission too), it is opened by a
helper process that is root of a user namespace mapping only the user and
its group (:func:`graphdriver.fs.asowner.call`), where the capability that
passes over modes holds for the user's files; the open file comes back over a
socket.  The file's mode is never changed to read it: another process looking
at it (a ``check``, a copy to a child layer) sees the mode stored, and a reader
killed half way leaves nothing to undo.  Files the user may read never get
there.  Root never gets here: its opens do not fail for a mode.

A directory of mode ``0000`` cannot be served one file at a time: a walk stays
inside it.  :func:`graphdriver.fs.tree.copy_tree` copies a tree holding one in
such a namespace, in a child process of its own; for the commands that read
whole trees, :func:`enter_owner_namespace` makes the process itself root of
such a namespace, as rootless podman's storage runs, where the owner reads and
searches its own files and directories whatever their modes.
"""

from __future__ import annotations

import os
import stat

from graphdriver.fs import asowner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: How files are opened for reading: never through a symlink.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_readable(name: str, dir_fd: int | None = None, flags: int = READ_FLAGS) -> int:
    """``os.open(name, flags, dir_fd=dir_fd)``, or, refused for its mode, the same regular file
    of ours opened as its owner, its mode untouched; PermissionError as before for anything
    else, or where no user namespace can be made."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError as e:
        refused = e
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode) or not _ours(st):
            raise refused
        flags &= ~os.O_NOFOLLOW  # the magic link is followed to the very file
        try:
            return int(asowner.call(_open_inode, (flags,), path_fd, sends_fd=True, name=name))
        except PermissionError as e:  # no namespace here (or the file's group not the user's)
            raise refused from e
    finally:
        os.close(path_fd)


def _open_inode(path_fd: int, flags: int) -> int:
    """In the owner's helper: the file *path_fd* names (``O_PATH``), opened with *flags*."""
    return os.open(f"/proc/self/fd/{path_fd}", flags)


def get_xattrs(target: int | str, names: Iterable[str], *, follow_symlinks: bool = True) -> dict[str, bytes]:
    """The values of the extended attributes *names* of *target* (an fd or a path), those
    removed since they were listed left out.  Those of a file or folder of ours whose mode
    keeps us from reading them (``user.*`` ones need read permission) are read as its
    owner, its mode untouched."""
    wanted = list(names)
    try:
        return _get_xattrs(target, wanted, follow_symlinks)
    except PermissionError as e:
        st = os.stat(target, follow_symlinks=follow_symlinks)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or not _ours(st):
            raise
        refused = e
    name = target if isinstance(target, str) else ""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    path_fd = target if isinstance(target, int) else os.open(target, flags)
    try:
        return dict(asowner.call(_inode_xattrs, (wanted,), path_fd, name=name))
    except PermissionError as e:  # no namespace here
        raise refused from e
    finally:
        if path_fd != target:
            os.close(path_fd)


def _inode_xattrs(fd: int, names: list[str]) -> dict[str, bytes]:
    """In the owner's helper: the xattrs *names* of the file *fd* (of any kind) is open on."""
    return _get_xattrs(f"/proc/self/fd/{fd}", names, True)


def _get_xattrs(target: int | str, names: list[str], follow_symlinks: bool) -> dict[str, bytes]:
    import errno

    values: dict[str, bytes] = {}
    for name in names:
        try:
            values[name] = os.getxattr(target, name, follow_symlinks=follow_symlinks)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed since it was listed
                raise
    return values


def _ours(st: os.stat_result) -> bool:
    """Whether a file is the user's, owner and group (both must be mapped in the namespace
    for its capabilities to pass over the file's mode)."""
    return st.st_uid == os.geteuid() and st.st_gid == os.getegid()


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

    if not asowner.available(whole_trees=True):
        return False
    uid, gid = os.geteuid(), os.getegid()
    if "HOME" not in os.environ:  # found by name: in the namespace, the user is uid 0
        import pwd

        try:
            os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
        except KeyError:
            pass
    if not asowner.unshare_user() and not (_last_thread_gone() and asowner.unshare_user()):
        return False
    graphdriver.fs._in_owner_namespace = True
    try:
        asowner.map_own_ids(uid, gid)
    except OSError as e:
        from graphdriver.errors import Unsupported

        raise Unsupported("reading files as their owner",
                          f"the user namespace's {e.filename} could not be written ({e.strerror})") from e
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
    from graphdriver.fs.longpaths import ShortPaths

    uid = os.geteuid()
    stack = [root]
    with ShortPaths() as short:  # a layer's path may be too long with the store's before it
        while stack:
            path = stack.pop()
            try:
                st = os.lstat(short(path))
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            if st.st_uid == uid and st.st_mode & 0o500 != 0o500:
                return path
            try:
                entries = short.entries(path)
            except OSError:
                continue
            stack.extend(os.path.join(path, n) for n, e in entries.items() if e.is_dir(follow_symlinks=False))
    return None

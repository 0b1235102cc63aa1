"""Copy a directory tree with everything a layer's files carry.

:func:`copy_tree` is how the ``vfs`` driver makes a new layer from its parent: the
copy must be indistinguishable from the original to the tree walk that computes
changes and to the tarball exporter.  So it keeps file types, permission bits
(setuid, setgid and sticky included), owners, nanosecond times (of symlinks and
directories too), every extended attribute (ACLs and file capabilities included)
and hardlink groups.  Device nodes, fifos and sockets are recreated (a socket
is only a name: nothing listens on the copy).  File data is cloned
(``FICLONE``) where the filesystem can share extents, and otherwise copied in
the kernel with ``copy_file_range``.  A file with holes (a sparse file from an
archive, a disk image) keeps them: only its data is copied, as
``cp --sparse=auto`` does, where a plain copy would write out every hole.

The walk works on directory file descriptors and ``*at`` calls, one path
component at a time: no long path is resolved again for every file, and depth
is limited neither by ``PATH_MAX`` nor by Python's recursion limit, nor by the
open-file limit (past :data:`MAX_OPEN_DEPTH` levels, or fewer as a low limit
allows, ancestors' descriptors are released and reopened through ``..``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator

from graphdriver.fs import PRIVILEGED_XATTRS, asowner, fdlimit, privileged
from graphdriver.fs.levelwalk import LevelWalk
from graphdriver.fs.ownfiles import closed_folder, get_xattrs, open_readable
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.fs.longpaths import ShortPaths

#: ``_IOW(0x94, 9, int)``: make the destination file share the source's extents.
FICLONE = 0x40049409

# errnos by which FICLONE says "these two files cannot share extents here".
_NO_CLONE = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY})
# errnos by which copy_file_range / sendfile say "not between these files".
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
# Failures to set an owner that an unprivileged copy lives with (EINVAL: id unmapped).
_OWNER_DENIED = frozenset({errno.EPERM, errno.EINVAL})

_CHUNK = 1 << 30  # bytes asked of one copy_file_range/sendfile call
_RW_CHUNK = 1 << 20  # buffer of the read/write fallback
#: Directories deeper than this release their ancestors' descriptors (reopened via "..");
#: fewer under a low open-file limit (:func:`fdlimit.keepable`).
MAX_OPEN_DEPTH = 128

_CAPABILITY = "security.capability"  # cleared by chown, put back by shift_owners
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CopyStats(Plain):
    """What :func:`copy_tree` did."""

    __slots__ = ("bytes", "dirs", "dropped_xattrs", "files", "hardlinks", "reflinked", "skipped",
                 "specials", "symlinks")

    def __init__(self) -> None:
        #: Regular files whose data was copied (each hardlinked inode once).
        self.files = 0
        #: Bytes of file data copied or cloned.
        self.bytes = 0
        #: Whether any file's data was cloned rather than copied.
        self.reflinked = False
        self.dirs = 0
        self.symlinks = 0
        #: Extra names of an already copied inode, made with ``link``.
        self.hardlinks = 0
        #: Device nodes, fifos and sockets.
        self.specials = 0
        #: Entries that could not be recreated without privilege (device nodes).
        self.skipped: list[str] = []
        #: ``path: attribute`` for extended attributes the destination refused.
        self.dropped_xattrs: list[str] = []


def copy_tree(src: str, dst: str, *, reflink: bool | None = None) -> CopyStats:
    """Copy the tree at *src* into *dst*; returns what was copied.

    *dst* must be an empty directory or not exist (its parent must).  The root
    of *src* may be a symlink to a directory; nothing below it is followed.
    *reflink* ``None`` clones file data where the filesystem can and copies it
    otherwise, ``True`` requires cloning (``OSError`` where it fails) and
    ``False`` always copies the bytes, so that no extent is shared.

    Without privilege, entries whose owner cannot be set keep the copier's (as
    with ``cp -a``), and device nodes and ``trusted.*`` or ``security.*``
    attributes the destination refuses are left out and listed in the stats.
    A tree holding a folder of the user's that its mode closes to the user
    (``0000``) is copied, afresh, by a child process that is root of a user
    namespace mapping only the user (:func:`graphdriver.fs.asowner.run`), where
    the user's files open whatever their modes, as root copies them; never for a
    user with supplementary groups, or where such a namespace cannot be made.
    Every other failure raises ``OSError`` naming the source path and leaves a
    partial copy for the caller to remove.
    """
    try:
        return _TreeCopier(src, reflink).run(dst)
    except PermissionError as e:
        if not _closed_to_us(src):
            raise
        refused = e
    _clear(dst)
    try:
        return asowner.run(lambda: _TreeCopier(src, reflink).run(dst))
    except PermissionError as e:  # not even so (no namespace after all, a group not mapped there)
        raise refused from e


def _closed_to_us(src: str) -> bool:
    """Whether a copy without privilege may have failed for a folder of the user's closed to
    the user, which a copy as its owner would pass (see :func:`copy_tree`)."""
    return asowner.available(whole_trees=True) and closed_folder(src) is not None


def _clear(dst: str) -> None:
    """Remove what a failed copy left in *dst* (which stays, if it is there)."""
    try:
        names = os.listdir(dst)
    except FileNotFoundError:
        return
    for name in names:
        remove_tree(os.path.join(dst, name))


def reflink_supported(directory: str) -> bool:
    """Whether files in *directory* can be cloned (tried on two unnamed files)."""
    fds: list[int] = []
    try:
        for _ in range(2):
            fds.append(os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600))
        os.write(fds[0], b"\0" * 4096)
        fcntl.ioctl(fds[1], FICLONE, fds[0])
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)
    return True


def shift_owners(root: str, translate: Callable[[int, int], tuple[int, int]]) -> int:
    """Give every entry under *root* (itself included) the owner ``translate(uid, gid)``; returns how many.

    What a chown clears is put back: setuid/setgid bits and file capabilities.
    Symlinks are changed themselves, never followed; the walk keeps one
    descriptor per level, for :data:`MAX_OPEN_DEPTH` levels at most (fewer
    under a low open-file limit: deeper, the shallowest are released and
    reopened through ``..``), and no recursion.
    """
    changed = 0
    done: set[tuple[int, int]] = set()  # hard-linked inodes already shifted through another name

    def shift(dir_fd: int | None, name: str) -> bool:
        nonlocal changed
        st = os.lstat(name, dir_fd=dir_fd)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in done:
                return False
            done.add((st.st_dev, st.st_ino))
        owner = translate(st.st_uid, st.st_gid)
        if owner == (st.st_uid, st.st_gid):
            return stat.S_ISDIR(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                try:
                    caps: bytes | None = os.getxattr(fd, _CAPABILITY)
                except OSError:
                    caps = None
                os.fchown(fd, *owner)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                if caps is not None:
                    os.setxattr(fd, _CAPABILITY, caps)
            finally:
                os.close(fd)
        else:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
        changed += 1
        return stat.S_ISDIR(st.st_mode)

    shift(None, root)
    walk = LevelWalk(os.open(root, _DIR_FLAGS), MAX_OPEN_DEPTH)
    try:
        while walk.stack:
            level = walk.stack[-1]
            if not level.names:
                walk.leave()
                continue
            name = level.names.pop()
            if shift(level.fd, name):
                walk.enter(name)
    finally:
        walk.close()
    return changed


def walk_tree(root: str, short: ShortPaths | None = None) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below *root* as ``(path relative to root, entry)``, a directory before its children.

    Symlinks are listed, never followed.  A stack instead of recursion:
    ``os.walk`` recurses on Python 3.11, so a tree a thousand levels deep (a
    tarball can make one) would exceed the recursion limit.  Children come in
    name order.  With *short*, folders whose paths are longer than the kernel
    takes are listed too (:meth:`ShortPaths.entries`: their entries' ``path``
    is then no path to use; the caller names them with *short*).
    """
    todo = [""]
    while todo:
        rel = todo.pop()
        where = os.path.join(root, rel) if rel else root
        if short is not None:
            entries = sorted(short.entries(where).values(), key=_entry_name)
        else:
            with os.scandir(where) as it:
                entries = sorted(it, key=_entry_name)
        subdirs = []
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            yield path, entry
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(path)
        todo.extend(reversed(subdirs))


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def remove_tree(path: str) -> None:
    """Delete *path* and everything below it; a missing *path* is no error.

    Symlinks are removed, never followed.  Nothing recurses, so no depth defeats
    it (``shutil.rmtree`` recurses on Python 3.11): subtrees deeper than
    :data:`MAX_OPEN_DEPTH` are first moved up to the top directory, which bounds
    the descriptors held.  Directories their owner may not read or write (an
    unprivileged layer's 0555 or 0000) are opened up on the way.
    """
    try:
        remove_tree_at(None, path)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(path)  # not a directory: a file, or a symlink to anything


def remove_tree_at(dir_fd: int | None, name: str) -> None:
    """Delete directory *name* of *dir_fd* (a path when None) and everything below it.

    As :func:`remove_tree`, but a *name* that is no directory (or a symlink)
    raises ``ENOTDIR``/``ELOOP``; used where paths must stay below an open
    directory (extraction replacing a directory, confined to its layer).
    """
    root_fd = _open_dir_at(dir_fd, name)
    # Per open directory: its descriptor, its name in its parent, subdirectories to do.
    stack: list[tuple[int, str, list[str]]] = []
    moved = 0
    depth = fdlimit.keepable(MAX_OPEN_DEPTH, least=2)
    try:
        stack.append((root_fd, "", _unlink_files(root_fd)))
        while stack:
            fd, dname, subdirs = stack[-1]
            if not subdirs:
                stack.pop()
                os.close(fd)
                if stack:
                    _rmdir_at(stack[-1][0], dname)
                continue
            sub = subdirs.pop()
            if len(stack) < depth:
                try:
                    child = _open_dir_at(fd, sub)
                except OSError as e:
                    if not fdlimit.exhausted(e) or len(stack) < 2:
                        raise
                    depth = len(stack)  # no descriptor left: this deep is as deep as it goes
                else:
                    stack.append((child, sub, _unlink_files(child)))
                    continue
            moved += 1
            while _exists_at(root_fd, f".deep-{moved}"):
                moved += 1
            os.rename(sub, f".deep-{moved}", src_dir_fd=fd, dst_dir_fd=root_fd)
            stack[0][2].append(f".deep-{moved}")
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    _rmdir_at(dir_fd, name)


def _open_dir_at(dir_fd: int | None, name: str) -> int:
    """Open a directory to remove its contents, granting its owner access if needed."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _unlink_files(fd: int) -> list[str]:
    """Unlink every non-directory in a directory; returns its subdirectories."""
    with os.scandir(fd) as it:
        entries = list(it)
    subdirs = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
            continue
        try:
            os.unlink(entry.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except PermissionError:
            os.chmod(fd, 0o700)  # a read-only directory of the caller's own
            os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _rmdir_at(dir_fd: int | None, name: str) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(dir_fd if dir_fd is not None else os.path.dirname(name) or ".", 0o700)
        os.rmdir(name, dir_fd=dir_fd)


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


class _Frame:
    """One directory being copied: its descriptors and the subdirectories still to do."""

    __slots__ = ("dst_fd", "dst_id", "name", "parent", "pending", "src_fd", "st")

    def __init__(
        self,
        parent: _Frame | None,
        name: str,
        st: os.stat_result,
        src_fd: int,
        dst_fd: int,
    ) -> None:
        self.parent = parent
        self.name = name
        self.st = st
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        dst_st = os.fstat(dst_fd)
        self.dst_id = (dst_st.st_dev, dst_st.st_ino)
        self.pending: list[tuple[str, os.stat_result]] = []

    @property
    def rel(self) -> str:
        """The directory's path relative to the roots ("" for the roots)."""
        parts: list[str] = []
        frame: _Frame | None = self
        while frame is not None and frame.parent is not None:
            parts.append(frame.name)
            frame = frame.parent
        return "/".join(reversed(parts))

    def close(self) -> None:
        for fd in (self.src_fd, self.dst_fd):
            if fd >= 0:
                os.close(fd)
        self.src_fd = self.dst_fd = -1


class _TreeCopier:
    """The state of one copy: what the filesystems proved able to do, and hardlinks seen."""

    def __init__(self, src: str, reflink: bool | None) -> None:
        self.src = src
        self.require_clone = reflink is True
        self.try_clone = reflink is not False
        self.cloned_once = False
        # copy_file_range shares extents where the filesystem can (xfs, btrfs), so a
        # copy that must not share any goes through sendfile instead.
        self.try_kernel_copy = reflink is not False
        self.try_sendfile = True
        self.privileged = privileged()
        self.proc_fds = os.path.isdir("/proc/self/fd")
        self.stats = CopyStats()
        # (st_dev, st_ino) of a hardlinked source inode -> its first copy, relative to dst.
        self.links: dict[tuple[int, int], str] = {}
        self.dst = ""
        self.dst_root_fd = -1
        self.skip_dir: tuple[int, int] | None = None
        # Where the copy is (directory frame, entry name or "" for the directory
        # itself), turned into a path only when one is reported.
        self.at: tuple[_Frame | None, str] = (None, "")
        # Directory levels whose descriptors stay open (a pair each); deeper, the
        # shallowest are released.
        self.open_depth = fdlimit.keepable(MAX_OPEN_DEPTH, per_item=2, least=2)

    # ----- the walk ----------------------------------------------------------------

    def run(self, dst: str) -> CopyStats:
        src_fd = os.open(self.src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dst_fd = _open_empty_dir(dst)
        except BaseException:
            os.close(src_fd)
            raise
        root = _Frame(None, "", os.fstat(src_fd), src_fd, dst_fd)
        self.dst = dst
        self.dst_root_fd = dst_fd
        # A destination inside the source must not be copied into itself.
        self.skip_dir = root.dst_id
        stack = [root]
        try:
            self._fill(root)
            while stack:
                self._step(stack)
        except OSError as e:
            path = os.path.join(self.src, self.where()) if self.at[0] else self.src
            raise OSError(e.errno, e.strerror, path) from e
        finally:
            for frame in stack:
                frame.close()
        return self.stats

    def where(self) -> str:
        """The path being copied, relative to the roots."""
        frame, name = self.at
        rel = frame.rel if frame else ""
        return os.path.join(rel, name) if name else rel

    def _step(self, stack: list[_Frame]) -> None:
        """Descend into the next pending subdirectory, or finish the current directory."""
        frame = stack[-1]
        if frame.pending:
            name, st = frame.pending.pop()
            self.at = (frame, name)
            os.mkdir(name, 0o700, dir_fd=frame.dst_fd)
            src_fd, dst_fd = self._open_pair(stack, name)
            child = _Frame(frame, name, st, src_fd, dst_fd)
            stack.append(child)
            self.stats.dirs += 1
            if len(stack) > self.open_depth:
                _release_one(stack)
            self._fill(child)
            return
        self.at = (frame, "")
        stack.pop()
        try:
            self._finish_dir(frame)
            if frame.parent is not None and frame.parent.src_fd < 0:
                _reopen_parent(frame)
        finally:
            frame.close()

    def _open_pair(self, stack: list[_Frame], name: str) -> tuple[int, int]:
        """Subdirectory *name* of the current frame, in the source and in the copy.

        With no descriptor left (EMFILE), ancestors' are released, and fewer kept
        from then on, until it opens or nothing more can be released.
        """
        frame = stack[-1]
        while True:
            try:
                src_fd = os.open(name, _DIR_FLAGS, dir_fd=frame.src_fd)
                try:
                    return src_fd, os.open(name, _DIR_FLAGS, dir_fd=frame.dst_fd)
                except BaseException:
                    os.close(src_fd)
                    raise
            except OSError as e:
                if not fdlimit.exhausted(e) or not _release_one(stack):
                    raise
                self.open_depth = max(2, self.open_depth - 1)

    def _fill(self, frame: _Frame) -> None:
        """Copy a directory's non-directory entries; queue its subdirectories."""
        with os.scandir(frame.src_fd) as it:
            entries = list(it)
        subdirs = []
        for entry in entries:
            self.at = (frame, entry.name)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) != self.skip_dir:
                    subdirs.append((entry.name, st))
            else:
                self._copy_entry(frame, entry.name, st)
        subdirs.reverse()  # popped from the end: keeps the listing order
        frame.pending = subdirs

    def _finish_dir(self, frame: _Frame) -> None:
        """Give a directory its metadata, once nothing more is written into it."""
        st = frame.st
        self._chown(frame.dst_fd, st)
        self._copy_xattrs(frame.src_fd, frame.dst_fd)  # before a mode that may close it to writing
        os.chmod(frame.dst_fd, stat.S_IMODE(st.st_mode))
        os.utime(frame.dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    # ----- entries -----------------------------------------------------------------

    def _copy_entry(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self.links.get(key)
            if first is not None:
                os.link(
                    first,
                    name,
                    src_dir_fd=self.dst_root_fd,
                    dst_dir_fd=frame.dst_fd,
                    follow_symlinks=False,
                )
                self.stats.hardlinks += 1
                return
        if stat.S_ISREG(st.st_mode):
            self._copy_file(frame, name, st)
        elif stat.S_ISLNK(st.st_mode):
            self._copy_symlink(frame, name, st)
        elif not self._copy_special(frame, name, st):
            return
        if st.st_nlink > 1:
            self.links[key] = os.path.join(frame.rel, name)

    def _copy_file(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        src_fd = open_readable(name, frame.src_fd)  # /etc/shadow (0000) too, in a store without root
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dst_fd = os.open(name, flags, 0o600, dir_fd=frame.dst_fd)
            try:
                if st.st_size:
                    self._copy_data(src_fd, dst_fd, st.st_size, holes=st.st_blocks * 512 < st.st_size)
                # chown clears setuid/setgid and drops file capabilities: it goes first.
                # user.* xattrs are set only on a file that may be written: before its mode.
                self._chown(dst_fd, st)
                self._copy_xattrs(src_fd, dst_fd)
                os.chmod(dst_fd, stat.S_IMODE(st.st_mode))
                os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        self.stats.files += 1

    def _copy_symlink(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        os.symlink(os.readlink(name, dir_fd=frame.src_fd), name, dir_fd=frame.dst_fd)
        self._chown(name, st, dir_fd=frame.dst_fd)
        self._copy_xattrs(
            self._entry_path(frame, name, src=True),
            self._entry_path(frame, name, src=False),
        )
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=frame.dst_fd, follow_symlinks=False)
        self.stats.symlinks += 1

    def _copy_special(self, frame: _Frame, name: str, st: os.stat_result) -> bool:
        """Recreate a device node, fifo or socket; False when it was left out."""
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return False
        try:
            os.mknod(name, kind | 0o600, st.st_rdev, dir_fd=frame.dst_fd)
        except PermissionError:
            if self.privileged or kind not in (stat.S_IFCHR, stat.S_IFBLK):
                raise
            self.stats.skipped.append(self.where())
            return False
        self._chown(name, st, dir_fd=frame.dst_fd)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=frame.dst_fd)
        self._copy_xattrs(
            self._entry_path(frame, name, src=True),
            self._entry_path(frame, name, src=False),
        )
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=frame.dst_fd, follow_symlinks=False)
        self.stats.specials += 1
        return True

    def _entry_path(self, frame: _Frame, name: str, *, src: bool) -> str:
        """A path naming *name* in a frame's directory, for calls that take no dir fd."""
        fd = frame.src_fd if src else frame.dst_fd
        if self.proc_fds:
            return f"/proc/self/fd/{fd}/{name}"
        # Without /proc the full path does it (within PATH_MAX).
        return os.path.join(self.src if src else self.dst, frame.rel, name)

    # ----- metadata ----------------------------------------------------------------

    def _chown(self, target: int | str, st: os.stat_result, dir_fd: int | None = None) -> None:
        try:
            if isinstance(target, int):
                os.chown(target, st.st_uid, st.st_gid)
            else:
                os.chown(target, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            # Unprivileged copies keep the copier's own ids, as cp -a does.
            if self.privileged or e.errno not in _OWNER_DENIED:
                raise

    def _copy_xattrs(self, src: int | str, dst: int | str) -> None:
        """Copy every extended attribute; str arguments name entries not to follow."""
        follow = isinstance(src, int)
        try:
            names = os.listxattr(src, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                return
            raise
        wanted = []
        for attr in names:
            if not self.privileged and attr.startswith(PRIVILEGED_XATTRS):
                # Closed without privilege, and left out as well where a user namespace of
                # the user's own would take them (a namespaced capability).
                self.stats.dropped_xattrs.append(f"{self.where() or '.'}: {attr}")
            else:
                wanted.append(attr)
        # A file of mode 0000 too: user.* xattrs need read permission.
        for attr, value in get_xattrs(src, wanted, follow_symlinks=follow).items():
            try:
                os.setxattr(dst, attr, value, follow_symlinks=follow)
            except OSError as e:
                if not _xattr_droppable(e, attr):
                    raise
                self.stats.dropped_xattrs.append(f"{self.where() or '.'}: {attr}")

    # ----- data --------------------------------------------------------------------

    def _copy_data(self, src_fd: int, dst_fd: int, size: int, *, holes: bool = False) -> None:
        """Clone or copy a file's data, from the cheapest way that works down.

        *holes*: the file may have holes (fewer blocks than its size needs).
        """
        if self.try_clone and self._clone(src_fd, dst_fd):
            self.stats.bytes += size
            self.stats.reflinked = True
            return
        if holes:
            self.stats.bytes += _copy_extents(src_fd, dst_fd, size)
            return
        done, copied = False, 0
        if self.try_kernel_copy:
            done, copied = self._kernel_copy(src_fd, dst_fd, size)
        # Each fallback goes on from the offsets where the previous way stopped.
        if not done and self.try_sendfile:
            done, copied = self._sendfile(src_fd, dst_fd, copied)
        if not done:
            copied = _read_write(src_fd, dst_fd, copied)
        self.stats.bytes += copied

    def _clone(self, src_fd: int, dst_fd: int) -> bool:
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
        except OSError as e:
            if e.errno not in _NO_CLONE or self.require_clone:
                raise
            # The first attempt is the probe: if it fails the filesystem cannot clone
            # and no other file is tried; later failures concern one file only.
            if not self.cloned_once:
                self.try_clone = False
            return False
        self.cloned_once = True
        return True

    def _kernel_copy(self, src_fd: int, dst_fd: int, size: int) -> tuple[bool, int]:
        """copy_file_range to the end of the file: (whether done, bytes copied)."""
        copied = 0
        try:
            while n := os.copy_file_range(src_fd, dst_fd, _CHUNK):
                copied += n
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            self.try_kernel_copy = False
            return False, copied
        # Some filesystems (procfs-like, some FUSE) report nothing to copy for files
        # that have data; a plain read tells.
        return bool(copied or not size), copied

    def _sendfile(self, src_fd: int, dst_fd: int, copied: int) -> tuple[bool, int]:
        """sendfile to the end of the file: (whether done, bytes copied in all)."""
        try:
            while n := os.sendfile(dst_fd, src_fd, None, _CHUNK):
                copied += n
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            self.try_sendfile = False
            return False, copied
        return True, copied


def data_extents(fd: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
    """Where file *fd* holds data from *start* to *stop* (default: its end), as (start, end)
    pairs; the rest is holes.  (A filesystem that cannot tell calls it all data.)"""
    at = start
    stop = os.fstat(fd).st_size if stop is None else stop
    while at < stop:
        try:
            at = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            return  # nothing but a hole up to the end
        if at >= stop:
            return
        end = min(os.lseek(fd, at, os.SEEK_HOLE), stop)
        yield at, end
        at = end


def _copy_extents(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy the data of a file with holes and leave the holes holes; returns the bytes copied."""
    copied = 0
    for start, end in data_extents(src_fd, 0, size):
        at = start
        while at < end:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(end - at, _CHUNK), at, at)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                n = os.pwrite(dst_fd, os.pread(src_fd, min(end - at, _RW_CHUNK), at), at)
            if n == 0:
                break  # the file shrank meanwhile
            at += n
            copied += n
    os.ftruncate(dst_fd, size)
    return copied


def _read_write(src_fd: int, dst_fd: int, copied: int) -> int:
    """Copy the rest of a file through a buffer; returns the bytes copied in all."""
    while chunk := os.read(src_fd, _RW_CHUNK):
        view = memoryview(chunk)
        while view:
            written = os.write(dst_fd, view)
            view = view[written:]
        copied += len(chunk)
    return copied


def _xattr_droppable(e: OSError, attr: str) -> bool:
    """Whether a refused setxattr is a limit of the destination rather than an error.

    Filesystems without extended attributes refuse them all; without privilege
    the ``trusted`` and ``security`` namespaces are closed.  ``user`` attributes
    the destination accepts, so their failure is real.
    """
    if e.errno == errno.EOPNOTSUPP:
        return True
    return e.errno == errno.EPERM and not attr.startswith("user.")


def _open_empty_dir(path: str) -> int:
    """Create *path*, or open it if it is an existing empty directory."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as it:
                if next(it, None) is not None:
                    raise OSError(errno.ENOTEMPTY, "destination is not empty", path) from None
        except BaseException:
            os.close(fd)
            raise
        return fd
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _release_one(stack: list[_Frame]) -> bool:
    """Close the shallowest open non-root frame's descriptors to bound the open count;
    False if none could be (the root and the last frame, the one worked in, stay open).

    Released frames are always a run just above the root, so the frame below
    the shallowest open one is the one reopened when that one finishes.
    """
    for frame in stack[1:-1]:
        if frame.src_fd >= 0:
            frame.close()
            return True
    return False


def _reopen_parent(child: _Frame) -> None:
    """Reopen a released parent through "..", checking it is the same directory."""
    parent = child.parent
    assert parent is not None
    src_fd = os.open("..", _DIR_FLAGS, dir_fd=child.src_fd)
    try:
        dst_fd = os.open("..", _DIR_FLAGS, dir_fd=child.dst_fd)
    except BaseException:
        os.close(src_fd)
        raise
    parent.src_fd, parent.dst_fd = src_fd, dst_fd
    src_st, dst_st = os.fstat(src_fd), os.fstat(dst_fd)
    if (src_st.st_dev, src_st.st_ino) != (parent.st.st_dev, parent.st.st_ino) or (
        dst_st.st_dev,
        dst_st.st_ino,
    ) != parent.dst_id:
        raise OSError(errno.ESTALE, "directory moved during the copy", parent.rel)

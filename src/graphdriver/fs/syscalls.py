"""The system calls that write layers, in one place.

Extraction calls the kernel through this module only (``syscalls.fchown(...)``,
never ``os.fchown`` directly), so that a test can replace one call to inject a
fault, and so that what differs when running unprivileged is decided here and
not all over the extractor.

Most names are the :mod:`os` functions themselves (no wrapper cost on a path
that runs for every file of every layer).  The rest are Linux calls Python has
no binding for, made through :mod:`ctypes`:

* :func:`openat2` with ``RESOLVE_IN_ROOT``: path resolution that treats a
  directory as ``/`` the way ``chroot`` would, so neither ``..`` nor a symlink
  can leave it (Linux 5.6).
* :func:`lsetxattr_at`: set an extended attribute on a directory entry named
  relative to a directory fd without following a symlink, which needs
  ``setxattrat`` (Linux 6.13).  Older kernels get a ``fchdir`` fallback.
* The mount API: :func:`fsopen`, :func:`fsconfig`, :func:`fsmount`,
  :func:`move_mount` (Linux 5.2), :func:`mount` and :func:`umount2`, and the
  questions :func:`statx_mount_root` and :func:`statfs_type`
  (:mod:`graphdriver.fs.mounts` decides what to do with them).

Every function raises :class:`OSError` with the usual ``errno``, except that a
kernel without ``openat2`` raises :class:`~graphdriver.errors.Unsupported`.
"""

from __future__ import annotations

import ctypes
import errno
import os

from graphdriver.errors import Unsupported

# openat2(2) resolve flags (linux/openat2.h).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

AT_SYMLINK_NOFOLLOW = 0x100

# Syscalls added since Linux 5.1 share one number on every architecture but
# alpha, so one table entry per architecture family is enough.
_UNIFIED_ARCHES = frozenset(
    {
        "x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l",
        "riscv64", "ppc64le", "ppc64", "s390x", "loongarch64", "mips64",
    }
)  # fmt: skip
_NR_OPENAT2 = 437
_NR_SETXATTRAT = 463

MACHINE = os.uname().machine.lower()  # what platform.machine() says, without importing it


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class _XattrArgs(ctypes.Structure):
    _fields_ = [
        ("value", ctypes.c_uint64),
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


# Loaded at import: a confined child may be chrooted where no libc path
# resolves any more, so nothing here may be looked up lazily.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# setxattrat is probed on first use; False once the kernel said ENOSYS.
_have_setxattrat = MACHINE in _UNIFIED_ARCHES


def _raise_errno(path: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), path)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """``openat2(2)``: open *path* relative to *dirfd* with *resolve* restrictions.

    Retries the transient ``EAGAIN`` the kernel returns when a concurrent
    rename raced a ``RESOLVE_IN_ROOT``/``RESOLVE_BENEATH`` walk.
    """
    if MACHINE not in _UNIFIED_ARCHES:
        raise Unsupported("openat2", f"unknown system call number on {MACHINE}")
    how = _OpenHow(flags, mode, resolve)
    cpath = os.fsencode(path)
    for _ in range(64):
        fd = _syscall(
            ctypes.c_long(_NR_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(cpath),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            continue
        if err == errno.ENOSYS:
            raise Unsupported(
                "openat2", "the kernel lacks openat2(2): Linux 5.6 or later is needed"
            )
        raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def lsetxattr_at(dirfd: int, name: str, attr: str, value: bytes) -> None:
    """Set xattr *attr* on entry *name* of directory *dirfd*, not following a symlink.

    Used for entries that cannot be opened to get an fd: symlinks, device
    nodes, fifos.
    """
    global _have_setxattrat
    cname = os.fsencode(name)
    if _have_setxattrat:
        buf = ctypes.create_string_buffer(value, len(value))
        args = _XattrArgs(ctypes.addressof(buf), len(value), 0)
        res = _syscall(
            ctypes.c_long(_NR_SETXATTRAT),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(cname),
            ctypes.c_uint(AT_SYMLINK_NOFOLLOW),
            ctypes.c_char_p(os.fsencode(attr)),
            ctypes.byref(args),
            ctypes.c_size_t(ctypes.sizeof(args)),
        )
        if res == 0:
            return
        if ctypes.get_errno() != errno.ENOSYS:
            _raise_errno(name)
        _have_setxattrat = False
    # Older kernels: make the directory the working directory for one
    # relative lsetxattr.  The working directory is process-wide, so it is put
    # back at once; only the inline (debugging) mode shares it with threads.
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(dirfd)
        os.setxattr(cname, attr, value, follow_symlinks=False)
    finally:
        os.fchdir(here)
        os.close(here)


def lremovexattr_at(dirfd: int, name: str, attr: str) -> None:
    """Remove xattr *attr* of entry *name* of directory *dirfd*, not following a symlink
    (a device node or fifo, which cannot be opened to get an fd), as :func:`lsetxattr_at`
    sets one without setxattrat(2)."""
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(dirfd)
        os.removexattr(os.fsencode(name), attr, follow_symlinks=False)
    finally:
        os.fchdir(here)
        os.close(here)


_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG)``: have the kernel send *sig* to us when our parent dies."""
    if _libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0) != 0:
        _raise_errno("prctl")


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy *size* bytes from the current offset of *src* to *dst* (in-kernel when possible)."""
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            break
        if n == 0:
            return
        left -= n
    while left > 0:
        chunk = os.read(src, min(left, 1 << 20))
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        left -= len(chunk)


# The plain calls, under names tests can replace.
fchown = os.fchown
fchmod = os.fchmod
fsetxattr = os.setxattr
fremovexattr = os.removexattr
chown_at = os.chown
chmod_at = os.chmod
mknod_at = os.mknod
link_at = os.link
symlink_at = os.symlink
mkdir_at = os.mkdir
chroot = os.chroot


# ----- the mount API --------------------------------------------------------------------------

_NR_MOVE_MOUNT = 429
_NR_FSOPEN = 430
_NR_FSCONFIG = 431
_NR_FSMOUNT = 432
_NR_OPEN_TREE = 428
_NR_MOUNT_SETATTR = 442

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
STATX_ATTR_MOUNT_ROOT = 0x2000
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000


def _checked(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return res


def fsopen(fstype: str) -> int:
    """A filesystem context for *fstype* (close-on-exec); OSError as the kernel says."""
    return _checked(
        _syscall(ctypes.c_long(_NR_FSOPEN), ctypes.c_char_p(fstype.encode()), ctypes.c_uint(FSOPEN_CLOEXEC)),
        f"fsopen {fstype}",
    )


def fsconfig(fd: int, cmd: int, key: str | None = None, value: bytes | None = None) -> None:
    """Set one parameter of a filesystem context (or create it: ``FSCONFIG_CMD_CREATE``)."""
    _checked(
        _syscall(
            ctypes.c_long(_NR_FSCONFIG),
            ctypes.c_int(fd),
            ctypes.c_uint(cmd),
            ctypes.c_char_p(key.encode() if key is not None else None),
            ctypes.c_char_p(value),
            ctypes.c_int(0),
        ),
        f"fsconfig {key}" if key else "fsconfig",
    )


def fsmount(fd: int, attrs: int) -> int:
    """A detached mount of a created context; returns its fd."""
    return _checked(
        _syscall(
            ctypes.c_long(_NR_FSMOUNT), ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)
        ),
        "fsmount",
    )


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount *fd* at *target*."""
    _checked(
        _syscall(
            ctypes.c_long(_NR_MOVE_MOUNT),
            ctypes.c_int(fd),
            ctypes.c_char_p(b""),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(target)),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        target,
    )


def open_tree_clone(path: str) -> int:
    """A detached copy of the mount at *path* (``open_tree(OPEN_TREE_CLONE)``), close-on-exec."""
    return _checked(
        _syscall(
            ctypes.c_long(_NR_OPEN_TREE),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
        ),
        f"open_tree {path}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def set_idmap(mount_fd: int, userns_fd: int) -> None:
    """Make the detached mount *mount_fd* show owners through the user namespace *userns_fd*."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    _checked(
        _syscall(
            ctypes.c_long(_NR_MOUNT_SETATTR),
            ctypes.c_int(mount_fd),
            ctypes.c_char_p(b""),
            ctypes.c_uint(AT_EMPTY_PATH),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr MOUNT_ATTR_IDMAP",
    )


def unshare_user() -> bool:
    """``unshare(CLONE_NEWUSER)`` in this process (for a forked child); whether it worked."""
    return int(_libc.unshare(ctypes.c_int(CLONE_NEWUSER))) == 0


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> int:
    """``mount(2)``; returns 0 or the errno."""
    res = _libc.mount(
        os.fsencode(source),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        os.fsencode(data) if data else None,
    )
    return 0 if res == 0 else ctypes.get_errno()


def umount2(target: str, flags: int = 0) -> int:
    """``umount2(2)``; returns 0 or the errno."""
    return 0 if _libc.umount2(os.fsencode(target), flags) == 0 else ctypes.get_errno()


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("mask", ctypes.c_uint32),
        ("blksize", ctypes.c_uint32),
        ("attributes", ctypes.c_uint64),
        ("nlink", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("ino", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("attributes_mask", ctypes.c_uint64),
        ("times", _StatxTimestamp * 4),
        ("rdev_major", ctypes.c_uint32),
        ("rdev_minor", ctypes.c_uint32),
        ("dev_major", ctypes.c_uint32),
        ("dev_minor", ctypes.c_uint32),
        ("rest", ctypes.c_uint64 * 14),
    ]


_statx = getattr(_libc, "statx", None)


def statx_mount_root(path: str) -> tuple[int, bool | None]:
    """``(errno, whether path is the root of a mount)`` by ``statx`` (Linux 5.8), the symlink
    itself for a symlink; the answer is None when ``statx`` cannot tell (errno then says why, or 0)."""
    if _statx is None:
        return 0, None
    buf = _Statx()
    if _statx(AT_FDCWD, os.fsencode(path), AT_SYMLINK_NOFOLLOW, 0, ctypes.byref(buf)) != 0:
        return ctypes.get_errno(), None
    if buf.attributes_mask & STATX_ATTR_MOUNT_ROOT:
        return 0, bool(buf.attributes & STATX_ATTR_MOUNT_ROOT)
    return 0, None


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def statfs_type(path: str) -> int | None:
    """The ``statfs`` magic of the filesystem holding *path*, or None when it cannot be asked."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF

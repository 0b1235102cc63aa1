"""Size limits for writable overlay layers (``--size``), on any backing filesystem.

Two ways, chosen per store:

``quota``
    An XFS project quota: the layer folder gets a project id of its own
    (inherited by everything created below it, so the upper and work
    directories count together, as overlay's copy-up renames from one to the
    other) and a hard block limit.  Needs an XFS home mounted with
    ``prjquota`` on a kernel built with XFS quota support.  Writing past the
    limit fails with ``EDQUOT``.

``image``
    Everywhere else (ext4, tmpfs, an XFS home without quotas, a kernel without
    quota support at all): a sparse image file of exactly the limit, formatted
    (ext4, or XFS when no ``mkfs.ext4`` is installed), attached to a loop
    device and mounted at ``<layer>/img``.  The layer's upper and work
    directories live inside it and ``<layer>/diff`` and ``<layer>/work`` are
    symlinks to them.  This is what the seeds' ``sandbox.vhdx`` does on
    Windows.  Writing past the limit fails with ``ENOSPC``; the filesystem's
    own structures (journal, inode tables) take part of the size: with ext4,
    about 3 % of 20 GiB, 7 % of 1 GiB, 14-24 % of an image under 100 MiB.
    The loop device is set to clear itself when the filesystem is unmounted,
    so removing the layer (or losing the mount at a reboot) leaves no device
    behind; :func:`ensure_mounted` mounts the image again where it is missing.

What a layer got is recorded in ``<layer>/sizelimit.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Mapping

from graphdriver.errors import GraphDriverError, InvalidArgument, Unsupported
from graphdriver.fs import atomic, mounts, privileged
from graphdriver.fs.locking import locked
from graphdriver.fs.sizerecord import IMAGE_FILE, IMAGE_MOUNT, RECORD_FILE, limit_of
from graphdriver.units import check_limit

#: mkfs.xfs refuses filesystems smaller than this.
XFS_MIN_SIZE = 300 * 1024 * 1024

# Loop device ioctls (linux/loop.h).
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4

# Project quotas (linux/fs.h, linux/dqblk_xfs.h, linux/quota.h).
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_PROJINHERIT = 0x200
PRJQUOTA = 2
Q_XGETQSTAT = (ord("X") << 8) + 5
Q_XSETQLIM = (ord("X") << 8) + 4
FS_DQUOT_VERSION = 1
FS_PROJ_QUOTA = 2
FS_DQ_BSOFT = 1 << 2
FS_DQ_BHARD = 1 << 3
FS_QUOTA_PDQ_ENFD = 1 << 5


class Method(enum.Enum):
    """How a store enforces ``--size``."""

    QUOTA = "xfs project quota"
    IMAGE = "loop-mounted image"


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * 64),
        ("lo_crypt_name", ctypes.c_char * 64),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


class _FsXattr(ctypes.Structure):
    _fields_ = [
        ("xflags", ctypes.c_uint32),
        ("extsize", ctypes.c_uint32),
        ("nextents", ctypes.c_uint32),
        ("projid", ctypes.c_uint32),
        ("cowextsize", ctypes.c_uint32),
        ("pad", ctypes.c_ubyte * 8),
    ]


class _FsDiskQuota(ctypes.Structure):
    _fields_ = [
        ("d_version", ctypes.c_int8),
        ("d_flags", ctypes.c_int8),
        ("d_fieldmask", ctypes.c_uint16),
        ("d_id", ctypes.c_uint32),
        ("d_blk_hardlimit", ctypes.c_uint64),
        ("d_blk_softlimit", ctypes.c_uint64),
        ("d_ino_hardlimit", ctypes.c_uint64),
        ("d_ino_softlimit", ctypes.c_uint64),
        ("d_bcount", ctypes.c_uint64),
        ("d_icount", ctypes.c_uint64),
        ("d_itimer", ctypes.c_int32),
        ("d_btimer", ctypes.c_int32),
        ("d_iwarns", ctypes.c_uint16),
        ("d_bwarns", ctypes.c_uint16),
        ("d_padding", ctypes.c_int8 * 4),
        ("d_rtb_hardlimit", ctypes.c_uint64),
        ("d_rtb_softlimit", ctypes.c_uint64),
        ("d_rtbcount", ctypes.c_uint64),
        ("d_rtbtimer", ctypes.c_int32),
        ("d_rtbwarns", ctypes.c_uint16),
        ("d_padding3", ctypes.c_int16),
        ("d_padding4", ctypes.c_char * 8),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _qcmd(cmd: int, kind: int) -> int:
    return (cmd << 8) | (kind & 0xFF)


# ----- choosing ------------------------------------------------------------------------------


def choose_method(home: str) -> Method | None:
    """How ``--size`` can be enforced for layers under *home*; None when it cannot (no privilege)."""
    if not privileged():
        return None
    if _quota_device(home) is not None:
        return Method.QUOTA
    if image_fstype(XFS_MIN_SIZE) is None:  # (mkfs.xfs alone makes the larger images only)
        return None
    return Method.IMAGE


def unavailable_why() -> str:
    """Why :func:`choose_method` found no way to limit sizes here."""
    return "needs mkfs.ext4 or mkfs.xfs" if privileged() else "needs root"


def image_fstype(size: int) -> str | None:
    """The filesystem an image of *size* bytes gets (None: no mkfs for it is installed)."""
    import shutil  # here: every mount and apply loads this module, few make an image

    if shutil.which("mkfs.ext4"):
        return "ext4"
    if size >= XFS_MIN_SIZE and shutil.which("mkfs.xfs"):
        return "xfs"
    return None


def check_size(size: int) -> None:
    """Refuse a limit too small to hold anything."""
    check_limit(size, str(size))


def check_storage_opt(
    storage_opt: Mapping[str, str], *, rw: bool, method: Callable[[], Method | None], driver: str
) -> None:
    """Refuse storage options a size-limiting driver cannot honour (only ``size`` is known).

    *method* says how a size would be enforced; it is asked only when a size is given
    (choosing looks for a quota and for mkfs, which every other create can skip).
    """
    for key in sorted(storage_opt):
        if key != "size":
            raise InvalidArgument(f"storage option {key!r}", f"the {driver} driver knows only size")
    if "size" not in storage_opt:
        return
    if not rw:
        raise InvalidArgument("--size", "limits writable (--rw) layers only")
    try:
        size = int(storage_opt["size"])
    except ValueError as e:
        raise InvalidArgument(f"size {storage_opt['size']!r}", "expected a number of bytes") from e
    check_size(size)
    chosen = method()
    if chosen is None:
        if not privileged():
            raise Unsupported("--size", "needs root (a project quota or a loop-mounted image)")
        raise Unsupported("--size", "needs mkfs.ext4 (apt-get install e2fsprogs) for a loop-mounted image")
    if chosen is Method.IMAGE and image_fstype(size) is None:
        raise Unsupported(f"size limit of {size} bytes", "needs mkfs.ext4 (apt-get install e2fsprogs): "
                          f"mkfs.xfs makes no filesystem under {XFS_MIN_SIZE >> 20} MiB")


# ----- setting up and tearing down ------------------------------------------------------------


def prepare(folder: str, size: int, method: Method, home: str) -> str:
    """Limit what the layer being created in *folder* can hold to *size* bytes.

    Returns the directory the layer's upper and work directories are to be
    made in: *folder* itself under a quota, the mounted image otherwise.
    """
    check_size(size)
    if method is Method.QUOTA:
        projid = _set_project_quota(folder, size, home)
        atomic.write_json(
            os.path.join(folder, RECORD_FILE),
            {"method": "quota", "size": size, "project": projid},
            durable=False,
        )
        return folder
    fstype = image_fstype(size)
    if fstype is None:
        raise Unsupported(f"size limit of {size} bytes", "needs mkfs.ext4 (apt-get install e2fsprogs)")
    image = os.path.join(folder, IMAGE_FILE)
    _make_image(image, size, fstype)
    _warn_overcommitted(folder, size)
    target = os.path.join(folder, IMAGE_MOUNT)
    os.mkdir(target, 0o700)
    loop_mount(image, target, fstype)
    atomic.write_json(
        os.path.join(folder, RECORD_FILE),
        {"method": "image", "size": size, "fstype": fstype},
        durable=False,
    )
    return target


def ensure_mounted(folder: str) -> bool:
    """Mount the layer's image again if it is not (after a reboot); True if it had to."""
    image = os.path.join(folder, IMAGE_FILE)
    if not os.path.exists(image):
        return False
    target = os.path.join(folder, IMAGE_MOUNT)
    if mounts.is_mount_point(target):
        return False
    # Commands reading the layer at once would each mount it (one filesystem on several
    # loop devices, stacked): the image's own lock lets one do it, the others see it done.
    with locked(image):
        if mounts.is_mount_point(target):
            return False
        record = limit_of(folder) or {}
        fstype = str(record.get("fstype") or "ext4")
        loop_mount(image, target, fstype)
    return True


def release(folder: str) -> None:
    """Unmount the layer's image, if it has one (lazily when busy); the loop device clears itself."""
    target = os.path.join(folder, IMAGE_MOUNT)
    if os.path.isdir(target) and mounts.is_mount_point(target):
        mounts.unmount(target)


# ----- the image -------------------------------------------------------------------------------


def _warn_overcommitted(folder: str, size: int) -> None:
    """Say so where the filesystem holding the (sparse) image has less room than the limit:
    the layer would then meet a full host disk (I/O errors in the container) before its limit."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < size:
        from graphdriver.errors import warn

        warn(f"size limit of {size} bytes: only {free} bytes are free on the filesystem that holds it, "
             "so writes will fail before the limit")


def _make_image(path: str, size: int, fstype: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)  # sparse: the image takes only what is written
    except OSError as e:
        if e.errno != errno.EFBIG:
            raise
        raise Unsupported(f"size limit of {size} bytes", "the filesystem of the store cannot hold "
                          f"an image file that large ({e.strerror})") from e
    finally:
        os.close(fd)
    if fstype == "ext4":
        # No reserved blocks: the whole limit is the layer's.  Lazy init and no
        # discard: formatting a sparse file should not write (or punch) it all.
        cmd = ["mkfs.ext4", "-q", "-F", "-m", "0",
               "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path]  # fmt: skip
    else:
        cmd = ["mkfs.xfs", "-q", "-f", "-K", path]
    import subprocess

    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip()
        raise GraphDriverError(f"formatting the size-limited image {path}", why or f"{cmd[0]} failed")


def loop_mount(image: str, target: str, fstype: str) -> None:
    """Attach *image* to a free loop device (cleared automatically on unmount) and mount it."""
    with contextlib.ExitStack() as stack:
        file_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        stack.callback(os.close, file_fd)
        loop_fd, device = _attach(file_fd, image)
        stack.callback(os.close, loop_fd)
        try:
            mounts.mount(device, target, fstype)
        except OSError as e:
            with contextlib.suppress(OSError):
                fcntl.ioctl(loop_fd, LOOP_CLR_FD)
            raise GraphDriverError(f"mounting the size-limited image {image}", str(e)) from e
        # Closing our fds now leaves the device held by the mount alone.


def _attach(file_fd: int, image: str) -> tuple[int, str]:
    """A loop device backed by *file_fd*: returns its open fd and path."""
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise Unsupported("size limits", f"no loop devices here (/dev/loop-control: {e.strerror})") from e
    try:
        for _ in range(32):
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            try:
                loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # the node is not there yet; ask again
            try:
                _configure(loop_fd, file_fd, image)
            except OSError as e:
                os.close(loop_fd)
                if e.errno == errno.EBUSY:
                    continue  # another process took it between our two calls
                raise GraphDriverError(f"attaching {image} to {device}", e.strerror or str(e)) from e
            return loop_fd, device
    finally:
        os.close(ctl)
    raise GraphDriverError(f"attaching {image} to a loop device", "every free device was taken first")


def _configure(loop_fd: int, file_fd: int, image: str) -> None:
    info = _LoopInfo64(lo_flags=LO_FLAGS_AUTOCLEAR)
    info.lo_file_name = os.fsencode(image)[-63:]
    try:
        fcntl.ioctl(loop_fd, LOOP_CONFIGURE, bytes(_LoopConfig(fd=file_fd, info=info)))
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    # Kernels before 5.8: the same in two steps.
    fcntl.ioctl(loop_fd, LOOP_SET_FD, file_fd)
    try:
        fcntl.ioctl(loop_fd, LOOP_SET_STATUS64, bytes(info))
    except OSError:
        fcntl.ioctl(loop_fd, LOOP_CLR_FD)
        raise


# ----- project quotas --------------------------------------------------------------------------


def _quota_device(home: str) -> str | None:
    """The block device to give quotactl for *home*, if XFS enforces project quotas there."""
    existing = os.path.abspath(home)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    info = mounts.filesystem_of(existing)
    if info is None or info.fstype != "xfs":
        return None
    opts = set(mounts.split_options(info.super_options)) | set(mounts.split_options(info.options))
    if not opts & {"prjquota", "pquota", "pqnoenforce"}:
        return None
    device = info.source
    try:
        st = os.stat(device)
        if not stat.S_ISBLK(st.st_mode) or st.st_rdev != os.stat(existing).st_dev:
            return None
    except OSError:
        return None
    buf = ctypes.create_string_buffer(128)
    res = _libc.quotactl(_qcmd(Q_XGETQSTAT, PRJQUOTA), os.fsencode(device), 0, buf)
    if res != 0:
        return None  # no quota support in this kernel, or not enabled
    flags = int.from_bytes(buf.raw[2:4], "little")
    return device if flags & FS_QUOTA_PDQ_ENFD else None


def _set_project_quota(folder: str, size: int, home: str) -> int:
    device = _quota_device(home)
    if device is None:
        raise Unsupported(f"size limit at {home}", "project quotas are no longer enforced there")
    projid = _next_project_id(home)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = _FsXattr()
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, attr)
        attr.projid = projid
        attr.xflags |= FS_XFLAG_PROJINHERIT
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, bytes(attr))
    finally:
        os.close(fd)
    blocks = (size + 511) // 512  # quota limits count 512-byte basic blocks
    quota = _FsDiskQuota(
        d_version=FS_DQUOT_VERSION,
        d_flags=FS_PROJ_QUOTA,
        d_fieldmask=FS_DQ_BSOFT | FS_DQ_BHARD,
        d_id=projid,
        d_blk_hardlimit=blocks,
        d_blk_softlimit=blocks,
    )
    res = _libc.quotactl(_qcmd(Q_XSETQLIM, PRJQUOTA), os.fsencode(device), projid, ctypes.byref(quota))
    if res != 0:
        err = ctypes.get_errno()
        raise GraphDriverError(f"setting the quota of {folder}", os.strerror(err))
    return projid


def _next_project_id(home: str) -> int:
    """A project id no other layer of *home* uses (a counter kept in the home)."""
    path = os.path.join(home, ".projid")
    with locked(path + ".lock"):
        try:
            value = int(atomic.read_json(path))
        except (OSError, ValueError, TypeError):
            fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                attr = _FsXattr()
                fcntl.ioctl(fd, FS_IOC_FSGETXATTR, attr)
                value = attr.projid + 1  # above the home's own project, as overlay2 does
            finally:
                os.close(fd)
        atomic.write_json(path, value + 1)
        return value

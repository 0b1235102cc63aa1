"""Mount plumbing for the overlay driver: mounting, unmounting, asking the mount table.

Overlay mounts are made with the new mount API when the kernel has it
(``fsopen``/``fsconfig``/``fsmount``/``move_mount``, through :mod:`ctypes`):
each lower layer is one ``fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)``
call (Linux 6.8), so a chain is not bounded by the one page of option text
that ``mount(2)`` accepts and the kernel's own limit of 500 lower layers is
reachable.  ``fsconfig`` refuses strings of 256 bytes or more, so a longer
path is passed through an ``O_PATH`` descriptor of its directory
(``/proc/self/fd/N/name``) instead.

Older kernels get ``mount(2)`` with the whole option string.  To fit long
chains in a page, the working directory is moved to :attr:`OverlayMount.base`
for the call and the layers below it are named relative to it (the overlay
driver's six-letter link names).  The working directory is process-wide, so
this fallback briefly affects other threads resolving relative paths; it is
used only where the kernel leaves no other way.

Unmounting detaches lazily when the mount is busy: a process still inside it
keeps its view, the mount point is free at once, and the kernel drops the
mount when the last user leaves.  FUSE mounts made by an unprivileged user are
released with ``fusermount3 -u``.

Whether a path is a mount point is answered by ``statx(2)``'s
``STATX_ATTR_MOUNT_ROOT`` (Linux 5.8), which costs one call however many
mounts the system has; ``/proc/self/mountinfo`` is parsed only when that is
not available and when a mount's details are wanted.
"""

from __future__ import annotations

import errno
import os

from graphdriver.fs import privileged, syscalls
from graphdriver.fs.longpaths import ShortPaths
from graphdriver.fs.syscalls import (
    _UNIFIED_ARCHES,
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
    MACHINE,
    MOUNT_ATTR_RDONLY,
)
from graphdriver.plain import Plain

# Plain classes below and typing for the checker only: `mount` loads this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

MOUNTINFO = "/proc/self/mountinfo"

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
#: Options that are the mount's, not the filesystem's (``mount(8)`` turns them into flags; the
#: overlay filesystem refuses them as parameters): ``mount(2)`` flag, new-API mount attribute.
MOUNT_FLAGS = {
    "nosuid": (0x2, 0x2),
    "nodev": (0x4, 0x4),
    "noexec": (0x8, 0x8),
    "noatime": (0x400, 0x10),
    "nodiratime": (0x800, 0x80),
    "relatime": (0x200000, 0x0),
    "strictatime": (0x1000000, 0x20),
    # The defaults, which mount(8) takes as clearing their "no" forms: nothing to set.
    "suid": (0x0, 0x0),
    "dev": (0x0, 0x0),
    "exec": (0x0, 0x0),
    "atime": (0x0, 0x0),
    "diratime": (0x0, 0x0),
}
MNT_DETACH = 0x2

#: ``fsconfig`` copies at most this many bytes of a string, the NUL included.
FSCONFIG_VALUE_MAX = 256

#: ``statfs`` magic numbers of the filesystems a layer mount can be.
OVERLAYFS_MAGIC = 0x794C7630
FUSE_MAGIC = 0x65735546

# None until a mount tried the new API; then whether it works here.
_new_api: bool | None = None if MACHINE in _UNIFIED_ARCHES else False


class MountError(OSError):
    """A mount that failed; ``strerror`` carries the kernel's own explanation when it gave one."""

    #: The new mount API's step that failed (``"lowerdir+#0"``, ``"create"``...).
    step: str = ""


class OverlayMount(Plain):
    """What to mount: an overlay of *lowers* (nearest first) under an optional upper."""

    __slots__ = ("base", "lowers", "options", "readonly", "upper", "work")

    def __init__(
        self,
        lowers: tuple[str, ...],
        upper: str | None = None,
        work: str | None = None,
        options: tuple[str, ...] = (),
        readonly: bool = False,
        base: str | None = None,
    ) -> None:
        self.lowers = tuple(lowers)
        self.upper = upper
        self.work = work
        #: Further options, ``key`` or ``key=value`` (``index=off``, ``userxattr``...).
        self.options = tuple(options)
        #: Mount read-only (an overlay without upper is read-only anyway).
        self.readonly = readonly
        #: Directory most layer paths live in: ``mount(2)`` names them relative to it.
        self.base = base


# ----- the new mount API -------------------------------------------------------------------


def _kernel_messages(fd: int) -> str:
    """What the filesystem logged into the context (``e overlay: ...`` lines)."""
    lines = []
    for _ in range(16):
        try:
            msg = os.read(fd, 1024)
        except OSError:
            break
        if not msg:
            break
        text = msg.decode("utf-8", "replace").strip()
        lines.append(text[2:] if text[1:2] == " " else text)
    return "; ".join(lines)


def _mount_new_api(spec: OverlayMount, target: str) -> None:
    """Mount *spec* with fsopen & co; OSError(EINVAL) with ``lowerdir+`` means too old a kernel."""
    fsfd = syscalls.fsopen("overlay")
    # Long layer paths are named through their open directories.
    paths = ShortPaths(FSCONFIG_VALUE_MAX, keep=None)
    step = "source"
    try:
        syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, "source", b"overlay")
        for i, lower in enumerate(spec.lowers):
            step = f"lowerdir+#{i}"
            syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", os.fsencode(paths(lower)))
        if spec.upper is not None and spec.work is not None:
            step = "upperdir"
            syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", _escaped_dir(paths, spec.upper))
            step = "workdir"
            syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", _escaped_dir(paths, spec.work))
        for option in spec.options:
            if option in MOUNT_FLAGS:
                continue  # the mount's (fsmount below), not the filesystem's
            key, sep, value = option.partition("=")
            step = key
            if sep:
                syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, key, os.fsencode(value))
            else:
                syscalls.fsconfig(fsfd, FSCONFIG_SET_FLAG, key)
        step = "create"
        syscalls.fsconfig(fsfd, FSCONFIG_CMD_CREATE)
        step = "fsmount"
        mfd = syscalls.fsmount(fsfd, (MOUNT_ATTR_RDONLY if spec.readonly else 0) | _mount_flags(spec, 1))
        try:
            step = "move_mount"
            syscalls.move_mount(mfd, target)
        finally:
            os.close(mfd)
    except OSError as e:
        why = _kernel_messages(fsfd) or _unexplained(e, spec, step == "create")
        err = MountError(e.errno, why, target)
        err.step = step
        raise err from e
    finally:
        paths.close()
        os.close(fsfd)


def _unexplained(e: OSError, spec: OverlayMount, with_options: bool) -> str:
    """*e*'s text, naming the overlay options when *with_options* and the kernel refused
    them without a word (it writes why in its own log only: ``conflicting options``...)."""
    why = e.strerror or str(e)
    options = [o for o in spec.options if o not in MOUNT_FLAGS]
    if with_options and e.errno == errno.EINVAL and options:
        why += f" (overlay options {','.join(options)}; the kernel's log, dmesg, may say why)"
    return why


def _escaped_dir(paths: ShortPaths, path: str) -> bytes:
    """*path* as ``fsconfig``'s value of ``upperdir`` or ``workdir``, where the kernel reads a
    backslash as escaping the next character (``lowerdir+`` takes its path as it is): each is
    doubled, and a path that grows too long so is named through its open parent directory."""
    value = os.fsencode(paths(path)).replace(b"\\", b"\\\\")
    if len(value) >= FSCONFIG_VALUE_MAX:
        parent, _, name = os.fsencode(path).rpartition(b"/")
        value = b"/proc/self/fd/%d/%s" % (paths.directory(parent), name.replace(b"\\", b"\\\\"))
    return value


# ----- mount(2) ----------------------------------------------------------------------------


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    """``mount(2)``; raises :class:`MountError`."""
    err = syscalls.mount(source, target, fstype, flags, data)
    if err:
        raise MountError(err, os.strerror(err), target)


def bind_mount(source: str, target: str, *, readonly: bool = False, options: tuple[str, ...] = ()) -> None:
    """Bind *source* on *target*, read-only if asked, with the mount flags *options* names
    (keys of :data:`MOUNT_FLAGS`: ``nosuid``, ``nodev``...).

    ``mount(2)`` ignores every flag but ``MS_REC`` on a new bind, so those take a
    second, remounting call.
    """
    mount(source, target, None, MS_BIND)
    flags = (MS_RDONLY if readonly else 0) | _flags_of(options, 0)
    if flags:
        try:
            mount("none", target, None, MS_BIND | MS_REMOUNT | flags)
        except OSError:
            unmount(target)
            raise


def _escape(path: str) -> str:
    """A path as one item of overlay's option string (``\\`` before ``,`` ``:`` and ``\\``)."""
    for ch in ("\\", ",", ":"):
        path = path.replace(ch, "\\" + ch)
    return path


def overlay_options(spec: OverlayMount, base: str | None = None) -> str:
    """The option string of *spec* for ``mount(2)``, layer paths relative to *base* when shorter."""

    def name(path: str) -> str:
        if base is not None:
            rel = os.path.relpath(path, base)
            if len(rel) < len(path):
                path = rel
        return _escape(path)

    parts = ["lowerdir=" + ":".join(name(p) for p in spec.lowers)]
    if spec.upper is not None and spec.work is not None:
        parts += [f"upperdir={name(spec.upper)}", f"workdir={name(spec.work)}"]
    parts += [o for o in spec.options if o not in MOUNT_FLAGS]
    return ",".join(parts)


def _mount_flags(spec: OverlayMount, index: int) -> int:
    """The flags (*index* 0: ``mount(2)``'s, 1: ``fsmount``'s attributes) of *spec*'s options."""
    return _flags_of(spec.options, index)


def _flags_of(options: Sequence[str], index: int) -> int:
    """The flags (*index* as for :func:`_mount_flags`) of the mount flags among *options*."""
    flags = 0
    for option in options:
        if option in MOUNT_FLAGS:
            flags |= MOUNT_FLAGS[option][index]
    return flags


def _mount_legacy(spec: OverlayMount, target: str) -> None:
    target = os.path.abspath(target)
    data = overlay_options(spec, spec.base)
    limit = os.sysconf("SC_PAGE_SIZE") - 1
    if len(os.fsencode(data)) > limit:
        raise MountError(
            errno.E2BIG,
            f"the overlay options of {len(spec.lowers)} layers exceed the {limit} bytes mount(2) "
            "accepts; Linux 6.8 or later (lowerdir+) mounts deeper chains",
            target,
        )
    flags = (MS_RDONLY if spec.readonly else 0) | _mount_flags(spec, 0)
    # The options name the layers relative to the base: mount from inside it.
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if spec.base is not None else None
    try:
        if spec.base is not None:
            os.chdir(spec.base)
        mount("overlay", target, "overlay", flags, data)
    except MountError as e:
        raise MountError(e.errno, _unexplained(e, spec, True), target) from None
    finally:
        if here is not None:
            os.fchdir(here)
            os.close(here)


def mount_overlay(spec: OverlayMount, target: str, *, api: str = "auto") -> str:
    """Mount the overlay *spec* on *target*; returns the API used (``"fsopen"`` or ``"mount"``).

    *api* forces one (``"fsopen"``, ``"mount"``) instead of choosing (tests use it).
    Raises :class:`MountError`.
    """
    global _new_api
    if api == "mount" or (api == "auto" and _new_api is False):
        _mount_legacy(spec, target)
        return "mount"
    try:
        _mount_new_api(spec, target)
    except MountError as e:
        # Only the very first "lowerdir+" tells an old kernel (an unknown
        # parameter) from a bad layer (too many, say) further down the list.
        old_kernel = e.errno == errno.ENOSYS or (e.errno == errno.EINVAL and e.step == "lowerdir+#0")
        if api == "fsopen" or not old_kernel or _new_api:
            raise
        _new_api = False
        _mount_legacy(spec, target)
        return "mount"
    _new_api = True
    return "fsopen"


def request_filesystem(fstype: str) -> None:
    """Ask the kernel for a filesystem type, which loads its module if it is one."""
    if _new_api is False:
        return
    try:
        os.close(syscalls.fsopen(fstype))
    except OSError:
        pass


def new_api_state() -> bool | None:
    """Whether the new mount API worked here (None: not tried yet)."""
    return _new_api


def probe_new_api(directory: str) -> bool | None:
    """Whether the kernel's overlay takes ``lowerdir+`` through the new mount API, asked by
    setting *directory* as a lower layer of a context that is never mounted (None: it cannot
    be asked, without the privilege to open one).  Changes nothing, not even what
    :func:`mount_overlay` chooses."""
    if _new_api is not None:
        return _new_api
    try:
        fsfd = syscalls.fsopen("overlay")
    except OSError as e:
        return False if e.errno == errno.ENOSYS else None
    try:
        syscalls.fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", os.fsencode(directory))
    except OSError as e:
        return False if e.errno == errno.EINVAL else None
    finally:
        os.close(fsfd)
    return True


# ----- FUSE (rootless) -----------------------------------------------------------------------


def mount_fuse_overlay(program: str, spec: OverlayMount, target: str) -> None:
    """Mount *spec* with a FUSE overlay program (``fuse-overlayfs``), which returns once mounted."""
    import subprocess

    for path in (*spec.lowers, spec.upper or "", spec.work or ""):
        if ":" in path or "," in path:
            raise MountError(errno.EINVAL, f"{program} cannot take a path with ':' or ','", path)
    flags = [o for o in spec.options if o in MOUNT_FLAGS]  # FUSE takes them as options
    data = ",".join([overlay_options(spec), *flags])
    proc = subprocess.run(
        [program, "-o", data, target], capture_output=True, check=False, close_fds=True
    )
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip() or f"{program} exited {proc.returncode}"
        raise MountError(errno.EIO, why, target)


def _fusermount() -> str | None:
    import shutil

    return shutil.which("fusermount3") or shutil.which("fusermount")


# ----- unmounting -----------------------------------------------------------------------------


def unmount(target: str) -> str:
    """Unmount *target*, detaching lazily if it is busy.

    Returns ``"unmounted"``, ``"detached"`` (busy: gone from the tree, kept
    alive by its users) or ``"not mounted"``.  An unprivileged FUSE mount is
    released with ``fusermount3``.  Raises :class:`MountError` otherwise.
    """
    err = syscalls.umount2(target, 0)
    if not err:
        return "unmounted"
    if err == errno.EBUSY:
        err = syscalls.umount2(target, MNT_DETACH)
        if not err:
            return "detached"
    if err in (errno.EINVAL, errno.ENOENT):
        return "not mounted"
    if err == errno.EPERM and not privileged():
        return _fuse_unmount(target)
    raise MountError(err, os.strerror(err), target)


def _fuse_unmount(target: str) -> str:
    import subprocess

    tool = _fusermount()
    if tool is None:
        raise MountError(errno.EPERM, "fusermount3 is not installed", target)
    for args, outcome in ((["-u"], "unmounted"), (["-u", "-z"], "detached")):
        proc = subprocess.run([tool, *args, target], capture_output=True, check=False)
        if proc.returncode == 0:
            return outcome
    why = proc.stderr.decode("utf-8", "replace").strip()
    if "not mounted" in why or "not found in" in why:
        return "not mounted"
    raise MountError(errno.EBUSY, why or "fusermount failed", target)


# ----- asking ---------------------------------------------------------------------------------


def is_mount_point(path: str) -> bool:
    """Whether *path* is the root of a mount (a symlink never is)."""
    err, root = syscalls.statx_mount_root(path)
    if root is not None:
        return root
    if err in (errno.ENOENT, errno.ENOTDIR):
        return False
    if err in (errno.EACCES, errno.ENOTCONN):
        # Another user's FUSE mount (or a dead one) answers nobody else:
        # something is mounted there.
        return True
    return mount_at(path) is not None


def is_dead(path: str) -> bool:
    """Whether *path* is a FUSE mount whose program is gone ("Transport endpoint is not
    connected")."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def fs_magic(path: str) -> int | None:
    """The ``statfs`` type of the filesystem holding *path*, or None when it cannot be asked."""
    return syscalls.statfs_type(path)


class MountInfo(Plain):
    """One line of ``/proc/self/mountinfo``."""

    __slots__ = ("fstype", "mount_id", "mount_point", "options", "parent_id", "root", "source",
                 "super_options")

    def __init__(self, *, mount_id: int, parent_id: int, root: str, mount_point: str,
                 options: str, fstype: str, source: str, super_options: str) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.root = root
        self.mount_point = mount_point
        self.options = options
        self.fstype = fstype
        self.source = source
        self.super_options = super_options


def unescape(field: str) -> str:
    """Undo the mount table's octal escapes (``\\040`` for a space, ...)."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_mountinfo_line(line: str) -> MountInfo | None:
    """One mountinfo line, or None when it is malformed."""
    fields, sep, rest = line.rstrip("\n").partition(" - ")
    parts = fields.split(" ")
    tail = rest.split(" ")
    if not sep or len(parts) < 6 or len(tail) < 2:
        return None
    try:
        mount_id, parent_id = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return MountInfo(
        mount_id=mount_id,
        parent_id=parent_id,
        root=unescape(parts[3]),
        mount_point=unescape(parts[4]),
        options=parts[5],
        fstype=tail[0],
        source=unescape(tail[1]),
        super_options=tail[2] if len(tail) > 2 else "",
    )


def read_mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """Every mount of this process's namespace, in the table's order."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [m for line in f if (m := parse_mountinfo_line(line)) is not None]


def mount_at(path: str, mountinfo: str = MOUNTINFO) -> MountInfo | None:
    """The mount whose mount point is *path* (the topmost if several are stacked), or None."""
    target = os.path.realpath(path)
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            # Cheap test first: most lines are other mounts, and overlay lines are long.
            parts = line.split(" ", 5)
            if len(parts) < 6 or unescape(parts[4]) != target:
                continue
            info = parse_mountinfo_line(line)
            if info is not None:
                found = info
    return found


def is_overlay_mount(path: str, mountinfo: str = MOUNTINFO) -> bool:
    """Whether *path* is the mount point of an overlay (kernel or FUSE overlay)."""
    info = mount_at(path, mountinfo)
    return info is not None and (info.fstype == "overlay" or info.fstype.startswith("fuse"))


def filesystem_of(path: str, mountinfo: str = MOUNTINFO) -> MountInfo | None:
    """The mount holding *path*: the longest mount point above it (the last one if stacked)."""
    target = os.path.realpath(path)
    best: MountInfo | None = None
    for info in read_mountinfo(mountinfo):
        mp = info.mount_point
        inside = mp == "/" or target == mp or target.startswith(mp + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = info
    return best


def mounts_below(path: str, mountinfo: str = MOUNTINFO) -> list[str]:
    """Mount points at or below *path*, deepest first (the order to unmount them in)."""
    target = os.path.realpath(path)
    points = {
        info.mount_point
        for info in read_mountinfo(mountinfo)
        if info.mount_point == target or info.mount_point.startswith(target + "/")
    }
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def split_options(text: str) -> Sequence[str]:
    """``a,b=c`` as ``["a", "b=c"]``, dropping empty items."""
    return [item.strip() for item in text.split(",") if item.strip()]

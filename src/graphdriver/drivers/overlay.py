"""The ``overlay`` driver: layers stacked by the kernel's overlayfs.

Layout under the driver home::

    <home>/.l/<short>             symlink to ../<id>/diff (six letters: long chains fit)
    <home>/<id>/diff/             the layer's own contents; the upper dir when mounted
    <home>/<id>/work/             overlay's work dir (same filesystem as diff)
    <home>/<id>/merged/           where the union is mounted
    <home>/<id>/link              the layer's short name
    <home>/<id>/lower             the ancestors' links, nearest first (``.l/abc:.l/def``;
                                  absolute for ancestors in other stores)
    <home>/<id>/layerchain.json   the ancestors' folders, nearest first (the base class)
    <home>/<id>/tree-made         a child's: empty, its ctime when ``diff`` was made (the base class)

Mounting.  ``get`` mounts ``lowerdir=<ancestors>, upperdir=diff, workdir=work``
at ``merged`` for writable (container) layers.  Image layers (``create``
without ``--rw``, ``import``) mount read-only: their own ``diff`` becomes the
top lower directory, so nothing can change them behind their recorded
digests; ``apply`` writes into ``diff`` directly.  A layer without ancestors
has nothing to stack, so its ``diff`` is bind-mounted at ``merged`` (read-only
for an image layer).  Layers of additional (read-only) stores mount
read-only, under the run root.
Mounts use ``index=off`` (mounting a layer's upper over other lowers later
must work), ``redirect_dir=off`` and ``metacopy=off`` (so that the upper
directory alone says what the layer changed), with the new mount API where
the kernel has it (:mod:`graphdriver.fs.mounts`).  Mount counts are the
base class's, checked against the kernel with ``statx``: a count whose
mount vanished behind the store's back (``umount`` by hand) counts nothing,
so ``mounted``, ``remove`` and ``put`` see 0 and drop it, the next ``get``
mounts afresh with a count of one, and ``cleanup`` reports it; ``cleanup``
also unmounts mounts no count accounts for.

Depth.  The kernel stacks at most :data:`MAX_DEPTH` lower directories;
creating a layer deeper than that chain allows is refused up front.

Applying.  A tarball is extracted straight into ``diff`` with whiteouts as
0/0 character devices and opaque xattrs (a base layer has nothing below to
hide, so there whiteouts simply delete).  A layer that is mounted (a
container's, say) is applied through its mount instead, since writing under
a live overlay's upper directory is undefined.

Changes and diffs are read from ``diff`` itself when the parent asked for
is the layer's own parent and nothing redirects (see
:mod:`graphdriver.diff.upper`); otherwise the generic walk compares
the mounted views.

Unprivileged use.  Without root the kernel's overlay cannot be mounted here,
so ``fuse-overlayfs`` is used when installed (``mount_program``), with
``user.overlay.*`` xattrs; a base layer is then handed out as its ``diff``
directory (nothing to stack, and no bind mounts without privilege).

Driver options (``--opt KEY=VALUE``):

``mount_program``
    A FUSE overlay program (``/usr/bin/fuse-overlayfs``, or a name looked up
    in ``PATH``) to mount with instead of the kernel; found automatically
    when not running as root.
    ``none`` forces the kernel's overlay.
``mountopt``
    More overlay mount options, comma-separated (``xino=on``).  Turning
    ``redirect_dir`` or ``metacopy`` on makes changes and diffs use the
    generic walk.
``mount_api``
    ``auto`` (the default: the new mount API, ``fsopen``/``fsconfig`` with
    ``lowerdir+``, where the kernel has it, else ``mount(2)``), ``fsopen``
    or ``mount`` to force one (``mount(2)`` takes at most one page of
    options, so shorter chains).
``idmapped_lowers``
    ``auto`` (the default) or ``false``.  A child created with other id maps
    than its parent sees the layers below through idmapped mounts
    (``mount_setattr`` with ``MOUNT_ATTR_IDMAP``: root, and a filesystem that
    allows them); ``false``, or where the kernel or filesystem refuses, or
    where a layer below holds a file capability or a POSIX ACL (ids of their
    own, which an idmapped view would show translated or not at all), its
    upper directory starts as a copy of its parent's tree with the owners
    shifted, opaque at the root.

``size``
    The size limit of writable layers created without ``--size`` (as
    containers-storage's ``overlay.size``), parsed as ``--size`` is; image
    layers are never limited.  Where sizes cannot be limited (no root, no
    mkfs) creating a writable layer that would get it is refused
    (:class:`Unsupported`) and ``status`` says so.

``--size`` (writable layers only) is enforced by :mod:`graphdriver.fs.sizelimit`.
"""

from __future__ import annotations

import errno
import os
import stat

from graphdriver.drivers.base import (
    DELETE_WHITEOUTS,
    OVERLAY_WHITEOUTS,
    Driver,
    DriverConfig,
    layer_name_of,
    nearest_existing,
    probe_scratch,
    probed_once,
    unfinished_probe,
)
from graphdriver.errors import GraphDriverError, InvalidArgument, NotFound, Precondition, Unsupported
from graphdriver.fs import atomic, privileged
from graphdriver.fs.sizerecord import has_image, limit_of

# mounts (ctypes), sizelimit, shutil and typing are imported where used: `layer`
# and `mount` load this module, and scripts call them thousands of times.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from contextlib import AbstractContextManager
    from typing import Any, ClassVar

    from graphdriver.drivers.values import ApplyTarget, Comparison, CreateOpts
    from graphdriver.fs import sizelimit
    from graphdriver.idmap import IDMappings

#: The most lower directories the kernel stacks (``OVL_MAX_STACK``), so the longest chain.
MAX_DEPTH = 500

# Dot-named: layer ids never start with a dot, and the store takes any other
# name in the home for a layer folder (or an orphan of one).
LINK_DIR = ".l"
DIFF_DIR = "diff"
WORK_DIR = "work"
MERGED_DIR = "merged"
LINK_FILE = "link"
LOWER_FILE = "lower"
#: Present when some lower directory is stored under other id maps than the layer: the maps of
#: the layer and of each ``lower`` entry, in order; those lowers are mounted idmapped.
LOWERMAPS_FILE = "lowermaps"
#: Present in the folder of a writable (container) layer: it mounts read-write.
WRITABLE_FILE = "writable"
SHORT_LEN = 6

DEFAULT_MOUNT_PROGRAM = "/usr/bin/fuse-overlayfs"
#: Options every kernel mount gets (a ``mountopt`` with the same key wins).
BASE_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
_LAYER_KEYS = frozenset({"lowerdir", "lowerdir+", "upperdir", "workdir", "datadir+"})
_MODULE_PARAMS = "/sys/module/overlay/parameters"


# ----- probing -------------------------------------------------------------------------------------


def _overlay_in_kernel() -> bool:
    from graphdriver.fs import mounts

    def listed() -> bool:
        try:
            with open("/proc/filesystems", encoding="ascii", errors="replace") as f:
                return any(line.split()[-1:] == ["overlay"] for line in f)
        except OSError:
            return False

    if listed():
        return True
    mounts.request_filesystem("overlay")  # loads its module, if it is one
    return listed()


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648's alphabet, lower case


def _short_name() -> str:
    """*SHORT_LEN* random base32 characters (5 bits each): a name for the links directory."""
    bits = int.from_bytes(os.urandom(4), "big")
    return "".join(_BASE32[(bits >> (5 * i)) & 31] for i in range(SHORT_LEN))


def _find_mount_program(option: str | None) -> str | None:
    if option is not None:
        if option in ("", "none"):
            return None
        if "/" not in option:  # a bare name is looked up in PATH, as a shell would
            import shutil

            return shutil.which(option) or option
        return option
    if privileged():
        return None
    if os.access(DEFAULT_MOUNT_PROGRAM, os.X_OK):
        return DEFAULT_MOUNT_PROGRAM
    import shutil

    return shutil.which("fuse-overlayfs")


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def probe_home(home: str, mount_program: str | None, *, cached: bool = False) -> dict[str, str]:
    """Check that overlay can work at *home*; returns what was found (for ``status``).

    Raises :class:`Unsupported` saying what is missing and what to do.  With
    *cached*, a home that passed before in this process is not probed again.
    """
    key = ("overlay", os.path.abspath(home), mount_program)
    return probed_once(key, lambda: _probe(home, mount_program), cached=cached)


def _probe(home: str, mount_program: str | None) -> dict[str, str]:
    from graphdriver.fs import mounts

    what = f"overlay at {home}"
    found: dict[str, str] = {}
    if mount_program is None:
        if not privileged():
            raise Unsupported(
                "overlay as an unprivileged user",
                "the kernel's overlay needs root here and fuse-overlayfs is not installed "
                "(apt-get install fuse-overlayfs), or use --driver vfs",
            )
        if not _overlay_in_kernel():
            raise Unsupported(
                what, "the kernel has no overlay filesystem (modprobe overlay), or use --driver vfs"
            )
    else:
        if not os.access(mount_program, os.X_OK):
            raise Unsupported(what, f"mount program {mount_program} is not installed; or use --driver vfs")
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise Unsupported(what, "/dev/fuse is missing or not accessible to this user; use --driver vfs")
    existing = nearest_existing(home)
    info = mounts.filesystem_of(existing)
    backing = info.fstype if info else "unknown"
    found["Backing Filesystem"] = backing
    if backing == "overlay":
        raise Unsupported(
            what,
            "the home is itself on overlayfs (inside a container?), which cannot hold upper "
            "directories: put the store on a volume or bind mount of ext4, xfs or btrfs, or use --driver vfs",
        )
    user_xattrs = mount_program is not None or not privileged() or _in_user_namespace()
    found.update(_probe_directory(home, existing, what, user_xattrs=user_xattrs))
    for param in ("redirect_dir", "metacopy", "index"):
        try:
            with open(os.path.join(_MODULE_PARAMS, param), encoding="ascii") as f:
                found[f"Kernel Default {param}"] = f.read().strip()
        except OSError:
            pass
    return found


def _probe_directory(home: str, existing: str, what: str, *, user_xattrs: bool) -> dict[str, str]:
    """d_type and xattr support, tried in a scratch directory under *existing* (*home*, or the
    nearest folder above it that exists)."""
    from graphdriver.fs.tree import remove_tree

    try:
        scratch, held = probe_scratch(existing, "overlay")
    except OSError as e:
        if unfinished_probe(home, existing, e):
            return {"Supports d_type": f"not checked ({e.strerror})"}
        raise Unsupported(what, f"cannot create directories in {existing} ({e.strerror})") from e
    try:
        probe_file = os.path.join(scratch, "f")
        with open(probe_file, "wb"):
            pass
        with os.scandir(scratch) as it:
            entries = list(it)
        os.unlink(probe_file)
        # With the file gone, is_file() can only answer from the entry's d_type.
        if not entries or not entries[0].is_file(follow_symlinks=False):
            raise Unsupported(
                what,
                f"the filesystem at {existing} does not record file types in directory entries "
                "(d_type), without which whiteouts leak; for xfs, recreate it with mkfs.xfs -n ftype=1",
            )
        xattr = "user.graphdriver-probe" if user_xattrs else "trusted.graphdriver-probe"
        try:
            os.setxattr(scratch, xattr, b"y")
        except OSError as e:
            kind = xattr.split(".")[0]
            raise Unsupported(
                what, f"the filesystem at {existing} cannot store {kind}.* extended attributes ({e.strerror})"
            ) from e
        return {"Supports d_type": "true", "Xattrs": xattr.split(".")[0] + ".overlay.*"}
    finally:
        try:
            remove_tree(scratch)
        except OSError:
            pass
        os.close(held)


# ----- the driver ------------------------------------------------------------------------------------


class OverlayDriver(Driver):
    """Layers as overlayfs upper directories stacked by the kernel (or fuse-overlayfs)."""

    name: ClassVar[str] = "overlay"
    #: A child with other id maps than its parent sees its lowers idmapped, or starts from a
    #: shifted copy of the parent's tree.
    SHIFTS_IDS: ClassVar[bool] = True
    OPTIONS: ClassVar[frozenset[str]] = frozenset({"mount_program", "mountopt", "mount_api",
                                                   "idmapped_lowers"})

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.mount_api = config.options.get("mount_api", "auto")
        if self.mount_api not in ("auto", "fsopen", "mount"):
            raise InvalidArgument(f"option mount_api={self.mount_api!r} for driver overlay",
                                  "expected auto, fsopen or mount")
        self.mount_program = _find_mount_program(config.options.get("mount_program"))
        self.idmapped_lowers = config.options.get("idmapped_lowers", "auto")
        if self.idmapped_lowers not in ("auto", "false"):
            raise InvalidArgument(f"option idmapped_lowers={self.idmapped_lowers!r} for driver overlay",
                                  "expected auto or false")
        self.extra_options: tuple[str, ...] = ()
        if config.options.get("mountopt"):
            from graphdriver.fs import mounts

            self.extra_options = tuple(mounts.split_options(config.options["mountopt"]))
        for option in self.extra_options:
            if option.partition("=")[0] in _LAYER_KEYS:
                raise InvalidArgument(f"mountopt {option!r}", "the driver sets the layer directories itself")
        if not config.probed:
            probe_home(self.home, self.mount_program, cached=True)
        # Rootless overlays (FUSE, or the kernel's inside a user namespace) keep
        # their whiteout bookkeeping in user.* xattrs.
        self.user_xattrs = self.mount_program is not None or _in_user_namespace()
        self.mount_options = self._kernel_options()
        self.native_diff, self.native_why = self._native_diff_ok()
        self._size_method: sizelimit.Method | bool | None = False  # False: not chosen yet
        self._home_abs = os.path.abspath(self.home)
        self.links = os.path.join(self._home_abs, LINK_DIR)
        if config.prepare:
            self._prepare_links()

    def prepare(self) -> None:
        super().prepare()
        self._prepare_links()

    def _prepare_links(self) -> None:
        if not os.path.isdir(self.links):
            os.makedirs(self.links, 0o700, exist_ok=True)
            self.repair_links()

    @property
    def opaque_xattr(self) -> str:
        """The xattr marking an opaque directory in this driver's upper directories."""
        from graphdriver.fs.overlayfs import OPAQUE_XATTR, OPAQUE_XATTR_USER

        return OPAQUE_XATTR_USER if self.user_xattrs else OPAQUE_XATTR

    @property
    def size_method(self) -> sizelimit.Method | None:
        """How ``--size`` is enforced here (chosen when first needed: it looks for mkfs)."""
        from graphdriver.fs import sizelimit

        if self._size_method is False:
            self._size_method = sizelimit.choose_method(self.home)
        return self._size_method  # type: ignore[return-value]

    @classmethod
    def probe(cls, home: str) -> None:
        """Overlay must be mountable here and the home must hold upper directories."""
        probe_home(home, _find_mount_program(None))

    def _kernel_options(self) -> tuple[str, ...]:
        if self.mount_program is not None:
            return self.extra_options
        keys = {o.partition("=")[0] for o in self.extra_options}
        options = [o for o in BASE_OPTIONS if o.partition("=")[0] not in keys]
        if self.user_xattrs and "userxattr" not in keys:
            options.append("userxattr")
        return (*options, *self.extra_options)

    def _native_diff_ok(self) -> tuple[bool, str]:
        if self.mount_program is not None:
            return False, f"{os.path.basename(self.mount_program)} keeps its own whiteout formats"
        for option in self.mount_options:
            key, _, value = option.partition("=")
            if (key == "redirect_dir" and value in ("on", "follow")) or (key == "metacopy" and value == "on"):
                return False, f"mounted with {option}"
        return True, ""

    def status(self) -> list[tuple[str, str]]:
        from graphdriver.fs import mounts, sizelimit

        new_api = "fsopen/fsconfig lowerdir+"
        api = {True: new_api, False: "mount(2)", None: f"{new_api} if present, else mount(2)"}
        if self.mount_api == "auto":
            used = api[mounts.probe_new_api(nearest_existing(self.home))]
        else:  # forced by the option
            used = f"{api[self.mount_api == 'fsopen']} (mount_api={self.mount_api})"
        native = "true" if self.native_diff else f"false ({self.native_why})"
        pairs = list(probe_home(self.home, self.mount_program).items())
        pairs += [
            ("Mount Program", self.mount_program or "none (kernel overlay)"),
            ("Mount API", "FUSE" if self.mount_program else used),
            ("Mount Options", ",".join(self.mount_options) or "none"),
            ("Native Overlay Diff", native),
            ("Size Limits", self.size_method.value if self.size_method
             else f"unavailable ({sizelimit.unavailable_why()})"),
            ("Max Depth", str(MAX_DEPTH)),
            ("Home", self.home),
        ]
        return pairs

    # ----- layer folders ------------------------------------------------------------------------

    def _own(self, folder: str) -> bool:
        return os.path.dirname(os.path.abspath(folder)) == self._home_abs

    def _upper(self, folder: str) -> str:
        path = os.path.join(folder, DIFF_DIR)
        return os.path.realpath(path) if os.path.islink(path) else path

    def _existing_upper(self, layer_id: str, folder: str) -> str:
        """:meth:`_upper`, which must be there (the store tells a removed layer from a damaged one)."""
        path = self._upper(folder)
        if not os.path.isdir(path):
            self._mount_images([folder])  # a size-limited layer whose image lost its mount
        if not os.path.isdir(path):
            raise NotFound(f"layer {layer_id}", f"its files are missing (its {DIFF_DIR} directory)")
        return path

    def _merged(self, folder: str, *, create: bool = False) -> str:
        if self._own(folder):
            return os.path.join(folder, MERGED_DIR)
        # Another store's layers are never written: their mount points live in our run root.
        target = os.path.join(self.run_root, MERGED_DIR, os.path.basename(folder))
        if create:
            os.makedirs(target, 0o700, exist_ok=True)
        return target

    def _link_entry(self, folder: str) -> str:
        """How a child in this home names *folder*'s link in its ``lower`` file."""
        with open(os.path.join(folder, LINK_FILE), encoding="ascii") as f:
            short = f.read().strip()
        entry = f"{LINK_DIR}/{short}"
        return entry if self._own(folder) else os.path.join(os.path.dirname(os.path.abspath(folder)), entry)

    def _lower_entries(self, folder: str) -> list[str]:
        """The ``lower`` file of *folder*, entries as written (relative to the folder's home)."""
        try:
            with open(os.path.join(folder, LOWER_FILE), encoding="utf-8") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return []
        return text.split(":") if text else []

    def _lowers(self, folder: str) -> list[str]:
        """The ancestors' link paths, nearest first, absolute."""
        home = os.path.dirname(os.path.abspath(folder))
        return [e if e.startswith("/") else f"{home}/{e}" for e in self._lower_entries(folder)]

    # ----- create and remove ------------------------------------------------------------------

    def _create_checked(self, layer_id: str, parent: str | None, opts: CreateOpts, *, rw: bool) -> None:
        if parent is not None:
            depth = len(self.layer_chain(parent)) + 2
            if depth > MAX_DEPTH:
                raise Precondition(
                    f"layer {layer_id}",
                    f"would be {depth} layers deep; overlay stacks at most {MAX_DEPTH} layers "
                    "(the kernel's limit)",
                )
        super()._create_checked(layer_id, parent, opts, rw=rw)

    def check_storage_opt(self, storage_opt: Mapping[str, str], *, rw: bool) -> None:
        if not storage_opt:
            return  # nothing to refuse: the size limiter (and the mount calls) stay unloaded
        from graphdriver.fs import sizelimit

        sizelimit.check_storage_opt(storage_opt, rw=rw, method=lambda: self.size_method, driver=self.name)

    def _create(self, layer_id: str, folder: str, parent: str | None, opts: CreateOpts, *, rw: bool) -> None:
        parent_folder = self.resolve(parent) if parent else None
        if parent and parent_folder:
            self._mount_images(self.layer_chain(parent))  # the parent's own: the next line
            self._existing_upper(parent, parent_folder)  # its files gone: nothing to stack on
        size = opts.storage_opt.get("size")
        where = folder
        if size is not None and self.size_method is not None:
            from graphdriver.fs import sizelimit

            where = sizelimit.prepare(folder, int(size), self.size_method, self.home)
        maps = opts.idmaps or self.config.idmaps
        upper = os.path.join(where, DIFF_DIR)
        self._make_upper(upper, parent_folder, maps)
        lower_maps = None
        if parent is not None and parent_folder is not None:
            theirs = opts.parent_idmaps if opts.parent_idmaps is not None else maps
            below = self._lower_maps(parent_folder)
            if theirs != maps and not self._idmapped_possible(parent_folder, theirs, below, maps):
                self._shifted_copy_up(parent, upper, theirs, maps)
            elif theirs != maps or below is not None:
                # The parent's files and every lower below it stay where they are,
                # mounted idmapped into this layer's maps when they differ.
                lower_maps = [theirs, *(below or [theirs] * len(self._lower_entries(parent_folder)))]
                if theirs != maps:
                    self._shift_root(upper, theirs, maps)
        os.mkdir(os.path.join(where, WORK_DIR), 0o700)
        if where != folder:
            for name in (DIFF_DIR, WORK_DIR):
                os.symlink(os.path.relpath(os.path.join(where, name), folder), os.path.join(folder, name))
        os.mkdir(os.path.join(folder, MERGED_DIR), 0o700)
        if rw:
            atomic.write_bytes(os.path.join(folder, WRITABLE_FILE), b"", 0o644, durable=False)
        short = self._new_link(layer_id)
        atomic.write_bytes(os.path.join(folder, LINK_FILE), short.encode(), 0o644, durable=False)
        if parent_folder is not None:
            entries = [self._link_entry(parent_folder)]
            parent_home = os.path.dirname(os.path.abspath(parent_folder))
            for e in self._lower_entries(parent_folder):
                own = e.startswith("/") or self._own(parent_folder)
                entries.append(e if own else f"{parent_home}/{e}")
            data = ":".join(entries).encode()
            atomic.write_bytes(os.path.join(folder, LOWER_FILE), data, 0o644, durable=False)
            if lower_maps is not None:
                from graphdriver import jsonio

                doc = {"maps": _maps_doc(maps), "lowers": [_maps_doc(m) for m in lower_maps]}
                atomic.write_bytes(os.path.join(folder, LOWERMAPS_FILE), jsonio.dumps(doc).encode(), 0o644,
                                   durable=False)

    # ----- lower layers under other id maps -------------------------------------------------

    def _idmapped_possible(
        self, parent_folder: str, theirs: IDMappings, below: list[IDMappings] | None, mine: IDMappings
    ) -> bool:
        """Whether the kernel can show the parent's files and those below it in *mine* without a copy."""
        from graphdriver.fs import idmapped

        if self.mount_program is not None or self.idmapped_lowers == "false":
            return False  # fuse-overlayfs takes paths only, and runs without the privilege anyway
        lowers = self._lowers(parent_folder)
        stored = below or [theirs] * len(lowers)
        dirs = [(self._upper(parent_folder), theirs), *zip(lowers, stored, strict=False)]
        possible = True
        for path, m in dirs:
            if m != mine:  # every such tree is walked: an owner *mine* cannot express is refused here
                copy = idmapped.needs_copy(path, m, mine)
                possible = possible and not copy and idmapped.available(path, m, mine)
        return possible

    def _shift_root(self, upper: str, theirs: IDMappings, mine: IDMappings) -> None:
        """The upper root copied the parent's owner, stored under *theirs*: store it under *mine*."""
        st = os.lstat(upper)
        try:
            uid, gid = theirs.translate(mine, st.st_uid, st.st_gid)
        except InvalidArgument:
            return  # outside the maps: left as the parent has it
        os.chown(upper, uid, gid)

    def _lower_maps(self, folder: str) -> list[IDMappings] | None:
        """The id maps each ``lower`` entry of *folder* is stored under, if any differs from its own."""
        doc = self._lowermaps_doc(folder)
        return None if doc is None else [_maps_of(m) for m in doc["lowers"]]

    def _lowermaps_doc(self, folder: str) -> dict[str, Any] | None:
        try:
            doc = atomic.read_json(os.path.join(folder, LOWERMAPS_FILE))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise GraphDriverError(f"layer folder {folder}", f"unreadable {LOWERMAPS_FILE}: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("lowers"), list):
            raise GraphDriverError(f"layer folder {folder}", f"malformed {LOWERMAPS_FILE}")
        return doc

    def _views(self, folder: str, lowers: Sequence[str]) -> list[str]:
        """*lowers* (one per ``lower`` entry of *folder*, nearest first) as *folder*'s layer sees
        them: idmapped where stored under other maps."""
        doc = self._lowermaps_doc(folder)
        if doc is None:
            return list(lowers)
        mine, theirs = _maps_of(doc["maps"]), [_maps_of(m) for m in doc["lowers"]]
        if len(theirs) != len(lowers):
            raise GraphDriverError(f"layer folder {folder}",
                                   f"{LOWERMAPS_FILE} does not match its lower layers")
        from graphdriver.fs import idmapped

        try:
            return [p if m == mine else idmapped.view(p, m, mine)
                    for p, m in zip(lowers, theirs, strict=True)]
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            raise GraphDriverError(
                f"layer folder {folder}", f"cannot mount its lower layers idmapped: {e.strerror or e}"
            ) from e

    def _shifted_copy_up(self, parent: str, upper: str, theirs: IDMappings, mine: IDMappings) -> None:
        """A child with other id maps than its parent: its upper directory starts as a copy of the
        parent's whole tree with every owner shifted into its maps, opaque at the root so the lower
        layers (stored under the parent's maps) are hidden.  (Idmapped lower layers would share
        them instead; this copy works on every kernel.)"""
        from graphdriver.fs import syscalls
        from graphdriver.fs.tree import copy_tree, shift_owners

        os.rmdir(upper)
        with self.mounted(parent) as merged:
            copy_tree(merged, upper)
        shift_owners(upper, lambda uid, gid: theirs.translate(mine, uid, gid))
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.fsetxattr(fd, self.opaque_xattr, b"y")
        finally:
            os.close(fd)

    def _make_upper(self, path: str, parent_folder: str | None, maps: IDMappings) -> None:
        """The layer's root directory: owned and moded like the parent's (the root of a union)."""
        os.mkdir(path)
        if parent_folder is not None:
            st = os.stat(self._upper(parent_folder))
            uid, gid, mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
        else:
            uid = maps.uids.to_host(0)
            gid = maps.gids.to_host(0)
            mode = 0o755
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            # Without privilege the directory stays the user's, as everything it writes.
            if privileged() or e.errno not in (errno.EPERM, errno.EINVAL):
                raise
        os.chmod(path, mode)  # mkdir's mode is masked by the umask

    def _new_link(self, layer_id: str) -> str:
        """A fresh short name, linked to the layer's (future) ``diff``."""
        os.makedirs(self.links, 0o700, exist_ok=True)
        for _ in range(64):
            short = _short_name()
            try:
                os.symlink(f"../{layer_id}/{DIFF_DIR}", os.path.join(self.links, short))
            except FileExistsError:
                continue
            return short
        raise GraphDriverError(f"layer {layer_id}", f"no free short name in {self.links}")

    def _destroy(self, folder: str) -> None:
        # A layer folder may hold mounts: its union at merged, its size-limited
        # image at img.  Deleting through a mount would delete its contents.
        from graphdriver.fs import mounts
        from graphdriver.fs.sizerecord import IMAGE_MOUNT

        for sub in (MERGED_DIR, IMAGE_MOUNT):
            point = os.path.join(folder, sub)
            if os.path.isdir(point) and mounts.is_mount_point(point):
                mounts.unmount(point)
                if mounts.is_mount_point(point):
                    raise OSError(errno.EBUSY, "still mounted", point)
        self._drop_link(folder)
        from graphdriver.fs.tree import remove_tree

        remove_tree(folder)

    def _drop_link(self, folder: str) -> None:
        """Remove the folder's short link, if it still points at this layer."""
        try:
            with open(os.path.join(folder, LINK_FILE), encoding="ascii") as f:
                short = f.read().strip()
        except OSError:
            return
        name = layer_name_of(folder, destroying=True)
        link = os.path.join(self.links, short)
        try:
            if short and os.readlink(link) == f"../{name}/{DIFF_DIR}":
                os.unlink(link)
        except OSError:
            pass

    def repair_links(self) -> list[str]:
        """Recreate missing short links (the link directory is derived data); one line each."""
        done = []
        os.makedirs(self.links, 0o700, exist_ok=True)
        for name in sorted(os.listdir(self.home)):
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(self.home, name, LINK_FILE), encoding="ascii") as f:
                    short = f.read().strip()
            except OSError:
                continue
            link = os.path.join(self.links, short)
            target = f"../{name}/{DIFF_DIR}"
            try:
                if os.readlink(link) == target:
                    continue
                os.unlink(link)
            except OSError:
                pass
            os.symlink(target, link)
            done.append(f"recreated link {short} of layer {name}")
        return done

    def _repair_chain(self, folder: str) -> None:
        """Make every lower directory of *folder* reachable again (links, size-limited images)."""
        self.repair_links()
        self._mount_images([folder, *self.layer_chain(os.path.basename(folder))])

    def _mount_images(self, folders: Sequence[str]) -> None:
        """Mount again the images of the size-limited layers among *folders* that lost their
        mount (a reboot)."""
        for folder in folders:
            if self._own(folder) and has_image(folder):  # (sizelimit loads ctypes: only then)
                from graphdriver.fs import sizelimit

                sizelimit.ensure_mounted(folder)

    # ----- get and put ------------------------------------------------------------------------

    def _writable(self, folder: str) -> bool:
        """Whether a layer mounts read-write: only this store's container layers do."""
        return self._own(folder) and os.path.exists(os.path.join(folder, WRITABLE_FILE))

    def writable_view(self, layer_id: str) -> bool:
        folder = self.resolve(layer_id)
        # Image layers mount read-only, but a layer with nothing below it is handed out
        # as its own directory when a mount program (no bind mounts) is in use.
        return self._writable(folder) or (self.mount_program is not None and not self._lowers(folder))

    def _mount(self, layer_id: str, mount_label: str) -> str:
        from graphdriver.fs import mounts

        folder = self.resolve(layer_id)
        target = self._merged(folder, create=True)
        if mounts.is_mount_point(target):
            if not mounts.is_dead(target):
                return target  # left by a process that died before counting it
            mounts.unmount(target)  # a FUSE mount whose program died: mounted afresh below
        lowers = self._lowers(folder)
        upper = self._existing_upper(layer_id, folder)  # (mounting a size limit's image again)
        try:
            if not lowers:
                if self.mount_program is not None:
                    return upper  # nothing to stack and no bind mounts without root
                # A bind mount takes the mount flags of mountopt (nodev, nosuid...), as a stack does.
                flags = tuple(o for o in self.mount_options if o in mounts.MOUNT_FLAGS)
                mounts.bind_mount(upper, target, readonly=not self._writable(folder), options=flags)
                return target
            if self.mount_program is not None and not all(os.path.isdir(p) for p in lowers):
                # A mount program says so only in its own words: a lower directory is
                # missing, its link or image may be lost; restore, or say whose files are gone.
                self._repair_chain(folder)
                self._refuse_missing_lowers(layer_id, lowers)
            try:
                self._mount_overlay(folder, lowers, target, mount_label)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                # A lower directory is missing: its link or image may be lost; restore and retry.
                self._repair_chain(folder)
                self._refuse_missing_lowers(layer_id, lowers)
                self._mount_overlay(folder, lowers, target, mount_label)
        except OSError as e:
            raise GraphDriverError(f"mounting layer {layer_id}", e.strerror or str(e)) from e
        return target

    def _refuse_missing_lowers(self, layer_id: str, lowers: list[str]) -> None:
        """NotFound naming the nearest ancestor whose files are gone (its folder deleted),
        which the store tells apart from a layer removed meanwhile."""
        chain = self.layer_chain(layer_id)
        for lower, ancestor in zip(lowers, chain, strict=False):
            if not os.path.isdir(lower):
                name = layer_name_of(ancestor)
                raise NotFound(f"layer {name}", f"its files are missing ({lower}), below layer {layer_id}")

    def _mount_overlay(self, folder: str, lowers: list[str], target: str, mount_label: str) -> None:
        from graphdriver.fs import mounts

        lowers = self._views(folder, lowers)
        options = self.mount_options
        if mount_label:
            options = (*options, f"context={mount_label}")
        if self._writable(folder):
            spec = mounts.OverlayMount(
                lowers=tuple(lowers),
                upper=os.path.join(folder, DIFF_DIR),
                work=os.path.join(folder, WORK_DIR),
                options=options,
                base=self.links,
            )
        else:
            own_link = os.path.join(os.path.dirname(folder), self._link_entry(folder))
            spec = mounts.OverlayMount(
                lowers=(own_link, *lowers), options=options, readonly=True, base=self.links
            )
        if self.mount_program is not None:
            mounts.mount_fuse_overlay(self.mount_program, spec, target)
        else:
            mounts.mount_overlay(spec, target, api=self.mount_api)

    def _unmount(self, layer_id: str) -> None:
        from graphdriver.fs import mounts

        folder = self.resolve(layer_id)
        target = self._merged(folder)
        if os.path.isdir(target) and mounts.is_mount_point(target):
            try:
                mounts.unmount(target)
            except OSError as e:
                raise GraphDriverError(f"unmounting layer {layer_id}", e.strerror or str(e)) from e

    def _kernel_mounts(self) -> bool:
        return True

    def _uncounted_mount(self, layer_id: str) -> bool:
        from graphdriver.fs import mounts

        try:
            target = self._merged(self.resolve(layer_id))
        except NotFound:
            return False  # its folder is gone, and with it anything mounted in it
        return os.path.isdir(target) and mounts.is_mount_point(target)

    def _still_mounted(self, layer_id: str, path: str) -> bool:
        from graphdriver.fs import mounts

        if not os.path.isdir(path):
            return False
        if path == self._upper(self.resolve(layer_id)):
            return True  # a base layer handed out as its own directory: nothing to lose
        return mounts.is_mount_point(path)

    def _cleanup_mounts(self) -> list[str]:
        """Drop counts whose mount is gone or whose layer is gone, unmount uncounted mounts.

        A mount that vanished behind the store's back (``umount -l`` by an
        administrator) is reported and its count dropped, as Docker's and
        containers/storage's counters do when the kernel says the path is not
        mounted; it is never mounted again on its own.
        """
        from graphdriver.fs import mounts

        done: list[str] = []
        for layer_id in self.counts.counted():
            with self.counts.lock(layer_id):
                if not self.counts.recorded(layer_id):
                    continue  # its last unmount finished while we waited for the lock
                count, path = self.counts.state(layer_id)
                if not self.exists(layer_id) or count <= 0:
                    if path and os.path.isdir(path) and mounts.is_mount_point(path):
                        mounts.unmount(path)
                    self.counts.set(layer_id, 0, "")
                    done.append(f"dropped stale mount record of {layer_id}")
                elif path is None or not self._still_mounted(layer_id, path):
                    self.counts.set(layer_id, 0, "")
                    done.append(
                        f"dropped the mount count of {layer_id} ({count}): its mount at {path} "
                        "had gone"
                    )
        done.extend(self._unmount_uncounted())
        return done

    def _unmount_uncounted(self) -> list[str]:
        """Unmount the mounts no run root counts (their process died before counting them)."""
        from graphdriver.fs import mounts

        done = []
        for name in sorted(os.listdir(self.home)):
            point = os.path.join(self.home, name, MERGED_DIR)
            if name.startswith(".") or not os.path.isdir(point):
                continue
            key = self._count_key(name)
            with self.counts.lock(key), self.run_roots.lock(key) as serialised:
                if self.counts.count(key) == 0 and mounts.is_mount_point(point):
                    elsewhere = self.run_roots.counted_elsewhere(key, self._gone_check(name),
                                                                 serialised=serialised)
                    if elsewhere:
                        done.append(f"left the mount of {name}: it is counted in run root {elsewhere[0]}")
                        continue
                    outcome = mounts.unmount(point)
                    done.append(f"{outcome} uncounted mount of {name}")
        return done

    def cleanup(self, layers: Collection[str] | None = None) -> list[str]:
        done = super().cleanup(layers)
        done.extend(self.repair_links())
        return done

    # ----- apply and compare: directories for the store ------------------------------------

    def apply_target(self, layer_id: str) -> ApplyTarget:
        from graphdriver.drivers.values import ApplyTarget

        folder = self.resolve(layer_id)
        live = self._live_mount(layer_id, folder)
        if live is not None:
            # Writing under a mounted overlay's upper directory is undefined: go
            # through the union, where the kernel makes the whiteouts itself.
            return ApplyTarget(path=live, whiteouts=DELETE_WHITEOUTS)
        chain = self.layer_chain(layer_id)
        self._mount_images([folder, *chain])
        lowers = tuple(self._views(folder, [os.path.join(p, DIFF_DIR) for p in chain]))
        # A base layer has nothing below to hide: its whiteouts just delete.
        mode = OVERLAY_WHITEOUTS if lowers else DELETE_WHITEOUTS
        # Rootless overlays read opaque directories from user.* xattrs.
        return ApplyTarget(
            path=self._upper(folder), whiteouts=mode, lower_dirs=lowers, opaque_xattr=self.opaque_xattr
        )

    def _live_mount(self, layer_id: str, folder: str) -> str | None:
        """The union mount of a layer of ours that is mounted now, if any."""
        from graphdriver.fs import mounts

        if not self._own(folder) or self.mount_count(layer_id) <= 0:
            return None
        path = self.counts.path(self._count_key(layer_id))
        if path != os.path.join(folder, MERGED_DIR) or not mounts.is_mount_point(path):
            return None
        return path

    def own_files(self, layer_id: str) -> str | None:
        # The upper directory, even while the layer is mounted: only read here.
        return self._existing_upper(layer_id, self.resolve(layer_id))

    def _native(self, layer_id: str, parent: str | None) -> tuple[str, list[str]] | None:
        """The upper directory and lower roots for a native diff, or None to walk instead."""
        if not self.native_diff:
            return None
        folder = self.resolve(layer_id)
        lowers = self._lowers(folder)
        if parent is None:
            if lowers:
                return None
        else:
            parent_folder = self.resolve(parent)
            parent_link = os.path.join(os.path.dirname(parent_folder), self._link_entry(parent_folder))
            if not lowers or os.path.normpath(lowers[0]) != os.path.normpath(parent_link):
                return None
        self._mount_images([folder])
        if not all(os.path.isdir(p) for p in lowers):
            self._repair_chain(folder)
            self._refuse_missing_lowers(layer_id, lowers)
            missing = [p for p in lowers if not os.path.isdir(p)]
            if missing:
                raise GraphDriverError(f"layer {layer_id}", f"lower directory {missing[0]} is missing")
        return self._existing_upper(layer_id, folder), self._views(folder, lowers)

    def compare(
        self, layer_id: str, parent: str | None, *, native: bool = True
    ) -> AbstractContextManager[Comparison]:
        """The layer's upper directory over its lowers, when that says what it changed
        relative to *parent*; otherwise the two layers mounted, to walk."""
        plan = self._native(layer_id, parent) if native else None
        if plan is None:
            return super().compare(layer_id, parent)
        upper, lowers = plan
        from graphdriver.drivers.values import Comparison, Prepared

        return Prepared(Comparison(upper, lowers=tuple(lowers), opaque_xattr=self.opaque_xattr))

    def metadata(self, layer_id: str) -> dict[str, str]:
        folder = self.resolve(layer_id)
        meta = {
            "dir": folder,
            "UpperDir": os.path.join(folder, DIFF_DIR),
            "WorkDir": os.path.join(folder, WORK_DIR),
            "MergedDir": self._merged(folder),
        }
        lowers = self._lowers(folder)
        if lowers:
            meta["LowerDir"] = ":".join(lowers)
        if os.path.exists(os.path.join(folder, LOWERMAPS_FILE)):
            meta["IdmappedLowers"] = "true"
        limit = limit_of(folder)
        if limit:
            meta["SizeLimit"] = str(limit.get("size"))
        return meta


def _maps_doc(maps: IDMappings) -> list[str]:
    return [str(maps.uids), str(maps.gids)]


def _maps_of(doc: Any) -> IDMappings:
    from graphdriver.idmap import IDMappings

    if not (isinstance(doc, list) and len(doc) == 2 and all(isinstance(x, str) for x in doc)):
        raise GraphDriverError(LOWERMAPS_FILE, f"malformed id maps {doc!r}")
    return IDMappings.parse(doc[0], doc[1])

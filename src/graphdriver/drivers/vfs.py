"""The ``vfs`` driver: every layer a full copy of its parent's tree.

Layout::

    <home>/<id>/layerchain.json   ancestors' folders, nearest first (null for a base)
    <home>/<id>/fs/               the layer's whole root filesystem
    <home>/<id>/tree-made         a child's: empty, made right after the copy of its parent's
                                  tree (its ctime parts copies from what was written since)

A new layer starts as a copy of its parent's ``fs`` (cloned where the
filesystem shares extents, see :mod:`graphdriver.fs.tree`), so ``get``
needs no mount and no privilege: it hands out ``fs`` itself.  Applying a layer
tarball writes straight into ``fs`` with whiteouts carried out as deletions.
It is slow and wasteful of space, and it works on any filesystem, for any user
(without privilege, files keep the user's own ids and a parent's device nodes
are left out of the copy, as they could not have been extracted either).

Driver options (``--opt KEY=VALUE``):

``copy``
    ``auto`` (default) clones file data where the filesystem can and copies it
    otherwise; ``reflink`` requires cloning and refuses a home that cannot;
    ``copy`` always copies the bytes, so layers never share extents.
``size``
    Taken as every driver takes it (the size limit of writable layers created
    without ``--size``), but vfs cannot limit sizes: a writable layer that
    would get it is refused (:class:`Unsupported`, exit 7), as ``--size`` is,
    rather than made unlimited; ``status`` says so.
"""

from __future__ import annotations

import errno
import os

from graphdriver.drivers.base import Driver, DriverConfig, nearest_existing, probe_scratch, unfinished_probe
from graphdriver.errors import REFUSED, GraphDriverError, InvalidArgument, NotFound, Unsupported, read_refused
from graphdriver.fs import privileged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

    from graphdriver.drivers.values import ApplyTarget, CreateOpts
    from graphdriver.idmap import IDMappings

#: The layer's root filesystem, inside its folder.
FS_DIR = "fs"

# Option value -> copy_tree's reflink argument.
_COPY_MODES: dict[str, bool | None] = {"auto": None, "reflink": True, "copy": False}


class VfsDriver(Driver):
    """Layers as plain directories, each a full copy of its parent."""

    name: ClassVar[str] = "vfs"
    OPTIONS: ClassVar[frozenset[str]] = frozenset({"copy"})
    #: A child is a copy of its parent: with other id maps, a copy with its owners shifted.
    SHIFTS_IDS: ClassVar[bool] = True
    MOUNTS_NOTHING: ClassVar[bool] = True

    def __init__(self, config: DriverConfig) -> None:
        mode = config.options.get("copy", "auto")
        if mode not in _COPY_MODES:
            raise InvalidArgument(f"option copy={mode!r} for driver vfs", "expected auto, reflink or copy")
        super().__init__(config)
        self.copy_mode = mode
        self._reflinks: bool | None = None
        if mode == "reflink" and not self.reflinks():
            raise Unsupported(
                f"vfs with copy=reflink at {self.home}",
                "the filesystem cannot clone files (use xfs with reflink=1 or btrfs, or copy=auto)",
            )

    # ----- probing and status --------------------------------------------------

    @classmethod
    def probe(cls, home: str) -> None:
        """vfs needs only a directory it can write in."""
        existing = nearest_existing(home)
        if not os.path.isdir(existing):
            raise Unsupported(f"vfs home {home}", f"{existing} is not a directory; choose another home")
        try:
            probe, held = probe_scratch(existing, "vfs")
            try:
                os.rmdir(probe)
            finally:
                os.close(held)
        except OSError as e:
            if unfinished_probe(home, existing, e):
                return
            raise Unsupported(
                f"vfs home {home}",
                f"cannot create directories in {existing} ({e.strerror}); "
                "choose a writable home or fix its permissions",
            ) from e

    def status(self) -> list[tuple[str, str]]:
        return [
            ("Backing Filesystem", backing_filesystem(self.home)),
            ("Reflinks", "yes" if self.reflinks() else "no"),
            ("Copy", self.copy_mode),
            ("Home", self.home),
        ]

    def reflinks(self) -> bool:
        """Whether files in the home can be cloned (probed once per driver; in the folder
        the home will be made in, where it is not made yet)."""
        if self._reflinks is None:
            from graphdriver.fs.tree import reflink_supported

            self._reflinks = reflink_supported(nearest_existing(self.home))
        return self._reflinks

    # ----- the driver steps ------------------------------------------------------

    def _create(self, layer_id: str, folder: str, parent: str | None, opts: CreateOpts, *, rw: bool) -> None:
        fs = os.path.join(folder, FS_DIR)
        maps = opts.idmaps or self.config.idmaps
        if parent is None:
            self._make_root(fs, maps)
            return
        source = self._fs(parent)
        try:
            from graphdriver.fs.tree import copy_tree

            copy_tree(source, fs, reflink=_COPY_MODES[self.copy_mode])
        except OSError as e:
            what = f"layer {layer_id}"
            if self.copy_mode == "reflink" and e.errno in (errno.EOPNOTSUPP, errno.EXDEV):
                # A parent in another store may sit on a filesystem that cannot share.
                why = f"cannot clone the files of parent {parent}: {e.strerror or e}"  # never the path
                raise Unsupported(what, why) from e
            # A file or folder of the parent this user may not read (one of mode 0000, or another
            # user's) is named by that layer and its path there, never where the store keeps it.
            refused = read_refused(e, [(source, parent)])
            if refused is not None:
                raise refused from e
            # Any other permission this user lacks is exit 7 too.
            kind = Unsupported if e.errno in REFUSED else GraphDriverError
            raise kind(what, f"cannot copy the tree of parent {parent}: {e.strerror or e}") from e
        if opts.parent_idmaps is not None and opts.parent_idmaps != maps:
            from graphdriver.fs.tree import shift_owners

            shift_owners(fs, lambda uid, gid: opts.parent_idmaps.translate(maps, uid, gid))  # type: ignore[union-attr]

    def _make_root(self, fs: str, maps: IDMappings) -> None:
        """An empty root directory: 0755, owned by the id maps' root."""
        os.mkdir(fs)
        uid = maps.uids.to_host(0)
        gid = maps.gids.to_host(0)
        try:
            os.chown(fs, uid, gid)
        except OSError as e:
            # Without privilege the directory stays the user's, as everything it writes.
            if privileged() or e.errno not in (errno.EPERM, errno.EINVAL):
                raise
        os.chmod(fs, 0o755)  # mkdir's mode is masked by the umask

    def _mount(self, layer_id: str, mount_label: str) -> str:
        return self._fs(layer_id)

    def _unmount(self, layer_id: str) -> None:
        """Nothing was mounted."""

    def _destroy(self, folder: str) -> None:
        # A layer holds a whole tree, of any depth a tarball or a container made.
        from graphdriver.fs.tree import remove_tree

        remove_tree(folder)

    def apply_target(self, layer_id: str) -> ApplyTarget:
        from graphdriver.drivers.values import ApplyTarget

        return ApplyTarget(path=self._fs(layer_id))  # whiteouts delete: a full tree

    def _fs(self, layer_id: str) -> str:
        """The root filesystem directory of a layer (of any home)."""
        fs = os.path.join(self.resolve(layer_id), FS_DIR)
        if not os.path.isdir(fs):  # (the store tells a layer removed meanwhile from a damaged one)
            raise NotFound(f"layer {layer_id}", f"its files are missing (its {FS_DIR} directory)")
        return fs


def backing_filesystem(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding *path*, from the mount table ("unknown" without one)."""
    from graphdriver.fs.mounts import filesystem_of  # the one mountinfo parser

    try:
        info = filesystem_of(path, mountinfo)
    except OSError:
        return "unknown"
    return info.fstype if info is not None else "unknown"

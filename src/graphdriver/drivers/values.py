"""What passes between the store and a driver beside layer ids and paths.

- :class:`CreateOpts`: what ``create`` is given;
- :class:`ApplyTarget`: where and how a tarball is applied to a layer;
- :class:`Comparison`: the trees that say what a layer changed, handed out by
  :meth:`Driver.compare <graphdriver.drivers.base.Driver.compare>` inside a ``with``
  block (:class:`Compared` holds the mounts, :class:`Prepared` has none);
- :class:`Mounted`: a layer held mounted for a ``with`` block;
- :class:`BaseImages`: the optional protocol of a driver with ready-made base layers.

Apart from :mod:`graphdriver.drivers.base` so that opening a driver (``mount``,
``layer``, ``status``) creates none of these classes: each costs a command about
as much to make as a small module to load.
"""

from __future__ import annotations

import abc

from graphdriver.drivers.base import DELETE_WHITEOUTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from graphdriver.drivers.base import Driver
    from graphdriver.idmap import IDMappings


class CreateOpts:
    """Options for create and create_rw (the seeds' ``CreateOpts``)."""

    __slots__ = ("idmaps", "mount_label", "parent_idmaps", "storage_opt")

    def __init__(self, mount_label: str = "", storage_opt: Mapping[str, str] | None = None,
                 idmaps: IDMappings | None = None, parent_idmaps: IDMappings | None = None) -> None:
        self.mount_label = mount_label
        self.storage_opt: Mapping[str, str] = dict(storage_opt or {})
        #: The layer's own id maps (None: the store's), and its parent's where they differ
        #: (a driver with :attr:`Driver.SHIFTS_IDS` stores the parent's files shifted).
        self.idmaps = idmaps
        self.parent_idmaps = parent_idmaps


def _overlay_opaque_xattr() -> str:
    """``trusted.overlay.opaque``, from the module that knows overlayfs's names (loaded when a
    layer's contents are read or written, not when a driver is opened)."""
    from graphdriver.fs.overlayfs import OPAQUE_XATTR

    return OPAQUE_XATTR


class ApplyTarget:
    """Where and how a tarball is applied to a layer."""

    __slots__ = ("lower_dirs", "opaque_xattr", "path", "whiteouts")

    def __init__(
        self,
        path: str,
        whiteouts: str = DELETE_WHITEOUTS,
        lower_dirs: tuple[str, ...] = (),
        opaque_xattr: str | None = None,
    ) -> None:
        self.path = path
        #: :data:`DELETE_WHITEOUTS` or :data:`OVERLAY_WHITEOUTS`.
        self.whiteouts = whiteouts
        #: The ancestors' directories, nearest first: hardlink targets the layer itself
        #: lacks are searched there, and deletions only matter where they hide something.
        self.lower_dirs = tuple(lower_dirs)
        #: The xattr that marks an opaque directory with overlay whiteouts (None: overlay's own).
        self.opaque_xattr = opaque_xattr or _overlay_opaque_xattr()


class Comparison:
    """The directories that say what a layer changed relative to a parent.

    Either two trees to walk (*root* against *parent_root*, None for no parent,
    *since* when the layer's tree was made on the parent's if known: see
    :meth:`~graphdriver.drivers.base.Driver.written_since`), or an upper directory
    *root* over *lowers* that itself records the changes (overlay's whiteouts and
    opaque directories): :attr:`native`.
    """

    __slots__ = ("data_dirs", "lowers", "opaque_xattr", "parent_root", "root", "since")

    def __init__(
        self,
        root: str,
        *,
        parent_root: str | None = None,
        lowers: tuple[str, ...] | None = None,
        opaque_xattr: str | None = None,
        data_dirs: tuple[str, ...] = (),
        since: int | None = None,
    ) -> None:
        #: The tree holding the layer's files as changes name them.
        self.root = root
        self.parent_root = parent_root
        self.since = since
        self.lowers = lowers
        self.opaque_xattr = opaque_xattr or _overlay_opaque_xattr()
        #: The layer's folder and its ancestors', nearest first, for what a layer
        #: format keeps beside the files (the Windows metadata sidecar).
        self.data_dirs = data_dirs

    @property
    def native(self) -> bool:
        return self.lowers is not None


class Mounted:
    """A layer held mounted for a ``with`` block, which gets its path.

    (Classes rather than ``contextlib`` generators: this module is loaded by
    ``mount``, and importing :mod:`contextlib` would cost it more than its work.)
    """

    def __init__(self, driver: Driver, layer_id: str) -> None:
        self.driver = driver
        self.layer_id = layer_id

    def __enter__(self) -> str:
        return self.driver.get(self.layer_id, hold=True)

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.driver.put(self.layer_id, hold=True)


class Compared:
    """A layer and its parent held mounted for a ``with`` block, which gets their :class:`Comparison`."""

    def __init__(
        self, driver: Driver, layer_id: str, parent: str | None, data_dirs: tuple[str, ...] = ()
    ) -> None:
        self.driver = driver
        self.layer_id = layer_id
        self.parent = parent
        self.data_dirs = data_dirs

    def __enter__(self) -> Comparison:
        since = self.driver.written_since(self.layer_id, self.parent)
        new = self.driver.get(self.layer_id, hold=True)
        try:
            old = None if self.parent is None else self.driver.get(self.parent, hold=True)
        except BaseException:
            self.driver.put(self.layer_id, hold=True)
            raise
        return Comparison(new, parent_root=old, data_dirs=self.data_dirs, since=since)

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        try:
            if self.parent is not None:
                self.driver.put(self.parent, hold=True)
        finally:
            self.driver.put(self.layer_id, hold=True)


class Prepared:
    """A :class:`Comparison` known before the block: nothing to mount or release."""

    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison

    def __enter__(self) -> Comparison:
        return self.comparison

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        return None


class BaseImages(abc.ABC):
    """An optional ability: a driver that registers ready-made base layers it finds
    (the seeds' ``GetCustomImageInfos``).  Each info has ``id``, ``created`` and ``size``."""

    @abc.abstractmethod
    def base_images(self) -> list[Any]:
        """Register the base images as read-only layers (idempotent); returns them."""

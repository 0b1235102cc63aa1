"""A layer's content in and out: where :mod:`graphdriver.layerio` meets a driver's directories.

A driver hands back directories (:meth:`~graphdriver.drivers.base.Driver.apply_target`,
:meth:`~graphdriver.drivers.base.Driver.compare`); these functions apply a tarball
to them, list and export what a layer changed, and serve its files for tar-split
reassembly, in the layer format the driver stores (Docker/OCI, or Windows).
"""

from __future__ import annotations

from graphdriver.drivers.base import OVERLAY_WHITEOUTS, WINDOWS_FORMAT
from graphdriver.errors import raise_refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO, NoReturn

    from graphdriver.diff.changes import Change
    from graphdriver.drivers.base import Driver
    from graphdriver.drivers.values import Comparison
    from graphdriver.idmap import IDMappings
    from graphdriver.layerio.extract import EntrySource
    from graphdriver.layerio.getter import FileGetter
    from graphdriver.layerio.ingest import IngestResult

    #: The old tree's (uid, gid) as the compared layer stores them.
    Owner = Callable[[int, int], tuple[int, int]]
    #: Applies entries to the layer (root fd, lower layers' fds) and returns its size.
    Writer = Callable[[EntrySource, int, tuple[int, ...]], int]


def apply(driver: Driver, layer_id: str, stream: BinaryIO, *, tarsplit_out: BinaryIO | None = None,
          idmaps: IDMappings | None = None) -> IngestResult:
    """Apply a (possibly compressed) tarball to the layer in one pass, learning its digests.

    *tarsplit_out* receives the gzip-compressed tar-split metadata.  Extraction
    runs confined to the driver's apply target (see :mod:`graphdriver.fs.confine`).
    *idmaps* are the layer's (default: the store's).  The caller has asked
    :meth:`~graphdriver.drivers.base.Driver.check_apply` first, under the store's lock.
    """
    from graphdriver.layerio.ingest import ingest

    target = driver.apply_target(layer_id)
    maps = driver.config.idmaps if idmaps is None else idmaps
    if driver.LAYER_FORMAT == WINDOWS_FORMAT:
        write = _windows_writer(maps, target.whiteouts == OVERLAY_WHITEOUTS)
    else:
        write = _oci_writer(maps, target.whiteouts, target.lower_dirs, target.opaque_xattr)
    result = ingest(stream, target.path, write, extra_dirs=target.lower_dirs, tarsplit_out=tarsplit_out)
    driver.after_apply(layer_id)
    return result


def _oci_writer(idmaps: IDMappings, whiteouts: str, lowers: tuple[str, ...], opaque_xattr: str) -> Writer:
    import functools  # (with collections: only the commands that write layers load it)

    from graphdriver.layerio.extract import ApplyOptions, extract_entries
    opts = ApplyOptions(
        idmaps=idmaps,
        whiteouts=whiteouts,  # the driver's word for it, which WhiteoutMode spells alike
        lower_dirs=lowers,
        opaque_xattr=opaque_xattr,
    )
    return functools.partial(extract_entries, opts=opts)


def _windows_writer(idmaps: IDMappings, whiteout_devices: bool) -> Writer:
    import functools

    from graphdriver.layerio.windows import apply as winapply
    from graphdriver.layerio.windows.layer import MUTATED_FILES

    owner = None if idmaps.identity else (idmaps.uids.to_host(0), idmaps.gids.to_host(0))
    plan = winapply.ApplyPlan(whiteout_devices=whiteout_devices, mutated=dict(MUTATED_FILES), owner=owner)
    return functools.partial(winapply.apply_windows_layer, plan=plan)


def _changes_of(c: Comparison, windows: bool, owner: Owner | None = None) -> list[Change]:
    """What the compared layer changed, paths relative to ``c.root``."""
    if windows and c.native:
        from graphdriver.layerio.windows.layer import own_changes

        return own_changes(c.data_dirs)
    if c.lowers is not None:
        from graphdriver.diff import upper

        return upper.changes(c.root, c.lowers, opaque_xattr=c.opaque_xattr)
    from graphdriver.diff.walk import changes_between

    return changes_between(c.root, c.parent_root, owner, c.since)


def changes(driver: Driver, layer_id: str, parent: str | None, *, native: bool = True,
            owner: Owner | None = None) -> list[Change]:
    """What *layer_id* changed relative to *parent*, sorted by path.

    *native* False walks the two trees even where the driver could say it
    itself (to cross-check the two).  Windows layers name their changes by
    their paths in the layer, as the seeds do: ``/Files/...`` and, compared
    with their own parent, ``/Hives/...`` and ``/UtilityVM/...``.  *owner*
    translates the parent tree's owners where the two layers store ids under
    other maps.
    """
    windows = driver.LAYER_FORMAT == WINDOWS_FORMAT
    with driver.compare(layer_id, parent, native=native) as c:
        try:
            found = _changes_of(c, windows, owner)
            if windows:
                return _windows_changes(c, found)
        except OSError as e:
            _raise_named(e, c, layer_id, parent)
    return found


def _windows_changes(c: Comparison, found: list[Change]) -> list[Change]:
    """*found* (paths under ``Files/``) as paths of the layer, with what the layer holds
    beside ``Files/`` when it is compared with its own parent (the seeds' change list)."""
    from graphdriver.diff.changes import Change
    from graphdriver.layerio.windows.layout import FILES

    out = [Change("/" + FILES + ch.path, ch.kind) for ch in found]
    if c.native:
        from graphdriver.diff.changes import change_sort_key
        from graphdriver.layerio.windows.layer import extra_changes

        out = sorted([*out, *extra_changes(c.data_dirs)], key=change_sort_key)
    return out


def export(driver: Driver, layer_id: str, parent: str | None, out: BinaryIO, *,
           idmaps: IDMappings | None = None, owner: Owner | None = None, native: bool = True) -> None:
    """Write the layer tarball of what *layer_id* changed relative to *parent* to *out*.

    Owners go out as container ids through *idmaps* (the layer's; default the store's).
    """
    maps = driver.config.idmaps if idmaps is None else idmaps
    with driver.compare(layer_id, parent, native=native) as c:
        try:
            _export(driver, c, out, maps, owner)
        except OSError as e:
            _raise_named(e, c, layer_id, parent)


def _export(driver: Driver, c: Comparison, out: BinaryIO, maps: IDMappings, owner: Owner | None) -> None:
    """:func:`export` once the layer is compared (*c*)."""
    if driver.LAYER_FORMAT == WINDOWS_FORMAT:
        from graphdriver.layerio.windows import layer

        found = _changes_of(c, True)
        layer.export(c.root, found, c.data_dirs, out, own_extras=c.native)
    elif c.lowers is not None:
        from graphdriver.diff import upper

        upper.export(c.root, c.lowers, out, maps, opaque_xattr=c.opaque_xattr)
    else:
        from graphdriver.diff.walk import changes_between
        from graphdriver.layerio.export import export_changes

        export_changes(c.root, changes_between(c.root, c.parent_root, owner, c.since), out, maps)


def size(driver: Driver, layer_id: str, parent: str | None, *, native: bool = True,
         owner: Owner | None = None) -> int:
    """Bytes of regular files *layer_id* added or changed (hardlinked inodes counted once).

    A Windows layer compared with its own parent counts its ``Hives/`` and
    ``UtilityVM/`` files too, as the seeds' DiffSize (the sizes of the files its
    change list names) does.
    """
    from graphdriver.diff.size import changes_size

    windows = driver.LAYER_FORMAT == WINDOWS_FORMAT
    with driver.compare(layer_id, parent, native=native) as c:
        try:
            if c.lowers is not None and not windows:
                from graphdriver.diff import upper

                return upper.size(c.root, c.lowers, opaque_xattr=c.opaque_xattr)
            found = _changes_of(c, windows, owner)
            if windows and c.native:
                return changes_size(c.data_dirs[0], _windows_changes(c, found))
            return changes_size(c.root, found)
        except OSError as e:
            _raise_named(e, c, layer_id, parent)


def _raise_named(error: OSError, c: Comparison, layer_id: str, parent: str | None) -> NoReturn:
    """Raise *error*, a read refused in a tree of *c* named as the path in its layer (a lower
    directory's path is the same path in the layer's view); any other error as it is.  A
    Windows layer's folders come first: its paths are those of its tarball (``Files/...``,
    ``Hives/...``), and ``c.root`` is its ``Files/``."""
    lowers = [(lower, layer_id) for lower in c.lowers or ()]
    folders = [(folder, layer_id) for folder in c.data_dirs]
    raise_refused(error, [*folders, (c.root, layer_id), (c.parent_root, parent), *lowers])


def files_root(driver: Driver, layer_id: str) -> str:
    """The folder of the layer's own files: overlay's upper directory (even while mounted),
    or the tree its tarball was applied to."""
    return driver.own_files(layer_id) or driver.apply_target(layer_id).path


def file_getter(driver: Driver, layer_id: str) -> FileGetter:
    """The layer's files by the names its tarball gave them, for tar-split reassembly.

    Served from the layer's own files (overlay's upper directory, even while
    mounted: only read) or the tree its tarball was applied to.
    """
    root = files_root(driver, layer_id)
    if driver.LAYER_FORMAT == WINDOWS_FORMAT:
        from graphdriver.layerio.windows.layer import WindowsFileGetter

        return WindowsFileGetter(root)
    from graphdriver.layerio.getter import DirFileGetter

    return DirFileGetter(root)

"""Putting images into the store: layers by chain id, checked against the config, then the record.

Each layer's id in the layer store is the hex of its chain id, so a layer
already stored (by any image) is reused, never imported twice.  Every layer
imported must give the DiffID the config's ``rootfs.diff_ids`` names; one
that does not refuses the image (exit 6) and what the load made is removed.
While a load runs, ``images/pending/<token>.json`` (locked by the loading
process) lists the layers it made, so that ``cleanup`` removes them if the
process dies; the image record is written last, atomically.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from graphdriver.errors import (
    AlreadyExists,
    ArchiveError,
    IntegrityError,
    NotFound,
    Precondition,
    Unsupported,
    shorten,
)
from graphdriver.fs import atomic
from graphdriver.fs.locking import claim, locked
from graphdriver.images import oci
from graphdriver.images.records import ImageRecord, ImageStore
from graphdriver.images.sources import SourceImage, SourceLayer

if TYPE_CHECKING:
    from graphdriver.store.layers import Store

#: Layer media types whose blob is the uncompressed tarball (its digest is the DiffID).
_UNCOMPRESSED = frozenset({oci.OCI_LAYER, oci.DOCKER_LAYER})
#: The markers of the work this process runs: what it relies on never keeps its own undo back.
_OURS: set[str] = set()


class Pending:
    """A load, pull, commit or removal under way: the layers it made or frees, for ``cleanup``
    if it dies."""

    def __init__(self, images: ImageStore, what: str, *, frees: list[str] | None = None) -> None:
        self.images = images
        self.path = os.path.join(images.pending_dir, f"{secrets.token_hex(8)}.json")
        self.what = what
        #: Layers this work made (removed again if it fails), and layers it reuses.
        self.made: list[str] = []
        self.uses: list[str] = []
        #: Layers this work removes where nothing else uses them (an image's, base first):
        #: ``cleanup`` finishes that if it dies; they are not busy meanwhile.
        self.frees = list(frees or [])
        self._lock: locked | None = None

    def __enter__(self) -> Pending:
        os.makedirs(self.images.pending_dir, 0o700, exist_ok=True)
        # The lock before the marker: a cleanup finds no marker of a live work unlocked (it
        # would take that work for a dead one's, and undo it).
        self._lock = locked(self.path + ".lock")
        self._lock.__enter__()
        _OURS.add(self.path)
        try:
            self._write()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _write(self) -> None:
        atomic.write_json(self.path, {"what": self.what, "layers": self.made, "uses": self.uses,
                                      "frees": self.frees, "pid": os.getpid()})

    def add(self, layer_id: str) -> None:
        """Say this work makes *layer_id* (before it does: a crash during it is then undone)."""
        self.made.append(layer_id)
        self._write()

    def forget(self, layer_id: str) -> None:
        """*layer_id* turned out to be another process's to make."""
        self.made.remove(layer_id)
        self._write()

    def use(self, layer_id: str) -> None:
        """Say this work relies on *layer_id* (so no removal takes it meanwhile)."""
        self.uses.append(layer_id)
        self._write()

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        atomic.remove_file(self.path)
        atomic.remove_file(self.path + ".lock")  # while held: a cleanup never finds it free
        _OURS.discard(self.path)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)


def busy_layers(images: ImageStore) -> set[str]:
    """Layers that load, pull, commit or container work still running in another process has
    made or relies on."""
    return set(busy_work(images))


def busy_work(images: ImageStore) -> dict[str, str]:
    """:func:`busy_layers`, each with the work that holds it (``load sha256:...``)."""
    from graphdriver.fs.locking import is_held

    out: dict[str, str] = {}
    try:
        names = [n for n in os.listdir(images.pending_dir) if n.endswith(".json")]
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(images.pending_dir, name)
        if path in _OURS or not is_held(path + ".lock"):
            continue
        try:
            marker = atomic.read_json(path)
            what = str(marker.get("what", "image work"))
            out.update((str(x), what) for x in (*marker.get("layers", []), *marker.get("uses", [])))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return out


def load_images(store: Store, sources: list[SourceImage], *, quiet: bool = True,
                report: Callable[[str], None] | None = None,
                each: Callable[[int, ImageRecord], None] | None = None) -> list[ImageRecord]:
    """Store every image of *sources*; returns their records (names moved to them). *each* is
    told of every image (its index in *sources*) once it is stored: an image that fails leaves
    those before it stored, as ``docker load`` leaves them."""
    images = ImageStore(store.root)
    records = []
    for src in sources:
        records.append(load_image(store, images, src, quiet=quiet, report=report))
        if each is not None:
            each(len(records) - 1, records[-1])
    return records


def load_image(store: Store, images: ImageStore, src: SourceImage, *, quiet: bool = True,
               report: Callable[[str], None] | None = None, work: str = "load") -> ImageRecord:
    """Store one image (*work* names it in a pending marker and in the advice of a refusal to
    run it again: ``load``, ``pull``)."""
    image_id = oci.sha256_digest(src.config)
    what = f"image {image_id[:19]}"
    config = oci.load_json(src.config, f"{what}: config")
    diff_ids = oci.checked_config(config, what)  # a wrong field: corrupt, before anything is made
    if len(src.layers) != len(diff_ids):
        raise IntegrityError(what, f"{len(src.layers)} layers but {len(diff_ids)} diff_ids in the config")
    check_os(store, config, what)
    layer_ids = [oci.hex_of(c) for c in oci.chain_ids(diff_ids)]
    kept: list[str] = []
    fresh: list[str] = []  # blobs this load wrote, removed again if it fails
    with Pending(images, f"{work} {image_id}") as pending:
        try:
            for i, (layer, diff_id) in enumerate(zip(src.layers, diff_ids, strict=True)):
                parent = layer_ids[i - 1] if i else None
                label = f"layer {i + 1}/{len(diff_ids)} {diff_id[7:19]}"
                pending.use(layer_ids[i])
                if present_in_use(store, layer_ids[i]):
                    check_reused(store, layer_ids[i], diff_id, parent, work)
                    _keep_blob(images, layer, diff_id, fresh)
                    if report is not None:
                        report(f"{label}: already present")
                else:
                    try:
                        _import_or_share(store, images, pending, layer, layer_ids[i], parent, diff_id,
                                         label, quiet, fresh, work)
                    except ArchiveError as e:  # "archive: truncated header" names no image, no layer
                        named = shorten(src.names[0]) if src.names else image_id[:19]
                        e.args = (f"image {named}, {label}: {e}",)
                        raise
                if layer.descriptor is not None and layer.descriptor.media_type not in _UNCOMPRESSED \
                        and images.has_blob(layer.descriptor.digest):
                    kept.append(layer.descriptor.digest)
            record = _record(images, src, image_id, config, layer_ids, diff_ids, kept)
            _write_record(store, images, src, record, kept, fresh)
        except BaseException:
            _undo(store, pending.made)
            keep = images.referenced_blobs()
            for digest in fresh:
                if keep is not None and oci.hex_of(digest) not in keep:
                    atomic.remove_file(images.blob_path(digest))
            raise
    return record


def _write_record(store: Store, images: ImageStore, src: SourceImage, record: ImageRecord, kept: list[str],
                  fresh: list[str]) -> None:
    """Write *record* (names moved to it), under the store lock, once the blobs it keeps are
    there: the removal of an image with these very blobs (``image rm`` of the image this load
    loads again) takes blobs no record names under that lock, also those this load found kept."""
    for _attempt in range(_ATTEMPTS):
        with store.locked():
            images.put_blob(src.config)
            if record.manifest is not None and src.manifest is not None:
                images.put_blob(src.manifest)
            if all(images.has_blob(digest) for digest in kept):
                previous = _existing(images, record.id)
                if previous is not None:
                    _merge(record, previous, src)
                images.put_named(record, src.names)  # taken from the images that had them
                return
        for layer, diff_id in zip(src.layers, record.diff_ids, strict=True):
            _keep_blob(images, layer, diff_id, fresh)  # again: those removed meanwhile
    raise Precondition(f"image {record.id[:19]}", "its blobs were removed while it was loaded, again and "
                       "again: load it again")


def check_os(store: Store, config: dict[str, Any], what: str) -> None:
    """Unsupported (exit 7) for an image of the other system than the store's driver holds:
    Windows layers for ``windowsfilter``, Linux ones for the others (as Docker refuses an image
    whose ``os`` is not the daemon's).  An image that names no system is taken."""
    system = config.get("os")
    windows = store.driver_name == "windowsfilter"
    if not isinstance(system, str) or not system or (system == "windows") == windows:
        return
    holds = "Windows" if windows else "Linux"
    raise Unsupported(what, f"is a {shorten(system, 40)} image, and driver {store.driver_name} holds {holds} "
                            "layers (a store for the other system needs another --root and --driver)")


def _record(images: ImageStore, src: SourceImage, image_id: str, config: dict[str, Any],
            layer_ids: list[str], diff_ids: list[str], kept: list[str]) -> ImageRecord:
    images.put_blob(src.config)
    manifest = None
    blobs = None
    compressed = [s.descriptor for s in src.layers
                  if s.descriptor is not None and s.descriptor.media_type not in _UNCOMPRESSED]
    if src.manifest is not None and len(kept) == len(compressed):
        manifest = images.put_blob(src.manifest)
        blobs = [s.descriptor.to_json() for s in src.layers if s.descriptor is not None]
    from graphdriver.store.records import now_rfc3339

    return ImageRecord(image_id, list(src.names), layer_ids, diff_ids, created=now_rfc3339(),
                       manifest=manifest, layer_blobs=blobs, platform=oci.platform_of(config),
                       digests=list(src.digests))


def _merge(record: ImageRecord, previous: ImageRecord, src: SourceImage) -> None:
    """*record*, made from an image the store has (*previous*), with what *previous* had.

    The image may come with another manifest than the one kept (other layer
    compression, Docker's media types or OCI's): the names and digested
    references it came by then have that one, and the others keep theirs (as
    Docker keeps a digest per reference), so a save or push by any name gives
    the digest it came with.
    """
    record.names = sorted(set(previous.names) | set(record.names))
    record.digests = sorted(set(previous.digests) | set(record.digests))
    record.pushed = previous.pushed
    record.created = previous.created or record.created
    record.name_manifests = dict(previous.name_manifests)
    if record.manifest is None:  # a docker-archive brings none: keep the one kept
        record.manifest, record.layer_blobs = previous.manifest, previous.layer_blobs
        return
    came = {"manifest": record.manifest, "layer_blobs": record.layer_blobs}
    if previous.manifest is not None:
        record.manifest, record.layer_blobs = previous.manifest, previous.layer_blobs
    for name in (*src.names, *src.digests):
        record.name_manifests[name] = came  # (put drops those that are the image's own manifest)


def _existing(images: ImageStore, image_id: str) -> ImageRecord | None:
    """The record of *image_id* if there is a sound one (an unreadable one is replaced)."""
    try:
        return images.get(image_id)
    except (NotFound, IntegrityError):
        return None


def present_in_use(store: Store, layer_id: str) -> bool:
    """Whether *layer_id*, which the caller's pending work now says it uses, is stored: asked
    under the store lock, so a removal of it has either finished (False) or not begun, and
    then never will (a removal refuses a layer live work uses)."""
    with store.locked():
        return _present(store, layer_id)


def _present(store: Store, layer_id: str, *, wait: bool = False) -> bool:
    """Whether *layer_id* is stored; with *wait*, first waits (up to an hour) while
    another process's import of it is pending and that process lives."""
    import time

    deadline = time.monotonic() + 3600
    while wait and store.records.is_pending(layer_id) and store.records.is_live(layer_id) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    return store.exists(layer_id)


#: How often a load tries to import a layer that other processes are importing and give up.
_ATTEMPTS = 3


def _import_or_share(store: Store, images: ImageStore, pending: Pending, layer: SourceLayer, layer_id: str,
                     parent: str | None, diff_id: str, label: str, quiet: bool, fresh: list[str],
                     work: str) -> None:
    """Import a layer the store lacks.  Another process importing it meanwhile is waited for
    and its layer shared; when that import failed, or its process died (what it left is undone
    then, as ``cleanup`` would), the layer is imported here after all."""
    from graphdriver.store.recovery import undo_dead_layer

    for attempt in range(_ATTEMPTS):
        pending.add(layer_id)  # before the import: a crash during it is ours to undo
        try:
            _import(store, images, layer, layer_id, parent, diff_id, label, quiet, fresh)
            return
        except AlreadyExists:
            pending.forget(layer_id)  # another process's: not ours to undo
            if _present(store, layer_id, wait=True):
                check_reused(store, layer_id, diff_id, parent, work)
                return
            if attempt == _ATTEMPTS - 1:
                raise
            undo_dead_layer(store, layer_id)


def check_reused(store: Store, layer_id: str, diff_id: str, parent: str | None, work: str) -> None:
    """Refuse the stored layer named by this chain id unless it is the image layer the image
    needs: read-only, made from a tarball of DiffID *diff_id*, on *parent*.  Layer ids are the
    caller's to choose, so a layer made otherwise (``create``, a container's, one imported on
    another parent) may bear the name; it is never taken for the image's.  That is a name
    taken (:class:`Precondition`, exit 5), nothing corrupt, and the advice names *work*, the
    command to run again (``load``, ``pull``, ``container commit NAME``); a true image layer
    whose files changed since its import is an integrity failure."""
    layer = store.record(layer_id)
    why = None
    if layer.writable:
        why = "is a writable (container) layer"
    elif layer.diff_digest is None:
        why = "holds no imported tarball (made by create, or its import never finished)"
    elif layer.diff_digest != diff_id:
        why = f"is stored with DiffID {layer.diff_digest}, not {diff_id}"
    elif layer.parent != parent:
        why = f"has parent {layer.parent or 'none'}, not {parent or 'none'} (its chain differs)"
    if why is not None:
        raise Precondition(f"layer {layer_id}", f"bears this image's chain id but {why}; remove it or "
                                                f"give it another id, then {work} again")
    changed = store.changed_since_import(layer_id)  # mounted writable: is it still that tarball?
    if changed is not None:
        raise IntegrityError(f"layer {layer_id}", f"cannot be shared: it {changed}")


def keeps_blob(desc: oci.Descriptor | None, diff_id: str) -> bool:
    """Whether the blob *desc* is kept to keep its manifest: a compressed one (an uncompressed
    tarball is the layer's own ``diff``, rebuilt at will)."""
    return desc is not None and desc.media_type not in _UNCOMPRESSED and desc.digest != diff_id


def _keep_blob(images: ImageStore, layer: SourceLayer, diff_id: str, fresh: list[str]) -> None:
    """Keep the compressed blob of a layer already stored, so that its manifest can be kept too."""
    desc = layer.descriptor
    if desc is None or not keeps_blob(desc, diff_id):
        return
    if images.has_blob(desc.digest) or layer.open is None:
        return
    os.makedirs(images.blobs_dir, 0o700, exist_ok=True)
    staging = images.blob_path(desc.digest) + f".partial-{os.getpid()}"
    sha = hashlib.sha256()
    size = 0
    out = os.fdopen(claim(staging), "wb")  # held until renamed or removed: see cleanup
    try:
        with layer.open() as blob:
            while chunk := blob.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
                out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        if "sha256:" + sha.hexdigest() != desc.digest or size != desc.size:
            raise IntegrityError(f"blob {desc.digest}", "its bytes do not match its digest and size")
        os.rename(staging, images.blob_path(desc.digest))
        fresh.append(desc.digest)
    finally:
        atomic.remove_file(staging)
        out.close()


def _import(store: Store, images: ImageStore, layer: SourceLayer, layer_id: str, parent: str | None,
            diff_id: str, label: str, quiet: bool, fresh: list[str]) -> None:
    """Import one layer blob; a compressed one is kept (checked against its digest) first, then
    imported from the kept copy.  The import itself runs in a confined child, so the blob is read
    twice rather than shared with it."""
    from graphdriver import progress

    desc = layer.descriptor
    keep = keeps_blob(desc, diff_id)
    if keep:
        assert desc is not None
        _keep_blob(images, layer, diff_id, fresh)
        opened: BinaryIO = open(images.blob_path(desc.digest), "rb")
    elif layer.open is None:
        raise IntegrityError(f"layer {diff_id}", "its blob is not at hand")
    else:
        opened = layer.open()
    with opened as blob:
        total = desc.size if desc is not None else progress.file_size(blob)
        with progress.reading(blob, label, total, quiet) as stream:
            record = store.import_layer(layer_id, parent, stream)
    if record.diff_digest != diff_id:
        raise IntegrityError(f"layer {diff_id}", f"its tarball's digest is {record.diff_digest}")
    if desc is not None and not keep and desc.digest not in (record.diff_digest, record.compressed_digest):
        raise IntegrityError(f"blob {desc.digest}", "its bytes do not match its digest")


def _undo(store: Store, made: list[str]) -> None:
    """Remove the layers a failed load made, top first (quietly: the first error is the one to tell)."""
    for layer_id in reversed(made):
        try:
            if store.exists(layer_id) and not store.children(layer_id):
                store.remove(layer_id)
        except Exception:  # never hide the load's own error behind a cleanup one
            pass

"""The bytes a layer was imported from, where an image kept them (``diff --compress original``)."""

from __future__ import annotations

from graphdriver.errors import IntegrityError, Precondition
from graphdriver.images.records import ImageStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.store.layers import Store


def original_blob(store: Store, layer_id: str) -> str | None:
    """The path of the kept compressed blob of *layer_id*; None when the blob an image came
    with for it is the uncompressed tarball (its digest is the DiffID: a layer pulled or
    loaded as ``application/vnd.oci.image.layer.v1.tar``), which no image keeps since the
    layer's own exact ``diff`` gives it byte for byte; Precondition (exit 5) when no image
    names a blob of it (a docker-archive's, a commit's, a layer imported alone)."""
    layer = store.record(layer_id)
    changed = store.changed_since_import(layer_id)
    if changed is not None:
        raise IntegrityError(f"layer {layer_id}", f"{changed}, nor do the compressed bytes it came in")
    images = ImageStore(store.root)
    plain = False
    for image in images.all():
        for lid, desc in zip(image.layers, image.layer_blobs or (), strict=False):
            digest = str(desc.get("digest", ""))
            if lid != layer_id:
                continue
            if digest == layer.diff_digest:
                plain = True
            elif images.has_blob(digest):
                return images.checked_blob(digest)
    if plain:
        return None
    raise Precondition(f"layer {layer_id}", "its imported compressed bytes were not kept (only images "
                       "loaded from OCI layouts or pulled keep them): use --compress gzip or zstd")

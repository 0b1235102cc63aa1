"""The compressed bytes a layer was imported from, where an image kept them (``diff --compress original``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphdriver.errors import IntegrityError, Precondition
from graphdriver.images.records import ImageStore

if TYPE_CHECKING:
    from graphdriver.store.layers import Store


def original_blob(store: Store, layer_id: str) -> str:
    """The path of the kept compressed blob of *layer_id*; Precondition (exit 5) when none was kept."""
    layer = store.record(layer_id)
    changed = store.changed_since_import(layer_id)
    if changed is not None:
        raise IntegrityError(f"layer {layer_id}", f"{changed}, nor do the compressed bytes it came in")
    images = ImageStore(store.root)
    for image in images.all():
        for lid, desc in zip(image.layers, image.layer_blobs or (), strict=False):
            digest = str(desc.get("digest", ""))
            if lid == layer_id and digest != layer.diff_digest and images.has_blob(digest):
                return images.checked_blob(digest)
    raise Precondition(f"layer {layer_id}", "its imported compressed bytes were not kept (only images "
                       "loaded from OCI layouts or pulled keep them): use --compress gzip or zstd")

"""Which images and containers hold a layer: asked by the layer store before it removes one.

The image and container records sit above the layer store (``images/`` and
``containers/`` beside its ``layers/``), so the store asks here, and only
when such records exist: the layer commands of a store without images never
import this.  An image holds every layer of its chain, a container its init
and writable layers (containers-storage refuses the same removals: layer
used by an image, by a container).  A record that cannot be read holds
nothing here; listing names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphdriver.images import container_layers as ctrs
from graphdriver.images.records import ImageStore

if TYPE_CHECKING:
    from graphdriver.store.layers import Store


def holders(store: Store, layer_id: str) -> list[str]:
    """``image NAME`` and ``container NAME`` for each record that holds *layer_id*."""
    out = [f"image {image.names[0] if image.names else image.id}"
           for image in ImageStore(store.root).scan()[0] if layer_id in image.layers]
    out += [container_holder(c.name) for c in ctrs.scan(store)[0] if layer_id in (c.layer, c.init)]
    return out


def container_holder(name: str) -> str:
    """How container *name* is named as a holder (what its own removal passes as ``holder``)."""
    return f"container {name}"

"""Which images and containers hold a layer: asked by the layer store before it removes one.

The image and container records sit above the layer store (``images/`` and
``containers/`` beside its ``layers/``), so the store asks here, and only
when such records exist: the layer commands of a store without images never
import this.  An image holds every layer of its chain, a container its init
and writable layers (containers-storage refuses the same removals: layer
used by an image, by a container).  A record that cannot be read may hold
the layer all the same, so it is named too: an unreadable container record
holds the layers its file name gives, an unreadable image record any layer
an image could hold.  Nothing a record names is removed while it is unreadable.
A load, pull, commit or container create running in another process holds the
layers it made or relies on until it has written its record: its pending marker
names them, and a removal asks under the store lock, which is where that work
asks whether a layer it relies on is still there.
"""

from __future__ import annotations

from graphdriver.images import container_layers as ctrs
from graphdriver.images.overview import is_image_layer_id
from graphdriver.images.records import ImageStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.store.layers import Store


def holders(store: Store, layer_id: str, *, containers: bool = True) -> list[str]:
    """``image NAME`` and (unless not *containers*) ``container NAME`` for each record that
    holds (or may hold) *layer_id*, and ``a running WORK`` for image work under way that
    relies on it."""
    images, bad_images = ImageStore(store.root).scan()
    out = [f"image {image.names[0] if image.names else image.id}"
           for image in images if layer_id in image.layers]
    if is_image_layer_id(layer_id):  # what an unreadable image record names is unknown
        out += [f"the unreadable {e.what}" for e in bad_images]
    from graphdriver.images.loading import busy_work

    work = busy_work(ImageStore(store.root)).get(layer_id)
    if work is not None:  # a running load, pull, commit or container create relies on it
        out.append(f"a running {work}")
    if not containers:
        return out
    found, unreadable = ctrs.scan_by_name(store)
    out += [container_holder(c.name) for c in found if layer_id in (c.layer, c.init)]
    out += [f"the unreadable {e.what}" for name, e in unreadable.items()
            if layer_id in (name, name + ctrs.INIT_SUFFIX)]
    return out


def container_holder(name: str) -> str:
    """How container *name* is named as a holder (what its own removal passes as ``holder``)."""
    return f"container {name}"

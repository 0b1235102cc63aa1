"""What the store holds and uses: ``tree``, ``df`` and ``prune``.

* ``tree`` draws the layer graph from the base layers up, each layer with
  its own size, the images whose top it is, the containers it belongs to,
  and ``shared`` when more than one image uses it (``podman image tree``).
* ``df`` sums what images, containers and layers no image or container uses
  take on disk, and what ``prune`` would free (``docker system df``).
* ``prune`` removes images with no name that no container uses (left behind
  when a name moved to another image), then the image layers (ids that are
  chain ids) nothing uses, and blobs no image names; layers made with the
  layer commands are yours, and go only with ``--layers``.  Mounted layers
  and layers with children are never removed.
"""

from __future__ import annotations

from graphdriver.images import container_layers as ctrs
from graphdriver.images.records import ImageRecord, ImageStore
from graphdriver.units import format_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from graphdriver.store.layers import Store

_HEX = frozenset("0123456789abcdef")


def is_image_layer_id(layer_id: str) -> bool:
    """Whether *layer_id* is a chain id's hex (a layer an image load, pull or commit made)."""
    return len(layer_id) == 64 and set(layer_id) <= _HEX


class Usage:
    """Who uses which layer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        good, self.unreadable = store.scan_layers()
        self.layers = {layer.id: layer for layer in good}
        self._sizes: dict[str, int] = {}
        self.images, bad_images = ImageStore(store.root).scan()
        self.containers, unreadable = ctrs.scan_by_name(store)
        # An unreadable record may hold what it held before: a container's layers
        # are known by its file name, an image's are unknown (any an image could hold).
        self.held_unread = {i for i in self.layers if is_image_layer_id(i)} if bad_images else set()
        self.image_users: dict[str, list[ImageRecord]] = {}
        for image in self.images:
            for layer_id in image.layers:
                self.image_users.setdefault(layer_id, []).append(image)
        self.container_of: dict[str, str] = {}
        for c in self.containers:
            self.container_of[c.layer] = f"container {c.name}"
            self.container_of[c.init] = f"container {c.name} (init)"
        for name in unreadable:
            self.container_of[name] = f"container {name} (unreadable record)"
            self.container_of[name + ctrs.INIT_SUFFIX] = f"container {name} (init, unreadable record)"
        self.children: dict[str | None, list[str]] = {}
        for layer in self.layers.values():
            parent = layer.parent if layer.parent in self.layers else None
            self.children.setdefault(parent, []).append(layer.id)
        for kids in self.children.values():
            kids.sort()

    def own_size(self, layer_id: str) -> int:
        """What *layer_id* adds: its recorded size, or for a layer whose record has none (a
        writable layer, which changes while used) what ``diffsize`` counts now."""
        layer = self.layers[layer_id]
        recorded = layer.uncompressed_size if layer.uncompressed_size is not None else layer.size
        if recorded is not None and not layer.writable:
            return int(recorded)
        if layer_id not in self._sizes:
            from graphdriver.errors import GraphDriverError, Unsupported

            try:
                self._sizes[layer_id] = self.store.diff_size(layer_id)
            except (PermissionError, Unsupported):
                raise  # a folder closed to this user: no size to guess (the CLI reads it as the owner)
            except (GraphDriverError, OSError):
                self._sizes[layer_id] = int(recorded or 0)  # damaged or gone meanwhile: what was recorded
        return self._sizes[layer_id]

    def used(self) -> set[str]:
        """Layers an image or a container needs, with their ancestors."""
        out: set[str] = set()
        for layer_id in [*self.image_users, *self.container_of, *self.held_unread]:
            while layer_id in self.layers and layer_id not in out:
                out.add(layer_id)
                layer_id = self.layers[layer_id].parent or ""
        return out


def tree_nodes(store: Store, usage: Usage | None = None) -> list[dict[str, Any]]:
    """The layer graph from the base layers up (``tree --json``): per layer its id, own size,
    whether several images share it, the images whose top it is, its container, whether
    it is writable, and its children.  Built without recursion: a chain may be deeper than
    Python's recursion limit."""
    usage = usage or Usage(store)

    def node(layer_id: str) -> dict[str, Any]:
        layer = usage.layers[layer_id]
        users = usage.image_users.get(layer_id, [])
        tops = [n for image in users if image.top_layer == layer_id for n in (image.names or [image.id[:19]])]
        return {"id": layer_id, "size": usage.own_size(layer_id), "shared": len(users) > 1, "images": tops,
                "container": usage.container_of.get(layer_id), "writable": bool(layer.writable),
                "children": []}

    roots = [node(root) for root in usage.children.get(None, [])]
    work = list(roots)
    while work:
        parent = work.pop()
        kids = [node(kid) for kid in usage.children.get(parent["id"], [])]
        parent["children"] = kids
        work.extend(kids)
    return roots


def _label(node: dict[str, Any]) -> str:
    layer_id = node["id"]
    parts = [layer_id[:12] if is_image_layer_id(layer_id) else layer_id, format_size(node["size"])]
    if node["shared"]:
        parts.append("shared")
    if node["images"]:
        parts.append("image " + ", ".join(node["images"]))
    if node["container"]:
        parts.append(node["container"])
    if node["writable"]:
        parts.append("rw")
    return "  ".join(parts)


def tree(store: Store, usage: Usage | None = None) -> list[str]:
    """The lines of the layer graph."""
    lines: list[str] = []
    # (node, the prefix of its line, whether it is its parent's last child, whether it is a root)
    work = [(root, "", True, True) for root in reversed(tree_nodes(store, usage))]
    while work:
        node, prefix, last, top = work.pop()
        branch = "" if top else ("└── " if last else "├── ")
        lines.append(prefix + branch + _label(node))
        kids = node["children"]
        deeper = prefix + ("" if top else ("    " if last else "│   "))
        work.extend((kid, deeper, i == len(kids) - 1, False) for i, kid in reversed(list(enumerate(kids))))
    return lines


def df(store: Store, usage: Usage | None = None) -> dict[str, Any]:
    """Totals per kind, and what ``prune`` (and ``prune --layers``) would free."""
    usage = usage or Usage(store)
    used = usage.used()
    in_images: set[str] = set(usage.image_users)
    image_bytes = sum(usage.own_size(i) for i in in_images if i in usage.layers)
    # What containers wrote (Docker's SizeRw): their writable layers, not the init layers.
    container_bytes = sum(usage.own_size(c.layer) for c in usage.containers if c.layer in usage.layers)
    loose = [i for i in usage.layers if i not in used]
    loose_bytes = sum(usage.own_size(i) for i in loose)
    active = {c.image for c in usage.containers}
    plan = prune_plan(store, usage)
    with_layers = prune_plan(store, usage, layers=True)["layers"]
    return {
        "images": {"total": len(usage.images), "active": len(active), "size": image_bytes,
                   "reclaimable": sum(usage.own_size(i) for i in plan["layers"]
                                      if i in in_images)},
        "containers": {"total": len(usage.containers), "size": container_bytes},
        "layers": {"total": len(loose), "size": loose_bytes,
                   "reclaimable": sum(usage.own_size(i) for i in plan["layers"] if i in loose),
                   "reclaimable_with_layers": sum(usage.own_size(i) for i in with_layers if i in loose)},
        "prune": plan,
    }


def prune_plan(store: Store, usage: Usage | None = None, *, layers: bool = False) -> dict[str, list[str]]:
    """What :func:`prune` would remove: image ids, then layer ids (top first)."""
    usage = usage or Usage(store)
    busy = {c.image for c in usage.containers}
    images = [i for i in usage.images if not i.names and not i.digests and i.id not in busy]
    gone = {i.id for i in images}
    keep: set[str] = set()
    for image in usage.images:
        if image.id not in gone:
            keep.update(image.layers)
    keep.update(usage.container_of)
    keep |= usage.held_unread
    # A mounted layer is never removed (prune keeps it): not counted as what prune frees.
    keep.update(i for i in usage.layers if usage.store.driver.mount_count(i) > 0)
    from graphdriver.images.loading import busy_layers

    keep |= busy_layers(ImageStore(store.root))  # what running loads and pulls make or reuse
    # Ancestors of what is kept stay too.
    kept_all: set[str] = set()
    for layer_id in keep:
        while layer_id in usage.layers and layer_id not in kept_all:
            kept_all.add(layer_id)
            layer_id = usage.layers[layer_id].parent or ""
    # A read-only store's layers are never this store's to remove.
    candidates = [i for i, layer in usage.layers.items() if i not in kept_all and not layer.read_only_store
                  and (layers or is_image_layer_id(i))]
    # Top first: a layer goes only once every child of it is going.
    order: list[str] = []
    going = set(candidates)

    # Children before parents (an explicit stack: chains may be deeper than recursion goes).
    goes: dict[str, bool] = {}
    work: list[tuple[str, bool]] = [(root, False) for root in reversed(usage.children.get(None, []))]
    while work:
        layer_id, kids_done = work.pop()
        kids = usage.children.get(layer_id, [])
        if not kids_done:
            work.append((layer_id, True))
            work.extend((k, False) for k in reversed(kids))
            continue
        goes[layer_id] = all(goes[k] for k in kids) and layer_id in going
        if goes[layer_id]:
            order.append(layer_id)
    return {"images": [i.id for i in images], "layers": order}


def prune(store: Store, *, layers: bool = False) -> list[str]:
    """Remove what :func:`prune_plan` names (skipping mounted layers); one line per thing removed."""
    from graphdriver.fs import atomic
    from graphdriver.images.loading import Pending
    from graphdriver.images.recovery import cleanup as images_cleanup

    plan = prune_plan(store, layers=layers)
    images = ImageStore(store.root)
    done: list[str] = []
    # Listed for cleanup first (base first, as an image lists them): a prune killed half
    # way is finished, the layers nothing uses then going, rather than left half done.
    with Pending(images, "prune", frees=plan["layers"][::-1]):
        _prune(store, images, plan, done)
    done += images_cleanup(store)
    atomic.fsync_dir(store.root)
    return done


def _prune(store: Store, images: ImageStore, plan: dict[str, list[str]], done: list[str]) -> None:
    from graphdriver.errors import GraphDriverError

    with store.locked():
        current = {r.id: r for r in images.all()}
        busy = {c.image for c in ctrs.containers(store)}  # a container made meanwhile keeps its image
        for image_id in plan["images"]:
            still = current.get(image_id)
            # Still unnamed and unused, under the lock (a container records itself under it).
            if still is not None and not still.names and not still.digests and image_id not in busy:
                images.delete(image_id)
                done.append(f"deleted image {image_id}")
    from graphdriver.images.manage import used_layers

    used = used_layers(store)  # again, now: a name may have come back, a load begun
    for layer_id in plan["layers"]:
        if layer_id in used:
            done.append(f"kept layer {layer_id}: it is in use again")
            continue
        try:
            if store.driver.mount_count(layer_id) > 0:
                done.append(f"kept layer {layer_id}: it is mounted")
                continue
            store.remove(layer_id)
        except GraphDriverError as e:
            why = e.why if e.what == f"layer {layer_id}" and e.why else str(e)  # no prefix twice
            done.append(f"kept layer {layer_id}: {why}")
            continue
        done.append(f"deleted layer {layer_id}")

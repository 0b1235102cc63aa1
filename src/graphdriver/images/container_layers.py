"""Containers: an init layer and a writable layer on an image's top layer, and commits.

As Docker's layer store does it: ``<name>-init`` holds what a runtime needs
to exist (``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``, the mount
points ``/proc``, ``/sys``, ``/dev``, ``/dev/pts``, ``/dev/shm``, and
``/etc/mtab`` linked to ``/proc/mounts``; each made only where the image
lacks it), and the writable layer ``<name>`` sits on it.  The container's
name is its writable layer's id, so ``mount``, ``changes``, ``diff`` and
``diffsize`` take it, and they compare with the init layer: the init files
never reach a commit.  Windows-format stores get an empty init layer.

Records are ``<root>/containers/<name>.json``.
"""

from __future__ import annotations

import io
import os

from graphdriver.errors import (
    AlreadyExists,
    GraphDriverError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Precondition,
    shorten,
)
from graphdriver.fs import atomic
from graphdriver.ids import MAX_ID, check_id, is_valid_id
from graphdriver.images import oci, reference
from graphdriver.images.records import ImageRecord, ImageStore
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from graphdriver.store.layers import Store

CONTAINERS_DIR = "containers"
INIT_SUFFIX = "-init"
#: The longest container name: its init layer ``NAME-init`` is a layer id too.
MAX_NAME = MAX_ID - len(INIT_SUFFIX)
_HEX = frozenset("0123456789abcdef")
_INIT_DIRS = ("proc", "sys", "dev", "dev/pts", "dev/shm", "etc")
_INIT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")


class Container(Plain):
    """A container: its name (= its writable layer), its init layer, the image it came from."""

    __slots__ = ("created", "image", "image_name", "init", "layer", "name", "removing")

    def __init__(self, name: str, image: str, layer: str, init: str, created: str = "",
                 removing: bool = False, image_name: str = "") -> None:
        self.name = name
        self.image = image
        self.layer = layer
        self.init = init
        self.created = created
        #: A removal began (and ``cleanup`` finishes it if it died half way).
        self.removing = removing
        #: The name the image was given by at creation, in full ("" when given by its id).
        self.image_name = image_name

    def to_json(self) -> dict[str, Any]:
        out = {n: getattr(self, n) for n in self.__slots__}
        if not self.removing:
            del out["removing"]
        if not self.image_name:
            del out["image_name"]
        return out


def _dir(store: Store) -> str:
    return os.path.join(store.root, CONTAINERS_DIR)


def _path(store: Store, name: str) -> str:
    return os.path.join(_dir(store), f"{check_id(name, 'container name')}.json")


def containers(store: Store) -> list[Container]:
    """Every container with a sound record (``container ls`` names the others)."""
    return scan(store)[0]


def scan(store: Store) -> tuple[list[Container], list[IntegrityError]]:
    """:func:`containers`, and what is wrong with each record that cannot be read."""
    found, bad = scan_by_name(store)
    return found, list(bad.values())


def scan_by_name(store: Store) -> tuple[list[Container], dict[str, IntegrityError]]:
    """:func:`containers`, and container name -> what is wrong with each record that cannot be read.

    The name is the record file's (``NAME.json``): such a container still holds
    its layers ``NAME`` and ``NAME-init``, though nothing else of it can be read.
    """
    try:
        names = sorted(n for n in os.listdir(_dir(store)) if n.endswith(".json"))
    except FileNotFoundError:
        return [], {}
    out = []
    bad = {}
    for n in names:
        try:
            v = atomic.read_json(os.path.join(_dir(store), n))
            out.append(Container(v["name"], v["image"], v["layer"], v["init"], v.get("created", ""),
                                 v.get("removing") is True, str(v.get("image_name") or "")))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as e:
            bad[n.removesuffix(".json")] = IntegrityError(f"container record {n}", f"malformed: {e}")
    return out, bad


def shown_images(store: Store, found: list[Container]) -> dict[str, str]:
    """The image ``container ls`` shows for each container of *found* (by its name), as
    ``docker ps`` shows it: the name the container was made from while that name still
    resolves to the container's image, else the image's short id (12 hex digits).  A name
    that moved to another image (a load, pull, tag or commit) or is gone shows the id."""
    images = ImageStore(store.root)
    resolved: dict[str, str | None] = {}  # each name given, looked up once
    shown = {}
    for c in found:
        if c.image_name and c.image_name not in resolved:
            resolved[c.image_name] = _resolved_id(images, c.image_name)
        still = bool(c.image_name) and resolved[c.image_name] == c.image
        shown[c.name] = c.image_name if still else c.image[7:19]
    return shown


def _resolved_id(images: ImageStore, name: str) -> str | None:
    """The id of the image *name* resolves to now; None when it resolves to none (not found,
    ambiguous, or unknown while a record is unreadable)."""
    try:
        return images.resolve(name).id
    except GraphDriverError:
        return None


def container(store: Store, name: str) -> Container:
    for c in containers(store):
        if c.name == name:
            return c
    raise NotFound(f"container {shorten(name)!r}", "no such container")


def create(store: Store, image_name: str, name: str, *, size: str | None = None) -> Container:
    """A container *name* from image *image_name*: init layer, then the writable layer."""
    check_new_name(name)
    init = name + INIT_SUFFIX
    images = ImageStore(store.root)
    record, by_name = images.lookup(image_name)
    given = str(reference.parse(image_name)) if by_name else ""  # shown by ``container ls``
    if os.path.exists(_path(store, name)):
        raise AlreadyExists(f"container {name}", "already exists")
    if store.exists(name) or store.exists(init):
        from graphdriver.images.recovery import undo_dead

        undo_dead(store, f"container {name}")  # what a killed create of this name left
    for layer_id in (name, init):
        if store.exists(layer_id):
            raise AlreadyExists(f"container {name}", f"a layer {layer_id} exists")
    try:
        made = _make(store, images, record, name, size, given)
    except NotFound:
        if _gone(images, record.id):
            # The image went meanwhile (image rm, prune): its layers, which this call kept
            # from being freed, go now unless something else uses them, as they would have.
            from graphdriver.images.manage import free_layers

            free_layers(store, record.layers)
        raise
    return made


def check_new_name(name: str) -> None:
    """A usage error for a name no container can have: a layer id short enough that its init
    layer's id (``NAME-init``) is one too, told about the name given, not about that id; and
    not 64 hex digits, the id an image layer is stored under (the hex of its chain id): such a
    container would stand in the way of every image later loaded or pulled with that layer."""
    if len(name) > MAX_NAME and is_valid_id(name):
        raise InvalidArgument(f"invalid container name {shorten(name)!r}",
                              f"must be at most {MAX_NAME} characters ({len(name)} given): its init layer "
                              f"NAME{INIT_SUFFIX} is a layer id, at most {MAX_ID}")
    check_id(name, "container name", most=MAX_NAME)
    if len(name) == 64 and set(name) <= _HEX:
        raise InvalidArgument(f"invalid container name {shorten(name)!r}",
                              "64 hex digits are an image layer's id (the hex of its chain id), not a name")


def _gone(images: ImageStore, image_id: str) -> bool:
    """Whether image *image_id* is no longer in the store (an unreadable record is there)."""
    try:
        images.get(image_id)
    except NotFound:
        return True
    except IntegrityError:
        pass
    return False


def _make(store: Store, images: ImageStore, record: ImageRecord, name: str, size: str | None,
          given: str) -> Container:
    """:func:`create`'s layers and record; the layers it made go if it fails."""
    from graphdriver.images.loading import Pending
    from graphdriver.store.records import now_rfc3339

    init = name + INIT_SUFFIX
    ours: list[str] = []  # the layers this call made: only those go if it fails
    with Pending(images, f"container {name}") as pending:
        try:
            if record.top_layer is not None:
                pending.use(record.top_layer)
            pending.add(init)
            _make_init(store, init, record.top_layer)
            ours.append(init)
            pending.add(name)
            store.create(name, init, writable=True, size=size)
            ours.append(name)
            made = Container(name, record.id, name, init, now_rfc3339(), image_name=given)
            with store.locked():
                # Under the lock that image rm and prune check containers under: the image
                # is still there (else NotFound, the layers go), and stays while we are.
                images.get(record.id)
                if os.path.exists(_path(store, name)):
                    raise AlreadyExists(f"container {name}", "already exists")
                os.makedirs(_dir(store), 0o700, exist_ok=True)
                atomic.write_json(_path(store, name), made.to_json())
        except BaseException:
            for layer_id in reversed(ours):
                if store.exists(layer_id):
                    store.remove(layer_id)
            raise
    return made


def _make_init(store: Store, init: str, parent: str | None) -> None:
    """The init layer: what a runtime needs, where the image lacks it."""
    if store.driver.LAYER_FORMAT != "oci":
        store.create(init, parent)
        return
    missing: list[tuple[str, str]] = []  # (the init path, where the image's symlinks put it)
    if parent is None:
        missing = [(p, p) for p in (*_INIT_DIRS, *_INIT_FILES, "etc/mtab")]
    else:
        root = store.mount(parent, readonly=True)  # only looked at
        try:
            for path in (*_INIT_DIRS, *_INIT_FILES, "etc/mtab"):
                where = _in_scope(root, path)
                if where is not None and not os.path.lexists(os.path.join(root, where)):
                    missing.append((path, where))
        finally:
            store.unmount(parent)
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, where in missing:
            info = tarfile.TarInfo(where)
            info.mtime = 0
            if path in _INIT_DIRS:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif path == "etc/mtab":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/proc/mounts", 0o777
            else:
                info.mode = 0o644
            tf.addfile(info)
    raw.seek(0)
    store.import_layer(init, parent, raw)


def _in_scope(root: str, path: str) -> str | None:
    """Where *path* is in the image's tree at *root* once the symlinks of its folders are
    followed inside that tree (an ``etc`` linked to ``usr/etc`` puts ``etc/hosts`` at
    ``usr/etc/hosts``; an absolute link is taken from the tree's top, never the host's), as
    Docker makes its init files; None when a folder on the way is not one, or links loop."""
    done: list[str] = []
    todo = path.split("/")
    hops = 0
    while len(todo) > 1:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, comp)
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [*target.split("/"), *todo]
            continue
        if os.path.lexists(here) and not os.path.isdir(here):
            return None
        done.append(comp)
    return "/".join([*done, todo[0]])


def removal_lock(store: Store, name: str) -> str:
    """The lock a removal of container *name* holds while it runs: ``cleanup`` tells a live
    removal from one killed half way by it (no valid name starts with a dot)."""
    return os.path.join(_dir(store), f".rm-{check_id(name, 'container name')}.lock")


def remove(store: Store, name: str) -> None:
    """Remove container *name*: its writable layer, its init layer and its record."""
    from graphdriver.fs.locking import locked
    from graphdriver.images.holders import container_holder

    _known(store, name)  # not found: said before anything is made
    lock = removal_lock(store, name)
    with locked(lock):
        try:
            c = _known(store, name)  # again: another removal may have finished it meanwhile
            if isinstance(c, Container):
                _remove_layers(store, c, container_holder(name))
            else:
                _remove_unreadable(store, name, f"the unreadable {c.what}")
            atomic.remove_file(_path(store, name))
        finally:
            atomic.remove_file(lock)  # (while held: a waiter takes the one made after it)


def _known(store: Store, name: str) -> Container | IntegrityError:
    """Container *name*, or what is wrong with its record when it cannot be read (its layers,
    named by its file, are still its own); NotFound when there is neither."""
    found, unreadable = scan_by_name(store)
    for c in found:
        if c.name == name:
            return c
    if name in unreadable:
        return unreadable[name]
    raise NotFound(f"container {shorten(name)!r}", "no such container")


def _remove_unreadable(store: Store, name: str, holder: str) -> None:
    """Remove the layers of container *name* whose record cannot be read, as ``remove ID``
    removes a layer whose record is corrupt: the user named it.  Its file name says which
    layers are its; a refusal of either comes before any goes."""
    layers = [layer_id for layer_id in (name, name + INIT_SUFFIX) if store.exists(layer_id)]
    _refuse_removal(store, layers, holder)
    for layer_id in layers:
        if store.exists(layer_id):
            store.remove(layer_id, holder=holder)


def _refuse_removal(store: Store, layers: list[str], holder: str) -> None:
    """Precondition when either of a container's *layers* (the writable one first) may not go:
    mounted, a child on either, held by another: said before any goes."""
    for i, layer_id in enumerate(layers):
        store.refuse_removal(layer_id, holder, going=layers[:i])


def _mark_removing(store: Store, c: Container, removing: bool) -> None:
    c.removing = removing
    atomic.write_json(_path(store, c.name), c.to_json())


def _remove_layers(store: Store, c: Container, holder: str) -> None:
    """Remove container *c*'s layers on its behalf (its record holds them), the writable one
    first; a removal refused before any layer went leaves the container whole, as ``docker rm``
    and ``podman rm`` leave a container they refuse."""
    layers = [layer_id for layer_id in (c.layer, c.init) if store.exists(layer_id)]
    if not c.removing:
        _refuse_removal(store, layers, holder)
        _mark_removing(store, c, True)  # then a removal killed half way is cleanup's to finish
    for i, layer_id in enumerate(layers):
        if not store.exists(layer_id):
            continue
        try:
            store.remove(layer_id, holder=holder)
        except Precondition:
            if i == 0 and all(store.exists(x) for x in layers):  # mounted meanwhile, say:
                _mark_removing(store, c, False)  # nothing went, so nothing is cleanup's to finish
            raise


def finish_removal(store: Store, name: str) -> bool:
    """For ``cleanup``: finish the removal of container *name* that was killed half way;
    False when a live removal is doing it (or finished it meanwhile)."""
    from graphdriver.fs.locking import is_held

    if is_held(removal_lock(store, name)):
        return False
    try:
        remove(store, name)
    except NotFound:
        return False
    return True


def remove_stray_removal_locks(store: Store) -> list[str]:
    """For ``cleanup``: the removal locks that removals killed at their very end left."""
    from graphdriver.fs.locking import remove_abandoned_in

    stray = remove_abandoned_in(_dir(store), lambda name: name.startswith(".rm-") and name.endswith(".lock"))
    return [f"removed the stray removal lock of container {name[4:-5]}" for name in stray]


def commit(store: Store, name: str, image_name: str) -> ImageRecord:
    """Make what container *name* changed a new layer on its image; a new image named *image_name*.

    The layer is the container's diff against its init layer (a new DiffID);
    the config is the image's with that DiffID appended to ``rootfs.diff_ids``,
    a history entry and a new ``created``.
    """
    from graphdriver.images.loading import Pending, check_reused, present_in_use
    from graphdriver.store.records import now_rfc3339

    c = container(store, name)
    images = ImageStore(store.root)
    base = images.get(c.image)
    full = str(reference.parse_new(image_name))
    config = oci.load_json(images.read_blob(base.id), f"image {base.id}: config")
    import tempfile

    with tempfile.TemporaryFile(dir=store.root) as tmp:
        hashing = oci.HashingWriter(tmp)
        store.diff(name, hashing)  # type: ignore[arg-type]
        diff_id = hashing.digest
        diff_ids = [*base.diff_ids, diff_id]
        layer_id = oci.hex_of(oci.chain_ids(diff_ids)[-1])
        now = now_rfc3339()
        with Pending(images, f"commit {name}") as pending:
            pending.use(layer_id)
            if present_in_use(store, layer_id):  # this diff committed before, or another layer bears the name
                check_reused(store, layer_id, diff_id, base.top_layer, f"container commit {name}")
            else:
                tmp.seek(0)
                pending.add(layer_id)
                record = store.import_layer(layer_id, base.top_layer, tmp)  # type: ignore[arg-type]
                if record.diff_digest != diff_id:
                    store.remove(layer_id)
                    raise IntegrityError(f"commit of {name}", "the layer did not import as it was exported")
            new_config = dict(config)
            new_config["created"] = now
            rootfs = dict(new_config.get("rootfs") or {})
            rootfs["type"], rootfs["diff_ids"] = "layers", diff_ids
            new_config["rootfs"] = rootfs
            history = list(new_config.get("history") or [])
            history.append({"created": now, "created_by": f"graphdriver container commit {name}"})
            new_config["history"] = history
            import json

            data = json.dumps(new_config, separators=(",", ":")).encode()
            new = ImageRecord(oci.sha256_digest(data), [full], [*base.layers, layer_id], diff_ids,
                              created=now, platform=base.platform)
            with store.locked():  # where blobs no record names are removed: kept and named at once
                images.put_blob(data)
                images.put_named(new, [full])  # taken from the image that had it
    return new

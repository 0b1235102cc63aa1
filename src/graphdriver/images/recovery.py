"""What ``cleanup`` does for images: the leftovers of a load, pull, commit or container create that died.

A move of names a killed process left half done is finished (the names
leave the images they were moving from, once the image they go to has them)
or dropped (when it had not written that image yet: no name had moved).
A pending marker whose lock nobody holds belongs to a dead process: the
layers it lists that no image or container uses (and that have no children)
are removed, top first, then the marker.  Half-written blobs of dead
processes go, and, when no such work is alive, blobs no record names.
Nothing an image or container record names is ever removed.
"""

from __future__ import annotations

import os

from graphdriver.errors import GraphDriverError
from graphdriver.fs import atomic
from graphdriver.fs.locking import is_held, remove_abandoned, remove_abandoned_in
from graphdriver.images.oci import hex_of
from graphdriver.images.records import MOVE_FILE, ImageStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.store.layers import Store


def cleanup(store: Store) -> list[str]:
    """One line per thing done (run without the store lock held: it removes layers)."""
    images = ImageStore(store.root)
    done: list[str] = []
    if os.path.lexists(os.path.join(images.pending_dir, MOVE_FILE)):
        with store.locked():  # a live move holds it: a marker found under it is a dead one's
            moved = images.finish_move()
        done += [moved] if moved else []
    alive = False
    for path in _markers(images):
        if is_held(path + ".lock"):
            alive = True
            continue
        done += _undo(store, path)
    done += _remove_stray_locks(images)
    done += _remove_partials(images)
    from graphdriver.images.container_layers import CONTAINERS_DIR
    from graphdriver.store.recovery import remove_stale_temporaries

    done += remove_stale_temporaries((images.pending_dir, images.records_dir,
                                      os.path.join(store.root, CONTAINERS_DIR)))
    if not alive:
        done += _remove_unreferenced(store, images)
    from graphdriver.images import container_layers as ctrs

    found, unreadable = ctrs.scan_by_name(store)
    for c in found:
        if c.removing:  # its removal died half way: the user's word stands, it is finished
            try:
                if not ctrs.finish_removal(store, c.name):
                    continue  # a live removal's (or done by it meanwhile)
            except GraphDriverError as e:
                done.append(f"container {c.name} left by an interrupted removal: not removed yet ({e})")
                continue
            done.append(f"removed container {c.name} left by an interrupted removal")
    done += ctrs.remove_stray_removal_locks(store)
    done += [f"{e}: fix or remove it; its layers {name} and {name}{ctrs.INIT_SUFFIX} were kept"
             for name, e in unreadable.items()]
    return done


def undo_dead(store: Store, what: str) -> list[str]:
    """Undo the work *what* (``container NAME``) that died half way, as ``cleanup`` would:
    a command run again after its kill then finds nothing of it in its way."""
    images = ImageStore(store.root)
    done: list[str] = []
    for path in _markers(images):
        if is_held(path + ".lock"):
            continue
        try:
            dead = atomic.read_json(path).get("what") == what
        except (OSError, ValueError, AttributeError):
            continue
        if dead:
            done += _undo(store, path)
    return done


def _undo(store: Store, path: str) -> list[str]:
    from graphdriver.images.manage import used_layers

    try:
        marker = atomic.read_json(path)
        made = [str(x) for x in (*marker.get("layers", []), *marker.get("frees", []))]
        what = str(marker.get("what", "image work"))
    except (OSError, ValueError, AttributeError):
        made, what = [], "image work"
    done = []
    used = used_layers(store)
    for layer_id in reversed(made):
        if layer_id in used or not store.exists(layer_id) or store.children(layer_id):
            continue
        try:
            store.remove(layer_id)
        except GraphDriverError as e:
            done.append(f"layer {layer_id} left by an interrupted {what}: not removed ({e})")
            continue
        done.append(f"removed layer {layer_id} left by an interrupted {what}")
    atomic.remove_file(path)
    atomic.remove_file(path + ".lock")
    return done


def _remove_partials(images: ImageStore) -> list[str]:
    done = []
    for folder in (images.blobs_dir, images.records_dir):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if ".partial-" in name or name.endswith(".download.lock"):  # held by its writer while it lives
                removed = remove_abandoned(path)
            else:
                # A pull's partial download nobody is writing (kept for a pull to resume until now).
                stale = name.endswith(".download") and not is_held(path + ".lock")
                removed = stale and atomic.remove_file(path)
            if removed:
                done.append(f"removed the half-written image file {name}")
    return done


def _remove_stray_locks(images: ImageStore) -> list[str]:
    """Lock files of pending markers that are gone: their work died before it wrote the
    marker, or after it removed it."""
    def stray(name: str) -> bool:
        marker = os.path.join(images.pending_dir, name.removesuffix(".lock"))
        return name.endswith(".json.lock") and not os.path.lexists(marker)

    return [f"removed the lock file {name} of an interrupted load, pull or removal"
            for name in remove_abandoned_in(images.pending_dir, stray)]


def _markers(images: ImageStore) -> list[str]:
    """The pending markers' paths, sorted."""
    try:
        names = sorted(n for n in os.listdir(images.pending_dir) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    return [os.path.join(images.pending_dir, n) for n in names]


def forget_blobs(store: Store, images: ImageStore, digests: list[str]) -> None:
    """Remove the blobs *digests* (what a failed pull downloaded) that no record names, unless
    a load, pull or commit is running: it may be about to name them (``cleanup`` does it later)."""
    if digests and not any(is_held(path + ".lock") for path in _markers(images)):
        try:
            _remove_unreferenced(store, images, {hex_of(d) for d in digests})
        except (OSError, GraphDriverError):  # never hiding why the pull failed
            pass


def _remove_unreferenced(store: Store, images: ImageStore, only: set[str] | None = None) -> list[str]:
    """Remove the blobs no record names (of those *only* names, when given).

    Under the store lock, the records read under it too: a load, pull or commit that began
    after the caller found no such work alive writes its record under that lock once the
    blobs it names are there (keeping again any removed meanwhile, or found kept before).
    """
    with store.locked():
        return _remove_unreferenced_locked(images, only)


def _remove_unreferenced_locked(images: ImageStore, only: set[str] | None) -> list[str]:
    try:
        names = os.listdir(images.blobs_dir) if only is None else sorted(only)
    except FileNotFoundError:
        return []
    keep = images.referenced_blobs()
    if keep is None:
        return [f"{e}: graphdriver image rm sha256:{e.what.rpartition(' ')[2].removesuffix('.json')} "
                "removes it; no blob was removed meanwhile" for e in images.scan()[1]]
    done = []
    for name in names:
        if len(name) == 64 and name not in keep:
            atomic.remove_file(os.path.join(images.blobs_dir, name))
            done.append(f"removed blob sha256:{name}, which no image names")
    return done

"""Recovery: what ``cleanup`` finishes or undoes after a crash, and what it never touches.

Run by ``graphdriver cleanup`` and when a store is opened with pending work.
Layers whose transaction died (a pending marker whose lock nobody holds, or
only the children of its dead process, which are waited for) are removed
whole; interrupted removals are finished; half-written files of dead
processes, stray locks and tar-split files of no layer are deleted; driver
folders no record names are orphans.  Nothing a record names is ever deleted:
a damaged layer is reported and left for its owner to remove.
"""

from __future__ import annotations

import os

from graphdriver.errors import GraphDriverError, NotFound, Precondition, Unsupported
from graphdriver.fs import atomic
from graphdriver.fs.locking import remove_abandoned, remove_abandoned_in
from graphdriver.store import records
from graphdriver.store.layers import TARSPLIT_DIR, TARSPLIT_SUFFIX
from graphdriver.store.records import APPLY_LOCK_SUFFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from graphdriver.store.layers import Store


def cleanup(store: Store) -> list[str]:
    """Finish or undo whatever a crash interrupted; one line per thing done."""
    if not store.settled:
        # No layer was ever stored: nothing to finish, and nothing is created; but a
        # driver's probe killed half way left its scratch folder where the home would be,
        # and a first pull that failed may have left blobs.
        from graphdriver.drivers.base import remove_probe_leftovers

        done = remove_probe_leftovers(_nearest_existing(store.root))
        # A first command killed while it wrote the store's settings left half a file.
        done.extend(remove_stale_temporaries((store.root,)))
    else:
        done = _cleanup_layers(store)
    if os.path.isdir(os.path.join(store.root, "images")):
        # Images sit on the layers: their leftovers are removed through the
        # store's own removal, so without its lock held here.
        from graphdriver.images.recovery import cleanup as images_cleanup

        done.extend(images_cleanup(store))
    return done


def _cleanup_layers(store: Store) -> list[str]:
    done: list[str] = []
    with store.locked():
        for layer_id, marker in sorted(store.records.pending().items()):
            undone = _undo_dead(store, layer_id, marker)
            done += [undone] if undone is not None else []
        done.extend(_remove_stray_locks(store))
        done.extend(_remove_stale_temporaries(store))
        good, corrupt = store.records.scan()
        done.extend(
            f"layer {r.id} is damaged ({r.damaged}): remove it, nothing was removed for it"
            for r in good if r.damaged and not store.records.is_applying(r.id)
        )
        done.extend(
            f"{error}: nothing was done for it" if isinstance(error, Unsupported)
            else f"{error}: graphdriver remove {layer_id} removes it, nothing was removed for it"
            for layer_id, error in corrupt
        )
        done.extend(store.driver.cleanup(_named_layers(store)))
        done.extend(_remove_orphans(store))
        done.extend(_remove_stray_tarsplit(store))
    return done


def undo_dead_layer(store: Store, layer_id: str) -> str | None:
    """What ``cleanup`` does for *layer_id* alone: its pending work, if its process died, is
    undone (or, for a removal, finished); what was done, None when no such work is left."""
    with store.locked():
        marker = store.records.pending().get(layer_id)
        return None if marker is None else _undo_dead(store, layer_id, marker)


def _undo_dead(store: Store, layer_id: str, marker: dict[str, Any]) -> str | None:
    """Under the lock: undo the pending work *marker* says is under way on *layer_id* if its
    process died (its confined children waited for); what was done, None for live work."""
    op = marker.get("op", "work")
    if store.records.is_live(layer_id):
        if not store.records.outlived(layer_id, marker):
            return None  # live work
        if not store.records.wait_ended(layer_id, records.CHILDREN_WAIT):
            return (f"layer {layer_id} left by an interrupted {op}: not removed yet "
                    "(a process it started still holds it)")
    try:
        store.drop_layer(layer_id)
    except (GraphDriverError, OSError) as e:  # mounted since, say: reported, the rest goes on
        why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        return f"layer {layer_id} left by an interrupted {op}: not removed yet ({why})"
    return f"removed layer {layer_id} left by an interrupted {op}"


def _named_parents(store: Store) -> set[str] | None:
    """The layers some record sits on; None while a record is unreadable (which it names is unknown)."""
    good, corrupt = store.records.scan()
    return None if corrupt else {r.parent for r in good if r.parent}


def _named_layers(store: Store) -> frozenset[str] | None:
    """The layers some record names (its own or as its parent); None while a record is
    unreadable (which it names is unknown, so no folder may be taken for a leftover)."""
    parents = _named_parents(store)
    return None if parents is None else frozenset(store.records.ids()) | parents


def _remove_orphans(store: Store) -> list[str]:
    """Driver folders that no record names are garbage (records are the truth).

    A record names its parent too: a folder whose own record is gone but on which
    another layer sits is that layer's data (an overlay lower directory, say), and
    is kept and reported, as is every folder while some record cannot be read.
    """
    known = set(store.records.ids())
    parents = _named_parents(store)
    done = []
    for name in sorted(os.listdir(store.driver.home)):
        if name.startswith(".") or name in known or name.endswith("-removing"):
            continue
        path = os.path.join(store.driver.home, name)
        if not os.path.isdir(path) or store.records.is_pending(name):
            continue
        if _is_alternate_target(store, name):
            continue
        if parents is None or name in parents:
            done.append(f"layer folder {name} has no record, but "
                        + ("a record that cannot be read may name it" if parents is None
                           else "a layer sits on it") + ": kept")
            continue
        try:
            store.driver.remove(name)
        except (OSError, Precondition, NotFound):
            from graphdriver.fs.tree import remove_tree

            try:
                remove_tree(path)
            except OSError:
                pass
        done.append(f"removed orphaned layer folder {name}")
    return done


def _remove_stray_locks(store: Store) -> list[str]:
    """Lock files of pending work that crashed before writing its marker."""
    pending = store.records.pending()
    folder = store.records.pending_dir
    done = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") and name.endswith(APPLY_LOCK_SUFFIX):
            # An apply's lock, left by one that died (its layer is damaged and says so).
            applied = name[1 : -len(APPLY_LOCK_SUFFIX)]
            if not store.records.is_applying(applied) and atomic.remove_file(os.path.join(folder, name)):
                done.append(f"removed stray apply lock of {applied}")
            continue
        layer_id = name[1:-5] if name.startswith(".") and name.endswith(".lock") else None
        if layer_id is None or layer_id in pending or store.records.is_live(layer_id):
            continue
        if atomic.remove_file(os.path.join(folder, name)):
            done.append(f"removed stray lock of {layer_id}")
    return done


def _remove_stale_temporaries(store: Store) -> list[str]:
    return remove_stale_temporaries((store.root, store.records.dir, store.records.pending_dir))


def remove_stale_temporaries(folders: tuple[str, ...]) -> list[str]:
    """Half-written files of atomic writes (``.tmp-<name>-<pid>``) whose writer is dead."""
    return [f"removed half-written file {name}" for folder in folders
            for name in remove_abandoned_in(folder, lambda name: name.startswith(atomic.TEMP_PREFIX))]


def _remove_stray_tarsplit(store: Store) -> list[str]:
    """tar-split files of no layer, and half-written ones whose writer is dead."""
    parents = _named_parents(store)
    known = set(store.records.ids()) | (parents or set())
    done = []
    folder = os.path.join(store.root, TARSPLIT_DIR)
    for name in sorted(os.listdir(folder)):
        # Layer ids may hold the suffix themselves (a.tar-split.gz.partial-1): only the
        # whole name says whose file it is, ID + suffix, or ID + suffix + .partial-N.
        if name.endswith(TARSPLIT_SUFFIX) and (name[: -len(TARSPLIT_SUFFIX)] in known or parents is None):
            continue  # (while a record cannot be read, whose file it is stays unknown: kept)
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):  # no file the store writes: not ours
            done.append(f"tar-split folder {name} is no file of the store: kept")
            continue
        head, sep, tail = name.rpartition(".partial-")
        half_written = bool(sep) and head.endswith(TARSPLIT_SUFFIX) and bool(tail)
        if remove_abandoned(path) if half_written else atomic.remove_file(path):
            done.append(f"removed stray tar-split file {name}")
    return done


def _nearest_existing(path: str) -> str:
    """*path*, or the nearest folder above it that exists (where a first probe scratches)."""
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _is_alternate_target(store: Store, folder: str) -> bool:
    """Whether some layer's alternate-id file points at *folder*."""
    for layer_id in store.records.ids():
        try:
            if os.path.basename(store.driver.resolve(layer_id)) == folder:
                return True
        except (NotFound, OSError):
            pass
    return False

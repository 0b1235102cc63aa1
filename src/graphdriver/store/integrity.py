"""Whether a layer still is its tarball: ``check``, ``tarsplit`` and the byte-exact ``diff``.

An imported layer's recorded digest is a promise that ``diff`` gives back
the imported bytes.  They are rebuilt from the layer's tar-split data and its
files (:func:`reassemble`); the files' metadata and set are compared with the
tar headers (:func:`file_problems`); a layer the store handed out writable
since its import is looked at before its bytes are given back
(:func:`changed`).  Functions of an open :class:`~graphdriver.store.layers.Store`,
loaded only by the commands that need them.
"""

from __future__ import annotations

import os

from graphdriver.errors import (
    REFUSED,
    CorruptArchive,
    GraphDriverError,
    IntegrityError,
    NotFound,
    ReadRefused,
    Unsupported,
    raise_refused,
    shorten,
)
from graphdriver.store.layers import TARSPLIT_DIR, TARSPLIT_SUFFIX, under_way

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, BinaryIO, TypeVar

    from graphdriver.layerio.tarsplit import SplitEntry
    from graphdriver.store.content import Owner
    from graphdriver.store.layers import Store
    from graphdriver.store.records import Layer

    _T = TypeVar("_T")


def changed_since_import(store: Store, layer_id: str) -> str | None:
    """See :meth:`Store.changed_since_import <graphdriver.store.layers.Store.changed_since_import>`."""
    record = store._find(layer_id)
    if record.diff_digest is None or not may_have_changed(store, record):
        return None
    why: str | None
    try:
        if record.unreproducible or not has_tarsplit(store, record):
            why = "its files cannot be checked against its tarball (no tar-split data)"
        else:
            why = changed(store, record)
    except (GraphDriverError, OSError) as e:
        store._raise_explained(e, layer_id, seen=record)
    return None if why is None else changed_why(record, why)


def may_have_changed(store: Store, record: Layer) -> bool:
    """Whether *record*'s files may differ from its tarball through the store's own mounts.

    An additional store's layer cannot be marked by our mounts, so where
    the driver's views are writable it is always checked.
    """
    if record.mounted_writable is not None:
        return True
    return record.read_only_store and store.driver.writable_view(record.id)


def changed_why(record: Layer, why: str) -> str:
    when = f" (mounted writable at {record.mounted_writable})" if record.mounted_writable else ""
    return (f"changed since it was imported{when}: {why}; its tarball {record.diff_digest} "
            "no longer describes it")


def changed(store: Store, record: Layer) -> str | None:
    """What differs between *record*'s files and its imported tarball (None: nothing).

    The files are compared with the tarball's headers (names, types, modes,
    owners, sizes, times, link targets, xattrs, and no other files), a full
    tree's other changes over its parent's with what the tarball deletes,
    and the content with the recorded checksums and digest.  Found
    unchanged while nothing had it mounted, the layer forgets its mark,
    so that later diffs give back its bytes at once.
    """
    mark = record.mounted_writable
    idle = mark is not None and unmounted_since(store, record, mark)
    if not store.driver.FILES_AS_IN_TARBALL:
        return f"the {store.driver_name} driver cannot compare its files with its tarball"
    problems = file_problems(store, record, inherited_changes=True)
    if problems:
        return _first_of(problems)
    try:
        reassemble(store, record, _discard)
    except IntegrityError as e:
        return e.why or str(e)
    if idle:
        unmounted_since(store, record, mark, forget=True)
    return None


def unmounted_since(store: Store, record: Layer, mark: str | None, *, forget: bool = False) -> bool:
    """Whether the layer is unmounted and its last writable mount is still the one marked *mark*.

    Read under the lock that :meth:`Store.mount <graphdriver.store.layers.Store.mount>` marks
    and mounts under, so true before and after a check means no mount came in between;
    *forget* then drops the mark in the same breath.
    """
    if record.read_only_store:
        return False
    try:
        with store.locked():
            stored = store.records.get(record.id)
            if stored.created != record.created or stored.mounted_writable != mark \
                    or store.driver.mount_count(record.id) != 0:
                return False
            if forget:
                stored.mounted_writable = None
                store.records.put(stored)
            return True
    except OSError:
        return False  # a store we may not write: the mark stays


def has_tarsplit(store: Store, record: Layer) -> bool:
    return record.diff_digest is not None and os.path.exists(tarsplit_of(store, record))


def tarsplit_of(store: Store, record: Layer) -> str:
    """Where *record*'s tar-split data lives (its own store's folder)."""
    if record.read_only_store:
        for ro in store.readonly:
            if ro.exists(record.id):
                return os.path.join(ro.root, TARSPLIT_DIR, record.id + TARSPLIT_SUFFIX)
    return store.tarsplit_path(record.id)


def open_tarsplit(store: Store, record: Layer) -> BinaryIO:
    """*record*'s tar-split file, open; a file that cannot be read is a failure of the layer, as
    ``check`` names it (FileNotFoundError stays: a removal under way, or lost data, callers tell)."""
    what, why = f"layer {record.id}", "tar-split metadata: cannot be read"
    try:
        return open(tarsplit_of(store, record), "rb")
    except FileNotFoundError:
        raise
    except PermissionError as e:  # a missing privilege: nothing is corrupt
        raise Unsupported(what, f"{why} by this user ({e.strerror})") from e
    except OSError as e:  # a folder where the file was, say
        raise IntegrityError(what, f"{why}: {e.strerror or e}") from e


def read_tarsplit(store: Store, record: Layer, use: Callable[[Iterator[SplitEntry]], _T]) -> _T:
    """What *use* makes of the entries of *record*'s tar-split data; data that does not
    decompress is a failure of the layer (see :func:`open_tarsplit`)."""
    from graphdriver.layerio.compression import open_decompressed
    from graphdriver.layerio.tarsplit import read_entries

    with open_tarsplit(store, record) as f:
        try:
            meta, _kind = open_decompressed(f)
            return use(read_entries(meta))
        except CorruptArchive as e:  # only the metadata is decompressed here
            raise IntegrityError(f"layer {record.id}", f"tar-split metadata: {e.why or e}") from e


def reassemble(store: Store, record: Layer, write: Callable[[Any], object]) -> int:
    """Rebuild the imported tarball from tar-split data; IntegrityError on any mismatch."""
    import hashlib

    from graphdriver.layerio.tarsplit import assemble

    digest = hashlib.sha256()

    def sink(data: Any) -> None:
        digest.update(data)
        write(data)

    from graphdriver.layerio import sparse
    from graphdriver.store import content

    getter = content.file_getter(store.driver, record.id)

    def rebuild(entries: Iterator[SplitEntry]) -> tuple[int, bool]:
        watch = sparse.Watch(entries)
        return assemble(watch, getter, sink), watch.found

    try:
        size, sparse_found = read_tarsplit(store, record, rebuild)
    finally:
        getter.close()
    if "sha256:" + digest.hexdigest() != record.diff_digest:
        raise IntegrityError(
            f"layer {record.id}", f"re-exported tarball does not match {record.diff_digest}"
        )
    if sparse_found:
        check_sparse_files(store, record)
    return size


def check_sparse_files(store: Store, record: Layer) -> None:
    """IntegrityError unless the layer's sparse files hold the data their entries stored:
    no file checksum covers those bytes (the tar-split metadata holds them)."""
    from graphdriver.layerio.verify import sparse_problems
    from graphdriver.store import content

    root = content.files_root(store.driver, record.id)
    problems = read_tarsplit(store, record, lambda entries: sparse_problems(entries, root))
    if problems:
        why = f"its files differ from its tarball: {_first_of(problems)}"
        raise IntegrityError(f"layer {record.id}", why)


def verify_files(store: Store, record: Layer) -> None:
    """IntegrityError unless the stored files' metadata and set match the tar headers.

    The digest proves the content; a chmod, chown, xattr, touched mtime or
    planted file would go unseen without this (see :mod:`graphdriver.layerio.verify`).
    """
    if not store.driver.FILES_AS_IN_TARBALL:
        from graphdriver.drivers.base import WINDOWS_FORMAT

        if store.driver.LAYER_FORMAT == WINDOWS_FORMAT:
            check_windows_files(store, record)
        return
    # Mounted writable since, a full tree may also have changed what it holds of its
    # parent's: diff finds that, and so must check.
    problems = file_problems(store, record, inherited_changes=may_have_changed(store, record))
    if problems:
        why = f"its files differ from its tarball: {_first_of(problems)}"
        raise IntegrityError(f"layer {record.id}", why)


def check_windows_files(store: Store, record: Layer) -> None:
    """IntegrityError unless the Windows layer's files and its metadata sidecar (what its
    files cannot hold, export needs) are what its tarball's headers left
    (see :mod:`graphdriver.layerio.windows.verify`)."""
    from graphdriver.fs import privileged
    from graphdriver.layerio.windows.verify import layer_problems
    from graphdriver.store import content

    owner = None
    if privileged():  # files applied without root keep the user's owner
        maps = store.layer_maps(record)
        owner = (maps.uids.to_host(0), maps.gids.to_host(0))
    root = content.files_root(store.driver, record.id)
    try:
        problems = read_tarsplit(store, record, lambda entries: layer_problems(
            entries, root, owner=owner, opaque_marks=privileged()))
    except OSError as e:  # a read refused: named by the layer and the path in it
        raise_refused(e, [(root, record.id)], here=record.id)
    if problems:
        why = f"its files differ from its tarball: {_first_of(problems)}"
        raise IntegrityError(f"layer {record.id}", why)


def file_problems(store: Store, record: Layer, *, inherited_changes: bool = False) -> list[str]:
    """What differs between the stored files' metadata and set and the tar headers.

    *inherited_changes*: for a layer kept as a full tree, also what it
    changed over its parent's tree that its tarball does not say (a file
    of the parent's deleted, chmod-ed or chown-ed).
    """
    import contextlib

    # The layer's own files (an overlay upper directory, never a live union
    # mount), or its full tree, whose parent's paths are then no extra files.
    root, inherited = store.driver.own_files(record.id), None
    full_tree = root is None
    owner = store._owner_translation(record.id, record.parent)
    if root is None:
        root = store.driver.apply_target(record.id).path
        if record.parent is not None:
            inherited = store.driver.apply_target(record.parent).path
    with contextlib.ExitStack() as stack:
        if owner is not None and inherited is None and record.parent is not None:
            # Its own files start as a shifted copy of its parent's whole tree.
            inherited = stack.enter_context(store.driver.mounted(record.parent))
        try:
            return _tree_problems(store, record, (root, inherited), owner, inherited_changes and full_tree)
        except OSError as e:  # a read refused: named by the layer and the path in it
            raise_refused(e, [(root, record.id), (inherited, record.parent)], here=record.id)


def _tree_problems(store: Store, record: Layer, trees: tuple[str, str | None], owner: Owner | None,
                   changes_too: bool) -> list[str]:
    """:func:`file_problems` of the layer's files at *trees*' first, over its parent's tree at
    the second where it is a full tree on top of it; *changes_too*: its changes over that too."""
    from graphdriver.layerio.verify import changes_problems, tree_problems

    root, inherited = trees
    maps = store.layer_maps(record)
    problems = read_tarsplit(store, record, lambda entries: tree_problems(
        entries, root, maps, inherited=inherited))
    if problems or not changes_too:
        return problems
    from graphdriver.diff.walk import changes_between

    since = store.driver.written_since(record.id, record.parent)
    changes = changes_between(root, inherited, owner, since) if inherited is not None else []
    return read_tarsplit(store, record, lambda entries: changes_problems(
        entries, changes, root, inherited, owner))


def tarsplit(store: Store, layer_id: str, out: BinaryIO) -> None:
    """See :meth:`Store.tarsplit <graphdriver.store.layers.Store.tarsplit>`."""
    record = store._find(layer_id)
    what = f"tar-split data of layer {layer_id}"
    if record.diff_digest is None:
        raise NotFound(what, "the layer was not imported (or was changed by apply since)")
    if record.unreproducible:
        raise NotFound(what, f"none was kept: the archive cannot be re-exported exactly "
                             f"({record.unreproducible})")
    if may_have_changed(store, record) and has_tarsplit(store, record):
        # Mounted writable since: the metadata describes the files only if they are unchanged.
        try:
            why = changed(store, record)
        except (GraphDriverError, OSError) as e:
            store._raise_explained(e, layer_id, seen=record)
        if why is not None:
            raise IntegrityError(what, f"the layer {changed_why(record, why)}")
    path = tarsplit_of(store, record)
    try:
        with open_tarsplit(store, record) as f:
            repeated = check_tarsplit(record, f)
            if repeated is not None:
                raise NotFound(what, f"its tarball names {shorten(repeated)!r} twice, which tar-split's "
                                     "reader refuses (diff still gives the exact bytes)")
            f.seek(0)
            import shutil

            shutil.copyfileobj(f, out, 1 << 20)
    except FileNotFoundError:
        # Missing while the record says it was kept: corrupt metadata (or a removal under way).
        missing = IntegrityError(what, f"it is missing ({path}), though the layer was imported")
        store._raise_explained(missing, layer_id, seen=record)


def of_layer(error: Exception, layer_id: str) -> Exception:
    """*error* told as a failure of layer *layer_id*, as ``check`` tells it: an integrity failure
    that names a file of the layer or its tar-split data but not the layer (``file './etc/passwd':
    longer than ...``) becomes ``layer ID: file './etc/passwd': ...``; a file of it this user may
    not read, ``layer ID: etc/shadow: Permission denied`` (ReadRefused, exit 7, from *error*, so a
    run as the owner still sees what was refused); any other is *error*."""
    if isinstance(error, OSError) and error.errno in REFUSED and error.filename:
        return ReadRefused(layer_id, os.fsdecode(error.filename), error.strerror or str(error))
    if not isinstance(error, IntegrityError):
        return error
    what = error.what
    if what.startswith("layer ") or what.endswith(f" layer {layer_id}"):
        return error  # never "layer a: layer a: ..."; a layer below is named as itself
    return IntegrityError(f"layer {layer_id}", str(error))


def check_tarsplit(record: Layer, f: BinaryIO) -> str | None:
    """IntegrityError unless *f* is tar-split metadata rebuilding *record*'s tarball's size;
    the first name it gives twice, if one is (see :func:`~graphdriver.layerio.tarsplit.checked_size`)."""
    from graphdriver.layerio.tarsplit import checked_size

    try:
        size, repeated = checked_size(f)
    except IntegrityError as e:
        raise IntegrityError(f"tar-split data of layer {record.id}", e.why or str(e)) from e
    if record.uncompressed_size is not None and size != record.uncompressed_size:
        raise IntegrityError(
            f"tar-split data of layer {record.id}",
            f"it rebuilds {size} bytes, not the {record.uncompressed_size} imported",
        )
    return repeated


def check(store: Store, layer_ids: Sequence[str] = ()) -> list[tuple[str, str | None]]:
    """See :meth:`Store.check <graphdriver.store.layers.Store.check>`."""
    results: list[tuple[str, str | None]] = []
    if layer_ids:
        records = []
        for layer_id in layer_ids:
            try:
                records.append(store._find(layer_id))
            except (IntegrityError, Unsupported) as e:
                results.append((layer_id, _unread(e)))
    else:
        records, bad = store.scan_layers()
        results += [(layer_id, _unread(e)) for layer_id, e in bad]
    results += check_records(store, records)
    if layer_ids:
        reported = {layer_id for layer_id, _ in results}
        for layer_id in dict.fromkeys(layer_ids):
            if layer_id not in reported:  # removed while it was checked: not found, as before it
                results += check_records(store, [store._find(layer_id)])
        return results
    return sorted(results, key=lambda r: r[0])


def _unread(e: GraphDriverError) -> str:
    """What ``check`` says of a record it could not read: corrupt, or skipped when this user
    may not read it (a missing privilege, as for files it may not read: nothing is corrupt)."""
    why = e.why or str(e)
    return f"skipped: {why}" if isinstance(e, Unsupported) else why


def check_records(store: Store, records: list[Layer], *, again: bool = True) -> list[tuple[str, str | None]]:
    results: list[tuple[str, str | None]] = []
    sound: set[str] = set()  # layers whose chains are whole (see missing_parent)
    for record in records:
        damage = store.damage(record)
        if damage is not None:
            shown = f"skipped: {under_way(damage[1])}" if damage[0] else f"damaged: {damage[1]}"
            results.append((record.id, shown))
            continue
        missing = missing_parent(store, record, sound)
        if missing is not None:
            if not (store._being_removed(record.id) or store._remade(record)):
                results.append((record.id, missing))
            continue  # (else removed meanwhile, its chain after it: no longer a layer to report)
        try:
            present = store.driver.exists(record.id)
        except Unsupported as e:  # its folder this user may not read: no damage
            results.append((record.id, f"skipped: {e.why or e}"))
            continue
        if not present:
            error = store._explain(
                NotFound(f"layer {record.id}", "no such layer"), record.id, seen=record
            )
            if isinstance(error, IntegrityError):
                results.append((record.id, error.why))
            continue
        if record.diff_digest is None:
            results.append((record.id, "skipped: no recorded digest (not imported)"))
            continue
        if record.unreproducible:
            why = f"skipped: cannot be re-exported exactly: {record.unreproducible}"
            results.append((record.id, why))
            continue
        try:
            if has_tarsplit(store, record):
                reassemble(store, record, lambda _data: None)
                verify_files(store, record)
            else:
                raise IntegrityError(f"layer {record.id}", "tar-split data is missing")
        except (PermissionError, ReadRefused) as e:  # a folder of mode 0000 in a store without root, say
            results.append((record.id, _unreadable(record, e)))
            continue
        except (GraphDriverError, OSError) as e:
            error = store._explain(e, record.id, seen=record)
            if isinstance(error, NotFound):
                continue  # removed while we checked it: no longer a layer to report
            fresh = _changed_meanwhile(store, record) if again else None
            if fresh is not None:  # an apply began (or ended) while we read it: check it as it is now
                results += check_records(store, [fresh], again=False)
                continue
            if not isinstance(error, GraphDriverError):
                raise
            same = error.what == f"layer {record.id}"  # never "layer a: layer a: ..."
            why = error.why if same and error.why else str(error)
            # What this user may not do here (read its tar-split file, say) is no damage.
            results.append((record.id, f"skipped: {why}" if isinstance(error, Unsupported) else why))
            continue
        results.append((record.id, None))
    return results


def _changed_meanwhile(store: Store, record: Layer) -> Layer | None:
    """*record*'s layer as its record says now, when that no longer says what *record* did
    about its tarball (an apply, which marks the record before it touches a file, began or
    ended while we compared the files): None when it says the same, or cannot be read."""
    if record.read_only_store:
        return None
    try:
        fresh = store._find(record.id)
    except GraphDriverError:
        return None
    if (fresh.damaged, fresh.diff_digest, fresh.unreproducible) == (
        record.damaged, record.diff_digest, record.unreproducible
    ) and not store.records.is_applying(record.id):
        return None
    return fresh


def _unreadable(record: Layer, e: PermissionError | ReadRefused) -> str:
    """Why ``check`` skips *record*'s layer: a file or folder of it (or of the parent it is
    compared with) this user may not read, named by its path in that layer."""
    if isinstance(e, ReadRefused):
        where = f" {e.path}" + (f" of layer {e.layer_id}" if e.layer_id != record.id else "")
    else:
        where = f" {os.fsdecode(e.filename)}" if e.filename else ""
    return f"skipped: its files cannot be read by this user ({e.strerror}{where})"


def missing_parent(store: Store, record: Layer, sound: set[str] | None = None) -> str | None:
    """What is wrong when a layer of *record*'s chain has no record (its files are unknown).

    *sound*: layers whose chains were found whole, where the walk down may end; the
    layers of *record*'s chain are added to it when it is whole too (so that checking
    every layer of a long chain reads each record once, not once per layer above it).
    """
    current: Layer | None = record
    seen = {record.id}
    while current is not None and current.parent:
        if sound is not None and current.parent in sound:
            break
        if current.parent in seen:
            return f"its chain loops back to layer {current.parent} (corrupt metadata)"
        seen.add(current.parent)
        try:
            current = store._find(current.parent)
        except NotFound:
            return f"its chain's layer {current.parent} has no record (corrupt metadata)"
        except IntegrityError as e:
            return f"its chain's layer {current.parent}: {e.why or e}"
    if sound is not None:
        sound |= seen
    return None


def _first_of(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def _discard(_data: object) -> None:
    """A sink for a re-export whose bytes are only checked."""

"""Layer records: the single source of truth about which layers exist.

One JSON file per layer under ``<root>/layers/``, written only through
:mod:`graphdriver.fs.atomic`.  A layer whose disk work is under way also has a
marker in ``<root>/pending/`` naming the process doing it; the marker is made
before any disk work and removed last, so a crash leaves a marker that
``cleanup`` finds without reading every record.
"""

from __future__ import annotations

import os
import time

from graphdriver.errors import GraphDriverError, IntegrityError, NotFound, Precondition, Unsupported
from graphdriver.fs import atomic
from graphdriver.ids import is_valid_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RECORDS_DIR = "layers"
PENDING_DIR = "pending"
#: The lock file (``.<id>.apply`` in the pending folder) an apply holds while it runs.
APPLY_LOCK_SUFFIX = ".apply"
#: What an apply's lock file holds when its process also holds the owner's lock on it
#: (see :meth:`RecordStore.hold_applying`).
APPLY_OWNER_MARK = b"owner_lock\n"

#: How long a question about work whose process is dead waits for that process's children
#: to end (seconds): the kernel kills them with it, and they end as soon as what they do
#: in it returns.
CHILDREN_WAIT = 5.0


#: Stored fields and their defaults, in the order records are written.
_STORED: tuple[tuple[str, Any], ...] = (
    ("id", ""),
    ("parent", None),
    ("created", ""),
    ("writable", False),
    ("driver", ""),
    # Bytes applied by import/apply (the seeds' ApplyDiff size); None until applied.
    ("size", None),
    # Store-level facts recorded on import (DiffID etc.), see the layer store.
    ("diff_digest", None),
    ("compressed_digest", None),
    ("compressed_size", None),
    # How the imported tarball came: none, gzip, zstd, xz or bzip2.
    ("compression", None),
    ("uncompressed_size", None),
    ("chain_id", None),
    # The layer's own id maps (container:host:size,...); None: the store's.
    ("uidmap", None),
    ("gidmap", None),
    # Why ``diff`` cannot give back the imported bytes (an archive that overwrites itself).
    ("unreproducible", None),
    # Why the layer's files cannot be trusted (an apply that did not finish); None when whole.
    ("damaged", None),
    # When the store last handed out a writable view of this imported layer (its files may
    # then differ from its tarball); None: never since the import, or found unchanged since.
    ("mounted_writable", None),
    # True from ``create`` until the layer is first applied to or mounted writable: it holds
    # nothing of its own, so an apply to it is recorded as an import is.  None otherwise (and
    # in records written before the field was).
    ("fresh", None),
)
_OPTIONAL = ("diff_digest", "compressed_digest", "compressed_size", "compression", "uncompressed_size",
             "chain_id", "uidmap", "gidmap", "unreproducible", "damaged", "mounted_writable", "fresh")


class LayerRecord:
    """What the store knows of one layer.

    A plain class rather than a dataclass: records are read by every command,
    and building dataclasses at import costs more than a read-only command may.
    """

    __slots__ = tuple(name for name, _ in _STORED)

    id: str
    parent: str | None
    created: str
    writable: bool
    driver: str
    size: int | None
    diff_digest: str | None
    compressed_digest: str | None
    compressed_size: int | None
    compression: str | None
    uncompressed_size: int | None
    chain_id: str | None
    uidmap: str | None
    gidmap: str | None
    unreproducible: str | None
    damaged: str | None
    mounted_writable: str | None
    fresh: bool | None

    def __init__(self, **values: Any) -> None:
        for name, default in _STORED:
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"unknown record fields: {', '.join(sorted(values))}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerRecord):
            return NotImplemented
        return type(self) is type(other) and self._compared() == other._compared()

    def _compared(self) -> tuple[Any, ...]:
        return tuple(self.to_json().values())

    def __repr__(self) -> str:
        return f"LayerRecord({self.to_json()!r})"

    def to_json(self) -> dict[str, Any]:
        """The stored form (without the display-only fields)."""
        return {name: getattr(self, name) for name, _ in _STORED}

    @classmethod
    def from_json(cls, value: Any, source: str) -> LayerRecord:
        """A record read from disk, every field checked by type (IntegrityError if corrupt)."""
        what = f"layer record {source}"
        if not isinstance(value, dict):
            raise IntegrityError(what, "corrupt: not a JSON object")
        if value.get("id") != source:
            raise IntegrityError(what, f"corrupt: its id is {_shown(value.get('id'))}")
        for name, kinds in _FIELD_TYPES.items():
            if name in value and not _is(value[name], kinds):
                raise IntegrityError(what, f"corrupt: {name} is {_shown(value[name])}")
        parent = value.get("parent")
        if parent is not None and not is_valid_id(parent):
            raise IntegrityError(what, f"corrupt: parent is {_shown(parent)}")
        return cls(**{k: v for k, v in value.items() if k in _FIELD_NAMES})

    def display(self) -> dict[str, Any]:
        """The stored fields as ``graphdriver layer ID`` prints them: unset store facts left out."""
        value = self.to_json()
        for key in _OPTIONAL:
            if value[key] is None:
                del value[key]
        return value


class Layer(LayerRecord):
    """A layer as the store hands it out: its stored record, which store it lives in, and
    the driver's facts about it (filled in for ``layer ID``).  Only the record is stored."""

    __slots__ = ("applying", "metadata", "mount_count", "mount_point", "read_only_store")

    #: Driver facts (``dir``, ``UpperDir``...), filled in when asked for.
    metadata: dict[str, str]
    #: True for layers of an additional read-only store.
    read_only_store: bool
    #: While an apply to the layer still runs: "an apply started at T is under way"
    #: (its ``damaged`` mark is then no damage, and is not shown); filled in when asked for.
    applying: str | None
    #: How many mounts of the layer await their unmount (None: not asked), and where it is
    #: mounted (None: nowhere); filled in with the driver's facts by ``Store.layer``.
    mount_count: int | None
    mount_point: str | None

    def __init__(self, record: LayerRecord, *, read_only_store: bool = False,
                 metadata: dict[str, str] | None = None) -> None:
        for name in _FIELD_ORDER:  # field by field: `layers` makes one per record
            setattr(self, name, getattr(record, name))
        self.read_only_store = read_only_store
        self.metadata = metadata or {}
        self.applying = None
        self.mount_count = None
        self.mount_point = None

    def _compared(self) -> tuple[Any, ...]:
        return (*super()._compared(), self.metadata, self.read_only_store, self.applying,
                self.mount_count, self.mount_point)

    def display(self) -> dict[str, Any]:
        value = super().display()
        if self.applying is not None:
            value.pop("damaged", None)
            value["applying"] = self.applying
        value["metadata"] = self.metadata
        if self.read_only_store:
            value["read_only_store"] = True
        if self.mount_count is not None:
            value["mount_count"] = self.mount_count
            if self.mount_point:
                value["mount_point"] = self.mount_point
        return value


_FIELD_ORDER = tuple(name for name, _ in _STORED)
_FIELD_NAMES = frozenset(_FIELD_ORDER)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
#: What each stored field may hold (ints never bools, sizes never negative).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "parent": _OPT_STR, "created": (str,), "writable": (bool,), "driver": (str,),
    "size": _OPT_INT, "diff_digest": _OPT_STR, "compressed_digest": _OPT_STR,
    "compressed_size": _OPT_INT, "compression": _OPT_STR, "uncompressed_size": _OPT_INT, "chain_id": _OPT_STR,
    "unreproducible": _OPT_STR, "damaged": _OPT_STR, "uidmap": _OPT_STR, "gidmap": _OPT_STR,
    "mounted_writable": _OPT_STR, "fresh": (bool, type(None)),
}


def _is(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return False
    return isinstance(value, kinds)


def _shown(value: object) -> str:
    from graphdriver.errors import shorten

    return shorten(repr(value), 60)


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with nanoseconds (as Go prints times)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class RecordStore:
    """The records of one store root (read-only when *writable* is False)."""

    def __init__(self, root: str, *, writable: bool = True) -> None:
        self.root = root
        self.dir = os.path.join(root, RECORDS_DIR)
        self.pending_dir = os.path.join(root, PENDING_DIR)
        self._held: dict[str, int] = {}
        self.writable = writable

    def make_dirs(self) -> None:
        """Create the folders of a new store's records (made when its first layer is)."""
        os.makedirs(self.dir, 0o700, exist_ok=True)
        os.makedirs(self.pending_dir, 0o700, exist_ok=True)

    def _path(self, layer_id: str) -> str:
        return os.path.join(self.dir, layer_id + ".json")

    def exists(self, layer_id: str) -> bool:
        """Whether *layer_id* has a record here; :class:`Unsupported` (exit 7) when this user
        may not look (a store that belongs to root): that is no answer, never "absent"."""
        return _present(self._path(layer_id), layer_id)

    def get(self, layer_id: str) -> LayerRecord:
        path = self._path(layer_id)
        try:
            value = atomic.read_json(path)
        except FileNotFoundError as e:
            raise NotFound(f"layer {layer_id}", "no such layer") from e
        except PermissionError as e:  # a missing privilege: nothing is corrupt
            raise refused(layer_id, e) from e
        except OSError as e:  # a folder in its place, say: its path is the store's business
            raise IntegrityError(f"layer record {layer_id}", f"unreadable: {e.strerror or e}") from e
        except ValueError as e:
            raise IntegrityError(f"layer record {layer_id}", f"unreadable: {e}") from e
        return LayerRecord.from_json(value, layer_id)

    def put(self, record: LayerRecord) -> None:
        atomic.write_json(self._path(record.id), record.to_json(), 0o600)

    def delete(self, layer_id: str) -> None:
        """Delete *layer_id*'s record, whatever stands in its place (a folder made where the
        file was is the layer's damaged record, and goes with the layer)."""
        remove_entry(self._path(layer_id))
        atomic.fsync_dir(self.dir)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    def all(self) -> list[LayerRecord]:
        """Every readable record (corrupt ones left out: see :meth:`scan`)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[LayerRecord], list[tuple[str, GraphDriverError]]]:
        """Every record: the good ones, and what is wrong with each one that cannot be read:
        :class:`IntegrityError` for a corrupt one, :class:`Unsupported` for one this user may
        not read (its layer is unknown, not damaged).

        One damaged record must not take the store down: callers list and use
        the good ones and name the bad.
        """
        good: list[LayerRecord] = []
        bad: list[tuple[str, GraphDriverError]] = []
        for layer_id in self.ids():
            try:
                good.append(self.get(layer_id))
            except NotFound:
                pass  # removed while we looked
            except (IntegrityError, Unsupported) as e:
                bad.append((layer_id, e))
        return good, bad

    # ----- pending markers --------------------------------------------------------
    #
    # A marker is a JSON file (what is under way, for people) and a lock file
    # the working process holds an flock on for as long as the work lasts.  The
    # lock belongs to the open file description, so the confined child a
    # process forks holds it too: work counts as live until every process
    # doing it is gone, whatever pids are reused later.  The working process
    # also holds a lock of its own on that file, which no child inherits
    # (``"owner_lock"`` in the marker says so): once it is gone while the flock
    # is still held, the work was killed and only its children, which die with
    # it, are left to end (:meth:`outlived`).

    def _lock_path(self, layer_id: str) -> str:
        return os.path.join(self.pending_dir, f".{layer_id}.lock")

    def mark_pending(self, layer_id: str, operation: str) -> None:
        """Say that *operation* on *layer_id* is under way (before any disk work)."""
        import fcntl  # here: listing and reading records takes no lock

        try:
            fd = os.open(self._lock_path(layer_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if self._mark_without_space(layer_id, operation, e):
                return
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            marker: dict[str, Any] = {"op": operation, "pid": os.getpid(), "boot": boot_id()}
            if _hold_as_owner(fd):
                marker["owner_lock"] = True
            try:
                atomic.write_json(os.path.join(self.pending_dir, layer_id), marker)
            except OSError as e:
                if not self._mark_without_space(layer_id, operation, e):
                    # No marker was written (a full filesystem, say): nothing is under way,
                    # so the lock file goes too, as clear_pending takes it away.
                    atomic.remove_file(self._lock_path(layer_id))
                    raise
        except BaseException:
            _close_held(fd)
            raise
        old = self._held.pop(layer_id, None)
        if old is not None:
            _close_held(old)
        self._held[layer_id] = fd

    def _mark_without_space(self, layer_id: str, operation: str, e: OSError) -> bool:
        """Mark a removal on a full filesystem (no block or inode left for a marker, and a
        removal is how space is freed) with a second name of the layer's record in the pending
        folder, which takes neither; whether it did. The marker's content is not read back:
        ``cleanup`` finishes a dead removal from its name alone, and while this process
        removes the layer it holds the store lock that ``cleanup`` waits for."""
        import errno

        if operation != "remove" or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return False
        try:
            os.link(self._path(layer_id), os.path.join(self.pending_dir, layer_id))
        except OSError:
            return False
        atomic.fsync_dir(self.pending_dir)
        return True

    def clear_pending(self, layer_id: str) -> None:
        """The work on *layer_id* is complete and durable (or undone)."""
        for path in (os.path.join(self.pending_dir, layer_id), self._lock_path(layer_id)):
            atomic.remove_file(path)
        atomic.fsync_dir(self.pending_dir)
        fd = self._held.pop(layer_id, None)
        if fd is not None:
            _close_held(fd)

    def pending_ids(self) -> list[str]:
        """Ids with a pending marker, without reading the markers."""
        try:
            return [n for n in os.listdir(self.pending_dir) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def pending_entries(self) -> list[str]:
        """Everything in the pending folder: markers, their locks, half-written markers."""
        try:
            return os.listdir(self.pending_dir)
        except FileNotFoundError:
            return []

    def pending(self) -> dict[str, dict[str, Any]]:
        """Markers left by work under way or interrupted: id → marker."""
        out: dict[str, dict[str, Any]] = {}
        try:
            names = os.listdir(self.pending_dir)
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            try:
                value = atomic.read_json(os.path.join(self.pending_dir, name))
            except (OSError, ValueError):
                value = {}
            out[name] = value if isinstance(value, dict) else {}
        return out

    def is_pending(self, layer_id: str) -> bool:
        return _present(os.path.join(self.pending_dir, layer_id), layer_id)

    def _apply_lock_path(self, layer_id: str) -> str:
        return os.path.join(self.pending_dir, f".{layer_id}{APPLY_LOCK_SUFFIX}")

    def hold_applying(self, layer_id: str) -> ApplyLock:
        """Say that this process applies a tarball to *layer_id* until the lock is released
        (call with the store lock held; :class:`Precondition` when another apply holds it)."""
        from graphdriver.fs.locking import claim

        path = self._apply_lock_path(layer_id)
        try:
            fd = claim(path)  # a dead apply's lock file is taken over
        except FileExistsError:
            raise Precondition(f"layer {layer_id}", "is being applied to: an apply is under way") from None
        try:
            # The confined child an apply forks inherits the flock: the owner's lock, which
            # it does not, tells a dead apply whose child is still ending from a live one.
            if _hold_as_owner(fd):
                os.write(fd, APPLY_OWNER_MARK)
        except BaseException:
            _close_held(fd)
            raise
        return ApplyLock(fd, path)

    def is_applying(self, layer_id: str) -> bool:
        """Whether a live process is applying a tarball to *layer_id* now (a dead one's apply
        left the layer damaged).  An apply that is dead while the child it forked still holds
        its lock is waited for (up to :data:`CHILDREN_WAIT`): the child is ending."""
        from graphdriver.fs.locking import held_by_its_process, is_held

        path = self._apply_lock_path(layer_id)
        if _held_here(path):
            return True
        if not is_held(path):
            return False
        try:
            with open(path, "rb") as f:
                owned = f.read(len(APPLY_OWNER_MARK) + 1) == APPLY_OWNER_MARK
        except OSError:
            return True
        if not owned or held_by_its_process(path):
            return True  # (an apply of a version without the owner's lock is taken for live)
        return not _wait_until(lambda: not is_held(path), CHILDREN_WAIT)

    def is_live(self, layer_id: str) -> bool:
        """Whether some process (this one included) is still doing the marked work."""
        path = self._lock_path(layer_id)
        if layer_id in self._held or _held_here(path):
            return True
        from graphdriver.fs.locking import is_held

        return is_held(path)

    def outlived(self, layer_id: str, marker: dict[str, Any]) -> bool:
        """Whether the process that marked *layer_id* (*marker*, as :meth:`pending` read it) is
        dead while its marker's lock is still held: by the children it forked (a confined
        extraction), which the kernel kills with it and which end a moment later."""
        path = self._lock_path(layer_id)
        if marker.get("owner_lock") is not True or layer_id in self._held or _held_here(path):
            return False
        from graphdriver.fs.locking import held_by_its_process

        return not held_by_its_process(path)

    def wait_ended(self, layer_id: str, timeout: float) -> bool:
        """Wait up to *timeout* seconds until no process holds *layer_id*'s marker lock; whether
        none does."""
        return _wait_until(lambda: not self.is_live(layer_id), timeout)


class ApplyLock:
    """What an apply holds while it runs (see :meth:`RecordStore.hold_applying`)."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd: int | None = fd
        self.path = path

    def release(self) -> None:
        """The apply is over (call with the store lock held, in the block that writes its
        record, so nobody sees its record and its lock disagree); again does nothing."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            _close_held(self.fd)
            self.fd = None


_BOOT_ID: str | None = None

#: The marker locks this process holds as their owner, whichever :class:`RecordStore`
#: took them, by (device, inode): opening one to probe it would drop that lock.
_OWNED: dict[tuple[int, int], int] = {}


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Wait up to *timeout* seconds until *done()*; whether it is."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _hold_as_owner(fd: int) -> bool:
    """Take the owner's lock (one no child inherits) on the marker lock open at *fd*; whether it could."""
    from graphdriver.fs.locking import hold_for_this_process

    if not hold_for_this_process(fd):
        return False
    st = os.fstat(fd)
    _OWNED[(st.st_dev, st.st_ino)] = fd
    return True


def _close_held(fd: int) -> None:
    """Close a marker lock this process held (its owner's lock goes with it)."""
    try:
        st = os.fstat(fd)
        _OWNED.pop((st.st_dev, st.st_ino), None)
    finally:
        os.close(fd)


def _held_here(path: str) -> bool:
    """Whether this process holds the marker lock at *path* as its owner (through a
    descriptor still open on it)."""
    if not _OWNED:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    fd = _OWNED.get(key)
    if fd is None:
        return False
    try:
        held = os.fstat(fd)
    except OSError:
        held = None
    if held is None or (held.st_dev, held.st_ino) != key:
        del _OWNED[key]  # closed without _close_held: its lock went with it
        return False
    return True


def refused(layer_id: str, e: OSError) -> Unsupported:
    """*layer_id*'s record (or marker) that this user may not read: a missing privilege
    (exit 7), never corruption."""
    where = f" {e.filename}" if e.filename else ""
    return Unsupported(f"layer {layer_id}", f"its record cannot be read by this user ({e.strerror}{where})")


def remove_entry(path: str) -> None:
    """Unlink *path*, or remove it whole where it is a folder; a missing *path* is no error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        from graphdriver.fs.tree import remove_tree

        remove_tree(path)


def _present(path: str, layer_id: str) -> bool:
    """Whether *path* is there: :func:`os.path.exists` would read a refusal as absence."""
    try:
        os.stat(path)
    except PermissionError as e:
        raise refused(layer_id, e) from e
    except OSError:  # not there (or a path no file can have)
        return False
    return True


def boot_id() -> str:
    """This boot's id: a marker from an earlier boot belongs to a dead process."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID

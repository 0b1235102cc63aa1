"""Mount counts shared by every process that uses a store (the seeds' ``Get``/``Put`` counting).

Per layer folder, in the driver's run root (tmpfs: a reboot forgets them with
the mounts they count): ``<key>.json`` holds the count and the mounted path,
``<key>.lock`` is the ``flock`` taken around every change of them.  Only the
first ``get`` mounts and only the last ``put`` unmounts; the driver does the
mounting, this module only counts.

A count a command takes for itself, only while it reads (``changes``, ``diff``),
is also a *hold*: a file in ``<key>.holds/`` that the command keeps locked,
named in the count record (``holds``) in the same write as the count it adds.
The kernel releases the lock when the command dies, however it dies, so a
listed hold whose file nobody locks is a count its taker can no longer give
back (:meth:`MountCounts.dead_holds`): the driver takes it away.  A hold file
the record does not list counts nothing (its command died before counting it,
or after giving it back) and is only removed.
"""

from __future__ import annotations

import os

from graphdriver import jsonio
from graphdriver.fs import atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from graphdriver.fs.locking import locked

# graphdriver.fs.locking (and fcntl) is imported where a lock is taken: `layer` reads counts
# without one, and need not load it.

_RECORD = ".json"
_LOCK = ".lock"
_HOLDS = ".holds"


class MountCounts:
    """The counts kept in one directory, keyed by layer folder name."""

    __slots__ = ("directory",)

    def __init__(self, directory: str) -> None:
        self.directory = directory  # made by the driver's prepare()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def lock(self, key: str) -> locked:
        """The lock to hold while reading a count and acting on it: ``with counts.lock(key):``."""
        from graphdriver.fs.locking import locked

        return locked(self._path(key) + _LOCK)

    def _read(self, key: str) -> dict[str, object]:
        try:
            with open(self._path(key) + _RECORD, encoding="utf-8") as f:
                value = jsonio.loads(f.read())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def entry(self, key: str) -> tuple[int, str | None, list[str]]:
        """How many ``get`` calls (in all processes) await their ``put``, where the counted
        mount is, and the holds among them by name (see the module), in one read of the record."""
        record = self._read(key)
        count, path, holds = record.get("count", 0), record.get("path"), record.get("holds")
        return ((count if isinstance(count, int) else 0), (str(path) if path else None),
                [h for h in holds if isinstance(h, str)] if isinstance(holds, list) else [])

    def state(self, key: str) -> tuple[int, str | None]:
        """The count and the mount's path of :meth:`entry`."""
        count, path, _ = self.entry(key)
        return count, path

    def count(self, key: str) -> int:
        """How many ``get`` calls (in all processes) await their ``put``."""
        return self.state(key)[0]

    def path(self, key: str) -> str | None:
        """Where the counted mount is, as recorded."""
        return self.state(key)[1]

    def set(self, key: str, count: int, path: str, holds: list[str] | None = None) -> None:
        """Record *count* mounts at *path*, the holds named *holds* among them (None: those
        recorded now), in one write; zero forgets the layer's record, holds included."""
        target = self._path(key) + _RECORD
        if count <= 0:
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            return
        if holds is None:
            holds = self.holds(key)
        value: dict[str, object] = {"count": count, "path": path}
        if holds:
            value["holds"] = holds
        atomic.write_json(target, value, durable=False)

    def recorded(self, key: str) -> bool:
        """Whether *key* has a count record now (read it with its lock held to act on it)."""
        return os.path.exists(self._path(key) + _RECORD)

    def counted(self) -> list[str]:
        """The keys that have a count record, sorted."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(_RECORD)] for e in entries if e.endswith(_RECORD))

    def holds(self, key: str) -> list[str]:
        """The holds of :meth:`entry`."""
        return self.entry(key)[2]

    def new_hold(self, key: str) -> tuple[int, str]:
        """A hold of *key* by this process, not counted yet (call with the count lock held, and
        record its name with :meth:`set`): the descriptor keeping its file locked, and its name."""
        directory = self._path(key) + _HOLDS
        os.makedirs(directory, 0o700, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        from graphdriver.fs.locking import claim

        return claim(os.path.join(directory, name)), name

    def end_hold(self, key: str, fd: int, name: str) -> None:
        """Remove this process's hold file (call with the count lock held, its count given back
        or dropped already)."""
        directory = self._path(key) + _HOLDS
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
        try:
            os.rmdir(directory)
        except OSError:
            pass  # other holds are in it

    def has_holds(self, key: str) -> bool:
        """Whether any hold of *key* has a file, live or not (a quick look, no lock needed)."""
        try:
            return bool(os.listdir(self._path(key) + _HOLDS))
        except FileNotFoundError:
            return False

    def live_count(self, key: str, mount_gone: Callable[[str | None], bool], *,
                   serialised: bool = False) -> int:
        """The count of *key* as this directory's own commands would take it, read from
        another run root: under its lock, taken without waiting (a command changing the count
        there now: 1), less the holds of commands that died, and 0 when *mount_gone* says the
        recorded mount is gone.  Makes nothing, and waits for no one.

        *serialised*: the caller holds the home's lock of *key* (:meth:`RunRoots.lock`), under
        which every count of the mount goes to or from 0: the record is read as it stands (a
        command holding its lock there is changing a count that stays above 0, or is waiting
        to take it to or from 0 after us, as its record will show it then)."""
        from graphdriver.fs.locking import lock_if_free

        if serialised:
            return self._live(key, mount_gone, None)
        try:
            fd = lock_if_free(self._path(key) + _LOCK)
        except BlockingIOError:
            return 1
        except OSError:
            return 0  # not ours to read: nothing we could be told to keep
        return self._live(key, mount_gone, fd)

    def _live(self, key: str, mount_gone: Callable[[str | None], bool], fd: int | None) -> int:
        """:meth:`live_count` once its lock is taken (*fd*, closed here) or not needed."""
        try:
            count, path, holds = self.entry(key)
            count -= len(self.dead_holds(key, holds))
            return 0 if count <= 0 or mount_gone(path) else count
        finally:
            if fd is not None:
                os.close(fd)

    def held_keys(self) -> list[str]:
        """The keys that have hold files, sorted."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(_HOLDS)] for e in entries if e.endswith(_HOLDS))

    def dead_holds(self, key: str, listed: list[str]) -> list[str]:
        """Those of the holds *listed* in the count whose taker died (its file gone or locked
        by nobody): counts nobody will give back (call with the count lock held)."""
        from graphdriver.fs.locking import is_held

        directory = self._path(key) + _HOLDS
        return [name for name in listed if not is_held(os.path.join(directory, name))]

    def tidy_holds(self, key: str, keep: list[str]) -> None:
        """Remove the hold files of *key* that are not in *keep* and that nobody holds: given
        back, dropped, or made by a command killed before it counted it (call with the count
        lock held, once the count no longer lists them)."""
        from graphdriver.fs.locking import remove_abandoned

        directory = self._path(key) + _HOLDS
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if name not in keep:
                remove_abandoned(os.path.join(directory, name))
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def forget_lock(self, key: str) -> None:
        """Remove the lock file of a layer that is gone (call with the lock held)."""
        try:
            os.unlink(self._path(key) + _LOCK)
        except FileNotFoundError:
            pass

    def remove_unused_locks(self, exists: Callable[[str], bool]) -> list[str]:
        """Remove the lock files of layers that are gone and that nobody holds now (someone
        holding one is counting a mount of it right now)."""
        return _remove_unused_locks(self.directory, _LOCK, exists, "mount lock")


def _remove_unused_locks(directory: str, suffix: str, exists: Callable[[str], bool], what: str) -> list[str]:
    """Remove the lock files ``<key><suffix>`` in *directory* of layers that are gone and that
    nobody holds now; what was done, a line each."""
    from graphdriver.fs.locking import remove_abandoned

    done: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return done
    for entry in entries:
        key = entry[: len(entry) - len(suffix)]
        if entry.endswith(suffix) and not exists(key) and remove_abandoned(os.path.join(directory, entry)):
            done.append(f"removed {what} of gone layer {key}")
    return done


class HomeLock:
    """The home's lock of one layer's mount (``with run_roots.lock(key) as serialised:``),
    held after the run root's own count lock while the count goes to or from 0: the first
    ``get``, the last ``put``, ``remove`` and cleanup asking the other run roots.  Two run
    roots of one store share an own layer's mount point; without it, two last ``put`` calls
    at once each saw the other's count and both left the mount, counted by neither.

    The block gets True, or False where the home cannot take the lock (a read-only store,
    whose layers are mounted in the run root, where no other run root looks): the counts of
    others are then read as before, a command changing one counting 1.
    """

    __slots__ = ("_lock", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock: locked | None = None

    def __enter__(self) -> bool:
        from graphdriver.fs.locking import locked

        for _ in range(3):
            lock = locked(self.path)
            try:
                lock.__enter__()
            except FileNotFoundError:
                if not _made_in_home(os.path.dirname(self.path)):
                    return False
                continue
            except OSError:
                return False
            self._lock = lock
            return True
        return False

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self._lock is not None:
            self._lock.__exit__(kind, value, tb)
            self._lock = None


class RunRoots:
    """The run roots a driver's mounts were counted in, noted in its home.

    Counts live in a run root, and one store may be used with several
    (``--run-root``): a mount counted in another run root is live there though
    this one has no count of it.  A run directory is noted once, at its first
    mount (``<home>/.run-roots/<key>`` holds its path), so that ``remove``, the
    last ``put`` and cleanup ask the others before they take a layer away, undo
    a mount, or call a mount stale.

    A store keeps its counts at ``<run-root>/<store key>/<driver>``, the key
    made of its root's resolved path: only noted run directories that end in
    this run directory's key and driver count for this home.  A store copied
    with ``cp -a`` carries the original's notes, which name the original's key:
    they say nothing about the copy's layers and are never asked.
    """

    __slots__ = ("directory", "run_dir")

    def __init__(self, home: str, run_dir: str) -> None:
        self.directory = os.path.join(home, RUN_ROOTS_DIR)
        # Resolved, so that a run root named through a symlink is noted once, as itself.
        self.run_dir = os.path.realpath(run_dir)

    def note(self) -> None:
        """Note this run directory (once; a home that cannot take the note is left as it is)."""
        from graphdriver.fs import path_key

        note = os.path.join(self.directory, path_key(self.run_dir))
        if os.path.exists(note):
            return
        if not _made_in_home(self.directory):
            return  # a read-only home, or none yet: cleanup then knows no other run root, as before
        try:
            atomic.write_bytes(note, os.fsencode(self.run_dir), 0o600)
        except OSError:
            pass  # a home that takes no file: the same

    def _noted(self) -> list[tuple[str, str]]:
        """(note, run directory) of every run directory noted, this one's included."""
        from graphdriver.fs.locking import remove_abandoned

        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        out = []
        for name in names:
            note = os.path.join(self.directory, name)
            if name.startswith("."):
                remove_abandoned(note)  # a note's temporary file, left by a writer that died
                continue
            try:
                with open(note, "rb") as f:
                    run_dir = os.fsdecode(f.read())
            except OSError:
                continue  # a note being written (its temporary name), or gone meanwhile
            out.append((note, run_dir))
        return out

    def _ours(self, run_dir: str) -> bool:
        """Whether *run_dir* keeps counts of this home: its store key and driver are this
        run directory's (the last two parts of the path)."""
        return _tail(run_dir) == _tail(self.run_dir)

    def _is_this(self, run_dir: str) -> bool:
        """Whether *run_dir* is this run directory, however it is spelt."""
        if run_dir == self.run_dir:
            return True
        try:
            return os.path.samestat(os.stat(run_dir), os.stat(self.run_dir))
        except OSError:
            return False

    def _others(self) -> list[tuple[str, str]]:
        """(note, run directory) of every other run directory noted that counts for this home."""
        return [(note, run_dir) for note, run_dir in self._noted()
                if self._ours(run_dir) and not self._is_this(run_dir)]

    def counted_elsewhere(self, key: str, mount_gone: Callable[[str | None], bool], *,
                          serialised: bool = False) -> list[str]:
        """The run roots (as ``--run-root`` names them) of the other run directories that count
        a live mount of *key* now (see :meth:`MountCounts.live_count`; a count whose recorded
        path *mount_gone* rejects counts nothing).  *serialised*: :meth:`lock` of *key* is held."""
        return [shown_run_root(run_dir) for _, run_dir in self._others()
                if MountCounts(os.path.join(run_dir, "mounts")).live_count(
                    key, mount_gone, serialised=serialised) > 0]

    def lock(self, key: str) -> HomeLock:
        """The home's lock of *key*'s mount (see :class:`HomeLock`)."""
        return HomeLock(os.path.join(os.path.dirname(self.directory), MOUNT_LOCKS_DIR, key))

    def remove_unused_locks(self, exists: Callable[[str], bool]) -> list[str]:
        """Remove the home's mount locks of layers that are gone and that nobody holds now."""
        home = os.path.dirname(self.directory)
        return _remove_unused_locks(os.path.join(home, MOUNT_LOCKS_DIR), "", exists, "home mount lock")

    def forget_lock(self, key: str) -> None:
        """Remove the home's lock of a layer that is gone (call with it held), and its folder
        once it is empty: a layer made and removed (a failed import) leaves nothing.  A lock
        taken meanwhile makes the folder again (:class:`HomeLock`)."""
        directory = os.path.join(os.path.dirname(self.directory), MOUNT_LOCKS_DIR)
        for remove, path in ((os.unlink, os.path.join(directory, key)), (os.rmdir, directory)):
            try:
                remove(path)
            except OSError:
                pass

    def forget_gone(self) -> list[str]:
        """Drop the notes of run directories that are gone (a reboot empties a tmpfs run root),
        another store's among them (a note of another store's is never asked, and is left
        while its run directory is there: the same store may be reached by another path)."""
        done = []
        for note, run_dir in self._noted():
            if os.path.isdir(run_dir) or self._is_this(run_dir):
                continue
            try:
                os.unlink(note)
            except FileNotFoundError:
                continue
            if os.path.isdir(run_dir):  # made again meanwhile: its next mount would not note it
                atomic.write_bytes(note, os.fsencode(run_dir), 0o600)
                continue
            done.append(f"forgot run root {shown_run_root(run_dir)} (gone)")
        return done


def _made_in_home(folder: str) -> bool:
    """Make *folder*, a folder of a driver's home, unless it is there; whether it is now.
    A home that cannot take it (read-only), or that is not there (a store not made yet,
    whose commands read layers of additional stores alone), is left as it is."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return True


def _tail(run_dir: str) -> tuple[str, str]:
    """The store key and driver of a run directory ``<run-root>/<store key>/<driver>``."""
    head, driver = os.path.split(os.path.normpath(run_dir))
    return os.path.basename(head), driver


def shown_run_root(run_dir: str) -> str:
    """The ``--run-root`` of a driver's run directory: the store puts each driver's state at
    ``<run-root>/<store key>/<driver>``, one run root serving several stores."""
    return os.path.dirname(os.path.dirname(run_dir))


#: The folder of a driver's home where :class:`RunRoots` notes run directories.
RUN_ROOTS_DIR = ".run-roots"
#: The folder of a driver's home holding :class:`HomeLock` files, one per layer mounted.
MOUNT_LOCKS_DIR = ".mount-locks"

"""Mount counts shared by every process that uses a store (the seeds' ``Get``/``Put`` counting).

Per layer folder, in the driver's run root (tmpfs: a reboot forgets them with
the mounts they count): ``<key>.json`` holds the count and the mounted path,
``<key>.lock`` is the ``flock`` taken around every change of them.  Only the
first ``get`` mounts and only the last ``put`` unmounts; the driver does the
mounting, this module only counts.

A count a command takes for itself, only while it reads (``changes``, ``diff``),
is also a *hold*: a file in ``<key>.holds/`` that the command keeps locked.
The kernel releases the lock when the command dies, however it dies, so a
hold whose file nobody locks is a count its taker can no longer give back:
:meth:`MountCounts.reap` removes it, and the driver takes its count away.
"""

from __future__ import annotations

import os

from graphdriver import jsonio
from graphdriver.fs import atomic
from graphdriver.fs.locking import locked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

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
        return locked(self._path(key) + _LOCK)

    def _read(self, key: str) -> dict[str, object]:
        try:
            with open(self._path(key) + _RECORD, encoding="utf-8") as f:
                value = jsonio.loads(f.read())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def state(self, key: str) -> tuple[int, str | None]:
        """How many ``get`` calls (in all processes) await their ``put``, and where the
        counted mount is, as recorded (one read of the record)."""
        record = self._read(key)
        count, path = record.get("count", 0), record.get("path")
        return (count if isinstance(count, int) else 0), (str(path) if path else None)

    def count(self, key: str) -> int:
        """How many ``get`` calls (in all processes) await their ``put``."""
        return self.state(key)[0]

    def path(self, key: str) -> str | None:
        """Where the counted mount is, as recorded."""
        return self.state(key)[1]

    def set(self, key: str, count: int, path: str) -> None:
        """Record *count* mounts at *path*; zero forgets the layer's record."""
        target = self._path(key) + _RECORD
        if count <= 0:
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            return
        atomic.write_json(target, {"count": count, "path": path}, durable=False)

    def counted(self) -> list[str]:
        """The keys that have a count record, sorted."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(_RECORD)] for e in entries if e.endswith(_RECORD))

    def hold(self, key: str) -> tuple[int, str]:
        """A new hold of *key* by this process (call with the count lock held): the descriptor
        keeping its file locked, and the file; give both to :meth:`release`."""
        import fcntl

        directory = self._path(key) + _HOLDS
        os.makedirs(directory, 0o700, exist_ok=True)
        path = os.path.join(directory, f"{os.getpid()}-{os.urandom(6).hex()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd, path

    def release(self, fd: int, path: str) -> None:
        """End a hold made by :meth:`hold` (call with the count lock held)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # other holds are in it

    def has_holds(self, key: str) -> bool:
        """Whether any hold of *key* has a file, live or not (no lock needed: a quick look)."""
        try:
            return bool(os.listdir(self._path(key) + _HOLDS))
        except FileNotFoundError:
            return False

    def reap(self, key: str) -> int:
        """Remove the holds of *key* whose taker died (call with the count lock held);
        returns how many, each a count nobody will give back."""
        import fcntl

        directory = self._path(key) + _HOLDS
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        dead = 0
        for name in names:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its taker is alive and holds it
            finally:
                os.close(fd)
            os.unlink(path)
            dead += 1
        try:
            os.rmdir(directory)
        except OSError:
            pass
        return dead

    def forget_lock(self, key: str) -> None:
        """Remove the lock file of a layer that is gone (call with the lock held)."""
        try:
            os.unlink(self._path(key) + _LOCK)
        except FileNotFoundError:
            pass

    def remove_unused_locks(self, exists: Callable[[str], bool]) -> list[str]:
        """Remove the lock files of layers that are gone and that nobody holds now."""
        import fcntl

        done: list[str] = []
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return done
        for entry in entries:
            key = entry[: -len(_LOCK)]
            if not entry.endswith(_LOCK) or exists(key):
                continue
            path = os.path.join(self.directory, entry)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # someone is counting a mount of it right now
            finally:
                os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            done.append(f"removed mount lock of gone layer {key}")
        return done

"""Mount counts shared by every process that uses a store (the seeds' ``Get``/``Put`` counting).

Per layer folder, in the driver's run root (tmpfs: a reboot forgets them with
the mounts they count): ``<key>.json`` holds the count and the mounted path,
``<key>.lock`` is the ``flock`` taken around every change of them.  Only the
first ``get`` mounts and only the last ``put`` unmounts; the driver does the
mounting, this module only counts.
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

"""Progress bars on stderr for long work, only when stderr is a terminal.

``rich`` is imported only when a bar is really shown, so scripts (whose stderr
is not a terminal) pay nothing for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


def wanted(quiet: bool = False) -> bool:
    """Whether a bar should be drawn: stderr is a terminal and not silenced."""
    if quiet or os.environ.get("GRAPHDRIVER_NO_PROGRESS"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _CountingReader:
    """A read-through wrapper that reports bytes read to a callback."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._advance(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)  # type: ignore[attr-defined]
        self._advance(n or 0)
        return int(n or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _CountingWriter:
    """A write-through wrapper that reports bytes written to a callback."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        self._advance(len(data))
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _SharedCount:
    """A byte count in memory shared with forked children.

    ``import`` and ``apply`` read their input in the confined child process
    (:func:`graphdriver.fs.confine.run_confined`), where a bar's own counter
    would move only in the child's copy of it; the child adds here instead, and
    the parent's bar follows.  One thread adds at a time (the one reading or
    writing the stream).
    """

    def __init__(self) -> None:
        import mmap

        self._map = mmap.mmap(-1, 8)  # anonymous and MAP_SHARED: a fork shares it
        self._count = memoryview(self._map).cast("Q")

    def add(self, n: int) -> None:
        self._count[0] += n

    @property
    def value(self) -> int:
        return int(self._count[0])


#: How often a bar takes the count (seconds); rich redraws at 10 per second.
_FOLLOW_EVERY = 0.1


@contextlib.contextmanager
def _following(bar: Any, task: Any) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` that works from any thread or forked child; the bar follows it."""
    import threading

    count = _SharedCount()
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(_FOLLOW_EVERY):
            bar.update(task, completed=count.value)

    follower = threading.Thread(target=follow, name="graphdriver-progress", daemon=True)
    follower.start()
    try:
        yield count.add
    finally:
        stop.set()
        follower.join()
        bar.update(task, completed=count.value)


@contextlib.contextmanager
def _bar(label: str, total: int | None, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A byte-counting bar on stderr, or None when no bar is wanted (or rich is missing)."""
    if not wanted(quiet):
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar, _following(bar, bar.add_task(label, total=total)) as advance:
        yield advance


@contextlib.contextmanager
def bars(quiet: bool = False) -> Iterator[Callable[[str, int | None], Callable[[int], None]] | None]:
    """Several bars at once (one per layer of a pull): yields ``add(label, total) -> advance``,
    or None when no bar is wanted.  The advance functions may be called from any thread."""
    if not wanted(quiet):
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    except ImportError:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as bar:

        def add(label: str, total: int | None) -> Callable[[int], None]:
            task = bar.add_task(label, total=total)
            return lambda n: bar.advance(task, n)

        yield add


@contextlib.contextmanager
def reading(stream: BinaryIO, label: str, total: int | None, quiet: bool = False) -> Iterator[BinaryIO]:
    """Yield *stream*, wrapped to drive a bar of bytes read when one is wanted."""
    with _bar(label, total, quiet) as advance:
        yield stream if advance is None else _CountingReader(stream, advance)  # type: ignore[misc]


@contextlib.contextmanager
def writing(stream: BinaryIO, label: str, total: int | None, quiet: bool = False) -> Iterator[BinaryIO]:
    """Yield *stream*, wrapped to drive a bar of bytes written when one is wanted."""
    with _bar(label, total, quiet) as advance:
        yield stream if advance is None else _CountingWriter(stream, advance)  # type: ignore[misc]


def file_size(stream: BinaryIO) -> int | None:
    """Size of a regular file behind *stream*, None for pipes."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat

    return st.st_size if stat.S_ISREG(st.st_mode) else None

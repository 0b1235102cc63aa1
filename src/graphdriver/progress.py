"""Progress bars on stderr for long work, only when stderr is a terminal.

``rich`` is imported only when a bar is really shown, so scripts (whose stderr
is not a terminal) pay nothing for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
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
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


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

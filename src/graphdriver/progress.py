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


@contextlib.contextmanager
def reading(stream: BinaryIO, label: str, total: int | None, quiet: bool = False) -> Iterator[BinaryIO]:
    """Yield *stream*, wrapped to drive a bar of bytes read when one is wanted."""
    if not wanted(quiet):
        yield stream
        return
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        yield stream
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield _CountingReader(stream, lambda n: bar.advance(task, n))  # type: ignore[misc]


def file_size(stream: BinaryIO) -> int | None:
    """Size of a regular file behind *stream*, None for pipes."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat

    return st.st_size if stat.S_ISREG(st.st_mode) else None

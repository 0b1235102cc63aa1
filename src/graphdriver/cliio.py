"""Where a command's bytes come from and go to.

``import``/``apply`` read FILE or standard input (``-``); ``diff``/``tarsplit``
write standard output or ``-o FILE``.  A regular FILE is written whole or not
at all (a temporary file beside it, renamed over it at the end), so a failed
export never leaves a truncated tarball under the name a script expects; a
symlink is followed to the file it names (the link stays); a device, a fifo or
``/dev/stdout`` is written into as it is, never replaced
(:mod:`graphdriver.fs.outfile`).  Progress bars wrap the stream when stderr is
a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from graphdriver import progress
from graphdriver.errors import InvalidArgument, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


@contextlib.contextmanager
def input_stream(path: str, label: str, quiet: bool) -> Iterator[BinaryIO]:
    """FILE (or standard input for ``-``), wrapped in a progress bar when one is wanted."""
    if path == "-":
        if sys.stdin is None:  # the caller closed it: there is nothing to read, not an empty layer
            raise InvalidArgument("standard input", "is closed; name a FILE or pipe a tarball in")
        with progress.reading(sys.stdin.buffer, label, None, quiet) as s:
            yield s
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise os_error(f"cannot read {path}", e, InvalidArgument) from e
    with f, progress.reading(f, label, progress.file_size(f), quiet) as s:
        yield s


def stdout() -> BinaryIO:
    """Standard output's bytes; a one-line error when the caller closed it."""
    if sys.stdout is None:  # the command line refuses this first; a guard for other callers
        from graphdriver.cliargs import CLOSED_STDOUT

        raise InvalidArgument("standard output", CLOSED_STDOUT)
    return sys.stdout.buffer


@contextlib.contextmanager
def output_stream(path: str | None) -> Iterator[BinaryIO]:
    """Standard output, or FILE (see :mod:`graphdriver.fs.outfile`)."""
    if path is None or path == "-":
        yield stdout()
        sys.stdout.buffer.flush()
        return
    from graphdriver.fs.outfile import OutputFile

    with OutputFile(path) as f:
        yield f

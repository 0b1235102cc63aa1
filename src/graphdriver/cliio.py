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


#: Whether this process handed out standard output's bytes, and where they began when
#: standard output is a regular file (None: a pipe or a terminal, which cannot be cut back).
_stdout_taken = False
_stdout_start: int | None = None


def stdout() -> BinaryIO:
    """Standard output's bytes; a one-line error when the caller closed it."""
    global _stdout_taken, _stdout_start
    if sys.stdout is None:  # the command line refuses this first; a guard for other callers
        from graphdriver.cliargs import CLOSED_STDOUT

        raise InvalidArgument("standard output", CLOSED_STDOUT)
    if not _stdout_taken:
        _stdout_taken = True
        try:
            import fcntl
            import os
            import stat

            sys.stdout.flush()  # what was printed before is not this stream's
            fd = sys.stdout.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                _stdout_start = None
            elif fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # >>: each write goes at the end
                _stdout_start = st.st_size
            else:
                _stdout_start = os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError, AttributeError):
            _stdout_start = None
    return sys.stdout.buffer


def may_begin_again() -> bool:
    """Whether a failed command may run again from the start: it wrote nothing to standard
    output, or standard output is a regular file that :func:`begin_again` cuts back."""
    return not _stdout_taken or _stdout_start is not None


def begin_again() -> None:
    """Cut standard output back to where this command began writing it (see
    :func:`may_begin_again`): what the failed run wrote there is dropped."""
    global _stdout_taken
    if not _stdout_taken or _stdout_start is None or sys.stdout is None:
        return
    import os

    out = sys.stdout.buffer
    out.flush()
    os.ftruncate(out.fileno(), _stdout_start)
    os.lseek(out.fileno(), _stdout_start, os.SEEK_SET)
    _stdout_taken = False


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

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
def input_stream(path: str, command: str, layer_id: str, quiet: bool) -> Iterator[BinaryIO]:
    """FILE (or standard input for ``-``) for *command* (``import``, ``apply``) of *layer_id*,
    wrapped in a progress bar when one is wanted."""
    label = f"{command} {layer_id}"
    if path == "-":
        if sys.stdin is None:  # the caller closed it: there is nothing to read, not an empty layer
            raise InvalidArgument("standard input", "is closed; name a FILE or pipe a tarball in")
        if sys.stdin.isatty():
            # It would wait behind a progress bar for bytes no one types (as image load refuses).
            from graphdriver.cliargs import UsageError

            raise UsageError("standard input is a terminal; give a tarball file or pipe one", command)
        with progress.reading(sys.stdin.buffer, label, None, quiet) as s:
            yield s
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise os_error(f"cannot read {path}", e, InvalidArgument) from e
    with f, progress.reading(f, label, progress.file_size(f), quiet) as s:
        yield s


#: Whether this process handed out standard output's bytes; whether what it writes there
#: can be taken back (a regular file it appends to, cut back to *start*; ``/dev/null``).
_stdout_taken = False
_stdout_restartable = False
_stdout_start: int | None = None


def stdout() -> BinaryIO:
    """Standard output's bytes; a one-line error when the caller closed it."""
    global _stdout_taken
    if sys.stdout is None:  # the command line refuses this first; a guard for other callers
        from graphdriver.cliargs import CLOSED_STDOUT

        raise InvalidArgument("standard output", CLOSED_STDOUT)
    if not _stdout_taken:
        _stdout_taken = True
        _note_stdout()
    return sys.stdout.buffer


def _note_stdout() -> None:
    """Where standard output's bytes begin, if they can be taken back (see :func:`begin_again`)."""
    global _stdout_restartable, _stdout_start
    try:
        sys.stdout.flush()  # what was printed before is not this stream's
        _stdout_restartable, _stdout_start = _restartable(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        _stdout_restartable = False


def _restartable(fd: int) -> tuple[bool, int | None]:
    """Whether bytes written to *fd* from now on can be taken back, and from where: ``/dev/null``
    (nothing to take back), or a regular file written at its end (``>``, ``>>``); not a file
    written at an offset inside it (``1<>``), whose bytes there the writing overwrites."""
    import fcntl
    import os
    import stat

    st = os.fstat(fd)
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == os.makedev(1, 3), None
    if stat.S_ISREG(st.st_mode):
        at = st.st_size if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else os.lseek(fd, 0, os.SEEK_CUR)
        return at == st.st_size, at
    return False, None


def output_restartable(path: str | None) -> bool:
    """Whether what a command will write to *path* (standard output for None or ``-``) could be
    taken back if it failed, known before it writes (see :func:`may_begin_again`).  Only what
    is written into in place cannot: a fifo, a socket, a device (``/dev/null`` aside), an open
    file's ``/proc/PID/fd/N`` (``/dev/stdout``); a FILE is staged, a folder written afresh, and
    a name that cannot be opened fails the command by itself."""
    import os
    import stat

    try:
        if path is None or path == "-":
            return sys.stdout is None or _restartable(sys.stdout.fileno())[0]
        from graphdriver.fs.outfile import fd_link, resolve

        real, _as_is = resolve(path)
        if fd_link(real):
            return False
        st = os.stat(real)
    except (OSError, ValueError, AttributeError):
        return path not in (None, "-")
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == os.makedev(1, 3)
    return not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISBLK(st.st_mode))


def may_begin_again() -> bool:
    """Whether a failed command may run again from the start: nothing it wrote stays where
    it went (standard output untouched, ``/dev/null``, or a regular file it appended to,
    which :func:`begin_again` cuts back; no output written into in place)."""
    outfile = sys.modules.get("graphdriver.fs.outfile")
    if outfile is not None and outfile.written_in_place:
        return False
    return not _stdout_taken or _stdout_restartable


def begin_again() -> None:
    """Cut standard output back to where this command began writing it (see
    :func:`may_begin_again`): what the failed run wrote there is dropped."""
    global _stdout_taken
    if not _stdout_taken or sys.stdout is None:
        return
    _stdout_taken = False
    if _stdout_start is None:
        return  # /dev/null
    import os

    out = sys.stdout.buffer
    out.flush()
    os.ftruncate(out.fileno(), _stdout_start)
    os.lseek(out.fileno(), _stdout_start, os.SEEK_SET)


def refuse_terminal(command: str, what: str) -> None:
    """Refuse to write *what* (``a tarball``, ``an archive``) to standard output when it is a
    terminal, as ``docker save`` and ``docker export`` refuse: binary bytes there help no one
    and can upset the terminal."""
    if sys.stdout is not None and sys.stdout.isatty():
        from graphdriver.cliargs import UsageError

        raise UsageError(f"{command} will not write {what} to a terminal: give -o FILE or redirect "
                         "standard output", command)


@contextlib.contextmanager
def output_stream(path: str | None, command: str, what: str) -> Iterator[BinaryIO]:
    """Standard output (never a terminal), or FILE (see :mod:`graphdriver.fs.outfile`), for
    *command* writing *what*."""
    if path is None or path == "-":
        refuse_terminal(command, what)
        yield stdout()
        sys.stdout.buffer.flush()
        return
    from graphdriver.fs.outfile import OutputFile

    with OutputFile(path) as f:
        yield f

"""A FILE a user named for output (``diff -o``, ``tarsplit -o``, ``image save -o``).

What the name points to decides how it is written, as GNU tools decide:

- a regular file, or a name not there yet: written whole or not at all, into a
  temporary file beside it that is renamed over it at the end, so a failed
  export never leaves a truncated file under the name a script expects;
- a symlink: followed to what it points to, which is then written as above
  (the regular file at the end of the chain is replaced, never the link);
- a device, a fifo, a socket, or one of this process's open files named as
  ``/dev/stdout``, ``/dev/fd/N`` or ``/proc/self/fd/N``: written into as it is,
  never replaced (an open file through a duplicate of its descriptor, so a
  redirection to a file, a pipe or a socket gets the bytes where it stands).

Errors name the path the user gave, never the temporary file.
"""

from __future__ import annotations

import os
import stat

from graphdriver.errors import GraphDriverError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

#: Symlinks followed before giving up (the kernel's limit).
_MAX_LINKS = 40


def _fd_dir(directory: str) -> bool:
    """Whether *directory* (a real path) is a process's ``/proc/PID/fd`` listing of open files."""
    parts = directory.split("/")
    return (len(parts) in (4, 6) and parts[1] == "proc" and parts[-1] == "fd"
            and (len(parts) == 4 or parts[3] == "task"))


def resolve(path: str) -> tuple[str, bool]:
    """The path *path* ends at once every symlink is followed, and whether it must be opened
    as it is: an open file's magic link (``/proc/PID/fd/N``), or a name of a directory."""
    current = os.path.join(os.getcwd(), path)
    for _ in range(_MAX_LINKS):
        head, name = os.path.split(current)
        head = os.path.realpath(head)
        current = os.path.join(head, name)
        if name in ("", ".", ".."):
            return current, True  # a directory: opening it says so
        if _fd_dir(head) and name.isdigit():
            return current, True
        try:
            target = os.readlink(current)
        except OSError:  # not a symlink, or not there: the end of the chain
            return current, False
        current = os.path.join(head, target)
    return current, False  # a loop: opening it says so


def _own_fd(real: str) -> int | None:
    """N when *real* is ``/proc/<this process>/fd/N`` (or a thread's view of it)."""
    parts = real.split("/")
    if len(parts) >= 5 and parts[2] == str(os.getpid()):
        return int(parts[-1])
    return None


class OutputFile:
    """FILE opened for output (see the module's docstring); ``with`` commits or aborts.

    ``file`` is where the bytes go; :meth:`commit` puts a staged file in place,
    :meth:`abort` drops it (the target keeps what it held).
    """

    def __init__(self, path: str, *, durable: bool = False) -> None:
        if not path:
            raise InvalidArgument("output file", "the name is empty")
        self.path = path
        self.durable = durable
        self.staging: str | None = None
        self.final = ""
        try:
            self.file = self._open()
        except OSError as e:
            raise InvalidArgument(f"cannot write {path}", e.strerror or str(e)) from e

    def _open(self) -> BinaryIO:
        real, as_is = resolve(self.path)
        if as_is:
            fd = _own_fd(real)
            return os.fdopen(os.dup(fd), "wb") if fd is not None else open(real, "wb")
        try:
            st: os.stat_result | None = os.stat(real)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            return open(real, "wb")  # a device, a fifo: written into
        directory, name = os.path.split(real)
        self.final = real
        self.staging = os.path.join(directory, f".tmp-{name}-{os.getpid()}")
        f = open(self.staging, "xb")
        if st is not None:  # the new file keeps the permissions of the one it replaces
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) & 0o777)
        return f

    def commit(self) -> None:
        """Flush, and rename a staged file over the target."""
        try:
            self.file.flush()
            if self.durable:
                try:
                    os.fsync(self.file.fileno())
                except OSError:
                    pass  # a pipe or a terminal cannot be synced
            self.file.close()
            if self.staging is not None:
                os.replace(self.staging, self.final)
        except OSError as e:
            self.abort()
            raise GraphDriverError(f"cannot write {self.path}", e.strerror or str(e)) from e

    def abort(self) -> None:
        """Close; drop the staged file."""
        try:
            self.file.close()
        except OSError:
            pass  # what it could not flush is dropped anyway
        if self.staging is not None:
            try:
                os.unlink(self.staging)
            except FileNotFoundError:
                pass

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

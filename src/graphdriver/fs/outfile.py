"""A FILE a user named for output (``diff -o``, ``tarsplit -o``, ``image save -o``).

What the name points to decides how it is written, as GNU tools decide:

- a regular file, or a name not there yet: written whole or not at all, into a
  temporary file beside it that is renamed over it at the end, so a failed
  export never leaves a truncated file under the name a script expects.  The
  temporary file has no name until the end where the filesystem allows it
  (``O_TMPFILE``; linked as ``.tmp-<name>-<pid>`` just before the rename), so
  a killed writer leaves nothing; elsewhere it is ``.tmp-<name>-<pid>`` from
  the start, locked by its writer, and the next writer of FILE removes those
  whose writer is dead (:func:`graphdriver.fs.locking.remove_abandoned`);
- a symlink: followed to what it points to, which is then written as above
  (the regular file at the end of the chain is replaced, never the link);
- a device, a fifo, a socket, or one of this process's open files named as
  ``/dev/stdout``, ``/dev/fd/N`` or ``/proc/self/fd/N``: written into as it is,
  never replaced (an open file through a duplicate of its descriptor, so a
  redirection to a file, a pipe or a socket gets the bytes where it stands).

With ``replace=True`` (a file of a folder a command writes, such as a blob of
an OCI layout) the name is always replaced as a regular file is, whatever
stands there: never followed, never written into.

Errors name the path the user gave, never the temporary file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from graphdriver.errors import GraphDriverError, InvalidArgument, os_error
from graphdriver.fs.atomic import temp_stem
from graphdriver.fs.locking import claim, remove_abandoned

#: Why a FILE cannot be opened that lie in its name (not in the filesystem's state).
_NAMED_WRONG = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

#: Symlinks followed before giving up (the kernel's limit).
_MAX_LINKS = 40
#: ``open(2)``'s flag for a file with no name yet (0 where Python or the system has none).
_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
#: Whether this process wrote into an output in place (a pipe, a device, an open file):
#: bytes that cannot be taken back (``/dev/null`` aside).
written_in_place = False


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
        if fd_link(current):
            return current, True
        try:
            target = os.readlink(current)
        except OSError:  # not a symlink, or not there: the end of the chain
            return current, False
        current = os.path.join(head, target)
    return current, False  # a loop: opening it says so


def fd_link(real: str) -> bool:
    """Whether *real* (as :func:`resolve` gives it) is an open file's ``/proc/PID/fd/N``."""
    head, name = os.path.split(real)
    return _fd_dir(head) and name.isdigit()


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

    def __init__(self, path: str, *, durable: bool = False,
                 unwritable: type[GraphDriverError] = InvalidArgument, replace: bool = False) -> None:
        """*unwritable*: what a FILE that cannot be opened for writing (a missing folder on its
        way, a folder) is, unless a privilege lacks (exit 7): the layer commands' usage error,
        or the image commands' failure of the environment (exit 1, as docker and skopeo).
        A filesystem that is full (or fails) is never the name's fault: exit 1 for all.
        *replace*: the name itself is replaced whatever it is (see the module's docstring)."""
        if not path:
            raise InvalidArgument("output file", "the name is empty")
        self.path = path
        self.durable = durable
        self.replace = replace
        self.staging: str | None = None
        #: The staged file has no name yet (O_TMPFILE): :meth:`commit` links it.
        self.unnamed = False
        self.final = ""
        try:
            self.file = self._open()
        except OSError as e:
            kind = unwritable if e.errno in _NAMED_WRONG else GraphDriverError
            raise _writing(os_error(f"cannot write {path}", e, kind)) from e

    def _open(self) -> BinaryIO:
        global written_in_place
        if self.replace:
            directory, name = os.path.split(os.path.abspath(self.path))
            return self._staged(directory, name, None)
        real, as_is = resolve(self.path)
        if as_is:
            written_in_place = True
            fd = _own_fd(real)
            return os.fdopen(os.dup(fd), "wb") if fd is not None else open(real, "wb")
        try:
            st: os.stat_result | None = os.stat(real)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_NULL):
                written_in_place = True
            return open(real, "wb")  # a device, a fifo: written into
        directory, name = os.path.split(real)
        return self._staged(directory, name, st)

    def _staged(self, directory: str, name: str, st: os.stat_result | None) -> BinaryIO:
        """A file that becomes *name* in *directory* on :meth:`commit`, with the permissions of
        *st*, the regular file it replaces (None: a new file's)."""
        self.final = os.path.join(directory, name)
        self.staging = os.path.join(directory, f"{temp_stem(name)}-{os.getpid()}")
        _remove_abandoned_siblings(directory, name)
        fd = self._unnamed(directory)
        if fd is None:
            fd = claim(self.staging, mode=0o666)  # the umask applies, as for open()
        f = os.fdopen(fd, "wb")
        if st is not None:  # the new file keeps the permissions of the one it replaces
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) & 0o777)
        return f

    def _unnamed(self, directory: str) -> int | None:
        """A locked file without a name in *directory*, or None where the filesystem cannot."""
        if not _TMPFILE or not os.path.isdir("/proc/self/fd"):
            return None
        try:
            fd = os.open(directory, _TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
        except OSError:
            return None  # EOPNOTSUPP, EISDIR (an old kernel), ...: a named file will do
        fcntl.flock(fd, fcntl.LOCK_EX)  # its name, once linked, is held from the start
        self.unnamed = True
        return fd

    def _link(self) -> None:
        """Give the unnamed file its temporary name (an abandoned one there is removed first)."""
        assert self.staging is not None
        try:
            _link_fd(self.file.fileno(), self.staging)
        except FileExistsError:
            remove_abandoned(self.staging, os.unlink)
            _link_fd(self.file.fileno(), self.staging)
        self.unnamed = False

    def commit(self) -> None:
        """Flush, and rename a staged file over the target."""
        try:
            self.file.flush()
            if self.durable:
                try:
                    os.fsync(self.file.fileno())
                except OSError:
                    pass  # a pipe or a terminal cannot be synced
            if self.staging is not None:
                if self.unnamed:
                    self._link()
                os.replace(self.staging, self.final)
            self.file.close()  # after the rename: until then the lock says its writer lives
        except OSError as e:
            self.abort()
            raise _writing(os_error(f"cannot write {self.path}", e)) from e

    def abort(self) -> None:
        """Drop the staged file (while its lock is held); close."""
        if self.staging is not None and not self.unnamed:
            try:
                os.unlink(self.staging)
            except FileNotFoundError:
                pass
        try:
            self.file.close()
        except OSError:
            pass  # what it could not flush is dropped anyway

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


#: ``/dev/null``'s device number (1, 3 on Linux).
_DEV_NULL = os.makedev(1, 3)


def _writing(err: GraphDriverError) -> GraphDriverError:
    err.writing_output = True
    return err


def _link_fd(fd: int, path: str) -> None:
    """Name the open file *fd* *path*: ``linkat`` of its ``/proc/self/fd`` link, followed.

    (A directory fd is passed only to make Python call ``linkat`` with
    ``AT_SYMLINK_FOLLOW`` rather than ``link``, which would link the magic link itself.)
    """
    anchor = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=anchor, follow_symlinks=True)
    finally:
        os.close(anchor)


def _remove_abandoned_siblings(directory: str, name: str) -> None:
    """Remove ``.tmp-<name>-<pid>`` files beside *name* whose writer is dead (a killed export)."""
    prefix = f"{temp_stem(name)}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for other in names:
        if other.startswith(prefix) and other[len(prefix):].split("-")[0].isdigit():
            try:
                remove_abandoned(os.path.join(directory, other), os.unlink)
            except OSError:
                pass  # not ours to remove (another user's, a folder): left alone

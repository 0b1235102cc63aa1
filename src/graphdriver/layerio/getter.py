"""Files of a layer by the names its tarball gave them: what tar-split reassembly reads.

A :class:`FileGetter` opens the file an archive entry named; :class:`DirFileGetter`
serves them from the directory a driver applied the tarball to.
"""

from __future__ import annotations

import abc
import os

from graphdriver.errors import NotFound
from graphdriver.fs.ownfiles import open_readable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

_NOT_PLAIN = frozenset({"", ".", ".."})  # last components that are no file name
# Directories a getter keeps open at most (files come grouped by directory);
# fewer under a low open-file limit (see graphdriver.fs.fdlimit).
_GETTER_DIRS = 64


class FileGetter(abc.ABC):
    """A source of a layer's file contents by archive path (tar-split reassembly)."""

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """Open the file that was archived as *name* (raises NotFound)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release whatever ``open`` needed (a mount, say)."""


class _FdFile:
    """A file open for reading by descriptor: what reassembly needs, at one syscall a read.

    (A Python file object would cost an ``fstat`` per file on top, and reads
    through a buffer that reassembly does not need.)
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readinto(self, buf: bytearray | memoryview) -> int:
        return os.readv(self._fd, [buf])

    def read(self, n: int = -1) -> bytes:
        if n >= 0:
            return os.read(self._fd, n)
        return b"".join(iter(lambda: os.read(self._fd, 1 << 20), b""))

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _FdFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class DirFileGetter(FileGetter):
    """Files served from one directory tree.

    Directories are resolved confined to the tree (``openat2`` with
    ``RESOLVE_IN_ROOT``: a symlink in the layer cannot lead out of it) and
    kept open, since files come grouped by directory; the file itself is
    opened without following a symlink, relative to its directory.  So a file
    costs one ``open`` until :meth:`close`.
    """

    def __init__(self, root: str) -> None:
        from graphdriver.fs import confine  # not at module level: most commands need none of it

        self.root = root
        self._confine = confine
        self._root_fd: int | None = None
        self._dirs: dict[str, int] = {}
        self._keep: int | None = None  # sized on first use (fdlimit is no start-up import)

    def open(self, name: str) -> BinaryIO:
        try:
            return self._open(name)
        except OSError as e:
            from graphdriver.fs import fdlimit

            if not fdlimit.exhausted(e) or not self._dirs:
                raise
            # No descriptor left: keep fewer folders from now on, and try again.
            self._keep = max(1, len(self._dirs) // 2)
            self._close_dirs()
            return self._open(name)

    def _open(self, name: str) -> BinaryIO:
        clean = name.lstrip("/")
        if "//" in clean or "/." in clean or clean[:1] == "." or clean[-1:] == "/":
            # Found where extraction put it: "a/../x", "./q/./z", "r/.", "f/" name
            # x, q/z, r and f (the usual name needs no normpath: this runs per file).
            import posixpath

            clean = posixpath.normpath("/" + clean).lstrip("/")
        root_fd = self._root_fd
        if root_fd is None:
            root_fd = self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        parent, _, base = clean.rpartition("/")
        try:
            if base in _NOT_PLAIN:  # the whole path, confined
                fd = self._confine.open_at_root(root_fd, clean, os.O_RDONLY)
            else:
                pfd = self._dirs.get(parent) if parent else root_fd
                if pfd is None:
                    pfd = self._dir_fd(root_fd, parent)
                fd = open_readable(base, pfd)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise NotFound(f"file {name!r}", "not in the layer") from e
        return _FdFile(fd)  # type: ignore[return-value]

    def _dir_fd(self, root_fd: int, rel: str) -> int:
        if self._keep is None:
            from graphdriver.fs import fdlimit

            self._keep = fdlimit.keepable(_GETTER_DIRS)
        if len(self._dirs) >= self._keep:
            self._close_dirs()
        fd = self._dirs[rel] = self._confine.resolve_dir(root_fd, rel)
        return fd

    def _close_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def close(self) -> None:
        self._close_dirs()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

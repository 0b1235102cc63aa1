"""Names within the kernel's limit for paths of any length.

A layer may hold paths of any length: a tarball's PAX ``path`` has no limit,
and extraction and copies work a directory at a time.  A system call takes a
path of at most ``PATH_MAX`` bytes, and some take less (an ``fsconfig``
value: 256).  Code that names files by their whole path asks a
:class:`ShortPaths` for the name to use: the path itself when it is short
enough, else ``/proc/self/fd/N/name``, N being the path's directory opened
``O_PATH``, a part of at most the limit at a time from the nearest ancestor
already open or short enough.  Symlinks on the way are followed as the kernel
follows them in a whole path.

A failure to reach or list a long path names the path itself, as the call would.
A name given stays valid while its directory stays open: the last *keep*
directories asked for (all of them with ``keep=None``) until :meth:`close`.
One instance serves one operation: a directory removed and made again since
would still be the old one.  Without ``/proc`` a long path is given back as
it is (and the call fails as it did).
"""

from __future__ import annotations

import errno
import os

#: ``PATH_MAX``: a path a system call takes is shorter than this many bytes.
PATH_MAX = 4096

#: A path of fewer characters than this is shorter than ``PATH_MAX`` bytes whatever it holds
#: (4 bytes a character at most): a test of its length spares encoding nearly every path.
QUICK_PATH = PATH_MAX // 4

#: The longest name of one directory entry.
NAME_MAX = 255

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def fits(path: str, limit: int = PATH_MAX, more: int = 0) -> bool:
    """Whether *path*, and *more* bytes after it, are shorter than *limit* bytes."""
    return len(path) + more < limit // 4 or len(os.fsencode(path)) + more < limit


def named(error: OSError, path: str) -> OSError:
    """*error* named by *path*, as a call given the whole path names what it refuses (never by
    a name a :class:`ShortPaths` made up, which means nothing once its directory is closed)."""
    if error.filename == path:
        return error
    return OSError(error.errno, error.strerror, path)  # of error's class: PermissionError, ...


class ShortPaths:
    """Callable: ``short(path)`` is *path*, or a name of it shorter than *limit* bytes."""

    def __init__(self, limit: int = PATH_MAX, keep: int | None = 16) -> None:
        self.limit = limit
        #: Below this many characters a path is short whatever it holds (4 bytes a character):
        #: a caller may test that first and use the path as it is.
        self.quick = limit // 4
        self.keep = keep
        self._fds: dict[bytes, int] = {}  # in order of use, the last used last
        self._proc: bool | None = None

    def __call__(self, path: str) -> str:
        if len(path) < self.quick:  # nearly every path: no more than this test
            return path
        if fits(path, self.limit) or not self._has_proc():
            return path
        parent, _, name = os.fsencode(path).rpartition(b"/")
        try:
            short = b"/proc/self/fd/%d/%s" % (self.directory(parent), name)
        except OSError as e:
            raise named(e, path) from e
        if len(short) >= self.limit:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        return os.fsdecode(short)

    def entries(self, path: str) -> dict[str, os.DirEntry[str]]:
        """The entries of directory *path* by name.

        Those of a long path are listed through a descriptor closed before this returns, so
        each comes with its lstat at hand (``DirEntry.stat(follow_symlinks=False)`` needs no
        call); one gone meanwhile is left out.
        """
        if fits(path, self.limit, NAME_MAX + 1):  # every entry's path is short too
            with os.scandir(path) as it:
                return {e.name: e for e in it}
        try:
            fd = os.open(self(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise named(err, path) from err
        try:
            found: dict[str, os.DirEntry[str]] = {}
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    found[e.name] = e
            return found
        finally:
            os.close(fd)

    def directory(self, raw: bytes) -> int:
        """The open ``O_PATH`` descriptor of directory *raw* (kept; see the module docstring)."""
        fds = self._fds
        fd = fds.pop(raw, None)
        if fd is None:
            fd = self._open(raw)
        fds[raw] = fd  # last: the most recently used
        if self.keep is not None and len(fds) > self.keep:
            oldest = next(iter(fds))
            os.close(fds.pop(oldest))
        return fd

    def _open(self, raw: bytes) -> int:
        # Up to the nearest ancestor already open, or short enough to open by its name.
        cut = len(raw)
        while cut >= self.limit and raw[:cut] not in self._fds:
            cut = raw.rfind(b"/", 0, cut)
            if cut <= 0:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(raw))
        start = self._fds.get(raw[:cut])
        fd = os.open(raw[:cut] or b"/", _DIR_FLAGS) if start is None else start
        try:
            # Then down, in parts shorter than the limit (a name is at most 255 bytes).
            while cut < len(raw):
                end = raw.rfind(b"/", cut + 1, cut + self.limit)
                if end < 0 or len(raw) - cut < self.limit:
                    end = len(raw)
                part = raw[cut + 1 : end]
                cut = end
                if not part:
                    continue
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != start:
                    os.close(fd)
                fd = child
        except BaseException:
            if fd != start:
                os.close(fd)
            raise
        return fd

    def _has_proc(self) -> bool:
        if self._proc is None:
            self._proc = os.path.isdir("/proc/self/fd")
        return self._proc

    def close(self) -> None:
        """Close every directory kept open (the names given stop being valid)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> ShortPaths:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A depth-first walk down a directory tree that holds a bounded number of descriptors.

A walk that keeps one open directory per level (to work with ``*at`` calls
and never resolve a long path again) runs out of descriptors on a deep tree
under a low open-file limit.  :class:`LevelWalk` keeps the root and the
deepest levels open, as many as :func:`graphdriver.fs.fdlimit.keepable`
grants, releases the ones between and reopens each through ``..`` (checked to
be the same directory) when the walk comes back up to it.  The caller decides
what to do in each directory and which subdirectories to enter.
"""

from __future__ import annotations

import errno
import os

from graphdriver.fs import fdlimit

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Level:
    """A directory of a :class:`LevelWalk`: its descriptor (-1 while released), its
    ``(st_dev, st_ino)`` and the names still to do."""

    __slots__ = ("fd", "ident", "names")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.names = os.listdir(fd)


class LevelWalk:
    """A depth-first walk's open directories, *root_fd* (taken over) and those below it.

    Past ``fdlimit.keepable(most)`` levels the shallowest below the root is
    released; it is reopened through ``..`` when its child is done, and must be
    the same directory.  With no descriptor left on the way down, one more is
    released and fewer are kept from then on.
    """

    def __init__(self, root_fd: int, most: int) -> None:
        #: The levels from the root down to the current one.
        self.stack: list[Level] = []
        self.released = 0  # the run of levels just above the root whose fds are closed
        self.keep = fdlimit.keepable(most, least=2)
        try:
            self.stack.append(Level(root_fd))
        except BaseException:
            os.close(root_fd)
            raise

    def enter(self, name: str) -> None:
        """Descend into subdirectory *name* of the current level."""
        while True:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.stack[-1].fd)
                break
            except OSError as e:
                # No descriptor left: keep fewer levels, if any is left to release.
                if not fdlimit.exhausted(e) or not self._release():
                    raise
                self.keep = max(2, self.keep - 1)
        try:
            self.stack.append(Level(fd))
        except BaseException:
            os.close(fd)
            raise
        if len(self.stack) - self.released > self.keep:
            self._release()

    def leave(self) -> None:
        """The current level is done: back to its parent, reopened if it was released."""
        level = self.stack.pop()
        try:
            if self.stack and self.stack[-1].fd < 0:
                parent = self.stack[-1]
                parent.fd = os.open("..", _DIR_FLAGS, dir_fd=level.fd)
                self.released -= 1
                st = os.fstat(parent.fd)
                if (st.st_dev, st.st_ino) != parent.ident:
                    raise OSError(errno.ESTALE, "directory moved during the walk")
        finally:
            os.close(level.fd)

    def _release(self) -> bool:
        """Close the shallowest open level but the root and the current one; False if none."""
        index = self.released + 1
        if index >= len(self.stack) - 1:
            return False
        os.close(self.stack[index].fd)
        self.stack[index].fd = -1
        self.released += 1
        return True

    def close(self) -> None:
        """Close every level still open."""
        for level in self.stack:
            if level.fd >= 0:
                os.close(level.fd)
        self.stack.clear()

"""The one locking module.

Locks are ``flock`` locks on lock files: shared for readers, exclusive for
writers.  They belong to the open file description, so they work between
processes and between threads of one process alike, and they vanish with the
process that held them (a crash never leaves a store locked).  Use the context
manager: a lock cannot be forgotten.

The same locks tell whether the writer of a leftover is alive: whatever a
process makes under a temporary name (a half-written file, a staging or
probe folder) it makes with :func:`claim`, which holds a lock on it, and
``cleanup`` removes only what :func:`remove_abandoned` finds unlocked.

An ``flock`` lives on in every child that inherited its descriptor, so it
says whether some process of the work is alive.  Which of them: the one that
began it, or only the helpers it forked (which die with it, a moment later)?
That is told by a second lock of one process alone,
:func:`hold_for_this_process`.
"""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class locked:  # lower case: used like a function, `with locked(path) as fd:`
    """Hold a lock on *path* for the duration of the block; yields the lock fd.

    The lock file is created when missing.  A shared lock on a file that cannot
    be created (a read-only additional store) is taken on the file if it exists
    and skipped otherwise (the block gets -1): nobody can be writing there
    through us.  A class rather than a generator: every command takes a lock,
    and :mod:`contextlib` costs more to import than the lock does.
    """

    def __init__(self, path: str, *, exclusive: bool = True) -> None:
        self.path = path
        self.exclusive = exclusive
        self.fd = -1

    def __enter__(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                if self.exclusive:
                    raise
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return -1
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
                # A lock file its last holder removed (a download's) locks nothing any
                # more: whoever waited on it takes the one now at the path instead.
                if _still_named(fd, self.path, follow=True):  # (opened through a symlink, if one)
                    self.fd = fd
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last fd of the description releases the lock
            self.fd = -1


def is_held(path: str) -> bool:
    """Whether some live process holds a lock on *path* (a lock file, or a file or folder
    made with :func:`claim`); False when there is nothing there.

    This is the one way to ask whether the writer of something is alive: a
    lock is released by the kernel when its process dies (killed and not yet
    reaped included), and a new process that happens to get a dead one's pid
    does not get its locks, so neither a zombie nor a reused pid looks alive.
    """
    fd = _try_lock(path)
    if fd is None:
        return os.path.lexists(path)
    os.close(fd)
    return False


def hold_for_this_process(fd: int) -> bool:
    """Lock the file open for writing at *fd* with a lock of this process alone; whether it could.

    A POSIX record lock belongs to the process, not to the open file description as an
    ``flock`` does: a forked child does not inherit it, and the kernel drops it when this
    process dies, before it is reaped, whatever its children still hold.  It is also dropped
    when this process closes *any* descriptor of the file, so nothing else of this process
    may open it.  Where the two kinds of locks are one (an ``flock`` on NFS is such a
    lock) it is refused: False.
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def held_by_its_process(path: str) -> bool:
    """Whether the process that took :func:`hold_for_this_process` on *path* is alive (False
    when nobody holds it or there is no such file; True when that cannot be told).  Never
    ask it of a file this process holds so: closing the probe would drop the lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (and with it the probe's own lock)
    return False


def lock_if_free(path: str) -> int | None:
    """An fd holding the lock of *path*, taken without waiting and without making the file;
    None when there is no such file.  Raises BlockingIOError while a live process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock(path: str) -> int | None:
    """An fd holding the lock of *path*, or None when a live process holds it or it is gone."""
    try:
        return lock_if_free(path)
    except OSError:
        return None


def remove_abandoned(path: str, remove: Callable[[str], object] | None = None) -> bool:
    """Remove *path*, a leftover of some writer, if no live process holds it; True if removed.

    A writer holds what it makes through :func:`claim` for as long as it
    works on it; this takes the lock itself while *remove* (default: unlink a
    file, remove a folder's tree) runs, so a writer cannot take it up meanwhile.
    """
    fd = _try_lock(path)
    if fd is None:
        return False
    try:
        (remove or _remove)(path)
    except FileNotFoundError:
        return False  # another sweeper was first
    finally:
        os.close(fd)
    return True


def remove_abandoned_in(folder: str, wanted: Callable[[str], bool]) -> list[str]:
    """The names in *folder* that *wanted* takes and that :func:`remove_abandoned` removed,
    sorted (none when *folder* is missing)."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    return [name for name in names if wanted(name) and remove_abandoned(os.path.join(folder, name))]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        from graphdriver.fs.tree import remove_tree

        remove_tree(path)
    else:
        os.unlink(path)


def claim(path: str, *, folder: bool = False, mode: int = 0o600,
          remove: Callable[[str], object] | None = None) -> int:
    """Make *path* (a new file, or with *folder* a new folder) locked by this process; its fd.

    Until the fd is closed, :func:`is_held` says True and :func:`remove_abandoned`
    leaves *path* alone; after this process dies, they say it is abandoned.
    *path* is locked before this returns: one swept away between its making
    and its locking is made again.  An abandoned leftover already at *path*
    (of an earlier process that had this pid) is removed first with *remove*;
    a live one is :class:`FileExistsError`.
    """
    while True:
        try:
            fd = _make(path, folder, mode)
        except FileExistsError:
            if not remove_abandoned(path, remove) and os.path.lexists(path):
                raise
            continue
        except FileNotFoundError:
            if folder and os.path.isdir(os.path.dirname(path) or "."):
                continue  # the new folder was swept before it was opened
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _make(path: str, folder: bool, mode: int) -> int:
    if not folder:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(path, flags, mode)
    os.mkdir(path, mode)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _still_named(fd: int, path: str, *, follow: bool = False) -> bool:
    """Whether the file open at *fd* is still the one named *path* (with *follow*, the one
    a symlink there names)."""
    st = os.fstat(fd)
    try:
        named = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_nlink > 0 and (st.st_dev, st.st_ino) == (named.st_dev, named.st_ino)

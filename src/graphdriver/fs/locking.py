"""The one locking module.

Locks are ``flock`` locks on lock files: shared for readers, exclusive for
writers.  They belong to the open file description, so they work between
processes and between threads of one process alike, and they vanish with the
process that held them (a crash never leaves a store locked).  Use the context
manager: a lock cannot be forgotten.
"""

from __future__ import annotations

import fcntl
import os


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
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last fd of the description releases the lock
            self.fd = -1


def is_held(path: str) -> bool:
    """Whether some process holds a lock on the lock file *path* (False if there is none)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def pid_alive(pid: int) -> bool:
    """Whether process *pid* exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

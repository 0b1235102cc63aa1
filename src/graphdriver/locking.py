"""The one locking module.

Locks are ``flock`` locks on lock files: shared for readers, exclusive for
writers.  They belong to the open file description, so they work between
processes and between threads of one process alike, and they vanish with the
process that held them (a crash never leaves a store locked).  Use the context
manager: a lock cannot be forgotten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool = True) -> Iterator[int]:
    """Hold a lock on *path* for the duration of the block; yields the lock fd.

    The lock file is created when missing.  A shared lock on a file that cannot
    be created (a read-only additional store) is taken on the file if it exists
    and skipped otherwise: nobody can be writing there through us.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        if exclusive:
            raise
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield -1
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # closing the last fd of the description releases the lock

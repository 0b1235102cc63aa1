"""How many file descriptors the walks and caches of this package may keep open.

The open-file limit (``RLIMIT_NOFILE``) is per process, and some places set
it low: a service unit, a CI runner, a container started with
``--ulimit nofile=64``.  Several parts of the package keep descriptors of
directories open to avoid resolving long paths again: the extractor and the
tar-split file getter cache the folders entries come from, and the tree
walks that copy, remove or re-own a layer hold one folder per level.  With a
fixed count (128 was the old figure) a deep tree fails with ``EMFILE`` ("Too
many open files") under a low limit, although it could be done with fewer.
So each of them asks :func:`keepable` how many to keep, a share of the soft
limit, and gives some back and tries again when ``EMFILE`` still comes
(:func:`exhausted`): other descriptors were open meanwhile.

:func:`raise_soft_limit` lifts the soft limit towards the hard one before long
work, as Go programs do at start; it stops at :data:`ENOUGH`, so the programs
this one runs inherit no limit above what ``select(2)`` copes with.  Where
even the hard limit leaves too few to work with, :func:`require_free` refuses
a command that changes layers before it starts, with one line, rather than
fail half way where the undoing would lack descriptors too.  The
module is imported where a walk needs it, never on the read-only commands'
start-up path (``resource`` is a shared library to load).

The imports happen at module level on purpose: the extractor runs in a child
chrooted into the layer, which can import nothing more.
"""

from __future__ import annotations

import errno
import os
import resource

from graphdriver.errors import Unsupported

#: Descriptors left to everything but a walk's kept folders: the standard
#: streams, the store's locks, the tarball and its decompressor, lower layers'
#: folders, the file being written or copied.
RESERVED = 24
#: The soft limit :func:`raise_soft_limit` aims for (the usual default).
ENOUGH = 1024
#: Free descriptors a command that changes layers needs to finish, or else to undo what
#: it did: a folder being walked, a file being written, its locks and records.
LEAST_FREE = 12
#: errnos that say the process (or the system) has no descriptor to give.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def soft_limit() -> int | None:
    """The soft open-file limit, None if there is none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def keepable(wanted: int, *, per_item: int = 1, least: int = 1) -> int:
    """How many of *wanted* folders (each costing *per_item* descriptors) to keep open.

    At most half the soft limit, less :data:`RESERVED`, goes to kept folders;
    never fewer than *least* (what the caller cannot work without: a walk
    needs its root and the folder it is in).
    """
    soft = soft_limit()
    if soft is None:
        return wanted
    share = min(soft - RESERVED, soft // 2) // per_item
    return max(least, min(wanted, share))


def exhausted(e: OSError) -> bool:
    """Whether *e* says no descriptor was left (``EMFILE``, ``ENFILE``)."""
    return e.errno in _EXHAUSTED


def raise_soft_limit() -> None:
    """Lift the soft open-file limit to the hard one, up to :data:`ENOUGH`; never lowers
    it, and a refusal (a sandbox, say) leaves it as it was."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = ENOUGH if hard == resource.RLIM_INFINITY else min(hard, ENOUGH)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        pass


def free_descriptors() -> int | None:
    """How many more descriptors this process may open now (None: unlimited or unknown)."""
    soft = soft_limit()
    if soft is None:
        return None
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    # The listing's own descriptor is in it, closed since.
    return soft - sum(1 for name in names if int(name) < soft) + 1


def require_free(what: str, least: int = LEAST_FREE) -> None:
    """Raise :class:`Unsupported` (exit 7) for *what* if fewer than *least* descriptors are free."""
    free = free_descriptors()
    if free is not None and free < least:
        soft = soft_limit()
        raise Unsupported(what, f"the open-file limit ({soft}, ulimit -n) leaves {max(free, 0)} "
                                f"descriptors free, and changing layers needs {least}")

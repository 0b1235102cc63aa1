"""The error tree, and warnings.

Every failure the store reports is one of these classes.  Each carries the
command-line exit code of ``shared/spec/cli.md`` and renders as one line,
``<what failed>: <why>``; the CLI prefixes ``graphdriver: ``.  Causes are
chained with ``raise ... from`` so ``-v`` can show them.

A warning (:func:`warn`) says that something was left out or could not be
done and the work went on.  The library hands warnings to :mod:`logging`
(logger ``graphdriver``); the command line sets :func:`set_warning_handler`
so that they read as its other lines on stderr (``graphdriver: ...``) and
``-q`` silences them.  :mod:`logging` is loaded only when a warning goes
there.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NoReturn

#: The most characters of a name (an archive entry, an id) an error message quotes.
NAME_LIMIT = 200


def shorten(name: str, limit: int = NAME_LIMIT) -> str:
    """*name* cut to *limit* characters (with "..." and the full length) for a message."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


class GraphDriverError(Exception):
    """Base class: any failure (exit code 1)."""

    exit_code = 1
    #: Set by extraction that failed before it touched the layer (a stream that is
    #: no tarball at all, say): the layer is as it was, not half applied.
    wrote_nothing = False
    #: Set on a failure to write the output a user named (``-o FILE``): a refusal there
    #: is the user's own, never a folder of a layer to read as its owner.
    writing_output = False

    def __init__(self, what: str, why: str = "") -> None:
        self.what = what
        self.why = why
        super().__init__(f"{what}: {why}" if why else what)


class InvalidArgument(GraphDriverError):
    """Bad arguments: an invalid id, option, size, ... (usage error, exit 2)."""

    exit_code = 2


class NotFound(GraphDriverError):
    """A layer, parent or image that does not exist (exit 3)."""

    exit_code = 3


class AlreadyExists(GraphDriverError):
    """A layer with that id is already there (exit 4)."""

    exit_code = 4


class Precondition(GraphDriverError):
    """The operation is not allowed now: in use, has children, too deep, wrong driver (exit 5)."""

    exit_code = 5


class IntegrityError(GraphDriverError):
    """Digest or checksum mismatch, corrupt metadata (exit 6)."""

    exit_code = 6


class Unsupported(GraphDriverError):
    """Missing kernel feature, filesystem ability or privilege (exit 7)."""

    exit_code = 7


#: The errnos of a missing privilege: EPERM, EACCES, EROFS (errno is not imported for three constants).
REFUSED = (1, 13, 30)


class ReadRefused(Unsupported):
    """A file or folder of a layer this user may not read (exit 7), named by the layer and its
    *path* in it (``layer b: etc/ssl/private: Permission denied``), never by where the store
    keeps it; raised from the refusal itself, whose file name a run as the owner goes by."""

    def __init__(self, layer_id: str, path: str, strerror: str) -> None:
        self.layer_id = layer_id
        self.path = path
        self.strerror = strerror
        super().__init__(f"layer {layer_id}", f"{path}: {strerror}")


def read_refused(error: OSError, trees: Iterable[tuple[str | None, str | None]], *,
                 here: str | None = None) -> ReadRefused | None:
    """*error* as a :class:`ReadRefused` when it is a read this user may not make of a file or
    folder in one of *trees*, (folder, the layer whose files it holds) pairs, named by its full
    path: that layer, and the path in it; named by a relative path, a path in layer *here*
    (where the reader names them so).  None for any other error."""
    import os

    name = os.fsdecode(error.filename) if error.filename else ""
    if error.errno not in REFUSED or not name:
        return None
    strerror = error.strerror or str(error)
    if here is not None and not name.startswith("/"):
        return ReadRefused(here, name, strerror)
    for folder, layer_id in trees:
        top = (folder or "").rstrip("/")
        if top and layer_id is not None and (name == top or name.startswith(top + "/")):
            return ReadRefused(layer_id, name[len(top) + 1:] or "/", strerror)
    return None


def raise_refused(error: OSError, trees: Iterable[tuple[str | None, str | None]], *,
                  here: str | None = None) -> NoReturn:
    """Raise *error*: as :func:`read_refused` names it when it is such a read (from *error*, so a
    run as the owner still sees what was refused), any other error as it is."""
    refused = read_refused(error, trees, here=here)
    if refused is None:
        raise error
    raise refused from error


def os_error(what: str, e: OSError, otherwise: type[GraphDriverError] = GraphDriverError) -> GraphDriverError:
    """*e* as one of these: a permission refused or a read-only file system is a missing
    privilege (exit 7), the rest *otherwise*."""
    return (Unsupported if e.errno in REFUSED else otherwise)(what, e.strerror or str(e))


class ArchiveError(GraphDriverError):
    """A layer tarball that is refused (exit 1): well formed, but an entry the layer cannot
    take (one reaching outside it, a hardlink to nothing, a type it cannot hold...).

    ``entry`` names the archive entry at fault (empty when the archive is
    unreadable before any entry).
    """

    def __init__(self, entry: str, why: str) -> None:
        self.entry = entry
        what = f"entry {shorten(entry)!r}" if entry else "archive"
        super().__init__(what, why)


class EntryDenied(ArchiveError):
    """An entry refused for a permission this user lacks (EACCES, EPERM: a folder of a
    lower layer its owner may not write, say): a missing privilege (exit 7), not an
    entry the layer cannot take."""

    exit_code = 7


class CorruptArchive(ArchiveError):
    """A tarball that is not well formed: truncated, a header whose checksum does not
    match, malformed header fields or PAX records, corrupt compressed data (exit 6, an
    integrity failure, as for any other checksum mismatch)."""

    exit_code = 6


class BreakoutError(ArchiveError):
    """An archive entry that would reach outside the directory it is applied to."""


def cause_of(err: BaseException) -> BaseException | None:
    """What *err* was raised from, or during (unless ``raise ... from None`` hid that)."""
    return err.__cause__ or (None if err.__suppress_context__ else err.__context__)


_warning_handler: Callable[[str], None] | None = None


def set_warning_handler(handler: Callable[[str], None] | None) -> None:
    """Where warnings go from now on (None: to :mod:`logging`); forked children inherit it."""
    global _warning_handler
    _warning_handler = handler


def ready_to_warn() -> None:
    """Import what :func:`warn` needs, for a process about to lose its imports (a child that
    chroots into a layer may still have to warn): :mod:`logging`, unless a handler is set."""
    if _warning_handler is None:
        import logging  # noqa: F401


def warn(message: str) -> None:
    """Say *message* (one line) where warnings go."""
    if _warning_handler is not None:
        _warning_handler(message)
        return
    import logging

    logging.getLogger("graphdriver").warning("%s", message)

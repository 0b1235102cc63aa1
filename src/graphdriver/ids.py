"""Layer id validation: ids name directories, so nothing else is trusted."""

from __future__ import annotations

from graphdriver.errors import InvalidArgument, shorten

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_REST = _ALNUM | frozenset("_.-")
#: The longest id: an id names a directory, and other tools' ids fit (Docker's are 64 hex digits).
MAX_ID = 128


def is_valid_id(layer_id: str) -> bool:
    """True for 1 to 128 characters of ``[A-Za-z0-9][A-Za-z0-9_.-]*``."""
    # Checked by sets rather than a regex: the command line checks ids before
    # anything else and must not pay for importing ``re``.
    return (
        0 < len(layer_id) <= MAX_ID
        and layer_id[0] in _ALNUM
        and all(c in _REST for c in layer_id)
    )


def check_id(layer_id: str, what: str = "layer id") -> str:
    """Return *layer_id* unchanged, or raise :class:`InvalidArgument`."""
    if not is_valid_id(layer_id):
        raise InvalidArgument(
            f"invalid {what} {shorten(layer_id)!r}",
            "must be 1 to 128 characters of [A-Za-z0-9][A-Za-z0-9_.-]*",
        )
    return layer_id

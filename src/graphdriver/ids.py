"""Layer id validation: ids name directories, so nothing else is trusted."""

from __future__ import annotations

from graphdriver.errors import InvalidArgument, shorten

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_REST = _ALNUM | frozenset("_.-")
#: The longest id: an id names a directory, and other tools' ids fit (Docker's are 64 hex digits).
MAX_ID = 128


def is_valid_id(layer_id: str, most: int = MAX_ID) -> bool:
    """True for 1 to 128 (*most*) characters of ``[A-Za-z0-9][A-Za-z0-9_.-]*``."""
    # Checked by sets rather than a regex: the command line checks ids before
    # anything else and must not pay for importing ``re``.
    return (
        0 < len(layer_id) <= most
        and layer_id[0] in _ALNUM
        and all(c in _REST for c in layer_id)
    )


def check_id(layer_id: str, what: str = "layer id", most: int = MAX_ID) -> str:
    """Return *layer_id* unchanged, or raise :class:`InvalidArgument` (an id of at most *most*
    characters: fewer than a layer id's where a longer id is made of it, as a container's)."""
    if not is_valid_id(layer_id, most):
        raise InvalidArgument(
            f"invalid {what} {shorten(layer_id)!r}",
            f"must be 1 to {most} characters of [A-Za-z0-9][A-Za-z0-9_.-]*",
        )
    return layer_id

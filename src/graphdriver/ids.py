"""Layer id validation: ids name directories, so nothing else is trusted."""

from __future__ import annotations

import re

from graphdriver.errors import InvalidArgument

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_valid_id(layer_id: str) -> bool:
    """True for 1 to 128 characters of ``[A-Za-z0-9][A-Za-z0-9_.-]*``."""
    return _ID_RE.fullmatch(layer_id) is not None


def check_id(layer_id: str, what: str = "layer id") -> str:
    """Return *layer_id* unchanged, or raise :class:`InvalidArgument`."""
    if not is_valid_id(layer_id):
        raise InvalidArgument(
            f"invalid {what} {layer_id!r}",
            "must be 1 to 128 characters of [A-Za-z0-9][A-Za-z0-9_.-]*",
        )
    return layer_id

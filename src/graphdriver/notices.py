"""Warnings: something was left out or could not be done, and the work went on.

The library hands them to :mod:`logging` (logger ``graphdriver``); the command
line sets :func:`set_handler` so that they read as its other lines on stderr
(``graphdriver: ...``) and ``-q`` silences them.  :mod:`logging` is loaded only
when a warning goes there.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_handler: Callable[[str], None] | None = None


def set_handler(handler: Callable[[str], None] | None) -> None:
    """Where warnings go from now on (None: to :mod:`logging`); forked children inherit it."""
    global _handler
    _handler = handler


def warn(message: str) -> None:
    """Say *message* (one line) where warnings go."""
    if _handler is not None:
        _handler(message)
        return
    import logging

    logging.getLogger("graphdriver").warning("%s", message)

"""``typing.cast`` for modules on a command's import path, without :mod:`typing`.

Importing :mod:`typing` loads ``re`` and builds its classes: about a tenth of
what a small ``import`` costs from start to end.  Those modules import their
typing names under ``if TYPE_CHECKING:`` (``TYPE_CHECKING = False`` at run
time, true for the type checker) and take ``cast`` from here: the checker sees
``typing.cast``, the interpreter a function that returns its value.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import cast as cast
else:

    def cast(_kind: object, value: object) -> object:
        """*value*, unchanged (the type is the checker's business)."""
        return value

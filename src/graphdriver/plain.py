"""Plain value classes: equality and ``repr`` from ``__slots__``.

What the standard library's dataclasses give, for the classes on paths where
loading :mod:`dataclasses` (and :mod:`inspect` with it) costs a command more
than its own work: every import, apply, diff and mount.  A subclass lists its
fields in ``__slots__`` and sets them in its own ``__init__``.
"""

from __future__ import annotations


class Plain:
    """Equal to another of the same class with the same field values; shown with its fields."""

    __slots__ = ()

    def _values(self) -> tuple[object, ...]:
        names: tuple[str, ...] = self.__slots__  # type: ignore[assignment]
        return tuple(getattr(self, n) for n in names)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable values

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__  # type: ignore[assignment]
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__name__}({fields})"

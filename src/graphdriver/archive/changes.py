"""What a layer changed: the ``docker diff`` vocabulary."""

from __future__ import annotations

import enum


class ChangeKind(enum.Enum):
    """``A`` added, ``C`` changed, ``D`` deleted (as ``docker diff`` prints them)."""

    ADD = "A"
    MODIFY = "C"
    DELETE = "D"


class Change:
    """One changed path: absolute within the layer (``/etc/passwd``), never ``/``.

    Immutable, ordered by path (then kind), hashable.  A plain class, not a
    dataclass: the drivers import it, and ``mount`` should not pay for building
    dataclasses.
    """

    __slots__ = ("kind", "path")

    path: str
    kind: ChangeKind

    def __init__(self, path: str, kind: ChangeKind) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "kind", kind)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Change is immutable: cannot set {name}")

    def _key(self) -> tuple[str, str]:
        return (self.path, self.kind.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Change):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Change) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Change) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: Change) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: Change) -> bool:
        return self._key() >= other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Change({self.path!r}, {self.kind})"

    def __str__(self) -> str:
        return f"{self.kind.value} {self.path}"

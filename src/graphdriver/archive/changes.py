"""What a layer changed: the ``docker diff`` vocabulary."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ChangeKind(enum.Enum):
    """``A`` added, ``C`` changed, ``D`` deleted (as ``docker diff`` prints them)."""

    ADD = "A"
    MODIFY = "C"
    DELETE = "D"


@dataclass(frozen=True, slots=True, order=True)
class Change:
    """One changed path: absolute within the layer (``/etc/passwd``), never ``/``."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind.value} {self.path}"

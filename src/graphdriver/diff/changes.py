"""What a layer changed: the ``docker diff`` vocabulary."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class ChangeKind:
    """``A`` added, ``C`` changed, ``D`` deleted (as ``docker diff`` prints them):
    ``ChangeKind.ADD``, ``.MODIFY`` and ``.DELETE``, compared by identity, each with its
    letter as ``value`` and its ``name``.

    Three constants of a plain class, not an :class:`enum.Enum`: ``changes`` and
    ``diffsize`` would load ``enum`` (with ``functools`` and ``collections``) for them,
    a sixth of their start-up.
    """

    __slots__ = ("name", "value")

    ADD: ClassVar[ChangeKind]
    MODIFY: ClassVar[ChangeKind]
    DELETE: ClassVar[ChangeKind]

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"ChangeKind.{self.name}"

    def __reduce__(self) -> tuple[object, ...]:
        return getattr, (ChangeKind, self.name)  # a copy or an unpickled one is the constant


ChangeKind.ADD = ChangeKind("ADD", "A")
ChangeKind.MODIFY = ChangeKind("MODIFY", "C")
ChangeKind.DELETE = ChangeKind("DELETE", "D")


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
        """The ``docker diff`` line: ``A /path``, the path quoted when it must be (see :func:`quote_path`)."""
        return f"{self.kind.value} {quote_path(self.path)}"

    def to_json(self) -> dict[str, str]:
        """The change as ``changes --json`` gives it: ``{"path", "kind"}``, lossless.

        A path whose bytes are not UTF-8 (held as lone surrogates, the
        ``surrogateescape`` way) cannot be JSON text as it is: ``path`` then has
        U+FFFD for each such byte, and ``path_raw`` the path's bytes in base64,
        as tar-split's ``name_raw`` does for archive names.
        """
        from graphdriver.jsonio import lossy

        path, raw = lossy(self.path)
        if raw is not None:
            return {"path": path, "path_raw": raw, "kind": self.kind.value}
        return {"path": path, "kind": self.kind.value}


def change_sort_key(change: Change) -> bytes:
    """Sort key of changes: the path's bytes, the order Docker and tar tools use.

    A parent always sorts before its children, so an archive written in this
    order creates every directory before the entries inside it.
    """
    return change.path.encode("utf-8", "surrogateescape")


_PLAIN_BYTES = frozenset(range(0x20, 0x7F)) - {ord("\\")}
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def quote_path(path: str) -> str:
    """*path* as one line of ``changes`` output: unchanged, or C-quoted when it must be.

    A name may hold any byte but NUL and ``/``, so a newline in a name could
    forge a whole line (``x\\nD /etc/passwd``).  A path holding a control
    character (below 0x20, or 0x7f), a backslash, bytes that are not UTF-8, or
    starting with ``"`` is printed between double quotes with C escapes, as
    git quotes paths: ``\\\\``, ``\\"``, ``\\n``, ``\\t``, ``\\r``,
    and three octal digits for any other such byte; other paths (UTF-8 names
    included) print as they are.  ``--json`` output keeps the raw path (see :meth:`Change.to_json`).
    """
    if path.isascii() and path.isprintable() and "\\" not in path and not path.startswith('"'):
        return path  # nearly every path: printable ASCII (0x20 to 0x7e) but the backslash
    raw = path.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    if utf8 and not path.startswith('"') and all(b in _PLAIN_BYTES or b >= 0x80 for b in raw):
        return path
    out = bytearray()
    for b in raw:
        if b in _ESCAPES:
            out += _ESCAPES[b].encode()
        elif b < 0x20 or b == 0x7F or (b >= 0x80 and not utf8):
            out += f"\\{b:03o}".encode()
        else:
            out.append(b)  # ASCII, or part of a valid UTF-8 character (kept whole)
    text = out.decode("utf-8")
    return f'"{text}"'

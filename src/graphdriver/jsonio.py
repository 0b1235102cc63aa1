"""JSON for store files and command output, through the standard library's C codec.

Every command reads records and prints JSON, and importing :mod:`json` costs a
read-only command more than its own work: the package imports ``re`` and
compiles its patterns.  Its C accelerator, ``_json``, needs none of that, so
this module drives ``_json``'s scanner and encoder directly and gives the same
results as ``json.loads`` and ``json.dumps`` (the tests hold the two together).
Where ``_json`` is missing (an interpreter without it), :mod:`json` serves.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WS = " \t\n\r"  # JSON's whitespace, and nothing else
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Context:
    """What ``_json``'s scanner reads from a decoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict[str, str] = {}


try:
    import _json

    _scan: Callable[[str, int], tuple[Any, int]] | None = _json.make_scanner(_Context())  # type: ignore[arg-type]
    _quote: Callable[[str], str] = _json.encode_basestring_ascii
except (ImportError, AttributeError):  # pragma: no cover - CPython always has it
    _scan = None


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def loads(data: str | bytes) -> Any:
    """Like ``json.loads``: one JSON value (UTF-8 bytes or text); ValueError if malformed."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except (StopIteration, ValueError, SystemError):
        # Malformed.  _json reports errors through json.decoder, which it finds
        # only if already imported (else a SystemError): let json say what is
        # wrong, outside this handler so that its error is not chained to ours.
        value = end = None
    if end is None:
        import json

        return json.loads(text)
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: Any, *, indent: int | None = None, compact: bool = False) -> str:
    """Like ``json.dumps(value, indent=indent)``; *compact* drops the spaces after ``,`` and ``:``."""
    if _scan is None:  # pragma: no cover
        import json

        separators = (",", ":") if compact else None
        return json.dumps(value, indent=indent, separators=separators)
    if indent is not None:
        return "".join(_pretty(value, " " * indent, "\n"))
    item, key = (",", ":") if compact else (", ", ": ")
    encode = _json.make_encoder({}, _unencodable, _quote, None, key, item, False, False, True)
    try:
        return "".join(encode(value, 0))
    except RecursionError:  # nested deeper than the C encoder goes (``tree --json`` of a long chain)
        return _deep(value, item, key)


def show(value: Any, *, indent: int | None = None) -> str:
    """:func:`dumps` of a command's output.  A string holding bytes that are not UTF-8 (a path
    read with ``surrogateescape``, which JSON text cannot hold) gets U+FFFD for those bytes; in an
    object, a member ``KEY_raw`` beside it gives its bytes in base64, as ``changes --json`` gives
    ``path_raw`` and tar-split ``name_raw``."""
    text = dumps(value, indent=indent)
    if "\\ud" not in text:  # no surrogate was written: every string was UTF-8
        return text
    return dumps(_portable(value), indent=indent)


def _portable(value: Any) -> Any:
    """*value* with each string that is not UTF-8 made lossy, and its bytes kept in ``KEY_raw``."""
    if isinstance(value, str):
        return lossy(value)[0]
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    for k, v in value.items():
        if isinstance(v, str):
            out[k], raw = lossy(v)
            if raw is not None and isinstance(k, str) and f"{k}_raw" not in value:
                out[f"{k}_raw"] = raw
        else:
            out[k] = _portable(v)
    return out


def lossy(text: str) -> tuple[str, str | None]:
    """*text* as UTF-8 text, and None; or, when it holds bytes that are not UTF-8, with U+FFFD
    for them, and its bytes in base64."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        import base64

        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no byte was read as: no bytes to give
            return text.encode("utf-8", "replace").decode("utf-8"), None
        return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")
    return text, None


class _Text(str):
    """Text :func:`_deep` copies as it is (a value to encode is anything else)."""


def _deep(value: Any, item: str, key: str) -> str:
    """:func:`dumps` of *value* without recursion: the same text, at any depth."""
    out: list[str] = []
    work: list[Any] = [value]  # what is still to write, last first
    while work:
        v = work.pop()
        if isinstance(v, _Text):
            out.append(v)
        elif isinstance(v, dict):
            parts: list[Any] = [_Text("{")]
            for i, (k, x) in enumerate(v.items()):
                name = k if isinstance(k, str) else _scalar(k)  # as json names a number or a constant
                parts += [_Text((item if i else "") + _quote(name) + key), x]
            work.extend(reversed([*parts, _Text("}")]))
        elif isinstance(v, list | tuple):
            parts = [_Text("[")]
            for i, x in enumerate(v):
                parts += [_Text(item), x] if i else [x]
            work.extend(reversed([*parts, _Text("]")]))
        else:
            out.append(_scalar(v))
    return "".join(out)


def _scalar(value: Any) -> str:
    encode = _json.make_encoder(None, _unencodable, _quote, None, ": ", ", ", False, False, True)
    return "".join(encode(value, 0))


def _pretty(value: Any, step: str, newline: str) -> list[str]:
    """``json.dumps(value, indent=len(step))`` as pieces."""
    if isinstance(value, dict):
        if not value:
            return ["{}"]
        inner = newline + step
        out = ["{"]
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                k = _scalar(k)  # json.dumps' key rules: 1 -> "1", True -> "true", None -> "null"
            out.append(("," if i else "") + inner + _quote(k) + ": ")
            out.extend(_pretty(v, step, inner))
        out.append(newline + "}")
        return out
    if isinstance(value, list | tuple):
        if not value:
            return ["[]"]
        inner = newline + step
        out = ["["]
        for i, v in enumerate(value):
            out.append(("," if i else "") + inner)
            out.extend(_pretty(v, step, inner))
        out.append(newline + "]")
        return out
    return [_scalar(value)]

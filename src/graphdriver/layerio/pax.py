"""PAX extended header records, as the tar reader takes them in.

Records are parsed once per meta header into a dict of raw values (a repeated
key's last value wins), then applied to the entry they precede: times,
names, sizes, owners, and ``SCHILY.xattr.*`` extended attributes.  Layers
repeat a handful of keys and times over and over, so each distinct spelling of
a key or a time is decoded once per process.
"""

from __future__ import annotations

from graphdriver.errors import CorruptArchive
from graphdriver.layerio.entry import TarEntry

__all__ = ["NOT_GLOBAL", "SCHILY", "apply_records", "decimal", "parse_records", "sparse", "time_ns"]

_MAX_INT64 = (1 << 63) - 1
_NS = 1_000_000_000
_CACHE_MAX = 4096
SCHILY = "SCHILY.xattr."
# PAX keys that describe one file only; in a global header they would give
# every later entry the same name or data length, so they are not applied.
NOT_GLOBAL = frozenset({"path", "linkpath", "size"})
_TEXT_RECORDS = frozenset({"path", "linkpath", "uname", "gname"})
_SPARSE_PAIR = frozenset({"GNU.sparse.offset", "GNU.sparse.numbytes"})
# The records that set an entry field, and which one (one dict lookup per record);
# the three times come first.
_F_ATIME, _F_CTIME, _F_MTIME, _F_PATH, _F_LINKPATH, _F_SIZE, _F_UID, _F_GID, _F_UNAME, _F_GNAME = range(10)
_PAX_FIELDS = {
    "atime": _F_ATIME, "ctime": _F_CTIME, "mtime": _F_MTIME, "path": _F_PATH,
    "linkpath": _F_LINKPATH, "size": _F_SIZE, "uid": _F_UID, "gid": _F_GID,
    "uname": _F_UNAME, "gname": _F_GNAME,
}  # fmt: skip
# 10 ** (9 - digits): a fraction of that many digits, in nanoseconds.
_FRACTION_SCALE = tuple(10 ** (9 - n) for n in range(10))
# PAX keys seen, decoded and checked (archives use a handful of distinct keys).
_KEYS: dict[bytes, str] = {}
# PAX times seen, in nanoseconds.
_TIMES: dict[bytes, int] = {}


def _err(name: bytes, why: str) -> CorruptArchive:
    return CorruptArchive(_text(name), why)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    """The bytes of a NUL-terminated header field."""
    i = field.find(0)
    return field if i < 0 else field[:i]


def decimal(value: bytes, key: str, name: bytes) -> int:
    """A decimal within int64 (without feeding huge strings to int())."""
    digits = value.lstrip(b"0")
    if not value.isdigit() or len(digits) > 19 or int(digits or b"0") > _MAX_INT64:
        raise _err(name, f"invalid PAX {key}")
    return int(digits or b"0")


def time_ns(value: bytes, key: str, name: bytes) -> int:
    """Parse a PAX time (``[-]seconds[.fraction]``) into nanoseconds."""
    secs_text, dot, frac = value.partition(b".")
    if secs_text.isdigit() and len(secs_text) < 19 and (not dot or (frac.isdigit() and len(frac) <= 9)):
        # The usual spelling, well inside int64: no sign, at most nanoseconds.
        return int(secs_text) * _NS + (int(frac) * _FRACTION_SCALE[len(frac)] if dot else 0)
    neg = value[:1] == b"-"
    body = value[1:] if neg or value[:1] == b"+" else value
    secs_text, _, frac = body.partition(b".")
    secs = decimal(secs_text, key, name)
    if frac and not frac.isdigit():
        raise _err(name, f"invalid PAX {key}")
    # Digits past nanoseconds are dropped, as other readers do.
    ns = secs * _NS + int((frac + b"000000000")[:9])
    return -ns if neg else ns


def _key(kb: bytes, header: bytes) -> str:
    """A PAX record's key as text, checked; the few distinct keys are decoded once."""
    key = _KEYS.get(kb)
    if key is None:
        key = _text(kb)
        if 0 in kb:
            what = "xattr name" if key.startswith(SCHILY) else "record key"
            raise _err(_cstr(header[:100]), f"PAX {what} with NUL")
        if len(_KEYS) < _CACHE_MAX:
            _KEYS[kb] = key
    return key


def parse_records(data: bytes, header: bytes) -> dict[str, bytes]:
    """Parse PAX records (``"<len> <key>=<value>\\n"``); a repeated key's last value wins.

    *header* is the meta header's block, named in errors.
    """
    records: dict[str, bytes] = {}
    sparse_map: list[bytes] = []
    pos, end = 0, len(data)
    find = data.find
    while pos < end:
        sp = find(b" ", pos, pos + 21)
        digits = data[pos:sp] if sp > pos else b""
        if not digits.isdigit():
            raise _err(_cstr(header[:100]), "malformed PAX record")
        nxt = pos + int(digits)
        if nxt - sp < 4 or nxt > end or data[nxt - 1] != 0x0A:
            raise _err(_cstr(header[:100]), "malformed PAX record")
        eq = find(b"=", sp + 1, nxt - 1)
        if eq <= sp + 1:
            raise _err(_cstr(header[:100]), "malformed PAX record")
        key = _key(data[sp + 1 : eq], header)
        value = data[eq + 1 : nxt - 1]
        if key in _TEXT_RECORDS and 0 in value:
            raise _err(_cstr(header[:100]), f"PAX record with NUL in {key}")
        if key in _SPARSE_PAIR:
            # Sparse format 0.0 repeats these two keys; keep them all, in
            # order, the way format 0.1 spells its map.
            sparse_map.append(value)
        else:
            records[key] = value
        pos = nxt
    if sparse_map:
        records["GNU.sparse.map"] = b",".join(sparse_map)
    return records


def apply_records(entry: TarEntry, pax: dict[str, bytes], name: bytes) -> tuple[bytes, bytes | None]:
    """Apply PAX records to ``entry``; return the name and the link name (None: unchanged)."""
    entry.pax = pax
    linkname = None
    where = name
    for key, value in pax.items():
        field = _PAX_FIELDS.get(key)
        if field is None:
            if key.startswith(SCHILY):
                entry.xattrs[key[len(SCHILY) :]] = value
        elif not value:
            continue  # an empty record leaves the header's value in place
        elif field <= _F_MTIME:
            # Layers repeat a few times over and over (one per package or
            # build step): each spelling is parsed once.
            ns = _TIMES.get(value)
            if ns is None:
                ns = time_ns(value, key, where)
                if len(_TIMES) >= _CACHE_MAX:
                    _TIMES.clear()
                _TIMES[value] = ns
            if field == _F_ATIME:
                entry.atime_ns = ns
            elif field == _F_CTIME:
                entry.ctime_ns = ns
            else:
                entry.mtime_ns = ns
        elif field == _F_PATH:
            name = value
        elif field == _F_LINKPATH:
            linkname = value
        elif field == _F_SIZE:
            entry.size = decimal(value, key, where)
        elif field == _F_UID:
            entry.uid = decimal(value, key, where)
        elif field == _F_GID:
            entry.gid = decimal(value, key, where)
        elif field == _F_UNAME:
            entry.uname = _text(value)
        else:
            entry.gname = _text(value)
    sparse_name = pax.get("GNU.sparse.name")
    if sparse_name:
        name = sparse_name  # the real name of a PAX sparse file, whatever the record order
    return name, linkname


# Records of most entries: none of them makes a sparse file (a set check, not a key scan).
_PLAIN = frozenset(_PAX_FIELDS)


def sparse(records: dict[str, bytes]) -> bool:
    """Whether *records* describe a PAX sparse file (``GNU.sparse.*``: its data is not the file)."""
    return not records.keys() <= _PLAIN and any(k.startswith("GNU.sparse.") for k in records)

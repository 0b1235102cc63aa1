"""Security descriptors written as SDDL text (``MSWINDOWS.sd``), read into the binary form.

Older Windows layer tarballs carry a file's descriptor as SDDL, the text form
of the Security Descriptor Definition Language
(``O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;0x1200a9;;;BU)``); newer ones carry the
binary form (``MSWINDOWS.rawsd``).  A layer keeps whichever it was given, for
its exact re-export.  A file a Linux process created below a directory known
only by its SDDL inherits from it: :func:`to_binary` gives the binary
descriptor inheritance reads.

What is read: the owner (``O:``), the group (``G:``) and the DACL (``D:``, its
``P``/``AI``/``AR`` flags and its allowed and denied ACEs), with SIDs as
``S-1-...`` or as the well-known two-letter aliases.  The SACL (``S:``) is
skipped: inheritance here makes DACLs only.  What cannot be read without a
Windows machine (aliases relative to a domain or a machine, object and
conditional ACEs) raises ``ValueError``, and the caller treats the directory as
one without a readable descriptor.
"""

from __future__ import annotations

from graphdriver.layerio.windows.wintar import (
    SE_DACL_AUTO_INHERITED,
    SE_DACL_PROTECTED,
    SecurityDescriptor,
    ace,
    sid,
)

SE_DACL_AUTO_INHERIT_REQ = 0x0100

_ACE_TYPES = {"A": 0, "D": 1}
_ACE_FLAGS = {"OI": 0x01, "CI": 0x02, "NP": 0x04, "IO": 0x08, "ID": 0x10, "SA": 0x40, "FA": 0x80}
_DACL_FLAGS = {"P": SE_DACL_PROTECTED, "AI": SE_DACL_AUTO_INHERITED, "AR": SE_DACL_AUTO_INHERIT_REQ}
_RIGHTS = {
    "GA": 0x10000000, "GR": 0x80000000, "GW": 0x40000000, "GX": 0x20000000,
    "RC": 0x00020000, "SD": 0x00010000, "WD": 0x00040000, "WO": 0x00080000,
    "RP": 0x10, "WP": 0x20, "CC": 0x01, "DC": 0x02, "LC": 0x04, "SW": 0x08, "LO": 0x80, "DT": 0x40,
    "CR": 0x100,
    "FA": 0x001F01FF, "FR": 0x00120089, "FW": 0x00120116, "FX": 0x001200A0,
    "KA": 0x000F003F, "KR": 0x00020019, "KW": 0x00020006, "KX": 0x00020019,
}
#: Well-known SIDs by alias (those that name the same SID on every machine).
_ALIASES = {
    "WD": "S-1-1-0", "CO": "S-1-3-0", "CG": "S-1-3-1", "OW": "S-1-3-4",
    "NU": "S-1-5-2", "IU": "S-1-5-4", "SU": "S-1-5-6", "AN": "S-1-5-7", "ED": "S-1-5-9",
    "PS": "S-1-5-10", "AU": "S-1-5-11", "RC": "S-1-5-12", "SY": "S-1-5-18", "LS": "S-1-5-19",
    "NS": "S-1-5-20", "WR": "S-1-5-33",
    "BA": "S-1-5-32-544", "BU": "S-1-5-32-545", "BG": "S-1-5-32-546", "PU": "S-1-5-32-547",
    "AO": "S-1-5-32-548", "SO": "S-1-5-32-549", "PO": "S-1-5-32-550", "BO": "S-1-5-32-551",
    "RE": "S-1-5-32-552", "RU": "S-1-5-32-554", "RD": "S-1-5-32-555", "NO": "S-1-5-32-556",
    "MU": "S-1-5-32-558", "LU": "S-1-5-32-559", "IS": "S-1-5-32-568", "CY": "S-1-5-32-569",
    "ER": "S-1-5-32-573", "RM": "S-1-5-32-580",
    "AC": "S-1-15-2-1",
    "LW": "S-1-16-4096", "ME": "S-1-16-8192", "MP": "S-1-16-8448", "HI": "S-1-16-12288",
    "SI": "S-1-16-16384",
}
_SECTIONS = "OGDS"


def to_binary(text: str, *, whole: bool = False) -> bytes:
    """The self-relative binary descriptor SDDL *text* describes; ValueError if it cannot be read.

    A SACL is skipped (inheritance reads the DACL alone); with *whole*, a text
    with a SACL is refused too, since the binary form would lose it.
    """
    sections = _sections(text)
    if whole and "S" in sections:
        raise ValueError("a SACL (S:) is not read here")
    control, aces = _dacl(sections["D"]) if "D" in sections else (0, None)
    owner = _sid(sections["O"]) if "O" in sections else None
    group = _sid(sections["G"]) if "G" in sections else None
    return SecurityDescriptor(control, owner, group, aces).to_bytes()


def _sections(text: str) -> dict[str, str]:
    """``{"O": "BA", "G": "SY", "D": "PAI(...)(...)"}``: each section's text, once each."""
    text = "".join(text.split())  # SDDL allows white space between its parts
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        key = text[i]
        if key not in _SECTIONS or text[i + 1 : i + 2] != ":" or key in out:
            raise ValueError(f"unexpected {text[i:i + 8]!r} in an SDDL string")
        # A SACL (not read here) may nest parentheses (conditional audit ACEs, resource
        # attributes) and quote strings that hold them; elsewhere an ACE is one level deep.
        deepest = len(text) if key == "S" else 1
        j, depth, quoted = i + 2, 0, False
        while j < len(text) and (depth or not (text[j] in _SECTIONS and text[j + 1 : j + 2] == ":")):
            if text[j] == '"' and depth:
                quoted = not quoted
            elif not quoted:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if not 0 <= depth <= deepest:
                    raise ValueError("unbalanced parentheses in an SDDL string")
            j += 1
        if depth or quoted:
            raise ValueError("unbalanced parentheses in an SDDL string")
        out[key] = text[i + 2 : j]
        i = j
    return out


def _dacl(text: str) -> tuple[int, list[bytes] | None]:
    """The control bits and the ACEs of a ``D:`` section (None: a NULL DACL)."""
    flags, paren, rest = text.partition("(")
    if flags.endswith("NO_ACCESS_CONTROL"):
        if paren:
            raise ValueError("ACEs after NO_ACCESS_CONTROL")
        flags = flags[: -len("NO_ACCESS_CONTROL")]
        return _flags(flags, _DACL_FLAGS, "DACL flag"), None
    control = _flags(flags, _DACL_FLAGS, "DACL flag")
    aces = []
    rest = paren + rest
    while rest:
        if not rest.startswith("(") or ")" not in rest:
            raise ValueError(f"malformed ACE {rest[:24]!r}")
        body, _, rest = rest[1:].partition(")")
        aces.append(_ace(body))
    return control, aces


def _ace(text: str) -> bytes:
    fields = text.split(";")
    if len(fields) != 6:
        raise ValueError(f"ACE {text!r} does not have six fields")
    kind, flags, rights, object_guid, inherit_guid, who = fields
    if kind not in _ACE_TYPES:
        raise ValueError(f"ACE type {kind!r} is not read here")
    if object_guid or inherit_guid:
        raise ValueError("object ACEs are not read here")
    return ace(_ACE_TYPES[kind], _flags(flags, _ACE_FLAGS, "ACE flag"), _rights(rights), _sid(who))


def _flags(text: str, table: dict[str, int], what: str) -> int:
    """The bits of a run of flag names (``OICIID``), each name once, longest first."""
    value = 0
    i = 0
    names = sorted(table, key=len, reverse=True)
    while i < len(text):
        name = next((n for n in names if text.startswith(n, i)), None)
        if name is None:
            raise ValueError(f"unknown {what} in {text!r}")
        value |= table[name]
        i += len(name)
    return value


def _rights(text: str) -> int:
    if text[:2].lower() == "0x":
        value = int(text[2:], 16)
    elif text.isdigit():
        value = int(text, 8) if text.startswith("0") else int(text)
    else:
        if len(text) % 2:
            raise ValueError(f"unknown access rights {text!r}")
        value = 0
        for i in range(0, len(text), 2):
            right = _RIGHTS.get(text[i : i + 2])
            if right is None:
                raise ValueError(f"unknown access right {text[i:i + 2]!r}")
            value |= right
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"access rights {text!r} out of range")
    return value


def _sid(text: str) -> bytes:
    """A binary SID from ``S-1-5-32-544`` or an alias (``BA``)."""
    text = _ALIASES.get(text, text)
    parts = text.split("-")
    if len(parts) < 3 or parts[0] not in ("S", "s") or parts[1] != "1":
        raise ValueError(f"unknown SID {text!r}")
    hex_authority = parts[2][:2].lower() == "0x"
    digits = [parts[2][2:] if hex_authority else parts[2], *parts[3:]]
    if not all(d.isascii() and d.isalnum() for d in digits) or not all(p.isdigit() for p in parts[3:]):
        raise ValueError(f"malformed SID {text!r}")
    try:
        authority = int(digits[0], 16 if hex_authority else 10)
    except ValueError:
        raise ValueError(f"malformed SID {text!r}") from None
    subs = [int(p) for p in parts[3:]]
    if not 0 <= authority < 1 << 48 or len(subs) > 15 or not all(0 <= s <= 0xFFFFFFFF for s in subs):
        raise ValueError(f"SID {text!r} out of range")
    return sid(authority, *subs)

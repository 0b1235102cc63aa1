"""The Windows container layer tarball format (what go-winio's ``backuptar`` writes).

A Windows layer tarball holds three trees: ``Files/`` (the container's
volume), ``Hives/`` (registry deltas such as ``Hives/Software_Delta``) and,
for images that run in a utility VM, ``UtilityVM/Files/``.  The Windows
metadata of each entry travels in PAX records:

``MSWINDOWS.fileattr``
    The ``FILE_ATTRIBUTE_*`` bits as a decimal number (16 a directory, 32
    archive, 0x400 a reparse point...).  Without it an entry gets the default
    Windows itself would give: :data:`FILE_ATTRIBUTE_DIRECTORY` for a
    directory, 0 for anything else.
``MSWINDOWS.rawsd``
    The self-relative security descriptor, base64.  Older archives carry
    ``MSWINDOWS.sd`` (SDDL text) instead; it is read and kept for the exact
    re-export of such an archive, and a regenerated export writes the binary
    form as ``backuptar`` does (the text only where it cannot be read whole).
``MSWINDOWS.mountpoint``
    ``1`` on a symlink entry that is a junction (a mount point reparse point).
``MSWINDOWS.xattr.<name>``
    A file's extended attribute (EA), base64.
``LIBARCHIVE.creationtime``
    The creation time, in PAX time syntax; the standard ``mtime``, ``atime``
    and ``ctime`` records carry the other three times (Windows times have a
    resolution of 100 ns, so up to 7 fraction digits are meaningful).

The oldest go-winio wrote the same keys as ``SCHILY.xattr.MSWINDOWS.*``
records, with times as ``MSWINDOWS.{create,access,change,write}time``
FILETIME numbers; those are read too.

An alternate data stream is a regular entry named ``<file>:<stream>`` right
after its file.  ``.wh.<name>`` deletes ``<name>``; such tombstones are valid
only under ``Files/`` and ``UtilityVM/Files/``, and name a file or folder: a
stream is part of its file's entry (hcsshim hands the two to Windows as one
backup stream), so a layer drops one by giving its file again without it.

Everything here is format knowledge only: parsing and producing the records,
the path rules, security descriptors (binary, self-relative) and their
inheritance for files a Linux process creates in a Windows layer.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import struct
from dataclasses import dataclass, field

from graphdriver.errors import ArchiveError, CorruptArchive
from graphdriver.layerio.entry import DIR, LNK, REG, SYM, TarEntry
from graphdriver.layerio.windows.layout import LAYER_ROOTS, TOMBSTONE_ROOTS

# ----- PAX records ----------------------------------------------------------------------------

FILEATTR = "MSWINDOWS.fileattr"
RAWSD = "MSWINDOWS.rawsd"
SDDL = "MSWINDOWS.sd"
MOUNTPOINT = "MSWINDOWS.mountpoint"
EA_PREFIX = "MSWINDOWS.xattr."
CREATIONTIME = "LIBARCHIVE.creationtime"
# The first go-winio kept these in SCHILY.xattr.* records, times as FILETIMEs.
_LEGACY_CREATETIME = "MSWINDOWS.createtime"
_SCHILY = "SCHILY.xattr."
#: Records the tar header fields carry (the writer derives them again).
_STANDARD = frozenset({"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"})
_INTERPRETED = frozenset({FILEATTR, RAWSD, SDDL, MOUNTPOINT, CREATIONTIME, _LEGACY_CREATETIME})

# ----- FILE_ATTRIBUTE_* bits ------------------------------------------------------------------

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

# ----- layer paths ----------------------------------------------------------------------------

# The layer's trees (names in :mod:`.layout`).

WHITEOUT_PREFIX = ".wh."

# Seconds from 1601-01-01 (the FILETIME epoch) to 1970-01-01.
_FILETIME_EPOCH_DELTA = 11_644_473_600
_NS = 1_000_000_000


def layer_root(rel: str) -> str | None:
    """The top-level tree *rel* belongs to (``Files``...), or None if it is none of them."""
    top = rel.partition("/")[0]
    return top if top in LAYER_ROOTS else None


def check_tombstone(rel: str, entry: str = "") -> None:
    """Refuse a deletion of *rel* outside ``Files/`` and ``UtilityVM/Files/`` (hcsshim's rule).

    *entry* names the archive entry in the error (default: *rel*).
    """
    for root in TOMBSTONE_ROOTS:
        if rel.startswith(root + "/"):
            return
    why = f"invalid tombstone of {rel}: deletions are only valid under Files/ and UtilityVM/Files/"
    raise ArchiveError(entry or rel, why)


#: Windows' path separator: in a name of a Windows layer it would name another place.
BACKSLASH = "\\"


def check_name(rel: str, entry: str = "") -> None:
    """Refuse a layer path holding a backslash: ``backuptar`` writes ``/`` between the
    components, and Windows reads ``\\`` as one too, so ``Files/Windows\\System32\\x.dll``
    would land in ``System32``, not in a file of that name (*entry* names the archive entry
    in the error; default *rel*)."""
    if BACKSLASH in rel:
        raise ArchiveError(entry or rel, "a '\\' in a name of a Windows layer: Windows reads it as a "
                                         "path separator, so the file would land elsewhere")


def split_stream(rel: str) -> tuple[str, str | None]:
    """``("Files/a.txt", "s")`` for the alternate data stream ``Files/a.txt:s``.

    Windows file names cannot hold ``:``, so a colon in the last component
    always names a stream.  Returns ``(rel, None)`` for a plain name.
    """
    parent, _, base = rel.rpartition("/")
    name, colon, stream = base.partition(":")
    if not colon:
        return rel, None
    return (f"{parent}/{name}" if parent else name), stream


# ----- times ----------------------------------------------------------------------------------


def parse_pax_time(value: bytes | str) -> int:
    """A PAX time (``[-]seconds[.fraction]``) in nanoseconds; ValueError if malformed."""
    text = value.decode("ascii") if isinstance(value, bytes) else value
    neg = text.startswith("-")
    secs, _, frac = text[1:].partition(".") if neg else text.partition(".")
    if not secs.isdigit() or (frac and not frac.isdigit()) or len(secs) > 19:
        raise ValueError(f"invalid PAX time {text!r}")
    ns = int(secs) * _NS + int((frac + "000000000")[:9])
    return -ns if neg else ns


def format_pax_time(ns: int) -> str:
    """Nanoseconds as a PAX time, trailing fraction zeros dropped (as Go formats them)."""
    secs, frac = divmod(ns, _NS)
    if not frac:
        return str(secs)
    if secs < 0:
        return f"-{-(secs + 1)}.{_NS - frac:09d}".rstrip("0")
    return f"{secs}.{frac:09d}".rstrip("0")


def filetime_to_ns(filetime: int) -> int:
    """A Windows FILETIME (100 ns ticks since 1601) as Unix nanoseconds."""
    return filetime * 100 - _FILETIME_EPOCH_DELTA * _NS


def windows_time(ns: int) -> int:
    """*ns* truncated to the 100 ns ticks a Windows time can hold."""
    return ns - ns % 100


# ----- the metadata of one entry ----------------------------------------------------------------


@dataclass
class WinMeta:
    """The Windows metadata of one layer entry that a Linux file cannot hold."""

    #: ``FILE_ATTRIBUTE_*`` bits.
    attributes: int = 0
    #: Whether the archive gave the attributes (else they are the default).
    explicit_attributes: bool = False
    #: The self-relative security descriptor, if known in binary.
    security_descriptor: bytes | None = None
    #: The SDDL text of an older archive's ``MSWINDOWS.sd``.
    sddl: str | None = None
    creation_ns: int | None = None
    #: A junction rather than a symlink.
    mountpoint: bool = False
    #: Extended attributes (EAs) by name.
    eas: dict[str, bytes] = field(default_factory=dict)
    #: Every other record of the entry, verbatim (``SCHILY.xattr.*`` ones included),
    #: so that what this code does not know survives a re-export.
    extra: dict[str, bytes] = field(default_factory=dict)


def _record(entry: TarEntry, key: str) -> bytes | None:
    value = entry.pax.get(key)
    if value is None:
        value = entry.xattrs.get(key)  # the first go-winio's SCHILY.xattr.* spelling
    return value


def _b64(entry: TarEntry, key: str, value: bytes) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CorruptArchive(entry.name, f"invalid base64 in PAX record {key}") from e


def meta_from_entry(entry: TarEntry) -> WinMeta:
    """The Windows metadata of *entry*, defaults filled in; CorruptArchive (exit 6) for malformed records."""
    meta = WinMeta(attributes=FILE_ATTRIBUTE_DIRECTORY if entry.type == DIR else 0)
    raw = _record(entry, FILEATTR)
    if raw is not None:
        if not raw.isdigit() or int(raw) > 0xFFFFFFFF:
            raise CorruptArchive(entry.name, f"invalid {FILEATTR} {raw!r}")
        meta.attributes, meta.explicit_attributes = int(raw), True
    raw = _record(entry, RAWSD)
    if raw is not None:
        meta.security_descriptor = _b64(entry, RAWSD, raw)
        try:
            check_security_descriptor(meta.security_descriptor)
        except ValueError as e:
            raise CorruptArchive(entry.name, f"invalid security descriptor in PAX record {RAWSD}: {e}") from e
    elif (raw := _record(entry, SDDL)) is not None:
        meta.sddl = raw.decode("utf-8", "surrogateescape")
    raw = _record(entry, CREATIONTIME)
    try:
        if raw is not None:
            meta.creation_ns = parse_pax_time(raw)
        elif (raw := _record(entry, _LEGACY_CREATETIME)) is not None:
            meta.creation_ns = filetime_to_ns(int(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptArchive(entry.name, f"invalid creation time {raw!r}") from e
    meta.mountpoint = _record(entry, MOUNTPOINT) is not None
    _check_kind(entry, meta)
    for key, value in entry.pax.items():
        if key.startswith(EA_PREFIX) and len(key) > len(EA_PREFIX):
            meta.eas[key[len(EA_PREFIX) :]] = _b64(entry, key, value)
        elif key.startswith(_SCHILY):
            if key[len(_SCHILY) :] not in _INTERPRETED:
                meta.extra[key] = value
        elif key not in _STANDARD and key not in _INTERPRETED:
            meta.extra[key] = value
    return meta


def _check_kind(entry: TarEntry, meta: WinMeta) -> None:
    """CorruptArchive (exit 6) where *meta* says another type than *entry* has.

    Windows sets :data:`FILE_ATTRIBUTE_DIRECTORY` on every directory and on no
    file (a hard link names a file), and a junction is a reparse point, which
    ``backuptar`` writes as a symlink entry; a symlink may point to either, so
    its directory bit is free.  An entry that contradicts its own header could
    only re-export as something Windows would read otherwise.
    """
    is_dir = bool(meta.attributes & FILE_ATTRIBUTE_DIRECTORY)
    if entry.type == DIR and not is_dir:
        raise CorruptArchive(entry.name, f"{FILEATTR} {meta.attributes} of a directory lacks "
                                         "FILE_ATTRIBUTE_DIRECTORY (0x10)")
    if entry.type not in (DIR, SYM) and is_dir:
        raise CorruptArchive(entry.name, f"{FILEATTR} {meta.attributes} of a file has "
                                         "FILE_ATTRIBUTE_DIRECTORY (0x10)")
    if meta.mountpoint and entry.type != SYM:
        raise CorruptArchive(entry.name, f"{MOUNTPOINT} on an entry that is not a symlink (a junction "
                                         "is one)")


def meta_records(meta: WinMeta) -> dict[str, bytes]:
    """The PAX records that carry *meta* (``backuptar``'s spelling)."""
    records = {FILEATTR: b"%d" % meta.attributes}
    if meta.creation_ns is not None:
        records[CREATIONTIME] = format_pax_time(meta.creation_ns).encode()
    if meta.security_descriptor is not None:
        records[RAWSD] = base64.b64encode(meta.security_descriptor)
    elif meta.sddl is not None:
        records[SDDL] = meta.sddl.encode("utf-8", "surrogateescape")
    if meta.mountpoint:
        records[MOUNTPOINT] = b"1"
    for name, value in meta.eas.items():
        records[EA_PREFIX + name] = base64.b64encode(value)
    for key, value in meta.extra.items():
        records.setdefault(key, value)
    return records


# ----- entries for export -------------------------------------------------------------------------

#: ``backuptar`` keeps only the file-type bits of a mode; link entries get 0644.
_LINK_MODE = 0o644


@dataclass(frozen=True)
class Times:
    """The four times of a Windows file, Unix nanoseconds."""

    mtime: int
    atime: int
    ctime: int
    creation: int


def export_entry(name: str, kind: str, meta: WinMeta, times: Times, *, size: int = 0,
                 linkname: str = "") -> TarEntry:
    """The entry ``backuptar`` writes for a file, directory, symlink or hard link.

    *kind* is a tar type flag (:data:`REG`, :data:`DIR`, :data:`SYM` or
    :data:`LNK`); *meta*'s creation time, when unset, is taken from *times*.
    Permission bits are 0 (Windows has none; a hard link gets 0644 as hcsshim
    writes it) and owners are 0.
    """
    creation = format_pax_time(windows_time(
        meta.creation_ns if meta.creation_ns is not None else times.creation
    )).encode()
    # A second name of a file (a hard link) gets its basic information only, as hcsshim writes it.
    pax = {FILEATTR: b"%d" % meta.attributes} if kind == LNK else meta_records(meta)
    pax[CREATIONTIME] = creation
    xattrs = {k[len(_SCHILY) :]: pax.pop(k) for k in [k for k in pax if k.startswith(_SCHILY)]}
    return TarEntry(
        name=name,
        type=kind,
        size=size if kind == REG else 0,
        mode=_LINK_MODE if kind == LNK else 0,
        mtime_ns=windows_time(times.mtime),
        atime_ns=windows_time(times.atime),
        ctime_ns=windows_time(times.ctime),
        linkname=linkname,
        xattrs=xattrs,
        pax=pax,
    )


def stream_entry(file_name: str, stream: str, size: int, times: Times) -> TarEntry:
    """The entry of alternate data stream *stream* of *file_name*: times only, no records."""
    return TarEntry(
        name=f"{file_name}:{stream}",
        type=REG,
        size=size,
        mode=0,
        mtime_ns=windows_time(times.mtime),
        atime_ns=windows_time(times.atime),
        ctime_ns=windows_time(times.ctime),
    )


def attributes_for(kind: str, *, readonly: bool = False, previous: int | None = None) -> int:
    """The attributes of a file a Linux process created (*previous* None) or changed.

    Windows sets :data:`FILE_ATTRIBUTE_ARCHIVE` on every file it creates or
    writes; a directory is :data:`FILE_ATTRIBUTE_DIRECTORY`, a symlink a
    reparse point.  A file without any write permission is read-only.
    """
    if kind == DIR:
        return FILE_ATTRIBUTE_DIRECTORY | (previous or 0)
    attrs = FILE_ATTRIBUTE_ARCHIVE | (previous or 0)
    if previous is None and kind == SYM:
        attrs |= FILE_ATTRIBUTE_REPARSE_POINT
    if readonly:
        attrs |= FILE_ATTRIBUTE_READONLY
    # NORMAL means "no other attribute" and is never combined with one.
    return attrs & ~FILE_ATTRIBUTE_NORMAL


# ----- security descriptors -------------------------------------------------------------------------

SE_DACL_PRESENT = 0x0004
SE_DACL_AUTO_INHERITED = 0x0400
SE_DACL_PROTECTED = 0x1000
SE_SELF_RELATIVE = 0x8000

OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02
NO_PROPAGATE_INHERIT_ACE = 0x04
INHERIT_ONLY_ACE = 0x08
INHERITED_ACE = 0x10
_INHERIT_FLAGS = OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE | NO_PROPAGATE_INHERIT_ACE | INHERIT_ONLY_ACE

ACCESS_ALLOWED_ACE_TYPE = 0
FILE_ALL_ACCESS = 0x001F01FF
FILE_GENERIC_READ_EXECUTE = 0x001200A9
_ACL_REVISION = 2
_SD_HEADER = struct.Struct("<BBHIIII")
_ACL_HEADER = struct.Struct("<BBHHH")


def sid(authority: int, *subauthorities: int) -> bytes:
    """A binary SID: ``sid(5, 32, 544)`` is S-1-5-32-544 (BUILTIN\\Administrators)."""
    return (bytes([1, len(subauthorities)]) + authority.to_bytes(6, "big")
            + b"".join(struct.pack("<I", s) for s in subauthorities))


def sid_string(data: bytes) -> str:
    """The ``S-1-...`` text of a binary SID (for messages and tests)."""
    count = data[1]
    authority = int.from_bytes(data[2:8], "big")
    subs = struct.unpack_from(f"<{count}I", data, 8)
    return "S-1-" + "-".join(str(n) for n in (authority, *subs))


SID_ADMINISTRATORS = sid(5, 32, 544)
SID_USERS = sid(5, 32, 545)
SID_SYSTEM = sid(5, 18)


def ace(ace_type: int, flags: int, mask: int, who: bytes) -> bytes:
    """An ACE of the common layout (allowed/denied/audit): header, mask, SID."""
    return struct.pack("<BBHI", ace_type, flags, 8 + len(who), mask) + who


@dataclass
class SecurityDescriptor:
    """The parts of a self-relative security descriptor that inheritance needs."""

    control: int
    owner: bytes | None
    group: bytes | None
    #: The DACL's ACEs as raw bytes (None: no DACL); its revision.
    dacl: list[bytes] | None
    acl_revision: int = _ACL_REVISION

    def to_bytes(self) -> bytes:
        """The self-relative form: header, DACL, owner, group (Windows' own order)."""
        body, offsets = b"", [0, 0, 0, 0]  # owner, group, sacl, dacl
        control = SE_SELF_RELATIVE | (self.control & ~(SE_DACL_PRESENT | SE_SELF_RELATIVE))
        if self.dacl is not None:
            size = _ACL_HEADER.size + sum(len(a) for a in self.dacl)
            offsets[3] = _SD_HEADER.size
            body += _ACL_HEADER.pack(self.acl_revision, 0, size, len(self.dacl), 0) + b"".join(self.dacl)
            control |= SE_DACL_PRESENT
        for i, part in ((0, self.owner), (1, self.group)):
            if part is not None:
                offsets[i] = _SD_HEADER.size + len(body)
                body += part
        return _SD_HEADER.pack(1, 0, control & 0xFFFF, *offsets) + body


def _sid_at(data: bytes, offset: int) -> bytes | None:
    if not offset:
        return None
    if offset + 8 > len(data):
        raise ValueError("SID outside the descriptor")
    end = offset + 8 + 4 * data[offset + 1]
    if data[offset] != 1:
        raise ValueError("malformed SID")
    if end > len(data):
        raise ValueError("SID's sub-authorities outside the descriptor")
    return data[offset:end]


def _acl_at(data: bytes, offset: int) -> tuple[int, list[bytes]]:
    if offset + _ACL_HEADER.size > len(data):
        raise ValueError("ACL outside the descriptor")
    revision, _, size, count, _ = _ACL_HEADER.unpack_from(data, offset)
    end = offset + size
    if size < _ACL_HEADER.size:
        raise ValueError("malformed ACL")
    if end > len(data):
        raise ValueError(f"ACL of {size} bytes outside the descriptor")
    aces, pos = [], offset + _ACL_HEADER.size
    for _ in range(count):
        if pos + 4 > end:
            raise ValueError("ACE outside its ACL")
        ace_size = struct.unpack_from("<H", data, pos + 2)[0]
        if ace_size < 4 or pos + ace_size > end:
            raise ValueError("malformed ACE")
        aces.append(data[pos : pos + ace_size])
        pos += ace_size
    return revision, aces


def check_security_descriptor(data: bytes) -> None:
    """ValueError unless *data* is a whole self-relative security descriptor.

    Revision 1, the self-relative flag, the 20-byte header, and every part a
    non-zero offset points to inside the descriptor, past its header: the
    owner's and the group's SIDs (header and sub-authorities), the SACL and
    the DACL (header, the size it gives, and the ACEs it counts).
    """
    if len(data) < _SD_HEADER.size:
        raise ValueError(f"{len(data)} bytes, shorter than its {_SD_HEADER.size}-byte header")
    revision, _, control, o_owner, o_group, o_sacl, o_dacl = _SD_HEADER.unpack_from(data)
    if revision != 1:
        raise ValueError(f"revision {revision}, not 1")
    if not control & SE_SELF_RELATIVE:
        raise ValueError("not self-relative")
    parts = (("owner", o_owner, _sid_at), ("group", o_group, _sid_at),
             ("SACL", o_sacl, _acl_at), ("DACL", o_dacl, _acl_at))
    for name, offset, read in parts:
        if not offset:
            continue
        if offset < _SD_HEADER.size:
            raise ValueError(f"its {name} offset {offset} points into its header")
        try:
            read(data, offset)
        except ValueError as e:
            raise ValueError(f"its {name} at offset {offset} of {len(data)} bytes: {e}") from e


def parse_security_descriptor(data: bytes) -> SecurityDescriptor:
    """Parse a self-relative descriptor; ValueError if it is not one."""
    if len(data) < _SD_HEADER.size:
        raise ValueError("security descriptor too short")
    revision, _, control, o_owner, o_group, _, o_dacl = _SD_HEADER.unpack_from(data)
    if revision != 1 or not control & SE_SELF_RELATIVE:
        raise ValueError("not a self-relative security descriptor")
    dacl: list[bytes] | None = None
    acl_revision = _ACL_REVISION
    if control & SE_DACL_PRESENT and o_dacl:
        acl_revision, dacl = _acl_at(data, o_dacl)
    return SecurityDescriptor(control, _sid_at(data, o_owner), _sid_at(data, o_group), dacl, acl_revision)


def _inherited(parent_aces: list[bytes], is_dir: bool) -> list[bytes]:
    """The ACEs a new child of a directory with DACL *parent_aces* inherits.

    A file takes the object-inherit ACEs; a directory the container-inherit
    ones (effective, and passed on unless no-propagate) and the object-inherit
    ones as inherit-only (for its files).  All are marked inherited.
    """
    out = []
    for raw in parent_aces:
        flags = raw[1]
        if not is_dir:
            if not flags & OBJECT_INHERIT_ACE:
                continue
            new = INHERITED_ACE
        elif flags & CONTAINER_INHERIT_ACE:
            passed_on = flags & (OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE)
            new = (0 if flags & NO_PROPAGATE_INHERIT_ACE else passed_on) | INHERITED_ACE
        elif flags & OBJECT_INHERIT_ACE and not flags & NO_PROPAGATE_INHERIT_ACE:
            new = OBJECT_INHERIT_ACE | INHERIT_ONLY_ACE | INHERITED_ACE
        else:
            continue
        out.append(raw[:1] + bytes([(flags & ~(_INHERIT_FLAGS | INHERITED_ACE)) | new]) + raw[2:])
    return out


#: The root of the default: owner Administrators, group SYSTEM; SYSTEM and
#: Administrators have full control, Users read and execute, all inheritable
#: (``O:BAG:SYD:(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1200a9;;;BU)``).
DEFAULT_ROOT_SD = SecurityDescriptor(
    control=SE_DACL_PROTECTED,
    owner=SID_ADMINISTRATORS,
    group=SID_SYSTEM,
    dacl=[
        ace(ACCESS_ALLOWED_ACE_TYPE, OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE, FILE_ALL_ACCESS, SID_SYSTEM),
        ace(ACCESS_ALLOWED_ACE_TYPE, OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE, FILE_ALL_ACCESS,
            SID_ADMINISTRATORS),
        ace(ACCESS_ALLOWED_ACE_TYPE, OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE, FILE_GENERIC_READ_EXECUTE,
            SID_USERS),
    ],
)


def inherit_security_descriptor(parent: bytes | None, *, is_dir: bool) -> bytes:
    """The descriptor a new file (or directory) created in a directory with descriptor *parent* gets.

    Owner and group are the parent's; the DACL is what the parent's
    inheritable ACEs give (Windows' rules, without the creator-owner
    substitutions).  A parent without a readable descriptor or without
    inheritable ACEs stands for :data:`DEFAULT_ROOT_SD`.
    """
    source = DEFAULT_ROOT_SD
    if parent is not None:
        try:
            source = parse_security_descriptor(parent)
        except ValueError:
            source = DEFAULT_ROOT_SD
    aces = _inherited(source.dacl or [], is_dir)
    if not aces:
        source = DEFAULT_ROOT_SD
        aces = _inherited(source.dacl or [], is_dir)
    child = SecurityDescriptor(
        control=SE_DACL_AUTO_INHERITED,
        owner=source.owner or SID_ADMINISTRATORS,
        group=source.group or SID_SYSTEM,
        dacl=aces,
        acl_revision=source.acl_revision,
    )
    return child.to_bytes()


def normalise(name: str) -> str:
    """An archive name as a layer path: no leading ``/`` or ``./``, no trailing ``/``."""
    return posixpath.normpath(name.lstrip("/") or ".")

"""Windows layer tarballs, byte for byte as Windows writes them.

A Windows host exports a layer through hcsshim's layer reader into go-winio's
``backuptar`` and Go's ``archive/tar``.  This module produces the same bytes
from a declarative description, independently of the code under test, so
tests can import "real" Windows layers:

* every entry of a file, directory, symlink or hard link is written in the
  PAX format: an ``x`` header named ``<dir>/PaxHeaders.0/<base>`` (mode, owner
  and time 0, no device fields) holding, in byte order of the keys,
  ``LIBARCHIVE.creationtime``, ``MSWINDOWS.fileattr``, ``MSWINDOWS.rawsd``
  (base64), ``MSWINDOWS.mountpoint``, ``MSWINDOWS.xattr.*``, ``atime``,
  ``ctime``, ``mtime`` (only with a fraction) and ``path`` (names over 100
  bytes or not ASCII); then the header itself, its mode holding only the
  file-type bits (``040000``, ``0100000``, ``0120000``; hard links 0644);
* an alternate data stream follows its file as ``<name>:<stream>``, a regular
  entry with the file's mode and times and no Windows records;
* a hard link is a second name of a file, with the file's basic information
  (attributes, creation time, times) and type ``1``;
* a deletion is a bare ustar header ``<dir>/.wh.<name>``: mode 0, time 0;
* numeric fields are zero-padded octal ending in NUL, the checksum six digits,
  NUL, space; the archive ends with two zero blocks and no more.

Times are Windows times: multiples of 100 ns.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field

BLOCK = 512
NS = 1_000_000_000

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

C_ISDIR, C_ISREG, C_ISLNK = 0o40000, 0o100000, 0o120000


# ----- security descriptors, built by hand ----------------------------------------------------------


def sid(authority: int, *subs: int) -> bytes:
    return bytes([1, len(subs)]) + authority.to_bytes(6, "big") + b"".join(struct.pack("<I", s) for s in subs)


TRUSTED_INSTALLER = sid(5, 80, 956008885, 3418522649, 1831038044, 1853292631, 2271478464)
ADMINISTRATORS = sid(5, 32, 544)
USERS = sid(5, 32, 545)
SYSTEM = sid(5, 18)


def ace(flags: int, mask: int, who: bytes, kind: int = 0) -> bytes:
    return struct.pack("<BBHI", kind, flags, 8 + len(who), mask) + who


def security_descriptor(owner: bytes, group: bytes, aces: list[bytes], control: int = 0x8404) -> bytes:
    """A self-relative descriptor laid out as Windows writes one: header, DACL, owner, group."""
    dacl = struct.pack("<BBHHH", 2, 0, 8 + sum(map(len, aces)), len(aces), 0) + b"".join(aces)
    o_dacl = 20
    o_owner = o_dacl + len(dacl)
    o_group = o_owner + len(owner)
    return struct.pack("<BBHIIII", 1, 0, control, o_owner, o_group, 0, o_dacl) + dacl + owner + group


#: A system directory: TrustedInstaller owns it, everyone reads, admins and SYSTEM write (inheritable).
DIR_SD = security_descriptor(TRUSTED_INSTALLER, SYSTEM, [
    ace(0x03, 0x1F01FF, TRUSTED_INSTALLER),
    ace(0x03, 0x1301BF, ADMINISTRATORS),
    ace(0x03, 0x1301BF, SYSTEM),
    ace(0x03, 0x1200A9, USERS),
])
#: A file that inherited the above.
FILE_SD = security_descriptor(TRUSTED_INSTALLER, SYSTEM, [
    ace(0x10, 0x1F01FF, TRUSTED_INSTALLER),
    ace(0x10, 0x1301BF, ADMINISTRATORS),
    ace(0x10, 0x1301BF, SYSTEM),
    ace(0x10, 0x1200A9, USERS),
])


# ----- the description ---------------------------------------------------------------------------


@dataclass
class Times:
    """Nanoseconds since 1970, multiples of 100 (Windows FILETIME resolution)."""

    creation: int = 1_575_700_977_123_456_700
    write: int = 1_575_700_977_123_456_700
    access: int = 1_619_767_093_000_000_000
    change: int = 1_575_700_977_523_456_700


@dataclass
class WinDir:
    path: str
    attrs: int = FILE_ATTRIBUTE_DIRECTORY
    sd: bytes | None = DIR_SD
    times: Times = field(default_factory=Times)
    eas: dict[str, bytes] = field(default_factory=dict)
    #: The descriptor as SDDL text (``MSWINDOWS.sd``, as older archives have it) instead of *sd*.
    sddl: str | None = None


@dataclass
class WinFile:
    path: str
    data: bytes = b""
    attrs: int = FILE_ATTRIBUTE_ARCHIVE
    sd: bytes | None = FILE_SD
    times: Times = field(default_factory=Times)
    streams: dict[str, bytes] = field(default_factory=dict)
    eas: dict[str, bytes] = field(default_factory=dict)


@dataclass
class WinSymlink:
    path: str
    target: str
    mountpoint: bool = False
    attrs: int = FILE_ATTRIBUTE_REPARSE_POINT | FILE_ATTRIBUTE_DIRECTORY
    sd: bytes | None = DIR_SD
    times: Times = field(default_factory=Times)


@dataclass
class WinLink:
    """A second name of the file at *target* (both in this layer)."""

    path: str
    target: str
    attrs: int = FILE_ATTRIBUTE_ARCHIVE
    times: Times = field(default_factory=Times)


@dataclass
class Tombstone:
    path: str


Entry = WinDir | WinFile | WinSymlink | WinLink | Tombstone


# ----- Go's archive/tar, as backuptar drives it ---------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, value) + b"\0"


def _text(value: bytes, width: int) -> bytes:
    return value[:width].ljust(width, b"\0")


def _checksum(blk: bytearray) -> None:
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)


def _ascii(name: str) -> bytes:
    return bytes(c for c in name.encode("utf-8") if c < 0x80)


def _header(name: str, mode: int, size: int, mtime: int, typeflag: bytes, linkname: str = "") -> bytes:
    """A PAX-or-ustar main header (Go's ``templateV7Plus``)."""
    blk = bytearray(BLOCK)
    blk[0:100] = _text(_ascii(name), 100)
    blk[100:108] = _octal(mode, 8)
    blk[108:116] = _octal(0, 8)
    blk[116:124] = _octal(0, 8)
    blk[124:136] = _octal(size, 12)
    blk[136:148] = _octal(mtime, 12)
    blk[156:157] = typeflag
    blk[157:257] = _text(_ascii(linkname), 100)
    blk[257:265] = b"ustar\x0000"
    blk[329:337] = _octal(0, 8)
    blk[337:345] = _octal(0, 8)
    _checksum(blk)
    return bytes(blk)


def _pax_header(name: str, data: bytes) -> bytes:
    """Go's ``writeRawFile`` of an extended header: the records file itself."""
    directory, _, base = name.rpartition("/")
    full = f"{directory}/PaxHeaders.0/{base}" if directory else f"PaxHeaders.0/{base}"
    raw = _ascii(full)[:100].rstrip(b"/")
    blk = bytearray(BLOCK)
    blk[0:100] = _text(raw, 100)
    blk[100:108] = _octal(0, 8)
    blk[108:116] = _octal(0, 8)
    blk[116:124] = _octal(0, 8)
    blk[124:136] = _octal(len(data), 12)
    blk[136:148] = _octal(0, 12)
    blk[156:157] = b"x"
    blk[257:265] = b"ustar\x0000"
    _checksum(blk)
    return bytes(blk) + _padded(data)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax_record(key: str, value: bytes) -> bytes:
    body = len(key) + len(value) + 3
    size = body + len(str(body))
    if len(str(size)) != len(str(body)):
        size = body + len(str(size))
    return b"%d %s=%s\n" % (size, key.encode(), value)


def pax_time(ns: int) -> bytes:
    secs, frac = divmod(ns, NS)
    return b"%d" % secs if not frac else (b"%d.%09d" % (secs, frac)).rstrip(b"0")


def _entry(name: str, mode: int, typeflag: bytes, times: Times, records: dict[str, bytes], *,
           size: int = 0, linkname: str = "") -> bytes:
    """One PAX entry: the records Go adds for the times and names, then ours, sorted."""
    records = dict(records)
    records["atime"] = pax_time(times.access)
    records["ctime"] = pax_time(times.change)
    if times.write % NS:
        records["mtime"] = pax_time(times.write)
    if len(name.encode()) > 100 or not name.isascii():
        records["path"] = name.encode()
    if len(linkname.encode()) > 100 or not linkname.isascii():
        records["linkpath"] = linkname.encode()
    data = b"".join(pax_record(k, records[k]) for k in sorted(records))
    head = _header(name, mode, size, times.write // NS, typeflag, linkname)
    return _pax_header(name, data) + head


def _basic_records(attrs: int, times: Times) -> dict[str, bytes]:
    return {"MSWINDOWS.fileattr": b"%d" % attrs, "LIBARCHIVE.creationtime": pax_time(times.creation)}


def _win_records(attrs: int, times: Times, sd: bytes | None, eas: dict[str, bytes]) -> dict[str, bytes]:
    records = _basic_records(attrs, times)
    if sd is not None:
        records["MSWINDOWS.rawsd"] = base64.b64encode(sd)
    for name, value in eas.items():
        records["MSWINDOWS.xattr." + name] = base64.b64encode(value)
    return records


def entry_bytes(e: Entry) -> bytes:
    """The bytes one described entry (with its streams) takes in the archive."""
    if isinstance(e, Tombstone):
        directory, _, base = e.path.rpartition("/")
        return _header(f"{directory}/.wh.{base}" if directory else f".wh.{base}", 0, 0, 0, b"0")
    if isinstance(e, WinDir):
        records = _win_records(e.attrs, e.times, None if e.sddl else e.sd, e.eas)
        if e.sddl:
            records["MSWINDOWS.sd"] = e.sddl.encode()
        return _entry(e.path, C_ISDIR, b"5", e.times, records)
    if isinstance(e, WinSymlink):
        records = _win_records(e.attrs, e.times, e.sd, {})
        if e.mountpoint:
            records["MSWINDOWS.mountpoint"] = b"1"
        return _entry(e.path, C_ISLNK, b"2", e.times, records, linkname=e.target)
    if isinstance(e, WinLink):
        return _entry(e.path, 0o644, b"1", e.times, _basic_records(e.attrs, e.times), linkname=e.target)
    out = _entry(e.path, C_ISREG, b"0", e.times, _win_records(e.attrs, e.times, e.sd, e.eas),
                 size=len(e.data)) + _padded(e.data)
    for stream, data in e.streams.items():
        out += _entry(f"{e.path}:{stream}", C_ISREG, b"0", e.times, {}, size=len(data)) + _padded(data)
    return out


def layer_tar(entries: list[Entry]) -> bytes:
    """The layer tarball of *entries*, in their order."""
    return b"".join(entry_bytes(e) for e in entries) + bytes(2 * BLOCK)


def regular_size(entries: list[Entry]) -> int:
    """What applying the layer returns: the sizes of its files (streams and links excluded)."""
    return sum(len(e.data) for e in entries if isinstance(e, WinFile))


# ----- ready-made layers -------------------------------------------------------------------------------

BCD_DIR = "UtilityVM/Files/EFI/Microsoft/Boot"
LONG_NAME = ("Files/Windows/WinSxS/amd64_microsoft-windows-servicingstack_31bf3856ad364e35_10.0.17763.1/"
             + "x" * 40 + ".manifest")


def base_layer() -> list[Entry]:
    """A small Windows base layer: volume, hives, a utility VM with BCD files, cross-tree links."""
    later = Times(write=1_619_767_093_400_000_000, access=1_619_767_093_400_000_000,
                  change=1_619_767_093_400_000_000, creation=1_575_700_977_000_000_000)
    return [
        WinDir("Files"),
        WinFile("Files/License.txt", b"MICROSOFT SOFTWARE LICENSE TERMS\r\n" * 20, times=later),
        WinDir("Files/ProgramData", attrs=FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_HIDDEN),
        WinDir("Files/Users"),
        WinDir("Files/Users/Public", eas={"$KERNEL.PURGE.ESBCACHE": b"\x01\x00\x02\x03"}),
        WinSymlink("Files/Users/All Users", "C:\\ProgramData"),
        WinSymlink("Files/Documents and Settings", "C:\\Users", mountpoint=True),
        WinDir("Files/Windows"),
        WinDir("Files/Windows/System32"),
        WinFile("Files/Windows/System32/notepad.exe", b"MZ" + bytes(range(256)) * 9,
                attrs=FILE_ATTRIBUTE_ARCHIVE, streams={"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=3\r\n"}),
        WinLink("Files/Windows/notepad.exe", "Files/Windows/System32/notepad.exe"),
        WinDir("Files/Windows/System32/drivers"),
        WinDir("Files/Windows/System32/drivers/etc"),
        WinFile("Files/Windows/System32/drivers/etc/hosts", b"127.0.0.1 localhost\r\n",
                attrs=FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_READONLY),
        WinFile("Files/Windows/System32/empty.log", b"", attrs=FILE_ATTRIBUTE_ARCHIVE),
        WinDir("Files/Windows/WinSxS"),
        WinFile(LONG_NAME, b"<assembly/>\r\n"),
        WinFile("Files/Windows/System32/caf\u00e9.txt", b"non-ASCII name\r\n"),
        WinDir("Hives"),
        WinFile("Hives/DefaultUser_Delta", b"regf" + bytes(1020)),
        WinFile("Hives/Sam_Delta", b"regf" + b"\x01" * 2044),
        WinFile("Hives/Security_Delta", b"regf" + b"\x02" * 508),
        WinFile("Hives/Software_Delta", b"regf" + b"\x03" * 4092),
        WinFile("Hives/System_Delta", b"regf" + b"\x04" * 3000),
        WinDir("UtilityVM", sd=None),
        WinDir("UtilityVM/Files"),
        WinDir("UtilityVM/Files/EFI"),
        WinDir("UtilityVM/Files/EFI/Microsoft"),
        WinDir(BCD_DIR),
        WinFile(f"{BCD_DIR}/BCD", b"regf BCD store" + b"\x05" * 8178,
                attrs=FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM),
        WinFile(f"{BCD_DIR}/BCD.LOG", b"log0" * 100, attrs=FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM),
        WinFile(f"{BCD_DIR}/BCD.LOG1", b"log1" * 200, attrs=FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM),
        WinFile(f"{BCD_DIR}/BCD.LOG2", b"", attrs=FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM),
        WinLink("UtilityVM/Files/License.txt", "Files/License.txt"),
        WinLink("UtilityVM/Files/notepad.exe", "Files/Windows/System32/notepad.exe"),
    ]


def child_layer() -> list[Entry]:
    """A layer on :func:`base_layer`: changed hives, a new and a changed file, a deletion."""
    now = Times(write=1_700_000_000_100_000_000, access=1_700_000_000_100_000_000,
                change=1_700_000_000_100_000_000, creation=1_700_000_000_000_000_000)
    return [
        WinDir("Files", times=now),
        Tombstone("Files/License.txt"),
        WinDir("Files/Windows", times=now),
        WinDir("Files/Windows/System32", times=now),
        WinFile("Files/Windows/System32/app.dll", b"MZ app" * 300, times=now,
                streams={"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=2\r\n", "extra": b"more"}),
        WinDir("Files/Windows/System32/drivers", times=now),
        WinDir("Files/Windows/System32/drivers/etc", times=now),
        WinFile("Files/Windows/System32/drivers/etc/hosts", b"127.0.0.1 localhost\r\n10.0.0.1 db\r\n",
                times=now),
        Tombstone("Files/Windows/System32/empty.log"),
        WinDir("Hives", times=now),
        WinFile("Hives/DefaultUser_Delta", b"regf" + b"\x11" * 1020, times=now),
        WinFile("Hives/Sam_Delta", b"regf" + b"\x12" * 1020, times=now),
        WinFile("Hives/Security_Delta", b"regf" + b"\x13" * 1020, times=now),
        WinFile("Hives/Software_Delta", b"regf" + b"\x14" * 5000, times=now),
        WinFile("Hives/System_Delta", b"regf" + b"\x15" * 1020, times=now),
    ]

"""tar-split metadata: what it takes to rebuild a tarball byte for byte from its files.

The format is github.com/vbatts/tar-split's: newline-separated JSON objects,
gzip-compressed by whoever stores them, each one either

- a *segment* (``"type": 2``): raw bytes of the archive that are not file
  content (header blocks, padding, end-of-archive blocks, trailing bytes),
  base64 in ``payload``; or
- a *file* (``"type": 1``): one archive member's ``name`` (or ``name_raw``,
  base64 bytes, for names that are not UTF-8), its content ``size``, and in
  ``payload`` the big-endian CRC-64/ISO of its content (``null`` when empty).

Every entry carries ``position``, its index in the stream.  Reassembly writes
segments as they are and file contents fetched by name from a file getter,
checking each file's CRC, so a changed file fails loudly instead of producing a
tarball with the wrong bytes.

The recorder follows the entry framing tar-split's own disassembler produces
(header segment, file entry, padding segment), so metadata made here and there
is interchangeable.
"""

from __future__ import annotations

import base64
import json
import re
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol

from graphdriver.archive.crc64 import crc64_iso, digest
from graphdriver.archive.entry import TarEntry
from graphdriver.errors import IntegrityError

SEGMENT = 2
FILE = 1

_PLAIN_NAME = re.compile(r'[^"\\\x00-\x1f\x7f-\U0010ffff]*')


def _json_string(text: str) -> bytes:
    """*text* as a JSON string (fast path for the plain ASCII names of most archives)."""
    if text.isascii() and _PLAIN_NAME.fullmatch(text):
        return b'"' + text.encode("ascii") + b'"'
    return json.dumps(text).encode("ascii")


@dataclass(slots=True)
class SplitEntry:
    """One tar-split entry."""

    type: int
    payload: bytes | None = None
    name: bytes = b""
    size: int = 0
    position: int = 0

    def to_json(self) -> bytes:
        """One JSON line, fields in the order Go's encoder writes them.

        Formatted by hand: this runs twice per archive member on import, and
        ``json.dumps`` of a small dict costs more than the rest of the entry.
        """
        payload = b"null" if self.payload is None else b'"' + b64encode(self.payload) + b'"'
        if self.type == SEGMENT:
            return b'{"type":2,"payload":%s,"position":%d}' % (payload, self.position)
        try:
            name = b'"name":' + _json_string(self.name.decode("utf-8"))
        except UnicodeDecodeError:
            name = b'"name_raw":"' + b64encode(self.name) + b'"'
        size = b'"size":%d,' % self.size if self.size else b""
        return b'{"type":1,%s,%s"payload":%s,"position":%d}' % (name, size, payload, self.position)

    @classmethod
    def from_json(cls, line: bytes, where: int) -> SplitEntry:
        try:
            value = json.loads(line)
            kind = int(value["type"])
            payload = value.get("payload")
            raw = base64.b64decode(payload, validate=True) if payload is not None else None
            if "name_raw" in value and value["name_raw"] is not None:
                name = base64.b64decode(value["name_raw"], validate=True)
            else:
                name = str(value.get("name", "")).encode("utf-8", "surrogateescape")
            size = int(value.get("size", 0) or 0)
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError("tar-split metadata", f"malformed entry on line {where}: {e}") from e
        if kind not in (FILE, SEGMENT) or size < 0:
            raise IntegrityError("tar-split metadata", f"invalid entry on line {where}")
        return cls(kind, raw, name, size, int(value.get("position", where - 1)))


class Packer:
    """Writes tar-split entries, one JSON line each, to a (compressing) stream."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._position = 0

    def add(self, entry: SplitEntry) -> None:
        entry.position = self._position
        self._position += 1
        self._out.write(entry.to_json() + b"\n")

    def segment(self, data: bytes) -> None:
        if data:
            self.add(SplitEntry(SEGMENT, bytes(data)))

    def file(self, name: bytes, size: int, crc: int | None) -> None:
        self.add(SplitEntry(FILE, digest(crc) if crc is not None and size else None, name, size))


class Recorder:
    """Turns a tar reader's byte stream into tar-split entries, in the same pass.

    Wire it to :class:`~graphdriver.archive.tarstream.TarReader` as
    ``raw_sink=rec.raw, data_sink=rec.data`` and call :meth:`header` with every
    entry ``next()`` returns, then :meth:`finish` at the end.
    """

    def __init__(self, packer: Packer) -> None:
        self._packer = packer
        self._pending = bytearray()
        self._name = b""
        self._size = 0
        self._remaining = 0
        self._crc = 0

    def raw(self, data: bytes | memoryview) -> None:
        self._pending += data

    def data(self, chunk: bytes | memoryview) -> None:
        self._crc = crc64_iso(chunk, self._crc)
        self._remaining -= len(chunk)
        if self._remaining <= 0:
            self._packer.file(self._name, self._size, self._crc)

    def header(self, entry: TarEntry) -> None:
        # The previous entry's padding and this header are one segment, as the
        # Go disassembler frames them (its reader skips padding inside Next).
        self._packer.segment(bytes(self._pending))
        self._pending.clear()
        self._name = entry.name_bytes
        self._size = self._remaining = entry.size
        self._crc = 0
        if entry.size == 0:
            self._packer.file(self._name, 0, None)

    def finish(self) -> None:
        """Flush the last padding, the end-of-archive blocks and any trailing bytes.

        Framed as the Go disassembler does: padding plus the end blocks the
        reader consumed, then whatever follows them, then an empty segment.
        """
        pending = bytes(self._pending)
        self._pending.clear()
        # The reader's last call consumed the padding, any headers without an
        # entry, and up to two zero blocks; what follows is trailing data.
        end = (-self._size) % 512
        zero_blocks = 0
        while end < len(pending) and zero_blocks < 2:
            block = pending[end : end + 512]
            end += len(block)
            zero_blocks += block.count(0) == len(block)
        self._packer.segment(pending[:end])
        self._packer.segment(pending[end:])
        self._packer.add(SplitEntry(SEGMENT, b""))


def read_entries(stream: BinaryIO) -> Iterator[SplitEntry]:
    """The entries of decompressed tar-split metadata, in order."""
    for number, line in enumerate(stream, start=1):
        line = line.strip()
        if line:
            yield SplitEntry.from_json(line, number)


class FileSource(Protocol):
    """Where reassembly gets file contents (a driver's diff getter)."""

    def open(self, name: str) -> BinaryIO: ...


CHUNK = 1 << 20


def assemble(
    entries: Iterator[SplitEntry],
    files: FileSource,
    write: Callable[[bytes | memoryview], object],
) -> int:
    """Rebuild the tarball from *entries* and *files*, passing its bytes to *write*.

    Raises IntegrityError when a file is missing, shorter or longer than
    recorded, or its CRC differs.  Returns the number of bytes written.
    *write* must be done with the bytes it is given when it returns (the
    buffer is reused).
    """
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for entry in entries:
        if entry.type == SEGMENT:
            if entry.payload:
                write(entry.payload)
                total += len(entry.payload)
            continue
        if entry.size == 0:
            continue
        total += _copy_file(entry, files, write, view)
    return total


def _copy_file(
    entry: SplitEntry,
    files: FileSource,
    write: Callable[[bytes | memoryview], object],
    view: memoryview,
) -> int:
    """Copy one file's content, checked against its recorded size and CRC.

    Files up to :data:`VERIFY_BEFORE_WRITE` bytes are checked before a byte of
    them is written, so a changed small file never reaches the output; larger
    ones are streamed (memory stays flat) and a mismatch fails at their end.
    """
    name = entry.name.decode("utf-8", "surrogateescape")
    try:
        f = files.open(name)
    except (OSError, LookupError) as e:
        raise IntegrityError(f"file {name!r}", f"missing from the layer: {e}") from e
    except Exception as e:
        if getattr(e, "exit_code", None) == 3:  # NotFound from a getter
            raise IntegrityError(f"file {name!r}", "missing from the layer") from e
        raise
    with f:
        if entry.size <= VERIFY_BEFORE_WRITE:
            data = f.read(entry.size + 1)
            _check_length(name, entry.size, len(data))
            _check_crc(name, entry, crc64_iso(data, 0))
            write(data)
            return entry.size
        crc = 0
        remaining = entry.size
        while remaining > 0:
            n = f.readinto(view[: min(len(view), remaining)])  # type: ignore[attr-defined]
            if not n:
                _check_length(name, entry.size, entry.size - remaining)
            chunk = view[:n]
            crc = crc64_iso(chunk, crc)
            write(chunk)
            remaining -= n
        _check_length(name, entry.size, entry.size + len(f.read(1)))
    _check_crc(name, entry, crc)
    return entry.size


VERIFY_BEFORE_WRITE = 16 << 20


def _check_length(name: str, expected: int, actual: int) -> None:
    if actual != expected:
        how = "shorter" if actual < expected else "longer"
        raise IntegrityError(f"file {name!r}", f"{how} than the {expected} bytes recorded")


def _check_crc(name: str, entry: SplitEntry, crc: int) -> None:
    if entry.payload is not None and digest(crc) != entry.payload:
        raise IntegrityError(f"file {name!r}", "content differs from the recorded checksum")

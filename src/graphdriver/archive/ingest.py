"""One pass over a layer tarball: sniff, hash, decompress, hash, record tar-split, extract.

Every byte of the input is read once.  The compressed bytes are hashed as
they are read (``compressed_digest``); the decompressed stream goes through
the tar reader, whose raw and data sinks see every uncompressed byte exactly
once, in order, so they feed the DiffID hash and the tar-split recorder at
the same time as the extractor writes the files.  Memory stays flat: nothing
holds a file or the tarball.

The whole pass runs in the confined child of :func:`confine.run_confined`;
only the small :class:`IngestResult` comes back.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from graphdriver.archive import confine
from graphdriver.archive.compression import Compression, open_compressor, open_decompressed
from graphdriver.archive.entry import TarEntry
from graphdriver.archive.tarsplit import Packer, Recorder
from graphdriver.archive.tarstream import TarReader

#: What applies the entries inside the child: (entries, confined dirs) -> size.
ApplyFn = Callable[["RecordingReader", confine.ConfinedDirs], int]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestResult:
    """What one pass learnt about a layer tarball."""

    size: int
    diff_digest: str
    uncompressed_size: int
    compressed_digest: str
    compressed_size: int
    compression: str


class _HashingReader:
    """Hashes and counts the bytes read through it (the compressed input)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)  # type: ignore[attr-defined]
        if n:
            self.hash.update(memoryview(buf)[:n])
            self.count += n
        return int(n or 0)

    read1 = read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # a seek back would hash bytes twice: sniffing must buffer instead

    @property
    def closed(self) -> bool:
        return False

    def drain(self) -> None:
        """Read what the decompressor left (trailing bytes still count in the digest)."""
        while self.read(_CHUNK):
            pass


class RecordingReader:
    """A :class:`TarReader` whose every entry is also announced to a tar-split recorder."""

    def __init__(self, reader: TarReader, recorder: Recorder | None) -> None:
        self._reader = reader
        self._recorder = recorder

    def next(self) -> TarEntry | None:
        entry = self._reader.next()
        if entry is not None and self._recorder is not None:
            self._recorder.header(entry)
        return entry

    def copy_to_fd(self, fd: int) -> int:
        return self._reader.copy_to_fd(fd)

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def ingest(
    stream: BinaryIO,
    dest: str,
    apply: ApplyFn,
    *,
    extra_dirs: Sequence[str] = (),
    tarsplit_out: BinaryIO | None = None,
    inline: bool | None = None,
) -> IngestResult:
    """Apply the (possibly compressed) layer tarball *stream* to *dest* in one pass.

    *apply* does the extraction inside the confined child; *tarsplit_out*, if
    given, receives the gzip-compressed tar-split metadata (flushed and
    fsynced before this returns).  The pipeline is built here, before the
    child starts: a chrooted child can import nothing more.
    """
    pipeline = _Pipeline(stream, tarsplit_out)

    def work(dirs: confine.ConfinedDirs) -> IngestResult:
        return pipeline.run(apply, dirs)

    return confine.run_confined(dest, work, extra_dirs=extra_dirs, inline=inline)


class _Pipeline:
    """Compressed hash -> decompressor -> tar reader (DiffID hash, tar-split) -> extractor."""

    def __init__(self, stream: BinaryIO, tarsplit_out: BinaryIO | None) -> None:
        self.compressed = _HashingReader(stream)
        self.plain, self.kind = open_decompressed(self.compressed)  # type: ignore[arg-type]
        self.diff_hash = hashlib.sha256()
        self.count = 0
        self.tarsplit_out = tarsplit_out
        self.packer_out: BinaryIO | None = None
        self.recorder: Recorder | None = None
        if tarsplit_out is not None:
            # The compressor itself is made in the child (it writes a header at
            # once, which must not sit in a buffer the parent flushes too); make
            # one here only so that its modules are imported before any chroot.
            open_compressor(io.BytesIO(), Compression.GZIP, 1).close()
        self.reader = TarReader(self.plain, raw_sink=self._raw, data_sink=self._data)

    def _raw(self, data: bytes) -> None:
        self.diff_hash.update(data)
        self.count += len(data)
        if self.recorder is not None:
            self.recorder.raw(data)

    def _data(self, data: memoryview) -> None:
        self.diff_hash.update(data)
        self.count += len(data)
        if self.recorder is not None:
            self.recorder.data(data)

    def run(self, apply: ApplyFn, dirs: confine.ConfinedDirs) -> IngestResult:
        if self.tarsplit_out is not None:
            self.packer_out = open_compressor(self.tarsplit_out, Compression.GZIP, 1)
            self.recorder = Recorder(Packer(self.packer_out))
        size = apply(RecordingReader(self.reader, self.recorder), dirs)
        self.reader.trailing  # noqa: B018 - reading it to the end feeds the sinks every byte
        self.compressed.drain()
        if self.recorder is not None and self.packer_out is not None:
            self.recorder.finish()
            self.packer_out.close()
        if self.tarsplit_out is not None:
            self.tarsplit_out.flush()
            os.fsync(self.tarsplit_out.fileno())
        return IngestResult(
            size=size,
            diff_digest="sha256:" + self.diff_hash.hexdigest(),
            uncompressed_size=self.count,
            compressed_digest="sha256:" + self.compressed.hash.hexdigest(),
            compressed_size=self.compressed.count,
            compression=self.kind.value,
        )

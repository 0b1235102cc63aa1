"""One pass over a layer tarball: sniff, hash, decompress, hash, record tar-split, extract.

Every byte of the input is read once.  A read-ahead thread reads the input,
hashes the compressed bytes (``compressed_digest``), decompresses them and
hashes the result (the DiffID), a chunk at a time and mostly outside the GIL;
an uncompressed input is hashed once, its two digests being the same.  The
tar reader parses the chunks in the calling thread; its raw and data sinks see
every uncompressed byte exactly once, in order, and feed the tar-split recorder
while the extractor writes the files.  Memory stays flat: nothing holds a file
or the tarball.

The whole pass runs in the confined child of :func:`confine.run_confined`;
only the small :class:`IngestResult` comes back.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from graphdriver.fs import confine
from graphdriver.layerio.compression import Compression, open_compressor, open_decompressed
from graphdriver.layerio.entry import TarEntry
from graphdriver.layerio.reproducible import ReproducibilityCheck
from graphdriver.layerio.tarsplit import recorder
from graphdriver.layerio.tarstream import TarReader
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from graphdriver.layerio.tarsplit import Sinks

#: What applies the entries inside the child: (entries, root fd, lower fds) -> size.
ApplyFn = Callable[["RecordingReader", int, tuple[int, ...]], int]

_CHUNK = 1 << 20
# Chunks read ahead of the parser: enough to ride out a slow entry, little memory.
_DEPTH = 4
# How long closing waits for the read-ahead thread to stop (seconds).
_STOP_WAIT = 1.0


class IngestResult(Plain):
    """What one pass learnt about a layer tarball."""

    __slots__ = ("compressed_digest", "compressed_size", "compression", "diff_digest", "repeated",
                 "size", "uncompressed_size", "unreproducible")

    def __init__(self, size: int, diff_digest: str, uncompressed_size: int, compressed_digest: str,
                 compressed_size: int, compression: str, unreproducible: str | None = None,
                 repeated: tuple[str, ...] = ()) -> None:
        self.size = size
        self.diff_digest = diff_digest
        self.uncompressed_size = uncompressed_size
        self.compressed_digest = compressed_digest
        self.compressed_size = compressed_size
        self.compression = compression
        #: Why the tarball cannot be rebuilt from its files (tar-split is then useless).
        self.unreproducible = unreproducible
        #: Files given twice with content: rebuilt exactly only if each time with the same
        #: bytes, which the tar-split metadata tells (:func:`.tarsplit.first_rewritten`).
        self.repeated = repeated


class _HashingReader:
    """Hashes and counts the bytes read through it (the compressed input).

    ``hashing`` is switched off when the input turns out not to be compressed:
    its digest is then the DiffID, which the read-ahead thread computes anyway.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.hashing = True
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if self.hashing:
            self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)  # type: ignore[attr-defined]
        if n:
            if self.hashing:
                self.hash.update(memoryview(buf)[:n])
            self.count += n
        return int(n or 0)

    read1 = read

    def peek(self, n: int = 1) -> bytes:
        """Look ahead without consuming (nothing is hashed twice); b"" if the stream cannot."""
        peek = getattr(self._raw, "peek", None)
        return b"" if peek is None else bytes(peek(n))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # a seek back would hash bytes twice: sniffing must peek or buffer instead

    @property
    def closed(self) -> bool:
        return False

    def drain(self) -> None:
        """Read what the decompressor left (trailing bytes still count in the digest)."""
        while self.read(_CHUNK):
            pass


class _ReadAhead:
    """The decompressed stream, read and hashed a few chunks ahead in a thread.

    Reading, decompressing and hashing (the DiffID, and the compressed digest
    inside the decompressor's reads) run in C with the GIL released, so on a
    second core they overlap with parsing and extraction instead of adding to
    them.  Whole chunks are hashed in one call each, not entry by entry.  The
    queue is bounded: memory stays at a few chunks whatever the layer size.
    A failure of the stream is raised by the :meth:`read` that reaches it.
    """

    def __init__(self, source: BinaryIO, compressed: _HashingReader) -> None:
        self._source = source
        self._compressed = compressed
        self.hash = hashlib.sha256()
        self.count = 0
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._done = False
        self._left = memoryview(b"")
        self._thread = threading.Thread(target=self._run, name="graphdriver-read-ahead", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        item: BaseException | None = None
        try:
            while not self._stop.is_set():
                data = self._source.read(_CHUNK)
                if not data:
                    # Bytes after the compressed stream still count in its digest.
                    self._compressed.drain()
                    break
                self.hash.update(data)
                self.count += len(data)
                self._queue.put(data)
        except BaseException as e:  # handed to the reading thread, which raises it
            item = e
        if not self._stop.is_set():
            self._queue.put(item)

    def read(self, n: int = -1) -> bytes:
        """Up to *n* bytes (all that is left if *n* < 0); b"" at the end."""
        if n < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        if not self._left:
            if self._done:
                return b""
            item = self._queue.get()
            if item is None or isinstance(item, BaseException):
                self._done = True
                if item is not None:
                    raise item
                return b""
            if n >= len(item):
                return item  # the usual case: the tar reader asks for a chunk or more
            self._left = memoryview(item)
        out = bytes(self._left[:n])
        self._left = self._left[n:]
        return out

    def close(self) -> None:
        """Stop the thread, unblocking it if the queue is full."""
        self._stop.set()
        # It stops after its current read; a source that never answers (a
        # stalled pipe) is left to the daemon thread rather than hanging here.
        deadline = time.monotonic() + _STOP_WAIT
        while self._thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)


#: What *apply* functions read: a tar reader whose raw, data and entry sinks feed
#: the tar-split recorder, so that every entry is recorded as it is read (the
#: reader itself, with no wrapper between: this runs for every entry).
RecordingReader = TarReader


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
    pipeline = _Pipeline(stream, tarsplit_out, apply)
    return confine.run_confined(dest, pipeline.run, extra_dirs=extra_dirs, inline=inline)


def _read_sequentially(stream: BinaryIO) -> None:
    """Tell the kernel a file input is read once, front to back (a larger read-ahead from disk)."""
    try:
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass  # a pipe, a memory stream: nothing to tell


class _Pipeline:
    """Compressed hash, decompressor, DiffID (read-ahead thread) -> tar reader, tar-split -> extractor."""

    def __init__(self, stream: BinaryIO, tarsplit_out: BinaryIO | None, apply: ApplyFn) -> None:
        _read_sequentially(stream)
        self.apply = apply
        self.compressed = _HashingReader(stream)
        self.plain, self.kind = open_decompressed(self.compressed)  # type: ignore[arg-type]
        if self.kind is Compression.NONE:
            self.compressed.hashing = False  # the same bytes: hash them once
        self.tarsplit_out = tarsplit_out
        if tarsplit_out is not None:
            # The compressor itself is made in the child (it writes a header at
            # once, which must not sit in a buffer the parent flushes too); make
            # one here only so that its modules are imported before any chroot.
            open_compressor(io.BytesIO(), Compression.GZIP, 1).close()

    def run(self, dirs: confine.ConfinedDirs) -> IngestResult:
        """The pass itself, in the confined child: *dirs* are the target and the lower layers."""
        # Threads do not survive fork: the read-ahead starts here, in the child.
        ahead = _ReadAhead(self.plain, self.compressed)
        packer_out: BinaryIO | None = None
        rec: Sinks | None = None
        if self.tarsplit_out is not None:
            packer_out = open_compressor(self.tarsplit_out, Compression.GZIP, 1)
            rec = recorder(packer_out)
        check = ReproducibilityCheck()
        entry_sink = None
        if rec is not None:
            header, see = rec.header, check.see

            def entry_sink(entry: TarEntry) -> None:
                header(entry)
                see(entry)

        reader = TarReader(
            ahead,  # type: ignore[arg-type]
            raw_sink=None if rec is None else rec.raw,
            data_sink=None if rec is None else rec.data,
            entry_sink=entry_sink,
            bufsize=_CHUNK,
        )
        ahead.start()
        # The loop makes no reference cycles (its objects go with their
        # refcounts; a test holds it to that), so the cycle collector would
        # only walk the heap again and again for nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            size = self.apply(reader, dirs.root_fd, dirs.extra_fds)
            # Raises unless the reader saw the end of the stream: only then is
            # the digest of what the thread read that of the tarball.
            reader.trailing  # noqa: B018
        finally:
            if collecting:
                gc.enable()
            ahead.close()
        if rec is not None and packer_out is not None:
            rec.finish()
            packer_out.close()
        if self.tarsplit_out is not None:
            self.tarsplit_out.flush()
            os.fsync(self.tarsplit_out.fileno())
        diff_digest = "sha256:" + ahead.hash.hexdigest()
        plain = self.kind is Compression.NONE
        return IngestResult(
            size=size,
            diff_digest=diff_digest,
            uncompressed_size=ahead.count,
            compressed_digest=diff_digest if plain else "sha256:" + self.compressed.hash.hexdigest(),
            compressed_size=self.compressed.count,
            compression=self.kind.value,
            unreproducible=check.reason,
            repeated=() if check.reason else tuple(sorted(check.repeated)),
        )

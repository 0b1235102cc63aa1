"""Compression sniffing, decompression (pipes included) and compression."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
import threading
from typing import Any, BinaryIO, cast

import pytest

from graphdriver.errors import ArchiveError, Unsupported
from graphdriver.layerio.compression import (
    Compression,
    open_compressor,
    open_decompressed,
    sniff,
)
from graphdriver.layerio.tarstream import TarReader
from tests.conftest import corpus_files

PAYLOAD = b"".join(b"line %d of a layer tarball\n" % i for i in range(20000))
KINDS = list(Compression)




def compress(kind: Compression, data: bytes, level: int | None = None) -> bytes:
    out = io.BytesIO()
    w = open_compressor(out, kind, level)
    w.write(data)
    w.close()
    assert not out.closed
    return out.getvalue()


def decompress(blob: bytes) -> tuple[bytes, Compression]:
    reader, kind = open_decompressed(io.BytesIO(blob))
    return reader.read(), kind


def through_pipe(blob: bytes, chunk: int = 3) -> BinaryIO:
    """A non-seekable stream delivering ``blob`` in small pieces."""
    rfd, wfd = os.pipe()

    def feed() -> None:
        # Tiny writes first, so that sniffing sees short reads; then big ones.
        with os.fdopen(wfd, "wb", buffering=0) as w:
            pos = 0
            while pos < len(blob):
                n = chunk if pos < 64 else 65536
                w.write(blob[pos : pos + n])
                pos += n

    threading.Thread(target=feed, daemon=True).start()
    return cast(BinaryIO, os.fdopen(rfd, "rb", buffering=0))


def test_sniff() -> None:
    assert sniff(b"\x1f\x8b\x08\x00") is Compression.GZIP
    assert sniff(b"\x28\xb5\x2f\xfd\x00") is Compression.ZSTD
    assert sniff(b"\xfd7zXZ\x00\x00") is Compression.XZ
    assert sniff(b"BZh91AY") is Compression.BZIP2
    assert sniff(b"") is Compression.NONE
    assert sniff(b"\x1f") is Compression.NONE
    assert sniff(b"\xfd7zXZ") is Compression.NONE  # needs all six bytes
    assert sniff(b"file.txt\x00\x00") is Compression.NONE


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind: Compression) -> None:
    blob = compress(kind, PAYLOAD)
    assert sniff(blob) is kind
    assert decompress(blob) == (PAYLOAD, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_pipe(kind: Compression) -> None:
    reader, got = open_decompressed(through_pipe(compress(kind, PAYLOAD)))
    assert got is kind
    assert reader.read() == PAYLOAD


@pytest.mark.parametrize("data", [b"", b"a", b"abcde", b"abcdef", b"\x1f"])
def test_tiny_uncompressed_inputs(data: bytes) -> None:
    for stream in (io.BytesIO(data), through_pipe(data, 1)):
        reader, kind = open_decompressed(stream)
        assert kind is Compression.NONE
        assert reader.read() == data


@pytest.mark.parametrize("first", ["BZhello", "\x1f\x8bname", "(\xb5/\xfdname", "\xfd7zXZ\x00", "BZh91AY"])
def test_a_plain_tarball_whose_first_name_starts_like_a_magic_is_plain(first: str) -> None:
    """Its first block is a tar header (its checksum says so): no compressed stream starts so."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo(first.rstrip("\x00"))
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert sniff(data) is not Compression.NONE  # what the first bytes alone would say
    for stream in (io.BytesIO(data), through_pipe(data, 7)):
        reader, kind = open_decompressed(stream)
        assert kind is Compression.NONE and reader.read() == data


@pytest.mark.parametrize(
    ("kind", "levels"),
    [
        (Compression.GZIP, [0, 1, 6, 9]),
        (Compression.ZSTD, [1, 19]),
        (Compression.XZ, [0, 9]),
        (Compression.BZIP2, [1, 9]),
    ],
)
def test_levels(kind: Compression, levels: list[int]) -> None:
    for level in levels:
        assert decompress(compress(kind, PAYLOAD, level))[0] == PAYLOAD


@pytest.mark.parametrize("kind", KINDS)
def test_concatenated_streams_are_read_fully(kind: Compression) -> None:
    blob = compress(kind, b"first ") + compress(kind, b"second")
    if kind is Compression.NONE:
        return
    assert decompress(blob) == (b"first second", kind)


def test_foreign_multi_member_gzip_and_streams() -> None:
    assert decompress(gzip.compress(b"a") + gzip.compress(b"b"))[0] == b"ab"
    assert decompress(lzma.compress(b"a") + lzma.compress(b"b"))[0] == b"ab"
    assert decompress(bz2.compress(b"a") + bz2.compress(b"b"))[0] == b"ab"


def test_gzip_output_is_deterministic() -> None:
    a, b = compress(Compression.GZIP, PAYLOAD), compress(Compression.GZIP, PAYLOAD)
    assert a == b
    assert a[4:8] == bytes(4)  # no timestamp
    assert not a[3] & 0x08  # no file name


@pytest.mark.skipif(hasattr(gzip.GzipFile, "_write_raw"), reason="this Python's GzipFile buffers writes")
@pytest.mark.parametrize("level", [None, 0, 1, 3, 5, 9])
def test_gzip_writer_writes_igzipfiles_bytes(level: int | None) -> None:
    # Our framing around isal's deflate (isal.igzip would load gzip and typing)
    # must write what IGzipFile writes, write for write.
    from isal import igzip, isal_zlib

    from graphdriver.layerio.compression import _IsalGzipWriter

    pieces = [b"", b"a", os.urandom(1000), b"x" * 300_000, PAYLOAD[:70_000], PAYLOAD]
    isal_level = 2 if level is None else (0 if level <= 0 else min(3, (level + 2) // 3))
    ours = io.BytesIO()
    w = _IsalGzipWriter(ours, isal_level, isal_zlib)  # what open_compressor makes with isal
    theirs = io.BytesIO()
    g = igzip.IGzipFile("", "wb", isal_level, theirs, mtime=0)  # type: ignore[no-untyped-call]
    for piece in pieces:
        w.write(piece)
        g.write(piece)
    w.close()
    g.close()
    assert ours.getvalue() == theirs.getvalue()
    assert gzip.decompress(ours.getvalue()) == b"".join(pieces)
    assert not ours.closed  # closing ends the stream, not the target
    with pytest.raises(ValueError):
        w.write(b"more")


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not Compression.NONE])
def test_corrupt_data(kind: Compression) -> None:
    blob = compress(kind, PAYLOAD)
    for bad in (blob[: len(blob) // 2], blob[:12] + bytes(64) + blob[76:]):
        reader, got = open_decompressed(io.BytesIO(bad))
        assert got is kind
        with pytest.raises(ArchiveError, match=f"corrupt {kind.value} data: "):
            reader.read()


def test_corrupt_gzip_message() -> None:
    reader, _ = open_decompressed(io.BytesIO(b"\x1f\x8b\x08\x00" + bytes(6) + b"garbage!" * 8))
    with pytest.raises(ArchiveError, match=r"^archive: corrupt gzip data: "):
        reader.read()


def test_gzip_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)
    blob = compress(Compression.GZIP, PAYLOAD, 9)
    assert decompress(blob) == (PAYLOAD, Compression.GZIP)
    reader, _ = open_decompressed(io.BytesIO(blob[:100]))
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        reader.read()


def test_zstd_without_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = compress(Compression.ZSTD, b"x")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(Unsupported, match="zstandard package"):
        open_decompressed(io.BytesIO(blob))
    with pytest.raises(Unsupported):
        open_compressor(io.BytesIO(), Compression.ZSTD)


def test_io_errors_are_not_reported_as_corruption() -> None:
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self._sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            if not self._sent:
                head = gzip.compress(PAYLOAD)[:40]
                buf[: len(head)] = head
                self._sent = True
                return len(head)
            raise OSError(5, "Input/output error")

    stream: Any = Failing()
    with pytest.raises(OSError) as info:  # while sniffing the first block, or reading on
        reader, _ = open_decompressed(stream)
        reader.read()
    assert not isinstance(info.value, ArchiveError) and info.value.errno == 5


def test_closing_leaves_target_open() -> None:
    for kind in KINDS:
        out = io.BytesIO()
        w = open_compressor(out, kind)
        w.write(b"data")
        w.close()
        assert not out.closed
        src = io.BytesIO(out.getvalue())
        reader, _ = open_decompressed(src)
        reader.read()
        if kind is not Compression.NONE:
            reader.close()
            assert not src.closed


def test_layer_through_pipe_into_tar_reader() -> None:
    for path in corpus_files("tar-split"):
        blob = path.read_bytes()
        reader, kind = open_decompressed(through_pipe(blob, 5))
        assert kind is Compression.GZIP
        parts: list[bytes | memoryview] = []
        tar = TarReader(reader, raw_sink=parts.append, data_sink=parts.append)
        assert list(tar)
        assert b"".join(parts) == gzip.decompress(blob)


def test_zstd_truncation_is_detected_at_any_point() -> None:
    zstandard = pytest.importorskip("zstandard")
    frames = [
        zstandard.ZstdCompressor().compress(PAYLOAD[:5000]),
        zstandard.ZstdCompressor(write_checksum=True, level=19).compress(PAYLOAD),
        zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 300000),
        (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!",
    ]
    out = io.BytesIO()
    with zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False) as w:
        w.write(b"streamed" * 1000)
    frames.append(out.getvalue())
    blob = b"".join(frames)
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    want = PAYLOAD[:5000] + PAYLOAD + b"a" * 300000 + b"streamed" * 1000
    assert decompress(blob) == (want, Compression.ZSTD)
    cuts = set(range(5, len(blob), max(1, len(blob) // 400))) | ends | {e - 1 for e in ends}
    for cut in sorted(cuts):
        reader, _ = open_decompressed(io.BytesIO(blob[:cut]))
        if cut in ends:
            reader.read()
        else:
            with pytest.raises(ArchiveError, match="corrupt zstd data"):
                reader.read()


@pytest.fixture(params=["isal", "pure"])
def gzip_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """gzip through isal (skipped where it does not load) or the standard library's zlib."""
    if request.param == "pure":
        monkeypatch.setenv("GRAPHDRIVER_PURE", "1")
    else:
        monkeypatch.delenv("GRAPHDRIVER_PURE", raising=False)
        pytest.importorskip("isal")
    value: str = request.param
    return value


@pytest.mark.parametrize("tail", [b"g", b"garbage!!", b"garbage!" * 20, b"\0\0garbage", b"PK\x03\x04"])
def test_gzip_trailing_garbage_is_named_the_same_by_both_twins(gzip_twin: str, tail: bytes) -> None:
    blob = compress(Compression.GZIP, PAYLOAD) + tail
    reader, _ = open_decompressed(io.BytesIO(blob))
    with pytest.raises(ArchiveError) as failure:
        reader.read()
    assert str(failure.value) == (
        "archive: corrupt gzip data: trailing bytes after the gzip stream are not gzip"
    )


@pytest.mark.parametrize("cut", [5, 1, 0])
def test_gzip_truncation_is_named_the_same_by_both_twins(gzip_twin: str, cut: int) -> None:
    blob = compress(Compression.GZIP, PAYLOAD)
    bad = blob[:-cut] if cut else blob + b"\x1f\x8b"  # 0: a second member cut in its header
    reader, _ = open_decompressed(io.BytesIO(bad))
    with pytest.raises(ArchiveError, match=r"corrupt gzip data: the data ends inside a gzip member"):
        reader.read()


def test_gzip_zero_padding_and_members_after_it_are_read(gzip_twin: str) -> None:
    blob = compress(Compression.GZIP, PAYLOAD)
    assert decompress(blob + bytes(700) + blob + bytes(3)) == (PAYLOAD * 2, Compression.GZIP)
    assert decompress(through_pipe(blob + bytes(5)).read()) == (PAYLOAD, Compression.GZIP)


@pytest.mark.parametrize("kind", [Compression.XZ, Compression.BZIP2])
@pytest.mark.parametrize("tail", [b"g", b"GARBAGE", b"\0\0garbage", b"\x1f\x8b\x08"])
def test_xz_and_bzip2_trailing_garbage_is_corrupt_as_gzips(kind: Compression, tail: bytes) -> None:
    """Python's own readers of these formats stop quietly at bytes that do not decompress."""
    reader, _ = open_decompressed(io.BytesIO(compress(kind, PAYLOAD) + tail))
    with pytest.raises(ArchiveError) as failure:
        reader.read()
    name = kind.value
    said = f"corrupt {name} data: trailing bytes after the {name} stream are not {name}"
    assert str(failure.value) == f"archive: {said}"


@pytest.mark.parametrize("kind", [Compression.XZ, Compression.BZIP2])
def test_xz_and_bzip2_zero_padding_streams_after_it_and_truncation(kind: Compression) -> None:
    blob = compress(kind, PAYLOAD)
    assert decompress(blob + bytes(8) + blob + bytes(4)) == (PAYLOAD * 2, kind)
    assert decompress(through_pipe(blob + bytes(5) + blob, chunk=7).read()) == (PAYLOAD * 2, kind)
    for bad in (blob[:-3], blob + blob[:2], blob + blob[:40]):
        reader, _ = open_decompressed(io.BytesIO(bad))
        with pytest.raises(ArchiveError, match=f"corrupt {kind.value} data: "):
            reader.read()


@pytest.mark.parametrize("magic", [0x184D2A50, 0x184D2A5F])
def test_zstd_opening_with_a_skippable_frame_is_sniffed(magic: int) -> None:
    zstandard = pytest.importorskip("zstandard")
    skippable = magic.to_bytes(4, "little") + (6).to_bytes(4, "little") + b"meta!!"
    blob = skippable + zstandard.ZstdCompressor().compress(PAYLOAD)
    assert sniff(blob[:6]) is Compression.ZSTD
    assert decompress(blob) == (PAYLOAD, Compression.ZSTD)
    reader, kind = open_decompressed(through_pipe(blob))
    assert (reader.read(), kind) == (PAYLOAD, Compression.ZSTD)
    assert sniff(b"P*M\x17ab") is Compression.NONE  # one byte off the magic

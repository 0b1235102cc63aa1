"""The streaming tar reader and writer: conformance corpus, byte-exact sinks, round trips."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.errors import ArchiveError, CorruptArchive
from graphdriver.layerio import tarstream
from graphdriver.layerio.entry import AREG, BLK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry
from graphdriver.layerio.tarstream import BLOCK, TarReader, TarWriter
from tests.conftest import CORPUS, with_twin
from tests.strategies import meta_header, pax_record, tar_entries, write_tar

# -- helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["c", "python"], scope="module")
def decoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs with the C header decoder and with the Python one."""
    yield from with_twin(request, tarstream, "_scan", "decoder")


def go_file(name: str) -> bytes:
    data = (CORPUS / "go-archive-tar" / name).read_bytes()
    return bz2.decompress(data) if name.endswith(".bz2") else data


def split_file(name: str) -> bytes:
    return gzip.decompress((CORPUS / "tar-split" / name).read_bytes())


class Tape:
    """Sinks recording every callback, to check byte-exact reassembly."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.data = 0

    def raw(self, b: bytes) -> None:
        assert isinstance(b, bytes)
        self.parts.append(b)

    def content(self, m: memoryview) -> None:
        self.parts.append(bytes(m))
        self.data += len(m)

    def joined(self) -> bytes:
        return b"".join(self.parts)


def read_all(data: bytes, *, bufsize: int = 1 << 20, consume: bool = False) -> tuple[
    list[tuple[TarEntry, bytes | None]], TarReader, Tape
]:
    """Every entry (with its content if ``consume``), the reader, and the sink tape."""
    tape = Tape()
    reader = TarReader(io.BytesIO(data), raw_sink=tape.raw, data_sink=tape.content, bufsize=bufsize)
    out = [(e, reader.read() if consume else None) for e in reader]
    return out, reader, tape


def entries(data: bytes) -> list[TarEntry]:
    return list(TarReader(io.BytesIO(data)))


def write(*items: tuple[TarEntry, bytes | None]) -> bytes:
    return write_tar(items)


FIELDS = (
    "name", "type", "size", "mode", "uid", "gid", "uname", "gname", "mtime_ns",
    "atime_ns", "ctime_ns", "linkname", "devmajor", "devminor", "xattrs",
)  # fmt: skip


def fields(e: TarEntry) -> dict[str, object]:
    return {f: getattr(e, f) for f in FIELDS}


# -- the Go conformance corpus ------------------------------------------------------

REFUSED = {
    "neg-size.tar": "negative size",
    "issue10968.tar": "bad header checksum",
    "issue11169.tar": "malformed PAX record",
    "issue12435.tar": "invalid size field",
    "pax-bad-hdr-file.tar": "malformed PAX record",
    "pax-bad-mtime-file.tar": "invalid PAX mtime",
    "pax-nul-xattrs.tar": "PAX xattr name with NUL",
    "pax-nul-path.tar": "PAX record with NUL in path",
    "pax-bad-hdr-large.tar.bz2": "PAX header too large",
}
# Headers of 16 GiB entries whose data the files do not hold.
HEADER_ONLY_FILES = {"writer-big.tar", "writer-big-long.tar"}
READABLE = [
    "file-and-dir.tar", "gnu-incremental.tar", "gnu-long-nul.tar", "gnu-multi-hdrs.tar",
    "gnu-nil-sparse-data.tar", "gnu-nil-sparse-hole.tar", "gnu-not-utf8.tar",
    "gnu-sparse-big.tar", "gnu-utf8.tar", "gnu.tar", "hardlink.tar", "hdr-only.tar",
    "invalid-go17.tar", "nil-uid.tar", "pax-global-records.tar", "pax-multi-hdrs.tar",
    "pax-nil-sparse-data.tar", "pax-nil-sparse-hole.tar", "pax-path-hdr.tar",
    "pax-pos-size-file.tar", "pax-records.tar", "pax-sparse-big.tar", "pax.tar",
    "sparse-formats.tar", "star.tar", "trailing-slash.tar", "ustar-file-devs.tar",
    "ustar-file-reg.tar", "ustar.tar", "v7.tar", "writer.tar", "xattrs.tar",
]  # fmt: skip


def test_corpus_lists_are_complete() -> None:
    names = {p.name for p in (CORPUS / "go-archive-tar").iterdir() if ".tar" in p.name}
    assert names == set(REFUSED) | HEADER_ONLY_FILES | set(READABLE)


@pytest.mark.parametrize("name", READABLE)
@pytest.mark.parametrize("bufsize", [BLOCK, 1 << 20])
def test_go_corpus_reads_byte_exact(name: str, bufsize: int) -> None:
    data = go_file(name)
    got, reader, tape = read_all(data, bufsize=bufsize)
    assert tape.joined() == data
    assert reader.offset == len(data)
    assert sum(e.size for e, _ in got if e.sparse is None) == tape.data  # sparse data is raw
    # Entry offsets and raw headers sit where they say.
    for e, _ in got:
        assert data[e.offset : e.offset + len(e.raw)] == e.raw


@pytest.mark.parametrize("name", READABLE)
def test_go_corpus_reads_content(name: str) -> None:
    data = go_file(name)
    got, _, tape = read_all(data, consume=True)
    assert tape.joined() == data
    assert [len(c or b"") for _, c in got] == [e.size for e, _ in got]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_go_corpus_refused(name: str) -> None:
    with pytest.raises(ArchiveError, match=REFUSED[name]):
        entries(go_file(name))


@pytest.mark.parametrize("name", sorted(HEADER_ONLY_FILES))
def test_go_corpus_huge_entries_without_data(name: str) -> None:
    reader = TarReader(io.BytesIO(go_file(name)))
    first = reader.next()
    assert first is not None
    assert first.size == 16 << 30
    assert first.name.endswith("16gig.txt")
    with pytest.raises(ArchiveError, match=r"truncated data \(expected 17179869184 bytes, got 0\)"):
        reader.next()
    with pytest.raises(ArchiveError):  # the error sticks
        reader.next()


def test_gnu_and_star_and_v7_content() -> None:
    small = (CORPUS / "go-archive-tar" / "small.txt").read_bytes()
    small2 = (CORPUS / "go-archive-tar" / "small2.txt").read_bytes()
    for name, typ in (("gnu.tar", REG), ("star.tar", REG), ("v7.tar", AREG)):
        got, _, _ = read_all(go_file(name), consume=True)
        assert [(e.name, e.type, c) for e, c in got] == [
            ("small.txt", typ, small),
            ("small2.txt", typ, small2),
        ]
    (e, _), _ = read_all(go_file("gnu.tar"))[0]
    assert (e.mode, e.uid, e.gid, e.uname, e.gname) == (0o640, 73025, 5000, "dsymonds", "eng")
    assert e.mtime_ns == 1244428340 * 10**9 and e.atime_ns is None
    (s, _), _ = read_all(go_file("star.tar"))[0]
    assert s.atime_ns == s.ctime_ns == 1244592783 * 10**9
    assert hashlib.md5(small).hexdigest() == "e38b27eaccb4391bdec553a7f3ae6b2f"


def test_pax_and_xattrs() -> None:
    a, b = entries(go_file("pax.tar"))
    assert a.name == "a/" + "".join(str(i) for i in range(1, 101))
    assert a.mtime_ns == a.atime_ns == a.ctime_ns == 1350244992023960108
    assert (b.type, b.linkname) == (SYM, "".join(str(i) for i in range(1, 101)))
    assert b.mtime_ns == 1350266320910238425
    assert b.pax["mtime"] == b"1350266320.910238425"
    x1, x2 = entries(go_file("xattrs.tar"))
    assert x1.xattrs == {
        "user.key": b"value",
        "user.key2": b"value2",
        "security.selinux": b"unconfined_u:object_r:default_t:s0\x00",
    }
    assert x1.mtime_ns == 1386065770448252320 and x1.atime_ns == 1389782991419875220
    assert x2.ctime_ns == 1386065770449252304
    (pos,) = entries(go_file("pax-pos-size-file.tar"))
    assert (pos.name, pos.size) == ("foo", 999)


def test_repeated_meta_headers_last_wins() -> None:
    (g,) = entries(go_file("gnu-multi-hdrs.tar"))
    assert (g.name, g.linkname) == ("GNU2/GNU2/long-path-name", "GNU4/GNU4/long-linkpath-name")
    (p,) = entries(go_file("pax-multi-hdrs.tar"))
    assert (p.name, p.linkname) == ("bar", "PAX4/PAX4/long-linkpath-name")
    assert p.pax == {"linkpath": b"PAX4/PAX4/long-linkpath-name"}


def meta_headers_at_their_cap(first: bytes = b"g") -> bytes:
    """Four meta headers before a symlink, each with 1 MiB of data (the most one takes): PAX
    global (or a second PAX local, which the C decoder reads too) and local, GNU long name and link."""
    mib = 1 << 20
    return (meta_header(first, pax_record(b"comment", mib)) + meta_header(b"x", pax_record(b"comment", mib))
            + meta_header(b"L", b"n" * (mib - 1) + b"\0") + meta_header(b"K", b"k" * mib))


@pytest.mark.parametrize("first", [b"g", b"x"])
@pytest.mark.parametrize("bufsize", [BLOCK, 1 << 24])  # the big buffer holds all for the C decoder
def test_meta_headers_of_each_kind_at_their_cap_are_read_byte_exact(first: bytes, bufsize: int) -> None:
    data = meta_headers_at_their_cap(first) + write((TarEntry("s", SYM, linkname="t"), None))
    got, _, tape = read_all(data, bufsize=bufsize)
    ((e, _),) = got
    assert (e.name, e.linkname, list(e.pax)) == ("n" * ((1 << 20) - 1), "k" * (1 << 20), ["comment"])
    assert tape.joined() == data


@pytest.mark.parametrize("bufsize", [BLOCK, 1 << 24])
@pytest.mark.parametrize("chain", [
    meta_headers_at_their_cap(b"g") + meta_header(b"x", b"10 path=a\n"),  # one small header more
    meta_headers_at_their_cap(b"x") + meta_header(b"x", b"10 path=a\n"),
    meta_header(b"x", b"10 path=a\n") * 5000,  # 5 MB of PAX headers, each of 1 KiB
    meta_header(b"L", b"a\0") * 5000,
    meta_header(b"g", b"10 path=a\n") * 5000,
], ids=["each-kind-and-one-more", "pax-at-cap-and-one-more", "pax", "gnu-long-name", "pax-global"])
def test_a_chain_of_meta_headers_past_the_bound_is_corrupt(bufsize: int, chain: bytes) -> None:
    """Each is under the size cap; held until their entry, a chain without end would fill memory."""
    data = chain + write((TarEntry("f", size=3), b"abc"))
    with pytest.raises(CorruptArchive, match=r"^archive: extended headers too large \(over 4196352 bytes"):
        read_all(data, bufsize=bufsize)


def test_header_only_types_have_no_data() -> None:
    got = entries(go_file("hdr-only.tar"))
    assert len(got) == 16
    for first, second in zip(got[:8], got[8:], strict=True):
        assert fields(first) == fields(second)  # they differ by the header size only
        assert (first.raw != second.raw) == (first.type != REG)
    assert {e.type for e in got if e.size} == {REG}
    assert {e.type for e in got} >= {DIR, FIFO, LNK, SYM, CHR, BLK}
    null = next(e for e in got if e.name == "null")
    assert (null.devmajor, null.devminor) == (1, 3)


def test_global_records_apply_to_later_entries() -> None:
    got = entries(go_file("pax-global-records.tar"))
    assert [(e.name, e.mtime_ns // 10**9) for e in got] == [
        ("file1", 1500000000),
        ("file2", 1500000000),
        ("file3", 1500000000),
        ("file4", 1400000000),
    ]


def test_gnu_oddities() -> None:
    d, f, s = entries(go_file("gnu-incremental.tar"))
    assert (d.name, d.type, d.size, d.mode) == ("test2/", "D", 14, 0o755)
    assert (d.atime_ns, d.ctime_ns) == (1441974501 * 10**9, 1441973436 * 10**9)
    assert (f.type, f.size, s.type) == (REG, 64, "S")
    (nul,) = entries(go_file("gnu-long-nul.tar"))
    assert nul.name == "0123456789"
    (bad,) = entries(go_file("gnu-not-utf8.tar"))
    assert bad.name_bytes == b"hi\x80\x81\x82\x83bye"
    (go17,) = entries(go_file("invalid-go17.tar"))
    assert go17.name == "a" * 97 + "/foo"
    assert (go17.uid, go17.atime_ns) == (0o10000000, None)
    (nil,) = entries(go_file("nil-uid.tar"))
    assert (nil.uid, nil.gid, nil.size) == (0, 0, 14)


def test_sparse_entries_are_yielded_as_stored() -> None:
    got = entries(go_file("sparse-formats.tar"))
    assert [e.name for e in got] == [
        "sparse-gnu",
        "sparse-posix-0.0",
        "sparse-posix-0.1",
        "sparse-posix-1.0",
        "end",
    ]
    assert got[0].type == "S"
    assert "GNU.sparse.map" in got[1].pax and "GNU.sparse.map" in got[2].pax
    assert got[3].pax["GNU.sparse.major"] == b"1"
    for name in ("pax-nil-sparse-data.tar", "pax-nil-sparse-hole.tar"):
        (e,) = entries(go_file(name))
        assert e.name == "sparse.db" and e.pax["GNU.sparse.realsize"] == b"1000"


def test_misc_headers() -> None:
    (slash,) = entries(go_file("trailing-slash.tar"))
    assert (slash.type, slash.name) == (DIR, "123456789/" * 30)
    (devs,) = entries(go_file("ustar-file-devs.tar"))
    assert (devs.name, devs.type) == ("file", REG)
    (long,) = entries(go_file("ustar.tar"))
    assert long.name == "longname/" * 15 + "file.txt"
    _, fd = entries(go_file("file-and-dir.tar"))
    assert (fd.name, fd.type) == ("dir/", DIR)
    assert entries(go_file("pax-path-hdr.tar")) == []


# -- the tar-split corpus -------------------------------------------------------------

SPLIT = [
    "t.tar.gz", "longlink.tar.gz", "fatlonglink.tar.gz", "iso-8859.tar.gz",
    "extranils.tar.gz", "notenoughnils.tar.gz",
    "1c51fc286aa95d9413226599576bafa38490b1e292375c90de095855b64caea6",
]  # fmt: skip


@pytest.mark.parametrize("name", SPLIT)
@pytest.mark.parametrize("bufsize", [BLOCK, 3000, 1 << 20])
def test_tar_split_corpus_byte_exact(name: str, bufsize: int) -> None:
    data = split_file(name)
    got, reader, tape = read_all(data, bufsize=bufsize, consume=bufsize == 3000)
    assert tape.joined() == data
    assert got
    last = got[-1][0]
    end = last.offset + len(last.raw) + last.size + (-last.size % BLOCK)
    assert reader.trailing == data[end:]


def test_tar_split_corpus_details() -> None:
    (true,) = entries(split_file(SPLIT[-1]))
    assert (true.name, true.size) == ("true", 124)
    names = [e.name_bytes for e in entries(split_file("iso-8859.tar.gz"))]
    assert names[-1] == b"data/file-with-german-umlaut-ae-\xe4"
    assert len(entries(split_file("fatlonglink.tar.gz"))[-1].name) > 100


# -- end of archive, truncation and garbage -------------------------------------


def count_until_end(data: bytes) -> tuple[int, bool]:
    """Entries read, and whether the stream ended cleanly."""
    tape = Tape()
    reader = TarReader(io.BytesIO(data), raw_sink=tape.raw, data_sink=tape.content)
    n = 0
    try:
        while reader.next() is not None:
            n += 1
    except ArchiveError:
        return n, False
    assert tape.joined() == data
    return n, True


def test_truncation_like_go() -> None:
    gnu = go_file("gnu.tar")
    reg = go_file("ustar-file-reg.tar") + bytes(10 * BLOCK)
    pax = go_file("pax-path-hdr.tar")
    sparse = go_file("sparse-formats.tar")
    trash = b"garbage " * 64
    cases = [
        (b"", 0, True),
        (gnu[:511], 0, False),
        (gnu[:512], 1, False),
        (gnu[:1024], 1, True),
        (gnu[:1536], 2, False),
        (gnu[:2048], 2, True),
        (gnu[:2048] + reg[:1536], 3, True),
        (reg[:1195], 1, False),
        (reg[:1196], 1, False),  # end of data, no padding: Go takes it as the end, GNU tar as a cut
        (reg[:1535], 1, False),
        (reg[:1536] + trash[:1], 1, False),
        (reg[:1536] + trash, 1, False),
        (reg[:2048], 1, True),  # one zero block
        (reg[:2048] + trash[:511], 1, False),
        (reg[:2048] + trash, 1, False),
        (reg[:2560] + trash, 1, True),  # anything goes after two zero blocks
        (pax, 0, True),
        (pax + trash[:1], 0, False),
        (sparse[:512], 0, False),
        (sparse[:3584], 1, True),
        (sparse[:9200], 1, False),  # (as the two above)
        (sparse[:9216], 1, True),
        (sparse[:9728], 2, False),
        (sparse[:10240], 2, True),
        (sparse + trash, 5, True),
    ]
    for i, (data, want_n, want_ok) in enumerate(cases):
        assert count_until_end(data) == (want_n, want_ok), i


@pytest.mark.parametrize("bufsize", [BLOCK, 1 << 20])
def test_a_cut_inside_padding_is_truncated(bufsize: int) -> None:
    """All the data is there but not the zeros after it: the stream was cut, as GNU tar says."""
    file = write((TarEntry("f", size=3), b"hi\n"))[: 2 * BLOCK]  # no end-of-archive blocks
    meta = meta_header(b"x", b"10 path=a\n") + file
    long = "././@LongLink"  # the PAX header's name
    for data, cut, who, want, kept in [(file, 600, "f", 509, 85), (file, 515, "f", 509, 0),
                                       (meta, 600, long, 502, 78), (meta, 522, long, 502, 0)]:
        with pytest.raises(CorruptArchive) as caught:
            read_all(data[:cut], bufsize=bufsize, consume=True)
        assert str(caught.value) == f"entry {who!r}: truncated padding (expected {want} bytes, got {kept})"
        got, reader, tape = read_all(data, bufsize=bufsize)  # whole, even without the end blocks
        assert [e.name for e, _ in got] == ["a" if data is meta else "f"]
        assert (reader.trailing, tape.joined()) == (b"", data)


def test_short_zero_tails_are_trailing() -> None:
    one = write((TarEntry("f", size=3), b"abc"))[: -2 * BLOCK]
    for tail in (b"", bytes(100), bytes(BLOCK), bytes(BLOCK + 7), bytes(5 * BLOCK)):
        got, reader, tape = read_all(one + tail)
        assert len(got) == 1 and reader.trailing == tail and tape.joined() == one + tail


def test_garbage_is_refused_on_first_header() -> None:
    for junk in (b"hello world\n" * 100, os.urandom(4096), b"\x1e\x8b" + bytes(1000)):
        with pytest.raises(ArchiveError, match=r"not a tar archive \(bad header checksum\)"):
            entries(junk)
    with pytest.raises(ArchiveError, match=r"not a tar archive \(gzip-compressed data\)"):
        entries(gzip.compress(write((TarEntry("f"), None))))
    with pytest.raises(ArchiveError, match="truncated header"):
        entries(b"short and not a tar")


def test_bad_checksum() -> None:
    data = bytearray(write((TarEntry("a"), None), (TarEntry("b"), None)))
    data[BLOCK + 1] ^= 0x01  # the second entry's name
    reader = TarReader(io.BytesIO(bytes(data)))
    assert reader.next() is not None
    with pytest.raises(ArchiveError, match="bad header checksum"):
        reader.next()


def test_signed_checksum_accepted() -> None:
    data = bytearray(write((TarEntry("caf\u00e9"), None)))
    blk = data[:BLOCK]
    signed = sum(b - 256 if b >= 128 else b for b in blk[:148] + b" " * 8 + blk[156:])
    data[148:156] = b"%06o\x00 " % signed
    (e,) = entries(bytes(data))
    assert e.name == "caf\u00e9"


def test_truncated_data_reports_counts() -> None:
    data = write((TarEntry("f", size=1000), bytes(1000)))[: BLOCK + 300]
    reader = TarReader(io.BytesIO(data))
    assert reader.next() is not None
    with pytest.raises(ArchiveError, match=r"truncated data \(expected 1000 bytes, got 300\)"):
        reader.read()


def test_invalid_numeric_fields() -> None:
    data = bytearray(write((TarEntry("f"), None)))
    data[108:116] = b"12x4567\x00"
    data[148:156] = b"        "
    data[148:156] = b"%06o\x00 " % sum(data[:BLOCK])
    with pytest.raises(ArchiveError, match="invalid numeric field 'uid'"):
        entries(bytes(data))


def test_base256_numbers() -> None:
    data = bytearray(write((TarEntry("f", uid=5, mtime_ns=0), None)))
    data[108:116] = b"\x80" + (3_000_000_000).to_bytes(7, "big")
    data[136:148] = b"\xff" * 12  # -1
    data[148:156] = b"        "
    data[148:156] = b"%06o\x00 " % sum(data[:BLOCK])
    (e,) = entries(bytes(data))
    assert (e.uid, e.mtime_ns) == (3_000_000_000, -(10**9))


# -- reading content ------------------------------------------------------------------


def test_read_readinto_copy_to_fd_and_skip(tmp_path: Path) -> None:
    blobs = [os.urandom(n) for n in (0, 1, 511, 512, 513, 70000)]
    data = write(*((TarEntry(f"f{i}", size=len(b)), b) for i, b in enumerate(blobs)))
    tape = Tape()
    reader = TarReader(io.BytesIO(data), raw_sink=tape.raw, data_sink=tape.content, bufsize=1000)
    e = reader.next()
    assert e is not None and reader.read() == b""
    assert reader.next() is not None and reader.read(10) == blobs[1]
    assert reader.next() is not None  # skipped unread
    e = reader.next()
    buf = bytearray(100)
    assert e is not None and reader.readinto(buf) == 100 and bytes(buf) == blobs[3][:100]
    assert reader.read(12) == blobs[3][100:112]
    assert reader.next() is not None
    assert reader.read(1) == blobs[4][:1]
    assert reader.next() is not None
    with open(tmp_path / "out", "wb") as out:
        assert reader.copy_to_fd(out.fileno()) == 70000
    assert (tmp_path / "out").read_bytes() == blobs[5]
    assert reader.read() == b"" and reader.readinto(bytearray(5)) == 0
    assert reader.next() is None
    assert tape.joined() == data and tape.data == sum(map(len, blobs))
    assert reader.trailing == bytes(2 * BLOCK)


class _Zeros(io.RawIOBase):
    """A stream of a header then ``size`` zero bytes, generated on the fly."""

    def __init__(self, header: bytes, size: int) -> None:
        self._head = header
        self._left = size + (-size % BLOCK) + 2 * BLOCK

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        n = min(len(buf), self._left)
        buf[:n] = bytes(n)
        self._left -= n
        return n


def test_memory_stays_flat_for_big_entries() -> None:
    size = 64 << 20
    header = write((TarEntry("big", size=0), None))[:BLOCK]
    header = header[:124] + b"%011o\x00" % size + header[136:148] + b" " * 8 + header[156:]
    header = header[:148] + b"%06o\x00 " % sum(header) + header[156:]
    seen = [0]
    stream: Any = io.BufferedReader(_Zeros(header, size))
    reader = TarReader(
        stream,
        data_sink=lambda m: seen.__setitem__(0, seen[0] + len(m)),
        bufsize=1 << 18,
    )
    tracemalloc.start()
    try:
        e = reader.next()
        assert e is not None and e.size == size
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            assert reader.copy_to_fd(fd) == size
        finally:
            os.close(fd)
        assert reader.next() is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen[0] == size
    assert peak < 8 << 20


# -- writer ------------------------------------------------------------------------


def sample_entries() -> list[tuple[TarEntry, bytes | None]]:
    return [
        (TarEntry("dir/", type=DIR, mode=0o755, mtime_ns=1_600_000_000 * 10**9), None),
        (TarEntry("dir/file", size=5, mode=0o4755, uid=1000, uname="u", gname="g"), b"hello"),
        (TarEntry("dir/" + "long/" * 40 + "n", size=1, mtime_ns=1_700_000_000_500_000_000), b"x"),
        (TarEntry("p/" * 60 + "n" * 99), None),  # splittable into prefix and name
        (TarEntry("x" * 150), None),  # not splittable
        (TarEntry("caf\u00e9/\u263a", uname="\u00fcser", gname="g" * 40), None),
        (TarEntry("sym", type=SYM, linkname="t" * 300), None),
        (TarEntry("hard", type=LNK, linkname="dir/file", size=99), None),
        (TarEntry("dev", type=CHR, devmajor=1, devminor=3, mode=0o666), None),
        (TarEntry("blk", type=BLK, devmajor=8, devminor=(1 << 20) - 1), None),
        (TarEntry("fifo", type=FIFO), None),
        (TarEntry("ids", uid=1 << 22, gid=(1 << 32) - 1, mtime_ns=-1_500_000_000), None),
        (TarEntry("times", atime_ns=5, ctime_ns=-(10**9), mtime_ns=8**11 * 10**9), None),
        (
            TarEntry(
                "xattrs",
                xattrs={"user.a": b"\x00\xff\n=", "security.selinux": b"ctx\x00", "user.e": b""},
                pax={"MSWINDOWS.rawsd": b"AQAAgBQAAAA", "LIBARCHIVE.creationtime": b"1"},
            ),
            None,
        ),
        (TarEntry(b"bad-\xff\xfe".decode("utf-8", "surrogateescape"), size=2), b"ok"),
    ]


def test_round_trip_own_reader() -> None:
    items = sample_entries()
    data = write(*items)
    got, _, tape = read_all(data, consume=True)
    assert tape.joined() == data
    assert len(got) == len(items)
    for (want, content), (e, read) in zip(items, got, strict=True):
        expect = fields(want)
        if want.type in (LNK, SYM, DIR, FIFO, CHR, BLK):
            expect["size"] = 0
        assert fields(e) == expect
        assert read == (content or b"")
        for key, value in want.pax.items():
            assert e.pax[key] == value


def test_writer_is_deterministic_and_minimal() -> None:
    assert write(*sample_entries()) == write(*sample_entries())
    plain = write((TarEntry("a/b", size=3, uid=7, mtime_ns=10**9), b"abc"))
    assert len(plain) == 4 * BLOCK  # no PAX header
    assert plain[257:265] == b"ustar\x0000"
    (e,) = entries(write((TarEntry("f", mtime_ns=1_000_000_001_250_000_000), None)))
    assert e.pax == {"mtime": b"1000000001.25"}
    (e,) = entries(write((TarEntry("u" * 101 + "/v"), None)))
    assert e.pax == {}  # split into prefix and name


def test_pax_record_lengths_cross_digit_boundaries() -> None:
    items = [(TarEntry(f"f{n}", xattrs={"user.k": b"v" * n}), None) for n in range(0, 1100, 7)]
    data = write(*items)
    for (want, _), e in zip(items, entries(data), strict=True):
        assert e.xattrs == want.xattrs
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for (want, _), ti in zip(items, tf, strict=True):
            assert ti.pax_headers["SCHILY.xattr.user.k"] == want.xattrs["user.k"].decode()


def test_writer_errors() -> None:
    w = TarWriter(io.BytesIO())
    with pytest.raises(ArchiveError, match=r"data shorter than size \(expected 10 bytes, got 4\)"):
        w.add(TarEntry("f", size=10), io.BytesIO(b"1234"))
    with pytest.raises(ArchiveError, match="no data"):
        w.add(TarEntry("f", size=1))
    with pytest.raises(ArchiveError, match="NUL"):
        w.add(TarEntry("a\x00b"))
    with pytest.raises(ArchiveError, match="cannot be stored"):
        w.add(TarEntry("f", xattrs={"user.a=b": b""}))


def test_writer_reads_from_fd(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"z" * 3000)
    out = io.BytesIO()
    w = TarWriter(out)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        w.add(TarEntry("f", size=3000), fd)
    finally:
        os.close(fd)
    w.add_raw(bytes(BLOCK))
    w.close()
    got, reader, _ = read_all(out.getvalue(), consume=True)
    assert got[0][1] == b"z" * 3000
    assert reader.trailing == bytes(3 * BLOCK)


def test_huge_size_uses_pax() -> None:
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match="data shorter"):
        TarWriter(out).add(TarEntry("huge", size=9 << 30), io.BytesIO(b"abc"))
    reader = TarReader(io.BytesIO(out.getvalue()))
    e = reader.next()
    assert e is not None and e.size == 9 << 30 and e.pax["size"] == b"%d" % (9 << 30)


def test_round_trip_tarfile() -> None:
    items = sample_entries()
    data = write(*items)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        infos = tf.getmembers()
        for (want, content), ti in zip(items, infos, strict=True):
            assert ti.name == want.name.rstrip("/")
            assert ti.mode == want.mode
            assert (ti.uid, ti.gid) == (want.uid, want.gid)
            assert (ti.uname, ti.gname) == (want.uname, want.gname)
            assert ti.linkname == want.linkname
            assert abs(ti.mtime - want.mtime_ns / 1e9) < 1e-3
            if want.type == REG:
                f = tf.extractfile(ti)
                assert f is not None and f.read() == (content or b"")
            if want.type in (CHR, BLK):
                assert (ti.devmajor, ti.devminor) == (want.devmajor, want.devminor)
        xa = next(ti for ti in infos if ti.name == "xattrs")
        assert xa.pax_headers["MSWINDOWS.rawsd"] == "AQAAgBQAAAA"


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
def test_round_trip_gnu_tar(tmp_path: Path) -> None:
    items = [(e, c) for e, c in sample_entries() if e.name_bytes.isascii() or e.name.isprintable()]
    path = tmp_path / "out.tar"
    path.write_bytes(write(*items))
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", str(path)],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert listing.stdout.decode().splitlines() == [e.name for e, _ in items]
    verbose = subprocess.run(["tar", "-tvf", str(path)], capture_output=True, check=True)
    assert b"warning" not in verbose.stderr.lower()
    extract = ["tar", "-xf", str(path), "-C", str(tmp_path), "dir/file"]
    subprocess.run(extract, check=True, capture_output=True)
    assert (tmp_path / "dir" / "file").read_bytes() == b"hello"


# -- property test --------------------------------------------------------------------



@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tar_entries(), min_size=1, max_size=6))
def test_property_round_trip(items: list[tuple[TarEntry, bytes | None]]) -> None:
    data = write(*items)
    got, _, tape = read_all(data, bufsize=BLOCK, consume=True)
    assert tape.joined() == data
    assert [fields(e) for e, _ in got] == [fields(e) for e, _ in items]
    assert [c for _, c in got] == [c or b"" for _, c in items]
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        assert [ti.name for ti in tf] == [e.name.rstrip("/") or e.name for e, _ in items]


def _iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class _Trickle(io.RawIOBase):
    """A stream handing out a few bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, size: int) -> None:
        self._chunks = _iter_chunks(data, size)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = next(self._chunks, b"")
        buf[: len(chunk)] = chunk
        return len(chunk)


def test_short_reads_from_the_stream() -> None:
    data = go_file("sparse-formats.tar")
    tape = Tape()
    stream: Any = _Trickle(data, 37)
    reader = TarReader(stream, raw_sink=tape.raw, data_sink=tape.content, bufsize=BLOCK)
    assert len(list(reader)) == 5
    assert tape.joined() == data


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar", "v7"])
def test_reads_gnu_tar_output(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    n = 40 if fmt == "v7" else 60  # v7 has no room for long names
    deep = src / ("d" * n) / ("e" * n)
    deep.mkdir(parents=True)
    (src / "small").write_bytes(b"x" * 10)
    (deep / "f").write_bytes(os.urandom(3000))
    (src / "caf\u00e9").write_bytes(b"")
    (src / "link").symlink_to("small")
    os.link(src / "small", src / "hard")
    os.utime(src / "small", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    out = tmp_path / "out.tar"
    cmd = ["tar", f"--format={fmt}", "-cf", str(out), "-C", str(src), "."]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip(f"tar cannot write this tree in {fmt} format")
    data = out.read_bytes()
    got, _, tape = read_all(data, consume=True)
    assert tape.joined() == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    assert [e.name.rstrip("/") for e, _ in got] == [m.name for m in members]
    by_name = {e.name: (e, c) for e, c in got}
    assert by_name["./small"][1] == b"x" * 10
    assert by_name["./link"][0].linkname == "small"
    assert by_name["./hard"][0].type in (LNK, REG)
    _, content = by_name["./" + "d" * n + "/" + "e" * n + "/f"]
    assert content == (deep / "f").read_bytes()
    if fmt == "posix":
        assert by_name["./small"][0].mtime_ns == 1_600_000_000_123_456_789


# ----- reading speed-ups keep the semantics ----------------------------------------------------


class Chunky(io.RawIOBase):
    """A stream that hands out the given chunk sizes in turn (short reads, as pipes give)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._sizes = sizes or [1]
        self._i = 0

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        size = self._sizes[self._i % len(self._sizes)]
        self._i += 1
        out = bytes(self._data[: min(n if n >= 0 else len(self._data), size)])
        self._data = self._data[len(out) :]
        return out


def _summary(reader: TarReader, consume: bool) -> list[tuple[Any, ...]]:
    out = []
    for e in reader:
        out.append((*(getattr(e, f) for f in FIELDS), e.offset, e.raw, reader.read() if consume else None))
    return out


@pytest.mark.parametrize("name", ["pax-records.tar", "gnu-long-nul.tar", "ustar-file-devs.tar",
                                  "pax-global-records.tar", "star.tar", "v7.tar", "gnu-sparse-big.tar",
                                  "xattrs.tar", "gnu-incremental.tar"])
@given(sizes=st.lists(st.integers(min_value=1, max_value=1500), min_size=1, max_size=8),
       consume=st.booleans())
@settings(max_examples=30, deadline=None)
def test_short_reads_give_the_same_entries(name: str, sizes: list[int], consume: bool) -> None:
    data = go_file(name)
    whole = _summary(TarReader(io.BytesIO(data)), consume)
    tape = Tape()
    reader = TarReader(Chunky(data, sizes), raw_sink=tape.raw, data_sink=tape.content, bufsize=BLOCK)
    assert _summary(reader, consume) == whole
    assert tape.joined() == data


@given(st.from_regex(rb"\A[+-]?[0-9]{0,21}(\.[0-9]{0,12})?\Z"))
@settings(max_examples=400)
def test_pax_times_fast_path_agrees_with_the_careful_parser(value: bytes) -> None:
    from graphdriver.layerio import pax

    def careful(v: bytes) -> int | str:
        neg = v[:1] == b"-"
        body = v[1:] if neg or v[:1] == b"+" else v
        secs, _, frac = body.partition(b".")
        try:
            ns = pax.decimal(secs, "mtime", b"x") * 10**9 + int((frac + b"0" * 9)[:9])
        except ArchiveError:
            return "error"
        return -ns if neg else ns

    try:
        got: int | str = pax.time_ns(value, "mtime", b"x")
    except ArchiveError:
        got = "error"
    assert got == careful(value)


def test_entry_fields_keep_the_order_the_reader_relies_on() -> None:
    import inspect

    names = list(inspect.signature(TarEntry).parameters)[:9]
    assert names == ["name", "type", "size", "mode", "uid", "gid", "uname", "gname", "mtime_ns"]


_ascii_component = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="/"),
                           min_size=1, max_size=30)


@st.composite
def usual_entries(draw: st.DrawFn) -> TarEntry:
    """An entry as an export writes nearly all of them: short ASCII names, small ids, times with
    or without a fraction, no xattrs (the writer's quick header)."""
    typ = draw(st.sampled_from([REG, REG, DIR, SYM, LNK, FIFO, CHR, BLK]))
    name = "/".join(draw(st.lists(_ascii_component, min_size=1, max_size=3)))[:100]
    return TarEntry(
        name + "/" if typ == DIR and len(name) < 100 else name,
        type=typ,
        size=draw(st.integers(0, 8**11 - 1)),
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 8**7 - 1)),
        gid=draw(st.integers(0, 8**7 - 1)),
        uname=draw(st.sampled_from(["", "", "root", "u" * 32])),
        gname=draw(st.sampled_from(["", "", "wheel"])),
        mtime_ns=draw(st.integers(0, (8**11 - 1) * 10**9 + 999_999_999)),
        linkname="/".join(draw(st.lists(_ascii_component, min_size=1, max_size=3)))[:100]
        if typ in (SYM, LNK) else "",
        devmajor=draw(st.integers(0, 8**7 - 1)) if typ in (CHR, BLK) else 0,
        devminor=draw(st.integers(0, 8**7 - 1)) if typ in (CHR, BLK) else 0,
    )


@given(usual_entries())
@settings(max_examples=400)
def test_the_quick_header_of_a_usual_entry_is_the_full_ones(entry: TarEntry) -> None:
    quick = tarstream._usual_header(entry)
    assert quick is not None
    assert quick == tarstream._full_header(entry)


@given(tar_entries())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_the_quick_header_takes_only_what_it_writes_as_the_full_one(
        item: tuple[TarEntry, bytes | None]) -> None:
    entry, _ = item
    quick = tarstream._usual_header(entry)
    try:
        full: bytes | str = tarstream._full_header(entry)
    except ArchiveError:
        full = "refused"
    assert quick is None or quick == full


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1 << 16, (1 << 16) + 1, (1 << 20) + 5])
def test_data_joined_to_its_header_or_not_gives_the_same_archive(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    entry = TarEntry("f", size=size, mtime_ns=1_500_000_000_500_000_000)
    head = tarstream._header(entry)
    got = write((entry, data), (TarEntry("g"), b""))
    assert got[: len(head)] == head
    assert got[len(head) : len(head) + size] == data
    with tarfile.open(fileobj=io.BytesIO(got)) as tf:
        f = tf.extractfile("f")
        assert f is not None and f.read() == data
        assert tf.getnames() == ["f", "g"]
    assert len(got) % BLOCK == 0

"""The C header decoder and the Python one give the same entries, bytes and errors.

The reader decodes the usual entry with ``_tarscan.scan`` when it is built and
falls back to its Python decoder for everything else; each archive here is read
both ways (the C decoder on, and off as ``GRAPHDRIVER_PURE=1`` turns it off) and
every entry field, raw byte and error must agree.  ``tests/test_tarstream.py``
runs its whole suite both ways too.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.errors import ArchiveError
from graphdriver.layerio import tarstream
from graphdriver.layerio.entry import REG, SYM, TarEntry
from graphdriver.layerio.tarstream import TarReader
from tests.conftest import CORPUS, ROOT
from tests.strategies import meta_header, names, pax_record, tar_entries
from tests.strategies import write_tar as write

pytestmark = pytest.mark.skipif(
    tarstream._scan is None and not os.environ.get("GRAPHDRIVER_PURE"),
    reason="the C decoder was not built at install (no C compiler or Python headers)",
)

SLOTS = TarEntry.__slots__


def outcome(data: bytes, *, c: bool, bufsize: int = 1 << 20) -> tuple[list[tuple[Any, ...]], str | None]:
    """Every entry's slots and content (raw included), then the error or the trailing bytes."""
    saved = tarstream._scan
    if not c:
        tarstream._scan = None
    try:
        reader = TarReader(io.BytesIO(data), bufsize=bufsize)
        got: list[tuple[Any, ...]] = []
        try:
            for e in reader:
                got.append((*(getattr(e, s) for s in SLOTS), reader.read()))
        except ArchiveError as x:
            return got, f"error: {x}"
        return got, f"trailing: {reader.trailing!r}"
    finally:
        tarstream._scan = saved


def same_both_ways(data: bytes, bufsize: int = 1 << 20) -> tuple[list[tuple[Any, ...]], str | None]:
    fast = outcome(data, c=True, bufsize=bufsize)
    assert fast == outcome(data, c=False, bufsize=bufsize)
    return fast


def corpus() -> list[Path]:
    return sorted(p for p in (CORPUS / "go-archive-tar").iterdir() if p.suffix in (".tar", ".bz2")) + sorted(
        (CORPUS / "tar-split").glob("*.tar.gz"))


def load(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".bz2"):
        return bz2.decompress(data)
    return gzip.decompress(data) if path.name.endswith(".gz") else data


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
@pytest.mark.parametrize("bufsize", [512, 1 << 20])
def test_the_corpus_reads_the_same_both_ways(path: Path, bufsize: int) -> None:
    same_both_ways(load(path), bufsize)


def test_the_c_decoder_is_used_for_usual_entries() -> None:
    if tarstream._scan is None:
        pytest.skip("GRAPHDRIVER_PURE is set: the Python decoder only")
    data = write([(TarEntry("a/b", REG, size=1, mtime_ns=1_500_000_000_123_456_789), b"x")])
    assert tarstream._scan(data, 0) is not None
    assert tarstream._scan(data[:1000], 0) is None  # its headers reach past the buffer






@pytest.mark.parametrize("more", [b"", meta_header(b"x", b"10 path=a\n")])
def test_meta_headers_up_to_their_bound_and_past_it_read_the_same_both_ways(more: bytes) -> None:
    """Four PAX and GNU meta headers of 1 MiB each take all the room one entry has for them:
    held in one buffer, the C decoder takes them, and leaves one header more to the refusal."""
    mib = 1 << 20
    chain = (meta_header(b"x", pax_record(b"comment", mib)) * 2 + meta_header(b"L", b"n" * mib)
             + meta_header(b"K", b"k" * mib) + more)
    got, end = same_both_ways(chain + write([(TarEntry("s", SYM, linkname="t"), None)]), 1 << 24)
    assert end is not None
    if more:
        assert (got, end) == ([], "error: archive: extended headers too large (over 4196352 bytes"
                                  " before one entry)")
    else:
        assert end.startswith("trailing") and len(got) == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tar_entries(700), min_size=1, max_size=5))
def test_written_archives_read_the_same_both_ways(items: list[tuple[TarEntry, bytes | None]]) -> None:
    got, end = same_both_ways(write(items))
    assert end is not None and end.startswith("trailing") and len(got) == len(items)


# Bytes a hostile or odd archive may hold where a header field is: digits of
# every base, spaces, NULs, signs, base-256 markers, PAX syntax.
_odd = st.sampled_from([0x00, 0x20, 0x30, 0x37, 0x38, 0x39, 0x2E, 0x2D, 0x2B, 0x3D, 0x0A, 0x80, 0xFF, 0x2F])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tar_entries(700), min_size=1, max_size=3), st.data())
def test_damaged_headers_read_the_same_both_ways(items: list[tuple[TarEntry, bytes | None]],
                                                 data: st.DataObject) -> None:
    archive = bytearray(write(items))
    headers = min(len(archive), 3 * 512)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, headers - 1))
        archive[at] = data.draw(st.one_of(_odd, st.integers(0, 255)))
    if data.draw(st.booleans()):
        fix_checksums(archive)  # damage past the checksum: the decoders must read the fields
    same_both_ways(bytes(archive), data.draw(st.sampled_from([512, 1024, 1 << 20])))


def fix_checksums(archive: bytearray) -> None:
    """Recompute the checksum of every block that looks like a header (ustar magic)."""
    for at in range(0, len(archive) - 511, 512):
        blk = archive[at : at + 512]
        if blk[257:262] != b"ustar":
            continue
        total = sum(blk[:148]) + sum(blk[156:]) + 8 * 32
        archive[at + 148 : at + 156] = b"%06o\x00 " % (total & 0o777777)


# Header fields (offset, length) worth damaging: name, mode to mtime, type, link name, magic and
# version, owner names, device numbers, prefix.
_FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (156, 1), (157, 100),
           (257, 8), (265, 32), (297, 32), (329, 8), (337, 8), (345, 155), (345, 12), (357, 12),
           (508, 4)]  # fmt: skip
_FIELD_BYTES = st.sampled_from(b"01234567 \x0089+-./x")


@st.composite
def _tarfile_archive(draw: st.DrawFn) -> bytes:
    """An archive written by Python's tarfile: GNU long names and links, ustar prefixes, old types."""
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT]))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for _ in range(draw(st.integers(1, 4))):
            name = draw(names)
            if fmt == tarfile.USTAR_FORMAT:
                name = name.encode("utf-8", "surrogateescape")[:250].decode("utf-8", "ignore") or "n"
                if len(name.encode()) > 100 and "/" not in name[-100:]:
                    name = "d/" + name[-90:]
            info = tarfile.TarInfo(name)
            info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE,
                                              tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE]))
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = draw(names) if fmt != tarfile.USTAR_FORMAT else "target"
            if info.type == tarfile.CHRTYPE:
                info.devmajor, info.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 4095))
            if info.type == tarfile.AREGTYPE and draw(st.booleans()):
                info.name = info.name.rstrip("/") + "/"  # an old-style directory
            info.mtime = draw(st.integers(0, 8**11 - 1))
            info.uid = draw(st.integers(0, 8**7 - 1))
            regular = info.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
            content = draw(st.binary(max_size=600)) if regular else b""
            info.size = len(content)
            try:
                tf.addfile(info, io.BytesIO(content))
            except ValueError:
                continue  # a name this format cannot hold
    return out.getvalue()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tarfile_archive(), st.data())
def test_other_writers_and_damaged_fields_read_the_same_both_ways(archive: bytes,
                                                                  data: st.DataObject) -> None:
    same_both_ways(archive)
    damaged = bytearray(archive)
    for _ in range(data.draw(st.integers(1, 4))):
        block = data.draw(st.integers(0, min(len(damaged) // 512, 4) - 1)) * 512
        start, length = data.draw(st.sampled_from(_FIELDS))
        n = data.draw(st.integers(1, length))
        at = block + start + data.draw(st.integers(0, length - n))
        damaged[at : at + n] = bytes(data.draw(st.lists(_FIELD_BYTES, min_size=n, max_size=n)))
    fix_checksums(damaged)
    same_both_ways(bytes(damaged), data.draw(st.sampled_from([512, 1 << 20])))


def _base_archives() -> list[bytes]:
    """Headers of every shape the C decoder takes: ustar with a long prefix, GNU, devices, links."""
    out = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
        for typ in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.SYMTYPE):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
                info = tarfile.TarInfo("p" * 150 + "/" + "n" * 90 if fmt == tarfile.USTAR_FORMAT else "f")
                info.type, info.mtime, info.uid, info.gid = typ, 1_600_000_000, 1000, 100
                info.uname, info.gname, info.linkname = "user", "group", "t" * 90
                info.devmajor, info.devminor = 8, 17
                content = b"abc" if typ in (tarfile.REGTYPE, tarfile.AREGTYPE) else b""
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
            out.append(buf.getvalue())
    # star's ustar variant: a shorter prefix, then atime and ctime, and "tar" at the end.
    star = bytearray(out[0])
    star[345:476] = star[345:476][:120].ljust(131, b"\x00")
    star[476:500] = b"15000000000\x0015000000001\x00"
    star[508:512] = b"tar\x00"
    fix_checksums(star)
    out.append(bytes(star))
    return out


# What damaged fields are filled with: digits past octal, spaces and NULs where digits were,
# a sign, a dot, text.
_FILLS = [b"8", b"9", b" ", b"\x00", b"7", b"x", b"-", b"/", b"  1", b"1 2", b"\x80"]


def test_every_header_field_damaged_reads_the_same_both_ways() -> None:
    for base in _base_archives():
        same_both_ways(base)
        for start, length in _FIELDS:
            offsets = range(length) if length <= 12 else (0, 1, length // 2, length - 2, length - 1)
            for offset in offsets:
                for fill in _FILLS:
                    damaged = bytearray(base)
                    end = min(start + offset + len(fill), start + length)
                    damaged[start + offset : end] = fill[: end - start - offset]
                    fix_checksums(damaged)
                    same_both_ways(bytes(damaged))


PAX_CASES = [
    b"30 mtime=1350244992.023960108\n",
    b"20 mtime=1350244992\n",
    b"21 mtime=1350244992.\n",
    b"22 mtime=-1350244992\n",
    b"31 mtime=1350244992.0239601089\n",
    b"12 path=ab\n",
    b"9 path=\n",
    b"13 size=0010\n",
    b"33 size=99999999999999999999999\n",
    b"16 uid=12345678\n",
    b"12 uid=1 2\n",
    b"19 SCHILY.xattr.=v\n",
    b"23 SCHILY.xattr.user.a=\n",
    b"21 GNU.sparse.name=x\n",
    b"12 uname=\xff\xfe\n",
    b"10 \xff\xfe=ab\n",
    b"11 comment=\n",
    b"9 =abcde\n",
    b"13 linkpath=l\n",
    b"06 a=b\n",
]


@pytest.mark.parametrize("records", PAX_CASES, ids=repr)
def test_pax_records_read_the_same_both_ways(records: bytes) -> None:
    data = write([(TarEntry("file", REG, size=3, mtime_ns=5 * 10**9), b"abc")])
    info = tarfile.TarInfo("PaxHeaders/file")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    meta = info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)
    same_both_ways(meta + data)


def test_status_names_the_c_speed_ups(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for pure, want in (("", "C"), ("1", "python")):
        env["GRAPHDRIVER_PURE"] = pure
        out = subprocess.run([sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "s"),
                              "--driver", "vfs", "status"], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert f"Tar header decoder: {want}" in out.splitlines(), out
        assert f"Tar-split recorder: {want}" in out.splitlines(), out

"""The one-pass import: digests of plain and compressed input, tar-split, read-ahead errors."""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from graphdriver.errors import ArchiveError
from graphdriver.layerio import ingest as one_pass
from graphdriver.layerio.compression import Compression, open_compressor
from graphdriver.layerio.extract import ApplyOptions, extract_entries
from graphdriver.layerio.getter import DirFileGetter
from graphdriver.layerio.tarsplit import assemble, read_entries
from graphdriver.testing.treeutil import D, F, H, L, make_tar

LAYER = make_tar({"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n" * 300), "bin": D(),
                  "bin/big": F(os.urandom(3 << 20), mode=0o755), "bin/l": L("big"), "bin/h": H("bin/big"),
                  "empty": F(b"")})


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def apply(entries: one_pass.RecordingReader, root_fd: int, lower_fds: tuple[int, ...]) -> int:
    return extract_entries(entries, root_fd, lower_fds, opts=ApplyOptions())


def compress(data: bytes, kind: Compression) -> bytes:
    buf = io.BytesIO()
    with open_compressor(buf, kind) as z:
        z.write(data)
    return buf.getvalue()


def run(tmp_path: Path, stream: io.BufferedIOBase, inline: bool) -> tuple[one_pass.IngestResult, bytes]:
    dest = tmp_path / "dest"
    dest.mkdir()
    meta = tmp_path / "meta.gz"
    with open(meta, "wb") as out:
        result = one_pass.ingest(stream, str(dest), apply, tarsplit_out=out, inline=inline)  # type: ignore[arg-type]
    return result, gzip.decompress(meta.read_bytes())


@pytest.fixture(params=[True, False], ids=["inline", "child"])
def inline(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_plain_input_is_hashed_once_for_both_digests(tmp_path: Path, inline: bool) -> None:
    data = LAYER + b"trailing bytes after the archive"
    result, meta = run(tmp_path, io.BytesIO(data), inline)
    assert result.diff_digest == result.compressed_digest == sha(data)
    assert result.uncompressed_size == result.compressed_size == len(data)
    assert result.compression == "none"
    out = io.BytesIO()
    getter = DirFileGetter(str(tmp_path / "dest"))
    try:
        assemble(read_entries(io.BytesIO(meta)), getter, out.write)
    finally:
        getter.close()
    assert out.getvalue() == data


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_compressed_input_has_two_digests(tmp_path: Path, inline: bool, kind: Compression) -> None:
    packed = compress(LAYER, kind) + (b"\0" * 100 if kind is Compression.GZIP else b"")
    result, _ = run(tmp_path, io.BytesIO(packed), inline)
    assert result.diff_digest == sha(LAYER)
    assert result.compressed_digest == sha(packed)  # trailing bytes after the stream count
    assert (result.uncompressed_size, result.compressed_size) == (len(LAYER), len(packed))
    assert result.compression == kind.value


def test_input_from_a_pipe(tmp_path: Path, inline: bool) -> None:
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as f:
            f.write(compress(LAYER, Compression.GZIP))

    t = threading.Thread(target=feed)
    t.start()
    with open(r, "rb") as stream:
        result, _ = run(tmp_path, stream, inline)  # type: ignore[arg-type]
    t.join()
    assert result.diff_digest == sha(LAYER)


def test_corrupt_compressed_data_is_an_archive_error(tmp_path: Path, inline: bool) -> None:
    packed = bytearray(compress(LAYER, Compression.GZIP))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)
    with pytest.raises(ArchiveError, match="corrupt gzip"):
        run(tmp_path, io.BytesIO(bytes(packed)), inline)


def test_a_bad_entry_midway_stops_the_read_ahead(tmp_path: Path) -> None:
    # Many chunks of input after the failure: the thread must not be left blocked.
    data = make_tar({"a": F(b"x"), "../escape": F(b"y")}) + bytes(8 << 20)
    before = threading.active_count()
    with pytest.raises(ArchiveError):
        run(tmp_path, io.BytesIO(data), inline=True)
    assert threading.active_count() == before


def test_the_read_ahead_serves_reads_of_any_size() -> None:
    data = os.urandom(3 << 20)
    ahead = one_pass._ReadAhead(io.BytesIO(data), one_pass._HashingReader(io.BytesIO()))  # type: ignore[arg-type]
    ahead.start()
    try:
        got = [ahead.read(1000), ahead.read(1 << 20), ahead.read(-1)]
    finally:
        ahead.close()
    assert b"".join(got) == data
    assert ahead.hash.hexdigest() == hashlib.sha256(data).hexdigest()
    assert ahead.read(10) == b""


# ----- the directory file getter of reassembly ------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_getter_reads_through_symlinked_directories_inside_the_layer(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libc.so").write_bytes(b"elf")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "abs").symlink_to("/usr/lib")  # absolute: resolves inside the layer too
    getter = DirFileGetter(str(tmp_path))
    try:
        for name in ("lib/libc.so", "./lib/libc.so", "/abs/libc.so", "usr/../lib/libc.so"):
            with getter.open(name) as f:
                assert f.read() == b"elf"
    finally:
        getter.close()


def test_getter_never_leaves_the_layer(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "secret").write_bytes(b"host file")
    (layer / "up").symlink_to("..")
    (layer / "final").symlink_to("/secret")
    getter = DirFileGetter(str(layer))
    try:
        for name in ("up/secret", "../secret", "up/up/secret"):
            with pytest.raises(Exception, match="not in the layer"):
                getter.open(name)
        with pytest.raises(OSError):  # a symlink as the file itself is not followed
            getter.open("final")
    finally:
        getter.close()


def test_getter_keeps_few_fds_and_releases_them(tmp_path: Path) -> None:
    for i in range(200):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"%d" % i)
    before = _fds()
    getter = DirFileGetter(str(tmp_path))
    for i in range(200):
        with getter.open(f"d{i}/f") as f:
            assert f.read() == b"%d" % i
    assert _fds() - before < 100
    getter.close()
    assert _fds() == before


def _busy_layer(n: int) -> bytes:
    """*n* rounds of every usual kind of entry: directories, files (one replaced), links, whiteouts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            d = f"d{i % 7}"
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            for data in (b"x" * (i % 300), b"abc"):  # the second replaces the first
                info = tarfile.TarInfo(f"{d}/f{i}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for name, kind, target in ((f"{d}/s{i}", tarfile.SYMTYPE, "f0"),
                                       (f"{d}/h{i}", tarfile.LNKTYPE, f"{d}/f{i}"),
                                       (f"{d}/.wh.gone{i}", tarfile.REGTYPE, "")):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
    return buf.getvalue()


def test_the_pass_makes_no_reference_cycles(tmp_path: Path) -> None:
    # It runs with the cycle collector off, so any cycle an entry made would
    # stay until the end: ten times the entries must leave no more behind.
    def garbage(n: int) -> int:
        dest = tmp_path / f"dest{n}"
        dest.mkdir()
        gc.collect()
        gc.disable()  # nothing collects before the count below
        try:
            with open(tmp_path / f"meta{n}.gz", "wb") as out:
                one_pass.ingest(io.BytesIO(_busy_layer(n)), str(dest), apply, tarsplit_out=out, inline=True)
            assert not gc.isenabled()  # left as it was found
            return gc.collect()
        finally:
            gc.enable()

    few, many = garbage(50), garbage(500)
    assert many <= few + 5, (few, many)


def test_the_pass_switches_the_collector_back_on(tmp_path: Path) -> None:
    assert gc.isenabled()
    with pytest.raises(ArchiveError):
        run(tmp_path, io.BytesIO(LAYER[:5000]), True)  # cut short: the pass fails
    assert gc.isenabled()
    (tmp_path / "again").mkdir()
    run(tmp_path / "again", io.BytesIO(LAYER), True)
    assert gc.isenabled()

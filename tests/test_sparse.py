"""Sparse files: GNU ``S`` entries and PAX ``GNU.sparse.*`` formats 0.0, 0.1 and 1.0.

Go's test archives and GNU tar's own output are unpacked with their holes,
given back byte for byte (by ``diff`` and by the real ``tar-split asm``), and
held to their data by ``check``; maps that do not fit their data are refused
with exit 6 and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.errors import ArchiveError, CorruptArchive
from graphdriver.fs.tree import copy_tree
from graphdriver.layerio import sparse
from graphdriver.layerio.tarstream import TarReader
from graphdriver.testing.conformance import SPARSE_FORMATS, data_extents
from graphdriver.testing.setups import DriverSetup, open_store
from tests.conftest import CORPUS, run_cli

GO = CORPUS / "go-archive-tar"
#: Go's archives with sparse files, and the names in them.
GO_SPARSE = ["gnu-nil-sparse-data.tar", "gnu-nil-sparse-hole.tar", "gnu-sparse-big.tar",
             "pax-nil-sparse-data.tar", "pax-nil-sparse-hole.tar", "pax-sparse-big.tar",
             "sparse-formats.tar"]
#: The MD5 of each file of ``sparse-formats.tar``, as Go's reader tests give them.
SPARSE_FORMATS_MD5 = {
    "sparse-gnu": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-0.0": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-0.1": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-1.0": "6f53234398c2449fe67c1812d993012f",
    "end": "b0061974914468de549a2af8ced10316",
}
VFS = DriverSetup("vfs")


@pytest.fixture
def vfs_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_store(tmp_path / "store", tmp_path / "run", VFS)


def _layer_dir(store, layer_id: str) -> Path:  # type: ignore[no-untyped-def]
    return Path(store.driver.own_files(layer_id) or store.driver.apply_target(layer_id).path)


def _same_content(a: Path, b: Path) -> bool:
    """Whether two (maybe huge, sparse) files hold the same bytes, reading their data only."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(set(data_extents(a)) | set(data_extents(b))):
            at = start
            while at < end:
                n = min(end - at, 1 << 20)
                if os.pread(fa.fileno(), n, at) != os.pread(fb.fileno(), n, at):
                    return False
                at += n
    return True


# ----- the reader ------------------------------------------------------------------------------------


def test_maps_of_every_format_are_read() -> None:
    entries = list(TarReader(io.BytesIO((GO / "sparse-formats.tar").read_bytes())))
    maps = {e.name: e.sparse for e in entries}
    assert maps["end"] is None
    gnu = maps["sparse-gnu"]
    assert gnu is not None and gnu.size == 200
    # 95 fragments: the header's four, then extension blocks.
    assert gnu.fragments is not None and len(gnu.fragments) > 21 + 4
    for name in ("sparse-posix-0.0", "sparse-posix-0.1"):
        assert maps[name] == gnu
    one = maps["sparse-posix-1.0"]
    assert one is not None and one.fragments is None and one.size == 200  # its map is in the data
    (big,) = TarReader(io.BytesIO((GO / "gnu-sparse-big.tar").read_bytes()))
    assert big.sparse is not None and big.sparse.size == 60_000_000_000


def test_a_sparse_entry_data_goes_to_the_raw_bytes() -> None:
    data = (GO / "pax-nil-sparse-data.tar").read_bytes()
    raw: list[bytes] = []
    files: list[bytes] = []
    told: list[int] = []
    reader = TarReader(io.BytesIO(data), raw_sink=lambda b: raw.append(bytes(b)),
                       data_sink=lambda b: files.append(bytes(b)),
                       entry_sink=lambda e: told.append(e.size))
    assert [e.name for e in reader] == ["sparse.db"]
    assert files == [] and told == [0]
    assert b"".join(raw) == data


# ----- the sparse module -----------------------------------------------------------------------------


def test_fragments_are_checked_as_go_checks_them() -> None:
    sparse.check(((0, 5), (10, 5)), 20, 10, "f")
    sparse.check((), 20, 0, "f")
    for fragments, size, data, why in [
        (((0, 5), (3, 5)), 20, 10, "overlap"),
        (((10, 5), (0, 5)), 20, 10, "overlap"),
        (((0, 5), (18, 5)), 20, 10, "end"),
        (((0, 5),), 20, 10, "left over"),
        (((0, 5), (10, 5)), 20, 7, "missing"),
    ]:
        with pytest.raises(CorruptArchive, match=why):
            sparse.check(fragments, size, data, "f")


def test_pax_maps() -> None:
    m = sparse.from_pax({"GNU.sparse.map": b"0,5,10,5", "GNU.sparse.size": b"20"}, 10, "f")
    assert m == sparse.SparseMap(((0, 5), (10, 5)), 20)
    m = sparse.from_pax({"GNU.sparse.major": b"1", "GNU.sparse.minor": b"0",
                         "GNU.sparse.realsize": b"20"}, 512, "f")
    assert m == sparse.SparseMap(None, 20)
    assert sparse.from_pax({"GNU.sparse.major": b"2", "GNU.sparse.minor": b"0"}, 0, "f") is None
    # Go parses these numbers with strconv.ParseInt, which takes one leading plus sign
    m = sparse.from_pax({"GNU.sparse.map": b"+0,5,10,+5", "GNU.sparse.size": b"+20"}, 10, "f")
    assert m == sparse.SparseMap(((0, 5), (10, 5)), 20)
    for records in ({"GNU.sparse.map": b"0,5,10"}, {"GNU.sparse.map": b"0,x"},
                    {"GNU.sparse.map": b"0,5", "GNU.sparse.numblocks": b"2"},
                    {"GNU.sparse.map": b"0,5", "GNU.sparse.size": b"-1"},
                    {"GNU.sparse.map": b"0,++5"}, {"GNU.sparse.map": b"0,+"}):
        with pytest.raises(CorruptArchive, match="sparse map"):
            sparse.from_pax(records, 5, "f")


def test_a_map_in_the_data_is_read_to_its_padded_end() -> None:
    text = b"2\n0\n5\n10\n5\n"
    data = io.BytesIO(text + bytes(512 - len(text)) + b"abcdeABCDE")
    assert sparse.read_map(data.read, 522, "f") == (((0, 5), (10, 5)), 512)
    text = b"+2\n0\n+5\n10\n5\n"
    data = io.BytesIO(text + bytes(512 - len(text)) + b"abcdeABCDE")
    assert sparse.read_map(data.read, 522, "f") == (((0, 5), (10, 5)), 512)
    with pytest.raises(CorruptArchive, match="more fragments"):
        sparse.read_map(io.BytesIO(b"999999999999\n" + bytes(600)).read, 1024, "f")
    with pytest.raises(CorruptArchive, match="does not end"):
        sparse.read_map(io.BytesIO(b"3\n0\n5\n" + bytes(506)).read, 512, "f")


def test_a_file_is_held_to_its_fragments_and_holes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 3 << 20)
        os.pwrite(fd, b"abc", 1 << 20)
        fragments = ((1 << 20, 3),)
        digest = sparse.fragment_digest(fragments, io.BytesIO(b"abc").read)
        assert sparse.file_matches(fd, fragments, digest)
        os.pwrite(fd, b"\0", 2 << 20)  # a written zero is still all zeros
        assert sparse.file_matches(fd, fragments, digest)
        os.pwrite(fd, b"x", 2 << 20)
        assert not sparse.file_matches(fd, fragments, digest)
        os.pwrite(fd, b"\0", 2 << 20)
        os.pwrite(fd, b"b", (1 << 20) + 2)
        assert not sparse.file_matches(fd, fragments, digest)
    finally:
        os.close(fd)


# ----- real archives ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in GO_SPARSE if n != "sparse-formats.tar"])
def test_go_archives_unpack_as_gnu_tar_unpacks_them(vfs_store, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    data = (GO / name).read_bytes()
    vfs_store.import_layer("l", None, io.BytesIO(data))
    ref = tmp_path / "ref"
    ref.mkdir()
    subprocess.run(["tar", "-xf", str(GO / name), "-C", str(ref)], check=True)
    mine = _layer_dir(vfs_store, "l")
    (only,) = os.listdir(ref)
    assert os.listdir(mine) == [only]
    assert _same_content(mine / only, ref / only)
    # The store's file is on disk (an import is synced); tar's is compared once it is too:
    # before writeback a filesystem may count the blocks it reserved, not those it gave.
    fd = os.open(ref / only, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (mine / only).stat().st_blocks <= (ref / only).stat().st_blocks + 8


def test_sparse_formats_archive_gives_gos_checksums(vfs_store) -> None:  # type: ignore[no-untyped-def]
    """GNU tar stops inside this archive; Go reads it whole, and so does this store."""
    vfs_store.import_layer("l", None, io.BytesIO((GO / "sparse-formats.tar").read_bytes()))
    root = _layer_dir(vfs_store, "l")
    got = {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in os.listdir(root)}
    assert got == SPARSE_FORMATS_MD5


@pytest.mark.parametrize("name", GO_SPARSE)
def test_cli_gives_the_archive_back_and_tar_split_asm_too(tmp_path: Path, name: str) -> None:
    """Byte for byte, from ``diff`` and from the real tool with ``tarsplit``'s metadata
    (tar-split's own disassembler records a sparse file's unpacked bytes, and cannot)."""
    if shutil.which("tar-split") is None:
        pytest.skip("the tar-split tool is not installed")
    root = tmp_path / "store"
    run_cli("import", "l", str(GO / name), root=root, driver="vfs", check=True)
    out = run_cli("diff", "l", root=root, check=True).stdout
    assert out == (GO / name).read_bytes()
    assert run_cli("check", "l", root=root, check=True).stdout == b"l: ok\n"
    run_cli("tarsplit", "l", "-o", str(tmp_path / "ts.gz"), root=root, check=True)
    layer_dir = run_cli("mount", "l", root=root, check=True).stdout.decode().strip()
    asm = tmp_path / "asm.tar"
    subprocess.run(["tar-split", "asm", "--input", str(tmp_path / "ts.gz"), "--path", layer_dir,
                    "--output", str(asm)], check=True, capture_output=True)
    run_cli("unmount", "l", root=root, check=True)
    assert asm.read_bytes() == (GO / name).read_bytes()


def test_a_copy_keeps_the_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    with open(src / "img", "wb") as f:
        f.truncate(1 << 30)
        f.seek(512 << 20)
        f.write(b"data")
    copy_tree(str(src), str(dst), reflink=False)
    assert (dst / "img").stat().st_size == 1 << 30
    assert (dst / "img").stat().st_blocks * 512 <= 1 << 20
    assert _same_content(src / "img", dst / "img")


# ----- GNU tar's output, any layout ---------------------------------------------------------------


_layouts = st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=9000)),
                    max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=_layouts, tail=st.integers(0, 1 << 16), tar_format=st.sampled_from(sorted(SPARSE_FORMATS)))
def test_any_sparse_file_gnu_tar_writes_round_trips(tmp_path_factory, layout, tail, tar_format) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("rt")
    src = tmp / "src"
    src.mkdir()
    path = src / "f"
    with open(path, "wb") as f:
        for offset, data in layout:
            f.seek(offset)
            f.write(data)
        f.truncate(f.seek(0, os.SEEK_END) + tail)
    archive = tmp / "a.tar"
    subprocess.run(["tar", "--sparse", *SPARSE_FORMATS[tar_format], "-cf", str(archive), "-C",
                    str(src), "f"], check=True)
    store = open_store(tmp / "store", tmp / "run", VFS)
    store.import_layer("l", None, io.BytesIO(archive.read_bytes()))
    assert (_layer_dir(store, "l") / "f").read_bytes() == path.read_bytes()
    out = io.BytesIO()
    store.diff("l", out)
    assert out.getvalue() == archive.read_bytes()
    assert store.check(["l"]) == [("l", None)]


# ----- maps that do not fit --------------------------------------------------------------------------


def _pax_sparse(records: dict[str, str], data: bytes, name: str = "f") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = records
        tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _map_1x0(*numbers: int) -> bytes:
    text = b"".join(b"%d\n" % n for n in numbers)
    return text + bytes(-len(text) % 512)


_V1 = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f"}
HOSTILE = {
    "overlapping": _pax_sparse({"GNU.sparse.map": "0,5,3,5", "GNU.sparse.size": "20"}, b"a" * 10),
    "past-the-end": _pax_sparse({"GNU.sparse.map": "0,5,18,5", "GNU.sparse.size": "20"}, b"a" * 10),
    "unreferenced-data": _pax_sparse({"GNU.sparse.map": "0,5", "GNU.sparse.size": "20"}, b"a" * 10),
    "missing-data": _pax_sparse({**_V1, "GNU.sparse.realsize": "20"}, _map_1x0(1, 0, 15) + b"a" * 5),
    "map-never-ends": _pax_sparse({**_V1, "GNU.sparse.realsize": "20"}, b"5\n" + b"1" * 2000),
    "billions-of-fragments": _pax_sparse({**_V1, "GNU.sparse.realsize": "20"}, _map_1x0(10**12)),
    "bad-number": _pax_sparse({"GNU.sparse.map": "0,0x5", "GNU.sparse.size": "20"}, b"a" * 5),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_map_that_does_not_fit_its_data_is_exit_6_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    root = tmp_path / "store"
    proc = run_cli("import", "l", "-", root=root, driver="vfs", input=HOSTILE[case])
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.startswith(b"graphdriver: ") and proc.stderr.count(b"\n") == 1
    assert b"sparse" in proc.stderr
    assert run_cli("layers", root=root, check=True).stdout == b""
    assert [n for n in os.listdir(root / "vfs") if not n.startswith(".")] == []
    assert run_cli("cleanup", root=root, check=True).stdout == b""


def test_an_unknown_sparse_version_is_refused(tmp_path: Path) -> None:
    data = _pax_sparse({"GNU.sparse.major": "2", "GNU.sparse.minor": "0"}, b"abc")
    proc = run_cli("import", "l", "-", root=tmp_path / "store", driver="vfs", input=data)
    assert proc.returncode == 1 and b"unsupported PAX sparse file format 2.0" in proc.stderr


def test_a_gnu_sparse_file_of_many_fragments_is_taken(vfs_store, tmp_path: Path) -> None:
    """44,000 fragments: over 2,000 GNU extension blocks (1 MiB of map), which GNU tar and Go read."""
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src / "db", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(44_000):
            os.pwrite(fd, b"D" * 512, i * 8192)
        os.ftruncate(fd, 44_000 * 8192)
    finally:
        os.close(fd)
    archive = tmp_path / "frag.tar"
    subprocess.run(["tar", "--format=gnu", "--sparse", "-cf", str(archive), "-C", str(src), "db"], check=True)
    data = archive.read_bytes()
    vfs_store.import_layer("l", None, io.BytesIO(data))
    assert (_layer_dir(vfs_store, "l") / "db").read_bytes() == (src / "db").read_bytes()
    out = io.BytesIO()
    vfs_store.diff("l", out)
    assert out.getvalue() == data


def test_a_sparse_file_given_again_makes_the_layer_unreproducible(vfs_store, tmp_path: Path) -> None:
    """As a regular file given twice: its later entry replaces it (and breaks a hard link to
    it), so the layer's files no longer give back the first."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"")
    os.truncate(src / "f", 1 << 20)
    with open(src / "f", "ab") as f:
        f.write(b"data")
    os.link(src / "f", src / "h")
    archive = tmp_path / "dup.tar"
    subprocess.run(["tar", "--format=gnu", "--sparse", "-cf", str(archive), "-C", str(src), "f", "h"],
                   check=True)
    os.unlink(src / "f")
    (src / "f").write_bytes(b"small\n")
    subprocess.run(["tar", "--format=gnu", "-rf", str(archive), "-C", str(src), "f"], check=True)
    record = vfs_store.import_layer("l", None, io.BytesIO(archive.read_bytes()))
    assert record.unreproducible == "'f' appears twice"


def test_a_map_over_the_limit_is_refused_not_called_corrupt() -> None:
    big = sparse.MAX_MAP // 4
    text = b"%d\n" % big + b"0\n0\n" * big
    reader = io.BytesIO(text + bytes(-len(text) % 512))
    with pytest.raises(ArchiveError, match="more fragments than this reader takes") as caught:
        sparse.read_map(reader.read, 1 << 40, "f")
    assert not isinstance(caught.value, CorruptArchive)


def test_a_bad_map_is_found_with_the_header_and_an_apply_leaves_the_layer_whole(tmp_path: Path) -> None:
    """Found by the reader, before anything is written: the layer is not marked damaged,
    and still gives back what it was imported from."""
    root = tmp_path / "store"
    base = (GO / "pax-nil-sparse-data.tar").read_bytes()
    run_cli("import", "l", "-", root=root, driver="vfs", input=base, check=True)
    for bad, code in ((HOSTILE["overlapping"], 6), (HOSTILE["past-the-end"], 6),
                      (_pax_sparse({"GNU.sparse.major": "2", "GNU.sparse.minor": "0"}, b"abc"), 1)):
        proc = run_cli("apply", "l", "-", root=root, driver="vfs", input=bad)
        assert proc.returncode == code, proc.stderr
        assert run_cli("check", "l", root=root, check=True).stdout == b"l: ok\n"
    assert run_cli("diff", "l", root=root, check=True).stdout == base


def test_sparse_records_on_a_directory_are_corrupt() -> None:
    """As Go and GNU tar have it: only a file has a sparse map."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": "0"}
        tf.addfile(info)
    with pytest.raises(CorruptArchive, match="no file"):
        list(TarReader(io.BytesIO(out.getvalue())))

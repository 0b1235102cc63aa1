"""tar-split metadata: recording in the reading pass, reassembly, and the Go tool both ways."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphdriver.errors import ArchiveError, IntegrityError
from graphdriver.layerio import crc64, tarsplit
from graphdriver.layerio.tarsplit import (
    FILE,
    SEGMENT,
    Packer,
    SplitEntry,
    assemble,
    read_entries,
)
from graphdriver.layerio.tarstream import TarReader
from graphdriver.testing.treeutil import D, F, H, L, make_tar
from tests.conftest import CORPUS, corpus_files, with_twin


@pytest.fixture(autouse=True, params=["c", "python"], scope="module")
def recorder_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here records and reads back with the C recorder and reader and with their Python twins."""
    saved = tarsplit._c_usual
    if request.param == "python":
        tarsplit._c_usual = None
    try:
        yield from with_twin(request, tarsplit, "_CRecorder", "recorder")
    finally:
        tarsplit._c_usual = saved


def record(data: bytes) -> tuple[bytes, dict[str, list[bytes]]]:
    """(tar-split metadata, uncompressed) and the contents seen, per name in order."""
    meta = io.BytesIO()
    rec = tarsplit.recorder(meta)
    contents: dict[str, list[bytes]] = defaultdict(list)
    reader = TarReader(io.BytesIO(data), raw_sink=rec.raw, data_sink=rec.data)
    while (entry := reader.next()) is not None:
        rec.header(entry)
        contents[entry.name].append(reader.read())
    rec.finish()
    return meta.getvalue(), contents


class ListGetter:
    """Serves each name's contents in the order they were archived."""

    def __init__(self, contents: dict[str, list[bytes]]) -> None:
        self.contents = {k: list(v) for k, v in contents.items()}

    def open(self, name: str) -> BinaryIO:
        return io.BytesIO(self.contents[name].pop(0))


def reassemble(meta: bytes, getter) -> bytes:
    out = io.BytesIO()
    assemble(read_entries(io.BytesIO(meta)), getter, out.write)
    return out.getvalue()


def test_crc64_check_value_and_pure_twin():
    assert crc64.crc64_iso(b"123456789", 0) == 0xB90956C775A41001
    assert crc64.crc64_iso_pure(b"123456789") == 0xB90956C775A41001
    assert crc64.digest(0xB90956C775A41001) == bytes.fromhex("b90956c775a41001")


@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=4096))
@settings(max_examples=200)
def test_crc64_chunked_equals_whole_and_twins_agree(data, cut):
    cut = min(cut, len(data))
    whole = crc64.crc64_iso_pure(data)
    assert crc64.crc64_iso(data[cut:], crc64.crc64_iso(data[:cut], 0)) == whole
    assert crc64.crc64_iso(data, 0) == whole


def _tar_split_corpus() -> list[Path]:
    return corpus_files("tar-split")


def _load(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


@pytest.mark.parametrize("path", _tar_split_corpus(), ids=lambda p: p.name[:20])
def test_tar_split_corpus_round_trips(path):
    data = _load(path)
    meta, contents = record(data)
    assert reassemble(meta, ListGetter(contents)) == data


def _go_corpus() -> list[Path]:
    return sorted(p for p in (CORPUS / "go-archive-tar").glob("*.tar"))


@pytest.mark.parametrize("path", _go_corpus(), ids=lambda p: p.name)
def test_go_corpus_round_trips_or_is_refused(path):
    data = path.read_bytes()
    try:
        meta, contents = record(data)
    except ArchiveError:
        return  # malformed archives are refused while reading: see test_tarstream
    assert reassemble(meta, ListGetter(contents)) == data


@given(st.lists(st.tuples(st.sampled_from(["a", "b/c", "é", "d" * 120]),
                          st.binary(max_size=1500)), max_size=8),
       st.binary(max_size=700))
@settings(max_examples=100, deadline=None)
def test_round_trip_property(files, trailing):
    spec = {}
    for i, (name, data) in enumerate(files):
        spec[f"{i}/{name}"] = F(data)
    data = make_tar(spec) + trailing
    meta, contents = record(data)
    assert reassemble(meta, ListGetter(contents)) == data


def test_entries_json_shape():
    data = make_tar({"dir": D(), "dir/f": F(b"hello"), "dir/l": L("f"), "dir/h": H("dir/f")})
    meta, _ = record(data)
    entries = list(read_entries(io.BytesIO(meta)))
    assert [e.position for e in entries] == list(range(len(entries)))
    files = [e for e in entries if e.type == FILE]
    assert [e.name for e in files] == [b"dir/", b"dir/f", b"dir/l", b"dir/h"]
    f = files[1]
    assert f.size == 5 and f.payload == crc64.digest(crc64.crc64_iso(b"hello", 0))
    assert files[0].payload is None and files[0].size == 0
    assert all(e.payload for e in entries[:-1] if e.type == SEGMENT)
    assert entries[-1].type == SEGMENT and entries[-1].payload == b""  # as Go frames the end


def test_non_utf8_names_use_name_raw():
    entry = SplitEntry(FILE, None, b"caf\xe9", 0, 3)
    line = entry.to_json()
    assert b'"name_raw"' in line and b'"name"' not in line
    assert SplitEntry.from_json(line, 1).name == b"caf\xe9"


def test_changed_file_fails_loudly():
    data = make_tar({"f": F(b"original")})
    meta, contents = record(data)
    contents["f"] = [b"tampered"]
    with pytest.raises(IntegrityError, match="checksum"):
        reassemble(meta, ListGetter(contents))
    contents["f"] = [b"short"]
    with pytest.raises(IntegrityError, match="shorter"):
        reassemble(meta, ListGetter(contents))
    contents["f"] = [b"original plus"]
    with pytest.raises(IntegrityError, match="longer"):
        reassemble(meta, ListGetter(contents))


def test_malformed_metadata_is_integrity_error():
    with pytest.raises(IntegrityError):
        list(read_entries(io.BytesIO(b'{"type": 2, "payload": "!!!"}\n')))
    with pytest.raises(IntegrityError):
        list(read_entries(io.BytesIO(b"not json\n")))


# ----- the Go tool, both ways -------------------------------------------------------------

needs_go_tool = pytest.mark.skipif(shutil.which("tar-split") is None,
                                   reason="tar-split (Debian package tar-split) not installed")


def _extract(data: bytes, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xf", "-", "-C", str(dest)], input=data,
                   check=True, capture_output=True)


class DirGetter:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open(os.path.join(self.root, name), "rb")


def _sample() -> bytes:
    return make_tar({
        "etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n" * 50), "etc/empty": F(b""),
        "usr": D(), "usr/" + "x" * 150: F(b"long name"), "usr/link": L("../etc/hosts"),
        "usr/hard": H("etc/hosts"),
    })


@needs_go_tool
def test_go_asm_reassembles_our_metadata(tmp_path):
    data = _sample()
    meta, _ = record(data)
    (tmp_path / "meta.gz").write_bytes(gzip.compress(meta))
    _extract(data, tmp_path / "files")
    out = subprocess.run(["tar-split", "asm", "--input", str(tmp_path / "meta.gz"),
                          "--path", str(tmp_path / "files")], capture_output=True, check=True)
    assert out.stdout == data


@needs_go_tool
def test_we_reassemble_go_disasm_output(tmp_path):
    data = _sample()
    (tmp_path / "in.tar").write_bytes(data)
    subprocess.run(["tar-split", "disasm", "--no-stdout", "--output", str(tmp_path / "m.gz"),
                    str(tmp_path / "in.tar")], check=True, capture_output=True)
    _extract(data, tmp_path / "files")
    meta = gzip.decompress((tmp_path / "m.gz").read_bytes())
    assert reassemble(meta, DirGetter(tmp_path / "files")) == data
    ours, _ = record(data)
    # Same framing as the Go disassembler: entry for entry, the same bytes.
    theirs = [(e.type, e.name, e.size, e.payload) for e in read_entries(io.BytesIO(meta))]
    mine = [(e.type, e.name, e.size, e.payload) for e in read_entries(io.BytesIO(ours))]
    assert mine == theirs


@needs_go_tool
def test_go_disasm_lines_take_the_fast_path(tmp_path):
    (tmp_path / "in.tar").write_bytes(_sample())
    subprocess.run(["tar-split", "disasm", "--no-stdout", "--output", str(tmp_path / "m.gz"),
                    str(tmp_path / "in.tar")], check=True, capture_output=True)
    lines = gzip.decompress((tmp_path / "m.gz").read_bytes()).splitlines(keepends=True)
    # Every line but the final empty segment (``"payload":null`` in Go) is in the usual form.
    fast = [tarsplit._usual(line) for line in lines]
    assert all(e is not None for e in fast[:-1])
    assert fast[:-1] == [SplitEntry.from_json(line, i) for i, line in enumerate(lines[:-1], 1)]


# ----- the JSON lines: written by hand, read without a JSON parser when usual ----------------

_names = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"a<b>&c", b'q"uote', b"back\\slash", b"tab\there", b"./etc/hosts", b"caf\xe9"]),
)


@given(st.sampled_from([FILE, SEGMENT]), _names, st.integers(min_value=0, max_value=2**40),
       st.one_of(st.none(), st.binary(max_size=600)), st.integers(min_value=0, max_value=10**6),
       st.booleans())
@settings(max_examples=300)
def test_lines_read_back_the_same_by_both_parsers(kind, name, size, payload, position, newline):
    if kind == SEGMENT:
        name, size = b"", 0
    line = SplitEntry(kind, payload, name, size, position).to_json() + (b"\n" if newline else b"")
    parsed = tarsplit.parse_line(line, 1)
    assert parsed == SplitEntry.from_json(line.strip(), 1)
    assert (parsed.type, parsed.payload, parsed.name, parsed.size) == (kind, payload, name, size)


# The usual file line, as a regular expression: what the hand-written reader must accept.
_USUAL_FILE = re.compile(
    rb'\{"type":1,"name":"([ !#-\[\]-~]*)",(?:"size":([0-9]{1,19}),)?'
    rb'"payload":(?:null|"([A-Za-z0-9+/=]*)"),"position":([0-9]{1,19})\}\n?'
)


@st.composite
def _file_lines(draw):
    """A file line as this module writes it, then perhaps damaged a few bytes at a time."""
    line = SplitEntry(FILE, draw(st.one_of(st.none(), st.binary(min_size=8, max_size=8))),
                      draw(_names), draw(st.integers(min_value=0, max_value=2**64)),
                      draw(st.integers(min_value=0, max_value=10**20))).to_json()
    line += draw(st.sampled_from([b"", b"\n", b"\n\n", b" "]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(line)))
        how = draw(st.sampled_from(["drop", "put", "swap"]))
        byte = draw(st.sampled_from([b'"', b",", b":", b"}", b"\\", b"0", b"-", b" ", b"A", b"=", b"\n"]))
        if how == "drop":
            line = line[:at] + line[at + 1 :]
        elif how == "put":
            line = line[:at] + byte + line[at:]
        else:
            line = line[:at] + byte + line[at + 1 :]
    return line


@given(_file_lines())
@settings(max_examples=500)
def test_the_usual_file_line_is_read_as_its_pattern_says(line):
    m = _USUAL_FILE.fullmatch(line)
    expected = None if m is None else (m[1], m[2] or b"", m[3], m[4])
    assert tarsplit._file_fields(line) == expected


@pytest.mark.parametrize("line", [
    b'{"type":2,"payload":"AAAA\\/A==","position":0}',  # an escaped slash: valid JSON
    b'{"type":1,"name":"a\\u003cb","size":3,"payload":"AAAAAAAAAAA=","position":1}',
    b'{"position":1,"type":1,"name":"x","payload":null}',  # another member order
    b'{"type":2,"payload":null,"position":7}',
    b'{"type":2, "payload": "AAAA", "position": 0}',  # spaces
])
def test_unusual_but_valid_lines_go_to_the_json_parser(line):
    assert tarsplit._usual(line) is None or tarsplit._usual(line) == SplitEntry.from_json(line, 1)
    assert tarsplit.parse_line(line, 1) == SplitEntry.from_json(line, 1)


@pytest.mark.parametrize("line", [
    b'{"type":2,"payload":"A===","position":0}',  # bad padding
    b'{"type":2,"payload":"AAAA","position":0}}',  # extra data
    b'{"type":1,"name":"x","size":3,"payload":"!!!!","position":1}',
    b'{"type":2,"payload":"AAAA","position":' + b"9" * 5000 + b"}",
])
def test_malformed_usual_looking_lines_are_integrity_errors(line):
    with pytest.raises(IntegrityError):
        list(read_entries(io.BytesIO(line + b"\n")))


def test_packer_batches_lines_in_order():
    out = io.BytesIO()
    packer = Packer(out)
    for i in range(5000):
        packer.segment(bytes([i % 256]) * (i % 700 + 1))
        packer.file(b"f%d" % i, i, i * 7)
    assert out.getvalue() != b""  # batches were written before the end
    packer.flush()
    entries = list(read_entries(io.BytesIO(out.getvalue())))
    assert [e.position for e in entries] == list(range(10_000))
    assert entries[2 * 4999].payload == bytes([4999 % 256]) * (4999 % 700 + 1)
    assert entries[2 * 4999 + 1].payload == crc64.digest(4999 * 7)


# ----- reassembly: batches, big files, errors, the pure CRC twin -------------------------------


def test_big_files_and_segments_cross_batches():
    big = bytes(range(256)) * 12_000  # ~3 MiB: more than a batch, read whole (under 16 MiB)
    data = make_tar({"a": F(b"x" * 5), "big": F(big), "b": F(b"y" * 700)})
    meta, contents = record(data)
    assert reassemble(meta, ListGetter(contents)) == data


def test_files_over_the_verify_limit_are_streamed(monkeypatch):
    big = os.urandom(3 << 20)
    data = make_tar({"big": F(big), "after": F(b"tail")})
    meta, contents = record(data)
    monkeypatch.setattr(tarsplit, "VERIFY_BEFORE_WRITE", 1 << 20)
    assert reassemble(meta, ListGetter(contents)) == data
    contents["big"] = [big[:-1] + b"\0" if big[-1] else big[:-1] + b"\1"]
    with pytest.raises(IntegrityError, match="checksum"):
        reassemble(meta, ListGetter(contents))
    contents["big"] = [big[:-5]]
    with pytest.raises(IntegrityError, match="shorter"):
        reassemble(meta, ListGetter(contents))
    contents["big"] = [big + b"more"]
    with pytest.raises(IntegrityError, match="longer"):
        reassemble(meta, ListGetter(contents))


def test_bytes_before_a_bad_file_are_written_then_the_error_raised():
    data = make_tar({"good": F(b"good" * 100), "bad": F(b"original")})
    meta, contents = record(data)
    contents["bad"] = [b"tampered"]
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match="'bad'"):
        assemble(read_entries(io.BytesIO(meta)), ListGetter(contents), out.write)
    written = out.getvalue()
    assert written and data.startswith(written)
    assert b"good" * 100 in written and b"tampered" not in written


def test_a_failing_write_is_raised_to_the_caller():
    data = make_tar({f"f{i}": F(os.urandom(300_000)) for i in range(10)})
    meta, contents = record(data)
    calls = []

    def write(view):
        calls.append(len(view))
        if len(calls) == 2:
            raise BrokenPipeError("reader went away")

    with pytest.raises(BrokenPipeError):
        assemble(read_entries(io.BytesIO(meta)), ListGetter(contents), write)
    assert len(calls) == 2  # nothing more is written after the failure


def test_a_directory_where_a_file_was_is_an_integrity_error(tmp_path):
    from graphdriver.layerio.getter import DirFileGetter

    data = make_tar({"f": F(b"content")})
    meta, _ = record(data)
    (tmp_path / "f").mkdir()
    getter = DirFileGetter(str(tmp_path))
    try:
        with pytest.raises(IntegrityError, match="'f'"):
            assemble(read_entries(io.BytesIO(meta)), getter, lambda _v: None)
    finally:
        getter.close()


def test_the_pure_crc_twin_records_and_reassembles(monkeypatch):
    data = _sample()
    fast_meta, contents = record(data)
    monkeypatch.setattr(tarsplit, "crc64_iso", crc64.crc64_iso_pure)
    pure_meta, _ = record(data)
    assert pure_meta == fast_meta
    assert reassemble(pure_meta, ListGetter(contents)) == data


def test_graphdriver_pure_forces_the_twin():
    code = "from graphdriver.layerio import crc64; print(crc64.IMPLEMENTATION)"
    env = dict(os.environ, GRAPHDRIVER_PURE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert out.stdout.strip() == b"pure"

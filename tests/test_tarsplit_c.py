"""The C tar-split recorder writes exactly what the Python one writes.

Both are fed by the same reader pass (every corpus archive, Hypothesis-made
archives, names of every kind, trailing bytes, archives cut short) and must
produce the same bytes, batch by batch, and the same errors.
"""

from __future__ import annotations

import gc
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.errors import ArchiveError
from graphdriver.layerio import tarsplit
from graphdriver.layerio.crc64 import crc64_iso
from graphdriver.layerio.entry import REG, TarEntry
from graphdriver.layerio.tarstream import TarReader
from tests.conftest import CORPUS, ROOT
from tests.strategies import names, tar_entries
from tests.strategies import write_tar as write

CRecorder = tarsplit._CRecorder
pytestmark = pytest.mark.skipif(
    CRecorder is None, reason="the C recorder is not in use here (not built at install, or GRAPHDRIVER_PURE)"
)


class Batches:
    """A write target that keeps every batch apart (the Packer's batching must match too)."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.batches.append(bytes(data))
        return len(data)


def _record(data: bytes, c: bool, bufsize: int = 1 << 16) -> tuple[list[bytes], str | None]:
    out = Batches()
    rec: Any = (CRecorder(out.write, crc64_iso, tarsplit._json_name) if c  # type: ignore[misc]
                else tarsplit.Recorder(tarsplit.Packer(out)))  # type: ignore[arg-type]
    reader = TarReader(io.BytesIO(data), raw_sink=rec.raw, data_sink=rec.data, entry_sink=rec.header,
                       bufsize=bufsize)
    try:
        while (entry := reader.next()) is not None:
            if entry.size and entry.offset % 3 == 0:
                reader.read(min(entry.size, 7))  # part read, the rest skipped: both paths feed the sink
        reader.trailing  # noqa: B018
        rec.finish()
    except ArchiveError as e:
        return out.batches, str(e)
    return out.batches, None


def same(data: bytes, bufsize: int = 1 << 16) -> None:
    assert _record(data, True, bufsize) == _record(data, False, bufsize)


def _corpus() -> list[Path]:
    skip = ("LICENSE", "README")
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and not p.name.startswith(skip))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_the_corpus_records_the_same_both_ways(path: Path) -> None:
    import bz2
    import gzip

    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    elif path.suffix == ".bz2":
        data = bz2.decompress(data)
    same(data)
    same(data, bufsize=700)


@given(st.lists(tar_entries(), max_size=6), st.binary(max_size=1500))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_written_archives_record_the_same_both_ways(items: list[tuple[TarEntry, bytes | None]],
                                                   trailing: bytes) -> None:
    data = write(items) + trailing
    same(data)
    same(data[: len(data) // 2])  # cut short: the same lines, then the same error


@given(st.lists(names, min_size=1, max_size=5))
@settings(max_examples=100, deadline=None)
def test_names_of_every_kind_record_the_same_both_ways(ns: list[str]) -> None:
    extra = ['a"b', "back\\slash", "tab\there", "new\nline", "\x7f", "é", "😀", "\udcff"]
    items = [(TarEntry(n, type=REG, size=1), b"x") for n in [*ns, *extra]]
    same(write(items))


def test_lines_crossing_batches_record_the_same_both_ways() -> None:
    items = [(TarEntry(f"dir/{i:05d}-" + "n" * 90, type=REG, size=i % 3), b"ab"[: i % 3])
             for i in range(4000)]
    batches, error = _record(write(items), True)
    assert error is None and len(batches) > 2
    same(write(items))


def test_a_sparse_file_with_much_data_records_the_same_both_ways_in_bounded_lines(tmp_path: Path) -> None:
    """A sparse entry's stored bytes are raw bytes: 4 MiB segments, not one line as large as them."""
    import os
    import subprocess

    with open(tmp_path / "f", "wb") as f:
        for at in (0, 64 << 20, 200 << 20):
            f.seek(at)
            f.write(os.urandom(5 << 20))
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(archive), "-C", str(tmp_path), "f"],
                   check=True)
    data = archive.read_bytes()
    c, python = _record(data, True), _record(data, False)
    assert c == python and c[1] is None
    lines = b"".join(c[0]).splitlines()
    assert len(lines) > 4 and max(len(line) for line in lines) < 6 << 20


def test_empty_and_zero_archives_record_the_same_both_ways() -> None:
    for data in (b"", b"\0" * 512, b"\0" * 1024, b"\0" * 10240, b"\0" * 1024 + b"after the end"):
        same(data)


def test_errors_of_the_write_and_crc_functions_reach_the_caller() -> None:
    def failing_write(_data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def failing_crc(_data: object, _crc: int) -> int:
        raise ValueError("crc")

    data = write([(TarEntry("f", type=REG, size=3), b"abc")])
    rec = CRecorder(failing_write, crc64_iso, tarsplit._json_name)  # type: ignore[misc]
    reader = TarReader(io.BytesIO(data), raw_sink=rec.raw, data_sink=rec.data, entry_sink=rec.header)
    while reader.next() is not None:
        pass
    with pytest.raises(OSError, match="No space"):
        rec.finish()
    rec = CRecorder(Batches().write, failing_crc, tarsplit._json_name)  # type: ignore[misc]
    reader = TarReader(io.BytesIO(data), raw_sink=rec.raw, data_sink=rec.data, entry_sink=rec.header)
    with pytest.raises(ValueError, match="crc"):
        while reader.next() is not None:
            pass


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        CRecorder()  # type: ignore[misc]
    rec = CRecorder(Batches().write, crc64_iso, lambda _n: "not bytes")  # type: ignore[misc]
    with pytest.raises(TypeError):
        rec.raw(12)
    with pytest.raises(TypeError, match="bytes"):
        rec.header(TarEntry("é", type=REG))  # json_name is asked for a name that is not plain


def _growth(work: Callable[[], object]) -> int:
    """Bytes still held after 300 more calls of *work* than after one (warmed up first)."""
    import tracemalloc

    def rounds(n: int) -> int:
        for _ in range(n):
            work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        rounds(20)
        before = rounds(1)
        after = rounds(300)
    finally:
        tracemalloc.stop()
    return after - before


def test_no_memory_is_leaked() -> None:
    data = write([(TarEntry(f"d/é{i}", type=REG, size=5), b"12345") for i in range(50)])
    # a leak of one name per entry would be over 600 KB
    assert _growth(lambda: _record(data, True)) < 64 * 1024


def test_imports_record_with_the_c_recorder(tmp_path: Path) -> None:
    """What ``import`` writes is what the Python recorder writes, read back as lines."""
    import gzip
    import subprocess

    layer = write([(TarEntry("etc/hello", type=REG, size=6), b"hello\n"),
                   (TarEntry("etc/é", type=REG, size=0), b"")])
    (tmp_path / "l.tar").write_bytes(layer)
    run = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "s"), "--run-root",
           str(tmp_path / "r"), "--driver", "vfs"]
    subprocess.run([*run, "import", "l", str(tmp_path / "l.tar")], check=True, capture_output=True,
                   cwd=ROOT)
    stored = subprocess.run([*run, "tarsplit", "l"], check=True, capture_output=True, cwd=ROOT).stdout
    expected = b"".join(_record(layer, False)[0])
    assert gzip.decompress(stored) == expected



# The C line reader (usual) answers every line as tarsplit._usual does: the same
# entry, or None (the JSON parser's turn), whatever the line.

c_usual = tarsplit._c_usual

_EDGE_LINES = [
    b'{"type":2,"payload":"QUJD","position":7}\n',
    b'{"type":2,"payload":"QUJD","position":7}',
    b'{"type":2,"payload":"","position":0}\n',
    b'{"type":2,"payload":"QR==","position":1}',  # unused bits set: binascii takes it
    b'{"type":2,"payload":"QUJ=","position":1}',
    b'{"type":2,"payload":"Q===","position":1}',
    b'{"type":2,"payload":"QQ=","position":1}',
    b'{"type":2,"payload":"====","position":1}',
    b'{"type":2,"payload":"QQ==QQ==","position":1}',
    b'{"type":2,"payload":"QU=D","position":1}',
    b'{"type":2,"payload":"QU\\/D","position":1}',
    b'{"type":2,"payload":"QUJD=","position":1}',  # '=' after a whole quad: binascii's strict mode takes it
    b'{"type":2,"payload":"QUJD===","position":1}',
    b'{"type":2,"payload":"QQ===","position":1}',
    b'{"type":2,"payload":"QUJDQ==","position":1}',
    b'{"type":2,"payload":"QUJD","position":007}',
    b'{"type":2,"payload":"QUJD","position":9999999999999999999}',
    b'{"type":2,"payload":"QUJD","position":18446744073709551615}',
    b'{"type":2,"payload":"QUJD","position":-1}',
    b'{"type":2,"payload":"QUJD","position":1}\r\n',
    b'{"type":2,"payload":"QUJD","position":}',
    b'{"type":2,"payload":"QUJD"',
    b'{"type":2,"payload":"',
    b'{"type":2,"payload":null,"position":3}',
    b'{"type":1,"name":"a","size":3,"payload":"AAAAAAAAAAA=","position":2}\n',
    b'{"type":1,"name":"a","payload":null,"position":2}\n',
    b'{"type":1,"name":"a","payload":"","position":2}',
    b'{"type":1,"name":"","payload":null,"position":2}',
    b'{"type":1,"name":"a","size":,"payload":null,"position":2}',
    b'{"type":1,"name":"a","size":00,"payload":null,"position":2}',
    b'{"type":1,"name":"a","size":12345678901234567890,"payload":null,"position":2}',
    b'{"type":1,"name":"a","size":1,"payload":nul,"position":2}',
    b'{"type":1,"name":"a","size":1,"payload":"AA=A","position":2}',
    b'{"type":1,"name":"a","size":1,"payload":"AAAA,"position":2}',
    b'{"type":1,"name":"a\\u00e9","payload":null,"position":2}',
    b'{"type":1,"name":"a\xc3\xa9","payload":null,"position":2}',
    b'{"type":1,"name":"a\tb","payload":null,"position":2}',
    b'{"type":1,"name":"a","payload":null,"position":2}}',
    b'{"type":1,"name":"a","payload":null,"position":2',
    b'{"type":1,"name":"a","payload":null,"position":2} ',
    b'{"type":1,"name":"a","payload":null}',
    b'{"type":1,"name_raw":"YQ==","payload":null,"position":2}',
    b'{"type":1,"name":"a',
    b'{"type":1,"name":"',
    b'{"type":1,"name":"a"}\n',
    b'{"type":3,"payload":"","position":0}',
    b"", b"\n", b"}", b"{}", b"{\n",
]


def _answer(line: bytes, c: bool) -> object:
    try:
        return c_usual(line, tarsplit.SplitEntry) if c else tarsplit._usual(line)  # type: ignore[misc]
    except Exception as e:  # pragma: no cover - neither may raise; shown as a difference
        return repr(e)


def _same_answer(line: bytes) -> None:
    assert _answer(line, True) == _answer(line, False), line
    assert _answer(bytearray(line), True) == _answer(bytearray(line), False), line


@pytest.mark.parametrize("line", _EDGE_LINES)
def test_the_c_reader_reads_edge_lines_as_python_does(line: bytes) -> None:
    _same_answer(line)


def test_the_edge_lines_take_both_ways() -> None:
    """The list above is worth its name: it holds lines read at once and lines left to JSON."""
    answers = [_answer(line, True) for line in _EDGE_LINES]
    assert sum(a is None for a in answers) > 20
    assert sum(isinstance(a, tarsplit.SplitEntry) for a in answers) > 8


def _lines(items: list[tuple[TarEntry, bytes | None]]) -> list[bytes]:
    return b"".join(_record(write(items), False)[0]).splitlines(keepends=True)


@given(st.lists(tar_entries(), max_size=6), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_c_reader_reads_written_and_damaged_lines_as_python_does(
        items: list[tuple[TarEntry, bytes | None]], data: st.DataObject) -> None:
    for line in _lines(items):
        _same_answer(line)
        _same_answer(line.rstrip(b"\n"))
        if len(line) > 1:
            at = data.draw(st.integers(0, len(line) - 1))
            _same_answer(line[:at])
            _same_answer(line[:at] + data.draw(st.binary(min_size=1, max_size=3)) + line[at + 1 :])
            _same_answer(line[:at] + line[at + 1 :])


@given(st.binary(max_size=40).map(lambda b: bytes(b"AQM/+="[c % 6] for c in b)), st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_c_reader_reads_base64_of_every_shape_as_python_does(payload: bytes, segment: bool) -> None:
    line = (b'{"type":2,"payload":"%s","position":1}\n' if segment
            else b'{"type":1,"name":"n","size":1,"payload":"%s","position":1}\n') % payload
    _same_answer(line)


@given(st.lists(names, min_size=1, max_size=5))
@settings(max_examples=100, deadline=None)
def test_the_c_reader_reads_names_of_every_kind_as_python_does(ns: list[str]) -> None:
    for line in _lines([(TarEntry(n, type=REG, size=1), b"x") for n in ns]):
        _same_answer(line)


def test_the_c_reader_leaks_no_memory() -> None:
    lines = [*_EDGE_LINES, *_lines([(TarEntry(f"d/{i}", type=REG, size=5), b"12345") for i in range(50)])]

    def read() -> None:
        for line in lines:
            c_usual(line, tarsplit.SplitEntry)  # type: ignore[misc]

    assert _growth(read) < 64 * 1024  # a leak of one payload per line would be over 1 MB


def test_the_c_reader_refuses_what_is_not_bytes() -> None:
    for line in ("text", memoryview(b"{}"), 12):
        with pytest.raises(TypeError):
            c_usual(line, tarsplit.SplitEntry)  # type: ignore[misc]
    with pytest.raises(TypeError):
        c_usual(b"x")  # type: ignore[misc]

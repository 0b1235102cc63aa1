"""The conformance scenarios that apply to Windows layers, run on ``windowsfilter``.

A Windows layer keeps its volume under ``Files/`` and knows no owners,
permission bits, devices or opaque directories, so the scenarios are the
suite's own (``test_layers.py``) with Windows tarballs (from
:mod:`tests.wingen`) and ``/Files/...`` change paths; the ones about Unix
metadata (owners, setuid bits, devices, GNU tar fidelity) and opaque
directories have no Windows counterpart and are left out.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from graphdriver.diff.changes import ChangeKind
from graphdriver.errors import AlreadyExists, ArchiveError, NotFound, Precondition
from graphdriver.store.layers import Store, StoreOptions
from tests import wingen

# Scenarios that do not depend on a layer's content, shared with every other driver.
from tests.conformance.test_layers import test_bad_ids_refused, test_mount_is_counted  # noqa: F401
from tests.conftest import needs_root
from tests.treeutil import snapshot
from tests.wingen import Tombstone, WinDir, WinFile, WinLink

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


@pytest.fixture
def store(tmp_path: Path):
    s = Store(StoreOptions(root=str(tmp_path / "store"), run_root=str(tmp_path / "run"),
                           driver="windowsfilter"))
    yield s
    for record in s.layers():
        while s.driver.mount_count(record.id) > 0:
            s.driver.put(record.id)


def layer(*entries: wingen.Entry) -> bytes:
    return wingen.layer_tar([WinDir("Files"), *entries])


def import_layer(store: Store, layer_id: str, *entries: wingen.Entry, parent: str | None = None):
    return store.import_layer(layer_id, parent, io.BytesIO(layer(*entries)))


def changes_of(store: Store, layer_id: str, parent: str | None = None):
    return [(c.kind, c.path) for c in store.changes(layer_id, parent)]


def diff_bytes(store: Store, layer_id: str, parent: str | None = None) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out, parent)
    return out.getvalue()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


def view(store: Store, layer_id: str, **kw):
    kw.setdefault("skip", ["."])
    path = store.mount(layer_id)
    try:
        return snapshot(path, **kw)
    finally:
        store.unmount(layer_id)


BASE = [
    WinDir("Files/Windows"),
    WinFile("Files/Windows/win.ini", b"[fonts]\r\n"),
    WinFile("Files/Windows/motd.txt", b"hello\r\n"),
    WinDir("Files/ProgramData"),
    WinDir("Files/ProgramData/Cache"),
    WinFile("Files/ProgramData/Cache/a.bin", b"a" * 1000),
    WinDir("Files/Program Files"),
    WinFile("Files/Program Files/tool.exe", b"MZ" + bytes(100)),
]


# ----- creation ----------------------------------------------------------------------------------


def test_empty_layer(store):
    store.create("empty")
    assert [r.id for r in store.layers()] == ["empty"]
    path = store.mount("empty")
    try:
        assert os.listdir(path) == []
    finally:
        store.unmount("empty")
    assert store.changes("empty") == []
    assert names(diff_bytes(store, "empty")) == []
    assert store.diff_size("empty") == 0


def test_create_duplicate_refused(store):
    store.create("a")
    with pytest.raises(AlreadyExists):
        store.create("a")
    with pytest.raises(AlreadyExists):
        import_layer(store, "a", WinFile("Files/f", b"x"))


def test_missing_parent_leaves_nothing(store):
    with pytest.raises(NotFound):
        store.create("child", "nope")
    with pytest.raises(NotFound):
        import_layer(store, "child2", WinFile("Files/f", b"x"), parent="nope")
    assert store.layers() == []
    assert store.cleanup() == []


def test_snapshot_of_layer_is_same_view(store):
    import_layer(store, "base", *BASE)
    store.create("snap", "base")
    assert store.changes("snap") == []
    assert view(store, "snap") == view(store, "base")
    assert store.diff_size("snap") == 0
    assert names(diff_bytes(store, "snap")) == []


def test_deep_chain(store):
    depth = 20
    parent = None
    for i in range(depth):
        import_layer(store, f"l{i}", WinFile(f"Files/f{i}", f"layer {i}".encode()), parent=parent)
        parent = f"l{i}"
    tree = view(store, f"l{depth - 1}")
    assert sorted(tree) == sorted(f"f{i}" for i in range(depth))
    for i in (0, 7, depth - 1):
        assert changes_of(store, f"l{i}") == [(A, f"/Files/f{i}")]
    chain = store.driver.layer_chain(f"l{depth - 1}")
    assert len(chain) == depth - 1
    assert os.path.basename(chain[0]) == f"l{depth - 2}"


# ----- changes, diff, apply ----------------------------------------------------------------------


def _modify_container(root: Path) -> None:
    with open(root / "Windows/win.ini", "ab") as f:
        f.write(b"[extensions]\r\n")
    (root / "Windows/motd.txt").unlink()
    (root / "inetpub/wwwroot").mkdir(parents=True)
    (root / "inetpub/wwwroot/index.html").write_bytes(b"<h1>hi</h1>\r\n")
    shutil.rmtree(root / "ProgramData/Cache")


def _container(store: Store) -> None:
    import_layer(store, "base", *BASE)
    store.create("ctr", "base", writable=True)
    root = Path(store.mount("ctr"))
    try:
        _modify_container(root)
    finally:
        store.unmount("ctr")


@needs_root
def test_changes_adds_modifies_deletes(store):
    _container(store)
    assert changes_of(store, "ctr") == [
        (C, "/Files/ProgramData"),
        (X, "/Files/ProgramData/Cache"),
        (C, "/Files/Windows"),
        (X, "/Files/Windows/motd.txt"),
        (C, "/Files/Windows/win.ini"),
        (A, "/Files/inetpub"),
        (A, "/Files/inetpub/wwwroot"),
        (A, "/Files/inetpub/wwwroot/index.html"),
    ]
    assert sorted(names(diff_bytes(store, "ctr"))) == sorted([
        "Files/ProgramData", "Files/ProgramData/.wh.Cache", "Files/Windows", "Files/Windows/.wh.motd.txt",
        "Files/Windows/win.ini", "Files/inetpub", "Files/inetpub/wwwroot", "Files/inetpub/wwwroot/index.html",
    ])
    assert store.diff_size("ctr") == len(b"[fonts]\r\n[extensions]\r\n") + len(b"<h1>hi</h1>\r\n")


@needs_root
def test_diff_apply_round_trip(store):
    _container(store)
    data = diff_bytes(store, "ctr")
    size = store.diff_size("ctr")
    store.create("copy", "base")
    assert store.apply("copy", io.BytesIO(data)) == size
    # Windows keeps times to 100 ns: compare everything else.
    assert view(store, "copy", times=False) == view(store, "ctr", times=False)
    assert store.changes("copy") == store.changes("ctr")
    assert store.import_layer("copy2", "base", io.BytesIO(data)).size == size
    assert view(store, "copy2", times=False) == view(store, "ctr", times=False)


def test_tombstones(store):
    import_layer(store, "base", WinDir("Files/a"), WinFile("Files/a/keep", b"k"),
                 WinFile("Files/a/gone", b"g"), WinDir("Files/d"), WinFile("Files/d/x", b"x"))
    import_layer(store, "top", Tombstone("Files/a/gone"), Tombstone("Files/d"),
                 Tombstone("Files/a/nothing-there"), WinFile("Files/new", b"n"), parent="base")
    tree = view(store, "top")
    assert "a/keep" in tree and "a/gone" not in tree and "d" not in tree and "new" in tree
    assert not any(".wh." in p for p in tree)
    changes = changes_of(store, "top")
    assert (X, "/Files/a/gone") in changes and (X, "/Files/d") in changes and (A, "/Files/new") in changes
    assert (X, "/Files/a/nothing-there") not in changes


def test_same_path_twice_last_wins(store):
    import_layer(store, "l", WinFile("Files/f", b"first"), WinFile("Files/f", b"second!"))
    path = store.mount("l")
    try:
        assert Path(path, "f").read_bytes() == b"second!"
    finally:
        store.unmount("l")


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="unprivileged windowsfilter views are copies: hard links are not kept")
def test_hardlinks_counted_once(store):
    import_layer(store, "l", WinDir("Files/d"), WinFile("Files/d/a", b"x" * 100),
                 WinLink("Files/d/b", "Files/d/a"))
    tree = view(store, "l")
    assert tree["d/a"]["link_group"] == tree["d/b"]["link_group"]
    assert store.diff_size("l") == 100


# ----- removal rules ----------------------------------------------------------------------------------


def test_remove_rules(store):
    import_layer(store, "base", WinFile("Files/f", b"x"))
    store.create("child", "base")
    with pytest.raises(Precondition):
        store.remove("base")
    store.mount("child")
    with pytest.raises(Precondition):
        store.remove("child")
    store.unmount("child")
    store.remove("child")
    store.remove("base")
    assert store.layers() == []
    with pytest.raises(NotFound):
        store.remove("base")
    assert store.cleanup() == []
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []


# ----- hostile and malformed input --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Files/../../escape", "../escape", "Files/a/../../../escape"])
def test_breakout_names_refused(store, tmp_path, name):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    before = set(os.listdir(tmp_path))
    with pytest.raises(ArchiveError):
        store.import_layer("evil", None, io.BytesIO(raw.getvalue()))
    assert not store.exists("evil")
    assert set(os.listdir(tmp_path)) == before


def test_symlink_breakout_refused(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        link = tarfile.TarInfo("Files/link")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tf.addfile(link)
        info = tarfile.TarInfo("Files/link/owned")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ArchiveError):
        store.import_layer("evil", None, io.BytesIO(raw.getvalue()))
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("data", [
    b"garbage" * 100,
    layer(WinFile("Files/f", b"x"))[:300],
    layer(WinFile("Files/f", b"x" * 5000))[:3000],
])
def test_malformed_input_leaves_nothing(store, data):
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(data))
    assert store.layers() == []
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []


def test_bad_checksum_refused(store):
    data = bytearray(layer(WinFile("Files/f", b"x")))
    data[148:156] = b"0000000\0"
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(bytes(data)))
    assert not store.exists("bad")


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zstd"])
def test_compressed_imports(store, kind):
    data = layer(WinFile("Files/f", b"hello " * 1000))
    if kind == "zstd":
        zstandard = pytest.importorskip("zstandard")
        packed = zstandard.ZstdCompressor().compress(data)
    else:
        packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data)
    assert store.import_layer("z", None, io.BytesIO(packed)).size == 6000
    assert diff_bytes(store, "z") == data

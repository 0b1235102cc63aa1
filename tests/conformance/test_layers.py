"""The conformance suite: every scenario against every registered driver.

Each test takes the ``store`` fixture, which is parametrised over the drivers
that can run on this machine, so a new driver gets the whole suite for free.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from graphdriver.diff.changes import Change, ChangeKind
from graphdriver.errors import (
    AlreadyExists,
    ArchiveError,
    InvalidArgument,
    NotFound,
    Precondition,
)
from tests.conftest import needs_root
from tests.treeutil import D, Dev, F, H, L, Opaque, W, assert_same_tree, make_tar, snapshot

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def changes_of(store, layer_id, parent=None):
    return [(c.kind, c.path) for c in store.changes(layer_id, parent)]


def import_tar(store, layer_id, spec, parent=None):
    return store.import_layer(layer_id, parent, io.BytesIO(make_tar(spec)))


def diff_bytes(store, layer_id, parent=None) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out, parent)
    return out.getvalue()


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


def view(store, layer_id, **kw):
    """The mounted tree of a layer, without the root directory's own metadata.

    Layer tarballs never carry the root (``docker diff`` never lists it), so its
    times and mode belong to the store, not to the layer's content.
    """
    kw.setdefault("skip", ["."])
    path = store.mount(layer_id)
    try:
        return snapshot(path, **kw)
    finally:
        store.unmount(layer_id)


# ----- creation -------------------------------------------------------------------------


def test_empty_layer(store):
    store.create("empty")
    assert store.exists("empty")
    assert [r.id for r in store.layers()] == ["empty"]
    path = store.mount("empty")
    try:
        assert os.path.isdir(path)
        assert os.listdir(path) == []
    finally:
        store.unmount("empty")
    assert store.changes("empty") == []
    assert tar_names(diff_bytes(store, "empty")) == []
    assert store.diff_size("empty") == 0


def test_create_duplicate_refused(store):
    store.create("a")
    with pytest.raises(AlreadyExists):
        store.create("a")
    with pytest.raises(AlreadyExists):
        import_tar(store, "a", {"f": F(b"x")})


def test_missing_parent_leaves_nothing(store):
    with pytest.raises(NotFound):
        store.create("child", "nope")
    assert not store.exists("child")
    with pytest.raises(NotFound):
        import_tar(store, "child2", {"f": F(b"x")}, parent="nope")
    assert not store.exists("child2")
    assert store.layers() == []
    assert store.cleanup() == []


@pytest.mark.parametrize("bad", ["", "-a", ".a", "a/b", "../x", "a" * 129, "a b", "é"])
def test_bad_ids_refused(store, bad):
    with pytest.raises(InvalidArgument):
        store.create(bad)
    with pytest.raises(InvalidArgument):
        store.create("ok", bad)
    assert store.layers() == []


@needs_root
def test_base_layer_metadata(store):
    spec = {
        "sticky": D(mode=0o1705, uid=1, gid=2),
        "sticky/setuid": F(b"#!/bin/true\n", mode=0o4222, uid=1, gid=2),
    }
    size = import_tar(store, "base", spec).size
    assert size == len(b"#!/bin/true\n")
    tree = view(store, "base")
    assert tree["sticky"]["mode"] == oct(0o1705)
    assert (tree["sticky"]["uid"], tree["sticky"]["gid"]) == (1, 2)
    assert tree["sticky/setuid"]["mode"] == oct(0o4222)
    assert (tree["sticky/setuid"]["uid"], tree["sticky/setuid"]["gid"]) == (1, 2)


def test_snapshot_of_layer_is_same_view(store):
    import_tar(store, "base", {"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n")})
    store.create("snap", "base")
    assert store.changes("snap") == []
    assert view(store, "snap") == view(store, "base")
    assert store.diff_size("snap") == 0
    assert tar_names(diff_bytes(store, "snap")) == []


def test_deep_chain(store):
    depth = 128  # Docker's overlay2 limit; the overlay driver's own tests go to 500
    parent = None
    for i in range(depth):
        import_tar(store, f"l{i}", {f"f{i}": F(f"layer {i}".encode())}, parent=parent)
        parent = f"l{i}"
    tree = view(store, f"l{depth - 1}")
    assert sorted(k for k in tree if k != ".") == sorted(f"f{i}" for i in range(depth))
    for i in (0, 7, depth - 1):
        assert changes_of(store, f"l{i}") == [(A, f"/f{i}")]
    chain = store.driver.layer_chain(f"l{depth - 1}")
    assert len(chain) == depth - 1
    assert os.path.basename(chain[0]) == f"l{depth - 2}"


# ----- changes, diff, apply -----------------------------------------------------------


def _modify_container(root: str) -> None:
    with open(os.path.join(root, "etc/hosts"), "ab") as f:
        f.write(b"10.0.0.1 db\n")
    os.unlink(os.path.join(root, "etc/motd"))
    os.makedirs(os.path.join(root, "srv/www"))
    with open(os.path.join(root, "srv/www/index.html"), "wb") as f:
        f.write(b"<h1>hi</h1>\n")
    import shutil

    shutil.rmtree(os.path.join(root, "var/cache"))


BASE = {
    "etc": D(),
    "etc/hosts": F(b"127.0.0.1 localhost\n"),
    "etc/motd": F(b"hello\n"),
    "var": D(),
    "var/cache": D(),
    "var/cache/a": F(b"a" * 1000),
    "usr": D(),
    "usr/bin": D(),
    "usr/bin/tool": F(b"\x7fELF" + b"\0" * 100, mode=0o755),
}


def test_changes_adds_modifies_deletes(store):
    import_tar(store, "base", BASE)
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        _modify_container(root)
    finally:
        store.unmount("ctr")
    assert changes_of(store, "ctr") == [
        (C, "/etc"),
        (C, "/etc/hosts"),
        (X, "/etc/motd"),
        (A, "/srv"),
        (A, "/srv/www"),
        (A, "/srv/www/index.html"),
        (C, "/var"),
        (X, "/var/cache"),
    ]
    names = sorted(tar_names(diff_bytes(store, "ctr")))
    assert [n.rstrip("/") for n in names] == [
        "etc", "etc/.wh.motd", "etc/hosts", "srv", "srv/www", "srv/www/index.html",
        "var", "var/.wh.cache",
    ]
    expected_size = len(b"127.0.0.1 localhost\n10.0.0.1 db\n") + len(b"<h1>hi</h1>\n")
    assert store.diff_size("ctr") == expected_size


def test_diff_apply_round_trip(store):
    import_tar(store, "base", BASE)
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        _modify_container(root)
    finally:
        store.unmount("ctr")
    data = diff_bytes(store, "ctr")
    size = store.diff_size("ctr")
    store.create("copy", "base")
    assert store.apply("copy", io.BytesIO(data)) == size
    assert view(store, "copy") == view(store, "ctr")
    assert store.changes("copy") == store.changes("ctr")
    # And import does the same in one step.
    assert store.import_layer("copy2", "base", io.BytesIO(data)).size == size
    assert view(store, "copy2") == view(store, "ctr")


def test_whiteouts_and_opaque_dirs(store):
    import_tar(store, "base", {
        "a": D(), "a/keep": F(b"k"), "a/gone": F(b"g"),
        "o": D(), "o/old1": F(b"1"), "o/old2": D(), "o/old2/x": F(b"x"),
    })
    import_tar(store, "top", {
        "a/gone": W(),
        "o": Opaque(),
        "o/new": F(b"n"),
        "a/.wh.nothing-there": F(b""),
    }, parent="base")
    tree = view(store, "top")
    assert "a/keep" in tree and "a/gone" not in tree
    assert "o/new" in tree
    assert not any(p.startswith("o/old") for p in tree)
    assert not any(".wh." in p for p in tree)
    changes = changes_of(store, "top")
    assert (X, "/a/gone") in changes
    assert (A, "/o/new") in changes
    assert (X, "/o/old1") in changes or (C, "/o") in changes
    # The diff re-expresses the deletions; applied on base it gives the same view.
    data = diff_bytes(store, "top")
    assert any(n.endswith(".wh.gone") for n in tar_names(data))
    store.create("again", "base")
    store.apply("again", io.BytesIO(data))
    assert view(store, "again") == tree


def test_same_path_twice_last_wins(store):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for content in (b"first", b"second!"):
            info = tarfile.TarInfo("f")
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    store.import_layer("l", None, io.BytesIO(data.getvalue()))
    path = store.mount("l")
    try:
        assert Path(path, "f").read_bytes() == b"second!"
    finally:
        store.unmount("l")


def test_hardlinks_counted_once(store):
    import_tar(store, "l", {"d": D(), "d/a": F(b"x" * 100), "d/b": H("d/a")})
    tree = view(store, "l")
    assert tree["d/a"]["link_group"] == tree["d/b"]["link_group"]
    assert store.diff_size("l") == 100
    names = tar_names(diff_bytes(store, "l"))
    with tarfile.open(fileobj=io.BytesIO(diff_bytes(store, "l"))) as tf:
        kinds = {m.name.rstrip("/"): m.type for m in tf.getmembers()}
    assert sorted(kinds.values()).count(tarfile.LNKTYPE) == 1, names


# ----- metadata fidelity against GNU tar --------------------------------------------------


def _rich_spec() -> dict:
    return {
        "bin": D(mode=0o755, mtime=1_500_000_000.25),
        "bin/sh": F(b"shell", mode=0o755, mtime=1_500_000_001.5),
        "bin/sh-link": H("bin/sh"),
        "bin/rsh": L("sh"),
        "etc": D(mode=0o750, uid=0, gid=42),
        "etc/shadow": F(b"secret", mode=0o640, uid=0, gid=42),
        "tmp": D(mode=0o1777),
        "usr": D(),
        "usr/bin": D(),
        "usr/bin/passwd": F(b"p", mode=0o4755),
        "usr/bin/wall": F(b"w", mode=0o2755, gid=5),
        "home": D(),
        "home/user": D(mode=0o700, uid=1000, gid=1000),
        "home/user/notes": F(b"n", uid=1000, gid=1000, xattrs={"user.note": b"v\x00\xff"}),
        "dev": D(),
        "dev/null": Dev("c", 1, 3, mode=0o666),
        "dev/loop0": Dev("b", 7, 0, mode=0o660),
        "run": D(),
        "run/fifo": Dev("p", mode=0o600),
        "cap": F(b"ping", mode=0o755, xattrs={
            "security.capability": bytes.fromhex("0100000200200000000000000000000000000000"),
        }),
        "nonascii-é": F(b"utf8 name"),
        "long/" + "d" * 120: D(),
        "long/" + "d" * 120 + "/" + "f" * 150: F(b"long name"),
    }


@needs_root
def test_metadata_fidelity_against_gnu_tar(store, tmp_path):
    spec = _rich_spec()
    spec["long"] = D()
    spec = dict(sorted(spec.items(), key=lambda kv: kv[0].split("/")))  # GNU tar wants dirs contiguous
    data = make_tar(spec)
    ref = tmp_path / "gnutar"
    ref.mkdir()
    (tmp_path / "in.tar").write_bytes(data)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tmp_path / "in.tar"), "-C", str(ref)], check=True)
    store.import_layer("rich", None, io.BytesIO(data))
    mine = view(store, "rich")
    theirs = snapshot(str(ref))
    # The root directory's own metadata comes from the store, not from the tarball.
    theirs.pop(".")
    assert_same_tree(mine, theirs)


# ----- removal rules -------------------------------------------------------------------------


def test_remove_rules(store):
    import_tar(store, "base", {"f": F(b"x")})
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
    home = store.driver.home
    assert [n for n in os.listdir(home) if not n.startswith(".")] == []


def test_mount_is_counted(store):
    store.create("l")
    p1 = store.mount("l")
    p2 = store.mount("l")
    assert p1 == p2
    store.unmount("l")
    with pytest.raises(Precondition):
        store.remove("l")
    store.unmount("l")
    with pytest.raises(Precondition):
        store.unmount("l")
    store.remove("l")


# ----- hostile and malformed input ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape"])
def test_breakout_names_refused(store, tmp_path, name):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    before = set(os.listdir(tmp_path))
    try:
        store.import_layer("evil", None, io.BytesIO(raw.getvalue()))
    except ArchiveError:
        assert not store.exists("evil")
    else:  # an absolute name is confined, like GNU tar and Docker do
        path = store.mount("evil")
        store.unmount("evil")
        assert os.path.exists(os.path.join(path, "escape"))
    assert set(os.listdir(tmp_path)) == before
    assert not (tmp_path.parent / "escape").exists()


def test_symlink_breakout_refused(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tf.addfile(link)
        info = tarfile.TarInfo("link/owned")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    try:
        store.import_layer("evil", None, io.BytesIO(raw.getvalue()))
    except ArchiveError:
        assert not store.exists("evil")
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("data", [
    b"garbage" * 100,
    make_tar({"f": F(b"x")})[:300],  # truncated header
    make_tar({"f": F(b"x" * 5000)})[:2048],  # truncated data
])
def test_malformed_input_leaves_nothing(store, data):
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(data))
    assert not store.exists("bad")
    assert store.layers() == []
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []


def test_bad_checksum_refused(store):
    data = bytearray(make_tar({"f": F(b"x")}))
    data[148:156] = b"0000000\0"
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(bytes(data)))
    assert not store.exists("bad")


# ----- compression ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zstd"])
def test_compressed_imports(store, kind):
    data = make_tar({"f": F(b"hello " * 1000)})
    if kind == "gzip":
        import gzip

        packed = gzip.compress(data)
    elif kind == "bz2":
        import bz2

        packed = bz2.compress(data)
    elif kind == "xz":
        import lzma

        packed = lzma.compress(data)
    else:
        zstandard = pytest.importorskip("zstandard")
        packed = zstandard.ZstdCompressor().compress(data)
    assert store.import_layer("z", None, io.BytesIO(packed)).size == 6000


def test_changes_type_is_docker_diff_format():
    assert str(Change("/etc", ChangeKind.MODIFY)) == "C /etc"

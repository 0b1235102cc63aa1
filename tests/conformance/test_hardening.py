"""Promises a layer store keeps under hostile or careless use: one named test each.

Driver-independent, so every driver runs them (the ``store`` fixture).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from graphdriver.errors import GraphDriverError, IntegrityError
from graphdriver.testing.treeutil import D, F, H, L, Opaque, W, make_tar


def _write(store, layer_id: str, name: str, data: bytes) -> None:
    path = store.mount(layer_id)
    try:
        Path(path, name).parent.mkdir(parents=True, exist_ok=True)
        Path(path, name).write_bytes(data)
    finally:
        store.unmount(layer_id)


def _read(store, layer_id: str, name: str) -> bytes:
    path = store.mount(layer_id)
    try:
        return Path(path, name).read_bytes()
    finally:
        store.unmount(layer_id)


def test_cleanup_keeps_a_layer_whose_id_ends_in_removing(store):
    """A valid id like ``work-removing`` is a layer, never a removal leftover."""
    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.create("work-removing", "base", writable=True)
    _write(store, "work-removing", "data", b"precious")
    assert store.cleanup() == []
    assert store.exists("work-removing")
    assert _read(store, "work-removing", "data") == b"precious"
    store.remove("work-removing")
    home = store.driver.home
    assert not [n for n in os.listdir(home) if "removing" in n]


@pytest.mark.parametrize("layer_id", ["a.tar-split.gz", "a.tar-split.gz.partial-1", "a.json",
                                      "a.json.partial-2", "a.lock", "a.partial-3", "a.removing-1"])
def test_cleanup_keeps_every_file_of_a_layer_whose_id_reads_like_a_temporary(store, layer_id):
    """Ids may end like the store's own temporaries: cleanup keeps every file of such a layer."""
    tar = make_tar({"f": F(b"kept")})
    store.import_layer(layer_id, None, io.BytesIO(tar))
    assert store.cleanup() == []
    out = io.BytesIO()
    store.diff(layer_id, out, exact=True)  # the tar-split data is still there
    assert out.getvalue() == tar


def test_removal_leftovers_are_finished_and_reported(store):
    """A crash between rename and delete leaves a dot-named folder; an older store's
    ``<id>-removing`` folder is finished only when no record names it."""
    home = Path(store.driver.home)
    (home / ".removing-gone" / "x").mkdir(parents=True)
    (home / "old-removing" / "y").mkdir(parents=True)
    done = store.cleanup()
    assert "removed interrupted removal .removing-gone" in done
    assert "removed interrupted removal old-removing" in done
    assert not (home / ".removing-gone").exists() and not (home / "old-removing").exists()


def test_diff_without_tarsplit_data_fails_instead_of_other_bytes(store):
    """The recorded digest is a promise: those bytes, or exit 6 naming what is missing."""
    data = make_tar({"etc/hosts": F(b"127.0.0.1 localhost\n")})
    record = store.import_layer("base", None, io.BytesIO(data))
    os.unlink(store.tarsplit_path("base"))
    with pytest.raises(IntegrityError, match="tar-split data is missing") as failure:
        store.diff("base", io.BytesIO())
    assert failure.value.exit_code == 6
    regenerated = io.BytesIO()
    store.diff("base", regenerated, regenerate=True)
    assert regenerated.getvalue()  # asked for explicitly: the files, as a tarball
    assert "sha256:" + hashlib.sha256(data).hexdigest() == record.diff_digest
    ((layer_id, why),) = store.check()
    assert layer_id == "base" and "tar-split data is missing" in why


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_repair_made_on_opening_the_store_is_said_on_stderr(store):
    """Any command repairs what a crash left before it runs; what it did is said then (one
    line each on stderr, as cleanup would print it), since cleanup will find nothing left."""
    from graphdriver.store.records import LayerRecord
    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.records.mark_pending("half", "import")
    store.records.put(LayerRecord(id="half", parent="base", driver=store.driver_name))
    store.driver.create("half", "base")
    os.close(store.records._held.pop("half"))  # the crash: the marker's lock is released
    where = {"root": Path(store.root), "run_root": Path(store.run_root)}
    r = run_cli("layers", **where)
    assert r.returncode == 0 and r.stdout == b"base\n", r.stderr
    assert r.stderr == b"graphdriver: cleanup: removed layer half left by an interrupted import\n"
    assert run_cli("cleanup", **where).stdout == b""
    assert run_cli("-q", "layers", **where).stderr == b""


def test_cleanup_after_crashes_reports_each_repair_and_leaves_only_live_layers(store, tmp_path):
    """Leftovers of kill -9: a half-imported layer, half-written files, mount locks of gone layers."""
    from graphdriver.store.records import LayerRecord
    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    # A half-imported layer: marker, record and folder, its process gone.
    store.records.mark_pending("half", "import")
    store.records.put(LayerRecord(id="half", parent="base", driver=store.driver_name))
    store.driver.create("half", "base")
    os.close(store.records._held.pop("half"))  # the crash: the marker's lock is released
    pid = _dead_pid()
    for folder in (store.records.pending_dir, store.records.dir, store.root):
        Path(folder, f".tmp-x.json-{pid}").write_bytes(b"{")
    store.create("gone")
    store.mount("gone")
    store.unmount("gone")
    store.remove("gone")
    lock = Path(store.driver.counts.directory, "gone.lock")
    lock.touch()  # as an older version left it
    root = Path(store.root)
    r = run_cli("cleanup", root=root, run_root=Path(store.run_root))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "removed layer half left by an interrupted import" in lines
    assert lines.count(f"removed half-written file .tmp-x.json-{pid}") == 3
    assert "removed mount lock of gone layer gone" in lines
    assert not lock.exists()
    assert os.listdir(store.records.pending_dir) == []
    assert sorted(os.listdir(store.records.dir)) == ["base.json"]
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == ["base"]
    assert run_cli("cleanup", root=root, run_root=Path(store.run_root)).stdout == b""


def test_changes_cannot_print_forged_lines(store):
    """A name holding a newline is one quoted line, never a second change."""
    from graphdriver.diff.changes import quote_path

    store.create("base")
    store.create("ctr", "base", writable=True)
    _write(store, "ctr", "x\nD /etc/passwd", b"x")
    _write(store, "ctr", "back\\slash", b"y")
    _write(store, "ctr", "caf\u00e9", b"z")
    lines = [str(c) for c in store.changes("ctr")]
    assert lines == ['A "/back\\\\slash"', "A /caf\u00e9", 'A "/x\\nD "', 'A "/x\\nD /etc"',
                     'A "/x\\nD /etc/passwd"']
    assert quote_path("/plain name") == "/plain name"
    assert [c.path for c in store.changes("ctr")][4] == "/x\nD /etc/passwd"  # raw for --json


def test_error_messages_quote_at_most_200_characters_of_a_name(store):
    import tarfile

    long_name = "d/" + "n" * 40000
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(long_name)
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(Exception) as failure:
        store.import_layer("long", None, io.BytesIO(raw.getvalue()))
    assert len(str(failure.value)) < 400, str(failure.value)[:500]
    assert not store.exists("long")


# ----- a damaged store ---------------------------------------------------------------------


def test_one_corrupt_record_does_not_take_the_store_down(store):
    from graphdriver.errors import IntegrityError as Corrupt
    from tests.conftest import run_cli

    for name in ("a", "b", "c"):
        store.import_layer(name, None, io.BytesIO(make_tar({name: F(name.encode())})))
    Path(store.records.dir, "b.json").write_text('{"id": "b", "parent": 5, "size": "big"}')
    with pytest.raises(Corrupt, match="corrupt"):
        store.layer("b")
    assert [r.id for r in store.layers()] == ["a", "c"]
    root, run_root = Path(store.root), Path(store.run_root)
    r = run_cli("layers", root=root, run_root=run_root)
    assert (r.returncode, r.stdout) == (0, b"a\nc\n")
    assert r.stderr.decode().startswith("graphdriver: layer record b: corrupt: parent is 5")
    r = run_cli("check", root=root, run_root=run_root)
    assert r.returncode == 6
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "a: ok" and lines[1].startswith("b: corrupt") and lines[2] == "c: ok"
    assert run_cli("remove", "c", root=root, run_root=run_root).returncode == 0
    Path(store.records.dir, "a.json").write_text('{"id": "a", "creat')  # truncated
    assert run_cli("layers", root=root, run_root=run_root).stdout == b""
    assert run_cli("layer", "a", root=root, run_root=run_root).returncode == 6


def test_a_layer_whose_folder_was_deleted_is_damaged_everywhere(store):
    """exists says it is there (its record is), mount/diff/check say it is damaged (6),
    and no message repeats its prefix."""
    from tests.conftest import run_cli

    store.create("a")
    store.create("b", "a")
    from graphdriver.fs.tree import remove_tree

    remove_tree(store.driver.resolve("b"))
    root, run_root = Path(store.root), Path(store.run_root)
    assert run_cli("exists", "b", root=root, run_root=run_root).returncode == 0
    for args in (["mount", "b"], ["diff", "b"], ["changes", "b"], ["check", "b"], ["diffsize", "b"]):
        r = run_cli(*args, root=root, run_root=run_root)
        err = r.stderr.decode()
        assert r.returncode == 6, (args, err)
        assert err.count("layer b:") == 1 and err.count("\n") == 1, err
    assert run_cli("remove", "b", root=root, run_root=run_root).returncode == 0
    assert run_cli("exists", "b", root=root, run_root=run_root).returncode == 3


def test_a_layer_whose_files_directory_was_deleted_is_damaged_everywhere(store):
    """Only the folder holding its files gone (vfs ``fs``, overlay ``diff``): damaged (6) too,
    for itself and, through it, for what sits on it."""
    from graphdriver.fs.tree import remove_tree
    from tests.conftest import run_cli

    store.import_layer("a", None, io.BytesIO(make_tar({"etc": D(), "etc/f": F(b"f")})))
    store.create("b", "a", writable=True)
    files = {"vfs": "fs", "overlay": "diff"}[store.driver.name]
    remove_tree(os.path.join(store.driver.resolve("a"), files))
    root, run_root = Path(store.root), Path(store.run_root)
    Path(store.root, "..", "c.tar").write_bytes(make_tar({"c": F(b"c")}))
    for args in (["mount", "a"], ["diff", "a"], ["changes", "a"], ["diffsize", "a"], ["check", "a"],
                 ["diff", "b"], ["changes", "b"], ["diffsize", "b"], ["create", "c", "--parent", "a"],
                 ["import", "c", "--parent", "a", str(Path(store.root, "..", "c.tar"))]):
        r = run_cli(*args, root=root, run_root=run_root)
        err = r.stderr.decode()
        assert (r.returncode, err.count("\n")) == (6, 1), (args, err)
        assert "layer a: its files are missing" in err, (args, err)


def test_layers_json_lists_a_layer_whose_folder_was_deleted(store):
    """--json lists what plain layers lists (exit 0), the layer without files named on stderr."""
    import json

    from graphdriver.fs.tree import remove_tree
    from tests.conftest import run_cli

    store.create("a")
    store.create("b", "a")
    store.create("c", "a")
    remove_tree(store.driver.resolve("b"))
    root, run_root = Path(store.root), Path(store.run_root)
    r = run_cli("layers", root=root, run_root=run_root)
    assert (r.returncode, r.stdout) == (0, b"a\nb\nc\n"), r.stderr
    r = run_cli("--json", "layers", root=root, run_root=run_root)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [x["id"] for x in listed] == ["a", "b", "c"]
    assert listed[1]["metadata"] == {} and listed[0]["metadata"] and listed[2]["metadata"]
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("graphdriver: layer b: its files are missing"), err


def test_apply_to_a_layer_with_children_is_refused(store):
    """A child was made from its parent as it was: apply to the parent is a failed precondition (5),
    with the child mounted or not, and nothing changes."""
    from graphdriver.errors import Precondition
    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.create("ctr", "base", writable=True)
    _write(store, "ctr", "mine", b"ctr")
    before = store.layer("base")
    changes = [str(c) for c in store.changes("ctr")]
    more = make_tar({"new": F(b"new")})
    with pytest.raises(Precondition, match="has children: ctr"):
        store.apply("base", io.BytesIO(more))
    store.mount("ctr")
    try:
        root, run_root = Path(store.root), Path(store.run_root)
        r = run_cli("apply", "base", "-", root=root, run_root=run_root, input=more)
        assert r.returncode == 5 and b"has children" in r.stderr, r.stderr
    finally:
        store.unmount("ctr")
    after = store.layer("base")
    assert after.damaged is None and after.diff_digest == before.diff_digest
    assert [str(c) for c in store.changes("ctr")] == changes == ["A /mine"]
    assert store.check(["base"]) == [("base", None)]


def test_a_corrupt_record_is_removed_when_named_and_never_by_cleanup(store):
    from tests.conftest import run_cli

    store.import_layer("a", None, io.BytesIO(make_tar({"a": F(b"a")})))
    store.import_layer("b", "a", io.BytesIO(make_tar({"b": F(b"b")})))
    Path(store.records.dir, "b.json").write_text("{garbage")
    root, run_root = Path(store.root), Path(store.run_root)
    r = run_cli("cleanup", root=root, run_root=run_root)
    assert r.returncode == 0, r.stderr
    assert "graphdriver remove b removes it, nothing was removed for it" in r.stdout.decode()
    assert store.records.exists("b") and store.driver.exists("b")  # cleanup never takes it
    r = run_cli("remove", "a", root=root, run_root=run_root)  # b's files sit on a's
    assert r.returncode == 5 and b"has children: b" in r.stderr, r.stderr
    r = run_cli("remove", "b", root=root, run_root=run_root)
    assert r.returncode == 0, r.stderr
    assert not store.records.exists("b") and not store.driver.exists("b")
    assert not os.path.exists(store.tarsplit_path("b"))
    r = run_cli("layers", root=root, run_root=run_root)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"a\n", b"")
    assert run_cli("cleanup", root=root, run_root=run_root).stdout == b""
    assert run_cli("remove", "b", root=root, run_root=run_root).returncode == 3


def test_a_folder_in_place_of_a_record_is_a_corrupt_record_that_remove_takes(store):
    """`rm layers/b.json; mkdir layers/b.json`: b is a corrupt record everywhere, and `remove b`
    takes the folder with the layer instead of failing and leaving every command failing."""
    from tests.conftest import run_cli

    for name, parent in (("a", None), ("b", "a"), ("c", None)):
        store.import_layer(name, parent, io.BytesIO(make_tar({name: F(name.encode())})))
    record = Path(store.records.dir, "b.json")
    record.unlink()
    record.mkdir()
    (record / "left").write_bytes(b"x")
    root, run_root = Path(store.root), Path(store.run_root)
    r = run_cli("layers", root=root, run_root=run_root)
    assert (r.returncode, r.stdout) == (0, b"a\nc\n"), r.stderr
    assert r.stderr.startswith(b"graphdriver: layer record b: unreadable: ") and r.stderr.count(b"\n") == 1
    r = run_cli("check", root=root, run_root=run_root)
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 6 and lines[0] == "a: ok" and lines[2] == "c: ok"
    assert lines[1].startswith("b: unreadable: ")
    r = run_cli("cleanup", root=root, run_root=run_root)
    assert r.returncode == 0 and b"graphdriver remove b removes it" in r.stdout, r.stderr
    assert record.is_dir() and store.driver.exists("b")  # cleanup never takes it
    r = run_cli("remove", "a", root=root, run_root=run_root)
    assert r.returncode == 5 and b"has children: b" in r.stderr, r.stderr
    r = run_cli("remove", "b", root=root, run_root=run_root)
    assert (r.returncode, r.stderr) == (0, b"")
    assert not record.exists() and not store.driver.exists("b") and store.records.pending_ids() == []
    assert not os.path.exists(store.tarsplit_path("b"))
    for args in (("cleanup",), ("layers",), ("check",)):
        r = run_cli(*args, root=root, run_root=run_root)
        assert (r.returncode, r.stderr) == (0, b""), (args, r.stderr)
    assert run_cli("layers", root=root, run_root=run_root).stdout == b"a\nc\n"


def test_cleanup_goes_on_when_a_dead_removal_cannot_be_finished_yet(store, monkeypatch):
    """A leftover cleanup fails to remove is reported and left for later: cleanup, and every
    command opening the store, still works."""
    import errno

    store.import_layer("x", None, io.BytesIO(make_tar({"x": F(b"x")})))
    store.import_layer("y", None, io.BytesIO(make_tar({"y": F(b"y")})))
    Path(store.records.pending_dir, "x").write_text('{"op": "remove"}')  # its remover died

    def busy(layer_id: str) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), layer_id)

    monkeypatch.setattr(store.driver, "remove", busy)
    assert store.cleanup() == [
        "layer x left by an interrupted remove: not removed yet (Device or resource busy)"]
    assert [r.id for r in store.layers()] == ["y"]
    monkeypatch.undo()
    assert store.cleanup() == ["removed layer x left by an interrupted remove"]
    assert [r.id for r in store.layers()] == ["y"] and not store.driver.exists("x")


def test_cleanup_keeps_a_folder_in_the_tar_split_folder_and_goes_on(store):
    store.import_layer("x", None, io.BytesIO(make_tar({"x": F(b"x")})))
    folder = Path(store.tarsplit_path("x")).with_name("mine")
    folder.mkdir()
    assert store.cleanup() == ["tar-split folder mine is no file of the store: kept"]
    assert folder.is_dir() and [r.id for r in store.layers()] == ["x"]


def test_tarsplit_data_missing_or_corrupt_is_exit_6_and_writes_nothing(store, tmp_path):
    """The record says the layer was imported: its tar-split data missing or unsound is corrupt
    metadata (6), found before any byte is written; a layer never imported has none (3)."""
    import gzip

    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.import_layer("other", None, io.BytesIO(make_tar({"g": F(b"other" * 5000)})))  # another size
    store.create("made")
    path = Path(store.tarsplit_path("base"))
    good = path.read_bytes()
    root, run_root = Path(store.root), Path(store.run_root)
    out = tmp_path / "meta.gz"
    broken = {
        "missing": None,
        "not gzip": b"garbage\n",
        "gzip, not tar-split": gzip.compress(b"{garbage\n"),
        "truncated": good[: len(good) // 2],
        "another layer's": Path(store.tarsplit_path("other")).read_bytes(),
    }
    for how, data in broken.items():
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        with pytest.raises(IntegrityError):
            store.tarsplit("base", io.BytesIO())
        r = run_cli("tarsplit", "base", root=root, run_root=run_root)
        assert (r.returncode, r.stdout) == (6, b""), (how, r.stderr)
        assert r.stderr.count(b"\n") == 1, (how, r.stderr)
        r = run_cli("tarsplit", "base", "-o", str(out), root=root, run_root=run_root)
        assert r.returncode == 6 and not out.exists(), how
    path.write_bytes(good)
    sink = io.BytesIO()
    store.tarsplit("base", sink)
    assert sink.getvalue() == good
    assert run_cli("tarsplit", "made", root=root, run_root=run_root).returncode == 3


def _spoil_tarsplit(store, layer_id: str, how: str) -> None:
    path = Path(store.tarsplit_path(layer_id))
    good = path.read_bytes()
    path.unlink()
    if how == "a folder":
        path.mkdir()
    else:
        path.write_bytes({"garbage": b"\x1f\x8b\x08\x00" + b"garbage" * 20,
                          "truncated gzip": good[: len(good) // 2]}[how])


_SPOILED = {"a folder": "tar-split metadata: cannot be read: Is a directory",
            "garbage": "tar-split metadata: corrupt gzip data: ",
            "truncated gzip": "tar-split metadata: corrupt gzip data: "}


@pytest.mark.parametrize("how", list(_SPOILED))
def test_check_reports_a_layer_whose_tar_split_data_is_spoiled_and_goes_on(store, how):
    from tests.conftest import run_cli

    for name in ("a", "b", "c"):
        store.import_layer(name, None, io.BytesIO(make_tar({name: F(name.encode() * 100)})))
    _spoil_tarsplit(store, "b", how)
    ((_, why),) = [r for r in store.check() if r[0] == "b"]
    assert why.startswith(_SPOILED[how]), why
    r = run_cli("check", root=Path(store.root), run_root=Path(store.run_root))
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 6 and lines[0] == "a: ok" and lines[2] == "c: ok", r.stderr
    assert lines[1].startswith("b: " + _SPOILED[how]), lines
    assert r.stderr.decode() == f"graphdriver: layer {lines[1]}\n"


@pytest.mark.parametrize("how", list(_SPOILED))
def test_diff_names_the_layer_whose_tar_split_data_is_spoiled_as_check_does(store, tmp_path, how):
    from tests.conftest import run_cli

    store.import_layer("b", None, io.BytesIO(make_tar({"b": F(b"b" * 100)})))
    _spoil_tarsplit(store, "b", how)
    ((_, why),) = store.check(["b"])
    out = tmp_path / "b.tar"
    for args in (("diff", "b"), ("diff", "b", "-o", str(out)), ("tarsplit", "b")):
        r = run_cli(*args, root=Path(store.root), run_root=Path(store.run_root))
        assert r.returncode == 6 and not out.exists(), (args, r.stderr)
        err = r.stderr.decode()
        assert err.count("\n") == 1 and "layer b" in err and store.root not in err, (args, err)
        if args[0] == "diff":
            assert err == f"graphdriver: layer b: {why}\n", args


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_tar_split_data_this_user_may_not_read_is_a_missing_privilege_naming_the_layer(driver_setup):
    """Exit 7, never 6 (nothing is corrupt), and `check` skips the layer."""
    import tempfile

    from graphdriver.errors import GraphDriverError
    from graphdriver.testing import setups
    from tests.conftest import as_nobody

    work = Path(tempfile.mkdtemp(prefix="gd-tarsplit-"))
    try:
        store = setups.open_store(work / "store", work / "run", driver_setup)
        store.import_layer("a", None, io.BytesIO(make_tar({"a": F(b"a")})))
        for folder, names, files in os.walk(work):
            for name in (folder, *(os.path.join(folder, n) for n in names + files)):
                os.lchown(name, 65534, 65534)
        os.chmod(store.tarsplit_path("a"), 0)

        def diff_and_check() -> tuple[object, object]:
            try:
                store.diff("a", io.BytesIO())
            except GraphDriverError as e:
                return (e.exit_code, str(e)), store.check()
            return None, store.check()

        refused, checked = as_nobody(diff_and_check)
        why = "tar-split metadata: cannot be read by this user (Permission denied)"
        assert refused == (7, f"layer a: {why}")
        assert checked == [("a", f"skipped: {why}")]
    finally:
        shutil.rmtree(work)


def test_a_reader_racing_a_removal_finds_the_layer_gone_never_corrupt(store, tmp_path):
    """diff and check of a layer another process is removing: 0 or 3, never 6."""
    import subprocess
    import sys
    import threading
    import time

    from tests.conftest import ROOT

    store.create("keep")
    data = make_tar({f"d/f{i}": F(bytes(50_000)) for i in range(40)})
    layer = tmp_path / "l.tar"
    layer.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    base = [sys.executable, "-m", "graphdriver", "--root", store.root, "--run-root", store.run_root]
    codes: list[tuple[str, int, str]] = []
    stop = time.monotonic() + 8

    def read(command: str) -> None:
        while time.monotonic() < stop:
            r = subprocess.run([*base, command, "l"], env=env, capture_output=True, check=False)
            codes.append((command, r.returncode, r.stderr.decode()[-200:]))

    readers = [threading.Thread(target=read, args=(c,)) for c in ("diff", "check", "changes", "diffsize")]
    for t in readers:
        t.start()
    while time.monotonic() < stop:
        subprocess.run([*base, "import", "l", str(layer)], env=env, capture_output=True, check=False)
        subprocess.run([*base, "remove", "l"], env=env, capture_output=True, check=False)
    for t in readers:
        t.join()
    assert codes, "the readers never ran"
    assert [c for c in codes if c[1] not in (0, 3)] == []


@pytest.mark.parametrize("how", ["changes", "size"])
def test_changes_and_diffsize_of_a_layer_removed_under_them_say_not_found(store, monkeypatch, how):
    """The walk meets a folder gone (the layer's removal ran meanwhile): not found (3), not
    the missing path (1)."""
    from graphdriver.errors import NotFound
    from graphdriver.store import content

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))

    def removed_meanwhile(*_args: object, **_kwargs: object) -> None:
        store.remove("l")
        raise FileNotFoundError(2, "No such file or directory", os.path.join(store.root, "l"))

    monkeypatch.setattr(content, how, removed_meanwhile)
    with pytest.raises(NotFound, match="removed meanwhile"):
        store.changes("l") if how == "changes" else store.diff_size("l")


def test_an_apply_that_fails_half_way_leaves_a_layer_reported_damaged(store):
    from graphdriver.errors import ArchiveError
    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    good = make_tar({f"g{i}": F(b"x" * 5000) for i in range(20)})
    with pytest.raises(ArchiveError):
        store.apply("base", io.BytesIO(good[: len(good) // 2]))  # truncated half way
    record = store.layer("base")
    assert record.damaged and "failed half way" in record.damaged
    with pytest.raises(IntegrityError, match="is damaged"):
        store.mount("base")
    root, run_root = Path(store.root), Path(store.run_root)
    r = run_cli("check", root=root, run_root=run_root)
    assert r.returncode == 6 and "base: damaged" in r.stdout.decode()
    r = run_cli("layers", root=root, run_root=run_root)
    assert r.stdout == b"base\n" and "layer base: is damaged" in r.stderr.decode()
    r = run_cli("cleanup", root=root, run_root=run_root)
    assert r.stdout.decode().startswith("layer base is damaged") and store.exists("base")
    store.remove("base")
    assert not store.exists("base")


def test_an_apply_of_what_is_no_tarball_leaves_the_layer_as_it_was(store):
    """Refused before a single entry: nothing was written, so the layer is not damaged, and
    what its import recorded (its digest, the bytes ``diff`` gives back) is kept."""
    import gzip

    from graphdriver.errors import GraphDriverError

    imported = make_tar({"f": F(b"base")})
    store.import_layer("base", None, io.BytesIO(imported))
    digest = store.layer("base").diff_digest
    for junk in (b"this is no tarball\n" * 40, gzip.compress(b"x" * 600), b"\0" * 100 + b"x" * 500):
        with pytest.raises(GraphDriverError) as failed:
            store.apply("base", io.BytesIO(junk))
        assert failed.value.exit_code == 6
        record = store.layer("base")
        assert (record.damaged, record.diff_digest) == (None, digest)
    out = io.BytesIO()
    store.diff("base", out)
    assert hashlib.sha256(out.getvalue()).hexdigest() == digest.removeprefix("sha256:")
    store.mount("base")
    store.unmount("base")


def _tar_of(*entries: tuple[str, bytes, int]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, uid in entries:
            info = tarfile.TarInfo(name)
            info.size, info.uid = len(data), uid
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("refused", [("../escape", b"x", 0), ("/../../escape", b"x", 0),
                                     ("f", b"x", 2**32 - 1), (".wh.gone/child", b"x", 0)])
def test_an_apply_whose_first_entry_is_refused_leaves_the_layer_as_it_was(store, refused):
    """An entry refused before any of it is written, first in the archive: the layer is
    untouched, so it stays whole and keeps what its import recorded; after a written
    entry, the same refusal leaves it damaged."""
    from graphdriver.errors import GraphDriverError

    imported = make_tar({"f": F(b"base")})
    store.import_layer("base", None, io.BytesIO(imported))
    digest = store.layer("base").diff_digest
    with pytest.raises(GraphDriverError):
        store.apply("base", io.BytesIO(_tar_of(refused, ("g", b"y", 0))))
    record = store.layer("base")
    assert (record.damaged, record.diff_digest) == (None, digest)
    assert _read(store, "base", "f") == b"base"
    out = io.BytesIO()
    store.diff("base", out)
    assert out.getvalue() == imported
    with pytest.raises(GraphDriverError):
        store.apply("base", io.BytesIO(_tar_of(("g", b"y", 0), refused)))
    assert store.layer("base").damaged


@pytest.mark.parametrize("refused", [
    {".": F(b"x")},  # the root as a file
    {"l": H("nowhere")},  # a hard link to a target in no layer
    {"d/x": F(b"x")},  # through a lower layer's symlink
    {"d/sub/x": F(b"x")},
    {"e/d/x": F(b"x")},
    {"d/.wh.x": F(b"")},  # a whiteout through a lower layer's symlink
    {"d/sub/.wh..wh..opq": F(b"")},
    {"h": H("d/passwd")},  # a hard link whose target's way goes through one
    {"nd/sub/h": H("d/passwd")},  # ... refused before its own folders are made
])
def test_an_apply_whose_first_entry_is_refused_later_leaves_the_layer_as_it_was(store, refused):
    """Refusals found once the entry is placed (its parents resolved, its link target looked
    for), still before anything is written: the layer above a parent is untouched and whole;
    after a written entry, the same refusal leaves it damaged."""
    from graphdriver.errors import GraphDriverError

    store.import_layer("p", None, io.BytesIO(make_tar({"d": L("elsewhere"), "e": D(), "e/d": L("/")})))
    imported = make_tar({"f": F(b"base")})
    store.import_layer("c", "p", io.BytesIO(imported))
    digest = store.layer("c").diff_digest
    with pytest.raises(GraphDriverError):
        store.apply("c", io.BytesIO(make_tar({**refused, "g": F(b"y")})))
    record = store.layer("c")
    assert (record.damaged, record.diff_digest) == (None, digest)
    assert store.check(["c"]) == [("c", None)]  # not a folder more
    out = io.BytesIO()
    store.diff("c", out)
    assert out.getvalue() == imported
    with pytest.raises(GraphDriverError):
        store.apply("c", io.BytesIO(make_tar({"g": F(b"y"), **refused})))
    assert store.layer("c").damaged


def test_a_damaged_layer_is_refused_as_a_parent_on_the_command_line(store, tmp_path):
    """create/import on a layer whose apply failed, and mount of a layer on it: exit 6 in one
    line naming the damaged layer; no half-applied file is ever shown through a child."""
    from tests.conftest import run_cli

    root, run_root = Path(store.root), Path(store.run_root)
    store.create("p")
    header = make_tar({"hello": F(b"hello\n")})
    truncated = header[: header.index(b"hello\n") + 3]
    assert run_cli("apply", "p", "-", root=root, run_root=run_root, input=truncated).returncode == 6
    for args, data in ((["create", "c", "--parent", "p", "--rw"], None),
                       (["import", "x", "--parent", "p", "-"], make_tar({"g": F(b"g")}))):
        r = run_cli(*args, root=root, run_root=run_root, input=data)
        err = r.stderr.decode()
        assert r.returncode == 6 and err.startswith("graphdriver: layer p: is damaged"), (args, err)
        assert err.count("\n") == 1, err
    assert run_cli("layers", root=root, run_root=run_root).stdout == b"p\n"
    r = run_cli("mount", "c", root=root, run_root=run_root)
    assert r.returncode == 3, r.stderr


def test_a_crash_during_apply_leaves_the_layer_whole_or_reported_damaged(store, tmp_path):
    """kill -9 at several points of `apply` onto an existing layer: as before, whole, or damaged."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.create("target", "base")
    files = 2000
    layer = tmp_path / "big.tar"
    layer.write_bytes(make_tar({f"d{i % 10}/f{i}": F(bytes(4_000)) for i in range(files)}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    base = [sys.executable, "-m", "graphdriver", "--root", store.root, "--run-root", store.run_root]
    outcomes = []
    # Killed before it starts, as soon as the record says the apply began, and later.
    for delay in (0.0, "started", "started", 0.2, 0.4, 30.0):
        proc = subprocess.Popen([*base, "apply", "target", str(layer)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if delay == "started":
            deadline = time.monotonic() + 20
            while not store.records.get("target").damaged and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
        else:
            try:
                proc.wait(timeout=float(delay))
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Its confined child dies with it, a moment later: until then the apply is live.
        deadline = time.monotonic() + 10
        while store.records.is_applying("target") and time.monotonic() < deadline:
            time.sleep(0.01)
        record = store.records.get("target")
        if record.damaged:
            outcomes.append("damaged")
            with pytest.raises(IntegrityError):
                store.mount("target")
            assert any(i == "target" and why and why.startswith("damaged") for i, why in store.check())
            store.remove("target")
            store.create("target", "base")
        else:
            outcomes.append("whole")
            assert (record.size or 0) % (files * 4_000) == 0  # only complete applies counted
            path = store.mount("target")
            try:
                names = set(os.listdir(path))
            finally:
                store.unmount("target")
            assert names in ({"f"}, {"f", *(f"d{i}" for i in range(10))})
    assert "damaged" in outcomes, outcomes


# ----- hostile archives --------------------------------------------------------------------


def test_symlink_targets_above_the_root_are_stored_as_content(store, tmp_path):
    """GNU tar and bsdtar store ``up -> ../x``; so do we, and nothing is written through them."""
    import subprocess

    from graphdriver.testing.treeutil import D, L

    data = make_tar({"up": L("../x"), "d": D(), "d/s": L("../../y"), "abs": L("/../../etc"),
                     "f": F(b"plain")})
    store.import_layer("syms", None, io.BytesIO(data))
    out = io.BytesIO()
    store.diff("syms", out)
    assert out.getvalue() == data
    assert store.check() == [("syms", None)]
    path = store.mount("syms")
    try:
        assert os.readlink(Path(path, "up")) == "../x"
        assert os.readlink(Path(path, "d/s")) == "../../y"
    finally:
        store.unmount("syms")
    # A tree tarred by GNU tar, with a symlink above its root, imports the same way.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_bytes(b"hello")
    os.symlink("../../outside", tree / "sub" / "up")
    gnu = subprocess.run(["tar", "-C", str(tree), "-cf", "-", "."], capture_output=True, check=True).stdout
    store.import_layer("gnu", None, io.BytesIO(gnu))
    out = io.BytesIO()
    store.diff("gnu", out)
    assert out.getvalue() == gnu
    # Writing through such a symlink stays inside the layer.
    before = sorted(os.listdir(tmp_path))
    through = make_tar({"esc": L("../../.."), "esc/planted": F(b"x")})
    try:
        store.import_layer("through", None, io.BytesIO(through))
    except Exception:
        pass
    assert sorted(os.listdir(tmp_path)) == before
    assert not Path("/planted").exists()


def test_overlay_private_xattrs_from_an_archive_are_dropped_in_every_layer(store):
    """A crafted trusted.overlay.whiteout / metacopy must not hide or break files of any mount."""
    xattrs = {"trusted.overlay.whiteout": b"y", "trusted.overlay.metacopy": b"",
              "user.overlay.opaque": b"y", "user.keep": b"kept"}
    data = make_tar({"f": F(b"visible", xattrs=xattrs)})
    store.import_layer("base", None, io.BytesIO(data))
    store.create("top", "base")
    for layer_id in ("base", "top"):
        path = store.mount(layer_id)
        try:
            assert Path(path, "f").read_bytes() == b"visible"
        finally:
            store.unmount(layer_id)
    folder = store.driver.apply_target("base").path
    names = os.listxattr(Path(folder, "f"))
    assert not [n for n in names if ".overlay." in n]
    assert "user.keep" in names
    out = io.BytesIO()
    store.diff("base", out)
    assert out.getvalue() == data  # the archive itself is given back unchanged


ODD_NAMES = {
    "dotdot-inside": [("a/../x", b"x")],
    "trailing-dot-file": [("r/.", b"y")],
    "dot-components": [("./q/./z", b"z")],
    "trailing-slash-file": [("f/", b"1")],
    "double-slash": [("a//b", b"2")],
}


@pytest.mark.parametrize("case", sorted(ODD_NAMES))
def test_odd_entry_names_reexport_byte_for_byte(store, case):
    """Names that normalise (a/../x, r/., ./q/./z) re-export exactly; check passes."""
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in ODD_NAMES[case]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    store.import_layer("odd", None, io.BytesIO(data))
    assert store.check() == [("odd", None)]
    out = io.BytesIO()
    store.diff("odd", out)
    assert out.getvalue() == data


def test_aufs_hardlink_directory_is_unpacked_as_docker_does_and_marked(store):
    """Files under .wh..wh.plnk serve as hardlink targets, are left out of the layer, and
    the layer says it cannot be re-exported exactly (check skips it, never fails it)."""
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        plnk = tarfile.TarInfo(".wh..wh.plnk")
        plnk.type = tarfile.DIRTYPE
        tf.addfile(plnk)
        info = tarfile.TarInfo(".wh..wh.plnk/1234.5678")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"shared"))
        link = tarfile.TarInfo("b")
        link.type, link.linkname = tarfile.LNKTYPE, ".wh..wh.plnk/1234.5678"
        tf.addfile(link)
    record = store.import_layer("aufs", None, io.BytesIO(raw.getvalue()))
    assert record.unreproducible and "AUFS" in record.unreproducible
    path = store.mount("aufs")
    try:
        assert sorted(os.listdir(path)) == ["b"]
        assert Path(path, "b").read_bytes() == b"shared"
    finally:
        store.unmount("aufs")
    ((_, why),) = store.check()
    assert why is not None and why.startswith("skipped")
    with pytest.raises(IntegrityError, match="cannot be re-exported exactly"):
        store.diff("aufs", io.BytesIO())


# ----- check sees metadata, not only content ----------------------------------------------------


TAMPERINGS = {
    "chmod": lambda p: os.chmod(p / "etc/conf", 0o600),
    "chown": lambda p: os.chown(p / "etc/conf", 4242, 4242),
    "new-xattr": lambda p: os.setxattr(p / "etc/conf", "user.planted", b"1"),
    "mtime": lambda p: os.utime(p / "etc/conf", ns=(1, 1)),
    "extra-file": lambda p: (p / "etc/planted").write_bytes(b""),
    "symlink-retargeted": lambda p: (os.unlink(p / "link"), os.symlink("elsewhere", p / "link")),
    "dir-mode": lambda p: os.chmod(p / "etc", 0o700),
}


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_check_finds_metadata_tampering_in_an_image_layer(store, how):
    from graphdriver.testing.treeutil import D, L

    if how == "chown" and os.geteuid() != 0:
        pytest.skip("needs root to chown (and an unprivileged store records no owners)")
    data = make_tar({"etc": D(mode=0o755), "etc/conf": F(b"setting=1\n", mode=0o644),
                     "link": L("etc/conf")})
    store.import_layer("img", None, io.BytesIO(data))
    assert store.check() == [("img", None)]
    TAMPERINGS[how](Path(store.driver.apply_target("img").path))
    ((layer_id, why),) = store.check()
    assert layer_id == "img" and why is not None and "differ from its tarball" in why, why


def test_check_says_when_a_stored_layer_carries_overlay_xattrs(store):
    data = make_tar({"f": F(b"x")})
    store.import_layer("old", None, io.BytesIO(data))
    os.setxattr(Path(store.driver.apply_target("old").path, "f"), "user.overlay.metacopy", b"")
    ((_, why),) = store.check()
    assert why is not None and "carries overlay's own xattr user.overlay.metacopy" in why


def test_check_finds_a_file_planted_in_a_child_image_layer(store):
    store.import_layer("base", None, io.BytesIO(make_tar({"etc/a": F(b"a")})))
    store.import_layer("child", "base", io.BytesIO(make_tar({"etc/b": F(b"b")})))
    assert [why for _, why in store.check()] == [None, None]
    Path(store.driver.apply_target("child").path, "etc", "planted").write_bytes(b"")
    results = dict(store.check())
    assert results["base"] is None
    assert "'etc/planted': is in the layer but in no entry" in (results["child"] or "")


def test_a_write_to_a_parent_file_linked_from_a_child_is_caught_after_a_writable_mount(store):
    """A child whose entry links to a file of its parent checks sound after a mount with no
    write (the target is listed as the link's other name); a write to that target is caught."""
    if store.driver.name != "vfs":
        pytest.skip("only vfs mounts an image layer writable")
    store.import_layer("base", None, io.BytesIO(make_tar({"keep": D(), "keep/k": F(b"kept\n")})))
    store.import_layer("child", "base", io.BytesIO(make_tar({"hlk": H("keep/k")})))
    store.mount("child")
    store.unmount("child")
    assert store.check(["child"]) == [("child", None)]
    root = store.mount("child")
    os.setxattr(Path(root, "keep/k"), "user.planted", b"x")  # same size and times: an xattr more
    store.unmount("child")
    ((_, why),) = store.check(["child"])
    assert why is not None and "'keep/k': was changed in the layer" in why
    root = store.mount("child")
    os.removexattr(Path(root, "keep/k"), "user.planted")
    Path(root, "keep/k").write_bytes(b"other content\n")
    store.unmount("child")
    ((_, why),) = store.check(["child"])
    assert why is not None and "'keep/k': was changed in the layer" in why


@pytest.mark.parametrize("then", [{}, {"keep/.wh.k": F(b"")}], ids=["target kept", "target deleted"])
def test_a_child_linking_to_a_parent_file_of_several_names_checks_sound_after_a_writable_mount(
        store, then):
    """The file's other names in the parent are listed too (a name was added to it), even once
    the archive deleted the name it linked to; a mount with no write changes none of them, so
    the child still checks sound and gives back its bytes."""
    if store.driver.name != "vfs":
        pytest.skip("only vfs mounts an image layer writable")
    base = {"keep": D(), "keep/k": F(b"kept\n"), "keep/sub": D(), "keep/sub/other": H("keep/k")}
    store.import_layer("base", None, io.BytesIO(make_tar(base)))
    tar = make_tar({"hlk": H("keep/k"), **then})
    store.import_layer("child", "base", io.BytesIO(tar))
    store.mount("child")
    store.unmount("child")
    assert store.check(["child"]) == [("child", None)]
    out = io.BytesIO()
    store.diff("child", out)
    assert out.getvalue() == tar


# ----- depth ----------------------------------------------------------------------------------------


def _deep_tar(levels: int, name: str = "a") -> bytes:
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for n in range(1, levels + 1):
            info = tarfile.TarInfo("/".join([name] * n))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        info = tarfile.TarInfo("/".join([name] * levels) + "/f")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"deep"))
    return raw.getvalue()


def test_check_diff_and_changes_walk_trees_deeper_than_the_recursion_limit(store):
    """1200 nested directories: no RecursionError in check, diff, changes or diffsize."""
    import sys

    levels = 1200
    assert levels > sys.getrecursionlimit()
    try:
        _deep_scenario(store, levels)
    finally:
        for layer_id in ("ctr", "deep"):  # pytest's own clean-up recurses
            if store.exists(layer_id):
                store.remove(layer_id)


def _deep_scenario(store, levels: int) -> None:
    store.import_layer("base", None, io.BytesIO(make_tar({"b": F(b"b")})))
    data = _deep_tar(levels)
    store.import_layer("deep", "base", io.BytesIO(data))
    assert store.check() == [("base", None), ("deep", None)]
    out = io.BytesIO()
    store.diff("deep", out)
    assert out.getvalue() == data
    regenerated = io.BytesIO()
    store.diff("deep", regenerated, regenerate=True)
    assert len(regenerated.getvalue()) > levels * 512
    paths = [c.path for c in store.changes("deep")]
    assert len(paths) == levels + 1 and paths[-1] == "/" + "/".join(["a"] * levels) + "/f"
    assert store.diff_size("deep") == 4
    # A container deleting the deep tree and making another one.
    store.create("ctr", "deep", writable=True)
    path = store.mount("ctr")
    try:
        import subprocess

        # As a process would (os.makedirs and shutil.rmtree recurse).
        subprocess.run(["rm", "-rf", os.path.join(path, "a")], check=True)
        deep = os.path.join(path, *(["q"] * 1100))
        subprocess.run(["mkdir", "-p", deep], check=True)
        Path(deep, "g").write_bytes(b"g")
    finally:
        store.unmount("ctr")
    changes = [(c.kind.value, c.path) for c in store.changes("ctr")]
    assert changes[0] == ("D", "/a") and changes[-1] == ("A", "/" + "/".join(["q"] * 1100) + "/g")
    out = io.BytesIO()
    store.diff("ctr", out)
    assert b".wh.a" in out.getvalue()


# ----- names and types a layer tarball reserves -------------------------------------------------------


def _base_with_etc_and_bin(store) -> None:
    from graphdriver.testing.treeutil import D

    store.import_layer("base", None, io.BytesIO(make_tar(
        {"etc": D(), "etc/passwd": F(b"root\n"), "bin": D(), "bin/sh": F(b"sh")})))


RESERVED_NAMES = {  # what the container makes, whether a directory, the path diff names
    "whiteout-file": ("etc/.wh.passwd", False, "etc/.wh.passwd"),
    "opaque-marker-dir": ("bin/.wh..wh..opq", True, "bin/.wh..wh..opq"),
    "aufs-meta-dir": (".wh..wh.plnk", True, ".wh..wh.plnk"),
    "below-a-whiteout-dir": ("etc/.wh.d/x", False, "etc/.wh.d"),
}


@pytest.mark.parametrize("case", sorted(RESERVED_NAMES))
def test_diff_refuses_a_container_file_named_like_a_whiteout(store, tmp_path, case):
    """A container's own ``.wh.*`` file would delete where it was added: diff names it, exit 1."""
    from graphdriver.errors import GraphDriverError
    from tests.conftest import run_cli

    name, is_dir, refused = RESERVED_NAMES[case]
    _base_with_etc_and_bin(store)
    store.create("ctr", "base", writable=True)
    path = store.mount("ctr")
    try:
        Path(path, name).parent.mkdir(parents=True, exist_ok=True)
        Path(path, name).mkdir() if is_dir else Path(path, name).write_bytes(b"")
    except OSError:
        pytest.skip("this union mount refuses the name itself")
    finally:
        store.unmount("ctr")
    if ("A", "/" + name) not in [(c.kind.value, c.path) for c in store.changes("ctr")]:
        # fuse-overlayfs takes .wh. names as its own whiteouts: the view itself deleted.
        pytest.skip("this union mount reads the name as a whiteout: view, changes and tarball agree")
    with pytest.raises(GraphDriverError) as failure:
        store.diff("ctr", io.BytesIO())
    assert failure.value.exit_code == 1
    assert f"'/{refused}'" in str(failure.value) and "reserve" in str(failure.value)
    r = run_cli("diff", "ctr", "-o", str(tmp_path / "ctr.tar"), root=Path(store.root),
                run_root=Path(store.run_root), driver=store.driver_name)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "ctr.tar").exists()


def test_a_0_0_character_device_in_a_tarball_is_refused(store):
    """Overlay's whiteout has no meaning in a layer tarball: one line, exit 1, no layer, on every driver."""
    import tarfile

    from graphdriver.errors import ArchiveError

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"x")})))
    for parent, layer_id in ((None, "top"), ("base", "child")):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tf:
            info = tarfile.TarInfo("f")
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 0, 0
            tf.addfile(info)
        with pytest.raises(ArchiveError, match="0/0 character device") as failure:
            store.import_layer(layer_id, parent, io.BytesIO(raw.getvalue()))
        assert failure.value.exit_code == 1 and failure.value.entry == "f"
        assert not store.exists(layer_id)
    assert _read(store, "base", "f") == b"x"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a device node")
def test_diff_never_writes_a_0_0_character_device(store):
    """What import refuses, diff does not write: the device is refused (vfs) or is overlay's whiteout."""
    import tarfile

    from graphdriver.errors import GraphDriverError

    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"x")})))
    store.create("ctr", "base", writable=True)
    path = store.mount("ctr")
    try:
        os.mknod(os.path.join(path, "dev0"), 0o600 | 0o020000, os.makedev(0, 0))
    except OSError:
        pytest.skip("this mount takes no 0/0 device")
    finally:
        store.unmount("ctr")
    out = io.BytesIO()
    try:
        store.diff("ctr", out)
    except GraphDriverError as e:
        assert e.exit_code == 1 and "0/0 character device" in str(e)
        return
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert not [m for m in tf.getmembers() if m.ischr() and m.devmajor == m.devminor == 0]


def test_a_whiteout_through_a_symlink_of_the_same_archive_is_marked_unreproducible(store):
    """``lnk -> /tmp`` then ``lnk/.wh.y`` deletes tmp/y, which the archive added: a fresh
    import never fails check; it is marked, as a file written through ``lnk`` is."""
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, kind, link, data in [("tmp", tarfile.DIRTYPE, "", b""),
                                       ("tmp/y", tarfile.REGTYPE, "", b"y"),
                                       ("lnk", tarfile.SYMTYPE, "/tmp", b""),
                                       ("lnk/.wh.y", tarfile.REGTYPE, "", b"")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tf.addfile(info, io.BytesIO(data))
    record = store.import_layer("L", None, io.BytesIO(raw.getvalue()))
    assert record.unreproducible and "deletes through the symlink 'lnk'" in record.unreproducible
    ((_, why),) = store.check()
    assert why is not None and why.startswith("skipped")
    regenerated = io.BytesIO()
    store.diff("L", regenerated, regenerate=True)  # the files as they are: no tmp/y
    with tarfile.open(fileobj=io.BytesIO(regenerated.getvalue())) as tf:
        assert "tmp/y" not in tf.getnames()


def test_a_layer_whose_parent_record_is_lost_keeps_its_parent_and_is_reported(store):
    """A record names its parent: cleanup keeps the folder (and tar-split) of a parent whose own
    record is gone while a layer sits on it, even mounted; check names the child (exit 6)."""
    from tests.conftest import run_cli

    base = make_tar({"etc": D(), "etc/os-release": F(b"ID=x\n")})
    store.import_layer("p", None, io.BytesIO(base))
    store.import_layer("ch", "p", io.BytesIO(make_tar({"srv": D()})))
    store.create("ctr", "ch", writable=True)
    root = store.mount("ctr")
    try:
        record = Path(store.root, "layers", "p.json")
        saved = record.read_bytes()
        record.unlink()
        r = run_cli("cleanup", root=Path(store.root), run_root=Path(store.run_root))
        assert r.returncode == 0
        assert "layer folder p has no record, but a layer sits on it: kept" in r.stdout.decode()
        assert Path(root, "etc/os-release").read_bytes() == b"ID=x\n"
        results = dict(store.check([]))
        assert "has no record" in (results["ch"] or "") and "has no record" in (results["ctr"] or "")
        r = run_cli("check", "ch", root=Path(store.root), run_root=Path(store.run_root))
        assert r.returncode == 6 and "layer p has no record" in r.stdout.decode()
    finally:
        store.unmount("ctr")
    record.write_bytes(saved)
    assert store.check(["p", "ch"]) == [("p", None), ("ch", None)]


def test_a_layer_is_not_removed_under_a_live_apply(store):
    """A layer whose apply has begun is busy while the apply runs: remove is refused (5), `layer`
    and `layers --json` show it as applying (not damaged), and the apply failing after that (its
    stream no tarball) leaves the layer as it was."""
    import json
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, run_cli

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))
    root, run_root = Path(store.root), Path(store.run_root)
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root", str(run_root),
           "apply", "l", "-"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    apply = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert apply.stdin is not None
    apply.stdin.write(b"no tarball " * 20)  # less than a header: the apply waits for more
    apply.stdin.flush()
    deadline = time.monotonic() + 20
    while "apply started" not in (store.layer("l").damaged or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = run_cli("remove", "l", root=root, run_root=run_root)
    assert refused.returncode == 5 and b"under way" in refused.stderr, refused.stderr
    # Shown as busy, not damaged: `layer` and `layers --json` say the apply is under way.
    shown = json.loads(run_cli("layer", "l", root=root, run_root=run_root).stdout)
    listed = json.loads(run_cli("--json", "layers", root=root, run_root=run_root).stdout)
    for value in (shown, *listed):
        assert "damaged" not in value and value["applying"].endswith("is under way"), value
    apply.stdin.close()
    assert apply.wait(30) != 0  # no tarball: nothing was written
    assert store.layer("l").damaged is None
    assert "applying" not in json.loads(run_cli("layer", "l", root=root, run_root=run_root).stdout)
    out = io.BytesIO()
    store.diff("l", out)
    assert out.getvalue() == make_tar({"f": F(b"f")})
    assert run_cli("remove", "l", root=root, run_root=run_root).returncode == 0


def test_a_layer_mounted_through_another_run_root_is_not_removed(store):
    """A store used with two run roots: remove with the one that did not count a mount asks the
    other (noted in the store at its first mount), refuses (5) naming it, and cleanup there takes
    nothing away; once unmounted, remove goes on."""
    from tests.conftest import run_cli

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))
    root, other = Path(store.root), Path(store.run_root).parent / "another-run-root"
    path = store.mount("l")
    try:
        refused = run_cli("remove", "l", root=root, run_root=other)
        assert refused.returncode == 5 and b"counted in run root" in refused.stderr, refused.stderr
        run_cli("cleanup", root=root, run_root=other, check=True)
        assert store.exists("l") and (Path(path) / "f").read_bytes() == b"f"
    finally:
        store.unmount("l")
    assert run_cli("remove", "l", root=root, run_root=other).returncode == 0
    assert not store.exists("l")
    # The other run root, once it has mounted, is noted; gone, it is forgotten by cleanup.
    store.import_layer("m", None, io.BytesIO(make_tar({"f": F(b"f")})))
    run_cli("mount", "m", root=root, run_root=other, check=True)
    run_cli("unmount", "m", root=root, run_root=other, check=True)
    shutil.rmtree(other)
    cleaned = run_cli("cleanup", root=root, run_root=Path(store.run_root), check=True).stdout.decode()
    assert f"forgot run root {other} (gone)" in cleaned, cleaned


def test_the_last_unmount_with_another_run_root_leaves_the_mount_the_first_counts(store):
    """A second run root's ``mount`` finds the first's mount and counts it; its last
    ``unmount`` must leave it to the first, whose count stays, and whose last ``unmount``
    undoes it (the second undid nothing of it)."""
    from graphdriver.fs import mounts
    from tests.conftest import run_cli

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))
    store.create("c", "l", writable=True)
    root, other = Path(store.root), Path(store.run_root).parent / "another-run-root"
    path = store.mount("c")
    kernel = mounts.is_mount_point(path)
    try:
        run_cli("mount", "c", root=root, run_root=other, check=True)
        run_cli("unmount", "c", root=root, run_root=other, check=True)
        assert run_cli("mounted", "c", root=root, run_root=other).stdout == b"0\n"
        assert store.driver.mount_count("c") == 1 and mounts.is_mount_point(path) == kernel
        assert (Path(path) / "f").read_bytes() == b"f"
    finally:
        store.unmount("c")
    assert not mounts.is_mount_point(path) and store.driver.mount_count("c") == 0
    assert run_cli("remove", "c", root=root, run_root=other).returncode == 0


def test_a_root_named_through_a_symlink_is_the_same_store_with_the_same_counts(store, tmp_path):
    """``--root link`` where link names the store: one store, one run directory, one set of
    mount counts, whatever the spelling; paths are told resolved; ``remove`` through the link
    refuses a layer mounted through the real path as this run root's mount, never as
    "another" run root's."""
    from tests.conftest import run_cli

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))
    store.create("c", "l", writable=True)
    link, run = tmp_path / "link", Path(store.run_root)
    link.symlink_to(store.root)
    path = store.mount("c")
    try:
        assert run_cli("mounted", "c", root=link, run_root=run).stdout == b"1\n"
        again = run_cli("mount", "c", root=link, run_root=run, check=True).stdout.decode().strip()
        assert again == path and store.driver.mount_count("c") == 2
        run_cli("unmount", "c", root=link, run_root=run, check=True)
        assert store.driver.mount_count("c") == 1 and (Path(path) / "f").read_bytes() == b"f"
        refused = run_cli("remove", "c", root=link, run_root=run)
        assert refused.returncode == 5 and b"another --run-root" not in refused.stderr, refused.stderr
        assert len(os.listdir(run)) == 1  # one store folder in the run root
        status = run_cli("status", root=link, run_root=run, check=True).stdout.decode()
        assert f"Root: {store.root}\n" in status, status
    finally:
        store.unmount("c")
    assert run_cli("mounted", "c", root=link, run_root=run).stdout == b"0\n"


def test_a_copied_store_is_not_held_by_mounts_of_the_original(store, tmp_path):
    """``cp -a`` copies the original's notes of its run roots: a mount of the original's layer
    of the same name, counted in the original's run root, says nothing about the copy's."""
    import subprocess

    from tests.conftest import run_cli

    store.import_layer("l", None, io.BytesIO(make_tar({"f": F(b"f")})))
    store.create("c", "l", writable=True)
    copy = tmp_path / "copy"
    path = store.mount("c")
    try:
        subprocess.run(["cp", "-a", store.root, str(copy)], check=True)
        removed = run_cli("remove", "c", root=copy, run_root=tmp_path / "run-copy")
        assert removed.returncode == 0, removed.stderr
        assert store.exists("c") and (Path(path) / "f").read_bytes() == b"f"
    finally:
        store.unmount("c")


def test_check_names_a_chain_that_loops_and_ends(store):
    """Records edited by hand so that a sits on b and b on a: check says so (6), and ends."""
    import json

    from tests.conftest import run_cli

    store.create("a")
    store.create("b", "a")
    record = Path(store.root, "layers", "a.json")
    value = json.loads(record.read_text())
    value["parent"] = "b"
    record.write_text(json.dumps(value))
    r = run_cli("check", root=Path(store.root), run_root=Path(store.run_root))
    assert r.returncode == 6 and "loops back" in r.stdout.decode()


_WHITED_BASE = {"d": D(), "d/f": F(b"secret"), "e": F(b"e")}
#: A hard link to what a layer between (or the linking archive itself, before it) deleted or
#: hid: (the middle layer's entries, or None; the linking archive's entries).
HIDDEN_TARGETS = {
    "opaque below": ({"d/.wh..wh..opq": F(b"")}, {"h": H("d/f")}),
    "folder deleted below": ({".wh.d": F(b"")}, {"h": H("d/f")}),
    "file deleted below": ({"d/.wh.f": F(b"")}, {"h": H("d/f")}),
    "opaque before it": (None, {"d/.wh..wh..opq": F(b""), "h": H("d/f")}),
    "file deleted before it": (None, {".wh.e": F(b""), "h": H("e")}),
    "nested file deleted before it": (None, {"d/.wh.f": F(b""), "h": H("d/f")}),
    "folder deleted and made again": (None, {".wh.d": F(b""), "d": D(), "h": H("d/f")}),
}


@pytest.mark.parametrize("case", sorted(HIDDEN_TARGETS))
def test_a_hard_link_never_brings_back_what_a_layer_deleted(store, case):
    """A target a nearer layer (or the archive itself) deleted or hid behind an opaque folder
    is missing on every driver: a copy (vfs) has lost it, and a union must not copy it up
    from the layer below, nor link to the whiteout that deletes it."""
    from graphdriver.errors import ArchiveError

    middle, top = HIDDEN_TARGETS[case]
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    parent = "base"
    if middle is not None:
        store.import_layer("mid", "base", io.BytesIO(make_tar(middle)))
        parent = "mid"
    with pytest.raises(ArchiveError, match=r"hardlink target .* is missing"):
        store.import_layer("top", parent, io.BytesIO(make_tar(top)))
    assert not store.exists("top")
    # What the union shows, linked from a layer that hid nothing, is still a target.
    store.import_layer("ok", "base", io.BytesIO(make_tar({"h": H("d/f")})))
    assert _read(store, "ok", "h") == b"secret"


@pytest.mark.parametrize("marker", ["e/.wh.x", "e/.wh..wh..opq", "e/sub/.wh.x", "d/f/.wh.x"])
def test_a_whiteout_with_nothing_to_hide_changes_nothing(store, marker):
    """A whiteout or opaque marker below a file hides nothing: no driver makes a folder for
    it (a union used to turn the file into one)."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    store.import_layer("top", "base", io.BytesIO(make_tar({marker: F(b"")})))
    assert [str(c) for c in store.changes("top")] == []
    assert _read(store, "top", "e") == b"e" and _read(store, "top", "d/f") == b"secret"
    assert store.check(["top"]) == [("top", None)]


def _tree(store, layer_id: str) -> dict:
    from graphdriver.testing.treeutil import snapshot

    path = store.mount(layer_id)
    try:
        return snapshot(path, times=False, skip=["."])
    finally:
        store.unmount(layer_id)


@pytest.mark.parametrize("how", ["import", "apply"])
@pytest.mark.parametrize("parent", ["base", None], ids=["on a layer", "a base layer"])
@pytest.mark.parametrize("marker", ["zz/y/.wh.x", "zz/.wh..wh..opq", "d/new/.wh.x", "d/new/.wh..wh..opq"])
def test_a_marker_in_a_folder_that_is_nowhere_makes_it_as_a_file_would(store, marker, parent, how):
    """A whiteout or opaque marker in a folder neither the archive nor a lower layer has makes
    that folder, and those missing on its way, as a file's entry there would (Docker's and
    containers-storage's unpackers make them too): the same tree and changes, less the file;
    the layer passes check and gives its bytes back."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    folder = marker.rpartition("/")[0]
    store.import_layer("file", parent, io.BytesIO(make_tar({f"{folder}/file": F(b"")})))
    tar = make_tar({marker: F(b"")})
    if how == "import":
        store.import_layer("top", parent, io.BytesIO(tar))
    else:
        store.create("top", parent)
        store.apply("top", io.BytesIO(tar))
    expected = [str(c) for c in store.changes("file") if c.path != f"/{folder}/file"]
    assert [str(c) for c in store.changes("top")] == expected
    assert folder in expected[-1]
    with_file = _tree(store, "file")
    del with_file[f"{folder}/file"]
    assert _tree(store, "top") == with_file
    assert store.check(["top"]) == [("top", None)]
    out = io.BytesIO()
    store.diff("top", out, exact=True)
    assert out.getvalue() == tar


@pytest.mark.parametrize("how", ["import", "apply"])
@pytest.mark.parametrize("name", ["d/.wh..wh..opq/f", "d/.wh.x/f"])
def test_an_entry_below_a_whiteout_or_an_opaque_marker_is_refused(store, name, how):
    """Neither marker is a folder: an entry below one is refused (exit 1, one line) on every
    driver, and leaves nothing: no layer from an import, the layer as it was from an apply."""
    from tests.conftest import run_cli

    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    imported = make_tar({"f": F(b"top")})
    store.import_layer("top", "base", io.BytesIO(imported))
    digest = store.layer("top").diff_digest
    where = {"root": Path(store.root), "run_root": Path(store.run_root)}
    args = ("import", "--parent", "base", "new", "-") if how == "import" else ("apply", "top", "-")
    r = run_cli(*args, input=make_tar({name: F(b"x"), "g": F(b"y")}), **where)
    marker = name.split("/")[1]
    kind = "opaque whiteout" if marker == ".wh..wh..opq" else "whiteout"
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == f"graphdriver: entry {name!r}: entries below the {kind} {marker!r}\n"
    assert sorted(layer.id for layer in store.layers()) == ["base", "top"]
    assert (store.layer("top").damaged, store.layer("top").diff_digest) == (None, digest)
    assert _read(store, "top", "f") == b"top" and store.check(["top"]) == [("top", None)]
    out = io.BytesIO()
    store.diff("top", out, exact=True)
    assert out.getvalue() == imported


def test_a_whiteout_of_a_name_nothing_below_has_leaves_no_entry_in_the_view(store):
    """Nothing below to hide: no whiteout device, which a union would show as an entry no one
    can read; what the layer itself put there before the whiteout is deleted, as in a copy."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    tar = make_tar({"new": D(), "new/.wh.ghost": F(b""), "made": F(b"m"), ".wh.made": F(b"")})
    store.import_layer("top", "base", io.BytesIO(tar))
    root = Path(store.mount("top"))
    try:
        assert sorted(os.listdir(root)) == ["d", "e", "new"] and os.listdir(root / "new") == []
    finally:
        store.unmount("top")
    assert [str(c) for c in store.changes("top")] == ["A /new"]


def test_times_a_filesystem_cannot_hold_and_a_volume_label_pass_check(store):
    """An untouched layer never fails check: a time before 1901 or after 2446 is stored as
    the nearest one ext4 or XFS hold, and a GNU volume label makes no file."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        label = tarfile.TarInfo("LABEL")
        label.type = b"V"
        tf.addfile(label)
    volume = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mtime in (("old", -11_644_473_600), ("far", 2**40), ("now", 1_700_000_000)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 1, mtime
            tf.addfile(info, io.BytesIO(b"x"))
    times = buf.getvalue()
    for layer_id, tar in (("times", times), ("volume", volume)):
        store.import_layer(layer_id, None, io.BytesIO(tar))
        assert store.check([layer_id]) == [(layer_id, None)]
        store.mount(layer_id)
        store.unmount(layer_id)
        out = io.BytesIO()
        store.diff(layer_id, out, exact=True)
        assert out.getvalue() == tar
        assert store.check([layer_id]) == [(layer_id, None)]


@pytest.mark.parametrize("order", ["marker first", "marker last"])
def test_an_opaque_root_hides_everything_below_on_every_driver(store, order):
    """``.wh..wh..opq`` at the top of a layer hides all its parent had (vfs empties the copy;
    overlay, whose kernel ignores an opaque upper root, whites out each name instead)."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    own = {"d": D(), "d/new": F(b"n"), "n": F(b"n")}
    spec = {".wh..wh..opq": F(b""), **own} if order == "marker first" else {**own, ".wh..wh..opq": F(b"")}
    tar = make_tar(spec)
    store.import_layer("top", "base", io.BytesIO(tar))
    root = Path(store.mount("top"))
    try:
        assert sorted(os.listdir(root)) == ["d", "n"] and os.listdir(root / "d") == ["new"]
    finally:
        store.unmount("top")
    assert [str(c) for c in store.changes("top")] == ["C /d", "D /d/f", "A /d/new", "D /e", "A /n"]
    assert store.check(["top"]) == [("top", None)]
    out = io.BytesIO()
    store.diff("top", out, exact=True)
    assert out.getvalue() == tar


@pytest.mark.parametrize("before", [
    {"d/mine": F(b"m")},
    {"d/sub": D(), "d/sub/mine": F(b"m")},
    {"d/.wh.gone": F(b""), "d/mine": F(b"m")},
], ids=["a file", "a folder", "a whiteout"])
def test_an_apply_of_an_opaque_marker_hides_what_the_layer_held_there_on_every_driver(store, before):
    """An ``apply`` to a layer that already holds files in a folder: the tarball's marker
    hides them with the parent's, as on a copy (vfs), so every driver shows the same."""
    store.import_layer("base", None, io.BytesIO(make_tar(_OPAQUE_BASE)))
    store.import_layer("top", "base", io.BytesIO(make_tar(before)))
    store.apply("top", io.BytesIO(make_tar({"d": D(), "d/.wh..wh..opq": F(b""), "d/new": F(b"n")})))
    root = Path(store.mount("top"))
    try:
        shown = sorted(os.listdir(root / "d"))
    finally:
        store.unmount("top")
    assert shown == ["new"]
    changes = [str(c) for c in store.changes("top") if str(c).startswith(("A /d/", "C /d/"))]
    assert changes == ["A /d/new"]


@pytest.mark.parametrize("lower", ["file", "fifo"])
@pytest.mark.parametrize("below", ["e/a", "e/a/", "e/x/y"])
def test_an_entry_below_a_lower_layers_file_is_refused_on_every_driver(store, lower, below):
    """A path through a file of a layer below (``e``, then ``e/a``) needs a folder where the
    parent has a file: a copy refuses it (Not a directory), and so does an upper directory,
    which would otherwise make the folder over the file; nothing is left of the layer, and
    an apply so refused at its first entry leaves the layer whole, not damaged."""
    import tarfile

    base = io.BytesIO()
    with tarfile.open(fileobj=base, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("e")
        info.type = tarfile.REGTYPE if lower == "file" else tarfile.FIFOTYPE
        tf.addfile(info, io.BytesIO(b""))
    store.import_layer("base", None, io.BytesIO(base.getvalue()))
    entry = {below.rstrip("/"): D()} if below.endswith("/") else {below: F(b"x")}
    with pytest.raises(GraphDriverError, match="Not a directory"):
        store.import_layer("top", "base", io.BytesIO(make_tar(entry)))
    assert not store.exists("top")
    store.create("applied", "base")
    with pytest.raises(GraphDriverError, match="Not a directory"):
        store.apply("applied", io.BytesIO(make_tar(entry)))
    store.mount("applied")  # refused before a byte was written: not damaged
    store.unmount("applied")


@pytest.mark.parametrize("where", ["d/b", "d/sub/b"])
def test_a_whiteout_applied_in_a_folder_the_layer_made_opaque_before_shows_nothing(store, where):
    """The parent's ``d/b`` is hidden already by the layer's opaque ``d``; an apply deleting
    the layer's own ``d/b`` leaves nothing in the view (overlay made a whiteout device there,
    which the opaque folder listed as a name no one can read)."""
    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(), where: F(b"parent")})))
    store.import_layer("top", "base", io.BytesIO(make_tar({
        "d": D(), "d/.wh..wh..opq": F(b""), where: F(b"mine")})))
    folder, _, name = where.rpartition("/")
    store.apply("top", io.BytesIO(make_tar({f"{folder}/.wh.{name}": F(b"")})))
    root = Path(store.mount("top"))
    try:
        names = os.listdir(root / folder)
    finally:
        store.unmount("top")
    assert names == []
    assert f"D /{where}" in [str(c) for c in store.changes("top")]


@pytest.mark.parametrize("first", ["file", "symlink", "fifo"])
@pytest.mark.parametrize("how", ["one archive", "an apply after"])
def test_a_folder_made_where_the_layer_hid_a_parents_folder_shows_none_of_it(store, first, how):
    """``d`` as a file (a symlink, a fifo) over the parent's folder ``d``, then ``d/`` again:
    the new folder holds only what the layer puts there, as in a copy; overlay showed the
    parent's files in it again."""
    import tarfile

    def tar_of(*infos: tarfile.TarInfo) -> bytes:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info in infos:
                tf.addfile(info, io.BytesIO(b"") if info.isfile() else None)
        return data.getvalue()

    other = tarfile.TarInfo("d")
    other.type = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE}[first]
    other.linkname = "elsewhere" if first == "symlink" else ""
    folder = tarfile.TarInfo("d")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(), "d/old": F(b"o")})))
    if how == "one archive":
        store.import_layer("top", "base", io.BytesIO(tar_of(other, folder)))
    else:
        store.import_layer("top", "base", io.BytesIO(tar_of(other)))
        store.apply("top", io.BytesIO(tar_of(folder)))
    root = Path(store.mount("top"))
    try:
        names = os.listdir(root / "d")
    finally:
        store.unmount("top")
    assert names == []
    assert [str(c) for c in store.changes("top")] == ["C /d", "D /d/old"]


@pytest.mark.parametrize("names", [
    ["d/x", "d", ".wh..wh..opq"],
    ["d/.wh.e", ".wh..wh..opq", ".wh..wh..opq"],
], ids=["a folder replaced by a file", "a whiteout device dropped"])
def test_an_opaque_root_after_a_folder_on_the_way_is_gone_is_taken(store, names):
    """A folder that led to an entry of the archive and is no folder any more when an opaque
    marker comes (a file replaced it; on overlay, a first marker of the root dropped what it
    led to and whited it out) is not entered: the marker is taken, on every driver."""
    import tarfile

    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(), "d/e": F(b"e"), "z": F(b"z")})))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    store.import_layer("top", "base", io.BytesIO(data.getvalue()))
    root = Path(store.mount("top"))
    try:
        shown = sorted(os.listdir(root))
    finally:
        store.unmount("top")
    assert shown == (["d"] if "d" in names else [])


@pytest.mark.parametrize("where", ["e", "d/e"])
def test_a_hard_link_to_itself_over_a_parents_file_is_taken_on_every_driver(store, where):
    """``e`` linked to ``e`` where only the parent has ``e``: a copy has the file, so there is
    nothing to do; overlay, whose upper directory lacks it, refused the entry ("No such file
    or directory"). To a parent's folder it is a link to a folder, refused everywhere."""
    import tarfile

    def self_link(name: str, *then: str) -> bytes:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, name
            tf.addfile(info)
            for other in then:
                tf.addfile(tarfile.TarInfo(other), io.BytesIO(b""))
        return data.getvalue()

    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(), where: F(b"parent's"), "f": D()})))
    tar = self_link(where)
    store.import_layer("top", "base", io.BytesIO(tar))
    assert _read(store, "top", where) == b"parent's"
    assert store.check(["top"]) == [("top", None)]
    out = io.BytesIO()
    store.diff("top", out, exact=True)
    assert out.getvalue() == tar
    with pytest.raises(GraphDriverError, match="hardlink to a directory"):
        store.import_layer("folder", "base", io.BytesIO(self_link("f")))
    assert not store.exists("folder")
    # The link is the layer's own entry: an opaque marker after it keeps it, as in a copy.
    marker = f"{where.rpartition('/')[0]}/.wh..wh..opq".lstrip("/")
    store.import_layer("kept", "base", io.BytesIO(self_link(where, marker)))
    assert _read(store, "kept", where) == b"parent's"


_OPAQUE_BASE = {"d": D(), "d/gone": F(b"g"), "d/sub": D(), "d/sub/old": F(b"o"), "d/f": F(b"f")}
#: An opaque marker after entries of the same archive in its folder: (entries, what the
#: folder then shows, its changes).  Whiteouts apply to lower layers only (OCI image spec).
OPAQUE_AFTER = {
    "a whiteout": ({"d/.wh.gone": F(b"")}, {}, ["C /d", "D /d/f", "D /d/gone", "D /d/sub"]),
    "a file below a folder of the parent": (
        {"d/sub/new": F(b"n")}, {"sub": {"new"}},
        ["C /d", "D /d/f", "D /d/gone", "C /d/sub", "A /d/sub/new", "D /d/sub/old"]),
    "a hard link to a file of the parent": (
        {"keep": H("d/f")}, {}, ["C /d", "D /d/f", "D /d/gone", "D /d/sub", "A /keep"]),
}


@pytest.mark.parametrize("case", sorted(OPAQUE_AFTER))
def test_an_opaque_marker_after_the_archives_own_entries_shows_alike_on_every_driver(store, case):
    """The marker hides what the parent held in the folder, and nothing the same archive wrote
    there before it: no whiteout device is left to show as an entry no one can read, no copy
    of a parent's file or folder shows through, and the archive's own files stay (so the
    layer still re-exports byte for byte)."""
    entries, shown, changes = OPAQUE_AFTER[case]
    store.import_layer("base", None, io.BytesIO(make_tar(_OPAQUE_BASE)))
    tar = make_tar({**entries, "d/.wh..wh..opq": F(b"")})
    store.import_layer("top", "base", io.BytesIO(tar))
    root = Path(store.mount("top"))
    try:
        view = {name: set(os.listdir(root / "d" / name)) for name in os.listdir(root / "d")}
        if "keep" in entries:
            assert (root / "keep").read_bytes() == b"f"
    finally:
        store.unmount("top")
    assert view == shown
    assert [str(c) for c in store.changes("top")] == changes
    assert store.check(["top"]) == [("top", None)]
    out = io.BytesIO()
    store.diff("top", out, exact=True)
    assert out.getvalue() == tar


@pytest.mark.parametrize("marker", ["d/.wh..wh..opq", ".wh..wh..opq"])
def test_a_folder_made_opaque_then_deleted_by_the_same_archive_is_gone(store, marker):
    """``.wh.d`` after an opaque marker for ``d`` (or for the root) deletes the parent's ``d``
    on every driver: an opaque folder hides what is inside it, not itself."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    store.import_layer("top", "base", io.BytesIO(make_tar({marker: F(b""), ".wh.d": F(b"")})))
    root = Path(store.mount("top"))
    try:
        assert "d" not in os.listdir(root)
    finally:
        store.unmount("top")
    assert "D /d" in [str(c) for c in store.changes("top")]
    assert store.check(["top"]) == [("top", None)]


@pytest.mark.parametrize("link", ["d", "/d", "../d"])
def test_a_path_through_a_symlink_of_the_same_archive_lands_alike_on_every_driver(store, link):
    """An entry (or a link target) below a symlink the archive itself made goes where the
    symlink points in the layer's view, on a copy and on a union alike (the layer is marked
    unreproducible: its bytes cannot come back from its files)."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    tar = make_tar({"s": L(link), "s/new": F(b"n"), "h": H("s/f"), "s/.wh.gone": F(b"")})
    store.import_layer("top", "base", io.BytesIO(make_tar({"d/gone": F(b"g")})))
    store.import_layer("next", "top", io.BytesIO(tar))
    root = Path(store.mount("next"))
    try:
        assert sorted(os.listdir(root / "d")) == ["f", "new"]
        assert (root / "h").read_bytes() == b"secret" and os.readlink(root / "s") == link
    finally:
        store.unmount("next")
    changed = ["C /d", "C /d/f", "D /d/gone", "A /d/new", "A /h", "A /s"]  # d/f: linked from h
    assert [str(c) for c in store.changes("next")] == changed


_LOGS = {"var": D(), "var/log": D(), "var/log/.keep": F(b"")}
_OPAQUE_LOGS = {"var/log/.wh..wh..opq": F(b""), "var/log/new.log": F(b"new\n")}


def _diff_of(store, layer_id: str) -> tuple[list[str], bytes]:
    """The names of the layer's regenerated tarball, in order, with the bytes; each folder
    above an entry comes before it, as Docker's and containers-storage's exporters write it."""
    import tarfile

    out = io.BytesIO()
    store.diff(layer_id, out, regenerate=True)  # from the files (not a tarball an apply recorded)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        names = [m.name.rstrip("/") for m in tf.getmembers()]
    for i, name in enumerate(names):
        above = name.rpartition("/")[0]
        assert not above or above in names[:i], (name, names)
    return names, out.getvalue()


@pytest.mark.parametrize("again", ["same", "fewer"])
def test_an_opaque_folder_applied_again_puts_in_diff_only_what_changes_lists(store, again):
    """A folder an apply makes opaque again with what the layers below show already is no
    change: ``changes``, ``diffsize`` and ``diff`` agree, on every driver (overlay's upper
    directory holds the folder again, marked opaque, and its diff wrote it, its marker and its
    file where vfs's walk writes nothing).  Where the folder hides something, the diff takes
    it away, with every folder above each entry before it."""
    store.import_layer("base", None, io.BytesIO(make_tar(_LOGS)))
    store.import_layer("l2", "base", io.BytesIO(make_tar(_OPAQUE_LOGS)))
    store.create("c", "l2")
    second = _OPAQUE_LOGS if again == "same" else {"var/log/.wh..wh..opq": F(b"")}
    store.apply("c", io.BytesIO(make_tar(second)))
    changes = [str(c) for c in store.changes("c")]
    names, tar = _diff_of(store, "c")
    if again == "same":
        assert (changes, store.diff_size("c"), names) == ([], 0, [])
        return
    assert changes == ["C /var", "C /var/log", "D /var/log/new.log"]
    assert names[:2] == ["var", "var/log"] and "var/log/new.log" not in names
    store.import_layer("copy", "l2", io.BytesIO(tar))
    assert [str(c) for c in store.changes("copy")] == changes


def test_a_folder_a_container_made_again_as_it_was_is_no_change_in_its_diff(store):
    """``rm -rf var/log; mkdir var/log`` and its file put back as it was, in a container: no
    change, and nothing in ``diff`` (overlay's upper directory holds an opaque folder)."""
    store.import_layer("base", None, io.BytesIO(make_tar(_LOGS)))
    store.import_layer("l2", "base", io.BytesIO(make_tar(_OPAQUE_LOGS)))
    store.create("ctr", "l2", writable=True)
    root = Path(store.mount("ctr"))
    try:
        logs = root / "var" / "log"
        folder, file = os.stat(logs), os.stat(logs / "new.log")
        shutil.rmtree(logs)
        logs.mkdir()
        (logs / "new.log").write_bytes(b"new\n")
        for path, st in ((logs / "new.log", file), (logs, folder)):
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, st.st_mode & 0o7777)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        store.unmount("ctr")
    assert ([str(c) for c in store.changes("ctr")], store.diff_size("ctr")) == ([], 0)
    assert _diff_of(store, "ctr")[0] == []


@pytest.mark.parametrize("links", [
    {"l1": L("l2"), "l2": L("d")},  # a chain of two
    {"d/sub": D(), "l2": L("/d/sub"), "l1": L("l2/..")},  # ".." after a symlink: the folder it led to
])
def test_a_path_through_a_chain_of_symlinks_of_the_same_archive_lands_where_the_kernel_takes_it(
        store, links):
    """Symlinks of the archive are followed one component at a time, as a copy's kernel follows
    them: ``l2/..`` is the folder above what ``l2`` names, never the root."""
    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    store.import_layer("next", "base", io.BytesIO(make_tar({**links, "l1/new": F(b"n")})))
    root = Path(store.mount("next"))
    try:
        assert (root / "d" / "new").read_bytes() == b"n" and not (root / "new").exists()
    finally:
        store.unmount("next")
    assert "A /d/new" in [str(c) for c in store.changes("next")]


_TO_NO_FOLDER = "its folder 'lnk' is a symlink to '/tmp', which does not exist in the layer"
#: Entries through a symlink of the same archive that leads to no folder of the layer (the
#: parent below has /etc/passwd, a folder d and bin -> usr/bin, and no /tmp), and the error
#: with that parent (and without any, where it differs).
NO_FOLDER = {
    "absolute": ({"lnk": L("/tmp"), "lnk/f": F(b"x")}, _TO_NO_FOLDER, None),
    "relative": ({"lnk": L("tmp"), "lnk/f": F(b"x")},
                 "its folder 'lnk' is a symlink to 'tmp', which does not exist", None),
    "relative up": ({"a": D(), "a/lnk": L("../tmp"), "a/lnk/f": F(b"x")},
                    "its folder 'a/lnk' is a symlink to '../tmp', which does not exist", None),
    "below it": ({"lnk": L("/tmp"), "lnk/sub/f": F(b"x")},
                 "its folder 'lnk/sub' goes through the symlink 'lnk' to '/tmp', which does not exist",
                 None),
    "chain": ({"l1": L("l2"), "l2": L("/tmp"), "l1/f": F(b"x")},
              "its folder 'l1' goes through the symlink 'l2' to '/tmp', which does not exist", None),
    "to a file": ({"lnk": L("/etc/passwd"), "lnk/f": F(b"x")},
                  "its folder 'lnk' is a symlink to '/etc/passwd', which is not a folder",
                  "its folder 'lnk' is a symlink to '/etc/passwd', which does not exist"),
    "hard link in it": ({"lnk": L("/tmp"), "lnk/h": H("etc/passwd")}, _TO_NO_FOLDER, None),
    "hard link to it": ({"lnk": L("/tmp"), "h": H("lnk/passwd")},
                        "its hardlink target's folder 'lnk' is a symlink to '/tmp', which does not exist",
                        None),
    "to a lower symlink": ({"lnk": L("/bin"), "lnk/f": F(b"x")},
                           "the path goes through 'bin', a symlink of a lower layer",
                           "its folder 'lnk' is a symlink to '/bin', which does not exist"),
}


@pytest.mark.parametrize("case", list(NO_FOLDER))
@pytest.mark.parametrize("parent", [True, False], ids=["parent", "no parent"])
@pytest.mark.parametrize("how", ["import", "apply"])
def test_a_path_through_a_symlink_of_the_same_archive_to_no_folder_is_refused(store, case, parent, how):
    """Nothing makes the folder a symlink names (Docker's and containerd's unpackers refuse such
    an entry too): on a copy and on a union alike, the entry is refused saying why."""
    from graphdriver.errors import ArchiveError

    entries, why, alone = NO_FOLDER[case]
    below = None
    if parent:
        base = {"etc": D(), "etc/passwd": F(b"root"), "d": D(), "usr": D(), "usr/bin": D(),
                "bin": L("usr/bin")}
        store.import_layer("base", None, io.BytesIO(make_tar(base)))
        below = "base"
    tar = io.BytesIO(make_tar(entries))
    with pytest.raises(ArchiveError) as refused:
        if how == "import":
            store.import_layer("top", below, tar)
        else:
            store.create("top", below, writable=True)
            store.apply("top", tar)
    assert refused.value.exit_code == 1
    assert (why if parent or alone is None else alone) in str(refused.value)
    if how == "import":
        assert not store.exists("top")
    else:
        assert store.layer("top").damaged  # the symlink was written
    if parent:
        assert sorted(os.listdir(store.mount("base"))) == ["bin", "d", "etc", "usr"]
        store.unmount("base")


def test_the_command_line_refuses_a_file_through_a_symlink_to_no_folder_in_one_line(store, driver_setup):
    """``lnk -> /tmp``, ``lnk/f`` over a parent without /tmp: exit 1 on every driver, one line
    saying why, and no layer left."""
    from tests.conftest import run_cli

    where = {"root": Path(store.root), "run_root": Path(store.run_root), "driver": driver_setup}
    store.import_layer("base", None, io.BytesIO(make_tar({"etc": D(), "etc/passwd": F(b"root")})))
    tar = make_tar({"lnk": L("/tmp"), "lnk/f": F(b"x")})
    r = run_cli("import", "l2", "--parent", "base", "-", input=tar, **where)
    assert (r.returncode, r.stderr.decode()) == (1, f"graphdriver: entry 'lnk/f': {_TO_NO_FOLDER}\n")
    assert run_cli("layers", **where).stdout == b"base\n"


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_store_mounts_its_own_layers(store, store_root, tmp_path, driver_setup, how):
    """Layers record their ancestors' folders by path: a store moved since still mounts, and a
    copy mounts its own layers, never the original store's."""
    import subprocess

    from graphdriver.testing.setups import open_store

    store.import_layer("base", None, io.BytesIO(make_tar(_WHITED_BASE)))
    store.import_layer("child", "base", io.BytesIO(make_tar({"n": F(b"n")})))
    elsewhere = tmp_path / "elsewhere"
    if how == "moved":
        store_root.rename(elsewhere)
    else:
        subprocess.run(["cp", "-a", str(store_root), str(elsewhere)], check=True)
    moved = open_store(elsewhere, tmp_path / "run2", driver_setup)
    if how == "copied":  # the original changes behind its back: the copy must not see it
        Path(store.driver.apply_target("base").path, "e").write_bytes(b"the original store's")
    root = Path(moved.mount("child"))
    try:
        assert (root / "e").read_bytes() == b"e" and (root / "n").read_bytes() == b"n"
    finally:
        moved.unmount("child")


def test_cleanup_says_nothing_of_a_mount_record_its_last_unmount_removed_meanwhile(store, monkeypatch):
    """cleanup lists the mount records, then takes each one's lock: an ``unmount`` holding that
    lock may give back the last count first.  The record is then gone, and there is nothing stale
    to drop or report (cleanup printed "dropped stale mount record" for it)."""
    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    store.create("ctr", "base", writable=True)
    store.mount("ctr")
    listed = store.driver.counts.counted()
    assert listed  # the record cleanup lists before it takes the lock ...
    store.unmount("ctr")  # ... and the unmount that got the lock first
    monkeypatch.setattr(type(store.driver.counts), "counted", lambda self: listed)
    assert store.cleanup() == []
    assert store.driver.mount_count("ctr") == 0


def _deep(store, layer_id: str, parent: str | None, spec: dict) -> None:
    store.import_layer(layer_id, parent, io.BytesIO(make_tar(spec)))


def test_paths_longer_than_the_kernel_takes_once_the_store_is_before_them(store):
    """A layer's paths within ``PATH_MAX``, but not with the store's own path before them:
    every command reads them, and the drivers agree on what changed."""
    from graphdriver.diff.changes import ChangeKind

    top = "/".join(f"d{i:02}" + "y" * 250 for i in range(15)) + "/" + "e" * 250
    assert 4050 < len(top) < 4070
    parents = {top.rsplit("/", n)[0]: D() for n in range(16, 0, -1)}
    store.import_layer("base", None, io.BytesIO(make_tar({"etc": D()})))
    _deep(store, "deep", "base", {
        **parents, top: D(),
        f"{top}/f1": F(b"one"), f"{top}/f2": F(b"two"), f"{top}/s": L("f1"),
        f"{top}/h": H(f"{top}/f1"), f"{top}/x": F(b"x", xattrs={"user.k": b"v"}),
        f"{top}/sub": D(), f"{top}/sub/a": F(b"a"),
    })
    _deep(store, "child", "deep", {
        f"{top}/f1": F(b"ONE"), f"{top}/f2": W(), f"{top}/new": F(b"new"), f"{top}/s": L("f2"),
        f"{top}/x": F(b"x", xattrs={"user.k": b"w"}), f"{top}/sub": Opaque(), f"{top}/sub/b": F(b"b"),
    })
    assert len(store.driver.home) + len(top) > 4100
    changes = {c.path.removeprefix("/" + top): c.kind for c in store.changes("child")
               if c.path.startswith(f"/{top}/")}
    assert changes == {"/f1": ChangeKind.MODIFY, "/f2": ChangeKind.DELETE, "/new": ChangeKind.ADD,
                       "/s": ChangeKind.MODIFY, "/x": ChangeKind.MODIFY, "/sub": ChangeKind.MODIFY,
                       "/sub/a": ChangeKind.DELETE, "/sub/b": ChangeKind.ADD}
    assert len(store.changes("deep")) == 16 + 7
    assert store.diff_size("child") == len(b"ONE" + b"new" + b"x" + b"b")
    assert store.diff_size("deep") == len(b"one" + b"two" + b"x" + b"a")
    out = io.BytesIO()
    store.diff("child", out, regenerate=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        names = {m.name.removeprefix(top) for m in tf.getmembers() if m.name.startswith(top + "/")}
    assert {"/f1", "/new", "/s", "/x", "/sub/b"} <= names
    assert "/.wh.f2" in names and ("/sub/.wh.a" in names or "/sub/.wh..wh..opq" in names)
    assert store.check() == [("base", None), ("child", None), ("deep", None)]


def test_a_path_longer_than_the_kernel_takes_is_refused_whole(store):
    """Folders written one at a time could hold a path of 4,096 bytes and more, but no
    command could name it: the entry is refused, named, and no layer is left."""
    parts = [f"d{i:02}" + "y" * 200 for i in range(21)]  # 4,079 bytes, then 4,283
    spec = {"/".join(parts[: i + 1]): D() for i in range(len(parts))}
    too_long = "File name too long: 4283 bytes, where a path may have 4095"
    with pytest.raises(GraphDriverError, match=too_long) as failure:
        store.import_layer("deep", None, io.BytesIO(make_tar(spec)))
    assert failure.value.exit_code == 1
    assert "(4284 characters)" in str(failure.value)  # a folder's name ends in /
    assert not store.exists("deep")
    assert store.layers() == []


def test_a_symlink_target_longer_than_the_kernel_takes_is_refused_by_name(store):
    """The kernel stores a symlink target of at most 4,095 bytes: a longer one is refused
    saying it is the target, and no layer is left; one of 4,095 bytes is stored whole."""
    longest = "t/" * 2047 + "t"
    store.import_layer("ok", None, io.BytesIO(make_tar({"d": D(), "d/s": L(longest)})))
    root = store.mount("ok")
    try:
        assert os.readlink(os.path.join(root, "d/s")) == longest
    finally:
        store.unmount("ok")
    with pytest.raises(GraphDriverError, match="symlink target too long: 4097 bytes, "
                                               "where a target may have 4095") as failure:
        store.import_layer("far", None, io.BytesIO(make_tar({"d": D(), "d/s": L(longest + "/t")})))
    assert failure.value.exit_code == 1
    assert "'d/s'" in str(failure.value)
    assert not store.exists("far")


def _open_folder(root: str, rel: str) -> int:
    """An fd of folder *rel* below *root*, opened a name at a time (its whole path may be too long)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in rel.split("/"):
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def test_a_layer_mounted_writable_is_compared_with_its_tarball_down_its_longest_paths(store):
    """Once a mount may have changed a layer, diff and check compare its files with its tarball
    at paths too long for the kernel with the store's path before them: the sound layer gives
    its bytes back and passes, and a file made again where its tarball deletes one fails check."""
    top = "/".join(f"d{i:02}" + "y" * 250 for i in range(15)) + "/" + "e" * 250
    parents = {top.rsplit("/", n)[0]: D() for n in range(16, 0, -1)}
    store.import_layer("base", None, io.BytesIO(make_tar({
        **parents, top: D(), f"{top}/sub": D(), f"{top}/sub/a": F(b"a"), f"{top}/gone": F(b"g"),
    })))
    tar = make_tar({f"{top}/sub": Opaque(), f"{top}/sub/b": F(b"b"), f"{top}/gone": W()})
    store.import_layer("deep", "base", io.BytesIO(tar))
    assert len(store.driver.home) + len(top) > 4100
    store.mount("deep")
    store.unmount("deep")
    out = io.BytesIO()
    store.diff("deep", out, exact=True)
    assert out.getvalue() == tar
    assert store.check(["deep"]) == [("deep", None)]
    root = store.mount("deep")
    try:
        if store.record("deep").mounted_writable is None:
            return  # a read-only view: nothing a mount hands out can change the layer
        fd = _open_folder(root, top)
        os.close(os.open("gone", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.close(fd)
    finally:
        store.unmount("deep")
    ((_, why),) = store.check(["deep"])
    assert why is not None and "gone" in why

"""The layer store: records, digests, bit-exact re-export, check, tar-split for other tools."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from graphdriver.drivers.vfs import VfsDriver
from graphdriver.errors import GraphDriverError, IntegrityError, NotFound, Precondition, Unsupported
from graphdriver.store.layers import Store, StoreOptions
from graphdriver.testing.treeutil import D, Dev, F, H, L, make_tar
from tests.conftest import corpus_files, needs_root, run_cli


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def export(store: Store, layer_id: str) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out)
    return out.getvalue()


BASE = make_tar({"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n"), "bin": D(),
                 "bin/sh": F(b"#!" + b"x" * 3000, mode=0o755), "bin/rsh": L("sh"),
                 "bin/sh2": H("bin/sh")})
TOP = make_tar({"etc": D(), "etc/motd": F(b"welcome\n")})


def test_record_digests_and_chain_id(store):
    gz = gzip.compress(BASE)
    rec = store.import_layer("base", None, io.BytesIO(gz))
    assert rec.diff_digest == sha(BASE)
    assert rec.compressed_digest == sha(gz)
    assert rec.compressed_size == len(gz)
    assert rec.uncompressed_size == len(BASE)
    assert rec.chain_id == rec.diff_digest
    top = store.import_layer("top", "base", io.BytesIO(TOP))
    assert top.compressed_digest == top.diff_digest == sha(TOP)
    expected = "sha256:" + hashlib.sha256(f"{rec.chain_id} {top.diff_digest}".encode()).hexdigest()
    assert top.chain_id == expected
    # What was learnt is on disk, not only in memory.
    again = store.layer("top")
    assert (again.diff_digest, again.chain_id, again.size) == (top.diff_digest, expected, 8)


def test_diff_of_imported_layer_is_bit_exact(store):
    store.import_layer("base", None, io.BytesIO(BASE))
    store.import_layer("top", "base", io.BytesIO(TOP))
    assert export(store, "base") == BASE
    assert export(store, "top") == TOP
    assert store.check() == [("base", None), ("top", None)]


def _corpus_layers() -> list[Path]:
    return corpus_files("tar-split")


@pytest.mark.parametrize("path", _corpus_layers(), ids=lambda p: p.name[:16])
def test_tar_split_corpus_reexports_exactly(store, path):
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    try:
        store.import_layer("l", None, io.BytesIO(raw))
    except Exception as e:
        pytest.fail(f"{path.name} refused: {e}")
    assert export(store, "l") == data


def test_changed_file_is_caught_by_check_and_diff(store):
    store.import_layer("base", None, io.BytesIO(BASE))
    # Behind the store's back: straight into the layer's own files.
    Path(store.driver.apply_target("base").path, "etc/hosts").write_bytes(b"127.0.0.1 evil\n")
    results = dict(store.check())
    assert results["base"] is not None and "etc/hosts" in results["base"]
    with pytest.raises(IntegrityError):
        export(store, "base")


def test_diff_names_the_layer_whose_file_differs_from_its_tarball(store):
    """The file's own error (``file './etc/hosts': longer than ...``) is told as the layer's
    (``layer base: file ...``), as check tells it: the command line's line names the layer."""
    store.import_layer("base", None, io.BytesIO(BASE))
    with open(Path(store.driver.apply_target("base").path, "etc/hosts"), "ab") as f:
        f.write(b"127.0.0.1 evil\n")
    with pytest.raises(IntegrityError) as failure:
        export(store, "base")
    assert failure.value.what == "layer base" and failure.value.why.startswith("file "), failure.value
    assert "longer than" in failure.value.why
    assert str(failure.value) == "layer base: " + str(dict(store.check())["base"])


def test_same_length_change_is_caught(store):
    store.import_layer("base", None, io.BytesIO(BASE))
    Path(store.driver.apply_target("base").path, "etc/hosts").write_bytes(b"127.0.0.2 localhost\n")
    with pytest.raises(IntegrityError, match="checksum"):
        export(store, "base")


def test_apply_forgets_the_import(store):
    store.import_layer("base", None, io.BytesIO(BASE))
    store.apply("base", io.BytesIO(TOP))
    rec = store.layer("base")
    assert rec.diff_digest is None and rec.chain_id is None
    with pytest.raises(NotFound):
        store.tarsplit("base", io.BytesIO())
    names = export(store, "base")
    assert b"etc/motd" in names and b"etc/hosts" in names


def test_an_apply_to_a_created_layer_stopped_after_its_tar_split_claims_no_digest(store, monkeypatch):
    """Stopped between the tar-split file put in place and the record naming it (where a kill
    may land): the layer says it is damaged and claims no digest; removing it takes the file."""
    store.create("l")

    def stopped(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_record_ingest", stopped)
    with pytest.raises(KeyboardInterrupt):
        store.apply("l", io.BytesIO(TOP))
    assert os.path.exists(store.tarsplit_path("l"))
    rec = store.layer("l")
    assert rec.damaged is not None and rec.diff_digest is None and rec.fresh is None
    with pytest.raises(NotFound):
        store.tarsplit("l", io.BytesIO())
    [(_, why)] = store.check(["l"])
    assert why is not None and why.startswith("damaged"), why
    assert any("layer l is damaged" in line for line in store.cleanup())
    store.remove("l")
    assert os.listdir(os.path.dirname(store.tarsplit_path("l"))) == []


def test_tarsplit_metadata_for_go_tool(store, tmp_path):
    if shutil.which("tar-split") is None:
        pytest.skip("tar-split (Debian package tar-split) not installed")
    store.import_layer("base", None, io.BytesIO(BASE))
    meta = tmp_path / "meta.gz"
    with open(meta, "wb") as f:
        store.tarsplit("base", f)
    root = store.mount("base")
    try:
        out = subprocess.run(["tar-split", "asm", "--input", str(meta), "--path", root],
                             capture_output=True, check=True)
    finally:
        store.unmount("base")
    assert out.stdout == BASE


def assert_stays_its_tarball(store, data: bytes) -> None:
    """Layer ``l`` imported from *data* checks sound, and after a mount that hands its tree out
    writable (vfs) and no write, diff gives back *data* and check still finds it sound."""
    store.import_layer("l", None, io.BytesIO(data))
    assert store.check(["l"]) == [("l", None)]
    store.mount("l")
    store.unmount("l")
    assert export(store, "l") == data
    assert store.check(["l"]) == [("l", None)]


@needs_root
def test_a_namespaced_capability_of_root_is_the_layer_its_tarball_gives(store):
    """A revision-3 file capability whose root is uid 0 reads back as the revision-2 one it is
    (the kernel's conversion, as getcap shows it): check finds the layer its tarball, and after a
    mount that hands the tree out writable (vfs), diff still gives the imported bytes."""
    v3 = struct.pack("<6I", 0x03000001, 1 << 13, 0, 0, 0, 0)  # cap_net_raw, effective, root 0
    data = make_tar({"ping": F(b"ping", mode=0o755, xattrs={"security.capability": v3})})
    assert_stays_its_tarball(store, data)


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL xattr: version 2, then (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_NOBODY = 2**32 - 1  # the id of the entries that name nobody, as the kernel gives them back
_UO, _USER, _GO, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACCESS, _DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
_MASK_ALONE = _acl((_UO, 6, _NOBODY), (_GO, 4, _NOBODY), (_MASK, 5, _NOBODY), (_OTHER, 0, _NOBODY))
_NAMED = _acl((_UO, 6, _NOBODY), (_USER, 7, 1000), (_GO, 4, _NOBODY), (_GROUP, 5, 50), (_MASK, 7, _NOBODY),
              (_OTHER, 0, _NOBODY))
# (header mode, ACL): the mode and ACL the kernel keeps (setting the ACL after the mode, as
# containers-storage does too: the ACL's owner, mask (else group) and other entries are the mode).
_ACL_CASES = {
    "as-the-mode": (0o644, _acl((_UO, 6, _NOBODY), (_GO, 4, _NOBODY), (_OTHER, 4, _NOBODY)), 0o644, None),
    "as-the-mode-ids-0": (0o644, _acl((_UO, 6, 0), (_GO, 4, 0), (_OTHER, 4, 0)), 0o644, None),
    "another-mode": (0o644, _acl((_UO, 7, _NOBODY), (_GO, 5, _NOBODY), (_OTHER, 0, _NOBODY)), 0o750, None),
    "named-and-mask": (0o640, _NAMED, 0o670, _NAMED),
    "named-ids-0": (0o4640, _acl((_UO, 6, 0), (_USER, 7, 1000), (_GO, 4, 0), (_MASK, 5, 0), (_OTHER, 0, 0)),
                    0o4650, _acl((_UO, 6, _NOBODY), (_USER, 7, 1000), (_GO, 4, _NOBODY), (_MASK, 5, _NOBODY),
                                 (_OTHER, 0, _NOBODY))),
    "mask-alone": (0o640, _MASK_ALONE, 0o650, _MASK_ALONE),
    "empty": (0o600, _acl(), 0o600, None),
}


@needs_root
@pytest.mark.parametrize("case", sorted(_ACL_CASES))
def test_an_access_acl_is_the_mode_and_acl_the_kernel_keeps(store, case):
    """An access ACL sets the mode's permissions (the group's from its mask), and one of the three
    entries the mode holds is kept as the mode alone: the file is what the kernel keeps (the tree
    containers-storage extracts), check finds the layer its tarball, and after a mount that hands
    the tree out writable (vfs), diff still gives the imported bytes."""
    mode, acl, kept_mode, kept_acl = _ACL_CASES[case]
    xattrs = {_ACCESS: acl}
    data = make_tar({"f": F(b"f", mode=mode, xattrs=xattrs), "d": D(mode=mode, xattrs=xattrs)})
    store.import_layer("l", None, io.BytesIO(data))
    assert store.check(["l"]) == [("l", None)]
    root = store.mount("l")
    try:
        for name in ("f", "d"):
            path = os.path.join(root, name)
            assert os.lstat(path).st_mode & 0o7777 == kept_mode, name
            assert (os.getxattr(path, _ACCESS) if _ACCESS in os.listxattr(path) else None) == kept_acl, name
    finally:
        store.unmount("l")
    assert export(store, "l") == data
    assert store.check(["l"]) == [("l", None)]


@needs_root
def test_a_default_acl_reads_back_with_its_ids_and_an_empty_one_is_none(store):
    """A default ACL whose owner, group and other entries name id 0 reads back with no id in
    them; an empty one is no default ACL: check finds the layer sound, diff gives its bytes."""
    zeros = _acl((_UO, 7, 0), (_GO, 5, 0), (_OTHER, 5, 0))
    data = make_tar({"d": D(xattrs={_DEFAULT: zeros}), "d/f": F(b"f"), "e": D(xattrs={_DEFAULT: _acl()})})
    assert_stays_its_tarball(store, data)


@needs_root
@pytest.mark.parametrize("change", ["named", "mask", "removed", "default", "added"])
def test_check_finds_an_acl_changed_in_the_layers_files(store, change):
    """setfacl on a file of the layer is a change check reports, however the ACL came in."""
    if shutil.which("setfacl") is None:
        pytest.skip("needs setfacl")
    as_mode = _acl((_UO, 6, _NOBODY), (_GO, 4, _NOBODY), (_OTHER, 4, _NOBODY))
    data = make_tar({"f": F(b"f", mode=0o640, xattrs={_ACCESS: _NAMED}),
                     "g": F(b"g", xattrs={_ACCESS: as_mode}), "d": D(xattrs={_DEFAULT: _NAMED})})
    store.import_layer("l", None, io.BytesIO(data))
    assert store.check(["l"]) == [("l", None)]
    files = store.driver.apply_target("l").path
    args = {"named": ["-n", "-m", "u:1000:r-x", "f"], "mask": ["-n", "-m", "m::r--", "f"],
            "removed": ["-b", "f"], "default": ["-d", "-m", "u:7:r", "d"],
            "added": ["-m", "u:7:r", "g"]}[change]
    subprocess.run(["setfacl", *args[:-1], os.path.join(files, args[-1])], check=True)
    [(layer, problem)] = store.check(["l"])
    assert layer == "l" and problem is not None, problem
    assert problem.startswith("its files differ from its tarball"), problem


def _acl_xattrs(path: str) -> list[str]:
    return sorted(k for k in os.listxattr(path, follow_symlinks=False) if k.startswith("system.posix_acl"))


@needs_root
@pytest.mark.parametrize("named", [False, True], ids=["implied", "named"])
def test_a_default_acl_of_the_parent_layer_gives_the_files_of_a_child_none(store, named):
    """What a child layer makes in a folder its parent gave a default ACL holds the ACLs its
    entries give alone (none here) and their modes, as what a layer makes in a folder with a
    default ACL of its own: the folder keeps its default ACL and other xattrs (the kernel's
    copy up), check finds both layers sound, and diff gives the child's bytes back."""
    folder = D(xattrs={_DEFAULT: _NAMED, "user.k": b"v"})
    store.import_layer("base", None, io.BytesIO(make_tar({"d": folder})))
    child = make_tar({**({"d": folder} if named else {}), "d/new": F(b"n", mode=0o604),
                      "d/sub": D(mode=0o751), "d/sub/f": F(b"f", mode=0o640), "d/p": Dev("p", mode=0o620)})
    store.import_layer("c", "base", io.BytesIO(child))
    assert store.check() == [("base", None), ("c", None)]
    root = store.mount("c")
    try:
        d = os.path.join(root, "d")
        assert (os.getxattr(d, _DEFAULT), os.getxattr(d, "user.k")) == (_NAMED, b"v")
        modes = {}
        for name in ("new", "sub", "sub/f", "p"):
            path = os.path.join(d, name)
            assert _acl_xattrs(path) == [], name
            modes[name] = os.lstat(path).st_mode & 0o7777
        assert modes == {"new": 0o604, "sub": 0o751, "sub/f": 0o640, "p": 0o620}
    finally:
        store.unmount("c")
    assert export(store, "c") == child
    assert store.check() == [("base", None), ("c", None)]


@needs_root
def test_a_folder_entry_over_the_parent_layers_folder_holds_the_xattrs_it_gives(store):
    """A folder entry without xattrs over a folder of the parent layer that has some (ACLs,
    a user.* one) leaves a folder without any, on every driver (a full copy held the parent's):
    check finds the layer sound, diff gives its bytes back."""
    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(xattrs={_DEFAULT: _NAMED, _ACCESS: _NAMED,
                                                                       "user.k": b"v"})})))
    child = make_tar({"d": D(mode=0o750, xattrs={"user.j": b"w"}), "d/f": F(b"f")})
    store.import_layer("c", "base", io.BytesIO(child))
    assert store.check() == [("base", None), ("c", None)]
    root = store.mount("c")
    try:
        d = os.path.join(root, "d")
        assert sorted(os.listxattr(d)) == ["user.j"]
        assert os.lstat(d).st_mode & 0o7777 == 0o750
        assert _acl_xattrs(os.path.join(d, "f")) == []
    finally:
        store.unmount("c")
    assert export(store, "c") == child


def test_cli_check_reports_bad_layer_with_exit_6(tmp_path):
    root = tmp_path / "store"
    assert run_cli("import", "good", "-", root=root, input=BASE).returncode == 0
    assert run_cli("import", "bad", "-", root=root, input=TOP).returncode == 0
    store = Store(StoreOptions(root=str(root), run_root=str(tmp_path / "run")))
    Path(store.driver.apply_target("bad").path, "etc/motd").write_bytes(b"tampered\n")
    r = run_cli("check", root=root)
    assert r.returncode == 6
    out = r.stdout.decode().splitlines()
    assert "good: ok" in out and any(line.startswith("bad: ") for line in out)
    assert "bad" in r.stderr.decode()
    assert run_cli("check", "good", root=root).returncode == 0
    r = run_cli("diff", "bad", "-o", str(tmp_path / "x.tar"), root=root)
    assert r.returncode == 6 and not (tmp_path / "x.tar").exists()


def test_tarsplit_cli(tmp_path):
    root = tmp_path / "store"
    run_cli("import", "l", "-", root=root, input=BASE, check=True)
    r = run_cli("tarsplit", "l", root=root, check=True)
    assert gzip.decompress(r.stdout).startswith(b'{"type":2')
    run_cli("tarsplit", "l", "-o", str(tmp_path / "m.gz"), root=root, check=True)
    assert (tmp_path / "m.gz").read_bytes() == r.stdout
    run_cli("create", "empty", root=root, check=True)
    assert run_cli("tarsplit", "empty", root=root).returncode == 3


def test_remove_drops_tarsplit_and_leaves_store_empty(store):
    store.import_layer("base", None, io.BytesIO(BASE))
    store.remove("base")
    assert os.listdir(os.path.join(store.root, "tarsplit")) == []
    assert store.cleanup() == []


@needs_root
def test_additional_read_only_store(tmp_path, driver_name):
    shared = Store(StoreOptions(root=str(tmp_path / "shared"), run_root=str(tmp_path / "r1"),
                                driver=driver_name))
    shared.import_layer("base", None, io.BytesIO(BASE))
    local = Store(StoreOptions(root=str(tmp_path / "local"), run_root=str(tmp_path / "r2"),
                               driver=driver_name,
                               additional_stores=(str(tmp_path / "shared"),)))
    assert [r.id for r in local.layers()] == ["base"]
    assert local.layer("base").read_only_store
    local.import_layer("top", "base", io.BytesIO(TOP))
    root = local.mount("top")
    try:
        assert Path(root, "etc/hosts").exists() and Path(root, "etc/motd").exists()
    finally:
        local.unmount("top")
    assert export(local, "base") == BASE
    with pytest.raises(Precondition):
        local.remove("base")
    with pytest.raises(Precondition):
        local.apply("base", io.BytesIO(TOP))


def test_an_additional_store_of_another_driver_is_refused_as_such(tmp_path):
    """Its layers' files are where its own driver keeps them: a precondition (5) naming the
    driver, never "files missing" (6) for a layer nothing damaged."""
    shared = Store(StoreOptions(root=str(tmp_path / "shared"), run_root=str(tmp_path / "r1"), driver="vfs"))
    shared.import_layer("base", None, io.BytesIO(BASE))
    local = Store(StoreOptions(root=str(tmp_path / "local"), run_root=str(tmp_path / "r2"),
                               driver="windowsfilter", additional_stores=(str(tmp_path / "shared"),)))
    assert [r.id for r in local.layers()] == ["base"]  # listing needs no driver
    with pytest.raises(Precondition, match="was created with driver vfs, not windowsfilter"):
        local.create("top", "base")


def test_self_overwriting_archive_is_kept_but_not_claimed_exact(store):
    raw = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=raw, mode="w") as tf:
        for content in (b"first", b"second!"):
            info = tarfile.TarInfo("f")
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    rec = store.import_layer("dup", None, io.BytesIO(data))
    assert rec.diff_digest == sha(data)
    assert rec.unreproducible is not None and "twice" in rec.unreproducible
    assert store.layer("dup").display()["unreproducible"] == rec.unreproducible
    # No bytes pass for the imported ones: diff refuses, unless asked to build from the files.
    with pytest.raises(IntegrityError, match="cannot be re-exported exactly"):
        export(store, "dup")
    out = io.BytesIO()
    store.diff("dup", out, regenerate=True)
    assert b"second!" in out.getvalue() and b"first" not in out.getvalue()
    ((layer_id, why),) = store.check()
    assert layer_id == "dup" and why.startswith("skipped: cannot be re-exported exactly")
    with pytest.raises(NotFound):
        store.tarsplit("dup", io.BytesIO())


def test_a_refused_duplicate_never_undoes_the_other_writers_work(store):
    """Another writer's import of the same id is pending: a second create is refused and
    leaves that work alone (only what a transaction itself marked is ever undone)."""
    from graphdriver.errors import AlreadyExists
    from graphdriver.store.records import LayerRecord

    store.records.mark_pending("x", "import")
    store.records.put(LayerRecord(id="x", parent=None, created="now", driver=store.driver_name))
    store.driver.create("x", None)
    with pytest.raises(AlreadyExists):
        store.create("x")
    with pytest.raises(AlreadyExists):
        store.import_layer("x", None, io.BytesIO(b""))
    assert store.driver.exists("x") and store.records.exists("x") and store.records.is_pending("x")


def test_a_failed_import_leaves_nothing_and_a_failed_create_too(store, monkeypatch):
    before = sorted(os.listdir(store.driver.home))
    with pytest.raises(GraphDriverError):
        store.import_layer("bad", None, io.BytesIO(b"not a tarball at all" * 100))
    monkeypatch.setattr(store.driver, "create_rw", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "boom")))
    with pytest.raises(OSError):
        store.create("ctr", None, writable=True)
    assert not store.records.exists("bad") and not store.records.exists("ctr")
    assert store.records.pending_ids() == []
    assert sorted(os.listdir(store.driver.home)) == before
    assert not os.path.exists(store.tarsplit_path("bad"))


def test_records_hold_stored_fields_only(store):
    """What the store shows (driver facts, which store a layer is in) is never stored."""
    import json

    from graphdriver.store.records import LayerRecord

    store.import_layer("base", None, io.BytesIO(make_tar({"a": F(b"a")})))
    shown = store.layer("base")
    assert shown.metadata["dir"] and shown.display()["metadata"] == shown.metadata
    stored = store.records.get("base")
    assert type(stored) is LayerRecord and not hasattr(stored, "metadata")
    on_disk = json.loads(Path(store.records.dir, "base.json").read_text())
    assert set(on_disk) == set(stored.to_json()) and "metadata" not in on_disk


def test_default_locations_follow_xdg_and_ignore_a_relative_value(monkeypatch, tmp_path):
    from graphdriver.store import layers

    monkeypatch.delenv("GRAPHDRIVER_ROOT", raising=False)
    monkeypatch.delenv("GRAPHDRIVER_RUNROOT", raising=False)
    monkeypatch.setattr(layers, "privileged", lambda: False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert layers.default_root() == str(tmp_path / "data/graphdriver")
    assert layers.default_run_root("/r") == str(tmp_path / "run/graphdriver")
    # The XDG spec: a relative path in these variables is invalid and ignored.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")
    assert layers.default_root() == str(tmp_path / ".local/share/graphdriver")
    assert layers.default_run_root("/r") == "/r/run"


class _NeverDriver(VfsDriver):
    """A driver whose probe always fails (to see ``status`` say why it was passed over)."""

    @classmethod
    def probe(cls, home: str) -> None:
        raise Unsupported("driver never", "this machine lacks what it needs")


def test_status_says_which_probes_passed_and_why_drivers_ahead_were_passed_over(tmp_path, monkeypatch):
    from graphdriver import drivers

    monkeypatch.setitem(drivers._REGISTRY, "never", f"{__name__}:_NeverDriver")
    monkeypatch.setattr(drivers, "PRIORITY", ("never", "vfs"))
    monkeypatch.setattr(drivers, "passed_over", [])
    store = Store(StoreOptions(root=str(tmp_path / "s"), run_root=str(tmp_path / "r")))
    status = dict(store.status())
    assert status["Probes Passed"] == "vfs"
    assert status["Probes Failed"] == "never: driver never: this machine lacks what it needs"



def test_a_first_command_that_stores_nothing_never_fails_one_waiting_on_its_lock(tmp_path, monkeypatch):
    """A first command that stored nothing takes the lock file and the new folders away; one
    that waited on its lock then finds them gone when it takes the lock anew: it makes them
    again and goes on, never failing on a missing file."""
    from graphdriver.fs import locking

    root = tmp_path / "new" / "store"
    store = Store(StoreOptions(root=str(root), run_root=str(tmp_path / "run"), driver="vfs", create=False))
    real = locking.locked.__enter__
    vanished = []

    def racing(self: locking.locked) -> int:
        if not vanished and self.path.endswith("store.lock"):
            # The other command's exit (the lock file, then the empty folders), and then
            # this one opens the lock file.
            vanished.append(True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.rmdir(root)
            os.rmdir(root.parent)
            raise FileNotFoundError(2, "No such file or directory", self.path)
        return real(self)

    monkeypatch.setattr(locking.locked, "__enter__", racing)
    with store.locked():  # its take of the store lock meets the race, and goes on
        assert vanished and (root / "store.lock").exists()
    assert not (tmp_path / "new").exists()  # and this one, storing nothing, leaves nothing either


def test_a_transaction_interrupted_while_taking_the_lock_back_undoes_under_the_lock():
    """Ctrl-C while an import waits to take the store lock back after extraction: the undo
    (dropping the half-made layer) still happens with the lock held, never without it."""
    from graphdriver.store.transaction import Transaction

    events: list[str] = []

    class Lock:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def __enter__(self) -> int:
            if self.fail:
                events.append("interrupted")
                raise KeyboardInterrupt
            events.append("locked")
            return 3

        def __exit__(self, *exc: object) -> None:
            events.append("unlocked")

    class Records:
        def mark_pending(self, layer_id: str, operation: str) -> None:
            events.append("marked")

    class FakeStore:
        records = Records()
        takes = 0

        def locked(self) -> Lock:
            self.takes += 1
            return Lock(fail=self.takes == 2)  # the second take: after the unlocked block

        def drop_layer(self, layer_id: str) -> None:
            held = events.count("locked") > events.count("unlocked")
            events.append("dropped" if held else "dropped without the lock")

    with pytest.raises(KeyboardInterrupt), Transaction(FakeStore(), "l", "import") as tx:  # type: ignore[arg-type]
        tx.mark()
        with tx.unlocked():
            pass  # the extraction
    assert events == ["locked", "marked", "unlocked", "interrupted", "locked", "dropped", "unlocked"]


@pytest.mark.parametrize("driver", ["vfs", pytest.param("overlay", marks=needs_root)])
def test_a_record_naming_a_parent_without_record_is_corrupt_not_removed_meanwhile(tmp_path, driver):
    """No removal takes a layer from under a child: a child whose parent has no record is
    corrupt metadata (6), as check says, for changes, diffsize and a regenerated diff too."""
    import json

    store = Store(StoreOptions(root=str(tmp_path / "s"), run_root=str(tmp_path / "r"), driver=driver))
    store.import_layer("base", None, io.BytesIO(BASE))
    store.import_layer("top", "base", io.BytesIO(TOP))
    path = tmp_path / "s" / "layers" / "top.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "parent": "gone"}))
    says = "layer top: its chain's layer gone has no record (corrupt metadata)"
    for read in (lambda: store.changes("top"), lambda: store.diff_size("top"),
                 lambda: store.diff("top", io.BytesIO(), regenerate=True)):
        with pytest.raises(IntegrityError) as caught:
            read()
        assert str(caught.value) == says


def test_a_record_naming_itself_as_its_parent_can_be_removed(tmp_path):
    """Its chain loops (corrupt, 6 from check); it is no child of its own that keeps remove off."""
    import json

    store = Store(StoreOptions(root=str(tmp_path / "s"), run_root=str(tmp_path / "r"), driver="vfs"))
    store.import_layer("base", None, io.BytesIO(BASE))
    store.import_layer("top", "base", io.BytesIO(TOP))
    path = tmp_path / "s" / "layers" / "top.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "parent": "top"}))
    why = "its chain loops back to layer top (corrupt metadata)"
    assert store.check(["top"]) == [("top", why)]
    # What reads the chain says so too, never an empty answer.
    for read in (store.changes, store.diff_size, store.mount,
                 lambda i: store.diff(i, io.BytesIO(), regenerate=True),
                 lambda i: store.create("child", i)):
        with pytest.raises(IntegrityError, match=re.escape(why)):
            read("top")
    store.remove("top")
    assert [layer.id for layer in store.layers()] == ["base"]


def test_check_of_a_layer_named_and_removed_meanwhile_says_it_is_not_found(store, monkeypatch):
    """A layer ``check ID`` names and another process removes while its files are compared is
    not found (exit 3), as when it was gone before, never an answer of no line and exit 0."""
    from graphdriver.store import integrity

    store.import_layer("base", None, io.BytesIO(BASE))
    store.import_layer("other", None, io.BytesIO(BASE))
    real = integrity.verify_files

    def verify_then_remove(s: Store, record) -> None:
        if record.id == "base" and store.exists("base"):
            store.remove("base")
        real(s, record)

    monkeypatch.setattr(integrity, "verify_files", verify_then_remove)
    with pytest.raises(NotFound, match="base") as failure:
        store.check(["other", "base"])
    assert failure.value.exit_code == 3
    assert store.check(["other"]) == [("other", None)]


def test_check_under_an_apply_that_begins_meanwhile_reports_no_damage(store, monkeypatch):
    """An apply that begins while check compares a layer's files with its tarball (check
    takes no lock) changes those files: check tells the layer as its record says now, an
    apply under way or no digest, never exit 6 for files differing from a forgotten tarball."""
    from graphdriver.store import integrity

    store.import_layer("base", None, io.BytesIO(BASE))
    real = integrity.verify_files
    began = []

    def verify_while_applying(s: Store, record) -> None:
        if not began:  # the apply runs to its end between check reading the record and the files
            began.append(True)
            store.apply("base", io.BytesIO(TOP))
        real(s, record)

    monkeypatch.setattr(integrity, "verify_files", verify_while_applying)
    results = dict(store.check())
    assert results["base"] == "skipped: no recorded digest (not imported)", results


class _CountedLookups(set[str]):
    """A set that counts the lookups made in it."""

    lookups = 0

    def __contains__(self, item: object) -> bool:
        self.lookups += 1
        return super().__contains__(item)


def test_the_folders_of_a_deep_tree_are_added_once_each():
    """Each path of a tree 2,000 levels deep costs one or two lookups, not one a level: ``check``
    of such a layer stays linear in its entries."""
    from graphdriver.layerio.verify import add_parents

    folders = _CountedLookups()
    paths = ["/".join(["d"] * depth) for depth in range(1, 2001)]
    for path in paths:
        add_parents(folders, path)
    assert folders == set(paths)
    assert folders.lookups <= 2 * len(paths)
    add_parents(folders, "other/below")  # a new branch climbs to the root
    assert {"other", "other/below"} <= folders


def test_check_of_a_layer_600_folders_deep_finds_a_file_planted_at_the_bottom(store):
    deep = "/".join(["d"] * 600)  # (shallow enough for pytest's recursive removal of old temp folders)
    spec = {"/".join(["d"] * depth): D() for depth in range(1, 601)}
    store.import_layer("deep", None, io.BytesIO(make_tar({**spec, deep + "/leaf": F(b"leaf\n")})))
    assert store.check() == [("deep", None)]
    bottom = Path(store.driver.apply_target("deep").path, deep)
    times = bottom.stat()
    (bottom / "planted").write_bytes(b"")
    os.utime(bottom, ns=(times.st_atime_ns, times.st_mtime_ns))  # the file alone differs
    [(_, why)] = store.check()
    assert why is not None and "planted': is in the layer but in no entry" in why, why
    store.remove("deep")


def test_check_of_a_long_chain_reads_each_record_a_bounded_number_of_times(store, monkeypatch):
    """Each layer's chain must be whole; checking all 60 layers of a chain reads each record
    about once, not once per layer above it."""
    parent = None
    for i in range(60):
        store.import_layer(f"l{i}", parent, io.BytesIO(make_tar({f"f{i}": F(b"%d\n" % i)})))
        parent = f"l{i}"
    reads = 0
    find = Store._find

    def counted(self: Store, layer_id: str) -> object:
        nonlocal reads
        reads += 1
        return find(self, layer_id)

    monkeypatch.setattr(Store, "_find", counted)
    assert store.check() == sorted((f"l{i}", None) for i in range(60))
    assert reads <= 3 * 60, reads

"""The overlay driver: layout, mounts, depth, native changes, recovery, probes, id maps, rootless."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.diff.changes import ChangeKind
from graphdriver.drivers import overlay
from graphdriver.drivers.base import Driver, DriverConfig
from graphdriver.drivers.overlay import MAX_DEPTH, OverlayDriver
from graphdriver.drivers.values import CreateOpts
from graphdriver.errors import GraphDriverError, InvalidArgument, Precondition, Unsupported
from graphdriver.fs import mounts
from graphdriver.idmap import IDMap, IDMappings
from graphdriver.store import content
from graphdriver.store.layers import Store, StoreOptions
from graphdriver.testing.treeutil import D, F, H, L, Opaque, W, make_tar, snapshot
from tests.conftest import ROOT, run_cli

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE

def _why_not() -> str:
    """Why the kernel's overlay cannot be tested here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (kernel overlay mounts)"
    try:
        overlay.probe_home("/tmp", None)
    except GraphDriverError as e:
        return f"overlay cannot run here: {e}"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "runs")


# ----- helpers ------------------------------------------------------------------------------------


def make_driver(tmp_path: Path, home: str = "home", **kw: Any) -> OverlayDriver:
    return OverlayDriver(DriverConfig(home=str(tmp_path / home), run_root=str(tmp_path / "run"), **kw))


@pytest.fixture
def d(tmp_path: Path) -> Iterator[OverlayDriver]:
    driver = make_driver(tmp_path)
    yield driver
    _release_all(tmp_path)


def _release_all(tmp_path: Path) -> None:
    for point in mounts.mounts_below(str(tmp_path)):
        mounts.unmount(point)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(StoreOptions(root=str(tmp_path / "store"), run_root=str(tmp_path / "run"), driver="overlay"))
    yield s
    _release_all(tmp_path)


def diff_dir(drv: OverlayDriver, layer_id: str) -> Path:
    return Path(drv.resolve(layer_id)) / "diff"


def apply(drv: Driver, layer_id: str, spec: dict[str, Any]) -> int:
    return content.apply(drv, layer_id, io.BytesIO(make_tar(spec))).size


def walk_changes(drv: OverlayDriver, layer_id: str, parent: str | None) -> list[tuple[ChangeKind, str]]:
    return [(c.kind, c.path) for c in content.changes(drv, layer_id, parent, native=False)]


def native_changes(drv: OverlayDriver, layer_id: str, parent: str | None) -> list[tuple[ChangeKind, str]]:
    assert drv._native(layer_id, parent) is not None
    return [(c.kind, c.path) for c in content.changes(drv, layer_id, parent)]


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


# ----- layout and mounts ------------------------------------------------------------------------------


def test_layout(d):
    d.create("base", None)
    d.create_rw("ctr", "base")
    base, ctr = Path(d.resolve("base")), Path(d.resolve("ctr"))
    for folder in (base, ctr):
        assert {p.name for p in folder.iterdir()} >= {"diff", "work", "merged", "link", "layerchain.json"}
        short = (folder / "link").read_text()
        assert len(short) == overlay.SHORT_LEN
        link = Path(d.home) / ".l" / short
        assert os.readlink(link) == f"../{folder.name}/diff"
    assert not (base / "lower").exists()
    assert (ctr / "lower").read_text() == ".l/" + (base / "link").read_text()
    assert d.layer_chain("ctr") == [str(base)]
    meta = d.metadata("ctr")
    assert meta["UpperDir"] == str(ctr / "diff") and meta["LowerDir"].endswith((base / "link").read_text())


def test_mounts_and_counts(d):
    d.create("base", None)
    (diff_dir(d, "base") / "f").write_bytes(b"base")
    d.create_rw("ctr", "base")
    path = d.get("ctr")
    assert path == os.path.join(d.resolve("ctr"), "merged")
    assert mounts.is_overlay_mount(path)
    assert Path(path, "f").read_bytes() == b"base"
    Path(path, "g").write_bytes(b"ctr")
    assert (diff_dir(d, "ctr") / "g").read_bytes() == b"ctr"
    assert d.get("ctr") == path and d.mount_count("ctr") == 2
    d.put("ctr")
    assert mounts.is_mount_point(path)
    d.put("ctr")
    assert not mounts.is_mount_point(path)
    # A base layer has nothing to stack: its own directory is bind-mounted, read-only
    # for an image layer.
    base_path = d.get("base")
    assert mounts.is_mount_point(base_path) and not mounts.is_overlay_mount(base_path)
    with pytest.raises(OSError) as err:
        Path(base_path, "h").write_bytes(b"h")
    assert err.value.errno == errno.EROFS
    d.put("base")
    d.create_rw("rwbase", None)
    rw_path = d.get("rwbase")
    Path(rw_path, "h").write_bytes(b"h")
    d.put("rwbase")
    assert (diff_dir(d, "rwbase") / "h").exists()


def test_image_layers_mount_read_only(d):
    d.create("img", None)
    d.create("img2", "img")
    path = d.get("img2")
    try:
        with pytest.raises(OSError) as err:
            Path(path, "x").write_bytes(b"x")
        assert err.value.errno == errno.EROFS
    finally:
        d.put("img2")
    d.create_rw("ctr", "img2")
    path = d.get("ctr")
    try:
        Path(path, "x").write_bytes(b"x")
    finally:
        d.put("ctr")

def test_additional_store_layers_mount_read_only(tmp_path):
    shared = make_driver(tmp_path, "shared")
    shared.create("base", None)
    (diff_dir(shared, "base") / "f").write_bytes(b"f")
    shared.create("mid", "base")
    (diff_dir(shared, "mid") / "g").write_bytes(b"g")
    mine = OverlayDriver(DriverConfig(home=str(tmp_path / "home"), run_root=str(tmp_path / "run2"),
                                      readonly_homes=(shared.home,)))
    try:
        for layer_id, names in (("base", ["f"]), ("mid", ["f", "g"])):
            path = mine.get(layer_id)
            assert path.startswith(mine.run_root)
            assert sorted(os.listdir(path)) == names
            with pytest.raises(OSError) as e:
                Path(path, "new").write_bytes(b"x")
            assert e.value.errno == errno.EROFS
            mine.put(layer_id)
            assert not mounts.is_mount_point(path)
        # A layer of our own on top of theirs.
        mine.create_rw("ctr", "mid")
        path = mine.get("ctr")
        assert sorted(os.listdir(path)) == ["f", "g"]
        Path(path, "h").write_bytes(b"h")
        mine.put("ctr")
        assert native_changes(mine, "ctr", "mid") == [(A, "/h")]
    finally:
        _release_all(tmp_path)


def test_remove_refuses_a_mount_no_count_knows_and_unmount_force_releases_it(d, tmp_path):
    """A union mounted though this run root counts nothing (a process with another run root
    mounted it, or one died before counting): remove refuses (5), never deleting from
    under it; ``unmount --force`` (put_all) unmounts it, and then remove goes on."""
    d.create("base", None)
    (diff_dir(d, "base") / "keep").write_bytes(b"k")
    d.create_rw("ctr", "base")
    path = d._mount("ctr", "")
    (Path(path) / "data").write_bytes(b"precious")
    with pytest.raises(Precondition, match="not counted in this run root"):
        d.remove("ctr")
    assert (Path(path) / "data").read_bytes() == b"precious"
    assert d.put_all("ctr") == 0 and not mounts.is_mount_point(path)
    d.remove("ctr")
    assert not os.path.exists(path)
    assert (diff_dir(d, "base") / "keep").read_bytes() == b"k"
    assert len(os.listdir(Path(d.home) / ".l")) == 1  # the base's


def test_remove_with_another_run_root_refuses_a_mounted_layer(tmp_path):
    from tests.conftest import run_cli

    root = tmp_path / "store"
    tar = make_tar({"f": F(b"base")})
    run_cli("import", "b", "-", root=root, run_root=tmp_path / "A", driver="overlay", input=tar, check=True)
    run_cli("create", "c", "--parent", "b", "--rw", root=root, run_root=tmp_path / "A", check=True)
    path = run_cli("mount", "c", root=root, run_root=tmp_path / "A", check=True).stdout.decode().strip()
    try:
        refused = run_cli("remove", "c", root=root, run_root=tmp_path / "B")
        assert refused.returncode == 5 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert mounts.is_mount_point(path) and run_cli("exists", "c", root=root).returncode == 0
    finally:
        run_cli("unmount", "c", root=root, run_root=tmp_path / "A", check=True)
    assert run_cli("remove", "c", root=root, run_root=tmp_path / "B").returncode == 0


def test_cleanup_with_another_run_root_leaves_a_mount_counted_in_the_first(tmp_path):
    """cleanup cannot count a mount another run root counts, and it is no stale mount: it is
    left mounted and named; remove names the run root; a run root that is gone is forgotten."""
    from tests.conftest import run_cli

    root, a, b = tmp_path / "store", tmp_path / "A", tmp_path / "B"
    run_cli("import", "b", "-", root=root, run_root=a, driver="overlay", input=make_tar({"f": F(b"f")}),
            check=True)
    run_cli("create", "c", "--parent", "b", "--rw", root=root, run_root=a, check=True)
    path = run_cli("mount", "c", root=root, run_root=a, check=True).stdout.decode().strip()
    try:
        (Path(path) / "data").write_bytes(b"precious")
        cleaned = run_cli("cleanup", root=root, run_root=b, check=True).stdout.decode()
        assert f"left the mount of c: it is counted in run root {a}\n" in cleaned, cleaned
        assert mounts.is_mount_point(path) and (Path(path) / "data").read_bytes() == b"precious"
        refused = run_cli("remove", "c", root=root, run_root=b)
        assert refused.returncode == 5 and f"counted in run root {a} ".encode() in refused.stderr
    finally:
        run_cli("unmount", "c", root=root, run_root=a, check=True)
    shutil.rmtree(a)
    cleaned = run_cli("cleanup", root=root, run_root=b, check=True).stdout.decode()
    assert f"forgot run root {a} (gone)" in cleaned, cleaned
    assert os.listdir(root / "overlay" / ".run-roots") == []
    assert run_cli("remove", "c", root=root, run_root=b).returncode == 0


def _driver_with_run_root(tmp_path: Path, name: str) -> OverlayDriver:
    """A driver on the home "home" whose run directory is laid out as a store lays it out."""
    run_dir = tmp_path / name / "0123456789abcdef" / "overlay"
    return OverlayDriver(DriverConfig(home=str(tmp_path / "home"), run_root=str(run_dir)))


def test_another_run_roots_dead_holds_and_gone_mounts_count_nothing(tmp_path):
    """What another run root counts is read as its own commands would read it: a hold of a
    command that died counts nothing, nor does a count whose mount is gone, so neither keeps
    a mount from cleanup or a layer from remove in this run root for good."""
    a, b = _driver_with_run_root(tmp_path, "A"), _driver_with_run_root(tmp_path, "B")
    try:
        a.create("base", None)
        a.create_rw("ctr", "base")
        path = b.get("ctr")
        # A hold whose command died: its file is gone, its count still in B's record.
        b.counts.set("ctr", 1, path, ["4242-dead"])
        assert "unmounted uncounted mount of ctr" in "\n".join(a.cleanup())
        assert not mounts.is_mount_point(path)
        # A count whose mount was taken away behind B's back (umount, say).
        path = b.get("ctr")
        mounts.unmount(path)
        assert b.counts.count("ctr") == 1
        a.remove("ctr")
        assert not os.path.exists(Path(a.home) / "ctr")
    finally:
        _release_all(tmp_path)


def test_a_count_changing_in_another_run_root_keeps_its_mount(tmp_path):
    """A command of the other run root between its first mount and its count holds its count
    lock and the home's lock of the layer: cleanup here waits for it, then leaves the mount."""
    import threading

    from graphdriver.drivers.refcount import RunRoots

    a, b = _driver_with_run_root(tmp_path, "A"), _driver_with_run_root(tmp_path, "B")
    try:
        a.create("base", None)
        a.create_rw("ctr", "base")
        done: list[str] = []
        cleaning = threading.Thread(target=lambda: done.extend(a.cleanup()))
        with b.counts.lock("ctr"), b.run_roots.lock("ctr"):  # B mounts and has not counted yet
            path = b._mount("ctr", "")
            RunRoots(b.home, b.run_root).note()
            cleaning.start()
            cleaning.join(0.5)
            assert cleaning.is_alive()  # waiting for B
            b.counts.set("ctr", 1, path)
        cleaning.join(30)
        text = "\n".join(done)
        assert f"left the mount of ctr: it is counted in run root {tmp_path / 'B'}" in text, text
        assert mounts.is_mount_point(path)
    finally:
        _release_all(tmp_path)


def test_two_last_unmounts_at_once_in_two_run_roots_undo_the_mount(tmp_path, monkeypatch):
    """Each run root counts the one mount of an own layer, and both give their count back at
    the same moment: one leaves the mount to the other, which undoes it.  (Each used to see the
    other's count lock held, took it for a count, and left the mount counted by no one.)"""
    import threading

    a, b = _driver_with_run_root(tmp_path, "A"), _driver_with_run_root(tmp_path, "B")
    try:
        a.create("base", None)
        a.create_rw("ctr", "base")
        path = a.get("ctr")
        assert b.get("ctr") == path
        from graphdriver.drivers.refcount import RunRoots

        # Both ask the other at once and have their answers before either acts, where they
        # can: a barrier the other never reaches (it waits for the home's lock) breaks.
        before, after = threading.Barrier(2, timeout=1.0), threading.Barrier(2, timeout=1.0)
        asked = RunRoots.counted_elsewhere

        def meet(barrier: threading.Barrier) -> None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass

        def meeting(self: RunRoots, *args: Any, **kw: Any) -> list[str]:
            meet(before)
            answer = asked(self, *args, **kw)
            meet(after)
            return answer

        monkeypatch.setattr(RunRoots, "counted_elsewhere", meeting)
        errors: list[BaseException] = []

        def put(driver: OverlayDriver) -> None:
            try:
                driver.put("ctr")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=put, args=(d,)) for d in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert (a.mount_count("ctr"), b.mount_count("ctr")) == (0, 0)
        assert not mounts.is_mount_point(path)
    finally:
        _release_all(tmp_path)


def test_each_run_roots_own_mount_of_another_stores_layer_is_undone_by_its_last_unmount(tmp_path):
    """Another store's layer is mounted in each run root's own folder: two run roots have two
    mounts of it, and the last unmount in either undoes its own, whatever the other counts
    (only a mount point both share, an own layer's, is left to the other)."""
    shared = make_driver(tmp_path, "shared")
    shared.create("base", None)
    (diff_dir(shared, "base") / "f").write_bytes(b"f")
    shared.create("mid", "base")

    def mine(name: str) -> OverlayDriver:
        run_dir = tmp_path / name / "0123456789abcdef" / "overlay"
        return OverlayDriver(DriverConfig(home=str(tmp_path / "home"), run_root=str(run_dir),
                                          readonly_homes=(shared.home,)))

    a, b = mine("A"), mine("B")
    try:
        path_a, path_b = a.get("mid"), b.get("mid")
        assert path_a != path_b and mounts.is_mount_point(path_a) and mounts.is_mount_point(path_b)
        b.put("mid")
        assert not mounts.is_mount_point(path_b) and mounts.is_mount_point(path_a)
        a.put("mid")
        assert not mounts.is_mount_point(path_a)
    finally:
        _release_all(tmp_path)


def test_the_last_unmount_leaves_a_mount_another_run_root_counts_and_asks_only_this_store(tmp_path):
    """An own layer's mount point is one for every run root: B's last put leaves the mount A
    counts, A's own last put undoes it.  A note of a run root that counts for another store
    (copied along with the home) is never asked."""
    from graphdriver.drivers.refcount import RunRoots

    a, b = _driver_with_run_root(tmp_path, "A"), _driver_with_run_root(tmp_path, "B")
    try:
        a.create("base", None)
        a.create_rw("ctr", "base")
        path = a.get("ctr")
        assert b.get("ctr") == path and b.mount_count("ctr") == 1
        b.put("ctr")
        assert mounts.is_mount_point(path) and a.mount_count("ctr") == 1
        # A run directory of another store (another key) counting a mount of its "ctr".
        foreign = tmp_path / "A" / "fedcba9876543210" / "overlay"
        other = OverlayDriver(DriverConfig(home=str(tmp_path / "home"), run_root=str(foreign)))
        other.counts.set("ctr", 1, path)
        RunRoots(other.home, other.run_root).note()
        assert b.run_roots.counted_elsewhere("ctr", lambda p: False) == [str(tmp_path / "A")]
        a.put("ctr")
        assert not mounts.is_mount_point(path)
        assert b.run_roots.counted_elsewhere("ctr", lambda p: False) == []
    finally:
        _release_all(tmp_path)


def test_cleanup_still_unmounts_a_mount_no_run_root_counts(d):
    """A mount whose process died before counting it is stale: cleanup unmounts it."""
    d.create("base", None)
    d.create_rw("ctr", "base")
    path = d._mount("ctr", "")
    assert "unmounted uncounted mount of ctr" in "\n".join(d.cleanup())
    assert not mounts.is_mount_point(path)


def test_unmount_force_of_a_layer_whose_folder_is_gone_drops_nothing_and_fails_not(d):
    d.create("a", None)
    shutil.rmtree(d.resolve("a"))
    assert d.put_all("a") == 0


def test_remove_drops_the_link(d):
    d.create("a", None)
    d.remove("a")
    assert os.listdir(Path(d.home) / ".l") == []
    assert [n for n in os.listdir(d.home) if not n.startswith(".")] == []


def test_option_errors(tmp_path):
    with pytest.raises(InvalidArgument):
        make_driver(tmp_path, options={"bogus": "1"})
    with pytest.raises(InvalidArgument):
        make_driver(tmp_path, options={"mountopt": "upperdir=/x"})


def test_storage_options(d):
    with pytest.raises(InvalidArgument):
        d.create("a", None, CreateOpts(storage_opt={"size": str(64 << 20)}))
    with pytest.raises(InvalidArgument):
        d.create_rw("a", None, CreateOpts(storage_opt={"quota": "1"}))
    with pytest.raises(InvalidArgument):
        d.create_rw("a", None, CreateOpts(storage_opt={"size": "1024"}))
    assert not d.exists("a")


def test_status_reports_probes(d):
    status = dict(d.status())
    assert status["Supports d_type"] == "true"
    assert status["Xattrs"] == "trusted.overlay.*"
    assert status["Native Overlay Diff"] == "true"
    assert status["Max Depth"] == "500"
    assert "index=off" in status["Mount Options"]


def test_mount_label_is_passed(d, monkeypatch):
    seen: list[tuple[str, ...]] = []
    real = mounts.mount_overlay

    def spy(spec: mounts.OverlayMount, target: str, **kw: Any) -> str:
        seen.append(spec.options)
        return real(mounts.OverlayMount(spec.lowers, spec.upper, spec.work,
                                        tuple(o for o in spec.options if not o.startswith("context=")),
                                        spec.readonly, spec.base), target)

    monkeypatch.setattr(mounts, "mount_overlay", spy)
    d.create("a", None)
    d.create("b", "a")
    d.get("b", "system_u:object_r:container_file_t:s0")
    d.put("b")
    assert "context=system_u:object_r:container_file_t:s0" in seen[0]


def test_legacy_mount_api_works_too(d, monkeypatch):
    monkeypatch.setattr(mounts, "_new_api", False)
    parent = None
    for i in range(10):
        d.create(f"l{i}", parent)
        (diff_dir(d, f"l{i}") / f"f{i}").write_bytes(b"x")
        parent = f"l{i}"
    path = d.get("l9")
    try:
        assert len(os.listdir(path)) == 10
        assert "lowerdir=" in mounts.mount_at(path).super_options
    finally:
        d.put("l9")


# ----- depth ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_500_layer_chain_mounts_and_501st_is_refused(tmp_path):
    s = Store(StoreOptions(root=str(tmp_path / "store"), run_root=str(tmp_path / "run"), driver="overlay"))
    try:
        parent = None
        for i in range(MAX_DEPTH):
            s.create(f"l{i}", parent)
            (diff_dir(s.driver, f"l{i}") / f"f{i}").write_bytes(b"%d" % i)  # type: ignore[arg-type]
            parent = f"l{i}"
        for _ in range(2):  # how fast is bench/overlay_bench.py's to say, not a test's
            path = s.mount("l499")
            assert len(os.listdir(path)) == MAX_DEPTH
            s.unmount("l499")
        with pytest.raises(Precondition) as e:
            s.create("l500", "l499")
        assert "500" in str(e.value)
        assert not s.exists("l500")
        r = run_cli("create", "l500", "--parent", "l499", root=tmp_path / "store", run_root=tmp_path / "run")
        assert r.returncode == 5
        assert b"at most 500 layers" in r.stderr
    finally:
        _release_all(tmp_path)


# ----- native changes against the generic walk ---------------------------------------------------------


BASE = {
    "etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n"), "etc/motd": F(b"hi\n"),
    "etc/app": D(), "etc/app/a.conf": F(b"a"), "etc/app/b.conf": F(b"b"),
    "usr": D(), "usr/bin": D(), "usr/bin/tool": F(b"\x7fELF", mode=0o755),
    "usr/bin/tool2": H("usr/bin/tool"), "usr/lib": D(), "usr/lib/x": L("../bin/tool"),
    "var": D(), "var/cache": D(), "var/cache/c1": F(b"c" * 100), "var/cache/sub": D(),
    "var/cache/sub/deep": F(b"d"), "opt": D(), "opt/o": Opaque(), "opt/o/only": F(b"o"),
    "srv": D(mode=0o700),
}


def _files(root: str) -> tuple[list[str], list[str]]:
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            if not os.path.islink(os.path.join(dirpath, n)):
                dirs.append(os.path.relpath(os.path.join(dirpath, n), root))
        for n in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(files), sorted(dirs)


def _mutate(root: str, rng: random.Random, n: int) -> None:
    """Random changes through a union mount, of every kind overlay records differently."""
    for i in range(n):
        files, dirs = _files(root)
        op = rng.randrange(12)
        try:
            if op == 0 or not files:
                d_ = rng.choice(["", *dirs])
                Path(root, d_, f"new{i}").write_bytes(b"n" * rng.randrange(50))
            elif op == 1:
                with open(os.path.join(root, rng.choice(files)), "ab") as f:
                    f.write(b"more")
            elif op == 2:
                os.unlink(os.path.join(root, rng.choice(files)))
            elif op == 3 and dirs:
                shutil.rmtree(os.path.join(root, rng.choice(dirs)))
            elif op == 4 and dirs:
                d_ = os.path.join(root, rng.choice(dirs))
                shutil.rmtree(d_)
                os.makedirs(os.path.join(d_, "again"))  # an opaque directory
            elif op == 5 and dirs:
                os.chmod(os.path.join(root, rng.choice(dirs)), 0o711)
            elif op == 6:
                f_ = os.path.join(root, rng.choice(files))
                os.unlink(f_)
                os.mkdir(f_)  # a file became a directory
            elif op == 7 and dirs:
                d_ = os.path.join(root, rng.choice(dirs))
                shutil.rmtree(d_)
                Path(d_).write_bytes(b"was a dir")
            elif op == 8:
                os.symlink("somewhere", os.path.join(root, f"sym{i}"))
            elif op == 9:
                f_ = os.path.join(root, rng.choice(files))
                if not os.path.islink(f_):  # a relative symlink moved elsewhere would point out
                    os.link(f_, os.path.join(root, f"hard{i}"))
            elif op == 10:
                # Opened for writing, left as it was: copied up, but not changed.
                with open(os.path.join(root, rng.choice(files)), "r+b"):
                    pass
            else:
                os.chown(os.path.join(root, rng.choice(files)), 1000, 1000, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise


def _unlinked(tree: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {path: {k: v for k, v in item.items() if k != "link_group"} for path, item in tree.items()}


@pytest.mark.parametrize("seed", range(16))
def test_native_changes_equal_the_generic_walk(d, seed):
    rng = random.Random(seed)
    d.create("base", None)
    apply(d, "base", BASE)
    parent = "base"
    for layer in ("mid", "top"):
        d.create_rw(layer, parent)
        with d.mounted(layer) as root:
            _mutate(root, rng, 12)
        assert native_changes(d, layer, parent) == walk_changes(d, layer, parent), seed
        assert content.size(d, layer, parent) == content.size(d, layer, parent, native=False)
        # The native tarball rebuilds the same view on the same parent.
        out = io.BytesIO()
        content.export(d, layer, parent, out)
        d.create(f"{layer}-copy", parent)
        content.apply(d, f"{layer}-copy", io.BytesIO(out.getvalue()))
        with d.mounted(layer) as a, d.mounted(f"{layer}-copy") as b:
            # A new hardlink to an untouched lower file shares the copied-up inode
            # in the layer, but only the new name is a change: the copy gets a file.
            # A directory whose only change is its mtime is no change (the walk's rule).
            view_a, view_b = (_unlinked(snapshot(p, skip=["."], dir_times=False)) for p in (a, b))
            assert view_a == view_b
        assert native_changes(d, f"{layer}-copy", parent) == native_changes(d, layer, parent)
        parent = layer


def test_two_lower_files_joined_into_one_are_changed_and_go_as_a_link(d):
    """``rm q; ln p q`` in a container: the kernel copies ``p`` up and links ``q`` to it, so the
    upper directory holds one file of two names, each looking as it did below.  Both names are
    changed, and the tarball carries ``q`` as a link to ``p`` (as containers-storage does)."""
    d.create("base", None)
    apply(d, "base", {"p": F(b"same\n"), "q": F(b"same\n")})
    d.create_rw("ctr", "base")
    with d.mounted("ctr") as root:
        os.unlink(os.path.join(root, "q"))
        os.link(os.path.join(root, "p"), os.path.join(root, "q"))
    p, q = (os.lstat(diff_dir(d, "ctr") / name) for name in ("p", "q"))
    assert (p.st_ino, p.st_nlink) == (q.st_ino, 2)
    assert native_changes(d, "ctr", "base") == walk_changes(d, "ctr", "base") == [(C, "/p"), (C, "/q")]
    out = io.BytesIO()
    content.export(d, "ctr", "base", out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert [(m.name, m.linkname if m.islnk() else None) for m in tf.getmembers()] == [
            ("p", None), ("q", "p")]


def test_a_new_name_in_a_new_folder_of_an_untouched_file_changes_the_file(d):
    """``mkdir n; ln p n/q``: ``n/q`` is added inside an added folder (whose entries the scan
    takes by their type alone), and ``p``, copied up untouched, shares its inode: ``p`` is
    changed too, counted once, and the tarball links ``n/q`` to it."""
    d.create("base", None)
    apply(d, "base", {"p": F(b"x" * 10), "o": F(b"o")})
    d.create_rw("ctr", "base")
    with d.mounted("ctr") as root:
        os.mkdir(os.path.join(root, "n"))
        os.link(os.path.join(root, "p"), os.path.join(root, "n", "q"))
    expected = [(A, "/n"), (A, "/n/q"), (C, "/p")]
    assert native_changes(d, "ctr", "base") == walk_changes(d, "ctr", "base") == expected
    assert content.size(d, "ctr", "base") == content.size(d, "ctr", "base", native=False) == 10
    out = io.BytesIO()
    content.export(d, "ctr", "base", out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert [(m.name, m.linkname if m.islnk() else None) for m in tf.getmembers()] == [
            ("n", None), ("n/q", None), ("p", "n/q")]


def test_sizes_and_changes_of_every_kind_agree_with_the_generic_walk(d):
    """What the scan takes from directory entry types alone, or counts from its own look at
    each file, against the walk: metadata-only changes, rewrites of the same size and time, files
    of several names (each inode once), whiteouts, opaque folders, a layer with no parent."""
    d.create("base", None)
    apply(d, "base", {**BASE, "k": F(b"k" * 40), "m": F(b"m" * 30), "same": F(b"s" * 9, mtime=1_000)})
    d.create_rw("ctr", "base")
    with d.mounted("ctr") as root:
        r = Path(root)
        (r / "etc/hosts").write_bytes(b"h" * 200)
        os.link(r / "etc/hosts", r / "etc/hosts2")  # a new name of a changed file
        os.chmod(r / "k", 0o600)  # metadata only
        (r / "same").write_bytes(b"S" * 9)
        os.utime(r / "same", (1_000, 1_000))  # other bytes, the same size and time
        with open(r / "m", "r+b"):
            pass  # copied up, left as it was
        (r / "new").mkdir()
        (r / "new/f").write_bytes(b"n" * 70)
        os.link(r / "new/f", r / "new/g")
        os.symlink("f", r / "new/s")
        os.mkfifo(r / "new/fifo")
        os.unlink(r / "etc/motd")  # a whiteout
        shutil.rmtree(r / "var/cache")
        (r / "var/cache").mkdir()  # opaque
        (r / "var/cache/again").write_bytes(b"a" * 5)
    assert native_changes(d, "ctr", "base") == walk_changes(d, "ctr", "base")
    assert (C, "/k") in native_changes(d, "ctr", "base") and (C, "/same") in native_changes(d, "ctr", "base")
    assert (C, "/m") not in native_changes(d, "ctr", "base")
    # hosts (200, two names), k (40), same (9), new/f (70, two names), var/cache/again (5)
    assert content.size(d, "ctr", "base") == content.size(d, "ctr", "base", native=False) == 324
    assert native_changes(d, "base", None) == walk_changes(d, "base", None)
    assert content.size(d, "base", None) == content.size(d, "base", None, native=False)
    out = io.BytesIO()
    content.export(d, "ctr", "base", out)
    d.create("copy", "base")
    content.apply(d, "copy", io.BytesIO(out.getvalue()))
    assert native_changes(d, "copy", "base") == native_changes(d, "ctr", "base")


def test_opaque_directories_in_tarballs(d):
    d.create("base", None)
    apply(d, "base", BASE)
    d.create_rw("ctr", "base")
    with d.mounted("ctr") as root:
        shutil.rmtree(os.path.join(root, "var/cache"))
        os.makedirs(os.path.join(root, "var/cache/fresh"))
        shutil.rmtree(os.path.join(root, "etc/app"))
        os.mkdir(os.path.join(root, "newdir"))
    assert native_changes(d, "ctr", "base") == [
        (C, "/etc"), (X, "/etc/app"), (A, "/newdir"), (C, "/var"), (C, "/var/cache"),
        (X, "/var/cache/c1"), (A, "/var/cache/fresh"), (X, "/var/cache/sub"),
    ]
    assert native_changes(d, "ctr", "base") == walk_changes(d, "ctr", "base")
    out = io.BytesIO()
    content.export(d, "ctr", "base", out)
    names = sorted(tar_names(out.getvalue()))
    assert names == ["etc", "etc/.wh.app", "newdir", "var", "var/cache", "var/cache/.wh..wh..opq",
                     "var/cache/fresh"]


def test_changes_against_another_parent_use_the_walk(d, monkeypatch):
    d.create("base", None)
    apply(d, "base", {"a": F(b"a")})
    d.create("mid", "base")
    apply(d, "mid", {"b": F(b"b")})
    d.create("top", "mid")
    apply(d, "top", {"c": F(b"c")})
    assert d._native("top", "base") is None and d._native("top", None) is None
    assert [(c.kind, c.path) for c in content.changes(d, "top", "base")] == [(A, "/b"), (A, "/c")]
    assert [(c.kind, c.path) for c in content.changes(d, "top", None)] == [(A, "/a"), (A, "/b"), (A, "/c")]


def test_redirect_dir_on_disables_native_diff(tmp_path):
    drv = make_driver(tmp_path, options={"mountopt": "redirect_dir=on"})
    try:
        assert not drv.native_diff
        assert "redirect_dir=on" in dict(drv.status())["Native Overlay Diff"]
        drv.create("base", None)
        apply(drv, "base", {"a": D(), "a/f": F(b"f")})
        drv.create_rw("ctr", "base")
        with drv.mounted("ctr") as root:
            os.rename(os.path.join(root, "a"), os.path.join(root, "b"))  # a redirect
        assert drv._native("ctr", "base") is None
        found = [(c.kind, c.path) for c in content.changes(drv, "ctr", "base")]
        assert found == [(X, "/a"), (A, "/b"), (A, "/b/f")]
    finally:
        _release_all(tmp_path)


def _looks(fn: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> int:
    """How many directory listings and lstat calls *fn* makes (what its cost grows with)."""
    count = 0
    real_scandir, real_lstat = os.scandir, os.lstat

    def scandir(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return real_scandir(*args, **kwargs)

    def lstat(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return real_lstat(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "scandir", scandir)
        m.setattr(os, "lstat", lstat)
        fn()
    return count


def _ten_changes(root: str) -> None:
    for i in range(4):
        Path(root, "tree", f"d{i}", f"f{i}").write_bytes(b"changed")
    for i in range(4, 7):
        Path(root, "tree", f"d{i}", f"added{i}").write_bytes(b"new")
    for i in range(7, 10):
        os.unlink(os.path.join(root, "tree", f"d{i}", f"f{i}"))


@pytest.mark.slow
def test_changes_cost_grows_with_the_layer_not_the_image(d, monkeypatch):
    # Counted in file-system calls, not timed: the same ten changes over an image of
    # 10 files and of 20,000 cost the native differ the same; the generic walk
    # looks at every file.
    looks, walks = {}, {}
    for n_files in (10, 20_000):
        base, ctr = f"base{n_files}", f"ctr{n_files}"
        d.create(base, None)
        root = diff_dir(d, base) / "tree"
        for i in range(n_files):
            sub = root / f"d{i % 100}"
            if i < 100:
                sub.mkdir(parents=True)
            (sub / f"f{i}").write_bytes(b"x")
        d.create_rw(ctr, base)
        with d.mounted(ctr) as merged:
            _ten_changes(merged)
        listed = content.changes(d, ctr, base)
        assert len([c for c in listed if c.path.count("/") == 3]) == 10
        looks[n_files] = _looks(lambda: content.changes(d, ctr, base), monkeypatch)  # noqa: B023
        walks[n_files] = _looks(lambda: content.changes(d, ctr, base, native=False), monkeypatch)  # noqa: B023
        assert [str(c) for c in listed] == [str(c) for c in content.changes(d, ctr, base, native=False)]
    print(f"native: {looks[10]} and {looks[20_000]} calls; generic walk: {walks[10]} and {walks[20_000]}")
    assert walks[20_000] > walks[10] + 100  # the walk lists every directory of the image
    assert 0 < looks[20_000] == looks[10]


# ----- counted mounts across processes and recovery ---------------------------------------------------


def test_counts_are_shared_between_driver_instances_and_processes(tmp_path):
    d1, d2 = make_driver(tmp_path), make_driver(tmp_path)
    try:
        d1.create("base", None)
        d1.create_rw("ctr", "base")
        p1 = d1.get("ctr")
        assert d2.get("ctr") == p1 and d2.mount_count("ctr") == 2
        code = (
            "import sys; from graphdriver.drivers.overlay import OverlayDriver; "
            "from graphdriver.drivers.base import DriverConfig; "
            f"d = OverlayDriver(DriverConfig(home={d1.home!r}, run_root={d1.run_root!r})); "
            "print(d.get('ctr')); print(d.mount_count('ctr')); d.put('ctr'); d.put('ctr')"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
        assert out.stdout.decode().split() == [p1, "3"]
        assert d1.mount_count("ctr") == 1 and mounts.is_mount_point(p1)
        d1.put("ctr")
        assert not mounts.is_mount_point(p1)
        with pytest.raises(Precondition):
            d2.put("ctr")
    finally:
        _release_all(tmp_path)


def test_lost_mount_is_mounted_afresh_with_a_count_of_one(d):
    d.create("base", None)
    d.create_rw("ctr", "base")
    path = d.get("ctr")
    d.get("ctr")
    subprocess.run(["umount", path], check=True)  # behind the store's back
    assert d.get("ctr") == path
    assert mounts.is_overlay_mount(path) and d.mount_count("ctr") == 1
    d.put("ctr")  # one unmount really unmounts
    assert not mounts.is_mount_point(path) and d.mount_count("ctr") == 0


def test_cleanup_drops_the_count_of_a_vanished_mount_and_unmounts_uncounted_ones(d):
    d.create("base", None)
    d.create_rw("ctr", "base")
    d.create_rw("leak", "base")
    path = d.get("ctr")
    subprocess.run(["umount", "-l", path], check=True)  # an administrator, behind our back
    leaked = d._mount("leak", "")  # a mount no count accounts for
    done = d.cleanup()
    assert f"dropped the mount count of ctr (1): its mount at {path} had gone" in done
    assert "unmounted uncounted mount of leak" in done
    assert not mounts.is_mount_point(path) and d.mount_count("ctr") == 0  # never remounted
    assert not mounts.is_mount_point(leaked)
    assert d.get("ctr") == path and d.mount_count("ctr") == 1
    d.put("ctr")
    assert not mounts.is_mount_point(path)
    assert d.cleanup() == []


def test_a_count_whose_mount_was_unmounted_by_hand_counts_nothing(store, tmp_path):
    """mounted, layer, remove and unmount check a count against the kernel: a mount point that
    is not mounted any more counts 0 (and the count is dropped); the next mount starts at one."""
    store.create("base")
    store.create("ctr", "base", writable=True)
    root, run_root = Path(store.root), tmp_path / "run"

    def gd(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, root=root, run_root=run_root)

    path = gd("mount", "ctr").stdout.decode().strip()
    gd("mount", "ctr")
    assert gd("mounted", "ctr").stdout == b"2\n"
    subprocess.run(["umount", path], check=True)  # behind the store's back
    assert gd("mounted", "ctr").stdout == b"0\n"
    assert "mount_point" not in gd("layer", "ctr").stdout.decode()
    assert store.driver.counts.count("ctr") == 0  # dropped, not only shown as 0
    path = gd("mount", "ctr").stdout.decode().strip()
    subprocess.run(["umount", path], check=True)
    r = gd("unmount", "ctr")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")  # as containers-storage: done already
    assert gd("mounted", "ctr").stdout == b"0\n"
    path = gd("mount", "ctr").stdout.decode().strip()
    subprocess.run(["umount", path], check=True)
    r = gd("remove", "ctr")
    assert r.returncode == 0, r.stderr
    assert gd("exists", "ctr").returncode == 3


def test_unmount_of_a_mount_that_vanished_succeeds_and_drops_the_count(store, tmp_path):
    """unmount of a layer whose mount was unmounted behind the store's back (umount -l by an
    administrator) succeeds quietly and drops the stale count, as containers-storage's Unmount
    does; a layer never mounted, or unmounted already, is still not mounted (5)."""
    store.create("base")
    store.create("ctr", "base", writable=True)
    root, run_root = Path(store.root), tmp_path / "run"

    def gd(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, root=root, run_root=run_root)

    r = gd("unmount", "ctr")
    assert r.returncode == 5 and r.stderr == b"graphdriver: layer ctr: is not mounted\n"
    path = gd("mount", "ctr").stdout.decode().strip()
    assert gd("mount", "ctr").returncode == 0
    subprocess.run(["umount", "-l", path], check=True)
    r = gd("unmount", "ctr")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r.stderr
    assert store.driver.counts.count("ctr") == 0
    r = gd("unmount", "ctr")
    assert r.returncode == 5 and b"is not mounted" in r.stderr
    path = gd("mount", "ctr").stdout.decode().strip()
    assert gd("unmount", "ctr").returncode == 0 and not mounts.is_mount_point(path)


def test_mounting_a_child_whose_parent_files_were_deleted_is_damage(store, tmp_path):
    """A lower layer's folder deleted: mount, changes, diff and diffsize of the layers above say
    which layer is damaged (6), as they do for the layer itself."""
    from graphdriver.fs.tree import remove_tree

    store.import_layer("base", None, io.BytesIO(make_tar({"a": F(b"a")})))
    store.import_layer("k", "base", io.BytesIO(make_tar({"b": F(b"b")})))
    store.create("top", "k", writable=True)
    remove_tree(store.driver.resolve("base"))
    root, run_root = Path(store.root), tmp_path / "run"
    for args in (["mount", "k"], ["mount", "top"], ["changes", "top"], ["diffsize", "top"],
                 ["diff", "top"]):
        r = run_cli(*args, root=root, run_root=run_root)
        err = r.stderr.decode()
        assert r.returncode == 6, (args, err)
        assert err.startswith("graphdriver: layer base: its files are missing") and err.count("\n") == 1, err
    assert run_cli("mounted", "top", root=root, run_root=run_root).stdout == b"0\n"


def test_put_detaches_a_busy_mount(d):
    d.create("base", None)
    (diff_dir(d, "base") / "f").write_bytes(b"still here")
    d.create_rw("ctr", "base")
    path = d.get("ctr")
    fd = os.open(os.path.join(path, "f"), os.O_RDONLY)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], cwd=path,
                            stdin=subprocess.PIPE)
    try:
        time.sleep(0.1)
        d.put("ctr")
        assert not mounts.is_mount_point(path)
        assert os.read(fd, 100) == b"still here"
        d.remove("ctr")
    finally:
        os.close(fd)
        proc.communicate(b"")


def test_lost_links_are_recreated(d):
    d.create("base", None)
    (diff_dir(d, "base") / "f").write_bytes(b"f")
    d.create_rw("ctr", "base")
    shutil.rmtree(os.path.join(d.home, ".l"))
    with d.mounted("ctr") as root:  # the mount fails, repairs, retries
        assert os.listdir(root) == ["f"]
    shutil.rmtree(os.path.join(d.home, ".l"))
    again = OverlayDriver(d.config)  # and a new driver finds them gone at once
    assert len(os.listdir(os.path.join(again.home, ".l"))) == 2


def test_apply_to_a_mounted_writable_layer_goes_through_the_union(d):
    d.create("base", None)
    apply(d, "base", {"a": D(), "a/old": F(b"o")})
    d.create_rw("ctr", "base")
    path = d.get("ctr")
    try:
        content.apply(d, "ctr", io.BytesIO(make_tar({"a/old": W(), "a/new": F(b"n")})))
        assert os.listdir(os.path.join(path, "a")) == ["new"]
    finally:
        d.put("ctr")
    assert native_changes(d, "ctr", "base") == [(C, "/a"), (A, "/a/new"), (X, "/a/old")]


# ----- probes ------------------------------------------------------------------------------------------


def test_overlay_backing_filesystem_is_refused(tmp_path):
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    spec = mounts.OverlayMount(lowers=(str(tmp_path / "lower"),), upper=str(tmp_path / "upper"),
                               work=str(tmp_path / "work"))
    mounts.mount_overlay(spec, str(tmp_path / "merged"))
    try:
        with pytest.raises(Unsupported) as e:
            OverlayDriver.probe(str(tmp_path / "merged" / "home"))
        assert "overlayfs" in str(e.value) and "--driver vfs" in str(e.value)
    finally:
        mounts.unmount(str(tmp_path / "merged"))


def test_missing_xattrs_are_refused(tmp_path, monkeypatch):
    def no_xattrs(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    with pytest.raises(Unsupported) as e:
        OverlayDriver.probe(str(tmp_path))
    assert "trusted.* extended attributes" in str(e.value)


def test_missing_d_type_is_refused(tmp_path, monkeypatch):
    real = os.scandir

    class NoType:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.entry = entry

        def is_file(self, follow_symlinks: bool = True) -> bool:
            return os.path.isfile(self.entry.path)  # DT_UNKNOWN: a stat, which fails now

    class Scan:
        def __init__(self, path: str) -> None:
            self.it = real(path)

        def __enter__(self) -> Iterator[NoType]:
            return (NoType(e) for e in self.it)

        def __exit__(self, *exc: object) -> None:
            self.it.close()

    monkeypatch.setattr(os, "scandir", Scan)
    with pytest.raises(Unsupported) as e:
        OverlayDriver.probe(str(tmp_path))
    assert "d_type" in str(e.value) and "ftype=1" in str(e.value)


def test_unprivileged_without_fuse_overlayfs_points_to_vfs(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(overlay, "DEFAULT_MOUNT_PROGRAM", "/nonexistent/fuse-overlayfs")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(Unsupported) as e:
        OverlayDriver.probe(str(tmp_path))
    assert "fuse-overlayfs" in str(e.value) and "--driver vfs" in str(e.value)


# ----- id maps ----------------------------------------------------------------------------------------


def test_id_maps_shift_on_apply_and_back_on_native_export(tmp_path):
    maps = IDMappings(IDMap.parse("0:100000:65536"), IDMap.parse("0:200000:65536"))
    drv = make_driver(tmp_path, idmaps=maps)
    try:
        drv.create("base", None)
        spec = {"etc": D(), "etc/f": F(b"f", uid=0, gid=0), "home": D(uid=1000, gid=1000),
                "home/g": F(b"g", uid=1000, gid=1000)}
        data = make_tar(spec)
        content.apply(drv, "base", io.BytesIO(data))
        st = os.lstat(diff_dir(drv, "base") / "home" / "g")
        assert (st.st_uid, st.st_gid) == (101000, 201000)
        assert os.stat(diff_dir(drv, "base")).st_uid == 100000
        drv.create_rw("ctr", "base")
        assert os.stat(diff_dir(drv, "ctr")).st_uid == 100000
        with drv.mounted("ctr") as root:
            Path(root, "home", "g").write_bytes(b"changed")
        out = io.BytesIO()
        content.export(drv, "ctr", "base", out)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
            owners = {m.name: (m.uid, m.gid) for m in tf.getmembers()}
        assert owners == {"home": (1000, 1000), "home/g": (1000, 1000)}
        out = io.BytesIO()
        content.export(drv, "base", None, out)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
            assert {m.name: (m.uid, m.gid) for m in tf.getmembers()}["home/g"] == (1000, 1000)
    finally:
        _release_all(tmp_path)


# ----- the store on overlay ----------------------------------------------------------------------------


def test_store_cleanup_keeps_the_link_directory(store):
    store.create("base")
    store.create("ctr", "base", writable=True)
    assert store.cleanup() == []
    assert os.path.isdir(os.path.join(store.driver.home, ".l"))


def test_cli_status_and_exit_codes(tmp_path):
    root = tmp_path / "store"
    r = run_cli("--driver", "overlay", "status", root=root)
    assert r.returncode == 0, r.stderr
    assert b"Native Overlay Diff: true" in r.stdout
    assert run_cli("create", "img", root=root).returncode == 0
    r = run_cli("create", "bad", "--parent", "img", "--size", "64M", root=root)
    assert r.returncode == 2 and b"--rw" in r.stderr


# ----- rootless -----------------------------------------------------------------------------------------


NOBODY = 65534


def _as_nobody(*cmd: str, cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
                          cwd=cwd, env=env, capture_output=True, check=False)


def _rootless_blocker(tmp: Path, env: dict[str, str]) -> str:
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    if not os.access(overlay.DEFAULT_MOUNT_PROGRAM, os.X_OK):
        return "fuse-overlayfs is not installed"
    try:
        mode = os.stat("/dev/fuse").st_mode
    except OSError:
        return "/dev/fuse does not exist"
    if mode & 0o006 != 0o006:
        return f"/dev/fuse is not usable by unprivileged users (mode {stat.S_IMODE(mode):o})"
    probe = _as_nobody(sys.executable, "-c", "import pytest, graphdriver", cwd=str(tmp), env=env)
    if probe.returncode != 0:
        return f"{sys.executable} cannot run pytest as an unprivileged user ({probe.stderr[-200:]!r})"
    return ""


@pytest.mark.slow
def test_conformance_suite_rootless_with_fuse_overlayfs(request):
    # pytest's own temporary folders are private to root: nobody needs a path it can walk.
    work = Path(tempfile.mkdtemp(prefix="graphdriver-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    os.chmod(work, 0o755)
    os.chown(work, NOBODY, NOBODY)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PYTHONDONTWRITEBYTECODE": "1",
    }
    why = _rootless_blocker(work, env)
    if why:
        pytest.skip(f"rootless overlay cannot be tested here: {why}")
    r = _as_nobody(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "overlay", "-rs",
                   "--basetemp", str(work / "pytest"), str(ROOT / "tests" / "conformance"),
                   cwd=str(ROOT), env=env)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-3000:] + r.stderr.decode(errors="replace")[-2000:]
    assert " passed" in out
    assert "cannot run here" not in out  # the overlay driver itself was not skipped


def _fuse_daemons(target: str) -> list[int]:
    """The pids of the FUSE programs serving a mount at *target*."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if name.isdigit() and os.fsencode(target) in argv and b"fuse-overlayfs" in argv[0]:
            pids.append(int(name))
    return pids


@pytest.mark.skipif(not os.access(overlay.DEFAULT_MOUNT_PROGRAM, os.X_OK), reason="no fuse-overlayfs")
def test_a_mount_whose_fuse_program_died_is_mounted_again(tmp_path):
    """fuse-overlayfs killed (kill -9, the OOM killer) leaves a dead mount ("Transport
    endpoint is not connected"): its count dropped, but the next mount handed that dead
    mount out again as a mount a process had left uncounted."""
    drv = make_driver(tmp_path, options={"mount_program": overlay.DEFAULT_MOUNT_PROGRAM})
    try:
        drv.create("base", None)
        apply(drv, "base", {"f": F(b"f")})
        drv.create_rw("ctr", "base")
        root = drv.get("ctr")
        for pid in _fuse_daemons(root):
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.stat(root)
            except OSError:
                break
            time.sleep(0.05)
        assert drv.mount_count("ctr") == 0
        root = drv.get("ctr")
        assert Path(root, "f").read_bytes() == b"f"
        drv.put("ctr")
        assert not mounts.is_mount_point(root)
    finally:
        _release_all(tmp_path)


# ----- the mount API option ---------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "used"), [("mount", "_mount_legacy"), ("fsopen", "_mount_new_api")])
def test_mount_api_option_chooses_the_kernel_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str, used: str
) -> None:
    if api == "fsopen" and not _kernel_has_lowerdir_plus(tmp_path / "probe"):
        pytest.skip("this kernel has no fsopen overlay with lowerdir+ (Linux 6.8 and later)")
    calls: list[str] = []
    for name in ("_mount_legacy", "_mount_new_api"):
        real = getattr(mounts, name)
        monkeypatch.setattr(
            mounts, name, lambda spec, target, _n=name, _r=real: (calls.append(_n), _r(spec, target))[1]
        )
    drv = make_driver(tmp_path, options={"mount_api": api})
    try:
        drv.create("base", None)
        content.apply(drv, "base", io.BytesIO(make_tar({"a": F(b"a")})))
        drv.create_rw("ctr", "base")
        assert Path(drv.get("ctr"), "a").read_bytes() == b"a"
        drv.put("ctr")
    finally:
        _release_all(tmp_path)
    assert calls == [used]
    assert ("Mount API", {"mount": "mount(2) (mount_api=mount)",
                          "fsopen": "fsopen/fsconfig lowerdir+ (mount_api=fsopen)"}[api]) in drv.status()


@pytest.mark.parametrize("api", ["fsopen", "mount"])
def test_a_container_layer_mounts_under_a_store_path_with_a_backslash_comma_or_colon(
    tmp_path: Path, api: str
) -> None:
    """The kernel reads a backslash in ``upperdir`` and ``workdir`` as escaping the next
    character, with either mount interface (``lowerdir+`` takes its path as it is): a store
    whose path holds one mounts its container layers as any other."""
    if api == "fsopen" and not _kernel_has_lowerdir_plus(tmp_path / "probe"):
        pytest.skip("this kernel has no fsopen overlay with lowerdir+ (Linux 6.8 and later)")
    drv = make_driver(tmp_path, home="st\\o,r:e\\", options={"mount_api": api})
    try:
        drv.create("base", None)
        content.apply(drv, "base", io.BytesIO(make_tar({"a": F(b"a")})))
        drv.create_rw("ctr", "base")
        root = drv.get("ctr")
        assert Path(root, "a").read_bytes() == b"a"
        Path(root, "b").write_bytes(b"b")
        drv.put("ctr")
        assert (diff_dir(drv, "ctr") / "b").read_bytes() == b"b"
    finally:
        _release_all(tmp_path)


def test_status_says_which_mount_api_the_kernel_has(tmp_path, monkeypatch):
    """With mount_api=auto, status named both interfaces ("... if present, else mount(2)")
    until a mount of the same process had tried one: it asks the kernel instead."""
    has = _kernel_has_lowerdir_plus(tmp_path / "probe")
    _release_all(tmp_path)
    monkeypatch.setattr(mounts, "_new_api", None)  # a command that has mounted nothing yet
    drv = make_driver(tmp_path)
    assert ("Mount API", "fsopen/fsconfig lowerdir+" if has else "mount(2)") in drv.status()
    assert mounts.new_api_state() is None  # asking chose nothing for the mounts to come
    assert mounts.mounts_below(str(tmp_path)) == []


def _kernel_has_lowerdir_plus(work: Path) -> bool:
    lowers, target = (work / "l1", work / "l2"), work / "mnt"
    for p in (*lowers, target):
        p.mkdir(parents=True)
    try:
        spec = mounts.OverlayMount(tuple(map(str, lowers)), readonly=True)
        used = mounts.mount_overlay(spec, str(target))
    except mounts.MountError:
        return False
    mounts.unmount(str(target))
    return used == "fsopen"


def test_unknown_mount_api_is_refused_in_one_line(tmp_path: Path) -> None:
    r = run_cli("--opt", "mount_api=magic", "layers", root=tmp_path / "s", driver="overlay")
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().count("\n") == 1 and "expected auto, fsopen or mount" in r.stderr.decode()


_NO_FLAGS = os.ST_NODEV | os.ST_NOSUID | os.ST_NOEXEC | os.ST_NOATIME


@pytest.mark.parametrize("api", ["auto", "mount"])
@pytest.mark.parametrize(("mountopt", "flags"), [
    ("nodev,nosuid,noexec,noatime", _NO_FLAGS),
    ("suid,dev,exec,atime,diratime", 0),  # the defaults: refused as parameters once
])
def test_mount_flags_in_mountopt_are_the_mounts(tmp_path, api, mountopt, flags):
    """nodev, nosuid, noexec and the atime options are flags of the mount (as mount(8) and
    containers-storage's overlay.mountopt take them), which the overlay filesystem refuses
    as parameters; so are their default forms, which set nothing."""
    drv = make_driver(tmp_path, options={"mountopt": mountopt, "mount_api": api})
    try:
        drv.create("base", None)
        apply(drv, "base", {"f": F(b"f")})
        drv.create_rw("ctr", "base")
        with drv.mounted("ctr") as root:
            assert os.statvfs(root).f_flag & _NO_FLAGS == flags
            assert open(os.path.join(root, "f"), "rb").read() == b"f"
    finally:
        _release_all(tmp_path)


@pytest.mark.parametrize("api", ["auto", "mount"])
def test_options_the_kernel_refuses_without_a_word_are_named(tmp_path, api):
    """metacopy=on conflicts with the redirect_dir=off every mount gets: the kernel refuses the
    mount with EINVAL and says why in its own log only, so the error names the options."""
    drv = make_driver(tmp_path, options={"mountopt": "metacopy=on", "mount_api": api})
    try:
        drv.create("base", None)
        drv.create_rw("ctr", "base")
        with pytest.raises(GraphDriverError) as info:
            drv.get("ctr")
        assert info.value.exit_code == 1
        assert "Invalid argument (overlay options " in str(info.value)
        assert "redirect_dir=off,metacopy=on" in str(info.value) and "dmesg" in str(info.value)
    finally:
        _release_all(tmp_path)


def test_mount_flags_in_mountopt_apply_to_a_layer_without_parent(tmp_path):
    """A layer with nothing below it is bind-mounted, not stacked: its view takes the mount
    flags of mountopt too, or a setuid file or device node of a base layer stays live."""
    drv = make_driver(tmp_path, options={"mountopt": "nodev,nosuid,noexec,noatime"})
    try:
        drv.create("base", None)
        apply(drv, "base", {"f": F(b"f")})
        drv.create_rw("scratch", None)
        for layer_id in ("base", "scratch"):
            with drv.mounted(layer_id) as root:
                options = os.statvfs(root).f_flag
                assert options & os.ST_NODEV and options & os.ST_NOSUID, layer_id
                assert options & os.ST_NOEXEC and options & os.ST_NOATIME, layer_id
    finally:
        _release_all(tmp_path)

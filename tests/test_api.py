"""The public API at the top of the package, as its docstring shows it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphdriver
from graphdriver.testing.treeutil import F, make_tar
from tests.conftest import ROOT


def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = graphdriver.open_store(str(tmp_path / "store"), run_root=str(tmp_path / "run"), driver="vfs")
    with open(ROOT / "samples" / "base.tar.gz", "rb") as f:
        record = store.import_layer("base", None, f)
    assert record.diff_digest and record.diff_digest.startswith("sha256:")
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    with open(root + "/hello", "w") as f:
        f.write("hi")
    store.unmount("ctr")
    assert [str(c) for c in store.changes("ctr")] == ["A /hello"]
    out = io.BytesIO()
    store.diff("ctr", out)
    assert b"hello" in out.getvalue()
    store.remove("ctr")
    assert [r.id for r in store.layers()] == ["base"]


def test_record_gives_the_stored_fields_without_asking_the_driver(tmp_path: Path) -> None:
    store = graphdriver.open_store(str(tmp_path / "s"), run_root=str(tmp_path / "r"), driver="vfs")
    with open(ROOT / "samples" / "base.tar.gz", "rb") as f:
        imported = store.import_layer("base", None, f)
    record, layer = store.record("base"), store.layer("base")
    assert record.diff_digest == layer.diff_digest == imported.diff_digest
    assert record.uncompressed_size == layer.uncompressed_size and record.uncompressed_size
    assert record.metadata == {} and layer.metadata  # the driver's facts: layer() only
    assert (record.mount_count, layer.mount_count, layer.mount_point) == (None, 0, None)
    path = store.mount("base")
    try:
        assert (store.layer("base").mount_count, store.layer("base").mount_point) == (1, path)
    finally:
        store.unmount("base")
    with pytest.raises(graphdriver.NotFound):
        store.record("missing")


def test_options_as_mapping_or_strings_and_errors_by_exit_code(tmp_path: Path) -> None:
    store = graphdriver.open_store(str(tmp_path / "s"), run_root=str(tmp_path / "r"), driver="vfs",
                                   options={"copy": "copy"})
    assert store.driver.copy_mode == "copy"
    with pytest.raises(graphdriver.InvalidArgument) as e:
        graphdriver.open_store(str(tmp_path / "s"), run_root=str(tmp_path / "r"), options=["copy"])
    assert e.value.exit_code == 2
    with pytest.raises(graphdriver.NotFound) as nf:
        store.layer("nothing")
    assert nf.value.exit_code == 3 and isinstance(nf.value, graphdriver.GraphDriverError)
    with pytest.raises(AttributeError):
        graphdriver.no_such_name  # noqa: B018


def test_a_uid_map_alone_maps_groups_alike_as_on_the_command_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("id maps need root (files are stored owned by the mapped ids)")
    store = graphdriver.open_store(str(tmp_path / "s"), run_root=str(tmp_path / "r"), driver="vfs",
                                   uidmap="0:100000:65536")
    store.import_layer("a", None, io.BytesIO(make_tar({"f": F(b"x")})))
    st = os.lstat(os.path.join(store.driver.apply_target("a").path, "f"))
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    # The command line's --uidmap alone opens the same store.
    from tests.conftest import run_cli

    r = run_cli("--uidmap", "0:100000:65536", "create", "b", root=tmp_path / "s", run_root=tmp_path / "r")
    assert r.returncode == 0, r.stderr
    # A store an earlier version made with a uid map alone kept groups unmapped: the same
    # call opens it, and it stays as it was made.
    settings = tmp_path / "s" / "store.json"
    settings.write_text(settings.read_text().replace('"gidmap":"0:100000:65536"', '"gidmap":""'))
    old = graphdriver.open_store(str(tmp_path / "s"), run_root=str(tmp_path / "r"), uidmap="0:100000:65536")
    old.import_layer("c", None, io.BytesIO(make_tar({"f": F(b"x")})))
    st = os.lstat(os.path.join(old.driver.apply_target("c").path, "f"))
    assert (st.st_uid, st.st_gid) == (100000, 0)


def test_importing_the_package_loads_nothing_else() -> None:
    code = "import sys, graphdriver; print(sorted(m for m in sys.modules if m.startswith('graphdriver')))"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "['graphdriver']"


def test_a_third_party_driver_runs_the_shipped_conformance_suite(tmp_path: Path) -> None:
    """``GRAPHDRIVER_CONFORMANCE_DRIVERS=NAME=module:Class`` registers a driver and runs the suite on it."""
    env = {**os.environ, "GRAPHDRIVER_CONFORMANCE_DRIVERS": "theirs=graphdriver.drivers.vfs:VfsDriver"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--pyargs", "graphdriver.testing.conformance", "-k", "empty_layer or deep_chain or round_trip"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout


def test_a_third_party_drivers_own_class_is_known_in_the_suites_child_processes(tmp_path: Path) -> None:
    """A driver of its own package and name (as the README shows it registered) passes the test
    whose helper process mounts a layer: that process registers the driver too."""
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "driver.py").write_text(
        "from graphdriver.drivers.vfs import VfsDriver\n\n\n"
        "class MyDriver(VfsDriver):\n    name = \"mine\"\n"
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path,
           "GRAPHDRIVER_CONFORMANCE_DRIVERS": "mine=mypackage.driver:MyDriver"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--pyargs", "graphdriver.testing.conformance", "-k", "killed_command"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout

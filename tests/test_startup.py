"""Start-up: what a command loads, and the per-boot probe and status memory.

Scripts call a layer store thousands of times, so the read-only commands must
not load the modules that make up most of a command's start-up.  This is
checked by the modules a command leaves in ``sys.modules`` (deterministic),
never by timing; ``bench/startup_bench.py`` measures the time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_root, run_cli

# Each costs a read-only command a large share of an interpreter's start-up.
HEAVY = ("argparse", "re", "json", "dataclasses", "typing", "contextlib", "enum", "inspect",
         "hashlib", "shutil", "tempfile", "ctypes", "importlib.util", "isal", "zstandard", "rich",
         "collections", "functools")

PROBE = """
import sys
from graphdriver.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("MODULES", " ".join(sorted(sys.modules)), file=sys.stderr)
raise SystemExit(code)
"""


def loaded(store: Path, *args: str, site: bool = False) -> set[str]:
    """The modules a command leaves loaded (*site*: with site-packages, where the codecs are)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, *(() if site else ("-S",)), "-c", PROBE, "--root", str(store),
         "--run-root", str(store.parent / "run"), *args], capture_output=True, env=env, check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr
    line = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("MODULES ")][-1]
    return set(line.split()[1:])


@pytest.fixture
def made(tmp_path: Path, driver_name: str) -> Path:
    store = tmp_path / "store"
    for args in (("create", "base"), ("create", "ctr", "--parent", "base", "--rw")):
        run_cli(*args, root=store, driver=driver_name, check=True)
    run_cli("status", root=store, check=True)  # the first command after boot probes
    return store


@pytest.mark.parametrize("command", [("layers",), ("exists", "ctr"), ("exists", "nope"),
                                     ("layer", "ctr"), ("status",)])
def test_read_only_commands_load_no_heavy_module(made, command):
    heavy = loaded(made, *command) & set(HEAVY)
    assert not heavy, f"{' '.join(command)} imported {sorted(heavy)}"


def test_image_and_container_listings_load_no_heavy_module(tmp_path):
    """``image ls`` loaded what loading, saving and committing images need (tarfile, tempfile,
    typing: a listing took 2.5 times a ``layers``); it reads each image's config, whose
    digest it checks (hashlib), and nothing more.  ``cleanup`` loaded typing and re."""
    from tests.test_images import LAYER1, oci_layout

    oci_layout(tmp_path / "in", [LAYER1], name="localhost/x:1", created="2020-01-01T01:30:00Z")
    store = tmp_path / "store"
    run_cli("image", "load", str(tmp_path / "in"), root=store, driver="vfs", check=True)
    run_cli("container", "create", "localhost/x:1", "web", root=store, check=True)
    for command in (("image", "ls"), ("image", "ls", "--json"), ("image", "inspect", "localhost/x:1"),
                    ("container", "ls"), ("container", "ls", "--json")):
        heavy = loaded(store, *command) & {*HEAVY, "tarfile", "datetime"}
        assert heavy <= {"hashlib"}, f"{' '.join(command)} imported {sorted(heavy)}"
    assert "graphdriver.images.container_layers" not in loaded(store, "image", "ls")  # containers' own
    # cleanup looks for what dead image work left (its stale-mount sweep uses the mount calls).
    heavy = loaded(store, "cleanup") & {*HEAVY, "tarfile", "datetime"}
    assert heavy <= {"ctypes"}, f"cleanup imported {sorted(heavy)}"


def test_create_on_vfs_loads_no_heavy_module(tmp_path):
    """``create`` is called as often as the read-only commands: without a parent it loads none
    of them, with one only what the tree copy needs (it reads trees, so it goes through the
    command line's retry without root, which must not cost it the stream modules)."""
    store = tmp_path / "store"
    run_cli("create", "base", root=store, driver="vfs", check=True)
    assert not loaded(store, "create", "new") & set(HEAVY)
    child = loaded(store, "create", "kid", "--parent", "base")
    assert child & set(HEAVY) <= {"collections"}, sorted(child & set(HEAVY))
    assert "graphdriver.cliio" not in child


@pytest.mark.parametrize("command", [("create", "new"), ("create", "new", "--rw"),
                                     ("create", "new", "--parent", "base", "--rw")])
def test_create_without_a_size_loads_no_heavy_module(made, command):
    """A container's layer is made as often as it is mounted: overlay's ``create`` loaded the
    size limiter (ctypes, enum, contextlib) to check a size no one gave."""
    heavy = loaded(made, *command) & set(HEAVY)
    assert heavy <= {"collections"}, f"{' '.join(command)} imported {sorted(heavy)}"  # (a vfs tree copy)


@pytest.mark.parametrize("command", [("layers",), ("exists", "ctr"), ("exists", "nope")])
def test_listing_commands_load_no_driver(made, command):
    """The records answer these: no driver is opened, so none of its modules is loaded, nor
    what only status or a stream needs (which codec serves)."""
    modules = loaded(made, *command)
    drivers = {m for m in modules if m.startswith("graphdriver.drivers.")}
    assert not drivers, f"{' '.join(command)} imported {sorted(drivers)}"
    assert "graphdriver.codecs" not in modules
    # Reading records takes no lock: the lock module is loaded by the first lock.
    assert not {"fcntl", "graphdriver.fs.locking"} & modules, f"{' '.join(command)} loaded a lock module"


def test_layer_loads_the_driver_without_what_contents_need(made):
    """``layer ID`` opens the driver for its facts; overlayfs's names (whiteouts, the opaque
    xattr) and the codecs are for reading and writing contents.  It reads the mount count
    without a lock, and a store without id maps needs no id-map module."""
    modules = loaded(made, "layer", "ctr")
    assert not {"graphdriver.fs.overlayfs", "graphdriver.codecs"} & modules
    assert not {"fcntl", "graphdriver.fs.locking", "graphdriver.idmap"} & modules


def test_status_loads_no_mount_counts(made):
    modules = loaded(made, "status")
    assert not {"graphdriver.drivers.refcount", "graphdriver.idmap"} & modules


@needs_root
def test_a_store_with_id_maps_still_reads_them(tmp_path, driver_name):
    """The identity maps are made only when asked for; a store made with maps keeps them."""
    store = tmp_path / "store"
    run_cli("--uidmap", "0:100000:65536", "create", "base", root=store, driver=driver_name, check=True)
    import graphdriver

    opened = graphdriver.open_store(str(store), run_root=str(tmp_path / "run"))
    assert str(opened.idmaps.uids) == "0:100000:65536"
    fresh = graphdriver.open_store(str(tmp_path / "plain"), run_root=str(tmp_path / "run"),
                                   driver=str(driver_name), options=getattr(driver_name, "options", {}))
    assert fresh.idmaps.identity


@needs_root
def test_mount_and_unmount_load_no_heavy_module_but_the_mount_calls(made):
    try:
        heavy = loaded(made, "mount", "ctr") & set(HEAVY)
    finally:
        heavy_unmount = loaded(made, "unmount", "ctr") & set(HEAVY)
    assert heavy <= {"ctypes"}, sorted(heavy)  # the mount API goes through ctypes
    assert "graphdriver.idmap" not in loaded(made, "mounted", "ctr")
    assert heavy_unmount <= {"ctypes"}, sorted(heavy_unmount)


# What a command that reads or writes layer contents needs none of: each costs a
# small import or diff a tenth or more of its whole time.
CONTENT_HEAVY = ("argparse", "re", "json", "dataclasses", "typing", "inspect", "pickle", "base64",
                 "gzip", "shutil", "tempfile", "importlib.util", "zstandard", "rich")


@pytest.mark.parametrize("command", [("changes", "ctr"), ("diffsize", "ctr"), ("changes", "base")])
def test_changes_and_diffsize_load_no_heavy_module(made, command):
    """Scripts list a container's changes as often as they mount it: the change kinds were an
    enum (with functools and collections, a sixth of the command), and diffsize loaded the
    tar writer for a sum of sizes."""
    modules = loaded(made, *command)
    assert not modules & set(HEAVY), f"{' '.join(command)} imported {sorted(modules & set(HEAVY))}"
    assert "graphdriver.layerio.tarstream" not in modules


@pytest.mark.parametrize("command", ["import", "apply", "diff", "changes", "diffsize"])
def test_content_commands_load_no_heavy_module(made, tmp_path, command):
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"host\n"))
    args = {
        "import": ("import", "new", "--parent", "base", str(layer)),
        "apply": ("apply", "ctr", str(layer)),
        "diff": ("diff", "ctr", "-o", str(tmp_path / "out.tar")),
        "changes": ("changes", "ctr"),
        "diffsize": ("diffsize", "ctr"),
    }[command]
    heavy = loaded(made, *args, site=True) & set(CONTENT_HEAVY)
    assert not heavy, f"{command} imported {sorted(heavy)}"


def test_probe_is_remembered_per_boot_for_the_same_home_and_options(tmp_path, monkeypatch):
    from graphdriver import drivers
    from graphdriver.drivers.base import DriverConfig
    from graphdriver.drivers.vfs import VfsDriver

    calls: list[str] = []
    monkeypatch.setattr(VfsDriver, "probe", classmethod(lambda cls, home: calls.append(home)))

    def config(**opts: str) -> DriverConfig:
        return DriverConfig(home=str(tmp_path / "home"), run_root=str(tmp_path / "run"), options=opts)

    drivers.init_driver("vfs", config())
    drivers.init_driver("vfs", config())
    assert len(calls) == 1
    drivers.init_driver("vfs", config(copy="copy"))  # other options: probed again
    assert len(calls) == 2
    (tmp_path / "run" / drivers.PROBED_MARKER).write_text("something else")
    drivers.init_driver("vfs", config(copy="copy"))
    assert len(calls) == 3


def test_status_is_remembered_and_names_the_codecs(tmp_path):
    store = tmp_path / "store"
    run_cli("create", "a", root=store, driver="vfs", check=True)  # a store: its driver fixed
    first = run_cli("status", root=store, driver="vfs", check=True).stdout.decode().splitlines()
    again = run_cli("status", root=store, check=True).stdout.decode().splitlines()
    assert first == again
    found = dict(line.split(": ", 1) for line in first[1:])
    assert found["Codec gzip"] == "isal" and found["Codec crc64"] == "fastcrc"
    assert found["Codec zstd"] == "zstandard"
    as_json = json.loads(run_cli("--json", "status", root=store, check=True).stdout)
    assert as_json["status"]["Codec gzip"] == "isal"


def test_status_says_when_the_pure_twins_are_selected(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDRIVER_PURE", "1")
    out = run_cli("status", root=tmp_path / "store", driver="vfs", check=True).stdout.decode()
    assert "Codec gzip: zlib" in out and "Codec crc64: pure" in out


def test_installed_command_is_our_launcher():
    # pip's generated entry-point wrapper imports re; ours must not.
    text = (ROOT / "bin" / "graphdriver").read_text()
    assert "import re" not in text and "graphdriver.cli import main" in text


def test_pure_twins_import_and_export_the_same_bytes(tmp_path):
    """GRAPHDRIVER_PURE=1 (stdlib gzip, pure CRC-64) gives the same digests, tar-split and bytes."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(40):
            data = bytes(range(256)) * (i * 37 % 300)
            info = tarfile.TarInfo(f"d{i % 4}/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(buf.getvalue()))
    results = []
    for pure in ("", "1"):
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), GRAPHDRIVER_PURE=pure)
        store = tmp_path / f"store{pure}"
        base = [sys.executable, "-m", "graphdriver", "--root", str(store), "--run-root",
                str(tmp_path / f"run{pure}"), "--driver", "vfs"]
        subprocess.run([*base, "import", "l", str(layer)], env=env, check=True, capture_output=True)
        record = json.loads(subprocess.run([*base, "layer", "l"], env=env, check=True,
                                           capture_output=True).stdout)
        out = subprocess.run([*base, "diff", "l"], env=env, check=True, capture_output=True).stdout
        meta = subprocess.run([*base, "tarsplit", "l"], env=env, check=True, capture_output=True).stdout
        status = subprocess.run([*base, "status"], env=env, check=True, capture_output=True).stdout
        results.append((record["diff_digest"], record["compressed_digest"], out, gzip.decompress(meta)))
        assert (b"Codec crc64: pure" in status) == bool(pure)
    assert results[0] == results[1]
    assert results[0][2] == buf.getvalue()


@pytest.mark.parametrize(("command", "collects"), [(("layers",), False), (("layer", "ctr"), False),
                                                     (("mount", "ctr"), False), (("diffsize", "ctr"), True),
                                                     (("changes", "ctr"), True)])
def test_the_launcher_collects_garbage_cycles_only_for_long_work(made, command, collects):
    """The installed command starts with the cyclic garbage collector off (start-up makes
    thousands of objects and no cycles); a command that works at length turns it on."""
    argv = ["graphdriver", "--root", str(made), "--run-root", str(made.parent / "run"), *command]
    probe = (
        "import atexit, gc, runpy, sys\n"
        "atexit.register(lambda: print('COLLECTS', gc.isenabled(), file=sys.stderr))\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(ROOT / 'bin' / 'graphdriver')!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"COLLECTS {collects}" in proc.stderr.decode().splitlines(), proc.stderr
    if command[0] == "mount":
        run_cli("unmount", "ctr", root=made, check=True)


def test_ctrl_c_before_the_command_began_ends_it_with_130_and_no_traceback(tmp_path):
    """An interrupt while the launcher still loads the command line (the first milliseconds
    of every run) ends the command as an interrupt during its work does: exit 130, nothing on
    stderr.  A stand-in ``graphdriver.cli`` interrupts its own loading."""
    fake = tmp_path / "graphdriver"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                 "time.sleep(5)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "graphdriver"), "layers"],
                          capture_output=True, env=env, check=False, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, b"")

"""Crash safety and many processes on one store, with real processes and real kills.

kill -9 lands at random moments of ``import``, ``create`` and ``remove``; after
each, the store is reopened and must list only whole layers that re-export
exactly, and removing everything must leave it empty.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from graphdriver.store.layers import Store, StoreOptions
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def _layer(files: int, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(files // 50 + 1):
            info = tarfile.TarInfo(f"d{d}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for i in range(files):
            data = rng.randbytes(rng.randint(0, size))
            info = tarfile.TarInfo(f"d{i // 50}/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cli(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
            str(root.parent / "run"), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), GRAPHDRIVER_NO_PROGRESS="1")


def _assert_whole(root: Path, driver: str) -> list[str]:
    """Open the store (which recovers), then every listed layer must re-export exactly."""
    store = Store(StoreOptions(root=str(root), run_root=str(root.parent / "run"), driver=driver))
    # A killed command's confined child dies with it, a moment later: cleanup waits for it.
    store.cleanup()
    assert store.records.pending() == {}
    layers = [r.id for r in store.layers()]
    bad = [(i, why) for i, why in store.check() if why and not why.startswith("skipped")]
    assert not bad, bad
    home = store.driver.home
    folders = {n for n in os.listdir(home) if not n.startswith(".")}
    assert folders == set(layers), (folders, layers)
    return layers


def test_kill_at_random_points(tmp_path: Path, driver_name: str):
    root = tmp_path / "store"
    tar = tmp_path / "layer.tar"
    tar.write_bytes(_layer(600, 20_000, 1))
    rng = random.Random(int(os.environ.get("GRAPHDRIVER_CRASH_SEED", "7")))
    subprocess.run(_cli(root, "--driver", driver_name, "import", "base", str(tar)),
                   env=_env(), check=True, capture_output=True)
    rounds = int(os.environ.get("GRAPHDRIVER_CRASH_ROUNDS", "25"))
    for n in range(rounds):
        op = rng.choice(["import", "import", "create", "remove"])
        if op == "import":
            args = ["import", f"l{n}", "--parent", "base", str(tar)]
        elif op == "create":
            args = ["create", f"c{n}", "--parent", "base"]
        else:
            victims = [x for x in _assert_whole(root, driver_name) if x != "base"]
            if not victims:
                continue
            args = ["remove", rng.choice(victims)]
        proc = subprocess.Popen(_cli(root, *args), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_whole(root, driver_name)
    # Everything removable leaves nothing behind.
    store = Store(StoreOptions(root=str(root), run_root=str(root.parent / "run"), driver=driver_name))
    for record in sorted(store.layers(), key=lambda r: r.parent is None):
        store.remove(record.id)
    assert store.layers() == []
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []
    assert os.listdir(root / "tarsplit") == []
    assert os.listdir(root / "pending") == []


def test_six_processes_share_one_store(tmp_path: Path, driver_name: str):
    root = tmp_path / "store"
    data = _layer(100, 3000, 2)
    run_cli("import", "base", "-", root=root, driver=driver_name, input=data, check=True)
    tar = tmp_path / "l.tar"
    tar.write_bytes(_layer(80, 2000, 3))

    def worker(w: int) -> list[str]:
        failures = []
        for i in range(4):
            steps = [
                ["import", f"w{w}-{i}", "--parent", "base", str(tar)],
                ["mount", "base"],
                ["mount", f"w{w}-{i}"],
                ["changes", f"w{w}-{i}"],
                ["unmount", f"w{w}-{i}"],
                ["layers"],
                ["unmount", "base"],
                ["create", f"w{w}-{i}-c", "--parent", f"w{w}-{i}"],
                ["remove", f"w{w}-{i}-c"],
                ["remove", f"w{w}-{i}"],
            ]
            for step in steps:
                r = subprocess.run(_cli(root, *step), env=_env(), capture_output=True)
                if r.returncode != 0:
                    failures.append(f"{step}: {r.returncode} {r.stderr.decode().strip()}")
        return failures

    with ThreadPoolExecutor(6) as pool:
        failures = [f for fs in pool.map(worker, range(6)) for f in fs]
    assert failures == []
    store = Store(StoreOptions(root=str(root), run_root=str(root.parent / "run"), driver=driver_name))
    assert [r.id for r in store.layers()] == ["base"]
    assert store.driver.mount_count("base") == 0
    assert store.check() == [("base", None)]
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(root) not in f.read()


def _wait_marked(root: Path, driver: str, layer_id: str) -> None:
    """Until an apply to *layer_id* has marked its record (it then reads its input)."""
    deadline = time.monotonic() + 20
    while b'"applying"' not in run_cli("layer", layer_id, "--json", root=root, driver=driver).stdout:
        assert time.monotonic() < deadline, "the apply never started"
        time.sleep(0.05)


def test_a_live_apply_is_under_way_not_damaged_and_a_killed_one_is_damaged(tmp_path: Path, driver_name: str):
    root = tmp_path / "store"
    for args in (("create", "base"), ("create", "da", "--parent", "base")):
        run_cli(*args, root=root, driver=driver_name, check=True)
    layer = _layer(300, 3000, 11)
    small = tmp_path / "small.tar"
    small.write_bytes(_layer(1, 10, 12))
    for ending in ("finished", "killed"):
        apply = subprocess.Popen(_cli(root, "--driver", driver_name, "apply", "da", "-"), env=_env(),
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert apply.stdin is not None
        apply.stdin.write(layer[: len(layer) // 2])
        apply.stdin.flush()
        _wait_marked(root, driver_name, "da")
        if ending == "finished":
            # While it reads: busy (5), never damaged (6), and nothing tells anyone to remove it.
            for args in (("remove", "da"), ("mount", "da"), ("diff", "da"), ("changes", "da"),
                         ("apply", "da", str(small)), ("create", "c", "--parent", "da")):
                busy = run_cli(*args, root=root, driver=driver_name)
                assert busy.returncode == 5, (args, busy.stderr)
                assert busy.stderr.count(b"\n") == 1 and b"under way" in busy.stderr, (args, busy.stderr)
            listed = run_cli("layers", root=root, driver=driver_name)
            assert (listed.returncode, listed.stderr) == (0, b"")
            checked = run_cli("check", "da", root=root, driver=driver_name)
            assert checked.returncode == 0 and b"under way" in checked.stdout, checked
            assert b"da" not in run_cli("cleanup", root=root, driver=driver_name, check=True).stdout
            apply.stdin.write(layer[len(layer) // 2 :])
            apply.stdin.close()
            assert apply.wait(60) == 0, apply.stderr.read() if apply.stderr else b""
            assert run_cli("check", root=root, driver=driver_name).returncode == 0
            continue
        apply.send_signal(signal.SIGKILL)
        apply.wait(60)
        # A dead apply's files are half written: damaged, and cleanup says so (its lock file,
        # left in the pending folder, is taken by the recovery the next command runs).
        listed = run_cli("layers", root=root, driver=driver_name)
        assert listed.returncode == 0 and b"is damaged" in listed.stderr, listed.stderr
        shown = json.loads(run_cli("layer", "da", root=root, driver=driver_name, check=True).stdout)
        assert "applying" not in shown and shown["damaged"].endswith("did not finish"), shown
        assert run_cli("check", "da", root=root, driver=driver_name).returncode == 6
        cleaned = run_cli("cleanup", root=root, driver=driver_name, check=True).stdout
        assert b"layer da is damaged" in cleaned, cleaned
        assert os.listdir(root / "pending") == []
        assert run_cli("remove", "da", root=root, driver=driver_name).returncode == 0


def test_an_apply_to_a_created_layer_killed_anywhere_claims_no_digest_it_lacks(tmp_path: Path,
                                                                             driver_name: str):
    """The apply that records its tarball as an import (the layer came from create): a kill
    leaves the layer damaged and claiming no digest, or whole and giving the tarball back;
    ``cleanup`` takes its half-written tar-split file either way."""
    root = tmp_path / "store"
    tar = tmp_path / "layer.tar"
    layer = _layer(400, 20_000, 5)
    tar.write_bytes(layer)
    rng = random.Random(int(os.environ.get("GRAPHDRIVER_CRASH_SEED", "7")))
    # Killed while it reads its input: its tar-split file is half written.
    run_cli("create", "half", root=root, driver=driver_name, check=True)
    apply = subprocess.Popen(_cli(root, "--driver", driver_name, "apply", "half", "-"), env=_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert apply.stdin is not None
    apply.stdin.write(layer[: len(layer) // 2])
    apply.stdin.flush()
    _wait_marked(root, driver_name, "half")
    apply.send_signal(signal.SIGKILL)
    apply.wait(60)
    apply.stdin.close()
    run_cli("import", "base", str(tar), root=root, driver=driver_name, check=True)
    rounds = [("half", None), *((f"l{n}", rng.uniform(0.2, 1.5)) for n in range(6))]
    for n, (layer_id, delay) in enumerate(rounds):
        if delay is not None:  # killed at a random moment, on a parent or none
            parent = ("--parent", "base") if n % 2 else ()
            run_cli("create", layer_id, *parent, root=root, driver=driver_name, check=True)
            proc = subprocess.Popen(_cli(root, "--driver", driver_name, "apply", layer_id, str(tar)),
                                    env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        run_cli("cleanup", root=root, driver=driver_name, check=True)  # (waits for its confined child)
        assert [name for name in os.listdir(root / "tarsplit") if ".partial-" in name] == []
        shown = json.loads(run_cli("layer", layer_id, root=root, driver=driver_name, check=True).stdout)
        if "damaged" in shown:
            assert "diff_digest" not in shown and "fresh" not in shown, shown
            assert run_cli("check", layer_id, root=root, driver=driver_name).returncode == 6
        elif "diff_digest" not in shown:  # killed before it began: the layer is as created
            assert shown["fresh"] is True and shown["size"] is None, shown
        else:  # finished before the kill
            assert run_cli("diff", layer_id, root=root, driver=driver_name, check=True).stdout == layer
            assert run_cli("check", layer_id, root=root, driver=driver_name, check=True).stdout == \
                f"{layer_id}: ok\n".encode()
        run_cli("remove", layer_id, root=root, driver=driver_name, check=True)
        assert os.listdir(root / "tarsplit") == ["base.tar-split.gz"]
        assert os.listdir(root / "pending") == []


def test_cleanup_takes_the_lock_file_a_dead_apply_left(tmp_path: Path, driver_name: str):
    root = tmp_path / "store"
    run_cli("create", "da", root=root, driver=driver_name, check=True)
    (root / "pending" / ".da.apply").write_bytes(b"")  # as an apply killed at once leaves it
    cleaned = run_cli("cleanup", root=root, driver=driver_name, check=True).stdout
    assert cleaned == b"removed stray apply lock of da\n"
    assert os.listdir(root / "pending") == []


def test_cleanup_of_a_new_root_takes_half_a_settings_file(tmp_path: Path, driver_name: str):
    """A first command killed while it wrote the store's settings leaves half a file: cleanup
    of that root (which stores nothing yet) removes it, and makes nothing."""
    root = tmp_path / "store"
    root.mkdir()
    (root / ".tmp-store.json-999999").write_text('{"driver": "vf')  # no process 999999 holds it
    cleaned = run_cli("cleanup", root=root, driver=driver_name, check=True).stdout
    assert b".tmp-store.json-999999" in cleaned, cleaned
    assert os.listdir(root) == []

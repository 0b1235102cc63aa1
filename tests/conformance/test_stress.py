"""Four processes working one store for a minute, every driver: no integrity failure, ever.

Each worker imports, creates, mounts, unmounts, diffs, checks and removes its
own layers and reads the others' (which may vanish under it: "not found" is a
fine answer then, "corrupt" never is).  Afterwards nothing is mounted, every
layer checks, and ``cleanup`` has nothing to do.  ``GRAPHDRIVER_STRESS_SECONDS``
shortens or lengthens the run (60 by default).
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

WORKERS = 4


def _layer(seed: int) -> bytes:
    rng = random.Random(seed)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(60):
            data = rng.randbytes(rng.randrange(0, 8000))
            info = tarfile.TarInfo(f"d{i % 6}/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.mark.slow
def test_four_processes_for_a_minute_never_see_corruption(tmp_path: Path, driver_name: str) -> None:
    seconds = float(os.environ.get("GRAPHDRIVER_STRESS_SECONDS", "60"))
    root, run_root = tmp_path / "store", tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), GRAPHDRIVER_NO_PROGRESS="1")
    base_cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root", str(run_root)]
    subprocess.run([*base_cmd, "--driver", driver_name, "import", "base", "-"], input=_layer(0),
                   env=env, check=True, capture_output=True)
    tarballs = []
    for k in range(WORKERS):
        path = tmp_path / f"w{k}.tar"
        path.write_bytes(_layer(k + 1))
        tarballs.append(path)
    bad: list[str] = []
    counts: dict[str, int] = {}
    stop = time.monotonic() + seconds

    def run(args: list[str], allowed: set[int]) -> int:
        r = subprocess.run([*base_cmd, *args], env=env, capture_output=True, check=False)
        counts[args[0]] = counts.get(args[0], 0) + 1
        if r.returncode not in allowed:
            bad.append(f"{args}: exit {r.returncode}: {r.stderr.decode().strip()[-300:]}")
        return r.returncode

    def worker(k: int) -> None:
        rng = random.Random(k)
        n = 0
        while time.monotonic() < stop and not bad:
            mine, n = f"w{k}-{n}", n + 1
            run(["import", mine, "--parent", "base", str(tarballs[k])], {0})
            run(["create", f"{mine}-c", "--parent", mine, "--rw"], {0})
            if run(["mount", f"{mine}-c"], {0}) == 0:
                run(["unmount", f"{mine}-c"], {0})
            run(["diff", mine, "-o", os.devnull], {0})
            other = f"w{rng.randrange(WORKERS)}-{rng.randrange(max(n, 1))}"
            run(["diff", other, "-o", os.devnull], {0, 3})
            run(["changes", f"{mine}-c"], {0})
            run(["check"], {0})
            run(["mount", "base"], {0})
            run(["unmount", "base"], {0})
            run(["remove", f"{mine}-c"], {0})
            run(["remove", mine], {0})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == [], "\n".join(bad[:10])
    assert counts.get("check", 0) >= WORKERS
    final = subprocess.run([*base_cmd, "check"], env=env, capture_output=True, check=False)
    assert (final.returncode, final.stdout) == (0, b"base: ok\n"), final.stderr
    cleanup = subprocess.run([*base_cmd, "cleanup"], env=env, capture_output=True, check=False)
    assert (cleanup.returncode, cleanup.stdout) == (0, b""), cleanup.stderr
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(root) not in f.read()


def test_one_of_four_processes_removing_a_layer_at_once_removes_it(tmp_path: Path, driver_name: str) -> None:
    """The others are told it is not there (exit 3), as a second removal after it would be."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    base_cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--run-root",
                str(tmp_path / "run"), "--driver", driver_name]
    for round_ in range(3):
        subprocess.run([*base_cmd, "import", "same", "-"], input=_layer(round_), env=env, check=True,
                       capture_output=True)
        procs = [subprocess.Popen([*base_cmd, "remove", "same"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for _ in range(WORKERS)]
        codes = sorted(p.wait() for p in procs)
        assert codes == [0] + [3] * (WORKERS - 1), [p.stderr.read() for p in procs if p.stderr]


def test_a_removal_and_a_mount_at_once_one_wins_and_the_store_stays_whole(tmp_path: Path,
                                                                          driver_name: str) -> None:
    """Either the layer is removed and the mount is told it is not there (3), or it is mounted and
    the removal refused (5): never a removal left half done for a later cleanup to finish."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    root = tmp_path / "store"
    base_cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
                str(tmp_path / "run"), "--driver", driver_name]
    for round_ in range(8):
        layer = f"l{round_}"
        subprocess.run([*base_cmd, "import", layer, "-"], input=_layer(round_), env=env, check=True,
                       capture_output=True)
        remove = subprocess.Popen([*base_cmd, "remove", layer], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        mount = subprocess.Popen([*base_cmd, "mount", layer], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        outcome = (remove.wait(), mount.wait())
        try:
            assert outcome in ((0, 3), (5, 0)), outcome
            assert not [n for n in os.listdir(root / "pending") if not n.startswith(".")]
        finally:
            if outcome[1] == 0:  # mounted: never left mounted, whatever was found
                subprocess.run([*base_cmd, "unmount", layer], env=env, capture_output=True)
                subprocess.run(["umount", "-l", str(root / driver_name / layer / "merged")],
                               capture_output=True)
        if outcome == (5, 0):
            subprocess.run([*base_cmd, "remove", layer], env=env, check=True, capture_output=True)
    assert subprocess.run([*base_cmd, "cleanup"], env=env, check=True, capture_output=True).stdout == b""

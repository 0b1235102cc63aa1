#!/usr/bin/env python3
"""Import of one real layer, side by side: graphdriver, containers-storage, GNU tar.

Every tool gets the same tarball and a fresh empty target, in turns (A B C A B
C ...), so a noisy machine slows them alike.  Prints each tool's median wall
time and the ratios to graphdriver's.  Run as root (owners, devices):

    python bench/import_bench.py [--layer FILE] [--rounds 5] [--where tmpfs|disk|both]

Without ``--layer`` a Debian bookworm minbase root filesystem is made with
debootstrap (cached under ``~/.cache/graphdriver``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
from graphdriver.atomic import syncfs  # noqa: E402

CACHE = Path(os.environ.get("GRAPHDRIVER_TEST_CACHE", Path.home() / ".cache" / "graphdriver"))


def debian_layer() -> Path:
    tar = CACHE / "debian-minbase.tar"
    if tar.exists():
        return tar
    rootfs = CACHE / "rootfs"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (rootfs / "etc" / "debian_version").exists():
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                        "http://deb.debian.org/debian"], check=True, capture_output=True)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf",
                    str(tar), "-C", str(rootfs), "."], check=True)
    return tar


def graphdriver_cmd() -> list[str]:
    exe = shutil.which("graphdriver")
    return [exe] if exe else [sys.executable, "-m", "graphdriver"]


def run_graphdriver(layer: Path, work: Path) -> None:
    subprocess.run([*graphdriver_cmd(), "--root", str(work / "gd"), "--run-root",
                    str(work / "gd-run"), "--driver", "vfs", "import", "layer", str(layer)],
                   check=True, stdout=subprocess.DEVNULL)


def run_containers_storage(layer: Path, work: Path) -> None:
    subprocess.run(["containers-storage", "--graph", str(work / "cs"), "--run",
                    str(work / "cs-run"), "--storage-driver", "vfs", "import-layer", "-f",
                    str(layer)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_gnu_tar(layer: Path, work: Path) -> None:
    dest = work / "tar"
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(layer), "-C", str(dest)], check=True)


def run_sync(work: Path) -> None:
    """Time of the data reaching the disk is part of an import: count it for everyone."""
    syncfs(str(work))


TOOLS: dict[str, Callable[[Path, Path], None]] = {
    "graphdriver": run_graphdriver,
    "containers-storage": run_containers_storage,
    "gnu-tar": run_gnu_tar,
}


def bench(layer: Path, base: Path, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in TOOLS}
    available = {n: f for n, f in TOOLS.items()
                 if n != "containers-storage" or shutil.which("containers-storage")}
    for _ in range(rounds):
        for name, fn in available.items():
            work = Path(tempfile.mkdtemp(dir=base))
            try:
                run_sync(work)
                start = time.perf_counter()
                fn(layer, work)
                run_sync(work)
                times[name].append(time.perf_counter() - start)
            finally:
                cleanup(work)
    return {n: t for n, t in times.items() if t}


def cleanup(work: Path) -> None:
    if (work / "cs").exists():
        subprocess.run(["containers-storage", "--graph", str(work / "cs"), "--run",
                        str(work / "cs-run"), "--storage-driver", "vfs", "wipe"],
                       check=False, capture_output=True)
        subprocess.run(["containers-storage", "--graph", str(work / "cs"), "--run",
                        str(work / "cs-run"), "--storage-driver", "vfs", "shutdown"],
                       check=False, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


def report(where: str, layer: Path, times: dict[str, list[float]]) -> None:
    med = {n: statistics.median(t) for n, t in times.items()}
    mine = med["graphdriver"]
    print(f"\nimport of {layer.name} ({layer.stat().st_size / 2**20:.0f} MiB) on {where}, "
          f"{len(times['graphdriver'])} rounds, medians:")
    for name, m in med.items():
        ratio = mine / m
        print(f"  {name:20s} {m:7.3f} s   graphdriver/{name} = {ratio:.2f}")


def mount_tmpfs() -> Path:
    path = Path(tempfile.mkdtemp(prefix="gd-bench-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", str(path)], check=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--where", choices=["tmpfs", "disk", "both"], default="both")
    args = p.parse_args()
    layer = args.layer or debian_layer()
    if args.where in ("tmpfs", "both"):
        base = mount_tmpfs()
        try:
            report("tmpfs", layer, bench(layer, base, args.rounds))
        finally:
            subprocess.run(["umount", str(base)], check=False)
            base.rmdir()
    if args.where in ("disk", "both"):
        base = Path(tempfile.mkdtemp(prefix="gd-bench-disk-", dir=os.environ.get("BENCH_DISK_DIR")))
        try:
            report("disk", layer, bench(layer, base, args.rounds))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Import of one real layer, side by side: graphdriver, containers-storage, GNU tar.

Every tool gets the same tarball and a fresh empty target, in turns (A B C A B
C ...), so a noisy machine slows them alike; the time of the data reaching the
disk (syncfs) counts for everyone.  Prints each tool's median wall time and the
ratios of graphdriver's to it.  Run as root (owners, devices):

    python bench/import_bench.py [--layer FILE] [--rounds 5] [--where tmpfs|disk|both]

Without ``--layer`` a Debian bookworm minbase root filesystem is made with
debootstrap (cached under ``~/.cache/graphdriver``).  ``containers-storage
import-layer`` does the same work as ``graphdriver import`` in Go (DiffID,
tar-split, extraction); GNU ``tar -x`` does no bookkeeping at all.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from common import (
    Tool,
    commands,
    cs_cmd,
    debian_layer,
    fresh,
    gd,
    have,
    mib,
    place,
    places,
    report,
    take_turns,
    warm,
)


def graphdriver_import(command: Path) -> Tool:
    def run(layer: Path, work: Path) -> None:
        gd(work, "vfs", "import", "layer", str(layer), command=command)

    return run


def run_containers_storage(layer: Path, work: Path) -> None:
    subprocess.run(cs_cmd(work, "vfs", "import-layer", "-f", str(layer)), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_gnu_tar(layer: Path, work: Path) -> None:
    dest = work / "tar"
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(layer), "-C", str(dest)], check=True)


def bench(layer: Path, base: Path, rounds: int) -> dict[str, list[float]]:
    tools: dict[str, Tool] = {name: graphdriver_import(cmd) for name, cmd in commands().items()}
    if have("containers-storage"):
        tools["containers-storage"] = run_containers_storage
    tools["gnu-tar"] = run_gnu_tar
    return take_turns({name: fresh(base, layer, fn) for name, fn in tools.items()}, rounds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--where", choices=["tmpfs", "disk", "both"], default="both")
    args = p.parse_args()
    commands()  # installed now: no round may time pip
    layer = warm(args.layer or debian_layer())
    for where in places(args.where):
        with place(where) as base:
            report(f"import of {layer.name} ({mib(layer)}) on {where}", bench(layer, base, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

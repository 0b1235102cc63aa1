#!/usr/bin/env python3
"""Bit-exact export of one imported layer, side by side: graphdriver diff and tar-split asm.

The layer is imported once per place (tmpfs, disk) into a vfs and an overlay
store; ``tar-split disasm`` makes the Go tool's metadata and GNU tar extracts
the files it reassembles from.  Then, in turns, ``graphdriver diff`` of each
store and ``tar-split asm --input <metadata> --path <files>`` rebuild the
tarball into a file on the same filesystem (or /dev/null), which is checked
against the original once per tool.  Prints medians and the ratios of
graphdriver's times to tar-split's.  Run as root (owners, overlay mounts):

    python bench/export_bench.py [--layer FILE] [--rounds 5] [--where tmpfs|disk|both] [--devnull]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from common import (
    ENV,
    commands,
    debian_layer,
    gd,
    gd_cmd,
    have,
    mib,
    place,
    places,
    report,
    take_turns,
    timed,
    warm,
)

DRIVERS = ("vfs", "overlay")


def prepare(layer: Path, base: Path) -> Path:
    """Import the layer into one store per driver (and per command compared); extract it and
    disassemble it for tar-split."""
    for name, command in commands().items():
        for driver in DRIVERS:
            gd(base / name / driver, driver, "import", "layer", str(layer), command=command)
    files = base / "files"
    files.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(layer),
                    "-C", str(files)], check=True)
    meta = base / "layer.tar-split.gz"
    with open(layer, "rb") as src:
        subprocess.run(["tar-split", "disasm", "--output", str(meta), "-"], stdin=src,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return meta


def graphdriver_diff(base: Path, driver: str, out: Path, command: Path) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(gd_cmd(base, driver, "diff", "layer", "-o", str(out), command=command), env=ENV,
                       check=True)

    return run


def tar_split_asm(base: Path, meta: Path, out: Path) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(["tar-split", "asm", "--input", str(meta), "--path", str(base / "files"),
                        "--output", str(out)], check=True, stderr=subprocess.DEVNULL)

    return run


def bench(layer: Path, base: Path, rounds: int, devnull: bool) -> dict[str, list[float]]:
    meta = prepare(layer, base)
    runs: dict[str, Callable[[], None]] = {}
    outs: dict[str, Path] = {}
    for label, command in commands().items():
        for driver in DRIVERS:
            name = f"{label} diff ({driver})"
            outs[name] = Path(os.devnull) if devnull else base / f"out-{label}-{driver}.tar"
            runs[name] = graphdriver_diff(base / label / driver, driver, outs[name], command)
    outs["tar-split asm"] = Path(os.devnull) if devnull else base / "out-asm.tar"
    runs["tar-split asm"] = tar_split_asm(base, meta, outs["tar-split asm"])
    checked: set[str] = set()

    def turn(name: str) -> Callable[[], float]:
        def run() -> float:
            seconds = timed(runs[name], sync=base)
            if not devnull:
                if name not in checked:  # the same bytes as the imported tarball, once per tool
                    if not filecmp.cmp(layer, outs[name], shallow=False):
                        raise SystemExit(f"{name} did not reproduce {layer}")
                    checked.add(name)
                outs[name].unlink()
            return seconds

        return run

    return take_turns({name: turn(name) for name in runs}, rounds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--where", choices=["tmpfs", "disk", "both"], default="both")
    p.add_argument("--devnull", action="store_true", help="write the tarballs to /dev/null")
    args = p.parse_args()
    if not have("tar-split"):
        print("tar-split is not installed (Debian package tar-split)")
        return 2
    commands()  # installed now: no round may time pip
    layer = warm(args.layer or debian_layer())
    for where in places(args.where):
        with place(where) as base:
            times = bench(layer, base, args.rounds, args.devnull)
            target = "/dev/null" if args.devnull else f"a file on {where}"
            report(f"export of {layer.name} ({mib(layer)}) from {where} to {target}", times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

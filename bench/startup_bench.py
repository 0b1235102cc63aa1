#!/usr/bin/env python3
"""Start-up of the commands scripts call most, side by side with ``python -c pass``.

Each command runs as a whole process, in turns with the bare interpreter of the
same virtual environment and with ``containers-storage`` doing the same thing
on a store of its own (A B C A B C ...), and the report gives medians of every
figure and the ratios graphdriver / python and graphdriver / containers-storage:

    layers, exists ID, layer ID, status      (read-only: the goal is <= 2 x python)
    image ls, container ls                   (the same, over one image and its container)
    mount ID then unmount ID, each timed     (the goal is <= 3 x python)

on a vfs store and an overlay store holding a base layer and a container layer.
graphdriver is installed with a plain ``pip install .`` into a new venv (see
``common.install``).  Run as root (overlay mounts):

    python bench/startup_bench.py [--runs 21] [--drivers vfs,overlay]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from common import ENV, VENV, add_member, cs_cmd, graphdriver_command, have, remove_work, write_docker_archive

READ_ONLY = (("layers",), ("exists", "ctr"), ("layer", "ctr"), ("status",), ("image", "ls"),
             ("container", "ls"))
IMAGE = "localhost/bench/tiny:1"


def key(args: tuple[str, ...]) -> str:
    """A command's name in the report: ``layers``, ``image ls``."""
    return " ".join(args[:2]) if args[0] in ("image", "container") else args[0]


def cs_args(command: str, layer: str) -> tuple[str, ...]:
    """containers-storage's spelling of the same command (layers by id: its vfs mount needs one)."""
    return {"layers": ("layers",), "exists": ("exists", "-l", layer), "layer": ("layer", layer),
            "status": ("status",), "mount": ("mount", layer), "unmount": ("unmount", layer),
            "image ls": ("images",), "container ls": ("containers",)}[command]


def tiny_layer() -> bytes:
    """A layer of one small file, for the image the listings show."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add_member(tf, "etc/hostname", b"bench\n")
    return out.getvalue()


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def setup(work: Path, driver: str) -> tuple[list[str], list[str] | None, str]:
    """Stores with a base and a container layer: the two tools' command prefixes, cs's layer id."""
    gd = [str(graphdriver_command()), "--root", str(work / "gd"), "--run-root", str(work / "gd-run")]
    subprocess.run([*gd, "--driver", driver, "create", "base"], env=ENV, check=True, capture_output=True)
    subprocess.run([*gd, "create", "ctr", "--parent", "base", "--rw"], env=ENV, check=True,
                   capture_output=True)
    write_docker_archive(work / "tiny.tar", tiny_layer(), IMAGE)
    for args in (("image", "load", str(work / "tiny.tar")), ("container", "create", IMAGE, "web")):
        subprocess.run([*gd, *args], env=ENV, check=True, capture_output=True)
    if not have("containers-storage"):
        return gd, None, ""
    cs = cs_cmd(work, driver)
    subprocess.run([*cs, "create-layer", "-n", "base"], check=True, capture_output=True)
    made = subprocess.run([*cs, "create-layer", "-n", "ctr", "base"], check=True, capture_output=True)
    subprocess.run([*cs, "create-image", "-n", IMAGE, "base"], check=True, capture_output=True)
    subprocess.run([*cs, "create-container", "-n", "web", IMAGE], check=True, capture_output=True)
    return gd, cs, made.stdout.decode().split()[0]


def measure(driver: str, runs: int) -> dict[str, dict[str, list[float]]]:
    work = Path(tempfile.mkdtemp(prefix=f"gd-startup-{driver}-"))
    python = [str(VENV / "bin" / "python"), "-c", "pass"]
    try:
        gd, cs, cs_layer = setup(work, driver)
        for tool in (gd, cs):  # warm both up once (page cache, probe results)
            if tool is not None:
                subprocess.run([*tool, "layers"], env=ENV, check=True, capture_output=True)
        out: dict[str, dict[str, list[float]]] = {}
        for args in READ_ONLY:
            figures: dict[str, list[float]] = {"graphdriver": [], "python": [], "containers-storage": []}
            for _ in range(runs):
                figures["graphdriver"].append(run([*gd, *args]))
                figures["python"].append(run(python))
                if cs is not None:
                    figures["containers-storage"].append(run([*cs, *cs_args(key(args), cs_layer)]))
            out[key(args)] = figures
        for step in ("mount", "unmount"):
            out[step] = {"graphdriver": [], "python": [], "containers-storage": []}
        for _ in range(runs):
            out["mount"]["graphdriver"].append(run([*gd, "mount", "ctr"]))
            out["unmount"]["graphdriver"].append(run([*gd, "unmount", "ctr"]))
            out["mount"]["python"].append(run(python))
            out["unmount"]["python"].append(out["mount"]["python"][-1])
            if cs is not None:
                out["mount"]["containers-storage"].append(run([*cs, *cs_args("mount", cs_layer)]))
                out["unmount"]["containers-storage"].append(run([*cs, *cs_args("unmount", cs_layer)]))
        return out
    finally:
        remove_work(work)
        shutil.rmtree(work, ignore_errors=True)


def report(driver: str, results: dict[str, dict[str, list[float]]], runs: int) -> None:
    print(f"\n{driver} store, {runs} runs each, medians (ms); goal: read-only <= 2 x python, "
          "mount/unmount <= 3 x python")
    print(f"  {'command':12s} {'graphdriver':>11s} {'python -c pass':>14s} {'c-storage':>10s} "
          f"{'gd/python':>10s} {'gd/c-storage':>13s}")
    for command, figures in results.items():
        med = {k: statistics.median(v) * 1000 for k, v in figures.items() if v}
        cs = med.get("containers-storage")
        print(f"  {command:12s} {med['graphdriver']:11.1f} {med['python']:14.1f} "
              f"{cs if cs is not None else float('nan'):10.1f} "
              f"{med['graphdriver'] / med['python']:10.2f} "
              f"{med['graphdriver'] / cs if cs else float('nan'):13.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--drivers", default="vfs,overlay")
    args = p.parse_args()
    graphdriver_command()
    for driver in args.drivers.split(","):
        report(driver, measure(driver, args.runs), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

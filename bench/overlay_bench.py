#!/usr/bin/env python3
"""The overlay driver beside containers-storage's overlay driver, on the same work.

Three measurements, each printed as medians and ratios (graphdriver / other;
below 1 means graphdriver is faster):

mount
    Mounting the top of a chain of empty layers, 1, 10, 128 and 500 deep:
    ``graphdriver mount`` against ``containers-storage mount`` (both whole
    commands, process start included), plus the driver's own ``get`` called
    in-process (what a long-running daemon pays).
changes
    ``changes`` of a container layer with 10 changed files over a base of
    20,000 files: graphdriver's native diff and its generic walk (in-process)
    and ``graphdriver changes`` against ``containers-storage changes``.
container layer
    ``changes``, ``diff`` and ``diffsize`` of a container layer in which a process rewrote
    every file of a base of 100,000 (``--container-files``): ``graphdriver`` against
    ``containers-storage`` on the same work, each command whole, in turns round by round;
    ``--container-drivers overlay,vfs`` measures vfs too.
import / export
    A layer tarball (Debian minbase from the import benchmark's cache, or
    ``--layer``) imported with ``graphdriver import`` and
    ``containers-storage import-layer``, and exported with ``graphdriver diff``
    and ``containers-storage diff``.

Run as root::

    python bench/overlay_bench.py [--rounds 7] [--depths 1,10,128,500] [--layer FILE]
        [--container-files 100000] [--container-drivers overlay] [--skip mount,changes,container,import]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from common import (  # noqa: E402
    CACHE,
    ENV,
    VENV,
    cs_cmd,
    gd_cmd,
    graphdriver_command,
    remove_work,
    report,
    take_turns,
)
from graphdriver.fs.mounts import mounts_below, unmount  # noqa: E402
from graphdriver.store import content  # noqa: E402
from graphdriver.store.layers import Store, StoreOptions  # noqa: E402

# ----- the two tools ------------------------------------------------------------------------


def gd(work: Path, *args: str, stdout: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    cmd = [str(graphdriver_command())]  # the command `pip install .` installed
    return subprocess.run([*cmd, "--root", str(work / "gd"), "--run-root", str(work / "gd-run"),
                           "--driver", "overlay", *args], env=ENV, check=True, stdout=stdout,
                          stderr=subprocess.PIPE)


def cs(work: Path, *args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["containers-storage", "--graph", str(work / "cs"), "--run", str(work / "cs-run"),
                           "--storage-driver", "overlay", *args], check=True, stdout=stdout,
                          stderr=subprocess.PIPE)


def gd_store(work: Path) -> Store:
    return Store(StoreOptions(root=str(work / "gd"), run_root=str(work / "gd-run"), driver="overlay"))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:6.2f}" if b else "   n/a"


# ----- mount by depth --------------------------------------------------------------------------


def cs_chain(work: Path, depth: int) -> tuple[str | None, str]:
    """A chain of empty containers-storage layers; returns (top id or None, why it stopped)."""
    parent: str | None = None
    for i in range(depth):
        try:
            out = cs(work, "create-layer", *([parent] if parent else []))
        except subprocess.CalledProcessError as e:
            return None, f"create-layer failed at depth {i + 1}: {e.stderr.decode().strip()[-120:]}"
        parent = out.stdout.decode().split()[-1]
    return parent, ""


def interpreter_start(rounds: int) -> float:
    """What starting Python and importing the CLI costs before any work (median ms)."""
    graphdriver_command()
    cmd = [str(VENV / "bin" / "python"), "-c", "import graphdriver.cli, graphdriver.store.layers"]
    return median_ms([timed(lambda: subprocess.run(cmd, env=ENV, check=True)) for _ in range(rounds)])


def bench_mounts(base: Path, depths: list[int], rounds: int) -> None:
    print("\nmount of the top of a chain of empty layers (median ms; ratios graphdriver/containers-storage)")
    print(f"  (starting Python and importing the CLI alone: {interpreter_start(rounds):.1f} ms)")
    print(f"  {'depth':>5}  {'driver.get':>10}  {'gd mount':>9}  {'cs mount':>9}  {'CLI ratio':>9}  "
          f"{'get/cs':>7}")
    for depth in depths:
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            store = gd_store(work)
            parent = None
            for i in range(depth):
                store.create(f"l{i}", parent)
                parent = f"l{i}"
            top = f"l{depth - 1}"
            api: list[float] = []
            for _ in range(rounds):
                api.append(timed(lambda: store.driver.get(top)))  # noqa: B023
                store.driver.put(top)
            cli = []
            for _ in range(rounds):
                cli.append(timed(lambda: gd(work, "mount", top)))  # noqa: B023
                gd(work, "unmount", top)
            cs_top, why = cs_chain(work, depth)
            cs_times: list[float] = []
            if cs_top is not None:
                for _ in range(rounds):
                    try:
                        cs_times.append(timed(lambda: cs(work, "mount", cs_top)))  # noqa: B023
                    except subprocess.CalledProcessError as e:
                        why = f"mount failed: {e.stderr.decode().strip()[-120:]}"
                        break
                    cs(work, "unmount", cs_top)
            cs_med = median_ms(cs_times) if cs_times and not why else None
            cs_text = f"{cs_med:9.1f}" if cs_med else f"{'fails':>9}"
            print(f"  {depth:5d}  {median_ms(api):10.2f}  {median_ms(cli):9.1f}  {cs_text}  "
                  f"{ratio(median_ms(cli), cs_med):>9}  {ratio(median_ms(api), cs_med):>7}"
                  + (f"   (containers-storage: {why})" if why else ""))
        finally:
            cleanup(work)


# ----- changes ------------------------------------------------------------------------------------


def base_tar(files: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(100):
            info = tarfile.TarInfo(f"tree/d{d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for i in range(files):
            info = tarfile.TarInfo(f"tree/d{i % 100}/f{i}")
            info.size = 8
            tf.addfile(info, io.BytesIO(b"%08d" % i))
    return buf.getvalue()


def ten_changes(root: Path) -> None:
    for i in range(4):
        (root / "tree" / f"d{i}" / f"f{i}").write_bytes(b"changed")
    for i in range(4, 7):
        (root / "tree" / f"d{i}" / f"added{i}").write_bytes(b"new")
    for i in range(7, 10):
        (root / "tree" / f"d{i}" / f"f{i}").unlink()


def bench_changes(base: Path, files: int, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        tar = work / "base.tar"
        tar.write_bytes(base_tar(files))
        store = gd_store(work)
        store.import_layer("base", None, io.BytesIO(tar.read_bytes()))
        store.create("ctr", "base", writable=True)
        ten_changes(Path(store.mount("ctr")))
        store.unmount("ctr")
        cs_base = cs(work, "import-layer", "-f", str(tar)).stdout.decode().split()[-1]
        cs_ctr = cs(work, "create-layer", cs_base).stdout.decode().split()[-1]
        ten_changes(Path(cs(work, "mount", cs_ctr).stdout.decode().strip()))
        cs(work, "unmount", cs_ctr)
        native = [timed(lambda: store.changes("ctr")) for _ in range(rounds)]
        drv = store.driver
        walk = [timed(lambda: content.changes(drv, "ctr", "base", native=False)) for _ in range(rounds)]
        cli = [timed(lambda: gd(work, "changes", "ctr")) for _ in range(rounds)]
        theirs = [timed(lambda: cs(work, "changes", cs_ctr)) for _ in range(rounds)]
        n, w, c, t = (median_ms(x) for x in (native, walk, cli, theirs))
        print(f"\nchanges of 10 changed files over a {files:,}-file base (median ms)")
        print(f"  native (in-process)       {n:9.2f}")
        print(f"  generic walk (in-process) {w:9.2f}   native/walk = {n / w:.4f}")
        print(f"  graphdriver changes       {c:9.1f}")
        print(f"  containers-storage changes{t:9.1f}   graphdriver/containers-storage = {c / t:.2f}")
    finally:
        cleanup(work)


# ----- a container layer of many changed files ---------------------------------------------------


def rewrite(root: Path, files: int) -> None:
    """What a process in the container does: every file of :func:`base_tar` written anew."""
    for i in range(files):
        (root / "tree" / f"d{i % 100}" / f"f{i}").write_bytes(b"changed %d\n" % i)


def run_out(cmd: list[str]) -> str:
    return subprocess.run(cmd, env=ENV, check=True, capture_output=True).stdout.decode().strip()


def container_layers(work: Path, driver: str, files: int) -> tuple[str, str]:
    """The same container layer in both stores: graphdriver's id, containers-storage's id."""
    tar = work / "base.tar"
    tar.write_bytes(base_tar(files))
    run_out(gd_cmd(work, driver, "import", "base", str(tar)))
    run_out(gd_cmd(work, driver, "create", "ctr", "--parent", "base", "--rw"))
    rewrite(Path(run_out(gd_cmd(work, driver, "mount", "ctr"))), files)
    run_out(gd_cmd(work, driver, "unmount", "ctr"))
    cs_base = run_out(cs_cmd(work, driver, "import-layer", "-f", str(tar))).split()[-1]
    cs_ctr = run_out(cs_cmd(work, driver, "create-layer", cs_base)).split()[-1]
    rewrite(Path(run_out(cs_cmd(work, driver, "mount", cs_ctr))), files)
    run_out(cs_cmd(work, driver, "unmount", cs_ctr))
    tar.unlink()
    return "ctr", cs_ctr


def bench_container(base: Path, files: int, rounds: int, drivers: list[str]) -> None:
    for driver in drivers:
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            gd_ctr, cs_ctr = container_layers(work, driver, files)
            sizes = (run_out(gd_cmd(work, driver, "diffsize", gd_ctr)),
                     run_out(cs_cmd(work, driver, "diffsize", cs_ctr)))
            lines = (len(run_out(gd_cmd(work, driver, "changes", gd_ctr)).splitlines()),
                     len(run_out(cs_cmd(work, driver, "changes", cs_ctr)).splitlines()))
            print(f"\ncontainer layer on {driver}, {files:,} files of the base rewritten: diffsize "
                  f"{sizes[0]} and {sizes[1]}, changes {lines[0]:,} and {lines[1]:,} lines "
                  "(graphdriver and containers-storage)")
            ops = {
                "changes": (["changes", gd_ctr], ["changes", cs_ctr]),
                "diff": (["diff", gd_ctr, "-o", os.devnull], ["diff", "-u", "-f", os.devnull, cs_ctr]),
                "diffsize": (["diffsize", gd_ctr], ["diffsize", cs_ctr]),
            }
            for op, (mine, theirs) in ops.items():
                gd_op, cs_op = gd_cmd(work, driver, *mine), cs_cmd(work, driver, *theirs)
                tools = {
                    "graphdriver": lambda c=gd_op: timed(lambda: run_out(c)),
                    "containers-storage": lambda c=cs_op: timed(lambda: run_out(c)),
                }
                report(f"{op} of that layer ({driver})", take_turns(tools, rounds))
        finally:
            remove_work(work)


# ----- import and export ---------------------------------------------------------------------------


def bench_import_export(base: Path, layer: Path, rounds: int) -> None:
    imp: dict[str, list[float]] = {"graphdriver": [], "containers-storage": []}
    exp: dict[str, list[float]] = {"graphdriver": [], "containers-storage": []}
    for _ in range(rounds):
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            imp["graphdriver"].append(timed(lambda: gd(work, "import", "layer", str(layer))))  # noqa: B023
            out = []
            imp["containers-storage"].append(
                timed(lambda: out.append(cs(work, "import-layer", "-f", str(layer))))  # noqa: B023
            )
            cs_id = out[0].stdout.decode().split()[-1]
            exp["graphdriver"].append(timed(lambda: gd(work, "diff", "layer", "-o", os.devnull)))  # noqa: B023
            exp["containers-storage"].append(
                timed(lambda: cs(work, "diff", "-f", os.devnull, cs_id))  # noqa: B023
            )
        finally:
            cleanup(work)
    print(f"\nimport and export of {layer.name} ({layer.stat().st_size / 2**20:.0f} MiB), median s")
    for what, times in (("import", imp), ("export", exp)):
        mine, theirs = (statistics.median(times[k]) for k in ("graphdriver", "containers-storage"))
        print(f"  {what}: graphdriver {mine:6.3f}  containers-storage {theirs:6.3f}  "
              f"ratio {mine / theirs:.2f}")


# ----- plumbing -------------------------------------------------------------------------------------


def cleanup(work: Path) -> None:
    if (work / "cs").exists():
        for cmd in ("wipe", "shutdown"):
            subprocess.run(["containers-storage", "--graph", str(work / "cs"), "--run", str(work / "cs-run"),
                            "--storage-driver", "overlay", cmd], check=False, capture_output=True)
    for point in mounts_below(str(work)):
        unmount(point)
    shutil.rmtree(work, ignore_errors=True)


def default_layer() -> Path | None:
    tar = CACHE / "debian-minbase.tar"
    return tar if tar.exists() else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--depths", default="1,10,128,500")
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--layer", type=Path, default=None)
    p.add_argument("--container-files", type=int, default=100_000)
    p.add_argument("--container-drivers", default="overlay", help="comma-separated: overlay,vfs")
    p.add_argument("--skip", default="", help="comma-separated: mount,changes,container,import")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root: both tools mount with the kernel's overlay", file=sys.stderr)
        return 2
    if shutil.which("containers-storage") is None:
        print("containers-storage is not installed (apt-get install containers-storage)", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    base = Path(tempfile.mkdtemp(prefix="gd-overlay-bench-", dir=os.environ.get("BENCH_DISK_DIR")))
    try:
        if "mount" not in skip:
            bench_mounts(base, [int(x) for x in args.depths.split(",")], args.rounds)
        if "changes" not in skip:
            bench_changes(base, args.files, args.rounds)
        if "container" not in skip:
            bench_container(base, args.container_files, max(3, args.rounds // 2),
                            args.container_drivers.split(","))
        layer = args.layer or default_layer()
        if "import" not in skip:
            if layer is None:
                print("\nimport/export skipped: no --layer and no cached Debian minbase tarball "
                      "(run bench/import_bench.py once to make it)")
            else:
                bench_import_export(base, layer, max(3, args.rounds // 2))
    finally:
        cleanup(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

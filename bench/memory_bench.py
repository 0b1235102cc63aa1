#!/usr/bin/env python3
"""Peak memory of ``graphdriver import`` and ``graphdriver diff`` on a synthetic 2 GiB layer.

The layer (a few big files and many small ones, directories, links) is
written on the fly to a file on disk and deleted afterwards.  Each command's
peak resident set size is the largest of its process tree (``wait4``'s
``ru_maxrss`` covers the children it waited for: the confined extractor
too).  The target is 64 MiB whatever the layer size:

    python bench/memory_bench.py [--size-gib 2] [--dir DIR] [--peers]

GNU time (``/usr/bin/time``) reports the peaks.  ``--peers`` measures
``containers-storage import-layer`` and ``tar-split asm`` on the same layer
for comparison.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import ENV, cs_cmd, gd, gd_cmd, have, remove_work
from graphdriver.layerio.entry import DIR, LNK, REG, SYM, TarEntry
from graphdriver.layerio.tarstream import TarWriter

TARGET_MIB = 64
_POOL = random.Random(42).randbytes(8 << 20)  # file contents: slices of this, at varying offsets


class _Slices:
    """A file object reading *size* bytes of the pool from *offset*, wrapping around."""

    def __init__(self, size: int, offset: int) -> None:
        self._left = size
        self._offset = offset % len(_POOL)

    def read(self, n: int) -> bytes:
        n = min(n, self._left, len(_POOL) - self._offset)
        out = _POOL[self._offset : self._offset + n]
        self._offset = (self._offset + n) % len(_POOL)
        self._left -= n
        return out


def make_layer(path: Path, size: int) -> tuple[int, int]:
    """Write a layer of about *size* bytes of file content; returns (files, bytes)."""
    rng = random.Random(7)
    big = [size * 9 // 40, size * 6 // 40, size * 4 // 40]  # about half the content in three files
    # Files that reassembly checks whole before writing them (up to 16 MiB).
    mid = [min((6 + i % 10) << 20, size // 64) for i in range(16)]
    small_total = size - sum(big) - sum(mid)
    files = written = 0
    with open(path, "wb") as f:
        w = TarWriter(f)
        mtime = 1_700_000_000 * 10**9
        for d in range(256):
            w.add(TarEntry(f"usr/share/d{d:03d}/", type=DIR, mode=0o755, mtime_ns=mtime))
        for i, n in enumerate(big + mid):
            w.add(TarEntry(f"opt/big{i}.bin", type=REG, size=n, mtime_ns=mtime), _Slices(n, i * 4099))
            files, written = files + 1, written + n
        i = 0
        while small_total > 0:
            n = min(rng.choice((512, 3000, 9000, 40_000, 130_000)) + rng.randrange(512), small_total)
            name = f"usr/share/d{i % 256:03d}/f{i:06d}"
            w.add(TarEntry(name, type=REG, size=n, mode=0o644, mtime_ns=mtime + i), _Slices(n, i * 7919))
            if i % 50 == 0:
                w.add(TarEntry(name + ".lnk", type=SYM, linkname=f"f{i:06d}", mtime_ns=mtime))
            if i % 97 == 0:
                w.add(TarEntry(name + ".hard", type=LNK, linkname=name, mtime_ns=mtime))
            files, written, small_total, i = files + 1, written + n, small_total - n, i + 1
        w.close()
    return files, written


def peak_rss(cmd: list[str], env: dict[str, str] | None = None, stdout: int | None = None,
             stderr: int | None = None) -> tuple[float, float]:
    """(peak RSS in MiB of *cmd*'s process tree, wall seconds).

    Measured by GNU time, not by this process: a child forked from here would
    count this interpreter's pages in its peak until it executes the command.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd], env=env, stdout=stdout,
                       stderr=stderr, check=True)
        seconds = time.perf_counter() - start
        kib = int(report.read().split()[-1])
    return kib / 1024, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gib", type=float, default=2.0)
    p.add_argument("--dir", type=Path, default=os.environ.get("BENCH_DISK_DIR"),
                   help="where the layer and the stores go (a disk; default: the temp dir)")
    p.add_argument("--peers", action="store_true")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gd-memory-bench-", dir=args.dir))
    try:
        layer = base / "layer.tar"
        t = time.perf_counter()
        files, content = make_layer(layer, int(args.size_gib * 2**30))
        print(f"synthetic layer: {layer.stat().st_size / 2**30:.2f} GiB, {files} files, "
              f"{content / 2**30:.2f} GiB of content (made in {time.perf_counter() - t:.1f} s)")
        results: dict[str, tuple[float, float]] = {}
        work = base / "work"
        results["graphdriver import"] = peak_rss(
            gd_cmd(work, "vfs", "import", "layer", str(layer)), ENV, subprocess.DEVNULL)
        out = base / "out.tar"
        results["graphdriver diff"] = peak_rss(gd_cmd(work, "vfs", "diff", "layer", "-o", str(out)), ENV)
        # The export checks its own DiffID; the size is a cheap sanity check on top.
        same = out.stat().st_size == layer.stat().st_size
        out.unlink()
        gd(work, "vfs", "remove", "layer")
        if args.peers:
            if have("containers-storage"):
                results["containers-storage import-layer"] = peak_rss(
                    cs_cmd(work, "vfs", "import-layer", "-f", str(layer)), None, subprocess.DEVNULL)
                remove_work(work)
            if have("tar-split"):
                meta, files_dir = base / "meta.gz", base / "files"
                files_dir.mkdir()
                with open(layer, "rb") as src:
                    subprocess.run(["tar-split", "disasm", "--output", str(meta), "-"], stdin=src,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                subprocess.run(["tar", "-xpf", str(layer), "-C", str(files_dir)], check=True)
                asm = ["tar-split", "asm", "--input", str(meta), "--path", str(files_dir),
                       "--output", str(out)]
                results["tar-split asm"] = peak_rss(asm, stderr=subprocess.DEVNULL)
        print(f"\npeak RSS (process tree), target {TARGET_MIB} MiB for graphdriver:")
        for name, (rss, seconds) in results.items():
            verdict = ("ok" if rss <= TARGET_MIB else "OVER") if name.startswith("graphdriver") else ""
            print(f"  {name:34s} {rss:7.1f} MiB  {seconds:6.1f} s  {verdict}")
        if not same:
            print("  warning: the export's size differs from the layer's")
    finally:
        remove_work(base / "work")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

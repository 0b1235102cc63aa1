#!/usr/bin/env python3
"""Compressed export of one imported layer, side by side: graphdriver diff --compress, containers-storage
diff -c, zstd -T0 and gzip.

The Debian layer is imported once into a graphdriver store and a
containers-storage store (vfs, on tmpfs); then, in turns, each tool writes
the compressed layer to a file on the same tmpfs: ``graphdriver diff
--compress gzip`` and ``--compress zstd`` (which also rebuild the tarball
bit for bit from tar-split), ``containers-storage diff -c`` (gzip), and
``zstd -T0`` and ``gzip`` compressing the tarball file itself.  Prints medians
and ratios.  Run as root:

    python bench/compress_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from pathlib import Path

from common import (
    ENV,
    cs_cmd,
    debian_layer,
    gd,
    gd_cmd,
    graphdriver_command,
    have,
    mib,
    place,
    report,
    take_turns,
    timed,
    warm,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    graphdriver_command()
    layer = warm(debian_layer())
    with place("tmpfs") as base:
        gd(base, "vfs", "import", "layer", str(layer))
        cs_id = ""
        if have("containers-storage"):
            out = subprocess.run(cs_cmd(base, "vfs", "import-layer", "-f", str(layer)), check=True,
                                 capture_output=True, text=True).stdout.split()
            cs_id = out[-1] if out else ""
        out_file = base / "out"

        def shell(cmd: list[str], stdin: Path | None = None) -> Callable[[], float]:
            def run() -> float:
                def go() -> None:
                    with open(out_file, "wb") as f:
                        src = open(stdin, "rb") if stdin else None
                        try:
                            subprocess.run(cmd, stdout=f, stdin=src, env=ENV, check=True)
                        finally:
                            if src:
                                src.close()
                return timed(go, sync=base)
            return run

        tools = {
            "graphdriver-gzip": shell(gd_cmd(base, "vfs", "diff", "layer", "--compress", "gzip")),
            "graphdriver-zstd": shell(gd_cmd(base, "vfs", "diff", "layer", "--compress", "zstd")),
        }
        if cs_id:
            tools["containers-storage-diff-c"] = shell(cs_cmd(base, "vfs", "diff", "-c", cs_id))
        if have("zstd"):
            tools["zstd-T0"] = shell(["zstd", "-T0", "-q", "-c"], stdin=layer)
        tools["gzip"] = shell(["gzip", "-c"], stdin=layer)
        report(f"compressed export of {layer.name} ({mib(layer)}) on tmpfs", take_turns(tools, args.rounds))
        subprocess.run(cs_cmd(base, "vfs", "shutdown"), check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A real Debian root filesystem through ``graphdriver import``, against GNU tar."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from graphdriver.testing.treeutil import assert_same_tree, snapshot
from tests.conftest import needs_root, run_cli

pytestmark = [pytest.mark.slow, needs_root]


def test_debian_minbase_matches_gnu_tar(minbase_tar: Path, tmp_path: Path, driver_name: str):
    ref = tmp_path / "gnutar"
    ref.mkdir()
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(minbase_tar),
         "-C", str(ref)],
        check=True,
    )
    root = tmp_path / "store"
    r = run_cli("import", "debian", str(minbase_tar), root=root, driver=driver_name)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 100_000_000
    r = run_cli("mount", "debian", root=root)
    assert r.returncode == 0, r.stderr
    mnt = r.stdout.decode().strip()
    try:
        assert_same_tree(snapshot(mnt), snapshot(str(ref)))
    finally:
        assert run_cli("unmount", "debian", root=root).returncode == 0
    # Its changes list every path once, as additions.
    r = run_cli("changes", "debian", root=root)
    lines = r.stdout.decode().splitlines()
    assert lines and all(line.startswith("A /") for line in lines)
    assert len(lines) == len(snapshot(str(ref), times=False)) - 1

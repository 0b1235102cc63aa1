"""A store whose filesystem is full: its layers stay readable, and removing them frees space.

The store lives on an ext4 filesystem of a few megabytes and a hundred inodes, filled to the last
block or the last inode before the commands run, each with a new run root (as after a reboot,
so the driver's probe runs again on the full filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphdriver.store.layers import Store, StoreOptions
from graphdriver.testing.treeutil import D, F, make_tar
from tests.conftest import ROOT, needs_root, run_cli

pytestmark = needs_root

BASE = (ROOT / "samples" / "base.tar.gz").read_bytes()
MIDDLE = make_tar({"opt": D(), "opt/data": F(os.urandom(300_000))})


@contextlib.contextmanager
def small_ext4(where: Path) -> Iterator[Path]:
    """A new 8 MB ext4 filesystem of 128 inodes, no blocks reserved for root, mounted at *where*."""
    image = where.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", "128", str(image)], check=True)
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-d", str(where)], check=False)


def fill(where: Path, what: str) -> None:
    """Use up the last block (and then, for "inodes", the last inode) of the filesystem at *where*."""
    for n, size in enumerate((1 << 16, 1 << 12, 1)):  # to the last block
        with contextlib.suppress(OSError), open(where / f"filler-{n}", "wb", buffering=0) as f:
            while True:
                f.write(bytes(size))
    if what == "inodes":
        os.unlink(where / "filler-0")  # blocks to spare: only the inodes run out
        for n in range(100_000):
            try:
                os.close(os.open(where / f"empty-{n}", os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    with pytest.raises(OSError):
        os.mkdir(where / "one-more")


@pytest.mark.parametrize("what", ["blocks", "inodes"])
@pytest.mark.parametrize("driver", ["vfs", "overlay"])
def test_a_full_store_reads_its_layers_and_removes_them(tmp_path, driver, what):
    """A full filesystem stopped every command at the driver's probe (exit 7, "cannot create
    directories"), and ``remove``, the way to free space, failed writing its pending marker."""
    with small_ext4(tmp_path / "fs") as fs:
        root = fs / "store"

        def gd(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
            runs = len(list(tmp_path.glob("run-*")))  # a new run root each time: the probe runs
            return run_cli(*args, root=root, run_root=tmp_path / f"run-{runs}", driver=driver, input=input)

        assert gd("import", "base", "-", input=BASE).returncode == 0
        assert gd("import", "mid", "--parent", "base", "-", input=MIDDLE).returncode == 0
        assert gd("create", "ctr", "--parent", "mid", "--rw").returncode == 0
        (tmp_path / "run-0").mkdir(exist_ok=True)
        fill(fs, what)
        layer = gd("layer", "mid")
        assert layer.returncode == 0, layer.stderr
        assert gd("diff", "mid").stdout == MIDDLE
        # An output on the full filesystem is its failure (1), not a usage error (2).
        out = gd("diff", "mid", "-o", str(fs / "out.tar"))
        assert out.returncode == 1 and b"No space left on device" in out.stderr, out.stderr
        assert not (fs / "out.tar").exists()
        assert gd("check").returncode == 0
        assert gd("changes", "ctr").returncode == 0
        status = run_cli("status", root=root, run_root=tmp_path / "run-status", driver=driver)
        assert status.returncode == 0
        if driver == "overlay":  # what the probe could not check, it says, and asks again
            assert b"Supports d_type: not checked (No space left on device)" in status.stdout
        for layer_id in ("ctr", "mid"):
            removed = gd("remove", layer_id)
            assert removed.returncode == 0, removed.stderr
        assert gd("layers").stdout == b"base\n"
        assert os.listdir(root / "pending") == []
        assert gd("diff", "base").returncode == 0
        if driver == "overlay":  # room again: the same run root's status has the probe's answer
            again = run_cli("status", root=root, run_root=tmp_path / "run-status", driver=driver).stdout
            assert b"Supports d_type: true" in again


@pytest.fixture
def one_layer(tmp_path: Path) -> tuple[StoreOptions, Store]:
    """A vfs store holding layer ``base``."""
    opts = StoreOptions(root=str(tmp_path / "s"), run_root=str(tmp_path / "run"), driver="vfs")
    store = Store(opts)
    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"x")})))
    return opts, store


def no_room(*_args: object, **_kwargs: object) -> None:
    """A write that finds the filesystem full (stands in for ``atomic.write_json``)."""
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_removal_marked_on_a_full_filesystem_is_finished_by_cleanup(one_layer, monkeypatch):
    """With no room for its marker, a removal marks itself with a second name of the layer's
    record; killed after that, the next cleanup finishes it."""
    from graphdriver.fs import atomic

    opts, store = one_layer
    monkeypatch.setattr(atomic, "write_json", no_room)
    store.records.mark_pending("base", "remove")  # and the process dies here
    marker = Path(opts.root, "pending", "base")
    assert marker.exists() and os.path.samefile(marker, Path(opts.root, "layers", "base.json"))
    monkeypatch.undo()
    for fd in store.records._held.values():  # the process is dead: its locks are free
        os.close(fd)
    store.records._held.clear()
    assert not Store(opts).exists("base")  # opening the store cleans up
    assert os.listdir(Path(opts.root, "pending")) == []
    assert os.listdir(Path(opts.root, "layers")) == []


def test_a_marker_that_finds_no_room_leaves_no_lock_behind(one_layer, monkeypatch):
    """A create whose pending marker cannot be written (a full filesystem) fails, and leaves
    no lock file that the next command would report as a stray lock it removed."""
    from graphdriver.errors import GraphDriverError
    from graphdriver.fs import atomic

    opts, store = one_layer
    monkeypatch.setattr(atomic, "write_json", no_room)
    with pytest.raises((OSError, GraphDriverError)):
        store.create("x", "base")
    monkeypatch.undo()
    assert os.listdir(Path(opts.root, "pending")) == []
    assert Store(opts).cleanup() == []

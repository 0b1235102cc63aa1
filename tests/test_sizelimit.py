"""``--size`` on overlay layers: enforced on ext4 and on xfs homes, cleaned up on remove."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.errors import InvalidArgument, Unsupported
from graphdriver.fs import mounts, sizelimit
from graphdriver.store.layers import Store, StoreOptions
from graphdriver.testing.treeutil import F, make_tar

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="needs root and loop devices",
)

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "xfs-prjquota": ["mkfs.xfs", "-q", "-f"],
}


def _release(path: Path) -> None:
    for point in mounts.mounts_below(str(path)):
        mounts.unmount(point)


@pytest.fixture(params=["ext4", "xfs", "xfs-prjquota"])
def home_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh filesystem of the given type, loop-mounted, to keep a store on.

    ``xfs-prjquota`` is XFS with project quotas, where the kernel can do them
    (then the quota enforces ``--size``, not an image).
    """
    fstype: str = request.param
    if shutil.which(MKFS[fstype][0]) is None:
        pytest.skip(f"{MKFS[fstype][0]} is not installed")
    image = tmp_path / f"{fstype}.img"
    with open(image, "wb") as f:
        f.truncate(512 * MiB)  # sparse; xfs wants at least 300 MiB
    subprocess.run([*MKFS[fstype], str(image)], check=True, capture_output=True)
    mnt = tmp_path / "fs"
    mnt.mkdir()
    options = "loop,prjquota" if fstype == "xfs-prjquota" else "loop"
    if subprocess.run(["mount", "-o", options, str(image), str(mnt)], capture_output=True).returncode:
        pytest.skip(f"cannot mount {fstype} here (no XFS quota support in this kernel?)")
    try:
        yield mnt
    finally:
        _release(mnt)
        subprocess.run(["umount", str(mnt)], check=False)


def _store(root: Path) -> Store:
    return Store(StoreOptions(root=str(root / "store"), run_root=str(root / "run"), driver="overlay"))


def _fill(path: str, nbytes: int) -> None:
    chunk = b"\xa5" * MiB  # not zeros: no filesystem may compress or dedupe them away
    with open(path, "wb") as f:
        for _ in range(nbytes // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def test_size_is_enforced(home_fs):
    store = _store(home_fs)
    quota = mounts.filesystem_of(str(home_fs)).super_options.find("prjquota") >= 0
    assert store.driver.size_method is (sizelimit.Method.QUOTA if quota else sizelimit.Method.IMAGE)
    store.create("base")
    store.create("ctr", "base", writable=True, size="32M")
    folder = store.driver.resolve("ctr")
    assert store.driver.metadata("ctr")["SizeLimit"] == str(32 * MiB)
    root = store.mount("ctr")
    try:
        _fill(os.path.join(root, "fits"), 16 * MiB)
        with pytest.raises(OSError) as e:
            _fill(os.path.join(root, "too-much"), 40 * MiB)
        assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
        os.unlink(os.path.join(root, "too-much"))
    finally:
        store.unmount("ctr")
    assert [c.path for c in store.changes("ctr")] == ["/fits"]
    if not quota:
        # The image is sparse: the home holds what was written, not the limit.
        image = os.path.join(folder, sizelimit.IMAGE_FILE)
        assert os.stat(image).st_blocks * 512 < 32 * MiB
    store.remove("ctr")
    assert not os.path.exists(folder)
    assert not any(p.startswith(str(home_fs / "store")) for p in mounts.mounts_below(str(home_fs)))
    store.remove("base")


@pytest.mark.parametrize("home_fs", ["ext4"], indirect=True)
def test_size_driver_option_limits_writable_layers_created_without_size(home_fs):
    """--opt size=... as containers-storage's overlay.size: the limit of writable layers that
    name none; --size wins; image layers are not limited."""
    store = Store(StoreOptions(root=str(home_fs / "store"), run_root=str(home_fs / "run"),
                               driver="overlay", driver_options={"size": "32M"}))
    store.create("base")
    store.create("ctr", "base", writable=True)
    store.create("own", "base", writable=True, size="48M")
    assert store.driver.metadata("ctr")["SizeLimit"] == str(32 * MiB)
    assert store.driver.metadata("own")["SizeLimit"] == str(48 * MiB)
    assert "SizeLimit" not in store.driver.metadata("base")
    limit = f"32M ({32 * MiB} bytes) for writable layers without --size"
    assert ("Default Size Limit", limit) in store.status()
    root = store.mount("ctr")
    try:
        with pytest.raises(OSError) as e:
            _fill(os.path.join(root, "too-much"), 40 * MiB)
        assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        store.unmount("ctr")
    for layer_id in ("ctr", "own", "base"):
        store.remove(layer_id)
    with pytest.raises(InvalidArgument):  # parsed as --size is, and as small a limit refused
        store2 = Store(StoreOptions(root=str(home_fs / "store"), run_root=str(home_fs / "run"),
                                    driver="overlay", driver_options={"size": "1k"}))
        store2.create("tiny", None, writable=True)


def test_apply_past_the_limit_fails(home_fs):
    store = _store(home_fs)
    store.create("ctr", None, writable=True, size="16M")
    with pytest.raises(Exception) as e:
        store.apply("ctr", io.BytesIO(make_tar({"big": F(b"x" * (24 * MiB))})))
    assert "space" in str(e.value).lower() or "quota" in str(e.value).lower()


def test_lost_image_mount_is_remounted(home_fs):
    store = _store(home_fs)
    if store.driver.size_method is not sizelimit.Method.IMAGE:
        pytest.skip("no image under a project quota")
    store.create("ctr", None, writable=True, size="16M")
    folder = store.driver.resolve("ctr")
    root = store.mount("ctr")
    Path(root, "kept").write_bytes(b"kept")
    store.unmount("ctr")
    # As after a reboot: the image's mount (and loop device) are gone.
    mounts.unmount(os.path.join(folder, sizelimit.IMAGE_MOUNT))
    assert not os.path.exists(os.path.join(folder, "diff", "kept"))
    root = store.mount("ctr")
    try:
        assert Path(root, "kept").read_bytes() == b"kept"
    finally:
        store.unmount("ctr")
    store.remove("ctr")


def test_lost_image_mount_is_remounted_for_a_child_and_for_check(home_fs):
    """After a reboot a size-limited layer's image is not mounted: making a child on it,
    checking it and giving its imported tarball back mount it again, as mount and changes do,
    instead of calling the layer's files missing (exit 6)."""
    store = _store(home_fs)
    if store.driver.size_method is not sizelimit.Method.IMAGE:
        pytest.skip("no image under a project quota")
    tar = make_tar({"kept": F(b"kept")})
    store.create("ctr", None, writable=True, size="16M")
    store.apply("ctr", io.BytesIO(tar))  # fresh: recorded as an import
    folder = store.driver.resolve("ctr")

    def reboot() -> None:
        mounts.unmount(os.path.join(folder, sizelimit.IMAGE_MOUNT))

    reboot()
    assert store.check(["ctr"]) == [("ctr", None)]
    reboot()
    out = io.BytesIO()
    store.diff("ctr", out)
    assert out.getvalue() == tar
    reboot()
    store.create("child", "ctr", writable=True)
    root = store.mount("child")
    try:
        assert Path(root, "kept").read_bytes() == b"kept"
    finally:
        store.unmount("child")
    for layer_id in ("child", "ctr"):
        store.remove(layer_id)


def test_lost_image_mount_of_a_parent_is_remounted_for_an_apply(home_fs):
    """An apply to a child of a size-limited layer after a reboot looks at the layers below
    through the parent's image, which was not mounted again: the apply failed (exit 1) and
    left the child damaged."""
    store = _store(home_fs)
    if store.driver.size_method is not sizelimit.Method.IMAGE:
        pytest.skip("no image under a project quota")
    store.create("ctr", None, writable=True, size="16M")
    store.apply("ctr", io.BytesIO(make_tar({"gone": F(b"x"), "kept": F(b"kept")})))
    store.create("child", "ctr", writable=True)
    mounts.unmount(os.path.join(store.driver.resolve("ctr"), sizelimit.IMAGE_MOUNT))  # a reboot
    store.apply("child", io.BytesIO(make_tar({".wh.gone": F(b"")})))
    assert [str(c) for c in store.changes("child")] == ["D /gone"]
    root = store.mount("child")
    try:
        assert sorted(os.listdir(root)) == ["kept"]
    finally:
        store.unmount("child")
    for layer_id in ("child", "ctr"):
        store.remove(layer_id)


def test_lost_image_mount_below_the_parent_is_remounted_for_a_child_of_other_maps(home_fs):
    """A child with other id maps than its parent looks at every layer below it when it is
    made: a size-limited one whose image lost its mount (a reboot) failed the create (exit 1)."""
    from graphdriver.idmap import IDMappings

    store = _store(home_fs)
    if store.driver.size_method is not sizelimit.Method.IMAGE:
        pytest.skip("no image under a project quota")
    store.create("ctr", None, writable=True, size="16M")
    store.apply("ctr", io.BytesIO(make_tar({"kept": F(b"kept")})))
    store.create("mid", "ctr", writable=True)
    mounts.unmount(os.path.join(store.driver.resolve("ctr"), sizelimit.IMAGE_MOUNT))  # a reboot
    store.create("child", "mid", writable=True, idmaps=IDMappings.parse("0:100000:65536", "0:100000:65536"))
    root = store.mount("child")
    try:
        assert os.stat(os.path.join(root, "kept")).st_uid == 100000
    finally:
        store.unmount("child")
    for layer_id in ("child", "mid", "ctr"):
        store.remove(layer_id)


def _remount_together(barrier: Any, folder: str) -> None:
    barrier.wait()
    sizelimit.ensure_mounted(folder)


def test_lost_image_mount_is_remounted_once_by_commands_at_once(home_fs):
    """Commands reading a size-limited layer at once after a reboot mounted its image once
    each, stacked on one another (one filesystem on several loop devices), and remove then
    failed with the image still mounted, leaving the layer half removed."""
    store = _store(home_fs)
    if store.driver.size_method is not sizelimit.Method.IMAGE:
        pytest.skip("no image under a project quota")
    store.create("ctr", None, writable=True, size="16M")
    folder = store.driver.resolve("ctr")
    target = os.path.join(folder, sizelimit.IMAGE_MOUNT)
    ctx = multiprocessing.get_context("fork")
    for _ in range(4):
        mounts.unmount(target)  # as after a reboot
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_remount_together, args=(barrier, folder)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        assert [p.exitcode for p in procs] == [0] * 6
        stacked = [m for m in mounts.read_mountinfo() if m.mount_point == os.path.realpath(target)]
        assert len(stacked) == 1
    store.remove("ctr")
    assert not os.path.exists(folder)
    assert mounts.mounts_below(str(home_fs / "store")) == []


@pytest.mark.parametrize("home_fs", ["ext4"], indirect=True)
def test_without_mkfs_ext4_limits_are_xfs_images_and_refusals_say_why(home_fs, monkeypatch):
    """As root without mkfs.ext4, every limit was refused because it "needs root", and status
    said so, though mkfs.xfs makes the images of limits from 300 MiB up."""
    real_which = shutil.which
    tools = {"mkfs.xfs"}
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: real_which(name, *a, **kw)
                        if name not in ("mkfs.ext4", "mkfs.xfs") or name in tools else None)
    store = _store(home_fs)
    store.create("base")
    store.create("big", "base", writable=True, size="320M")
    assert sizelimit.limit_of(store.driver.resolve("big")) == {
        "method": "image", "size": 320 * MiB, "fstype": "xfs"}
    with pytest.raises(Unsupported) as caught:
        store.create("small", "base", writable=True, size="32M")
    assert "mkfs.ext4" in str(caught.value) and "needs root" not in str(caught.value)
    assert [layer.id for layer in store.layers()] == ["base", "big"]
    tools.clear()  # no mkfs at all
    store = _store(home_fs)
    assert ("Size Limits", "unavailable (needs mkfs.ext4 or mkfs.xfs)") in store.driver.status()
    with pytest.raises(Unsupported) as caught:
        store.create("none", "base", writable=True, size="320M")
    assert "mkfs.ext4" in str(caught.value) and "needs root" not in str(caught.value)
    for layer_id in ("big", "base"):
        store.remove(layer_id)


def test_size_refused_where_it_means_nothing(tmp_path):
    store = _store(tmp_path)
    try:
        with pytest.raises(InvalidArgument):
            store.create("ro", size="64M")  # image layers are never written
        with pytest.raises(InvalidArgument):
            store.create("tiny", writable=True, size="1M")
        assert store.layers() == []
    finally:
        _release(tmp_path)


def test_quota_is_detected_only_where_enforced(tmp_path):
    info = mounts.filesystem_of(str(tmp_path))
    if info is not None and info.fstype == "xfs" and "prjquota" in info.super_options:
        pytest.skip("the test directory itself is on XFS with project quotas")
    assert sizelimit._quota_device(str(tmp_path)) is None
    assert sizelimit.choose_method(str(tmp_path)) is sizelimit.Method.IMAGE


@pytest.mark.parametrize("home_fs", ["ext4"], indirect=True)
def test_a_limit_over_the_free_space_is_made_and_said(home_fs):
    """The image is sparse: a limit over what the home's filesystem has free was made without
    a word, and the container met I/O errors of the full host disk before its limit."""
    from graphdriver.errors import set_warning_handler

    said: list[str] = []
    set_warning_handler(said.append)
    try:
        store = _store(home_fs)
        store.create("base")
        store.create("fits", "base", writable=True, size="32M")
        assert said == []
        store.create("big", "base", writable=True, size="2G")  # the home holds 512 MiB
        assert len(said) == 1 and "size limit of 2147483648 bytes" in said[0] and "bytes are free" in said[0]
    finally:
        set_warning_handler(None)
    for layer_id in ("big", "fits", "base"):
        store.remove(layer_id)


@pytest.mark.parametrize("home_fs", ["ext4"], indirect=True)
def test_a_limit_larger_than_the_home_can_hold_a_file_of_is_unsupported_here(home_fs):
    """ext4 holds no file over 16 TiB: the image of a 20T limit cannot be made there, a
    limit of the filesystem (7), not a failure with the kernel's bare "File too large" (1)."""
    store = _store(home_fs)
    store.create("base")
    with pytest.raises(Unsupported) as caught:
        store.create("huge", "base", writable=True, size="20T")
    assert "cannot hold" in str(caught.value) and "File too large" in str(caught.value)
    assert [layer.id for layer in store.layers()] == ["base"]
    assert mounts.mounts_below(str(home_fs / "store")) == []
    store.remove("base")

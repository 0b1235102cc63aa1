"""Mount plumbing: the mount table, both overlay mount APIs, lazy unmounts, bind mounts."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphdriver.fs import mounts

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mounts)")

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:25 / /tmp/with\\040space rw - tmpfs tmpfs rw,size=100k
31 22 0:26 / /srv/ovl rw,relatime - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w
32 22 0:27 / /srv/ovl rw,relatime - overlay overlay rw,lowerdir=/c,upperdir=/u2,workdir=/w2
33 22 0:28 / /srv/fuse rw,nosuid shared:7 master:2 - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0
garbage line
"""


@pytest.fixture
def table(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


# ----- the mount table ----------------------------------------------------------------------


def test_parse_line_with_optional_fields():
    info = mounts.parse_mountinfo_line(MOUNTINFO.splitlines()[4])
    assert info is not None
    assert (info.mount_id, info.parent_id) == (33, 22)
    assert info.mount_point == "/srv/fuse"
    assert info.fstype == "fuse.fuse-overlayfs"
    assert info.source == "fuse-overlayfs"
    assert info.super_options == "rw,user_id=0"


def test_malformed_lines_are_skipped(table):
    assert len(mounts.read_mountinfo(table)) == 5
    assert mounts.parse_mountinfo_line("1 2 3") is None


def test_escapes_are_undone(table):
    assert mounts.mount_at("/tmp/with space", table).fstype == "tmpfs"
    assert mounts.unescape("a\\134b\\011c") == "a\\b\tc"


def test_stacked_mount_points_give_the_top_one(table):
    info = mounts.mount_at("/srv/ovl", table)
    assert info.mount_id == 32 and "lowerdir=/c" in info.super_options
    assert mounts.is_overlay_mount("/srv/ovl", table)
    assert mounts.is_overlay_mount("/srv/fuse", table)
    assert not mounts.is_overlay_mount("/", table)
    assert mounts.mount_at("/srv", table) is None


def test_filesystem_of_is_the_longest_mount_point_above(table):
    assert mounts.filesystem_of("/srv/ovl/deep/file", table).mount_id == 32
    assert mounts.filesystem_of("/srv/other", table).fstype == "ext4"
    assert mounts.filesystem_of("/tmp/with space/x", table).fstype == "tmpfs"


def test_mounts_below_deepest_first(table):
    assert mounts.mounts_below("/srv", table) == ["/srv/ovl", "/srv/fuse"]


def test_real_table_has_the_root():
    assert mounts.filesystem_of("/") is not None
    assert mounts.is_mount_point("/")
    assert not mounts.is_mount_point("/proc/self")  # a symlink is never a mount point


# ----- option strings --------------------------------------------------------------------------


def test_option_string_escapes_separators():
    spec = mounts.OverlayMount(lowers=("/a:b", "/c,d"), upper="/u\\x", work="/w", options=("index=off",))
    assert mounts.overlay_options(spec) == (
        "lowerdir=/a\\:b:/c\\,d,upperdir=/u\\\\x,workdir=/w,index=off"
    )


def test_option_string_names_layers_relative_to_base():
    spec = mounts.OverlayMount(lowers=("/home/.l/abcdef", "/other/.l/ghijkl"), upper="/home/x/diff",
                               work="/home/x/work", base="/home/.l")
    text = mounts.overlay_options(spec, spec.base)
    assert text.startswith("lowerdir=abcdef:/other/.l/ghijkl,")
    assert "upperdir=../x/diff" in text


def test_legacy_refuses_options_beyond_a_page(tmp_path):
    spec = mounts.OverlayMount(lowers=tuple(f"/nowhere/{i:0200d}" for i in range(40)))
    with pytest.raises(mounts.MountError) as e:
        mounts._mount_legacy(spec, str(tmp_path))
    assert e.value.errno == errno.E2BIG
    assert "6.8" in str(e.value)


# ----- real mounts --------------------------------------------------------------------------------


def _chain(base: Path, depth: int) -> mounts.OverlayMount:
    links = base / ".l"
    links.mkdir(parents=True)
    lowers = []
    for i in range(depth):
        d = base / f"d{i}"
        d.mkdir()
        (d / f"f{i}").write_bytes(b"%d" % i)
        (d / "top").write_bytes(b"%d" % i)
        (links / f"{i:06d}").symlink_to(f"../d{i}")
        lowers.append(str(links / f"{i:06d}"))
    for name in ("u", "w", "m"):
        (base / name).mkdir()
    return mounts.OverlayMount(
        lowers=tuple(lowers), upper=str(base / "u"), work=str(base / "w"),
        options=("index=off", "redirect_dir=off", "metacopy=off"), base=str(links),
    )


@pytest.fixture
def cleanup_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    for point in mounts.mounts_below(str(tmp_path)):
        mounts.unmount(point)


@needs_root
@pytest.mark.parametrize("api", ["fsopen", "mount"])
@pytest.mark.parametrize("depth", [1, 3, 500])
def test_overlay_mounts_with_either_api(tmp_path, cleanup_mounts, api, depth):
    spec = _chain(tmp_path, depth)
    target = str(tmp_path / "m")
    assert mounts.mount_overlay(spec, target, api=api) == api
    try:
        assert mounts.is_mount_point(target)
        assert mounts.is_overlay_mount(target)
        assert mounts.fs_magic(target) == mounts.OVERLAYFS_MAGIC
        names = os.listdir(target)
        assert len(names) == depth + 1
        # The nearest lower (the first) wins.
        assert (tmp_path / "m" / "top").read_bytes() == b"0"
        (tmp_path / "m" / "new").write_bytes(b"up")
        assert (tmp_path / "u" / "new").read_bytes() == b"up"
    finally:
        assert mounts.unmount(target) == "unmounted"
    assert not mounts.is_mount_point(target)


@needs_root
def test_new_api_passes_long_paths_by_descriptor(tmp_path, cleanup_mounts):
    deep = tmp_path / ("x" * 120) / ("y" * 120)
    deep.mkdir(parents=True)
    spec = _chain(deep, 2)
    spec = mounts.OverlayMount(lowers=tuple(str(Path(p).resolve()) for p in spec.lowers),
                               upper=spec.upper, work=spec.work, options=spec.options)
    assert all(len(p) >= mounts.FSCONFIG_VALUE_MAX for p in spec.lowers)
    target = str(deep / "m")
    mounts.mount_overlay(spec, target, api="fsopen")
    try:
        assert sorted(os.listdir(target)) == ["f0", "f1", "top"]
    finally:
        mounts.unmount(target)


@needs_root
def test_kernel_explains_a_failed_mount(tmp_path):
    spec = mounts.OverlayMount(lowers=(str(tmp_path / "missing"), str(tmp_path)))
    with pytest.raises(mounts.MountError) as e:
        mounts.mount_overlay(spec, str(tmp_path), api="fsopen")
    assert e.value.errno == errno.ENOENT
    assert "missing" in str(e.value) or "No such file" in str(e.value)


@needs_root
def test_too_many_layers_is_the_kernels_refusal_not_an_old_kernel(tmp_path):
    lowers = []
    for i in range(501):
        (tmp_path / f"d{i}").mkdir()
        lowers.append(str(tmp_path / f"d{i}"))
    (tmp_path / "m").mkdir()
    before = mounts.new_api_state()
    with pytest.raises(mounts.MountError) as e:
        mounts.mount_overlay(mounts.OverlayMount(tuple(lowers)), str(tmp_path / "m"))
    assert e.value.errno == errno.EINVAL and e.value.step == "lowerdir+#500"
    assert "500" in str(e.value)
    assert mounts.new_api_state() == before  # not taken for a kernel without lowerdir+


@needs_root
def test_busy_mount_is_detached(tmp_path, cleanup_mounts):
    spec = _chain(tmp_path, 2)
    target = str(tmp_path / "m")
    mounts.mount_overlay(spec, target)
    # A process living inside the mount keeps it busy.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], cwd=target,
                            stdin=subprocess.PIPE)
    try:
        time.sleep(0.1)
        fd = os.open(os.path.join(target, "f0"), os.O_RDONLY)
        try:
            assert mounts.unmount(target) == "detached"
            assert not mounts.is_mount_point(target)
            assert os.read(fd, 10) == b"0"  # the detached mount still serves its users
        finally:
            os.close(fd)
    finally:
        proc.communicate(b"")
    assert mounts.unmount(target) == "not mounted"


@needs_root
def test_unmount_of_a_plain_directory(tmp_path):
    assert mounts.unmount(str(tmp_path)) == "not mounted"
    assert not mounts.is_mount_point(str(tmp_path))
    assert not mounts.is_mount_point(str(tmp_path / "missing"))


@needs_root
def test_read_only_bind_mount(tmp_path, cleanup_mounts):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"x")
    mounts.bind_mount(str(src), str(dst), readonly=True)
    try:
        assert mounts.is_mount_point(str(dst))
        assert (dst / "f").read_bytes() == b"x"
        with pytest.raises(OSError) as e:
            (dst / "g").write_bytes(b"y")
        assert e.value.errno == errno.EROFS
    finally:
        mounts.unmount(str(dst))


@needs_root
@pytest.mark.parametrize("readonly", [True, False])
def test_bind_mount_flags(tmp_path, cleanup_mounts, readonly):
    """``mount(2)`` ignores flags on a new bind: they take the remount, read-only or not."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    mounts.bind_mount(str(src), str(dst), readonly=readonly, options=("nosuid", "nodev"))
    try:
        flags = os.statvfs(dst).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        assert bool(flags & os.ST_RDONLY) == readonly
    finally:
        mounts.unmount(str(dst))

"""copy_tree: a copy the tree walk and the exporter cannot tell from its source."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.fs import tree as treecopy
from graphdriver.fs.tree import CopyStats, copy_tree, reflink_supported, remove_tree
from tests.conftest import as_nobody

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, trusted xattrs)")
ROOTFS = Path.home() / ".cache" / "graphdriver" / "rootfs"

T1 = 1_500_000_000_123_456_789  # times with nanoseconds, distinct per use
T2 = 1_600_000_000_987_654_321


# ----- helpers ----------------------------------------------------------------------


def meta(root: Path, *, atime: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything a copy must keep, per path, without reading any file.

    Access times are compared for regular files only: listing a directory (as
    this walk does) may update its access time.

    Hardlinks show as a group number, numbered in path order, so two trees
    compare equal when their link structure is the same.
    """
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[tuple[int, int], int] = {}
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [Path(dirpath, n) for n in sorted(dirnames + filenames)]
    for p in sorted(paths):
        st = os.lstat(p)
        is_dir = stat.S_ISDIR(st.st_mode)
        group = None
        if not is_dir and st.st_nlink > 1:
            group = groups.setdefault((st.st_dev, st.st_ino), len(groups))
        try:
            names = sorted(os.listxattr(p, follow_symlinks=False))
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False) for n in names}
        except OSError:
            xattrs = {}
        out[os.fsencode(p.relative_to(root)).decode("latin-1")] = (
            stat.filemode(st.st_mode),
            st.st_uid,
            st.st_gid,
            0 if is_dir else st.st_size,
            st.st_mtime_ns,
            st.st_atime_ns if atime and stat.S_ISREG(st.st_mode) else 0,
            st.st_rdev,
            None if is_dir else st.st_nlink,
            group,
            xattrs,
            os.readlink(p) if stat.S_ISLNK(st.st_mode) else None,
        )
    return out


def contents(root: Path) -> dict[str, str]:
    """sha256 of every regular file."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath, n)
            if stat.S_ISREG(os.lstat(p).st_mode):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_same_tree(src: Path, dst: Path, before: dict[str, tuple[Any, ...]]) -> None:
    """*dst* has the metadata *src* had before the copy, and the same file contents."""
    after = meta(dst)
    diffs = [
        (k, before.get(k), after.get(k))
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]
    assert not diffs, diffs[:5]
    assert contents(src) == contents(dst)


def set_times(p: Path, atime: int, mtime: int) -> None:
    os.utime(p, ns=(atime, mtime), follow_symlinks=False)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def build_tree(root: Path) -> None:
    """A tree with one of everything an unprivileged user can make."""
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "small").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "sgid").write_bytes(b"x")
    os.chmod(root / "sgid", 0o2711)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "ro").mkdir()
    (root / "ro" / "inside").write_bytes(b"kept")
    (root / "ro" / "sub").mkdir()
    os.setxattr(root / "etc" / "small", "user.note", b"file attr")
    os.setxattr(root / "etc", "user.dir", b"\x00binary\xff")
    os.symlink("small", root / "etc" / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../nowhere", root / "etc" / "dangling")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "sock", stat.S_IFSOCK | 0o600)
    # Hardlink groups: three names of one file across directories, two of another,
    # and two names of one symlink.
    os.link(root / "etc" / "small", root / "small-again")
    os.link(root / "etc" / "small", root / "tmp" / "small-third")
    (root / "pair").write_bytes(b"pair")
    os.link(root / "pair", root / "etc" / "pair2")
    os.link(root / "etc" / "rel-link", root / "etc" / "rel-link2", follow_symlinks=False)
    weird = os.fsdecode(b"caf\xe9-\xff")  # not UTF-8: kept byte for byte
    (root / weird).write_bytes(b"latin-1 name")
    for p in [*root.rglob("*"), root]:
        set_times(p, T1, T2)
    set_times(root / "etc" / "rel-link", T2, T1)  # a symlink's own times
    os.chmod(root / "ro", 0o555)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "src"
    build_tree(src)
    yield src
    with contextlib.suppress(FileNotFoundError):
        os.chmod(src / "ro", 0o755)


# ----- what is kept -----------------------------------------------------------------


def test_copy_keeps_everything(tree: Path, tmp_path: Path) -> None:
    before = meta(tree)
    open_fds = fd_count()
    stats = copy_tree(str(tree), str(tmp_path / "dst"))
    assert fd_count() == open_fds
    assert_same_tree(tree, tmp_path / "dst", before)
    assert stats.hardlinks == 4
    assert stats.files == 8  # eight inodes of regular files, hardlinked ones once
    assert stats.symlinks == 3
    assert stats.specials == 2
    assert stats.dirs == 4
    inodes = {(st.st_ino, st.st_size) for st in map(os.lstat, tree.rglob("*")) if stat.S_ISREG(st.st_mode)}
    assert stats.bytes == sum(size for _, size in inodes)
    assert stats.skipped == [] and stats.dropped_xattrs == []
    os.chmod(tmp_path / "dst" / "ro", 0o755)


def test_hardlinks_share_one_inode(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_tree(str(tree), str(dst))
    small = os.lstat(dst / "etc" / "small")
    assert os.lstat(dst / "small-again").st_ino == small.st_ino
    assert os.lstat(dst / "tmp" / "small-third").st_ino == small.st_ino
    assert small.st_nlink == 3
    assert os.lstat(dst / "pair").st_ino == os.lstat(dst / "etc" / "pair2").st_ino
    assert os.lstat(dst / "pair").st_ino != small.st_ino
    assert os.lstat(tree / "etc" / "small").st_ino != small.st_ino  # a copy, not a link
    link = os.lstat(dst / "etc" / "rel-link")
    assert os.lstat(dst / "etc" / "rel-link2").st_ino == link.st_ino
    os.chmod(dst / "ro", 0o755)


@needs_root
def test_owners_setuid_capabilities_devices(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ping").write_bytes(b"\x7fELF")
    os.chown(src / "ping", 1000, 1000)
    # chown after setting a capability drops it, and drops setuid: the copy must
    # chown first, then chmod, then set attributes.
    os.chmod(src / "ping", 0o6755)
    cap = bytes.fromhex("0000000200200000000000000000000000000000")  # v2, cap_net_raw permitted
    os.setxattr(src / "ping", "security.capability", cap)
    os.setxattr(src / "ping", "trusted.overlay.origin", b"o")
    (src / "home").mkdir()
    os.chown(src / "home", 1234, 5678)
    os.chmod(src / "home", 0o2750)
    os.symlink("x", src / "home" / "link")
    os.chown(src / "home" / "link", 4321, 8765, follow_symlinks=False)
    (src / "dev").mkdir()
    os.mknod(src / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "dev" / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(src / "dev" / "loop9", 0, 6)
    (src / "secret").write_bytes(b"root reads it anyway")
    os.chmod(src / "secret", 0)
    for p in [*src.rglob("*"), src]:
        set_times(p, T1, T2)
    before = meta(src)
    stats = copy_tree(str(src), str(tmp_path / "dst"))
    assert_same_tree(src, tmp_path / "dst", before)
    assert os.getxattr(tmp_path / "dst" / "ping", "security.capability") == cap
    assert stat.S_IMODE(os.lstat(tmp_path / "dst" / "ping").st_mode) == 0o6755
    assert stats.specials == 2 and stats.skipped == []


def test_acl_xattrs_kept(tmp_path: Path) -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed (apt-get install acl)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(src / "f")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:55:rx", str(src)], check=True)
    before = meta(src)
    copy_tree(str(src), str(tmp_path / "dst"))
    assert_same_tree(src, tmp_path / "dst", before)


# ----- the destination --------------------------------------------------------------


def test_destination_existing_empty_dir_is_filled(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir(mode=0o700)
    before = meta(tree)
    copy_tree(str(tree), str(dst))
    assert_same_tree(tree, dst, before)  # the root takes the source root's metadata
    os.chmod(dst / "ro", 0o755)


def test_destination_not_empty_is_refused(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "x").write_bytes(b"")
    open_fds = fd_count()
    with pytest.raises(OSError) as e:
        copy_tree(str(tree), str(dst))
    assert e.value.errno == errno.ENOTEMPTY
    assert fd_count() == open_fds
    assert os.listdir(dst) == ["x"]


def test_destination_parent_missing(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        copy_tree(str(tree), str(tmp_path / "no" / "dst"))


def test_destination_inside_source_is_not_copied_into_itself(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"f")
    copy_tree(str(src), str(src / "a" / "copy"))
    assert sorted(os.listdir(src / "a" / "copy")) == ["a"]
    assert sorted(os.listdir(src / "a" / "copy" / "a")) == ["f"]


def test_error_names_the_source_path_and_closes_fds(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_readlink = os.readlink

    def failing_readlink(path: Any, *, dir_fd: int | None = None) -> str:
        if path == "dangling":
            raise OSError(errno.EIO, "Input/output error")
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "readlink", failing_readlink)
    open_fds = fd_count()
    with pytest.raises(OSError) as e:
        copy_tree(str(tree), str(tmp_path / "dst"))
    assert e.value.errno == errno.EIO
    assert e.value.filename == str(tree / "etc" / "dangling")
    assert str(tree / "etc" / "dangling") in str(e.value)
    assert fd_count() == open_fds


# ----- deep trees -------------------------------------------------------------------


def test_deep_tree_releases_and_reopens_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(treecopy, "MAX_OPEN_DEPTH", 6)
    src = tmp_path / "src"
    deepest = src
    for i in range(120):
        deepest = deepest / f"d{i % 7}"
    deepest.mkdir(parents=True)
    (deepest / "leaf").write_bytes(b"leaf")
    # Siblings at several depths: reached after a deep descent returns.
    p = src
    for i in range(120):
        p = p / f"d{i % 7}"
        if i % 10 == 0:
            (p / "side").mkdir()
            (p / "side" / "f").write_bytes(b"%d" % i)
    os.link(deepest / "leaf", src / "leaf-link")
    for q in [*src.rglob("*"), src]:
        set_times(q, T1, T2 + len(q.parts))
    before = meta(src)
    open_fds = fd_count()
    stats = copy_tree(str(src), str(tmp_path / "dst"))
    assert fd_count() == open_fds
    assert_same_tree(src, tmp_path / "dst", before)
    assert stats.dirs == 120 + 12
    assert stats.hardlinks == 1


def test_deep_tree_beyond_recursion_limit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    p = src
    depth = sys.getrecursionlimit() + 50
    src.mkdir()
    for _ in range(depth):  # os.makedirs recurses too
        p = p / "d"
        p.mkdir()
    try:
        stats = copy_tree(str(src), str(tmp_path / "dst"))
        assert stats.dirs == depth
        assert os.path.isdir(tmp_path / "dst" / os.path.relpath(p, src))
    finally:
        # shutil.rmtree (pytest's cleanup) recurses on Python 3.11.
        remove_tree(str(src))
        remove_tree(str(tmp_path / "dst"))


# ----- data paths -------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, fail: int | None) -> list[int]:
    """Replace ``module.name`` by a wrapper counting calls (and failing with *fail*)."""
    real = getattr(module, name)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if fail is not None:
            raise OSError(fail, os.strerror(fail))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_clone_probe_happens_once(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ioctls = counting(monkeypatch, treecopy.fcntl, "ioctl", errno.EOPNOTSUPP)
    stats = copy_tree(str(tree), str(tmp_path / "dst"))
    assert len(ioctls) == 1
    assert not stats.reflinked
    assert contents(tree) == contents(tmp_path / "dst")
    os.chmod(tmp_path / "dst" / "ro", 0o755)


def test_reflink_false_never_clones_nor_uses_copy_file_range(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ioctls = counting(monkeypatch, treecopy.fcntl, "ioctl", None)
    ranges = counting(monkeypatch, os, "copy_file_range", None)
    stats = copy_tree(str(tree), str(tmp_path / "dst"), reflink=False)
    assert ioctls == [] and ranges == []
    assert not stats.reflinked
    assert contents(tree) == contents(tmp_path / "dst")
    os.chmod(tmp_path / "dst" / "ro", 0o755)


@pytest.mark.parametrize("broken", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_fallbacks_when_kernel_copies_fail(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: list[str]
) -> None:
    counting(monkeypatch, treecopy.fcntl, "ioctl", errno.EOPNOTSUPP)
    calls = {
        name: counting(monkeypatch, os, name, errno.EXDEV if name == "copy_file_range" else errno.EINVAL)
        for name in broken
    }
    before = meta(tree)
    stats = copy_tree(str(tree), str(tmp_path / "dst"))
    assert_same_tree(tree, tmp_path / "dst", before)
    for name in broken:
        assert len(calls[name]) == 1, f"{name} is tried once per copy"
    assert stats.bytes > 3 * 1024 * 1024
    os.chmod(tmp_path / "dst" / "ro", 0o755)


def test_copy_file_range_reporting_nothing_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: 0)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data that copy_file_range claims is not there")
    stats = copy_tree(str(src), str(tmp_path / "dst"), reflink=None)
    assert (tmp_path / "dst" / "f").read_bytes() == (src / "f").read_bytes()
    assert stats.bytes == os.path.getsize(src / "f")


def test_required_reflink_fails_where_unsupported(tree: Path, tmp_path: Path) -> None:
    if reflink_supported(str(tmp_path)):
        pytest.skip("this filesystem can clone")
    with pytest.raises(OSError) as e:
        copy_tree(str(tree), str(tmp_path / "dst"), reflink=True)
    assert e.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp_path / "dst" / "ro", 0o755)


@pytest.fixture
def xfs_mount(tmp_path: Path) -> Iterator[Path]:
    """A small reflink-capable xfs on a loop device."""
    if not IS_ROOT:
        pytest.skip("needs root to mount a loop device")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (apt-get install xfsprogs)")
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(img, "wb") as f:
        f.truncate(512 * 1024 * 1024)
    mkfs = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], capture_output=True, check=False)
    if mkfs.returncode != 0:
        pytest.skip(f"mkfs.xfs failed: {mkfs.stderr.decode().strip()}")
    mnt.mkdir()
    mount = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mount.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def shared_extents(path: Path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True).stdout
    return "shared" in out


def test_reflink_on_xfs(xfs_mount: Path) -> None:
    src = xfs_mount / "src"
    build_tree(src)
    assert reflink_supported(str(xfs_mount))
    before = meta(src)
    stats = copy_tree(str(src), str(xfs_mount / "dst"), reflink=True)
    assert stats.reflinked
    assert_same_tree(src, xfs_mount / "dst", before)
    if shutil.which("filefrag"):
        assert shared_extents(xfs_mount / "dst" / "big.bin")
    plain = copy_tree(str(src), str(xfs_mount / "plain"), reflink=False)
    assert not plain.reflinked
    if shutil.which("filefrag"):
        assert not shared_extents(xfs_mount / "plain" / "big.bin")
    assert contents(src) == contents(xfs_mount / "plain")
    for d in ("src", "dst", "plain"):
        os.chmod(xfs_mount / d / "ro", 0o755)


def test_a_parent_that_cannot_be_cloned_is_named_by_its_layer(xfs_mount: Path, tmp_path: Path) -> None:
    """vfs with copy=reflink on xfs, a parent in an additional store on another file system:
    the child is refused (exit 7) naming the parent and why, never where the store keeps it."""
    from graphdriver.testing.treeutil import F, make_tar
    from tests.conftest import run_cli

    (tmp_path / "b.tar").write_bytes(make_tar({"f": F(b"x" * 5000)}))
    theirs, mine = tmp_path / "theirs", xfs_mount / "mine"
    run_cli("import", "base", str(tmp_path / "b.tar"), root=theirs, driver="vfs", check=True)
    run_cli("create", "a", root=mine, driver="vfs", check=True)
    r = run_cli("--opt", "copy=reflink", "--additional-store", str(theirs), "create", "--parent", "base", "x",
                root=mine, driver="vfs")
    said = "graphdriver: layer x: cannot clone the files of parent base: Invalid cross-device link\n"
    assert (r.returncode, r.stderr.decode()) == (7, said)


def test_copy_reflink_works_on_a_store_not_made_yet(xfs_mount: Path, tmp_path: Path) -> None:
    """vfs with copy=reflink on xfs takes a store whose folders are not made yet (probing the
    folder it will be made in, not the missing home), and its children share their parent's
    extents."""
    from graphdriver.testing.treeutil import F, make_tar
    from tests.conftest import run_cli

    (tmp_path / "b.tar").write_bytes(make_tar({"big": F(b"x" * 65536)}))
    store = xfs_mount / "new" / "store"
    for argv in (["import", "base", str(tmp_path / "b.tar")], ["create", "--parent", "base", "child"]):
        r = run_cli("--opt", "copy=reflink", *argv, root=store, driver="vfs")
        assert (r.returncode, r.stderr.decode()) == (0, ""), argv
    if shutil.which("filefrag"):
        assert shared_extents(store / "vfs" / "child" / "fs" / "big")


def test_reflink_supported_leaves_nothing(tmp_path: Path) -> None:
    reflink_supported(str(tmp_path))
    assert os.listdir(tmp_path) == []
    assert reflink_supported(str(tmp_path / "missing")) is False


# ----- without privilege ------------------------------------------------------------


@needs_root
def test_unprivileged_copy_leaves_out_what_it_cannot_make(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:  # nobody must reach tmp_path
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.lstat(parent).st_mode | 0o005)
    src = tmp_path / "src"
    build_tree(src)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(src / "pair", "trusted.secret", b"root only")
    os.chmod(src / "ro", 0o755)
    for p in [*src.rglob("*"), src]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    os.chown(src / "etc" / "small", 0, 0)  # a file nobody cannot give away to root
    os.chmod(src / "suid", 0o4755)  # chown cleared it
    os.chmod(src / "ro", 0o555)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    stats = as_nobody(lambda: copy_tree(str(src), str(out / "dst")))
    assert stats.skipped == ["null"]
    assert stats.dropped_xattrs == []  # trusted.* is invisible to nobody: never listed
    dst = out / "dst"
    assert not (dst / "null").exists()
    assert os.lstat(dst / "etc" / "small").st_uid == 65534  # the copier's own
    assert (dst / "etc" / "small").read_bytes() == b"hello\n"
    assert os.getxattr(dst / "etc" / "small", "user.note") == b"file attr"
    assert stat.S_IMODE(os.lstat(dst / "suid").st_mode) == 0o4755
    assert os.lstat(dst / "etc" / "rel-link").st_mtime_ns == T1
    assert os.lstat(dst / "small-again").st_ino == os.lstat(dst / "etc" / "small").st_ino
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)


# ----- remove_tree --------------------------------------------------------------------


def make_chain(top: Path, depth: int) -> Path:
    """``top/d/d/.../d`` made through descriptors (no long path is ever resolved)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
        f.write(b"bottom")
    os.close(fd)
    return top


def test_remove_tree_removes_everything_without_following_links(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    os.symlink(outside, tree / "etc" / "to-outside")
    os.symlink(outside / "precious", tree / "to-precious")
    os.chmod(tree / "ro" / "sub", 0)
    open_fds = fd_count()
    remove_tree(str(tree))
    assert not os.path.lexists(tree)
    assert (outside / "precious").read_bytes() == b"keep"
    assert fd_count() == open_fds
    remove_tree(str(tree))  # already gone: nothing to do


def test_remove_tree_of_a_file_or_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    os.symlink("dir", tmp_path / "link")
    remove_tree(str(tmp_path / "f"))
    remove_tree(str(tmp_path / "link"))
    assert sorted(os.listdir(tmp_path)) == ["dir"]


@pytest.mark.parametrize("open_depth", [4, treecopy.MAX_OPEN_DEPTH])
def test_remove_tree_beyond_recursion_limit_and_path_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_depth: int
) -> None:
    monkeypatch.setattr(treecopy, "MAX_OPEN_DEPTH", open_depth)
    depth = max(sys.getrecursionlimit(), 2100)  # 2 bytes a level: past PATH_MAX too
    top = make_chain(tmp_path / "deep", depth)
    (top / ".deep-1").mkdir()  # a name the flattening must not clobber
    (top / ".deep-1" / "f").write_bytes(b"")
    open_fds = fd_count()
    remove_tree(str(top))
    assert not os.path.lexists(top)
    assert fd_count() == open_fds


@needs_root
def test_remove_tree_opens_up_read_only_directories_of_its_owner(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:  # nobody must reach tmp_path
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.lstat(parent).st_mode | 0o005)
    work = tmp_path / "work"
    work.mkdir()
    top = work / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"x")
    (top / "sealed").mkdir()
    (top / "sealed" / "g").write_bytes(b"y")
    for p in [work, *work.rglob("*")]:
        os.chown(p, 65534, 65534)
    os.chmod(top / "a" / "b", 0o555)
    os.chmod(top / "a", 0o555)
    os.chmod(top / "sealed", 0)
    os.chmod(top, 0o555)
    as_nobody(lambda: remove_tree(str(top)))
    assert not os.path.lexists(top)


# ----- a real root filesystem -------------------------------------------------------


@pytest.mark.slow
def test_debian_rootfs_copy_matches_source(tmp_path: Path) -> None:
    if not (ROOTFS / "etc" / "debian_version").exists():
        pytest.skip(f"no debootstrap tree at {ROOTFS}")
    before = meta(ROOTFS, atime=False)
    stats = copy_tree(str(ROOTFS), str(tmp_path / "rootfs"))
    after = meta(tmp_path / "rootfs", atime=False)
    assert after == before
    assert contents(ROOTFS) == contents(tmp_path / "rootfs")
    assert isinstance(stats, CopyStats) and stats.files > 1000


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_a_copy_without_privilege_leaves_security_xattrs_out_even_in_an_owner_namespace() -> None:
    """A file of the user's may carry a capability set in a user namespace of its own; an
    unprivileged copy leaves security.* out there too, as it must outside."""
    import struct
    import tempfile

    from graphdriver.fs.ownfiles import enter_owner_namespace
    from tests.conftest import as_nobody

    cap = struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0)  # v2: cap_net_bind_service permitted
    work = Path(tempfile.mkdtemp(prefix="gd-copy-"))
    try:
        os.chmod(work, 0o755)
        os.chown(work, 65534, 65534)

        def run() -> tuple[bool, list[str], list[str]] | None:
            if not enter_owner_namespace():
                return None
            (work / "src").mkdir()
            (work / "src" / "f").write_bytes(b"x")
            os.setxattr(work / "src" / "f", "security.capability", cap)
            os.setxattr(work / "src" / "f", "user.u", b"2")
            stats = copy_tree(str(work / "src"), str(work / "dst"))
            had = "security.capability" in os.listxattr(work / "src" / "f")
            return had, sorted(os.listxattr(work / "dst" / "f")), stats.dropped_xattrs

        result = as_nobody(run)
        if result is None:
            pytest.skip("unprivileged user namespaces are disabled on this machine")
        assert result == (True, ["user.u"], ["f: security.capability"])
    finally:
        shutil.rmtree(work)

"""Applying layer tarballs: entry types, metadata, hardlinks, whiteouts, the confined child."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.errors import ArchiveError, GraphDriverError, Unsupported
from graphdriver.fs import confine, syscalls
from graphdriver.idmap import IDMap, IDMappings
from graphdriver.layerio.entry import TarEntry
from graphdriver.layerio.extract import (
    IMPLIED_DIR_MODE,
    ApplyOptions,
    ExtractStats,
    apply_layer,
    extract_entries,
)
from graphdriver.layerio.whiteout import OVERLAY_OPAQUE_XATTR_USER, WhiteoutMode

IS_ROOT = os.geteuid() == 0
MTIME = 1_600_000_000
Member = tuple[tarfile.TarInfo, bytes | None]


def needs_root(why: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not IS_ROOT, reason=f"needs root: {why}")


# ----- building archives ----------------------------------------------------------------


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0,
          mtime: int = MTIME, pax: dict[str, str] | None = None,
          xattrs: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    headers = dict(pax or {})
    for k, v in (xattrs or {}).items():
        headers[f"SCHILY.xattr.{k}"] = v
    ti.pax_headers = headers
    return ti


def reg(name: str, data: bytes = b"", *, mode: int = 0o644, **kw: Any) -> Member:
    ti = _info(name, tarfile.REGTYPE, mode=mode, **kw)
    ti.size = len(data)
    return ti, data


def dir_(name: str, *, mode: int = 0o755, **kw: Any) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=mode, **kw), None


def sym(name: str, target: str, **kw: Any) -> Member:
    ti = _info(name, tarfile.SYMTYPE, mode=0o777, **kw)
    ti.linkname = target
    return ti, None


def link(name: str, target: str, **kw: Any) -> Member:
    ti = _info(name, tarfile.LNKTYPE, mode=0o644, **kw)
    ti.linkname = target
    return ti, None


def dev(name: str, kind: bytes, major: int = 0, minor: int = 0, *, mode: int = 0o600,
        **kw: Any) -> Member:
    ti = _info(name, kind, mode=mode, **kw)
    ti.devmajor, ti.devminor = major, minor
    return ti, None


def tar_of(*members: Member) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def apply(dest: Path, *members: Member, **opts: Any) -> int:
    return apply_layer(io.BytesIO(tar_of(*members)), str(dest), ApplyOptions(**opts))


@pytest.fixture(params=[True, False], ids=["inline", "child"])
def inline(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


def listing(root: Path) -> list[str]:
    """Every path below *root*, directories with a trailing slash (moby's readDirContents)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out.append(os.path.normpath(os.path.join(rel, n)) + "/")
        for n in filenames:
            out.append(os.path.normpath(os.path.join(rel, n)))
    return sorted(out)


class FakeReader:
    """Entries built in memory, for types and shapes tarfile cannot write."""

    def __init__(self, entries: list[tuple[TarEntry, bytes]]) -> None:
        self._it: Iterator[tuple[TarEntry, bytes]] = iter(entries)
        self._data = b""

    def next(self) -> TarEntry | None:
        item = next(self._it, None)
        if item is None:
            return None
        self._data = item[1]
        return item[0]

    def copy_to_fd(self, fd: int) -> int:
        os.write(fd, self._data)
        return len(self._data)


def extract_fake(dest: Path, entries: list[tuple[TarEntry, bytes]], **opts: Any) -> int:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return extract_entries(FakeReader(entries), fd, opts=ApplyOptions(**opts))
    finally:
        os.close(fd)


# ----- entry types -----------------------------------------------------------------------


def test_regular_dir_symlink_hardlink_and_size(dest: Path, inline: bool) -> None:
    size = apply(
        dest,
        dir_("etc/", mode=0o755),
        reg("etc/hosts", b"127.0.0.1 localhost\n"),
        reg("etc/empty"),
        sym("etc/link", "hosts"),
        link("etc/hosts.bak", "etc/hosts"),
        reg("big", b"x" * 300_000),
        inline=inline,
    )
    assert size == 20 + 300_000  # hardlinks count nothing
    assert (dest / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "etc/empty").read_bytes() == b""
    assert os.readlink(dest / "etc/link") == "hosts"
    a, b = os.stat(dest / "etc/hosts"), os.stat(dest / "etc/hosts.bak")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert (dest / "big").stat().st_size == 300_000


@needs_root("mknod of devices")
def test_devices_and_fifo(dest: Path, inline: bool) -> None:
    apply(
        dest,
        dev("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
        dev("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6),
        dev("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        inline=inline,
    )
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dest / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and st.st_gid == 6
    st = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


def test_fifo_unprivileged_too(dest: Path) -> None:
    apply(dest, dev("p", tarfile.FIFOTYPE, mode=0o644), inline=True)
    assert stat.S_ISFIFO(os.lstat(dest / "p").st_mode)


def test_implied_parents_are_0755(dest: Path, inline: bool) -> None:
    apply(dest, reg("deeply/nested/and/implied", b"x"), dir_("explicit/", mode=0o700),
          reg("explicit/file", mode=0o400), inline=inline)
    for p in ("deeply", "deeply/nested", "deeply/nested/and"):
        assert stat.S_IMODE(os.stat(dest / p).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "explicit").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(dest / "explicit/file").st_mode) == 0o400


def test_unsupported_and_skipped_types(dest: Path) -> None:
    with pytest.raises(ArchiveError, match=r"unsupported entry type 'S' \(sparse file\)"):
        extract_fake(dest, [(TarEntry("sparse", type="S", size=3), b"abc")])
    # A PAX sparse layout of a version no reader knows: its data cannot be placed.
    sparse = TarEntry("packed", size=3, pax={"GNU.sparse.major": b"2", "GNU.sparse.minor": b"0"})
    with pytest.raises(ArchiveError, match=r"unsupported PAX sparse file format 2\.0"):
        extract_fake(dest, [(sparse, b"abc")])
    with pytest.raises(ArchiveError, match="unsupported entry type 'Z'"):
        extract_fake(dest, [(TarEntry("weird", type="Z"), b"")])
    # A GNU volume label and stray PAX records describe no file; a dump
    # directory is a directory.
    extract_fake(dest, [
        (TarEntry("label", type="V"), b""),
        (TarEntry("foo/bar", type="g"), b""),
        (TarEntry("dumped", type="D", mode=0o750), b""),
    ])
    assert listing(dest) == ["dumped/"]
    assert stat.S_IMODE(os.stat(dest / "dumped").st_mode) == 0o750


@pytest.mark.parametrize("uid,gid", [(0xFFFFFFFF, 0), (0, 0xFFFFFFFF), (-1, 0), (0, -5), (1 << 32, 0)])
def test_owners_chown_cannot_set_are_refused(dest: Path, uid: int, gid: int) -> None:
    # 2**32 - 1 (or -1 in base-256) would be chown's "leave it": silently root's file.
    for typ in ("0", "5", "2", "3"):
        e = TarEntry(f"x{typ}", type=typ, uid=uid, gid=gid, linkname="t" if typ == "2" else "",
                     devmajor=1, devminor=3)
        with pytest.raises(ArchiveError, match=f"owner {uid}:{gid} is not a valid user and group id"):
            extract_fake(dest, [(e, b"")])
    # The root entry and whiteouts too: a worded line, never "a number ... is out of range".
    for name, typ in (("./", "5"), (".wh.x", "0"), (".wh..wh..opq", "0")):
        for mode in WhiteoutMode.ALL:
            with pytest.raises(ArchiveError, match=f"owner {uid}:{gid} is not a valid user and group id"):
                extract_fake(dest, [(TarEntry(name, type=typ, uid=uid, gid=gid), b"")], whiteouts=mode)
    assert listing(dest) == []


@pytest.mark.parametrize("major,minor", [(1 << 12, 0), (0, 1 << 20), (1 << 40, 1), (-1, 0)])
def test_device_numbers_the_kernel_cannot_keep_are_refused(dest: Path, major: int, minor: int) -> None:
    e = TarEntry("dev", type="3", devmajor=major, devminor=minor)
    with pytest.raises(ArchiveError, match=f"device number {major}:{minor} is out of range"):
        extract_fake(dest, [(e, b"")])
    assert listing(dest) == []


def test_empty_name_and_empty_targets_are_refused(dest: Path) -> None:
    with pytest.raises(ArchiveError, match="empty name"):
        extract_fake(dest, [(TarEntry("", type="0"), b"")])
    with pytest.raises(ArchiveError, match="empty target"):
        extract_fake(dest, [(TarEntry("s", type="2", linkname=""), b"")])
    with pytest.raises(ArchiveError, match="empty target"):
        extract_fake(dest, [(TarEntry("h", type="1", linkname=""), b"")])


# ----- metadata ----------------------------------------------------------------------------


@needs_root("chown to other ids")
def test_modes_owners_setuid_sticky(dest: Path, inline: bool) -> None:
    apply(
        dest,
        reg("usr/bin/su", b"#!", mode=0o4755, uid=1, gid=2),
        reg("usr/bin/wall", b"#!", mode=0o2755, uid=0, gid=5),
        dir_("tmp/", mode=0o1705, uid=3, gid=4),
        sym("usr/bin/sym", "su", uid=7, gid=8),
        inline=inline,
    )
    st = os.stat(dest / "usr/bin/su")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1, 2)
    st = os.stat(dest / "usr/bin/wall")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2755, 5)
    st = os.stat(dest / "tmp")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1705, 3, 4)
    st = os.lstat(dest / "usr/bin/sym")
    assert (st.st_uid, st.st_gid) == (7, 8)


def test_times_with_nanoseconds_and_directory_mtimes(dest: Path, inline: bool) -> None:
    ns = {"mtime": "1500000000.123456789", "atime": "1500000001.5"}
    apply(
        dest,
        dir_("d/", pax={"mtime": "1400000000.25"}),
        reg("d/f", b"data", pax=ns),
        dir_("d/sub/", mtime=1300000000),
        reg("d/sub/g", b"more"),
        sym("d/s", "f", pax={"mtime": "1200000000.000000007"}),
        reg("d/late", b"written after the directory entry"),
        inline=inline,
    )
    st = os.stat(dest / "d/f")
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    assert st.st_atime_ns == 1_500_000_001_500_000_000
    assert os.stat(dest / "d").st_mtime_ns == 1_400_000_000_250_000_000
    assert os.stat(dest / "d/sub").st_mtime_ns == 1_300_000_000 * 10**9
    assert os.lstat(dest / "d/s").st_mtime_ns == 1_200_000_000_000_000_007
    # No atime: it equals the mtime.
    assert os.stat(dest / "d/sub/g").st_atime_ns == MTIME * 10**9


def test_user_xattrs(dest: Path, inline: bool) -> None:
    apply(
        dest,
        dir_("d/", xattrs={"user.dir": "on a directory"}),
        reg("d/f", b"x", xattrs={"user.file": "on a file", "security.selinux": "ignored_t"}),
        inline=inline,
    )
    assert os.getxattr(dest / "d", "user.dir") == b"on a directory"
    assert os.getxattr(dest / "d/f", "user.file") == b"on a file"
    if "security.selinux" in os.listxattr(dest / "d/f"):
        assert os.getxattr(dest / "d/f", "security.selinux") != b"ignored_t"


@needs_root("trusted.* xattrs")
def test_trusted_xattrs_on_files_symlinks_and_devices(dest: Path, inline: bool) -> None:
    apply(
        dest,
        reg("f", b"x", xattrs={"trusted.f": "1"}),
        sym("s", "f", xattrs={"trusted.s": "2"}),
        dev("c", tarfile.CHRTYPE, 1, 7, xattrs={"trusted.c": "3"}),
        inline=inline,
    )
    assert os.getxattr(dest / "f", "trusted.f") == b"1"
    assert os.getxattr(dest / "s", "trusted.s", follow_symlinks=False) == b"2"
    assert os.getxattr(dest / "c", "trusted.c", follow_symlinks=False) == b"3"


@needs_root("trusted.* xattrs")
def test_symlink_xattrs_without_setxattrat(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "_have_setxattrat", False)
    cwd = os.getcwd()
    apply(dest, reg("f"), sym("s", "f", xattrs={"trusted.s": "2"}), inline=True)
    assert os.getxattr(dest / "s", "trusted.s", follow_symlinks=False) == b"2"
    assert os.getcwd() == cwd


@needs_root("chown to mapped ids")
def test_id_maps(dest: Path, inline: bool) -> None:
    maps = IDMappings(IDMap.parse("0:100000:65536"), IDMap.parse("0:200000:65536"))
    apply(dest, reg("a/f", uid=0, gid=0), reg("a/g", uid=1000, gid=50), sym("a/s", "f", uid=3),
          idmaps=maps, inline=inline)
    assert (os.stat(dest / "a/f").st_uid, os.stat(dest / "a/f").st_gid) == (100000, 200000)
    assert (os.stat(dest / "a/g").st_uid, os.stat(dest / "a/g").st_gid) == (101000, 200050)
    assert os.lstat(dest / "a/s").st_uid == 100003
    # The implied directory belongs to the mapped root.
    assert (os.stat(dest / "a").st_uid, os.stat(dest / "a").st_gid) == (100000, 200000)
    with pytest.raises(ArchiveError, match="outside the id map") as e:
        apply(dest, reg("b", uid=70000), idmaps=maps, inline=inline)
    assert e.value.entry == "b"


def test_root_entry_applies_to_the_target(dest: Path, inline: bool) -> None:
    apply(dest, dir_("./", mode=0o711, mtime=1234567890), reg("./f", b"x"), inline=inline)
    st = os.stat(dest)
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime_ns == 1234567890 * 10**9
    assert (dest / "f").read_bytes() == b"x"
    with pytest.raises(ArchiveError, match="root can only be a directory"):
        extract_fake(dest, [(TarEntry("/", type="0"), b"")])


def test_directories_the_layer_does_not_list_keep_their_times(dest: Path, inline: bool) -> None:
    (dest / "d/sub").mkdir(parents=True)
    (dest / "d/old").write_bytes(b"")
    for p in ("d/sub", "d", "."):
        os.utime(dest / p, ns=(10**18, 10**18))
    apply(dest, reg("d/new"), reg("d/.wh.old"), reg("d/sub/.wh..wh..opq"), reg("top"),
          inline=inline)
    assert listing(dest) == ["d/", "d/new", "d/sub/", "top"]
    for p in ("d/sub", "d", "."):
        assert os.stat(dest / p).st_mtime_ns == 10**18, p


def test_stream_errors_are_archive_errors(dest: Path, inline: bool) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(ArchiveError, match="reading the layer"):
        apply_layer(io.BufferedReader(Broken()), str(dest), ApplyOptions(inline=inline))


# ----- replacing what is there ------------------------------------------------------------


def test_same_path_twice_last_wins(dest: Path, inline: bool) -> None:
    apply(
        dest,
        reg("f", b"first"), reg("f", b"second", mode=0o600),
        reg("x", b"file"), dir_("x/", mode=0o700), reg("x/in", b"child"),
        dir_("y/"), reg("y/child"), reg("y", b"file over a directory"),
        dir_("z/", mode=0o755, xattrs={"user.a": "1"}), reg("z/keep"), dir_("z/", mode=0o750),
        sym("s", "f"), reg("s", b"not through the link"),
        inline=inline,
    )
    assert (dest / "f").read_bytes() == b"second"
    assert stat.S_IMODE(os.stat(dest / "f").st_mode) == 0o600
    assert (dest / "x/in").read_bytes() == b"child"
    assert (dest / "y").read_bytes() == b"file over a directory"
    assert stat.S_IMODE(os.stat(dest / "z").st_mode) == 0o750
    assert (dest / "z/keep").exists()  # directories merge
    assert (dest / "s").read_bytes() == b"not through the link"
    assert (dest / "f").read_bytes() == b"second"


def test_existing_tree_is_merged_or_replaced(dest: Path, inline: bool) -> None:
    (dest / "dir").mkdir()
    (dest / "dir/old").write_bytes(b"old")
    (dest / "was-dir").mkdir()
    (dest / "was-dir/deep").mkdir()
    (dest / "was-dir/deep/f").write_bytes(b"f")
    (dest / "was-file").write_bytes(b"file")
    os.symlink("dir", dest / "was-link")
    apply(dest, dir_("dir/", mode=0o700), reg("dir/new"), reg("was-dir", b"now a file"),
          dir_("was-file/"), dir_("was-link/"), reg("was-link/inside"), inline=inline)
    assert listing(dest) == ["dir/", "dir/new", "dir/old", "was-dir", "was-file/",
                             "was-link/", "was-link/inside"]
    assert stat.S_IMODE(os.stat(dest / "dir").st_mode) == 0o700


# ----- hardlinks --------------------------------------------------------------------------


def test_hardlink_to_symlink_is_a_symlink(dest: Path, inline: bool) -> None:
    apply(dest, sym("symlink1", "regfile"), link("symlink2", "symlink1"), reg("regfile", b"r"),
          inline=inline)
    assert os.readlink(dest / "symlink2") == "regfile"
    assert os.lstat(dest / "symlink1").st_ino == os.lstat(dest / "symlink2").st_ino


def test_hardlink_errors(dest: Path, inline: bool) -> None:
    with pytest.raises(ArchiveError, match="hardlink to a directory"):
        apply(dest, dir_("d/"), link("h", "d"), inline=inline)
    with pytest.raises(ArchiveError, match="is missing") as e:
        apply(dest, link("h2", "nowhere"), inline=inline)
    assert e.value.entry == "h2"
    # A link to itself is harmless when the file exists.
    apply(dest, reg("self", b"1"), link("self", "self"), inline=inline)
    assert (dest / "self").read_bytes() == b"1"


def test_hardlink_target_copied_up_from_lower_dirs(tmp_path: Path, dest: Path,
                                                   inline: bool) -> None:
    near, far = tmp_path / "near", tmp_path / "far"
    for d in (near, far):
        (d / "usr/bin").mkdir(parents=True)
    (far / "usr/bin/perl").write_bytes(b"far")
    (near / "usr/bin/perl").write_bytes(b"near perl")
    os.chmod(near / "usr/bin/perl", 0o751)
    os.chmod(near / "usr/bin", 0o711)
    os.utime(near / "usr/bin/perl", ns=(10**18, 10**18))
    os.setxattr(near / "usr/bin/perl", "user.k", b"v")
    os.symlink("perl", near / "usr/bin/perl-link")
    size = apply(dest, link("usr/bin/perl5", "usr/bin/perl"),
                 link("usr/bin/pl", "usr/bin/perl-link"),
                 lower_dirs=(str(near), str(far)), inline=inline)
    assert size == 0
    a, b = os.stat(dest / "usr/bin/perl"), os.stat(dest / "usr/bin/perl5")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (dest / "usr/bin/perl5").read_bytes() == b"near perl"
    assert stat.S_IMODE(a.st_mode) == 0o751 and a.st_mtime_ns == 10**18
    assert os.getxattr(dest / "usr/bin/perl", "user.k") == b"v"
    assert os.readlink(dest / "usr/bin/pl") == "perl"
    # The implied parent took the lower directory's mode; the lower is untouched.
    assert stat.S_IMODE(os.stat(dest / "usr/bin").st_mode) == 0o711
    assert os.stat(near / "usr/bin/perl").st_nlink == 1


@needs_root("a 0/0 character device marks a whiteout")
def test_hardlink_target_whited_out_in_a_lower_dir(tmp_path: Path, dest: Path) -> None:
    near, far = tmp_path / "near", tmp_path / "far"
    near.mkdir()
    far.mkdir()
    os.mknod(near / "f", stat.S_IFCHR, 0)
    (far / "f").write_bytes(b"deleted above")
    with pytest.raises(ArchiveError, match="is missing"):
        apply(dest, link("h", "f"), lower_dirs=(str(near), str(far)), inline=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_hardlink_target_closed_to_its_owner_is_copied_up_without_root(inline: bool) -> None:
    """Without root (an overlay upper directory on fuse-overlayfs), a lower layer's file of
    mode 0000 that a hardlink entry names is copied up as it is, its user.* xattr too (which
    needs read permission): read as its owner, neither its mode nor the copy's changed."""
    import tempfile

    from graphdriver.fs import syscalls
    from tests.conftest import as_nobody

    if not as_nobody(syscalls.unshare_user):
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = Path(tempfile.mkdtemp(prefix="gd-closed-link-"))
    try:
        os.chmod(work, 0o755)
        lower, dest = work / "lower", work / "dest"
        (lower / "etc").mkdir(parents=True)
        dest.mkdir()
        shadow = lower / "etc/shadow"
        shadow.write_bytes(b"root:!!:19000::\n")
        try:
            os.setxattr(shadow, "user.k", b"v")
        except OSError:
            pytest.skip("the temporary folder's file system takes no user.* xattrs")
        os.chmod(shadow, 0)
        for p in (lower, lower / "etc", shadow, dest):
            os.chown(p, 65534, 65534)

        def run() -> int:
            return apply(dest, link("etc/shadow-", "etc/shadow"), whiteouts=WhiteoutMode.OVERLAY,
                         lower_dirs=(str(lower),), inline=inline)

        assert as_nobody(run) == 0
        a, b = os.stat(dest / "etc/shadow"), os.stat(dest / "etc/shadow-")
        assert a.st_ino == b.st_ino and a.st_nlink == 2
        assert stat.S_IMODE(a.st_mode) == 0 and (a.st_uid, a.st_gid) == (65534, 65534)
        assert (dest / "etc/shadow").read_bytes() == b"root:!!:19000::\n"
        assert os.getxattr(dest / "etc/shadow", "user.k") == b"v"
        assert stat.S_IMODE(os.stat(shadow).st_mode) == 0 and os.stat(shadow).st_nlink == 1
    finally:
        shutil.rmtree(work)


def test_aufs_hardlink_store(dest: Path, inline: bool) -> None:
    apply(
        dest,
        dir_(".wh..wh.plnk/"),
        reg(".wh..wh.plnk/1234.5678", b"shared", mode=0o640),
        link("a", ".wh..wh.plnk/1234.5678"),
        link("b", ".wh..wh.plnk/1234.5678"),
        reg(".wh..wh.aufs", b"metadata"),
        dir_(".wh..wh.orph/"),
        inline=inline,
    )
    assert listing(dest) == ["a", "b"]
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino
    assert (dest / "b").read_bytes() == b"shared"


# ----- whiteouts ---------------------------------------------------------------------------


def _files(*names: str) -> list[Member]:
    return [dir_(n, mode=0o700) if n.endswith("/") else reg(n, mode=0o600) for n in names]


def test_whiteouts_delete_mode(dest: Path, inline: bool) -> None:
    """The layer sequence of moby's TestApplyLayerWhiteouts."""
    base = [".baz", "bar/", "bar/bax", "bar/bay/", "baz", "foo/", "foo/.abc", "foo/.bcd/",
            "foo/.bcd/a", "foo/cde/", "foo/cde/def", "foo/cde/efg", "foo/fgh", "foobar"]
    cases = [
        (base, base),
        ([".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"],
         [".bay", ".baz", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.bce", "foo/cde/",
          "foo/cde/efg", "foobar"]),
        ([".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"],
         [".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]),
        ([".abc", ".wh..wh..opq", "foobar"], [".abc", "foobar"]),
    ]
    for i, (layer, expected) in enumerate(cases):
        apply(dest, *_files(*layer), inline=inline)
        assert listing(dest) == expected, f"layer {i}"


def test_opaque_keeps_what_the_layer_made_before_the_marker(dest: Path, inline: bool) -> None:
    for p in ("d/old", "d/sub/old", "d/sub/deeper/old"):
        (dest / p).parent.mkdir(parents=True, exist_ok=True)
        (dest / p).write_bytes(b"lower")
    apply(dest, dir_("d/"), dir_("d/sub/"), reg("d/sub/new"), reg("d/new"), reg("d/.wh..wh..opq"),
          reg("d/after"), inline=inline)
    assert listing(dest) == ["d/", "d/after", "d/new", "d/sub/", "d/sub/new"]


def test_whiteout_of_missing_paths_and_reserved_names(dest: Path, inline: bool) -> None:
    (dest / ".wh.real").write_bytes(b"a file named like a whiteout, from elsewhere")
    (dest / "file").write_bytes(b"a file on the way")
    apply(dest, reg(".wh.absent"), reg("no/such/dir/.wh.x"), reg("no2/.wh..wh..opq"),
          reg("file/.wh.x"), reg("file/sub/.wh..wh..opq"), reg("sub/.wh..wh.whatever"), inline=inline)
    # A marker's missing folders are made, as a file's are (Docker and containers-storage make
    # them too); none below a file; no .wh. files.
    assert listing(dest) == [".wh.real", "file", "no/", "no/such/", "no/such/dir/", "no2/"]
    for folder in ("no", "no/such/dir", "no2"):
        assert stat.S_IMODE(os.stat(dest / folder).st_mode) == IMPLIED_DIR_MODE


def test_whiteout_names_are_checked(dest: Path) -> None:
    with pytest.raises(ArchiveError, match="whiteout without a name"):
        extract_fake(dest, [(TarEntry("d/.wh."), b"")])
    with pytest.raises(ArchiveError, match="below the whiteout"):
        extract_fake(dest, [(TarEntry(".wh.gone/child"), b"")])


@pytest.mark.parametrize("member", [reg("d/.wh..wh..opq/f"), reg(".wh..wh..opq/f"),
                                    reg("d/.wh..wh..opq/sub/f"), reg("d/.wh..wh..opq/.wh.x"),
                                    dir_("d/.wh..wh..opq/sub/")], ids=lambda m: m[0].name)
def test_entries_below_an_opaque_marker_are_refused(dest: Path, inline: bool, member: Member) -> None:
    """As below a whiteout: the marker is no folder, so nothing can be put below it."""
    with pytest.raises(ArchiveError, match=r"below the opaque whiteout '\.wh\.\.wh\.\.opq'"):
        apply(dest, member, reg("g"), inline=inline)
    assert listing(dest) == []


@needs_root("0/0 character devices and trusted.overlay.opaque")
def test_whiteouts_overlay_mode(tmp_path: Path, dest: Path, inline: bool) -> None:
    lower = tmp_path / "lower"
    for folder in ("foo", "gone"):
        (lower / folder).mkdir(parents=True)
        (lower / folder / "bar").write_bytes(b"")
    apply(
        dest,
        reg(".wh.foo"), reg(".wh.gone"),
        reg("gone/.wh.bar"),  # below a whiteout: a new folder, as for a file there, hiding all below
        dir_("d/"), reg("d/.wh..wh..opq"), reg("d/kept"),
        reg("implied/.wh.x"),  # in a folder that is nowhere: the folder, nothing below to hide
        reg("marked/.wh..wh..opq"),  # the same, opaque
        reg(".wh.ghost"),  # nothing below of that name: no device (the view would show it)
        reg("f", xattrs={"trusted.overlay.redirect": "/etc"}),
        whiteouts=WhiteoutMode.OVERLAY, lower_dirs=(str(lower),), inline=inline,
    )
    st = os.lstat(dest / "foo")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.listdir(dest / "gone") == [] and os.getxattr(dest / "gone", "trusted.overlay.opaque") == b"y"
    assert os.listdir(dest / "implied") == [] and not os.path.lexists(dest / "ghost")
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "implied")
    assert os.listdir(dest / "marked") == []
    for opaque in ("marked", "d"):
        assert os.getxattr(dest / opaque, "trusted.overlay.opaque") == b"y"
    assert (dest / "d/kept").exists()
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "f")


def test_opaque_with_user_xattr(dest: Path, inline: bool) -> None:
    (dest / "d").mkdir()
    (dest / "d/lower").write_bytes(b"x")
    apply(dest, reg("d/.wh..wh..opq"), whiteouts=WhiteoutMode.OVERLAY,
          opaque_xattr=OVERLAY_OPAQUE_XATTR_USER, inline=inline)
    assert os.getxattr(dest / "d", OVERLAY_OPAQUE_XATTR_USER) == b"y"
    # What the upper directory held there before the archive is hidden, as in a copy.
    assert not (dest / "d/lower").exists()


# ----- unprivileged behaviour, through the syscall facade ---------------------------------


def _eperm(*args: Any, **kwargs: Any) -> None:
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))


def test_chown_and_mknod_errors_tolerated_when_asked(dest: Path, inline: bool,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(syscalls, "fchown", _eperm)
    monkeypatch.setattr(syscalls, "chown_at", _eperm)
    real_mknod = syscalls.mknod_at

    def mknod(path: str, mode: int, device: int = 0, *, dir_fd: int | None = None) -> None:
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            _eperm()
        real_mknod(path, mode, device, dir_fd=dir_fd)

    monkeypatch.setattr(syscalls, "mknod_at", mknod)
    members = [reg("d/f", b"x", uid=5), sym("d/s", "f"), dev("d/null", tarfile.CHRTYPE, 1, 3),
               dev("d/p", tarfile.FIFOTYPE)]
    with caplog.at_level(logging.WARNING, logger="graphdriver.layerio.extract"):
        assert apply(dest, *members, ignore_chown_errors=True, inline=inline) == 1
    assert listing(dest) == ["d/", "d/f", "d/p", "d/s"]
    assert "skipped 4 ownership changes, 1 device nodes" in caplog.text
    with pytest.raises(ArchiveError, match="Operation not permitted") as e:
        apply(dest, *members, ignore_chown_errors=False, inline=inline)
    assert e.value.entry == "d/f"


def test_trusted_xattr_eperm_tolerated_only_when_asked(dest: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = syscalls.fsetxattr

    def fsetxattr(fd: int, name: str, value: bytes, *args: Any, **kw: Any) -> None:
        if name.startswith("trusted."):
            _eperm()
        real(fd, name, value, *args, **kw)

    monkeypatch.setattr(syscalls, "fsetxattr", fsetxattr)
    member = reg("f", b"x", xattrs={"trusted.t": "1", "user.u": "2"})
    stats = ExtractStats()
    fd = os.open(dest, os.O_RDONLY)
    try:
        data = io.BytesIO(tar_of(member))
        from graphdriver.layerio.tarstream import TarReader

        extract_entries(TarReader(data), fd, opts=ApplyOptions(ignore_chown_errors=True), stats=stats)
    finally:
        os.close(fd)
    assert stats.skipped_xattrs == 1 and os.getxattr(dest / "f", "user.u") == b"2"
    with pytest.raises(ArchiveError, match=r"setting xattr 'trusted\.t'"):
        apply(dest, member, ignore_chown_errors=False, inline=True)


def test_openat2_missing_is_unsupported(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def enosys(*args: Any) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(syscalls, "_syscall", enosys)
    with pytest.raises(Unsupported, match="openat2"):
        apply(dest, reg("a/b"), inline=True)
    with pytest.raises(Unsupported, match="openat2"):
        apply(dest, reg("a/b"), inline=False)


# ----- the confined child -------------------------------------------------------------------


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_errors_cross_the_process_boundary_intact(dest: Path) -> None:
    with pytest.raises(ArchiveError) as e:
        apply(dest, reg("ok"), reg("../escape"), inline=False)
    assert type(e.value).__name__ == "BreakoutError"
    assert e.value.entry == "../escape"
    assert str(e.value) == "entry '../escape': path escapes the layer"

    def boom(dirs: confine.ConfinedDirs) -> None:
        raise ValueError("first line\nsecond line")

    with pytest.raises(GraphDriverError) as g:
        confine.run_confined(str(dest), boom, inline=False)
    assert type(g.value) is GraphDriverError
    assert "\n" not in str(g.value) and "ValueError: first line second line" in str(g.value)


def test_missing_directories_are_reported(tmp_path: Path, inline: bool) -> None:
    with pytest.raises(GraphDriverError, match="No such file or directory"):
        apply(tmp_path / "absent", reg("f"), inline=inline)
    (tmp_path / "d").mkdir()
    with pytest.raises(GraphDriverError, match=r"opening .*absent-lower"):
        apply(tmp_path / "d", reg("f"), lower_dirs=(str(tmp_path / "absent-lower"),),
              inline=inline)


def test_inline_switch(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    monkeypatch.setenv(confine.INLINE_ENV, "1")
    assert confine.run_confined(str(dest), lambda d: os.getpid()) == me
    monkeypatch.setenv(confine.INLINE_ENV, "0")
    assert confine.run_confined(str(dest), lambda d: os.getpid()) != me
    assert confine.run_confined(str(dest), lambda d: os.getpid(), inline=True) == me


def test_no_fd_leaks(dest: Path, inline: bool, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "t").write_bytes(b"t")
    members = [dir_(f"d{i}/") for i in range(300)] + [reg(f"d{i}/f") for i in range(300)]
    members += [link("h", "t"), reg(".wh.d7"), reg("d8/.wh..wh..opq")]
    before = _open_fds()
    apply(dest, *members, lower_dirs=(str(lower),), inline=inline)
    with pytest.raises(ArchiveError):
        apply(dest, reg("x/y"), sym("loop", "loop"), reg("loop/z"), inline=inline)
    assert _open_fds() == before


def test_data_buffered_by_the_parent_reaches_the_child(dest: Path) -> None:
    data = tar_of(reg("a", b"A" * 5000), reg("b", b"B"))
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as out:
            out.write(data)

    t = threading.Thread(target=feed)
    t.start()
    with open(r, "rb") as stream:
        assert stream.peek(512)[:1] == b"a"  # sniffing buffers data in the parent
        assert apply_layer(stream, str(dest), ApplyOptions(inline=False)) == 5001
    t.join()
    assert (dest / "a").read_bytes() == b"A" * 5000 and (dest / "b").read_bytes() == b"B"


# ----- against GNU tar on a real root filesystem ---------------------------------------------


def tree_state(root: Path) -> tuple[dict[str, tuple[Any, ...]], set[frozenset[str]]]:
    """Everything extraction must reproduce, per path, plus the hardlink groups."""
    state: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames,
                                                                              *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.relpath(path, root))
            st = os.lstat(path)
            extra: Any = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, set()).add(rel)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False)}
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            state[rel] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_rdev,
                          extra, xattrs)
    return state, {frozenset(v) for v in inodes.values()}


@pytest.mark.slow
@needs_root("a root filesystem has many owners and devices")
def test_minbase_matches_gnu_tar(tmp_path: Path, minbase_tar: Path) -> None:
    tar = minbase_tar  # the shared fixture: a debootstrapped Debian minbase, cached
    ours, gnu = tmp_path / "ours", tmp_path / "gnu"
    ours.mkdir()
    gnu.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tar),
                    "-C", str(gnu)], check=True)
    with open(tar, "rb") as f:
        size = apply_layer(f, str(ours), ApplyOptions(inline=False))
    ours_state, ours_links = tree_state(ours)
    gnu_state, gnu_links = tree_state(gnu)
    # Every inode once: hardlink entries count nothing.
    inodes = {os.lstat(gnu / p).st_ino: v[3] for p, v in gnu_state.items() if stat.S_ISREG(v[0])}
    assert size == sum(inodes.values())
    assert sorted(ours_state) == sorted(gnu_state)
    diffs = [(p, ours_state[p], gnu_state[p]) for p in gnu_state if ours_state[p] != gnu_state[p]]
    assert diffs == []
    assert ours_links == gnu_links
    shutil.rmtree(ours)
    shutil.rmtree(gnu)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_without_privileges_only_owners_other_than_root_are_counted_as_skipped() -> None:
    """Without privileges the user's own ids are root's: an entry owned 0:0 loses nothing (and
    no chown to root is tried), so only the entries of other owners are counted."""
    import tempfile

    from graphdriver.layerio.tarstream import TarReader
    from tests.conftest import as_nobody

    data = tar_of(dir_("d"), reg("d/f", b"x"), sym("d/s", "f"), link("d/l", "d/f"),
                  reg("a", b"y", uid=5), reg("b", uid=0, gid=7), dir_("c", uid=1000, gid=1000))
    work = Path(tempfile.mkdtemp(prefix="gd-owners-"))
    try:
        os.chmod(work, 0o755)
        dest = work / "dest"
        dest.mkdir()
        os.chown(dest, 65534, 65534)

        def run() -> tuple[int, set[tuple[int, int]]]:
            stats = ExtractStats()
            fd = os.open(dest, os.O_RDONLY)
            try:
                extract_entries(TarReader(io.BytesIO(data)), fd, opts=ApplyOptions(), stats=stats)
            finally:
                os.close(fd)
            owners = {(st.st_uid, st.st_gid) for st in (os.lstat(p) for p in dest.rglob("*"))}
            return stats.skipped_chowns, owners

        assert as_nobody(run) == (3, {(65534, 65534)})
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_privileged_xattrs_are_left_out_without_privilege_even_in_an_owner_namespace() -> None:
    """In a user namespace of the user's own, the kernel takes security.capability (as a
    namespaced capability): an unprivileged extraction still leaves trusted.* and
    security.* out, as it does outside, so a layer reads the same either way."""
    import struct
    import tempfile

    from graphdriver.fs.ownfiles import enter_owner_namespace
    from graphdriver.layerio.tarstream import TarReader
    from tests.conftest import as_nobody

    cap = struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0)  # v2: cap_net_bind_service permitted
    member = reg("f", b"x", xattrs={"security.capability": cap.decode("latin-1"),
                                    "trusted.t": "1", "user.u": "2"})
    data = tar_of(member)
    work = Path(tempfile.mkdtemp(prefix="gd-xattrs-"))
    try:
        os.chmod(work, 0o755)
        dest = work / "dest"
        dest.mkdir()
        os.chown(dest, 65534, 65534)

        def run() -> tuple[int, list[str]] | None:
            if not enter_owner_namespace():
                return None
            stats = ExtractStats()
            fd = os.open(dest, os.O_RDONLY)
            try:
                extract_entries(TarReader(io.BytesIO(data)), fd, opts=ApplyOptions(), stats=stats)
            finally:
                os.close(fd)
            return stats.skipped_xattrs, sorted(os.listxattr(dest / "f"))

        result = as_nobody(run)
        if result is None:
            pytest.skip("unprivileged user namespaces are disabled on this machine")
        assert result == (2, ["user.u"])
    finally:
        shutil.rmtree(work)

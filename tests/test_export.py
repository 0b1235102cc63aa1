"""Exporting a change set as a layer tarball, and its size (``graphdriver.layerio.export``)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from graphdriver.diff.changes import Change, ChangeKind, change_sort_key
from graphdriver.diff.size import changes_size
from graphdriver.diff.walk import changes_between
from graphdriver.errors import GraphDriverError
from graphdriver.idmap import IDMap, IDMappings
from graphdriver.layerio.export import (
    NO_ID_MAPS,
    entry_from_stat,
    export_changes,
    whiteout_entry,
)

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
T0 = 1_600_000_000_123_456_789

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")


def export(root: Path, changes: list[Change], idmaps: IDMappings = NO_ID_MAPS) -> bytes:
    out = io.BytesIO()
    export_changes(str(root), changes, out, idmaps)
    return out.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name if not m.isdir() else m.name + "/": m for m in tf.getmembers()}


def names(data: bytes) -> list[str]:
    """Entry names exactly as stored (tarfile strips a directory's trailing slash)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [m.name + "/" if m.isdir() else m.name for m in tf.getmembers()]


def read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def write(path: Path, data: bytes = b"x", mtime_ns: int = T0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def layer(tmp_path: Path) -> tuple[Path, list[Change]]:
    """A parent tree, a changed copy of it, and the changes between them."""
    old = tmp_path / "old"
    write(old / "etc" / "passwd", b"root")
    write(old / "etc" / "shadow", b"secret")
    write(old / "usr" / "share" / "doc" / "README", b"read me")
    new = tmp_path / "new"
    shutil.copytree(old, new)
    write(new / "etc" / "passwd", b"root:x:0:0")
    (new / "etc" / "shadow").unlink()
    shutil.rmtree(new / "usr" / "share" / "doc")
    write(new / "opt" / "app" / "run", b"#!/bin/sh\n")
    os.chmod(new / "opt" / "app" / "run", 0o755)
    os.symlink("app/run", new / "opt" / "run")
    return new, changes_between(str(new), str(old))


def test_layer_tarball_names_types_and_data(layer: tuple[Path, list[Change]]) -> None:
    new, changes = layer
    data = export(new, changes)
    assert names(data) == [
        "etc/",
        "etc/passwd",
        "etc/.wh.shadow",
        "opt/",
        "opt/app/",
        "opt/app/run",
        "opt/run",
        "usr/",
        "usr/share/",
        "usr/share/.wh.doc",
    ]
    m = members(data)
    assert m["etc/"].isdir()
    assert read(data, "etc/passwd") == b"root:x:0:0"
    assert m["opt/app/run"].mode == 0o755 and m["opt/app/run"].size == 10
    assert m["opt/run"].issym() and m["opt/run"].linkname == "app/run"
    assert m["etc/passwd"].uname == "" and m["etc/passwd"].gname == ""


def test_whiteouts_are_empty_files_with_fixed_metadata(layer: tuple[Path, list[Change]]) -> None:
    new, changes = layer
    wh = members(export(new, changes))["usr/share/.wh.doc"]
    assert wh.isreg() and wh.size == 0
    assert (wh.mode, wh.uid, wh.gid, wh.mtime) == (0, 0, 0, 0)
    assert whiteout_entry("/top").name == ".wh.top"
    assert whiteout_entry("/a/b/c").name == "a/b/.wh.c"


def test_export_is_deterministic_and_sorted(layer: tuple[Path, list[Change]]) -> None:
    new, changes = layer
    first = export(new, changes)
    assert export(new, list(reversed(changes))) == first
    assert changes == sorted(changes, key=change_sort_key)


@needs_gnu_tar
def test_gnu_tar_lists_and_extracts_it(layer: tuple[Path, list[Change]], tmp_path: Path) -> None:
    new, changes = layer
    tarball = tmp_path / "layer.tar"
    tarball.write_bytes(export(new, changes))
    listed = subprocess.run(
        ["tar", "-tf", str(tarball)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert listed == names(tarball.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", str(tarball), "-C", str(out)], check=True)
    assert (out / "etc" / "passwd").read_bytes() == b"root:x:0:0"
    # GNU tar reads the PAX mtime record: nanoseconds survive.
    assert os.stat(out / "etc" / "passwd").st_mtime_ns == T0
    assert os.readlink(out / "opt" / "run") == "app/run"


def test_nanosecond_mtimes_round_trip(tmp_path: Path) -> None:
    write(tmp_path / "f", mtime_ns=T0)
    write(tmp_path / "whole", mtime_ns=1_600_000_000_000_000_000)
    data = export(tmp_path, [Change("/f", A), Change("/whole", A)])
    m = members(data)
    assert m["f"].pax_headers["mtime"] == "1600000000.123456789"
    assert m["whole"].mtime == 1_600_000_000 and "mtime" not in m["whole"].pax_headers


def test_nanosecond_mtimes_round_trip_through_our_reader(tmp_path: Path) -> None:
    tarstream = pytest.importorskip("graphdriver.layerio.tarstream")
    if not hasattr(tarstream, "TarReader"):
        pytest.skip("no TarReader yet")
    write(tmp_path / "f", b"data", mtime_ns=T0 + 1)
    entries = list(tarstream.TarReader(io.BytesIO(export(tmp_path, [Change("/f", A)]))))
    assert [(e.name, e.mtime_ns, e.size) for e in entries] == [("f", T0 + 1, 4)]


def test_hardlinks_are_written_once(tmp_path: Path) -> None:
    write(tmp_path / "d" / "first", b"shared data")
    os.link(tmp_path / "d" / "first", tmp_path / "d" / "second")
    os.link(tmp_path / "d" / "first", tmp_path / "third")
    changes = changes_between(str(tmp_path), None)
    data = export(tmp_path, changes)
    m = members(data)
    assert m["d/first"].isreg() and m["d/first"].size == 11
    for name in ("d/second", "third"):
        assert m[name].islnk() and m[name].linkname == "d/first" and m[name].size == 0
    assert changes_size(str(tmp_path), changes) == 11


def test_hardlink_to_a_name_outside_the_changes_carries_the_data(tmp_path: Path) -> None:
    write(tmp_path / "old")
    os.link(tmp_path / "old", tmp_path / "new")
    m = members(export(tmp_path, [Change("/new", A)]))
    assert m["new"].isreg() and m["new"].size == 1


@needs_root
def test_owners_are_mapped_back_to_container_ids(tmp_path: Path) -> None:
    f = write(tmp_path / "f")
    os.chown(f, 100_005, 200_007)
    maps = IDMappings(IDMap.parse("0:100000:65536"), IDMap.parse("0:200000:65536"))
    m = members(export(tmp_path, [Change("/f", A)], maps))
    assert (m["f"].uid, m["f"].gid) == (5, 7)
    os.chown(f, 5, 5)
    with pytest.raises(GraphDriverError, match="not covered") as refused:
        export(tmp_path, [Change("/f", A)], maps)
    assert refused.value.exit_code == 1  # the layer's data, not a usage error


@needs_root
def test_devices_fifos_and_sockets(tmp_path: Path) -> None:
    import socket

    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(tmp_path / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.mkfifo(tmp_path / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        data = export(tmp_path, changes_between(str(tmp_path), None))
    finally:
        sock.close()
    m = members(data)
    assert m["null"].ischr() and (m["null"].devmajor, m["null"].devminor) == (1, 3)
    assert m["sda"].isblk() and (m["sda"].devmajor, m["sda"].devminor) == (8, 0)
    assert m["pipe"].isfifo()
    assert "sock" not in m  # tar has no socket type


def _try_setxattr(path: Path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError:
        return False
    return True


def test_xattrs_exported_except_host_and_overlay_ones(tmp_path: Path) -> None:
    f = write(tmp_path / "f")
    if not _try_setxattr(f, "user.binary", b"\x00\xff\x01"):
        pytest.skip("no user xattrs here")
    set_selinux = _try_setxattr(f, "security.selinux", b"system_u:object_r:etc_t:s0\x00")
    set_overlay = _try_setxattr(f, "trusted.overlay.opaque", b"y")
    records = members(export(tmp_path, [Change("/f", A)]))["f"].pax_headers
    xattrs = {
        k.removeprefix("SCHILY.xattr."): v.encode("utf-8", "surrogateescape")
        for k, v in records.items()
        if k.startswith("SCHILY.xattr.")
    }
    assert xattrs["user.binary"] == b"\x00\xff\x01"
    assert set_selinux is False or "security.selinux" not in xattrs
    assert set_overlay is False or "trusted.overlay.opaque" not in xattrs


def test_vanished_files_are_skipped(layer: tuple[Path, list[Change]]) -> None:
    new, changes = layer
    (new / "opt" / "app" / "run").unlink()
    shutil.rmtree(new / "etc")
    data = export(new, changes)
    assert "opt/app/run" not in names(data)
    assert "etc/passwd" not in names(data)
    assert "etc/.wh.shadow" in names(data)  # a whiteout needs nothing on disk
    assert changes_size(str(new), changes) == 0


def test_only_what_is_a_regular_file_when_looked_at_is_opened(tmp_path: Path, monkeypatch) -> None:
    """Opening a device node can act (a watchdog's starts it): what stands at a path is looked
    at right before it is opened, and only a regular file is, whatever a scan found there
    earlier (a live container may have put a node there since)."""
    from graphdriver.layerio import export as export_module

    opened: list[str] = []
    real = export_module.open_readable

    def spy(path: str, *args: object) -> int:
        opened.append(os.path.basename(path))
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "open_readable", spy)
    write(tmp_path / "plain", b"data")
    os.symlink("plain", tmp_path / "sym")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    changes = [Change(f"/{n}", A) for n in ("dir", "gone", "pipe", "plain", "sym")]
    data = export(tmp_path, changes)
    assert opened == ["plain"]
    assert names(data) == ["dir/", "pipe", "plain", "sym"]


def test_a_file_an_upper_directory_scan_found_is_looked_at_again_before_it_is_opened(
    tmp_path: Path, monkeypatch
) -> None:
    """The overlay scan knows its regular files by their directory entries; by the time the
    export reaches one, a live container may have made it a device node, never opened."""
    from graphdriver.diff import upper
    from graphdriver.layerio import export as export_module

    write(tmp_path / "f", b"data")
    real_scan, real_open = upper.scan, export_module.open_readable
    opened: list[str] = []

    def scan_then_swap(*args: object, **kwargs: object) -> object:
        found = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        (tmp_path / "f").unlink()
        os.mkfifo(tmp_path / "f")
        return found

    def spy(path: str, *args: object) -> int:
        opened.append(os.path.basename(path))
        return real_open(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(upper, "scan", scan_then_swap)
    monkeypatch.setattr(export_module, "open_readable", spy)
    out = io.BytesIO()
    upper.export(str(tmp_path), [], out)
    assert opened == []
    assert members(out.getvalue())["f"].isfifo()


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    raw = os.fsdecode(b"caf\xe9")
    write(tmp_path / raw / "f", b"data")
    changes = [*changes_between(str(tmp_path), None), Change("/" + os.fsdecode(b"\xff"), D)]
    data = export(tmp_path, changes)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", errors="surrogateescape") as tf:
        got = [m.name.encode("utf-8", "surrogateescape") for m in tf.getmembers()]
    assert got == [b"caf\xe9", b"caf\xe9/f", b".wh.\xff"]


def test_large_file_streams_whole(tmp_path: Path) -> None:
    blob = os.urandom(1 << 16) * 64  # 4 MiB, not a multiple of the copy size + 1
    write(tmp_path / "big", blob + b"tail")
    assert read(export(tmp_path, [Change("/big", A)]), "big") == blob + b"tail"


def test_file_that_shrinks_while_exported_is_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "f", b"short")
    write(tmp_path / "g", b"next")
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        # As if the file were truncated between the fstat and the read.
        st = real_fstat(fd)
        fields = list(st)
        fields[stat.ST_SIZE] += 3 if st.st_size == 5 else 0
        extra = ("st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_rdev", "st_blocks")
        return os.stat_result(fields, {k: getattr(st, k) for k in extra})

    monkeypatch.setattr(os, "fstat", stale_fstat)
    data = export(tmp_path, [Change("/f", A), Change("/g", A)])
    monkeypatch.undo()
    assert read(data, "f") == b"short\0\0\0"
    assert read(data, "g") == b"next"


def test_entry_from_stat_describes_one_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o750)
    os.chmod(tmp_path / "d", 0o2750)
    st = os.lstat(tmp_path / "d")
    entry = entry_from_stat(str(tmp_path), "d", st, IDMappings())
    assert entry is not None
    assert (entry.name, entry.type, entry.mode, entry.size) == ("d/", "5", 0o2750, 0)
    assert entry.mtime_ns == st.st_mtime_ns and entry.atime_ns is None


def test_changes_size_counts_regular_files_once_per_inode(tmp_path: Path) -> None:
    write(tmp_path / "a", b"12345")
    os.link(tmp_path / "a", tmp_path / "a2")
    write(tmp_path / "b", b"123")
    os.symlink("a-rather-long-target", tmp_path / "l")
    (tmp_path / "d").mkdir()
    changes = [
        Change("/a", A),
        Change("/a2", A),
        Change("/b", C),
        Change("/l", A),
        Change("/d", C),
        Change("/gone", D),
        Change("/vanished", A),
    ]
    assert changes_size(str(tmp_path), changes) == 8

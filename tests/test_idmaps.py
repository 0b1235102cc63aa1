"""Per-layer id maps: files stored shifted, shifted back on the way out, children with other maps."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphdriver.testing.treeutil import D, F, make_tar
from tests.conftest import IS_ROOT, run_cli

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (files owned by other ids)")

MAP = "0:100000:65536"
LAYER = make_tar({"etc": D(), "etc/passwd": F(b"root:x:0:0::/root:/bin/sh\n"),
                  "home": D(uid=1000, gid=1000), "home/u": F(b"mine", uid=1000, gid=1000, mode=0o4755)})


def gd(tmp_path: Path, driver: str, *args: str, check: bool = True, input: bytes | None = None):
    # Overlay children with other maps start as shifted copies here: the idmapped
    # mounts the driver prefers where it can are tested on a tmpfs below.
    copy = ("--opt", "idmapped_lowers=false") if driver == "overlay" else ()
    return run_cli(*copy, *args, root=tmp_path / "store", driver=driver, check=check, input=input)


def gd_auto(base: Path, *args: str, check: bool = True, input: bytes | None = None):
    return run_cli(*args, root=base / "store", driver="overlay", check=check, input=input)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs (which allows idmapped mounts since Linux 6.3), unmounted with all below it."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-R", str(where)], check=True)


def owners(root: str, *paths: str) -> list[tuple[int, int]]:
    return [(st.st_uid, st.st_gid) for st in (os.lstat(os.path.join(root, p)) for p in paths)]


def test_a_layer_with_its_own_maps_stores_shifted_ids_and_gives_back_the_archived_ones(tmp_path, driver_name):
    gd(tmp_path, driver_name, "import", "base", "--uidmap", MAP, "-", input=gzip.compress(LAYER))
    record = json.loads(gd(tmp_path, driver_name, "layer", "base").stdout)
    assert (record["uidmap"], record["gidmap"]) == (MAP, MAP)  # --gidmap defaults to the --uidmap
    root = gd(tmp_path, driver_name, "mount", "base").stdout.decode().strip()
    try:
        assert owners(root, ".", "etc/passwd", "home", "home/u") == [
            (100000, 100000), (100000, 100000), (101000, 101000), (101000, 101000)]
        assert os.lstat(os.path.join(root, "home/u")).st_mode & 0o7777 == 0o4755
    finally:
        gd(tmp_path, driver_name, "unmount", "base")
    assert gd(tmp_path, driver_name, "diff", "base").stdout == LAYER  # byte for byte
    regenerated = gd(tmp_path, driver_name, "diff", "base", "--regenerate").stdout
    with tarfile.open(fileobj=io.BytesIO(regenerated)) as tf:
        shown = {m.name.rstrip("/"): (m.uid, m.gid) for m in tf.getmembers()}
    assert shown["home/u"] == (1000, 1000) and shown["etc/passwd"] == (0, 0)  # shifted back
    assert gd(tmp_path, driver_name, "check", "base").returncode == 0
    # A child without maps of its own takes its parent's; what a container writes goes out unshifted.
    gd(tmp_path, driver_name, "create", "ctr", "--parent", "base", "--rw")
    assert json.loads(gd(tmp_path, driver_name, "layer", "ctr").stdout)["uidmap"] == MAP
    root = gd(tmp_path, driver_name, "mount", "ctr").stdout.decode().strip()
    try:
        Path(root, "home/new").write_bytes(b"n")
        os.chown(os.path.join(root, "home/new"), 101000, 101000)
    finally:
        gd(tmp_path, driver_name, "unmount", "ctr")
    changes = gd(tmp_path, driver_name, "changes", "ctr").stdout.decode().split("\n")
    assert changes[:2] == ["C /home", "A /home/new"]
    with tarfile.open(fileobj=io.BytesIO(gd(tmp_path, driver_name, "diff", "ctr").stdout)) as tf:
        assert {m.name.rstrip("/"): (m.uid, m.gid) for m in tf.getmembers()}["home/new"] == (1000, 1000)


def test_a_child_with_other_maps(tmp_path, driver_name):
    gd(tmp_path, driver_name, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    other = gd(tmp_path, driver_name, "create", "other", "--parent", "base", "--uidmap", "0:200000:65536",
               check=False)
    assert other.returncode == 0, other.stderr
    root = gd(tmp_path, driver_name, "mount", "other").stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home/u") == [(200000, 200000), (201000, 201000)]
        assert os.lstat(os.path.join(root, "home/u")).st_mode & 0o7777 == 0o4755  # kept through the chown
    finally:
        gd(tmp_path, driver_name, "unmount", "other")
    assert gd(tmp_path, driver_name, "changes", "other").stdout == b""  # the same container ids
    assert gd(tmp_path, driver_name, "diffsize", "other").stdout == b"0\n"
    # What the child adds goes out in container ids; a grandchild takes the child's maps.
    gd(tmp_path, driver_name, "create", "top", "--parent", "other", "--rw")
    root = gd(tmp_path, driver_name, "mount", "top").stdout.decode().strip()
    try:
        assert owners(root, "home/u") == [(201000, 201000)]
        Path(root, "etc/added").write_bytes(b"a")
        os.chown(os.path.join(root, "etc/added"), 200007, 200007)
    finally:
        gd(tmp_path, driver_name, "unmount", "top")
    listed = gd(tmp_path, driver_name, "changes", "top").stdout.decode().split()
    assert listed == ["C", "/etc", "A", "/etc/added"]
    with tarfile.open(fileobj=io.BytesIO(gd(tmp_path, driver_name, "diff", "top").stdout)) as tf:
        assert {m.name.rstrip("/"): m.uid for m in tf.getmembers()}["etc/added"] == 7


def _refuses_a_child_whose_maps_miss_an_owner(run) -> None:
    """The base holds a file of container id 1000; a child mapping only ids 0-999 cannot store it
    (a view would show the overflow id, a copy has no id to give): refused in one line, naming the
    owner, and nothing of the child is left."""
    run("import", "base", "--uidmap", MAP, "-", input=LAYER)
    refused = run("create", "c", "--parent", "base", "--uidmap", "0:200000:1000", check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count(b"\n") == 1 and b"owner 101000:101000" in refused.stderr, refused.stderr
    assert run("layers").stdout.decode().split() == ["base"]
    assert run("layer", "c", check=False).returncode == 3
    assert run("check").returncode == 0
    assert b"c" not in run("cleanup").stdout.split()


def test_a_child_whose_maps_miss_an_owner_of_its_parent_is_refused(tmp_path, driver_name):
    _refuses_a_child_whose_maps_miss_an_owner(
        lambda *a, check=True, input=None: gd(tmp_path, driver_name, *a, check=check, input=input))


def test_a_gid_map_alone_keeps_the_uid_map_a_layer_would_have_had(tmp_path, driver_name):
    """``--gidmap`` alone: the uid map stays its parent's (else the store's), as
    containers-storage's create-layer has it; a store's ``--uidmap`` alone maps groups alike."""
    gd(tmp_path, driver_name, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    gd(tmp_path, driver_name, "create", "c", "--parent", "base", "--gidmap", "0:400000:65536")
    record = json.loads(gd(tmp_path, driver_name, "layer", "c").stdout)
    assert (record["uidmap"], record["gidmap"]) == (MAP, "0:400000:65536")
    root = gd(tmp_path, driver_name, "mount", "c").stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home/u") == [(100000, 400000), (101000, 401000)]
    finally:
        gd(tmp_path, driver_name, "unmount", "c")
    gd(tmp_path, driver_name, "import", "nomap", "--gidmap", "0:400000:65536", "-", input=LAYER)
    record = json.loads(gd(tmp_path, driver_name, "layer", "nomap").stdout)
    assert (record["uidmap"], record["gidmap"]) == ("", "0:400000:65536")
    mapped = tmp_path / "mapped"
    run_cli("--uidmap", MAP, "import", "sb", "-", root=mapped, driver=driver_name, input=LAYER)
    root = run_cli("mount", "sb", root=mapped, driver=driver_name).stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home/u") == [(100000, 100000), (101000, 101000)]
    finally:
        run_cli("unmount", "sb", root=mapped, driver=driver_name)


@pytest.mark.parametrize("bad", ["0:1000:10,5:2000:10", "0:1000:10,20:1005:10", "0:4294967290:100",
                                 "1:2", "0:-1:5"])
def test_bad_maps_are_refused_in_one_line(tmp_path, bad):
    proc = gd(tmp_path, "vfs", "create", "l", "--uidmap", bad, check=False)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert gd(tmp_path, "vfs", "layers").stdout == b""


@pytest.mark.skipif(shutil.which("containers-storage") is None, reason="needs containers-storage")
def test_the_same_owners_on_disk_as_containers_storage(tmp_path):
    (tmp_path / "l.tar").write_bytes(LAYER)
    cs = ["containers-storage", "--graph", str(tmp_path / "cs"), "--run", str(tmp_path / "cs-run"),
          "--storage-driver", "vfs"]
    cs_id = subprocess.run([*cs, "create-layer", "--uidmap", MAP, "--gidmap", MAP], check=True,
                           capture_output=True, text=True).stdout.split()[-1]
    subprocess.run([*cs, "applydiff", "-f", str(tmp_path / "l.tar"), cs_id], check=True, capture_output=True)
    theirs = str(tmp_path / "cs" / "vfs" / "dir" / cs_id)
    subprocess.run([*cs, "shutdown"], check=False, capture_output=True)
    gd(tmp_path, "vfs", "create", "l", "--uidmap", MAP, "--gidmap", MAP)
    gd(tmp_path, "vfs", "apply", "l", str(tmp_path / "l.tar"))
    mine = gd(tmp_path, "vfs", "mount", "l").stdout.decode().strip()
    paths = (".", "etc", "etc/passwd", "home", "home/u")
    assert owners(mine, *paths) == owners(theirs, *paths)
    gd(tmp_path, "vfs", "unmount", "l")


def test_an_imported_child_with_other_maps_checks_clean_and_exports_its_own_files(tmp_path, driver_name):
    gd(tmp_path, driver_name, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    child = make_tar({"srv": D(), "srv/x": F(b"hi", uid=7, gid=7)})
    gd(tmp_path, driver_name, "import", "child", "--parent", "base", "--uidmap", "0:300000:65536", "-",
       input=child)
    assert gd(tmp_path, driver_name, "check").stdout.decode().split() == ["base:", "ok", "child:", "ok"]
    assert gd(tmp_path, driver_name, "diff", "child").stdout == child
    listed = gd(tmp_path, driver_name, "changes", "child").stdout.decode().split()
    assert listed == ["A", "/srv", "A", "/srv/x"]
    root = gd(tmp_path, driver_name, "mount", "child").stdout.decode().strip()
    try:
        assert owners(root, "srv/x", "etc/passwd") == [(300007, 300007), (300000, 300000)]
    finally:
        gd(tmp_path, driver_name, "unmount", "child")


def _idmapped_overlay(base: Path) -> bool:
    """Whether the kernel makes idmapped mounts of *base* (a child with other maps is then made so)."""
    gd_auto(base, "import", "probe-base", "--uidmap", MAP, "-", input=LAYER)
    gd_auto(base, "create", "probe-child", "--parent", "probe-base", "--uidmap", "0:200000:65536")
    used = (base / "store" / "overlay" / "probe-child" / "lowermaps").exists()
    gd_auto(base, "remove", "probe-child")
    gd_auto(base, "remove", "probe-base")
    return used


def test_an_overlay_child_with_other_maps_sees_its_lowers_idmapped_without_a_copy(tmpfs):
    if not _idmapped_overlay(tmpfs):
        pytest.skip("this kernel makes no idmapped mounts of a tmpfs (mount_setattr, Linux 6.3)")
    gd_auto(tmpfs, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    gd_auto(tmpfs, "create", "other", "--parent", "base", "--uidmap", "0:200000:65536")
    folder = tmpfs / "store" / "overlay" / "other"
    assert os.listdir(folder / "diff") == []  # nothing copied
    assert owners(str(folder / "diff"), ".") == [(200000, 200000)]
    assert json.loads(gd_auto(tmpfs, "layer", "other").stdout)["metadata"]["IdmappedLowers"] == "true"
    root = gd_auto(tmpfs, "mount", "other").stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home", "home/u") == [(200000, 200000), (201000, 201000),
                                                               (201000, 201000)]
        assert os.lstat(os.path.join(root, "home/u")).st_mode & 0o7777 == 0o4755
    finally:
        gd_auto(tmpfs, "unmount", "other")
    assert gd_auto(tmpfs, "changes", "other").stdout == b""
    assert gd_auto(tmpfs, "diffsize", "other").stdout == b"0\n"
    # Applied into it: a file under a directory only a lower has, and a hardlink to a lower file;
    # both are copied into its own maps.
    added = make_tar({"home/new": F(b"n", uid=1000, gid=1000)})
    gd_auto(tmpfs, "apply", "other", "-", input=added)
    with_link = io.BytesIO()
    with tarfile.open(fileobj=with_link, mode="w") as tf:
        info = tarfile.TarInfo("etc/hl")
        info.type, info.linkname = tarfile.LNKTYPE, "etc/passwd"
        tf.addfile(info)
    gd_auto(tmpfs, "apply", "other", "-", input=with_link.getvalue())
    assert owners(str(folder / "diff"), "home", "home/new", "etc/hl") == [
        (201000, 201000), (201000, 201000), (200000, 200000)]
    # A grandchild takes the child's maps and sees every layer below it in them.
    gd_auto(tmpfs, "create", "top", "--parent", "other", "--rw")
    root = gd_auto(tmpfs, "mount", "top").stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home/u", "home/new") == [(200000, 200000), (201000, 201000),
                                                                   (201000, 201000)]
        Path(root, "etc/added").write_bytes(b"a")
        os.chown(os.path.join(root, "etc/added"), 200007, 200007)
    finally:
        gd_auto(tmpfs, "unmount", "top")
    assert gd_auto(tmpfs, "changes", "top").stdout.decode().split() == ["C", "/etc", "A", "/etc/added"]
    with tarfile.open(fileobj=io.BytesIO(gd_auto(tmpfs, "diff", "top").stdout)) as tf:
        assert {m.name.rstrip("/"): m.uid for m in tf.getmembers()}["etc/added"] == 7
    # The base's files were never touched.
    assert owners(str(tmpfs / "store" / "overlay" / "base" / "diff"), "etc/passwd", "home/u") == [
        (100000, 100000), (101000, 101000)]


def test_an_imported_overlay_child_on_idmapped_lowers_checks_clean(tmpfs):
    if not _idmapped_overlay(tmpfs):
        pytest.skip("this kernel makes no idmapped mounts of a tmpfs (mount_setattr, Linux 6.3)")
    gd_auto(tmpfs, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    child = make_tar({"srv": D(), "srv/x": F(b"hi", uid=7, gid=7)})
    gd_auto(tmpfs, "import", "child", "--parent", "base", "--uidmap", "0:300000:65536", "-", input=child)
    assert (tmpfs / "store" / "overlay" / "child" / "lowermaps").exists()
    assert gd_auto(tmpfs, "check").stdout.decode().split() == ["base:", "ok", "child:", "ok"]
    assert gd_auto(tmpfs, "diff", "child").stdout == child
    assert gd_auto(tmpfs, "changes", "child").stdout.decode().split() == ["A", "/srv", "A", "/srv/x"]
    root = gd_auto(tmpfs, "mount", "child").stdout.decode().strip()
    try:
        assert owners(root, "srv/x", "etc/passwd") == [(300007, 300007), (300000, 300000)]
    finally:
        gd_auto(tmpfs, "unmount", "child")


_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # v2: cap_net_raw, effective
_ACL = (2).to_bytes(4, "little") + b"".join(
    tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    for tag, perm, ident in ((1, 6, 2**32 - 1), (2, 7, 1000), (4, 4, 2**32 - 1), (0x10, 7, 2**32 - 1),
                             (0x20, 4, 2**32 - 1)))


@pytest.mark.parametrize("base_maps", [("--uidmap", MAP), ()])
def test_a_child_over_capabilities_and_acls_is_a_shifted_copy(tmpfs, base_maps):
    """A file capability or a POSIX ACL holds ids an idmapped view would show translated (or not
    at all): the child is made as a shifted copy, so the container keeps its capability and an
    empty child has no changes."""
    layer = make_tar({"cap": F(b"ping", mode=0o755, xattrs={"security.capability": _CAPABILITY}),
                      "f": F(b"f", xattrs={"system.posix_acl_access": _ACL})})
    gd_auto(tmpfs, "import", "base", *base_maps, "-", input=layer)
    gd_auto(tmpfs, "create", "k", "--parent", "base", "--uidmap", "0:200000:65536")
    assert gd_auto(tmpfs, "changes", "k", check=False).stdout == b""
    assert gd_auto(tmpfs, "diffsize", "k", check=False).stdout == b"0\n"
    root = gd_auto(tmpfs, "mount", "k").stdout.decode().strip()
    try:
        assert os.getxattr(os.path.join(root, "cap"), "security.capability")
    finally:
        gd_auto(tmpfs, "unmount", "k")
    assert not (tmpfs / "store" / "overlay" / "k" / "lowermaps").exists()


def test_an_overlay_child_with_other_maps_over_a_chain_sees_every_lower_idmapped(tmpfs):
    """The lowers of a chain are named through symlinks the store owns (root's): only the
    trees they name are asked whether the child's maps can express their owners."""
    if not _idmapped_overlay(tmpfs):
        pytest.skip("this kernel makes no idmapped mounts of a tmpfs (mount_setattr, Linux 6.3)")
    gd_auto(tmpfs, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    gd_auto(tmpfs, "create", "mid", "--parent", "base", "--rw")
    made = gd_auto(tmpfs, "create", "c", "--parent", "mid", "--uidmap", "0:200000:65536", check=False)
    assert made.returncode == 0, made.stderr
    assert (tmpfs / "store" / "overlay" / "c" / "lowermaps").exists()
    root = gd_auto(tmpfs, "mount", "c").stdout.decode().strip()
    try:
        assert owners(root, "etc/passwd", "home/u") == [(200000, 200000), (201000, 201000)]
    finally:
        gd_auto(tmpfs, "unmount", "c")


def test_an_idmapped_overlay_child_whose_maps_miss_an_owner_is_refused_too(tmpfs):
    if not _idmapped_overlay(tmpfs):
        pytest.skip("this kernel makes no idmapped mounts of a tmpfs (mount_setattr, Linux 6.3)")
    _refuses_a_child_whose_maps_miss_an_owner(
        lambda *a, check=True, input=None: gd_auto(tmpfs, *a, check=check, input=input))


def test_idmapped_lowers_false_copies(tmpfs):
    gd_auto(tmpfs, "import", "base", "--uidmap", MAP, "-", input=LAYER)
    run_cli("--opt", "idmapped_lowers=false", "create", "other", "--parent", "base", "--uidmap",
            "0:200000:65536", root=tmpfs / "store", driver="overlay", check=True)
    folder = tmpfs / "store" / "overlay" / "other"
    assert not (folder / "lowermaps").exists()
    assert owners(str(folder / "diff"), "etc/passwd", "home/u") == [(200000, 200000), (201000, 201000)]
    bad = run_cli("--opt", "idmapped_lowers=maybe", "layers", root=tmpfs / "store", driver="overlay")
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1, bad.stderr

"""The vfs driver: layers as full copies, the layer folder protocol, counted get/put."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.drivers.base import TREE_MADE_FILE, DriverConfig
from graphdriver.drivers.values import CreateOpts
from graphdriver.drivers.vfs import VfsDriver, backing_filesystem
from graphdriver.errors import (
    AlreadyExists,
    GraphDriverError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
)
from graphdriver.fs import tree as treecopy_module
from graphdriver.fs.locking import claim
from graphdriver.fs.tree import reflink_supported, remove_tree
from graphdriver.idmap import IDMap, IDMappings
from graphdriver.layerio.whiteout import WhiteoutMode
from graphdriver.store import content
from tests.conftest import as_nobody

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, mounts)")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_extract = pytest.mark.skipif(
    not has_module("graphdriver.layerio.extract"), reason="graphdriver.layerio.extract is not there yet"
)
needs_walk_export = pytest.mark.skipif(
    not (has_module("graphdriver.diff.walk") and has_module("graphdriver.layerio.export")),
    reason="graphdriver.diff.walk / graphdriver.layerio.export are not there yet",
)

T = 1_600_000_000_123_456_789


# ----- helpers ----------------------------------------------------------------------


def make_driver(tmp_path: Path, home: str = "home", **kwargs: Any) -> VfsDriver:
    config = DriverConfig(home=str(tmp_path / home), run_root=str(tmp_path / "run"), **kwargs)
    return VfsDriver(config)


@pytest.fixture
def d(tmp_path: Path) -> VfsDriver:
    return make_driver(tmp_path)


def fs_of(driver: VfsDriver, layer_id: str) -> Path:
    return Path(driver.resolve(layer_id)) / "fs"


def populate(root: Path) -> None:
    """Files of every kind an unprivileged user can make, with fixed times."""
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.setxattr(root / "etc" / "hosts", "user.origin", b"base")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-alias")
    os.symlink("../etc/hosts", root / "bin" / "hosts-link")
    os.mkfifo(root / "fifo")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    for p in [*root.rglob("*"), root]:
        os.utime(p, ns=(T, T), follow_symlinks=False)


def tree_meta(root: Path) -> dict[str, tuple[Any, ...]]:
    """Per path: type and mode, owner, size, mtime, link target, xattrs, hardlink group, data."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, int] = {}
    for p in sorted([root, *root.rglob("*")]):
        st = os.lstat(p)
        is_reg = stat.S_ISREG(st.st_mode)
        group = groups.setdefault(st.st_ino, len(groups)) if is_reg and st.st_nlink > 1 else None
        xattrs = {n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}
        out[str(p.relative_to(root))] = (
            stat.filemode(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size if is_reg else 0,
            st.st_mtime_ns,
            os.readlink(p) if stat.S_ISLNK(st.st_mode) else None,
            xattrs,
            group,
            p.read_bytes() if is_reg else None,
        )
    return out


def read_chain_file(driver: VfsDriver, layer_id: str) -> Any:
    with open(Path(driver.resolve(layer_id)) / "layerchain.json", encoding="utf-8") as f:
        return json.load(f)


def dead_pid() -> int:
    """A pid no process has: beyond the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        return int(f.read()) + 1


# ----- create ---------------------------------------------------------------------


def test_base_layer_is_an_empty_0755_root(d: VfsDriver) -> None:
    d.create("base", None)
    fs = fs_of(d, "base")
    assert os.listdir(fs) == []
    st = os.lstat(fs)
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (st.st_uid, st.st_gid) == ((0, 0) if IS_ROOT else (os.geteuid(), os.getegid()))
    assert sorted(os.listdir(d.resolve("base"))) == ["fs", "layerchain.json"]


@needs_root
def test_base_root_owned_by_the_id_maps_root(tmp_path: Path) -> None:
    maps = IDMappings(uids=IDMap.parse("0:100000:65536"), gids=IDMap.parse("0:200000:65536"))
    driver = make_driver(tmp_path, idmaps=maps)
    driver.create("base", None)
    st = os.lstat(fs_of(driver, "base"))
    assert (st.st_uid, st.st_gid) == (100000, 200000)


def test_child_is_a_faithful_copy_of_its_parent(d: VfsDriver) -> None:
    d.create("base", None)
    populate(fs_of(d, "base"))
    d.create("child", "base")
    d.create_rw("ctr", "child")
    base = tree_meta(fs_of(d, "base"))
    assert tree_meta(fs_of(d, "child")) == base
    assert tree_meta(fs_of(d, "ctr")) == base
    # A copy, not shared: writing the child leaves the parent alone.
    (fs_of(d, "child") / "etc" / "hosts").write_bytes(b"changed")
    assert (fs_of(d, "base") / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (
        os.lstat(fs_of(d, "child") / "etc" / "hosts").st_ino
        != os.lstat(fs_of(d, "base") / "etc" / "hosts").st_ino
    )


@needs_root
def test_child_keeps_owners_and_devices(d: VfsDriver) -> None:
    d.create("base", None)
    fs = fs_of(d, "base")
    (fs / "home").mkdir()
    os.chown(fs / "home", 1000, 1000)
    (fs / "dev").mkdir()
    os.mknod(fs / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (fs / "ping").write_bytes(b"x")
    os.chown(fs / "ping", 0, 5)
    os.chmod(fs / "ping", 0o4755)
    os.setxattr(fs / "ping", "security.capability", bytes.fromhex("0000000200200000000000000000000000000000"))
    d.create("child", "base")
    assert tree_meta(fs_of(d, "child")) == tree_meta(fs)
    assert os.lstat(fs_of(d, "child") / "dev" / "null").st_rdev == os.makedev(1, 3)


def test_layer_chain_file(d: VfsDriver) -> None:
    d.create("base", None)
    d.create("mid", "base")
    d.create_rw("top", "mid")
    assert read_chain_file(d, "base") is None
    assert d.layer_chain("base") == []
    assert read_chain_file(d, "mid") == [d.resolve("base")]
    assert read_chain_file(d, "top") == [d.resolve("mid"), d.resolve("base")]
    assert d.layer_chain("top") == [d.resolve("mid"), d.resolve("base")]


def test_create_twice_and_missing_parent(d: VfsDriver, tmp_path: Path) -> None:
    d.create("base", None)
    with pytest.raises(AlreadyExists):
        d.create("base", None)
    with pytest.raises(NotFound):
        d.create("orphan", "nope")
    assert not d.exists("orphan")
    assert os.listdir(tmp_path / "home" / ".staging") == []


def test_failed_copy_leaves_nothing(d: VfsDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d.create("base", None)

    def broken_copy(src: str, dst: str, *, reflink: bool | None = None) -> None:
        os.mkdir(dst)
        Path(dst, "half").write_bytes(b"")
        raise OSError(5, "Input/output error", src)

    monkeypatch.setattr(treecopy_module, "copy_tree", broken_copy)
    with pytest.raises(GraphDriverError) as e:
        d.create("child", "base")
    assert "base" in str(e.value) and "Input/output error" in str(e.value)
    assert not d.exists("child")
    assert os.listdir(tmp_path / "home" / ".staging") == []


def test_storage_options_refused(d: VfsDriver) -> None:
    # A size limit is something vfs cannot do here (7); an unknown option is a bad argument (2).
    with pytest.raises(Unsupported) as e:
        d.create_rw("ctr", None, CreateOpts(storage_opt={"size": "1G"}))
    assert "size" in str(e.value) and e.value.exit_code == 7
    with pytest.raises(InvalidArgument):
        d.create_rw("ctr", None, CreateOpts(storage_opt={"quota": "1"}))
    assert not d.exists("ctr")


# ----- alternate ids and read-only homes ---------------------------------------------


@pytest.mark.parametrize("spelling", ["layerID", "layerId"])
def test_alternate_id(d: VfsDriver, tmp_path: Path, spelling: str) -> None:
    d.create("real", None)
    (fs_of(d, "real") / "marker").write_bytes(b"here")
    alias = tmp_path / "home" / "alias"
    alias.mkdir()
    (alias / spelling).write_text("real\n")
    assert d.exists("alias")
    assert d.resolve("alias") == d.resolve("real")
    path = d.get("alias")
    try:
        assert Path(path) == fs_of(d, "real")
        assert (Path(path) / "marker").read_bytes() == b"here"
    finally:
        d.put("alias")
    d.create("child", "alias")  # usable as a parent under its other name
    assert (fs_of(d, "child") / "marker").read_bytes() == b"here"
    assert d.layer_chain("child") == [d.resolve("real")]


def test_alternate_id_must_be_a_plain_name(d: VfsDriver, tmp_path: Path) -> None:
    alias = tmp_path / "home" / "alias"
    alias.mkdir()
    (alias / "layerID").write_text("../escape")
    with pytest.raises(GraphDriverError):
        d.resolve("alias")


def test_readonly_home(tmp_path: Path) -> None:
    other = make_driver(tmp_path, home="shared")
    other.create("image", None)
    populate(fs_of(other, "image"))
    shared = tmp_path / "shared"
    before = sorted(str(p) for p in shared.rglob("*"))

    d = make_driver(tmp_path, readonly_homes=(str(shared),))
    assert d.exists("image")
    assert d.resolve("image") == str(shared / "image")
    assert d.is_readonly_store("image")
    d.create_rw("ctr", "image")
    assert not d.is_readonly_store("ctr")
    assert tree_meta(fs_of(d, "ctr")) == tree_meta(fs_of(other, "image"))
    assert d.layer_chain("ctr") == [str(shared / "image")]
    with d.mounted("image") as path:
        assert Path(path) == shared / "image" / "fs"
    with pytest.raises(Precondition):
        d.remove("image")
    assert d.exists("image")
    assert sorted(str(p) for p in shared.rglob("*")) == before  # nothing written there


def test_home_layer_shadows_readonly_one(tmp_path: Path) -> None:
    other = make_driver(tmp_path, home="shared")
    other.create("x", None)
    d = make_driver(tmp_path, readonly_homes=(str(tmp_path / "shared"),))
    with pytest.raises(AlreadyExists):
        d.create("x", None)


# ----- remove and cleanup -------------------------------------------------------------


def test_remove_renames_then_destroys(d: VfsDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d.create("base", None)
    populate(fs_of(d, "base"))
    os.chmod(fs_of(d, "base") / "etc", 0o555)  # read-only directories do not stop removal
    folder = tmp_path / "home" / "base"
    seen: list[tuple[str, bool, bool]] = []
    real_destroy = d._destroy

    def spy(path: str) -> None:
        seen.append((path, folder.exists(), Path(path).exists()))
        real_destroy(path)

    monkeypatch.setattr(d, "_destroy", spy)
    d.remove("base")
    assert seen == [(str(tmp_path / "home" / ".removing-base"), False, True)]
    assert not d.exists("base")
    assert sorted(os.listdir(tmp_path / "home")) == [".staging"]  # the layer's mount lock went too
    with pytest.raises(NotFound):
        d.remove("base")


def test_remove_a_tree_deeper_than_the_recursion_limit(d: VfsDriver) -> None:
    d.create("base", None)
    fd = os.open(fs_of(d, "base"), os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    d.create("child", "base")
    d.remove("child")
    d.remove("base")
    assert not d.exists("base") and not d.exists("child")


def test_remove_refused_while_mounted(d: VfsDriver) -> None:
    d.create_rw("ctr", None)
    d.get("ctr")
    with pytest.raises(Precondition):
        d.remove("ctr")
    assert d.exists("ctr")
    d.put("ctr")
    d.remove("ctr")
    assert not d.exists("ctr")


def test_cleanup_finishes_interrupted_work(d: VfsDriver, tmp_path: Path) -> None:
    home = tmp_path / "home"
    d.create("keep", None)
    leftover = home / "gone-removing" / "fs" / "deep"
    leftover.mkdir(parents=True)
    (leftover / "file").write_bytes(b"x")
    os.chmod(leftover, 0o500)
    dead = home / ".staging" / f"half-{dead_pid()}"
    (dead / "fs").mkdir(parents=True)
    alive = home / ".staging" / f"busy-{os.getpid()}"
    held = claim(str(alive), folder=True)  # a live maker holds its staging folder
    live = home / "live-removing"  # a layer named like an older store's leftover
    live.mkdir()
    first = d.cleanup()
    assert not any("gone-removing" in line for line in first)  # no records given: kept
    done = first + d.cleanup(layers={"keep", "live-removing"})
    assert live.exists()
    assert not (home / "gone-removing").exists()
    assert not dead.exists()
    assert alive.exists()
    assert d.exists("keep")
    assert any("gone-removing" in line for line in done)
    assert any(dead.name in line for line in done)
    os.close(held)


# ----- get and put ------------------------------------------------------------------------


def test_get_returns_the_tree_without_mounting(d: VfsDriver) -> None:
    d.create_rw("ctr", None)
    path = d.get("ctr")
    assert path == str(fs_of(d, "ctr"))
    assert not os.path.ismount(path)
    Path(path, "written").write_bytes(b"through get")
    d.put("ctr")
    assert (fs_of(d, "ctr") / "written").read_bytes() == b"through get"
    with pytest.raises(Precondition):
        d.put("ctr")
    with pytest.raises(NotFound):
        d.get("nope")


def test_counts_are_shared_between_driver_instances(tmp_path: Path) -> None:
    one = make_driver(tmp_path)
    two = make_driver(tmp_path)
    one.create_rw("ctr", None)
    assert one.get("ctr") == two.get("ctr")
    assert one.mount_count("ctr") == two.mount_count("ctr") == 2
    one.put("ctr")
    assert two.mount_count("ctr") == 1
    with pytest.raises(Precondition):
        two.remove("ctr")
    two.put("ctr")
    assert one.mount_count("ctr") == 0
    with pytest.raises(Precondition):
        one.put("ctr")
    one.remove("ctr")
    assert not two.exists("ctr")


def test_cleanup_drops_mount_records_of_removed_layers(d: VfsDriver, tmp_path: Path) -> None:
    d.create_rw("ctr", None)
    d.get("ctr")
    os.rename(tmp_path / "home" / "ctr", tmp_path / "home" / "ctr-removing")
    assert any("ctr" in line for line in d.cleanup())
    assert d.mount_count("ctr") == 0


def test_apply_target_is_the_tree(d: VfsDriver) -> None:
    d.create("base", None)
    target = d.apply_target("base")
    assert target.path == str(fs_of(d, "base"))
    assert target.whiteouts == WhiteoutMode.DELETE
    assert target.lower_dirs == ()


def test_missing_fs_is_reported(d: VfsDriver, tmp_path: Path) -> None:
    d.create("base", None)
    os.rmdir(tmp_path / "home" / "base" / "fs")
    with pytest.raises(GraphDriverError) as e:
        d.get("base")
    assert "fs" in str(e.value)
    assert d.mount_count("base") == 0


# ----- options, probe, status ---------------------------------------------------------------


def test_unknown_option_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        make_driver(tmp_path, options={"bogus": "1"})
    assert "bogus" in str(e.value) and "copy" in str(e.value)


def test_copy_option_values(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        make_driver(tmp_path, home="bad", options={"copy": "sometimes"})
    assert "sometimes" in str(e.value)
    assert not (tmp_path / "bad").exists()
    plain = make_driver(tmp_path, options={"copy": "copy"})
    plain.create("base", None)
    (fs_of(plain, "base") / "f").write_bytes(b"data")
    plain.create("child", "base")
    assert (fs_of(plain, "child") / "f").read_bytes() == b"data"
    assert ("Copy", "copy") in plain.status()


def test_copy_reflink_refused_where_unsupported(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    if reflink_supported(str(tmp_path / "probe")):
        pytest.skip("this filesystem can clone")
    with pytest.raises(Unsupported) as e:
        make_driver(tmp_path, options={"copy": "reflink"})
    assert "copy=auto" in str(e.value)


def test_probe(tmp_path: Path) -> None:
    VfsDriver.probe(str(tmp_path / "not" / "yet" / "there"))
    assert os.listdir(tmp_path) == []  # probing leaves nothing behind
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(Unsupported) as e:
        VfsDriver.probe(str(tmp_path / "file" / "home"))
    assert "not a directory" in str(e.value)


@needs_root
def test_probe_refuses_a_read_only_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.decode().strip()}")
    try:
        with pytest.raises(Unsupported) as e:
            VfsDriver.probe(str(mnt / "home"))
        assert "writable" in str(e.value)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_status(d: VfsDriver) -> None:
    status = dict(d.status())
    assert status["Home"] == d.home
    assert status["Backing Filesystem"] == backing_filesystem(d.home) != "unknown"
    assert status["Reflinks"] in ("yes", "no")
    assert status["Copy"] == "auto"
    assert str(d) == "vfs"


def test_backing_filesystem_reads_escaped_mount_points(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /srv/my\\040data rw - xfs /dev/sdb rw\n"
        "31 22 0:41 / /srv/my rw - tmpfs tmpfs rw\n"
        "32 22 0:42 / /srv/my rw - overlay overlay rw\n"
    )
    assert backing_filesystem("/srv/my data/layers", str(table)) == "xfs"
    assert backing_filesystem("/srv/my/layers", str(table)) == "overlay"  # the later mount on top
    assert backing_filesystem("/srv/mydata", str(table)) == "ext4"
    assert backing_filesystem("/srv", str(tmp_path / "no-table")) == "unknown"


# ----- without privilege ---------------------------------------------------------------------


def _open_to_nobody(tmp_path: Path) -> None:
    """Let nobody reach into *tmp_path* (and the folders above it, up to /tmp)."""
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.lstat(parent).st_mode | 0o005)


def _nobodys(folder: Path) -> Path:
    """*folder*, made and owned by nobody."""
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    return folder


@needs_root
def test_works_without_privilege(tmp_path: Path) -> None:
    _open_to_nobody(tmp_path)
    work = _nobodys(tmp_path / "nobody")

    def scenario() -> dict[str, Any]:
        VfsDriver.probe(str(work / "home"))
        driver = VfsDriver(DriverConfig(home=str(work / "home"), run_root=str(work / "run")))
        driver.create("base", None)
        populate(fs_of(driver, "base"))
        driver.create_rw("ctr", "base")
        same = tree_meta(fs_of(driver, "ctr")) == tree_meta(fs_of(driver, "base"))
        with driver.mounted("ctr") as path:
            Path(path, "new").write_bytes(b"x")
        driver.remove("ctr")
        return {"same": same, "exists": driver.exists("ctr"), "status": dict(driver.status())}

    result = as_nobody(scenario)
    assert result == {"same": True, "exists": False, "status": result["status"]}
    assert result["status"]["Home"] == str(work / "home")


@needs_root
def test_acls_that_take_the_owners_permissions_away_import_without_privilege(tmp_path: Path) -> None:
    """Without privilege, an access ACL giving the owner no search or write permission is set
    once what the archive puts below it is written, and after a mode of the owner's lent for
    the moment: the files are as with root (the mode's permissions from the ACL, the group's
    from its mask), check finds the layer sound and diff gives its bytes back."""
    from graphdriver import cli as gd
    from graphdriver.testing.treeutil import D, F, make_tar
    from tests.test_cli import _load_every_module

    _load_every_module()
    _open_to_nobody(tmp_path)
    work = _nobodys(tmp_path / "nobody")
    acl = (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (2**32 - 1).to_bytes(4, "little")
        for tag, perm in ((0x01, 6), (0x04, 4), (0x10, 5), (0x20, 0)))  # u::rw- g::r-- m::r-x o::---
    xattrs = {"system.posix_acl_access": acl}
    data = make_tar({"d": D(mode=0o555, xattrs=xattrs), "d/f": F(b"f"),
                     "ro": F(b"r", mode=0o444, xattrs=xattrs)})

    (work / "l.tar").write_bytes(data)

    def scenario() -> list[int]:
        own = ["--root", str(work / "store"), "--run-root", str(work / "run"), "--driver", "vfs"]
        return [gd.main([*own, "import", "l", str(work / "l.tar")]), gd.main([*own, "check", "l"]),
                gd.main([*own, "diff", "l", "-o", str(work / "out.tar")])]

    assert as_nobody(scenario) == [0, 0, 0]
    assert (work / "out.tar").read_bytes() == data
    driver = VfsDriver(DriverConfig(home=str(work / "store" / "vfs"), run_root=str(work / "run")))
    files = Path(driver.apply_target("l").path)
    assert [stat.S_IMODE((files / p).lstat().st_mode) for p in ("d", "ro")] == [0o650, 0o650]


@needs_root
def test_a_parent_this_user_cannot_read_is_copied_as_its_owner_or_unsupported_without_privilege(
    tmp_path: Path,
) -> None:
    """A directory of mode 0000 in the parent stops a copy without root; the copy is made
    afresh as root of a user namespace of the user's own, in a process of its own, and
    keeps the folder, its mode and what it holds.  Where no such namespace can be made:
    exit 7, told in words."""
    from graphdriver.fs import asowner

    _open_to_nobody(tmp_path)
    work = _nobodys(tmp_path / "nobody")

    def scenario(namespaces: bool) -> str:
        if not namespaces:
            asowner.available = lambda **_: False  # type: ignore[assignment]  # as where they are disabled
        driver = VfsDriver(DriverConfig(home=str(work / "home"), run_root=str(work / "run")))
        driver.create("base", None)
        closed = fs_of(driver, "base") / "d0"
        closed.mkdir()
        (closed / "f").write_bytes(b"x")
        closed.chmod(0)
        try:
            driver.create_rw("ctr", "base")
        except Unsupported as e:
            return str(e)
        finally:
            closed.chmod(0o700)
        copy = fs_of(driver, "ctr") / "d0"
        mode = stat.S_IMODE(copy.stat().st_mode)
        copy.chmod(0o700)
        return f"{mode:o} {(copy / 'f').read_bytes()!r}"

    if as_nobody(asowner.unshare_user):
        assert as_nobody(lambda: scenario(True)) == "0 b'x'"
        remove_tree(str(work / "home"))
    said = as_nobody(lambda: scenario(False))
    assert said == "layer base: d0: Permission denied", said  # never where the store keeps it


@needs_root
def test_probe_refuses_an_unwritable_home_without_privilege(tmp_path: Path) -> None:
    _open_to_nobody(tmp_path)
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir(mode=0o755)

    def scenario() -> str:
        try:
            VfsDriver.probe(str(locked_dir / "home"))
        except Unsupported as e:
            return str(e)
        return ""

    assert "cannot create directories" in as_nobody(scenario)


# ----- with the archive modules ----------------------------------------------------------------


def tarball(entries: list[tuple[str, bytes | None]]) -> io.BytesIO:
    """An uncompressed layer tarball: (name, data) files, (name/, None) directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def layered(d: VfsDriver) -> Iterator[VfsDriver]:
    d.create("base", None)
    content.apply(d, "base", tarball([("etc/", None), ("etc/a", b"a"), ("etc/b", b"b"), ("etc/c", b"c")]))
    yield d


@needs_extract
def test_apply_diff_writes_into_the_tree(layered: VfsDriver) -> None:
    d = layered
    assert sorted(os.listdir(fs_of(d, "base") / "etc")) == ["a", "b", "c"]
    d.create("l2", "base")
    size = content.apply(d, "l2", tarball([("etc/", None), ("etc/.wh.a", b""), ("etc/d", b"dd")])).size
    assert size >= 0
    assert sorted(os.listdir(fs_of(d, "l2") / "etc")) == ["b", "c", "d"]
    assert sorted(os.listdir(fs_of(d, "base") / "etc")) == ["a", "b", "c"]  # parent untouched


@needs_extract
@needs_walk_export
def test_changes_and_diff_of_a_container(layered: VfsDriver) -> None:
    d = layered
    d.create_rw("ctr", "base")
    with d.mounted("ctr") as root:
        os.unlink(Path(root, "etc", "a"))
        Path(root, "etc", "b").write_bytes(b"bigger b")
        Path(root, "new").write_bytes(b"new")
    changes = {(c.path, c.kind.value) for c in content.changes(d, "ctr", "base")}
    assert changes == {("/etc", "C"), ("/etc/a", "D"), ("/etc/b", "C"), ("/new", "A")}
    out = io.BytesIO()
    content.export(d, "ctr", "base", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        names = {m.name.rstrip("/") for m in tar.getmembers()}
    assert names == {"etc", "etc/.wh.a", "etc/b", "new"}
    assert content.size(d, "ctr", "base") == len(b"bigger b") + len(b"new")
    assert d.mount_count("ctr") == 0 and d.mount_count("base") == 0


@needs_extract
@needs_walk_export
def test_a_child_is_marked_made_after_its_copy_and_before_anything_is_written(layered: VfsDriver) -> None:
    """The mark's ctime parts the copies the driver made from what was written since: the walk
    reads the bytes of files of the second kind alone (a copy's stat is the parent file's)."""
    d = layered
    d.create("child", "base")
    mark = Path(d.resolve("child")) / TREE_MADE_FILE
    made = os.lstat(mark).st_ctime_ns
    assert max(os.lstat(p).st_ctime_ns for p in fs_of(d, "child").rglob("*")) <= made
    assert d.written_since("child", "base") == made
    assert not (Path(d.resolve("base")) / TREE_MADE_FILE).exists()  # nothing below to compare with
    d.create("other", None)
    assert d.written_since("child", "other") is None  # not the tree it was made from
    # New bytes with the size, mode, owner and time the parent's file has.
    content.apply(d, "child", tarball([("etc/a", b"A")]))
    assert os.lstat(fs_of(d, "child") / "etc" / "a").st_ctime_ns >= made
    found = [(c.path, c.kind.value) for c in content.changes(d, "child", "base")]
    assert found == [("/etc", "C"), ("/etc/a", "C")]
    assert content.size(d, "child", "base") == 1
    # A layer made before such marks (by an older version) keeps Docker's rule: same stat, same file.
    os.unlink(mark)
    assert d.written_since("child", "base") is None
    assert content.changes(d, "child", "base") == []

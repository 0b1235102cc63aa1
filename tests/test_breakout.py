"""Hostile layer tarballs must not reach outside the directory they are applied to.

The layouts are those of moby's pkg/archive breakout tests (TestUntarInvalidFilenames,
TestUntarHardlinkToSymlink, TestUntarInvalidHardlink, TestUntarInvalidSymlink, ...) and
containers/storage's CVE-2018-15664 test, plus symlink and whiteout cases of our own.
Each applies an archive to ``tmp/dest`` beside ``tmp/victim/hello`` and checks both the
outcome (which error, or success and what landed inside) and that nothing outside changed.
Every case runs in-process and in the confined child.  The last section checks the
confinement itself: in-root resolution, the chrooted child and its lifetime.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import signal
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from graphdriver.errors import ArchiveError, BreakoutError, GraphDriverError
from graphdriver.fs import confine, syscalls
from graphdriver.fs.tree import remove_tree_at
from graphdriver.layerio.extract import ApplyOptions, apply_layer
from graphdriver.layerio.whiteout import WhiteoutMode

Member = tuple[tarfile.TarInfo, bytes | None]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chroot")


def _info(name: str, kind: bytes, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname, ti.mtime = kind, mode, linkname, 1_600_000_000
    return ti


def reg(name: str, data: bytes = b"") -> Member:
    ti = _info(name, tarfile.REGTYPE)
    ti.size = len(data)
    return ti, data


def dir_(name: str) -> Member:
    return _info(name, tarfile.DIRTYPE, 0o755), None


def sym(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, target), None


def link(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, target), None


def tar_of(*members: Member, fmt: int = tarfile.PAX_FORMAT, **kw: Any) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture(params=[True, False], ids=["inline", "child"])
def inline(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@dataclass
class Site:
    """``tmp/dest`` (applied to) beside ``tmp/victim/hello`` (must never change)."""

    tmp: Path
    dest: Path
    victim: Path
    secret: bytes
    inline: bool

    @property
    def hello(self) -> Path:
        return self.victim / "hello"

    def apply(self, *members: Member, data: bytes | None = None,
              **opts: Any) -> GraphDriverError | None:
        """Apply; return the error (or None), after checking nothing outside changed."""
        before = outside_state(self.tmp)
        raw = tar_of(*members) if data is None else data
        err: GraphDriverError | None = None
        try:
            apply_layer(io.BytesIO(raw), str(self.dest), ApplyOptions(inline=self.inline, **opts))
        except GraphDriverError as e:
            err = e
        assert outside_state(self.tmp) == before, "something outside the layer changed"
        leaked = [p for p in regular_files(self.dest) if p.read_bytes() == self.secret]
        assert leaked == [], f"the victim's content was reached: {leaked}"
        return err


@pytest.fixture
def site(tmp_path: Path, inline: bool) -> Site:
    dest, victim = tmp_path / "dest", tmp_path / "victim"
    dest.mkdir()
    victim.mkdir()
    secret = secrets.token_hex(16).encode()
    (victim / "hello").write_bytes(secret)
    return Site(tmp_path, dest, victim, secret, inline)


def outside_state(tmp: Path) -> dict[str, tuple[Any, ...]]:
    """Type, mode, owner, size, mtime and content of everything in *tmp* but ``dest``."""
    state: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp):
        if dirpath == str(tmp):
            dirnames[:] = [d for d in dirnames if d != "dest"]
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            state[os.path.relpath(path, tmp)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, extra
            )
    return state


def regular_files(root: Path) -> list[Path]:
    """Every regular file below *root* (iteratively: hostile trees can be very deep)."""
    out, todo = [], [str(root)]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    out.append(Path(e.path))
    return out


def assert_breakout(err: GraphDriverError | None, entry: str, why: str) -> None:
    assert isinstance(err, BreakoutError), err
    assert err.entry == entry
    assert err.why == why


# ----- moby: TestUntarInvalidFilenames ------------------------------------------------------


@pytest.mark.parametrize("name", ["../victim/dotdot", "/../victim/slash-dotdot"])
def test_untar_invalid_filenames(site: Site, name: str) -> None:
    assert_breakout(site.apply(reg(name, b"x")), name, "path escapes the layer")
    assert os.listdir(site.dest) == []


# ----- moby: TestUntarHardlinkToSymlink -------------------------------------------------------


def test_untar_hardlink_to_symlink(site: Site) -> None:
    err = site.apply(sym("symlink1", "regfile"), link("symlink2", "symlink1"),
                     reg("regfile", b"data"))
    assert err is None
    assert os.readlink(site.dest / "symlink2") == "regfile"
    assert (site.dest / "regfile").read_bytes() == b"data"


# ----- moby: TestUntarInvalidHardlink -------------------------------------------------------------

LOOPHOLE_HARDLINK = link("loophole-victim", "../victim")


@pytest.mark.parametrize(
    ("members", "entry"),
    [
        pytest.param([link("dotdot", "../victim/hello")], "dotdot", id="read-dotdot"),
        pytest.param([link("slash-dotdot", "/../victim/hello")], "slash-dotdot",
                     id="read-slash-dotdot"),
        pytest.param([LOOPHOLE_HARDLINK, reg("loophole-victim/file", b"x")], "loophole-victim",
                     id="write-victim-file"),
        pytest.param([LOOPHOLE_HARDLINK, sym("symlink", "loophole-victim/hello")],
                     "loophole-victim", id="read-via-hardlink-symlink"),
        pytest.param([LOOPHOLE_HARDLINK, link("hardlink", "loophole-victim/hello")],
                     "loophole-victim", id="read-via-hardlink-hardlink"),
        pytest.param([LOOPHOLE_HARDLINK, reg("loophole-victim", b"x")], "loophole-victim",
                     id="remove-victim-dir"),
    ],
)
def test_untar_invalid_hardlink(site: Site, members: list[Member], entry: str) -> None:
    assert_breakout(site.apply(*members), entry, "hardlink target escapes the layer")


# ----- moby: TestUntarInvalidSymlink --------------------------------------------------------------

LOOPHOLE_SYMLINK = sym("loophole-victim", "../victim")


@pytest.mark.parametrize(
    ("members", "entry"),
    [
        pytest.param([sym("dotdot", "../victim/hello")], "dotdot", id="read-dotdot"),
        pytest.param([LOOPHOLE_SYMLINK, reg("loophole-victim/file", b"x")], "loophole-victim",
                     id="write-victim-file"),
        pytest.param([LOOPHOLE_SYMLINK, sym("symlink", "loophole-victim/hello")],
                     "loophole-victim", id="read-via-symlink-symlink"),
        pytest.param([LOOPHOLE_SYMLINK, link("hardlink", "loophole-victim/hello")],
                     "loophole-victim", id="read-via-symlink-hardlink"),
        pytest.param([LOOPHOLE_SYMLINK, reg("loophole-victim", b"x")], "loophole-victim",
                     id="remove-victim-dir"),
        pytest.param([sym("dir/loophole", "../../victim"), reg("dir/loophole/newdir/newfile")],
                     "dir/loophole", id="write-through-path-component"),
        pytest.param([sym("a", "../..")], "a", id="dotdot-dotdot"),
    ],
)
def test_untar_symlink_above_the_root_is_stored_and_never_followed(
    site: Site, members: list[Member], entry: str
) -> None:
    # A symlink's target is content: stored verbatim.  Writing or linking
    # through it may succeed or fail, but only ever inside the layer (Site.apply
    # checks that nothing outside changed and that the victim was never read).
    site.apply(*members)
    target = next(ti.linkname for ti, _ in members if ti.name == entry)
    if os.path.islink(site.dest / entry):
        assert os.readlink(site.dest / entry) == target


def test_untar_symlink_absolute_with_dotdot_is_kept(site: Site) -> None:
    # Absolute targets resolve inside the root when the layer is used: allowed, verbatim.
    assert site.apply(sym("slash-dotdot", "/../victim/hello")) is None
    assert os.readlink(site.dest / "slash-dotdot") == "/../victim/hello"


# ----- symlinks as path components ----------------------------------------------------------------


def test_absolute_symlink_to_root_as_component(site: Site) -> None:
    assert site.apply(sym("a", "/"), reg("a/victim/hello", b"pwned")) is None
    assert (site.dest / "victim/hello").read_bytes() == b"pwned"


def test_symlink_chain_escaping_only_when_resolved(site: Site) -> None:
    # Each target stays inside lexically; resolved, d/x/y would be two levels above
    # the root, which in-root resolution clamps to the root.
    err = site.apply(sym("d/x", ".."), sym("d/x/y", "../.."), reg("d/x/y/victim/hello", b"pwned"))
    assert err is None
    assert (site.dest / "victim/hello").read_bytes() == b"pwned"


def test_symlink_to_host_path_as_component(site: Site) -> None:
    err = site.apply(sym("safe", str(site.victim)), reg("safe/hello", b"pwned"))
    assert isinstance(err, ArchiveError) and not isinstance(err, BreakoutError)
    assert err.entry == "safe/hello"
    why = f"its folder 'safe' is a symlink to {str(site.victim)!r}, which does not exist in the layer"
    assert err.why == why


def assert_through_symlink(err: GraphDriverError | None, entry: str, link: str) -> None:
    """Refused: a symlink the archive did not make is never followed, wherever it points."""
    assert isinstance(err, ArchiveError) and not isinstance(err, BreakoutError), err
    assert err.entry == entry
    assert err.why.startswith(f"the path goes through {link!r}, a symlink of a lower layer")


@pytest.mark.parametrize("target", ["../victim", "../../victim", "/../victim", "/", "."])
def test_preexisting_escaping_symlink_as_component(site: Site, target: str) -> None:
    # As if an earlier layer (or a tampered lower) left it there.
    os.symlink(target, site.dest / "evil")
    assert_through_symlink(site.apply(reg("evil/hello", b"pwned")), "evil/hello", "evil")
    assert_through_symlink(site.apply(dir_("evil/newdir/")), "evil/newdir/", "evil")
    assert os.readlink(site.dest / "evil") == target


def test_untar_with_malicious_symlinks(site: Site) -> None:
    """containers/storage's CVE-2018-15664 layout: root/safe -> the host directory."""
    os.symlink(str(site.tmp), site.dest / "safe")
    (site.tmp / "host-file").write_bytes(b"I am a host file")
    assert_through_symlink(site.apply(reg("safe/host-file", b"pwn3d")), "safe/host-file", "safe")
    assert (site.tmp / "host-file").read_bytes() == b"I am a host file"


@pytest.mark.parametrize(
    "members",
    [
        pytest.param([sym("a", "b"), sym("b", "a"), reg("a/x")], id="two-link-loop"),
        pytest.param([sym("l", "l"), reg("l/x")], id="self-loop"),
        pytest.param([sym("l", "l/x"), dir_("l/x/")], id="self-loop-dir"),
    ],
)
def test_symlink_loops(site: Site, members: list[Member]) -> None:
    err = site.apply(*members)
    assert isinstance(err, ArchiveError) and err.why == "Too many levels of symbolic links"


# ----- writing over symlinks ----------------------------------------------------------------------


def test_file_replaces_a_symlink_instead_of_writing_through_it(site: Site) -> None:
    assert site.apply(sym("f", str(site.hello)), reg("f", b"pwned")) is None
    assert (site.dest / "f").read_bytes() == b"pwned"
    assert not (site.dest / "f").is_symlink()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "hardlink"])
def test_preexisting_escaping_symlink_is_replaced(site: Site, kind: str) -> None:
    os.symlink("../victim/hello", site.dest / "f")
    (site.dest / "t").write_bytes(b"t")
    member = {"file": reg("f", b"pwned"), "dir": dir_("f/"), "symlink": sym("f", "t"),
              "hardlink": link("f", "t")}[kind]
    assert site.apply(member) is None
    assert not (site.dest / "f").is_symlink() or os.readlink(site.dest / "f") == "t"


def test_hardlink_to_escaping_symlink_then_write_through(site: Site) -> None:
    os.symlink("../victim/hello", site.dest / "s")
    assert site.apply(link("h", "s"), reg("h", b"pwned")) is None
    assert (site.dest / "h").read_bytes() == b"pwned"
    assert os.readlink(site.dest / "s") == "../victim/hello"


def test_hardlink_to_escaping_dir_symlink_then_write_below(site: Site) -> None:
    os.symlink("../victim", site.dest / "s")
    err = site.apply(link("h", "s"), reg("h/hello", b"pwned"))
    assert isinstance(err, ArchiveError) and err.entry == "h/hello"
    assert os.readlink(site.dest / "h") == "../victim"


def test_hardlink_through_escaping_symlink(site: Site) -> None:
    os.symlink("../victim", site.dest / "evil")
    assert_through_symlink(site.apply(link("h", "evil/hello")), "h", "evil")
    assert not (site.dest / "h").exists()


# ----- whiteouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../.wh.victim", "path escapes the layer"),
        ("/../.wh.victim", "path escapes the layer"),
        (".wh...", "whiteout target escapes the layer"),
        ("../victim/.wh.hello", "path escapes the layer"),
    ],
)
@pytest.mark.parametrize("mode", WhiteoutMode.ALL)
def test_whiteout_pointing_outside(site: Site, name: str, why: str, mode: str) -> None:
    assert_breakout(site.apply(reg(name), whiteouts=mode), name, why)


@pytest.mark.parametrize("mode", WhiteoutMode.ALL)
def test_whiteout_through_escaping_symlink(site: Site, mode: str) -> None:
    os.symlink("../victim", site.dest / "evil")
    assert_through_symlink(site.apply(reg("evil/.wh.hello"), whiteouts=mode), "evil/.wh.hello", "evil")


def test_opaque_through_escaping_symlink(site: Site) -> None:
    os.symlink("../victim", site.dest / "evil")
    assert_through_symlink(site.apply(reg("evil/.wh..wh..opq")), "evil/.wh..wh..opq", "evil")
    assert os.readlink(site.dest / "evil") == "../victim"


def test_whiteout_of_a_symlink_removes_the_link_only(site: Site) -> None:
    os.symlink(str(site.victim), site.dest / "link")
    assert site.apply(reg(".wh.link")) is None
    assert not os.path.lexists(site.dest / "link")


# ----- names --------------------------------------------------------------------------------------


def test_absolute_names_land_inside(site: Site) -> None:
    name = str(site.hello)
    assert site.apply(reg(name, b"pwned")) is None
    assert (site.dest / name.lstrip("/")).read_bytes() == b"pwned"


def test_names_that_only_look_like_dotdot(site: Site) -> None:
    assert site.apply(reg("..foo", b"1"), reg("a/../b", b"2"), reg("./c/./d", b"3")) is None
    assert (site.dest / "..foo").read_bytes() == b"1"
    assert (site.dest / "b").read_bytes() == b"2"
    assert (site.dest / "c/d").read_bytes() == b"3"


def test_very_deep_path(site: Site) -> None:
    name = "/".join(["d"] * 1500) + "/f"
    assert site.apply(reg(name, b"deep")) is None
    assert (site.dest / name).read_bytes() == b"deep"
    # Iterative removal, leaving nothing for pytest's recursive clean-up.
    fd = os.open(site.dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree_at(fd, "d")
    finally:
        os.close(fd)
    assert os.listdir(site.dest) == []


# ----- moby: TestTypeXGlobalHeaderDoesNotFail, TestXGlobalNoParent, TestUntarUstarGnuConflict -----


def test_type_x_global_header_does_not_fail(site: Site) -> None:
    data = tar_of(reg("file", b"x"), pax_headers={"comment": "a global header"})
    assert site.apply(data=data) is None
    assert os.listdir(site.dest) == ["file"]


def test_x_global_no_parent(site: Site) -> None:
    ti = tarfile.TarInfo("foo/bar")
    ti.type = tarfile.XGLTYPE
    records = b"19 comment=no file\n"
    ti.size = len(records)
    assert site.apply(data=tar_of((ti, records))) is None
    assert os.listdir(site.dest) == []


def _ustar_with_base256_uid(name: str, data: bytes, uid: int) -> bytes:
    """A ustar header (long name split into prefix) carrying a GNU base-256 uid."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    raw = bytearray(tar_of((ti, data), fmt=tarfile.USTAR_FORMAT))
    assert raw[345:500].rstrip(b"\0"), "the name should use the ustar prefix field"
    raw[108:116] = bytes([0x80]) + uid.to_bytes(7, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    return bytes(raw)


def test_untar_ustar_gnu_conflict(site: Site) -> None:
    name = ("root/.cpanm/work/1395823785.24209/Plack-1.0030/blib/man3/"
            "Plack::Middleware::LighttpdScriptNameFix.3pm")
    data = _ustar_with_base256_uid(name, b"manual", 3_000_000)
    assert site.apply(data=data, ignore_chown_errors=True) is None
    st = os.stat(site.dest / name)
    assert st.st_size == 6
    if os.geteuid() == 0:
        assert st.st_uid == 3_000_000


# ----- the confinement itself ---------------------------------------------------------------------


def test_open_beneath_does_not_follow_out(site: Site) -> None:
    os.symlink("../victim", site.dest / "evil")
    os.symlink(str(site.victim), site.dest / "abs")
    for rel in ("evil/hello", "abs/hello", "../victim/hello", "/../victim/hello"):
        with pytest.raises(FileNotFoundError):
            confine.open_file_in_root(str(site.dest), rel)


def test_magic_links_are_refused(site: Site) -> None:
    fd = os.open(site.victim, os.O_RDONLY | os.O_DIRECTORY)
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            confine.resolve_dir(root, f"proc/self/fd/{fd}")
        assert e.value.errno == errno.ELOOP
    finally:
        os.close(root)
        os.close(fd)


def test_child_killed_is_reported(tmp_path: Path) -> None:
    dest = tmp_path
    def die(dirs: confine.ConfinedDirs) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(GraphDriverError, match="killed by SIGKILL"):
        confine.run_confined(str(dest), die, inline=False)

    def quit_early(dirs: confine.ConfinedDirs) -> None:
        os._exit(3)

    with pytest.raises(GraphDriverError, match="exited with status 3"):
        confine.run_confined(str(dest), quit_early, inline=False)


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"""
import os, time
from graphdriver.fs import syscalls
from graphdriver.fs import confine
def work(dirs):  # chrooted when root: write through the fd it was given
    fd = os.open("child.pid", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dirs.root_fd)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(60)
confine.run_confined({str(tmp_path)!r}, work, inline=False)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        for _ in range(500):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.01)
        child = int(pidfile.read_text())
    finally:
        proc.kill()
        proc.wait()
    for _ in range(500):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.01)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the confined child outlived its parent")


@needs_root
def test_child_is_chrooted_in_the_target(tmp_path: Path) -> None:
    dest = tmp_path
    (dest / "marker").write_bytes(b"")
    seen = confine.run_confined(str(dest), lambda d: (d.chrooted, sorted(os.listdir("/"))),
                                inline=False)
    assert seen == (True, ["marker"])


@needs_root
def test_chroot_refused_still_confined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path
    def refuse(path: str) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(syscalls, "chroot", refuse)
    seen = confine.run_confined(str(dest), lambda d: d.chrooted, inline=False)
    assert seen is False
    data = io.BytesIO(tar_of(sym("a", "/"), reg("a/etc/x", b"in")))
    assert apply_layer(data, str(dest), ApplyOptions(inline=False)) == 2
    assert (dest / "etc/x").read_bytes() == b"in"


def test_open_beneath(tmp_path: Path) -> None:
    dest = tmp_path
    (dest / "dir").mkdir()
    (dest / "dir/file").write_bytes(b"content")
    os.symlink("/dir", dest / "abs")
    with confine.open_file_in_root(str(dest), "/abs/file") as f:
        assert f.read() == b"content"
    with pytest.raises(FileNotFoundError):
        confine.open_file_in_root(str(dest), "missing")
    with confine.open_file_in_root(str(dest), "dir/new", os.O_WRONLY | os.O_CREAT) as f:
        f.write(b"new")
    assert (dest / "dir/new").read_bytes() == b"new"
    with pytest.raises(IsADirectoryError):
        confine.open_file_in_root(str(dest), "dir")

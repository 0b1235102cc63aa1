"""Deep trees under a low open-file limit (``ulimit -n``): every command, every driver.

A service unit, a CI runner or ``docker run --ulimit nofile=64`` may give a
process few descriptors; containers-storage imports a tree hundreds of
folders deep with 64.  The extractor once kept 128 folders open, the copier
two per level for 128 levels, the remover and the owner shifter one per level:
each failed with "Too many open files" on a tree it could have done with
fewer.  These tests run the real command in a process whose soft and hard
limits are both low (so it cannot lift them), as a user under such a limit
would, and check the results against the same commands' output without one.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from graphdriver.testing.setups import DriverSetup
from tests.conftest import ROOT, needs_root, run_cli

LEVELS = 300


def cli_limited(limit: int, *args: str, root: Path, driver: DriverSetup,
                input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real command with its open-file limit (soft and hard) at *limit*."""
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root", str(root.parent / "run"),
           "--driver", str(driver)]
    for key, value in sorted(driver.options.items()):
        cmd += ["--opt", f"{key}={value}"]

    def low() -> None:
        # Descriptors the test runner left open would count against the limit.
        os.closerange(3, 4096)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([*cmd, *args], input=input, capture_output=True, env=env, check=False,
                          preexec_fn=low)


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def _add(tf: tarfile.TarFile, name: str, kind: bytes, *, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644, 1_700_000_000
    info.linkname, info.size = link, len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def deep_tar(levels: int = LEVELS) -> bytes:
    """*levels* nested folders with a file, a hard link and a symlink every 50 levels (a link
    to a shallower file too), then a wide folder whose files come one folder each."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for n in range(1, levels + 1):
            path = "/".join(["d"] * n)
            _add(tf, path, tarfile.DIRTYPE)
            if n % 50 == 0:
                _add(tf, f"{path}/f", tarfile.REGTYPE, data=f"at {n}\n".encode())
                _add(tf, f"{path}/h", tarfile.LNKTYPE, link=f"{path}/f")
                _add(tf, f"{path}/s", tarfile.SYMTYPE, link="f")
                if n > 50:
                    _add(tf, f"{path}/up", tarfile.LNKTYPE, link="/".join(["d"] * 50) + "/f")
        for i in range(150):
            _add(tf, f"w/{i}", tarfile.DIRTYPE)
            _add(tf, f"w/{i}/x", tarfile.REGTYPE, data=b"x")
    return raw.getvalue()


def child_tar() -> bytes:
    """Deletes a file deep down, makes a folder opaque above what it adds deeper still."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "/".join(["d"] * 250) + "/.wh.f", tarfile.REGTYPE)
        _add(tf, "/".join(["d"] * LEVELS) + "/new", tarfile.REGTYPE, data=b"new")
        _add(tf, "/".join(["d"] * 100) + "/.wh..wh..opq", tarfile.REGTYPE)
    return raw.getvalue()


def _base_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "b", tarfile.REGTYPE, data=b"b")
    return raw.getvalue()


@needs_root
@pytest.mark.parametrize("limit", [32, 16])
def test_every_command_works_on_a_deep_tree_under_a_low_limit(tmp_path: Path, driver_name: DriverSetup,
                                                               limit: int):
    root = tmp_path / "store"

    def gd(*args: str, input: bytes | None = None) -> bytes:
        return ok(cli_limited(limit, *args, root=root, driver=driver_name, input=input))

    data = deep_tar()
    gd("import", "base", "-", input=_base_tar())
    gd("import", "deep", "--parent", "base", "-", input=data)
    assert gd("diff", "deep") == data
    assert len(gd("diff", "deep", "--regenerate")) > LEVELS * 512
    assert len(gd("changes", "deep").splitlines()) == LEVELS + 1 + 150 * 2 + 6 * 3 + 5
    assert gd("diffsize", "deep") == b"191\n"  # 41 bytes in 6 files, 150 of 1: links count once
    gd("create", "img", "--parent", "deep")
    gd("apply", "img", "-", input=child_tar())
    changed = gd("changes", "img").decode().splitlines()
    assert "D /" + "/".join(["d"] * 250) + "/f" in changed
    assert "A /" + "/".join(["d"] * LEVELS) + "/new" in changed
    _container_changes(gd, driver_name)
    assert b"bad" not in gd("check") and b"damaged" not in gd("check")
    for layer_id in ("ctr", "img", "deep", "base"):
        gd("remove", layer_id)
    gd("cleanup")
    assert gd("layers") == b""


def _container_changes(gd, driver: DriverSetup) -> None:
    """A container layer that deletes deep down and makes a tree deeper than the image's."""
    gd("create", "ctr", "--parent", "deep", "--rw")
    path = gd("mount", "ctr").decode().strip()
    try:
        # As a process would, without the limit (rm and mkdir walk trees their own way).
        subprocess.run(["rm", "-rf", os.path.join(path, *(["d"] * 120))], check=True)
        deep = os.path.join(path, *(["q"] * 400))
        subprocess.run(["mkdir", "-p", deep], check=True)
        Path(deep, "g").write_bytes(b"g")
    finally:
        gd("unmount", "ctr")
    changes = gd("changes", "ctr").decode().splitlines()
    assert "D /" + "/".join(["d"] * 120) in changes
    assert changes[-1] == "A /" + "/".join(["q"] * 400) + "/g"
    assert b".wh.d" in gd("diff", "ctr")
    assert gd("diffsize", "ctr") == b"1\n"


@needs_root
def test_a_soft_limit_below_the_hard_one_is_lifted_for_long_work(tmp_path: Path):
    """With the hard limit high, a command that walks trees lifts its soft limit."""
    probe = ("import resource, sys\n"
             "from graphdriver.fs import fdlimit\n"
             "fdlimit.raise_soft_limit()\n"
             "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n")

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 2048))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, check=True,
                         preexec_fn=low).stdout.split()
    assert out == [b"1024", b"2048"]  # up to the usual default, never past what select() takes


@pytest.mark.parametrize("command", ["import", "create", "apply"])
def test_a_limit_too_low_to_work_refuses_at_once_and_leaves_nothing(tmp_path: Path,
                                                                    driver_name: DriverSetup, command: str):
    root = tmp_path / "store"
    run_cli("create", "base", root=root, driver=driver_name, check=True)
    args = {"import": ("import", "deep", "--parent", "base", "-"),
            "create": ("create", "deep", "--parent", "base"),
            "apply": ("apply", "base", "-")}[command]
    before = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(".lock"))
    proc = cli_limited(8, *args, root=root, driver=driver_name, input=deep_tar(60))
    assert proc.returncode == 7, proc.stderr.decode()
    line = proc.stderr.decode()
    assert line.count("\n") == 1 and "open-file limit" in line and "ulimit -n" in line
    after = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(".lock"))
    assert after == before
    assert run_cli("layers", root=root, driver=driver_name, check=True).stdout == b"base\n"
    assert run_cli("changes", "base", root=root, driver=driver_name, check=True).stdout == b""


def test_read_only_commands_are_not_refused_under_a_very_low_limit(tmp_path: Path, driver_name: DriverSetup):
    """Only what changes layers is refused up front: a read that can be done is done."""
    root = tmp_path / "store"
    data = deep_tar(20)
    run_cli("import", "small", "-", root=root, driver=driver_name, input=data, check=True)
    assert ok(cli_limited(10, "diff", "small", root=root, driver=driver_name)) == data
    assert ok(cli_limited(10, "layers", root=root, driver=driver_name)) == b"small\n"


# ----- the walkers themselves, each in a process of its own under the limit --------------------------

WALKERS = """
import os, resource, sys
from graphdriver.fs.tree import copy_tree, remove_tree, shift_owners
top = sys.argv[1]
path = os.path.join(top, "t")
os.mkdir(path)
for n in range(400):
    path = os.path.join(path, "d")
    os.mkdir(path)
    if n % 40 == 0:
        open(os.path.join(path, "f"), "w").close()
        os.mkdir(os.path.join(path, "side"))
resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
print(shift_owners(os.path.join(top, "t"), lambda uid, gid: (uid + 1000, gid + 1000)))
copy_tree(os.path.join(top, "t"), os.path.join(top, "copy"))
print(sum(len(dirs) + len(files) for _, dirs, files in os.walk(os.path.join(top, "copy"))))
remove_tree(os.path.join(top, "t"))
remove_tree(os.path.join(top, "copy"))
print(sorted(os.listdir(top)))
"""


@needs_root
def test_tree_walkers_go_deeper_than_the_limit(tmp_path: Path):
    """Owner shifting, copying and removing a tree 400 levels deep with 16 descriptors."""
    def no_inherited() -> None:
        os.closerange(3, 4096)

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", WALKERS, str(tmp_path)], capture_output=True, env=env,
                          check=False, preexec_fn=no_inherited)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split("\n")[:3] == ["421", "420", "[]"]

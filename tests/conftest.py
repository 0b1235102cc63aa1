"""Shared fixtures: stores over every driver, the test corpus, a real Debian layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.testing.setups import DriverSetup, driver_setups, open_store, unusable

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, mounts)")


@pytest.fixture(autouse=True)
def _warnings_to_logging() -> Iterator[None]:
    """Each test starts with warnings going to :mod:`logging` (``caplog`` sees them), whatever
    an in-process ``cli.main`` of an earlier test pointed them at."""
    from graphdriver.errors import set_warning_handler

    set_warning_handler(None)
    yield
    set_warning_handler(None)


#: Archives from other projects (tar-split's, Go's, a small Windows image), with their licenses.
CORPUS = ROOT / "tests" / "data"


def with_twin(request: pytest.FixtureRequest, module: object, attr: str, what: str) -> Iterator[str]:
    """For a fixture parametrised ``["c", "python"]``: *module.attr* (a C speed-up) as is, or None.

    Setting it to None selects the Python twin; the C parameter is skipped
    where the extension was not built (or ``GRAPHDRIVER_PURE`` is set).
    """
    saved = getattr(module, attr)
    if request.param == "python":
        setattr(module, attr, None)
    elif saved is None:
        pytest.skip(f"the C {what} is not in use here (not built at install, or GRAPHDRIVER_PURE)")
    try:
        yield request.param
    finally:
        setattr(module, attr, saved)


def corpus_files(folder: str) -> list[Path]:
    """The archives of one corpus folder, sorted (its LICENSE left out)."""
    return sorted(p for p in (CORPUS / folder).iterdir() if p.name != "LICENSE")


def _usable(request: pytest.FixtureRequest, setup: DriverSetup) -> DriverSetup:
    why = unusable(setup, str(request.getfixturevalue("tmp_path")))
    if why:
        pytest.skip(why)
    return setup


@pytest.fixture(params=driver_setups(all_options=False), ids=lambda s: s.id)
def driver_name(request: pytest.FixtureRequest) -> DriverSetup:
    """Each driver with its default options (for the slower whole-store and CLI tests)."""
    return _usable(request, request.param)


@pytest.fixture(params=driver_setups(all_options=True), ids=lambda s: s.id)
def driver_setup(request: pytest.FixtureRequest) -> DriverSetup:
    """Each OCI-format driver with each of its option sets (stores for the OCI-layer tests).

    The conformance suite itself (:mod:`graphdriver.testing.conformance`) runs
    over every driver, Windows-format ones included.
    """
    return _usable(request, request.param)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_root: Path, tmp_path: Path, driver_setup: DriverSetup) -> Iterator[Any]:
    """An empty store on each driver and option set (the conformance suite's fixture)."""
    s = open_store(store_root, tmp_path / "run", driver_setup)
    yield s
    # Leave no mounts behind, whatever the test did.
    for record in s.layers():
        while s.driver.mount_count(record.id) > 0:
            s.driver.put(record.id)


@pytest.fixture
def open_work() -> Iterator[Path]:
    """A fresh folder every user may enter (pytest's own are closed to others), for tests
    that make a store as root and read it as nobody; removed afterwards."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="gd-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work)


def run_cli(*args: str, root: Path, run_root: Path | None = None, driver: str | None = None,
            input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``graphdriver`` command (as a user would) on a store."""
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root),
           "--run-root", str(run_root or root.parent / "run")]
    if driver:
        cmd += ["--driver", str(driver)]
        for key, value in sorted(getattr(driver, "options", {}).items()):
            cmd += ["--opt", f"{key}={value}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([*cmd, *args], input=input, capture_output=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


def make_dumpable() -> None:
    import ctypes

    pr_set_dumpable = 4
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 1, 0, 0, 0)


def as_nobody(work: Callable[[], object]) -> object:
    """Run *work()* in a forked child with the ids of nobody; returns what it returned."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            make_dumpable()  # as a process nobody started, not one that changed its ids
            try:
                result: object = ("ok", work())
            except BaseException as e:  # reported to the parent
                result = ("error", repr(e))
            with os.fdopen(write_end, "wb") as f:
                pickle.dump(result, f)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


CACHE = Path(os.environ.get("GRAPHDRIVER_TEST_CACHE", Path.home() / ".cache" / "graphdriver"))


@pytest.fixture(scope="session")
def minbase_tar() -> Path:
    """A real Debian bookworm minbase root filesystem as a tarball (made once, cached)."""
    tar = CACHE / "debian-minbase.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(CACHE / ".lock", "w") as lock:  # parallel test workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tar.exists():
            _build_minbase(tar)
    return tar


def _build_minbase(tar: Path) -> None:
    if not IS_ROOT:
        pytest.skip("needs root to debootstrap a Debian root filesystem")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = CACHE / "rootfs"
    if not (rootfs / "etc" / "debian_version").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        mirror = os.environ.get("GRAPHDRIVER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
            capture_output=True, check=False,
        )
        if proc.returncode != 0:
            why = f"debootstrap failed: {proc.stderr.decode()[-300:]}"
            if os.environ.get("CI"):
                pytest.fail(why)  # CI promises the real-data tests run
            pytest.skip(why)
    tmp = tar.with_suffix(".partial")
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", str(tmp),
         "-C", str(rootfs), "."],
        check=True,
    )
    tmp.rename(tar)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An escape canary: nothing the tests do may touch the host's own files."""
    import stat

    st = os.lstat("/dev/null")
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        sys.stderr.write("\n/dev/null is no longer the null device: something escaped its directory\n")
        session.exitstatus = 1

"""Leftovers of a dead writer are told from a live writer's by a lock, never by a pid.

Every test kills a real writer with SIGKILL and leaves it unreaped (a zombie,
which ``kill(pid, 0)`` still finds), and checks that ``cleanup`` (or the next
writer) removes what it left while a live writer's work is never touched.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphdriver.fs import locking, outfile
from graphdriver.testing.treeutil import F, make_tar
from tests.conftest import ROOT, run_cli

_ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def _writer(code: str) -> subprocess.Popen[bytes]:
    """A Python child running *code*, once it printed ``ready`` (it then sleeps)."""
    script = textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], env=_ENV, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def _kill_unreaped(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL *proc* and wait until it is a zombie: dead, not reaped, its pid still taken."""
    os.kill(proc.pid, signal.SIGKILL)
    while _state(proc.pid) != "Z":
        os.sched_yield()
    os.kill(proc.pid, 0)  # what a pid check sees: "alive"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rpartition(")")[2].split()[0]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Writers to reap at the end (a zombie is reaped only then, after every check)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ----- the one liveness helper ------------------------------------------------------------------


def test_a_killed_unreaped_writer_is_dead_and_a_live_one_alive(tmp_path: Path, children) -> None:
    code = """
        import os
        from graphdriver.fs.locking import claim
        claim(os.path.join({tmp!r}, {prefix!r} + "file"))
        claim(os.path.join({tmp!r}, {prefix!r} + "folder"), folder=True)
        os.mkdir(os.path.join({tmp!r}, {prefix!r} + "folder", "inside"))
    """
    dead = _writer(code.format(tmp=str(tmp_path), prefix=""))
    children.append(dead)
    _kill_unreaped(dead)
    live = _writer(code.format(tmp=str(tmp_path), prefix="live-"))
    children.append(live)
    for name in ("live-file", "live-folder"):
        assert locking.is_held(str(tmp_path / name))
        assert not locking.remove_abandoned(str(tmp_path / name))
        assert (tmp_path / name).exists()
    for name in ("file", "folder"):
        assert not locking.is_held(str(tmp_path / name))
        assert locking.remove_abandoned(str(tmp_path / name))
        assert not (tmp_path / name).exists()
    assert not locking.is_held(str(tmp_path / "file"))  # gone: nobody holds it


def test_a_reused_pid_does_not_keep_a_leftover(tmp_path: Path) -> None:
    """A leftover named with a pid that a live process has now (this one) is still removed."""
    leftover = tmp_path / f".staging-{os.getpid()}"
    (leftover / "x").mkdir(parents=True)
    assert locking.remove_abandoned(str(leftover))
    assert not leftover.exists()
    # And this process claims that very name again, removing the abandoned one first.
    leftover.mkdir()
    fd = locking.claim(str(leftover), folder=True)
    try:
        assert locking.is_held(str(leftover))
        with pytest.raises(FileExistsError):
            locking.claim(str(leftover), folder=True)  # a live one is never taken over
    finally:
        os.close(fd)


def test_a_claim_swept_before_it_was_locked_is_made_again(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "f"
    real = locking._make

    def make_then_swept(p: str, folder: bool, mode: int) -> int:
        fd = real(p, folder, mode)
        if not hasattr(make_then_swept, "done"):
            make_then_swept.done = True  # type: ignore[attr-defined]
            assert locking.remove_abandoned(p)  # a cleanup between making and locking
        return fd

    monkeypatch.setattr(locking, "_make", make_then_swept)
    fd = locking.claim(str(path))
    try:
        assert locking.is_held(str(path)) and path.exists()
    finally:
        os.close(fd)


# ----- cleanup: tar-split, staging folders, half-written files ------------------------------------


def test_cleanup_removes_an_unreaped_importers_leftovers(tmp_path: Path, children) -> None:
    """An import killed half way (its input a pipe kept open, so it is mid-extraction) and not
    reaped: cleanup removes its layer, its half-written tar-split file and its staging and
    temporary files at once, and keeps those of a live writer."""
    root, run_root = tmp_path / "store", tmp_path / "run"
    assert run_cli("create", "base", root=root, run_root=run_root, driver="vfs").returncode == 0
    tar = make_tar({f"f{i}": F(b"x" * 10_000) for i in range(50)})
    proc = subprocess.Popen([sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
                             str(run_root), "import", "victim", "-"], env=_ENV, stdin=subprocess.PIPE)
    children.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(tar[: len(tar) // 2])
    proc.stdin.flush()
    tarsplit = root / "tarsplit"
    while not [n for n in os.listdir(tarsplit) if ".partial-" in n]:
        assert proc.poll() is None
        os.sched_yield()
    staging = root / "vfs" / ".staging"
    dead_folder = _writer(f"""
        import os
        os.mkdir({str(staging / 'half')!r} + '-' + str(os.getpid()))
        open({str(root / '.tmp-store.json')!r} + '-' + str(os.getpid()), "wb").close()
    """)
    children.append(dead_folder)
    live = _writer(f"""
        from graphdriver.fs.locking import claim
        claim({str(staging / 'busy-live')!r}, folder=True)
        claim({str(tarsplit / 'other.tar-split.gz.partial-live')!r})
    """)
    children.append(live)
    _kill_unreaped(proc)
    _kill_unreaped(dead_folder)
    r = run_cli("cleanup", root=root, run_root=run_root)
    assert r.returncode == 0, r.stderr
    done = r.stdout.decode()
    assert "removed layer victim left by an interrupted import" in done
    assert f"removed stray tar-split file victim.tar-split.gz.partial-{proc.pid}" in done
    assert f"dropped staging leftover half-{dead_folder.pid}" in done
    assert f"removed half-written file .tmp-store.json-{dead_folder.pid}" in done
    assert sorted(os.listdir(tarsplit)) == ["other.tar-split.gz.partial-live"]
    assert sorted(os.listdir(staging)) == ["busy-live"]
    assert run_cli("cleanup", root=root, run_root=run_root).stdout == b""
    assert run_cli("layers", root=root, run_root=run_root).stdout == b"base\n"


# An import (or apply) whose confined child outlives it for as long as the test likes: the
# kernel kills that child with its parent, but it ends only when what it does in the kernel
# returns (a write to a slow disk, say); here it reads its input, a pipe, until the test
# closes it.
_WORK_WITH_A_LINGERING_CHILD = """
    import sys
    from graphdriver.fs import syscalls
    syscalls.set_parent_death_signal = lambda sig: None
    from graphdriver.testing.setups import open_store
    store = open_store({root!r}, {run_root!r}, "vfs")
    {work}
"""


def _import_then_kill(tmp_path: Path, children, *,
                      work: str = 'store.import_layer("victim", None, sys.stdin.buffer)',
                      ) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """A vfs store with layer ``base`` and an import of ``victim`` (or other *work* making it)
    killed while its confined child, alive, extracts it (and reads the rest of its input from
    the pipe still open)."""
    root, run_root = tmp_path / "store", tmp_path / "run"
    assert run_cli("create", "base", root=root, run_root=run_root, driver="vfs").returncode == 0
    tar = make_tar({f"f{i}": F(b"x" * 10_000) for i in range(300)})  # 3 MB: more than it reads at once
    code = textwrap.dedent(_WORK_WITH_A_LINGERING_CHILD).format(root=str(root), run_root=str(run_root),
                                                                 work=work)
    proc = subprocess.Popen([sys.executable, "-c", code], env=_ENV, stdin=subprocess.PIPE)
    children.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(tar[: 2 << 20])
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not (root / "vfs" / "victim" / "fs" / "f0").exists():  # extracted by the child
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    from graphdriver.testing.setups import open_store

    assert open_store(root, run_root, "vfs").cleanup() == []  # live: kept, and at once
    _kill_unreaped(proc)
    return root, run_root, proc


def test_cleanup_waits_for_the_child_of_a_killed_import(tmp_path: Path, children) -> None:
    """The confined child of a killed import still holds the import's lock a moment after
    its parent is dead: cleanup run then waits for it and removes the layer, its tar-split
    file with it, instead of taking it for live work."""
    root, run_root, proc = _import_then_kill(tmp_path, children)
    from graphdriver.testing.setups import open_store

    store = open_store(root, run_root, "vfs")
    done: list[str] = []
    cleanup = threading.Thread(target=lambda: done.extend(store.cleanup()))
    cleanup.start()
    cleanup.join(0.5)
    assert proc.stdin is not None
    proc.stdin.close()  # the child reads the end of its input and ends
    cleanup.join(30)
    assert not cleanup.is_alive()
    assert "removed layer victim left by an interrupted import" in done, done
    assert f"removed stray tar-split file victim.tar-split.gz.partial-{proc.pid}" in done, done
    assert [r.id for r in store.layers()] == ["base"]
    assert os.listdir(root / "pending") == [] and os.listdir(root / "tarsplit") == []
    assert sorted(n for n in os.listdir(root / "vfs") if not n.startswith(".")) == ["base"]


def test_cleanup_says_what_the_child_of_a_killed_import_holds_too_long(tmp_path: Path, children,
                                                                       monkeypatch) -> None:
    """A child that outlives the wait keeps the layer for the next cleanup, which says so."""
    from graphdriver.store import records
    from graphdriver.testing.setups import open_store

    root, run_root, proc = _import_then_kill(tmp_path, children)
    monkeypatch.setattr(records, "CHILDREN_WAIT", 0.2)
    store = open_store(root, run_root, "vfs")
    assert store.cleanup() == ["layer victim left by an interrupted import: not removed yet "
                               "(a process it started still holds it)"]
    assert (root / "pending" / "victim").exists()
    assert proc.stdin is not None
    proc.stdin.close()
    monkeypatch.setattr(records, "CHILDREN_WAIT", 30.0)
    assert "removed layer victim left by an interrupted import" in store.cleanup()
    assert [r.id for r in store.layers()] == ["base"]


# ----- probes ---------------------------------------------------------------------------------------


_PROBE_CRASH = """
    import os, signal, sys
    real = os.setxattr
    def setxattr(path, *args, **kw):
        if "-probe-" in str(path):
            print("ready", flush=True)
            import time; time.sleep(600)  # killed here, its scratch folder made
        return real(path, *args, **kw)
    os.setxattr = setxattr
    from graphdriver.drivers.overlay import probe_home
    probe_home({home!r}, None)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the overlay probe needs root here")
def test_cleanup_removes_the_folder_of_a_probe_killed_half_way(tmp_path: Path, children) -> None:
    root, run_root = tmp_path / "store", tmp_path / "run"
    assert run_cli("create", "base", root=root, run_root=run_root, driver="overlay").returncode == 0
    home = root / "overlay"
    procs = []
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PROBE_CRASH).format(home=str(home))],
                                env=_ENV, stdout=subprocess.PIPE)
        children.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        procs.append(proc)
    dead = procs[0]  # procs[1] lives on, probing
    _kill_unreaped(dead)
    probes = sorted(n for n in os.listdir(home) if "-probe-" in n)
    assert len(probes) == 2
    r = run_cli("cleanup", root=root, run_root=run_root)
    assert r.returncode == 0, r.stderr
    [gone] = [n for n in probes if f"-{dead.pid}-" in n]
    assert r.stdout.decode() == f"removed probe leftover {home / gone}\n"
    assert sorted(n for n in os.listdir(home) if "-probe-" in n) == [n for n in probes if n != gone]


def test_cleanup_of_a_store_not_made_yet_removes_a_first_probes_folder(tmp_path: Path, children) -> None:
    """Before the store exists, the first probe scratches in the nearest folder that exists."""
    root = tmp_path / "store"
    scratch = tmp_path / f".vfs-probe-{os.getpid()}-0123abcd"  # a writer gone, its pid reused
    scratch.mkdir()
    unrelated = tmp_path / ".vfs-probe-notes"
    unrelated.mkdir()
    r = run_cli("cleanup", root=root, run_root=tmp_path / "run")
    assert (r.returncode, r.stdout.decode()) == (0, f"removed probe leftover {scratch}\n"), r.stderr
    assert not scratch.exists() and unrelated.exists() and not root.exists()


# ----- diff -o FILE -----------------------------------------------------------------------------------


_EXPORT = """
    from graphdriver.fs import outfile
    outfile._TMPFILE = {tmpfile}
    out = outfile.OutputFile({path!r})
    out.file.write(b"half")
    out.file.flush()
"""


@pytest.mark.parametrize("tmpfile", ["unnamed", "named"])
def test_a_killed_export_leaves_nothing_a_later_one_keeps(tmp_path: Path, children, tmpfile: str) -> None:
    """``diff -o FILE`` killed half way: with O_TMPFILE there is nothing beside FILE; without,
    its ``.tmp-FILE-PID`` is removed by the next writer of FILE, and a live writer's is kept."""
    if tmpfile == "unnamed" and not outfile._TMPFILE:
        pytest.skip("no O_TMPFILE here")
    flag = "outfile._TMPFILE" if tmpfile == "unnamed" else "0"
    target = tmp_path / "out.tar"
    dead = _writer(_EXPORT.format(tmpfile=flag, path=str(target)))
    children.append(dead)
    live = _writer(_EXPORT.format(tmpfile=flag, path=str(target)))
    children.append(live)
    _kill_unreaped(dead)
    left = sorted(os.listdir(tmp_path))
    if tmpfile == "unnamed":
        assert left == []
    else:
        assert left == sorted([f".tmp-out.tar-{dead.pid}", f".tmp-out.tar-{live.pid}"])
    root = tmp_path / "store"
    store_tar = make_tar({"f": F(b"layer")})
    assert run_cli("import", "l", "-", root=root, input=store_tar).returncode == 0
    r = run_cli("diff", "l", "-o", str(target), root=root)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == store_tar
    expected = [] if tmpfile == "unnamed" else [f".tmp-out.tar-{live.pid}"]
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".tmp-")) == expected


@pytest.mark.parametrize("tmpfile", ["unnamed", "named"])
def test_output_file_writes_whole_or_nothing_both_ways(tmp_path: Path, monkeypatch, tmpfile: str) -> None:
    if tmpfile == "named":
        monkeypatch.setattr(outfile, "_TMPFILE", 0)
    elif not outfile._TMPFILE:
        pytest.skip("no O_TMPFILE here")
    target = tmp_path / "out"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with outfile.OutputFile(str(target)) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(RuntimeError), outfile.OutputFile(str(target)) as f:
        f.write(b"never")
        raise RuntimeError
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out"]


def test_store_api_cleanup_keeps_a_live_staging_folder(tmp_path: Path) -> None:
    """In one process: a staging folder this process holds is live, one it let go is not."""
    from graphdriver.testing.setups import open_store

    store = open_store(tmp_path / "store", tmp_path / "run", "vfs")
    store.import_layer("base", None, io.BytesIO(make_tar({"f": F(b"base")})))
    staging = Path(store.driver.home, ".staging")
    held = locking.claim(str(staging / "mine-1"), folder=True)
    try:
        (staging / "old-1").mkdir()
        assert store.cleanup() == ["dropped staging leftover old-1"]
        assert os.listdir(staging) == ["mine-1"]
    finally:
        os.close(held)


def test_a_lock_file_removed_while_held_is_never_held_twice(tmp_path: Path) -> None:
    """A holder that removes its lock file (a download's) before letting go: whoever waited on
    that file takes the one now at the path, so no two hold "the" lock at once."""
    import threading
    import time

    path = str(tmp_path / "blob.download.lock")
    inside: list[str] = []
    held = threading.Event()

    def holder() -> None:
        with locking.locked(path):
            held.set()
            time.sleep(0.3)  # the waiter is blocked on this very file by now
            os.unlink(path)

    def waiter(name: str) -> None:
        with locking.locked(path):
            inside.append(f"{name} in")
            time.sleep(0.2)
            inside.append(f"{name} out")

    first = threading.Thread(target=holder)
    first.start()
    held.wait()
    b = threading.Thread(target=waiter, args=("b",))
    b.start()
    first.join()
    c = threading.Thread(target=waiter, args=("c",))  # comes when the path names a new file
    c.start()
    b.join()
    c.join()
    assert inside in (["b in", "b out", "c in", "c out"], ["c in", "c out", "b in", "b out"])


def test_a_lock_file_that_is_a_symlink_is_taken_through_it(tmp_path: Path) -> None:
    (tmp_path / "real.lock").write_bytes(b"")
    (tmp_path / "store.lock").symlink_to(tmp_path / "real.lock")
    with locking.locked(str(tmp_path / "store.lock")) as fd:
        assert os.fstat(fd).st_ino == os.stat(tmp_path / "real.lock").st_ino


def test_an_apply_killed_while_its_child_ends_is_damaged_not_under_way(tmp_path: Path, children,
                                                                        monkeypatch) -> None:
    """The confined child of a killed apply still holds the apply's lock a moment after its
    parent is dead: what asks then whether the apply is under way waits for it, so cleanup
    says the layer is damaged, and takes the apply's lock file and half-written tar-split
    file, instead of taking it for an apply that runs; a child that outlives the wait is
    taken for one."""
    from graphdriver.store import records
    from graphdriver.testing.setups import open_store

    work = 'store.create("victim", "base"); store.apply("victim", sys.stdin.buffer)'
    root, run_root, proc = _import_then_kill(tmp_path, children, work=work)
    store = open_store(root, run_root, "vfs")
    monkeypatch.setattr(records, "CHILDREN_WAIT", 0.2)
    assert store.records.is_applying("victim")
    monkeypatch.setattr(records, "CHILDREN_WAIT", 30.0)
    done: list[str] = []
    cleanup = threading.Thread(target=lambda: done.extend(store.cleanup()))
    cleanup.start()
    cleanup.join(0.5)
    assert cleanup.is_alive()  # waits for the child
    assert proc.stdin is not None
    proc.stdin.close()
    cleanup.join(30)
    assert not cleanup.is_alive()
    assert "removed stray apply lock of victim" in done, done
    assert f"removed stray tar-split file victim.tar-split.gz.partial-{proc.pid}" in done, done
    assert any(line.startswith("layer victim is damaged (an apply started at ") for line in done), done
    assert os.listdir(root / "pending") == [] and os.listdir(root / "tarsplit") == []
    assert store.layer("victim").damaged is not None

"""What the benchmarks share: the installed command, the layer, the places, the report.

Every benchmark runs graphdriver as its users get it: the checkout installed
with a plain ``pip install .`` (no extras) into a new virtual environment
under ``~/.cache/graphdriver``, and the installed ``graphdriver`` command run
once per operation.  The report says so, with the codec implementations that
install uses.  Tools take turns round by round (A B C A B C ...), so that a
noisy machine slows them alike, and the report gives medians and each tool's
ratio to graphdriver.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from graphdriver.fs.atomic import syncfs  # noqa: E402

CACHE = Path(os.environ.get("GRAPHDRIVER_TEST_CACHE", Path.home() / ".cache" / "graphdriver"))
VENV = CACHE / "bench-venv"
#: What is installed and measured: this checkout, or another one named by ``BENCH_SOURCE``
#: (``git worktree add /tmp/old REV``), to compare two versions' ratios to the same peers.
SOURCE = Path(os.environ.get("BENCH_SOURCE") or HERE.parent).resolve()
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
ENV.update(GRAPHDRIVER_NO_PROGRESS="1")


def install(source: Path = SOURCE, venv: Path = VENV, label: str = "graphdriver") -> Path:
    """*source* installed as users install it: ``pip install .`` in a new venv.

    Made afresh on every benchmark run (the checkout may have changed), with
    the interpreter running the benchmark; returns the venv's ``graphdriver``
    command and prints how it was installed.
    """
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(source)], check=True, env=ENV)
    command = venv / "bin" / "graphdriver"
    show = ("from graphdriver import codecs\n"
            "for k, v in codecs.implementations(): print(k.removeprefix('Codec ').lower(), v, sep=': ')")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", show],
                           capture_output=True, text=True, env=ENV)
    print(f"{label}: `pip install .` (no extras) into a new venv, {command}")
    print(f"  from {source}{_revision(source)}")
    codecs = "; ".join(probe.stdout.splitlines()) if probe.returncode == 0 else "codecs not reported"
    print(f"  Python {sys.version.split()[0]}; {codecs}")
    return command


def _revision(source: Path) -> str:
    """`` at <commit>`` of a git checkout (with ``+changes`` when its files differ), else nothing."""
    git = ["git", "-C", str(source)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return ""
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f" at {head.stdout.strip()}{'+changes' if dirty else ''}"


_COMMAND: list[Path] = []


def graphdriver_command() -> Path:
    """The installed command (installed once per benchmark process)."""
    if not _COMMAND:
        _COMMAND.append(install())
    return _COMMAND[0]


def commands() -> dict[str, Path]:
    """``{"graphdriver": command}``, and with ``BENCH_BASELINE`` naming another checkout
    (``git worktree add /tmp/old REV``) also ``{"graphdriver@REV": its command}``, installed the
    same way: the benchmarks that take it run both in turns, for a side-by-side comparison."""
    if not _COMMANDS:
        _COMMANDS["graphdriver"] = graphdriver_command()
        other = os.environ.get("BENCH_BASELINE")
        if other:
            source = Path(other).resolve()
            label = f"graphdriver@{_revision(source).removeprefix(' at ') or source.name}"
            _COMMANDS[label] = install(source, CACHE / "bench-venv-baseline", label)
    return dict(_COMMANDS)


_COMMANDS: dict[str, Path] = {}

#: A tool's run: (layer tarball, fresh work directory) -> None; raises on failure.
Tool = Callable[[Path, Path], None]
WHERE = ("tmpfs", "disk")


def debian_layer() -> Path:
    """A Debian bookworm minbase root filesystem as a tarball (made once, cached)."""
    tar = CACHE / "debian-minbase.tar"
    if tar.exists():
        return tar
    rootfs = CACHE / "rootfs"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (rootfs / "etc" / "debian_version").exists():
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                        "http://deb.debian.org/debian"], check=True, capture_output=True)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf",
                    str(tar), "-C", str(rootfs), "."], check=True)
    return tar


def warm(path: Path) -> Path:
    """Read *path* once, so that no tool's first round pays for reading it from disk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return path


def gd_cmd(work: Path, driver: str, *args: str, command: Path | None = None) -> list[str]:
    """A graphdriver CLI command on the store in *work* (the installed command, or *command*)."""
    return [str(command or graphdriver_command()), "--root", str(work / "gd"), "--run-root",
            str(work / "gd-run"), "--driver", driver, *args]


def gd(work: Path, driver: str, *args: str, stdout: int | None = subprocess.DEVNULL,
       command: Path | None = None) -> None:
    subprocess.run(gd_cmd(work, driver, *args, command=command), env=ENV, check=True, stdout=stdout)


def cs_cmd(work: Path, driver: str, *args: str) -> list[str]:
    """A containers-storage command on the store in *work*."""
    return ["containers-storage", "--graph", str(work / "cs"), "--run", str(work / "cs-run"),
            "--storage-driver", driver, *args]


def cs_cleanup(work: Path, driver: str) -> None:
    if (work / "cs").exists():
        for cmd in ("wipe", "shutdown"):
            subprocess.run(cs_cmd(work, driver, cmd), check=False, capture_output=True)


def unmount_below(path: Path) -> None:
    """Unmount whatever an overlay store left mounted under *path* (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    prefix = str(path).rstrip("/") + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_work(work: Path) -> None:
    cs_cleanup(work, "vfs")
    cs_cleanup(work, "overlay")
    unmount_below(work)
    shutil.rmtree(work, ignore_errors=True)


def timed(fn: Callable[[], object], sync: Path | None = None) -> float:
    """Wall time of *fn*, with the data it wrote under *sync* made durable (syncfs) counted too.

    Writing back is part of the work on a disk; the filesystem is synced
    before the clock starts, so that nobody pays for someone else's pages.
    """
    if sync is not None:
        syncfs(str(sync))
    start = time.perf_counter()
    fn()
    if sync is not None:
        syncfs(str(sync))
    return time.perf_counter() - start


@contextlib.contextmanager
def place(where: str) -> Iterator[Path]:
    """A fresh directory on tmpfs (mounted for the run) or on disk (``BENCH_DISK_DIR``)."""
    if where == "tmpfs":
        path = Path(tempfile.mkdtemp(prefix="gd-bench-tmpfs-"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            unmount_below(path)
            subprocess.run(["umount", str(path)], check=False)
            path.rmdir()
        return
    path = Path(tempfile.mkdtemp(prefix="gd-bench-disk-", dir=os.environ.get("BENCH_DISK_DIR")))
    try:
        yield path
    finally:
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def places(choice: str) -> tuple[str, ...]:
    return WHERE if choice == "both" else (choice,)


def fresh(base: Path, data: Path, tool: Tool) -> Callable[[], float]:
    """One timed run of *tool* on *data* into a fresh work directory under *base*, removed afterwards."""

    def run() -> float:
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            return timed(lambda: tool(data, work), sync=work)
        finally:
            remove_work(work)

    return run


def take_turns(tools: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each tool once per round, in turns; each returns its own time."""
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(rounds):
        for name, run in tools.items():
            times[name].append(run())
    return times


def report(title: str, times: dict[str, list[float]], mine: str = "graphdriver") -> dict[str, float]:
    """Print medians and ratios to *mine*; return the medians."""
    med = {n: statistics.median(t) for n, t in times.items() if t}
    rounds = max(len(t) for t in times.values())
    print(f"\n{title}, {rounds} rounds, medians (s):")
    for name, m in med.items():
        spread = f"[{min(times[name]):.3f}-{max(times[name]):.3f}]"
        line = f"  {name:28s} {m:7.3f} s  {spread:>15s}"
        if name != mine and not name.startswith(mine):
            line += "   " + "  ".join(f"{g}/{name} = {med[g] / m:.2f}" for g in med if g.startswith(mine))
        elif "@" in name:  # a baseline's command, against the checkout's doing the same
            ours = name.replace(name[name.index("@"):].split(" ", 1)[0], "", 1)
            if ours in med:
                line += f"   {ours}/{name} = {med[ours] / m:.2f}"
        print(line)
    return med


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.0f} MiB"


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    """A regular file *name* holding *data* in the archive being written."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def image_config(layer: bytes) -> tuple[str, bytes, str]:
    """A one-layer image's DiffID, config and config digest."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    return diff_id, config, "sha256:" + hashlib.sha256(config).hexdigest()


def write_docker_archive(path: Path, layer: bytes, name: str) -> None:
    """A docker-archive at *path* of one image named *name*, of the uncompressed *layer*."""
    diff_id, config, config_digest = image_config(layer)
    with tarfile.open(path, "w") as tf:
        add_member(tf, f"{config_digest[7:]}.json", config)
        add_member(tf, f"{diff_id[7:]}.tar", layer)
        manifest = [{"Config": f"{config_digest[7:]}.json", "RepoTags": [name],
                     "Layers": [f"{diff_id[7:]}.tar"]}]
        add_member(tf, "manifest.json", json.dumps(manifest).encode())

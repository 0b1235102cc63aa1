"""Reading files of ours that their mode closes to us, as an unprivileged store does."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from graphdriver.fs.ownfiles import open_readable
from tests.conftest import as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


def test_readers_of_one_locked_out_file_at_once_all_read_it_and_its_mode_stays() -> None:
    """Readers racing on one file (two containers made from one image) never fail for it:
    they take turns at the one process that opens it as its owner."""
    from tests.test_cli import _load_every_module

    _load_every_module()  # before the fork to nobody, who may not read the checkout
    work = Path(tempfile.mkdtemp(prefix="gd-own-"))
    try:
        os.chmod(work, 0o755)
        os.chown(work, 65534, 65534)

        def scenario() -> tuple[int, int]:
            path = work / "shadow"
            path.write_bytes(b"root:!!:19000::\n")
            os.chmod(path, 0o000)
            failures = []

            def read() -> None:
                for _ in range(400):
                    try:
                        fd = open_readable(str(path))
                    except Exception as e:
                        failures.append(e)
                        continue
                    assert os.read(fd, 100) == b"root:!!:19000::\n"
                    os.close(fd)

            threads = [threading.Thread(target=read) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return len(failures), os.stat(path).st_mode & 0o7777

        assert as_nobody(scenario) == (0, 0)
    finally:
        import shutil

        shutil.rmtree(work)


def test_a_closed_folder_of_ours_is_found_before_a_walk_and_no_other(tmp_path: Path) -> None:
    """What makes a command that streams its output read as the owner from the start: the
    first folder of ours whose mode lacks the owner's r or x; not one of another user's, not
    one a symlink leads to, and nothing in an open tree."""
    from graphdriver.fs.ownfiles import closed_folder

    tree = tmp_path / "tree"
    (tree / "usr" / "share").mkdir(parents=True)
    (tree / "usr" / "share" / "f").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o000)
    (tree / "link").symlink_to(outside)
    theirs = tree / "theirs"
    theirs.mkdir(mode=0o000)
    os.chown(theirs, 65534, 65534)
    try:
        assert closed_folder(str(tree)) is None
        for mode in (0o000, 0o100, 0o400, 0o600):
            (tree / "usr" / "share").chmod(mode)
            assert closed_folder(str(tree)) == str(tree / "usr" / "share"), oct(mode)
        (tree / "usr" / "share").chmod(0o500)
        assert closed_folder(str(tree)) is None
        assert closed_folder(str(tmp_path / "gone")) is None
    finally:
        outside.chmod(0o700)


def _chmod_tracer(calls: list[tuple[int, int]]) -> None:
    """Make every chmod and fchmod of this process note the (st_dev, st_ino) it changes."""

    def inode(target: object) -> tuple[int, int]:
        try:
            st = os.fstat(target) if isinstance(target, int) else os.stat(target)  # type: ignore[arg-type]
        except OSError:
            return (-1, -1)
        return (st.st_dev, st.st_ino)

    real_chmod, real_fchmod = os.chmod, os.fchmod

    def chmod(target: object, mode: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        if isinstance(target, int) or dir_fd is None:
            calls.append(inode(target))
        real_chmod(target, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)  # type: ignore[arg-type]

    def fchmod(fd: int, mode: int) -> None:
        calls.append(inode(fd))
        real_fchmod(fd, mode)

    os.chmod = chmod  # type: ignore[assignment]
    os.fchmod = fchmod  # type: ignore[assignment]


def test_a_file_its_owner_may_not_read_is_read_without_its_mode_ever_changing() -> None:
    """Without root, a file of mode 0000 (/etc/shadow) or 4111 (sudo) of the user's own is
    read with its mode untouched: no chmod of it at all, and a process watching its mode
    meanwhile (another command's check, a copy) never sees another.  A file of another
    user's stays refused."""
    from tests.test_cli import _load_every_module

    _load_every_module()  # before the fork to nobody, who may not read the checkout
    work = Path(tempfile.mkdtemp(prefix="gd-own-"))
    try:
        os.chmod(work, 0o755)
        os.chown(work, 65534, 65534)
        theirs = work / "theirs"
        theirs.write_bytes(b"t")
        theirs.chmod(0o000)

        def scenario() -> tuple[bool, list[bytes], int, set[int], bool]:
            import sys

            (work / "plain").write_bytes(b"p")
            os.close(open_readable(str(work / "plain")))
            # A file the user may read is opened here: no helper process is started for it.
            no_helper = getattr(sys.modules.get("graphdriver.fs.asowner"), "_helper", None) is None
            files = {work / "shadow": (b"root:!!:19000::\n", 0o000), work / "sudo": (b"ELF", 0o4111)}
            for path, (data, mode) in files.items():
                path.write_bytes(data)
                os.chmod(path, mode)
            if not os.stat(work / "sudo").st_mode & 0o4000:
                raise AssertionError("no setuid bit")
            seen: set[int] = set()
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    for path in files:
                        seen.add(os.lstat(path).st_mode & 0o7777)

            watcher = threading.Thread(target=watch)
            watcher.start()
            calls: list[tuple[int, int]] = []
            _chmod_tracer(calls)
            read = []
            folder = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for _ in range(20):
                    for path in files:
                        fd = open_readable(path.name, folder)
                        read.append(os.read(fd, 100))
                        os.close(fd)
            finally:
                done.set()
                watcher.join()
                os.close(folder)
            ours = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in files}
            try:
                open_readable(str(theirs))
                refused = False
            except PermissionError:
                refused = True
            return no_helper, sorted(set(read)), len([c for c in calls if c in ours]), seen, refused

        assert as_nobody(scenario) == (True, [b"ELF", b"root:!!:19000::\n"], 0, {0o000, 0o4111}, True)
    finally:
        import shutil

        shutil.rmtree(work)

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
    """Each reader adds the owner's read bit for the moment of its open and takes it back:
    readers racing on one file (two containers made from one image) never fail for it."""
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
                    except PermissionError as e:
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

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

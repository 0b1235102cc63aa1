"""Hostile-but-valid archives, generated: import refuses cleanly or the layer re-exports.

For every generated archive (odd names, symlinks anywhere and pointing anywhere,
hardlinks, whiteouts, duplicate paths), on every driver:

* ``import`` either refuses with one line (a :class:`GraphDriverError`) and
  leaves nothing behind, or succeeds;
* a layer that imported passes ``check`` and ``diff`` gives back the archive
  byte for byte, unless the layer says it cannot be re-exported exactly, in
  which case ``diff`` refuses (exit 6) rather than give other bytes;
* nothing outside the store changes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.errors import GraphDriverError, IntegrityError
from graphdriver.store.layers import Store, StoreOptions

SEGMENTS = ["a", "b", "d", ".", "..", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "sp ace", "x\ny",
            "\u00e9", "-"]
name = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join) | st.just(".")
prefixed = st.tuples(st.sampled_from(["", "./", "/"]), name, st.sampled_from(["", "/"])).map("".join)
kind = st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "whiteout"])
entries = st.lists(st.tuples(kind, prefixed, prefixed, st.binary(max_size=64)), min_size=1, max_size=8)


def build(spec: list[tuple[str, str, str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for k, path, other, data in spec:
            info = tarfile.TarInfo(path)
            info.mtime = 1_600_000_000
            body = None
            if k == "file":
                info.size = len(data)
                body = io.BytesIO(data)
            elif k == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif k == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, other
            elif k == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, other
            else:
                head, _, tail = path.rstrip("/").rpartition("/")
                info.name = (head + "/" if head else "") + ".wh." + (tail or "x")
            tf.addfile(info, body)
    return raw.getvalue()


def outside(tmp: Path) -> dict[str, tuple[int, int, str]]:
    state = {}
    for dirpath, dirnames, filenames in os.walk(tmp):
        if dirpath == str(tmp):
            dirnames[:] = [d for d in dirnames if d not in ("store", "run")]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.isfile(p) else ""
            state[p] = (st_.st_mode, st_.st_size, digest)
    return state


@pytest.mark.slow
def test_hostile_archives_refuse_cleanly_or_reexport(driver_name: str) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(entries)
    def check(spec: list[tuple[str, str, str, bytes]]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="gd-hostile-"))
        (tmp / "victim").mkdir()
        (tmp / "victim" / "hello").write_bytes(b"secret")
        (tmp / "x").write_bytes(b"x")
        store = Store(StoreOptions(root=str(tmp / "store"), run_root=str(tmp / "run"), driver=driver_name))
        before = outside(tmp)
        data = build(spec)
        try:
            try:
                store.import_layer("l", None, io.BytesIO(data))
            except GraphDriverError as e:
                assert "\n" not in str(e)
                assert store.layers() == [] and not store.exists("l")
                assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []
                assert os.listdir(os.path.join(store.root, "tarsplit")) == []
                return
            record = store.layer("l")
            ((_, why),) = store.check()
            out = io.BytesIO()
            if record.unreproducible:
                assert why is not None and why.startswith("skipped")
                with pytest.raises(IntegrityError):
                    store.diff("l", out)
            else:
                assert why is None, why
                store.diff("l", out)
                assert out.getvalue() == data
        finally:
            assert outside(tmp) == before
            for r in store.layers():
                while store.driver.mount_count(r.id) > 0:
                    store.driver.put(r.id)
            shutil.rmtree(tmp, ignore_errors=True)

    check()

"""Archives whose members the archive itself overwrites cannot be rebuilt: noticed at import."""

from __future__ import annotations

import pytest

from graphdriver.layerio.entry import DIR, LNK, REG, SYM, TarEntry
from graphdriver.layerio.reproducible import ReproducibilityCheck


def fed(*entries: tuple) -> ReproducibilityCheck:
    c = ReproducibilityCheck()
    for name, kind, size, *link in entries:
        c.see(TarEntry(name=name, type=kind, size=size, linkname=link[0] if link else ""))
    return c


def check(*entries: tuple) -> str | None:
    return fed(*entries).reason


def test_a_file_given_twice_is_left_to_its_bytes():
    """Only the tar-split metadata knows whether both entries carried the same bytes."""
    c = fed(("a", REG, 3), ("b", REG, 1), ("./a", REG, 4), ("/a", REG, 3), ("h", LNK, 0, "a"))
    assert (c.reason, c.repeated) == (None, {"a"})
    sparse = TarEntry(name="a", type=REG, size=3)
    sparse.sparse = object()  # type: ignore[assignment]
    c = fed(("a", REG, 3))
    c.see(sparse)
    assert c.reason == "'a' appears twice"


def test_ordinary_archive_is_reproducible():
    assert check(("./", DIR, 0), ("./etc/", DIR, 0), ("./etc/hosts", REG, 10),
                 ("./etc/.wh.motd", REG, 0), ("./etc/.wh..wh..opq", REG, 0),
                 ("./empty", REG, 0), ("./empty", REG, 0)) is None


@pytest.mark.parametrize("entries, why", [
    ([("a", REG, 3), ("./a", SYM, 0)], "twice"),
    ([("a", REG, 3), ("h", LNK, 0, "./a"), ("a", REG, 3)], "twice"),
    ([("d/f", REG, 3), ("d", SYM, 0)], "replaced"),
    ([("d/f", REG, 3), ("d/.wh.f", REG, 0)], "deleted"),
    ([("d/sub/f", REG, 3), (".wh.d", REG, 0)], "deleted"),
    ([("a", SYM, 0), ("a/a", REG, 0)], "through the symlink"),
    ([("l", SYM, 0), ("l/x/y", REG, 3)], "through the symlink"),
    ([("tmp/y", REG, 1), ("lnk", SYM, 0), ("lnk/.wh.y", REG, 0)], "deletes through the symlink 'lnk'"),
    ([("lnk", SYM, 0), ("lnk/.wh..wh..opq", REG, 0)], "deletes through the symlink"),
])
def test_self_overwriting_archives_are_noticed(entries, why):
    reason = check(*entries)
    assert reason is not None and why in reason

"""Archives whose members the archive itself overwrites cannot be rebuilt: noticed at import."""

from __future__ import annotations

import pytest

from graphdriver.layerio.entry import DIR, REG, SYM, TarEntry
from graphdriver.layerio.reproducible import ReproducibilityCheck


def check(*entries: tuple[str, str, int]) -> str | None:
    c = ReproducibilityCheck()
    for name, kind, size in entries:
        c.see(TarEntry(name=name, type=kind, size=size))
    return c.reason


def test_ordinary_archive_is_reproducible():
    assert check(("./", DIR, 0), ("./etc/", DIR, 0), ("./etc/hosts", REG, 10),
                 ("./etc/.wh.motd", REG, 0), ("./etc/.wh..wh..opq", REG, 0),
                 ("./empty", REG, 0), ("./empty", REG, 0)) is None


@pytest.mark.parametrize("entries, why", [
    ([("a", REG, 3), ("./a", REG, 4)], "twice"),
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

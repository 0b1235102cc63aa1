"""Short names for long paths: what they name, how many directories stay open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphdriver.fs.longpaths import PATH_MAX, ShortPaths


def _deep(top: Path, levels: int, name: str = "n" * 20) -> Path:
    """*top*/name/name/... *levels* deep, holding file ``f``: made a folder at a time, as a
    path past the kernel's limit cannot be made whole."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"deep")
    finally:
        os.close(fd)
    return top.joinpath(*[name] * levels)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_a_short_path_is_given_back_as_it_is(tmp_path):
    short = ShortPaths()
    path = str(tmp_path / "f")
    assert short(path) is path
    assert short._fds == {}


def test_a_long_path_names_the_very_file(tmp_path):
    """With a limit of 64 bytes the directory is opened in many parts, each below it."""
    deep = _deep(tmp_path, 30)
    with ShortPaths(limit=64) as short:
        name = short(str(deep / "f"))
        assert len(os.fsencode(name)) < 64
        assert Path(name).read_bytes() == b"deep"
        assert _same(os.lstat(name), os.lstat(deep / "f"))


def test_a_path_past_the_kernels_limit_is_read(tmp_path):
    deep = _deep(tmp_path, 300)  # 6,300 bytes
    with pytest.raises(OSError, match="too long"):
        os.lstat(deep / "f")
    with ShortPaths() as short:
        assert len(str(deep / "f")) >= PATH_MAX
        assert Path(short(str(deep / "f"))).read_bytes() == b"deep"
        entries = short.entries(str(deep))
        assert list(entries) == ["f"]
        assert entries["f"].stat(follow_symlinks=False).st_size == 4  # known once listed


def test_symlinks_on_the_way_are_followed_as_in_a_whole_path(tmp_path):
    deep = _deep(tmp_path / "real", 8)
    (tmp_path / "link").symlink_to("real")
    path = str(tmp_path / "link" / deep.relative_to(tmp_path / "real") / "f")
    with ShortPaths(limit=len(str(tmp_path)) + 30) as short:
        assert short(path) != path
        assert _same(os.stat(short(path)), os.stat(path))


def test_only_the_last_directories_asked_for_stay_open(tmp_path):
    tops = [_deep(tmp_path / f"t{i}", 5) for i in range(10)]
    short = ShortPaths(limit=64, keep=3)
    names = [short(str(top / "f")) for top in tops]
    assert len(short._fds) == 3
    assert Path(names[-1]).read_bytes() == b"deep"
    short.close()
    assert short._fds == {}
    with pytest.raises(OSError):
        os.lstat(names[-1])  # its directory is closed


def test_entries_of_a_long_folder_are_listed_with_their_stat(tmp_path):
    deep = _deep(tmp_path, 4)
    (deep / "sub").mkdir()
    os.symlink("f", deep / "link")
    with ShortPaths(limit=len(str(deep)) + 2) as short:
        entries = short.entries(str(deep))
        assert sorted(entries) == ["f", "link", "sub"]
        assert entries["sub"].is_dir(follow_symlinks=False)
        assert entries["link"].is_symlink()
        assert _same(entries["f"].stat(follow_symlinks=False), os.lstat(deep / "f"))

"""The generic tree comparison (``graphdriver.diff.walk``)."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdriver.diff.changes import Change, ChangeKind
from graphdriver.diff.walk import changes_between

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
T0 = 1_600_000_000_123_456_789  # a time with a nanosecond fraction

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def listing(changes: list[Change]) -> list[str]:
    return [str(c) for c in changes]


def diff(new: Path, old: Path | None) -> list[str]:
    return listing(changes_between(str(new), None if old is None else str(old)))


def write(path: Path, data: str = "x", mtime_ns: int = T0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """An old tree and an identical (copied, not linked) new one."""
    old = tmp_path / "old"
    write(old / "etc" / "passwd", "root")
    write(old / "etc" / "hosts", "localhost")
    write(old / "usr" / "bin" / "sh", "#!")
    write(old / "usr" / "lib" / "libc", "elf")
    os.symlink("sh", old / "usr" / "bin" / "bash")
    write(old / "top", "t")
    new = tmp_path / "new"
    shutil.copytree(old, new, symlinks=True)
    return new, old


def test_identical_trees_have_no_changes(trees: tuple[Path, Path]) -> None:
    new, old = trees
    assert diff(new, old) == []


def test_no_old_tree_means_everything_added(trees: tuple[Path, Path]) -> None:
    new, _ = trees
    assert diff(new, None) == [
        "A /etc",
        "A /etc/hosts",
        "A /etc/passwd",
        "A /top",
        "A /usr",
        "A /usr/bin",
        "A /usr/bin/bash",
        "A /usr/bin/sh",
        "A /usr/lib",
        "A /usr/lib/libc",
    ]


def test_add_modify_delete_with_parents(trees: tuple[Path, Path]) -> None:
    new, old = trees
    write(new / "etc" / "passwd", "root:x")
    (new / "usr" / "lib" / "libc").unlink()
    write(new / "usr" / "lib" / "libm", "m")
    write(new / "new", "n")
    assert diff(new, old) == [
        "C /etc",
        "C /etc/passwd",
        "A /new",
        "C /usr",
        "C /usr/lib",
        "D /usr/lib/libc",
        "A /usr/lib/libm",
    ]


def test_everything_below_an_added_directory_is_added(trees: tuple[Path, Path]) -> None:
    new, old = trees
    write(new / "opt" / "app" / "bin" / "run")
    (new / "opt" / "empty").mkdir()
    assert diff(new, old) == [
        "A /opt",
        "A /opt/app",
        "A /opt/app/bin",
        "A /opt/app/bin/run",
        "A /opt/empty",
    ]


def test_deleted_directory_is_listed_alone(trees: tuple[Path, Path]) -> None:
    new, old = trees
    shutil.rmtree(new / "usr")
    assert diff(new, old) == ["D /usr"]


def test_deep_change_marks_every_parent_but_not_the_root(tmp_path: Path) -> None:
    old = tmp_path / "old"
    write(old / "a" / "b" / "c" / "f")
    new = tmp_path / "new"
    shutil.copytree(old, new)
    write(new / "a" / "b" / "c" / "f", "changed")
    assert diff(new, old) == ["C /a", "C /a/b", "C /a/b/c", "C /a/b/c/f"]


def test_directory_mtime_alone_is_no_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    os.utime(new / "etc", ns=(T0 + 5, T0 + 5))
    assert diff(new, old) == []


def test_directory_mode_change_is_a_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    os.chmod(new / "etc", 0o700)
    assert diff(new, old) == ["C /etc"]


def test_file_mode_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    os.chmod(new / "top", 0o4755)
    assert diff(new, old) == ["C /top"]


def test_file_mtime_nanoseconds_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    os.utime(new / "top", ns=(T0 + 1, T0 + 1))
    assert diff(new, old) == ["C /top"]


def test_whole_second_mtime_matches_same_second_with_fraction(trees: tuple[Path, Path]) -> None:
    # Docker's rule: a side without a fraction came through a seconds-only tar header.
    new, old = trees
    whole = T0 - T0 % 1_000_000_000
    os.utime(new / "top", ns=(whole, whole))
    assert diff(new, old) == []
    os.utime(new / "top", ns=(whole + 1_000_000_000, whole + 1_000_000_000))
    assert diff(new, old) == ["C /top"]


def test_file_size_change_with_same_mtime(trees: tuple[Path, Path]) -> None:
    new, old = trees
    write(new / "top", "longer")
    assert diff(new, old) == ["C /top"]


def test_symlink_target_change_of_same_length_and_time(trees: tuple[Path, Path]) -> None:
    new, old = trees
    link = new / "usr" / "bin" / "bash"
    mtime = os.lstat(old / "usr" / "bin" / "bash").st_mtime_ns
    link.unlink()
    os.symlink("zz", link)
    os.utime(link, ns=(mtime, mtime), follow_symlinks=False)
    assert diff(new, old) == ["C /usr", "C /usr/bin", "C /usr/bin/bash"]


def test_same_content_rewritten_with_same_metadata_is_no_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    (new / "top").unlink()
    write(new / "top", "t")
    assert diff(new, old) == []


@needs_root
def test_owner_and_group_changes(trees: tuple[Path, Path]) -> None:
    new, old = trees
    os.chown(new / "top", 1000, -1)
    os.chown(new / "etc" / "hosts", -1, 1000)
    os.chown(new / "usr", 5, 5)
    assert diff(new, old) == ["C /etc", "C /etc/hosts", "C /top", "C /usr"]


@needs_root
def test_device_number_change(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    os.mknod(old / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(new / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    for p in (old / "null", new / "null"):
        os.utime(p, ns=(T0, T0))
    assert diff(new, old) == ["C /null"]


def _capability_blob(cap: int) -> bytes:
    # vfs_cap_data revision 2, effective flag set, one permitted capability.
    return struct.pack("<5I", 0x02000001, 1 << cap, 0, 0, 0)


@needs_root
def test_capability_change_alone_is_a_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    sh = new / "usr" / "bin" / "sh"
    try:
        os.setxattr(sh, "security.capability", _capability_blob(10))
    except OSError as e:
        pytest.skip(f"cannot set security.capability here: {e}")
    os.utime(sh, ns=(T0, T0))
    assert diff(new, old) == ["C /usr", "C /usr/bin", "C /usr/bin/sh"]
    os.setxattr(old / "usr" / "bin" / "sh", "security.capability", _capability_blob(10))
    assert diff(new, old) == []
    os.setxattr(sh, "security.capability", _capability_blob(12))
    os.utime(sh, ns=(T0, T0))
    assert diff(new, old) == ["C /usr", "C /usr/bin", "C /usr/bin/sh"]


def test_an_xattr_change_alone_is_a_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    try:
        os.setxattr(new / "top", "user.note", b"hi")
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e}")
    assert diff(new, old) == ["C /top"]  # a tarball carries it: the layer changed
    os.setxattr(old / "top", "user.note", b"hi")
    assert diff(new, old) == []
    os.setxattr(new / "etc", "user.note", b"on a directory")
    assert diff(new, old) == ["C /etc"]


@needs_root
def test_xattrs_a_tarball_never_carries_are_no_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    try:
        os.setxattr(new / "top", "trusted.overlay.origin", b"x")  # overlayfs's own bookkeeping
    except OSError as e:
        pytest.skip(f"no trusted xattrs here: {e}")
    assert diff(new, old) == []


def test_a_write_in_the_second_of_a_whole_second_time_is_a_change(trees: tuple[Path, Path]) -> None:
    new, old = trees
    whole = T0 - T0 % 1_000_000_000  # as a plain tar header gives it
    for root in (old, new):
        os.utime(root / "top", ns=(whole, whole))
    assert diff(new, old) == []
    write(new / "top", "u", mtime_ns=whole + 300_000_000)  # same size, same second, new bytes
    assert diff(new, old) == ["C /top"]
    write(new / "top", "t", mtime_ns=whole + 300_000_000)  # the same bytes: Docker's time rule holds
    assert diff(new, old) == []


def _mark_after(tmp_path: Path, *paths: Path) -> int:
    """The ctime of a new mark, later than every ctime of *paths* (the kernel stamps ctimes
    from a clock that ticks coarsely: wait for the next tick)."""
    latest = max(os.lstat(p).st_ctime_ns for p in paths)
    for attempt in range(1000):
        mark = tmp_path / f"mark-{attempt}"
        mark.touch()
        if os.lstat(mark).st_ctime_ns > latest:
            return os.lstat(mark).st_ctime_ns
        time.sleep(0.002)
    raise AssertionError("the clock of ctimes did not move")


def since_diff(new: Path, old: Path, since: int) -> list[str]:
    return listing(changes_between(str(new), str(old), since=since))


def test_a_file_rewritten_after_the_tree_was_made_is_read(trees: tuple[Path, Path], tmp_path: Path) -> None:
    new, old = trees
    since = _mark_after(tmp_path, new / "top", old / "top")
    write(new / "top", "u")  # same size, mode, owner and time: only the bytes tell
    assert since_diff(new, old, since) == ["C /top"]
    assert diff(new, old) == []  # without the mark, Docker's rule: a copy's stat is the copy
    write(new / "top", "t")  # the same bytes again: no change
    assert since_diff(new, old, since) == []


def test_a_file_of_the_old_tree_rewritten_after_the_mark_is_read(trees: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    new, old = trees
    since = _mark_after(tmp_path, new / "top", old / "top")
    write(old / "top", "u")
    assert since_diff(new, old, since) == ["C /top"]


def test_files_older_than_the_mark_are_not_read(trees: tuple[Path, Path], tmp_path: Path) -> None:
    """What is older than the mark is the driver's copy: the walk never reads a whole tree."""
    new, old = trees
    write(new / "top", "u")  # (a copy is never so; the walk must not look)
    since = _mark_after(tmp_path, new / "top", old / "top")
    assert since_diff(new, old, since) == []


def test_same_inode_in_both_trees_is_pruned(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    write(old / "d" / "shared", "same")
    (new / "d").mkdir(parents=True)
    os.link(old / "d" / "shared", new / "d" / "shared")
    assert diff(new, old) == []
    # Even a metadata change is invisible: both names show the one inode.
    os.chmod(new / "d" / "shared", 0o600)
    assert diff(new, old) == []


def _two_files(root: Path, linked: bool) -> None:
    """``p`` and ``q``: one size, one time, the same bytes; two files, or one of both names."""
    write(root / "p", "same")
    if linked:
        os.link(root / "p", root / "q")
    else:
        write(root / "q", "same")


def test_two_files_joined_into_one_are_both_changed(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _two_files(old, linked=False)
    _two_files(new, linked=True)  # ``rm q; ln p q``: each name looks as it did
    assert diff(new, old) == ["C /p", "C /q"]


def test_a_file_joined_to_another_of_other_bytes_is_changed_with_it(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    write(old / "p", "same")
    write(old / "q", "diff")
    _two_files(new, linked=True)
    assert diff(new, old) == ["C /p", "C /q"]


def test_names_of_one_file_in_both_trees_are_no_change(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _two_files(old, linked=True)
    _two_files(new, linked=True)  # a copy that kept the link
    assert diff(new, old) == []
    write(new / "r", "same")
    os.unlink(new / "q")
    os.link(new / "r", new / "q")  # another file, another group: q joined r, p stays alone
    assert diff(new, old) == ["C /q", "A /r"]


def test_same_root_is_no_change(trees: tuple[Path, Path]) -> None:
    new, _ = trees
    assert diff(new, new) == []


def test_directory_replaced_by_file(trees: tuple[Path, Path]) -> None:
    # As docker diff: the path changed; the old contents are not listed as deleted.
    new, old = trees
    shutil.rmtree(new / "usr")
    write(new / "usr", "now a file")
    assert diff(new, old) == ["C /usr"]


def test_file_replaced_by_directory(trees: tuple[Path, Path]) -> None:
    new, old = trees
    (new / "top").unlink()
    write(new / "top" / "inside")
    (new / "top" / "sub").mkdir()
    assert diff(new, old) == ["C /top", "A /top/inside", "A /top/sub"]


def test_file_replaced_by_symlink(trees: tuple[Path, Path]) -> None:
    new, old = trees
    (new / "etc" / "hosts").unlink()
    os.symlink("passwd", new / "etc" / "hosts")
    assert diff(new, old) == ["C /etc", "C /etc/hosts"]


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    raw = os.fsdecode(b"caf\xe9")
    write(old / raw / "gone")
    write(new / raw / os.fsdecode(b"\xff\xfe"))
    os.utime(old / raw, ns=(T0, T0))
    changes = changes_between(str(new), str(old))
    assert [(c.kind, os.fsencode(c.path)) for c in changes] == [
        (C, b"/caf\xe9"),
        (D, b"/caf\xe9/gone"),
        (A, b"/caf\xe9/\xff\xfe"),
    ]


def test_sorted_by_path_bytes(tmp_path: Path) -> None:
    new = tmp_path / "new"
    write(new / "a" / "x")
    write(new / "a.b")
    write(new / "a-")
    write(new / os.fsdecode(b"\xff"))
    write(new / "\ue000")  # sorts after U+DCFF (a lone 0xff byte) as str, before it as bytes
    got = [os.fsencode(c.path) for c in changes_between(str(new), None)]
    assert got == sorted(got)
    assert got[:4] == [b"/a", b"/a-", b"/a.b", b"/a/x"]


def test_vanished_old_root_child_is_handled_as_absent(trees: tuple[Path, Path]) -> None:
    new, old = trees
    shutil.rmtree(old / "etc")
    assert diff(new, old)[:3] == ["A /etc", "A /etc/hosts", "A /etc/passwd"]


# ----- property: random trees, random mutations, a model of the rules ---------


@dataclass(frozen=True)
class Node:
    kind: str  # "f" file, "d" directory, "l" symlink
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = T0
    target: str = ""


NAMES = ["a", "b", "a.b", "é", "c-"]
OPS = ["add", "del", "size", "mode", "mtime", "dirtime", "todir", "tofile", "target"]


def _tree(depth: int) -> st.SearchStrategy[dict[str, Node]]:
    """A tree as {relative path: node}."""
    leaves = st.one_of(
        st.integers(0, 3).map(lambda n: {"": Node("f", size=n)}),
        st.sampled_from(["t1", "t2", "t33"]).map(lambda t: {"": Node("l", target=t)}),
    )
    if depth == 0:
        return leaves
    children = st.dictionaries(st.sampled_from(NAMES), _tree(depth - 1), max_size=3)
    return st.one_of(leaves, children.map(_as_dir))


def _as_dir(children: dict[str, dict[str, Node]]) -> dict[str, Node]:
    tree = {"": Node("d", mode=0o755)}
    for name, sub in children.items():
        for rel, node in sub.items():
            tree[f"{name}/{rel}" if rel else name] = node
    return tree


def _below(tree: dict[str, Node], path: str) -> list[str]:
    return [p for p in tree if p.startswith(path + "/")]


def _mutate(tree: dict[str, Node], data: st.DataObject) -> dict[str, Node]:
    """Apply a few random mutations to a copy of *tree* (root "" excluded)."""
    tree = dict(tree)
    for _ in range(data.draw(st.integers(0, 4))):
        paths = sorted(p for p in tree if p)
        dirs = sorted(p for p in tree if tree[p].kind == "d")
        op = data.draw(st.sampled_from(OPS))
        if op == "add":
            parent = data.draw(st.sampled_from(dirs))
            name = data.draw(st.sampled_from([*NAMES, "new"]))
            path = f"{parent}/{name}" if parent else name
            if path not in tree:
                tree[path] = Node("f", size=1)
            continue
        if not paths:
            continue
        path = data.draw(st.sampled_from(paths))
        node = tree[path]
        if op == "del" or op == "tofile" or (op == "todir" and node.kind != "d"):
            for p in [path, *_below(tree, path)]:
                del tree[p]
            if op == "tofile":
                tree[path] = Node("f", size=2)
            elif op == "todir":
                tree[path] = Node("d", mode=0o755)
                tree[path + "/in"] = Node("f")
        elif op == "size" and node.kind == "f":
            tree[path] = replace(node, size=node.size + 1)
        elif op == "mode" and node.kind != "l":
            tree[path] = replace(node, mode=node.mode ^ 0o022)
        elif op in ("mtime", "dirtime") and node.kind != "l":
            tree[path] = replace(node, mtime_ns=node.mtime_ns + 1000)
        elif op == "target" and node.kind == "l":
            tree[path] = replace(node, target="t2" if node.target == "t1" else "t1")
    return tree


def _build(root: Path, tree: dict[str, Node]) -> None:
    for rel in sorted(tree, key=lambda p: p.count("/")):
        node, path = tree[rel], root / rel if rel else root
        if node.kind == "d":
            path.mkdir(exist_ok=True)
        elif node.kind == "f":
            path.write_bytes(b"x" * node.size)
        else:
            os.symlink(node.target, path)
    for rel in sorted(tree, key=lambda p: -p.count("/")):  # children before their directory
        node, path = tree[rel], root / rel if rel else root
        if node.kind != "l":
            os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        else:
            os.utime(path, ns=(T0, T0), follow_symlinks=False)


def _node_differs(node: Node, was: Node) -> bool:
    if node.kind != was.kind or node.mode != was.mode:
        return True
    if node.kind == "d":
        return False  # a directory's mtime alone is no change
    return node.size != was.size or node.mtime_ns != was.mtime_ns or node.target != was.target


def _expected(new: dict[str, Node], old: dict[str, Node]) -> list[str]:
    """The change rules, stated on the models."""
    found: dict[str, ChangeKind] = {}
    for path, node in new.items():
        if not path:
            continue
        was = old.get(path)
        if was is None:
            found[path] = A
        elif _node_differs(node, was):
            found[path] = C
    for path in old:
        parent = path.rpartition("/")[0]
        if path and path not in new and new.get(parent, Node("f")).kind == "d":
            found[path] = D
    for path in list(found):
        parent = path.rpartition("/")[0]
        while parent:
            found.setdefault(parent, C)
            parent = parent.rpartition("/")[0]
    ordered = sorted(found, key=lambda p: ("/" + p).encode("utf-8"))
    return [f"{found[p].value} /{p}" for p in ordered]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_tree(3).filter(lambda t: t[""].kind == "d"), data=st.data())
def test_random_mutations_give_the_modelled_changes(
    tree: dict[str, Node], data: st.DataObject
) -> None:
    mutated = _mutate(tree, data)
    # A fresh directory per example: pytest's tmp_path is one per test.
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        _build(tmp / "old", tree)
        _build(tmp / "new", mutated)
        assert diff(tmp / "new", tmp / "old") == _expected(mutated, tree)
        # Against nothing, every path is an addition.
        assert diff(tmp / "new", None) == _expected(mutated, {"": Node("d", mode=0o755)})



def test_quote_path_quotes_each_ascii_byte_only_where_it_must() -> None:
    """Printable ASCII but the backslash prints as it is; every other byte below 0x80 is escaped."""
    from graphdriver.diff.changes import quote_path

    named = {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r", ord("\\"): "\\\\", ord('"'): '\\"'}
    for b in range(1, 0x80):
        path = f"/a{chr(b)}z"
        if 0x20 <= b < 0x7F and b != ord("\\"):
            assert quote_path(path) == path
        else:
            escape = named.get(b, f"\\{b:03o}")
            assert quote_path(path) == '"/a' + escape + 'z"', b
    assert quote_path('"/lead') == '"\\"/lead"'
    assert quote_path("/caf\u00e9") == "/caf\u00e9"
    assert quote_path("/" + os.fsdecode(b"\xff")) == '"/\\377"'

"""The conformance suite: every scenario against every driver and option set.

Each scenario takes the ``store`` fixture (an empty store on one driver with
one option set) and ``fmt`` (its :class:`~.formats.LayerFormat`): layers are
described once and written in the driver's own format, so a Windows-format
driver runs the same scenarios through the Windows-layer builder.  Scenarios
about Unix metadata (owners, modes, devices, opaque directories) run on the
OCI-format drivers only: a Windows layer has none of it.

A third party's driver runs the suite too::

    GRAPHDRIVER_CONFORMANCE_DRIVERS="mine=mypackage.driver:MyDriver" \\
        python -m pytest --pyargs graphdriver.testing.conformance

(``NAME=module:Class`` registers the class first; a bare ``NAME`` picks a
registered driver.)  Needs ``pytest``; GNU tar for the fidelity scenario.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graphdriver.diff.changes import Change, ChangeKind
from graphdriver.errors import (
    AlreadyExists,
    ArchiveError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
)
from graphdriver.testing import setups
from graphdriver.testing.formats import LayerFormat, for_layer_format
from graphdriver.testing.treeutil import (
    D,
    Dev,
    F,
    H,
    L,
    Opaque,
    Spec,
    W,
    assert_same_tree,
    make_tar,
    snapshot,
)

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, mounts)")

_EVERY = setups.driver_setups(all_options=True, windows=True)
_OCI = [s for s in _EVERY if setups.layer_format(s) == "oci"]
#: Run a scenario on every driver and option set, or on the OCI-format ones.
every_driver = pytest.mark.parametrize("driver_setup", _EVERY, indirect=True, ids=lambda s: s.id)
oci_drivers = pytest.mark.parametrize("driver_setup", _OCI, indirect=True, ids=lambda s: s.id)


# ----- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def driver_setup(request: pytest.FixtureRequest, tmp_path: Path) -> setups.DriverSetup:
    """The driver and options of this run (skipped with the reason when it cannot run here)."""
    setup: setups.DriverSetup = request.param
    why = setups.unusable(setup, str(tmp_path))
    if why:
        pytest.skip(why)
    return setup


@pytest.fixture
def store(tmp_path: Path, driver_setup: setups.DriverSetup) -> Iterator[Any]:
    """An empty store on the driver and option set of this run."""
    s = setups.open_store(tmp_path / "store", tmp_path / "run", driver_setup)
    yield s
    # Leave no mounts behind, whatever the test did.
    for record in s.layers():
        while s.driver.mount_count(record.id) > 0:
            s.driver.put(record.id)


@pytest.fixture
def fmt(driver_setup: setups.DriverSetup) -> LayerFormat:
    """The layer format of the driver of this run."""
    return for_layer_format(setups.layer_format(driver_setup))


# ----- helpers -------------------------------------------------------------------------------------


def changes_of(store: Any, layer_id: str, parent: str | None = None) -> list[tuple[ChangeKind, str]]:
    return [(c.kind, c.path) for c in store.changes(layer_id, parent)]


def import_tar(store: Any, fmt: LayerFormat, layer_id: str, spec: Spec, parent: str | None = None) -> Any:
    return store.import_layer(layer_id, parent, io.BytesIO(fmt.tar(spec)))


def diff_bytes(store: Any, layer_id: str, parent: str | None = None) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out, parent)
    return out.getvalue()


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


def view(store: Any, layer_id: str, **kw: Any) -> dict[str, Any]:
    """The mounted tree of a layer, without the root directory's own metadata.

    Layer tarballs never carry the root (``docker diff`` never lists it), so its
    times and mode belong to the store, not to the layer's content.
    """
    kw.setdefault("skip", ["."])
    path = store.mount(layer_id)
    try:
        return snapshot(path, **kw)
    finally:
        store.unmount(layer_id)


def _one_file_tar(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


# ----- creation -------------------------------------------------------------------------


@every_driver
def test_empty_layer(store: Any) -> None:
    store.create("empty")
    assert store.exists("empty")
    assert [r.id for r in store.layers()] == ["empty"]
    path = store.mount("empty")
    try:
        assert os.path.isdir(path)
        assert os.listdir(path) == []
    finally:
        store.unmount("empty")
    assert store.changes("empty") == []
    assert tar_names(diff_bytes(store, "empty")) == []
    assert store.diff_size("empty") == 0


@every_driver
def test_create_duplicate_refused(store: Any, fmt: LayerFormat) -> None:
    store.create("a")
    with pytest.raises(AlreadyExists):
        store.create("a")
    with pytest.raises(AlreadyExists):
        import_tar(store, fmt, "a", {"f": F(b"x")})


@every_driver
def test_missing_parent_leaves_nothing(store: Any, fmt: LayerFormat) -> None:
    with pytest.raises(NotFound):
        store.create("child", "nope")
    assert not store.exists("child")
    with pytest.raises(NotFound):
        import_tar(store, fmt, "child2", {"f": F(b"x")}, parent="nope")
    assert not store.exists("child2")
    assert store.layers() == []
    assert store.cleanup() == []


@every_driver
@pytest.mark.parametrize("bad", ["", "-a", ".a", "a/b", "../x", "a" * 129, "a b", "é"])
def test_bad_ids_refused(store: Any, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.create(bad)
    with pytest.raises(InvalidArgument):
        store.create("ok", bad)
    assert store.layers() == []


@every_driver
def test_snapshot_of_layer_is_same_view(store: Any, fmt: LayerFormat) -> None:
    import_tar(store, fmt, "base", {"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n")})
    store.create("snap", "base")
    assert store.changes("snap") == []
    assert view(store, "snap") == view(store, "base")
    assert store.diff_size("snap") == 0
    assert tar_names(diff_bytes(store, "snap")) == []


@every_driver
def test_deep_chain(store: Any, fmt: LayerFormat) -> None:
    depth = 128  # Docker's overlay2 limit; the overlay driver's own tests go to 500
    parent = None
    for i in range(depth):
        import_tar(store, fmt, f"l{i}", {f"f{i}": F(f"layer {i}".encode())}, parent=parent)
        parent = f"l{i}"
    tree = view(store, f"l{depth - 1}")
    assert sorted(k for k in tree if k != ".") == sorted(f"f{i}" for i in range(depth))
    for i in (0, 7, depth - 1):
        assert changes_of(store, f"l{i}") == [(A, fmt.path(f"/f{i}"))]
    chain = store.driver.layer_chain(f"l{depth - 1}")
    assert len(chain) == depth - 1
    assert os.path.basename(chain[0]) == f"l{depth - 2}"


# ----- changes, diff, apply -----------------------------------------------------------


def _modify_container(root: str) -> None:
    with open(os.path.join(root, "etc/hosts"), "ab") as f:
        f.write(b"10.0.0.1 db\n")
    os.unlink(os.path.join(root, "etc/motd"))
    os.makedirs(os.path.join(root, "srv/www"))
    with open(os.path.join(root, "srv/www/index.html"), "wb") as f:
        f.write(b"<h1>hi</h1>\n")
    import shutil

    shutil.rmtree(os.path.join(root, "var/cache"))


BASE = {
    "etc": D(),
    "etc/hosts": F(b"127.0.0.1 localhost\n"),
    "etc/motd": F(b"hello\n"),
    "var": D(),
    "var/cache": D(),
    "var/cache/a": F(b"a" * 1000),
    "usr": D(),
    "usr/bin": D(),
    "usr/bin/tool": F(b"\x7fELF" + b"\0" * 100, mode=0o755),
}


def _container(store: Any, fmt: LayerFormat, files: dict[str, Any] | None = None,
               modify: Callable[[str], None] | None = None) -> None:
    """``base`` from *files* (:data:`BASE`), and a writable ``ctr`` on it that a process changed
    (*modify* given the mounted root; :func:`_modify_container`)."""
    if not IS_ROOT and not fmt.rootless_changes:
        pytest.skip(f"unprivileged {fmt.name} views are copies: what a process changes is not recorded")
    import_tar(store, fmt, "base", BASE if files is None else files)
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        (modify or _modify_container)(root)
    finally:
        store.unmount("ctr")


@every_driver
def test_changes_adds_modifies_deletes(store: Any, fmt: LayerFormat) -> None:
    _container(store, fmt)
    assert changes_of(store, "ctr") == [(kind, fmt.path(p)) for kind, p in [
        (C, "/etc"),
        (C, "/etc/hosts"),
        (X, "/etc/motd"),
        (A, "/srv"),
        (A, "/srv/www"),
        (A, "/srv/www/index.html"),
        (C, "/var"),
        (X, "/var/cache"),
    ]]
    names = sorted(tar_names(diff_bytes(store, "ctr")))
    assert [n.rstrip("/") for n in names] == [fmt.name_of(n) for n in [
        "etc", "etc/.wh.motd", "etc/hosts", "srv", "srv/www", "srv/www/index.html",
        "var", "var/.wh.cache",
    ]]
    expected_size = len(b"127.0.0.1 localhost\n10.0.0.1 db\n") + len(b"<h1>hi</h1>\n")
    assert store.diff_size("ctr") == expected_size


@every_driver
def test_diff_apply_round_trip(store: Any, fmt: LayerFormat) -> None:
    _container(store, fmt)
    data = diff_bytes(store, "ctr")
    size = store.diff_size("ctr")
    store.create("copy", "base")
    assert store.apply("copy", io.BytesIO(data)) == size
    # Windows keeps times to 100 ns: then compare everything else.
    exact = fmt.exact_times
    assert view(store, "copy", times=exact) == view(store, "ctr", times=exact)
    assert store.changes("copy") == store.changes("ctr")
    # And import does the same in one step.
    assert store.import_layer("copy2", "base", io.BytesIO(data)).size == size
    assert view(store, "copy2", times=exact) == view(store, "ctr", times=exact)


# ----- a file rewritten with the size, mode, owner and time it had below ------------------------

SAME_STAT_BASE = {"a": D(), "a/hello.txt": F(b"hello windows\n")}


def _assert_rewrite_carried(store: Any, fmt: LayerFormat, layer_id: str, new: bytes, data: bytes) -> None:
    """``changes`` and ``diffsize`` of *layer_id* name the rewritten file, and its tarball *data*
    holds the new bytes and makes the layer's view again on the base."""
    assert changes_of(store, layer_id) == [(C, fmt.path("/a")), (C, fmt.path("/a/hello.txt"))]
    assert store.diff_size(layer_id) == len(new)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.extractfile(fmt.name_of("a/hello.txt"))
        assert member is not None and member.read() == new
    store.import_layer("again", "base", io.BytesIO(data))
    exact = fmt.exact_times
    assert view(store, "again", times=exact) == view(store, layer_id, times=exact)


@every_driver
def test_a_child_that_rewrites_a_file_with_its_size_mode_and_time_changed_it(store: Any,
                                                                              fmt: LayerFormat) -> None:
    """A tarball that writes new bytes over a file below with the very size, mode, owner and
    modification time it had: the layer changed that file (containers-storage's overlay lists
    every file of the layer's own directory), so ``changes``, ``diffsize`` and a tarball built
    from the files all carry it."""
    import_tar(store, fmt, "base", SAME_STAT_BASE)
    import_tar(store, fmt, "child", {"a": D(), "a/hello.txt": F(b"hello changed\n")}, parent="base")
    out = io.BytesIO()
    store.diff("child", out, regenerate=True)
    _assert_rewrite_carried(store, fmt, "child", b"hello changed\n", out.getvalue())


@every_driver
def test_a_file_a_container_rewrote_keeping_its_time_is_in_its_diff(store: Any, fmt: LayerFormat) -> None:
    """New bytes of the same size written over a file below, its time put back (``cp -p`` of a
    file ``touch -r`` gave the old time): the container's diff, and so a commit, keeps them."""
    _container(store, fmt, SAME_STAT_BASE, lambda root: _content_kept_time(Path(root, "a/hello.txt")))
    _assert_rewrite_carried(store, fmt, "ctr", b"HELLO WINDOWS\n", diff_bytes(store, "ctr"))


# ----- an imported layer changed through the store's own mount -------------------------------------


def _content_kept_time(path: Path) -> None:
    """New content of the same size, the modification time put back: only the data tells."""
    st = path.stat()
    path.write_bytes(path.read_bytes().upper())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


#: What a user may do to an imported layer through ``mount`` (vfs hands out the tree itself).
CHANGES_THROUGH_A_MOUNT: dict[str, Callable[[Path], object]] = {
    "unchanged": lambda p: None,
    "file-added": lambda p: (p / "etc/new").write_bytes(b"new\n"),
    "mode-changed": lambda p: os.chmod(p / "etc/hello", 0o700),
    "file-deleted": lambda p: os.unlink(p / "etc/keep"),
    "owner-changed": lambda p: os.chown(p / "etc/hello", 4242, 4242),
    "content-changed-time-kept": lambda p: _content_kept_time(p / "etc/hello"),
}

#: And to files a child layer has from its parent (a vfs child is a copy of its parent's tree).
CHANGES_OF_INHERITED_FILES: dict[str, Callable[[Path], object]] = {
    "parent-file-deleted": lambda p: os.unlink(p / "etc/a"),
    "parent-file-mode-changed": lambda p: os.chmod(p / "etc/a", 0o600),
    "parent-file-owner-changed": lambda p: os.chown(p / "etc/a", 4242, 4242),
    "parent-dir-mode-changed": lambda p: os.chmod(p / "etc", 0o700),
    "whited-out-file-made-again": lambda p: (p / "gone").write_bytes(b"g"),
    "parent-file-rewritten-in-its-second": lambda p: _rewritten_in_its_second(p / "etc/a"),
    "parent-file-xattr-set": lambda p: os.setxattr(p / "etc/a", "user.note", b"set"),
    "parent-file-rewritten-time-kept": lambda p: _content_kept_time(p / "etc/a"),
    "parent-files-joined": lambda p: _join(p / "etc/a", p / "etc/twin"),
}

#: And to a layer's files that a tarball's headers and checksums alone do not tell apart.
CHANGES_OF_LINKS_AND_SPECIAL_FILES: dict[str, Callable[[Path], object]] = {
    "symlink-xattr-set": lambda p: os.setxattr(p / "etc/sl", "trusted.note", b"set", follow_symlinks=False),
    "fifo-xattr-set": lambda p: os.setxattr(p / "etc/fifo", "trusted.note", b"set"),
    "device-xattr-set": lambda p: os.setxattr(p / "etc/null", "trusted.note", b"set"),
    "files-joined": lambda p: _join(p / "etc/p", p / "etc/q"),
    "files-of-other-bytes-joined": lambda p: _join(p / "etc/p", p / "etc/r"),
}


def _join(path: Path, other: Path) -> None:
    """``rm other; ln path other``: two files become one (each name keeps its size and time
    where they were the same, and their folder its time)."""
    folder = other.parent.stat()
    other.unlink()
    os.link(path, other)
    os.utime(other.parent, ns=(folder.st_atime_ns, folder.st_mtime_ns))


def _rewritten_in_its_second(path: Path) -> None:
    """New bytes of the same size within the whole second a tar header gave: only the data tells."""
    whole = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes().upper())
    os.utime(path, ns=(whole + 300_000_000, whole + 300_000_000))


def _looked_at(store: Any, layer_id: str) -> dict[str, Any]:
    """The layer's view, mounted only to be read (a read marks nothing)."""
    path = store.mount(layer_id, readonly=True)
    try:
        return snapshot(path, skip=["."])
    finally:
        store.unmount(layer_id)


def _change_through_mount(store: Any, layer_id: str, change: Callable[[Path], object]) -> None:
    """Do *change* in the layer's mounted view; a read-only view refuses it, which is fine."""
    path = store.mount(layer_id)
    try:
        change(Path(path))
    except OSError as e:
        if e.errno != errno.EROFS:
            raise
    finally:
        store.unmount(layer_id)


def _assert_diff_is_the_layer_now(store: Any, layer_id: str, parent: str | None, imported: bytes,
                                  before: dict[str, Any]) -> None:
    """``diff`` gives the imported bytes while the layer's view is as imported, and never once it
    is not: then a tarball that makes the layer as it is now."""
    now = _looked_at(store, layer_id)
    out = diff_bytes(store, layer_id)
    if now == before:  # nothing changed: a read-only view, a throwaway copy, or nothing done
        assert out == imported
        assert diff_bytes(store, layer_id) == imported
        assert store.layer(layer_id).mounted_writable is None  # found unchanged: forgotten
        store.tarsplit(layer_id, io.BytesIO())
        return
    assert out != imported, "diff gave back the imported tarball of a layer that changed since"
    assert store.layer(layer_id).mounted_writable is not None
    with pytest.raises(IntegrityError, match="changed since it was imported"):
        store.tarsplit(layer_id, io.BytesIO())  # its metadata would rebuild other files
    store.import_layer("again", parent, io.BytesIO(out))
    assert _looked_at(store, "again") == now
    with pytest.raises(IntegrityError, match="changed since it was imported"):
        store.diff(layer_id, io.BytesIO(), exact=True)
    [(_, why)] = store.check([layer_id])  # what diff finds changed, check finds changed too
    assert why is not None and not why.startswith("skipped"), why


@every_driver
@pytest.mark.parametrize("how", sorted(CHANGES_THROUGH_A_MOUNT))
def test_diff_of_a_layer_changed_through_its_mount_is_never_stale(store: Any, fmt: LayerFormat,
                                                                    how: str) -> None:
    if how == "owner-changed" and not IS_ROOT:
        pytest.skip("needs root to chown")
    imported = fmt.tar({"etc": D(), "etc/hello": F(b"hello\n"), "etc/keep": F(b"keep\n")})
    store.import_layer("base", None, io.BytesIO(imported))
    before = _looked_at(store, "base")
    _change_through_mount(store, "base", CHANGES_THROUGH_A_MOUNT[how])
    _assert_diff_is_the_layer_now(store, "base", None, imported, before)


@every_driver
@pytest.mark.parametrize("how", sorted(CHANGES_OF_INHERITED_FILES))
def test_diff_of_a_child_layer_changed_through_its_mount_is_never_stale(store: Any, fmt: LayerFormat,
                                                                          how: str) -> None:
    if how == "parent-file-owner-changed" and not IS_ROOT:
        pytest.skip("needs root to chown")
    import_tar(store, fmt, "base", {"etc": D(), "etc/a": F(b"a"), "etc/b": F(b"b"), "etc/twin": F(b"a"),
                                    "gone": F(b"g")})
    imported = fmt.tar({"etc/c": F(b"c"), "gone": W()})
    store.import_layer("child", "base", io.BytesIO(imported))
    before = _looked_at(store, "child")
    _change_through_mount(store, "child", CHANGES_OF_INHERITED_FILES[how])
    _assert_diff_is_the_layer_now(store, "child", "base", imported, before)


@oci_drivers
@pytest.mark.parametrize("how", sorted(CHANGES_OF_LINKS_AND_SPECIAL_FILES))
def test_diff_of_a_layer_whose_links_or_special_files_changed_is_never_stale(store: Any, how: str) -> None:
    """An xattr set on a symlink, a fifo or a device node, or two files made one, is a change
    of the layer as much as a file's: ``diff`` no longer gives the imported bytes, and ``check``
    finds the layer changed."""
    if not IS_ROOT:
        pytest.skip("needs root for trusted xattrs and device nodes")
    imported = make_tar({"etc": D(), "etc/p": F(b"same\n"), "etc/q": F(b"same\n"), "etc/r": F(b"othr\n"),
                         "etc/sl": L("p"), "etc/fifo": Dev("p"), "etc/null": Dev("c", 1, 3)})
    store.import_layer("base", None, io.BytesIO(imported))
    before = _looked_at(store, "base")
    _change_through_mount(store, "base", CHANGES_OF_LINKS_AND_SPECIAL_FILES[how])
    _assert_diff_is_the_layer_now(store, "base", None, imported, before)


@oci_drivers
def test_content_changed_behind_the_store_still_fails_diff(store: Any) -> None:
    """A layer no mount of the store could have changed re-exports exactly or not at all."""
    imported = make_tar({"etc": D(), "etc/hello": F(b"hello\n")})
    store.import_layer("base", None, io.BytesIO(imported))
    root = store.driver.own_files("base") or store.driver.apply_target("base").path
    _content_kept_time(Path(root, "etc/hello"))
    assert store.layer("base").mounted_writable is None
    with pytest.raises(IntegrityError, match="checksum"):
        diff_bytes(store, "base")


@oci_drivers
def test_modes_that_lock_the_owner_out_and_device_nodes_still_export_and_check(store: Any) -> None:
    """``/etc/shadow`` is 0000 in many images, and base images hold device nodes: with or
    without privileges, ``diff`` gives back the imported bytes and ``check`` finds the layer
    sound (an unprivileged store cannot make device nodes; the import skips them)."""
    imported = make_tar({"etc": D(), "etc/shadow": F(b"root:*:19000::::::\n", mode=0o000),
                         "etc/empty": F(b"", mode=0o000), "dev": D(), "dev/null": Dev("c", 1, 3),
                         "dev/sda": Dev("b", 8, 0), "dev/fifo": Dev("p")})
    store.import_layer("base", None, io.BytesIO(imported))
    assert diff_bytes(store, "base") == imported
    assert store.check(["base"]) == [("base", None)]


@oci_drivers
def test_files_that_lock_the_owner_out_are_copied_compared_and_exported(store: Any) -> None:
    """``/etc/shadow`` 0000 (Fedora, RHEL) and ``sudo`` 4111, with or without privileges: a
    container is made on the layer (vfs copies its tree), a same-size rewrite within the
    whole second of the file's time is seen (the bytes are compared), and the container's
    tarball holds the new bytes with the mode kept."""
    store.import_layer("base", None, io.BytesIO(make_tar({
        "etc": D(), "etc/shadow": F(b"root:!!:19000::\n", mode=0o000), "usr": D(), "usr/bin": D(mode=0o555),
        "usr/bin/sudo": F(b"\x7fELF" * 64, mode=0o4111)})))
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        shadow = os.path.join(root, "etc/shadow")
        st = os.stat(shadow)
        try:
            os.chmod(shadow, 0o600)
        except PermissionError:
            # fuse-overlayfs run by the file's owner without root copies a file up by
            # reading it, and this one it may not read: the write cannot be made here.
            assert not IS_ROOT
            pytest.skip("fuse-overlayfs without root cannot copy up a file its owner may not read")
        with open(shadow, "r+b") as f:
            f.write(b"root:!!:20000::\n")
        os.chmod(shadow, 0o000)
        os.utime(shadow, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the same second as the layer's
    finally:
        store.unmount("ctr")
    assert ("/etc/shadow", "C") in [(c.path, c.kind.value) for c in store.changes("ctr")]
    with tarfile.open(fileobj=io.BytesIO(diff_bytes(store, "ctr"))) as tf:
        member = tf.getmember("etc/shadow")
        assert (member.mode, tf.extractfile(member).read()) == (0, b"root:!!:20000::\n")  # type: ignore[union-attr]
    assert os.stat(os.path.join(store.mount("ctr"), "usr/bin/sudo")).st_mode & 0o7777 == 0o4111
    store.unmount("ctr")


#: A default ACL (``setfacl -d -m u:1:rwx``) as the kernel stores it: version 2, then
#: (tag, permissions, id) for the owner, user 1, the group, the mask and others.
_DEFAULT_ACL = (2).to_bytes(4, "little") + b"".join(
    tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    for tag, perm, ident in ((1, 7, 2**32 - 1), (2, 7, 1), (4, 5, 2**32 - 1), (0x10, 7, 2**32 - 1),
                             (0x20, 5, 2**32 - 1)))


@oci_drivers
def test_a_default_acl_is_not_inherited_by_the_files_of_its_own_layer(store: Any) -> None:
    """The files a tarball puts in a directory with a default ACL hold only the ACLs their
    own entries give (as GNU tar extracts them): ``check`` finds the layer sound, and ``diff``
    after a mount gives back the imported bytes."""
    imported = make_tar({"d": D(xattrs={"system.posix_acl_default": _DEFAULT_ACL}), "d/f": F(b"f"),
                         "d/s": D()})
    store.import_layer("base", None, io.BytesIO(imported))
    root = store.mount("base")
    try:
        assert os.getxattr(os.path.join(root, "d"), "system.posix_acl_default") == _DEFAULT_ACL
        for name in ("d/f", "d/s"):
            assert not [k for k in os.listxattr(os.path.join(root, name)) if k.startswith("system.posix_acl")]
    finally:
        store.unmount("base")
    assert store.check(["base"]) == [("base", None)]
    assert diff_bytes(store, "base") == imported


@oci_drivers
def test_a_hard_link_to_a_file_of_the_parent_layer_checks_sound(store: Any) -> None:
    """overlay copies the target (and its folders) up to link it: ``check`` takes them as the
    layer's, as ``changes`` and ``diff`` do.  The target is listed as changed, its inode
    having a new name, so a regenerated tarball carries the link (containers-storage lists
    it so too)."""
    store.import_layer("base", None, io.BytesIO(make_tar({"keep": D(), "keep/k": F(b"kept\n")})))
    imported = make_tar({"hlk": H("keep/k")})
    store.import_layer("child", "base", io.BytesIO(imported))
    assert store.check(["child"]) == [("child", None)]
    assert diff_bytes(store, "child") == imported
    root = store.mount("child")
    try:
        # fuse-overlayfs shows the two names of a file linked behind its back as two files
        linked = os.lstat(os.path.join(root, "hlk")).st_ino == os.lstat(os.path.join(root, "keep/k")).st_ino
    finally:
        store.unmount("child")
    # vfs mounts an image layer writable: a mount with no write keeps it sound all the same
    assert store.check(["child"]) == [("child", None)]
    assert diff_bytes(store, "child") == imported
    expected = [(A, "/hlk"), (C, "/keep"), (C, "/keep/k")] if linked else [(A, "/hlk")]
    assert changes_of(store, "child") == expected, linked
    out = io.BytesIO()
    store.diff("child", out, regenerate=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        links = {m.name: m.linkname for m in tf.getmembers() if m.islnk()}
    assert links == ({"keep/k": "hlk"} if linked else {})  # tar order: the first name carries the data


@oci_drivers
def test_a_hard_link_made_in_a_container_to_a_file_below_goes_as_a_link(store: Any) -> None:
    """``ln a b`` in a container: ``b`` is added and ``a``, unchanged but for its new name, is
    listed as changed, so the layer's tarball carries ``b`` as a link to ``a`` and applying it
    gives one file with two names (what containers-storage lists and exports)."""
    store.import_layer("base", None, io.BytesIO(make_tar({"a": F(b"hello\n")})))
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        os.link(os.path.join(root, "a"), os.path.join(root, "b"))
    finally:
        store.unmount("ctr")
    assert changes_of(store, "ctr") == [(C, "/a"), (A, "/b")]
    tarball = diff_bytes(store, "ctr")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tf:
        assert [(m.name, m.linkname if m.islnk() else None) for m in tf.getmembers()] == [
            ("a", None), ("b", "a")]
    store.import_layer("copy", "base", io.BytesIO(tarball))
    root = store.mount("copy")
    try:
        a, b = os.lstat(os.path.join(root, "a")), os.lstat(os.path.join(root, "b"))
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    finally:
        store.unmount("copy")


@oci_drivers
def test_two_files_joined_into_one_in_a_container_go_as_a_link(store: Any) -> None:
    """``rm q; ln p q`` in a container, ``p`` and ``q`` two files of the same bytes, size and
    time below: each name looks as it did, but they are one file now.  Both are listed as
    changed and the tarball carries ``q`` as a link to ``p`` (as containers-storage's overlay
    lists and writes them), so that applying it joins them too."""
    store.import_layer("base", None, io.BytesIO(make_tar({"p": F(b"same\n"), "q": F(b"same\n")})))
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        _join(Path(root, "p"), Path(root, "q"))
    finally:
        store.unmount("ctr")
    assert changes_of(store, "ctr") == [(C, "/p"), (C, "/q")]
    tarball = diff_bytes(store, "ctr")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tf:
        assert [(m.name, m.linkname if m.islnk() else None) for m in tf.getmembers()] == [
            ("p", None), ("q", "p")]
    store.import_layer("copy", "base", io.BytesIO(tarball))
    root = store.mount("copy")
    try:
        p, q = os.lstat(os.path.join(root, "p")), os.lstat(os.path.join(root, "q"))
        assert p.st_ino == q.st_ino
    finally:
        store.unmount("copy")


@oci_drivers
def test_what_the_user_writes_in_a_container_is_roots_in_its_tarball(store: Any) -> None:
    """With or without privileges: files a container's user writes are root's in the layer's
    tarball (without root, the user's own ids are root's, as in a rootless container), and a
    regenerated tarball of the image keeps its files root's."""
    store.import_layer("base", None, io.BytesIO(make_tar({"etc": D(), "etc/passwd": F(b"root:x:0:0\n")})))
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")
    try:
        with open(os.path.join(root, "etc/passwd"), "ab") as f:
            f.write(b"u:x:1000:1000\n")
        with open(os.path.join(root, "etc/new"), "wb") as f:
            f.write(b"new\n")
    finally:
        store.unmount("ctr")
    for layer_id, regenerate in (("ctr", False), ("base", True)):
        out = io.BytesIO()
        store.diff(layer_id, out, regenerate=regenerate)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
            owners = {m.name: (m.uid, m.gid) for m in tf.getmembers()}
        assert owners and set(owners.values()) == {(0, 0)}, (layer_id, owners)


@oci_drivers
def test_a_hard_link_to_a_device_node_goes_as_the_node_does(store: Any) -> None:
    """Made with privileges, skipped with the node without them: the import succeeds either
    way, and check and diff agree with it."""
    imported = make_tar({"dev": D(), "dev/null": Dev("c", 1, 3, mode=0o666), "dev/null2": H("dev/null")})
    store.import_layer("d", None, io.BytesIO(imported))
    assert store.check(["d"]) == [("d", None)]
    assert diff_bytes(store, "d") == imported


@oci_drivers
def test_a_folder_closed_to_its_owner_is_never_called_damaged(store: Any) -> None:
    """A folder of mode 0000: root reads it; a store without root cannot, and check says it
    skipped the layer for that (the other layers are checked), never that it is damaged."""
    imported = make_tar({"zero": D(mode=0o000), "zero/inside": F(b"x"), "open": F(b"o")})
    store.import_layer("z", None, io.BytesIO(imported))
    store.import_layer("other", None, io.BytesIO(make_tar({"f": F(b"f")})))
    results = dict(store.check([]))
    assert results["other"] is None
    if IS_ROOT:
        assert results["z"] is None and diff_bytes(store, "z") == imported
    else:
        assert (results["z"] or "").startswith("skipped: its files cannot be read by this user")
        with pytest.raises(Unsupported, match=r"^layer z: "):
            diff_bytes(store, "z")


@oci_drivers
def test_an_apply_after_import_forgets_the_imported_tarball(store: Any) -> None:
    store.import_layer("base", None, io.BytesIO(make_tar({"etc/hello": F(b"hello\n")})))
    store.apply("base", io.BytesIO(make_tar({"etc/more": F(b"more\n")})))
    record = store.layer("base")
    assert record.diff_digest is None and record.mounted_writable is None
    assert sorted(tar_names(diff_bytes(store, "base"))) == ["etc", "etc/hello", "etc/more"]


#: The fields import records, which an apply to a layer made by ``create`` records alike.
IMPORT_FIELDS = ("size", "diff_digest", "compressed_digest", "compressed_size", "compression",
                 "uncompressed_size", "chain_id", "unreproducible")


@every_driver
@pytest.mark.parametrize("parent", [None, "base"])
@pytest.mark.parametrize("writable", [False, True], ids=["image", "rw"])
@pytest.mark.parametrize("packing", ["plain", "gzip"])
def test_an_apply_to_a_created_layer_is_recorded_as_an_import(store: Any, fmt: LayerFormat, tmp_path: Path,
                                                              parent: str | None, writable: bool,
                                                              packing: str) -> None:
    """As containers-storage's ApplyDiff to a new layer: ``diff`` gives back the applied bytes."""
    if parent is not None:
        import_tar(store, fmt, parent, {"etc": D(), "etc/a": F(b"a\n"), "gone": F(b"g")})
    data = fmt.tar({"etc": D(), "etc/b": F(b"b" * 3000), "gone": W(), "f3": F(b"x\n")})
    packed = gzip.compress(data, mtime=0) if packing == "gzip" else data
    store.create("l", parent, writable=writable)
    assert store.apply("l", io.BytesIO(packed)) == 3002
    record = store.layer("l")
    twin = store.import_layer("twin", parent, io.BytesIO(packed))
    assert {f: getattr(record, f) for f in IMPORT_FIELDS} == {f: getattr(twin, f) for f in IMPORT_FIELDS}
    sha = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (record.diff_digest, record.uncompressed_size) == (sha, len(data))
    assert (record.compressed_digest, record.compressed_size) == \
        ("sha256:" + hashlib.sha256(packed).hexdigest(), len(packed))
    assert record.fresh is None and record.mounted_writable is None and record.damaged is None
    assert "diff_digest" in record.display() and "fresh" not in record.display()
    assert diff_bytes(store, "l") == data
    assert store.check(["l"]) == [("l", None)]
    meta = io.BytesIO()
    store.tarsplit("l", meta)
    assert gzip.decompress(meta.getvalue())  # gzip-compressed lines
    if shutil.which("tar-split") is not None:  # the real tool rebuilds the layer from them
        (tmp_path / "l.tsm").write_bytes(meta.getvalue())
        from graphdriver.store import content

        asm = subprocess.run(["tar-split", "asm", "--input", str(tmp_path / "l.tsm"), "--path",
                              content.files_root(store.driver, "l")], capture_output=True, check=True)
        assert asm.stdout == data
    if IS_ROOT or fmt.rootless_changes or not writable:  # else no view of a writable layer here
        assert _looked_at(store, "l") == _looked_at(store, "twin")


def _mounted_writable(store: Any, layer_id: str) -> None:
    store.mount(layer_id)  # nothing written: it still counts
    store.unmount(layer_id)


#: What gives a layer made by ``create`` files of its own before the apply looked at.
HELD_BEFORE: dict[str, Callable[[Any, LayerFormat], object]] = {
    "applied-to": lambda store, fmt: store.apply("l", io.BytesIO(fmt.tar({"first": F(b"1")}))),
    "mounted-writable": lambda store, fmt: _mounted_writable(store, "l"),
}


@every_driver
@pytest.mark.parametrize("how", sorted(HELD_BEFORE))
def test_an_apply_to_a_layer_that_held_files_before_records_no_tarball(store: Any, fmt: LayerFormat,
                                                                       how: str) -> None:
    """Its tarball would not describe the layer: today's apply, which forgets any digest."""
    if how == "mounted-writable" and fmt.name == "windows" and not IS_ROOT:
        pytest.skip("writable Windows layers mount with root only")
    store.create("l", None, writable=True)
    HELD_BEFORE[how](store, fmt)
    store.apply("l", io.BytesIO(fmt.tar({"second": F(b"2")})))
    record = store.layer("l")
    assert all(getattr(record, f) is None for f in IMPORT_FIELDS if f != "size"), record
    with pytest.raises(NotFound):
        store.tarsplit("l", io.BytesIO())
    [(_, why)] = store.check(["l"])
    assert why is not None and why.startswith("skipped"), why


@every_driver
def test_a_read_only_look_keeps_a_created_layer_fresh(store: Any, fmt: LayerFormat) -> None:
    if not IS_ROOT and not fmt.rootless_changes:
        pytest.skip(f"unprivileged {fmt.name} stores give no view of a writable layer")
    store.create("l", None, writable=True)
    _looked_at(store, "l")
    data = fmt.tar({"f": F(b"f")})
    store.apply("l", io.BytesIO(data))
    assert diff_bytes(store, "l") == data and store.check(["l"]) == [("l", None)]


@every_driver
def test_whiteouts(store: Any, fmt: LayerFormat) -> None:
    import_tar(store, fmt, "base", {"a": D(), "a/keep": F(b"k"), "a/gone": F(b"g"), "d": D(), "d/x": F(b"x")})
    import_tar(store, fmt, "top", {"a/gone": W(), "d": W(), "a/nothing-there": W(), "new": F(b"n")},
               parent="base")
    tree = view(store, "top")
    assert "a/keep" in tree and "a/gone" not in tree and "d" not in tree and "new" in tree
    assert not any(".wh." in p for p in tree)
    changes = changes_of(store, "top")
    for expected in [(X, "/a/gone"), (X, "/d"), (A, "/new")]:
        assert (expected[0], fmt.path(expected[1])) in changes
    assert (X, fmt.path("/a/nothing-there")) not in changes
    # The diff re-expresses the deletions; applied on base it gives the same view.
    data = diff_bytes(store, "top")
    assert any(n.endswith(".wh.gone") for n in tar_names(data))
    store.create("again", "base")
    store.apply("again", io.BytesIO(data))
    assert view(store, "again", times=fmt.exact_times) == view(store, "top", times=fmt.exact_times)


@oci_drivers
@pytest.mark.parametrize("with_entry", [True, False], ids=["directory-entry", "implied-directory"])
def test_a_directory_deleted_and_made_again_by_one_archive_holds_only_the_new(store: Any,
                                                                               with_entry: bool) -> None:
    """``.wh.d`` then ``d/`` (or only ``d/x``) in one layer: the lower ``d`` is gone and the
    new one holds only what the layer puts there, on every driver (overlay marks it opaque)."""
    store.import_layer("base", None, io.BytesIO(make_tar({"d": D(), "d/in": F(b"secret")})))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo(".wh.d"))
        if with_entry:
            info = tarfile.TarInfo("d")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        info = tarfile.TarInfo("d/x")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    store.import_layer("top", "base", io.BytesIO(data.getvalue()))
    tree = view(store, "top")
    assert "d/x" in tree and "d/in" not in tree
    assert [c for c in changes_of(store, "top") if c[1] != "/d"] == [(X, "/d/in"), (A, "/d/x")]
    store.create("again", "base")
    store.apply("again", io.BytesIO(diff_bytes(store, "top")))
    assert "d/in" not in view(store, "again")


def _raw_tar(*entries: tarfile.TarInfo) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info in entries:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return data.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 1 if kind == tarfile.REGTYPE else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@oci_drivers
def test_what_a_deleted_directory_held_below_stays_hidden(store: Any) -> None:
    """After ``.wh.d`` the layer's new ``d`` is new: a lower symlink ``d`` does not stop it,
    folders implied below it are new ones (not the hidden lower ones' owner and mode), and
    an opaque marker in the deleted ``d`` makes it again, new and empty, as a file there
    would; as in a full copy."""
    from graphdriver.layerio.extract import IMPLIED_DIR_MODE

    store.import_layer("base", None, io.BytesIO(_raw_tar(
        _info("d", tarfile.DIRTYPE, mode=0o700, uid=1234, gid=1234),
        _info("d/sub", tarfile.DIRTYPE, mode=0o711, uid=1234, gid=1234), _info("d/sub/in"),
        _info("s", tarfile.SYMTYPE, linkname="/etc"))))
    store.import_layer("implied", "base", io.BytesIO(_raw_tar(_info(".wh.d"), _info("d/sub/x"))))
    tree = view(store, "implied")
    assert "d/sub/in" not in tree and "d/sub/x" in tree
    for folder in ("d", "d/sub"):
        # New folders: the default mode, and root's owner as the archive's own files have it
        # (without privilege, the user's).
        assert (tree[folder]["mode"], tree[folder]["uid"]) == (oct(IMPLIED_DIR_MODE), tree["d/sub/x"]["uid"])
    store.import_layer("symlink", "base", io.BytesIO(_raw_tar(_info(".wh.s"), _info("s/x"))))
    assert "s/x" in view(store, "symlink")
    store.import_layer("marker", "base", io.BytesIO(_raw_tar(_info(".wh.d"), _info("d/.wh..wh..opq"))))
    owner = tree["d/sub/x"]["uid"]
    tree = view(store, "marker")
    assert [p for p in tree if p == "d" or p.startswith("d/")] == ["d"]
    assert (tree["d"]["mode"], tree["d"]["uid"]) == (oct(IMPLIED_DIR_MODE), owner)


@every_driver
def test_same_path_twice_last_wins(store: Any, fmt: LayerFormat) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for content in (b"first", b"second!"):
            info = tarfile.TarInfo(fmt.name_of("f"))
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    record = store.import_layer("l", None, io.BytesIO(data.getvalue()))
    path = store.mount("l")
    try:
        assert Path(path, "f").read_bytes() == b"second!"
    finally:
        store.unmount("l")
    assert record.unreproducible == f"{fmt.name_of('f')!r} appears twice"


def _twice(fmt: LayerFormat, *entries: tuple[str, bytes | str, int]) -> bytes:
    """A tarball of (name, content or hard link target, mtime) entries, names in *fmt*."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, what, mtime in entries:
            info = tarfile.TarInfo(fmt.name_of(name))
            info.mtime, info.mode = mtime, 0o644
            if isinstance(what, str):
                info.type, info.linkname = tarfile.LNKTYPE, fmt.name_of(what)
                tf.addfile(info)
            else:
                info.size = len(what)
                tf.addfile(info, io.BytesIO(what))
    return data.getvalue()


@every_driver
def test_same_file_twice_with_the_same_bytes_comes_back_exactly(store: Any, fmt: LayerFormat) -> None:
    # The layer holds the last entry's bytes, which were the first's too: diff reads
    # them back for both entries (headers differ: their times), and check agrees.
    data = _twice(fmt, ("f", b"same bytes", 1_000_000), ("g", b"other", 1), ("f", b"same bytes", 2_000_000),
                  ("f", b"same bytes", 3_000_000))
    record = store.import_layer("l", None, io.BytesIO(data))
    assert record.unreproducible is None
    assert diff_bytes(store, "l") == data
    assert store.check(["l"]) == [("l", None)]
    assert view(store, "l")["f"]["mtime_ns"] == 3_000_000 * 10**9


@every_driver
@pytest.mark.parametrize("entries", [
    # Other bytes of the same size: the file holds the last, so the first cannot come back.
    [("f", b"first", 1), ("f", b"First", 1)],
    # A hard link to the first keeps its inode; the second entry makes a new file.
    [("f", b"same", 1), ("h", "f", 1), ("f", b"same", 1)],
    # Three times, the middle one other.
    [("f", b"same", 1), ("f", b"else", 1), ("f", b"same", 1)],
], ids=["other-bytes", "hard-link-between", "middle-differs"])
def test_same_file_twice_otherwise_stays_unreproducible(store: Any, fmt: LayerFormat,
                                                        entries: list[tuple[str, bytes | str, int]]) -> None:
    record = store.import_layer("l", None, io.BytesIO(_twice(fmt, *entries)))
    assert record.unreproducible == f"{fmt.name_of('f')!r} appears twice"
    assert store.check(["l"])[0][1] is not None  # skipped, saying why


@every_driver
def test_hardlinks_counted_once(store: Any, fmt: LayerFormat) -> None:
    if not IS_ROOT and not fmt.rootless_hardlinks:
        pytest.skip(f"unprivileged {fmt.name} views are copies: hard links are not kept")
    import_tar(store, fmt, "l", {"d": D(), "d/a": F(b"x" * 100), "d/b": H("d/a")})
    tree = view(store, "l")
    assert tree["d/a"]["link_group"] == tree["d/b"]["link_group"]
    assert store.diff_size("l") == 100
    data = diff_bytes(store, "l")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        kinds = {m.name.rstrip("/"): m.type for m in tf.getmembers()}
    assert sorted(kinds.values()).count(tarfile.LNKTYPE) == 1, tar_names(data)


# ----- removal rules -------------------------------------------------------------------------


@every_driver
def test_remove_rules(store: Any, fmt: LayerFormat) -> None:
    import_tar(store, fmt, "base", {"f": F(b"x")})
    store.create("child", "base")
    with pytest.raises(Precondition):
        store.remove("base")
    store.mount("child")
    with pytest.raises(Precondition):
        store.remove("child")
    store.unmount("child")
    store.remove("child")
    store.remove("base")
    assert store.layers() == []
    with pytest.raises(NotFound):
        store.remove("base")
    assert store.cleanup() == []
    home = store.driver.home
    assert [n for n in os.listdir(home) if not n.startswith(".")] == []


@every_driver
def test_mount_is_counted(store: Any) -> None:
    store.create("l")
    p1 = store.mount("l")
    p2 = store.mount("l")
    assert p1 == p2
    store.unmount("l")
    with pytest.raises(Precondition):
        store.remove("l")
    store.unmount("l")
    with pytest.raises(Precondition):
        store.unmount("l")
    store.remove("l")


_DIE_HOLDING = """
import json, os, signal, sys
from graphdriver.testing import setups
root, run_root, name, options, layer = sys.argv[1:]
setups.register_chosen()  # a third party's driver, as the suite's own process knows it
store = setups.open_store(root, run_root, setups.DriverSetup(name, **json.loads(options)))
store.driver.mounted(layer).__enter__()  # what changes and diff do while they read
print("holding", flush=True)
sys.stdin.readline()  # killed, or told to die, while it holds
os.kill(os.getpid(), signal.SIGKILL)
"""


def _holding(store: Any, layer_id: str) -> subprocess.Popen[bytes]:
    """A process that mounts *layer_id* for itself, as a reading command does, and dies (killed)
    when a line reaches its standard input."""
    options = dict(store.driver.config.options)
    proc = subprocess.Popen([sys.executable, "-c", _DIE_HOLDING, store.root, store.run_root,
                             store.driver_name, json.dumps(options), layer_id],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"holding\n":
        proc.kill()
        raise AssertionError(f"the holding process failed: {proc.communicate()[1].decode()}")
    return proc


def _die_holding(store: Any, layer_id: str) -> None:
    proc = _holding(store, layer_id)
    proc.communicate(b"die\n")
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@every_driver
def test_a_mount_a_killed_command_held_for_itself_is_given_back(store: Any) -> None:
    """A command killed while it reads a layer (changes, diff) cannot give its count back:
    the next look at the count, or cleanup, takes it away and undoes its mount, so the layer
    can be removed; a live reader's count is kept."""
    store.create("base")
    store.create("ctr", "base")
    _die_holding(store, "ctr")
    _die_holding(store, "ctr")
    assert store.driver.mount_state("ctr") == (0, None)
    store.remove("ctr")
    _die_holding(store, "base")
    done = store.cleanup()
    assert [line for line in done if "died" in line] == [
        "dropped 1 mount count(s) of base that commands which died held"], done
    with store.driver.mounted("base"):
        store.cleanup()
        assert store.driver.mount_count("base") == 1  # this process's, alive
        with pytest.raises(Precondition):
            store.remove("base")
    assert store.driver.mount_state("base") == (0, None)
    assert not [line for line in store.cleanup() if "mount" in line]
    # A reader whose count was dropped (unmount --force) and who dies later takes nothing
    # from the count of a mount made since.
    reader = _holding(store, "base")
    assert store.driver.put_all("base") == 1
    path = store.mount("base")
    reader.communicate(b"die\n")
    assert store.driver.mount_state("base") == (1, path)
    assert not [line for line in store.cleanup() if "died" in line]
    store.unmount("base")
    assert store.driver.mount_state("base") == (0, None)
    assert not os.listdir(os.path.join(store.driver.run_root, "mounts")) or all(
        not name.endswith(".holds") for name in os.listdir(os.path.join(store.driver.run_root, "mounts")))
    store.remove("base")


# ----- hostile and malformed input ------------------------------------------------------------


@every_driver
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape"])
def test_breakout_names_refused(store: Any, fmt: LayerFormat, tmp_path: Path, name: str) -> None:
    raw = _one_file_tar(name if name.startswith("/") else fmt.name_of(name), b"bad")
    before = set(os.listdir(tmp_path))
    try:
        store.import_layer("evil", None, io.BytesIO(raw))
    except ArchiveError:
        assert not store.exists("evil")
    else:  # an absolute name is confined, like GNU tar and Docker do
        path = store.mount("evil")
        store.unmount("evil")
        assert os.path.exists(os.path.join(path, "escape"))
    assert set(os.listdir(tmp_path)) == before
    assert not (tmp_path.parent / "escape").exists()


@every_driver
def test_symlink_breakout_refused(store: Any, fmt: LayerFormat, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        link = tarfile.TarInfo(fmt.name_of("link"))
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tf.addfile(link)
        info = tarfile.TarInfo(fmt.name_of("link/owned"))
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    try:
        store.import_layer("evil", None, io.BytesIO(raw.getvalue()))
    except ArchiveError:
        assert not store.exists("evil")
    assert list(victim.iterdir()) == []


_THROUGH_A_LOWER_SYMLINK: dict[str, Spec] = {
    "file": {"lnk/new": F(b"n")},
    "directory": {"lnk/sub": D()},
    "whiteout": {"lnk/x": W()},
    "hardlink": {"h": H("lnk/x")},
}


@every_driver
@pytest.mark.parametrize("child", sorted(_THROUGH_A_LOWER_SYMLINK))
def test_a_symlink_of_a_lower_layer_is_never_followed(store: Any, fmt: LayerFormat, child: str) -> None:
    """A child's ``lnk/new`` over a parent's ``lnk -> /tmp`` is refused on every driver.

    Followed (a full copy), it would land in ``/tmp``; made a directory (an
    overlay upper), it would hide the symlink: the drivers would disagree.
    """
    import_tar(store, fmt, "p", {"tmp": D(), "tmp/x": F(b"x"), "lnk": L("/tmp")})
    before = view(store, "p")
    with pytest.raises(ArchiveError) as failure:
        import_tar(store, fmt, "c", _THROUGH_A_LOWER_SYMLINK[child], parent="p")
    assert failure.value.exit_code == 1
    assert "symlink" in failure.value.why
    assert not store.exists("c")
    assert view(store, "p") == before
    # The symlink itself may be replaced by an entry of its own name, as any file.
    import_tar(store, fmt, "d", {"lnk": D(), "lnk/new": F(b"n")}, parent="p")
    assert changes_of(store, "d") == [(C, fmt.path("/lnk")), (A, fmt.path("/lnk/new"))]


def _cut_in_data(tar: bytes, data: bytes) -> bytes:
    """*tar* cut in the middle of the file data *data*."""
    return tar[: tar.index(data) + len(data) // 2]


_MALFORMED: dict[str, Callable[[LayerFormat], bytes]] = {
    "garbage": lambda fmt: b"garbage" * 100,
    "truncated-header": lambda fmt: fmt.tar({"f": F(b"x")})[:300],
    "truncated-data": lambda fmt: _cut_in_data(fmt.tar({"f": F(b"x" * 5000)}), b"x" * 5000),
}


@every_driver
@pytest.mark.parametrize("kind", list(_MALFORMED))
def test_malformed_input_leaves_nothing(store: Any, fmt: LayerFormat, kind: str) -> None:
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(_MALFORMED[kind](fmt)))
    assert not store.exists("bad")
    assert store.layers() == []
    assert [n for n in os.listdir(store.driver.home) if not n.startswith(".")] == []


@every_driver
def test_a_damaged_layer_is_no_parent(store: Any, fmt: LayerFormat) -> None:
    """An apply that failed half way leaves its layer damaged: no layer is made on it
    (create, create --rw, import), and nothing is left of the refused ones."""
    store.create("p")
    with pytest.raises(ArchiveError):
        store.apply("p", io.BytesIO(_MALFORMED["truncated-data"](fmt)))
    assert store.layer("p").damaged
    makes: list[Callable[[], object]] = [
        lambda: store.create("c", "p"), lambda: store.create("c", "p", writable=True),
        lambda: import_tar(store, fmt, "c", {"g": F(b"g")}, parent="p")]
    for make in makes:
        with pytest.raises(IntegrityError, match=r"^layer p: is damaged .*layer c cannot be made on it"):
            make()
        assert not store.exists("c")
    assert [r.id for r in store.layers()] == ["p"]
    assert sorted(n for n in os.listdir(store.driver.home) if not n.startswith(".")) == ["p"]


@every_driver
def test_a_layer_on_a_damaged_layer_is_refused(store: Any, fmt: LayerFormat) -> None:
    """mount, changes, diff and diffsize of a layer whose chain holds a damaged layer (one
    made before the damage was refused as a parent) name the damaged layer (IntegrityError)."""
    import_tar(store, fmt, "base", {"f": F(b"base")})
    store.create("mid", "base")
    store.create("top", "mid", writable=True)
    record = store.records.get("base")
    record.damaged = "an apply failed half way: a test says so"
    store.records.put(record)
    for layer_id in ("mid", "top"):
        uses: list[Callable[[str], object]] = [
            store.mount, store.changes, lambda i: diff_bytes(store, i), store.diff_size]
        for use in uses:
            sits = rf"^layer base: is damaged .*layer {layer_id} sits on it"
            with pytest.raises(IntegrityError, match=sits):
                use(layer_id)
    with pytest.raises(IntegrityError, match=r"^layer base: is damaged"):
        store.changes("top", "base")
    assert store.driver.mount_count("top") == 0


@every_driver
def test_bad_checksum_refused(store: Any, fmt: LayerFormat) -> None:
    data = bytearray(fmt.tar({"f": F(b"x")}))
    data[148:156] = b"0000000\0"
    with pytest.raises(ArchiveError):
        store.import_layer("bad", None, io.BytesIO(bytes(data)))
    assert not store.exists("bad")


# ----- compression ------------------------------------------------------------------------


@every_driver
@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zstd"])
def test_compressed_imports(store: Any, fmt: LayerFormat, kind: str) -> None:
    data = fmt.tar({"f": F(b"hello " * 1000)})
    if kind == "zstd":
        import zstandard

        packed: bytes = zstandard.ZstdCompressor().compress(data)
    else:
        compress: dict[str, Callable[[bytes], bytes]] = {
            "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
        }
        packed = compress[kind](data)
    assert store.import_layer("z", None, io.BytesIO(packed)).size == 6000
    assert diff_bytes(store, "z") == data


# ----- Unix metadata (OCI-format drivers) ----------------------------------------------------------


@oci_drivers
@needs_root
def test_base_layer_metadata(store: Any) -> None:
    spec = {
        "sticky": D(mode=0o1705, uid=1, gid=2),
        "sticky/setuid": F(b"#!/bin/true\n", mode=0o4222, uid=1, gid=2),
    }
    size = store.import_layer("base", None, io.BytesIO(make_tar(spec))).size
    assert size == len(b"#!/bin/true\n")
    tree = view(store, "base")
    assert tree["sticky"]["mode"] == oct(0o1705)
    assert (tree["sticky"]["uid"], tree["sticky"]["gid"]) == (1, 2)
    assert tree["sticky/setuid"]["mode"] == oct(0o4222)
    assert (tree["sticky/setuid"]["uid"], tree["sticky/setuid"]["gid"]) == (1, 2)


@oci_drivers
def test_opaque_dirs(store: Any) -> None:
    store.import_layer("base", None, io.BytesIO(make_tar({
        "o": D(), "o/old1": F(b"1"), "o/old2": D(), "o/old2/x": F(b"x"),
    })))
    store.import_layer("top", "base", io.BytesIO(make_tar({
        "o": Opaque(), "o/new": F(b"n"),
    })))
    tree = view(store, "top")
    assert "o/new" in tree
    assert not any(p.startswith("o/old") for p in tree)
    assert not any(".wh." in p for p in tree)
    changes = changes_of(store, "top")
    assert (A, "/o/new") in changes
    assert (X, "/o/old1") in changes or (C, "/o") in changes
    data = diff_bytes(store, "top")
    store.create("again", "base")
    store.apply("again", io.BytesIO(data))
    assert view(store, "again") == tree


def _rich_spec() -> dict[str, Any]:
    return {
        "bin": D(mode=0o755, mtime=1_500_000_000.25),
        "bin/sh": F(b"shell", mode=0o755, mtime=1_500_000_001.5),
        "bin/sh-link": H("bin/sh"),
        "bin/rsh": L("sh"),
        "etc": D(mode=0o750, uid=0, gid=42),
        "etc/shadow": F(b"secret", mode=0o640, uid=0, gid=42),
        "tmp": D(mode=0o1777),
        "usr": D(),
        "usr/bin": D(),
        "usr/bin/passwd": F(b"p", mode=0o4755),
        "usr/bin/wall": F(b"w", mode=0o2755, gid=5),
        "home": D(),
        "home/user": D(mode=0o700, uid=1000, gid=1000),
        "home/user/notes": F(b"n", uid=1000, gid=1000, xattrs={"user.note": b"v\x00\xff"}),
        "dev": D(),
        "dev/null": Dev("c", 1, 3, mode=0o666),
        "dev/loop0": Dev("b", 7, 0, mode=0o660),
        "run": D(),
        "run/fifo": Dev("p", mode=0o600),
        "cap": F(b"ping", mode=0o755, xattrs={
            "security.capability": bytes.fromhex("0100000200200000000000000000000000000000"),
        }),
        "nonascii-é": F(b"utf8 name"),
        "long/" + "d" * 120: D(),
        "long/" + "d" * 120 + "/" + "f" * 150: F(b"long name"),
    }


@oci_drivers
@needs_root
def test_metadata_fidelity_against_gnu_tar(store: Any, tmp_path: Path) -> None:
    spec = _rich_spec()
    spec["long"] = D()
    spec = dict(sorted(spec.items(), key=lambda kv: kv[0].split("/")))  # GNU tar wants dirs contiguous
    data = make_tar(spec)
    ref = tmp_path / "gnutar"
    ref.mkdir()
    (tmp_path / "in.tar").write_bytes(data)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tmp_path / "in.tar"), "-C", str(ref)], check=True)
    store.import_layer("rich", None, io.BytesIO(data))
    mine = view(store, "rich")
    theirs = snapshot(str(ref))
    # The root directory's own metadata comes from the store, not from the tarball.
    theirs.pop(".")
    assert_same_tree(mine, theirs)


#: GNU tar's sparse formats: its own (``S`` entries) and PAX's three versions.
SPARSE_FORMATS = {
    "gnu": ["--format=gnu"],
    "pax-0.0": ["--format=pax", "--sparse-version=0.0"],
    "pax-0.1": ["--format=pax", "--sparse-version=0.1"],
    "pax-1.0": ["--format=pax", "--sparse-version=1.0"],
}


def data_extents(path: str | Path) -> list[tuple[int, int]]:
    """Where a file holds data, as (start, end) pairs; the rest is holes."""
    from graphdriver.fs.tree import data_extents as extents

    fd = os.open(path, os.O_RDONLY)
    try:
        return list(extents(fd))
    finally:
        os.close(fd)


@oci_drivers
@pytest.mark.parametrize("tar_format", sorted(SPARSE_FORMATS))
def test_sparse_files_keep_their_holes_and_give_back_their_bytes(
        store: Any, tmp_path: Path, tar_format: str) -> None:
    """``tar --sparse`` archives (a 4 GiB disk image with two bytes of data): the file is
    unpacked with its holes, a container copies it without filling them, ``diff`` gives back
    the archive byte for byte, and ``check`` holds the file to the archive's data."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(4 << 30)
        f.seek(1 << 30)
        f.write(b"middle")
        f.seek((4 << 30) - 3)
        f.write(b"end")
    (src / "holes-only").write_bytes(b"")
    os.truncate(src / "holes-only", 1 << 20)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", *SPARSE_FORMATS[tar_format], "--numeric-owner", "-cf",
                    str(archive), "-C", str(src), "disk.img", "holes-only"], check=True)
    imported = archive.read_bytes()
    store.import_layer("sparse", None, io.BytesIO(imported))
    root = Path(store.driver.own_files("sparse") or store.driver.apply_target("sparse").path)
    image = root / "disk.img"
    assert image.stat().st_size == 4 << 30 and image.stat().st_blocks * 512 <= 1 << 20
    with open(image, "rb") as f:
        assert os.pread(f.fileno(), 8, 1 << 30) == b"middle\0\0"
        assert os.pread(f.fileno(), 8, (4 << 30) - 5) == b"\0\0end"
    assert (root / "holes-only").stat().st_size == 1 << 20
    assert data_extents(root / "holes-only") == []
    assert diff_bytes(store, "sparse") == imported
    assert store.check(["sparse"]) == [("sparse", None)]
    store.create("box", "sparse", writable=True)
    mounted = Path(store.mount("box"))
    try:
        seen = mounted / "disk.img"
        assert seen.stat().st_blocks * 512 <= 1 << 20
        with open(seen, "rb") as f:
            assert os.pread(f.fileno(), 6, 1 << 30) == b"middle"
    finally:
        store.unmount("box")
    assert changes_of(store, "box") == []
    # A byte written into a hole (the modification time put back) is found.
    st = image.stat()
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), b"x", 2 << 30)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    ((_, why),) = store.check(["sparse"])
    assert why is not None and "disk.img" in why and "sparse" in why
    # No file checksum covers a sparse file's data (the tar-split metadata holds it): diff
    # holds the file to it all the same, rather than give back bytes the layer no longer has.
    with pytest.raises(IntegrityError, match=r"disk\.img"):
        diff_bytes(store, "sparse")


def test_changes_type_is_docker_diff_format() -> None:
    assert str(Change("/etc", ChangeKind.MODIFY)) == "C /etc"
    assert str(Change("/x", ChangeKind.ADD)) == "A /x"
    assert str(Change("/y", ChangeKind.DELETE)) == "D /y"

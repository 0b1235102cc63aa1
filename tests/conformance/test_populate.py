"""The three-layer "populate" scenario of containers/storage's CLI tests.

A lower layer of files and directories, a middle layer that deletes some and
adds others, an upper layer that re-creates some of the deleted paths.  The
expected change lists and tarball listings are theirs (translated to the
``docker diff`` letters this CLI prints); the chain is then rebuilt from the
exported diffs, by ``apply`` and by ``import``, and must list the same again.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import pytest

from graphdriver.diff.changes import ChangeKind

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def _random_file(path: str) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(256))
    os.utime(path, (0, 0))


def _populate_lower(root: str) -> None:
    for name in ("layer1file1", "layer1file2", "layer1file3"):
        _random_file(os.path.join(root, name))
    for d in ("layerdir1", "layerdir2", "layerdir3"):
        os.mkdir(os.path.join(root, d))
    for d in ("layerdir4", "layerdir5", "layerdir6"):
        os.makedirs(os.path.join(root, d, "layer1subdir"))
    for d, f in (("layerdir7", "layer1file4"), ("layerdir8", "layer1file5"),
                 ("layerdir9", "layer1file6")):
        os.mkdir(os.path.join(root, d))
        _random_file(os.path.join(root, d, f))


def _populate_mid(root: str) -> None:
    for name in ("layer1file1", "layer1file2"):
        os.unlink(os.path.join(root, name))
    for d in ("layerdir1", "layerdir2", "layerdir4", "layerdir5", "layerdir7", "layerdir8"):
        shutil.rmtree(os.path.join(root, d))
    _random_file(os.path.join(root, "layer2file1"))
    os.mkdir(os.path.join(root, "layerdir10"))
    os.makedirs(os.path.join(root, "layerdir11", "layer2subdir"))
    os.mkdir(os.path.join(root, "layerdir12"))
    _random_file(os.path.join(root, "layerdir12", "layer2file2"))


def _populate_upper(root: str) -> None:
    _random_file(os.path.join(root, "layerfile1"))
    os.mkdir(os.path.join(root, "layerdir1"))
    os.makedirs(os.path.join(root, "layerdir4", "layer1subdir"))
    os.mkdir(os.path.join(root, "layerdir7"))
    os.makedirs(os.path.join(root, "layerdir3", "layer3subdir", "layer3subsubdir"))
    _random_file(os.path.join(root, "layerdir7", "layer1file4"))


LOWER_CHANGES = [(A, p) for p in (
    "/layer1file1", "/layer1file2", "/layer1file3", "/layerdir1", "/layerdir2", "/layerdir3",
    "/layerdir4", "/layerdir4/layer1subdir", "/layerdir5", "/layerdir5/layer1subdir",
    "/layerdir6", "/layerdir6/layer1subdir", "/layerdir7", "/layerdir7/layer1file4",
    "/layerdir8", "/layerdir8/layer1file5", "/layerdir9", "/layerdir9/layer1file6",
)]
MID_CHANGES = [
    (X, "/layer1file1"), (X, "/layer1file2"), (A, "/layer2file1"), (X, "/layerdir1"),
    (A, "/layerdir10"), (A, "/layerdir11"), (A, "/layerdir11/layer2subdir"),
    (A, "/layerdir12"), (A, "/layerdir12/layer2file2"), (X, "/layerdir2"),
    (X, "/layerdir4"), (X, "/layerdir5"), (X, "/layerdir7"), (X, "/layerdir8"),
]
UPPER_CHANGES = [
    (A, "/layerdir1"), (C, "/layerdir3"), (A, "/layerdir3/layer3subdir"),
    (A, "/layerdir3/layer3subdir/layer3subsubdir"), (A, "/layerdir4"),
    (A, "/layerdir4/layer1subdir"), (A, "/layerdir7"), (A, "/layerdir7/layer1file4"),
    (A, "/layerfile1"),
]
LOWER_NAMES = sorted([
    "layer1file1", "layer1file2", "layer1file3", "layerdir1/", "layerdir2/", "layerdir3/",
    "layerdir4/", "layerdir4/layer1subdir/", "layerdir5/", "layerdir5/layer1subdir/",
    "layerdir6/", "layerdir6/layer1subdir/", "layerdir7/", "layerdir7/layer1file4",
    "layerdir8/", "layerdir8/layer1file5", "layerdir9/", "layerdir9/layer1file6",
])
MID_NAMES = sorted([
    ".wh.layer1file1", ".wh.layer1file2", ".wh.layerdir1", ".wh.layerdir2", ".wh.layerdir4",
    ".wh.layerdir5", ".wh.layerdir7", ".wh.layerdir8", "layer2file1", "layerdir10/",
    "layerdir11/", "layerdir11/layer2subdir/", "layerdir12/", "layerdir12/layer2file2",
])
UPPER_NAMES = sorted([
    "layerdir1/", "layerdir3/", "layerdir3/layer3subdir/",
    "layerdir3/layer3subdir/layer3subsubdir/", "layerdir4/", "layerdir4/layer1subdir/",
    "layerdir7/", "layerdir7/layer1file4", "layerfile1",
])


def _changes(store, layer_id):
    return sorted(((c.kind, c.path) for c in store.changes(layer_id)), key=lambda t: t[1])


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return sorted(m.name + ("/" if m.isdir() and not m.name.endswith("/") else "")
                      for m in tf.getmembers())


def _diff(store, layer_id) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out)
    return out.getvalue()


def _populate(store) -> None:
    for layer_id, parent, fill in (("lower", None, _populate_lower),
                                   ("middle", "lower", _populate_mid),
                                   ("upper", "middle", _populate_upper)):
        store.create(layer_id, parent, writable=True)  # containers-storage's create-layer is writable
        root = store.mount(layer_id)
        try:
            fill(root)
        finally:
            store.unmount(layer_id)


def _check(store) -> None:
    assert _changes(store, "lower") == LOWER_CHANGES
    assert _changes(store, "middle") == MID_CHANGES
    assert _changes(store, "upper") == UPPER_CHANGES
    assert _names(_diff(store, "lower")) == LOWER_NAMES
    assert _names(_diff(store, "middle")) == MID_NAMES
    assert _names(_diff(store, "upper")) == UPPER_NAMES
    assert store.diff_size("lower") == 3 * 256 + 3 * 256
    assert store.diff_size("middle") == 2 * 256
    assert store.diff_size("upper") == 2 * 256


def test_populate_changes_and_diffs(store):
    _populate(store)
    _check(store)


@pytest.mark.parametrize("how", ["apply", "import"])
def test_populate_rebuilt_from_diffs(store, how):
    _populate(store)
    diffs = {layer_id: _diff(store, layer_id) for layer_id in ("lower", "middle", "upper")}
    for layer_id in ("upper", "middle", "lower"):
        store.remove(layer_id)
    parent = None
    for layer_id in ("lower", "middle", "upper"):
        if how == "apply":
            store.create(layer_id, parent)
            store.apply(layer_id, io.BytesIO(diffs[layer_id]))
        else:
            store.import_layer(layer_id, parent, io.BytesIO(diffs[layer_id]))
        parent = layer_id
    _check(store)
    assert _diff(store, "upper") == diffs["upper"]

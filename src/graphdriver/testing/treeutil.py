"""Declarative tree fixtures and tree snapshots for tests.

``build(root, spec)`` makes files from a compact description; ``snapshot(root)``
captures everything a layer store must preserve, so two trees can be compared
and a failure prints exactly which path differs and how.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphdriver.fs.tree import walk_tree


@dataclass
class F:
    """A regular file."""

    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000.0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class D:
    """A directory."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000.0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class L:
    """A symlink."""

    target: str
    mtime: float = 1_600_000_000.0


@dataclass
class H:
    """A hard link to another path of the same archive/tree."""

    target: str


@dataclass
class Dev:
    """A device node or fifo: kind 'c', 'b' or 'p'."""

    kind: str
    major: int = 0
    minor: int = 0
    mode: int = 0o644
    mtime: float = 1_600_000_000.0


@dataclass
class W:
    """A whiteout of the named sibling (``.wh.<name>`` in a tarball)."""


@dataclass
class Opaque:
    """An opaque-directory marker (``.wh..wh..opq`` in a tarball)."""


Spec = Mapping[str, Any]


def make_tar(spec: Spec, *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A layer tarball of *spec* (paths relative, parents listed before children)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for path, node in spec.items():
            info = tarfile.TarInfo(path)
            data = None
            if isinstance(node, F):
                info.size = len(node.data)
                info.mode, info.uid, info.gid, info.mtime = node.mode, node.uid, node.gid, node.mtime
                data = io.BytesIO(node.data)
                _xattrs(info, node.xattrs)
            elif isinstance(node, D):
                info.type = tarfile.DIRTYPE
                info.mode, info.uid, info.gid, info.mtime = node.mode, node.uid, node.gid, node.mtime
                _xattrs(info, node.xattrs)
            elif isinstance(node, L):
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, node.target, node.mtime
                info.mode = 0o777
            elif isinstance(node, H):
                info.type, info.linkname = tarfile.LNKTYPE, node.target
            elif isinstance(node, Dev):
                info.type = {"c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE, "p": tarfile.FIFOTYPE}[
                    node.kind
                ]
                info.devmajor, info.devminor = node.major, node.minor
                info.mode, info.mtime = node.mode, node.mtime
            elif isinstance(node, W):
                head, tail = os.path.split(path)
                info.name = os.path.join(head, ".wh." + tail)
            elif isinstance(node, Opaque):
                info.name = os.path.join(path, ".wh..wh..opq")
            else:  # pragma: no cover - test bug
                raise TypeError(node)
            tf.addfile(info, data)
    return buf.getvalue()


def _xattrs(info: tarfile.TarInfo, xattrs: Mapping[str, bytes]) -> None:
    for key, value in xattrs.items():
        text = value.decode("utf-8", "surrogateescape")
        info.pax_headers = {**info.pax_headers, "SCHILY.xattr." + key: text}


def build(root: str, spec: Spec) -> None:
    """Create *spec* under *root* directly on disk (needs root for owners and devices)."""
    dirs: list[tuple[str, D]] = []
    for path, node in spec.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if isinstance(node, F):
            with open(full, "wb") as f:
                f.write(node.data)
            _meta(full, node.mode, node.uid, node.gid, node.xattrs)
            os.utime(full, (node.mtime, node.mtime))
        elif isinstance(node, D):
            os.makedirs(full, exist_ok=True)
            _meta(full, node.mode, node.uid, node.gid, node.xattrs)
            dirs.append((full, node))
        elif isinstance(node, L):
            os.symlink(node.target, full)
            os.utime(full, (node.mtime, node.mtime), follow_symlinks=False)
        elif isinstance(node, H):
            os.link(os.path.join(root, node.target), full)
        elif isinstance(node, Dev):
            kind = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[node.kind]
            os.mknod(full, kind | node.mode, os.makedev(node.major, node.minor))
            os.utime(full, (node.mtime, node.mtime))
        else:  # pragma: no cover
            raise TypeError(node)
    for full, node in reversed(dirs):
        os.utime(full, (node.mtime, node.mtime))


def _meta(path: str, mode: int, uid: int, gid: int, xattrs: Mapping[str, bytes]) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in xattrs.items():
        os.setxattr(path, k, v)


def _xattr_map(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if name == "security.selinux" or name.startswith("trusted.overlay."):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False).hex()
        except OSError:
            continue
    return out


def snapshot(
    root: str, *, times: bool = True, dir_times: bool = True, skip: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Everything a layer must preserve, per relative path ('.' is the root)."""
    skipped = set(skip)
    out: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], str] = {}
    # Iteratively: hostile trees can be deeper than the recursion limit.
    for rel, full in [(".", root), *((r, e.path) for r, e in walk_tree(root))]:
        if rel in skipped:
            continue
        st = os.lstat(full)
        item: dict[str, Any] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": oct(stat.S_IMODE(st.st_mode)),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "xattrs": _xattr_map(full),
        }
        is_dir = stat.S_ISDIR(st.st_mode)
        if times and (dir_times or not is_dir) and not stat.S_ISLNK(st.st_mode):
            item["mtime_ns"] = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            item["size"] = st.st_size
            with open(full, "rb") as f:
                item["sha256"] = hashlib.sha256(f.read()).hexdigest()
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                item["link_group"] = inodes.setdefault(key, rel)
        elif stat.S_ISLNK(st.st_mode):
            item["target"] = os.readlink(full)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            item["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = item
    return out


def assert_same_tree(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Compare two snapshots; on failure say exactly which paths differ and how."""
    problems = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        if a is None:
            problems.append(f"missing: {path}")
        elif e is None:
            problems.append(f"unexpected: {path}")
        elif a != e:
            diffs = {k: (a.get(k), e.get(k)) for k in set(a) | set(e) if a.get(k) != e.get(k)}
            problems.append(f"differs: {path}: {diffs} (actual, expected)")
    assert not problems, "trees differ:\n  " + "\n  ".join(problems[:50])

"""Where the Windows metadata of a layer lives on Linux: a sidecar beside the files.

A Linux file holds a Windows file's data, its modification time and, with
luck, its access time.  Everything else is kept in the layer's own folder,
next to ``Files/``, ``Hives/`` and ``UtilityVM/``::

    <layer>/.winmeta/entries.ndjson             one JSON object per archive entry applied
    <layer>/.winmeta/streams/<path>:<stream>    the data of each alternate data stream

``entries.ndjson`` is appended to by every apply, one line per entry, in
archive order; a later line about a path replaces an earlier one.  A line
holds the entry's archive path (``Files/Windows/win.ini``), its kind
(``file``, ``dir``, ``symlink``, ``link``, ``stream``, ``deleted``) and what
Linux cannot keep: ``attrs`` (the ``FILE_ATTRIBUTE_*`` bits, with
``explicit`` telling whether the archive gave them), ``sd`` (the binary
security descriptor, base64) or ``sddl`` (the text form of older archives),
``created``, ``atime`` and ``ctime`` (nanoseconds; reads move a Linux file's
atime and nothing can set its ctime), ``mountpoint`` (a junction, not a
symlink), ``eas`` (extended attributes, base64), ``extra`` (any other PAX
record of the entry, base64, kept for re-export), and for hard links their
``target`` (``dangling`` when the target is in no layer: trimmed images have
such links; the link then exists in the metadata only).  A ``deleted`` line
is a tombstone: the path and everything below it are gone from this layer
and hidden from the layers below.

Why a sidecar rather than extended attributes: Linux refuses ``user.*``
xattrs on symlinks (Windows symlinks and junctions have attributes and
descriptors too), descriptors can outgrow an ext4 inode's xattr space, and a
plain file is easy to read back in one pass for export.  Stream data are
files because they can be as big as any file; their names mirror the
archive's (``Files/a.txt:s``), which Linux file names can hold.

A layer's metadata is looked up through its chain (:class:`ChainMeta`),
nearest layer first, so a file a Linux process changed in a writable layer
keeps the attributes, descriptor and streams it had below.

:mod:`.apply` lays a Windows layer tarball down in this form; every path
of the sidecar is opened through no symlink, as every path of the layer is.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graphdriver.errors import IntegrityError
from graphdriver.fs.confine import (
    makedirs_no_symlinks,
    open_dir_no_symlinks,
)
from graphdriver.fs.tree import remove_tree_at
from graphdriver.layerio.whiteout import hidden_by
from graphdriver.layerio.windows import wintar
from graphdriver.layerio.windows.layout import ENTRIES_FILE, META_DIR
from graphdriver.layerio.windows.wintar import WinMeta

STREAMS_DIR = "streams"

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
LINK = "link"
STREAM = "stream"
DELETED = "deleted"
KINDS = frozenset({FILE, DIR, SYMLINK, LINK, STREAM, DELETED})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


# ----- records -------------------------------------------------------------------------------------


@dataclass
class Record:
    """What the sidecar says about one archive path."""

    path: str
    kind: str
    meta: WinMeta | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    target: str = ""
    dangling: bool = False
    #: Kept only where no file keeps it (a dangling link).
    mtime_ns: int | None = None

    def to_json(self) -> str:
        """One NDJSON line (without the newline)."""
        value: dict[str, Any] = {"path": self.path, "kind": self.kind}
        m = self.meta
        if m is not None:
            value["attrs"] = m.attributes
            if m.explicit_attributes:
                value["explicit"] = True
            if m.security_descriptor is not None:
                value["sd"] = base64.b64encode(m.security_descriptor).decode()
            if m.sddl is not None:
                value["sddl"] = m.sddl
            if m.creation_ns is not None:
                value["created"] = m.creation_ns
            if m.mountpoint:
                value["mountpoint"] = True
            if m.eas:
                value["eas"] = {k: base64.b64encode(v).decode() for k, v in m.eas.items()}
            if m.extra:
                value["extra"] = {k: base64.b64encode(v).decode() for k, v in m.extra.items()}
        if self.atime_ns is not None:
            value["atime"] = self.atime_ns
        if self.ctime_ns is not None:
            value["ctime"] = self.ctime_ns
        if self.target:
            value["target"] = self.target
        if self.dangling:
            value["dangling"] = True
        if self.mtime_ns is not None:
            value["mtime"] = self.mtime_ns
        return json.dumps(value, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str, where: str) -> Record:
        """Parse one line; IntegrityError if it is not a record."""
        try:
            v = json.loads(line)
            kind = v["kind"]
            if not isinstance(v["path"], str) or kind not in KINDS:
                raise ValueError("no path or an unknown kind")
            meta = None
            if "attrs" in v:
                meta = WinMeta(
                    attributes=int(v["attrs"]),
                    explicit_attributes=bool(v.get("explicit")),
                    security_descriptor=base64.b64decode(v["sd"]) if "sd" in v else None,
                    sddl=v.get("sddl"),
                    creation_ns=v.get("created"),
                    mountpoint=bool(v.get("mountpoint")),
                    eas={k: base64.b64decode(x) for k, x in v.get("eas", {}).items()},
                    extra={k: base64.b64decode(x) for k, x in v.get("extra", {}).items()},
                )
            return cls(v["path"], kind, meta, v.get("atime"), v.get("ctime"), v.get("target", ""),
                       bool(v.get("dangling")), v.get("mtime"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"Windows metadata {where}", f"malformed line: {e}") from e


def entries_path(data_dir: str) -> str:
    return os.path.join(data_dir, META_DIR, ENTRIES_FILE)


def stream_path(data_dir: str, path: str, stream: str) -> str:
    """Where the data of stream *stream* of archive path *path* is kept."""
    return os.path.join(data_dir, META_DIR, STREAMS_DIR, f"{path}:{stream}")


def streams_root(data_dir: str) -> str:
    return os.path.join(data_dir, META_DIR, STREAMS_DIR)


# ----- reading ---------------------------------------------------------------------------------------


def read_records(data_dir: str) -> Iterator[Record]:
    """The lines of the sidecar of the layer at *data_dir*, in order (none for a layer written
    from Linux only)."""
    path = entries_path(data_dir)
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return
    with f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield Record.from_json(line, f"{path}:{number}")


@dataclass
class LayerMeta:
    """One layer's sidecar, replayed: the last word on each path."""

    data_dir: str
    records: dict[str, Record] = field(default_factory=dict)
    #: Stream names of each path, in archive order.
    streams: dict[str, list[str]] = field(default_factory=dict)
    #: Paths this layer deleted (and so hid below).
    tombstones: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, data_dir: str) -> LayerMeta:
        """Read ``entries.ndjson`` of the layer whose Windows layout is at *data_dir*."""
        layer = cls(data_dir)
        # Directories some record lies below: a tombstone of one of them
        # must drop those records (a later apply deleting an earlier one's tree).
        parents: set[str] = set()
        for rec in read_records(data_dir):
            layer._replay(rec, parents)
        return layer

    def _replay(self, rec: Record, parents: set[str]) -> None:
        p = rec.path
        if rec.kind == STREAM:
            base, name = wintar.split_stream(p)
            if name is not None and name not in self.streams.setdefault(base, []):
                self.streams[base].append(name)
            return
        if rec.kind == DELETED:
            self.tombstones.add(p)
            self.records.pop(p, None)
            self.streams.pop(p, None)
            if p in parents:
                inside = p + "/"
                for key in [k for k in self.records if k.startswith(inside)]:
                    del self.records[key]
                    self.streams.pop(key, None)
            return
        self.records[p] = rec
        self.streams.pop(p, None)  # a replaced file's streams follow it again
        parent = p.rpartition("/")[0]
        while parent and parent not in parents:
            parents.add(parent)
            parent = parent.rpartition("/")[0]

    def hides(self, path: str) -> bool:
        """Whether this layer deleted *path* or a directory above it."""
        return hidden_by(path, self.tombstones)


class ChainMeta:
    """The sidecars of a layer and its ancestors, nearest first, loaded on first use."""

    def __init__(self, data_dirs: list[str]) -> None:
        self.data_dirs = data_dirs
        self._loaded: dict[int, LayerMeta] = {}

    def layer(self, index: int) -> LayerMeta:
        if index not in self._loaded:
            self._loaded[index] = LayerMeta.load(self.data_dirs[index])
        return self._loaded[index]

    def find(self, path: str) -> tuple[Record, int] | None:
        """The nearest record of *path* and the index of its layer; None if no layer has one.

        A layer that deleted the path (or a directory above it) ends the search:
        what lies below it is hidden.
        """
        for i in range(len(self.data_dirs)):
            layer = self.layer(i)
            rec = layer.records.get(path)
            if rec is not None:
                return rec, i
            if layer.hides(path):
                return None
        return None

    def streams(self, index: int, path: str) -> list[tuple[str, str]]:
        """``(name, data file)`` of each stream of *path* in layer *index*."""
        layer = self.layer(index)
        return [(name, stream_path(layer.data_dir, path, name)) for name in layer.streams.get(path, [])]


# ----- writing (in the confined child) ------------------------------------------------------------------


class MetaWriter:
    """Appends records to a layer's sidecar and stores stream data; every path confined."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        dfd = makedirs_no_symlinks(root_fd, META_DIR, 0o700)
        try:
            fd = os.open(ENTRIES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
        self._out = open(fd, "w", encoding="utf-8", errors="surrogateescape", buffering=1 << 16)

    def add(self, record: Record) -> None:
        self._out.write(record.to_json() + "\n")

    def open_stream(self, path: str, stream: str) -> int:
        """A new, empty file for the data of stream *stream* of *path* (an fd to write)."""
        rel = f"{META_DIR}/{STREAMS_DIR}/{path}:{stream}"
        parent, _, base = rel.rpartition("/")
        dfd = makedirs_no_symlinks(self.root_fd, parent, 0o700)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base, dir_fd=dfd)
            return os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600, dir_fd=dfd)
        finally:
            os.close(dfd)

    def drop_streams(self, path: str) -> None:
        """Delete the stored streams of *path* (replaced or deleted) and of everything below it."""
        rel = f"{META_DIR}/{STREAMS_DIR}/{path}"
        parent, _, base = rel.rpartition("/")
        try:
            dfd = open_dir_no_symlinks(self.root_fd, parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            prefix = base + ":"
            for name in os.listdir(dfd):
                if name.startswith(prefix):
                    os.unlink(name, dir_fd=dfd)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    remove_tree_at(dfd, base)
        finally:
            os.close(dfd)

    def close(self, *, durable: bool = True) -> None:
        """Flush (and with *durable*, fsync) the records; closing twice is harmless."""
        if self._out.closed:
            return
        self._out.flush()
        if durable:
            os.fsync(self._out.fileno())
        self._out.close()

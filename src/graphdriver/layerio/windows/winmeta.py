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

:class:`WindowsApplier` lays a Windows layer tarball down in this form (it
runs in the confined extraction child).  Every path it writes is opened with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``: Windows layers are
written without ever following a symlink (as hcsshim's layer writer refuses
reparse points on the way), so no entry can reach the sidecar or the BCD
backups through a link.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import stat
import typing
from dataclasses import dataclass, field
from typing import Any

from graphdriver.errors import ArchiveError, IntegrityError
from graphdriver.fs import syscalls
from graphdriver.fs.confine import (
    is_symlink_error,
    makedirs_no_symlinks,
    open_dir_no_symlinks,
    open_no_symlinks,
)
from graphdriver.fs.tree import remove_tree_at
from graphdriver.layerio import entry as te
from graphdriver.layerio.extract import clean_name
from graphdriver.layerio.whiteout import OVERLAY_OPAQUE_XATTR
from graphdriver.layerio.windows import layout, wintar
from graphdriver.layerio.windows.layout import ENTRIES_FILE, META_DIR
from graphdriver.layerio.windows.wintar import WinMeta

log = logging.getLogger(__name__)

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
        path = entries_path(data_dir)
        try:
            f = open(path, encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return layer  # a layer written from Linux only
        # Directories some record lies below: a tombstone of one of them
        # must drop those records (a later apply deleting an earlier one's tree).
        parents: set[str] = set()
        with f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    layer._replay(Record.from_json(line, f"{path}:{number}"), parents)
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
        if not self.tombstones:
            return False
        while path:
            if path in self.tombstones:
                return True
            path = path.rpartition("/")[0]
        return False


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



# ----- applying a Windows layer tarball (in the confined child) -------------------------------------

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE_SIZE = 128
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ApplyPlan:
    """What applying needs to know besides the entries (picklable: it goes to the child)."""

    #: Write overlay whiteouts (0/0 character devices) for deletions under
    #: ``Files/``: the layer has ancestors to hide and may make devices.
    whiteout_devices: bool = False
    #: Archive paths whose data is also copied to a backup file in the layer
    #: folder (files Windows rewrites in place after import).
    mutated: dict[str, str] = field(default_factory=dict)
    #: Container ids to host ids (uid, gid) for the owners written; None: as archived.
    owner: tuple[int, int] | None = None


class WindowsApplier:
    """Writes a Windows layer tarball into a layer folder open as *root_fd*.

    Entries outside ``Files/``, ``Hives/`` and ``UtilityVM/`` are refused, and
    so are devices and FIFOs: a Windows layer has none.  Regular files,
    directories and symlinks (their targets kept as Windows wrote them) go to
    their places; their metadata to the sidecar; stream entries to stream
    files; tombstones delete (and, with ``whiteout_devices``, leave an overlay
    whiteout under ``Files/``).  Permission bits come from the archive where
    it has any (``backuptar`` writes none: directories then get 0755, files
    0644).  Hard links are made within the layer; a target only a lower
    layer has is copied; a target no layer has is kept in the sidecar only.
    Returns the size the seeds count: the regular files' sizes, streams and
    links excluded.
    """

    def __init__(self, entries: Any, root_fd: int, lower_fds: tuple[int, ...], plan: ApplyPlan) -> None:
        self.entries = entries
        self.root_fd = root_fd
        self.lower_fds = lower_fds
        self.plan = plan
        self.meta = MetaWriter(root_fd)
        self.dirs: dict[str, int] = {}
        self.stale: list[int] = []
        # Directory -> (atime, mtime), set once every entry is in.
        self.pending: dict[str, tuple[int, int]] = {}
        self.last = ""  # the entry an alternate data stream may follow
        self.dangling = 0

    def run(self) -> int:
        size = 0
        try:
            while (e := self._next()) is not None:
                if self.stale or len(self.dirs) > _DIR_CACHE_SIZE:
                    self._trim()
                try:
                    size += self._entry(e)
                except OSError as x:
                    why = "a path component is a symlink" if is_symlink_error(x) else x.strerror or str(x)
                    raise ArchiveError(e.name, why) from x
            self._finish()
            self.meta.close()
        finally:
            self.meta.close(durable=False)
            self.stale.extend(self.dirs.values())
            self.dirs.clear()
            self._trim()
        return size

    def _next(self) -> Any:
        try:
            return self.entries.next()
        except (OSError, EOFError) as x:
            raise ArchiveError("", f"reading the layer: {x}") from x

    def _entry(self, e: Any) -> int:
        rel = clean_name(e.name, e.name)
        if rel == ".":
            return 0  # the archive's root: the layer folder is ours, not the layer's
        parent, _, base = rel.rpartition("/")
        if base.startswith(wintar.WHITEOUT_PREFIX):
            self._tombstone(e, parent, base)
            return 0
        if wintar.layer_root(rel) is None:
            raise ArchiveError(e.name, "not a Windows layer path: only Files/, Hives/ and UtilityVM/ exist")
        path, stream = wintar.split_stream(rel)
        if ":" in parent:
            raise ArchiveError(e.name, "':' in a directory name")
        if stream is not None:
            self._stream(e, path, stream)
            return 0
        top = rel in layout.LAYER_ROOTS or rel == layout.UTILITY_VM_FILES
        if top and e.type != te.DIR:
            raise ArchiveError(e.name, "the layer's top-level folders must be directories")
        self.last = rel
        if any(k.startswith("GNU.sparse.") for k in e.pax):
            raise ArchiveError(e.name, "sparse entries have no place in a Windows layer")
        if e.type in te.REGULAR_TYPES:
            self._regular(e, rel, parent, base)
            return int(e.size)
        if e.type == te.DIR:
            self._directory(e, rel, parent, base)
        elif e.type == te.SYM:
            self._symlink(e, rel, parent, base)
        elif e.type == te.LNK:
            self._hardlink(e, rel, parent, base)
        else:
            raise ArchiveError(e.name, f"entry type {e.type!r} has no place in a Windows layer")
        return 0

    # ----- directories -------------------------------------------------------------------

    @typing.overload
    def _dir(self, rel: str) -> int: ...

    @typing.overload
    def _dir(self, rel: str, *, create: typing.Literal[False]) -> int | None: ...

    def _dir(self, rel: str, *, create: bool = True) -> int | None:
        """An fd of directory *rel* of the layer, made (with missing parents) if *create*.

        Without *create*, None when it does not exist (or is no directory).
        """
        if not rel:
            return self.root_fd
        fd = self.dirs.get(rel)
        if fd is not None:
            return fd
        try:
            fd = open_dir_no_symlinks(self.root_fd, rel)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            parent, _, base = rel.rpartition("/")
            pfd = self._dir(parent)
            os.mkdir(base, 0o755, dir_fd=pfd)
            fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
            self._implied(fd, rel)
        else:
            if rel not in self.pending:
                st = os.fstat(fd)  # changed below, not listed: keep its times
                self.pending[rel] = (st.st_atime_ns, st.st_mtime_ns)
        self.dirs[rel] = fd
        return fd

    def _implied(self, fd: int, rel: str) -> None:
        """A directory made only because a path needed it: as it is below, if it is."""
        mode, times = 0o755, None
        for lower in self.lower_fds:
            try:
                lfd = open_dir_no_symlinks(lower, rel)
            except OSError:
                continue
            try:
                st = os.fstat(lfd)
            finally:
                os.close(lfd)
            mode, times = st.st_mode & 0o7777, (st.st_atime_ns, st.st_mtime_ns)
            break
        os.fchmod(fd, mode)
        self._chown(fd)
        if times is not None:
            self.pending[rel] = times

    def _trim(self) -> None:
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()
        while len(self.dirs) > _DIR_CACHE_SIZE:
            self.stale.append(self.dirs.pop(next(iter(self.dirs))))
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()

    def _clear(self, pfd: int, base: str, rel: str) -> bool:
        """Remove whatever is at *rel* (and its streams); False if nothing was."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            # Cached fds below it would outlive it: drop them after this entry.
            self.stale.extend(self.dirs.values())
            self.dirs.clear()
            remove_tree_at(pfd, base)
            inside = rel + "/"
            for p in [p for p in self.pending if p == rel or p.startswith(inside)]:
                del self.pending[p]
        else:
            os.unlink(base, dir_fd=pfd)
        self.meta.drop_streams(rel)
        return True

    # ----- entry kinds ---------------------------------------------------------------------

    def _regular(self, e: Any, rel: str, parent: str, base: str) -> None:
        pfd = self._dir(parent)
        self._clear(pfd, base, rel)
        fd = os.open(base, _CREATE, 0o600, dir_fd=pfd)
        try:
            backup = self.plan.mutated.get(rel)
            if backup is not None:
                self._copy_with_backup(fd, backup)
            elif e.size:
                self.entries.copy_to_fd(fd)
            self._chown(fd)
            os.fchmod(fd, _perm(e.mode, 0o644))
            os.utime(fd, ns=_times(e))
        finally:
            os.close(fd)
        self.meta.add(Record(rel, FILE, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns))

    def _copy_with_backup(self, fd: int, backup: str) -> None:
        """Copy the entry's data to *fd* and to the backup file *backup* of the layer folder."""
        bfd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=self.root_fd)
        try:
            while chunk := self.entries.read(_COPY_CHUNK):
                for target in (fd, bfd):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(target, view) :]
            os.fsync(bfd)
        finally:
            os.close(bfd)

    def _directory(self, e: Any, rel: str, parent: str, base: str) -> None:
        pfd = self._dir(parent)
        opaque = False
        try:
            os.mkdir(base, 0o755, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                # A directory made again after its tombstone is a new, empty one:
                # overlay must not show what the tombstone hid below it.
                opaque = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                self._clear(pfd, base, rel)
                os.mkdir(base, 0o755, dir_fd=pfd)
        fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        if opaque:
            syscalls.fsetxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        old = self.dirs.get(rel)
        if old is not None:
            self.stale.append(old)
        self.dirs[rel] = fd
        os.fchmod(fd, _perm(e.mode, 0o755))
        self._chown(fd)
        self.pending[rel] = _times(e)
        self.meta.add(Record(rel, DIR, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns))

    def _symlink(self, e: Any, rel: str, parent: str, base: str) -> None:
        target = e.linkname
        if not target:
            raise ArchiveError(e.name, "symlink with an empty target")
        # The target is content, stored as it is (relative targets above the
        # root included, as GNU tar, bsdtar and containerd store them): nothing
        # here ever follows a symlink, every path is resolved beneath the root.
        pfd = self._dir(parent)
        self._clear(pfd, base, rel)
        os.symlink(target, base, dir_fd=pfd)
        if self.plan.owner is not None:
            with contextlib.suppress(PermissionError):
                os.chown(base, *self.plan.owner, dir_fd=pfd, follow_symlinks=False)
        os.utime(base, ns=_times(e), dir_fd=pfd, follow_symlinks=False)
        self.meta.add(Record(rel, SYMLINK, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns))

    def _hardlink(self, e: Any, rel: str, parent: str, base: str) -> None:
        target = clean_name(e.linkname, e.name, "hardlink target") if e.linkname else ""
        inside = all(any(layout.has_path_prefix(p, r) for r in layout.TOMBSTONE_ROOTS) for p in (rel, target))
        if not target or not inside:
            why = "invalid hard link: both names must be under Files/ or UtilityVM/Files/"
            raise ArchiveError(e.name, why)
        pfd = self._dir(parent)
        self._clear(pfd, base, rel)
        record = Record(rel, LINK, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns, target=target)
        tparent, _, tbase = target.rpartition("/")
        try:
            tfd = open_dir_no_symlinks(self.root_fd, tparent)
        except FileNotFoundError:
            tfd = -1
        if tfd >= 0:
            try:
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                self.meta.add(record)
                return
            except FileNotFoundError:
                pass
            finally:
                os.close(tfd)
        if not self._copy_from_lower(target, pfd, base):
            # Trimmed images link to files they no longer hold: keep the link in the metadata.
            record.dangling, record.mtime_ns = True, e.mtime_ns
            self.dangling += 1
        self.meta.add(record)

    def _copy_from_lower(self, target: str, pfd: int, base: str) -> bool:
        """Copy *target* from the nearest lower layer holding it to *base*; False if none does."""
        for lower in self.lower_fds:
            try:
                src = open_no_symlinks(lower, target, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                st = os.fstat(src)
                if not stat.S_ISREG(st.st_mode):
                    continue
                dst = os.open(base, _CREATE, 0o600, dir_fd=pfd)
                try:
                    syscalls.copy_fd(src, dst, st.st_size)
                    os.fchmod(dst, st.st_mode & 0o7777)
                    self._chown(dst)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
                return True
            finally:
                os.close(src)
        return False

    def _stream(self, e: Any, path: str, stream: str) -> None:
        if e.type not in te.REGULAR_TYPES:
            raise ArchiveError(e.name, "an alternate data stream must be a regular entry")
        if not stream or path != self.last:
            raise ArchiveError(e.name, "an alternate data stream must follow the entry of its file")
        fd = self.meta.open_stream(path, stream)
        try:
            if e.size:
                self.entries.copy_to_fd(fd)
        finally:
            os.close(fd)
        self.meta.add(Record(f"{path}:{stream}", STREAM))

    def _tombstone(self, e: Any, parent: str, base: str) -> None:
        name = base[len(wintar.WHITEOUT_PREFIX) :]
        if name in ("", ".", "..") or name.startswith(wintar.WHITEOUT_PREFIX):
            raise ArchiveError(e.name, "invalid tombstone")
        rel = f"{parent}/{name}" if parent else name
        wintar.check_tombstone(rel, e.name)
        self.last = ""
        if self.plan.whiteout_devices and rel.startswith(layout.FILES + "/"):
            pfd = self._dir(parent)
            self._clear(pfd, name, rel)
            syscalls.mknod_at(name, 0o600 | stat.S_IFCHR, 0, dir_fd=pfd)  # 0/0: overlay's whiteout
        else:
            found = self._dir(parent, create=False)
            if found is not None:
                self._clear(found, name, rel)
        self.meta.add(Record(rel, DELETED))

    # ----- metadata ----------------------------------------------------------------------------

    def _chown(self, fd: int) -> None:
        owner = self.plan.owner
        if owner is None:
            return
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass  # unprivileged: everything stays the user's

    def _finish(self) -> None:
        """Set directory times, deepest first (creating children moved them)."""
        self._trim()
        for rel in sorted(self.pending, key=lambda p: p.count("/"), reverse=True):
            try:
                fd = open_dir_no_symlinks(self.root_fd, rel)
            except OSError:
                continue  # deleted or replaced since
            try:
                os.utime(fd, ns=self.pending[rel])
            finally:
                os.close(fd)


def _perm(mode: int, default: int) -> int:
    """The archive's permission bits, or *default* where it has none (``backuptar`` keeps none)."""
    perm = mode & 0o7777
    return perm if perm & 0o777 else default


def _times(e: Any) -> tuple[int, int]:
    mtime = int(e.mtime_ns)
    return (mtime if e.atime_ns is None else int(e.atime_ns)), mtime


def apply_windows_layer(entries: Any, root_fd: int, lower_fds: tuple[int, ...], plan: ApplyPlan) -> int:
    """Apply the Windows layer entries of *entries* to the layer folder *root_fd*; returns the size."""
    applier = WindowsApplier(entries, root_fd, lower_fds, plan)
    size = applier.run()
    if applier.dangling:
        log.warning(
            "%d hard links name files in no layer (a trimmed image?); kept in the metadata only",
            applier.dangling,
        )
    return size

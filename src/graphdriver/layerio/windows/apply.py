"""Applying a Windows layer tarball: the Windows format's plug-in of the one extractor.

:class:`WindowsApplier` is an :class:`~graphdriver.layerio.extract.Extraction`
(the loop, the directory fds, implied parents, removal and directory times
are the extractor's); what it adds is the Windows format: which entries a
Windows layer may hold, tombstones, alternate data streams, hard links to
files no layer holds, and the metadata sidecar (:mod:`.winmeta`).

Every path is resolved with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``:
Windows layers are written without ever following a symlink (as hcsshim's
layer writer refuses reparse points on the way), so no entry can reach the
sidecar or the BCD backups through a link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any

from graphdriver.errors import ArchiveError, CorruptArchive, GraphDriverError, warn
from graphdriver.fs import syscalls
from graphdriver.fs.confine import is_symlink_error, open_dir_no_symlinks, open_no_symlinks
from graphdriver.fs.overlayfs import is_whiteout, is_whiteout_at
from graphdriver.layerio import entry as te
from graphdriver.layerio.extract import Extraction, clean_name
from graphdriver.layerio.whiteout import OVERLAY_OPAQUE_XATTR
from graphdriver.layerio.windows import layout, wintar
from graphdriver.layerio.windows.winmeta import DELETED, DIR, FILE, LINK, STREAM, SYMLINK, MetaWriter, Record
from graphdriver.plain import Plain

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_COPY_CHUNK = 1 << 20


class ApplyPlan(Plain):
    """What applying needs to know besides the entries (picklable: it goes to the child)."""

    __slots__ = ("mutated", "owner", "whiteout_devices")

    def __init__(self, whiteout_devices: bool = False, mutated: dict[str, str] | None = None,
                 owner: tuple[int, int] | None = None) -> None:
        #: Write overlay whiteouts (0/0 character devices) for deletions under
        #: ``Files/`` of what a lower layer shows: the layer has ancestors and may make devices.
        self.whiteout_devices = whiteout_devices
        #: Archive paths whose data is also copied to a backup file in the layer
        #: folder (files Windows rewrites in place after import).
        self.mutated = {} if mutated is None else mutated
        #: Container ids to host ids (uid, gid) for the owners written; None: as archived.
        self.owner = owner


class WindowsApplier(Extraction):
    """Writes a Windows layer tarball into a layer folder open as *root_fd*.

    Entries outside ``Files/``, ``Hives/`` and ``UtilityVM/`` are refused, and
    so are devices and FIFOs: a Windows layer has none.  Regular files,
    directories and symlinks (their targets kept as Windows wrote them) go to
    their places; their metadata to the sidecar; stream entries to stream
    files; tombstones delete (and, with ``whiteout_devices``, leave an overlay
    whiteout under ``Files/`` where a lower layer has something there to
    hide); a tombstone of a stream is corrupt (see :mod:`.wintar`).
    Permission bits come from the archive where it has any (``backuptar``
    writes none: directories then get 0755, files 0644).
    Hard links are made within the layer; a target only a lower layer has is
    copied; a target no layer has is kept in the sidecar only.
    :meth:`run` returns the size the seeds count: the regular files' sizes,
    streams and links excluded.
    """

    def __init__(self, entries: Any, root_fd: int, lower_fds: tuple[int, ...], plan: ApplyPlan) -> None:
        super().__init__(entries, root_fd, lower_fds)
        self.plan = plan
        self.meta = MetaWriter(root_fd)
        self.last = ""  # the entry an alternate data stream may follow
        self.dangling = 0

    # ----- the extractor's hooks ----------------------------------------------------------

    def run(self) -> int:
        try:
            size = super().run()
            self.meta.close()
        finally:
            self.meta.close(durable=False)
            self.close()
        return size

    def _error_text(self, x: OSError) -> str:
        return "a path component is a symlink" if is_symlink_error(x) else super()._error_text(x)

    def _resolve_dir(self, rel: str) -> int:
        return open_dir_no_symlinks(self.root_fd, rel)

    def _open_dir_nofollow(self, dir_fd: int, rel: str, flags: int = _DIR_FLAGS) -> int:
        return open_no_symlinks(dir_fd, rel, flags)

    def _implied_metadata(self, fd: int, rel: str) -> None:
        """As the directory is below, if it is; 0755 otherwise."""
        st = self._lower_dir_stat(rel)
        os.fchmod(fd, 0o755 if st is None else st.st_mode & 0o7777)
        self._chown(fd)
        if st is not None:
            self.pending[rel] = (st.st_atime_ns, st.st_mtime_ns, None)

    def _removed(self, rel: str) -> None:
        self.meta.drop_streams(rel)

    def _refuse_lower_symlink(self, rel: str) -> None:
        """Refuse a path through a symlink of a lower layer, as every driver does.

        A directory made here would hide the symlink in the view; following
        it is what extraction never does (see :mod:`graphdriver.layerio.extract`).
        """
        found = self._in_union(rel)
        if found is None:
            return
        os.close(found[1])
        if stat.S_ISLNK(found[2].st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))

    def _refuse_lower_symlinks_on_the_way(self, path: str) -> None:
        """:meth:`_refuse_lower_symlink` for every directory of *path*, shallowest first."""
        comps = path.split("/")[:-1]
        for i in range(1, len(comps) + 1):
            self._refuse_lower_symlink("/".join(comps[:i]))

    def _entry(self, e: Any) -> int:
        try:
            rel = clean_name(e.name, e.name)
            wintar.check_name(rel, e.name)
            parent, _, base = rel.rpartition("/")
            tombstone = base.startswith(wintar.WHITEOUT_PREFIX)
            if rel != "." and not tombstone and wintar.layer_root(rel) is None:
                why = "not a Windows layer path: only Files/, Hives/ and UtilityVM/ exist"
                raise ArchiveError(e.name, why)
        except GraphDriverError as x:
            x.wrote_nothing = True  # of this entry (see Extraction.run)
            raise
        if rel == ".":
            return 0  # the archive's root: the layer folder is ours, not the layer's
        if tombstone:
            self._tombstone(e, parent, base)
            return 0
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
        if e.sparse is not None or any(k.startswith("GNU.sparse.") for k in e.pax):
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

    # ----- entry kinds ---------------------------------------------------------------------

    def _regular(self, e: Any, rel: str, parent: str, base: str) -> None:
        meta = wintar.meta_from_entry(e)  # a corrupt record is refused before a byte is written
        pfd = self._dir_fd(parent)
        self._remove(pfd, base, rel)
        fd = os.open(base, _CREATE, 0o600, dir_fd=pfd)
        try:
            backup = self.plan.mutated.get(rel)
            if backup is not None:
                self._copy_with_backup(fd, backup)
            elif e.size:
                self.reader.copy_to_fd(fd)
            self._chown(fd)
            os.fchmod(fd, permission_bits(e.mode, 0o644))
            os.utime(fd, ns=_times(e))
        finally:
            os.close(fd)
        self.meta.add(Record(rel, FILE, meta, e.atime_ns, e.ctime_ns))

    def _copy_with_backup(self, fd: int, backup: str) -> None:
        """Copy the entry's data to *fd* and to the backup file *backup* of the layer folder."""
        bfd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=self.root_fd)
        try:
            read = self.reader.read  # type: ignore[attr-defined]
            while chunk := read(_COPY_CHUNK):
                for target in (fd, bfd):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(target, view) :]
            os.fsync(bfd)
        finally:
            os.close(bfd)

    def _directory(self, e: Any, rel: str, parent: str, base: str) -> None:
        meta = wintar.meta_from_entry(e)
        pfd = self._dir_fd(parent)
        opaque = False
        try:
            os.mkdir(base, 0o755, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                # A directory made again after its tombstone is a new, empty one:
                # overlay must not show what the tombstone hid below it.
                opaque = is_whiteout(st)
                self._remove(pfd, base, rel)
                os.mkdir(base, 0o755, dir_fd=pfd)
        fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        if opaque:
            syscalls.fsetxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        old = self.dirs.get(rel)
        if old is not None:
            self.stale.append(old)
        self.dirs[rel] = fd
        self.in_use.add(rel)  # the entry works with it: no making room closes it
        os.fchmod(fd, permission_bits(e.mode, 0o755))
        self._chown(fd)
        self.pending[rel] = (*_times(e), None)
        self.meta.add(Record(rel, DIR, meta, e.atime_ns, e.ctime_ns))

    def _symlink(self, e: Any, rel: str, parent: str, base: str) -> None:
        target = e.linkname
        if not target:
            raise ArchiveError(e.name, "symlink with an empty target")
        meta = wintar.meta_from_entry(e)
        # The target is content, stored as it is (relative targets above the
        # root included, as GNU tar, bsdtar and containerd store them): nothing
        # here ever follows a symlink, every path is resolved beneath the root.
        pfd = self._dir_fd(parent)
        self._remove(pfd, base, rel)
        os.symlink(target, base, dir_fd=pfd)
        if self.plan.owner is not None:
            with contextlib.suppress(PermissionError):
                os.chown(base, *self.plan.owner, dir_fd=pfd, follow_symlinks=False)
        os.utime(base, ns=_times(e), dir_fd=pfd, follow_symlinks=False)
        self.meta.add(Record(rel, SYMLINK, meta, e.atime_ns, e.ctime_ns))

    def _hardlink(self, e: Any, rel: str, parent: str, base: str) -> None:
        target = clean_name(e.linkname, e.name, "hardlink target") if e.linkname else ""
        wintar.check_name(target, e.name)
        inside = all(any(layout.has_path_prefix(p, r) for r in layout.TOMBSTONE_ROOTS) for p in (rel, target))
        if not target or not inside:
            why = "invalid hard link: both names must be under Files/ or UtilityVM/Files/"
            raise ArchiveError(e.name, why)
        record = Record(rel, LINK, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns, target=target)
        pfd = self._dir_fd(parent)
        self._remove(pfd, base, rel)
        tparent, _, tbase = target.rpartition("/")
        tfd = self._existing_dir(tparent)
        if tfd is not None and not is_whiteout_at(tfd, tbase):  # a file this layer deleted is no target
            try:
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                self.meta.add(record)
                return
            except FileNotFoundError:
                pass
        if not self._copy_from_lower(target, pfd, base):
            self._refuse_lower_symlinks_on_the_way(target)
            # Trimmed images link to files they no longer hold: keep the link in the metadata.
            record.dangling, record.mtime_ns = True, e.mtime_ns
            self.dangling += 1
        self.meta.add(record)

    def _copy_from_lower(self, target: str, pfd: int, base: str) -> bool:
        """Copy the regular file *target* of the lower layers' union; False if it is not there
        (or this layer deleted it)."""
        found = self._in_union(target, with_layer=True)
        if found is None:
            return False
        index, lpfd, st = found
        try:
            if index == 0 or not stat.S_ISREG(st.st_mode):
                return False
            src = os.open(target.rpartition("/")[2], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lpfd)
        finally:
            os.close(lpfd)
        try:
            dst = os.open(base, _CREATE, 0o600, dir_fd=pfd)
            try:
                syscalls.copy_fd(src, dst, st.st_size)
                os.fchmod(dst, st.st_mode & 0o7777)
                self._chown(dst)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        return True

    def _stream(self, e: Any, path: str, stream: str) -> None:
        if e.type not in te.REGULAR_TYPES:
            raise ArchiveError(e.name, "an alternate data stream must be a regular entry")
        if not stream or path != self.last:
            raise ArchiveError(e.name, "an alternate data stream must follow the entry of its file")
        fd = self.meta.open_stream(path, stream)
        try:
            if e.size:
                self.reader.copy_to_fd(fd)
        finally:
            os.close(fd)
        self.meta.add(Record(f"{path}:{stream}", STREAM))

    def _tombstone(self, e: Any, parent: str, base: str) -> None:
        name = base[len(wintar.WHITEOUT_PREFIX) :]
        if name in ("", ".", "..") or name.startswith(wintar.WHITEOUT_PREFIX):
            raise ArchiveError(e.name, "invalid tombstone")
        rel = f"{parent}/{name}" if parent else name
        wintar.check_tombstone(rel, e.name)
        if ":" in parent:
            raise ArchiveError(e.name, "':' in a directory name")
        if ":" in name:
            # A stream is part of its file's entry, never an entry of its own: a layer
            # drops one by giving the file again without it (as Windows exports a file
            # whose stream went), and the sidecar has no deletion of one stream.
            raise CorruptArchive(e.name, "a tombstone of an alternate data stream: a Windows layer "
                                         "deletes whole files and folders (a stream goes by giving "
                                         "its file again without it)")
        self.last = ""
        found = self._existing_dir(parent)
        if found is not None:
            self._remove(found, name, rel)
        else:
            self._refuse_lower_symlinks_on_the_way(rel)
        if self.plan.whiteout_devices and rel.startswith(layout.FILES + "/") and self._shown_below(rel):
            pfd = self._dir_fd(parent)
            syscalls.mknod_at(name, 0o600 | stat.S_IFCHR, 0, dir_fd=pfd)  # 0/0: overlay's whiteout
        self.meta.add(Record(rel, DELETED))

    def _shown_below(self, rel: str) -> bool:
        """Whether the union of the layer (its own *rel* already removed) and the lower
        layers shows something of a lower layer at *rel*: what a whiteout must hide.

        Nothing there, or hidden already (by a nearer whiteout, a file in the way,
        or an opaque directory above it, this layer's own included), needs none:
        a whiteout over nothing would show in the view as a 0/0 device.
        """
        found = self._in_union(rel, with_layer=True)
        if found is None:
            return False
        os.close(found[1])
        return True

    def _chown(self, fd: int) -> None:
        owner = self.plan.owner
        if owner is None:
            return
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass  # unprivileged: everything stays the user's


def permission_bits(mode: int, default: int) -> int:
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
        warn(f"{applier.dangling} hard links name files in no layer (a trimmed image?); kept in the "
             "metadata only")
    return size

"""A Windows layer's content in and out of the directories a driver hands back.

Applying is :func:`.apply.apply_windows_layer`; this module adds what the store
needs around it: the files Windows rewrites after import (kept as they were
imported, so the layer still re-exports byte for byte), the reassembly getter,
what a layer changed (``Files/...`` paths, tombstones of what the layers below
show included, and the layer's own ``Hives/`` and ``UtilityVM/`` entries) and
the export of those changes in the Windows format (``backuptar``'s entries,
metadata from the chain's sidecars, descriptors in binary).  An export holds
every change or is refused before its first byte: a name Windows would read
otherwise, or a file the format has no entry for (a FIFO, a device, a socket),
refuses it whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Sequence
from typing import BinaryIO

from graphdriver.diff import upper
from graphdriver.diff.changes import Change, ChangeKind, change_sort_key
from graphdriver.diff.walk import contents_differ
from graphdriver.errors import GraphDriverError, NotFound
from graphdriver.fs.confine import find_in_union, open_file_in_root
from graphdriver.fs.tree import walk_tree
from graphdriver.layerio.entry import DIR, LNK, REG, SYM, TarEntry
from graphdriver.layerio.export import LayerWriter
from graphdriver.layerio.getter import FileGetter
from graphdriver.layerio.whiteout import OVERLAY_OPAQUE_XATTR
from graphdriver.layerio.windows import layout, winmeta, wintar
from graphdriver.layerio.windows.wintar import Times, WinMeta

#: Files Windows rewrites in place after import, and where their imported bytes are kept.
MUTATED_FILES: dict[str, str] = {
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD": "bcd.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG": "bcd.log.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG1": "bcd.log1.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG2": "bcd.log2.bak",
}


def own_changes(data_dirs: Sequence[str]) -> list[Change]:
    """What the layer at ``data_dirs[0]`` changed in its ``Files/`` over its ancestors
    (the rest of *data_dirs*, nearest first).

    Paths are relative to ``Files/``.  Without root no whiteout devices were
    made: the sidecar's tombstones say what was deleted.  A tombstone is a
    deletion only where the ancestors' union shows something at its path: one
    of a name no layer below has, or one a layer between deleted already, hides
    nothing, so it changes nothing (as it makes no whiteout in the view); and
    what such a layer deleted is added, not changed, where this layer makes it again.
    An entry whose file looks as it was below is changed still when the layer's sidecar
    gives it other Windows metadata than the layers below do (:class:`_SidecarDiffers`).
    A hard link to a file no layer holds, which lives in the sidecar alone
    (:func:`dangling_links`), is listed as the tarball carries it: added, or changed where
    the layers below show that path; a tombstone of the same path before it is no deletion.
    """
    own = os.path.join(data_dirs[0], layout.FILES)
    lowers = [os.path.join(d, layout.FILES) for d in data_dirs[1:]]
    own_meta = winmeta.LayerMeta.load(data_dirs[0])
    changes = upper.changes(own, lowers, OVERLAY_OPAQUE_XATTR,
                            meta=_SidecarDiffers(own_meta, winmeta.ChainMeta(list(data_dirs[1:]))))
    listed = {c.path for c in changes}
    links = dangling_links(data_dirs[0], own_meta, layout.FILES)
    extra = []
    with _Union(data_dirs[1:]) as below:
        # What a layer between deleted by a tombstone alone (no device: no root) is not
        # there below: made again here, it is added, not changed.
        changes = [Change(c.path, ChangeKind.ADD)
                   if c.kind is ChangeKind.MODIFY and not below.shows(layout.FILES + c.path) else c
                   for c in changes]
        for path in own_meta.tombstones:
            if not path.startswith(layout.FILES + "/") or path in links:
                continue
            rel = path[len(layout.FILES) :]
            if rel not in listed and not os.path.lexists(own + rel) and below.shows(path):
                extra.append(Change(rel, ChangeKind.DELETE))
        # A link to a file no layer holds is in the layer's tarball: added, or changed over
        # what the layers below show there.
        for path in links:
            rel = path[len(layout.FILES) :]
            if rel not in listed:
                extra.append(Change(rel, ChangeKind.MODIFY if below.shows(path) else ChangeKind.ADD))
    if extra:
        changes = sorted([*changes, *extra], key=change_sort_key)
    return changes


def extra_changes(data_dirs: Sequence[str]) -> list[Change]:
    """What the layer at ``data_dirs[0]`` holds beside ``Files/``, as paths from its folder.

    Its ``Hives/`` and ``UtilityVM/`` trees are part of the layer as the seeds
    list it (their change list is every entry of the layer's export, each under
    its own name: ``Hives``, ``Hives/System_Delta``, ``UtilityVM``,
    ``UtilityVM/Files/...``), and part of what the seeds' DiffSize counts.  An
    entry is added where no ancestor (the rest of *data_dirs*) shows that path,
    changed where one does; a tombstone under ``UtilityVM/Files/`` is a deletion
    where an ancestor shows what it deletes, and a link there to a file no layer holds
    (:func:`dangling_links`) an entry as any other.  Sorted by path.
    """
    own = data_dirs[0]
    out: list[Change] = []
    with _Union(data_dirs[1:]) as below:
        for top in (layout.HIVES, layout.UTILITY_VM):
            start = os.path.join(own, top)
            if not os.path.isdir(start) or os.path.islink(start):
                continue
            for path in (top, *(f"{top}/{rel}" for rel, _ in walk_tree(start))):
                out.append(Change("/" + path, ChangeKind.MODIFY if below.shows(path) else ChangeKind.ADD))
        meta = winmeta.LayerMeta.load(own)
        links = dangling_links(own, meta, layout.UTILITY_VM_FILES)
        for path in meta.tombstones:
            if not path.startswith(layout.UTILITY_VM_FILES + "/") or os.path.lexists(os.path.join(own, path)):
                continue
            if path not in links and below.shows(path):
                out.append(Change("/" + path, ChangeKind.DELETE))
        for path in links:
            out.append(Change("/" + path, ChangeKind.MODIFY if below.shows(path) else ChangeKind.ADD))
    return sorted(out, key=change_sort_key)


def dangling_links(data_dir: str, meta: winmeta.LayerMeta, top: str) -> set[str]:
    """The paths under *top* (``Files`` or ``UtilityVM/Files``) of the layer at *data_dir*
    that are hard links to files no layer held when it was applied (trimmed images have
    them): they live in its sidecar *meta* alone and go out in its tarball as links.

    A sandbox's files may have moved on since its apply: a path it holds a file at (a
    container wrote one there) is that file instead, and a link in a folder a container
    deleted (a whiteout or another file in its place, or the folder made again, opaque,
    with no tombstone of the sidecar's to say the apply made it so) went with that folder.
    """
    return {r.path for r in meta.records.values()
            if r.kind == winmeta.LINK and r.dangling and layout.has_path_prefix(r.path, top)
            and r.path != top and _in_sidecar_still(data_dir, meta, r.path)}


def _in_sidecar_still(data_dir: str, meta: winmeta.LayerMeta, path: str) -> bool:
    """Whether nothing the layer's files hold takes the place of the sidecar-only *path*."""
    if os.path.lexists(os.path.join(data_dir, path)):
        return False
    folder = path.rpartition("/")[0]
    while folder:
        where = os.path.join(data_dir, folder)
        try:
            st = os.lstat(where)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if folder not in meta.tombstones and is_opaque(where):
            return False
        folder = folder.rpartition("/")[0]
    return True


def is_opaque(path: str) -> bool:
    """Whether the folder *path* (never followed) carries overlay's opaque mark."""
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


class _SidecarDiffers:
    """Whether the layer's own sidecar says other Windows metadata about a path of its
    ``Files/`` than the layers below do: attributes, security descriptor, junction or not,
    EAs, the other PAX records kept for export, and the alternate data streams (names and
    bytes).  Times are left out, as the generic walk leaves out ctimes: a change of the
    modification time shows in the file itself.

    A path the layer keeps no metadata of (a file a Linux process wrote) has what the
    layers below give it, so its metadata did not change; one that no layer below
    describes, given metadata here, did.
    """

    def __init__(self, own: winmeta.LayerMeta, below: winmeta.ChainMeta) -> None:
        self.own = own
        self.below = below

    def __call__(self, path: str) -> bool:
        name = layout.FILES + path
        rec = self.own.records.get(name)
        if rec is None or rec.kind == winmeta.LINK:
            return False  # a hard link: the metadata of the file it names
        found = self.below.find(name)
        if found is None:
            return True
        old, index = found
        if _sidecar_key(rec.meta) != _sidecar_key(old.meta):
            return True
        return self._streams_differ(name, index)

    def _streams_differ(self, name: str, index: int) -> bool:
        mine = [(s, winmeta.stream_path(self.own.data_dir, name, s)) for s in self.own.streams.get(name, [])]
        theirs = self.below.streams(index, name)
        if [s for s, _ in mine] != [s for s, _ in theirs]:
            return True
        return any(contents_differ(a, b) for (_, a), (_, b) in zip(mine, theirs, strict=True))


def _sidecar_key(meta: WinMeta | None) -> tuple[object, ...] | None:
    """What of *meta* a change of the entry's Windows metadata is told by."""
    if meta is None:
        return None
    return (meta.attributes, meta.security_descriptor, meta.sddl, meta.mountpoint,
            sorted(meta.eas.items()), sorted(meta.extra.items()))


class _Union:
    """What the union of layer folders (nearest first) shows at a path, their sidecars'
    tombstones included (the only record of a deletion where no whiteout device was made)."""

    def __init__(self, data_dirs: Sequence[str]) -> None:
        self.chain = winmeta.ChainMeta(list(data_dirs))
        self.fds: list[int] = []

    def __enter__(self) -> _Union:
        try:
            for d in self.chain.data_dirs:
                self.fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def shows(self, path: str) -> bool:
        """Whether the union shows something at *path* (``Files/...`` or another tree)."""
        if not self.fds:
            return False
        try:
            found = find_in_union(self.fds, path, OVERLAY_OPAQUE_XATTR)
        except OSError:
            return False  # through a symlink of a layer below: nothing the union shows there
        if found is None:
            return False
        index, parent_fd, _ = found
        os.close(parent_fd)
        # A nearer layer that deleted it (or a folder above it) hides it, device or not.
        return not any(self.chain.layer(i).hides(path) for i in range(index))


def export(root: str, changes: list[Change], data_dirs: tuple[str, ...], out: BinaryIO, *,
           own_extras: bool) -> None:
    """Write the layer tarball of *changes* (paths under ``Files/``) of the tree *root*.

    *data_dirs* are the layer's folder and its ancestors', nearest first;
    *own_extras*: the layer's own ``Hives/`` and ``UtilityVM/`` travel with it
    (the diff is against its own parent).
    """
    items: list[tuple[str, str | None]] = []
    own = winmeta.LayerMeta.load(data_dirs[0]) if own_extras else None
    # The layer's own links to files no layer holds: in its sidecar alone (so in its changes).
    links = dangling_links(data_dirs[0], own, layout.FILES) if own is not None else set()
    for c in changes:
        name = layout.FILES + c.path
        if c.kind is ChangeKind.DELETE:
            items.append((name, None))
        else:
            items.append((name, "" if name in links else root + c.path))
    if own is not None:
        items += _own_extras(data_dirs, own)
    for name, path in items:  # all before the first byte: a refused tarball is no half one
        _check_holdable(name, path)
    items.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    exporter = _Exporter(winmeta.ChainMeta(list(data_dirs)), out)
    for name, path in items:
        exporter.add_item(name, path)
    exporter.close()


def _check_holdable(name: str, path: str | None) -> None:
    """Refuse (exit 1) the layer path *name*, the file at *path* (None: a deletion), where
    a Windows layer cannot hold it as itself.

    A ``:`` would read back as an alternate data stream and a ``\\`` as a path
    separator; a FIFO, a device or a socket has no entry in the format at all
    (``backuptar`` writes files, directories and reparse points).  Left out,
    the tarball would hold less than ``changes`` lists, so the whole diff is
    refused and the user says what goes.
    """
    if ":" in name:
        raise GraphDriverError(f"file {'/' + name!r}", "a ':' cannot be in the name of a file of a Windows "
                               "layer (it would read back as an alternate data stream): rename it")
    if wintar.BACKSLASH in name:
        raise GraphDriverError(f"file {'/' + name!r}", "a '\\' cannot be in the name of a file of a Windows "
                               "layer (Windows reads it as a path separator, so the file would land "
                               "elsewhere): rename it")
    if not path:
        return
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # gone since the listing: the writer skips it, as on every driver
    if stat.S_IFMT(mode) not in _KINDS:
        raise _special_file(name, mode)


def _special_file(name: str, mode: int) -> GraphDriverError:
    what = _SPECIAL.get(stat.S_IFMT(mode), "a special file")
    return GraphDriverError(f"file {'/' + name!r}", f"is {what}, which a Windows layer cannot hold (it holds "
                            "files, directories and symlinks): remove it")


class WindowsFileGetter(FileGetter):
    """Contents by archive path: BCD backups, stream files, or the layer's own files."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def open(self, name: str) -> BinaryIO:
        rel = wintar.normalise(name)
        backup = MUTATED_FILES.get(rel)
        if backup is not None:
            with contextlib.suppress(FileNotFoundError):
                return open(os.path.join(self.data_dir, backup), "rb")
        _, stream = wintar.split_stream(rel)
        root = winmeta.streams_root(self.data_dir) if stream is not None else self.data_dir
        try:
            return open_file_in_root(root, rel)
        except FileNotFoundError as e:
            raise NotFound(f"file {name!r}", "not in the layer") from e


def _own_extras(data_dirs: Sequence[str], layer: winmeta.LayerMeta) -> list[tuple[str, str | None]]:
    """What :func:`extra_changes` lists (the layer's own trees beside ``Files/``: ``Hives/``,
    ``UtilityVM/``), as items to write, and ``Files`` itself where its records *layer* give
    it (the volume's root, never listed)."""
    data_dir = data_dirs[0]
    items: list[tuple[str, str | None]] = []
    if layout.FILES in layer.records:
        items.append((layout.FILES, os.path.join(data_dir, layout.FILES)))
    # Links to files no layer holds exist in the metadata only.
    links = dangling_links(data_dir, layer, layout.UTILITY_VM_FILES)
    for c in extra_changes(data_dirs):
        path = c.path[1:]
        if c.kind is ChangeKind.DELETE:
            items.append((path, None))
        else:
            items.append((path, "" if path in links else os.path.join(data_dir, path)))
    return items


class _Exporter(LayerWriter):
    """The Windows format's plug-in of the one exporter: ``backuptar``'s entries, sidecar metadata."""

    def __init__(self, chain: winmeta.ChainMeta, out: BinaryIO) -> None:
        super().__init__(out)
        self.chain = chain
        self.sds: dict[str, bytes | None] = {}
        # The layer the last described entry's metadata came from (-1: none), and its times.
        self.index = -1
        self.times = Times(0, 0, 0, 0)

    def add_item(self, name: str, path: str | None) -> None:
        """Write *name*: a tombstone when *path* is None, a metadata-only link when it is ""."""
        if path is None:
            self.deleted(name)
        elif path == "":
            self._dangling_link(name)
        else:
            self.add(name, path)

    def _dangling_link(self, name: str) -> None:
        found = self.chain.find(name)
        if found is not None:
            rec = found[0]
            mtime = rec.mtime_ns or 0
            times = Times(mtime, rec.atime_ns or mtime, rec.ctime_ns or mtime, mtime)
            self.writer.add(wintar.export_entry(name, LNK, rec.meta or WinMeta(), times, linkname=rec.target))

    def describe(self, name: str, path: str, st: os.stat_result) -> TarEntry | None:
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:  # made since export() checked: a diff holds what changes list, or fails
            raise _special_file(name, st.st_mode)
        meta, times, self.index = self._meta(name, kind, st, self.chain.find(name))
        self.times = times
        if kind == REG:
            return wintar.export_entry(name, REG, meta, times, size=st.st_size)
        linkname = os.readlink(path) if kind == SYM else ""
        return wintar.export_entry(name, kind, meta, times, linkname=linkname)

    def link(self, name: str, first: str, st: os.stat_result) -> TarEntry:
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), REG)
        meta, times, _ = self._meta(name, kind, st, self.chain.find(name))
        return wintar.export_entry(name, LNK, meta, times, linkname=first)

    def after(self, name: str, path: str, st: os.stat_result) -> None:
        """The file's alternate data streams follow it."""
        if self.index < 0 or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return
        for stream, data in self.chain.streams(self.index, name):
            with contextlib.suppress(FileNotFoundError), open(data, "rb", opener=_nofollow) as f:
                size = os.fstat(f.fileno()).st_size
                self.writer.add(wintar.stream_entry(name, stream, size, self.times), f)

    def _meta(self, name: str, kind: str, st: os.stat_result,
              found: tuple[winmeta.Record, int] | None) -> tuple[WinMeta, Times, int]:
        """The metadata and times to write, and the index of the layer they come from (-1: none)."""
        disk = Times(st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns, st.st_mtime_ns)
        if found is not None and found[0].meta is not None:
            rec, index = found
            meta = _as_backuptar_writes(dataclasses.replace(found[0].meta, eas=dict(found[0].meta.eas)))
            if meta.security_descriptor is None and meta.sddl is None and name.startswith(layout.FILES + "/"):
                # Imported without one, the file got the descriptor Windows gives a new file
                # there, and a backup of it (what Docker exports) carries that one.
                meta.security_descriptor = wintar.inherit_security_descriptor(
                    self._sd(name.rpartition("/")[0]), is_dir=kind == DIR)
            creation = meta.creation_ns if meta.creation_ns is not None else st.st_mtime_ns
            if index == 0:
                # The layer's own entry: the times it was applied with.
                return meta, Times(st.st_mtime_ns, rec.atime_ns or st.st_atime_ns,
                                   rec.ctime_ns or st.st_ctime_ns, creation), index
            if kind == REG:
                meta.attributes = wintar.attributes_for(kind, previous=meta.attributes)  # written above
            return meta, dataclasses.replace(disk, creation=creation), index
        parent = name.rpartition("/")[0]
        sd = wintar.inherit_security_descriptor(self._sd(parent), is_dir=kind == DIR)
        attrs = wintar.attributes_for(kind, readonly=not st.st_mode & 0o222 and kind == REG)
        return WinMeta(attributes=attrs, security_descriptor=sd), disk, -1

    def _sd(self, name: str) -> bytes | None:
        """The binary security descriptor of directory *name*, as recorded or inherited."""
        pending = []
        sd: bytes | None = None
        while name:
            if name in self.sds:
                sd = self.sds[name]
                break
            found = self.chain.find(name)
            recorded = _binary_sd(found[0].meta) if found is not None and found[0].meta is not None else None
            if recorded:
                sd = self.sds[name] = recorded
                break
            pending.append(name)
            if name == layout.FILES:
                break
            name = name.rpartition("/")[0]
        for child in reversed(pending):
            sd = self.sds[child] = wintar.inherit_security_descriptor(sd, is_dir=True)
        return sd


_KINDS = {stat.S_IFREG: REG, stat.S_IFDIR: DIR, stat.S_IFLNK: SYM}
_SPECIAL = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFSOCK: "a socket"}


def _as_backuptar_writes(meta: WinMeta) -> WinMeta:
    """*meta* with its descriptor in the form ``backuptar`` writes: binary (``MSWINDOWS.rawsd``).

    ``backuptar`` has written the descriptor a backup stream gives as
    ``MSWINDOWS.rawsd`` since 2016, and reads ``MSWINDOWS.sd`` only from older
    archives; Windows keeps the binary form an imported SDDL text stood for, so
    Docker exports it as ``MSWINDOWS.rawsd``.  An SDDL text that cannot be read
    whole here (a SACL, or what only a Windows machine can resolve) stays
    ``MSWINDOWS.sd``, which every reader still takes, rather than lose a part.
    """
    if meta.security_descriptor is not None or meta.sddl is None:
        return meta
    from graphdriver.layerio.windows import sddl

    try:
        binary = sddl.to_binary(meta.sddl, whole=True)
    except ValueError:
        return meta
    meta.security_descriptor, meta.sddl = binary, None
    return meta


def _binary_sd(meta: WinMeta) -> bytes | None:
    """The binary descriptor *meta* holds, or reads from its SDDL text (None: neither, or an
    SDDL text only a Windows machine can read)."""
    if meta.security_descriptor or meta.sddl is None:
        return meta.security_descriptor
    from graphdriver.layerio.windows import sddl

    try:
        return sddl.to_binary(meta.sddl)
    except ValueError:
        return None


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)

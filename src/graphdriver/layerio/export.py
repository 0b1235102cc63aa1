"""A change set as a layer tarball, and its size.

The tarball of a change set holds, in path order, a whiteout entry for each
deleted path and the file on disk, with its metadata, for each added or
changed one.  Choices, and why:

* Names are relative (no ``/`` or ``./`` in front) and directories end in
  ``/``, as Docker writes them; tools compare names literally.
* Owners are numeric only (empty uname/gname: no user database is consulted,
  the layer's ``/etc/passwd`` is not the host's) and are mapped back through
  the id maps, since the layer on disk holds host ids.
* Modification times keep their nanoseconds (the writer adds a PAX ``mtime``
  record when there is a fraction), so diff then apply is exact.  Access and
  change times are left out: they change on every read and would make two
  exports of one tree differ.
* Every extended attribute is exported except those :mod:`graphdriver.layerio.xattrs`
  leaves out (``security.selinux``, overlayfs' own).
* Sockets are left out: tar has no type for them (GNU tar and Docker skip
  them too).
* Files that vanish between the walk and the export are skipped quietly: a
  running container may delete files while its diff is taken.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from graphdriver.diff.changes import Change, ChangeKind, change_sort_key
from graphdriver.errors import GraphDriverError, InvalidArgument
from graphdriver.fs.longpaths import ShortPaths
from graphdriver.fs.overlayfs import is_whiteout
from graphdriver.fs.ownfiles import open_readable
from graphdriver.idmap import IDMappings
from graphdriver.layerio.entry import BLK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry
from graphdriver.layerio.tarstream import TarWriter
from graphdriver.layerio.whiteout import WHITEOUT_PREFIX
from graphdriver.layerio.xattrs import read_xattrs
from graphdriver.typed import cast

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

# Errors of an entry that disappeared or was replaced while being exported.
_VANISHED = (FileNotFoundError, NotADirectoryError)

# The identity maps (frozen, so one shared default is safe).
NO_ID_MAPS = IDMappings()

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def whiteout_entry(path: str) -> TarEntry:
    """The whiteout entry deleting the layer path *path* (``/a/b`` gives ``a/.wh.b``).

    A regular file of size 0, mode 0, owned by 0:0 as Docker writes it, but
    with mtime 0 where Docker puts the current time, so that exporting the
    same change set twice gives the same bytes.
    """
    parent, _, base = path.strip("/").rpartition("/")
    name = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
    return TarEntry(name=name, type=REG, size=0, mode=0, mtime_ns=0)


def refuse_reserved_name(name: str) -> None:
    """Raise if a component of the archive name *name* starts with ``.wh.``.

    Docker and podman reserve the prefix: in a layer tarball such a name is a
    whiteout (``.wh..wh..opq`` an opaque marker), so a file a container made
    with that name cannot be exported as itself.  Exit code 1: the content is
    what the format cannot carry (as an import entry a layer cannot hold).
    """
    for comp in name.split("/"):
        if comp.startswith(WHITEOUT_PREFIX):
            raise GraphDriverError(
                f"file {'/' + name!r}",
                f"{comp!r} starts with {WHITEOUT_PREFIX}, which layer tarballs reserve for "
                "whiteouts (it would delete, not add): rename or remove it",
            )


def entry_from_stat(path: str, relpath: str, st: os.stat_result, idmaps: IDMappings) -> TarEntry | None:
    """The tar entry for the file *relpath* of a tree, at *path*, described by its lstat *st*.

    *relpath* has no leading ``/``.  The entry carries no data: for a regular
    file the caller writes ``entry.size`` bytes of it.  Returns None for a
    socket, which tar cannot hold.  Raises ``FileNotFoundError`` if the file
    vanished and :class:`GraphDriverError` if its owner is outside the id maps.
    """
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return None
    entry = _owned_entry(relpath + "/" if stat.S_ISDIR(mode) else relpath, relpath, st, idmaps)
    _set_type(entry, path, st)
    entry.xattrs = read_xattrs(path)
    return entry


def _owned_entry(name: str, relpath: str, st: os.stat_result, idmaps: IDMappings) -> TarEntry:
    """An entry named *name* with the mode, owners (to container ids) and mtime of *st*."""
    return TarEntry(
        name=name,
        mode=stat.S_IMODE(st.st_mode),
        uid=_to_container(idmaps, relpath, st.st_uid, uid=True),
        gid=_to_container(idmaps, relpath, st.st_gid, uid=False),
        mtime_ns=st.st_mtime_ns,
    )


def _set_type(entry: TarEntry, path: str, st: os.stat_result) -> None:
    """Fill in the type-specific fields of *entry* from *st*."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        entry.type, entry.size = REG, st.st_size
    elif stat.S_ISDIR(mode):
        entry.type = DIR
    elif stat.S_ISLNK(mode):
        entry.type, entry.linkname = SYM, os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.type = CHR if stat.S_ISCHR(mode) else BLK
        entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        entry.type = FIFO
    else:
        raise InvalidArgument(f"file {entry.name!r}", f"unknown file type {stat.S_IFMT(mode):o}")


def _to_container(idmaps: IDMappings, relpath: str, host_id: int, *, uid: bool) -> int:
    idmap = idmaps.uids if uid else idmaps.gids
    try:
        return idmap.to_container(host_id)
    except InvalidArgument as e:
        # The layer's data, not the command, is at fault: no usage error (2).
        which = "owner" if uid else "group"
        raise GraphDriverError(
            f"file {relpath!r}", f"{which} {host_id} is not covered by the layer's id map, so a tarball "
            "cannot give it a container id"
        ) from e


class LayerWriter:
    """The one exporter: entries in the order given, file data streamed, hard links found.

    A layer format plugs in by subclassing: :meth:`describe` gives the entry of
    a file, :meth:`link` the entry of a second name of an inode already
    written, :meth:`after` may write more entries after a file's (Windows'
    alternate data streams).  What the base does for every format: a regular
    file is opened without following a symlink and described by what was
    opened, so header and data agree; a file that shrinks while it is read is
    padded with zeros to the size the header promised; a file that vanishes
    between the listing and the export is skipped quietly (a running
    container may delete files while its diff is taken).
    """

    def __init__(self, out: BinaryIO) -> None:
        self.writer = TarWriter(out)
        #: ``(st_dev, st_ino)`` -> the archive name written first.
        self.hardlinks: dict[tuple[int, int], str] = {}

    def describe(self, name: str, path: str, st: os.stat_result) -> TarEntry | None:
        """The entry of *name*, the file at *path* described by *st*; None leaves it out."""
        raise NotImplementedError

    def link(self, name: str, first: str, st: os.stat_result) -> TarEntry:
        """The entry of *name*, a second name of the inode first written as *first*."""
        raise NotImplementedError

    def after(self, name: str, path: str, st: os.stat_result) -> None:
        """Called once the entry (and data) of *name* is written."""

    def deleted(self, name: str) -> None:
        """Write the whiteout deleting *name*."""
        self.writer.add(whiteout_entry(name))

    def add(self, name: str, path: str) -> None:
        """Write *name*, the file at *path* as it is now; nothing if it is gone.

        A path is looked at (lstat) right before it is opened, and opened only as a regular
        file, however it was found before: what a live container put there since (a device
        node, whose opening can act: a watchdog's starts it) is never opened.  Refuses a
        name with a ``.wh.`` component: written, it would be a whiteout, deleting where the
        file was added.
        """
        if WHITEOUT_PREFIX in name:
            refuse_reserved_name(name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or (st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.hardlinks):
                self._write(name, path, st, None)
                return
            try:
                fd = open_readable(path, None, _OPEN_FLAGS)
            except OSError as e:
                if e.errno == errno.ELOOP:  # replaced by a symlink since the lstat
                    return
                raise
            try:
                st = os.fstat(fd)  # describe what was opened, so that the header and the data agree
                if stat.S_ISREG(st.st_mode):
                    self._write(name, path, st, fd)
            finally:
                os.close(fd)
        except _VANISHED:
            return

    def _write(self, name: str, path: str, st: os.stat_result, fd: int | None) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            first = self.hardlinks.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                # The inode's data and metadata went out with its first name.
                self.writer.add(self.link(name, first, st))
                return
        entry = self.describe(name, path, st)
        if entry is None:
            return
        # The writer reads exactly entry.size bytes; a file that grew is cut there.
        data = cast("BinaryIO", _ZeroPadded(fd)) if fd is not None and entry.size else None
        self.writer.add(entry, data)
        self.after(name, path, st)

    def close(self) -> None:
        self.writer.close()


class _OCIWriter(LayerWriter):
    """Docker's layer format: numeric owners mapped back to container ids, xattrs, devices."""

    def __init__(self, out: BinaryIO, idmaps: IDMappings) -> None:
        super().__init__(out)
        self.idmaps = idmaps

    def describe(self, name: str, path: str, st: os.stat_result) -> TarEntry | None:
        if is_whiteout(st):
            # Overlay's whiteout: import refuses it, so no tarball of ours carries one.
            raise GraphDriverError(
                f"file {'/' + name!r}",
                "is a 0/0 character device, overlayfs's whiteout, which no layer tarball "
                "carries: remove it",
            )
        return entry_from_stat(path, name, st, self.idmaps)

    def link(self, name: str, first: str, st: os.stat_result) -> TarEntry:
        entry = _owned_entry(name, name, st, self.idmaps)
        entry.type, entry.linkname = LNK, first
        return entry


def export_changes(
    root: str, changes: Iterable[Change], out: BinaryIO, idmaps: IDMappings = NO_ID_MAPS
) -> None:
    """Write the layer tarball of *changes* (paths within the tree at *root*) to *out*.

    Deletions become whiteouts (:func:`whiteout_entry`), additions and changes
    the file as it is now under *root* (:func:`entry_from_stat`); a second name
    of an inode already written becomes a hard link to the first.  Entries are
    written in :func:`change_sort_key` order whatever the order of *changes*.
    File data is streamed, never held whole in memory.  *out* is not closed.
    """
    writer = _OCIWriter(out, idmaps)
    delete = ChangeKind.DELETE
    top = root if root.endswith("/") else root + "/"
    with ShortPaths() as short:
        for change in sorted(changes, key=change_sort_key):
            path = change.path
            if change.kind is delete:
                writer.deleted(path)
            else:
                relpath = path.lstrip("/")
                writer.add(relpath, short(top + relpath))
    writer.close()


class _ZeroPadded:
    """Reads a file descriptor, then zeros once the file ends.

    The header promised the size seen by fstat; a file that a running
    container truncates while it is archived must still give that many bytes
    or the rest of the stream is misaligned.  GNU tar pads with zeros too.
    Only ``read`` is provided: it is all the writer uses.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, n: int) -> bytes:
        chunk = os.read(self._fd, n)
        return chunk if chunk else bytes(n)



"""Changes and diffs read from an overlay layer's own upper directory.

The generic walk (:mod:`graphdriver.diff.walk`) compares the whole union
view of a layer with its parent's, so its cost grows with the image.  An
overlay layer's upper directory already holds exactly what the layer
changed, so reading it costs what the layer holds, plus a few lookups in the
layers below for each entry found:

* a 0/0 character device is a whiteout: the path is deleted if it exists
  below;
* a directory whose opaque xattr (``trusted.overlay.opaque`` or, for
  ``userxattr`` mounts, ``user.overlay.opaque``) is ``y`` hides what was
  below it, so whatever exists below and not in the upper directory is
  deleted;
* anything else is added when nothing is there below, and otherwise changed
  if the generic walk's comparison says so, with the bytes of every regular
  file whose stat looks unchanged compared (the upper directory holds only
  what the layer wrote or copied up, so this reads little: a file written
  with the size and time it had below is a change, a file copied up and left
  as it was is not);
* a format that keeps more beside the files (the Windows metadata sidecar)
  may say what else makes an entry changed (*meta*).

Each entry is looked at as little as its case needs: its directory entry's type says
whether it is a folder, a regular file or a symlink, so only an entry the view below also
holds (to compare the two), a device or other special file (a whiteout?), and for
:func:`size` an added regular file is stat'd; an added entry is listed as its directory
entry shows it (one removed meanwhile from a live layer too, as a file removed just after
its look would be).  The sizes :func:`size` adds up come from the same looks.

"Below" is the parent's union view, computed the way overlayfs does: the
lower directories nearest first, a whiteout or a non-directory hides
everything further down, an opaque directory hides the rest of its own
subtree.  The result is the generic walk's change list entry for entry,
including the rule that every directory above a change is changed too.

Export writes the tarball conventions: ``.wh.<name>`` for each deletion and
``<dir>/.wh..wh..opq`` for an opaque directory that hides something the view
below shows (the deletions it implies are not listed one by one; what the
layer holds below it travels with the marker).  An opaque directory that hides
nothing (made again with what was there, by an apply of the same opaque folder
or ``rm -rf d; cp -a``) is no change: it gets no marker, and the tarball holds
what the change list holds, as the generic walk's does.  Redirected directories and
metacopy files (``redirect_dir``, ``metacopy``) are not understood here; the
overlay driver turns both off and uses the generic walk where they may be on.
"""

from __future__ import annotations

import errno
import os
import stat

from graphdriver.diff.changes import Change, ChangeKind
from graphdriver.diff.walk import EVERY_FILE, Links, Walk, differs, finish
from graphdriver.fs.longpaths import ShortPaths
from graphdriver.fs.overlayfs import is_whiteout
from graphdriver.layerio.whiteout import OPAQUE_WHITEOUT, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import BinaryIO

    from graphdriver.idmap import IDMappings

    #: Whether what a format keeps beside the file at a path (relative to the upper
    #: directory) differs from what the layers below keep about it.
    MetaDiffers = Callable[[str], bool]

#: The change that :func:`~graphdriver.layerio.export.whiteout_entry` turns into
#: ``<dir>/.wh..wh..opq``: the whiteout of the reserved name ``.wh..opq``.
_OPAQUE_MARKER = OPAQUE_WHITEOUT[len(WHITEOUT_PREFIX) :]

_GONE = (FileNotFoundError, NotADirectoryError)


class Scan(Plain):
    """What one reading of an upper directory found."""

    __slots__ = ("carried", "changes", "implied", "linked", "opaque", "size")

    def __init__(self) -> None:
        #: The changes, sorted by path, exactly as the generic walk lists them.
        self.changes: list[Change] = []
        #: Opaque directories of the layer that hide something below (they get a marker in a
        #: tarball).
        self.opaque: list[str] = []
        #: Directories whose deletions below are implied by an opaque marker at or above them.
        self.implied: set[str] = set()
        #: Everything of the layer below (and including) an opaque directory with a marker:
        #: the marker hides what was below, so these must travel with it, changed or not.
        self.carried: list[str] = []
        #: With sizes counted (see :func:`scan`): the bytes of the added or changed regular
        #: files of one name, and the paths of those of several names, whose inodes count once.
        self.size = 0
        self.linked: list[str] = []


class _Reader:
    """One scan: the upper root, the lower roots and the comparison state per lower."""

    def __init__(self, upper: str, lowers: Sequence[str], opaque_xattr: str,
                 meta: MetaDiffers | None = None, sizes: bool = False) -> None:
        self.upper = upper
        self.lowers = tuple(lowers)
        self.opaque_xattr = opaque_xattr
        self.meta = meta
        self.sizes = sizes
        self.scan = Scan()
        self._walks: dict[str, Walk] = {}
        self.links = Links()
        #: Added entries, not folders, looked at by their directory entry alone: their inodes
        #: matter only if the layer has unchanged names of several-named files.
        self.unstated: list[str] = []
        #: Names of its paths within the kernel's limit (a layer's may be longer).
        self.short = ShortPaths()

    def add(self, path: str, kind: ChangeKind) -> None:
        self.scan.changes.append(Change(path, kind))

    def is_opaque(self, path: str) -> bool:
        try:
            return os.getxattr(self.short(path), self.opaque_xattr, follow_symlinks=False) == b"y"
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
                return False
            raise

    def differs(self, root: str, path: str, new: os.stat_result, old: os.stat_result) -> bool:
        # The generic walk's own comparison, so that both list the same changes; every
        # entry here was written or copied up since the layer was made.
        walk = self._walks.get(root)
        if walk is None:
            walk = self._walks[root] = Walk(self.upper, root, since=EVERY_FILE, short=self.short)
        return differs(walk, path, new, old) or (self.meta is not None and self.meta(path))

    # ----- the layers below ---------------------------------------------------------------

    def below(self, roots: tuple[str, ...], path: str) -> tuple[str, os.stat_result] | None:
        """The entry the parent's view has at *path* (its lower root and lstat), or None."""
        quick = self.short.quick
        if len(roots) == 1:  # a layer on one other, or a folder only one of them has
            full = roots[0] + path
            try:
                st = os.lstat(full if len(full) < quick else self.short(full))
            except _GONE:
                return None
            return None if is_whiteout(st) else (roots[0], st)
        for root in roots:
            full = root + path
            try:
                st = os.lstat(full if len(full) < quick else self.short(full))
            except _GONE:
                continue
            return None if is_whiteout(st) else (root, st)
        return None

    def dir_roots(self, roots: tuple[str, ...], path: str) -> tuple[str, ...]:
        """The lower roots whose directory *path* makes up the parent's view of it."""
        out: list[str] = []
        for root in roots:
            try:
                st = os.lstat(self.short(root + path))
            except _GONE:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a file hides everything further down
            out.append(root)
            if self.is_opaque(root + path):
                break
        return tuple(out)

    def listing(self, roots: tuple[str, ...], rel: str) -> set[str]:
        """The names the parent's view has in directory *rel*."""
        seen: set[str] = set()
        hidden: set[str] = set()
        for root in roots:
            try:
                entries = self.short.entries(root + rel).values()
            except _GONE:
                continue
            for e in entries:
                name = e.name
                if name in seen or name in hidden:
                    continue
                if _entryis_whiteout(e):
                    hidden.add(name)
                else:
                    seen.add(name)
        return seen

    # ----- the upper directory ----------------------------------------------------------

    def run(self) -> Scan:
        # (directory, lower roots of its view below, whether an opaque directory is at or above it)
        pending: list[tuple[str, tuple[str, ...], bool]] = [("", self.lowers, False)]
        with self.short:
            while pending:
                rel, roots, opaque_above = pending.pop()
                pending.extend(self.directory(rel, roots, opaque_above))
            if self.links.unchanged:
                self.note_unstated()
        if self.sizes:
            self.scan.linked += [c.path for c in self.links.partners()]
        finish(self.scan.changes, self.links)
        self.drop_idle_markers()
        return self.scan

    def note_unstated(self) -> None:
        """Note the inodes of the added entries not looked at: a file has unchanged names."""
        for path in self.unstated:
            try:
                st = os.lstat(self.short(self.upper + path))
            except _GONE:
                continue
            self.links.note(path, st, True)

    def drop_idle_markers(self) -> None:
        """Forget the opaque directories that hide nothing: no deletion at or below them.

        Every name the view below shows there is then in the layer too, unchanged or listed
        as changed, so the tarball without the marker and the unchanged copies makes the same
        view.  With them it would hold what ``changes`` and ``diffsize`` do not list (and
        lack the folders above, which only a change brings), where a full copy's walk writes
        nothing.
        """
        scan = self.scan
        if not scan.opaque:
            return
        hiding: set[str] = set()  # the folders above a deletion
        for change in scan.changes:
            if change.kind is ChangeKind.DELETE:
                above = change.path.rpartition("/")[0]
                while above and above not in hiding:
                    hiding.add(above)
                    above = above.rpartition("/")[0]
        kept = [d for d in scan.opaque if d in hiding]
        if len(kept) < len(scan.opaque):
            scan.opaque = kept
            marked = set(kept)
            scan.carried = [p for p in scan.carried if _at_or_below(p, marked)]

    def directory(
        self, rel: str, roots: tuple[str, ...], opaque_above: bool
    ) -> list[tuple[str, tuple[str, ...], bool]]:
        """The changes of the direct entries of upper directory *rel*; returns the subdirectories."""
        try:
            entries = self.short.entries(self.upper + rel)
        except _GONE:
            return []
        own_opaque = bool(rel) and self.is_opaque(self.upper + rel)
        opaque = opaque_above or own_opaque
        if opaque and roots:
            if own_opaque and not opaque_above:
                self.scan.opaque.append(rel)
                self.scan.carried.append(rel)
            self.scan.implied.add(rel)
            for name in self.listing(roots, rel):
                e = entries.get(name)
                if e is None or _entryis_whiteout(e):
                    self.add(f"{rel}/{name}", ChangeKind.DELETE)
        subdirs: list[tuple[str, tuple[str, ...], bool]] = []
        append = self.scan.changes.append
        carry = opaque and bool(roots or opaque_above)
        for name, e in entries.items():
            path = f"{rel}/{name}"
            # The directory entry's type says nearly always what it is, without a stat.
            is_dir = e.is_dir(follow_symlinks=False)
            st: os.stat_result | None = None
            if not is_dir and not e.is_file(follow_symlinks=False) and not e.is_symlink():
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if is_whiteout(st):
                    if not opaque and roots and self.below(roots, path) is not None:
                        self.add(path, ChangeKind.DELETE)
                    continue
            old = self.below(roots, path) if roots else None
            if old is None:
                if carry:
                    self.scan.carried.append(path)
                append(Change(path, ChangeKind.ADD))
                if is_dir:
                    subdirs.append((path, (), opaque))
                else:
                    self.added(path, e, st)
                continue
            if st is None:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
            if carry:
                self.scan.carried.append(path)
            root, old_st = old
            changed = self.differs(root, path, st, old_st)
            if changed:
                append(Change(path, ChangeKind.MODIFY))
                if self.sizes:
                    self.count(path, st)
            if st.st_nlink > 1:  # (the upper directory's own count: one name has no partner)
                self.links.note(path, st, changed, old_st)
            if is_dir:
                below = self.dir_roots(roots, path) if stat.S_ISDIR(old_st.st_mode) else ()
                subdirs.append((path, below, opaque))
        return subdirs

    def added(self, path: str, e: os.DirEntry[str], st: os.stat_result | None) -> None:
        """Note the added entry *path*, no folder (*st*: its lstat, if taken)."""
        if st is None and self.sizes and e.is_file(follow_symlinks=False):
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                return
        if st is None:
            self.unstated.append(path)
            return
        if st.st_nlink > 1:
            self.links.note(path, st, True)
        if self.sizes:
            self.count(path, st)

    def count(self, path: str, st: os.stat_result) -> None:
        """Count the size of the added or changed entry *path*, if a regular file."""
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink == 1:
                self.scan.size += st.st_size
            else:
                self.scan.linked.append(path)


def _at_or_below(path: str, folders: set[str]) -> bool:
    """Whether *path* is one of *folders* or inside one."""
    while path:
        if path in folders:
            return True
        path = path.rpartition("/")[0]
    return False


def _entryis_whiteout(e: os.DirEntry[str]) -> bool:
    # d_type answers for nearly every entry without a stat.
    if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False) or e.is_symlink():
        return False
    try:
        return is_whiteout(e.stat(follow_symlinks=False))
    except FileNotFoundError:
        return False


# ----- the public face ---------------------------------------------------------------------------


def scan(upper: str, lowers: Sequence[str], opaque_xattr: str = OVERLAY_OPAQUE_XATTR,
         meta: MetaDiffers | None = None, sizes: bool = False) -> Scan:
    """Read what the layer with upper directory *upper* changed over *lowers* (nearest first).

    *meta* says whether an entry in both whose files look the same differs in what the
    layer format keeps beside its files.  *sizes*: count the sizes of the added and changed
    files too (:func:`size`), which takes a look at each added file.
    """
    os.lstat(upper)  # a missing upper directory is an error, not an empty layer
    return _Reader(upper, lowers, opaque_xattr, meta, sizes).run()


def changes(upper: str, lowers: Sequence[str], opaque_xattr: str = OVERLAY_OPAQUE_XATTR,
            meta: MetaDiffers | None = None) -> list[Change]:
    """The layer's changes, sorted by path (see the module docstring and :func:`scan`)."""
    return scan(upper, lowers, opaque_xattr, meta).changes


def export_changeset(result: Scan) -> list[Change]:
    """The changes to write in a tarball.

    Deletions an opaque marker implies are dropped, the markers added, and
    whatever the layer holds below a marker is added too (unchanged entries
    included: the marker hides their copies below).
    """
    out = [
        c
        for c in result.changes
        if not (c.kind is ChangeKind.DELETE and c.path.rpartition("/")[0] in result.implied)
    ]
    listed = {c.path for c in out}
    out += [Change(p, ChangeKind.MODIFY) for p in result.carried if p not in listed]
    out += [Change(f"{d}/{_OPAQUE_MARKER}", ChangeKind.DELETE) for d in result.opaque]
    return out


def export(
    upper: str,
    lowers: Sequence[str],
    out: BinaryIO,
    idmaps: IDMappings | None = None,
    opaque_xattr: str = OVERLAY_OPAQUE_XATTR,
) -> None:
    """Write the layer tarball of the layer with upper directory *upper* to *out* (*idmaps*:
    how the layer stores ids, identity when None)."""
    # The tar writer is loaded by the commands that write a tarball only.
    from graphdriver.layerio.export import NO_ID_MAPS, export_changes

    result = scan(upper, lowers, opaque_xattr)
    export_changes(upper, export_changeset(result), out, NO_ID_MAPS if idmaps is None else idmaps)


def size(upper: str, lowers: Sequence[str], opaque_xattr: str = OVERLAY_OPAQUE_XATTR) -> int:
    """Bytes of regular files the layer added or changed (hardlinked inodes once).

    The sizes come from the scan's own look at each file; only files of several names are
    looked at again, to count each inode once.
    """
    from graphdriver.diff.size import changes_size

    result = scan(upper, lowers, opaque_xattr, sizes=True)
    if not result.linked:
        return result.size
    return result.size + changes_size(upper, [Change(p, ChangeKind.MODIFY) for p in result.linked])

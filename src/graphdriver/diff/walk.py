"""The generic ("naive") changes between two directory trees.

Drivers with no cheaper way to know what a layer changed (``vfs``, or any
driver comparing two mounted views) walk the layer's tree and its parent's
side by side.  The rules are ``docker diff``'s:

* a path only in the new tree is added (``A``), and so is everything below
  an added directory;
* a path only in the old tree is deleted (``D``); its descendants are not
  listed, the deletion of a directory implies them;
* a path in both is changed (``C``) when its type or mode bits, owner, group,
  device number or extended attributes (those a layer tarball carries; Docker
  compares ``security.capability`` alone) differ, or, for non-directories,
  its size, modification time or symlink target.  Times are Docker's: equal
  to the second, one side without a fraction, is equal (a file from a plain
  tar header and its copy).  A directory whose only difference is its mtime
  or size is *not* changed: those move whenever an entry inside is touched,
  and the entry itself is reported;
* a regular file whose stat says nothing changed may still hold other bytes
  (a tarball or a ``cp -p`` wrote new bytes of the same size and kept the
  time), so its bytes are compared where it may have been written since the
  new tree was made from the old: when either side's inode change time
  (``ctime``, which no call sets at will) is at or after *since*, the moment
  the layer's tree was made on its parent's (see
  :meth:`~graphdriver.drivers.base.Driver.written_since`).  Older files are
  the driver's own copies, untouched since, and are not read: the walk never
  reads whole trees.  Without *since* (a layer made before that moment was
  recorded, or a tree compared with another than the one it was made from)
  only a file whose times are equal to the second alone is read, so that a
  write in the very second a plain tar header gave is not lost;
* a directory in both trees with any change below it is changed too, up to
  (not including) the root, so that exporting the change set also carries the
  directory's own metadata;
* a type change is a change of the path.  When a directory became something
  else its old contents are not listed as deleted (the new entry replaces the
  whole subtree); when something else became a directory everything in it is
  added;
* an entry that is the very same object on both sides (equal ``st_dev`` and
  ``st_ino``, as with hardlinked copies or a shared lower layer) is skipped
  with its whole subtree;
* a file in both trees that nothing above calls changed, but that shares its
  inode with an added or changed file (``ln a b`` in a container: ``b`` is
  added, ``a`` is as it was), is changed too, so that the tarball carries the
  link rather than a second copy (containers-storage lists it the same way);
  and so is every name of a file whose names were separate files in the old
  tree (``rm b; ln a b`` where ``a`` and ``b`` were two files: both changed,
  the tarball carrying ``b`` as a link to ``a``).
"""

from __future__ import annotations

import os
import stat

from graphdriver.diff.changes import Change, ChangeKind, change_sort_key
from graphdriver.fs.longpaths import ShortPaths
from graphdriver.fs.ownfiles import open_readable
from graphdriver.layerio.xattrs import read_xattrs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Links:
    """Hard-linked files met in one comparison, to list the unchanged names of a changed or
    joined inode."""

    __slots__ = ("changed", "joined", "unchanged", "was")

    def __init__(self) -> None:
        self.changed: set[tuple[int, int]] = set()
        self.unchanged: dict[tuple[int, int], list[str]] = {}
        #: The old tree's file at the first unchanged name of each inode, and the inodes whose
        #: unchanged names were other files there (``rm b; ln a b``: joined since).
        self.was: dict[tuple[int, int], tuple[int, int]] = {}
        self.joined: set[tuple[int, int]] = set()

    def note(self, path: str, st: os.stat_result, listed: bool, old: os.stat_result | None = None) -> None:
        """Remember file *path* of the new tree; *listed*: added or changed; *old*: its lstat
        in the old tree.

        An unchanged file matters only with other names; a changed one always, as
        fuse-overlayfs may count one name of a linked file only.
        """
        if stat.S_ISDIR(st.st_mode):
            return
        key = (st.st_dev, st.st_ino)
        if listed:
            self.changed.add(key)
        elif st.st_nlink > 1:
            self.unchanged.setdefault(key, []).append(path)
            if old is not None:
                before = (old.st_dev, old.st_ino)
                if self.was.setdefault(key, before) != before:
                    self.joined.add(key)

    def partners(self) -> list[Change]:
        """The unchanged names of every inode that also has an added or changed name, or whose
        names were separate files in the old tree."""
        keys = (self.changed | self.joined).intersection(self.unchanged)
        return [Change(path, ChangeKind.MODIFY) for key in keys for path in self.unchanged[key]]


#: A *since* before any file's time: every regular file whose stat looks unchanged is read
#: (an overlay upper directory holds only what its layer wrote or copied up, so it is cheap).
EVERY_FILE = -(1 << 63)


class Walk:
    """State of one comparison: the two roots and what was found so far."""

    __slots__ = ("changes", "links", "new_root", "old_root", "owner", "short", "since")

    def __init__(self, new_root: str, old_root: str | None,
                 owner: Callable[[int, int], tuple[int, int]] | None = None,
                 since: int | None = None, short: ShortPaths | None = None) -> None:
        self.new_root = new_root
        self.old_root = old_root
        #: The old tree's (uid, gid) as the new tree would store them (layers with other id maps).
        self.owner = owner
        #: Files with a ctime (ns) at or after this may have been written since the new tree
        #: was made from the old: their bytes are compared (None: not known).
        self.since = since
        self.changes: list[Change] = []
        self.links = Links()
        #: Names of its paths within the kernel's limit (a layer's may be longer).
        self.short = short if short is not None else ShortPaths()

    def add(self, path: str, kind: ChangeKind) -> None:
        self.changes.append(Change(path, kind))


def changes_between(new_root: str, old_root: str | None,
                    owner: Callable[[int, int], tuple[int, int]] | None = None,
                    since: int | None = None) -> list[Change]:
    """What the tree at *new_root* changed relative to the tree at *old_root*.

    ``old_root=None`` stands for an empty tree: everything is added.  Paths are
    absolute within the layer (``/etc/passwd``), the root is never listed, and
    the list is sorted by the bytes of the path (the order tar tools and Go's
    sort use; it differs from ``str`` order only for names that are not UTF-8).
    Names that are not UTF-8 appear decoded with ``surrogateescape``, as
    :mod:`os` returns them.  Entries that vanish during the walk count as absent.
    *owner* translates the old tree's owners before they are compared, when the
    two trees store ids under different maps.  *since* is when the new tree was
    made on the old (in ns, of the clock of file times; see the module
    docstring): files changed at or after it are compared byte for byte.
    """
    # Missing roots are errors (FileNotFoundError), not empty trees.
    new_st = os.lstat(new_root)
    if old_root is not None and _same_object(new_st, os.lstat(old_root)):
        return []
    with ShortPaths() as short:
        walk = Walk(new_root, old_root, owner, since, short)
        # An explicit stack rather than recursion: directory depth is input data.
        pending: list[tuple[str, bool]] = [("", old_root is not None)]
        while pending:
            rel, in_old = pending.pop()
            pending.extend(_compare_dir(walk, rel, in_old))
    return finish(walk.changes, walk.links)


def finish(changes: list[Change], links: Links) -> list[Change]:
    """*changes* with the unchanged names of changed hard links and every directory above
    a change added (see the module docstring), sorted."""
    changes += links.partners()
    _add_parents(changes)
    changes.sort(key=change_sort_key)
    return changes


def _same_object(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _scan(short: ShortPaths, path: str) -> dict[str, os.DirEntry[str]]:
    """The entries of directory *path* by name; empty if it vanished or was replaced."""
    try:
        return short.entries(path)
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's lstat (cached by the DirEntry), or None if it vanished."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _compare_dir(walk: Walk, rel: str, in_old: bool) -> list[tuple[str, bool]]:
    """Compare the directory *rel* ("" for the root) of both trees.

    Records the changes of its direct entries and returns the subdirectories
    still to visit, each with whether the old tree has a directory there too
    (when it has not, everything below is added).
    """
    new_entries = _scan(walk.short, walk.new_root + rel)
    old_entries = _scan(walk.short, walk.old_root + rel) if in_old and walk.old_root is not None else {}
    subdirs: list[tuple[str, bool]] = []
    for name in sorted(new_entries.keys() | old_entries.keys()):
        path = f"{rel}/{name}"
        new_entry = new_entries.get(name)
        new_st = _lstat(new_entry) if new_entry is not None else None
        old_entry = old_entries.get(name)
        old_st = _lstat(old_entry) if old_entry is not None else None
        if new_st is None:
            if old_st is not None:
                walk.add(path, ChangeKind.DELETE)
            continue
        new_is_dir = stat.S_ISDIR(new_st.st_mode)
        if old_st is None:
            walk.add(path, ChangeKind.ADD)
            walk.links.note(path, new_st, True)
            if new_is_dir:
                subdirs.append((path, False))
            continue
        if _same_object(new_st, old_st):
            continue
        changed = differs(walk, path, new_st, old_st)
        if changed:
            walk.add(path, ChangeKind.MODIFY)
        walk.links.note(path, new_st, changed, old_st)
        if new_is_dir:
            subdirs.append((path, stat.S_ISDIR(old_st.st_mode)))
    return subdirs


def differs(walk: Walk, path: str, new: os.stat_result, old: os.stat_result) -> bool:
    """Whether an entry present in both trees changed (see the module docstring)."""
    if new.st_mode != old.st_mode or new.st_rdev != old.st_rdev:
        return True
    if walk.owner is None:  # the common case, per entry of every walk: no tuples
        if new.st_uid != old.st_uid or new.st_gid != old.st_gid:
            return True
    elif (new.st_uid, new.st_gid) != walk.owner(old.st_uid, old.st_gid):
        return True
    mode = new.st_mode
    assert walk.old_root is not None
    if not stat.S_ISDIR(mode) and (
            new.st_size != old.st_size or not _same_mtime(new.st_mtime_ns, old.st_mtime_ns)):
        return True
    new_path, old_path = walk.new_root + path, walk.old_root + path
    if len(new_path) >= walk.short.quick or len(old_path) >= walk.short.quick:  # rare: no call otherwise
        new_path, old_path = walk.short(new_path), walk.short(old_path)
    # The costlier checks last, only for entries whose stat looks unchanged.
    if stat.S_ISLNK(mode):
        try:
            if os.readlink(new_path) != os.readlink(old_path):
                return True
        except FileNotFoundError:
            return True  # replaced while we looked: report it, export skips what is gone
    elif (stat.S_ISREG(mode) and new.st_size and _may_be_rewritten(walk, new, old)
          and contents_differ(new_path, old_path)):
        return True
    return _xattrs(new_path) != _xattrs(old_path)


def _may_be_rewritten(walk: Walk, new: os.stat_result, old: os.stat_result) -> bool:
    """Whether a regular file whose stat is the old one's may still hold other bytes."""
    since = walk.since
    # Changed (written, or its metadata set) after the new tree was made: no longer, or
    # never, a copy the driver made.
    if since is not None and (new.st_ctime_ns >= since or old.st_ctime_ns >= since):
        return True
    # Times equal only to the second, one side with no fraction (a file from a plain
    # tar header): a write in that same second looks the same.
    return new.st_mtime_ns != old.st_mtime_ns


def _same_mtime(a_ns: int, b_ns: int) -> bool:
    """Docker's time equality: exact, or the same second with one side lacking a fraction.

    Plain ustar headers (and so most layers ever built) hold whole seconds; a
    file written from such a tarball compared with a copy that kept its
    nanoseconds is the same file.
    """
    if a_ns == b_ns:
        return True
    a_sec, a_frac = divmod(a_ns, 1_000_000_000)
    b_sec, b_frac = divmod(b_ns, 1_000_000_000)
    return a_sec == b_sec and (a_frac == 0 or b_frac == 0)


_CHUNK = 1 << 20


def contents_differ(a: str, b: str) -> bool:
    """Whether two regular files of one size hold other bytes (True if either went away)."""
    try:
        fa = open_readable(a)
    except OSError:
        return True
    try:
        try:
            fb = open_readable(b)
        except OSError:
            return True
        try:
            while True:
                x = os.read(fa, _CHUNK)
                if x != os.read(fb, _CHUNK):
                    return True
                if not x:
                    return False
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _xattrs(path: str) -> dict[str, bytes]:
    """The entry's extended attributes a layer tarball carries (none once it is gone)."""
    try:
        return read_xattrs(path)
    except FileNotFoundError:
        return {}


def _add_parents(changes: list[Change]) -> None:
    """Mark every directory above a change as changed (``docker diff`` does).

    Any ancestor of a change that is not itself listed exists in both trees as
    a directory: were it only in the new tree it would be added, were its type
    changed it would be listed already.
    """
    listed = {c.path for c in changes}
    done: set[str] = set()
    for change in list(changes):
        parent = change.path.rpartition("/")[0]
        while parent and parent not in done:
            done.add(parent)
            if parent not in listed:
                changes.append(Change(parent, ChangeKind.MODIFY))
            parent = parent.rpartition("/")[0]

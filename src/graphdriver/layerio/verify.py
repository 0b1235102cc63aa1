"""Compare a layer's stored files with the tar headers it was imported from.

``check`` rebuilds an imported layer's tarball and compares its digest, which
proves every file's *content*.  This module proves the rest: for every entry
of the layer's tar-split metadata, the stored file has the type, mode,
owner, modification time, size, link target, device numbers and extended
attributes its header gives (a symlink's, fifo's and device node's xattrs
too), no two entries are one file unless a hard-link entry makes them so,
and the layer holds no file that no entry names.  A ``chmod``, ``chown``,
new xattr, touched mtime, ``rm b; ln a b`` or planted file in an image
layer's folder is found, where a digest alone would miss it.
For a layer kept as a whole tree on top of a copy of its parent's (vfs),
:func:`changes_problems` also finds what changed among the files its
tarball left alone: a file of the parent's deleted, chmod-ed or chown-ed.

The headers come from the tar-split metadata alone: its segments hold every
header block, and file data is skipped as zeros of the recorded size, so no
file is read here.  Extraction's own rules are mirrored: whiteouts and AUFS
metadata leave no file of their name, overlay's private xattrs are never
stored (one found is reported: an older import kept it), ``security.selinux``
belongs to the host, owners go through the store's id maps, and an
unprivileged store cannot set owners or device nodes (those are not compared).
"""

from __future__ import annotations

import os
import posixpath
import stat

from graphdriver.fs import PRIVILEGED_XATTRS, privileged
from graphdriver.fs.overlayfs import is_whiteout_at
from graphdriver.layerio import entry as te
from graphdriver.layerio import sparse
from graphdriver.layerio.whiteout import OPAQUE_WHITEOUT, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from graphdriver.diff.changes import Change
    from graphdriver.fs.longpaths import ShortPaths
    from graphdriver.idmap import IDMappings
    from graphdriver.layerio.tarsplit import SplitEntry
    from graphdriver.layerio.tarstream import TarReader

_OVERLAY_PRIVATE = ("trusted.overlay.", "user.overlay.")
_HOST_XATTRS = frozenset({"security.selinux"})
_ZEROS = bytes(1 << 20)
_KINDS = {
    te.REG: stat.S_IFREG, te.AREG: stat.S_IFREG, te.CONT: stat.S_IFREG, te.DIR: stat.S_IFDIR,
    te.SYM: stat.S_IFLNK, te.CHR: stat.S_IFCHR, te.BLK: stat.S_IFBLK, te.FIFO: stat.S_IFIFO,
}


class _HeadersOnly:
    """The tarball as a stream of its header bytes, with file data read as zeros."""

    def __init__(self, entries: Iterable[SplitEntry]) -> None:
        self._parts = self._generate(entries)
        self._left = memoryview(b"")

    @staticmethod
    def _generate(entries: Iterable[SplitEntry]) -> Iterator[memoryview]:
        from graphdriver.layerio.tarsplit import SEGMENT

        for e in entries:
            if e.type == SEGMENT:
                if e.payload:
                    yield memoryview(e.payload)
                continue
            size = e.size
            while size > 0:
                chunk = min(size, len(_ZEROS))
                yield memoryview(_ZEROS)[:chunk]
                size -= chunk

    def read(self, n: int = -1) -> bytes:
        while not self._left:
            part = next(self._parts, None)
            if part is None:
                return b""
            self._left = part
        if n < 0 or n >= len(self._left):
            out, self._left = bytes(self._left), memoryview(b"")
            return out
        out, self._left = bytes(self._left[:n]), self._left[n:]
        return out


def tree_problems(
    entries: Iterable[SplitEntry], root: str, idmaps: IDMappings, *, inherited: str | None = None
) -> list[str]:
    """What differs between the tree at *root* and the headers of *entries* (empty: none).

    A file no entry names is reported too, unless *root* is a full tree on top
    of its parent's (vfs) and the parent's tree at *inherited* has that path.
    """
    as_root = privileged()
    problems: list[str] = []
    expected: set[str] = set()  # with each path, the folders above it
    hidden: set[str] = set()  # whiteout targets below a whiteout meta folder
    last = _last_headers(entries)
    links: list[tuple[str, str]] = []  # (hard link, its target)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        inodes: dict[str, tuple[int, int]] = {}
        for e in last.values():
            rel = posixpath.normpath("/" + e.name).lstrip("/")
            parent, _, base = rel.rpartition("/")
            if not rel or base.startswith(WHITEOUT_PREFIX) or WHITEOUT_META_PREFIX in parent:
                # The root's own metadata is the store's; a whiteout leaves no file of
                # its name (but, in an overlay upper directory, a 0/0 device of its target's).
                if not rel:
                    continue
                # Below a whiteout meta folder, the target alone: kept apart, as *expected*
                # holds the folders above each of its paths.
                below_meta = WHITEOUT_META_PREFIX in parent
                if not base.startswith(WHITEOUT_META_PREFIX):
                    target = posixpath.join(parent, base[len(WHITEOUT_PREFIX):])
                    (hidden if below_meta else expected).add(target)
                if not below_meta:
                    add_parents(expected, parent)
                continue
            expected.add(rel)
            add_parents(expected, parent)
            if e.type == te.LNK:
                links.append((rel, posixpath.normpath("/" + e.linkname).lstrip("/")))
            try:
                problem = _compare(e, rel, root_fd, idmaps, as_root, inodes)
            except PermissionError as denied:  # named by its path in the layer, not its last name
                raise PermissionError(denied.errno, denied.strerror, rel) from denied
            if problem:
                problems.append(f"{rel!r}: {problem}")
        problems += _joined(inodes)
        for rel, target in links:
            # A hard link to a lower layer's file copies that file (and its folders) up
            # into an overlay upper directory: the very file linked is the layer's too.
            if (target not in expected and target not in hidden
                    and _inode(root_fd, rel) == _inode(root_fd, target) is not None):
                expected.add(target)
                add_parents(expected, target.rpartition("/")[0])
        extra = _walk(root) - expected - hidden
        if inherited is not None:
            extra -= _walk(inherited)
        if OPAQUE_WHITEOUT in last and inherited is None:
            # An opaque root in an overlay upper directory: the lower layers' names there are
            # whited out one by one (the kernel ignores an opaque root).
            extra = {rel for rel in extra if "/" in rel or not is_whiteout_at(root_fd, rel)}
        problems += [f"{rel!r}: is in the layer but in no entry of its tarball" for rel in sorted(extra)]
    finally:
        os.close(root_fd)
    return problems


def _joined(inodes: dict[str, tuple[int, int]]) -> list[str]:
    """The entries that are one file with another though their tarball gave each a file of its
    own (``rm b; ln a b``); *inodes*: (device, inode) by entry, hard-link entries left out."""
    first: dict[tuple[int, int], str] = {}
    problems = []
    for rel, inode in inodes.items():
        other = first.setdefault(inode, rel)
        if other != rel:
            problems.append(f"{rel!r}: is a hard link to {other!r}, its entry a file of its own")
    return problems


def sparse_problems(entries: Iterable[SplitEntry], root: str) -> list[str]:
    """What differs between the sparse files at *root* and the data their entries stored
    (empty: nothing); other entries are not looked at."""
    from graphdriver.fs.confine import open_at_root

    problems = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel, e in _last_headers(entries).items():
            if e.sparse is None:
                continue
            parent, _, base = rel.rpartition("/")
            try:
                pfd = open_at_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY) if parent else root_fd
                try:
                    if not _holds_fragments(base, pfd, e.sparse):
                        problems.append(f"{rel!r}: does not hold the data of its (sparse) entry")
                finally:
                    if pfd != root_fd:
                        os.close(pfd)
            except PermissionError as denied:  # there, but not for this user: not damage
                raise PermissionError(denied.errno, denied.strerror, rel) from denied
            except OSError:
                problems.append(f"{rel!r}: is missing from the layer")
    finally:
        os.close(root_fd)
    return problems


def read_headers(entries: Iterable[SplitEntry]) -> TarReader:
    """A reader of the tarball that tar-split *entries* describe, file data read as zeros:
    every header, in archive order, without reading a file."""
    from graphdriver.layerio.tarstream import TarReader

    return TarReader(_HeadersOnly(entries))  # type: ignore[arg-type]


def _last_headers(entries: Iterable[SplitEntry]) -> dict[str, te.TarEntry]:
    """Each name's header (without its raw bytes), the last one where a name is given twice:
    that is what unpacking left."""
    last: dict[str, te.TarEntry] = {}
    reader = read_headers(entries)
    for e in reader:
        if e.type in te.NO_FILE_TYPES:
            continue  # a volume label: no file of its name was made
        e.raw, e.pax = b"", {}  # only the fields are compared: keep memory flat
        if e.sparse is not None:
            # Its data is in the segments (no file entry gives it): what the file must hold.
            fragments = sparse.fragments_of(e.sparse, reader.read, e.size, e.name)
            e.sparse.fragments = fragments
            e.sparse.digest = sparse.fragment_digest(fragments, reader.read)
        last[posixpath.normpath("/" + e.name).lstrip("/")] = e
    return last


def changes_problems(
    entries: Iterable[SplitEntry], changes: Iterable[Change], root: str, old_root: str | None,
    owner: Callable[[int, int], tuple[int, int]] | None = None,
) -> list[str]:
    """What the full tree at *root* changed over its parent's tree at *old_root* that the
    headers of *entries* do not account for (empty: nothing).

    *changes* are the walked changes between the two trees
    (:func:`graphdriver.diff.walk.changes_between`, *owner* translating the
    parent's owners as there).  A path an entry names is left to
    :func:`tree_problems`, which compares it with its header; a deletion must
    come from a whiteout or an opaque directory; a directory above the
    entries (listed because something below it changed, or made where the
    parent had none) must keep its parent's mode and owner.  And what the
    tarball deletes must be gone: a whited-out path no entry makes again, and
    whatever an opaque directory holds that no entry names.
    """
    named: set[str] = set()
    implied: set[str] = set()
    deleted: set[str] = set()
    opaque: set[str] = set()
    linked: set[str] = set()  # the targets of hard-link entries
    links: set[str] = set()  # those entries, and their targets
    for rel, e in _last_headers(entries).items():
        if e.type == te.LNK:
            target = posixpath.normpath("/" + e.linkname).lstrip("/")
            linked.add(target)
            links.update((rel, target))
            add_parents(implied, target.rpartition("/")[0])  # listed above the target
        parent, _, base = rel.rpartition("/")
        if WHITEOUT_META_PREFIX in parent:
            continue
        add_parents(implied, parent)
        if base == OPAQUE_WHITEOUT:
            opaque.add(parent)
        elif base.startswith(WHITEOUT_META_PREFIX):
            continue
        elif base.startswith(WHITEOUT_PREFIX):
            deleted.add(posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
        elif rel:
            named.add(rel)
    changes = list(changes)
    from graphdriver.fs.longpaths import ShortPaths

    with ShortPaths() as short:  # a path of the layer may be too long with *root* before it
        partners = _link_partners(changes, links, named, root, old_root, owner, short)
        for rel in partners:
            add_parents(implied, rel.rpartition("/")[0])  # listed above them
        problems: list[str] = []
        for change in changes:
            rel = change.path.lstrip("/")
            kind = change.kind.value
            if rel in named:
                continue  # compared with its header
            if kind == "D":
                above = {"", *_parents(rel.rpartition("/")[0])}  # the root too: an opaque root hides all
                if rel not in deleted and not above & (deleted | opaque):
                    problems.append(f"{rel!r}: is deleted from the layer, and no entry of its tarball "
                                    "deletes it")
                continue
            if rel in implied and (kind == "A" or (
                    old_root is not None and _as_parent_had_it(root, old_root, rel, owner, True, short))):
                continue  # a directory above the entries, made by unpacking or as the parent had it
            if rel in partners:
                continue  # a name of a parent's file an entry links to: listed with the link
            what = "added to" if kind == "A" else "changed in"
            problems.append(f"{rel!r}: was {what} the layer, and no entry of its tarball says so")
        for rel in sorted(deleted - named - implied):
            if _file_id(root, rel, short) is not None:
                problems.append(f"{rel!r}: is in the layer, though its tarball deletes it")
        for rel in sorted(opaque):
            try:
                names = list(short.entries(os.path.join(root, rel) if rel else root))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in sorted(names):
                path = posixpath.join(rel, name)
                if path not in named and path not in implied:
                    problems.append(f"{path!r}: is in the layer, though its tarball makes "
                                    f"{rel or '/'!r} opaque")
        return problems


def _as_parent_had_it(root: str, old_root: str, rel: str, owner: Callable[[int, int], tuple[int, int]] | None,
                      directory: bool, short: ShortPaths) -> bool:
    """Whether *rel* has the same type, mode and owner in both trees, and is a directory
    (*directory*) or a regular file of the same size, modification time and xattrs."""
    try:
        new_path, old_path = short(os.path.join(root, rel)), short(os.path.join(old_root, rel))
        new, old = os.lstat(new_path), os.lstat(old_path)
    except FileNotFoundError:
        return False
    theirs = (old.st_uid, old.st_gid) if owner is None else owner(old.st_uid, old.st_gid)
    if new.st_mode != old.st_mode or (new.st_uid, new.st_gid) != theirs:
        return False
    if directory:
        return stat.S_ISDIR(new.st_mode)
    if not stat.S_ISREG(new.st_mode) or (new.st_size, new.st_mtime_ns) != (old.st_size, old.st_mtime_ns):
        return False
    from graphdriver.layerio.xattrs import read_xattrs

    return read_xattrs(new_path) == read_xattrs(old_path)


def _link_partners(changes: list[Change], links: set[str], named: set[str], root: str, old_root: str | None,
                   owner: Callable[[int, int], tuple[int, int]] | None, short: ShortPaths) -> set[str]:
    """The changed paths that are names of a parent's file a hard-link entry links to, as
    the parent had it: the walk lists every name of a file that gained one (*links*: the
    hard-link entries and their targets, one of which the archive may have deleted since)."""
    if not links or old_root is None:
        return set()
    files = {_file_id(root, name, short) for name in links} - {None}
    return {rel for rel in (c.path.lstrip("/") for c in changes if c.kind.value == "C")
            if rel not in named and _file_id(root, rel, short) in files
            and _as_parent_had_it(root, old_root, rel, owner, False, short)}


def _file_id(root: str, rel: str, short: ShortPaths) -> tuple[int, int] | None:
    """(device, inode) of *rel* under *root*; None if it is not there."""
    try:
        st = os.lstat(short(os.path.join(root, rel)))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inode(root_fd: int, rel: str) -> tuple[int, int] | None:
    """(device, inode) of *rel* under *root_fd*, never through a symlink; None if it is not there."""
    from graphdriver.fs.confine import open_at_root

    parent, _, base = rel.rpartition("/")
    try:
        pfd = open_at_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY) if parent else root_fd
    except OSError:
        return None
    try:
        st = os.lstat(base, dir_fd=pfd)
        return st.st_dev, st.st_ino
    except OSError:
        return None
    finally:
        if pfd != root_fd:
            os.close(pfd)


def _parents(parent: str) -> Iterator[str]:
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


def add_parents(folders: set[str], parent: str) -> None:
    """Add *parent* and the folders above it to *folders*, a set that holds the folders
    above each of its paths: the climb ends at the first one there (so that a tree
    thousands of levels deep costs one step a path, not one a level)."""
    while parent and parent not in folders:
        folders.add(parent)
        parent = parent.rpartition("/")[0]


def _walk(root: str) -> set[str]:
    from graphdriver.fs.longpaths import ShortPaths
    from graphdriver.fs.tree import walk_tree  # iterative: any depth a tarball makes

    with ShortPaths() as short:
        return {rel for rel, _ in walk_tree(root, short)}


def open_parent(root_fd: int, rel: str) -> tuple[int, str] | None:
    """An fd of the folder *rel* is in below *root_fd* (*root_fd* itself at the top; the caller
    closes any other), and *rel*'s last name; None when that folder is missing.  A folder this
    user may not read raises PermissionError: there (mode 0000 without root), not damage."""
    from graphdriver.fs.confine import open_at_root

    parent, _, base = rel.rpartition("/")
    try:
        pfd = open_at_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY) if parent else root_fd
    except PermissionError:
        raise
    except OSError:
        return None
    return pfd, base


def _compare(
    e: te.TarEntry, rel: str, root_fd: int, idmaps: IDMappings, privileged: bool,
    inodes: dict[str, tuple[int, int]],
) -> str:
    opened = open_parent(root_fd, rel)
    if opened is None:
        return "is missing from the layer"
    pfd, base = opened
    try:
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            # An unprivileged store cannot make device nodes, nor links to them: the import skipped them.
            device = e.type in (te.CHR, te.BLK)
            if e.type == te.LNK:
                device = _inode(root_fd, posixpath.normpath("/" + e.linkname).lstrip("/")) is None
            if device and not privileged:
                return ""
            return "is missing from the layer"
        if e.type == te.LNK:
            target = posixpath.normpath("/" + e.linkname).lstrip("/")
            # A target of a lower layer was copied up: then only the file itself is checked.
            if target in inodes and inodes[target] != (st.st_dev, st.st_ino):
                return f"is not a hard link to {target!r}"
            return ""
        inodes[rel] = (st.st_dev, st.st_ino)
        kind = stat.S_IFREG if e.sparse is not None else _KINDS.get(e.type)
        if kind is None or stat.S_IFMT(st.st_mode) != kind:
            if kind in (stat.S_IFCHR, stat.S_IFBLK) and not privileged:
                return ""  # an unprivileged store cannot make device nodes
            return f"is a {_kind_name(st.st_mode)}, its entry a {_kind_name(kind or 0)}"
        return _compare_metadata(e, base, pfd, st, idmaps, privileged)
    finally:
        if pfd != root_fd:
            os.close(pfd)


def _compare_metadata(
    e: te.TarEntry, base: str, pfd: int, st: os.stat_result, idmaps: IDMappings, privileged: bool
) -> str:
    if e.type == te.SYM:
        target = os.readlink(base, dir_fd=pfd)
        if target != e.linkname:
            return f"links to {target!r}, its entry to {e.linkname!r}"
    elif stat.S_IMODE(st.st_mode) != _kept_mode(e):
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, its entry {_kept_mode(e):04o}"
    if e.sparse is not None:
        if st.st_size != e.sparse.size:
            return f"has {st.st_size} bytes, its entry {e.sparse.size}"
        if not _holds_fragments(base, pfd, e.sparse):
            return "does not hold the data of its (sparse) entry"
    elif e.type in te.REGULAR_TYPES and st.st_size != e.size:
        return f"has {st.st_size} bytes, its entry {e.size}"
    if privileged:
        owner = (idmaps.uids.to_host(e.uid), idmaps.gids.to_host(e.gid))
        if (st.st_uid, st.st_gid) != owner:
            return f"is owned by {st.st_uid}:{st.st_gid}, its entry by {owner[0]}:{owner[1]}"
        if e.type in (te.CHR, te.BLK) and st.st_rdev != os.makedev(e.devmajor, e.devminor):
            return "has other device numbers than its entry"
    if st.st_mtime_ns != e.mtime_ns and not clamped(e.mtime_ns, st.st_mtime_ns):
        return f"was modified at {st.st_mtime_ns} ns, its entry at {e.mtime_ns} ns"
    return _compare_xattrs(e, base, pfd, privileged)


def _kept_mode(e: te.TarEntry) -> int:
    """The mode the entry's file keeps: the header's, with what an access ACL set of it."""
    mode = e.mode & 0o7777
    if not e.xattrs:
        return mode
    from graphdriver.layerio.xattrs import kept_mode

    return kept_mode(mode, e.xattrs)


#: Where every filesystem's timestamps reach: 32-bit seconds either side of 1970.
_TIME_LIMIT_NS = 2**31 * 10**9


def clamped(entry_ns: int, file_ns: int) -> bool:
    """Whether *file_ns* is *entry_ns* as a filesystem with a narrower range of times stores
    it (ext4 and XFS keep 1901 to 2446 or 2486, and set the nearest time they can hold)."""
    if entry_ns < -_TIME_LIMIT_NS:
        return entry_ns <= file_ns <= -_TIME_LIMIT_NS
    if entry_ns >= _TIME_LIMIT_NS:
        return _TIME_LIMIT_NS - 10**9 <= file_ns <= entry_ns
    return False


def _compare_xattrs(e: te.TarEntry, base: str, pfd: int, privileged: bool) -> str:
    # Every kind of file: extraction sets a symlink's, a fifo's or a device node's xattrs as
    # a file's (or fails), and one set on it since is as much a change.
    # By path through the directory's fd (one component, not followed): listing xattrs needs
    # no read permission; reading user.* ones of a file of mode 0000 (which an unprivileged
    # store may hold) does, and is done as its owner.
    path = f"/proc/self/fd/{pfd}/{base}"
    names = set(os.listxattr(path, follow_symlinks=False))
    private = sorted(n for n in names if n.startswith(_OVERLAY_PRIVATE) and not n.endswith(".overlay.opaque"))
    if private:
        return f"carries overlay's own xattr {private[0]} (kept by an older import)"
    stored = {n for n in names if not n.startswith(_OVERLAY_PRIVATE) and n not in _HOST_XATTRS}
    from graphdriver.layerio.xattrs import read_back

    kept = {k: read_back(k, v) for k, v in e.xattrs.items()}
    wanted = {k for k, v in kept.items() if v is not None and not k.startswith(_OVERLAY_PRIVATE)
              and k not in _HOST_XATTRS}
    if not privileged:  # trusted.* and security.* need privilege: an unprivileged import skips them
        wanted = {k for k in wanted if not k.startswith(PRIVILEGED_XATTRS)}
    if stored != wanted:
        extra, missing = sorted(stored - wanted), sorted(wanted - stored)
        if not extra:
            return f"lacks xattr {missing[0]}"
        if extra[0] in e.xattrs:  # an access ACL saying no more than the mode, or an empty ACL
            return f"has xattr {extra[0]}, where its entry's value leaves none"
        return f"has xattr {extra[0]} its entry lacks"
    from graphdriver.fs.ownfiles import get_xattrs

    values = get_xattrs(path, sorted(wanted), follow_symlinks=False)
    for name in sorted(wanted):
        if values.get(name) != kept[name]:
            return f"has another value of xattr {name}"
    return ""


def _holds_fragments(base: str, pfd: int, sparse_map: sparse.SparseMap) -> bool:
    """Whether the file holds its sparse entry's data (the tarball's digest does not cover it)."""
    from graphdriver.fs.ownfiles import open_readable

    assert sparse_map.fragments is not None and sparse_map.digest is not None
    fd = open_readable(base, pfd)
    try:
        return sparse.file_matches(fd, sparse_map.fragments, sparse_map.digest)
    finally:
        os.close(fd)


def _kind_name(mode: int) -> str:
    names = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
             stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
             stat.S_IFSOCK: "socket"}
    return names.get(stat.S_IFMT(mode), "special file")

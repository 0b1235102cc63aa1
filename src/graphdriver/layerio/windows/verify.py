"""Compare a Windows layer's folder with the tar headers it was imported from.

The Windows format's counterpart of :mod:`graphdriver.layerio.verify`.
``check`` rebuilds an imported layer's tarball, which proves the content of
its files and streams; this proves the rest.  Applying a Windows layer
(:mod:`.apply`) writes one line of the metadata sidecar per archive entry, in
archive order, and puts each file, directory and symlink in its place under
``Files/``, ``Hives/`` or ``UtilityVM/``.  So:

- the sidecar holds exactly the lines the headers give: the same paths and
  kinds, attributes, security descriptors, creation, access and change
  times, junction marks, EAs, other PAX records and hard link targets
  (a hard link may be marked dangling: its target was in no layer);
- the layer's trees hold exactly the files those lines leave (a later
  tombstone takes what it deletes), each of its entry's type, permission
  bits, size, modification time and symlink target (and owner, where the
  store sets owners), plus what applying adds on its own: the folders a
  path needed, overlay whiteouts (0/0 devices) where a tombstone hid a lower
  layer's file, and the opaque mark of a folder made again after its
  tombstone.

A file planted in ``Files/`` or ``Hives/``, a ``chmod`` or ``touch`` there,
or a sidecar line edited (attributes, descriptor...) would otherwise be seen
by ``changes``, the view and a regenerated diff, though the rebuilt tarball
still matches.  The utility VM's BCD files, which Windows rewrites in place
(their imported bytes are kept aside and checked by the rebuild), are
compared by type only.
"""

from __future__ import annotations

import dataclasses
import os
import stat

from graphdriver.fs.overlayfs import is_whiteout
from graphdriver.fs.tree import walk_tree
from graphdriver.layerio import entry as te
from graphdriver.layerio.extract import clean_name
from graphdriver.layerio.verify import add_parents, clamped, open_parent
from graphdriver.layerio.windows import layout, winmeta, wintar
from graphdriver.layerio.windows.apply import permission_bits
from graphdriver.layerio.windows.layer import MUTATED_FILES, is_opaque
from graphdriver.layerio.windows.winmeta import DELETED, DIR, FILE, LINK, STREAM, SYMLINK, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from graphdriver.layerio.tarsplit import SplitEntry

_SIDECAR = f"{layout.META_DIR}/{layout.ENTRIES_FILE}"
_OPAQUE = "is marked opaque (hiding what the lower layers have there), though its tarball does not delete it"
_KINDS = {te.DIR: DIR, te.SYM: SYMLINK, te.LNK: LINK}
_MODES = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}
_KIND_NAMES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
               stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
               stat.S_IFSOCK: "socket"}
#: How each field of the Windows metadata is named in a message.
_META_FIELDS = {"attributes": "attributes", "explicit_attributes": "attributes given or not",
                "security_descriptor": "security descriptor", "sddl": "SDDL security descriptor",
                "creation_ns": "creation time", "mountpoint": "junction mark",
                "eas": "extended attributes", "extra": "other PAX records"}


def layer_problems(entries: Iterable[SplitEntry], data_dir: str, *, owner: tuple[int, int] | None,
                   opaque_marks: bool) -> list[str]:
    """What differs between the Windows layer at *data_dir* and the headers of *entries*
    (empty: nothing).

    *owner*: the owner applying gave every file (None: not compared, as where
    the store cannot set owners); *opaque_marks*: whether overlay's opaque
    xattr can be read here (it needs root).
    """
    from graphdriver.layerio.verify import read_headers

    expected = list(_expected(read_headers(entries)))
    problems = _sidecar_problems(expected, data_dir)
    if problems:
        return problems
    return _tree_problems(expected, winmeta.LayerMeta.load(data_dir), data_dir, owner, opaque_marks)


# ----- the sidecar ------------------------------------------------------------------------------


def _expected(headers: Iterable[te.TarEntry]) -> Iterator[tuple[Record, te.TarEntry]]:
    """The sidecar line applying each header writes, with the header."""
    for e in headers:
        rel = clean_name(e.name, e.name)
        if rel == ".":
            continue  # the archive's root: the layer folder is the store's
        parent, _, base = rel.rpartition("/")
        if base.startswith(wintar.WHITEOUT_PREFIX):
            name = base[len(wintar.WHITEOUT_PREFIX) :]
            yield Record(f"{parent}/{name}" if parent else name, DELETED), e
            continue
        if wintar.split_stream(rel)[1] is not None:
            yield Record(rel, STREAM), e
            continue
        kind = FILE if e.type in te.REGULAR_TYPES else _KINDS.get(e.type, f"entry type {e.type!r}")
        target = clean_name(e.linkname, e.name, "hardlink target") if e.type == te.LNK else ""
        yield Record(rel, kind, wintar.meta_from_entry(e), e.atime_ns, e.ctime_ns, target=target), e


def _sidecar_problems(expected: list[tuple[Record, te.TarEntry]], data_dir: str) -> list[str]:
    """What differs between the sidecar's lines and the *expected* ones: the first difference."""
    if not os.path.exists(winmeta.entries_path(data_dir)):
        return [f"{expected[0][0].path!r}: its Windows metadata ({_SIDECAR}) is missing"] if expected else []
    actual = list(winmeta.read_records(data_dir))
    for number, ((want, e), got) in enumerate(zip(expected, actual, strict=False), 1):
        why = _record_difference(want, got, e.mtime_ns)
        if why:
            return [f"{want.path!r}: line {number} of its Windows metadata ({_SIDECAR}) {why}"]
    if len(actual) < len(expected):
        return [f"{expected[len(actual)][0].path!r}: its Windows metadata ({_SIDECAR}) has no line for it"]
    if len(actual) > len(expected):
        extra = actual[len(expected)]
        return [f"{extra.path!r}: line {len(expected) + 1} of its Windows metadata ({_SIDECAR}) "
                "is about no entry of its tarball"]
    return []


def _record_difference(want: Record, got: Record, mtime_ns: int) -> str:
    """How the sidecar's line *got* differs from the one its entry (modified at *mtime_ns*)
    gives, *want* ("" if not)."""
    if got.path != want.path:
        return f"names {got.path!r}, its entry {want.path!r}"
    if got.kind != want.kind:
        return f"says {got.kind}, its entry {want.kind}"
    if got.target != want.target:
        return f"links to {got.target!r}, its entry to {want.target!r}"
    if (got.meta is None) != (want.meta is None):
        return "has other Windows metadata than its entry"
    if got.meta is not None and want.meta is not None and got.meta != want.meta:
        for f in dataclasses.fields(wintar.WinMeta):
            mine, theirs = getattr(got.meta, f.name), getattr(want.meta, f.name)
            if mine != theirs:
                if f.name == "attributes":
                    return f"has attributes {mine:#x}, its entry {theirs:#x}"
                return f"has another {_META_FIELDS[f.name]} than its entry"
    if (got.atime_ns, got.ctime_ns) != (want.atime_ns, want.ctime_ns):
        return "has other access or change times than its entry"
    if got.dangling and got.kind != LINK:
        return "marks a name that is no hard link as a dangling link"
    if got.mtime_ns != (mtime_ns if got.dangling else None):
        return "has another modification time than its entry"
    return ""


# ----- the files ------------------------------------------------------------------------------------


def _tree_problems(expected: list[tuple[Record, te.TarEntry]], layer: winmeta.LayerMeta, data_dir: str,
                   owner: tuple[int, int] | None, opaque_marks: bool) -> list[str]:
    headers: dict[str, te.TarEntry] = {}
    allowed: set[str] = set()  # folders a path needed (made, or left after a tombstone)
    remade: set[str] = set()  # folders made again after their tombstone: may be opaque
    deleted: set[str] = set()
    for rec, e in expected:
        add_parents(allowed, rec.path.rpartition("/")[0])
        if rec.kind == DELETED:
            deleted.add(rec.path)
        elif rec.kind != STREAM:
            headers[rec.path] = e
            if rec.kind == DIR and rec.path in deleted:
                remade.add(rec.path)
    files = {p: r for p, r in layer.records.items()
             if r.kind in _MODES or (r.kind == LINK and not r.dangling)}
    # What no entry left comes first, and the deepest files before their folders: a file
    # planted or replaced moves its folder's time too, and the cause is what to tell first.
    problems = _walk_problems(data_dir, set(files) | allowed, layer.tombstones,
                              remade if opaque_marks else None)
    root_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in sorted(files, key=_deepest_first):
            why = _compare(path, files[path], headers[path], root_fd, owner)
            if why:
                problems.append(f"{path!r}: {why}")
    finally:
        os.close(root_fd)
    return problems


def _deepest_first(path: str) -> tuple[int, str]:
    return -path.count("/"), path


def _walk_problems(data_dir: str, named: set[str], tombstones: set[str],
                   remade: set[str] | None) -> list[str]:
    """What the layer's trees hold that no entry left there (a whiteout of a tombstone under
    ``Files/`` excepted; ``Files/`` itself is the store's), and, unless *remade* is None,
    folders marked opaque that are not in *remade* (folders made again after their tombstone):
    an opaque folder hides the lower layers' one in the view."""
    problems = []
    for top in layout.LAYER_ROOTS:
        start = os.path.join(data_dir, top)
        if not os.path.lexists(start):
            continue
        if top != layout.FILES and top not in named:
            problems.append(f"{top!r}: is in the layer but in no entry of its tarball")
            continue
        if not os.path.isdir(start) or os.path.islink(start):
            continue  # (compared with its entry, or reported above)
        if remade is not None and top not in remade and is_opaque(start):
            problems.append(f"{top!r}: {_OPAQUE}")
        for rel, entry in walk_tree(start):
            path = f"{top}/{rel}"
            if path not in named:
                deleted = path in tombstones
                if deleted and top == layout.FILES and is_whiteout(entry.stat(follow_symlinks=False)):
                    continue  # overlay's whiteout, hiding a lower layer's file
                where = "though its tarball deletes it" if deleted else "but in no entry of its tarball"
                problems.append(f"{path!r}: is in the layer {where}")
            elif remade is not None and path not in remade and entry.is_dir(follow_symlinks=False) \
                    and is_opaque(entry.path):
                problems.append(f"{path!r}: {_OPAQUE}")
    return problems


def _compare(path: str, rec: Record, e: te.TarEntry, root_fd: int, owner: tuple[int, int] | None) -> str:
    """How the file at *path* differs from what its entry *e* left there ("" if not)."""
    opened = open_parent(root_fd, path)
    if opened is None:
        return "is missing from the layer"
    pfd, base = opened
    try:
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return "is missing from the layer"
        if rec.kind == LINK:
            return ""  # a second name of a file of the layer, or a copy of a lower layer's
        kind = _MODES[rec.kind]
        if stat.S_IFMT(st.st_mode) != kind:
            return f"is a {_kind_name(st.st_mode)}, its entry a {_kind_name(kind)}"
        if path in MUTATED_FILES:
            return ""  # rewritten by Windows in place; its imported bytes are kept aside
        return _compare_metadata(rec, e, base, pfd, st, owner)
    finally:
        if pfd != root_fd:
            os.close(pfd)


def _compare_metadata(rec: Record, e: te.TarEntry, base: str, pfd: int, st: os.stat_result,
                      owner: tuple[int, int] | None) -> str:
    if rec.kind == SYMLINK:
        target = os.readlink(base, dir_fd=pfd)
        if target != e.linkname:
            return f"links to {target!r}, its entry to {e.linkname!r}"
    else:
        mode = permission_bits(e.mode, 0o755 if rec.kind == DIR else 0o644)
        if stat.S_IMODE(st.st_mode) != mode:
            return f"has mode {stat.S_IMODE(st.st_mode):04o}, its entry {mode:04o}"
    if rec.kind == FILE and st.st_size != e.size:
        return f"has {st.st_size} bytes, its entry {e.size}"
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        return f"is owned by {st.st_uid}:{st.st_gid}, its entry by {owner[0]}:{owner[1]}"
    if st.st_mtime_ns != e.mtime_ns and not clamped(e.mtime_ns, st.st_mtime_ns):
        return f"was modified at {st.st_mtime_ns} ns, its entry at {e.mtime_ns} ns"
    return ""


def _kind_name(mode: int) -> str:
    return _KIND_NAMES.get(stat.S_IFMT(mode), "special file")

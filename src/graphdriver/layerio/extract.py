"""Applying a layer tarball to a directory (Docker's ``ApplyLayer``/``UnpackLayer``).

Conventions, and where this differs from a plain ``tar -x``:

* Names lose leading ``/`` and ``./`` and are normalised lexically; a name
  that still starts with ``..`` is a :class:`BreakoutError`.  The root entry
  (``.``, ``./``, ``/``) applies its owner, mode, xattrs and times to the
  target directory itself, as Docker's ``UnpackLayer`` and GNU tar do (Docker's
  plain ``Untar`` skips it); it must be a directory.
* Missing parent directories are created 0755, owned by the mapped root
  (copying a lower directory's owner, mode and times when one exists there).
  Directories the layer changes but does not list keep their times.
* An existing directory meets a directory entry: merged, metadata updated.
  Anything else existing is removed (recursively) and replaced.
* Whiteouts: ``.wh..wh..opq`` marks its directory opaque; any other name
  starting ``.wh..wh.`` is reserved AUFS metadata and ignored (the
  ``.wh..wh.plnk`` hardlink store is extracted to a scratch directory and
  dropped at the end so links into it work); every other ``.wh.X`` deletes
  ``X``, so ``.wh..foo`` deletes ``.foo``.  A marker's missing folders are
  created as a file's are (none where a file is in the way).  Nothing below a
  whiteout name is ever created: an entry below ``.wh.X`` or ``.wh..wh..opq``
  is refused.
* Symlink targets are content, stored as they are.  A path never goes
  through a symlink the archive did not make (a lower layer's, or one the
  layer held before): such an entry is refused, so that a full copy (which
  would follow it) and an overlay upper directory (which would make a
  directory over it) agree.  The archive's own symlinks resolve inside the
  root (the layer is then marked unreproducible), to a folder the layer (or a
  layer below) has: none is made for a symlink's target, as in Docker's and
  containerd's unpackers, so an entry through a symlink to nothing is refused.
* A hardlink entry only makes the link: the inode keeps the metadata of the
  entry that created it.  A target missing from the layer is copied up from
  ``lower_dirs`` first (an overlay upper directory holds only the layer);
  without root, one its owner may not read (``0000``) is read as its owner
  (:mod:`graphdriver.fs.ownfiles`), its mode untouched.
* ``trusted.overlay.*``/``user.overlay.*`` xattrs in the archive are dropped,
  in every layer and for every driver: the kernel would obey them in any
  layer of an overlay chain (a base layer is a lower directory too).

Every path operation resolves the parent directory with ``openat2`` confined
to the root and acts on the last component with ``*at`` calls that never
follow it; see :mod:`graphdriver.fs.confine`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence

from graphdriver.errors import ArchiveError, BreakoutError, EntryDenied, GraphDriverError, InvalidArgument
from graphdriver.fs import PRIVILEGED_XATTRS, confine, fdlimit, privileged
from graphdriver.fs import syscalls as sc
from graphdriver.fs.longpaths import PATH_MAX, QUICK_PATH, fits
from graphdriver.fs.overlayfs import is_whiteout, is_whiteout_at
from graphdriver.fs.ownfiles import get_xattrs, open_readable
from graphdriver.fs.tree import remove_tree_at
from graphdriver.idmap import IDMappings
from graphdriver.layerio import entry as te
from graphdriver.layerio import pax, sparse
from graphdriver.layerio.entry import LNK, REGULAR_TYPES, SYM, TarEntry
from graphdriver.layerio.tarstream import TarReader
from graphdriver.layerio.whiteout import (
    OPAQUE_WHITEOUT,
    OVERLAY_OPAQUE_XATTR,
    WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
    WhiteoutMode,
    hidden_by,
)
from graphdriver.layerio.xattrs import (
    ACCESS_ACL,
    DEFAULT_ACL,
    EXCLUDED_XATTR_PREFIXES,
    EXCLUDED_XATTRS,
)
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Protocol

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOWER_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
IMPLIED_DIR_MODE = 0o755
# Parent directory fds kept open at most (fewer under a low open-file limit:
# see fdlimit).  Entries come grouped by directory, so a small cache hits
# nearly always; an fd an entry is working with stays open until the entry is
# done.
_DIR_CACHE_SIZE = 128
# Symlinks followed on one path at most, as the kernel's MAXSYMLINKS.
_MAX_HOPS = 40
# Owners chown(2) can set (2**32 - 1 means "unchanged"), device numbers mknod(2) keeps.
_NO_ID = 0xFFFFFFFF
_MAJORS = 1 << 12
_MINORS = 1 << 20
AUFS_LINK_DIR = ".wh..wh.plnk"
_WHITEOUT_DEVICE = (
    "a 0/0 character device is overlayfs's whiteout, which no layer can hold "
    "(a layer tarball deletes with a .wh. name)"
)

_DIR_TYPES = frozenset({te.DIR, te.GNU_DUMPDIR})  # a dumpdir is a directory plus a listing
_SPECIAL_TYPES = {te.CHR: stat.S_IFCHR, te.BLK: stat.S_IFBLK, te.FIFO: stat.S_IFIFO}
# Metadata records that describe no file (the reader normally folds them in).
_UNSUPPORTED_TYPES = {
    te.GNU_SPARSE: "sparse file",
    te.GNU_MULTIVOL: "multi-volume continuation",
    te.GNU_LONGNAME: "orphaned long name record",
    te.GNU_LONGLINK: "orphaned long link record",
}
_KNOWN_TYPES = REGULAR_TYPES | _DIR_TYPES | {SYM, LNK} | set(_SPECIAL_TYPES)

#: A directory's ACLs: its access ACL and its default one (what the files made in it inherit).
_ACLS = (ACCESS_ACL, DEFAULT_ACL)
_IGNORED_XATTRS = frozenset({"security.selinux"})  # the labeler's business, not the layer's
_OVERLAY_PRIVATE_XATTRS = ("trusted.overlay.", "user.overlay.")


class ApplyOptions:
    """How :func:`apply_layer` writes a layer."""

    __slots__ = ("idmaps", "ignore_chown_errors", "inline", "lower_dirs", "opaque_xattr", "whiteouts")

    def __init__(
        self,
        idmaps: IDMappings | None = None,
        whiteouts: str = WhiteoutMode.DELETE,
        lower_dirs: tuple[str, ...] = (),
        opaque_xattr: str = OVERLAY_OPAQUE_XATTR,
        ignore_chown_errors: bool | None = None,
        inline: bool | None = None,
    ) -> None:
        #: Archive owners are container ids, mapped to host ids on the way in.
        self.idmaps = IDMappings() if idmaps is None else idmaps
        #: Delete whiteouts out (full tree) or write overlay whiteouts (upper dir).
        self.whiteouts = whiteouts
        #: Where hardlink targets missing from the layer are copied up from, nearest first.
        self.lower_dirs = tuple(lower_dirs)
        #: The xattr that marks an opaque directory in overlay mode.
        self.opaque_xattr = opaque_xattr
        #: Tolerate (and count) EPERM from chown, device mknod and trusted/security
        #: xattrs.  None: tolerate when not running as root.
        self.ignore_chown_errors = ignore_chown_errors
        #: Run in this process instead of a confined child.  None: the
        #: ``GRAPHDRIVER_APPLY_INLINE`` environment switch decides.
        self.inline = inline


class ExtractStats(Plain):
    """What an unprivileged extraction had to leave out."""

    __slots__ = ("skipped_chowns", "skipped_devices", "skipped_xattrs")

    def __init__(self, skipped_chowns: int = 0, skipped_devices: int = 0, skipped_xattrs: int = 0) -> None:
        self.skipped_chowns = skipped_chowns
        self.skipped_devices = skipped_devices
        self.skipped_xattrs = skipped_xattrs


    def __bool__(self) -> bool:
        return bool(self.skipped_chowns or self.skipped_devices or self.skipped_xattrs)


if TYPE_CHECKING:

    class EntrySource(Protocol):
        """What :func:`extract_entries` reads: a :class:`TarReader` or a wrapper of one."""

        def next(self) -> TarEntry | None: ...

        def copy_to_fd(self, fd: int) -> int: ...

        def read(self, n: int = -1) -> bytes: ...


_DEFAULT_OPTIONS = ApplyOptions()


def apply_layer(stream: BinaryIO, dest: str, opts: ApplyOptions = _DEFAULT_OPTIONS) -> int:
    """Apply the uncompressed layer tarball *stream* to directory *dest*.

    Runs confined (see :func:`graphdriver.fs.confine.run_confined`) and
    returns the layer's size: the sum of the sizes of its regular files
    (hardlinks count 0).  On failure *dest* is left as it is for the caller
    to discard.  The stream is consumed by the child process.
    """

    def work(dirs: confine.ConfinedDirs) -> tuple[int, ExtractStats]:
        stats = ExtractStats()
        size = extract_entries(TarReader(stream), dirs.root_fd, dirs.extra_fds, opts=opts, stats=stats)
        return size, stats

    size, stats = confine.run_confined(dest, work, extra_dirs=opts.lower_dirs, inline=opts.inline)
    if stats:
        from graphdriver.errors import warn

        warn(f"applied to {dest} {_left_out(stats)}")
    return size


def extract_entries(
    reader: EntrySource,
    root_fd: int,
    lower_fds: Sequence[int] | None = None,
    *,
    opts: ApplyOptions = _DEFAULT_OPTIONS,
    stats: ExtractStats | None = None,
) -> int:
    """Apply every entry of *reader* to the directory open as *root_fd*; returns the size.

    The loop behind :func:`apply_layer`, for callers that wrap the reader
    (to record tar-split data and digests in the same pass, say).  Paths
    resolve as if *root_fd* were ``/``.  *lower_fds* are open directories
    standing for ``opts.lower_dirs``; when None those paths are opened here.
    What was skipped for lack of privilege is counted into *stats*.
    """
    opened: list[int] = []
    try:
        if lower_fds is None:
            for d in opts.lower_dirs:
                opened.append(os.open(d, _LOWER_DIR))
            lower_fds = opened
        said = stats is not None  # the caller tells what was left out; else it is said here
        stats = ExtractStats() if stats is None else stats
        ex = _Extractor(reader, root_fd, opts, tuple(lower_fds), stats)
        try:
            size = ex.run()
        finally:
            ex.close()
        if stats and not said and not ex.privileged:
            from graphdriver.errors import warn

            warn(_left_out(stats))
        return size
    finally:
        for fd in opened:
            os.close(fd)


def clean_name(name: str, entry: str, what: str = "path") -> str:
    """*name* relative to the layer root and normalised (``"."`` for the root).

    Raises :class:`BreakoutError` when it would leave the root.
    """
    rel = posixpath.normpath(name.lstrip("/") or ".")
    if rel == ".." or rel.startswith("../"):
        raise BreakoutError(entry, f"{what} escapes the layer")
    return rel


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


def _folders_above(paths: set[str], rel: str) -> set[str]:
    """The folders inside directory *rel* on the way to one of *paths*."""
    inside = rel + "/" if rel else ""
    above: set[str] = set()
    for p in paths:
        if not p.startswith(inside):
            continue
        p = p.rpartition("/")[0]
        while len(p) >= len(inside) and p not in above:
            above.add(p)
            p = p.rpartition("/")[0]
    return above


class Extraction:
    """What every layer format's extraction shares: the loop, the directory fds, the times.

    A format plugs in by subclassing: :meth:`_entry` writes one entry, and
    :meth:`_resolve_dir`, :meth:`_open_dir_nofollow` and
    :meth:`_implied_metadata` say how paths resolve and what a directory
    made only because a path needed it looks like.  The base keeps a cache of
    parent directory fds (entries come grouped by directory, so a small one
    hits nearly always; it is trimmed between entries only, so every fd an
    entry is working with stays open until the entry is done), creates
    missing parents without recursion (a hostile path thousands of levels
    deep pins one fd), removes what is in the way, and sets directory times
    (and late modes) once every entry is in, deepest first.
    """

    def __init__(self, reader: EntrySource, root_fd: int, lower_fds: tuple[int, ...],
                 opaque_xattr: str = OVERLAY_OPAQUE_XATTR) -> None:
        self.reader = reader
        self.root_fd = root_fd
        self.lower_fds = lower_fds
        #: What marks a lower layer's directory opaque (:meth:`_in_union`).
        self.opaque_xattr = opaque_xattr
        # Relative path -> fd of that directory (resolved in the root).
        self.dirs: dict[str, int] = {}
        # Fds dropped from the cache while an entry may still use them.
        self.stale: list[int] = []
        # How many directories to keep open (sized here: the chrooted child can
        # still call getrlimit, but the lower layers' fds count against it too).
        self.cache_size = max(1, fdlimit.keepable(_DIR_CACHE_SIZE) - len(lower_fds))
        # The cached directories the current entry was given: never closed under it.
        self.in_use: set[str] = set()
        # Paths this layer created, for opaque directories (which hide only
        # what was there before the layer), and the folders on their way.
        self.created: set[str] = set()
        self.ancestors: set[str] = set()
        # Directory path -> (atime, mtime, mode to set late or None), applied
        # after all entries since creating children changes a directory's mtime.
        self.pending: dict[str, tuple[int, int, int | None]] = {}
        # Directory path -> its ACLs, set after the late modes.  Its default ACL: set at once,
        # the files the layer puts in the directory would inherit it, and hold ACLs their
        # entries lack (GNU tar waits the same way).  Its access ACL sets the mode's
        # permissions (see _xattrs_then_mode): set at once, it could shut us out of the
        # directory (without privilege), or a late mode would overwrite what it set.
        self.late_acls: dict[str, dict[str, bytes]] = {}
        # Directory path -> whether it holds a default ACL, which what is made in it inherits
        # (a lower layer's, in a full copy): what this layer makes there drops it.
        self.acl_dirs: dict[str, bool] = {}
        # Device nodes left out without the privilege to make them (see _special).
        self.skipped: set[str] = set()
        # Directories a path needed and this run made: an entry that failed while
        # this stayed put wrote nothing (see _Extractor._entry).
        self.dirs_made = 0

    # ----- what a format provides ------------------------------------------------------

    def _entry(self, e: TarEntry) -> int:
        """Write entry *e*; returns the bytes it counts towards the layer's size."""
        raise NotImplementedError

    def _resolve_dir(self, rel: str) -> int:
        """Open the existing directory *rel* of the layer (OSError as ``openat`` gives)."""
        return confine.resolve_dir(self.root_fd, rel)

    def _open_dir_nofollow(self, dir_fd: int, rel: str, flags: int = _OPEN_DIR) -> int:
        """Open directory *rel* below *dir_fd* with *flags*, its last component not followed."""
        return confine.open_at_root(dir_fd, rel, flags)

    def _implied_metadata(self, fd: int, rel: str) -> None:
        """Owner and mode of directory *rel*, made only because a path needed it."""
        raise NotImplementedError

    def _refuse_lower_symlink(self, rel: str) -> None:
        """Raise OSError (ELOOP) if directory *rel* may not be made: the union shows a
        lower layer's symlink there (ENOTDIR: another file).  Called before the directory
        is made."""
        raise NotImplementedError

    def _error_text(self, x: OSError) -> str:
        """How an error writing an entry is told."""
        return x.strerror or str(x)

    # ----- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Write every entry of the reader; returns the layer's size."""
        size = 0
        read_next = self.reader.next
        began = False  # whether any entry reached the disk: a failure before leaves the layer as it was
        while True:
            try:
                e = read_next()
            except (OSError, EOFError) as x:  # the stream, not the archive, failed
                failed = ArchiveError("", f"reading the layer: {x}")
                failed.wrote_nothing = not began
                raise failed from x
            except GraphDriverError as x:
                x.wrote_nothing = not began
                raise
            if e is None:
                break
            self.in_use.clear()
            if self.stale or len(self.dirs) > self.cache_size:
                self._trim_cache()
            try:
                size += self._entry(e)
            except GraphDriverError as x:
                # A format marks an entry it refused before writing any of it; the
                # layer is untouched only if no entry before it was written either.
                x.wrote_nothing = x.wrote_nothing and not began
                raise
            except OSError as x:
                raise _entry_error(e.name, x, self._error_text(x)) from x
            except ValueError as x:  # a NUL byte in a name
                raise ArchiveError(e.name, str(x)) from x
            except OverflowError as x:  # a number no system call takes
                raise ArchiveError(e.name, "a number in the entry is out of range") from x
            began = True
        try:
            self._finish()
        except OSError as x:
            raise ArchiveError("", f"finishing directories: {x.strerror or x}") from x
        return size

    # ----- directories and the fd cache -------------------------------------

    def _made(self, rel: str) -> None:
        """Note *rel* as this layer's, and the folders on its way as leading to it."""
        self.created.add(rel)
        up = rel.rpartition("/")[0]
        while up and up not in self.ancestors:
            self.ancestors.add(up)
            up = up.rpartition("/")[0]

    def _dir_fd(self, rel: str, *, create: bool = True) -> int:
        """An fd of directory *rel*, created (with missing parents) if *create*."""
        if not rel:
            return self.root_fd
        fd = self.dirs.get(rel)
        if fd is not None:
            self.in_use.add(rel)
            return fd
        try:
            fd = self._with_fds(self._resolve_dir, rel)
        except FileNotFoundError:
            if not create:
                raise
            return self._make_dirs(rel)
        self._cache(rel, fd)
        if rel not in self.pending and rel not in self.created:
            self._keep_times(fd, rel)
        return fd

    def _keep_times(self, fd: int, rel: str) -> None:
        """Restore a directory's times at the end: the layer changes it but does not list it.

        Then a full copy (where a new or deleted child bumps the parent) and an
        overlay upper (whose implied parents copy the lower's) give one tree.
        """
        st = os.fstat(fd)
        self.pending[rel] = (st.st_atime_ns, st.st_mtime_ns, None)

    def _existing_dir(self, rel: str) -> int | None:
        """An fd of directory *rel*; None if it does not exist or is no directory."""
        try:
            return self._dir_fd(rel, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _make_dirs(self, rel: str) -> int:
        """Create the missing directories of *rel* (Docker's implied directories)."""
        comps = rel.split("/")
        # The deepest existing ancestor: nearly always the parent.
        n = len(comps) - 1
        fd = self.root_fd
        while n > 0:
            try:
                fd = self._dir_fd("/".join(comps[:n]), create=False)
                break
            except FileNotFoundError:
                n -= 1
        owned = False
        try:
            for i in range(n, len(comps)):  # every check before the first directory is made
                self._refuse_lower_symlink("/".join(comps[: i + 1]))
            for i in range(n, len(comps)):
                prefix = "/".join(comps[: i + 1])
                try:
                    sc.mkdir_at(comps[i], 0o700, dir_fd=fd)
                except FileExistsError:
                    # Resolution said ENOENT, so this is a dangling symlink.
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)) from None
                self.dirs_made += 1
                inherited = self._inherits(fd, prefix)
                # Only the deepest is cached: a hostile path thousands of
                # levels deep must not pin thousands of fds.
                sub = self._with_fds(os.open, comps[i], _OPEN_DIR, dir_fd=fd)
                if inherited:
                    self._drop_xattrs(sub, prefix, _ACLS)
                if owned:
                    os.close(fd)
                fd, owned = sub, True
                self._implied_metadata(fd, prefix)
                self._made(prefix)
            self._cache(rel, fd)
            owned = False
            return fd
        finally:
            if owned:
                os.close(fd)

    def _in_union(self, rel: str, with_layer: bool = False) -> tuple[int, int, os.stat_result] | None:
        """Where the lower layers' union has *rel* (with the layer itself first, when
        *with_layer*: index 0), as :func:`confine.find_in_union` tells it: what a nearer
        layer deleted or made opaque is not there."""
        layers = (self.root_fd, *self.lower_fds) if with_layer else self.lower_fds
        return confine.find_in_union(layers, rel, self.opaque_xattr)

    def _lower_dir_stat(self, rel: str) -> os.stat_result | None:
        """The ``stat`` of directory *rel* in the union of the lower layers, if it is one there."""
        try:
            found = self._in_union(rel)
        except OSError:
            return None  # through a symlink: not a directory the union shows there
        if found is None:
            return None
        os.close(found[1])
        return found[2] if stat.S_ISDIR(found[2].st_mode) else None

    def _cache(self, rel: str, fd: int) -> None:
        """Keep *fd* as directory *rel*'s for this entry and later ones, making room first."""
        if len(self.dirs) >= self.cache_size:
            self._evict(len(self.dirs) - self.cache_size + 1)
        self.dirs[rel] = fd
        self.in_use.add(rel)

    def _evict(self, count: int) -> int:
        """Close up to *count* cached fds the current entry was not given, oldest first."""
        idle = [rel for rel in self.dirs if rel not in self.in_use][:count]
        for rel in idle:
            os.close(self.dirs.pop(rel))
        return len(idle)

    def _with_fds(self, fn: Callable[..., int], *args: object, **kwargs: object) -> int:
        """``fn(*args, **kwargs)``, an fd; when none is left (EMFILE), the cache halves and it
        is tried again, until nothing idle is left to close."""
        while True:
            try:
                return fn(*args, **kwargs)
            except OSError as x:
                if not fdlimit.exhausted(x):
                    raise
                self.cache_size = max(1, len(self.dirs) // 2)
                if not self._evict(max(1, len(self.dirs) - self.cache_size)):
                    raise

    def _trim_cache(self) -> None:
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()
        while len(self.dirs) > self.cache_size:
            os.close(self.dirs.pop(next(iter(self.dirs))))

    def _invalidate(self) -> None:
        """Forget every cached directory: a directory or symlink went away.

        Cached paths may have resolved through it (even via other symlinks),
        so nothing cached can be trusted.  The fds are closed after the entry.
        """
        self.stale.extend(self.dirs.values())
        self.dirs.clear()
        self.acl_dirs.clear()

    def close(self) -> None:
        """Close every cached fd."""
        self._invalidate()
        self._trim_cache()

    # ----- removing what is in the way ---------------------------------------------

    def _remove(self, pfd: int, name: str, rel: str) -> bool:
        """Remove *name* of *pfd* (recursively); False if there was nothing."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            self._invalidate()
            remove_tree_at(pfd, name)
            inside = rel + "/"
            for p in [p for p in self.pending if p == rel or p.startswith(inside)]:
                del self.pending[p]
                self.late_acls.pop(p, None)
        else:
            os.unlink(name, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self._invalidate()
        self._removed(rel)
        return True

    def _inherits(self, pfd: int, rel: str) -> bool:
        """Whether what is made at *rel* in its directory, open as *pfd*, inherits ACLs: the
        directory holds a default ACL.  Asked once a directory."""
        parent = rel.rpartition("/")[0]
        known = self.acl_dirs.get(parent)
        if known is None:
            try:
                os.getxattr(pfd, DEFAULT_ACL)
                known = True
            except OSError as x:
                if x.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                known = False
            self.acl_dirs[parent] = known
        return known

    def _drop_xattrs(self, target: int | tuple[int, str], rel: str, names: Sequence[str]) -> None:
        """Remove the xattrs *names* of *target* (an fd, or a directory's fd and a name in it,
        not followed), those it has: what the entry at *rel* lacks.  An ACL inherited from the
        directory, above all: a file holds the ACLs its entry gives alone, as on a layer of its
        own (where the default ACL of its directory, set once the archive is written, gives none)."""
        for name in names:
            try:
                if isinstance(target, int):
                    sc.fremovexattr(target, name)
                else:
                    sc.lremovexattr_at(*target, name)
            except OSError as x:
                if x.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise ArchiveError(rel, f"removing xattr {name!r}: {x.strerror}") from x
        if DEFAULT_ACL in names:
            self.acl_dirs[rel] = False

    def _removed(self, rel: str) -> None:
        """*rel* (and what was below it) was removed: a format may drop what it kept about it."""

    # ----- the end --------------------------------------------------------------------

    def _finish(self) -> None:
        """Set directory times and late modes, deepest first (creating children moved them)."""
        self._trim_cache()
        # Deepest first, so a late mode never locks us out of a child.
        for rel in sorted(self.pending, key=_depth, reverse=True):
            atime, mtime, late = self.pending[rel]
            try:
                # No following: a later entry may have put a symlink there.
                fd = self._open_dir_nofollow(self.root_fd, rel) if rel else self.root_fd
            except OSError as x:
                if x.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                    continue
                raise
            try:
                if late is not None:
                    sc.fchmod(fd, late)
                for name, acl in self.late_acls.get(rel, {}).items():
                    try:
                        sc.fsetxattr(fd, name, acl)
                    except OSError as x:
                        raise ArchiveError(rel, f"setting xattr {name!r}: {x.strerror}") from x
                os.utime(fd, ns=(atime, mtime))
            finally:
                if fd != self.root_fd:
                    os.close(fd)


class _Extractor(Extraction):
    """An OCI (Docker) layer tarball into a directory: the entry kinds and whiteouts."""

    def __init__(
        self,
        reader: EntrySource,
        root_fd: int,
        opts: ApplyOptions,
        lower_fds: tuple[int, ...],
        stats: ExtractStats,
    ) -> None:
        super().__init__(reader, root_fd, lower_fds, opts.opaque_xattr)
        self.opts = opts
        self.stats = stats
        self.overlay = opts.whiteouts == WhiteoutMode.OVERLAY
        self.same_ids = opts.idmaps.identity  # archive owners are host owners
        self.privileged = privileged()
        # Without privileges the user's own ids are root's (a tarball built from the
        # layer's files gives them back as 0:0): a 0:0 owner is the user's already, so
        # it is neither set (chown to root would fail) nor counted as skipped.
        self.own_is_root = not self.privileged
        tolerant = opts.ignore_chown_errors
        self.tolerant = (not self.privileged) if tolerant is None else tolerant
        self.umask = _current_umask()
        # Overlay: directories this layer made opaque; what the lowers hold below them is hidden.
        self.hidden: set[str] = set()
        # Symlinks this archive made (a later entry's path may go through one), by where they are.
        self.own_links: set[str] = set()
        # The last folder found to lie through none of them, and how many had been made then
        # (entries come folder by folder: most ask again about the folder just asked about).
        self._clear: tuple[str, int] = ("", -1)
        self._links_made = 0
        # Overlay: what the upper directory holds only as a copy of the lowers' (a folder a
        # path implied, a hard link's target): an opaque folder above it hides it, as in a copy.
        self.copies: set[str] = set()
        # Overlay: the whiteout devices this archive made (an opaque folder above drops them).
        self.devices: set[str] = set()
        self._keep_times(root_fd, "")

    def _entry(self, e: TarEntry) -> int:
        if e.type in te.NO_FILE_TYPES:
            return 0
        try:
            t, rel = self._admit(e)
            parent, _, base = rel.rpartition("/")
            if self.own_links and parent:
                parent = self._through_own_links(parent)
                rel = _join(parent, base)
            if WHITEOUT_PREFIX in parent and self._below_reserved(e, parent):
                return 0
        except GraphDriverError as x:
            x.wrote_nothing = True  # of this entry (see Extraction.run)
            raise
        except _NoFolder as x:
            if base.startswith(WHITEOUT_PREFIX):
                return 0  # nothing there to delete, as Docker's unpacker finds nothing
            raise self._refused(e, x) from x
        except OSError as x:  # the way goes through a lower layer's symlink
            raise self._refused(e, x) from x
        if base.startswith(WHITEOUT_PREFIX):
            made = self.dirs_made
            try:
                self._whiteout(e, parent, base)
            except OSError as x:
                if x.errno != errno.ELOOP or self.dirs_made != made:
                    raise
                raise self._refused(e, x) from x  # on the way to what it deletes: a lower symlink
            return 0
        if rel == ".":
            self._dir_metadata(self.root_fd, e, "")
            return 0
        if t == LNK:  # before its folders are made: a refusal here has written nothing
            self._refuse_missing_target(e, rel)
        made = self.dirs_made
        try:
            pfd = self._parent_fd(e, parent)
        except NotADirectoryError as x:
            if self.dirs_made != made:
                raise
            raise self._refused(e, x) from x  # a file in the way: nothing made
        if self.copies:
            self.copies.discard(rel)  # the entry's own now
        if t in REGULAR_TYPES:
            self._regular(e, rel, pfd, base)
            self._made(rel)
            return e.size if e.sparse is None else e.sparse.size
        if t in _DIR_TYPES:
            self._directory(e, rel, pfd, base)
        elif t == SYM:
            self._symlink(e, rel, parent, pfd, base)
        elif t == LNK:
            self._hardlink(e, rel, pfd, base)
        else:
            self._special(e, rel, pfd, base)
        self._made(rel)
        return 0

    def _parent_fd(self, e: TarEntry, parent: str) -> int:
        """The directory entry *e* goes in, made if missing.

        Refused with nothing written when no directory had to be made: only
        opening the existing ones failed (a path through a lower symlink).
        """
        made = self.dirs_made
        try:
            return self._dir_fd(parent)
        except NotADirectoryError:
            replaced = self._whiteout_on_the_way(parent) if self.overlay else None
            if replaced is None:
                raise
            return self._dir_replacing_whiteout(parent, *replaced)
        except OSError as x:
            if self.dirs_made != made:
                raise
            raise self._refused(e, x) from x

    def _refused(self, e: TarEntry, x: OSError) -> ArchiveError:
        """*e* refused for *x* before any of it was written."""
        refused = _entry_error(e.name, x, self._error_text(x))
        refused.wrote_nothing = True
        return refused

    def _refuse_missing_target(self, e: TarEntry, rel: str) -> None:
        """Refuse hard link *e* before writing when its target is nowhere: not in the
        layer, not a device node left out, not in the union of the lower layers (where
        what a nearer layer, or this one, deleted or made opaque is not)."""
        try:
            target = self._link_target(e)
        except OSError as x:
            raise self._refused(e, x) from x
        if target == rel or target in self.skipped:
            return
        tparent, _, tbase = target.rpartition("/")
        try:
            tfd = self._existing_dir(tparent)
            if tfd is not None:
                st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
                if not (self.overlay and is_whiteout(st)):
                    return
                raise self._missing_target(e)  # this layer deleted it
        except FileNotFoundError:
            pass
        except OSError as x:
            if x.errno == errno.ELOOP:  # the way to the target goes through a lower symlink
                raise self._refused(e, x) from x
            return  # not to be told here: the link itself says what is wrong
        try:
            found = self._in_union(target, with_layer=True) if self.lower_fds else None
        except OSError as x:
            if x.errno == errno.ELOOP:
                raise self._refused(e, x) from x
            raise
        if found is None:
            raise self._missing_target(e)
        os.close(found[1])

    def _missing_target(self, e: TarEntry) -> ArchiveError:
        refused = ArchiveError(e.name, f"hardlink target {e.linkname!r} is missing")
        refused.wrote_nothing = True
        return refused

    def _admit(self, e: TarEntry) -> tuple[str, str]:
        """The type *e* is written as and its clean path; raises for an entry refused outright.

        Nothing is written before these checks, so an archive whose first entry
        fails them leaves the layer as it was.
        """
        t = e.type
        if e.sparse is not None:
            t = te.REG  # its data is unpacked into a regular file
        elif t not in _KNOWN_TYPES:
            kind = _UNSUPPORTED_TYPES.get(t)
            raise ArchiveError(e.name, f"unsupported entry type {t!r}" + (f" ({kind})" if kind else ""))
        if not e.name:
            raise ArchiveError(e.name, "empty name")
        rel = clean_name(e.name, e.name)
        if len(rel) >= QUICK_PATH and not fits(rel):
            # Written a folder at a time it would fit, but no command could name it whole.
            raise ArchiveError(e.name, f"File name too long: {len(os.fsencode(rel))} bytes, "
                                       f"where a path may have {PATH_MAX - 1}")
        if not (0 <= e.uid < _NO_ID and 0 <= e.gid < _NO_ID):
            # chown(2) reads 2**32 - 1 as "leave it": the owner would silently not be
            # set (the root entry's and an overlay whiteout's are set too).
            raise ArchiveError(e.name, f"owner {e.uid}:{e.gid} is not a valid user and group id")
        if e.pax and t in REGULAR_TYPES and e.sparse is None and pax.sparse(e.pax):
            # Its data is the packed extents (and map), in a layout this reader does not know.
            raise ArchiveError(e.name, sparse.unknown_version(e.pax))
        if rel == "." and t not in _DIR_TYPES:
            raise ArchiveError(e.name, "the layer root can only be a directory")
        if t == SYM and e.linkname and not fits(e.linkname):
            raise ArchiveError(e.name, f"symlink target too long: {len(os.fsencode(e.linkname))} "
                                       f"bytes, where a target may have {PATH_MAX - 1}")
        if t == LNK and not rel.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            if not e.linkname:
                raise ArchiveError(e.name, "hardlink with an empty target")
            if clean_name(e.linkname, e.name, "hardlink target") == ".":
                raise ArchiveError(e.name, "hardlink to a directory")
        return t, rel

    def _below_reserved(self, e: TarEntry, parent: str) -> bool:
        """Whether to skip an entry below a ``.wh.`` directory name (AUFS metadata).

        Raises for entries below a plain whiteout name (a deleted path has no children) or
        below an opaque marker (a marker, not a folder).
        """
        for comp in parent.split("/"):
            if not comp.startswith(WHITEOUT_PREFIX):
                continue
            if not comp.startswith(WHITEOUT_META_PREFIX):
                raise ArchiveError(e.name, f"entries below the whiteout {comp!r}")
            if comp == OPAQUE_WHITEOUT:
                raise ArchiveError(e.name, f"entries below the opaque whiteout {comp!r}")
            # Hardlink targets of old AUFS layers live in /.wh..wh.plnk: keep
            # those (in a scratch directory removed at the end), skip the rest.
            return not (parent == AUFS_LINK_DIR and e.type in REGULAR_TYPES)
        return False

    def _resolve_dir(self, rel: str) -> int:
        """Open directory *rel*, through no symlink.

        This archive's own symlinks were followed already, the same way on every
        driver (:meth:`_through_own_links`; the layer is marked unreproducible,
        :mod:`.reproducible`).  Any other (an earlier layer's in a full copy, an
        earlier apply's, a lower one a hard link copied up) is never followed: the
        union shows the lower layers' symlinks as they are, and an overlay upper
        directory would make a new directory over one, so the drivers could never
        agree; the entry is refused.
        """
        try:
            return confine.resolve_dir_through_no_symlink(self.root_fd, rel)
        except OSError as x:
            if not confine.is_symlink_error(x):
                raise
        link = confine.first_symlink(self.root_fd, rel)
        if link is not None:
            raise OSError(errno.ELOOP, _through_symlink(link))
        return confine.resolve_dir(self.root_fd, rel)

    def _implied_metadata(self, fd: int, rel: str) -> None:
        # Over lower layers, inherit the lower directory's identity so the
        # union view does not change it (unless this layer hid it: a new directory).
        # Its xattrs too, as the kernel copies a directory up: its ACLs set late, as an
        # entry's (so its default ACL gives the files of this layer none).
        st = None
        if self.lower_fds and not hidden_by(rel, self.hidden):
            st = self._lower_dir_stat(rel)
        xattrs: dict[str, bytes] = {}
        if st is None:
            uid, gid = self._map_ids(rel, 0, 0)
            mode = IMPLIED_DIR_MODE
        else:
            xattrs = self._lower_dir_xattrs(rel)
            uid, gid, mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
            self.pending[rel] = (st.st_atime_ns, st.st_mtime_ns, None)
            self.copies.add(rel)
        self._chown_fd(fd, uid, gid)
        sc.fchmod(fd, mode)
        acls = {k: v for k, v in xattrs.items() if k in _ACLS}
        if acls:
            self.late_acls[rel] = acls
        for name, value in xattrs.items():
            if name not in acls:
                try:
                    sc.fsetxattr(fd, name, value)
                except OSError as x:
                    raise ArchiveError(rel, f"setting xattr {name!r}: {x.strerror}") from x

    def _lower_dir_xattrs(self, rel: str) -> dict[str, bytes]:
        """The xattrs an entry gives of directory *rel* of the union of the lower layers."""
        found = self._in_union(rel)
        if found is None:
            return {}
        _, pfd, _ = found
        try:
            fd = os.open(rel.rpartition("/")[2], _OPEN_DIR, dir_fd=pfd)
        except PermissionError:  # a folder of mode 0000 without privilege: its owner and mode alone
            return {}
        finally:
            os.close(pfd)
        try:
            names = self._settable(os.listxattr(fd))
            return get_xattrs(fd, names) if names else {}
        finally:
            os.close(fd)

    def _refuse_lower_symlink(self, rel: str) -> None:
        """Refuse to make directory *rel* over a symlink the union shows there (see
        :meth:`_resolve_dir`), or over any other file, which a copy holds in the way too."""
        if not self.lower_fds or hidden_by(rel, self.hidden):
            return
        found = self._in_union(rel)
        if found is None:
            return
        _, pfd, st = found
        os.close(pfd)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, _through_symlink(rel))
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))

    def _empty_opaque(self, fd: int, rel: str) -> None:
        """Remove what directory *rel* held before this layer (an opaque marker).

        Whiteouts apply to lower layers only (OCI image spec): what this archive wrote
        there before the marker stays, with the folders on its way, emptied of the rest.
        """
        # Folders to visit by path, each opened when its turn comes: one fd at a
        # time, however deep the layer's own folders go below the marker.
        work = [rel]
        while work:
            drel = work.pop()
            dfd = fd if drel == rel else self._with_fds(self._open_dir_nofollow, self.root_fd, drel)
            try:
                with os.scandir(dfd) as it:
                    children = [(c.name, c.is_dir(follow_symlinks=False)) for c in it]
                for name, is_dir in children:
                    crel = f"{drel}/{name}" if drel else name
                    if is_dir and (crel in self.ancestors or crel in self.created):
                        # On the way to what this layer wrote, or made (or merged) by
                        # it: kept, but what lay below it before the layer goes too.
                        work.append(crel)
                    elif crel not in self.created:
                        self._remove(dfd, name, crel)
            finally:
                if dfd != fd:
                    os.close(dfd)

    # ----- entry kinds ----------------------------------------------------------------

    def _regular(self, e: TarEntry, rel: str, pfd: int, base: str) -> None:
        perm = e.mode & 0o7777
        try:
            fd = os.open(base, _CREATE, perm & 0o777, dir_fd=pfd)
        except FileExistsError:
            # Never write through what is there (a symlink above all): replace it.
            self._remove(pfd, base, rel)
            fd = os.open(base, _CREATE, perm & 0o777, dir_fd=pfd)
        try:
            if e.sparse is not None:
                sparse.unpack(e.sparse, self.reader.read, e.size, fd, e.name)
            elif e.size:
                self.reader.copy_to_fd(fd)
            # The common case spelled out: this runs for every file of every layer.
            uid, gid = (e.uid, e.gid) if self.same_ids else self._owner(e)
            if uid or gid or not self.own_is_root:
                try:
                    sc.fchown(fd, uid, gid)
                except OSError as x:
                    self._chown_failed(x)
            inherited = self._inherits(pfd, rel)
            if inherited:  # its ACL, and a mode masked by it instead of the umask
                self._drop_xattrs(fd, rel, (ACCESS_ACL,))
            if e.xattrs and not self._may_write(perm):
                self._xattrs_then_mode(e, fd, perm)
            else:
                # chown clears setuid/setgid, so those come after it; plain
                # permissions were set by open() unless the umask took some.
                if perm & 0o7000 or perm & self.umask or inherited:
                    sc.fchmod(fd, perm)
                if e.xattrs:
                    self._xattrs(e, lambda k, v: sc.fsetxattr(fd, k, v))
            atime = e.atime_ns
            os.utime(fd, ns=(e.mtime_ns if atime is None else atime, e.mtime_ns))
        finally:
            os.close(fd)

    def _directory(self, e: TarEntry, rel: str, pfd: int, base: str) -> None:
        made = True
        try:
            sc.mkdir_at(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            made = False
        try:
            fd = os.open(base, _OPEN_DIR, dir_fd=pfd)
        except OSError as x:
            if x.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            # Something else than a directory is there (ELOOP: a symlink).  On overlay it
            # hid what the lowers hold at *rel* (a whiteout, or a file of the layer's own),
            # which the new directory must go on hiding, as a copy replaced it.
            hiding = self.overlay and (is_whiteout_at(pfd, base) or self._below(rel))
            self._remove(pfd, base, rel)
            sc.mkdir_at(base, 0o700, dir_fd=pfd)
            made = True
            fd = os.open(base, _OPEN_DIR, dir_fd=pfd)
            if hiding:
                self._set_opaque(e.name, fd)
                self.hidden.add(rel)
        old = self.dirs.get(rel)
        if old is not None:
            self.stale.append(old)
        self.dirs[rel] = fd
        self.in_use.add(rel)  # the entry works with it: no making room closes it
        if made:
            drop: Sequence[str] = _ACLS if self._inherits(pfd, rel) else ()
        else:
            # A directory already there (a lower layer's, in a full copy) takes the entry's
            # metadata: the xattrs it lacks go, and its ACLs are set late (see late_acls).
            drop = [k for k in self._settable(os.listxattr(fd)) if k in _ACLS or k not in e.xattrs]
        self._dir_metadata(fd, e, rel, drop)

    def _settable(self, names: list[str]) -> list[str]:
        """Those of the xattr *names* an entry gives, and this process may set and remove."""
        wanted = [n for n in names if n not in EXCLUDED_XATTRS and not n.startswith(EXCLUDED_XATTR_PREFIXES)]
        return wanted if self.privileged else [n for n in wanted if not n.startswith(PRIVILEGED_XATTRS)]

    def _dir_metadata(self, fd: int, e: TarEntry, rel: str, drop: Sequence[str] = ()) -> None:
        """Set the entry's owner, mode and xattrs on directory *fd*, removing its xattrs *drop*."""
        uid, gid = self._owner(e)
        self._chown_fd(fd, uid, gid)
        perm = e.mode & 0o7777
        late: int | None = None
        if not self.privileged and perm & 0o700 != 0o700:
            # Without CAP_DAC_OVERRIDE a directory we cannot write or search
            # could not be filled: keep it open to us until the end.
            late = perm
            perm |= 0o700
        sc.fchmod(fd, perm)
        if drop:
            self._drop_xattrs(fd, rel, drop)
        self.late_acls.pop(rel, None)
        if e.xattrs:
            xattrs = e.xattrs
            acls = {k: v for k, v in xattrs.items() if k in _ACLS}
            if acls:
                self.late_acls[rel] = acls
                xattrs = {k: v for k, v in xattrs.items() if k not in _ACLS}
            self._xattrs(e, lambda k, v: sc.fsetxattr(fd, k, v), xattrs)
        atime, mtime = _times(e)
        self.pending[rel] = (atime, mtime, late)

    def _symlink(self, e: TarEntry, rel: str, parent: str, pfd: int, base: str) -> None:
        target = e.linkname
        if not target:
            raise ArchiveError(e.name, "symlink with an empty target")
        # The target is content, stored as it is (relative targets above the
        # root included, as GNU tar, bsdtar and containerd store them): nothing
        # here ever follows a symlink, every path is resolved beneath the root.
        try:
            sc.symlink_at(target, base, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, base, rel)
            sc.symlink_at(target, base, dir_fd=pfd)
        uid, gid = self._owner(e)
        self._chown_at(pfd, base, uid, gid)
        if e.xattrs:
            self._xattrs(e, lambda k, v: sc.lsetxattr_at(pfd, base, k, v))
        os.utime(base, ns=_times(e), dir_fd=pfd, follow_symlinks=False)
        self._note_link(rel, True)

    def _note_link(self, rel: str, own: bool) -> None:
        """Note whether what was just made at *rel*, if a symlink, is this archive's own.

        Every place that makes a symlink says so (an entry, a hard link, a copy up), so a
        symlink at a path noted is one the archive made, whatever stood there before.
        """
        if own:
            self.own_links.add(rel)
            self._links_made += 1
        else:
            self.own_links.discard(rel)

    def _through_own_links(self, rel: str, what: str = "its folder") -> str:
        """Where folder *rel* lands once the symlinks this archive made on the way are followed
        in the layer's view, a component at a time as the kernel follows them inside the root
        (``..`` included), the same way on every driver: an overlay upper directory holds a
        symlink but not what it points to (a lower layer's folder), so the target is named.

        Each symlink followed must lead to a folder the view has: nothing makes one for it
        (Docker's and containerd's unpackers do not), else :class:`_NoFolder` says why (*what*
        names *rel* there).  A lower layer's symlink on the way raises ``ELOOP``.
        """
        links = self.own_links
        if self._clear == (rel, self._links_made):  # a symlink taken away leaves it clear
            return rel
        if not links or not any(p in links for p in _prefixes(rel)):
            self._clear = (rel, self._links_made)
            return rel
        todo: list[str | _Followed] = []  # a stack: the next step last
        todo.extend(reversed(rel.split("/")))
        done: list[str] = []
        following: list[_Followed] = []  # the links whose target is being resolved, innermost last
        hops = 0
        while todo:
            step = todo.pop()
            if isinstance(step, _Followed):  # its target is resolved: a folder must be there
                following.pop()
                self._need_folder(done, step, rel, what)
            elif step == "..":
                if done:  # the kernel looks "x/.." up in x: a folder too
                    self._need_folder(done, following[-1] if following else None, rel, what)
                    done.pop()
            elif step not in ("", "."):
                done.append(step)
                followed = self._own_link_at("/".join(done))
                if followed is None:
                    continue
                hops += 1
                if hops > _MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))  # as the kernel says it
                done = [] if followed.target.startswith("/") else done[:-1]
                following.append(followed)
                todo.append(followed)
                todo.extend(followed.target.split("/")[::-1])
        return "/".join(done)

    def _own_link_at(self, path: str) -> _Followed | None:
        """The symlink this archive made at *path*, if it is still one."""
        if path not in self.own_links:
            return None
        parent, _, name = path.rpartition("/")
        try:
            return _Followed(path, os.readlink(name, dir_fd=self._dir_fd(parent, create=False)))
        except OSError:
            return None  # replaced since by a folder or a file: no link any more

    def _need_folder(self, done: list[str], followed: _Followed | None, rel: str, what: str) -> None:
        """Raise :class:`_NoFolder` unless the view has a folder at *done* (the place *followed*,
        a symlink on the way to folder *rel*, leads to so far)."""
        problem = self._folder_problem("/".join(done))
        if problem is None:
            return
        if followed is None:
            raise _NoFolder(f"{what} {rel!r} {problem}")
        if followed.link == rel:
            raise _NoFolder(f"{what} {rel!r} is a symlink to {followed.target!r}, which {problem}")
        raise _NoFolder(f"{what} {rel!r} goes through the symlink {followed.link!r} to "
                        f"{followed.target!r}, which {problem}")

    def _folder_problem(self, path: str) -> str | None:
        """Why the view this layer makes so far (itself over the lower layers) has no folder at
        *path*; None when it has one.  A symlink there or on the way is none of this archive's
        (those were followed): ``ELOOP``, as for any path through it."""
        if not path:
            return None
        try:
            found = self._in_union(path, with_layer=True)
        except OSError as x:
            if x.errno != errno.ELOOP:
                raise
            raise OSError(errno.ELOOP, _through_symlink(self._first_link_in_view(path))) from None
        if found is None:
            return "does not exist in the layer"
        os.close(found[1])
        mode = found[2].st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, _through_symlink(path))
        return None if stat.S_ISDIR(mode) else "is not a folder"

    def _first_link_in_view(self, path: str) -> str:
        """The first component of *path* the view shows as a symlink (for the error)."""
        for prefix in _prefixes(path):
            mode = self._union_mode(prefix, with_layer=True)
            if mode is not None and stat.S_ISLNK(mode):
                return prefix
        return path

    def _special(self, e: TarEntry, rel: str, pfd: int, base: str) -> None:
        kind = _SPECIAL_TYPES[e.type]
        perm = e.mode & 0o7777
        if kind == stat.S_IFCHR and e.devmajor == 0 and e.devminor == 0:
            # Overlay's whiteout: stored, it would delete in an overlay upper directory and
            # be a device elsewhere.  A layer tarball deletes with a .wh. name.
            raise ArchiveError(e.name, _WHITEOUT_DEVICE)
        if kind != stat.S_IFIFO and not (0 <= e.devmajor < _MAJORS and 0 <= e.devminor < _MINORS):
            # The kernel keeps 12 bits of major and 20 of minor: more would silently wrap.
            raise ArchiveError(e.name, f"device number {e.devmajor}:{e.devminor} is out of range")
        dev = 0 if kind == stat.S_IFIFO else os.makedev(e.devmajor, e.devminor)
        try:
            self._mknod(pfd, base, rel, kind | (perm & 0o777), dev)
        except PermissionError:
            if not self.tolerant or kind == stat.S_IFIFO:
                raise
            self.stats.skipped_devices += 1
            self.skipped.add(rel)  # and so are the hard links to it
            return
        uid, gid = self._owner(e)
        self._chown_at(pfd, base, uid, gid)
        inherited = self._inherits(pfd, rel)
        if inherited:
            self._drop_xattrs((pfd, base), rel, (ACCESS_ACL,))
        if perm & 0o7000 or perm & self.umask or inherited:
            # Just made by mknod: not a symlink, so following is harmless.
            sc.chmod_at(base, perm, dir_fd=pfd)
        if e.xattrs:
            self._xattrs(e, lambda k, v: sc.lsetxattr_at(pfd, base, k, v))
        os.utime(base, ns=_times(e), dir_fd=pfd, follow_symlinks=False)

    def _mknod(self, pfd: int, name: str, rel: str, mode: int, dev: int) -> None:
        try:
            sc.mknod_at(name, mode, dev, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, name, rel)
            sc.mknod_at(name, mode, dev, dir_fd=pfd)

    def _link_target(self, e: TarEntry) -> str:
        """Hard link *e*'s target (checked in :meth:`_admit`), through this archive's symlinks."""
        target = clean_name(e.linkname, e.name, "hardlink target")
        if self.own_links and "/" in target:
            tparent, _, tbase = target.rpartition("/")
            target = _join(self._through_own_links(tparent, "its hardlink target's folder"), tbase)
        return target

    def _hardlink(self, e: TarEntry, rel: str, pfd: int, base: str) -> None:
        target = self._link_target(e)
        tparent, _, tbase = target.rpartition("/")
        if target == rel:
            # A link to itself: nothing to do where the layer holds a file there; a lower
            # layer's (overlay) is copied up, as the target of any other link is.
            mode = self._union_mode(rel, with_layer=True)
            if mode is None:
                raise ArchiveError(e.name, f"hardlink target {e.linkname!r} is missing")
            if stat.S_ISDIR(mode):
                raise ArchiveError(e.name, "hardlink to a directory")
            if not _exists_at(pfd, base) and self._copy_up(e, target):
                self.copies.discard(rel)  # the entry's own file, not a copy for a link
            return
        copied = False
        for _ in range(4):
            tfd = self._existing_dir(tparent)
            if tfd is not None:
                try:
                    # follow_symlinks=False: a link to a symlink is a symlink.
                    sc.link_at(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                    self._note_link(rel, target in self.own_links)  # a hard link to a symlink is one
                    return
                except FileExistsError:
                    self._remove(pfd, base, rel)
                    continue
                except FileNotFoundError:
                    pass
                except PermissionError:
                    st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        raise ArchiveError(e.name, "hardlink to a directory") from None
                    raise
            if target in self.skipped:  # a device node this user cannot make: its links go with it
                self.stats.skipped_devices += 1
                return
            if copied or not self._copy_up(e, target):
                raise ArchiveError(e.name, f"hardlink target {e.linkname!r} is missing")
            copied = True
        raise ArchiveError(e.name, f"cannot link to {e.linkname!r}")

    # ----- whiteouts ------------------------------------------------------------------

    def _whiteout(self, e: TarEntry, parent: str, base: str) -> None:
        if base == OPAQUE_WHITEOUT:
            self._opaque(e, parent)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # reserved AUFS metadata (.wh..wh.plnk, .wh..wh.aufs, ...)
        name = base[len(WHITEOUT_PREFIX) :]
        if name == "..":
            raise BreakoutError(e.name, "whiteout target escapes the layer")
        if name in ("", "."):
            raise ArchiveError(e.name, "whiteout without a name")
        rel = f"{parent}/{name}" if parent else name
        if self.overlay and self._union_dir(parent):
            self._whiteout_device(e, parent, name, rel)
            return
        pfd = self._marker_folder(e, parent)
        if pfd is not None:
            self._remove(pfd, name, rel)

    def _whiteout_device(self, e: TarEntry, parent: str, name: str, rel: str) -> None:
        """Overlay: hide what the lower layers show at *rel*, in folder *parent* of the view."""
        if not self._below(rel):
            # Nothing of the lower layers to hide: a whiteout device there would show in the
            # view as an entry no one can read.  What this layer put there goes, as in a copy.
            pfd = self._existing_dir(parent)
            if pfd is not None:
                self._remove(pfd, name, rel)
            return
        try:
            pfd = self._dir_fd(parent)
        except NotADirectoryError:
            return  # below a deleted (or non-directory) path: nothing to hide
        self._mknod(pfd, name, rel, stat.S_IFCHR, 0)
        uid, gid = self._owner(e)
        self._chown_at(pfd, name, uid, gid)
        self._made(rel)
        self.devices.add(rel)

    def _opaque(self, e: TarEntry, parent: str) -> None:
        fd = self._marker_folder(e, parent)
        if fd is None:
            return  # a file: nothing to hide, no folder made, as in a copy
        # What the folder held before this archive goes, in a copy as in an upper
        # directory (an apply to a layer that has files there already).
        self._empty_opaque(fd, parent)
        if not self.overlay:
            return
        if not hidden_by(parent, self.hidden):  # else nothing of the lowers' was put there since
            self._drop_copies(parent)
        if not parent and not hidden_by("", self.hidden):
            self._hide_lower_root(e)
        self._set_opaque(e.name, fd)
        self.hidden.add(parent)

    def _marker_folder(self, e: TarEntry, parent: str) -> int | None:
        """The folder whiteout or opaque marker *e* is in, made with the folders missing on its
        way as for a file's entry (Docker's and containers-storage's unpackers make them too).
        None where something else than a folder is on the way: nothing there to hide."""
        if self.overlay and not self._union_dir(parent) and not self._missing_folder(parent):
            return None  # a lower layer's file, which the upper directory lacks
        try:
            return self._parent_fd(e, parent)
        except NotADirectoryError:
            return None

    def _missing_folder(self, rel: str) -> bool:
        """Overlay: whether the view this layer makes so far lacks folder *rel* with nothing
        but folders on the way to where it would be (a path this layer deleted included)."""
        for prefix in _prefixes(rel):
            mode = self._union_mode(prefix, with_layer=True)
            if mode is None:
                return True
            if not stat.S_ISDIR(mode):
                return False
        return False

    def _drop_copies(self, rel: str) -> None:
        """Overlay: remove what this archive put below directory *rel* for the lowers' sake
        (copies of their folders and files, whiteout devices), now that *rel* is made opaque:
        the folder shows what a copy shows (see :meth:`_empty_opaque`)."""
        inside = rel + "/" if rel else ""
        below = {p for p in self.copies | self.devices if p.startswith(inside)}
        if not below:
            return
        # The folders on the way to its own entries stay.
        above = _folders_above(self.created - self.copies - self.devices, rel)
        for path in sorted(below - above):  # a folder before what is inside it
            parent, _, name = path.rpartition("/")
            pfd = self._existing_dir(parent)  # None: gone with a folder above
            if pfd is not None:
                self._remove(pfd, name, path)
        self.copies -= below - above
        self.devices -= below

    def _removed(self, rel: str) -> None:
        if self.copies or self.devices:
            inside = rel + "/"
            for kept in (self.copies, self.devices):
                kept.difference_update([p for p in kept if p == rel or p.startswith(inside)])

    def _hide_lower_root(self, e: TarEntry) -> None:
        """Overlay: an opaque root, which the kernel ignores on an upper directory's root.
        What the lower layers show there is whited out name by name (a folder this layer
        already made there is made opaque instead): the view a copy gives (vfs)."""
        uid, gid = self._owner(e)
        for name in sorted(self._lower_root_names()):
            try:
                st = os.stat(name, dir_fd=self.root_fd, follow_symlinks=False)
            except FileNotFoundError:
                sc.mknod_at(name, stat.S_IFCHR, 0, dir_fd=self.root_fd)
                self._chown_at(self.root_fd, name, uid, gid)
                self._made(name)
                continue
            if stat.S_ISDIR(st.st_mode):
                self._set_opaque(e.name, self._dir_fd(name, create=False))
                self.hidden.add(name)

    def _lower_root_names(self) -> set[str]:
        """The names the lower layers' union shows at the root."""
        seen: set[str] = set()
        gone: set[str] = set()
        for lower in self.lower_fds:
            with os.scandir(lower) as it:
                for entry in it:
                    if entry.name in seen or entry.name in gone:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    (gone if is_whiteout(st) else seen).add(entry.name)
        return seen

    def _below(self, rel: str) -> bool:
        """Overlay: whether the lower layers' union shows something at *rel* that this layer
        has not hidden behind an opaque folder above it (what a whiteout there would hide).

        An opaque folder hides what is inside it, not itself; and a name at the root stays
        the lowers' whatever the root's marker (the kernel ignores it on an upper root).
        """
        if not self.lower_fds:
            return False
        parent = rel.rpartition("/")[0]
        if parent and (hidden_by(parent, self.hidden) or self._opaque_already(parent)):
            return False
        return self._union_mode(rel, with_layer=False) is not None

    def _opaque_already(self, rel: str) -> bool:
        """Overlay: whether a folder of this layer on the way to *rel*, or *rel*, was made
        opaque before this archive (an apply to a layer an earlier tarball marked)."""
        for prefix in _prefixes(rel):
            fd = self._existing_dir(prefix)
            if fd is None:
                return False
            if confine.is_opaque(fd, self.opaque_xattr):
                return True
        return False

    def _union_dir(self, rel: str) -> bool:
        """Overlay: whether *rel* is a directory in the view this layer makes so far (itself
        over the lower layers' union); a whiteout's folder must be one to hide anything."""
        if not rel:
            return True
        mode = self._union_mode(rel, with_layer=True)
        return mode is not None and (stat.S_ISDIR(mode) or stat.S_ISLNK(mode))  # a symlink: refused there

    def _union_mode(self, rel: str, *, with_layer: bool) -> int | None:
        """The file type and mode the union has at *rel* (see :meth:`_in_union`); None when
        it has nothing there; a symlink's when the way there goes through one (making the
        folder then says what happens)."""
        try:
            found = self._in_union(rel, with_layer=with_layer)
        except OSError as x:
            if x.errno == errno.ELOOP:
                return stat.S_IFLNK
            raise
        if found is None:
            return None
        os.close(found[1])
        return found[2].st_mode

    def _set_opaque(self, name: str, fd: int) -> None:
        try:
            sc.fsetxattr(fd, self.opts.opaque_xattr, b"y")
        except OSError as x:
            raise ArchiveError(
                name, f"marking the directory opaque ({self.opts.opaque_xattr}): {x.strerror}"
            ) from x

    def _dir_replacing_whiteout(self, rel: str, parent: str, name: str) -> int:
        """Overlay: directory *rel*, made through the whiteout device *name* of *parent* (a
        path the layer deleted, then puts something below); the directory made in its place
        is opaque, as an entry for it would have made it."""
        self._remove(self._dir_fd(parent, create=False), name, _join(parent, name))
        self.hidden.add(_join(parent, name))  # made as a new directory, nothing of the lowers' below
        fd = self._dir_fd(rel)
        self._set_opaque(rel, self._dir_fd(_join(parent, name), create=False))
        return fd

    def _whiteout_on_the_way(self, rel: str) -> tuple[str, str] | None:
        """The (parent, name) of the whiteout device that directory *rel* runs into, if any."""
        comps = rel.split("/")
        for i in range(len(comps)):
            parent = "/".join(comps[:i])
            try:
                pfd = self._dir_fd(parent, create=False)
                st = os.stat(comps[i], dir_fd=pfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if is_whiteout(st):
                return parent, comps[i]
            if not stat.S_ISDIR(st.st_mode):
                return None
        return None

    # ----- hardlink targets from lower layers ---------------------------------------

    def _copy_up(self, e: TarEntry, target: str) -> bool:
        """Copy *target* from the lower layers' union; False if it is not there (or is hidden
        by this layer)."""
        found = self._in_union(target, with_layer=True)
        if found is None:
            return False
        index, lpfd, st = found
        if index == 0:  # this layer's, where the link could not reach it
            os.close(lpfd)
            return False
        try:
            if stat.S_ISDIR(st.st_mode):
                raise ArchiveError(e.name, "hardlink to a directory")
            tparent, _, tbase = target.rpartition("/")
            self._copy_node(lpfd, tbase, st, self._dir_fd(tparent), e)
        finally:
            os.close(lpfd)
        self._note_link(target, False)  # a lower layer's symlink, if it is one
        self._made(target)
        self.copies.add(target)
        return True

    def _copy_node(
        self, src_dir: int, name: str, st: os.stat_result, dst_dir: int, e: TarEntry
    ) -> None:
        # Lower layers hold host ids already: no mapping.
        mode = stat.S_IMODE(st.st_mode)
        times = (st.st_atime_ns, st.st_mtime_ns)
        if stat.S_ISREG(st.st_mode):
            src = open_readable(name, src_dir)  # a lower /etc/shadow (0000) too, without root
            dst = -1
            try:
                dst = os.open(name, _CREATE, 0o600, dir_fd=dst_dir)
                sc.copy_fd(src, dst, st.st_size)
                self._chown_fd(dst, st.st_uid, st.st_gid)
                xattrs = get_xattrs(src, os.listxattr(src))
                if xattrs and not self._may_write(mode):
                    self._xattrs_then_mode(e, dst, mode, xattrs)
                else:
                    sc.fchmod(dst, mode)
                    self._xattrs(e, lambda k, v: sc.fsetxattr(dst, k, v), xattrs)
                os.utime(dst, ns=times)
            finally:
                os.close(src)
                if dst >= 0:
                    os.close(dst)
            return
        if stat.S_ISLNK(st.st_mode):
            sc.symlink_at(os.readlink(name, dir_fd=src_dir), name, dir_fd=dst_dir)
        else:
            sc.mknod_at(name, st.st_mode, st.st_rdev, dir_fd=dst_dir)
            sc.chmod_at(name, mode, dir_fd=dst_dir)
        self._chown_at(dst_dir, name, st.st_uid, st.st_gid)
        os.utime(name, ns=times, dir_fd=dst_dir, follow_symlinks=False)

    # ----- metadata -------------------------------------------------------------------

    def _map_ids(self, entry: str, uid: int, gid: int) -> tuple[int, int]:
        maps = self.opts.idmaps
        if maps.identity:
            return uid, gid
        try:
            return maps.uids.to_host(uid), maps.gids.to_host(gid)
        except InvalidArgument as x:
            raise ArchiveError(entry, f"owner {uid}:{gid} is outside the id map") from x

    def _owner(self, e: TarEntry) -> tuple[int, int]:
        return self._map_ids(e.name, e.uid, e.gid)

    def _chown_fd(self, fd: int, uid: int, gid: int) -> None:
        if not (uid or gid) and self.own_is_root:
            return
        try:
            sc.fchown(fd, uid, gid)
        except OSError as x:
            self._chown_failed(x)

    def _chown_at(self, dfd: int, name: str, uid: int, gid: int) -> None:
        if not (uid or gid) and self.own_is_root:
            return
        try:
            sc.chown_at(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as x:
            self._chown_failed(x)

    def _chown_failed(self, x: OSError) -> None:
        # EINVAL: an id the user namespace does not map.
        if self.tolerant and x.errno in (errno.EPERM, errno.EINVAL):
            self.stats.skipped_chowns += 1
            return
        raise x

    def _may_write(self, perm: int) -> bool:
        """Whether this process may write a file of its own of mode *perm*: without
        privilege, only while the owner's write bit is set."""
        return self.privileged or bool(perm & 0o200)

    def _xattrs_then_mode(
        self, e: TarEntry, fd: int, perm: int, xattrs: dict[str, bytes] | None = None
    ) -> None:
        """Set the xattrs of the regular file open as *fd*, then its mode *perm*: ``user.*``
        xattrs are set only on a file the process may write, so without privilege a file
        its owner may not write (``0444``, ``0000``, ``4111``) gets them with the owner's
        write bit lent for the moment.

        An access ACL comes last, as on a file we may write: the kernel sets the mode's
        permissions from it (the group's from its mask), where a mode set after it would
        rewrite the ACL instead (see :func:`graphdriver.layerio.xattrs.kept_mode`)."""
        xattrs = e.xattrs if xattrs is None else xattrs
        acl = xattrs.get(ACCESS_ACL)
        if acl is not None:
            xattrs = {k: v for k, v in xattrs.items() if k != ACCESS_ACL}
        sc.fchmod(fd, perm | 0o200)
        self._xattrs(e, lambda k, v: sc.fsetxattr(fd, k, v), xattrs)
        sc.fchmod(fd, perm)
        if acl is not None:
            self._xattrs(e, lambda k, v: sc.fsetxattr(fd, k, v), {ACCESS_ACL: acl})

    def _xattrs(
        self,
        e: TarEntry,
        setter: Callable[[str, bytes], None],
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        for key, value in (e.xattrs if xattrs is None else xattrs).items():
            if key in _IGNORED_XATTRS:
                continue
            if key.startswith(_OVERLAY_PRIVATE_XATTRS):
                # The union's own bookkeeping: in any layer of a chain the kernel
                # would obey it (hide files, redirect them), so no archive sets it.
                self.stats.skipped_xattrs += 1
                continue
            if not self.privileged and key.startswith(PRIVILEGED_XATTRS):
                # Left out without privilege, even where a user namespace of the user's
                # own would take them (a namespaced capability): a layer reads the same.
                self.stats.skipped_xattrs += 1
                continue
            try:
                setter(key, value)
            except OSError as x:
                if (
                    self.tolerant
                    and x.errno in (errno.EPERM, errno.ENOTSUP)
                    and key.startswith(PRIVILEGED_XATTRS)
                ):
                    self.stats.skipped_xattrs += 1
                    continue
                raise ArchiveError(e.name, f"setting xattr {key!r}: {x.strerror}") from x

    # ----- the end --------------------------------------------------------------------

    def _finish(self) -> None:
        """Drop the AUFS link scratch directory, then fix directory times and late modes."""
        if AUFS_LINK_DIR in self.created:
            self._remove(self.root_fd, AUFS_LINK_DIR, AUFS_LINK_DIR)
        super()._finish()


def _entry_error(entry: str, x: OSError, why: str) -> ArchiveError:
    """Entry *entry* failed with *x* (told as *why*): a permission refused is one this
    user lacks (exit 7), anything else an entry the layer cannot take."""
    if x.errno in (errno.EACCES, errno.EPERM):
        return EntryDenied(entry, f"{why} (a permission this user lacks)")
    return ArchiveError(entry, why)


def _left_out(stats: ExtractStats) -> str:
    return (f"without privileges: skipped {stats.skipped_chowns} ownership changes, "
            f"{stats.skipped_devices} device nodes, {stats.skipped_xattrs} xattrs")


class _NoFolder(OSError):
    """A symlink of the archive on an entry's way leads to no folder of the layer."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.ENOENT, why)


class _Followed:
    """A symlink of the archive followed on the way: once its target is resolved, the view
    must have a folder there (see :meth:`_Extractor._through_own_links`)."""

    __slots__ = ("link", "target")

    def __init__(self, link: str, target: str) -> None:
        self.link = link
        self.target = target


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _prefixes(rel: str) -> Iterator[str]:
    """``a``, ``a/b``, ``a/b/c`` for ``a/b/c``."""
    i = rel.find("/")
    while i != -1:
        yield rel[:i]
        i = rel.find("/", i + 1)
    yield rel


def _through_symlink(link: str) -> str:
    return (f"the path goes through {link!r}, a symlink of a lower layer (or one the layer "
            "already held), which extraction never follows")


def _times(e: TarEntry) -> tuple[int, int]:
    return (e.mtime_ns if e.atime_ns is None else e.atime_ns), e.mtime_ns

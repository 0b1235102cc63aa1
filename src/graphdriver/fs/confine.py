"""Keeping archive extraction inside its directory.

Two layers of defence, both needed because a layer tarball is hostile input
and the directory it is applied to may already hold hostile symlinks (from the
tarball itself or from an earlier layer):

1. Every path is resolved with ``openat2(2)`` and ``RESOLVE_IN_ROOT``: the
   directory acts as ``/`` for that walk, so ``..`` stops at it and a symlink,
   relative or absolute, resolves inside it, as in a chroot (and as Docker's
   chrooted extractor sees them).  Magic links (``/proc/self/fd/N``) are
   refused outright.
2. :func:`run_confined` runs the extraction in a forked child that, when it
   is privileged, ``chroot``\\s into the directory first, so a resolution bug
   still cannot reach the host.

The child inherits the parent's memory, so a Python stream object (with any
bytes the parent already buffered, e.g. while sniffing the compression) is
read by the child as it is.  What the child needs from outside the directory
must be open before the chroot: :func:`run_confined` opens the directory and
any extra directories and hands their fds to the function it runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
from collections.abc import Callable, Sequence

from graphdriver.errors import GraphDriverError, os_error, ready_to_warn
from graphdriver.fs import privileged, syscalls
from graphdriver.fs.overlayfs import is_whiteout
from graphdriver.plain import Plain

try:
    import _pickle as pickle  # the C pickler alone: pickle.py loads re
except ImportError:  # pragma: no cover - an interpreter without it
    import pickle  # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, NoReturn, TypeVar

    T = TypeVar("T")

#: Environment switch: run :func:`run_confined` work in-process (debugging).
INLINE_ENV = "GRAPHDRIVER_APPLY_INLINE"

_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_SYMLINKS = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_NOFOLLOW_DIR = _DIR_FLAGS | os.O_NOFOLLOW

# Exit status of a child whose own error reporting failed.
_CHILD_BROKEN = 70


def resolve_dir(root_fd: int, relpath: str) -> int:
    """Open directory *relpath* as if *root_fd* were ``/``; returns a new fd.

    Raises :class:`OSError` (``ENOENT``, ``ENOTDIR``, ``ELOOP``...) as
    ``openat(2)`` would, or :class:`~graphdriver.errors.Unsupported` on a
    kernel without ``openat2``.
    """
    return syscalls.openat2(root_fd, relpath or ".", _DIR_FLAGS, 0, _RESOLVE)


def resolve_dir_through_no_symlink(root_fd: int, relpath: str) -> int:
    """As :func:`resolve_dir`, but a symlink anywhere on the way fails with ``ELOOP``."""
    return syscalls.openat2(root_fd, relpath or ".", _DIR_FLAGS, 0, _RESOLVE | syscalls.RESOLVE_NO_SYMLINKS)


def first_symlink(root_fd: int, relpath: str) -> str | None:
    """The first component of *relpath* below *root_fd* that is a symlink, as a path; None if none.

    Walks one component at a time without following anything; a missing
    component raises ``FileNotFoundError``, one that is no directory
    ``NotADirectoryError``.
    """
    comps = relpath.split("/")
    fd = os.dup(root_fd)
    try:
        for i, comp in enumerate(comps):
            sub = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                return "/".join(comps[: i + 1])
            if not stat.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return None
    finally:
        os.close(fd)


def open_at_root(root_fd: int, relpath: str, flags: int, mode: int = 0) -> int:
    """``openat2`` of *relpath* confined to *root_fd* with arbitrary *flags*; returns an fd."""
    if not flags & (os.O_CREAT | os.O_TMPFILE):
        mode = 0  # openat2 refuses a mode that would not be used
    return syscalls.openat2(root_fd, relpath or ".", flags | os.O_CLOEXEC, mode, _RESOLVE)


def open_file_in_root(root: str, relpath: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> BinaryIO:
    """Open *relpath* inside directory *root*, symlinks resolved as if *root* were ``/``.

    Returns a binary file object (read, write or read-write after *flags*).
    A missing file raises :class:`FileNotFoundError`.
    """
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        fd = open_at_root(root_fd, relpath.lstrip("/"), flags, mode)
    finally:
        os.close(root_fd)
    try:
        access = flags & os.O_ACCMODE
        if access == os.O_WRONLY:
            return open(fd, "wb")
        if access == os.O_RDWR:
            return open(fd, "r+b")
        return open(fd, "rb")
    except BaseException:
        # open() does not close an fd it was given when it refuses it (a directory).
        os.close(fd)
        raise


# ----- below a directory, through no symlink at all (Windows layers hold none on the way) -----------


def open_dir_no_symlinks(root_fd: int, rel: str) -> int:
    """Open directory *rel* below *root_fd*; no component may be a symlink (ELOOP/EXDEV then)."""
    return syscalls.openat2(root_fd, rel or ".", _NOFOLLOW_DIR, 0, _NO_SYMLINKS)


def open_no_symlinks(root_fd: int, rel: str, flags: int, mode: int = 0) -> int:
    """``openat2`` of *rel* below *root_fd* with *flags*, never through a symlink."""
    if not flags & os.O_CREAT:
        mode = 0
    return syscalls.openat2(root_fd, rel, flags | os.O_CLOEXEC, mode, _NO_SYMLINKS)


def makedirs_no_symlinks(root_fd: int, rel: str, mode: int = 0o755) -> int:
    """Open directory *rel* below *root_fd*, creating what is missing (with *mode*)."""
    try:
        return open_dir_no_symlinks(root_fd, rel)
    except FileNotFoundError:
        pass
    fd = os.dup(root_fd)
    try:
        for comp in rel.split("/"):
            try:
                os.mkdir(comp, mode, dir_fd=fd)
                os.chmod(comp, mode, dir_fd=fd, follow_symlinks=True)  # mkdir's mode is masked
            except FileExistsError:
                pass
            sub = os.open(comp, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def is_symlink_error(e: OSError) -> bool:
    """Whether a beneath-resolution failed because a component is a symlink."""
    return e.errno in (errno.ELOOP, errno.EXDEV)


def find_in_union(
    layer_fds: Sequence[int], rel: str, opaque_xattr: str
) -> tuple[int, int, os.stat_result] | None:
    """Where the union of *layer_fds* (layers, the nearest first) has *rel*, as overlayfs looks
    a path up, its final symlink unfollowed.

    Returns the index of the layer that holds it, an fd of its parent directory there (the
    caller closes it) and its ``lstat``.  None when no layer has it, or a nearer layer hides
    it: a whiteout (an overlay 0/0 character device) at it, a whiteout or anything but a
    directory at a directory above it, or an opaque directory above it (marked with
    *opaque_xattr*) in a layer nearer than the one holding it.  A symlink on the way raises
    :class:`OSError` ``ELOOP``: extraction never follows one of a lower layer.
    """
    *dirs, name = rel.split("/")
    stack = list(enumerate(layer_fds))  # the layers whose directory makes up the union's, nearest first
    # What this opened and still holds.  A layer's folder is closed as soon as the next
    # level's is open: one fd per layer (and one more) is held, however deep *rel* is.
    owned: set[int] = set()
    try:
        for depth, comp in enumerate(dirs):
            below: list[tuple[int, int]] = []
            done = 0  # how many of *stack* were let go (a closed fd's number may come back)
            for index, dfd in stack:
                try:
                    st = os.stat(comp, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    _release(owned, dfd)
                    done += 1
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if below:
                        break  # a lower layer's file or whiteout ends the merge: nothing further down
                    if stat.S_ISLNK(st.st_mode):
                        raise OSError(errno.ELOOP, f"{'/'.join(dirs[: depth + 1])!r} is a symlink")
                    return None  # deleted, or not a directory: nothing below it
                fd = os.open(comp, _NOFOLLOW_DIR, dir_fd=dfd)
                _release(owned, dfd)
                done += 1
                owned.add(fd)
                below.append((index, fd))
                if is_opaque(fd, opaque_xattr):
                    break  # what the layers further down hold here is hidden
            if not below:
                return None
            for _, dfd in stack[done:]:  # those a break left out
                _release(owned, dfd)
            stack = below
        for index, dfd in stack:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            return None if is_whiteout(st) else (index, os.dup(dfd), st)
        return None
    finally:
        for fd in owned:
            os.close(fd)


def _release(owned: set[int], fd: int) -> None:
    """Close *fd* if it is one of *owned* (the caller's own stay open)."""
    if fd in owned:
        owned.discard(fd)
        os.close(fd)


def is_opaque(fd: int, opaque_xattr: str) -> bool:
    """Whether directory *fd* carries the opaque mark *opaque_xattr*."""
    try:
        return os.getxattr(fd, opaque_xattr) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


class ConfinedDirs(Plain):
    """What the confined function gets: fds opened before any chroot."""

    __slots__ = ("chrooted", "extra_fds", "root_fd")

    def __init__(self, root_fd: int, extra_fds: tuple[int, ...], chrooted: bool) -> None:
        #: The target directory (``/`` of the child when it is chrooted).
        self.root_fd = root_fd
        #: The extra directories, in the order they were asked for.
        self.extra_fds = extra_fds
        #: Whether the child chrooted into the target (privileged runs only).
        self.chrooted = chrooted


def inline_requested(inline: bool | None) -> bool:
    """*inline* if given, else whether ``GRAPHDRIVER_APPLY_INLINE`` is set to a true value."""
    if inline is not None:
        return inline
    return os.environ.get(INLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def run_confined(
    dest: str,
    fn: Callable[[ConfinedDirs], T],
    *,
    extra_dirs: Sequence[str] = (),
    inline: bool | None = None,
) -> T:
    """Run ``fn(dirs)`` confined to directory *dest* and return its result.

    By default *fn* runs in a forked child which, when privileged, chroots
    into *dest* first; the result (or a :class:`GraphDriverError`, class and
    message intact) comes back pickled over a pipe, so it must be picklable.
    Any other exception becomes a one-line :class:`GraphDriverError`; a child
    that dies is reported as such.  With *inline* (or the environment switch
    ``GRAPHDRIVER_APPLY_INLINE=1`` when *inline* is None) *fn* runs in this
    process, for debugging.

    *extra_dirs* (read-only sources outside *dest*, such as lower layers) are
    opened before the chroot and passed as fds.  Stream objects *fn* reads
    are consumed in the child: afterwards the parent's copy of such an object
    is at an undefined position.
    """
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as x:
        raise GraphDriverError(f"opening {dest}", x.strerror or str(x)) from x
    extra: list[int] = []
    try:
        for d in extra_dirs:
            try:
                extra.append(os.open(d, _DIR_FLAGS))
            except OSError as x:
                raise GraphDriverError(f"opening {d}", x.strerror or str(x)) from x
        if inline_requested(inline):
            return fn(ConfinedDirs(root_fd, tuple(extra), False))
        ready_to_warn()  # the child, chrooted, can import nothing more
        return _run_in_child(dest, fn, ConfinedDirs(root_fd, tuple(extra), False))
    finally:
        for fd in extra:
            os.close(fd)
        os.close(root_fd)


def _run_in_child(dest: str, fn: Callable[[ConfinedDirs], T], dirs: ConfinedDirs) -> T:
    r, w = os.pipe()  # both ends close-on-exec, as Python makes them
    parent = os.getpid()
    try:
        pid = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        _child_main(r, w, fn, dirs, parent)
    os.close(w)
    try:
        data = _read_all(r)
    except BaseException:
        # Interrupted (Ctrl-C, say): do not leave the child writing on its own.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    result: T = _outcome(dest, data, status)
    return result


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _child_main(
    r: int, w: int, fn: Callable[[ConfinedDirs], T], dirs: ConfinedDirs, parent: int
) -> NoReturn:
    """The child's whole life: never returns into the parent's code, never runs atexit."""
    code = 0
    try:
        # A killed parent must not leave us writing into a directory that its
        # clean-up is about to remove.
        syscalls.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            raise SystemExit  # it died before the line above
        os.close(r)
        payload = _child_payload(fn, dirs, w)
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view) :]
    except BaseException:
        code = _CHILD_BROKEN
    finally:
        os._exit(code)


def _child_payload(fn: Callable[[ConfinedDirs], T], dirs: ConfinedDirs, result_fd: int) -> bytes:
    try:
        _close_inherited({dirs.root_fd, *dirs.extra_fds, result_fd})
        chrooted = False
        if privileged():
            # fchdir + chroot(".") pins the directory already opened, whatever
            # happened to its path since.
            os.fchdir(dirs.root_fd)
            try:
                syscalls.chroot(".")
                chrooted = True
            except PermissionError:
                pass  # root without CAP_SYS_CHROOT: openat2 alone confines
            os.chdir("/" if chrooted else ".")
        # Modes come from the archive: let the kernel apply them unmasked.
        os.umask(0)
        result = fn(ConfinedDirs(dirs.root_fd, dirs.extra_fds, chrooted))
        return pickle.dumps((True, result), -1)  # -1: the highest protocol
    except OSError as e:  # a full disk, say: the layer's work failed, not the program
        return _error(os_error("applying the layer", e))
    except GraphDriverError as e:
        return _error(e)
    except BaseException as e:
        return _generic_error(e)


def _error(e: GraphDriverError) -> bytes:
    try:
        return pickle.dumps((False, (type(e), dict(e.__dict__), str(e))))
    except Exception:
        return _generic_error(e)


def _close_inherited(keep: set[int]) -> None:
    """Close the inherited fds that would hurt the child.

    The write end of a pipe the parent feeds the stream through (from a
    thread, say) must not stay open here, or the child never sees the end of
    its input; and a directory fd from outside the target would be a way out
    of the chroot.  Everything else may belong to the stream and stays.
    """
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd < 3 or fd in keep:
            continue
        try:
            mode = os.fstat(fd).st_mode
            writer = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        except OSError:
            continue  # the listing's own fd, already closed
        if stat.S_ISDIR(mode) or (stat.S_ISFIFO(mode) and writer):
            os.close(fd)


def _generic_error(e: BaseException) -> bytes:
    why = " ".join(f"{type(e).__name__}: {e}".split())
    attrs = {"what": "applying the layer failed", "why": why}
    return pickle.dumps((False, (GraphDriverError, attrs, f"{attrs['what']}: {why}")))


def _outcome(dest: str, data: bytes, status: int) -> Any:
    what = f"extracting into {dest}"
    if data:
        try:
            ok, value = pickle.loads(data)
        except Exception:
            ok, value = None, None
        if ok is True:
            return value
        if ok is False:
            cls, attrs, message = value
            err = cls.__new__(cls)
            Exception.__init__(err, message)
            err.__dict__.update(attrs)
            raise err
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        raise GraphDriverError(what, f"the extracting process was killed by {name}")
    code = os.waitstatus_to_exitcode(status)
    raise GraphDriverError(what, f"the extracting process exited with status {code} and no result")

"""Work done as root of a user namespace that maps only this user, in a process of its own.

Without root, the modes of the user's own files keep the user out (a file of
mode ``0000``, a folder of mode ``0000``).  Root of a user namespace the user
made, mapping only the user and its group to 0, holds the capabilities that
pass over modes for exactly the files of that user and group.  A process
cannot enter such a namespace for a moment and leave again, and everything it
reads there would show the user as uid 0; so the work is done by a child
process that makes itself that namespace's root, and only the results (and
any file it opened) come back.  Nothing of the user's files changes.

- :func:`call`: a short call (open a file, read its xattrs) served by a helper
  process started at the first need and kept for the life of this process:
  making the namespace costs milliseconds, a call afterwards a round trip
  over a socket.  Calls from several threads take turns.
- :func:`run`: long work (copying a tree) in a child of its own, killed with
  this process.

Both children close every descriptor they inherit (a lock's, a pipe's), so
that no lock or pipe of this process outlives its closing here.
"""

from __future__ import annotations

import _thread
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any, NoReturn, TypeVar

    T = TypeVar("T")

#: This process's helper: its pid and the socket to it, or why none could be made (a
#: PermissionError's errno and reason); None until the first call.  Forgotten in a forked child.
_helper: tuple[int, socket.socket] | tuple[int, str] | None = None
#: Calls take turns (the helper serves one at a time).
_turn = _thread.allocate_lock()

#: Exit status of a child whose own reporting failed.
_BROKEN = 70


def _forget() -> None:
    """In a forked child: the parent's helper and turn are the parent's."""
    global _helper, _turn
    _helper = None
    _turn = _thread.allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


def available(*, whole_trees: bool = False) -> bool:
    """Whether the work may be done as the owner here: not root (nor in such a namespace
    already), and a process whose maps can be written (one that changed its ids is not
    dumpable: its /proc files are root's).  For *whole_trees*, not for a user with
    supplementary groups either: files of those groups read as the overflow id there,
    and a copy made there would lose them."""
    import graphdriver.fs

    if os.geteuid() == 0 or graphdriver.fs._in_owner_namespace:
        return False
    if whole_trees and set(os.getgroups()) - {os.getegid()}:
        return False
    try:
        return os.stat("/proc/self/uid_map").st_uid == os.geteuid()
    except OSError:
        return False


def call(
    func: Callable[..., Any],
    args: tuple[Any, ...] = (),
    fd: int | None = None,
    *,
    sends_fd: bool = False,
    name: str = "",
) -> Any:
    """``func(*fds, *args)`` in the helper, *func* a module-level function: *fd*, when given,
    reaches it as its first argument (a descriptor of the helper's own for the same file).
    Its result, or with *sends_fd* the descriptor it returned, passed back; the OSError it
    raised, named *name* when given.  PermissionError where no such namespace can be made."""
    import errno

    if not available():
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name or None)
    with _turn:
        for _attempt in range(2):
            sock = _the_helper(name)
            try:
                _send(sock, (func, args, sends_fd), [] if fd is None else [fd])
                reply = _receive(sock)
            except OSError:
                reply = None
            except BaseException:  # interrupted: its answer, unread, must not be the next call's
                _drop_helper()
                raise
            if reply is not None:
                return _outcome(reply, name, sends_fd)
            _drop_helper()  # it went (killed): once more with a new one
    raise OSError(errno.EIO, "the process reading as the owner ended", name or None)


def _the_helper(name: str) -> socket.socket:
    """The socket to this process's helper, started at the first call; PermissionError, at
    once, where it could not be."""
    global _helper
    if _helper is None:
        try:
            _helper = _start_helper(name)
        except PermissionError as e:
            _helper = (e.errno or 1, e.strerror or "Operation not permitted")
            raise
    if isinstance(_helper[1], str):
        raise PermissionError(_helper[0], _helper[1], name or None)
    return _helper[1]


def _drop_helper() -> None:
    """End this process's helper (gone already, or in the middle of a call no one awaits)."""
    import signal

    global _helper
    if _helper is not None and not isinstance(_helper[1], str):
        pid, sock = _helper
        sock.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    _helper = None


def _start_helper(name: str) -> tuple[int, socket.socket]:
    """A new helper process, root of its namespace, and the socket to it."""
    import socket

    ours, theirs = socket.socketpair()
    try:
        pid = os.fork()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        _helper_main(theirs)
    theirs.close()
    reply = _receive(ours)
    if reply is None or reply[0][0] is not True:
        ours.close()
        os.waitpid(pid, 0)
        number, why, _ = reply[0][1] if reply is not None else (1, "the owner's process ended", None)
        raise PermissionError(number, why)
    return pid, ours


def _helper_main(sock: socket.socket) -> NoReturn:
    """The helper's whole life: into the namespace, then serve calls until this process's end
    of the socket closes.  Never returns into the parent's code, never runs atexit."""
    code = 0
    try:
        sock = _own_descriptors(sock)
        ready = _enter_namespace()
        _send(sock, ready, [])
        while ready[0] and (request := _receive(sock)) is not None:
            (func, args, sends_fd), fds = request
            outcome, sent = _serve(func, args, sends_fd, fds)
            _send(sock, outcome, sent)
            for fd in sent:
                os.close(fd)
    except BaseException:
        code = _BROKEN
    finally:
        os._exit(code)


def _serve(
    func: Callable[..., Any], args: tuple[Any, ...], sends_fd: bool, fds: list[int]
) -> tuple[tuple[bool, Any], list[int]]:
    """One call in the helper: its outcome to send, and the descriptor going with it."""
    try:
        value = func(*fds, *args)
    except BaseException as e:
        return _failure(e), []
    finally:
        for fd in fds:
            os.close(fd)
    if sends_fd:
        return (True, None), [value]
    return (True, value), []


def run(work: Callable[[], T], name: str = "") -> T:
    """``work()`` in a child process of its own that is root of such a namespace (killed if
    this process dies): what it returned, which must pickle, or the OSError it raised
    (named *name* when given).  *work* must need no descriptor of this process: the child
    closes them.  PermissionError where no such namespace can be made."""
    import errno
    import signal
    import socket

    if not available():
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name or None)
    ours, theirs = socket.socketpair()
    parent = os.getpid()
    try:
        pid = os.fork()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        _child_main(theirs, work, parent)
    theirs.close()
    try:
        reply = _receive(ours)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # interrupted (Ctrl-C): leave no child writing on its own
        os.waitpid(pid, 0)
        raise
    finally:
        ours.close()
    os.waitpid(pid, 0)
    result: T = _outcome(reply or ((False, (5, "the owner's process ended", None)), []), name, False)
    return result


def _child_main(sock: socket.socket, work: Callable[[], object], parent: int) -> NoReturn:
    """The child's whole life: never returns into the parent's code, never runs atexit."""
    import signal

    from graphdriver.fs import syscalls

    code = 0
    try:
        syscalls.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            raise SystemExit  # it died before the line above
        sock = _own_descriptors(sock)
        outcome = _enter_namespace()
        if outcome[0]:
            try:
                outcome = (True, work())
            except BaseException as e:
                outcome = _failure(e)
        _send(sock, outcome, [])
    except BaseException:
        code = _BROKEN
    finally:
        os._exit(code)


def _enter_namespace() -> tuple[bool, Any]:
    """In a child: become root of a new user namespace mapping only this user and group;
    (True, None), or why not as :func:`_failure` gives it."""
    import graphdriver.fs

    uid, gid = os.geteuid(), os.getegid()  # read before: in the namespace they are 65534 until mapped
    try:
        if not unshare_user():
            raise PermissionError(1, "no user namespace may be made here")
        map_own_ids(uid, gid)
    except OSError as e:
        return _failure(e)
    graphdriver.fs._in_owner_namespace = True  # privileged() stays false
    return True, None


def unshare_user() -> bool:
    """``unshare(CLONE_NEWUSER)``; whether it worked (a process of several threads cannot)."""
    unshare = getattr(os, "unshare", None)  # Python 3.12 and later
    if unshare is None:
        from graphdriver.fs import syscalls

        return syscalls.unshare_user()
    try:
        unshare(os.CLONE_NEWUSER)  # type: ignore[attr-defined]
    except OSError:
        return False
    return True


def map_own_ids(uid: int, gid: int) -> None:
    """Map this user and group to root in the user namespace just made (OSError naming the
    file of /proc/self that could not be written)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        try:
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, name) from e


def _failure(e: BaseException) -> tuple[bool, Any]:
    """An exception as it crosses to the parent: an OSError's errno, reason and file name,
    anything else as an I/O error naming it."""
    if isinstance(e, OSError) and e.errno is not None:
        filename = e.filename if isinstance(e.filename, (str, bytes)) else None
        return False, (e.errno, e.strerror or str(e), filename)
    return False, (5, " ".join(f"{type(e).__name__}: {e}".split()), None)


def _outcome(reply: tuple[tuple[bool, Any], list[int]], name: str, sends_fd: bool) -> Any:
    """What a child sent back: its result (the descriptor it sent, with *sends_fd*), or its
    OSError raised here, of the kind its errno makes."""
    (ok, value), fds = reply
    if ok and (fds or not sends_fd):
        return fds[0] if sends_fd else value
    for fd in fds:
        os.close(fd)
    number, why, filename = value if not ok else (5, "the owner's process sent no file", None)
    raise OSError(number, why, name or filename)


def _own_descriptors(sock: socket.socket) -> socket.socket:
    """In a child: close every inherited descriptor but *sock*'s (now at 3 or above, returned
    anew), standard input, output and error on /dev/null (nothing written there may reach a
    file the child opens); the cyclic collector off (no inherited object's finaliser may
    close a descriptor by a number now another's)."""
    import fcntl
    import gc
    import socket

    gc.disable()
    keep = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        if std != null:
            os.dup2(null, std)
    top = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, keep)
    os.closerange(keep + 1, max(top, keep + 2))
    return socket.socket(fileno=keep)


def _send(sock: socket.socket, value: object, fds: list[int]) -> None:
    """*value* pickled, behind its length (which carries *fds*)."""
    import socket

    data = _pickle().dumps(value, -1)
    head = len(data).to_bytes(8, "little")
    if fds:
        socket.send_fds(sock, [head], fds)
    else:
        sock.sendall(head)
    sock.sendall(data)


def _receive(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """What :func:`_send` sent, and the descriptors with it; None at the end of the stream."""
    import socket

    head, fds, _flags, _addr = socket.recv_fds(sock, 8, 1)
    while 0 < len(head) < 8 and (more := sock.recv(8 - len(head))):
        head += more
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    chunks = []
    while size > 0 and (chunk := sock.recv(min(size, 1 << 20))):
        chunks.append(chunk)
        size -= len(chunk)
    if size != 0:  # cut short: the other end went
        for fd in fds:
            os.close(fd)
        return None
    return _pickle().loads(b"".join(chunks)), fds


def _pickle() -> Any:
    """The C pickler (pickle.py loads re)."""
    try:
        import _pickle as pickle
    except ImportError:  # pragma: no cover - an interpreter without it
        import pickle  # type: ignore[no-redef]
    return pickle

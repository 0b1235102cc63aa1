"""The one way store files are written: temp file, fsync, rename, fsync of the directory.

Readers never see a half-written file: they see the old content or the new.
"""

from __future__ import annotations

import os

from graphdriver import jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


#: Temporary files are named ``<prefix><name>-<pid>``: dot-named, so never a layer's
#: name, and the pid says whether their writer still lives.
TEMP_PREFIX = ".tmp-"


def fsync_dir(path: str) -> None:
    """Make a rename or unlink inside *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace *path* with *data* atomically (and durably unless told otherwise)."""
    directory = os.path.dirname(path) or "."
    tmp, fd = temporary(path, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    finally:
        os.close(fd)  # after the rename: until then the lock says its writer lives
    if durable:
        fsync_dir(directory)


def temp_stem(name: str) -> str:
    """``.tmp-<name>``, *name* cut so that a pid and a random tail after it still make a
    legal file name (255 bytes): a file may be called anything short of that itself."""
    room = 255 - len(TEMP_PREFIX) - len("-4194304-01234567")
    raw = os.fsencode(name)
    return TEMP_PREFIX + (name if len(raw) <= room else os.fsdecode(raw[:room]))


def temporary(path: str, mode: int = 0o600) -> tuple[str, int]:
    """A new temporary file beside *path* (``.tmp-<name>-<pid>``) and its fd, locked by this
    process (see :func:`graphdriver.fs.locking.claim`): ``cleanup`` leaves it alone while the fd
    is open, and removes it once the process died, reaped or not."""
    from graphdriver.fs.locking import claim

    tmp = os.path.join(os.path.dirname(path) or ".", f"{temp_stem(os.path.basename(path))}-{os.getpid()}")
    try:
        return tmp, claim(tmp, mode=mode)
    except FileExistsError:  # another thread of this process writes the same file
        tmp = f"{tmp}-{os.urandom(4).hex()}"
        return tmp, claim(tmp, mode=mode)


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_file(path: str) -> bool:
    """Unlink *path*; False when it was already gone (another process removed it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def write_json(path: str, value: Any, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace *path* with the JSON form of *value* atomically."""
    data = jsonio.dumps(value, compact=True).encode()
    write_bytes(path, data, mode, durable=durable)


def read_json(path: str) -> Any:
    """The JSON value stored at *path* (raises OSError / ValueError)."""
    with open(path, "rb") as f:
        return jsonio.loads(f.read())


class staged_dir:  # lower case: used like a function, `with staged_dir(final) as staging:`
    """A staging directory beside *final*, renamed into place when the block succeeds.

    On failure the staging directory is left for ``cleanup`` (callers remove it
    when they can); it never appears under the final name half-made.  (A class
    rather than a generator: this module is on every command's path, and
    :mod:`contextlib` is not worth its import there.)
    """

    def __init__(self, final: str) -> None:
        self.final = final
        self.staging = f"{final}.staging-{os.getpid()}"

    def __enter__(self) -> str:
        os.mkdir(self.staging, 0o700)
        return self.staging

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            os.rename(self.staging, self.final)
            fsync_dir(os.path.dirname(self.final) or ".")


def syncfs(path: str) -> None:
    """Flush every dirty page of the filesystem holding *path* (``syncfs(2)``).

    One call makes a whole extracted layer durable, far cheaper than an fsync
    per file; ``os.sync`` (every filesystem) is the fallback.
    """
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = getattr(libc, "syncfs", None)
        if func is None or func(fd) != 0:
            os.sync()
    finally:
        os.close(fd)

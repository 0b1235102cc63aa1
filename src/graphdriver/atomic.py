"""The one way store files are written: temp file, fsync, rename, fsync of the directory.

Readers never see a half-written file: they see the old content or the new.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


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
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def write_json(path: str, value: Any, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace *path* with the JSON form of *value* atomically."""
    data = json.dumps(value, indent=None, separators=(",", ":"), sort_keys=False).encode()
    write_bytes(path, data, mode, durable=durable)


def read_json(path: str) -> Any:
    """The JSON value stored at *path* (raises OSError / ValueError)."""
    with open(path, "rb") as f:
        return json.loads(f.read())


@contextlib.contextmanager
def staged_dir(final: str) -> Iterator[str]:
    """A staging directory beside *final*, renamed into place when the block succeeds.

    On failure the staging directory is left for ``cleanup`` (callers remove it
    when they can); it never appears under the final name half-made.
    """
    staging = f"{final}.staging-{os.getpid()}"
    os.mkdir(staging, 0o700)
    yield staging
    os.rename(staging, final)
    fsync_dir(os.path.dirname(final) or ".")


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

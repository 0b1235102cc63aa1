"""Output gathered into large buffers and passed on by a writer thread.

Re-exporting a layer produces a few thousand small pieces (headers, padding,
small files).  Passing each one to the consumer (a hash and a file write)
costs a call and a syscall per piece; gathering them into buffers of a MiB
costs one copy at most, and file contents are read straight into the buffer,
which costs nothing extra.  The consumer then runs in a thread: hashing and
writing release the GIL, so they overlap with the parsing and file reading of
the next buffer instead of adding to them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BatchedWriter"]

BATCH = 1 << 20
# Buffers queued for the writer thread: memory stays at a few MiB.
_DEPTH = 3

Write = Callable[[memoryview], object]


class BatchedWriter:
    """Gathers bytes and hands them to *write* in order, from a thread, a buffer at a time.

    Bytes are either copied in (:meth:`add`) or written in place: :meth:`reserve`
    gives a writable view of free space, :meth:`commit` keeps what was put
    there.  :meth:`close` passes on everything gathered, waits for the thread
    and raises the first error *write* raised (errors also surface at the next
    buffer handed over).  *write* gets a ``memoryview`` and must be done with
    it when it returns: the buffer is reused.
    """

    def __init__(self, write: Write, size: int = BATCH) -> None:
        self._write = write
        self._size = size
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._used = 0
        self.total = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[bytearray, int] | None] = queue.Queue(_DEPTH)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="graphdriver-writer", daemon=True)
        self._thread.start()

    # ----- the gathering side --------------------------------------------------------

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Copy *data* in."""
        n = len(data)
        if n <= self._size - self._used:
            self._view[self._used : self._used + n] = data
            self._used += n
            self.total += n
            return
        src = memoryview(data).cast("B")
        while src:
            view = self.reserve(1)
            k = min(len(view), len(src))
            view[:k] = src[:k]
            self.commit(k)
            src = src[k:]

    def reserve(self, n: int) -> memoryview:
        """A writable view of all the free space, at least *n* bytes of it."""
        if self._size - self._used < n:
            self.flush()
            if n > self._size:
                # More than a buffer must stay together: a buffer of its own,
                # dropped once written.  Such buffers (up to the size of a file
                # checked before it is written) wait for the previous ones to
                # be written first, so that few of them are ever held at once.
                self._queue.join()
                self._view.release()
                self._free.put(self._buf)
                self._buf = bytearray(n)
                self._view = memoryview(self._buf)
        return self._view[self._used :]

    def commit(self, n: int) -> None:
        """Keep the first *n* bytes written into the last :meth:`reserve`'s view."""
        self._used += n
        self.total += n

    def flush(self) -> None:
        """Hand the gathered bytes to the thread and start a fresh buffer."""
        if self._error is not None:
            raise self._error
        if not self._used:
            return
        self._view.release()
        self._queue.put((self._buf, self._used))
        try:
            self._buf = self._free.get_nowait()
        except queue.Empty:
            self._buf = bytearray(self._size)
        self._view = memoryview(self._buf)
        self._used = 0

    def close(self, *, check: bool = True) -> None:
        """Pass on what is gathered and wait for the thread; raise its error if *check*."""
        try:
            if self._error is None:
                self.flush()
        finally:
            self._queue.put(None)
            self._thread.join()
            self._view.release()
        if check and self._error is not None:
            raise self._error

    # ----- the writing thread ------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            buf, n = item
            if self._error is None:
                view = memoryview(buf)
                try:
                    self._write(view[:n])
                except BaseException as e:  # raised again in the gathering thread
                    self._error = e
                finally:
                    view.release()
            if len(buf) == self._size:
                self._free.put(buf)
            self._queue.task_done()

"""The batched output of reassembly: order, in-place writes, big pieces, errors from the writer."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphdriver.layerio.batched import BatchedWriter


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.threads: set[str] = set()

    def __call__(self, view: memoryview) -> None:
        self.chunks.append(bytes(view))
        self.threads.add(threading.current_thread().name)


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=5000)), max_size=60),
       st.sampled_from([16, 1000, 4096]))
@settings(max_examples=200, deadline=None)
def test_everything_arrives_in_order(pieces, size):
    sink = Sink()
    out = BatchedWriter(sink, size=size)
    expected = b""
    for in_place, data in pieces:
        if in_place:  # written straight into the buffer, as file contents are
            view = out.reserve(len(data) + 1)
            view[: len(data)] = data
            out.commit(len(data))
        else:
            out.add(data)
        expected += data
    out.close()
    assert b"".join(sink.chunks) == expected
    assert out.total == len(expected)


def test_writes_happen_in_a_thread_and_in_large_buffers():
    sink = Sink()
    out = BatchedWriter(sink, size=1 << 16)
    for _ in range(1000):
        out.add(b"x" * 300)
    out.close()
    assert sink.threads == {"graphdriver-writer"}
    assert len(sink.chunks) == 5 and all(len(c) > 60_000 for c in sink.chunks[:-1])


def test_a_reservation_bigger_than_a_buffer_gets_its_own():
    sink = Sink()
    out = BatchedWriter(sink, size=100)
    out.add(b"a" * 10)
    view = out.reserve(250)
    assert len(view) >= 250
    view[:250] = b"b" * 250
    out.commit(250)
    out.add(b"c")
    out.close()
    assert b"".join(sink.chunks) == b"a" * 10 + b"b" * 250 + b"c"


def test_the_writers_error_is_raised_at_the_next_handover_and_at_close():
    calls = []

    def failing(view: memoryview) -> None:
        calls.append(len(view))
        raise OSError(28, "No space left on device")

    out = BatchedWriter(failing, size=10)
    out.add(b"0123456789")
    with pytest.raises(OSError, match="No space"):
        for _ in range(1000):  # a handover soon sees the thread's error
            out.add(b"0123456789")
    with pytest.raises(OSError, match="No space"):
        out.close()
    assert len(calls) == 1  # nothing is written after the failure


def test_close_without_check_swallows_the_error_for_a_caller_already_failing():
    out = BatchedWriter(lambda _v: 1 / 0, size=10)
    out.add(b"x" * 50)
    out.close(check=False)

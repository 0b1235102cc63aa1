# The C recorder's interface (see _tarsplit.c): tarsplit.Recorder's sinks over a
# tarsplit.Packer, writing its batches of lines through *write*.
from collections.abc import Callable
from typing import TypeVar

from graphdriver.layerio.entry import TarEntry

class Recorder:
    def __init__(
        self,
        write: Callable[[bytes], object],
        crc: Callable[[bytes | bytearray | memoryview, int], int],
        json_name: Callable[[bytes], bytes],
    ) -> None: ...
    def raw(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def data(self, chunk: bytes | bytearray | memoryview, /) -> None: ...
    def header(self, entry: TarEntry, /) -> None: ...
    def finish(self) -> None: ...

# The C line reader: tarsplit._usual, making the entry as entry_type(type, payload, name, size, position).
_T = TypeVar("_T")

def usual(
    line: bytes | bytearray, entry_type: Callable[[int, bytes | None, bytes, int, int], _T], /
) -> _T | None: ...

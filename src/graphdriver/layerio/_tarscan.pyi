# The C decoder's interface (see _tarscan.c): TarEntry's first sixteen positional
# fields, then the bytes the entry's headers take.
Fields = tuple[
    str, str, int, int, int, int, str, str, int, int | None, int | None, str, int, int,
    dict[str, bytes] | None, dict[str, bytes] | None, int,
]

def scan(buf: bytes, pos: int, /) -> Fields | None: ...

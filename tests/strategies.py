"""What the tar tests share: Hypothesis strategies (names of every kind, whole entries), a writer,
hand-made meta headers."""

from __future__ import annotations

import io
from collections.abc import Iterable

from hypothesis import strategies as st

from graphdriver.layerio.entry import BLK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry
from graphdriver.layerio.tarstream import TarWriter


def write_tar(items: Iterable[tuple[TarEntry, bytes | None]]) -> bytes:
    """An archive of *items* (entry, content) from the project's own writer."""
    out = io.BytesIO()
    w = TarWriter(out)
    for entry, content in items:
        w.add(entry, io.BytesIO(content) if content is not None else None)
    w.close()
    return out.getvalue()


def meta_header(typ: bytes, data: bytes) -> bytes:
    """A PAX (``x``, ``g``) or GNU long-name (``L``, ``K``) header and its padded data, as
    a hostile archive may chain them: the writer makes at most one before an entry."""
    blk = bytearray(512)
    blk[:13] = b"././@LongLink"
    blk[100:124] = b"0000644\0" + b"0000000\0" * 2
    blk[124:136] = b"%011o\0" % len(data)
    blk[136:148] = b"00000000000\0"
    blk[156:157] = typ
    blk[257:265] = b"ustar\x0000"
    blk[148:156] = b"%06o\0 " % (sum(blk) + 8 * 32)  # the checksum field counts as spaces
    return bytes(blk) + data + bytes(-len(data) % 512)


def pax_record(key: bytes, size: int) -> bytes:
    """A PAX record of ``size`` bytes in all (``size`` under 1 GB, over 20)."""
    digits = len(str(size))
    return b"%d %s=%s\n" % (size, key, b"v" * (size - digits - len(key) - 3))

_component = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40),
    st.binary(min_size=1, max_size=20)
    .filter(lambda b: b"/" not in b and b"\x00" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape")),
)
names = st.lists(_component, min_size=1, max_size=8).map("/".join)
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
_ns = st.integers(min_value=-(2**40) * 10**9, max_value=2**40 * 10**9)


@st.composite
def tar_entries(draw: st.DrawFn, max_content: int = 1500) -> tuple[TarEntry, bytes | None]:
    """An entry of any type (names, owners, times, devices, xattrs at their limits) and its content."""
    typ = draw(st.sampled_from([REG, REG, DIR, SYM, LNK, FIFO, CHR, BLK]))
    content = draw(st.binary(max_size=max_content)) if typ == REG else None
    entry = TarEntry(
        draw(names),
        type=typ,
        size=len(content) if content is not None else 0,
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 2**32)),
        gid=draw(st.integers(0, 2**32)),
        uname=draw(_text),
        gname=draw(_text),
        mtime_ns=draw(_ns),
        atime_ns=draw(st.none() | _ns),
        ctime_ns=draw(st.none() | _ns),
        linkname=draw(names) if typ in (SYM, LNK) else "",
        devmajor=draw(st.integers(0, 4095)) if typ in (CHR, BLK) else 0,
        devminor=draw(st.integers(0, 1 << 20)) if typ in (CHR, BLK) else 0,
        xattrs=draw(
            st.dictionaries(
                _text.filter(lambda s: s and "=" not in s), st.binary(max_size=60), max_size=3
            )
        ),
    )
    return entry, content

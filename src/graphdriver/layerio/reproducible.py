"""Can a layer's tarball be rebuilt from its extracted files?

tar-split rebuilds an archive by reading each member's content back from the
extracted layer.  That fails when the archive itself overwrote or deleted the
content of an earlier member: the same path twice with other bytes, a whiteout
of a file the same archive added, a directory replaced by a file.  Such archives
are legal (the last entry wins) but cannot be re-exported bit for bit; noticing
it while importing lets the store say so plainly instead of failing an export
later.  A file given twice is told here only as a candidate (``repeated``): its
bytes decide, and only the tar-split metadata written beside knows them
(:func:`~graphdriver.layerio.tarsplit.first_rewritten`).
"""

from __future__ import annotations

import posixpath

from graphdriver.layerio.entry import DIR, LNK, REGULAR_TYPES, SYM, TarEntry
from graphdriver.layerio.whiteout import WHITEOUT_META_PREFIX, WHITEOUT_PREFIX

_AUFS_LINKS = WHITEOUT_META_PREFIX + "plnk/"  # Docker's AUFS hardlink directory, and below


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _plain(entry: TarEntry) -> bool:
    """A regular file with content stored whole (tar-split keeps one CRC-64 of its bytes)."""
    return entry.type in REGULAR_TYPES and entry.size > 0 and entry.sparse is None


class ReproducibilityCheck:
    """Fed every entry of an archive, in order; ``reason`` says why it cannot be rebuilt."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._files: set[str] = set()  # names with content
        self._plain: set[str] = set()  # ... of those, regular files whose last entry is not sparse
        self._linked: set[str] = set()  # targets of this archive's hard links
        #: Names given twice, each time as a regular file with content: the layer can be
        #: rebuilt only if every entry of one name carries the bytes of its last.
        self.repeated: set[str] = set()
        self._names: set[str] = set()  # every name but directories', empty files' too
        self._dirs: set[str] = set()
        self._links: set[str] = set()  # symlinks this archive adds
        self._through_no_link: set[str] = set()  # parents known to cross none of them

    def see(self, entry: TarEntry) -> None:
        """Account for one entry (cheap: a few set lookups for most entries)."""
        if self.reason is not None:
            return
        name = _normal(entry.name)
        parent, _, base = name.rpartition("/")
        if WHITEOUT_PREFIX in name:
            # Rare: whiteouts, AUFS metadata, or a name that merely contains ".wh.".
            self._see_marked(entry, name, parent, base)
            return
        size, kind = entry.size, entry.type
        if size > 0 and kind not in REGULAR_TYPES:
            # Unpacking keeps no file for it, so its bytes cannot be read back.
            self.reason = f"{name!r} carries {size} bytes of content that unpacking drops"
            return
        if self._links and parent not in self._through_no_link and self._through(name, parent, base):
            return
        if name in self._files:
            self._again(name, entry)
        elif kind != DIR and name in self._dirs:
            self.reason = f"directory {name!r} is replaced by a later entry"
        else:
            # Parents count for every entry, empty ones too: ``check`` holds each
            # stored file to its header, so one a later entry removes (by
            # replacing its directory) could not be checked.  A name given twice
            # matters only with content (the last header wins, as in unpacking).
            if kind == LNK:
                self._linked.add(_normal(entry.linkname))
            self._add(name, kind == DIR, size > 0 or entry.sparse is not None, kind == SYM,
                      _plain(entry))

    def _see_marked(self, entry: TarEntry, name: str, parent: str, base: str) -> None:
        """:meth:`see` for a name with ``.wh.`` somewhere in it."""
        if name.startswith(_AUFS_LINKS) and entry.type != DIR:
            self.reason = (
                f"{name!r} is an AUFS hardlink file, which unpacking leaves out of the layer "
                "(as Docker does)"
            )
            return
        skipped = WHITEOUT_META_PREFIX in parent  # AUFS metadata: unpacking leaves it out
        whiteout = base.startswith(WHITEOUT_PREFIX)
        if entry.size > 0 and (skipped or entry.type not in REGULAR_TYPES or whiteout):
            self.reason = f"{name!r} carries {entry.size} bytes of content that unpacking drops"
            return
        if self._links and parent not in self._through_no_link and self._through(name, parent, base):
            return
        if not whiteout:
            if name in self._files:
                self._again(name, entry)
            elif entry.type != DIR and name in self._dirs:
                self.reason = f"directory {name!r} is replaced by a later entry"
            else:
                if entry.type == LNK:
                    self._linked.add(_normal(entry.linkname))
                self._add(name, entry.type == DIR, entry.size > 0, entry.type == SYM, _plain(entry))
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # opaque markers hide lower layers only, never this archive's own files
        target = posixpath.join(parent, base[len(WHITEOUT_PREFIX) :])
        if target in self._names or target in self._dirs:
            self.reason = f"{target!r} is deleted by the same archive that adds it"

    def _again(self, name: str, entry: TarEntry) -> None:
        """*name*, which an earlier entry gave content, once more: a candidate if both are plain
        and no hard link of the archive was made to the first (unpacking replaces the file, so the
        link would keep the first entry's inode apart from the name's)."""
        if name in self._plain and _plain(entry) and name not in self._linked:
            self.repeated.add(name)
        else:
            self.reason = f"{name!r} appears twice"

    def _through(self, name: str, parent: str, base: str) -> bool:
        """Whether *name* goes through one of this archive's symlinks (the reason is then set)."""
        link = self._link_above(parent)
        if link is None:
            return False
        # A whiteout there deletes (or hides) through the link too: a file
        # an earlier entry wrote is gone from where its header says.
        does = "deletes" if base.startswith(WHITEOUT_PREFIX) else "is written"
        self.reason = f"{name!r} {does} through the symlink {link!r} of the same archive"
        return True

    def _link_above(self, parent: str) -> str | None:
        """The first of this archive's symlinks on the way to *parent*, if any.

        Parents found clear are remembered: a symlink added later at one of
        their prefixes replaces a directory, which is reported on its own.
        """
        path = parent
        while path:
            if path in self._links:
                return path
            path = path.rpartition("/")[0]
        self._through_no_link.add(parent)
        return None

    def _add(self, name: str, is_dir: bool, content: bool, entry_is_link: bool = False,
             plain: bool = False) -> None:
        if is_dir:
            self._dirs.add(name)
        else:
            self._names.add(name)
            if content:
                self._files.add(name)
                if plain:
                    self._plain.add(name)
            if entry_is_link:
                self._links.add(name)
        parent = name.rpartition("/")[0]
        while parent and parent not in self._dirs:
            self._dirs.add(parent)
            parent = parent.rpartition("/")[0]

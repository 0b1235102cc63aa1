"""The bytes a set of changes adds: what ``diffsize`` prints.

Kept apart from the tar writer, which ``diffsize`` does not need.
"""

from __future__ import annotations

import os
import stat

from graphdriver.diff.changes import ChangeKind
from graphdriver.fs.longpaths import ShortPaths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from graphdriver.diff.changes import Change


def changes_size(root: str, changes: Iterable[Change]) -> int:
    """Bytes of regular files added or changed in *changes*, as they are under *root*.

    Each inode counts once however many of its names changed; directories,
    symlinks and devices count 0, deletions nothing, vanished files nothing.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    with ShortPaths() as short:
        for change in changes:
            if change.kind is ChangeKind.DELETE:
                continue
            try:
                st = os.lstat(short(os.path.join(root, change.path.lstrip("/"))))
            except (FileNotFoundError, NotADirectoryError):  # gone, or replaced, meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total

"""Which extended attributes a layer carries, and reading them from a file.

Every extended attribute travels with its file except ``security.selinux`` (a
label of the host's policy, set again by whoever mounts the layer) and
overlayfs' own ``trusted.overlay.*`` / ``user.overlay.*`` (the union's
bookkeeping, not the file's).  Export writes these, and comparing two trees
compares these: what a tarball cannot carry is no change.
"""

from __future__ import annotations

import errno
import os

from graphdriver.fs.ownfiles import get_xattrs

#: Extended attributes never exported.
EXCLUDED_XATTRS = frozenset({"security.selinux"})
EXCLUDED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def read_xattrs(path: str) -> dict[str, bytes]:
    """The exportable extended attributes of *path* (not following symlinks), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    excluded = EXCLUDED_XATTR_PREFIXES
    wanted = [n for n in sorted(names) if n not in EXCLUDED_XATTRS and not n.startswith(excluded)]
    return get_xattrs(path, wanted, follow_symlinks=False)  # a file of mode 0000 of ours too

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

_CAPABILITY = "security.capability"
#: A file capability's revisions (its first 32 bits, little-endian) and its effective flag.
_CAP_REVISION_MASK, _CAP_V2, _CAP_V3, _CAP_EFFECTIVE = 0xFF000000, 0x02000000, 0x03000000, 0x1
_CAP_V3_SIZE = 24  # a revision 2 capability's 20 bytes, and its root's uid


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


def read_back(name: str, value: bytes) -> bytes:
    """*value* of the xattr *name* as a file gives it back once it was set to it.

    The kernel reads a namespaced file capability (revision 3) whose root is uid 0, the root of
    the namespace reading it, as the plain capability it is there (revision 2: its sets and
    effective flag, without the root), as ``getcap`` and tarball writers read it.
    """
    if name != _CAPABILITY or len(value) != _CAP_V3_SIZE or value[20:] != bytes(4):
        return value
    magic = int.from_bytes(value[:4], "little")
    if magic & _CAP_REVISION_MASK != _CAP_V3:
        return value
    return (_CAP_V2 | magic & _CAP_EFFECTIVE).to_bytes(4, "little") + value[4:20]

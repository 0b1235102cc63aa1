"""Which extended attributes a layer carries, and reading them from a file.

Every extended attribute travels with its file except ``security.selinux`` (a
label of the host's policy, set again by whoever mounts the layer) and
overlayfs' own ``trusted.overlay.*`` / ``user.overlay.*`` (the union's
bookkeeping, not the file's).  Export writes these, and comparing two trees
compares these: what a tarball cannot carry is no change.

What the kernel keeps of an xattr is not always the bytes set: :func:`read_back`
gives what a file reads back, and :func:`kept_mode` the mode it keeps, so a tree
is compared with what its headers leave on disk rather than with the headers.
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

ACCESS_ACL = "system.posix_acl_access"
DEFAULT_ACL = "system.posix_acl_default"
#: A POSIX ACL xattr: a version (2) of 4 bytes, then 8 bytes an entry (tag, permissions, id).
_ACL_VERSION, _ACL_HEADER, _ACL_ENTRY = 2, 4, 8
_USER_OBJ, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x04, 0x10, 0x20
#: The id the kernel gives back for the entries that name nobody (owner, group, mask, other).
_NO_ID = b"\xff\xff\xff\xff"


def read_xattrs(path: str) -> dict[str, bytes]:
    """The exportable extended attributes of *path* (not following symlinks), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    if not names:  # nearly every file
        return {}
    excluded = EXCLUDED_XATTR_PREFIXES
    wanted = [n for n in sorted(names) if n not in EXCLUDED_XATTRS and not n.startswith(excluded)]
    return get_xattrs(path, wanted, follow_symlinks=False)  # a file of mode 0000 of ours too


def read_back(name: str, value: bytes) -> bytes | None:
    """*value* of the xattr *name* as a file gives it back once it was set to it (None: the file
    keeps no such xattr).

    A POSIX ACL is kept as entries, given back with the id of the entries that name nobody
    undefined; an empty one is none, and an access ACL of the three entries the mode holds
    (owner, group, other) is kept as the mode alone (see :func:`kept_mode`).
    The kernel reads a namespaced file capability (revision 3) whose root is uid 0, the root of
    the namespace reading it, as the plain capability it is there (revision 2: its sets and
    effective flag, without the root), as ``getcap`` and tarball writers read it.
    """
    if name in (ACCESS_ACL, DEFAULT_ACL):
        return _acl_read_back(name, value)
    if name != _CAPABILITY or len(value) != _CAP_V3_SIZE or value[20:] != bytes(4):
        return value
    magic = int.from_bytes(value[:4], "little")
    if magic & _CAP_REVISION_MASK != _CAP_V3:
        return value
    return (_CAP_V2 | magic & _CAP_EFFECTIVE).to_bytes(4, "little") + value[4:20]


def kept_mode(mode: int, xattrs: dict[str, bytes]) -> int:
    """The permission bits of a file given *mode*, then the extended attributes *xattrs*.

    An access ACL sets the mode's permissions: the owner's from its owner entry, the group's
    from its mask (from its group entry without one: the three then say no more than the
    mode, which is all the kernel keeps), the others' from its other entry.  The kernel
    refuses an ACL without those, so none of them is missing from one a file holds.
    """
    value = xattrs.get(ACCESS_ACL)
    entries = _acl_entries(value) if value is not None else None
    if not entries:
        return mode
    perms = {tag: perm & 0o7 for tag, perm, _ in entries}
    group = perms.get(_MASK, perms.get(_GROUP_OBJ))
    if group is None or _USER_OBJ not in perms or _OTHER not in perms:
        return mode
    return mode & ~0o777 | perms[_USER_OBJ] << 6 | group << 3 | perms[_OTHER]


def _acl_read_back(name: str, value: bytes) -> bytes | None:
    entries = _acl_entries(value)
    if entries is None:  # not an ACL the kernel takes: no file holds it
        return value
    if not entries:
        return None
    if name == ACCESS_ACL and all(tag in (_USER_OBJ, _GROUP_OBJ, _OTHER) for tag, _, _ in entries):
        return None
    out = [value[:_ACL_HEADER]]
    for i, (tag, _, _) in enumerate(entries):
        at = _ACL_HEADER + i * _ACL_ENTRY
        nobody = tag in (_USER_OBJ, _GROUP_OBJ, _MASK, _OTHER)
        out.append(value[at:at + 4] + _NO_ID if nobody else value[at:at + _ACL_ENTRY])
    return b"".join(out)


def _acl_entries(value: bytes) -> list[tuple[int, int, int]] | None:
    """The (tag, permissions, id) entries of the ACL xattr *value*; None if it is none."""
    count, rest = divmod(len(value) - _ACL_HEADER, _ACL_ENTRY)
    if count < 0 or rest or int.from_bytes(value[:_ACL_HEADER], "little") != _ACL_VERSION:
        return None
    def field(at: int, size: int) -> int:
        return int.from_bytes(value[at:at + size], "little")

    starts = range(_ACL_HEADER, len(value), _ACL_ENTRY)
    return [(field(at, 2), field(at + 2, 2), field(at + 4, 4)) for at in starts]

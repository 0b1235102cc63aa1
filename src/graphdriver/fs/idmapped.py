"""Idmapped views of directories (``mount_setattr(2)`` with ``MOUNT_ATTR_IDMAP``).

A layer stored under one set of id maps is shown to a child stored under
another without copying a file: a detached clone of its mount
(``open_tree(OPEN_TREE_CLONE)``) whose owners read through a user namespace
mapping the first maps' host ids to the second's.  Files the first maps do not
cover show as the overflow id, as in any user namespace.

A view is named ``/proc/self/fd/N``: usable as an overlay lower directory (the
kernel keeps its own private clone, so the view may go afterwards) and as any
directory to open.  Views and namespaces are kept, one per distinct request, for
the life of the process (a command needs a handful).

Needs root (``CAP_SYS_ADMIN``) and a filesystem that allows idmapped mounts
(ext4, xfs, btrfs, tmpfs since Linux 6.3); :func:`view` raises ``OSError``
otherwise, and the caller copies instead.
"""

from __future__ import annotations

import os

from graphdriver.fs import syscalls
from graphdriver.idmap import MAX_ID, IDMap, IDMappings

#: The identity over every id, as one range.
_ALL = ((0, 0, MAX_ID + 1),)
#: The kernel's limit on lines in a ``uid_map``.
_MAX_LINES = 340

#: Extended attributes holding ids (see :func:`needs_copy`).
_CAPABILITY = "security.capability"
_POSIX_ACL = "system.posix_acl_"

_userns: dict[tuple[str, str], int] = {}
_views: dict[tuple[str, str, str], int] = {}


def _ranges(m: IDMap) -> tuple[tuple[int, int, int], ...]:
    if m.identity:
        return _ALL
    return tuple((r.container_id, r.host_id, r.size) for r in m.ranges)


def translation(theirs: IDMap, mine: IDMap) -> str:
    """``uid_map`` lines taking host ids stored under *theirs* to those *mine* stores the same
    container ids as (ids only one of the maps covers are left out)."""
    lines = []
    for tc, th, ts in _ranges(theirs):
        for mc, mh, ms in _ranges(mine):
            lo, hi = max(tc, mc), min(tc + ts, mc + ms)
            if lo < hi:
                lines.append((th + lo - tc, mh + lo - mc, hi - lo))
    if not lines:
        raise OSError(0, "the two id maps share no container id")
    if len(lines) > _MAX_LINES:
        raise OSError(0, f"the translation needs {len(lines)} ranges (the kernel takes {_MAX_LINES})")
    return "".join(f"{a} {b} {n}\n" for a, b, n in sorted(lines))


def _user_namespace(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps (a forked child holds it while they are written)."""
    key = (uid_map, gid_map)
    fd = _userns.get(key)
    if fd is not None:
        return fd
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: only raw calls, then _exit)
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            ok = syscalls.unshare_user()
            os.write(ready_w, b"1" if ok else b"0")
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(0, "cannot create a user namespace")
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)  # the child reads EOF and exits
        os.waitpid(pid, 0)
    _userns[key] = fd
    return fd


def view(path: str, theirs: IDMappings, mine: IDMappings) -> str:
    """A path showing directory *path* (stored under *theirs*) with owners as *mine* stores them."""
    uid_map, gid_map = translation(theirs.uids, mine.uids), translation(theirs.gids, mine.gids)
    key = (os.path.realpath(path), uid_map, gid_map)
    fd = _views.get(key)
    if fd is None:
        ns = _user_namespace(uid_map, gid_map)
        fd = syscalls.open_tree_clone(key[0])
        try:
            syscalls.set_idmap(fd, ns)
        except OSError:
            os.close(fd)
            raise
        _views[key] = fd
    return f"/proc/self/fd/{fd}"


def available(path: str, theirs: IDMappings, mine: IDMappings) -> bool:
    """Whether :func:`view` works for *path* here (root, kernel, filesystem)."""
    try:
        view(path, theirs, mine)
    except OSError:
        return False
    return True


def needs_copy(path: str, theirs: IDMappings, mine: IDMappings) -> bool:
    """Whether the tree at *path* (stored under *theirs*) must be copied rather than viewed in *mine*.

    A file capability or a POSIX ACL holds ids of its own (a capability's root
    id, an ACL's users and groups) that an idmapped view shows translated, or
    not at all where the translation has no answer: such a tree is copied with
    its ids shifted instead.  An owner *mine* cannot express raises
    :class:`~graphdriver.errors.InvalidArgument` (a view would show it as the
    overflow id, a copy could not store it).
    """
    from graphdriver.fs.tree import walk_tree

    st = os.stat(path)  # an overlay lower is named through a symlink (``l/<short>``): its target's owner
    theirs.translate(mine, st.st_uid, st.st_gid)
    copy = False
    for _, entry in walk_tree(path):
        try:
            st = entry.stat(follow_symlinks=False)
            names = [] if copy else os.listxattr(entry.path, follow_symlinks=False)
        except OSError:
            continue  # gone, or a filesystem without xattrs: nothing to translate
        theirs.translate(mine, st.st_uid, st.st_gid)
        copy = copy or any(n == _CAPABILITY or n.startswith(_POSIX_ACL) for n in names)
    return copy


def release() -> None:
    """Close every view and namespace this process made (mounts made from them stay)."""
    for table in (_views, _userns):
        for fd in table.values():
            os.close(fd)
        table.clear()

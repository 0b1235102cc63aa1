"""The filesystem underneath: what every other part stands on and none of it knows layers.

- :mod:`.syscalls`: the one facade for what :mod:`os` lacks (``openat2``, ``renameat2``, ...).
- :mod:`.atomic`: the one atomic write, the one staged directory, ``syncfs``.
- :mod:`.locking`: ``flock`` locks and whether a process is alive.
- :mod:`.mounts`: the kernel's mount API and the one mountinfo parser.
- :mod:`.tree`: copying and removing whole trees.
- :mod:`.ownfiles`: reading files of ours that their mode closes to us (a store without root).
- :mod:`.asowner`: work done as root of a user namespace mapping only us, in a process of its own.
- :mod:`.confine`: opens confined to a directory, and the confined child process.
- :mod:`.sizelimit` / :mod:`.sizerecord`: size limits (project quota or a loop image) and their record.
"""

import os as _os


def privileged() -> bool:
    """Whether this process may chown, make devices, mount and write trusted xattrs (euid 0).

    The one place the project asks: code paths that differ for rootless use
    (fuse-overlayfs, no device nodes, user.* xattrs) all decide by it.  A
    process that made itself root of a namespace mapping only its own user
    (:func:`graphdriver.fs.ownfiles.enter_owner_namespace`) is not.
    """
    return _os.geteuid() == 0 and not _in_owner_namespace


#: Set once this process is root of a user namespace that maps only its own user.
_in_owner_namespace = False

#: Extended attribute namespaces only a privileged process sets: left out without it.
PRIVILEGED_XATTRS = ("trusted.", "security.")


def path_key(path: str) -> str:
    """A short, stable name for *path* (16 hex digits of its SHA-256): a store's folder inside
    a shared run root, a run root inside a store."""
    # The built-in SHA-256 module, not hashlib: opening a store for a mount
    # should not pay for loading OpenSSL (the digest is the same).
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # Python 3.12 and later
        except ImportError:
            from hashlib import sha256
    return str(sha256(_os.fsencode(path)).hexdigest()[:16])

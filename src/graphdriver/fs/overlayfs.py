"""overlayfs's own conventions in an upper directory (see the kernel's overlayfs documentation).

A deleted name is a 0/0 character device; a directory that hides everything
below it carries the opaque xattr, ``trusted.overlay.opaque=y``, or
``user.overlay.opaque`` when the overlay is mounted with ``userxattr`` (as
rootless mounts are).  Layer tarballs say the same with ``.wh.`` names
(:mod:`graphdriver.layerio.whiteout`).
"""

from __future__ import annotations

import os
import stat

OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_XATTR_USER = "user.overlay.opaque"


def is_whiteout(st: os.stat_result) -> bool:
    """Whether *st* is overlay's whiteout: a 0/0 character device."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout_at(dir_fd: int, name: str) -> bool:
    """Whether *name* in directory *dir_fd* is a whiteout (False when it cannot be looked at)."""
    try:
        return is_whiteout(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
    except OSError:
        return False

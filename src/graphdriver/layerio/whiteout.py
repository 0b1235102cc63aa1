"""Whiteout conventions.

In a layer tarball a deletion of ``dir/name`` is an entry ``dir/.wh.name`` and
"hide everything below from lower layers" is an entry ``dir/.wh..wh..opq``
(the AUFS convention Docker and OCI use).  In an overlayfs upper directory a
deletion is a 0/0 character device named ``name`` and an opaque directory
carries the xattr ``trusted.overlay.opaque=y`` (``user.overlay.opaque`` when
mounted with ``userxattr``, as rootless mounts are).
"""

from __future__ import annotations

from graphdriver.fs.overlayfs import OPAQUE_XATTR, OPAQUE_XATTR_USER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

WHITEOUT_PREFIX = ".wh."
# Names starting with this are reserved metadata, not whiteouts of ".wh.<x>" files.
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

OVERLAY_OPAQUE_XATTR = OPAQUE_XATTR
OVERLAY_OPAQUE_XATTR_USER = OPAQUE_XATTR_USER


def hidden_by(path: str, folders: Collection[str]) -> bool:
    """Whether *path* is one of *folders* (deleted or opaque ones: ``""`` is the root) or
    below one, so what lower layers hold there is hidden."""
    if not folders:
        return False
    while path:
        if path in folders:
            return True
        path = path.rpartition("/")[0]
    return "" in folders


class WhiteoutMode:
    """How applying a layer expresses deletions in the target directory: one of these names
    (plain strings, the values a driver's apply target gives; not an :class:`enum.Enum`,
    which the commands that list changes would load for them)."""

    #: The target holds the full tree (vfs): whiteouts delete, opaque dirs are emptied.
    DELETE = "delete"
    #: The target is an overlay upper dir: 0/0 char devices and the opaque xattr.
    OVERLAY = "overlay"
    #: Both.
    ALL = (DELETE, OVERLAY)

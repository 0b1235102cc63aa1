"""Layer formats as the conformance suite writes its scenarios in them.

A scenario describes a layer once, as a tree spec of :mod:`.treeutil`
(``{"etc/hosts": F(b"...")}``), and says paths as a Linux container sees them
(``/etc/hosts``).  A :class:`LayerFormat` turns both into what a driver of
that format takes and gives back: an OCI (Docker) tarball and the same paths;
or a Windows layer tarball (:mod:`.wingen`, every path under ``Files/``) and
``/Files/...`` change paths.  The mounted view of both is the container's
volume, so trees compare the same way.
"""

from __future__ import annotations

from graphdriver.testing import wingen
from graphdriver.testing.treeutil import D, F, H, L, Spec, W, make_tar


class LayerFormat:
    """How a scenario's layers and paths look to a driver of one format."""

    #: The name drivers declare as their ``LAYER_FORMAT``.
    name = "oci"
    #: Whether the format keeps modification times to the nanosecond (Windows: 100 ns).
    exact_times = True
    #: Whether unprivileged views keep hard links (Windows' rootless views are copies).
    rootless_hardlinks = True
    #: Whether a rootless writable layer records what a process changed in its view.
    rootless_changes = True

    def tar(self, spec: Spec) -> bytes:
        """The layer tarball of *spec*."""
        return make_tar(spec)

    def name_of(self, rel: str) -> str:
        """The archive name of the container path *rel* (relative, no leading ``/``)."""
        return rel

    def path(self, path: str) -> str:
        """The change path of the container path *path* (``/etc/hosts``)."""
        return path


class WindowsFormat(LayerFormat):
    """Windows layers: the volume under ``Files/``, as ``backuptar`` writes it.

    A spec's files, directories, symlinks, hard links and whiteouts become the
    Windows entries (tombstones for whiteouts); owners and permission bits have
    no place in a Windows layer and are dropped.
    """

    name = "windows"
    exact_times = False
    rootless_hardlinks = False
    rootless_changes = False

    def tar(self, spec: Spec) -> bytes:
        entries: list[wingen.Entry] = [wingen.WinDir("Files")]
        for path, node in spec.items():
            name = self.name_of(path)
            if isinstance(node, F):
                entries.append(wingen.WinFile(name, node.data))
            elif isinstance(node, D):
                entries.append(wingen.WinDir(name))
            elif isinstance(node, L):
                entries.append(wingen.WinSymlink(name, node.target))
            elif isinstance(node, H):
                entries.append(wingen.WinLink(name, self.name_of(node.target)))
            elif isinstance(node, W):
                entries.append(wingen.Tombstone(name))
            else:
                raise TypeError(f"{path}: a Windows layer has no {type(node).__name__}")
        return wingen.layer_tar(entries)

    def name_of(self, rel: str) -> str:
        return f"Files/{rel}"

    def path(self, path: str) -> str:
        return "/Files" + path


def for_layer_format(name: str) -> LayerFormat:
    """The format a driver declaring ``LAYER_FORMAT = name`` takes."""
    return WindowsFormat() if name == "windows" else LayerFormat()

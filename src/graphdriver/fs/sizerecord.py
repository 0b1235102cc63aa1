"""The record a size-limited layer keeps in its folder (``sizelimit.json``).

Apart from :mod:`graphdriver.fs.sizelimit`, which enforces limits with
quotas and loop devices (ctypes, mount tables), so that reading a layer's
limit for ``layer ID`` costs one file read, not those imports.
"""

from __future__ import annotations

import os

from graphdriver.fs import atomic

RECORD_FILE = "sizelimit.json"
#: The sparse filesystem image of a layer limited by an image (not a quota).
IMAGE_FILE = "size.img"
#: Where that image is mounted in the layer folder.
IMAGE_MOUNT = "img"


def limit_of(folder: str) -> dict[str, object] | None:
    """What the size limiter recorded for the layer in *folder* (None: no limit)."""
    try:
        value = atomic.read_json(os.path.join(folder, RECORD_FILE))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def has_image(folder: str) -> bool:
    """Whether the layer in *folder* lives in a size-limited filesystem image."""
    return os.path.exists(os.path.join(folder, IMAGE_FILE))

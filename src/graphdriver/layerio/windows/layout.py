"""Where a Windows layer keeps what (the seeds' layout), as names only.

A layer folder holds ``Files/`` (its part of the Windows volume), ``Hives/``
(registry deltas), ``UtilityVM/Files/`` (the utility VM), and a metadata
sidecar in ``.winmeta/`` for what Linux files cannot hold.
"""

FILES = "Files"
HIVES = "Hives"
UTILITY_VM = "UtilityVM"
UTILITY_VM_FILES = "UtilityVM/Files"
#: The top-level trees a Windows layer tarball may hold.
LAYER_ROOTS = (FILES, HIVES, UTILITY_VM)
#: Where tombstones (``.wh.`` deletions) and hard links may appear.
TOMBSTONE_ROOTS = (FILES, UTILITY_VM_FILES)
#: The metadata sidecar's folder, beside ``Files/``, and its file of entries.
META_DIR = ".winmeta"
ENTRIES_FILE = "entries.ndjson"


def has_path_prefix(path: str, prefix: str) -> bool:
    """Whether *path* is *prefix* or lies below it (whole components only)."""
    return path == prefix or path.startswith(prefix + "/")

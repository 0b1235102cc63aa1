"""The package's parts keep to their jobs (read from the source, nothing run).

Drivers hand back directories and mounts: no driver module imports the tar
code (:mod:`graphdriver.layerio`) or the change listing (:mod:`graphdriver.diff`);
the store combines those with what a driver hands back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import graphdriver

PACKAGE = Path(graphdriver.__file__).parent

# The windowsfilter driver stores the Windows layer format: it knows where its
# parts live (layout) and, for a rootless view, which files its sidecar deleted.
WINDOWS_LAYOUT = {"graphdriver.layerio.windows.layout", "graphdriver.layerio.windows.winmeta"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_driver_imports_tar_or_diff_code() -> None:
    offending = {}
    for path in sorted((PACKAGE / "drivers").glob("*.py")):
        bad = {
            m for m in imports_of(path)
            if m.startswith(("graphdriver.layerio", "graphdriver.diff")) and m not in WINDOWS_LAYOUT
            and not any(m.startswith(w + ".") for w in WINDOWS_LAYOUT)
        }
        if bad:
            offending[path.name] = sorted(bad)
    assert offending == {}


def test_fs_and_layerio_know_no_drivers_or_store() -> None:
    for part in ("fs", "layerio", "diff"):
        for path in sorted((PACKAGE / part).rglob("*.py")):
            bad = {m for m in imports_of(path) if m.startswith(("graphdriver.drivers", "graphdriver.store"))}
            assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_drivers_and_extraction_name_whiteout_modes_alike() -> None:
    """A driver's apply target says how deletions go in its own words (drivers import no
    layer code), which the store hands to the extractor as they are."""
    from graphdriver.drivers.base import DELETE_WHITEOUTS, OVERLAY_WHITEOUTS
    from graphdriver.layerio.whiteout import WhiteoutMode

    assert (DELETE_WHITEOUTS, OVERLAY_WHITEOUTS) == (WhiteoutMode.DELETE, WhiteoutMode.OVERLAY)

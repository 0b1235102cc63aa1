"""The driver registry (the seeds' ``graphdriver.Register``).

Drivers are registered by name with a factory path so that importing the
registry imports no driver: the CLI only loads the one it uses.  When no driver
is named, :func:`select_driver` tries :data:`PRIORITY` in order and keeps the
first whose probe passes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from graphdriver.errors import GraphDriverError, InvalidArgument, Unsupported

if TYPE_CHECKING:
    from graphdriver.drivers.base import Driver, DriverConfig

_REGISTRY: dict[str, str] = {}

#: Drivers tried, in order, when none is named.
PRIORITY: tuple[str, ...] = ("overlay", "vfs")


def register(name: str, target: str) -> None:
    """Register a driver class given as ``"module:Class"`` under *name*."""
    _REGISTRY[name] = target


def registered() -> list[str]:
    """Names of the drivers whose module can be imported, in registration order."""
    out = []
    for name in _REGISTRY:
        try:
            driver_class(name)
        except Unsupported:
            continue
        out.append(name)
    return out


def driver_class(name: str) -> type[Driver]:
    """The class registered as *name* (InvalidArgument if unknown)."""
    target = _REGISTRY.get(name)
    if target is None:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidArgument(f"unknown driver {name!r}", f"known drivers: {known}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise Unsupported(f"driver {name}", "is not available in this installation") from e
    cls: type[Driver] = getattr(module, attr)
    return cls


def init_driver(name: str, config: DriverConfig) -> Driver:
    """Probe the home and initialise driver *name* (the seeds' ``InitFilter``)."""
    cls = driver_class(name)
    cls.probe(config.home)
    return cls(config)


def select_driver(home_for: dict[str, str] | None = None, probe_home: str = "") -> str:
    """The first driver of :data:`PRIORITY` whose probe passes at *probe_home*."""
    reasons = []
    for name in PRIORITY:
        if name not in _REGISTRY:
            continue
        try:
            cls = driver_class(name)
            cls.probe((home_for or {}).get(name, probe_home))
        except GraphDriverError as e:
            reasons.append(f"{name}: {e}")
            continue
        return name
    raise Unsupported("no usable driver", "; ".join(reasons) or "none registered")


register("overlay", "graphdriver.drivers.overlay:OverlayDriver")
register("vfs", "graphdriver.drivers.vfs:VfsDriver")
register("windowsfilter", "graphdriver.drivers.windowsfilter:WindowsFilterDriver")

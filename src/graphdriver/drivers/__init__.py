"""Graph drivers: layers as directories under a home, and their union views.

- :mod:`.base`: the driver contract and its shared machinery.
- :mod:`.refcount`: mount counts across processes.
- :mod:`.overlay`, :mod:`.vfs`, :mod:`.windowsfilter`: the drivers.

This module is the registry (the seeds' ``graphdriver.Register``), here rather
than in a module of its own because every command that opens a driver loads it.
Drivers are registered by name with a factory path so that importing the
registry imports no driver: the CLI only loads the one it uses.  When no driver
is named, :func:`select_driver` tries :data:`PRIORITY` in order and keeps the
first whose probe passes.
"""

from __future__ import annotations

from graphdriver.errors import GraphDriverError, InvalidArgument, Unsupported, shorten
from graphdriver.fs import privileged

TYPE_CHECKING = False

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


def names() -> list[str]:
    """Every registered driver's name, in registration order (no driver module imported)."""
    return list(_REGISTRY)


def check_name(name: str) -> str:
    """The registry entry of *name*, without importing it (InvalidArgument if unknown)."""
    target = _REGISTRY.get(name)
    if target is None:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidArgument(f"unknown driver {shorten(name)!r}", f"known drivers: {known}")
    return target


def driver_class(name: str) -> type[Driver]:
    """The class registered as *name* (InvalidArgument if unknown)."""
    target = check_name(name)
    import sys

    module_name, _, attr = target.partition(":")
    try:
        # __import__ rather than importlib.import_module: importlib itself is
        # an import this start-up path can do without.
        __import__(module_name)
        module = sys.modules[module_name]
    except ModuleNotFoundError as e:
        raise Unsupported(f"driver {name}", "is not available in this installation") from e
    cls: type[Driver] = getattr(module, attr)
    return cls


#: In a driver's run root: the home and options that passed its probe since boot.
PROBED_MARKER = ".probed"
#: In a driver's run root: its ``status`` pairs, found by the probe since boot.
STATUS_CACHE = ".status.json"


def _probe_key(config: DriverConfig) -> str:
    """What a probe's result depends on: the home, the driver options and the user."""
    import os

    return repr((os.path.abspath(config.home), sorted(config.options.items()), privileged()))


def init_driver(name: str, config: DriverConfig) -> Driver:
    """Probe the home and initialise driver *name* (the seeds' ``InitFilter``).

    A probe tries the kernel and the home's filesystem (scratch directories,
    xattrs, mount tables): tens of milliseconds, paid by every command that
    needs the driver.  Its success is remembered in the driver's run root,
    which lives on tmpfs and dies with a reboot, for the same home, options and
    user; later processes skip it, as containers/storage's overlay driver
    caches its feature checks in its run root.
    """
    import os

    cls = driver_class(name)
    marker = os.path.join(config.run_root, PROBED_MARKER)
    key = _probe_key(config)
    try:
        with open(marker, encoding="utf-8") as f:
            config.probed = f.read() == key
    except (OSError, ValueError):
        config.probed = False
    if not config.probed:
        cls.probe(config.home)
    driver = cls(config)
    from graphdriver.drivers.base import UNFINISHED

    if not config.probed and not UNFINISHED:
        from graphdriver.fs import atomic

        try:
            atomic.write_bytes(marker, key.encode(), durable=False)
        except OSError:
            pass  # an unwritable run root only costs the next process a probe
    return driver


def driver_status(driver: Driver) -> list[tuple[str, str]]:
    """The driver's ``status`` pairs, remembered in its run root until a reboot.

    What a driver reports (backing filesystem, probes, mount API, size-limit
    method) is what its probe found, which holds until the machine restarts;
    asking the kernel again costs ``status`` far more than reading it back.
    """
    import os

    from graphdriver.fs import atomic

    if not driver.STATUS_IS_STATIC:
        return driver.status()
    path = os.path.join(driver.run_root, STATUS_CACHE)
    key = _probe_key(driver.config)
    try:
        cached = atomic.read_json(path)
        if isinstance(cached, dict) and cached.get("key") == key:
            return [(str(k), str(v)) for k, v in cached["status"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pairs = driver.status()
    from graphdriver.drivers.base import UNFINISHED

    if UNFINISHED:  # what a probe could not check is asked again next time
        return pairs
    try:
        atomic.write_json(path, {"key": key, "status": pairs}, durable=False)
    except OSError:
        pass  # an unwritable run root only costs the next status the same work
    return pairs


#: Why :func:`select_driver` passed over drivers ahead of the one it chose, in this process
#: (``status`` of a store it chose for says so).
passed_over: list[str] = []


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
        passed_over[:] = reasons
        return name
    raise Unsupported("no usable driver", "; ".join(reasons) or "none registered")


register("overlay", "graphdriver.drivers.overlay:OverlayDriver")
register("vfs", "graphdriver.drivers.vfs:VfsDriver")
register("windowsfilter", "graphdriver.drivers.windowsfilter:WindowsFilterDriver")

"""Which drivers, with which options, a test runs on: a driver name that carries its options."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: The option sets the conformance suite runs each driver with, beyond its defaults:
#: overlay through the old mount(2) API and through fuse-overlayfs, vfs copying
#: without trying reflinks.
OPTION_SETS: dict[str, list[dict[str, str]]] = {
    "overlay": [{}, {"mount_api": "mount"}, {"mount_program": "fuse-overlayfs"}],
    "vfs": [{}, {"copy": "copy"}],
}

#: ``NAME[=module:Class] ...``: the drivers to run the suite on (a third party's
#: driver is registered under NAME first); unset, every registered driver that loads.
DRIVERS_ENV = "GRAPHDRIVER_CONFORMANCE_DRIVERS"


class DriverSetup(str):
    """A driver name that also carries driver options (``--opt``): one set of the suite.

    It is the driver's name wherever a name is expected; the test helpers add its
    options to the command line and to the store they open.
    """

    options: dict[str, str]

    def __new__(cls, name: str, **options: str) -> DriverSetup:
        setup = super().__new__(cls, name)
        setup.options = dict(options)
        return setup

    @property
    def id(self) -> str:
        return "-".join([str(self), *(f"{k}={v}" for k, v in sorted(self.options.items()))])


def driver_names(*, windows: bool) -> list[str]:
    """The drivers to test: from :data:`DRIVERS_ENV`, or every registered one that loads.

    *windows*: include drivers of the Windows layer format.
    """
    from graphdriver import drivers

    names = register_chosen() or drivers.registered()
    return [n for n in names if windows or layer_format(n) != "windows"]


def register_chosen() -> list[str]:
    """Register each ``NAME=module:Class`` of :data:`DRIVERS_ENV`; the names it chooses.

    Every process the suite runs a driver in calls it (a child process too): a third
    party's driver is known only where it was registered.
    """
    from graphdriver import drivers

    chosen = os.environ.get(DRIVERS_ENV, "").split()
    for item in chosen:
        name, _, target = item.partition("=")
        if target:
            drivers.register(name, target)
    return [item.partition("=")[0] for item in chosen]


def layer_format(name: str) -> str:
    """The layer format driver *name* declares (``oci`` or ``windows``)."""
    from graphdriver import drivers

    return str(drivers.driver_class(name).LAYER_FORMAT)


def driver_setups(*, all_options: bool, windows: bool = False) -> list[DriverSetup]:
    """Each driver with its default options, and with every option set too if *all_options*."""
    out = []
    for name in driver_names(windows=windows):
        for options in OPTION_SETS.get(name, [{}]) if all_options else [{}]:
            out.append(DriverSetup(name, **options))
    return out


def unusable(setup: DriverSetup, probe_dir: str) -> str | None:
    """Why *setup* cannot run on this machine (None: it can)."""
    from graphdriver import drivers
    from graphdriver.errors import GraphDriverError

    try:
        drivers.driver_class(setup).probe(probe_dir)
    except GraphDriverError as e:
        return f"driver {setup} cannot run here: {e}"
    program = setup.options.get("mount_program")
    if program and shutil.which(program) is None:
        return f"{program} is not installed (apt-get install {program})"
    return None


def open_store(root: Path, run_root: Path, driver: str) -> Any:
    """A store on *driver* (a :class:`DriverSetup` brings its options)."""
    from graphdriver.store.layers import Store, StoreOptions

    options = getattr(driver, "options", {})
    return Store(StoreOptions(root=str(root), run_root=str(run_root), driver=str(driver),
                              driver_options=dict(options)))

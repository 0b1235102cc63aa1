"""graphdriver: a container layer store.

Layers live on disk as directories managed by a driver (``overlay``, ``vfs``,
``windowsfilter``); the store above the drivers keeps one record per layer and
turns layer tarballs into layers and back.  The command line (``graphdriver``)
is a thin shell over this API::

    import graphdriver

    store = graphdriver.open_store("/tmp/store", driver="vfs")
    with open("base.tar.gz", "rb") as f:
        record = store.import_layer("base", None, f)   # record.diff_digest: the DiffID
    store.create("ctr", "base", writable=True)
    root = store.mount("ctr")                          # the union of the chain
    with open(root + "/hello", "w") as f:
        f.write("hi")
    store.unmount("ctr")
    print([str(c) for c in store.changes("ctr")])      # ['A /hello']
    with open("ctr.tar", "wb") as out:
        store.diff("ctr", out)                         # the layer tarball
    store.remove("ctr")

Failures raise :class:`GraphDriverError` subclasses, each with the command
line's exit code (``NotFound`` 3, ``AlreadyExists`` 4, ``Precondition`` 5,
``IntegrityError`` 6, ``Unsupported`` 7, ``InvalidArgument`` 2).
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from graphdriver.diff.changes import Change, ChangeKind
    from graphdriver.errors import (
        AlreadyExists,
        GraphDriverError,
        IntegrityError,
        InvalidArgument,
        NotFound,
        Precondition,
        Unsupported,
    )
    from graphdriver.store.layers import Store
    from graphdriver.store.records import Layer, LayerRecord

__all__ = [
    "AlreadyExists",
    "Change",
    "ChangeKind",
    "GraphDriverError",
    "IntegrityError",
    "InvalidArgument",
    "Layer",
    "LayerRecord",
    "NotFound",
    "Precondition",
    "Store",
    "Unsupported",
    "open_store",
]

# Where each public name lives: imported when first asked for, so that
# `import graphdriver` costs a command nothing it does not use.
_LAZY = {
    "Store": "graphdriver.store.layers",
    "Layer": "graphdriver.store.records",
    "LayerRecord": "graphdriver.store.records",
    "Change": "graphdriver.diff.changes",
    "ChangeKind": "graphdriver.diff.changes",
    **dict.fromkeys(
        ("AlreadyExists", "GraphDriverError", "IntegrityError", "InvalidArgument", "NotFound",
         "Precondition", "Unsupported"),
        "graphdriver.errors",
    ),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphdriver' has no attribute {name!r}")
    import sys

    __import__(module)
    return getattr(sys.modules[module], name)


def open_store(
    root: str | None = None,
    *,
    run_root: str | None = None,
    driver: str | None = None,
    options: Mapping[str, str] | Iterable[str] = (),
    uidmap: str = "",
    gidmap: str = "",
    additional_stores: Iterable[str] = (),
    recover: bool = True,
    create: bool = True,
) -> Store:
    """Open the layer store at *root*, creating it when new (with *create* False, when
    its first layer is stored: the command line's read-only commands create nothing).

    *root* defaults to ``$GRAPHDRIVER_ROOT``, else ``/var/lib/graphdriver`` as
    root and ``$XDG_DATA_HOME/graphdriver`` otherwise; *run_root* (mount
    counts, locks that die with a reboot) to ``$GRAPHDRIVER_RUNROOT``, else
    ``/run/graphdriver`` or ``$XDG_RUNTIME_DIR/graphdriver``.  *driver* is
    needed only for a new store (``$GRAPHDRIVER_DRIVER``, else the first of
    overlay and vfs that works here); an existing store refuses another.
    *options* are driver options, a mapping or ``KEY=VALUE`` strings.
    *uidmap*/*gidmap* (``container:host:size``, comma-separated) are fixed
    when the store is created; *gidmap* defaults to *uidmap*.  *additional_stores* are read-only stores
    whose layers are listed, mounted and used as parents.  *recover* first
    finishes or undoes work a crash left (pass False to call ``cleanup``
    yourself and see what it did).
    """
    import os

    from graphdriver.errors import InvalidArgument
    from graphdriver.store.layers import Store, StoreOptions, default_root, default_run_root

    if root == "" or run_root == "":
        raise InvalidArgument("an empty path for the store's root or run root", "name a folder")
    root = root or default_root()
    parsed: dict[str, str] = {}
    items = options.items() if hasattr(options, "items") else None
    for item in items if items is not None else options:  # type: ignore[union-attr]
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidArgument(f"--opt {item!r}", "expected KEY=VALUE")
        else:
            key, value = item
        parsed[key.strip().lower()] = value.strip()
    idmaps = None
    if uidmap or gidmap:
        from graphdriver.idmap import IDMap, IDMappings

        # A uid map alone maps groups alike, as podman's --uidmap does.
        idmaps = IDMappings(IDMap.parse(uidmap), IDMap.parse(gidmap or uidmap))
    return Store(StoreOptions(
        root=root,
        run_root=run_root or default_run_root(root),
        driver=driver or os.environ.get("GRAPHDRIVER_DRIVER") or None,
        driver_options=parsed,
        idmaps=idmaps,
        additional_stores=tuple(additional_stores),
        recover=recover,
        create=create,
    ))

"""graphdriver: a container layer store.

Layers live on disk as directories managed by a driver (``vfs``, ``overlay``,
``windowsfilter``); the store above the drivers keeps one record per layer and
turns layer tarballs into layers and back.  The command line (``graphdriver``)
is a thin shell over :mod:`graphdriver.store.layers`.
"""

__version__ = "0.1.0"

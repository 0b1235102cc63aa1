"""Graph drivers: layers as directories under a home, and their union views.

- :mod:`.base`: the driver contract and its shared machinery.
- :mod:`.registry`: drivers by name, probing, choosing one.
- :mod:`.overlay`, :mod:`.vfs`, :mod:`.windowsfilter`: the drivers.
"""

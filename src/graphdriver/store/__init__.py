"""The store above the drivers: one record per layer, and tarballs turned into layers and back.

- :mod:`.records`: layer records (stored fields) and their atomic files.
- :mod:`.layers`: the layer store.
"""

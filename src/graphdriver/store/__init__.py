"""The store above the drivers: one record per layer, and tarballs turned into layers and back.

- :mod:`.records`: layer records (stored fields) and their atomic files, pending markers.
- :mod:`.transaction`: the store lock, a layer's pending marker and commit or undo, as one block.
- :mod:`.content`: where :mod:`graphdriver.layerio` meets the directories a driver hands back.
- :mod:`.recovery`: what `cleanup` finishes or undoes after a crash.
- :mod:`.integrity`: whether a layer still is its tarball (``check``, ``tarsplit``, exact ``diff``).
- :mod:`.layers`: the layer store.
"""

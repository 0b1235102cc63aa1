"""What a layer changed: by walking two trees, or by reading an upper directory.

- :mod:`.changes`: the change model (``A``/``C``/``D``) and how a path is printed.
- :mod:`.walk`: changes between a layer's tree and its parent's.
- :mod:`.upper`: changes read from an overlay-style upper directory over its lowers.
"""

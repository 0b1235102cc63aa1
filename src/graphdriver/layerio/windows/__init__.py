"""The Windows layer format (``Files/``, ``Hives/``, ``UtilityVM/``) stored on Linux.

- :mod:`.wintar`: the format's paths, PAX metadata and backup streams.
- :mod:`.winmeta`: applying a Windows layer and the metadata sidecar its files keep.
"""

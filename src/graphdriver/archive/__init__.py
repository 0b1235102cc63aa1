"""Layer tarballs: reading, writing, applying and exporting them.

This package knows nothing of drivers or stores.  Modules:

- :mod:`.entry`: the tar entry model shared by reader, writer and extractor.
- :mod:`.tarstream`: streaming reader (raw header bytes kept) and writer.
- :mod:`.compression`: sniffing and decompressing gzip, zstd, xz, bzip2.
- :mod:`.whiteout`: the whiteout conventions of layer tarballs and overlayfs.
- :mod:`.extract`: applying a layer tarball to a directory, confined to it.
- :mod:`.confine`: path resolution that cannot leave a directory; the child process.
- :mod:`.export`: changes (``A``/``C``/``D``) and their export as a layer tarball.
"""

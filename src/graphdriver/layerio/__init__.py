"""Layer tarballs in and out: reading, writing, applying, exporting, and reproducing them.

Knows nothing of drivers or stores: it works on directories and streams it is given.

- :mod:`.entry`, :mod:`.tarstream`, :mod:`.pax`: the tar entry model, the streaming reader
  (raw header bytes kept) and writer, PAX records; ``_tarscan`` (C, built at install where a
  compiler is at hand) decodes the usual entry's headers for the reader.
- :mod:`.compression`, :mod:`.crc64`: decompression (gzip, zstd, xz, bzip2) and tar-split's CRC-64.
- :mod:`.whiteout`: deletion conventions of layer tarballs and overlayfs.
- :mod:`.extract`, :mod:`.batched`: applying a layer tarball to a directory, confined to it.
- :mod:`.ingest`: one pass that decompresses, digests, records tar-split and extracts.
- :mod:`.tarsplit`, :mod:`.reproducible`: tar-split metadata, reassembly, and whether it holds.
- :mod:`.export`: changes exported as a layer tarball.
- :mod:`.verify`: a layer's files compared with its tar headers.
- :mod:`.windows`: the Windows layer format.
"""

"""What a driver's tests need: tree specs and snapshots, Windows layer tarballs, the conformance suite.

* :mod:`.treeutil`: layers described as ``{"path": F(b"data")}`` specs, made into
  tarballs or trees, and trees snapshotted for comparison;
* :mod:`.wingen`: Windows layer tarballs, byte for byte as Windows writes them;
* :mod:`.formats`: one spec in the format a driver takes (OCI or Windows);
* :mod:`.setups`: drivers with option sets, and stores on them;
* :mod:`.conformance`: the scenarios every driver must pass (needs ``pytest``).

Nothing here is imported by the store or the command line.
"""

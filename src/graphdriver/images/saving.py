"""Writing images out: docker-archive, oci-archive, or an OCI layout folder.

Layer tarballs come from the layer store's ``diff``: byte for byte the ones
imported (tar-split), so a saved docker-archive has the DiffIDs of the
loaded one; a layer whose files changed since (mounted writable through
``vfs``) no longer has its DiffID, and the save is refused (exit 6).  An OCI
output of an image whose manifest and compressed layer blobs were kept
writes them exactly (same manifest digest); otherwise it describes the
uncompressed layers in a new OCI manifest.  Files in archives
are written with mode 0644, owner 0 and time 0, so two saves of one image
are the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
from typing import TYPE_CHECKING, Any, BinaryIO

from graphdriver.errors import GraphDriverError, IntegrityError, InvalidArgument
from graphdriver.fs import atomic
from graphdriver.images import oci, reference
from graphdriver.images.records import ImageRecord, ImageStore

if TYPE_CHECKING:
    from graphdriver.fs.outfile import OutputFile
    from graphdriver.store.layers import Store

FORMATS = ("docker-archive", "oci-archive", "oci")
_BLOCK = 512


class _Counting:
    """A writer counting what goes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def write(self, data: Any) -> int:
        n = self.out.write(data)
        self.count += len(data)
        return n if n is not None else len(data)

    def flush(self) -> None:
        self.out.flush()


class _Output:
    """Where the files of an archive go: a tarball, or a folder."""

    def __init__(self, path: str | BinaryIO, folder: bool, quiet: bool = True) -> None:
        self.quiet = quiet
        self.tar: BinaryIO | None = None
        self.written: set[str] = set()
        self.file: OutputFile | None = None
        self.folder: str | None = None
        self.made_folder = False
        if not isinstance(path, str):  # a stream (standard output): written into as it goes
            if folder:
                raise InvalidArgument("an OCI layout", "is a folder: give one to write it to (-o DIR)")
            self.tar = path
            return
        self.folder = path if folder else None
        #: A folder this save makes goes again with a failed save (one it adds to keeps its images).
        self.made_folder = folder and not os.path.lexists(path)
        # A path that cannot be written (a missing folder above it, a file where a folder is
        # wanted) is a failure of the environment, exit 1 as docker save and skopeo copy give,
        # not a usage error: the arguments are sound. A privilege lacking is exit 7.
        if folder:
            if os.path.lexists(path) and not os.path.isdir(path):
                raise GraphDriverError(f"cannot write {path}", "an OCI layout is a folder; this is not one")
            try:
                if self.made_folder:  # its parent must be there, as for a tarball's
                    os.mkdir(path)
                os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
            except OSError as e:
                from graphdriver.errors import os_error

                raise os_error(f"cannot write {path}", e) from e
            if not self.made_folder:
                _remove_leftovers(path)
        else:
            # A regular file is written beside the target and renamed over it once
            # whole (a failed save leaves what was there before); a device, a fifo
            # or /dev/stdout is written into, never replaced.
            from graphdriver.fs.outfile import OutputFile

            # committed by close(), dropped by abort()
            self.file = OutputFile(path, durable=True, unwritable=GraphDriverError)
            self.tar = self.file.file

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, len(data), lambda out: out.write(data))

    def add_stream(self, name: str, size: int, fill: Any) -> None:
        """Add *name* of *size* bytes, written by ``fill(writer)``; once per name.

        Files over a megabyte (the layers) show a progress bar on a terminal.
        """
        if name in self.written:
            return
        self.written.add(name)
        if size > 1 << 20 and not self.quiet:
            from graphdriver import progress

            inner = fill

            def fill(out: Any) -> None:
                with progress.writing(out, f"save {name[-64:][:12]}", size, self.quiet) as bar:
                    inner(bar)
        if self.folder is not None:
            # Each file is written unnamed (or, where the filesystem cannot, under a temporary
            # name its writer holds locked) and named once whole: a save that fails or is killed
            # leaves no half blob in the layout, only whole ones.
            from graphdriver.fs.outfile import OutputFile

            path = os.path.join(self.folder, name)
            with OutputFile(path, durable=True, unwritable=GraphDriverError, replace=True) as f:
                counter = _Counting(f)
                fill(counter)
                _check_size(name, counter.count, size)
            return
        assert self.tar is not None
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self.tar.write(info.tobuf(format=tarfile.PAX_FORMAT))
        counter = _Counting(self.tar)  # type: ignore[arg-type]
        fill(counter)
        _check_size(name, counter.count, size)
        self.tar.write(bytes(-size % _BLOCK))

    def close(self) -> None:
        if self.tar is not None:
            self.tar.write(bytes(2 * _BLOCK))
            if self.file is not None:
                self.file.commit()
            else:
                self.tar.flush()

    def abort(self) -> None:
        """Drop what a failed save wrote (the target keeps what it held)."""
        if self.file is not None:
            self.file.abort()
        elif self.folder is not None and self.made_folder:
            from graphdriver.fs.tree import remove_tree

            remove_tree(self.folder)


#: The names saves into an OCI layout folder wrote its files under until they were whole:
#: ``<name>.partial`` (earlier versions, never locked) and ``.tmp-<name>-<pid>`` (locked by
#: its writer), for the files of the folder itself and those of ``blobs/sha256``.
_LEFTOVER = re.compile(r"(?:(?:index\.json|oci-layout)|[0-9a-f]{64})\.partial"
                       r"|\.tmp-(?:(?:index\.json|oci-layout)|[0-9a-f]{64})-[0-9]+")


def _remove_leftovers(folder: str) -> None:
    """Remove what saves into the OCI layout *folder* killed half way left there: the partial
    files of earlier versions, and the temporary files of writers now dead (a live save's
    stay), so a save run again leaves the layout as a save never killed would."""
    from graphdriver.fs.locking import remove_abandoned

    for where in (folder, os.path.join(folder, "blobs", "sha256")):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            if not _LEFTOVER.fullmatch(name):
                continue
            path = os.path.join(where, name)
            with contextlib.suppress(OSError):  # not ours to remove (another user's): left alone
                if name.endswith(".partial"):
                    atomic.remove_file(path)
                else:
                    remove_abandoned(path, os.unlink)


def _check_size(name: str, got: int, want: int) -> None:
    if got != want:
        raise IntegrityError(f"saving {name}", f"wrote {got} bytes where {want} were announced")


def familiar(name: str) -> str:
    """``docker.io/library/deb:2`` as Docker shows it: ``deb:2``."""
    return name.removeprefix("docker.io/library/").removeprefix("docker.io/")


def save(store: Store, record: ImageRecord, path: str | BinaryIO, fmt: str = "docker-archive",
         names: list[str] | None = None, quiet: bool = True) -> None:
    """Write *record* to *path* (or, as an archive, into a binary stream) in *fmt* (one of
    :data:`FORMATS`), named *names* (default its names)."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"format {fmt!r}", f"must be one of {', '.join(FORMATS)}")
    images = ImageStore(store.root)
    names = record.names if names is None else names
    out = _Output(path, folder=fmt == "oci", quiet=quiet)
    try:
        if fmt == "docker-archive":
            _docker_archive(store, images, record, out, names)
        else:
            _oci_layout(store, images, record, out, names)
        out.close()
    except BaseException:
        out.abort()
        raise


def _layer(store: Store, layer_id: str, out: Any) -> None:
    """The layer's tarball, the one its DiffID names (IntegrityError if its files changed since)."""
    store.diff(layer_id, out, exact=True)


def _layer_size(store: Store, layer_id: str) -> int:
    size = store.record(layer_id).uncompressed_size
    if size is None:
        counter = _Counting(io.BytesIO())  # type: ignore[arg-type]
        store.diff(layer_id, counter, exact=True)  # type: ignore[arg-type]
        size = counter.count
    return size


def _docker_archive(store: Store, images: ImageStore, record: ImageRecord, out: _Output,
                    names: list[str]) -> None:
    config_name = f"{oci.hex_of(record.id)}.json"
    out.add_bytes(config_name, images.read_blob(record.id))
    layers = []
    for layer_id, diff_id in zip(record.layers, record.diff_ids, strict=True):
        name = f"{oci.hex_of(diff_id)}.tar"
        out.add_stream(name, _layer_size(store, layer_id), lambda w, i=layer_id: _layer(store, i, w))
        layers.append(name)
    tags = [familiar(n) for n in names] or None  # untagged: null, as Docker writes it
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layers}]
    out.add_bytes("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())


def _oci_layout(store: Store, images: ImageStore, record: ImageRecord, out: _Output,
                names: list[str]) -> None:
    def blob(digest: str) -> str:
        return f"blobs/sha256/{oci.hex_of(digest)}"

    earlier = _earlier_entries(out.folder)
    config = images.read_blob(record.id)
    if record.manifest is not None and record.layer_blobs is not None:
        manifest = oci.as_oci_manifest(images.read_blob(record.manifest))
        descs = [oci.Descriptor.parse(d, "kept manifest") for d in record.layer_blobs]
        # Every kept blob is checked before anything is written: a damaged one leaves no half layout.
        kept = {d.digest: images.checked_blob(d.digest) for d in descs if d.digest not in record.diff_ids}
        out.add_bytes(blob(record.id), config)
        for layer_id, desc in zip(record.layers, descs, strict=True):
            if desc.digest in record.diff_ids:
                out.add_stream(blob(desc.digest), desc.size, lambda w, i=layer_id: _layer(store, i, w))
            else:
                path = kept[desc.digest]
                out.add_stream(blob(desc.digest), desc.size, lambda w, p=path: _copy_file(p, w))
        media_type = str(oci.load_json(manifest, "kept manifest").get("mediaType") or oci.OCI_MANIFEST)
    else:
        out.add_bytes(blob(record.id), config)
        layers = []
        for layer_id, diff_id in zip(record.layers, record.diff_ids, strict=True):
            size = _layer_size(store, layer_id)
            out.add_stream(blob(diff_id), size, lambda w, i=layer_id: _layer(store, i, w))
            layers.append({"mediaType": oci.OCI_LAYER, "digest": diff_id, "size": size})
        value = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                 "config": {"mediaType": oci.OCI_CONFIG, "digest": record.id, "size": len(config)},
                 "layers": layers}
        manifest = json.dumps(value, separators=(",", ":")).encode()
        media_type = oci.OCI_MANIFEST
    digest = oci.sha256_digest(manifest)
    out.add_bytes(blob(digest), manifest)
    entries = []
    for name in names or [""]:
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(manifest)}
        if name:
            ref = reference.parse(name)
            entry["annotations"] = {oci.CONTAINERD_NAME: name, oci.REF_NAME: ref.tag or "latest"}
        entries.append(entry)
    out.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    staying = _kept(earlier, entries)
    if not names and any(e.get("digest") == digest for e in staying):
        entries = []  # saved untagged, and the layout holds that manifest already (by a name)
    manifests = [*staying, *entries]
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}
    out.add_bytes("index.json", json.dumps(index, separators=(",", ":")).encode())


def _copy_file(path: str, out: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)


def _earlier_entries(folder: str | None) -> list[dict[str, Any]]:
    """The index entries of the OCI layout *folder* already holds (a save adds to it, as skopeo's does)."""
    if folder is None:
        return []
    path = os.path.join(folder, "index.json")
    try:
        with open(path, "rb") as f:
            value = oci.load_json(f.read(), f"{path}")
    except FileNotFoundError:
        return []
    manifests = value.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise IntegrityError(path, "not an OCI index: its images would be lost")
    return manifests


def _kept(earlier: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier entries the new ones do not replace: an entry of the same name or of the same
    tag goes (an unnamed one of the same manifest too), the others stay before the new ones.

    The tag is the ``org.opencontainers.image.ref.name`` that ``oci:DIR:TAG`` finds an image by
    (skopeo, buildah): two entries of one tag would leave the one saved last unreachable there,
    so a save replaces it, as ``skopeo copy ... oci:DIR:TAG`` does, whatever repository it was of.

    A ref.name that is itself a full name (``localhost/app:1``, as ``buildah push IMG
    oci:DIR:localhost/app:1`` writes it, with no containerd name) names that image, as
    loading the layout reads it: it is compared as a name, not as a tag.
    """

    def names(entry: dict[str, Any]) -> tuple[str | None, Any]:
        notes = entry.get("annotations")
        notes = notes if isinstance(notes, dict) else {}
        tag = notes.get(oci.REF_NAME)
        containerd = notes.get(oci.CONTAINERD_NAME)
        name = _as_name(containerd, always=True) if containerd else _as_name(tag)
        return name, tag

    full = {names(e)[0] for e in entries} - {None}
    tags = {names(e)[1] for e in entries} - {None}
    digests = {e["digest"] for e in entries}
    kept = []
    for entry in earlier:
        name, tag = names(entry)
        if name in full or tag in tags or (name is None and tag is None and entry.get("digest") in digests):
            continue
        kept.append(entry)
    return kept


def _as_name(value: Any, always: bool = False) -> str | None:
    """The normalised image name an index annotation gives, if it names a repository
    (``localhost/app:1``, ``deb:2``; any name with *always*); None for a bare tag (``1``)
    or what is no name."""
    if not isinstance(value, str) or not (always or any(c in value.split("@")[0] for c in "/:")):
        return None
    try:
        return str(reference.parse_new(value))
    except InvalidArgument:
        return None

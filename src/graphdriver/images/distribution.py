"""Pull and push: images between the store and a registry (see :mod:`.registry`).

A pull fetches the manifest (from an index, the platform asked for), the
config and the layer blobs the store lacks (several at once, each checked
against its digest, kept, and resumed if a download breaks), then stores the
image as a load does (chain ids, DiffIDs checked).  The manifest and the
compressed blobs are kept, so pushing the image unchanged sends the same
bytes and keeps its manifest digest: a layer the store has but keeps no
compressed blob of (it came from a docker-archive or a commit) has its blob
downloaded too, since a manifest is kept only with every blob it names.  An
image with no kept manifest (loaded from a docker-archive, or a commit) gets
one on its first push: its layers gzip-compressed once (isal), kept, and
described in an OCI manifest, so later pushes are the same again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from graphdriver.errors import IntegrityError, InvalidArgument, NotFound, shorten
from graphdriver.fs import atomic
from graphdriver.fs.locking import claim
from graphdriver.images import oci, reference
from graphdriver.images.loading import Pending, check_os, keeps_blob, load_image
from graphdriver.images.records import ImageRecord, ImageStore
from graphdriver.images.sources import (
    INDEX_DEPTH,
    SourceImage,
    SourceLayer,
    check_platform,
    parse_platform,
    select_platform,
    store_platform,
)

if TYPE_CHECKING:
    from graphdriver.store.layers import Store

#: Blobs downloaded at once.
PARALLEL = 4


def pull(store: Store, name: str, *, insecure: bool = False, platform: str | None = None,
         quiet: bool = True, report: Callable[[str], None] | None = None) -> ImageRecord:
    """Pull image *name* (``deb:2``, ``host:5000/team/app@sha256:...``) into the store.

    A tag pulled becomes the image's name; a digest pulled is kept as the
    digested reference (``host:5000/team/app@sha256:...``, podman's
    RepoDigests), so the image is listed with its repository and found by it.
    """
    ref = reference.parse(name)
    if reference.is_ambiguous(ref):
        raise InvalidArgument(f"image name {shorten(name)!r}", "sha256:... is an image id, not a name")
    parse_platform(platform)  # a usage error before the registry is asked
    images = ImageStore(store.root)
    fetched: list[str] = []  # the blobs this pull downloaded: gone again if it fails
    try:
        return _pull(store, images, ref, insecure, platform, quiet, report or (lambda _line: None), fetched)
    except BaseException:
        from graphdriver.images.recovery import forget_blobs

        forget_blobs(store, images, fetched)
        raise


def _pull(store: Store, images: ImageStore, ref: reference.Reference, insecure: bool, platform: str | None,
          quiet: bool, say: Callable[[str], None], fetched: list[str]) -> ImageRecord:
    from graphdriver.images.registry import Registry

    with Registry(ref, insecure=insecure) as reg:
        data, media = reg.manifest(ref.digest or ref.tag or "latest")
        index_digest = oci.sha256_digest(data) if media in oci.INDEXES else None
        data, media, chosen = _choose(reg, ref, data, media, platform or store_platform(store.driver_name))
        if media in oci.DOCKER_SCHEMA1:
            raise oci.schema1_refused(f"image {ref}")
        config_desc, layer_descs = oci.manifest_parts(oci.load_json(data, f"manifest of {ref}"),
                                                      f"image {ref}")
        config = reg.blob_bytes(config_desc)
        parsed = oci.load_json(config, f"config of {ref}")
        diff_ids = oci.checked_config(parsed, f"image {ref}")  # a corrupt one before anything else
        if chosen is None or not chosen.platform:  # no index chose it by its platform: its config says
            check_platform(config, platform, f"image {ref}")
        check_os(store, parsed, f"image {ref}")  # before any layer
        # Marked from the first blob on (not before: a pull that fails to reach the registry
        # leaves nothing in a new store).
        with Pending(images, f"pull {ref}"):
            _download_all(reg, images, _wanted(store, images, layer_descs, diff_ids, say), quiet, say,
                          fetched)
            layers = [SourceLayer(_blob_opener(images, d.digest), d) for d in layer_descs]
            names = [str(ref)] if ref.digest is None else []
            digests = [f"{ref.repository}@{ref.digest}"] if ref.digest is not None else []
            record = load_image(store, images, SourceImage(config, names, layers, data, digests),
                                quiet=quiet, report=None, work="pull")
    if index_digest is not None and ref.digest is None:
        # As Docker's RepoDigests: the tag named the index, so repo@<index digest> names the image too.
        _remember_push(store, images, record.id, f"{ref.repository}@{index_digest}")
        with contextlib.suppress(NotFound):  # (removed meanwhile: what was pulled is still told)
            record = images.get(record.id)
    return record


def _choose(reg: object, ref: reference.Reference, data: bytes, media: str,
            wanted: str) -> tuple[bytes, str, oci.Descriptor | None]:
    """The image manifest (and its media type) that *data*, of type *media*, stands for: itself,
    or from an index (and from an index that one names) the entry for platform *wanted*, as
    :func:`select_platform` chooses; with the index entry chosen last (None: no index)."""
    from graphdriver.images.registry import Registry

    assert isinstance(reg, Registry)
    chosen = None
    for _ in range(INDEX_DEPTH + 1):
        if media not in oci.INDEXES:
            return data, media, chosen
        index = oci.load_json(data, f"index of {ref}")
        descs = [oci.Descriptor.parse(m, f"index of {ref}") for m in index.get("manifests") or []]
        chosen = select_platform(descs, wanted, f"image {ref}")
        data, media = reg.manifest(chosen.digest)
    raise IntegrityError(f"image {ref}", f"indexes nested more than {INDEX_DEPTH} deep")


def _wanted(store: Store, images: ImageStore, descs: list[oci.Descriptor], diff_ids: list[str],
            say: Callable[[str], None]) -> list[oci.Descriptor]:
    """The blobs a pull downloads: those of layers the store lacks, and the compressed blobs of layers
    it has but keeps no blob of (an image loaded from a docker-archive, or a commit): the manifest is
    kept only with every blob it names, so that a push of the image sends the same digests."""
    layer_ids = [oci.hex_of(c) for c in oci.chain_ids(diff_ids)]
    wanted = []
    for d, diff_id, lid in zip(descs, diff_ids, layer_ids, strict=False):
        present = store.exists(lid)
        if present:
            say(f"layer {d.digest[7:19]}: already present")
        if not images.has_blob(d.digest) and (not present or keeps_blob(d, diff_id)):
            wanted.append(d)
    return wanted


def _blob_opener(images: ImageStore, digest: str) -> Callable[[], BinaryIO] | None:
    path = images.blob_path(digest)
    if not os.path.exists(path):
        return None
    return lambda: open(path, "rb")


def _download_all(reg: object, images: ImageStore, descs: list[oci.Descriptor], quiet: bool,
                  say: Callable[[str], None], fetched: list[str]) -> None:
    """Download *descs* into the blob folder (each blob once across processes); the digests
    of those this process downloaded are added to *fetched*."""
    from graphdriver import progress
    from graphdriver.images.registry import Registry

    assert isinstance(reg, Registry)
    os.makedirs(images.blobs_dir, 0o700, exist_ok=True)
    def one(desc: oci.Descriptor, advance: Callable[[int], None] | None) -> None:
        from graphdriver.fs.locking import locked

        final = images.blob_path(desc.digest)
        partial = final + ".download"  # kept across runs: a new pull resumes it
        with locked(partial + ".lock"):  # one download of a blob at a time, across processes
            try:
                if not os.path.exists(final):
                    try:
                        reg.download(desc, partial, advance)
                    except OSError as e:
                        if e.errno == errno.ENOSPC:  # a partial file that filled the disk helps no resume
                            atomic.remove_file(partial)
                        raise
                    os.rename(partial, final)
                    fetched.append(desc.digest)
            finally:
                # Removed while held: a waiter then finds the file it locked unnamed, and
                # takes the one now at the path (see locked), never the same lock as another.
                atomic.remove_file(partial + ".lock")

    with progress.bars(quiet) as add, ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        jobs = [pool.submit(one, d, add(f"layer {d.digest[7:19]}", d.size) if add else None) for d in descs]
        for job in jobs:
            job.result()
    if progress.wanted(quiet):  # on a terminal, what the bars showed stays as one line each
        for d in descs:
            say(f"layer {d.digest[7:19]}: downloaded ({d.size} bytes)")


def push(store: Store, name: str, destination: str, *, insecure: bool = False, quiet: bool = True,
         report: Callable[[str], None] | None = None) -> str:
    """Push image *name* to *destination* (``host:5000/team/app:1``); returns the manifest digest."""
    from graphdriver import progress
    from graphdriver.images.registry import Registry

    images = ImageStore(store.root)
    record, by_name = images.lookup(name)
    if by_name:
        record = record.as_named(reference.parse(name))  # the manifest that name came with
    if record.manifest is None or record.layer_blobs is None:
        with Pending(images, f"push {record.id}"):  # its new blobs are not cleaned up meanwhile
            record = _compress_for_push(store, images, record)
    assert record.manifest is not None and record.layer_blobs is not None
    dest = reference.parse(destination)
    _check_named_manifest(dest, record.manifest, name)
    say = report or (lambda _line: None)
    manifest = images.read_blob(record.manifest)
    media = str(oci.load_json(manifest, "kept manifest").get("mediaType") or oci.OCI_MANIFEST)
    holders = _holders(images, dest)
    config = images.read_blob(record.id)
    with Registry(dest, insecure=insecure, push=True) as reg:
        descs = [oci.Descriptor.parse(d, "kept manifest") for d in record.layer_blobs]
        blobs: list[tuple[str, int, str | None]] = []
        for desc, layer in zip(descs, record.layers, strict=False):
            if desc.media_type in oci.FOREIGN_LAYERS and desc.urls:
                say(f"blob {desc.digest[7:19]}: foreign, left at its urls")  # as Docker and skopeo do
            else:
                blobs.append((desc.digest, desc.size, layer))
        blobs.append((record.id, len(config), None))
        for digest, size, layer_id in blobs:
            if reg.has_blob(digest):
                say(f"blob {digest[7:19]}: already in the registry")
                continue
            if any(reg.mount_blob(digest, repo) for repo in holders.get(digest, ())):
                say(f"blob {digest[7:19]}: mounted from another repository")
                continue
            reg.upload(digest, size, _pusher(store, images, digest, layer_id), quiet)
            if progress.wanted(quiet):  # elsewhere only what was skipped is told, as for a pull
                say(f"blob {digest[7:19]}: uploaded ({size} bytes)")
        digest = reg.put_manifest(dest.digest or dest.tag or "latest", manifest, media)
    if digest != record.manifest:
        raise IntegrityError(f"push of {name}", f"the registry names the manifest {digest}")
    _remember_push(store, images, record.id, f"{dest.repository}@{digest}")
    return digest


def _check_named_manifest(dest: reference.Reference, digest: str, name: str) -> None:
    """A usage error (exit 2) when *dest* names a digest (``REPO@sha256:...``) other than *digest*,
    the manifest this push would send: such a reference names one manifest, and this is not it.
    Told before anything goes up, where the registry would refuse the manifest only after every
    blob was uploaded."""
    if dest.digest is not None and dest.digest != digest:
        raise InvalidArgument(f"push of {shorten(name)} to {dest}",
                              f"the image's manifest is {digest}, not the one the reference names")


def _remember_push(store: Store, images: ImageStore, image_id: str, where: str) -> None:
    """Keep where image *image_id* went, as Docker keeps a push's RepoDigest."""
    with store.locked():
        try:
            record = images.get(image_id)
        except NotFound:
            return  # removed meanwhile
        if where not in record.pushed:
            record.pushed.append(where)
            images.put(record)


def _holders(images: ImageStore, dest: reference.Reference) -> dict[str, list[str]]:
    """For each kept blob, the other repositories of *dest*'s registry an image named there holds it in."""
    out: dict[str, list[str]] = {}
    for record in images.all():
        repos = []
        for name in (*record.names, *record.digests, *record.pushed):
            try:
                ref = reference.parse(name)
            except InvalidArgument:
                continue  # written by hand or by an older version: names no repository
            if ref.domain == dest.domain and ref.path != dest.path and ref.path not in repos:
                repos.append(ref.path)
        for digest in [record.id, *(str(d.get("digest")) for d in record.layer_blobs or ())]:
            out.setdefault(digest, []).extend(r for r in repos if r not in out[digest])
    return out


def _pusher(store: Store, images: ImageStore, digest: str, layer_id: str | None) -> Callable[[], BinaryIO]:
    """How to read the blob *digest*: a kept file, or the layer's tarball rebuilt (uncompressed)."""
    path = images.blob_path(digest)
    if os.path.exists(path) or layer_id is None:
        return lambda: open(images.checked_blob(digest), "rb")

    def rebuilt() -> BinaryIO:
        import tempfile

        tmp = tempfile.TemporaryFile(dir=images.dir)
        store.diff(layer_id, tmp, exact=True)  # type: ignore[arg-type]
        tmp.seek(0)
        return tmp  # type: ignore[return-value]

    return rebuilt


def _known_blobs(images: ImageStore) -> dict[str, dict[str, object]]:
    """For each layer another image keeps a blob of, that blob's descriptor (as that image's
    manifest has it: a Docker one names a Docker media type).  The layer goes up as that blob:
    the registry may have it already (a commit on a pulled image sends its own layer only)."""
    known: dict[str, dict[str, object]] = {}
    for other in images.all():
        for layer_id, desc in zip(other.layers, other.layer_blobs or (), strict=False):
            if images.has_blob(str(desc.get("digest"))) or desc.get("digest") in other.diff_ids:
                known.setdefault(layer_id, desc)
    return known


def _compress_for_push(store: Store, images: ImageStore, record: ImageRecord) -> ImageRecord:
    """Give *record* gzip layer blobs and an OCI manifest, kept, so every push sends the same bytes.

    A layer another image keeps a blob of is described by that blob, with its OCI media type
    where that image's is Docker's (the bytes and digest are the same): an OCI manifest names
    no Docker media type."""
    from graphdriver.layerio.compression import Compression, open_compressor

    os.makedirs(images.blobs_dir, 0o700, exist_ok=True)
    known = _known_blobs(images)
    layers: list[dict[str, object]] = []
    for layer_id in record.layers:
        if layer_id in known:
            layers.append(oci.as_oci_descriptor(known[layer_id]))  # same blob, in an OCI manifest
            continue
        staging = os.path.join(images.blobs_dir, f"push.partial-{os.getpid()}")
        with os.fdopen(claim(staging), "wb") as out:  # held until renamed: see cleanup
            try:
                hashing = oci.HashingWriter(out)
                with contextlib.closing(open_compressor(hashing, Compression.GZIP)) as z:  # type: ignore[arg-type]
                    store.diff(layer_id, z, exact=True)
                out.flush()
                os.fsync(out.fileno())
                digest = hashing.digest
                os.rename(staging, images.blob_path(digest))
            except BaseException:
                atomic.remove_file(staging)
                raise
        layers.append({"mediaType": oci.OCI_LAYER_GZIP, "digest": digest, "size": hashing.size})
    config = images.read_blob(record.id)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": record.id, "size": len(config)},
                           "layers": layers}, separators=(",", ":")).encode()
    with store.locked():
        current = images.get(record.id)
        current.manifest = images.put_blob(manifest)
        current.layer_blobs = layers
        images.put(current)
    atomic.fsync_dir(images.blobs_dir)
    return current

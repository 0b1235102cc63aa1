"""Images as users handle them: load, save, list, inspect, tag, remove.

The functions of the public API (``graphdriver.images``); the command line's
``image`` commands call them.
"""

from __future__ import annotations

from graphdriver.errors import IntegrityError, InvalidArgument, NotFound, Precondition
from graphdriver.fs import atomic
from graphdriver.images import oci, reference
from graphdriver.images.records import ImageRecord, ImageStore, repository_of
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from graphdriver.store.layers import Store


def load(store: Store, path: str, *, platform: str | None = None, quiet: bool = True,
         report: Callable[[str], None] | None = None) -> list[ImageRecord]:
    """Load every image of the docker-archive, oci-archive or OCI layout at *path*."""
    return [record for record, _ in load_named(store, path, platform=platform, quiet=quiet, report=report)]


def load_named(store: Store, path: str, *, platform: str | None = None, quiet: bool = True,
               report: Callable[[str], None] | None = None,
               each: Callable[[ImageRecord, list[str]], None] | None = None,
               ) -> list[tuple[ImageRecord, list[str]]]:
    """:func:`load`, each record with the names the archive gave it (the record holds
    every name the image has, those it had before included); *each* is told of every image
    as soon as it is stored (an image that fails leaves those before it stored)."""
    from graphdriver.images.loading import load_images
    from graphdriver.images.sources import Archive, store_platform

    with Archive(path, platform, default=store_platform(store.driver_name)) as archive:
        sources = archive.images()
        loaded = [list(src.names) for src in sources]
        told = None if each is None else (lambda i, record: each(record, loaded[i]))
        records = load_images(store, sources, quiet=quiet, report=report, each=told)
        return list(zip(records, loaded, strict=True))


def save(store: Store, name: str, path: str | BinaryIO, fmt: str = "docker-archive", *,
         quiet: bool = True) -> ImageRecord:
    """Write image *name* to *path* as a docker-archive, an oci-archive or an OCI layout (``oci``);
    an archive may go into a binary stream instead (standard output, say)."""
    from graphdriver.images import saving

    record, by_name = ImageStore(store.root).lookup(name)
    # Saved by the name given; by an image id (or a manifest digest) untagged, as Docker saves it.
    names: list[str] = []
    if by_name:
        parsed = reference.parse(name)
        names = [str(parsed)] if str(parsed) in record.names else []
        record = record.as_named(parsed)  # the manifest that name came with
    saving.save(store, record, path, fmt, names, quiet=quiet)
    return record


def images(store: Store) -> list[ImageRecord]:
    """Every image of the store."""
    return ImageStore(store.root).all()


def image(store: Store, name: str) -> ImageRecord:
    """The image *name* names (a reference, ``name@digest``, an id or a unique id prefix)."""
    return ImageStore(store.root).resolve(name)


def created(store: Store, record: ImageRecord) -> str:
    """When the image was made (its config's ``created``, as podman shows it); ``""`` when unknown."""
    try:
        config = oci.load_json(ImageStore(store.root).read_blob(record.id), f"image {record.id}: config")
    except IntegrityError:
        return ""
    value = config.get("created")
    return value if isinstance(value, str) else ""


def remove_unreadable(store: Store, name: str) -> str | None:
    """Remove the record of image *name*, a full id (``sha256:`` optional), when that record
    cannot be read; its id, or None when *name* is no such id.  The layers the record held
    stay until ``prune`` finds them unused (what it held is unknown)."""
    image_id = "sha256:" + name.removeprefix("sha256:")
    try:
        reference.check_digest(image_id)
    except InvalidArgument:
        return None
    images = ImageStore(store.root)
    with store.locked():
        try:
            images.get(image_id)
        except IntegrityError:
            images.delete(image_id)
            return image_id
    return None


def repo_digests(record: ImageRecord) -> list[str]:
    """``repository@digest`` for the references pulled by digest, each repository named and each push."""
    out = {*record.digests, *record.pushed}
    for repo in record.repositories():
        out.update(f"{repo}@{manifest}" for manifest in record.manifests_in(repo))
    return sorted(out)


def inspect(store: Store, name: str) -> dict[str, Any]:
    """What ``image inspect`` shows: ids, names, digests, each layer's DiffID and chain id, the config."""
    store_images = ImageStore(store.root)
    record = store_images.resolve(name)
    config = oci.load_json(store_images.read_blob(record.id), f"image {record.id}: config")
    chains = oci.chain_ids(record.diff_ids)
    size = 0
    for layer_id in record.layers:
        size += store.record(layer_id).uncompressed_size or 0
    return {
        "Id": record.id,
        "Names": record.names,
        "ConfigDigest": record.id,
        "ManifestDigest": record.manifest,
        # As podman's: repository@manifest digest for every repository the image is in.
        "RepoDigests": repo_digests(record),
        "Created": config.get("created"),
        "Platform": record.platform,
        "Size": size,
        "Layers": [{"Layer": layer_id, "DiffID": diff_id, "ChainID": chain}
                   for layer_id, diff_id, chain in zip(record.layers, record.diff_ids, chains, strict=True)],
        "Config": config,
    }


def tag(store: Store, name: str, new: str) -> ImageRecord:
    """Give image *name* the name *new* too (taken from the image that had it)."""
    store_images = ImageStore(store.root)
    full = str(reference.parse_new(new))
    with store.locked():
        record = store_images.resolve(name)
        record.names.append(full)
        store_images.put_named(record, [full])
    return record


class Removal(Plain):
    """What one :func:`remove` did: the names it ``untagged`` (in full), the image id it
    ``deleted`` (None: the image stays under other names), and the layers it ``freed``."""

    __slots__ = ("deleted", "freed", "untagged")

    def __init__(self, untagged: list[str], deleted: str | None = None,
                 freed: list[str] | None = None) -> None:
        self.untagged = untagged
        self.deleted = deleted
        self.freed = freed or []


def remove(store: Store, name: str, *, force: bool = False) -> Removal:
    """Remove image *name* (only that name when it has others); says what it removed, as read
    under the store lock (another removal at the same time never shows in it).

    A layer is freed when no other image and no container uses it.  An image
    a container was created from is refused until the container is removed.
    An image named by its id goes with all its names, but, as in Docker, only
    with *force* when they are in more than one repository (one id standing
    for ``deb:2`` and ``web:1`` is more likely a slip than a wish).
    """
    from graphdriver.images import container_layers as containers

    store_images = ImageStore(store.root)
    with store.locked():
        record, by_name = store_images.lookup(name)
        # In full, as stored, each once: a reference pulled by digest and pushed to again is
        # kept in both lists.
        every_name = list(dict.fromkeys([*record.names, *record.digests, *record.pushed]))
        if by_name:
            full = str(reference.parse(name))
            # As Docker does: a tag goes alone; the last tag of a repository takes that
            # repository's digested references with it, and the image goes only when
            # no name at all is left (a digested reference of another repository keeps it).
            refs, others = [], 0
            if full in record.names:
                repository = reference.parse(name).repository
                refs = record.names
                if not any(repository_of(n) == repository for n in record.names if n != full):
                    record.digests = [n for n in record.digests if repository_of(n) != repository]
                    record.pushed = [n for n in record.pushed if repository_of(n) != repository]
                others = len(record.names) - 1 + len(record.digests)
            elif full in record.digests:
                refs, others = record.digests, len(record.names) + len(record.digests) - 1
            elif full in record.pushed:  # where it was pushed: forgotten; no name goes with it
                refs, others = record.pushed, len(record.names) + len(record.digests)
            else:
                # repo@<its manifest>: the image as that repository has it; its names there
                # go, and the image with them unless it is named in another repository too.
                repository = reference.parse(name).repository
                here = {n for n in (*record.names, *record.digests) if repository_of(n) == repository}
                record.names = [n for n in record.names if n not in here]
                record.digests = [n for n in record.digests if n not in here]
                refs, others = [], len(record.names) + len(record.digests)
                full = ""
            if others > 0:
                if full:
                    refs.remove(full)
                    if full in record.pushed:  # the same reference, kept from a push too
                        record.pushed.remove(full)
                store_images.put(record)
                return Removal([n for n in every_name
                                if n not in (*record.names, *record.digests, *record.pushed)])
        elif not force:
            repositories = sorted(record.repositories())
            if len(repositories) > 1:
                listed = ", ".join(repositories)
                raise Precondition(f"image {name}", f"is named in several repositories ({listed}): "
                                   "remove it by name, or with --force")
        found, unreadable = containers.scan_by_name(store)
        users = [c.name for c in found if c.image == record.id]
        # An unreadable container record was made from this image if its layers sit on the image's top.
        on_top = set(store.children(record.layers[-1])) if record.layers else set()
        users += [f"the unreadable {e.what}" for ctr, e in unreadable.items()
                  if {ctr, ctr + containers.INIT_SUFFIX} & on_top]
        if users:
            raise Precondition(f"image {name}", f"is used by containers: {', '.join(users)}")
        # Its layers are listed for cleanup first: killed once the record is gone, the
        # removal is finished (the layers nothing else uses go) rather than left half done.
        from graphdriver.images.loading import Pending

        pending = Pending(store_images, f"image rm {name}", frees=record.layers).__enter__()
        try:
            store_images.delete(record.id)
            keep = store_images.referenced_blobs()
            for digest in record.blobs():
                if digest and keep is not None and oci.hex_of(digest) not in keep:
                    atomic.remove_file(store_images.blob_path(digest))
        except BaseException:
            pending.__exit__(None, None, None)
            raise
    try:
        return Removal(every_name, record.id, free_layers(store, record.layers))
    finally:
        pending.__exit__(None, None, None)


def used_layers(store: Store) -> set[str]:
    """Layers some image, container or running load, pull or commit needs."""
    from graphdriver.images import container_layers as containers
    from graphdriver.images.loading import busy_layers

    images = ImageStore(store.root)
    used: set[str] = busy_layers(images)
    records, bad = images.scan()
    for r in records:
        used.update(r.layers)
    if bad:  # what an unreadable record names is unknown: every image layer may be its
        from graphdriver.images.overview import is_image_layer_id

        used.update(layer.id for layer in store.layers() if is_image_layer_id(layer.id))
    found, unreadable = containers.scan_by_name(store)
    for c in found:
        used.update((c.layer, c.init))
    for name in unreadable:  # its file name still says which layers are its
        used.update((name, name + containers.INIT_SUFFIX))
    return used


def free_layers(store: Store, chain: list[str]) -> list[str]:
    """Remove the layers of *chain* (base first) that nothing uses any more, top first."""
    used = used_layers(store)
    freed = []
    for layer_id in reversed(chain):
        if layer_id in used or not store.exists(layer_id) or store.children(layer_id):
            break
        try:
            store.remove(layer_id)
        except (NotFound, Precondition):
            break
        freed.append(layer_id)
    return freed

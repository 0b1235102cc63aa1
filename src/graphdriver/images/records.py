"""Image records and the blobs they keep, beside the layer store.

``<root>/images/`` holds:

* ``records/<config hex>.json``: one image (its id is its config's digest, as
  Docker's): names, the digested references it was pulled by, the layer ids
  of its chain (each layer's id in the layer store is the hex of its chain id,
  so images sharing layers share them), the DiffIDs, and the digest of the
  manifest kept for it, if any (and of another one for each repository whose
  names came with another manifest of the same image).  A record that cannot be read is named by
  :meth:`ImageStore.scan` and passed over: the other images work as before;
* ``blobs/sha256/<hex>``: content-addressed bytes kept exactly: every config,
  every manifest an image was loaded or pulled with, and the compressed layer
  blobs that manifest names (so a save or a push of an unchanged image gives
  the same digests);
* ``pending/<token>.json``: a load, pull or commit under way and the layers it
  made; held locked by its process, so ``cleanup`` knows a dead one's layers;
* ``pending/names.move``: names moving to an image (a load, pull, tag or
  commit taking them from the images that have them), written first and
  removed last under the store lock (see :meth:`ImageStore.put_named`).

A record is written atomically after everything it names exists, so a crash
leaves the whole image or no record; the leftovers are what ``cleanup``
removes (layers of a dead pending load that nothing uses, blobs no record
names).  A name moves from one image to another in one step as readers see
it: the image it goes to is written first, and until the image it leaves is
written without it, the move's marker says whose it is.
"""

from __future__ import annotations

import os

from graphdriver.errors import (
    GraphDriverError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
    shorten,
)
from graphdriver.fs import atomic
from graphdriver.images import reference
from graphdriver.images.oci import file_digest, hex_of, sha256_digest
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

IMAGES_DIR = "images"
#: The marker of a move of names between images, in ``pending/`` (see :meth:`ImageStore.put_named`).
MOVE_FILE = "names.move"
_HEX = frozenset("0123456789abcdef")


class ImageRecord(Plain):
    """What the store knows of one image."""

    __slots__ = ("created", "diff_ids", "digests", "id", "layer_blobs", "layers", "manifest",
                 "name_manifests", "names", "platform", "pushed")

    def __init__(self, id: str, names: list[str], layers: list[str], diff_ids: list[str], *,
                 created: str = "", manifest: str | None = None,
                 layer_blobs: list[dict[str, Any]] | None = None, platform: str = "",
                 digests: list[str] | None = None, pushed: list[str] | None = None,
                 name_manifests: dict[str, dict[str, Any]] | None = None) -> None:
        #: The config's digest (``sha256:...``).
        self.id = id
        #: Normalised references (``docker.io/library/deb:2``), sorted.
        self.names = names
        #: Digested references (``host/team/app@sha256:...``) the image was pulled as, sorted
        #: (podman's RepoDigests): the repository and the manifest or index digest asked for.
        self.digests = digests or []
        #: Layer ids in the layer store, base first (each the hex of the layer's chain id).
        self.layers = layers
        self.diff_ids = diff_ids
        self.created = created
        #: Digest of the manifest kept for the image (its layer blobs kept too); None: none kept.
        self.manifest = manifest
        #: The kept manifest's layer descriptors, when it has one.
        self.layer_blobs = layer_blobs
        #: ``os/arch`` from the config.
        self.platform = platform
        #: Where a registry holds the image by digest (``host/team/app@sha256:...``), sorted:
        #: where it was pushed, the index a tag named when it was pulled through one, and the
        #: manifest of a name it lost to another image.  A later push to another repository
        #: of that registry mounts the blobs from there.
        self.pushed = pushed or []
        #: Names and digested references that came with another manifest of the same image
        #: (other layer compression, Docker's media types or OCI's) than ``manifest``: for
        #: each, ``{"manifest": digest, "layer_blobs": [...]}``, kept as ``manifest`` is, so
        #: a save or push by that name gives the digest it came with.
        self.name_manifests = name_manifests or {}

    @property
    def top_layer(self) -> str | None:
        return self.layers[-1] if self.layers else None

    def repositories(self) -> set[str]:
        """The repositories the image is named or pulled in (``docker.io/library/deb``)."""
        return {r for r in map(repository_of, (*self.names, *self.digests)) if r}

    def manifest_of(self, name: str) -> str | None:
        """The digest of the manifest kept for *name* (one of its names or digested references)."""
        kept = self.name_manifests.get(name)
        return str(kept["manifest"]) if kept else self.manifest

    def manifests_in(self, repository: str) -> set[str]:
        """The digests of the manifests kept for the image's names in *repository*."""
        found = {self.manifest_of(n) for n in (*self.names, *self.digests) if repository_of(n) == repository}
        return {m for m in found if m}

    def as_named(self, ref: reference.Reference) -> ImageRecord:
        """The record with the manifest (and its layer blobs) that *ref* came with: the one
        kept for that name, or for ``repo@digest`` the kept manifest of that digest."""
        kept = self.name_manifests.get(str(ref))
        if ref.digest is not None:
            kept = next((m for m in self.name_manifests.values() if m.get("manifest") == ref.digest), None)
        if not kept:
            return self
        view = ImageRecord.from_json(self.to_json(), self.id)
        view.manifest, view.layer_blobs = str(kept["manifest"]), list(kept["layer_blobs"])
        return view

    def blobs(self) -> list[str]:
        """The digests of every blob the record keeps: config, manifests, layer blobs."""
        out = [self.id]
        kept = [(m.get("manifest"), m.get("layer_blobs")) for m in self.name_manifests.values()]
        for manifest, layers in ((self.manifest, self.layer_blobs), *kept):
            if manifest:
                out.append(str(manifest))
            out += [str(d.get("digest", "")) for d in layers or ()]
        return out

    def matches(self, ref: reference.Reference) -> bool:
        """Whether *ref* names this image: a name it has, or a digest it has in that repository
        (pulled or pushed by it, or the manifest of a name it has there)."""
        return self.match_rank(ref) is not None

    def match_rank(self, ref: reference.Reference) -> int | None:
        """How closely *ref* names this image, 0 closest; None when it does not.

        0: a name it has, or the digested reference it was pulled by (what the
        user asked for); 1: where it was pushed as that manifest, the index a
        tag named when it was pulled (one index digest stands for an image per
        platform), or the manifest of a name that moved to another image; 2: the
        manifest kept for one of its names in that repository.
        """
        if ref.digest is None:
            return 0 if str(ref) in self.names else None
        digested = f"{ref.repository}@{ref.digest}"
        if digested in self.digests:
            return 0
        if digested in self.pushed:
            return 1
        return 2 if ref.digest in self.manifests_in(ref.repository) else None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, value: Any, where: str) -> ImageRecord:
        try:
            if not isinstance(value, dict):
                raise TypeError("not an object")
            record = cls(value["id"], list(value["names"]), list(value["layers"]), list(value["diff_ids"]),
                         created=str(value.get("created", "")), manifest=value.get("manifest"),
                         layer_blobs=value.get("layer_blobs"), platform=str(value.get("platform", "")),
                         digests=list(value.get("digests") or []), pushed=list(value.get("pushed") or []),
                         name_manifests=dict(value.get("name_manifests") or {}))
            for kept in record.name_manifests.values():
                if not isinstance(kept, dict) or not isinstance(kept.get("manifest"), str) \
                        or not isinstance(kept.get("layer_blobs"), list):
                    raise TypeError("name_manifests holds a manifest digest and layer blobs per name")
            strings = (record.id, *record.names, *record.layers, *record.diff_ids, *record.digests,
                       *record.pushed)
            if not all(isinstance(x, str) for x in strings):
                raise TypeError("id, names, digests, pushed, layers and diff_ids hold strings")
            reference.check_digest(record.id)
            return record
        except (KeyError, TypeError, InvalidArgument) as e:
            raise IntegrityError(f"image record {where}", f"malformed: {e}") from e


def _closest(images: list[ImageRecord], ref: reference.Reference, name: str,
             platform: Callable[[], str]) -> ImageRecord | None:
    """The image *ref* (given as *name*) names most closely (see :meth:`ImageStore.lookup`), ties
    going to the image of the store's *platform* (asked only then); None if none."""
    ranked = [(rank, r) for r in images if (rank := r.match_rank(ref)) is not None]
    if not ranked:
        return None
    best = min(rank for rank, _ in ranked)
    candidates = [r for rank, r in ranked if rank == best]
    return candidates[0] if len(candidates) == 1 else _of_platform(candidates, name, platform())


def _of_platform(candidates: list[ImageRecord], name: str, wanted: str) -> ImageRecord:
    """The one of *candidates* (images one name reaches equally) whose platform suits *wanted*
    (the store's) best, as a pull chooses from an index; :class:`Precondition` when none or
    several do."""
    from graphdriver.images.oci import Descriptor
    from graphdriver.images.sources import select_platform

    def platform(record: ImageRecord) -> dict[str, str]:
        parts = record.platform.split("/")
        return dict(zip(("os", "architecture", "variant"), parts, strict=False))

    descs = [Descriptor("", r.id, 0, platform=platform(r)) for r in candidates]
    by_id = {r.id: r for r in candidates}
    try:
        chosen: ImageRecord | None = by_id[select_platform(descs, wanted, f"image {shorten(name)!r}").digest]
    except NotFound:
        chosen = None
    if chosen is not None and [r.platform for r in candidates].count(chosen.platform) == 1:
        return chosen
    listed = ", ".join(f"{r.id} ({r.platform or 'no platform'})" for r in candidates)
    raise Precondition(f"image {shorten(name)!r}", f"ambiguous: it names {len(candidates)} images, "
                       f"{'none' if chosen is None else 'more than one'} for this store's platform "
                       f"({wanted}): {listed}; name one by its id")


def _unknown(name: str, bad: dict[str, GraphDriverError]) -> GraphDriverError:
    """No image *name* among the readable records: not found, unless a record is unreadable,
    since it may hold *name*: :class:`Unsupported` (exit 7) naming it where this user may not
    read it, else :class:`IntegrityError` (exit 6)."""
    if not bad:
        return NotFound(f"image {shorten(name)!r}", "no such image")
    refused: list[GraphDriverError] = [e for e in bad.values() if isinstance(e, Unsupported)]
    first = (refused or list(bad.values()))[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    kind = Unsupported if refused else IntegrityError
    return kind(f"image {shorten(name)!r}", f"unknown while a record is unreadable: {first}{more}")


def _remember_manifest(record: ImageRecord, name: str, manifest: str) -> None:
    """Keep ``repo@manifest`` for *record*, which loses *name* (of that repository and kept
    manifest), unless another of its names there keeps that manifest reachable."""
    repository = repository_of(name)
    if not repository or manifest in record.manifests_in(repository):
        return
    where = f"{repository}@{manifest}"
    if where not in record.pushed:
        record.pushed.append(where)
    if name in record.name_manifests:  # another manifest than the record's own: kept under its digest
        record.name_manifests[where] = record.name_manifests[name]


def _take_name(record: ImageRecord, name: str) -> None:
    """Take *name* off *record*, which loses it to another image: it stays reachable by the
    manifest kept for it there (see :meth:`ImageStore.put_named`)."""
    kept = record.manifest_of(name)
    record.names.remove(name)
    if kept:
        _remember_manifest(record, name, kept)


def repository_of(name: str) -> str:
    """The repository of *name*; ``""`` for a name no longer valid (written by hand, or by an
    older version), which names none."""
    try:
        return reference.parse(name).repository
    except InvalidArgument:
        return ""


class ImageStore:
    """The image records and blobs of the layer store at *root*."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, IMAGES_DIR)
        self.records_dir = os.path.join(self.dir, "records")
        self.blobs_dir = os.path.join(self.dir, "blobs", "sha256")
        self.pending_dir = os.path.join(self.dir, "pending")

    # ----- records ---------------------------------------------------------------------

    def _path(self, image_id: str) -> str:
        return os.path.join(self.records_dir, hex_of(image_id) + ".json")

    def all(self) -> list[ImageRecord]:
        """Every image with a sound record, by name then id."""
        return self.scan()[0]

    def scan(self) -> tuple[list[ImageRecord], list[GraphDriverError]]:
        """:meth:`all`, and what is wrong with each record that cannot be read:
        :class:`IntegrityError` for a corrupt one, :class:`Unsupported` for one this user may
        not read (its image is unknown, not damaged).

        One unreadable record never takes the others down: it is reported, and
        the images of the sound records work as before.
        """
        out, bad = self._scan()
        return out, list(bad.values())

    def _scan(self, *, as_moved: bool = True) -> tuple[list[ImageRecord], dict[str, GraphDriverError]]:
        """:meth:`scan`, each unreadable record's error under the hex of the id its file is named by;
        with names a move under way (or killed) gave another image taken off the others, unless
        not *as_moved* (the records as they are on disk)."""
        try:
            names = sorted(n for n in os.listdir(self.records_dir) if n.endswith(".json"))
        except FileNotFoundError:
            return [], {}
        except PermissionError as e:
            raise Unsupported(f"image records of store {self.root}",
                              f"this user may not list them ({e.strerror})") from e
        out = []
        bad: dict[str, GraphDriverError] = {}
        for name in names:
            try:
                out.append(self._read(os.path.join(self.records_dir, name), name))
            except FileNotFoundError:
                continue  # removed while listed
            except (IntegrityError, Unsupported) as e:
                bad[name.removesuffix(".json")] = e
        if as_moved:
            self._as_moved(out, self._move())
        out.sort(key=lambda r: (r.names[0] if r.names else r.digests[0] if r.digests else "\uffff", r.id))
        return out, bad

    @staticmethod
    def _read(path: str, name: str) -> ImageRecord:
        try:
            value = atomic.read_json(path)
        except ValueError as e:
            raise IntegrityError(f"image record {name}", f"unreadable: {e}") from e
        except PermissionError as e:  # a missing privilege (exit 7), never corruption
            raise Unsupported(f"image record {name}", f"it cannot be read by this user ({e.strerror})") from e
        return ImageRecord.from_json(value, name)

    def get(self, image_id: str) -> ImageRecord:
        """The image whose id is *image_id* (``sha256:`` and 64 hex digits): by its record, never by name."""
        record = self._get(image_id)
        move = self._move()
        if move is not None and move[0] != record.id and set(move[1]) & set(record.names):
            try:
                self._as_moved([record, self._get(move[0])], move)
            except GraphDriverError:
                pass  # the image they go to is gone (or unreadable): none moved to it
        return record

    def _get(self, image_id: str) -> ImageRecord:
        """:meth:`get`, the record as it is on disk."""
        reference.check_digest(image_id)
        try:
            return self._read(self._path(image_id), hex_of(image_id) + ".json")
        except FileNotFoundError as e:
            raise NotFound(f"image {image_id}", "no such image") from e

    def put(self, record: ImageRecord) -> None:
        """Write *record* (under the store lock, as every change of a record), a move of names
        a killed process left half done finished first."""
        self.finish_move()
        self._write(record)

    def _write(self, record: ImageRecord) -> None:
        os.makedirs(self.records_dir, 0o700, exist_ok=True)
        record.names = sorted(set(record.names))
        record.digests = sorted(set(record.digests))
        record.pushed = sorted(set(record.pushed))
        # A name the image does not have any more keeps no manifest of its own (where a
        # registry holds it by a manifest that is not its own keeps that one).
        named = {*record.names, *record.digests, *record.pushed}
        record.name_manifests = {n: m for n, m in sorted(record.name_manifests.items())
                                 if n in named and m.get("manifest") != record.manifest}
        atomic.write_json(self._path(record.id), record.to_json())

    def delete(self, image_id: str) -> None:
        """Remove the record of *image_id* (under the store lock), as :meth:`put` writes one."""
        self.finish_move()
        atomic.remove_file(self._path(image_id))

    # ----- names moving between images -------------------------------------------------

    @property
    def _move_path(self) -> str:
        return os.path.join(self.pending_dir, MOVE_FILE)

    def put_named(self, record: ImageRecord, names: list[str]) -> None:
        """Write *record*, which takes *names* (among its names, in full) from the other images
        that have them (under the store lock).

        Each image losing a name stays reachable by the manifest kept for it
        there (``repo@sha256:...``, in its RepoDigests), as Docker keeps the
        digested reference of an image whose tag moved; it is kept as where a
        registry holds the image (:attr:`ImageRecord.pushed`), which names no
        image to list or to keep from ``prune``.

        Killed at any point, every name still has one image: the move's marker
        is written first, then *record*, then each image losing a name, then the
        marker goes.  Until *record* is written, no image lost a name; once it
        is, readers take the names as *record*'s (:meth:`scan`, :meth:`get`), and
        the next change of a record or ``cleanup`` finishes the move.
        """
        self.finish_move()
        os.makedirs(self.pending_dir, 0o700, exist_ok=True)
        atomic.write_json(self._move_path, {"image": record.id, "names": sorted(set(names))})
        self._write(record)
        self._take_names(record.id, names)
        atomic.remove_file(self._move_path)

    def finish_move(self) -> str | None:
        """Finish the move of names a killed process left (under the store lock, so that no
        move is under way): the names leave the other images if the image they go to has
        them, else none had moved.  What was done, or None when no move was left."""
        move = self._move()
        if move is None:
            if not os.path.lexists(self._move_path):
                return None
            atomic.remove_file(self._move_path)
            return f"removed the unreadable marker {MOVE_FILE} of an interrupted move of names"
        image_id, names = move
        try:
            record = self._get(image_id)
        except GraphDriverError:
            record = None
        moved = sorted(set(names) & set(record.names)) if record is not None else []
        if moved:
            self._take_names(image_id, moved)
        atomic.remove_file(self._move_path)
        if not moved:
            return (f"an interrupted move of {', '.join(names)} to image {image_id} had not begun: "
                    "nothing had moved")
        return f"finished an interrupted move of {', '.join(moved)} to image {image_id}"

    def _move(self) -> tuple[str, list[str]] | None:
        """The move of names under way or left by a killed process: the id of the image they
        go to and the names; None when there is none (or its marker cannot be read)."""
        try:
            value = atomic.read_json(self._move_path)
        except (OSError, ValueError):
            return None
        if not isinstance(value, dict) or not isinstance(value.get("image"), str) \
                or not isinstance(value.get("names"), list) \
                or not all(isinstance(n, str) for n in value["names"]):
            return None
        return value["image"], value["names"]

    def _take_names(self, image_id: str, names: list[str]) -> None:
        """Write each image but *image_id* that has one of *names* without it."""
        for other in self._scan(as_moved=False)[0]:
            taken = [n for n in other.names if n in names]
            if other.id != image_id and taken:
                for name in taken:
                    _take_name(other, name)
                self._write(other)

    def _as_moved(self, records: list[ImageRecord], move: tuple[str, list[str]] | None) -> None:
        """Take off *records* (read from disk) the names *move* (:meth:`_move`: one under way,
        or one a killed process left) gave to one of them."""
        target = next((r for r in records if move is not None and r.id == move[0]), None)
        if move is None or target is None:
            return
        for name in set(move[1]) & set(target.names):
            for other in records:
                if other is not target and name in other.names:
                    _take_name(other, name)

    def _platform(self) -> str:
        """The platform of the store's images: this machine's, ``windows/ARCH`` on ``windowsfilter``."""
        from graphdriver.images.sources import store_platform
        from graphdriver.store.layers import read_settings

        settings = read_settings(self.root, f"store {self.root}") or {}
        return store_platform(settings.get("driver", ""))

    def resolve(self, name: str) -> ImageRecord:
        """The image *name* names: a reference, a digest reference, or an id (or a unique prefix of one)."""
        return self.lookup(name)[0]

    def lookup(self, name: str) -> tuple[ImageRecord, bool]:
        """:meth:`resolve`, and whether *name* matched as a name (else as an id).

        Names are tried first, as Docker does: ``cafe`` is the image named
        ``cafe:latest`` before it is an id starting with ``cafe``.  A name
        with a digest (``repo@sha256:...``) names the image of that manifest
        in that repository only.  ``sha256:<hex>`` is always an id (or a
        prefix of one), never a name.

        A digest reference may reach several images: one index digest stands
        for an image per platform.  The closest match wins (see
        :meth:`ImageRecord.match_rank`): the image pulled by that very
        reference before one whose tag pull went through that index.  Among
        equally close ones, the image of the store's platform wins (this
        machine's; ``windows/ARCH`` on ``windowsfilter``), as a pull of that
        reference would choose it; when none is, the name is
        refused as ambiguous (:class:`Precondition`, exit 5) naming each.

        A name no readable record holds while a record cannot be read is an
        :class:`IntegrityError` (exit 6) naming that record: the name may be
        the unreadable record's, so "no such image" would be a guess.  A name
        a readable record holds is answered (so is a unique id prefix of a
        readable record's id that is no unreadable record's too).
        """
        if name.startswith("sha256:"):
            return self._by_id_prefix(name), False
        images, bad = self._scan()
        ref = None
        try:
            ref = reference.parse(name)
        except InvalidArgument:
            pass
        if ref is not None:
            found = _closest(images, ref, name, self._platform)
            if found is not None:
                return found, True
        if len(name) >= 4 and set(name) <= _HEX:
            return self._by_id_prefix(name, images, bad), False
        if ref is None:
            reference.parse(name)  # raises: neither a name nor an id
        raise _unknown(name, bad)

    def _by_id_prefix(self, name: str, images: list[ImageRecord] | None = None,
                      bad: dict[str, GraphDriverError] | None = None) -> ImageRecord:
        """The image whose id *name* is, or starts with (at least 4 hex digits, ``sha256:`` optional).

        *images* and *bad* are :meth:`_scan`'s, when the caller has them.  An
        unreadable record whose id (its file's name) starts so is a match too: alone,
        it is named (:class:`IntegrityError`).  No match at all for a bare prefix
        (no ``sha256:``, so possibly a name an unreadable record holds) is
        :class:`IntegrityError` too while a record is unreadable.
        """
        text = name.removeprefix("sha256:")
        if len(text) < 4 or not set(text) <= _HEX or len(text) > 64:
            raise InvalidArgument(f"image {shorten(name)!r}",
                                  "an image id is sha256: and hex digits (at least 4 of them)")
        if len(text) == 64:
            return self.get("sha256:" + text)
        if images is None or bad is None:
            images, bad = self._scan()
        found = [r for r in images if hex_of(r.id).startswith(text)]
        unreadable = {k: e for k, e in bad.items() if k.startswith(text)}
        if len(found) + len(unreadable) > 1:
            raise InvalidArgument(f"image {shorten(name)!r}", "ambiguous: several image ids start so")
        if unreadable:
            raise _unknown(name, unreadable)
        if not found:
            raise _unknown(name, {} if name.startswith("sha256:") else bad)
        return found[0]

    # ----- blobs -----------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, hex_of(digest))

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def put_blob(self, data: bytes) -> str:
        """Keep *data*; returns its digest."""
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            os.makedirs(self.blobs_dir, 0o700, exist_ok=True)
            atomic.write_bytes(self.blob_path(digest), data)
        return digest

    def checked_blob(self, digest: str) -> str:
        """The path of kept blob *digest*, once its bytes are found to hash to it: a blob
        damaged on disk is never handed on (saved, pushed, given back) as if it were sound."""
        path = self.blob_path(digest)
        try:
            found = file_digest(path)
        except FileNotFoundError as e:
            raise IntegrityError(f"blob {digest}", "missing from the image store") from e
        if found != digest:
            raise IntegrityError(f"blob {digest}", f"its bytes do not match its digest (they are {found})")
        return path

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise IntegrityError(f"blob {digest}", "missing from the image store") from e
        if sha256_digest(data) != digest:
            raise IntegrityError(f"blob {digest}", "its bytes do not match its digest")
        return data

    def referenced_blobs(self) -> set[str] | None:
        """Hex digests of every blob some record names; None while a record is unreadable
        (the blobs it names are unknown, so none may be judged unreferenced)."""
        records, bad = self.scan()
        if bad:
            return None
        keep: set[str] = set()
        for r in records:
            keep.update(hex_of(d) for d in r.blobs())
        return keep

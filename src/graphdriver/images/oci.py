"""The OCI image format's facts: media types, descriptors, chain ids, configs and manifests.

Docker's schema 2 and the OCI image spec describe the same things with other
media types; both are read, OCI is written where we make a manifest.
"""

from __future__ import annotations

from graphdriver.errors import IntegrityError, InvalidArgument, Unsupported, shorten
from graphdriver.images.reference import check_digest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDIST_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
#: Layers a registry need not hold: clients fetch them from their descriptor's ``urls``.
FOREIGN_LAYERS = frozenset({DOCKER_FOREIGN_LAYER, OCI_NONDIST_LAYER_GZIP,
                            "application/vnd.oci.image.layer.nondistributable.v1.tar",
                            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"})

MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
#: Docker's schema 1 manifests (signed, and not): a format of their own, not read here.
DOCKER_SCHEMA1 = frozenset({"application/vnd.docker.distribution.manifest.v1+prettyjws",
                            "application/vnd.docker.distribution.manifest.v1+json"})
INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
#: Where an OCI layout or index names an image's name.
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def sha256_digest(data: bytes) -> str:
    import hashlib  # (OpenSSL: loaded by what hashes, not by what lists)

    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str) -> str:
    """``sha256:<hex>`` of the file at *path*, read in chunks."""
    import hashlib

    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


class HashingWriter:
    """Writes to *out*, hashing (sha256) and counting what goes through."""

    def __init__(self, out: Any) -> None:
        import hashlib

        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        return int(self.out.write(data))

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain id of each layer: its own DiffID for the first, then sha256 of ``parent + " " + diffid``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


#: Docker's media types and the OCI ones for the same things (what ``skopeo copy`` to an OCI layout writes).
_TO_OCI = {DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_CONFIG: OCI_CONFIG, DOCKER_LAYER: OCI_LAYER,
           DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_FOREIGN_LAYER: OCI_NONDIST_LAYER_GZIP}


def as_oci_manifest(manifest: bytes) -> bytes:
    """*manifest*, a Docker image manifest given OCI media types (the blobs stay the same); an
    OCI manifest as it is.  An OCI layout holds OCI manifests: tools that read one by a
    tag's name (skopeo, buildah) find no other."""
    value = load_json(manifest, "manifest")
    if value.get("mediaType") != DOCKER_MANIFEST:
        return manifest
    import json

    value["mediaType"] = OCI_MANIFEST
    value["config"] = as_oci_descriptor(value.get("config"))
    value["layers"] = [as_oci_descriptor(d) for d in value.get("layers") or []]
    # In the order of the OCI spec's Go types, as skopeo writes the same conversion, so
    # that both give the same bytes (and manifest digest).
    value = _ordered(value, _MANIFEST_ORDER)
    value["config"] = _ordered(value.get("config"), _DESCRIPTOR_ORDER)
    value["layers"] = [_ordered(d, _DESCRIPTOR_ORDER) for d in value.get("layers") or []]
    return json.dumps(value, separators=(",", ":")).encode()


def as_oci_descriptor(desc: Any) -> Any:
    """A descriptor (a JSON object) of a Docker media type with the OCI one for the same bytes
    (a copy; its digest, size and the rest stay); any other as it is.  An OCI manifest names
    OCI media types only, as ``skopeo copy --format oci`` writes it."""
    if not isinstance(desc, dict) or desc.get("mediaType") not in _TO_OCI:
        return desc
    return {**desc, "mediaType": _TO_OCI[desc["mediaType"]]}


_MANIFEST_ORDER = ("schemaVersion", "mediaType", "config", "layers", "annotations")
_DESCRIPTOR_ORDER = ("mediaType", "digest", "size", "urls", "annotations", "platform")


def _ordered(value: Any, order: tuple[str, ...]) -> Any:
    """*value* (a JSON object) with the keys of *order* first, in that order, then the rest."""
    if not isinstance(value, dict):
        return value
    first = {k: value[k] for k in order if k in value}
    return {**first, **{k: v for k, v in value.items() if k not in first}}


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or :class:`IntegrityError` naming *what*."""
    from graphdriver import jsonio

    try:
        value = jsonio.loads(data)
    except ValueError as e:
        raise IntegrityError(what, f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise IntegrityError(what, "not a JSON object")
    return value


class Descriptor:
    """A content descriptor: media type, digest, size (and a platform, annotations, urls)."""

    __slots__ = ("annotations", "digest", "media_type", "platform", "size", "urls")

    def __init__(self, media_type: str, digest: str, size: int, *, platform: dict[str, Any] | None = None,
                 annotations: dict[str, str] | None = None, urls: list[str] | None = None) -> None:
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.platform = platform
        self.annotations = annotations or {}
        self.urls = urls or []

    @classmethod
    def parse(cls, value: Any, what: str) -> Descriptor:
        if not isinstance(value, dict):
            raise IntegrityError(what, "a descriptor is not a JSON object")
        digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType", "")
        if not isinstance(digest, str) or not isinstance(media_type, str) or not isinstance(size, int) \
                or size < 0:
            raise IntegrityError(what, "a descriptor needs a digest, a size and a media type")
        try:
            check_digest(digest)
        except InvalidArgument as e:
            raise IntegrityError(what, str(e)) from e
        platform = value.get("platform")
        annotations = value.get("annotations")
        urls = value.get("urls")
        return cls(media_type, digest, size,
                   platform=platform if isinstance(platform, dict) else None,
                   annotations={k: v for k, v in annotations.items() if isinstance(v, str)}
                   if isinstance(annotations, dict) else None,
                   urls=[u for u in urls if isinstance(u, str)] if isinstance(urls, list) else None)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            value["urls"] = self.urls
        if self.platform:
            value["platform"] = self.platform
        if self.annotations:
            value["annotations"] = self.annotations
        return value


def diff_ids_of(config: dict[str, Any], what: str) -> list[str]:
    """``rootfs.diff_ids`` of an image config, checked.  Keys are matched as Docker's Go
    decoder matches them: exactly, else regardless of case (``rootfS``)."""
    rootfs = _key(config, "rootfs")
    ids = _key(rootfs, "diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IntegrityError(what, "the image config has no rootfs.diff_ids")
    for i in ids:
        try:
            check_digest(i)
        except InvalidArgument as e:
            raise IntegrityError(what, str(e)) from e
    return list(ids)


def checked_config(config: dict[str, Any], what: str) -> list[str]:
    """An image config's ``rootfs.diff_ids`` (:func:`diff_ids_of`), once the fields read from it
    are found of their types, as Go's decoder (Docker's, skopeo's) reads them: ``created`` (and
    each history entry's) an RFC 3339 date-time, ``architecture``, ``os`` and ``variant``
    strings, ``rootfs.type`` ``layers``, ``history`` a list of objects, ``config`` an object.
    A field left out (or null) is not checked; a wrong one is a corrupt image
    (:class:`IntegrityError`)."""
    _check_fields(config, "", (("created", "an RFC 3339 date-time"), ("architecture", "a string"),
                               ("os", "a string"), ("variant", "a string"), ("config", "an object"),
                               ("history", "a list of objects")), what)
    for i, entry in enumerate(_key(config, "history") or []):
        _check_fields(entry, f"history[{i}].", (("created", "an RFC 3339 date-time"),), what)
    diff_ids = diff_ids_of(config, what)
    kind = _key(_key(config, "rootfs"), "type")
    if kind != "layers":
        raise IntegrityError(what, f'the image config\'s rootfs.type is not "layers": {_shown(kind)}')
    return diff_ids


def _check_fields(value: dict[str, Any], prefix: str, fields: tuple[tuple[str, str], ...], what: str) -> None:
    """:func:`checked_config`'s check of the *fields* of *value* (a part of the config named by
    *prefix*): each ``(name, what it must be)``."""
    for name, wanted in fields:
        field = _key(value, name)
        if field is None:
            continue
        if not _FIELD_KINDS[wanted](field):
            raise IntegrityError(what, f"the image config's {prefix}{name} is not {wanted}: {_shown(field)}")


#: What a config field must be (as :func:`checked_config` words it), and the check of it.
_FIELD_KINDS: dict[str, Callable[[Any], bool]] = {
    "an RFC 3339 date-time": lambda v: isinstance(v, str) and is_rfc3339(v),
    "a string": lambda v: isinstance(v, str),
    "an object": lambda v: isinstance(v, dict),
    "a list of objects": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}


def _shown(value: Any) -> str:
    """A config field's value as JSON, cut short, for a message."""
    import json

    return shorten(json.dumps(value), 80)


#: RFC 3339's date-time: full-date "T" full-time, "T" and "Z" in either case.
_RFC3339 = (r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.\d+)?"
            r"(?:[Zz]|[+-](\d\d):(\d\d))")


def is_rfc3339(text: str) -> bool:
    """Whether *text* is an RFC 3339 date-time (``2006-01-02T15:04:05.999Z``, ``...+07:00``):
    its grammar, and a day of its month, an hour, minute and second of a day (60: a leap
    second), an offset of less than a day."""
    import calendar
    import re

    m = re.fullmatch(_RFC3339, text, re.ASCII)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(x) for x in m.groups()[:6])
    off_hour, off_minute = (int(x or 0) for x in m.groups()[6:])
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    return hour <= 23 and minute <= 59 and second <= 60 and off_hour <= 23 and off_minute <= 59


def _key(value: dict[str, Any], name: str) -> Any:
    """*value*'s field *name*: exactly, else the first whose name differs only in case."""
    if name in value:
        return value[name]
    return next((v for k, v in value.items() if isinstance(k, str) and k.lower() == name), None)


def schema1_refused(what: str) -> Unsupported:
    """The error for a Docker schema 1 image *what*: a format this project does not read (exit 7),
    not a corrupt one."""
    return Unsupported(what, "is a Docker schema 1 image, and schema 1 images are not supported "
                             "(skopeo copy --format v2s2 gives it a schema 2 manifest)")


def manifest_parts(manifest: dict[str, Any], what: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config descriptor and layer descriptors of an image manifest (Unsupported for an
    artifact's: a config of another media type than an image config's)."""
    if manifest.get("schemaVersion") == 1 or manifest.get("mediaType") in DOCKER_SCHEMA1:
        raise schema1_refused(what)
    if manifest.get("schemaVersion") != 2:
        raise IntegrityError(what, "not a schema 2 image manifest")
    config = Descriptor.parse(manifest.get("config"), what)
    if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG, ""):
        # An artifact (a Helm chart, a signature...) stored as an image is no image to run.
        why = f"is not a container image (its config is a {shorten(config.media_type, 80)})"
        raise Unsupported(what, why)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise IntegrityError(what, "the manifest has no layers list")
    return config, [Descriptor.parse(x, what) for x in layers]


def platform_of(config: dict[str, Any]) -> str:
    """``os/arch`` (``/variant``) of an image config."""
    text = f"{config.get('os', '')}/{config.get('architecture', '')}"
    if config.get("variant"):
        text += f"/{config['variant']}"
    return text

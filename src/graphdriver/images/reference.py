"""Image names as Docker resolves them.

``deb:2`` is ``docker.io/library/deb:2``; a bare name means ``:latest``; the
first component is a registry when it has a ``.`` or a ``:`` or is
``localhost`` (``localhost/deb:2``, ``registry.example:5000/team/app``); a
digest (``name@sha256:...``) names one manifest.  Names are lower case, as the
distribution spec's grammar wants them.
"""

from __future__ import annotations

from graphdriver.errors import InvalidArgument, shorten
from graphdriver.plain import Plain

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"  # what Docker reads as docker.io
#: The longest repository name (registry and path), as Docker's grammar allows.
MAX_NAME = 255
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
#: Letters and digits blanked out, leaving the separators of a path component.
_BLANK_ALNUM = str.maketrans(dict.fromkeys("abcdefghijklmnopqrstuvwxyz0123456789", " "))
_DIGITS = frozenset("0123456789")
_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_IPV6_CHARS = frozenset("0123456789ABCDEFabcdef:.")
_TAG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HEX = frozenset("0123456789abcdef")


class Reference(Plain):
    """A parsed, normalised image name: registry, repository path, tag and/or digest."""

    __slots__ = ("digest", "domain", "path", "tag")

    def __init__(self, domain: str, path: str, tag: str | None, digest: str | None) -> None:
        self.domain = domain
        self.path = path
        self.tag = tag
        self.digest = digest

    @property
    def repository(self) -> str:
        """``docker.io/library/deb``: the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse(name: str, *, default_tag: bool = True) -> Reference:
    """The normalised reference of *name*; :class:`InvalidArgument` if it is not one.

    *default_tag*: a name with neither tag nor digest gets ``:latest``.
    Sixty-four hex digits are an image id, never a name (as in Docker).
    """
    if len(name) == 64 and set(name) <= _HEX:
        raise InvalidArgument(f"image name {shorten(name)!r}", "64 hex digits are an image id, not a name")
    rest, digest = name, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        check_digest(digest, name)
    first, slash, remainder = rest.partition("/")
    # As Docker splits a name: the first component is a registry if it has a "." or a ":",
    # is "localhost", or has an upper-case letter (a repository never does).
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first, remainder
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    tag = None
    last = path.rpartition("/")[2]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not tag or len(tag) > 128 or not set(tag) <= _TAG_CHARS or tag[0] in ".-":
            raise InvalidArgument(f"image name {shorten(name)!r}", f"invalid tag {shorten(tag)!r}")
    if domain == "docker.io" and "/" not in path:
        path = OFFICIAL_PREFIX + path
    _check_path(path, name)
    _check_domain(domain, name)
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise InvalidArgument(f"image name {shorten(name)!r}",
                              f"a repository name is at most {MAX_NAME} characters")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse_new(name: str) -> Reference:
    """The reference *name* to give an image (``image tag``, ``container commit``): a repository and a tag.

    A digest is what a manifest is, never a name given (a usage error, as
    Docker's); nor is a repository called ``sha256`` (``sha256:<hex>`` would be
    a tag that reads as an image id: Docker refuses it as ambiguous).
    """
    ref = parse(name)
    if ref.digest is not None:
        raise InvalidArgument(f"image name {shorten(name)!r}", "a digest names a manifest: give a tag")
    if is_ambiguous(ref):
        raise InvalidArgument(f"image name {shorten(name)!r}",
                              "refusing to create an ambiguous tag using digest algorithm as name")
    return ref


def is_ambiguous(ref: Reference) -> bool:
    """Whether *ref* is ``sha256:<hex>`` read as a name (``docker.io/library/sha256:<hex>``)."""
    return ref.domain == DEFAULT_DOMAIN and ref.path == OFFICIAL_PREFIX + "sha256"


def _check_path(path: str, name: str) -> None:
    if not path or not set(path) <= _PATH_CHARS:
        raise InvalidArgument(
            f"image name {shorten(name)!r}",
            "a repository is lower-case letters, digits and . _ - / (and a registry, a tag or a digest)",
        )
    for comp in path.split("/"):
        if not _component_ok(comp):
            raise InvalidArgument(f"image name {shorten(name)!r}", f"invalid path component {comp!r}")


def _component_ok(comp: str) -> bool:
    """Docker's grammar for a repository path component (of the characters a path may hold):
    alphanumerics joined by one ".", one "_", "__", or dashes (checked without ``re``: a
    listing that shows names pays nothing for it)."""
    if not comp or comp[0] in "._-" or comp[-1] in "._-":
        return False
    separators = comp.translate(_BLANK_ALNUM).split()
    return all(sep in (".", "_", "__") or sep == "-" * len(sep) for sep in separators)


def _check_domain(domain: str, name: str) -> None:
    if not _domain_ok(domain):
        raise InvalidArgument(f"image name {shorten(name)!r}", f"invalid registry name {shorten(domain)!r}")


def _domain_ok(domain: str) -> bool:
    """A host name (letters, digits, inner dashes, dot-separated), an IPv4 or a bracketed
    IPv6 address, and maybe a port, as Docker's grammar has it (checked without ``re``)."""
    if domain.startswith("["):
        end = domain.find("]")
        host_ok = end > 1 and set(domain[1:end]) <= _IPV6_CHARS
        port = domain[end + 1 :] if end > 0 else ""
    else:
        host, colon, number = domain.partition(":")
        port = colon + number
        host_ok = all(label and set(label) <= _LABEL_CHARS and label[0] != "-" and label[-1] != "-"
                      for label in host.split("."))
    return host_ok and (not port or (port[0] == ":" and len(port) > 1 and set(port[1:]) <= _DIGITS))


def check_digest(digest: str, what: str = "") -> str:
    """*digest* if it is ``sha256:`` and 64 lower-case hex digits; InvalidArgument otherwise."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise InvalidArgument(f"digest {shorten(digest)!r}" + (f" in {shorten(what)!r}" if what else ""),
                              "must be sha256: and 64 lower-case hex digits")
    return digest

"""Images to load, read from a docker-archive, an OCI layout or an oci-archive.

* **docker-archive** (``docker save``, ``skopeo copy ... docker-archive:``): a
  tarball (or a folder) with ``manifest.json``, a list of ``{"Config",
  "RepoTags", "Layers"}``; the paths name the config and each layer's tarball
  (plain or compressed) inside the archive.
* **OCI image layout** (a folder with ``oci-layout`` and ``index.json``, blobs
  under ``blobs/sha256/``) and **oci-archive** (the same in a tarball): the
  index names manifests (or nested indexes, of which the platform asked for is
  taken: an entry of it, else an entry without a platform); a manifest's name is
  its ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name`` annotation.

Every blob read is checked against its digest where one is named; nothing
is trusted to be what the archive says it is.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from typing import Any, BinaryIO

from graphdriver.errors import GraphDriverError, IntegrityError, InvalidArgument, NotFound, os_error, shorten
from graphdriver.images import oci, reference
from graphdriver.images.oci import Descriptor
from graphdriver.plain import Plain


class SourceLayer(Plain):
    """One layer blob of an image to load: how to open it, and what it should be."""

    __slots__ = ("descriptor", "open")

    def __init__(self, open: Callable[[], BinaryIO] | None, descriptor: Descriptor | None) -> None:
        #: None: the blob is not at hand (a layer the store already has, not downloaded).
        self.open = open
        #: The manifest's descriptor (digest, size, media type); None in a docker-archive.
        self.descriptor = descriptor


class SourceImage(Plain):
    """One image of an archive or layout: config bytes, names, layers, and the manifest if any."""

    __slots__ = ("config", "digests", "layers", "manifest", "names")

    def __init__(self, config: bytes, names: list[str], layers: list[SourceLayer],
                 manifest: bytes | None = None, digests: list[str] | None = None) -> None:
        self.config = config
        self.names = names
        self.layers = layers
        #: The manifest's exact bytes (OCI layouts, registries); None in a docker-archive.
        self.manifest = manifest
        #: Digested references (``host/repo@sha256:...``) the image was asked for by (a pull by digest).
        self.digests = digests or []


# ----- where the files are: a folder or a tarball ---------------------------------------------

#: The SOURCE that means standard input.
STDIN = "-"


class _Files:
    """Read access to the files of a folder or of a (seekable, uncompressed) tarball."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir = path if path != STDIN and os.path.isdir(path) else None
        self.members: dict[str, tarfile.TarInfo] = {}
        self.tar: tarfile.TarFile | None = None
        #: The copy of a stream or of a compressed archive: a file with no name (``O_TMPFILE``, or
        #: unlinked at once), so that nothing is left behind whatever ends this process.
        self.temporary: BinaryIO | None = None
        #: Whether the tarball ends with its end-of-archive block (a folder: True).
        self.ended = True
        if self.dir is None:
            try:
                opened = self._decompressed(path)
                if opened is None:
                    self.tar = tarfile.open(path, "r:")  # closed by close()
                else:
                    self.tar = tarfile.open(fileobj=opened, mode="r:")
                for m in self.tar.getmembers():
                    self.members[_clean(m.name)] = m
                self.ended = _check_ended(self.tar)
            except PermissionError as e:  # nothing wrong with it: this user may not read it
                self.close()
                raise os_error(f"image archive {shorten(path)!r}", e) from e
            except InvalidArgument:  # no archive to read at all (standard input closed)
                self.close()
                raise
            except (tarfile.TarError, OSError, EOFError, GraphDriverError) as e:
                self.close()
                why = f"not a readable tar archive: {e}"
                raise IntegrityError(f"image archive {shorten(path)!r}", why) from e
            except BaseException:
                self.close()
                raise

    def _decompressed(self, path: str) -> BinaryIO | None:
        """None where *path* is a plain tarball file, else a copy of it, decompressed where it is
        compressed (``docker save | gzip``) or read once where it is a stream (``-``, a pipe, a
        FIFO: a tarball is read out of order, and a FIFO opened again would wait for a writer
        that is gone)."""
        import contextlib
        import stat
        import sys

        from graphdriver.layerio.compression import Compression, open_decompressed

        if path == STDIN and sys.stdin is None:  # closed by the caller: nothing to read
            raise InvalidArgument("standard input", "is closed; name an archive or pipe one in")
        with contextlib.ExitStack() as stack:
            f = sys.stdin.buffer if path == STDIN else stack.enter_context(open(path, "rb"))
            stream, kind = open_decompressed(f)
            if kind is Compression.NONE and stat.S_ISREG(os.fstat(f.fileno()).st_mode) and path != STDIN:
                return None
            import tempfile

            self.temporary = out = tempfile.TemporaryFile(prefix="graphdriver-load-")
            _copy_archive(stream, out)
            out.seek(0)
        return out

    def exists(self, name: str) -> bool:
        name = _clean(name)
        if self.dir is not None:
            return os.path.isfile(self._local(name))
        return name in self.members

    def _local(self, name: str) -> str:
        assert self.dir is not None
        if name.startswith("../") or name == ".." or os.path.isabs(name):
            raise IntegrityError(f"image archive {shorten(self.path)!r}", f"{name!r} points outside it")
        return os.path.join(self.dir, name)

    def open(self, name: str) -> BinaryIO:
        name = _clean(name)
        if self.dir is not None:
            from graphdriver.fs.confine import open_file_in_root

            self._local(name)  # refuses names that climb out
            try:
                # Symlinks in the folder resolve inside it, never to the rest of the machine.
                return open_file_in_root(self.dir, name)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
                raise IntegrityError(f"image archive {shorten(self.path)!r}", f"{name!r} is missing") from e
        assert self.tar is not None
        member = self.members.get(name)
        for _ in range(8):  # docker save links duplicate layers to their first copy
            if member is None or not (member.issym() or member.islnk()):
                break
            link = member.linkname
            name = _clean(link if member.islnk() else os.path.join(os.path.dirname(name), link))
            member = self.members.get(name)
        if member is None:
            raise IntegrityError(f"image archive {shorten(self.path)!r}", f"{name!r} is missing")
        if not member.isfile():  # a link still (in a loop, or too long a chain), a directory, ...
            what = "a link that leads to no file" if member.issym() or member.islnk() else "not a file"
            raise IntegrityError(f"image archive {shorten(self.path)!r}", f"{name!r} is {what}")
        stream = self.tar.extractfile(member)
        assert stream is not None
        return stream  # type: ignore[return-value]

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise IntegrityError(f"image archive {shorten(self.path)!r}", f"{name!r} is too large")
        return data

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self.temporary is not None:
            self.temporary.close()
            self.temporary = None


class _Tee:
    """A reader of *source* that writes what it reads to *copy*."""

    def __init__(self, source: BinaryIO, copy: BinaryIO) -> None:
        self.source, self.copy = source, copy

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.copy.write(data)
        return data


def _copy_archive(stream: BinaryIO, out: BinaryIO) -> None:
    """Copy the tar archive *stream* into *out* up to its end-of-archive block, as ``docker load``
    reads it: what follows is never read (``/dev/zero`` is an empty archive, not a copy that
    fills the disk). Where the archive is cut short or a header is corrupt, the copy stops
    there and the reading of the copy says which."""
    walk = _Tee(stream, out)
    try:
        with tarfile.open(fileobj=walk, mode="r|", bufsize=1 << 20) as tar:  # type: ignore[call-overload]
            for _ in tar:  # each step reads past the entry before it
                pass
    except (tarfile.TarError, EOFError):
        pass


def _check_ended(tar: tarfile.TarFile) -> bool:
    """Whether the archive *tar* has read to its end ends at a zero block (True) or at the very
    end of the file after an entry (False; Go's ``archive/tar`` takes that for the end too);
    ReadError if it ends otherwise. Python's reader takes a header cut short, or one that is
    not a header, for the end, and would quietly drop the entries after it (``manifest.json``
    comes last in skopeo's and buildah's archives)."""
    f = tar.fileobj
    assert f is not None
    f.seek(tar.offset)
    block = f.read(tarfile.BLOCKSIZE)
    if block and block != bytes(tarfile.BLOCKSIZE):
        raise tarfile.ReadError("truncated" if len(block) < tarfile.BLOCKSIZE else "a corrupt header")
    return bool(block)


def _strings(value: object) -> bool:
    """Whether *value* is a JSON list of strings."""
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _clean(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


# ----- reading -----------------------------------------------------------------------------------


class Archive:
    """The images of the archive or layout at *path*; ``with Archive(path) as a: a.images()``."""

    def __init__(self, path: str, platform: str | None = None, *, default: str | None = None) -> None:
        """*platform* is the one asked for (an image of another is refused); *default* the one
        taken from an index when none is asked for (this machine's when None)."""
        parse_platform(platform)  # a usage error before anything is read
        try:
            if path != STDIN:
                os.stat(path)
        except FileNotFoundError as e:
            raise NotFound(f"image archive {shorten(path)!r}", "no such file or directory") from e
        except OSError as e:  # a folder this user may not search, say
            raise os_error(f"image archive {shorten(path)!r}", e) from e
        self.files = _Files(path)
        self.platform = platform
        self.default = default

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.files.close()

    @property
    def format(self) -> str:
        if self.files.exists("oci-layout"):
            return "oci" if self.files.dir is not None else "oci-archive"
        if self.files.exists("manifest.json"):
            return "docker-archive"
        if not self.files.ended:  # cut at an entry's end: more was to come
            raise IntegrityError(f"image archive {shorten(self.files.path)!r}",
                                 "not a readable tar archive: truncated (no end-of-archive block)")
        raise InvalidArgument(f"image archive {shorten(self.files.path)!r}",
                              "neither a docker-archive (manifest.json) nor an OCI layout (oci-layout)")

    def images(self) -> list[SourceImage]:
        if self.format == "docker-archive":
            return self._docker_images()
        return self._oci_images()

    def _docker_images(self) -> list[SourceImage]:
        what = f"image archive {shorten(self.files.path)!r}"
        from graphdriver import jsonio

        try:
            entries = jsonio.loads(self.files.read("manifest.json"))
        except ValueError as e:
            raise IntegrityError(what, f"manifest.json is not JSON: {e}") from e
        if not isinstance(entries, list) or not entries:
            raise IntegrityError(what, "manifest.json lists no image")
        out = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                    or not _strings(entry.get("Layers")):
                raise IntegrityError(what, "a manifest.json entry needs Config and Layers (a list of paths)")
            if entry.get("RepoTags") is not None and not _strings(entry["RepoTags"]):
                raise IntegrityError(what, "a manifest.json entry's RepoTags is not a list of names")
            config = self.files.read(entry["Config"])
            base = os.path.basename(entry["Config"]).removesuffix(".json")
            if len(base) == 64 and oci.sha256_digest(config) != "sha256:" + base:
                raise IntegrityError(what, f"config {entry['Config']!r} does not match its name")
            try:
                names = [str(reference.parse_new(t)) for t in entry.get("RepoTags") or []]
            except InvalidArgument as e:
                raise IntegrityError(what, f"manifest.json names an image badly: {e}") from e
            check_platform(config, self.platform, what)
            layers = [SourceLayer(self._opener(p), None) for p in entry["Layers"]]
            out.append(SourceImage(config, names, layers))
        return out

    def _opener(self, name: str) -> Callable[[], BinaryIO]:
        return lambda: self.files.open(name)

    def _blob(self, desc: Descriptor, limit: int = 64 << 20) -> bytes:
        data = self.files.read(f"blobs/sha256/{oci.hex_of(desc.digest)}", limit)
        if oci.sha256_digest(data) != desc.digest:
            raise IntegrityError(f"blob {desc.digest}", "its bytes do not match its digest")
        if len(data) != desc.size:
            raise IntegrityError(f"blob {desc.digest}", f"size {len(data)}, its descriptor says {desc.size}")
        return data

    def _oci_images(self) -> list[SourceImage]:
        what = f"image layout {shorten(self.files.path)!r}"
        index = oci.load_json(self.files.read("index.json"), f"{what}: index.json")
        out: list[SourceImage] = []
        for desc in _descriptors(index, f"{what}: index.json"):
            if desc.media_type not in oci.MANIFESTS | oci.INDEXES:
                continue  # an artifact or other kind: the image-index spec says to pass over it
            name = desc.annotations.get(oci.CONTAINERD_NAME) or desc.annotations.get(oci.REF_NAME)
            manifest_desc = self._select(desc, what)
            image = self._oci_image(manifest_desc, name, what)
            if manifest_desc is desc or not manifest_desc.platform:
                check_platform(image.config, self.platform, what)  # no index chose it by platform
            out.append(image)
        if not out:
            raise IntegrityError(what, "the index names no image")
        return out

    def _select(self, desc: Descriptor, what: str) -> Descriptor:
        """The image manifest *desc* stands for: itself, or from its index (and from an index
        that one names) the platform wanted's (see :func:`select_platform`)."""
        for _ in range(INDEX_DEPTH + 1):
            if desc.media_type in oci.MANIFESTS:
                return desc
            if desc.media_type not in oci.INDEXES:
                raise IntegrityError(what, f"unknown media type {desc.media_type!r}")
            nested = oci.load_json(self._blob(desc), f"{what}: index {desc.digest}")
            desc = select_platform(_descriptors(nested, what), self.platform or self.default, what)
        raise IntegrityError(what, f"indexes nested more than {INDEX_DEPTH} deep")

    def _oci_image(self, desc: Descriptor, name: str | None, what: str) -> SourceImage:
        manifest = self._blob(desc)
        config_desc, layer_descs = oci.manifest_parts(oci.load_json(manifest, f"{what}: manifest"), what)
        config = self._blob(config_desc)
        names = []
        # A bare tag ("latest", "1", as containerd writes ref.name) names no repository;
        # "deb:2" (buildah's oci-archive:deb.tar:deb:2) and "localhost/web:1" do.
        if name and any(c in name.split("@")[0] for c in "/:"):
            try:
                names.append(str(reference.parse_new(name)))
            except InvalidArgument:
                pass
        layers = [SourceLayer(self._opener(f"blobs/sha256/{oci.hex_of(d.digest)}"), d) for d in layer_descs]
        return SourceImage(config, names, layers, manifest)


#: How many indexes deep an index may name an image (an index naming an index is one).
INDEX_DEPTH = 4


def _descriptors(index: dict[str, Any], what: str) -> list[Descriptor]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise IntegrityError(what, "no manifests list")
    return [Descriptor.parse(m, what) for m in manifests]


def store_platform(driver_name: str) -> str:
    """The platform an index gives a store when none is asked for: this machine's, with
    ``windows`` for the system of a ``windowsfilter`` store."""
    host = host_platform()
    return "windows/" + host.partition("/")[2] if driver_name == "windowsfilter" else host


def host_platform() -> str:
    """``linux/amd64`` and so on, as Go names this machine."""
    machine = os.uname().machine
    arch, variant = _ARCH_ALIASES.get(machine, (machine, ""))
    return f"linux/{arch}/{variant}" if variant else f"linux/{arch}"


#: The variant an architecture means when none is named (as containerd's platform matcher).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}
_PLATFORM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def parse_platform(text: str | None) -> tuple[str, str, str] | None:
    """``os/arch[/variant]`` as ``(os, arch, variant)`` (variant ``""`` when not named); None for None.

    Anything else is :class:`InvalidArgument` (a usage error, exit 2).
    """
    if text is None:
        return None
    parts = text.lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(p and set(p) <= _PLATFORM_CHARS for p in parts):
        raise InvalidArgument(f"platform {shorten(text)!r}", "must be OS/ARCH[/VARIANT] (linux/arm64)")
    arch, variant = parts[1], parts[2] if len(parts) == 3 else ""
    arch, implied = _ARCH_ALIASES.get(arch, (arch, ""))
    variant = variant or implied
    if variant.isdigit():  # "arm/7" as "arm/v7", as containerd normalizes it
        variant = "v" + variant
    return parts[0], arch, variant


#: The names ``uname -m`` and Debian use for an architecture, as OCI names it (and the variant
#: the name implies), as containerd's platform normalizer maps them.
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "i386": ("386", ""), "i686": ("386", ""),
    "aarch64": ("arm64", ""), "armv7l": ("arm", "v7"), "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
}


def _variant(arch: str, variant: str) -> str:
    """*variant* as the matcher compares it: the default named, amd64's ``v1`` as none."""
    variant = variant or _DEFAULT_VARIANT.get(arch, "")
    return "" if arch == "amd64" and variant == "v1" else variant


def _accepted(arch: str, variant: str) -> list[str]:
    """The variants of *arch* a machine of *variant* runs, best first (as containerd's matcher):
    amd64/v3 also v2 and v1, arm/v7 also v6 and v5, arm64/v8.2 also v8.1 and v8, arm64/v9.1
    also v9 and v8.6 down to v8."""
    variant = _variant(arch, variant)
    major, _, minor = variant.removeprefix("v").partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        return [variant]
    n = int(major)
    if arch == "amd64":
        return [f"v{k}" for k in range(n, 1, -1)] + [""]
    if arch == "arm":
        return [f"v{k}" for k in range(n, 4, -1)] or [variant]
    if arch != "arm64" or n not in (8, 9):
        return [variant]
    m = int(minor or 0)
    out = [f"v{n}.{k}" if k else f"v{n}" for k in range(m, -1, -1)]
    if n == 9:  # v9.x runs what v8.(x+5) does
        out += [f"v8.{k}" if k else "v8" for k in range(m + 5, -1, -1)]
    return out


def _rank(have: dict[str, Any], want: tuple[str, str, str]) -> int | None:
    """How well an image of platform *have* suits *want* (0 best); None if it cannot run there.

    *want* without a variant takes any variant of its architecture, but where the architecture
    has a default (arm: v7, arm64: v8) the variants that default runs come first, best first,
    as containerd and skopeo read ``linux/arm``: an index's arm/v6 entry listed before its
    arm/v7 one is not taken for it.
    """
    os_name, arch, variant = want
    if str(have.get("os", "")) != os_name or str(have.get("architecture", "")) != arch:
        return None
    if not variant and arch not in _DEFAULT_VARIANT:
        return 0
    accepted = _accepted(arch, variant)
    got = _variant(arch, str(have.get("variant") or ""))
    if got in accepted:
        return accepted.index(got)
    return None if variant else len(accepted)  # asked for no variant: still an image of the arch


def _matches(have: dict[str, Any], want: tuple[str, str, str]) -> bool:
    return _rank(have, want) is not None


def _describe(have: dict[str, Any]) -> str:
    system, arch = have.get("os"), have.get("architecture")
    if not system and not arch:
        return "an entry without a platform"
    text = f"{shorten(str(system or '?'), 40)}/{shorten(str(arch or '?'), 40)}"
    return text + (f"/{shorten(str(have['variant']), 40)}" if have.get("variant") else "")


def _entry_rank(desc: Descriptor, want: tuple[str, str, str]) -> tuple[int, int] | None:
    """How well the index entry *desc* suits *want* (lowest best): an entry of the platform by
    :func:`_rank`, then an image or index that names no platform (containerd and skopeo take
    one when nothing better is there); None for an entry of another platform."""
    if not desc.platform:
        return (1, 0) if desc.media_type in oci.MANIFESTS | oci.INDEXES else None
    rank = _rank(desc.platform, want)
    return None if rank is None else (0, rank)


def select_platform(candidates: list[Descriptor], wanted: str | None, what: str) -> Descriptor:
    """The manifest of an index for *wanted* (``os/arch[/variant]``; default this machine's):
    the entry that suits it best, else the first that names no platform (whose config then
    says whether it is of *wanted*), the first of equals."""
    want = parse_platform(wanted or host_platform())
    assert want is not None
    ranks = [_entry_rank(d, want) for d in candidates]
    ranked = [(rank, i) for i, rank in enumerate(ranks) if rank is not None]
    if ranked:
        return candidates[min(ranked)[1]]
    found = ", ".join(_describe(d.platform or {}) for d in candidates)
    raise NotFound(what, f"no image for platform {'/'.join(p for p in want if p)} (it has {found or 'none'})")


def check_platform(config: bytes, wanted: str | None, what: str) -> None:
    """NotFound (exit 3) when the platform *wanted* was asked for and the image *config* is another."""
    want = parse_platform(wanted)
    if want is None:
        return
    value = oci.load_json(config, f"{what}: config")
    if not _matches(value, want):
        raise NotFound(what, f"no image for platform {'/'.join(p for p in want if p)} "
                             f"(it has {_describe(value)})")

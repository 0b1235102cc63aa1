"""The ``windowsfilter`` driver: Windows container layers, stored, viewed and re-exported on Linux.

Layout under the driver home, as the seeds keep it::

    <home>/<id>/Files/              the layer's part of the Windows volume
    <home>/<id>/Hives/              its registry deltas (``*_Delta``), as imported
    <home>/<id>/UtilityVM/Files/    its utility VM files, as imported
    <home>/<id>/layerchain.json     the ancestors' folders, nearest first (``null`` for a base)
    <home>/<id>/tree-made           a child's: empty, its ctime when ``Files/`` was made
    <home>/<id>/layerID             optional: the folder the layer really lives in
    <home>/<id>/bcd*.bak            the imported bytes of the utility VM's BCD files
    <home>/<id>/.winmeta/           what Linux files cannot hold (see :mod:`.winmeta`)
    <home>/<id>/.work/              overlay's work directory (writable layers only)
    <home>/<folder> -> <base image> a registered base image (see :meth:`base_images`)

A writable layer limited by ``--size`` through a loop-mounted image keeps
all of that but the chain file inside the image (``<home>/<id>/img/``, the
Linux form of the seeds' ``sandbox.vhdx``).

Applying.  A layer tarball is applied in one pass, confined to the layer
folder, no path ever followed through a symlink
(:class:`graphdriver.layerio.windows.apply.WindowsApplier`).  Deletions under ``Files/`` of a layer
with ancestors become overlay whiteouts (root only) where a lower layer
shows something at that path (a tombstone of a name no layer below has
leaves no device in the view), and are recorded in the sidecar in any case;
a directory made again after its tombstone becomes opaque.  Hard links to
files no layer holds (trimmed images have them) live on in the sidecar only.
The four BCD files of the utility VM are also copied to ``bcd.bak``,
``bcd.log.bak``, ``bcd.log1.bak`` and ``bcd.log2.bak`` as they are written:
Windows rewrites them in place when it prepares the utility VM, and the file
getter serves the copies so that an imported layer still re-exports byte for
byte.

Viewing.  ``get`` gives the union of the chain's ``Files/`` trees: an
overlay mount (read-only for image layers; upper directory ``Files/`` for
writable ones), a bind mount for a layer without ancestors; every one
``nosuid`` and ``nodev`` (:data:`VIEW_FLAGS`).  Without root
an image layer's view is a materialised copy under the run root (writable
layers need root).  Views live under ``<run root>/views/``.

Changes list what the layer's ``Files/`` changed, as ``/Files/...`` paths
(``Files`` itself, the volume's root, never), and compared with its own parent
every entry of its own ``Hives/`` and ``UtilityVM/`` too (``/Hives``,
``/Hives/System_Delta``, ``/UtilityVM/Files/...``), as the seeds' list names
the entries of the layer's export; the diff size counts the files of all of
them.  A tombstone is listed only where the layers below show what it deletes; a
hard link to a file no layer holds, which the layer's tarball carries, always is.
A diff that no tar-split data covers is written in the Windows format:
``Files/...`` entries with ``MSWINDOWS.fileattr``, a security descriptor,
creation, access and change times (to 100 ns) in PAX records, streams after
their files, and ``.wh.`` entries for deletions.  An entry some layer of the
chain recorded keeps its metadata (a file changed from Linux gains the
archive attribute); one a Linux process created gets the attributes Windows
would give it and the descriptor it would inherit from its directory (at the
top, :data:`graphdriver.layerio.windows.wintar.DEFAULT_ROOT_SD`).  A layer's own ``Hives/`` and ``UtilityVM/``
travel with it when the diff is against its own parent; a writable layer
has none, so they are untouched.

Driver options (``--opt KEY=VALUE``):

``base_images``
    A directory of base layer folders, each a ``Files/`` tree (optionally
    ``UtilityVM/``) described by an ``image.json`` (``{"name":
    "ServerCore", "version": "10.0.17763.1"}``), or listed in one
    ``images.json`` in the seeds' ``{"Images": [{"Name", "Version",
    "Path"}]}`` form.  :meth:`WindowsFilterDriver.base_images` registers them;
    a description that is not of that shape, or a field not of its JSON type
    (``Size`` a number, the others strings), is a usage error (exit 2).
``size``
    The size limit of sandboxes (writable layers) created without ``--size``
    (the seeds' ``--storage-opt size`` default), enforced as ``--size`` is;
    where it cannot be, creating a sandbox that would get it is refused.

``--size`` on writable layers uses the overlay driver's size limits
(:mod:`graphdriver.fs.sizelimit`) when they are available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import shutil
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from types import ModuleType
from typing import ClassVar

from graphdriver.drivers.base import (
    DELETE_WHITEOUTS,
    LAYERID_FILE,
    OVERLAY_WHITEOUTS,
    STAGING_DIR,
    WINDOWS_FORMAT,
    Driver,
    DriverConfig,
    alternate_name,
    layer_name_of,
    nearest_existing,
    probe_scratch,
    probed_once,
)
from graphdriver.drivers.values import ApplyTarget, BaseImages, Compared, Comparison, CreateOpts, Prepared
from graphdriver.errors import (
    AlreadyExists,
    GraphDriverError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
    os_error,
    read_refused,
    warn,
)
from graphdriver.fs import atomic, mounts, privileged
from graphdriver.fs.confine import open_no_symlinks
from graphdriver.fs.locking import claim
from graphdriver.fs.tree import remove_tree
from graphdriver.layerio.windows.layout import ENTRIES_FILE, FILES, META_DIR, has_path_prefix

_sizelimit: ModuleType | None
try:
    from graphdriver.fs import sizelimit as _sizelimit
except ImportError:  # pragma: no cover - an installation without size limits
    _sizelimit = None


WORK_DIR = ".work"
VIEWS_DIR = "views"
BASE_IMAGES_OPTION = "base_images"
#: Overlay options: the upper directory alone must say what a layer changed.
OVERLAY_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
#: The flags of every view: nothing in a Windows layer is for Linux to run as its owner
#: or to open as a device, so a setuid-root file or a device node a hostile layer
#: brings is inert on the host.
VIEW_FLAGS = ("nosuid", "nodev")


# ----- probing ------------------------------------------------------------------------------------


def probe_home(home: str, *, cached: bool = False) -> dict[str, str]:
    """Check that *home* can hold Windows layers; returns what was found (for ``status``).

    The sidecar needs nothing unusual, but stream files are named
    ``<file>:<stream>``, which FAT and NTFS homes refuse, and overlay's upper
    directories (writable layers, root only) cannot live on overlayfs.  With
    *cached*, a home that passed before in this process is not probed again.
    """
    return probed_once(("windowsfilter", os.path.abspath(home)), lambda: _probe(home), cached=cached)


def _probe(home: str) -> dict[str, str]:
    existing = nearest_existing(home)
    what = f"windowsfilter at {home}"
    info = mounts.filesystem_of(existing)
    found = {"Backing Filesystem": info.fstype if info else "unknown"}
    if privileged() and found["Backing Filesystem"] == "overlay":
        raise Unsupported(what, "the home is on overlayfs, which cannot hold the upper directories of "
                                "writable layers: put the store on ext4, xfs or btrfs")
    try:
        scratch, held = probe_scratch(existing, "windowsfilter")
    except OSError as e:
        raise Unsupported(what, f"cannot create directories in {existing} ({e.strerror})") from e
    try:
        with open(os.path.join(scratch, "file.txt:stream"), "wb") as f:
            f.write(b"x")
        root_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(open_no_symlinks(root_fd, "file.txt:stream", os.O_RDONLY))
        finally:
            os.close(root_fd)
    except OSError as e:
        why = (f"the filesystem at {existing} cannot hold file names with ':' "
               f"(alternate data streams are kept as <file>:<stream> files): {e.strerror}")
        raise Unsupported(what, why) from e
    finally:
        try:
            remove_tree(scratch)
        except OSError:
            pass
        os.close(held)
    found["Stream Files"] = "<file>:<stream> under .winmeta/streams"
    found["Union"] = "overlay" if privileged() else "materialised copies (read-only layers only)"
    return found


# ----- base images -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BaseImageInfo:
    """A base image found in the ``base_images`` directory (the seeds' ``CustomImageInfo``)."""

    id: str
    name: str
    version: str
    path: str
    size: int = 0
    created: str = ""
    #: ``major.minor.build`` (the revision does not influence compatibility); "" if unparsable.
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The JSON form, in the seeds' field names."""
        return {"ID": self.id, "Name": self.name, "Version": self.version, "Path": self.path,
                "Size": self.size, "CreatedTime": self.created, "OSVersion": self.os_version,
                "OSFeatures": list(self.os_features)}


def base_image_id(folder_name: str) -> str:
    """The layer id of a base image: hex of the first 32 bytes of SHA-384 of its folder name."""
    return hashlib.sha384(folder_name.encode("utf-8", "surrogateescape")).digest()[:32].hex()


def _field(desc: Mapping[str, object], key: str) -> object:
    for k, v in desc.items():
        if k.lower() == key:
            return v
    return None


#: The fields of a base image's description this driver reads (the seeds' spelling), and
#: the JSON type each must have where it is given.
_FIELD_TYPES: dict[str, type] = {"Name": str, "Version": str, "Path": str, "CreatedTime": str, "Size": int}


def _object(value: object, source: str, what: str) -> dict[str, object]:
    """*value* (from *source*) if it is a JSON object; InvalidArgument (exit 2) otherwise."""
    if not isinstance(value, dict):
        raise InvalidArgument(what, f"{source} is not a JSON object")
    return value


def _read(path: str, source: str, what: str) -> object:
    """The JSON value in *path* (named *source*); InvalidArgument (exit 2) if it is no JSON."""
    try:
        return atomic.read_json(path)
    except ValueError as e:  # not JSON, or not UTF-8
        raise InvalidArgument(what, f"{source} is not JSON ({e})") from e


def _checked(value: object, source: str, what: str) -> dict[str, object]:
    """*value* (from *source*) if it is a JSON object whose fields have their types;
    InvalidArgument (exit 2) naming the first that does not."""
    desc = _object(value, source, what)
    for key, kind in _FIELD_TYPES.items():
        value = _field(desc, key.lower())
        if value is None:
            continue
        if kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(what, f"{source}: its {key} is not a number of bytes")
        elif not isinstance(value, kind):
            raise InvalidArgument(what, f"{source}: its {key} is not a string")
    path = _field(desc, "path")
    if isinstance(path, str) and "\0" in path:
        raise InvalidArgument(what, f"{source}: its Path holds a NUL character")
    return desc


def _descriptions(directory: str) -> list[tuple[dict[str, object], str]]:
    """``(description, folder)`` of every base image in *directory*; InvalidArgument (exit 2)
    for a description that is no JSON, or not of the expected shape and types."""
    index = os.path.join(directory, "images.json")
    what = f"base images in {directory}"
    out: list[tuple[dict[str, object], str]] = []
    try:
        if os.path.exists(index):
            top = _object(_read(index, "images.json", what), "images.json", what)
            listed = _field(top, "images")
            if not isinstance(listed, list):
                raise InvalidArgument(what, "images.json has no Images list")
            for number, item in enumerate(listed, 1):
                desc = _checked(item, f"image {number} of images.json", what)
                path = _field(desc, "path")
                if not isinstance(path, str) or not path:
                    raise InvalidArgument(what, f"image {number} of images.json has no Path")
                out.append((desc, os.path.join(directory, path)))
            return out
        for name in sorted(os.listdir(directory)):
            desc_file = os.path.join(directory, name, "image.json")
            if os.path.isfile(desc_file):
                desc = _checked(_read(desc_file, desc_file, what), desc_file, what)
                path = _field(desc, "path")
                out.append((desc, os.path.join(directory, name, path if isinstance(path, str) else ".")))
    except OSError as e:
        raise os_error(what, e, InvalidArgument) from e
    except ValueError as e:
        raise InvalidArgument(what, str(e)) from e
    return out


def _base_image(desc: Mapping[str, object], folder: str) -> BaseImageInfo:
    folder = os.path.normpath(folder)
    name, version = str(_field(desc, "name") or ""), str(_field(desc, "version") or "")
    parts = version.split(".")
    os_version = ".".join(parts[:3]) if len(parts) == 4 else ""
    if not os_version:
        warn(f"could not parse the Windows version {version!r} of base image {folder}")
    created = _field(desc, "createdtime")
    if not isinstance(created, str):
        mtime = os.stat(folder).st_mtime
        created = datetime.datetime.fromtimestamp(mtime, datetime.UTC).isoformat().replace("+00:00", "Z")
    size = _field(desc, "size")
    return BaseImageInfo(
        id=base_image_id(os.path.basename(folder)),
        name=name,
        version=version,
        path=folder,
        size=size if isinstance(size, int) else 0,
        created=created,
        os_version=os_version,
        # All base images but NanoServer depend on win32k (as the seeds hard-code it).
        os_features=() if name == "NanoServer" else ("win32k",),
    )


# ----- the file getter ---------------------------------------------------------------------------------


# ----- the driver --------------------------------------------------------------------------------------


class WindowsFilterDriver(Driver, BaseImages):
    """Windows image and sandbox layers in the seeds' layout, on Linux."""

    name: ClassVar[str] = "windowsfilter"
    OPTIONS: ClassVar[frozenset[str]] = frozenset({BASE_IMAGES_OPTION})
    STATUS_IS_STATIC: ClassVar[bool] = False  # base images come and go
    FILES_AS_IN_TARBALL: ClassVar[bool] = False  # Files/, Hives/ and a metadata sidecar
    LAYER_FORMAT: ClassVar[str] = WINDOWS_FORMAT

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.privileged = privileged()
        base = config.options.get(BASE_IMAGES_OPTION)
        self.base_images_dir = os.path.abspath(base) if base else None
        self.size_method = _sizelimit.choose_method(self.home) if _sizelimit is not None else None
        self.probed = probe_home(self.home, cached=True)
        if config.prepare:
            os.makedirs(self._views_root, 0o700, exist_ok=True)

    def prepare(self) -> None:
        super().prepare()
        os.makedirs(self._views_root, 0o700, exist_ok=True)

    @classmethod
    def probe(cls, home: str) -> None:
        probe_home(home)

    def status(self) -> list[tuple[str, str]]:
        if _sizelimit is None:
            sizes = "unavailable (no size-limit support in this installation)"
        else:
            why = _sizelimit.unavailable_why()
            sizes = self.size_method.value if self.size_method else f"unavailable ({why})"
        return [
            ("Windows", "layers kept on Linux in the seeds' layout"),
            *self.probed.items(),
            ("Metadata", f"{META_DIR}/{ENTRIES_FILE} beside Files/ (attributes, "
                         "security descriptors, times, EAs, junctions)"),
            ("Size Limits", sizes),
            ("Base Images", self._base_images_status()),
            ("Home", self.home),
        ]

    def _base_images_status(self) -> str:
        if self.base_images_dir is None:
            return "none configured (--opt base_images=DIR)"
        try:
            with os.scandir(self.home) as it:
                registered = sum(1 for e in it if e.is_symlink())
        except FileNotFoundError:
            registered = 0  # a store that does not exist yet has registered none
        return f"{self.base_images_dir} ({registered} registered)"

    # ----- folders ------------------------------------------------------------------------------

    @property
    def _views_root(self) -> str:
        return os.path.join(self.run_root, VIEWS_DIR)

    def _data_dir(self, folder: str) -> str:
        """Where the Windows layout of the layer in *folder* is: the folder, or its size-limited image."""
        if _sizelimit is not None and os.path.exists(os.path.join(folder, _sizelimit.IMAGE_FILE)):
            _sizelimit.ensure_mounted(folder)
            return os.path.join(folder, _sizelimit.IMAGE_MOUNT)
        return folder

    def _files(self, folder: str) -> str:
        return os.path.join(self._data_dir(folder), FILES)

    def _existing_files(self, layer_id: str, folder: str) -> str:
        """:meth:`_files`, which must be there (the store tells a removed layer from a damaged one)."""
        path = self._files(folder)
        if not os.path.isdir(path):
            raise NotFound(f"layer {layer_id}", f"its files are missing (its {FILES} folder)")
        return path

    def _is_sandbox(self, folder: str) -> bool:
        return os.path.isdir(os.path.join(self._data_dir(folder), WORK_DIR))

    def _is_base_image(self, folder: str) -> bool:
        # Registered base images are linked into the home, never copied or written.
        return os.path.islink(folder)

    def _view_path(self, folder: str, *, destroying: bool = False) -> str:
        return os.path.join(self._views_root, layer_name_of(folder, destroying=destroying))

    def metadata(self, layer_id: str) -> dict[str, str]:
        folder = self.resolve(layer_id)
        meta = {"dir": folder, "Files": self._files(folder),
                "Kind": "sandbox" if self._is_sandbox(folder) else "image"}
        if self._is_base_image(folder):
            meta["BaseImage"] = os.path.realpath(folder)
        if _sizelimit is not None and (limit := _sizelimit.limit_of(folder)):
            meta["SizeLimit"] = str(limit.get("size"))
        return meta

    # ----- create and remove ----------------------------------------------------------------------

    def check_storage_opt(self, storage_opt: Mapping[str, str], *, rw: bool) -> None:
        if _sizelimit is None:
            if storage_opt:
                raise Unsupported("--size", "size limits are not available in this installation")
            return
        _sizelimit.check_storage_opt(storage_opt, rw=rw, method=lambda: self.size_method, driver=self.name)

    def _create(self, layer_id: str, folder: str, parent: str | None, opts: CreateOpts, *, rw: bool) -> None:
        where = folder
        size = opts.storage_opt.get("size")
        if size is not None and _sizelimit is not None and self.size_method is not None:
            where = _sizelimit.prepare(folder, int(size), self.size_method, self.home)
        files = os.path.join(where, FILES)
        os.mkdir(files)
        os.chmod(files, 0o755)  # mkdir's mode is masked by the umask
        if rw:
            os.mkdir(os.path.join(where, WORK_DIR), 0o700)

    def remove(self, layer_id: str) -> None:
        link = self._base_link(layer_id)
        super().remove(layer_id)
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)  # the registration only: the base image's files are never touched

    def _base_link(self, layer_id: str) -> str | None:
        """The link of the base image *layer_id* stands for, if it is a registered one."""
        own = self._folder(self.home, layer_id)
        if os.path.islink(own) or not os.path.isdir(own):
            return None
        # Read, not resolved: the images' folder may be gone, leaving the link dangling.
        found = alternate_name(own)
        if found is None or found[1] is None:
            return None
        link = os.path.join(self.home, found[1])
        return link if os.path.islink(link) else None

    def _destroy(self, folder: str) -> None:
        if os.path.islink(folder):
            os.unlink(folder)  # a base image's registration, never its files
            return
        view = self._view_path(folder, destroying=True)
        if os.path.isdir(view) and mounts.is_mount_point(view):
            mounts.unmount(view)
        if _sizelimit is not None:
            _sizelimit.release(folder)
        remove_tree(folder)

    # ----- get and put ------------------------------------------------------------------------------

    def _mount(self, layer_id: str, mount_label: str) -> str:
        folder = self.resolve(layer_id)
        self._existing_files(layer_id, folder)
        target = self._view_path(folder)
        if self.privileged and os.path.isdir(target) and mounts.is_mount_point(target):
            return target  # left by a process that died before counting it
        if not self.privileged:
            remove_tree(target)  # a copy left by a process that died before counting it
        os.makedirs(target, 0o700, exist_ok=True)
        try:
            if self.privileged:
                self._mount_union(layer_id, folder, target, mount_label)
            else:
                self._materialise(layer_id, folder, target)
        except (OSError, GraphDriverError) as e:
            # Undo the steps done so far, as the seeds unwind Activate and Prepare.
            with contextlib.suppress(OSError):
                if not self.privileged:
                    remove_tree(target)
                os.rmdir(target)
            if isinstance(e, GraphDriverError):
                raise
            raise GraphDriverError(f"mounting layer {layer_id}", e.strerror or str(e)) from e
        return target

    def _mount_union(self, layer_id: str, folder: str, target: str, mount_label: str) -> None:
        own = self._files(folder)
        lowers = tuple(self._files(c) for c in self.layer_chain(layer_id))
        label = (f"context={mount_label}",) if mount_label else ()
        options = (*OVERLAY_OPTIONS, *VIEW_FLAGS, *label)
        if self._is_sandbox(folder):
            if not lowers:
                mounts.bind_mount(own, target, options=VIEW_FLAGS)
                return
            work = os.path.join(self._data_dir(folder), WORK_DIR)
            mounts.mount_overlay(mounts.OverlayMount(lowers, own, work, options), target)
        elif not lowers:
            mounts.bind_mount(own, target, readonly=True, options=VIEW_FLAGS)
        else:
            mounts.mount_overlay(mounts.OverlayMount((own, *lowers), options=options, readonly=True), target)

    def writable_view(self, layer_id: str) -> bool:
        # Image layers are viewed through read-only mounts, or (without root) through a
        # copy that is thrown away on unmount; only sandboxes are written.
        return self._is_sandbox(self.resolve(layer_id))

    def _materialise(self, layer_id: str, folder: str, target: str) -> None:
        """Without root: copy the chain's ``Files/`` into *target*, bottom up, tombstones applied.

        A file or folder of the chain this user may not read is :class:`ReadRefused`, named by
        the layer and its path in the layer's folder (a lower layer's, as the view shows it)."""
        if self._is_sandbox(folder):
            raise Unsupported(f"mounting layer {layer_id}", "writable Windows layers need root (overlay)")
        datas = [self._data_dir(layer) for layer in [*reversed(self.layer_chain(layer_id)), folder]]
        try:
            for data in datas:
                self._materialise_one(data, target)
        except OSError as e:
            refused = read_refused(e, [(data, layer_id) for data in datas])
            if refused is None:
                raise
            raise refused from e

    @staticmethod
    def _materialise_one(data: str, target: str) -> None:
        """Lay the ``Files/`` of the layer folder *data* over *target*, its tombstones first."""
        from graphdriver.layerio.windows.winmeta import LayerMeta  # the sidecar's tombstones

        for path in sorted(LayerMeta.load(data).tombstones):
            if has_path_prefix(path, FILES) and path != FILES:
                victim = os.path.join(target, path[len(FILES) + 1 :])
                if os.path.isdir(victim) and not os.path.islink(victim):
                    remove_tree(victim)
                elif os.path.lexists(victim):
                    os.unlink(victim)
        _copy_over(os.path.join(data, FILES), target)

    def _unmount(self, layer_id: str) -> None:
        target = self._view_path(self.resolve(layer_id))
        try:
            if os.path.isdir(target) and mounts.is_mount_point(target):
                mounts.unmount(target)
            elif not self.privileged:
                remove_tree(target)
        except OSError as e:
            raise GraphDriverError(f"unmounting layer {layer_id}", e.strerror or str(e)) from e
        with contextlib.suppress(OSError):
            os.rmdir(target)

    def _kernel_mounts(self) -> bool:
        return self.privileged  # unprivileged views are copies

    def _still_mounted(self, layer_id: str, path: str) -> bool:
        if not os.path.isdir(path):
            return False
        return mounts.is_mount_point(path) if self.privileged else True

    def _cleanup_mounts(self) -> list[str]:
        done = super()._cleanup_mounts()
        for name in sorted(os.listdir(self._views_root)):
            path = os.path.join(self._views_root, name)
            key = self._count_key(name)
            with self.counts.lock(key):
                if self.counts.count(key) > 0:
                    continue
                if mounts.is_mount_point(path):
                    done.append(f"{mounts.unmount(path)} uncounted view of {name}")
                if self.privileged:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
                else:
                    try:
                        remove_tree(path)
                    except OSError:
                        pass
        return done

    def cleanup(self, layers: Collection[str] | None = None) -> list[str]:
        done = super().cleanup(layers)
        for line in done:
            if line.startswith("could not remove"):
                warn(f"{line} (cleanup will try again)")
        return done

    # ----- apply and compare: directories for the store -----------------------------------------------

    def apply_target(self, layer_id: str) -> ApplyTarget:
        folder = self.resolve(layer_id)
        chain = self.layer_chain(layer_id)
        # With root and ancestors, deletions may become overlay whiteouts: the applier
        # makes one only where the chain's union shows something at that path to hide.
        # The metadata sidecar records them in any case.
        devices = self.privileged and bool(chain)
        return ApplyTarget(
            path=self._data_dir(folder),
            whiteouts=OVERLAY_WHITEOUTS if devices else DELETE_WHITEOUTS,
            lower_dirs=tuple(self._data_dir(c) for c in chain),
        )

    def check_apply(self, layer_id: str) -> None:
        super().check_apply(layer_id)
        if self._is_base_image(self.resolve(layer_id)):
            raise Precondition(f"layer {layer_id}", "is a base image, which is never written")
        if self.mount_count(layer_id) > 0:
            raise Precondition(f"layer {layer_id}", "is mounted: unmount it before applying to it")

    def after_apply(self, layer_id: str) -> None:
        # The seeds write the chain on apply too: a layer applied to is fully described.
        self.write_layer_chain(self.resolve(layer_id), self.layer_chain(layer_id))

    def compare(
        self, layer_id: str, parent: str | None, *, native: bool = True
    ) -> AbstractContextManager[Comparison]:
        """The layer's own ``Files/`` over its ancestors' when it is compared with its own
        parent (or a base layer with nothing); otherwise the two views, mounted."""
        folder = self.resolve(layer_id)
        self._existing_files(layer_id, folder)
        chain = self.layer_chain(layer_id)
        datas = (self._data_dir(folder), *(self._data_dir(c) for c in chain))
        if native and self._native(chain, parent):
            lowers = tuple(os.path.join(d, FILES) for d in datas[1:])
            return Prepared(Comparison(os.path.join(datas[0], FILES), lowers=lowers, data_dirs=datas))
        return Compared(self, layer_id, parent, data_dirs=datas)

    def _native(self, chain: list[str], parent: str | None) -> bool:
        """Whether the layer's own ``Files/`` says what it changed relative to *parent*."""
        if parent is None:
            return not chain
        return bool(chain) and os.path.realpath(chain[0]) == os.path.realpath(self.resolve(parent))

    # ----- base images ---------------------------------------------------------------------------------

    def base_images(self) -> list[BaseImageInfo]:
        """Register the base images of the ``base_images`` directory; returns them (idempotent).

        Each becomes a read-only layer whose id is :func:`base_image_id` of its
        folder name, holding only a ``layerID`` file that names the folder,
        which is linked into the home (the folder itself is never written).
        """
        if self.base_images_dir is None:
            return []
        images = [_base_image(desc, folder) for desc, folder in _descriptions(self.base_images_dir)]
        for info in images:
            self._register_base(info)
        return images

    def _register_base(self, info: BaseImageInfo) -> None:
        folder_name = os.path.basename(info.path)
        what = f"base image {info.path}"
        if not os.path.isdir(os.path.join(info.path, FILES)):
            raise InvalidArgument(what, "has no Files/ folder")
        if folder_name.startswith(".") or len(folder_name) > 255:
            raise InvalidArgument(what, "its folder name cannot name a layer folder")
        link = os.path.join(self.home, folder_name)
        target = os.path.realpath(info.path)
        if os.path.islink(link):
            if os.readlink(link) != target:
                tmp = f"{link}.{os.getpid()}.tmp"
                os.symlink(target, tmp)
                os.replace(tmp, link)  # the images moved: follow them
        elif os.path.lexists(link):
            raise AlreadyExists(what, f"{link} is a layer folder, not a base image")
        else:
            os.symlink(target, link)
        own = os.path.join(self.home, info.id)
        if os.path.isdir(own):
            with contextlib.suppress(FileNotFoundError), open(os.path.join(own, LAYERID_FILE)) as f:
                if f.read().strip() == folder_name:
                    return
            raise AlreadyExists(f"layer {info.id}", f"exists and is not base image {folder_name}")
        staging = os.path.join(self.home, STAGING_DIR, f"{info.id}-{os.getpid()}")
        held = claim(staging, folder=True, mode=0o700)  # see Driver._create_checked
        try:
            layer_id_file = os.path.join(staging, LAYERID_FILE)
            atomic.write_bytes(layer_id_file, folder_name.encode(), 0o600, durable=False)
            self.write_layer_chain(staging, [])
            os.rename(staging, own)
        except BaseException:
            try:
                remove_tree(staging)
            except OSError:
                pass
            raise
        finally:
            os.close(held)


def _copy_over(src: str, dst: str) -> None:
    """Copy the tree *src* over the folder *dst*, as ``shutil.copytree(src, dst, symlinks=True,
    dirs_exist_ok=True)`` does, stopping at the first failure: an ``OSError`` naming its path
    (copytree gathers failures into one error that keeps neither errno nor file name).
    Overlay whiteouts, which a layer applied as root holds beside its sidecar's tombstones
    (applied already), are left out: a Windows layer holds no device."""
    from graphdriver.fs.overlayfs import is_whiteout
    from graphdriver.fs.tree import walk_tree

    folders = [""]
    for rel, entry in walk_tree(src):
        there = os.path.join(dst, rel)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), there)
            shutil.copystat(entry.path, there, follow_symlinks=False)
        elif entry.is_dir(follow_symlinks=False):
            os.makedirs(there, exist_ok=True)
            folders.append(rel)
        elif not is_whiteout(entry.stat(follow_symlinks=False)):
            shutil.copy2(entry.path, there)
    for rel in reversed(folders):  # a folder's times once what is in it is written
        shutil.copystat(os.path.join(src, rel) if rel else src, os.path.join(dst, rel) if rel else dst)

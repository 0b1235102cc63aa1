"""The graph driver contract.

A driver keeps layers as directories under its *home* and hands out their
root filesystems.  It knows nothing of tar, digests, records or images: it hands
back directories (where a tarball is applied, which trees say what a layer
changed) and the store combines them with :mod:`graphdriver.layerio`
(see :mod:`graphdriver.store.content`).

Vocabulary
----------
layer
    A directory of files named by a caller-chosen id (validated by
    :func:`graphdriver.ids.check_id` before any driver sees it).
read-only layer
    An image layer (the seeds' ``Create``): filled once through :meth:`Driver.apply_target`
    and then only read.
read-write layer
    A container layer (the seeds' ``CreateReadWrite``, a "sandbox"): written
    through the path :meth:`Driver.get` returns.
parent
    The layer directly below; ``None`` for a base layer.
chain
    A layer's ancestors, nearest first.  Recorded in the layer's own folder as
    ``layerchain.json``: a JSON list of the ancestors' folder paths, ``null``
    for a base layer (the seeds' format).
alternate id
    A layer folder may hold a ``layerID`` file naming another folder of the same
    home where the layer really lives (the seeds' ``resolveID``; their writer
    spells it ``layerId``, both are read).
get / put
    ``get`` makes the union of a layer's chain available at a path and returns
    the path; ``put`` releases it.  Both are counted across processes: only the
    first ``get`` mounts and only the last ``put`` unmounts.
additional stores
    Other drivers' homes (e.g. on a shared network filesystem) whose layers are
    listed, read, mounted and used as parents, but never written.

Lifecycle, by example
---------------------
::

    d.create("base", None)               # empty read-only layer
    d.apply_target("base").path          # where the store extracts its tarball
    d.create_rw("ctr", "base")           # writable layer on top
    root = d.get("ctr")                  # the union view; write into it
    d.put("ctr")
    with d.compare("ctr", "base") as c:  # the trees that say what ctr changed
        ...                              # c.root, and c.parent_root or c.lowers
    d.remove("ctr"); d.remove("base")

Invariants
----------
* A layer folder that exists under its final name is whole: creation is staged
  in a ``.staging`` folder and renamed in.
* A layer with a parent holds an empty ``tree-made`` file made once its tree was
  made on the parent's, before anything was applied or written into it: files
  changed later have a ctime no older than its (:meth:`Driver.written_since`).
* ``remove`` renames the folder to ``.removing-<id>`` before destroying it, so a
  crash leaves either the layer or a ``.removing-`` leftover that ``cleanup``
  finishes.  Ids never start with a dot, so no layer can have such a name (the
  ``<id>-removing`` of older stores could: ``work-removing`` is a valid id, and
  such a folder is finished only when the caller says no record names it).
* A layer is never removed while it is mounted (``Precondition``); the store also
  refuses while it has children.
* Every step of ``get`` is undone if a later one fails; a failed ``get`` leaves
  the count where it was.
* Nothing outside the layer's own folder (and the run root's mount state) is
  written by any operation, whatever the tarball holds.
"""

from __future__ import annotations

import abc
import errno
import os

from graphdriver import jsonio
from graphdriver.errors import (
    REFUSED,
    AlreadyExists,
    GraphDriverError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
)
from graphdriver.fs import atomic

# The option classes below are plain classes, and typing is imported for the
# checker only: ``mount`` and ``status`` load this module, and dataclasses or
# typing at import would cost more than the rest of those commands.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping
    from contextlib import AbstractContextManager
    from typing import ClassVar

    from graphdriver.drivers.refcount import MountCounts, RunRoots
    from graphdriver.drivers.values import ApplyTarget, Comparison, CreateOpts, Mounted
    from graphdriver.idmap import IDMappings

LAYERCHAIN_FILE = "layerchain.json"
#: Empty, in the folder of a layer with a parent: its ctime is when the layer's tree was made
#: on its parent's (see :meth:`Driver.written_since`).
TREE_MADE_FILE = "tree-made"
LAYERID_FILE = "layerID"
LAYERID_FILE_ALT = "layerId"
#: A folder being removed: this prefix and the layer's folder name (no id starts with a dot).
REMOVING_PREFIX = ".removing-"
#: What older stores appended instead; such folders may be real layers (``work-removing``).
LEGACY_REMOVING_SUFFIX = "-removing"
STAGING_DIR = ".staging"
#: The run root's folder of mount counts (see :mod:`graphdriver.drivers.refcount`).
MOUNTS_DIR = "mounts"
#: In the name of a probe's scratch folder: ``.<driver>-probe-<pid>-<random>``.
PROBE_MARK = "-probe-"
#: Driver options every driver takes: ``size``, the default size limit of writable layers
#: (containers-storage's ``overlay.size``), enforced where the driver limits sizes.
COMMON_OPTIONS: frozenset[str] = frozenset({"size"})


class DriverConfig:
    """What a driver is initialised with (the seeds' ``InitFilter(home, options, uidMaps, gidMaps)``)."""

    __slots__ = ("_idmaps", "home", "options", "prepare", "probed", "readonly_homes", "run_root")

    def __init__(
        self,
        home: str,
        run_root: str,
        options: Mapping[str, str] | None = None,
        idmaps: IDMappings | None = None,
        readonly_homes: tuple[str, ...] = (),
        probed: bool = False,
        prepare: bool = True,
    ) -> None:
        self.home = home
        self.run_root = run_root
        self.options: Mapping[str, str] = dict(options or {})
        self._idmaps = idmaps
        #: Homes of this driver in additional read-only stores, searched after ``home``.
        self.readonly_homes = tuple(readonly_homes)
        #: The home passed this driver's probe since the run root was made (since boot):
        #: the driver need not probe it again.
        self.probed = probed
        #: Make the folders the driver works in at init; False for a store that does not
        #: exist yet (read-only commands leave no trace), whose owner calls
        #: :meth:`Driver.prepare` before storing the first layer.
        self.prepare = prepare

    @property
    def idmaps(self) -> IDMappings:
        """The store's id maps; the identity unless it was created with maps (made on first
        use: most commands never ask, and need not load the id-map module)."""
        if self._idmaps is None:
            from graphdriver.idmap import IDMappings

            self._idmaps = IDMappings()
        return self._idmaps


#: How deletions are expressed where a tarball is applied: the target holds a whole
#: tree, so a deletion deletes (vfs, a base layer)...
DELETE_WHITEOUTS = "delete"
#: ...or it is an overlay upper directory: 0/0 character devices and the opaque xattr.
OVERLAY_WHITEOUTS = "overlay"
#: Layer formats: Docker/OCI layer tarballs, or the seeds' Windows layers.
OCI_FORMAT = "oci"
WINDOWS_FORMAT = "windows"


class Driver(abc.ABC):
    """One graph driver.  Subclasses implement the ``_``-prefixed steps."""

    #: The name the driver is registered under.
    name: ClassVar[str]
    #: Driver options this driver accepts (``--opt KEY=VALUE``); others are refused.
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    #: Whether a layer's files sit under :meth:`apply_target` as its tarball names them
    #: (so ``check`` can compare their metadata with the tar headers).
    FILES_AS_IN_TARBALL: ClassVar[bool] = True
    #: Whether :meth:`status` says only what the probe found, so it holds until a reboot
    #: (and the registry may remember it in the run root).
    STATUS_IS_STATIC: ClassVar[bool] = True
    #: The format of the layer tarballs this driver's layers come from and go to.
    LAYER_FORMAT: ClassVar[str] = OCI_FORMAT
    #: Whether a child layer may have other id maps than its parent (the parent's
    #: files are then stored shifted into the child's range).
    SHIFTS_IDS: ClassVar[bool] = False
    #: Whether the driver never mounts anything (its views are its directories), so that
    #: it works as well in a user namespace of the user's own (see :meth:`Store.read_as_owner
    #: <graphdriver.store.layers.Store.read_as_owner>`).
    MOUNTS_NOTHING: ClassVar[bool] = False

    def __init__(self, config: DriverConfig) -> None:
        unknown = sorted(set(config.options) - self.OPTIONS - COMMON_OPTIONS)
        if unknown:
            known = ", ".join(sorted(self.OPTIONS | COMMON_OPTIONS))
            raise InvalidArgument(
                f"unknown option {unknown[0]!r} for driver {self.name}", f"known options: {known}"
            )
        #: The ``size`` option: the size limit of writable layers created without one.
        self.default_size = _default_size(config.options.get("size"))
        self.config = config
        self.home = config.home
        self.run_root = config.run_root
        self._counts: MountCounts | None = None
        self._run_roots: RunRoots | None = None
        self._run_dir = os.path.abspath(self.run_root)  # as the working folder is now
        #: This process's holds (see :meth:`mounted`), per count key, latest last.
        self._holds: dict[str, list[tuple[int, str]]] = {}
        #: The run root's folder of counts is known to be there (see :meth:`_make_counts`).
        self._counts_made = False
        if config.prepare:
            Driver.prepare(self)  # a subclass prepares its own part at the end of its __init__

    def prepare(self) -> None:
        """Make the folders the driver works in (its home, its run root's); idempotent."""
        os.makedirs(os.path.join(self.home, STAGING_DIR), 0o700, exist_ok=True)
        os.makedirs(os.path.join(self.run_root, MOUNTS_DIR), 0o700, exist_ok=True)

    # functools.cached_property would cost ``mount`` the import of functools.
    @property
    def counts(self) -> MountCounts:
        """Mount counts across processes, in the run root (loaded on first use: ``status``
        never asks)."""
        if self._counts is None:
            from graphdriver.drivers.refcount import MountCounts

            self._counts = MountCounts(os.path.join(self.run_root, MOUNTS_DIR))
        return self._counts

    @property
    def run_roots(self) -> RunRoots:
        """The other run roots this store is used with, asked before a layer is taken away."""
        if self._run_roots is None:
            from graphdriver.drivers.refcount import RunRoots

            self._run_roots = RunRoots(self.home, self._run_dir)
        return self._run_roots

    # ----- probing and status --------------------------------------------------

    @classmethod
    def probe(cls, home: str) -> None:
        """Raise :class:`~graphdriver.errors.Unsupported` if the driver cannot work at *home*."""
        return None

    def status(self) -> list[tuple[str, str]]:
        """``key: value`` pairs describing the driver (the seeds' ``Status``)."""
        return [("Home", self.home)]

    def __str__(self) -> str:
        return self.name

    # ----- layer folders --------------------------------------------------------

    def _folder(self, home: str, layer_id: str) -> str:
        return os.path.join(home, os.path.basename(layer_id))

    def resolve(self, layer_id: str) -> str:
        """The folder of *layer_id*, following an alternate-id file; NotFound if absent."""
        for home in (self.home, *self.config.readonly_homes):
            folder = self._folder(home, layer_id)
            if os.path.isdir(folder):
                found = self._alternate_name(layer_id, folder)
                if found is None:
                    return folder
                fname, alt = found
                if alt is None:
                    raise GraphDriverError(f"layer {layer_id}", f"invalid {fname} file")
                target = self._folder(home, alt)
                if not os.path.isdir(target):
                    raise NotFound(f"layer {layer_id}", f"{fname} names missing {alt}")
                return target
        raise NotFound(f"layer {layer_id}", "no such layer")

    @staticmethod
    def _alternate_name(layer_id: str, folder: str) -> tuple[str, str | None] | None:
        """:func:`alternate_name` of *layer_id*'s *folder*; a folder this user may not read (of
        another user's store) is a missing privilege named by the layer, never by where the
        store keeps it."""
        try:
            return alternate_name(folder)
        except OSError as e:
            if e.errno not in REFUSED:
                raise
            why = f"its folder cannot be read by this user ({e.strerror or e})"
            raise Unsupported(f"layer {layer_id}", why) from e

    def is_readonly_store(self, layer_id: str) -> bool:
        """True when *layer_id* lives in an additional (read-only) store."""
        return not os.path.isdir(self._folder(self.home, layer_id)) and self.exists(layer_id)

    def exists(self, layer_id: str) -> bool:
        try:
            self.resolve(layer_id)
        except NotFound:
            return False
        return True

    def layer_path(self, layer_id: str) -> str:
        """The layer's own folder (the seeds' ``GetLayerPath``)."""
        return self.resolve(layer_id)

    def metadata(self, layer_id: str) -> dict[str, str]:
        """Driver facts about a layer (the seeds' ``GetMetadata``): at least ``dir``."""
        return {"dir": self.resolve(layer_id)}

    def layer_chain(self, layer_id: str) -> list[str]:
        """The ancestors' folders, nearest first, as recorded in ``layerchain.json``."""
        path = os.path.join(self.resolve(layer_id), LAYERCHAIN_FILE)
        try:
            value = atomic.read_json(path)
        except FileNotFoundError:
            return []
        except OSError as e:  # named by its layer, never by where the store keeps it
            why = f"{LAYERCHAIN_FILE}: {e.strerror or e}"
            if e.errno in REFUSED:  # another user's store: a missing privilege, never damage
                raise Unsupported(f"layer {layer_id}", why) from e
            raise GraphDriverError(f"layer {layer_id}", f"unreadable {why}") from e
        except ValueError as e:
            raise GraphDriverError(f"layer {layer_id}", f"unreadable {LAYERCHAIN_FILE}: {e}") from e
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise GraphDriverError(f"layer {layer_id}", f"malformed {LAYERCHAIN_FILE}")
        return [self._here(p) for p in value]

    def _here(self, recorded: str) -> str:
        """An ancestor's folder as recorded, or the folder of that name in this home when the
        record names another home (the store was moved or copied since): never another
        store's layer.  A folder outside any home (a registered base image) stays as it is."""
        home = os.path.abspath(self.home)
        if os.path.dirname(recorded) == home:
            return recorded
        mine = os.path.join(home, os.path.basename(recorded))
        return mine if os.path.isdir(mine) else recorded

    @staticmethod
    def write_layer_chain(folder: str, chain: list[str]) -> None:
        """Record *chain* (ancestor folders, nearest first) in *folder*; ``null`` for none."""
        data = jsonio.dumps(chain or None).encode()
        atomic.write_bytes(os.path.join(folder, LAYERCHAIN_FILE), data, 0o600, durable=False)

    # ----- create and remove ----------------------------------------------------

    def create(self, layer_id: str, parent: str | None, opts: CreateOpts | None = None) -> None:
        """Create an empty read-only layer on top of *parent*."""
        from graphdriver.drivers.values import CreateOpts

        self._create_checked(layer_id, parent, opts or CreateOpts(), rw=False)

    def create_rw(self, layer_id: str, parent: str | None, opts: CreateOpts | None = None) -> None:
        """Create an empty writable (container) layer on top of *parent*.

        Without a ``size`` of its own it gets the driver option ``size`` (the
        default limit of writable layers, as containers-storage's
        ``overlay.size``); where that limit cannot be enforced the layer is
        refused (:class:`Unsupported`) rather than made without it.
        """
        from graphdriver.drivers.values import CreateOpts

        self._create_checked(layer_id, parent, self._writable_opts(opts or CreateOpts()), rw=True)

    def _writable_opts(self, opts: CreateOpts) -> CreateOpts:
        """*opts* of a writable layer with the default size limit where they give none,
        refused where this driver cannot enforce that limit."""
        from graphdriver.drivers.values import CreateOpts

        if self.default_size is None or "size" in opts.storage_opt:
            return opts
        opts = CreateOpts(opts.mount_label, {**opts.storage_opt, "size": str(self.default_size)},
                          opts.idmaps, opts.parent_idmaps)
        try:
            self.check_storage_opt(opts.storage_opt, rw=True)
        except (InvalidArgument, Unsupported) as e:
            raise type(e)(f"option size={self.config.options['size']}",
                          f"the default size limit of writable layers: {e.why or e}") from e
        return opts

    def check_create_opts(self, storage_opt: Mapping[str, str], *, rw: bool) -> None:
        """Refuse what :meth:`create` (or :meth:`create_rw`, *rw*) would refuse of
        *storage_opt*, before anything is made for the layer (or the store)."""
        from graphdriver.drivers.values import CreateOpts

        opts = CreateOpts(storage_opt=storage_opt)
        if rw:
            opts = self._writable_opts(opts)
        self.check_storage_opt(opts.storage_opt, rw=rw)

    def _create_checked(
        self, layer_id: str, parent: str | None, opts: CreateOpts, *, rw: bool
    ) -> None:
        final = self._folder(self.home, layer_id)
        if os.path.lexists(final) or self.exists(layer_id):
            raise AlreadyExists(f"layer {layer_id}", "already exists")
        self.check_storage_opt(opts.storage_opt, rw=rw)
        parent_folder = self.resolve(parent) if parent else None
        chain = [parent_folder, *self.layer_chain(parent)] if parent and parent_folder else []
        staging = os.path.join(self.home, STAGING_DIR, f"{layer_id}-{os.getpid()}")
        # Locked while it is made: cleanup drops a staging folder only once its maker is dead.
        from graphdriver.fs.locking import claim

        fd = claim(staging, folder=True, mode=0o700, remove=self._destroy)
        try:
            self._create(layer_id, staging, parent, opts, rw=rw)
            if parent is not None:
                # Right after the copy (if any) and before anything is extracted or written.
                atomic.write_bytes(os.path.join(staging, TREE_MADE_FILE), b"", 0o600, durable=False)
            self.write_layer_chain(staging, chain)
            os.rename(staging, final)
        except BaseException:
            self._destroy(staging)
            raise
        finally:
            os.close(fd)

    def check_storage_opt(self, storage_opt: Mapping[str, str], *, rw: bool) -> None:
        """Refuse storage options this driver does not support (the seeds refuse all).

        A size limit is a thing this driver cannot do here (:class:`Unsupported`,
        exit 7); any other option is a bad argument.
        """
        if "size" in storage_opt:
            raise Unsupported("--size", f"the {self.name} driver cannot limit a layer's size "
                                        "(the overlay driver can)")
        if storage_opt:
            key = sorted(storage_opt)[0]
            raise InvalidArgument(
                f"storage option {key!r}", f"not supported by the {self.name} driver"
            )

    def size_limit_status(self) -> str | None:
        """What the ``size`` driver option does here, for ``status`` (None: not given)."""
        if self.default_size is None:
            return None
        given = (f"{self.config.options['size']} ({self.default_size} bytes) "
                 "for writable layers without --size")
        try:
            self.check_storage_opt({"size": str(self.default_size)}, rw=True)
        except GraphDriverError as e:
            return f"{given}; cannot be enforced here, so creating one is refused: {e.why or e}"
        return given

    @abc.abstractmethod
    def _create(
        self, layer_id: str, folder: str, parent: str | None, opts: CreateOpts, *, rw: bool
    ) -> None:
        """Populate the staging *folder* of a new layer (the chain file is written after)."""

    def remove(self, layer_id: str) -> None:
        """Delete a layer: rename to ``.removing-<id>``, then destroy (the seeds' ``Remove``)."""
        folder = self._folder(self.home, layer_id)
        if not os.path.isdir(folder):
            if self.exists(layer_id):
                raise Precondition(f"layer {layer_id}", "belongs to a read-only store")
            raise NotFound(f"layer {layer_id}", "no such layer")
        removing = os.path.join(self.home, REMOVING_PREFIX + os.path.basename(folder))
        if os.path.lexists(removing):
            self._destroy(removing)
        key = self._count_key(layer_id)
        with self.counts.lock(key), self.run_roots.lock(key) as serialised:
            if self._live_state(layer_id, key)[0] > 0:
                raise Precondition(f"layer {layer_id}", "is mounted")
            elsewhere = self.run_roots.counted_elsewhere(key, self._gone_check(layer_id),
                                                         serialised=serialised)
            if elsewhere:
                raise Precondition(f"layer {layer_id}", f"is mounted, counted in run root {elsewhere[0]} "
                                   "(another --run-root): unmount it there")
            if self._uncounted_mount(layer_id):
                raise Precondition(f"layer {layer_id}", "is mounted, though not counted in this run root "
                                   f"(mounted with another --run-root?); unmount --force {layer_id} "
                                   "unmounts it")
            os.rename(folder, removing)
            # The layer is gone: its count locks go with it (held here, so nobody counts).
            self.counts.forget_lock(key)
            self.run_roots.forget_lock(key)
        self._destroy(removing)

    def _destroy(self, folder: str) -> None:
        """Delete a folder that is no longer any layer's (override to unmount first)."""
        from graphdriver.fs.tree import remove_tree

        remove_tree(folder)

    def cleanup(self, layers: Collection[str] | None = None) -> list[str]:
        """Finish or undo interrupted work; returns one line per thing done.

        Leftover ``.removing-`` folders are destroyed, and staging folders and
        probe scratch folders whose maker is dead dropped (never a live one's:
        see :func:`graphdriver.fs.locking.claim`); what cannot be removed yet
        is reported, not raised.
        An older store's ``<id>-removing`` folders are finished only when
        *layers* (the ids the caller's records name) is given and does not name
        them: ``work-removing`` may be a real layer.  A folder one of *layers*
        lives in (its own, or the one its alternate-id file names: a registered
        base image, say) is never a leftover, whatever its name.
        """
        done: list[str] = []
        named = self.named_folders(layers) if layers is not None else set()
        for entry in sorted(os.listdir(self.home)):
            if entry in named:
                continue
            legacy = layers is not None and entry.endswith(LEGACY_REMOVING_SUFFIX)
            if entry.startswith(REMOVING_PREFIX) or legacy:
                path = os.path.join(self.home, entry)
                try:
                    self._destroy(path)
                    done.append(f"removed interrupted removal {entry}")
                except OSError as e:
                    done.append(f"could not remove {entry} yet: {e.strerror}")
        from graphdriver.fs.locking import remove_abandoned

        staging_root = os.path.join(self.home, STAGING_DIR)
        for entry in sorted(os.listdir(staging_root)):
            try:
                if remove_abandoned(os.path.join(staging_root, entry), self._destroy):
                    done.append(f"dropped staging leftover {entry}")
            except OSError:
                pass
        # A probe on first use scratches in the home, or in the store's root before the home exists.
        done.extend(remove_probe_leftovers(self.home, os.path.dirname(self.home), keep=named))
        done.extend(self._reap_holds())
        done.extend(self._cleanup_mounts())
        done.extend(self.counts.remove_unused_locks(self.exists))
        done.extend(self.run_roots.remove_unused_locks(self.exists))
        done.extend(self.run_roots.forget_gone())
        return done

    def named_folders(self, layers: Collection[str]) -> set[str]:
        """The names of the home's folders that the layers *layers* live in: their own, and
        those their alternate-id files name (read, not resolved: the folder may be gone)."""
        named = set(layers)
        for layer_id in layers:
            own = self._folder(self.home, layer_id)
            found = alternate_name(own) if os.path.isdir(own) else None
            if found is not None and found[1] is not None:
                named.add(found[1])
        return named

    # ----- get and put ------------------------------------------------------------

    def _count_key(self, layer_id: str) -> str:
        """Mount counts are kept per folder an id resolves to: an alternate id shares its count."""
        try:
            return os.path.basename(self.resolve(layer_id))
        except NotFound:
            return os.path.basename(layer_id)

    def mount_count(self, layer_id: str) -> int:
        """How many ``get`` calls (in all processes) await their ``put`` (see :meth:`mount_state`)."""
        return self.mount_state(layer_id)[0]

    def get(self, layer_id: str, mount_label: str = "", *, hold: bool = False) -> str:
        """Make the layer's root filesystem available; returns its path (counted).

        *hold*: the count is this process's only while it lives (see :meth:`mounted`).
        """
        self.resolve(layer_id)
        key = self._count_key(layer_id)
        if not self.config.prepare and not self._counts_made:
            self._make_counts()
        with self.counts.lock(key):
            count, path = self._live_state(layer_id, key)
            if path is not None and self._still_mounted(layer_id, path):
                return self._count_get(layer_id, key, count, path, hold, False)
            # Unmounted behind our back (or never): the old count owes nothing
            # any more, so this mount starts afresh and one unmount undoes it.
            with self.run_roots.lock(key) as serialised:
                self.run_roots.note()  # others ask it before calling this stale
                path = self._mount(layer_id, mount_label)
                return self._count_get(layer_id, key, 0, path, hold, serialised)

    def _make_counts(self) -> None:
        """Make the run root's folder of mount counts, for a store not made yet: its first
        ``get`` is of a layer of an additional store (``changes``, ``diff --regenerate``,
        ``mount``).  The run root holds what is mounted now; the store stays unmade."""
        os.makedirs(self.counts.directory, 0o700, exist_ok=True)
        self._counts_made = True

    def _count_get(self, layer_id: str, key: str, count: int, path: str, hold: bool, serialised: bool) -> str:
        """:meth:`get` once the layer is mounted at *path*: add one to its *count* (a first one
        with the home's lock held, *serialised* where it was taken)."""
        token = None
        try:
            holds = self.counts.holds(key) if count else []
            if hold:
                token = self.counts.new_hold(key)
                holds.append(token[1])
            self.counts.set(key, count + 1, path, holds)  # the count and its hold, in one write
        except BaseException:
            if token is not None:
                self.counts.end_hold(key, *token)
            if count == 0:
                self._undo_mount(layer_id, key, path, serialised)  # found mounted: maybe another's
            raise
        if token is not None:
            self._holds.setdefault(key, []).append(token)
        return path

    def put(self, layer_id: str, *, hold: bool = False) -> None:
        """Release one ``get``; the last release unmounts (the seeds' ``Put``).

        A counted mount that the kernel says is gone (unmounted behind the
        store's back) is released quietly and its stale count dropped, as
        containers-storage's ``Unmount`` succeeds when its driver finds the
        mount point unmounted already; a layer not mounted at all is a
        :class:`Precondition`.
        """
        key = self._count_key(layer_id)
        held = self._holds.get(key)
        token = held.pop() if hold and held else None
        with self.counts.lock(key):
            try:
                count, path = self.counts.state(key)
                if count > 0 and self._mount_gone(layer_id, path):
                    self.counts.set(key, 0, "")
                    return
                count, path = self._live_state(layer_id, key)
                holds = self.counts.holds(key)
                if token is not None and token[1] not in holds:
                    return  # its count was dropped meanwhile (unmount --force): nothing to give back
                if count <= 0:
                    raise Precondition(f"layer {layer_id}", "is not mounted")
                if token is not None:
                    holds.remove(token[1])
                if count > 1:
                    self.counts.set(key, count - 1, path or "", holds)
                    return
                with self.run_roots.lock(key) as serialised:  # the last: 0 before the others ask
                    self._undo_mount(layer_id, key, path, serialised)
                    self.counts.set(key, 0, path or "", holds)
            finally:
                if token is not None:
                    self.counts.end_hold(key, *token)

    def _undo_mount(self, layer_id: str, key: str, path: str | None, serialised: bool) -> None:
        """With the count lock of *key* held and no count of it left here (the last ``put``,
        or a ``get`` that failed), and the home's lock of it held (*serialised* where it was
        taken): unmount, unless another run root counts this very mount.

        A mount point outside the run root (an own layer's) is the same for every run root
        of the store: the first ``get`` of a second run root finds it mounted and counts it
        as it is, so the last ``put`` of either must leave it to the other's.
        """
        if path and self._shared(path) and self.run_roots.counted_elsewhere(
                key, lambda recorded: recorded != path or self._mount_gone(layer_id, recorded),
                serialised=serialised):
            return
        self._unmount(layer_id)

    def _shared(self, path: str) -> bool:
        """Whether a mount at *path* may be counted by other run roots too (it is not in this
        one's run directory, where the views of other stores' layers and copies are made)."""
        return os.path.commonpath((os.path.abspath(path), self._run_dir)) != self._run_dir

    def mount_state(self, layer_id: str) -> tuple[int, str | None]:
        """The layer's mount count and mount path (None when not mounted).

        Where mounts are kernel mounts (:meth:`_kernel_mounts`), a count whose
        mount point is not mounted any more (unmounted behind the store's back)
        is 0, and is dropped under the count lock, as containers-storage's and
        Docker's reference counters check the kernel.
        """
        key = self._count_key(layer_id)
        count, path = self.counts.state(key)
        if count > 0 and (self._mount_gone(layer_id, path) or self.counts.has_holds(key)):
            with self.counts.lock(key):
                count, path = self._live_state(layer_id, key)
        return count, (path or None) if count > 0 else None

    def _kernel_mounts(self) -> bool:
        """Whether ``get`` makes a kernel mount, whose count the kernel's mount table checks
        (a driver handing out a directory keeps its own counting)."""
        return False

    def _uncounted_mount(self, layer_id: str) -> bool:
        """Whether the layer's union is mounted though no count says so (a process with
        another run root mounted it, or one died before counting it)."""
        return False

    def _mount_gone(self, layer_id: str, path: str | None) -> bool:
        """Whether a counted kernel mount at *path* is not mounted any more."""
        if not self._kernel_mounts():
            return False
        try:
            return not path or not self._still_mounted(layer_id, path)
        except NotFound:
            return True  # the layer's folder is gone, and with it anything mounted in it

    def _gone_check(self, layer_id: str) -> Callable[[str | None], bool]:
        """:meth:`_mount_gone` for *layer_id*, as a test of a path another run root recorded."""
        return lambda path: self._mount_gone(layer_id, path)

    def _live_state(self, layer_id: str, key: str) -> tuple[int, str | None]:
        """With the count lock of *key* held: the count and path (None: not mounted), a count
        whose kernel mount is gone dropped, and so are those of holders that died."""
        count, path = self._reaped_state(layer_id, key)[:2]
        if count > 0 and self._mount_gone(layer_id, path):
            self.counts.set(key, 0, "")
            return 0, None
        return count, (path or None) if count > 0 else None

    def _reaped_state(self, layer_id: str, key: str) -> tuple[int, str | None, int]:
        """With the count lock of *key* held: the count and path once the holds of commands
        that died are taken away (the last one's mount undone), and how many there were."""
        count, path, listed = self.counts.entry(key)
        dead = self.counts.dead_holds(key, listed)
        kept = [h for h in listed if h not in dead]
        if dead and count > 0:
            left = max(count - len(dead), 0)
            if left == 0 and path and self._still_mounted(layer_id, path):
                with self.run_roots.lock(key) as serialised:
                    self._undo_mount(layer_id, key, path, serialised)
                    self.counts.set(key, 0, path, kept)
            else:
                self.counts.set(key, left, path or "", kept)
            count = left
        if dead or self.counts.has_holds(key):
            self.counts.tidy_holds(key, kept)  # only once the count no longer lists them
        return count, path, len(dead)

    def _reap_holds(self) -> list[str]:
        """Take away the counts of commands that died holding a layer (for cleanup)."""
        done = []
        for key in sorted(set(self.counts.counted()) | set(self.counts.held_keys())):
            if self.counts.has_holds(key):
                with self.counts.lock(key):
                    if self.exists(key):
                        dead = self._reaped_state(key, key)[2]
                    else:  # the layer is gone: nothing is counted for it any more
                        dead = 0
                        self.counts.tidy_holds(key, [])
                if dead:
                    done.append(f"dropped {dead} mount count(s) of {key} that commands which died held")
        return done

    def put_all(self, layer_id: str) -> int:
        """Drop every count and unmount, whoever mounted it; returns the counts dropped."""
        key = self._count_key(layer_id)
        with self.counts.lock(key):
            count, path = self.counts.state(key)
            if count > 0 or (path and self._still_mounted(layer_id, path)) or self._uncounted_mount(layer_id):
                self._unmount(layer_id)
            self.counts.set(key, 0, "")
        return count

    def writable_view(self, layer_id: str) -> bool:
        """Whether :meth:`get` hands out a view through which the layer's own files can change.

        The store records it when it mounts an imported layer so (its files may
        then no longer be its tarball's).  True unless a driver knows better: a
        full tree handed out as it is (``vfs``) is writable; a read-only union
        mount of an image layer, or a throwaway copy, is not.
        """
        self.resolve(layer_id)
        return True

    def mounted(self, layer_id: str) -> Mounted:
        """``get`` for the duration of a block: ``with driver.mounted(id) as path: ...``.

        The count is a hold: should the process die in the block, the next
        ``cleanup``, ``get``, ``put`` or look at the count takes it away.
        """
        from graphdriver.drivers.values import Mounted

        return Mounted(self, layer_id)

    def _still_mounted(self, layer_id: str, path: str) -> bool:
        """Whether a recorded mount is really there (drivers that mount check the table)."""
        return os.path.isdir(path)

    def _cleanup_mounts(self) -> list[str]:
        """Drop mount records whose mount is gone (e.g. after a reboot)."""
        done = []
        for key in self.counts.counted():
            with self.counts.lock(key):
                if not self.counts.recorded(key):
                    continue  # its last unmount finished while we waited for the lock
                path = self.counts.path(key)
                if not self.exists(key) or path is None or not self._still_mounted(key, path):
                    self.counts.set(key, 0, "")
                    done.append(f"dropped stale mount record of {key}")
        return done

    @abc.abstractmethod
    def _mount(self, layer_id: str, mount_label: str) -> str:
        """Make the union view available and return its path (first ``get``)."""

    @abc.abstractmethod
    def _unmount(self, layer_id: str) -> None:
        """Undo :meth:`_mount` (last ``put``)."""

    # ----- changes and apply: directories for the store ------------------------------

    def compare(
        self, layer_id: str, parent: str | None, *, native: bool = True
    ) -> AbstractContextManager[Comparison]:
        """The trees that say what *layer_id* changed relative to *parent*, for a ``with`` block.

        By default both layers are mounted and walked; a driver whose layer
        directory itself records its changes over *parent* (overlay's upper
        directory) hands that back instead, unless *native* is False.
        """
        from graphdriver.drivers.values import Compared

        return Compared(self, layer_id, parent)

    @abc.abstractmethod
    def apply_target(self, layer_id: str) -> ApplyTarget:
        """Where a tarball is applied to the layer, and with which conventions."""

    def check_apply(self, layer_id: str) -> None:
        """Raise :class:`~graphdriver.errors.Precondition` if a tarball may not be applied now."""
        if self.is_readonly_store(layer_id):
            raise Precondition(f"layer {layer_id}", "belongs to a read-only store")

    def after_apply(self, layer_id: str) -> None:  # noqa: B027 - optional hook
        """Called after a successful apply (e.g. to back up files the driver rewrites)."""

    def own_files(self, layer_id: str) -> str | None:
        """The directory holding this layer's own files only, or None when its tree
        includes its parents' files (a full copy, as vfs keeps).  Read, never written."""
        return None

    def written_since(self, layer_id: str, parent: str | None) -> int | None:
        """When the tree of *layer_id* was made on the tree of *parent* (its own parent),
        as the ctime in ns of a mark made then; None for another parent, or a layer made
        before such marks were.

        A file of the layer changed since (written, or its metadata set) has a later or
        equal ctime (the kernel stamps every inode from one clock), and so does a file of
        the parent changed since; anything older is as the layer was made (a copy of the
        parent's, for vfs).  The generic walk reads the bytes of only those files
        (:mod:`graphdriver.diff.walk`).
        """
        if parent is None:
            return None
        try:
            chain = self.layer_chain(layer_id)
        except GraphDriverError:
            return None  # (an unreadable chain file is the business of what needs the chain)
        if not chain or os.path.realpath(chain[0]) != os.path.realpath(self.resolve(parent)):
            return None
        try:
            return os.lstat(os.path.join(self.resolve(layer_id), TREE_MADE_FILE)).st_ctime_ns
        except FileNotFoundError:
            return None


def alternate_name(folder: str) -> tuple[str, str | None] | None:
    """The alternate-id file in layer *folder* (either spelling) and the folder name it
    gives, None for a name that cannot be one; None when the folder has no such file."""
    for fname in (LAYERID_FILE, LAYERID_FILE_ALT):
        try:
            with open(os.path.join(folder, fname), encoding="utf-8") as f:
                alt = f.read().strip()
        except FileNotFoundError:
            continue
        except UnicodeDecodeError:
            return fname, None
        return fname, alt if alt and alt == os.path.basename(alt) and alt not in (".", "..") else None
    return None


def _default_size(text: str | None) -> int | None:
    """The ``size`` driver option in bytes, parsed as ``--size`` is (InvalidArgument if bad)."""
    if text is None:
        return None
    from graphdriver.units import parse_size

    try:
        size = parse_size(text)
    except InvalidArgument as e:
        raise InvalidArgument(f"option size={text!r}", "expected a size such as 20G or 512M") from e
    if size <= 0:
        raise InvalidArgument(f"option size={text!r}", "a size limit must be more than 0 bytes")
    from graphdriver.units import check_limit

    check_limit(size, text)
    return size


# What each driver's probe found per home (and options) in this process: opening a
# store probes once, not once for the registry and again for the driver.
_PROBED: dict[tuple[object, ...], dict[str, str]] = {}


def probed_once(
    key: tuple[object, ...], probe: Callable[[], dict[str, str]], *, cached: bool
) -> dict[str, str]:
    """``probe()``'s findings; with *cached*, those of an earlier success under *key* in this process."""
    if cached and key in _PROBED:
        return _PROBED[key]
    found = _PROBED[key] = probe()
    return found


#: Why a probe could not write its scratch folder that say "not now" (the filesystem is full,
#: over quota, or mounted read-only), not "never": such a probe passes unfinished, so that the
#: layers already stored stay readable (and removable, to free space); what writes fails on
#: its own, and the next probe tries again.
NOT_NOW = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

#: The homes whose probe passed unfinished in this process: never remembered as probed.
UNFINISHED: set[str] = set()


def nearest_existing(home: str) -> str:
    """*home* made absolute, or its nearest ancestor that exists: where a probe of a home
    not made yet looks (the home will be made on its filesystem)."""
    existing = os.path.abspath(home)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    return existing


def unfinished_probe(home: str, existing: str, e: OSError) -> bool:
    """Whether *e*, met making a probe's scratch folder in *existing*, lets the probe of
    *home* pass unfinished (see :data:`NOT_NOW`): only where *existing* is the home itself,
    whose layers are there to read (a new home on such a filesystem could hold nothing).
    It then notes *home* in :data:`UNFINISHED`."""
    home = os.path.abspath(home)
    if e.errno not in NOT_NOW or os.path.abspath(existing) != home:
        return False
    UNFINISHED.add(home)
    return True


def probe_scratch(existing: str, driver: str) -> tuple[str, int]:
    """A new scratch folder for *driver*'s probe in the folder *existing*, and its fd.

    Locked by this process until the fd is closed (the prober removes the
    folder, then closes it): a probe killed half way leaves a folder that
    ``cleanup`` removes once the prober is dead, and never a live probe's.
    """
    from graphdriver.fs.locking import claim

    path = os.path.join(existing, f".{driver}{PROBE_MARK}{os.getpid()}-{os.urandom(4).hex()}")
    return path, claim(path, folder=True, mode=0o700)


def remove_probe_leftovers(*folders: str, keep: Collection[str] = ()) -> list[str]:
    """Remove the probe scratch folders (see :func:`probe_scratch`) in *folders* whose prober
    is dead, but none named in *keep* (a layer's folder); one line per folder removed (or not
    removable yet)."""
    from graphdriver.fs.locking import remove_abandoned

    done = []
    for folder in dict.fromkeys(folders):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in filter(_is_probe_name, names):
            if name in keep:
                continue
            path = os.path.join(folder, name)
            try:
                if remove_abandoned(path):
                    done.append(f"removed probe leftover {path}")
            except OSError as e:
                done.append(f"could not remove probe leftover {path} yet: {e.strerror}")
    return done


def _is_probe_name(name: str) -> bool:
    """Whether *name* is ``.<driver>-probe-<pid>-<8 hex digits>``."""
    driver, mark, rest = name[1:].partition(PROBE_MARK)
    pid, _, tag = rest.partition("-")
    return (name.startswith(".") and bool(mark) and driver.replace("_", "").isalnum()
            and pid.isdigit() and len(tag) == 8 and all(c in "0123456789abcdef" for c in tag))


def layer_name_of(folder: str, *, destroying: bool = False) -> str:
    """The layer folder name that *folder* is, or was before removal or staging renamed it.

    *destroying*: the folder is on its way out (passed to ``_destroy``), so an
    older store's ``<name>-removing`` names ``<name>``; a live folder's name is
    its own, whatever it ends with.
    """
    name = os.path.basename(folder)
    if name.startswith(REMOVING_PREFIX):
        return name[len(REMOVING_PREFIX):]
    if os.path.basename(os.path.dirname(folder)) == STAGING_DIR:
        return name.rpartition("-")[0]
    if destroying and name.endswith(LEGACY_REMOVING_SUFFIX):
        return name[: -len(LEGACY_REMOVING_SUFFIX)]
    return name

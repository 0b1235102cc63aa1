"""The layer store: records above a driver.

The store owns ``<root>``: ``store.json`` (which driver the store was made
with, its id maps and options), ``layers/`` (one record per layer),
``pending/`` (markers of work under way), and ``<driver>/`` (the driver's
home).  Runtime state (mount counts, locks that die with a reboot) lives under
the run root.

Every mutation happens inside :meth:`Store.locked` (an exclusive lock on
``store.lock``); readers need no lock because every file is replaced
atomically.  A layer is marked pending before any disk work and unmarked last,
so :meth:`Store.cleanup`, which also runs when a store is opened, can tell a
crash's leftovers from work in progress in another process.
"""

from __future__ import annotations

import os
import stat

from graphdriver.errors import (
    AlreadyExists,
    GraphDriverError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Precondition,
    Unsupported,
    os_error,
    shorten,
)
from graphdriver.fs import atomic, path_key, privileged
from graphdriver.ids import check_id
from graphdriver.store.records import ApplyLock, Layer, LayerRecord, RecordStore, now_rfc3339, remove_entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any, BinaryIO, NoReturn, TypeVar

    from graphdriver.diff.changes import Change
    from graphdriver.drivers.base import Driver
    from graphdriver.drivers.values import CreateOpts
    from graphdriver.fs.locking import locked
    from graphdriver.idmap import IDMappings
    from graphdriver.layerio.ingest import IngestResult
    from graphdriver.store.transaction import Transaction

    _T = TypeVar("_T")

STORE_FILE = "store.json"
TARSPLIT_DIR = "tarsplit"
TARSPLIT_SUFFIX = ".tar-split.gz"
LOCK_FILE = "store.lock"
FORMAT_VERSION = 1


class StoreOptions:
    """How to open a store (resolved from the CLI's global options)."""

    __slots__ = ("additional_stores", "create", "driver", "driver_options", "idmaps", "recover", "root",
                 "run_root")

    def __init__(
        self,
        root: str,
        run_root: str,
        driver: str | None = None,
        driver_options: dict[str, str] | None = None,
        idmaps: IDMappings | None = None,
        additional_stores: tuple[str, ...] = (),
        recover: bool = True,
        create: bool = True,
    ) -> None:
        self.root = root
        self.run_root = run_root
        self.driver = driver
        self.driver_options = dict(driver_options or {})
        self.idmaps = idmaps
        self.additional_stores = tuple(additional_stores)
        #: Run ``cleanup`` when opening (finishes what a crash interrupted).
        self.recover = recover
        #: Create a new store when opening it; False: when its first layer is stored
        #: (so that read-only commands on a new root leave nothing behind).
        self.create = create


def default_root() -> str:
    env = os.environ.get("GRAPHDRIVER_ROOT")
    if env:
        return env
    if privileged():
        return "/var/lib/graphdriver"
    data = _xdg("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "graphdriver")


def _xdg(name: str) -> str | None:
    """An XDG base directory variable; a relative path is invalid there and ignored (the spec)."""
    value = os.environ.get(name)
    return value if value and os.path.isabs(value) else None


def default_run_root(root: str) -> str:
    env = os.environ.get("GRAPHDRIVER_RUNROOT")
    if env:
        return env
    if privileged():
        return "/run/graphdriver"
    runtime = _xdg("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "graphdriver")
    return os.path.join(root, "run")


def resolved(path: str) -> str:
    """*path* absolute, with its symlinks resolved (as containers-storage resolves its graph
    root when it opens the store), as far as it exists: a folder not made yet is named
    below its resolved parent, and a symlink to nothing is left as it is (a folder is never
    made where it points)."""
    head, rest = os.path.abspath(path), []
    while not os.path.exists(head):
        if os.path.lexists(head) or os.path.dirname(head) == head:
            return os.path.abspath(path)
        head, name = os.path.split(head)
        rest.append(name)
    return os.path.join(os.path.realpath(head), *reversed(rest))


def _refuse_no_folder(what: str, path: str) -> None:
    """A usage error (a bad argument, not a corrupt store) for a *path* that is no folder,
    or that could never be one: a file stands where a folder on its way belongs."""
    try:
        mode = os.stat(path).st_mode
    except NotADirectoryError:
        head = os.path.dirname(path)
        while not os.path.exists(head) and os.path.dirname(head) != head:
            head = os.path.dirname(head)  # the first that exists is the file
        raise InvalidArgument(f"{what} {path}", f"{head} on its way is not a folder") from None
    except OSError:
        return  # not there yet (made when needed), or told when used
    if not stat.S_ISDIR(mode):
        raise InvalidArgument(f"{what} {path}", "is not a folder")


class Store:
    """An open layer store."""

    def __init__(self, opts: StoreOptions) -> None:
        if opts.driver is not None:
            from graphdriver import drivers

            drivers.check_name(opts.driver)  # before anything is created
        # Resolved: a store's run directory is keyed by its root's path, so every spelling
        # of one store (a symlink to it, say) must share one key and one set of mount counts.
        self.root = resolved(opts.root)
        self.run_root = os.path.abspath(opts.run_root)
        for what, path in (("--root", self.root), ("--run-root", self.run_root)):
            _refuse_no_folder(what, path)
        # Without opts.create nothing is created here: a store comes to be (its
        # folders, and store.json fixing its driver) when the first layer is
        # stored in it (see _settle), so read-only commands leave no trace.
        self.records = RecordStore(self.root)
        self._opts = opts
        self._settings: dict[str, str] | None = None
        #: Whether store.json is on disk (the store exists); False until read or written.
        self._settled = False
        # An existing store's settings are read when first needed (a read-only
        # command such as `layers` never needs them), unless the caller named a
        # driver or id maps that must be checked against them now.
        self._driver: Driver | None = None
        _refuse_maps_unprivileged(opts.idmaps)
        if opts.driver or opts.idmaps is not None:
            self.settings()
        if opts.create and not self.settled:
            with self.locked():
                self._settle()
        self.readonly = [
            RecordStore(os.path.abspath(p), writable=False) for p in opts.additional_stores
        ]
        # Recovery runs only when work was left behind (markers, their locks,
        # half-written temporary files): a read-only command on a healthy store
        # lists one empty folder and goes on.
        if opts.recover and self._left_behind():
            from graphdriver.errors import warn

            for line in self.cleanup():  # each repair said, as cleanup says it: it will find none
                if line.startswith(("removed ", "dropped ")):  # not what stays to be told again
                    warn(f"cleanup: {line}")
        if opts.driver_options:
            self.driver  # noqa: B018 - unknown driver options are refused at once

    def _left_behind(self) -> list[str]:
        """The pending folder's entries; one this user may not list is a missing privilege."""
        try:
            return self.records.pending_entries()
        except PermissionError as e:
            raise os_error(f"store {self.root}", e) from e

    def _settings_path(self) -> str:
        return os.path.join(self.root, STORE_FILE)

    def settings(self) -> dict[str, str]:
        """``store.json``: the store's driver and id maps.

        For a store that holds nothing yet, the settings it would be created
        with (the driver asked for, else the first whose probe passes), not
        written: the first layer stored writes them (:meth:`_settle`).
        """
        if self._settings is None:
            settings = self._read_settings(self._opts)
            self._settled = settings is not None
            self._settings = settings if settings is not None else self._new_settings(self._opts)
        return self._settings

    @property
    def settled(self) -> bool:
        """Whether the store exists on disk (``store.json`` written: a layer was stored in it)."""
        if self._settings is None:
            try:
                os.stat(self._settings_path())
            except FileNotFoundError:
                return False
            except OSError as e:  # a store this user may not enter is not an empty one
                raise os_error(f"store {self.root}", e) from e
            return True
        return self._settled

    def _settle(self) -> None:
        """Under the lock, before the first layer is stored: create the store on disk.

        Its folders are made and ``store.json`` written, fixing its driver and
        id maps; another process may have done so meanwhile, and then its
        settings are the store's.
        """
        if self._settled:
            return
        settings = self._read_settings(self._opts)
        if settings is None:
            settings = self.settings()
            os.makedirs(self.run_root, 0o700, exist_ok=True)
            self.records.make_dirs()
            os.makedirs(os.path.join(self.root, TARSPLIT_DIR), 0o700, exist_ok=True)
            atomic.write_json(self._settings_path(), settings)
        elif self._settings is not None and settings["driver"] != self._settings["driver"]:
            self._driver = None  # chosen by another process first: use its driver
        self._settings, self._settled = settings, True
        if self._driver is not None:
            self._driver.prepare()

    @property
    def driver_name(self) -> str:
        """The driver the store was created with."""
        return self.settings()["driver"]

    @property
    def driver(self) -> Driver:
        """The driver, initialised (and its home probed) on first use."""
        if self._driver is None:
            from graphdriver.drivers.base import DriverConfig
            settings = self.settings()
            self._refuse_other_drivers_stores(settings["driver"])
            idmaps = None  # the identity, made when asked for
            if settings.get("uidmap") or settings.get("gidmap"):
                from graphdriver.idmap import IDMappings

                idmaps = IDMappings.parse(settings.get("uidmap", ""), settings.get("gidmap", ""))
            config = DriverConfig(
                home=os.path.join(self.root, self.driver_name),
                # Stores sharing one run root (the default /run/graphdriver) keep apart:
                # mount counts are per layer id, and two stores may both have a "base".
                run_root=os.path.join(self.run_root, path_key(self.root), self.driver_name),
                options=dict(self._opts.driver_options),
                idmaps=idmaps,
                readonly_homes=tuple(os.path.join(r.root, self.driver_name) for r in self.readonly),
                # A store not made yet gets its driver's folders when it is (_settle).
                prepare=self.settled,
            )
            from graphdriver import drivers

            self._driver = drivers.init_driver(self.driver_name, config)
        return self._driver

    # ----- settings -------------------------------------------------------------------

    def _read_settings(self, opts: StoreOptions) -> dict[str, str] | None:
        """``store.json`` checked against *opts*; None for a new store.

        A store that holds nothing (its ``store.json`` written by an earlier
        version's read-only command, say) does not bind a caller who asks for
        another driver or other id maps: it is new.
        """
        settings = read_settings(self.root, f"store {self.root}")
        if settings is None:
            return None
        if opts.driver and opts.driver != settings["driver"]:
            if self._holds_nothing():
                return None
            raise Precondition(
                f"store {self.root}",
                f"was created with driver {settings['driver']}, not {opts.driver}",
            )
        if opts.idmaps is not None and not _same_maps(opts.idmaps, settings):
            if self._holds_nothing():
                return None
            raise Precondition(f"store {self.root}", "was created with other id maps")
        return settings

    def _refuse_other_drivers_stores(self, name: str) -> None:
        """Precondition (exit 5) for an additional store made with another driver than *name*:
        its layers' files are where that driver keeps them, which this one never looks."""
        for ro in self.readonly:
            what = f"additional store {ro.root}"
            theirs = read_settings(ro.root, what)  # None: no layer stored there yet
            if theirs is not None and theirs["driver"] != name:
                theirs_name = shorten(theirs["driver"], 40)
                raise Precondition(what, f"was created with driver {theirs_name}, not {name}")

    def _holds_nothing(self) -> bool:
        """Whether the store has no file but ``store.json`` and its lock: no layer, record,
        marker, image or driver state (empty folders only)."""
        if self.records.ids() or self.records.pending_entries():
            return False
        for top, _dirs, files in os.walk(self.root):
            if any(top != self.root or name not in (STORE_FILE, LOCK_FILE) for name in files):
                return False
        return True

    def _new_settings(self, opts: StoreOptions) -> dict[str, str]:
        """The settings of a new store: its driver chosen, its id maps (written by :meth:`_settle`)."""
        from graphdriver import drivers

        name = opts.driver or drivers.select_driver(probe_home=self.root)
        drivers.driver_class(name)  # unknown names are refused before anything is written
        from graphdriver.idmap import IDMappings

        idmaps = opts.idmaps or IDMappings()
        settings: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "driver": name,
            "uidmap": str(idmaps.uids),
            "gidmap": str(idmaps.gids),
        }
        return settings

    def read_as_owner(self) -> bool:
        """Without root, let this process read the store's layers whole whatever their modes
        (a directory of mode 0000 in an image, say), for the rest of its life: it becomes
        root of a user namespace mapping only its own user
        (:func:`graphdriver.fs.ownfiles.enter_owner_namespace`).  Only where every file
        read is this user's (the store is, and no additional stores are given) and the
        driver mounts nothing (vfs), with the driver opened first; whether it did.  For a
        process that reads and writes this store alone, before it starts threads: the
        command line calls it when such a folder stopped a command, then runs it again, or
        before a command whose output cannot be taken back reads such a folder
        (see :mod:`graphdriver.cliowner`).
        """
        if not self.may_read_as_owner():
            return False
        from graphdriver.fs.ownfiles import enter_owner_namespace

        return enter_owner_namespace()

    def may_read_as_owner(self) -> bool:
        """Whether :meth:`read_as_owner` is tried here (it may still find namespaces disabled)."""
        if privileged() or self.readonly or not self.settled:
            return False
        try:
            if os.stat(self.root).st_uid != os.geteuid():
                return False  # another user's store: its files would read as 65534
        except OSError:
            return False
        return self.driver.MOUNTS_NOTHING

    def closed_folder(self, layer_ids: Iterable[str]) -> str | None:
        """A folder of these layers' files that their owner, this user, may not list or search
        (mode 0000, say: what stops a walk without root), or None."""
        from graphdriver.fs.ownfiles import closed_folder
        from graphdriver.store import content

        for layer_id in dict.fromkeys(layer_ids):
            found = closed_folder(content.files_root(self.driver, layer_id))
            if found is not None:
                return found
        return None

    def locked(self) -> StoreLock:
        """The store-wide writer lock: ``with store.locked(): ...``.

        On a root that is not there yet, the folders the lock needs are made,
        and taken away again with the lock file if the block stored nothing
        (a command that failed, or found nothing, leaves no trace).
        """
        made = []
        folder = os.path.abspath(self.root)
        while not os.path.lexists(folder):
            made.append(folder)
            folder = os.path.dirname(folder)
        return StoreLock(self.root, self._settings_path(), made)

    # ----- queries ------------------------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        from graphdriver import drivers

        pairs = [("Root", self.root), ("Run Root", self.run_root)]
        pairs += drivers.driver_status(self.driver)
        pairs.append(("Probes Passed", self.driver_name))
        if drivers.passed_over:  # chosen by this command: why the drivers ahead were not
            pairs.append(("Probes Failed", "; ".join(drivers.passed_over)))
        size_limit = self.driver.size_limit_status()
        if size_limit is not None:
            pairs.append(("Default Size Limit", size_limit))
        pairs.append(("Layers", str(len(self.records.ids()))))
        from graphdriver.codecs import implementations

        pairs += implementations()
        if self.readonly:
            pairs.append(("Additional Stores", ",".join(r.root for r in self.readonly)))
        return pairs

    def _find(self, layer_id: str) -> Layer:
        check_id(layer_id)
        if self.records.exists(layer_id) and not self.records.is_pending(layer_id):
            return Layer(self.records.get(layer_id))
        for ro in self.readonly:
            if ro.exists(layer_id) and not ro.is_pending(layer_id):
                return Layer(ro.get(layer_id), read_only_store=True)
        raise NotFound(f"layer {layer_id}", "no such layer")

    def exists(self, layer_id: str) -> bool:
        """Whether *layer_id* is a complete layer here or in an additional store."""
        check_id(layer_id)
        return any(
            r.exists(layer_id) and not r.is_pending(layer_id) for r in (self.records, *self.readonly)
        )

    def record(self, layer_id: str) -> Layer:
        """*layer_id*'s record alone (no driver facts: ``metadata`` empty, ``applying`` None), for
        its stored fields; :class:`NotFound` if there is no such layer."""
        return self._find(layer_id)

    def layer(self, layer_id: str) -> Layer:
        """*layer_id* with the driver's facts filled in (metadata, mount count and mount
        point), and whether an apply to it runs."""
        layer = self._find(layer_id)
        try:
            layer.metadata = self.driver.metadata(layer_id)
        except NotFound:
            pass
        self._note_applying(layer)
        layer.mount_count, layer.mount_point = self.driver.mount_state(layer_id)
        return layer

    def fill_metadata(self, layer: Layer) -> None:
        """Fill in the driver's facts about *layer* (as ``layers --json`` lists them: what
        ``layer ID`` shows), and whether an apply to it runs.

        :class:`NotFound` when the layer was removed meanwhile;
        :class:`IntegrityError` when its record stands but its files are gone.
        """
        try:
            layer.metadata = self.driver.metadata(layer.id)
        except GraphDriverError as e:
            self._raise_explained(e, layer.id, seen=layer)
        self._note_applying(layer)
        layer.mount_count, layer.mount_point = self.driver.mount_state(layer.id)

    def _note_applying(self, layer: Layer) -> None:
        """Set :attr:`Layer.applying` while the apply that marked *layer* still runs."""
        damage = self.damage(layer)
        layer.applying = under_way(damage[1]) if damage is not None and damage[0] else None

    def layers(self) -> list[Layer]:
        """Every complete layer with a sound record, this store's first, then the additional stores'."""
        return self.scan_layers()[0]

    def scan_layers(self) -> tuple[list[Layer], list[tuple[str, GraphDriverError]]]:
        """:meth:`layers`, and the ids whose records cannot be read with why: corrupt
        (:class:`IntegrityError`) or closed to this user (:class:`Unsupported`)."""
        seen: set[str] = set()
        out: list[Layer] = []
        bad: list[tuple[str, GraphDriverError]] = []
        for records, read_only in ((self.records, False), *((ro, True) for ro in self.readonly)):
            # Records first, markers after: a layer's marker is made before its
            # record, so a record read here whose work is under way has its
            # marker in the listing read next (the other order misses it).
            good, broken = records.scan()
            pending = set(records.pending_ids())
            for record in good:
                if record.id not in seen and record.id not in pending:
                    seen.add(record.id)
                    out.append(Layer(record, read_only_store=read_only))
            bad += [(i, e) for i, e in broken if i not in seen and i not in pending]
            seen.update(i for i, _ in broken)
        return out, bad

    def children(self, layer_id: str) -> list[str]:
        return [r.id for r in self.records.all() if r.parent == layer_id]

    def _dependents(self, layer_id: str) -> list[str]:
        """The children of *layer_id*, and layers with a corrupt record whose files the driver
        says sit on it (their parent cannot be read, but their files may need this layer's)."""
        good, corrupt = self.records.scan()
        found = [r.id for r in good if r.parent == layer_id and r.id != layer_id]  # (a record naming
        # itself as its parent is corrupt, and no child of its own: remove takes it away)
        if corrupt and self.driver.exists(layer_id):
            folder = os.path.basename(self.driver.resolve(layer_id))
            for other, _error in corrupt:
                try:
                    chain = self.driver.layer_chain(other) if self.driver.exists(other) else []
                except GraphDriverError:
                    continue
                if chain and os.path.basename(chain[0]) == folder:
                    found.append(other)
        return found

    # ----- create, import, apply ---------------------------------------------------

    def create(
        self,
        layer_id: str,
        parent: str | None = None,
        *,
        writable: bool = False,
        size: str | None = None,
        mount_label: str = "",
        idmaps: IDMappings | None = None,
    ) -> LayerRecord:
        """Create an empty layer on top of *parent* (the seeds' Create/CreateReadWrite).

        *idmaps* gives the layer id maps of its own (default: the store's).
        """
        check_id(layer_id)
        if parent is not None:
            check_id(parent, "parent id")
        _refuse_maps_unprivileged(idmaps)  # before the store is touched
        storage_opt: dict[str, str] = {}
        if size is not None:
            if not writable:
                raise InvalidArgument("--size", "only applies to writable (--rw) layers")
            from graphdriver.units import check_limit, parse_size

            limit = parse_size(size)
            check_limit(limit, size)  # before the store is touched
            storage_opt["size"] = str(limit)
        self.driver.check_create_opts(storage_opt, rw=writable)  # a limit it cannot enforce too
        from graphdriver.drivers.values import CreateOpts

        with self._transaction(layer_id, "create") as tx:
            record = self._new_record(tx, parent, writable, idmaps)
            own, parent_maps = self._create_maps(record)
            opts = CreateOpts(mount_label=mount_label, storage_opt=storage_opt, idmaps=own,
                              parent_idmaps=parent_maps)
            self._driver_create(layer_id, parent, opts, writable=writable)
            record.fresh = True  # holds nothing of its own: a first apply is recorded as an import
            tx.commit(record)
        return record

    def _driver_create(self, layer_id: str, parent: str | None, opts: CreateOpts, *, writable: bool) -> None:
        """Under the lock: the driver's folder of a new layer on *parent*."""
        try:
            if writable:
                self.driver.create_rw(layer_id, parent, opts)
            else:
                self.driver.create(layer_id, parent, opts)
        except NotFound as e:  # the parent's files gone (its record stands: the lock is held)
            self._raise_explained(e, parent)

    def _transaction(self, layer_id: str, operation: str, *, undo: str = "remove") -> Transaction:
        from graphdriver.store.transaction import Transaction

        return Transaction(self, layer_id, operation, undo=undo)

    @property
    def idmaps(self) -> IDMappings:
        """The store's id maps: a layer's files are stored under them unless it has its own."""
        return self.driver.config.idmaps

    def layer_maps(self, record: LayerRecord) -> IDMappings:
        """The id maps *record*'s files are stored under: its own, else the store's."""
        if record.uidmap is None and record.gidmap is None:
            return self.idmaps
        from graphdriver.idmap import IDMappings

        return IDMappings.parse(record.uidmap or "", record.gidmap or "")

    def _create_maps(self, record: LayerRecord) -> tuple[IDMappings, IDMappings | None]:
        """The id-map arguments of the driver's create: the layer's, and its parent's where they differ."""
        own = self.layer_maps(record)
        parent = self.layer_maps(self._find(record.parent)) if record.parent is not None else None
        if parent is None or parent == own:
            return own, None
        if not self.driver.SHIFTS_IDS:
            raise Unsupported(f"layer {record.id}", f"the {self.driver_name} driver cannot give a child "
                              "other id maps than its parent's")
        return own, parent

    def _owner_translation(self, layer_id: str,
                           base: str | None) -> Callable[[int, int], tuple[int, int]] | None:
        """How *base*'s owners read in *layer_id*'s maps, when the two differ (None when not)."""
        if base is None:
            return None
        own, theirs = self.layer_maps(self._find(layer_id)), self.layer_maps(self._find(base))
        if own == theirs:
            return None

        def translate(uid: int, gid: int) -> tuple[int, int]:
            try:
                return theirs.translate(own, uid, gid)
            except InvalidArgument:
                return (-1, -1)  # outside the maps: never equal to a file's owner

        return translate

    def _new_record(self, tx: Transaction, parent: str | None, writable: bool,
                    idmaps: IDMappings | None = None) -> LayerRecord:
        """In *tx*: refuse a duplicate or a missing parent, then write the layer's pending record."""
        layer_id = tx.layer_id
        if self.records.exists(layer_id) or any(r.exists(layer_id) for r in self.readonly):
            raise AlreadyExists(f"layer {layer_id}", "already exists")
        if os.path.lexists(os.path.join(self.driver.home, layer_id)):
            # Files no record names: another layer's under its alternate id (a base image's
            # folder), or a leftover; neither is this layer's to take, nor to remove on failure.
            raise AlreadyExists(f"layer {layer_id}", f"{self.driver_name}/{layer_id} holds files of no layer "
                                "of that id (another layer's folder, or a leftover cleanup removes)")
        parent_record = self._find(parent) if parent is not None else None
        if parent_record is not None:
            self._refuse_damaged(parent_record, new_child=layer_id)
        self._settle()  # the store's first layer makes the store
        record = LayerRecord(
            id=layer_id,
            parent=parent,
            created=now_rfc3339(),
            writable=writable,
            driver=self.driver_name,
        )
        if idmaps is not None:
            record.uidmap, record.gidmap = str(idmaps.uids), str(idmaps.gids)
        elif parent_record is not None:  # a child without maps of its own takes its parent's
            record.uidmap, record.gidmap = parent_record.uidmap, parent_record.gidmap
        tx.mark(record)
        return record

    def import_layer(self, layer_id: str, parent: str | None, stream: BinaryIO,
                     idmaps: IDMappings | None = None) -> LayerRecord:
        """Create a read-only layer on *parent* and apply a (compressed) tarball to it.

        The layer stays pending (invisible to other commands, removed by
        ``cleanup`` after a crash) until its data is durable.
        """
        check_id(layer_id)
        if parent is not None:
            check_id(parent, "parent id")
        _refuse_maps_unprivileged(idmaps)  # before the store is touched
        with self._transaction(layer_id, "import") as tx:
            record = self._new_record(tx, parent, False, idmaps)
            from graphdriver.drivers.values import CreateOpts

            own, parent_maps = self._create_maps(record)
            opts = CreateOpts(idmaps=own, parent_idmaps=parent_maps)
            self._driver_create(layer_id, parent, opts, writable=False)
            with tx.unlocked():  # other writers go on while the layer is extracted
                result = self._ingest(record, stream)
            self._record_ingest(record, result)
            tx.commit(record)
        return record

    def _ingest(self, record: LayerRecord, stream: BinaryIO) -> IngestResult:
        """Extract, hash and record tar-split in one pass; the data durable and the tar-split
        file in place (none for an unreproducible archive) when it returns."""
        from graphdriver.fs.locking import claim

        final = self.tarsplit_path(record.id)
        staging = f"{final}.partial-{os.getpid()}"
        # Locked until it is in place or gone: cleanup tells a live import's file
        # from a dead one's by that lock (a zombie's or a reused pid would fool a pid).
        out = os.fdopen(claim(staging), "wb")
        try:
            try:
                from graphdriver.store import content

                result = content.apply(self.driver, record.id, stream, tarsplit_out=out,
                                       idmaps=self.layer_maps(record))
                out.flush()
                if result.repeated and not result.unreproducible:
                    result.unreproducible = _rewritten(staging, result.repeated)
            except BaseException:
                os.unlink(staging)
                raise
            self._sync()
            if result.unreproducible:
                # tar-split would rebuild the wrong bytes: keep the digests, not the metadata.
                os.unlink(staging)
            else:
                os.replace(staging, final)
                atomic.fsync_dir(os.path.dirname(final))
        finally:
            out.close()
        return result

    def _record_ingest(self, record: LayerRecord, result: IngestResult) -> None:
        """Fill *record* with what :meth:`_ingest` learnt (under the lock: the parent's chain id)."""
        record.unreproducible = result.unreproducible or None
        record.size = result.size
        record.diff_digest = result.diff_digest
        record.uncompressed_size = result.uncompressed_size
        record.compressed_digest = result.compressed_digest
        record.compressed_size = result.compressed_size
        record.compression = result.compression
        record.chain_id = self._chain_id(record.parent, result.diff_digest)

    def _chain_id(self, parent: str | None, diff_digest: str) -> str | None:
        """Docker's ChainID: the DiffID for a base, else sha256 of "<parent chain> <diff id>"."""
        if parent is None:
            return diff_digest
        parent_chain = self._find(parent).chain_id
        if parent_chain is None:
            return None
        import hashlib

        text = f"{parent_chain} {diff_digest}".encode()
        return "sha256:" + hashlib.sha256(text).hexdigest()

    def tarsplit_path(self, layer_id: str) -> str:
        return os.path.join(self.root, TARSPLIT_DIR, layer_id + TARSPLIT_SUFFIX)

    def apply(self, layer_id: str, stream: BinaryIO, parent: str | None = None) -> int:
        """Apply a (compressed) tarball to an existing layer (the seeds' ApplyDiff).

        Files cannot be put back as they were, so the record says the layer is
        damaged before the first one is touched and stops saying so only once
        the whole tarball is applied and durable: after a crash, or an archive
        that fails half way, the layer is reported damaged (exit 6) and refused
        by ``mount`` until it is removed, never taken for whole.

        A layer that holds nothing of its own yet (made by :meth:`create`, never
        applied to nor mounted writable: its record's ``fresh``) is recorded as
        :meth:`import_layer` records one: digests, tar-split data, so that
        ``diff`` gives back the applied bytes.  Any other forgets what an
        import recorded: the tarball no longer describes the layer alone.
        """
        lock: ApplyLock | None = None
        try:
            with self.locked():
                record, before = self._begin_apply(layer_id, parent)
                # Not mounted now either: a reader's view must not see files come and go
                # (a writable mount took the mark away already).
                fresh = bool(before.fresh) and before.size is None and before.diff_digest is None \
                    and self.driver.mount_count(layer_id) == 0
                # Until the apply ends, its lock tells its mark from a dead apply's: taken
                # before the mark, given back in the block that writes its last record.
                lock = self.records.hold_applying(layer_id)
                record.damaged = f"an apply started at {now_rfc3339()} did not finish"
                self.records.put(record)
            return self._apply_files(record, before, stream, lock, fresh=fresh)
        finally:
            if lock is not None:
                lock.release()  # an exit no record was written for (interrupted): damaged

    def _begin_apply(self, layer_id: str, parent: str | None) -> tuple[Layer, LayerRecord]:
        """Under the store lock: the refusals of :meth:`apply`, then its record with what the
        import recorded forgotten, and the record as it was."""
        record = self._find(layer_id)
        if record.read_only_store:
            raise Precondition(f"layer {layer_id}", "belongs to a read-only store")
        if parent is not None and parent != record.parent:
            self._find(parent)  # a parent that does not exist is not found (3), as everywhere
            raise InvalidArgument(
                f"--parent {parent}", f"layer {layer_id} sits on {record.parent or 'nothing'}"
            )
        self._refuse_damaged(record)
        # An image's layers are its DiffIDs: more applied would make the image another one.
        # A container's own writable layer takes more, as its mount does.
        self._refuse_held(layer_id, None, containers=False)
        before = self.records.get(layer_id)  # put back if the apply writes nothing
        # A child was made from (vfs: copied from; overlay: stacks on) the layer
        # as it is: changing it under the child would change what the child holds.
        children = self._dependents(layer_id)
        if children:
            raise Precondition(f"layer {layer_id}", f"has children: {', '.join(children)}")
        if self.driver.mount_count(layer_id) > 0 and not record.writable:
            raise Precondition(f"layer {layer_id}", "is mounted")
        self.driver.check_apply(layer_id)  # before the record says anything: a refusal changes nothing
        # Once more is applied, the imported tarball no longer describes the
        # layer: forget what the import recorded before touching the files.
        record.diff_digest = record.compressed_digest = record.chain_id = None
        record.compressed_size = record.uncompressed_size = record.unreproducible = None
        record.compression = record.mounted_writable = record.fresh = None
        return record, before

    def _apply_files(self, record: Layer, before: LayerRecord, stream: BinaryIO, lock: ApplyLock, *,
                     fresh: bool = False) -> int:
        """The files part of :meth:`apply`, the layer marked damaged until it is done; *fresh*:
        recorded as an import (the tar-split file is in place before the record names it)."""
        layer_id = record.id
        try:
            from graphdriver.store import content

            if fresh:
                result = self._ingest(record, stream)
            else:
                result = content.apply(self.driver, layer_id, stream, idmaps=self.layer_maps(record))
        except GraphDriverError as e:
            with self.locked():
                try:
                    stored: LayerRecord | None = self.records.get(layer_id)
                except NotFound:
                    stored = None  # removed meanwhile (a damaged layer may be): nothing to mark
                # Only the layer this apply marked: not one removed and made again meanwhile.
                if stored is not None and stored.damaged == record.damaged:
                    if e.wrote_nothing:
                        # A stream that is no tarball at all touched nothing: the layer,
                        # and what its import recorded, stay as they were.
                        stored = before
                    else:
                        stored.damaged = f"an apply failed half way: {e}"
                        self._forget_tarsplit(layer_id)
                    self.records.put(stored)
                lock.release()
            self._raise_explained(e, layer_id)  # its files gone: damaged (6), not "not found"
        if not fresh:
            self._sync()  # (an ingest syncs before it puts its tar-split file in place)
        with self.locked():
            stored = self.records.get(layer_id)
            stored.damaged = None
            if fresh:
                self._record_ingest(stored, result)
            else:
                stored.size = (stored.size or 0) + result.size
                self._forget_tarsplit(layer_id)
            self.records.put(stored)
            lock.release()
        return result.size

    def _forget_tarsplit(self, layer_id: str) -> None:
        """Drop the layer's tar-split data, if it has any (it no longer holds the imported tarball alone)."""
        remove_entry(self.tarsplit_path(layer_id))

    def _refuse_damaged(self, record: Layer, *, new_child: str | None = None) -> None:
        """IntegrityError naming the damaged layer when *record* or a layer below it is damaged.

        A damaged layer's files are half applied, and every union of a chain
        through it would show them: it is refused as a parent (*new_child*:
        the id of the layer about to be made on *record*) as it is for mount.
        """
        current: Layer | None = record
        seen: set[str] = set()
        while current is not None and current.id not in seen:
            damage = self.damage(current)
            if damage is not None and damage[0]:
                raise Precondition(f"layer {current.id}", f"is being applied to ({under_way(damage[1])})")
            if damage is not None:
                raise IntegrityError(f"layer {current.id}",
                                     self._damaged_why(current, damage[1], record, new_child))
            seen.add(current.id)
            try:
                current = self._find(current.parent) if current.parent is not None else None
            except GraphDriverError:
                return  # an unreadable ancestor is explained where its files are needed
        if current is not None:  # as check tells it: no union or comparison has an end
            raise IntegrityError(f"layer {record.id}",
                                 f"its chain loops back to layer {current.id} (corrupt metadata)")

    @staticmethod
    def _damaged_why(damaged: Layer, mark: str, record: Layer, new_child: str | None) -> str:
        remove = f"graphdriver remove {damaged.id} removes it"
        if new_child is not None:
            below = "" if damaged is record else f", below layer {record.id}"
            return f"is damaged ({mark}){below}, so layer {new_child} cannot be made on it; {remove}"
        if damaged is record:
            return f"is damaged ({mark}); {remove}"
        return f"is damaged ({mark}), and layer {record.id} sits on it"

    def damage(self, record: Layer) -> tuple[bool, str] | None:
        """What *record*'s damage mark means now: None for none (or an apply that has finished
        since the record was read), ``(True, mark)`` while the apply that wrote it still runs,
        ``(False, mark)`` for damage (an apply that failed, or died)."""
        if record.damaged is None:
            return None
        if record.read_only_store:
            return False, record.damaged
        if self.records.is_applying(record.id):
            return True, record.damaged
        try:
            fresh = self.records.get(record.id)  # read before an apply ended its mark and its lock?
        except GraphDriverError:
            return False, record.damaged
        if fresh.damaged is None:
            return None
        return self.records.is_applying(record.id), fresh.damaged

    def _refuse_damaged_chains(self, layer_id: str, base: str | None) -> None:
        """:meth:`_refuse_damaged` for a layer and the parent it is compared with."""
        record = self._find(layer_id)
        self._refuse_damaged(record)
        if base is not None and base != record.parent:
            self._refuse_damaged(self._find(base))

    def _sync(self) -> None:
        """Make the layer data durable before its record says it is complete."""
        atomic.syncfs(self.driver.home)

    # ----- mount -------------------------------------------------------------------------

    def mount(self, layer_id: str, mount_label: str = "", *, readonly: bool = False) -> str:
        """Make the layer's root filesystem available (counted: every mount needs an unmount).

        An imported layer that the driver hands out writable (a ``vfs`` tree)
        is recorded as ``mounted_writable`` first: its files may change behind
        its tarball's back, so ``diff`` checks them before giving back the
        imported bytes; a layer made by :meth:`create` loses its ``fresh`` mark
        (an apply to it is no longer recorded as an import).  *readonly*: the
        caller only reads, nothing is recorded.
        """
        # Found and mounted under the store lock: a removal checks the mount count and
        # removes under it, so it either sees this mount or is done before it (then: 3).
        with self.locked():
            record = self._find(layer_id)
            self._refuse_damaged(record)
            try:
                if not (readonly or (record.diff_digest is None and not record.fresh)
                        or record.read_only_store or not self.driver.writable_view(layer_id)):
                    # A diff that finds the layer unchanged forgets the mark only when no
                    # mount came in between (see :func:`graphdriver.store.integrity.changed`).
                    # A layer made by create holds something of its own from now on, maybe.
                    stored = self.records.get(layer_id)
                    if stored.diff_digest is not None:
                        stored.mounted_writable = now_rfc3339()
                    stored.fresh = None
                    self.records.put(stored)
                return self.driver.get(layer_id, mount_label)
            except (NotFound, IntegrityError) as e:
                # The union needs every ancestor's files too: a missing one is damage (6).
                self._raise_explained(e, layer_id, *self._ancestors(record), seen=record)

    def _ancestors(self, record: Layer) -> list[str]:
        """The ids below *record*, nearest first, as far as their records can be read."""
        out: list[str] = []
        parent = record.parent
        while parent is not None and parent not in out:
            out.append(parent)
            try:
                parent = self._find(parent).parent
            except GraphDriverError:
                break
        return out

    def mount_state(self, layer_id: str) -> tuple[int, str | None]:
        """How many mounts of the layer await their unmount, and where it is mounted (None: nowhere)."""
        self._find(layer_id)
        return self.driver.mount_state(layer_id)

    def unmount_all(self, layer_id: str) -> int:
        """Drop every mount count of the layer and unmount it (after a dead runtime); the counts dropped."""
        self._find(layer_id)
        return self.driver.put_all(layer_id)

    def unmount(self, layer_id: str) -> None:
        self._find(layer_id)
        try:
            self.driver.put(layer_id)
        except (NotFound, IntegrityError) as e:
            self._raise_explained(e, layer_id)

    def _explain(
        self, error: Exception, *layer_ids: str | None, seen: Layer | None = None
    ) -> Exception:
        """What a failure reading a layer's data means, told by the records.

        A layer removed while we read it (its record gone, its removal under
        way, or -- *seen* being the record we started from -- removed and made
        again under the same id) is simply not found, whatever broke on the
        way; a layer whose record stands but whose files are gone is damaged
        (exit 6); anything else is *error* itself.
        """
        for layer_id in filter(None, layer_ids):
            if self._being_removed(layer_id) or (
                seen is not None and layer_id == seen.id and self._remade(seen)
            ):
                return self._broken_chain(seen) or NotFound(
                    f"layer {layer_id}", "no such layer (it was removed meanwhile)")
        if isinstance(error, NotFound):
            for layer_id in filter(None, layer_ids):
                if error.what == f"layer {layer_id}":
                    return IntegrityError(
                        f"layer {layer_id}",
                        "its files are missing from the store (its record remains); "
                        f"graphdriver remove {layer_id} removes what is left",
                    )
        return error

    def _broken_chain(self, seen: Layer | None) -> IntegrityError | None:
        """Corrupt metadata where *seen*'s layer still stands but a layer of its chain has no
        record: no removal takes a layer from under a child, so it never was removed meanwhile."""
        if seen is None or self._being_removed(seen.id) or self._remade(seen):
            return None
        from graphdriver.store.integrity import missing_parent

        broken = missing_parent(self, seen)
        return IntegrityError(f"layer {seen.id}", broken) if broken else None

    def _raise_explained(
        self, error: Exception, *layer_ids: str | None, seen: Layer | None = None
    ) -> NoReturn:
        """Raise what *error* means (see :meth:`_explain`), chained to it when it differs."""
        explained = self._explain(error, *layer_ids, seen=seen)
        if explained is error:
            raise error
        raise explained from error

    def _remade(self, seen: Layer) -> bool:
        """Whether the layer of record *seen* is gone, its id now another layer's."""
        if seen.read_only_store:
            return False  # nobody removes a read-only store's layers through us
        try:
            return self.records.get(seen.id).created != seen.created
        except (NotFound, IntegrityError):
            return True

    def _being_removed(self, layer_id: str) -> bool:
        """Whether *layer_id* of this store is gone or its removal is under way."""
        if any(ro.exists(layer_id) for ro in self.readonly):
            return False  # nobody removes a read-only store's layers through us
        return not self.records.exists(layer_id) or self.records.is_pending(layer_id)

    # ----- changes and diffs ---------------------------------------------------------

    def _parent_for(self, record: Layer, parent: str | None) -> str | None:
        """What *record*'s layer is compared with: *parent* (which must exist), else its own."""
        if parent is None:
            return record.parent
        self._find(parent)
        return parent

    def changes(self, layer_id: str, parent: str | None = None) -> list[Change]:
        from graphdriver.store import content

        return self._compare(layer_id, parent, content.changes)

    def _compare(self, layer_id: str, parent: str | None, how: Callable[..., _T]) -> _T:
        """*how* (``content.changes`` or ``content.size``) of the layer over *parent*."""
        record = self._find(layer_id)
        base = self._parent_for(record, parent)
        self._refuse_damaged_chains(layer_id, base)
        try:
            owner = self._owner_translation(layer_id, base)
            # Trees stored under other maps are compared file by file, in container ids.
            return how(self.driver, layer_id, base, owner=owner, native=owner is None)
        except (GraphDriverError, OSError) as e:
            # Files may vanish under a reader when another process removes the layer.
            self._raise_explained(e, layer_id, base, *self._ancestors(record), seen=record)

    def diff(
        self, layer_id: str, out: BinaryIO, parent: str | None = None, *, regenerate: bool = False,
        exact: bool = False,
    ) -> None:
        """The layer tarball: exactly the imported bytes while the layer is unchanged.

        An imported layer's recorded ``diff_digest`` is a promise: its tarball
        is rebuilt from tar-split data, or :class:`IntegrityError` says why it
        cannot be (the data is missing, or the archive overwrote its own
        files, or a file's content differs from its checksum).  *regenerate*
        asks for a tarball built from the files instead, whose digest differs
        from the recorded one; a diff against another parent than the layer's
        own is always built from the files.

        A layer the store mounted writable since its import (``mounted_writable``)
        is first checked against its tarball (see :meth:`changed_since_import`):
        unchanged, it gives the imported bytes; changed, its tarball no longer
        describes it, so the tarball is built from its files as they are now,
        as for a layer never imported -- or, with *exact* (what an image's
        DiffID needs), :class:`IntegrityError` says what changed.
        """
        record = self._find(layer_id)
        base = self._parent_for(record, parent)
        self._refuse_damaged_chains(layer_id, base)
        try:
            self._diff(record, base, out, regenerate, exact)
        except (GraphDriverError, OSError) as e:
            # Files may vanish under a reader when another process removes the layer.
            explained = self._explain(e, layer_id, base, *self._ancestors(record), seen=record)
            if explained is e:
                from graphdriver.store.integrity import of_layer

                explained = of_layer(e, layer_id)
            if explained is e:
                raise
            raise explained from e

    def _diff(self, record: Layer, base: str | None, out: BinaryIO, regenerate: bool,
              exact: bool = False) -> None:
        layer_id = record.id
        if base == record.parent and record.diff_digest is not None and not regenerate:
            if record.unreproducible:
                raise IntegrityError(
                    f"layer {layer_id}",
                    f"cannot be re-exported exactly ({record.unreproducible}); "
                    "diff --regenerate builds a tarball from its files, with another digest",
                )
            from graphdriver.store import integrity

            if not integrity.has_tarsplit(self, record):
                raise IntegrityError(
                    f"layer {layer_id}",
                    f"its tar-split data is missing ({integrity.tarsplit_of(self, record)}), so the "
                    f"imported tarball {record.diff_digest} cannot be rebuilt; diff --regenerate builds "
                    "one from its files, with another digest",
                )
            changed = integrity.changed(self, record) if integrity.may_have_changed(self, record) else None
            if changed is None:
                integrity.reassemble(self, record, out.write)
                return
            if exact:
                raise IntegrityError(f"layer {layer_id}", integrity.changed_why(record, changed))
        from graphdriver.store import content

        owner = self._owner_translation(layer_id, base)
        content.export(self.driver, layer_id, base, out, idmaps=_export_maps(self.layer_maps(record)),
                       owner=owner, native=owner is None)

    def changed_since_import(self, layer_id: str) -> str | None:
        """Why imported layer *layer_id* no longer gives back its imported tarball (None: it does).

        Only a layer the store handed out writable since its import is looked
        at (see :meth:`diff`); the files of any other are taken as imported
        (``check`` compares them with the tarball whatever their history).
        """
        from graphdriver.store import integrity

        return integrity.changed_since_import(self, layer_id)

    def tarsplit(self, layer_id: str, out: BinaryIO) -> None:
        """Write the layer's tar-split metadata (gzip-compressed NDJSON).

        :class:`NotFound` for a layer that has none (not imported, changed by
        ``apply`` since, or an archive that cannot be re-exported exactly);
        :class:`IntegrityError`, before anything is written, when the record
        says it was kept but it is missing or is not sound tar-split metadata
        of the imported tarball, or when the layer's files changed through a
        writable mount since (as ``diff`` finds it): the metadata would
        rebuild other files than the layer's.
        """
        from graphdriver.store import integrity

        integrity.tarsplit(self, layer_id, out)

    def check(self, layer_ids: Sequence[str] = ()) -> list[tuple[str, str | None]]:
        """Re-export layers and compare with their DiffIDs: (id, None if good else why).

        Every layer is reported, a corrupt record as what is wrong with it; one
        bad layer never stops the others from being checked.
        """
        from graphdriver.store import integrity

        return integrity.check(self, layer_ids)

    def diff_size(self, layer_id: str, parent: str | None = None) -> int:
        from graphdriver.store import content

        return self._compare(layer_id, parent, content.size)

    # ----- base images -----------------------------------------------------------------

    def base_images(self) -> list[Any]:
        """Register the driver's base images as read-only layers and list them.

        The seeds' ``GetCustomImageInfos``: ids are derived from the images'
        folder names, so registering again changes nothing.
        """
        from graphdriver.drivers.values import BaseImages

        driver = self.driver
        if not isinstance(driver, BaseImages):
            raise Unsupported("base-images", f"the {self.driver_name} driver has no base images")
        with self.locked():
            self._settle()  # registering writes layers
            infos = driver.base_images()
            for info in infos:
                if not self.records.exists(info.id):
                    self.records.put(LayerRecord(
                        id=info.id, parent=None, created=info.created or now_rfc3339(),
                        writable=False, driver=self.driver_name, size=info.size or None,
                    ))
        return infos

    # ----- remove and cleanup ----------------------------------------------------------

    def remove(self, layer_id: str, *, holder: str | None = None) -> None:
        """Delete a layer; refused while mounted, while it has children, or while an image or a
        container holds it (*holder*: the one removing it, ``container NAME``, does not count).

        A layer whose record is corrupt can be removed too (its record, and its
        folder if it has one): naming it is the owner's word, which ``cleanup``
        never takes for granted.
        """
        if not self._record_is_corrupt(layer_id):
            record = self._find(layer_id)
            if record.read_only_store:
                raise Precondition(f"layer {layer_id}", "belongs to a read-only store")
        # A removal that fails half way is finished by the next cleanup, never undone.
        with self._transaction(layer_id, "remove", undo="finish-later") as tx:
            if not self.records.exists(layer_id):  # removed by another process meanwhile
                raise NotFound(f"layer {layer_id}", "no such layer")
            self.refuse_removal(layer_id, holder)
            tx.mark()
            try:
                # Asked even when the layer's files cannot be resolved (a base image's
                # folder gone): what of it is the driver's goes with the record.
                self.driver.remove(layer_id)
            except NotFound:
                pass  # no folder of its own left
            except Precondition:
                # Refused before anything was removed: the layer stays, so no
                # later cleanup may finish a removal the caller was told failed.
                self.records.clear_pending(layer_id)
                raise
            self._forget_tarsplit(layer_id)
            tx.commit(None)

    def refuse_removal(self, layer_id: str, holder: str | None = None, *, going: Sequence[str] = ()) -> None:
        """Precondition when :meth:`remove` would refuse *layer_id* as it stands: mounted, with
        children (other than those in *going*, removed first), being applied to, or held by an
        image or a container other than *holder*."""
        children = [c for c in self._dependents(layer_id) if c not in going]
        if children:
            raise Precondition(f"layer {layer_id}", f"has children: {', '.join(children)}")
        if self.driver.mount_count(layer_id) > 0:
            raise Precondition(f"layer {layer_id}", "is mounted")
        if self.records.is_applying(layer_id):
            raise Precondition(f"layer {layer_id}", "is being applied to: an apply is under way")
        self._refuse_held(layer_id, holder)

    def _refuse_held(self, layer_id: str, holder: str | None, *, containers: bool = True) -> None:
        """Precondition while an image or (unless not *containers*) a container other than
        *holder* holds *layer_id*.

        Their records live beside the layers (see :mod:`graphdriver.images.holders`);
        a store that has none pays nothing for asking.
        """
        if not any(os.path.isdir(os.path.join(self.root, d)) for d in ("images", "containers")):
            return
        from graphdriver.images.holders import holders

        users = [h for h in holders(self, layer_id, containers=containers) if h != holder]
        if users:
            raise Precondition(f"layer {layer_id}", f"is used by {', '.join(users)}")

    def _record_is_corrupt(self, layer_id: str) -> bool:
        """Whether this store holds a complete record of *layer_id* that cannot be read."""
        check_id(layer_id)
        if not self.records.exists(layer_id) or self.records.is_pending(layer_id):
            return False
        try:
            self.records.get(layer_id)
        except IntegrityError:
            return True
        except NotFound:
            pass
        return False

    def cleanup(self) -> list[str]:
        """Finish or undo whatever a crash interrupted; one line per thing done (see :mod:`.recovery`)."""
        from graphdriver.store import recovery

        return recovery.cleanup(self)

    def drop_layer(self, layer_id: str) -> None:
        """Under the lock: delete whatever exists of a pending layer (folder, tar-split, record, marker)."""
        driver = self.driver
        try:
            if driver.exists(layer_id) and not driver.is_readonly_store(layer_id):
                driver.remove(layer_id)
        except NotFound:
            pass
        self._forget_tarsplit(layer_id)
        self.records.delete(layer_id)
        self.records.clear_pending(layer_id)


def read_settings(root: str, what: str) -> dict[str, str] | None:
    """The ``store.json`` of the store at *root* (*what* names it in errors); None when there is
    none.  IntegrityError (exit 6) unless it is one this version reads: a driver name, id maps
    that parse, a format number not above its own (Unsupported, exit 7, when a newer version
    wrote it); a file this user may not read is told as such (:func:`os_error`)."""
    try:
        settings = atomic.read_json(os.path.join(root, STORE_FILE))
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise os_error(what, e) from e
    except (OSError, ValueError) as e:
        raise IntegrityError(what, f"unreadable {STORE_FILE}: {e}") from e
    if not isinstance(settings, dict) or not isinstance(settings.get("driver"), str):
        raise IntegrityError(what, f"malformed {STORE_FILE}")
    version = settings.get("format", FORMAT_VERSION)
    if type(version) is not int or version < 1:
        raise IntegrityError(what, f"malformed {STORE_FILE}: format {shorten(repr(version))}")
    if version > FORMAT_VERSION:
        raise Unsupported(what, f"{STORE_FILE} has format {version}, written by a newer graphdriver "
                                f"(this one reads format {FORMAT_VERSION})")
    maps = (settings.get("uidmap", ""), settings.get("gidmap", ""))
    if not all(isinstance(m, str) for m in maps):
        raise IntegrityError(what, f"malformed {STORE_FILE}: id maps are not strings")
    if any(maps):
        from graphdriver.idmap import IDMappings

        try:
            IDMappings.parse(*maps)
        except InvalidArgument as e:
            raise IntegrityError(what, f"malformed {STORE_FILE}: {e.why}") from e
    from graphdriver.drivers import check_name

    try:
        check_name(settings["driver"])
    except InvalidArgument as e:  # nothing the user typed: a driver another graphdriver has
        raise Unsupported(what, f"{STORE_FILE} names driver {shorten(settings['driver'])!r}, which this "
                                f"graphdriver does not have ({e.why})") from e
    return settings


def _same_maps(idmaps: IDMappings, settings: dict[str, str]) -> bool:
    """Whether *idmaps* are the maps ``store.json`` (*settings*) fixed.  A uid map alone
    given to an earlier version's API left groups unmapped (``gidmap`` empty): the same uid
    map, its groups now defaulting to it, opens that store as it was made."""
    uids, gids = settings.get("uidmap", ""), settings.get("gidmap", "")
    if str(idmaps.uids) != uids:
        return False
    return str(idmaps.gids) == gids or (not gids and str(idmaps.gids) == uids)


def _export_maps(maps: IDMappings) -> IDMappings:
    """The maps a tarball of a layer's files is written with: without root, the user's own
    ids are root's (see :class:`graphdriver.idmap.OwnIDAsRoot`)."""
    if not maps.identity or privileged():
        return maps
    from graphdriver.idmap import IDMappings, OwnIDAsRoot

    return IDMappings(OwnIDAsRoot(os.geteuid()), OwnIDAsRoot(os.getegid()))


def _refuse_maps_unprivileged(idmaps: IDMappings | None) -> None:
    """Id maps store files owned by the mapped ids: without root they cannot be given (exit 7)."""
    if idmaps is not None and not idmaps.identity and not privileged():
        raise Unsupported("--uidmap/--gidmap", "id maps need root (files are stored owned by the mapped "
                          "ids); without root a store keeps the user's own")


def _rewritten(tarsplit: str, repeated: tuple[str, ...]) -> str | None:
    """Why a tarball naming the files *repeated* twice cannot be rebuilt from its files, as the
    tar-split metadata at *tarsplit* tells it: one of them came with other bytes (None if each
    came with the same bytes every time, which rebuilding reads back each time)."""
    from graphdriver.layerio.tarsplit import first_rewritten

    with open(tarsplit, "rb") as f:
        name = first_rewritten(f, repeated)
    return None if name is None else f"{name!r} appears twice"


def under_way(mark: str) -> str:
    """What a live apply's mark says: "an apply started at T is under way"."""
    return f"{mark.removesuffix(' did not finish')} is under way"


class StoreLock:
    """The store lock (:class:`graphdriver.fs.locking.locked` on ``store.lock``), its folder
    made first.  On a root this block made (*made*: the folders it found missing, deepest
    first), what the block did not make a store of (no ``store.json``) goes again: the lock
    file first (removed while held, which sends any waiter to take the lock anew, see
    :mod:`graphdriver.fs.locking`), then the folders.  The lock module is loaded at the
    first lock: listing and reading records take none."""

    def __init__(self, root: str, settings: str, made: list[str]) -> None:
        self.path = os.path.join(root, LOCK_FILE)
        self.root = root
        self.settings = settings
        self.made = made
        self._held: locked | None = None

    def __enter__(self) -> int:
        from graphdriver.fs.locking import locked

        self._held = locked(self.path)
        try:
            for _ in range(99):
                try:
                    os.makedirs(self.root, 0o700, exist_ok=True)
                    return self._held.__enter__()
                except FileNotFoundError:
                    continue  # a first command that stored nothing took the new folders away meanwhile
            os.makedirs(self.root, 0o700, exist_ok=True)
            return self._held.__enter__()
        except PermissionError as e:  # a store of another user's: a missing privilege (exit 7)
            self._held = None
            raise os_error(f"store {self.root}", e) from e

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        held, self._held = self._held, None
        if held is None:
            return  # never entered, or left already
        if not self.made:
            held.__exit__(kind, value, tb)
            return
        try:
            if not os.path.exists(self.settings):
                atomic.remove_file(self.path)
        finally:
            held.__exit__(kind, value, tb)
        for folder in self.made:  # deepest first; one something else now holds stays
            try:
                os.rmdir(folder)
            except OSError:
                break

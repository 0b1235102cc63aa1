"""uid/gid maps (the seeds' ``uidMaps``/``gidMaps``).

A map is a list of ``(container_id, host_id, size)`` ranges, as in
``/proc/PID/uid_map``.  Applying a layer maps archive owners (container ids)
to host ids; exporting maps them back, so an export equals what was imported.
"""

from __future__ import annotations

from graphdriver.errors import InvalidArgument

#: The largest uid/gid (2^32 - 2: 2^32 - 1 is the kernel's "no id").
MAX_ID = 2**32 - 2


class IDRange:
    """``size`` ids from ``container_id`` on, stored from ``host_id`` on."""

    __slots__ = ("container_id", "host_id", "size")

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        self.container_id = container_id
        self.host_id = host_id
        self.size = size

    def _key(self) -> tuple[int, int, int]:
        return (self.container_id, self.host_id, self.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IDRange) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"IDRange{self._key()}"


class IDMap:
    """One direction-agnostic id map; the empty map is the identity."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: tuple[IDRange, ...] = ()) -> None:
        self.ranges = tuple(ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IDMap) and other.ranges == self.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        return f"IDMap({self.ranges!r})"

    @classmethod
    def parse(cls, text: str) -> IDMap:
        """Parse ``"0:100000:65536[,...]"`` (container:host:size triples)."""
        ranges: list[IDRange] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                c, h, s = (int(x) for x in part.split(":"))
            except ValueError as e:
                raise InvalidArgument(f"invalid id map {part!r}", "expected container:host:size") from e
            if c < 0 or h < 0 or s <= 0:
                raise InvalidArgument(f"invalid id map {part!r}", "ids must be >= 0 and size > 0")
            if c + s > MAX_ID + 1 or h + s > MAX_ID + 1:
                raise InvalidArgument(f"invalid id map {part!r}", f"reaches past the last id, {MAX_ID}")
            for r in ranges:
                for mine, theirs, side in ((c, r.container_id, "container"), (h, r.host_id, "host")):
                    if mine < theirs + r.size and theirs < mine + s:
                        raise InvalidArgument(f"invalid id map {text!r}", f"{side} ids overlap")
            ranges.append(IDRange(c, h, s))
        return cls(tuple(ranges))

    @property
    def identity(self) -> bool:
        return not self.ranges

    def to_host(self, container_id: int) -> int:
        """The host id for *container_id* (unchanged by the identity map)."""
        if not self.ranges:
            return container_id
        for r in self.ranges:
            if r.container_id <= container_id < r.container_id + r.size:
                return r.host_id + container_id - r.container_id
        raise InvalidArgument(f"id {container_id}", "is not covered by the id map")

    def to_container(self, host_id: int) -> int:
        """The container id for *host_id* (unchanged by the identity map)."""
        if not self.ranges:
            return host_id
        for r in self.ranges:
            if r.host_id <= host_id < r.host_id + r.size:
                return r.container_id + host_id - r.host_id
        raise InvalidArgument(f"host id {host_id}", "is not covered by the id map")

    def __str__(self) -> str:
        return ",".join(f"{r.container_id}:{r.host_id}:{r.size}" for r in self.ranges)


class OwnIDAsRoot(IDMap):
    """How an unprivileged store's files read in the tarballs built from them: the user's own id
    is root's, as in a rootless container's user namespace (the owners an archive gave could
    not be set: the files are the user's); any other id is itself."""

    __slots__ = ("own",)

    def __init__(self, own: int) -> None:
        super().__init__()
        self.own = own

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OwnIDAsRoot) and other.own == self.own

    def __hash__(self) -> int:
        return hash(("own", self.own))

    def to_container(self, host_id: int) -> int:
        return 0 if host_id == self.own else host_id


class IDMappings:
    """The uid map and gid map of a store."""

    __slots__ = ("gids", "uids")

    def __init__(self, uids: IDMap | None = None, gids: IDMap | None = None) -> None:
        self.uids = uids if uids is not None else IDMap()
        self.gids = gids if gids is not None else IDMap()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IDMappings) and (other.uids, other.gids) == (self.uids, self.gids)

    def __hash__(self) -> int:
        return hash((self.uids, self.gids))

    def __repr__(self) -> str:
        return f"IDMappings({self.uids!r}, {self.gids!r})"

    @property
    def identity(self) -> bool:
        return self.uids.identity and self.gids.identity

    @classmethod
    def parse(cls, uidmap: str, gidmap: str) -> IDMappings:
        return cls(IDMap.parse(uidmap), IDMap.parse(gidmap))

    def translate(self, other: IDMappings, uid: int, gid: int) -> tuple[int, int]:
        """Host ids stored under these maps, as *other* stores the same container ids."""
        try:
            return (other.uids.to_host(self.uids.to_container(uid)),
                    other.gids.to_host(self.gids.to_container(gid)))
        except InvalidArgument as e:
            raise InvalidArgument(f"owner {uid}:{gid}",
                                  f"not expressible in the layer's id maps ({e})") from None

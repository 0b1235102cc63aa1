"""One change to a layer of the store: the store lock, the layer's pending marker, commit or undo.

Every mutation that makes or removes a layer runs as a transaction::

    with Transaction(store, "base", "import") as tx:   # locked; "base" marked pending
        ...                                            # checks and driver work, locked
        with tx.unlocked():                            # long work (extraction) without
            ...                                        # holding up other writers
        tx.commit(record)                              # record written, marker cleared

Until :meth:`Transaction.commit` the layer is pending: other commands do not
see it, and after a crash ``cleanup`` (run when a store is opened) removes
what was made, told apart from live work by the marker's lock, which this
process holds.  Leaving the block with an error undoes the work at once
(``undo="remove"``: the driver's folder, the tar-split file and the record
go), or, for a removal, leaves the marker so that ``cleanup`` finishes it
(``undo="finish-later"``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.store.layers import Store, StoreLock
    from graphdriver.store.records import LayerRecord


class Transaction:
    """The store lock held and *layer_id* marked pending for a ``with`` block (see the module)."""

    __slots__ = ("_lock", "committed", "layer_id", "marked", "operation", "store", "undo")

    def __init__(self, store: Store, layer_id: str, operation: str, *, undo: str = "remove") -> None:
        self.store = store
        self.layer_id = layer_id
        self.operation = operation
        self.undo = undo
        self.committed = False
        self.marked = False  # only what this transaction marked is ever undone
        self._lock: StoreLock | None = None

    def __enter__(self) -> Transaction:
        self._take_lock()
        return self

    def _take_lock(self) -> None:
        """Take the store lock; held once this returns (not when taking it failed)."""
        lock = self.store.locked()
        lock.__enter__()
        self._lock = lock

    def mark(self, record: LayerRecord | None = None) -> None:
        """Mark the layer pending (from here on a crash is cleaned up), writing *record* if given."""
        self.store.records.mark_pending(self.layer_id, self.operation)
        self.marked = True
        if record is not None:
            self.store.records.put(record)

    def unlocked(self) -> _Unlocked:
        """Release the store lock for a block of long work; the pending marker stays."""
        return _Unlocked(self)

    def commit(self, record: LayerRecord | None = None) -> None:
        """Write *record* (or, with None, delete the layer's record) and clear the marker."""
        records = self.store.records
        if record is not None:
            records.put(record)
        else:
            records.delete(self.layer_id)
        records.clear_pending(self.layer_id)
        self.committed = True

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        try:
            if self.marked and not self.committed and kind is not None and self.undo == "remove":
                if self._lock is None:  # an error while unlocked: take the lock back to undo
                    self._take_lock()
                self.store.drop_layer(self.layer_id)
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.__exit__(kind, value, tb)


class _Unlocked:
    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    def __enter__(self) -> None:
        lock, self.tx._lock = self.tx._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:  # on an error the transaction's exit retakes the lock to undo
            self.tx._take_lock()  # interrupted while waiting: not held, and the exit knows

"""Commands that read whole layer trees, without root: a folder of mode 0000 in a layer.

Without root, a folder its owner may not list or search stops a walk.  On a
store where the process may become root of a user namespace mapping only its
own user (:meth:`Store.read_as_owner <graphdriver.store.layers.Store.read_as_owner>`),
such a command runs there instead:

- a command that fails for such a folder, undone by its failure, runs once
  more there, when what it wrote can be taken back (standard output untouched,
  ``/dev/null``, or a regular file written at its end, cut back; see
  :func:`graphdriver.cliio.may_begin_again`);
- a command whose bytes go out as they are made where they cannot be taken
  back (a pipe, a device, ``-o /dev/stdout``) looks for such a folder in the
  trees it will read first, and runs there from the start when it finds one.

Any other refusal stands as before.
"""

from __future__ import annotations

import os
import sys

from graphdriver.errors import GraphDriverError, cause_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from graphdriver.cliargs import Args
    from graphdriver.store.layers import Store

def run(handler: Callable[[Store, Args], int], store: Store, args: Args) -> int:
    """``handler(store, args)``, as root of the owner namespace where a closed folder needs it.

    (:mod:`graphdriver.cliio` is loaded only where it is asked: ``create`` comes here too.)
    """
    if _streams_trees(args) and store.may_read_as_owner():
        from graphdriver import cliio

        if not cliio.output_restartable(args.output) and _closed_folder(store, args):
            store.read_as_owner()
    try:
        return handler(store, args)
    except (GraphDriverError, OSError) as e:
        from graphdriver import cliio

        if not denied(e) or not cliio.may_begin_again():
            raise
        _let_go(e)  # what the failed run holds (a compressor's threads) goes before unshare
        if not store.read_as_owner():
            raise
        cliio.begin_again()
    return handler(store, args)


def _streams_trees(args: Args) -> bool:
    """Whether the command may write what it reads from layer trees as it goes: ``diff`` (of
    the stored compressed bytes, it reads no tree: :func:`_closed_folder` tells), ``image
    save`` of an archive (refused to a terminal)."""
    if args.command == "diff":
        return True
    if args.command == "image save":
        if args.output in (None, "-"):
            return args.format != "oci" and sys.stdout is not None and not sys.stdout.isatty()
        return True
    return False


def _closed_folder(store: Store, args: Args) -> bool:
    """Whether a tree the streaming command will read holds a folder closed to its owner
    (whatever fails here is left for the command itself to report)."""
    try:
        if args.command == "diff":
            if args.compress == "original":
                from graphdriver.images.kept import original_blob

                if original_blob(store, args.id) is not None:
                    return False  # a file of the image store, read whole: no tree
            layers = [args.id, args.parent or store.record(args.id).parent]
        else:
            from graphdriver.images import manage

            layers = []
            below = manage.image(store, args.name).top_layer
            while below is not None and below not in layers:
                layers.append(below)
                below = store.record(below).parent
        return store.closed_folder(layer for layer in layers if layer is not None) is not None
    except (GraphDriverError, OSError):
        return False


def _chain(err: BaseException) -> list[BaseException]:
    """*err* and the causes behind it (as ``-v`` shows them), nearest first."""
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and seen not in chain and len(chain) < 16:
        chain.append(seen)
        seen = cause_of(seen)
    return chain


def denied(err: BaseException) -> bool:
    """Whether *err* comes of a folder of the user's that its mode closes to the user
    (EACCES reading it, named relative to a walk's folder or by a path to such a folder),
    not of the output the user named or of a folder the user made read-only."""
    chain = _chain(err)
    if any(getattr(e, "writing_output", False) for e in chain):
        return False
    for e in chain:
        if isinstance(e, PermissionError) and e.errno == 13 and e.filename:
            name = os.fsdecode(e.filename)
            if not name.startswith("/"):
                return True  # opened relative to a folder of a walk
            from graphdriver.fs.longpaths import ShortPaths

            try:
                with ShortPaths() as short:  # a layer's path may be too long with the store's before it
                    st = os.lstat(short(name))
            except OSError:
                return False
            import stat

            closed = st.st_mode & 0o500 != 0o500
            return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and closed
    return False


def _let_go(err: BaseException) -> None:
    """Drop the frames *err*'s chain holds, and their locals (streams, threads of a failed
    run): a frame of a nested function holds that function, and with it what it closes over."""
    import traceback

    for e in _chain(err):
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None

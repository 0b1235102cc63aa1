"""The ``graphdriver`` command line: a thin shell over the API of :mod:`graphdriver`.

The contract (names, outputs, exit codes) is ``shared/spec/cli.md``.  Each
command calls one store function; errors print as one line
``graphdriver: <what failed>: <why>`` and exit with the error's code.
"""

from __future__ import annotations

import os
import sys

from graphdriver import jsonio
from graphdriver.cliargs import CLOSED_STDOUT, COMMANDS, PROG, Args, help_text, parse
from graphdriver.errors import (
    GraphDriverError,
    InvalidArgument,
    Unsupported,
    cause_of,
    os_error,
    set_warning_handler,
)
from graphdriver.ids import check_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from graphdriver.idmap import IDMappings
    from graphdriver.store.layers import Store
    from graphdriver.store.records import Layer


def _open_store(args: Args) -> Store:
    """The store the global options name (``cleanup`` opens it without recovering first,
    so that what it repairs is its own work, printed line by line).  A new store is
    made by the first command that stores a layer, never by a read-only one."""
    import graphdriver

    return graphdriver.open_store(
        args.root,
        run_root=args.run_root,
        driver=args.driver,
        options=args.opt,
        uidmap=args.uidmap or "",
        gidmap=args.gidmap or "",  # --uidmap alone maps groups alike (open_store)
        additional_stores=args.additional_store,
        recover=args.command != "cleanup",
        create=False,
    )


#: How ``Store.check`` words a layer it could not verify (not a failure).
SKIPPED = "skipped: "
#: ... because a mode keeps this user out of its files.
UNREADABLE = SKIPPED + "its files cannot be read by this user"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def one_line(text: str) -> str:
    """*text* with control characters escaped (``\\n``, ``\\x1b``, ...), so that a message
    quoting a name stays one line on stderr and cannot move a terminal's cursor.  A byte of a
    name that is not UTF-8 shows as the byte (``\\x83``), whether it reached the message as
    a character or as the ``\\udc83`` ``repr`` made of it."""
    if "\\udc" in text:
        import re

        text = re.sub(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])", r"\1\\x\2", text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    if "\udc80" <= c <= "\udcff":  # a byte os.fsdecode could not decode
        return f"\\x{ord(c) - 0xDC00:02x}"
    return repr(c)[1:-1]


def warn(text: str) -> None:
    """One line on stderr: ``graphdriver: <text>`` (nothing when stderr is closed)."""
    if sys.stderr is not None:
        sys.stderr.write(f"{PROG}: {one_line(text)}\n")


def cmd_status(store: Store, args: Args) -> int:
    pairs = store.status()
    if args.json:
        _out(jsonio.show({"driver": store.driver_name, "status": dict(pairs)}))
    else:
        _out(store.driver_name)
        for key, value in pairs:
            _out(one_line(f"{key}: {value}"))  # a path with a newline cannot forge a line
    return 0


def _layer_maps(args: Args, default: Callable[[], IDMappings]) -> IDMappings | None:
    """The id maps given to create, import or apply (None: none given).

    ``--gidmap`` defaults to the ``--uidmap`` given; ``--gidmap`` alone keeps the
    uid map the layer would have had (*default*: its parent's, else the store's),
    as containers-storage's ``create-layer`` does.
    """
    if not args.layer_uidmap and not args.layer_gidmap:
        return None
    from graphdriver.idmap import IDMappings

    uids = ",".join(args.layer_uidmap) if args.layer_uidmap else str(default().uids)
    gids = ",".join(args.layer_gidmap) if args.layer_gidmap else uids
    return IDMappings.parse(uids, gids)


def _parent_maps(store: Store, parent: str | None) -> Callable[[], IDMappings]:
    """The maps a new layer on *parent* takes when it is given none."""
    return lambda: store.layer_maps(store.record(parent)) if parent is not None else store.idmaps


def _result(args: Args, text: str, value: dict[str, object]) -> None:
    """A command's one result: *text* as it is, or *value* as JSON with ``--json``."""
    _out(jsonio.show(value) if args.json else text)


def _result_or_undo(args: Args, text: str, value: dict[str, object], undo: Callable[[], object]) -> None:
    """Print a command's result now; if it cannot be written (exit 1), *undo* what the command
    did, so that a caller told it failed finds nothing to clean up."""
    try:
        _result(args, text, value)
        _flush_stdout()
    except BaseException:
        try:
            undo()
        except Exception:  # the failure to report is the output's; the undo's is secondary
            pass
        raise


def cmd_create(store: Store, args: Args) -> int:
    maps = _layer_maps(args, _parent_maps(store, args.parent))
    record = store.create(args.id, args.parent, writable=args.rw, size=args.size,
                          mount_label=args.mount_label, idmaps=maps)
    _result_or_undo(args, args.id, record.display(), lambda: store.remove(args.id))
    return 0


def cmd_import(store: Store, args: Args) -> int:
    from graphdriver.cliio import input_stream

    with input_stream(args.file, "import", args.id, args.quiet) as stream:
        maps = _layer_maps(args, _parent_maps(store, args.parent))
        record = store.import_layer(args.id, args.parent, stream, idmaps=maps)
    _result_or_undo(args, str(record.size or 0), record.display(), lambda: store.remove(args.id))
    return 0


def cmd_apply(store: Store, args: Args) -> int:
    from graphdriver.cliio import input_stream

    maps = _layer_maps(args, lambda: store.layer_maps(store.record(args.id)))
    if maps is not None and maps != store.layer_maps(store.record(args.id)):
        raise InvalidArgument(f"--uidmap/--gidmap for layer {args.id}", "it was created with other id maps")
    with input_stream(args.file, "apply", args.id, args.quiet) as stream:
        size = store.apply(args.id, stream, args.parent)
    _result(args, str(size), {"id": args.id, "size": size})
    return 0


def cmd_mount(store: Store, args: Args) -> int:
    path = store.mount(args.id, args.mount_label)
    # The path never went out: no caller would give this mount back.
    _result_or_undo(args, path, {"id": args.id, "path": path}, lambda: store.unmount(args.id))
    return 0


def cmd_unmount(store: Store, args: Args) -> int:
    if args.force:
        dropped = store.unmount_all(args.id)
        text = f"unmounted {args.id} (dropped {dropped} mount{'s' if dropped != 1 else ''})"
        _result(args, text, {"id": args.id, "dropped": dropped})
        return 0
    store.unmount(args.id)
    return 0


def cmd_mounted(store: Store, args: Args) -> int:
    count = store.mount_state(args.id)[0]
    _result(args, str(count), {"id": args.id, "mount_count": count})
    return 0


def cmd_exists(store: Store, args: Args) -> int:
    return 0 if store.exists(args.id) else 3


def cmd_layers(store: Store, args: Args) -> int:
    records, corrupt = store.scan_layers()
    bad: list[tuple[str, GraphDriverError]] = [*corrupt]
    if args.json:
        records = _with_metadata(store, records, bad)
        _out(jsonio.show([r.display() for r in records]))
    else:
        sys.stdout.writelines(f"{r.id}\n" for r in records)
    # A corrupt record or a damaged layer is named, not fatal: the layers are listed
    # (`check` exits 6 for them).  A record this user may not read is named too, and
    # the listing exits 7 (a missing privilege), as for a records folder it may not read.
    for _layer_id, error in bad:
        warn(str(error))
    for r in records:
        damage = store.damage(r)
        if damage is not None and not damage[0]:  # a live apply's mark is no damage
            warn(f"layer {r.id}: is damaged ({damage[1]})")
    return Unsupported.exit_code if any(isinstance(e, Unsupported) for _, e in corrupt) else 0


def _with_metadata(
    store: Store, records: list[Layer], bad: list[tuple[str, GraphDriverError]]
) -> list[Layer]:
    """*records* with the driver's facts filled in: one whose files are missing keeps empty
    metadata and is added to *bad*; one removed meanwhile is left out."""
    from graphdriver.errors import NotFound

    listed = []
    for r in records:
        try:
            store.fill_metadata(r)
        except NotFound:
            continue
        except GraphDriverError as e:
            bad.append((r.id, e))
        listed.append(r)
    return listed


def cmd_layer(store: Store, args: Args) -> int:
    value = store.layer(args.id).display()
    _out(jsonio.show(value, indent=None if args.json else 2))
    return 0


def cmd_changes(store: Store, args: Args) -> int:
    changes = store.changes(args.id, args.parent)
    if args.json:
        _out(jsonio.show([c.to_json() for c in changes]))
    else:
        sys.stdout.writelines(f"{c}\n" for c in changes)
    return 0


def cmd_diff(store: Store, args: Args) -> int:
    from graphdriver import progress
    from graphdriver.cliio import output_stream

    kind = args.compress or "none"
    if kind == "original":
        from graphdriver.images.kept import original_blob

        if args.regenerate or (args.parent is not None and args.parent != store.record(args.id).parent):
            raise InvalidArgument("--compress original", "gives back the bytes the layer came in, over "
                                  "its own parent: it takes no other --parent and no --regenerate")
        path = original_blob(store, args.id)
        if path is None:  # it came as its uncompressed tarball, which its exact diff is
            with output_stream(args.output, args.command, "a tarball") as out:
                store.diff(args.id, out, exact=True)
            return 0
        with output_stream(args.output, args.command, "a tarball") as out, open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        return 0
    from graphdriver.layerio.compression import Compression, open_compressor

    codec = Compression(kind)  # one of the option's choices, checked when parsed
    total = store.record(args.id).uncompressed_size if args.parent is None else None
    label = f"diff {args.id}"
    with output_stream(args.output, args.command, "a tarball") as raw:
        # The bar counts the tarball's bytes, before any compression; a plain diff
        # writes straight to the output.
        packer = raw if codec is Compression.NONE else open_compressor(raw, codec, threads=-1)
        try:
            with progress.writing(packer, label, total, args.quiet) as out:
                store.diff(args.id, out, args.parent, regenerate=args.regenerate)
        except BaseException:
            if packer is not raw:
                try:
                    packer.close()  # its threads end now, not when the error is dropped
                except Exception:
                    pass  # the failure that brought us here is the one to report
            raise
        if packer is not raw:
            packer.close()
    return 0


def cmd_diffsize(store: Store, args: Args) -> int:
    size = store.diff_size(args.id, args.parent)
    _result(args, str(size), {"id": args.id, "size": size})
    return 0


def cmd_remove(store: Store, args: Args) -> int:
    store.remove(args.id)
    return 0


def print_lines(args: Args, lines: list[str]) -> None:
    """What a repair did: one line each (a name in it escaped as in an error line), or a JSON
    list with --json."""
    if args.json:
        _out(jsonio.show(lines))
    else:
        for line in lines:
            _out(one_line(line))


def cmd_cleanup(store: Store, args: Args) -> int:
    print_lines(args, store.cleanup())
    return 0


def cmd_tarsplit(store: Store, args: Args) -> int:
    from graphdriver.cliio import output_stream

    with output_stream(args.output, args.command, "tar-split metadata") as out:
        store.tarsplit(args.id, out)
    return 0


def _check_entry(layer_id: str, why: str | None) -> dict[str, object]:
    """One layer of ``check --json``: ok true (verified), false (bad) or null (skipped, with why)."""
    why = None if why is None else one_line(why)
    skipped = why is not None and why.startswith(SKIPPED)
    return {"id": layer_id, "ok": None if skipped else why is None, "skipped": skipped,
            "error": None if skipped else why, "reason": why[len(SKIPPED):] if skipped and why else None}


def cmd_check(store: Store, args: Args) -> int:
    results = store.check(args.ids)
    if any(why and why.startswith(UNREADABLE) for _, why in results) and store.read_as_owner():
        results = store.check(args.ids)  # as root of a namespace of the user's own: read whole
    bad = [(layer_id, why) for layer_id, why in results if why and not why.startswith(SKIPPED)]
    if args.json:
        _out(jsonio.show([_check_entry(i, why) for i, why in results]))
    else:
        for layer_id, why in results:
            _out(one_line(f"{layer_id}: {why or 'ok'}"))
    for layer_id, why in bad:
        warn(f"layer {layer_id}: {why}")
    return 6 if bad else 0


def cmd_base_images(store: Store, args: Args) -> int:
    infos = store.base_images()
    if args.json:
        _out(jsonio.show([i.to_json() for i in infos]))
    else:
        for i in infos:
            features = ",".join(i.os_features) or "-"
            _out(f"{i.id} {i.name} {i.version} {i.os_version or '-'} {features} {i.path}")
    return 0


def cmd_group(store: Store, args: Args) -> int:
    """``image ...`` and ``container ...``: their module is loaded only for them."""
    from graphdriver import climages

    return climages.HANDLERS[args.command](store, args)


HANDLERS: dict[str, Callable[[Store, Args], int]] = {
    "status": cmd_status,
    "create": cmd_create,
    "import": cmd_import,
    "apply": cmd_apply,
    "mount": cmd_mount,
    "unmount": cmd_unmount,
    "mounted": cmd_mounted,
    "exists": cmd_exists,
    "layers": cmd_layers,
    "layer": cmd_layer,
    "changes": cmd_changes,
    "diff": cmd_diff,
    "diffsize": cmd_diffsize,
    "remove": cmd_remove,
    "cleanup": cmd_cleanup,
    "tarsplit": cmd_tarsplit,
    "check": cmd_check,
    "base-images": cmd_base_images,
    **{name: cmd_group for name in COMMANDS if " " in name or name in ("tree", "df", "prune")},
}


def _validate_ids(args: Args) -> None:
    """Ids are checked before the store is touched (usage error)."""
    if "ID" in COMMANDS[args.command].args:
        check_id(args.id)
    if args.parent is not None:
        check_id(args.parent, "parent id")
    for layer_id in args.ids:
        check_id(layer_id)
    if args.command == "container create":
        # A new container's name is shorter than a layer id: NAME-init is one too.
        from graphdriver.images.container_layers import check_new_name

        check_new_name(args.name)
    elif args.command.startswith("container ") and args.name:
        check_id(args.name, "container name")


def _self_help(args: Args) -> int:
    """``help``, ``completion`` and ``man``: about the command line itself, no store."""
    from graphdriver import clihelp
    from graphdriver.cliargs import GROUPS, UsageError, unknown_command

    if args.command == "help":
        topic = " ".join(args.topic) or None
        if topic is not None and topic not in COMMANDS and topic not in GROUPS:
            raise unknown_command(topic)
        sys.stdout.write(clihelp.help_text(topic))
    elif args.command == "completion":
        if args.shell not in ("bash", "zsh", "fish"):
            raise UsageError(f"no completion for {args.shell!r}: bash, zsh or fish", "completion")
        sys.stdout.write(clihelp.completion(args.shell))
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("graphdriver")
        except PackageNotFoundError:
            release = ""
        sys.stdout.write(clihelp.man_page(release))
    return 0


#: Commands that print nothing when they succeed: they run with standard output closed.
_SILENT = frozenset({"exists", "remove", "image tag", "image save", "container rm"})


def _needs_stdout(args: Args) -> bool:
    """Whether the command prints on standard output (``diff -o FILE`` does not)."""
    if args.help or args.version or args.command in ("help", "completion", "man"):
        return True
    if args.command in ("diff", "tarsplit"):
        return args.output in (None, "-")
    if args.command == "unmount":
        return args.force
    return args.command not in _SILENT


def _run(args: Args) -> int:
    if sys.stdout is None and _needs_stdout(args):
        # Refused before any work: a layer made whose id could not be printed helps no one.
        raise InvalidArgument("standard output", CLOSED_STDOUT)
    if args.help:
        sys.stdout.write(help_text(args.command or None))
        return 0
    if args.version:
        from graphdriver import __version__

        sys.stdout.write(f"graphdriver {__version__}\n")
        return 0
    if args.command in ("help", "completion", "man"):
        return _self_help(args)
    _validate_ids(args)
    set_warning_handler(_ignore if args.quiet else warn)  # one line as the others; none with -q
    store = _open_store(args)
    handler = HANDLERS[args.command]
    if args.command in _READS_TREES:
        from graphdriver import cliowner

        return cliowner.run(handler, store, args)
    return handler(store, args)


#: Commands that do little and end at once: the launchers keep the cyclic garbage collector
#: off for them (start-up alone would run it about ten times, for no garbage).
QUICK = frozenset({"status", "layers", "exists", "layer", "mounted", "mount", "unmount", "help",
                   "completion", "man", "image ls", "container ls"})


#: Commands that make or fill layers: under an open-file limit too low to finish, or to
#: undo, they are refused before they start.
_MAKES_LAYERS = frozenset({"create", "import", "apply", "container create", "container commit",
                           "image load", "image pull"})


#: Commands that read whole layer trees (``create`` with a parent: a child's copy of its
#: parent's), and undo what they did when that fails (see :mod:`graphdriver.cliowner`).
_READS_TREES = frozenset({"changes", "diff", "diffsize", "tarsplit", "create",
                          "container create", "container commit", "image save", "image push",
                          "tree", "df"})


def _ignore(_text: str) -> None:
    """Where warnings go with ``-q``."""


def _flush_stdout() -> None:
    """Write out what is buffered while errors can still be reported (not at exit)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _drop_stdout()  # what stays buffered would fail again at exit, past the one line
        raise GraphDriverError("standard output", e.strerror or str(e)) from e


def _report(err: BaseException, args: Args | None) -> None:
    """The one line; with ``-v``, a line more for each cause behind it (not a traceback:
    those are for internal errors only), none the same as the line before it (urllib3 and
    requests wrap one SSLError in another of the same words)."""
    warn(str(err))
    if args is None or not args.verbose or sys.stderr is None:
        return
    seen = {id(err)}
    cause = cause_of(err)
    last = ""
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        line = f"{PROG}:   caused by {type(cause).__name__}: {cause}\n"
        if line != last:
            sys.stderr.write(line)
        last = line
        cause = cause_of(cause)


def _internal(path: str) -> bool:
    """Whether *path* is one of the store's own working files (a half-written file, a staging
    folder, a lock): an error line names what the user named instead."""
    return any(part.startswith((".tmp-", ".staging")) or part.endswith(".lock") for part in path.split("/"))


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): not a failure to report, as for other tools.

    Standard output is pointed at /dev/null so that the flush at exit cannot fail again.
    """
    _drop_stdout()
    return 1


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit cannot fail again (Python
    would then say so in lines of its own and exit with 120)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    code = _main(argv)
    _settle_stdout()
    return code


def _settle_stdout() -> None:
    """Write out what is still buffered after a failure (what was printed before it); output
    that cannot be written was reported or is past reporting, and is dropped (see
    :func:`_drop_stdout`)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _drop_stdout()


def _main(argv: Sequence[str] | None) -> int:
    args: Args | None = None
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if args.command not in QUICK:
            import gc

            from graphdriver.fs import fdlimit

            gc.enable()  # long work: its garbage cycles are collected (the launcher held off)
            fdlimit.raise_soft_limit()  # and deep trees are walked with fewer folders reopened
            if args.command in _MAKES_LAYERS:  # refused before the work, not undone half way
                fdlimit.require_free(args.command)
        code = _run(args)
        _flush_stdout()
        return code
    except GraphDriverError as e:
        _report(e, args)
        return e.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f" {e.filename}" if e.filename and not _internal(str(e.filename)) else ""
        if not where and args is not None and getattr(args, "id", None):
            where = f" {args.id}"
        what = args.command if args is not None and args.command else "error"
        _report(OSError(f"{what}{where}: {e.strerror or e}"), None)
        return os_error(what, e).exit_code  # a permission refused is a missing privilege (7)
    except Exception as e:  # a bug: still one line, the traceback with -v
        _report(RuntimeError(f"internal error: {type(e).__name__}: {e}"), None)
        if args is not None and args.verbose and sys.stderr is not None:
            import traceback

            traceback.print_exc()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``graphdriver`` command line: a thin shell over :mod:`graphdriver.store`.

The contract (names, outputs, exit codes) is ``shared/spec/cli.md``.  Each
command calls one store function; errors print as one line
``graphdriver: <what failed>: <why>`` and exit with the error's code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from graphdriver.errors import GraphDriverError, InvalidArgument
from graphdriver.ids import check_id

if TYPE_CHECKING:
    from graphdriver.store import Store

PROG = "graphdriver"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="A container layer store.")
    p.add_argument("--root", help="the store (default $GRAPHDRIVER_ROOT or /var/lib/graphdriver)")
    p.add_argument("--run-root", help="runtime state (default $GRAPHDRIVER_RUNROOT or /run/graphdriver)")
    p.add_argument("--driver", help="overlay, vfs, windowsfilter (default: the store's, else probed)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="driver option (repeatable)")
    p.add_argument("--additional-store", action="append", default=[], metavar="DIR",
                   help="a read-only store whose layers are listed and used as parents (repeatable)")
    p.add_argument("--uidmap", metavar="C:H:N[,...]", help="uid map of a new store")
    p.add_argument("--gidmap", metavar="C:H:N[,...]", help="gid map of a new store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="less on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="more on stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("status", help="driver name and status")
    c = sub.add_parser("create", help="create an empty layer")
    c.add_argument("id")
    c.add_argument("--parent")
    c.add_argument("--rw", action="store_true", help="a writable container layer")
    c.add_argument("--size", help="size limit of a --rw layer (e.g. 20G)")
    c.add_argument("--mount-label", default="")
    for name, text in (("import", "create a layer from a tarball"),
                       ("apply", "apply a tarball to a layer")):
        c = sub.add_parser(name, help=text)
        c.add_argument("id")
        c.add_argument("--parent")
        c.add_argument("file", nargs="?", default=None, metavar="FILE|-")
    for name in ("mount", "unmount", "exists", "layer", "remove"):
        c = sub.add_parser(name, help=f"{name} a layer")
        c.add_argument("id")
    sub.choices["mount"].add_argument("--mount-label", default="")
    sub.add_parser("layers", help="list layers")
    for name in ("changes", "diff", "diffsize"):
        c = sub.add_parser(name, help=f"{name} of a layer")
        c.add_argument("id")
        c.add_argument("--parent")
    sub.choices["diff"].add_argument("-o", "--output", metavar="FILE")
    sub.add_parser("cleanup", help="finish or undo interrupted work")
    c = sub.add_parser("tarsplit", help="the layer's tar-split metadata")
    c.add_argument("id")
    c.add_argument("-o", "--output", metavar="FILE")
    sub.add_parser("base-images", help="(windowsfilter) register and list the configured base images")
    c = sub.add_parser("check", help="re-export layers and compare with their digests")
    c.add_argument("ids", nargs="*", metavar="ID")
    for c in sub.choices.values():
        # `graphdriver layers --json` works as well as `graphdriver --json layers`.
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output")
    return p


def _open_store(args: argparse.Namespace) -> Store:
    from graphdriver.idmap import IDMap, IDMappings
    from graphdriver.store import open_store

    idmaps = None
    if args.uidmap or args.gidmap:
        idmaps = IDMappings(IDMap.parse(args.uidmap or ""), IDMap.parse(args.gidmap or ""))
    return open_store(
        root=args.root,
        run_root=args.run_root,
        driver=args.driver,
        driver_options=args.opt,
        idmaps=idmaps,
        additional_stores=tuple(args.additional_store),
    )


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


@contextlib.contextmanager
def _input(path: str, args: argparse.Namespace, label: str) -> Iterator[BinaryIO]:
    from graphdriver import progress

    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        with progress.reading(stream, label, None, args.quiet) as s:
            yield s
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}", e.strerror or str(e)) from e
    with f, progress.reading(f, label, progress.file_size(f), args.quiet) as s:
        yield s


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[BinaryIO]:
    """stdout, or FILE written whole: a failed export leaves no partial file."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_status(store: Store, args: argparse.Namespace) -> int:
    pairs = store.status()
    if args.json:
        _out(json.dumps({"driver": store.driver_name, "status": dict(pairs)}))
    else:
        _out(store.driver_name)
        for key, value in pairs:
            _out(f"{key}: {value}")
    return 0


def cmd_create(store: Store, args: argparse.Namespace) -> int:
    store.create(args.id, args.parent, writable=args.rw, size=args.size,
                 mount_label=args.mount_label)
    _out(args.id)
    return 0


def cmd_import(store: Store, args: argparse.Namespace) -> int:
    with _input(args.file, args, f"import {args.id}") as stream:
        record = store.import_layer(args.id, args.parent, stream)
    _out(json.dumps(record.display()) if args.json else str(record.size or 0))
    return 0


def cmd_apply(store: Store, args: argparse.Namespace) -> int:
    with _input(args.file, args, f"apply {args.id}") as stream:
        size = store.apply(args.id, stream, args.parent)
    _out(str(size))
    return 0


def cmd_mount(store: Store, args: argparse.Namespace) -> int:
    _out(store.mount(args.id, args.mount_label))
    return 0


def cmd_unmount(store: Store, args: argparse.Namespace) -> int:
    store.unmount(args.id)
    return 0


def cmd_exists(store: Store, args: argparse.Namespace) -> int:
    return 0 if store.exists(args.id) else 3


def cmd_layers(store: Store, args: argparse.Namespace) -> int:
    records = store.layers()
    if args.json:
        for r in records:
            r.metadata = store.driver.metadata(r.id)
        _out(json.dumps([r.display() for r in records]))
    else:
        for r in records:
            _out(r.id)
    return 0


def cmd_layer(store: Store, args: argparse.Namespace) -> int:
    _out(json.dumps(store.layer(args.id).display(), indent=None if args.json else 2))
    return 0


def cmd_changes(store: Store, args: argparse.Namespace) -> int:
    changes = store.changes(args.id, args.parent)
    if args.json:
        _out(json.dumps([{"path": c.path, "kind": c.kind.value} for c in changes]))
    else:
        sys.stdout.writelines(f"{c}\n" for c in changes)
    return 0


def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    from graphdriver import progress

    total = store.layer(args.id).uncompressed_size if args.parent is None else None
    with _output(args.output) as raw, progress.writing(raw, f"diff {args.id}", total, args.quiet) as out:
        store.diff(args.id, out, args.parent)
    return 0


def cmd_diffsize(store: Store, args: argparse.Namespace) -> int:
    _out(str(store.diff_size(args.id, args.parent)))
    return 0


def cmd_remove(store: Store, args: argparse.Namespace) -> int:
    store.remove(args.id)
    return 0


def cmd_cleanup(store: Store, args: argparse.Namespace) -> int:
    done = store.cleanup()
    if args.json:
        _out(json.dumps(done))
    else:
        for line in done:
            _out(line)
    return 0


def cmd_tarsplit(store: Store, args: argparse.Namespace) -> int:
    with _output(args.output) as out:
        store.tarsplit(args.id, out)
    return 0


def cmd_check(store: Store, args: argparse.Namespace) -> int:
    results = store.check(args.ids)
    bad = [(layer_id, why) for layer_id, why in results if why and not why.startswith("skipped")]
    if args.json:
        _out(json.dumps([{"id": i, "ok": why is None, "error": why} for i, why in results]))
    else:
        for layer_id, why in results:
            _out(f"{layer_id}: {why or 'ok'}")
    for layer_id, why in bad:
        sys.stderr.write(f"{PROG}: layer {layer_id}: {why}\n")
    return 6 if bad else 0


def cmd_base_images(store: Store, args: argparse.Namespace) -> int:
    infos = store.base_images()
    if args.json:
        _out(json.dumps([i.to_json() for i in infos]))
    else:
        for i in infos:
            features = ",".join(i.os_features) or "-"
            _out(f"{i.id} {i.name} {i.version} {i.os_version or '-'} {features} {i.path}")
    return 0


COMMANDS: dict[str, Callable[[Store, argparse.Namespace], int]] = {
    "status": cmd_status,
    "create": cmd_create,
    "import": cmd_import,
    "apply": cmd_apply,
    "mount": cmd_mount,
    "unmount": cmd_unmount,
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
}


def _validate_ids(args: argparse.Namespace) -> None:
    """Ids are checked before the store is touched (usage error)."""
    if getattr(args, "id", None) is not None:
        check_id(args.id)
    if getattr(args, "parent", None) is not None:
        check_id(args.parent, "parent id")
    for layer_id in getattr(args, "ids", None) or ():
        check_id(layer_id)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting FILE follow options (``import ID --parent P FILE``).

    argparse matches all positionals of a command at once, so an optional
    FILE after ``--parent P`` would be left over; take it here.
    """
    args, extras = parser.parse_known_args(argv)
    lone_file = len(extras) == 1 and (extras[0] == "-" or not extras[0].startswith("-"))
    if lone_file and getattr(args, "file", "") is None:
        args.file, extras = extras[0], []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if getattr(args, "file", "") is None:
        args.file = "-"
    return args


def _report(err: BaseException, args: argparse.Namespace | None) -> None:
    sys.stderr.write(f"{PROG}: {err}\n")
    if args is not None and args.verbose:
        traceback.print_exception(err, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _build_parser()
    args: Any = None
    try:
        args = _parse(parser, argv)
        _validate_ids(args)
        store = _open_store(args)
        return COMMANDS[args.command](store, args)
    except GraphDriverError as e:
        _report(e, args)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not our failure to report.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        sys.stderr.write(f"{PROG}: {args.command if args else 'error'}{where}: {e.strerror or e}\n")
        if args is not None and args.verbose:
            traceback.print_exc()
        return 1
    except Exception as e:  # a bug: still one line, the traceback with -v
        sys.stderr.write(f"{PROG}: internal error: {type(e).__name__}: {e}\n")
        if args is not None and args.verbose:
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

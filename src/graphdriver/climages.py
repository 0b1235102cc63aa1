"""The ``image`` and ``container`` commands (imported only when one runs)."""

from __future__ import annotations

import sys

from graphdriver import jsonio
from graphdriver.cliargs import PROG, Args, UsageError
from graphdriver.errors import IntegrityError, Unsupported
from graphdriver.images import manage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from graphdriver.errors import GraphDriverError
    from graphdriver.images.overview import Usage
    from graphdriver.images.records import ImageRecord
    from graphdriver.store.layers import Store


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def image_load(store: Store, args: Args) -> int:
    # An archive comes from standard input when piped in, never from a terminal (it would wait
    # for bytes no one types), as ``image save`` writes none to one.
    if args.source == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("standard input is a terminal; give an archive file or pipe one", args.command)
    report = _reporter(args)
    if args.json:  # one JSON document: a list, however many images the archive held
        loaded = manage.load_named(store, args.source, platform=args.platform, quiet=args.quiet,
                                   report=report)
        _out(jsonio.show([_ls_json(store, record) for record, _ in loaded]))
        return 0

    def told(record: ImageRecord, names: list[str]) -> None:
        # The names the archive gave, as Docker prints them: each image as it is stored, so
        # that one failing later leaves those before it told.
        for name in names or [record.id]:
            _out(name)

    manage.load_named(store, args.source, platform=args.platform, quiet=args.quiet, report=report, each=told)
    return 0


def _reporter(args: Args) -> Callable[[str], None]:
    """Where load, pull and push tell which layers they skipped: part of the progress shown on
    a terminal, quiet otherwise (the one line of an error stays one line), unless -v asks."""
    from graphdriver import progress

    shown = not args.quiet and (args.verbose or progress.wanted())

    def report(line: str) -> None:
        if shown:
            sys.stderr.write(line + "\n")

    return report


def _insecure(args: Args) -> bool:
    """``--insecure``, or podman's ``--tls-verify=false`` (or another of Go's spellings of false,
    ``0``, ``f``, ...); ``--insecure`` with a true one contradicts it (exit 2)."""
    from graphdriver.cliargs import FALSE_WORDS

    verify = args.tls_verify is not None and args.tls_verify not in FALSE_WORDS
    if args.insecure and verify:
        raise UsageError(f"--insecure and --tls-verify={args.tls_verify} contradict each other", args.command)
    return args.insecure or args.tls_verify in FALSE_WORDS


def image_pull(store: Store, args: Args) -> int:
    from graphdriver.images import distribution, reference

    record = distribution.pull(store, args.ref, insecure=_insecure(args), platform=args.platform,
                               quiet=args.quiet, report=_reporter(args))
    # The reference pulled, in full: its tag, or for a pull by digest the digested reference.
    _out(jsonio.show(_ls_json(store, record)) if args.json else str(reference.parse(args.ref)))
    return 0


def image_push(store: Store, args: Args) -> int:
    from graphdriver.images import distribution

    ref = args.ref or _push_target(store, args)
    digest = distribution.push(store, args.name, ref, insecure=_insecure(args), quiet=args.quiet,
                               report=_reporter(args))
    _out(jsonio.show({"name": args.name, "ref": ref, "digest": digest}) if args.json else digest)
    return 0


def _push_target(store: Store, args: Args) -> str:
    """Where ``image push NAME`` (no REF) sends the image, as ``docker push NAME`` does: to NAME
    itself, which must then name it (an image id or id prefix names no repository)."""
    from graphdriver.images.records import ImageStore

    _, by_name = ImageStore(store.root).lookup(args.name)  # not found: exit 3
    if not by_name:
        raise UsageError(f"{args.name!r} is an image id, which names no repository to push to: give REF",
                         args.command)
    return str(args.name)


def image_save(store: Store, args: Args) -> int:
    fmt = args.format or "docker-archive"
    if args.output and args.output != "-":
        manage.save(store, args.name, args.output, fmt, quiet=args.quiet)
        return 0
    # An archive goes to standard output, as ``docker save`` writes it, but never to a terminal.
    if fmt == "oci":
        raise UsageError("image save --format oci needs -o DIR (an OCI layout is a folder)", args.command)
    from graphdriver.cliio import refuse_terminal, stdout

    refuse_terminal(args.command, "an archive")

    manage.save(store, args.name, stdout(), fmt, quiet=args.quiet)
    return 0


def image_ls(store: Store, args: Args) -> int:
    from graphdriver.images.records import ImageStore

    records, bad = ImageStore(store.root).scan()
    if args.json:
        _out(jsonio.show([_ls_json(store, r) for r in records]))
    else:
        rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "LAYERS"]]
        for r in records:
            created = _utc(manage.created(store, r)) or "-"
            rows += [[repo, tag, r.id[7:19], created, str(len(r.layers))] for repo, tag in _repo_tags(r)]
        _table(rows)
    # A corrupt record is named, not fatal: the other images are listed.  A record this
    # user may not read is named too, and the listing exits 7, as `layers` does.
    for error in bad:
        sys.stderr.write(f"{PROG}: {error}\n")
    return 7 if any(isinstance(e, Unsupported) for e in bad) else 0


def _utc(text: str) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS`` in UTC, as the tables show times (what
    is no such time, shown as it is).

    A time in UTC already (``Z``, as this store and most images write them) is cut out as
    :func:`_utc_parsed` would give it, without loading ``re`` and ``datetime``: a listing
    called by scripts pays for neither."""
    digits = text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    if (len(text) >= 20 and text[-1] in "Zz" and text[10] in "T " and digits.isdecimal()
            and text[4] + text[7] + text[13] + text[16] == "--::"
            and (len(text) == 20 or (text[19] == "." and text[20:-1].isdecimal()))):
        return text[:10] + " " + text[11:19]
    return _utc_parsed(text)


def _utc_parsed(text: str) -> str:
    """:func:`_utc` of any time, its offset applied."""
    import re

    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.\d+)?([Zz]|[+-]\d\d:\d\d)", text)
    if m is None:
        return text[:19].replace("T", " ")
    import datetime

    offset = "+00:00" if m[3] in "Zz" else m[3]
    try:
        when = datetime.datetime.fromisoformat(f"{m[1]}T{m[2]}{offset}").astimezone(datetime.UTC)
    except (ValueError, OverflowError):  # a day or hour no calendar has: an image's config says anything
        return text[:19].replace("T", " ")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _ls_json(store: Store, record: ImageRecord) -> dict[str, object]:
    """The record, its ``created`` the image's (as the table shows it), ``stored`` when it came here."""
    value = record.to_json()
    value["stored"] = record.created
    value["created"] = manage.created(store, record)
    return value


def _repo_tags(record: ImageRecord) -> list[tuple[str, str]]:
    """The (REPOSITORY, TAG) rows of an image: each name, then each repository it was pulled
    from by digest alone (tag ``<none>``, as podman shows it); ``<none>`` twice for neither."""
    from graphdriver.errors import InvalidArgument
    from graphdriver.images import reference

    rows = []
    for name in (*record.names, *record.digests):
        try:
            ref = reference.parse(name)
        except InvalidArgument:  # a name no longer valid: shown as it is
            rows.append((name, "<none>"))
            continue
        if ref.digest is None:
            rows.append((ref.repository, ref.tag or "<none>"))
        elif ref.repository not in {repo for repo, _ in rows}:
            rows.append((ref.repository, "<none>"))
    return rows or [("<none>", "<none>")]


def image_inspect(store: Store, args: Args) -> int:
    _out(jsonio.show(manage.inspect(store, args.name), indent=None if args.json else 2))
    return 0


def image_tag(store: Store, args: Args) -> int:
    manage.tag(store, args.name, args.new)
    return 0


def _each(names: list[str], act: Callable[[str], None],
          failed: Callable[[str, GraphDriverError], None] | None = None) -> int:
    """*act* on each name in turn, as ``docker rmi`` and ``docker rm`` go: one that fails is
    one line on stderr (and told to *failed*) and the others go on; returns the first
    failure's exit code (0: none).  A single name's failure is raised as it is."""
    from graphdriver.cli import warn
    from graphdriver.errors import GraphDriverError

    code = 0
    for name in names:
        try:
            act(name)
        except GraphDriverError as e:
            if len(names) == 1:
                raise
            warn(str(e))
            code = code or e.exit_code
            if failed is not None:
                failed(name, e)
    return code


def image_rm(store: Store, args: Args) -> int:
    """With ``--json``, one object; for several names a list, an object for each in order,
    with its ``name`` (and for one that failed, its ``error`` and ``exit_code``)."""
    done: list[dict[str, Any]] = []

    def remove(name: str) -> None:
        result = _remove_image(store, name, args.force)
        done.append({"name": name, **result})
        if args.json:
            return
        for gone in result["untagged"]:
            _out(f"Untagged: {gone}")
        if result["deleted"] is not None:
            _out(f"Deleted: {result['deleted']}")
            for layer_id in result["deleted_layers"]:
                _out(f"Deleted layer: {layer_id}")

    def failed(name: str, e: GraphDriverError) -> None:
        done.append({"name": name, "error": str(e), "exit_code": e.exit_code})

    code = _each(args.names, remove, failed)
    if args.json:
        if len(args.names) == 1:
            del done[0]["name"]
        _out(jsonio.show(done[0] if len(args.names) == 1 else done))
    return code


def _remove_image(store: Store, name: str, force: bool) -> dict[str, Any]:
    """Remove one name (or image): what was untagged, the image deleted, the layers freed."""
    try:
        done = manage.remove(store, name, force=force)
    except IntegrityError:
        gone = manage.remove_unreadable(store, name)  # by its full id, an unreadable record goes
        if gone is None:
            raise
        return {"untagged": [], "deleted": gone, "deleted_layers": []}
    return {"untagged": done.untagged, "deleted": done.deleted, "deleted_layers": done.freed}


def container_create(store: Store, args: Args) -> int:
    from graphdriver.images import container_layers as ctrs

    container = ctrs.create(store, args.image, args.name, size=args.size)
    _out(jsonio.show(container.to_json()) if args.json else args.name)
    return 0


def container_commit(store: Store, args: Args) -> int:
    from graphdriver.images import container_layers as ctrs

    record = ctrs.commit(store, args.name, args.image)
    _out(jsonio.show(record.to_json()) if args.json else record.id)
    return 0


def container_rm(store: Store, args: Args) -> int:
    from graphdriver.images import container_layers as ctrs

    return _each(args.names, lambda name: ctrs.remove(store, name))


def container_ls(store: Store, args: Args) -> int:
    from graphdriver.images import container_layers as ctrs

    found, bad = ctrs.scan(store)
    shown = ctrs.shown_images(store, found)  # the IMAGE column, and ``image_name`` in JSON
    if args.json:
        _out(jsonio.show([{**c.to_json(), "image_name": shown[c.name]} for c in found]))
    else:
        rows = [["NAME", "IMAGE", "CREATED"]]
        rows += [[c.name, shown[c.name], _utc(c.created)] for c in found]
        _table(rows)
    for error in bad:  # named, not fatal, as a corrupt image or layer record
        sys.stderr.write(f"{PROG}: {error}\n")
    return 0


def _unreadable_named(seen: Usage) -> int:
    """Name on stderr each layer record the overview could not read, as ``layers`` names them:
    exit 7 when one is closed to this user (its layers are not counted), else 0."""
    for _layer_id, error in seen.unreadable:
        sys.stderr.write(f"{PROG}: {error}\n")
    return Unsupported.exit_code if any(isinstance(e, Unsupported) for _, e in seen.unreadable) else 0


def tree(store: Store, args: Args) -> int:
    from graphdriver.images import overview

    seen = overview.Usage(store)
    if args.json:
        _out(jsonio.show(overview.tree_nodes(store, seen)))
    else:
        for line in overview.tree(store, seen):
            _out(line)
    return _unreadable_named(seen)


def df(store: Store, args: Args) -> int:
    from graphdriver.images import overview

    seen = overview.Usage(store)
    usage = overview.df(store, seen)
    if args.json:
        _out(jsonio.show(usage))
        return _unreadable_named(seen)
    from graphdriver.units import format_size as h

    i, c, ly = usage["images"], usage["containers"], usage["layers"]
    _table([
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        ["Images", str(i["total"]), str(i["active"]), h(i["size"]), h(i["reclaimable"])],
        ["Containers", str(c["total"]), str(c["total"]), h(c["size"]), h(0)],
        ["Layers (no image or container)", str(ly["total"]), "0", h(ly["size"]),
         f"{h(ly['reclaimable'])} ({h(ly['reclaimable_with_layers'])} with prune --layers)"],
    ])
    return _unreadable_named(seen)


def prune(store: Store, args: Args) -> int:
    from graphdriver.cli import print_lines
    from graphdriver.images import overview

    print_lines(args, overview.prune(store, layers=args.layers))
    return 0


HANDLERS: dict[str, Callable[[Store, Args], int]] = {
    "tree": tree,
    "df": df,
    "prune": prune,
    "image load": image_load,
    "image save": image_save,
    "image pull": image_pull,
    "image push": image_push,
    "image ls": image_ls,
    "image inspect": image_inspect,
    "image tag": image_tag,
    "image rm": image_rm,
    "container create": container_create,
    "container commit": container_commit,
    "container rm": container_rm,
    "container ls": container_ls,
}

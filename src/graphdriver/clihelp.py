"""What each command does, at length: the one source of ``--help``, ``help``, ``man`` and completion.

:mod:`graphdriver.cliargs` holds the command table (names, arguments,
options, one-line summaries) that the parser reads on every call; this
module adds, per command, its group, a description, the exit codes that
matter and examples, and renders them as help text, a man page (roff) and
shell completion scripts.  Imported only when one of those is asked for.
"""

# ruff: noqa: E501  (the prose of the help table reads better unbroken than split at 110 columns)

from __future__ import annotations

from graphdriver.cliargs import COMMANDS, GLOBAL_OPTIONS, PROG, Command, Option

#: Groups, in the order ``--help`` lists them.
GROUPS = {
    "layers": "Layers",
    "images": "Images",
    "containers": "Containers",
    "maintenance": "Maintenance",
}

EXIT_CODES = {
    0: "success",
    1: "any other failure",
    2: "usage error (bad arguments)",
    3: "not found (layer, parent, image)",
    4: "already exists",
    5: "failed precondition (in use, has children, wrong driver)",
    6: "integrity failure (digest or checksum mismatch, corrupt metadata)",
    7: "unsupported here (kernel feature, filesystem, privilege)",
}


#: The two ways a tarball fails import and apply (errors.CorruptArchive and errors.ArchiveError).
_CORRUPT = "the tarball is corrupt (truncated, a bad header checksum or compressed data)"
_REFUSED = "an entry is refused (reaching outside the layer, a hardlink to nothing, ...)"
_DENIED = "writing an entry needs a permission this user lacks (a folder of the parent's of mode 0000, say)"
#: Where import and apply read no tarball: standard input that no tarball is piped into.
_TERMINAL = "- (or no FILE) with a terminal on (or closed) standard input"


class Doc:
    """The long help of one command."""

    __slots__ = ("description", "examples", "exits", "group")

    def __init__(self, group: str, description: str, examples: list[tuple[str, str]],
                 exits: dict[int, str] | None = None) -> None:
        self.group = group
        self.description = description
        self.examples = examples
        self.exits = exits or {}


DOCS: dict[str, Doc] = {
    "status": Doc("maintenance", "Prints the driver's name, then key: value lines: the store's root and run root, "
                  "what the driver probed (backing filesystem, overlay features), the number of layers and the "
                  "codec implementations in use.",
                  [("graphdriver status", "what the store runs on"),
                   ("graphdriver --json status", "the same as JSON")]),
    "create": Doc("layers", "Creates an empty layer on top of the parent (none: a base layer). Without --rw it is "
                  "an image layer, mounted read-only; with --rw a container layer whose mount is writable, and "
                  "--size (default: the driver option size, as --opt size=20G) limits how much it may hold. "
                  "--uidmap/--gidmap after the command give the layer id maps of its own (a child takes its "
                  "parent's by default): its files are stored with host ids shifted into the range, and diff and "
                  "changes shift them back.",
                  [("graphdriver create ctr --parent base --rw", "a writable layer on base"),
                   ("graphdriver create ctr --parent base --rw --size 2G", "limited to 2 GB"),
                   ("graphdriver create userns --uidmap 0:100000:65536", "files stored as uid 100000 and up")],
                  {2: "overlapping or out-of-range id maps", 3: "the parent does not exist", 4: "the id is taken",
                   6: "the parent, or a layer below it, is damaged",
                   7: "a size limit where the driver cannot enforce one (vfs; overlay without root), or a "
                      "child with other id maps than its parent's (windowsfilter)"}),
    "import": Doc("layers", "Creates a read-only layer and applies a layer tarball to it in one pass: the input is "
                  "hashed (compressed and uncompressed: the DiffID), recorded as tar-split metadata so that diff "
                  "gives the same bytes back, and extracted confined to the layer. Prints the bytes applied.",
                  [("graphdriver import base rootfs.tar.gz", "a base layer from a gzip tarball"),
                   ("graphdriver import base --uidmap 0:100000:65536 rootfs.tar", "owners shifted into a "
                    "user namespace's range"),
                   ("zstd -dc l.tar.zst | graphdriver import app --parent base -", "from standard input")],
                  {1: _REFUSED, 2: _TERMINAL, 3: "the parent does not exist", 4: "the id is taken",
                   6: _CORRUPT + "; or the parent, or a layer below it, is damaged", 7: _DENIED}),
    "apply": Doc("layers", "Applies a layer tarball to an existing layer (the seeds' ApplyDiff): whiteouts delete, "
                 "files are added or replaced. To a layer made by create and since never applied to nor mounted "
                 "writable (even with nothing written), it is recorded as import records a layer: digests and "
                 "tar-split metadata, so that diff gives back the applied bytes and check verifies them. Any "
                 "other apply (a second one, one after import or after a writable mount) leaves the layer "
                 "matching no tarball: what an import recorded is forgotten. Prints the bytes applied.",
                 [("graphdriver apply ctr changes.tar", "add a tarball's changes to ctr"),
                  ("graphdriver create l && graphdriver apply l l.tar.gz", "recorded as graphdriver import l l.tar.gz records it")],
                 {1: _REFUSED, 2: "--parent names another layer than the one it sits on, or " + _TERMINAL,
                  3: "no such layer",
                  5: "the layer has children, is a mounted image layer, or is a layer of an image",
                  6: _CORRUPT, 7: _DENIED}),
    "mount": Doc("layers", "Makes the union of the layer's chain available and prints its path. Mounts are "
                 "counted across processes: every mount needs an unmount.",
                 [('mnt=$(graphdriver mount ctr)', "mount, keep the path"),
                  ("graphdriver mount ctr --mount-label system_u:object_r:container_file_t:s0", "with a label")],
                 {3: "no such layer", 6: "the layer, or a layer below it, is damaged", 7: "overlay cannot be mounted here"}),
    "unmount": Doc("layers", "Releases one mount; the last one really unmounts. --force drops every count and "
                   "unmounts, for an administrator cleaning up after a dead runtime.",
                   [("graphdriver unmount ctr", "release one mount"),
                    ("graphdriver unmount --force ctr", "release them all")],
                   {3: "no such layer", 5: "the layer is not mounted (a mount unmounted behind the store's "
                                             "back is released quietly, its count dropped)"}),
    "mounted": Doc("layers", "Prints how many mounts of the layer await their unmount (0 when it is not mounted).",
                   [("graphdriver mounted ctr", "0, 1, 2...")], {3: "no such layer"}),
    "exists": Doc("layers", "Exits 0 if the layer exists and 3 if not; prints nothing.",
                  [("graphdriver exists base && echo yes", "test for a layer")], {3: "no such layer"}),
    "layers": Doc("layers", "Lists the layers, one id a line, this store's first, then those of additional "
                  "stores. A corrupt record is named on stderr, not fatal.",
                  [("graphdriver layers", "one id a line"), ("graphdriver layers --json", "the records")]),
    "layer": Doc("layers", "Prints the layer's record as JSON: id, parent, created, size, the digests recorded on "
                 "import (diff_digest is the DiffID), the compression it came in, mounted_writable when the "
                 "store last mounted the imported layer writable, fresh while a layer made by create was never "
                 "applied to nor mounted writable, its mount count and mount point, and the "
                 "driver's facts.",
                 [("graphdriver layer base", "the record"),
                  ("graphdriver layer base --json | jq -r .diff_digest", "its DiffID")], {3: "no such layer"}),
    "changes": Doc("layers", "Lists what the layer changed relative to its parent (or --parent), sorted by path, "
                   "in the docker diff format: A added, C changed, D deleted.",
                   [("graphdriver changes ctr", "A /srv/app, C /etc, ..."),
                    ("graphdriver changes ctr --json", "the same as JSON")],
                   {3: "no such layer", 6: "the layer, or a layer below it, is damaged"}),
    "diff": Doc("layers", "Writes the layer tarball: whiteouts for deletions, the files as they are for the rest. "
                "For an imported layer that nothing changed, byte for byte the tarball imported (exit 6 if that "
                "cannot be, unless --regenerate); one mounted writable since (vfs) is first checked against the "
                "tarball's headers and, if it changed, written as it is now. --compress gzip or zstd compresses it; original gives back the "
                "compressed bytes an image kept.",
                [("graphdriver diff ctr -o ctr.tar", "to a file"),
                 ("graphdriver diff base --compress zstd > base.tar.zst", "compressed")],
                {2: "standard output is a terminal (give -o FILE)", 3: "no such layer",
                 5: "--compress original and no bytes were kept",
                 6: "the imported bytes cannot be given back, or the layer or one below it is damaged"}),
    "diffsize": Doc("layers", "Prints the bytes the layer adds: regular files added or changed, hard-linked "
                    "files once.", [("graphdriver diffsize ctr", "a number")],
                    {3: "no such layer", 6: "the layer, or a layer below it, is damaged"}),
    "remove": Doc("layers", "Deletes a layer; refused while it is mounted, has children, or an image or a "
                  "container uses it. A layer whose record is corrupt is removed too (its record and "
                  "folder), when named.",
                  [("graphdriver remove ctr", "delete ctr")],
                  {3: "no such layer", 5: "mounted, has children, or an image or container uses it"}),
    "cleanup": Doc("maintenance", "Finishes or undoes what a crash interrupted: half-made layers, interrupted "
                   "removals, half-written files, stale mounts, what a dead image load or pull left. Prints one "
                   "line per thing done; never deletes what a record names.",
                   [("graphdriver cleanup", "after a crash")]),
    "tarsplit": Doc("layers", "Writes the layer's tar-split metadata (gzip-compressed NDJSON, as "
                    "github.com/vbatts/tar-split writes it), for other tools to rebuild the layer from its files.",
                    [("graphdriver tarsplit base -o base.tsp", "then: tar-split asm --input base.tsp --path "
                      "$(graphdriver mount base) --output base.tar")],
                    {2: "standard output is a terminal (give -o FILE)",
                     3: "no such layer, or it has no tar-split data (not imported)",
                     6: "its tar-split data is missing or corrupt (nothing is written)"}),
    "check": Doc("maintenance", "Re-exports every layer (or those named) and compares with its recorded digests "
                 "and tar headers; one line per layer, exit 6 naming each bad one.",
                 [("graphdriver check", "every layer"), ("graphdriver check base app", "two layers")],
                 {3: "a layer named does not exist", 6: "a layer does not match its record"}),
    "base-images": Doc("maintenance", "(windowsfilter) Registers and lists the base images found in the "
                       "locations of the base_images option, with deterministic ids.",
                       [("graphdriver --driver windowsfilter --opt base_images=/srv/bases base-images",
                         "list them")]),
    "image load": Doc("images", "Loads every image of a docker-archive, an oci-archive or an OCI layout folder. "
                      "Layers already stored (by chain id) are reused; each layer's DiffID is checked against the "
                      "config. With --platform, an image that is not of that platform is refused (from an index, "
                      "that platform's is taken). Prints the names loaded.",
                      [("graphdriver image load deb.tar", "a docker save output"),
                       ("graphdriver image load ./layout --platform linux/arm64", "one platform of an index")],
                      {1: "a layer's entry is refused (reaching outside the layer, a hardlink to nothing, ...)",
                       2: "not a platform OS/ARCH[/VARIANT], - with a terminal on (or closed) standard input, "
                          "or neither a docker-archive nor an OCI layout",
                       3: "no such file, or no image for the platform",
                       5: "a layer (a container's, or one made otherwise) has the id of one of the "
                          "image's layers",
                       6: "a digest or DiffID does not match, the archive is corrupt or truncated, or "
                          "a field of the image config is not of its kind (a created that is no RFC 3339 time)",
                       7: "a Docker schema 1 image, an artifact, an image of the other system (Windows "
                          "layers go to windowsfilter alone), or an archive this user may not read"}),
    "image save": Doc("images", "Writes an image as a docker-archive (default), an oci-archive or an OCI layout "
                      "folder; layer tarballs are the loaded ones byte for byte. Without -o (or with -o -), "
                      "an archive goes to standard output, never to a terminal. Saved into an OCI layout "
                      "folder that exists, the image is added to the images there; one there of the same "
                      "name or tag (index.json names an image by its tag, as oci:DIR:TAG finds it) is "
                      "replaced, as skopeo copy replaces it.",
                      [("graphdriver image save deb:2 -o deb.tar", "a docker-archive"),
                       ("graphdriver image save deb:2 | gzip > deb.tar.gz", "to standard output"),
                       ("graphdriver image save deb:2 -o deb-oci --format oci", "an OCI layout")],
                      {1: "PATH cannot be written (a folder on its way is missing, a folder where an archive "
                          "goes, a file where a layout goes)",
                       2: "not an image name, or an id prefix several images start with", 3: "no such image",
                       6: "a layer's files changed since it was stored, or a kept blob is damaged",
                       7: "this user may not write PATH, or its file system is read-only"}),
    "image pull": Doc("images", "Pulls an image from a registry over the OCI distribution API: layers the store "
                      "has are skipped, the others downloaded several at once, resumed when a connection drops, "
                      "each checked against its digest. Credentials come from $REGISTRY_AUTH_FILE or "
                      "~/.docker/config.json. An image pulled by digest keeps that digested reference "
                      "(REPO@sha256:...): it is listed with its repository and found by it. Prints the "
                      "reference pulled.",
                      [("graphdriver image pull debian:bookworm", "from Docker Hub"),
                       ("graphdriver image pull localhost:5000/app:1 --insecure", "from a local plain-http "
                        "registry")],
                      {1: "the registry refused or failed", 2: "not a platform OS/ARCH[/VARIANT]",
                       3: "no such image, or none for the platform",
                       5: "a layer (a container's, or one made otherwise) has the id of one of the "
                          "image's layers",
                       6: "a digest does not match, or a field of the image config is not of its kind "
                          "(a created that is no RFC 3339 time)",
                       7: "a Docker schema 1 image, an artifact, or an image of the other system"}),
    "image push": Doc("images", "Pushes an image to a registry, to REF (without it, to NAME, which must "
                      "then be a name of the image, as docker push NAME): blobs it has are skipped, blobs "
                      "another repository there holds are mounted, the others uploaded; then the manifest. "
                      "A REF with a digest (REPO@sha256:...) must name the image's manifest, which then goes "
                      "up without a tag; another digest is refused before anything is sent. "
                      "Prints the manifest digest.",
                      [("graphdriver image push localhost/web:1 localhost:5000/web:1 --insecure", "to a local "
                        "registry"),
                       ("graphdriver image push localhost:5000/web:1 --insecure", "to where its name says")],
                      {1: "the registry refused or failed (it knows no repository REF names, say)",
                       2: "not an image name, an id prefix several images start with, or a "
                          "REF whose digest is not the image's manifest",
                       3: "no such image here"}),
    "image ls": Doc("images", "Lists the images: repository, tag, image id, created (when the image was made, "
                    "from its config), number of layers. A corrupt image record is named on stderr.",
                    [("graphdriver image ls", "a table"), ("graphdriver image ls --json", "the records")]),
    "image inspect": Doc("images", "Prints the image as JSON: its id (the config digest), names, manifest "
                         "digest, each layer with its DiffID and chain id, and the config.",
                         [("graphdriver image inspect deb:2", "the image")], {2: "not an image name, or an id prefix several images start with",
                                                                              3: "no such image"}),
    "image tag": Doc("images", "Gives an image another name; an image that had the name loses it. A name "
                     "with a digest, or sha256:... (which reads as an image id), is refused.",
                     [("graphdriver image tag deb:2 localhost/deb:stable", "a second name")],
                     {2: "not a name to give, or an id prefix several images start with",
                      3: "no such image"}),
    "image rm": Doc("images", "Removes a name, or the image with its last name; layers no other image or "
                    "container uses are removed too. An image named by its id goes with all its names, "
                    "unless they are in several repositories: then --force is needed, as in Docker. "
                    "Several names are removed in turn; one that fails is reported and the others go on "
                    "(the exit code is the first failure's).",
                    [("graphdriver image rm deb:2", "remove it"),
                     ("graphdriver image rm deb:1 deb:2", "remove both"),
                     ("graphdriver image rm --force 3f2a", "the image 3f2a..., whatever its names")],
                    {2: "not an image name, or an id prefix several images start with", 3: "no such image",
                     5: "a container uses the image, or (by id, without --force) "
                                            "its names are in several repositories"}),
    "container create": Doc("containers", "Creates a container: an init layer NAME-init with what a runtime "
                            "needs (/etc/hosts, /etc/hostname, /etc/resolv.conf, mount points) and the writable "
                            "layer NAME on it. NAME works with mount, changes, diff and diffsize. NAME is a "
                            "layer id of at most 123 characters, so that NAME-init is one too (at most 128), and not 64 hex "
                            "digits: those are an image layer's id (the hex of its chain id).",
                            [("graphdriver container create deb:2 web", "then: graphdriver mount web")],
                            {2: "not an image name, an id prefix several images start with, or NAME is no "
                                "container name (over 123 characters, 64 hex digits, or not a layer id)", 3: "no such image",
                             4: "the name is taken"}),
    "container commit": Doc("containers", "Makes what the container changed (its diff against the init layer) a "
                            "new layer on its image, and a new image with it. Prints the new image's id.",
                            [("graphdriver container commit web localhost/web:1", "a new image")],
                            {3: "no such container"}),
    "container rm": Doc("containers", "Removes a container with its writable and init layers. Several "
                        "are removed in turn; one that fails is reported and the others go on (the exit "
                        "code is the first failure's).",
                        [("graphdriver container rm web", "remove it"),
                         ("graphdriver container rm web db", "remove both")], {3: "no such container",
                                                                          5: "its layer is mounted"}),
    "container ls": Doc("containers", "Lists the containers: name, image, created.",
                        [("graphdriver container ls", "a table")]),
    "tree": Doc("maintenance", "Draws the layer graph from the base layers up: each layer's own size, the images "
                "and containers on it, and whether it is shared.", [("graphdriver tree", "the graph")]),
    "df": Doc("maintenance", "Shows the disk used by images, containers and layers no image or container uses, "
              "and what prune would free.", [("graphdriver df", "a table"), ("graphdriver df --json", "JSON")]),
    "help": Doc("maintenance", "Prints what a command does, its arguments and options, the exit codes that "
                 "matter and examples; the same text as COMMAND --help. Without a command, the list of commands.",
                 [("graphdriver help diff", "about diff"), ("graphdriver help image pull", "about image pull")],
                 {2: "no such command"}),
    "completion": Doc("maintenance", "Prints a completion script for bash, zsh or fish: commands, options, "
                      "the values an option takes, files where a file is named, and layer ids where a layer "
                      "is (listed by graphdriver layers with the --root, --run-root, --driver and "
                      "--additional-store of the line). For zsh, save it as _graphdriver in a folder of $fpath, "
                      "or source it after compinit.",
                      [('source <(graphdriver completion bash)', "in ~/.bashrc"),
                       ("graphdriver completion zsh > ~/.zfunc/_graphdriver", "zsh, ~/.zfunc being in $fpath "
                        "(or: source <(graphdriver completion zsh) in ~/.zshrc, after compinit)"),
                       ("graphdriver completion fish > ~/.config/fish/completions/graphdriver.fish", "fish")],
                      {2: "an unknown shell"}),
    "man": Doc("maintenance", "Prints the manual page graphdriver(1) in roff, made from the same table as the "
               "help.", [("graphdriver man | man -l -", "read it"),
                         ("graphdriver man > /usr/local/share/man/man1/graphdriver.1", "install it")]),
    "prune": Doc("maintenance", "Removes unnamed images no container uses, image layers nothing uses and blobs no "
                 "image names; with --layers also layers made with the layer commands that nothing uses. Mounted "
                 "layers stay. Prints what it removed.",
                 [("graphdriver prune", "free what images left"), ("graphdriver prune --layers", "and loose layers")]),
}


# ----- rendering ---------------------------------------------------------------------------------------


def _usage(c: Command) -> str:
    return f"{PROG} [OPTIONS] {' '.join((c.name, *c.args))}" + (" [COMMAND OPTIONS]" if c.options else "")


#: The narrowest a wrapped column gets, however narrow the terminal: a few words a line.
_MIN_ROOM = 24
#: Where option and command descriptions start (``  --run-root DIR`` and its padding).
_OPTION_COLUMN = 31
_COMMAND_COLUMN = 21


def columns() -> int:
    """The terminal's width as :func:`shutil.get_terminal_size` tells it: ``$COLUMNS`` when it is
    a positive number, else standard output's terminal, else 80.  The same three steps, without
    importing :mod:`shutil` (it loads zlib, bz2 and lzma): help is asked for on the command line."""
    import os
    import sys

    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        width = 0
    if width <= 0:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            width = 0
    return width if width > 0 else 80


def _fill(lead: str, text: str, indent: int, width: int) -> list[str]:
    """*text* filled to *width* columns after *lead*, each further line indented by *indent*
    spaces (a hanging indent, as argparse and git lay out options).  Words are never split, so a
    path or a command stays whole; a *lead* reaching past *indent* has the text start below it."""
    lines = []
    if len(lead) > indent:
        lines.append(lead.rstrip())
        lead = ""
    room = max(width - indent, _MIN_ROOM)
    line = lead.ljust(indent)
    used = 0  # characters of *text* on this line
    for word in text.split():
        if used and used + 1 + len(word) > room:
            lines.append(line)
            line, used = " " * indent, 0
        line += (" " if used else "") + word
        used += (1 if used else 0) + len(word)
    if used or not lines:
        lines.append(line.rstrip())
    return lines


def _value(o: Option) -> str:
    """How an option's value is written after its flag: `` DIR``, ``[=BOOL]`` when it may stand alone."""
    if not o.metavar:
        return ""
    return f"[={o.metavar}]" if o.bare else f" {o.metavar}"


def _roff_option(o: Option) -> str:
    if not o.metavar:
        return "\\fB" + _roff(", ".join(o.flags)) + "\\fR"
    value = f"[=\\fI{_roff(o.metavar)}\\fR]" if o.bare else f" \\fI{_roff(o.metavar)}\\fR"
    return "\\fB" + _roff(", ".join(o.flags)) + "\\fR" + value


def _option_lines(options: tuple[Option, ...], width: int) -> list[str]:
    lines = []
    for o in options:
        spelled = ", ".join(o.flags) + _value(o)
        lines += _fill(f"  {spelled} ", o.help, _OPTION_COLUMN, width)
    return lines


def overview(group: str | None = None, width: int | None = None) -> str:
    """``graphdriver --help`` (or ``graphdriver image --help``): the commands by group, filled to
    *width* columns (default: the terminal's, less one)."""
    width = width or columns() - 1
    about = ("A container layer store: layers on disk, union mounts, layer tarballs in and out byte "
             "for byte, and images, containers and registries on top." if group is None
             else f"The {group} commands.")
    lines = [f"usage: {PROG} [OPTIONS] {group + ' ' if group else ''}COMMAND [ARGS]", "",
             *_fill("", about, 0, width), ""]
    for key, title in GROUPS.items():
        names = [n for n, d in DOCS.items() if d.group == key and (group is None or n.startswith(group + " "))]
        if not names:
            continue
        lines.append(f"{title}:")
        for n in names:
            lines += _fill(f"  {n} ", COMMANDS[n].help, _COMMAND_COLUMN, width)
        lines.append("")
    if group is None:
        codes = "Exit codes: " + ", ".join(f"{k} {v.split(' (')[0]}" for k, v in EXIT_CODES.items()) + "."
        more = (f"Run '{PROG} help COMMAND' (or '{PROG} COMMAND --help') for one command; "
                f"'{PROG} man' prints the manual.")
        lines += ["Options (before or after the command):", *_option_lines(GLOBAL_OPTIONS, width), "",
                  *_fill("", codes, 0, width), *_fill("", more, 0, width)]
    return "\n".join(lines).rstrip() + "\n"


def command_help(name: str, width: int | None = None) -> str:
    """``graphdriver COMMAND --help``: what it does, its arguments and options, exit codes, examples;
    filled to *width* columns (default: the terminal's, less one).  Example commands stay whole."""
    width = width or columns() - 1
    c, d = COMMANDS[name], DOCS[name]
    lines = [f"usage: {_usage(c)}", ""]
    lines += _fill("", d.description, 0, width)
    if c.options:
        lines += ["", "Command options:", *_option_lines(c.options, width)]
    codes = {0: EXIT_CODES[0], **d.exits}
    lines += ["", "Exit codes:"]
    for k, v in sorted(codes.items()):
        lines += _fill(f"  {k}  ", v, 5, width)
    lines += ["", "Examples:"]
    for cmd, what in d.examples:
        lines += [f"  $ {cmd}", *_fill("", what, 6, width)]
    lines += ["", *_fill("", f"Global options: see '{PROG} --help'.", 0, width)]
    return "\n".join(lines) + "\n"


def help_text(command: str | None, width: int | None = None) -> str:
    """The help of *command* (a group, or None: the overview), filled to *width* columns."""
    if command is None or command not in COMMANDS:
        return overview(command, width)
    return command_help(command, width)


def _roff(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line.startswith((".", "'")) else line) for line in out.split("\n"))


def man_page(version: str = "") -> str:
    """graphdriver(1) in roff, from the same table."""
    lines = [f'.TH GRAPHDRIVER 1 "" "graphdriver {version}" "User Commands"', ".SH NAME",
             "graphdriver \\- a container layer store: layers, images, containers and registries",
             ".SH SYNOPSIS", ".B graphdriver", "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
             ".SH DESCRIPTION",
             _roff("graphdriver keeps container image layers on disk, assembles a container's root filesystem "
                   "from a chain of layers (overlayfs, or copies with vfs), captures what a container changed "
                   "as a layer tarball, gives back the exact bytes of every layer it imported, and loads, saves, "
                   "pulls and pushes images."),
             ".SH OPTIONS"]
    for o in GLOBAL_OPTIONS:
        lines += [".TP", _roff_option(o), _roff(o.help)]
    for key, title in GROUPS.items():
        lines.append(f".SH {title.upper()}")
        for name, d in DOCS.items():
            if d.group != key:
                continue
            c = COMMANDS[name]
            lines += [".SS " + _roff(" ".join((name, *c.args))), _roff(d.description)]
            for o in c.options:
                lines += [".TP", _roff_option(o), _roff(o.help)]
            for cmd, what in d.examples:
                lines += [".PP", ".nf", "$ " + _roff(cmd), ".fi", _roff(what)]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES.items():
        lines += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    lines += [".SH ENVIRONMENT", ".TP", "\\fBGRAPHDRIVER_ROOT\\fR, \\fBGRAPHDRIVER_RUNROOT\\fR, "
              "\\fBGRAPHDRIVER_DRIVER\\fR", "defaults of \\-\\-root, \\-\\-run\\-root and \\-\\-driver",
              ".TP", "\\fBXDG_DATA_HOME\\fR",
              _roff("not root and no $GRAPHDRIVER_ROOT: the store is $XDG_DATA_HOME/graphdriver "
                    "(~/.local/share/graphdriver when unset)"),
              ".TP", "\\fBXDG_RUNTIME_DIR\\fR",
              _roff("not root and no $GRAPHDRIVER_RUNROOT: the run root is $XDG_RUNTIME_DIR/graphdriver "
                    "(the folder run under --root when unset)"),
              ".TP", "\\fBREGISTRY_AUTH_FILE\\fR", "registry credentials (else ~/.docker/config.json)"]
    return "\n".join(lines) + "\n"


# ----- completion -------------------------------------------------------------------------------------


#: What completes a value, by what it names (an option's metavar, a positional argument):
#: layer ids, files, folders, help topics, shells. Any other value completes to nothing.
_KINDS = {"ID": "id", "P": "id", "FILE": "file", "PATH": "file", "SOURCE": "file", "DIR": "dir",
          "TOPIC": "topic", "SHELL": "shell"}
#: The global options naming the store whose layer ids are offered (passed on to ``layers``).
_STORE_OPTIONS = ("--root", "--run-root", "--driver", "--additional-store")
SHELLS = ("bash", "zsh", "fish")


def _known_words(o: Option) -> tuple[str, ...]:
    """The values *o* takes, where they are a short list: its choices, the drivers, the formats."""
    if o.choices:
        return o.choices
    if o.flags[-1] == "--driver":
        from graphdriver import drivers

        return tuple(drivers.names())
    if o.flags[-1] == "--format":
        return ("docker-archive", "oci-archive", "oci")
    return ()


def _option_kind(o: Option) -> str:
    """What completes the value of *o*: ``words`` (:func:`_known_words`), a kind of
    :data:`_KINDS`, or ``""`` (a size, a label, a map...: nothing to offer)."""
    if _known_words(o):
        return "words"
    return _KINDS.get(o.metavar, "")


def _arg_kinds(c: Command) -> list[str]:
    """The kind of each positional argument of *c* (``-``: nothing), ``+`` after one that repeats."""
    kinds = []
    for spec in c.args:
        kind = _KINDS.get(spec.strip("[].").upper(), "-")
        kinds.append(kind + "+" if spec.rstrip("]").endswith("...") else kind)
    return kinds


def _all_options() -> list[Option]:
    return [*GLOBAL_OPTIONS, *(o for c in COMMANDS.values() for o in c.options)]


def _value_flags() -> list[str]:
    """Every flag that takes a value (``--root``, ``-o``...), global or a command's, from the table.

    A flag that may stand alone (``--tls-verify``) is left out: its value is never the next word
    unless it is one of its choices.
    """
    flags: list[str] = []
    for o in _all_options():
        if o.value and not o.bare:
            flags += [f for f in o.flags if f not in flags]
    return flags


def _values_by_flag() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each flag that takes a value: the kind of value, and its words (the same wherever it is)."""
    values: dict[str, tuple[str, tuple[str, ...]]] = {}
    for o in _all_options():
        if not o.value:
            continue
        for flag in o.flags:
            value = (_option_kind(o), _known_words(o))
            if values.setdefault(flag, value) != value:
                raise ValueError(f"{flag} completes to other values in another command")
    return values


def _words() -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """Top-level words, each group's commands, and each command's options."""
    top: list[str] = []
    groups: dict[str, list[str]] = {}
    for name in COMMANDS:
        first, _, rest = name.partition(" ")
        if rest:
            groups.setdefault(first, []).append(rest)
        if first not in top:
            top.append(first)
    top += [n for n in ("help", "completion", "man") if n not in top]
    options = {name: [f for o in c.options for f in o.flags] for name, c in COMMANDS.items()}
    return top, groups, options


def completion(shell: str) -> str:
    """A completion script for *shell* (bash, zsh or fish): commands, options, layer ids, files."""
    if shell == "bash":
        return ("# bash completion for graphdriver (graphdriver completion bash)\n" + _bash("_graphdriver")
                + "complete -F _graphdriver graphdriver\n")
    if shell == "zsh":
        return _ZSH.replace("BASH_FUNCTION\n", _bash("_graphdriver_bash"))
    if shell == "fish":
        return _fish()
    raise ValueError(shell)


#: The zsh completion: the bash one, through bashcompinit. Sourced (``source <(graphdriver
#: completion zsh)``, after compinit) it registers the function; autoloaded from a folder of
#: $fpath as ``_graphdriver``, the file is that function's body, first run at the first TAB,
#: and so it also completes the TAB that loaded it.
_ZSH = """\
#compdef graphdriver
# zsh completion for graphdriver (graphdriver completion zsh): save it as _graphdriver in a
# folder of $fpath, or: source <(graphdriver completion zsh) after compinit
autoload -U bashcompinit && bashcompinit
BASH_FUNCTION
complete -F _graphdriver_bash graphdriver
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    # autoloaded at the first TAB: complete it now (the next ones go to _graphdriver_bash)
    _bash_complete -F _graphdriver_bash
fi
"""

_BASH_JOIN = """\
    # Bash splits a word at the characters of COMP_WORDBREAKS ('=' and ':' among them):
    # --opt size=1G comes as --opt, size, =, 1G. Join back the words the line has no blank
    # between, so that each option and value is one word again.
    line="${COMP_LINE-}"
    [[ -z "$line" ]] && glue=0
    for ((i = 0; i <= COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        rest="${line#"${line%%[![:blank:]]*}"}"
        if ((glue && i > 0)) && [[ ${#rest} -eq ${#line} ]]; then
            gd_words[${#gd_words[@]}-1]+="$word"
        else
            gd_words+=("$word")
        fi
        if [[ "$rest" == "$word"* ]]; then line="${rest:${#word}}"; else glue=0; fi
    done
    gd_cword=$((${#gd_words[@]} - 1))
    # What bash replaces: the part after the last '=' or ':' (nothing typed yet right after one)
    cur="${COMP_WORDS[COMP_CWORD]}"
    [[ "$cur" == *[!=:]* ]] || cur=""
"""

_BASH_COMPLETE = """\
    case "$kind" in
        id)
            for ((i = 1; i < ${#gd_store[@]}; i += 2)); do  # the shell would expand ~ and quotes
                word="${gd_store[i]}"
                [[ "$word" == [\\"\\']*[\\"\\'] ]] && word="${word:1:${#word}-2}"
                [[ "$word" == "~" || "$word" == "~/"* ]] && word="$HOME${word:1}"
                gd_store[i]="$word"
            done
            COMPREPLY=($(compgen -P "$pre" -W "$(graphdriver "${gd_store[@]}" layers 2>/dev/null)" -- "$cur")) ;;
        file|dir)
            local IFS=$'\\n' what=-f  # one name a line, whatever blanks it holds
            [[ "$kind" == dir ]] && what=-d
            COMPREPLY=($(compgen -P "$pre" "$what" -- "$cur"))
            type compopt &>/dev/null && compopt -o filenames ;;
        words) COMPREPLY=($(compgen -P "$pre" -W "$words_now" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
"""


def _bash_cases(cases: dict[str, str], indent: str = "        ") -> str:
    return "\n".join(f'{indent}"{key}") {body} ;;' for key, body in cases.items())


def _bash(function: str) -> str:
    """The bash completion function (zsh runs it too, through bashcompinit), named *function*."""
    top, groups, options = _words()
    globals_ = " ".join(f for o in GLOBAL_OPTIONS for f in o.flags)
    store = "|".join(_STORE_OPTIONS)
    bare = "\n".join(dict.fromkeys(
        f'                {"|".join(o.flags)})  # alone, or with one of its values as the next word\n'
        f'                    case "${{gd_words[i+1]}}" in {"|".join(o.choices)}) ((i + 1 < gd_cword)) && ((i++)) ;; esac\n'
        "                    continue ;;" for o in _all_options() if o.bare))
    kinds: dict[str, list[str]] = {}
    for flag, (kind, words) in _values_by_flag().items():
        kinds.setdefault(f'kind={kind}; words_now="{" ".join(words)}"' if words else f"kind={kind}", []).append(flag)
    values = "\n".join(f'            {"|".join(flags)}) {body} ;;' for body, flags in kinds.items())
    group_words = {g: f'words_now="{" ".join(c)}"' for g, c in groups.items()}
    opts = _bash_cases({n: f'opts="{" ".join(o)}"' for n, o in options.items() if o}, "            ")
    args = _bash_cases({n: f"gd_kinds=({' '.join(_arg_kinds(c))})" for n, c in COMMANDS.items() if c.args},
                       "            ")
    return f"""{function}() {{
    local cur line rest word i glue=1 gd_cword kind="" pre="" opt="" opts="" words_now=""
    local cmd="" sub="" first="" expect="" npos=0 dashdash=0
    local -a gd_words=() gd_store=() gd_kinds=()
{_BASH_JOIN}
    # The words before the cursor: the command, its arguments so far, the store's options
    for ((i = 1; i < gd_cword; i++)); do
        word="${{gd_words[i]}}"
        if [[ -n "$expect" ]]; then  # the value of the option before
            case "$expect" in {store}) gd_store+=("$expect" "$word") ;; esac
            expect=""; continue
        fi
        if ((!dashdash)); then
            case "$word" in
                --) dashdash=1; continue ;;
                {"=*|".join(_STORE_OPTIONS)}=*) gd_store+=("${{word%%=*}}" "${{word#*=}}"); continue ;;
                {"|".join(_value_flags())}) expect="$word"; continue ;;
{bare}
                -?*) continue ;;
            esac
        fi
        if [[ -z "$cmd" ]]; then
            cmd="$word"
        elif [[ -z "$sub" && " {" ".join(groups)} " == *" $cmd "* ]]; then
            sub="$word"
        else
            ((npos++)) || first="$word"
        fi
    done
    local full="$cmd${{sub:+ $sub}}"
    # An option's value: the word after it, or after its '=' (as one word, the way zsh passes it)
    if [[ -n "$expect" ]]; then
        opt="$expect"
    elif ((!dashdash)) && [[ "${{gd_words[gd_cword]}}" == --?*=* ]]; then
        opt="${{gd_words[gd_cword]%%=*}}"
        [[ "$cur" == "$opt="* ]] && pre="$opt=" && cur="${{cur#*=}}"
    fi
    if [[ -n "$opt" ]]; then
        case "$opt" in
{values}
        esac
    elif ((!dashdash)) && [[ "${{gd_words[gd_cword]}}" == -* ]]; then
        case "$full" in
{opts}
        esac
        kind=words; words_now="$opts {globals_}"
    elif [[ -z "$cmd" ]]; then
        kind=words; words_now="{" ".join(top)}"
    elif [[ -z "$sub" && " {" ".join(groups)} " == *" $cmd "* ]]; then
        kind=words
        case "$cmd" in
{_bash_cases(group_words, "            ")}
        esac
    else
        case "$full" in
{args}
        esac
        if ((npos < ${{#gd_kinds[@]}})); then
            kind="${{gd_kinds[npos]}}"
        elif ((${{#gd_kinds[@]}})); then  # a repeated argument (ID...) goes on
            kind="${{gd_kinds[${{#gd_kinds[@]}}-1]}}"
            [[ "$kind" == *+ ]] || kind=""
        fi
        kind="${{kind%+}}"
        if [[ "$kind" == shell ]]; then
            kind=words; words_now="{" ".join(SHELLS)}"
        elif [[ "$kind" == topic ]]; then  # help COMMAND, help GROUP COMMAND
            kind=words
            if ((npos == 0)); then
                words_now="{" ".join(top)}"
            elif ((npos == 1)); then
                case "$first" in
{_bash_cases(group_words, "                    ")}
                esac
            fi
        fi
    fi
{_BASH_COMPLETE}}}
"""


_FISH_LINE = """\
function __graphdriver_line --description 'graphdriver completion: the words before the cursor'
    # Prints the command, its subcommand, how many arguments it has so far, the first one,
    # then the options naming the store (to list its layer ids), each on a line of its own.
    set -l cmd ''
    set -l sub ''
    set -l first ''
    set -l npos 0
    set -l store
    set -l expect ''
    set -l choices
    set -l dashdash 0
    for word in (commandline -opc)[2..-1]
        if test -n "$expect"  # the value of the option before
            contains -- $expect STORE_OPTIONS; and set -a store $expect $word
            set expect ''
            continue
        end
        if set -q choices[1]  # after an option that may stand alone: one of its values, or not
            set -l was $choices
            set choices
            contains -- $word $was; and continue
        end
        if test $dashdash = 0
            switch $word
                case --
                    set dashdash 1
                    continue
                case STORE_INLINE
                    set -a store (string split -m 1 = -- $word)
                    continue
                case VALUE_FLAGS
                    set expect $word
                    continue
BARE_FLAGS
                case '-?*'
                    continue
            end
        end
        if test -z "$cmd"
            set cmd $word
        else if test -z "$sub"; and contains -- $cmd GROUPS
            set sub $word
        else
            test $npos = 0; and set first $word
            set npos (math $npos + 1)
        end
    end
    printf '%s\\n' $cmd $sub $npos $first
    set -q store[1]; and string replace -r '^~(?=/|$)' $HOME -- $store
end

function __graphdriver_needs_command --description 'graphdriver completion: no command yet'
    set -l line (__graphdriver_line)
    test -z "$line[1]"
end

function __graphdriver_needs_subcommand --description 'graphdriver completion: GROUP given, not its command'
    set -l line (__graphdriver_line)
    test "$line[1]" = "$argv[1]"; and test -z "$line[2]"
end

function __graphdriver_using --description 'graphdriver completion: the command is one of these'
    set -l line (__graphdriver_line)
    contains -- (string trim -- "$line[1] $line[2]") $argv
end

function __graphdriver_arg --description 'graphdriver completion: the word at the cursor is an argument of KIND'
    set -l line (__graphdriver_line)
    set -l kinds
    switch (string trim -- "$line[1] $line[2]")
ARG_KINDS
    end
    set -l n (math $line[3] + 1)
    set -l kind ''
    if test $n -le (count $kinds)
        set kind $kinds[$n]
    else if set -q kinds[1]; and string match -q -- '*+' $kinds[-1]  # a repeated one (ID...) goes on
        set kind $kinds[-1]
    end
    test (string trim -r -c + -- $kind) = "$argv[1]"
end

function __graphdriver_ids --description 'graphdriver completion: the layer ids of the store on the line'
    set -l line (__graphdriver_line)
    graphdriver $line[5..-1] layers 2>/dev/null
end

function __graphdriver_topics --description 'graphdriver completion: the commands help tells about'
    set -l line (__graphdriver_line)
    switch $line[3]
        case 0
            printf '%s\\n' TOP
        case 1
            switch $line[4]
GROUP_WORDS
            end
    end
end
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(o: Option, condition: str) -> str:
    """``complete`` for one option: its spellings, what its value completes to, its help."""
    line = "complete -c graphdriver" + (f' -n "{condition}"' if condition else "")
    for flag in o.flags:
        line += f" -l {flag[2:]}" if flag.startswith("--") else f" -s {flag[1:]}"
    kind, words = _values_by_flag().get(o.flags[-1], ("", ())) if o.value else ("switch", ())
    line += {"switch": "", "file": " -r -F", "dir": " -x -a '(__fish_complete_directories)'",
             "id": " -x -a '(__graphdriver_ids)'", "words": f" -x -a {_fish_quote(' '.join(words))}",
             }.get(kind, " -x")
    return line + f" -d {_fish_quote(o.help)}"


def _fish() -> str:
    """The fish completion: functions that read the line as the parser does, then one ``complete``
    for each command, option and kind of argument of the table."""
    top, groups, _ = _words()
    bare = "\n".join(dict.fromkeys(
        f"                case {' '.join(o.flags)}\n                    set choices {' '.join(o.choices)}\n"
        "                    continue" for o in _all_options() if o.bare))
    arg_kinds = "\n".join(f"        case {_fish_quote(n)}\n            set kinds {' '.join(_arg_kinds(c))}"
                          for n, c in COMMANDS.items() if c.args)
    group_words = "\n".join(f"                case {g}\n                    printf '%s\\n' {' '.join(c)}"
                            for g, c in groups.items())
    functions = (_FISH_LINE.replace("STORE_OPTIONS", " ".join(_STORE_OPTIONS))
                 .replace("STORE_INLINE", " ".join(f"'{f}=*'" for f in _STORE_OPTIONS))
                 .replace("VALUE_FLAGS", " ".join(_value_flags())).replace("BARE_FLAGS\n", bare + "\n")
                 .replace("GROUPS", " ".join(groups)).replace("ARG_KINDS", arg_kinds)
                 .replace("TOP", " ".join(top)).replace("GROUP_WORDS", group_words))
    lines = ["# fish completion for graphdriver (graphdriver completion fish)", functions,
             "# files only where a file is named (FILE, SOURCE; -o comes with its own)",
             "complete -c graphdriver -n 'not __graphdriver_arg file' -f"]
    for name in top:
        what = COMMANDS[name].help if name in COMMANDS else f"the {name} commands: {', '.join(groups[name])}"
        lines.append(f"complete -c graphdriver -n __graphdriver_needs_command -a {name} -d {_fish_quote(what)}")
    for g, cmds in groups.items():
        lines += [f"complete -c graphdriver -n '__graphdriver_needs_subcommand {g}' -a {c} "
                  f"-d {_fish_quote(COMMANDS[g + ' ' + c].help)}" for c in cmds]
    lines += ["complete -c graphdriver -n '__graphdriver_arg id' -a '(__graphdriver_ids)'",
              "complete -c graphdriver -n '__graphdriver_arg topic' -a '(__graphdriver_topics)'",
              f"complete -c graphdriver -n '__graphdriver_arg shell' -a '{' '.join(SHELLS)}'"]
    lines += [_fish_option(o, "") for o in GLOBAL_OPTIONS]
    for name, c in COMMANDS.items():
        lines += [_fish_option(o, f"__graphdriver_using '{name}'") for o in c.options]
    return "\n".join(lines) + "\n"

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
                  {1: _REFUSED, 3: "the parent does not exist", 4: "the id is taken",
                   6: _CORRUPT + "; or the parent, or a layer below it, is damaged"}),
    "apply": Doc("layers", "Applies a layer tarball to an existing layer (the seeds' ApplyDiff): whiteouts delete, "
                 "files are added or replaced. The layer no longer matches an imported tarball afterwards. Prints "
                 "the bytes applied.",
                 [("graphdriver apply ctr changes.tar", "add a tarball's changes to ctr")],
                 {1: _REFUSED, 3: "no such layer", 5: "the layer has children, or is a mounted image layer",
                  6: _CORRUPT}),
    "mount": Doc("layers", "Makes the union of the layer's chain available and prints its path. Mounts are "
                 "counted across processes: every mount needs an unmount.",
                 [('mnt=$(graphdriver mount ctr)', "mount, keep the path"),
                  ("graphdriver mount ctr --mount-label system_u:object_r:container_file_t:s0", "with a label")],
                 {3: "no such layer", 6: "the layer, or a layer below it, is damaged", 7: "overlay cannot be mounted here"}),
    "unmount": Doc("layers", "Releases one mount; the last one really unmounts. --force drops every count and "
                   "unmounts, for an administrator cleaning up after a dead runtime.",
                   [("graphdriver unmount ctr", "release one mount"),
                    ("graphdriver unmount --force ctr", "release them all")],
                   {5: "the layer is not mounted (a mount unmounted behind the store's back is released "
                       "quietly, its count dropped)"}),
    "mounted": Doc("layers", "Prints how many mounts of the layer await their unmount (0 when it is not mounted).",
                   [("graphdriver mounted ctr", "0, 1, 2...")], {3: "no such layer"}),
    "exists": Doc("layers", "Exits 0 if the layer exists and 3 if not; prints nothing.",
                  [("graphdriver exists base && echo yes", "test for a layer")], {3: "no such layer"}),
    "layers": Doc("layers", "Lists the layers, one id a line, this store's first, then those of additional "
                  "stores. A corrupt record is named on stderr, not fatal.",
                  [("graphdriver layers", "one id a line"), ("graphdriver layers --json", "the records")]),
    "layer": Doc("layers", "Prints the layer's record as JSON: id, parent, created, size, the digests recorded on "
                 "import (diff_digest is the DiffID), the compression it came in, mounted_writable when the "
                 "store last mounted the imported layer writable, its mount count and mount point, and the "
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
                {3: "no such layer", 5: "--compress original and no bytes were kept",
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
                    {3: "no such layer, or it has no tar-split data (not imported)",
                     6: "its tar-split data is missing or corrupt (nothing is written)"}),
    "check": Doc("maintenance", "Re-exports every layer (or those named) and compares with its recorded digests "
                 "and tar headers; one line per layer, exit 6 naming each bad one.",
                 [("graphdriver check", "every layer"), ("graphdriver check base app", "two layers")],
                 {6: "a layer does not match its record"}),
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
                      {2: "not a platform OS/ARCH[/VARIANT], or - with a terminal on standard input",
                       3: "no such file, or no image for the platform", 6: "a digest or DiffID does not match"}),
    "image save": Doc("images", "Writes an image as a docker-archive (default), an oci-archive or an OCI layout "
                      "folder; layer tarballs are the loaded ones byte for byte. Without -o (or with -o -), "
                      "an archive goes to standard output, never to a terminal.",
                      [("graphdriver image save deb:2 -o deb.tar", "a docker-archive"),
                       ("graphdriver image save deb:2 | gzip > deb.tar.gz", "to standard output"),
                       ("graphdriver image save deb:2 -o deb-oci --format oci", "an OCI layout")],
                      {2: "not an image name, or an id prefix several images start with", 3: "no such image"}),
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
                       3: "no such image, or none for the platform", 6: "a digest does not match",
                       7: "a Docker schema 1 image, an artifact, or an image of the other system"}),
    "image push": Doc("images", "Pushes an image to a registry: blobs it has are skipped, blobs another "
                      "repository there holds are mounted, the others uploaded; then the manifest. Prints the "
                      "manifest digest.",
                      [("graphdriver image push localhost/web:1 localhost:5000/web:1 --insecure", "to a local "
                        "registry")], {1: "the registry refused or failed", 2: "not an image name, or an id prefix several images start with",
                                       3: "no such image"}),
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
                            "layer NAME on it. NAME works with mount, changes, diff and diffsize.",
                            [("graphdriver container create deb:2 web", "then: graphdriver mount web")],
                            {2: "not an image name, or an id prefix several images start with", 3: "no such image",
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
    "completion": Doc("maintenance", "Prints a completion script for bash, zsh or fish: commands, options, and "
                      "layer ids (from graphdriver layers) where a command takes one.",
                      [('source <(graphdriver completion bash)', "in ~/.bashrc"),
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


def _wrap(text: str, indent: str = "", width: int = 79) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) or [indent]


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


def _option_lines(options: tuple[Option, ...]) -> list[str]:
    lines = []
    for o in options:
        spelled = ", ".join(o.flags) + _value(o)
        lines.append(f"  {spelled:<28} {o.help}")
    return lines


def overview(group: str | None = None) -> str:
    """``graphdriver --help`` (or ``graphdriver image --help``): the commands by group."""
    lines = [f"usage: {PROG} [OPTIONS] {group + ' ' if group else ''}COMMAND [ARGS]", "",
             "A container layer store: layers on disk, union mounts, layer tarballs in and out byte for "
             "byte," if group is None else f"The {group} commands.", ""]
    if group is None:
        lines[2] += ""
        lines.insert(3, "and images, containers and registries on top.")
    for key, title in GROUPS.items():
        names = [n for n, d in DOCS.items() if d.group == key and (group is None or n.startswith(group + " "))]
        if not names:
            continue
        lines.append(f"{title}:")
        lines += [f"  {n:<18} {COMMANDS[n].help}" for n in names]
        lines.append("")
    if group is None:
        lines += ["Options (before or after the command):", *_option_lines(GLOBAL_OPTIONS), "",
                  "Exit codes: " + ", ".join(f"{k} {v.split(' (')[0]}" for k, v in EXIT_CODES.items()) + ".",
                  f"Run '{PROG} help COMMAND' (or '{PROG} COMMAND --help') for one command; "
                  f"'{PROG} man' prints the manual."]
    return "\n".join(lines).rstrip() + "\n"


def command_help(name: str) -> str:
    """``graphdriver COMMAND --help``: what it does, its arguments and options, exit codes, examples."""
    c, d = COMMANDS[name], DOCS[name]
    lines = [f"usage: {_usage(c)}", ""]
    lines += _wrap(d.description)
    if c.options:
        lines += ["", "Command options:", *_option_lines(c.options)]
    codes = {0: EXIT_CODES[0], **d.exits}
    lines += ["", "Exit codes:"] + [f"  {k}  {v}" for k, v in sorted(codes.items())]
    lines += ["", "Examples:"]
    for cmd, what in d.examples:
        lines += [f"  $ {cmd}", *_wrap(what, "      ")]
    lines += ["", f"Global options: see '{PROG} --help'."]
    return "\n".join(lines) + "\n"


def help_text(command: str | None) -> str:
    if command is None or command not in COMMANDS:
        return overview(command)
    return command_help(command)


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
              ".TP", "\\fBREGISTRY_AUTH_FILE\\fR", "registry credentials (else ~/.docker/config.json)"]
    return "\n".join(lines) + "\n"


# ----- completion -------------------------------------------------------------------------------------


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
    """A completion script for *shell* (bash, zsh or fish): commands, options, layer ids."""
    top, groups, options = _words()
    globals_ = [f for o in GLOBAL_OPTIONS for f in o.flags]
    takes_id = sorted(n for n, c in COMMANDS.items() if any("ID" in a for a in c.args))
    if shell == "bash":
        return _bash(top, groups, options, globals_, takes_id)
    if shell == "zsh":
        return "#compdef graphdriver\nautoload -U bashcompinit && bashcompinit\n" + _bash(
            top, groups, options, globals_, takes_id)
    if shell == "fish":
        return _fish(top, groups, options, globals_, takes_id)
    raise ValueError(shell)


def _bash(top: list[str], groups: dict[str, list[str]], options: dict[str, list[str]], globals_: list[str],
          takes_id: list[str]) -> str:
    cases = "\n".join(f'        "{n}") opts="{" ".join(o)}" ;;' for n, o in options.items() if o)
    group_cases = "\n".join(f'        {g}) words_now="{" ".join(c)}" ;;' for g, c in groups.items())
    ids = "|".join(f'"{n}"' for n in takes_id)
    return f"""# bash completion for graphdriver (graphdriver completion bash)
_graphdriver() {{
    local cur prev cmd="" sub="" i word words_now opts=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            --root|--run-root|--driver|--opt|--additional-store|--uidmap|--gidmap)
                # --root=DIR comes as three words where COMP_WORDBREAKS holds '='
                [[ "${{COMP_WORDS[i+1]}}" == "=" ]] && ((i++))
                ((i++)); continue ;;
            -*) continue ;;
        esac
        if [[ -z "$cmd" ]]; then cmd="$word"; elif [[ -z "$sub" && "{' '.join(groups)}" == *"$cmd"* ]]; then sub="$word"; fi
    done
    [[ "$prev" == "=" ]] && prev="${{COMP_WORDS[COMP_CWORD-2]}}"
    [[ "$cur" == "=" ]] && cur=""
    case "$prev" in
        --root|--run-root|--additional-store|-o|--output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --driver) COMPREPLY=($(compgen -W "overlay vfs windowsfilter" -- "$cur")); return ;;
        --format) COMPREPLY=($(compgen -W "docker-archive oci-archive oci" -- "$cur")); return ;;
        --compress) COMPREPLY=($(compgen -W "none gzip zstd original" -- "$cur")); return ;;
    esac
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{' '.join(top)} {' '.join(globals_)}" -- "$cur")); return
    fi
    case "$cmd" in
{group_cases}
        *) words_now="" ;;
    esac
    if [[ -n "$words_now" && -z "$sub" ]]; then
        COMPREPLY=($(compgen -W "$words_now" -- "$cur")); return
    fi
    local full="$cmd"; [[ -n "$sub" ]] && full="$cmd $sub"
    case "$full" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts {' '.join(globals_)}" -- "$cur")); return
    fi
    case "$full" in
        {ids}|help)
            local store_args=() j
            for ((j = 1; j < COMP_CWORD; j++)); do
                case "${{COMP_WORDS[j]}}" in
                    --root|--run-root|--driver)
                        if [[ "${{COMP_WORDS[j+1]}}" == "=" ]]; then
                            store_args+=("${{COMP_WORDS[j]}}" "${{COMP_WORDS[j+2]}}")
                        else
                            store_args+=("${{COMP_WORDS[j]}}" "${{COMP_WORDS[j+1]}}")
                        fi ;;
                    --root=*|--run-root=*|--driver=*) store_args+=("${{COMP_WORDS[j]}}") ;;
                esac
            done
            if [[ "$full" == help ]]; then
                COMPREPLY=($(compgen -W "{' '.join(n for n in top if n not in ('help', 'completion', 'man'))}" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$(graphdriver "${{store_args[@]}}" layers 2>/dev/null)" -- "$cur"))
            fi ;;
        completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}}
complete -F _graphdriver graphdriver
"""


def _fish(top: list[str], groups: dict[str, list[str]], options: dict[str, list[str]], globals_: list[str],
          takes_id: list[str]) -> str:
    lines = ["# fish completion for graphdriver (graphdriver completion fish)",
             "complete -c graphdriver -f",
             f"complete -c graphdriver -n __fish_use_subcommand -a '{' '.join(top)}'"]
    for g, cmds in groups.items():
        lines.append(f"complete -c graphdriver -n '__fish_seen_subcommand_from {g}' -a '{' '.join(cmds)}'")
    for flag in globals_:
        if flag.startswith("--"):
            lines.append(f"complete -c graphdriver -l {flag[2:]}")
    for name, opts in options.items():
        last = name.split(" ")[-1]
        for flag in opts:
            if flag.startswith("--"):
                lines.append(f"complete -c graphdriver -n '__fish_seen_subcommand_from {last}' -l {flag[2:]}")
    single = " ".join(n for n in takes_id if " " not in n)
    lines.append(f"complete -c graphdriver -n '__fish_seen_subcommand_from {single}' "
                 "-a '(graphdriver layers 2>/dev/null)'")
    return "\n".join(lines) + "\n"

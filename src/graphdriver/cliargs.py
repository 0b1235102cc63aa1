"""Command-line parsing for ``graphdriver``: one table, read by a small parser.

Scripts call a layer store thousands of times, so parsing must cost next to
nothing: no ``argparse`` (whose import and per-command parser building cost
more than the rest of a read-only command), no regexes, no dataclasses.  The
table below is the one description of the command line; the parser, the
usage errors and ``--help`` all read it.

Global options may stand before or after the command (``graphdriver layers
--json`` and ``graphdriver --json layers`` are the same); ``--opt=VALUE`` and
``--opt VALUE`` are the same; single-letter switches bundle (``-qv``) and a
single-letter option takes its value attached (``-oFILE``, ``-qoFILE``), as getopt
reads them; ``--`` ends the options (the command may still follow it); ``-`` is an
argument (standard input).  A usage error is one line and exit code 2; an
unknown command is told the commands nearest to it.
"""

from __future__ import annotations

from graphdriver.errors import GraphDriverError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

PROG = "graphdriver"
#: Why a command that prints cannot run with standard output closed.
CLOSED_STDOUT = "is closed; redirect it (to /dev/null to drop the output)"


class UsageError(GraphDriverError):
    """Bad arguments: one line, exit code 2, a pointer to ``--help``."""

    exit_code = 2

    def __init__(self, message: str, command: str | None = None) -> None:
        where = f"{PROG} {command}" if command else PROG
        super().__init__(message, f"see '{where} --help'")


class Option:
    """One option: its spellings, where its value goes, and what it means."""

    __slots__ = ("bare", "choices", "dest", "flags", "help", "metavar", "repeat", "value")

    def __init__(self, flags: str, help: str, *, metavar: str = "", repeat: bool = False,
                 dest: str = "", choices: tuple[str, ...] = (), bare: str = "") -> None:
        self.flags = tuple(flags.split("|"))
        self.dest = dest or self.flags[-1].lstrip("-").replace("-", "_")
        self.metavar = metavar  # empty: a switch that takes no value
        self.value = bool(metavar)
        self.repeat = repeat
        self.help = help
        self.choices = choices  # empty: any value
        # The value of the flag standing alone (podman's ``--tls-verify``); then a value is
        # given with ``=`` or as the next word only when that word is one of the choices.
        self.bare = bare


#: Values that name a file: an empty one is a usage error, not a file named "".
# Values naming a file or folder: an empty one is never meant (``--root ""`` must
# not fall back to the default store).
_PATH_VALUES = frozenset({"DIR", "FILE", "PATH", "SOURCE"})
#: Values never empty: those and a driver's name (``--driver ""`` is no request to probe).
_NOT_EMPTY = _PATH_VALUES | {"NAME"}


class Command:
    """One command: positional arguments (``ID``, ``[FILE]``, ``[ID...]``) and options."""

    __slots__ = ("args", "help", "name", "options")

    def __init__(self, name: str, args: str, help: str, *options: Option) -> None:
        self.name = name
        self.args = tuple(args.split())
        self.help = help
        self.options = options


#: --parent of the commands that compare a layer with a parent: its recorded one unless told.
_PARENT = Option("--parent", "the parent layer (default: the layer's own)", metavar="P")
#: --parent of a new layer: none given, the layer is a base layer.
_NEW_PARENT = Option("--parent", "the parent layer (default: none, a base layer)", metavar="P")
#: --parent of apply: a check of the parent the layer sits on, never another one.
_APPLY_PARENT = Option("--parent", "the parent the layer must sit on (default: the layer's own; "
                                   "another is refused)", metavar="P")
#: A layer's own id maps (after the command; before it, --uidmap/--gidmap are the store's).
_LAYER_MAPS = (
    Option("--uidmap", "the layer's uid map, container:host:size (repeatable or comma-separated; "
                       "default: its parent's, else the store's)", metavar="MAP", repeat=True,
           dest="layer_uidmap"),
    Option("--gidmap", "the layer's gid map (default: the --uidmap given, else its parent's or the "
                       "store's)", metavar="MAP", repeat=True, dest="layer_gidmap"),
)

_INSECURE = "https without checking the certificate, or plain http (a local registry)"
_TLS_VERIFY = ("false (or 0, f, F, FALSE, False): as --insecure (podman's spelling); true (or 1, t, T, "
               "TRUE, True), or the flag alone: check the certificate (the default)")
#: The spellings of true and false ``--tls-verify`` takes: Go's strconv.ParseBool's, as podman reads them.
TRUE_WORDS = ("true", "1", "t", "T", "TRUE", "True")
FALSE_WORDS = ("false", "0", "f", "F", "FALSE", "False")
_BOOL_WORDS = tuple(w for pair in zip(TRUE_WORDS, FALSE_WORDS, strict=True) for w in pair)

GLOBAL_OPTIONS = (
    Option("--root", "the store (default $GRAPHDRIVER_ROOT, else /var/lib/graphdriver for root, else "
                     "$XDG_DATA_HOME/graphdriver, ~/.local/share/graphdriver)", metavar="DIR"),
    Option("--run-root", "runtime state: mounts, mount counts (default $GRAPHDRIVER_RUNROOT, else "
                         "/run/graphdriver for root, else $XDG_RUNTIME_DIR/graphdriver, else "
                         "the folder run under --root)", metavar="DIR"),
    Option("--driver", "overlay, vfs or windowsfilter (default: the store's, else probed)",
           metavar="NAME"),
    Option("--opt", "a driver option, repeatable (size=20G: the limit of --rw layers created "
                    "without --size; mount_program=PATH, ...)",
           metavar="KEY=VALUE", repeat=True),
    Option("--additional-store", "a read-only store whose layers are listed and used as parents",
           metavar="DIR", repeat=True),
    Option("--uidmap", "uid map of a new store (container:host:size[,...])", metavar="MAP"),
    Option("--gidmap", "gid map of a new store (default: the --uidmap given)", metavar="MAP"),
    Option("--json", "machine-readable output on stdout"),
    Option("-q|--quiet", "less on stderr (no progress bars)"),
    Option("-v|--verbose", "more on stderr (the causes behind an error)"),
    Option("-h|--help", "this help"),
    Option("--version", "the program's name and version"),
)

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status", "", "the driver's name, then what it found (key: value lines)"),
    Command("create", "ID", "create an empty layer (an image layer; --rw for a container layer)",
            _NEW_PARENT,
            Option("--rw", "a writable container layer"),
            Option("--size", "limit a --rw layer's size (20G, 512M, ...)", metavar="SIZE"),
            Option("--mount-label", "SELinux label for its mounts", metavar="LABEL"), *_LAYER_MAPS),
    Command("import", "ID [FILE]", "create an image layer from a layer tarball (plain, gzip, zstd, "
            "xz, bzip2; FILE or - for standard input); prints the bytes applied", _NEW_PARENT, *_LAYER_MAPS),
    Command("apply", "ID [FILE]", "apply a layer tarball to an existing layer (to one fresh from "
            "create: recorded as import records it); prints the bytes applied", _APPLY_PARENT, *_LAYER_MAPS),
    Command("mount", "ID", "make the layer's root filesystem available; prints its path "
            "(counted: each mount needs an unmount)",
            Option("--mount-label", "SELinux label for the mount", metavar="LABEL")),
    Command("unmount", "ID", "release one mount; the last one really unmounts",
            Option("--force", "drop every mount count and unmount (after a dead runtime); says what "
                              "it did")),
    Command("mounted", "ID", "the layer's mount count (0 when not mounted)"),
    Command("exists", "ID", "exit 0 if the layer exists, 3 if not"),
    Command("layers", "", "list the layers, one id a line"),
    Command("layer", "ID", "the layer's record, as JSON"),
    Command("changes", "ID", "what the layer changed (A added, C changed, D deleted), sorted by path",
            _PARENT),
    Command("diff", "ID", "the layer tarball; byte for byte the imported one while unchanged",
            _PARENT, Option("-o|--output", "write to FILE instead of standard output",
                            metavar="FILE"),
            Option("--regenerate", "build the tarball from the layer's files even where the "
                                   "imported bytes cannot be given back (another digest)"),
            Option("--compress", "none (default: bit-exact), gzip, zstd, or original (the "
                                 "compressed bytes imported, where an image kept them)", metavar="KIND",
                   choices=("none", "gzip", "zstd", "original"))),
    Command("diffsize", "ID", "bytes the layer adds (hard-linked files once)", _PARENT),
    Command("remove", "ID", "delete a layer (refused while mounted or with children)"),
    Command("cleanup", "", "finish or undo what a crash interrupted; prints what it did"),
    Command("tarsplit", "ID", "the layer's tar-split metadata (gzip-compressed NDJSON)",
            Option("-o|--output", "write to FILE instead of standard output", metavar="FILE")),
    Command("check", "[ID...]", "re-export layers and compare with their recorded digests"),
    Command("base-images", "", "(windowsfilter) register and list the configured base images"),
    Command("image load", "SOURCE", "load the images of a docker-archive, an oci-archive or an OCI "
            "layout folder (- for an archive on standard input); prints the names (or ids) loaded",
            Option("--platform", "the os/arch to take from a multi-platform index (default: this "
                                 "machine's)", metavar="OS/ARCH")),
    Command("image save", "NAME", "write an image as a docker-archive (default), an oci-archive or "
            "an OCI layout folder",
            Option("-o|--output", "the file (or folder, for oci) to write; - or none: standard output",
                   metavar="PATH"),
            Option("--format", "docker-archive, oci-archive or oci", metavar="FORMAT")),
    Command("image pull", "REF", "pull an image from a registry (OCI distribution API); prints its name",
            Option("--insecure", _INSECURE),
            Option("--tls-verify", _TLS_VERIFY, metavar="BOOL", choices=_BOOL_WORDS, bare="true"),
            Option("--platform", "the os/arch to take from a multi-platform index (default: this "
                                 "machine's)", metavar="OS/ARCH")),
    Command("image push", "NAME [REF]", "push an image to a registry (to REF, default NAME); prints the "
            "manifest digest",
            Option("--insecure", _INSECURE),
            Option("--tls-verify", _TLS_VERIFY, metavar="BOOL", choices=_BOOL_WORDS, bare="true")),
    Command("image ls", "", "list the images: repository, tag, id, created, layers"),
    Command("image inspect", "NAME", "the image as JSON: id, names, digests, layers with DiffIDs "
            "and chain ids, the config"),
    Command("image tag", "NAME NEW", "give an image another name (taken from any image that had it)"),
    Command("image rm", "NAME...", "remove each name, or the image with its last name; frees the "
            "layers no other image or container uses",
            Option("-f|--force", "by id: remove the image with all its names, even in several "
                                 "repositories")),
    Command("container create", "IMAGE NAME", "a container: an init layer and a writable layer "
            "named NAME on the image (NAME works with mount, changes, diff)",
            Option("--size", "limit the writable layer's size (20G, 512M, ...)", metavar="SIZE")),
    Command("container commit", "NAME IMAGE", "make what the container changed a new image layer; "
            "prints the new image's id"),
    Command("container rm", "NAME...", "remove each container with its layers"),
    Command("container ls", "", "list the containers: name, image, created"),
    Command("tree", "", "draw the layer graph: each layer's own size, images and containers on it, "
            "shared layers"),
    Command("df", "", "disk used by images, containers and layers no image or container uses, and "
            "what prune would free"),
    Command("help", "[TOPIC...]", "what a command does, its options, exit codes and examples"),
    Command("completion", "SHELL", "a completion script for bash, zsh or fish"),
    Command("man", "", "the manual page, graphdriver(1), in roff (pipe it to man -l -)"),
    Command("prune", "", "remove unnamed unused images, image layers nothing uses and unreferenced "
            "blobs; prints what it removed",
            Option("--layers", "also remove layers made with the layer commands that no image or "
                               "container uses")),
)}

#: Commands of two words: the group, then the command (``image load``).
GROUPS = frozenset(name.partition(" ")[0] for name in COMMANDS if " " in name)


class Args:
    """Parsed arguments: every option's destination and every positional, by name.

    ``id`` is set for the commands whose arguments name ``ID`` (empty otherwise).
    """

    command: str
    id: str
    name: str
    names: list[str]
    ref: str
    insecure: bool
    tls_verify: str | None
    layers: bool
    force: bool
    compress: str | None
    topic: list[str]
    shell: str
    layer_uidmap: list[str]
    layer_gidmap: list[str]
    new: str
    image: str
    source: str
    format: str | None
    platform: str | None
    parent: str | None
    file: str
    ids: list[str]
    output: str | None
    rw: bool
    regenerate: bool
    size: str | None
    mount_label: str
    root: str | None
    run_root: str | None
    driver: str | None
    opt: list[str]
    additional_store: list[str]
    uidmap: str | None
    gidmap: str | None
    json: bool
    quiet: bool
    verbose: bool
    help: bool
    version: bool

    def __init__(self) -> None:
        self.command = self.id = self.mount_label = self.name = self.new = self.image = self.source = ""
        self.ref = ""
        self.insecure = self.layers = self.force = False
        self.compress = None
        self.topic = []
        self.layer_uidmap, self.layer_gidmap = [], []
        self.shell = ""
        self.format = self.platform = self.tls_verify = None
        self.file = "-"
        self.parent = self.output = self.size = None
        self.root = self.run_root = self.driver = self.uidmap = self.gidmap = None
        self.ids, self.names, self.opt, self.additional_store = [], [], [], []
        self.rw = self.regenerate = self.json = self.quiet = self.verbose = self.help = False
        self.version = False


#: Options whose value names a file or folder (an empty one is a usage error).
def _index(options: Sequence[Option]) -> dict[str, Option]:
    return {flag: o for o in options for flag in o.flags}


_GLOBAL_INDEX = _index(GLOBAL_OPTIONS)


def parse(argv: Sequence[str]) -> Args:
    """Parse *argv* (without the program name); :class:`UsageError` on bad arguments."""
    args = Args()
    words: list[str] = []
    index = _GLOBAL_INDEX
    command: Command | None = None
    items = list(argv)
    options_end = False  # after ``--``: every word is the command or a positional
    i = 0
    while i < len(items):
        word = items[i]
        i += 1
        if word == "--" and not options_end:
            options_end = True
            continue
        if options_end or not word.startswith("-") or word == "-":
            if command is None:
                if word in GROUPS:
                    if i >= len(items) or (items[i].startswith("-") and not options_end):
                        args.command = word  # the group alone: its help, or a usage error
                        continue
                    word = f"{word} {items[i]}"
                    i += 1
                command = COMMANDS.get(word)
                if command is None:
                    raise unknown_command(word)
                args.command = word
                index = {**_GLOBAL_INDEX, **_index(command.options)}
            else:
                words.append(word)
            continue
        flag, eq, inline = word.partition("=")
        option = index.get(flag)
        if option is None:
            attached = _switches(word, index, args)
            if attached is None:
                continue
            option, flag, eq, inline = attached  # -oFILE; -qo alone: the value is the next word
        if not option.value:
            if eq:
                raise UsageError(f"option {flag} takes no value", args.command or None)
            setattr(args, option.dest, True)
            continue
        if not eq and option.bare and (i >= len(items) or items[i] not in option.choices):
            inline = option.bare
        elif not eq:
            if i >= len(items):
                raise UsageError(f"option {flag} needs a value ({option.metavar})", args.command or None)
            inline = items[i]
            i += 1
        _check_value(option, flag, inline, args.command)
        if option.repeat:
            getattr(args, option.dest).append(inline)
        else:
            setattr(args, option.dest, inline)
    if args.help or args.version:
        return args
    if command is None:
        if args.command in GROUPS:
            raise UsageError(f"'{args.command}' needs a command", args.command)
        raise UsageError("no command given")
    _positionals(command, words, args)
    return args


def _switches(word: str, index: dict[str, Option], args: Args) -> tuple[Option, str, str, str] | None:
    """Single-letter options bundled in one word, as getopt takes them: switches (``-qv``), and
    at most one option that takes a value, last, the rest of the word being its value
    (``-oFILE``, ``-qoFILE``, or ``-qo=FILE`` as ``-o=FILE``; ``-qo`` takes the next word).

    Switches are set on *args*; the option taking a value is handed back with its flag,
    ``"="`` or ``""`` (no value in the word: it is the next word) and its value, for the caller
    to read as any other.  A letter that is no option is a usage error naming it.
    """
    where = args.command or None
    flag, eq, _inline = word.partition("=")
    if flag.startswith("--") or len(flag) < 3:
        raise UsageError(f"unknown option {_quote(flag)}", where)
    switches: list[Option] = []
    for at, letter in enumerate(word[1:], 1):
        option = index.get("-" + letter)
        if option is None:
            raise UsageError(f"unknown option {_quote('-' + letter)} in {_quote(flag)}", where)
        if option.value:
            for switch in switches:
                setattr(args, switch.dest, True)
            value = word[at + 1:]
            return option, "-" + letter, "=" if value else "", value.removeprefix("=")
        switches.append(option)
        if word[at + 1:at + 2] == "=":
            break
    if eq:
        raise UsageError(f"options {flag} take no value", where)
    for switch in switches:
        setattr(args, switch.dest, True)
    return None


def _check_value(option: Option, flag: str, value: str, command: str) -> None:
    """An option's value: one of its choices, a file name that is not empty."""
    where = command or None
    if option.choices and value not in option.choices:
        *most, last = option.choices
        raise UsageError(f"option {flag} {_quote(value)}: choose {', '.join(most)} or {last}", where)
    if not value and option.metavar in _NOT_EMPTY:
        raise UsageError(f"option {flag} needs a value ({option.metavar}), not an empty name", where)


def _positionals(command: Command, words: list[str], args: Args) -> None:
    for spec in command.args:
        if words and not words[0] and spec.strip("[]") in _PATH_VALUES:
            raise UsageError(f"argument {spec.strip('[]')} is an empty name", command.name)
        if spec.endswith("...]"):
            setattr(args, "ids" if spec == "[ID...]" else spec.strip("[].").lower(), words)
            words = []
        elif spec.endswith("..."):  # one or more: the first in ``name``, all in ``names``
            if not words:
                raise UsageError(f"missing argument {spec[:-3]}", command.name)
            setattr(args, spec[:-3].lower(), words[0])
            setattr(args, spec[:-3].lower() + "s", words)
            words = []
        elif spec.startswith("["):
            if words:
                setattr(args, spec.strip("[]").lower(), words.pop(0))
        elif not words:
            raise UsageError(f"missing argument {spec}", command.name)
        else:
            setattr(args, spec.lower(), words.pop(0))
    if words:
        raise UsageError(f"unexpected argument {_quote(words[0])}", command.name)


def unknown_command(word: str) -> UsageError:
    """The usage error for *word* (``lyers``, ``image lss``), which names no command: with the
    commands it is closest to, as git suggests them, and a pointer to the help that lists them
    (a group's own for a command of a group)."""
    group, _, rest = word.partition(" ")
    if rest and group in GROUPS:  # alike by the command's own word: the group's is no likeness
        known = [name.partition(" ")[2] for name in COMMANDS if name.startswith(group + " ")]
        close = [f"{group} {name}" for name in _closest(rest, known)]
    else:
        known = list(dict.fromkeys(name.partition(" ")[0] for name in COMMANDS))
        close, group = _closest(word, known), ""
    hint = f" (did you mean {' or '.join(map(_quote, close))}?)" if close else ""
    return UsageError(f"unknown command {_quote(word)}{hint}", group or None)


def _closest(word: str, known: list[str]) -> list[str]:
    """The words of *known* most like *word*: those sharing the best likeness (difflib's ratio,
    at least 0.6), as git lists the commands of the best score.  An error's path alone pays
    for difflib."""
    import difflib

    scored = [(difflib.SequenceMatcher(None, word, k).ratio(), k) for k in known]
    best = max((score for score, _ in scored), default=0.0)
    return [k for score, k in scored if score >= 0.6 and score == best]


def _quote(word: str) -> str:
    """A word from the command line, shortened and with control characters escaped."""
    shown = word if len(word) <= 60 else word[:57] + "..."
    return repr(shown) if not shown.isprintable() else f"'{shown}'"


def help_text(command: str | None) -> str:
    """``graphdriver --help`` or ``graphdriver COMMAND --help`` (see :mod:`graphdriver.clihelp`)."""
    from graphdriver.clihelp import help_text as render

    return render(command)

"""Help that teaches, the manual page and shell completion: all from the one command table."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphdriver import clihelp
from graphdriver.cliargs import COMMANDS, GLOBAL_OPTIONS, GROUPS
from tests.conftest import ROOT, run_cli


def gd(*args: str, root: Path, check: bool = True):
    return run_cli(*args, root=root, driver="vfs", check=check)


def test_every_command_has_a_description_exit_codes_and_an_example(tmp_path):
    assert set(clihelp.DOCS) == set(COMMANDS)
    for name, command in COMMANDS.items():
        doc = clihelp.DOCS[name]
        assert doc.group in clihelp.GROUPS and len(doc.description) > 40 and doc.examples, name
        assert all(cmd.startswith(("graphdriver ", "mnt=$(graphdriver", "source <(graphdriver", "zstd "))
                   for cmd, _ in doc.examples), name
        text = gd(*name.split(), "--help", root=tmp_path).stdout.decode()
        assert text == gd("help", *name.split(), root=tmp_path).stdout.decode(), name
        assert text.startswith(f"usage: graphdriver [OPTIONS] {name}") and "Examples:" in text
        assert "Exit codes:" in text
        for option in command.options:
            assert option.flags[-1] in text, (name, option.flags)


def test_the_overview_lists_every_command_by_group(tmp_path):
    text = gd("--help", root=tmp_path).stdout.decode()
    for title in clihelp.GROUPS.values():
        assert f"\n{title}:\n" in text
    for name in COMMANDS:
        assert f"\n  {name} " in text, name
    for group in GROUPS:
        sub = gd(group, "--help", root=tmp_path).stdout.decode()
        assert all(f"  {n} " in sub for n in COMMANDS if n.startswith(group + " "))
    bad = gd("help", "nothing", root=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1


#: What help is asked for in the wrapping tests: the overview, a group's, commands' own.
_HELPS = [("--help",), ("image", "--help"), ("diff", "--help"), ("import", "--help"),
          ("image", "load", "--help"), ("completion", "--help")]


@pytest.mark.parametrize("width", [40, 60, 80, 132])
def test_help_is_filled_to_the_terminal_width_with_a_hanging_indent(tmp_path, monkeypatch, width):
    """Help lines ran to 198 columns whatever the terminal: they are filled to $COLUMNS (less
    one), each description's further lines under its first, as argparse and git lay them out.
    Only the usage line, an example's command and a word longer than the room reach past it;
    a terminal narrower than the description column still gets a few words a line."""
    monkeypatch.setenv("COLUMNS", str(width))
    limit = max(width - 1, 31 + 24)  # the options' description column, and 24 columns of words
    for args in _HELPS:
        lines = gd(*args, root=tmp_path).stdout.decode().splitlines()
        for line in lines:
            if line.startswith(("usage: ", "  $ ")) or len(line.split()) == 1:
                continue
            assert len(line) <= limit, (args, line)
            assert len(line) <= width - 1 or line.startswith("  "), (args, line)
        if args == ("--help",) and width <= 80:  # (wider, these fit on one line)
            at = next(i for i, line in enumerate(lines) if line.startswith("  import "))
            assert lines[at].index("create an image layer") == 21
            assert lines[at + 1].startswith(" " * 21) and lines[at + 1][21] != " ", lines[at:at + 3]
            at = next(i for i, line in enumerate(lines) if line.startswith("  --run-root DIR "))
            assert lines[at].index("runtime state") == 31
            assert lines[at + 1].startswith(" " * 31) and lines[at + 1][31] != " ", lines[at:at + 3]
        if args == ("diff", "--help") and width <= 80:
            at = next(i for i, line in enumerate(lines) if line.startswith("  6  "))
            assert lines[at + 1].startswith(" " * 5) and lines[at + 1][5] != " ", lines[at:at + 3]


def test_help_says_the_same_whatever_the_width_and_the_manual_and_completion_ignore_it(tmp_path,
                                                                                     monkeypatch):
    """Filling changes where lines break, never a word; the manual and the completion scripts
    (made from the same table) do not depend on the terminal at all."""
    said: dict[str, list[str]] = {}
    as_is = [("man",), ("completion", "bash"), ("completion", "fish")]
    for width in ("40", "80", "500"):
        monkeypatch.setenv("COLUMNS", width)
        for args in [*_HELPS, *as_is]:
            out = gd(*args, root=tmp_path).stdout.decode()
            said.setdefault(" ".join(args), []).append(out if args in as_is else " ".join(out.split()))
    for args, texts in said.items():
        assert texts[0] == texts[1] == texts[2], args
    monkeypatch.setenv("COLUMNS", "500")
    wide = gd("--help", root=tmp_path).stdout.decode()
    assert any(line.startswith("  --run-root DIR ") and line.endswith("the folder run under --root)")
               for line in wide.splitlines())  # room enough: one line each


def test_help_loads_no_module_to_fill_its_lines(tmp_path):
    """Filling costs no import: neither shutil (for the width) nor textwrap and re; and the
    likeness of words is loaded only to tell an unknown command what it is close to."""
    probe = ("import sys\nfrom graphdriver.cli import main\nmain(sys.argv[1:])\n"
             "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    for args, banned in ((["--help"], {"shutil", "textwrap", "re", "difflib"}),
                         (["diff", "--help"], {"shutil", "textwrap", "re", "difflib"}),
                         (["--root", str(tmp_path / "s"), "layers"], {"difflib"}),
                         (["lyers"], set())):
        proc = subprocess.run([sys.executable, "-S", "-c", probe, *args], capture_output=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        modules = set(proc.stderr.decode().splitlines()[-1].split())
        assert not modules & banned, (args, sorted(modules & banned))
        if args == ["lyers"]:
            assert "difflib" in modules


@pytest.mark.parametrize("columns", [None, "100", "0", "x", "-3"])
def test_the_width_is_the_one_shutil_would_tell(monkeypatch, columns):
    """$COLUMNS when a positive number, else the terminal's, else 80: as
    shutil.get_terminal_size(), whose module help does not load."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert clihelp.columns() == shutil.get_terminal_size().columns


def test_the_manual_page_is_made_from_the_same_table(tmp_path):
    page = gd("man", root=tmp_path).stdout.decode()
    assert page.startswith(".TH GRAPHDRIVER 1")
    for name in COMMANDS:
        assert f".SS {name.replace('-', chr(92) + '-')}" in page, name
    if shutil.which("groff"):
        proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page.encode(),
                              capture_output=True, check=True)
        assert proc.stderr == b""


@pytest.fixture
def on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has a ``graphdriver`` running this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "graphdriver"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT / "src"} exec {sys.executable} -m graphdriver "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _comp_words(line: str, breaks: str) -> list[str]:
    """The words bash hands a completion function for *line* (the cursor at its end): split at
    blanks, and each run of COMP_WORDBREAKS characters (*breaks*) a word of its own."""
    words: list[str] = []
    for token in line.split():
        piece = ""
        for c in token:
            if (c in breaks) != (bool(piece) and piece[-1] in breaks):
                if piece:
                    words.append(piece)
                piece = ""
            piece += c
        words.append(piece)
    return [*words, ""] if line.endswith(" ") else words


def _complete(script: str, line: str, env: dict[str, str], breaks: str = "=:", cwd: Path | None = None,
              shell: str = "bash") -> list[str]:
    """What the completion function of *script* offers for *line*, as bash would call it."""
    words = _comp_words(line, breaks)
    quoted = " ".join(shlex.quote(w) for w in words)
    program = (f"{script}\ncomplete -p graphdriver >/dev/null || exit 9\n"
               f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMP_LINE={shlex.quote(line)}; "
               f"COMP_POINT={len(line)}; _graphdriver; "
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run([shell, "-c", program], capture_output=True, text=True, env=env, check=True, cwd=cwd)
    return [w for w in out.stdout.split("\n") if w]  # one a line: names may hold blanks


def test_bash_completion_loads_and_completes_commands_options_and_layer_ids(tmp_path, on_path):
    store = tmp_path / "store"
    gd("create", "alpha-layer", root=store)
    gd("create", "beta-layer", root=store)
    script = gd("completion", "bash", root=tmp_path).stdout.decode()
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    assert _complete(script, "graphdriver mou", on_path) == ["mount", "mounted"]
    assert sorted(_complete(script, "graphdriver image p", on_path)) == ["pull", "push"]
    assert "--compress" in _complete(script, "graphdriver diff --c", on_path)
    run = f"graphdriver --root {store} --run-root {tmp_path / 'run'} --driver vfs"
    assert _complete(script, f"{run} mount al", on_path) == ["alpha-layer"]
    assert sorted(_complete(script, f"{run} diff ", on_path)) == ["alpha-layer", "beta-layer"]
    # --root=DIR: three words where COMP_WORDBREAKS holds '=' (bash's default), one where it does not
    whole = f"graphdriver --root={store} --run-root={tmp_path / 'run'} --driver=vfs mount al"
    assert _complete(script, whole, on_path) == ["alpha-layer"]
    assert _complete(script, whole, on_path, breaks="") == ["alpha-layer"]
    top = _complete(script, "graphdriver ", on_path)
    assert len(top) == len(set(top))
    fish = gd("completion", "fish", root=tmp_path).stdout.decode()
    assert "__graphdriver_needs_command" in fish and "graphdriver $line[5..-1] layers" in fish
    assert gd("completion", "tcsh", root=tmp_path, check=False).returncode == 2


def _option_text(text: str, start: str) -> str:
    """The help of the option whose line starts with *start*, its wrapped lines joined."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(start))
    kept = [lines[at]]
    for line in lines[at + 1:]:
        if not line.startswith(" " * 31):  # the hanging indent of an option's description
            break
        kept.append(line)
    return " ".join(" ".join(kept).split())


def test_the_default_root_and_run_root_are_told_whole_in_help_and_manual(tmp_path):
    text = gd("--help", root=tmp_path).stdout.decode()
    root = _option_text(text, "  --root ")
    run_root = _option_text(text, "  --run-root ")
    for says in ("$GRAPHDRIVER_ROOT", "/var/lib/graphdriver", "$XDG_DATA_HOME/graphdriver",
                 "~/.local/share/graphdriver"):
        assert says in root, says
    for says in ("$GRAPHDRIVER_RUNROOT", "/run/graphdriver", "$XDG_RUNTIME_DIR/graphdriver", "--root"):
        assert says in run_root, says
    page = gd("man", root=tmp_path).stdout.decode()
    environment = page.partition(".SH ENVIRONMENT")[2]
    assert "\\fBXDG_DATA_HOME\\fR" in environment and "\\fBXDG_RUNTIME_DIR\\fR" in environment
    assert "$XDG_DATA_HOME/graphdriver" in page.partition(".SH OPTIONS")[2]


@pytest.mark.parametrize("name, default", [("create", False), ("import", False), ("changes", True),
                                           ("diff", True), ("diffsize", True), ("apply", True)])
def test_parent_help_says_a_default_only_where_there_is_one(tmp_path, name, default):
    text = gd(name, "--help", root=tmp_path).stdout.decode()
    line = _option_text(text, "  --parent P ")
    assert ("(default: the layer's own" in line) == default, line
    if not default:
        assert "base layer" in line


def test_every_layer_command_taking_an_id_lists_exit_3(tmp_path):
    takes_id = [n for n, c in COMMANDS.items() if any(a.strip("[]").startswith("ID") for a in c.args)]
    assert {"unmount", "check", "mount", "remove"} <= set(takes_id)
    for name in takes_id:
        assert 3 in clihelp.DOCS[name].exits, name
    for name in ("unmount", "check"):
        text = gd(name, "--help", root=tmp_path).stdout.decode()
        assert "\n  3  " in text, name
        r = gd(name, "nothing-here", root=tmp_path / "store", check=False)
        assert r.returncode == 3, (name, r.stderr)


def _store_with_layers(tmp_path: Path, name: str, *ids: str) -> Path:
    store = tmp_path / name
    for layer_id in ids:
        gd("create", layer_id, root=store)
    return store


@pytest.mark.parametrize("form", ["FLAG VALUE", "FLAG=VALUE"])
@pytest.mark.parametrize("flag", [f for o in GLOBAL_OPTIONS if o.value for f in o.flags])
def test_bash_completion_skips_the_value_of_every_option_before_the_command(tmp_path, on_path, flag, form):
    """Values with '=' and ':' (COMP_WORDBREAKS splits them into several words) included."""
    store = _store_with_layers(tmp_path, "st=o:re", "alpha-layer")
    values = {"--root": str(store), "--run-root": str(tmp_path / "r=u:n"), "--driver": "vfs",
              "--opt": "mountopt=a=b:c", "--additional-store": str(store), "--uidmap": "0:100000:65536",
              "--gidmap": "0:100000:65536"}
    given = f"{flag} {values[flag]}" if form == "FLAG VALUE" else f"{flag}={values[flag]}"
    run = f"--root {store} --run-root {tmp_path / 'r=u:n'} --driver vfs"
    script = gd("completion", "bash", root=tmp_path).stdout.decode()
    for line in (f"graphdriver {given} {run} mount al", f"graphdriver {run} {given} mount al"):
        assert _complete(script, line, on_path) == ["alpha-layer"], line
    assert set(values) == {o.flags[0] for o in GLOBAL_OPTIONS if o.value}  # every one tried


def test_bash_completion_offers_what_each_argument_and_option_value_is(tmp_path, on_path):
    store = _store_with_layers(tmp_path, "store", "alpha-layer")
    extra = _store_with_layers(tmp_path, "extra", "gamma-layer")
    work = tmp_path / "work"
    (work / "sub dir").mkdir(parents=True)
    (work / "sample.tar").write_bytes(b"")
    script = gd("completion", "bash", root=tmp_path).stdout.decode()
    run = f"graphdriver --root {store} --run-root {tmp_path / 'run'} --driver vfs"

    def offers(line: str) -> list[str]:
        return sorted(_complete(script, line, on_path, cwd=work))

    # files where the command takes a FILE or SOURCE, and for -o
    assert offers(f"{run} import new sa") == ["sample.tar"]
    assert offers(f"{run} import new --parent alpha-layer sa") == ["sample.tar"]
    assert offers(f"{run} apply alpha-layer sa") == ["sample.tar"]
    assert offers(f"{run} image load sa") == ["sample.tar"]
    assert offers(f"{run} diff alpha-layer -o sa") == ["sample.tar"]
    assert offers(f"{run} diff alpha-layer --output=sa") == ["sample.tar"]
    assert offers(f"{run} --root su") == ["sub dir"]  # a folder, whatever blanks it holds
    # ids where a layer is named, from the line's stores, additional ones included
    assert offers(f"{run} create x --parent al") == ["alpha-layer"]
    assert offers(f"{run} --additional-store {extra} mount ") == ["alpha-layer", "gamma-layer"]
    assert offers(f"{run} --additional-store={extra} check alpha-layer ") == ["alpha-layer", "gamma-layer"]
    assert offers(f"{run} import new ") == ["sample.tar", "sub dir"]  # FILE, not an id
    # a value that is no file and has no choices: nothing; choices: the choices
    assert offers(f"{run} create x --size ") == []
    assert offers(f"{run} create x --size=") == []
    assert offers(f"{run} diff alpha-layer --compress ") == ["gzip", "none", "original", "zstd"]
    assert offers(f"{run} diff alpha-layer --compress=z") == ["zstd"]
    assert offers("graphdriver --driver ") == ["overlay", "vfs", "windowsfilter"]
    assert offers("graphdriver completion ") == ["bash", "fish", "zsh"]
    # help topics: the commands, then a group's commands
    image_commands = sorted(n.split()[1] for n in COMMANDS if n.startswith("image "))
    assert offers("graphdriver help image ") == image_commands
    assert offers("graphdriver help di") == ["diff", "diffsize"]
    assert offers("graphdriver help diff ") == []
    # after --, no more options: the words are the command and its arguments
    assert offers(f"{run} -- mount al") == ["alpha-layer"]


def test_the_fish_script_completes_from_the_table_and_lets_files_through(tmp_path):
    fish = gd("completion", "fish", root=tmp_path).stdout.decode()
    lines = fish.splitlines()
    assert "complete -c graphdriver -f" not in lines  # no files anywhere: -o and FILE lost theirs
    assert "complete -c graphdriver -n 'not __graphdriver_arg file' -f" in lines
    assert "__fish_use_subcommand" not in fish and "__fish_seen_subcommand_from" not in fish
    assert any(" -l driver -x -a 'overlay vfs windowsfilter' " in line for line in lines)
    assert any(" -l compress -x -a 'none gzip zstd original' " in line for line in lines)
    assert any("__graphdriver_using 'diff'" in line and " -s o -l output -r -F " in line for line in lines)
    assert "graphdriver $line[5..-1] layers" in fish  # ids of the line's store, not $GRAPHDRIVER_ROOT's
    value_case = next(line for line in lines if line.strip().startswith("case --root "))
    assert set(value_case.split()[1:]) >= {f for o in GLOBAL_OPTIONS if o.value for f in o.flags}
    for flag in ("--root", "--run-root", "--driver", "--additional-store"):
        assert f"'{flag}=*'" in fish, flag


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed (apt-get install fish)")
def test_fish_completion_reads_the_line_as_the_parser_does(tmp_path, on_path):
    store = _store_with_layers(tmp_path, "s1", "alpha-layer")
    extra = _store_with_layers(tmp_path, "extra", "gamma-layer")
    work = tmp_path / "work"
    (work / "sub dir").mkdir(parents=True)
    (work / "sample.tar").write_bytes(b"")
    script = tmp_path / "graphdriver.fish"
    script.write_bytes(gd("completion", "fish", root=tmp_path).stdout)
    env = {**on_path, "GRAPHDRIVER_ROOT": str(tmp_path / "elsewhere")}  # the line's --root wins

    def offers(line: str) -> list[str]:
        program = f"source {script}; complete -C \"$GD_LINE\""
        out = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True, text=True,
                             env={**env, "GD_LINE": line}, cwd=work, check=True)
        return sorted(line.split("\t")[0] for line in out.stdout.splitlines())

    run = f"graphdriver --root {store} --run-root {tmp_path / 'run'}"
    assert offers(f"graphdriver --root {store} la") == ["layer", "layers"]
    assert offers(f"graphdriver --opt size=1G --root={store} la") == ["layer", "layers"]
    assert offers(f"{run} mount ") == ["alpha-layer"]
    assert offers(f"{run} --additional-store {extra} mount ") == ["alpha-layer", "gamma-layer"]
    assert offers(f"{run} create x --parent ") == ["alpha-layer"]
    assert offers("graphdriver --driver ") == ["overlay", "vfs", "windowsfilter"]
    assert offers("graphdriver diff x --compress ") == ["gzip", "none", "original", "zstd"]
    assert offers(f"{run} import new ") == ["sample.tar", "sub dir/"]
    assert offers(f"{run} diff alpha-layer -o sa") == ["sample.tar"]
    assert offers(f"{run} image load sa") == ["sample.tar"]
    assert offers(f"{run} create x --size ") == []
    assert offers("graphdriver help image p") == ["pull", "push"]
    assert offers("graphdriver completion ") == ["bash", "fish", "zsh"]


def _first_tab(zdotdir: Path, line: str, expect: str, env: dict[str, str], timeout: float = 20.0) -> str:
    """What an interactive zsh (its .zshrc in *zdotdir*) shows once *line* and one TAB are typed:
    read until *expect* shows, or *timeout* seconds."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(["zsh", "-d", "-i"], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env={**env, "ZDOTDIR": str(zdotdir), "TERM": "dumb"})
    os.close(slave)

    def read_until(text: bytes) -> bytes:
        out = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end and text not in out:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:  # the shell is gone
                    break
        return out

    try:
        read_until(b"ready% ")
        os.write(master, line.encode() + b"\t")
        return read_until(expect.encode()).decode(errors="replace")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed (apt-get install zsh)")
@pytest.mark.parametrize("how", ["autoloaded from fpath", "sourced"])
def test_zsh_completion_completes_the_first_tab(tmp_path, on_path, how):
    store = _store_with_layers(tmp_path, "store", "alpha-layer")
    functions = tmp_path / "functions"
    functions.mkdir()
    script = functions / "_graphdriver"
    script.write_bytes(gd("completion", "zsh", root=tmp_path).stdout)
    rc = ("autoload -U compinit && compinit -u -D\nsource <(graphdriver completion zsh)\n" if how == "sourced"
          else f"fpath=({functions} $fpath)\nautoload -U compinit && compinit -u -D\n")
    zdotdir = tmp_path / "zdotdir"
    zdotdir.mkdir()
    (zdotdir / ".zshrc").write_text(rc + "PS1='ready%% '\n")
    assert "graphdriver status " in _first_tab(zdotdir, "graphdriver stat", "status ", on_path)
    line = f"graphdriver --opt size=1G --root {store} --run-root {tmp_path / 'run'} mount al"
    assert "mount alpha-layer " in _first_tab(zdotdir, line, "alpha-layer ", on_path)


def test_version_prints_the_name_and_the_version_as_installed(tmp_path):
    """``graphdriver --version``, as ``podman --version`` answers: one line, exit 0, no store."""
    from importlib.metadata import version

    r = run_cli("--version", root=tmp_path / "never-made")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"graphdriver {version('graphdriver')}\n".encode(), b"")
    assert not (tmp_path / "never-made").exists()

"""The command-line contract (shared/spec/cli.md), driven as a user would."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from graphdriver.testing.treeutil import D, F, make_tar
from tests.conftest import run_cli


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def cli(root: Path, *args: str, input: bytes | None = None):
    return run_cli(*args, root=root, driver=None, input=input)


def test_full_session(root, tmp_path):
    layer = make_tar({"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n")})
    (tmp_path / "base.tar").write_bytes(layer)
    r = run_cli("import", "base", str(tmp_path / "base.tar"), root=root, driver="vfs")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == str(len(b"127.0.0.1 localhost\n"))
    r = cli(root, "create", "ctr", "--parent", "base", "--rw")
    assert (r.returncode, r.stdout.decode().strip()) == (0, "ctr")
    mnt = cli(root, "mount", "ctr").stdout.decode().strip()
    Path(mnt, "etc/resolv.conf").write_text("nameserver 10.0.0.1\n")
    assert cli(root, "changes", "ctr").stdout.decode() == "C /etc\nA /etc/resolv.conf\n"
    r = cli(root, "diff", "ctr")
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        assert sorted(m.name.rstrip("/") for m in tf) == ["etc", "etc/resolv.conf"]
    out = tmp_path / "ctr.tar"
    assert cli(root, "diff", "ctr", "-o", str(out)).returncode == 0
    assert out.read_bytes() == r.stdout
    assert cli(root, "diffsize", "ctr").stdout.decode().strip() == "20"
    assert cli(root, "remove", "ctr").returncode == 5  # mounted
    assert cli(root, "unmount", "ctr").returncode == 0
    assert cli(root, "remove", "base").returncode == 5  # has children
    assert cli(root, "layers").stdout.decode().split() == ["base", "ctr"]
    listing = json.loads(cli(root, "--json", "layers").stdout)
    assert [x["id"] for x in listing] == ["base", "ctr"]
    rec = json.loads(cli(root, "layer", "ctr").stdout)
    assert rec["parent"] == "base" and rec["writable"] is True and "dir" in rec["metadata"]
    st = cli(root, "status").stdout.decode().splitlines()
    assert st[0] == "vfs" and any(line.startswith("Layers: 2") for line in st)
    assert cli(root, "remove", "ctr").returncode == 0
    assert cli(root, "remove", "base").returncode == 0
    assert cli(root, "layers").stdout == b""


def test_import_from_stdin(root):
    data = make_tar({"f": F(b"abc")})
    r = cli(root, "import", "l", "-", input=data)
    assert (r.returncode, r.stdout.strip()) == (0, b"3")
    assert cli(root, "exists", "l").returncode == 0


@pytest.mark.parametrize(
    "args, code",
    [
        (["exists", "missing"], 3),
        (["mount", "missing"], 3),
        (["layer", "missing"], 3),
        (["remove", "missing"], 3),
        (["create", "x", "--parent", "missing"], 3),
        (["create", "-bad"], 2),
        (["create", "a/b"], 2),
        (["exists", "x" * 129], 2),
        (["frobnicate"], 2),
        (["--driver", "nosuch", "status"], 2),
        (["--opt", "nosuch=1", "status"], 2),
        (["create", "x", "--size", "1G"], 2),  # --size needs --rw
        (["create", "x", "--rw", "--size", "lots"], 2),
        (["--driver", "vfs", "create", "x", "--rw", "--size", "20M"], 7),  # vfs cannot limit sizes
    ],
)
def test_exit_codes(root, args, code):
    r = cli(root, *args)
    assert r.returncode == code, r.stderr
    err = r.stderr.decode()
    if args[0] == "exists" and code == 3:
        assert err == ""  # exists answers by its exit code alone, like test -e
    elif code != 2:
        assert err.startswith("graphdriver: ") and err.count("\n") == 1, err


def test_duplicate_is_exit_4(root):
    assert cli(root, "create", "a").returncode == 0
    r = cli(root, "create", "a")
    assert r.returncode == 4
    assert r.stderr.decode() == "graphdriver: layer a: already exists\n"


def test_wrong_driver_is_exit_5(root):
    assert run_cli("create", "a", root=root, driver="vfs").returncode == 0
    r = run_cli("layers", root=root, driver="overlay")
    assert r.returncode in (5, 7), r.stderr  # 7 where overlay is not even available


def test_malformed_import_one_line(root):
    r = cli(root, "import", "bad", "-", input=b"this is not a tarball" * 50)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("graphdriver: ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli(root, "exists", "bad").returncode == 3
    assert cli(root, "layers").stdout == b""


def test_cleanup_prints_nothing_when_clean(root):
    assert cli(root, "create", "a").returncode == 0
    r = cli(root, "cleanup")
    assert (r.returncode, r.stdout) == (0, b"")


@pytest.mark.parametrize(
    "args, says",
    [
        (["frobnicate"], "unknown command 'frobnicate': see 'graphdriver --help'"),
        (["layers", "--bogus"], "unknown option '--bogus': see 'graphdriver layers --help'"),
        (["create"], "missing argument ID: see 'graphdriver create --help'"),
        (["exists", "a", "b"], "unexpected argument 'b': see 'graphdriver exists --help'"),
        (["diff", "a", "-o"], "option -o needs a value (FILE): see 'graphdriver diff --help'"),
        (["create", "a", "--rw=yes"], "option --rw takes no value: see 'graphdriver create --help'"),
        ([], "no command given: see 'graphdriver --help'"),
    ],
)
def test_usage_errors_are_one_line_with_a_hint(root, args, says):
    r = cli(root, *args)
    assert r.returncode == 2
    assert r.stderr.decode() == f"graphdriver: {says}\n"
    assert r.stdout == b""


def test_help_for_the_tool_and_each_command(root):
    from graphdriver.cliargs import COMMANDS

    r = cli(root, "--help")
    assert r.returncode == 0 and b"Layers:" in r.stdout and b"Images:" in r.stdout
    for name in COMMANDS:
        assert f"  {name} ".encode() in r.stdout
        one = cli(root, name, "--help")
        assert one.returncode == 0, one.stderr
        assert one.stdout.decode().startswith(f"usage: graphdriver [OPTIONS] {name}")
    assert not root.exists()  # help touches no store


def test_global_options_after_the_command_and_inline_values(root, tmp_path):
    assert cli(root, "create", "a").returncode == 0
    other = tmp_path / "other"
    r = run_cli("layers", "--json", f"--root={other}", root=root)  # the later --root wins
    assert (r.returncode, json.loads(r.stdout)) == (0, [])
    r = run_cli("import", "b", "--parent", "a", "-", root=root, input=make_tar({"f": F(b"x")}))
    assert (r.returncode, r.stdout) == (0, b"1\n")


def test_unknown_driver_on_a_new_root_creates_nothing(root):
    r = cli(root, "--driver", "bogus", "layers")
    assert r.returncode == 2 and "unknown driver 'bogus'" in r.stderr.decode()
    assert not root.exists()


@pytest.mark.parametrize(
    "args",
    [["layers"], ["--json", "layers"], ["exists", "a"], ["layer", "a"], ["status"], ["cleanup"],
     ["mounted", "a"], ["--opt", "mountopt=xino=off", "layers"]],
    ids=lambda a: " ".join(a),
)
def test_read_only_commands_on_a_new_root_create_nothing_and_fix_no_driver(root, tmp_path, args):
    r = cli(root, *args)
    if args[:2] == ["--opt", "mountopt=xino=off"] and r.returncode == 2:
        r = cli(root, "layers")  # the store's driver has no such option: still nothing made
    assert r.returncode in (0, 3), r.stderr
    assert not root.exists() and not (tmp_path / "run").exists()
    # The first command that stores something chooses the driver, whichever it is asked for.
    (tmp_path / "base.tar").write_bytes(make_tar({"f": F(b"x")}))
    r = run_cli("import", "base", str(tmp_path / "base.tar"), root=root, driver="vfs")
    assert r.returncode == 0, r.stderr
    assert json.loads((root / "store.json").read_text())["driver"] == "vfs"


def test_a_store_that_holds_nothing_takes_the_driver_asked_for(root, tmp_path):
    # store.json as an earlier version's read-only command left it, and nothing else.
    for sub in ("layers", "pending", "tarsplit", "overlay/.l"):
        (root / sub).mkdir(parents=True)
    (root / "store.json").write_text('{"format":1,"driver":"overlay","uidmap":"","gidmap":""}')
    r = run_cli("create", "a", root=root, driver="vfs")
    assert r.returncode == 0, r.stderr
    assert json.loads((root / "store.json").read_text())["driver"] == "vfs"
    r = run_cli("layers", root=root, driver="overlay")  # now it holds a layer: bound
    assert r.returncode in (5, 7), r.stderr


@pytest.mark.parametrize(
    "args",
    [["--root", "", "layers"], ["--root=", "status"], ["--run-root", "", "layers"],
     ["--additional-store", "", "layers"], ["diff", "a", "-o", ""], ["tarsplit", "a", "--output="]],
    ids=lambda a: " ".join(a),
)
def test_an_empty_path_is_a_usage_error(root, args):
    import subprocess
    import sys

    from tests.conftest import ROOT

    # Not run_cli: it names a root itself, and an empty --root must not mean the default store.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
           "GRAPHDRIVER_ROOT": str(root), "GRAPHDRIVER_RUNROOT": str(root.parent / "run")}
    r = subprocess.run([sys.executable, "-m", "graphdriver", *args], capture_output=True, env=env,
                       check=False)
    assert r.returncode == 2, r.stderr
    assert b"needs a non-empty" in r.stderr and r.stderr.count(b"\n") == 1
    assert not root.exists()


def test_open_store_refuses_an_empty_root(tmp_path):
    import graphdriver

    for kwargs in ({"root": ""}, {"root": str(tmp_path / "s"), "run_root": ""}):
        with pytest.raises(graphdriver.InvalidArgument):
            graphdriver.open_store(**kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()


def test_size_driver_option_is_the_default_limit_of_writable_layers(root):
    """--opt size=20G is taken by every driver and parsed as --size; where sizes cannot be
    limited (vfs), a writable layer that would get it is refused (7) and status says so."""

    def gd(*args: str):
        return run_cli("--driver", "vfs", "--opt", "size=20G", *args, root=root)

    assert gd("create", "image").returncode == 0  # image layers are never limited
    r = gd("create", "ctr", "--parent", "image", "--rw")
    assert r.returncode == 7 and r.stderr.decode().startswith("graphdriver: option size=20G: "), r.stderr
    assert gd("exists", "ctr").returncode == 3
    status = gd("status").stdout.decode()
    assert "Default Size Limit: 20G (21474836480 bytes)" in status and "cannot be enforced" in status
    assert run_cli("status", root=root, driver="vfs").stdout.decode().count("Default Size Limit") == 0
    for bad in ("size=lots", "size=0", "size="):
        r = run_cli("--driver", "vfs", "--opt", bad, "layers", root=root)
        assert r.returncode == 2 and r.stderr.count(b"\n") == 1, (bad, r.stderr)


def test_output_into_a_fifo_is_written_not_replaced(root, tmp_path):
    import os
    import threading

    data = make_tar({"f": F(b"abc")})
    assert cli(root, "import", "l", "-", input=data).returncode == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = cli(root, "diff", "l", "-o", str(fifo))
    reader.join(10)
    assert r.returncode == 0, r.stderr
    assert got == [data] and fifo.is_fifo()


def test_diff_of_a_layer_missing_its_tarsplit_data_exits_6(root):
    data = make_tar({"f": F(b"abc")})
    assert cli(root, "import", "l", "-", input=data).returncode == 0
    for path in (root / "tarsplit").iterdir():
        path.unlink()
    r = cli(root, "diff", "l")
    assert r.returncode == 6 and r.stdout == b""
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "tar-split data is missing" in err and "--regenerate" in err
    r = cli(root, "diff", "l", "--regenerate")
    assert r.returncode == 0 and r.stdout


def test_import_with_closed_stdin_is_one_line_and_no_layer(root):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
           str(root.parent / "run"), "--driver", "vfs", "import", "l", "-"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    assert r.returncode == 0  # an empty stream is an empty layer, as the Go stores take it
    r = subprocess.run(["sh", "-c", '"$@" <&-', "sh", *cmd[:-3], "import", "closed", "-"],
                       capture_output=True, env=env, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode() == ("graphdriver: standard input: is closed; name a FILE or pipe a "
                                 "tarball in\n")
    assert cli(root, "exists", "closed").returncode == 3


def test_changes_quotes_names_that_could_forge_lines(root):
    data = make_tar({"etc": D(), "etc/ok": F(b"1")})
    assert cli(root, "import", "base", "-", input=data).returncode == 0
    assert cli(root, "create", "ctr", "--parent", "base", "--rw").returncode == 0
    mnt = Path(cli(root, "mount", "ctr").stdout.decode().strip())
    (mnt / "evil\nD ").mkdir()
    (mnt / "evil\nD " / "passwd").write_bytes(b"x")
    assert cli(root, "unmount", "ctr").returncode == 0
    r = cli(root, "changes", "ctr")
    assert r.stdout.decode() == 'A "/evil\\nD "\nA "/evil\\nD /passwd"\n'
    assert json.loads(cli(root, "changes", "ctr", "--json").stdout) == [
        {"path": "/evil\nD ", "kind": "A"}, {"path": "/evil\nD /passwd", "kind": "A"}]


def test_output_to_dev_null_writes_into_it_and_never_replaces_it(root):
    import os
    import stat

    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    before = os.lstat("/dev/null")
    r = cli(root, "diff", "l", "-o", "/dev/null")
    after = os.lstat("/dev/null")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino

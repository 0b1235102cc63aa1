"""The command-line contract (shared/spec/cli.md), driven as a user would."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from graphdriver.testing.treeutil import D, F, H, make_tar
from tests.conftest import run_cli
from tests.strategies import meta_header


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
    assert r.returncode == 6  # not a well-formed tarball: corrupt
    err = r.stderr.decode()
    assert err.startswith("graphdriver: ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli(root, "exists", "bad").returncode == 3
    assert cli(root, "layers").stdout == b""


def test_a_name_that_is_not_utf8_shows_its_bytes_in_an_error(root):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        info = tarfile.TarInfo("bad\udc83")
        info.type, info.linkname = tarfile.LNKTYPE, "missing"
        tf.addfile(info)
    r = cli(root, "import", "l", "-", input=raw.getvalue())
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert "bad\\x83" in err and "udc" not in err, err


def test_verbose_errors_tell_their_causes_not_a_traceback(root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    r = run_cli("-v", "create", "a", root=blocker / "store", driver="vfs")
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert all(line.startswith("graphdriver: ") for line in err.splitlines()), err
    truncated = make_tar({"f": F(b"x" * 5000)})[:3000]
    r = run_cli("-v", "import", "l", "-", root=root, driver="vfs", input=truncated)
    err = r.stderr.decode()
    assert r.returncode == 6 and "Traceback" not in err, err
    assert all(line.startswith("graphdriver: ") for line in err.splitlines()), err


def test_verbose_cause_of_malformed_json_is_the_json_error(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "store.json").write_text("{bad")
    r = run_cli("-v", "create", "x", root=root, driver="vfs")
    err = r.stderr.decode()
    assert r.returncode == 6 and "store.json" in err, err
    assert "SystemError" not in err and "NULL" not in err, err
    assert "caused by JSONDecodeError" in err, err


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


@pytest.mark.parametrize("driver", ["vfs", "overlay"])
def test_an_additional_stores_layer_is_read_before_this_store_is_made(tmp_path, driver):
    """A root that holds no store yet, with --additional-store: the commands that mount a layer
    of that store (changes, diffsize, diff --regenerate, mount) work, keeping their counts in
    the run root, and still make nothing under the root."""
    if driver == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root here")
    theirs, root, run = tmp_path / "theirs", tmp_path / "mine", tmp_path / "run"
    (tmp_path / "base.tar").write_bytes(make_tar({"f": F(b"base")}))
    (tmp_path / "top.tar").write_bytes(make_tar({"d": D(), "d/g": F(b"top")}))
    run_cli("import", "base", str(tmp_path / "base.tar"), root=theirs, driver=driver, check=True)
    run_cli("import", "top", str(tmp_path / "top.tar"), "--parent", "base", root=theirs, driver=driver,
            check=True)
    own = ("--additional-store", str(theirs))
    r = run_cli(*own, "changes", "top", root=root, run_root=run, driver=driver)
    assert (r.returncode, r.stdout.decode(), r.stderr.decode()) == (0, "A /d\nA /d/g\n", "")
    r = run_cli(*own, "diffsize", "top", root=root, run_root=run, driver=driver)
    assert (r.returncode, r.stdout.decode()) == (0, "3\n"), r.stderr
    r = run_cli(*own, "diff", "top", "--regenerate", root=root, run_root=run, driver=driver)
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        assert [m.name.rstrip("/") for m in tf] == ["d", "d/g"]
    r = run_cli(*own, "mount", "top", root=root, run_root=run, driver=driver)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(r.stdout.decode().strip())) == ["d", "f"]
    r = run_cli(*own, "unmount", "top", root=root, run_root=run, driver=driver)
    assert r.returncode == 0, r.stderr
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


@pytest.mark.parametrize(
    "args",
    [["mount", "a"], ["unmount", "a"], ["remove", "a"], ["diff", "a"], ["changes", "a"],
     ["apply", "a", "-"], ["create", "a", "--parent", "nope"], ["import", "a", "--parent", "nope", "-"]],
    ids=lambda a: " ".join(a),
)
def test_a_command_that_fails_on_a_new_root_leaves_nothing(root, tmp_path, args):
    r = run_cli(*args, root=root / "deeper", driver="vfs", input=make_tar({"f": F(b"x")}))
    assert r.returncode == 3 and r.stderr.count(b"\n") == 1, r.stderr
    assert not root.exists()


@pytest.mark.parametrize("args", [["layers"], ["exists", "a"], ["status"], ["create", "a"]])
@pytest.mark.parametrize("which", ["--root", "--run-root"])
def test_a_store_folder_below_a_file_is_a_usage_error(tmp_path, args, which):
    """As a --root that is a file: the argument names no folder, and none can be made there."""
    (tmp_path / "file").write_bytes(b"")
    given = tmp_path / "file" / "sub"
    paths = {"root": given, "run_root": tmp_path / "run"} if which == "--root" else {
        "root": tmp_path / "s", "run_root": given}
    r = run_cli(*args, driver="vfs", **paths)
    assert r.returncode == 2, r.stderr
    says = f"{tmp_path / 'file'} on its way is not a folder"
    assert r.stderr.decode() == f"graphdriver: {which} {given}: {says}\n"
    assert sorted(os.listdir(tmp_path)) == ["file"]


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
    ("field", "code", "says"),
    [('"format":99', 7, "format 99, written by a newer graphdriver"), ('"format":"x"', 6, "format 'x'"),
     ('"format":true', 6, "format True"), ('"uidmap":"garbage"', 6, "malformed store.json"),
     ('"uidmap":5', 6, "id maps are not strings"),
     ('"driver":"zfs2"', 7, "names driver 'zfs2', which this graphdriver does not have")],
)
def test_a_store_json_this_version_cannot_read_is_refused(root, field, code, says):
    assert run_cli("create", "a", root=root, driver="vfs").returncode == 0
    text = (root / "store.json").read_text()
    key = field.split(":")[0]
    start = text.index(key)
    end = text.index(",", start) if "," in text[start:] else text.index("}", start)
    (root / "store.json").write_text(text[:start] + field + text[end:])
    for args in (["create", "b"], ["status"], ["diff", "a", "-o", "/dev/null"]):
        r = cli(root, *args)
        assert r.returncode == code and r.stderr.count(b"\n") == 1, r.stderr
        assert says in r.stderr.decode()


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
    assert b"empty name" in r.stderr and r.stderr.count(b"\n") == 1
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


@pytest.mark.parametrize("size", [100, 17 << 20])  # read whole, and streamed through the output
def test_diff_to_a_full_device_is_a_failure_of_the_output_never_of_the_layer(root, size):
    """A write error (a full disk, a closed pipe) while a big file went out was reported as
    that file's damage, exit 6, though ``check`` found the layer whole."""
    data = make_tar({"f": F(os.urandom(size))})
    assert cli(root, "import", "l", "-", input=data).returncode == 0
    r = cli(root, "diff", "l", "-o", "/dev/full")
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "No space left on device" in err and "'f'" not in err, err
    assert cli(root, "check", "l").returncode == 0


def _to_full_device(root, args, *, buffered=True, data=b""):
    """Run the CLI as users do (its output buffered unless told otherwise) with standard
    output on /dev/full, where every write fails."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(ROOT / "src")
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "wb") as full:
        return subprocess.run([sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
                               str(root.parent / "run"), *args], stdout=full, stderr=subprocess.PIPE,
                              input=data, env=env, check=False)


@pytest.mark.parametrize("args", [["layers"], ["layer", "l"], ["mounted", "l"], ["status"], ["diff", "c"]])
def test_output_to_a_full_device_is_one_line_and_exit_1(root, args):
    """Buffered output (no PYTHONUNBUFFERED, as users run it) that cannot be written was
    reported, then failed again at exit: Python's own lines, and exit code 120."""
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    assert cli(root, "create", "c", "--parent", "l").returncode == 0  # its diff is built from files
    r = _to_full_device(root, args)
    what = "diff c" if args[0] == "diff" else "standard output"  # (diff writes as it reads)
    assert (r.returncode, r.stderr.decode()) == (1, f"graphdriver: {what}: No space left on device\n")


@pytest.mark.parametrize("buffered", [True, False])
def test_a_mount_whose_path_cannot_be_printed_is_given_back(root, buffered):
    """mount > /dev/full failed (exit 1) but left the layer counted as mounted: a caller
    told it failed never unmounts it."""
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = _to_full_device(root, ["mount", "l"], buffered=buffered)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
    assert cli(root, "mounted", "l").stdout == b"0\n"


@pytest.mark.parametrize("args", [["create", "n", "--parent", "l"], ["import", "n", "-"],
                                  ["--json", "import", "n", "-"]])
@pytest.mark.parametrize("buffered", [True, False])
def test_a_layer_whose_result_cannot_be_printed_is_not_kept(root, args, buffered):
    """create or import > /dev/full failed (exit 1) but kept the layer: a script told it failed
    tried again and was told it already exists."""
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = _to_full_device(root, args, buffered=buffered, data=make_tar({"g": F(b"xyz")}))
    what = "standard output" if buffered else args[args.index("n") - 1] + " n"  # the write itself fails
    assert (r.returncode, r.stderr.decode()) == (1, f"graphdriver: {what}: No space left on device\n")
    assert cli(root, "exists", "n").returncode == 3
    assert cli(root, "layers").stdout == b"l\n"
    assert cli(root, "check").returncode == 0


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


def _write_through_mount(root: Path, driver, layer_id: str, change) -> bool:
    """Do *change* in the mounted layer; False when its view is read-only (overlay image layers)."""
    mnt = Path(run_cli("mount", layer_id, root=root, driver=driver, check=True).stdout.decode().strip())
    try:
        change(mnt)
    except OSError as e:
        import errno

        if e.errno != errno.EROFS:
            raise
        return False
    finally:
        run_cli("unmount", layer_id, root=root, driver=driver, check=True)
    return True


def test_diff_of_an_imported_layer_changed_through_its_mount_is_the_layer_now(tmp_path, driver_name):
    """`mount base; echo x > $m/x; chmod 700 $m/etc/hello; unmount base; diff base` never
    gives back the imported tarball (vfs hands out the layer's tree itself)."""
    root = tmp_path / "store"
    imported = make_tar({"etc": D(), "etc/hello": F(b"hello\n", mode=0o644)})
    (tmp_path / "base.tar").write_bytes(imported)

    def gd(*args: str, check: bool = True):
        return run_cli(*args, root=root, driver=driver_name, check=check)

    gd("import", "base", str(tmp_path / "base.tar"))

    def change(mnt: Path) -> None:
        (mnt / "x").write_bytes(b"x\n")
        (mnt / "etc/hello").chmod(0o700)

    written = _write_through_mount(root, driver_name, "base", change)
    r = gd("diff", "base", "-o", str(tmp_path / "o.tar"), check=False)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "o.tar").read_bytes()
    record = json.loads(gd("layer", "base").stdout)
    if not written:  # a read-only view: the layer is as imported
        assert out == imported and "mounted_writable" not in record
        return
    assert out != imported
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        members = {m.name.rstrip("/"): m for m in tf}
    assert sorted(members) == ["etc", "etc/hello", "x"]
    assert members["etc/hello"].mode == 0o700
    assert "mounted_writable" in record
    assert gd("changes", "base").stdout.decode() == "A /etc\nA /etc/hello\nA /x\n"
    assert gd("check", "base", check=False).returncode == 6  # check compares with the import, as before
    # An unchanged mount costs nothing afterwards: diff checks once, then forgets the mark.
    gd("import", "other", str(tmp_path / "base.tar"))
    _write_through_mount(root, driver_name, "other", lambda mnt: None)
    assert "mounted_writable" in json.loads(gd("layer", "other").stdout)
    assert gd("diff", "other").stdout == imported
    assert "mounted_writable" not in json.loads(gd("layer", "other").stdout)


def _shell_run(root: Path, script: str, *args: str):
    """Run graphdriver as ``"$@"`` inside a bash *script* (closed descriptors, pipes)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root", str(root.parent / "run"),
           *args]
    return subprocess.run(["bash", "-c", script, "bash", *cmd], capture_output=True, env=env, check=False)


def _closed_fd_run(root: Path, redirect: str, *args: str):
    """Run graphdriver with one of its descriptors closed (``>&-``)."""
    return _shell_run(root, f'"$@" {redirect}', *args)


@pytest.mark.parametrize("args", [
    ["diff", "l"], ["diff", "l", "--compress", "gzip"], ["tarsplit", "l"],
])
def test_output_through_a_symlink_to_standard_output_is_written_not_replaced(root, tmp_path, args):
    # `-o /dev/stdout` is a symlink to /proc/self/fd/1; the same chain under tmp_path, so
    # that a regression cannot replace the host's /dev/stdout.
    import os

    data = make_tar({"f": F(b"abc")})
    assert cli(root, "import", "l", "-", input=data).returncode == 0
    expected = cli(root, *args).stdout
    (tmp_path / "so").symlink_to("/proc/self/fd/1")
    (tmp_path / "chain").symlink_to(tmp_path / "so")
    for name in ("so", "chain"):
        r = cli(root, *args, "-o", str(tmp_path / name))  # standard output: a pipe
        assert (r.returncode, r.stdout) == (0, expected), r.stderr
        out = tmp_path / f"out-{name}"
        # standard output: a regular file, as `> out.tar` makes it
        r = _shell_run(root, f'"$@" > {out}', *args, "-o", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == expected
        assert os.readlink(tmp_path / "so") == "/proc/self/fd/1"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["chain", "out-chain", "out-so", "run", "so", "store"]


def test_output_through_a_symlink_to_a_file_replaces_the_file_and_keeps_the_link(root, tmp_path):
    import os

    data = make_tar({"f": F(b"abc")})
    assert cli(root, "import", "l", "-", input=data).returncode == 0
    target = tmp_path / "target.tar"
    target.write_bytes(b"old")
    target.chmod(0o600)
    (tmp_path / "link").symlink_to("target.tar")
    r = cli(root, "diff", "l", "-o", str(tmp_path / "link"))
    assert r.returncode == 0, r.stderr
    assert os.readlink(tmp_path / "link") == "target.tar" and target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600  # the file written keeps the permissions it had
    (tmp_path / "dangling").symlink_to("new.tar")
    assert cli(root, "diff", "l", "-o", str(tmp_path / "dangling")).returncode == 0
    assert (tmp_path / "new.tar").read_bytes() == data and (tmp_path / "dangling").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args", [["diff", "l"], ["layers"], ["--json", "layers"], ["create", "m"],
                                  ["diff", "l", "-o", "-"], ["--help"]])
def test_closed_standard_output_is_one_line_and_nothing_done(root, args):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = _closed_fd_run(root, ">&-", *args)
    assert r.returncode == 2
    assert r.stderr.decode() == ("graphdriver: standard output: is closed; redirect it (to /dev/null "
                                 "to drop the output)\n")
    assert cli(root, "exists", "m").returncode == 3


def test_commands_that_print_nothing_run_with_standard_output_closed(root, tmp_path):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    for args in (["exists", "l"], ["diff", "l", "-o", str(tmp_path / "l.tar")], ["remove", "l"]):
        r = _closed_fd_run(root, ">&-", *args)
        assert (r.returncode, r.stderr) == (0, b""), args
    assert (tmp_path / "l.tar").stat().st_size > 0


@pytest.mark.parametrize("args", [["diff", "big"], ["layers"], ["changes", "big", "--parent", "base"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(root, args):
    # More than a pipe holds, for diff and changes; `layers` has a line or two.
    names = {f"d{i:04}-{'x' * 100}": F(b"x" * 200) for i in range(800)}
    assert cli(root, "import", "base", "-", input=make_tar({"f": F(b"1")})).returncode == 0
    assert cli(root, "import", "big", "--parent", "base", "-", input=make_tar(names)).returncode == 0
    assert args == ["layers"] or len(cli(root, *args).stdout) > 1 << 16
    for reader in ("head -c 1 >/dev/null", "true"):
        r = _shell_run(root, f'"$@" | {reader}; exit ${{PIPESTATUS[0]}}', *args)
        assert r.stderr == b"" and r.returncode in (0, 1), (reader, r.returncode, r.stderr)


@pytest.mark.parametrize("args, shown", [
    (["import", "x", "/tmp/no\nsuch\x1b[2J"], "cannot read /tmp/no\\nsuch\\x1b[2J"),
    (["diff", "l", "-o", "/nonexistent-dir/a\nb"], "cannot write /nonexistent-dir/a\\nb"),
    (["tarsplit", "l", "-o", "/nonexistent-dir/c\rd"], "cannot write /nonexistent-dir/c\\rd"),
])
def test_errors_naming_a_path_with_control_characters_stay_one_line(root, args, shown):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = cli(root, *args)
    assert r.returncode == 2
    assert r.stderr.decode() == f"graphdriver: {shown}: No such file or directory\n"


def test_error_printer_escapes_control_characters():
    from graphdriver.cli import one_line

    assert one_line("plain: text é") == "plain: text é"
    assert one_line("a\nb\tc\x1b[1m\x7f\u2028\u202e") == "a\\nb\\tc\\x1b[1m\\x7f\\u2028\\u202e"


@pytest.mark.parametrize("args", [["diff", "l", "-o", ""], ["tarsplit", "l", "--output="],
                                  ["import", "m", ""], ["image", "save", "x", "-o", ""]])
def test_an_empty_file_name_is_a_usage_error(root, args):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = cli(root, *args)
    assert r.returncode == 2 and r.stdout == b""
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "empty name" in err and ".partial" not in err, err


@pytest.mark.parametrize("kind", ["xz", "bzip2", "lz4", ""])
def test_diff_compress_takes_only_the_kinds_it_documents(root, tmp_path, kind):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    r = cli(root, "diff", "l", "--compress", kind, "-o", str(tmp_path / "out"))
    assert (r.returncode, r.stdout) == (2, b"")
    assert r.stderr.decode() == (f"graphdriver: option --compress '{kind}': choose none, gzip, zstd or "
                                 "original: see 'graphdriver diff --help'\n")
    assert not (tmp_path / "out").exists()


def test_json_output_of_every_layer_command_is_json(root):
    data = make_tar({"f": F(b"abc")})
    assert cli(root, "import", "l", "-", input=data).returncode == 0

    def js(*args: str):
        r = cli(root, "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    created = js("create", "c", "--parent", "l", "--rw")
    assert created["id"] == "c" and created["parent"] == "l" and created["writable"] is True
    mounted = js("mount", "c")
    assert mounted == {"id": "c", "path": mounted["path"]} and Path(mounted["path"], "f").exists()
    assert js("mounted", "c") == {"id": "c", "mount_count": 1}
    # layers --json lists the objects layer ID shows, mount count and point included
    listed = {entry["id"]: entry for entry in js("layers")}
    assert listed == {"l": js("layer", "l"), "c": js("layer", "c")}
    assert (listed["c"]["mount_count"], listed["c"]["mount_point"]) == (1, mounted["path"])
    js("mount", "c")
    assert js("unmount", "--force", "c") == {"id": "c", "dropped": 2}
    assert js("diffsize", "l") == {"id": "l", "size": 3}
    r = cli(root, "--json", "apply", "c", "-", input=make_tar({"g": F(b"12345")}))
    assert (r.returncode, json.loads(r.stdout)) == (0, {"id": "c", "size": 5}), r.stderr
    # plain output is unchanged
    assert cli(root, "create", "d").stdout == b"d\n"
    assert cli(root, "mounted", "d").stdout == b"0\n"
    assert cli(root, "diffsize", "l").stdout == b"3\n"


def test_check_json_says_skipped_for_a_layer_it_could_not_verify(root):
    assert cli(root, "import", "l", "-", input=make_tar({"f": F(b"abc")})).returncode == 0
    assert cli(root, "create", "e", "--parent", "l").returncode == 0  # made empty, no digest recorded
    r = cli(root, "--json", "check")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"id": "e", "ok": None, "skipped": True, "error": None,
         "reason": "no recorded digest (not imported)"},
        {"id": "l", "ok": True, "skipped": False, "error": None, "reason": None},
    ]
    assert cli(root, "check").stdout.decode() == "e: skipped: no recorded digest (not imported)\nl: ok\n"


def test_apply_with_a_parent_that_does_not_exist_is_not_found(root):
    """As create, import, changes and diff: a --parent that is no layer is exit 3; one that
    is a layer but not this one's parent is a usage error (2)."""
    assert cli(root, "create", "z", "--rw").returncode == 0
    assert cli(root, "create", "other").returncode == 0
    tar = make_tar({"f": F(b"x")})
    assert cli(root, "apply", "z", "--parent", "nope", "-", input=tar).returncode == 3
    assert cli(root, "apply", "z", "--parent", "other", "-", input=tar).returncode == 2


def _corrupt_archives() -> dict[str, bytes]:
    import gzip

    from tests.conftest import CORPUS

    # Three 25,600-byte files in ustar: headers at 0, 26112 and 52224.
    whole = make_tar({f"f{i}": F(bytes(range(256)) * 100) for i in range(3)}, fmt=tarfile.USTAR_FORMAT)
    packed = gzip.compress(whole)
    bad_sum = bytearray(whole)
    bad_sum[26112 + 148:26112 + 156] = b"0000000\0"  # the second header's checksum
    return {
        "truncated-data": whole[:40000],
        "truncated-header": whole[:26112 + 100],
        "truncated-gzip": packed[: len(packed) // 2],
        "bad-checksum": bytes(bad_sum),
        "go-issue10968": (CORPUS / "go-archive-tar" / "issue10968.tar").read_bytes(),
        "not-a-tarball": b"this is not a tarball" * 50,
        # 5 MB of PAX headers of 1 KiB each before one file: past what one entry may have.
        "meta-chain": meta_header(b"x", b"10 path=a\n") * 5000 + whole,
        # All 3 bytes of data, then 88 of the 509 zeros padding them to a block.
        "truncated-padding": make_tar({"f": F(b"hi\n")}, fmt=tarfile.GNU_FORMAT)[:600],
    }


@pytest.mark.parametrize("name", list(_corrupt_archives()))
@pytest.mark.parametrize("command", ["import", "apply"])
def test_a_corrupt_tarball_is_an_integrity_failure(root, command, name):
    if command == "apply":
        assert cli(root, "create", "l").returncode == 0
    r = cli(root, command, "l", "-", input=_corrupt_archives()[name])
    assert r.returncode == 6, r.stderr
    err = r.stderr.decode()
    assert err.startswith("graphdriver: ") and err.count("\n") == 1, err
    if command == "import":
        assert cli(root, "exists", "l").returncode == 3


def test_a_tarball_ending_right_after_an_entry_is_whole(root):
    """No end-of-archive blocks, but nothing cut: taken as Go's reader takes it, and given back."""
    data = make_tar({"f": F(b"hi\n")}, fmt=tarfile.GNU_FORMAT)[: 2 * 512]
    r = cli(root, "import", "l", "-", input=data)
    assert (r.returncode, r.stdout.strip()) == (0, b"3"), r.stderr
    assert cli(root, "diff", "l").stdout == data


@pytest.mark.parametrize("members", [
    {"../escape": F(b"x")},
    {"h": H("/etc/passwd")},
])
def test_a_well_formed_hostile_tarball_is_refused_with_exit_1(root, members):
    r = cli(root, "import", "l", "-", input=make_tar(members))
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode().count("\n") == 1 and cli(root, "exists", "l").returncode == 3


def _run_with_terminal_stderr(cmd: list[str], feed: list[bytes], pause: float) -> tuple[int, bytes, bytes]:
    """Run *cmd* with stderr on a pseudo-terminal, writing *feed* to its stdin a chunk per *pause*."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import threading
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "GRAPHDRIVER_NO_PROGRESS"}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    assert proc.stdin is not None and proc.stdout is not None

    def writer() -> None:
        assert proc.stdin is not None
        for chunk in feed:
            proc.stdin.write(chunk)
            proc.stdin.flush()
            time.sleep(pause)
        proc.stdin.close()

    thread = threading.Thread(target=writer)
    thread.start()
    screen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            screen += data
        elif proc.poll() is not None:
            break
    thread.join()
    out = proc.stdout.read()
    os.close(master)
    return proc.wait(), out, screen


def test_import_progress_bar_advances_on_a_terminal(root):
    # The input is read in the confined child process: the bar drawn by the parent must
    # still move (it stayed at 0 while the child counted in its own copy of the bar).
    import re
    import sys

    assert cli(root, "layers").returncode == 0  # the store exists (its driver chosen)
    data = make_tar({f"f{i:02}": F(bytes([i]) * 100_000) for i in range(30)})  # 3 MB
    feed = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]  # slowly, so that frames are drawn
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root", str(root.parent / "run"),
           "import", "l", "-"]
    code, out, screen = _run_with_terminal_stderr(cmd, feed, 0.05)
    assert (code, out) == (0, b"3000000\n"), screen[-500:]
    counts = [float(n) for n, _unit in re.findall(rb"import l\S*\s.*?(\d+(?:\.\d+)?) (bytes|kB|MB)", screen)]
    assert counts and max(counts) > 0, screen[-2000:]


def test_no_progress_output_when_stderr_is_not_a_terminal(root):
    r = cli(root, "import", "l", "-", input=make_tar({f"f{i}": F(b"x" * 100_000) for i in range(20)}))
    assert (r.returncode, r.stderr) == (0, b"")


def test_changes_json_keeps_a_name_that_is_not_utf8_losslessly(root):
    """No lone surrogates (jq turns them into U+FFFD): a lossy ``path`` and the bytes in ``path_raw``."""
    import base64
    import os

    assert cli(root, "import", "base", "-", input=make_tar({"etc": D()})).returncode == 0
    assert cli(root, "create", "ctr", "--parent", "base", "--rw").returncode == 0
    mnt = cli(root, "mount", "ctr").stdout.strip()
    with open(os.path.join(mnt, b"caf\xe9"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(mnt, "café".encode()), "wb") as f:
        f.write(b"y")
    assert cli(root, "unmount", "ctr").returncode == 0
    out = cli(root, "changes", "ctr", "--json").stdout
    text = out.decode("utf-8")  # strict: valid UTF-8 JSON text
    assert "\\ud" not in text
    assert json.loads(text) == [  # in the order of the bytes: \xc3 before \xe9
        {"path": "/café", "kind": "A"},
        {"path": "/caf\ufffd", "path_raw": base64.b64encode(b"/caf\xe9").decode(), "kind": "A"},
    ]
    assert cli(root, "changes", "ctr").stdout == b'A /caf\xc3\xa9\nA "/caf\\351"\n'


def test_a_permission_refused_is_a_missing_privilege():
    from graphdriver.errors import InvalidArgument, Unsupported, os_error

    denied = os_error("store /s", PermissionError(13, "Permission denied"))
    assert (type(denied), str(denied), denied.exit_code) == (Unsupported, "store /s: Permission denied", 7)
    assert os_error("x", PermissionError(1, "Operation not permitted")).exit_code == 7
    missing = os_error("cannot read f", FileNotFoundError(2, "No such file or directory"), InvalidArgument)
    assert (type(missing), missing.exit_code) == (InvalidArgument, 2)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make what nobody may not use")
def test_what_this_user_may_not_use_exits_7(tmp_path, open_work: Path) -> None:
    """A store, an input file or an output folder the user has no permission for: exit 7
    (a missing privilege, per the contract), not 1 or 2, and never 6 (nothing is corrupt)."""

    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    _load_every_module()

    work = open_work
    theirs = work / "theirs"
    run_cli("create", "base", root=theirs, run_root=work / "run-theirs", driver="vfs", check=True)
    os.chmod(theirs, 0o700)
    (work / "secret.tar").write_bytes(make_tar({"f": F(b"x")}))
    os.chmod(work / "secret.tar", 0o600)
    (work / "locked-out").mkdir(mode=0o755)
    mine = _nobody_home(work)[0]

    def codes() -> list[int]:
        own = ["--root", str(mine / "store"), "--run-root", str(mine / "run"), "--driver", "vfs"]
        other = ["--root", str(theirs), "--run-root", str(work / "run-theirs")]
        assert gd.main([*own, "create", "a"]) == 0
        return [
            gd.main([*other, "layers"]),
            gd.main([*other, "status"]),
            gd.main([*other, "create", "x"]),
            gd.main([*other, "cleanup"]),
            gd.main([*own, "import", "b", str(work / "secret.tar")]),
            gd.main([*own, "diff", "a", "-o", str(work / "locked-out" / "a.tar")]),
            # Id maps store files owned by the mapped ids: root's privilege.
            gd.main([*own, "create", "m", "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]),
            gd.main([*own, "--uidmap", "0:100000:65536", "create", "n"]),
            gd.main([*own, "image", "load", str(work / "secret.tar")]),
            gd.main([*own, "image", "load", str(theirs / "layers" / "x.tar")]),  # a folder closed to us
        ]

    assert as_nobody(codes) == [7] * 10
    assert not (work / "locked-out" / "a.tar").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make what nobody may not read")
def test_a_record_this_user_may_not_read_is_a_missing_privilege_never_corruption(open_work: Path) -> None:
    """Records of mode 0600 in a root store whose folders are open: exit 7 for what needs
    the record (not 6), `layers` names it and exits 7, `check` skips it; with the folders
    closed too, an additional store's layer is 7 (not "no such layer"), and the Python API
    raises the project's errors, never a bare PermissionError."""

    import graphdriver
    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    _load_every_module()

    work = open_work
    theirs = work / "theirs"
    (work / "base.tar").write_bytes(make_tar({"f": F(b"x")}))
    run_cli("import", "base", str(work / "base.tar"), root=theirs, driver="vfs", check=True)
    folders = [Path(d) for d, _, _ in os.walk(theirs)]
    for d in folders:
        os.chmod(d, os.stat(d).st_mode | 0o005)
    mine = _nobody_home(work)[0]
    other = ["--root", str(theirs), "--run-root", str(mine / "run")]

    def open_folders() -> list[object]:
        codes: list[object] = [gd.main([*other, c, "base"]) for c in ("layer", "diff", "changes")]
        codes.append(gd.main([*other, "layers"]))
        codes.append(gd.main([*other, "check"]))
        store = graphdriver.open_store(str(theirs), run_root=str(mine / "run"), create=False)
        try:
            store.layer("base")
        except graphdriver.GraphDriverError as e:
            codes.append((type(e).__name__, e.exit_code, "base" in str(e)))
        try:
            with store.locked():
                pass
        except graphdriver.GraphDriverError as e:
            codes.append((type(e).__name__, e.exit_code))
        return codes

    assert as_nobody(open_folders) == [7, 7, 7, 7, 0, ("Unsupported", 7, True), ("Unsupported", 7)]
    for d in folders:
        os.chmod(d, os.stat(d).st_mode & ~0o005)

    def closed_folders() -> list[object]:
        own = ["--root", str(mine / "s"), "--run-root", str(mine / "run"), "--driver", "vfs"]
        codes: list[object] = [gd.main([*own, "--additional-store", str(theirs), "layer", "base"])]
        try:
            graphdriver.open_store(str(theirs), run_root=str(mine / "run"), create=False)
        except graphdriver.GraphDriverError as e:
            codes.append((type(e).__name__, e.exit_code))
        return codes

    assert as_nobody(closed_folders) == [7, ("Unsupported", 7)]


def _main_as_nobody(argv: list[str], *, namespaces: bool = True) -> tuple[int, str]:
    """``graphdriver ARGV`` run in-process as nobody: its exit code and what it wrote to stderr
    (without *namespaces*, as where no user namespace may be made)."""
    import contextlib

    from graphdriver import cli as gd
    from graphdriver.fs import asowner
    from tests.conftest import as_nobody

    def run() -> tuple[int, str]:
        if not namespaces:
            asowner.available = lambda **_: False  # type: ignore[assignment]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = gd.main(argv)
        return code, err.getvalue()

    result = as_nobody(run)
    assert isinstance(result, tuple)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody and to mount")
def test_a_file_of_mode_0000_is_read_on_a_read_only_file_system_and_never_called_missing():
    """Without root, a file of mode 0000 is read as its owner, its mode untouched: on a
    read-only file system too, where no mode could be changed, diff gives the imported
    bytes back and check finds the layer ok.  Where it cannot be read so (no user namespace
    may be made), that is a missing privilege: diff exits 7 naming the layer and the file,
    check skips the layer, neither calls it missing."""
    import subprocess
    import tempfile

    import graphdriver
    from graphdriver.fs import asowner
    from tests.conftest import as_nobody

    _load_every_module()
    work = Path(tempfile.mkdtemp(prefix="gd-rofs-"))
    read_only = work / "ro"
    mounted = False
    try:
        os.chmod(work, 0o755)
        layer = make_tar({"d0": D(), "d0/f1": F(b"secret", mode=0o000), "d0/f2": F(b"sudo", mode=0o4111)})
        (work / "shadow.tar").write_bytes(layer)
        os.chmod(work / "shadow.tar", 0o644)
        for name in ("store", "ro", "run"):
            (work / name).mkdir()
            os.chown(work / name, 65534, 65534)
        own = ["--root", str(work / "store" / "root"), "--run-root", str(work / "run"), "--driver", "vfs"]
        assert _main_as_nobody([*own, "import", "sh", str(work / "shadow.tar")])[0] == 0
        subprocess.run(["mount", "--bind", str(work / "store"), str(read_only)], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        ro = ["--root", str(read_only / "root"), "--run-root", str(work / "run")]

        if as_nobody(asowner.unshare_user):
            assert _main_as_nobody([*ro, "diff", "sh", "-o", str(work / "run" / "sh.tar")]) == (0, "")
            assert (work / "run" / "sh.tar").read_bytes() == layer
            assert _main_as_nobody([*ro, "check", "sh"]) == (0, "")
        code, err = _main_as_nobody([*ro, "diff", "sh", "-o", str(work / "run" / "sh.tar")], namespaces=False)
        assert (code, err) == (7, "graphdriver: layer sh: d0/f1: Permission denied\n")
        code, err = _main_as_nobody([*ro, "check", "sh"], namespaces=False)
        assert code == 0 and "missing" not in err

        def check() -> object:
            asowner.available = lambda **_: False  # type: ignore[assignment]
            store = graphdriver.open_store(str(read_only / "root"), run_root=str(work / "run"), create=False)
            return store.check(["sh"])

        assert as_nobody(check) == [
            ("sh", "skipped: its files cannot be read by this user (Permission denied d0/f1)")]
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=True)
        import shutil

        shutil.rmtree(work)


def _nobody_home(work: Path, driver: str | None = "vfs", additional: Path | None = None,
                 ) -> tuple[Path, list[str]]:
    """Make ``work/mine``, a folder nobody owns, and the options that give nobody a store and a
    run root in it: on *driver* (none: the default), reading *additional* as an additional store."""
    mine = work / "mine"
    mine.mkdir()
    os.chown(mine, 65534, 65534)
    own = ["--root", str(mine / "store"), "--run-root", str(mine / "run")]
    if driver is not None:
        own += ["--driver", driver]
    if additional is not None:
        own += ["--additional-store", str(additional)]
    return mine, own


def _open_to_others(store: Path, keep: Callable[[str], bool]) -> None:
    """Let every user read *store*'s folders and files (lock files aside), but those whose path
    *keep* holds, which stay as they are."""
    for folder, _dirs, files in os.walk(store):
        if not keep(folder):
            os.chmod(folder, os.stat(folder).st_mode | 0o005)
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".lock") and not keep(path) and not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o004)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_diff_of_a_file_this_user_may_not_read_names_the_layer_and_the_file(open_work: Path) -> None:
    """An additional store of root's whose folders are open but a file is 0600: diff exits
    7 naming the layer and the file's path in it, not the file's bare name."""

    _load_every_module()
    work = open_work
    theirs = work / "theirs"
    (work / "p.tar").write_bytes(make_tar({"d": D(), "d/f": F(b"x", mode=0o600)}))
    run_cli("import", "p", str(work / "p.tar"), root=theirs, driver="vfs", check=True)
    _open_to_others(theirs, keep=lambda path: path.endswith("/d/f"))
    mine, own = _nobody_home(work, "vfs", theirs)
    code, err = _main_as_nobody([*own, "diff", "p", "-o", str(mine / "p.tar")])
    assert (code, err) == (7, "graphdriver: layer p: d/f: Permission denied\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_what_this_user_may_not_read_in_another_users_store_is_named_in_its_layer(open_work: Path) -> None:
    """Nobody, with no store of its own yet, reads root's store given as --additional-store:
    a layer it may read is diffed with --regenerate; a folder or a file of a layer it may not
    read stops diff, changes, diffsize and tarsplit with exit 7 naming the layer and the path
    in it (never where the store keeps it), and check skips the layer saying that path."""

    _load_every_module()
    work = open_work
    theirs = work / "theirs"
    layers = {"open": {"o": D(), "o/f": F(b"x")}, "closed": {"d": D(mode=0o700), "d/f": F(b"x")},
              "secret": {"e": D(), "e/s": F(b"x", mode=0o600)}}
    for name, spec in layers.items():
        (work / f"{name}.tar").write_bytes(make_tar(spec))
        run_cli("import", name, str(work / f"{name}.tar"), root=theirs, driver="vfs", check=True)
    _open_to_others(theirs, keep=lambda path: path.endswith(("/d", "/e/s")))
    mine, own = _nobody_home(work, "vfs", theirs)
    code, out, err, _ = _nobody_command(own, "diff", "open", "--regenerate", "-o", str(mine / "o.tar"))
    assert (code, err) == (0, "")
    with tarfile.open(mine / "o.tar") as tf:
        assert [m.name.rstrip("/") for m in tf] == ["o", "o/f"]
    folder = "graphdriver: layer closed: d: Permission denied\n"
    for argv in (["diff", "closed", "--regenerate", "-o", "/dev/null"], ["changes", "closed"],
                 ["diffsize", "closed"]):
        assert _nobody_command(own, *argv)[::2] == (7, folder), argv
    below = "graphdriver: layer closed: d/f: Permission denied\n"
    for argv in (["diff", "closed", "-o", "/dev/null"], ["tarsplit", "closed", "-o", "/dev/null"]):
        assert _nobody_command(own, *argv)[::2] == (7, below), argv
    file = "graphdriver: layer secret: e/s: Permission denied\n"
    for argv in (["diff", "secret", "--regenerate", "-o", "/dev/null"],
                 ["diff", "secret", "-o", "/dev/null"]):
        assert _nobody_command(own, *argv)[::2] == (7, file), argv
    code, out, err, _ = _nobody_command(own, "check", "closed", "secret")
    skipped = "skipped: its files cannot be read by this user (Permission denied"
    assert (code, out, err) == (0, f"closed: {skipped} d/f)\nsecret: {skipped} e/s)\n", "")
    assert not (mine / "store").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_what_this_user_may_not_read_of_a_windows_layer_is_named_in_its_layer(open_work: Path) -> None:
    """Nobody reads root's windowsfilter store given as --additional-store: a folder it may
    not read in a layer's Files/, Hives/ or UtilityVM/ stops changes, diffsize and diff
    --regenerate with exit 7 naming the layer and the path in it as its tarball names it
    (Files/..., Hives/...), never where the store keeps it, and check skips the layer
    saying that path; so does mount of one closed in Files/ (a copy without root)."""

    from graphdriver.testing import wingen

    _load_every_module()
    work = open_work
    theirs = work / "theirs"
    (work / "base.tar").write_bytes(wingen.layer_tar(wingen.base_layer()))
    closed = {"files": "Files/Windows/System32/drivers", "hives": "Hives", "uvm": "UtilityVM/Files/EFI"}
    for name in closed:
        run_cli("import", name, str(work / "base.tar"), root=theirs, driver="windowsfilter", check=True)
    _open_to_others(theirs, keep=lambda path: False)
    for name, path in closed.items():
        os.chmod(theirs / "windowsfilter" / name / path, 0o700)
    mine, own = _nobody_home(work, "windowsfilter", theirs)
    for name, path in closed.items():
        said = f"graphdriver: layer {name}: {path}: Permission denied\n"
        for argv in (["changes", name], ["diffsize", name],
                     ["diff", name, "--regenerate", "-o", "/dev/null"]):
            assert _nobody_command(own, *argv)[::2] == (7, said), argv
    code, out, err, _ = _nobody_command(own, "check", "hives", "uvm")
    skipped = "skipped: its files cannot be read by this user (Permission denied"
    assert (code, out, err) == (0, f"hives: {skipped} Hives/DefaultUser_Delta)\n"
                                   f"uvm: {skipped} UtilityVM/Files/EFI)\n", "")
    # Without root a view is a copy, which such a folder stops the same way, leaving none.
    said = "graphdriver: layer files: Files/Windows/System32/drivers: Permission denied\n"
    assert _nobody_command(own, "mount", "files")[::2] == (7, said)
    assert not list((mine / "run").glob("*/windowsfilter/views/files"))
    code, out, err, _ = _nobody_command(own, "mount", "hives")  # Hives/ is no part of the view
    assert (code, err) == (0, "") and os.path.isdir(os.path.join(out.strip(), "Windows"))
    assert _nobody_command(own, "unmount", "hives")[::2] == (0, "")
    assert not (mine / "store").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_a_windows_layer_with_deletions_made_as_root_is_viewed_without_root(open_work: Path) -> None:
    """A child Windows layer that deletes files, applied as root (its deletions are overlay
    whiteouts beside the sidecar's tombstones), is mounted without root from root's store as
    the same tree root's overlay view shows: the whiteouts are deletions, never files to
    copy (opening one failed, exit 1 "No such device or address")."""
    from graphdriver.testing import wingen
    from graphdriver.testing.treeutil import snapshot

    _load_every_module()
    work = open_work
    theirs = work / "theirs"
    (work / "base.tar").write_bytes(wingen.layer_tar(wingen.base_layer()))
    (work / "child.tar").write_bytes(wingen.layer_tar(wingen.child_layer()))
    run_cli("import", "base", str(work / "base.tar"), root=theirs, driver="windowsfilter", check=True)
    run_cli("import", "child", str(work / "child.tar"), "--parent", "base", root=theirs,
            driver="windowsfilter", check=True)
    _open_to_others(theirs, keep=lambda path: False)
    own = _nobody_home(work, "windowsfilter", theirs)[1]

    def seen(view: str) -> dict[str, tuple[object, ...]]:
        return {rel: (item["type"], item.get("sha256"), item.get("target"))
                for rel, item in snapshot(view, times=False).items()}

    code, out, err, _ = _nobody_command(own, "mount", "child")
    assert (code, err) == (0, "")
    copied = seen(out.strip())
    assert _nobody_command(own, "unmount", "child")[::2] == (0, "")
    theirs_run = work / "run-theirs"
    view = run_cli("mount", "child", root=theirs, run_root=theirs_run, driver="windowsfilter", check=True)
    try:
        assert copied == seen(view.stdout.decode().strip())
    finally:
        run_cli("unmount", "child", root=theirs, run_root=theirs_run, driver="windowsfilter", check=True)
    assert "License.txt" not in copied and "Windows/System32/app.dll" in copied


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_a_layer_chain_file_this_user_may_not_read_is_a_missing_privilege_named_by_its_layer(
        open_work: Path) -> None:
    """Nobody reads root's store, given as --additional-store, whose layer keeps its chain file
    (layerchain.json, 0600) closed: what needs the chain exits 7 naming the layer and the file,
    never where the store keeps it, and check skips the layer instead of calling it damaged."""

    from graphdriver.testing import wingen

    _load_every_module()
    work = open_work
    theirs, windows = work / "theirs", work / "windows"
    (work / "b.tar").write_bytes(make_tar({"f": F(b"x")}))
    (work / "w.tar").write_bytes(wingen.layer_tar(wingen.base_layer()))
    run_cli("import", "base", str(work / "b.tar"), root=theirs, driver="vfs", check=True)
    run_cli("import", "child", str(work / "b.tar"), "--parent", "base", root=theirs, driver="vfs",
            check=True)
    run_cli("import", "win", str(work / "w.tar"), root=windows, driver="windowsfilter", check=True)
    for store in (theirs, windows):
        _open_to_others(store, keep=lambda path: path.endswith("/layerchain.json"))
    own = _nobody_home(work, None)[1]
    vfs = [*own, "--driver", "vfs", "--additional-store", str(theirs)]
    said = "graphdriver: layer child: layerchain.json: Permission denied\n"
    assert _nobody_command(vfs, "create", "--parent", "child", "x")[::2] == (7, said)
    win = [*own, "--driver", "windowsfilter", "--additional-store", str(windows)]
    said = "graphdriver: layer win: layerchain.json: Permission denied\n"
    assert _nobody_command(win, "changes", "win")[::2] == (7, said)
    skipped = "win: skipped: layerchain.json: Permission denied\n"
    assert _nobody_command(win, "check", "win")[:3] == (0, skipped, "")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store nobody may not read")
def test_a_layer_folder_this_user_may_not_read_is_a_missing_privilege_named_by_its_layer(
        open_work: Path) -> None:
    """Nobody reads root's store, given as --additional-store, whose layer's own folder is
    closed (0700): what needs the layer exits 7 naming it, never where the store keeps it
    (its layerID file, which is looked for first), and check skips it instead of failing."""

    _load_every_module()
    work = open_work
    theirs = work / "theirs"
    (work / "b.tar").write_bytes(make_tar({"f": F(b"x")}))
    run_cli("import", "base", str(work / "b.tar"), root=theirs, driver="vfs", check=True)
    run_cli("import", "child", str(work / "b.tar"), "--parent", "base", root=theirs, driver="vfs",
            check=True)
    _open_to_others(theirs, keep=lambda path: path.endswith("/vfs/child"))
    os.chmod(theirs / "vfs" / "child", 0o700)
    own = _nobody_home(work, "vfs", theirs)[1]
    why = "its folder cannot be read by this user (Permission denied)"
    for argv in (["changes", "child"], ["diff", "child", "-o", "/dev/null"], ["mount", "child"],
                 ["create", "--parent", "child", "x"]):
        assert _nobody_command(own, *argv)[::2] == (7, f"graphdriver: layer child: {why}\n"), argv
    assert _nobody_command(own, "check", "child", "base")[:3] == (
        0, f"child: skipped: {why}\nbase: ok\n", "")


@pytest.mark.parametrize("size", ["99999999999999999999999999999999G", " 20M", "\uff150M", "20M ", "1M", "0"])
def test_a_size_no_file_system_takes_is_a_usage_error_before_the_store_is_made(tmp_path, size):
    r = run_cli("create", "x", "--rw", "--size", size, root=tmp_path / "s", run_root=tmp_path / "r",
                driver="overlay")
    assert (r.returncode, r.stderr.count(b"\n")) == (2, 1), r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("how", [["--size", "20M"], ["--opt", "size=20M"]])
def test_a_size_vfs_cannot_enforce_is_refused_before_the_store_is_made(tmp_path, how):
    """The refusal (7) is an argument vfs cannot honour: no store.json, no run root."""
    before, after = (how, []) if how[0] == "--opt" else ([], how)
    r = run_cli(*before, "create", "x", "--rw", *after, root=tmp_path / "s", run_root=tmp_path / "r",
                driver="vfs")
    assert (r.returncode, r.stderr.count(b"\n")) == (7, 1), r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def _one_layer_store(tmp_path: Path) -> Path:
    """A vfs store holding layer ``b``, imported from ``base.tar`` beside it."""
    (tmp_path / "base.tar").write_bytes(make_tar({"f": F(b"x")}))
    root = tmp_path / "store"
    run_cli("import", "b", str(tmp_path / "base.tar"), root=root, driver="vfs", check=True)
    return root


def test_an_output_file_name_of_any_legal_length_is_written(tmp_path):
    root = _one_layer_store(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for length in (245, 255):
        name = out / ("z" * (length - 2) + "é")  # a two-byte character last: *length* bytes
        r = run_cli("diff", "b", "-o", str(name), root=root, driver="vfs")
        assert r.returncode == 0, r.stderr
        assert name.read_bytes() == (tmp_path / "base.tar").read_bytes()
    assert sorted(len(os.fsencode(p.name)) for p in out.iterdir()) == [245, 255]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only folder")
def test_an_output_on_a_read_only_file_system_exits_7(tmp_path):
    import subprocess

    root = _one_layer_store(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    try:
        r = run_cli("diff", "b", "-o", str(ro / "x.tar"), root=root, driver="vfs")
        said = f"graphdriver: cannot write {ro / 'x.tar'}: Read-only file system\n"
        assert (r.returncode, r.stderr.decode()) == (7, said)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_root_that_is_a_file_or_an_empty_driver_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    for args, root in ((["layers"], tmp_path / "file"), (["create", "a"], tmp_path / "file"),
                       (["--driver", "", "layers"], tmp_path / "s")):
        r = run_cli(*args, root=root, run_root=tmp_path / "run")
        assert (r.returncode, r.stderr.count(b"\n")) == (2, 1), (args, r.stderr)
    assert not (tmp_path / "s").exists()


def test_verbose_causes_leave_out_what_raise_from_none_hid():
    from graphdriver.errors import cause_of as _cause_of

    try:
        try:
            raise PermissionError("hidden")
        except PermissionError:
            raise ValueError("told") from None
    except ValueError as e:
        assert _cause_of(e) is None
    try:
        try:
            raise PermissionError("shown")
        except PermissionError as inner:
            raise ValueError("told") from inner
    except ValueError as e:
        assert isinstance(_cause_of(e), PermissionError)


def _load_every_module() -> None:
    """Load every module a command may need before a fork to nobody: the checkout, its venv
    and the interpreter's own files may be closed to nobody, wherever the clone was made."""
    import encodings.ascii  # noqa: F401
    import importlib
    import pkgutil

    import graphdriver

    for info in pkgutil.walk_packages(graphdriver.__path__, "graphdriver."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for module in ("secrets", "tarfile", "concurrent.futures", "gzip", "hashlib", "json", "shutil",
                   "traceback", "pwd", "zstandard", "isal.igzip", "fastcrc"):
        importlib.import_module(module)


def _in_owner_namespace() -> tuple[bool, bool, int]:
    import graphdriver.fs
    from graphdriver.fs.ownfiles import enter_owner_namespace

    entered = enter_owner_namespace()
    return entered, graphdriver.fs.privileged(), os.geteuid()


def _userns_for_nobody() -> bool:
    from graphdriver.fs import syscalls

    return syscalls.unshare_user()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_the_owner_namespace_is_root_without_privilege_and_never_with_other_groups():
    """The namespace a command without root reads a closed folder in: uid 0 there, yet
    privileged() stays false (no chown, no device nodes, user.* xattrs); a user with
    supplementary groups stays outside (their files' groups would read as 65534)."""
    from tests.conftest import as_nobody

    _load_every_module()
    if not as_nobody(_userns_for_nobody):
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert as_nobody(_in_owner_namespace) == (True, False, 0)

    def grouped() -> object:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgroups([100])
                os.setgid(65534)
                os.setuid(65534)
                from tests.conftest import make_dumpable

                make_dumpable()
                code = 0 if _in_owner_namespace() == (False, False, 65534) else 2
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert grouped() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_a_folder_of_mode_0000_is_read_without_root_by_the_commands_that_read_trees(tmp_path):
    """Without root, a layer holding a folder its owner may not search (mode 0000) stops a
    command that reads layer trees; the command, undone, runs again as root of a user
    namespace that maps only the user, and reads it as root does.  The bytes diff gives
    back are the imported ones, the copy a child starts from keeps the folder's mode and
    owner; a store without such a folder never enters the namespace."""
    import contextlib
    import tempfile

    import graphdriver.fs
    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    _load_every_module()
    if not as_nobody(_userns_for_nobody):
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = Path(tempfile.mkdtemp(prefix="gd-closed-"))
    try:
        os.chmod(work, 0o755)
        layer = make_tar({"secret": D(mode=0o000), "secret/f": F(b"inside"), "open": F(b"o")})
        (work / "layer.tar").write_bytes(layer)
        (work / "plain.tar").write_bytes(make_tar({"open": F(b"o")}))
        for name in ("layer.tar", "plain.tar"):
            os.chmod(work / name, 0o644)
        mine, own = _nobody_home(work, "vfs")

        def command(*argv: str) -> tuple[int, str, bool]:
            def run() -> tuple[int, str, bool]:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = gd.main([*own, *argv])
                return code, out.getvalue(), graphdriver.fs._in_owner_namespace

            result = as_nobody(run)  # a process of its own, as every command is
            assert isinstance(result, tuple)
            return result

        assert command("import", "plain", str(work / "plain.tar"))[0] == 0
        assert command("create", "p2", "--parent", "plain") == (0, "p2\n", False)
        assert command("changes", "plain") == (0, "A /open\n", False)
        assert command("check", "plain") == (0, "plain: ok\n", False)
        # A folder of the store the user made read-only is no closed folder of a layer: the
        # refusal stands, and no second run gets past it.
        records = mine / "store" / "layers"
        records.chmod(0o555)
        try:
            assert command("create", "p3", "--parent", "plain")[0::2] == (7, False)
        finally:
            records.chmod(0o700)

        assert command("import", "base", str(work / "layer.tar"))[0] == 0
        # The child's copy of its parent alone runs there, in a process of its own.
        assert command("create", "ctr", "--parent", "base", "--rw") == (0, "ctr\n", False)
        assert command("diff", "base", "-o", str(mine / "base.tar"))[:1] == (0,)
        assert (mine / "base.tar").read_bytes() == layer
        assert command("diff", "base", "--regenerate", "-o", str(mine / "again.tar")) == (0, "", True)

        # To standard output: a regular file (here opened to append) is cut back to where
        # the failed run began; where bytes cannot be taken back (a pipe), the trees diff
        # reads are looked at first, and it runs as the owner from the start.
        (mine / "out").write_bytes(b"before\n")
        os.chown(mine / "out", 65534, 65534)

        def diff_to(kind: str) -> tuple[int, bytes]:
            def run() -> tuple[int, bytes]:
                if kind == "file":  # as a shell's >> opens it: appending, its offset still 0
                    fd = os.open(mine / "out", os.O_WRONLY | os.O_APPEND)
                    with open(fd, "w") as f, contextlib.redirect_stdout(f):
                        code = gd.main([*own, "diff", "base"])
                    return code, (mine / "out").read_bytes()
                r, w = os.pipe()
                with open(w, "w") as f, contextlib.redirect_stdout(f):
                    code = gd.main([*own, "diff", "base"])
                with open(r, "rb") as pipe:
                    return code, pipe.read()

            result = as_nobody(run)
            assert isinstance(result, tuple)
            return result

        assert diff_to("file") == (0, b"before\n" + layer)
        assert diff_to("pipe") == (0, layer)

        def diff_with(*argv: str, stdout_fd: str = "") -> int:
            def run() -> int:
                if stdout_fd == "null":
                    with open(os.devnull, "w") as f, contextlib.redirect_stdout(f):
                        return gd.main([*own, "diff", "base", *argv])
                if stdout_fd == "inside":  # 1<> at an offset: bytes past it are the file's
                    fd = os.open(mine / "out", os.O_RDWR)
                    os.lseek(fd, 3, os.SEEK_SET)
                    with open(fd, "w") as f, contextlib.redirect_stdout(f):
                        return gd.main([*own, "diff", "base", *argv])
                r, w = os.pipe()  # -o /dev/stdout: written into in place, never taken back
                saved = os.dup(1)
                os.dup2(w, 1)
                os.close(w)
                try:
                    return gd.main([*own, "diff", "base", *argv])
                finally:
                    os.dup2(saved, 1)
                    os.close(r)

            result = as_nobody(run)
            assert isinstance(result, int)
            return result

        assert diff_with(stdout_fd="null") == 0
        (mine / "out").write_bytes(b"x" * (3 * len(layer)))
        assert diff_with(stdout_fd="inside") == 0
        assert (mine / "out").read_bytes()[:3 + len(layer)] == b"xxx" + layer
        assert diff_with("-o", "/dev/stdout") == 0
        # A folder of the user's own that it closed to writing stays closed to the output.
        closed_out = mine / "ro"
        closed_out.mkdir(mode=0o555)
        os.chown(closed_out, 65534, 65534)
        assert diff_with("-o", str(closed_out / "x.tar")) == 7
        assert not (closed_out / "x.tar").exists()
        # zstd's worker threads end with the failed run, so that it can run again.
        assert diff_with("--compress", "zstd", "-o", str(mine / "z.tar.zst")) == 0
        import zstandard

        assert zstandard.ZstdDecompressor().decompressobj().decompress(
            (mine / "z.tar.zst").read_bytes()) == layer
        with tarfile.open(mine / "again.tar") as t:
            assert {m.name: (m.mode, m.uid) for m in t.getmembers()} == {
                "open": (0o644, 0), "secret": (0o000, 0), "secret/f": (0o644, 0)}
            member = t.extractfile("secret/f")
            assert member is not None and member.read() == b"inside"
        assert command("changes", "base") == (0, "A /open\nA /secret\nA /secret/f\n", True)
        assert command("diffsize", "base") == (0, "7\n", True)
        assert command("check", "base") == (0, "base: ok\n", True)
        assert command("changes", "ctr") == (0, "", True)
        copy = mine / "store" / "vfs" / "ctr" / "fs" / "secret"
        st = copy.stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o000, 65534, 65534)
        # An image saved into a pipe: the same look first, at every layer of the image.
        from tests.test_images import oci_layout

        oci_layout(work / "image", [layer])
        for folder, _dirs, files in os.walk(work / "image"):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        assert command("image", "load", str(work / "image"))[0] == 0
        assert command("image", "save", "localhost/made:1", "-o", str(mine / "img.tar"))[0::2] == (0, True)

        def save_to_pipe() -> tuple[int, bytes]:
            r, w = os.pipe()
            with open(w, "w") as f, contextlib.redirect_stdout(f):
                code = gd.main([*own, "image", "save", "localhost/made:1"])
            with open(r, "rb") as pipe:
                return code, pipe.read()

        assert as_nobody(save_to_pipe) == (0, (mine / "img.tar").read_bytes())
        assert command("image", "rm", "localhost/made:1")[0] == 0
        assert [command("remove", name)[0] for name in ("ctr", "base", "p2", "plain")] == [0] * 4
        assert command("layers")[:2] == (0, "")
    finally:
        import shutil

        for folder, _dirs, _files in os.walk(work):
            os.chmod(folder, 0o700)
        shutil.rmtree(work)


def _nobody_command(own: list[str], *argv: str) -> tuple[int, str, str, bool]:
    """``graphdriver *own *argv`` as nobody in a process of its own: the exit code, what it
    wrote to stdout and stderr, and whether it ran in the owner namespace."""
    import contextlib

    import graphdriver.fs
    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    def run() -> tuple[int, str, str, bool]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = gd.main([*own, *argv])
        return code, out.getvalue(), err.getvalue(), graphdriver.fs._in_owner_namespace

    result = as_nobody(run)
    assert isinstance(result, tuple)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_user_xattrs_of_a_file_its_owner_may_not_write_are_imported_without_root(open_work: Path) -> None:
    """Without root, a file of mode 0444, 0000, 0555 or 4111 carrying a user.* xattr is
    imported with it (user.* xattrs are the user's to keep; only privileged ones are left
    out), its mode the archive's, and the layer stays its tarball: diff gives the imported
    bytes back and check finds it ok."""
    import stat

    _load_every_module()
    work = open_work
    probe = work / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.a", b"1")
    except OSError:
        pytest.skip("the temporary folder's file system takes no user.* xattrs")
    mine, own = _nobody_home(work, "vfs")
    for mode in (0o444, 0o000, 0o555, 0o4111):
        name = f"m{mode:o}"
        layer = make_tar({"e": F(b"r\n", mode=mode, xattrs={"user.a": b"1"})})
        (work / f"{name}.tar").write_bytes(layer)
        os.chmod(work / f"{name}.tar", 0o644)
        assert _nobody_command(own, "import", name, str(work / f"{name}.tar")) == (0, "2\n", "", False)
        out = mine / f"{name}.out.tar"
        assert _nobody_command(own, "diff", name, "-o", str(out))[:3] == (0, "", "")
        assert out.read_bytes() == layer
        assert _nobody_command(own, "check", name)[:3] == (0, f"{name}: ok\n", "")
        file = mine / "store" / "vfs" / name / "fs" / "e"
        assert stat.S_IMODE(file.stat().st_mode) == mode
        assert os.getxattr(file, "user.a") == b"1"


def _traced_nobody_command(own: list[str], watched: list[Path],
                           *argv: str) -> tuple[int, str, str, int, set[int]]:
    """``graphdriver *own *argv`` as nobody in a process of its own, every chmod and fchmod of
    it noted and a thread watching the modes of *watched* meanwhile: the exit code, stdout,
    stderr, how many chmods changed a watched file, and the modes the thread saw."""
    import contextlib
    import threading

    from graphdriver import cli as gd
    from tests.conftest import as_nobody
    from tests.test_ownfiles import _chmod_tracer

    def run() -> tuple[int, str, str, int, set[int]]:
        inodes = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in watched}
        calls: list[tuple[int, int]] = []
        seen: set[int] = set()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                seen.update(os.lstat(p).st_mode & 0o7777 for p in watched)

        watcher = threading.Thread(target=watch)
        watcher.start()
        _chmod_tracer(calls)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = gd.main([*own, *argv])
        finally:
            done.set()
            watcher.join()
        return code, out.getvalue(), err.getvalue(), len([c for c in calls if c in inodes]), seen

    result = as_nobody(run)
    assert isinstance(result, tuple)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_reading_files_their_owner_may_not_read_never_changes_their_modes_without_root(
        open_work: Path) -> None:
    """Without root, a layer's files of mode 0000 or 4111 are read for copying to a child,
    exporting, comparing and checking with their modes untouched: not one chmod of them,
    and a watcher meanwhile sees only the stored modes.  The child's copies keep them."""
    import stat

    _load_every_module()
    if not as_nobody_may_unshare():
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = open_work
    modes = {"etc/shadow": 0o000, "etc/gshadow": 0o000, "usr/bin/sudo": 0o4111}
    layer = make_tar({"etc": D(), "etc/shadow": F(b"root:!!:19000::\n", mode=0o000),
                      "etc/gshadow": F(b"root:::\n", mode=0o000),
                      "usr": D(), "usr/bin": D(), "usr/bin/sudo": F(b"\x7fELF", mode=0o4111)})
    (work / "files.tar").write_bytes(layer)
    os.chmod(work / "files.tar", 0o644)
    mine, own = _nobody_home(work, "vfs")
    assert _nobody_command(own, "import", "files", str(work / "files.tar"))[0] == 0
    stored = mine / "store" / "vfs" / "files" / "fs"
    watched = [stored / name for name in modes]
    for argv, out in ((["create", "child", "--parent", "files"], "child\n"),
                      (["diff", "files", "-o", str(mine / "a.tar")], ""),
                      (["diff", "files", "--regenerate", "-o", str(mine / "b.tar")], ""),
                      (["changes", "child"], ""),
                      (["check", "files"], "files: ok\n")):
        assert _traced_nobody_command(own, watched, *argv) == (0, out, "", 0, set(modes.values())), argv
    assert (mine / "a.tar").read_bytes() == layer
    with tarfile.open(mine / "b.tar") as t:
        assert {m.name: m.mode for m in t.getmembers() if m.isfile()} == modes
    child = mine / "store" / "vfs" / "child" / "fs"
    assert {name: stat.S_IMODE((child / name).lstat().st_mode) for name in modes} == modes
    assert (child / "etc" / "shadow").read_bytes() == b"root:!!:19000::\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_user_xattrs_of_a_file_or_folder_closed_to_its_owner_are_copied_and_exported_without_root(
        open_work: Path) -> None:
    """Without root, a file of mode 0000 carrying a user.* xattr (reading it needs read
    permission) and a folder of mode 0555 carrying one (setting it needs write permission)
    are copied to a child with their xattrs and modes, and exported with their xattrs."""
    import stat

    _load_every_module()
    if not as_nobody_may_unshare():
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = open_work
    probe = work / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.a", b"1")
    except OSError:
        pytest.skip("the temporary folder's file system takes no user.* xattrs")
    layer = make_tar({"etc": D(), "etc/gshadow": F(b"root:::\n", mode=0o000, xattrs={"user.a": b"1"}),
                      "ro": D(mode=0o555, xattrs={"user.d": b"2"}), "ro/f": F(b"f")})
    (work / "x.tar").write_bytes(layer)
    os.chmod(work / "x.tar", 0o644)
    mine, own = _nobody_home(work, "vfs")
    assert _nobody_command(own, "import", "x", str(work / "x.tar"))[0] == 0
    assert _nobody_command(own, "create", "child", "--parent", "x") == (0, "child\n", "", False)
    assert _nobody_command(own, "changes", "child") == (0, "", "", False)
    assert _nobody_command(own, "diff", "x", "--regenerate", "-o", str(mine / "x.out"))[:3] == (0, "", "")
    assert _nobody_command(own, "check", "x") == (0, "x: ok\n", "", False)
    with tarfile.open(mine / "x.out") as t:
        assert t.getmember("etc/gshadow").pax_headers["SCHILY.xattr.user.a"] == "1"
        assert t.getmember("ro").pax_headers["SCHILY.xattr.user.d"] == "2"
    child = mine / "store" / "vfs" / "child" / "fs"
    assert stat.S_IMODE((child / "etc" / "gshadow").stat().st_mode) == 0o000
    assert stat.S_IMODE((child / "ro").stat().st_mode) == 0o555
    assert os.getxattr(child / "etc" / "gshadow", "user.a") == b"1"
    assert os.getxattr(child / "ro", "user.d") == b"2"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_a_child_linking_to_a_file_closed_to_its_owner_is_imported_on_overlay_without_root(
        open_work: Path) -> None:
    """Without root, overlay (fuse-overlayfs) copies a lower layer's file that a hardlink of
    the child names up into the child's upper directory: one of mode 0000 is read as its
    owner, and the copy keeps its mode, contents and user.* xattr."""
    import contextlib
    import stat

    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    _load_every_module()
    if not as_nobody_may_unshare():
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = open_work
    (work / "probe").touch()
    try:
        os.setxattr(work / "probe", "user.a", b"1")
    except OSError:
        pytest.skip("the temporary folder's file system takes no user.* xattrs (overlay needs them)")
    shadow = F(b"root:!!:19000::\n", mode=0o000, xattrs={"user.a": b"1"})
    (work / "base.tar").write_bytes(make_tar({"etc": D(), "etc/shadow": shadow}))
    (work / "top.tar").write_bytes(make_tar({"etc/shadow-": H("etc/shadow")}))
    for name in ("base.tar", "top.tar"):
        os.chmod(work / name, 0o644)
    mine, own = _nobody_home(work, "overlay")

    def run() -> list[tuple[int, str]]:
        import graphdriver.drivers.overlay as overlay

        # Importing mounts nothing: the probe for fuse-overlayfs (/dev/fuse, which a machine
        # may keep from nobody) is not what is tested here.
        overlay.probe_home = lambda *_, **__: {}  # type: ignore[assignment]
        codes = []
        for argv in (["import", "base", str(work / "base.tar")],
                     ["import", "--parent", "base", "top", str(work / "top.tar")]):
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                codes.append((gd.main([*own, *argv]), err.getvalue()))
        return codes

    assert as_nobody(run) == [(0, ""), (0, "")]
    upper = mine / "store" / "overlay" / "top" / "diff" / "etc"
    a, b = (upper / "shadow").stat(), (upper / "shadow-").stat()
    assert a.st_ino == b.st_ino and stat.S_IMODE(a.st_mode) == 0o000
    assert (upper / "shadow").read_bytes() == b"root:!!:19000::\n"
    assert os.getxattr(upper / "shadow", "user.a") == b"1"


def as_nobody_may_unshare() -> bool:
    """Whether nobody may make a user namespace here."""
    from tests.conftest import as_nobody

    return bool(as_nobody(_userns_for_nobody))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_a_child_of_a_layer_holding_a_closed_folder_is_imported_and_loaded_without_root():
    """Without root, import --parent and image load on a layer holding a folder of mode 0000
    (and a file of mode 0000 with a user.* xattr) copy the parent as root of a user
    namespace of the user's own, in a process of their own: the child holds the parent's
    files with their modes, the folder's content and the xattr, then its own; an entry of
    the child into the closed folder is still a missing privilege (7)."""
    import shutil
    import stat
    import tempfile

    _load_every_module()
    if not as_nobody_may_unshare():
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = Path(tempfile.mkdtemp(prefix="gd-closed-parent-"))
    try:
        os.chmod(work, 0o755)
        probe = work / "probe"
        probe.touch()
        xattrs = {"user.a": b"1"}
        try:
            os.setxattr(probe, "user.a", b"1")
        except OSError:
            xattrs = {}
        base = make_tar({"secret": D(mode=0o000), "secret/f": F(b"inside"), "etc": D(),
                         "etc/shadow": F(b"root:!!:19000::\n", mode=0o000, xattrs=xattrs)})
        top = make_tar({"etc": D(), "etc/hostname": F(b"box\n")})
        into = make_tar({"secret/more": F(b"m")})
        for name, data in (("base.tar", base), ("top.tar", top), ("into.tar", into)):
            (work / name).write_bytes(data)
            os.chmod(work / name, 0o644)
        mine, own = _nobody_home(work, "vfs")
        assert _nobody_command(own, "import", "base", str(work / "base.tar"))[0] == 0
        code, _out, err, whole = _nobody_command(own, "import", "--parent", "base", "top",
                                                 str(work / "top.tar"))
        assert (code, err, whole) == (0, "", False)  # only the copy ran as the owner
        assert _nobody_command(own, "diff", "top", "-o", str(mine / "top.out"))[:3] == (0, "", "")
        assert (mine / "top.out").read_bytes() == top
        assert _nobody_command(own, "changes", "top")[:3] == (0, "C /etc\nA /etc/hostname\n", "")
        assert _nobody_command(own, "check", "top")[:3] == (0, "top: ok\n", "")
        fs = mine / "store" / "vfs" / "top" / "fs"
        got = {name: stat.S_IMODE((fs / name).lstat().st_mode) for name in ("secret", "etc/shadow")}
        assert got == {"secret": 0o000, "etc/shadow": 0o000}
        assert (fs / "etc" / "hostname").read_bytes() == b"box\n"
        if xattrs:
            assert os.getxattr(fs / "etc" / "shadow", "user.a") == b"1"
        assert sorted(os.listdir(fs / "secret")) == ["f"]
        assert (fs / "secret" / "f").read_bytes() == b"inside"

        code, out, err, _ = _nobody_command(own, "import", "--parent", "base", "in", str(work / "into.tar"))
        assert (code, out) == (7, "") and "secret/more" in err
        assert _nobody_command(own, "exists", "in")[0] != 0

        from tests.test_images import oci_layout

        oci_layout(work / "image", [base, top])
        for folder, _dirs, files in os.walk(work / "image"):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        assert _nobody_command(own, "image", "load", str(work / "image"))[:3] == (0, "localhost/made:1\n", "")
        assert _nobody_command(own, "image", "save", "localhost/made:1", "-o", str(mine / "img.tar"))[0] == 0
    finally:
        for folder, _dirs, _files in os.walk(work):
            os.chmod(folder, 0o700)
        shutil.rmtree(work)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_an_entry_into_a_folder_of_mode_0000_is_a_missing_privilege_without_root(open_work: Path) -> None:
    """Without root, applying an entry below a folder of mode 0000 that the parent layer
    made needs a permission the user lacks: exit 7 (not 1, an entry the layer cannot take),
    one line naming the entry, and the layer is left as it was."""

    _load_every_module()
    work = open_work
    (work / "p.tar").write_bytes(make_tar({"sec": D(mode=0o000), "sec/f": F(b"f")}))
    (work / "m.tar").write_bytes(make_tar({"sec/more": F(b"m")}))
    for name in ("p.tar", "m.tar"):
        os.chmod(work / name, 0o644)
    mine, own = _nobody_home(work, "vfs")
    assert _nobody_command(own, "import", "p", str(work / "p.tar"))[0] == 0
    assert _nobody_command(own, "create", "c", "--parent", "p", "--rw")[:2] == (0, "c\n")
    record = _nobody_command(own, "layer", "c")
    assert record[0] == 0
    code, out, err, _ = _nobody_command(own, "-v", "apply", "c", str(work / "m.tar"))
    assert (code, out) == (7, "")
    assert err == "graphdriver: entry 'sec/more': Permission denied (a permission this user lacks)\n"
    assert _nobody_command(own, "layer", "c") == record
    assert sorted(os.listdir(mine / "store" / "vfs" / "c" / "fs" / "sec")) == ["f"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_a_parent_this_user_may_not_copy_is_named_by_its_layer_and_path():
    """Without root, a child of a layer holding a folder this user may not read (its own of mode
    0000 where no user namespace may be made, or another user's in an additional store) is
    refused with exit 7 naming the parent layer and the folder's path in it, never where the
    store keeps it; nothing of the child is left."""
    import shutil
    import tempfile

    _load_every_module()
    work = Path(tempfile.mkdtemp(prefix="gd-closed-copy-"))
    try:
        os.chmod(work, 0o755)
        theirs = work / "theirs"
        (work / "own.tar").write_bytes(make_tar({"d": D(mode=0o000), "d/f": F(b"x"), "o": F(b"o")}))
        (work / "theirs.tar").write_bytes(make_tar({"e": D(mode=0o700), "e/f": F(b"x")}))
        for name in ("own.tar", "theirs.tar"):
            os.chmod(work / name, 0o644)
        run_cli("import", "other", str(work / "theirs.tar"), root=theirs, driver="vfs", check=True)
        _open_to_others(theirs, lambda path: path.endswith("/e"))
        own = _nobody_home(work, "vfs")[1]
        assert _main_as_nobody([*own, "import", "p", str(work / "own.tar")])[0] == 0
        closed = (7, "graphdriver: layer p: d: Permission denied\n")
        for argv in (["create", "--parent", "p", "c"], ["create", "--parent", "p", "c", "--rw"],
                     ["import", "--parent", "p", "c", str(work / "theirs.tar")]):
            assert _main_as_nobody([*own, *argv], namespaces=False) == closed, argv
        theirs_closed = (7, "graphdriver: layer other: e: Permission denied\n")
        for argv in (["create", "--parent", "other", "c"],
                     ["import", "--parent", "other", "c", str(work / "theirs.tar")]):
            assert _main_as_nobody([*own, "--additional-store", str(theirs), *argv]) == theirs_closed, argv
        assert _main_as_nobody([*own, "exists", "c"])[0] == 3
    finally:
        for folder, _dirs, _files in os.walk(work):
            os.chmod(folder, 0o700)
        shutil.rmtree(work)


def test_whether_an_output_can_be_taken_back_is_known_before_writing(tmp_path):
    """A regular FILE (staged), a folder, /dev/null or a regular standard output written at
    its end can be taken back from a failed run; a pipe, a fifo, /dev/stdout on a pipe, or a
    file written at an offset inside it (1<>) cannot."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to("fifo")
    (tmp_path / "so").symlink_to("/proc/self/fd/1")
    (tmp_path / "there.tar").write_bytes(b"old")
    (tmp_path / "closed").mkdir(mode=0o000)
    probe = ("import sys\nfrom graphdriver.cliio import output_restartable as r\n"
             "print(' '.join(str(r(p or None)) for p in sys.argv[1:]), file=sys.stderr)\n")
    # Only what is written into in place cannot be taken back; a name that cannot be opened
    # (a closed folder's file, a file's "child") fails the command by itself.
    paths = ["", "-", str(tmp_path / "new.tar"), str(tmp_path / "there.tar"), str(tmp_path),
             os.devnull, str(fifo), "/dev/stdout", str(tmp_path / "to-fifo"), str(tmp_path / "so"),
             str(tmp_path) + "/", ".", str(tmp_path / "closed" / "x.tar"),
             str(tmp_path / "there.tar" / "x"), str(tmp_path / "gone" / "x.tar")]

    def probe_with(stdout: object) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", probe, *paths], stdout=stdout,
                              stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                              check=True)
        return proc.stderr.decode().split()

    assert probe_with(subprocess.PIPE) == ["False", "False", "True", "True", "True", "True", "False",
                                           "False", "False", "False", "True", "True", "True", "True",
                                           "True"]
    with open(tmp_path / "out", "ab") as f:
        assert probe_with(f)[:2] == ["True", "True"]
    (tmp_path / "inside").write_bytes(b"12345")
    fd = os.open(tmp_path / "inside", os.O_RDWR)
    try:
        os.lseek(fd, 2, os.SEEK_SET)
        assert probe_with(fd)[:2] == ["False", "False"]
    finally:
        os.close(fd)
    with open(os.devnull, "wb") as f:
        assert probe_with(f)[:2] == ["True", "True"]
    (tmp_path / "closed").chmod(0o700)


def test_the_look_for_closed_folders_is_only_for_outputs_that_cannot_be_taken_back(tmp_path):
    """Without root, diff and image save look through the trees they will read only when their
    bytes go where they cannot be taken back; otherwise a denial is retried as before."""
    from types import SimpleNamespace

    from graphdriver import cliowner

    os.mkfifo(tmp_path / "fifo")
    calls: list[str] = []

    class Store:
        root = str(tmp_path / "store")  # no image there keeps bytes of the layer

        def may_read_as_owner(self) -> bool:
            return True

        def record(self, layer_id: str) -> object:
            return SimpleNamespace(parent="base", diff_digest=None)

        def changed_since_import(self, layer_id: str) -> None:
            return None

        def closed_folder(self, layers: object) -> str:
            calls.append("look " + ",".join(layers))  # type: ignore[call-overload]
            return "/closed"

        def read_as_owner(self) -> bool:
            calls.append("enter")
            return True

    def run(output: str, **kw: object) -> list[str]:
        calls.clear()
        args = SimpleNamespace(command="diff", id="ctr", parent=None, output=output, compress=None)
        vars(args).update(kw)
        assert cliowner.run(lambda store, args: 0, Store(), args) == 0  # type: ignore[arg-type]
        return list(calls)

    assert run(str(tmp_path / "out.tar")) == []
    assert run(str(tmp_path / "fifo")) == ["look ctr,base", "enter"]
    assert run(str(tmp_path / "fifo"), compress="original") == []  # none kept: refused, no tree read
    assert run(str(tmp_path / "fifo"), command="changes") == []


@pytest.mark.parametrize(
    "argv, verify, ref",
    [
        (["--tls-verify", "r/x:1"], "true", "r/x:1"),  # podman's bare flag: check the certificate
        (["r/x:1", "--tls-verify"], "true", "r/x:1"),
        (["--tls-verify=false", "r/x:1"], "false", "r/x:1"),
        (["--tls-verify", "false", "r/x:1"], "false", "r/x:1"),
        (["--tls-verify", "true", "r/x:1"], "true", "r/x:1"),
        (["r/x:1"], None, "r/x:1"),
        # Every spelling of Go's strconv.ParseBool, as podman takes them.
        *((["--tls-verify=" + w, "r/x:1"], w, "r/x:1")
          for w in ("1", "t", "T", "TRUE", "True", "0", "f", "F", "FALSE", "False")),
        (["--tls-verify", "F", "r/x:1"], "F", "r/x:1"),
        (["r/x:1", "--tls-verify", "0"], "0", "r/x:1"),
    ],
)
def test_tls_verify_stands_alone_or_takes_a_value(argv, verify, ref):
    from graphdriver.cliargs import parse

    args = parse(["image", "pull", *argv])
    assert (args.tls_verify, args.ref) == (verify, ref)


@pytest.mark.parametrize("value", ["maybe", "yes", "no", "on", "tRUE", "FaLsE", "2", "", " true"])
def test_tls_verify_takes_only_the_spellings_of_true_or_false(root, value):
    """Go's strconv.ParseBool's spellings (podman's), and nothing else: a usage error naming them."""
    r = cli(root, "image", "push", "localhost/x:1", f"--tls-verify={value}")
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1, r.stderr
    told = f"graphdriver: option --tls-verify {value!r}: choose true, false, 1, 0, t, f, T, F, TRUE, FALSE, "
    assert r.stderr.decode().startswith(told + "True or False"), r.stderr
    assert not root.exists()


@pytest.mark.parametrize("verify, insecure", [(w, False) for w in ("true", "1", "t", "T", "TRUE", "True")]
                         + [(w, True) for w in ("false", "0", "f", "F", "FALSE", "False")] + [(None, False)])
def test_tls_verify_false_in_any_spelling_is_insecure(verify, insecure):
    from graphdriver.cliargs import UsageError, parse
    from graphdriver.climages import _insecure

    for command in (["image", "pull", "r/x:1"], ["image", "push", "r/x:1"]):
        args = parse([*command, *([f"--tls-verify={verify}"] if verify is not None else [])])
        assert _insecure(args) is insecure
        with_insecure = parse([*command, "--insecure", *([f"--tls-verify={verify}"] if verify else [])])
        if insecure or verify is None:
            assert _insecure(with_insecure) is True
        else:  # --insecure and a true spelling contradict each other
            with pytest.raises(UsageError, match=f"--insecure and --tls-verify={verify} contradict"):
                _insecure(with_insecure)


@pytest.mark.parametrize("names", [["./a", "a/b", "a"], ["a", "./a"], ["a/", "a"]])
def test_tarsplit_of_an_archive_naming_a_path_twice_is_refused_and_diff_stays_exact(root, tmp_path, names):
    """tar-split's reader refuses metadata that names a path twice (as Go cleans names), so
    `tarsplit` says so (exit 3, as for an archive it cannot rebuild) instead of handing out
    metadata no tool can use; the layer still exports byte for byte."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("b"):
                info.size = 2
                tf.addfile(info, io.BytesIO(b"b\n"))
            else:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
    tar = buf.getvalue()
    assert run_cli("import", "l", "-", root=root, input=tar).returncode == 0
    r = cli(root, "tarsplit", "l", "-o", str(tmp_path / "ts.gz"))
    assert r.returncode == 3 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"names 'a' twice" in r.stderr and not (tmp_path / "ts.gz").exists()
    assert cli(root, "diff", "l").stdout == tar


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [(["-qv", "layers"], True, True), (["layers", "-vq"], True, True), (["-q", "-v", "layers"], True, True),
     (["-vv", "layers"], False, True)],
)
def test_single_letter_switches_bundle(argv, quiet, verbose):
    from graphdriver.cliargs import parse

    args = parse(argv)
    assert (args.command, args.quiet, args.verbose) == ("layers", quiet, verbose)
    assert parse(["image", "rm", "-qf", "web"]).force


@pytest.mark.parametrize(
    "argv, says",
    [
        (["-qx", "layers"], "unknown option '-x' in '-qx': see 'graphdriver --help'"),
        (["diff", "a", "-qo"], "option -o needs a value (FILE): see 'graphdriver diff --help'"),
        (["diff", "a", "-xoFILE"], "unknown option '-x' in '-xoFILE': see 'graphdriver diff --help'"),
        (["-qf", "layers"], "unknown option '-f' in '-qf': see 'graphdriver --help'"),  # image rm's only
        (["--qv", "layers"], "unknown option '--qv': see 'graphdriver --help'"),
    ],
)
def test_a_bundle_with_a_letter_that_is_no_switch_names_it(root, argv, says):
    r = cli(root, *argv)
    assert (r.returncode, r.stderr.decode()) == (2, f"graphdriver: {says}\n")
    assert not root.exists()


def test_double_dash_ends_the_options_and_the_command_may_follow_it(root):
    from graphdriver.cliargs import parse

    assert cli(root, "create", "a").returncode == 0
    r = cli(root, "--", "layers")
    assert (r.returncode, r.stdout) == (0, b"a\n"), r.stderr
    r = cli(root, "-q", "--", "exists", "a")
    assert r.returncode == 0, r.stderr
    args = parse(["--", "image", "load", "x.tar"])
    assert (args.command, args.source) == ("image load", "x.tar")
    args = parse(["exists", "--", "--json"])  # after the command: the rest are positionals
    assert (args.id, args.json) == ("--json", False)
    r = cli(root, "--", "exists", "--", "a")  # a second -- is a positional
    assert r.returncode == 2 and "unexpected argument 'a'" in r.stderr.decode()


def test_an_os_error_names_what_the_user_named_never_a_working_file(tmp_path, monkeypatch, capsys):
    """A full disk met while a record was written said ``import .../layers/.tmp-l.json-123:
    No space left on device``: a file the user never named, and gone by then."""
    import errno

    from graphdriver import cli as gd
    from graphdriver.store.layers import Store

    def full(*_args: object, **_kwargs: object) -> None:
        working = tmp_path / "s" / "layers" / ".tmp-l.json-123"
        raise OSError(errno.ENOSPC, "No space left on device", str(working))

    monkeypatch.setattr(Store, "import_layer", full)
    (tmp_path / "in.tar").write_bytes(make_tar({"f": F(b"x")}))
    code = gd.main(["--root", str(tmp_path / "s"), "--run-root", str(tmp_path / "run"), "--driver", "vfs",
                    "import", "l", str(tmp_path / "in.tar")])
    assert (code, capsys.readouterr().err) == (1, "graphdriver: import l: No space left on device\n")


@pytest.mark.parametrize(
    "argv, output, quiet",
    [(["-oFILE"], "FILE", False), (["-qoFILE"], "FILE", True), (["-qo", "FILE"], "FILE", True),
     (["-o=FILE"], "FILE", False), (["-qo=FILE"], "FILE", True), (["-oa=b"], "a=b", False),
     (["-o-"], "-", False)],
)
def test_a_short_option_takes_its_value_attached_as_getopt_does(argv, output, quiet):
    """``-oFILE`` (and ``-qoFILE``: switches, then the option taking the rest of the word) as GNU
    getopt, tar and podman read it; it was refused as a bundle."""
    from graphdriver.cliargs import parse

    args = parse(["diff", "a", *argv])
    assert (args.command, args.id, args.output, args.quiet) == ("diff", "a", output, quiet)


def test_diff_writes_to_an_attached_short_option_value(root, tmp_path):
    assert cli(root, "create", "a").returncode == 0
    r = cli(root, "diff", "a", f"-o{tmp_path / 'a.tar'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.tar").read_bytes() == cli(root, "diff", "a").stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["lyers"], "unknown command 'lyers' (did you mean 'layers'?): see 'graphdriver --help'"),
        (["mout", "x"], "unknown command 'mout' (did you mean 'mount'?): see 'graphdriver --help'"),
        (["imag", "ls"], "unknown command 'imag' (did you mean 'image'?): see 'graphdriver --help'"),
        (["image", "lss"], "unknown command 'image lss' (did you mean 'image ls'?): "
                           "see 'graphdriver image --help'"),
        (["container", "lss"], "unknown command 'container lss' (did you mean 'container ls'?): "
                               "see 'graphdriver container --help'"),
        (["image", "frobnicate"], "unknown command 'image frobnicate': see 'graphdriver image --help'"),
        (["help", "nosuch"], "unknown command 'nosuch': see 'graphdriver --help'"),
        (["help", "lyers"], "unknown command 'lyers' (did you mean 'layers'?): see 'graphdriver --help'"),
        (["help", "image", "lss"], "unknown command 'image lss' (did you mean 'image ls'?): "
                                   "see 'graphdriver image --help'"),
    ],
)
def test_an_unknown_command_is_told_with_what_it_is_close_to_and_where_to_look(root, args, says):
    """As git: a misspelt command gets the commands nearest to it; a group's command points at
    the group's help, which lists its commands; ``help`` of no command says so."""
    r = cli(root, *args)
    assert (r.returncode, r.stderr.decode(), r.stdout) == (2, f"graphdriver: {says}\n", b"")
    assert not root.exists()


def test_a_container_name_is_told_its_own_limit_of_123(root):
    """NAME-init is a layer id too, so a container name has 123 characters at most: the
    refusal of a malformed one says 123, not a layer id's 128."""
    r = cli(root, "container", "create", "img", "--", "-x")
    assert r.returncode == 2
    assert r.stderr.decode() == ("graphdriver: invalid container name '-x': must be 1 to 123 characters "
                                 "of [A-Za-z0-9][A-Za-z0-9_.-]*\n")
    for name in ("x" * 200, "a/" * 70):  # longer than any layer id; not one at all
        r = cli(root, "container", "create", "img", name)
        assert r.returncode == 2 and "': must be 1 to 123 characters of" in r.stderr.decode(), name
    assert not root.exists()


def test_diff_of_a_tampered_layer_names_the_layer_as_check_does(root, tmp_path):
    """A file that no longer matches the tarball imported: ``diff`` said ``graphdriver: file
    './etc/hosts': longer than ...`` without naming the layer; it prints the line ``check``
    prints, ``layer base: file ...``."""
    from graphdriver.store.layers import Store, StoreOptions

    tar = make_tar({"etc": D(), "etc/hosts": F(b"127.0.0.1 localhost\n")})
    assert cli(root, "import", "base", "-", input=tar).returncode == 0
    store = Store(StoreOptions(root=str(root), run_root=str(root.parent / "run")))
    with open(Path(store.driver.apply_target("base").path, "etc/hosts"), "ab") as f:
        f.write(b"127.0.0.1 evil\n")
    checked = cli(root, "check", "base")
    line = checked.stderr.decode()
    assert checked.returncode == 6 and line.startswith("graphdriver: layer base: file "), line
    assert "longer than" in line and line.count("\n") == 1
    for how in ([], ["--compress", "gzip"], ["-o", str(tmp_path / "out.tar")]):
        r = cli(root, "diff", "base", *how)
        assert (r.returncode, r.stderr.decode()) == (6, line), how
    assert not (tmp_path / "out.tar").exists()


def test_check_quotes_a_name_that_is_not_utf8_as_its_error_line_does(root):
    """check's line for a layer, and its ``--json`` error, show a byte of a file's name that is
    not UTF-8 as the byte (``\\xe9``), as the line on stderr does, never as ``\\udce9``."""
    from graphdriver.store.layers import Store, StoreOptions

    tar = make_tar({"caf\udce9": F(b"hello\n")})
    assert run_cli("import", "l", "-", root=root, driver="vfs", input=tar).returncode == 0
    store = Store(StoreOptions(root=str(root), run_root=str(root.parent / "run")))
    with open(os.fsencode(store.driver.apply_target("l").path) + b"/caf\xe9", "wb") as f:
        f.write(b"HELLO\n")  # the same length: the checksum tells
    r = cli(root, "check", "l")
    why = r.stderr.decode().removeprefix("graphdriver: layer l: ").rstrip("\n")
    assert r.returncode == 6 and "caf\\xe9" in why, r.stderr
    assert r.stdout.decode() == f"l: {why}\n"
    assert json.loads(cli(root, "--json", "check", "l").stdout)[0]["error"] == why
    # A record file of such a name (no layer id) is told in one line too.
    with open(os.path.join(os.fsencode(root), b"layers", b"x\xff\ny.json"), "wb") as f:
        f.write(b"{bad")
    lines = cli(root, "check").stdout.split(b"\n")
    assert lines[0].startswith(b"l: ") and lines[1].startswith(b"x\\xff\\ny: unreadable: "), lines


def test_cleanup_tells_a_folder_whose_name_holds_a_newline_in_one_line(root):
    """cleanup prints one line per thing it did: a name with a newline or a byte that is not
    UTF-8 is escaped there as in an error line, so it cannot forge another line."""
    assert run_cli("create", "a", root=root, driver="vfs").returncode == 0
    os.mkdir(os.path.join(os.fsencode(root), b"vfs", b"x\xff\nremoved everything"))
    r = cli(root, "cleanup")
    assert (r.returncode, r.stdout) == (
        0, b"removed orphaned layer folder x\\xff\\nremoved everything\n"), r.stderr


@pytest.mark.parametrize("driver", ["vfs", "overlay"])
def test_status_tells_a_store_path_holding_a_newline_in_its_one_line(tmp_path, driver):
    """status prints the driver, then one ``key: value`` line per fact: a store path with a
    newline or a byte that is not UTF-8 is escaped there, as in an error line (``--json``
    gives it whole)."""
    if driver == "overlay" and os.geteuid() != 0:
        pytest.skip("needs root for overlay")
    root = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"st\xff\nHome: elsewhere")))
    r = run_cli("status", root=root, driver=driver, check=True)
    lines = r.stdout.decode("utf-8", "surrogateescape").splitlines()
    assert lines[0] == driver and all(": " in line for line in lines[1:]), lines
    assert [line for line in lines if line.startswith("Home: ")] == [
        f"Home: {root}/{driver}".replace("\n", "\\n").replace("\udcff", "\\xff")]
    shown = json.loads(run_cli("status", "--json", root=root, driver=driver, check=True).stdout)
    assert "\n" in shown["status"]["Home"]


def _with_terminal_stdin(root: Path, *args: str) -> tuple[int, bytes, bytes]:
    """Run the command line with a pseudo-terminal on standard input (a user at a prompt)."""
    import pty
    import subprocess
    import sys

    from tests.conftest import ROOT

    leader, follower = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
               str(root.parent / "run"), *args]
        proc = subprocess.run(cmd, stdin=follower, capture_output=True, check=False, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    finally:
        os.close(follower)
        os.close(leader)
    return proc.returncode, proc.stdout, proc.stderr


def _with_terminal_stdout(root: Path, *args: str) -> tuple[int, bytes]:
    """Run the command line with a pseudo-terminal on standard output; its exit code and stderr."""
    import pty
    import subprocess
    import sys

    from tests.conftest import ROOT

    leader, follower = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "graphdriver", "--root", str(root), "--run-root",
               str(root.parent / "run"), *args]
        proc = subprocess.run(cmd, stdout=follower, stderr=subprocess.PIPE, check=False, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    finally:
        os.close(follower)
        os.close(leader)
    return proc.returncode, proc.stderr


def test_diff_and_tarsplit_refuse_a_terminal_on_standard_output(root, tmp_path):
    """``diff`` and ``tarsplit`` without -o wrote a binary tarball into the user's terminal: refused
    (exit 2) before a byte, as ``image save`` and ``docker save`` refuse it; -o FILE still works."""
    (tmp_path / "base.tar").write_bytes(make_tar({"f": F(b"x" * 100)}))
    assert run_cli("import", "base", str(tmp_path / "base.tar"), root=root, driver="vfs").returncode == 0
    for args in (["diff", "base"], ["diff", "base", "-o", "-"], ["diff", "base", "--compress", "gzip"],
                 ["tarsplit", "base"]):
        what = "tar-split metadata" if args[0] == "tarsplit" else "a tarball"
        said = (f"graphdriver: {args[0]} will not write {what} to a terminal: give -o FILE or redirect "
                f"standard output: see 'graphdriver {args[0]} --help'\n")
        assert _with_terminal_stdout(root, *args) == (2, said.encode()), args
    for name in ("diff", "tarsplit"):
        assert _with_terminal_stdout(root, name, "base", "-o", str(tmp_path / name)) == (0, b""), name
        text = " ".join(cli(root, name, "--help").stdout.decode().split())
        assert "2 standard output is a terminal (give -o FILE)" in text, name
    assert (tmp_path / "diff").read_bytes() == (tmp_path / "base.tar").read_bytes()


def test_import_and_apply_refuse_a_terminal_on_standard_input(root):
    """``import ID -`` (or no FILE) and ``apply ID -`` with a terminal on standard input waited
    behind a progress bar for a tarball no one types: refused at once (exit 2), as ``image load
    -`` refuses it, and their help says so."""
    for args in (["import", "t1", "-"], ["import", "t1"]):
        said = ("graphdriver: standard input is a terminal; give a tarball file or pipe one: "
                "see 'graphdriver import --help'\n")
        assert _with_terminal_stdin(root, *args) == (2, b"", said.encode()), args
    assert not root.exists()  # nothing made
    assert cli(root, "create", "t1").returncode == 0
    said = ("graphdriver: standard input is a terminal; give a tarball file or pipe one: "
            "see 'graphdriver apply --help'\n")
    assert _with_terminal_stdin(root, "apply", "t1", "-") == (2, b"", said.encode())
    assert cli(root, "diff", "t1").stdout == cli(root, "diff", "t1").stdout  # still empty
    assert cli(root, "diffsize", "t1").stdout == b"0\n"
    for name in ("import", "apply"):
        text = " ".join(cli(root, name, "--help").stdout.decode().split())
        assert "2 " in text and "- (or no FILE) with a terminal on (or closed) standard input" in text, name


def test_json_of_a_store_under_a_folder_whose_name_is_not_utf8(tmp_path):
    """``--json`` wrote such a path with ``\\udcff`` escapes, which are no text (jq and Go's JSON
    read them as U+FFFD and lose the path): now U+FFFD, and ``path_raw`` with its bytes."""
    import base64

    root = Path(os.fsdecode(bytes(tmp_path) + b"/st\xff"))
    (tmp_path / "base.tar").write_bytes(make_tar({"f": F(b"x")}))
    assert run_cli("import", "b", str(tmp_path / "base.tar"), root=root, driver="vfs").returncode == 0
    r = run_cli("mount", "b", "--json", root=root, driver="vfs")
    shown = json.loads(r.stdout)
    raw = base64.b64decode(shown["path_raw"])
    assert raw.startswith(bytes(tmp_path) + b"/st\xff/") and Path(os.fsdecode(raw), "f").read_bytes() == b"x"
    assert shown["path"] == raw.decode("utf-8", "replace") and b"\\udc" not in r.stdout
    status = json.loads(run_cli("status", "--json", root=root, driver="vfs").stdout)["status"]
    assert base64.b64decode(status["Root_raw"]) == bytes(tmp_path) + b"/st\xff"
    assert run_cli("unmount", "b", root=root, driver="vfs").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_df_and_tree_without_root_count_what_a_closed_folder_holds_and_name_records_they_cannot_read(
        open_work: Path) -> None:
    """Without root, ``df`` and ``tree`` gave 0B for a container layer holding a folder of mode
    0000 (its size read failed, and was taken for none), and left out a layer whose record
    this user may not read without a word.  They now read such a layer as its owner (as
    ``diffsize`` does), and name each record they cannot read and exit 7, as ``layers`` does."""

    from tests.conftest import as_nobody

    _load_every_module()
    if not as_nobody(_userns_for_nobody):
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    work = open_work
    (work / "base.tar").write_bytes(make_tar({"open": F(b"o")}))
    os.chmod(work / "base.tar", 0o644)
    mine, own = _nobody_home(work, "vfs")

    def command(*argv: str) -> tuple[int, str]:
        return _nobody_command(own, *argv)[:2]

    assert command("import", "base", str(work / "base.tar"))[0] == 0
    assert command("create", "ctr", "--parent", "base", "--rw")[0] == 0

    code, path = command("mount", "ctr")
    mnt = Path(path.strip())
    assert code == 0

    def fill() -> None:
        (mnt / "big").write_bytes(b"x" * 100_000)
        (mnt / "zz").mkdir()
        (mnt / "zz/f").write_bytes(b"y")
        (mnt / "zz").chmod(0)

    as_nobody(fill)
    assert command("unmount", "ctr")[0] == 0
    assert command("diffsize", "ctr") == (0, "100001\n")
    code, shown = command("--json", "df")
    assert code == 0 and json.loads(shown)["layers"]["size"] >= 100_001  # ctr's, and base's tarball
    code, drawn = command("tree")
    assert code == 0 and "ctr  97.7KiB" in drawn, drawn
    # A layer this user may not read the record of: named, and exit 7.
    r = run_cli("import", "rootl", str(work / "base.tar"), root=mine / "store", run_root=work / "rootrun",
                driver="vfs")
    assert r.returncode == 0, r.stderr
    for argv in (["df"], ["tree"], ["--json", "df"], ["--json", "tree"]):
        code, _shown = command(*argv)
        assert code == 7, argv


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as nobody")
def test_a_folder_of_mode_0000_down_a_long_path_is_read_without_root_and_named_in_its_layer():
    """A folder its owner may not search, at a path of the layer within the kernel's limit
    but not with the store's path before it: the commands that read layer trees still run
    again as root of the owner's user namespace and read it; where no such namespace may be
    made, the refusal names the layer and the path in it, never a name the store made up."""
    import contextlib
    import shutil
    import tempfile

    from graphdriver import cli as gd
    from tests.conftest import as_nobody

    _load_every_module()
    top = "/".join(f"d{i:02}" + "y" * 200 for i in range(20))  # 4,079 bytes
    work = Path(tempfile.mkdtemp(prefix="gd-closed-long-"))
    try:
        os.chmod(work, 0o755)
        parents = {top.rsplit("/", n)[0]: D() for n in range(19, 0, -1)}
        layer = make_tar({**parents, top: D(), f"{top}/locked": D(mode=0o000),
                          f"{top}/locked/f": F(b"inside")})
        (work / "layer.tar").write_bytes(layer)
        os.chmod(work / "layer.tar", 0o644)
        mine, own = _nobody_home(work, "vfs")
        assert len(str(mine / "store" / "vfs" / "base" / "fs")) + len(top) + len("/locked") > 4095

        def command(*argv: str) -> tuple[int, str, str]:
            def run() -> tuple[int, str, str]:
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = gd.main([*own, *argv])
                return code, out.getvalue(), err.getvalue()

            result = as_nobody(run)
            assert isinstance(result, tuple)
            return result

        assert command("import", "base", str(work / "layer.tar"))[0] == 0
        if as_nobody(_userns_for_nobody):
            code, out, err = command("changes", "base")
            assert (code, err) == (0, "") and f"A /{top}/locked/f\n" in out
            assert command("diffsize", "base") == (0, "6\n", "")
            assert command("create", "child", "--parent", "base")[0::2] == (0, "")
            assert command("diff", "base", "--regenerate", "-o", str(mine / "again.tar"))[0::2] == (0, "")
        _main_as_nobody([*own, "remove", "child"])
        code, err = _main_as_nobody([*own, "changes", "base"], namespaces=False)
        assert (code, err) == (7, f"graphdriver: layer base: {top}/locked: Permission denied\n")
    finally:
        shutil.rmtree(work)  # as root: the closed folders open all the same

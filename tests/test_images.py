"""Images and containers: load, save, tag, remove, containers and commits, against buildah and skopeo."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from graphdriver.errors import InvalidArgument
from graphdriver.images import reference
from graphdriver.testing import wingen
from graphdriver.testing.treeutil import D, F, L, make_tar
from tests.conftest import CACHE, IS_ROOT, ROOT, run_cli

needs_buildah = pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("skopeo") is None or not IS_ROOT,
    reason="needs root, buildah and skopeo (apt-get install buildah skopeo)",
)
TOP = "localhost/gd-test/top:1"
BASE = "localhost/gd-test/base:1"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> Any:
    out = subprocess.run(["skopeo", *args], check=True, capture_output=True).stdout
    return json.loads(out)


def gd(tmp_path: Path, driver: str, *args: str, check: bool = True,
       input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, root=tmp_path / "store", driver=driver, check=check, input=input)


# ----- images built by buildah (once, cached) ---------------------------------------------------------


def _buildah(store: Path, *args: str) -> str:
    env = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
    cmd = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), *args]
    return subprocess.run(cmd, check=True, capture_output=True, env=env, text=True).stdout.strip()


@pytest.fixture(scope="session")
def built(minbase_tar: Path) -> Path:
    """docker-archive and oci-archive of two buildah images: a Debian minbase, and one that
    deletes directories and adds a file on it."""
    if shutil.which("buildah") is None or shutil.which("skopeo") is None or not IS_ROOT:
        pytest.skip("needs root, buildah and skopeo (apt-get install buildah skopeo)")
    out = CACHE / "images-v1"
    done = out / "done"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return out
        work = out / "buildah"
        shutil.rmtree(work, ignore_errors=True)
        c = _buildah(work, "from", "scratch")
        _buildah(work, "add", c, str(minbase_tar), "/")
        _buildah(work, "commit", "-q", c, BASE)
        c2 = _buildah(work, "from", BASE)
        mnt = Path(_buildah(work, "mount", c2))
        shutil.rmtree(mnt / "usr/share/doc")
        shutil.rmtree(mnt / "var/cache/apt")
        (mnt / "srv/hello.txt").write_text("hello from the top layer\n")
        _buildah(work, "umount", c2)
        _buildah(work, "commit", "-q", c2, TOP)
        for name, stem in ((BASE, "base"), (TOP, "top")):
            _buildah(work, "push", "-q", name, f"docker-archive:{out / stem}-docker.tar:{name}")
            _buildah(work, "push", "-q", name, f"oci-archive:{out / stem}-oci.tar:{name}")
        _buildah(work, "rmi", "-a", "-f")
        shutil.rmtree(work, ignore_errors=True)
        done.touch()
    return out


@needs_buildah
@pytest.mark.slow
def test_archives_load_and_save_with_the_same_layers_and_diff_ids(tmp_path, driver_name, built):
    for kind in ("docker", "oci"):
        out = gd(tmp_path, driver_name, "image", "load", str(built / f"top-{kind}.tar"))
        assert out.stdout.decode().split() == [TOP]
    ours = json.loads(gd(tmp_path, driver_name, "image", "inspect", TOP).stdout)
    config = skopeo("inspect", "--config", f"docker-archive:{built / 'top-docker.tar'}")
    assert [x["DiffID"] for x in ours["Layers"]] == config["rootfs"]["diff_ids"]
    assert ours["Id"] == sha256(subprocess.run(
        ["skopeo", "inspect", "--raw", "--config", f"docker-archive:{built / 'top-docker.tar'}"],
        check=True, capture_output=True).stdout)
    for fmt in ("docker-archive", "oci-archive", "oci"):
        transport = fmt
        target = tmp_path / f"saved-{fmt}"
        gd(tmp_path, driver_name, "image", "save", TOP, "-o", str(target), "--format", fmt)
        source = built / ("top-docker.tar" if fmt == "docker-archive" else "top-oci.tar")
        source_transport = "docker-archive" if fmt == "docker-archive" else "oci-archive"
        theirs = skopeo("inspect", f"{source_transport}:{source}")
        mine = skopeo("inspect", f"{transport}:{target}")
        # The loaded compressed blobs were kept: the same layers and the same manifest digest.
        assert mine["Layers"] == theirs["Layers"], fmt
        assert mine["Digest"] == theirs["Digest"], fmt
        assert skopeo("inspect", "--config", f"{transport}:{target}")["rootfs"] == config["rootfs"]


@needs_buildah
@pytest.mark.slow
def test_layers_are_shared_by_chain_id_and_freed_when_unused(tmp_path, driver_name, built):
    gd(tmp_path, driver_name, "image", "load", str(built / "base-oci.tar"))
    assert len(gd(tmp_path, driver_name, "layers").stdout.split()) == 1
    out = gd(tmp_path, driver_name, "-v", "image", "load", str(built / "top-docker.tar"))
    assert b"already present" in out.stderr
    assert len(gd(tmp_path, driver_name, "layers").stdout.split()) == 2
    listing = gd(tmp_path, driver_name, "image", "ls").stdout.decode()
    assert "localhost/gd-test/base" in listing and "localhost/gd-test/top" in listing
    removed = gd(tmp_path, driver_name, "image", "rm", TOP).stdout.decode()
    assert "Deleted layer:" in removed
    assert len(gd(tmp_path, driver_name, "layers").stdout.split()) == 1  # the base image keeps its layer
    gd(tmp_path, driver_name, "image", "rm", BASE)
    assert gd(tmp_path, driver_name, "layers").stdout == b""


@needs_buildah
@pytest.mark.slow
def test_a_container_sees_the_image_commits_and_the_commit_is_a_real_image(tmp_path, driver_name, built):
    gd(tmp_path, driver_name, "image", "load", str(built / "top-oci.tar"))
    assert gd(tmp_path, driver_name, "container", "create", TOP, "web").stdout == b"web\n"
    root = Path(gd(tmp_path, driver_name, "mount", "web").stdout.decode().strip())
    try:
        assert (root / "srv/hello.txt").read_text() == "hello from the top layer\n"
        assert not (root / "usr/share/doc").exists()  # the top layer's whiteouts are honoured
        assert (root / "etc/debian_version").exists()
        assert (root / "etc/hosts").exists() and (root / "proc").is_dir()
        (root / "srv/added.txt").write_bytes(b"written in the container\n")
    finally:
        gd(tmp_path, driver_name, "unmount", "web")
    changes = gd(tmp_path, driver_name, "changes", "web").stdout.decode().split("\n")
    assert changes[:2] == ["C /srv", "A /srv/added.txt"]
    new_id = gd(tmp_path, driver_name, "container", "commit", "web", "localhost/web:1").stdout.decode()
    new_id = new_id.strip()
    assert new_id.startswith("sha256:")
    saved = tmp_path / "web.tar"
    gd(tmp_path, driver_name, "image", "save", "localhost/web:1", "-o", str(saved))
    info = skopeo("inspect", f"docker-archive:{saved}")
    assert len(info["Layers"]) == 3
    config = skopeo("inspect", "--config", f"docker-archive:{saved}")
    assert len(config["rootfs"]["diff_ids"]) == 3 and config["history"][-1]["created_by"].endswith("web")
    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        top = archive.extractfile(manifest[0]["Layers"][-1])
        assert top is not None
        with tarfile.open(fileobj=io.BytesIO(top.read())) as layer:
            names = sorted(m.name.rstrip("/") for m in layer.getmembers())
    assert names == ["srv", "srv/added.txt"]  # no init-layer file reaches the image
    # Another tool takes the commit as it is.
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{saved}", f"oci:{tmp_path / 'copied'}:web"],
                   check=True)
    assert gd(tmp_path, driver_name, "container", "ls").stdout.decode().split("\n")[1].startswith("web ")
    gd(tmp_path, driver_name, "image", "rm", TOP, check=False)  # refused: a container uses it
    gd(tmp_path, driver_name, "container", "rm", "web")
    assert b"web" not in gd(tmp_path, driver_name, "layers").stdout


# ----- hand-made layouts: no tool needed ------------------------------------------------------------------


def oci_layout(path: Path, layers: list[bytes], *, name: str = "localhost/made:1", gzipped: bool = True,
               diff_ids: list[str] | None = None, os_name: str = "linux", created: str | None = None) -> str:
    """An OCI layout at *path* of one image; returns its manifest digest."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    descs = []
    for layer in layers:
        blob = gzip.compress(layer, mtime=0) if gzipped else layer
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzipped else "")
        descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
    value: dict[str, Any] = {"architecture": "amd64", "os": os_name, "rootfs": {
        "type": "layers", "diff_ids": diff_ids or [sha256(x) for x in layers]}}
    if created is not None:
        value["created"] = created
    config = json.dumps(value).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": descs}).encode()
    digest = put(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"}}]}))
    return digest


LAYER1 = make_tar({"etc": D(), "etc/os-release": F(b"ID=made\n"), "bin": D(), "bin/sh": F(b"#!", mode=0o755)})
LAYER2 = make_tar({"srv": D(), "srv/app": F(b"app\n"), "etc/.wh.os-release": F(b"")})


def test_a_wrong_diff_id_refuses_the_image_and_leaves_nothing(tmp_path, driver_name):
    oci_layout(tmp_path / "bad", [LAYER1, LAYER2], diff_ids=[sha256(LAYER1), sha256(b"not the layer")])
    proc = gd(tmp_path, driver_name, "image", "load", str(tmp_path / "bad"), check=False)
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.decode().count("\n") == 1 and b"Traceback" not in proc.stderr
    assert gd(tmp_path, driver_name, "layers").stdout == b""
    assert gd(tmp_path, driver_name, "image", "ls", "--json").stdout.strip() == b"[]"
    assert gd(tmp_path, driver_name, "cleanup").stdout == b""


@pytest.mark.parametrize("impostor", ["created", "writable", "other parent", "other tarball"])
def test_a_layer_that_only_bears_an_images_chain_id_is_never_taken_for_its_layer(tmp_path, impostor):
    """Layer ids are the user's to choose: one named like an image layer's chain id but made
    otherwise (create, --rw, imported on another parent or from another tarball) is refused
    as that layer (exit 5, a name taken, not a corrupt layer; naming it), and neither it nor
    anything of the image is changed."""
    from graphdriver.images.oci import chain_ids

    c1, c2 = (c[7:] for c in chain_ids([sha256(LAYER1), sha256(LAYER2)]))
    (tmp_path / "l1.tar").write_bytes(LAYER1)
    (tmp_path / "l2.tar").write_bytes(LAYER2)
    gd(tmp_path, "vfs", "import", c1, str(tmp_path / "l1.tar"))
    make = {"created": ["create", c2, "--parent", c1], "writable": ["create", c2, "--parent", c1, "--rw"],
            "other parent": ["import", c2, str(tmp_path / "l2.tar")],
            "other tarball": ["import", c2, "--parent", c1, str(tmp_path / "l1.tar")]}[impostor]
    gd(tmp_path, "vfs", *make)
    before = gd(tmp_path, "vfs", "layer", c2).stdout
    oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    proc = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"), check=False)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 5 and "Traceback" not in proc.stderr.decode(), proc.stderr
    assert len(lines) == 1, lines  # off a terminal, the layers it skipped are not told
    assert lines[0].startswith(f"graphdriver: layer {c2}: bears this image's chain id but ")
    assert lines[0].endswith("; remove it or give it another id, then load again")
    assert gd(tmp_path, "vfs", "image", "ls", "--json").stdout.strip() == b"[]"
    assert gd(tmp_path, "vfs", "layer", c2).stdout == before
    assert sorted(gd(tmp_path, "vfs", "layers").stdout.split()) == sorted([c1.encode(), c2.encode()])
    # Once the impostor is gone, the image loads, sharing the true first layer.
    gd(tmp_path, "vfs", "remove", c2)
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    assert gd(tmp_path, "vfs", "check").returncode == 0


def test_a_commit_never_takes_a_layer_that_only_bears_its_chain_id(tmp_path):
    """A commit whose layer's chain id a layer made otherwise already bears (here made by
    create) is refused (exit 5, naming it and the commit to run again), never taken for the
    commit's layer; once it is gone the commit is made, and committing the same changes again
    shares the layer the first commit made."""
    from graphdriver.images.oci import chain_ids

    oci_layout(tmp_path / "in", [LAYER1], name="localhost/base:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "container", "create", "localhost/base:1", "web")
    (Path(gd(tmp_path, "vfs", "mount", "web").stdout.decode().strip()) / "new").write_bytes(b"new")
    gd(tmp_path, "vfs", "unmount", "web")
    c1, c2 = (c[7:] for c in chain_ids([sha256(LAYER1), sha256(gd(tmp_path, "vfs", "diff", "web").stdout)]))
    gd(tmp_path, "vfs", "create", c2, "--parent", c1)
    proc = gd(tmp_path, "vfs", "container", "commit", "web", "localhost/web:1", check=False)
    assert proc.returncode == 5 and proc.stdout == b"", proc.stderr
    assert proc.stderr.decode() == (
        f"graphdriver: layer {c2}: bears this image's chain id but holds no imported tarball (made by "
        "create, or its import never finished); remove it or give it another id, then container commit "
        "web again\n")
    assert b"localhost/web" not in gd(tmp_path, "vfs", "image", "ls").stdout
    gd(tmp_path, "vfs", "remove", c2)
    for name in ("localhost/web:1", "localhost/web:2"):
        gd(tmp_path, "vfs", "container", "commit", "web", name)
        shown = json.loads(gd(tmp_path, "vfs", "image", "inspect", name).stdout)
        assert [layer["Layer"] for layer in shown["Layers"]] == [c1, c2]
    gd(tmp_path, "vfs", "container", "create", "localhost/web:2", "again")
    root = Path(gd(tmp_path, "vfs", "mount", "again").stdout.decode().strip())
    assert (root / "new").read_bytes() == b"new"
    gd(tmp_path, "vfs", "unmount", "again")
    assert gd(tmp_path, "vfs", "check").returncode == 0


@pytest.mark.parametrize("link", ["usr/etc", "/usr/etc", "./usr/../usr/etc"])
def test_a_container_of_an_image_whose_etc_is_a_symlink_gets_its_init_files_there(tmp_path, link):
    """As Docker makes them: the init files go where the image's own symlinks put them,
    followed inside the image's tree (an absolute one from its top, never the host's)."""
    layer = make_tar({"usr": D(), "usr/etc": D(), "usr/etc/os-release": F(b"ID=x\n"), "etc": L(link)})
    oci_layout(tmp_path / "in", [layer])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "container", "create", "localhost/made:1", "c")
    root = Path(gd(tmp_path, "vfs", "mount", "c").stdout.decode().strip())
    try:
        assert os.readlink(root / "etc") == link
        made = ["hostname", "hosts", "mtab", "os-release", "resolv.conf"]
        assert sorted(os.listdir(root / "usr/etc")) == made
    finally:
        gd(tmp_path, "vfs", "unmount", "c")
    assert gd(tmp_path, "vfs", "changes", "c").stdout == b""


def test_an_artifact_in_a_layout_is_refused_as_a_pull_refuses_it(tmp_path):
    """A manifest whose config is no image config (a Helm chart, a signature) is no container
    image: refused (7) with nothing stored, as ``image pull`` refuses it."""
    digest = oci_layout(tmp_path / "a", [LAYER1], name="localhost/chart:1")
    blobs = tmp_path / "a/blobs/sha256"
    manifest = json.loads((blobs / digest[7:]).read_bytes())
    manifest["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    data = json.dumps(manifest).encode()
    (blobs / sha256(data)[7:]).write_bytes(data)
    index = json.loads((tmp_path / "a/index.json").read_text())
    index["manifests"][0].update(digest=sha256(data), size=len(data))
    (tmp_path / "a/index.json").write_text(json.dumps(index))
    proc = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a"), check=False)
    assert (proc.returncode, proc.stderr.count(b"\n")) == (7, 1), proc.stderr
    assert b"is not a container image" in proc.stderr
    assert gd(tmp_path, "vfs", "layers").stdout == b""
    assert gd(tmp_path, "vfs", "image", "ls", "--json").stdout.strip() == b"[]"


def test_a_tampered_blob_is_refused(tmp_path, driver_name):
    oci_layout(tmp_path / "t", [LAYER1])
    blob = next(p for p in (tmp_path / "t/blobs/sha256").iterdir() if p.read_bytes()[:2] == b"\x1f\x8b")
    data = gzip.decompress(blob.read_bytes()).replace(b"ID=made", b"ID=evil")
    blob.write_bytes(gzip.compress(data, mtime=0))
    proc = gd(tmp_path, driver_name, "image", "load", str(tmp_path / "t"), check=False)
    assert proc.returncode == 6 and gd(tmp_path, driver_name, "layers").stdout == b""


@pytest.mark.parametrize("part", ["config", "layer", "manifest"])
def test_a_descriptor_whose_size_is_not_its_blobs_is_refused(tmp_path, part):
    """The image spec: a blob must have its descriptor's size, as well as its digest."""
    layout = tmp_path / "t"
    oci_layout(layout, [LAYER1])
    index = json.loads((layout / "index.json").read_text())
    if part == "manifest":
        index["manifests"][0]["size"] += 1
    else:
        old = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
        manifest = json.loads(old.read_bytes())
        desc = manifest["config"] if part == "config" else manifest["layers"][0]
        desc["size"] -= 1
        data = json.dumps(manifest).encode()
        (layout / "blobs/sha256" / sha256(data)[7:]).write_bytes(data)
        index["manifests"][0].update(digest=sha256(data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    proc = gd(tmp_path, "vfs", "image", "load", str(layout), check=False)
    assert proc.returncode == 6 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"size" in proc.stderr
    assert gd(tmp_path, "vfs", "layers").stdout == b""


def test_save_through_a_symlink_writes_what_it_names_and_keeps_the_link(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(tmp_path / "plain.tar"))
    expected = (tmp_path / "plain.tar").read_bytes()
    (tmp_path / "so").symlink_to("/proc/self/fd/1")  # what /dev/stdout is
    proc = gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(tmp_path / "so"))
    assert proc.stdout == expected and os.readlink(tmp_path / "so") == "/proc/self/fd/1"
    (tmp_path / "link").symlink_to("plain.tar")
    (tmp_path / "plain.tar").write_bytes(b"old")
    gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(tmp_path / "link"))
    assert (tmp_path / "plain.tar").read_bytes() == expected and (tmp_path / "link").is_symlink()


def test_load_from_a_closed_standard_input_is_a_usage_error(tmp_path):
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--driver", "vfs",
           "image", "load", "-"]
    proc = subprocess.run(["sh", "-c", '"$@" <&-', "sh", *cmd], capture_output=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"standard input: is closed" in proc.stderr


def test_save_into_a_missing_folder_is_refused_in_every_format(tmp_path):
    """As a tarball's, an OCI layout's parent folder must be there: nothing is made above it.
    A path that cannot be written is a failure of the environment, exit 1 as docker save and
    skopeo copy give (the arguments are sound: not 2), and so is a folder where a tarball goes
    or a file where a layout goes."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    (tmp_path / "file").write_bytes(b"kept")
    (tmp_path / "folder").mkdir()
    for fmt in ("docker-archive", "oci-archive", "oci"):
        other = tmp_path / ("file" if fmt == "oci" else "folder")
        for target in (tmp_path / "missing" / "deeper" / "out", other):
            proc = gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(target), "--format",
                      fmt, check=False)
            assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1, (fmt, target, proc.stderr)
            assert proc.stderr.startswith(f"graphdriver: cannot write {target}: ".encode()), proc.stderr
        assert not (tmp_path / "missing").exists(), fmt
    assert (tmp_path / "file").read_bytes() == b"kept" and not any((tmp_path / "folder").iterdir())


def test_save_without_a_file_writes_the_archive_to_standard_output(tmp_path):
    """As ``docker save``: no -o (or -o -) is standard output, never a terminal (exit 2)."""
    import pty

    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    save = ("image", "save", "localhost/made:1")
    for fmt in ("docker-archive", "oci-archive"):
        gd(tmp_path, "vfs", *save, "-o", str(tmp_path / "f.tar"), "--format", fmt)
        expected = (tmp_path / "f.tar").read_bytes()
        assert gd(tmp_path, "vfs", *save, "--format", fmt).stdout == expected
        assert gd(tmp_path, "vfs", *save, "-o", "-", "--format", fmt).stdout == expected
    assert not Path("-").exists()
    proc = gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "--format", "oci", check=False)
    assert proc.returncode == 2 and proc.stdout == b""
    leader, follower = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--driver", "vfs",
               "image", "save", "localhost/made:1"]
        proc = subprocess.run(cmd, stdout=follower, stderr=subprocess.PIPE, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2 and b"terminal" in proc.stderr


def test_load_from_standard_input_refuses_a_terminal(tmp_path):
    """``image load -`` with a terminal on standard input would wait for an archive no one types:
    refused at once (exit 2), as ``image save`` refuses a terminal on standard output."""
    import pty

    leader, follower = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--run-root",
               str(tmp_path / "run"), "--driver", "vfs", "image", "load", "-"]
        proc = subprocess.run(cmd, stdin=follower, capture_output=True, check=False, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"standard input is a terminal; give an archive file or pipe one" in proc.stderr
    assert proc.stdout == b""
    # Piped in, it loads.
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/piped:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "save", "localhost/piped:1", "-o", str(tmp_path / "piped.tar"))
    other = tmp_path / "other"
    other.mkdir()
    piped = run_cli("image", "load", "-", root=other / "store", driver="vfs",
                    input=(tmp_path / "piped.tar").read_bytes(), check=True)
    assert piped.stdout == b"localhost/piped:1\n"


def test_an_oci_layout_round_trips_with_its_manifest_digest(tmp_path, driver_name):
    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    assert gd(tmp_path, driver_name, "image", "load", str(tmp_path / "in")).stdout == b"localhost/made:1\n"
    out = str(tmp_path / "out")
    gd(tmp_path, driver_name, "image", "save", "localhost/made:1", "-o", out, "--format", "oci")
    gd(tmp_path, driver_name, "image", "save", "localhost/made:1", "-o", str(tmp_path / "out.tar"))
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    for blob in (tmp_path / "in/blobs/sha256").iterdir():
        assert (tmp_path / "out/blobs/sha256" / blob.name).read_bytes() == blob.read_bytes()
    with tarfile.open(tmp_path / "out.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["localhost/made:1"]
        layers = [archive.extractfile(p).read() for p in manifest[0]["Layers"]]  # type: ignore[union-attr]
    assert layers == [LAYER1, LAYER2]  # byte for byte the loaded tarballs
    # Loading the saved docker-archive again changes nothing.
    gd(tmp_path, driver_name, "image", "load", str(tmp_path / "out.tar"))
    assert len(gd(tmp_path, driver_name, "layers").stdout.split()) == 2


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_a_save_into_a_layout_replaces_the_entry_of_the_same_tag(tmp_path):
    """index.json names an image by its tag alone (ref.name): after app:1 then base:1, oci:DIR:1
    is base, as skopeo copy leaves it, and the layout's other tags stay."""
    app = oci_layout(tmp_path / "app", [LAYER1, LAYER2], name="localhost/app:1")
    base = oci_layout(tmp_path / "base", [LAYER1], name="localhost/base:1")
    for name in ("app", "base"):
        gd(tmp_path, "vfs", "image", "load", str(tmp_path / name))
    gd(tmp_path, "vfs", "image", "tag", "localhost/app:1", "localhost/app:2")
    out = tmp_path / "out"
    for name in ("localhost/app:2", "localhost/app:1", "localhost/base:1"):
        gd(tmp_path, "vfs", "image", "save", name, "-o", str(out), "--format", "oci")
    entries = json.loads((out / "index.json").read_text())["manifests"]
    assert [(e["annotations"]["org.opencontainers.image.ref.name"], e["digest"]) for e in entries] == [
        ("2", app), ("1", base)]
    assert skopeo("inspect", f"oci:{out}:1")["Digest"] == base
    assert skopeo("inspect", f"oci:{out}:2")["Digest"] == app


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_a_save_into_a_layout_replaces_an_entry_whose_ref_name_is_the_full_name(tmp_path):
    """skopeo and buildah write ``oci:DIR:localhost/app:1`` as ref.name ``localhost/app:1`` and no
    containerd name: that entry is of the same image name, and a save of localhost/app:1 replaces it."""
    old = oci_layout(tmp_path / "old", [LAYER1], name="localhost/old:1")
    new = oci_layout(tmp_path / "new", [LAYER1, LAYER2], name="localhost/app:1")
    out = tmp_path / "out"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{tmp_path / 'old'}:1", f"oci:{out}:localhost/app:1"],
                   check=True)
    subprocess.run(["skopeo", "copy", "-q", f"oci:{tmp_path / 'old'}:1", f"oci:{out}:2"], check=True)
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "new"))
    gd(tmp_path, "vfs", "image", "save", "localhost/app:1", "-o", str(out), "--format", "oci")
    entries = json.loads((out / "index.json").read_text())["manifests"]
    assert [(e["annotations"]["org.opencontainers.image.ref.name"], e["digest"]) for e in entries] == [
        ("2", old), ("1", new)]  # the bare tag 2 stays: a tag, not a name
    assert subprocess.run(["skopeo", "inspect", f"oci:{out}:localhost/app:1"], capture_output=True).returncode
    loaded = run_cli("image", "load", str(out), root=tmp_path / "again", driver="vfs")
    assert loaded.stdout.decode().splitlines().count("localhost/app:1") == 1, loaded.stdout


_PAUSED_SAVE = """
import os, sys, time
from graphdriver.fs import outfile
from graphdriver.images import saving
if {named}:
    outfile._TMPFILE = 0  # as on a filesystem without unnamed files
write = saving._Counting.write
def pausing(self, data):
    n = write(self, data)
    if self.count >= 1 << 20:  # a megabyte into the layer's blob: stopped there until killed
        self.flush()
        os.write({fd}, b"paused")
        time.sleep(600)
    return n
saving._Counting.write = pausing
from graphdriver.cli import main
sys.exit(main({argv!r}))
"""


def _leftovers(target: Path, fmt: str, before: list[str]) -> list[str]:
    """What a save to *target* left that is no whole file of its output: in an OCI layout, any
    file but ``oci-layout``, ``index.json`` and blobs whose bytes have the digest they are named
    by; beside an archive, any new name (the archive itself too)."""
    if fmt != "oci":
        return sorted(set(os.listdir(target.parent)) - set(before))
    bad = []
    for folder, _dirs, files in os.walk(target):
        for name in files:
            path = Path(folder, name)
            rel = str(path.relative_to(target))
            if rel.startswith("blobs/sha256/") and hashlib.sha256(path.read_bytes()).hexdigest() == name:
                continue
            if rel not in ("oci-layout", "index.json"):
                bad.append(rel)
    return sorted(bad)


def _zombie(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL *proc*, and wait until it is dead but not reaped (its pid still taken)."""
    import signal

    os.kill(proc.pid, signal.SIGKILL)
    while True:
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return
        os.sched_yield()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
@pytest.mark.parametrize(("fmt", "tmpfile"), [("oci", "unnamed"), ("oci", "named"),
                                               ("oci-archive", "unnamed"), ("docker-archive", "unnamed")])
def test_a_save_killed_half_way_leaves_no_half_written_file(tmp_path, fmt, tmpfile):
    """``image save -o`` SIGKILLed in the middle of a layer's blob: an OCI layout holds whole
    blobs only (none half written under a name, ``.partial`` or other), an archive is not
    there at all; where the filesystem has no unnamed files, the killed writer's locked
    temporary file is all there is, and the save run again removes it.  That save gives a
    layout or archive skopeo reads and copies, its blobs checked against their digests."""
    from graphdriver.fs import outfile

    if tmpfile == "unnamed" and not outfile._TMPFILE:
        pytest.skip("no O_TMPFILE here")
    layer = make_tar({"big": F(os.urandom(6 << 20))})
    digest = oci_layout(tmp_path / "in", [layer])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    target = tmp_path / "out" / ("layout" if fmt == "oci" else "image.tar")
    target.parent.mkdir()
    args = ["image", "save", "localhost/made:1", "-o", str(target), "--format", fmt]
    argv = ["--root", str(tmp_path / "store"), "--run-root", str(tmp_path / "run"), "--driver", "vfs", *args]
    paused, signal_fd = os.pipe()
    script = _PAUSED_SAVE.format(named=tmpfile == "named", fd=signal_fd, argv=argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, pass_fds=(signal_fd,),
                            stderr=subprocess.PIPE)
    os.close(signal_fd)
    try:
        with os.fdopen(paused, "rb") as f:
            assert f.read(6) == b"paused", proc.communicate()[1]
        _zombie(proc)
        left = _leftovers(target, fmt, [])
        if tmpfile == "named":  # the killed writer's, locked until it died
            assert len(left) == 1 and left[0].startswith("blobs/sha256/.tmp-"), left
            assert left[0].endswith(f"-{proc.pid}"), left
        else:
            assert left == [], left
        gd(tmp_path, "vfs", *args)
    finally:
        proc.kill()
        proc.wait()
    assert _leftovers(target, fmt, ["image.tar"]) == []
    transport = {"oci": f"oci:{target}:1", "oci-archive": f"oci-archive:{target}",
                 "docker-archive": f"docker-archive:{target}"}[fmt]
    if fmt == "oci":
        assert skopeo("inspect", transport)["Digest"] == digest
    subprocess.run(["skopeo", "copy", "-q", transport, f"oci:{tmp_path / 'copied'}:1"], check=True)
    config = skopeo("inspect", "--config", f"oci:{tmp_path / 'copied'}:1")
    assert config["rootfs"]["diff_ids"] == [sha256(layer)]


def test_a_save_into_a_layout_removes_what_killed_saves_left_there(tmp_path):
    """Saved into a layout where earlier saves were killed (of other images): their partial
    files (``<digest>.partial``, as earlier versions named them) and the temporary files of
    writers now dead go; a live writer's stays, and so does what no save writes."""
    from graphdriver.fs.locking import claim

    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    out = tmp_path / "out"
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    other = "ab" * 32
    for name in (f"blobs/sha256/{other}.partial", "index.json.partial", "oci-layout.partial",
                 f"blobs/sha256/.tmp-{other}-12345", ".tmp-index.json-12345"):
        (out / name).write_bytes(b"half")
    kept = ["blobs/sha256/notes.partial", "blobs/sha256/.tmp-mine", "mine.partial",
            f"blobs/sha256/.tmp-{'cd' * 32}-{os.getpid()}"]
    for name in kept[:-1]:
        (out / name).write_bytes(b"the user's")
    live = claim(str(out / kept[-1]))  # a save under way
    try:
        gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(out), "--format", "oci")
    finally:
        os.close(live)
    assert _leftovers(out, "oci", []) == sorted(kept)


def test_an_archive_from_a_pipe_a_fifo_or_standard_input_loads(tmp_path):
    """A FIFO was opened a second time after its writer had gone, and waited forever."""
    oci_layout(tmp_path / "in", [LAYER1])
    archive = tmp_path / "in.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path / "in"), "."], check=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {archive} > {fifo}"])
    try:
        got = subprocess.run([sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"),
                              "--run-root", str(tmp_path / "run"), "--driver", "vfs", "image", "load",
                              str(fifo)], capture_output=True, timeout=60, check=False,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    finally:
        writer.wait(timeout=60)
    assert got.returncode == 0 and got.stdout == b"localhost/made:1\n", got.stderr
    gd(tmp_path, "vfs", "image", "rm", "localhost/made:1")
    got2 = run_cli("image", "load", "-", root=tmp_path / "store", driver="vfs",
                   input=gzip.compress(archive.read_bytes()))
    assert got2.returncode == 0 and got2.stdout == b"localhost/made:1\n", got2.stderr


def _piped_load(tmp_path: Path, tmpdir: Path) -> subprocess.Popen[bytes]:
    """``graphdriver image load -`` on a vfs store in *tmp_path*, fed through a pipe, with
    its temporary files in *tmpdir*."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmpdir))
    return subprocess.Popen([sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"),
                             "--run-root", str(tmp_path / "run"), "--driver", "vfs", "image", "load", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_a_load_from_a_pipe_killed_while_it_reads_leaves_no_copy_behind(tmp_path):
    """The copy of a piped archive was a named file in $TMPDIR, left there (however large) by a
    load ended with SIGTERM."""
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _piped_load(tmp_path, tmp)
    assert proc.stdin is not None
    try:
        big = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
        big.size = 1 << 30  # more than is ever written: the load reads on until it is killed
        proc.stdin.write(big.tobuf(tarfile.GNU_FORMAT) + bytes(4 << 20))
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it holds its copy open
            links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
            if any(link.startswith(str(tmp)) for link in links):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the load never made its copy")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    assert proc.returncode == -signal.SIGTERM
    assert os.listdir(tmp) == []


def test_a_load_from_a_stream_stops_at_its_end_of_archive_blocks(tmp_path):
    """``image load - < /dev/zero`` copied the stream until the disk was full: the archive ends
    at its first zero blocks (an empty archive here), as ``docker load`` reads it, and a pipe
    that stays open after them is not read on."""
    proc = _piped_load(tmp_path, tmp_path)
    assert proc.stdin is not None
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(bytes(4 << 20))  # and the pipe stays open, as /dev/zero never ends
            proc.stdin.flush()
        proc.wait(timeout=60)  # the old reader waited for more until killed here
        err = proc.stderr.read() if proc.stderr else b""
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    assert proc.returncode == 2, err
    assert b"neither a docker-archive" in err
    result = gd(tmp_path, "vfs", "image", "load", "/dev/zero", check=False)
    assert result.returncode == 2, result.stderr


def test_an_image_saved_by_its_id_is_saved_untagged(tmp_path):
    """As ``docker save <id>``: no name goes with it (the image's names may be many, and
    each would name it again wherever it is loaded); by a name, that name alone."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "tag", "localhost/made:1", "localhost/other:2")
    image_id = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/made:1").stdout)["Id"]
    for name, tags in ((image_id[7:19], None), ("localhost/other:2", ["localhost/other:2"])):
        gd(tmp_path, "vfs", "image", "save", name, "-o", str(tmp_path / "out.tar"))
        with tarfile.open(tmp_path / "out.tar") as archive:
            manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == tags
        gd(tmp_path, "vfs", "image", "save", name, "-o", str(tmp_path / "oci"), "--format", "oci")
        (entry,) = json.loads((tmp_path / "oci/index.json").read_text())["manifests"]
        assert ("annotations" in entry) == (tags is not None)
        shutil.rmtree(tmp_path / "oci")
    # Into a layout that holds it by a name already, saved by id it adds no unnamed duplicate.
    gd(tmp_path, "vfs", "image", "save", "localhost/other:2", "-o", str(tmp_path / "oci"), "--format", "oci")
    gd(tmp_path, "vfs", "image", "save", image_id, "-o", str(tmp_path / "oci"), "--format", "oci")
    (entry,) = json.loads((tmp_path / "oci/index.json").read_text())["manifests"]
    assert "annotations" in entry
    # An OCI layout is a folder: a file there cannot be written (1), as a folder for a tarball.
    proc = gd(tmp_path, "vfs", "image", "save", image_id, "-o", str(tmp_path / "out.tar"), "--format", "oci",
              check=False)
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1
    gd(tmp_path, "vfs", "image", "save", image_id, "-o", str(tmp_path / "by-id.tar"))
    loaded = run_cli("image", "load", str(tmp_path / "by-id.tar"), root=tmp_path / "elsewhere",
                     driver="vfs", check=True).stdout.decode().split()
    assert loaded == [image_id]


def test_image_rm_takes_several_names_and_goes_on_past_one_that_fails(tmp_path):
    """As ``docker rmi a b c``: each in turn; a failure is one line, the others still go."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    for tag in ("localhost/made:2", "localhost/made:3"):
        gd(tmp_path, "vfs", "image", "tag", "localhost/made:1", tag)
    proc = gd(tmp_path, "vfs", "image", "rm", "localhost/made:2", "localhost/nothing:1", "localhost/made:3",
              check=False)
    assert proc.returncode == 3
    assert proc.stdout == b"Untagged: localhost/made:2\nUntagged: localhost/made:3\n"
    assert proc.stderr.count(b"\n") == 1 and b"localhost/nothing:1" in proc.stderr
    image = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/made:1").stdout)
    assert image["Names"] == ["localhost/made:1"]
    gd(tmp_path, "vfs", "image", "tag", "localhost/made:1", "localhost/made:4")
    both = json.loads(gd(tmp_path, "vfs", "--json", "image", "rm", "localhost/made:4", "localhost/none:1",
                         "localhost/made:1", check=False).stdout)
    assert [r["name"] for r in both] == ["localhost/made:4", "localhost/none:1", "localhost/made:1"]
    assert [r.get("untagged") for r in both] == [["localhost/made:4"], None, ["localhost/made:1"]]
    assert both[0]["deleted"] is None and both[2]["deleted"] == image["Id"]
    assert both[1]["exit_code"] == 3 and "localhost/none:1" in both[1]["error"]
    assert gd(tmp_path, "vfs", "layers").stdout == b""
    assert gd(tmp_path, "vfs", "image", "rm", check=False).returncode == 2


def test_image_rm_at_the_same_time_reports_only_what_each_removed(tmp_path):
    """Two removals of two names of one image at once: each says what it removed itself
    (the report was made from reads before and after, outside the lock)."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--run-root",
           str(tmp_path / "run"), "--driver", "vfs", "image", "rm"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    for _ in range(20):
        gd(tmp_path, "vfs", "image", "tag", "localhost/made:1", "localhost/made:a")
        gd(tmp_path, "vfs", "image", "tag", "localhost/made:1", "localhost/made:b")
        procs = {tag: subprocess.Popen([*cmd, f"localhost/made:{tag}"], stdout=subprocess.PIPE, env=env)
                 for tag in "ab"}
        for tag, proc in procs.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0 and out == f"Untagged: localhost/made:{tag}\n".encode()


_HELD_AT = """
import os, sys
from graphdriver.images import loading
from graphdriver.store.layers import Store
where = {where!r}
def hold():
    os.write({ready}, b"held")
    os.read({go}, 1)
if where == "remove":  # image rm: its layers found unused, before the first goes
    remove = Store.remove
    def held_remove(self, *args, **kw):
        if where:
            globals()["where"] = ""
            hold()
        return remove(self, *args, **kw)
    Store.remove = held_remove
elif where == "record":  # image load: every layer found stored, before the record is written
    record = loading._record
    def held_record(*args, **kw):
        hold()
        return record(*args, **kw)
    loading._record = held_record
elif where == "ingest":  # a layer's import marked under way, before its files are written
    ingest = Store._ingest
    def held_ingest(self, *args, **kw):
        hold()
        return ingest(self, *args, **kw)
    Store._ingest = held_ingest
elif where == "wait":  # image load: waiting for another process's import of a layer (not held)
    present = loading._present
    def waiting(*args, **kw):
        if kw.get("wait"):
            os.write({ready}, b"held")
        return present(*args, **kw)
    loading._present = waiting
elif where == "referenced":  # cleanup: the blobs listed and what names them read, before any goes
    from graphdriver.images.records import ImageStore
    referenced = ImageStore.referenced_blobs
    def held_referenced(self):
        keep = referenced(self)
        if where:
            globals()["where"] = ""
            hold()
        return keep
    ImageStore.referenced_blobs = held_referenced
else:  # image load: the shared layers found stored, before its own is imported on them
    import_layer = Store.import_layer
    def held_import(self, *args, **kw):
        hold()
        return import_layer(self, *args, **kw)
    Store.import_layer = held_import
from graphdriver.cli import main
sys.exit(main({argv!r}))
"""


def _held(tmp_path: Path, where: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``graphdriver ARGS`` held at *where* (see ``_HELD_AT``) once it is there, and the pipe
    that lets it go on."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    argv = ["--root", str(tmp_path / "store"), "--run-root", str(tmp_path / "run"), "--driver", "vfs", *args]
    script = _HELD_AT.format(where=where, ready=ready_w, go=go_r, argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", script], pass_fds=(ready_w, go_r), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    os.close(ready_w)
    os.close(go_r)
    with os.fdopen(ready_r, "rb") as ready:
        assert ready.read(4) == b"held", proc.communicate()
    return proc, go_w


def _finish(proc: subprocess.Popen[bytes], go: int) -> subprocess.CompletedProcess[bytes]:
    os.write(go, b"g")
    os.close(go)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("load_at", ["record", "import"])
def test_a_load_sharing_layers_with_an_image_removed_meanwhile_keeps_them(tmp_path, load_at):
    """``image rm`` found its image's layers unused, then a load of an image sharing them found
    them stored and relied on them, then the removal took them: the load wrote an image whose
    layers were gone, or failed importing its own layer on a parent gone ("no such layer",
    exit 3).  A removal now refuses a layer running work relies on, and the load asks whether
    it is stored under the store lock, so the load is whole and the removal frees the rest."""
    top = make_tar({"opt": D(), "opt/a": F(b"a\n")})
    oci_layout(tmp_path / "a", [LAYER1, LAYER2, top], name="localhost/a:1")
    b_layers = [LAYER1, LAYER2] if load_at == "record" else [LAYER1, LAYER2, make_tar({"opt/b": F(b"b\n")})]
    oci_layout(tmp_path / "b", b_layers, name="localhost/b:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a"))
    a_layers = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/a:1").stdout)["Layers"]
    rm, rm_go = _held(tmp_path, "remove", "image", "rm", "localhost/a:1")
    load, load_go = _held(tmp_path, load_at, "image", "load", str(tmp_path / "b"))
    removed = _finish(rm, rm_go)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.decode().count("Deleted layer:") == 1, removed.stdout  # its own top alone
    loaded = _finish(load, load_go)
    assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, b"localhost/b:1\n", b"")
    image = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/b:1").stdout)
    assert [x["Layer"] for x in image["Layers"][:2]] == [x["Layer"] for x in a_layers[:2]]
    stored = gd(tmp_path, "vfs", "layers").stdout.decode().split()
    assert sorted(stored) == sorted(x["Layer"] for x in image["Layers"])
    assert gd(tmp_path, "vfs", "check", check=False).returncode == 0


def test_a_load_waiting_for_a_layer_a_killed_load_was_importing_imports_it_itself(tmp_path):
    """Two loads of images sharing a layer: the second waits while the first imports it.  The
    first killed then, the second waited for an hour, as long as the dead import's marker
    stood; it now sees the import's process gone, undoes what it left and imports the layer."""
    oci_layout(tmp_path / "a", [LAYER1, LAYER2], name="localhost/a:1")
    oci_layout(tmp_path / "b", [LAYER1], name="localhost/b:1")
    first, first_go = _held(tmp_path, "ingest", "image", "load", str(tmp_path / "a"))
    second, second_go = _held(tmp_path, "wait", "image", "load", str(tmp_path / "b"))
    os.close(second_go)
    first.kill()
    first.communicate()
    os.close(first_go)
    try:
        out, err = second.communicate(timeout=60)
    finally:
        second.kill()
    assert (second.returncode, out, err) == (0, b"localhost/b:1\n", b"")
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""  # nothing left for it
    layers = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/b:1").stdout)["Layers"]
    assert gd(tmp_path, "vfs", "layers").stdout.decode().split() == [layers[0]["Layer"]]
    assert gd(tmp_path, "vfs", "check").returncode == 0
    assert gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a")).stdout == b"localhost/a:1\n"


def test_a_load_of_an_image_removed_meanwhile_keeps_its_blobs(tmp_path):
    """``image rm`` of an image while a load of that very image found its layers and blobs
    stored: the removal took the blobs (no record named them any more), and the load wrote a
    record naming them, so ``image save`` failed (exit 6, "missing from the image store").
    The load now keeps again, under the store lock, what was taken meanwhile."""
    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    load, load_go = _held(tmp_path, "record", "image", "load", str(tmp_path / "in"))
    removed = gd(tmp_path, "vfs", "image", "rm", "localhost/made:1")
    assert b"Deleted: sha256:" in removed.stdout and b"Deleted layer" not in removed.stdout  # the load's
    loaded = _finish(load, load_go)
    assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, b"localhost/made:1\n", b"")
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""
    saved = gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(tmp_path / "out"),
               "--format", "oci", check=False)
    assert saved.returncode == 0, saved.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert gd(tmp_path, "vfs", "check").returncode == 0


def _waits_for_a_lock(proc: subprocess.Popen[bytes]) -> bool:
    """Whether *proc* ended (False) or waits for a lock another process holds (True)."""
    while proc.poll() is None:
        with open("/proc/locks") as f:  # "1: -> FLOCK ADVISORY WRITE PID ...": a waiter
            waiting = [line.split() for line in f if " -> " in line]
        if any(fields[5] == str(proc.pid) for fields in waiting):
            return True
        time.sleep(0.01)
    return False


def test_cleanup_never_takes_blobs_a_load_names_meanwhile(tmp_path):
    """``cleanup`` found no image work alive, listed the blobs a killed load had left and read
    that no record named them; a load of that image then found them kept and wrote its record;
    cleanup went on and removed them: ``image save --format oci`` then failed (exit 6, "missing
    from the image store").  Cleanup now does that under the store lock, where a load writes
    its record once the blobs it names are there."""
    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    killed, _ = _held(tmp_path, "record", "image", "load", str(tmp_path / "in"))
    killed.kill()
    killed.communicate()
    clean, clean_go = _held(tmp_path, "referenced", "cleanup")
    cmd = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--run-root",
           str(tmp_path / "run"), "--driver", "vfs", "image", "load", str(tmp_path / "in")]
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waited = _waits_for_a_lock(load)  # before, it wrote its record at once
    cleaned = _finish(clean, clean_go)
    assert cleaned.returncode == 0, cleaned.stderr
    out, err = load.communicate(timeout=120)
    assert (load.returncode, out, err) == (0, b"localhost/made:1\n", b"")
    saved = gd(tmp_path, "vfs", "image", "save", "localhost/made:1", "-o", str(tmp_path / "out"),
               "--format", "oci", check=False)
    assert saved.returncode == 0, saved.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert waited
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""
    assert gd(tmp_path, "vfs", "check").returncode == 0


def test_apply_refuses_an_image_layer_and_takes_a_container_layer(tmp_path):
    """More applied to a layer of an image made the image another one: its DiffIDs no longer
    matched, ``image save`` wrote an archive skopeo refuses, and ``check`` no longer had a
    digest to see it by. A container's writable layer takes it, as through its mount."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    info = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/made:1").stdout)
    top = info["Layers"][-1]["Layer"]
    extra = make_tar({"evil": F(b"x")})
    proc = gd(tmp_path, "vfs", "apply", top, "-", check=False, input=extra)
    assert proc.returncode == 5, proc.stderr
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "is used by image localhost/made:1" in err
    assert json.loads(gd(tmp_path, "vfs", "layer", top).stdout).get("diff_digest")
    assert gd(tmp_path, "vfs", "check", top).stdout.decode().strip().endswith("ok")
    gd(tmp_path, "vfs", "container", "create", "localhost/made:1", "ctr")
    gd(tmp_path, "vfs", "apply", "ctr", "-", input=extra)
    assert "A /evil" in gd(tmp_path, "vfs", "changes", "ctr").stdout.decode()


def test_container_rm_takes_several_names(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    for name in ("c1", "c2", "c3"):
        gd(tmp_path, "vfs", "container", "create", "localhost/made:1", name)
    gd(tmp_path, "vfs", "mount", "c2")
    proc = gd(tmp_path, "vfs", "container", "rm", "c1", "c2", "nothing", "c3", check=False)
    assert proc.returncode == 5  # c2 is mounted: the first failure
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 2 and "c2" in lines[0] and "nothing" in lines[1]
    listed = gd(tmp_path, "vfs", "--json", "container", "ls").stdout
    assert [c["name"] for c in json.loads(listed)] == ["c2"]
    gd(tmp_path, "vfs", "unmount", "c2")
    gd(tmp_path, "vfs", "container", "rm", "c2")
    assert gd(tmp_path, "vfs", "container", "rm", check=False).returncode == 2


@pytest.mark.parametrize("driver", ["vfs", "overlay"])
@pytest.mark.parametrize("hold", ["mount", "mount-init", "child", "child-of-init"])
def test_a_refused_container_rm_leaves_the_container_whole(tmp_path, driver, hold):
    """A ``container rm`` refused (exit 5) marked the container as being removed, so the next
    ``cleanup`` or ``prune`` deleted it with its data; one refused on its init layer had deleted
    the writable layer first.  Both layers are asked first: a refusal leaves it whole, as
    ``docker rm`` and ``podman rm`` leave it."""
    if driver == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, driver, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, driver, "container", "create", "localhost/made:1", "k")
    mnt = Path(gd(tmp_path, driver, "mount", "k").stdout.decode().strip())
    (mnt / "data").write_bytes(b"important\n")
    gd(tmp_path, driver, "unmount", "k")
    undo = {"mount": ("unmount", "k"), "mount-init": ("unmount", "k-init"),
            "child": ("remove", "kid"), "child-of-init": ("remove", "kid")}[hold]
    if hold.startswith("mount"):
        gd(tmp_path, driver, "mount", undo[1])
    else:
        gd(tmp_path, driver, "create", "kid", "--parent", "k" if hold == "child" else "k-init")
    proc = gd(tmp_path, driver, "container", "rm", "k", check=False)
    assert proc.returncode == 5 and proc.stderr.count(b"\n") == 1, proc.stderr
    for repair in ("cleanup", "prune"):
        gd(tmp_path, driver, repair)
    listed = json.loads(gd(tmp_path, driver, "--json", "container", "ls").stdout)
    assert [(c["name"], c.get("removing")) for c in listed] == [("k", None)]
    assert "A /data" in gd(tmp_path, driver, "changes", "k").stdout.decode()
    gd(tmp_path, driver, *undo)
    gd(tmp_path, driver, "container", "rm", "k")
    assert gd(tmp_path, driver, "container", "ls").stdout.count(b"\n") <= 1  # the heading alone
    assert not {"k", "k-init"} & set(gd(tmp_path, driver, "layers").stdout.decode().split())


def test_container_rm_removes_a_container_whose_record_is_corrupt(tmp_path):
    """A container whose record cannot be read was listed as bad by ``container ls``, yet
    ``container rm`` said there was no such container and ``remove`` that its record held the
    layers: nothing could remove it.  Named, it goes with its two layers (as ``remove ID`` takes
    a layer whose record is corrupt); refused while a layer is mounted, it stays as it was."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    for name in ("ct", "other"):
        gd(tmp_path, "vfs", "container", "create", "localhost/made:1", name)
    record = tmp_path / "store" / "containers" / "ct.json"
    record.write_text("{bad")
    gd(tmp_path, "vfs", "mount", "ct-init")
    proc = gd(tmp_path, "vfs", "container", "rm", "ct", check=False)
    assert proc.returncode == 5 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert record.read_text() == "{bad"
    assert {"ct", "ct-init"} <= set(gd(tmp_path, "vfs", "layers").stdout.decode().split())
    gd(tmp_path, "vfs", "unmount", "ct-init")
    assert gd(tmp_path, "vfs", "container", "rm", "ct").returncode == 0
    assert not record.exists()
    layers = set(gd(tmp_path, "vfs", "layers").stdout.decode().split())
    assert not {"ct", "ct-init"} & layers and {"other", "other-init"} <= layers
    listed = gd(tmp_path, "vfs", "container", "ls")
    assert listed.stderr == b"" and b"other" in listed.stdout and b"ct " not in listed.stdout
    gd(tmp_path, "vfs", "container", "create", "localhost/made:1", "ct")  # the name is free again
    assert gd(tmp_path, "vfs", "container", "rm", "nothing", check=False).returncode == 3


def test_a_container_name_is_at_most_123_characters_and_a_longer_one_is_told_so(tmp_path):
    """Its init layer NAME-init is a layer id (at most 128): a longer name is refused as itself,
    not as an invalid NAME-init, and the help says the limit."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    longest = "c" * 123
    made = gd(tmp_path, "vfs", "container", "create", "localhost/made:1", longest)
    assert made.stdout == f"{longest}\n".encode()
    layers = gd(tmp_path, "vfs", "layers").stdout
    for name in ("d" * 124, "d" * 128):
        proc = gd(tmp_path, "vfs", "container", "create", "localhost/made:1", name, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        err = proc.stderr.decode()
        assert err.startswith(f"graphdriver: invalid container name '{name}': ") and "at most 123" in err, err
        assert f"'{name}-init'" not in err
    assert gd(tmp_path, "vfs", "layers").stdout == layers  # nothing made
    assert "at most 123 characters" in gd(tmp_path, "vfs", "container", "create", "--help").stdout.decode()


def test_a_container_name_of_64_hex_digits_is_refused_as_an_image_layers_id(tmp_path):
    """Image layers are stored under the hex of their chain ids: a container so named would
    stand in the way of the image that has that layer, so the name is a usage error, as an
    image name of 64 hex digits is; 64 other characters are a name."""
    from graphdriver.images.oci import chain_ids

    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    layers = gd(tmp_path, "vfs", "layers").stdout
    for name in (chain_ids([sha256(LAYER2)])[0][7:], "0" * 64):
        proc = gd(tmp_path, "vfs", "container", "create", "localhost/made:1", name, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert proc.stderr.decode().startswith(f"graphdriver: invalid container name '{name}': ")
        assert "64 hex digits are an image layer's id" in proc.stderr.decode()
    assert gd(tmp_path, "vfs", "layers").stdout == layers  # nothing made
    for name in ("A" * 64, "g" * 64, "a" * 63):
        gd(tmp_path, "vfs", "container", "create", "localhost/made:1", name)
    assert "64 hex" in gd(tmp_path, "vfs", "container", "create", "--help").stdout.decode()


def test_container_ls_shows_the_image_by_the_name_it_was_made_from(tmp_path):
    """As ``docker ps``: the name given to ``container create`` (while the image has it), not
    whichever of the image's names sorts first."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/web:2")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "tag", "localhost/web:2", "localhost/web:1")
    gd(tmp_path, "vfs", "container", "create", "localhost/web:2", "by-name")
    image_id = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/web:2").stdout)["Id"]
    gd(tmp_path, "vfs", "container", "create", image_id, "by-id")

    def shown() -> dict[str, str]:
        lines = gd(tmp_path, "vfs", "container", "ls").stdout.decode().splitlines()[1:]
        return {line.split()[0]: line.split()[1] for line in lines}

    # Made from its id: the short id, as docker ps shows it, not whichever name sorts first.
    assert shown() == {"by-name": "localhost/web:2", "by-id": image_id[7:19]}
    gd(tmp_path, "vfs", "image", "rm", "localhost/web:2")  # the name goes; the image stays
    assert shown() == {"by-name": image_id[7:19], "by-id": image_id[7:19]}


def test_container_ls_shows_the_short_id_once_the_name_it_was_made_from_names_another_image(tmp_path):
    """As ``docker ps``: the name a container was made from is shown only while it still
    resolves to the container's image; once a load or ``image tag`` moved it to another
    image, the image's short id is shown (not the name, nor another name the image has), in
    the table and as ``image_name`` in JSON, and the name again once it comes back."""
    oci_layout(tmp_path / "old", [LAYER1], name="localhost/web:1")
    oci_layout(tmp_path / "new", [LAYER1, LAYER2], name="localhost/web:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "old"))
    old = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/web:1").stdout)["Id"]
    gd(tmp_path, "vfs", "image", "tag", "localhost/web:1", "localhost/other:1")
    gd(tmp_path, "vfs", "container", "create", "localhost/web:1", "c")

    def shown() -> tuple[str, dict[str, Any]]:
        line = gd(tmp_path, "vfs", "container", "ls").stdout.decode().splitlines()[1]
        [listed] = json.loads(gd(tmp_path, "vfs", "--json", "container", "ls").stdout)
        return line.split()[1], listed

    row, listed = shown()
    assert row == listed["image_name"] == "localhost/web:1" and listed["image"] == old
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "new"))  # the name moves to another image
    new = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/web:1").stdout)["Id"]
    row, listed = shown()
    assert row == listed["image_name"] == old[7:19] and listed["image"] == old
    gd(tmp_path, "vfs", "image", "tag", "localhost/other:1", "localhost/web:1")  # back again
    row, listed = shown()
    assert row == listed["image_name"] == "localhost/web:1"
    gd(tmp_path, "vfs", "image", "tag", new, "localhost/web:1")  # moved by image tag
    row, listed = shown()
    assert row == listed["image_name"] == old[7:19]


def test_names_resolve_as_docker_resolves_them(tmp_path):
    cases = {
        "deb:2": "docker.io/library/deb:2",
        "deb": "docker.io/library/deb:latest",
        "localhost/deb:2": "localhost/deb:2",
        "team/app": "docker.io/team/app:latest",
        "registry.example:5000/team/app:v1": "registry.example:5000/team/app:v1",
        "quay.io/a/b@sha256:" + "a" * 64: "quay.io/a/b@sha256:" + "a" * 64,
    }
    cases.update({  # Docker's grammar, as docker tag and buildah tag take it
        "index.docker.io/zz:1": "docker.io/library/zz:1",
        "MyReg.Example.com:5000/app:1": "MyReg.Example.com:5000/app:1",
        "a__b/c--d/e.f_g": "docker.io/a__b/c--d/e.f_g:latest",
        "[::1]:5000/x": "[::1]:5000/x:latest",
    })
    for name, full in cases.items():
        assert str(reference.parse(name)) == full
    for bad in ("Deb", "deb:", "a//b", "deb@sha256:xyz", "-x", "deb:-1", "localhost/a..b:1",
                "localhost/a___b:1", "localhost/a_-b:1", "localhost:abc/x:1", "my_host.com/x:1",
                "localhost:5000:1/x", "-reg.example/x", "localhost/" + "a" * 250):
        with pytest.raises(InvalidArgument):
            reference.parse(bad)
    oci_layout(tmp_path / "in", [LAYER1], name="docker.io/library/deb:2")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    inspected = json.loads(gd(tmp_path, "vfs", "image", "inspect", "deb:2").stdout)
    assert inspected["Names"] == ["docker.io/library/deb:2"]
    by_id = json.loads(gd(tmp_path, "vfs", "image", "inspect", inspected["Id"][7:19]).stdout)
    assert by_id["Id"] == inspected["Id"]
    gd(tmp_path, "vfs", "image", "tag", "deb:2", "localhost/deb:latest")
    retagged = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/deb").stdout)
    assert retagged["Id"] == inspected["Id"]
    assert gd(tmp_path, "vfs", "image", "rm", "deb:2").stdout == b"Untagged: docker.io/library/deb:2\n"
    assert gd(tmp_path, "vfs", "image", "inspect", "deb:2", check=False).returncode == 3
    assert gd(tmp_path, "vfs", "image", "ls").stdout.decode().count("localhost/deb") == 1


def test_a_load_killed_half_way_is_undone_by_cleanup(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import graphdriver
from graphdriver.store.layers import Store
real = Store.import_layer
def dying(self, *args, **kw):
    record = real(self, *args, **kw)
    os._exit(9)  # killed after the first layer is stored, before the image is
Store.import_layer = dying
from graphdriver import images
store = graphdriver.open_store({str(tmp_path / 'store')!r}, run_root={str(tmp_path / 'run')!r}, driver="vfs")
images.load(store, {str(tmp_path / 'in')!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == 9
    assert len(gd(tmp_path, "vfs", "layers").stdout.split()) == 1  # the first layer is there
    done = gd(tmp_path, "vfs", "cleanup").stdout.decode()
    assert "left by an interrupted load" in done
    assert gd(tmp_path, "vfs", "layers").stdout == b""
    assert gd(tmp_path, "vfs", "image", "ls", "--json").stdout.strip() == b"[]"
    assert not any((tmp_path / "store/images/blobs/sha256").iterdir())


@pytest.mark.parametrize("after", ["init", "writable"])
def test_a_container_create_killed_half_way_can_be_run_again(tmp_path, after):
    """A ``container create`` killed after it made a layer left that layer in the way: run
    again, it said ``a layer t2-init exists`` (exit 4) until ``cleanup`` was run by hand, while
    ``container rm`` said there was no such container.  Run again, it now undoes what the dead
    one left, as a load run again after its kill finds its way."""
    oci_layout(tmp_path / "in", [LAYER1])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    kill_at = "t2-init" if after == "init" else "t2"
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import graphdriver
from graphdriver.images import container_layers
from graphdriver.store.layers import Store
real_init, real_create = container_layers._make_init, Store.create
def init_then_die(*args):
    real_init(*args)
    if {after!r} == "init":
        os._exit(9)  # killed right after the init layer is made
def create_then_die(self, layer_id, *args, **kw):
    record = real_create(self, layer_id, *args, **kw)
    if layer_id == "t2":
        os._exit(9)  # killed right after the writable layer is made, before the record
    return record
container_layers._make_init, Store.create = init_then_die, create_then_die
store = graphdriver.open_store({str(tmp_path / 'store')!r}, run_root={str(tmp_path / 'run')!r}, driver="vfs")
container_layers.create(store, "localhost/made:1", "t2")
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == 9
    assert kill_at in gd(tmp_path, "vfs", "layers").stdout.decode().split()
    again = gd(tmp_path, "vfs", "container", "create", "localhost/made:1", "t2", check=False)
    assert (again.returncode, again.stdout, again.stderr) == (0, b"t2\n", b"")
    listed = json.loads(gd(tmp_path, "vfs", "--json", "container", "ls").stdout)
    assert [c["name"] for c in listed] == ["t2"]
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""  # nothing left for it
    gd(tmp_path, "vfs", "container", "rm", "t2")
    assert len(gd(tmp_path, "vfs", "layers").stdout.split()) == 1  # the image's layer alone


def test_an_image_of_the_other_system_is_refused_and_leaves_nothing(tmp_path):
    """As Docker refuses an image whose os is not its own: Windows layers go to windowsfilter
    alone, Linux ones never to it (exit 7, one line, no layer made)."""
    oci_layout(tmp_path / "win", [wingen.layer_tar(wingen.base_layer())], name="localhost/win:1",
               os_name="windows")
    oci_layout(tmp_path / "lin", [LAYER1])
    cases = (("vfs", "win", b"is a windows image"), ("windowsfilter", "lin", b"is a linux image"))
    for driver, layout, says in cases:
        proc = gd(tmp_path, driver, "image", "load", str(tmp_path / layout), check=False)
        assert proc.returncode == 7 and proc.stderr.count(b"\n") == 1 and says in proc.stderr, proc.stderr
        assert gd(tmp_path, driver, "layers").stdout == b""
        shutil.rmtree(tmp_path / "store", ignore_errors=True)  # a refused load may make none


def test_image_load_help_lists_the_exit_codes_a_load_gives(tmp_path):
    """The help's exit codes are those a load gives: 7 for an image of the other system too,
    5 for a layer in the way of one of the image's."""
    oci_layout(tmp_path / "win", [wingen.layer_tar(wingen.base_layer())], name="localhost/win:1",
               os_name="windows")
    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../outside"))
    oci_layout(tmp_path / "escaping", [escaping.getvalue()])
    (tmp_path / "no-tar").write_bytes(b"not a tarball")
    oci_layout(tmp_path / "clash", [LAYER2])
    from graphdriver.images.oci import chain_ids

    gd(tmp_path, "vfs", "create", chain_ids([sha256(LAYER2)])[0][7:], "--rw")  # a layer with its id
    cases = {1: ["escaping"], 2: ["escaping", "--platform", "bogus"], 3: ["missing"], 5: ["clash"],
             6: ["no-tar"], 7: ["win"]}
    for code, (source, *rest) in cases.items():
        proc = gd(tmp_path, "vfs", "image", "load", str(tmp_path / source), *rest, check=False)
        assert proc.returncode == code and proc.stderr.count(b"\n") == 1, (code, proc.stderr)
    text = gd(tmp_path, "vfs", "image", "load", "--help").stdout.decode()
    listed = text.split("\nExit codes:\n")[1].split("\n\n")[0].splitlines()
    codes = [line for line in listed if line[:3].strip()]  # not a wrapped line's continuation
    assert [int(line.split()[0]) for line in codes] == [0, *cases], text


def test_an_index_gives_a_windowsfilter_store_its_windows_image_unasked(tmp_path):
    """Without --platform an index gives the store's system: windows for windowsfilter."""
    import platform as host

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(host.machine(), host.machine())
    base = wingen.layer_tar(wingen.base_layer())
    multi_platform_layout(tmp_path / "multi", {f"linux/{arch}": ([LAYER1], "linux"),
                                               f"windows/{arch}": ([base], "windows")}, "localhost/multi:1")
    gd(tmp_path, "windowsfilter", "image", "load", str(tmp_path / "multi"))
    inspected = json.loads(gd(tmp_path, "windowsfilter", "image", "inspect", "localhost/multi:1").stdout)
    assert inspected["Platform"] == f"windows/{arch}"
    linux = tmp_path / "linux"
    other = run_cli("image", "load", str(tmp_path / "multi"), root=linux, driver="vfs", check=True)
    assert other.stdout == b"localhost/multi:1\n"
    inspected = json.loads(run_cli("image", "inspect", "localhost/multi:1", root=linux, driver="vfs",
                                   check=True).stdout)
    assert inspected["Platform"] == f"linux/{arch}"


def test_a_windows_image_loads_into_windowsfilter_and_saves_with_the_same_digests(tmp_path):
    base = wingen.layer_tar(wingen.base_layer())
    child = wingen.layer_tar(wingen.child_layer())
    digest = oci_layout(tmp_path / "in", [base, child], name="localhost/win:1", os_name="windows")
    assert gd(tmp_path, "windowsfilter", "image", "load", str(tmp_path / "in")).stdout == b"localhost/win:1\n"
    gd(tmp_path, "windowsfilter", "image", "save", "localhost/win:1", "-o", str(tmp_path / "out"),
       "--format", "oci")
    assert json.loads((tmp_path / "out/index.json").read_text())["manifests"][0]["digest"] == digest
    gd(tmp_path, "windowsfilter", "image", "save", "localhost/win:1", "-o", str(tmp_path / "out.tar"))
    with tarfile.open(tmp_path / "out.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = [archive.extractfile(p).read() for p in manifest[0]["Layers"]]  # type: ignore[union-attr]
    assert layers == [base, child]
    inspected = json.loads(gd(tmp_path, "windowsfilter", "image", "inspect", "localhost/win:1").stdout)
    assert inspected["Platform"] == "windows/amd64"


def test_tree_df_and_prune(tmp_path, driver_name):
    oci_layout(tmp_path / "a", [LAYER1, LAYER2], name="localhost/a:1")
    oci_layout(tmp_path / "b", [LAYER1], name="localhost/b:1")
    gd(tmp_path, driver_name, "image", "load", str(tmp_path / "a"))
    gd(tmp_path, driver_name, "image", "load", str(tmp_path / "b"))
    gd(tmp_path, driver_name, "create", "mine")
    lines = gd(tmp_path, driver_name, "tree").stdout.decode().splitlines()
    base = hashlib.sha256(LAYER1).hexdigest()[:12]
    assert lines[0].startswith(base) and "shared" in lines[0] and "image localhost/b:1" in lines[0]
    assert lines[1].startswith("└── ") and "image localhost/a:1" in lines[1]
    assert any(line.startswith("mine") for line in lines)
    usage = json.loads(gd(tmp_path, driver_name, "df", "--json").stdout)
    assert usage["images"]["total"] == 2 and usage["layers"]["total"] == 1  # "mine"
    assert usage["prune"] == {"images": [], "layers": []}
    # The name a:1 moves to b: image a has no name left, nothing uses it: prune frees it and its own layer.
    gd(tmp_path, driver_name, "image", "tag", "localhost/b:1", "localhost/a:1")
    plan = json.loads(gd(tmp_path, driver_name, "df", "--json").stdout)["prune"]
    assert len(plan["images"]) == 1 and len(plan["layers"]) == 1
    # Mounted, the layer is not what prune would free (prune keeps a mounted layer).
    gd(tmp_path, driver_name, "mount", plan["layers"][0])
    mounted = json.loads(gd(tmp_path, driver_name, "df", "--json").stdout)
    assert mounted["prune"]["layers"] == [] and mounted["layers"]["reclaimable"] == 0
    gd(tmp_path, driver_name, "unmount", plan["layers"][0])
    done = gd(tmp_path, driver_name, "prune").stdout.decode()
    assert "deleted image" in done and "deleted layer" in done
    remaining = gd(tmp_path, driver_name, "layers").stdout.decode().split()
    assert sorted(remaining) == sorted([hashlib.sha256(LAYER1).hexdigest(), "mine"])
    # Layers of the layer commands go only when asked.
    assert "deleted layer mine" in gd(tmp_path, driver_name, "prune", "--layers").stdout.decode()
    assert gd(tmp_path, driver_name, "layers").stdout.decode().split() == [hashlib.sha256(LAYER1).hexdigest()]


def test_tree_df_and_prune_take_a_chain_deeper_than_recursion_goes(tmp_path):
    """No walk of the layer graph recurses: a chain deeper than the recursion limit (here
    lowered, as a chain of thousands would meet the default) is drawn, counted and pruned."""
    import graphdriver
    from graphdriver import jsonio
    from graphdriver.images import overview

    depth = 300
    store = graphdriver.open_store(str(tmp_path / "store"), run_root=str(tmp_path / "run"), driver="vfs")
    parent = None
    for i in range(depth):
        store.create(f"l{i}", parent)
        parent = f"l{i}"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(__import__("inspect").stack()) + 120)
    try:
        lines = overview.tree(store)
        text = jsonio.dumps(overview.tree_nodes(store))
        usage = overview.df(store)
        plan = overview.prune_plan(store, layers=True)
    finally:
        sys.setrecursionlimit(limit)
    assert len(lines) == depth and lines[-1].strip().startswith(f"└── l{depth - 1} ")
    assert text.startswith('[{"id": "l0", ') and text.count('"id": ') == depth
    assert usage["layers"]["total"] == depth
    assert plan["layers"] == [f"l{i}" for i in reversed(range(depth))]  # children first
    assert store.driver.mount_count(f"l{depth - 1}") == 0


def test_prune_layers_removes_every_unused_child_beside_a_kept_one(tmp_path):
    gd(tmp_path, "vfs", "create", "r")
    for kid in ("a", "b", "c"):
        gd(tmp_path, "vfs", "create", kid, "--parent", "r")
    gd(tmp_path, "vfs", "mount", "a")  # kept: mounted, and so is its parent
    try:
        removed = gd(tmp_path, "vfs", "prune", "--layers").stdout.decode().splitlines()
        assert sorted(removed) == ["deleted layer b", "deleted layer c"]
        assert gd(tmp_path, "vfs", "layers").stdout.split() == [b"a", b"r"]
    finally:
        gd(tmp_path, "vfs", "unmount", "a")


def test_prune_and_df_leave_a_read_only_stores_layers_out(tmp_path):
    """An additional store's layers are listed, never what prune frees (it could not)."""
    shared = tmp_path / "shared"
    run_cli("create", "theirs", root=shared, driver="vfs", check=True)
    ro = ("--additional-store", str(shared))
    run_cli(*ro, "create", "mine", "--parent", "theirs", root=tmp_path / "store", driver="vfs", check=True)
    plan = json.loads(run_cli(*ro, "df", "--json", root=tmp_path / "store", check=True).stdout)["prune"]
    assert plan == {"images": [], "layers": []}
    done = run_cli(*ro, "prune", "--layers", root=tmp_path / "store", check=True).stdout.decode()
    assert done == "deleted layer mine\n"
    assert run_cli(*ro, "layers", root=tmp_path / "store", check=True).stdout == b"theirs\n"


def test_image_and_container_commands_print_json_with_json(tmp_path):
    oci_layout(tmp_path / "a", [LAYER1, LAYER2], name="localhost/a:1")

    def js(*args: str) -> Any:
        return json.loads(gd(tmp_path, "vfs", "--json", *args).stdout)

    [loaded] = js("image", "load", str(tmp_path / "a"))  # a list, however many images
    assert loaded["names"] == ["localhost/a:1"]
    created = js("container", "create", "localhost/a:1", "web")
    assert created["name"] == "web" and created["image"] == loaded["id"]
    committed = js("container", "commit", "web", "localhost/web:1")
    assert committed["names"] == ["localhost/web:1"] and len(committed["layers"]) == 3
    [base] = js("tree")
    assert base["id"] == hashlib.sha256(LAYER1).hexdigest() and base["shared"] is True
    assert base["children"][0]["images"] == ["localhost/a:1"] and base["size"] > 0
    gd(tmp_path, "vfs", "image", "tag", "localhost/web:1", "localhost/web:2")
    assert js("image", "rm", "localhost/web:2") == {"untagged": ["localhost/web:2"], "deleted": None,
                                                    "deleted_layers": []}
    gd(tmp_path, "vfs", "container", "rm", "web")
    removed = js("image", "rm", "localhost/web:1")
    assert removed["untagged"] == ["localhost/web:1"] and removed["deleted"] == committed["id"]
    assert len(removed["deleted_layers"]) == 1
    # plain output is unchanged
    assert gd(tmp_path, "vfs", "container", "create", "localhost/a:1", "c").stdout == b"c\n"
    assert gd(tmp_path, "vfs", "tree").stdout.decode().splitlines()[0].startswith(base["id"][:12])


def multi_platform_layout(path: Path, images: dict[str, tuple[list[bytes], str]], name: str) -> None:
    """An OCI layout at *path* whose index names an index of one image per ``os/arch[/variant]``."""
    parts = {}
    for platform, (layers, os_name) in images.items():
        parts[platform] = oci_layout(path.parent / f"part-{platform.replace('/', '-')}", layers, name="x",
                                     os_name=os_name)
    first = path.parent / f"part-{next(iter(images)).replace('/', '-')}"
    shutil.copytree(first, path)
    for platform in images:
        for blob in (path.parent / f"part-{platform.replace('/', '-')}" / "blobs/sha256").iterdir():
            shutil.copy(blob, path / "blobs/sha256" / blob.name)
    manifests = []
    for platform, digest in parts.items():
        os_name, arch, *variant = platform.split("/")
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                          "size": (path / "blobs/sha256" / digest[7:]).stat().st_size,
                          "platform": {"os": os_name, "architecture": arch,
                                       **({"variant": variant[0]} if variant else {})}})
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": manifests}).encode()
    digest = sha256(nested)
    (path / "blobs/sha256" / digest[7:]).write_bytes(nested)
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(nested),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"}}]}))


def test_a_multi_platform_index_gives_the_platform_asked_for(tmp_path):
    """An OCI layout whose index names an index of two platforms: --platform picks one."""
    layout = tmp_path / "multi"
    multi_platform_layout(layout, {"linux/amd64": ([LAYER1], "linux"), "linux/arm64": ([LAYER2], "linux")},
                          "localhost/multi:1")
    gd(tmp_path, "vfs", "image", "load", str(layout), "--platform", "linux/arm64")
    inspected = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/multi:1").stdout)
    assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(LAYER2)]
    missing = gd(tmp_path, "vfs", "image", "load", str(layout), "--platform", "windows/amd64", check=False)
    assert missing.returncode == 3 and b"linux/amd64, linux/arm64" in missing.stderr


def platform_layers(platforms: list[str]) -> dict[str, tuple[list[bytes], str]]:
    """For :func:`multi_platform_layout`: one image per platform, its one layer a file naming it."""
    return {p: ([make_tar({"platform": F(p.encode())})], p.split("/")[0]) for p in platforms}


def test_an_architecture_asked_for_without_a_variant_prefers_its_default_variant(tmp_path):
    """As containerd and skopeo: linux/arm is arm/v7 (an entry without a variant counts as
    v7), not the first arm entry of the index; arm64 is v8; a variant named is as before."""
    from graphdriver.images.sources import host_platform

    here = host_platform()
    platforms = ["linux/arm/v6", "linux/arm/v7", "linux/arm64/v8", here]
    multi_platform_layout(tmp_path / "a/multi", platform_layers(platforms), "localhost/multi:1")
    layers = platform_layers(["linux/arm/v6", "linux/arm"])  # arm/v6 first, then arm with no variant
    multi_platform_layout(tmp_path / "b/bare", layers, "localhost/multi:1")

    def loaded(layout: str, *platform: str) -> str:
        root = tmp_path / f"{layout.replace('/', '-')}-{'-'.join(platform).replace('/', '-')}"
        root.mkdir()
        gd(root, "vfs", "image", "load", str(tmp_path / layout), *platform)
        inspected = json.loads(gd(root, "vfs", "image", "inspect", "localhost/multi:1").stdout)
        return inspected["Layers"][0]["DiffID"]

    def layer_of(platform: str) -> str:
        return sha256(make_tar({"platform": F(platform.encode())}))

    for asked, taken in [("linux/arm", "linux/arm/v7"), ("linux/arm/v7", "linux/arm/v7"),
                         ("linux/arm64", "linux/arm64/v8"), ("linux/arm64/v8", "linux/arm64/v8")]:
        assert loaded("a/multi", "--platform", asked) == layer_of(taken), asked
    assert loaded("a/multi") == layer_of(here)
    assert loaded("b/bare", "--platform", "linux/arm") == layer_of("linux/arm")
    missing = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a/multi"), "--platform", "linux/arm/v5",
                 check=False)
    assert missing.returncode == 3 and missing.stderr.count(b"\n") == 1, missing.stderr


def test_a_compressed_archive_loads_and_a_blob_linked_outside_is_refused(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/z:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "save", "localhost/z:1", "-o", str(tmp_path / "z.tar"))
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress((tmp_path / "z.tar").read_bytes()))
    other = tmp_path / "other"
    other.mkdir()
    assert gd(other, "vfs", "image", "load", str(tmp_path / "z.tar.gz")).stdout == b"localhost/z:1\n"
    # A layout whose blob is a symlink to a file outside: read, found not to match its digest, refused.
    blob = next(p for p in (tmp_path / "in/blobs/sha256").iterdir() if p.read_bytes()[:2] == b"\x1f\x8b")
    blob.unlink()
    blob.symlink_to("/etc/hostname")
    third = tmp_path / "third"
    third.mkdir()
    refused = gd(third, "vfs", "image", "load", str(tmp_path / "in"), check=False)
    assert refused.returncode == 6 and gd(third, "vfs", "layers").stdout == b""


def test_names_come_before_ids_and_a_bare_tag_names_nothing(tmp_path):
    oci_layout(tmp_path / "a", [LAYER1], name="docker.io/library/cafe:latest")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a"))
    gd(tmp_path, "vfs", "image", "tag", "cafe", "localhost/other:1")
    # "cafe" is the name cafe:latest, not an id prefix: only that name goes.
    assert gd(tmp_path, "vfs", "image", "rm", "cafe").stdout == b"Untagged: docker.io/library/cafe:latest\n"
    assert json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/other:1").stdout)["Names"] == [
        "localhost/other:1"]
    # A layout whose only name is a bare tag ("latest", as skopeo oci:dir:latest writes) loads unnamed.
    layout = tmp_path / "bare"
    oci_layout(layout, [LAYER2], name="x")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (layout / "index.json").write_text(json.dumps(index))
    out = gd(tmp_path, "vfs", "image", "load", str(layout)).stdout.decode().strip()
    assert out.startswith("sha256:")
    assert "docker.io/library/latest" not in gd(tmp_path, "vfs", "image", "ls").stdout.decode()
    # One named "deb:2" (buildah commit ... oci-archive:deb.tar:deb:2) is that name, as Docker reads it.
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "deb:2"}
    (layout / "index.json").write_text(json.dumps(index))
    out = gd(tmp_path, "vfs", "image", "load", str(layout)).stdout.decode().strip()
    assert out == "docker.io/library/deb:2"
    assert json.loads(gd(tmp_path, "vfs", "image", "inspect", "deb:2").stdout)["Names"] == [out]


def test_a_truncated_archive_is_refused_in_one_line_and_leaves_no_temporary_file(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/t:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "vfs", "image", "save", "localhost/t:1", "-o", str(tmp_path / "t.tar"))
    whole = (tmp_path / "t.tar").read_bytes()
    before = set(os.listdir("/tmp"))
    cuts = (("cut.tar", whole[: len(whole) // 2 + 100]), ("cut.tar.gz", gzip.compress(whole)[:-40]))
    for name, data in cuts:
        (tmp_path / name).write_bytes(data)
        proc = gd(tmp_path / "other", "vfs", "image", "load", str(tmp_path / name), check=False)
        assert proc.returncode in (3, 6) and proc.stderr.count(b"\n") == 1, proc.stderr
        assert b"internal error" not in proc.stderr
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("graphdriver-load-")]


def test_an_archive_cut_before_its_manifest_is_corrupt_not_of_another_kind(tmp_path):
    """skopeo and buildah write manifest.json last: an archive cut anywhere before it (in a
    layer's data, in a header) is a truncated archive (6), not an archive of no known kind (2)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(LAYER1)]}}).encode()
    manifest = json.dumps([{"Config": sha256(config)[7:] + ".json", "RepoTags": ["localhost/t:1"],
                            "Layers": ["layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("layer.tar", LAYER1), (sha256(config)[7:] + ".json", config),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        last = tar.getmember("manifest.json").offset
    (tmp_path / "whole.tar").write_bytes(whole)
    loaded = gd(tmp_path / "ok", "vfs", "image", "load", str(tmp_path / "whole.tar"))
    assert loaded.stdout == b"localhost/t:1\n"
    for cut in (last + 100, last, last - 1, 700):
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        proc = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "cut.tar"), check=False)
        assert proc.returncode == 6 and proc.stderr.count(b"\n") == 1, (cut, proc.stderr)
        assert b"truncated" in proc.stderr or b"end of data" in proc.stderr, (cut, proc.stderr)
        assert gd(tmp_path, "vfs", "layers").stdout == b""
        assert gd(tmp_path, "vfs", "image", "ls", "--json").stdout.strip() == b"[]"


def test_an_archive_whose_second_image_fails_tells_the_first_it_stored(tmp_path):
    """As ``docker load``: each image is named on standard output once stored, so an image that
    fails later (exit 6, itself leaving nothing) does not hide the one stored before it."""
    files: dict[str, bytes] = {"one.tar": LAYER1, "two.tar": LAYER2}
    entries = []
    for name, layers, diff_ids in (("localhost/first:1", ["one.tar"], [sha256(LAYER1)]),
                                   ("localhost/second:1", ["one.tar", "two.tar"],
                                    [sha256(LAYER1), sha256(b"not the layer")])):
        config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2020-01-02T03:04:05Z",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        files[sha256(config)[7:] + ".json"] = config
        entries.append({"Config": sha256(config)[7:] + ".json", "RepoTags": [name], "Layers": layers})
    files["manifest.json"] = json.dumps(entries).encode()
    with tarfile.open(tmp_path / "two.tar", "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = gd(tmp_path, "vfs", "-q", "image", "load", str(tmp_path / "two.tar"), check=False)
    assert proc.returncode == 6 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert proc.stdout == b"localhost/first:1\n"
    listed = json.loads(gd(tmp_path, "vfs", "image", "ls", "--json").stdout)
    assert [r["names"] for r in listed] == [["localhost/first:1"]], listed
    assert gd(tmp_path, "vfs", "layers").stdout.decode().split() == [sha256(LAYER1)[7:]]
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""


def test_off_a_terminal_a_load_is_quiet_and_its_error_one_line(tmp_path):
    """The layers a load skips are told with the progress on a terminal, or with -v; off a
    terminal a load sharing stored layers says nothing, and one that fails says one line."""
    oci_layout(tmp_path / "base", [LAYER1], name="localhost/base:1")
    oci_layout(tmp_path / "top", [LAYER1, LAYER2], name="localhost/top:1")
    oci_layout(tmp_path / "bad", [LAYER1, LAYER2], name="localhost/bad:1",
               diff_ids=[sha256(LAYER1), sha256(b"not the layer")])
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "base"))
    bad = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 6 and bad.stderr.count(b"\n") == 1, bad.stderr
    assert bad.stderr.startswith(b"graphdriver: ")
    good = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "top"))
    assert good.stdout == b"localhost/top:1\n" and good.stderr == b"", good.stderr
    gd(tmp_path, "vfs", "image", "rm", "localhost/top:1")
    told = gd(tmp_path, "vfs", "-v", "image", "load", str(tmp_path / "top"))
    assert told.stderr.decode().splitlines() == [f"layer 1/2 {sha256(LAYER1)[7:19]}: already present"]


def test_a_truncated_layer_is_told_with_its_image_and_its_place(tmp_path):
    cut = LAYER2[:3074]  # in the middle of the data of srv/app: a truncated tarball
    oci_layout(tmp_path / "t", [LAYER1, cut], name="localhost/t:1", gzipped=False)
    proc = gd(tmp_path, "vfs", "image", "load", str(tmp_path / "t"), check=False)
    assert proc.returncode == 6 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert proc.stderr.startswith(b"graphdriver: image localhost/t:1, layer 2/2 "), proc.stderr
    assert gd(tmp_path, "vfs", "layers").stdout == b""


def test_two_loads_sharing_a_base_layer_at_once_both_succeed(tmp_path):
    big = make_tar({"big": F(os.urandom(8 << 20))})
    oci_layout(tmp_path / "a", [big, LAYER1], name="localhost/a:1", gzipped=False)
    oci_layout(tmp_path / "b", [big, LAYER2], name="localhost/b:1", gzipped=False)
    (tmp_path / "store").mkdir()
    gd(tmp_path, "vfs", "layers")  # the store exists before the race
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"),
                               "--run-root", str(tmp_path / "run"), "--driver", "vfs", "image", "load",
                               str(tmp_path / x)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for x in ("a", "b")]
    results = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert all(code == 0 for code, _ in results), results
    assert len(gd(tmp_path, "vfs", "layers").stdout.split()) == 3  # the base once
    assert gd(tmp_path, "vfs", "check").returncode == 0


def test_an_image_removed_while_a_container_is_made_from_it_leaves_no_container_without_image(tmp_path):
    import sys

    from tests.conftest import ROOT

    oci_layout(tmp_path / "a", [LAYER1], name="localhost/a:1")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    base = [sys.executable, "-m", "graphdriver", "--root", str(tmp_path / "store"), "--run-root",
            str(tmp_path / "run"), "--driver", "vfs"]
    for round_ in range(6):
        gd(tmp_path, "vfs", "image", "load", str(tmp_path / "a"))
        name = f"c{round_}"
        commands = (("image", "rm", "localhost/a:1"), ("container", "create", "localhost/a:1", name))
        procs = [subprocess.Popen([*base, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for args in commands]
        rm_code, create_code = (p.wait() for p in procs)
        # One wins: the image goes and the container is not made (3), or the container is made
        # and the image is refused its removal (5) -- never both made and gone.
        assert (rm_code, create_code) in ((0, 3), (5, 0)), [p.stderr.read() for p in procs]  # type: ignore[union-attr]
        if create_code == 0:
            gd(tmp_path, "vfs", "container", "rm", name)
            gd(tmp_path, "vfs", "image", "rm", "localhost/a:1")
        gd(tmp_path, "vfs", "prune")  # the image's layers, should the removal have left them
        assert gd(tmp_path, "vfs", "layers").stdout == b""
        assert json.loads(gd(tmp_path, "vfs", "image", "ls", "--json").stdout) == []
    assert gd(tmp_path, "vfs", "cleanup").stdout == b""


def test_a_zstd_layer_loads_and_container_size_reaches_the_writable_layer(tmp_path):
    import zstandard

    layout = tmp_path / "z"
    oci_layout(layout, [LAYER1, LAYER2], name="localhost/z:1", gzipped=False)
    # Re-pack the second layer as zstd, as buildah --compression-format zstd writes it.
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    packed = zstandard.ZstdCompressor().compress(LAYER2)
    (blobs / sha256(packed)[7:]).write_bytes(packed)
    manifest["layers"][1] = {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                             "digest": sha256(packed), "size": len(packed)}
    data = json.dumps(manifest).encode()
    (blobs / sha256(data)[7:]).write_bytes(data)
    index["manifests"][0].update(digest=sha256(data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    gd(tmp_path, "overlay", "image", "load", str(layout))
    layers = json.loads(gd(tmp_path, "overlay", "image", "inspect", "localhost/z:1").stdout)["Layers"]
    assert json.loads(gd(tmp_path, "overlay", "layer", layers[1]["Layer"]).stdout)["compression"] == "zstd"
    # --size goes to the container's writable layer: the overlay driver limits it...
    gd(tmp_path, "overlay", "container", "create", "localhost/z:1", "c", "--size", "64M")
    assert json.loads(gd(tmp_path, "overlay", "layer", "c").stdout)["writable"] is True
    gd(tmp_path, "overlay", "container", "rm", "c")  # its size-limited filesystem goes with it
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    assert not [line for line in mounts if str(tmp_path) in line]
    # ...and a driver that cannot is refused in one line, leaving no container behind.
    other = tmp_path / "vfs"
    other.mkdir()
    gd(other, "vfs", "image", "load", str(layout))
    refused = gd(other, "vfs", "container", "create", "localhost/z:1", "c", "--size", "64M", check=False)
    assert refused.returncode == 7 and refused.stderr.count(b"\n") == 1  # unsupported here
    assert b"c" not in gd(other, "vfs", "container", "ls").stdout.split()
    assert b"c-init" not in gd(other, "vfs", "layers").stdout.split()


def test_an_image_layer_changed_through_its_mount_keeps_no_stale_digest(tmp_path, driver_name):
    """A layer changed since it was loaded no longer has its DiffID: saving the image (which
    would name the changed tarball by the old digest), diff --compress original and sharing the
    layer with a new load are refused; diff gives the layer as it is now."""
    import errno

    oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    gd(tmp_path, driver_name, "image", "load", str(tmp_path / "in"))
    chain1 = sha256(LAYER1)
    top = sha256(f"{chain1} {sha256(LAYER2)}".encode())[7:]
    mnt = Path(gd(tmp_path, driver_name, "mount", top).stdout.decode().strip())
    try:
        (mnt / "srv/planted").write_bytes(b"planted\n")
        written = True
    except OSError as e:
        assert e.errno == errno.EROFS
        written = False
    finally:
        gd(tmp_path, driver_name, "unmount", top)
    saved = gd(tmp_path, driver_name, "image", "save", "localhost/made:1", "-o", str(tmp_path / "out.tar"),
               check=False)
    original = gd(tmp_path, driver_name, "diff", top, "--compress", "original", check=False)
    again = gd(tmp_path, driver_name, "image", "load", str(tmp_path / "in"), check=False)
    if not written:  # overlay mounts image layers read-only
        assert (saved.returncode, original.returncode, again.returncode) == (0, 0, 0)
        return
    for proc in (saved, original, again):
        assert proc.returncode == 6, proc.stderr
        assert b"changed since it was imported" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.tar").exists()
    with tarfile.open(fileobj=io.BytesIO(gd(tmp_path, driver_name, "diff", top).stdout)) as tf:
        assert "srv/planted" in tf.getnames()


def test_config_keys_are_matched_as_dockers_decoder_matches_them():
    """Go's encoding/json, which Docker reads configs with, matches a key regardless of case."""
    from graphdriver.images import oci

    digest = "sha256:" + "a" * 64
    assert oci.diff_ids_of({"rootfS": {"type": "layers", "Diff_IDs": [digest]}}, "image") == [digest]
    assert oci.diff_ids_of({"rootfs": {"diff_ids": [digest]}, "ROOTFS": {}}, "image") == [digest]

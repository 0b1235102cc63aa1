"""Image records as users name and rely on them: digests, ids, corrupt records, layers held, sizes,
creation times and platforms (hand-made layouts: no tool needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphdriver.errors import NotFound
from graphdriver.images import oci, reference
from graphdriver.images.sources import select_platform
from graphdriver.testing.treeutil import F, make_tar
from tests.conftest import ROOT
from tests.test_images import LAYER1, LAYER2, multi_platform_layout, oci_layout


def gd(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    from tests.conftest import run_cli

    return run_cli(*args, root=tmp_path / "store", driver="vfs", check=check)


def inspect(tmp_path: Path, name: str) -> dict:
    return json.loads(gd(tmp_path, "image", "inspect", name).stdout)


def two_images(tmp_path: Path) -> tuple[dict, dict]:
    """Images localhost/a:1 (LAYER1, LAYER2) and localhost/b:1 (LAYER1), inspected."""
    oci_layout(tmp_path / "a", [LAYER1, LAYER2], name="localhost/a:1")
    oci_layout(tmp_path / "b", [LAYER1], name="localhost/b:1")
    gd(tmp_path, "image", "load", str(tmp_path / "a"))
    gd(tmp_path, "image", "load", str(tmp_path / "b"))
    return inspect(tmp_path, "localhost/a:1"), inspect(tmp_path, "localhost/b:1")


def one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "internal error" not in err, err
    return err


# ----- names and digests --------------------------------------------------------------------------------


def test_a_digest_is_never_a_name_given_and_sha256_ids_are_ids(tmp_path):
    _, b = two_images(tmp_path)
    # As Docker refuses it: a tag reading as the id of another image.
    err = one_line_error(gd(tmp_path, "image", "tag", "localhost/a:1", b["Id"], check=False), 2)
    assert "ambiguous" in err
    # A digest names a manifest, never a name given.
    one_line_error(gd(tmp_path, "image", "tag", "localhost/a:1", f"localhost/x@{b['Id']}", check=False), 2)
    gd(tmp_path, "container", "create", "localhost/a:1", "c1")
    one_line_error(gd(tmp_path, "container", "commit", "c1", f"localhost/x@{b['Id']}", check=False), 2)
    one_line_error(gd(tmp_path, "container", "commit", "c1", "sha256:" + "1" * 64, check=False), 2)
    assert inspect(tmp_path, b["Id"])["Id"] == b["Id"]
    assert inspect(tmp_path, "localhost/a:1")["Names"] == ["localhost/a:1"]


def test_a_name_reading_as_an_id_left_by_an_older_version_never_hides_the_id(tmp_path):
    a, b = two_images(tmp_path)
    record = tmp_path / "store/images/records" / (a["Id"][7:] + ".json")
    value = json.loads(record.read_text())
    value["names"].append("docker.io/library/sha256:" + b["Id"][7:])  # as `image tag` once wrote it
    record.write_text(json.dumps(value))
    # sha256:<hex> is an id: b's, not a's name.
    assert inspect(tmp_path, b["Id"])["Id"] == b["Id"]
    # Work that finds an image again by its id finds that image: the tag goes to b, not to a.
    gd(tmp_path, "image", "tag", "localhost/b:1", "localhost/new:1")
    assert inspect(tmp_path, "localhost/new:1")["Id"] == b["Id"]
    assert "localhost/new:1" not in inspect(tmp_path, "localhost/a:1")["Names"]


def test_a_digest_reference_names_the_image_in_its_repository_only(tmp_path):
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    assert inspect(tmp_path, f"localhost/made@{digest}")["ManifestDigest"] == digest
    one_line_error(gd(tmp_path, "image", "inspect", f"other/repo@{digest}", check=False), 3)
    one_line_error(gd(tmp_path, "image", "rm", f"localhost/unrelated@{digest}", check=False), 3)
    assert inspect(tmp_path, "localhost/made:1")["ManifestDigest"] == digest  # still there


def test_image_rm_of_a_digested_reference_untags_it_alone_while_the_image_has_a_tag(tmp_path):
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    image_id = inspect(tmp_path, "localhost/made:1")["Id"]
    record = tmp_path / "store/images/records" / (image_id[7:] + ".json")
    value = json.loads(record.read_text())
    value["digests"] = [f"localhost/made@{digest}"]  # as a pull by digest keeps it
    record.write_text(json.dumps(value))
    out = gd(tmp_path, "image", "rm", f"localhost/made@{digest}").stdout.decode()
    assert out == f"Untagged: localhost/made@{digest}\n"
    assert inspect(tmp_path, "localhost/made:1")["Id"] == image_id
    assert json.loads(record.read_text())["digests"] == []
    out = gd(tmp_path, "image", "rm", "localhost/made:1").stdout.decode()
    assert out.splitlines()[:2] == ["Untagged: localhost/made:1", f"Deleted: {image_id}"]


def test_image_rm_prints_the_full_name_it_untagged(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/x:latest")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "image", "tag", "localhost/x", "localhost/y:2")
    assert gd(tmp_path, "image", "rm", "localhost/x").stdout == b"Untagged: localhost/x:latest\n"


def test_image_rm_of_a_repository_at_its_manifest_digest_removes_the_names_there_only(tmp_path):
    # The digest was never kept as a name: it is what the image is in that repository.
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    image_id = inspect(tmp_path, "localhost/made:1")["Id"]
    gd(tmp_path, "image", "tag", "localhost/made:1", "localhost/made:2")
    gd(tmp_path, "image", "tag", "localhost/made:1", "localhost/other:1")
    out = gd(tmp_path, "image", "rm", f"localhost/made@{digest}").stdout.decode().splitlines()
    assert out == ["Untagged: localhost/made:1", "Untagged: localhost/made:2"]
    assert inspect(tmp_path, "localhost/other:1")["Names"] == ["localhost/other:1"]
    out = gd(tmp_path, "image", "rm", f"localhost/other@{digest}").stdout.decode().splitlines()
    assert out[:2] == ["Untagged: localhost/other:1", f"Deleted: {image_id}"]


def test_sixty_four_hex_digits_are_an_id_never_a_name(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    image_id = inspect(tmp_path, "localhost/made:1")["Id"]
    err = one_line_error(gd(tmp_path, "image", "tag", "localhost/made:1", "b" * 64, check=False), 2)
    assert "image id" in err
    assert inspect(tmp_path, image_id[7:])["Id"] == image_id


def test_image_load_prints_the_names_it_loaded_and_its_json_is_image_ls_json(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/a:1", created="2020-01-02T03:04:05Z")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "image", "tag", "localhost/a:1", "localhost/other:9")
    assert gd(tmp_path, "image", "load", str(tmp_path / "in")).stdout == b"localhost/a:1\n"  # as Docker's
    loaded = json.loads(gd(tmp_path, "--json", "image", "load", str(tmp_path / "in")).stdout)
    listed = json.loads(gd(tmp_path, "--json", "image", "ls").stdout)
    assert loaded == listed and loaded[0]["created"] == "2020-01-02T03:04:05Z" and loaded[0]["stored"]


def test_image_rm_by_id_of_an_image_named_in_several_repositories_needs_force(tmp_path):
    # As in Docker: by id, names in one repository go together, names in several need --force.
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/x:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    image_id = inspect(tmp_path, "localhost/x:1")["Id"]
    gd(tmp_path, "image", "tag", "localhost/x:1", "localhost/y:1")
    err = one_line_error(gd(tmp_path, "image", "rm", image_id[7:19], check=False), 5)
    assert "several repositories (localhost/x, localhost/y)" in err and "--force" in err
    assert inspect(tmp_path, "localhost/y:1")["Id"] == image_id  # nothing was removed
    gd(tmp_path, "image", "rm", "localhost/y:1")
    gd(tmp_path, "image", "tag", "localhost/x:1", "localhost/x:2")  # one repository: by id is enough
    out = gd(tmp_path, "image", "rm", image_id).stdout.decode().splitlines()
    assert out[:3] == ["Untagged: localhost/x:1", "Untagged: localhost/x:2", f"Deleted: {image_id}"]
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "image", "tag", "localhost/x:1", "localhost/y:1")
    out = gd(tmp_path, "image", "rm", "--force", image_id).stdout.decode().splitlines()
    assert out[:3] == ["Untagged: localhost/x:1", "Untagged: localhost/y:1", f"Deleted: {image_id}"]
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"


# ----- one corrupt record -------------------------------------------------------------------------------


def test_a_corrupt_image_record_is_named_and_everything_else_works(tmp_path):
    a, b = two_images(tmp_path)
    bad = tmp_path / "store/images/records" / ("0" * 64 + ".json")
    bad.write_text("{bad")
    listed = gd(tmp_path, "image", "ls")
    assert listed.returncode == 0
    assert "localhost/a" in listed.stdout.decode() and "localhost/b" in listed.stdout.decode()
    assert listed.stderr.decode().count("\n") == 1 and "0" * 64 in listed.stderr.decode()
    assert len(json.loads(gd(tmp_path, "image", "ls", "--json").stdout)) == 2
    assert inspect(tmp_path, "localhost/a:1")["Id"] == a["Id"]
    assert inspect(tmp_path, a["Id"][7:19])["Id"] == a["Id"]
    gd(tmp_path, "container", "create", "localhost/a:1", "c1")
    gd(tmp_path, "container", "rm", "c1")
    gd(tmp_path, "image", "save", "localhost/b:1", "-o", str(tmp_path / "b.tar"))
    assert "0" * 64 in gd(tmp_path, "cleanup").stdout.decode()  # named; nothing it may name removed
    gd(tmp_path, "prune")
    gd(tmp_path, "image", "rm", "localhost/a:1")
    assert inspect(tmp_path, "localhost/b:1")["Id"] == b["Id"]
    assert gd(tmp_path, "check").returncode == 0
    # Blobs are judged unreferenced again once the bad record is gone.
    bad.unlink()
    gd(tmp_path, "cleanup")
    blobs = {p.name for p in (tmp_path / "store/images/blobs/sha256").iterdir()}
    assert a["Id"][7:] not in blobs and b["Id"][7:] in blobs


def test_an_unreadable_image_record_still_holds_its_layers(tmp_path):
    a, _ = two_images(tmp_path)
    record = tmp_path / "store/images/records" / (a["Id"][7:] + ".json")
    good = record.read_bytes()
    record.write_text("{")
    top = a["Layers"][-1]["Layer"]  # held by localhost/a:1 only
    err = one_line_error(gd(tmp_path, "remove", top, check=False), 5)
    assert f"unreadable image record {a['Id'][7:]}.json" in err
    gd(tmp_path, "prune", "--layers")
    gd(tmp_path, "cleanup")
    df = json.loads(gd(tmp_path, "--json", "df").stdout)
    assert top not in df["prune"]["layers"]
    record.write_bytes(good)
    assert top.encode() in gd(tmp_path, "layers").stdout.split()
    gd(tmp_path, "container", "create", "localhost/a:1", "c1")  # the image is whole
    # A layer no image could name is not held back by it.
    gd(tmp_path, "create", "mine", "--rw")
    record.write_text("{")
    gd(tmp_path, "remove", "mine")


def test_an_unreadable_image_record_is_removed_by_its_full_id(tmp_path):
    a, b = two_images(tmp_path)
    (tmp_path / "store/images/records" / (a["Id"][7:] + ".json")).write_text("{")
    said = gd(tmp_path, "cleanup").stdout.decode()
    assert f"graphdriver image rm {a['Id']} removes it" in said
    # A prefix is no full id: the record it starts is named, and stays.
    assert f"{a['Id'][7:]}.json" in one_line_error(gd(tmp_path, "image", "rm", a["Id"][7:19], check=False), 6)
    assert gd(tmp_path, "image", "rm", a["Id"]).stdout.decode() == f"Deleted: {a['Id']}\n"
    gd(tmp_path, "prune", "--layers")  # what it held is freed now that nothing may name it
    assert a["Layers"][-1]["Layer"].encode() not in gd(tmp_path, "layers").stdout.split()
    assert inspect(tmp_path, "localhost/b:1")["Id"] == b["Id"]


def test_a_name_an_unreadable_record_may_hold_is_an_integrity_failure_naming_it(tmp_path):
    """Issue: with the record of localhost/a:1 corrupt, inspect and rm of that name said "no such
    image" (exit 3); the name cannot be answered for, an integrity failure (exit 6)."""
    a, b = two_images(tmp_path)
    (tmp_path / "store/images/records" / (a["Id"][7:] + ".json")).write_text('{"id": 5\n')
    for args in (("image", "inspect", "localhost/a:1"), ("image", "rm", "localhost/a:1"),
                 ("image", "save", "localhost/a:1", "-o", str(tmp_path / "a.tar")),
                 ("container", "create", "localhost/a:1", "c1"), ("image", "inspect", "localhost/nothing:1"),
                 ("image", "inspect", "cafe" if not b["Id"][7:].startswith("cafe") else "beef")):
        err = one_line_error(gd(tmp_path, *args, check=False), 6)
        assert f"image record {a['Id'][7:]}.json" in err, (args, err)
    assert not (tmp_path / "a.tar").exists()
    # A name a readable record holds is answered; image ls names the bad record and lists the rest.
    assert inspect(tmp_path, "localhost/b:1")["Id"] == b["Id"]
    listed = gd(tmp_path, "image", "ls")
    assert "localhost/b" in listed.stdout.decode() and a["Id"][7:] in listed.stderr.decode()
    # Once the record is gone, the name is simply not found.
    gd(tmp_path, "image", "rm", a["Id"])
    one_line_error(gd(tmp_path, "image", "inspect", "localhost/a:1", check=False), 3)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a record nobody may not read")
def test_an_image_record_this_user_may_not_read_is_a_missing_privilege_never_corruption():
    """Records of mode 0600 in a root store whose folders are open: the images are listed but that
    one, which is named, and `image ls` exits 7 as `layers` does; a name it may hold is 7, not 6
    (nothing is corrupt); with the records folder closed too, 7 naming the store's records."""
    import shutil
    import tempfile

    from graphdriver import cli
    from tests.conftest import as_nobody
    from tests.test_cli import _load_every_module

    _load_every_module()
    work = Path(tempfile.mkdtemp(prefix="gd-image-record-"))
    try:
        os.chmod(work, 0o755)
        a, _ = two_images(work)
        store = work / "store"
        for d, _, files in os.walk(store):  # all open but a's record
            os.chmod(d, os.stat(d).st_mode | 0o005)
            for name in files:
                if name != a["Id"][7:] + ".json":
                    os.chmod(os.path.join(d, name), os.stat(os.path.join(d, name)).st_mode | 0o004)
        run = work / "nobody"
        run.mkdir()
        os.chown(run, 65534, 65534)
        other = ["--root", str(store), "--run-root", str(run / "nobody")]

        def codes() -> list[int]:
            return [cli.main([*other, *args]) for args in (
                ["image", "ls"], ["image", "inspect", "localhost/a:1"], ["image", "inspect", a["Id"]],
                ["image", "inspect", "localhost/b:1"], ["container", "create", "localhost/a:1", "c1"])]

        assert as_nobody(codes) == [7, 7, 7, 0, 7]
        os.chmod(store / "images/records", 0o700)
        assert as_nobody(codes)[:4] == [7, 7, 7, 7]
    finally:
        shutil.rmtree(work)


def test_one_index_digest_names_the_image_pulled_by_it_then_this_machines(tmp_path):
    """Records as pulls through one index leave them: repo@<index digest> names the image pulled
    by that reference before one a tag pull reached through the index; among equals, the image
    of this machine's platform, else none (exit 5, naming each)."""
    from graphdriver.images.sources import host_platform

    a, b = two_images(tmp_path)
    index = "sha256:" + "1" * 64
    by_index = f"localhost/multi@{index}"
    records = tmp_path / "store/images/records"

    def edit(image: dict, platform: str, **lists: list[str]) -> None:
        path = records / (image["Id"][7:] + ".json")
        value = json.loads(path.read_text())
        value.update(lists, platform=platform)
        path.write_text(json.dumps(value))

    here = host_platform()
    elsewhere = "linux/s390x" if here != "linux/s390x" else "linux/arm64"
    # a pulled through the index by a tag (another platform), b pulled by the index digest.
    edit(a, elsewhere, pushed=[by_index])
    edit(b, here, digests=[by_index])
    assert inspect(tmp_path, by_index)["Id"] == b["Id"]
    edit(a, here, digests=[], pushed=[by_index])
    edit(b, elsewhere, digests=[by_index], pushed=[])
    assert inspect(tmp_path, by_index)["Id"] == b["Id"]  # pulled by it: whatever its platform
    # Both reached by tag pulls through it: this machine's platform wins, whichever sorts first.
    edit(b, elsewhere, digests=[], pushed=[by_index])
    assert inspect(tmp_path, by_index)["Id"] == a["Id"]
    edit(a, elsewhere, pushed=[by_index])
    edit(b, here, pushed=[by_index])
    assert inspect(tmp_path, by_index)["Id"] == b["Id"]
    # Neither for this machine: refused, both named.
    edit(b, "linux/mips64le", pushed=[by_index])
    err = one_line_error(gd(tmp_path, "image", "inspect", by_index, check=False), 5)
    assert "ambiguous" in err and a["Id"] in err and b["Id"] in err and here in err
    one_line_error(gd(tmp_path, "image", "rm", by_index, check=False), 5)
    assert all(by_index in inspect(tmp_path, image["Id"])["RepoDigests"] for image in (a, b))  # rm: nothing


@pytest.mark.parametrize("driver, wins",
                         [("windowsfilter", "windows"), ("vfs", "linux"), ("overlay", "linux")])
def test_among_equal_matches_the_image_of_the_stores_platform_wins(tmp_path, driver, wins):
    """On windowsfilter the Windows image of an index is the store's, as a pull there takes it."""
    from graphdriver.images.records import ImageRecord, ImageStore
    from graphdriver.images.sources import host_platform

    arch = host_platform().partition("/")[2]
    root = tmp_path / "store"
    root.mkdir()
    (root / "store.json").write_text(json.dumps({"driver": driver}))
    images = ImageStore(str(root))
    by_index = "localhost/multi@sha256:" + "1" * 64
    for n, system in enumerate(("linux", "windows")):
        images.put(ImageRecord("sha256:" + str(n + 2) * 64, [], [], [], platform=f"{system}/{arch}",
                               pushed=[by_index]))
    assert images.resolve(by_index).platform == f"{wins}/{arch}"


def test_an_unreadable_container_record_still_holds_its_layers_and_its_image(tmp_path):
    two_images(tmp_path)
    gd(tmp_path, "container", "create", "localhost/b:1", "c1")
    record = tmp_path / "store/containers/c1.json"
    good = record.read_bytes()
    record.write_text("{")
    assert "container record c1.json" in gd(tmp_path, "cleanup").stdout.decode()
    err = one_line_error(gd(tmp_path, "remove", "c1", check=False), 5)
    assert "unreadable container record c1.json" in err
    one_line_error(gd(tmp_path, "remove", "c1-init", check=False), 5)  # it has a child: c1
    err = one_line_error(gd(tmp_path, "image", "rm", "localhost/b:1", check=False), 5)
    assert "unreadable container record c1.json" in err
    gd(tmp_path, "prune", "--layers")
    assert "container c1 (unreadable record)" in gd(tmp_path, "tree").stdout.decode()
    gd(tmp_path, "image", "rm", "localhost/a:1")  # another image goes as before
    record.write_bytes(good)
    assert {b"c1", b"c1-init"} <= set(gd(tmp_path, "layers").stdout.split())
    gd(tmp_path, "container", "rm", "c1")


# ----- layers held by images and containers -------------------------------------------------------------


def test_remove_refuses_layers_an_image_or_a_container_holds(tmp_path):
    a, _ = two_images(tmp_path)
    top = a["Layers"][-1]["Layer"]
    gd(tmp_path, "container", "create", "localhost/b:1", "c1")
    err = one_line_error(gd(tmp_path, "remove", "c1", check=False), 5)
    assert "container c1" in err
    err = one_line_error(gd(tmp_path, "remove", top, check=False), 5)
    assert "image localhost/a:1" in err
    gd(tmp_path, "image", "save", "localhost/a:1", "-o", str(tmp_path / "a.tar"))  # still whole
    gd(tmp_path, "container", "rm", "c1")  # a container removes its own layers
    assert b"c1" not in gd(tmp_path, "layers").stdout.split()
    gd(tmp_path, "image", "rm", "localhost/a:1")
    assert top.encode() not in gd(tmp_path, "layers").stdout.split()
    # A layer of the layer commands is removed as before.
    gd(tmp_path, "create", "mine", "--rw")
    gd(tmp_path, "remove", "mine")


def test_layer_commands_of_a_store_without_images_never_import_them(tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import graphdriver
store = graphdriver.open_store({str(tmp_path / 'store')!r}, run_root={str(tmp_path / 'run')!r}, driver="vfs")
store.create("l1")
store.remove("l1")
assert not [m for m in sys.modules if m.startswith("graphdriver.images")], sorted(sys.modules)
"""
    subprocess.run([sys.executable, "-c", script], check=True)


# ----- what tree, df and image ls show ------------------------------------------------------------------


def test_tree_and_df_count_what_a_container_wrote(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/a:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "container", "create", "localhost/a:1", "c1")
    root = Path(gd(tmp_path, "mount", "c1").stdout.decode().strip())
    try:
        (root / "written").write_bytes(b"x" * 300_000)
    finally:
        gd(tmp_path, "unmount", "c1")
    assert int(gd(tmp_path, "diffsize", "c1").stdout) == 300_000
    line = next(x for x in gd(tmp_path, "tree").stdout.decode().splitlines() if "container c1  rw" in x)
    assert "293.0KiB" in line, line
    usage = json.loads(gd(tmp_path, "df", "--json").stdout)
    assert usage["containers"]["size"] == 300_000  # what it wrote; its init layer is not counted


def test_image_ls_shows_when_the_image_was_made(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/old:1", created="2001-02-03T04:05:06.789Z")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    row = gd(tmp_path, "image", "ls").stdout.decode().splitlines()[1]
    assert "2001-02-03 04:05:06" in row, row
    assert inspect(tmp_path, "localhost/old:1")["Created"] == "2001-02-03T04:05:06.789Z"
    listed = json.loads(gd(tmp_path, "image", "ls", "--json").stdout)[0]
    assert listed["created"] == "2001-02-03T04:05:06.789Z"  # the table's time, not the load's
    assert listed["stored"].startswith("20") and listed["stored"] != listed["created"]


def test_image_ls_shows_times_in_utc(tmp_path):
    """A config time with an offset is shown in UTC, as every other time in the table."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/tz:1", created="2020-01-01T01:30:00+02:00")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    row = gd(tmp_path, "image", "ls").stdout.decode().splitlines()[1]
    assert "2019-12-31 23:30:00" in row, row


def _docker_archive(path: Path, config: dict, layers: list[bytes]) -> None:
    """A docker-archive at *path* of one image, localhost/x:1, of *config* and *layers*."""
    import io
    import tarfile

    data = json.dumps(config).encode()
    files = {f"{i}.tar": layer for i, layer in enumerate(layers)}
    files["config.json"] = data
    files["manifest.json"] = json.dumps([{"Config": "config.json", "RepoTags": ["localhost/x:1"],
                                          "Layers": [f"{i}.tar" for i in range(len(layers))]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def _config(layers: list[bytes]) -> dict:
    """A sound image config of *layers*, with every field the store reads."""
    return {"architecture": "amd64", "os": "linux", "variant": "v2", "created": "2020-01-02T03:04:05Z",
            "config": {"Env": ["A=1"]}, "history": [{"created": "2020-01-02T03:04:05Z", "created_by": "x"}],
            "rootfs": {"type": "layers", "diff_ids": [oci.sha256_digest(x) for x in layers]}}


@pytest.mark.parametrize("field, value, told", [
    ("created", "yesterday", "the image config's created is not an RFC 3339 date-time: \"yesterday\""),
    ("created", "2020-01-02 03:04:05Z", "the image config's created is not an RFC 3339 date-time"),
    ("created", "2020-01-02T03:04:05", "the image config's created is not an RFC 3339 date-time"),
    ("created", "2021-02-29T03:04:05Z", "the image config's created is not an RFC 3339 date-time"),
    ("created", 1577934245, "the image config's created is not an RFC 3339 date-time: 1577934245"),
    ("architecture", 64, "the image config's architecture is not a string: 64"),
    ("os", ["linux"], "the image config's os is not a string"),
    ("variant", {"v": 8}, "the image config's variant is not a string"),
    ("config", ["A=1"], "the image config's config is not an object"),
    ("history", {"created_by": "x"}, "the image config's history is not a list of objects"),
    ("history", ["x"], "the image config's history is not a list of objects"),
    ("history.0.created", "today", "the image config's history[0].created is not an RFC 3339 date-time"),
    ("rootfs.type", "tar", "the image config's rootfs.type is not \"layers\": \"tar\""),
    ("rootfs.type", None, "the image config's rootfs.type is not \"layers\": null"),
    ("rootfs.diff_ids", "sha256:" + "a" * 64, "the image config has no rootfs.diff_ids"),
])
def test_an_image_config_field_of_the_wrong_kind_is_corrupt_and_leaves_nothing(tmp_path, field, value, told):
    """As skopeo refuses such a config: a field the store reads that is not of its kind (a
    ``created`` that is no RFC 3339 date-time) is a corrupt image, one line and exit 6, and
    the load leaves no record, no layer and no blob; the same archive with a sound config loads."""
    layers = [LAYER1, LAYER2]
    config = _config(layers)
    *parents, last = field.split(".")
    part: dict | list = config
    for key in parents:
        part = part[int(key)] if isinstance(part, list) else part[key]
    part[int(last) if isinstance(part, list) else last] = value  # type: ignore[index]
    _docker_archive(tmp_path / "bad.tar", config, layers)
    err = one_line_error(gd(tmp_path, "image", "load", str(tmp_path / "bad.tar"), check=False), 6)
    assert err.startswith("graphdriver: image sha256:") and told in err, err
    assert gd(tmp_path, "layers").stdout == b""
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"
    assert not any(files for _, _, files in os.walk(tmp_path / "store" / "images"))
    assert gd(tmp_path, "cleanup").stdout == b""
    _docker_archive(tmp_path / "good.tar", _config(layers), layers)
    assert gd(tmp_path, "image", "load", str(tmp_path / "good.tar")).stdout == b"localhost/x:1\n"


@pytest.mark.parametrize("created", ["2020-01-02t03:04:05z", "2020-02-29T23:59:60.123456789-07:30",
                                     "0001-01-01T00:00:00Z", None])
def test_an_image_config_created_in_any_rfc_3339_form_loads(tmp_path, created):
    """RFC 3339 takes ``t`` and ``z`` in either case, fractions, offsets and a leap second; a
    null or missing ``created`` is an image that does not say when it was made."""
    config = _config([LAYER1])
    config["created"] = created
    if created is None:
        del config["history"]
    _docker_archive(tmp_path / "in.tar", config, [LAYER1])
    gd(tmp_path, "image", "load", str(tmp_path / "in.tar"))
    assert inspect(tmp_path, "localhost/x:1")["Created"] == created


def test_is_rfc3339_checks_the_grammar_and_the_calendar():
    for good in ("2020-01-02T03:04:05Z", "2001-02-03T04:05:06.789Z", "2020-01-01T01:30:00+02:00",
                 "2024-02-29T00:00:00z", "2016-12-31T23:59:60Z"):
        assert oci.is_rfc3339(good), good
    for bad in ("", "2020-01-02", "2020-01-02T03:04Z", "2020-01-02T03:04:05", "2020-01-02 03:04:05Z",
                "2020-01-02T03:04:05.Z", "2023-02-29T00:00:00Z", "2020-13-01T00:00:00Z",
                "2020-01-00T00:00:00Z", "2020-01-01T24:00:00Z", "2020-01-01T00:60:00Z",
                "2020-01-01T00:00:00+24:00", "2020-01-01T00:00:00+0200", "\uff12020-01-01T00:00:00Z",
                "2020-01-01T00:00:00Z\n"):
        assert not oci.is_rfc3339(bad), bad


def test_one_image_with_two_manifests_keeps_each_repositorys(tmp_path):
    """The same image (one config) loaded twice with other layer blobs: each repository keeps
    the manifest its names came with, for save, inspect and lookup by digest; removing the
    last name of one forgets its manifest, and cleanup then drops its blobs."""
    gz = oci_layout(tmp_path / "gz", [LAYER1], name="localhost/gz:1")
    plain = oci_layout(tmp_path / "plain", [LAYER1], name="localhost/plain:1", gzipped=False)
    assert gz != plain
    gd(tmp_path, "image", "load", str(tmp_path / "gz"))
    gd(tmp_path, "image", "load", str(tmp_path / "plain"))
    expected = [f"localhost/gz@{gz}", f"localhost/plain@{plain}"]
    assert inspect(tmp_path, "localhost/gz:1")["RepoDigests"] == expected
    for name, digest in (("localhost/gz:1", gz), ("localhost/plain:1", plain)):
        out = tmp_path / f"out-{digest[7:15]}"
        gd(tmp_path, "image", "save", name, "-o", str(out), "--format", "oci")
        assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == digest
    assert gd(tmp_path, "image", "inspect", f"localhost/plain@{plain}").returncode == 0
    assert gd(tmp_path, "image", "inspect", f"localhost/plain@{gz}", check=False).returncode == 3
    gd(tmp_path, "image", "rm", "localhost/plain:1")
    assert inspect(tmp_path, "localhost/gz:1")["RepoDigests"] == [f"localhost/gz@{gz}"]
    assert f"removed blob {plain}" in gd(tmp_path, "cleanup").stdout.decode()
    # Two tags of one repository, each with its manifest: each keeps its own.
    again = oci_layout(tmp_path / "gz2", [LAYER1], name="localhost/gz:2", gzipped=False)
    gd(tmp_path, "image", "load", str(tmp_path / "gz2"))
    for name, digest in (("localhost/gz:1", gz), ("localhost/gz:2", again)):
        out = tmp_path / f"again-{name[-1]}"
        gd(tmp_path, "image", "save", name, "-o", str(out), "--format", "oci")
        assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == digest
        assert gd(tmp_path, "image", "inspect", f"localhost/gz@{digest}").returncode == 0


def test_inspect_gives_the_repository_digests(tmp_path):
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "image", "tag", "localhost/made:1", "example.com/other/made:2")
    assert inspect(tmp_path, "localhost/made:1")["RepoDigests"] == [
        f"example.com/other/made@{digest}", f"localhost/made@{digest}"]


# ----- platforms ----------------------------------------------------------------------------------------


def test_platform_is_checked_for_an_image_without_an_index(tmp_path):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/amd:1")  # linux/amd64
    err = one_line_error(gd(tmp_path, "image", "load", str(tmp_path / "in"), "--platform", "linux/arm64",
                            check=False), 3)
    assert "no image for platform linux/arm64" in err and "linux/amd64" in err
    assert gd(tmp_path, "layers").stdout == b""
    for bogus in ("bogus", "linux/", "a/b/c/d"):
        load = gd(tmp_path, "image", "load", str(tmp_path / "in"), "--platform", bogus, check=False)
        one_line_error(load, 2)
    gd(tmp_path, "image", "load", str(tmp_path / "in"), "--platform", "linux/amd64")
    gd(tmp_path, "image", "save", "localhost/amd:1", "-o", str(tmp_path / "amd.tar"))
    other = tmp_path / "other"
    other.mkdir()
    one_line_error(gd(other, "image", "load", str(tmp_path / "amd.tar"), "--platform", "linux/arm64",
                      check=False), 3)
    # Against an index too, a platform that is no platform is a usage error.
    multi_platform_layout(tmp_path / "multi", {"linux/amd64": ([LAYER1], "linux"),
                                               "linux/arm64": ([LAYER2], "linux")}, "localhost/multi:1")
    load = gd(tmp_path, "image", "load", str(tmp_path / "multi"), "--platform", "bogus", check=False)
    one_line_error(load, 2)


def test_no_image_for_a_platform_names_the_variants():
    arm = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "1" * 64, 1,
                         platform={"os": "linux", "architecture": "arm", "variant": "v7"})
    arm64 = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "2" * 64, 1,
                           platform={"os": "linux", "architecture": "arm64"})
    with pytest.raises(NotFound) as caught:
        select_platform([arm, arm64], "linux/arm/v6", "image x")
    assert "no image for platform linux/arm/v6 (it has linux/arm/v7, linux/arm64)" in str(caught.value)
    assert select_platform([arm, arm64], "linux/arm", "image x") is arm
    assert select_platform([arm, arm64], "linux/arm64/v8", "image x") is arm64  # arm64 means v8
    # An image or index without a platform: taken when no entry is of the platform, as containerd does.
    nested = oci.Descriptor(oci.OCI_INDEX, "sha256:" + "3" * 64, 1)
    assert select_platform([nested, arm64], "linux/amd64", "image x") is nested
    assert select_platform([nested, arm64], "linux/arm64", "image x") is arm64
    artifact = oci.Descriptor("application/vnd.example.thing", "sha256:" + "4" * 64, 1)  # no image at all
    with pytest.raises(NotFound, match=r"\(it has an entry without a platform, linux/arm64\)$"):
        select_platform([artifact, arm64], "linux/amd64", "image x")


# ----- save ---------------------------------------------------------------------------------------------


def test_a_save_that_cannot_write_names_the_path_given(tmp_path):
    oci_layout(tmp_path / "in", [make_tar({"f": F(b"x")})], name="localhost/s:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    target = tmp_path / "no/such/dir/x.tar"
    err = one_line_error(gd(tmp_path, "image", "save", "localhost/s:1", "-o", str(target), check=False), 1)
    assert f"{target}:" in err and "partial" not in err


def test_an_oci_save_adds_to_the_layout_it_finds(tmp_path):
    a, b = two_images(tmp_path)
    gd(tmp_path, "image", "tag", "localhost/b:1", "localhost/b:2")  # another tag: a:1's entry stays
    out = tmp_path / "layout"
    gd(tmp_path, "image", "save", "localhost/a:1", "-o", str(out), "--format", "oci")
    gd(tmp_path, "image", "save", "localhost/b:2", "-o", str(out), "--format", "oci")
    gd(tmp_path, "image", "save", "localhost/b:2", "-o", str(out), "--format", "oci")  # replaces itself
    index = json.loads((out / "index.json").read_text())
    named = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert named == ["localhost/a:1", "localhost/b:2"]
    other = tmp_path / "other"
    other.mkdir()
    gd(other, "image", "load", str(out))
    assert inspect(other, "localhost/a:1")["Id"] == a["Id"]
    assert inspect(other, "localhost/b:2")["Id"] == b["Id"]
    (out / "index.json").write_text("[]")
    err = one_line_error(gd(tmp_path, "image", "save", "localhost/a:1", "-o", str(out), "--format", "oci",
                            check=False), 6)
    assert "index.json" in err


def test_a_variant_runs_the_older_variants_of_its_architecture_best_first():
    def desc(n: int, arch: str, variant: str = "") -> oci.Descriptor:
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + str(n) * 64, 1, platform=platform)

    amd64, amd64_v2, amd64_v3 = desc(1, "amd64"), desc(2, "amd64", "v2"), desc(3, "amd64", "v3")
    assert select_platform([amd64], "linux/amd64/v2", "x") is amd64  # v2 runs v1 (no variant)
    assert select_platform([amd64, amd64_v2, amd64_v3], "linux/amd64/v2", "x") is amd64_v2  # the best
    assert select_platform([amd64_v3, amd64], "linux/amd64/v3", "x") is amd64_v3
    assert select_platform([amd64], "linux/amd64/v1", "x") is amd64
    with pytest.raises(NotFound):
        select_platform([amd64_v3], "linux/amd64/v2", "x")  # an older machine cannot run v3
    arm_v5, arm_v6 = desc(4, "arm", "v5"), desc(5, "arm", "v6")
    assert select_platform([arm_v5, arm_v6], "linux/arm/v7", "x") is arm_v6
    arm64, arm64_v82 = desc(6, "arm64"), desc(7, "arm64", "v8.2")
    assert select_platform([arm64, arm64_v82], "linux/arm64/v8.4", "x") is arm64_v82
    assert select_platform([arm64], "linux/arm64/v9.1", "x") is arm64  # v9.x runs v8
    with pytest.raises(NotFound):
        select_platform([arm64_v82], "linux/arm64/v8", "x")


def test_an_archive_member_that_links_to_itself_is_named_as_such(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "looped.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
        link = tarfile.TarInfo("manifest.json")  # stored again, as a hard link to its own name
        link.type, link.linkname = tarfile.LNKTYPE, "manifest.json"
        tar.addfile(link)
    err = one_line_error(gd(tmp_path, "image", "load", str(archive), check=False), 6)
    assert "'manifest.json' is a link that leads to no file" in err


@pytest.mark.parametrize("field, value", [("RepoTags", "str"), ("RepoTags", {"a": 1}), ("RepoTags", [1]),
                                          ("Layers", ["x.tar", 2]), ("Layers", "x.tar")])
def test_a_manifest_json_of_the_wrong_shape_is_corrupt(tmp_path, field, value):
    """skopeo refuses them too; ``"RepoTags": "str"`` named the image s, t and r."""
    import io
    import json
    import tarfile

    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    entry = {"Config": "config.json", "RepoTags": ["localhost/x:1"], "Layers": []}
    entry[field] = value
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("config.json", config), ("manifest.json", json.dumps([entry]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    err = one_line_error(gd(tmp_path, "image", "load", str(archive), check=False), 6)
    assert field in err
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"


def test_a_container_removal_killed_half_way_is_finished_by_cleanup(tmp_path):
    two_images(tmp_path)
    for name, gone_already in (("c1", ()), ("c2", ("c2",))):
        gd(tmp_path, "container", "create", "localhost/b:1", name)
        record = tmp_path / "store/containers" / f"{name}.json"
        value = json.loads(record.read_text())
        record.write_text(json.dumps({**value, "removing": True}))  # as container rm says first
        for layer in gone_already:  # killed after its writable layer went
            from graphdriver.store.layers import Store, StoreOptions

            store = Store(StoreOptions(root=str(tmp_path / "store"), run_root=str(tmp_path / "run")))
            store.remove(layer, holder=f"container {name}")
            assert not store.exists(layer)
    err = gd(tmp_path, "remove", "c2-init", check=False)  # held still: the record names it
    assert err.returncode == 5
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert "removed container c1 left by an interrupted removal" in done
    assert "removed container c2 left by an interrupted removal" in done
    assert gd(tmp_path, "container", "ls", "--json").stdout.strip() in (b"[]", b"")
    assert not set(gd(tmp_path, "layers").stdout.split()) & {b"c1", b"c1-init", b"c2", b"c2-init"}
    assert gd(tmp_path, "cleanup").stdout == b""


def test_cleanup_leaves_a_live_container_removal_alone(tmp_path):
    """A ``container rm`` under way has said "removing" in the record, as one killed half way
    has: cleanup finished it under the live command (which then failed, exit 3, its layer gone
    under it) and called it interrupted.  The removal's lock tells the two apart."""
    from graphdriver.fs.locking import locked
    from graphdriver.images import container_layers as ctrs
    from graphdriver.store.layers import Store, StoreOptions

    two_images(tmp_path)
    gd(tmp_path, "container", "create", "localhost/b:1", "c1")
    record = tmp_path / "store/containers/c1.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "removing": True}))
    store = Store(StoreOptions(root=str(tmp_path / "store"), run_root=str(tmp_path / "run")))
    with locked(ctrs.removal_lock(store, "c1")):  # as the live `container rm c1` holds it
        assert gd(tmp_path, "cleanup").stdout == b""
        assert record.exists()
        assert {b"c1", b"c1-init"} <= set(gd(tmp_path, "layers").stdout.split())
    # Once that command is dead (its lock file left behind), cleanup finishes its work.
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert done == "removed container c1 left by an interrupted removal\n", done
    assert not record.exists()
    assert not {b"c1", b"c1-init"} & set(gd(tmp_path, "layers").stdout.split())
    assert os.listdir(tmp_path / "store/containers") == []
    assert gd(tmp_path, "cleanup").stdout == b""


def test_an_image_removal_killed_half_way_is_finished_by_cleanup(tmp_path):
    a, b = two_images(tmp_path)
    layers = [entry["Layer"] for entry in a["Layers"]]  # base first; the base is b's too
    images = tmp_path / "store/images"
    # What `image rm localhost/a:1` leaves when killed once its record is gone: its marker,
    # written first, naming the layers it frees (its lock died with it).
    (images / "pending").mkdir(exist_ok=True)
    (images / "pending/0123456789abcdef.json").write_text(json.dumps(
        {"what": "image rm localhost/a:1", "layers": [], "uses": [], "frees": layers, "pid": 1}))
    (images / "records" / (a["Id"][7:] + ".json")).unlink()
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert f"removed layer {layers[1]} left by an interrupted image rm localhost/a:1" in done
    remaining = set(gd(tmp_path, "layers").stdout.decode().split())
    assert layers[1] not in remaining and layers[0] in remaining  # b keeps its layer
    assert inspect(tmp_path, "localhost/b:1")["Id"] == b["Id"]
    assert gd(tmp_path, "cleanup").stdout == b""


def test_cleanup_removes_half_written_image_and_container_records(tmp_path):
    two_images(tmp_path)
    gd(tmp_path, "container", "create", "localhost/b:1", "c1")
    store = tmp_path / "store"
    left = [store / "images/pending/.tmp-0123.json-4242", store / "images/records/.tmp-abcd.json-4242",
            store / "containers/.tmp-c2.json-4242"]  # what writers killed mid-write leave
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_text("{")
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert all(f"removed half-written file {path.name}" in done for path in left), done
    assert not any(path.exists() for path in left)
    assert json.loads(gd(tmp_path, "container", "ls", "--json").stdout)[0]["name"] == "c1"


def test_a_failed_oci_save_into_a_new_folder_leaves_no_folder(tmp_path):
    a, _ = two_images(tmp_path)
    blobs = tmp_path / "store/images/blobs/sha256"
    manifest = json.loads((blobs / a["ManifestDigest"][7:]).read_bytes())
    (blobs / manifest["layers"][-1]["digest"][7:]).unlink()  # its top layer's blob lost: the save fails
    out = tmp_path / "new-layout"
    proc = gd(tmp_path, "image", "save", "localhost/a:1", "-o", str(out), "--format", "oci", check=False)
    assert proc.returncode != 0 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert not out.exists()


def test_an_image_removed_while_a_container_is_made_of_it_leaves_no_layer(tmp_path, monkeypatch):
    """image rm in the middle of container create: rm keeps the image's layers (the new init
    layer sits on them), create fails as the image is gone; its layers go then, not left to
    prune."""
    import graphdriver
    from graphdriver.images import container_layers, manage

    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    store = graphdriver.open_store(str(tmp_path / "store"), run_root=str(tmp_path / "run"), driver="vfs")
    manage.load(store, str(tmp_path / "in"))
    make_init = container_layers._make_init
    removals = []

    def init_then_image_rm(*args, **kwargs):  # type: ignore[no-untyped-def]
        make_init(*args, **kwargs)
        removals.append(manage.remove(store, "localhost/made:1"))

    monkeypatch.setattr(container_layers, "_make_init", init_then_image_rm)
    with pytest.raises(NotFound):
        container_layers.create(store, "localhost/made:1", "c1")
    assert removals[0].deleted is not None and removals[0].freed == []  # kept: the init sat on them
    assert [layer.id for layer in store.layers()] == []


@pytest.mark.parametrize("text", ["2019-02-30T00:00:00Z", "2020-01-01T24:00:00Z", "2020-01-01T00:00:00+99:00",
                                  "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"])
def test_a_time_no_calendar_has_is_shown_as_it_is(text):
    from graphdriver.climages import _utc

    assert _utc(text) == text[:19].replace("T", " ")


_TIME_PARTS = st.sampled_from(["2020", "2019", "0000", "9999", "12", "13", "02", "30", "31", "24", "60", "59",
                                "00", "-", ":", "T", "t", " ", ".", "5", "123", "\u0663", "Z", "z", "+01:00"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.lists(_TIME_PARTS, max_size=16).map("".join),
    st.tuples(st.sampled_from(["2020", "2019", "0000", "\u0663\u0660\u0662\u0660"]),
              st.sampled_from(["01", "02", "12", "13"]), st.sampled_from(["01", "28", "30", "31"]),
              st.sampled_from(["T", "t", " ", "x"]), st.sampled_from(["00", "23", "24"]),
              st.sampled_from(["00", "59", "60"]), st.sampled_from(["", ".", ".5", ".123456789", ".x"]),
              st.sampled_from(["Z", "z", "", "+02:00"]))
    .map(lambda p: f"{p[0]}-{p[1]}-{p[2]}{p[3]}{p[4]}:{p[5]}:{p[5]}{p[6]}{p[7]}"),
))
def test_a_time_in_utc_is_shown_as_the_full_parse_shows_it(text):
    """The short way for times in UTC (no re, no datetime) gives what the full parse gives."""
    from graphdriver.climages import _utc, _utc_parsed

    assert _utc(text) == _utc_parsed(text)


@settings(max_examples=400, deadline=None)
@given(st.text("ab09._-", max_size=12))
def test_a_path_component_is_checked_as_docker_s_grammar_says(comp):
    import re

    from graphdriver.images.reference import _component_ok

    grammar = re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", comp) is not None
    assert _component_ok(comp) == grammar


@settings(max_examples=600, deadline=None)
@given(st.text("aZ09-.:[]f", max_size=14))
def test_a_registry_name_is_checked_as_docker_s_grammar_says(domain):
    import re

    from graphdriver.images.reference import _domain_ok

    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    host = rf"(?:{label}(?:\.{label})*|\[[0-9A-Fa-f:.]+\])"
    assert _domain_ok(domain) == (re.fullmatch(rf"{host}(?::[0-9]+)?", domain) is not None)


def test_a_second_manifest_pulled_by_digest_is_kept_for_that_reference():
    from graphdriver.images.loading import _merge
    from graphdriver.images.records import ImageRecord
    from graphdriver.images.sources import SourceImage

    m1, m2, b1, b2 = ("sha256:" + c * 64 for c in "1234")
    previous = ImageRecord("sha256:" + "c" * 64, ["example.com/app:1"], ["l"], ["d"], manifest=m1,
                           layer_blobs=[{"digest": b1}])
    record = ImageRecord(previous.id, [], ["l"], ["d"], manifest=m2, layer_blobs=[{"digest": b2}],
                         digests=[f"example.com/app@{m2}"])
    _merge(record, previous, SourceImage(b"{}", [], [], b"{}", [f"example.com/app@{m2}"]))
    assert record.manifest == m1 and {m1, m2, b1, b2} <= set(record.blobs())
    assert record.as_named(reference.parse(f"example.com/app@{m2}")).manifest == m2
    assert record.as_named(reference.parse("example.com/app:1")).manifest == m1
    assert record.manifests_in("example.com/app") == {m1, m2}


@pytest.mark.parametrize(("machine", "host", "windows"), [
    ("x86_64", "linux/amd64", "windows/amd64"), ("aarch64", "linux/arm64", "windows/arm64"),
    ("armv7l", "linux/arm/v7", "windows/arm/v7"), ("riscv64", "linux/riscv64", "windows/riscv64"),
])
def test_this_machines_platform_as_go_names_it(monkeypatch, machine, host, windows):
    import os

    from graphdriver.images import sources

    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "r", "v", machine)))
    assert sources.host_platform() == host
    assert sources.store_platform("windowsfilter") == windows and sources.store_platform("vfs") == host


@pytest.mark.parametrize(("given", "parsed"), [
    ("linux/x86_64", ("linux", "amd64", "")), ("linux/aarch64", ("linux", "arm64", "")),
    ("linux/arm/7", ("linux", "arm", "v7")), ("linux/armhf", ("linux", "arm", "v7")),
    ("linux/armel", ("linux", "arm", "v6")), ("LINUX/AMD64", ("linux", "amd64", "")),
    ("linux/arm64/v8", ("linux", "arm64", "v8")),
])
def test_platform_names_are_normalized_as_containerd_does(given, parsed):
    from graphdriver.images.sources import parse_platform

    assert parse_platform(given) == parsed


def test_a_cleanup_the_moment_a_load_says_what_it_does_leaves_the_load_alone(tmp_path, monkeypatch, capsys):
    """A load's marker appeared before its lock was taken: a cleanup in between took the
    live load for a dead one, removed its marker (and could remove the lock file the load
    then held, so that the next cleanup removed the live load's new layers)."""
    from graphdriver import cli
    from graphdriver.images import loading

    oci_layout(tmp_path / "in", [LAYER1, LAYER2])
    marker_seen: list[tuple[bytes, bool]] = []
    write = loading.Pending._write

    def write_then_cleanup(self: loading.Pending) -> None:
        write(self)
        if not marker_seen:  # the marker's first appearance: a cleanup runs right then
            done = gd(tmp_path, "cleanup").stdout
            marker_seen.append((done, os.path.exists(self.path)))

    monkeypatch.setattr(loading.Pending, "_write", write_then_cleanup)
    code = cli.main(["--root", str(tmp_path / "store"), "--run-root", str(tmp_path / "run"),
                     "--driver", "vfs", "image", "load", str(tmp_path / "in")])
    assert code == 0, capsys.readouterr().err
    assert marker_seen == [(b"", True)]
    assert gd(tmp_path, "cleanup").stdout == b""
    assert len(gd(tmp_path, "layers").stdout.split()) == 2
    assert os.listdir(tmp_path / "store/images/pending") == []


def test_the_lock_file_of_a_load_killed_before_or_after_its_marker_is_removed_by_cleanup(tmp_path):
    from graphdriver.fs.locking import locked

    pending = tmp_path / "store/images/pending"
    pending.mkdir(parents=True)
    dead, live = pending / "0123456789abcdef.json.lock", pending / "fedcba9876543210.json.lock"
    dead.touch()
    with locked(str(live)):  # a load that has its lock and is about to write its marker
        done = gd(tmp_path, "cleanup").stdout.decode()
        assert done == ("removed the lock file 0123456789abcdef.json.lock of an interrupted load,"
                        " pull or removal\n"), done
        assert live.exists() and not dead.exists()
    assert gd(tmp_path, "cleanup").stdout == b"removed the lock file fedcba9876543210.json.lock of" \
        b" an interrupted load, pull or removal\n"
    assert gd(tmp_path, "cleanup").stdout == b""


# ----- a name moving from one image to another, killed at every step --------------------------------

_KILLED_AT_A_WRITE = """
import os, sys
sys.path.insert(0, {src!r})
from graphdriver import cli
images, writes = {images!r}, [0]
def dying(real):
    def rename(src, dst, *args, **kw):
        if os.path.abspath(dst).startswith(images):
            writes[0] += 1
            if writes[0] == {n}:
                os._exit(9)  # killed just before this write into the image store lands
        return real(src, dst, *args, **kw)
    return rename
os.replace, os.rename = dying(os.replace), dying(os.rename)
sys.exit(cli.main({args!r}))
"""


def _named(root: Path, name: str) -> tuple[list[str], set[str], set[str]]:
    """The ids of the images named *name*, of every image with a name, and of every image."""
    from tests.conftest import run_cli

    listed = json.loads(run_cli("image", "ls", "--json", root=root, driver="vfs", check=True).stdout)
    return ([i["id"] for i in listed if name in i["names"]], {i["id"] for i in listed if i["names"]},
            {i["id"] for i in listed})


@pytest.mark.parametrize("move", ["tag", "load", "commit"])
def test_a_name_moving_to_another_image_killed_at_any_step_keeps_one_image(tmp_path, move):
    """`image tag`, `image load` and `container commit` take a name from the image that has it:
    killed at any write, the name stays with one image, the old one or the new one, the same
    before and after cleanup, and prune (which removes unnamed images) never removes the old
    image while it has the name."""
    import shutil

    from tests.conftest import run_cli

    name = "localhost/a:1"
    template = tmp_path / "template" / "store"
    a, b = two_images(template.parent)
    run_cli("container", "create", "localhost/b:1", "c", root=template, driver="vfs", check=True)
    oci_layout(tmp_path / "new", [make_tar({"srv/new": F(b"new\n")})], name=name)
    args = {"tag": ["image", "tag", "localhost/b:1", name],
            "load": ["image", "load", str(tmp_path / "new")],
            "commit": ["container", "commit", "c", name]}[move]
    for n in range(1, 100):
        root = tmp_path / str(n) / "store"
        shutil.copytree(template, root, symlinks=True)
        script = _KILLED_AT_A_WRITE.format(src=str(ROOT / "src"), images=str(root / "images"), n=n, args=[
            "--root", str(root), "--run-root", str(root.parent / "run"), "--driver", "vfs", *args])
        proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
        assert proc.returncode in (0, 9), proc.stderr
        holders = _named(root, name)[0]
        assert len(holders) == 1, f"killed at write {n}: {holders}"
        inspected = run_cli("image", "inspect", name, root=root, driver="vfs", check=True)
        assert json.loads(inspected.stdout)["Id"] == holders[0]
        run_cli("cleanup", root=root, driver="vfs", check=True)
        after_cleanup, named, _ = _named(root, name)
        assert after_cleanup == holders, f"killed at write {n}"
        run_cli("prune", root=root, driver="vfs", check=True)
        after_prune, _, listed = _named(root, name)
        assert after_prune == holders and named <= listed, f"killed at write {n}"
        shutil.rmtree(root.parent)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0 and n > 2  # the whole move ran once, after a kill at each step before
    assert holders != [a["Id"]] and b["Id"] in listed and a["Id"] not in listed

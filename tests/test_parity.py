"""Layer commands at parity with containers-storage: compressed diffs, mount counts."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from graphdriver.testing.treeutil import D, F, make_tar
from tests.conftest import IS_ROOT, run_cli

LAYER = make_tar({"etc": D(), "etc/motd": F(b"hello\n" * 1000), "bin": D(), "bin/x": F(b"\x7fELF" * 500)})


def gd(tmp_path: Path, driver: str, *args: str, check: bool = True, input: bytes | None = None):
    return run_cli(*args, root=tmp_path / "store", driver=driver, check=check, input=input)


def test_diff_compressed_gives_the_bit_exact_tarball_back(tmp_path, driver_name):
    gd(tmp_path, driver_name, "import", "l", "-", input=gzip.compress(LAYER))
    assert json.loads(gd(tmp_path, driver_name, "layer", "l").stdout)["compression"] == "gzip"
    plain = gd(tmp_path, driver_name, "diff", "l").stdout
    assert plain == LAYER
    assert gzip.decompress(gd(tmp_path, driver_name, "diff", "l", "--compress", "gzip").stdout) == LAYER
    import zstandard

    packed = gd(tmp_path, driver_name, "diff", "l", "--compress", "zstd").stdout
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == LAYER
    refused = gd(tmp_path, driver_name, "diff", "l", "--compress", "original", check=False)
    assert refused.returncode == 5 and refused.stdout == b"" and b"not kept" in refused.stderr
    bad = gd(tmp_path, driver_name, "diff", "l", "--compress", "lz4", check=False)
    assert bad.returncode == 2


def test_diff_compress_original_gives_the_kept_blob(tmp_path):
    from tests.test_images import oci_layout

    oci_layout(tmp_path / "in", [LAYER], name="localhost/o:1")
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    inspected = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/o:1").stdout)
    layer_id = inspected["Layers"][0]["Layer"]
    blob = gd(tmp_path, "vfs", "diff", layer_id, "--compress", "original").stdout
    assert blob == gzip.compress(LAYER, mtime=0)  # the layout's blob, byte for byte
    # Those bytes are the layer over its own parent, as imported: nothing else is asked of them.
    gd(tmp_path, "vfs", "import", "other", "-", input=LAYER)
    for extra in (["--parent", "other"], ["--regenerate"]):
        out = tmp_path / "out.gz"
        refused = gd(tmp_path, "vfs", "diff", layer_id, "--compress", "original", *extra, "-o", str(out),
                     check=False)
        assert (refused.returncode, refused.stdout, out.exists()) == (2, b"", False), extra
        assert refused.stderr.decode().startswith("graphdriver: --compress original: "), refused.stderr


def test_diff_compress_original_of_an_uncompressed_layout_blob_is_the_tarball(tmp_path):
    """An OCI layout's uncompressed layer blob is the layer's tarball: given back as it came."""
    from tests.test_images import oci_layout

    oci_layout(tmp_path / "in", [LAYER], name="localhost/o:1", gzipped=False)
    gd(tmp_path, "vfs", "image", "load", str(tmp_path / "in"))
    inspected = json.loads(gd(tmp_path, "vfs", "image", "inspect", "localhost/o:1").stdout)
    layer_id = inspected["Layers"][0]["Layer"]
    assert gd(tmp_path, "vfs", "diff", layer_id, "--compress", "original").stdout == LAYER


def test_mounted_counts_across_processes_and_unmount_force_drops_them(tmp_path, driver_name):
    gd(tmp_path, driver_name, "create", "l")
    assert gd(tmp_path, driver_name, "mounted", "l").stdout == b"0\n"
    assert "mount_count" in json.loads(gd(tmp_path, driver_name, "layer", "l").stdout)
    path = gd(tmp_path, driver_name, "mount", "l").stdout.decode().strip()
    gd(tmp_path, driver_name, "mount", "l")
    assert gd(tmp_path, driver_name, "mounted", "l").stdout == b"2\n"
    record = json.loads(gd(tmp_path, driver_name, "layer", "l").stdout)
    assert record["mount_count"] == 2 and record["mount_point"] == path
    out = gd(tmp_path, driver_name, "unmount", "--force", "l").stdout.decode()
    assert out == "unmounted l (dropped 2 mounts)\n"
    assert gd(tmp_path, driver_name, "mounted", "l").stdout == b"0\n"
    assert "mount_point" not in json.loads(gd(tmp_path, driver_name, "layer", "l").stdout)
    gd(tmp_path, driver_name, "remove", "l")
    assert gd(tmp_path, driver_name, "mounted", "l", check=False).returncode == 3


@pytest.mark.skipif(shutil.which("containers-storage") is None or not IS_ROOT,
                    reason="needs root and containers-storage (apt-get install containers-storage)")
def test_diff_gzip_decompresses_to_what_containers_storage_gives(tmp_path):
    (tmp_path / "l.tar").write_bytes(LAYER)
    cs = ["containers-storage", "--graph", str(tmp_path / "cs"), "--run", str(tmp_path / "cs-run"),
          "--storage-driver", "vfs"]
    out = subprocess.run([*cs, "import-layer", "-f", str(tmp_path / "l.tar")], check=True,
                         capture_output=True, text=True).stdout.split()
    cs_id = out[-1] if out else ""
    theirs = subprocess.run([*cs, "diff", "-c", cs_id], check=True, capture_output=True).stdout
    subprocess.run([*cs, "shutdown"], check=False, capture_output=True)
    gd(tmp_path, "vfs", "import", "l", str(tmp_path / "l.tar"))
    ours = gd(tmp_path, "vfs", "diff", "l", "--compress", "gzip").stdout
    assert gzip.decompress(ours) == gzip.decompress(theirs) == LAYER

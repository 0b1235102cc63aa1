#!/usr/bin/env python3
"""Loading and pulling an image, side by side with ``skopeo copy ... containers-storage:``.

The image is the Debian bookworm minbase root filesystem as one layer (made
with debootstrap and cached, as for the import benchmark), written once as a
docker-archive (the uncompressed layer) and as an oci-archive (the layer
gzip-compressed).  Each tool loads it into a fresh empty store with the vfs
driver, in turns, the data made durable (syncfs) counted for both.  Then the
oci-archive is copied into a local registry (Debian's ``docker-registry`` on
127.0.0.1, plain http) and pulled: ``graphdriver image pull --insecure``
against ``skopeo copy docker://... containers-storage:``.  Prints medians and
ratios.  Run as root:

    python bench/image_bench.py [--rounds 5] [--where tmpfs|disk|both]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from common import (
    CACHE,
    add_member,
    debian_layer,
    fresh,
    gd,
    graphdriver_command,
    have,
    image_config,
    mib,
    place,
    places,
    report,
    take_turns,
    warm,
    write_docker_archive,
)

NAME = "localhost/bench/deb:1"


def archives() -> tuple[Path, Path]:
    """The docker-archive and the oci-archive of the Debian image (made once, cached)."""
    docker, oci = CACHE / "bench-deb-docker.tar", CACHE / "bench-deb-oci.tar"
    if docker.exists() and oci.exists():
        return docker, oci
    layer = debian_layer().read_bytes()
    _diff_id, config, config_digest = image_config(layer)
    write_docker_archive(docker.with_suffix(".partial"), layer, NAME)
    docker.with_suffix(".partial").rename(docker)
    blob = gzip.compress(layer, compresslevel=6, mtime=0)
    blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    image_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob_digest,
                    "size": len(blob)}]}).encode()
    manifest_digest = "sha256:" + hashlib.sha256(image_manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(image_manifest), "annotations": {"org.opencontainers.image.ref.name": NAME}}]}).encode()
    with tarfile.open(oci.with_suffix(".partial"), "w") as tf:
        add_member(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_member(tf, "index.json", index)
        for digest, data in ((config_digest, config), (blob_digest, blob), (manifest_digest, image_manifest)):
            add_member(tf, f"blobs/sha256/{digest[7:]}", data)
    oci.with_suffix(".partial").rename(oci)
    return docker, oci


def run_graphdriver(archive: Path, work: Path) -> None:
    gd(work, "vfs", "image", "load", str(archive))


def run_skopeo(archive: Path, work: Path) -> None:
    transport = "oci-archive" if "oci" in archive.name else "docker-archive"
    dest = f"containers-storage:[vfs@{work / 'cs'}+{work / 'cs-run'}]{NAME}"
    subprocess.run(["skopeo", "copy", "-q", f"{transport}:{archive}", dest], check=True,
                   stdout=subprocess.DEVNULL)


def run_graphdriver_pull(ref: Path, work: Path) -> None:
    gd(work, "vfs", "-q", "image", "pull", "--insecure", str(ref))


def run_skopeo_pull(ref: Path, work: Path) -> None:
    dest = f"containers-storage:[vfs@{work / 'cs'}+{work / 'cs-run'}]{NAME}"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", dest], check=True,
                   stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def local_registry(oci: Path) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 holding the image; yields its reference."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    folder = Path(tempfile.mkdtemp())
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {folder / 'data'}\nhttp:\n  addr: {host}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        ref = f"{host}/bench/deb:1"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci-archive:{oci}",
                        f"docker://{ref}"], check=True)
        yield ref
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--where", choices=["tmpfs", "disk", "both"], default="both")
    args = p.parse_args()
    graphdriver_command()  # installed now: no round may time pip
    docker, oci = archives()
    for archive in (docker, oci):
        warm(archive)
        for where in places(args.where):
            with place(where) as base:
                tools = {"graphdriver": fresh(base, archive, run_graphdriver)}
                if have("skopeo"):
                    tools["skopeo-copy"] = fresh(base, archive, run_skopeo)
                report(f"image load of {archive.name} ({mib(archive)}) on {where}",
                       take_turns(tools, args.rounds))
    if have("docker-registry") and have("skopeo"):
        with local_registry(oci) as ref:
            for where in places(args.where):
                with place(where) as base:
                    tools = {"graphdriver": fresh(base, Path(ref), run_graphdriver_pull),
                             "skopeo-copy": fresh(base, Path(ref), run_skopeo_pull)}
                    report(f"image pull of {ref} ({mib(oci)} gzip) from a local registry on {where}",
                           take_turns(tools, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pull and push against a real registry (Debian's docker-registry on 127.0.0.1), with skopeo beside us."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, run_cli
from tests.test_images import LAYER1, LAYER2, built, oci_layout  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs docker-registry and skopeo (apt-get install docker-registry skopeo)",
)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for the registry's htpasswd file (the C library's, through crypt)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("this Python has no crypt module to make a bcrypt htpasswd entry")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """A docker-registry serving from its own folder on 127.0.0.1."""

    def __init__(self, folder: Path, auth: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = folder / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {folder / 'data'}
http:
  addr: {self.host}
{auth}""")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # up, asking for credentials
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry-folder")
    yield reg
    reg.stop()


def gd(tmp_path: Path, *args: str, check: bool = True, env: dict[str, str] | None = None):
    if env:
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
    try:
        return run_cli(*args, root=tmp_path / "store", driver="vfs", check=check)
    finally:
        if env:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def skopeo_json(*args: str) -> dict:
    return json.loads(subprocess.run(["skopeo", *args], check=True, capture_output=True).stdout)


def test_pull_run_commit_push_and_skopeo_finds_the_commit(tmp_path, registry, built):  # noqa: F811
    if not IS_ROOT:
        pytest.skip("needs root")
    src = f"{registry.host}/gd/top:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci-archive:{built / 'top-oci.tar'}",
                    f"docker://{src}"], check=True)
    pulled = gd(tmp_path, "image", "pull", src, "--insecure")
    assert pulled.stdout.decode().strip() == src
    assert pulled.stderr == b""  # off a terminal, nothing but what was skipped
    gd(tmp_path, "container", "create", src, "c1")
    root = Path(gd(tmp_path, "mount", "c1").stdout.decode().strip())
    try:
        assert (root / "srv/hello.txt").exists() and not (root / "usr/share/doc").exists()
        (root / "srv/committed.txt").write_bytes(b"from the container\n")
    finally:
        gd(tmp_path, "unmount", "c1")
    dest = f"{registry.host}/gd/committed:1"
    gd(tmp_path, "container", "commit", "c1", dest)
    pushed = gd(tmp_path, "-v", "image", "push", dest, dest, "--insecure")
    digest = pushed.stdout.decode().strip()
    assert b"mounted from another repository" in pushed.stderr  # the image's own layers, not sent again
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{dest}")
    assert info["Digest"] == digest and len(info["Layers"]) == 3
    out = tmp_path / "pulled-by-skopeo"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{dest}", f"dir:{out}"],
                   check=True)
    top = out / info["Layers"][-1].removeprefix("sha256:")
    listing = subprocess.run(["tar", "-tzf", str(top)], check=True, capture_output=True).stdout.decode()
    assert listing.split() == ["srv/", "srv/committed.txt"]
    # Pushing again sends nothing and keeps the digest; pulling the pushed image into a new store works.
    again = gd(tmp_path, "-v", "image", "push", dest, dest, "--insecure")
    assert again.stdout.decode().strip() == digest and b"uploaded" not in again.stderr
    other = tmp_path / "other"
    other.mkdir()
    assert gd(other, "image", "pull", dest, "--insecure").stdout.decode().strip() == dest


def test_push_of_a_loaded_image_then_pull_by_digest(tmp_path, registry):
    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    dest = f"{registry.host}/made:1"
    first = gd(tmp_path, "image", "push", "localhost/made:1", dest, "--insecure")
    assert first.stderr == b""  # off a terminal, only what was skipped is told
    digest = first.stdout.decode().strip()
    # The kept manifest went up as it was: its digest is the layout's.
    index = json.loads((tmp_path / "in/index.json").read_text())
    assert digest == index["manifests"][0]["digest"]
    # The push is remembered (as Docker's RepoDigests): a push to another repository of the
    # registry mounts every blob from the first instead of sending it again.
    inspected = json.loads(gd(tmp_path, "image", "inspect", "localhost/made:1").stdout)
    assert f"{registry.host}/made@{digest}" in inspected["RepoDigests"]
    second = gd(tmp_path, "-v", "image", "push", "localhost/made:1", f"{registry.host}/team/copy:1",
                "--insecure")
    assert second.stdout.decode().strip() == digest
    assert b"uploaded" not in second.stderr and second.stderr.count(b"mounted from another repository") == 3
    # Every RepoDigest inspect lists names the image; removing one forgets it, and the image stays.
    pushed = f"{registry.host}/team/copy@{digest}"
    assert json.loads(gd(tmp_path, "image", "inspect", pushed).stdout)["Id"] == inspected["Id"]
    assert gd(tmp_path, "image", "rm", pushed).stdout == f"Untagged: {pushed}\n".encode()
    after = json.loads(gd(tmp_path, "image", "inspect", "localhost/made:1").stdout)
    assert pushed not in after["RepoDigests"]
    other = tmp_path / "other"
    other.mkdir()
    by_digest = f"{registry.host}/made@{digest}"
    pulled = gd(other, "image", "pull", by_digest, "--tls-verify=false")  # podman's spelling
    assert pulled.returncode == 0 and pulled.stderr == b"", pulled.stderr
    inspected = json.loads(gd(other, "image", "inspect", by_digest).stdout)
    assert inspected["ManifestDigest"] == digest
    missing = gd(other, "image", "pull", f"{registry.host}/nothing:1", "--insecure", check=False)
    assert missing.returncode == 3 and missing.stderr.count(b"\n") == 1
    # On a new root such a pull makes nothing, as a failed layer command.
    missing = gd(tmp_path / "new", "image", "pull", f"{registry.host}/nothing:1", "--insecure", check=False)
    assert missing.returncode == 3 and not (tmp_path / "new").exists()


def test_push_without_a_ref_goes_where_the_name_says(tmp_path, registry):
    """As ``docker push NAME``: the image goes to its name; an image id names no repository."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/solo:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    name = f"{registry.host}/team/solo:1"
    gd(tmp_path, "image", "tag", "localhost/solo:1", name)
    pushed = gd(tmp_path, "--json", "image", "push", name, "--insecure")
    out = json.loads(pushed.stdout)
    assert out["ref"] == name
    theirs = skopeo_json("inspect", "--tls-verify=false", f"docker://{name}")
    assert theirs["Digest"] == out["digest"]
    image_id = json.loads(gd(tmp_path, "image", "inspect", name).stdout)["Id"]
    by_id = gd(tmp_path, "image", "push", image_id, "--insecure", check=False)
    assert (by_id.returncode, by_id.stderr.count(b"\n")) == (2, 1), by_id.stderr
    missing = gd(tmp_path, "image", "push", f"{registry.host}/team/none:1", "--insecure", check=False)
    assert missing.returncode == 3, missing.stderr


def test_image_rm_names_a_reference_both_pulled_and_pushed_once(tmp_path, registry):
    """A digested reference kept from a pull and again from a push to that repository is
    one name: ``image rm`` says it once, as ``docker rmi`` does, in text and in JSON."""
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/twice:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/twice:1"], check=True)
    by_digest = f"{registry.host}/twice@{digest}"
    gd(tmp_path, "image", "pull", by_digest, "--insecure")
    gd(tmp_path, "image", "push", by_digest, f"{registry.host}/twice:2", "--insecure")
    gd(tmp_path, "image", "tag", by_digest, "localhost/twice:1")
    out = json.loads(gd(tmp_path, "--json", "image", "rm", by_digest).stdout)
    assert out["untagged"] == [by_digest]
    gd(tmp_path, "image", "pull", by_digest, "--insecure")
    gd(tmp_path, "image", "push", by_digest, f"{registry.host}/twice:2", "--insecure")
    gone = gd(tmp_path, "image", "rm", "localhost/twice:1", by_digest).stdout.decode()
    assert gone.count(f"Untagged: {by_digest}\n") == 1, gone


def test_a_push_to_a_digest_checks_it_names_the_manifest_before_any_upload(tmp_path, registry):
    """REPO@sha256:... names one manifest: another image's is a usage error (exit 2) told before
    any blob goes up (the registry refused it only once every blob was sent); its own goes up
    untagged, and skopeo finds it by that digest."""
    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    other = "sha256:" + "0" * 64
    wrong = gd(tmp_path, "image", "push", "localhost/made:1", f"{registry.host}/made@{other}", "--insecure",
               check=False)
    assert (wrong.returncode, wrong.stderr.count(b"\n"), wrong.stdout) == (2, 1, b""), wrong.stderr
    assert digest.encode() in wrong.stderr and other.encode() in wrong.stderr
    blobs = _registry_blob(registry, digest).parents[2]
    assert not blobs.exists() or not any(blobs.iterdir())  # nothing went up
    right = gd(tmp_path, "image", "push", "localhost/made:1", f"{registry.host}/made@{digest}", "--insecure")
    assert right.stdout.decode().strip() == digest
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/made@{digest}"], check=True, capture_output=True).stdout
    assert raw == (tmp_path / "in/blobs/sha256" / digest[7:]).read_bytes()
    tagged = gd(tmp_path, "image", "push", "localhost/made:1", f"{registry.host}/made:1", "--insecure")
    assert tagged.stdout.decode().strip() == digest
    theirs = skopeo_json("inspect", "--tls-verify=false", f"docker://{registry.host}/made:1")
    assert theirs["RepoTags"] == ["1"]  # the push by digest made no tag (no "latest")


@contextlib.contextmanager
def fake_registry(answer: Callable[[str], tuple[int, bytes, dict[str, str]]]) -> Iterator[str]:
    """A registry on localhost answering each GET, HEAD, POST and PUT with ``answer(path)``:
    (status, body, headers), a HEAD without its body, the body of a POST or PUT read first;
    yields its host."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body, headers = answer(self.path)
            self.send_response(code)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

        do_HEAD = do_GET
        do_PUT = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_refusals_are_told_in_words(tmp_path):
    """A 401 without a challenge is a refusal (exit 1), not an unsupported scheme (7); an
    error body without a message and a refused connection read as words, not as Python."""
    unknown = b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
    with fake_registry(lambda path: (401, b"", {}) if "/bare/" in path else (404, unknown, {})) as host:
        bare = gd(tmp_path, "image", "pull", f"{host}/bare/x:1", "--insecure", check=False)
        assert bare.returncode == 1 and b"WWW-Authenticate" in bare.stderr, bare.stderr
        missing = gd(tmp_path, "image", "pull", f"{host}/gone:1", "--insecure", check=False)
        assert missing.returncode == 3, missing.stderr
        assert missing.stderr.endswith(b"HTTP 404 (MANIFEST_UNKNOWN)\n"), missing.stderr
    refused = gd(tmp_path, "image", "pull", f"{host}/gone:1", "--insecure", check=False)  # ~8 s of retries
    assert refused.returncode == 1 and refused.stderr.endswith(b"connection refused\n"), refused.stderr


def test_a_push_to_a_repository_the_registry_does_not_know_is_a_registry_failure(tmp_path):
    """A registry answering a push's upload (or its manifest) with 404 NAME_UNKNOWN refuses the
    repository: exit 1 in one line naming it, never 3, which says the image pushed is not here.
    A 404 whose body is JSON but no error object says the same in words, not as Python."""
    unknown = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    has_blobs, body = False, unknown

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        if "/blobs/sha256:" in path:  # the HEAD asking whether the registry has a blob
            return (200 if has_blobs else 404), b"", {}
        return 404, body, {"Content-Type": "application/json"}

    with fake_registry(answer) as host:
        # Refused at the first upload; at the manifest; with a body that holds no errors.
        for has_blobs, body in ((False, unknown), (True, unknown), (False, b"[]")):
            r = gd(tmp_path, "image", "push", "localhost/made:1", f"{host}/team/app:1", "--insecure",
                   check=False)
            assert (r.returncode, r.stderr.count(b"\n"), r.stdout) == (1, 1, b""), (has_blobs, r.stderr)
            assert b"HTTP 404" in r.stderr and b"no repository team/app to push to" in r.stderr, r.stderr
            assert (b"NAME_UNKNOWN" in r.stderr) == (body == unknown), r.stderr


def test_a_registry_port_out_of_range_is_a_usage_error(tmp_path):
    """``localhost:99999/x`` is a name Docker's grammar allows, but no registry can be there: a
    usage error (2) before anything is asked, not the HTTP library's words about a URL (1)."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/p:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    for ref in ("localhost:99999/x:1", "localhost:0/x:1", "[::1]:70000/x:1"):
        for args in (("image", "pull", ref), ("image", "push", "localhost/p:1", ref)):
            r = gd(tmp_path, *args, "--insecure", check=False)
            assert (r.returncode, r.stderr.count(b"\n")) == (2, 1), (args, r.stderr)
            assert b"a port is 1 to 65535" in r.stderr, r.stderr


def test_basic_auth_with_credentials_from_the_auth_file(tmp_path):
    folder = tmp_path / "registry-folder"
    folder.mkdir()
    (folder / "htpasswd").write_text(f"alice:{bcrypt_hash('s3cret')}\n")
    reg = Registry(folder, auth=f"auth:\n  htpasswd:\n    realm: test\n    path: {folder / 'htpasswd'}\n")
    try:
        oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        dest = f"{reg.host}/team/made:1"
        refused = gd(tmp_path, "image", "push", "localhost/made:1", dest, "--insecure", check=False,
                     env={"REGISTRY_AUTH_FILE": str(tmp_path / "none.json")})
        assert refused.returncode == 1 and b"credentials" in refused.stderr
        auth = tmp_path / "auth.json"
        secret = base64.b64encode(b"alice:s3cret").decode()
        auth.write_text(json.dumps({"auths": {reg.host: {"auth": secret}}}))
        env = {"REGISTRY_AUTH_FILE": str(auth)}
        gd(tmp_path, "image", "push", "localhost/made:1", dest, "--insecure", env=env)
        other = tmp_path / "other"
        other.mkdir()
        assert gd(other, "image", "pull", dest, "--insecure", env=env).returncode == 0
    finally:
        reg.stop()


class DroppingProxy:
    """A TCP proxy to *target* that cuts the first connection carrying more than *cut* bytes back."""

    def __init__(self, target: str, cut: int) -> None:
        self.target = target
        self.cut = cut
        self.dropped = 0
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            host, port = self.target.split(":")
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, back: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                sent += len(data)
                if back and self.dropped == 0 and sent > self.cut:
                    self.dropped += 1
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()


def test_a_pull_resumes_a_blob_whose_connection_dropped(tmp_path, registry):
    big = os.urandom(3 << 20)  # incompressible: the blob stays big
    from graphdriver.testing.treeutil import F, make_tar

    layer = make_tar({"big": F(big)})
    oci_layout(tmp_path / "in", [layer], name="localhost/big:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/big:1"], check=True)
    proxy = DroppingProxy(registry.host, cut=1 << 20)
    try:
        pulled = gd(tmp_path, "image", "pull", f"{proxy.host}/big:1", "--insecure")
    finally:
        proxy.close()
    assert proxy.dropped == 1
    assert pulled.returncode == 0
    inspected = json.loads(gd(tmp_path, "image", "inspect", f"{proxy.host}/big:1").stdout)
    layer_id = inspected["Layers"][0]["Layer"]
    root = Path(gd(tmp_path, "mount", layer_id).stdout.decode().strip())
    try:
        assert (root / "big").read_bytes() == big
    finally:
        gd(tmp_path, "unmount", layer_id)


# ----- bearer tokens: a small token service signing JWTs with a throw-away key ---------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Hands out RS256 tokens for the scope asked, as a registry's token realm does; counts requests."""

    def __init__(self, folder: Path, service: str) -> None:
        import http.server

        self.key, self.cert = folder / "key.pem", folder / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "1", "-subj", "/CN=token-issuer"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.service = service
        self.scopes: list[str] = []
        #: How the next requests fail, one each: a status (``"503"``; ``"429"`` says Retry-After: 0)
        #: or ``"drop"`` (the connection closed without an answer).
        self.failing: list[str] = []
        self.asked = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                owner.asked += 1
                if owner.failing:
                    self._fail(owner.failing.pop(0))
                    return
                query = parse_qs(urlparse(self.path).query)
                scopes = query.get("scope", [])  # one parameter per scope, as the protocol has it
                owner.scopes.extend(scopes)
                body = json.dumps({"token": owner.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _fail(self, how: str) -> None:
                if how == "drop":
                    self.close_connection = True
                    return
                self.send_response(int(how))
                if how == "429":
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, scopes: list[str]) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": "test-issuer", "sub": "tester", "aud": self.service, "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def close(self) -> None:
        self.server.shutdown()


def _token_registry(tmp_path: Path) -> tuple[TokenService, Registry]:
    """A token service and a registry that takes its tokens, in a folder of *tmp_path*."""
    folder = tmp_path / "registry-folder"
    folder.mkdir()
    tokens = TokenService(folder, "test-registry")
    auth = (f"auth:\n  token:\n    realm: {tokens.realm}\n    service: test-registry\n"
            f"    issuer: test-issuer\n    rootcertbundle: {tokens.cert}\n")
    return tokens, Registry(folder, auth=auth)


def test_bearer_tokens_per_repository_scope(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the token service's key")
    tokens, reg = _token_registry(tmp_path)
    try:
        oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        gd(tmp_path, "image", "push", "localhost/made:1", f"{reg.host}/team/one:1", "--insecure")
        second = gd(tmp_path, "-v", "image", "push", "localhost/made:1", f"{reg.host}/team/two:1",
                    "--insecure")
        # Mounted from team/one: a token asked for both repositories, one scope parameter each.
        assert b"uploaded" not in second.stderr and b"mounted from another repository" in second.stderr
        other = tmp_path / "other"
        other.mkdir()
        assert gd(other, "image", "pull", f"{reg.host}/team/two:1", "--insecure").returncode == 0
        # Each repository got a token of its own scope; none was re-sent to another repository.
        asked = {(scope.split(":")[1], frozenset(scope.split(":")[2].split(","))) for scope in tokens.scopes}
        assert ("team/one", frozenset({"pull", "push"})) in asked
        assert ("team/two", frozenset({"pull", "push"})) in asked
        assert ("team/two", frozenset({"pull"})) in asked
        assert ("team/one", frozenset({"pull"})) in asked  # the mount's source, read only
        assert {repo for repo, _ in asked} == {"team/one", "team/two"}
    finally:
        reg.stop()
        tokens.close()


def test_a_token_service_busy_failing_or_dropping_the_connection_is_asked_again(tmp_path, monkeypatch):
    """A token realm answering 503, 429 (Retry-After: 0) or closing the connection is asked again
    with backoff, as the registry is, and the pull goes on; a 401 or 403 from it is a refusal at
    once (exit 1, asked once); one failing every time is given up after as many attempts."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the token service's key")
    from graphdriver.images import registry as client
    from graphdriver.images.reference import parse

    tokens, reg = _token_registry(tmp_path)
    try:
        oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        ref = f"{reg.host}/team/one:1"
        gd(tmp_path, "image", "push", "localhost/made:1", ref, "--insecure")
        for how in ("503", "429", "drop"):
            tokens.failing, tokens.asked = [how], 0
            pulled = gd(tmp_path / how, "image", "pull", ref, "--insecure", check=False)
            assert pulled.returncode == 0, (how, pulled.stderr)
            assert tokens.asked >= 2 and not tokens.failing, how
        for how in ("401", "403"):
            tokens.failing, tokens.asked = [how], 0
            refused = gd(tmp_path / how, "image", "pull", ref, "--insecure", check=False)
            assert (refused.returncode, refused.stderr.count(b"\n")) == (1, 1), (how, refused.stderr)
            assert f"HTTP {how}".encode() in refused.stderr and tokens.asked == 1, (how, refused.stderr)
        monkeypatch.setattr(client, "_BACKOFF", 0.01)
        tokens.failing, tokens.asked = ["503"] * client.ATTEMPTS, 0
        with client.Registry(parse(ref), insecure=True) as api, pytest.raises(client.RegistryError) as failed:
            api.manifest("1")
        assert str(failed.value) == (f"token service {tokens.realm}: gave up after {client.ATTEMPTS} "
                                     "attempts: HTTP 503")
        assert tokens.asked == client.ATTEMPTS
    finally:
        reg.stop()
        tokens.close()


def test_busy_and_failing_answers_are_retried_then_given_up(tmp_path, monkeypatch):
    """429 (with Retry-After) and 503 are retried with backoff; a registry that keeps failing is given up."""

    from graphdriver.images import registry as client
    from graphdriver.images.reference import parse

    answers = [429, 503, 200]
    seen: list[int] = []

    def answer(_path: str) -> tuple[int, bytes, dict[str, str]]:
        code = answers.pop(0) if answers else 503
        seen.append(code)
        body = b'{"schemaVersion":2}' if code == 200 else b"{}"
        headers = {"Content-Type": client.oci.OCI_MANIFEST}
        if code == 429:
            headers["Retry-After"] = "0"
        return code, body, headers

    monkeypatch.setattr(client, "_BACKOFF", 0.01)
    with fake_registry(answer) as host, client.Registry(parse(f"{host}/a:1"), insecure=True) as reg:
        data, _ = reg.manifest("1")
        assert data == b'{"schemaVersion":2}' and seen == [429, 503, 200]
        seen.clear()
        with pytest.raises(client.RegistryError, match="gave up after 5 attempts"):
            reg.manifest("1")
        assert seen == [503] * client.ATTEMPTS


def test_retry_after_as_an_http_date_is_waited_for_as_seconds_are(monkeypatch):
    """Retry-After may be an HTTP-date (RFC 9110) as well as seconds: waited for until then,
    capped as seconds are; a date past asks no more than the backoff; neither is passed over."""
    import datetime
    from email.utils import format_datetime

    from graphdriver.images import registry as client
    from graphdriver.images.reference import parse

    def later(seconds: int) -> str:
        now = datetime.datetime.now(datetime.UTC)
        return format_datetime(now + datetime.timedelta(seconds=seconds), usegmt=True)

    slept: list[float] = []
    monkeypatch.setattr(client.time, "sleep", slept.append)
    with client.Registry(parse("localhost:5000/a:1"), insecure=True) as reg:
        for attempt, retry_after in [(0, later(30)), (0, later(3600)), (0, "Fri, 31 Dec 1999 23:59:59 GMT"),
                                     (2, "Fri, 31 Dec 1999 23:59:59 -0000"), (0, "3"), (0, "120"),
                                     (1, "soon"), (1, None)]:
            reg._wait(attempt, retry_after, "GET x", "HTTP 503")
    assert 28 < slept[0] <= 30, slept
    assert slept[1:] == [60.0, client._BACKOFF, client._BACKOFF * 4, 3.0, 60.0, client._BACKOFF * 2,
                         client._BACKOFF * 2]


def test_a_manifest_or_config_whose_connection_dropped_is_asked_again(monkeypatch):
    """A body cut short (the connection closed before its Content-Length) is a dropped
    connection: asked again, as the request itself would be, not an internal error."""
    from graphdriver.images import oci
    from graphdriver.images import registry as client
    from graphdriver.images.reference import parse

    manifest = b'{"schemaVersion":2,"mediaType":"%s"}' % client.oci.OCI_MANIFEST.encode()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cut: set[str] = set()

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        body = manifest if "/manifests/" in path else config
        headers = {"Content-Type": client.oci.OCI_MANIFEST}
        if path not in cut:  # the first time, half of it, saying it is whole
            cut.add(path)
            return 200, body[: len(body) // 2], {**headers, "Content-Length": str(len(body))}
        return 200, body, headers

    monkeypatch.setattr(client, "_BACKOFF", 0.01)
    with fake_registry(answer) as host, client.Registry(parse(f"{host}/a:1"), insecure=True) as reg:
        assert reg.manifest("1")[0] == manifest
        desc = oci.Descriptor(oci.OCI_CONFIG, oci.sha256_digest(config), len(config))
        assert reg.blob_bytes(desc) == config
    assert len(cut) == 2


def test_a_windows_image_is_picked_from_an_index_with_platform(tmp_path, registry):
    from graphdriver.testing import wingen
    from tests.test_images import multi_platform_layout, sha256

    base = wingen.layer_tar(wingen.base_layer())
    child = wingen.layer_tar(wingen.child_layer())
    layout = tmp_path / "multi"
    multi_platform_layout(layout, {"linux/amd64": ([LAYER1], "linux"),
                                   "windows/amd64": ([base, child], "windows")}, "localhost/multi:1")
    ref = f"{registry.host}/multi:1"
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:1",
                    f"docker://{ref}"], check=True)
    win = run_cli("image", "pull", ref, "--insecure", "--platform", "windows/amd64", root=tmp_path / "win",
                  driver="windowsfilter", check=True)
    assert win.stdout.decode().strip() == ref
    inspected = json.loads(run_cli("image", "inspect", ref, root=tmp_path / "win", driver="windowsfilter",
                                   check=True).stdout)
    assert inspected["Platform"] == "windows/amd64"
    assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(base), sha256(child)]
    # Saved back, the Windows layers are the pulled ones byte for byte.
    saved = tmp_path / "win.tar"
    run_cli("image", "save", ref, "-o", str(saved), root=tmp_path / "win", driver="windowsfilter", check=True)
    import tarfile

    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = [archive.extractfile(p).read() for p in manifest[0]["Layers"]]  # type: ignore[union-attr]
    assert layers == [base, child]


def test_a_pull_of_an_architecture_without_a_variant_takes_its_default_variant(tmp_path, registry):
    """As skopeo and containerd: --platform linux/arm pulls arm/v7, not the arm/v6 entry listed first."""
    from tests.test_images import multi_platform_layout, platform_layers, sha256

    layers = platform_layers(["linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"])
    multi_platform_layout(tmp_path / "multi", layers, "localhost/multi:1")
    ref = f"{registry.host}/multi:1"
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'multi'}:1",
                    f"docker://{ref}"], check=True)
    for asked, taken in [("linux/arm", "linux/arm/v7"), ("linux/arm64", "linux/arm64/v8")]:
        root = tmp_path / asked.replace("/", "-")
        root.mkdir()
        gd(root, "image", "pull", ref, "--insecure", "--platform", asked)
        inspected = json.loads(gd(root, "image", "inspect", ref).stdout)
        assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(layers[taken][0][0])], asked


def test_a_docker_schema_2_image_pulls_and_large_blobs_go_up_in_chunks(tmp_path, registry, monkeypatch):
    """skopeo pushes a docker-archive as Docker schema 2; we pull it, then push a big layer in chunks."""
    import graphdriver
    from graphdriver.images import distribution
    from graphdriver.images import registry as client
    from graphdriver.testing.treeutil import F, make_tar

    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    gd(tmp_path, "image", "save", "localhost/made:1", "-o", str(tmp_path / "made.tar"))
    ref = f"{registry.host}/docker/made:1"
    archive = f"docker-archive:{tmp_path / 'made.tar'}"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", archive, f"docker://{ref}"],
                   check=True)
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                    check=True, capture_output=True).stdout)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    other = tmp_path / "other"
    other.mkdir()
    gd(other, "image", "pull", ref, "--insecure")
    inspected = json.loads(gd(other, "image", "inspect", ref).stdout)
    from tests.test_images import sha256

    assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(LAYER1), sha256(LAYER2)]
    # Saved as an OCI layout, it has OCI media types (the same blobs): skopeo finds it by its tag.
    gd(other, "image", "save", ref, "-o", str(tmp_path / "layout"), "--format", "oci")
    found = skopeo_json("inspect", "--raw", f"oci:{tmp_path / 'layout'}:1")
    assert found["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [x["digest"] for x in found["layers"]] == [x["digest"] for x in raw["layers"]]
    assert found["config"]["digest"] == raw["config"]["digest"]
    # Keys in the OCI types' order, as skopeo's conversion writes them.
    assert list(found) == ["schemaVersion", "mediaType", "config", "layers"]
    assert all(list(d)[:3] == ["mediaType", "digest", "size"] for d in [found["config"], *found["layers"]])
    # A layer larger than the upload chunk goes up in PATCH chunks.
    big = make_tar({"big": F(os.urandom(600_000))})
    oci_layout(tmp_path / "big", [big], name="localhost/big:1", gzipped=False)
    monkeypatch.setattr(client, "UPLOAD_CHUNK", 128 << 10)
    store = graphdriver.open_store(str(tmp_path / "api"), run_root=str(tmp_path / "api-run"), driver="vfs")
    from graphdriver import images

    images.load(store, str(tmp_path / "big"))
    patches: list[str] = []
    real = client.Registry.request

    def counting(self, method, path, **kw):  # type: ignore[no-untyped-def]
        if method == "PATCH":
            patches.append(kw["headers"]["Content-Range"])
        return real(self, method, path, **kw)

    monkeypatch.setattr(client.Registry, "request", counting)
    digest = distribution.push(store, "localhost/big:1", f"{registry.host}/big:1", insecure=True)
    assert len(patches) >= 4 and patches[0].startswith("0-")
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{registry.host}/big:1")
    assert info["Digest"] == digest


def test_a_pull_killed_half_way_is_undone_by_cleanup(tmp_path, registry):
    import sys

    from tests.conftest import ROOT

    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/made:1"], check=True)
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import graphdriver
from graphdriver.store.layers import Store
real = Store.import_layer
def dying(self, *args, **kw):
    real(self, *args, **kw)
    os._exit(9)  # killed after the first layer is stored, before the image is
Store.import_layer = dying
from graphdriver.images import distribution
store = graphdriver.open_store({str(tmp_path / 'store')!r}, run_root={str(tmp_path / 'run')!r}, driver="vfs")
distribution.pull(store, "{registry.host}/made:1", insecure=True)
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    assert len(gd(tmp_path, "layers").stdout.split()) == 1
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert "left by an interrupted pull" in done and "removed blob" in done
    assert gd(tmp_path, "layers").stdout == b""
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"
    # Pulled again, the image is whole.
    gd(tmp_path, "image", "pull", f"{registry.host}/made:1", "--insecure")
    assert len(gd(tmp_path, "layers").stdout.split()) == 2


def test_container_ls_shows_the_digested_reference_a_container_was_made_from(tmp_path, registry):
    """An image pulled by digest alone has no tag; a container made from ``repo@sha256:...``
    is listed by that reference, as docker ps lists it, not by a short image id."""
    digest = oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/made:1"], check=True)
    by_digest = f"{registry.host}/made@{digest}"
    gd(tmp_path, "image", "pull", by_digest, "--insecure")
    gd(tmp_path, "container", "create", by_digest, "c")
    rows = [line.split() for line in gd(tmp_path, "container", "ls").stdout.decode().splitlines()[1:]]
    assert [row[:2] for row in rows] == [["c", by_digest]]


def test_a_pull_by_digest_keeps_the_digested_reference(tmp_path, registry):
    from tests.test_images import multi_platform_layout, sha256

    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/made:1"], check=True)
    by_digest = f"{registry.host}/made@{digest}"
    assert gd(tmp_path, "image", "pull", by_digest, "--insecure").stdout.decode().strip() == by_digest
    rows = [line.split() for line in gd(tmp_path, "image", "ls").stdout.decode().splitlines()[1:]]
    assert [row[:2] for row in rows] == [[f"{registry.host}/made", "<none>"]]
    assert json.loads(gd(tmp_path, "image", "inspect", by_digest).stdout)["ManifestDigest"] == digest
    assert gd(tmp_path, "image", "inspect", f"{registry.host}/other@{digest}", check=False).returncode == 3
    assert "deleted image" not in gd(tmp_path, "prune").stdout.decode()  # not dangling
    assert gd(tmp_path, "image", "inspect", by_digest).returncode == 0
    # As in Docker: the last tag of another repository goes alone (the digested reference
    # keeps the image); the last tag of the same repository takes that reference with it.
    gd(tmp_path, "image", "tag", by_digest, "localhost/t:1")
    assert gd(tmp_path, "image", "rm", "localhost/t:1").stdout == b"Untagged: localhost/t:1\n"
    assert gd(tmp_path, "image", "inspect", by_digest).returncode == 0
    gd(tmp_path, "image", "tag", by_digest, f"{registry.host}/made:2")
    gone = gd(tmp_path, "image", "rm", f"{registry.host}/made:2").stdout.decode()
    assert gone.startswith(f"Untagged: {registry.host}/made:2\nUntagged: {by_digest}\nDeleted: ")
    gd(tmp_path, "image", "pull", by_digest, "--insecure")
    # An index pulled by its digest is found by that digest.
    layout = tmp_path / "multi"
    multi_platform_layout(layout, {"linux/amd64": ([LAYER1], "linux"), "linux/arm64": ([LAYER2], "linux")},
                          "localhost/multi:1")
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:1",
                    f"docker://{registry.host}/multi:1"], check=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/multi:1"],
                         check=True, capture_output=True).stdout
    index_ref = f"{registry.host}/multi@{sha256(raw)}"
    assert gd(tmp_path, "image", "pull", index_ref, "--insecure", "--platform", "linux/arm64").returncode == 0
    inspected = json.loads(gd(tmp_path, "image", "inspect", index_ref).stdout)
    assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(LAYER2)]
    removed = gd(tmp_path, "image", "rm", by_digest).stdout.decode()
    assert f"Untagged: {by_digest}\n" in removed and "Deleted: sha256:" in removed
    # Pulled by a tag that names the index: the index digest names the image too (Docker's
    # RepoDigests), beside the platform's manifest.
    other = tmp_path / "by-tag"
    other.mkdir()
    gd(other, "image", "pull", f"{registry.host}/multi:1", "--insecure", "--platform", "linux/arm64")
    inspected = json.loads(gd(other, "image", "inspect", index_ref).stdout)
    assert index_ref in inspected["RepoDigests"] and len(inspected["RepoDigests"]) == 2
    # The last tag of the repository takes it with it; another repository's name keeps the image.
    gd(other, "image", "tag", f"{registry.host}/multi:1", "localhost/kept:1")
    gd(other, "image", "rm", f"{registry.host}/multi:1")
    assert json.loads(gd(other, "image", "inspect", "localhost/kept:1").stdout)["RepoDigests"] == [
        f"localhost/kept@{inspected['ManifestDigest']}"]
    assert gd(other, "image", "inspect", index_ref, check=False).returncode == 3


def test_an_image_whose_tag_moved_is_still_found_by_its_manifest_digest(tmp_path, registry):
    """R/multi:1 pulled for amd64, then for arm64: the tag moves, and the amd64 image is still
    R/multi@<its manifest> (found by it, in its RepoDigests), as Docker keeps the digested
    reference of an image whose tag moved; a tag moved by ``image tag`` leaves the same."""
    from tests.test_images import sha256

    ids = platforms_layout(tmp_path / "multi", ["linux/amd64", "linux/arm64"], "localhost/multi:1")
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'multi'}:1",
                    f"docker://{registry.host}/multi:1"], check=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/multi:1"], check=True, capture_output=True).stdout
    repo, tag = f"{registry.host}/multi", f"{registry.host}/multi:1"
    index_ref = f"{repo}@{sha256(raw)}"
    by_arch = {m["platform"]["architecture"]: f"{repo}@{m['digest']}" for m in json.loads(raw)["manifests"]}
    gd(tmp_path, "image", "pull", tag, "--insecure", "--platform", "linux/amd64")
    tagged = json.loads(gd(tmp_path, "image", "inspect", tag).stdout)["RepoDigests"]
    assert tagged == sorted([by_arch["amd64"], index_ref])
    gd(tmp_path, "image", "pull", tag, "--insecure", "--platform", "linux/arm64")
    assert json.loads(gd(tmp_path, "image", "inspect", tag).stdout)["Id"] == ids["linux/arm64"]
    moved = json.loads(gd(tmp_path, "image", "inspect", by_arch["amd64"]).stdout)
    assert moved["Id"] == ids["linux/amd64"] and moved["Names"] == []
    assert moved["RepoDigests"] == tagged  # as while it had the tag
    assert json.loads(gd(tmp_path, "image", "inspect", by_arch["arm64"]).stdout)["Id"] == ids["linux/arm64"]
    # The tag moved back by image tag: the arm64 image keeps its own digest the same way.
    gd(tmp_path, "image", "tag", ids["linux/amd64"], tag)
    assert json.loads(gd(tmp_path, "image", "inspect", by_arch["arm64"]).stdout)["Id"] == ids["linux/arm64"]
    assert json.loads(gd(tmp_path, "image", "inspect", by_arch["amd64"]).stdout)["Id"] == ids["linux/amd64"]
    # The last tag of the repository removed takes the repository's digested references with it.
    gd(tmp_path, "image", "rm", tag)
    assert gd(tmp_path, "image", "inspect", by_arch["amd64"], check=False).returncode == 3


def test_a_pull_onto_a_layer_bearing_its_chain_id_is_refused_as_a_name_taken(tmp_path, registry):
    """A container layer (here made by ``create --rw``) under the id of the image's layer is in
    the way: exit 5 (a precondition, not an integrity failure), one line naming it, whose advice
    is to pull again (the command that was run, not a load)."""
    from graphdriver.images.oci import chain_ids
    from tests.test_images import sha256

    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/made:1"], check=True)
    layer = chain_ids([sha256(LAYER1)])[0][7:]
    gd(tmp_path, "create", layer, "--rw")
    proc = gd(tmp_path, "image", "pull", f"{registry.host}/made:1", "--insecure", check=False)
    assert proc.returncode == 5 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert proc.stderr.decode().startswith(f"graphdriver: layer {layer}: bears this image's chain id but "
                                           "is a writable (container) layer")
    assert proc.stderr.decode().endswith("; remove it or give it another id, then pull again\n"), proc.stderr
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"


def test_diff_compress_original_of_a_layer_pulled_uncompressed_gives_that_tarball(tmp_path, registry):
    """A layer blob of media type ...layer.v1.tar is the tarball itself (its digest the DiffID):
    the original bytes are the layer's exact diff, given back, not refused as never kept."""
    from graphdriver.images import oci
    from tests.test_images import sha256

    put_image(registry.host, "plain:1", [(oci.OCI_LAYER, LAYER1, None), (oci.OCI_LAYER, LAYER2, None)])
    gd(tmp_path, "image", "pull", f"{registry.host}/plain:1", "--insecure")
    layers = json.loads(gd(tmp_path, "image", "inspect", f"{registry.host}/plain:1").stdout)["Layers"]
    for layer, tarball in zip(layers, (LAYER1, LAYER2), strict=True):
        original = gd(tmp_path, "diff", layer["Layer"], "--compress", "original").stdout
        assert original == tarball and sha256(original) == layer["DiffID"]
    out = tmp_path / "top.tar"
    gd(tmp_path, "diff", layers[1]["Layer"], "--compress", "original", "-o", str(out))
    assert out.read_bytes() == LAYER2


def test_a_pull_onto_layers_already_stored_keeps_its_manifest_and_pushes_unchanged(tmp_path, registry):
    # The base layer arrives first from a docker-archive (no compressed blob kept for it)...
    oci_layout(tmp_path / "base", [LAYER1], name="localhost/base:1")
    maker = tmp_path / "maker"
    maker.mkdir()
    gd(maker, "image", "load", str(tmp_path / "base"))
    gd(maker, "image", "save", "localhost/base:1", "-o", str(tmp_path / "base.tar"))
    gd(tmp_path, "image", "load", str(tmp_path / "base.tar"))
    # ...then the image on it is pulled.
    digest = oci_layout(tmp_path / "top", [LAYER1, LAYER2], name="localhost/top:1")
    src = f"{registry.host}/top:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'top'}:1",
                    f"docker://{src}"], check=True)
    pulled = gd(tmp_path, "-v", "image", "pull", src, "--insecure")
    assert b"already present" in pulled.stderr
    assert json.loads(gd(tmp_path, "image", "inspect", src).stdout)["ManifestDigest"] == digest
    pushed = gd(tmp_path, "-v", "image", "push", src, f"{registry.host}/copy:1", "--insecure")
    assert pushed.stdout.decode().strip() == digest
    assert b"uploaded" not in pushed.stderr, pushed.stderr


def test_a_pull_checks_the_platform_of_an_image_without_an_index(tmp_path, registry):
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")  # linux/amd64
    ref = f"{registry.host}/made:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{ref}"], check=True)
    other = gd(tmp_path, "image", "pull", ref, "--insecure", "--platform", "linux/arm64", check=False)
    assert other.returncode == 3 and b"no image for platform linux/arm64" in other.stderr
    assert gd(tmp_path, "layers").stdout == b""
    bogus = gd(tmp_path, "image", "pull", ref, "--insecure", "--platform", "bogus", check=False)
    assert bogus.returncode == 2 and bogus.stderr.count(b"\n") == 1
    # As uname -m names it, as containerd's normalizer takes it.
    assert gd(tmp_path, "image", "pull", ref, "--insecure", "--platform", "linux/x86_64").returncode == 0
    assert gd(tmp_path, "image", "pull", ref, "--insecure", "--platform", "linux/amd64").returncode == 0


def test_a_pull_of_an_image_whose_config_is_corrupt_is_refused_before_any_layer(tmp_path, registry):
    """A config whose ``created`` is no RFC 3339 date-time (skopeo refuses it) is a corrupt
    image, as for ``image load``: one line, exit 6, and nothing stored."""
    from graphdriver.images import oci

    digest = oci_layout(tmp_path / "in", [LAYER1, LAYER2], created="yesterday")
    blobs = tmp_path / "in" / "blobs" / "sha256"
    for blob in blobs.iterdir():
        if blob.name != digest[7:]:
            put_blob(registry.host, "bad", blob.read_bytes())
    put_manifest(registry.host, "bad:1", (blobs / digest[7:]).read_bytes(), oci.OCI_MANIFEST)
    proc = gd(tmp_path, "image", "pull", f"{registry.host}/bad:1", "--insecure", check=False)
    assert proc.returncode == 6 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"the image config's created is not an RFC 3339 date-time" in proc.stderr
    assert gd(tmp_path, "layers").stdout == b""
    assert not any(files for _, _, files in os.walk(tmp_path / "store" / "images"))


def test_tls_to_a_plain_http_registry_fails_at_once_and_says_why(tmp_path, registry):
    proc = gd(tmp_path, "image", "pull", f"{registry.host}/made:1", check=False)
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"attempts" not in proc.stderr  # not retried (a retried failure says how often it tried)
    assert b"plain HTTP" in proc.stderr and b"--insecure" in proc.stderr


def test_verbose_causes_of_a_push_to_a_plain_http_registry_are_each_told_once(tmp_path, registry):
    """With -v, the causes behind the line follow it, none the same as the one before it
    (the SSL error reaches us wrapped in another of the same words)."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    proc = gd(tmp_path, "-v", "image", "push", "localhost/made:1", f"{registry.host}/made:1", check=False)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
    causes = [line for line in lines if line.startswith("graphdriver:   caused by ")]
    assert any("SSLError" in line for line in causes), lines
    import itertools

    assert all(a != b for a, b in itertools.pairwise(lines)), lines


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (its IP address a subjectAltName, as TLS
    clients check it) in *folder*."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the registry's certificate")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[Registry, Path]]:
    """A docker-registry on https with a self-signed certificate; yields it and the certificate."""
    folder = tmp_path / "tls-registry-folder"
    folder.mkdir()
    key, cert = self_signed(folder)
    reg = Registry(folder, auth=f"  tls:\n    certificate: {cert}\n    key: {key}\n")  # under http:
    yield reg, cert
    reg.stop()


def test_insecure_skips_the_certificate_check_of_an_https_registry(tmp_path, tls_registry):
    """--insecure is Docker's insecure-registries (podman's --tls-verify=false): https without
    checking the certificate, and plain http only for a registry that speaks no TLS."""
    reg, _ = tls_registry
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    dest = f"{reg.host}/team/made:1"
    pushed = gd(tmp_path, "image", "push", "localhost/made:1", dest, "--insecure")
    assert pushed.stderr == b"", pushed.stderr  # no line per blob off a terminal, no TLS warning
    other = tmp_path / "other"
    other.mkdir()
    pulled = gd(other, "image", "pull", dest, "--insecure")
    assert pulled.stdout.decode().strip() == dest and pulled.stderr == b"", pulled.stderr
    # Without it, the certificate is checked: refused at once, saying where a CA goes.
    refused = gd(other, "image", "pull", dest, check=False)
    assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
    assert b"not trusted" in refused.stderr and b"certs.d" in refused.stderr


def test_tls_verify_takes_gos_spellings_of_true_and_false(tmp_path, tls_registry):
    """As podman reads --tls-verify (Go's strconv.ParseBool): 0, f, F, FALSE, False are false
    (https without checking the certificate), 1, t, T, TRUE, True are true (checked)."""
    reg, _ = tls_registry
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    dest = f"{reg.host}/made:1"
    gd(tmp_path, "image", "push", "localhost/made:1", dest, "--tls-verify=F")
    for i, word in enumerate(("0", "f", "FALSE", "False")):
        other = tmp_path / f"other-{i}"
        other.mkdir()
        assert gd(other, "image", "pull", dest, "--tls-verify", word).stdout.decode().strip() == dest
    for word in ("1", "t", "T", "TRUE", "True"):
        refused = gd(tmp_path, "image", "push", "localhost/made:1", dest, f"--tls-verify={word}", check=False)
        assert refused.returncode == 1 and b"not trusted" in refused.stderr, refused.stderr


def test_a_registry_ca_in_certs_d_is_trusted(tmp_path, tls_registry, monkeypatch):
    """The CA certificates of a registry's folder in podman's certs.d (the user's, as rootless
    podman reads it) and Docker's (HOST:PORT/ca.crt) are trusted besides the default ones."""
    import graphdriver
    from graphdriver.images import distribution
    from graphdriver.images import registry as client

    reg, cert = tls_registry
    home = tmp_path / "home"
    (home / ".config/containers/certs.d" / reg.host).mkdir(parents=True)
    shutil.copy(cert, home / ".config/containers/certs.d" / reg.host / "registry.crt")
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    dest = f"{reg.host}/made:1"
    digest = gd(tmp_path, "image", "push", "localhost/made:1", dest, env={"HOME": str(home)}).stdout.strip()
    assert skopeo_json("inspect", "--tls-verify=false", f"docker://{dest}")["Digest"] == digest.decode()
    # Docker's folder, as /etc/docker/certs.d/HOST:PORT/ca.crt: a pull through the API.
    docker_dir = tmp_path / "docker-certs.d"
    (docker_dir / reg.host).mkdir(parents=True)
    shutil.copy(cert, docker_dir / reg.host / "ca.crt")
    monkeypatch.setattr(client, "CERTS_DIRS", (str(docker_dir),))
    assert client.ca_files(reg.host) == [str(docker_dir / reg.host / "ca.crt")]
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    store = graphdriver.open_store(str(tmp_path / "api"), run_root=str(tmp_path / "api-run"), driver="vfs")
    record = distribution.pull(store, dest)
    assert record.names == [dest] and record.manifest == digest.decode()
    assert list((tmp_path / "tmp").iterdir()) == []  # the bundle of CAs made for the pull is gone with it
    monkeypatch.setattr(client, "CERTS_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(client.RegistryError, match="not trusted"):
        distribution.pull(store, dest)


def test_a_client_certificate_in_certs_d_is_presented(tmp_path):
    """A registry that asks for a client certificate gets the NAME.cert/NAME.key pair of its
    certs.d folder, as Docker and podman present it; a certificate without its key is an error."""
    folder = tmp_path / "mtls"
    folder.mkdir()
    key, cert = self_signed(folder)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
                    "-out", str(ca), "-days", "1", "-subj", "/CN=client CA"], check=True, capture_output=True)
    home = tmp_path / "home"
    certs = home / ".config/containers/certs.d"
    env = {"HOME": str(home)}
    tls = f"  tls:\n    certificate: {cert}\n    key: {key}\n    clientcas:\n      - {ca}\n"
    reg = Registry(folder, auth=tls)
    try:
        mine = certs / reg.host
        mine.mkdir(parents=True)
        shutil.copy(cert, mine / "ca.crt")  # the registry's own certificate, trusted
        oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        dest = f"{reg.host}/made:1"
        # No client certificate: the registry ends the handshake.
        refused = gd(tmp_path, "image", "push", "localhost/made:1", dest, check=False, env=env)
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert b"asks for a client certificate" in refused.stderr
        # The folder named is the one this user keeps the registry's files in.
        assert f"go in ~/.config/containers/certs.d/{reg.host}/)".encode() in refused.stderr, refused.stderr
        # A certificate without its key: named, before any connection.
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(mine / "me.key"),
                        "-out", str(folder / "me.csr"), "-subj", "/CN=me"], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(folder / "me.csr"), "-CA", str(ca), "-CAkey",
                        str(ca_key), "-CAcreateserial", "-days", "1", "-out", str(folder / "me.cert")],
                       check=True, capture_output=True)
        (mine / "me.key").rename(folder / "me.key")
        shutil.copy(folder / "me.cert", mine / "me.cert")
        alone = gd(tmp_path, "image", "push", "localhost/made:1", dest, check=False, env=env)
        assert alone.returncode == 1 and alone.stderr.count(b"\n") == 1, alone.stderr
        assert b"me.cert" in alone.stderr and b"me.key is missing" in alone.stderr
        shutil.copy(folder / "me.key", mine / "me.key")
        digest = gd(tmp_path, "image", "push", "localhost/made:1", dest, env=env).stdout.strip()
        other = tmp_path / "other"
        other.mkdir()
        pulled = gd(other, "image", "pull", dest, env=env)
        assert pulled.stdout.decode().strip() == dest
        assert gd(other, "image", "inspect", dest).stdout.count(digest) >= 1
    finally:
        reg.stop()


def test_the_client_certificate_the_registry_accepts_is_presented_among_several(tmp_path):
    """Of two NAME.cert/NAME.key pairs in the registry's certs.d folder, the first signed by a CA
    the registry does not trust, the second by the one it does: the second is presented after the
    first is refused, as Go's TLS in Docker and podman (skopeo too) presents the acceptable one."""
    folder = tmp_path / "mtls"
    folder.mkdir()
    key, cert = self_signed(folder)
    cas = {}
    for name in ("trusted", "other"):
        cas[name] = (folder / f"{name}.key", folder / f"{name}.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(cas[name][0]), "-out", str(cas[name][1]), "-days", "1",
                        "-subj", f"/CN={name} CA"],
                       check=True, capture_output=True)
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    tls = f"  tls:\n    certificate: {cert}\n    key: {key}\n    clientcas:\n      - {cas['trusted'][1]}\n"
    reg = Registry(folder, auth=tls)
    try:
        mine = home / ".config/containers/certs.d" / reg.host
        mine.mkdir(parents=True)
        shutil.copy(cert, mine / "ca.crt")
        for stem, ca in (("a", "other"), ("b", "trusted")):  # a.cert comes first, and is refused
            csr = folder / f"{stem}.csr"
            subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
                            str(mine / f"{stem}.key"), "-out", str(csr), "-subj", f"/CN={stem}"],
                           check=True, capture_output=True)
            subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(cas[ca][1]), "-CAkey",
                            str(cas[ca][0]), "-CAcreateserial", "-days", "1",
                            "-out", str(mine / f"{stem}.cert")],
                           check=True, capture_output=True)
        oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        dest = f"{reg.host}/made:1"
        pushed = gd(tmp_path, "image", "push", "localhost/made:1", dest, check=False, env=env)
        assert pushed.returncode == 0 and pushed.stderr == b"", pushed.stderr
        digest = pushed.stdout.strip()
        for i, flags in enumerate(((), ("--insecure",))):  # insecure: still https, never plain http
            other = tmp_path / f"other-{i}"
            other.mkdir()
            pulled = gd(other, "image", "pull", dest, *flags, check=False, env=env)
            assert pulled.returncode == 0 and pulled.stdout.decode().strip() == dest, pulled.stderr
            assert gd(other, "image", "inspect", dest).stdout.count(digest) >= 1
        # With the refused one alone, the registry's refusal is the error, as before.
        for f in ("b.cert", "b.key"):
            (mine / f).unlink()
        refused = gd(tmp_path / "other-0", "image", "pull", dest, check=False, env=env)
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert b"asks for a client certificate" in refused.stderr
    finally:
        reg.stop()


def test_a_foreign_layer_comes_from_its_urls(tmp_path):
    """A layer the registry does not hold (a Windows base layer, non-distributable) is fetched
    from its descriptor's urls, the first that answers, and checked against its digest."""
    import gzip
    import http.server
    import threading

    from graphdriver.images import oci
    from tests.test_images import sha256

    served = tmp_path / "www"
    served.mkdir()
    blob = gzip.compress(LAYER1, mtime=0)
    (served / "layer.tgz").write_bytes(blob)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    www = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=www.serve_forever, daemon=True).start()
    reg = Registry(tmp_path / "reg", auth="validation:\n  manifests:\n    urls:\n      allow:\n        - '^http://'\n")
    try:
        base = f"http://127.0.0.1:{www.server_address[1]}"
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [sha256(LAYER1)]}}).encode()
        put_blob(reg.host, "r/foreign", config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                        "digest": sha256(blob), "size": len(blob),
                        "urls": [f"{base}/missing.tgz", f"{base}/layer.tgz"]}]}).encode()
        put_manifest(reg.host, "r/foreign:1", manifest, oci.OCI_MANIFEST)
        ref = f"{reg.host}/r/foreign:1"
        assert gd(tmp_path, "image", "pull", ref, "--insecure").stdout.decode().strip() == ref
        gd(tmp_path, "container", "create", ref, "c")
        root = Path(gd(tmp_path, "mount", "c").stdout.decode().strip())
        try:
            assert (root / "etc/os-release").read_bytes() == b"ID=made\n"
        finally:
            gd(tmp_path, "unmount", "c")
        # Pushed elsewhere, the foreign layer stays at its urls, as Docker and skopeo leave it:
        # the registry gets the manifest and the config, and a pull of the copy fetches the layer
        # from the urls again.
        copy = f"{reg.host}/r/copy:1"
        gd(tmp_path, "image", "push", ref, copy, "--insecure")
        with pytest.raises(urllib.error.HTTPError) as held:
            urllib.request.urlopen(urllib.request.Request(
                f"http://{reg.host}/v2/r/copy/blobs/{sha256(blob)}", method="HEAD"), timeout=10)
        assert held.value.code == 404
        again = tmp_path / "again"
        again.mkdir()
        assert gd(again, "image", "pull", copy, "--insecure").stdout.decode().strip() == copy
        # Bytes at the url that are not the blob: refused, nothing kept.
        (served / "layer.tgz").write_bytes(gzip.compress(LAYER2, mtime=0))
        other = tmp_path / "other"
        other.mkdir()
        bad = gd(other, "image", "pull", ref, "--insecure", check=False)
        assert bad.returncode == 6 and bad.stderr.count(b"\n") == 1, bad.stderr
        assert gd(other, "layers").stdout == b""
    finally:
        reg.stop()
        www.shutdown()


def test_an_auth_file_that_cannot_be_used_is_an_error_naming_it(tmp_path, registry):
    auth = tmp_path / "auth.json"
    secret = base64.b64encode(b"alice:s3cret").decode()
    for content in ("{bad", json.dumps({"auths": {registry.host: {"auth": "!!" + secret}}}),
                    json.dumps({"auths": {registry.host: 5}}),
                    json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"no colon").decode()}}})):
        auth.write_text(content)
        proc = gd(tmp_path, "image", "pull", f"{registry.host}/made:1", "--insecure", check=False,
                  env={"REGISTRY_AUTH_FILE": str(auth)})
        assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert str(auth).encode() in proc.stderr


def test_a_download_that_fills_the_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    from graphdriver.images import distribution, oci
    from graphdriver.images.records import ImageStore
    from graphdriver.images.registry import Registry

    reg = object.__new__(Registry)  # no connection: its download is the one below

    def download(desc: object, partial: str, advance: object) -> None:
        with open(partial, "wb") as f:
            f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(reg, "download", download, raising=False)
    images = ImageStore(str(tmp_path / "store"))
    desc = oci.Descriptor(oci.OCI_LAYER, "sha256:" + "a" * 64, 5000)
    with pytest.raises(OSError, match="No space left"):
        distribution._download_all(reg, images, [desc], True, lambda _line: None, [])
    assert not [n for n in os.listdir(images.blobs_dir) if n.endswith(".download")]


def _registry_blob(registry: Registry, digest: str) -> Path:
    hexpart = digest.removeprefix("sha256:")
    blobs = Path(registry.proc.args[2]).parent / "data/docker/registry/v2/blobs/sha256"
    return blobs / hexpart[:2] / hexpart / "data"


def test_a_blob_the_registry_holds_shorter_than_its_descriptor_is_an_integrity_failure(tmp_path, registry):
    from graphdriver.testing.treeutil import F, make_tar

    layer = make_tar({"big": F(os.urandom(300_000))})
    oci_layout(tmp_path / "in", [layer], name="localhost/short:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/short:1"], check=True)
    manifest = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/short:1")
    blob = _registry_blob(registry, manifest["layers"][0]["digest"])
    os.truncate(blob, 200_000)
    started = time.monotonic()
    pulled = gd(tmp_path, "image", "pull", f"{registry.host}/short:1", "--insecure", check=False)
    assert pulled.returncode == 6, pulled.stderr
    assert "the registry has" in pulled.stderr.decode() and len(pulled.stderr.splitlines()) == 1
    assert time.monotonic() - started < 30  # not retried as if the connection had dropped
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"
    gd(tmp_path, "cleanup")
    blobs = tmp_path / "store/images/blobs/sha256"
    assert not [p.name for p in blobs.iterdir() if ".download" in p.name] if blobs.exists() else True


def test_a_pull_that_fails_leaves_no_blob_behind(tmp_path, registry):
    """Issue: the first layer downloaded, the second not what its digest says: exit 6, and
    neither blob is left (on a store that had nothing yet, cleanup used to skip images)."""
    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/bad:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/bad:1"], check=True)
    manifest = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/bad:1")
    blob = _registry_blob(registry, manifest["layers"][1]["digest"])
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    blob.write_bytes(bytes(damaged))
    pulled = gd(tmp_path, "image", "pull", f"{registry.host}/bad:1", "--insecure", check=False)
    assert pulled.returncode == 6, pulled.stderr
    blobs = tmp_path / "store/images/blobs/sha256"
    assert [p.name for p in blobs.iterdir()] == []
    assert gd(tmp_path, "layers").stdout == b""
    # What a pull killed before it could tidy up leaves, cleanup removes on such a store too.
    (blobs / ("0" * 64)).write_bytes(b"left")
    done = gd(tmp_path, "cleanup").stdout.decode()
    assert done == f"removed blob sha256:{'0' * 64}, which no image names\n"
    assert [p.name for p in blobs.iterdir()] == []


def test_a_kept_blob_damaged_on_disk_is_never_handed_on(tmp_path, registry):
    """save, push and diff --compress original check a kept compressed blob first: exit 6,
    and a layout that was there keeps no half-written file."""
    oci_layout(tmp_path / "in", [LAYER1], name="localhost/kept:1")  # gzipped, as pulled
    gd(tmp_path, "image", "load", str(tmp_path / "in"))
    inspected = json.loads(gd(tmp_path, "image", "inspect", "localhost/kept:1").stdout)
    manifest = json.loads((tmp_path / "in/blobs/sha256" / inspected["ManifestDigest"][7:]).read_bytes())
    kept = tmp_path / "store/images/blobs/sha256" / manifest["layers"][0]["digest"][7:]
    damaged = bytearray(kept.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    kept.write_bytes(bytes(damaged))
    (tmp_path / "out").mkdir()
    layer = inspected["Layers"][0]["Layer"]
    name = "localhost/kept:1"
    for args in (("image", "save", name, "-o", str(tmp_path / "out"), "--format", "oci"),
                 ("image", "save", name, "-o", str(tmp_path / "o.tar"), "--format", "oci-archive"),
                 ("diff", layer, "--compress", "original", "-o", str(tmp_path / "l.gz")),
                 ("image", "push", "localhost/kept:1", f"{registry.host}/kept:1", "--insecure")):
        r = gd(tmp_path, *args, check=False)
        assert (r.returncode, len(r.stderr.splitlines())) == (6, 1), (args, r.stderr)
        assert "do not match its digest" in r.stderr.decode()
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    assert not (tmp_path / "o.tar").exists() and not (tmp_path / "l.gz").exists()


def test_an_artifact_is_no_image_to_pull(tmp_path, registry):
    """A Helm chart (or a signature) pushed as an OCI artifact: unsupported here (7), nothing kept."""
    import hashlib
    import io

    from graphdriver.images import oci, reference
    from graphdriver.images.registry import Registry as Client

    def desc(media_type: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config, chart = b"{}", b"not a layer"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": desc("application/vnd.cncf.helm.config.v1+json", config),
                           "layers": [desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", chart)]})
    with Client(reference.parse(f"{registry.host}/chart:1"), insecure=True) as reg:
        for data in (config, chart):
            reg.upload(desc("", data)["digest"], len(data), lambda d=data: io.BytesIO(d))
        reg.put_manifest("1", manifest.encode(), oci.OCI_MANIFEST)
    r = gd(tmp_path, "image", "pull", f"{registry.host}/chart:1", "--insecure", check=False)
    assert (r.returncode, r.stderr.count(b"\n")) == (7, 1), r.stderr
    assert b"is not a container image" in r.stderr
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"


# ----- one index digest, several platforms -----------------------------------------------------------


def platforms_layout(path: Path, platforms: list[str], name: str) -> dict[str, str]:
    """An OCI layout at *path* whose index names an index of one image per ``os/arch``, each
    config of its platform and its one layer saying which; returns each platform's image id."""
    import gzip
    import hashlib

    from graphdriver.testing.treeutil import F, make_tar

    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(media_type: str, data: bytes, **extra: object) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    ids, manifests = {}, []
    for platform in platforms:
        os_name, arch = platform.split("/")
        layer = make_tar({"platform": F(platform.encode())})
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        value = {"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
        config = put("application/vnd.oci.image.config.v1+json", json.dumps(value).encode())
        ids[platform] = config["digest"]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config, "layers": [put("application/vnd.oci.image.layer.v1.tar+gzip",
                                                                gzip.compress(layer, mtime=0))]})
        manifests.append(put("application/vnd.oci.image.manifest.v1+json", manifest.encode(),
                             platform={"os": os_name, "architecture": arch}))
    index = put("application/vnd.oci.image.index.v1+json", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests}).encode(),
        annotations={"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"})
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [index]}))
    return ids


def test_an_index_digest_names_the_image_pulled_by_it_then_this_machines(tmp_path, registry):
    """Issue: a tag pull through an index remembers repo@<index digest> for its platform's image,
    and a pull by that digest (this machine's platform) then found the other image first."""
    from graphdriver.images.sources import host_platform
    from tests.test_images import sha256

    here = host_platform()
    other, third = [p for p in ("linux/arm64", "linux/s390x", "linux/amd64") if p != here][:2]
    ids = platforms_layout(tmp_path / "multi", [here, other, third], "localhost/multi:1")
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'multi'}:1",
                    f"docker://{registry.host}/multi:1"], check=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/multi:1"], check=True, capture_output=True).stdout
    tag, index_ref = f"{registry.host}/multi:1", f"{registry.host}/multi@{sha256(raw)}"
    gd(tmp_path, "image", "pull", tag, "--insecure", "--platform", other)
    assert gd(tmp_path, "image", "pull", index_ref, "--insecure").stdout.decode().strip() == index_ref
    # The reference pulled by names what it pulled: inspect, save and rm act on this machine's image.
    assert json.loads(gd(tmp_path, "image", "inspect", index_ref).stdout)["Id"] == ids[here]
    gd(tmp_path, "image", "save", index_ref, "-o", str(tmp_path / "saved.tar"))
    import tarfile

    with tarfile.open(tmp_path / "saved.tar") as archive:
        saved = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert saved[0]["Config"] == ids[here][7:] + ".json"
    removed = gd(tmp_path, "image", "rm", index_ref).stdout.decode()
    assert removed.startswith(f"Untagged: {index_ref}\nDeleted: {ids[here]}\nDeleted layer: "), removed
    # What is left is the tag pull's image, still found by the index digest it came through.
    assert json.loads(gd(tmp_path, "image", "inspect", index_ref).stdout)["Id"] == ids[other]
    # Two tag pulls for two other platforms: the index digest names neither of them silently.
    two = tmp_path / "two"
    two.mkdir()
    gd(two, "image", "pull", tag, "--insecure", "--platform", other)
    gd(two, "image", "pull", tag, "--insecure", "--platform", third)
    for args in (("image", "inspect", index_ref), ("image", "rm", index_ref)):
        refused = gd(two, *args, check=False)
        assert refused.returncode == 5 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert b"ambiguous" in refused.stderr
        assert ids[other].encode() in refused.stderr and ids[third].encode() in refused.stderr
    # A third, of this machine's platform: the one a pull of that digest would choose.
    gd(two, "image", "pull", tag, "--insecure")
    assert json.loads(gd(two, "image", "inspect", index_ref).stdout)["Id"] == ids[here]


# ----- a push names the media types of its manifest's kind ---------------------------------------------


def test_a_push_on_a_docker_manifest_base_names_oci_media_types_only(tmp_path, registry):
    """Issue: an image on the layers of one pulled with a Docker manifest went up in an OCI manifest
    naming those layers by Docker's media types (and was saved as OCI so)."""
    from graphdriver.testing.treeutil import F, make_tar

    maker = tmp_path / "maker"
    maker.mkdir()
    oci_layout(tmp_path / "base", [LAYER1, LAYER2], name="localhost/base:1")
    gd(maker, "image", "load", str(tmp_path / "base"))
    gd(maker, "image", "save", "localhost/base:1", "-o", str(tmp_path / "base.tar"))
    base = f"{registry.host}/docker/base:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                    f"docker-archive:{tmp_path / 'base.tar'}", f"docker://{base}"], check=True)
    docker = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{base}")
    assert {x["mediaType"] for x in docker["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    gd(tmp_path, "image", "pull", base, "--insecure")
    # An image on those layers with no manifest of its own (a docker-archive's, as a commit's).
    more = make_tar({"srv/more": F(b"more\n")})
    oci_layout(tmp_path / "top", [LAYER1, LAYER2, more], name="localhost/top:1")
    gd(maker, "image", "load", str(tmp_path / "top"))
    gd(maker, "image", "save", "localhost/top:1", "-o", str(tmp_path / "top.tar"))
    gd(tmp_path, "image", "load", str(tmp_path / "top.tar"))
    dest = f"{registry.host}/top:1"
    digest = gd(tmp_path, "image", "push", "localhost/top:1", dest, "--insecure").stdout.decode().strip()
    pushed = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert pushed["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [x["mediaType"] for x in pushed["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    # The base's blobs, the same bytes under OCI's name for them.
    assert [x["digest"] for x in pushed["layers"][:2]] == [x["digest"] for x in docker["layers"]]
    gd(tmp_path, "image", "save", "localhost/top:1", "-o", str(tmp_path / "layout"), "--format", "oci")
    saved = skopeo_json("inspect", "--raw", f"oci:{tmp_path / 'layout'}:1")
    assert saved == pushed
    assert skopeo_json("inspect", "--tls-verify=false", f"docker://{dest}")["Digest"] == digest


# ----- error lines name what failed ---------------------------------------------------------------------


def test_registry_errors_name_the_image_the_registry_and_the_malformed_challenge(tmp_path, monkeypatch):
    """A manifest too large names the image; retries given up name the registry's host; a Bearer
    challenge without a realm URL is called malformed, not left to the HTTP library's words."""
    from graphdriver.images import registry as client
    from graphdriver.images.reference import parse

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        if "/big/" in path:
            return 200, b" " * (client.MANIFEST_LIMIT + 1), {"Content-Type": client.oci.OCI_MANIFEST}
        if "/challenge/" in path:
            return 401, b"", {"WWW-Authenticate": 'Bearer realm="'}
        return 500, b"{}", {"Content-Type": "application/json"}

    monkeypatch.setattr(client, "_BACKOFF", 0.01)
    with fake_registry(answer) as host:
        big = gd(tmp_path, "image", "pull", f"{host}/big/x:1", "--insecure", check=False)
        assert big.returncode == 6, big.stderr
        assert big.stderr.decode() == (f"graphdriver: image {host}/big/x:1: manifest larger than "
                                       f"{client.MANIFEST_LIMIT} bytes\n")
        bad = gd(tmp_path, "image", "pull", f"{host}/challenge/x:1", "--insecure", check=False)
        assert bad.returncode == 1 and bad.stderr.count(b"\n") == 1, bad.stderr
        assert f"registry {host}: its authentication challenge is malformed".encode() in bad.stderr
        assert b"Invalid URL" not in bad.stderr
        with client.Registry(parse(f"{host}/err500json:1"), insecure=True) as reg, \
                pytest.raises(client.RegistryError) as failed:
            reg.manifest("1")
        assert str(failed.value) == (f"GET {host}/v2/err500json/manifests/1: gave up after "
                                     f"{client.ATTEMPTS} attempts: HTTP 500")


# ----- images put together blob by blob ------------------------------------------------------------------


def put_blob(host: str, repo: str, data: bytes) -> str:
    """Upload *data* to repository *repo* of the registry at *host* (plain http) in one PUT, as
    the distribution API has it; returns its digest."""
    from urllib.parse import urljoin

    from tests.test_images import sha256

    digest = sha256(data)
    start = f"http://{host}/v2/{repo}/blobs/uploads/"
    with urllib.request.urlopen(urllib.request.Request(start, method="POST", data=b"")) as resp:
        location = urljoin(start, resp.headers["Location"])
    put = location + ("&" if "?" in location else "?") + f"digest={digest}"
    urllib.request.urlopen(urllib.request.Request(put, method="PUT", data=data, headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})).close()
    return digest


def put_manifest(host: str, name: str, manifest: bytes, media_type: str) -> str:
    """Put *manifest* as *name* (``repo:tag`` or ``repo@digest``) on the registry at *host*;
    returns its digest."""
    from tests.test_images import sha256

    repo, by_digest, tag = name.partition("@")
    if not by_digest:
        repo, _, tag = name.partition(":")
    url = f"http://{host}/v2/{repo}/manifests/{tag}"
    urllib.request.urlopen(urllib.request.Request(url, method="PUT", data=manifest,
                                                  headers={"Content-Type": media_type})).close()
    return sha256(manifest)


def put_image(host: str, name: str, layers: list[tuple[str, bytes, int | None]],
              config_size: int | None = None) -> str:
    """Push to the registry at *host* (plain http) an OCI image *name* (``repo:tag``) made of
    *layers* (media type, blob, and the size its descriptor claims, None for the true one) and a
    linux/amd64 config (its descriptor's size *config_size*, None for the true one); returns the
    manifest digest."""
    import gzip

    from graphdriver.images import oci
    from tests.test_images import sha256

    diff_ids = [sha256(gzip.decompress(b) if m.endswith("+gzip") else b) for m, b, _ in layers]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_bytes = json.dumps(config).encode()
    repo = name.partition(":")[0]
    for data in {config_bytes, *(b for _, b, _ in layers)}:
        put_blob(host, repo, data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": sha256(config_bytes),
                   "size": len(config_bytes) if config_size is None else config_size},
        "layers": [{"mediaType": m, "digest": sha256(b), "size": len(b) if s is None else s}
                   for m, b, s in layers]}).encode()
    return put_manifest(host, name, manifest, oci.OCI_MANIFEST)


def test_an_empty_layer_blob_pulls_and_a_size_0_that_lies_is_an_integrity_failure(tmp_path, registry):
    """A zero-size layer descriptor (the empty blob, sha256 of nothing) is downloaded as an empty
    file and checked; one that says 0 bytes of a blob that has more is exit 6, no temporary file named."""
    import gzip
    import hashlib

    from graphdriver.images import oci

    empty = (oci.OCI_LAYER, b"", None)
    put_image(registry.host, "empty:1", [(oci.OCI_LAYER_GZIP, gzip.compress(LAYER1, mtime=0), None), empty])
    ref = f"{registry.host}/empty:1"
    pulled = gd(tmp_path, "image", "pull", ref, "--insecure", check=False)
    assert pulled.returncode == 0 and pulled.stderr == b"", pulled.stderr
    inspected = json.loads(gd(tmp_path, "image", "inspect", ref).stdout)
    assert inspected["Layers"][1]["DiffID"] == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert gd(tmp_path, "image", "pull", ref, "--insecure").returncode == 0  # again: nothing to download
    # Pushed to another registry, the empty blob goes up as an empty body, the manifest unchanged.
    second = Registry(tmp_path / "second-registry")
    try:
        copy = f"{second.host}/empty:1"
        pushed = gd(tmp_path, "image", "push", ref, copy, "--insecure").stdout.decode().strip()
        assert pushed == inspected["ManifestDigest"]
        raw = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{copy}")
        assert raw["layers"][1]["size"] == 0
    finally:
        second.stop()
    # Size 0 claimed for a blob that is not empty.
    put_image(registry.host, "liar:1", [(oci.OCI_LAYER, LAYER2, 0)])
    other = tmp_path / "other"
    other.mkdir()
    lied = gd(other, "image", "pull", f"{registry.host}/liar:1", "--insecure", check=False)
    assert lied.returncode == 6 and lied.stderr.count(b"\n") == 1, lied.stderr
    assert b".download" not in lied.stderr
    assert gd(other, "image", "ls", "--json").stdout.strip() == b"[]"
    assert gd(other, "layers").stdout == b""
    blobs = other / "store/images/blobs/sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []


class RewritingProxy:
    """An HTTP proxy to the registry at *target* that hands each answer to
    ``rewrite(method, path, request_headers, status, headers, body)`` and sends back what that
    returns (status, headers, body); it counts the requests it saw, by method."""

    def __init__(self, target: str, rewrite: Callable[..., tuple[int, dict[str, str], bytes]]) -> None:
        import http.client
        import http.server

        self.seen: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.seen.append((self.command, self.path))
                upstream = http.client.HTTPConnection(target, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                answer = upstream.getresponse()
                data = answer.read()
                headers = {k: v for k, v in answer.getheaders() if k.lower() not in ("connection",
                                                                                      "transfer-encoding")}
                upstream.close()
                status, headers, data = rewrite(self.command, self.path, self.headers, answer.status,
                                                headers, data)
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_blobs_are_asked_for_as_they_are_and_an_encoded_answer_is_decoded_or_refused(tmp_path, registry):
    """A CDN that gzips a blob for a client accepting gzip would change its bytes, and its digest:
    blobs are asked for with Accept-Encoding: identity; one encoded all the same is decoded
    (gzip) or refused in words (an encoding nothing here decodes)."""
    import gzip

    oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:1",
                    f"docker://{registry.host}/made:1"], check=True)
    mode = {"encode": "when accepted"}
    asked: list[str] = []

    def encode(method: str, path: str, request: dict[str, str], status: int, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method != "GET" or "/blobs/" not in path or status != 200:
            return status, headers, body
        accepts = request.get("Accept-Encoding", "")
        asked.append(accepts)
        if mode["encode"] == "when accepted" and "gzip" not in accepts:
            return status, headers, body
        if mode["encode"] == "unknown":
            return status, {**headers, "Content-Encoding": "x-squash"}, body
        return status, {**headers, "Content-Encoding": "gzip"}, gzip.compress(body)

    proxy = RewritingProxy(registry.host, encode)
    try:
        ref = f"{proxy.host}/made:1"
        pulled = gd(tmp_path, "image", "pull", ref, "--insecure", check=False)
        assert pulled.returncode == 0, pulled.stderr
        assert len(asked) == 3 and set(asked) == {"identity"}
        mode["encode"] = "always"  # asked for as it is, sent gzipped all the same: decoded
        for store in ("always", "unknown"):
            (tmp_path / store).mkdir()
        assert gd(tmp_path / "always", "image", "pull", ref, "--insecure", check=False).returncode == 0
        inspected = json.loads(gd(tmp_path / "always", "image", "inspect", ref).stdout)
        from tests.test_images import sha256

        assert [x["DiffID"] for x in inspected["Layers"]] == [sha256(LAYER1), sha256(LAYER2)]
        mode["encode"] = "unknown"
        refused = gd(tmp_path / "unknown", "image", "pull", ref, "--insecure", check=False)
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert b"Content-Encoding x-squash" in refused.stderr
        assert gd(tmp_path / "unknown", "image", "ls", "--json").stdout.strip() == b"[]"
    finally:
        proxy.close()


def test_auth_file_keys_with_a_scheme_and_a_path_or_a_namespace_are_matched(tmp_path):
    """As Docker's CLI and containers/image read an auth file: ``https://HOST/v1/``,
    ``https://HOST/v2/`` and ``http://HOST/`` name the registry; ``HOST/ns`` and ``HOST/ns/repo``
    name a namespace or a repository, the most specific one that holds the repository first,
    then the registry's own key."""
    folder = tmp_path / "registry-folder"
    folder.mkdir()
    (folder / "htpasswd").write_text(f"alice:{bcrypt_hash('s3cret')}\n")
    reg = Registry(folder, auth=f"auth:\n  htpasswd:\n    realm: test\n    path: {folder / 'htpasswd'}\n")
    good = {"auth": base64.b64encode(b"alice:s3cret").decode()}
    bad = {"auth": base64.b64encode(b"alice:wrong").decode()}
    auth = tmp_path / "auth.json"

    def pull(auths: dict[str, dict[str, str]]) -> subprocess.CompletedProcess[bytes]:
        auth.write_text(json.dumps({"auths": auths}))
        return gd(tmp_path / "other", "image", "pull", f"{reg.host}/team/made:1", "--insecure", check=False,
                  env={"REGISTRY_AUTH_FILE": str(auth)})

    try:
        oci_layout(tmp_path / "in", [LAYER1], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        auth.write_text(json.dumps({"auths": {reg.host: good}}))
        gd(tmp_path, "image", "push", "localhost/made:1", f"{reg.host}/team/made:1", "--insecure",
           env={"REGISTRY_AUTH_FILE": str(auth)})
        (tmp_path / "other").mkdir()
        host = reg.host
        for auths in ({f"https://{host}/v1/": good}, {f"https://{host}/v2/": good}, {f"http://{host}/": good},
                      {f"{host}/team": good, host: bad},
                      {f"{host}/team/made": good, f"{host}/team": bad, host: bad, f"https://{host}/v1/": bad},
                      {host: bad, f"{host}/team/made/": good}):
            pulled = pull(auths)
            assert pulled.returncode == 0, (auths, pulled.stderr)
        # A key of another namespace (or only a prefix of a name) is not this repository's.
        for auths in ({f"{host}/tea": good}, {f"{host}/other": good}, {f"{host}/team/made/x": good}):
            refused = pull(auths)
            assert refused.returncode == 1, (auths, refused.stderr)
            assert b"none are configured" in refused.stderr, (auths, refused.stderr)
        refused = pull({f"{host}/other": good, f"https://{host}/v1/": bad})
        assert refused.returncode == 1 and b"not authorised" in refused.stderr, refused.stderr
        # The refusal names the file the refused credentials came from.
        assert f"(the credentials of {auth})".encode() in refused.stderr, refused.stderr
    finally:
        reg.stop()


def test_a_schema_1_image_is_unsupported_not_corrupt(tmp_path):
    """Docker's schema 1 manifests (signed or not) are a format this client does not read:
    exit 7 saying so, not an integrity failure; nothing is stored."""
    schema1 = json.dumps({"schemaVersion": 1, "name": "old", "tag": "1", "architecture": "amd64",
                          "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
                          "history": [{"v1Compatibility": "{}"}]}).encode()
    types = {"signed": "application/vnd.docker.distribution.manifest.v1+prettyjws",
             "plain": "application/vnd.docker.distribution.manifest.v1+json", "untyped": "application/json"}

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        kind = path.split("/")[2]
        return 200, schema1, {"Content-Type": types[kind]}

    with fake_registry(answer) as host:
        for kind in types:
            r = gd(tmp_path, "image", "pull", f"{host}/{kind}:1", "--insecure", check=False)
            assert (r.returncode, r.stderr.count(b"\n")) == (7, 1), (kind, r.stderr)
            assert b"schema 1 images are not supported" in r.stderr, r.stderr
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"


def test_a_config_blob_of_another_size_than_its_descriptor_is_an_integrity_failure(tmp_path, registry):
    """The config blob is checked against its descriptor's size, as the layer blobs are: exit 6,
    nothing stored."""
    import gzip

    from graphdriver.images import oci

    layer = (oci.OCI_LAYER_GZIP, gzip.compress(LAYER1, mtime=0), None)
    for name, size in (("more:1", 10_000), ("less:1", 10)):
        put_image(registry.host, name, [layer], config_size=size)
        r = gd(tmp_path, "image", "pull", f"{registry.host}/{name}", "--insecure", check=False)
        assert (r.returncode, r.stderr.count(b"\n")) == (6, 1), (name, r.stderr)
        assert b"its descriptor says" in r.stderr and str(size).encode() in r.stderr, r.stderr
    assert gd(tmp_path, "image", "ls", "--json").stdout.strip() == b"[]"
    assert gd(tmp_path, "layers").stdout == b""
    blobs = tmp_path / "store/images/blobs/sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []


def test_a_location_relative_to_the_request_is_resolved_against_its_url(tmp_path, registry, monkeypatch):
    """An upload's Location may be relative to the URL of the request that got it (RFC 3986):
    ``5f2c...?_state=...`` answering ``POST /v2/R/blobs/uploads/`` is ``/v2/R/blobs/uploads/5f2c...``,
    for one PUT, and for PATCH chunks too; a Location relative to the host still works."""
    from urllib.parse import urlsplit

    import graphdriver
    from graphdriver import images
    from graphdriver.images import distribution
    from graphdriver.images import registry as client
    from graphdriver.testing.treeutil import F, make_tar

    made_relative: list[str] = []

    def relative(method: str, path: str, request: dict[str, str], status: int, headers: dict[str, str],
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        key = next((k for k in headers if k.lower() == "location"), None)
        if key is not None:
            target = urlsplit(headers[key])
            folder = urlsplit(path).path.rpartition("/")[0] + "/"
            query = f"?{target.query}" if target.query else ""
            if method == "PATCH":  # relative to the host
                headers[key] = target.path + query
                made_relative.append(method)
            elif target.path.startswith(folder) and target.path != folder:
                headers[key] = target.path[len(folder):] + query
                made_relative.append(method)
        return status, headers, body

    proxy = RewritingProxy(registry.host, relative)
    try:
        oci_layout(tmp_path / "in", [LAYER1, LAYER2], name="localhost/made:1")
        gd(tmp_path, "image", "load", str(tmp_path / "in"))
        dest = f"{proxy.host}/team/rel:1"
        pushed = gd(tmp_path, "image", "push", "localhost/made:1", dest, "--insecure", check=False)
        assert pushed.returncode == 0, pushed.stderr
        assert made_relative.count("POST") == 3  # two layers and the config, each its own upload
        info = skopeo_json("inspect", "--tls-verify=false", f"docker://{registry.host}/team/rel:1")
        assert info["Digest"] == pushed.stdout.decode().strip()
        # In chunks: the POST answers with a relative Location, each PATCH with one from the host.
        big = make_tar({"big": F(os.urandom(300_000))})
        oci_layout(tmp_path / "big", [big], name="localhost/big:1", gzipped=False)
        monkeypatch.setattr(client, "UPLOAD_CHUNK", 128 << 10)
        store = graphdriver.open_store(str(tmp_path / "api"), run_root=str(tmp_path / "api-run"),
                                       driver="vfs")
        images.load(store, str(tmp_path / "big"))
        made_relative.clear()
        digest = distribution.push(store, "localhost/big:1", f"{proxy.host}/team/big:1", insecure=True)
        assert made_relative.count("PATCH") >= 2
        info = skopeo_json("inspect", "--tls-verify=false", f"docker://{registry.host}/team/big:1")
        assert info["Digest"] == digest
    finally:
        proxy.close()


# ----- index entries without a platform -----------------------------------------------------------------


class Blobs:
    """The blobs of images made for a test, by digest in the order made: pushed to a registry, or
    written as an OCI layout.  Each image has one layer, a file saying which image it is."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, bytes]] = {}
        self.diff_ids: dict[str, str] = {}

    def put(self, media_type: str, data: bytes, **extra: object) -> dict:
        from tests.test_images import sha256

        self.data.setdefault(sha256(data), (media_type, data))
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}

    def image(self, label: str, platform: str) -> dict:
        """An image's manifest descriptor (no platform in it); *platform* is its config's."""
        from graphdriver.images import oci
        from graphdriver.testing.treeutil import F, make_tar
        from tests.test_images import sha256

        layer = make_tar({"which": F(label.encode())})
        self.diff_ids[label] = sha256(layer)
        os_name, arch = platform.split("/")[:2]
        config = {"os": os_name, "architecture": arch,
                  "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}
        manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                    "config": self.put(oci.OCI_CONFIG, json.dumps(config).encode()),
                    "layers": [self.put(oci.OCI_LAYER, layer)]}
        return self.put(oci.OCI_MANIFEST, json.dumps(manifest).encode())

    def index(self, entries: list[tuple[dict, str | None]]) -> dict:
        """An index of *entries* (a descriptor, and the platform it is listed with or None)."""
        from graphdriver.images import oci

        manifests = []
        for desc, platform in entries:
            if platform is not None:
                os_name, arch = platform.split("/")[:2]
                desc = {**desc, "platform": {"os": os_name, "architecture": arch}}
            manifests.append(desc)
        value = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}
        return self.put(oci.OCI_INDEX, json.dumps(value).encode())

    def push(self, host: str, name: str, top: dict) -> None:
        """Every blob to repository/tag *name* of the registry at *host*, *top* under the tag."""
        from graphdriver.images import oci

        repo = name.partition(":")[0]
        for digest, (media_type, data) in self.data.items():
            if media_type in oci.MANIFESTS | oci.INDEXES:
                put_manifest(host, f"{repo}@{digest}", data, media_type)
            else:
                put_blob(host, repo, data)
        put_manifest(host, name, self.data[top["digest"]][1], top["mediaType"])

    def layout(self, path: Path, name: str, top: dict) -> Path:
        """An OCI layout at *path* whose index.json names *top* as *name*."""
        (path / "blobs/sha256").mkdir(parents=True)
        for digest, (_, data) in self.data.items():
            (path / "blobs/sha256" / digest[7:]).write_bytes(data)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        entry = {**top, "annotations": {"io.containerd.image.name": name}}
        (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        return path


def test_an_index_entry_without_a_platform_is_the_last_match_on_pull_and_load(tmp_path, registry):
    """As containerd and skopeo: an index entry that names no platform is taken when no entry of
    the platform is there (its config then says whether it is of the platform asked for); an entry
    of the platform wins over it; one that is an index is looked into the same way."""
    from graphdriver.images.sources import host_platform

    here = host_platform()
    other, third = [p for p in ("linux/s390x", "linux/ppc64le", "linux/amd64") if p != here][:2]
    blobs = Blobs()
    bare, theirs = blobs.image("bare", here), blobs.image("other", other)
    cases = {  # name: (its top index, the image a pull or load without --platform takes)
        "fallback": (blobs.index([(theirs, other), (bare, None)]), "bare"),
        "outranked": (blobs.index([(bare, None), (blobs.image("here", here), here)]), "here"),
        "nested": (blobs.index([(theirs, other), (blobs.index([(blobs.image("deep-other", other), other),
                                                              (blobs.image("deep", here), here)]), None)]),
                   "deep"),
    }
    for case, (top, _) in cases.items():
        blobs.push(registry.host, f"{case}:1", top)
    for case, (top, label) in cases.items():
        ref = f"{registry.host}/{case}:1"
        pulled = gd(tmp_path, "image", "pull", ref, "--insecure", check=False)
        assert pulled.returncode == 0, (case, pulled.stderr)
        inspected = json.loads(gd(tmp_path, "image", "inspect", ref).stdout)
        assert [x["DiffID"] for x in inspected["Layers"]] == [blobs.diff_ids[label]], case
        loader = tmp_path / f"load-{case}"
        loader.mkdir()
        layout = blobs.layout(tmp_path / f"layout-{case}", f"localhost/{case}:1", top)
        loaded = gd(loader, "image", "load", str(layout), check=False)
        assert loaded.returncode == 0, (case, loaded.stderr)
        inspected = json.loads(gd(loader, "image", "inspect", f"localhost/{case}:1").stdout)
        assert [x["DiffID"] for x in inspected["Layers"]] == [blobs.diff_ids[label]], case
    # The platform asked for: an entry of it, else the entry without one if its config is of it.
    ref = f"{registry.host}/fallback:1"
    gd(tmp_path, "image", "pull", ref, "--insecure", "--platform", other)
    assert json.loads(gd(tmp_path, "image", "inspect", ref).stdout)["Layers"][0]["DiffID"] == \
        blobs.diff_ids["other"]
    layout = tmp_path / "layout-fallback"
    for command in (("image", "pull", ref, "--insecure"), ("image", "load", str(layout))):
        refused = gd(tmp_path, *command, "--platform", third, check=False)
        assert refused.returncode == 3 and refused.stderr.count(b"\n") == 1, (command, refused.stderr)
        assert f"no image for platform {third} (it has {here})".encode() in refused.stderr, refused.stderr

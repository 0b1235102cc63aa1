"""A client of the OCI distribution API: manifests and blobs in and out of a registry.

Over ``requests`` (a well-kept HTTP library that streams at disk speed with
hashing; see the README's dependency list), imported only by ``image pull``
and ``image push``.  What it does:

* **Names**: ``docker.io`` is served by ``registry-1.docker.io``; always https,
  its certificate checked against the default CAs and those configured for the
  registry as podman and Docker keep them (:func:`ca_files`), and the client
  certificates kept there presented when the registry asks for one
  (:func:`client_certificates`).  ``insecure`` is
  Docker's insecure-registries and podman's ``--tls-verify=false``: https without
  checking the certificate (a self-signed one), and plain http when the registry
  does not speak TLS (a local registry).
* **Auth**: anonymous first; on a 401 the ``WWW-Authenticate`` challenge says
  how: ``Basic`` with the credentials of ``$REGISTRY_AUTH_FILE`` or
  ``~/.docker/config.json`` (``auths.<key>.auth``, base64 ``user:password``; the key
  the repository's namespace, its registry, or a URL of it: :func:`_auth_rank`),
  or ``Bearer`` (a token from the challenge's realm for the repository's scope,
  asked with those credentials if any, kept per scope).
* **Retries**: 429 and 5xx answers and dropped connections, of the registry and
  of its token service alike, are retried with exponential backoff (``Retry-After``
  honoured, in seconds or as an HTTP-date: :func:`retry_delay`), at most
  :data:`ATTEMPTS` times; a blob download that breaks resumes where it stopped with a
  ``Range`` request, and every blob is checked against its digest.  Blobs are asked for
  as they are stored (``Accept-Encoding: identity``); one gzipped on the way all the same is
  decoded, one in an encoding nothing here decodes is refused.
* **Push**: a blob the registry has (``HEAD``) is not sent; one a sibling
  repository of the same registry has is mounted (``?mount=&from=``) when the
  registry offers it; others go up in one ``PUT`` or, when large, in chunks
  (``PATCH`` with ``Content-Range``), then the manifest.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

from graphdriver.errors import (
    GraphDriverError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unsupported,
    shorten,
)
from graphdriver.images import oci
from graphdriver.images.reference import Reference

ATTEMPTS = 5
#: No manifest or index is larger (the distribution spec's registries cap them at 4 MiB).
MANIFEST_LIMIT = 4 << 20
_BACKOFF = 0.5  # seconds, doubled each retry
#: The longest wait before a retry that a ``Retry-After`` is heeded for, in seconds.
RETRY_AFTER_CAP = 60.0
_CHUNK = 1 << 20
#: Blobs up to this size go up in one request; larger ones in chunks of it.
UPLOAD_CHUNK = 32 << 20
ACCEPT = ", ".join([oci.OCI_INDEX, oci.DOCKER_LIST, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST])
#: Blobs are asked for as they are stored (their digest is of those bytes, and a ``Range`` counts
#: them), never gzipped on the way by a registry or a CDN in front of it.
AS_STORED = {"Accept-Encoding": "identity"}


class RegistryError(GraphDriverError):
    """The registry refused or failed (exit code 1)."""

    exit_code = 1


#: Where podman (containers/image: the user's folder, then ``/etc/containers``) and Docker
#: keep the CA certificates of a registry: a folder per ``host[:port]`` whose ``*.crt``
#: files are CAs (Docker's ``ca.crt`` among them).
CERTS_DIRS = ("~/.config/containers/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d")


def _certs_d(host: str) -> list[str]:
    """The files of registry *host*'s (``host[:port]``) folder in each of :data:`CERTS_DIRS`
    there is one in, each folder's sorted."""
    out = []
    for top in CERTS_DIRS:
        folder = os.path.join(os.path.expanduser(top), host)
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # as containers/image passes over a folder this user may not read
        out += [os.path.join(folder, n) for n in names]
    return out


def _certs_hint(host: str) -> str:
    """Where registry *host*'s certificates go, as a refusal names it: its folder that exists
    (the first of :data:`CERTS_DIRS`), else the system's for root and the user's for a user."""
    for top in CERTS_DIRS:
        if os.path.isdir(os.path.join(os.path.expanduser(top), host)):
            return f"{top}/{host}/"
    top = "/etc/containers/certs.d" if os.geteuid() == 0 else "~/.config/containers/certs.d"
    return f"{top}/{host}/"


def ca_files(host: str) -> list[str]:
    """The CA certificates configured for registry *host*: the ``*.crt`` files of its folders."""
    return [f for f in _certs_d(host) if f.endswith(".crt")]


def client_certificates(host: str) -> list[tuple[str, str]]:
    """Every client certificate configured for registry *host*, with its key: each ``NAME.cert``
    of its folders (with ``NAME.key`` beside it), in order.  Docker and containers/image load them
    all, and Go's TLS presents the one the registry's CAs accept, so a registry that refuses one is
    offered the next.  A certificate without its key, or a key without its certificate, is an error.
    """
    files = _certs_d(host)
    present = set(files)
    for path in files:
        stem, ext = os.path.splitext(path)
        if ext == ".key" and stem + ".cert" not in present:
            raise RegistryError(f"client key {path}",
                                f"its certificate {os.path.basename(stem)}.cert is missing")
        if ext == ".cert" and stem + ".key" not in present:
            raise RegistryError(f"client certificate {path}",
                                f"its key {os.path.basename(stem)}.key is missing")
    return [(f, f[: -len(".cert")] + ".key") for f in files if f.endswith(".cert")]


def _ca_bundle(files: list[str], default: str) -> str:
    """A temporary file of the CAs of *default* (a bundle, when it is a file) and *files*, for
    ``requests`` to verify against (it takes one bundle); the caller removes it."""
    parts = [default] if os.path.isfile(default) else []
    fd, path = tempfile.mkstemp(prefix="graphdriver-ca-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in [*parts, *files]:
                try:
                    with open(part, "rb") as f:
                        out.write(f.read().rstrip(b"\n") + b"\n")
                except OSError as e:
                    raise RegistryError(f"CA certificate {part}", f"unreadable: {e.strerror or e}") from e
    except BaseException:
        os.unlink(path)
        raise
    return path


def registry_host(ref: Reference) -> str:
    """The host[:port] that serves *ref*'s registry; InvalidArgument (exit 2) for a port no TCP
    connection can have (``localhost:0``, ``localhost:99999``: names a reference may hold, as
    Docker's grammar allows any digits, but no registry to reach)."""
    _, sep, port = ref.domain.rpartition(":")
    if sep and port.isdigit() and not 0 < int(port) < 65536:
        raise InvalidArgument(f"registry {shorten(ref.domain)!r}", "a port is 1 to 65535")
    return "registry-1.docker.io" if ref.domain == "docker.io" else ref.domain


def _auth_files() -> list[str]:
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(os.environ["REGISTRY_AUTH_FILE"])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        files.append(os.path.join(xdg, "containers", "auth.json"))
    files.append(os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    return files


def credentials(domain: str, path: str = "") -> tuple[tuple[str, str], str] | None:
    """``(user, password)`` for repository *path* of registry *domain* from the first auth file
    that has a key for it (the best key of that file: see :func:`_auth_rank`), and that file.

    A file that is missing is passed over; one that cannot be read, is not
    JSON, or holds an ``auth`` for *domain* that is not base64 ``user:password``
    is an error naming the file (credentials silently skipped would show up
    later as a puzzling refusal by the registry).
    """
    for file in _auth_files():
        auths = _read_auths(file)
        ranked = sorted((rank, i, key) for i, key in enumerate(auths)
                        if (rank := _auth_rank(key, domain, path)) is not None)
        for _, _, key in ranked:
            entry = auths[key]
            if not isinstance(entry, dict):
                raise GraphDriverError(f"auth file {file}", f"auths.{shorten(key)} is not an object")
            if entry.get("auth"):  # an entry without one is a credential helper's: passed over
                return _decode_auth(entry["auth"], file, key), file
    return None


def _auth_rank(key: str, domain: str, path: str) -> int | None:
    """How closely the auth file key *key* names repository *path* of registry *domain* (0 is
    best), as podman (containers/image) and Docker's CLI read the keys: ``HOST/ns/repo`` and
    ``HOST/ns`` name a namespace and rank by how much of *path* they hold, the whole first;
    then ``HOST``; then a URL, ``https://HOST/v1/``, ``https://HOST/v2/`` or ``http://HOST/``
    (``docker login`` wrote those), which names its host whatever its path.  None: a key of
    another registry, or of a namespace that does not hold *path*."""
    hosts = {domain}
    if domain == "docker.io":
        hosts |= {"index.docker.io", "registry-1.docker.io"}
    parts = path.split("/") if path else []
    scheme, sep, rest = key.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        return len(parts) + 1 if rest.partition("/")[0] in hosts else None
    host, _, namespace = key.rstrip("/").partition("/")
    if host not in hosts:
        return None
    held = namespace.split("/") if namespace else []
    if held != parts[: len(held)]:
        return None
    return len(parts) - len(held)


def _read_auths(path: str) -> dict[str, Any]:
    """The ``auths`` object of the auth file at *path* (empty when there is no such file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise GraphDriverError(f"auth file {path}", f"unreadable: {e.strerror or e}") from e
    try:
        value = json.loads(data)
    except ValueError as e:
        raise GraphDriverError(f"auth file {path}", f"not JSON: {e}") from e
    auths = value.get("auths", {}) if isinstance(value, dict) else None
    if not isinstance(auths, dict):
        raise GraphDriverError(f"auth file {path}", "not an object with an \"auths\" object")
    return auths


def _decode_auth(value: object, path: str, key: str) -> tuple[str, str]:
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        user, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as e:
        raise GraphDriverError(f"auth file {path}", f"auths.{shorten(key)}.auth is not base64 "
                               f"user:password ({e})") from e
    if not colon:
        raise GraphDriverError(f"auth file {path}", f"auths.{shorten(key)}.auth is not base64 user:password")
    return user, password


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` as ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    while rest:
        key, _, rest = rest.strip().partition("=")
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
        else:
            value, _, rest = rest.partition(",")
        params[key.strip().lower()] = value
        rest = rest.lstrip(" ,")
    return scheme.lower(), params


class Registry:
    """One registry and one repository on it; ``with Registry(ref) as r: ...``."""

    def __init__(self, ref: Reference, *, insecure: bool = False, push: bool = False) -> None:
        import requests

        self.requests = requests
        self.ref = ref
        self.host = registry_host(ref)
        self.base = f"https://{self.host}/v2/"
        self.insecure = insecure
        #: Whether the scheme is settled: https once the registry answered over it (or always,
        #: when not insecure), http once an insecure registry could not be reached over https.
        self.settled = not insecure
        #: Why TLS with an insecure registry failed, when that sent it to plain http.
        self.tls_failure: str | None = None
        self.repo = ref.path
        found = credentials(ref.domain, ref.path)
        self.creds = found[0] if found is not None else None
        #: Where the credentials came from, as a refusal names it.
        self.creds_from = (f"the credentials of {found[1]}" if found is not None else
                           "no credentials in $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json "
                           "or ~/.docker/config.json")
        self.actions = "pull,push" if push else "pull"
        self.tokens: dict[str, str] = {}
        self.auth_header: str | None = None
        self.bundle: str | None = None
        certs = client_certificates(ref.domain)
        #: The client certificates configured after the one given: each is offered in turn
        #: while the registry refuses the one before.
        self.spare_certs = certs[1:]
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "graphdriver"
        #: Given with every request: the session's own would yield to $REQUESTS_CA_BUNDLE.
        self.verify = self._trust()
        #: Also given when insecure: the registry may ask for it all the same.
        self.session.cert = certs[0] if certs else None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()
        if self.bundle is not None:
            try:
                os.unlink(self.bundle)
            except FileNotFoundError:
                pass
            self.bundle = None

    def _trust(self) -> bool | str:
        """What the registry's certificate is checked against (``requests``' ``verify``): not at
        all when insecure; else the default CAs, with those of :func:`ca_files` when there are any."""
        if self.insecure:
            _quiet_unverified(self.host)
            return False
        files = ca_files(self.ref.domain)  # docker.io, as podman names its folder
        if not files:
            return True
        default = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or ""
        self.bundle = _ca_bundle(files, default or self.requests.utils.DEFAULT_CA_BUNDLE_PATH)
        return self.bundle

    # ----- requests, auth and retries ----------------------------------------------------------

    def _url(self, path: str) -> str:
        """*path* relative to ``/v2/``, or a whole URL (a Location, resolved by :func:`_location_of`)."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base + path

    def _location(self, resp: Any) -> str:
        location = _location_of(resp)
        if location is None:
            raise RegistryError(f"registry {self.host}",
                                f"an upload answer ({resp.status_code}) without Location")
        return location

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), scope_repo: str | None = None,
                **kw: Any) -> Any:
        """*method* on *path* (relative to ``/v2/``) with auth and retries; the response."""
        headers = dict(kw.pop("headers", {}) or {})
        data = kw.pop("data", None)
        rewind = data.seek if hasattr(data, "seek") else None
        start = data.tell() if rewind is not None else 0
        authed_once = False
        attempt = 0  # retries so far (an answer asking for credentials, or a change to http, is none)
        while True:
            if self.auth_header:
                headers["Authorization"] = self.auth_header
            if rewind is not None:
                rewind(start)
            try:
                resp = self.session.request(method, self._url(path), headers=headers, data=data,
                                            timeout=(30, 300), allow_redirects=True, verify=self.verify, **kw)
            except (self.requests.ConnectionError, self.requests.Timeout) as e:
                if self._next_certificate(e):
                    continue
                if self._use_http(e):
                    continue
                if isinstance(e, self.requests.exceptions.SSLError):
                    raise self._tls_error(e) from e  # a handshake fails the same way every time
                self._wait(attempt, None, f"{method} {self._where(path)}", _connection_failure(e))
                attempt += 1
                continue
            self.settled = True
            if resp.status_code == 401 and not authed_once:
                authed_once = True
                self._authenticate(resp, scope_repo or self.repo)
                resp.close()
                continue
            if _retried(resp.status_code):
                resp.close()
                self._wait(attempt, resp.headers.get("Retry-After"), f"{method} {self._where(path)}",
                           f"HTTP {resp.status_code}")
                attempt += 1
                continue
            if resp.status_code not in ok:
                self._fail(method, path, resp)
            return resp

    def _next_certificate(self, error: Exception) -> bool:
        """Whether the request that failed with *error* goes again with the next client certificate:
        the registry refused the one given (its TLS alert names our certificate) and another is
        configured, as Go's TLS (Docker's, podman's) presents the one of those the registry accepts."""
        if not self.spare_certs or not isinstance(error, self.requests.exceptions.SSLError):
            return False
        detail = _tls_detail(error)
        if not ("alert" in detail and "certificate" in detail):
            return False
        self.session.cert = self.spare_certs.pop(0)
        for adapter in self.session.adapters.values():
            adapter.close()  # no connection made with the refused certificate is used again
        return True

    def _use_http(self, error: Exception) -> bool:
        """Whether the request that failed with *error* goes again over plain http: an insecure
        registry not reached over https yet (it speaks no TLS, or listens for http only)."""
        if self.settled or not isinstance(error, self.requests.ConnectionError):
            return False  # (a read timing out had a connection: https works)
        tls = isinstance(error, self.requests.exceptions.SSLError)
        if not tls and _connection_failure(error) != "connection refused":
            return False  # a reset or a timeout says nothing of the scheme: retried as it is
        self.settled = True
        if isinstance(error, self.requests.exceptions.SSLError):
            self.tls_failure = _tls_detail(error)
        self.base = f"http://{self.host}/v2/"
        return True

    def _where(self, path: str) -> str:
        """*path* (relative to ``/v2/``, or a whole URL a registry sent) as messages show it:
        host and path, without the query."""
        if "://" in path:
            return shorten(path.partition("://")[2].split("?")[0], 160)
        return f"{self.host}/v2/{shorten(path.split('?')[0], 120)}"

    def _tls_error(self, error: Exception) -> RegistryError:
        """One line for a failed TLS handshake: what the TLS library said, and the likely cause."""
        detail = _tls_detail(error)
        if "alert" in detail and "certificate" in detail:  # the registry's word on ours
            why = (f"the registry asks for a client certificate, and refused the one given or found none "
                   f"(NAME.cert and NAME.key go in {_certs_hint(self.host)})")
        elif "certificate" in detail:
            why = (f"its certificate is not trusted (its CA goes in {_certs_hint(self.host)}; "
                   "--insecure skips the check)")
        else:  # most often an http-only registry answering the TLS handshake in plain text
            why = "the registry may speak plain HTTP (use --insecure for http)"
        return RegistryError(f"registry {self.host}", f"TLS failed ({detail}): {why}")

    def _wait(self, attempt: int, retry_after: str | None, what: str, why: str) -> None:
        """Sleep before retry *attempt* + 1 of *what* (a request, with the registry's host) that
        failed for *why*; give up when that would be one attempt too many."""
        if attempt + 1 >= ATTEMPTS:
            raise RegistryError(what, f"gave up after {ATTEMPTS} attempts: {why}")
        time.sleep(retry_delay(attempt, retry_after))

    def _fail(self, method: str, path: str, resp: Any) -> None:
        errors = _errors(resp)
        detail = "; ".join(": ".join(shorten(str(e[k]), 200) for k in ("code", "message") if e.get(k))
                           for e in errors)
        what = f"{method} {self._where(path)}"
        why = f"HTTP {resp.status_code}" + (f" ({detail})" if detail else "")
        if resp.status_code == 400 and self.base.startswith("http:") and "HTTPS" in _text(resp):
            why += ": the registry speaks HTTPS"  # Go's answer to plain http
            if self.tls_failure:
                why += f", and TLS with it failed ({self.tls_failure})"
        resp.close()
        if resp.status_code == 404:
            if method in ("GET", "HEAD"):  # what was asked for is not there: the image pulled, a blob
                raise NotFound(what, why)
            raise RegistryError(what, why + self._unknown_repository(path, errors))  # a push refused
        if resp.status_code in (401, 403):
            raise RegistryError(what, why + f": not authorised ({self.creds_from})")
        raise RegistryError(what, why)

    def _unknown_repository(self, path: str, errors: list[dict[str, Any]]) -> str:
        """What a 404 to a push's request on *path* says of the repository, with the *errors*
        of its answer: that the registry knows none of that name when it says so
        (``NAME_UNKNOWN``), or says nothing of a request to the repository's own path (not an
        upload's Location); else nothing more."""
        codes = {str(e.get("code")) for e in errors}
        if "NAME_UNKNOWN" in codes or (not codes and "://" not in path):
            return (f": the registry has no repository {shorten(self.repo)} to push to "
                    "(it may have to be made there first)")
        return ""

    def _authenticate(self, resp: Any, repo: str) -> None:
        header = resp.headers.get("WWW-Authenticate", "")
        scheme, params = _challenge(header)
        if scheme == "basic":
            if self.creds is None:
                raise RegistryError(f"registry {self.host}", "asks for credentials and none are configured")
            user, password = self.creds
            self.auth_header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            return
        if not header.strip():
            raise RegistryError(f"registry {self.host}", "refused the request (HTTP 401) without saying "
                                "how to authenticate (no WWW-Authenticate header)")
        if scheme != "bearer" or "realm" not in params:
            raise Unsupported(f"registry {self.host}", f"unknown authentication {shorten(header)!r}")
        realm = params["realm"]
        if not _is_http_url(realm):
            raise RegistryError(f"registry {self.host}", f"its authentication challenge is malformed "
                                f"(WWW-Authenticate: {shorten(header, 120)!r}): no token service URL")
        scope = params.get("scope") or f"repository:{repo}:{self.actions}"
        self.tokens.pop(scope, None)  # asked again: the one we had expired (or never was)
        # One scope parameter per space-separated entry of the challenge's (a mount asks
        # for two repositories), as the token protocol has it.
        query = {"service": params.get("service", self.host), "scope": scope.split()}
        self.tokens[scope] = self._token(realm, query)
        self.auth_header = f"Bearer {self.tokens[scope]}"

    def _token(self, realm: str, query: dict[str, Any]) -> str:
        """A token from the token service at *realm* for *query* (service and scopes).

        A busy or failing service (429, 5xx) or a dropped connection is asked again as a
        registry is (:meth:`_wait`: backoff, ``Retry-After`` honoured, at most :data:`ATTEMPTS`
        times); a 401 or 403 is a refusal at once.
        """
        what = f"token service {shorten(realm, 160)}"
        if self.insecure:  # its certificate goes unchecked as the registry's does, as Docker's
            from urllib.parse import urlsplit

            _quiet_unverified(urlsplit(realm).netloc)
        for attempt in range(ATTEMPTS):
            got, why = self._ask_token(realm, query, what)
            if got is not None and not _retried(got.status_code):
                return _token_of(got, what, self.creds_from)
            retry_after = got.headers.get("Retry-After") if got is not None else None
            self._wait(attempt, retry_after, what, why)
        raise AssertionError("unreachable: _wait gives up on the last attempt")

    def _ask_token(self, realm: str, query: dict[str, Any], what: str) -> tuple[Any, str]:
        """One request to the token service *what* at *realm*: its answer, or None for a
        connection that failed; and why it would be asked again."""
        try:
            got = self.session.get(realm, params=query, auth=self.creds, timeout=(30, 60), verify=self.verify)
        except self.requests.exceptions.SSLError as e:
            raise RegistryError(what, f"TLS failed ({_tls_detail(e)})") from e  # the same every time
        except (self.requests.ConnectionError, self.requests.Timeout,
                self.requests.exceptions.ChunkedEncodingError) as e:
            return None, _connection_failure(e)
        except self.requests.RequestException as e:  # a URL requests will not ask
            raise RegistryError(f"registry {self.host}", f"its authentication challenge is malformed "
                                f"(realm {shorten(realm, 120)!r}: {type(e).__name__})") from e
        if _retried(got.status_code):
            got.close()
        return got, f"HTTP {got.status_code}"

    # ----- pulling --------------------------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) *reference* (a tag or a digest) names, and its media type."""
        resp, data = self._body(f"{self.repo}/manifests/{reference}", {"Accept": ACCEPT}, MANIFEST_LIMIT + 1)
        # Named by the image asked for; a manifest an index chose for it by its digest too.
        own = reference in (self.ref.tag or "latest", self.ref.digest)
        which = "manifest" if own else f"manifest {reference}"
        if len(data) > MANIFEST_LIMIT:
            raise IntegrityError(f"image {self.ref}", f"{which} larger than {MANIFEST_LIMIT} bytes")
        if reference.startswith("sha256:") and oci.sha256_digest(data) != reference:
            raise IntegrityError(f"image {self.ref}",
                                 f"{which} does not match its digest (the registry sent other bytes)")
        media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media or media == "application/json":
            media = str(oci.load_json(data, "manifest").get("mediaType", oci.OCI_MANIFEST))
        return data, media

    def _body(self, path: str, headers: dict[str, str], limit: int,
              check: Callable[[Any], object] | None = None) -> tuple[Any, bytes]:
        """GET *path* and read at most *limit* bytes of its body (*check* looks at the answer
        first); a connection dropped while the body comes is asked again, as a request is."""
        from urllib3.exceptions import HTTPError

        for attempt in range(ATTEMPTS):
            resp = self.request("GET", path, stream=True, headers=headers)
            try:
                if check is not None:
                    check(resp)
                data: bytes = resp.raw.read(limit, decode_content=True)
                return resp, data
            except (HTTPError, self.requests.ConnectionError) as e:
                self._wait(attempt, None, f"GET {self._where(path)}", f"the connection dropped ({e})")
            finally:
                resp.close()
        raise AssertionError("unreachable: _wait gives up on the last attempt")

    def blob_bytes(self, desc: oci.Descriptor, limit: int = 64 << 20) -> bytes:
        """The blob *desc* (a config), checked against its descriptor's size and digest."""
        digest = desc.digest
        if desc.size > limit:
            raise IntegrityError(f"blob {digest}", "larger than a config may be")
        _, data = self._body(f"{self.repo}/blobs/{digest}", AS_STORED, desc.size + 1,
                             lambda resp: _encoding(resp, digest))  # (one sent all the same is decoded)
        if len(data) > desc.size:
            raise IntegrityError(f"blob {digest}", f"the registry has more than the {desc.size} bytes "
                                 "its descriptor says")
        if len(data) < desc.size:
            raise IntegrityError(f"blob {digest}", f"the registry has {len(data)} bytes of it, its "
                                 f"descriptor says {desc.size}")
        if oci.sha256_digest(data) != digest:
            raise IntegrityError(f"blob {digest}", "its bytes do not match its digest")
        return data

    def download(self, desc: oci.Descriptor, path: str,
                 progress: Callable[[int], None] | None = None) -> None:
        """Download blob *desc* to *path* (resuming a partial file there), checked against its digest.

        A blob the registry does not hold comes from the descriptor's ``urls`` when it has
        some (a foreign layer: Windows base layers, which registries may not distribute), each
        tried in turn as Docker and containerd do, without the registry's credentials.
        """
        source = f"{self.repo}/blobs/{desc.digest}"
        try:
            self._download(desc, path, progress, source, self._registry_get(source))
            return
        except NotFound:
            foreign = [u for u in desc.urls if u.startswith(("https://", "http://"))]
            if not foreign:
                raise
        failures = []
        for url in foreign:
            try:
                self._download(desc, path, progress, url, self._foreign_get(url))
                return
            except (NotFound, RegistryError) as e:
                failures.append(str(e))
        raise NotFound(f"blob {desc.digest}", "not in the registry, nor at its urls: " + "; ".join(failures))

    def _registry_get(self, source: str) -> Callable[[dict[str, str]], Any]:
        return lambda headers: self.request("GET", source, ok=(200, 206, 416), stream=True, headers=headers)

    def _foreign_get(self, url: str) -> Callable[[dict[str, str]], Any]:
        """A GET of a foreign layer's *url*: the registry's credentials are not the host's."""

        def get(headers: dict[str, str]) -> Any:
            resp = self.session.get(url, headers=headers, stream=True, timeout=(30, 300), verify=self.verify)
            if resp.status_code not in (200, 206, 416):
                self._fail("GET", url, resp)
            return resp

        return get

    def _download(self, desc: oci.Descriptor, path: str, progress: Callable[[int], None] | None,
                  source: str, get: Callable[[dict[str, str]], Any]) -> None:
        have = os.path.getsize(path) if os.path.exists(path) else 0
        if have > desc.size:
            os.unlink(path)
            have = 0
        for attempt in range(ATTEMPTS):
            if have == desc.size and os.path.exists(path):
                break  # a partial file already whole (its process died while checking it)
            headers = {**AS_STORED, "Range": f"bytes={have}-"} if have else AS_STORED
            try:
                resp = get(headers)
                if resp.status_code == 416:  # nothing from there on: the registry's blob ends sooner
                    resp.close()
                    _short(path, desc, have)
                encoded = _encoding(resp, desc.digest)  # read decoded (iter_content decodes)
                if resp.status_code == 200 and have:
                    have = 0  # the registry ignored the range: start over
                elif resp.status_code == 206 and (encoded or not str(resp.headers.get("Content-Range", "")
                                                                    ).startswith(f"bytes {have}-")):
                    resp.close()
                    os.unlink(path)
                    have = 0  # not the range asked for (or one of encoded bytes): start over
                    continue
                with open(path, "ab" if have else "wb") as out:
                    for chunk in resp.iter_content(_CHUNK):
                        if have + len(chunk) > desc.size:  # a registry sending more than it said
                            resp.close()
                            os.unlink(path)
                            raise IntegrityError(f"blob {desc.digest}", f"larger than its {desc.size} bytes")
                        out.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                resp.close()
                if have >= desc.size:
                    break
                if not encoded and _whole_blob(resp) == have:
                    _short(path, desc, have)  # the blob, as the registry holds it, came whole: it is shorter
            except (self.requests.ConnectionError, self.requests.Timeout,
                    self.requests.exceptions.ChunkedEncodingError) as e:
                have = os.path.getsize(path) if os.path.exists(path) else 0
                self._wait(attempt, None, f"GET {self._where(source)}", _connection_failure(e))
        if have != desc.size or not os.path.exists(path) or oci.file_digest(path) != desc.digest:
            if os.path.exists(path):
                os.unlink(path)
            raise IntegrityError(f"blob {desc.digest}", "the downloaded bytes do not match its digest")

    # ----- pushing --------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        resp = self.request("HEAD", f"{self.repo}/blobs/{digest}", ok=(200, 404))
        resp.close()
        return bool(resp.status_code == 200)

    def mount_blob(self, digest: str, source_repo: str) -> bool:
        """Ask the registry to link *digest* from *source_repo*; whether it did."""
        resp = self.request("POST", f"{self.repo}/blobs/uploads/?mount={digest}&from={source_repo}",
                            ok=(201, 202))
        resp.close()
        if resp.status_code == 201:
            return True
        self._cancel(_location_of(resp))
        return False

    def _cancel(self, location: str | None) -> None:
        if location:
            try:
                self.request("DELETE", location, ok=(204, 404, 405)).close()
            except GraphDriverError:
                pass

    def upload(self, digest: str, size: int, opener: Callable[[], BinaryIO], quiet: bool = True) -> None:
        """Upload a blob: one PUT when small, PATCH chunks then a PUT when large (a bar on a terminal)."""
        from graphdriver import progress

        resp = self.request("POST", f"{self.repo}/blobs/uploads/", ok=(202,))
        location = self._location(resp)
        resp.close()
        bar_off = quiet or size < 1 << 20
        with opener() as raw, progress.reading(raw, f"push {digest[7:19]}", size, bar_off) as f:
            if size <= UPLOAD_CHUNK:
                # An empty blob goes as an empty body: a file of no length would go chunked,
                # beside its Content-Length of 0, and the registry would wait for the chunks.
                resp = self.request("PUT", _with_digest(location, digest), ok=(201,), data=f if size else b"",
                                    headers={"Content-Type": "application/octet-stream",
                                             "Content-Length": str(size)})
                resp.close()
                return
            sent = 0
            while sent < size:
                chunk = f.read(UPLOAD_CHUNK)
                end = sent + len(chunk) - 1
                resp = self.request("PATCH", location, ok=(202,), data=chunk, headers={
                    "Content-Type": "application/octet-stream", "Content-Range": f"{sent}-{end}",
                    "Content-Length": str(len(chunk))})
                location = _location_of(resp) or location
                resp.close()
                sent += len(chunk)
        done = self.request("PUT", _with_digest(location, digest), ok=(201,), headers={"Content-Length": "0"})
        done.close()

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"{self.repo}/manifests/{reference}", ok=(201,), data=data,
                            headers={"Content-Type": media_type})
        resp.close()
        return str(resp.headers.get("Docker-Content-Digest") or oci.sha256_digest(data))


def retry_delay(attempt: int, retry_after: str | None, now: datetime.datetime | None = None) -> float:
    """Seconds to wait before retry *attempt* + 1: the backoff, or longer when the answer's
    ``Retry-After`` (*retry_after*, seconds or an HTTP-date: RFC 9110) asks for it, though never
    more than :data:`RETRY_AFTER_CAP`.  A date past (as of *now*, default the clock's) asks for
    nothing more; a value that is neither is passed over."""
    delay = _BACKOFF * 2.0**attempt
    asked = _retry_after_seconds(retry_after, now)
    if asked is not None:
        delay = min(max(delay, asked), RETRY_AFTER_CAP)
    return delay


def _retry_after_seconds(value: str | None, now: datetime.datetime | None) -> float | None:
    """The seconds a ``Retry-After`` *value* asks to wait from *now* (negative for a date
    past); None for no value, or one that is neither seconds nor an HTTP-date."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # ``-0000``: UTC, as an HTTP-date always is
        when = when.replace(tzinfo=datetime.UTC)
    return (when - (now or datetime.datetime.now(datetime.UTC))).total_seconds()


def _errors(resp: Any) -> list[dict[str, Any]]:
    """The ``errors`` of a registry's error answer *resp* (as the distribution spec has them:
    objects with a ``code`` and a ``message``); none for a body that holds no such list."""
    try:
        body = resp.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _retried(status: int) -> bool:
    """Whether an answer of HTTP *status* is asked again: busy (429) or failing (5xx)."""
    return status == 429 or status >= 500


def _token_of(got: Any, what: str, creds_from: str) -> str:
    """The token in the token service *what*'s answer *got* (one that is not to be asked again);
    *creds_from* says where the credentials given came from."""
    if got.status_code in (401, 403):
        raise RegistryError(what, f"HTTP {got.status_code}: not authorised ({creds_from})")
    if got.status_code != 200:
        raise RegistryError(what, f"HTTP {got.status_code}")
    try:
        body = got.json()
    except ValueError:
        body = None
    token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise RegistryError(what, "answered no token")
    return token


def _is_http_url(text: str) -> bool:
    """Whether *text* is an http or https URL with a host (a token service's realm must be)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _encoding(resp: Any, digest: str) -> str:
    """The ``Content-Encoding`` of the answer *resp* for blob *digest* (``""`` for none), though
    it was asked for as it is: one the HTTP library decodes (gzip, deflate) is read decoded;
    another would leave bytes that are not the blob, and is refused in words."""
    value = str(resp.headers.get("Content-Encoding", "")).strip().lower()
    if value in ("", "identity"):
        return ""
    decoders = getattr(resp.raw, "CONTENT_DECODERS", ("gzip", "x-gzip", "deflate"))
    if all(part.strip() in (*decoders, "identity") for part in value.split(",")):
        return value
    resp.close()
    raise RegistryError(f"blob {digest}", f"the registry sent it with Content-Encoding {shorten(value, 40)}, "
                        "which cannot be decoded here (it was asked for as it is stored)")


def _whole_blob(resp: Any) -> int | None:
    """The size of the whole blob as the registry's answer gives it (a 200's length, the total
    of a 206's range); None when it does not say."""
    if resp.status_code == 206:
        total = str(resp.headers.get("Content-Range", "")).rpartition("/")[2]
    else:
        total = str(resp.headers.get("Content-Length", ""))
    return int(total) if total.isdigit() else None


def _short(path: str, desc: oci.Descriptor, have: int) -> NoReturn:
    """A registry whose blob ends before its descriptor's size: not a connection to retry."""
    if os.path.exists(path):
        os.unlink(path)
    raise IntegrityError(f"blob {desc.digest}", f"the registry has {have} bytes of it, its descriptor "
                         f"says {desc.size}")


def _location_of(resp: Any) -> str | None:
    """The ``Location`` of the answer *resp* as a whole URL (None when there is none): resolved
    against the URL of the request that got it (RFC 3986), so that a path-relative one
    (``5f2c...?_state=...`` answering ``POST /v2/R/blobs/uploads/``) stays in that folder, and
    a host-relative or whole one is what it says."""
    from urllib.parse import urljoin

    location = resp.headers.get("Location")
    return urljoin(str(resp.url), str(location)) if location else None


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + f"digest={digest}"


def _tls_detail(error: Exception) -> str:
    """What the TLS library said of a failed handshake, in words (``certificate verify failed``)."""
    import re

    found = re.search(r"\[SSL: ([A-Z0-9_]+)\]|certificate verify failed|wrong version number", str(error))
    return (found.group(1) or found.group(0) if found else "handshake failed").lower().replace("_", " ")


def _quiet_unverified(host: str) -> None:
    """No warning for each request made to *host* (``host[:port]``) without checking its
    certificate: asked for (``--insecure``), it is no news.  Other hosts still warn."""
    import re
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    name = (host if host.endswith("]") or ":" not in host else host.rpartition(":")[0]).strip("[]")
    message = rf"Unverified HTTPS request is being made to host '\[?{re.escape(name)}\]?'"
    warnings.filterwarnings("ignore", message, InsecureRequestWarning)


def _connection_failure(error: Exception) -> str:
    """What a failed connection comes down to, in words (not the HTTP library's nested reprs)."""
    import re

    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if found:
        return found.group(1).strip().rstrip(":").lower()
    if "timed out" in text.lower():
        return "timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text or "ProtocolError" in text:
        return "the connection was closed"
    return type(error).__name__


def _text(resp: Any) -> str:
    """The start of an error answer's body ("" if it cannot be read)."""
    try:
        return str(resp.text[:200])
    except (ValueError, OSError, RuntimeError):
        return ""

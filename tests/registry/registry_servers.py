"""Registries for the tests: Debian's docker-registry as a real process, and a small
in-process registry that can misbehave on purpose (faults, bearer auth)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lamina_testing import need, wait_for_registry

USER, PASSWORD = "lamina", "correct horse"   # the htpasswd registry's one user


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- docker-registry --------------------------------------------------------------------
_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d+)')


@dataclass
class DockerRegistry:
    """``docker-registry serve`` on 127.0.0.1; its access log is the wire record."""

    root: Path
    htpasswd: Path | None = None
    tls: tuple[Path, Path] | None = None      # (cert, key)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DockerRegistry:
        binary = need("docker-registry")
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "registry.log"
        for _ in range(5):
            self.port = free_port()
            config = self.root / "config.yml"
            lines = [
                "version: 0.1",
                "log:", "  level: warn", "  accesslog:", "    disabled: false",
                "storage:", "  filesystem:", f"    rootdirectory: {self.root / 'data'}",
                "  delete:", "    enabled: true",
                "http:", f"  addr: 127.0.0.1:{self.port}", "  secret: lamina-tests",
            ]
            if self.tls:
                lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
            if self.htpasswd:
                lines += ["auth:", "  htpasswd:", "    realm: lamina-tests",
                          f"    path: {self.htpasswd}"]
            config.write_text("\n".join(lines) + "\n")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                             stderr=subprocess.STDOUT)
            if self._wait():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start:\n{self.log.read_text()[-2000:]}")

    def _wait(self) -> bool:
        assert self.proc is not None
        scheme = "https" if self.tls else "http"
        return wait_for_registry(self.proc, f"{scheme}://{self.host}", 15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def requests(self, repo: str) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry logged for ``repo``."""
        time.sleep(0.05)  # the log line is written as the response completes
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _ACCESS.search(line)
            if m and m.group(2).startswith(f"/v2/{repo}/"):
                out.append((m.group(1), m.group(2), int(m.group(3))))
        return out


def count(reqs: list[tuple[str, str, int]], method: str, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for m, p, _ in reqs if m == method and rx.search(p))


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost."""
    openssl = need("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def make_htpasswd(path: Path, user: str, password: str) -> Path:
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


# -- the in-process registry ----------------------------------------------------------------
def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Fault:
    """One planned misbehaviour: requests matching ``method`` and ``path`` (a regex) get
    ``status`` (with ``headers``/``body``) ``times`` times (None: always)."""

    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    times: int | None = 1


class FakeRegistry:
    """A distribution-spec registry in memory, enough for pull and push, that can:
    cut a blob's body after N bytes (``cuts``), ignore Range (``ranges=False``) or the
    end of a range (``range_ends=False``: answered to the end of the blob), serve
    wrong bytes (``corrupt``), answer planned errors (``faults``), dribble a blob's body
    (``slow``: digest -> (piece, seconds, head): ``head`` bytes at once, then ``piece``
    bytes at a time with a pause between), and demand
    basic or bearer auth (``auth``: None, "basic", "bearer"; token service at /token)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.links: set[tuple[str, str]] = set()             # (repo, digest): who has what
        self.manifests: dict[str, tuple[str, bytes]] = {}   # "repo:tag" / "repo@digest"
        self.uploads: dict[str, bytearray] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.cuts: dict[str, tuple[int, int | None]] = {}   # digest -> (offset, times)
        self.slow: dict[str, tuple[int, float, int]] = {}   # digest -> (piece, pause, head)
        self.ranges = True
        self.range_ends = True   # False: "bytes=a-b" is served to the end (a wrong range)
        self.corrupt: set[str] = set()
        self.faults: list[Fault] = []
        self.auth: str | None = None
        self.users = {"alice": "s3cret"}
        self.tokens: dict[str, set[str]] = {}               # token -> scopes granted
        self.token_log: list[list[str]] = []
        self.token_life = 300
        self.chunk_min: int | None = None
        self.relative_locations = True
        self.override_content_type: dict[str, str] = {}
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"registry": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeRegistry:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_image(self, repo: str, tag: str, layers: list[bytes],
                  media_type: str = "application/vnd.oci.image.manifest.v1+json",
                  layer_type: str = "application/vnd.oci.image.layer.v1.tar") -> bytes:
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [
                                 sha256(b) for b in layers]}}).encode()
        for b in (config, *layers):
            self.blobs[sha256(b)] = b
            self.links.add((repo, sha256(b)))
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": sha256(b), "size": len(b)}
                       for b in layers]}).encode()
        self.put_manifest(repo, tag, media_type, manifest)
        return manifest

    def put_manifest(self, repo: str, tag: str, media_type: str, raw: bytes) -> None:
        self.manifests[f"{repo}:{tag}"] = (media_type, raw)
        self.manifests[f"{repo}@{sha256(raw)}"] = (media_type, raw)

    def requests(self, method: str, pattern: str = "") -> list[tuple[str, str, dict[str, str]]]:
        rx = re.compile(pattern)
        return [r for r in self.log if r[0] == method and rx.search(r[1])]


class _Handler(BaseHTTPRequestHandler):
    registry: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # -- plumbing --------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        hdrs = {"Docker-Distribution-Api-Version": "registry/2.0", **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message,
                                       "detail": None}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _fault(self) -> bool:
        reg = self.registry
        with reg.lock:
            for f in reg.faults:
                if f.method == self.command and re.search(f.path, self.path) and (
                        f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    fault = f
                    break
            else:
                return False
        self._body()
        self._send(fault.status, fault.body, fault.headers)
        return True

    def _authorised(self, repo: str | None, action: str) -> bool:
        reg = self.registry
        header = self.headers.get("Authorization", "")
        if reg.auth is None:
            return True
        if reg.auth == "basic":
            if header.startswith("Basic "):
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                if reg.users.get(user) == pw:
                    return True
            self._error(401, "UNAUTHORIZED", "authentication required",
                        {"WWW-Authenticate": 'Basic realm="fake"'})
            return False
        scope = f"repository:{repo}:{action}" if repo else ""
        if header.startswith("Bearer "):
            granted = reg.tokens.get(header[7:])
            if granted is not None and (not repo or any(
                    g.startswith(f"repository:{repo}:") and action in g.split(":")[2].split(",")
                    for g in granted)):
                return True
        challenge = f'Bearer realm="http://{reg.host}/token",service="fake"'
        if scope:
            challenge += f',scope="{scope}"'
        self._error(401, "UNAUTHORIZED", "authentication required",
                    {"WWW-Authenticate": challenge})
        return False

    def _token(self) -> None:
        reg = self.registry
        query = parse_qs(urlsplit(self.path).query)
        scopes = query.get("scope", [])
        with reg.lock:
            reg.token_log.append(scopes)
        header = self.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            if reg.users.get(user) != pw:
                self._send(401, json.dumps({"details": "incorrect username or password"})
                           .encode(), {"Content-Type": "application/json"})
                return
        if user is None and scopes:
            self._send(401, json.dumps({"details": "authentication required"}).encode(),
                       {"Content-Type": "application/json"})
            return
        token = secrets.token_hex(8)
        with reg.lock:
            reg.tokens[token] = set(scopes)
        self._send(200, json.dumps({"access_token": token, "expires_in": reg.token_life})
                   .encode(), {"Content-Type": "application/json"})

    # -- routes ----------------------------------------------------------------------
    def _route(self) -> None:
        reg = self.registry
        path = urlsplit(self.path).path
        with reg.lock:
            reg.log.append((self.command, self.path, dict(self.headers.items())))
        if path == "/token":
            self._token()
            return
        if self._fault():
            return
        if path == "/v2/":
            if self._authorised(None, "pull"):
                self._send(200, b"{}", {"Content-Type": "application/json"})
            return
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/(uploads/?[^/]*|[^/]+)", path)
        if not m:
            self._error(404, "NAME_UNKNOWN", "no route")
            return
        repo, kind, rest = m.groups()
        action = "pull" if self.command in ("GET", "HEAD") else "push"
        if not self._authorised(repo, action):
            return
        if kind == "manifests":
            self._manifest(repo, rest)
        elif rest.startswith("uploads"):
            self._upload(repo, rest)
        else:
            self._blob(repo, rest)

    def _manifest(self, repo: str, ref: str) -> None:
        reg = self.registry
        key = f"{repo}@{ref}" if ref.startswith("sha256:") else f"{repo}:{ref}"
        if self.command == "PUT":
            raw = self._body()
            reg.put_manifest(repo, ref, self.headers.get("Content-Type", ""), raw)
            self._send(201, b"", {"Docker-Content-Digest": sha256(raw),
                                  "Location": f"/v2/{repo}/manifests/{sha256(raw)}"})
            return
        found = reg.manifests.get(key)
        if found is None:
            self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            return
        media_type, raw = found
        media_type = reg.override_content_type.get(ref, media_type)
        self._send(200, raw, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)})

    def _blob(self, repo: str, digest: str) -> None:
        reg = self.registry
        data = reg.blobs.get(digest)
        if data is None or (repo, digest) not in reg.links:
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return
        if digest in reg.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if self.command == "HEAD":
            self._send(200, b"", {"Content-Type": "application/octet-stream",
                                  "Docker-Content-Digest": digest}, length=len(data))
            return
        start = 0
        rng = self.headers.get("Range")
        status, headers = 200, {"Content-Type": "application/octet-stream",
                                "Docker-Content-Digest": digest, "Accept-Ranges": "bytes"}
        end = len(data) - 1
        if rng and reg.ranges:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            if last and reg.range_ends:
                end = min(end, int(last))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        cut = reg.cuts.get(digest)
        if cut is not None and (cut[1] is None or cut[1] > 0):
            with reg.lock:
                if cut[1] is not None:
                    reg.cuts[digest] = (cut[0], cut[1] - 1)
            # announce the whole body, send up to the cut offset (of the blob), hang up
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:max(0, cut[0] - start)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        slow = reg.slow.get(digest)
        if slow is not None:
            self._dribble(status, body, headers, *slow)
            return
        self._send(status, body, headers)

    def _dribble(self, status: int, body: bytes, headers: dict[str, str], piece: int,
                 pause: float, head: int) -> None:
        """The whole body announced, ``head`` bytes sent, then ``piece`` bytes at a time;
        stops when the client hangs up."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body[:head])
            for at in range(head, len(body), piece):
                self.wfile.write(body[at:at + piece])
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            self.close_connection = True

    def _upload(self, repo: str, rest: str) -> None:
        reg = self.registry
        query = parse_qs(urlsplit(self.path).query)
        if self.command == "POST":
            self._body()
            mount = query.get("mount", [None])[0]
            origin = query.get("from", [""])[0]
            if mount and (origin, mount) in reg.links:
                reg.links.add((repo, mount))
                self._send(201, b"", {"Docker-Content-Digest": mount,
                                      "Location": f"/v2/{repo}/blobs/{mount}"})
                return
            uid = secrets.token_hex(8)
            reg.uploads[uid] = bytearray()
            loc = f"/v2/{repo}/blobs/uploads/{uid}?state=x"
            if not reg.relative_locations:
                loc = f"http://{reg.host}{loc}"
            headers = {"Location": loc, "Range": "0-0"}
            if reg.chunk_min:
                headers["OCI-Chunk-Min-Length"] = str(reg.chunk_min)
            self._send(202, b"", headers)
            return
        uid = rest.split("/", 1)[1]
        buf = reg.uploads.get(uid)
        if buf is None:
            self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
            return
        if self.command == "DELETE":
            reg.uploads.pop(uid, None)
            self._send(204)
            return
        body = self._body()
        if self.command == "PATCH":
            crange = self.headers.get("Content-Range")
            if crange and int(crange.split("-")[0]) != len(buf):
                self._error(416, "BLOB_UPLOAD_INVALID", "bad range")
                return
            if reg.chunk_min and len(body) < reg.chunk_min:
                self._error(416, "SIZE_INVALID", "chunk too small")
                return
            buf += body
            # an absolute location for later chunks, to test both kinds
            self._send(202, b"", {"Location": f"http://{reg.host}/v2/{repo}/blobs/uploads/{uid}",
                                  "Range": f"0-{len(buf) - 1}"})
            return
        if self.command == "PUT":
            buf += body
            digest = query.get("digest", [""])[0]
            if sha256(bytes(buf)) != digest:
                self._error(400, "DIGEST_INVALID", "provided digest did not match uploaded "
                            "content")
                return
            reg.blobs[digest] = bytes(buf)
            reg.links.add((repo, digest))
            reg.uploads.pop(uid, None)
            self._send(201, b"", {"Docker-Content-Digest": digest,
                                  "Location": f"/v2/{repo}/blobs/{digest}"})
            return
        self._error(405, "UNSUPPORTED", "method")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route


def kill_during_ranges(fake: FakeRegistry, digest: str, argv: list[str],
                       env: dict[str, str]) -> None:
    """Run ``argv`` (a lamina pull or copy of a chunked layer ``digest`` the fake serves)
    and SIGKILL it while its delta fetch reads ranges: the tail came, the plan is made,
    the fake dribbles the rest (``slow``, cleared afterwards)."""
    import signal

    fake.slow[digest] = (4096, 0.05, 0)

    def ranges() -> int:
        return sum("Range" in h for _, _, h in fake.requests("GET", digest))

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while ranges() < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.slow.clear()


# -- pull and push through lamina.transport.transfer (what the CLI runs), with the knobs
# the registry tests turn: an injected httpx client, copy options, mount and blob hooks.
def pull_image(store: Any, ref: Any, opts: Any = None, copy_opts: Any = None,
               client: Any = None) -> Any:
    from dataclasses import replace

    from lamina.transport.copy import CopyOptions
    from lamina.transport.registry import RegistryOptions
    from lamina.transport.transfer import TransferOptions, pull_place, transfer

    opts = opts or RegistryOptions()
    copy_opts = copy_opts or CopyOptions()
    if copy_opts.jobs > 1:
        opts = replace(opts, jobs=copy_opts.jobs)
    src, dst = pull_place(str(ref))
    return transfer(store, src, dst, TransferOptions(
        registry=opts, platform=copy_opts.platform, all_platforms=copy_opts.all_platforms,
        on_event=copy_opts.on_event, client=client)).descriptor


def push_image(store: Any, name: str, dest: Any, opts: Any = None, copy_opts: Any = None,
               client: Any = None, mount_from: Any = None, on_blob: Any = None) -> Any:
    from dataclasses import replace

    from lamina.transport.copy import CopyOptions
    from lamina.transport.registry import RegistryOptions
    from lamina.transport.transfer import TransferOptions, push_places, transfer

    opts = opts or RegistryOptions()
    copy_opts = copy_opts or CopyOptions(all_platforms=True)
    if copy_opts.jobs > 1:
        opts = replace(opts, jobs=copy_opts.jobs)
    src, dst = push_places(name, str(dest))
    return transfer(store, src, dst, TransferOptions(
        registry=opts, platform=copy_opts.platform, all_platforms=copy_opts.all_platforms,
        on_event=copy_opts.on_event, on_push=on_blob, client=client,
        mount_from=mount_from)).descriptor

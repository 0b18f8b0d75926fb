"""lamina's HTTP/1.1 client (``transport.registry.wire``) against real servers on
127.0.0.1: bodies as bytes, chunked streams and sendfile; redirects that leave the
origin lose ``Authorization``; requests through an http proxy named by the
environment (with its credentials); a broken-off body is an error, not a short blob."""

from __future__ import annotations

import base64
import http.client
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lamina.transport.registry.wire import (
    ConnectError,
    FileBody,
    HttpClient,
    ReadError,
    with_params,
)


class Recorder:
    """A server that records each request (line, headers, body) and answers by path:
    ``/redirect-to/<url>`` → 307 there; ``/cut`` → a body shorter than promised;
    anything else → 200 with the request body echoed."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                recorder.seen.append({"line": self.requestline, "headers": dict(self.headers),
                                      "body": body})
                if self.path.startswith("/redirect-to/"):
                    self.send_response(307)
                    self.send_header("Location", self.path.removeprefix("/redirect-to/"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/cut":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.stop()


@pytest.fixture
def other() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.stop()


def test_bodies_bytes_chunked_and_sendfile(server: Recorder, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    sent: list[int] = []
    with HttpClient() as client, open(blob, "rb") as f:
        r = client.request("PUT", server.url + "/a", body=data[:100])
        assert r.status_code == 200 and r.read() == data[:100]
        r = client.request("PUT", server.url + "/b", body=iter([data[:7], b"", data[7:20]]))
        assert r.read() == data[:20]
        r = client.request("PUT", server.url + "/c",
                           body=FileBody(f, len(data) - 10, offset=10, progress=sent.append))
        assert r.read() == data[10:]
        assert client.connections == 1   # keep-alive: one connection for all three
    assert [s["headers"].get("Transfer-Encoding") for s in server.seen] == [None, "chunked", None]
    assert server.seen[2]["headers"]["Content-Length"] == str(len(data) - 10)
    assert sent and sent[-1] == len(data) - 10


def test_redirect_keeps_auth_on_the_origin_and_drops_it_elsewhere(
        server: Recorder, other: Recorder) -> None:
    secret = {"Authorization": "Bearer s3cret"}
    with HttpClient() as client:
        r = client.request("GET", f"{server.url}/redirect-to/{server.url}/same",
                           headers=secret, follow_redirects=True)
        assert r.status_code == 200
        r.read()
        r = client.request("GET", f"{server.url}/redirect-to/{other.url}/storage",
                           headers=secret, follow_redirects=True)
        assert r.status_code == 200
        r.read()
        r = client.request("GET", f"{server.url}/redirect-to/{other.url}/x", headers=secret)
        assert r.status_code == 307   # not followed unless asked
        r.close()
    same = [s for s in server.seen if s["line"].startswith("GET /same")]
    assert same and same[0]["headers"].get("Authorization") == "Bearer s3cret"
    away = [s for s in other.seen if s["line"].startswith("GET /storage")]
    assert away and "Authorization" not in away[0]["headers"]


def test_requests_go_through_the_http_proxy_the_environment_names(
        server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY: absolute-form request lines to the proxy, which forwards them; with
    the host in NO_PROXY the request goes direct."""
    lines: list[str] = []
    auths: list[str | None] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            lines.append(self.requestline)
            auths.append(self.headers.get("Proxy-Authorization"))
            target = self.path.split("://", 1)[1]
            hostport, _, path = target.partition("/")
            host, port = hostport.split(":")
            conn = http.client.HTTPConnection(host, int(port))
            conn.request("GET", "/" + path)
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://u%40x:p%3A1@127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with HttpClient() as client:
            assert client.request("GET", server.url + "/via").status_code == 200
        assert lines == [f"GET {server.url}/via HTTP/1.1"]
        assert auths == ["Basic " + base64.b64encode(b"u@x:p:1").decode()]   # unquoted
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with HttpClient() as client:
            client.request("GET", server.url + "/direct").read()
        assert len(lines) == 1 and server.seen[-1]["line"] == "GET /direct HTTP/1.1"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_empty_reads_leave_the_body_alone(server: Recorder) -> None:
    """A zero-length read mid-body is not the end of it (nor an error)."""
    with HttpClient() as client:
        r = client.request("PUT", server.url + "/e", body=b"0123456789")
        assert r.read1(0) == b"" and r.readinto1(memoryview(bytearray(0))) == 0
        buf = bytearray(4)
        assert r.readinto1(memoryview(buf)) == 4 and bytes(buf) == b"0123"
        assert r.read() == b"456789"
        r = client.request("GET", server.url + "/again")   # the connection went back
        r.read()
        assert client.connections == 1


def test_a_body_cut_short_is_an_error(server: Recorder) -> None:
    with HttpClient() as client:
        r = client.request("GET", server.url + "/cut")
        with pytest.raises(ReadError, match="received 10 bytes"):
            while r.read1():
                pass


def test_refused_connection_names_the_cause() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with HttpClient() as client, pytest.raises(ConnectError) as info:
        client.request("GET", f"http://127.0.0.1:{port}/v2/")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_with_params_appends_to_any_query() -> None:
    assert with_params("http://h/x", {"digest": "sha256:ab"}) == "http://h/x?digest=sha256%3Aab"
    assert with_params("http://h/x?_state=1", [("scope", "a"), ("scope", "b")]) == \
        "http://h/x?_state=1&scope=a&scope=b"
    assert with_params("http://h/x", None) == "http://h/x"

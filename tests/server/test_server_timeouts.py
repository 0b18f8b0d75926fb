"""Slow and too many clients against a real ``lamina serve`` (#10.19): request heads that
never finish, bodies that stall, responses nobody reads, more connections than the cap.
Small timeouts (1-2 s) and socket timeouts of 10 s: a connection the server keeps
makes the test fail by timing out, never by a measured time."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import Serve, digest_of, random_bytes

from lamina.errors import InvalidInput
from lamina.server import load_config

WAIT = 10.0     # how long a test waits for the server to close a connection


def serve(tmp_path: Path, *options: str) -> Serve:
    return Serve(tmp_path / "served", tmp_path / "serve.log", "--no-access-log",
                 *options).start()


def connect(srv: Serve, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
    if data:
        s.sendall(data)
    return s


def closed_by_server(s: socket.socket) -> bytes:
    """Read until the server closes ``s`` (what it sent first, if anything); a server that
    keeps the connection makes recv time out, which fails the test."""
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open (read {got[:80]!r})"
                             ) from None
    finally:
        s.close()
    return got


def head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: registry", *headers, "", ""]
                       ).encode()


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[Serve]:
    srv = serve(tmp_path, "--header-timeout", "1", "--body-timeout", "1",
                "--max-connections", "20")
    yield srv
    srv.stop()


def test_stalled_heads_are_cut_and_do_not_lock_anyone_out(slow: Serve) -> None:
    # 300 slowloris connections (cap 20): half a request line, half the headers, nothing
    stalled = [connect(slow, (b"", b"GET /v2/ HT", b"GET /v2/ HTTP/1.1\r\nHost: r\r\nX-A: ")
                       [i % 3]) for i in range(300)]
    try:
        # a real client still gets through at once: the oldest stalled head makes room
        r = httpx.get(f"{slow.url}/v2/", timeout=WAIT)
        assert r.status_code == 200
        for s in stalled:
            assert closed_by_server(s) == b""      # cut without an answer, like nginx
    finally:
        for s in stalled:
            s.close()
    assert httpx.get(f"{slow.url}/v2/", timeout=WAIT).status_code == 200


def test_trickled_head_does_not_extend_the_deadline(slow: Serve) -> None:
    s = connect(slow)
    request = head("GET", "/v2/")
    try:
        for i in range(len(request) - 1):       # one byte every 0.2 s, never the last
            s.sendall(request[i:i + 1])
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        s.close()
        return
    raise AssertionError("a head sent one byte at a time was never cut")


def test_kept_alive_connection_serves_many_requests_then_idles_out(tmp_path: Path) -> None:
    srv = serve(tmp_path, "--header-timeout", "1", "--idle-timeout", "1")
    try:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT)
        for _ in range(3):      # a connection's later requests get their own deadline
            c.request("GET", "/v2/")
            assert c.getresponse().read() == b"{}"
            time.sleep(0.3)
        assert c.sock is not None
        assert closed_by_server(c.sock) == b""
    finally:
        srv.stop()


def test_busy_connections_refuse_a_new_one_with_503(tmp_path: Path) -> None:
    srv = serve(tmp_path, "--max-connections", "5", "--body-timeout", "30")
    busy = [connect(srv, head("PUT", f"/v2/busy/a/manifests/v{i}", "Content-Length: 1000",
                              "Content-Type: application/vnd.oci.image.manifest.v1+json",
                              "Expect: 100-continue")) for i in range(5)]
    try:
        for s in busy:      # the app reads the body: the request is in flight
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"{")
        answer = closed_by_server(connect(srv))     # answered at once, before it asks
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in answer
        for s in busy:
            s.close()       # slots free as the clients leave
        deadline = time.monotonic() + WAIT
        while (r := httpx.get(f"{srv.url}/v2/", timeout=WAIT)).status_code != 200:
            assert time.monotonic() < deadline, r.status_code
            time.sleep(0.1)
    finally:
        for s in busy:
            s.close()
        srv.stop()
    assert "max_connections (5) all busy" in (tmp_path / "serve.log").read_text()


def test_slow_but_flowing_upload_is_not_cut(tmp_path: Path) -> None:
    srv = serve(tmp_path, "--body-timeout", "1.5")
    blob = random_bytes(8 * 65536, 7)
    try:
        r = httpx.post(f"{srv.url}/v2/slow/a/blobs/uploads/")
        loc = srv.url + r.headers["location"]

        def body() -> Iterator[bytes]:      # 4 s in all, never 1.5 s without a byte
            for i in range(0, len(blob), 65536):
                yield blob[i:i + 65536]
                time.sleep(0.5)

        r = httpx.patch(loc, content=body(), timeout=WAIT * 3)
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(blob) - 1}"
        r = httpx.put(srv.url + r.headers["location"], params={"digest": digest_of(blob)})
        assert r.status_code == 201, r.text
    finally:
        srv.stop()


def test_stalled_upload_is_cut_and_resumes(slow: Serve) -> None:
    blob = random_bytes(1 << 20, 8)
    r = httpx.post(f"{slow.url}/v2/stall/a/blobs/uploads/")
    path = r.headers["location"]
    s = connect(slow, head("PATCH", path, f"Content-Length: {len(blob)}",
                           "Content-Type: application/octet-stream") + blob[:100_000])
    assert closed_by_server(s) == b""       # the body stopped: cut, nothing answered
    r = httpx.get(slow.url + path)
    assert r.status_code == 204
    start, _, end = r.headers["range"].partition("-")
    offset = int(end) + 1
    assert start == "0" and 0 < offset <= 100_000
    r = httpx.patch(slow.url + path, content=blob[offset:],
                    headers={"Content-Range": f"{offset}-{len(blob) - 1}"})
    assert r.status_code == 202, r.text
    r = httpx.put(slow.url + r.headers["location"], params={"digest": digest_of(blob)})
    assert r.status_code == 201, r.text
    assert httpx.get(f"{slow.url}/v2/stall/a/blobs/{digest_of(blob)}").content == blob


def test_unread_response_is_cut(tmp_path: Path) -> None:
    srv = serve(tmp_path, "--body-timeout", "1")
    blob = random_bytes(48 << 20, 9)    # more than the kernel's socket buffers hold
    try:
        r = httpx.post(f"{srv.url}/v2/big/a/blobs/uploads/")
        r = httpx.put(srv.url + r.headers["location"], params={"digest": digest_of(blob)},
                      content=blob, timeout=60)
        assert r.status_code == 201, r.text
        s = connect(srv, head("GET", f"/v2/big/a/blobs/{digest_of(blob)}"))
        log = tmp_path / "serve.log"
        deadline = time.monotonic() + WAIT      # the client reads nothing meanwhile
        while "response not read for 1 s" not in log.read_text():
            assert time.monotonic() < deadline, "an unread response was never cut"
            time.sleep(0.2)
        got = closed_by_server(s)
        assert got.startswith(b"HTTP/1.1 200 ") and len(got) < len(blob)
    finally:
        srv.stop()


def test_connection_settings_in_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[server]\nheader_timeout = 2.5\nbody_timeout = 7\nidle_timeout = 9\n"
                   "max_connections = 30\n")
    c = load_config(cfg).connections
    assert (c.header_timeout, c.body_timeout, c.idle_timeout, c.max_connections) == (
        2.5, 7.0, 9, 30)
    for bad, message in (("header_timeout = 0", "header_timeout must be a number greater"),
                         ("body_timeout = inf", "body_timeout must be a number greater"),
                         ("body_timeout = 'x'", "body_timeout has the wrong type"),
                         ("idle_timeout = 1.5", "idle_timeout has the wrong type"),
                         ("max_connections = -1", "max_connections must be a number")):
        cfg.write_text(f"[server]\n{bad}\n")
        with pytest.raises(InvalidInput) as e:
            load_config(cfg)
        assert str(e.value).startswith(f"{cfg}: {message}"), e.value   # the file once


def test_open_files_limit_fits_the_connection_cap() -> None:
    probe = """
import resource, sys
from lamina.server.run import fit_fd_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (100, int(sys.argv[1])))
print(fit_fd_limit(1024), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    def run(hard: int) -> tuple[str, str]:
        p = subprocess.run([sys.executable, "-c", probe, str(hard)], capture_output=True,
                           text=True, check=True)
        return p.stdout.strip(), p.stderr
    # a hard limit with room: the soft one is raised, the cap kept
    assert run(5000)[0] == "1024 2112"
    # no room: fewer connections, said once
    out, err = run(100)
    assert out == "18 100"
    assert "max_connections lowered from 1024 to 18: the open files limit is 100" in err


def test_slow_clients_arriving_all_along_do_not_stop_a_push(slow: Serve) -> None:
    """Stalled heads keep coming (cap 20) while a real client pushes: the oldest idle
    connection is the one closed to make room, never one mid-request."""
    stop = threading.Event()
    stalled: list[socket.socket] = []

    def attacker() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                stalled.append(connect(slow, b"GET /v2/ HTTP/1.1\r\n"))
            time.sleep(0.01)

    t = threading.Thread(target=attacker)
    t.start()
    try:
        blob = random_bytes(4 << 20, 10)
        for _ in range(3):
            r = httpx.post(f"{slow.url}/v2/push/a/blobs/uploads/", timeout=WAIT)
            assert r.status_code == 202
            r = httpx.put(slow.url + r.headers["location"], content=blob, timeout=WAIT,
                          params={"digest": digest_of(blob)})
            assert r.status_code == 201, r.text
    finally:
        stop.set()
        t.join()
        for s in stalled:
            s.close()

"""``lamina run -p``: a private network namespace, ports forwarded from the host."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers
from test_run_nonroot import nobody_store  # noqa: F401  (the fixture)

from lamina.errors import InvalidInput, Unsupported
from lamina.run.portfwd import PortMapping, parse_port
from lamina_testing import LAMINA, Lamina, need, need_root

PAGE_A = (Path(__file__).parents[2] / "examples/seed/index-a.html").read_text()


def test_port_forms_parse_as_dockers() -> None:
    assert parse_port("80") == PortMapping(80)
    assert parse_port("8080:80") == PortMapping(80, 8080)
    assert parse_port("127.0.0.1:8080:80/udp") == PortMapping(80, 8080, "127.0.0.1", "udp")
    assert parse_port("127.0.0.1::80") == PortMapping(80, 0, "127.0.0.1")
    assert parse_port("[::1]:8080:80") == PortMapping(80, 8080, "::1")
    assert str(PortMapping(80, 8080, "127.0.0.1")) == "80/tcp -> 127.0.0.1:8080"
    for bad, message in (("80/sctp", "must be tcp or udp"), ("x:80", "host port 'x'"),
                         ("8080:0", "container port '0'"), ("1.2.3:8080:80", "not an IP"),
                         ("a:b:c:d", "expected")):
        with pytest.raises(InvalidInput, match=message):
            parse_port(bad)
    with pytest.raises(Unsupported, match="ranges"):
        parse_port("8000-8001:80-81")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Background lamina runs, stopped (SIGTERM, as `docker stop`) after the test."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(lam: Lamina, procs: list[subprocess.Popen[str]], *args: str) -> tuple[
        subprocess.Popen[str], int]:
    """Start ``lamina run ARGS`` in the background; return it and the host port it
    announced (``-p`` without a host port)."""
    proc = subprocess.Popen([LAMINA, "run", *args], cwd=lam.cwd, env=lam.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.fullmatch(r"\d+/(tcp|udp) -> 127\.0\.0\.1:(\d+)\n", line)
    assert found, line + proc.stderr.read()
    return proc, int(found.group(2))


def _until(what: str, attempt: object) -> object:
    """Retry ``attempt`` while the server inside is still starting (at most 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return attempt()  # type: ignore[operator]
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never answered") from None
            time.sleep(0.1)


@pytest.mark.parametrize("user", ["root", "www-data"])   # bwrap; unshare + init
def test_busybox_httpd_is_served_to_the_host(seeded: Lamina, user: str,
                                             started: list[subprocess.Popen[str]]) -> None:
    need_root()
    need("bwrap")
    inside = 80 if user == "root" else 8080   # www-data has no NET_BIND_SERVICE
    proc, port = _start(seeded, started, "-p", f"127.0.0.1::{inside}", "-u", user, "demo/a",
                        "httpd", "-f", "-p", str(inside), "-h", "/var/www/html")

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            return str(r.read().decode())

    assert _until("httpd", fetch) == PAGE_A
    assert fetch() == PAGE_A   # a second connection, the same way
    # The container's network is its own: lo, nothing else (the httpd is not on the host's
    # port 80, only the forwarded one).
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 80)) != 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    # The port is free again (nothing listens; connections in TIME_WAIT may stay, hence
    # SO_REUSEADDR) and nothing is left behind.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert_no_leftovers(seeded.root)


def test_udp_is_forwarded_and_answers_come_back(seeded: Lamina, probe_dir: Path,
                                                started: list[subprocess.Popen[str]]) -> None:
    need_root()
    _proc, port = _start(seeded, started, "-p", "127.0.0.1::5353/udp",
                         "-v", f"{probe_dir}:/probe:ro", "demo/a",
                         "sh", "-c", "exec /probe/sec_probe udp-echo 5353")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)

        def ask() -> bytes:
            s.sendto(b"ping", ("127.0.0.1", port))
            return s.recv(100)

        assert _until("the UDP echo", ask) == b"echo:ping"
        s.sendto(b"again", ("127.0.0.1", port))
        assert s.recv(100) == b"echo:again"


def test_private_network_without_ports_and_refusals(seeded: Lamina) -> None:
    need_root()
    res = seeded.run("run", "--network", "private", "demo/a", "sh", "-c",
                     "cat /proc/net/dev | busybox wc -l")
    assert res.out == "3\n"   # two header lines and lo
    res = seeded.fail("run", "-p", "8080:80", "--network", "host", "demo/a", "true")
    assert res.code == 3 and "not of --network host" in res.err
    res = seeded.fail("run", "-p", "8080:80", "--network", "none", "demo/a", "true")
    assert res.code == 3 and "not of --network none" in res.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = seeded.fail("run", "-p", f"127.0.0.1:{port}:80", "demo/a", "true")
    assert res.code == 3 and f"cannot publish 127.0.0.1:{port}/tcp" in res.err
    assert "in use" in res.err and len(res.err.splitlines()) == 1
    assert_no_leftovers(seeded.root)


def test_the_forwarder_goes_with_the_container(seeded: Lamina) -> None:
    """A container that ends by itself takes its forwarder along: no process is left
    holding the port."""
    need_root()
    res = seeded.run("run", "-p", "127.0.0.1::80", "demo/a", "sleep", "0.3")
    port = int(res.err.split(":")[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    leftover = [p for p in os.listdir("/proc") if p.isdigit() and _is_forwarder(p)]
    assert leftover == []


def _is_forwarder(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"lamina.run.portfwd import main" in f.read()
    except OSError:
        return False


def test_rootless_publish_and_confinement(
        nobody_store: tuple[Lamina, list[str]]) -> None:  # noqa: F811  (the fixture)
    """Not root: the forwarder joins the sandbox's user namespace to enter its network
    namespace; the container's root has Docker's capabilities there (port 80 binds) and
    the same seccomp filter."""
    _lam, cmd = nobody_store
    res = subprocess.run([*cmd, "run", "demo/a", "sh", "-c",
                          "busybox unshare -U true 2>/dev/null && echo unshare:ok; "
                          "busybox grep -E '^(Seccomp|CapEff):' /proc/self/status"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["CapEff:", "00000000a80425fb", "Seccomp:", "2"]
    proc = subprocess.Popen([*cmd, "run", "-p", "127.0.0.1::80", "demo/a", "httpd", "-f",
                             "-p", "80", "-h", "/var/www/html"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.fullmatch(r"80/tcp -> 127\.0\.0\.1:(\d+)\n", line)
        assert found, line

        def fetch() -> str:
            url = f"http://127.0.0.1:{found.group(1)}/index.html"
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        assert _until("rootless httpd", fetch) == PAGE_A
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_a_forwarder_that_cannot_enter_says_why(tmp_path: Path) -> None:
    """The forwarder reports on its ready pipe; lamina stops the run with that line
    rather than publish ports leading nowhere (here: a 'namespace' that is a file)."""
    import json
    import sys

    not_ns = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    ready_r, ready_w = os.pipe()
    try:
        spec = {"net": not_ns, "user": -1, "ready": ready_w, "ports": []}
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from lamina.run.portfwd "
                                 "import main; sys.exit(main(sys.argv))", json.dumps(spec)],
                                pass_fds=(not_ns, ready_w))
        os.close(ready_w)
        ready_w = -1
        with os.fdopen(ready_r, "rb") as f:
            ready_r = -1
            said = f.read().decode()
        assert proc.wait(timeout=20) == 1
    finally:
        for fd in (not_ns, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
    assert said == ("the forwarder cannot enter the container's network namespace: "
                    "Invalid argument")

"""The sandbox's options in containers that are kept (#12): a detached container's
published ports are held and forwarded by its monitor after ``lamina run -d`` exited,
freed by ``lamina stop``; ``exec`` is confined as the container's process is (its
seccomp filter and capability set)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers
from test_run_nonroot import nobody_store  # noqa: F401  (the fixture)

from lamina_testing import Lamina, need_root

PAGE_A = (Path(__file__).parents[2] / "examples/seed/index-a.html").read_text()
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/var/www/html")


@pytest.fixture
def lam(seeded: Lamina) -> Iterator[Lamina]:
    """The seeded store; every container left at the end is removed (killed first)."""
    need_root()
    yield seeded
    ids = seeded.run("ps", "-aq", "--no-trunc").out.split()
    if ids:
        seeded.run("rm", "-f", *ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(port: int) -> str:
    """The page, retried while the httpd inside is still starting (at most 20 s: a
    deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _forwarders() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"lamina.run.portfwd import main" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_a_detached_container_serves_its_port_until_stopped(lam: Lamina) -> None:
    port = _free_port()
    res = lam.run("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", "demo/a", *HTTPD)
    cid = res.out.strip()
    # lamina run -d has exited: the monitor holds the port and forwards it.
    assert _fetch(port) == PAGE_A
    assert _fetch(port) == PAGE_A   # a second connection, the same way
    rows = [r for r in lam.run("ps").out.splitlines() if r.startswith(cid[:12])]
    assert len(rows) == 1 and f"127.0.0.1:{port}->80/tcp" in rows[0], rows
    doc = lam.run("inspect", "web").json()[0]
    want = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert doc["NetworkSettings"]["Ports"] == want
    assert doc["HostConfig"]["PortBindings"] == want
    assert doc["HostConfig"]["NetworkMode"] == "private"
    # The port is taken while it runs: a second container cannot have it.
    res = lam.fail("run", "--rm", "-p", f"127.0.0.1:{port}:80", "demo/a", "true")
    assert res.code == 3 and f"cannot publish 127.0.0.1:{port}/tcp" in res.err
    assert len(res.err.splitlines()) == 1
    assert lam.run("stop", "web").out == "web\n"
    # Stopped: nothing listens, the port binds again, no forwarder is left.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert _forwarders() == []
    row = [r for r in lam.run("ps", "-a").out.splitlines() if r.startswith(cid[:12])]
    assert len(row) == 1 and "->" not in row[0]   # ps shows ports of running ones only
    lam.run("rm", "web")
    assert_no_leftovers(lam.root)


def test_exec_is_confined_as_the_container_is(lam: Lamina) -> None:
    lam.run("run", "-d", "--name", "conf", "demo/a", "sleep", "300")
    res = lam.run("exec", "conf", "busybox", "unshare", "-U", "true", check=False)
    assert res.code != 0 and "Operation not permitted" in res.err, res
    res = lam.run("exec", "conf", "sh", "-c", "echo ok; grep -E '^(Seccomp|CapEff):' "
                  "/proc/self/status")
    assert res.out.split() == ["ok", "CapEff:", "00000000a80425fb", "Seccomp:", "2"]
    # What the container was given, exec gets: --privileged lifts the filter ...
    lam.run("run", "-d", "--name", "priv", "--privileged", "demo/a", "sleep", "300")
    res = lam.run("exec", "priv", "sh", "-c", "busybox unshare -U true && echo unshare:ok; "
                  "grep Seccomp: /proc/self/status")
    assert res.out.split() == ["unshare:ok", "Seccomp:", "0"]
    # ... and --cap-drop ALL leaves exec's root without capabilities.
    lam.run("run", "-d", "--name", "nocaps", "--cap-drop", "ALL", "demo/a", "sleep", "300")
    res = lam.run("exec", "nocaps", "sh", "-c", "busybox chown 33 /tmp && echo chown:ok || "
                  "echo chown:denied; grep CapEff: /proc/self/status")
    assert res.out.split() == ["chown:denied", "CapEff:", "0000000000000000"]
    doc = lam.run("inspect", "nocaps").json()[0]["HostConfig"]
    assert doc["CapDrop"] is not None and "CAP_CHOWN" in doc["CapDrop"]
    assert lam.run("inspect", "priv").json()[0]["HostConfig"]["Privileged"] is True


def test_rootless_detached_container_publishes_and_exec_is_confined(
        nobody_store: tuple[Lamina, list[str]]) -> None:  # noqa: F811  (the fixture)
    """Not root: the detached monitor forwards from the sandbox's user namespace, and
    exec, which joins that namespace, loads the container's filter there."""
    _lam, cmd = nobody_store

    def lamina(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                              check=False)

    res = lamina("run", "-d", "--name", "r", "-p", "127.0.0.1::80", "demo/a", *HTTPD)
    try:
        assert res.returncode == 0, res.stderr
        found = re.fullmatch(r"80/tcp -> 127\.0\.0\.1:(\d+)\n", res.stderr)
        assert found, res.stderr
        assert _fetch(int(found.group(1))) == PAGE_A
        res = lamina("exec", "r", "busybox", "unshare", "-U", "true")
        assert res.returncode != 0 and "Operation not permitted" in res.stderr, res
        res = lamina("exec", "r", "sh", "-c", "echo ok; grep Seccomp: /proc/self/status")
        assert res.stdout.split() == ["ok", "Seccomp:", "2"], res
    finally:
        assert lamina("rm", "-f", "r").returncode == 0
    assert _forwarders() == []

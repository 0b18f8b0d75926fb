"""Containers that outlive one command (#12): ``run -d`` under a monitor, ``ps``,
``logs -f``, ``exec``, ``stop``, ``kill``, ``wait``, ``inspect``, ``rm``, ``commit``, the
record surviving lamina and telling the truth when the monitor is killed, and gc keeping
a container's root filesystem.  Real sandboxes over the busybox seed image."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from run_helpers import store_mounts

from lamina_testing import LAMINA, Lamina, import_seed_images, need_root, seed_sources

LOOP = ("trap 'echo got TERM; echo bye >&2; exit 7' TERM; "
        "trap 'echo got USR1; exit 9' USR1; echo started; while :; do sleep 0.1; done")


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def until(what: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll ``what`` until it holds (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _inspect(lam: Lamina, name: str) -> dict[str, object]:
    docs = lam.run("inspect", name).json()
    assert len(docs) == 1
    doc: dict[str, object] = docs[0]
    return doc


def _state(lam: Lamina, name: str) -> dict[str, object]:
    state = _inspect(lam, name)["State"]
    assert isinstance(state, dict)
    return state


def _row(lam: Lamina, name: str, all_: bool = True) -> str | None:
    lines = lam.run("ps", *(["-a"] if all_ else [])).out.splitlines()
    return next((ln for ln in lines[1:] if ln.split()[-1] == name), None)


def test_a_detached_container_lives_logs_execs_stops_and_is_removed(lam: Lamina) -> None:
    cid = lam.run("run", "-d", "--name", "life", "demo/a", "sh", "-c", LOOP).out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    row = _row(lam, "life", all_=False)
    assert row is not None and row.startswith(cid[:12]) and " Up " in row, row
    follow = subprocess.Popen([LAMINA, "logs", "-f", "life"], env=lam.env, cwd=lam.cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "started\n"
        # exec enters the running container: its files, its host name, its PID namespace.
        res = lam.run("exec", "life", "sh", "-c",
                      "echo $((6*7)) > /tmp/x; cat /tmp/x; hostname; cat /proc/1/cmdline | "
                      "tr '\\0' ' ' | grep -c sleep; exit 4", check=False)
        assert (res.code, res.out) == (4, f"42\n{cid[:12]}\n1\n"), res
        assert lam.run("exec", "life", "cat", "/tmp/x").out == "42\n"
        # -e, -w, -u; and the capabilities of the container's process (Docker's set).
        res = lam.run("exec", "-e", "FOO=bar", "-w", "/var", "-u", "www-data", "life", "sh",
                      "-c", "echo $FOO; pwd; id -u")
        assert res.out == "bar\n/var\n33\n"
        caps = lam.run("exec", "life", "sh", "-c", "grep CapEff /proc/self/status /proc/2/status")
        assert [ln.split(":", 1)[1] for ln in caps.out.splitlines()] == [
            "CapEff:\t00000000a80425fb"] * 2, caps.out
        state = _state(lam, "life")
        assert state["Running"] is True and state["Status"] == "running"
        assert isinstance(state["Pid"], int) and os.path.exists(f"/proc/{state['Pid']}")
        # SIGTERM from stop reaches the script's trap; its status is recorded.
        assert lam.run("stop", "life").out == "life\n"
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0
    assert out == "got TERM\n" and err == "bye\n", (out, err)
    assert not os.path.exists(f"/proc/{state['Pid']}")
    assert _row(lam, "life", all_=False) is None
    row = _row(lam, "life")
    assert row is not None and "Exited (7)" in row, row
    assert lam.run("wait", "life").out == "7\n"
    doc = _inspect(lam, "life")
    assert doc["Id"] == cid and doc["Name"] == "/life"
    state = _state(lam, "life")
    assert (state["Status"], state["Running"], state["ExitCode"], state["Pid"]) == (
        "exited", False, 7, 0)
    assert str(state["FinishedAt"]) > str(state["StartedAt"]) > "2000"
    config = doc["Config"]
    assert isinstance(config, dict) and config["Image"] == "demo/a"
    assert config["Hostname"] == cid[:12]
    # --tail counts the lines of both streams, as Docker's.
    tail = lam.run("logs", "--tail", "1", "life")
    assert (tail.out, tail.err) == ("", "bye\n")
    tail = lam.run("logs", "--tail", "2", "life")
    assert (tail.out, tail.err) == ("got TERM\n", "bye\n")
    assert lam.run("logs", "life").out == "started\ngot TERM\n"
    # Stopped: nothing of it mounted any more.
    assert [p for p in store_mounts(lam.root) if cid in p] == []
    assert lam.run("rm", "life").out == "life\n"
    res = lam.fail("wait", "life")
    assert res.code == 2 and "no such container: life" in res.err
    assert not (lam.root / "containers" / cid).exists()


def test_kill_sends_the_signal_and_stop_escalates_to_sigkill(lam: Lamina) -> None:
    lam.run("run", "-d", "--name", "sig", "demo/a", "sh", "-c", LOOP)
    until(lambda: "started" in lam.run("logs", "sig").out)
    assert lam.run("kill", "-s", "USR1", "sig").out == "sig\n"
    assert lam.run("wait", "sig").out == "9\n"
    assert "got USR1" in lam.run("logs", "sig").out
    res = lam.fail("kill", "sig")
    assert "not running" in res.err
    # A process that ignores the stop signal is killed after -t seconds.
    lam.run("run", "-d", "--name", "stubborn", "demo/a", "sh", "-c",
            "trap '' TERM; echo started; while :; do sleep 0.1; done")
    until(lambda: "started" in lam.run("logs", "stubborn").out)
    lam.run("stop", "-t", "1", "stubborn")
    assert lam.run("wait", "stubborn").out == "137\n"


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        with open(f"/proc/{pid}/status") as f:
            pid = int(next(ln for ln in f if ln.startswith("PPid:")).split()[1])
        chain.append(pid)
    return chain


def test_a_killed_monitor_shows_as_exited_with_an_unknown_status(lam: Lamina) -> None:
    cid = lam.run("run", "-d", "--name", "orphan", "demo/a", "sh", "-c", LOOP).out.strip()
    pid = _state(lam, "orphan")["Pid"]
    assert isinstance(pid, int)
    # command <- sandbox init <- bwrap <- the monitor (a forked lamina).
    monitor = _ancestors(pid)[2]
    with open(f"/proc/{monitor}/cmdline", "rb") as f:
        assert b"lamina" in f.read()
    os.kill(monitor, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{pid}"))   # the sandbox dies with it
    assert _row(lam, "orphan", all_=False) is None
    row = _row(lam, "orphan")
    assert row is not None and "Exited (unknown)" in row, row
    state = _state(lam, "orphan")
    assert (state["Status"], state["ExitCode"]) == ("exited", -1)
    assert "monitor" in str(state["Error"])
    assert lam.run("wait", "orphan").out == "-1\n"
    assert [p for p in store_mounts(lam.root) if cid in p] == []
    lam.run("rm", "orphan")


def test_a_sigterm_to_the_monitor_stops_the_container_as_stop_does(lam: Lamina) -> None:
    """A shutdown's SIGTERM to the monitor is passed on as the stop signal; the status
    is recorded as for lamina stop."""
    lam.run("run", "-d", "--name", "shutdown", "demo/a", "sh", "-c", LOOP)
    until(lambda: "started" in lam.run("logs", "shutdown").out)
    pid = _state(lam, "shutdown")["Pid"]
    assert isinstance(pid, int)
    os.kill(_ancestors(pid)[2], signal.SIGTERM)
    assert lam.run("wait", "shutdown").out == "7\n"
    assert lam.run("logs", "shutdown").out == "started\ngot TERM\n"


def test_rm_keeps_nothing_and_without_it_the_container_stays(lam: Lamina) -> None:
    before = set(lam.run("ps", "-aq").out.split())
    assert lam.run("run", "--rm", "demo/a", "echo", "gone").out == "gone\n"
    assert set(lam.run("ps", "-aq").out.split()) == before
    res = lam.run("run", "--name", "kept", "demo/a", "sh", "-c", "exit 3", check=False)
    assert res.code == 3
    row = _row(lam, "kept")
    assert row is not None and "Exited (3)" in row
    cid = lam.run("run", "-d", "--rm", "demo/a", "sh", "-c", "sleep 0.2").out.strip()
    until(lambda: not (lam.root / "containers" / cid).exists())
    assert cid[:12] not in lam.run("ps", "-aq").out
    # A running container is removed only by force.
    lam.run("run", "-d", "--name", "busy", "demo/a", "sh", "-c", LOOP)
    res = lam.fail("rm", "busy")
    assert res.code == 3 and "is running" in res.err and len(res.err.splitlines()) == 1
    pid = _state(lam, "busy")["Pid"]
    lam.run("rm", "-f", "busy", "kept")
    assert not os.path.exists(f"/proc/{pid}")
    assert set(lam.run("ps", "-aq").out.split()) == before


def test_rm_stop_kill_of_several_go_on_past_a_failure(lam: Lamina) -> None:
    """As ``docker rm A B C``: an unknown name in the middle is one line on stderr, the
    others are still handled (each printed), and the exit status is the failure's."""
    before = set(lam.run("ps", "-aq").out.split())
    for name in ("one", "two"):
        lam.run("run", "--name", name, "demo/a", "sh", "-c", "exit 0")
    lam.run("run", "-d", "--name", "three", "demo/a", "sh", "-c", LOOP)
    res = lam.run("kill", "three", "nosuch", check=False)
    assert res.code == 2 and res.out.split() == ["three"]
    assert res.err.splitlines() == [res.err.strip()] and "nosuch" in res.err
    until(lambda: _state(lam, "three")["Running"] is False)
    res = lam.run("rm", "one", "nosuch", "two", "three", check=False)
    assert res.code == 2 and res.out.split() == ["one", "two", "three"]
    assert len(res.err.splitlines()) == 1 and "nosuch" in res.err
    assert set(lam.run("ps", "-aq").out.split()) == before


def test_a_name_in_use_is_one_clear_error(lam: Lamina) -> None:
    lam.run("run", "-d", "--name", "dup", "demo/a", "sh", "-c", LOOP)
    count = len(lam.run("ps", "-aq").out.split())
    res = lam.fail("run", "--name", "dup", "demo/a", "true")
    assert res.code == 3
    assert res.err.splitlines() == [res.err.strip()]
    assert 'the container name "dup" is already in use' in res.err
    assert len(lam.run("ps", "-aq").out.split()) == count
    res = lam.fail("run", "--name", "bad name", "demo/a", "true")
    assert res.code == 3 and "invalid container name" in res.err


def test_commit_turns_a_containers_changes_into_an_image(lam: Lamina) -> None:
    lam.run("run", "--name", "changer", "demo/a", "sh", "-c",
            "echo changed > /etc/motd; rm /etc/hostname")
    digest = lam.run("commit", "changer", "demo/committed:1").out.strip()
    assert digest.startswith("sha256:")
    assert lam.run("run", "--rm", "demo/committed:1", "cat", "/etc/motd").out == "changed\n"
    res = lam.run("run", "--rm", "demo/committed:1", "cat", "/etc/hostname", check=False)
    assert res.code == 1 and "No such file" in res.err
    history = lam.run("inspect", "demo/committed:1").json()[0]
    assert "lamina commit changer demo/committed:1" in json.dumps(history)
    lam.run("rmi", "demo/committed:1")


def test_gc_keeps_a_containers_snapshots_until_rm(fresh: Lamina, seed: Path) -> None:
    import_seed_images(fresh, seed)
    fresh.run("run", "--name", "keeper", "demo/a", "sh", "-c", "echo kept > /kept")
    # Docker's prune -a: every image no container uses.
    fresh.run("image", "prune", "-a", "-f")
    assert fresh.run("images", "-q").out.split() == [
        fresh.run("inspect", "-f", "{{.Id}}", "demo/a").out.strip()[7:19]]
    fresh.run("rmi", "demo/a")
    report = fresh.run("gc", "--json").json()
    assert report["snapshots_removed"] == [] and report["blobs_removed"] == []
    # The container's rootfs is intact: committed, its file and the image's are there.
    fresh.run("commit", "keeper", "demo/again")
    res = fresh.run("run", "--rm", "demo/again", "cat", "/kept", "/var/www/html/index.html")
    assert res.out.startswith("kept\n") and len(res.out) > len("kept\n")
    fresh.run("rmi", "demo/again")
    fresh.run("rm", "keeper")
    report = fresh.run("gc", "--json").json()
    # demo/a's four, and the committed layer's (made by the run of demo/again).
    assert len(report["snapshots_removed"]) == len(seed_sources(seed, "a")) + 1
    assert fresh.run("ps", "-aq").out == ""


def test_a_detached_command_not_in_the_image_fails_as_docker_run_does(lam: Lamina) -> None:
    res = lam.run("run", "-d", "--name", "missing", "demo/a", "no-such-command", check=False)
    assert res.code == 127 and "could not start" in res.err
    assert re.fullmatch(r"[0-9a-f]{64}\n", res.out)
    logs = lam.run("logs", "missing")
    assert logs.err == 'exec: "no-such-command": executable file not found in $PATH\n'
    row = _row(lam, "missing")
    assert row is not None and "Exited (127)" in row

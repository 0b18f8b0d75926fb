"""Signals to ``lamina run`` reach the process, as ``docker run`` proxies them, and lamina
exits with the process's status (#10.11).  Real sandboxes: bwrap (root USER) and the
unshare init (a non-root USER as root), over the busybox seed image."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers

from lamina_testing import LAMINA, Lamina, need_root

# bwrap runs a root USER; a non-root USER as root goes through unshare + lamina's init.
SANDBOXES = {"bwrap": [], "unshare": ["-u", "www-data"]}
TRAP = "trap 'echo got {sig}; exit {code}' {sig}; echo started; while :; do sleep 0.1; done"


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def _start(lam: Lamina, *args: str) -> subprocess.Popen[str]:
    """``lamina run ARGS``, returned once the container said "started" (its traps set)."""
    proc = subprocess.Popen([LAMINA, "run", *args], env=lam.env, cwd=lam.cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "started\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize(("sig", "code"), [("TERM", 7), ("INT", 5)])
def test_the_signal_reaches_the_process_and_lamina_exits_with_its_status(
        seeded: Lamina, sandbox: str, sig: str, code: int) -> None:
    """SIGTERM (the default STOPSIGNAL) and SIGINT: the app's trap runs and its status
    is lamina's, not 130."""
    proc = _start(seeded, *SANDBOXES[sandbox], "demo/a", "sh", "-c",
                  TRAP.format(sig=sig, code=code))
    proc.send_signal(signal.Signals["SIG" + sig])
    assert _finish(proc)[:2] == (code, f"got {sig}\n")
    assert_no_leftovers(seeded.root)


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_sigterm_sends_the_images_stopsignal(seeded: Lamina, tmp_path: Path,
                                             sandbox: str) -> None:
    (tmp_path / "Containerfile").write_text("FROM demo/a\nSTOPSIGNAL SIGUSR1\n")
    seeded.run("build", "-t", f"sig/usr1-{sandbox}", str(tmp_path))
    script = ("trap 'echo got TERM; exit 7' TERM; " + TRAP.format(sig="USR1", code=9))
    proc = _start(seeded, *SANDBOXES[sandbox], f"sig/usr1-{sandbox}", "sh", "-c", script)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc)[:2] == (9, "got USR1\n")
    # --stop-signal overrides the image's, by number as docker run takes it.
    proc = _start(seeded, *SANDBOXES[sandbox], "--stop-signal", "15",
                  f"sig/usr1-{sandbox}", "sh", "-c", script)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc)[:2] == (7, "got TERM\n")


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_process_ignoring_the_stop_signal_is_killed_after_the_timeout(
        seeded: Lamina, sandbox: str) -> None:
    proc = _start(seeded, *SANDBOXES[sandbox], "--stop-timeout", "1", "demo/a", "sh", "-c",
                  "trap '' TERM; echo started; while :; do sleep 0.1; done")
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc)[0] == 128 + 9
    assert_no_leftovers(seeded.root)


def test_a_bad_stop_signal_is_refused(seeded: Lamina) -> None:
    res = seeded.fail("run", "--stop-signal", "SIGNOPE", "demo/a", "true")
    assert res.code == 3 and "invalid signal: SIGNOPE" in res.err


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_ctrl_c_on_a_terminal_reaches_the_process_once(seeded: Lamina, sandbox: str) -> None:
    """lamina on a real terminal (a pty): what is typed reaches the process, and Ctrl-C
    is delivered to it exactly once (the app counts them), its status lamina's."""
    script = ("n=0; trap 'n=$((n+1))' INT; read line; echo \"read $line\"; "
              "while [ $n = 0 ]; do sleep 0.1; done; sleep 0.5; echo \"INTs: $n\"; exit 5")
    pid, fd = pty.fork()
    if pid == 0:  # the child: lamina in the foreground of the new terminal
        os.environ.update(seeded.env)
        os.chdir(seeded.cwd)
        os.execv(LAMINA, [LAMINA, "run", *SANDBOXES[sandbox], "demo/a", "sh", "-c", script])
    out = b""
    try:
        os.write(fd, b"hello\n")
        while b"read hello" not in out:
            out += os.read(fd, 4096)
        os.write(fd, b"\x03")   # the terminal's VINTR: SIGINT to its foreground group
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:   # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        deadline = time.monotonic() + 60
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if status[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert "INTs: 1" in text and "Traceback" not in text, text
    assert os.waitstatus_to_exitcode(status[1]) == 5
    assert_no_leftovers(seeded.root)

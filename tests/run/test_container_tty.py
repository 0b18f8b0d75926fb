"""``run -it`` and ``exec -it`` through a real terminal (#12): lamina runs on the slave
side of a pty this test holds, as under a terminal emulator.  The container gets a
terminal of its own (``tty`` names its /dev/pts), TERM, the window size the test set,
and a resize of the test's terminal reaches it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time

import pytest

from lamina_testing import LAMINA, Lamina, need_root


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


class Terminal:
    """``lamina ARGS`` on a new pty; the test types and reads on the master side."""

    def __init__(self, lam: Lamina, *args: str, rows: int = 33, cols: int = 111) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # pragma: no cover - the child execs at once
            os.execve(LAMINA, [LAMINA, *args], lam.env)
        self.resize(rows, cols)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        # The kernel signals the terminal's foreground group (lamina): SIGWINCH.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, token: str, seconds: float = 30.0) -> str:
        """Everything up to and including ``token`` (a deadline against hangs)."""
        want = token.encode()
        deadline = time.monotonic() + seconds
        while want not in self.seen:
            assert time.monotonic() < deadline, f"no {token!r} in {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:   # EIO: lamina is gone
                    break
        head, _, self.seen = self.seen.partition(want)
        return (head + want).decode(errors="replace")

    def finish(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def _answer(term: Terminal, command: str, mark: str) -> list[str]:
    """Type ``command; echo mark`` and return the lines it printed (the terminal echoes
    the typed line first; the mark is printed with a prefix the echo does not have)."""
    term.type(f"{command}; echo @@{mark}\n")
    text = term.expect(f"\r\n@@{mark}\r\n")
    lines = text.split("\r\n")
    start = max(i for i, ln in enumerate(lines) if ln.endswith(f"echo @@{mark}"))
    return lines[start + 1:-2]


def test_run_it_gives_the_container_a_terminal_of_its_own(lam: Lamina) -> None:
    term = Terminal(lam, "run", "-it", "--rm", "demo/a", "sh")
    term.expect("# ")   # the shell's prompt: lamina's terminal is in raw mode by now
    assert _answer(term, "busybox tty; echo $TERM", "one") == ["/dev/pts/0", "xterm"]
    assert _answer(term, "busybox stty size", "two") == ["33 111"]
    term.resize(44, 122)
    # The shell's terminal follows: the size lamina passed on after its SIGWINCH.
    deadline = time.monotonic() + 30
    while (size := _answer(term, "busybox stty size", "three")) != ["44 122"]:
        assert time.monotonic() < deadline, size
    term.type("exit 5\n")
    assert term.finish() == 5


def test_exec_it_enters_a_running_container_with_a_terminal(lam: Lamina) -> None:
    lam.run("run", "-d", "--name", "ttyd", "demo/a", "sh", "-c", "while :; do sleep 0.1; done")
    term = Terminal(lam, "exec", "-it", "ttyd", "sh", rows=20, cols=70)
    term.expect("# ")
    tty_name = _answer(term, "busybox tty", "one")
    assert len(tty_name) == 1 and tty_name[0].startswith("/dev/pts/"), tty_name
    assert _answer(term, "busybox stty size; hostname", "two") == [
        "20 70", lam.run("inspect", "ttyd").json()[0]["Id"][:12]]
    term.type("exit 3\n")
    assert term.finish() == 3

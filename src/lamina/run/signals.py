"""Signals for a running container: lamina's are the command's, as with ``docker run``.

``docker run`` (attached, ``--sig-proxy`` on by default) passes every catchable signal
it receives to the container's process and exits with that process's status; Podman
does the same.  lamina has no daemon, so ``lamina run`` *is* the container's lifetime,
and being asked to stop (SIGTERM) means what ``docker stop`` / ``podman stop`` do: the
image's STOPSIGNAL (config ``StopSignal``, default SIGTERM) to the process, then SIGKILL
after a grace period (``--stop-timeout``, 10 s as Docker's).  Every other forwarded
signal (SIGINT included: Ctrl-C) goes to the process as it is.

The process is the sandbox's PID 2 — PID 1 is bwrap's reaper or lamina's unshare init,
and neither forwards: bwrap's reaper installs no handlers, and a namespace's init
receives from outside only the signals it handles (pid_namespaces(7)).  So lamina finds
the command itself: the sandbox's init is the only child of the process lamina started
(bwrap, or unshare, which setpriv executed), and the command is the init's child whose
PID in the namespace is 2.  A pidfd (pidfd_open(2)) holds on to it, so a signal can
never reach a process that merely reused its number.

The sandbox is started in a process group of its own, so the terminal's Ctrl-C reaches
lamina alone and the process gets it exactly once, forwarded (in lamina's group, bwrap
itself would die of the SIGINT and take the sandbox down with SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from lamina.errors import InvalidInput

# What docker run proxies, less what lamina must keep for itself: job control
# (TSTP/TTIN/TTOU/CONT) stays lamina's, SIGCHLD/SIGPIPE/SIGURG are never proxied (moby
# cli/command/container/signals.go), and the synchronous faults belong to Python.
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGALRM, signal.SIGTERM, signal.SIGWINCH)

_FIND_FOR = 2.0   # seconds a signal waits for the command to exist (sandbox still starting)


def parse_signal(text: str | int) -> int:
    """A signal as images and ``docker run --stop-signal`` name it: a number, or a name
    with or without ``SIG`` in any case (``SIGQUIT``, ``quit``, ``3``, ``RTMIN+3``) —
    moby/sys/signal ParseSignal."""
    raw = str(text).strip()
    if raw.isdigit():
        num = int(raw)
        if 0 < num <= signal.SIGRTMAX:
            return num
        raise InvalidInput(f"invalid signal: {text}")
    name = raw.upper().removeprefix("SIG")
    base, sign, offset = name.partition("+") if "+" in name else name.partition("-")
    if base in ("RTMIN", "RTMAX") and (not sign or offset.isdigit()):
        num = (signal.SIGRTMIN if base == "RTMIN" else signal.SIGRTMAX) + (
            int(offset or 0) * (1 if sign == "+" else -1))
        if signal.SIGRTMIN <= num <= signal.SIGRTMAX:
            return num
        raise InvalidInput(f"invalid signal: {text}")
    try:
        return int(signal.Signals["SIG" + name])
    except KeyError:
        raise InvalidInput(f"invalid signal: {text}") from None


@dataclass(frozen=True)
class SignalProxy:
    """How ``run_process`` passes lamina's signals on: SIGTERM becomes ``stop_signal``,
    followed by SIGKILL ``stop_timeout`` seconds later if the process is still there."""

    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    # A kernel without CONFIG_PROC_CHILDREN: look at every process's parent.
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(name))
    return found


def _status_field(pid: int, field: str) -> list[str]:
    with contextlib.suppress(OSError), \
            open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1:]
    return []


def find_command(sandbox_pid: int) -> tuple[int, int] | None:
    """(host pid, init's host pid) of the command of the sandbox started as
    ``sandbox_pid``: the init's child that is PID 2 in the namespace; None while it is
    not there (yet, or any more)."""
    for init in _children(sandbox_pid):
        for pid in _children(init):
            if _status_field(pid, "NSpid")[-1:] == ["2"]:
                return pid, init
    return None


class _Forwarder:
    """The running sandbox's command, found on first need and held by a pidfd."""

    def __init__(self, proxy: SignalProxy) -> None:
        self.proxy = proxy
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []   # signals that came before the sandbox started
        self.fd = -1
        self.timer: threading.Timer | None = None
        # The stop timer's thread and the handlers (main thread, possibly nested) share
        # the pidfd: one finds it, the others wait for it.
        self.lock = threading.RLock()

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        for sig in self.pending:
            self.handle(sig, None)
        self.pending.clear()

    def _find(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + _FIND_FOR
        while proc.poll() is None:
            if self.fd >= 0:
                return True   # found meanwhile, by a handler that ran inside this one
            found = find_command(proc.pid)
            if found is not None:
                pid, init = found
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    fd = -1
                # Still the init's child after the pidfd was taken: not a reused number.
                if fd >= 0 and _status_field(pid, "PPid") == [str(init)]:
                    self.fd = fd
                    return True
                if fd >= 0:
                    os.close(fd)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return False

    def send(self, sig: int) -> None:
        proc = self.proc
        assert proc is not None
        with self.lock:
            if self.fd < 0 and not self._find(proc):
                if sig == signal.SIGKILL and proc.poll() is None:
                    proc.kill()   # bwrap/unshare take the namespace with them
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.fd, sig)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.proc is None:
            self.pending.append(signum)
            return
        if signum != signal.SIGTERM:
            self.send(signum)
            return
        self.send(self.proxy.stop_signal)
        if self.timer is None:
            self.timer = threading.Timer(self.proxy.stop_timeout, self.send, (signal.SIGKILL,))
            self.timer.daemon = True
            self.timer.start()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


@contextlib.contextmanager
def forwarding(proxy: SignalProxy) -> Iterator[Callable[[subprocess.Popen[bytes]], None]]:
    """While the block runs, lamina's FORWARDED signals go to the sandboxed command as
    ``proxy`` says; the block starts the sandbox and passes it to the callable it is
    given (signals that came before are delivered then).  The handlers are in place
    before the sandbox starts, so it starts with these signals at their defaults even
    when lamina's were ignored (``nohup``, a shell's ``&``) — exec resets caught
    signals, not ignored ones (signal(7)).  Handlers exist only in the main thread:
    elsewhere nothing is forwarded."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda proc: None
        return
    fwd = _Forwarder(proxy)
    old = {sig: signal.signal(sig, fwd.handle) for sig in FORWARDED}
    try:
        yield fwd.attach
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        fwd.close()

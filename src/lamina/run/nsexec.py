"""``lamina exec``: a new process in a running container's namespaces.

As ``runc exec`` (its nsexec.c) and ``nsenter`` do: open the namespaces of the
container's process (``/proc/<pid>/ns/*``) and its root directory, ``setns`` into each
(the user namespace first, when the container has one: rootless), ``chroot`` into its
root, fork (a PID namespace applies to children only), and in the child drop what the
container's process does not have — capabilities outside its set, root when the
container's USER is not root — and loads its seccomp filter, then exec.  The parent
stays, passes SIGTERM, SIGINT, SIGHUP on and exits with the command's status (127/126
when it cannot be run, as docker exec reports).

``lamina exec`` runs ``enter`` in a child it forks (no second interpreter to start); the
monitor's health checks, which run in a thread, start it as a helper process on the
host's Python instead (``exec_argv``: forking a threaded process is not safe).
util-linux's ``nsenter`` could enter the namespaces but cannot drop the bounding set
afterwards (``setpriv`` would have to run inside the image, which may not have it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from lamina.run.sandbox import ResolvedUser
    from lamina.run.security import Security

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exec_spec(pid: int, argv: Sequence[str], env: dict[str, str], cwd: str,
              user: ResolvedUser, security: Security, tty: bool = False,
              compiled: bytes | None = None) -> dict[str, Any]:
    """What ``enter`` needs to run ``argv`` in the namespaces of host process ``pid``,
    confined as the container's own process is (``security``: its capabilities, seccomp
    filter, no_new_privs — as runc exec applies the container's); with ``tty``, its
    stdin is made its controlling terminal.  ``compiled``: the filter as the monitor
    compiled it (saves compiling it again), else it is compiled here."""
    bpf = compiled if compiled is not None else security.seccomp_filter()
    return {"pid": pid, "argv": list(argv), "env": env, "cwd": cwd, "uid": user.uid,
            "gid": user.gid, "groups": list(user.groups), "tty": tty,
            "caps": security.cap_numbers, "no_new_privs": security.no_new_privileges,
            "seccomp": None if bpf is None else bpf.hex()}


def exec_argv(spec: dict[str, Any]) -> list[str]:
    """A helper process that runs ``enter(spec)`` (host Python, ``-I``: nothing from the
    caller's environment; only this module is imported)."""
    return [sys.executable, "-I", "-c",
            "import json, sys; from lamina.run.nsexec import enter; "
            "enter(json.loads(sys.argv[1]))", json.dumps(spec)]


def _fail(message: str, code: int = 126) -> NoReturn:
    os.write(2, f"exec: {message}\n".encode())
    os._exit(code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_seccomp(libc: ctypes.CDLL, prog: bytes) -> None:
    """Load the BPF program ``prog`` while still root with CAP_SYS_ADMIN (no
    no_new_privs needed; runc loads it there too), before becoming the user."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        _fail("load the seccomp filter: " + os.strerror(ctypes.get_errno()))


def _setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def enter(spec: dict[str, Any]) -> NoReturn:
    """Enter the namespaces, fork, exec (see the module docstring); exits with the
    command's status.  Runs in a process of its own: it never returns."""
    import fcntl
    import termios
    import warnings  # noqa: F401 - os.execvpe imports it lazily, after chroot hid it

    libc = ctypes.CDLL(None, use_errno=True)
    pid = spec["pid"]
    names = ["cgroup", "ipc", "uts", "net", "pid", "mnt"]
    if os.stat("/proc/self/ns/user").st_ino != os.stat(f"/proc/{pid}/ns/user").st_ino:
        names.insert(0, "user")
    fds = []
    for name in names:
        try:
            fds.append((name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)))
        except OSError as e:
            if name != "cgroup":
                _fail(f"the container is not running ({e.strerror})")
    try:
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        _fail(f"the container is not running ({e.strerror})")
    for name, fd in fds:
        if libc.setns(fd, 0) != 0:
            _fail(f"enter the {name} namespace: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    for cap in range(64):
        if cap not in spec["caps"] and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    child = os.fork()
    if child == 0:
        try:
            if spec["tty"]:
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.chdir(spec["cwd"])
            if spec["no_new_privs"] and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                _fail("no_new_privs: " + os.strerror(ctypes.get_errno()))
            if spec["seccomp"] is not None:
                _load_seccomp(libc, bytes.fromhex(spec["seccomp"]))
            try:
                os.setgroups(spec["groups"])
            except PermissionError:
                # A user namespace whose setgroups is "deny" (bwrap's rootless one,
                # user_namespaces(7)): the groups stay, as runc leaves them there.
                if not _setgroups_denied():
                    raise
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        except OSError as e:
            _fail(str(e))
        # Python ignores SIGPIPE and SIGXFSZ; the command starts with the defaults.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        argv = spec["argv"]
        try:
            os.execvpe(argv[0], argv, spec["env"])
        except OSError as e:
            missing = not isinstance(e, PermissionError)
            # runc's words for a command not on PATH (as run/sandbox.py reports it)
            why = ("executable file not found in $PATH" if missing and "/" not in argv[0]
                   else e.strerror)
            _fail(f"{json.dumps(argv[0])}: {why}", 127 if missing else 126)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


class Entered:
    """``enter(spec)`` in a forked child of this (single-threaded) process, with
    ``stdio`` as its descriptors 0, 1, 2; ``wait()`` as ``Popen.wait``."""

    def __init__(self, spec: dict[str, Any], stdio: tuple[int, int, int]) -> None:
        self.pid = os.fork()
        if self.pid == 0:   # pragma: no cover - the child enters and never returns
            try:
                for target, fd in enumerate(stdio):
                    if fd != target:
                        os.dup2(fd, target)
                enter(spec)
            finally:
                os._exit(126)
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            # Ctrl-C is the command's (it is in this process group): lamina waits for
            # the status it ends with instead of leaving first.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            finally:
                signal.signal(signal.SIGINT, old)
        return self.returncode


def container_ptmx(pid: int) -> str:
    """The terminal multiplexer of the container whose process is ``pid``."""
    return os.path.join("/proc", str(pid), "root", "dev", "pts", "ptmx")

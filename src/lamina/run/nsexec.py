"""``lamina exec``: a new process in a running container's namespaces.

As ``runc exec`` (its nsexec.c) and ``nsenter`` do: open the namespaces of the
container's process (``/proc/<pid>/ns/*``) and its root directory, ``setns`` into each
(the user namespace first, when the container has one: rootless), ``chroot`` into its
root, fork (a PID namespace applies to children only), and in the child drop what the
container's process does not have — capabilities outside Docker's default set, root
when the container's USER is not root — then exec.  The parent stays, passes SIGTERM,
SIGINT, SIGHUP on and exits with the command's status (127/126 when it cannot be run,
as docker exec reports).

The helper runs on the host's Python (``-I -S``: nothing from the image or the caller's
environment), as the unshare sandbox's init does (run/sandbox.py); util-linux's
``nsenter`` could enter the namespaces but cannot drop the bounding set afterwards
(``setpriv`` would have to run inside the image, which may not have it).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from lamina.run.sandbox import DEFAULT_CAPS, ResolvedUser

_HELPER = r"""
import ctypes, json, os, signal, sys, termios, fcntl
import warnings  # os.execvpe imports it lazily, after chroot hid the stdlib
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
pid = spec["pid"]
def fail(what, code=126):
    e = ctypes.get_errno()
    os.write(2, ("exec: %s: %s\n" % (what, os.strerror(e) if e else "failed")).encode())
    os._exit(code)
names = ["cgroup", "ipc", "uts", "net", "pid", "mnt"]
if os.stat("/proc/self/ns/user").st_ino != os.stat("/proc/%d/ns/user" % pid).st_ino:
    names.insert(0, "user")
fds = []
for name in names:
    try:
        fds.append((name, os.open("/proc/%d/ns/%s" % (pid, name), os.O_RDONLY)))
    except OSError as e:
        if name == "cgroup":
            continue
        os.write(2, ("exec: the container is not running (%s)\n" % e.strerror).encode())
        os._exit(126)
root = os.open("/proc/%d/root" % pid, os.O_RDONLY | os.O_DIRECTORY)
for name, fd in fds:
    if libc.setns(fd, 0) != 0:
        fail("enter the %s namespace" % name)
    os.close(fd)
os.fchdir(root)
os.chroot(".")
os.close(root)
for cap in range(64):
    if cap not in spec["caps"] and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        break  # past the last capability this kernel knows
child = os.fork()
if child == 0:
    try:
        if spec["tty"]:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.chdir(spec["cwd"])
        os.setgroups(spec["groups"]); os.setgid(spec["gid"]); os.setuid(spec["uid"])
    except OSError as e:
        os.write(2, ("exec: %s\n" % e).encode())
        os._exit(126)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        code = 126 if isinstance(e, PermissionError) else 127
        os.write(2, ("exec: %s: %s\n" % (json.dumps(argv[0]), e.strerror)).encode())
        os._exit(code)
def forward(n, _f):
    try:
        os.kill(child, n)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
while True:
    try:
        _, st = os.waitpid(child, 0)
        break
    except InterruptedError:
        continue
os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))
"""


def exec_argv(pid: int, argv: Sequence[str], env: dict[str, str], cwd: str,
              user: ResolvedUser, tty: bool = False) -> list[str]:
    """The command that runs ``argv`` in the namespaces of host process ``pid`` (see the
    module docstring); with ``tty``, its stdin is made its controlling terminal."""
    spec = {"pid": pid, "argv": list(argv), "env": env, "cwd": cwd, "uid": user.uid,
            "gid": user.gid, "groups": list(user.groups), "tty": tty,
            "caps": sorted(DEFAULT_CAPS.values())}
    return [sys.executable, "-I", "-S", "-c", _HELPER, json.dumps(spec)]


def container_ptmx(pid: int) -> str:
    """The terminal multiplexer of the container whose process is ``pid``."""
    return os.path.join("/proc", str(pid), "root", "dev", "pts", "ptmx")

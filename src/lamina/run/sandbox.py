"""Running one process in a root filesystem, isolated as a container.

What every process gets, whichever way it is started: its own mount, PID, IPC and UTS
namespaces (and network namespace, with only ``lo`` up, unless ``network="host"``),
the rootfs as ``/`` (pivot_root: the host's tree is not reachable; nodev), a fresh
``/proc``, a minimal ``/dev`` (null zero full random urandom tty, pts, shm), the
requested bind mounts, the hostname, the environment given and nothing else, and death
when lamina dies.  ``/tmp`` is the image's: it belongs to the rootfs and its changes.

Confinement (``ProcessSpec.security``, lamina.run.security) is Docker's by default:
its capability set (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP; root only), its
default seccomp profile (lamina.run.seccomp: ``unshare``, ``mount``, ``keyctl``… return
EPERM), its masked /proc paths (``/proc/keys``, ``/proc/timer_list``… read empty) and
read-only ones (``/proc/sys``, ``/proc/sysrq-trigger``…).  ``--privileged`` lifts all
of it.  The sandbox's PID 1 shows no host path (``bwrap --args N -- CMD`` or
``lamina-init …``): bwrap's options reach it through a memfd, the init's spec too.

Two ways to start it:

``bwrap`` (bubblewrap), when installed and the process runs as root in the image, or
    lamina is not root.  For a non-root caller bwrap makes a user namespace in which the
    caller is the image's USER; what the process writes is owned by the caller on disk
    (rootless: there is no other uid to map to).
``unshare`` + a small Python init (``_INIT`` below) when lamina is root and the image's
    USER is not.  bwrap's ``--uid`` exists only inside a user namespace, where the uid
    maps back to the caller's — root — so a file written by ``USER www-data`` would land
    on disk owned by root, and a layer committed from it would say so.  The init instead
    drops privileges for real (setgroups, setgid, setuid after pivot_root), so the file
    is owned by uid 33 on disk, as Docker makes it.  The same init serves root USERs
    when bwrap is missing.

Mount points the sandbox needs (``/proc``, ``/dev``, volume targets) are created in the
rootfs when missing and removed afterwards when still empty (BuildKit does the same), so
they never show up in a layer made from the run.

Exit status: the process's, 128+N when killed by signal N (as a shell reports it), 127
when the command is not in the image (``exec: "x": executable file not found in $PATH``,
written to the process's stderr as Docker writes it), 126 when it is not executable.
A sandbox that cannot start raises ``LaminaError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lamina.errors import InvalidInput, LaminaError, NotFound, Unsupported
from lamina.layer.paths import resolve_links
from lamina.run.security import MASKED_PATHS, READONLY_PATHS, Security
from lamina.run.signals import SignalProxy, forwarding

# Docker's PATH when the image sets none (moby oci/defaults.go; also BuildKit's).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_TMPFS = "tmpfs:"   # the host "path" of a tmpfs mount (_with_tmpfs)

SandboxKind = Literal["auto", "bwrap", "unshare"]
Waiter = Callable[[subprocess.Popen[bytes]], int]
Network = Literal["none", "host"]


@dataclass(frozen=True)
class ProcessSpec:
    """One process to run.  ``user`` is the image config's form: ``name``, ``uid``,
    ``uid:gid``, ``name:group`` (names looked up in the rootfs' /etc/passwd and
    /etc/group; empty means root).  ``mounts`` are (host path, container path,
    read_only) bind mounts; ``tmpfs`` fresh tmpfs mounts; all of them are mounted
    parents first.  ``env``
    is the whole environment (PATH defaults to Docker's, HOME to the user's home)."""

    rootfs: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: str = "0:0"
    mounts: tuple[tuple[Path, str, bool], ...] = ()
    network: Network = "none"
    hostname: str = "lamina"
    # (container path, size in bytes or None, mode): a fresh tmpfs there (RUN --mount
    # type=tmpfs, run --tmpfs), mounted with the bind mounts, parents first (_with_tmpfs)
    tmpfs: tuple[tuple[str, int | None, int], ...] = ()
    # Containers (run/containers.py): ``read_only`` makes the rootfs read-only (what is
    # mounted on it stays writable, as docker run --read-only); ``pts`` is a devpts
    # instance to be the container's /dev/pts (its terminal was allocated there, so
    # ``tty`` names it); ``tty``: stdin is a terminal, made the controlling terminal.
    read_only: bool = False
    pts: Path | None = None
    tty: bool = False
    security: Security = Security()


def sandbox_network(network: str) -> Network:
    """The namespace for ``lamina run --network``: "private" is "none"'s, with the
    ports of ``-p`` forwarded into it (lamina.run.portfwd)."""
    return "host" if network == "host" else "none"


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    groups: tuple[int, ...]   # supplementary groups, the primary included (initgroups)
    home: str


# -- paths inside the rootfs ----------------------------------------------------------------
def resolve_in_root(root: Path | str, path: str, follow_last: bool = True) -> str:
    """The container path ``path`` (relative ones start at /) with every symlink
    resolved as the process would see it, i.e. as in a chroot of ``root``: absolute
    link targets start at ``root`` and '..' stops there.  Missing components are kept
    as they are.  Returns the resolved absolute container path."""
    root_s = os.fspath(root)

    def readlink(parts: list[str]) -> str | None:
        host = root_s + "/" + "/".join(parts)
        try:
            return os.readlink(host) if stat.S_ISLNK(os.lstat(host).st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    return "/" + "/".join(resolve_links(path, readlink, follow_last, " in the image"))


def _host(root: Path | str, ctr_path: str) -> str:
    return os.fspath(root) + ctr_path if ctr_path != "/" else os.fspath(root)


def _read_db(root: Path, name: str) -> list[list[str]]:
    """/etc/passwd or /etc/group of the image, split into fields (empty if absent)."""
    try:
        with open(_host(root, resolve_in_root(root, f"/etc/{name}")), encoding="utf-8",
                  errors="replace") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    except OSError as e:
        raise InvalidInput(f"cannot read /etc/{name} of the image: {e.strerror or e}") from None
    return [ln.split(":") for ln in lines if ln and not ln.startswith("#")]


def _id(text: str, what: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32 - 1:
        raise InvalidInput(f"{what} {text} is out of range")
    return value


def resolve_user(root: Path, user: str) -> ResolvedUser:
    """Docker's (runc's) rules: a name must be in /etc/passwd; a uid need not be (then
    gid 0, home /); an explicit group replaces the user's groups, otherwise the user
    is given every group of /etc/group that lists it."""
    name, _, group = (user or "0").partition(":")
    name = name or "0"
    passwd = [p for p in _read_db(root, "passwd") if len(p) >= 7]
    entry: list[str] | None
    if name.isdigit():
        uid = _id(name, "uid")
        entry = next((p for p in passwd if p[2] == name), None)
    else:
        entry = next((p for p in passwd if p[0] == name), None)
        if entry is None:
            raise InvalidInput(f"unable to find user {name}: no matching entries in "
                               "passwd file")
        try:
            uid = _id(entry[2], "uid")
        except ValueError:
            raise InvalidInput(f"/etc/passwd of the image has a bad uid for {name}") from None
    try:
        gid = _id(entry[3], "gid") if entry is not None else 0
    except ValueError:
        raise InvalidInput(f"/etc/passwd of the image has a bad gid for {name}") from None
    home = entry[5] if entry is not None and entry[5] else "/"
    groups_db = [g for g in _read_db(root, "group") if len(g) >= 3]
    extra: list[int] = []
    if group:
        if group.isdigit():
            gid = _id(group, "gid")
        else:
            found = next((g for g in groups_db if g[0] == group), None)
            if found is None:
                raise InvalidInput(f"unable to find group {group}: no matching entries in "
                                   "group file")
            gid = _id(found[2], "gid")
    elif entry is not None:
        for g in groups_db:
            members = g[3].split(",") if len(g) > 3 else []
            if entry[0] in members and g[2].isdigit():
                extra.append(int(g[2]))
    return ResolvedUser(uid, gid, tuple(sorted({gid, *extra})), home)


def find_executable(root: Path, argv0: str, path_env: str, cwd: str,
                    volumes: Sequence[tuple[str, str]] = ()) -> tuple[str | None, int]:
    """Where the process's ``argv[0]`` is in the image: (container path, 0), or
    (None, 127) when missing, or (path, 126) when not an executable file.  A path
    under one of ``volumes`` ((host path, container path) bind mounts) is looked up in
    the host directory mounted there: a program run from a ``-v`` volume."""
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else cwd.rstrip("/") + "/" + argv0]
    else:
        candidates = [(d or ".").rstrip("/") + "/" + argv0 for d in path_env.split(":")]
    denied: str | None = None
    for cand in candidates:
        if not cand.startswith("/"):
            cand = cwd.rstrip("/") + "/" + cand
        host = _in_volume(cand, volumes)
        if host is None:
            host = _host(root, resolve_in_root(root, cand))
        try:
            st = os.stat(host)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return cand, 0
        denied = denied or cand
    return (denied, 126) if denied else (None, 127)


def _in_volume(ctr_path: str, volumes: Sequence[tuple[str, str]]) -> str | None:
    """The host path of ``ctr_path`` if it lies in a bind-mounted volume (the deepest
    one mounted there wins, as it is mounted last)."""
    best: tuple[str, str] | None = None
    for host, ctr in volumes:
        top = ctr.rstrip("/") or "/"
        if (ctr_path == top or ctr_path.startswith(top.rstrip("/") + "/")) and (
                best is None or len(top) > len(best[1])):
            best = (host, top)
    if best is None:
        return None
    return best[0].rstrip("/") + ctr_path[len(best[1].rstrip("/")):]


# -- mount points --------------------------------------------------------------------------
class _Stubs:
    """Mount points made for the sandbox, removed afterwards if still empty."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[tuple[str, bool]] = []   # (host path, is_dir), in creation order

    def ensure(self, ctr_path: str, is_dir: bool) -> str:
        """Make ``ctr_path`` exist (a directory or an empty file); return its resolved
        container path (symlinks followed inside the rootfs)."""
        real = resolve_in_root(self.root, ctr_path)
        parts = [p for p in real.split("/") if p]
        for i in range(1, len(parts) + 1):
            host = _host(self.root, "/" + "/".join(parts[:i]))
            last = i == len(parts)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if last and not is_dir:
                    os.close(os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                     0o644))
                    self.made.append((host, False))
                else:
                    os.mkdir(host, 0o755)
                    os.chmod(host, 0o755)
                    self.made.append((host, True))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                raise InvalidInput(f"cannot mount on {ctr_path}: "
                                   f"/{'/'.join(parts[:i])} is not a directory in the image")
            if last and stat.S_ISDIR(st.st_mode) != is_dir:
                kind = "a directory" if is_dir else "a file"
                raise InvalidInput(f"cannot mount {kind} on {ctr_path}: the image has "
                                   f"{'no directory' if is_dir else 'a directory'} there")
        return real

    def remove(self) -> None:
        for host, is_dir in reversed(self.made):
            with contextlib.suppress(OSError):
                if is_dir:
                    os.rmdir(host)
                elif os.lstat(host).st_size == 0:
                    os.unlink(host)
        self.made.clear()


# -- the unshare path's init ---------------------------------------------------------------
# Runs as PID 1 of the new PID namespace, in new mount/UTS/IPC(/net) namespaces, from the
# host's Python (-I -S: stdlib only, nothing from the image or the caller's env).  It
# builds the container's mounts under the rootfs, pivots into it, drops capabilities,
# then forks the command, which drops privileges and execs; PID 1 stays to forward
# signals and reap, and exits with the command's status.  Errors before exec go to the
# status fd (then exit 125); a missing command is the container's own error (127/126).
_INIT = r"""
import ctypes, errno, fcntl, json, os, platform, signal, socket, struct, sys
import warnings  # os.execvpe imports it lazily, after pivot_root hid the stdlib
if len(sys.argv) == 2:
    # What the container sees as /proc/1/cmdline: not the host's python path.  unshare
    # execs with the path as argv[0]; exec again with a name instead (prctl PR_SET_MM
    # would need CAP_SYS_RESOURCE, which a root in a container often lacks).
    code = open("/proc/self/cmdline", "rb").read().split(b"\0")[4]
    os.execv(sys.executable, [b"lamina-init", b"-I", b"-S", b"-c", code,
                              sys.argv[1].encode(), b"named"])
libc = ctypes.CDLL(None, use_errno=True)
with os.fdopen(int(sys.argv[1]), "rb") as f:   # the spec, kept off the command line
    spec = json.loads(f.read())
status = spec["status_fd"]
def fail(what):
    e = ctypes.get_errno()
    os.write(status, ("%s: %s" % (what, os.strerror(e) if e else "failed")).encode())
    os._exit(125)
def mount(src, tgt, fs, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    if libc.mount(enc(src), enc(tgt), enc(fs), ctypes.c_ulong(flags), enc(data)) != 0:
        fail("mount %s on %s" % (src or fs, tgt))
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE, SLAVE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18, 1 << 19)
root = spec["root"]
mount(None, "/", None, REC | PRIVATE)
mount(root, root, None, BIND | REC)
# nodev, as bwrap's binds are: a device node made inside (CAP_MKNOD, as in Docker) must
# not open the host's device; Docker's device cgroup refuses it the same way.
mount(None, root, None, REMOUNT | BIND | NODEV)
mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
dev = root + "/dev"
mount("tmpfs", dev, "tmpfs", NOSUID | NOEXEC, "mode=755,size=65536k")
for name in ("null", "zero", "full", "random", "urandom", "tty"):
    os.close(os.open(dev + "/" + name, os.O_WRONLY | os.O_CREAT, 0o666))
    mount("/dev/" + name, dev + "/" + name, None, BIND)
os.mkdir(dev + "/pts"); os.mkdir(dev + "/shm")
if not spec["pts"]:
    mount("devpts", dev + "/pts", "devpts", NOSUID | NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
mount("shm", dev + "/shm", "tmpfs", NOSUID | NODEV | NOEXEC, "mode=1777,size=65536k")
for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, dev + "/" + link)
for host, ctr, ro in spec["mounts"]:
    if host.startswith("tmpfs:"):  # a tmpfs: "tmpfs:<size>:<mode>" (_with_tmpfs)
        size, mode = host[6:].split(":")
        mount("tmpfs", root + ctr, "tmpfs", NOSUID | NODEV,
              "mode=%s" % mode + (",size=%s" % size if size != "0" else ""))
        continue
    if not os.path.lexists(root + ctr):
        # Under a tmpfs mounted just now, or below the /dev just made (a RUN heredoc
        # script at /dev/pipes/NAME): the stub made in the rootfs is hidden there.
        os.makedirs(os.path.dirname(root + ctr), exist_ok=True)
        if os.path.isdir(host):
            os.mkdir(root + ctr)
        else:
            os.close(os.open(root + ctr, os.O_WRONLY | os.O_CREAT, 0o644))
    mount(host, root + ctr, None, BIND | REC)
    mount(None, root + ctr, None, REMOUNT | BIND | NODEV | (RDONLY if ro else 0))
if spec["pts"]:
    mount(spec["pts"], dev + "/pts", None, BIND)
if spec["read_only"]:
    mount(None, root, None, REMOUNT | BIND | NODEV | RDONLY)
for path in spec["masked"]:   # Docker's masked paths: a read-only empty tmpfs or /dev/null
    if os.path.isdir(root + path):
        mount("tmpfs", root + path, "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, "size=0")
    elif os.path.exists(root + path):
        mount("/dev/null", root + path, None, BIND)
for path in spec["readonly"]:
    if os.path.exists(root + path):
        mount(root + path, root + path, None, BIND | REC)
        mount(None, root + path, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | NOEXEC)
socket.sethostname(spec["hostname"])
if spec["network"] == "none":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
    s.close()
nr = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(
    platform.machine())
if nr is not None:
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    os.chdir(root)
    if libc.syscall(nr, b".", b".") != 0:
        fail("pivot_root")
    os.fchdir(old)   # the old root, now stacked on the new one: detach it
    os.close(old)
    mount(None, ".", None, SLAVE | REC)
    if libc.umount2(b".", 2) != 0:
        fail("detach the host root")
    os.chdir("/")
else:
    os.chroot(root)
    os.chdir("/")
os.chdir(spec["cwd"])
for cap in range(64):
    if cap not in spec["caps"] and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        if ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
        fail("drop capabilities")
# Stay as PID 1 (as bwrap's init does): the command is PID 2, so signals reach it as
# they would anywhere (PID 1 ignores those it has no handler for), and orphans are reaped.
# lamina signals PID 2 itself (lamina.run.signals); what is sent to this init is passed on.
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGWINCH)
for sig in FORWARD:
    signal.signal(sig, signal.SIG_IGN)  # until the command exists
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
child = os.fork()
if child == 0:
    if spec["no_new_privs"] and libc.prctl(38, 1, 0, 0, 0) != 0:   # PR_SET_NO_NEW_PRIVS
        fail("no_new_privs")
    if spec["seccomp_fd"] >= 0:
        # Loaded before dropping to the user, while CAP_SYS_ADMIN allows it without
        # no_new_privs (runc does the same); the profile allows what follows.
        prog = os.pread(spec["seccomp_fd"], 1 << 20, 0)
        os.close(spec["seccomp_fd"])
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:   # PR_SET_SECCOMP, FILTER
            fail("load the seccomp filter")
    try:
        os.setgroups(spec["groups"]); os.setgid(spec["gid"]); os.setuid(spec["uid"])
    except OSError as e:
        os.write(status, ("become %s:%s: %s" % (spec["uid"], spec["gid"], e.strerror)).encode())
        os._exit(125)
    # Python ignores SIGPIPE and SIGXFSZ; the command must start with the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARD):
        signal.signal(sig, signal.SIG_DFL)
    os.close(status)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        code = 126 if isinstance(e, PermissionError) else 127
        os.write(2, ("exec: %s: %s\n" % (json.dumps(argv[0]), e.strerror)).encode())
        os._exit(code)
os.close(status)
if spec["seccomp_fd"] >= 0:
    os.close(spec["seccomp_fd"])
def forward(n, _f):
    # The command may be gone already (reaped just before): nothing to pass on.
    try:
        os.kill(child, n)
    except ProcessLookupError:
        pass
for sig in FORWARD:
    signal.signal(sig, forward)
while True:
    pid, st = os.wait()
    if pid == child:
        os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))
"""


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for p in (f"/usr/bin/{tool}", f"/bin/{tool}", f"/usr/sbin/{tool}")
         if os.access(p, os.X_OK)), None)


def _choose(kind: SandboxKind, user: ResolvedUser) -> str:
    root = os.geteuid() == 0
    bwrap = _which("bwrap")
    if kind == "bwrap":
        if bwrap is None:
            raise NotFound("bubblewrap (bwrap) is not installed (apt-get install bubblewrap)")
        if root and user.uid != 0:
            raise Unsupported("bwrap cannot run a non-root USER as root without mapping it "
                              "to root on disk; use the unshare sandbox")
        return "bwrap"
    if kind == "unshare":
        if not root:
            raise Unsupported("the unshare sandbox needs root; use bwrap")
        return "unshare"
    if not root:
        if bwrap is None:
            raise Unsupported("running containers without root needs bubblewrap "
                              "(apt-get install bubblewrap)")
        return "bwrap"
    return "bwrap" if bwrap is not None and user.uid == 0 else "unshare"


def _memfd(name: str, data: bytes) -> int:
    """A file holding ``data``, read from its start by the process it is passed to."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _proc_masks(sec: Security) -> tuple[list[str], list[str]]:
    """The masked and read-only paths this kernel's /proc has.  Only /proc: the sandbox
    mounts no /sys, so /sys/firmware and /sys/devices/virtual/powercap are out of reach
    already."""
    if not sec.masked:
        return [], []
    masked = [p for p in MASKED_PATHS if p.startswith("/proc/") and os.path.lexists(p)]
    readonly = [p for p in READONLY_PATHS if os.path.lexists(p)]
    return masked, readonly


def _bwrap_argv(spec: ProcessSpec, user: ResolvedUser, mounts: list[tuple[str, str, bool]],
                cwd: str, fds: dict[str, int]) -> list[str]:
    """bwrap's options: they reach it through ``--args FD``, so the sandbox's PID 1,
    bwrap's reaper, shows ``bwrap --args N -- COMMAND`` and no host path."""
    sec = spec.security
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--json-status-fd", str(fds["status"])]
    if spec.network == "none":
        args.append("--unshare-net")
    if os.geteuid() != 0:
        # Rootless: the caller becomes the image's user inside a user namespace.
        args += ["--unshare-user", "--uid", str(user.uid), "--gid", str(user.gid)]
    # Only root gets capabilities, as in Docker (a non-root USER starts with none; bwrap
    # would keep added ones across its switch to the uid).
    args += ["--cap-drop", "ALL"]
    if user.uid == 0:
        for cap in sorted(sec.caps):
            args += ["--cap-add", cap]
    args += ["--bind", os.fspath(spec.rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    if spec.pts is not None:
        args += ["--bind", os.fspath(spec.pts), "/dev/pts"]
    for host, ctr, ro in mounts:
        if host.startswith(_TMPFS):   # "tmpfs:<size>:<mode>" (_with_tmpfs)
            size, mode = host.removeprefix(_TMPFS).split(":")
            args += [*(["--size", size] if size != "0" else []), "--perms", mode,
                     "--tmpfs", ctr]
            continue
        args += ["--ro-bind" if ro else "--bind", host, ctr]
    if spec.read_only:
        args += ["--remount-ro", "/"]
    # After every other mount, so none can uncover them (runc masks last too).  A
    # read-only bind's source is the host's /proc: the same kernel files, and those
    # below /proc/sys answer for the reader's namespaces, not the mount's.
    masked, readonly = _proc_masks(sec)
    for path in masked:
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        else:
            # --dev-bind: bwrap's other binds are nodev, where /dev/null cannot be opened.
            args += ["--dev-bind", "/dev/null", path]
    for path in readonly:
        args += ["--ro-bind", path, path]
    if "seccomp" in fds:
        args += ["--seccomp", str(fds["seccomp"])]
    # bwrap sets no_new_privs for every sandbox it starts (bubblewrap.c), so
    # --security-opt no-new-privileges holds whether or not it is asked for.
    args += ["--hostname", spec.hostname, "--chdir", cwd]
    return args


def _unshare_init_spec(spec: ProcessSpec, user: ResolvedUser,
                       mounts: list[tuple[str, str, bool]], cwd: str, env: dict[str, str],
                       fds: dict[str, int]) -> bytes:
    masked, readonly = _proc_masks(spec.security)
    return json.dumps({
        "root": os.fspath(spec.rootfs), "mounts": mounts, "cwd": cwd,
        "hostname": spec.hostname, "network": spec.network, "argv": spec.argv, "env": env,
        "uid": user.uid, "gid": user.gid, "groups": list(user.groups),
        "caps": spec.security.cap_numbers, "status_fd": fds["status"],
        "masked": masked, "readonly": readonly,
        "no_new_privs": spec.security.no_new_privileges,
        "seccomp_fd": fds.get("seccomp", -1),
        "read_only": spec.read_only,
        "pts": None if spec.pts is None else os.fspath(spec.pts),
    }).encode()


def _unshare_argv(spec: ProcessSpec, fds: dict[str, int]) -> list[str]:
    unshare = _which("unshare")
    if unshare is None:
        raise NotFound("unshare (util-linux) is not installed")
    args = []
    setpriv = _which("setpriv")
    if setpriv is not None:
        # unshare itself dies with lamina; --kill-child takes the namespace with it.
        args += [setpriv, "--pdeathsig", "KILL", "--"]
    args += [unshare, "--mount", "--pid", "--fork", "--uts", "--ipc", "--cgroup",
             "--kill-child", "--propagation", "private"]
    if spec.network == "none":
        args.append("--net")
    args += ["--", sys.executable, "-I", "-S", "-c", _INIT, str(fds["spec"])]
    return args


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _status(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the sandbox.  On KeyboardInterrupt (Ctrl-C, which the process got too,
    being in the same process group; or SIGTERM turned into one by the CLI) give it a
    moment to exit on its own, then stop the sandbox (its processes die with it), then
    let the interrupt go on so the rootfs is cleaned up."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for stop in (None, proc.terminate, proc.kill):
            if stop is not None:
                stop()
            try:
                proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def run_process(spec: ProcessSpec, stdin: int | None = None, stdout: int | None = None,
                stderr: int | None = None, sandbox: SandboxKind = "auto",
                proxy: SignalProxy | None = None, waiter: Waiter | None = None,
                on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> int:
    """Run ``spec`` in the foreground and return its exit status (see the module
    docstring).  ``stdin``/``stdout``/``stderr`` are file descriptors (or
    ``subprocess.DEVNULL``/``PIPE``-style constants); None inherits lamina's.  With
    ``proxy``, lamina's signals go to the process as ``docker run`` passes them
    (``lamina.run.signals``); without, the sandbox shares lamina's process group.
    ``waiter`` replaces waiting for the sandbox: called once it started, it returns its
    ``Popen.wait()`` status (a container's monitor records, copies output, checks
    health meanwhile: run/monitor.py).  ``on_start`` is called with the sandbox's
    process once it started, before ``waiter`` (published ports join its network
    namespace then: lamina.run.portfwd); if it raises, the sandbox is killed."""
    if not spec.argv:
        raise InvalidInput("no command to run")
    root = Path(spec.rootfs)
    if not root.is_dir():
        raise NotFound(f"root filesystem {root} does not exist")
    if not spec.cwd.startswith("/"):
        raise InvalidInput(f"working directory {spec.cwd!r} must be absolute")
    user = resolve_user(root, spec.user)
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", user.home)
    kind = _choose(sandbox, user)

    stubs = _Stubs(root)
    try:
        # The working directory is made if missing, as runc does; it stays (a change).
        cwd = resolve_in_root(root, spec.cwd)
        if not os.path.isdir(_host(root, cwd)):
            try:
                os.makedirs(_host(root, cwd), mode=0o755)
            except OSError as e:
                raise InvalidInput(f"cannot make working directory {spec.cwd}: "
                                   f"{e.strerror or e}") from None
        exe, code = find_executable(root, spec.argv[0], env["PATH"], cwd,
                                    [(os.fspath(h), c) for h, c, _ in spec.mounts])
        if code:
            why = ("executable file not found in $PATH" if "/" not in spec.argv[0]
                   else "no such file or directory") if code == 127 else "permission denied"
            # The container's own error, on its stderr, as runc reports it (dropped
            # when that stream is discarded).
            err_fd = 2 if stderr is None else stderr
            if err_fd >= 0:
                os.write(err_fd, f"exec: {json.dumps(spec.argv[0])}: {why}\n".encode())
            return code
        stubs.ensure("/proc", True)
        stubs.ensure("/dev", True)
        mounts: list[tuple[str, str, bool]] = []
        for host, ctr, ro in spec.mounts:
            if not ctr.startswith("/"):
                raise InvalidInput(f"mount target {ctr!r} must be an absolute path")
            if not os.path.exists(host):
                raise NotFound(f"mount source {host} does not exist")
            mounts.append((os.fspath(host), stubs.ensure(ctr, os.path.isdir(host)), ro))
        mounts = _with_tmpfs(mounts, spec.tmpfs, stubs)
        if spec.network == "host":
            for name in ("/etc/resolv.conf", "/etc/hosts"):
                ctr_path = resolve_in_root(root, name)
                inside = _host(root, ctr_path)
                if os.path.isfile(f"/{name.lstrip('/')}") and os.path.isdir(
                        os.path.dirname(inside)) and not os.path.isdir(inside):
                    mounts.append((name, stubs.ensure(name, False), True))
        return _spawn(kind, spec, user, mounts, cwd, env, (stdin, stdout, stderr), proxy,
                      waiter, on_start)
    finally:
        stubs.remove()


def _with_tmpfs(mounts: list[tuple[str, str, bool]],
                tmpfs: tuple[tuple[str, int | None, int], ...],
                stubs: _Stubs) -> list[tuple[str, str, bool]]:
    """``mounts`` and the tmpfs ones (host ``tmpfs:<size in bytes, 0 for none>:<octal
    mode>``: host paths are absolute, so the two cannot be confused), sorted parents
    first as Docker sorts a container's mounts (daemon/volumes.go sortMounts), so a bind
    inside a tmpfs (a cache mount under a tmpfs one) is not hidden by it."""
    out = list(mounts)
    for ctr, size, mode in tmpfs:
        if not ctr.startswith("/"):
            raise InvalidInput(f"mount target {ctr!r} must be an absolute path")
        out.append((f"{_TMPFS}{size or 0}:{mode:o}", stubs.ensure(ctr, True), False))
    out.sort(key=lambda m: m[1].rstrip("/").count("/"))   # stable: same depth keeps order
    return out


def _stdin_copy(stdin: int | None) -> tuple[int | None, int]:
    """(the stdin to give the sandbox, the descriptor to close once it started or -1).
    A terminal lamina has in the foreground is read by a thread and passed on through a
    pipe — what ``docker run -i`` without ``-t`` gives the process; anything else is
    passed as it is (lamina in a background job must not read the terminal: it would
    be stopped by SIGTTIN whether or not the process wants input)."""
    src = 0 if stdin is None else stdin
    try:
        foreground = src >= 0 and os.isatty(src) and os.tcgetpgrp(src) == os.getpgrp()
    except OSError:
        foreground = False
    if not foreground:
        return stdin, -1
    read_end, write_end = os.pipe()

    def copy() -> None:
        try:
            while data := os.read(src, 65536):
                while data:
                    data = data[os.write(write_end, data):]
        except OSError:
            pass   # the process is gone (EPIPE), or the terminal
        finally:
            os.close(write_end)

    threading.Thread(target=copy, name="lamina-stdin", daemon=True).start()
    return read_end, read_end


def _spawn(kind: str, spec: ProcessSpec, user: ResolvedUser, mounts: list[tuple[str, str, bool]],
           cwd: str, env: dict[str, str], stdio: tuple[int | None, int | None, int | None],
           proxy: SignalProxy | None, waiter: Waiter | None = None,
           on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> int:
    stdin, stdout, stderr = stdio
    copy_r = -1
    if proxy is not None:
        # The sandbox gets a process group of its own (see lamina.run.signals); a
        # terminal would stop it (SIGTTIN) for reading, so it reads a copy instead.
        stdin, copy_r = _stdin_copy(stdin)
    status_r, status_w = os.pipe()
    passed: list[int] = []   # descriptors the sandbox gets (closed here once it started)
    try:
        fds = {"status": status_w}
        bpf = spec.security.seccomp_filter()
        if bpf is not None:
            fds["seccomp"] = _memfd("lamina-seccomp", bpf)
            passed.append(fds["seccomp"])
        if kind == "bwrap":
            exe = _which("bwrap")
            assert exe is not None
            fds["args"] = _memfd("lamina-bwrap-args", b"".join(
                os.fsencode(a) + b"\0" for a in _bwrap_argv(spec, user, mounts, cwd, fds)))
            passed.append(fds["args"])
            # The command stays on the command line: bwrap takes it only from there.
            argv = ["bwrap", "--args", str(fds["args"]), "--", *spec.argv]
        else:
            fds["spec"] = _memfd("lamina-init-spec",
                                 _unshare_init_spec(spec, user, mounts, cwd, env, fds))
            passed.append(fds["spec"])
            argv = _unshare_argv(spec, fds)
            exe = argv[0]
        ids: dict[str, object] = {}
        if kind == "bwrap" and os.geteuid() == 0:
            # bwrap keeps the groups it is started with (the user is root here): give it
            # the image user's, as the unshare init sets them.
            ids = {"group": user.gid, "extra_groups": list(user.groups)}
        if spec.tty:
            # A session of its own whose controlling terminal is stdin (what runc does
            # for a console): Ctrl-C, job control and SIGWINCH then work in the container.
            ids["preexec_fn"] = _controlling_tty
        with contextlib.ExitStack() as stack:
            attach = None if proxy is None else stack.enter_context(forwarding(proxy))
            try:
                proc = subprocess.Popen(argv, executable=exe, stdin=stdin, stdout=stdout,
                                        stderr=stderr, env=env,
                                        pass_fds=(status_w, *passed), close_fds=True,
                                        process_group=None if proxy is None or spec.tty
                                        else 0,
                                        **ids)  # type: ignore[call-overload]
            except OSError as e:
                raise LaminaError(f"cannot start the sandbox ({argv[0]}): "
                                  f"{e.strerror or e}") from None
            for fd in passed:
                os.close(fd)
            passed.clear()
            if on_start is not None:
                try:
                    on_start(proc)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
            os.close(status_w)
            status_w = -1
            if copy_r >= 0:
                os.close(copy_r)
                copy_r = -1
            if attach is None:
                code = _status(waiter(proc) if waiter is not None else _wait(proc))
            else:
                attach(proc)
                code = _status(waiter(proc) if waiter is not None else proc.wait())
        with os.fdopen(status_r, "rb") as f:
            status_r = -1
            report = f.read().decode(errors="replace")
    finally:
        for fd in (status_r, status_w, copy_r, *passed):
            if fd >= 0:
                os.close(fd)
    if kind == "bwrap":
        # bwrap writes {"child-pid": N} once the command runs; without it, bwrap
        # itself failed (its message is on the process's stderr).
        if '"child-pid"' not in report:
            raise LaminaError(f"the bwrap sandbox could not start the command (exit {code}); "
                              "see its message above")
    elif report:
        raise LaminaError(f"the sandbox could not start the command: {report}")
    return code


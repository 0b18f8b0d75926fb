"""Published ports (``lamina run -p``): the host's port forwarded into the container's
own network namespace by a small user-space forwarder, as rootless Podman does it.

The container has a network namespace of its own with only ``lo`` (``--network
private``; ``none`` is the same namespace with nothing published).  lamina binds each
host port itself, before the container starts, so a port already taken is one clear
error and nothing runs.  Once the sandbox's init exists, a forwarder process (this
module's ``main`` in ``python -I -S``) is given the bound sockets and
descriptors of the init's namespaces; it enters the container's network namespace (and
first its user namespace, when lamina is not root: only there may it join the network
namespace), so every socket it makes from then on is *inside* the container, while the
listening sockets it was given stay on the host.  For each connection accepted on the
host it connects to ``127.0.0.1:PORT`` inside and copies bytes both ways; for UDP, each
client address gets a socket inside, answers go back to that client, and a socket idle
for 90 s is dropped (docker-proxy's UDP timeout).

This is rootlesskit's "builtin" port driver's way (Podman's default for rootless
``-p``): the server inside sees connections from 127.0.0.1, so one listening on
loopback only is reachable too, and the client's address is not passed on.  Why not
slirp4netns or pasta: docs/design-notes.md.

The forwarder dies with lamina (PR_SET_PDEATHSIG) and is stopped when the container
ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import subprocess

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_UDP_IDLE = 90.0
_FIND_INIT_FOR = 10.0

Proto = Literal["tcp", "udp"]
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class PortMapping:
    """``-p [IP:][HOST:]CONTAINER[/PROTO]``; ``host_port`` 0 means any free port."""

    container_port: int
    host_port: int = 0
    host_ip: str = "0.0.0.0"
    proto: Proto = "tcp"

    def __str__(self) -> str:
        return f"{self.container_port}/{self.proto} -> {self.host_ip}:{self.host_port}"


def parse_port(text: str) -> PortMapping:
    """Docker's ``-p`` forms: ``80``, ``8080:80``, ``127.0.0.1:8080:80``,
    ``127.0.0.1::80``, each with an optional ``/tcp`` or ``/udp``.  Ranges are not
    supported."""
    from lamina.errors import InvalidInput, Unsupported

    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidInput(f"bad port {text!r}: the protocol must be tcp or udp")
    ip, host, ctr = "", "", spec
    if spec.startswith("["):   # [::1]:8080:80
        end = spec.find("]")
        ip, rest = spec[1:end], spec[end + 1:].lstrip(":")
        host, _, ctr = rest.rpartition(":")
    elif spec.count(":") == 1:
        host, ctr = spec.split(":")
    elif spec.count(":") == 2:
        ip, host, ctr = spec.split(":")
    elif ":" in spec:
        raise InvalidInput(f"bad port {text!r}: expected [IP:][HOST:]CONTAINER[/PROTO]")
    if "-" in host or "-" in ctr:
        raise Unsupported(f"port ranges are not supported: {text!r}")

    def number(value: str, what: str, allow_zero: bool) -> int:
        if not value.isdigit() or not (0 if allow_zero else 1) <= int(value) <= 65535:
            raise InvalidInput(f"bad port {text!r}: {what} port {value!r} is not a port "
                               "number")
        return int(value)

    if ip:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        except OSError:
            raise InvalidInput(f"bad port {text!r}: {ip!r} is not an IP address") from None
    return PortMapping(number(ctr, "container", False),
                       number(host, "host", True) if host else 0,
                       ip or "0.0.0.0", proto)  # type: ignore[arg-type]


class Publisher:
    """The host side of published ports: binds them at once (``published`` says which
    host port each got), starts the forwarder for a running sandbox, stops it."""

    def __init__(self, mappings: list[PortMapping]) -> None:
        from lamina.errors import InvalidInput

        self.sockets: list[tuple[PortMapping, socket.socket]] = []
        self.published: list[PortMapping] = []
        self.forwarder: subprocess.Popen[bytes] | None = None
        try:
            for m in mappings:
                family = socket.AF_INET6 if ":" in m.host_ip else socket.AF_INET
                kind = socket.SOCK_STREAM if m.proto == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(family, kind)
                self.sockets.append((m, sock))
                if m.proto == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((m.host_ip, m.host_port))
                except OSError as e:
                    raise InvalidInput(f"cannot publish {m.host_ip}:{m.host_port}/{m.proto}: "
                                       f"{e.strerror or e}") from None
                if m.proto == "tcp":
                    sock.listen(128)
                port = sock.getsockname()[1]
                self.published.append(PortMapping(m.container_port, port, m.host_ip, m.proto))
        except BaseException:
            self.close()
            raise

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        """Start forwarding into the namespaces of ``proc``'s child (the sandbox's
        init).  A sandbox that ended already has nothing to forward to."""
        import subprocess

        from lamina.errors import LaminaError
        from lamina.run.signals import _children

        if not self.sockets:
            return
        deadline = time.monotonic() + _FIND_INIT_FOR
        init = None
        while init is None and proc.poll() is None:
            kids = _children(proc.pid)
            if kids:
                init = kids[0]
            elif time.monotonic() > deadline:
                raise LaminaError("the sandbox's init did not appear: cannot publish ports")
            else:
                time.sleep(0.002)
        if init is None:
            return
        fds: list[int] = []
        try:
            try:
                net = os.open(f"/proc/{init}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                fds.append(net)
                user = -1
                if os.stat(f"/proc/{init}/ns/user").st_ino != os.stat(
                        "/proc/self/ns/user").st_ino:
                    user = os.open(f"/proc/{init}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                    fds.append(user)
            except FileNotFoundError:
                return   # the sandbox is gone already
            ready_r, ready_w = os.pipe()
            fds += [ready_r, ready_w]
            spec = {"net": net, "user": user, "ready": ready_w,
                    "ports": [[s.fileno(), m.container_port, m.proto] for m, s in self.sockets]}
            # -I -S: nothing from the environment or site-packages; this module needs
            # only the standard library and is found where this copy of lamina lives.
            boot = (f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
                    "from lamina.run.portfwd import main; sys.exit(main(sys.argv))")
            self.forwarder = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", boot, json.dumps(spec)],
                pass_fds=(*(fd for fd in (net, user, ready_w) if fd >= 0),
                          *(s.fileno() for _, s in self.sockets)),
                stdin=subprocess.DEVNULL, close_fds=True)
            os.close(ready_w)
            fds.remove(ready_w)
            # Wait for "in": a forwarder that cannot enter the namespaces says why, and
            # the run stops rather than publishing ports that lead nowhere.
            with os.fdopen(ready_r, "rb") as f:
                fds.remove(ready_r)
                answer = f.read().decode(errors="replace")
            if answer != "in":
                self.close()
                raise LaminaError(f"cannot publish ports: {answer or 'the forwarder died'}")
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.terminate()
            try:
                self.forwarder.wait(timeout=5)
            except Exception:
                self.forwarder.kill()
                self.forwarder.wait()
            self.forwarder = None
        for _, sock in self.sockets:
            sock.close()
        self.sockets.clear()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the forwarder process ---------------------------------------------------------------
def _copy(src: socket.socket, dst: socket.socket, done: threading.Semaphore) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.release()


def _serve_tcp(listener: socket.socket, port: int) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_tcp_connection, args=(client, port), daemon=True).start()


def _tcp_connection(client: socket.socket, port: int) -> None:
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # in the container
    try:
        inner.connect(("127.0.0.1", port))
    except OSError:
        client.close()   # nothing listens inside (yet): the client sees a reset/close
        inner.close()
        return
    done = threading.Semaphore(0)
    threading.Thread(target=_copy, args=(inner, client, done), daemon=True).start()
    _copy(client, inner, done)
    done.acquire()
    done.acquire()
    client.close()
    inner.close()


def _serve_udp(outer: socket.socket, port: int) -> None:
    peers: dict[tuple[str, int], socket.socket] = {}
    lock = threading.Lock()

    def replies(addr: tuple[str, int], inner: socket.socket) -> None:
        inner.settimeout(_UDP_IDLE)
        try:
            while True:
                data = inner.recv(65536)
                outer.sendto(data, addr)
        except OSError:   # idle (timeout) or refused: forget this client
            pass
        finally:
            with lock:
                peers.pop(addr, None)
            inner.close()

    while True:
        data, addr = outer.recvfrom(65536)
        with lock:
            inner = peers.get(addr)
            if inner is None:
                inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                inner.connect(("127.0.0.1", port))
                peers[addr] = inner
                threading.Thread(target=replies, args=(addr, inner), daemon=True).start()
        with contextlib.suppress(OSError):
            inner.send(data)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG: go when lamina goes
    if os.getppid() == 1:
        return 0
    ready = spec["ready"]
    # Still one thread here: joining a user namespace requires it (setns(2)).
    for fd, flag in ((spec["user"], CLONE_NEWUSER), (spec["net"], CLONE_NEWNET)):
        if fd >= 0 and libc.setns(fd, flag) != 0:
            err = ctypes.get_errno()
            os.write(ready, f"the forwarder cannot enter the container's "
                            f"{'user' if flag == CLONE_NEWUSER else 'network'} namespace: "
                            f"{os.strerror(err)}".encode())
            return 1
        if fd >= 0:
            os.close(fd)
    for fd, port, proto in spec["ports"]:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(fileno=fd, type=kind)
        target = _serve_tcp if proto == "tcp" else _serve_udp
        threading.Thread(target=target, args=(sock, port), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda n, f: os._exit(0))
    os.write(ready, b"in")
    os.close(ready)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

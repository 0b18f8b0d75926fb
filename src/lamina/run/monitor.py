"""The monitor: the process that watches one container while it runs (Podman's conmon).

lamina has no daemon, so whoever starts a container watches it:

* ``lamina run`` in the foreground is its own monitor: the container's stdio is the
  user's (a terminal of its own with ``-t``: run/pty.py), lamina's signals are its
  signals (run/signals.py);
* ``lamina run -d`` forks, starts a new session and forks again (the classic daemon
  double fork: no terminal can ever be acquired, and the grandchild is nobody's child to
  wait for), and the grandchild is the monitor: it starts the sandbox with its output
  going to pipes it copies into the container's log (run/ctrlog.py), runs HEALTHCHECK on
  its interval through the exec path, and tells the ``lamina run -d`` waiting for it,
  through a pipe, once the command runs (or why it could not start).

Either way the monitor records the command's host pid once it runs, and its exit status
when it ends, in the store (store/containers.py), unmounts the container's root
filesystem and, with ``--rm``, removes the container.  It holds an flock on
``containers/<id>/monitor.lock`` for exactly that long: anyone who can take the lock
while the record still says "running" knows the monitor died unrecorded (SIGKILL, OOM);
the sandbox died with it (bubblewrap's ``--die-with-parent``: a container never runs
unwatched, without its log read or its rootfs owned), so it is "exited", status unknown.
``lamina stop``/``wait`` wait for the lock too: once they get it, the status is recorded.
A detached monitor passes its own signals on as the foreground lamina does: SIGTERM to
it stops the container (STOPSIGNAL, then SIGKILL) and the status is still recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import LaminaError
from lamina.run.ctrlog import LogWriter
from lamina.run.nsexec import exec_argv, exec_spec
from lamina.run.portfwd import Publisher
from lamina.run.pty import foreground, mount_devpts, open_pair, pump, set_size
from lamina.run.sandbox import ProcessSpec, resolve_user, run_process, sandbox_network
from lamina.run.security import Security
from lamina.run.signals import SignalProxy, find_command
from lamina.store.containers import ContainerRecord, Containers
from lamina.store.locks import flock_or_close
from lamina.store.meta import Metadata
from lamina.store.store import Store

if TYPE_CHECKING:
    from lamina.run.ctrfs import ContainerRootfs

LOCK = "monitor.lock"
LOG = "ctr.log"
SECCOMP = "seccomp.bpf"   # the container's filter, compiled once, for exec to load
_FIND_FOR = 10.0   # seconds the monitor waits for a started sandbox's command to exist


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, proc(5) stat field 22): with the
    pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def take_lock(path: Path, shared: bool = False, wait: bool = True) -> int | None:
    """A descriptor holding the flock of ``path`` (None: held by someone, ``wait`` off)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return flock_or_close(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                          | (0 if wait else fcntl.LOCK_NB))


def open_rootfs(store: Store, rec: ContainerRecord) -> ContainerRootfs:
    from lamina.digest import Digest
    from lamina.image.config import chain_ids
    from lamina.run.ctrfs import ContainerRootfs
    from lamina.run.snapshots import merge_point, merged_id

    directory = container_dir(store, rec.id)
    if (directory / "upper").is_dir():
        diff_ids = [Digest.parse(d) for d in rec.spec["diff_ids"]]
        chains = chain_ids(diff_ids)
        # a deep image's bottom layers are one merged snapshot (Snapshotter.stack)
        cut = merge_point(len(chains))
        lowers = ((store.snapshot_path(merged_id(chains[cut - 1])),) if cut else ()) + \
            tuple(store.snapshot_path(c) for c in chains[cut:]) or (directory / "empty",)
        return ContainerRootfs(directory, "overlay", lowers)
    return ContainerRootfs(directory, "walk")


def container_dir(store: Store, cid: str) -> Path:
    return store.root / "containers" / cid


def compiled_filter(store: Store, rec: ContainerRecord) -> bytes | None:
    """The seccomp filter the monitor compiled for ``rec`` (None: not there)."""
    try:
        return (container_dir(store, rec.id) / SECCOMP).read_bytes()
    except FileNotFoundError:
        return None


def _process_spec(rec: ContainerRecord, root: Path, pts: Path | None) -> ProcessSpec:
    s = rec.spec
    return ProcessSpec(
        rootfs=root, argv=s["argv"], env=s["env"], cwd=s["cwd"], user=s["user"],
        mounts=tuple((Path(h), c, bool(ro)) for h, c, ro in s["volumes"]),
        network=sandbox_network(s["network"]), hostname=s["hostname"],
        read_only=s["read_only"],
        tmpfs=tuple((p, size, mode) for p, size, mode in s["tmpfs"]), pts=pts, tty=s["tty"],
        security=Security.from_record(s.get("security")))


def _pipes_to_log(sources: dict[int, str], log: LogWriter) -> None:
    """Copy every pipe to the log until all of them are at end of file."""
    sel = selectors.DefaultSelector()
    for fd, name in sources.items():
        sel.register(fd, selectors.EVENT_READ, name)
    try:
        while sel.get_map():
            for key, _ in sel.select():
                data = os.read(key.fd, 65536)
                if data:
                    log.write(key.data, data)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()


class Notify:
    """The pipe to the ``lamina run -d`` waiting for the monitor (nothing when None)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, message: str) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.fd, message.encode(errors="replace"))
            os.close(self.fd)
            self.fd = None


def serve(store: Store, rec: ContainerRecord, detached: bool, notify: Notify,
          proxy: SignalProxy | None = None, publisher: Publisher | None = None) -> int:
    """Run the container's process to its end (see the module docstring); its status.
    The caller holds the monitor lock.  ``publisher`` holds the bound host ports of
    ``-p``: the forwarder starts once the sandbox does, and they are closed when it
    ends (so ``lamina stop`` frees them)."""
    table = Containers(store.meta)
    spec = rec.spec
    ctr = open_rootfs(store, rec)
    closing: list[int] = []
    log = LogWriter(ctr.dir / LOG) if detached else None
    stop_health = threading.Event()
    started = False
    try:
        ctr.mount()
        bpf = Security.from_record(spec.get("security")).seccomp_filter()
        if bpf is not None:
            (ctr.dir / SECCOMP).write_bytes(bpf)
        pts: Path | None = None
        master = -1
        stdio: tuple[int | None, int | None, int | None] = (None, None, None)
        pipes: dict[int, str] = {}
        if spec["tty"]:
            if os.geteuid() == 0:
                pts = ctr.dir / "pts"
                mount_devpts(pts)
            master, slave = open_pair(pts / "ptmx" if pts is not None else None)
            closing += [master, slave]
            stdio = (slave, slave, slave)
        elif detached:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            closing += [out_r, out_w, err_r, err_w]
            pipes = {out_r: "stdout", err_r: "stderr"}
            stdio = (subprocess.DEVNULL, out_w, err_w)

        def waiter(proc: subprocess.Popen[bytes]) -> int:
            nonlocal started
            for fd in (stdio[1], stdio[2]):   # the process's ends: EOF once it is gone
                if fd is not None and fd in closing:
                    os.close(fd)
                    closing.remove(fd)
            pid = _command_pid(proc)
            table.started(rec.id, pid or 0, (process_start(pid) or 0) if pid else 0)
            started = True
            notify.send("started")
            health = spec.get("healthcheck")
            if detached and health and pid:
                threading.Thread(target=_health_loop, daemon=True, name="health",
                                 args=(store, rec, ctr.path, pid, health, stop_health)).start()
            try:
                if master >= 0 and not detached:
                    return foreground(master, proc)
                if master >= 0 and log is not None:
                    set_size(master, 24, 80)
                    return pump(master, proc, None, lambda data: log.write("stdout", data))
                if log is not None:
                    _pipes_to_log(pipes, log)
                return proc.wait()
            finally:
                stop_health.set()

        try:
            code = run_process(_process_spec(rec, ctr.path, pts), *stdio,
                               sandbox=spec["sandbox"], proxy=proxy, waiter=waiter,
                               on_start=publisher.start if publisher is not None
                               and publisher.sockets else None)
        except LaminaError as e:
            table.exited(rec.id, 125, str(e))
            notify.send(f"error {e}")
            raise
        if not started and log is not None and pipes:
            # It never ran (127: not in the image; 126: not executable): the reason was
            # written to its stderr, still in the pipe.  Into the log with it.
            for fd in (stdio[1], stdio[2]):
                if fd in closing:
                    os.close(fd)
                    closing.remove(fd)
            _pipes_to_log(pipes, log)
        table.exited(rec.id, code)
        if not started:
            notify.send(f"exited {code}")
        return code
    finally:
        stop_health.set()
        if publisher is not None:
            publisher.close()
        for fd in closing:
            with contextlib.suppress(OSError):
                os.close(fd)
        if log is not None:
            log.close()
        with contextlib.suppress(OSError, LaminaError):
            ctr.unmount()
        if spec.get("rm"):
            with contextlib.suppress(OSError, LaminaError):
                ctr.remove()
                table.delete(rec.id)


def _command_pid(proc: subprocess.Popen[bytes]) -> int | None:
    deadline = time.monotonic() + _FIND_FOR
    while proc.poll() is None and time.monotonic() < deadline:
        found = find_command(proc.pid)
        if found is not None:
            return found[0]
        time.sleep(0.002)
    return None


def start_detached(store: Store, rec: ContainerRecord, lock_fd: int,
                   publisher: Publisher | None = None) -> int | None:
    """Start the monitor of ``rec`` (see the module docstring) and return once the
    command runs (None) or ended without running (its status).  ``lock_fd`` holds the
    monitor lock: the monitor inherits it, and this process closes its copy.  So with
    ``publisher``'s bound sockets: they cross the fork (the monitor, which outlives
    ``lamina run -d``, listens and forwards); the caller closes its copies."""
    read_end, write_end = os.pipe()
    root = store.root
    # A SQLite connection must not cross a fork, not even unused: the child's own
    # connection would share the parent's in-memory lock and WAL-index state and lose
    # its writes (sqlite.org/howtocorrupt.html 2.6).  Closed here, opened again below.
    store.meta.close()
    child = os.fork()
    if child == 0:   # pragma: no cover - runs in the forked processes
        _monitor_main(root, rec, read_end, write_end, publisher)
    store.meta = Metadata(store.meta.path)
    os.close(write_end)
    os.close(lock_fd)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode(errors="replace")
    if message == "started":
        return None
    if message.startswith("exited "):
        return int(message.split()[1])
    raise LaminaError(message.removeprefix("error ") or
                      "the container's monitor died before the command started")


def _monitor_main(root: Path, rec: ContainerRecord, read_end: int, write_end: int,
                  publisher: Publisher | None) -> None:
    """The forked side of ``start_detached``: never returns."""
    code = 0
    try:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        # The parent's store connection is not this process's to use (SQLite forbids
        # sharing one across fork): a fresh one.
        # The monitor's own signals are the container's, as lamina's are in the
        # foreground: a SIGTERM to it (a shutdown) stops the container as `lamina stop`
        # does, and its status is still recorded.
        proxy = SignalProxy(int(rec.spec["stop_signal"]), float(rec.spec["stop_timeout"]))
        with Store(root) as store:
            serve(store, rec, True, Notify(write_end), proxy, publisher)
    except BaseException as e:  # noqa: BLE001 - nobody is left to tell but the record
        code = 1
        with contextlib.suppress(Exception):
            import traceback

            (root / "containers" / rec.id / "monitor.err").write_text(traceback.format_exc())
        Notify(write_end).send(f"error {e}")
        with contextlib.suppress(Exception), Store(root) as store:
            Containers(store.meta).exited(rec.id, None, f"monitor failed: {e}",
                                          only_if_running=True)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)


# -- HEALTHCHECK -------------------------------------------------------------------------
_NS = 1_000_000_000


def health_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The image's HEALTHCHECK as the monitor runs it (None: none, or NONE), with
    Docker's defaults: interval 30 s, timeout 30 s, start period 0, 3 retries."""
    hc = config.get("Healthcheck")
    if not isinstance(hc, dict):
        return None
    test = hc.get("Test")
    if not isinstance(test, list) or not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", " ".join(str(t) for t in test[1:])]
    elif test[0] == "CMD":
        argv = [str(t) for t in test[1:]]
    else:
        argv = [str(t) for t in test]   # an older config: the command itself
    if not argv:
        return None

    def seconds(key: str, default: float) -> float:
        value = hc.get(key)
        return value / _NS if isinstance(value, int) and value > 0 else default

    retries = hc.get("Retries")
    return {"argv": argv, "interval": seconds("Interval", 30.0),
            "timeout": seconds("Timeout", 30.0), "start_period": seconds("StartPeriod", 0.0),
            "retries": retries if isinstance(retries, int) and retries > 0 else 3}


def _health_loop(store: Store, rec: ContainerRecord, root: Path, pid: int,
                 hc: dict[str, Any], stop: threading.Event) -> None:
    """Docker's rules (moby daemon/health.go): "starting" until the first success;
    after ``retries`` failures in a row "unhealthy" (failures within the start period
    do not count); the last five results kept with their output."""
    from lamina.run.ctrlog import timestamp

    table = Containers(store.meta)
    state: dict[str, Any] = {"Status": "starting", "FailingStreak": 0, "Log": []}
    table.set_health(rec.id, state)
    begun = time.monotonic()
    spec = rec.spec
    try:
        user = resolve_user(root, spec["user"])
    except LaminaError:
        return
    argv = exec_argv(exec_spec(pid, hc["argv"], spec["env"], spec["cwd"], user,
                               Security.from_record(spec.get("security"))))
    while not stop.wait(hc["interval"]):
        start = timestamp()
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=hc["timeout"], check=False)
            code, output = done.returncode, (done.stdout + done.stderr)
        except subprocess.TimeoutExpired:
            code, output = -1, b"Health check exceeded timeout"
        if stop.is_set():
            return
        state["Log"] = [*state["Log"], {"Start": start, "End": timestamp(), "ExitCode": code,
                                        "Output": output[-4096:].decode(errors="replace")}][-5:]
        if code == 0:
            state["Status"], state["FailingStreak"] = "healthy", 0
        elif time.monotonic() - begun >= hc["start_period"] or state["Status"] != "starting":
            state["FailingStreak"] += 1
            if state["FailingStreak"] >= hc["retries"]:
                state["Status"] = "unhealthy"
        with contextlib.suppress(LaminaError):
            table.set_health(rec.id, state)


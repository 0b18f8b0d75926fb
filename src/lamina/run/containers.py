"""Containers that outlive one command: create, run, stop, kill, exec, commit, remove.

``lamina run`` without ``--commit`` makes a container: a record in the store
(store/containers.py) with its settings, and a root filesystem of its own
(run/ctrfs.py).  The process runs under a monitor (run/monitor.py): lamina itself in the
foreground, a forked process with ``-d``.  Without ``--rm`` the container stays after
its process ended, as Docker's and Podman's do: ``ps -a`` lists it, ``logs`` shows what
a detached one wrote, ``commit`` turns its changes into an image, ``rm`` removes it.

Every command that reads a record first checks that what it says is still true
(``refresh``): a "running" container whose monitor lock is free lost its monitor
unrecorded, and is shown as exited with an unknown status.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import InvalidInput, LaminaError, NotFound
from lamina.run.ctrlog import timestamp
from lamina.run.monitor import (
    LOCK,
    Notify,
    compiled_filter,
    container_dir,
    health_settings,
    open_rootfs,
    process_start,
    serve,
    start_detached,
    take_lock,
)
from lamina.run.nsexec import Entered, container_ptmx, exec_spec
from lamina.run.portfwd import PortMapping, Publisher
from lamina.run.pty import foreground, open_pair
from lamina.run.sandbox import resolve_user
from lamina.run.security import DEFAULT_CAPS, Security
from lamina.store.containers import ContainerRecord, Containers
from lamina.store.store import Store

if TYPE_CHECKING:
    from lamina.image.manifest import Descriptor
    from lamina.run.container import RunOptions
    from lamina.run.signals import SignalProxy

# What only create and commit need (layers, images, transports) is imported there: ps,
# exec, stop and logs start faster without it.

# Docker's rule for names (moby daemon/names: [a-zA-Z0-9][a-zA-Z0-9_.-]+).
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
# Docker-style names (adjective_noun); a clash just draws again.
_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen",
               "lucid", "merry", "nifty", "proud", "quiet", "sharp", "tender", "wise")
_NOUNS = ("curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace",
          "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wing", "yalow")


def read_env_file(path: Path) -> list[str]:
    """``--env-file``: one ``K=V`` (or ``K``, the caller's value) a line; blank lines and
    lines starting with ``#`` are skipped; nothing is unquoted (Docker's rules, moby
    opts/envfile.go)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read env file {path}: {e.strerror or e}") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise InvalidInput(f"{path}:{number}: bad environment variable {key!r}")
        items.append(stripped)
    return items


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_tmpfs(text: str) -> tuple[str, int | None, int]:
    """``PATH[:size=N[kmg],mode=OCTAL,...]`` -> (path, size in bytes or None, mode).
    Docker's other options (rw, nosuid, nodev, noexec, exec) are accepted; the tmpfs is
    always nosuid and nodev."""
    path, _, opts = text.partition(":")
    if not path.startswith("/"):
        raise InvalidInput(f"bad --tmpfs {text!r}: the path must be absolute")
    size: int | None = None
    mode = 0o1777
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        try:
            if key == "size":
                unit = value[-1:].lower() if value[-1:].isalpha() else ""
                size = int(value[:-1] if unit else value) * _UNITS[unit]
            elif key == "mode":
                mode = int(value, 8)
            elif key not in ("rw", "nosuid", "nodev", "noexec", "exec"):
                raise InvalidInput(f"bad --tmpfs {text!r}: unknown option {opt!r}")
        except (ValueError, KeyError):
            raise InvalidInput(f"bad --tmpfs {text!r}: bad value in {opt!r}") from None
    return path, size, mode


def _random_name(table: Containers) -> str:
    for _ in range(100):
        name = f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"
        if table.by_name(name) is None:
            return name
    return f"lamina_{os.urandom(4).hex()}"


@dataclass
class Created:
    record: ContainerRecord
    lock_fd: int          # the monitor lock, held until the monitor takes it over
    publisher: Publisher  # the host ports of -p, bound; the monitor forwards them


def publish_ports(opts: RunOptions) -> Publisher:
    """Bind the host ports of ``opts.ports`` (``-p``), said to ``opts.on_published``:
    the first thing a run does, so a port in use is one error and nothing is made."""
    from lamina.run.container import port_mappings

    publisher = Publisher(port_mappings(opts))
    if opts.on_published is not None and publisher.published:
        opts.on_published(publisher.published)
    return publisher


def create(store: Store, opts: RunOptions, publisher: Publisher) -> Created:
    """Make the container ``opts`` describe (record, rootfs), not started yet;
    ``publisher`` holds its published ports (``publish_ports``)."""
    from lamina.image.config import chain_ids
    from lamina.run.container import process_settings
    from lamina.run.ctrfs import ContainerRootfs
    from lamina.run.snapshots import merge_point, merged_id, snapshot_key
    from lamina.transport.local import StoreTransport
    from lamina.transport.resolve import resolve_image

    sweep(store)
    source = StoreTransport(store)
    try:
        image = resolve_image(source, source.resolve(opts.image))
        config = image.config.container_config
        settings = process_settings(config, opts)
        if opts.tty:
            settings.env.setdefault("TERM", "xterm")   # as docker run -t sets it
        tmpfs = [parse_tmpfs(t) for t in opts.tmpfs]
        table = Containers(store.meta)
        if opts.name is not None and not _NAME.fullmatch(opts.name):
            raise InvalidInput(f"invalid container name {opts.name!r}: only [a-zA-Z0-9_.-] "
                               "allowed, starting with a letter or digit")
        name = opts.name if opts.name is not None else _random_name(table)
        cid = os.urandom(32).hex()
        directory = container_dir(store, cid)
        directory.mkdir(parents=True)
        lock_fd = take_lock(directory / LOCK)
        assert lock_fd is not None
        m = image.manifest
        spec: dict[str, Any] = {
            "argv": settings.argv, "env": settings.env, "cwd": settings.workdir,
            "user": settings.user, "hostname": opts.hostname or cid[:12],
            "network": opts.network, "security": opts.security.to_record(),
            # [container port, host port, host ip, proto]: host ports as bound
            "ports": [[m.container_port, m.host_port, m.host_ip, m.proto]
                      for m in publisher.published],
            "volumes": [[os.fspath(h), c, ro] for h, c, ro in settings.mounts],
            "tmpfs": tmpfs, "read_only": opts.read_only, "tty": opts.tty,
            "interactive": opts.interactive, "init": opts.init, "rm": opts.rm,
            "detach": opts.detach, "stop_signal": settings.stop_signal,
            "stop_timeout": opts.stop_timeout, "sandbox": opts.sandbox,
            "entrypoint": opts.entrypoint, "command": list(opts.command),
            "healthcheck": health_settings(config),
            "image_digest": str(image.digest), "image_id": str(m.config.digest),
            "image_media_type": m.media_type, "image_size": len(m.raw),
            "diff_ids": [str(d) for d in image.config.diff_ids],
            "labels": config.get("Labels") or {},
        }
        chains = chain_ids(image.config.diff_ids)
        cut = merge_point(len(chains))
        roots = [str(image.digest), str(m.config.digest), *(str(d.digest) for d in m.layers),
                 *(snapshot_key(c) for c in chains),
                 # a deep image's merged bottom (Snapshotter.stack)
                 *([snapshot_key(merged_id(chains[cut - 1]))] if cut else [])]
        rec = ContainerRecord(cid, name, opts.image, time.time(), spec, roots)
        try:
            table.add(rec)
        except BaseException:
            os.close(lock_fd)
            ContainerRootfs(directory, "walk").remove()
            raise
        try:
            ContainerRootfs.create(store, source, image, directory, opts.snapshotter)
        except BaseException:
            os.close(lock_fd)
            ContainerRootfs(directory, "walk").remove()
            table.delete(cid)
            raise
        return Created(rec, lock_fd, publisher)
    finally:
        source.close()


def run_attached(store: Store, created: Created, proxy: SignalProxy | None) -> int:
    """Run the container in the foreground, lamina its monitor; its exit status."""
    try:
        return serve(store, created.record, False, Notify(None), proxy, created.publisher)
    finally:
        os.close(created.lock_fd)
        created.publisher.close()


def run_detached(store: Store, created: Created) -> int | None:
    """Start the container under a monitor of its own; None once it runs, or the
    status of a command that could not start (its message is in the log)."""
    try:
        return start_detached(store, created.record, created.lock_fd, created.publisher)
    finally:
        created.publisher.close()   # this process's copies: the monitor holds its own


# -- the truth about a record ------------------------------------------------------------
def refresh(store: Store, rec: ContainerRecord) -> ContainerRecord:
    """``rec`` as it really is: a running or created container whose monitor is gone
    (its lock free) is recorded as exited, status unknown, and its mounts undone."""
    if rec.state not in ("running", "created"):
        return rec
    directory = container_dir(store, rec.id)
    try:
        fd = take_lock(directory / LOCK, wait=False)
    except OSError:
        fd = -1    # the directory is gone: nobody watches
    if fd is None:
        return rec   # alive
    try:
        table = Containers(store.meta)
        table.exited(rec.id, None, "exit status unknown: the container's monitor died",
                     only_if_running=True)
        with contextlib.suppress(OSError, LaminaError):
            open_rootfs(store, rec).unmount()
        if rec.spec.get("rm"):
            with contextlib.suppress(OSError, LaminaError):
                open_rootfs(store, rec).remove()
            table.delete(rec.id)
            raise NotFound(f"no such container: {rec.name} (removed: --rm)")
        fresh = table.get(rec.id)
        return fresh if fresh is not None else rec
    finally:
        if fd >= 0:
            os.close(fd)


def sweep(store: Store) -> None:
    """Set right every container whose monitor died unrecorded (killed with lamina in
    the foreground, or on its own): recorded as exited, its mounts undone, removed if
    it was ``--rm`` — as run/rootfs.py's ``sweep_stale`` does for one-off rootfs."""
    for rec in Containers(store.meta).all():
        if rec.state in ("running", "created"):
            with contextlib.suppress(NotFound):
                refresh(store, rec)


def find(store: Store, text: str) -> ContainerRecord:
    return refresh(store, Containers(store.meta).find(text))


def listing(store: Store, all_: bool) -> list[ContainerRecord]:
    out = []
    for rec in Containers(store.meta).all():
        try:
            rec = refresh(store, rec)
        except NotFound:
            continue
        if all_ or rec.state == "running":
            out.append(rec)
    return out


def _alive(rec: ContainerRecord) -> bool:
    return bool(rec.pid) and process_start(rec.pid or 0) == rec.pid_start


def _signal(rec: ContainerRecord, sig: int) -> None:
    """Signal the container's command, by a pidfd checked to be that very process."""
    if not rec.pid:
        return
    try:
        fd = os.pidfd_open(rec.pid)
    except OSError:
        return
    try:
        if process_start(rec.pid) == rec.pid_start:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def wait_for_exit(store: Store, rec: ContainerRecord, timeout: float | None = None
                  ) -> ContainerRecord | None:
    """The record once the monitor is done with it (None: still running at
    ``timeout``)."""
    path = container_dir(store, rec.id) / LOCK
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fd = take_lock(path, shared=True, wait=deadline is None)
        except OSError:
            break   # removed meanwhile
        if fd is not None:
            os.close(fd)
            break
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    fresh = Containers(store.meta).get(rec.id)
    if fresh is None:
        return rec
    try:
        return refresh(store, fresh)
    except NotFound:
        return fresh


def stop(store: Store, rec: ContainerRecord, timeout: float | None = None) -> ContainerRecord:
    """``docker stop``: the STOPSIGNAL, then SIGKILL after ``timeout`` seconds (the
    container's --stop-timeout by default); the record once it exited."""
    if rec.state != "running":
        return rec
    grace = float(rec.spec.get("stop_timeout", 10)) if timeout is None else timeout
    _signal(rec, int(rec.spec.get("stop_signal", signal.SIGTERM)))
    done = wait_for_exit(store, rec, grace)
    if done is None:
        _signal(rec, signal.SIGKILL)
        done = wait_for_exit(store, rec)
    return done or rec


def kill(rec: ContainerRecord, sig: int) -> None:
    if rec.state != "running" or not _alive(rec):
        raise InvalidInput(f"cannot kill container {rec.name}: it is not running")
    _signal(rec, sig)


def remove(store: Store, rec: ContainerRecord, force: bool = False) -> None:
    """``docker rm``: a running container only with ``force`` (killed first)."""
    if rec.state == "running":
        if not force:
            raise InvalidInput(f"cannot remove container {rec.name}: it is running; stop "
                               "it first or use rm -f")
        _signal(rec, signal.SIGKILL)
        wait_for_exit(store, rec)
    directory = container_dir(store, rec.id)
    fd = take_lock(directory / LOCK) if directory.is_dir() else -1
    try:
        open_rootfs(store, rec).remove()
    finally:
        if fd is not None and fd >= 0:
            os.close(fd)
    Containers(store.meta).delete(rec.id)


# -- exec, commit ------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecOptions:
    argv: list[str]
    env: list[str]
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False


def exec_in(store: Store, rec: ContainerRecord, opts: ExecOptions) -> int:
    """Run a command in the running container (run/nsexec.py); its exit status."""
    if rec.state != "running" or not _alive(rec) or rec.pid is None:
        raise InvalidInput(f"container {rec.name} is not running")
    if not opts.argv:
        raise InvalidInput("exec: no command given")
    from lamina.run.container import container_env

    settings = rec.spec
    env = dict(settings["env"])
    env.update(container_env({}, opts.env, os.environ))
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    root = open_rootfs(store, rec).path
    user = resolve_user(root, opts.user if opts.user is not None else settings["user"])
    env.setdefault("HOME", user.home)
    cwd = opts.workdir or settings["cwd"]
    if opts.tty:
        env.setdefault("TERM", "xterm")
    spec = exec_spec(rec.pid, opts.argv, env, cwd, user,
                     Security.from_record(settings.get("security")), tty=opts.tty,
                     compiled=compiled_filter(store, rec))
    if opts.tty:
        master, slave = open_pair(Path(container_ptmx(rec.pid)))
        try:
            proc = Entered(spec, (slave, slave, slave))
        finally:
            os.close(slave)
        try:
            return _code(foreground(master, proc, 0 if opts.interactive else -1))
        finally:
            os.close(master)
    stdin = 0 if opts.interactive else os.open(os.devnull, os.O_RDONLY)
    try:
        proc = Entered(spec, (stdin, 1, 2))
    finally:
        if stdin:
            os.close(stdin)
    return _code(proc.wait())


def _code(status: int) -> int:
    return 128 - status if status < 0 else status


def commit(store: Store, rec: ContainerRecord, ref: str,
           source_date_epoch: int | None = None, compression: str = "gzip") -> Descriptor:
    """``docker commit``: what the container changed, as one layer on its image."""
    from lamina.digest import Digest
    from lamina.image.manifest import Descriptor
    from lamina.image.reference import Reference
    from lamina.run.container import commit_changes
    from lamina.transport.local import StoreTransport
    from lamina.transport.resolve import resolve_image

    target = Reference.parse(ref)
    if target.digest is not None:
        raise InvalidInput(f"cannot commit to a digest reference: {ref}")
    spec = rec.spec
    source = StoreTransport(store)
    try:
        image = resolve_image(source, Descriptor(spec["image_media_type"],
                                                 Digest.parse(spec["image_digest"]),
                                                 int(spec["image_size"])))
        ctr = open_rootfs(store, rec)
        mounted_here = rec.state != "running"
        if mounted_here:
            ctr.mount()
        try:
            created_by = shlex.join(["lamina", "commit", rec.name, ref])
            return commit_changes(store, image, ctr.changes(source_date_epoch), target,
                                  created_by, source_date_epoch,
                                  compression)  # type: ignore[arg-type]
        finally:
            if mounted_here:
                ctr.unmount()
    finally:
        source.close()


# -- what ps and inspect show --------------------------------------------------------------
_ZERO_TIME = "0001-01-01T00:00:00Z"


def inspect_document(rec: ContainerRecord) -> dict[str, Any]:
    """``docker inspect``'s main fields for a container."""
    spec = rec.spec
    security = Security.from_record(spec.get("security"))
    ports: dict[str, list[dict[str, str]]] = {}
    for m in published(rec):
        ports.setdefault(f"{m.container_port}/{m.proto}", []).append(
            {"HostIp": m.host_ip, "HostPort": str(m.host_port)})

    def when(t: float | None) -> str:
        return timestamp(t) if t else _ZERO_TIME

    state: dict[str, Any] = {
        "Status": rec.state, "Running": rec.state == "running", "Paused": False,
        "Restarting": False, "OOMKilled": False, "Dead": False,
        "Pid": rec.pid if rec.state == "running" and rec.pid else 0,
        "ExitCode": -1 if rec.state == "exited" and rec.exit_code is None
        else (rec.exit_code or 0),
        "Error": rec.error, "StartedAt": when(rec.started), "FinishedAt": when(rec.finished)}
    if spec.get("healthcheck"):
        state["Health"] = rec.health or {"Status": "starting", "FailingStreak": 0, "Log": []}
    argv = spec["argv"]
    return {
        "Id": rec.id, "Created": timestamp(rec.created), "Path": argv[0], "Args": argv[1:],
        "State": state, "Image": spec["image_id"], "ImageDigest": spec["image_digest"],
        "Name": "/" + rec.name,
        "Config": {
            "Hostname": spec["hostname"], "User": spec["user"], "Tty": spec["tty"],
            "OpenStdin": spec["interactive"], "Env": [f"{k}={v}" for k, v in spec["env"].items()],
            "Cmd": spec["command"] or None, "Entrypoint": spec["entrypoint"],
            "Image": rec.image, "WorkingDir": spec["cwd"], "Labels": spec["labels"],
            "StopSignal": signal.Signals(spec["stop_signal"]).name,
            "StopTimeout": spec["stop_timeout"]},
        "HostConfig": {
            "AutoRemove": spec["rm"], "ReadonlyRootfs": spec["read_only"],
            "Init": spec["init"], "NetworkMode": spec["network"],
            "Tmpfs": {p: f"mode={m:o}" + (f",size={s}" if s else "")
                      for p, s, m in spec["tmpfs"]},
            "Binds": [f"{h}:{c}" + (":ro" if ro else "") for h, c, ro in spec["volumes"]],
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "Privileged": not security.masked,   # only --privileged unmasks
            "CapAdd": sorted(security.caps - DEFAULT_CAPS) or None,
            "CapDrop": sorted(DEFAULT_CAPS - security.caps) or None,
            "PortBindings": ports},
        # Docker's map, "80/tcp": [{"HostIp": …, "HostPort": …}], of what was bound.
        "NetworkSettings": {"Ports": ports},
        "LogPath": os.fspath(Path("containers") / rec.id / "ctr.log"),
    }



def published(rec: ContainerRecord) -> list[PortMapping]:
    """The container's published ports, as bound."""
    return [PortMapping(int(c), int(h), str(ip), proto)
            for c, h, ip, proto in rec.spec.get("ports") or []]


def ports_column(rec: ContainerRecord) -> str:
    """ps's PORTS, Docker's form: ``0.0.0.0:8080->80/tcp``, comma-separated."""
    return ", ".join(f"{m.host_ip}:{m.host_port}->{m.container_port}/{m.proto}"
                     for m in published(rec))

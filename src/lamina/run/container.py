"""``lamina run``: an image's command in a sandbox over its layers, and ``--commit``.

The container is the image's config made concrete, as Docker combines it:

* argv = ENTRYPOINT + CMD, where a command given on the command line replaces CMD
  (not ENTRYPOINT);
* environment = the config's ``Env``, then ``-e K=V`` (``-e K`` passes lamina's own
  ``K`` if it is set); WORKDIR and USER from the config unless ``-w``/``-u`` say
  otherwise.

It runs in the foreground with lamina's stdio; lamina's signals are its signals
(``lamina.run.signals``: SIGTERM as the image's STOPSIGNAL, as ``docker stop`` sends
it); its exit status is the result.  There
are no container records: the writable layer exists while the process runs and is
removed after it (``--rm`` is what lamina always does).  ``--commit REF`` keeps it
first, as one new layer on top of the image's: a new config (the layer's diff_id and a
history entry), a new manifest of the same flavour (OCI or Docker), tagged REF — what
``docker commit`` does, and what a build's RUN step does with a Containerfile line.
A command that fails commits nothing, as a failing RUN step keeps nothing.
"""

from __future__ import annotations

import copy
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lamina.digest import Digest
from lamina.errors import InvalidInput, InvalidReference, Unsupported
from lamina.image import mediatypes as mt
from lamina.image.config import parse_config, rfc3339
from lamina.image.manifest import Descriptor, dumps
from lamina.image.reference import Reference
from lamina.layer import Changeset, LayerOptions
from lamina.layer.commit import commit_changeset
from lamina.layer.options import Compression
from lamina.run.portfwd import PortMapping, Publisher, parse_port
from lamina.run.rootfs import SnapshotterMode, open_rootfs
from lamina.run.sandbox import ProcessSpec, SandboxKind, run_process, sandbox_network
from lamina.run.security import Security
from lamina.run.signals import SignalProxy, parse_signal
from lamina.run.snapshots import Snapshotter
from lamina.store.store import Store
from lamina.transport.local import StoreTransport, record_image
from lamina.transport.resolve import ResolvedImage, resolve_image

# none: a network namespace of its own with only lo; private: the same, with the ports
# of ``-p`` forwarded from the host (lamina.run.portfwd); host: the host's network.
RunNetwork = Literal["none", "private", "host"]


@dataclass(frozen=True)
class RunOptions:
    """What ``lamina run`` was asked.  ``env``: ``K=V``, or ``K`` for lamina's own
    value; ``volumes``: ``HOST:CTR[:ro|:rw]``; ``source_date_epoch`` clamps the times
    of a committed layer and dates its config (the caller reads SOURCE_DATE_EPOCH);
    ``stdin``/``stdout``/``stderr``: descriptors for the process (None: lamina's);
    ``sig_proxy``: lamina's signals go to the process, SIGTERM as ``stop_signal`` then
    SIGKILL after ``stop_timeout`` seconds (``lamina.run.signals``)."""

    image: str
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    volumes: list[str] = field(default_factory=list)
    network: RunNetwork = "none"
    rm: bool = True
    commit: str | None = None
    snapshotter: SnapshotterMode = "auto"
    source_date_epoch: int | None = None
    compression: Compression = "gzip"
    sandbox: SandboxKind = "auto"
    hostname: str = "lamina"
    stop_signal: str | None = None   # default: the image's StopSignal, else SIGTERM
    stop_timeout: float = 10.0
    sig_proxy: bool = True
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    # Containers that are kept (run/containers.py; issue 12).  ``entrypoint``: None keeps
    # the image's, "" clears it, else it replaces it (and the image's CMD, as Docker
    # does); ``tmpfs``: ``PATH[:opts]``.  ``init`` is recorded: the sandbox's PID 1
    # already reaps and the command is PID 2 (docs/design-notes.md).
    name: str | None = None
    detach: bool = False
    entrypoint: str | None = None
    tty: bool = False
    interactive: bool = False
    read_only: bool = False
    tmpfs: list[str] = field(default_factory=list)
    init: bool = False
    security: Security = Security()
    ports: list[str] = field(default_factory=list)   # -p forms (lamina.run.portfwd)
    on_published: Callable[[list[PortMapping]], None] | None = None   # host ports bound


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    committed: Descriptor | None = None   # the new image's manifest, with --commit
    reference: str | None = None          # the tag it got (full form)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"image config: {what} must be a list of strings")
    return list(value)


def container_argv(config: Mapping[str, Any], command: Sequence[str],
                   entrypoint_override: str | None = None) -> list[str]:
    """ENTRYPOINT + (command or CMD), Docker's rule; ``--entrypoint`` replaces the
    image's ENTRYPOINT and drops its CMD ("" clears it: moby daemon/create.go)."""
    entrypoint = _strings(config.get("Entrypoint"), "Entrypoint")
    cmd = list(command) if command else _strings(config.get("Cmd"), "Cmd")
    if entrypoint_override is not None:
        entrypoint = [entrypoint_override] if entrypoint_override else []
        cmd = list(command)
    argv = entrypoint + cmd
    if not argv:
        raise InvalidInput("no command specified: the image has no ENTRYPOINT or CMD; "
                           "give one after the image name")
    return argv


def container_env(config: Mapping[str, Any], overrides: Sequence[str],
                  host: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in _strings(config.get("Env"), "Env"):
        key, sep, value = item.partition("=")
        if key:
            env[key] = value if sep else ""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidInput(f"bad environment variable {item!r}: expected K=V or K")
        if sep:
            env[key] = value
        elif key in host:
            env[key] = host[key]   # docker run -e K: the caller's value, if it has one
    return env


def parse_volume(text: str) -> tuple[Path, str, bool]:
    """``HOST:CTR[:ro|:rw]`` -> (absolute host path, container path, read_only)."""
    parts = text.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        host, ctr, ro = parts[0], parts[1], parts[2] == "ro"
    elif len(parts) == 2:
        host, ctr, ro = parts[0], parts[1], False
    else:
        raise InvalidInput(f"bad volume {text!r}: expected HOST:CONTAINER[:ro]")
    if not host or not ctr.startswith("/"):
        raise InvalidInput(f"bad volume {text!r}: the container path must be absolute")
    return Path(os.path.abspath(host)), ctr, ro


def run_container(store: Store, opts: RunOptions) -> RunResult:
    """Run ``opts.image``'s command (see the module docstring); with ``opts.commit``
    and exit status 0, store what it changed as a new image tagged ``opts.commit``."""
    commit_ref = _commit_reference(opts.commit) if opts.commit else None
    source = StoreTransport(store)
    try:
        image = resolve_image(source, source.resolve(opts.image))
    finally:
        source.close()
    s = process_settings(image.config.container_config, opts)
    proxy = SignalProxy(s.stop_signal, opts.stop_timeout) if opts.sig_proxy else None
    ports = port_mappings(opts)
    # Bound before anything else is made: a port in use stops the run at once.
    with Publisher(ports) as publisher, \
            open_rootfs(store, source, image, opts.snapshotter) as rootfs:
        if opts.on_published is not None and publisher.published:
            opts.on_published(publisher.published)
        spec = ProcessSpec(rootfs=rootfs.path, argv=s.argv, env=s.env, cwd=s.workdir,
                           user=s.user, mounts=s.mounts, network=sandbox_network(opts.network),
                           hostname=opts.hostname, security=opts.security)
        code = run_process(spec, opts.stdin, opts.stdout, opts.stderr, sandbox=opts.sandbox,
                           proxy=proxy, on_start=publisher.start if ports else None)
        if commit_ref is None or code != 0:
            return RunResult(code)
        changes = rootfs.changes(opts.source_date_epoch)
        created_by = shlex.join(["lamina", "run", "--commit", opts.commit or "", opts.image,
                                 *opts.command])
        desc = commit_changes(store, image, changes, commit_ref, created_by,
                              opts.source_date_epoch, opts.compression)
    return RunResult(code, desc, str(commit_ref))


def port_mappings(opts: RunOptions) -> list[PortMapping]:
    """``opts.ports`` parsed; ``-p`` needs the private network (the default with it)."""
    ports = [parse_port(p) for p in opts.ports]
    if ports and opts.network != "private":
        raise InvalidInput(f"-p publishes ports of a private network, not of --network "
                           f"{opts.network}" + (" (the host's ports are the container's)"
                                               if opts.network == "host" else ""))
    return ports


@dataclass(frozen=True)
class ProcessSettings:
    """The image's config and ``lamina run``'s options, combined (module docstring)."""

    argv: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    mounts: tuple[tuple[Path, str, bool], ...]
    stop_signal: int


def process_settings(config: Mapping[str, Any], opts: RunOptions) -> ProcessSettings:
    argv = container_argv(config, opts.command, opts.entrypoint)
    env = container_env(config, opts.env, os.environ)
    workdir = opts.workdir if opts.workdir is not None else (config.get("WorkingDir") or "/")
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        if opts.workdir is not None:
            raise InvalidInput(f"the working directory {workdir!r} must be an absolute path")
        workdir = "/" + str(workdir)   # a relative WorkingDir in a config: from /
    user = opts.user if opts.user is not None else str(config.get("User") or "")
    mounts = tuple(parse_volume(v) for v in opts.volumes)
    stop = opts.stop_signal if opts.stop_signal is not None else config.get("StopSignal")
    if stop is not None and not isinstance(stop, str | int):
        raise InvalidInput("image config: StopSignal must be a string")
    return ProcessSettings(argv, env, workdir, user, mounts,
                           parse_signal(stop) if stop else signal.SIGTERM)


def _commit_reference(text: str) -> Reference:
    ref = Reference.parse(text)
    if ref.digest is not None:
        raise InvalidReference(f"cannot commit to a digest reference: {text}")
    return ref


def commit_changes(store: Store, image: ResolvedImage, changes: Changeset, ref: Reference,
                   created_by: str, source_date_epoch: int | None = None,
                   compression: Compression = "gzip") -> Descriptor:
    """Store ``changes`` as one layer on top of ``image`` and tag the new image ``ref``.

    The layer is written while it is hashed (one pass), named in a lease before it is
    visible; on any failure the blobs written are discarded again.
    """
    docker = image.manifest.is_docker
    if docker and compression in ("zstd", "zstd:chunked"):
        raise Unsupported("Docker manifests cannot hold zstd layers; use gzip")
    media_type = mt.layer_media_type(compression, docker=docker)
    when = source_date_epoch if source_date_epoch is not None else int(time.time())
    created = rfc3339(when)
    written: list[str] = []
    with store.lease() as lease:
        try:
            stored = commit_changeset(store, lease, changes, LayerOptions(
                compression=compression, source_date_epoch=source_date_epoch), media_type)
            written.append(str(stored.digest))
            layer = Descriptor(media_type, stored.digest, stored.size, stored.annotations)

            doc: dict[str, Any] = copy.deepcopy(image.config.doc)
            doc["created"] = created
            doc["rootfs"] = {"type": "layers",
                             "diff_ids": [*map(str, image.config.diff_ids),
                                          str(stored.diff_id)]}
            history = list(doc.get("history") or [])
            # Keep history aligned with the layers (one non-empty entry per layer):
            # an image that recorded less gets blank entries for its own layers.
            missing = len(image.config.diff_ids) - sum(
                1 for h in history if isinstance(h, dict) and not h.get("empty_layer"))
            history += [{} for _ in range(max(0, missing))]
            history.append({"created": created, "created_by": created_by,
                            "comment": "lamina run --commit"})
            doc["history"] = history
            raw = dumps(doc)
            parse_config(raw)  # what we wrote must read back as a valid config
            written.append(str(Digest.from_bytes(raw)))
            _config_desc, manifest = record_image(
                store, lease, raw, image.manifest.config.media_type,
                [*image.manifest.layers, layer], [str(ref)], image.manifest.media_type)
            written.append(str(manifest.digest))
        except BaseException:
            from lamina.store.gc import discard

            discard(store, written, lease.id)
            raise
    # The new image stands on the base's snapshots: let it keep them.
    Snapshotter(store).retain(str(manifest.digest), image.config.diff_ids)
    return manifest.descriptor()

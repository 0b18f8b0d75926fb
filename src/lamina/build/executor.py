"""``lamina build``: run a Containerfile's stages, one layer per RUN/COPY/ADD.

Each stage is a chain of states (build/cache.py).  A layer-making step looks its state
key up in the store's build cache and reuses the stored layer on a hit; otherwise it
opens a writable root filesystem over the current layers (run/rootfs.py: overlayfs over
shared snapshots, or a copy and a tree walk), does its work there — a process in the
sandbox for RUN, file copies for COPY/ADD — and stores what changed as the new layer.
Config-only instructions (ENV, CMD, ...) change the config and add a history entry with
``empty_layer: true``, as Docker does.

Expansion (Dockerfile reference, "Environment replacement"): ADD, COPY, ENV, EXPOSE,
FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR expand ``$VAR``; RUN, CMD and ENTRYPOINT
do not (their shell does).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lamina.build import cache as cachekeys
from lamina.build import stepmounts
from lamina.build.buildsecrets import SecretSource, SSHSource
from lamina.build.context import SourceTree
from lamina.build.copyplan import CopyRequest, plan_copy
from lamina.build.dockerfile import (
    Containerfile,
    Instruction,
    Stage,
    check_checksum,
    exec_or_shell,
    healthcheck,
    heredoc_word,
    parse,
    parse_args,
    parse_chmod,
    parse_key_values,
    split_words,
)
from lamina.build.expand import expand, expand_words
from lamina.build.fsops import container_path
from lamina.build.heredoc import PIPES, inline_sources, run_command
from lamina.build.runmounts import MountSpec, parse_mount, parse_network
from lamina.digest import Digest
from lamina.errors import (
    IntegrityError,
    InvalidInput,
    LaminaError,
    NotFound,
    TransportError,
    Unsupported,
)
from lamina.image import mediatypes as mt
from lamina.image.config import History, build_config, rfc3339
from lamina.image.manifest import (
    Descriptor,
    Manifest,
    Platform,
    build_manifest,
    current_platform,
    descriptor_of,
)
from lamina.image.reference import Reference
from lamina.layer import LayerOptions
from lamina.layer.commit import commit_changeset
from lamina.layer.options import Compression
from lamina.run.rootfs import Rootfs, open_rootfs
from lamina.run.sandbox import ProcessSpec, run_process
from lamina.run.snapshots import Snapshotter
from lamina.run.unpack import unpack_image
from lamina.store import scratch
from lamina.store.meta import CacheRecord
from lamina.store.store import Lease, Store
from lamina.transport.local import StoreTransport, record_image
from lamina.transport.resolve import ResolvedImage, resolve_image
from lamina.units import human_size

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
OUTPUT_TAIL = 20


class BuildError(InvalidInput):
    """A step failed: names the file, line and cause."""


@dataclass(frozen=True)
class BuildEvent:
    """What the CLI shows.  ``kind``: step (``Step 3/7 : COPY ...``), cache (``Using
    cache``), layer (a new layer: text is ``<short id> <size>``), config (a config-only
    step), output (a line a RUN printed), image (the final image), tag."""

    kind: str
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    context: Path
    containerfile: Path | None = None
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    compression: Compression = "gzip"
    source_date_epoch: int | None = None
    platform: Platform | None = None
    snapshotter: Literal["auto", "overlay", "walk"] = "auto"
    network: Literal["none", "host"] = "none"
    on_event: Callable[[BuildEvent], None] | None = None
    # RUN --mount=type=secret / type=ssh, by id (build/buildsecrets.py)
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    ssh: Mapping[str, SSHSource] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    manifest: Descriptor
    config: Descriptor
    tags: tuple[str, ...]
    layers: tuple[Descriptor, ...]
    new_layers: int
    cached_layers: int


@dataclass
class _State:
    """Where a stage stands after each step."""

    key: str
    layers: list[Descriptor]
    diff_ids: list[Digest]
    history: list[History]
    config: dict[str, Any]
    platform: Platform
    args: dict[str, str]           # ARGs declared in this stage, with their values
    pending_workdir: str | None = None

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def set_env(self, key: str, value: str) -> None:
        env = self.env
        env[key] = value
        self.config["Env"] = [f"{k}={v}" for k, v in env.items()]

    @property
    def expand_env(self) -> dict[str, str]:
        """What ``$VAR`` sees: build args, overridden by ENV (reference, "ARG")."""
        return {**self.args, **self.env}

    @property
    def shell(self) -> list[str]:
        sh = self.config.get("Shell")
        return list(sh) if sh else list(DEFAULT_SHELL)

    @property
    def workdir(self) -> str:
        return str(self.config.get("WorkingDir") or "/")


class _Builder:
    def __init__(self, store: Store, opts: BuildOptions, lease: Lease) -> None:
        self.store = store
        self.opts = opts
        self.lease = lease
        self.source = StoreTransport(store)
        self.platform = opts.platform or current_platform()
        self.epoch = opts.source_date_epoch
        # History times: SOURCE_DATE_EPOCH for everything when set; else a new layer is
        # dated now, a cached one by when it was first made, and config-only steps take
        # their neighbours' times (_date_history), so a fully cached rebuild gives the
        # same config, hence the same image ID, as BuildKit's does.
        self.now = int(time.time())
        self.created = rfc3339(self.epoch) if self.epoch is not None else None
        self.stage_states: dict[int, _State] = {}
        self.stage_roots: dict[int, Path] = {}
        self.new_layers = 0
        self.cached_layers = 0
        self.used_args: set[str] = set()
        self.step = 0
        self.total_steps = 0
        # Owned by this process (store/scratch.py): a killed build's is gc's to remove.
        self._scratch = scratch.make_dir(self._tmp_root(), "build-")
        self.tmp = self._scratch.path
        self.file: Containerfile | None = None
        self.context: SourceTree | None = None
        self.global_args: dict[str, str] = {}

    def _tmp_root(self) -> Path:
        root = self.store.root / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def close(self) -> None:
        self._scratch.remove()

    # -- events -------------------------------------------------------------------------
    def emit(self, kind: str, text: str, **data: Any) -> None:
        if self.opts.on_event is not None:
            self.opts.on_event(BuildEvent(kind, text, data))

    def fail(self, ins: Instruction, message: str) -> BuildError:
        if message.startswith(f"{ins.path}:"):
            return BuildError(message)  # already says where
        return BuildError(f"{ins.path}:{ins.line}: {ins.cmd}: {message}")

    # -- the whole build ----------------------------------------------------------------
    def run(self) -> BuildResult:
        opts = self.opts
        path = opts.containerfile or self._default_containerfile()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"no Containerfile at {path}") from None
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise InvalidInput(f"{path}: cannot read: {e}") from None
        self.file = parse(text, str(path.name))
        for note in self.file.notes:
            self.emit("note", note)
        for warning in self.file.warnings:
            self.emit("warning", f"[Warning] {warning}")
        self.context = SourceTree.for_context(opts.context, path)
        self._global_args()
        target = self._target_stage()
        needed = self._needed_stages(target)
        self.total_steps = sum(1 + len(self.file.stages[i].instructions) for i in needed)
        for index in needed:
            self.stage_states[index] = self._build_stage(self.file.stages[index])
        unknown = set(opts.build_args) - self.used_args - set(self.global_args)
        if unknown:
            self.emit("warning", "[Warning] One or more build-args "
                      f"{sorted(unknown)} were not consumed")
        return self._commit_image(self.stage_states[target.index])

    def _default_containerfile(self) -> Path:
        for name in ("Containerfile", "Dockerfile"):
            if (self.opts.context / name).is_file():
                return self.opts.context / name
        raise NotFound(f"no Containerfile or Dockerfile in {self.opts.context} (use -f)")

    def _global_args(self) -> None:
        assert self.file is not None
        p = self.platform
        # BuildKit's automatic platform ARGs, visible once declared (reference "ARG").
        predefined = {
            "TARGETPLATFORM": str(p), "TARGETOS": p.os, "TARGETARCH": p.architecture,
            "TARGETVARIANT": p.variant or "", "BUILDPLATFORM": str(current_platform()),
            "BUILDOS": current_platform().os, "BUILDARCH": current_platform().architecture,
        }
        self.predefined = predefined
        env: dict[str, str] = {}
        for ins in self.file.global_args:
            for name, default in parse_args(ins, env):
                value = self.opts.build_args.get(name, default)
                if value is None:
                    value = predefined.get(name, "")
                env[name] = value
        self.global_args = env

    def _target_stage(self) -> Stage:
        assert self.file is not None
        if self.opts.target is None:
            return self.file.stages[-1]
        return self.file.stage(self.opts.target)

    def _stage_ref(self, name: str) -> Stage | None:
        assert self.file is not None
        for st in self.file.stages:
            if st.name == name.lower() or (name.isdigit() and st.index == int(name)):
                return st
        return None

    def _needed_stages(self, target: Stage) -> list[int]:
        assert self.file is not None
        needed: set[int] = set()

        def visit(stage: Stage) -> None:
            if stage.index in needed:
                return
            needed.add(stage.index)
            base = expand(stage.base, self.global_args, self.file.escape)  # type: ignore[union-attr]
            dep = self._stage_ref(base)
            if dep is not None and dep.index < stage.index:
                visit(dep)
            for ins in stage.instructions:
                for src in self._from_flags(ins):
                    dep = self._stage_ref(src)
                    if dep is not None:
                        if dep.index >= stage.index:
                            raise self.fail(ins, f"stage {src!r} is not defined before it "
                                            "is used")
                        visit(dep)

        visit(target)
        return sorted(needed)

    def _from_flags(self, ins: Instruction) -> list[str]:
        """The stages or images an instruction reads: COPY/ADD --from, and the ``from``
        of RUN's mounts (expanded with the global ARGs; a bad mount fails later, at
        its step)."""
        if ins.cmd in ("COPY", "ADD") and "from" in ins.flags:
            return [ins.flags["from"]]
        if ins.cmd != "RUN":
            return []
        found = []
        for text in ins.flag_values("mount"):
            with contextlib.suppress(LaminaError):
                spec = parse_mount(text, lambda v: expand(v, self.global_args,
                                                          self.file.escape))  # type: ignore[union-attr]
                if spec.from_:
                    found.append(spec.from_)
        return found

    # -- one stage ----------------------------------------------------------------------
    def _next_step(self, ins: Instruction) -> None:
        self.step += 1
        self.emit("step", f"Step {self.step}/{self.total_steps} : {ins.original}",
                  line=ins.line)

    def _build_stage(self, stage: Stage) -> _State:
        assert self.file is not None
        ins = stage.from_instruction
        self._next_step(ins)
        state = self._from(stage)
        for ins in stage.instructions:
            self._next_step(ins)
            try:
                self._instruction(state, ins)
            except BuildError:
                raise
            except (TransportError, IntegrityError, Unsupported) as e:
                # Not the Containerfile's fault (a server, the bytes it sent, a missing
                # tool): the error keeps its kind, and says which step met it.
                if e.message.startswith(f"{ins.path}:"):
                    raise
                raise e.context(f"{ins.location}: {ins.cmd}") from None
            except LaminaError as e:
                raise self.fail(ins, e.message) from None
        return state

    def _from(self, stage: Stage) -> _State:
        ins = stage.from_instruction
        base = expand(stage.base, self.global_args, self.file.escape)  # type: ignore[union-attr]
        if not base:
            raise self.fail(ins, "base name is empty after expansion")
        ref_stage = self._stage_ref(base)
        if ref_stage is not None and ref_stage.index < stage.index:
            prev = self.stage_states[ref_stage.index]
            state = _State(cachekeys.step_key(prev.key, {"from-stage": True}),
                           list(prev.layers), list(prev.diff_ids), list(prev.history),
                           _copy_config(prev.config), prev.platform, {})
            self.emit("config", f"---> stage {base}")
            return state
        if base == "scratch":
            state = _State(cachekeys.base_key("scratch"), [], [], [], {}, self.platform, {})
            self.emit("config", "---> scratch")
        else:
            image = self._base_image(ins, base, stage.platform)
            state = _State(cachekeys.base_key(str(image.descriptor.digest)),
                           list(image.manifest.layers), list(image.config.diff_ids),
                           list(image.config.history), image.config.container_config,
                           image.config.platform, {})
            self.emit("config", f"---> {image.image_id.split(':')[1][:12]}")
        if "PATH" not in state.env:
            state.set_env("PATH", DEFAULT_PATH)
        return state

    def _pull(self, ins: Instruction, name: str) -> Descriptor:
        """A base the store lacks is pulled, as ``docker build`` does."""
        from lamina.transport.transfer import TransferOptions, pull_place, transfer

        try:
            src, dst = pull_place(name)
        except LaminaError:
            raise self.fail(ins, f"image {name} is not in the local store") from None
        self.emit("config", f"---> pulling {src.text}")
        try:
            result = transfer(self.store, src, dst, TransferOptions(platform=self.opts.platform))
        except LaminaError as e:
            # The pull's own kind (a registry that cannot be reached exits 6, one that
            # has no such image 2), with the step as context: the Containerfile is not
            # at fault, so this is no BuildError (InvalidInput, 3).
            raise e.context(f"{ins.path}:{ins.line}: {ins.cmd}: image {name} is not in the "
                            "local store and pulling it failed") from None
        return result.descriptor

    def _base_image(self, ins: Instruction, name: str, platform: str | None) -> ResolvedImage:
        try:
            desc = self.source.resolve(name)
        except NotFound:
            desc = self._pull(ins, name)
        want = Platform.parse(expand(platform, self.global_args)) if platform else None
        return resolve_image(self.source, desc, want or self.opts.platform)

    # -- instructions ----------------------------------------------------------------------
    def _instruction(self, state: _State, ins: Instruction) -> None:
        handler = getattr(self, f"_do_{ins.cmd.lower()}", None)
        if handler is None:
            raise self.fail(ins, "not supported")
        handler(state, ins)

    def _x(self, state: _State, text: str) -> str:
        return expand(text, state.expand_env, self.file.escape)  # type: ignore[union-attr]


    def _xw(self, state: _State, text: str) -> list[str]:
        return expand_words(text, state.expand_env, self.file.escape)  # type: ignore[union-attr]

    def _config_step(self, state: _State, ins: Instruction, created_by: str,
                     material: Mapping[str, Any]) -> None:
        state.key = cachekeys.step_key(state.key, {"ins": ins.cmd, **material})
        state.history.append(History(created=self.created, created_by=created_by,
                                     comment="buildkit.dockerfile.v0", empty_layer=True))
        self.emit("config", "---> (config only)")

    def _do_arg(self, state: _State, ins: Instruction) -> None:
        for name, default in parse_args(ins, state.expand_env):
            if name in self.opts.build_args:
                value: str = self.opts.build_args[name]
                self.used_args.add(name)
            elif default is not None:
                value = default
            elif name in self.global_args:
                value = self.global_args[name]
            else:
                value = self.predefined.get(name, "")
            # Reference "Impact on build caching": a changed ARG misses at its first
            # use (RUN sees all ARGs in its environment; others through expansion), not
            # at its definition — so the value joins the keys there, not here.
            state.args[name] = value
        self.emit("config", "---> (build arg)")

    def _do_env(self, state: _State, ins: Instruction) -> None:
        pairs = parse_key_values(ins, state.expand_env)
        for k, v in pairs:
            state.set_env(k, v)
        text = " ".join(f"{k}={v}" for k, v in pairs)
        self._config_step(state, ins, f"ENV {text}", {"env": pairs})

    def _do_label(self, state: _State, ins: Instruction) -> None:
        pairs = parse_key_values(ins, state.expand_env)
        labels = dict(state.config.get("Labels") or {})
        labels.update(pairs)
        state.config["Labels"] = labels
        self._config_step(state, ins, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs),
                          {"labels": pairs})

    def _do_maintainer(self, state: _State, ins: Instruction) -> None:
        author = " ".join(ins.args)
        state.config.setdefault("Labels", {})
        self._config_step(state, ins, f"MAINTAINER {author}", {"author": author})

    def _do_workdir(self, state: _State, ins: Instruction) -> None:
        path = container_path(state.workdir, self._x(state, " ".join(ins.args)))
        state.config["WorkingDir"] = path
        # Created (if missing) in the next layer-making step, as BuildKit does.
        state.pending_workdir = path
        self._config_step(state, ins, f"WORKDIR {path}", {"workdir": path})

    def _do_user(self, state: _State, ins: Instruction) -> None:
        user = self._x(state, " ".join(ins.args)).strip()
        if not user:
            raise self.fail(ins, "requires a user name or id")
        state.config["User"] = user
        self._config_step(state, ins, f"USER {user}", {"user": user})

    def _exec_form(self, state: _State, ins: Instruction) -> list[str]:
        return exec_or_shell(ins, state.shell)

    def _do_cmd(self, state: _State, ins: Instruction) -> None:
        argv = self._exec_form(state, ins)
        state.config["Cmd"] = argv
        state.config.pop("_inherited_cmd", None)
        self._config_step(state, ins, f"CMD {_json(argv)}", {"cmd": argv})

    def _do_entrypoint(self, state: _State, ins: Instruction) -> None:
        argv = self._exec_form(state, ins)
        state.config["Entrypoint"] = argv
        # Reference "ENTRYPOINT": a CMD inherited from the base image is reset.
        if state.config.get("_cmd_from_base"):
            state.config.pop("Cmd", None)
        self._config_step(state, ins, f"ENTRYPOINT {_json(argv)}", {"entrypoint": argv})

    def _do_shell(self, state: _State, ins: Instruction) -> None:
        if not ins.json_form:
            raise self.fail(ins, "SHELL requires the arguments to be in JSON form")
        state.config["Shell"] = list(ins.args)
        self._config_step(state, ins, f"SHELL {_json(list(ins.args))}", {"shell": ins.args})

    def _do_expose(self, state: _State, ins: Instruction) -> None:
        ports = dict(state.config.get("ExposedPorts") or {})
        words = []
        for word in self._xw(state, " ".join(ins.args)):
            port = word if "/" in word else f"{word}/tcp"
            num, _, proto = port.partition("/")
            if not num.replace("-", "").isdigit() or proto not in ("tcp", "udp", "sctp"):
                raise self.fail(ins, f"invalid port {word!r}")
            ports[port] = {}
            words.append(port)
        state.config["ExposedPorts"] = ports
        self._config_step(state, ins, "EXPOSE " + " ".join(words), {"ports": words})

    def _do_volume(self, state: _State, ins: Instruction) -> None:
        paths = [self._x(state, w) for w in split_words(ins)]
        vols = dict(state.config.get("Volumes") or {})
        for p in paths:
            vols[p] = {}
        state.config["Volumes"] = vols
        self._config_step(state, ins, f"VOLUME {_json(paths)}", {"volumes": paths})

    def _do_stopsignal(self, state: _State, ins: Instruction) -> None:
        sig = self._x(state, " ".join(ins.args)).strip()
        state.config["StopSignal"] = sig
        self._config_step(state, ins, f"STOPSIGNAL {sig}", {"signal": sig})

    def _do_healthcheck(self, state: _State, ins: Instruction) -> None:
        state.config["Healthcheck"] = healthcheck(ins).to_json()
        self._config_step(state, ins, f"HEALTHCHECK {ins.original.split(None, 1)[-1]}",
                          {"healthcheck": state.config["Healthcheck"]})

    def _do_onbuild(self, state: _State, ins: Instruction) -> None:
        triggers = list(state.config.get("OnBuild") or [])
        triggers.append(" ".join(ins.args))
        state.config["OnBuild"] = triggers
        self._config_step(state, ins, f"ONBUILD {' '.join(ins.args)}", {"onbuild": triggers})

    # -- layer-making instructions ----------------------------------------------------------
    def _image_now(self, state: _State) -> ResolvedImage | None:
        """The current state as an image value (not stored) for open_rootfs."""
        if not state.layers:
            return None
        config = build_config(state.diff_ids, state.history, state.platform,
                              container_config=_public_config(state.config))
        manifest: Manifest = build_manifest(descriptor_of(config.raw, mt.OCI_CONFIG),
                                            state.layers)
        return ResolvedImage(manifest.descriptor(), manifest, config)

    @contextlib.contextmanager
    def _rootfs(self, state: _State, empty: bool = False) -> Iterator[Rootfs]:
        rootfs = open_rootfs(self.store, self.source, None if empty else self._image_now(state),
                             self.opts.snapshotter)
        try:
            if state.pending_workdir:
                from lamina.build.fsops import resolve_in_root

                resolve_in_root(rootfs.path, state.pending_workdir + "/x", create_dirs=True)
                target = resolve_in_root(rootfs.path, state.pending_workdir)
                target.mkdir(mode=0o755, exist_ok=True)
            yield rootfs
        finally:
            rootfs.close()

    def _layer_annotations(self, digest: Digest, size: int) -> dict[str, str]:
        """A cached zstd:chunked layer's descriptor annotations, read back from the blob
        (the cache keeps digest, size and media type only)."""
        if self.opts.compression != "zstd:chunked":
            return {}
        from lamina.layer.zstdchunked import annotations_from_blob

        # open_file: the layer may be kept whole or as chunks (a chunked layer is).
        with self.store.blobs.open_file(digest) as f:
            return annotations_from_blob(lambda off, n: (f.seek(off), f.read(n))[1], size)

    def _cached(self, key: str) -> CacheRecord | None:
        if self.opts.no_cache:
            return None
        rec = self.store.meta.cache_get(key)
        if rec is None:
            return None
        self.lease.add(rec.layer)  # before looking: a concurrent gc can't take it now
        if not self.store.blobs.has(Digest.parse(rec.layer)):
            return None
        return rec

    def _layer_step(self, state: _State, ins: Instruction, created_by: str,
                    material: Mapping[str, Any],
                    work: Callable[[Rootfs], None], link: bool = False) -> None:
        """One layer-making step.  ``link`` (``COPY --link``): the work is done in an
        empty root filesystem, not over the layers below, and the cache key leaves the
        state below out, so a changed base keeps this layer and its cache entry
        (BuildKit: a copy onto scratch, merged with MergeOp)."""
        key = cachekeys.step_key(cachekeys.LINK if link else state.key,
                                 {"ins": ins.cmd, **material,
                                  "workdir_pending": state.pending_workdir,
                                  "compression": self.opts.compression})
        rec = self._cached(key)
        if rec is not None:
            desc = Descriptor(rec.media_type, Digest.parse(rec.layer), rec.size,
                              self._layer_annotations(Digest.parse(rec.layer), rec.size))
            diff_id = Digest.parse(rec.diff_id)
            made = int(rec.created) if rec.created is not None else self.now
            self.cached_layers += 1
            self.emit("cache", "---> Using cache")
        else:
            media_type = mt.layer_media_type(self.opts.compression)
            with self._rootfs(state, empty=link) as rootfs:
                work(rootfs)
                # The changeset reads file contents from the rootfs: write the layer
                # before it is unmounted.
                stored = commit_changeset(self.store, self.lease,
                                          rootfs.changes(self.epoch),
                                          LayerOptions(compression=self.opts.compression,
                                                       source_date_epoch=self.epoch),
                                          media_type)
            desc = Descriptor(media_type, stored.digest, stored.size, stored.annotations)
            diff_id = stored.diff_id
            self.store.meta.cache_put(CacheRecord(key, str(desc.digest), str(diff_id),
                                                  media_type, desc.size, created_by,
                                                  self.now))
            made = self.now
            self.new_layers += 1
        # After a linked layer the state still depends on everything below it.
        state.key = cachekeys.step_key(state.key, {"link": key}) if link else key
        state.pending_workdir = None
        state.layers.append(desc)
        state.diff_ids.append(diff_id)
        state.history.append(History(created=self.created or rfc3339(made),
                                     created_by=created_by, comment="buildkit.dockerfile.v0"))
        self.emit("layer", f"---> {desc.digest.short} ({human_size(desc.size)})",
                  digest=str(desc.digest), size=desc.size)

    def _do_run(self, state: _State, ins: Instruction) -> None:
        unsupported = set(ins.flags) - {"network", "mount"}
        if unsupported:
            raise Unsupported(f"RUN --{sorted(unsupported)[0]} is not supported yet")
        # "RUN --network": default is the build's own (--network of lamina build).
        network = parse_network(self._x(state, ins.flags.get("network", "default")))
        if network == "default":
            network = self.opts.network
        argv = exec_or_shell(ins, state.shell)
        mounts: tuple[tuple[Path, str, bool], ...] = ()
        script = None
        if ins.heredocs:
            command = run_command(ins, state.shell)
            argv, script = command.argv, command.script
        # Build args are in RUN's environment (not the image's): reference "ARG".
        env = {**state.args, **state.env}
        user = str(state.config.get("User") or "0:0")
        workdir = state.workdir
        specs = self._mounts(state, ins, workdir)
        sources = self._mount_sources(state, ins)
        created_by = "RUN " + (_json(argv) if ins.json_form else " ".join(argv))
        material = {"argv": argv, "env": sorted(env.items()), "user": user,
                    "workdir": workdir, "network": network}
        if specs:
            # The mounts' specifications and bound content; never a secret's bytes nor
            # a cache mount's files (build/stepmounts.py).
            material["mounts"] = stepmounts.key_material(specs, sources)
        if script is not None:
            # A heredoc script is not in argv: its bytes are (reference: the heredoc's
            # content is part of the instruction).
            material["script"] = [script.name, script.digest]
            host = script.write(self.tmp / f"heredoc-{self.step}", self.epoch or self.now)
            mounts = ((host, f"{PIPES}/{script.name}", True),)

        def work(rootfs: Rootfs) -> None:
            with stepmounts.prepare(specs, sources) as prepared:
                self._run_process(ins, rootfs, argv, {**env, **prepared.env}, user, workdir,
                                  network, (*mounts, *prepared.binds), tuple(prepared.tmpfs))

        self._layer_step(state, ins, created_by, material, work)

    def _mounts(self, state: _State, ins: Instruction, workdir: str) -> list[MountSpec]:
        specs: list[MountSpec] = []
        ssh = 0
        for text in ins.flag_values("mount"):
            spec = parse_mount(text, lambda v: self._x(state, v), ssh)
            ssh += spec.type == "ssh"
            specs.append(spec)
        return stepmounts.absolute(specs, workdir)

    def _mount_sources(self, state: _State, ins: Instruction) -> stepmounts.MountSources:
        trees: dict[str, SourceTree] = {}

        def tree(name: str) -> SourceTree:
            # Once per step: an image's root is unpacked anew by each _tree_from.
            if name not in trees:
                trees[name] = self._tree_from(state, ins, name)
            return trees[name]

        return stepmounts.MountSources(
            store_root=self.store.root, scratch=self.tmp, tree=tree,
            secrets=self.opts.secrets, ssh=self.opts.ssh,
            on_wait=lambda message: self.emit("warning", message))

    def _run_process(self, ins: Instruction, rootfs: Rootfs, argv: list[str],
                     env: dict[str, str], user: str, workdir: str, network: str,
                     mounts: tuple[tuple[Path, str, bool], ...] = (),
                     tmpfs: tuple[tuple[str, int | None, int], ...] = ()) -> None:
        tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        read_fd, write_fd = os.pipe()

        def pump() -> None:
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as r:
                for line in r:
                    line = line.rstrip("\n")
                    tail.append(line)
                    self.emit("output", line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            spec = ProcessSpec(rootfs=rootfs.path, argv=argv, env=env, cwd=workdir, user=user,
                               mounts=mounts, tmpfs=tmpfs,
                               network=network)  # type: ignore[arg-type]
            devnull = os.open(os.devnull, os.O_RDONLY)
            try:
                status = run_process(spec, stdin=devnull, stdout=write_fd, stderr=write_fd)
            finally:
                os.close(devnull)
        finally:
            os.close(write_fd)
            reader.join()
        if status != 0:
            last = "\n".join(tail)
            raise self.fail(ins, f"{_json(argv)} returned a non-zero code: {status}"
                            + (f"; last output:\n{last}" if last else ""))

    def _source_tree(self, state: _State, ins: Instruction) -> SourceTree:
        return self._tree_from(state, ins, ins.flags.get("from", ""))

    def _tree_from(self, state: _State, ins: Instruction, src: str) -> SourceTree:
        """The context (``src`` empty), or the root of a stage or image."""
        if not src:
            assert self.context is not None
            return self.context
        src = self._x(state, src)
        stage = self._stage_ref(src)
        if stage is not None:
            return SourceTree(self._stage_root(stage.index), None, f"stage {src}")
        return SourceTree(self._image_root(ins, src), None, f"image {src}")

    def _stage_root(self, index: int) -> Path:
        if index not in self.stage_roots:
            st = self.stage_states[index]
            root = self.tmp / f"stage-{index}"
            image = self._image_now(st)
            if image is None:
                root.mkdir()
            else:
                unpack_image(_Overlay(self.source, image), image.descriptor, root)
            self.stage_roots[index] = root
        return self.stage_roots[index]

    def _image_root(self, ins: Instruction, name: str) -> Path:
        key = -1 - len(self.stage_roots)
        image = self._base_image(ins, name, None)
        root = self.tmp / f"image-{abs(key)}"
        unpack_image(self.source, image.descriptor, root)
        self.stage_roots[key] = root
        return root

    def _copy_like(self, state: _State, ins: Instruction, add: bool) -> None:
        allowed = ({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"} if add
                   else {"from", "chown", "chmod", "link", "parents", "exclude"})
        unsupported = set(ins.flags) - allowed
        if unsupported:
            raise Unsupported(f"{ins.cmd} --{sorted(unsupported)[0]} is not supported yet")
        req = self._copy_request(state, ins)
        plan = plan_copy(req, lambda: self._source_tree(state, ins),
                         self.tmp / f"copy-{self.step}", self.epoch or self.now)
        dest = container_path(state.workdir, req.dest_word)
        material = {"dest": dest, **plan.material}
        link = ins.flags.get("link") == "true"
        if link and req.chmod is not None:
            # BuildKit links a COPY only without --chmod (convert_copy.go: `cfg.link &&
            # cfg.chmod == ""`); with it the copy is made over the layers below.
            link = False
        created_by = f"{ins.cmd} " + " ".join(
            [f"--{k}" if k in ("link", "parents") and v == "true" else f"--{k}={v}"
             for k, v in ins.all_flags]
            + plan.shown + [req.dest_word])

        def work(rootfs: Rootfs) -> None:
            plan.copy(rootfs.path, dest)

        self._layer_step(state, ins, created_by, material, work, link=link)

    def _copy_request(self, state: _State, ins: Instruction) -> CopyRequest:
        """COPY/ADD's words and flags, expanded (BuildKit expands each word on its own: a
        value with spaces stays one path); heredoc words become inline files."""
        words = split_words(ins)
        if len(words) < 2:
            raise self.fail(ins, "requires at least two arguments: source(s) and destination")
        *srcs, dest = words
        inline = inline_sources(ins, srcs, state.expand_env) if ins.heredocs else []
        paths = [self._x(state, w) for w in srcs
                 if ins.json_form or not ins.heredocs or heredoc_word(w) is None]
        flags = {k: self._x(state, v) for k, v in ins.flags.items()}
        chmod = None
        if "chmod" in flags:
            chmod = parse_chmod(flags["chmod"])
            if chmod is None:
                raise self.fail(ins, f"invalid --chmod={flags['chmod']}: an octal mode from "
                                "0 to 7777 expected")
        if "checksum" in flags:
            check_checksum(flags["checksum"], lambda why: self.fail(ins, why))
        keep = flags.get("keep-git-dir")
        return CopyRequest(
            cmd=ins.cmd, sources=paths, inline=inline, dest_word=self._x(state, dest),
            chown=flags.get("chown"), chmod=chmod,
            excludes=[self._x(state, v) for v in ins.flag_values("exclude")],
            parents=flags.get("parents") == "true", checksum=flags.get("checksum"),
            keep_git_dir=None if keep is None else keep == "true",
            source_id=flags.get("from", "context"))

    def _do_copy(self, state: _State, ins: Instruction) -> None:
        self._copy_like(state, ins, add=False)

    def _do_add(self, state: _State, ins: Instruction) -> None:
        self._copy_like(state, ins, add=True)

    # -- the image ------------------------------------------------------------------------
    def _commit_image(self, state: _State) -> BuildResult:
        history = _date_history(state.history)
        created = self.created or next((h.created for h in reversed(history) if h.created),
                                       None)
        config = build_config(state.diff_ids, history, state.platform, created=created,
                              container_config=_public_config(state.config))
        tags = tuple(str(Reference.parse(t)) for t in self.opts.tags)
        config_desc, manifest = record_image(self.store, self.lease, config.raw, mt.OCI_CONFIG,
                                             state.layers, tags)
        # The snapshots this build ran on stay while the image lives (else the next gc
        # removes them and the next build or run extracts them again).
        Snapshotter(self.store).retain(str(manifest.digest), state.diff_ids)
        self.emit("image", f"Successfully built {config.digest.short}",
                  digest=str(manifest.digest), id=str(config.digest))
        for t in tags:
            self.emit("tag", f"Successfully tagged {Reference.parse(t).familiar}")
        return BuildResult(manifest.descriptor(), config_desc, tags, tuple(state.layers),
                           self.new_layers, self.cached_layers)


class _Overlay:
    """A source that serves one synthetic (unstored) manifest and config on top of the
    store, so a stage's state can be unpacked like any image."""

    def __init__(self, base: StoreTransport, image: ResolvedImage) -> None:
        self._base = base
        self._raw = {str(image.descriptor.digest): image.manifest.raw,
                     str(image.manifest.config.digest): image.config.raw}

    def open_blob(self, desc: Descriptor) -> Any:
        raw = self._raw.get(str(desc.digest))
        if raw is not None:
            import io

            from lamina.digest import VerifyingReader

            return VerifyingReader(io.BytesIO(raw), desc.digest, desc.size)
        return self._base.open_blob(desc)

    def images(self) -> list[Any]:
        return []

    def resolve(self, name: str | None) -> Descriptor:
        raise NotFound("synthetic source")

    def close(self) -> None:
        pass


def _date_history(history: Sequence[History]) -> list[History]:
    """Undated entries (config-only steps) dated as BuildKit's exporter dates them
    (exporter/containerimage/writer.go, normalizeLayersAndHistory): by the first dated
    entry after the first undated one (the first new layer: not a base image's time),
    else the last dated one; after that each dated entry dates the undated ones that
    follow it.  All of these times come from the cache on a rebuild."""
    created: str | None = None
    gap = False
    for h in history:
        if h.created:
            created = h.created
            if gap:
                break
        else:
            gap = True
    out: list[History] = []
    gap = False
    for h in history:
        if h.created:
            if gap:
                created = h.created
        else:
            gap = True
            h = replace(h, created=created)
        out.append(h)
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _copy_config(config: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(config))


def _public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as written: Docker's key order, private markers dropped."""
    order = ("Hostname", "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes",
             "WorkingDir", "Labels", "OnBuild", "StopSignal", "Healthcheck", "Shell")
    out = {k: config[k] for k in order if config.get(k) not in (None, "", [], {})}
    for k, v in config.items():
        if k not in out and not k.startswith("_") and v not in (None, "", [], {}):
            out[k] = v
    return out


def build(store: Store, opts: BuildOptions) -> BuildResult:
    """Build the Containerfile in ``opts.context``; tag the result; return it.  A failed
    step leaves nothing tagged and nothing of that step in the cache."""
    with store.lease() as lease:
        builder = _Builder(store, opts, lease)
        try:
            return builder.run()
        finally:
            builder.close()


__all__ = ["BuildError", "BuildEvent", "BuildOptions", "BuildResult", "build", "replace",
           "Sequence"]

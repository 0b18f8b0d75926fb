"""The mounts of one RUN step: what each ``--mount`` puts where, and what the cache key
takes from it.

What the step sees, per type (Dockerfile reference, "RUN --mount"):

``bind``    a path of the context (less what .dockerignore excludes), of a stage or of
            an image, read-only unless ``rw``; with ``rw`` the step writes to a copy
            that is thrown away afterwards.
``cache``   a directory of the store's cache mounts (store/cachemounts.py), shared by
            id between steps and builds, seeded from ``from``/``source`` when new.
``tmpfs``   an empty tmpfs (``size`` bytes at most).
``secret``  the secret's bytes in a file (mode 0400 unless ``mode``), and/or in the
            variable ``env``; a missing secret is an error only when ``required``.
``ssh``     a socket of the step's own (owner ``uid``:``gid``, mode 0600 unless
            ``mode``), each connection passed on to the agent given to ``--ssh ID``,
            as BuildKit's session forwards it; ``SSH_AUTH_SOCK`` points at the first.

Every mount lands on a path the sandbox makes if missing and removes afterwards
(run/sandbox.py), and writes through a mount never reach the rootfs: nothing of a mount
is in the step's layer, and the directory it covered is left as the image had it.

The cache key (``key_material``), as BuildKit's exec op computes it
(``solver/llbsolver/ops/exec.go`` CacheMap): every mount's specification; for a bind
mount, the content of what it shows (BuildKit hashes the selected path of a read-only
mount's input), so a bind from another stage makes the key depend on that stage's
result; for a cache mount seeded ``from`` somewhere, the seed's content.  Never what a
cache mount holds, never a secret's bytes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lamina.build.buildsecrets import SecretSource, SSHSource
from lamina.build.context import SourceTree
from lamina.build.fsops import container_path, resolve_in_root
from lamina.build.runmounts import MountSpec
from lamina.errors import InvalidInput, LaminaError, NotFound
from lamina.store.cachemounts import CacheMounts, NewDir

__all__ = ["MountSources", "Prepared", "absolute", "key_material", "prepare"]


@dataclass(frozen=True)
class MountSources:
    """Where mounts come from: the store, a scratch directory of the build (secret
    files, copies for ``rw`` binds), source trees by ``from`` ("" is the context),
    the build's secrets and ssh agents, and who to tell about a wait."""

    store_root: Path
    scratch: Path
    tree: Callable[[str], SourceTree]
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    ssh: Mapping[str, SSHSource] = field(default_factory=dict)
    on_wait: Callable[[str], None] = lambda message: None


@dataclass
class Prepared:
    """What the sandbox is given: bind mounts, tmpfs mounts, extra environment."""

    binds: list[tuple[Path, str, bool]] = field(default_factory=list)
    tmpfs: list[tuple[str, int | None, int]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def absolute(specs: Sequence[MountSpec], workdir: str) -> list[MountSpec]:
    """Targets made absolute against the working directory, as BuildKit does; two mounts
    on one target are an error."""
    out: list[MountSpec] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.target:
            spec = replace(spec, target=container_path(workdir, spec.target))
            if spec.target in seen:
                raise InvalidInput(f"--mount: two mounts on {spec.target}")
            seen.add(spec.target)
        out.append(spec)
    return out


def _source(tree: SourceTree, source: str) -> tuple[str, Path]:
    """(path relative to the tree, host path) of a mount's ``source``."""
    rel = posixpath.normpath("/" + source).lstrip("/")
    rel = "" if rel == "." else rel
    host = resolve_in_root(tree.root, "/" + rel) if rel else tree.root
    if not os.path.lexists(host) or tree.excluded(rel):
        raise NotFound(f"--mount: {source or '/'} not found in {tree.what}")
    return rel, host


def key_material(specs: Sequence[MountSpec], sources: MountSources) -> list[dict[str, Any]]:
    """The cache key's part for these mounts (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for spec in specs:
        entry = spec.key()
        if spec.type == "bind" or (spec.type == "cache" and spec.from_):
            tree = sources.tree(spec.from_)
            rel, _ = _source(tree, spec.source)
            entry["content"] = tree.digest([rel])
        out.append(entry)
    return out


def _copy(src: Path, dst: Path) -> None:
    """``cp -a``: owners, modes, links and times kept; ``dst`` is made or filled."""
    proc = subprocess.run(["cp", "-a", "-T", "--", os.fspath(src), os.fspath(dst)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise LaminaError(f"--mount: cannot copy {src}: {last}")


class _Preparer:
    def __init__(self, sources: MountSources, stack: contextlib.ExitStack) -> None:
        self.sources = sources
        self.stack = stack
        self.out = Prepared()
        self.count = 0

    def _scratch(self, name: str) -> Path:
        self.count += 1
        return self.sources.scratch / f"mount-{self.count}-{name}"

    def bind(self, spec: MountSpec) -> None:
        tree = self.sources.tree(spec.from_)
        rel, host = _source(tree, spec.source)
        filtered = host.is_dir() and _hides_something(tree, rel)
        if filtered or not spec.readonly:
            # A copy: what .dockerignore hides stays hidden, and rw writes go nowhere.
            copy = self._scratch("bind")
            if filtered:
                copy.mkdir()
                for child in tree.walk(rel):
                    src = tree.host_path(child)
                    dst = copy / os.path.relpath(src, host)
                    if src.is_dir() and not src.is_symlink():
                        dst.mkdir()
                        _copy_attrs(src, dst)
                    else:
                        _copy(src, dst)
                _copy_attrs(host, copy)
            else:
                _copy(host, copy)
            self.stack.callback(_remove, copy)
            host = copy
        self.out.binds.append((host, spec.target, spec.readonly))

    def cache(self, spec: MountSpec) -> None:
        key = spec.id
        seed: Callable[[Path], None] | None = None
        if spec.from_:
            tree = self.sources.tree(spec.from_)
            rel, host = _source(tree, spec.source)
            # BuildKit keys a seeded cache by id and the seed (getRefCacheDir: id:ref).
            key = f"{spec.id}\0{spec.from_}\0{tree.digest([rel])}"

            def seed(data: Path, host: Path = host) -> None:
                if host.is_dir():
                    _copy(host, data)

        new = NewDir(0o755 if spec.mode is None else spec.mode, spec.uid or 0, spec.gid or 0)
        data = self.stack.enter_context(CacheMounts(self.sources.store_root).acquire(
            key, spec.id, spec.sharing, new, seed,
            lambda: self.sources.on_wait(f"waiting for the cache mount {spec.id} "
                                         "(sharing=locked) held by another build")))
        self.out.binds.append((data, spec.target, spec.readonly))

    def secret(self, spec: MountSpec) -> None:
        source = self.sources.secrets.get(spec.id)
        if source is None:
            if spec.required:
                raise NotFound(f"secret {spec.id} is required but was not given: "
                               f"lamina build --secret id={spec.id},src=FILE")
            return   # optional: the step runs without it, as BuildKit's
        value = source.read()
        if spec.env:
            self.out.env[spec.env] = os.fsdecode(value)
        if not spec.target:
            return
        path = self._scratch("secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.stack.callback(_remove, path)
        try:
            os.write(fd, value)
            with contextlib.suppress(PermissionError):   # rootless: only our own ids
                os.fchown(fd, spec.uid or 0, spec.gid or 0)
            os.fchmod(fd, 0o400 if spec.mode is None else spec.mode)
        finally:
            os.close(fd)
        self.out.binds.append((path, spec.target, True))

    def ssh(self, spec: MountSpec) -> None:
        source = self.sources.ssh.get(spec.id)
        if source is None:
            if spec.required:
                raise NotFound(f"ssh agent {spec.id} is required but was not given: "
                               f"lamina build --ssh {spec.id}[=SOCKET]")
            return
        proxy = _AgentProxy(source.socket, spec.uid or 0, spec.gid or 0,
                            0o600 if spec.mode is None else spec.mode)
        self.stack.callback(proxy.close)
        self.out.binds.append((proxy.path, spec.target, False))
        self.out.env.setdefault("SSH_AUTH_SOCK", spec.target)

    def tmpfs(self, spec: MountSpec) -> None:
        # Mode 1777: BuildKit passes none, so the kernel's tmpfs default.
        self.out.tmpfs.append((spec.target, spec.size, 0o1777))


class _AgentProxy:
    """A unix socket for one step, owned and moded as the ssh mount asks, passing each
    connection on to the agent's socket (BuildKit forwards the agent through its
    session the same way, so the step never sees the host's socket or its owner)."""

    def __init__(self, upstream: Path, uid: int, gid: int, mode: int) -> None:
        self.upstream = upstream
        # A short directory of its own: a unix socket's path holds at most 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="lamina-ssh-"))
        self.path = self.dir / "agent.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.server.bind(os.fspath(self.path))
            with contextlib.suppress(PermissionError):   # rootless: only our own ids
                os.chown(self.path, uid, gid)
            os.chmod(self.path, mode)
            self.server.listen(16)
            self.server.settimeout(0.2)   # so that close() is seen between accepts
        except BaseException:
            self.server.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name="lamina-ssh-agent")
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pass_on, args=(conn,), daemon=True).start()

    def _pass_on(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.connect(os.fspath(self.upstream))
        except OSError:
            conn.close()
            up.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(up, conn), daemon=True)
        back.start()
        pump(conn, up)
        back.join()
        conn.close()
        up.close()

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _hides_something(tree: SourceTree, rel: str) -> bool:
    """Whether the ignore rules exclude anything under ``rel`` (stops at the first)."""
    if tree.ignore is None or not tree.ignore.patterns:
        return False
    stack = [rel]
    while stack:
        top = stack.pop()
        with os.scandir(tree.host_path(top)) as entries:
            for e in entries:
                child = f"{top}/{e.name}" if top else e.name
                if tree.excluded(child):
                    return True
                if e.is_dir(follow_symlinks=False):
                    stack.append(child)
    return False


def _copy_attrs(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    with contextlib.suppress(PermissionError):
        os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, st.st_mode & 0o7777)


def _remove(path: Path) -> None:
    from lamina.store.rmtree import remove_tree

    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def prepare(specs: Sequence[MountSpec], sources: MountSources) -> Iterator[Prepared]:
    """The step's mounts, ready while the block runs; afterwards copies and secret
    files are gone and cache mounts let go of."""
    with contextlib.ExitStack() as stack:
        prep = _Preparer(sources, stack)
        for spec in specs:
            getattr(prep, spec.type)(spec)
        yield prep.out

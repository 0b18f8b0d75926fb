"""RUN --mount and RUN --network end to end: real builds, real layers, real processes.

Each Containerfile writes what its step saw into the image, and the test reads it back;
what a mount held is looked for in every layer's tar listing (and, for secrets, in the
bytes of every file of the store).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.store.cachemounts import CacheMounts
from lamina_testing import LAMINA, Lamina


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "busybox", seed / "os")
    return lamina


def _ctx(tmp_path: Path, containerfile: str, files: dict[str, str] | None = None,
         name: str = "ctx") -> Path:
    ctx = tmp_path / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    for rel, text in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


def _build(lam: Lamina, *args: str | Path) -> dict:
    return lam.run("build", "--json", *args).json()


def _file(lam: Lamina, tmp_path: Path, ref: str, path: str) -> str:
    out = tmp_path / f"unpacked-{uuid.uuid4().hex[:8]}"
    lam.run("unpack", ref, out)
    return (out / path.lstrip("/")).read_text()


def _layers(lam: Lamina, ref: str) -> list[list[str]]:
    """The member names of every layer of ``ref``, from the stored blobs."""
    manifest = lam.run("inspect", ref).json()[0]["Manifest"]
    out = []
    for layer in manifest["layers"]:
        blob = lam.root / "blobs" / "sha256" / layer["digest"].split(":")[1]
        with tarfile.open(blob, mode="r:*") as tar:
            out.append(tar.getnames())
    return out


def _new_layer(lam: Lamina, ref: str) -> list[str]:
    return _layers(lam, ref)[-1]


CACHE = """\
FROM busybox
ARG N
RUN --mount=type=cache,target=/var/cache/app \\
    sh -c 'echo "build $N saw: $(cat /var/cache/app/note 2>/dev/null || echo nothing)" \\
           > /result && echo "left by build $N" > /var/cache/app/note'
"""


def test_cache_mount_survives_builds_stays_out_of_layers_df_and_prune(
        base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, CACHE)
    _build(base, "--build-arg", "N=1", "-t", "c:1", ctx)
    assert _file(base, tmp_path, "c:1", "/result") == "build 1 saw: nothing\n"
    _build(base, "--build-arg", "N=2", "-t", "c:2", ctx)
    assert _file(base, tmp_path, "c:2", "/result") == "build 2 saw: left by build 1\n"
    # Not in any layer: neither the cache's files nor the mount point the sandbox made.
    for ref in ("c:1", "c:2"):
        names = [n for layer in _layers(base, ref) for n in layer]
        assert "result" in names
        assert not [n for n in names if n.startswith("var/cache")], names
    # df: a row of its own, and the instance by id
    usage = base.run("df", "--json").json()
    row = next(r for r in usage["summary"] if r["type"] == "Build cache mounts")
    assert (row["total"], row["active"]) == (1, 0)
    assert row["size"] == row["reclaimable"] == len("left by build 2\n")
    assert [(m["id"], m["files"]) for m in usage["cache_mounts"]] == [("/var/cache/app", 1)]
    assert "Build cache mounts   1" in base.run("df").out
    # builder prune removes it; the next build starts from nothing again
    out = base.run("builder", "prune", "-f").out
    assert "deleted cache mount: /var/cache/app" in out
    assert "Total reclaimed space: 16B" in out
    assert base.run("df", "--json").json()["cache_mounts"] == []
    _build(base, "--build-arg", "N=3", "-t", "c:3", ctx)
    assert _file(base, tmp_path, "c:3", "/result") == "build 3 saw: nothing\n"
    # gc --cache removes it too (with the layer cache); a dry run says so first
    assert len(base.run("df", "--json").json()["cache_mounts"]) == 1
    dry = base.run("gc", "--cache", "--dry-run", "--json").json()
    assert dry["cache_mounts_removed"] == ["/var/cache/app"]
    assert len(base.run("df", "--json").json()["cache_mounts"]) == 1
    assert ", 1 cache mount, " in base.run("gc", "--cache").out
    assert base.run("df", "--json").json()["cache_mounts"] == []
    # the prune left the images whole
    base.assert_consistent()


def test_cache_mount_hides_and_keeps_the_image_directory(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN mkdir -p /data && echo kept > /data/kept
WORKDIR /data
RUN --mount=type=cache,target=.,id=d,mode=0700,uid=33,gid=44 \\
    sh -c 'ls -a . > /seen; busybox stat -c "%a %u %g" . > /stat; echo new > new'
""")
    _build(base, "-t", "hide", ctx)
    assert _file(base, tmp_path, "hide", "/seen") == ".\n..\n"    # the cache, empty
    assert _file(base, tmp_path, "hide", "/stat") == "700 33 44\n"
    assert sorted(_new_layer(base, "hide")) == ["seen", "stat"]
    assert _file(base, tmp_path, "hide", "/data/kept") == "kept\n"
    (cache,) = CacheMounts(base.root).instances()
    assert (cache.id, (cache.path / "new").read_text()) == ("d", "new\n")


def test_cache_mount_sharing(base: Lamina, tmp_path: Path) -> None:
    """private: a build gets an instance of its own while another holds it; locked: it
    waits until the holder lets go; shared: it uses the free instance."""
    mounts = CacheMounts(base.root)
    private = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=cache,target=/c,sharing=private \\
    sh -c 'cat /c/f 2>/dev/null || echo none; echo private > /c/f'
""", name="private")
    locked = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=cache,target=/c,sharing=locked cat /c/f
""", name="locked")
    shared = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=cache,target=/c cat /c/f
""", name="shared")
    with mounts.acquire("/c", "/c", "locked") as data:
        (data / "f").write_text("held\n")
        out = base.run("build", private).out
        assert "none" in out.splitlines() and "held" not in out
        proc = subprocess.Popen([LAMINA, "build", os.fspath(locked)], env=base.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "waiting for the cache mount /c (sharing=locked)" in line:
                break
        else:
            raise AssertionError("".join(seen))
        (data / "f").write_text("written while held\n")
    rest = proc.stdout.read()
    assert proc.wait() == 0, rest
    assert "written while held" in rest
    assert "written while held" in base.run("build", "--no-cache", shared).out
    assert [m.instance for m in mounts.instances()] == [0, 1]


def _store_bytes(lam: Lamina) -> Iterator[tuple[Path, bytes]]:
    """Every file of the store, and each gzip blob decompressed as well."""
    for path in sorted(p for p in lam.root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data
        if data[:2] == b"\x1f\x8b":
            yield path, gzip.decompress(data)


def test_secret_is_readable_and_stored_nowhere(base: Lamina, tmp_path: Path) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}".encode()
    (tmp_path / "token").write_bytes(value)
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=secret,id=token,required \\
    sh -c 'busybox sha256sum /run/secrets/token | busybox cut -c1-64 > /sum; \\
           busybox stat -c "%a %u" /run/secrets/token > /mode'
RUN --mount=type=secret,id=token,env=TOKEN,required=true sh -c 'echo ${#TOKEN} > /len'
RUN --mount=type=secret,id=token,target=/etc/app/token,mode=0440,uid=1 \\
    sh -c 'busybox stat -c "%a %u" /etc/app/token > /mode2'
""")
    res = _build(base, "--secret", f"id=token,src={tmp_path / 'token'}", "-t", "s", ctx)
    assert _file(base, tmp_path, "s", "/sum") == hashlib.sha256(value).hexdigest() + "\n"
    assert _file(base, tmp_path, "s", "/mode") == "400 0\n"
    assert _file(base, tmp_path, "s", "/len") == f"{len(value)}\n"
    assert _file(base, tmp_path, "s", "/mode2") == "440 1\n"
    layers = _layers(base, "s")
    assert [sorted(x) for x in layers[1:]] == [["mode", "sum"], ["len"], ["mode2"]]
    assert not any(n.startswith(("run", "etc/app")) for layer in layers for n in layer)
    history = base.run("history", "--no-trunc", "s").out + base.run("inspect", "s").out
    assert value.decode() not in history
    # nowhere in the store: blobs (layers decompressed, config, manifest), metadata
    # (cache keys, history), snapshots, tmp
    files = 0
    for path, data in _store_bytes(base):
        files += 1
        assert value not in data, path
    assert files > 10
    # the secret's value is not part of the key: another value, same cache
    (tmp_path / "token").write_bytes(b"another value")
    again = _build(base, "--secret", f"id=token,src={tmp_path / 'token'}", ctx)
    assert (again["cached_layers"], again["digest"]) == (3, res["digest"])
    # a missing required secret: one line naming it
    bad = base.fail("build", "--no-cache", ctx)
    assert bad.err.strip().splitlines() == [
        "lamina: Containerfile:2: RUN: secret token is required but was not given: "
        "lamina build --secret id=token,src=FILE"]


def test_secret_from_env_and_optional_missing(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=secret,id=api sh -c 'cat /run/secrets/api > /got 2>/dev/null || echo absent > /got'
""")
    _build(base, "-t", "opt", ctx)
    assert _file(base, tmp_path, "opt", "/got") == "absent\n"
    res = base.run("build", "--no-cache", "--secret", "id=api,env=API_TOKEN", "-t", "env", ctx,
                   env={"API_TOKEN": "from-the-environment"})
    assert res.code == 0
    assert _file(base, tmp_path, "env", "/got") == "from-the-environment"


def test_bind_mounts_context_readonly_stage_and_rw(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM busybox AS gen
ARG V=1
RUN mkdir /out && echo "generated $V" > /out/v
FROM busybox
RUN --mount=type=bind,target=/src \\
    sh -c 'cat /src/data.txt > /copied; ls /src > /listing; \\
           if echo x > /src/new 2>/dev/null; then echo writable; else echo read-only; fi > /w'
RUN --mount=type=bind,source=data.txt,target=/data.txt,rw \\
    sh -c 'echo changed > /data.txt && cat /data.txt > /rw'
RUN --mount=type=bind,from=gen,source=/out,target=/in cat /in/v > /got
""", {"data.txt": "context data\n", "hidden.txt": "no\n", ".dockerignore": "hidden.txt\n"})
    first = _build(base, "-t", "b", ctx)
    assert _file(base, tmp_path, "b", "/copied") == "context data\n"
    assert _file(base, tmp_path, "b", "/w") == "read-only\n"
    assert _file(base, tmp_path, "b", "/listing").split() == ["Containerfile", "data.txt"]
    assert _file(base, tmp_path, "b", "/rw") == "changed\n"
    assert (ctx / "data.txt").read_text() == "context data\n"    # rw writes are discarded
    assert not (ctx / "new").exists()
    assert _file(base, tmp_path, "b", "/got") == "generated 1\n"
    layers = _layers(base, "b")
    assert [sorted(x) for x in layers[-3:]] == [["copied", "listing", "w"], ["rw"], ["got"]]
    # The key: the content bound, not its mtime; another stage's result.
    os.utime(ctx / "data.txt")
    assert _build(base, ctx)["new_layers"] == 0
    changed = _build(base, "--build-arg", "V=2", "-t", "b2", ctx)
    assert changed["new_layers"] == 2     # gen's RUN, and the RUN that binds its result
    assert _file(base, tmp_path, "b2", "/got") == "generated 2\n"
    assert _layers(base, "b2")[:-1] == layers[:-1]
    (ctx / "data.txt").write_text("new data\n")
    assert _build(base, ctx)["new_layers"] == 3
    (ctx / "hidden.txt").write_text("ignored, so not in the key\n")
    assert _build(base, ctx)["new_layers"] == 0
    assert first["digest"] != changed["digest"]


def test_tmpfs_and_network(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=tmpfs,target=/scratch,size=1m \\
    sh -c 'busybox grep " /scratch " /proc/mounts | busybox cut -d" " -f3,4 > /m; \\
           echo data > /scratch/f'
RUN --network=none sh -c 'busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3 > /none'
RUN --network=host sh -c 'busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3 > /host'
""")
    _build(base, "-t", "t", ctx)
    kind, options = _file(base, tmp_path, "t", "/m").split()
    assert kind == "tmpfs" and "size=1024k" in options.split(","), options
    assert [n.strip() for n in _file(base, tmp_path, "t", "/none").split("\n") if n] == ["lo"]
    with open("/proc/net/dev") as f:
        host = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    assert sorted(n.strip() for n in _file(base, tmp_path, "t", "/host").split("\n")
                  if n) == host
    assert len(host) > 1
    assert not any(n.startswith("scratch") for layer in _layers(base, "t") for n in layer)


class _EchoAgent:
    """A stand-in ssh agent on a unix socket: answers each message with ``agent:`` and
    the message; stops with the block."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(os.fspath(path))
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"agent:" + data)

    def __enter__(self) -> _EchoAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join()


def test_ssh_agent_socket_is_forwarded(base: Lamina, tmp_path: Path) -> None:
    sock_path = tmp_path / "agent.sock"
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=ssh sh -c 'test -S "$SSH_AUTH_SOCK" && echo "$SSH_AUTH_SOCK" > /sock \\
                              || echo "no agent" > /sock'
RUN --mount=type=ssh,id=deploy,target=/agent,required \\
    sh -c 'test -S /agent && busybox stat -c "%a %u" /agent > /ok'
RUN mkdir /out && chown 65534 /out
USER 65534
RUN --mount=type=ssh,uid=65534 sh -c 'test -w "$SSH_AUTH_SOCK" && echo usable > /out/w'
""")
    with _EchoAgent(sock_path):
        base.run("build", "--ssh", "default", "--ssh", f"deploy={sock_path}", "-t", "ssh", ctx,
                 env={"SSH_AUTH_SOCK": os.fspath(sock_path)})
    assert _file(base, tmp_path, "ssh", "/sock") == "/run/buildkit/ssh_agent.0\n"
    assert _file(base, tmp_path, "ssh", "/ok") == "600 0\n"       # BuildKit's defaults
    assert _file(base, tmp_path, "ssh", "/out/w") == "usable\n"   # uid=65534: the USER's
    assert not any(n.startswith("run") for layer in _layers(base, "ssh") for n in layer)
    missing = base.fail("build", "--no-cache", "-t", "nossh", ctx)
    assert missing.err.strip() == (
        "lamina: Containerfile:4: RUN: ssh agent deploy is required but was not given: "
        "lamina build --ssh deploy[=SOCKET]")
    assert "no agent" in missing.out    # an optional one: the step runs without it


def test_ssh_mount_passes_connections_on_to_the_agent(tmp_path: Path) -> None:
    """What the step's socket does, from the host side: bytes reach the agent and its
    answer comes back, connection after connection; afterwards the socket is gone."""
    from lamina.build.buildsecrets import SSHSource
    from lamina.build.context import SourceTree
    from lamina.build.runmounts import parse_mount
    from lamina.build.stepmounts import MountSources, prepare

    agent = tmp_path / "agent.sock"
    sources = MountSources(tmp_path / "store", tmp_path, lambda _: SourceTree(tmp_path),
                           ssh={"default": SSHSource("default", agent)})
    with _EchoAgent(agent), prepare([parse_mount("type=ssh,mode=0660")], sources) as prepared:
        ((step_socket, target, _),) = prepared.binds
        assert (target, prepared.env) == ("/run/buildkit/ssh_agent.0",
                                          {"SSH_AUTH_SOCK": "/run/buildkit/ssh_agent.0"})
        assert oct(os.stat(step_socket).st_mode & 0o777) == "0o660"
        for n in range(3):
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(os.fspath(step_socket))
                client.sendall(f"request {n}".encode())
                assert client.recv(1024) == f"agent:request {n}".encode()
    assert not step_socket.exists()


@pytest.mark.parametrize(("line", "message"), [
    ("RUN --mount=type=volume,target=/x true",
     "Containerfile:2: --mount: unsupported mount type 'volume'; use one of bind, cache, "
     "tmpfs, secret, ssh"),
    ("RUN --mount=type=cache,target=/x,colour=red true",
     "Containerfile:2: --mount: unexpected key 'colour' in 'colour=red'"),
    ("RUN --mount=type=bind,source=nothing,target=/x true",
     "Containerfile:2: RUN: --mount: nothing not found in build context"),
    ("RUN --mount=type=bind,from=nostage,target=/x true",
     "Containerfile:2: RUN: image nostage is not in the local store"),
])
def test_bad_mounts_fail_with_one_line(base: Lamina, tmp_path: Path, line: str,
                                       message: str) -> None:
    ctx = _ctx(tmp_path, f"FROM busybox\n{line}\n")
    before = base.blob_files()
    res = base.fail("build", ctx)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lamina: {message}"), res.err
    assert base.blob_files() == before


def test_secret_flag_errors_are_one_line(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nRUN true\n")
    res = base.fail("build", "--secret", "id=x,src=/nonexistent/token", ctx)
    assert res.code == 2
    assert res.err.strip() == "lamina: --secret id=x,src=/nonexistent/token: no such file " \
                              "/nonexistent/token"
    res = base.fail("build", "--secret", "src=/etc/hostname", ctx)
    assert res.code == 3 and "id is required" in res.err


@pytest.mark.parametrize("snapshotter", ["overlay", "walk"])
def test_nested_mounts_for_a_non_root_user(base: Lamina, tmp_path: Path,
                                           snapshotter: str) -> None:
    """A USER that is not root runs in lamina's own init (run/sandbox.py), which mounts
    a cache inside a tmpfs itself; both snapshotters leave the mount points out."""
    (tmp_path / "tok").write_text("user secret")
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN mkdir /out && chown 65534 /out
USER 65534
RUN --mount=type=tmpfs,target=/t --mount=type=cache,target=/t/c,uid=65534 \\
    --mount=type=secret,id=tok,uid=65534 \\
    sh -c 'echo x > /t/c/y && busybox stat -c "%u %a" /t /t/c /t/c/y > /out/stat; \\
           cat /run/secrets/tok > /out/secret'
""")
    _build(base, "--snapshotter", snapshotter, "--secret", f"id=tok,src={tmp_path / 'tok'}",
           "-t", "u", ctx)
    assert _file(base, tmp_path, "u", "/out/stat") == "0 1777\n65534 755\n65534 644\n"
    assert _file(base, tmp_path, "u", "/out/secret") == "user secret"
    assert sorted(_new_layer(base, "u")) == ["out", "out/secret", "out/stat"]


def test_builder_prune_keeps_the_layers_images_use(base: Lamina, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, CACHE)
    first = _build(base, "--build-arg", "N=1", "-t", "keep", ctx)
    _build(base, "--build-arg", "N=2", "-t", "gone", ctx)
    base.run("rmi", "gone")
    out = base.run("builder", "prune", "-f").out
    assert out.startswith("Deleted build cache objects: 1\n"), out   # gone's RUN layer
    again = _build(base, "--build-arg", "N=1", ctx)
    assert (again["new_layers"], again["digest"]) == (0, first["digest"])
    out = base.run("builder", "prune", "-a", "-f").out
    assert out.startswith("Deleted build cache objects: 1\n"), out   # keep's, with -a
    assert _build(base, "--build-arg", "N=1", ctx)["new_layers"] == 1
    # system prune -a: all build cache, cache mounts included
    assert "deleted cache mount: /var/cache/app" in base.run("system", "prune", "-a",
                                                             "-f").out
    assert base.run("df", "--json").json()["cache_mounts"] == []
    base.assert_consistent()


def test_mounts_with_a_heredoc_script(base: Lamina, tmp_path: Path) -> None:
    """The heredoc's script (a mount of its own, run/sandbox.py) and --mount together."""
    ctx = _ctx(tmp_path, """\
FROM busybox
RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t <<EOF
#!/bin/sh
echo cached > /c/h
echo temp > /t/x
cat /c/h /t/x > /out
EOF
""")
    _build(base, "-t", "hd", ctx)
    assert _file(base, tmp_path, "hd", "/out") == "cached\ntemp\n"
    assert _new_layer(base, "hd") == ["out"]
    (cache,) = CacheMounts(base.root).instances()
    assert (cache.path / "h").read_text() == "cached\n"


def test_cache_seeded_from_a_stage_and_bind_from_an_image(base: Lamina,
                                                          tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM busybox AS seed
RUN mkdir /s && echo seeded > /s/f
FROM busybox
RUN --mount=type=cache,target=/c,from=seed,source=/s \\
    --mount=type=bind,from=busybox,source=/bin,target=/img \\
    sh -c 'cat /c/f > /out; echo more >> /c/f; ls /img | busybox head -n 1 > /img.txt'
""")
    _build(base, "-t", "seeded", ctx)
    assert _file(base, tmp_path, "seeded", "/out") == "seeded\n"
    assert _file(base, tmp_path, "seeded", "/img.txt") == "busybox\n"
    assert sorted(_new_layer(base, "seeded")) == ["img.txt", "out"]
    # seeded once: the next build sees what the last one left in it
    again = base.run("build", "--no-cache", "-t", "seeded2", ctx)
    assert again.code == 0
    (cache,) = CacheMounts(base.root).instances()
    assert (cache.id, (cache.path / "f").read_text()) == ("/c", "seeded\nmore\nmore\n")


def test_mount_specification_is_in_the_key_its_content_is_not(base: Lamina,
                                                              tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nRUN --mount=type=cache,target=/c,id=a ls /c > /seen\n")
    assert _build(base, ctx)["new_layers"] == 1
    with CacheMounts(base.root).acquire("a", "a", "shared") as data:
        (data / "new-file").write_text("x")        # the cache's content changed
    assert _build(base, ctx)["new_layers"] == 0    # ... the key did not
    (ctx / "Containerfile").write_text(
        "FROM busybox\nRUN --mount=type=cache,target=/c,id=b ls /c > /seen\n")
    assert _build(base, ctx)["new_layers"] == 1    # another id: another key
    (ctx / "Containerfile").write_text(
        "FROM busybox\nRUN --mount=type=cache,target=/c,id=b,sharing=locked ls /c > /seen\n")
    assert _build(base, ctx)["new_layers"] == 1

"""lamina build end to end: the seed pair, the cache, stages, failures, reproducibility."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_testing import LAMINA, REPO, Lamina, need


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    """A store with ``busybox`` imported from the seed's OS snapshot."""
    lamina.run("import", "busybox", seed / "os")
    return lamina


def build(lamina: Lamina, *args: str | Path) -> dict:
    return lamina.run("build", "--json", *args).json()


def build_text(lamina: Lamina, *args: str | Path) -> str:
    return lamina.run("build", *args).out


def examples(tmp_path: Path) -> Path:
    ctx = tmp_path / "examples"
    shutil.copytree(REPO / "examples", ctx, ignore=shutil.ignore_patterns(".demo"))
    return ctx


def test_seed_pair_shares_exactly_three_layers(base: Lamina, tmp_path: Path) -> None:
    ctx = examples(tmp_path)
    out_a = build_text(base, "-f", ctx / "Containerfile.a", "-t", "demo/a", ctx)
    assert "Step 1/6 : FROM busybox" in out_a
    assert "Successfully tagged demo/a:latest" in out_a
    out_b = build_text(base, "-f", ctx / "Containerfile.b", "-t", "demo/b", ctx)
    assert out_b.count("---> Using cache") == 2  # the RUN and the config COPY
    a = base.run("inspect", "demo/a").json()[0]
    b = base.run("inspect", "demo/b").json()[0]
    la = [x["digest"] for x in a["Manifest"]["layers"]]
    lb = [x["digest"] for x in b["Manifest"]["layers"]]
    assert len(la) == len(lb) == 4
    assert la[:3] == lb[:3] and la[3] != lb[3]
    assert b["Config"]["Cmd"] == ["/bin/httpd", "-f", "-p", "8080", "-h", "/var/www/html",
                                  "-c", "/etc/httpd.conf"]
    assert b["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    hist = base.run("history", "--json", "demo/b").json()
    assert [h["empty_layer"] for h in hist] == [True, True, False, False, False, False]
    assert hist[2]["created_by"] == "COPY seed/index-b.html /var/www/html/index.html"
    base.run("unpack", "demo/b", tmp_path / "b")
    assert b"image B" in (tmp_path / "b/var/www/html/index.html").read_bytes()
    assert os.path.islink(tmp_path / "b/bin/httpd")
    base.assert_consistent()


def _write(ctx: Path, containerfile: str, files: dict[str, str]) -> None:
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    for name, text in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)


CACHE_FILE = """\
FROM busybox
ARG GREETING=hello
COPY a.txt /a.txt
RUN echo "$GREETING" > /greeting
COPY b.txt /b.txt
RUN cat /a.txt /b.txt /greeting > /all
"""


def test_cache_hits_and_misses(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    _write(ctx, CACHE_FILE, {"a.txt": "A\n", "b.txt": "B\n"})
    first = build(base, "-t", "c:1", ctx)
    assert (first["new_layers"], first["cached_layers"]) == (4, 0)
    again = build(base, "-t", "c:2", ctx)
    assert (again["new_layers"], again["cached_layers"]) == (0, 4)
    assert again["digest"] == first["digest"]
    # touching a source (same bytes) still hits: mtimes are not part of the key
    os.utime(ctx / "a.txt")
    assert build(base, ctx)["cached_layers"] == 4
    # a changed COPY source misses there and in every later step
    (ctx / "b.txt").write_text("B2\n")
    changed = build(base, ctx)
    assert (changed["cached_layers"], changed["new_layers"]) == (2, 2)
    # a changed build arg misses at the RUN that sees it, and after
    arg = build(base, "--build-arg", "GREETING=bonjour", "-t", "c:fr", ctx)
    assert (arg["cached_layers"], arg["new_layers"]) == (1, 3)
    base.run("unpack", "c:fr", tmp_path / "fr")
    assert (tmp_path / "fr/all").read_text() == "A\nB2\nbonjour\n"
    # --no-cache makes every layer again, to the same bytes
    nc = build(base, "--no-cache", ctx)
    assert nc["new_layers"] == 4 and nc["digest"] == changed["digest"]


def test_multi_stage_copy_from(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ms"
    _write(ctx, """\
FROM busybox AS builder
RUN mkdir -p /out && echo built > /out/artifact && echo junk > /junk
FROM scratch AS unused
COPY nothing /nothing
FROM busybox
COPY --from=builder /out/artifact /opt/artifact
COPY --from=0 /junk /opt/
""", {})
    res = build(base, "-t", "ms", ctx)
    base.run("unpack", "ms", tmp_path / "r")
    assert (tmp_path / "r/opt/artifact").read_text() == "built\n"
    assert (tmp_path / "r/opt/junk").read_text() == "junk\n"
    assert not (tmp_path / "r/out").exists()
    assert len(res["layers"]) == 3  # busybox + two COPYs; the builder's RUN is not in it
    # --target picks a stage
    t = build(base, "--target", "builder", "-t", "ms:builder", ctx)
    assert len(t["layers"]) == 2


def test_run_failure_names_line_and_status(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "fail"
    _write(ctx, """\
FROM busybox
RUN echo before > /x
RUN echo "about to fail" && echo "on stderr" >&2 && exit 7
""", {})
    blobs_before = base.blob_files()
    res = base.fail("build", "-t", "broken", ctx)
    assert res.code == 3
    first = res.err.splitlines()[0]
    assert first.startswith("lamina: Containerfile:3: RUN: ")
    assert "returned a non-zero code: 7" in first
    assert "about to fail" in res.err and "on stderr" in res.err
    assert base.run("images", "--json").json()[0]["repository"] == "busybox"
    assert len(base.run("images", "--json").json()) == 1  # nothing tagged
    # the step before the failure is cached; the failed step left nothing
    _write(ctx, "FROM busybox\nRUN echo before > /x\n", {})
    assert build(base, "-t", "partial", ctx)["cached_layers"] == 1
    base.run("rmi", "partial")
    base.run("gc", "--cache")
    assert base.blob_files() - blobs_before == set()  # the cached layer went with the cache
    base.assert_consistent()


def test_gc_keeps_the_build_cache_until_asked(base: Lamina, tmp_path: Path) -> None:
    """#10.2: cache entries are roots (BuildKit keeps its cache records until ``builder
    prune``): rmi + gc keep them, dry run and real run agree, ``gc --cache`` drops them."""
    ctx = tmp_path / "two"
    _write(ctx, "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n", {})
    first = build(base, "-t", "two", ctx)
    assert (first["new_layers"], first["cached_layers"]) == (2, 0)
    cached = set(first["layers"][-2:])   # the two RUN layers
    base.run("rmi", "two")
    blobs = base.blob_files()
    assert {d.split(":")[1] for d in cached} <= blobs
    dry = base.run("gc", "--dry-run", "--json").json()
    real = base.run("gc", "--json").json()
    for key in ("blobs_removed", "bytes_freed", "snapshots_removed", "cache_removed"):
        assert dry[key] == real[key], key
    assert real["cache_removed"] == 0
    assert base.blob_files() == blobs - set(real["blobs_removed"])
    again = build(base, "-t", "two", ctx)
    assert (again["new_layers"], again["cached_layers"]) == (0, 2)
    assert again["layers"] == first["layers"]
    base.run("rmi", "two")
    dry = base.run("gc", "--cache", "--dry-run", "--json").json()
    real = base.run("gc", "--cache", "--json").json()
    assert dry["cache_removed"] == real["cache_removed"] == 2
    assert dry["blobs_removed"] == real["blobs_removed"] and real["bytes_freed"] > 0
    assert build(base, "-t", "two", ctx)["cached_layers"] == 0
    base.assert_consistent()


def _sleeping(seconds: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"^sleep {seconds}$"], capture_output=True, text=True)
    return len(out.stdout.split())


def _wait_for(check: Callable[[], bool]) -> None:
    for _ in range(400):
        if check():
            return
        subprocess.run(["sleep", "0.05"])
    raise AssertionError("timed out")


def test_gc_removes_what_a_killed_build_left(base: Lamina, tmp_path: Path) -> None:
    """#10.7: a build killed by SIGKILL leaves its work dirs in the store's tmp; df shows
    them, gc removes them (not those of a build still running)."""
    tmp = base.root / "tmp"
    procs = []
    try:
        names: list[set[str]] = []
        for seconds in (437, 443):
            ctx = tmp_path / f"sleep{seconds}"
            _write(ctx, f"FROM busybox\nRUN sleep {seconds}\n", {})
            before = set(os.listdir(tmp)) if tmp.exists() else set()
            procs.append(subprocess.Popen([LAMINA, "build", "-t", f"s{seconds}", ctx],
                                          env=base.env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
            _wait_for(lambda s=seconds: _sleeping(s) > 0)   # type: ignore[misc]
            names.append(set(os.listdir(tmp)) - before)
        # a build's overlay probe may come and go meanwhile: only what stays counts
        dead, live = ({n for n in group if (tmp / n).exists()} for group in names)
        assert any(n.startswith("build-") for n in dead)
        procs[0].kill()
        procs[0].wait()
        _wait_for(lambda: _sleeping(437) == 0)   # the sandbox dies with its parent
        summary = {r["type"]: r for r in base.run("df", "--json").json()["summary"]}
        temp = summary["Temporary files"]
        assert temp["total"] == len([n for n in dead | live if not n.endswith(".lock")])
        assert 0 < temp["active"] < temp["total"] and temp["size"] >= temp["reclaimable"]
        dry = base.run("gc", "--dry-run", "--json").json()
        real = base.run("gc", "--json").json()
        # df, the dry run and the real run count the same entries (as root, the killed
        # build's rootfs dir with its overlay mount too) and the same bytes.
        assert dry["temp_removed"] == real["temp_removed"] == temp["total"] - temp["active"]
        assert dry["bytes_freed"] == real["bytes_freed"] >= temp["reclaimable"]
        assert set(os.listdir(tmp)) == {n for n in live if (tmp / n).exists()} >= {
            n for n in live if n.startswith("build-")} and procs[1].poll() is None
        procs[1].kill()
        procs[1].wait()
        _wait_for(lambda: _sleeping(443) == 0)
        assert base.run("gc", "--json").json()["temp_removed"] >= 1
        assert os.listdir(tmp) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        base.run("gc", check=False)   # whatever happened, leave no mounts behind
    base.assert_consistent()


@pytest.mark.parametrize("text,message", [
    ("FROM busybox\nCOPPY a /a\n", "Containerfile:2: unknown instruction: COPPY"),
    ("FROM busybox\nCOPY missing.txt /x\n", "Containerfile:2: COPY: COPY failed: file not "
     "found in build context: missing.txt"),
    ("FROM 127.0.0.1:9/nosuchbase\n", "image 127.0.0.1:9/nosuchbase is not in the local "
     "store and pulling it failed: cannot connect"),
    ("RUN echo hi\n", "Containerfile:1"),
])
def test_bad_containerfiles(base: Lamina, tmp_path: Path, text: str, message: str) -> None:
    ctx = tmp_path / "bad"
    _write(ctx, text, {})
    res = base.fail("build", ctx)
    assert message in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1


def test_a_failed_base_pull_keeps_its_exit_code(base: Lamina, tmp_path: Path) -> None:
    """#10.18: a ``FROM`` whose pull fails is a transport failure (exit 6), not a bad
    Containerfile (3); the message still names the step."""
    ctx = tmp_path / "bad"
    _write(ctx, "FROM 127.0.0.1:9/nosuchbase\n", {})
    res = base.fail("build", ctx)
    assert res.code == 6, res.err
    assert res.err.strip() == (
        "lamina: Containerfile:1: FROM: image 127.0.0.1:9/nosuchbase is not in the local "
        "store and pulling it failed: cannot connect to 127.0.0.1:9: connection refused")


def test_reproducible_across_stores(make_lamina, seed: Path, tmp_path: Path) -> None:
    ctx = examples(tmp_path)
    digests = []
    for name in ("one", "two"):
        lam = make_lamina(name)
        lam.run("import", "busybox", seed / "os")
        digests.append(build(lam, "-f", ctx / "Containerfile.a", "-t", "demo/a", ctx)["digest"])
        # touch the context between builds: mtimes must not matter
        for p in (ctx / "seed").iterdir():
            os.utime(p)
    assert digests[0] == digests[1]


def test_umoci_unpacks_and_runs_a_built_image(base: Lamina, tmp_path: Path) -> None:
    umoci = need("umoci")
    ctx = examples(tmp_path)
    build(base, "-f", ctx / "Containerfile.a", "-t", "demo/a", ctx)
    base.run("save", "demo/a", "-o", tmp_path / "layout", "--format", "oci")
    subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'layout'}:latest",
                    tmp_path / "bundle"], check=True, capture_output=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    cfg = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert cfg["process"]["args"][0] == "/bin/httpd"
    if os.geteuid() == 0:
        out = subprocess.run(["chroot", rootfs, "/bin/sh", "-c",
                              "cat /var/www/html/index.html; ls /bin/httpd"],
                             capture_output=True, text=True, check=True).stdout
        assert "image A" in out and "/bin/httpd" in out


def test_dockerignore_config_instructions_and_arg_scoping(base: Lamina, tmp_path: Path
                                                          ) -> None:
    ctx = tmp_path / "cfg"
    _write(ctx, """\
ARG BASE=busybox
ARG VERSION=1.0
FROM $BASE
ARG VERSION
ARG LOCAL=x
ENV APP_HOME=/srv/app GREETING="hello world"
WORKDIR $APP_HOME
COPY . ./
USER www-data
RUN id -u > /tmp/uid && pwd > /tmp/cwd && echo "$GREETING $VERSION $LOCAL" > /tmp/env
USER root
SHELL ["/bin/sh", "-c", "-e"]
RUN false || echo "shell kept going" > shell.txt
LABEL org.example.version=$VERSION
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD ["/bin/true"]
ENTRYPOINT ["/bin/sh"]
""", {"app.txt": "app\n", "secret.key": "no\n", "logs/x.log": "log\n", "logs/keep.log": "k\n"})
    (ctx / ".dockerignore").write_text("*.key\nlogs\n!logs/keep.log\n")
    build(base, "--build-arg", "VERSION=2.5", "-t", "cfg", ctx)
    base.run("unpack", "cfg", tmp_path / "r")
    app = tmp_path / "r/srv/app"
    assert (app / "app.txt").exists() and not (app / "secret.key").exists()
    assert (app / "logs/keep.log").exists() and not (app / "logs/x.log").exists()
    tmp = tmp_path / "r/tmp"
    assert (tmp / "uid").read_text() == "33\n"     # USER www-data
    assert (tmp / "cwd").read_text() == "/srv/app\n"
    assert (tmp / "env").read_text() == "hello world 2.5 x\n"
    assert (app / "shell.txt").read_text() == "shell kept going\n"
    if os.geteuid() == 0:
        assert (tmp / "uid").stat().st_uid == 33
    cfg = base.run("inspect", "cfg").json()[0]["Config"]
    assert "APP_HOME=/srv/app" in cfg["Env"] and "GREETING=hello world" in cfg["Env"]
    assert not any(e.startswith(("VERSION=", "LOCAL=")) for e in cfg["Env"])
    assert cfg["WorkingDir"] == "/srv/app" and cfg["User"] == "root"
    assert cfg["Labels"] == {"org.example.version": "2.5"}
    assert cfg["StopSignal"] == "SIGTERM" and cfg["Entrypoint"] == ["/bin/sh"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "/bin/true"]
    assert cfg["Healthcheck"]["Interval"] == 5_000_000_000
    assert cfg["Shell"] == ["/bin/sh", "-c", "-e"]


def test_walk_and_overlay_builds_agree_and_gc_cache(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "w"
    _write(ctx, CACHE_FILE, {"a.txt": "A\n", "b.txt": "B\n"})
    over = build(base, "--snapshotter", "overlay", "-t", "o", ctx)
    walk = build(base, "--no-cache", "--snapshotter", "walk", "-t", "w", ctx)
    assert walk["layers"] == over["layers"] and walk["digest"] == over["digest"]
    res = base.run("gc", "--cache", "--json").json()
    assert res["cache_removed"] == 4
    assert build(base, ctx)["cached_layers"] == 0

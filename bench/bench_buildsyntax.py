"""Rebuilding after a base-image change with BuildKit syntax: ``lamina build`` (a heredoc
RUN, ``COPY --link``) against ``buildah bud --layers``, same run.

    .venv/bin/python bench/bench_buildsyntax.py [--runs N | --quick]

Two bases: v1 is the busybox base of examples/demo.sh, v2 the same plus one file (a
security update, say).  The Containerfile (written by this script) has a heredoc RUN that
writes 500 small files, a ``COPY --link`` of the build benchmark's context (1,500 files,
4.4 MB; bench_build.make_context) and a ``COPY --link <<EOF`` config file.  Debian 12's
buildah (1.28) knows neither heredocs nor ``--link`` (it stops at ``COPY --link``), so it
builds the same image from the classic equivalent: the RUN's script on one line, plain
``COPY`` of the directory and of the config file from the context.

Each run, alternating (lamina, buildah), untimed first: a fresh store / root holding
both bases, and a build on v1 (which fills the cache).  Timed: the same build on v2.
lamina makes the RUN again and takes both ``--link`` layers from the cache (checked:
one new layer, their digests the same as on v1); buildah makes every step again
(checked: no cache hit after FROM).  Stores under /var/tmp/lamina-bench/buildsyntax,
removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import (  # noqa: E402 - the sibling's helpers
    CACHE,
    EPOCH,
    REPO,
    build_context,
    run,
    start,
)
from bench_layer import lamina_cli, ratio_text, timed  # noqa: E402 - the sibling's helpers

WORK = CACHE / "buildsyntax"

LAMINA_FILE = """\
ARG BASE=base:v1
FROM $BASE
RUN <<EOF
mkdir -p /data
i=0
while [ $i -lt 500 ]; do echo "file $i" > /data/f$i; i=$((i + 1)); done
EOF
COPY --link app /app
COPY --link <<EOF /etc/app.conf
name=bench
EOF
"""
BUILDAH_FILE = """\
FROM base
RUN mkdir -p /data && i=0; while [ $i -lt 500 ]; do echo "file $i" > /data/f$i; \\
    i=$((i + 1)); done
COPY app /app
COPY app.conf /etc/app.conf
"""


def main() -> int:
    args = start(__doc__)
    if args is None:
        return 1
    lamina = lamina_cli()
    context = build_context()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    try:
        # The context: the build benchmark's app/ and a config file (for buildah's COPY).
        ctx = WORK / "ctx"
        ctx.mkdir()
        shutil.copytree(context / "app", ctx / "app")
        (ctx / "app.conf").write_text("name=bench\n")
        (WORK / "Containerfile.lamina").write_text(LAMINA_FILE)
        (WORK / "Containerfile.buildah").write_text(BUILDAH_FILE)
        snapshots = WORK / "snapshots"
        run([str(REPO / "examples/seed/make-snapshots.sh"), str(snapshots)])
        v2 = WORK / "os-v2"
        shutil.copytree(snapshots / "os", v2, symlinks=True)
        (v2 / "etc" / "security-update").write_text("v2\n")

        def lamina_env(store: Path) -> dict[str, str]:
            return {**env, "LAMINA_ROOT": str(store)}

        def new_store(name: str) -> Path:
            store = WORK / name
            run([lamina, "import", "base:v1", str(snapshots / "os")], env=lamina_env(store))
            run([lamina, "import", "base:v2", str(snapshots / "os"), str(v2)],
                env=lamina_env(store))
            return store

        layouts = WORK / "layouts"
        seed_store = new_store("lamina-seed")
        for tag in ("v1", "v2"):
            run([lamina, "save", f"base:{tag}", "-o", str(layouts / tag), "--format", "oci"],
                env=lamina_env(seed_store))

        def buildah(root: Path) -> list[str]:
            return ["buildah", "--root", str(root), "--runroot", f"{root}-run",
                    "--storage-driver", "vfs"]

        def new_root(name: str) -> Path:
            root = WORK / name
            for tag in ("v1", "v2"):
                image = run(buildah(root) + ["pull", "-q", f"oci:{layouts / tag}:{tag}"])
                run(buildah(root) + ["tag", image.split()[-1], f"base-{tag}"])
            return root

        def lamina_build(store: Path, base: str, expect_new: int,
                         out: list[list[str]]) -> Callable[[], None]:
            def go() -> None:
                res = json.loads(run([lamina, "build", "--json", "--build-arg", f"BASE={base}",
                                      "-f", str(WORK / "Containerfile.lamina"), str(ctx)],
                                     env=lamina_env(store)))
                if res["new_layers"] != expect_new:
                    raise SystemExit(f"lamina: {res['new_layers']} new layers, expected "
                                     f"{expect_new}")
                out.append(res["layers"])
            return go

        def buildah_bud(root: Path, base: str) -> Callable[[], None]:
            def go() -> None:
                run(buildah(root) + ["tag", f"base-{base}", "base"])
                out = run(buildah(root) + ["bud", "--isolation", "chroot", "--pull=never",
                                           "--layers", "--timestamp", EPOCH, "-f",
                                           str(WORK / "Containerfile.buildah"), str(ctx)],
                          env=env, merge=True)
                if base == "v2" and "Using cache" in out:
                    raise SystemExit("buildah: a cache hit after the base changed")
            return go

        times: dict[str, list[float]] = {"lamina build (heredoc, COPY --link)": [],
                                         "buildah bud --layers (classic)": []}
        for i in range(args.runs):
            store, root = new_store(f"lamina-{i}"), new_root(f"buildah-{i}")
            layers: list[list[str]] = []
            lamina_build(store, "base:v1", 3, layers)()
            buildah_bud(root, "v1")()
            times["lamina build (heredoc, COPY --link)"].append(
                timed(lamina_build(store, "base:v2", 1, layers)))
            times["buildah bud --layers (classic)"].append(timed(buildah_bud(root, "v2")))
            v1_layers, v2_layers = layers
            if v1_layers[-2:] != v2_layers[-2:]:
                raise SystemExit("lamina: the --link layers changed with the base")
        ours = statistics.median(times["lamina build (heredoc, COPY --link)"])
        theirs = statistics.median(times["buildah bud --layers (classic)"])
        print(f"\nrebuild after a base change (median of {args.runs}; runs alternate)")
        for name, ts in times.items():
            print(f"  {name:38s} {statistics.median(ts):6.2f} s   "
                  f"[{' '.join(f'{t:.2f}' for t in ts)}]")
        print(f"  lamina: {ratio_text(theirs, ours, 'buildah bud --layers')}; its two --link "
              "layers kept their digests across the base change")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

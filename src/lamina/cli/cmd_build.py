"""``lamina build``: thin — parse options, call ``lamina.build.executor.build``, print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lamina.cli.format import argument, flag, option


def register(app: click.Group, store_factory: Callable[[], Any]) -> None:
    @app.command()
    @argument("context", kind=Path, default=Path("."), help="Build context directory.")
    @option("-f", "--file", kind=Path,
            help="Containerfile (default: CONTEXT/Containerfile or Dockerfile).")
    @option("-t", "--tag", multiple=True, help="Name the image NAME[:TAG] (repeatable).")
    @option("--build-arg", multiple=True,
            help="K=V for an ARG (repeatable); K alone takes it from the environment.")
    @option("--target", help="Build up to this stage.")
    @flag("--no-cache", help="Do not use the layer cache.")
    @option("--compression", default="gzip",
            help="gzip, zstd, zstd:chunked (zstd with a file index, for delta pulls) or none.")
    @option("--platform", help="OS/ARCH of the base image.")
    @option("--network", default="none", help="Network for RUN: none or host.")
    @option("--snapshotter", default="auto", help="auto, overlay or walk.")
    @option("--secret", multiple=True,
            help="id=ID[,src=FILE|,env=VAR]: a secret for RUN --mount=type=secret "
                 "(repeatable; never stored).")
    @option("--ssh", multiple=True,
            help="ID[=SOCKET]: an ssh agent for RUN --mount=type=ssh (default: "
                 "$SSH_AUTH_SOCK; repeatable).")
    @flag("-q", "--quiet", help="Print only the image id.")
    @flag("--json", "json_", help="Print the result as JSON.")
    def build(context: Path, file: Path | None, tag: tuple[str, ...],
              build_arg: tuple[str, ...], target: str | None, no_cache: bool,
              compression: str, platform: str | None, network: str, snapshotter: str,
              secret: tuple[str, ...], ssh: tuple[str, ...], quiet: bool,
              json_: bool) -> None:
        """Build an image from a Containerfile, one layer per RUN, COPY and ADD."""
        import os

        from lamina.build.buildsecrets import parse_secret, parse_ssh
        from lamina.build.executor import BuildEvent, BuildOptions
        from lamina.build.executor import build as run_build
        from lamina.build.importer import source_date_epoch
        from lamina.cli.format import err, out, print_json
        from lamina.errors import InvalidInput
        from lamina.image.manifest import Platform
        from lamina.layer.options import COMPRESSIONS

        args: dict[str, str] = {}
        for item in build_arg or []:
            k, sep, v = item.partition("=")
            if not sep:
                if k not in os.environ:
                    continue
                v = os.environ[k]
            args[k] = v
        for name, value, allowed in (("compression", compression, COMPRESSIONS),
                                     ("network", network, ("none", "host")),
                                     ("snapshotter", snapshotter,
                                      ("auto", "overlay", "walk"))):
            if value not in allowed:
                raise InvalidInput(f"unknown {name} {value!r}: choose {', '.join(allowed)}")

        def on_event(event: BuildEvent) -> None:
            if event.kind == "note" and not quiet:
                err.print(event.text, markup=False)  # stderr: --json output stays JSON
            if quiet or json_ or event.kind == "note":
                return
            if event.kind == "step" or event.kind == "output":
                out.print(event.text, markup=False)
            elif event.kind in ("cache", "layer", "config"):
                out.print(f" {event.text}", markup=False)
            else:
                out.print(event.text, markup=False)

        opts = BuildOptions(
            context=context, containerfile=file, tags=tuple(tag or ()), build_args=args,
            target=target, no_cache=no_cache, compression=compression,  # type: ignore[arg-type]
            source_date_epoch=source_date_epoch(),
            platform=Platform.parse(platform) if platform else None,
            snapshotter=snapshotter, network=network,  # type: ignore[arg-type]
            on_event=on_event,
            secrets={s.id: s for s in map(parse_secret, secret or ())},
            ssh={s.id: s for s in map(parse_ssh, ssh or ())})
        with store_factory() as store:
            result = run_build(store, opts)
        if json_:
            print_json({"digest": str(result.manifest.digest), "id": str(result.config.digest),
                        "tags": list(result.tags), "layers": [str(d.digest)
                                                              for d in result.layers],
                        "new_layers": result.new_layers,
                        "cached_layers": result.cached_layers})
        elif quiet:
            out.print(str(result.config.digest))

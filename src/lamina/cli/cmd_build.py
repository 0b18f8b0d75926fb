"""``lamina build``: thin — parse options, call ``lamina.build.executor.build``, print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.format import out, print_json


def register(app: typer.Typer, store_factory: Callable[[], Any]) -> None:
    @app.command()
    def build(
        context: Annotated[Path, typer.Argument(help="Build context directory.")] = Path("."),
        file: Annotated[Path | None, typer.Option("-f", "--file",
                                                  help="Containerfile (default: "
                                                  "CONTEXT/Containerfile or Dockerfile).")
                        ] = None,
        tag: Annotated[list[str] | None, typer.Option("-t", "--tag", help="Name the image "
                                                      "NAME[:TAG] (repeatable).")] = None,
        build_arg: Annotated[list[str] | None, typer.Option(
            "--build-arg", help="K=V for an ARG (repeatable); K alone takes it from the "
            "environment.")] = None,
        target: Annotated[str | None, typer.Option(help="Build up to this stage.")] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use the layer "
                                               "cache.")] = False,
        compression: Annotated[str, typer.Option(help="gzip, zstd or none.")] = "gzip",
        platform: Annotated[str | None, typer.Option(help="OS/ARCH of the base image.")
                            ] = None,
        network: Annotated[str, typer.Option(help="Network for RUN: none or host.")] = "none",
        snapshotter: Annotated[str, typer.Option(help="auto, overlay or walk.")] = "auto",
        quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the image "
                                            "id.")] = False,
        json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")
                         ] = False,
    ) -> None:
        """Build an image from a Containerfile, one layer per RUN, COPY and ADD."""
        import os

        from lamina.build.executor import BuildEvent, BuildOptions
        from lamina.build.executor import build as run_build
        from lamina.build.importer import source_date_epoch
        from lamina.errors import InvalidInput
        from lamina.image.manifest import Platform

        args: dict[str, str] = {}
        for item in build_arg or []:
            k, sep, v = item.partition("=")
            if not sep:
                if k not in os.environ:
                    continue
                v = os.environ[k]
            args[k] = v
        for name, value, allowed in (("compression", compression, ("gzip", "zstd", "none")),
                                     ("network", network, ("none", "host")),
                                     ("snapshotter", snapshotter,
                                      ("auto", "overlay", "walk"))):
            if value not in allowed:
                raise InvalidInput(f"unknown {name} {value!r}: choose {', '.join(allowed)}")

        def on_event(event: BuildEvent) -> None:
            if quiet or json_:
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
            on_event=on_event)
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

"""``lamina rebase`` and ``lamina squash``: operations on an image's stack of layers.
Thin: parse, call ``lamina.build.rebase`` / ``lamina.build.squash``, print."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lamina.cli.format import argument, flag, option


def register(app: click.Group, store_factory: Callable[[], Any]) -> None:
    @app.command()
    @argument("image", help="Image in the store.")
    @option("--from", "first", kind=int, metavar="N",
            help="Merge layer N (1 = the bottom) and every layer above it.")
    @option("--last", kind=int, metavar="K", help="Merge the top K layers.")
    @flag("--all", "all_layers", help="Merge every layer: flatten the image to one layer.")
    @option("-t", "--tag", multiple=True,
            help="Name the result NAME[:TAG] (repeatable; default: IMAGE's own name).")
    @option("--compression", default="gzip",
            help="gzip, zstd, zstd:chunked or none, for the merged layer.")
    @option("--level", kind=int, help="Compression level.")
    @flag("--json", "json_", help="Print the result as JSON.")
    def squash(image: str, first: int | None, last: int | None, all_layers: bool,
               tag: tuple[str, ...], compression: str, level: int | None,
               json_: bool) -> None:
        """Merge consecutive layers into one; history entries are kept (the merged ones
        marked empty), whiteouts of lower layers survive, the same layers give the same
        bytes."""
        from lamina.build.squash import SquashOptions, squash_image
        from lamina.cli.format import human_size, print_json, say
        from lamina.errors import InvalidInput
        from lamina.layer.options import COMPRESSIONS

        if compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {compression!r}: "
                               f"choose {', '.join(COMPRESSIONS)}")
        opts = SquashOptions(first=first, last=last, all_layers=all_layers,
                             compression=compression, level=level,  # type: ignore[arg-type]
                             tags=tag)
        with store_factory() as store:
            result = squash_image(store, image, opts)
        if json_:
            print_json({"digest": str(result.manifest.digest), "id": str(result.config.digest),
                        "layer": str(result.layer.digest), "diff_id": str(result.diff_id),
                        "squashed": [result.first, result.last], "layers": result.layers,
                        "tags": list(result.names)})
            return
        say(f"Squashed layers {result.first}..{result.last} into "
            f"{result.layer.digest.short} ({human_size(result.layer.size)}); "
            f"{result.layers} layers now")
        for name in result.names:
            from lamina.image.reference import Reference

            say(f"Tagged {Reference.parse(name).familiar}")
        say(f"Digest: {result.manifest.digest}")
        say(f"Image ID: {result.config.digest}")




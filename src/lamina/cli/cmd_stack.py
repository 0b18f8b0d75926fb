"""``lamina rebase`` and ``lamina squash``: operations on an image's stack of layers.
Thin: parse, call ``lamina.build.rebase`` / ``lamina.build.squash``, print."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lamina.cli.format import argument, flag, option


def register(app: click.Group, store_factory: Callable[[], Any]) -> None:
    from lamina.cli.cmd_transfer import ca_option, insecure_flag

    @app.command()
    @argument("image", help="The image: a store reference, docker://REF, oci:DIR[:TAG].")
    @option("--old-base", metavar="OLD",
            help="The base IMAGE was built on (default: IMAGE's base annotations).")
    @option("--new-base", metavar="NEW",
            help="The base to put under it (default: the recorded base's name, now).")
    @option("-t", "--tag", metavar="DEST",
            help="Where the result goes, same forms as IMAGE (default: IMAGE itself).")
    @option("--platform", help="OS/ARCH to pick from an index.")
    @insecure_flag
    @ca_option
    @flag("-q", "--quiet", help="Print only the new digest.")
    @flag("--json", "json_", help="Print the result as JSON.")
    def rebase(image: str, old_base: str | None, new_base: str | None, tag: str | None,
               platform: str | None, insecure: bool, ca_bundle: Any, quiet: bool,
               json_: bool) -> None:
        """Move IMAGE from its old base onto a new one: its own layers are kept (the same
        blobs), the base's layers, history and inherited config are the new base's.
        Inside one registry no layer moves: they are mounted."""
        from lamina.build.rebase import RebaseOptions
        from lamina.build.rebase import rebase as run_rebase
        from lamina.cli.format import print_json, say
        from lamina.image.manifest import Platform
        from lamina.transport.registry import RegistryOptions

        opts = RebaseOptions(image, old_base, new_base, tag,
                             RegistryOptions(insecure=insecure, ca_bundle=ca_bundle),
                             Platform.parse(platform) if platform else None)
        with store_factory() as store:
            r = run_rebase(store, opts)
        if json_:
            print_json({"digest": str(r.manifest.digest), "id": str(r.config.digest),
                        "destination": r.destination.text, "names": list(r.names),
                        "old_base": r.old_base, "new_base": r.new_base,
                        "replaced_layers": r.replaced, "new_base_layers": r.inserted,
                        "kept_layers": r.kept, "blobs_moved": r.moved,
                        "blobs_mounted": r.mounted, "blobs_present": r.present})
            return
        if quiet:
            say(str(r.manifest.digest))
            return
        from lamina.image.reference import Reference

        say(f"Rebased {image} from {r.old_base} onto {r.new_base}")
        say(f"Base: {_n(r.replaced, 'layer')} replaced by {r.inserted}; "
            f"{_n(r.kept, 'layer')} of the image kept (same blobs)")
        mounted = f", {r.mounted} mounted" if r.mounted else ""
        say(f"Blobs: {r.moved} written{mounted}, {r.present} already there")
        for name in r.names:
            say(f"Tagged {Reference.parse(name).familiar}")
        say(f"Digest: {r.manifest.digest}")

    @app.command()
    @argument("image", help="The image: a store reference, docker://REF, oci:DIR[:TAG], "
                            "oci-archive:PATH[:TAG], docker-archive:PATH.")
    @option("--from", "first", kind=int, metavar="N",
            help="Merge layer N (1 = the bottom) and every layer above it.")
    @option("--last", kind=int, metavar="K", help="Merge the top K layers.")
    @flag("--all", "all_layers", help="Merge every layer: flatten the image to one layer.")
    @option("-t", "--tag", multiple=True, metavar="DEST",
            help="Name the result NAME[:TAG] in the store (repeatable), or write it to one "
                 "place, same forms as IMAGE (default: IMAGE's own name and place).")
    @option("--compression", default="gzip",
            help="gzip, zstd, zstd:chunked or none, for the merged layer.")
    @option("--level", kind=int, help="Compression level.")
    @option("--platform", help="OS/ARCH to pick from an index (IMAGE not in the store).")
    @insecure_flag
    @ca_option
    @flag("--json", "json_", help="Print the result as JSON.")
    def squash(image: str, first: int | None, last: int | None, all_layers: bool,
               tag: tuple[str, ...], compression: str, level: int | None,
               platform: str | None, insecure: bool, ca_bundle: Any, json_: bool) -> None:
        """Merge consecutive layers into one; history entries are kept (the merged ones
        marked empty), whiteouts of lower layers survive, the same layers give the same
        bytes.  Between places only the merged layer is new: the others are copied as
        blobs (mounted inside one registry)."""
        from lamina.build.placeio import Reach
        from lamina.build.squash import SquashOptions, squash_image
        from lamina.cli.format import human_size, print_json, say
        from lamina.errors import InvalidInput
        from lamina.image.manifest import Platform
        from lamina.layer.options import COMPRESSIONS
        from lamina.transport.registry import RegistryOptions

        if compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {compression!r}: "
                               f"choose {', '.join(COMPRESSIONS)}")
        opts = SquashOptions(first=first, last=last, all_layers=all_layers,
                             compression=compression, level=level,  # type: ignore[arg-type]
                             tags=tag, reach=Reach(RegistryOptions(insecure=insecure,
                                                                   ca_bundle=ca_bundle)),
                             platform=Platform.parse(platform) if platform else None)
        with store_factory() as store:
            result = squash_image(store, image, opts)
        dest = result.destination
        if json_:
            doc = {"digest": str(result.manifest.digest), "id": str(result.config.digest),
                   "layer": str(result.layer.digest), "diff_id": str(result.diff_id),
                   "squashed": [result.first, result.last], "layers": result.layers,
                   "tags": list(result.names)}
            if dest is not None:
                doc.update({"destination": dest.text, "blobs_moved": result.moved,
                            "blobs_mounted": result.mounted, "blobs_present": result.present})
            print_json(doc)
            return
        say(f"Squashed layers {result.first}..{result.last} into "
            f"{result.layer.digest.short} ({human_size(result.layer.size)}); "
            f"{_n(result.layers, 'layer')} now")
        if dest is not None:
            mounted = f", {result.mounted} mounted" if result.mounted else ""
            say(f"Wrote to {dest.text}: blobs {result.moved} written{mounted}, "
                f"{result.present} already there")
        for name in result.names:
            from lamina.image.reference import Reference

            say(f"Tagged {Reference.parse(name).familiar}")
        say(f"Digest: {result.manifest.digest}")
        say(f"Image ID: {result.config.digest}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"

"""``lamina image prune`` and ``lamina system prune``, as Docker's: a warning and a
confirmation (``-f`` skips it), what went, and ``Total reclaimed space``.  The removal
is the store's gc (``lamina.store.gc.collect``) after the image records go."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from lamina.cli.format import Group, flag

if TYPE_CHECKING:
    from lamina.inspect.remove import PruneReport
    from lamina.store.gc import GcReport
    from lamina.store.store import Store

FORCE_HELP = "Do not prompt for confirmation."


def _confirm(lines: list[str], force: bool) -> bool:
    if force:
        return True
    click.echo("WARNING! This will remove:" if len(lines) > 1 else f"WARNING! {lines[0]}")
    if len(lines) > 1:
        for line in lines:
            click.echo(f"  - {line}")
        click.echo()
    try:
        return click.confirm("Are you sure you want to continue?", default=False)
    except click.Abort:
        if sys.stdin is not None and sys.stdin.isatty():
            raise   # Ctrl-C at the prompt: click's own "Aborted!"
        # End of input with no answer (a script, no terminal): one lamina line saying
        # how to prune without asking, not click's bare "Aborted!" (as login, #10.18).
        from lamina.errors import InvalidInput

        raise InvalidInput("no answer to the confirmation (no terminal): nothing removed; "
                           "give -f to prune without asking") from None


def _show(report: PruneReport) -> None:
    from lamina.cli.format import say

    if report.untagged or report.deleted:
        say("Deleted Images:")
        for name in report.untagged:
            say(f"untagged: {name}")
        for digest in report.deleted:
            say(f"deleted: {digest}")
        say("")
    _show_gc(report.gc)


def _show_gc(gc: GcReport) -> None:
    from lamina.cli.format import human_size, say

    if gc.cache_removed or gc.cache_mounts_removed:
        say(f"Deleted build cache objects: {gc.cache_removed}")
        for ident in gc.cache_mounts_removed:
            say(f"deleted cache mount: {ident}")
        say("")
    say(f"Total reclaimed space: {human_size(gc.bytes_freed)}")


def _open_to_free() -> Store:
    """The store as `lamina gc` opens it, so a prune works on a full file system too
    (store.gc.open_to_collect)."""
    from lamina.cli.main import store_root
    from lamina.store.gc import open_to_collect

    return open_to_collect(store_root())


def register(app: click.Group, store_factory: Callable[[], Store]) -> None:
    @app.group(cls=Group, no_args_is_help=True)
    def image() -> None:
        """Manage images (image prune)."""

    @image.command("prune")
    @flag("-a", "--all", "all_images",
          help="Remove every image no container uses, not only dangling ones.")
    @flag("-f", "--force", help=FORCE_HELP)
    def image_prune(all_images: bool, force: bool) -> None:
        """Remove dangling images (untagged, held by no tagged image), then the blobs and
        snapshots nothing reaches any more."""
        from lamina.inspect.remove import prune_images

        what = ("This will remove all images without at least one container associated "
                "to them." if all_images else "This will remove all dangling images.")
        if not _confirm([what], force):
            return
        with _open_to_free() as store:
            _show(prune_images(store, all_images=all_images))

    @app.group(cls=Group, no_args_is_help=True)
    def system() -> None:
        """Manage the store as a whole (system prune)."""

    @system.command("prune")
    @flag("-a", "--all", "all_images", help="Remove every image and all build cache, not "
                                            "only dangling images and cache.")
    @flag("-f", "--force", help=FORCE_HELP)
    def system_prune(all_images: bool, force: bool) -> None:
        """Remove dangling images and what no image reaches (blobs, snapshots, debris of
        killed runs); with -a every image and all build cache (as `gc --cache`)."""
        from lamina.inspect.remove import prune_images
        from lamina.run.rootfs import sweep_stale

        lines = ["all images" if all_images else "all dangling images",
                 "blobs and snapshots no image reaches, and what killed runs left",
                 *(["all build cache"] if all_images else [])]
        if not _confirm(lines, force):
            return
        with _open_to_free() as store:
            stale = sweep_stale(store)  # as `lamina gc`: rootfs dirs, mounts of killed runs
            report = prune_images(store, all_images=all_images, cache=all_images)
            report.gc.add_temp(*stale)
            _show(report)

    @app.group(cls=Group, no_args_is_help=True)
    def builder() -> None:
        """Manage the build cache (builder prune)."""

    @builder.command("prune")
    @flag("-a", "--all", "everything",
          help="Remove all build cache, not only the layers no image uses.")
    @flag("-f", "--force", help=FORCE_HELP)
    def builder_prune(everything: bool, force: bool) -> None:
        """Remove build cache: every cache mount (RUN --mount=type=cache) no build is
        using, and cached layers no image uses (with -a, all cached layers)."""
        from lamina.store.gc import prune_build

        what = ("This will remove all build cache." if everything
                else "This will remove all dangling build cache.")
        if not _confirm([what], force):
            return
        with _open_to_free() as store:
            _show_gc(prune_build(store, everything))

"""The ``lamina`` command: parse, call one library function, print.

Errors from the library are ``LaminaError``s: printed as one line, ``lamina: <message>``,
with the error's exit code; no traceback (set ``LAMINA_DEBUG=1`` to see one).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.format import err, human_age, human_size, out, print_json, table
from lamina.errors import LaminaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="lamina: build, store, move, explain and run layered container images.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"root": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.callback()
def _main(
    root: Annotated[Path | None, typer.Option("--root", envvar="LAMINA_ROOT",
                                              help="Store directory (default: XDG data dir).")]
    = None,
) -> None:
    _state["root"] = root


def _store() -> Any:
    from lamina.store import Store

    return Store(_state["root"])


def _epoch() -> int | None:
    from lamina.build.importer import source_date_epoch

    return source_date_epoch()


# -- import / load / save -------------------------------------------------------------
@app.command("import")
def import_(
    ref: Annotated[str, typer.Argument(help="Name for the image: NAME[:TAG].")],
    sources: Annotated[list[Path], typer.Argument(
        help="Directories or tars: successive full snapshots of one root.")],
    compression: Annotated[str, typer.Option(help="gzip, zstd or none.")] = "gzip",
    json_: JsonOpt = False,
) -> None:
    """Make an image from snapshots of a root: layer i holds what changed from SRC i-1."""
    from lamina.build.importer import ImportOptions, import_snapshots
    from lamina.errors import InvalidInput

    if compression not in ("gzip", "zstd", "none"):
        raise InvalidInput(f"unknown compression {compression!r}: choose gzip, zstd or none")

    def on_layer(i: int, n: int, desc: Any, created_by: str) -> None:
        if not json_:
            out.print(f"Layer {i + 1}/{n}: {desc.digest.short}  {human_size(desc.size):>8}  "
                      f"{created_by}")

    with _store() as store:
        result = import_snapshots(store, ref, sources, ImportOptions(
            compression=compression, source_date_epoch=_epoch(),  # type: ignore[arg-type]
            on_layer=on_layer))
    if json_:
        print_json({"reference": str(result.reference), "digest": str(result.manifest.digest),
                    "id": str(result.config.digest),
                    "layers": [{"digest": str(d.digest), "diff_id": str(i), "size": d.size}
                               for d, i in zip(result.layers, result.diff_ids, strict=True)]})
        return
    out.print(f"Imported {result.reference.familiar}")
    out.print(f"Digest: {result.manifest.digest}")
    out.print(f"Image ID: {result.config.digest}")


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="docker save archive or OCI layout (dir or tar).")],
    name: Annotated[str | None, typer.Option("--name", help="Name for images the archive "
                                             "does not name.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Load images from a docker archive or an OCI layout into the store."""
    from lamina.cli.progress import blob_progress
    from lamina.transport.archive import load_archive

    with _store() as store, blob_progress("Loading") as on_event:
        loaded = load_archive(store, path, name, on_event)
    if json_:
        print_json([{"reference": x.name, "digest": str(x.descriptor.digest), "id": x.image_id}
                    for x in loaded])
        return
    from lamina.image.reference import Reference

    for x in loaded:
        if x.name:
            out.print(f"Loaded image: {Reference.parse(x.name).familiar}")
        else:
            out.print(f"Loaded image ID: {x.image_id or x.descriptor.digest}")


@app.command()
def save(
    refs: Annotated[list[str], typer.Argument(help="Images to save.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write.")],
    format_: Annotated[str, typer.Option("--format", help="docker-archive (default), "
                                         "docker-oci-archive, oci-archive or oci (a directory)."
                                         )] = "docker-archive",
    platform: Annotated[str | None, typer.Option(help="OS/ARCH to pick from an index.")] = None,
) -> None:
    """Save images to a docker archive, an OCI archive or an OCI layout directory."""
    from lamina.errors import InvalidInput
    from lamina.image.manifest import Platform
    from lamina.transport.archive import FORMATS, save_images

    if format_ not in FORMATS:
        raise InvalidInput(f"unknown format {format_!r}: choose one of {', '.join(FORMATS)}")
    from lamina.cli.progress import blob_progress

    with _store() as store, blob_progress("Saving") as on_event:
        save_images(store, refs, output, format_,  # type: ignore[arg-type]
                    Platform.parse(platform) if platform else None, on_event)


# -- unpack / export -------------------------------------------------------------------
@app.command()
def unpack(
    ref: Annotated[str, typer.Argument(help="Image in the store.")],
    target: Annotated[Path, typer.Argument(help="Empty or new directory.")],
    platform: Annotated[str | None, typer.Option(help="OS/ARCH to pick from an index.")] = None,
) -> None:
    """Apply an image's layers, in order, onto a directory (its root filesystem)."""
    from lamina.image.manifest import Platform
    from lamina.run.unpack import unpack_image
    from lamina.transport.local import StoreTransport

    with _store() as store:
        source = StoreTransport(store)
        desc = source.resolve(ref)
        image = unpack_image(source, desc, target, Platform.parse(platform) if platform else None)
    out.print(f"Unpacked {len(image.manifest.layers)} layers of {image.image_id[7:19]} "
              f"into {target}")


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="Image in the store.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Tar file to write.")],
) -> None:
    """Write an image's flattened root filesystem as one tar."""
    from lamina.run.unpack import export_image
    from lamina.transport.local import StoreTransport

    with _store() as store:
        source = StoreTransport(store)
        export_image(source, source.resolve(ref), output, store.root / "tmp")


# -- listing and inspecting -------------------------------------------------------------
@app.command()
def images(json_: JsonOpt = False) -> None:
    """List images in the store."""
    from lamina.inspect.summary import list_images

    with _store() as store:
        rows = list_images(store)
    if json_:
        print_json([r.to_json() for r in rows])
        return
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "LAYERS"],
          [[r.repository, r.tag, r.image_id.split(":", 1)[1][:12], human_age(r.created),
            human_size(r.size), str(r.layers)] for r in rows])


@app.command()
def inspect(
    refs: Annotated[list[str], typer.Argument(help="Images in the store.")],
) -> None:
    """Show images' config and manifest as JSON."""
    from lamina.inspect.summary import inspect_document
    from lamina.transport.local import StoreTransport
    from lamina.transport.resolve import resolve_image

    docs = []
    with _store() as store:
        source = StoreTransport(store)
        for ref in refs:
            desc = source.resolve(ref)
            image = resolve_image(source, desc)
            docs.append(inspect_document(source, image, store.meta.tags_for(str(desc.digest))))
    print_json(docs)


# -- names and deletion -------------------------------------------------------------------
@app.command()
def tag(
    source_ref: Annotated[str, typer.Argument(metavar="SOURCE")],
    target_ref: Annotated[str, typer.Argument(metavar="TARGET")],
) -> None:
    """Give an image another name."""
    from lamina.image.reference import Reference
    from lamina.transport.local import StoreTransport

    target = Reference.parse(target_ref)
    if target.digest is not None:
        from lamina.errors import InvalidReference

        raise InvalidReference(f"cannot tag with a digest: {target_ref}")
    with _store() as store:
        desc = StoreTransport(store).resolve(source_ref)
        store.meta.set_tag(str(target), str(desc.digest), desc.media_type)


@app.command()
def rmi(
    refs: Annotated[list[str], typer.Argument(help="Images to remove.")],
    force: Annotated[bool, typer.Option("-f", "--force", help="Remove an image id named in "
                                        "several repositories.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Untag images; delete those left without a name, and the blobs only they used."""
    from lamina.inspect.remove import remove_images

    with _store() as store:
        report = remove_images(store, refs, force)
    if json_:
        print_json({"untagged": report.untagged, "deleted": report.deleted})
        return
    for name in report.untagged:
        out.print(f"Untagged: {name}")
    for digest in report.deleted:
        out.print(f"Deleted: {digest}")


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    cache: Annotated[bool, typer.Option("--cache", help="Also clear the build cache.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Remove blobs and snapshots no tag, image or live lease reaches."""
    from lamina.run.rootfs import sweep_stale
    from lamina.store.gc import collect

    with _store() as store:
        if not dry_run:
            sweep_stale(store)  # container dirs and mounts left by killed processes
        report = collect(store, dry_run=dry_run, cache=cache)
    if json_:
        print_json({"blobs_removed": report.blobs_removed, "bytes_freed": report.bytes_freed,
                    "snapshots_removed": report.snapshots_removed,
                    "ingest_removed": report.ingest_removed,
                    "cache_removed": report.cache_removed, "dry_run": dry_run})
        return
    verb = "Would remove" if dry_run else "Removed"
    for d in report.blobs_removed:
        out.print(f"{verb} blob {d}")
    out.print(f"{verb} {len(report.blobs_removed)} blobs, {len(report.snapshots_removed)} "
              f"snapshots, {report.cache_removed} cache entries; "
              f"{'would free' if dry_run else 'freed'} "
              f"{human_size(report.bytes_freed)}")


@app.command()
def fsck(
    repair: Annotated[bool, typer.Option("--repair", help="Remove what is corrupt or dangling."
                                         )] = False,
    json_: JsonOpt = False,
) -> None:
    """Re-hash every blob; report corrupt blobs and references to missing content."""
    from lamina.store.fsck import check

    with _store() as store:
        report = check(store, repair=repair)
    if json_:
        print_json({"blobs_checked": report.blobs_checked, "corrupt": report.corrupt,
                    "dangling": report.dangling, "repaired": report.repaired,
                    "clean": report.clean})
    else:
        for d in report.corrupt:
            out.print(f"corrupt blob {d}")
        for p in report.dangling:
            out.print(p)
        for r in report.repaired:
            out.print(f"repaired: {r}")
        state = "clean" if report.clean else (
            "repaired" if repair else f"{len(report.corrupt) + len(report.dangling)} problems")
        out.print(f"checked {report.blobs_checked} blobs: {state}")
    if not report.clean and not repair:
        raise typer.Exit(1)


def _register_more() -> None:
    """Commands that live in modules of their own (each with ``register(app)``)."""
    import importlib

    for name in ("lamina.cli.cmd_run", "lamina.cli.cmd_build", "lamina.cli.cmd_transfer",
                 "lamina.cli.cmd_inspect", "lamina.cli.cmd_serve"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(app, _store)


_register_more()


def main() -> None:
    """Entry point.  Usage errors are typer's (exit 2, with usage); library errors are
    one line here."""
    debug = bool(os.environ.get("LAMINA_DEBUG"))
    try:
        app()
    except LaminaError as e:
        if debug:
            raise
        err.print(f"lamina: {e}", markup=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("lamina: interrupted")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        if e.errno == errno.ENOSPC:
            err.print("lamina: no space left on device", markup=False)
        else:
            where = f": {e.filename}" if e.filename else ""
            err.print(f"lamina: {e.strerror or e}{where}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

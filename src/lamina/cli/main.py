"""The ``lamina`` command: parse, call one library function, print.

Errors from the library are ``LaminaError``s: printed as one line, ``lamina: <message>``,
with the error's exit code; no traceback (set ``LAMINA_DEBUG=1`` to see one).

Plain click (typer 0.29 cost ~0.3 s of CPU per run: pydantic adapters and the signatures
of every command); the parameters and help pages are ``lamina.cli.format``'s.  Every
command imports what it needs inside its function, so ``lamina images`` loads click, the
store and little else.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from lamina.cli.cmd_transfer import dest_format_option, dest_level_option
from lamina.cli.format import (
    Group,
    argument,
    flag,
    human_age,
    human_size,
    option,
    print_json,
    say,
    table,
)
from lamina.cli.limits import expansion_option
from lamina.errors import LaminaError

_state: dict[str, Any] = {"root": None}

json_flag = flag("--json", "json_", help="Print JSON for scripts.")


@click.group(cls=Group, no_args_is_help=True,
             help="lamina: build, store, move, explain and run layered container images.",
             context_settings={"help_option_names": ["-h", "--help"]})
@option("--root", kind=Path, envvar="LAMINA_ROOT",
        help="Store directory (default: XDG data dir).")
# From the installed package's metadata (importlib.metadata), read only when asked.
@click.version_option(None, "--version", package_name="lamina", prog_name="lamina",
                      message="%(prog)s version %(version)s", help="Print the version.")
def app(root: Path | None) -> None:
    _state["root"] = root


def _store() -> Any:
    from lamina.store import Store

    return Store(_state["root"])


def store_root() -> Path | None:
    """The store directory ``--root`` (or LAMINA_ROOT) named; None: the default."""
    root: Path | None = _state["root"]
    return root


def _epoch() -> int | None:
    from lamina.build.importer import source_date_epoch

    return source_date_epoch()


# -- import / load / save -------------------------------------------------------------
@app.command("import")
@argument("ref", help="Name for the image: NAME[:TAG].")
@argument("sources", kind=Path, nargs=-1, required=True,
          help="Directories or tars: successive full snapshots of one root.")
@option("--compression", default="gzip",
        help="gzip, zstd, zstd:chunked (a zstd layer with a file index, for delta pulls) or none.")
@flag("--checksum", help="Compare the content of every file, not only where times may be "
      "truncated (slower).")
@json_flag
def import_(ref: str, sources: tuple[Path, ...], compression: str, checksum: bool,
            json_: bool) -> None:
    """Make an image from snapshots of a root: layer i holds what changed from SRC i-1."""
    from lamina.build.importer import ImportOptions, import_snapshots
    from lamina.cli.format import out
    from lamina.errors import InvalidInput
    from lamina.layer.options import COMPRESSIONS

    if compression not in COMPRESSIONS:
        raise InvalidInput(f"unknown compression {compression!r}: "
                           f"choose {', '.join(COMPRESSIONS)}")

    def on_layer(i: int, n: int, desc: Any, created_by: str) -> None:
        if not json_:
            out.print(f"Layer {i + 1}/{n}: {desc.digest.short}  {human_size(desc.size):>8}  "
                      f"{created_by}")

    with _store() as store:
        result = import_snapshots(store, ref, list(sources), ImportOptions(
            compression=compression, source_date_epoch=_epoch(),  # type: ignore[arg-type]
            on_layer=on_layer, checksum=checksum))
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
@argument("path", kind=Path, required=False,
          help="docker save archive or OCI layout (dir or tar); none: the tar on stdin.")
@option("-i", "--input", "input_", kind=Path, help="The archive (as docker load -i).")
@option("--name", help="Name for images the archive does not name.")
@expansion_option
@json_flag
def load(path: Path | None, input_: Path | None, name: str | None, json_: bool) -> None:
    """Load images from a docker archive or an OCI layout into the store (from stdin
    when none is named, as `docker load`: `lamina save IMAGE | ssh host lamina load`)."""
    from lamina.cli.format import out
    from lamina.cli.progress import blob_progress
    from lamina.errors import InvalidInput
    from lamina.store import scratch
    from lamina.transport.archive import load_archive

    if path is not None and input_ is not None and path != input_:
        raise InvalidInput("name the archive once: PATH or -i, not both")
    path = path or input_
    if path is None and sys.stdin.isatty():
        raise InvalidInput("name an archive (PATH or -i PATH) or pipe one in "
                           "(lamina save IMAGE | lamina load)")
    with _store() as store, blob_progress("Loading") as on_event:
        if path is not None:
            loaded = load_archive(store, path, name, on_event)
        else:
            # A tar is read twice (its index first): spooled to the store's scratch
            # space, which gc sweeps should this be killed midway.
            with scratch.make_file(store.root / "tmp", "stdin-") as spool:
                _copy_stream(sys.stdin.buffer.fileno(), spool.path)
                loaded = load_archive(store, spool.path, name, on_event)
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
@argument("refs", nargs=-1, required=True, help="Images to save.")
@option("-o", "--output", kind=Path,
        help="Where to write; none: stdout (an archive format, not a terminal).")
@option("--format", "format_",
        help="docker-archive (default), docker-oci-archive, oci-archive (the default "
             "with --exclude) or oci (a directory).")
@option("--platform", help="OS/ARCH to pick from an index.")
@option("--exclude", multiple=True,
        help="Leave out the layers the reader has: an inventory file (`lamina inventory` "
             "there) or an image of this store; repeatable.")
@dest_format_option
@dest_level_option
def save(refs: tuple[str, ...], output: Path | None, format_: str | None,
         platform: str | None, exclude: tuple[str, ...], dest_format: str | None,
         dest_level: int | None) -> None:
    """Save images to a docker archive, an OCI archive or an OCI layout directory
    (to stdout without -o, as `docker save`)."""
    from lamina.cli.cmd_transfer import conversion
    from lamina.errors import InvalidInput
    from lamina.image.manifest import Platform
    from lamina.store import scratch
    from lamina.transport.archive import FORMATS, save_images

    format_ = format_ or ("oci-archive" if exclude else "docker-archive")
    if format_ not in FORMATS:
        raise InvalidInput(f"unknown format {format_!r}: choose one of {', '.join(FORMATS)}")
    if output is None and format_ == "oci":
        raise InvalidInput("an OCI layout is a directory: name it with -o")
    if output is None and sys.stdout.isatty():
        # docker save's words: an archive on a terminal helps nobody.
        raise InvalidInput("cowardly refusing to write an archive to a terminal: use -o "
                           "or redirect")
    from lamina.cli.progress import blob_progress

    with _store() as store, blob_progress("Saving") as on_event:
        def write(to: Path) -> Any:
            return save_images(store, list(refs), to, format_,  # type: ignore[arg-type]
                               Platform.parse(platform) if platform else None, on_event,
                               conversion(dest_format, dest_level), exclude)

        if output is not None:
            saved = write(output)
        else:
            # The archive is written whole first (its writer renames it into place),
            # then streamed out; the scratch space is gc's should this be killed.
            with scratch.make_dir(store.root / "tmp", "stdout-") as spool:
                saved = write(spool.path / "archive.tar")
                _copy_stream(spool.path / "archive.tar", sys.stdout.buffer.fileno())
    if exclude:
        n = len(saved.omitted)
        say(f"Left out {n} layer{'' if n == 1 else 's'} the reader has "
            f"({human_size(sum(d.size for d in saved.omitted))})", sys.stderr)


def _copy_stream(source: Path | int, dest: Path | int) -> None:
    """Bytes from a file or descriptor to a file or descriptor, in 1 MiB reads."""
    import shutil

    with (open(source, "rb", closefd=isinstance(source, Path)) as src,
          open(dest, "wb", closefd=isinstance(dest, Path)) as dst):
        shutil.copyfileobj(src, dst, 1 << 20)


# -- unpack / export -------------------------------------------------------------------
@app.command()
@argument("ref", help="Image in the store.")
@argument("target", kind=Path, help="Empty or new directory.")
@option("--platform", help="OS/ARCH to pick from an index.")
@expansion_option
def unpack(ref: str, target: Path, platform: str | None) -> None:
    """Apply an image's layers, in order, onto a directory (its root filesystem)."""
    from lamina.cli.format import out
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
@argument("ref", help="Image in the store.")
@option("-o", "--output", kind=Path, required=True, help="Tar file to write.")
def export(ref: str, output: Path) -> None:
    """Write an image's flattened root filesystem as one tar."""
    from lamina.run.unpack import export_image
    from lamina.transport.local import StoreTransport

    with _store() as store:
        source = StoreTransport(store)
        export_image(source, source.resolve(ref), output, store.root / "tmp")


# -- listing and inspecting -------------------------------------------------------------
IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID",
                 "Digest": "DIGEST", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                 "Size": "SIZE", "CompressedSize": "COMPRESSED", "Layers": "LAYERS"}


@app.command()
@argument("repository", required=False,
          help="Only this REPOSITORY[:TAG] (a glob, as --filter reference=).")
@flag("-q", "--quiet", help="Only image IDs (each once).")
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="dangling=true|false, reference=GLOB, before=IMAGE, since=IMAGE, "
             "label=KEY[=VALUE]; repeatable.")
@option("--format", "format_", metavar="TEMPLATE",
        help="Go-template-like, as Docker's: {{.Repository}} {{.Tag}} {{.ID}} {{.Digest}} "
             "{{.CreatedSince}} {{.CreatedAt}} {{.Size}} {{.CompressedSize}} {{.Layers}}; "
             "'table ...' for a header and aligned columns; 'json' for one object a line.")
@flag("--no-trunc", help="Full image IDs.")
@json_flag
def images(repository: str | None, quiet: bool, filters: tuple[str, ...],
           format_: str | None, no_trunc: bool, json_: bool) -> None:
    """List images in the store.  SIZE is the layers uncompressed (as Docker's SIZE);
    COMPRESSED is the bytes stored and moved (config and compressed layers)."""
    from lamina.cli.template import Format
    from lamina.inspect.filters import filter_images, parse_filters
    from lamina.inspect.summary import list_images

    # docker images REPOSITORY[:TAG] is its reference filter
    wanted = parse_filters([*filters, *([f"reference={repository}"] if repository else [])])
    fmt = Format.parse(format_) if format_ else None  # a bad template fails before work
    with _store() as store:
        rows = filter_images(store, list_images(store), wanted)
    if json_:
        print_json([r.to_json() for r in rows])
        return

    def short(r: Any) -> str:
        return str(r.image_id) if no_trunc else r.image_id.split(":", 1)[1][:12]

    if quiet:
        for image_id in dict.fromkeys(short(r) for r in rows):
            say(image_id)
        return
    if fmt is not None:
        from lamina.cli.format import parse_time

        def fields(r: Any) -> dict[str, Any]:
            t = parse_time(r.created)
            return {"Repository": r.repository, "Tag": r.tag, "ID": short(r),
                    "Digest": r.digest, "CreatedSince": human_age(r.created),
                    "CreatedAt": t.strftime("%Y-%m-%d %H:%M:%S %z %Z") if t else "N/A",
                    "Size": _size(r.unpacked_size), "CompressedSize": human_size(r.size),
                    "Layers": r.layers}

        for line in fmt.lines([fields(r) for r in rows], IMAGE_HEADERS):
            say(line)
        return
    table([IMAGE_HEADERS[k] for k in ("Repository", "Tag", "ID", "CreatedSince", "Size",
                                      "CompressedSize", "Layers")],
          [[r.repository, r.tag, short(r), human_age(r.created), _size(r.unpacked_size),
            human_size(r.size), str(r.layers)] for r in rows])


def _size(n: int | None) -> str:
    return "N/A" if n is None else human_size(n)


@app.command()
@argument("refs", nargs=-1, required=True, help="Images in the store.")
@option("-f", "--format", "format_", metavar="TEMPLATE",
        help="Go-template-like, as Docker's: {{.Id}}, {{.Config.Env}}, {{json .Config}}, "
             "{{index .RepoTags 0}}; one line per image.")
def inspect(refs: tuple[str, ...], format_: str | None) -> None:
    """Show containers' state and settings, or images' config and manifest, as JSON."""
    from lamina.cli.cmd_containers import container_documents
    from lamina.inspect.summary import inspect_document
    from lamina.transport.local import StoreTransport
    from lamina.transport.resolve import resolve_image

    docs: list[Any] = []
    with _store() as store:
        source = StoreTransport(store)
        # Containers first, as podman inspect looks (names and ids of both kinds).
        docs = container_documents(store, refs) or []
        for ref in refs if not docs else ():
            desc = source.resolve(ref)
            image = resolve_image(source, desc)
            docs.append(inspect_document(source, image, store.meta.tags_for(str(desc.digest))))
    if format_ is not None:
        from lamina.cli.template import Format

        # The image config's fields (OCI image-spec config.md "config"), which a config
        # may leave out: {{.Config.Env}} of an image without one is "<no value>".
        config_fields = frozenset((
            "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
            "Labels", "StopSignal", "ArgsEscaped", "Memory", "MemorySwap", "CpuShares",
            "Healthcheck", "OnBuild", "Shell", "Hostname", "Domainname", "Image"))
        for line in Format.parse(format_).lines(docs, {}, {("Config",): config_fields}):
            say(line)
        return
    print_json(docs)


# -- names and deletion -------------------------------------------------------------------
@app.command()
@argument("source_ref", metavar="SOURCE")
@argument("target_ref", metavar="TARGET")
def tag(source_ref: str, target_ref: str) -> None:
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
@argument("refs", nargs=-1, required=True, help="Images to remove.")
@flag("-f", "--force", help="Remove an image id named in several repositories.")
@json_flag
def rmi(refs: tuple[str, ...], force: bool, json_: bool) -> None:
    """Untag images; delete those left without a name, and the blobs only they used."""
    from lamina.cli.format import out
    from lamina.inspect.remove import remove_images

    with _store() as store:
        report = remove_images(store, list(refs), force)
    if json_:
        print_json({"untagged": report.untagged, "deleted": report.deleted})
        return
    for name in report.untagged:
        out.print(f"Untagged: {name}")
    for digest in report.deleted:
        out.print(f"Deleted: {digest}")


@app.command()
@flag("--dry-run", help="Only report.")
@flag("--cache", help="Also drop the build cache (kept otherwise).")
@json_flag
def gc(dry_run: bool, cache: bool, json_: bool) -> None:
    """Remove blobs and snapshots no tag, image, live lease or cached build step reaches,
    and the temporary files of killed processes."""
    from lamina.cli.format import out
    from lamina.run.rootfs import sweep_stale
    from lamina.store.gc import collect, open_to_collect

    with open_to_collect(store_root(), dry_run) as store:
        # rootfs dirs and mounts left by killed processes; a dry run counts them alike
        stale = sweep_stale(store, dry_run=dry_run)
        from lamina.run.containers import sweep

        # Containers whose monitor was killed: recorded as exited (--rm ones removed), as
        # ps would; a dry run too, or it would count their snapshots as kept (issue 12).
        sweep(store)
        report = collect(store, dry_run=dry_run, cache=cache)
        report.add_temp(*stale)
    if json_:
        print_json({"blobs_removed": report.blobs_removed, "bytes_freed": report.bytes_freed,
                    "snapshots_removed": report.snapshots_removed,
                    "ingest_removed": report.ingest_removed,
                    "temp_removed": report.temp_removed,
                    "cache_removed": report.cache_removed,
                    "chunks_removed": report.chunks_removed,
                    "chunk_bytes_freed": report.chunk_bytes_freed,
                    "pool_removed": report.pool_removed,
                    "cache_mounts_removed": report.cache_mounts_removed, "dry_run": dry_run})
        return
    verb = "Would remove" if dry_run else "Removed"
    for d in report.blobs_removed:
        out.print(f"{verb} blob {d}")
    for d in report.damaged_recipes:
        out.print(f"blob {d}: its recipe is damaged; no chunk removed (run `lamina fsck`)")
    chunks = f"{report.chunks_removed} chunks, " if report.chunks_removed else ""
    mounts = len(report.cache_mounts_removed)
    chunks += f"{mounts} cache mount{'s' * (mounts != 1)}, " if mounts else ""
    out.print(f"{verb} {len(report.blobs_removed)} blobs, {chunks}"
              f"{len(report.snapshots_removed)} snapshots, {report.cache_removed} cache entries, "
              f"{report.ingest_removed + report.temp_removed} temporary files; "
              f"{'would free' if dry_run else 'freed'} "
              f"{human_size(report.bytes_freed)}")


@app.command()
@flag("--repair", help="Remove what is corrupt or dangling.")
@json_flag
def fsck(repair: bool, json_: bool) -> None:
    """Re-hash every blob; report corrupt blobs, references to missing content and
    images whose layers cannot be unpacked."""
    from lamina.cli.format import out
    from lamina.store.fsck import check
    from lamina.transport.verify import unpackable_images

    with _store() as store:
        report = check(store, repair=repair)
        # Not repaired: the image is what its publisher made; rmi removes it.
        unpackable = [u.problem for u in unpackable_images(store)]
    clean = report.clean and not unpackable
    if json_:
        print_json({"blobs_checked": report.blobs_checked,
                    "chunks_checked": report.chunks_checked, "corrupt": report.corrupt,
                    "corrupt_chunks": report.corrupt_chunks,
                    "dangling": report.dangling, "unpackable": unpackable,
                    "repaired": report.repaired, "clean": clean})
    else:
        for d in report.corrupt:
            out.print(f"corrupt blob {d}")
        for chunk, users in report.corrupt_chunks.items():
            out.print(f"corrupt chunk {chunk}, used by "
                      f"{', '.join(f'blob {b}' for b in users) or 'no blob'}")
        for p in report.dangling + unpackable:
            out.print(p)
        for r in report.repaired:
            out.print(f"repaired: {r}")
        problems = len(report.corrupt) + len(report.dangling) + len(report.corrupt_chunks) \
            + len(unpackable)
        state = "clean" if clean else ("repaired" if repair and not unpackable
                                        else f"{problems} problems")
        chunks = f" and {report.chunks_checked} chunks" if report.chunks_checked else ""
        out.print(f"checked {report.blobs_checked} blobs{chunks}: {state}")
    if not clean and not (repair and not unpackable):
        raise click.exceptions.Exit(1)


# Modules with ``register(app: click.Group, store_factory)``.  Each keeps its heavy
# imports inside its command functions, so every run imports only what it uses.
_COMMAND_MODULES = ("lamina.cli.cmd_run", "lamina.cli.cmd_build", "lamina.cli.cmd_transfer",
                    "lamina.cli.cmd_inspect", "lamina.cli.cmd_serve", "lamina.cli.cmd_prune",
                    "lamina.cli.cmd_completion", "lamina.cli.cmd_airgap",
                    "lamina.cli.cmd_containers", "lamina.cli.cmd_stack")


def _register_more() -> None:
    """Commands that live in modules of their own (each with ``register(app)``)."""
    import importlib

    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(app, _store)


_register_more()


def _run(args: list[str]) -> int:
    """click's standalone ``main``, the way typer ran it: a usage error is shown with the
    usage line (exit 2); Ctrl-C, or SIGTERM under ``lamina run``, exits 130 without a
    word; end of input at a prompt is "Aborted!" (exit 1); a closed stdout exits 1.
    Anything else reaches ``main``."""
    from click import utils as click_utils

    # click 8.5 renamed it _PacifyFlushWrapper (the old name warns DeprecationWarning).
    pacify: Any = (getattr(click_utils, "_PacifyFlushWrapper", None)
                   or getattr(click_utils, "PacifyFlushWrapper"))  # noqa: B009

    # Shell completion by click's protocol (_LAMINA_COMPLETE=bash_source lamina, then
    # COMP_WORDS/COMP_CWORD), which click's own ``main`` would do and ``_run`` replaces.
    instruction = os.environ.get("_LAMINA_COMPLETE")
    if instruction:
        from click.shell_completion import shell_complete

        return shell_complete(app, {}, "lamina", "_LAMINA_COMPLETE", instruction)
    try:
        with app.make_context(click_utils._detect_program_name(), args) as ctx:
            app.invoke(ctx)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except EOFError:
        click.echo(err=True)
        click.echo("Aborted!", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        sys.stdout = pacify(sys.stdout)
        sys.stderr = pacify(sys.stderr)
        return 1
    return 0


def main(fast_exit: bool = True) -> None:
    """Entry point.  Usage errors are click's (exit 2, with usage); library errors are
    one line here.

    ``fast_exit``: end with ``os._exit`` once stdout and stderr are flushed.  Every
    command has closed what it opened (files, the store's SQLite connection, thread
    pools) before it returns, so the interpreter's teardown — freeing every module and
    object, ~25 ms measured on a ``pull`` — would only add to each run's fixed cost.
    Callers running ``main`` in a process of their own (tests) pass False."""
    code = _main()
    # A thread still running (none today) would be cut off by os._exit: then exit the
    # ordinary way, which waits for it.
    if fast_exit and not any(t.is_alive() and not t.daemon for t in threading.enumerate()
                             if t is not threading.main_thread()):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            code = code or 1   # output lost (a closed pipe, a closed stream): not a success
        os._exit(code)
    sys.exit(code)


def _main() -> int:
    debug = bool(os.environ.get("LAMINA_DEBUG"))
    try:
        return _run(sys.argv[1:])
    # Error lines are plain writes: importing rich for one line would cost ~40 ms.
    except LaminaError as e:
        if debug:
            raise
        say(f"lamina: {e}", sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        say("lamina: interrupted", sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        if e.errno == errno.ENOSPC:
            say("lamina: no space left on device", sys.stderr)
        else:
            where = f": {e.filename}" if e.filename else ""
            say(f"lamina: {e.strerror or e}{where}", sys.stderr)
        return 1


if __name__ == "__main__":
    main()

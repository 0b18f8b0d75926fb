"""Explaining images: ``history``, ``layers``, ``which``, ``diff``, ``df``, ``efficiency``,
``graph``.  Each takes any image source (see ``lamina.inspect.sources``): a store
reference, ``oci:DIR[:TAG]``, ``oci-archive:PATH[:TAG]``, ``docker-archive:PATH[:REF]``.

Layers are numbered from 1 at the bottom, in the tables and in ``--json`` alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lamina.cli.format import argument, flag, option

if TYPE_CHECKING:
    from lamina.inspect.compare import LayerRow
    from lamina.inspect.sources import OpenedImage
    from lamina.inspect.tree import Change, LayerChanges, TreeRow, Version
    from lamina.store.store import Store

json_flag = flag("--json", "json_", help="Print JSON for scripts.")
platform_option = option("--platform", help="OS/ARCH to pick from an index.")
IMAGE_HELP = ("Image: a store reference, oci:DIR[:TAG], oci-archive:PATH[:TAG] or "
              "docker-archive:PATH[:REF].")


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _trunc(text: str, width: int, no_trunc: bool = False) -> str:
    text = " ".join(text.split())
    return text if no_trunc or len(text) <= width else text[:width - 1] + "…"


def _name(row: TreeRow) -> str:
    if row.type == "dir":
        return row.name + "/"
    if row.type == "symlink":
        return f"{row.name} -> {row.link}"
    if row.type == "hardlink":
        return f"{row.name} => /{row.link.lstrip('/')}"
    return row.name


def _what_changed(c: Change) -> str:
    """For a modification: which of type, size, mode, owner, target differ."""
    v, lo = c.version, c.lower
    if v is None or lo is None:
        return ""
    from lamina.cli.format import human_size

    parts = []
    if v.type != lo.type:
        parts.append(f"{lo.type}→{v.type}")
    if v.size != lo.size:
        parts.append(f"size {human_size(lo.size)}→{human_size(v.size)}")
    if v.mode != lo.mode:
        parts.append(f"mode {lo.mode:04o}→{v.mode:04o}")
    if (v.uid, v.gid) != (lo.uid, lo.gid):
        parts.append(f"owner {lo.uid}:{lo.gid}→{v.uid}:{v.gid}")
    if v.link != lo.link:
        parts.append(f"target {lo.link}→{v.link}")
    return f"  ({', '.join(parts)})" if parts else ""


_MARK = {"added": "A", "modified": "M", "deleted": "D", "opaque": "O", None: " "}


def _describe(v: Version) -> str:
    from lamina.cli.format import human_size

    extra = f" -> {v.link}" if v.type == "symlink" else (
        f" => /{v.link.lstrip('/')}" if v.type == "hardlink" else "")
    return f"{v.type} {human_size(v.size)} {v.mode:04o} {v.uid}:{v.gid}{extra}"


def register(app: click.Group, store_factory: Callable[[], Store]) -> None:
    @contextlib.contextmanager
    def image_of(text: str, platform: str | None) -> Iterator[OpenedImage]:
        from lamina.image.manifest import Platform
        from lamina.inspect.sources import needs_store, opened_image

        plat = Platform.parse(platform) if platform else None
        if needs_store(text):
            with store_factory() as store, opened_image(store, text, plat) as img:
                yield img
        else:
            with opened_image(None, text, plat) as img:
                yield img

    # -- history ----------------------------------------------------------------------
    @app.command()
    @argument("image", help=IMAGE_HELP)
    @flag("--no-trunc", help="Do not truncate.")
    @platform_option
    @json_flag
    def history(image: str, no_trunc: bool, platform: str | None, json_: bool) -> None:
        """Show how each layer of an image was made, newest first.  SIZE is the layer
        uncompressed (as Docker's SIZE; N/A for a registry's layer not in the store),
        COMPRESSED the blob as stored and moved."""
        from lamina.cli.format import human_age, human_size, print_json, table
        from lamina.inspect.relation import stack_notes
        from lamina.inspect.sizes import unpacked_sizes
        from lamina.inspect.summary import history as history_rows
        from lamina.transport.local import StoreTransport

        remote = image.partition(":")[0] == "docker"
        with image_of(image, platform) as img, contextlib.ExitStack() as stack:
            store = img.source.store if isinstance(img.source, StoreTransport) else None
            if store is None and remote and _store_exists():
                store = stack.enter_context(store_factory())  # what it knows of sizes
            m = img.image.manifest
            # Counting a registry's layer would download it: only what the store knows.
            sizes = unpacked_sizes(img.source, m.layers, img.image.config.diff_ids, store,
                                   count=not remote)
            rows = history_rows(img.image, sizes)
            notes = stack_notes(img.image)
        if json_:
            print_json([r.to_json() for r in rows])
            return
        table(["LAYER", "CREATED", "CREATED BY", "SIZE", "COMPRESSED", "COMMENT"],
              [[(r.layer if no_trunc else _short(r.layer)) if r.layer else "<none>",
                human_age(r.created), _trunc(r.created_by, 45, no_trunc),
                "N/A" if r.unpacked_size is None else human_size(r.unpacked_size),
                human_size(r.size), r.comment] for r in rows])
        if notes:   # what rebase and squash recorded (the base, the moves, the merges)
            from lamina.cli.format import say

            say("")
            for note in notes:
                say(f"Stack: {note}")

    # -- layers -----------------------------------------------------------------------
    @app.command()
    @argument("image", help=IMAGE_HELP)
    @option("--layer", "-l", kind=int, help="Only layer N (1 = the bottom layer).")
    @platform_option
    @json_flag
    def layers(image: str, layer: int | None, platform: str | None, json_: bool) -> None:
        """Each layer's changes as a tree: A added, M modified (present in a lower layer),
        D deleted (a whiteout), O opaque directory (its lower contents hidden)."""
        from lamina.cli.format import human_size, out, print_json
        from lamina.errors import InvalidInput
        from lamina.inspect.tree import analyze, change_tree

        with image_of(image, platform) as img:
            n = len(img.image.manifest.layers)
            if layer is not None and not 1 <= layer <= n:
                raise InvalidInput(f"--layer {layer}: {image} has layers 1 to {n}")
            # Layer N's changes depend on the layers under it, never on those above.
            result = analyze(img.source, img.image, upto=layer)
        shown: list[LayerChanges] = result.layers if layer is None else [result.layers[-1]]
        if json_:
            print_json([x.to_json() for x in shown])
            return
        for i, lc in enumerate(shown):
            if i:
                out.print()
            counts = ", ".join(f"{lc.count(k)} {k}" for k in ("added", "modified", "deleted",
                                                               "opaque"))
            out.print(f"Layer {lc.index + 1}/{n}  {_short(str(lc.descriptor.digest))}  "
                      f"{human_size(lc.descriptor.size)}  "
                      f"{_trunc(lc.created_by or '(no history)', 70)}", markup=False)
            out.print(f"  {counts}; {human_size(lc.files_size)} of files", markup=False)
            by_path = {c.path: c for c in lc.changes}
            for row in change_tree(lc):
                c = by_path.get(row.path)
                detail = _what_changed(c) if c is not None and c.kind == "modified" else ""
                if c is not None and c.kind in ("deleted", "opaque") and c.hidden_count:
                    detail = f"  (hides {c.hidden_count} entries)" if c.kind == "opaque" \
                        else ""
                size = human_size(row.size)
                if row.kind in ("deleted", "opaque"):
                    size = "-" + size  # bytes this removes from the root below
                out.print(f"  {_MARK[row.kind]} {size:>8}  "
                          f"{'  ' * row.depth}{_name(row)}{detail}", markup=False)

    # -- which ------------------------------------------------------------------------
    @app.command()
    @argument("image", help=IMAGE_HELP)
    @argument("path", help="Path in the image's root filesystem.")
    @flag("-L", "--follow", help="If PATH itself is a symlink, report its target.")
    @platform_option
    @json_flag
    def which(image: str, path: str, follow: bool, platform: str | None,
              json_: bool) -> None:
        """The layer that provides PATH in the final root, and the lower versions it
        hides (or the layer that deleted it)."""
        from lamina.cli.format import out, print_json, table
        from lamina.errors import NotFound
        from lamina.inspect.tree import analyze
        from lamina.inspect.which import which as which_path

        with image_of(image, platform) as img:
            result = analyze(img.source, img.image)
        report = which_path(result, path, follow)
        if json_:
            print_json(report.to_json())
        else:
            if report.resolved:  # symlinked directories on the way (merged /usr)
                out.print(f"{report.path} \u2192 {report.resolved}", markup=False)
            rows = []
            for pv in reversed(report.versions):
                v = pv.version
                if pv.fate is None:
                    fate = "in the final root"
                elif pv.fate.cause == "overwritten":
                    fate = f"overwritten by layer {pv.fate.by_layer + 1}"
                elif pv.fate.cause == "deleted":
                    fate = (f"deleted by layer {pv.fate.by_layer + 1}" +
                            ("" if pv.fate.at == v.path else f" (whiteout of {pv.fate.at})"))
                elif pv.fate.cause == "opaque":
                    fate = f"hidden by layer {pv.fate.by_layer + 1} (opaque {pv.fate.at})"
                else:
                    fate = f"replaced by layer {pv.fate.by_layer + 1} ({pv.fate.at})"
                rows.append([str(v.layer + 1), _describe(v), fate,
                             _trunc(pv.created_by, 45)])
            table(["LAYER", "ENTRY", "STATE", "CREATED BY"], rows)
        if report.provider is None:
            d = report.deleted_by
            how = f" by layer {d.by_layer + 1}" if d is not None else ""
            if not json_:
                out.print()
            where = report.resolved or report.path
            raise NotFound(f"{where} is not in the final root of {image}: deleted{how}")

    # -- df ---------------------------------------------------------------------------
    @app.command()
    @flag("-v", "--verbose", help="Per image and per cache entry.")
    @json_flag
    def df(verbose: bool, json_: bool) -> None:
        """The store's space: blobs, snapshots, build cache, what gc can reclaim; with -v,
        each image's size, shared size and unique size."""
        from lamina.cli.format import human_age, human_size, out, print_json, table
        from lamina.inspect.usage import disk_usage

        with store_factory() as store:
            usage = disk_usage(store)
        if json_:
            print_json(usage.to_json())
            return

        def pct(part: int, whole: int) -> str:
            return f"{human_size(part)} ({part * 100 // whole if whole else 0}%)"

        table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
              [[r.type, str(r.total), str(r.active), human_size(r.size),
                pct(r.reclaimable, r.size)] for r in usage.summary])
        space = usage.storage
        chunked = f"; {space.chunked} kept as {space.chunks} chunks" if space.chunked else ""
        if space.pending:
            chunked += (f"; {space.pending} chunked layer{'s' * (space.pending > 1)} kept "
                        "whole until a pull shares it")
        out.print(f"\nBlob bytes: {human_size(space.logical)} logical, "
                  f"{human_size(space.physical)} physical, ratio {space.ratio:.2f}{chunked}")
        snaps = usage.snapshot_space
        if snaps.saved:
            out.print(f"\nSnapshots: {human_size(snaps.logical)} logical, "
                      f"{human_size(snaps.physical)} physical (the file pool saves "
                      f"{human_size(snaps.saved)})", markup=False)
        if not verbose:
            return
        out.print("\nImages space usage:\n")
        table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
               "UNIQUE SIZE", "LAYERS"],
              [[r.repository, r.tag, _short(r.image_id or r.digest), human_age(r.created),
                human_size(r.size), human_size(r.shared_size), human_size(r.unique_size),
                str(r.layers)] for r in usage.images])
        out.print("\nBuild cache usage:\n")
        table(["CACHE ID", "LAYER", "SIZE", "IN USE", "CREATED BY"],
              [[_short(c.key), _short(c.layer), human_size(c.size),
                "yes" if c.in_use else "no", _trunc(c.created_by, 50)] for c in usage.cache])
        if usage.cache_mounts:
            out.print("\nBuild cache mounts:\n")
            table(["CACHE MOUNT ID", "INSTANCE", "FILES", "SIZE", "IN USE"],
                  [[m.id, str(m.instance), str(m.files), human_size(m.size),
                    "yes" if m.in_use else "no"] for m in usage.cache_mounts])

    # -- diff -------------------------------------------------------------------------
    @app.command()
    @argument("image_a", metavar="A", help=IMAGE_HELP)
    @argument("image_b", metavar="B", help="The image to compare with.")
    @platform_option
    @json_flag
    def diff(image_a: str, image_b: str, platform: str | None, json_: bool) -> None:
        """The layers A and B share (and where they diverge), then the files of B's final
        root that are added, removed or changed against A's."""
        from lamina.cli.format import human_size, out, print_json, table
        from lamina.inspect.compare import compare

        with image_of(image_a, platform) as a, image_of(image_b, platform) as b:
            result = compare(a.source, a.image, b.source, b.image)
        if json_:
            print_json(result.to_json())
            return
        n = len(result.layers)
        where = (f"they diverge at layer {result.shared_layers + 1}"
                 if result.shared_layers < n else "all layers are the same")
        out.print(f"Layers: {result.shared_layers} shared, {where}", markup=False)
        if result.relation:
            out.print(result.relation, markup=False)

        def side(x: tuple[str, str, str] | None) -> str:
            return "-" if x is None else f"{_short(x[0])}  {_trunc(x[2], 40)}"

        def sign(r: LayerRow) -> str:   # "~": the same bytes on another stack
            return "=" if r.shared else ("~" if r.a and r.b and r.a[1] == r.b[1] else "≠")

        table(["LAYER", "", "A", "B"],
              [[str(r.position + 1), sign(r), side(r.a),
                "(shared)" if r.shared else side(r.b)] for r in result.layers])
        if result.same_bytes_elsewhere:
            out.print(f"Same layer bytes above the divergence: "
                      f"{', '.join(_short(d) for d in result.same_bytes_elsewhere)}",
                      markup=False)
        out.print()
        summary = ", ".join(
            f"{result.count(s)} {s} ({human_size(result.bytes(s))})" if s != "changed"
            else f"{result.count(s)} changed" for s in ("added", "removed", "changed"))
        out.print(f"Files: {summary}", markup=False)
        if not result.files:
            return
        rows = []
        for f in result.files:
            mark = {"added": "A", "removed": "D", "changed": "C"}[f.status]
            if f.status == "changed":
                assert f.a is not None and f.b is not None
                size = (human_size(f.b.size) if f.a.size == f.b.size
                        else f"{human_size(f.a.size)}→{human_size(f.b.size)}")
                what = ", ".join(f.fields)
            else:
                v = f.b if f.status == "added" else f.a
                size, what = (human_size(v.size), v.type) if v is not None else ("", "dir")
            rows.append([mark, f.path, size, what])
        table(["", "PATH", "SIZE", "WHAT"], rows)

    # -- efficiency -------------------------------------------------------------------
    @app.command()
    @argument("image", help=IMAGE_HELP)
    @option("--fail-under", metavar="SCORE",
            help="Exit 1 if the score is under SCORE (0.95 or 95%).")
    @option("--max-wasted", metavar="BYTES",
            help="Exit 1 if more than BYTES are wasted (20MB, 512kB, 1000).")
    @option("--top", kind=int, default=10, help="Paths to list (all with --json).")
    @platform_option
    @json_flag
    def efficiency(image: str, fail_under: str | None, max_wasted: str | None, top: int,
                   platform: str | None, json_: bool) -> None:
        """Bytes wasted on files an upper layer overwrites or deletes, or copies again for a
        chmod/chown; score = 1 - wasted / total file bytes.  Gates exit 1 for CI."""
        from lamina.cli.format import err, human_size, out, print_json, table
        from lamina.inspect.efficiency import Gates
        from lamina.inspect.efficiency import efficiency as measure
        from lamina.inspect.tree import analyze

        gates = Gates(_parse_score(fail_under) if fail_under is not None else None,
                      _parse_bytes(max_wasted) if max_wasted is not None else None)
        with image_of(image, platform) as img:
            report = measure(img.source, analyze(img.source, img.image))
        failures = gates.failures(report)
        if json_:
            print_json({**report.to_json(), "failures": failures})
        else:
            out.print(f"Efficiency: {report.score * 100:.2f}%", markup=False)
            out.print(f"Total file bytes: {human_size(report.total)} ({report.total}), in the "
                      f"final root: {human_size(report.final)} ({report.final})", markup=False)
            out.print(f"Wasted: {human_size(report.wasted)} ({report.wasted}) = overwritten "
                      f"{report.overwritten} + metadata-only {report.metadata_only} + deleted "
                      f"{report.deleted}", markup=False)
            out.print()
            table(["LAYER", "FILES", "WASTED", "CREATED BY"],
                  [[str(x.index + 1), human_size(x.size), human_size(x.wasted),
                    _trunc(x.created_by, 50)] for x in report.layers])
            if report.paths:
                out.print()
                table(["COPIES", "WASTED", "WHY", "PATH"],
                      [[str(p.copies), human_size(p.size), ", ".join(p.why), p.path]
                       for p in report.paths[:top]])
                if len(report.paths) > top:
                    out.print(f"... and {len(report.paths) - top} more paths (--top N, "
                              "--json)", markup=False)
        if failures:
            for f in failures:
                err.print(f"lamina: {f}", markup=False)
            raise click.exceptions.Exit(1)

    # -- graph ------------------------------------------------------------------------
    @app.command()
    @argument("images", metavar="IMAGE...", nargs=-1, required=True, help=IMAGE_HELP)
    @option("-o", "--output", kind=Path, required=True, help="FILE.svg or FILE.html to write.")
    @option("--scale", default="sqrt", help="Heights by sqrt or log of the size.")
    @option("--title", help="A heading for the picture.")
    @platform_option
    def graph(images: tuple[str, ...], output: Path, scale: str, title: str | None,
              platform: str | None) -> None:
        """Draw images as stacks of layers side by side: a shared layer drawn once and
        joined to every image that has it, heights by size, labels from history."""
        from lamina.errors import InvalidInput
        from lamina.inspect.graph import build_drawing, render_html, render_svg

        if scale not in ("sqrt", "log"):
            raise InvalidInput(f"unknown scale {scale!r}: choose sqrt or log")
        suffix = output.suffix.lower()
        if suffix not in (".svg", ".html", ".htm"):
            raise InvalidInput(f"{output}: write a .svg or an .html file")
        resolved = []
        with contextlib.ExitStack() as stack:
            for text in images:
                resolved.append(stack.enter_context(image_of(text, platform)).image)
        drawing = build_drawing(list(images), resolved)
        render = render_svg if suffix == ".svg" else render_html
        doc = render(drawing, scale, title)  # type: ignore[arg-type]
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(doc, encoding="utf-8")
        tmp.replace(output)


def _store_exists() -> bool:
    """Whether the store (``--root``, ``$LAMINA_ROOT`` or the default) has been made: a
    command that only reads from it need not create one."""
    from lamina.store.store import default_root

    root = click.get_current_context().find_root().params.get("root") or default_root()
    return (Path(root) / "meta.db").exists()


def _parse_score(text: str) -> float:
    from lamina.errors import InvalidInput

    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InvalidInput(f"--fail-under {text!r}: give a score like 0.95 or 95%") from None
    if not 0 <= value <= 1:
        raise InvalidInput(f"--fail-under {text!r}: the score is between 0 and 1 (0%-100%)")
    return value


def _parse_bytes(text: str) -> int:
    """Bytes, in Docker's decimal units (kB, MB, GB) or binary ones (KiB, MiB, GiB)."""
    from lamina.errors import InvalidInput
    from lamina.units import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise InvalidInput(f"--max-wasted {text!r}: give bytes like 1000, 512kB or 20MB") \
            from None

"""``lamina squash``: an image with consecutive layers merged into one, wherever it is.

The merge is ``layer.squash.squash_layers`` (tar headers, one spool of the merged
layers; what it keeps and drops is its docstring's); the config and manifest are
``image.mutate.squash_config`` / ``new_manifest``.  The new layer is written and
committed like any layer lamina makes (``layer.commit``: deterministic tar, the store's
diff_id ↔ digest record, under a lease), then the image is recorded; a failure removes
what was written.  The layers below and above the range keep their blobs.

IMAGE and ``-t DEST`` may also be any place ``copy`` and ``rebase`` take (a registry,
an OCI layout or archive, a docker archive; ``build.placeio``).  Then the layers of the
image are streamed from the source (each checked against its digest and diff_id), the
merged layer is written to a scratch file (hashed as it is written: its digest must be
known before a registry takes it), and the destination gets that blob, the new config
and manifest, and the untouched layers copied as blobs: mounted, or found already
there, on a registry, so a squash inside one registry uploads only what is new.
Without ``-t`` the result goes to IMAGE's own place and name, as rebase's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamina.build.placeio import Reach, Side, open_output, open_side
from lamina.digest import Digest, HashingWriter, VerifyingReader
from lamina.errors import InvalidInput
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig
from lamina.image.manifest import Descriptor, Manifest, Platform
from lamina.image.mutate import new_manifest, squash_config
from lamina.image.reference import Reference
from lamina.layer.commit import commit_layer
from lamina.layer.options import Compression, LayerOptions
from lamina.layer.squash import LayerStream, squash_layers
from lamina.store import scratch
from lamina.store.store import Store
from lamina.transport.base import ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.places import Place, parse_place
from lamina.transport.resolve import ResolvedImage, resolve_image


@dataclass(frozen=True)
class SquashOptions:
    """Which layers (1-based, inclusive): ``first`` (``--from N``) to the top, the top
    ``last`` (``--last K``), or ``all_layers`` (flatten); exactly one."""

    first: int | None = None
    last: int | None = None
    all_layers: bool = False
    compression: Compression = "gzip"
    level: int | None = None
    tags: tuple[str, ...] = ()      # default: the image's own name (and place)
    reach: Reach = field(default_factory=Reach)
    platform: Platform | None = None


@dataclass(frozen=True)
class SquashResult:
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    diff_id: Digest
    first: int                      # 1-based, inclusive
    last: int
    layers: int                     # layers of the new image
    names: tuple[str, ...]
    # Set when IMAGE or DEST is not the store: where the result went, and its blobs
    # (written, of them mounted, already there).
    destination: Place | None = None
    moved: int = 0
    mounted: int = 0
    present: int = 0


def squash_range(count: int, opts: SquashOptions) -> tuple[int, int]:
    """(start, end), 0-based, end exclusive; InvalidInput for a bad choice."""
    chosen = [x for x in (opts.first is not None, opts.last is not None, opts.all_layers) if x]
    if len(chosen) != 1:
        raise InvalidInput("say which layers to squash: --from N, --last K or --all")
    if opts.all_layers:
        return 0, count
    if opts.first is not None:
        if not 1 <= opts.first <= count:
            raise InvalidInput(f"--from {opts.first}: the image has layers 1 to {count}")
        return opts.first - 1, count
    assert opts.last is not None
    if not 1 <= opts.last <= count:
        raise InvalidInput(f"--last {opts.last}: the image has {count} layers")
    return count - opts.last, count


def _stream(source: ImageSource, desc: Descriptor, diff_id: Digest) -> LayerStream:
    return LayerStream(lambda: source.open_blob(desc), diff_id)


def _plan(image: ResolvedImage, opts: SquashOptions
          ) -> tuple[int, int, LayerOptions, str]:
    """The range, and the merged layer's options and media type (a Docker manifest gets
    a Docker layer type where one exists)."""
    start, end = squash_range(len(image.manifest.layers), opts)
    docker = image.manifest.media_type == mt.DOCKER_MANIFEST and \
        opts.compression in ("gzip", "none")
    return (start, end, LayerOptions(compression=opts.compression, level=opts.level),
            mt.layer_media_type(opts.compression, docker))


def _streams(source: ImageSource, image: ResolvedImage, start: int, end: int
             ) -> tuple[list[LayerStream], list[LayerStream]]:
    """The layers below the range, and those of the range."""
    pairs = list(zip(image.manifest.layers, image.config.diff_ids, strict=True))
    return ([_stream(source, d, i) for d, i in pairs[:start]],
            [_stream(source, d, i) for d, i in pairs[start:end]])


def _squashed(image: ResolvedImage, start: int, end: int, layer: Descriptor,
              diff_id: Digest) -> tuple[ImageConfig, Manifest]:
    m = image.manifest
    config = squash_config(image.config, start, end, diff_id)
    return config, new_manifest(m, config, [*m.layers[:start], layer, *m.layers[end:]])


def squash_image(store: Store, ref: str, opts: SquashOptions) -> SquashResult:
    """Squash ``ref``: in the store when it and every ``-t`` are the store's, else
    between places (one ``-t DEST`` at most)."""
    place = parse_place(ref)
    dests = [parse_place(t) for t in opts.tags]
    if place.kind == "store" and all(d.kind == "store" for d in dests):
        return _squash_in_store(store, ref, opts)
    if len(dests) > 1:
        raise InvalidInput("-t: give one DEST when the image or the result is not in the "
                           "store")
    return _squash_places(store, place, dests[0] if dests else None, opts)


def _squash_in_store(store: Store, ref: str, opts: SquashOptions) -> SquashResult:
    source = StoreTransport(store)
    top = source.resolve(ref)
    image: ResolvedImage = resolve_image(source, top)
    start, end, layer_opts, media_type = _plan(image, opts)
    names: Sequence[str] = opts.tags
    if not names:
        tag = store.meta.tags_for(str(top.digest))
        wanted = None if ref.startswith("sha256:") else _name(ref)
        names = [wanted] if wanted in tag else []
    refs = [str(Reference.parse(n)) for n in names]
    below, merged = _streams(source, image, start, end)
    written: list[str] = []
    with store.lease() as lease:
        try:
            with scratch.make_dir(store.root / "tmp", "squash-") as tmp:
                stored = commit_layer(store, lease, lambda out: squash_layers(
                    below, merged, out, layer_opts, tmp.path), layer_opts, media_type)
            written.append(str(stored.digest))
            layer = Descriptor(media_type, stored.digest, stored.size, stored.annotations)
            new_config, manifest = _squashed(image, start, end, layer, stored.diff_id)
            lease.add(new_config.digest)
            store.blobs.put_bytes(new_config.raw, new_config.digest)
            written.append(str(new_config.digest))
            lease.add(manifest.digest)
            store.blobs.put_bytes(manifest.raw, manifest.digest)
            written.append(str(manifest.digest))
            store.meta.add_image(str(manifest.digest), manifest.media_type, len(manifest.raw),
                                 [str(d.digest) for d in manifest.blobs()],
                                 refs[0] if refs else None)
            for r in refs[1:]:
                store.meta.set_tag(r, str(manifest.digest), manifest.media_type)
        except BaseException:
            from lamina.store.gc import discard

            discard(store, written, lease.id)
            raise
    return SquashResult(manifest.descriptor(), manifest.config, layer, stored.diff_id,
                        start + 1, end, len(manifest.layers), tuple(refs))


def _squash_places(store: Store, place: Place, dest: Place | None,
                   opts: SquashOptions) -> SquashResult:
    image = open_side(store, place, opts.reach, opts.platform)
    try:
        if image.image.index is not None and opts.platform is None:
            # As rebase: the result is one platform's image, and writing it over the
            # index's name would drop the others.
            raise InvalidInput(f"{place.text} is an index: squash one platform's image "
                               "with --platform OS/ARCH")
        start, end, layer_opts, media_type = _plan(image.image, opts)
        below, merged = _streams(image.source, image.image, start, end)
        with scratch.make_dir(store.root / "tmp", "squash-") as tmp:
            blob = tmp.path / "layer"
            with open(blob, "wb") as f:
                hashing = HashingWriter(f)
                info = squash_layers(below, merged, hashing, layer_opts, tmp.path)
            layer = Descriptor(media_type, hashing.digest, hashing.count, info.annotations)
            config, manifest = _squashed(image.image, start, end, layer, info.diff_id)
            return _write(store, image, dest, opts, manifest, config, start, end,
                          blob, info.diff_id)
    finally:
        image.source.close()


def _write(store: Store, image: Side, dest: Place | None, opts: SquashOptions,
           manifest: Manifest, config: ImageConfig, start: int, end: int, blob: Path,
           diff_id: Digest) -> SquashResult:
    origin = {d.digest: image for d in image.image.manifest.layers}
    out = open_output(store, image, dest, opts.reach, origin)
    layer = manifest.layers[start]      # relabelled to the manifest's family
    try:
        for i, desc in enumerate(manifest.layers):
            if i != start:
                out.put(desc, image.source)
                continue
            with open(blob, "rb") as f:
                out.put_new(desc, VerifyingReader(f, desc.digest, desc.size,
                                                  what="squashed layer"))
        out.finish(manifest, config)
    except BaseException:
        out.sink.abort()
        raise
    return SquashResult(manifest.descriptor(), manifest.config, layer, diff_id, start + 1,
                        end, len(manifest.layers), tuple(out.names), out.place, out.moved,
                        out.mounted, out.present)


def _name(ref: str) -> str | None:
    try:
        return str(Reference.parse(ref))
    except InvalidInput:
        return None

"""``lamina squash``: an image of the store with consecutive layers merged into one.

The merge is ``layer.squash.squash_layers`` (tar headers, one spool of the merged
layers; what it keeps and drops is its docstring's); the config and manifest are
``image.mutate.squash_config`` / ``new_manifest``.  The new layer is written and
committed like any layer lamina makes (``layer.commit``: deterministic tar, the store's
diff_id ↔ digest record, under a lease), then the image is recorded; a failure removes
what was written.  The layers below and above the range keep their blobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamina.digest import Digest
from lamina.errors import InvalidInput
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor
from lamina.image.mutate import new_manifest, squash_config
from lamina.image.reference import Reference
from lamina.layer.commit import commit_layer
from lamina.layer.options import Compression, LayerOptions
from lamina.layer.squash import LayerStream, squash_layers
from lamina.store import scratch
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
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
    tags: tuple[str, ...] = ()      # default: the image's own name


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


def _stream(source: StoreTransport, desc: Descriptor, diff_id: Digest) -> LayerStream:
    return LayerStream(lambda: source.open_blob(desc), diff_id)


def squash_image(store: Store, ref: str, opts: SquashOptions) -> SquashResult:
    source = StoreTransport(store)
    top = source.resolve(ref)
    image: ResolvedImage = resolve_image(source, top)
    m, config = image.manifest, image.config
    start, end = squash_range(len(m.layers), opts)
    layer_opts = LayerOptions(compression=opts.compression, level=opts.level)
    names: Sequence[str] = opts.tags
    if not names:
        tag = store.meta.tags_for(str(top.digest))
        wanted = None if ref.startswith("sha256:") else _name(ref)
        names = [wanted] if wanted in tag else []
    refs = [str(Reference.parse(n)) for n in names]
    docker = m.media_type == mt.DOCKER_MANIFEST and opts.compression in ("gzip", "none")
    media_type = mt.layer_media_type(opts.compression, docker)
    below = [_stream(source, d, i) for d, i in zip(m.layers[:start], config.diff_ids[:start],
                                                   strict=True)]
    merged = [_stream(source, d, i) for d, i in zip(m.layers[start:end],
                                                    config.diff_ids[start:end], strict=True)]
    written: list[str] = []
    with store.lease() as lease:
        try:
            with scratch.make_dir(store.root / "tmp", "squash-") as tmp:
                stored = commit_layer(store, lease, lambda out: squash_layers(
                    below, merged, out, layer_opts, tmp.path), layer_opts, media_type)
            written.append(str(stored.digest))
            layer = Descriptor(media_type, stored.digest, stored.size, stored.annotations)
            new_config = squash_config(config, start, end, stored.diff_id)
            manifest = new_manifest(m, new_config, [*m.layers[:start], layer, *m.layers[end:]])
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


def _name(ref: str) -> str | None:
    try:
        return str(Reference.parse(ref))
    except InvalidInput:
        return None

"""What ``lamina images``, ``inspect`` and ``history`` show, computed from any source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import LaminaError
from lamina.image.manifest import Descriptor
from lamina.image.reference import Reference
from lamina.inspect.sizes import unpacked_sizes
from lamina.store.store import Store
from lamina.transport.base import ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import ResolvedImage, resolve_image


@dataclass(frozen=True)
class ImageSummary:
    repository: str          # familiar name, or "<none>"
    tag: str
    reference: str | None    # full reference, if tagged
    digest: str              # manifest (or index) digest
    image_id: str            # config digest, as Docker's IMAGE ID
    created: str | None
    size: int                # bytes of config + layers, as stored (compressed)
    layers: int
    unpacked_size: int | None = None  # bytes of the uncompressed layers: Docker's SIZE
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tag": self.tag, "reference": self.reference,
                "digest": self.digest, "id": self.image_id, "created": self.created,
                "size": self.size, "unpacked_size": self.unpacked_size,
                "layers": self.layers}


def _summary(image: ResolvedImage, name: str | None, top: Descriptor,
             unpacked: Sequence[int | None]) -> ImageSummary:
    if name:
        ref = Reference.parse(name)
        repo, tag = ref.familiar_name, ref.tag or "<none>"
    else:
        repo, tag = "<none>", "<none>"
    m = image.manifest
    labels = image.config.container_config.get("Labels")
    return ImageSummary(repo, tag, name, str(top.digest), image.image_id, image.config.created,
                        m.config.size + sum(x.size for x in m.layers), len(m.layers),
                        None if None in unpacked else sum(x or 0 for x in unpacked),
                        {str(k): str(v) for k, v in labels.items()}
                        if isinstance(labels, dict) else {})


def list_images(store: Store) -> list[ImageSummary]:
    """Every tag, then every untagged image record, newest first."""
    source = StoreTransport(store)
    out: list[ImageSummary] = []
    tagged: set[str] = set()
    found: list[tuple[ResolvedImage, str | None, Descriptor]] = []
    for named in source.images():
        tagged.add(str(named.descriptor.digest))
        try:
            image = resolve_image(source, named.descriptor)
        except LaminaError:
            continue  # broken images are fsck's business, not a listing's
        found.append((image, named.name, named.descriptor))
    for rec in store.meta.images():
        if rec.digest in tagged:
            continue
        desc = source.resolve(rec.digest)
        try:
            image = resolve_image(source, desc)
        except LaminaError:
            continue
        found.append((image, None, desc))
    for image, name, desc in found:
        sizes = unpacked_sizes(source, image.manifest.layers, image.config.diff_ids, store)
        out.append(_summary(image, name, desc, sizes))
    out.sort(key=lambda s: (s.created or "", s.repository, s.tag), reverse=True)
    return out


@dataclass(frozen=True)
class HistoryRow:
    layer: str | None        # layer digest, None for config-only steps
    created: str | None
    created_by: str
    size: int                # the layer blob, as stored (compressed)
    comment: str
    empty_layer: bool
    unpacked_size: int | None = None  # the uncompressed layer: Docker's SIZE

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "created": self.created, "created_by": self.created_by,
                "size": self.size, "unpacked_size": self.unpacked_size,
                "comment": self.comment, "empty_layer": self.empty_layer}


def history(image: ResolvedImage, unpacked: Sequence[int | None] = ()) -> list[HistoryRow]:
    """One row per history entry, newest first, as ``docker history`` orders them;
    ``unpacked``: each layer's uncompressed size (``inspect.sizes``), where known.

    Layers are matched to the non-empty history entries in order; layers beyond the
    history (a config without history) get rows of their own."""
    layers = list(image.manifest.layers)
    rows: list[HistoryRow] = []
    i = 0

    def unpacked_of(n: int) -> int | None:
        return unpacked[n] if n < len(unpacked) else None

    for h in image.config.history:
        if h.empty_layer:
            rows.append(HistoryRow(None, h.created, h.created_by or "", 0, h.comment or "", True,
                                   0))
            continue
        layer = layers[i] if i < len(layers) else None
        rows.append(HistoryRow(str(layer.digest) if layer else None, h.created,
                               h.created_by or "", layer.size if layer else 0, h.comment or "",
                               False, unpacked_of(i) if layer else 0))
        i += 1
    for n, layer in enumerate(layers[i:], start=i):
        rows.append(HistoryRow(str(layer.digest), None, "", layer.size, "", False,
                               unpacked_of(n)))
    rows.reverse()
    return rows


def inspect_document(source: ImageSource, image: ResolvedImage,
                     names: list[str]) -> dict[str, Any]:
    """A ``docker inspect``-shaped document, plus the manifest's own fields."""
    c = image.config
    return {
        "Id": image.image_id,
        "Digest": str(image.descriptor.digest),
        "RepoTags": [Reference.parse(n).familiar for n in names],
        "Created": c.created,
        "Architecture": c.platform.architecture,
        "Os": c.platform.os,
        **({"Variant": c.platform.variant} if c.platform.variant else {}),
        "Config": c.container_config,
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in c.diff_ids]},
        "Size": image.manifest.config.size + sum(x.size for x in image.manifest.layers),
        "Manifest": {
            "mediaType": image.manifest.media_type,
            "config": image.manifest.config.to_json(),
            "layers": [x.to_json() for x in image.manifest.layers],
        },
        "History": [h.to_json() for h in c.history],
    }

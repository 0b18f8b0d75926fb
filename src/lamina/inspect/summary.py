"""What ``lamina images``, ``inspect`` and ``history`` show, computed from any source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lamina.errors import LaminaError
from lamina.image.manifest import Descriptor
from lamina.image.reference import Reference
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

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tag": self.tag, "reference": self.reference,
                "digest": self.digest, "id": self.image_id, "created": self.created,
                "size": self.size, "layers": self.layers}


def _summary(image: ResolvedImage, name: str | None, top: Descriptor) -> ImageSummary:
    if name:
        ref = Reference.parse(name)
        repo, tag = ref.familiar_name, ref.tag or "<none>"
    else:
        repo, tag = "<none>", "<none>"
    m = image.manifest
    return ImageSummary(repo, tag, name, str(top.digest), image.image_id, image.config.created,
                        m.config.size + sum(x.size for x in m.layers), len(m.layers))


def list_images(store: Store) -> list[ImageSummary]:
    """Every tag, then every untagged image record, newest first."""
    source = StoreTransport(store)
    out: list[ImageSummary] = []
    tagged: set[str] = set()
    for named in source.images():
        tagged.add(str(named.descriptor.digest))
        try:
            image = resolve_image(source, named.descriptor)
        except LaminaError:
            continue  # broken images are fsck's business, not a listing's
        out.append(_summary(image, named.name, named.descriptor))
    for rec in store.meta.images():
        if rec.digest in tagged:
            continue
        desc = source.resolve(rec.digest)
        try:
            image = resolve_image(source, desc)
        except LaminaError:
            continue
        out.append(_summary(image, None, desc))
    out.sort(key=lambda s: (s.created or "", s.repository, s.tag), reverse=True)
    return out


@dataclass(frozen=True)
class HistoryRow:
    layer: str | None        # layer digest, None for config-only steps
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "created": self.created, "created_by": self.created_by,
                "size": self.size, "comment": self.comment, "empty_layer": self.empty_layer}


def history(image: ResolvedImage) -> list[HistoryRow]:
    """One row per history entry, newest first, as ``docker history`` orders them.

    Layers are matched to the non-empty history entries in order; layers beyond the
    history (a config without history) get rows of their own."""
    layers = list(image.manifest.layers)
    rows: list[HistoryRow] = []
    i = 0
    for h in image.config.history:
        if h.empty_layer:
            rows.append(HistoryRow(None, h.created, h.created_by or "", 0, h.comment or "", True))
            continue
        layer = layers[i] if i < len(layers) else None
        i += 1
        rows.append(HistoryRow(str(layer.digest) if layer else None, h.created,
                               h.created_by or "", layer.size if layer else 0, h.comment or "",
                               False))
    for layer in layers[i:]:
        rows.append(HistoryRow(str(layer.digest), None, "", layer.size, "", False))
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

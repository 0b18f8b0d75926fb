"""From a descriptor in a source to a usable image: manifest, config, platform choice."""

from __future__ import annotations

from dataclasses import dataclass

from lamina.errors import InvalidManifest, LaminaError
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig, parse_config
from lamina.image.manifest import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    current_platform,
    parse,
)
from lamina.transport.base import ImageSource, read_blob


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image: its manifest, config and the index it was picked from."""

    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig
    index: Index | None = None

    @property
    def digest(self) -> str:
        return str(self.descriptor.digest)

    @property
    def image_id(self) -> str:
        """Docker's image id: the digest of the config."""
        return str(self.manifest.config.digest)


def fetch_manifest(source: ImageSource, desc: Descriptor) -> Manifest | Index:
    if desc.media_type not in mt.MANIFESTS | mt.INDEXES:
        raise InvalidManifest(f"{desc.digest} is a {desc.media_type}, not a manifest or index")
    if desc.size > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"manifest {desc.digest} is {desc.size} bytes, over the 4 MiB "
                              "limit")
    raw = read_blob(source, desc)
    return parse(raw, desc.media_type, what=f"manifest {desc.digest}")


def resolve_image(source: ImageSource, desc: Descriptor,
                  platform: Platform | None = None) -> ResolvedImage:
    """Follow an index to this machine's (or the given) platform, then read the config."""
    index: Index | None = None
    doc = fetch_manifest(source, desc)
    depth = 0
    while isinstance(doc, Index):
        depth += 1
        if depth > 4:
            raise InvalidManifest(f"index {desc.digest} nests too deeply")
        index = index or doc
        desc = doc.select(platform or current_platform())
        doc = fetch_manifest(source, desc)
    manifest = doc
    if manifest.config.media_type not in mt.CONFIGS:
        raise InvalidManifest(f"manifest {desc.digest}: config has media type "
                              f"{manifest.config.media_type}, not an image config")
    try:
        config = parse_config(read_blob(source, manifest.config),
                              what=f"config {manifest.config.digest}")
    except LaminaError as e:
        raise e.context(f"image {desc.digest}") from None
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidManifest(
            f"image {desc.digest}: manifest has {len(manifest.layers)} layers but the config "
            f"lists {len(config.diff_ids)} diff_ids")
    for layer in manifest.layers:
        if not mt.is_layer(layer.media_type):
            raise InvalidManifest(f"image {desc.digest}: layer {layer.digest} has unknown media "
                                  f"type {layer.media_type}")
    return ResolvedImage(desc, manifest, config, index)

"""Helpers for the store tests: small real images written into a Store."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.image.config import History, build_config
from lamina.image.manifest import Descriptor, Platform, build_manifest
from lamina.store import Store


@dataclass(frozen=True)
class StoredImage:
    manifest: Digest
    config: Digest
    layers: tuple[Digest, ...]
    diff_ids: tuple[Digest, ...]

    @property
    def blobs(self) -> set[str]:
        return {str(self.manifest), str(self.config), *map(str, self.layers)}


def put_image(store: Store, layer_payloads: list[bytes], tag: str | None = None,
              record: bool = True) -> StoredImage:
    """Write layer blobs, a config and a manifest; record the image (and tag) if asked.

    Layers are stored uncompressed, so each blob's digest is also its diff_id."""
    layers = []
    for payload in layer_payloads:
        d = store.blobs.put_bytes(payload)
        layers.append(Descriptor(mt.OCI_LAYER, d, len(payload)))
        store.meta.add_layer(str(d), str(d), mt.OCI_LAYER, len(payload))
    diff_ids = [x.digest for x in layers]
    config = build_config(diff_ids, [History(created_by=f"step {i}") for i in range(len(layers))],
                          Platform("amd64", "linux"), created="2023-11-14T22:13:20Z")
    store.blobs.put_bytes(config.raw)
    cdesc = Descriptor(mt.OCI_CONFIG, config.digest, len(config.raw))
    manifest = build_manifest(cdesc, layers)
    store.blobs.put_bytes(manifest.raw)
    children = [str(x.digest) for x in manifest.blobs()]
    if record:
        store.meta.add_image(str(manifest.digest), manifest.media_type, len(manifest.raw),
                             children, tag=tag)
    else:
        store.meta.add_refs(str(manifest.digest), children)
    return StoredImage(manifest.digest, config.digest, tuple(diff_ids), tuple(diff_ids))


def blob_names(store: Store) -> set[str]:
    d = store.root / "blobs" / "sha256"
    return {f"sha256:{n}" for n in os.listdir(d)} if d.exists() else set()


def ingest_names(store: Store) -> list[str]:
    return sorted(os.listdir(store.root / "ingest"))

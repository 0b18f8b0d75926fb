"""What the other side of an air gap already has: inventories and incremental saves.

An air-gapped site cannot be asked "do you have this blob?" the way a registry is
(distribution-spec: HEAD before upload).  It answers once, in writing: ``lamina
inventory`` lists the blobs its store holds for its images, with their sizes and the
layers' diff_ids.  ``lamina save IMAGE --exclude inv.json`` then writes an OCI layout
without the layer blobs that inventory names; ``lamina load`` on the far side finds
them in its store (``missing_blobs``).  A release that adds one layer crosses the gap as
that layer plus its config and manifest.

The layout stays well-formed but for the omitted layers: ``index.json`` names every
image and every manifest and config is there; ``index.json`` carries
``OMITTED_ANNOTATION`` (the omitted digests) so that a reader knows why they are absent
and skopeo/umoci's "blob not found" has an explanation.  Only layers are omitted: a
config or manifest is small, and without them a reader could not even say what is
missing.

Inventory format (one JSON object, keys sorted)::

    {"mediaType": "application/vnd.lamina.inventory.v1+json",
     "blobs": {"sha256:…": size, …},      every blob an image of the store reaches
     "diffIds": ["sha256:…", …]}           the uncompressed digests of those layers

Exclusion is by blob digest: a manifest names its layers by the digest of their
compressed bytes, so the far side must hold those very bytes.  The diff_ids say which
layer *contents* it has (a layer held in another compression); they are recorded for
reports and for a later save that recompresses to match, not used to omit a blob.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lamina.digest import Digest, VerifyingReader
from lamina.errors import InvalidInput, InvalidReference, LaminaError, NotFound
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor, Index, Manifest
from lamina.store.store import Store
from lamina.transport.base import ImageSource, Progress
from lamina.transport.oci_layout import OciLayoutSink
from lamina.transport.resolve import fetch_manifest

INVENTORY_MEDIA_TYPE = "application/vnd.lamina.inventory.v1+json"
MAX_INVENTORY_BYTES = 256 << 20   # ~3 million blobs: a store, not an attack
# On index.json of an incremental layout: the layer blobs left out, comma-separated
# (annotations are string → string, image-spec annotations.md).
INCREMENTAL_ANNOTATION = "dev.lamina.layout.incremental"
OMITTED_ANNOTATION = "dev.lamina.layout.omitted-blobs"

Holds = Callable[[Descriptor], bool]


@dataclass(frozen=True)
class Inventory:
    """Blobs (digest → size) a store holds for its images, and its layers' diff_ids."""

    blobs: dict[str, int] = field(default_factory=dict)
    diff_ids: frozenset[str] = frozenset()

    def to_json(self) -> bytes:
        return (json.dumps({"mediaType": INVENTORY_MEDIA_TYPE,
                            "blobs": dict(sorted(self.blobs.items())),
                            "diffIds": sorted(self.diff_ids)},
                           indent=None, separators=(",", ":")) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Inventory:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"{what}: not an inventory (not JSON: {e})") from None
        if not isinstance(doc, dict) or doc.get("mediaType") != INVENTORY_MEDIA_TYPE:
            raise InvalidInput(f"{what}: not a lamina inventory (mediaType is not "
                               f"{INVENTORY_MEDIA_TYPE})")
        blobs, diff_ids = doc.get("blobs"), doc.get("diffIds", [])
        if not isinstance(blobs, dict) or not isinstance(diff_ids, list):
            raise InvalidInput(f"{what}: 'blobs' must be an object and 'diffIds' a list")
        out: dict[str, int] = {}
        try:
            for key, size in blobs.items():
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise InvalidInput(f"blob {key}: size {size!r} is not a byte count")
                out[str(Digest.parse(key))] = size
            ids = set()
            for d in diff_ids:
                if not isinstance(d, str):
                    raise InvalidReference(f"diff_id {d!r} is not a digest")
                ids.add(str(Digest.parse(d)))
        except LaminaError as e:
            raise InvalidInput(f"{what}: {e}") from None
        return cls(out, frozenset(ids))


def store_inventory(store: Store) -> Inventory:
    """Every blob an image record of ``store`` reaches (manifests, configs, layers):
    what gc keeps, so what the store will still hold when a save made from this
    inventory arrives."""
    edges: dict[str, list[str]] = {}
    for parent, child in store.meta.all_refs():
        edges.setdefault(parent, []).append(child)
    todo = [rec.digest for rec in store.meta.images()]
    seen: set[str] = set()
    blobs: dict[str, int] = {}
    while todo:
        key = todo.pop()
        if key in seen or not key.startswith("sha256:"):
            continue   # snapshot:… nodes are not blobs
        seen.add(key)
        digest = Digest.parse(key)
        if store.blobs.has(digest):
            blobs[key] = store.blobs.size(digest)
        todo.extend(edges.get(key, ()))
    diff_ids = frozenset(rec.diff_id for rec in store.meta.layers() if rec.digest in blobs)
    return Inventory(blobs, diff_ids)


def write_inventory(inv: Inventory, path: Path) -> None:
    """Write atomically (temp file, fsync, rename): a cut-off write leaves no half file
    for the far side to trust."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(inv.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {e.strerror or e}") from None


def read_inventory(path: Path) -> Inventory:
    try:
        if path.stat().st_size > MAX_INVENTORY_BYTES:
            raise InvalidInput(f"{path}: over {MAX_INVENTORY_BYTES >> 20} MiB, not an inventory")
        raw = path.read_bytes()
    except OSError as e:
        raise NotFound(f"cannot read inventory {path}: {e.strerror or e}") from None
    return Inventory.parse(raw, str(path))


def image_blobs(source: ImageSource, desc: Descriptor) -> set[str]:
    """Every blob an image reaches: its manifest or index, every child manifest, each
    config and layer."""
    out: set[str] = set()
    todo = [desc]
    while todo:
        d = todo.pop()
        if str(d.digest) in out:
            continue
        out.add(str(d.digest))
        doc = fetch_manifest(source, d)
        if isinstance(doc, Index):
            todo.extend(doc.manifests)
        else:
            out.update(str(b.digest) for b in doc.blobs())
    return out


def excluded_blobs(store: Store, source: ImageSource, excludes: Iterable[str]) -> set[str]:
    """The blobs the far side has, from ``--exclude`` values: an inventory file (when a
    file of that name exists) or an image of the store."""
    out: set[str] = set()
    for value in excludes:
        path = Path(value)
        if path.is_file():
            out.update(read_inventory(path).blobs)
            continue
        try:
            desc = source.resolve(value)
        except LaminaError as e:
            raise NotFound(f"--exclude {value}: neither an inventory file nor an image "
                           f"in the store ({e})") from None
        out.update(image_blobs(source, desc))
    return out


class ExcludingSink:
    """A layout sink that leaves out the layer blobs the far side has (``exclude``):
    ``has_blob`` says yes for them, so copy moves nothing; ``close`` names them on
    index.json."""

    def __init__(self, sink: OciLayoutSink, exclude: set[str]) -> None:
        self.sink = sink
        self.exclude = exclude
        self.accepts_index = sink.accepts_index
        self.omitted: dict[str, Descriptor] = {}

    def has_blob(self, desc: Descriptor) -> bool:
        if mt.is_layer(desc.media_type) and str(desc.digest) in self.exclude:
            self.omitted[str(desc.digest)] = desc
            return True
        return self.sink.has_blob(desc)

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        self.sink.put_blob(desc, stream, progress)

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        self.sink.put_manifest(desc, raw, names)

    def close(self) -> None:
        if self.omitted:   # nothing left out: a complete layout, not marked
            self.sink.annotations.update({INCREMENTAL_ANNOTATION: "true",
                                          OMITTED_ANNOTATION: ",".join(sorted(self.omitted))})
        self.sink.close()

    def abort(self) -> None:
        self.sink.abort()


def missing_blobs(source: ImageSource, desc: Descriptor, in_source: Holds,
                  in_store: Holds) -> list[tuple[Descriptor, str]]:
    """The blobs image ``desc`` needs that neither ``source`` nor the store holds, each
    with what needs it (``layer 3 of 7 of manifest sha256:…``).  Manifests and configs
    must be in the source itself (an incremental save always writes them)."""
    out: list[tuple[Descriptor, str]] = []
    todo = [desc]
    seen: set[str] = set()
    while todo:
        d = todo.pop()
        if str(d.digest) in seen:
            continue
        seen.add(str(d.digest))
        if not in_source(d):
            out.append((d, "the manifest" if d is desc else "a manifest of its index"))
            continue
        doc: Manifest | Index = fetch_manifest(source, d)
        if isinstance(doc, Index):
            todo.extend(doc.manifests)
            continue
        if not in_source(doc.config):
            out.append((doc.config, f"the config of manifest {d.digest}"))
        for i, layer in enumerate(doc.layers, 1):
            if not in_source(layer) and not in_store(layer):
                out.append((layer, f"layer {i} of {len(doc.layers)} of manifest "
                                   f"{d.digest}"))
    return out

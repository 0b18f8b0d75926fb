"""Layers leave in another compression: a sink wrapper that writes layers anew before
the sink under it gets them, and rewrites the manifests (and indexes) to name what it
sent (rewrite.py).

* By default only plain layers are converted, to gzip: Docker pushes its uncompressed
  local layers this way, and skopeo compresses them for a registry too (a registry, and
  every puller, would otherwise move the plain tar).  ``transfer`` wraps registry
  destinations in it, so ``push`` and ``copy docker-archive:… docker://…`` send gzip.
* ``--dest-compress-format gzip|zstd|zstd:chunked`` (skopeo's ``copy`` option of that
  name) converts every layer not already in that form, for ``copy``, ``push`` and
  ``save``.  A layer already in the form travels unchanged, as skopeo keeps it (a
  zstd:chunked layer counts as zstd; a zstd layer without a TOC is not zstd:chunked).

A conversion decompresses the layer (within the expansion limit) and writes the very
same tar through lamina's writers (layer/verify.py ``recompress``): the diff_id, so the
config and the image id, stay; only the manifest's layer descriptors change (digest,
size, media type, zstd:chunked annotations).  The writers are deterministic, so the same
layer converted twice is the same blob, on any machine.  Each conversion is recorded in
the store (source digest, format, level → the converted descriptor): a later push whose
registry already holds the converted blob asks it (HEAD) and converts nothing.

The new blob goes through a spool file under ``<store>/tmp`` — a registry upload needs
the digest, known only at the end, and the size up front — checked on the way (tar
headers; the source blob's digest), then handed on at rest (sendfile).  Docker manifests
cannot name zstd layers (the zstd media type is OCI only): a Docker image converted to
zstd gets an OCI manifest (rewrite.py), as skopeo converts it; its config, so its image
id, stays."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from lamina.digest import Digest, HashingWriter, VerifyingReader
from lamina.errors import InvalidInput, LaminaError
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor, parse
from lamina.transport.base import ImageSink, Progress
from lamina.transport.rewrite import is_plain_layer, swap_children

if TYPE_CHECKING:
    from lamina.layer.options import LayerOptions
    from lamina.store.meta import Metadata
    from lamina.store.store import Store

# What --dest-compress-format takes (skopeo's set: a registry layer is compressed).
DEST_FORMATS = ("gzip", "zstd", "zstd:chunked")
_CONVERTIBLE = {mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD,
                mt.DOCKER_LAYER, mt.DOCKER_LAYER_GZIP}
_DOCKER = {mt.DOCKER_LAYER, mt.DOCKER_LAYER_GZIP}


@dataclass(frozen=True)
class Conversion:
    """Which form layers leave in: ``compression`` at ``level`` (None: the writer's
    default, so ``key`` names the effective level)."""

    compression: str = "gzip"
    level: int | None = None
    only_plain: bool = False    # the default for registries: plain layers only

    def __post_init__(self) -> None:
        if self.compression not in DEST_FORMATS:
            raise InvalidInput(f"unknown destination compression {self.compression!r}: "
                               f"choose {', '.join(DEST_FORMATS)}")
        self.options()   # checks the level's range

    def options(self) -> LayerOptions:
        from lamina.layer.options import LayerOptions

        return LayerOptions(compression=self.compression,  # type: ignore[arg-type]
                            level=self.level)

    @property
    def key(self) -> str:
        """``format:level``, as conversions are recorded."""
        from lamina.layer.options import DEFAULT_LEVEL

        level = DEFAULT_LEVEL[self.compression] if self.level is None else self.level
        return f"{self.compression}:{level}"

    def wanted(self, desc: Descriptor) -> bool:
        """Whether ``desc`` must be written anew (else it travels as it is)."""
        if desc.digest.algorithm != "sha256" or desc.media_type not in _CONVERTIBLE:
            return False    # configs, foreign and non-distributable layers
        if self.only_plain:
            return is_plain_layer(desc)
        if self.compression == "gzip":
            return desc.media_type not in (mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP)
        if desc.media_type != mt.OCI_LAYER_ZSTD:
            return True
        return self.compression == "zstd:chunked" and not mt.is_chunked(desc.annotations)

    def media_type(self, source: Descriptor) -> str:
        """The converted layer's media type: in its manifest's flavour, except that a
        Docker manifest cannot name zstd (its manifest becomes OCI: rewrite.py)."""
        docker = source.media_type in _DOCKER and self.compression == "gzip"
        return mt.layer_media_type(self.compression, docker)

    def descriptor(self, source: Descriptor, digest: Digest, size: int,
                   annotations: Mapping[str, str]) -> Descriptor:
        """The converted layer's descriptor: the source's annotations but any of an old
        TOC, plus the new TOC's."""
        kept = {k: v for k, v in source.annotations.items() if not k.startswith(
            mt.CHUNKED_ANNOTATION_PREFIXES)}
        return Descriptor(self.media_type(source), digest, size, {**kept, **annotations})


class ConversionCache(Protocol):
    """Conversions made before (the store's metadata): ``(source digest, Conversion.key)``
    → the converted layer's descriptor."""

    def get(self, source: Digest, key: str) -> Descriptor | None: ...

    def put(self, source: Digest, key: str, converted: Descriptor) -> None: ...


class StoreConversions:
    """The ``ConversionCache`` a store keeps (``layer_conversions`` in its metadata)."""

    def __init__(self, meta: Metadata) -> None:
        self._meta = meta

    def get(self, source: Digest, key: str) -> Descriptor | None:
        row = self._meta.conversion(str(source), key)
        if row is None:
            return None
        digest, size, media_type, annotations = row
        return Descriptor(media_type, Digest.parse(digest), size, json.loads(annotations))

    def put(self, source: Digest, key: str, converted: Descriptor) -> None:
        self._meta.add_conversion(str(source), key, str(converted.digest), converted.size,
                                  converted.media_type,
                                  json.dumps(dict(converted.annotations), sort_keys=True))


class CompressingSink:
    def __init__(self, inner: ImageSink, spool_dir: Path | None = None,
                 conversion: Conversion | None = None,
                 cache: ConversionCache | None = None) -> None:
        self.inner = inner
        self.accepts_index = inner.accepts_index
        self.concurrent_blobs = getattr(inner, "concurrent_blobs", False)
        self.spool_dir = spool_dir
        self.conversion = conversion or Conversion(only_plain=True)
        self.cache = cache
        self._lock = threading.Lock()
        self._replaced: dict[Digest, Descriptor] = {}   # given digest -> what was sent
        self.converted = 0      # layers written anew (not found converted already)

    def stored(self, desc: Descriptor) -> Descriptor:
        """What was sent for ``desc``: itself, or its converted form / rewritten manifest."""
        with self._lock:
            return self._replaced.get(desc.digest, desc)

    def sent(self) -> list[Descriptor]:
        """The converted layers and rewritten manifests this sink handed on."""
        with self._lock:
            return list(self._replaced.values())

    def has_blob(self, desc: Descriptor) -> bool:
        if not self.conversion.wanted(desc):
            return self.inner.has_blob(desc)
        with self._lock:
            if desc.digest in self._replaced:
                return True     # converted and sent already (another manifest's layer)
        # Converted before: the destination may hold the result (a second push).
        known = self.cache.get(desc.digest, self.conversion.key) if self.cache else None
        if known is not None and self.inner.has_blob(known):
            with self._lock:
                self._replaced[desc.digest] = known
            return True
        return False

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        if not self.conversion.wanted(desc):
            self.inner.put_blob(desc, stream, progress)
            return
        # Imported here: only a layer to convert needs the layer room.
        from lamina.layer.verify import recompress

        reader = stream if isinstance(stream, VerifyingReader) and \
            stream.expected == desc.digest else VerifyingReader(
                stream, desc.digest, desc.size, what=f"layer {desc.digest}")
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="layer-", dir=self.spool_dir)
        try:
            with open(fd, "wb") as f:
                out = HashingWriter(f)
                try:
                    made = recompress(reader, out, self.conversion.options())
                    reader.verify()
                except LaminaError as e:
                    raise e.context(f"layer {desc.digest}") from None
            new = self.conversion.descriptor(desc, out.digest, out.count, made.annotations)
            if not self.inner.has_blob(new):
                with open(name, "rb") as f:
                    # at rest: hashed above as it was written, so it may go by sendfile
                    self.inner.put_blob(new, VerifyingReader(f, new.digest, new.size,
                                                             at_rest=True), progress)
        finally:
            os.unlink(name)
        if self.cache is not None:
            self.cache.put(desc.digest, self.conversion.key, new)
        with self._lock:
            self._replaced[desc.digest] = new
            self.converted += 1

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        with self._lock:
            replaced = dict(self._replaced)
        doc = parse(raw, desc.media_type, what=f"manifest {desc.digest}")
        new_desc, new_raw, _ = swap_children(desc, raw, doc, replaced)
        if new_desc is not desc:
            with self._lock:
                self._replaced[desc.digest] = new_desc
        self.inner.put_manifest(new_desc, new_raw, names)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


def converting_sink(sink: ImageSink, store: Store,
                    conversion: Conversion | None) -> CompressingSink:
    """``sink`` behind a ``CompressingSink`` (``conversion`` None: plain layers to gzip)
    that spools under the store and records its conversions there."""
    return CompressingSink(sink, store.root / "tmp", conversion, StoreConversions(store.meta))

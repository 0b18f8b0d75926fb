"""Plain layers leave compressed: a sink wrapper that gzips every uncompressed layer
before the sink under it gets it, and rewrites the manifests (and indexes) to name the
gzip blobs (rewrite.py).  Docker pushes its uncompressed local layers this way, and
skopeo compresses them for a registry too: a registry, and every puller, would otherwise
move the plain tar.  ``transfer`` wraps registry destinations in it, so ``push`` and
``copy docker-archive:… docker://…`` send gzip.

The gzip is written as ``lamina import`` writes layers (isal level 1, whole 1 MiB
blocks: the same tar, the same bytes), into a spool file — a registry upload needs the
digest, known only at the end, and the size up front — checked on the way (tar headers;
the tar's digest is the descriptor's), then handed on at rest (sendfile).  Whether the
registry already holds the gzip form can be asked only once it is made."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from lamina.digest import Digest, HashingWriter, VerifyingReader
from lamina.errors import LaminaError
from lamina.image.manifest import Descriptor, parse
from lamina.transport.base import ImageSink, Progress
from lamina.transport.rewrite import gzip_descriptor, is_plain_layer, swap_children


class CompressingSink:
    def __init__(self, inner: ImageSink, spool_dir: Path | None = None) -> None:
        self.inner = inner
        self.accepts_index = inner.accepts_index
        self.concurrent_blobs = getattr(inner, "concurrent_blobs", False)
        self.spool_dir = spool_dir
        self._lock = threading.Lock()
        self._replaced: dict[Digest, Descriptor] = {}   # given digest -> what was sent

    def stored(self, desc: Descriptor) -> Descriptor:
        """What was sent for ``desc``: itself, or its gzip form / rewritten manifest."""
        with self._lock:
            return self._replaced.get(desc.digest, desc)

    def has_blob(self, desc: Descriptor) -> bool:
        if is_plain_layer(desc):
            with self._lock:
                done = desc.digest in self._replaced
            return done   # its gzip form is known (and was sent) only once made
        return self.inner.has_blob(desc)

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        if not is_plain_layer(desc):
            self.inner.put_blob(desc, stream, progress)
            return
        # Imported here: only a plain layer needs the layer room.
        from lamina.layer.options import LayerOptions
        from lamina.layer.verify import compress_checked

        reader = stream if isinstance(stream, VerifyingReader) and \
            stream.expected == desc.digest else VerifyingReader(
                stream, desc.digest, desc.size, what=f"layer {desc.digest}")
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="gzip-", dir=self.spool_dir)
        try:
            with open(fd, "wb") as f:
                out = HashingWriter(f)
                try:
                    compress_checked(reader, out, LayerOptions(compression="gzip"))
                    reader.verify()
                except LaminaError as e:
                    raise e.context(f"layer {desc.digest}") from None
            gz = gzip_descriptor(desc, out.digest, out.count)
            if not self.inner.has_blob(gz):
                with open(name, "rb") as f:
                    # at rest: hashed above as it was written, so it may go by sendfile
                    self.inner.put_blob(gz, VerifyingReader(f, gz.digest, gz.size,
                                                            at_rest=True), progress)
        finally:
            os.unlink(name)
        with self._lock:
            self._replaced[desc.digest] = gz

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

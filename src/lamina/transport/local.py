"""The local store as a transport: what ``lamina load``, ``save`` and ``import`` read and
write.  Names are full references (``docker.io/library/busybox:latest``)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from lamina.digest import Digest, VerifyingReader
from lamina.errors import InvalidReference, LaminaError, NotFound
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig
from lamina.image.manifest import Descriptor, Index, Manifest, build_manifest, parse
from lamina.image.reference import Reference
from lamina.store.store import Lease, Store
from lamina.transport.base import NamedImage, Progress
from lamina.transport.rewrite import PLAIN_LAYERS, gzip_descriptor, is_plain_layer, swap_children
from lamina.transport.verify import image_config, verify_layers

if TYPE_CHECKING:
    from lamina.layer.chunkmap import ChunkMap
    from lamina.store.blobs import BlobWriter
    from lamina.store.chunks import ChunkSink
    from lamina.transport.delta import BlobRanges


class StoreTransport:
    """Source and sink over a Store.  As a sink it holds a lease from creation to
    ``close``/``abort`` so gc never removes a blob it wrote but has not yet named.

    ``put_blob`` returns once the bytes are written and verified; their fsync and rename
    (``BlobWriter.publish``) run on a background thread, so copy's worker goes on to
    the next blob meanwhile.  ``put_manifest``, ``close`` and ``abort`` wait for every
    pending publish first: no manifest is recorded before its blobs are durable, and a
    failed publish fails the copy."""

    accepts_index = True
    concurrent_blobs = True   # copy may call it from several threads (CopyOptions.jobs)

    def __init__(self, store: Store, verify_layers: bool = False,
                 compress_layers: bool = False) -> None:
        """``verify_layers``: decompress every layer of an image (once: remembered) and
        check its diff_id before recording the image, as ``load`` does.  Without it only
        the cheap checks run (one diff_id per layer, known layer media types).

        ``compress_layers``: store uncompressed layers as gzip (``load``: a ``docker
        save`` archive's layers are plain tars; kept so they took 2-3× the disk of the
        same image pulled, and were pushed uncompressed).  The manifests naming them are
        rewritten to name the gzip blobs (the config, hence the image id, is unchanged;
        the manifest digest of a classic archive is lamina's own anyway).  A layer whose
        diff_id the store already holds as a checked gzip blob is not compressed again.
        ``stored(desc)`` tells what a descriptor given to the sink became."""
        self.store = store
        self._lease_obj: Lease | None = None   # owned by this process (store/locks.py)
        self.verify_layers = verify_layers
        self.compress_layers = compress_layers
        self._replaced: dict[Digest, Descriptor] = {}   # given digest -> what was stored
        self._lease_lock = threading.Lock()   # copy may put blobs from several threads
        self._written: list[str] = []   # blobs this sink added (for abort)
        self._publishing: list[Future[Digest]] = []
        self._pending: set[str] = set()   # digests written, their publish not yet settled
        self._publisher: ThreadPoolExecutor | None = None
        # zstd:chunked layers this sink kept whole (chunk_pending), and those of them a
        # delta path was offered for (a registry): the others, from a source without
        # one (load, an OCI layout), are cut at put_manifest if they share content.
        self._kept: set[str] = set()
        self._ranged: set[str] = set()

    # -- source ----------------------------------------------------------------------
    def images(self) -> list[NamedImage]:
        out = []
        for tag in self.store.meta.tags():
            rec = self.store.meta.get_image(tag.digest)
            size = rec.size if rec else self.store.blobs.size(Digest.parse(tag.digest))
            out.append(NamedImage(tag.name, Descriptor(tag.media_type, Digest.parse(tag.digest),
                                                       size)))
        return out

    def _descriptor(self, digest: str) -> Descriptor:
        rec = self.store.meta.get_image(digest)
        if rec is None:
            raise NotFound(f"image {digest} not in the store")
        return Descriptor(rec.media_type, Digest.parse(rec.digest), rec.size)

    def resolve(self, name: str | None) -> Descriptor:
        """A reference (``name[:tag]``, ``name@digest``), a manifest digest, or an image
        id (config digest) or a unique prefix of one, as Docker accepts."""
        if name is None:
            raise InvalidReference("name an image")
        if name.startswith(("sha256:", "sha512:")):
            digest = str(Digest.parse(name))
            if self.store.meta.get_image(digest) is not None:
                return self._descriptor(digest)
            found = self.find_by_id(name.removeprefix("sha256:"))  # an image id
            if found is not None:
                return found
            raise NotFound(f"image {name} not in the store")
        if 4 <= len(name) <= 64 and all(c in "0123456789abcdef" for c in name):
            found = self.find_by_id(name)
            if found is not None:
                return found
        ref = Reference.parse(name)
        if ref.digest is not None:
            return self._descriptor(str(ref.digest))
        tag = self.store.meta.get_tag(str(ref))
        if tag is None:
            raise NotFound(f"image {ref.familiar} not in the store")
        return self._descriptor(tag.digest)

    def find_by_id(self, prefix: str) -> Descriptor | None:
        hits = set(self.store.meta.find_images(prefix))
        # image ids are config digests: find manifests whose config starts with prefix
        for parent in self.store.meta.find_parents_by_child_prefix(f"sha256:{prefix}"):
            if self.store.meta.get_image(parent) is not None:
                hits.add(parent)
        if len(hits) > 1:
            raise InvalidReference(f"short id {prefix!r} matches {len(hits)} images")
        return self._descriptor(hits.pop()) if hits else None

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        return self.store.blobs.open(desc.digest, desc.size)

    # -- sink ------------------------------------------------------------------------
    def _lease(self) -> str:
        with self._lease_lock:
            if self._lease_obj is None:
                self._lease_obj = self.store.open_lease()
            return self._lease_obj.id

    def stored(self, desc: Descriptor) -> Descriptor:
        """What the sink stored for ``desc``: itself, or its rewritten/compressed form."""
        with self._lease_lock:
            return self._replaced.get(desc.digest, desc)

    def _compresses(self, desc: Descriptor) -> bool:
        return self.compress_layers and is_plain_layer(desc)

    def has_blob(self, desc: Descriptor) -> bool:
        # Register first, then look: a blob that exists now cannot be collected before
        # the manifest naming it is recorded (see store/gc.py).
        self.store.meta.add_lease_resource(self._lease(), str(desc.digest))
        with self._lease_lock:
            if str(desc.digest) in self._pending or desc.digest in self._replaced:
                return True   # written and checked; its publish is settled before any manifest
        if self._compresses(desc):
            # A plain layer's digest is its diff_id: a gzip blob checked to hold that
            # tar is the same layer, already here.
            for rec in self.store.meta.layers_by_diff_id(str(desc.digest)):
                gz = Descriptor(rec.media_type, Digest.parse(rec.digest), rec.size,
                                desc.annotations)
                self.store.meta.add_lease_resource(self._lease(), rec.digest)
                if rec.media_type == PLAIN_LAYERS[desc.media_type] and \
                        self.store.meta.verified_diff_id(rec.digest) == str(desc.digest) \
                        and self.store.blobs.has(gz.digest):
                    with self._lease_lock:
                        self._replaced[desc.digest] = gz
                    return True
            return False    # a plain copy already here (an older load) is not the form kept
        return self.store.blobs.has(desc.digest)

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        self.store.meta.add_lease_resource(self._lease(), str(desc.digest))
        if self._compresses(desc):
            self._put_compressed(desc, stream, progress)
            return

        verified = stream if isinstance(stream, VerifyingReader) and \
            stream.expected == desc.digest else None
        # A stream that can start midway (a registry's, by Range) is worth resuming if
        # this pull is cut off: the writer's ingest file is then named for the blob.
        resumable = verified is not None and hasattr(verified.raw, "start_at")
        w = self.store.blobs.writer(desc.digest.algorithm, verified_by=verified,
                                    resume=desc.digest if resumable else None)
        try:
            w.fill_from(stream, None if progress is None
                        else (lambda done: progress(done, desc.size)))
            w.finish(desc.digest, desc.size)
        except KeyboardInterrupt:
            w.keep()    # Ctrl-C (or a worker's wire.Cancelled): the next pull goes on here
            raise
        except BaseException:
            w.abort()   # a failure leaves nothing behind, as ever
            raise
        self.publish_written(w, desc)

    def put_blob_delta(self, desc: Descriptor, ranges: BlobRanges,
                       progress: Progress | None = None) -> int | None:
        """Store a zstd:chunked layer fetching only the frames the store lacks
        (transport/delta.py); the bytes reused, or None when the caller must fetch it
        whole (not chunked, nothing to reuse, a TOC or a registry that does not hold)."""
        if not mt.is_layer(desc.media_type) or not mt.is_chunked(desc.annotations):
            return None
        with self._lease_lock:
            self._ranged.add(str(desc.digest))
            kept = set(self._kept)
        # Layers this pull kept whole are not looked at: a cold pull of a many-layer
        # image stays a plain pull (its layers rarely share; a later pull cuts them).
        # Asked here, not only in delta_pull: nothing to share, nothing to import.
        if not self.store.meta.has_shareable(kept):
            return None     # fetched whole, as a plain zstd layer is
        from lamina.transport.delta import delta_pull  # the layer room, when needed

        lease = self._lease()
        self.store.meta.add_lease_resource(lease, str(desc.digest))
        result = delta_pull(self.store, desc, ranges,
                            lambda keys: self.store.meta.add_lease_resources(lease, keys),
                            progress, kept)
        if result is None:
            return None
        self._publish(result.writer, desc.digest, result.chunks)
        return result.reused

    def publish_written(self, w: BlobWriter, desc: Descriptor) -> None:
        """Publish a blob written and verified by ``w`` (``finish`` done).  A layer
        marked zstd:chunked is kept whole and listed as such (``chunk_pending``): a
        delta pull that first shares its content cuts it into chunks
        (``layer/chunkmap.cut_pending``).  Cut now, it cost a cold pull ~40% over a
        plain zstd pull (hashing every frame, a pack index, a recipe, a row per frame:
        bench_delta), for content nothing else may ever share."""
        pending = mt.is_layer(desc.media_type) and mt.is_chunked(desc.annotations)
        self._publish(w, desc.digest, pending=desc if pending else None)

    def _publish(self, w: BlobWriter | ChunkSink, digest: Digest,
                 cmap: ChunkMap | None = None, pending: Descriptor | None = None) -> None:
        """Publish ``w`` on a background thread; ``cmap``: a delta's (its chunks'
        contents recorded beside it); ``pending``: a chunked layer kept whole, listed."""
        def publish() -> Digest:
            done = w.publish()
            if pending is not None:
                self.store.meta.add_chunk_pending(
                    str(digest), json.dumps(dict(pending.annotations or {}), sort_keys=True))
                with self._lease_lock:
                    self._kept.add(str(digest))
            return done

        def record() -> Digest:
            # The delta's recipe is written (ChunkSink.finish): its chunks' contents are
            # recorded beside the publish, not after it.
            from lamina.layer.chunkmap import record_contents

            if cmap is not None:
                record_contents(self.store, digest, cmap, w.recipe)
            return digest

        with self._lease_lock:
            if self._publisher is None:
                self._publisher = ThreadPoolExecutor(2, thread_name_prefix="lamina-publish")
            # Counted as written from now on: a publish that renames the blob and then
            # fails (the directory fsync) must still be undone by abort.
            self._written.append(str(digest))
            self._pending.add(str(digest))
            self._publishing.append(self._publisher.submit(publish))
            if cmap is not None:
                self._publishing.append(self._publisher.submit(record))

    def _put_compressed(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                        progress: Progress | None) -> None:
        """Store a plain layer as gzip (deterministic: the level and blocks ``lamina
        import`` uses), checking its tar headers and its digest — its diff_id — on the
        way; remember the gzip blob as a checked form of that diff_id."""
        # Imported here: a pull never needs the layer room (its import cost is watched).
        from lamina.layer.options import LayerOptions
        from lamina.layer.verify import compress_checked

        reader = stream if isinstance(stream, VerifyingReader) and \
            stream.expected == desc.digest else VerifyingReader(
                stream, desc.digest, desc.size, what=f"layer {desc.digest}")
        w = self.store.blobs.writer()
        try:
            try:
                compress_checked(reader, w, LayerOptions(compression="gzip"), None
                                 if progress is None else (lambda n: progress(n, desc.size)))
                reader.verify()
            except LaminaError as e:
                raise e.context(f"layer {desc.digest}") from None
            gz = gzip_descriptor(desc, w.digest, w.count)
            self.store.meta.add_lease_resource(self._lease(), str(gz.digest))
            w.finish(gz.digest, gz.size)
        except BaseException:
            w.abort()
            raise
        self._publish(w, gz.digest)
        with self._lease_lock:
            self._replaced[desc.digest] = gz
        self.store.meta.add_verified_layer(str(gz.digest), str(desc.digest))
        self.store.meta.add_layer(str(gz.digest), str(desc.digest), gz.media_type, gz.size)

    def _settle(self) -> None:
        """Wait for every pending publish; raise the first failure (after all ended)."""
        with self._lease_lock:
            pending, self._publishing = self._publishing, []
        first: BaseException | None = None
        for future in pending:
            try:
                future.result()
            except BaseException as e:  # noqa: BLE001 - the first is raised below
                first = first or e
        with self._lease_lock:
            self._pending.clear()
        if first is not None:
            raise first

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        self._settle()
        with self._lease_lock:
            unranged, self._kept = self._kept - self._ranged, self._kept & self._ranged
        if unranged:
            # No delta path brought these: cut them now if they share content with
            # what the store holds, so a load of ten variants keeps each chunk once.
            from lamina.layer.chunkmap import cut_shared

            lease = self._lease()
            cut_shared(self.store, unranged,
                       lambda keys: self.store.meta.add_lease_resources(lease, keys))
        doc = parse(raw, desc.media_type, what=f"manifest {desc.digest}")
        with self._lease_lock:
            replaced = dict(self._replaced)
        given = desc
        desc, raw, doc = swap_children(desc, raw, doc, replaced)
        if desc is not given:
            with self._lease_lock:
                self._replaced[given.digest] = desc
        self.store.meta.add_lease_resource(self._lease(), str(desc.digest))
        what = f"manifest {desc.digest}"
        # An image that can never be unpacked is refused before anything names it.
        config = image_config(self.store, doc, what) if isinstance(doc, Manifest) else None
        if config is not None and self.verify_layers:
            assert isinstance(doc, Manifest)
            verify_layers(self.store, doc, config, what)
        if not self.store.blobs.has(desc.digest):
            self.store.blobs.put_bytes(raw, desc.digest)
            self._written.append(str(desc.digest))
        children: list[str]
        if isinstance(doc, Manifest):
            children = [str(d.digest) for d in doc.blobs()]
            if config is not None:
                self._record_layers(doc, config)
        else:
            assert isinstance(doc, Index)
            children = [str(d.digest) for d in doc.manifests]
        if names is None:
            self.store.meta.add_refs(str(desc.digest), children)
            return
        refs = [str(Reference.parse(n)) for n in names]
        before = [self.store.meta.get_tag(r) for r in refs]
        self.store.meta.add_image(str(desc.digest), desc.media_type, desc.size, children,
                                  refs[0] if refs else None)
        for r in refs[1:]:
            self.store.meta.set_tag(r, str(desc.digest), desc.media_type)
        for old in before:
            if old is not None and old.digest != str(desc.digest):
                self._drop_if_same_image(old.digest, doc)

    def _drop_if_same_image(self, old: str, new: Manifest | Index) -> None:
        """A name moved to another encoding of the *same* image (same config: e.g. a
        docker-archive's uncompressed layers after a gzip'd layout) leaves no ``<none>``
        twin behind; a name moved to a different image leaves the old one, as Docker."""
        if not isinstance(new, Manifest) or self.store.meta.tags_for(old):
            return
        if str(new.config.digest) in self.store.meta.children(old):
            self.store.meta.delete_image(old)

    def _record_layers(self, manifest: Manifest, config: ImageConfig) -> None:
        """Remember each layer's diff_id (from the config) for dedup and unpacking."""
        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=False):
            self.store.meta.add_layer(str(layer.digest), str(diff_id), layer.media_type,
                                      layer.size)

    def close(self) -> None:
        try:
            self._settle()
        finally:
            if self._publisher is not None:
                self._publisher.shutdown()
                self._publisher = None
            if self._lease_obj is not None:
                self._lease_obj.close()
                self._lease_obj = None

    def suspend(self) -> None:
        """Stop after Ctrl-C, keeping the blobs that fully arrived (verified and
        published): the same pull run again finds them (``has_blob``) and moves only
        the rest, as ``docker pull`` keeps finished layers.  Nothing is named; until
        then they are unreferenced, gc's to take like any blob no image holds.  A blob
        cut off midway left its ingest file, named for it (``put_blob``), for the next
        pull to go on from; gc removes it too."""
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self._settle()   # a publish that failed has removed its own file
        self._written = []
        self.close()

    def abort(self) -> None:
        """Undo: remove the blobs this sink wrote that nothing else reaches (a manifest
        put before the failure stays only if named).  Failing input leaves no trace."""
        from lamina.store.gc import discard

        # Every publish must have ended (renamed or failed) before the discard, or a
        # late rename would leave a blob behind; their failures are the abort's reason.
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self._settle()
        if self._written and self._lease_obj is not None:
            discard(self.store, self._written, self._lease_obj.id)
        self._written = []
        self.close()


def record_image(store: Store, lease: Lease, config_raw: bytes, config_media_type: str,
                 layers: Sequence[Descriptor], tags: Sequence[str] = (),
                 manifest_media_type: str = mt.OCI_MANIFEST) -> tuple[Descriptor, Manifest]:
    """Store a new image made here (import, build, ``run --commit``): its layers are in
    the store already; put the config and the manifest — each named in ``lease`` before
    it becomes visible — then record the image and point ``tags`` (full references) at
    it.  Returns the config's descriptor and the manifest."""
    config_digest = Digest.from_bytes(config_raw)
    lease.add(config_digest)
    store.blobs.put_bytes(config_raw, config_digest)
    config_desc = Descriptor(config_media_type, config_digest, len(config_raw))
    manifest = build_manifest(config_desc, layers, media_type=manifest_media_type)
    lease.add(manifest.digest)
    store.blobs.put_bytes(manifest.raw, manifest.digest)
    store.meta.add_image(str(manifest.digest), manifest.media_type, len(manifest.raw),
                         [str(d.digest) for d in manifest.blobs()],
                         tags[0] if tags else None)
    for tag in tags[1:]:
        store.meta.set_tag(tag, str(manifest.digest), manifest.media_type)
    return config_desc, manifest

"""lamina.store: blobs by digest, metadata in SQLite, snapshots by chain id, gc, fsck."""

from lamina.store.blobs import BlobIngester, BlobProvider, BlobStore, BlobWriter
from lamina.store.gc import GcReport, collect, reachable
from lamina.store.meta import ImageRecord, LayerRecord, Metadata, TagRecord
from lamina.store.store import Lease, Store, default_root

__all__ = [
    "BlobIngester", "BlobProvider", "BlobStore", "BlobWriter", "GcReport", "ImageRecord",
    "LayerRecord", "Lease", "Metadata", "Store", "TagRecord", "collect", "default_root",
    "reachable",
]

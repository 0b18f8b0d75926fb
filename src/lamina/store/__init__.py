"""lamina.store: blobs by digest, metadata in SQLite, snapshots by chain id, gc, fsck."""

from typing import TYPE_CHECKING, Any

from lamina.store.blobs import BlobIngester, BlobProvider, BlobStore, BlobWriter
from lamina.store.meta import ImageRecord, LayerRecord, Metadata, TagRecord
from lamina.store.store import Lease, Store, default_root

if TYPE_CHECKING:
    from lamina.store.gc import GcReport, collect, reachable
else:
    def __getattr__(name: str) -> Any:
        """gc's names, imported on first use: every lamina run opens a store, few collect."""
        if name in ("GcReport", "collect", "reachable"):
            from lamina.store import gc

            return getattr(gc, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BlobIngester", "BlobProvider", "BlobStore", "BlobWriter", "GcReport", "ImageRecord",
    "LayerRecord", "Lease", "Metadata", "Store", "TagRecord", "collect", "default_root",
    "reachable",
]

"""A rolling store lease: what the server accepts stays safe from gc until a manifest
names it (containerd ``leases``; store/gc.py).

Every blob an upload is about to rename into place, every blob a mount links, and every
blob a pushed manifest names is registered here *before* the operation, so an online
``lamina gc`` in another process never removes a blob whose manifest has not arrived yet.
The lease rolls over every ``ttl / 2`` seconds, so a registered blob is protected for at
least half the TTL (default: one hour of two); expired leases are gc's to drop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from lamina.store.meta import Metadata

LEASE_TTL = 2 * 3600.0


class RollingLease:
    def __init__(self, meta: Metadata, ttl: float = LEASE_TTL) -> None:
        self._meta = meta
        self._ttl = ttl
        self._id: str | None = None
        self._created = 0.0
        self._lock = threading.Lock()

    def protect(self, digests: Iterable[str]) -> None:
        """Register ``digests`` (blocking: call from a worker thread)."""
        with self._lock:
            now = time.time()
            if self._id is None or now - self._created > self._ttl / 2:
                self._id = self._meta.create_lease(self._ttl)
                self._created = now
            for d in dict.fromkeys(digests):
                self._meta.add_lease_resource(self._id, d)

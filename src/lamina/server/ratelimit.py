"""A token bucket per client address: ``rate`` requests a second, ``burst`` at once.
``take`` answers 0 (go) or the seconds until a request would be allowed (the
``Retry-After`` of a TOOMANYREQUESTS answer)."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, rate: float, burst: float = 0.0, max_clients: int = 100000) -> None:
        self.rate = rate
        self.burst = burst if burst > 0 else max(1.0, 2 * rate)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.max_clients and client not in self._buckets:
            self._buckets.clear()     # a flood of addresses: forget, rather than grow
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0

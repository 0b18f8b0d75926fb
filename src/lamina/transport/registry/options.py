"""What a registry connection is told: ``RegistryOptions`` and ``Credentials``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an OAuth2 refresh token (Docker's ``identitytoken``,
    sent to the token service as ``grant_type=refresh_token``)."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to one registry.  One object instead of many arguments."""

    # plain HTTP or unverified TLS allowed: https is tried without verification first,
    # then http (as Docker treats an "insecure registry").
    insecure: bool = False
    ca_bundle: Path | None = None       # extra CA file; also turns on https for loopback
    jobs: int = 3                       # parallel blobs (used by copy; sizes the pool)
    timeout: float = 60.0               # connect/read/write timeout per operation, seconds
    # retries for 5xx, 408, 429 (Retry-After honoured) and dropped connections, with
    # exponential backoff and jitter: backoff * 2**n, capped at max_backoff.
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    chunk_size: int | None = None       # None: monolithic upload; else PATCH chunks this big
    credentials: Credentials | None = None  # explicit; else looked up (auth.py)

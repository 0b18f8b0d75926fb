"""Cache keys for build steps (issue #3, "The layer cache").

A build is a chain of states.  Each state has a key: the key of the state before it and
what the step did (the instruction after expansion, the build args it can see, the digest
of what it copies).  A layer-making step whose key is in the store's build cache reuses
the stored layer.  Because every state key folds in its parent's, a changed step changes
the key of every step after it: an unchanged step after a changed one misses.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

VERSION = "lamina-build-cache-v1"
# The parent of a ``COPY --link`` step's key: no state below it, so the key (and the
# layer) is the same over any base.
LINK = hashlib.sha256(f"{VERSION}\nLINK".encode()).hexdigest()


def base_key(identity: str) -> str:
    """The state key of a FROM: the base image's manifest digest, ``scratch``, or a
    stage's final key."""
    return hashlib.sha256(f"{VERSION}\nFROM {identity}".encode()).hexdigest()


def step_key(parent: str, material: dict[str, Any]) -> str:
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{parent}\n{text}".encode()).hexdigest()

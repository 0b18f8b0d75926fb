"""Reading JSON that came from outside: manifests, indexes, configs, ``index.json``,
``manifest.json`` of a docker archive, registry answers.

Every reader of untrusted JSON goes through ``load_json`` (or ``load_object``), so the
limits are the same everywhere and a hostile document becomes one ``InvalidManifest``
line instead of a traceback:

* Nesting is bounded (``MAX_DEPTH``).  CPython's JSON scanner recurses once per level and
  raises ``RecursionError`` somewhere below ~1000 levels, depending on how deep the
  caller's own stack already is; and whatever walks the document afterwards (deepcopy,
  re-serialising, printing) recurses too.  No OCI or Docker document nests more than a
  handful of levels, so a fixed bound well below the interpreter's keeps every later walk
  safe.  (Go's encoding/json, which registries and Docker use, stops at 10000 levels;
  lamina is stricter because Python's stack is shallower.)
* Bytes must be UTF-8 JSON (RFC 8259 §8.1); errors name the document (``what``).
"""

from __future__ import annotations

import json
from typing import Any

from lamina.errors import InvalidManifest

MAX_DEPTH = 100

__all__ = ["MAX_DEPTH", "load_json", "load_object"]


def load_json(raw: bytes | str, what: str) -> Any:
    """The value ``raw`` holds; ``InvalidManifest`` naming ``what`` if it is not JSON or
    nests deeper than ``MAX_DEPTH``."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidManifest(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidManifest(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    _check_depth(value, what)
    return value


def load_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """``load_json`` for documents that must be a JSON object."""
    value = load_json(raw, what)
    if not isinstance(value, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return value


def _check_depth(value: Any, what: str) -> None:
    # Iterative: the check itself must not be what runs out of stack.
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidManifest(f"{what} nests deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))

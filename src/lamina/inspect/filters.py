"""``lamina images --filter``: Docker's image filters over the listing.

    dangling=true|false   untagged images only, or tagged ones only
    reference=PATTERN     a glob (Go's path.Match: ``*`` stops at ``/``) on the familiar
                          name or name:tag (``demo/*``, ``busybox:1.*``); several: any
    before=IMAGE          created before IMAGE; since=IMAGE: after it
    label=KEY[=VALUE]     the config has the label (with that value); several: all

Keys differ: every filter must hold (Docker's rules, ``docker images --filter``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from lamina.errors import InvalidInput
from lamina.inspect.summary import ImageSummary
from lamina.pathmatch import glob_regex
from lamina.store.store import Store
from lamina.transport.local import StoreTransport

KEYS = ("dangling", "reference", "before", "since", "label")


def parse_filters(texts: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InvalidInput(f"bad format of filter {text!r} (expected name=value)")
        if key not in KEYS:
            raise InvalidInput(f"invalid filter {key!r}: choose {', '.join(KEYS)}")
        out.setdefault(key, []).append(value)
    for key in ("dangling", "before", "since"):
        if len(out.get(key, ())) > 1:
            raise InvalidInput(f"filter {key!r} given more than once")
    if "dangling" in out and out["dangling"][0].lower() not in ("true", "false", "1", "0"):
        raise InvalidInput(f"invalid filter 'dangling={out['dangling'][0]}': true or false")
    return out


def _when(created: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 time (0 for none or a bad one)."""
    try:
        t = _dt.datetime.fromisoformat((created or "").replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (t if t.tzinfo else t.replace(tzinfo=_dt.UTC)).timestamp()


def _created_of(store: Store, rows: Sequence[ImageSummary], text: str) -> float:
    digest = str(StoreTransport(store).resolve(text).digest)
    for r in rows:
        if digest in (r.digest, r.image_id):
            return _when(r.created)
    raise InvalidInput(f"{text}: no such image in the listing")


def filter_images(store: Store, rows: Sequence[ImageSummary], filters: dict[str, list[str]]
                  ) -> list[ImageSummary]:
    kept = list(rows)
    if "dangling" in filters:
        dangling = filters["dangling"][0].lower() in ("true", "1")
        kept = [r for r in kept if (r.reference is None) == dangling]
    if "reference" in filters:
        globs = [glob_regex(p) for p in filters["reference"]]

        def matches(r: ImageSummary) -> bool:
            names = [r.repository, f"{r.repository}:{r.tag}"] if r.reference else []
            return any(g.fullmatch(n) for g in globs for n in names)

        kept = [r for r in kept if matches(r)]
    if "before" in filters:
        t = _created_of(store, rows, filters["before"][0])
        kept = [r for r in kept if _when(r.created) < t]
    if "since" in filters:
        t = _created_of(store, rows, filters["since"][0])
        kept = [r for r in kept if _when(r.created) > t]
    for want in filters.get("label", []):
        key, sep, value = want.partition("=")
        kept = [r for r in kept if key in r.labels and (not sep or r.labels[key] == value)]
    return kept

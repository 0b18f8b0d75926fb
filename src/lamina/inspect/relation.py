"""What a rebase or a squash left in an image, and how two images of one stack relate:
for ``lamina diff``, ``history`` and the web pages.

An image remembers its stack operations in standard places: the base it was rebased
onto in the manifest's ``org.opencontainers.image.base.name``/``.base.digest``
annotations, the rebase itself in an empty history entry (``created_by`` "lamina
rebase", comment "rebased from OLD@digest onto NEW@digest"), a squash in the comment of
the history entry that made the merged layer ("squashed layers N..M").  Two images
relate as a rebase when they end in the same layers above different bottoms, as a squash
when one's history says which of the other's layers it merged and the layers around
them agree.
"""

from __future__ import annotations

import re

from lamina.errors import LaminaError
from lamina.image.mutate import BASE_DIGEST, BASE_NAME, REBASE_CREATED_BY, layer_entries
from lamina.transport.resolve import ResolvedImage

_SQUASHED = re.compile(r"squashed layers? (\d+)(?:\.\.(\d+))?$")


def stack_notes(image: ResolvedImage) -> list[str]:
    """One line per thing a rebase or squash recorded, oldest first."""
    notes = []
    ann = image.manifest.annotations
    if ann.get(BASE_NAME) or ann.get(BASE_DIGEST):
        notes.append(f"base: {ann.get(BASE_NAME, '?')}@{ann.get(BASE_DIGEST, '?')}")
    for h in image.config.history:
        if h.created_by == REBASE_CREATED_BY and h.empty_layer and h.comment:
            notes.append(h.comment)
        elif not h.empty_layer and h.comment:
            m = _SQUASHED.search(h.comment)
            if m:
                notes.append(m.group(0))
    return notes


def _squashed(image: ResolvedImage) -> list[tuple[int, int, int]]:
    """(first, last, at): layers first..last (1-based) of the image it came from,
    merged into its layer ``at``."""
    out = []
    try:
        made = layer_entries(image.config, "image")
    except LaminaError:     # a history that does not add up tells nothing
        return []
    for at, i in enumerate(made, start=1):
        m = _SQUASHED.search(image.config.history[i].comment or "")
        if m:
            first = int(m.group(1))
            out.append((first, int(m.group(2) or first), at))
    return out


def _one_way(a: ResolvedImage, b: ResolvedImage, na: str, nb: str) -> str | None:
    ida, idb = a.config.diff_ids, b.config.diff_ids
    for first, last, at in _squashed(b):
        if first == at and last <= len(ida) and ida[:first - 1] == idb[:first - 1] and \
                ida[last:] == idb[at:] and len(idb) == len(ida) - (last - first):
            return f"{nb} is {na} with layers {first}..{last} squashed into layer {at}"
    bottom = 0
    while bottom < min(len(ida), len(idb)) and ida[bottom] == idb[bottom]:
        bottom += 1
    top = 0
    while top < min(len(ida), len(idb)) - bottom and ida[-1 - top] == idb[-1 - top]:
        top += 1
    if top and (bottom + top < len(ida) or bottom + top < len(idb)):
        def span(n: int) -> str:
            lo, hi = bottom + 1, n - top
            return "none" if hi < lo else (f"layer {lo}" if lo == hi else f"layers {lo}..{hi}")
        rebased = any(h.created_by == REBASE_CREATED_BY for h in b.config.history)
        verb = "rebased" if rebased else "on another base"
        return (f"{nb} is {na} {verb}: {span(len(ida))} of {na} replaced by "
                f"{span(len(idb))} of {nb}; the top {top} layer{'s' if top != 1 else ''} "
                "kept (same bytes)")
    return None


def relation(a: ResolvedImage, b: ResolvedImage) -> str | None:
    """How B came from A (or A from B) by a rebase or a squash, in one line; None if
    the stacks say neither."""
    return _one_way(a, b, "A", "B") or (
        _one_way(b, a, "B", "A") if _squashed(a) else None)

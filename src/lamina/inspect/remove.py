"""``lamina rmi``: untag, forget images left without a name, collect what only they used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lamina.errors import LaminaError, NotFound
from lamina.image.reference import Reference
from lamina.store.gc import collect
from lamina.store.store import Store
from lamina.transport.local import StoreTransport


@dataclass
class RemoveReport:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def remove_images(store: Store, refs: Sequence[str]) -> RemoveReport:
    """As ``docker rmi``: a name untags; an id or digest removes every name of that image.
    Blobs no other image reaches are removed at once."""
    report = RemoveReport()
    source = StoreTransport(store)
    removed_images: list[str] = []
    for text in refs:
        desc = source.resolve(text)
        digest = str(desc.digest)
        names: list[str]
        try:
            full = str(Reference.parse(text))
            tag = store.meta.get_tag(full)
            names = [full] if tag is not None and tag.digest == digest else []
        except LaminaError:
            names = []
        if not names:  # removal by id/digest: every name goes
            names = store.meta.tags_for(digest)
        for name in names:
            if store.meta.delete_tag(name):
                report.untagged.append(Reference.parse(name).familiar)
        if not store.meta.tags_for(digest):
            if store.meta.get_image(digest) is None:
                raise NotFound(f"image {text} not in the store")
            store.meta.delete_image(digest)
            removed_images.append(digest)
    if removed_images:
        gc_report = collect(store)
        report.deleted = list(removed_images) + [
            d for d in gc_report.blobs_removed if d not in removed_images]
    return report

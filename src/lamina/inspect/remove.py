"""``lamina rmi``: untag, forget images left without a name, remove what only they used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lamina.errors import InvalidInput, LaminaError
from lamina.image.reference import Reference
from lamina.store.gc import GcReport, collect, discard, reachable
from lamina.store.store import Store
from lamina.transport.local import StoreTransport


@dataclass
class RemoveReport:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def remove_images(store: Store, refs: Sequence[str], force: bool = False) -> RemoveReport:
    """As ``docker rmi``: a name untags; when no name is left the image is deleted with
    the blobs no other image uses.  An id or digest removes the image's names too, but
    (like Docker) only with ``force`` when they span several repositories."""
    report = RemoveReport()
    source = StoreTransport(store)
    removed: list[str] = []
    for text in refs:
        desc = source.resolve(text)
        digest = str(desc.digest)
        names: list[str] = []
        try:
            full = str(Reference.parse(text))
            tag = store.meta.get_tag(full)
            if tag is not None and tag.digest == digest:
                names = [full]
        except LaminaError:
            names = []
        if not names:  # by id or digest: every name goes
            names = store.meta.tags_for(digest)
            repos = {Reference.parse(n).name for n in names}
            if len(repos) > 1 and not force:
                raise InvalidInput(
                    f"conflict: unable to delete {text} (must be forced) - image is "
                    f"referenced in multiple repositories ({', '.join(sorted(repos))})")
        for name in names:
            if store.meta.delete_tag(name):
                report.untagged.append(Reference.parse(name).familiar)
        if not store.meta.tags_for(digest) and store.meta.get_image(digest) is not None:
            removed.append(digest)
    if removed:
        edges: dict[str, list[str]] = {}
        for parent, child in store.meta.all_refs():
            edges.setdefault(parent, []).append(child)
        candidates = reachable(removed, edges)
        for digest in removed:
            store.meta.delete_image(digest)
        gone = set(discard(store, [c for c in candidates if not c.startswith("snapshot:")]))
        report.deleted = [d for d in removed if d in gone] + sorted(gone - set(removed))
    return report


@dataclass
class PruneReport:
    untagged: list[str] = field(default_factory=list)   # familiar names
    deleted: list[str] = field(default_factory=list)    # image (manifest/index) digests
    gc: GcReport = field(default_factory=GcReport)


def dangling_images(store: Store) -> list[str]:
    """Docker's dangling images: image records without a name, that no named image
    holds (a platform's manifest under a tagged index is not dangling)."""
    edges: dict[str, list[str]] = {}
    for parent, child in store.meta.all_refs():
        edges.setdefault(parent, []).append(child)
    held = reachable({t.digest for t in store.meta.tags()}, edges)
    return [rec.digest for rec in store.meta.images() if rec.digest not in held]


def prune_images(store: Store, all_images: bool = False, cache: bool = False
                 ) -> PruneReport:
    """``docker image prune``: forget dangling images, then let gc remove what nothing
    reaches any more (``GcReport.bytes_freed`` is the reclaimed space).

    ``all_images``: Docker's ``-a`` removes every image no container uses (a container,
    running or stopped, keeps its image's name and record: store/containers.py).
    ``cache``: the whole build cache too (``system prune -a``); without it gc drops only
    entries whose layer is gone."""
    from lamina.store.containers import Containers

    report = PruneReport()
    in_use = {str(rec.spec.get("image_digest")) for rec in Containers(store.meta).all()}
    if all_images:
        for tag in store.meta.tags():
            if tag.digest not in in_use and store.meta.delete_tag(tag.name):
                report.untagged.append(Reference.parse(tag.name).familiar)
    for digest in dangling_images(store):
        if digest in in_use:
            continue
        store.meta.delete_image(digest)
        report.deleted.append(digest)
    report.gc = collect(store, cache=cache)
    return report

"""``lamina import``: an image from successive full snapshots of one root filesystem.

One source makes a one-layer image.  With several, layer *i* holds what changed from
source *i-1* to source *i* — the seed story done by hand: OS, then "web server
installed", then config, then content, each a layer of its own changes only.  A source
is a directory or a tar of a root filesystem.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamina.digest import Digest
from lamina.errors import InvalidInput, NotFound
from lamina.image import mediatypes as mt
from lamina.image.config import History, build_config, rfc3339
from lamina.image.manifest import Descriptor, Platform, current_platform
from lamina.image.reference import Reference
from lamina.layer import Changeset, LayerOptions, apply_layer, diff_trees
from lamina.layer.commit import commit_changeset
from lamina.layer.options import Compression
from lamina.store import scratch
from lamina.store.store import Store
from lamina.transport.local import record_image


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org) when set and valid."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        epoch = int(value)
    except ValueError:
        raise InvalidInput(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None
    if epoch < 0:
        raise InvalidInput("SOURCE_DATE_EPOCH must not be negative")
    return epoch


@dataclass(frozen=True)
class ImportOptions:
    compression: Compression = "gzip"
    source_date_epoch: int | None = None
    platform: Platform = field(default_factory=current_platform)
    # Compare the content of every file whose metadata is equal (rsync's --checksum),
    # not only of those whose whole-second mtimes may be truncated (layer/changes.py).
    checksum: bool = False
    # Called after each layer is stored: (index, total, layer descriptor, created_by).
    on_layer: Callable[[int, int, Descriptor, str], None] | None = None


@dataclass(frozen=True)
class ImportResult:
    reference: Reference
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]


@contextlib.contextmanager
def _as_directory(store: Store, src: Path) -> Iterator[Path]:
    """A source as a directory: itself, or a tar unpacked into the store's tmp area."""
    if src.is_dir():
        yield src
        return
    if not src.exists():
        raise NotFound(f"import source {src} does not exist")
    with scratch.make_dir(store.root / "tmp", "import-") as tmp:
        with open(src, "rb") as f:
            apply_layer(f, tmp.path / "rootfs")
        yield tmp.path / "rootfs"


class _DiscardOnError(contextlib.AbstractContextManager["_DiscardOnError"]):
    def __init__(self, store: Store, written: list[str], lease_id: str) -> None:
        self.store, self.written, self.lease_id = store, written, lease_id

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self.written:
            from lamina.store.gc import discard

            discard(self.store, self.written, self.lease_id)


def import_snapshots(store: Store, name: str, sources: Sequence[Path],
                     options: ImportOptions | None = None) -> ImportResult:
    opts = options or ImportOptions()
    ref = Reference.parse(name)
    if not sources:
        raise InvalidInput("import needs at least one source directory or tar")
    layer_opts = LayerOptions(compression=opts.compression,
                              source_date_epoch=opts.source_date_epoch)
    when = opts.source_date_epoch if opts.source_date_epoch is not None else int(time.time())
    created = rfc3339(when)
    layers: list[Descriptor] = []
    diff_ids: list[Digest] = []
    history: list[History] = []
    media_type = mt.layer_media_type(opts.compression)
    written: list[str] = []
    with store.lease() as lease, contextlib.ExitStack() as stack:
        # On failure, remove what this import wrote (unless another image shares it).
        stack.enter_context(_DiscardOnError(store, written, lease.id))
        previous: Path | None = None
        # Only the snapshot before is needed for the next diff: an unpacked tar source
        # is removed as soon as the one after it has been compared with it.
        held: contextlib.ExitStack | None = None
        for i, src in enumerate(sources):
            current = contextlib.ExitStack()
            stack.callback(current.close)
            root = current.enter_context(_as_directory(store, src))
            changes: Changeset | Path = root if previous is None else diff_trees(
                previous, root, opts.source_date_epoch, checksum=opts.checksum)
            stored = commit_changeset(store, lease, changes, layer_opts, media_type)
            written.append(str(stored.digest))
            desc = Descriptor(media_type, stored.digest, stored.size, stored.annotations)
            # The name, not the path as typed: the digest must not depend on where the
            # snapshots happen to live.
            created_by = f"lamina import {src.name}"
            layers.append(desc)
            diff_ids.append(stored.diff_id)
            history.append(History(created=created, created_by=created_by))
            if opts.on_layer is not None:
                opts.on_layer(i, len(sources), desc, created_by)
            if held is not None:
                held.close()
            held, previous = current, root
        config = build_config(diff_ids, history, opts.platform, created=created,
                              container_config={})
        written.append(str(config.digest))
        config_desc, manifest = record_image(store, lease, config.raw, mt.OCI_CONFIG, layers,
                                             [str(ref)])
    return ImportResult(ref, manifest.descriptor(), config_desc, tuple(layers), tuple(diff_ids))

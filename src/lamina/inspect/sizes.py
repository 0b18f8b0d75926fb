"""Layer sizes both ways: the blob as stored and moved (compressed), and the uncompressed
tar that the diff_id names — the figure ``docker images`` and ``docker history`` show as
SIZE (Docker measures layers unpacked).

The uncompressed size is recorded when lamina writes a layer (``layer.commit``); for a
pulled or loaded layer it is counted the first time it is asked for, by decompressing the
blob once, and kept in the store (``layer_sizes``, keyed by diff_id) after the count's
digest matched the diff_id.  An uncompressed layer's size is its blob's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from lamina.digest import Digest
from lamina.errors import LaminaError, StoreError
from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor
from lamina.store.store import Store
from lamina.transport.base import ImageSource

_UNCOMPRESSED = frozenset({mt.OCI_LAYER, mt.OCI_LAYER_ND, mt.DOCKER_LAYER})


def _count(source: ImageSource, desc: Descriptor) -> tuple[int, Digest]:
    # Imported here: lamina.layer costs ~20 ms, and a listing whose sizes are all known
    # (the common case) never decompresses anything.
    from lamina.layer.compress import open_decompressed

    with source.open_blob(desc) as blob:
        stream = open_decompressed(blob)
        try:
            while stream.read_block():
                pass
            return stream.count, stream.digest()
        finally:
            stream.close()


def unpacked_sizes(source: ImageSource, layers: Sequence[Descriptor],
                   diff_ids: Sequence[Digest], store: Store | None = None,
                   count: bool = True) -> list[int | None]:
    """Each layer's uncompressed size; None where it is unknown and ``count`` is False
    (a registry: counting would download the layer) or the blob cannot be read."""
    known = store.meta.unpacked_sizes(str(d) for d in diff_ids) if store is not None else {}
    out: list[int | None] = []
    for i, desc in enumerate(layers):
        diff_id = diff_ids[i] if i < len(diff_ids) else None
        if desc.media_type in _UNCOMPRESSED:
            out.append(desc.size)
        elif diff_id is not None and str(diff_id) in known:
            out.append(known[str(diff_id)])
        elif not count:
            out.append(None)
        else:
            try:
                size, digest = _count(source, desc)
            except LaminaError:
                out.append(None)  # a broken blob is fsck's business, not a listing's
                continue
            if store is not None and diff_id is not None and digest == diff_id:
                known[str(diff_id)] = size
                # a listing still works on a full, busy or read-only store
                with contextlib.suppress(StoreError):
                    store.meta.set_unpacked_size(str(diff_id), size)
            out.append(size)
    return out

"""lamina.layer: changesets, deterministic layer tars, compression, safe apply.

A layer is the tar of a changeset (image-spec layer.md): the entries added or modified
against the layer below, and whiteouts for what was deleted.

    diff_trees(lower, upper) -> Changeset        what changed (changes.py)
    write_changeset(cs, out, options) -> TarInfo  deterministic tar, compressed (tarwriter.py)
    write_tree(root, out, options) -> TarInfo     a base layer of a whole tree
    open_tar_stream(stream)                       gzip/zstd/plain by magic (compress.py)
    apply_layer(stream, target, diff_id, options) safe extraction (apply.py)
    iter_tar_entries(stream)                      headers only, for inspection (tarreader.py)
    LayerOptions(compression="zstd:chunked")      a frame per file payload, TOC, tar-split
                                                  (chunkedwriter.py); zstdchunked.py reads
                                                  footer, TOC and frame spans back
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below are imported on first use (PEP 562): a pull that only reads a chunked
# layer's TOC (layer/chunkmap.py) imports this package, and the whole of it (apply,
# writers, compressors) cost ~40 ms of a 0.25 s pull (bench_delta's cold pull).
_WHERE = {
    "AppliedLayer": "apply", "apply_layer": "apply",
    "Change": "changes", "ChangeKind": "changes", "Changeset": "changes",
    "diff_trees": "changes",
    "Writable": "compress", "open_tar_stream": "compress",
    "ApplyOptions": "options", "Compression": "options", "LayerOptions": "options",
    "TarEntry": "tarreader", "iter_tar_entries": "tarreader",
    "TarInfo": "tarwriter", "write_changeset": "tarwriter", "write_tree": "tarwriter",
}

if TYPE_CHECKING:
    from lamina.layer.apply import AppliedLayer, apply_layer
    from lamina.layer.changes import Change, ChangeKind, Changeset, diff_trees
    from lamina.layer.compress import Writable, open_tar_stream
    from lamina.layer.options import ApplyOptions, Compression, LayerOptions
    from lamina.layer.tarreader import TarEntry, iter_tar_entries
    from lamina.layer.tarwriter import TarInfo, write_changeset, write_tree


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AppliedLayer",
    "ApplyOptions",
    "Change",
    "ChangeKind",
    "Changeset",
    "Compression",
    "LayerOptions",
    "TarEntry",
    "TarInfo",
    "Writable",
    "apply_layer",
    "diff_trees",
    "iter_tar_entries",
    "open_tar_stream",
    "write_changeset",
    "write_tree",
]

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

from lamina.layer.apply import AppliedLayer, apply_layer
from lamina.layer.changes import Change, ChangeKind, Changeset, diff_trees
from lamina.layer.compress import Writable, open_tar_stream
from lamina.layer.options import ApplyOptions, Compression, LayerOptions
from lamina.layer.tarreader import TarEntry, iter_tar_entries
from lamina.layer.tarwriter import TarInfo, write_changeset, write_tree

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

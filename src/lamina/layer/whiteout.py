"""Whiteout names (image-spec layer.md "Whiteouts").

A file ``.wh.NAME`` in a layer says "NAME from the layers below is deleted"; the file
``.wh..wh..opq`` in a directory says "everything the layers below had in this directory
is hidden".  Both apply to lower layers only: "Files that are present in the same layer
as a whiteout file can only be hidden by whiteout files in subsequent layers."  Other
names under the reserved ``.wh..wh.`` prefix are AUFS bookkeeping (``.wh..wh.plnk``,
``.wh..wh.aufs``) that Docker also skips.
"""

from __future__ import annotations

from lamina.errors import UnsafeArchive

PREFIX = ".wh."
META_PREFIX = ".wh..wh."
OPAQUE = ".wh..wh..opq"


def whiteout_name(name: str) -> str:
    """The whiteout file that deletes sibling ``name``."""
    return PREFIX + name


def whiteout_target(base: str, entry: str) -> str | None:
    """For a whiteout base name, the sibling it deletes; None for opaque/AUFS markers.

    Refuses whiteouts that name nothing or the directory itself (``.wh.``, ``.wh..``,
    ``.wh...``): honouring them would delete the parent or the layer root.
    """
    if base.startswith(META_PREFIX):
        return None
    victim = base[len(PREFIX) :]
    if victim in ("", ".", ".."):
        raise UnsafeArchive(f"whiteout {entry!r} names {victim or 'nothing'!r}, not a sibling")
    return victim

"""Archive path names: normalising what a tar says, ordering what lamina writes."""

from __future__ import annotations

import os

from lamina.errors import UnsafeArchive


def clean_name(name: str) -> list[str]:
    """The components of an archive path, relative to the layer root.

    A leading ``/`` is dropped, as Docker and containerd do (a layer's paths are
    always relative to its root, image-spec layer.md), and so are ``.`` and empty
    components.  ``..`` is resolved lexically (Go's ``filepath.Clean``, which both
    use); one that would climb above the root is refused rather than clamped,
    because no honest tool writes it.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchive(f"archive entry {name!r} escapes the target with '..'")
            parts.pop()
        else:
            parts.append(part)
    return parts


def sort_key(path: str) -> tuple[bytes, ...]:
    """Order of entries in lamina's tars: component-wise, each component bytewise.

    Comparing component tuples puts a directory immediately before its contents and
    its whole subtree before any later sibling (``a``, ``a/b``, ``a-b``), which a
    plain bytewise sort of whole paths would not ('-' < '/').  The order only has to
    be stable across machines for digests to be; bytes, not locale collation.
    """
    return tuple(os.fsencode(path).split(b"/"))

"""What applying a layer asks of a pool of shared files, and nothing more.

A pool keeps one inode per identical regular file (content *and* the metadata the
inode carries), and an apply hard-links its files to it instead of writing copies, as
ostree's "bare" checkouts link repository objects.  The pool belongs to whoever owns the
target (run/snapshots.py puts the store's pool behind this protocol); layer/ only
describes each file by ``FileFacts`` and asks:

``link(facts, path)``
    Before writing a small file (``size <= inline_limit``, content hashed in memory):
    make ``path`` a link to the pooled file if the pool has one.  True: done, nothing
    written.  False: the apply writes the file itself.  Raises ``FileExistsError`` if
    ``path`` exists (the apply clears it and asks again).
``share(facts, path)``
    When the apply finishes, for each file it wrote that is still private (one link:
    not hard-linked inside the layer, not replaced): put it in the pool, or replace it
    with a link to the pooled one.  Whatever cannot be linked (EMLINK, EXDEV) stays a
    private copy; the tree looks the same either way.

Files hard-linked inside the layer itself are never handed to ``share``, and a pooled
file a later hard-link entry names is first made private again: a layer's own links
keep their meaning (those names share an inode with each other, not with the pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class FileFacts:
    """A regular file as the pool keys it: its content and what its inode shows."""

    digest: str                            # sha256 of the content, hex
    size: int
    mode: int                              # permission bits (0o7777)
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]  # sorted by name, as set on the file


class FilePool(Protocol):
    @property
    def inline_limit(self) -> int:
        """Files up to this size are hashed before they are written (0: never)."""
        ...

    def link(self, facts: FileFacts, path: str) -> bool: ...

    def share(self, facts: FileFacts, path: str) -> None: ...

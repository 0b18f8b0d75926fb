"""Per-layer change trees, and the root filesystem the layers stack into.

Only tar headers are read (``iter_tar_entries``): a layer's changes are its entries
compared with the root the layers below it make.  ``RootView.apply`` takes one layer at a
time and follows the rules of image-spec layer.md, as ``apply_layer`` does on disk:

1. a layer's whiteouts apply to the layers *below* it only ("Files that are present in
   the same layer as a whiteout file can only be hidden by whiteout files in subsequent
   layers"): first every ``.wh..wh..opq`` empties its directory of lower entries, then
   every ``.wh.NAME`` removes NAME and what is under it;
2. then the layer's entries land: a directory over a directory keeps the children; any
   other entry replaces what was there, and a non-directory over a directory drops the
   directory's subtree (as Docker's and containerd's apply do).

Each entry is classified against the root *before* the layer:

    added     no lower version of the path
    modified  a lower version exists (a file rewritten, a symlink retargeted, a mode or
              owner changed); a directory re-listed with the same type, mode and owner is
              not a change: writers include every ancestor of a change as an entry
    deleted   a whiteout; its size is the bytes of lower files it removes
    opaque    a directory whose lower contents are all hidden; size as for deleted

Every version that leaves the root is recorded as ``Displaced`` with its cause: that is
what ``which`` shows of a path's lower versions and what ``efficiency`` counts as waste.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from lamina.errors import LaminaError
from lamina.image.manifest import Descriptor
from lamina.layer import tarformat as tf
from lamina.layer.compress import open_decompressed
from lamina.layer.paths import clean_name, resolve_links
from lamina.layer.tarreader import TarEntry, TarReader
from lamina.layer.whiteout import META_PREFIX, OPAQUE, PREFIX, whiteout_target
from lamina.transport.base import ImageSource
from lamina.transport.resolve import ResolvedImage

ChangeKind = Literal["added", "modified", "deleted", "opaque"]
Cause = Literal["overwritten", "deleted", "opaque", "replaced"]

TYPE_NAMES = {tf.REG: "file", tf.DIR: "dir", tf.SYM: "symlink", tf.LNK: "hardlink",
              tf.CHR: "char", tf.BLK: "block", tf.FIFO: "fifo"}

# Called after each layer is read, with (layers done, layers in all).
LayerProgress = Callable[[int, int], None]


def join(parts: Iterable[str]) -> str:
    """'/'-rooted path of archive components ("/" for the root)."""
    return "/" + "/".join(parts)


def split(path: str) -> list[str]:
    """Components of a user's path (``/a/b``, ``a/b/``, ``./a``)."""
    return clean_name(path)


@dataclass(frozen=True, slots=True)
class Version:
    """One layer's entry for one path: what that layer puts there."""

    layer: int           # 0 = the bottom layer (users see layer numbers from 1: JSON too)
    path: str            # "/etc/passwd"
    type: str            # file, dir, symlink, hardlink, char, block, fifo
    size: int            # bytes of content (0 for everything but files)
    mode: int
    uid: int
    gid: int
    link: str = ""       # symlink or hardlink target

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    def same_meta(self, other: Version) -> bool:
        return (self.type, self.mode, self.uid, self.gid, self.link) == (
            other.type, other.mode, other.uid, other.gid, other.link)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layer": self.layer + 1, "path": self.path, "type": self.type,
                             "size": self.size, "mode": f"{self.mode:04o}", "uid": self.uid,
                             "gid": self.gid}
        if self.link:
            d["link"] = self.link
        return d


def version_of(layer: int, path: str, e: TarEntry) -> Version:
    return Version(layer, path, TYPE_NAMES.get(e.type, e.type),
                   e.size if e.type == tf.REG else 0, e.mode, e.uid, e.gid, e.linkname)


@dataclass(frozen=True, slots=True)
class Change:
    """One change a layer makes to the root below it."""

    path: str
    kind: ChangeKind
    version: Version | None   # what the layer puts there (None: deleted, opaque)
    lower: Version | None     # the version below it replaces or deletes, if any
    hidden_size: int = 0      # deleted/opaque: bytes of lower files removed or hidden
    hidden_count: int = 0     # ... and how many entries

    @property
    def size(self) -> int:
        """Bytes the change adds (added, modified) or removes (deleted, opaque)."""
        return self.version.size if self.version is not None else self.hidden_size

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size}
        if self.version is not None:
            v = self.version.to_json()
            del v["layer"], v["path"], v["size"]
            d.update(v)
        if self.lower is not None:
            d["lower"] = self.lower.to_json()
        if self.kind in ("deleted", "opaque"):
            d["hidden_entries"] = self.hidden_count
        return d


@dataclass(frozen=True, slots=True)
class Displaced:
    """A version that left the root: replaced at its path, deleted by a whiteout (of it
    or an ancestor), hidden by an opaque directory, or dropped with a directory that a
    non-directory replaced."""

    version: Version
    by_layer: int
    cause: Cause
    at: str                   # the path of the whiteout, opaque dir or replacing entry
    by: Version | None = None  # overwritten: the version that took its place

    def to_json(self) -> dict[str, Any]:
        d = {"version": self.version.to_json(), "by_layer": self.by_layer + 1,
             "cause": self.cause, "at": self.at}
        if self.by is not None:
            d["by"] = self.by.to_json()
        return d


@dataclass
class LayerChanges:
    """What one layer does to the root below it."""

    index: int
    descriptor: Descriptor
    diff_id: str
    created_by: str
    changes: list[Change]            # in path order
    files_size: int                  # bytes of file content the layer carries
    entries: int                     # tar entries, whiteouts included
    displaced: list[Displaced] = field(default_factory=list)

    def count(self, kind: ChangeKind) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.index + 1, "digest": str(self.descriptor.digest),
                "diff_id": self.diff_id, "media_type": self.descriptor.media_type,
                "size": self.descriptor.size, "files_size": self.files_size,
                "created_by": self.created_by, "entries": self.entries,
                "counts": {k: self.count(k) for k in ("added", "modified", "deleted",
                                                      "opaque")},
                "changes": [c.to_json() for c in self.changes]}


class _Node:
    __slots__ = ("version", "children")

    def __init__(self, version: Version | None, children: dict[str, _Node] | None) -> None:
        self.version = version      # None: a directory no layer has an entry for
        self.children = children    # None for non-directories


def _subtree(node: _Node) -> Iterator[Version]:
    """The versions at and under ``node``."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n.version is not None:
            yield n.version
        if n.children:
            stack.extend(n.children.values())


class RootView:
    """The root filesystem of the layers applied so far, as versions (no content)."""

    def __init__(self) -> None:
        self._root = _Node(None, {})
        self.layers = 0

    def _node(self, parts: list[str]) -> _Node | None:
        node = self._root
        for p in parts:
            if node.children is None:
                return None
            child = node.children.get(p)
            if child is None:
                return None
            node = child
        return node

    def lookup(self, path: str | list[str]) -> Version | None:
        """The version at ``path``; None if absent (or an implied directory)."""
        node = self._node(split(path) if isinstance(path, str) else path)
        return node.version if node is not None else None

    def exists(self, path: str | list[str]) -> bool:
        return self._node(split(path) if isinstance(path, str) else path) is not None

    def resolve(self, path: str, follow_last: bool = False) -> list[str]:
        """The components of ``path`` with its symlinks followed as a lookup inside this
        root would (``paths.resolve_links``); the last one only if ``follow_last``."""
        def readlink(parts: list[str]) -> str | None:
            node = self._node(parts)
            v = node.version if node is not None else None
            return v.link if v is not None and v.type == "symlink" else None

        return resolve_links(path, readlink, follow_last)

    def files(self) -> Iterator[Version]:
        """Every version in the root (implied directories have none)."""
        return _subtree(self._root)

    def walk(self) -> Iterator[tuple[str, Version | None]]:
        """(path, version) for everything in the root, parents before children, names
        in byte order; implied directories have version None."""
        stack: list[tuple[list[str], _Node]] = [([], self._root)]
        while stack:
            parts, node = stack.pop()
            if parts:
                yield join(parts), node.version
            if node.children:
                for name in sorted(node.children, key=lambda s: s.encode(
                        "utf-8", "surrogateescape"), reverse=True):
                    stack.append(([*parts, name], node.children[name]))

    # -- one layer ----------------------------------------------------------------------
    def apply(self, index: int, entries: Iterable[TarEntry], descriptor: Descriptor,
              diff_id: str = "", created_by: str = "") -> LayerChanges:
        opaques: list[list[str]] = []
        whiteouts: list[list[str]] = []
        landed: dict[str, tuple[list[str], Version]] = {}
        displaced: list[Displaced] = []
        files_size = 0
        count = 0
        for e in entries:
            count += 1
            parts = clean_name(e.name)
            if not parts:
                continue  # the root itself ("./"): nothing to show
            base = parts[-1]
            if base == OPAQUE:
                opaques.append(parts[:-1])
                continue
            if base.startswith(META_PREFIX):
                continue  # AUFS bookkeeping (.wh..wh.plnk, ...), which Docker skips
            if base.startswith(PREFIX):
                victim = whiteout_target(base, e.name)
                assert victim is not None
                whiteouts.append([*parts[:-1], victim])
                continue
            path = join(parts)
            v = version_of(index, path, e)
            files_size += v.size
            old = landed.pop(path, None)
            if old is not None:  # the same path twice in one tar: the last one wins
                displaced.append(Displaced(old[1], index, "overwritten", path, v))
            landed[path] = (parts, v)

        # Classify against the root below this layer.
        changes: list[Change] = []
        for d in opaques:
            node = self._node(d)
            hidden = [v for c in (node.children or {}).values() for v in _subtree(c)] \
                if node is not None else []
            changes.append(Change(join(d), "opaque", None,
                                  node.version if node is not None else None,
                                  sum(v.size for v in hidden), len(hidden)))
        for w in whiteouts:
            node = self._node(w)
            hidden = list(_subtree(node)) if node is not None else []
            changes.append(Change(join(w), "deleted", None,
                                  node.version if node is not None else None,
                                  sum(v.size for v in hidden), len(hidden)))
        for path, (parts, v) in landed.items():
            lower = self.lookup(parts)
            if lower is None:
                changes.append(Change(path, "added", v, None))
            elif not (v.is_dir and lower.is_dir and v.same_meta(lower)):
                changes.append(Change(path, "modified", v, lower))
        changes.sort(key=lambda c: split_key(c.path))

        # Then change the root: opaque dirs, whiteouts, entries (rule 1, then rule 2).
        for d in opaques:
            node = self._node(d)
            if node is not None and node.children:
                for child in node.children.values():
                    displaced.extend(Displaced(x, index, "opaque", join(d))
                                     for x in _subtree(child))
                node.children = {}
        for w in whiteouts:
            parent = self._node(w[:-1])
            if parent is None or not parent.children or w[-1] not in parent.children:
                continue
            gone = parent.children.pop(w[-1])
            displaced.extend(Displaced(x, index, "deleted", join(w)) for x in _subtree(gone))
        for path, (parts, v) in landed.items():
            parent = self._root
            for i, p in enumerate(parts[:-1]):
                assert parent.children is not None
                found = parent.children.get(p)
                if found is None or found.children is None:
                    # Missing, or a non-directory where this entry needs a directory:
                    # the apply makes (or replaces it with) a directory.
                    if found is not None and found.version is not None:
                        displaced.append(Displaced(found.version, index, "replaced",
                                                   join(parts[:i + 1])))
                    found = parent.children[p] = _Node(None, {})
                parent = found
            assert parent.children is not None
            existing = parent.children.get(parts[-1])
            children: dict[str, _Node] | None = {} if v.is_dir else None
            if existing is not None:
                if existing.version is not None:
                    displaced.append(Displaced(existing.version, index, "overwritten", path,
                                               v))
                if existing.children:
                    if v.is_dir:
                        children = existing.children
                    else:
                        for c in existing.children.values():
                            displaced.extend(Displaced(x, index, "replaced", path)
                                             for x in _subtree(c))
            parent.children[parts[-1]] = _Node(v, children)
        self.layers += 1
        return LayerChanges(index, descriptor, diff_id, created_by, changes, files_size,
                            count, displaced)


def split_key(path: str) -> tuple[bytes, ...]:
    """Sort key of a '/'-rooted path: component-wise, bytewise (tar order)."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/"))


# -- reading layers --------------------------------------------------------------------
@contextlib.contextmanager
def _layer_tar(source: ImageSource, desc: Descriptor) -> Iterator[TarReader]:
    """A layer's tar (gzip, zstd or plain) to read; on leaving, the rest is drained and
    the blob's digest checked.  Tar errors name the layer."""
    with source.open_blob(desc) as blob:
        stream = open_decompressed(blob, None)
        try:
            reader = TarReader(stream)
            yield reader
            reader.drain()
        except LaminaError as e:
            raise e.context(f"layer {desc.digest}") from None
        finally:
            stream.close()
        blob.verify()


def read_entries(source: ImageSource, desc: Descriptor) -> list[TarEntry]:
    """The headers of a layer, its blob digest verified."""
    with _layer_tar(source, desc) as reader:
        return list(reader)


def hash_files(source: ImageSource, desc: Descriptor, paths: set[str]) -> dict[str, str]:
    """sha256 of the contents of the named files (``/``-rooted paths) in one layer; a
    path the tar holds twice gets the last copy's digest, as apply keeps the last."""
    out: dict[str, str] = {}
    with _layer_tar(source, desc) as reader:
        while (e := reader.next()) is not None:
            if e.type != tf.REG:
                continue
            path = join(clean_name(e.name))
            if path in paths:
                h = hashlib.sha256()
                for view in reader.data():
                    h.update(view)
                out[path] = "sha256:" + h.hexdigest()
    return out


def layer_instructions(image: ResolvedImage) -> list[str]:
    """``created_by`` of each layer: layers match the non-empty history entries in
    order (image-spec config.md ``history``); a layer past the history gets ""."""
    out = [h.created_by or "" for h in image.config.history if not h.empty_layer]
    n = len(image.manifest.layers)
    return (out + [""] * n)[:n]


@dataclass
class Analysis:
    """An image's layers read once: each layer's changes and the final root."""

    image: ResolvedImage
    layers: list[LayerChanges]
    root: RootView

    def displaced(self) -> Iterator[Displaced]:
        for layer in self.layers:
            yield from layer.displaced


class LayerCache:
    """Layer headers by diff_id, so images that share layers read them once."""

    def __init__(self) -> None:
        self._entries: dict[str, list[TarEntry]] = {}

    def entries(self, source: ImageSource, desc: Descriptor, diff_id: str) -> list[TarEntry]:
        got = self._entries.get(diff_id)
        if got is None:
            got = self._entries[diff_id] = read_entries(source, desc)
        return got


def analyze(source: ImageSource, image: ResolvedImage, upto: int | None = None,
            progress: LayerProgress | None = None,
            cache: LayerCache | None = None) -> Analysis:
    """Read the layers (bottom first; the first ``upto`` if given) into a RootView."""
    view = RootView()
    layers: list[LayerChanges] = []
    descs = list(image.manifest.layers)
    diff_ids = [str(d) for d in image.config.diff_ids]
    names = layer_instructions(image)
    n = len(descs) if upto is None else min(upto, len(descs))
    for i in range(n):
        entries = (cache.entries(source, descs[i], diff_ids[i]) if cache is not None
                   else read_entries(source, descs[i]))
        layers.append(view.apply(i, entries, descs[i], diff_ids[i], names[i]))
        if progress is not None:
            progress(i + 1, n)
    return Analysis(image, layers, view)


# -- trees for display -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TreeRow:
    """One line of a layer's change tree: a change, or a directory it sits in."""

    depth: int                 # 0 = a child of /
    name: str
    path: str
    kind: ChangeKind | None    # None: an unchanged directory holding changes
    type: str                  # of the version (the lower one for deleted/opaque)
    size: int                  # files: own bytes; directories: bytes added under them
    link: str = ""


def change_tree(layer: LayerChanges) -> list[TreeRow]:
    """The layer's changes as a tree in path order, with the directories above them.

    A directory's size is what the layer writes at and under it (added and modified
    files); a deletion's is what it removes."""
    by_path = {c.path: c for c in layer.changes}
    under: dict[str, int] = {}
    for c in layer.changes:
        if c.version is None:
            continue
        parts = split(c.path)
        for i in range(len(parts)):
            key = join(parts[:i + 1])
            under[key] = under.get(key, 0) + c.version.size
    paths: set[str] = set()
    for c in layer.changes:
        parts = split(c.path)
        for i in range(len(parts)):
            paths.add(join(parts[:i + 1]))
    rows: list[TreeRow] = []
    for path in sorted(paths, key=split_key):
        parts = split(path)
        found = by_path.get(path)
        if found is None:
            rows.append(TreeRow(len(parts) - 1, parts[-1], path, None, "dir",
                                under.get(path, 0)))
            continue
        c = found
        v = c.version or c.lower
        typ = v.type if v is not None else "file"
        size = under.get(path, 0) if c.version is not None and c.version.is_dir else c.size
        rows.append(TreeRow(len(parts) - 1, parts[-1], path, c.kind, typ, size,
                            v.link if v is not None else ""))
    return rows

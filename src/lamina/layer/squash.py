"""Merging consecutive layers into one (``lamina squash``; ``flatten`` is all of them).

The merged layer must do to any root what the merged layers did one after another, and
nothing more.  It is computed from tar headers, never by unpacking:

* each merged layer is decompressed once into a spool file (its diff_id checked) while
  its headers are read, and replayed into a tree of *nodes* in apply's order (image-spec
  layer.md; layer/apply.py): first its opaque markers, then its whiteouts — which hide
  only what lay below, never this layer's own entries — then its entries;
* a path whose lower content is gone (a whiteout, or a non-directory that replaced it)
  keeps a ``hidden`` mark; a directory whose lower children are gone keeps ``opaque``;
* the layers *below* the range are read for their headers only, to know what they leave
  visible: a whiteout or opaque marker survives only where it hides something of
  theirs.  So a file added and deleted inside the range vanishes, a deletion of a lower
  file stays, and with nothing below (``--all``) no whiteout is written at all;
* regular files are inodes: a hard link made in the range shares its target's inode, so
  a later overwrite of the target (which apply does by unlink and create) leaves the
  link with the old bytes.  The first path of an inode in tar order carries the data and
  the others are written as links to it, as tarwriter.py links a tree's inodes.  A hard
  link to a file *below* the range stays a link to that path, which is refused when the
  range later changes or deletes that path (the merged layer could not say "the bytes it
  had before"): ``Unsupported``, one line naming both paths.

Output: ``tarwriter.write_entries`` in ``paths.sort_key`` order of the tar names,
headers as read (mode, owner, mtime, xattrs, device numbers), so the same layers give
the same bytes on every machine (the writer's determinism, see tarwriter.py).  Where a
directory was replaced (a whiteout, or a file, then a directory again) the merged layer
writes the directory with an opaque marker, the form Docker and containerd write for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamina.digest import Digest, Readable
from lamina.errors import IntegrityError, Unsupported
from lamina.layer import tarformat as tf
from lamina.layer.compress import DecompressedStream, Writable, open_decompressed
from lamina.layer.options import LayerOptions
from lamina.layer.paths import clean_name, shown
from lamina.layer.tarreader import TarEntry, TarReader
from lamina.layer.tarwriter import Entry, TarInfo, write_entries
from lamina.layer.whiteout import META_PREFIX, OPAQUE, PREFIX, whiteout_name, whiteout_target


@dataclass(frozen=True)
class LayerStream:
    """A layer to read: ``open()`` gives its blob (gzip, zstd or plain), ``diff_id`` is
    what its tar must hash to."""

    open: Callable[[], Readable]
    diff_id: Digest


@dataclass(eq=False, slots=True)
class _Inode:
    """A regular file's bytes and metadata: at ``offset`` in spool file ``fd``."""

    entry: TarEntry
    fd: int
    offset: int


@dataclass(eq=False, slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    entry: TarEntry | None = None     # the range's version of this path (None: none)
    inode: _Inode | None = None       # regular files and hard links within the range
    lower_link: str | None = None     # a hard link to this path of the layers below
    hidden: bool = False              # what the layers below had here is gone
    opaque: bool = False              # what the layers below had under here is gone
    implied: bool = False             # a directory apply made for an entry under it

    def child(self, name: str) -> _Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node()
        return node

    def clear(self) -> None:
        self.children = {}
        self.entry = self.inode = self.lower_link = None
        self.opaque = self.implied = False


@dataclass(eq=False, slots=True)
class _Lower:
    """What the layers below the range leave visible: a name tree (None: not a dir)."""

    children: dict[str, _Lower] | None = None
    symlink: bool = False


# -- reading -----------------------------------------------------------------------------
class _Tee:
    """A BlockSource that also writes every decompressed block to a spool file."""

    def __init__(self, source: DecompressedStream, fd: int | None) -> None:
        self.source = source
        self.fd = fd

    def read_block(self) -> bytes:
        block = self.source.read_block()
        if block and self.fd is not None:
            view = memoryview(block)
            while view:
                view = view[os.write(self.fd, view):]
        return block


def _read_layer(layer: LayerStream, spool: int | None
                ) -> list[tuple[list[str], TarEntry, int]]:
    """Every entry of ``layer`` as (path components, header, data offset in the tar),
    its diff_id checked at the end."""
    out: list[tuple[list[str], TarEntry, int]] = []
    with contextlib.closing(layer.open()) as raw:  # type: ignore[type-var]
        source = open_decompressed(raw, layer.diff_id.algorithm)
        try:
            reader = TarReader(_Tee(source, spool))
            for entry in reader:
                parts = clean_name(entry.name)
                if parts:       # the root itself ("./") carries nothing a layer keeps
                    out.append((parts, entry, reader.offset))
            reader.drain()
            if source.digest() != layer.diff_id:
                raise IntegrityError(f"layer content has diff_id {source.digest()}, "
                                     f"expected {layer.diff_id}")
        finally:
            source.close()
        # The blob's own digest too (a layer from a registry or an archive): gzip may
        # end before the blob does, so what is left is read and the check made here.
        verify = getattr(raw, "verify", None)
        if verify is not None:
            verify()
    return out


def _kind(parts: list[str], entry: TarEntry) -> str:
    """"opaque", "whiteout", "meta" (other AUFS names, skipped) or "entry"."""
    base = parts[-1]
    if not base.startswith(PREFIX):
        return "entry"
    if base == OPAQUE:
        return "opaque"
    if base.startswith(META_PREFIX):
        return "meta"
    whiteout_target(base, entry.name)   # refuses ".wh." naming nothing
    return "whiteout"


def _phases(entries: list[tuple[list[str], TarEntry, int]]
            ) -> Iterator[tuple[str, list[str], TarEntry, int]]:
    """apply's order within one layer: opaque markers, whiteouts, then entries."""
    kinds = [(_kind(p, e), p, e, off) for p, e, off in entries]
    for phase in ("opaque", "whiteout", "entry"):
        yield from (k for k in kinds if k[0] == phase)


def _lower_tree(layers: Sequence[LayerStream]) -> _Lower:
    root = _Lower({})
    for layer in layers:
        for kind, parts, entry, _ in _phases(_read_layer(layer, None)):
            if kind == "meta":
                continue
            if kind == "opaque":
                node = _lower_find(root, parts[:-1])
                if node is not None and node.children is not None:
                    node.children = {}
                continue
            if kind == "whiteout":
                parent = _lower_find(root, parts[:-1])
                if parent is not None and parent.children is not None:
                    parent.children.pop(parts[-1][len(PREFIX):], None)
                continue
            parent = root
            for name in parts[:-1]:
                assert parent.children is not None
                nxt = parent.children.get(name)
                if nxt is not None and nxt.symlink:
                    raise Unsupported(f"cannot squash: {shown(entry.name)} of a layer below "
                                      "the range is written through a symlink")
                if nxt is None or nxt.children is None:
                    nxt = parent.children[name] = _Lower({})
                parent = nxt
            assert parent.children is not None
            old = parent.children.get(parts[-1])
            if entry.type == tf.DIR:
                if old is None or old.children is None:
                    parent.children[parts[-1]] = _Lower({})
            else:
                parent.children[parts[-1]] = _Lower(None, entry.type == tf.SYM)
    return root


def _lower_find(root: _Lower, parts: list[str]) -> _Lower | None:
    node: _Lower | None = root
    for name in parts:
        if node is None or node.children is None:
            return None
        node = node.children.get(name)
    return node


# -- merging -----------------------------------------------------------------------------
_LINKS = (tf.SYM, tf.LNK)


class _Merge:
    def __init__(self, lower: _Lower | None) -> None:
        self.root = _Node()
        self.lower = lower

    def check_parents(self, parts: list[str], name: str, this_layer: dict[str, str]) -> None:
        """Refuse an entry whose parent path goes through a symlink (of the range, or of
        the layers below that the range left in place): apply follows it and writes
        elsewhere, which a merge by path cannot follow.  No layer writer makes such
        entries (they name real paths); ``Unsupported``, one line."""
        node: _Node | None = self.root
        below = self.lower
        for i, comp in enumerate(parts[:-1]):
            where = "/".join(parts[:i + 1])
            covered = node is not None and (node.hidden or node.opaque)
            node = node.children.get(comp) if node is not None else None
            below = None if covered or below is None or below.children is None \
                else below.children.get(comp)
            made = this_layer.get(where)     # earlier in this layer's tar: it decides
            if made is None and node is not None and node.entry is not None:
                made = node.entry.type
            if made is not None:
                if made in _LINKS:   # a hard link as a parent can only be one to a symlink
                    raise Unsupported(f"cannot squash: {shown(name)} is written through "
                                      f"the symlink {shown(where)}")
                if made != tf.DIR:
                    return      # under a file: apply refuses it with the layer itself
                continue
            if node is not None and node.hidden:
                below = None
            if below is not None and below.symlink:
                raise Unsupported(f"cannot squash: {shown(name)} is written through the "
                                  f"symlink {shown(where)} of a layer below")


    def find(self, parts: list[str]) -> _Node | None:
        node: _Node | None = self.root
        for name in parts:
            if node is None:
                return None
            node = node.children.get(name)
        return node

    def node(self, parts: list[str]) -> _Node:
        node = self.root
        for name in parts:
            node = node.child(name)
        return node

    def apply(self, entries: list[tuple[list[str], TarEntry, int]], fd: int) -> None:
        seen: dict[str, str] = {}           # in tar order, as apply meets them
        for parts, entry, _ in entries:
            self.check_parents(parts, entry.name, seen)
            if not parts[-1].startswith(PREFIX):
                seen["/".join(parts)] = entry.type
        for kind, parts, entry, offset in _phases(entries):
            if kind == "meta":
                continue
            if kind == "opaque":
                d = self.node(parts[:-1])
                d.children = {}
                d.opaque = True
            elif kind == "whiteout":
                n = self.node([*parts[:-1], parts[-1][len(PREFIX):]])
                n.clear()
                n.hidden = True
            else:
                self._entry(parts, entry, offset, fd)

    def _entry(self, parts: list[str], entry: TarEntry, offset: int, fd: int) -> None:
        parent = self.root
        for name in parts[:-1]:
            parent = parent.child(name)
            parent.implied = True     # apply makes missing parents (0755)
        n = parent.child(parts[-1])
        if entry.type == tf.DIR:
            if n.entry is not None and n.entry.type != tf.DIR:
                n.clear()       # a file of the range replaced: ``hidden`` stays set
            n.entry, n.inode, n.lower_link = entry, None, None
            return
        if entry.type == tf.LNK:
            target = clean_name(entry.linkname)
            t = self.find(target)
            if t is not None and t.inode is not None:
                shared, lower = t.inode, None
            elif t is not None and t.entry is not None:
                # a link to a non-regular file of the range: the same entry again
                shared, lower = None, t.lower_link
                entry = t.entry
            elif t is not None and t.lower_link is not None:
                shared, lower = None, t.lower_link
            else:
                shared, lower = None, "/".join(target)
            n.clear()
            n.hidden = True
            n.entry, n.inode, n.lower_link = entry, shared, lower
            return
        n.clear()
        n.hidden = True         # a non-directory replaces whatever lay below, subtree too
        n.entry = entry
        if entry.type == tf.REG:
            n.inode = _Inode(entry, fd, offset)


def _entry_of(path: str, e: TarEntry, **kw: object) -> Entry:
    fields: dict[str, object] = dict(
        name=path, type=e.type, mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime,
        linkname=e.linkname if e.type == tf.SYM else "", devmajor=e.devmajor,
        devminor=e.devminor, xattrs=tuple(sorted(e.xattrs.items())))
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def _marker(path: str) -> Entry:
    # Whiteout files carry no metadata worth keeping: the fixed values tarwriter.py
    # gives them.
    return Entry(path, tf.REG, 0o644, 0, 0, 0)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


# A row of the walk: ("marker", path, None, None) for a whiteout or opaque marker already
# decided, or ("node", path, node, what the layers below have there).
_Row = tuple[str, str, _Node | None, _Lower | None]


def _rows(prefix: str, node: _Node, below: _Lower | None) -> list[_Row]:
    """The children of ``node`` in the order of their tar names: a whiteout sorts as
    ``.wh.NAME`` (and what the range put back under NAME as NAME), an opaque marker as
    ``.wh..wh..opq``.  ``below``: what the layers below leave at ``node``."""
    cover = node.hidden or node.opaque
    under = None if cover or below is None else below.children
    keyed: list[tuple[bytes, _Row]] = []
    for name, child in node.children.items():
        path = _join(prefix, name)
        lower = under.get(name) if under is not None else None
        if child.entry is None and child.hidden:
            if lower is not None:    # deletes something of the layers below: stays
                wh = whiteout_name(name)
                keyed.append((os.fsencode(wh), ("marker", _join(prefix, wh), None, None)))
            if child.children or child.implied:   # made again under the deleted name
                keyed.append((os.fsencode(name), ("node", path, child, None)))
            continue
        keyed.append((os.fsencode(name), ("node", path, child, lower)))
    if cover and below is not None and below.children and (
            node.entry is None or node.entry.type == tf.DIR):
        # Lower children of a directory that was emptied (opaque) or replaced.
        keyed.append((os.fsencode(OPAQUE), ("marker", _join(prefix, OPAQUE), None, None)))
    keyed.sort(key=lambda k: k[0])
    return [row for _, row in keyed]


def _emit(merge: _Merge, lower: _Lower | None) -> Iterator[Entry]:
    """The merged layer's entries, in ``paths.sort_key`` order of their tar names."""
    firsts: dict[int, str] = {}            # id(inode) -> the path carrying its bytes
    links: list[tuple[str, str]] = []      # (link, target below the range)
    stack = [iter(_rows("", merge.root, lower if lower is not None else _Lower(None)))]
    while stack:
        row = next(stack[-1], None)
        if row is None:
            stack.pop()
            continue
        kind, path, node, below = row
        if node is None:
            yield _marker(path)
            continue
        e = node.entry
        if e is None:
            # A parent the range did not list itself: apply made it for an entry under
            # it.  Where nothing below provides it (any more) and nothing under it is
            # left to make it again, the merged layer must say so; apply's 0755.
            if node.implied and (below is None or below.children is None):
                yield Entry(path, tf.DIR, 0o755, 0, 0, 0)
        elif node.inode is not None:
            ino = node.inode.entry
            first = firsts.get(id(node.inode))
            if first is None:
                firsts[id(node.inode)] = path
                yield _entry_of(path, ino, size=ino.size, fd=node.inode.fd,
                                offset=node.inode.offset)
            else:
                yield _entry_of(path, ino, type=tf.LNK, linkname=first)
        elif node.lower_link is not None:
            links.append((path, node.lower_link))
            yield _entry_of(path, e, type=tf.LNK, linkname=node.lower_link)
        else:
            yield _entry_of(path, e)
        if e is None or e.type == tf.DIR:
            stack.append(iter(_rows(path, node, below)))
    for path, target in links:
        parts = target.split("/")
        at: _Node | None = merge.root
        changed = False
        for i, name in enumerate(parts):
            at = at.children.get(name) if at is not None else None
            if at is None:
                break
            last = i == len(parts) - 1
            changed = changed or at.hidden or (at.opaque and not last) or (
                last and at.entry is not None)
        if changed:
            raise Unsupported(f"cannot squash: hard link {shown(path)} names "
                              f"{shown(target)} of a layer below the range, which the range "
                              "then changes or deletes")


def squash_layers(below: Sequence[LayerStream], merged: Sequence[LayerStream],
                  out: Writable, options: LayerOptions, spool_dir: Path) -> TarInfo:
    """Write to ``out`` one layer that does what ``merged`` (bottom first) did on top of
    ``below``; spool files go to ``spool_dir`` and are gone on return."""
    lower = _lower_tree(below) if below else None
    merge = _Merge(lower)
    with contextlib.ExitStack() as stack:
        for i, layer in enumerate(merged):
            fd = os.open(spool_dir / f"squash-{os.getpid()}-{i}.tar",
                         os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            stack.callback(os.close, fd)
            os.unlink(spool_dir / f"squash-{os.getpid()}-{i}.tar")   # gone when closed
            merge.apply(_read_layer(layer, fd), fd)
        return write_entries(_emit(merge, lower), out, options)

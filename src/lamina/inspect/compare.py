"""``lamina diff A B``: the layers two images share, then how their final roots differ.

Layers: position by position from the bottom, the images share a layer while their
diff_ids agree (so their chain ids do: the same stack so far); the first position where
they differ is where they diverge.  A layer with the same diff_id above that point is
reported as "same bytes, other parent".

Files: every path of the two final roots, compared by type, mode, owner, size, link
target and, for regular files, content.  Contents are read only where they could differ:
both are files with equal metadata and size but come from layers with different
diff_ids (the same layer gives the same bytes).  Those paths are hashed in a second pass
over only the layers that provide them.  Status is from A to B: ``added`` is only in B,
``removed`` only in A.  Directory mtimes are never compared (nor are file mtimes: a
layer clamps them to SOURCE_DATE_EPOCH and they are not what people mean by "changed").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lamina.inspect.tree import Analysis, LayerCache, Version, analyze, hash_files, split_key
from lamina.transport.base import ImageSource
from lamina.transport.resolve import ResolvedImage

Status = Literal["added", "removed", "changed"]
FIELDS = ("type", "mode", "owner", "size", "link", "content")


@dataclass(frozen=True)
class LayerRow:
    position: int                # 0-based; users see position + 1
    a: tuple[str, str, str] | None   # (digest, diff_id, created_by)
    b: tuple[str, str, str] | None
    shared: bool                 # same diff_id, same stack below

    def to_json(self) -> dict[str, Any]:
        def side(x: tuple[str, str, str] | None) -> dict[str, str] | None:
            return None if x is None else {"digest": x[0], "diff_id": x[1], "created_by": x[2]}
        return {"layer": self.position + 1, "a": side(self.a), "b": side(self.b),
                "shared": self.shared}


@dataclass(frozen=True)
class FileDiff:
    path: str
    status: Status
    a: Version | None
    b: Version | None
    fields: tuple[str, ...] = ()   # for "changed": which of FIELDS differ

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status,
                "a": self.a.to_json() if self.a else None,
                "b": self.b.to_json() if self.b else None, "changed": list(self.fields)}


@dataclass
class ImageDiff:
    shared_layers: int                 # the common bottom of the two stacks
    layers: list[LayerRow]
    same_bytes_elsewhere: list[str]    # diff_ids both have above the divergence
    files: list[FileDiff] = field(default_factory=list)
    hashed: int = 0                    # files whose contents had to be read
    relation: str | None = None        # B is A rebased / squashed (inspect/relation.py)

    def count(self, status: Status) -> int:
        return sum(1 for f in self.files if f.status == status)

    def bytes(self, status: Status) -> int:
        side = "b" if status == "added" else "a"
        return sum((getattr(f, side).size if getattr(f, side) else 0)
                   for f in self.files if f.status == status)

    def to_json(self) -> dict[str, Any]:
        return {"shared_layers": self.shared_layers, "relation": self.relation,
                "layers": [r.to_json() for r in self.layers],
                "same_bytes_elsewhere": self.same_bytes_elsewhere,
                "summary": {s: {"count": self.count(s), "bytes": self.bytes(s)}
                            for s in ("added", "removed", "changed")},
                "files": [f.to_json() for f in self.files]}


def _differ(a: Version, b: Version) -> list[str]:
    out = []
    if a.type != b.type:
        out.append("type")
    if a.mode != b.mode:
        out.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append("owner")
    if a.size != b.size:
        out.append("size")
    if a.link != b.link:
        out.append("link")
    return out


def _link_resolver(an: Analysis) -> Callable[[Version], Version]:
    """A hard link stands for the file it names, as the layers had it when the link was
    made (the latest version of the target at or below the link's layer): which path of
    a group carries the bytes is the writer's choice (a squash moves it to the first in
    tar order), not a difference in the root."""
    by_layer = [{c.path: c.version for c in lc.changes if c.version is not None}
                for lc in an.layers]

    def resolve(v: Version) -> Version:
        for _ in range(8):              # a link to a link, a few deep at most
            if v.type != "hardlink":
                return v
            target = "/" + v.link.lstrip("/")
            found = next((by_layer[i][target] for i in range(v.layer, -1, -1)
                          if target in by_layer[i]), None)
            if found is None:
                return v
            v = found
        return v

    return resolve


def compare_layers(a: ResolvedImage, b: ResolvedImage) -> tuple[int, list[LayerRow], list[str]]:
    from lamina.inspect.tree import layer_instructions

    ida = [str(d) for d in a.config.diff_ids]
    idb = [str(d) for d in b.config.diff_ids]
    na, nb = layer_instructions(a), layer_instructions(b)
    shared = 0
    while shared < min(len(ida), len(idb)) and ida[shared] == idb[shared]:
        shared += 1
    rows = []
    for i in range(max(len(ida), len(idb))):
        sa = (str(a.manifest.layers[i].digest), ida[i], na[i]) if i < len(ida) else None
        sb = (str(b.manifest.layers[i].digest), idb[i], nb[i]) if i < len(idb) else None
        rows.append(LayerRow(i, sa, sb, i < shared))
    elsewhere = sorted(set(ida[shared:]) & set(idb[shared:]))
    return shared, rows, elsewhere


def compare(source_a: ImageSource, image_a: ResolvedImage, source_b: ImageSource,
            image_b: ResolvedImage,
            progress: Callable[[str, int, int], None] | None = None) -> ImageDiff:
    """Read both images' layer headers (shared layers once), compare the final roots,
    then hash the files that could still differ."""
    shared, rows, elsewhere = compare_layers(image_a, image_b)
    cache = LayerCache()
    an_a: Analysis = analyze(source_a, image_a, cache=cache,
                             progress=(lambda d, n: progress("A", d, n)) if progress else None)
    an_b: Analysis = analyze(source_b, image_b, cache=cache,
                             progress=(lambda d, n: progress("B", d, n)) if progress else None)
    ida = [str(d) for d in image_a.config.diff_ids]
    idb = [str(d) for d in image_b.config.diff_ids]

    root_a = dict(an_a.root.walk())
    root_b = dict(an_b.root.walk())
    res_a, res_b = _link_resolver(an_a), _link_resolver(an_b)
    files: list[FileDiff] = []
    to_hash: list[tuple[str, Version, Version, Version, Version]] = []
    for path in sorted(root_a.keys() | root_b.keys(), key=split_key):
        in_a, in_b = path in root_a, path in root_b
        va, vb = root_a.get(path), root_b.get(path)
        if in_a and not in_b:
            files.append(FileDiff(path, "removed", va, None))
        elif in_b and not in_a:
            files.append(FileDiff(path, "added", None, vb))
        elif va is not None and vb is not None:
            ra, rb = res_a(va), res_b(vb)
            fields = _differ(ra, rb)
            if fields:
                files.append(FileDiff(path, "changed", va, vb, tuple(fields)))
            elif ra.is_file and ida[ra.layer] != idb[rb.layer]:
                to_hash.append((path, va, vb, ra, rb))

    hashed = 0
    if to_hash:
        want_a: dict[int, set[str]] = {}
        want_b: dict[int, set[str]] = {}
        for _, _, _, ra, rb in to_hash:
            want_a.setdefault(ra.layer, set()).add(ra.path)
            want_b.setdefault(rb.layer, set()).add(rb.path)
        sums_a: dict[tuple[int, str], str] = {}
        sums_b: dict[tuple[int, str], str] = {}
        for layer, paths in sorted(want_a.items()):
            for p, d in hash_files(source_a, image_a.manifest.layers[layer], paths).items():
                sums_a[layer, p] = d
        for layer, paths in sorted(want_b.items()):
            for p, d in hash_files(source_b, image_b.manifest.layers[layer], paths).items():
                sums_b[layer, p] = d
        hashed = len(to_hash)
        for path, va, vb, ra, rb in to_hash:
            if sums_a.get((ra.layer, ra.path)) != sums_b.get((rb.layer, rb.path)):
                files.append(FileDiff(path, "changed", va, vb, ("content",)))
        files.sort(key=lambda f: split_key(f.path))
    from lamina.inspect.relation import relation

    return ImageDiff(shared, rows, elsewhere, files, hashed, relation(image_a, image_b))

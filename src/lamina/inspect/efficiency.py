"""``lamina efficiency``: the bytes an image carries that its final root never shows.

Definitions (sizes are bytes of regular-file content, uncompressed, as the layer tars
hold them; directories, links and tar headers count 0):

    total     the sum of the file sizes of every layer (each copy counted)
    final     the sum of the file sizes in the final root
    wasted    total - final: every file copy some upper layer overwrites, deletes
              (a whiteout of it or of an ancestor), hides (an opaque directory) or
              drops (a non-directory over its directory)
    score     1 - wasted / total   (1.0 for an image without file content)

``wasted`` is split by why the copy is gone:

    overwritten      an upper layer wrote the path again with other content
    metadata-only    an upper layer wrote the same bytes again, changing only mode,
                     owner or mtime (chmod/chown/touch): the whole file copied for a
                     few bits of metadata; contents are hashed to tell this from
                     "overwritten", but only for copies replaced by one of equal size
    deleted          a whiteout, an opaque directory or a replaced directory removed it

This is dive's idea, re-derived: dive counts every copy of a path that occurs in more
than one layer, the visible one included, so a file written twice counts twice; here
only the copies nobody can see are wasted, and ``wasted + final == total`` holds
exactly.  Gates for CI: ``score < fail_under`` or ``wasted > max_wasted`` fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lamina.inspect.tree import Analysis, Displaced, hash_files
from lamina.transport.base import ImageSource

Why = Literal["overwritten", "metadata-only", "deleted"]


@dataclass(frozen=True)
class WastedPath:
    path: str
    copies: int            # hidden copies of the path
    size: int              # their bytes
    why: tuple[Why, ...]   # distinct reasons, in layer order
    layers: tuple[int, ...]  # 0-based layers that hold the hidden copies

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "copies": self.copies, "wasted": self.size,
                "why": list(self.why), "layers": [i + 1 for i in self.layers]}


@dataclass(frozen=True)
class LayerWaste:
    index: int
    created_by: str
    size: int        # file bytes in the layer
    wasted: int      # of which hidden in the final root

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.index + 1, "created_by": self.created_by,
                "files_size": self.size, "wasted": self.wasted}


@dataclass
class EfficiencyReport:
    total: int
    final: int
    wasted: int
    overwritten: int
    metadata_only: int
    deleted: int
    paths: list[WastedPath] = field(default_factory=list)
    layers: list[LayerWaste] = field(default_factory=list)

    @property
    def score(self) -> float:
        return 1.0 if self.total == 0 else 1.0 - self.wasted / self.total

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "total": self.total, "final": self.final,
                "wasted": self.wasted,
                "wasted_by": {"overwritten": self.overwritten,
                              "metadata_only": self.metadata_only, "deleted": self.deleted},
                "layers": [x.to_json() for x in self.layers],
                "paths": [p.to_json() for p in self.paths]}


@dataclass(frozen=True)
class Gates:
    fail_under: float | None = None   # fail when score < this (0..1)
    max_wasted: int | None = None     # fail when wasted > this (bytes)

    def failures(self, report: EfficiencyReport) -> list[str]:
        out = []
        if self.fail_under is not None and report.score < self.fail_under:
            out.append(f"efficiency {report.score:.4f} is under {self.fail_under:.4f}")
        if self.max_wasted is not None and report.wasted > self.max_wasted:
            out.append(f"{report.wasted} bytes wasted, over the {self.max_wasted} allowed")
        return out


def _same_content(source: ImageSource, analysis: Analysis,
                  pairs: list[Displaced]) -> set[int]:
    """Indexes into ``pairs`` whose hidden copy and replacement have equal bytes."""
    want: dict[int, set[str]] = {}
    for d in pairs:
        assert d.by is not None
        want.setdefault(d.version.layer, set()).add(d.version.path)
        want.setdefault(d.by.layer, set()).add(d.by.path)
    sums: dict[tuple[int, str], str] = {}
    layers = analysis.image.manifest.layers
    for layer, paths in sorted(want.items()):
        for path, digest in hash_files(source, layers[layer], paths).items():
            sums[(layer, path)] = digest
    same = set()
    for i, d in enumerate(pairs):
        assert d.by is not None
        a = sums.get((d.version.layer, d.version.path))
        if a is not None and a == sums.get((d.by.layer, d.by.path)):
            same.add(i)
    return same


def efficiency(source: ImageSource, analysis: Analysis) -> EfficiencyReport:
    """Wasted bytes and the score of an analysed image (reads contents only of files
    replaced by a copy of the same size)."""
    total = sum(layer.files_size for layer in analysis.layers)
    final = sum(v.size for v in analysis.root.files())
    hidden = [d for d in analysis.displaced() if d.version.is_file]
    candidates = [d for d in hidden if d.cause == "overwritten" and d.by is not None
                  and d.by.is_file and d.by.size == d.version.size and d.version.size > 0]
    same = _same_content(source, analysis, candidates) if candidates else set()
    same_ids = {id(candidates[i]) for i in same}

    def why(d: Displaced) -> Why:
        if d.cause != "overwritten":
            return "deleted"
        return "metadata-only" if id(d) in same_ids else "overwritten"

    by_path: dict[str, list[Displaced]] = {}
    sums: dict[Why, int] = {"overwritten": 0, "metadata-only": 0, "deleted": 0}
    layer_waste = [0] * len(analysis.layers)
    for d in hidden:
        by_path.setdefault(d.version.path, []).append(d)
        sums[why(d)] += d.version.size
        layer_waste[d.version.layer] += d.version.size
    paths = []
    for path, ds in by_path.items():
        reasons: list[Why] = []
        for d in ds:
            if why(d) not in reasons:
                reasons.append(why(d))
        paths.append(WastedPath(path, len(ds), sum(d.version.size for d in ds),
                                tuple(reasons), tuple(d.version.layer for d in ds)))
    paths.sort(key=lambda p: (-p.size, p.path))
    # Every file copy is either in the final root or hidden: wasted == total - final.
    wasted = sum(sums.values())
    return EfficiencyReport(
        total, final, wasted, sums["overwritten"], sums["metadata-only"], sums["deleted"],
        paths, [LayerWaste(x.index, x.created_by, x.files_size, layer_waste[x.index])
                for x in analysis.layers])

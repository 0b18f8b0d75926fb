"""``lamina which IMAGE PATH``: the layer that provides a path, and what it hides.

Every version of the path, bottom layer first, with its fate: in the final root, or
overwritten / deleted / hidden by an opaque directory / dropped with a replaced
directory, by which layer and at which path (the whiteout may name an ancestor).

Directories on the way are looked up as the image would: a symlink among them is
followed inside the final root, so ``/bin/sh`` on a merged-/usr image (``bin ->
usr/bin``) is ``/usr/bin/sh``, and the report says so.  The last component is taken
as named (a symlink is reported as itself) unless ``follow`` asks for its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lamina.errors import NotFound
from lamina.inspect.tree import Analysis, Displaced, Version, join


@dataclass(frozen=True)
class PathVersion:
    version: Version
    created_by: str
    fate: Displaced | None     # None: this version is in the final root

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.version.to_json(), "created_by": self.created_by}
        if self.fate is None:
            d["fate"] = "final"
        else:
            d["fate"] = self.fate.cause
            d["by_layer"] = self.fate.by_layer + 1
            d["at"] = self.fate.at
        return d


@dataclass(frozen=True)
class WhichReport:
    path: str                           # the path as asked
    provider: PathVersion | None        # the version in the final root
    versions: list[PathVersion]         # every version, bottom layer first
    deleted_by: Displaced | None        # when the path is gone: the last deletion
    resolved: str = ""                  # where the lookup led, when symlinks moved it

    @property
    def lower(self) -> list[PathVersion]:
        """The versions under the provider (or all of them, when the path is gone)."""
        return [v for v in self.versions if v is not self.provider]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "resolved": self.resolved or self.path,
                "layer": self.provider.version.layer + 1 if self.provider else None,
                "provider": self.provider.to_json() if self.provider else None,
                "lower": [v.to_json() for v in self.lower]}


def which(analysis: Analysis, path: str, follow: bool = False) -> WhichReport:
    """The history of ``path`` in an analysed image, its directories resolved in the
    final root (and the path itself too with ``follow``).  NotFound if no layer ever
    had it; a path deleted from the final root gets a report with ``provider`` None."""
    # ".." is left to the lookup: after a symlink it climbs from where the link led.
    asked = [p for p in path.split("/") if p not in ("", ".")]
    parts = analysis.root.resolve(path, follow)
    if not parts:
        raise NotFound("/ is the root itself, which no layer provides")
    shown = join(asked)
    path = join(parts)
    resolved = path if path != shown else ""
    if resolved:
        shown = f"{shown} (\u2192 {path})"
    names = [layer.created_by for layer in analysis.layers]
    # Every version of the path either left the root (and was recorded so) or is in it.
    versions = [PathVersion(d.version, names[d.version.layer], d)
                for d in analysis.displaced() if d.version.path == path]
    final = analysis.root.lookup(parts)
    if final is not None:
        versions.append(PathVersion(final, names[final.layer], None))
    versions.sort(key=lambda x: x.version.layer)
    provider = next((x for x in versions if x.fate is None), None)
    if not versions:
        if analysis.root.exists(parts):
            raise NotFound(f"{shown} is a directory no layer has an entry for (it exists "
                           "only as the parent of other entries)")
        raise NotFound(f"{shown} is in no layer of the image")
    deleted = None
    if provider is None:
        deleted = versions[-1].fate
    return WhichReport(join(asked), provider, versions, deleted, resolved)

"""Image configuration (OCI image-spec config.md; Docker's image JSON is the same shape).

The config names each layer by its ``diff_id`` (digest of the *uncompressed* tar) in
``rootfs.diff_ids``, and tells how each layer was made in ``history``, where
``empty_layer: true`` marks steps that changed only the config.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lamina.digest import Digest
from lamina.errors import InvalidManifest, InvalidReference
from lamina.image.manifest import Platform, _json_object, dumps


@dataclass(frozen=True)
class History:
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.created_by:
            out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """A parsed config with its raw bytes; ``doc`` is a private copy, never mutated."""

    raw: bytes
    doc: dict[str, Any]
    diff_ids: tuple[Digest, ...]
    history: tuple[History, ...]
    platform: Platform

    @property
    def digest(self) -> Digest:
        return Digest.from_bytes(self.raw)

    @property
    def created(self) -> str | None:
        value = self.doc.get("created")
        return value if isinstance(value, str) else None

    @property
    def container_config(self) -> dict[str, Any]:
        """The runtime defaults (Env, Cmd, Entrypoint, WorkingDir, User, ...)."""
        value = self.doc.get("config")
        return copy.deepcopy(value) if isinstance(value, dict) else {}

    def layer_history(self) -> list[History | None]:
        """For each layer, the history entry that made it (None if history is short)."""
        out: list[History | None] = []
        for h in self.history:
            if not h.empty_layer:
                out.append(h)
        out = out[: len(self.diff_ids)]
        return out + [None] * (len(self.diff_ids) - len(out))

    def chain_ids(self) -> list[Digest]:
        return chain_ids(self.diff_ids)


def parse_config(raw: bytes, what: str = "image config") -> ImageConfig:
    obj = _json_object(raw, what)
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidManifest(f"{what}: rootfs.type must be 'layers'")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise InvalidManifest(f"{what}: rootfs.diff_ids must be a list")
    try:
        diff_ids = tuple(Digest.parse(x) for x in ids)
    except InvalidReference as e:
        raise InvalidManifest(f"{what}: rootfs.diff_ids: {e}") from None
    hist_raw = obj.get("history") or []
    if not isinstance(hist_raw, list):
        raise InvalidManifest(f"{what}: history must be a list")
    history = []
    for i, h in enumerate(hist_raw):
        if not isinstance(h, dict):
            raise InvalidManifest(f"{what}: history[{i}] must be an object")

        def s(key: str, h: dict[str, Any] = h) -> str | None:
            v = h.get(key)
            return v if isinstance(v, str) else None

        history.append(History(s("created"), s("created_by"), s("author"), s("comment"),
                               bool(h.get("empty_layer", False))))
    arch, os_ = obj.get("architecture"), obj.get("os")
    if not isinstance(arch, str) or not isinstance(os_, str):
        raise InvalidManifest(f"{what}: needs string 'architecture' and 'os'")
    variant = obj.get("variant")
    plat = Platform(arch, os_, variant if isinstance(variant, str) else None)
    return ImageConfig(raw, obj, diff_ids, tuple(history), plat)


def rfc3339(epoch: float) -> str:
    t = _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t.microsecond == 0 else t.isoformat().replace(
        "+00:00", "Z")


def build_config(
    diff_ids: Sequence[Digest],
    history: Sequence[History],
    platform: Platform,
    created: str | None = None,
    container_config: dict[str, Any] | None = None,
    author: str | None = None,
) -> ImageConfig:
    """Make a config document with keys in a fixed order, so equal inputs give equal bytes."""
    doc: dict[str, Any] = {}
    if created:
        doc["created"] = created
    if author:
        doc["author"] = author
    doc["architecture"] = platform.architecture
    if platform.variant:
        doc["variant"] = platform.variant
    doc["os"] = platform.os
    doc["config"] = container_config or {}
    doc["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in diff_ids]}
    doc["history"] = [h.to_json() for h in history]
    return ImageConfig(dumps(doc), doc, tuple(diff_ids), tuple(history), platform)


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """image-spec config.md "Layer ChainID": ChainID(L0) = DiffID(L0);
    ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).  Names a stack, not a layer."""
    out: list[Digest] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            text = f"{out[-1]} {d}".encode()
            out.append(Digest("sha256", hashlib.sha256(text).hexdigest()))
    return out

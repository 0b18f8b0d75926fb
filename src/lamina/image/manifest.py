"""Descriptors, image manifests and indexes (OCI image-spec manifest.md, image-index.md,
descriptor.md; Docker image manifest v2 schema 2 and manifest list).

Values are frozen.  A parsed manifest keeps the exact bytes it came from: its digest is
the digest of those bytes (image-spec descriptor.md), never of a re-serialisation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lamina.digest import Digest
from lamina.errors import InvalidManifest, InvalidReference, Unsupported
from lamina.image import mediatypes as mt
from lamina.image.jsondoc import load_object

# distribution-spec "Pulling manifests": registries SHOULD accept manifests up to 4 MiB,
# and clients should refuse larger ones; lamina holds itself to the same bound.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"{what} is {len(raw)} bytes, over the 4 MiB limit")
    return load_object(raw, what)


def _str_map(value: Any, what: str) -> Mapping[str, str]:
    if value is None:
        return _EMPTY
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidManifest(f"{what}: annotations must map strings to strings")
    return MappingProxyType(dict(value))


def dumps(obj: Any) -> bytes:
    """The bytes lamina writes for a JSON document: compact, key order as built."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Platform:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{what}: platform must be an object")
        arch, os_ = obj.get("architecture"), obj.get("os")
        if not isinstance(arch, str) or not isinstance(os_, str):
            raise InvalidManifest(f"{what}: platform needs string 'architecture' and 'os'")
        variant = obj.get("variant")
        version = obj.get("os.version")
        return cls(arch, os_, variant if isinstance(variant, str) else None,
                   version if isinstance(version, str) else None)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as ``--platform`` takes it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReference(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[1], parts[0], parts[2] if len(parts) == 3 else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, want: Platform) -> bool:
        if (self.os, self.architecture) != (want.os, want.architecture):
            return False
        return want.variant is None or self.variant in (None, want.variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def current_platform() -> Platform:
    """This machine's platform in the GOARCH vocabulary images use."""
    machine = os.uname().machine   # what platform.machine() says, without its import
    arch = _GO_ARCH.get(machine, machine)
    return Platform(arch, "linux", "v7" if machine == "armv7l" else None)


@dataclass(frozen=True)
class Descriptor:
    """image-spec descriptor.md: what travels between rooms instead of the bytes."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{what}: descriptor must be an object")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifest(f"{what}: descriptor has no mediaType")
        try:
            digest = Digest.parse(obj.get("digest"))  # type: ignore[arg-type]
        except InvalidReference as e:
            raise InvalidManifest(f"{what}: {e}") from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"{what}: descriptor {digest} has no valid size")
        plat = obj.get("platform")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidManifest(f"{what}: urls must be a list of strings")
        art = obj.get("artifactType")
        return cls(
            media_type, digest, size, _str_map(obj.get("annotations"), what),
            Platform.from_json(plat, what) if plat is not None else None,
            tuple(urls), art if isinstance(art, str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest),
                               "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size,
                          MappingProxyType(dict(annotations)), self.platform, self.urls,
                          self.artifact_type)


def descriptor_of(raw: bytes, media_type: str) -> Descriptor:
    return Descriptor(media_type, Digest.from_bytes(raw), len(raw))


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2.2), with the raw bytes it was parsed from."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def digest(self) -> Digest:
        return Digest.from_bytes(self.raw)

    def descriptor(self, **kw: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **kw)

    def blobs(self) -> list[Descriptor]:
        """Config first, then layers: every blob this manifest needs."""
        return [self.config, *self.layers]

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker), with its raw bytes."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None

    @property
    def digest(self) -> Digest:
        return Digest.from_bytes(self.raw)

    def descriptor(self, **kw: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **kw)

    def select(self, want: Platform) -> Descriptor:
        """The entry for a platform; an entry without a platform matches only if it is alone."""
        images = [d for d in self.manifests if d.media_type in mt.MANIFESTS | mt.INDEXES]
        for d in images:
            if d.platform is not None and d.platform.matches(want):
                return d
        if len(images) == 1 and images[0].platform is None:
            return images[0]
        have = ", ".join(str(d.platform) for d in images if d.platform) or "none"
        raise Unsupported(f"no image for platform {want} in index (has: {have})")


def parse(raw: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest | Index:
    """Parse and validate a manifest or index; ``media_type`` is the one it was served
    under (a Content-Type or descriptor), used when the document omits its own."""
    obj = _json_object(raw, what)
    declared = obj.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidManifest(f"{what}: mediaType must be a string")
    # image-spec manifest.md: mediaType SHOULD be set; when it is, it must agree with
    # the type the document was fetched as (guards against type confusion).
    if declared and media_type and declared != media_type and media_type in (
        mt.MANIFESTS | mt.INDEXES
    ):
        raise InvalidManifest(f"{what}: declares {declared} but was served as {media_type}")
    kind = declared or media_type
    if kind is None:
        kind = mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    if obj.get("schemaVersion") != 2:
        if obj.get("schemaVersion") == 1:
            raise Unsupported(f"{what}: Docker schema 1 manifests are not supported")
        raise InvalidManifest(f"{what}: schemaVersion must be 2")
    subject = obj.get("subject")
    subj = Descriptor.from_json(subject, f"{what} subject") if subject is not None else None
    annotations = _str_map(obj.get("annotations"), what)
    if kind in mt.MANIFESTS:
        if "config" not in obj:
            raise InvalidManifest(f"{what}: image manifest has no config")
        config = Descriptor.from_json(obj["config"], f"{what} config")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise InvalidManifest(f"{what}: layers must be a list")
        descs = tuple(Descriptor.from_json(x, f"{what} layer {i}") for i, x in enumerate(layers))
        art = obj.get("artifactType")
        return Manifest(raw, kind, config, descs, annotations, subj,
                        art if isinstance(art, str) else None)
    if kind in mt.INDEXES:
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidManifest(f"{what}: manifests must be a list")
        return Index(raw, kind, tuple(
            Descriptor.from_json(x, f"{what} entry {i}") for i, x in enumerate(manifests)
        ), annotations, subj)
    raise Unsupported(f"{what}: unknown manifest media type {kind!r}")


def parse_manifest(raw: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest:
    m = parse(raw, media_type, what)
    if not isinstance(m, Manifest):
        raise InvalidManifest(f"{what}: expected an image manifest, got an index")
    return m


def build_manifest(
    config: Descriptor,
    layers: Sequence[Descriptor],
    media_type: str = mt.OCI_MANIFEST,
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                           "config": config.to_json(), "layers": [d.to_json() for d in layers]}
    if annotations:
        obj["annotations"] = dict(annotations)
    raw = dumps(obj)
    return Manifest(raw, media_type, config, tuple(layers),
                    MappingProxyType(dict(annotations or {})))


def build_index(
    manifests: Sequence[Descriptor],
    media_type: str = mt.OCI_INDEX,
    annotations: Mapping[str, str] | None = None,
) -> Index:
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                           "manifests": [d.to_json() for d in manifests]}
    if annotations:
        obj["annotations"] = dict(annotations)
    return Index(dumps(obj), media_type, tuple(manifests),
                 MappingProxyType(dict(annotations or {})))

"""Manifests and indexes: parsing keeps raw bytes, validation gives clear errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from lamina.digest import Digest
from lamina.errors import InvalidManifest, Unsupported
from lamina.image import mediatypes as mt
from lamina.image.manifest import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    build_index,
    build_manifest,
    parse,
    parse_manifest,
)

CFG = "sha256:" + "c" * 64
L0 = "sha256:" + "0" * 64
L1 = "sha256:" + "1" * 64

# Odd whitespace, tabs, key order that no serialiser would produce, a trailing newline.
OCI_RAW = (
    b'{\n\t"layers" : [ {"size": 30,"digest":"' + L0.encode() + b'",\n'
    b'   "mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"},\n'
    b'  {"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"' + L1.encode()
    + b'","size":0, "annotations": {"org.opencontainers.image.title": "b"}} ],\n'
    b'  "config":{"size":7,"mediaType":"application/vnd.oci.image.config.v1+json",'
    b'"digest":"' + CFG.encode() + b'"},\n'
    b'  "annotations": {"org.opencontainers.image.created": "2023-11-14T22:13:20Z"},'
    b'"mediaType": "application/vnd.oci.image.manifest.v1+json",   "schemaVersion":2 }\n'
)


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": CFG, "size": 7},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": L0, "size": 30}],
    }
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def raw_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_oci_manifest_keeps_raw_bytes() -> None:
    m = parse(OCI_RAW, mt.OCI_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.raw is OCI_RAW
    assert m.digest == Digest("sha256", hashlib.sha256(OCI_RAW).hexdigest())
    # ... not the digest of any re-serialisation.
    assert m.digest != Digest.from_bytes(json.dumps(json.loads(OCI_RAW)).encode())
    assert m.descriptor() == Descriptor(mt.OCI_MANIFEST, m.digest, len(OCI_RAW))
    assert m.media_type == mt.OCI_MANIFEST and not m.is_docker
    assert m.config == Descriptor(mt.OCI_CONFIG, Digest.parse(CFG), 7)
    assert [(x.media_type, str(x.digest), x.size) for x in m.layers] == [
        (mt.OCI_LAYER_GZIP, L0, 30), (mt.OCI_LAYER_ZSTD, L1, 0)]
    assert dict(m.layers[1].annotations) == {"org.opencontainers.image.title": "b"}
    assert dict(m.annotations) == {"org.opencontainers.image.created": "2023-11-14T22:13:20Z"}
    assert [str(d.digest) for d in m.blobs()] == [CFG, L0, L1]


def test_manifest_is_frozen() -> None:
    m = parse_manifest(OCI_RAW)
    with pytest.raises(AttributeError):
        m.raw = b"{}"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.annotations["x"] = "y"  # type: ignore[index]


def test_docker_manifest() -> None:
    raw = raw_of(manifest_doc(
        mediaType=mt.DOCKER_MANIFEST,
        config={"mediaType": mt.DOCKER_CONFIG, "digest": CFG, "size": 7},
        layers=[{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": L0, "size": 30}]))
    m = parse_manifest(raw, mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST and m.is_docker
    assert m.config.media_type == mt.DOCKER_CONFIG
    assert m.layers[0].media_type == mt.DOCKER_LAYER_GZIP
    assert m.digest == Digest.from_bytes(raw)


def test_media_type_from_served_type_when_omitted() -> None:
    raw = raw_of(manifest_doc(mediaType=None))
    assert parse(raw, mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    assert parse(raw).media_type == mt.OCI_MANIFEST   # neither: OCI, by shape
    idx = raw_of({"schemaVersion": 2, "manifests": []})
    assert isinstance(parse(idx), Index)
    assert parse(idx).media_type == mt.OCI_INDEX


def test_served_as_generic_type_is_not_a_mismatch() -> None:
    m = parse(raw_of(manifest_doc()), "application/octet-stream")
    assert m.media_type == mt.OCI_MANIFEST


def _index_entry(digest: str, platform: dict[str, str] | None,
                 media_type: str = mt.OCI_MANIFEST) -> dict[str, Any]:
    e: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": 500}
    if platform is not None:
        e["platform"] = platform
    return e


AMD64 = "sha256:" + "a" * 64
ARM64 = "sha256:" + "b" * 64
ARMV7 = "sha256:" + "d" * 64
ARMV6 = "sha256:" + "e" * 64
WIN = "sha256:" + "f" * 64
ATTEST = "sha256:" + "9" * 64

MULTI = [
    _index_entry(AMD64, {"architecture": "amd64", "os": "linux"}),
    _index_entry(ARM64, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    _index_entry(ARMV7, {"architecture": "arm", "os": "linux", "variant": "v7"}),
    _index_entry(ARMV6, {"architecture": "arm", "os": "linux", "variant": "v6"}),
    _index_entry(WIN, {"architecture": "amd64", "os": "windows",
                       "os.version": "10.0.17763.5329"}),
    _index_entry(ATTEST, {"architecture": "unknown", "os": "unknown"}),
]


@pytest.mark.parametrize("media_type", [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST])
def test_index_parse(media_type: str) -> None:
    raw = b'{"manifests": ' + json.dumps(MULTI, indent=3).encode() + \
        b', "mediaType": "' + media_type.encode() + b'", "schemaVersion": 2}'
    idx = parse(raw, media_type)
    assert isinstance(idx, Index)
    assert idx.media_type == media_type
    assert idx.digest == Digest("sha256", hashlib.sha256(raw).hexdigest())
    assert [str(d.digest) for d in idx.manifests] == [AMD64, ARM64, ARMV7, ARMV6, WIN, ATTEST]
    assert idx.manifests[4].platform == Platform("amd64", "windows", None, "10.0.17763.5329")
    with pytest.raises(InvalidManifest, match="expected an image manifest, got an index"):
        parse_manifest(raw, media_type)


@pytest.mark.parametrize(("want", "expected"), [
    ("linux/amd64", AMD64),
    ("linux/arm64", ARM64),
    ("linux/arm64/v8", ARM64),
    ("linux/arm/v7", ARMV7),
    ("linux/arm/v6", ARMV6),
    ("linux/arm", ARMV7),          # no variant asked: the first arm entry
    ("windows/amd64", WIN),
])
def test_index_select(want: str, expected: str) -> None:
    idx = build_index([Descriptor.from_json(e, "entry") for e in MULTI])
    assert str(idx.select(Platform.parse(want)).digest) == expected


def test_index_select_missing_platform_says_what_there_is() -> None:
    idx = build_index([Descriptor.from_json(e, "entry") for e in MULTI[:2]])
    with pytest.raises(Unsupported, match=r"no image for platform linux/s390x in index "
                                          r"\(has: linux/amd64, linux/arm64/v8\)"):
        idx.select(Platform.parse("linux/s390x"))
    with pytest.raises(Unsupported):
        idx.select(Platform.parse("linux/arm64/v9"))


def test_index_select_single_entry_without_platform() -> None:
    only = Descriptor(mt.OCI_MANIFEST, Digest.parse(AMD64), 10)
    assert build_index([only]).select(Platform.parse("linux/riscv64")) == only
    two = build_index([only, Descriptor(mt.OCI_MANIFEST, Digest.parse(ARM64), 10)])
    with pytest.raises(Unsupported, match="has: none"):
        two.select(Platform.parse("linux/amd64"))


def test_index_select_skips_non_image_entries() -> None:
    sbom = Descriptor(mt.OCI_LAYER, Digest.parse(ARM64), 5,
                      platform=Platform("amd64", "linux"))
    image = Descriptor(mt.OCI_MANIFEST, Digest.parse(AMD64), 10)
    assert build_index([sbom, image]).select(Platform.parse("linux/amd64")) == image


def test_build_manifest_round_trips() -> None:
    cfg = Descriptor(mt.OCI_CONFIG, Digest.parse(CFG), 7)
    layers = [Descriptor(mt.OCI_LAYER_GZIP, Digest.parse(L0), 30,
                         annotations={"k": "v"})]  # type: ignore[arg-type]
    built = build_manifest(cfg, layers, annotations={"a": "b"})
    again = parse_manifest(built.raw, mt.OCI_MANIFEST)
    assert again == built
    assert again.digest == Digest.from_bytes(built.raw)
    # Equal inputs give equal bytes.
    assert build_manifest(cfg, layers, annotations={"a": "b"}).raw == built.raw


# -- validation errors -----------------------------------------------------------------
BAD: list[tuple[str, bytes, str | None, type[Exception], str]] = [
    ("invalid json", b'{"schemaVersion": 2,', None, InvalidManifest,
     r"^manifest is not valid JSON: "),
    ("not utf-8", b'{"a": "\xff"}', None, InvalidManifest, r"^manifest is not valid JSON"),
    ("array", b"[1, 2]", None, InvalidManifest, r"^manifest is not a JSON object$"),
    ("string", b'"manifest"', None, InvalidManifest, r"^manifest is not a JSON object$"),
    ("no config", raw_of(manifest_doc(config=None)), mt.OCI_MANIFEST, InvalidManifest,
     r"^manifest: image manifest has no config$"),
    ("config not object", raw_of(manifest_doc(config="sha256:x")), None, InvalidManifest,
     r"^manifest config: descriptor must be an object$"),
    ("bad config digest", raw_of(manifest_doc(config={
        "mediaType": mt.OCI_CONFIG, "digest": "sha256:1234", "size": 7})), None,
     InvalidManifest, r"^manifest config: invalid sha256 digest 'sha256:1234'$"),
    ("uppercase digest", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": "sha256:" + "A" * 64, "size": 1}])), None,
     InvalidManifest, r"^manifest layer 0: invalid sha256 digest"),
    ("unknown algorithm", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": "md5:" + "a" * 32, "size": 1}])), None,
     InvalidManifest, r"^manifest layer 0: unsupported digest algorithm 'md5'"),
    ("missing digest", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "size": 1}])), None,
     InvalidManifest, r"^manifest layer 0: invalid digest None"),
    ("negative size", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": L0, "size": -1}])), None,
     InvalidManifest, r"^manifest layer 0: descriptor sha256:0{64} has no valid size$"),
    ("string size", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": L0, "size": "12"}])), None,
     InvalidManifest, r"has no valid size"),
    ("bool size", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": L0, "size": True}])), None,
     InvalidManifest, r"has no valid size"),
    ("float size", raw_of(manifest_doc(layers=[{
        "mediaType": mt.OCI_LAYER, "digest": L0, "size": 1.5}])), None,
     InvalidManifest, r"has no valid size"),
    ("no layer media type", raw_of(manifest_doc(layers=[{"digest": L0, "size": 1}])), None,
     InvalidManifest, r"^manifest layer 0: descriptor has no mediaType$"),
    ("layers not list", raw_of(manifest_doc(layers={"0": L0})), None, InvalidManifest,
     r"^manifest: layers must be a list$"),
    ("bad annotations", raw_of(manifest_doc(annotations={"a": 1})), None, InvalidManifest,
     r"annotations must map strings to strings"),
    ("schema 1", raw_of({"schemaVersion": 1, "name": "library/busybox", "tag": "latest",
                         "fsLayers": []}), None, Unsupported,
     r"^manifest: Docker schema 1 manifests are not supported$"),
    ("schema 3", raw_of(manifest_doc(schemaVersion=3)), None, InvalidManifest,
     r"^manifest: schemaVersion must be 2$"),
    ("schema missing", raw_of(manifest_doc(schemaVersion=None)), None, InvalidManifest,
     r"^manifest: schemaVersion must be 2$"),
    ("schema string", raw_of(manifest_doc(schemaVersion="2")), None, InvalidManifest,
     r"schemaVersion must be 2"),
    ("served as index", raw_of(manifest_doc()), mt.OCI_INDEX, InvalidManifest,
     r"^manifest: declares application/vnd\.oci\.image\.manifest\.v1\+json but was served "
     r"as application/vnd\.oci\.image\.index\.v1\+json$"),
    ("docker served as oci", raw_of(manifest_doc(mediaType=mt.DOCKER_MANIFEST)),
     mt.OCI_MANIFEST, InvalidManifest, r"declares .*docker.* but was served as .*oci"),
    ("mediaType not string", raw_of(manifest_doc(mediaType=2)), None, InvalidManifest,
     r"^manifest: mediaType must be a string$"),
    ("unknown type", raw_of(manifest_doc(mediaType="application/vnd.example+json")), None,
     Unsupported, r"^manifest: unknown manifest media type 'application/vnd\.example\+json'$"),
    ("index manifests not list", raw_of({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                         "manifests": {}}), None, InvalidManifest,
     r"^manifest: manifests must be a list$"),
    ("index bad entry", raw_of({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": L0,
                                               "size": 1, "platform": {"os": "linux"}}]}),
     None, InvalidManifest, r"^manifest entry 0: platform needs string 'architecture' and 'os'$"),
]


@pytest.mark.parametrize(("raw", "served", "error", "message"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid(raw: bytes, served: str | None, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse(raw, served)


def test_error_names_what_was_parsed() -> None:
    with pytest.raises(InvalidManifest, match=r"^manifest sha256:abc config: descriptor"):
        parse(raw_of(manifest_doc(config=[])), what="manifest sha256:abc")


def _padded(total: int) -> bytes:
    body = raw_of(manifest_doc())
    return body[:-1] + b" " * (total - len(body)) + b"}"


def test_size_limit() -> None:
    at_limit = _padded(MAX_MANIFEST_BYTES)
    assert len(at_limit) == MAX_MANIFEST_BYTES
    assert parse(at_limit).digest == Digest.from_bytes(at_limit)
    over = _padded(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(InvalidManifest, match=rf"^manifest is {MAX_MANIFEST_BYTES + 1} bytes, "
                                              r"over the 4 MiB limit$"):
        parse(over)


def test_digest_with_trailing_newline_rejected() -> None:
    raw = raw_of(manifest_doc(layers=[{"mediaType": mt.OCI_LAYER, "digest": L0 + "\n",
                                       "size": 1}]))
    with pytest.raises(InvalidManifest, match="invalid digest"):
        parse(raw)

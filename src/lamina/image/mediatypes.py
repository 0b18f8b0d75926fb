"""Media types lamina reads and writes (OCI image-spec media-types.md, Docker v2.2)."""

from __future__ import annotations

from collections.abc import Mapping

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})

LAYERS = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD,
    DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN,
})

# zstd:chunked is a +zstd layer whose descriptor carries annotations (layer/zstdchunked.py).
_OCI_LAYER_BY_COMPRESSION = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD,
                             "zstd:chunked": OCI_LAYER_ZSTD, "none": OCI_LAYER}
_DOCKER_LAYER_BY_COMPRESSION = {"gzip": DOCKER_LAYER_GZIP, "none": DOCKER_LAYER}


def layer_media_type(compression: str, docker: bool = False) -> str:
    """The layer media type for a compression, in OCI or Docker flavour."""
    table = _DOCKER_LAYER_BY_COMPRESSION if docker else _OCI_LAYER_BY_COMPRESSION
    try:
        return table[compression]
    except KeyError:
        flavour = "Docker" if docker else "OCI"
        raise ValueError(f"no {flavour} layer type for {compression}") from None


# containers/storage's zstd:chunked annotations (renamed from io.containers.* in 2022);
# the format itself is read in layer/zstdchunked.py.
CHUNKED_ANNOTATION_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")


def is_chunked(annotations: Mapping[str, str] | None) -> bool:
    """Whether a layer descriptor's annotations mark it zstd:chunked (a TOC position)."""
    return any(k.startswith(CHUNKED_ANNOTATION_PREFIXES) and k.endswith("manifest-position")
               for k in annotations or ())


def is_layer(media_type: str) -> bool:
    return media_type in LAYERS


def to_docker(media_type: str) -> str:
    """Map an OCI media type to its Docker v2.2 twin (for docker-archive / Docker manifests)."""
    return {
        OCI_MANIFEST: DOCKER_MANIFEST,
        OCI_INDEX: DOCKER_MANIFEST_LIST,
        OCI_CONFIG: DOCKER_CONFIG,
        OCI_LAYER_GZIP: DOCKER_LAYER_GZIP,
        OCI_LAYER: DOCKER_LAYER,
    }.get(media_type, media_type)


def to_oci(media_type: str) -> str:
    """Map a Docker v2.2 media type to its OCI twin."""
    return {
        DOCKER_MANIFEST: OCI_MANIFEST,
        DOCKER_MANIFEST_LIST: OCI_INDEX,
        DOCKER_CONFIG: OCI_CONFIG,
        DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
        DOCKER_LAYER: OCI_LAYER,
        DOCKER_LAYER_FOREIGN: OCI_LAYER_ND_GZIP,
    }.get(media_type, media_type)

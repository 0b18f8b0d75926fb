"""lamina.image: the nouns — descriptors, manifests, indexes, configs, references.

Frozen values parsed with validation and clear errors; raw bytes kept where a digest
names them.
"""

from lamina.image.config import History, ImageConfig, build_config, chain_ids, parse_config
from lamina.image.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    build_index,
    build_manifest,
    current_platform,
    descriptor_of,
    parse,
    parse_manifest,
)
from lamina.image.reference import Reference

__all__ = [
    "Descriptor", "History", "ImageConfig", "Index", "Manifest", "Platform", "Reference",
    "build_config", "build_index", "build_manifest", "chain_ids", "current_platform",
    "descriptor_of", "parse", "parse_config", "parse_manifest",
]

"""Sinks that store or send a layer in another form than the source gave it (plain
layers gzip'd by ``load`` and on push) must name what they wrote: the manifests above
such a layer, and the index above those, are rewritten.  Only the swapped descriptors
change (media type, digest, size, and the annotations a zstd:chunked conversion adds
or drops); every other field stays as the source wrote it."""

from __future__ import annotations

from collections.abc import Mapping

from lamina.digest import Digest
from lamina.image import mediatypes as mt
from lamina.image.jsondoc import load_object
from lamina.image.manifest import Descriptor, Index, Manifest, dumps, parse

_DOCKER_DOCUMENTS = (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
# What a Docker manifest or list may name.
_DOCKER_CHILDREN = frozenset({mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_LAYER,
                              mt.DOCKER_LAYER_GZIP, mt.DOCKER_LAYER_FOREIGN})

# Uncompressed layer types, and the gzip type each becomes.
PLAIN_LAYERS = {mt.OCI_LAYER: mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER: mt.DOCKER_LAYER_GZIP}


def is_plain_layer(desc: Descriptor) -> bool:
    return desc.media_type in PLAIN_LAYERS and desc.digest.algorithm == "sha256"


def gzip_descriptor(plain: Descriptor, digest: Digest, size: int) -> Descriptor:
    """The descriptor of ``plain``'s gzip form."""
    return Descriptor(PLAIN_LAYERS[plain.media_type], digest, size, plain.annotations)


def swap_children(desc: Descriptor, raw: bytes, doc: Manifest | Index,
                  replaced: Mapping[Digest, Descriptor]
                  ) -> tuple[Descriptor, bytes, Manifest | Index]:
    """``doc`` (a manifest's layers, an index's manifests) with every child in
    ``replaced`` swapped for its replacement; unchanged if none is."""
    key = "layers" if isinstance(doc, Manifest) else "manifests"
    children = doc.layers if isinstance(doc, Manifest) else doc.manifests
    if not any(d.digest in replaced for d in children):
        return desc, raw, doc
    obj = load_object(raw, f"manifest {desc.digest}")
    media_type = desc.media_type
    for entry, d in zip(obj[key], children, strict=True):
        new = replaced.get(d.digest)
        if new is not None:
            entry.update(mediaType=new.media_type, digest=str(new.digest), size=new.size)
            if new.annotations != d.annotations:    # a zstd:chunked layer's TOC position
                if new.annotations:
                    entry["annotations"] = dict(new.annotations)
                else:
                    entry.pop("annotations", None)
            if media_type in _DOCKER_DOCUMENTS and new.media_type not in _DOCKER_CHILDREN:
                media_type = mt.to_oci(media_type)
    if media_type != desc.media_type:
        # A Docker manifest cannot name a zstd layer, nor a Docker list an OCI manifest:
        # the document becomes its OCI twin, as skopeo converts it.  A manifest's config
        # and layers are relabelled (the same bytes: the config, so the image id, stays);
        # an index keeps its other entries as they are.
        obj["mediaType"] = media_type
        if isinstance(doc, Manifest):
            for entry in [obj["config"], *obj[key]]:
                entry["mediaType"] = mt.to_oci(entry["mediaType"])
    raw = dumps(obj)
    new_desc = Descriptor(media_type, Digest.from_bytes(raw), len(raw),
                          desc.annotations, desc.platform, desc.urls, desc.artifact_type)
    return new_desc, raw, parse(raw, media_type, what=f"manifest {new_desc.digest}")

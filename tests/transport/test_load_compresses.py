"""#10.14, through the library: ``load`` stores plain layers as gzip and rewrites the
manifests — and the index above them — to name what it stored; the configs (image ids)
are kept, and a second load finds every layer already there."""

from __future__ import annotations

import gzip
from pathlib import Path

from test_docker_archive import image_a, image_b, put_image

from lamina.image import mediatypes as mt
from lamina.image.manifest import Descriptor, Platform, build_index, parse
from lamina.store.fsck import check
from lamina.store.store import Store
from lamina.transport.archive import load_archive
from lamina.transport.copy import CopyEvent
from lamina.transport.oci_layout import OciLayoutSink
from lamina.transport.verify import unpackable_images


def test_index_of_plain_layers_is_loaded_as_gzip(tmp_path: Path) -> None:
    a, b = image_a(), image_b()      # plain layers, as Docker >= 25 saves them
    platforms = [Platform("amd64", "linux"), Platform("arm64", "linux")]
    entries = [Descriptor(img.manifest.media_type, img.manifest.digest,
                          len(img.manifest.raw), platform=p)
               for img, p in zip((a, b), platforms, strict=True)]
    index = build_index(entries)
    sink = OciLayoutSink.to_dir(tmp_path / "layout")
    for img in (a, b):
        put_image(sink, img, None)   # type: ignore[arg-type]
    sink.put_manifest(index.descriptor(), index.raw, ["docker.io/demo/multi:v1"])
    sink.close()

    with Store(tmp_path / "store") as store:
        [loaded] = load_archive(store, tmp_path / "layout")
        assert loaded.name == "docker.io/demo/multi:v1"
        top = parse(store.blobs.read_bytes(loaded.descriptor.digest))
        assert loaded.descriptor.digest != index.digest          # it names other blobs now
        assert store.meta.get_tag("docker.io/demo/multi:v1").digest == \
            str(loaded.descriptor.digest)
        assert [e.platform for e in top.manifests] == platforms  # type: ignore[union-attr]
        for entry, img in zip(top.manifests, (a, b), strict=True):  # type: ignore[union-attr]
            manifest = parse(store.blobs.read_bytes(entry.digest))
            assert manifest.config == img.manifest.config          # same image id
            assert [d.media_type for d in manifest.layers] == [mt.OCI_LAYER_GZIP] * 3
            assert [gzip.decompress(store.blobs.read_bytes(d.digest))
                    for d in manifest.layers] == img.tars
        report = check(store)
        assert report.clean, report
        assert unpackable_images(store) == []

        # again: every layer is already there (as gzip), and the same index comes out
        events: list[CopyEvent] = []
        [again] = load_archive(store, tmp_path / "layout", on_event=events.append)
        assert again.descriptor == loaded.descriptor
        layers = {d.digest for img in (a, b) for d in img.manifest.layers}
        assert {e.descriptor.digest for e in events if e.kind == "exists"} >= layers
        assert not [e for e in events if e.kind == "start" and e.descriptor.digest in layers]


def test_a_store_with_plain_layers_is_converted_by_loading_again(tmp_path: Path) -> None:
    """A store that loaded an archive before #10.14 holds plain layers; loading the
    archive again stores the gzip forms, and the plain blobs go with the next gc."""
    from lamina.store.gc import collect
    from lamina.transport.local import StoreTransport

    a = image_a()
    sink = OciLayoutSink.to_dir(tmp_path / "layout")
    put_image(sink, a, ["docker.io/demo/a:v1"])
    sink.close()
    with Store(tmp_path / "store") as store:
        old = StoreTransport(store)          # as load stored layers before
        put_image(old, a, ["docker.io/demo/a:v1"])
        old.close()
        plain = {str(d.digest) for d in a.manifest.layers}
        assert plain <= {str(d) for d in store.blobs.list()}
        [loaded] = load_archive(store, tmp_path / "layout")
        manifest = parse(store.blobs.read_bytes(loaded.descriptor.digest))
        assert [d.media_type for d in manifest.layers] == [mt.OCI_LAYER_GZIP] * 3
        assert [img.name for img in StoreTransport(store).images()] == ["docker.io/demo/a:v1"]
        collect(store)
        assert not plain & {str(d) for d in store.blobs.list()}
        assert check(store).clean and unpackable_images(store) == []

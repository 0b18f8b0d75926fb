"""zstd:chunked layers through a real docker-registry (issue 11, item 1): lamina's go up
and skopeo copies them unchanged; skopeo's come down into lamina with the registry's
digests, and their TOC reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from registry_servers import DockerRegistry, pull_image, push_image

from lamina.image.reference import Reference
from lamina.layer import zstdchunked as zc
from lamina.store.store import Store
from lamina_testing import Lamina, need


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("a = 1\n")
    (root / "big").write_bytes(bytes(range(256)) * 12_000)
    return root


def _layer(layout: Path) -> tuple[dict[str, object], bytes]:
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / top["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = manifest["layers"][-1]
    return layer, (blobs / layer["digest"].split(":")[1]).read_bytes()


def _toc(layer: dict[str, object], blob: bytes) -> zc.Toc:
    ann = layer["annotations"]
    assert isinstance(ann, dict)
    loc = zc.toc_location(ann)
    assert loc is not None
    return zc.parse_toc(blob[loc.offset : loc.offset + loc.length], zc.toc_checksum(ann) or "",
                        len(blob), loc)


def test_skopeo_copies_lamina_chunked_layers_from_a_registry(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    lamina.run("import", "--compression", "zstd:chunked", "ck/app:v1", _tree(tmp_path / "t"))
    dest = Reference.parse(f"{registry.host}/chunked/lamina:v1")
    with Store(lamina.root) as store:
        push_image(store, "ck/app:v1", dest)
    layout = tmp_path / "copy"
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{dest}",
                    f"oci:{layout}:v1"], check=True, capture_output=True)
    layer, blob = _layer(layout)
    mine = lamina.run("inspect", "ck/app:v1").json()[0]["Manifest"]["layers"][0]
    assert layer["digest"] == mine["digest"] and layer["annotations"] == mine["annotations"]
    assert {e.name for e in _toc(layer, blob).entries} == {"big", "etc/", "etc/conf"}


def test_lamina_pulls_skopeo_chunked_layers_unchanged(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    lamina.run("import", "ck/src:v1", _tree(tmp_path / "t"))
    src = tmp_path / "src"
    lamina.run("save", "--format", "oci", "-o", src, "ck/src:v1")
    dest = Reference.parse(f"{registry.host}/chunked/skopeo:v1")
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--dest-compress-format",
                    "zstd:chunked", f"oci:{src}:v1", f"docker://{dest}"],
                   check=True, capture_output=True)
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, dest)
    other.run("save", "--format", "oci", "-o", tmp_path / "pulled", str(dest))
    layer, blob = _layer(tmp_path / "pulled")
    registry_manifest = json.loads(subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
        check=True, capture_output=True, text=True).stdout)
    assert layer["digest"] == registry_manifest["layers"][-1]["digest"]
    toc = _toc(layer, blob)
    assert {e.name for e in toc.entries} == {"big", "etc/", "etc/conf"}
    assert sum(n for _, n in zc.frame_spans(toc, len(blob))) == len(blob)
    other.run("unpack", str(dest), tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == bytes(range(256)) * 12_000

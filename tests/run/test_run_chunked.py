"""``lamina run --commit --compression zstd:chunked`` (issue 11, item 1): the committed
layer is a chunked +zstd layer whose descriptor points at a TOC that describes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lamina.layer import zstdchunked as zc
from lamina_testing import Lamina, need_root


def test_commit_writes_a_chunked_layer(seeded: Lamina, tmp_path: Path) -> None:
    need_root()
    seeded.run("run", "--compression", "zstd:chunked", "--commit", "cli/chunked:1", "demo/a",
               "sh", "-c", "echo B > /var/www/html/index.html")
    layout = tmp_path / "layout"
    seeded.run("save", "--format", "oci", "-o", layout, "cli/chunked:1")
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / top["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    blob = (blobs / layer["digest"].split(":")[1]).read_bytes()
    loc = zc.toc_location(layer["annotations"])
    assert loc is not None
    toc = zc.parse_toc(blob[loc.offset : loc.offset + loc.length],
                       zc.toc_checksum(layer["annotations"]) or "", len(blob), loc)
    page = next(e for e in toc.entries if e.name == "var/www/html/index.html")
    assert page.digest == "sha256:" + hashlib.sha256(b"B\n").hexdigest()
    assert seeded.run("run", "cli/chunked:1", "cat", "/var/www/html/index.html").out == "B\n"

"""lamina graph: the SVG parsed and checked, the HTML wrapper."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from inspect_helpers import KnownImages

NS = {"s": "http://www.w3.org/2000/svg"}


def _boxes(root: ET.Element, kind: str) -> list[ET.Element]:
    return [r for r in root.iterfind(".//s:rect", NS)
            if r.get("class", "").split() == ["layer", kind]]


def test_graph_svg(known: KnownImages, tmp_path: Path) -> None:
    out = tmp_path / "ab.svg"
    # one image from the store, the other from the OCI layout: shared all the same
    known.lamina.run("graph", "test/a", f"oci:{known.oci}:test/b:latest", "-o", out)
    root = ET.parse(out).getroot()
    shared, unique = _boxes(root, "shared"), _boxes(root, "unique")
    assert len(shared) == 2 and len(unique) == 3
    assert [r.get("data-depth") for r in shared] == ["1", "2"]
    labels = [t.text for t in root.iterfind(".//s:text[@class='label']", NS)]
    assert labels == ["lamina import base", "lamina import shared", "lamina import a3",
                      "lamina import a4", "lamina import b3"]
    names = [t.text for t in root.iterfind(".//s:text[@class='image-name']", NS)]
    assert names == ["test/a", f"oci:{known.oci}:test/b:latest"[:36]] or len(names) == 2
    # every image is joined to each of its layers: 4 + 3 dots
    joins = list(root.iterfind(".//s:circle[@class='join']", NS))
    assert len(joins) == 7
    base = shared[0].get("data-digest")
    assert sum(1 for j in joins if j.get("data-digest") == base) == 2
    # a shared box spans both columns; heights grow with size, never under the minimum
    widths = sorted({float(r.get("width", 0)) for r in shared + unique})
    assert len(widths) == 2 and widths[1] > 2 * widths[0]
    heights = {r.get("data-depth") + r.get("data-size", ""): float(r.get("height", 0))
               for r in shared + unique}
    assert min(heights.values()) >= 26.0
    big = max(shared + unique, key=lambda r: int(r.get("data-size", 0)))
    assert float(big.get("height", 0)) == max(heights.values())


def test_graph_seed_html(known: KnownImages, tmp_path: Path) -> None:
    out = tmp_path / "b.html"
    known.lamina.run("graph", "test/b", "test/b", "-o", out, "--scale", "log",
                     "--title", "B twice")
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<script" not in html
    svg = html[html.index("<svg"):html.index("</svg>") + 6]
    root = ET.fromstring(svg)
    assert len(_boxes(root, "shared")) == 3 and not _boxes(root, "unique")
    assert "shared layer\n(3)" in html and "unique layer\n(0)" in html
    assert html.count("<tr class=\"shared\">") == 3


def test_graph_bad_output(known: KnownImages, tmp_path: Path) -> None:
    res = known.lamina.fail("graph", "test/a", "-o", tmp_path / "x.png")
    assert res.code == 3 and "write a .svg or an .html file" in res.err

"""``lamina graph``: images drawn as stacks of layers side by side, the seed's picture.

Only manifests and configs are read.  The images' layer stacks are merged into a tree
by diff_id from the bottom (two images share a layer when their stacks agree up to and
including it: the same chain id, the same snapshot); each tree node is drawn **once**,
as a box spanning the columns of every image that has it, and each image's column
carries a thread from its name down to its bottom layer with a dot joining it to every
layer box it uses.  Boxes of layers used by several images are ``class="layer shared"``,
the others ``class="layer unique"``; every box says its instruction (``created_by``) and
size, and has a ``<title>`` with the full text and digest.

Heights grow with the layer's blob size on a square-root scale (or a log one), from
``MIN_H`` (so a 200-byte layer still shows and its label fits) to ``MAX_H`` for the
biggest layer drawn.  Plain SVG 1.1, no script; ``render_html`` wraps it with a legend
and a table of the layers.  No element ids, so several drawings can share one HTML page
(as the server's pages will).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

from lamina.inspect.tree import layer_instructions
from lamina.transport.resolve import ResolvedImage
from lamina.units import human_size

Scale = Literal["sqrt", "log"]

MIN_H = 26.0
MAX_H = 220.0
COL_W = 240.0
GAP = 24.0
MARGIN = 20.0
HEAD = 44.0      # room above the tallest stack for the image names
FOOT = 20.0
THREAD_X = 10.0  # an image's thread runs this far inside its column's left edge
CHAR_W = 6.6     # average width of a 11px sans-serif character

SHARED_FILL = "#9ecae9"
SHARED_STROKE = "#2f6f9f"
UNIQUE_FILL = "#ffbf79"
UNIQUE_STROKE = "#b35806"


@dataclass
class LayerNode:
    """One distinct layer position: a diff_id on top of a given stack."""

    depth: int
    diff_id: str
    digest: str
    size: int
    created_by: str
    images: list[int] = field(default_factory=list)   # indexes into the image list
    children: list[LayerNode] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)      # images whose top layer this is
    # layout
    col_lo: int = 0
    col_hi: int = 0
    y_top: float = 0.0
    height: float = 0.0

    @property
    def shared(self) -> bool:
        return len(self.images) > 1


@dataclass
class Drawing:
    names: list[str]
    roots: list[LayerNode]
    columns: list[int]        # image index of each column, left to right
    sizes: list[int]          # total layer bytes of each image

    def nodes(self) -> list[LayerNode]:
        out: list[LayerNode] = []
        stack = list(reversed(self.roots))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(n.children))
        return out


def build_drawing(names: Sequence[str], images: Sequence[ResolvedImage]) -> Drawing:
    """Merge the stacks into a tree of layer nodes (no geometry yet)."""
    roots: list[LayerNode] = []
    ends_at_root: list[int] = []
    for i, image in enumerate(images):
        level = roots
        node: LayerNode | None = None
        labels = layer_instructions(image)
        for depth, (desc, diff_id) in enumerate(zip(image.manifest.layers,
                                                    image.config.diff_ids, strict=True)):
            found = next((n for n in level if n.diff_id == str(diff_id)), None)
            if found is None:
                found = LayerNode(depth, str(diff_id), str(desc.digest), desc.size,
                                  labels[depth])
                level.append(found)
            found.images.append(i)
            node = found
            level = found.children
        if node is None:
            ends_at_root.append(i)
        else:
            node.ends.append(i)
    columns: list[int] = list(ends_at_root)

    def place(node: LayerNode) -> None:
        node.col_lo = len(columns)
        columns.extend(node.ends)
        for child in node.children:
            place(child)
        node.col_hi = len(columns) - 1

    for root in roots:
        place(root)
    sizes = [sum(x.size for x in image.manifest.layers) for image in images]
    return Drawing(list(names), roots, columns, sizes)


def _height(size: int, biggest: int, scale: Scale) -> float:
    if biggest <= 0:
        return MIN_H
    if scale == "log":
        f = math.log1p(size) / math.log1p(biggest)
    else:
        f = math.sqrt(size) / math.sqrt(biggest)
    return MIN_H + (MAX_H - MIN_H) * f


def _fit(text: str, width: float) -> str:
    text = " ".join(text.split())
    room = max(4, int(width / CHAR_W))
    return text if len(text) <= room else text[:room - 1] + "…"


def render_svg(drawing: Drawing, scale: Scale = "sqrt", title: str | None = None) -> str:
    """The drawing as a standalone SVG document."""
    nodes = drawing.nodes()
    biggest = max((n.size for n in nodes), default=0)
    for n in nodes:
        n.height = _height(n.size, biggest, scale)

    # The stack height under each node decides where it sits; the tallest stack sets
    # the baseline.
    tops: dict[int, float] = {}   # image -> height of its whole stack

    def stack(node: LayerNode, below: float) -> None:
        node.y_top = below + node.height   # measured up from the baseline for now
        for i in node.ends:
            tops[i] = node.y_top
        for c in node.children:
            stack(c, node.y_top)

    for r in drawing.roots:
        stack(r, 0.0)
    tallest = max(tops.values(), default=0.0)
    ncols = max(1, len(drawing.columns))
    width = 2 * MARGIN + ncols * COL_W + (ncols - 1) * GAP
    title_h = 24.0 if title else 0.0
    baseline = MARGIN + title_h + HEAD + tallest
    height = baseline + FOOT + MARGIN

    def x_of(col: int) -> float:
        return MARGIN + col * (COL_W + GAP)

    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lamina-graph" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
        "<title>" + escape(title or "layers of " + ", ".join(drawing.names)) + "</title>",
    ]
    if title:
        out.append(f'<text class="title" x="{MARGIN}" y="{MARGIN + 14}" font-size="14" '
                   f'font-weight="bold">{escape(title)}</text>')
    # Threads first, so the boxes cover them: only the dots show where they join.
    for c, img in enumerate(drawing.columns):
        cx = x_of(c) + THREAD_X
        top = baseline - tops.get(img, 0.0)
        out.append(f'<line class="thread" x1="{cx:.1f}" y1="{top - 6:.1f}" x2="{cx:.1f}" '
                   f'y2="{baseline:.1f}" stroke="#333" stroke-width="1.2" '
                   f'stroke-dasharray="3 3" data-image="{escape(drawing.names[img])}"/>')
    # Layer boxes, bottom first.
    for n in nodes:
        x = x_of(n.col_lo)
        w = x_of(n.col_hi) + COL_W - x
        y = baseline - n.y_top
        kind = "shared" if n.shared else "unique"
        fill, stroke = (SHARED_FILL, SHARED_STROKE) if n.shared else (UNIQUE_FILL,
                                                                       UNIQUE_STROKE)
        users = " ".join(drawing.names[i] for i in n.images)
        tip = (f"layer {n.depth + 1}: {n.created_by or '(no history)'}\n{n.digest}\n"
               f"{human_size(n.size)} ({n.size} bytes)\nused by: {users}")
        out.append('<g class="layer-group">')
        out.append(f'<rect class="layer {kind}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                   f'height="{n.height:.1f}" rx="3" fill="{fill}" stroke="{stroke}" '
                   f'data-digest="{escape(n.digest)}" data-depth="{n.depth + 1}" '
                   f'data-size="{n.size}" data-images="{escape(users)}">'
                   f'<title>{escape(tip)}</title></rect>')
        size_text = human_size(n.size)
        label = _fit(n.created_by or "(no history)",
                     w - THREAD_X - 26 - CHAR_W * len(size_text))
        ty = y + n.height / 2 + 4 if n.height < 40 else y + 16
        out.append(f'<text class="label" x="{x + THREAD_X + 10:.1f}" y="{ty:.1f}">'
                   f'{escape(label)}</text>')
        out.append(f'<text class="size" x="{x + w - 8:.1f}" y="{ty:.1f}" '
                   f'text-anchor="end">{escape(size_text)}</text>')
        out.append("</g>")
    # Each image: a dot on every layer it uses (near the box's bottom edge, under the
    # label), and its name on top.
    for c, img in enumerate(drawing.columns):
        cx = x_of(c) + THREAD_X   # at the left, clear of the labels
        mid = x_of(c) + COL_W / 2
        top = baseline - tops.get(img, 0.0)
        out.append(f'<g class="image" data-image="{escape(drawing.names[img])}">')
        for n in nodes:
            if img in n.images:
                cy = baseline - n.y_top + n.height - 5
                out.append(f'<circle class="join" cx="{cx:.1f}" cy="{cy:.1f}" r="3" '
                           f'fill="#333" data-digest="{escape(n.digest)}"/>')
        out.append(f'<text class="image-name" x="{mid:.1f}" y="{top - 24:.1f}" '
                   f'text-anchor="middle" font-weight="bold">'
                   f'{escape(_fit(drawing.names[img], COL_W))}</text>')
        count = sum(1 for n in nodes if img in n.images)
        out.append(f'<text class="image-size" x="{mid:.1f}" y="{top - 10:.1f}" '
                   f'text-anchor="middle">{count} layer{"" if count == 1 else "s"}, '
                   f'{escape(human_size(drawing.sizes[img]))}</text>')
        out.append("</g>")
    out.append(f'<line class="baseline" x1="{MARGIN}" y1="{baseline:.1f}" '
               f'x2="{width - MARGIN:.1f}" y2="{baseline:.1f}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_html(drawing: Drawing, scale: Scale = "sqrt", title: str | None = None) -> str:
    """A page: the SVG, a legend, and a table of the layers (no script)."""
    svg = render_svg(drawing, scale, title)
    svg = svg.split("\n", 1)[1]   # no XML declaration inside HTML
    nodes = drawing.nodes()
    shared = sum(1 for n in nodes if n.shared)
    rows = "\n".join(
        f"<tr class=\"{'shared' if n.shared else 'unique'}\"><td>{n.depth + 1}</td>"
        f"<td><code>{escape(n.digest.split(':', 1)[-1][:12])}</code></td>"
        f"<td class=\"num\">{escape(human_size(n.size))}</td>"
        f"<td>{escape(' '.join(n.created_by.split()))}</td>"
        f"<td>{escape(', '.join(drawing.names[i] for i in n.images))}</td></tr>"
        for n in nodes)
    heading = escape(title or "Layers of " + ", ".join(drawing.names))
    scale_text = "square root" if scale == "sqrt" else "logarithm"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{heading}</title>
<style>
body {{ font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }}
.legend span {{ display: inline-block; margin-right: 1.5em; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle;
          border: 1px solid #333; margin-right: .4em; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ padding: .2em .6em; border-bottom: 1px solid #ddd; text-align: left; }}
td.num {{ text-align: right; }}
tr.shared td:first-child {{ border-left: 4px solid {SHARED_STROKE}; }}
tr.unique td:first-child {{ border-left: 4px solid {UNIQUE_STROKE}; }}
</style></head>
<body>
<h1>{heading}</h1>
<p class="legend">
<span><i class="swatch" style="background:{SHARED_FILL}"></i>shared layer
({shared}): stored once, used by every image whose thread it joins</span>
<span><i class="swatch" style="background:{UNIQUE_FILL}"></i>unique layer
({len(nodes) - shared})</span>
<span>height: {scale_text} of the layer's size, at least {MIN_H:.0f}px</span>
</p>
{svg}
<table class="layers"><thead><tr><th>#</th><th>layer</th><th>size</th>
<th>created by</th><th>images</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""

"""The path of one operation through the layers: a recorded call tree drawn as swimlanes,
one lane per layer (user, iommufd, core, driver, hardware), one box per span or event in
call order, an arrow from each call to what it caused. Laid side by side, two such
pictures show where two ways of doing the same thing differ (the invalidation paths
page: a VMM-trapped invalidation crosses every layer, a guest's HW-queue store goes from
user space straight to the hardware).

Knows no vendor: it draws the nodes it is given. Runs of alike siblings fold as the text
call tree folds them.
"""

from __future__ import annotations

from collections.abc import Sequence

from iommu_core.trace import LAYERS, TraceNode
from iommu_sim.draw.svg import LAYER_COLORS, Svg, fit
from iommu_sim.render import fold_runs

__all__ = ["path_svg"]

MARGIN = 12.0
#: Lane widths: the hardware's events carry the longest text.
LANE_W = {"user": 180.0, "iommufd": 170.0, "core": 130.0, "driver": 200.0, "hw": 300.0}
ROW_H = 22.0
ROW_GAP = 5.0
INDENT = 10.0
HEAD = 44.0
LANE_NAMES = {"user": "user space", "iommufd": "iommufd", "core": "iommu_core",
              "driver": "driver", "hw": "hardware model"}


class _Row:
    __slots__ = ("depth", "label", "lane", "layer", "parent", "tip", "x", "y")

    def __init__(self, layer: str, label: str, tip: str, parent: _Row | None,
                 depth: int) -> None:
        self.layer = layer
        self.lane = LAYERS.index(layer) if layer in LAYERS else len(LAYERS) - 1
        self.label = label
        self.tip = tip
        self.parent = parent
        self.depth = depth
        self.x = 0.0
        self.y = 0.0


def _rows(roots: Sequence[TraceNode], max_rows: int) -> tuple[list[_Row], int]:
    rows: list[_Row] = []
    hidden = 0

    def walk(node: TraceNode | tuple[int, str], parent: _Row | None) -> None:
        nonlocal hidden
        if len(rows) >= max_rows:
            hidden += 1 if isinstance(node, tuple) else _count(node)
            return
        if isinstance(node, tuple):
            layer = node[1][1:node[1].index("]")] if node[1].startswith("[") else "hw"
            rows.append(_Row(layer, f"… {node[0]} more {node[1].split('] ', 1)[-1]}",
                             "", parent, _depth(parent, layer)))
            return
        text = f"{node.name} {node.detail}".strip()
        tip = text + (f" -> {node.result}" if node.result else "") + (
            f" !! {node.error}" if node.error else "")
        row = _Row(node.layer, text, tip, parent, _depth(parent, node.layer))
        rows.append(row)
        for c in fold_runs(node.children):
            walk(c, row)

    for r in fold_runs(roots):
        walk(r, None)
    return rows, hidden


def _count(node: TraceNode) -> int:
    return 1 + sum(_count(c) for c in node.children)


def _depth(parent: _Row | None, layer: str) -> int:
    """How many of a node's ancestors share its lane (it is indented by that much)."""
    d = 0
    p = parent
    while p is not None and p.layer == layer:
        d += 1
        p = p.parent
    return min(d, 4)


def path_svg(roots: Sequence[TraceNode], *, title: str = "", ids: str = "path",
             max_rows: int = 36) -> Svg:
    """The call tree ``roots`` as swimlanes; at most ``max_rows`` boxes (a last line says
    how many more nodes there were)."""
    rows, hidden = _rows(roots, max_rows)
    lane_x = {}
    x = MARGIN
    for layer in LAYERS:
        lane_x[layer] = x
        x += LANE_W[layer]
    width = x + MARGIN
    height = (MARGIN * 2 + HEAD + len(rows) * (ROW_H + ROW_GAP) + (18 if hidden else 0)
              + (4 if rows else 24))
    svg = Svg(width, height, ids=ids, title=title or "call path",
              desc="a call tree, one lane per layer")
    top = MARGIN
    if title:
        svg.text(MARGIN, top + 13, fit(title, width - 2 * MARGIN, 13), cls="title")
    lanes_top = top + 22
    for layer in LAYERS:
        x = lane_x[layer]
        color = LAYER_COLORS[layer]
        svg.rect(x + 2, lanes_top, LANE_W[layer] - 4, height - lanes_top - MARGIN,
                 style=f"fill:{color};fill-opacity:0.05;stroke:{color};stroke-opacity:0.25",
                 rx=4)
        svg.text(x + 8, lanes_top + 14, f"[{layer}] {LANE_NAMES[layer]}", cls="b",
                 style=f"fill:{color}")
    if not rows:
        svg.text(MARGIN + 8, lanes_top + 36, "(nothing recorded)", cls="muted")
        return svg
    y = top + HEAD
    for row in rows:
        row.x = lane_x[LAYERS[row.lane]] + 6 + row.depth * INDENT
        row.y = y
        y += ROW_H + ROW_GAP
    def box_w(row: _Row) -> float:
        layer = LAYERS[row.lane]
        return lane_x[layer] + LANE_W[layer] - 6 - row.x

    for row in rows:
        p = row.parent
        if p is None:
            continue
        # An elbow from the caller's left edge down to the row, then across to the box
        # (its near side: an interrupt handler's calls go back up, to the left).
        sx = p.x + 6
        end = row.x - 1 if row.lane >= p.lane else row.x + box_w(row) + 1
        svg.path(f"M{sx:.1f},{p.y + ROW_H:.1f} V{row.y + ROW_H / 2:.1f} H{end:.1f}",
                 cls="edge", arrow=True)
    for row in rows:
        color = LAYER_COLORS.get(row.layer, LAYER_COLORS["hw"])
        w = box_w(row)
        folded = row.label.startswith("… ")
        style = (f"fill:#ffffff;stroke:{color};stroke-width:1.2"
                 + (";stroke-dasharray:4 3" if folded else ""))
        svg.rect(row.x, row.y, w, ROW_H, style=style, rx=3, tip=row.tip)
        svg.text(row.x + 6, row.y + 15, fit(row.label, w - 10, 10), cls="small",
                 style=f"font-size:10px;fill:{color}")
    if hidden:
        svg.text(MARGIN + 8, y + 10, f"… {hidden} more calls and events not drawn",
                 cls="small muted")
    return svg

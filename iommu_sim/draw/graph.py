"""The object and topology graph (``iommu-sim graph --format svg``) drawn with the layered
layout of :mod:`iommu_sim.draw.layout`: the kernel's view (IOMMUs, devices, groups,
domains, and with ``--entries`` the entries the hardware reads) and each iommufd's
objects, one band per cluster, a shape per kind as ``dot`` would draw them."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

from iommu_sim.draw.layout import LayoutEdge, LayoutNode, layered
from iommu_sim.draw.svg import Svg, esc, fit, num, text_width

if TYPE_CHECKING:
    from iommu_sim.graph import Graph, Node

__all__ = ["graph_svg"]

MARGIN = 14.0
LINE = 14.0

#: Fill and stroke per kind (hardware magenta, kernel objects amber, iommufd cyan).
_COLORS = {"iommu": ("#fbefff", "#a21caf"), "device": ("#fff8c5", "#9a6700"),
           "group": ("#fff8c5", "#9a6700"), "domain": ("#fff1e5", "#bc4c00"),
           "entry": ("#f5f0ff", "#8250df")}
_IOMMUFD = ("#e6f6fa", "#0e7490")
#: The kernel's columns: groups, then their devices and domains, then the units.
_COLUMN = {"device": 1, "domain": 1, "iommu": 2}
_WIDE = {"iommufd_viommu", "iommufd_device", "iommufd_vdevice", "iommufd_ioas"}


def _size(n: Node) -> tuple[float, float]:
    lines = n.label.split("\n")
    w = max(text_width(ln) for ln in lines) + 20 + (24 if n.kind in _WIDE else 0)
    h = LINE * len(lines) + 12 + (10 if n.kind == "iommufd_ioas" else 0)
    return max(w, 64.0), h


def graph_svg(g: Graph, *, ids: str = "graph", title: str = "") -> Svg:
    nodes = [LayoutNode(n.id, *_size(n), cluster=n.cluster, min_rank=_COLUMN.get(n.kind, 0))
             for n in g.nodes.values()]
    # iommufd's objects left of the kernel's: references point to the layer below.
    order = sorted(g.clusters, key=lambda c: c == "kernel")
    lay = layered(nodes, [LayoutEdge(e.src, e.dst) for e in g.edges], order,
                  stages=[[c for c in order if c != "kernel"], ["kernel"]])
    top = MARGIN + (22 if title else 0)
    svg = Svg(lay.width + 2 * MARGIN, lay.height + top + MARGIN, ids=ids,
              title=title or "iommu-sim object graph",
              desc=f"{len(g.nodes)} objects, {len(g.edges)} references")
    if title:
        svg.text(MARGIN, MARGIN + 12, title, cls="title")
    ox, oy = MARGIN, top
    for cl, (x, y, w, h) in lay.clusters.items():
        svg.rect(ox + x, oy + y, w, h, cls="panel", rx=6)
        svg.text(ox + x + 8, oy + y + 16, fit(g.clusters.get(cl, cl), w - 16), cls="title")
    routes = {(r.src, r.dst): r for r in lay.edges}
    labels: list[tuple[float, float, float, float]] = []
    seen: dict[tuple[str, str], int] = {}
    for e in g.edges:
        r = routes.get((e.src, e.dst))
        if r is None:
            continue
        k = seen[(e.src, e.dst)] = seen.get((e.src, e.dst), -1) + 1  # a parallel edge
        pts = [(ox + x, oy + y + 5 * k) for x, y in r.points]
        d = f"M{num(pts[0][0])},{num(pts[0][1])}"
        for (ax, ay), (bx, by) in pairwise(pts):
            dx = (bx - ax) / 2
            d += (f" C{num(ax + dx)},{num(ay)} {num(bx - dx)},{num(by)} "
                  f"{num(bx)},{num(by)}")
        tip = f"{g.nodes[e.src].label.splitlines()[0]} -> " \
              f"{g.nodes[e.dst].label.splitlines()[0]}" + (f": {e.label}" if e.label else "")
        with svg.group(tip=tip):
            svg.path(d, cls="edge-x" if r.between else "edge", arrow=True)
        if e.label:
            _edge_label(svg, e.label, pts, labels)
    for n in g.nodes.values():
        p = lay.nodes[n.id]
        _node(svg, n, ox + p.x, oy + p.y, p.width, p.height)
    return svg


def _node(svg: Svg, n: Node, x: float, y: float, w: float, h: float) -> None:
    fill, stroke = _COLORS.get(n.kind, _IOMMUFD)
    style = f"fill:{fill};stroke:{stroke};stroke-width:1.3"
    lines = n.label.split("\n")
    with svg.group(tip=f"{n.kind}: " + " / ".join(lines)):
        k = n.kind
        if k == "iommu":  # a 3-D box
            svg.rect(x + 4, y - 4, w, h, style=style)
            svg.rect(x, y, w, h, style=style)
        elif k == "group":  # a folder
            svg.add(f'<path d="M{num(x)},{num(y + 6)} h{num(w * 0.35)} l6,-6 '
                    f'h{num(w * 0.2)} v6 h{num(w * 0.45 - 6)} v{num(h - 6)} h{num(-w)} z" '
                    f'style="{esc(style)}"/>')
        elif k == "iommufd_ioas":  # a cylinder
            svg.add(f'<path d="M{num(x)},{num(y + 6)} a{num(w / 2)},6 0 0 1 {num(w)},0 '
                    f'v{num(h - 12)} a{num(w / 2)},6 0 0 1 {num(-w)},0 z" '
                    f'style="{esc(style)}"/>')
            svg.add(f'<path d="M{num(x)},{num(y + 6)} a{num(w / 2)},6 0 0 0 {num(w)},0" '
                    f'style="fill:none;stroke:{stroke}"/>')
        elif k == "iommufd_viommu":  # a hexagon
            svg.polygon([(x + 12, y), (x + w - 12, y), (x + w, y + h / 2),
                         (x + w - 12, y + h), (x + 12, y + h), (x, y + h / 2)], style=style)
        elif k in ("iommufd_device", "iommufd_vdevice"):  # a pill
            svg.rect(x, y, w, h, rx=h / 2, style=style)
        elif k in ("iommufd_fault", "iommufd_veventq"):  # a note
            svg.add(f'<path d="M{num(x)},{num(y)} h{num(w - 10)} l10,10 v{num(h - 10)} '
                    f'h{num(-w)} z" style="{esc(style)}"/>')
        else:
            svg.rect(x, y, w, h, rx=3 if k == "device" else 0, style=style)
            if k == "entry" and len(lines) > 1:
                svg.line(x, y + LINE + 5, x + w, y + LINE + 5, cls="",
                         style=f"stroke:{stroke}")
        ty = y + (h - LINE * len(lines)) / 2 + 11
        for i, ln in enumerate(lines):
            svg.text(x + w / 2, ty + i * LINE, ln, cls="b" if i == 0 else "small",
                     anchor="middle")


def _edge_label(svg: Svg, text: str, pts: list[tuple[float, float]],
                taken: list[tuple[float, float, float, float]]) -> None:
    """The label near the middle of the edge, where it overlaps no label drawn before
    (else left out: the edge's tooltip still names it)."""
    i = (len(pts) - 1) // 2
    (ax, ay), (bx, by) = pts[i], pts[i + 1]
    tw = text_width(text, 9) + 4
    for t in (0.5, 0.3, 0.7, 0.15, 0.85):
        mx, my = ax + (bx - ax) * t, ay + (by - ay) * t
        box = (mx - tw / 2, my - 8, tw, 11)
        if not any(box[0] < o[0] + o[2] and o[0] < box[0] + box[2] and box[1] < o[1] + o[3]
                   and o[1] < box[1] + box[3] for o in taken):
            taken.append(box)
            svg.rect(*box, cls="label-bg")
            svg.text(mx, my, text, cls="small muted", anchor="middle")
            return

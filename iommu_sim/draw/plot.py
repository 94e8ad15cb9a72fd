"""Line charts with logarithmic axes, and the system bench's figure drawn from its result
(``python -m iommu_sim.bench --svg FILE``): per-operation cost against the number of
mappings and against the gigabytes mapped, and the cost of a 4 KiB map+unmap against the
number of pages the IOMMU caches.

Deterministic like every picture: the same result draws the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from iommu_sim.draw.svg import Svg, num, stack, text_width

__all__ = ["bench_plot", "line_chart"]

#: Line colours, in series order (readable on white, distinct in grey too).
COLORS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ca8a04", "#0891b2")
W, H = 640.0, 260.0
LEFT, RIGHT, TOP, BOTTOM = 64.0, 130.0, 44.0, 42.0

Series = Sequence[tuple[float, float]]


def _ticks(lo: float, hi: float) -> list[float]:
    """Round values in [lo, hi] (both positive) for a log axis: powers of ten, with 2 and
    5 (or every digit) between when few of them fall inside."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for steps in ((1,), (1, 2, 5), tuple(range(1, 10))):
        out = [round(m * 10.0 ** e, 12) for e in range(a, b + 1) for m in steps]
        inside = [t for t in out if lo <= t <= hi]
        if len(inside) >= 3:
            return inside
    return inside or [float(f"{lo:.2g}")]


def _label(v: float) -> str:
    if v >= 1e6 and v == int(v):
        return f"{v / 1e6:g}M"
    if v >= 1e3 and v == int(v):
        return f"{v / 1e3:g}K" if v % 1000 == 0 else f"{v:g}"
    return f"{v:g}"


def line_chart(title: str, series: Mapping[str, Series], xlabel: str, ylabel: str, *,
               dashed: Mapping[str, Series] | None = None, note: str = "",
               ids: str = "chart", ymin: float | None = None) -> Svg:
    """``series`` (name -> [(x, y)], x and y positive) on log-log axes, one colour each
    with its name at the right; ``dashed`` series (same names, same colours) are drawn
    dashed (a reference such as a floor, which ``note`` names)."""
    dashed = dashed or {}
    pts = [p for s in (*series.values(), *dashed.values()) for p in s]
    svg = Svg(W, H, ids=ids, title=title)
    svg.text(LEFT, 18, title, cls="title")
    if note:
        svg.text(LEFT, 33, note, cls="small muted")
    if not pts:
        svg.text(LEFT, TOP + 20, "(nothing measured)", cls="muted")
        return svg
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts] + ([ymin] if ymin else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys) / 1.25, max(ys) * 1.25
    if x0 == x1:
        x0, x1 = x0 / 2, x1 * 2
    lx0, lx1, ly0, ly1 = (math.log10(v) for v in (x0, x1, y0, y1))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (math.log10(x) - lx0) / (lx1 - lx0) * pw

    def py(y: float) -> float:
        return TOP + ph - (math.log10(y) - ly0) / (ly1 - ly0) * ph

    svg.rect(LEFT, TOP, pw, ph, cls="panel")
    for t in _ticks(x0, x1):
        svg.line(px(t), TOP, px(t), TOP + ph, cls="", stroke="#d0d7de", stroke_width=0.5)
        svg.text(px(t), TOP + ph + 13, _label(t), cls="small muted", anchor="middle")
    for t in _ticks(y0, y1):
        svg.line(LEFT, py(t), LEFT + pw, py(t), cls="", stroke="#d0d7de", stroke_width=0.5)
        svg.text(LEFT - 5, py(t) + 3, _label(t), cls="small muted", anchor="end")
    svg.text(LEFT + pw / 2, H - 8, xlabel, cls="small", anchor="middle")
    svg.text(14, TOP + ph / 2 + text_width(ylabel, 9) / 2, ylabel, cls="small", rotate=True)
    label_ys: list[float] = []
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for style, data in (("", s), ("4 3", dashed.get(name, ()))):
            if not data:
                continue
            d = " ".join(f"{'M' if j == 0 else 'L'}{num(px(x))},{num(py(y))}"
                         for j, (x, y) in enumerate(sorted(data)))
            svg.path(d, cls="", fill="none", stroke=color, stroke_width=1.8,
                     stroke_dasharray=style or None)
            tip = f"{name} (dashed)" if style else name  # the reference's points too
            for x, y in data:
                svg.add(f'<circle cx="{num(px(x))}" cy="{num(py(y))}" r="2.5" '
                        f'fill="{color}"><title>{tip}: {y:.3g} at {_label(x)}</title></circle>')
        if s:
            x, y = max(s)
            ly = py(y) + 3
            while any(abs(ly - o) < 11 for o in label_ys):
                ly += 11
            label_ys.append(ly)
            svg.text(LEFT + pw + 6, ly, name, cls="small", fill=color)
    return svg


def bench_plot(result: Mapping[str, Any], ids: str = "bench") -> Svg:
    """The bench's figure: three charts, one under the other."""
    drivers: Mapping[str, Mapping[str, Any]] = result.get("drivers", {})
    charts = []
    pg = result.get("pgtable")
    if pg:
        ours = [(float(n), us) for n, us in pg["us_per_op"].items()]
        floor = [(float(n), pg["us_per_op"][n] / r)
                 for n, r in pg["vs_sorteddict_floor"].items()]
        charts.append(line_chart(
            "Page-table core: us per map, lookup or unmap",
            {"interval map": ours}, "N mappings (4 KiB each, random order)", "us per op",
            dashed={"interval map": floor}, note="dashed: a bare SortedDict (the floor)",
            ids=f"{ids}-n"))
    per_gib = {d: [(float(g), ms) for g, ms in r["map_ms_per_gib"].items()]
               for d, r in drivers.items() if "map_ms_per_gib" in r}
    charts.append(line_chart("IOAS_MAP with a domain attached: ms per GiB", per_gib,
                             "GiB mapped in one IOAS_MAP (THP-backed, pinned)", "ms per GiB",
                             note="flat: the cost is per mapping, not per page",
                             ids=f"{ids}-gib"))
    occ = {d: [(float(p), c) for p, c, _e in r["occupancy_us"]]
           for d, r in drivers.items() if r.get("occupancy_us")}
    empty = {d: [(float(p), e) for p, _c, e in r["occupancy_us"]]
             for d, r in drivers.items() if r.get("occupancy_us")}
    charts.append(line_chart("4 KiB IOAS_MAP+UNMAP against the IOMMU's cache occupancy",
                             occ, "4 KiB pages cached (one TLB entry each)",
                             "us per map+unmap", dashed=empty,
                             note="dashed: the same Machine with nothing cached",
                             ids=f"{ids}-occ"))
    out = stack(charts)
    out.title = "iommu-sim system bench"
    out.desc = ("Solid: measured; dashed: the reference (the bare SortedDict floor; the "
                "same Machine with nothing cached).")
    return out

"""A page-walk picture: the walk the hardware did for one address, stage by stage.

Drawn from :class:`~iommu_core.describe.WalkStage` values (and, optionally, the
:class:`~iommu_core.describe.ConfigEntry` chain that led to the first table) as a driver
describes them:

* the input address cut into the bits that index each level, one coloured chip above
  the level they choose;
* each level a table box: the table as the walk addressed it, the slot read (index and
  descriptor), the descriptor decoded, and where it was read when that differs (under
  nesting: the host-physical address);
* the leaf: the output page, its size and permissions, or the fault;
* nesting: under every stage-1 level, the stage-2 walk that translated its descriptor's
  address; then the stage-2 walk of the output as a stage of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from iommu_core.describe import ConfigEntry, WalkLevel, WalkStage
from iommu_sim.draw.svg import LEVEL_COLORS, Svg, fit

__all__ = ["walk_svg"]

MARGIN = 12.0
COL_W = 206.0
GAP = 30.0
BOX_H = 78.0
CHIP_H = 30.0
LINE = 13.0
S2_LINE = 12.0


def _s2_height(st: WalkStage | None) -> float:
    return 0.0 if st is None else (len(st.levels) + 2) * S2_LINE + 12


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and not n & ((1 << shift) - 1):
            return f"{n >> shift}{unit}"
    return hex(n)


def _stage_height(st: WalkStage) -> float:
    s2 = max((_s2_height(lv.stage2) for lv in st.levels), default=0.0)
    return 20 + CHIP_H + 12 + BOX_H + (s2 + 16 if s2 else 0) + 18


def walk_svg(stages: Sequence[WalkStage], entries: Sequence[ConfigEntry] = (), *,
             tlb_hit: bool = False, title: str = "", ids: str = "walk") -> Svg:
    """The picture of a walk (``stages`` in the order the hardware did them)."""
    ncols = max((len(st.levels) + 1 for st in stages), default=1)
    ncols = max(ncols, len(entries))
    width = MARGIN * 2 + ncols * COL_W + (ncols - 1) * GAP
    head = title or (f"walk of {stages[0].input:#x}" if stages else "walk")
    svg = Svg(width, 0, ids=ids, title=head, desc="; ".join(
        f"{st.label}: {st.input:#x} -> {st.result}" for st in stages))
    y = MARGIN + 14
    svg.text(MARGIN, y, fit(head, width - 2 * MARGIN, 13), cls="title")
    y += 10
    if entries:
        y = _entries(svg, entries, y + 8)
    if tlb_hit:
        y += 16
        svg.text(MARGIN, y, fit("no walk: the IOMMU answered from its TLB. The tables now "
                                "say:", width - 2 * MARGIN), cls="bad")
    if not stages:
        y += 18
        svg.text(MARGIN, y, "no table walk (the device is not translated here)",
                 cls="muted")
    for n, st in enumerate(stages):
        y = _stage(svg, st, y + 14, n)
    svg.height = y + MARGIN
    return svg


def _entries(svg: Svg, entries: Sequence[ConfigEntry], y: float) -> float:
    """The configuration chain: each entry the hardware read before the first table."""
    h = 4 * LINE + 10
    for i, e in enumerate(entries):
        x = MARGIN + i * (COL_W + GAP)
        d = e.decoded
        tip = f"{e.label} @ {e.addr:#x}: {d.kind}: {d.summary}"
        with svg.group(tip=tip):
            svg.rect(x, y, COL_W, h, cls="panel", rx=4)
            svg.text(x + 6, y + LINE, fit(e.label, COL_W - 12), cls="title")
            where = f"@ {e.addr:#x}"
            if e.guest_addr is not None:
                where = f"IPA/GPA {e.guest_addr:#x} -> {e.addr:#x}"
            svg.text(x + 6, y + 2 * LINE + 2, fit(where, COL_W - 12, 9), cls="small muted")
            svg.text(x + 6, y + 3 * LINE + 2, fit(d.summary, COL_W - 12, 9), cls="small")
            if d.problems:
                svg.text(x + 6, y + 4 * LINE + 2, fit(f"✖ {d.problems[0]}", COL_W - 12, 9),
                         cls="small bad")
        if i:
            svg.line(x - GAP + 2, y + h / 2, x - 2, y + h / 2, arrow=True)
    return y + h + 6


def _chip(svg: Svg, x: float, y: float, text: str, sub: str, color: str, tip: str) -> None:
    with svg.group(tip=tip):
        svg.rect(x, y, COL_W, CHIP_H, rx=3, style=f"fill:{color};fill-opacity:0.14;"
                 f"stroke:{color}")
        svg.text(x + COL_W / 2, y + 12, fit(text, COL_W - 8), anchor="middle")
        svg.text(x + COL_W / 2, y + 25, fit(sub, COL_W - 8, 9), cls="small muted",
                 anchor="middle")


def _stage(svg: Svg, st: WalkStage, y: float, n: int) -> float:
    head = f"{st.label}: input {st.input:#x}, root {st.root:#x} ({st.fmt})"
    svg.text(MARGIN, y, fit(head, svg.width - 2 * MARGIN), cls="title")
    y += 8
    chip_y = y
    box_y = chip_y + CHIP_H + 12
    levels = st.levels
    for i, lv in enumerate(levels):
        x = MARGIN + i * (COL_W + GAP)
        color = LEVEL_COLORS[i % len(LEVEL_COLORS)]
        bits = f"{lv.input_hi}:{lv.input_lo}" if lv.input_hi >= lv.input_lo else ""
        _chip(svg, x, chip_y, f"bits {bits}" if bits else lv.level,
              f"index {lv.index:#x}" if bits else "", color,
              f"input bits {bits} of {st.input:#x} choose entry {lv.index} of the "
              f"{lv.level} table")
        svg.line(x + COL_W / 2, chip_y + CHIP_H, x + COL_W / 2, box_y, cls="edge",
                 style=f"stroke:{color}")
        _level(svg, lv, x, box_y, color)
        if i:
            svg.line(x - GAP + 1, box_y + BOX_H / 2, x - 1, box_y + BOX_H / 2, arrow=True)
        if lv.stage2 is not None:
            _stage2(svg, lv, x, box_y + BOX_H + 16)
    # The leaf (or the fault) after the last level.
    x = MARGIN + len(levels) * (COL_W + GAP)
    last = levels[-1] if levels else None
    if st.output is not None and last is not None:
        off_hi = last.input_lo - 1
        _chip(svg, x, chip_y, f"bits {off_hi}:0" if off_hi >= 0 else "offset",
              f"offset {st.input & ((1 << (off_hi + 1)) - 1):#x}" if off_hi >= 0 else "",
              "#6a737d", "the page offset: carried to the output unchanged")
    cls = "leaf" if st.output is not None else "fault"
    with svg.group(tip=f"{st.label}: {st.result}"):
        svg.rect(x, box_y, COL_W, BOX_H, cls=cls, rx=4)
        if st.output is not None:
            perm = ("r" if st.readable else "-") + ("w" if st.writable else "-")
            svg.text(x + 8, box_y + LINE + 2, "output", cls="title")
            svg.text(x + 8, box_y + 2 * LINE + 6, fit(f"{st.output:#x}", COL_W - 16))
            page = f"{_size(st.page_size)} page, {perm}" if st.page_size else perm
            svg.text(x + 8, box_y + 3 * LINE + 8, fit(page, COL_W - 16, 9), cls="small muted")
        else:
            svg.text(x + 8, box_y + LINE + 2, "fault", cls="title bad")
            words = (st.fault or st.result).split()
            line, ly = "", box_y + 2 * LINE + 6
            for w in words:  # the reason, wrapped over the box
                if len(line) + len(w) + 1 > int((COL_W - 16) / (0.61 * 9)) and line:
                    svg.text(x + 8, ly, line, cls="small bad")
                    ly += S2_LINE
                    line = w
                    if ly > box_y + BOX_H - 4:
                        break
                else:
                    line = f"{line} {w}".strip()
            if line and ly <= box_y + BOX_H - 4:
                svg.text(x + 8, ly, line, cls="small bad")
    if levels:
        svg.line(x - GAP + 1, box_y + BOX_H / 2, x - 1, box_y + BOX_H / 2, arrow=True,
                 cls="edge" if st.output is not None else "edge-bad")
    if st.stage2_fault is not None:
        _stage2_walk(svg, st.stage2_fault, x, box_y + BOX_H + 16,
                     "stage 2 of a table address")
    s2 = max([_s2_height(lv.stage2) for lv in levels]
             + [_s2_height(st.stage2_fault)], default=0.0)
    return box_y + BOX_H + (s2 + 16 if s2 else 0) + 4


def _level(svg: Svg, lv: WalkLevel, x: float, y: float, color: str) -> None:
    tip = f"{lv.level}: table {lv.table:#x}, entry {lv.index} read at {lv.addr:#x} = " \
          f"{lv.desc:#018x}: {lv.text}"
    with svg.group(tip=tip):
        svg.rect(x, y, COL_W, BOX_H, cls="frame", rx=4)
        svg.rect(x, y, 5, BOX_H, style=f"fill:{color};stroke:none")
        svg.text(x + 11, y + LINE + 1, fit(f"{lv.level} table @ {lv.table:#x}", COL_W - 16))
        svg.rect(x + 9, y + LINE + 6, COL_W - 15, LINE + 4, cls="slot")
        svg.text(x + 13, y + 2 * LINE + 5, fit(f"[{lv.index:#x}] {lv.desc:#018x}", COL_W - 24))
        svg.text(x + 11, y + 3 * LINE + 10, fit(lv.text, COL_W - 16, 9), cls="small")
        entry = lv.table + lv.index * 8
        if lv.addr != entry:
            svg.text(x + 11, y + 4 * LINE + 10, fit(f"read at {lv.addr:#x}", COL_W - 16, 9),
                     cls="small muted")


def _stage2(svg: Svg, lv: WalkLevel, x: float, y: float) -> None:
    assert lv.stage2 is not None
    entry = lv.table + lv.index * 8
    _stage2_walk(svg, lv.stage2, x, y, f"stage 2 of {entry:#x}")
    svg.line(x + COL_W / 2, y, x + COL_W / 2, y - 16 + 1, cls="edge-s2", arrow=True)


def _stage2_walk(svg: Svg, st: WalkStage, x: float, y: float, head: str) -> None:
    h = _s2_height(st)
    cls = "s2box" if st.output is not None else "fault"
    with svg.group(tip=f"{st.label}: {st.input:#x} -> {st.result}"):
        svg.rect(x, y, COL_W, h - 4, cls=cls, rx=4)
        ly = y + S2_LINE
        svg.text(x + 6, ly, fit(head, COL_W - 12, 9), cls="small muted")
        for lv in st.levels:
            ly += S2_LINE
            svg.text(x + 6, ly, fit(f"{lv.level}[{lv.index:#x}] {lv.kind}", COL_W - 12, 9),
                     cls="small")
        ly += S2_LINE
        res = f"-> {st.output:#x}" if st.output is not None else f"fault: {st.fault}"
        svg.text(x + 6, ly, fit(res, COL_W - 12, 9),
                 cls="small" if st.output is not None else "small bad")

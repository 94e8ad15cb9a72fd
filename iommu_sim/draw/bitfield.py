"""A bit-field diagram of a decoded structure: one row per word, each field a box over its
bits with its name and value, as the architecture specifications draw them.

Drawn from a :class:`~iommu_core.describe.Decoded` alone (whatever driver decoded it):

* fields the hardware reads in this configuration are outlined, the others dashed and
  grey ("not used here"); fields that are not zero are tinted;
* against a previous value of the structure, the fields that changed are highlighted;
* a field a problem names (``EATS=S1CHK needs nesting`` names ``EATS``) is marked red with
  the problem's number, and the problems are listed under the diagram;
* set bits outside every field (reserved bits) are red cells;
* values a driver assembles from several fields (no bit range) are listed under it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import suppress

import attrs

from iommu_core.describe import Decoded, DecodedField, fmt_value, join_words
from iommu_sim.draw.svg import Svg, fit, text_width

__all__ = ["bitfield_svg", "problem_fields"]

MARGIN = 12.0
LABEL_W = 58.0  # the "word N" column
ROW_W = 896.0  # the bits of one word
BITNUM_H = 22.0  # rotated bit numbers above a row
SMALL_W = 0.61 * 9  # advance of the small font
LANE_MIN_H = 34.0


def problem_fields(d: Decoded) -> dict[str, list[int]]:
    """Field name -> numbers (1-based) of the problems that name it: a problem's text names
    a field when the name appears in it as a word (``EATS=S1CHK``, ``PGTT 5``)."""
    names = sorted({f.name for f in d.fields}, key=len, reverse=True)
    out: dict[str, list[int]] = {}
    for i, text in enumerate(d.problems, 1):
        for name in names:
            if re.search(rf"(?<![A-Za-z0-9_.]){re.escape(name)}(?![A-Za-z0-9_])", text):
                out.setdefault(name, []).append(i)
    return out


@attrs.frozen
class _Seg:
    """The part of a field that lies in one word."""

    field: DecodedField
    hi: int  # absolute bit numbers
    lo: int


def _segments(fields: Sequence[DecodedField], word: int, bits: int) -> list[_Seg]:
    base, top = word * bits, word * bits + bits - 1
    out = []
    for f in fields:
        if f.hi is None or f.lo is None or f.hi < base or f.lo > top:
            continue
        out.append(_Seg(f, min(f.hi, top), max(f.lo, base)))
    return sorted(out, key=lambda s: -s.hi)


def _lanes(segs: list[_Seg]) -> list[list[_Seg]]:
    """Overlapping fields (an alias over a wider field) go to further lanes."""
    lanes: list[list[_Seg]] = []
    for s in segs:
        for lane in lanes:
            if all(s.hi < o.lo or s.lo > o.hi for o in lane):
                lane.append(s)
                break
        else:
            lanes.append([s])
    return lanes


def _value_text(f: DecodedField) -> str:
    return fmt_value(f.value) + (f" {f.text}" if f.text else "")


def _label_fits(s: _Seg, cell: float) -> bool:
    w = (s.hi - s.lo + 1) * cell
    return text_width(s.field.name) + 6 <= w


def _lane_height(lane: list[_Seg], cell: float) -> float:
    h = LANE_MIN_H
    for s in lane:
        if not _label_fits(s, cell):
            h = max(h, len(f"{s.field.name}={fmt_value(s.field.value)}") * SMALL_W + 10)
    return h


def bitfield_svg(d: Decoded, previous: Decoded | None = None, *, ids: str = "bf",
                 title: str = "") -> Svg:
    """The diagram of ``d``; ``previous``: highlight the fields that differ from it."""
    bits = d.word_bits
    cell = ROW_W / bits
    value = join_words(d.words, bits)
    changed = d.changed(previous)
    named = problem_fields(d)
    known = 0
    for f in d.fields:
        if f.hi is not None and f.lo is not None:
            known |= ((1 << (f.hi - f.lo + 1)) - 1) << f.lo
    reserved_set = value & ~known & ((1 << (bits * len(d.words))) - 1)

    # Rows: every word with a field or a set bit; runs of empty words become one line.
    rows: list[tuple[int, list[list[_Seg]]]] = []
    empty: list[int] = []
    for w in range(len(d.words)):
        segs = _segments(d.fields, w, bits)
        if segs or d.words[w]:
            rows.append((w, _lanes(segs)))
        else:
            empty.append(w)
    loose = [f for f in d.fields if f.hi is None or f.lo is None]

    head = title or f"{d.kind}: {d.summary}"
    digits = bits // 4
    raw = " ".join(f"{x:0{digits}x}" for x in d.words)
    y = MARGIN + 14
    width = MARGIN * 2 + LABEL_W + ROW_W
    svg = Svg(width, 0, ids=ids, title=head,
              desc=f"bit-field diagram of {d.kind}, words {raw}")
    svg.text(MARGIN, y, fit(head, width - 2 * MARGIN, 13), cls="title")
    y += 16
    svg.text(MARGIN, y, fit(f"raw {raw}", width - 2 * MARGIN), cls="muted")
    y += 8
    x0 = MARGIN + LABEL_W

    for w, lanes in rows:
        base = w * bits
        # Bit numbers: each segment's high and low bit, rotated above its cells.
        marks = {base + bits - 1, base}
        for lane in lanes:
            for s in lane:
                marks.update((s.hi, s.lo))
        for b in sorted(marks):
            cx = x0 + (base + bits - 1 - b) * cell + cell / 2 + 3
            svg.text(cx, y + BITNUM_H - 3, str(b), cls="small muted", rotate=True)
        y += BITNUM_H
        row_h = sum(_lane_height(ln, cell) for ln in lanes) if lanes else LANE_MIN_H
        svg.text(MARGIN, y + row_h / 2 + 4, f"word {w}", cls="muted")
        # Reserved bits (no field): grey cells; set ones red.
        for b in range(bits):
            ab = base + b
            if not known >> ab & 1:
                bx = x0 + (bits - 1 - b) * cell
                set_ = reserved_set >> ab & 1
                svg.rect(bx, y, cell, row_h, cls="rsv-set" if set_ else "rsv",
                         tip=f"bit {ab}: reserved" + (", set" if set_ else ""))
        ly = y
        for lane in lanes:
            lh = _lane_height(lane, cell)
            for s in lane:
                _draw_field(svg, s, x0 + (base + bits - 1 - s.hi) * cell, ly,
                            (s.hi - s.lo + 1) * cell, lh, changed, named, previous)
            ly += lh
        y += row_h + 8

    y += 6
    for i, text in enumerate(d.problems, 1):
        y += 16
        svg.text(MARGIN, y, fit(f"✖ {i}  {text}", width - 2 * MARGIN), cls="bad", tip=text)
    for f in loose:
        y += 16
        line = f"{f.name} = {_value_text(f)}  {f.meaning}".rstrip()
        svg.text(MARGIN, y, fit(line, width - 2 * MARGIN), cls="muted")
    if empty:
        y += 16
        svg.text(MARGIN, y, fit(f"words {_ranges(empty)}: no fields, all zero",
                                width - 2 * MARGIN), cls="muted")
    for note in d.notes:
        y += 16
        svg.text(MARGIN, y, fit(f"note: {note}", width - 2 * MARGIN), cls="muted")
    y += 18
    _legend(svg, MARGIN, y)
    svg.height = y + MARGIN
    return svg


def _ranges(ws: list[int]) -> str:
    parts: list[str] = []
    start = prev = ws[0]
    for w in [*ws[1:], None]:
        if w is not None and w == prev + 1:
            prev = w
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if w is not None:
            start = prev = w
    return ", ".join(parts)


def _draw_field(svg: Svg, s: _Seg, x: float, y: float, w: float, h: float,
                changed: set[str], named: dict[str, list[int]],
                previous: Decoded | None) -> None:
    f = s.field
    cls = "f"
    if not f.used:
        cls += " f-unused"
    elif f.value:
        cls += " f-set"
    if f.name in changed:
        cls += " f-ch"
    if f.name in named:
        cls += " f-bad"
    tip = f"{f.name} [{f.bits}] = {_value_text(f)}"
    if f.meaning:
        tip += f": {f.meaning}"
    if f.name in changed and previous is not None:
        with suppress(KeyError):
            tip += f" (was {fmt_value(previous.value(f.name))})"
    if not f.used:
        tip += " (not used here)"
    if f.kernel:
        tip += f" [{f.kernel}]"
    with svg.group(tip=tip):
        svg.rect(x, y, w, h, cls=cls)
        text_cls = "muted" if not f.used else ""
        if _label_fits(s, w / (s.hi - s.lo + 1)):
            svg.text(x + w / 2, y + 14, f.name, cls=text_cls, anchor="middle")
            svg.text(x + w / 2, y + 27, fit(_value_text(f), w - 4, 9), cls="small " + text_cls,
                     anchor="middle")
        else:
            svg.text(x + w / 2 + 3, y + h - 5, f"{f.name}={fmt_value(f.value)}",
                     cls="small " + text_cls, rotate=True)
        for k, n in enumerate(named.get(f.name, ())):
            cx = x + w - 6 - 12 * k
            svg.add(f'<circle cx="{cx:.1f}" cy="{y + 6:.1f}" r="5.5" fill="#cf222e"/>')
            svg.text(cx, y + 9, str(n), cls="small", anchor="middle",
                     style="fill:#ffffff")


def _legend(svg: Svg, x: float, y: float) -> None:
    items = (("f f-set", "set"), ("f", "zero"), ("f f-ch", "changed"),
             ("f f-unused", "not used here"), ("f f-bad", "named by a problem"),
             ("rsv", "reserved"), ("rsv-set", "reserved, set"))
    for cls, label in items:
        svg.rect(x, y - 9, 14, 11, cls=cls)
        svg.text(x + 18, y, label, cls="small muted")
        x += 18 + len(label) * SMALL_W + 16

"""Hardware structures decoded field by field, with their invalid combinations flagged.

``decode(kind, words)`` finds the structure named ``kind`` among the ones the drivers
describe (:meth:`iommu_core.describe.DescribeOps.structures`: an SMMUv3 STE, a VT-d
PASID entry, an AMD-Vi DTE, a command of any vendor, a third-party driver's entry...) and
lets the driver decode it; ``describe_pte`` reads a page-table entry of any
:mod:`iommu_core.pgtable` format. Field positions, the used-field rules and the validity
checks are the drivers' (see each driver's ``describe`` package); this module only
chooses the structure and renders the result.

A :class:`~iommu_core.describe.Decoded` renders as text (:func:`render`: changed fields
against a previous entry highlighted, which the tour uses) or as a dict for JSON
(:func:`to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from iommu_core.describe import Decoded, DecodedField, DescribeOps, Structure, fmt_value
from iommu_sim.catalogue import UnknownVendor, catalogue

__all__ = ["DecodeError", "decode", "describe_pte", "from_dict", "kinds", "render", "to_dict"]


class DecodeError(ValueError):
    """Bad input: an unknown kind, vendor or format, or too many words."""


def kinds() -> dict[str, list[tuple[DescribeOps, Structure]]]:
    """kind -> the (driver, structure) pairs that have it, in catalogue order."""
    out: dict[str, list[tuple[DescribeOps, Structure]]] = {}
    for d in catalogue():
        for s in d.structures():
            out.setdefault(s.layout.name, []).append((d, s))
    return out


def decode(kind: str, words: Sequence[int], vendor: str | None = None,
           unit: Any = None) -> Decoded:
    """Decode ``words`` (low word first) as ``kind``; ``vendor`` picks among the drivers
    that have the kind (``cmd``); ``unit`` is a hardware unit whose configuration the
    checks use (default: the driver's default configuration)."""
    table = kinds()
    found = table.get(kind)
    if found is None:
        raise DecodeError(f"unknown kind {kind!r} (one of {', '.join([*table, 'pte'])})")
    names = [d.vendor().name for d, _ in found]
    if vendor is not None:
        try:
            want = catalogue().find(vendor)
        except UnknownVendor:
            raise DecodeError(f"unknown vendor {vendor!r}") from None
        pick = [(d, s) for d, s in found if d.driver == want.driver]
        if not pick:
            raise DecodeError(f"{kind} is not a {want.vendor().name} structure (vendors: "
                              f"{', '.join(names)})")
        drv, struct = pick[0]
    elif len(found) == 1:
        drv, struct = found[0]
    else:
        raise DecodeError(f"{kind} is ambiguous: give --vendor {'|'.join(names)}")
    n, bits = struct.layout.words, struct.layout.word_bits
    if len(words) > n:
        raise DecodeError(f"{kind} has at most {n} words, got {len(words)}")
    for i, w in enumerate(words):
        if not 0 <= w < 1 << bits:
            raise DecodeError(f"word {i} ({w:#x}) is not a {bits}-bit word")
    return struct.decode(words, unit, drv.vendor().name)


def describe_pte(value: int, fmt_name: str, level: int = 0, **params: int) -> Decoded:
    """A page-table descriptor through :func:`iommu_core.pgtable.describe`."""
    from iommu_core.errors import IommuError
    from iommu_core.pgtable import describe, formats

    try:
        fmt = formats.get(fmt_name, **params)
    except IommuError as e:
        raise DecodeError(str(e)) from None
    if not 0 <= level < fmt.levels:
        raise DecodeError(f"{fmt_name} has levels 0..{fmt.levels - 1}")
    if not 0 <= value < 1 << 64:
        raise DecodeError(f"{value:#x} is not a 64-bit descriptor")
    desc = describe(value, fmt, level)
    where = _pte_bits(fmt, value, level)
    fields = []
    for f in desc.fields:
        bits = where.get(f.name, [])
        runs = _runs(bits)
        text = ",".join(f"{hi}" if hi == lo else f"{hi}:{lo}" for hi, lo in runs)
        hi, lo = runs[0] if len(runs) == 1 else (None, None)
        fields.append(DecodedField(f.name, text, f.value, f.meaning, hi=hi, lo=lo))
    problems = (f"{desc.kind} descriptor",) if desc.kind == "invalid" else ()
    return Decoded(f"{fmt.name} PTE", f"{desc.level} {desc.kind}", (value,), 64,
                   tuple(fields), problems, structure="pte")


def _pte_bits(fmt: Any, value: int, level: int) -> dict[str, list[int]]:
    """Which bits each field of the descriptor is read from, found by flipping each bit
    and seeing which field's value changes (the format codecs know no bit positions). A
    bit that changes the kind of descriptor belongs to the field that changed in both
    readings, else to the first field (the valid or type bits)."""
    from iommu_core.pgtable import describe

    base = describe(value, fmt, level)
    now = {f.name: f.value for f in base.fields}
    out: dict[str, list[int]] = {}
    for b in range(64):
        other = describe(value ^ (1 << b), fmt, level)
        then = {f.name: f.value for f in other.fields}
        hit = [n for n in now if n in then and then[n] != now[n]]
        if not hit and other.kind != base.kind and base.fields:
            hit = [base.fields[0].name]
        for n in hit:
            out.setdefault(n, []).append(b)
    return out


def _runs(bits: list[int]) -> list[tuple[int, int]]:
    """Sorted bit numbers as (hi, lo) runs, highest first."""
    runs: list[tuple[int, int]] = []
    for b in sorted(bits):
        if runs and runs[-1][0] == b - 1:
            runs[-1] = (b, runs[-1][1])
        else:
            runs.append((b, b))
    return runs[::-1]


# -- renderers -------------------------------------------------------------------------------
def _field_dict(f: DecodedField) -> dict[str, Any]:
    d: dict[str, Any] = {"name": f.name, "bits": f.bits, "value": f.value,
                         "meaning": f.meaning, "used": f.used}
    if f.text:
        d["text"] = f.text
    if f.kernel:
        d["kernel"] = f.kernel
    if f.hi is not None and f.lo is not None:
        d["hi"], d["lo"] = f.hi, f.lo
    return d


def to_dict(d: Decoded, previous: Decoded | None = None) -> dict[str, Any]:
    """``d`` for JSON (:func:`from_dict` reads it back); ``changed`` marks the fields that
    differ from ``previous``."""
    ch = d.changed(previous)
    out = {"kind": d.kind, "summary": d.summary,
           "words": [f"{w:#0{d.word_bits // 4 + 2}x}" for w in d.words],
           "word_bits": d.word_bits,
           "fields": [dict(_field_dict(f), changed=f.name in ch) for f in d.fields],
           "problems": list(d.problems), "notes": list(d.notes), "refused": d.refused}
    for key in ("structure", "vendor", "variant"):
        if getattr(d, key):
            out[key] = getattr(d, key)
    return out


def from_dict(doc: Mapping[str, Any]) -> Decoded:
    """The :class:`~iommu_core.describe.Decoded` :func:`to_dict` wrote (a recorded trace's
    entries, drawn again without the driver that decoded them)."""
    fields = tuple(DecodedField(f["name"], f.get("bits", ""), int(f["value"]),
                                f.get("meaning", ""), f.get("text", ""),
                                bool(f.get("used", True)), f.get("kernel", ""),
                                f.get("hi"), f.get("lo")) for f in doc.get("fields", ()))
    words = tuple(int(w, 16) if isinstance(w, str) else int(w) for w in doc["words"])
    return Decoded(kind=doc["kind"], summary=doc.get("summary", ""), words=words,
                   word_bits=int(doc.get("word_bits", 64)), fields=fields,
                   problems=tuple(doc.get("problems", ())), notes=tuple(doc.get("notes", ())),
                   structure=doc.get("structure", ""), vendor=doc.get("vendor", ""),
                   variant=doc.get("variant", ""), refused=bool(doc.get("refused", False)))


def render(d: Decoded, previous: Decoded | None = None, color: bool = False,
           compact: bool = False, indent: str = "") -> str:
    """One field per line; ``previous``: mark the fields that changed (``*`` and bold
    yellow); unused fields are dimmed; problems in red. ``compact``: leave out the
    fields that are zero, unchanged and not used by this configuration."""
    ch = d.changed(previous)
    digits = d.word_bits // 4
    n = len(d.words)
    while n > min(4, len(d.words)) and not d.words[n - 1]:
        n -= 1  # the all-zero tail of a 512-bit entry says nothing
    words = " ".join(f"{w:0{digits}x}" for w in d.words[:n])
    if n < len(d.words):
        words += f" (+{len(d.words) - n} zero)"
    lines = [f"{indent}{d.kind}: {d.summary}", f"{indent}  raw {words}"]
    shown = [f for f in d.fields
             if not compact or f.value or f.name in ch or (f.used and f.bits)]
    wname = max((len(f.name) for f in shown), default=0)
    wbits = max((len(f.bits) for f in shown), default=0)
    for f in shown:
        old = ""
        if f.name in ch and previous is not None:
            try:
                old = f" (was {fmt_value(previous.value(f.name))})"
            except KeyError:
                old = ""
        val = fmt_value(f.value) + (f" {f.text}" if f.text else "")
        mark = "*" if f.name in ch else " "
        bits = f" [{f.bits:>{wbits}}]" if wbits else ""
        line = f"{indent} {mark}{f.name:<{wname}}{bits} = {val}{old}  {f.meaning}".rstrip()
        if not f.used:
            line += "  (not used here)"
        if color:
            if f.name in ch:
                line = f"\x1b[1;33m{line}\x1b[0m"
            elif not f.used:
                line = f"\x1b[2m{line}\x1b[0m"
        lines.append(line)
    for p in d.problems:
        bad = f"{indent}  !! {p}"
        lines.append(f"\x1b[31m{bad}\x1b[0m" if color else bad)
    for note in d.notes:
        lines.append(f"{indent}  note: {note}")
    return "\n".join(lines)


def listing() -> list[tuple[str, str, str, str, str]]:
    """(kind, vendor, category, size, description) of every structure, for --list."""
    rows = []
    for d in catalogue():
        for s in d.structures():
            lay = s.layout
            rows.append((lay.name, d.vendor().name, lay.category,
                         f"{lay.words}x{lay.word_bits}", lay.doc or lay.title))
    return rows

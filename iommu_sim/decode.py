"""Hardware structures decoded field by field, with their invalid combinations flagged.

``decode(kind, words)`` reads an SMMUv3 STE or CD, a VT-d PASID or context entry or
invalidation descriptor, an AMD-Vi DTE, GCR3 entry or command, or a page-table entry of
any :mod:`iommu_core.pgtable` format. Field positions come from the drivers' own
definitions (``drivers/arm_smmu_v3/regs.py`` masks, the VT-d and AMD specification bit
numbers the drivers' setters use); the validity rules are the hardware models' (the SMMU's
``decode_ste``/``decode_cd`` run as is; the VT-d and AMD reserved-bit and capability rules
mirror their models) and the SMMU's used-bit rule (``arm_smmu_get_ste_used``) marks which
fields the current Config reads at all.

A :class:`Decoded` renders as text (changed fields against a previous entry highlighted,
which the tour uses) or as a dict for JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["KINDS", "DecodeError", "Decoded", "decode", "describe_pte"]


class DecodeError(ValueError):
    """Bad input: an unknown kind, vendor or format, or too many words."""


@attrs.frozen
class FieldDef:
    name: str
    hi: int  # absolute bit numbers over the little-endian entry
    lo: int
    meaning: str = ""
    values: Mapping[int, str] = attrs.field(factory=dict)
    #: An address field: show the bits in place (value << lo % 64), not shifted down.
    addr: bool = False
    #: The kernel name a reader greps for (macro or setter).
    kernel: str = ""

    def get(self, v: int) -> int:
        x = (v >> self.lo) & ((1 << (self.hi - self.lo + 1)) - 1)
        return x << (self.lo % 64) if self.addr else x

    @property
    def bits(self) -> str:
        return f"{self.hi}" if self.hi == self.lo else f"{self.hi}:{self.lo}"


@attrs.frozen
class DecodedField:
    name: str
    bits: str
    value: int
    meaning: str
    text: str = ""  # the value's name (an enum)
    used: bool = True
    kernel: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "bits": self.bits, "value": self.value,
                             "meaning": self.meaning, "used": self.used}
        if self.text:
            d["text"] = self.text
        if self.kernel:
            d["kernel"] = self.kernel
        return d


@attrs.frozen
class Decoded:
    kind: str
    summary: str
    words: tuple[int, ...]
    word_bits: int
    fields: tuple[DecodedField, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def field(self, name: str) -> DecodedField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def value(self, name: str) -> int:
        return self.field(name).value

    @property
    def valid(self) -> bool:
        return not self.problems

    def changed(self, previous: Decoded | None) -> set[str]:
        if previous is None or previous.kind != self.kind:
            return set()
        old = {f.name: f.value for f in previous.fields}
        return {f.name for f in self.fields if old.get(f.name, 0) != f.value}

    def to_dict(self, previous: Decoded | None = None) -> dict[str, Any]:
        ch = self.changed(previous)
        return {"kind": self.kind, "summary": self.summary,
                "words": [f"{w:#0{self.word_bits // 4 + 2}x}" for w in self.words],
                "fields": [dict(f.to_dict(), changed=f.name in ch) for f in self.fields],
                "problems": list(self.problems), "notes": list(self.notes)}

    def render(self, previous: Decoded | None = None, color: bool = False,
               compact: bool = False, indent: str = "") -> str:
        """One field per line; ``previous``: mark the fields that changed (``*`` and bold
        yellow); unused fields are dimmed; problems in red. ``compact``: leave out the
        fields that are zero, unchanged and not used by this configuration."""
        ch = self.changed(previous)
        digits = self.word_bits // 4
        n = len(self.words)
        while n > min(4, len(self.words)) and not self.words[n - 1]:
            n -= 1  # the all-zero tail of a 512-bit entry says nothing
        words = " ".join(f"{w:0{digits}x}" for w in self.words[:n])
        if n < len(self.words):
            words += f" (+{len(self.words) - n} zero)"
        lines = [f"{indent}{self.kind}: {self.summary}", f"{indent}  raw {words}"]
        shown = [f for f in self.fields
                 if not compact or f.value or f.name in ch or (f.used and f.bits)]
        wname = max((len(f.name) for f in shown), default=0)
        wbits = max((len(f.bits) for f in shown), default=0)
        for f in shown:
            old = ""
            if f.name in ch and previous is not None:
                try:
                    old = f" (was {_fmt(previous.value(f.name))})"
                except KeyError:
                    old = ""
            val = _fmt(f.value) + (f" {f.text}" if f.text else "")
            mark = "*" if f.name in ch else " "
            bits = f" [{f.bits:>{wbits}}]" if wbits else ""
            line = (f"{indent} {mark}{f.name:<{wname}}{bits} = {val}{old}"
                    f"  {f.meaning}").rstrip()
            if not f.used:
                line += "  (not used here)"
            if color:
                if f.name in ch:
                    line = f"\x1b[1;33m{line}\x1b[0m"
                elif not f.used:
                    line = f"\x1b[2m{line}\x1b[0m"
            lines.append(line)
        for p in self.problems:
            bad = f"{indent}  !! {p}"
            lines.append(f"\x1b[31m{bad}\x1b[0m" if color else bad)
        for note in self.notes:
            lines.append(f"{indent}  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _fmt(v: int) -> str:
    return str(v) if v < 10 else hex(v)


def _join(words: Sequence[int], bits: int) -> int:
    v = 0
    for i, w in enumerate(words):
        v |= (w & ((1 << bits) - 1)) << (bits * i)
    return v


def _f(name: str, word: int, mask: int, meaning: str = "", values: Mapping[int, str] | None = None,
       addr: bool = False, kernel: str = "") -> FieldDef:
    """A field from a per-word kernel mask (the SMMU's GENMASK definitions)."""
    lo = (mask & -mask).bit_length() - 1
    hi = mask.bit_length() - 1
    return FieldDef(name, 64 * word + hi, 64 * word + lo, meaning, values or {}, addr, kernel)


def _b(name: str, hi: int, lo: int, meaning: str = "", values: Mapping[int, str] | None = None,
       addr: bool = False, kernel: str = "") -> FieldDef:
    """A field at absolute bit numbers (the VT-d and AMD specifications' notation)."""
    return FieldDef(name, hi, lo, meaning, values or {}, addr, kernel)


def _decode_fields(defs: Sequence[FieldDef], v: int, used: Callable[[FieldDef], bool] | None = None
                   ) -> tuple[DecodedField, ...]:
    out = []
    for d in defs:
        x = d.get(v)
        out.append(DecodedField(d.name, d.bits, x, d.meaning, d.values.get(x, ""),
                                True if used is None else used(d), d.kernel))
    return tuple(out)


def _unknown_bits(defs: Sequence[FieldDef], v: int, nbits: int) -> int:
    known = 0
    for d in defs:
        known |= ((1 << (d.hi - d.lo + 1)) - 1) << d.lo
    return v & ~known & ((1 << nbits) - 1)


# =========================================================================================
# ARM SMMUv3
# =========================================================================================
def _smmu_ste_defs() -> list[FieldDef]:
    from drivers.arm_smmu_v3 import regs as r

    cache = {0: "NC", 1: "WBRA", 2: "WT", 3: "WB"}
    vt = r.STRTAB_STE_2_VTCR

    def vtcr(name: str, sub: int, meaning: str, values: Mapping[int, str] | None = None
             ) -> FieldDef:
        return _f(name, 2, r.FIELD_PREP(vt, sub), meaning, values,
                  kernel=f"STRTAB_STE_2_VTCR_{name}")

    return [
        _f("V", 0, r.STRTAB_STE_0_V, "valid", kernel="STRTAB_STE_0_V"),
        _f("CFG", 0, r.STRTAB_STE_0_CFG, "Config", {0: "ABORT", 4: "BYPASS", 5: "S1_TRANS",
                                                    6: "S2_TRANS", 7: "NESTED"},
           kernel="STRTAB_STE_0_CFG"),
        _f("S1FMT", 0, r.STRTAB_STE_0_S1FMT, "CD table format",
           {0: "LINEAR", 1: "4K_L2", 2: "64K_L2"}, kernel="STRTAB_STE_0_S1FMT"),
        _f("S1CTXPTR", 0, r.STRTAB_STE_0_S1CTXPTR_MASK, "CD table address", addr=True,
           kernel="STRTAB_STE_0_S1CTXPTR_MASK"),
        _f("S1CDMAX", 0, r.STRTAB_STE_0_S1CDMAX, "log2 of the number of CDs (SSID bits)",
           kernel="STRTAB_STE_0_S1CDMAX"),
        _f("S1DSS", 1, r.STRTAB_STE_1_S1DSS, "no-SSID traffic",
           {0: "TERMINATE", 1: "BYPASS", 2: "SSID0"}, kernel="STRTAB_STE_1_S1DSS"),
        _f("S1CIR", 1, r.STRTAB_STE_1_S1CIR, "CD table inner cacheability", cache,
           kernel="STRTAB_STE_1_S1CIR"),
        _f("S1COR", 1, r.STRTAB_STE_1_S1COR, "CD table outer cacheability", cache,
           kernel="STRTAB_STE_1_S1COR"),
        _f("S1CSH", 1, r.STRTAB_STE_1_S1CSH, "CD table shareability",
           {0: "NSH", 2: "OSH", 3: "ISH"}, kernel="STRTAB_STE_1_S1CSH"),
        _f("MEV", 1, r.STRTAB_STE_1_MEV, "merge events", kernel="STRTAB_STE_1_MEV"),
        _f("S2FWB", 1, r.STRTAB_STE_1_S2FWB, "stage-2 forced write-back",
           kernel="STRTAB_STE_1_S2FWB"),
        _f("S1STALLD", 1, r.STRTAB_STE_1_S1STALLD, "stage-1 stalls disabled",
           kernel="STRTAB_STE_1_S1STALLD"),
        _f("EATS", 1, r.STRTAB_STE_1_EATS, "ATS", {0: "ABT", 1: "TRANS", 2: "S1CHK"},
           kernel="STRTAB_STE_1_EATS"),
        _f("STRW", 1, r.STRTAB_STE_1_STRW, "StreamWorld", {0: "NSEL1", 2: "EL2"},
           kernel="STRTAB_STE_1_STRW"),
        _f("SHCFG", 1, r.STRTAB_STE_1_SHCFG, "shareability override", {1: "INCOMING"},
           kernel="STRTAB_STE_1_SHCFG"),
        _f("S2VMID", 2, r.STRTAB_STE_2_S2VMID, "VMID", kernel="STRTAB_STE_2_S2VMID"),
        vtcr("S2T0SZ", r.STRTAB_STE_2_VTCR_S2T0SZ, "64 - IPA bits"),
        vtcr("S2SL0", r.STRTAB_STE_2_VTCR_S2SL0, "stage-2 start level"),
        vtcr("S2IR0", r.STRTAB_STE_2_VTCR_S2IR0, "table inner cacheability", cache),
        vtcr("S2OR0", r.STRTAB_STE_2_VTCR_S2OR0, "table outer cacheability", cache),
        vtcr("S2SH0", r.STRTAB_STE_2_VTCR_S2SH0, "table shareability",
             {0: "NSH", 2: "OSH", 3: "ISH"}),
        vtcr("S2TG", r.STRTAB_STE_2_VTCR_S2TG, "stage-2 granule", {0: "4K", 1: "64K", 2: "16K"}),
        vtcr("S2PS", r.STRTAB_STE_2_VTCR_S2PS, "output size",
             dict(enumerate(("32-bit", "36-bit", "40-bit", "42-bit", "44-bit", "48-bit",
                             "52-bit")))),
        _f("S2AA64", 2, r.STRTAB_STE_2_S2AA64, "AArch64 tables", kernel="STRTAB_STE_2_S2AA64"),
        _f("S2ENDI", 2, r.STRTAB_STE_2_S2ENDI, "big-endian tables",
           kernel="STRTAB_STE_2_S2ENDI"),
        _f("S2PTW", 2, r.STRTAB_STE_2_S2PTW, "protected table walk",
           kernel="STRTAB_STE_2_S2PTW"),
        _f("S2S", 2, r.STRTAB_STE_2_S2S, "stage-2 faults stall", kernel="STRTAB_STE_2_S2S"),
        _f("S2R", 2, r.STRTAB_STE_2_S2R, "stage-2 faults recorded", kernel="STRTAB_STE_2_S2R"),
        _f("S2TTB", 3, r.STRTAB_STE_3_S2TTB_MASK, "stage-2 table address", addr=True,
           kernel="STRTAB_STE_3_S2TTB_MASK"),
    ]


def _smmu_cfg() -> Any:
    from drivers.arm_smmu_v3.hw.config import SmmuHwConfig

    return SmmuHwConfig()


def decode_ste(words: Sequence[int]) -> Decoded:
    from drivers.arm_smmu_v3 import regs as r
    from drivers.arm_smmu_v3.hw.decode import SmmuEvent
    from drivers.arm_smmu_v3.hw.decode import decode_ste as hw_decode_ste
    from drivers.arm_smmu_v3.ste import arm_smmu_get_ste_used

    q = tuple(list(words) + [0] * (8 - len(words)))[:8]
    v = _join(q, 64)
    used = arm_smmu_get_ste_used(q)  # type: ignore[arg-type]
    defs = _smmu_ste_defs()

    def is_used(d: FieldDef) -> bool:
        w = d.lo // 64
        mask = ((1 << (d.hi - d.lo + 1)) - 1) << (d.lo % 64)
        return bool(used[w] & mask)

    fields = _decode_fields(defs, v, is_used)
    problems: list[str] = []
    try:
        hw_decode_ste(_smmu_cfg(), 0, q)  # type: ignore[arg-type]
    except SmmuEvent as e:
        problems.append(f"{e.name}: {e.detail} (the SMMU would raise this event)")
    notes = [f"{f.name} = {_fmt(f.value)} is set but not used by this Config"
             for f in fields if f.value and not f.used]
    extra = _unknown_bits(defs, v, 512) & ~_join(used, 64)
    if extra:
        notes.append(f"bits outside every field: {extra:#x}")
    cfg = r.FIELD_GET(r.STRTAB_STE_0_CFG, q[0])
    names = {0: "ABORT", 4: "BYPASS", 5: "S1_TRANS", 6: "S2_TRANS", 7: "NESTED"}
    summary = "V=0 (invalid)" if not q[0] & 1 else f"Config={names.get(cfg, cfg)}"
    if q[0] & 1 and cfg & 1:
        summary += f" CD table @ {q[0] & r.STRTAB_STE_0_S1CTXPTR_MASK:#x}"
    if q[0] & 1 and cfg & 2:
        summary += (f" VMID {r.FIELD_GET(r.STRTAB_STE_2_S2VMID, q[2])} S2 table @ "
                    f"{q[3] & r.STRTAB_STE_3_S2TTB_MASK:#x}")
    return Decoded("STE", summary, q, 64, fields, tuple(problems), tuple(notes))


def _smmu_cd_defs() -> list[FieldDef]:
    from drivers.arm_smmu_v3 import regs as r

    def c(name: str, word: int, mask: int, meaning: str, values: Mapping[int, str] | None = None,
          addr: bool = False, macro: str = "") -> FieldDef:
        return _f(name, word, mask, meaning, values, addr,
                  kernel=macro or f"CTXDESC_CD_{word}_{'TCR_' if name in _TCR else ''}{name}")

    return [
        c("T0SZ", 0, r.CTXDESC_CD_0_TCR_T0SZ, "64 - input bits"),
        c("TG0", 0, r.CTXDESC_CD_0_TCR_TG0, "granule", {0: "4K", 1: "64K", 2: "16K"}),
        c("IRGN0", 0, r.CTXDESC_CD_0_TCR_IRGN0, "table inner cacheability"),
        c("ORGN0", 0, r.CTXDESC_CD_0_TCR_ORGN0, "table outer cacheability"),
        c("SH0", 0, r.CTXDESC_CD_0_TCR_SH0, "table shareability",
          {0: "NSH", 2: "OSH", 3: "ISH"}),
        c("EPD0", 0, r.CTXDESC_CD_0_TCR_EPD0, "TTB0 walks disabled"),
        c("ENDI", 0, r.CTXDESC_CD_0_ENDI, "big-endian tables"),
        c("EPD1", 0, r.CTXDESC_CD_0_TCR_EPD1, "TTB1 walks disabled"),
        c("V", 0, r.CTXDESC_CD_0_V, "valid"),
        c("IPS", 0, r.CTXDESC_CD_0_TCR_IPS, "output size",
          dict(enumerate(("32-bit", "36-bit", "40-bit", "42-bit", "44-bit", "48-bit",
                          "52-bit")))),
        c("TBI0", 0, r.CTXDESC_CD_0_TCR_TBI0, "top byte ignored"),
        c("AA64", 0, r.CTXDESC_CD_0_AA64, "AArch64 tables"),
        c("HD", 0, r.CTXDESC_CD_0_TCR_HD, "hardware dirty update"),
        c("HA", 0, r.CTXDESC_CD_0_TCR_HA, "hardware access flag update"),
        c("S", 0, r.CTXDESC_CD_0_S, "faults stall"),
        c("R", 0, r.CTXDESC_CD_0_R, "faults recorded"),
        c("A", 0, r.CTXDESC_CD_0_A, "abort on fault (no stall)"),
        c("ASET", 0, r.CTXDESC_CD_0_ASET, "ASID set (shared with the CPU)"),
        c("ASID", 0, r.CTXDESC_CD_0_ASID, "ASID"),
        c("TTB0", 1, r.CTXDESC_CD_1_TTB0_MASK, "stage-1 table address", addr=True,
          macro="CTXDESC_CD_1_TTB0_MASK"),
        _f("MAIR", 3, (1 << 64) - 1, "memory attribute indirection", kernel="CTXDESC_CD_3_MAIR"),
    ]


_TCR = {"T0SZ", "TG0", "IRGN0", "ORGN0", "SH0", "EPD0", "EPD1", "IPS", "TBI0", "HD", "HA"}


def decode_cd(words: Sequence[int]) -> Decoded:
    from drivers.arm_smmu_v3.cd import arm_smmu_get_cd_used
    from drivers.arm_smmu_v3.hw.decode import DecodedSte, SmmuEvent
    from drivers.arm_smmu_v3.hw.decode import decode_cd as hw_decode_cd

    q = tuple(list(words) + [0] * (8 - len(words)))[:8]
    v = _join(q, 64)
    used = arm_smmu_get_cd_used(q)  # type: ignore[arg-type]

    def is_used(d: FieldDef) -> bool:
        mask = ((1 << (d.hi - d.lo + 1)) - 1) << (d.lo % 64)
        return bool(used[d.lo // 64] & mask)

    fields = _decode_fields(_smmu_cd_defs(), v, is_used)
    problems: list[str] = []
    ste = DecodedSte(sid=0, raw=(0,) * 8, config=5, s1=True, s2=False)
    try:
        hw_decode_cd(_smmu_cfg(), ste, 0, q)  # type: ignore[arg-type]
    except SmmuEvent as e:
        problems.append(f"{e.name}: {e.detail} (the SMMU would raise this event)")
    d = {f.name: f.value for f in fields}
    if not d["V"]:
        summary = "V=0 (invalid)"
    elif d["EPD0"]:
        summary = f"ASID {d['ASID']} EPD0 (no table)"
    else:
        summary = (f"ASID {d['ASID']} TTB0 {d['TTB0']:#x} {64 - d['T0SZ']}-bit input "
                   f"{fields[1].text or '?'} granule")
    return Decoded("CD", summary, q, 64, fields, tuple(problems))


def decode_smmu_cmd(words: Sequence[int]) -> Decoded:
    from drivers.arm_smmu_v3 import regs as r

    q = tuple(list(words) + [0] * (2 - len(words)))[:2]
    v = _join(q, 64)
    op = q[0] & 0xFF
    name = r.CMDQ_OP_NAMES.get(op, f"opcode {op:#x}")
    defs = [_f("OP", 0, r.CMDQ_0_OP, "opcode", r.CMDQ_OP_NAMES, kernel="CMDQ_0_OP")]
    if name.startswith("CFGI") or name == "PREFETCH_CFG":
        defs += [_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                 _f("SSID", 0, r.CMDQ_CFGI_0_SSID, "SubstreamID", kernel="CMDQ_CFGI_0_SSID"),
                 _f("SID", 0, r.CMDQ_CFGI_0_SID, "StreamID", kernel="CMDQ_CFGI_0_SID"),
                 _f("LEAF", 1, r.CMDQ_CFGI_1_LEAF, "leaf only", kernel="CMDQ_CFGI_1_LEAF")]
        if name == "CFGI_ALL":
            defs[-1] = _f("RANGE", 1, r.CMDQ_CFGI_1_RANGE, "range (31 = all)",
                          kernel="CMDQ_CFGI_1_RANGE")
    elif name.startswith("TLBI"):
        defs += [_f("NUM", 0, r.CMDQ_TLBI_0_NUM, "range: number", kernel="CMDQ_TLBI_0_NUM"),
                 _f("SCALE", 0, r.CMDQ_TLBI_0_SCALE, "range: scale", kernel="CMDQ_TLBI_0_SCALE"),
                 _f("VMID", 0, r.CMDQ_TLBI_0_VMID, "VMID", kernel="CMDQ_TLBI_0_VMID"),
                 _f("ASID", 0, r.CMDQ_TLBI_0_ASID, "ASID", kernel="CMDQ_TLBI_0_ASID"),
                 _f("LEAF", 1, r.CMDQ_TLBI_1_LEAF, "leaf only", kernel="CMDQ_TLBI_1_LEAF"),
                 _f("TTL", 1, r.CMDQ_TLBI_1_TTL, "level hint", kernel="CMDQ_TLBI_1_TTL"),
                 _f("TG", 1, r.CMDQ_TLBI_1_TG, "granule hint", kernel="CMDQ_TLBI_1_TG"),
                 _f("ADDR", 1, r.CMDQ_TLBI_1_VA_MASK, "address", addr=True,
                    kernel="CMDQ_TLBI_1_VA_MASK")]
    elif name == "ATC_INV":
        defs += [_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                 _f("GLOBAL", 0, r.CMDQ_ATC_0_GLOBAL, "all SSIDs", kernel="CMDQ_ATC_0_GLOBAL"),
                 _f("SSID", 0, r.CMDQ_ATC_0_SSID, "SubstreamID", kernel="CMDQ_ATC_0_SSID"),
                 _f("SID", 0, r.CMDQ_ATC_0_SID, "StreamID", kernel="CMDQ_ATC_0_SID"),
                 _f("SIZE", 1, r.CMDQ_ATC_1_SIZE, "log2 pages (52 = all)",
                    kernel="CMDQ_ATC_1_SIZE"),
                 _f("ADDR", 1, r.CMDQ_ATC_1_ADDR_MASK, "address", addr=True,
                    kernel="CMDQ_ATC_1_ADDR_MASK")]
    elif name == "PRI_RESP":
        defs += [_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                 _f("SSID", 0, r.CMDQ_PRI_0_SSID, "SubstreamID", kernel="CMDQ_PRI_0_SSID"),
                 _f("SID", 0, r.CMDQ_PRI_0_SID, "StreamID", kernel="CMDQ_PRI_0_SID"),
                 _f("GRPID", 1, r.CMDQ_PRI_1_GRPID, "page request group",
                    kernel="CMDQ_PRI_1_GRPID"),
                 _f("RESP", 1, r.CMDQ_PRI_1_RESP, "response",
                    {0: "DENY", 1: "FAIL", 2: "SUCC"}, kernel="CMDQ_PRI_1_RESP")]
    elif name == "RESUME":
        defs += [_f("RESP", 0, r.CMDQ_RESUME_0_RESP, "response",
                    {0: "TERM", 1: "RETRY", 2: "ABORT"}, kernel="CMDQ_RESUME_0_RESP"),
                 _f("SID", 0, r.CMDQ_RESUME_0_SID, "StreamID", kernel="CMDQ_RESUME_0_SID"),
                 _f("STAG", 1, r.CMDQ_RESUME_1_STAG, "stall tag", kernel="CMDQ_RESUME_1_STAG")]
    elif name == "CMD_SYNC":
        defs += [_f("CS", 0, r.CMDQ_SYNC_0_CS, "completion signal",
                    {0: "NONE", 1: "IRQ", 2: "SEV"}, kernel="CMDQ_SYNC_0_CS"),
                 _f("MSIDATA", 0, r.CMDQ_SYNC_0_MSIDATA, "MSI data",
                    kernel="CMDQ_SYNC_0_MSIDATA"),
                 _f("MSIADDR", 1, r.CMDQ_SYNC_1_MSIADDR_MASK, "MSI address", addr=True,
                    kernel="CMDQ_SYNC_1_MSIADDR_MASK")]
    problems = [] if op in r.CMDQ_OP_NAMES else [f"unknown opcode {op:#x} (CERROR_ILL)"]
    return Decoded("SMMU command", name, q, 64, _decode_fields(defs, v), tuple(problems))


# =========================================================================================
# Intel VT-d
# =========================================================================================
_PGTT = {1: "FL_ONLY (first stage)", 2: "SL_ONLY (second stage)", 3: "NESTED", 4: "PT"}
_AW = {1: "39-bit 3-level", 2: "48-bit 4-level", 3: "57-bit 5-level"}

_PASID_DEFS = [
    _b("P", 0, 0, "present", kernel="pasid_set_present"),
    _b("FPD", 1, 1, "fault processing disable", kernel="pasid_set_fault_enable"),
    _b("AW", 4, 2, "second-stage address width", _AW, kernel="pasid_set_address_width"),
    _b("PGTT", 8, 6, "translation type", _PGTT, kernel="pasid_set_translation_type"),
    _b("SSADE", 9, 9, "second-stage A/D (dirty tracking)", kernel="pasid_set_ssade"),
    _b("SSPTPTR", 63, 12, "second-stage table", addr=True, kernel="pasid_set_slptr"),
    _b("DID", 79, 64, "domain id (IOTLB tag)", kernel="pasid_set_domain_id"),
    _b("PWSNP", 87, 87, "page-walk snoop", kernel="pasid_set_page_snoop"),
    _b("PGSNP", 88, 88, "page snoop (force coherent)", kernel="pasid_set_pgsnp"),
    _b("SRE", 128, 128, "supervisor requests", kernel="pasid_set_sre"),
    _b("FSPM", 131, 130, "first-stage paging mode", {0: "4-level", 1: "5-level"},
       kernel="pasid_set_flpm"),
    _b("WPE", 132, 132, "write protect enable", kernel="pasid_set_wpe"),
    _b("EAFE", 135, 135, "extended access flag", kernel="pasid_set_eafe"),
    _b("FSPTPTR", 191, 140, "first-stage table", addr=True, kernel="pasid_set_flptr"),
]
_PASID_USED = {
    1: {"P", "FPD", "AW", "PGTT", "DID", "PWSNP", "PGSNP", "SRE", "FSPM", "WPE", "EAFE",
        "FSPTPTR"},
    2: {"P", "FPD", "AW", "PGTT", "SSADE", "SSPTPTR", "DID", "PWSNP", "PGSNP"},
    3: {f.name for f in _PASID_DEFS},
    4: {"P", "FPD", "AW", "PGTT", "DID", "PWSNP", "PGSNP"},
}


def _vtd_caps() -> tuple[int, int]:
    from drivers.intel_vtd.hw.config import VtdConfig

    cfg = VtdConfig()
    return cfg.cap(), cfg.ecap()


def decode_pasid_entry(words: Sequence[int]) -> Decoded:
    from drivers.intel_vtd import iommu_h as h

    w = tuple(list(words) + [0] * (8 - len(words)))[:8]
    v = _join(w, 64)
    pgtt = (w[0] >> 6) & 7
    present = bool(w[0] & 1)
    used_names = _PASID_USED.get(pgtt, {"P", "PGTT"}) if present else {"P"}
    fields = _decode_fields(_PASID_DEFS, v, lambda d: d.name in used_names)
    cap, ecap = _vtd_caps()
    d = {f.name: f.value for f in fields}
    problems: list[str] = []
    if present:
        rsvd = (w[0] & (h.genmask(11, 10) | 1 << 5) or w[1] & h.genmask(63, 25)
                or w[1] & h.genmask(22, 16) or w[2] & (h.genmask(11, 8) | 0b1000010)
                or any(w[3:]))
        if rsvd:
            problems.append("reserved bits set (fault 0x5a, PASID entry reserved)")
        if pgtt not in _PGTT:
            problems.append(f"PGTT {pgtt} is reserved (fault 0x5b)")
        if d["FSPM"] > 1:
            problems.append(f"FSPM {d['FSPM']} is reserved")
        if d["SRE"] and not h.ecap_srs(ecap):
            problems.append("SRE without ECAP.SRS")
        if d["EAFE"] and not h.ecap_eafs(ecap):
            problems.append("EAFE without ECAP.EAFS")
        if d["SSADE"] and not h.ecap_slads(ecap):
            problems.append("SSADE without ECAP.SLADS")
        if pgtt in (2, 3) and not h.cap_sagaw(cap) >> d["AW"] & 1:
            problems.append(f"AW {d['AW']} is not in CAP.SAGAW {h.cap_sagaw(cap):#b}")
        if pgtt in (1, 3) and not d["FSPTPTR"]:
            problems.append("first stage used but FSPTPTR is 0")
        if pgtt in (2, 3) and not d["SSPTPTR"]:
            problems.append("second stage used but SSPTPTR is 0")
    notes = [f"{f.name} = {_fmt(f.value)} is set but not used by PGTT {pgtt}"
             for f in fields if f.value and not f.used]
    if not present:
        summary = "P=0 (not present)"
    else:
        summary = f"PGTT={_PGTT.get(pgtt, pgtt)} DID {d['DID']}"
        if pgtt in (1, 3):
            summary += f" FSPTPTR {d['FSPTPTR']:#x}"
        if pgtt in (2, 3):
            summary += f" SSPTPTR {d['SSPTPTR']:#x}"
    return Decoded("PASID entry", summary, w, 64, fields, tuple(problems), tuple(notes))


_SM_CONTEXT_DEFS = [
    _b("P", 0, 0, "present", kernel="CONTEXT_P"),
    _b("FPD", 1, 1, "fault processing disable", kernel="CONTEXT_FPD"),
    _b("DTE", 2, 2, "device-TLB (ATS) enable", kernel="CONTEXT_DTE"),
    _b("PASIDE", 3, 3, "PASID-tagged requests allowed", kernel="CONTEXT_PASIDE"),
    _b("PRE", 4, 4, "page requests enable", kernel="CONTEXT_PRE"),
    _b("PDTS", 11, 9, "PASID directory size (2^(PDTS+7) entries)", kernel="context_pdts"),
    _b("PASIDDIRPTR", 63, 12, "PASID directory", addr=True,
       kernel="context_entry_set_pasid_table"),
    _b("RID_PASID", 83, 64, "PASID for requests without one", kernel="context_set_sm_rid2pasid"),
]
_LEGACY_CONTEXT_DEFS = [
    _b("P", 0, 0, "present", kernel="context_set_present"),
    _b("FPD", 1, 1, "fault processing disable", kernel="context_set_fault_enable"),
    _b("TT", 3, 2, "translation type", {0: "MULTI_LEVEL", 1: "DEV_IOTLB", 2: "PASS_THROUGH"},
       kernel="context_set_translation_type"),
    _b("SLPTPTR", 63, 12, "second-level table", addr=True, kernel="context_set_address_root"),
    _b("AW", 66, 64, "address width", _AW, kernel="context_set_address_width"),
    _b("DID", 87, 72, "domain id", kernel="context_set_domain_id"),
]


def decode_context_entry(words: Sequence[int], legacy: bool = False) -> Decoded:
    from drivers.intel_vtd import iommu_h as h

    n = 2 if legacy else 4
    w = tuple(list(words) + [0] * (n - len(words)))[:n]
    v = _join(w, 64)
    cap, ecap = _vtd_caps()
    problems: list[str] = []
    if legacy:
        fields = _decode_fields(_LEGACY_CONTEXT_DEFS, v)
        d = {f.name: f.value for f in fields}
        if d["P"]:
            if w[0] & h.genmask(11, 4) or w[1] & (h.genmask(7, 3) | h.genmask(63, 24)):
                problems.append("reserved bits set (fault 0x0b)")
            if d["TT"] == 3:
                problems.append("TT 3 is reserved (fault 0x03)")
            elif d["TT"] != 2 and not h.cap_sagaw(cap) >> d["AW"] & 1:
                problems.append(f"AW {d['AW']} is not in CAP.SAGAW (fault 0x03)")
        summary = ("P=0 (not present)" if not d["P"] else
                   f"legacy TT={fields[2].text} DID {d['DID']} table {d['SLPTPTR']:#x}")
        return Decoded("context entry (legacy)", summary, w, 64, fields, tuple(problems))
    fields = _decode_fields(_SM_CONTEXT_DEFS, v)
    d = {f.name: f.value for f in fields}
    if d["P"]:
        if w[0] & h.genmask(8, 5) or w[1] & h.genmask(63, 20) or any(w[2:]):
            problems.append("reserved bits set (fault 0x42)")
        if d["DTE"] and not h.ecap_dev_iotlb_support(ecap):
            problems.append("DTE without ECAP.DT (fault 0x43)")
        if d["PRE"] and not h.ecap_prs(ecap):
            problems.append("PRE without ECAP.PRS (fault 0x43)")
        if d["PRE"] and not d["DTE"]:
            problems.append("PRE needs DTE: page requests come from ATS devices")
    summary = ("P=0 (not present)" if not d["P"] else
               f"scalable PASID dir {d['PASIDDIRPTR']:#x} ({1 << (d['PDTS'] + 7)} entries)"
               f" RID_PASID {d['RID_PASID']}")
    return Decoded("context entry (scalable)", summary, w, 64, fields, tuple(problems))


def decode_vtd_desc(words: Sequence[int]) -> Decoded:
    from drivers.intel_vtd import iommu_h as h

    w = tuple(list(words) + [0] * (4 - len(words)))[:4]
    v = _join(w, 64)
    t = w[0] & 0xF
    name = h.QI_DESC_NAMES.get(t, f"type {t:#x}")
    defs = [_b("TYPE", 3, 0, "descriptor type", h.QI_DESC_NAMES)]
    gran = {1: "GLOBAL", 2: "DOMAIN", 3: "DEVICE/PAGE"}
    if t == h.QI_CC_TYPE:
        defs += [_b("G", 5, 4, "granularity", gran), _b("DID", 31, 16, "domain id"),
                 _b("SID", 47, 32, "source id"), _b("FM", 49, 48, "function mask")]
    elif t == h.QI_IOTLB_TYPE:
        defs += [_b("G", 5, 4, "granularity", {1: "GLOBAL", 2: "DSI", 3: "PSI"}),
                 _b("DW", 6, 6, "drain writes"), _b("DR", 7, 7, "drain reads"),
                 _b("DID", 31, 16, "domain id"), _b("AM", 69, 64, "address mask (log2 pages)"),
                 _b("IH", 70, 70, "invalidation hint (leaf)"),
                 _b("ADDR", 127, 76, "address", addr=True)]
    elif t == h.QI_EIOTLB_TYPE:
        defs += [_b("G", 5, 4, "granularity", {2: "PASID", 3: "PAGE"}),
                 _b("DID", 31, 16, "domain id"), _b("PASID", 51, 32, "PASID"),
                 _b("AM", 69, 64, "address mask (log2 pages)"),
                 _b("IH", 70, 70, "invalidation hint (leaf)"),
                 _b("ADDR", 127, 76, "address", addr=True)]
    elif t == h.QI_PC_TYPE:
        defs += [_b("G", 5, 4, "granularity", {0: "ALL_PASIDS", 1: "PASID_SEL", 3: "GLOBAL"}),
                 _b("DID", 31, 16, "domain id"), _b("PASID", 51, 32, "PASID")]
    elif t in (h.QI_DIOTLB_TYPE, h.QI_DEIOTLB_TYPE):
        pas = t == h.QI_DEIOTLB_TYPE
        defs += [_b("SID", 31 if pas else 47, 16 if pas else 32, "source id"),
                 _b("S", 75 if pas else 64, 75 if pas else 64, "size bit"),
                 _b("ADDR", 127, 76, "address", addr=True)]
        if pas:
            defs.append(_b("PASID", 51, 32, "PASID"))
    elif t == h.QI_IWD_TYPE:
        defs += [_b("IF", 4, 4, "interrupt"), _b("SW", 5, 5, "status write"),
                 _b("FN", 6, 6, "fence"), _b("PD", 7, 7, "page-request drain"),
                 _b("DATA", 63, 32, "status data"), _b("ADDR", 127, 66, "status address",
                                                       addr=True)]
    elif t == h.QI_PGRP_RESP_TYPE:
        defs += [_b("PP", 4, 4, "PASID present"),
                 _b("RC", 15, 12, "response code", {0: "SUCCESS", 1: "INVALID", 0xF: "FAILURE"}),
                 _b("RID", 31, 16, "requester id"), _b("PASID", 51, 32, "PASID"),
                 _b("LPIG", 66, 66, "last page in group"), _b("PRGI", 75, 67, "group index")]
    problems = [] if t in h.QI_DESC_NAMES else [f"unknown descriptor type {t} (IQE)"]
    return Decoded("VT-d descriptor", name, w, 64, _decode_fields(defs, v), tuple(problems))


# =========================================================================================
# AMD-Vi
# =========================================================================================
def _dte_defs() -> list[FieldDef]:
    from drivers.amd_vi import amd_iommu_types as t

    return [
        _f("V", 0, t.DTE_FLAG_V, "valid", kernel="DTE_FLAG_V"),
        _f("TV", 0, t.DTE_FLAG_TV, "translation information valid", kernel="DTE_FLAG_TV"),
        _f("HAD", 0, t.DTE_FLAG_HAD, "host access/dirty update", {3: "dirty tracking"},
           kernel="DTE_FLAG_HAD"),
        _f("Mode", 0, t.DTE_MODE_MASK, "host page-table levels (0 = none)",
           {0: "no host translation", 7: "reserved"}, kernel="DTE_MODE_MASK"),
        _f("HostPtr", 0, t.DTE_HOST_TRP, "host page-table root", addr=True,
           kernel="DTE_HOST_TRP"),
        _f("PPR", 0, t.DTE_FLAG_PPR, "peripheral page requests", kernel="DTE_FLAG_PPR"),
        _f("GPRP", 0, t.DTE_FLAG_GPRP, "guest PPR response with PASID", kernel="DTE_FLAG_GPRP"),
        _f("GIoV", 0, t.DTE_FLAG_GIOV, "guest I/O protection (no-PASID traffic uses GCR3[0])",
           kernel="DTE_FLAG_GIOV"),
        _f("GV", 0, t.DTE_FLAG_GV, "guest translation valid (GCR3 table)",
           kernel="DTE_FLAG_GV"),
        _f("GLX", 0, t.DTE_GLX, "GCR3 table levels - 1", kernel="DTE_GLX"),
        _f("GCR3[14:12]", 0, t.DTE_GCR3_14_12, "GCR3 table root, bits 14:12",
           kernel="DTE_GCR3_14_12"),
        _f("IR", 0, t.DTE_FLAG_IR, "reads allowed", kernel="DTE_FLAG_IR"),
        _f("IW", 0, t.DTE_FLAG_IW, "writes allowed", kernel="DTE_FLAG_IW"),
        _f("DomainID", 1, t.DTE_DOMID_MASK, "IOTLB tag", kernel="DTE_DOMID_MASK"),
        _f("GCR3[30:15]", 1, t.DTE_GCR3_30_15, "GCR3 table root, bits 30:15",
           kernel="DTE_GCR3_30_15"),
        _f("I", 1, t.DTE_FLAG_IOTLB, "IOTLB (ATS) enable", kernel="DTE_FLAG_IOTLB"),
        _f("GCR3[51:31]", 1, t.DTE_GCR3_51_31, "GCR3 table root, bits 51:31",
           kernel="DTE_GCR3_51_31"),
        _f("GPT_LEVEL", 2, t.DTE_GPT_LEVEL_MASK, "guest page-table levels",
           {0: "4-level", 1: "5-level"}, kernel="DTE_GPT_LEVEL_MASK"),
    ]


def _amd_features() -> Any:
    from drivers.amd_vi.hw.config import AmdViFeatures

    return AmdViFeatures()


def decode_dte(words: Sequence[int]) -> Decoded:
    from drivers.amd_vi.amd_iommu_types import dte_gcr3_root

    w = tuple(list(words) + [0] * (4 - len(words)))[:4]
    v = _join(w, 64)
    fields = list(_decode_fields(_dte_defs(), v))
    d = {f.name: f.value for f in fields}
    root = dte_gcr3_root(w)
    fields.insert(fields.index(next(f for f in fields if f.name == "IR")),
                  DecodedField("GCR3 root", "(3 pieces)", root, "GCR3 table root, assembled"))
    f = _amd_features()
    problems: list[str] = []
    if d["V"] and d["TV"]:
        mode = d["Mode"]
        if mode == 7:
            problems.append("Mode 7 is reserved (ILLEGAL_DEV_TABLE_ENTRY)")
        elif mode > f.hats + 4:
            problems.append(f"Mode {mode} exceeds the {f.hats + 4} host levels implemented")
        if (d["HAD"] and not (f.hasup or f.hdsup)) or (d["HAD"] == 3 and not f.hdsup):
            problems.append("HAD set without host access/dirty support")
        if d["PPR"] and not f.ppr:
            problems.append("PPR set without PPR support")
        if d["GV"]:
            if d["GLX"] == 3 or d["GLX"] > f.glx:
                problems.append(f"GLX {d['GLX']} not supported")
            if not root:
                problems.append("GV set but the GCR3 table root is 0")
            if d["GPT_LEVEL"] > 1:
                problems.append(f"GPT level {d['GPT_LEVEL']} is reserved")
        elif d["GIoV"]:
            problems.append("GIoV without GV has no GCR3 table to use")
        if mode and not d["HostPtr"]:
            problems.append(f"Mode {mode} with a null host page-table root")
    elif d["V"] and (d["Mode"] or d["GV"]):
        problems.append("translation fields set but TV = 0: they are ignored")
    if not d["V"]:
        summary = "V=0 (no translation: DMA passes through untranslated)"
    elif not d["TV"]:
        summary = "V=1 TV=0 (DMA blocked)"
    else:
        parts = [f"DomainID {d['DomainID']:#x}"]
        parts.append(f"v1 Mode {d['Mode']} root {d['HostPtr']:#x}" if d["Mode"] else
                     "no host translation")
        if d["GV"]:
            parts.append(f"GCR3 table {root:#x}{' (GIoV)' if d['GIoV'] else ''}")
        summary = " ".join(parts)
    return Decoded("DTE", summary, w, 64, tuple(fields), tuple(problems))


_GCR3_DEFS = [_b("V", 0, 0, "valid", kernel="GCR3_VALID"),
              _b("CR3", 51, 12, "guest page-table root (x86-64 format)", addr=True,
                 kernel="GCR3_ADDR_MASK")]


def decode_gcr3(words: Sequence[int]) -> Decoded:
    w = (*words, 0)[:1]
    fields = _decode_fields(_GCR3_DEFS, w[0])
    problems = []
    if w[0] & ~((1 << 52) - 1 & ~0xFFF | 1):
        problems.append(f"reserved bits set: {w[0] & ~((1 << 52) - 1 & ~0xFFF | 1):#x}")
    summary = f"CR3 {fields[1].value:#x}" if w[0] & 1 else "not valid"
    return Decoded("GCR3 entry", summary, w, 64, fields, tuple(problems))


def decode_amd_cmd(words: Sequence[int]) -> Decoded:
    from drivers.amd_vi import amd_iommu_types as t

    w = tuple(list(words) + [0] * (4 - len(words)))[:4]
    v = _join(w, 32)
    op = (w[1] >> 28) & 0xF
    name = t.CMD_NAMES.get(op, f"opcode {op:#x}")
    defs = [_b("OPCODE", 63, 60, "command", t.CMD_NAMES)]
    if op == t.CMD_COMPL_WAIT:
        defs += [_b("S", 0, 0, "store"), _b("I", 1, 1, "interrupt"),
                 _b("ADDR", 51, 3, "store address", addr=True), _b("DATA", 127, 64, "store data")]
    elif op == t.CMD_INV_DEV_ENTRY:
        defs += [_b("DeviceID", 15, 0, "device table index")]
    elif op in (t.CMD_INV_IOMMU_PAGES, t.CMD_INV_IOTLB_PAGES):
        if op == t.CMD_INV_IOMMU_PAGES:
            defs += [_b("PASID", 19, 0, "PASID (GN=1)"), _b("DomainID", 47, 32, "domain")]
        else:  # build_inv_iotlb_pages: the PASID is split in two bytes
            defs += [_b("DeviceID", 15, 0, "device"),
                     _b("PASID[15:8]", 23, 16, "PASID bits 15:8 (GN=1)"),
                     _b("Maxpend", 31, 24, "ATS invalidation queue depth"),
                     _b("PASID[7:0]", 55, 48, "PASID bits 7:0 (GN=1)")]
        defs += [_b("S", 64, 64, "size: the lowest clear address bit gives the range"),
                 _b("PDE", 65, 65, "also cached page-directory entries"),
                 _b("GN", 66, 66, "guest (PASID) translation"),
                 _b("ADDR", 127, 76, "address", addr=True)]
    elif op == t.CMD_COMPLETE_PPR:
        defs += [_b("DeviceID", 15, 0, "device"), _b("PASID", 51, 32, "PASID"),
                 _b("GN", 66, 66, "guest (PASID valid)"), _b("Tag", 104, 96, "PPR tag"),
                 _b("Status", 111, 108, "response", {0: "SUCCESS", 1: "INVALID",
                                                      0xF: "FAILURE"})]
    problems = [] if op in t.CMD_NAMES else [f"unknown opcode {op:#x} (ILLEGAL_COMMAND_ERROR)"]
    return Decoded("AMD command", name, w, 32, _decode_fields(defs, v), tuple(problems))


# =========================================================================================
# Page-table entries
# =========================================================================================
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
    desc = describe(value, fmt, level)
    fields = tuple(DecodedField(f.name, "", f.value, f.meaning) for f in desc.fields)
    problems = (f"{desc.kind} descriptor",) if desc.kind == "invalid" else ()
    return Decoded(f"{fmt.name} PTE", f"{desc.level} {desc.kind}", (value,), 64, fields,
                   problems)


# =========================================================================================
# The table of kinds
# =========================================================================================
#: kind -> {vendor: decoder}; "" is the only vendor where a kind has one.
KINDS: dict[str, dict[str, Callable[[Sequence[int]], Decoded]]] = {
    "ste": {"smmu": decode_ste},
    "cd": {"smmu": decode_cd},
    "pasid-entry": {"vtd": decode_pasid_entry},
    "context-entry": {"vtd": decode_context_entry},
    "dte": {"amd": decode_dte},
    "gcr3": {"amd": decode_gcr3},
    "cmd": {"smmu": decode_smmu_cmd, "vtd": decode_vtd_desc, "amd": decode_amd_cmd},
}

#: Vendor spellings accepted on the command line.
VENDOR_ALIASES = {"smmu": "smmu", "arm": "smmu", "arm_smmu_v3": "smmu", "smmuv3": "smmu",
                  "vtd": "vtd", "intel": "vtd", "intel_vtd": "vtd", "amd": "amd",
                  "amd_vi": "amd", "amdvi": "amd"}

#: Machine driver name -> decode vendor.
DRIVER_VENDOR = {"arm_smmu_v3": "smmu", "intel_vtd": "vtd", "amd_vi": "amd"}


def decode(kind: str, words: Sequence[int], vendor: str | None = None) -> Decoded:
    """Decode ``words`` (low word first) as ``kind``; ``vendor`` picks among the decoders
    of an ambiguous kind (``cmd``)."""
    table = KINDS.get(kind)
    if table is None:
        raise DecodeError(f"unknown kind {kind!r} (one of {', '.join([*KINDS, 'pte'])})")
    if vendor is not None:
        v = VENDOR_ALIASES.get(vendor.lower())
        if v is None:
            raise DecodeError(f"unknown vendor {vendor!r}")
        if v not in table:
            raise DecodeError(f"{kind} is not a {v} structure (vendors: {', '.join(table)})")
        fn = table[v]
    elif len(table) == 1:
        fn = next(iter(table.values()))
    else:
        raise DecodeError(f"{kind} is ambiguous: give --vendor {'|'.join(table)}")
    limit = {"ste": 8, "cd": 8, "pasid-entry": 8, "context-entry": 4, "dte": 4, "gcr3": 1}
    n = limit.get(kind, 4)
    if len(words) > n:
        raise DecodeError(f"{kind} has at most {n} words, got {len(words)}")
    return fn(words)

"""The SMMUv3 structures the tools decode: STE, CD, commands, event records, and the ID
registers of ``IOMMU_GET_HW_INFO``.

Field positions are the driver's own masks (:mod:`drivers.arm_smmu_v3.regs`); the used
fields are the driver's used-bit rules (``arm_smmu_get_ste_used``/``_cd_used``, as the
hitless writer uses them); validity is the hardware model's own decode
(:func:`drivers.arm_smmu_v3.hw.decode.decode_ste`/``decode_cd``), run as is against the
unit's configuration: an entry is invalid exactly when the SMMU would raise an event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.arm_smmu_v3 import regs as r
from drivers.arm_smmu_v3.cd import arm_smmu_get_cd_used
from drivers.arm_smmu_v3.entry import Qwords
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.decode import DecodedSte, SmmuEvent
from drivers.arm_smmu_v3.hw.decode import decode_cd as hw_decode_cd
from drivers.arm_smmu_v3.hw.decode import decode_ste as hw_decode_ste
from drivers.arm_smmu_v3.ste import arm_smmu_get_ste_used
from iommu_core.describe import (
    BitField,
    DecodedField,
    Golden,
    Layout,
    Problem,
    Structure,
    Variant,
    Verdict,
    join_words,
    mask_field,
    unknown_bits,
    unused_notes,
)

_CACHE = {0: "NC", 1: "WBRA", 2: "WT", 3: "WB"}
_SH = {0: "NSH", 2: "OSH", 3: "ISH"}
_PS = dict(enumerate(("32-bit", "36-bit", "40-bit", "42-bit", "44-bit", "48-bit", "52-bit")))
_CONFIGS = {0: "ABORT", 4: "BYPASS", 5: "S1_TRANS", 6: "S2_TRANS", 7: "NESTED"}


_f = mask_field  # the tables below read like the kernel's GENMASK definitions


def unit_config(unit: Any) -> SmmuHwConfig:
    """The configuration of ``unit`` (an SMMU hardware model), or the default one."""
    cfg = getattr(unit, "cfg", None)
    return cfg if isinstance(cfg, SmmuHwConfig) else SmmuHwConfig()


def _q(words: tuple[int, ...]) -> Qwords:
    """Eight qwords, as the driver's and the model's functions type them."""
    q0, q1, q2, q3, q4, q5, q6, q7 = words
    return (q0, q1, q2, q3, q4, q5, q6, q7)


def _used_names(fields: Sequence[BitField], used: Sequence[int]) -> frozenset[str]:
    out = set()
    for d in fields:
        mask = ((1 << d.width) - 1) << (d.lo % 64)
        if used[d.lo // 64] & mask:
            out.add(d.name)
    return frozenset(out)


def _event(e: SmmuEvent) -> str:
    return f"{e.name}: {e.detail} (the SMMU would raise this event)"


# =========================================================================================
# Stream Table Entry
# =========================================================================================
def _vtcr(name: str, sub: int, meaning: str, values: Mapping[int, str] | None = None
          ) -> BitField:
    return _f(name, 2, r.FIELD_PREP(r.STRTAB_STE_2_VTCR, sub), meaning, values,
              kernel=f"STRTAB_STE_2_VTCR_{name}")


STE_LAYOUT = Layout(
    name="ste", title="STE", category="entry", words=8, kernel="struct arm_smmu_ste",
    doc="SMMUv3 Stream Table Entry (8 qwords)",
    fields=(
        _f("V", 0, r.STRTAB_STE_0_V, "valid", kernel="STRTAB_STE_0_V"),
        _f("CFG", 0, r.STRTAB_STE_0_CFG, "Config", _CONFIGS, kernel="STRTAB_STE_0_CFG"),
        _f("S1FMT", 0, r.STRTAB_STE_0_S1FMT, "CD table format",
           {0: "LINEAR", 1: "4K_L2", 2: "64K_L2"}, kernel="STRTAB_STE_0_S1FMT"),
        _f("S1CTXPTR", 0, r.STRTAB_STE_0_S1CTXPTR_MASK, "CD table address", addr=True,
           kernel="STRTAB_STE_0_S1CTXPTR_MASK"),
        _f("S1CDMAX", 0, r.STRTAB_STE_0_S1CDMAX, "log2 of the number of CDs (SSID bits)",
           kernel="STRTAB_STE_0_S1CDMAX"),
        _f("S1DSS", 1, r.STRTAB_STE_1_S1DSS, "no-SSID traffic",
           {0: "TERMINATE", 1: "BYPASS", 2: "SSID0"}, kernel="STRTAB_STE_1_S1DSS"),
        _f("S1CIR", 1, r.STRTAB_STE_1_S1CIR, "CD table inner cacheability", _CACHE,
           kernel="STRTAB_STE_1_S1CIR"),
        _f("S1COR", 1, r.STRTAB_STE_1_S1COR, "CD table outer cacheability", _CACHE,
           kernel="STRTAB_STE_1_S1COR"),
        _f("S1CSH", 1, r.STRTAB_STE_1_S1CSH, "CD table shareability", _SH,
           kernel="STRTAB_STE_1_S1CSH"),
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
        _vtcr("S2T0SZ", r.STRTAB_STE_2_VTCR_S2T0SZ, "64 - IPA bits"),
        _vtcr("S2SL0", r.STRTAB_STE_2_VTCR_S2SL0, "stage-2 start level"),
        _vtcr("S2IR0", r.STRTAB_STE_2_VTCR_S2IR0, "table inner cacheability", _CACHE),
        _vtcr("S2OR0", r.STRTAB_STE_2_VTCR_S2OR0, "table outer cacheability", _CACHE),
        _vtcr("S2SH0", r.STRTAB_STE_2_VTCR_S2SH0, "table shareability", _SH),
        _vtcr("S2TG", r.STRTAB_STE_2_VTCR_S2TG, "stage-2 granule",
              {0: "4K", 1: "64K", 2: "16K"}),
        _vtcr("S2PS", r.STRTAB_STE_2_VTCR_S2PS, "output size", _PS),
        _f("S2AA64", 2, r.STRTAB_STE_2_S2AA64, "AArch64 tables", kernel="STRTAB_STE_2_S2AA64"),
        _f("S2ENDI", 2, r.STRTAB_STE_2_S2ENDI, "big-endian tables",
           kernel="STRTAB_STE_2_S2ENDI"),
        _f("S2PTW", 2, r.STRTAB_STE_2_S2PTW, "protected table walk",
           kernel="STRTAB_STE_2_S2PTW"),
        _f("S2S", 2, r.STRTAB_STE_2_S2S, "stage-2 faults stall", kernel="STRTAB_STE_2_S2S"),
        _f("S2R", 2, r.STRTAB_STE_2_S2R, "stage-2 faults recorded", kernel="STRTAB_STE_2_S2R"),
        _f("S2TTB", 3, r.STRTAB_STE_3_S2TTB_MASK, "stage-2 table address", addr=True,
           kernel="STRTAB_STE_3_S2TTB_MASK"),
    ))


class Ste(Structure):
    layout = STE_LAYOUT
    golden = (
        Golden("invalid", (0,), valid=False),  # V=0: C_BAD_STE when a stream uses it
        Golden("abort", (r.STRTAB_STE_0_V,)),
        Golden("bypass", (r.STRTAB_STE_0_V | 4 << 1, 1 << 44)),
        Golden("s1_cd_table", (0xA000_0001_0080_402B, 0x1800_00D6)),
        # The tour's nested STE (S1 CD table in guest memory, S2 at VMID 2).
        Golden("nested", (0x100F, 0x0000_1000_0208_0002, 0x044D_3590_0000_0001,
                          0x1_0010_2000)),
        Golden("s1chk_without_nesting", (0x100B, 0x2000_0000), valid=False),
        Golden("reserved_config", (r.STRTAB_STE_0_V | 1 << 1,), valid=False),
        Golden("s2_aarch32", (r.STRTAB_STE_0_V | 6 << 1, 0, 0, 0x1000), valid=False),
    )

    def used(self, words: tuple[int, ...], unit: Any) -> frozenset[str]:
        return _used_names(self.layout.fields, arm_smmu_get_ste_used(_q(words)))

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        v = self.model_verdict(words, unit)
        return [] if v.accepted else [Problem(v.reason)]

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        try:
            hw_decode_ste(unit_config(unit), 0, _q(words))
        except SmmuEvent as e:
            return Verdict(False, _event(e))
        return Verdict(True)

    def notes(self, words: tuple[int, ...], fields: Sequence[DecodedField], unit: Any
              ) -> list[str]:
        notes = unused_notes(fields, "this Config")
        used = arm_smmu_get_ste_used(_q(words))
        extra = (unknown_bits(self.layout.fields, join_words(words, 64), 512)
                 & ~join_words(used, 64))
        if extra:
            notes.append(f"bits outside every field: {extra:#x}")
        return notes

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        q = words
        cfg = r.FIELD_GET(r.STRTAB_STE_0_CFG, q[0])
        s = "V=0 (invalid)" if not q[0] & 1 else f"Config={_CONFIGS.get(cfg, cfg)}"
        if q[0] & 1 and cfg & 1:
            s += f" CD table @ {q[0] & r.STRTAB_STE_0_S1CTXPTR_MASK:#x}"
        if q[0] & 1 and cfg & 2:
            s += (f" VMID {r.FIELD_GET(r.STRTAB_STE_2_S2VMID, q[2])} S2 table @ "
                  f"{q[3] & r.STRTAB_STE_3_S2TTB_MASK:#x}")
        return s


# =========================================================================================
# Context Descriptor
# =========================================================================================
_TCR = {"T0SZ", "TG0", "IRGN0", "ORGN0", "SH0", "EPD0", "EPD1", "IPS", "TBI0", "HD", "HA"}


def _c(name: str, word: int, mask: int, meaning: str,
       values: Mapping[int, str] | None = None, addr: bool = False, macro: str = ""
       ) -> BitField:
    return _f(name, word, mask, meaning, values, addr=addr,
              kernel=macro or f"CTXDESC_CD_{word}_{'TCR_' if name in _TCR else ''}{name}")


CD_LAYOUT = Layout(
    name="cd", title="CD", category="entry", words=8, kernel="struct arm_smmu_cd",
    doc="SMMUv3 Context Descriptor (8 qwords)",
    fields=(
        _c("T0SZ", 0, r.CTXDESC_CD_0_TCR_T0SZ, "64 - input bits"),
        _c("TG0", 0, r.CTXDESC_CD_0_TCR_TG0, "granule", {0: "4K", 1: "64K", 2: "16K"}),
        _c("IRGN0", 0, r.CTXDESC_CD_0_TCR_IRGN0, "table inner cacheability"),
        _c("ORGN0", 0, r.CTXDESC_CD_0_TCR_ORGN0, "table outer cacheability"),
        _c("SH0", 0, r.CTXDESC_CD_0_TCR_SH0, "table shareability", _SH),
        _c("EPD0", 0, r.CTXDESC_CD_0_TCR_EPD0, "TTB0 walks disabled"),
        _c("ENDI", 0, r.CTXDESC_CD_0_ENDI, "big-endian tables"),
        _c("EPD1", 0, r.CTXDESC_CD_0_TCR_EPD1, "TTB1 walks disabled"),
        _c("V", 0, r.CTXDESC_CD_0_V, "valid"),
        _c("IPS", 0, r.CTXDESC_CD_0_TCR_IPS, "output size", _PS),
        _c("TBI0", 0, r.CTXDESC_CD_0_TCR_TBI0, "top byte ignored"),
        _c("AA64", 0, r.CTXDESC_CD_0_AA64, "AArch64 tables"),
        _c("HD", 0, r.CTXDESC_CD_0_TCR_HD, "hardware dirty update"),
        _c("HA", 0, r.CTXDESC_CD_0_TCR_HA, "hardware access flag update"),
        _c("S", 0, r.CTXDESC_CD_0_S, "faults stall"),
        _c("R", 0, r.CTXDESC_CD_0_R, "faults recorded"),
        _c("A", 0, r.CTXDESC_CD_0_A, "abort on fault (no stall)"),
        _c("ASET", 0, r.CTXDESC_CD_0_ASET, "ASID set (shared with the CPU)"),
        _c("ASID", 0, r.CTXDESC_CD_0_ASID, "ASID"),
        _c("TTB0", 1, r.CTXDESC_CD_1_TTB0_MASK, "stage-1 table address", addr=True,
           macro="CTXDESC_CD_1_TTB0_MASK"),
        _f("MAIR", 3, (1 << 64) - 1, "memory attribute indirection",
           kernel="CTXDESC_CD_3_MAIR"),
    ))

#: What the SMMU checks a CD against: a stage-1-only STE (a CD is only read through one).
_S1_STE = DecodedSte(sid=0, raw=(0,) * 8, config=5, s1=True, s2=False)


class Cd(Structure):
    layout = CD_LAYOUT
    golden = (
        Golden("invalid", (0,), valid=False),  # the SMMU reports C_BAD_CD for V=0
        # The tour's guest CD: ASID 3, 48-bit input, 4K granule.
        Golden("s1_4k", (0x0003_E205_C000_3510, 0xC_0000, 0, 0xF404_FF44)),
        Golden("bad_granule", (r.CTXDESC_CD_0_V | r.CTXDESC_CD_0_AA64 | 16
                               | r.FIELD_PREP(r.CTXDESC_CD_0_TCR_TG0, 3), 0x1000),
               valid=False),
    )

    def used(self, words: tuple[int, ...], unit: Any) -> frozenset[str]:
        return _used_names(self.layout.fields, arm_smmu_get_cd_used(_q(words)))

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        v = self.model_verdict(words, unit)
        return [] if v.accepted else [Problem(v.reason)]

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        try:
            hw_decode_cd(unit_config(unit), _S1_STE, 0, _q(words))
        except SmmuEvent as e:
            return Verdict(False, _event(e))
        return Verdict(True)

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not d["V"]:
            return "V=0 (invalid)"
        if d["EPD0"]:
            return f"ASID {d['ASID']} EPD0 (no table)"
        return (f"ASID {d['ASID']} TTB0 {d['TTB0']:#x} {64 - d['T0SZ']}-bit input "
                f"{fields[1].text or '?'} granule")


# =========================================================================================
# Commands
# =========================================================================================
def _cmd_fields(name: str) -> tuple[BitField, ...]:
    """The operands of command ``name`` (the arm_smmu_make_cmd_* builders)."""
    if name.startswith("CFGI") or name == "PREFETCH_CFG":
        last = (_f("RANGE", 1, r.CMDQ_CFGI_1_RANGE, "range (31 = all)",
                   kernel="CMDQ_CFGI_1_RANGE") if name == "CFGI_ALL" else
                _f("LEAF", 1, r.CMDQ_CFGI_1_LEAF, "leaf only", kernel="CMDQ_CFGI_1_LEAF"))
        return (_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                _f("SSID", 0, r.CMDQ_CFGI_0_SSID, "SubstreamID", kernel="CMDQ_CFGI_0_SSID"),
                _f("SID", 0, r.CMDQ_CFGI_0_SID, "StreamID", kernel="CMDQ_CFGI_0_SID"),
                last)
    if name.startswith("TLBI"):
        return (_f("NUM", 0, r.CMDQ_TLBI_0_NUM, "range: number", kernel="CMDQ_TLBI_0_NUM"),
                _f("SCALE", 0, r.CMDQ_TLBI_0_SCALE, "range: scale",
                   kernel="CMDQ_TLBI_0_SCALE"),
                _f("VMID", 0, r.CMDQ_TLBI_0_VMID, "VMID", kernel="CMDQ_TLBI_0_VMID"),
                _f("ASID", 0, r.CMDQ_TLBI_0_ASID, "ASID", kernel="CMDQ_TLBI_0_ASID"),
                _f("LEAF", 1, r.CMDQ_TLBI_1_LEAF, "leaf only", kernel="CMDQ_TLBI_1_LEAF"),
                _f("TTL", 1, r.CMDQ_TLBI_1_TTL, "level hint", kernel="CMDQ_TLBI_1_TTL"),
                _f("TG", 1, r.CMDQ_TLBI_1_TG, "granule hint", kernel="CMDQ_TLBI_1_TG"),
                _f("ADDR", 1, r.CMDQ_TLBI_1_VA_MASK, "address", addr=True,
                   kernel="CMDQ_TLBI_1_VA_MASK"))
    if name == "ATC_INV":
        return (_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                _f("GLOBAL", 0, r.CMDQ_ATC_0_GLOBAL, "all SSIDs", kernel="CMDQ_ATC_0_GLOBAL"),
                _f("SSID", 0, r.CMDQ_ATC_0_SSID, "SubstreamID", kernel="CMDQ_ATC_0_SSID"),
                _f("SID", 0, r.CMDQ_ATC_0_SID, "StreamID", kernel="CMDQ_ATC_0_SID"),
                _f("SIZE", 1, r.CMDQ_ATC_1_SIZE, "log2 pages (52 = all)",
                   kernel="CMDQ_ATC_1_SIZE"),
                _f("ADDR", 1, r.CMDQ_ATC_1_ADDR_MASK, "address", addr=True,
                   kernel="CMDQ_ATC_1_ADDR_MASK"))
    if name == "PRI_RESP":
        return (_f("SSV", 0, r.CMDQ_0_SSV, "SubstreamID valid", kernel="CMDQ_0_SSV"),
                _f("SSID", 0, r.CMDQ_PRI_0_SSID, "SubstreamID", kernel="CMDQ_PRI_0_SSID"),
                _f("SID", 0, r.CMDQ_PRI_0_SID, "StreamID", kernel="CMDQ_PRI_0_SID"),
                _f("GRPID", 1, r.CMDQ_PRI_1_GRPID, "page request group",
                   kernel="CMDQ_PRI_1_GRPID"),
                _f("RESP", 1, r.CMDQ_PRI_1_RESP, "response",
                   {0: "DENY", 1: "FAIL", 2: "SUCC"}, kernel="CMDQ_PRI_1_RESP"))
    if name == "RESUME":
        return (_f("RESP", 0, r.CMDQ_RESUME_0_RESP, "response",
                   {0: "TERM", 1: "RETRY", 2: "ABORT"}, kernel="CMDQ_RESUME_0_RESP"),
                _f("SID", 0, r.CMDQ_RESUME_0_SID, "StreamID", kernel="CMDQ_RESUME_0_SID"),
                _f("STAG", 1, r.CMDQ_RESUME_1_STAG, "stall tag", kernel="CMDQ_RESUME_1_STAG"))
    if name == "CMD_SYNC":
        return (_f("CS", 0, r.CMDQ_SYNC_0_CS, "completion signal",
                   {0: "NONE", 1: "IRQ", 2: "SEV"}, kernel="CMDQ_SYNC_0_CS"),
                _f("MSIDATA", 0, r.CMDQ_SYNC_0_MSIDATA, "MSI data",
                   kernel="CMDQ_SYNC_0_MSIDATA"),
                _f("MSIADDR", 1, r.CMDQ_SYNC_1_MSIADDR_MASK, "MSI address", addr=True,
                   kernel="CMDQ_SYNC_1_MSIADDR_MASK"))
    return ()


CMD_LAYOUT = Layout(
    name="cmd", title="SMMU command", category="command", words=2,
    kernel="struct arm_smmu_cmdq_ent", doc="SMMUv3 command queue entry (2 qwords)",
    fields=(_f("OP", 0, r.CMDQ_0_OP, "opcode", r.CMDQ_OP_NAMES, kernel="CMDQ_0_OP"),),
    selector="OP",
    variants=tuple(Variant(n, (op,), _cmd_fields(n)) for op, n in r.CMDQ_OP_NAMES.items()))


class Cmd(Structure):
    layout = CMD_LAYOUT
    golden = (
        Golden("tlbi_nh_va", (r.CMDQ_OP_TLBI_NH_VA | 3 << 48, 0x7F00_0000_0000 | 1)),
        Golden("cfgi_cd", (r.CMDQ_OP_CFGI_CD | 0x42 << 32 | r.CMDQ_0_SSV | 5 << 12, 1)),
        Golden("cmd_sync", (r.CMDQ_OP_CMD_SYNC,)),
        Golden("unknown_opcode", (0x99,), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        op = words[0] & 0xFF
        if op in r.CMDQ_OP_NAMES:
            return []
        return [Problem(f"unknown opcode {op:#x} (CERROR_ILL)")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        op = words[0] & 0xFF
        return r.CMDQ_OP_NAMES.get(op, f"opcode {op:#x}")


# =========================================================================================
# Event records
# =========================================================================================
_EVT_SID = _f("SID", 0, r.EVTQ_0_SID, "StreamID", kernel="EVTQ_0_SID")
_EVT_SSV = _f("SSV", 0, r.EVTQ_0_SSV, "SubstreamID valid", kernel="EVTQ_0_SSV")
_EVT_SSID = _f("SSID", 0, r.EVTQ_0_SSID, "SubstreamID", kernel="EVTQ_0_SSID")
_EVT_ACCESS = (
    _f("STAG", 1, r.EVTQ_1_STAG, "stall tag", kernel="EVTQ_1_STAG"),
    _f("STALL", 1, r.EVTQ_1_STALL, "the transaction stalled", kernel="EVTQ_1_STALL"),
    _f("PnU", 1, r.EVTQ_1_PnU, "privileged", kernel="EVTQ_1_PnU"),
    _f("InD", 1, r.EVTQ_1_InD, "instruction fetch", kernel="EVTQ_1_InD"),
    _f("RnW", 1, r.EVTQ_1_RnW, "read", kernel="EVTQ_1_RnW"),
    _f("S2", 1, r.EVTQ_1_S2, "stage-2 fault", kernel="EVTQ_1_S2"),
    _f("CLASS", 1, r.EVTQ_1_CLASS, "what was accessed", {0: "CD", 1: "TT", 2: "IN"},
       kernel="EVTQ_1_CLASS"),
    _f("TT_READ", 1, r.EVTQ_1_TT_READ, "a table-walk read", kernel="EVTQ_1_TT_READ"),
    _f("ADDR", 2, r.EVTQ_2_ADDR, "input address", kernel="EVTQ_2_ADDR"),
)
_EVT_IPA = _f("IPA", 3, r.EVTQ_3_IPA, "intermediate physical address", addr=True,
              kernel="EVTQ_3_IPA")
_EVT_FETCH = _f("FETCH_ADDR", 3, r.EVTQ_3_FETCH_ADDR, "the fetch that failed", addr=True,
                kernel="EVTQ_3_FETCH_ADDR")
_FETCH_IDS = (r.EVT_ID_STE_FETCH_FAULT, r.EVT_ID_CD_FETCH_FAULT, r.EVT_ID_VMS_FETCH_FAULT)


def _evt_fields(evt_id: int) -> tuple[BitField, ...]:
    """The record of each event (the layouts the model's ``event_record`` writes)."""
    if evt_id in (r.EVT_ID_BAD_STREAMID_CONFIG, r.EVT_ID_BAD_STE_CONFIG,
                  r.EVT_ID_BAD_CD_CONFIG):
        return (_EVT_SSV, _EVT_SSID, _EVT_SID)
    if evt_id == r.EVT_ID_STREAM_DISABLED_FAULT:
        return (_EVT_SID,)
    if evt_id == r.EVT_ID_BAD_SUBSTREAMID_CONFIG:
        return (_EVT_SSID, _EVT_SID)
    return (_EVT_SSV, _EVT_SSID, _EVT_SID, *_EVT_ACCESS,
            _EVT_FETCH if evt_id in _FETCH_IDS else _EVT_IPA)


EVENT_LAYOUT = Layout(
    name="event", title="SMMU event", category="event", words=4,
    kernel="u64 evt[EVTQ_ENT_DWORDS]", doc="SMMUv3 event queue record (4 qwords)",
    fields=(_f("ID", 0, r.EVTQ_0_ID, "event", r.EVENT_NAMES, kernel="EVTQ_0_ID"),),
    selector="ID",
    variants=tuple(Variant(n, (i,), _evt_fields(i)) for i, n in r.EVENT_NAMES.items()))


class Event(Structure):
    layout = EVENT_LAYOUT
    golden = (
        Golden("translation", (r.EVT_ID_TRANSLATION_FAULT | 8 << 32, 1 << 35 | 1 << 40,
                               0x7F00_0000_0000, 0x10_0000)),
        Golden("unknown_id", (0x77,), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        evt = words[0] & 0xFF
        return [] if evt in r.EVENT_NAMES else [Problem(f"no event has id {evt:#x}")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        evt = words[0] & 0xFF
        name = r.EVENT_NAMES.get(evt, f"event {evt:#x}")
        return f"{name} StreamID {r.FIELD_GET(r.EVTQ_0_SID, words[0]):#x}"


# =========================================================================================
# ID registers (the hw_info payload)
# =========================================================================================
#: Suffixes of the enumerated values that sit beside the field masks in regs.py.
_ENUM_SUFFIXES = ("_AARCH64", "_AARCH32_64", "_2LVL", "_STALL", "_NONE", "_FORCE", "_MIXED",
                  "_LE", "_BE", "_ACCESS", "_ACCESS_DIRTY", "_52_BIT", "_ARM", "_MMU_600",
                  "_MMU_700")


def _register(name: str, prefix: str, doc: str) -> Layout:
    """A 32-bit ID register from its ``PREFIX_FIELD`` masks in regs.py (in their order),
    value names from the ``PREFIX_FIELD_VALUE`` constants beside them."""
    consts = vars(r)
    fields = []
    for n, m in consts.items():
        if (n.startswith(prefix) and isinstance(m, int) and not isinstance(m, bool) and m > 0
                and not n.endswith(_ENUM_SUFFIXES)):
            values = {v: e[len(n) + 1:] for e, v in consts.items()
                      if e.startswith(n + "_") and e.endswith(_ENUM_SUFFIXES)
                      and isinstance(v, int)}
            fields.append(mask_field(n[len(prefix):], 0, m, values=values, kernel=n,
                                     word_bits=32))
    return Layout(name=name.lower(), title=name, category="register", words=1, word_bits=32,
                  fields=tuple(fields), doc=doc, kernel=f"ARM_SMMU_{name}")


IDR_LAYOUTS = {i: _register(f"IDR{i}", f"IDR{i}_", f"SMMUv3 ID register {i}")
               for i in (0, 1, 3, 5)}
IIDR_LAYOUT = _register("IIDR", "IIDR_", "SMMUv3 implementation ID register")
AIDR_LAYOUT = Layout(
    name="aidr", title="AIDR", category="register", words=1, word_bits=32,
    # ArchMajorRev (bits 7:4) is 0 for every SMMUv3: what a VMM compares is the minor.
    fields=(BitField("ArchMinorRev", 3, 0, "SMMUv3.x minor revision", kernel="ARM_SMMU_AIDR"),),
    doc="SMMUv3 architecture ID register", kernel="ARM_SMMU_AIDR")



STRUCTURES: tuple[Structure, ...] = (
    Ste(), Cd(), Cmd(), Event(),
    *(Structure(lay) for lay in IDR_LAYOUTS.values()), Structure(IIDR_LAYOUT),
    Structure(AIDR_LAYOUT),
)

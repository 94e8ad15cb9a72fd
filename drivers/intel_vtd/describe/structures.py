"""The VT-d structures the tools decode: the scalable-mode PASID entry, the context entry
(scalable and legacy), invalidation descriptors, and CAP/ECAP.

Field positions are the specification's bit numbers the driver's setters use
(``pasid_set_*``, ``context_*``); the validity rules give the fault the hardware
reports, in the order the hardware model checks; and the model's own check
(:meth:`~drivers.intel_vtd.hw.intel_iommu.VtdHardware._read_pasid_entry` and
``_read_context`` on a scratch unit of the same configuration) runs too, so an entry is
never called valid when the unit would refuse it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw import faults as fr
from drivers.intel_vtd.hw.config import VtdConfig
from drivers.intel_vtd.hw.intel_iommu import CtxInfo, VtdFault, VtdHardware
from iommu_core.describe import (
    BitField,
    DecodedField,
    Golden,
    Layout,
    Problem,
    Structure,
    Variant,
    Verdict,
    unused_notes,
)
from iommu_core.platform.platform import Platform

_PGTT = {1: "FL_ONLY (first stage)", 2: "SL_ONLY (second stage)", 3: "NESTED", 4: "PT"}
_AW = {1: "39-bit 3-level", 2: "48-bit 4-level", 3: "57-bit 5-level"}


_b = BitField  # the specification's absolute bit numbers, as the pasid_set_* setters use


def unit_config(unit: Any) -> VtdConfig:
    cfg = getattr(unit, "cfg", None)
    return cfg if isinstance(cfg, VtdConfig) else VtdConfig()


def _caps(unit: Any) -> tuple[int, int]:
    cfg = unit_config(unit)
    return cfg.cap(), cfg.ecap()


# -- the model's own checks, on a scratch unit ------------------------------------------------
_ROOT = 0x1000  # root table
_TABLE = 0x2000  # context table / PASID directory
_LEAF = 0x3000  # PASID table


def _scratch(unit: Any, scalable: bool) -> VtdHardware:
    """A unit of ``unit``'s configuration, its root table at _ROOT (latched through
    RTADDR and GCMD.SRTP as the driver does). One per configuration: the checks call
    the model's table readers directly, which consult no cache, and rewrite every word
    they read."""
    return _scratch_for(unit_config(unit), scalable)


@functools.lru_cache(maxsize=16)
def _scratch_for(cfg: VtdConfig, scalable: bool) -> VtdHardware:
    hw = VtdHardware("describe", cfg, Platform())
    regs = hw.mmio["regs"]
    regs.write64(h.DMAR_RTADDR_REG, _ROOT | (h.DMA_RTADDR_SMT if scalable else 0))
    regs.write32(h.DMAR_GCMD_REG, h.DMA_GCMD_SRTP)
    hw.mem.write_u64(_ROOT, _TABLE | 1)  # bus 0: the context table
    return hw


def _refused(e: VtdFault) -> Verdict:
    return Verdict(False, f"the unit refuses it: fault {e.code:#x} "
                   f"({fr.fault_text(e.code)})")


# =========================================================================================
# Scalable-mode PASID entry
# =========================================================================================
PASID_LAYOUT = Layout(
    name="pasid-entry", title="PASID entry", category="entry", words=8,
    kernel="struct pasid_entry", doc="VT-d scalable-mode PASID entry (8 qwords)",
    fields=(
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
    ))

#: The fields each PGTT reads.
_PASID_USED = {
    1: frozenset({"P", "FPD", "AW", "PGTT", "DID", "PWSNP", "PGSNP", "SRE", "FSPM", "WPE",
                  "EAFE", "FSPTPTR"}),
    2: frozenset({"P", "FPD", "AW", "PGTT", "SSADE", "SSPTPTR", "DID", "PWSNP", "PGSNP"}),
    3: frozenset(f.name for f in PASID_LAYOUT.fields),
    4: frozenset({"P", "FPD", "AW", "PGTT", "DID", "PWSNP", "PGSNP"}),
}


class PasidEntry(Structure):
    layout = PASID_LAYOUT
    golden = (
        Golden("not_present", (0,)),
        # The tour's entries: first stage, then nested.
        Golden("first_stage", (0x49, 0x1800001, 0x60000)),
        Golden("nested", (0x1001820c9, 0x1800002, 0x60000)),
        Golden("pass_through", (0x109, 0x800001)),
        Golden("reserved_pgtt", (0x141, 1), valid=False),
        Golden("aw_not_in_sagaw", (0x1000_008D, 1), valid=False),
        Golden("reserved_bits", (0x101, 1, 0, 0, 1), valid=False),
    )

    def used(self, words: tuple[int, ...], unit: Any) -> frozenset[str]:
        if not words[0] & 1:
            return frozenset({"P"})
        return _PASID_USED.get((words[0] >> 6) & 7, frozenset({"P", "PGTT"}))

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        w, d = words, values
        if not w[0] & 1:
            return []
        cap, ecap = _caps(unit)
        pgtt = d["PGTT"]
        out = []
        if (w[0] & (h.genmask(11, 10) | 1 << 5) or w[1] & h.genmask(63, 25)
                or w[1] & h.genmask(22, 16) or w[2] & (h.genmask(11, 8) | 0b1000010)
                or any(w[3:])):
            out.append(Problem("reserved bits set (fault 0x5a, PASID entry reserved)"))
        if pgtt not in _PGTT:
            out.append(Problem(f"PGTT {pgtt} is reserved (fault 0x5b)"))
        if d["FSPM"] > 1:
            out.append(Problem(f"FSPM {d['FSPM']} is reserved"))
        if d["SRE"] and not h.ecap_srs(ecap):
            out.append(Problem("SRE without ECAP.SRS"))
        if d["EAFE"] and not h.ecap_eafs(ecap):
            out.append(Problem("EAFE without ECAP.EAFS"))
        if d["SSADE"] and not h.ecap_slads(ecap):
            out.append(Problem("SSADE without ECAP.SLADS"))
        if pgtt in (2, 3) and not h.cap_sagaw(cap) >> d["AW"] & 1:
            out.append(Problem(f"AW {d['AW']} is not in CAP.SAGAW {h.cap_sagaw(cap):#b}"))
        if pgtt in (1, 3) and not d["FSPTPTR"]:
            out.append(Problem("first stage used but FSPTPTR is 0", hw=False))
        if pgtt in (2, 3) and not d["SSPTPTR"]:
            out.append(Problem("second stage used but SSPTPTR is 0", hw=False))
        return out

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        if not words[0] & 1:
            return Verdict(True)  # not present: blocks DMA, but a legal entry
        hw = _scratch(unit, True)
        hw.mem.write_u64(_TABLE, _LEAF | 1)  # PASID directory entry 0
        for i, w in enumerate(words):
            hw.mem.write_u64(_LEAF + 8 * i, w)
        try:
            hw._read_pasid_entry(CtxInfo(sm=True, fpd=False, pasid_dir=_TABLE), 0)
        except VtdFault as e:
            return _refused(e)
        return Verdict(True)

    def notes(self, words: tuple[int, ...], fields: Sequence[DecodedField], unit: Any
              ) -> list[str]:
        return unused_notes(fields, f"PGTT {(words[0] >> 6) & 7}")

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not words[0] & 1:
            return "P=0 (not present)"
        pgtt = d["PGTT"]
        s = f"PGTT={_PGTT.get(pgtt, pgtt)} DID {d['DID']}"
        if pgtt in (1, 3):
            s += f" FSPTPTR {d['FSPTPTR']:#x}"
        if pgtt in (2, 3):
            s += f" SSPTPTR {d['SSPTPTR']:#x}"
        return s


# =========================================================================================
# Context entries
# =========================================================================================
SM_CONTEXT_LAYOUT = Layout(
    name="context-entry", title="context entry (scalable)", category="entry", words=4,
    kernel="struct context_entry", doc="VT-d scalable-mode context entry (4 qwords)",
    fields=(
        _b("P", 0, 0, "present", kernel="CONTEXT_P"),
        _b("FPD", 1, 1, "fault processing disable", kernel="CONTEXT_FPD"),
        _b("DTE", 2, 2, "device-TLB (ATS) enable", kernel="CONTEXT_DTE"),
        _b("PASIDE", 3, 3, "PASID-tagged requests allowed", kernel="CONTEXT_PASIDE"),
        _b("PRE", 4, 4, "page requests enable", kernel="CONTEXT_PRE"),
        _b("PDTS", 11, 9, "PASID directory size (2^(PDTS+7) entries)", kernel="context_pdts"),
        _b("PASIDDIRPTR", 63, 12, "PASID directory", addr=True,
           kernel="context_entry_set_pasid_table"),
        _b("RID_PASID", 83, 64, "PASID for requests without one",
           kernel="context_set_sm_rid2pasid"),
    ))
LEGACY_CONTEXT_LAYOUT = Layout(
    name="context-entry-legacy", title="context entry (legacy)", category="entry", words=2,
    kernel="struct context_entry", doc="VT-d legacy-mode context entry (2 qwords)",
    fields=(
        _b("P", 0, 0, "present", kernel="context_set_present"),
        _b("FPD", 1, 1, "fault processing disable", kernel="context_set_fault_enable"),
        _b("TT", 3, 2, "translation type", {0: "MULTI_LEVEL", 1: "DEV_IOTLB", 2: "PASS_THROUGH"},
           kernel="context_set_translation_type"),
        _b("SLPTPTR", 63, 12, "second-level table", addr=True,
           kernel="context_set_address_root"),
        _b("AW", 66, 64, "address width", _AW, kernel="context_set_address_width"),
        _b("DID", 87, 72, "domain id", kernel="context_set_domain_id"),
    ))


class _ContextEntry(Structure):
    scalable = True

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        if not words[0] & 1:
            return Verdict(True)
        hw = _scratch(unit, self.scalable)
        for i, w in enumerate(words):
            hw.mem.write_u64(_TABLE + 8 * i, w)
        try:
            hw._read_context(0)
        except VtdFault as e:
            return _refused(e)
        return Verdict(True)


class ScalableContextEntry(_ContextEntry):
    layout = SM_CONTEXT_LAYOUT
    golden = (
        Golden("not_present", (0,)),
        Golden("pasid_table", (0x88001F, 1)),
        Golden("reserved_bits", (0x88001F | 1 << 6, 1), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        w, d = words, values
        if not d["P"]:
            return []
        _cap, ecap = _caps(unit)
        out = []
        if w[0] & h.genmask(8, 5) or w[1] & h.genmask(63, 20) or any(w[2:]):
            out.append(Problem("reserved bits set (fault 0x42)"))
        if d["DTE"] and not h.ecap_dev_iotlb_support(ecap):
            out.append(Problem("DTE without ECAP.DT (fault 0x43)"))
        if d["PRE"] and not h.ecap_prs(ecap):
            out.append(Problem("PRE without ECAP.PRS (fault 0x43)"))
        if d["PRE"] and not d["DTE"]:
            out.append(Problem("PRE needs DTE: page requests come from ATS devices", hw=False))
        return out

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not d["P"]:
            return "P=0 (not present)"
        return (f"scalable PASID dir {d['PASIDDIRPTR']:#x} ({1 << (d['PDTS'] + 7)} entries)"
                f" RID_PASID {d['RID_PASID']}")


class LegacyContextEntry(_ContextEntry):
    layout = LEGACY_CONTEXT_LAYOUT
    scalable = False
    golden = (
        Golden("not_present", (0,)),
        Golden("multi_level", (0x1234567001, 0xBEEF02)),
        Golden("reserved_tt", (0x1234567000 | 3 << 2 | 1, 0xBEEF02), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        w, d = words, values
        if not d["P"]:
            return []
        cap, _ecap = _caps(unit)
        out = []
        if w[0] & h.genmask(11, 4) or w[1] & (h.genmask(7, 3) | h.genmask(63, 24)):
            out.append(Problem("reserved bits set (fault 0x0b)"))
        if d["TT"] == 3:
            out.append(Problem("TT 3 is reserved (fault 0x03)"))
        elif d["TT"] != 2 and not h.cap_sagaw(cap) >> d["AW"] & 1:
            out.append(Problem(f"AW {d['AW']} is not in CAP.SAGAW (fault 0x03)"))
        return out

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not d["P"]:
            return "P=0 (not present)"
        return f"legacy TT={fields[2].text} DID {d['DID']} table {d['SLPTPTR']:#x}"


# =========================================================================================
# Invalidation descriptors
# =========================================================================================
def _desc_fields(t: int) -> tuple[BitField, ...]:
    """The fields of each descriptor type (the ``qi_desc_*`` builders)."""
    gran = {1: "GLOBAL", 2: "DOMAIN", 3: "DEVICE/PAGE"}
    if t == h.QI_CC_TYPE:
        return (_b("G", 5, 4, "granularity", gran), _b("DID", 31, 16, "domain id"),
                _b("SID", 47, 32, "source id"), _b("FM", 49, 48, "function mask"))
    if t == h.QI_IOTLB_TYPE:
        return (_b("G", 5, 4, "granularity", {1: "GLOBAL", 2: "DSI", 3: "PSI"}),
                _b("DW", 6, 6, "drain writes"), _b("DR", 7, 7, "drain reads"),
                _b("DID", 31, 16, "domain id"), _b("AM", 69, 64, "address mask (log2 pages)"),
                _b("IH", 70, 70, "invalidation hint (leaf)"),
                _b("ADDR", 127, 76, "address", addr=True))
    if t == h.QI_EIOTLB_TYPE:
        return (_b("G", 5, 4, "granularity", {2: "PASID", 3: "PAGE"}),
                _b("DID", 31, 16, "domain id"), _b("PASID", 51, 32, "PASID"),
                _b("AM", 69, 64, "address mask (log2 pages)"),
                _b("IH", 70, 70, "invalidation hint (leaf)"),
                _b("ADDR", 127, 76, "address", addr=True))
    if t == h.QI_PC_TYPE:
        return (_b("G", 5, 4, "granularity", {0: "ALL_PASIDS", 1: "PASID_SEL", 3: "GLOBAL"}),
                _b("DID", 31, 16, "domain id"), _b("PASID", 51, 32, "PASID"))
    if t in (h.QI_DIOTLB_TYPE, h.QI_DEIOTLB_TYPE):
        pas = t == h.QI_DEIOTLB_TYPE
        out = (_b("SID", 31 if pas else 47, 16 if pas else 32, "source id"),
               _b("S", 75 if pas else 64, 75 if pas else 64, "size bit"),
               _b("ADDR", 127, 76, "address", addr=True))
        return (*out, _b("PASID", 51, 32, "PASID")) if pas else out
    if t == h.QI_IWD_TYPE:
        return (_b("IF", 4, 4, "interrupt"), _b("SW", 5, 5, "status write"),
                _b("FN", 6, 6, "fence"), _b("PD", 7, 7, "page-request drain"),
                _b("DATA", 63, 32, "status data"),
                _b("ADDR", 127, 66, "status address", addr=True))
    if t == h.QI_PGRP_RESP_TYPE:
        return (_b("PP", 4, 4, "PASID present"),
                _b("RC", 15, 12, "response code", {0: "SUCCESS", 1: "INVALID", 0xF: "FAILURE"}),
                _b("RID", 31, 16, "requester id"), _b("PASID", 51, 32, "PASID"),
                _b("LPIG", 66, 66, "last page in group"), _b("PRGI", 75, 67, "group index"))
    return ()


DESC_LAYOUT = Layout(
    name="cmd", title="VT-d descriptor", category="command", words=4,
    kernel="struct qi_desc", doc="VT-d invalidation queue descriptor (2 or 4 qwords)",
    fields=(_b("TYPE", 3, 0, "descriptor type", h.QI_DESC_NAMES),), selector="TYPE",
    variants=tuple(Variant(n, (t,), _desc_fields(t)) for t, n in h.QI_DESC_NAMES.items()))


class Descriptor(Structure):
    layout = DESC_LAYOUT
    golden = (
        Golden("pasid_iotlb", tuple(h.qi_desc_piotlb(0x33, 0xF_FFFF, 0x20_0000, 9, 1).words())),
        Golden("wait", (h.QI_IWD_TYPE | 1 << 5 | 1 << 32, 0x1000)),
        Golden("unknown_type", (0xF,), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        t = words[0] & 0xF
        return [] if t in h.QI_DESC_NAMES else [Problem(f"unknown descriptor type {t} (IQE)")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        t = words[0] & 0xF
        return h.QI_DESC_NAMES.get(t, f"type {t:#x}")


# =========================================================================================
# CAP / ECAP (the hw_info payload)
# =========================================================================================
def _register(name: str, prefix: str, doc: str) -> Layout:
    """A 64-bit register from the ``PREFIX_FIELD = (hi, lo)`` definitions of iommu_h."""
    fields = tuple(BitField(n[len(prefix):], f[0], f[1], kernel=n)
                   for n, f in vars(h).items()
                   if n.startswith(prefix) and isinstance(f, tuple) and len(f) == 2)
    return Layout(name=name.lower(), title=name, category="register", words=1, fields=fields,
                  doc=doc, kernel=f"DMAR_{name}_REG")


CAP_LAYOUT = _register("CAP", "CAP_", "VT-d capability register")
ECAP_LAYOUT = _register("ECAP", "ECAP_", "VT-d extended capability register")



STRUCTURES: tuple[Structure, ...] = (
    PasidEntry(), ScalableContextEntry(), LegacyContextEntry(), Descriptor(),
    Structure(CAP_LAYOUT), Structure(ECAP_LAYOUT),
)

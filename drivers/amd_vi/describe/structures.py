"""The AMD-Vi structures the tools decode: the Device Table Entry, GCR3 table entries,
commands, event log records, and EFR/EFR2.

Field positions are the driver's masks (:mod:`drivers.amd_vi.amd_iommu_types`); the
DTE's rules name what the IOMMU refuses (an ILLEGAL_DEV_TABLE_ENTRY event) in the order
the hardware model checks, and the model's own DTE fetch
(:meth:`~drivers.amd_vi.hw.amd_iommu.AmdIommuHw._fetch_dte`, on a scratch unit of the
same configuration) runs too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.amd_vi import amd_iommu_types as t
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw, _XlateFault
from drivers.amd_vi.hw.config import AmdViFeatures
from iommu_core.describe import (
    BitField,
    DecodedField,
    Golden,
    Layout,
    Problem,
    Structure,
    Variant,
    Verdict,
    mask_field,
)
from iommu_core.platform.platform import Platform

_f = mask_field  # a field from a per-qword mask of amd_iommu_types
_b = BitField  # a field at the specification's absolute bit numbers


def unit_features(unit: Any) -> AmdViFeatures:
    f = getattr(unit, "features", None)
    return f if isinstance(f, AmdViFeatures) else AmdViFeatures()


# =========================================================================================
# Device Table Entry
# =========================================================================================
DTE_LAYOUT = Layout(
    name="dte", title="DTE", category="entry", words=4, kernel="struct dev_table_entry",
    doc="AMD-Vi Device Table Entry (4 qwords)",
    fields=(
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
    ))

_DEV_TABLE = 0x1000  # scratch device table (one page: 128 DTEs)


@functools.lru_cache(maxsize=16)
def _scratch(feats: AmdViFeatures, ctl: int) -> AmdIommuHw:
    """A unit of this configuration with its device table at _DEV_TABLE. One per
    configuration: ``_fetch_dte`` reads the entry afresh (it fills the DTE cache, never
    consults it) and every check rewrites the four qwords."""
    hw = AmdIommuHw("describe", feats, Platform())
    regs = hw.mmio["regs"]
    regs.write64(t.MMIO_CONTROL_OFFSET, ctl)
    regs.write64(t.MMIO_DEV_TABLE_OFFSET, _DEV_TABLE)  # one page
    return hw


class Dte(Structure):
    layout = DTE_LAYOUT
    golden = (
        Golden("no_translation", (0,)),
        Golden("blocked", (t.DTE_FLAG_V | t.DTE_FLAG_TV,)),
        # The tour's nested DTE: v1 Mode 4 host table, GCR3 table in guest memory.
        Golden("nested", (0x64C0_0001_0018_3803, 0x1_0000_0005)),
        Golden("gcr3", (0x79D0_0000_0000_0003, 0x1001_468A_0007)),
        Golden("mode7", (0x3 | 7 << 9 | 0x1000,), valid=False),
        Golden("glx3", (0x3 | 1 << 55 | 3 << 56 | 1 << 12,), valid=False),
    )

    def finish(self, words: tuple[int, ...], fields: list[DecodedField]) -> list[DecodedField]:
        at = next(i for i, f in enumerate(fields) if f.name == "IR")
        fields.insert(at, DecodedField("GCR3 root", "(3 pieces)", t.dte_gcr3_root(words),
                                       "GCR3 table root, assembled"))
        return fields

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        d = values
        f = unit_features(unit)
        out: list[Problem] = []
        if d["V"] and d["TV"]:
            mode = d["Mode"]
            if mode == 7:
                out.append(Problem("Mode 7 is reserved (ILLEGAL_DEV_TABLE_ENTRY)"))
            elif mode > f.hats + 4:
                out.append(Problem(f"Mode {mode} exceeds the {f.hats + 4} host levels "
                                   "implemented"))
            if (d["HAD"] and not (f.hasup or f.hdsup)) or (d["HAD"] == 3 and not f.hdsup):
                out.append(Problem("HAD set without host access/dirty support"))
            if d["PPR"] and not f.ppr:
                out.append(Problem("PPR set without PPR support"))
            if d["GV"]:
                if d["GLX"] == 3 or d["GLX"] > f.glx:
                    out.append(Problem(f"GLX {d['GLX']} not supported"))
                if not d["GCR3 root"]:
                    out.append(Problem("GV set but the GCR3 table root is 0", hw=False))
                if d["GPT_LEVEL"] > 1:
                    out.append(Problem(f"GPT level {d['GPT_LEVEL']} is reserved"))
            elif d["GIoV"]:
                out.append(Problem("GIoV without GV has no GCR3 table to use", hw=False))
            if mode and not d["HostPtr"]:
                out.append(Problem(f"Mode {mode} with a null host page-table root", hw=False))
        elif d["V"] and (d["Mode"] or d["GV"]):
            out.append(Problem("translation fields set but TV = 0: they are ignored", hw=False))
        return out

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        feats = unit_features(unit)
        ctl = 0
        if unit is not None:  # the unit's guest-translation enable, as its driver set it
            ctl = unit.mmio["regs"].read64(t.MMIO_CONTROL_OFFSET) & 1 << t.CONTROL_GT_EN
        elif feats.gt:
            ctl = 1 << t.CONTROL_GT_EN
        hw = _scratch(feats, ctl)
        for i, w in enumerate(words):
            hw.mem.write_u64(_DEV_TABLE + 8 * i, w)
        try:
            hw._fetch_dte(0)
        except _XlateFault as e:
            return Verdict(False, f"{e.why} (ILLEGAL_DEV_TABLE_ENTRY)")
        return Verdict(True)

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not d["V"]:
            return "V=0 (no translation: DMA passes through untranslated)"
        if not d["TV"]:
            return "V=1 TV=0 (DMA blocked)"
        parts = [f"DomainID {d['DomainID']:#x}"]
        parts.append(f"v1 Mode {d['Mode']} root {d['HostPtr']:#x}" if d["Mode"] else
                     "no host translation")
        if d["GV"]:
            parts.append(f"GCR3 table {d['GCR3 root']:#x}{' (GIoV)' if d['GIoV'] else ''}")
        return " ".join(parts)


# =========================================================================================
# GCR3 table entry
# =========================================================================================
GCR3_LAYOUT = Layout(
    name="gcr3", title="GCR3 entry", category="entry", words=1,
    doc="AMD-Vi GCR3 table entry (1 qword)",
    fields=(_b("V", 0, 0, "valid", kernel="GCR3_VALID"),
            _b("CR3", 51, 12, "guest page-table root (x86-64 format)", addr=True,
               kernel="GCR3_ADDR_MASK")))
_GCR3_OK = (1 << 52) - 1 & ~0xFFF | 1


class Gcr3(Structure):
    layout = GCR3_LAYOUT
    golden = (Golden("valid", (0x60001,)), Golden("reserved", (0x60001 | 1 << 60,), valid=False))

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        rsvd = words[0] & ~_GCR3_OK
        return [Problem(f"reserved bits set: {rsvd:#x}")] if rsvd else []

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        return f"CR3 {values['CR3']:#x}" if words[0] & 1 else "not valid"


# =========================================================================================
# Commands (four 32-bit words)
# =========================================================================================
def _cmd_fields(op: int) -> tuple[BitField, ...]:
    """The operands of each command (the driver's ``build_*`` functions)."""
    if op == t.CMD_COMPL_WAIT:
        return (_b("S", 0, 0, "store"), _b("I", 1, 1, "interrupt"),
                _b("ADDR", 51, 3, "store address", addr=True), _b("DATA", 127, 64, "store data"))
    if op == t.CMD_INV_DEV_ENTRY:
        return (_b("DeviceID", 15, 0, "device table index"),)
    if op in (t.CMD_INV_IOMMU_PAGES, t.CMD_INV_IOTLB_PAGES):
        head: tuple[BitField, ...]
        if op == t.CMD_INV_IOMMU_PAGES:
            head = (_b("PASID", 19, 0, "PASID (GN=1)"), _b("DomainID", 47, 32, "domain"))
        else:  # build_inv_iotlb_pages: the PASID is split in two bytes
            head = (_b("DeviceID", 15, 0, "device"),
                    _b("PASID[15:8]", 23, 16, "PASID bits 15:8 (GN=1)"),
                    _b("Maxpend", 31, 24, "ATS invalidation queue depth"),
                    _b("PASID[7:0]", 55, 48, "PASID bits 7:0 (GN=1)"))
        return (*head, _b("S", 64, 64, "size: the lowest clear address bit gives the range"),
                _b("PDE", 65, 65, "also cached page-directory entries"),
                _b("GN", 66, 66, "guest (PASID) translation"),
                _b("ADDR", 127, 76, "address", addr=True))
    if op == t.CMD_COMPLETE_PPR:
        return (_b("DeviceID", 15, 0, "device"), _b("PASID", 51, 32, "PASID"),
                _b("GN", 66, 66, "guest (PASID valid)"), _b("Tag", 104, 96, "PPR tag"),
                _b("Status", 111, 108, "response", {0: "SUCCESS", 1: "INVALID", 0xF: "FAILURE"}))
    return ()


CMD_LAYOUT = Layout(
    name="cmd", title="AMD command", category="command", words=4, word_bits=32,
    kernel="struct iommu_cmd", doc="AMD-Vi command buffer entry (4 dwords)",
    fields=(_b("OPCODE", 63, 60, "command", t.CMD_NAMES),), selector="OPCODE",
    variants=tuple(Variant(n, (op,), _cmd_fields(op)) for op, n in t.CMD_NAMES.items()))


class Cmd(Structure):
    layout = CMD_LAYOUT
    golden = (
        Golden("inv_iommu_pages", (0, 0x3000_0005, 0x1234_5002, 0)),
        Golden("completion_wait", (0x5009, 0x1000_0001, 2, 1)),
        Golden("unknown_opcode", (0, 0xF000_0000), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        op = (words[1] >> 28) & 0xF
        if op in t.CMD_NAMES:
            return []
        return [Problem(f"unknown opcode {op:#x} (ILLEGAL_COMMAND_ERROR)")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        op = (words[1] >> 28) & 0xF
        return t.CMD_NAMES.get(op, f"opcode {op:#x}")


# =========================================================================================
# Event log records (four 32-bit words)
# =========================================================================================
_EVT_DEV = (_b("DeviceID", 15, 0, "requester", kernel="EVENT_DEVID_MASK"),
            _b("PASID[19:16]", 19, 16, "PASID bits 19:16 (GN=1)",
               kernel="EVENT_DOMID_MASK_HI"),
            _b("DomainID/PASID", 47, 32, "DomainID, or PASID bits 15:0 (GN=1)",
               kernel="EVENT_DOMID_MASK_LO"))
_EVT_FLAGS = tuple(
    _b(n, 48 + b, 48 + b, meaning, kernel=f"EVENT_FLAG_{n}")
    for b, (n, meaning) in enumerate((
        ("GN", "guest (PASID) request"), ("NX", "no-execute violation"),
        ("US", "user request"), ("I", "interrupt request"), ("PR", "the page was present"),
        ("RW", "write"), ("PE", "permission violation"), ("RZ", "reserved bit set"),
        ("TR", "translation request (ATS)"))))
_EVT_ADDR = _b("ADDR", 127, 64, "address", kernel="EventLogEntry.address")


def _evt_fields(evt: int) -> tuple[BitField, ...]:
    if evt in (t.EVENT_TYPE_IO_FAULT, t.EVENT_TYPE_ILL_DEV, t.EVENT_TYPE_INV_DEV_REQ):
        return (*_EVT_DEV, *_EVT_FLAGS, _EVT_ADDR)
    if evt in (t.EVENT_TYPE_ILL_CMD, t.EVENT_TYPE_CMD_HARD_ERR):
        return (_b("ADDR", 127, 64, "the command's physical address"),)
    return (_b("DeviceID", 15, 0, "requester", kernel="EVENT_DEVID_MASK"), _EVT_ADDR)


EVENT_LAYOUT = Layout(
    name="event", title="AMD event", category="event", words=4, word_bits=32,
    doc="AMD-Vi event log record (4 dwords)",
    fields=(_b("EventCode", 63, 60, "event", t.EVENT_NAMES,
               kernel="EVENT_TYPE_SHIFT"),), selector="EventCode",
    variants=tuple(Variant(n, (e,), _evt_fields(e)) for e, n in t.EVENT_NAMES.items()))


class Event(Structure):
    layout = EVENT_LAYOUT
    golden = (
        Golden("io_page_fault", t.EventLogEntry.make(t.EVENT_TYPE_IO_FAULT, 0x2000, 5,
                                                     t.EVENT_FLAG_RW, 0x1000).data),
        Golden("unknown", (0, 0xF000_0000), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        evt = (words[1] >> 28) & 0xF
        return [] if evt in t.EVENT_NAMES else [Problem(f"no event has code {evt:#x}")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        evt = (words[1] >> 28) & 0xF
        return (f"{t.EVENT_NAMES.get(evt, f'event {evt:#x}')} DeviceID "
                f"{words[0] & t.EVENT_DEVID_MASK:#x}")


# =========================================================================================
# EFR / EFR2 (the hw_info payload)
# =========================================================================================
_EFR2 = ("FEATURE_SEVSNPIO_SUP", "FEATURE_GCR3TRPMODE", "FEATURE_SNPAVICSUP",
         "FEATURE_NUM_INT_REMAP_SUP", "FEATURE_HT_RANGE_IGNORE")


def _register(name: str, names: Sequence[str], doc: str, kernel: str) -> Layout:
    fields = tuple(mask_field(n[len("FEATURE_"):], 0, vars(t)[n], kernel=n) for n in names)
    return Layout(name=name.lower(), title=name, category="register", words=1, fields=fields,
                  doc=doc, kernel=kernel)


EFR_LAYOUT = _register(
    "EFR", [n for n, m in vars(t).items() if n.startswith("FEATURE_") and isinstance(m, int)
            and n not in _EFR2], "AMD-Vi Extended Feature Register", "MMIO_EXT_FEATURES")
EFR2_LAYOUT = _register("EFR2", [n for n in _EFR2 if n in vars(t)],
                        "AMD-Vi Extended Feature 2 Register", "MMIO_EXT_FEATURES2")



STRUCTURES: tuple[Structure, ...] = (
    Dte(), Gcr3(), Cmd(), Event(), Structure(EFR_LAYOUT), Structure(EFR2_LAYOUT),
)

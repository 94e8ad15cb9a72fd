"""What FlatIOMMU teaches iommu-sim's tools: its structures (``iommu-sim decode``), its
``IOMMU_GET_HW_INFO`` payload (``iommu-sim info``), what the driver wrote for a device and
how the unit walks (``iommu-sim tour``), its constants (scenario expressions) and its
tour (``tour_flat_iommu.toml``).

Everything comes from :mod:`flat_iommu.spec`, the manual; nothing here is used by the
driver or the hardware model. The validity of a DTE is the hardware model's own verdict:
a scratch unit of the same configuration, programmed through its registers, translates
one DMA through the entry and says whether it refused it (``F_DTE_BAD``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
from iommu_core.describe import (
    BitField,
    ConfigEntry,
    DecodedField,
    DeviceView,
    DomainView,
    Golden,
    HwInfoDesc,
    Layout,
    Problem,
    ScenarioRef,
    Structure,
    TableRef,
    Variant,
    VendorDesc,
    Verdict,
    module_constants,
    record_walk,
    sizes_text,
    unpack,
)
from iommu_core.domain import IommuDomain
from iommu_core.hookspec import hookimpl
from iommu_core.pgtable import formats
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import ACCESS_READ, DmaFault, IommuHardware
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.platform import Platform

from flat_iommu import spec
from flat_iommu import uapi as flat_uapi
from flat_iommu.hw import FlatFeatures, FlatIommuHw
from flat_iommu.uapi import IOMMU_HW_INFO_TYPE_FLAT, iommu_hw_info_flat

VENDOR = VendorDesc(name="flat", title="FlatIOMMU", aliases=("flat_iommu",))
_MODES = {m.value: m.name for m in spec.DteMode}


def _features(unit: Any) -> FlatFeatures:
    f = getattr(unit, "features", None)
    return f if isinstance(f, FlatFeatures) else FlatFeatures()


# -- the device-table entry ---------------------------------------------------------------
DTE_LAYOUT = Layout(
    name="flat-dte", title="FlatIOMMU DTE", category="entry", words=2, kernel="Dte",
    doc="FlatIOMMU device-table entry (2 qwords)",
    fields=(
        BitField("V", 0, 0, "valid", kernel="DTE_V"),
        BitField("MODE", 2, 1, "what DMA gets", _MODES, kernel="DTE_MODE_SHIFT"),
        BitField("HAD", 3, 3, "set the dirty bit on DMA writes", kernel="DTE_HAD"),
        BitField("LEVELS", 10, 8, "page-table levels (must be 4)", kernel="DTE_LEVELS_SHIFT"),
        BitField("DID", 31, 16, "domain ID (IOTLB tag)", kernel="DTE_DID_SHIFT"),
        BitField("ROOT", 64 + 51, 64 + 12, "page-table root", addr=True, kernel="ADDR_MASK"),
    ))

_DT = 0x1000  # scratch device table: one entry per RID below 2^8


def _dte(mode: spec.DteMode, **kw: Any) -> tuple[int, ...]:
    return spec.Dte(valid=True, mode=mode, **kw).encode()


def astuple(cmd: spec.Cmd) -> tuple[int, int]:
    return cmd.q0, cmd.q1


class FlatDte(Structure):
    layout = DTE_LAYOUT
    golden = (
        Golden("invalid", (0, 0)),
        Golden("abort", _dte(spec.DteMode.ABORT)),
        Golden("bypass", _dte(spec.DteMode.BYPASS)),
        Golden("translate", _dte(spec.DteMode.TRANSLATE, levels=4, did=1, root=0x20_0000)),
        Golden("dirty", _dte(spec.DteMode.TRANSLATE, had=True, levels=4, did=1, root=0x1000)),
        Golden("three_levels", _dte(spec.DteMode.TRANSLATE, levels=3, did=1, root=0x1000),
               valid=False),
        Golden("reserved_mode", (spec.DTE_V | 3 << spec.DTE_MODE_SHIFT, 0), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        d = values
        if not d["V"] or d["MODE"] in (spec.DteMode.ABORT, spec.DteMode.BYPASS):
            return []
        if d["MODE"] != spec.DteMode.TRANSLATE:
            return [Problem(f"MODE {d['MODE']} is reserved (F_DTE_BAD)")]
        out = []
        if d["LEVELS"] != spec.PT_LEVELS:
            out.append(Problem(f"LEVELS {d['LEVELS']}: the unit walks {spec.PT_LEVELS}-level "
                               "tables only (F_DTE_BAD)"))
        if d["HAD"] and not _features(unit).dirty:
            out.append(Problem("HAD without CAP.DIRTY (F_DTE_BAD)"))
        if not d["ROOT"]:
            out.append(Problem("TRANSLATE with a null page-table root", hw=False))
        return out

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        scratch = Platform()
        hw = FlatIommuHw("describe", attrs.evolve(_features(unit), rid_bits=8), scratch.mem,
                         scratch.tracer)
        regs = hw.mmio["regs"]
        regs.write64(spec.REG_DT_BASE, _DT)
        regs.write32(spec.REG_DT_SIZE, 8)
        regs.write32(spec.REG_CTRL, spec.CTRL_TE)
        scratch.mem.write_qwords(_DT, words)
        try:
            hw.dma_translate(make_pci_device("0000:00:00.0", "describe"), None, 0,
                             ACCESS_READ)
        except DmaFault as f:
            if f.reason == spec.FaultReason.F_DTE_BAD.name:
                return Verdict(False, "the unit refuses it (F_DTE_BAD)")
        return Verdict(True)

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        if not d["V"]:
            return "V=0 (DMA faults: F_DTE_INVALID)"
        mode = _MODES.get(d["MODE"], f"MODE {d['MODE']}")
        if d["MODE"] != spec.DteMode.TRANSLATE:
            return mode
        return f"{mode} DID {d['DID']} table @ {d['ROOT']:#x}" + (" HAD" if d["HAD"] else "")


# -- commands, fault records, CAP -----------------------------------------------------------
CMD_LAYOUT = Layout(
    name="cmd", title="FlatIOMMU command", category="command", words=2, kernel="Cmd",
    doc="FlatIOMMU command-queue entry (2 qwords)",
    fields=(BitField("OPCODE", 3, 0, "command", {o.value: o.name for o in spec.Opcode},
                     kernel="Opcode"),),
    selector="OPCODE",
    variants=(
        Variant("INV_DTE", (spec.Opcode.INV_DTE,),
                (BitField("RID", 31, 16, "requester ID", kernel="build_inv_dte"),)),
        Variant("INV_IOTLB", (spec.Opcode.INV_IOTLB,), (
            BitField("ALL", 4, 4, "every page of the domain", kernel="INV_IOTLB_ALL"),
            BitField("DID", 31, 16, "domain ID", kernel="build_inv_iotlb"),
            BitField("NPAGES", 63, 32, "4 KiB pages", kernel="build_inv_iotlb"),
            BitField("ADDR", 127, 76, "first page", addr=True, kernel="build_inv_iotlb"))),
        Variant("INV_ALL", (spec.Opcode.INV_ALL,)),
        Variant("SYNC", (spec.Opcode.SYNC,), (
            BitField("DATA", 63, 32, "value stored when done", kernel="build_sync"),
            BitField("ADDR", 127, 67, "where it is stored (8-byte aligned)", addr=True,
                     kernel="build_sync"))),
    ))


class FlatCmd(Structure):
    layout = CMD_LAYOUT
    golden = (
        Golden("inv_dte", astuple(spec.build_inv_dte(0x18))),
        Golden("inv_iotlb", astuple(spec.build_inv_iotlb(1, 0x10_0000, 16))),
        Golden("sync", astuple(spec.build_sync(0x5000, 7))),
        Golden("unknown", (0xF, 0), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        op = words[0] & 0xF
        if op in _OPCODES:
            return []
        return [Problem(f"unknown opcode {op} (the queue stops: STATUS.CQERR)")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        op = words[0] & 0xF
        return _OPCODES.get(op, f"opcode {op}")


_OPCODES = {o.value: o.name for o in spec.Opcode}
_REASONS = {r.value: r.name for r in spec.FaultReason}

EVENT_LAYOUT = Layout(
    name="event", title="FlatIOMMU fault record", category="event", words=2,
    kernel="FaultRecord", doc="FlatIOMMU fault-queue record (2 qwords)",
    fields=(
        BitField("RID", 15, 0, "requester ID"),
        BitField("REASON", 23, 16, "why", _REASONS, kernel="FaultReason"),
        BitField("WRITE", 24, 24, "a write", kernel="FAULT_WRITE"),
        BitField("ADDR", 127, 64, "the DMA address"),
    ))


class FlatFault(Structure):
    layout = EVENT_LAYOUT
    golden = (
        Golden("not_present", spec.FaultRecord(0x18, spec.FaultReason.F_PT_NOT_PRESENT, True,
                                               0x1000).encode()),
        Golden("no_reason", (0x18, 0), valid=False),
    )

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        r = values["REASON"]
        return [] if r in _REASONS else [Problem(f"no fault reason {r}")]

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        d = values
        return (f"{_REASONS.get(d['REASON'], d['REASON'])} RID {d['RID']:#x} "
                f"{'write' if d['WRITE'] else 'read'} at {d['ADDR']:#x}")


def _reg(name: str, title: str, fields: tuple[BitField, ...], doc: str) -> Layout:
    return Layout(name=name, title=title, category="register", words=1, word_bits=32,
                  fields=fields, doc=doc, kernel=f"REG_{title}")


ID_LAYOUT = _reg("flat-id", "ID", (BitField("ID", 31, 0, '"FLAT"', kernel="FLAT_ID"),),
                 "FlatIOMMU ID register")
VERSION_LAYOUT = _reg("flat-version", "VERSION", (BitField("MINOR", 15, 0, "minor"),
                                                   BitField("MAJOR", 31, 16, "major")),
                      "FlatIOMMU VERSION register")
CAP_LAYOUT = _reg("flat-cap", "CAP", (
    BitField("RID_BITS", 4, 0, "requester-ID bits (device-table size)",
             kernel="CAP_RID_BITS_MASK"),
    BitField("DIRTY", 8, 8, "DTE.HAD supported (dirty tracking)", kernel="CAP_DIRTY")),
    "FlatIOMMU CAP register")



# -- IOMMU_GET_HW_INFO ----------------------------------------------------------------------
class FlatHwInfo(HwInfoDesc):
    data_type = IOMMU_HW_INFO_TYPE_FLAT
    name = "IOMMU_HW_INFO_TYPE_FLAT"
    layouts = (ID_LAYOUT, VERSION_LAYOUT, CAP_LAYOUT)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        info = unpack(iommu_hw_info_flat, data)
        return [(ID_LAYOUT, info.id), (VERSION_LAYOUT, info.version), (CAP_LAYOUT, info.cap)]

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        cap = regs["CAP"]
        return {
            "stage 1 / first stage": "x86-64 4-level (one stage)",
            "stage 2 / second stage": "no",
            "nesting": "no",
            "PASID bits": "0",
            "ATS": "no",
            "page requests": "no",
            "dirty tracking": "DTE.HAD" if cap["DIRTY"] else "no",
            "output address bits": "52",
            "granules": sizes_text(formats.x86_64(spec.PT_LEVELS).pgsize_bitmap),
            "requester-ID bits": str(cap["RID_BITS"]),
        }


# -- what the driver wrote, how the unit walks ------------------------------------------------
_DTE = FlatDte()


def flat_describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                         pasid: int | None, iova: int | None) -> DeviceView:
    regs = unit.mmio["regs"]
    base = regs.read64(spec.REG_DT_BASE) & spec.ADDR_MASK
    if not base or pasid is not None or dev.rid >> (regs.read32(spec.REG_DT_SIZE) & 0x1F):
        return DeviceView()  # no table, no PASIDs, or a RID beyond the table
    addr = base + dev.rid * spec.ENTRY_SIZE
    dte = _DTE.decode([mem.read_u64(addr), mem.read_u64(addr + 8)], unit, VENDOR.name)
    entries = (ConfigEntry(f"DTE[{dev.rid:#06x}]", addr, dte, table=base, index=dev.rid),)
    if (iova is None or not dte.value("V") or dte.value("MODE") != spec.DteMode.TRANSLATE
            or dte.value("LEVELS") != spec.PT_LEVELS):
        return DeviceView(entries)
    walk = record_walk(f"page table, DID {dte.value('DID')}", formats.x86_64(spec.PT_LEVELS),
                       dte.value("ROOT"), iova, mem.read_u64)
    return DeviceView(entries, (walk,))


def flat_describe_domain(domain: IommuDomain) -> DomainView | None:
    from flat_iommu.iommu import FlatPagingDomain  # the driver imports the plugin's mixin

    if not isinstance(domain, FlatPagingDomain):
        return None
    pt = domain.pt
    return DomainView("paging" + (", dirty tracking" if domain.dirty_tracking else ""),
                      (TableRef("page table", pt.fmt.name, pt.root, pt.fmt.levels),),
                      (("DID", domain.did),))


class FlatDescribe:
    """The teaching hooks; :class:`flat_iommu.plugin.FlatIommuPlugin` inherits them."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VENDOR

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return [_DTE, FlatCmd(), FlatFault(), Structure(ID_LAYOUT), Structure(VERSION_LAYOUT),
                Structure(CAP_LAYOUT)]

    @hookimpl
    def describe_hw_info(self) -> list[HwInfoDesc]:
        return [FlatHwInfo()]

    @hookimpl
    def describe_device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
        return flat_describe_device(unit, mem, dev, pasid, iova)

    @hookimpl
    def describe_domain(self, domain: IommuDomain) -> DomainView | None:
        return flat_describe_domain(domain)

    @hookimpl
    def describe_constants(self) -> Mapping[str, int]:
        return module_constants(spec, flat_uapi)

    @hookimpl
    def describe_scenarios(self) -> list[ScenarioRef]:
        tour = resources.files("flat_iommu") / "tour_flat_iommu.toml"
        return [ScenarioRef("tour_flat_iommu", Path(str(tour)), tour=True)]

"""What the selftest mock teaches: its DTE and PASID entry, its GET_HW_INFO payload, what
it wrote for a device and how the mock unit walks (the ``mock`` page-table format).

The validity verdict of a DTE comes from the mock hardware itself: a scratch unit,
programmed through its registers like the driver does, translates one DMA through the
entry and says whether the entry was refused (``BAD_CONTEXT``) or used. That is the way
any driver can let its model judge an entry without reaching into the model's insides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import iommufd.uapi_selftest as st
from drivers.mock import hw as mhw
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
    Structure,
    TableRef,
    VendorDesc,
    Verdict,
    record_walk,
    unpack,
)
from iommu_core.domain import IommuDomain
from iommu_core.hookspec import hookimpl
from iommu_core.pgtable import formats
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import ACCESS_READ, DmaFault, IommuHardware
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.platform import Platform

VENDOR = VendorDesc(name="mock", title="iommufd selftest mock", aliases=("selftest",),
                    on_demand_units=True)
_MODES = {mhw.MODE_ABORT: "ABORT", mhw.MODE_BYPASS: "BYPASS", mhw.MODE_TRANSLATE: "TRANSLATE"}


def _ctx_fields(q1_lo: int) -> tuple[BitField, ...]:
    """q0 of a DTE or PASID entry, and its page-table root in the next qword."""
    return (
        BitField("V", 0, 0, "valid", kernel="CTX_V"),
        BitField("MODE", 2, 1, "translation mode", _MODES, kernel="CTX_MODE_SHIFT"),
        BitField("HAD", 3, 3, "set dirty bits on writes", kernel="CTX_HAD"),
        BitField("LEVELS", 10, 8, "page-table levels (1..4)", kernel="CTX_LEVELS_SHIFT"),
        BitField("DID", 31, 16, "domain id (IOTLB tag)", kernel="CTX_DID_SHIFT"),
        BitField("ROOT", q1_lo + 39, q1_lo, "page-table root", addr=True, kernel="ADDR_MASK"),
    )


DTE_LAYOUT = Layout(
    name="mock-dte", title="mock DTE", category="entry", words=4,
    doc="selftest mock device-table entry (4 qwords)",
    fields=(*_ctx_fields(76)[:3],
            BitField("PASID_EN", 4, 4, "PASID-tagged requests allowed", kernel="CTX_PASID_EN"),
            *_ctx_fields(76)[3:],
            BitField("PASID_DIR", 179, 140, "PASID directory", addr=True, kernel="ADDR_MASK")))
PASID_LAYOUT = Layout(
    name="mock-pasid-entry", title="mock PASID entry", category="entry", words=2,
    doc="selftest mock PASID table entry (2 qwords)", fields=_ctx_fields(76))


def _summary(values: Mapping[str, int]) -> str:
    if not values["V"]:
        return "V=0 (DMA faults)"
    mode = _MODES.get(values["MODE"], f"mode {values['MODE']}")
    if values["MODE"] != mhw.MODE_TRANSLATE:
        return mode
    return f"{mode} DID {values['DID']} {values['LEVELS']}-level table @ {values['ROOT']:#x}"


def _check(values: Mapping[str, int]) -> list[Problem]:
    if not values["V"]:
        return []
    if values["MODE"] == 3:
        return [Problem("MODE 3 is reserved (BAD_CONTEXT)")]
    if values["MODE"] == mhw.MODE_TRANSLATE and not 1 <= values["LEVELS"] <= mhw.MAX_LEVELS:
        return [Problem(f"LEVELS {values['LEVELS']} outside 1..{mhw.MAX_LEVELS} "
                        "(BAD_CONTEXT)")]
    return []


_DT = 0x1000  # scratch device table base (RID 0 only)


def _model_verdict(dte: Sequence[int]) -> Verdict:
    """One DMA by RID 0 through ``dte`` on a scratch unit."""
    scratch = Platform()
    hw = mhw.MockIommuHw("describe", scratch.mem, scratch.tracer)
    regs = hw.mmio["regs"]
    regs.write64(mhw.REG_DT_BASE, _DT)
    regs.write32(mhw.REG_CTRL, mhw.CTRL_EN)
    for i, w in enumerate(dte):
        hw.mem.write_u64(_DT + 8 * i, w)
    try:
        hw.dma_translate(make_pci_device("0000:00:00.0", "describe"), None, 0, ACCESS_READ)
    except DmaFault as f:
        if f.reason == "BAD_CONTEXT":
            return Verdict(False, "the unit refuses it (BAD_CONTEXT)")
    return Verdict(True)


class _MockContext(Structure):
    """What a DTE and a PASID entry share: q0's mode and the page-table root."""

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        return _check(values)

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        return _summary(values)


class MockDte(_MockContext):
    layout = DTE_LAYOUT
    golden = (
        Golden("invalid", (0,)),
        Golden("translate", (mhw.make_ctx_q0(mhw.MODE_TRANSLATE, 3, 5), 0x20_0000)),
        Golden("bypass", (mhw.make_ctx_q0(mhw.MODE_BYPASS),)),
        Golden("bad_levels", (mhw.make_ctx_q0(mhw.MODE_TRANSLATE, 7, 5), 0x20_0000),
               valid=False),
        Golden("reserved_mode", (mhw.make_ctx_q0(3),), valid=False),
    )

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        return _model_verdict(words)


class MockPasidEntry(_MockContext):
    layout = PASID_LAYOUT
    golden = (
        Golden("invalid", (0,)),
        Golden("translate", (mhw.make_ctx_q0(mhw.MODE_TRANSLATE, 3, 7), 0x30_0000)),
        Golden("no_levels", (mhw.make_ctx_q0(mhw.MODE_TRANSLATE, 0, 7), 0x30_0000),
               valid=False),
    )


# -- hw_info ------------------------------------------------------------------------------------
_TEST_REG = Layout(
    name="mock-test-reg", title="test_reg", category="register", words=1, word_bits=32,
    fields=(BitField("value", 31, 0, "the TEST register (0xdeadbeef)", kernel="REG_TEST"),),
    doc="selftest mock TEST register")
_FLAGS = Layout(name="mock-hw-info-flags", title="flags", category="register", words=1,
                word_bits=32, fields=(), doc="struct iommu_test_hw_info flags (none)")


class MockHwInfo(HwInfoDesc):
    data_type = st.IOMMU_HW_INFO_TYPE_SELFTEST
    name = "IOMMU_HW_INFO_TYPE_SELFTEST"
    layouts = (_FLAGS, _TEST_REG)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        info = unpack(st.iommu_test_hw_info, data)
        return [(_FLAGS, info.flags), (_TEST_REG, info.test_reg)]


# -- what the driver wrote ----------------------------------------------------------------------
_DTE = MockDte()
_PASID = MockPasidEntry()


def mock_describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                         pasid: int | None, iova: int | None) -> DeviceView:
    base = unit.mmio["regs"].read64(mhw.REG_DT_BASE) & mhw.ADDR_MASK
    if not base or dev.rid >= mhw.DT_ENTRIES:
        return DeviceView()
    addr = base + dev.rid * mhw.DTE_SIZE
    dte = _DTE.decode([mem.read_u64(addr + 8 * i) for i in range(4)], unit, VENDOR.name)
    entries = [ConfigEntry(f"mock DTE[{dev.rid:#06x}]", addr, dte, table=base, index=dev.rid)]
    ctx = dte
    if pasid is not None:
        ptr = mem.read_u64(dte.value("PASID_DIR") + ((pasid >> 8) << 3))
        if not ptr & mhw.PTR_V:
            return DeviceView(tuple(entries))
        table = ptr & mhw.ADDR_MASK
        paddr = table + (pasid & 0xFF) * mhw.PASID_ENTRY_SIZE
        ctx = _PASID.decode([mem.read_u64(paddr), mem.read_u64(paddr + 8)], unit, VENDOR.name)
        entries.append(ConfigEntry(f"mock PASID entry {pasid}", paddr, ctx, table=table,
                                   index=pasid & 0xFF))
    levels = ctx.value("LEVELS")
    if (iova is None or not ctx.value("V") or ctx.value("MODE") != mhw.MODE_TRANSLATE
            or not 1 <= levels <= mhw.MAX_LEVELS):
        return DeviceView(tuple(entries))
    walk = record_walk(f"mock table, DID {ctx.value('DID')}", formats.mock(levels=levels),
                       ctx.value("ROOT"), iova, mem.read_u64)
    return DeviceView(tuple(entries), (walk,))


def mock_describe_domain(domain: IommuDomain) -> DomainView | None:
    from drivers.mock.plugin import MockNestedDomain, MockPagingDomain  # the plugin imports us

    if isinstance(domain, MockPagingDomain):
        pt = domain.pt
        return DomainView("paging", (TableRef("mock table", pt.fmt.name, pt.root,
                                              pt.fmt.levels),), (("DID", domain.did),))
    if isinstance(domain, MockNestedDomain):
        pt = domain.parent.pt
        return DomainView("nested (fake stage 1 over the parent)",
                          (TableRef("mock table (parent)", pt.fmt.name, pt.root,
                                    pt.fmt.levels),), (("DID", domain.parent.did),))
    return None


class MockDescribe:
    """The mock driver's teaching hooks."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VENDOR

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return [_DTE, _PASID]

    @hookimpl
    def describe_hw_info(self) -> list[HwInfoDesc]:
        return [MockHwInfo()]

    @hookimpl
    def describe_device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
        return mock_describe_device(unit, mem, dev, pasid, iova)

    @hookimpl
    def describe_domain(self, domain: IommuDomain) -> DomainView | None:
        return mock_describe_domain(domain)

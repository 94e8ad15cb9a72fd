"""What the VT-d driver wrote for a device, read like a debugger: the root and context
entries through RTADDR, the PASID directory and entry (RID_PASID without a PASID), and
the walks of an address (first stage, second stage, nested: the first-stage table in
guest memory fetched through the second stage). Scalable mode only: Linux uses it
whenever the hardware has it."""

from __future__ import annotations

from collections.abc import Callable

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.describe.structures import PasidEntry, ScalableContextEntry
from drivers.intel_vtd.iommu import DmarDomain
from iommu_core.describe import (
    ConfigEntry,
    DeviceView,
    DomainView,
    TableRef,
    WalkStage,
    record_walk,
)
from iommu_core.domain import IommuDomain
from iommu_core.pgtable import formats
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware
from iommu_core.platform.memory import PhysicalMemory

_CTX = ScalableContextEntry()
_PASID = PasidEntry()
VENDOR = "vtd"


def vtd_describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
    def qwords(pa: int, n: int) -> tuple[int, ...]:
        return tuple(mem.read_u64(pa + 8 * i) for i in range(n))

    rta = unit.mmio["regs"].read64(h.DMAR_RTADDR_REG)
    root = rta & h.VTD_PAGE_MASK
    bus, devfn = dev.rid >> 8, dev.rid & 0xFF
    lo, hi = qwords(root + bus * h.ROOT_ENTRY_SIZE, 2)
    if not rta & h.DMA_RTADDR_SMT:
        return DeviceView()  # legacy mode: not what Linux uses with scalable hardware
    re = lo if devfn < 0x80 else hi
    if not re & 1:
        return DeviceView()
    ctable = re & h.VTD_PAGE_MASK
    caddr = ctable + (devfn & 0x7F) * h.SM_CONTEXT_ENTRY_SIZE
    ctx = _CTX.decode(qwords(caddr, 4), unit, VENDOR)
    entries = [ConfigEntry(f"context entry {dev.rid:#06x}", caddr, ctx, table=ctable,
                           index=devfn & 0x7F)]
    if not ctx.value("P"):
        return DeviceView(tuple(entries))
    p = ctx.value("RID_PASID") if pasid is None else pasid
    pde = mem.read_u64(ctx.value("PASIDDIRPTR") + (p >> 6) * 8)
    if not pde & 1:
        return DeviceView(tuple(entries))
    ptable = pde & h.VTD_PAGE_MASK
    paddr = ptable + (p & 0x3F) * 64
    pe = _PASID.decode(qwords(paddr, 8), unit, VENDOR)
    label = f"PASID entry {p}" + (" (RID_PASID)" if pasid is None else "")
    entries.append(ConfigEntry(label, paddr, pe, table=ptable, index=p & 0x3F))
    if iova is None or not pe.value("P"):
        return DeviceView(tuple(entries))
    pgtt, aw = pe.value("PGTT"), pe.value("AW")
    ss_fmt = formats.vtd_ss(aw + 2)
    ss_root = pe.value("SSPTPTR")

    def ss_walk(gpa: int) -> WalkStage:
        return record_walk("second stage", ss_fmt, ss_root, gpa, mem.read_u64)

    stages: list[WalkStage] = []
    out: int | None = iova
    if pgtt in (1, 3):
        fs_fmt = formats.x86_64(5 if pe.value("FSPM") else 4, oas=52)
        nested = pgtt == 3
        xlate: Callable[[int], WalkStage] | None = ss_walk if nested else None
        st = record_walk(f"first stage ({'guest ' if nested else ''}table, DID "
                         f"{pe.value('DID')})", fs_fmt, pe.value("FSPTPTR"), iova,
                         mem.read_u64, xlate)
        stages.append(st)
        out = st.output
    if pgtt in (2, 3) and out is not None:
        stages.append(ss_walk(out))
    return DeviceView(tuple(entries), tuple(stages))


def vtd_describe_domain(domain: IommuDomain) -> DomainView | None:
    if not isinstance(domain, DmarDomain):
        return None
    kind = {"fs": "paging (first stage)", "ss": "paging (second stage)",
            "nested": "nested"}.get(domain.kind, domain.kind)
    if domain.nested_parent:
        kind += ", nest parent"
    tables = []
    if domain.pgtable is not None:
        pt = domain.pgtable
        label = "first stage" if domain.kind == "fs" else "second stage"
        tables.append(TableRef(label, pt.fmt.name, pt.root, pt.fmt.levels))
    parent = domain.s2_domain
    if parent is not None and parent.pgtable is not None:
        pt = parent.pgtable
        tables.append(TableRef("second stage (parent)", pt.fmt.name, pt.root, pt.fmt.levels))
    if domain.s1_cfg is not None:
        tables.insert(0, TableRef("first stage (guest)", "x86_64", domain.s1_cfg.pgtbl_addr,
                                  5 if domain.s1_cfg.addr_width > 48 else 4))
    tags = tuple((f"DID on {u.name}", ref[0]) for u, ref in domain.iommu_refs.items())
    return DomainView(kind, tuple(tables), tags)

"""What the AMD-Vi driver wrote for a device, read like a debugger: the DTE through the
Device Table Base register, the GCR3 table entry of a PASID (in guest memory, through the
v1 host table, when nested), and the walks of an address (guest v2 table, host v1
table)."""

from __future__ import annotations

from collections.abc import Callable

from drivers.amd_vi import amd_iommu_types as t
from drivers.amd_vi.describe.structures import Dte, Gcr3
from drivers.amd_vi.iommu import ProtectionDomain
from drivers.amd_vi.nested import NestedDomain
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

_DTE = Dte()
_GCR3 = Gcr3()
VENDOR = "amd"


def amd_describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
    dtb = unit.mmio["regs"].read64(t.MMIO_DEV_TABLE_OFFSET)
    base = dtb & t.RING_BASE_ADDR_MASK
    nent = ((dtb & t.DEV_TABLE_SIZE_MASK) + 1) * 4096 // t.DEV_TABLE_ENTRY_SIZE
    devid = dev.rid
    if devid >= nent or not base:
        return DeviceView()
    daddr = base + devid * t.DEV_TABLE_ENTRY_SIZE
    w = tuple(mem.read_u64(daddr + 8 * i) for i in range(4))
    dte = _DTE.decode(w, unit, VENDOR)
    entries = [ConfigEntry(f"DTE[{devid:#06x}]", daddr, dte, table=base, index=devid)]
    v, tv, mode, gv = (dte.value("V"), dte.value("TV"), dte.value("Mode"), dte.value("GV"))
    if not (v and tv):
        return DeviceView(tuple(entries))
    host_fmt = formats.amd_v1(mode) if mode else None
    host_root = dte.value("HostPtr")
    host_walk: Callable[[int], WalkStage] | None = None
    if host_fmt is not None:
        hf = host_fmt

        def host_walk(gpa: int) -> WalkStage:
            return record_walk(f"host (v1) table, Mode {mode}", hf, host_root, gpa,
                               mem.read_u64)

    stages: list[WalkStage] = []
    guest = pasid is not None or (gv and dte.value("GIoV"))
    out: int | None = iova
    if guest and gv:
        p = pasid or 0
        glx = dte.value("GLX")
        table: int | None = dte.value("GCR3 root")
        nested = mode != 0
        entry = eaddr = etable = eindex = 0
        egpa: int | None = None
        es2: WalkStage | None = None
        for level in range(glx, -1, -1):
            assert table is not None
            index = (p >> (9 * level)) & 0x1FF
            eaddr_in = table + index * 8
            s2 = host_walk(eaddr_in) if nested and host_walk is not None else None
            pa = (s2.output if s2 is not None else None) if nested else eaddr_in
            if pa is None:
                table = None
                break
            eaddr, etable, eindex = pa, table, index
            egpa, es2 = (eaddr_in, s2) if nested else (None, None)
            entry = mem.read_u64(pa)
            table = entry & t.GCR3_ADDR_MASK if entry & t.GCR3_VALID else None
            if table is None:
                break
        note = "in guest memory (GCR3 root is a GPA)" if nested else ""
        if eaddr:
            entries.append(ConfigEntry(f"GCR3[{p}]", eaddr, _GCR3.decode([entry], unit, VENDOR),
                                       note, table=etable, index=eindex, guest_addr=egpa,
                                       stage2=es2))
        if iova is None or table is None:
            return DeviceView(tuple(entries))
        fmt = formats.x86_64(5 if dte.value("GPT_LEVEL") else 4, sign_extend=True)
        st = record_walk(f"guest (v2) table, PASID {p}", fmt, table, iova, mem.read_u64,
                         host_walk if nested else None)
        stages.append(st)
        out = st.output
        if not nested:
            return DeviceView(tuple(entries), tuple(stages))
    if iova is not None and host_walk is not None and out is not None:
        stages.append(host_walk(out))
    return DeviceView(tuple(entries), tuple(stages))


def amd_describe_domain(domain: IommuDomain) -> DomainView | None:
    if isinstance(domain, ProtectionDomain):
        tables: tuple[TableRef, ...] = ()
        if domain.iop is not None:
            pt = domain.iop
            label = "v2 table" if domain.is_v2 else "v1 host table"
            tables = (TableRef(label, pt.fmt.name, pt.root, pt.fmt.levels),)
        kind = f"{domain.pd_mode}{', nest parent' if domain.nest_parent else ''}"
        return DomainView(kind, tables, (("DomainID", domain.id),))
    if isinstance(domain, NestedDomain):
        parent = domain.viommu.parent
        tables = ()
        if isinstance(parent, ProtectionDomain) and parent.iop is not None:
            pt = parent.iop
            tables = (TableRef("v1 host table (parent)", pt.fmt.name, pt.root, pt.fmt.levels),)
        return DomainView("nested (guest DTE over the parent's v1 table)", tables,
                          (("gDomID", domain.gdom_id), ("hDomID", domain.hdom_id),
                           ("GCR3 root (GPA)", t.dte_gcr3_root(domain.gdte))))
    return None

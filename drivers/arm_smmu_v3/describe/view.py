"""What the SMMUv3 driver wrote for a device, read back like a debugger would: the STE
through the stream table registers, the CD through the STE (in guest memory, through
stage 2, when nested), and the walks of an address, stage by stage.

Registers are read through the unit's MMIO window (no side effects) and memory directly;
the hardware model's own STE/CD decode gives the geometry the walks use. Caches are not
consulted: the tables as they are now.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.arm_smmu_v3 import regs as r
from drivers.arm_smmu_v3.describe.structures import Cd, Ste, unit_config
from drivers.arm_smmu_v3.domain import ArmSmmuDomain
from drivers.arm_smmu_v3.hw.decode import SmmuEvent
from drivers.arm_smmu_v3.hw.decode import decode_cd as hw_cd
from drivers.arm_smmu_v3.hw.decode import decode_ste as hw_ste
from drivers.arm_smmu_v3.iommufd import ArmSmmuNestedDomain
from iommu_core.describe import (
    ConfigEntry,
    DeviceView,
    DomainView,
    TableRef,
    WalkStage,
    record_walk,
)
from iommu_core.domain import IommuDomain
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware
from iommu_core.platform.memory import PhysicalMemory

_STE = Ste()
_CD = Cd()
VENDOR = "smmu"


def _ste_addr(unit: IommuHardware, mem: PhysicalMemory, sid: int) -> tuple[int, int, int]:
    """Where the SMMU finds STE ``sid``: (address, table, index); address 0 when a
    2-level stream table has no span there."""
    regs = unit.mmio["regs"]
    base = regs.read64(r.ARM_SMMU_STRTAB_BASE) & r.STRTAB_BASE_ADDR_MASK
    cfg = regs.read32(r.ARM_SMMU_STRTAB_BASE_CFG)
    if r.FIELD_GET(r.STRTAB_BASE_CFG_FMT, cfg) == r.STRTAB_BASE_CFG_FMT_2LVL:
        split = r.FIELD_GET(r.STRTAB_BASE_CFG_SPLIT, cfg)
        l1 = mem.read_u64(base + ((sid >> split) << 3))
        if not r.FIELD_GET(r.STRTAB_L1_DESC_SPAN, l1):
            return 0, 0, 0
        table = l1 & r.STRTAB_L1_DESC_L2PTR_MASK
        index = sid & ((1 << split) - 1)
        return table + (index << 6), table, index
    return base + (sid << 6), base, sid


def smmu_describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                         pasid: int | None, iova: int | None) -> DeviceView:
    def qwords(pa: int) -> tuple[int, ...]:
        return tuple(mem.read_u64(pa + 8 * i) for i in range(8))

    hwcfg = unit_config(unit)
    sid = dev.stream_ids[0] if dev.stream_ids else dev.rid
    addr, table, index = _ste_addr(unit, mem, sid)
    if not addr:
        return DeviceView()
    q = qwords(addr)
    entries = [ConfigEntry(f"STE[{sid:#x}]", addr, _STE.decode(q, unit, VENDOR), table=table,
                           index=index)]
    stages: list[WalkStage] = []
    try:
        ste = hw_ste(hwcfg, sid, q)  # type: ignore[arg-type]
    except SmmuEvent:
        return DeviceView(tuple(entries))
    s2 = ste.s2ctx
    s2_walk: Callable[[int], WalkStage] | None = None
    if s2 is not None:
        s2c = s2

        def s2_walk(ipa: int) -> WalkStage:
            return record_walk(f"stage 2 (VMID {s2c.vmid})", s2c.fmt, s2c.ttb, ipa, mem.read_u64)

    def s2_out(ipa: int) -> tuple[int | None, WalkStage | None]:
        if s2_walk is None:
            return ipa, None
        st = s2_walk(ipa)
        return st.output, st

    # Without a PASID the SMMU reads CD 0 only when S1DSS says SSID0 (or there is one CD).
    if ste.s1 and (pasid is not None or not ste.s1cdmax
                   or ste.s1dss == r.STRTAB_STE_1_S1DSS_SSID0):
        ssid = pasid or 0
        ptr = ste.s1ctxptr
        table, index = ptr, 0
        if ste.s1cdmax and ste.s1fmt == r.STRTAB_STE_0_S1FMT_LINEAR:
            cd_ipa: int | None = ptr + (ssid << 6)
            index = ssid
        elif ste.s1cdmax:
            split = 10 if ste.s1fmt == r.STRTAB_STE_0_S1FMT_64K_L2 else 6
            l1_pa, _ = s2_out(ptr + ((ssid >> split) << 3))
            desc = mem.read_u64(l1_pa) if l1_pa is not None else 0
            table = desc & r.CTXDESC_L1_DESC_L2PTR_MASK
            index = ssid & ((1 << split) - 1)
            cd_ipa = table + (index << 6) if desc & 1 else None
        else:
            cd_ipa = ptr
        if cd_ipa is not None:
            cd_pa, cd_s2 = s2_out(cd_ipa)
            if cd_pa is not None:
                cq = qwords(cd_pa)
                note = (f"in guest memory: IPA {cd_ipa:#x} -> PA {cd_pa:#x}"
                        if s2 is not None else "")
                entries.append(ConfigEntry(
                    f"CD[{ssid}]", cd_pa, _CD.decode(cq, unit, VENDOR), note, table=table,
                    index=index, guest_addr=cd_ipa if s2 is not None else None, stage2=cd_s2))
                if iova is not None:
                    try:
                        cd = hw_cd(hwcfg, ste, ssid, cq)  # type: ignore[arg-type]
                    except SmmuEvent:
                        return DeviceView(tuple(entries))
                    if cd.fmt is not None:
                        st = record_walk(
                            f"stage 1 ({'guest ' if s2 else ''}table, ASID {cd.asid})",
                            cd.fmt, cd.ttb0, iova, mem.read_u64, s2_walk)
                        stages.append(st)
                        iova = st.output
    if s2 is not None and iova is not None:
        stages.append(record_walk(f"stage 2 (VMID {s2.vmid})", s2.fmt, s2.ttb, iova,
                                  mem.read_u64))
    return DeviceView(tuple(entries), tuple(stages))


def smmu_describe_domain(domain: IommuDomain) -> DomainView | None:
    if isinstance(domain, ArmSmmuDomain):
        s1 = domain.stage == 1
        pt = domain.pgtbl
        kind = f"paging (stage {domain.stage}{', nest parent' if domain.nest_parent else ''})"
        return DomainView(kind, (TableRef(f"stage {domain.stage}", pt.fmt.name, pt.root,
                                          pt.fmt.levels),),
                          (("ASID", domain.asid),) if s1 else (("VMID", domain.vmid),))
    if isinstance(domain, ArmSmmuNestedDomain):
        parent = domain.vsmmu.s2_parent
        pt = parent.pgtbl
        return DomainView("nested (guest vSTE over the vSMMU's stage 2)",
                          (TableRef("stage 2 (parent)", pt.fmt.name, pt.root, pt.fmt.levels),),
                          (("VMID", domain.vsmmu.vmid),
                           ("vSTE S1ContextPtr", domain.ste[0] & r.STRTAB_STE_0_S1CTXPTR_MASK)))
    return None


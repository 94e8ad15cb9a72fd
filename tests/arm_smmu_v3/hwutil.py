"""Builders for the bare-SMMU tests: STEs, CDs and page tables written by hand."""

from __future__ import annotations

import attrs

from drivers.arm_smmu_v3.cd import Cd, arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.domain import arm_lpae_s1_cfg, arm_lpae_s2_cfg
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_ATTR_TYPES_OVR,
    ARM_SMMU_FEAT_STALLS,
    STRTAB_STE_0_S1FMT_LINEAR,
    STRTAB_STE_1_S1DSS_SSID0,
)
from drivers.arm_smmu_v3.ste import (
    Ste,
    arm_smmu_make_cdtable_ste,
    arm_smmu_make_nested_domain_ste,
    arm_smmu_make_s2_domain_ste,
)
from iommu_core.pgtable import IoPageTable

from .harness import BareSmmu


@attrs.define
class _Smmu:
    features: int = ARM_SMMU_FEAT_STALLS | ARM_SMMU_FEAT_ATTR_TYPES_OVR


@attrs.define
class _CdTable:
    cdtab_dma: int = 0
    s1fmt: int = STRTAB_STE_0_S1FMT_LINEAR
    s1cdmax: int = 0


@attrs.define
class FakeMaster:
    smmu: _Smmu = attrs.field(factory=_Smmu)
    cd_table: _CdTable = attrs.field(factory=_CdTable)
    stall_enabled: bool = False


def s1_cd(pt: IoPageTable, asid: int, *, hd: bool = False, stall: bool = False) -> Cd:
    return arm_smmu_make_s1_cd(FakeMaster(stall_enabled=stall), arm_lpae_s1_cfg(pt, asid, hd))


def cdtable_ste(cdtab: int, s1cdmax: int = 0, s1fmt: int = STRTAB_STE_0_S1FMT_LINEAR,
                s1dss: int = STRTAB_STE_1_S1DSS_SSID0, ats: bool = False,
                stall: bool = False) -> Ste:
    m = FakeMaster(cd_table=_CdTable(cdtab, s1fmt, s1cdmax), stall_enabled=stall)
    return arm_smmu_make_cdtable_ste(m, ats, s1dss)


def s2_ste(pt: IoPageTable, vmid: int, ats: bool = False) -> Ste:
    return arm_smmu_make_s2_domain_ste(FakeMaster(), arm_lpae_s2_cfg(pt, vmid), ats)


def nested_ste(vste: tuple[int, int], s2pt: IoPageTable, vmid: int, ats: bool = False) -> Ste:
    return arm_smmu_make_nested_domain_ste(FakeMaster(), vste, arm_lpae_s2_cfg(s2pt, vmid), ats)


def s1_stream(b: BareSmmu, sid: int, *, asid: int = 5, ssid_bits: int = 0,
              s1dss: int = STRTAB_STE_1_S1DSS_SSID0, hd: bool = False, stall: bool = False,
              ats: bool = False) -> tuple[IoPageTable, int]:
    """A stage-1 stream: one page table, a linear CD table, CD 0 valid."""
    pt = b.table(1)
    cdtab = b.alloc.alloc_pages(max(0, ssid_bits + 6 - 12))
    b.write_cd(cdtab, s1_cd(pt, asid, hd=hd, stall=stall))
    b.write_ste(sid, cdtable_ste(cdtab, ssid_bits, s1dss=s1dss, ats=ats, stall=stall))
    return pt, cdtab


def page(b: BareSmmu, fill: int = 0) -> int:
    pa = b.alloc.alloc_pages(0)
    if fill:
        b.mem.fill(pa, fill, 4096)
    return pa

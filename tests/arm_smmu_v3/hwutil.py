"""Builders for the bare-SMMU tests: STEs, CDs and page tables written by hand."""

from __future__ import annotations

import attrs

from drivers.arm_smmu_v3.cd import Cd, arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.domain import arm_lpae_s1_cfg, arm_lpae_s2_cfg
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_ATTR_TYPES_OVR,
    ARM_SMMU_FEAT_STALLS,
    CTXDESC_CD_0_TCR_HA,
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


GUEST_IPA = 0x4000_0000


class GuestTables:
    """A guest's memory for its stage-1 tables: IPAs of guest RAM (stage 2 maps
    ``GUEST_IPA`` + n pages to ``ram`` + n pages), page n for the n-th table."""

    def __init__(self, b: BareSmmu, ram: int) -> None:
        self.b = b
        self.ram = ram
        self.next = 0

    def alloc_table(self, size: int) -> int:
        self.next += 1
        return GUEST_IPA + self.next * 4096

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, ipa: int) -> int:
        return self.b.mem.read_u64(self.ram + ipa - GUEST_IPA)

    def write_u64(self, ipa: int, v: int) -> None:
        self.b.mem.write_u64(self.ram + ipa - GUEST_IPA, v)


def nested_stream(b: BareSmmu, vmid: int = 9, sid: int = 5, pages: int = 16, *,
                  ha: bool = False) -> tuple[IoPageTable, IoPageTable, int]:
    """StreamID ``sid`` nested: guest RAM at IPA ``GUEST_IPA`` (``pages`` pages, stage 2
    RW), the CD at guest page 0 and the guest's stage-1 tables in the pages after it.
    Returns (stage 1, stage 2, guest RAM's PA)."""
    from iommu_core.pgtable import formats

    s2 = b.table(2)
    ram = b.alloc.alloc_pages((pages - 1).bit_length())
    s2.map(GUEST_IPA, ram, pages * 4096, 3)
    s1 = IoPageTable(formats.arm_lpae_s1(), GuestTables(b, ram))
    cd = s1_cd(s1, 3).q
    if ha:
        cd = (cd[0] | CTXDESC_CD_0_TCR_HA, *cd[1:])
    b.mem.write_qwords(ram, cd)
    vste = cdtable_ste(GUEST_IPA)
    b.write_ste(sid, nested_ste((vste[0], vste[1]), s2, vmid))
    return s1, s2, ram

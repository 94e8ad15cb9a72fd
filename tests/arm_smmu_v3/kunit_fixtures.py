"""The fake master, SMMU and entries of arm-smmu-v3-test.c (smmuv3.md §7.1)."""

from __future__ import annotations

import enum

import attrs

from drivers.arm_smmu_v3.cd import (
    Cd,
    S1Cfg,
    SvaCpu,
    Tcr,
    arm_smmu_make_s1_cd,
    arm_smmu_make_sva_cd,
)
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_ATTR_TYPES_OVR,
    ARM_SMMU_FEAT_STALLS,
    FIELD_PREP,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_NESTED,
    STRTAB_STE_0_S1FMT_64K_L2,
    STRTAB_STE_1_MEV,
)
from drivers.arm_smmu_v3.ste import (
    S2Cfg,
    Ste,
    Vtcr,
    arm_smmu_make_cdtable_ste,
    arm_smmu_make_s2_domain_ste,
)

FAKE_CDTAB_DMA_ADDR = 0xF0F0F0F0F0F0
FAKE_TTBR = 0xDAEDBEEFDEADBEEF
FAKE_MAIR = 0xABCDEF012345678
SVA_MM_PGD = 0xDAEDBEEFDEADBEEF


class Feat(enum.IntFlag):
    """enum arm_smmu_test_master_feat."""

    NONE = 0
    ATS = 1
    STALL = 2
    NESTED = 4


@attrs.define
class FakeSmmu:
    features: int = ARM_SMMU_FEAT_STALLS | ARM_SMMU_FEAT_ATTR_TYPES_OVR


@attrs.define
class FakeCdTable:
    cdtab_dma: int = FAKE_CDTAB_DMA_ADDR
    s1cdmax: int = 0xFF
    s1fmt: int = STRTAB_STE_0_S1FMT_64K_L2


@attrs.define
class FakeMaster:
    smmu: FakeSmmu = attrs.field(factory=FakeSmmu)
    cd_table: FakeCdTable = attrs.field(factory=FakeCdTable)
    stall_enabled: bool = False


def make_s2_ste(feat: Feat = Feat.NONE) -> Ste:
    master = FakeMaster(stall_enabled=bool(feat & Feat.STALL))
    s2 = S2Cfg(vmid=0, vttbr=FAKE_TTBR,
               vtcr=Vtcr(tsz=4, sl=3, irgn=2, orgn=1, sh=3, tg=2, ps=1))
    return arm_smmu_make_s2_domain_ste(master, s2, ats_enabled=bool(feat & Feat.ATS))


def make_cdtable_ste(s1dss: int, dma: int = FAKE_CDTAB_DMA_ADDR, feat: Feat = Feat.NONE
                     ) -> Ste:
    master = FakeMaster(cd_table=FakeCdTable(cdtab_dma=dma),
                        stall_enabled=bool(feat & Feat.STALL))
    ste = arm_smmu_make_cdtable_ste(master, ats_enabled=bool(feat & Feat.ATS), s1dss=s1dss)
    if feat & Feat.NESTED:
        s2 = make_s2_ste(Feat.ATS)
        ste = ste.set_bits(0, FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_NESTED))
        ste = ste.set_bits(1, STRTAB_STE_1_MEV)
        ste = Ste((*ste.q[:2], *s2.q[2:]))
    return ste


def make_s1_cd(asid: int) -> Cd:
    s1 = S1Cfg(asid=asid, ttbr=FAKE_TTBR,
               tcr=Tcr(tsz=4, tg=2, irgn=2, orgn=1, sh=3, ips=1), mair=FAKE_MAIR)
    return arm_smmu_make_s1_cd(FakeMaster(), s1)


def make_sva_cd(asid: int) -> Cd:
    return arm_smmu_make_sva_cd(FakeMaster(), SVA_MM_PGD, asid, SvaCpu())


def make_sva_release_cd(asid: int) -> Cd:
    return arm_smmu_make_sva_cd(FakeMaster(), None, asid, SvaCpu())

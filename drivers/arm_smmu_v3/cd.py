"""Context descriptors: the make functions and the used-bit rule (smmuv3.md §4, §5.5-5.6)."""

from __future__ import annotations

import attrs

from drivers.arm_smmu_v3.entry import ZERO_QWORDS, Entry, Qwords
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_STALL_FORCE,
    CTXDESC_CD_0_A,
    CTXDESC_CD_0_AA64,
    CTXDESC_CD_0_ASET,
    CTXDESC_CD_0_ASID,
    CTXDESC_CD_0_R,
    CTXDESC_CD_0_S,
    CTXDESC_CD_0_TCR_EPD0,
    CTXDESC_CD_0_TCR_EPD1,
    CTXDESC_CD_0_TCR_HA,
    CTXDESC_CD_0_TCR_HD,
    CTXDESC_CD_0_TCR_IPS,
    CTXDESC_CD_0_TCR_IRGN0,
    CTXDESC_CD_0_TCR_ORGN0,
    CTXDESC_CD_0_TCR_SH0,
    CTXDESC_CD_0_TCR_T0SZ,
    CTXDESC_CD_0_TCR_TG0,
    CTXDESC_CD_0_V,
    CTXDESC_CD_1_TTB0_MASK,
    FIELD_GET,
    FIELD_PREP,
    U64,
)
from drivers.arm_smmu_v3.ste import MasterInfo


@attrs.frozen(slots=True, repr=False)
class Cd(Entry):
    """One context descriptor (``struct arm_smmu_cd``)."""

    @property
    def valid(self) -> bool:
        return bool(self.q[0] & CTXDESC_CD_0_V)

    @property
    def asid(self) -> int:
        return FIELD_GET(CTXDESC_CD_0_ASID, self.q[0])


@attrs.frozen(slots=True)
class Tcr:
    """The io-pgtable stage-1 TCR fields (``arm_lpae_s1_cfg.tcr``)."""

    tsz: int
    tg: int
    irgn: int
    orgn: int
    sh: int
    ips: int


@attrs.frozen(slots=True)
class S1Cfg:
    """What an S1 CD takes from its domain: ASID, TTBR, TCR, MAIR, the ARM_HD quirk."""

    asid: int
    ttbr: int
    tcr: Tcr
    mair: int
    hd: bool = False


def arm_smmu_make_s1_cd(master: MasterInfo, s1: S1Cfg) -> Cd:
    tcr = s1.tcr
    q = list(ZERO_QWORDS)
    q[0] = (FIELD_PREP(CTXDESC_CD_0_TCR_T0SZ, tcr.tsz)
            | FIELD_PREP(CTXDESC_CD_0_TCR_TG0, tcr.tg)
            | FIELD_PREP(CTXDESC_CD_0_TCR_IRGN0, tcr.irgn)
            | FIELD_PREP(CTXDESC_CD_0_TCR_ORGN0, tcr.orgn)
            | FIELD_PREP(CTXDESC_CD_0_TCR_SH0, tcr.sh)
            | CTXDESC_CD_0_TCR_EPD1 | CTXDESC_CD_0_V
            | FIELD_PREP(CTXDESC_CD_0_TCR_IPS, tcr.ips)
            | CTXDESC_CD_0_AA64
            | (CTXDESC_CD_0_S if master.stall_enabled else 0)
            | CTXDESC_CD_0_R | CTXDESC_CD_0_A | CTXDESC_CD_0_ASET
            | FIELD_PREP(CTXDESC_CD_0_ASID, s1.asid))
    # HTTU: hardware sets the access flag and, for DBM leaves, the dirty state.
    if s1.hd:
        q[0] |= CTXDESC_CD_0_TCR_HA | CTXDESC_CD_0_TCR_HD
    q[1] = s1.ttbr & CTXDESC_CD_1_TTB0_MASK
    q[3] = s1.mair & U64
    return Cd(tuple(q))


@attrs.frozen(slots=True)
class SvaCpu:
    """What an SVA CD copies from the CPU: PARange, VA bits, page size and MAIR_EL1."""

    ips: int = 5  # 48-bit PA
    va_bits: int = 48
    page_tg: int = 0  # TG0 encoding of PAGE_SIZE (4K)
    mair: int = 0x0000_00FF_4404_FF04


def arm_smmu_make_sva_cd(master: MasterInfo, mm_pgd: int | None, asid: int,
                         cpu: SvaCpu = SvaCpu()) -> Cd:
    """``arm_smmu_make_sva_cd``; without an mm it is the quiet "release" CD (EPD0)."""
    q = list(ZERO_QWORDS)
    q[0] = (CTXDESC_CD_0_TCR_EPD1 | CTXDESC_CD_0_V
            | FIELD_PREP(CTXDESC_CD_0_TCR_IPS, cpu.ips)
            | CTXDESC_CD_0_AA64
            | (CTXDESC_CD_0_S if master.stall_enabled else 0)
            | CTXDESC_CD_0_R | CTXDESC_CD_0_A | CTXDESC_CD_0_ASET
            | FIELD_PREP(CTXDESC_CD_0_ASID, asid))
    if mm_pgd is not None:
        q[0] |= (FIELD_PREP(CTXDESC_CD_0_TCR_T0SZ, 64 - cpu.va_bits)
                 | FIELD_PREP(CTXDESC_CD_0_TCR_TG0, cpu.page_tg)
                 | FIELD_PREP(CTXDESC_CD_0_TCR_IRGN0, 1)
                 | FIELD_PREP(CTXDESC_CD_0_TCR_ORGN0, 1)
                 | FIELD_PREP(CTXDESC_CD_0_TCR_SH0, 3))
        q[1] = mm_pgd & CTXDESC_CD_1_TTB0_MASK
    else:
        q[0] |= CTXDESC_CD_0_TCR_EPD0
        # A quiet CD: no stall or fault records unless stall is forced.
        if not master.smmu.features & ARM_SMMU_FEAT_STALL_FORCE:
            q[0] &= ~(CTXDESC_CD_0_S | CTXDESC_CD_0_R)
    q[3] = cpu.mair
    return Cd(tuple(q))


def arm_smmu_get_cd_used(ent: Qwords | Entry) -> Qwords:
    q = ent.q if isinstance(ent, Entry) else ent
    if not q[0] & CTXDESC_CD_0_V:
        return (CTXDESC_CD_0_V, 0, 0, 0, 0, 0, 0, 0)
    used = [U64] * 8
    # EPD0 disables TTB0 walks: its table fields are ignored.
    if q[0] & CTXDESC_CD_0_TCR_EPD0:
        used[0] &= ~(CTXDESC_CD_0_TCR_T0SZ | CTXDESC_CD_0_TCR_TG0 | CTXDESC_CD_0_TCR_IRGN0
                     | CTXDESC_CD_0_TCR_ORGN0 | CTXDESC_CD_0_TCR_SH0)
        used[1] &= ~CTXDESC_CD_1_TTB0_MASK
    return tuple(used)  # type: ignore[return-value]

"""Stream Table Entries: the make functions, and the used / update-safe bit rules the
hitless writer relies on (smmuv3.md §3, §5)."""

from __future__ import annotations

from typing import Protocol

import attrs

from drivers.arm_smmu_v3.entry import ZERO_QWORDS, Entry, Qwords
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_ATTR_TYPES_OVR,
    ARM_SMMU_FEAT_E2H,
    ARM_SMMU_FEAT_STALLS,
    ARM_SMMU_SH_ISH,
    FIELD_GET,
    FIELD_PREP,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_BYPASS,
    STRTAB_STE_0_CFG_NESTED,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_0_CFG_S2_TRANS,
    STRTAB_STE_0_S1CDMAX,
    STRTAB_STE_0_S1CTXPTR_MASK,
    STRTAB_STE_0_S1FMT,
    STRTAB_STE_0_V,
    STRTAB_STE_1_EATS,
    STRTAB_STE_1_EATS_S1CHK,
    STRTAB_STE_1_EATS_TRANS,
    STRTAB_STE_1_MEV,
    STRTAB_STE_1_S1C_CACHE_WBRA,
    STRTAB_STE_1_S1CIR,
    STRTAB_STE_1_S1COR,
    STRTAB_STE_1_S1CSH,
    STRTAB_STE_1_S1DSS,
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1STALLD,
    STRTAB_STE_1_S2FWB,
    STRTAB_STE_1_SHCFG,
    STRTAB_STE_1_SHCFG_INCOMING,
    STRTAB_STE_1_STRW,
    STRTAB_STE_1_STRW_EL2,
    STRTAB_STE_1_STRW_NSEL1,
    STRTAB_STE_2_S2AA64,
    STRTAB_STE_2_S2ENDI,
    STRTAB_STE_2_S2PTW,
    STRTAB_STE_2_S2R,
    STRTAB_STE_2_S2S,
    STRTAB_STE_2_S2VMID,
    STRTAB_STE_2_VTCR,
    STRTAB_STE_2_VTCR_S2IR0,
    STRTAB_STE_2_VTCR_S2OR0,
    STRTAB_STE_2_VTCR_S2PS,
    STRTAB_STE_2_VTCR_S2SH0,
    STRTAB_STE_2_VTCR_S2SL0,
    STRTAB_STE_2_VTCR_S2T0SZ,
    STRTAB_STE_2_VTCR_S2TG,
    STRTAB_STE_3_S2TTB_MASK,
)


@attrs.frozen(slots=True, repr=False)
class Ste(Entry):
    """One Stream Table Entry (``struct arm_smmu_ste``)."""

    @property
    def valid(self) -> bool:
        return bool(self.q[0] & STRTAB_STE_0_V)

    @property
    def cfg(self) -> int:
        return FIELD_GET(STRTAB_STE_0_CFG, self.q[0])

    @property
    def eats(self) -> int:
        return FIELD_GET(STRTAB_STE_1_EATS, self.q[1])


# -- what the make functions read (struct arm_smmu_master / _device / _cd_table) ------------
class SmmuInfo(Protocol):
    @property
    def features(self) -> int: ...


class CdTableInfo(Protocol):
    @property
    def cdtab_dma(self) -> int: ...

    @property
    def s1fmt(self) -> int: ...

    @property
    def s1cdmax(self) -> int: ...


class MasterInfo(Protocol):
    @property
    def smmu(self) -> SmmuInfo: ...

    @property
    def cd_table(self) -> CdTableInfo: ...

    @property
    def stall_enabled(self) -> bool: ...


@attrs.frozen(slots=True)
class Vtcr:
    """The io-pgtable stage-2 VTCR fields (``arm_lpae_s2_cfg.vtcr``)."""

    tsz: int
    sl: int
    irgn: int
    orgn: int
    sh: int
    tg: int
    ps: int


@attrs.frozen(slots=True)
class S2Cfg:
    """What an S2 STE takes from its domain: VMID, VTTBR, VTCR and the S2FWB quirk."""

    vmid: int
    vttbr: int
    vtcr: Vtcr
    s2fwb: bool = False


# -- make functions ----------------------------------------------------------------------------
def arm_smmu_make_abort_ste() -> Ste:
    return Ste((STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_ABORT),
                0, 0, 0, 0, 0, 0, 0))


def arm_smmu_make_bypass_ste(smmu: SmmuInfo) -> Ste:
    q0 = STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_BYPASS)
    q1 = 0
    if smmu.features & ARM_SMMU_FEAT_ATTR_TYPES_OVR:
        q1 = FIELD_PREP(STRTAB_STE_1_SHCFG, STRTAB_STE_1_SHCFG_INCOMING)
    return Ste((q0, q1, 0, 0, 0, 0, 0, 0))


def arm_smmu_make_cdtable_ste(master: MasterInfo, ats_enabled: bool, s1dss: int) -> Ste:
    smmu = master.smmu
    cd_table = master.cd_table
    q = list(ZERO_QWORDS)
    q[0] = (STRTAB_STE_0_V
            | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_S1_TRANS)
            | FIELD_PREP(STRTAB_STE_0_S1FMT, cd_table.s1fmt)
            | (cd_table.cdtab_dma & STRTAB_STE_0_S1CTXPTR_MASK)
            | FIELD_PREP(STRTAB_STE_0_S1CDMAX, cd_table.s1cdmax))
    q[1] = (FIELD_PREP(STRTAB_STE_1_S1DSS, s1dss)
            | FIELD_PREP(STRTAB_STE_1_S1CIR, STRTAB_STE_1_S1C_CACHE_WBRA)
            | FIELD_PREP(STRTAB_STE_1_S1COR, STRTAB_STE_1_S1C_CACHE_WBRA)
            | FIELD_PREP(STRTAB_STE_1_S1CSH, ARM_SMMU_SH_ISH)
            | (STRTAB_STE_1_S1STALLD if smmu.features & ARM_SMMU_FEAT_STALLS
               and not master.stall_enabled else 0)
            | FIELD_PREP(STRTAB_STE_1_EATS, STRTAB_STE_1_EATS_TRANS if ats_enabled else 0))
    # SHCFG is only read for stage 1 when S1DSS bypasses it (13.5 of the spec).
    if smmu.features & ARM_SMMU_FEAT_ATTR_TYPES_OVR and s1dss == STRTAB_STE_1_S1DSS_BYPASS:
        q[1] |= FIELD_PREP(STRTAB_STE_1_SHCFG, STRTAB_STE_1_SHCFG_INCOMING)
    if smmu.features & ARM_SMMU_FEAT_E2H:
        q[1] |= FIELD_PREP(STRTAB_STE_1_STRW, STRTAB_STE_1_STRW_EL2)
    else:
        q[1] |= FIELD_PREP(STRTAB_STE_1_STRW, STRTAB_STE_1_STRW_NSEL1)
        # VMID 0 is reserved for stage-1 (non-E2H) STEs.
        q[2] = FIELD_PREP(STRTAB_STE_2_S2VMID, 0)
    return Ste(tuple(q))


def arm_smmu_make_s2_domain_ste(master: MasterInfo, s2: S2Cfg, ats_enabled: bool) -> Ste:
    smmu = master.smmu
    vtcr = s2.vtcr
    q = list(ZERO_QWORDS)
    q[0] = STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_S2_TRANS)
    q[1] = FIELD_PREP(STRTAB_STE_1_EATS, STRTAB_STE_1_EATS_TRANS if ats_enabled else 0)
    if s2.s2fwb:
        q[1] |= STRTAB_STE_1_S2FWB
    if smmu.features & ARM_SMMU_FEAT_ATTR_TYPES_OVR:
        q[1] |= FIELD_PREP(STRTAB_STE_1_SHCFG, STRTAB_STE_1_SHCFG_INCOMING)
    vtcr_val = (FIELD_PREP(STRTAB_STE_2_VTCR_S2T0SZ, vtcr.tsz)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2SL0, vtcr.sl)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2IR0, vtcr.irgn)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2OR0, vtcr.orgn)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2SH0, vtcr.sh)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2TG, vtcr.tg)
                | FIELD_PREP(STRTAB_STE_2_VTCR_S2PS, vtcr.ps))
    q[2] = (FIELD_PREP(STRTAB_STE_2_S2VMID, s2.vmid)
            | FIELD_PREP(STRTAB_STE_2_VTCR, vtcr_val)
            | STRTAB_STE_2_S2AA64 | STRTAB_STE_2_S2PTW | STRTAB_STE_2_S2R)
    if master.stall_enabled:
        q[2] |= STRTAB_STE_2_S2S
    q[3] = s2.vttbr & STRTAB_STE_3_S2TTB_MASK
    return Ste(tuple(q))


def arm_smmu_make_nested_cd_table_ste(master: MasterInfo, vste: tuple[int, int], s2: S2Cfg,
                                      ats_enabled: bool) -> Ste:
    """The guest's CD table behind the parent's stage 2 (CFG=NESTED): S1 fields from the
    validated vSTE, everything stage-2 (and EATS) from the kernel's S2 STE."""
    base = arm_smmu_make_s2_domain_ste(master, s2, ats_enabled)
    q0 = (STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_NESTED)
          | (vste[0] & ~STRTAB_STE_0_CFG))
    q1 = base[1] | vste[1] | STRTAB_STE_1_MEV
    return Ste((q0, q1, *base.q[2:]))


def arm_smmu_make_nested_domain_ste(master: MasterInfo, vste: tuple[int, int], s2: S2Cfg,
                                    ats_enabled: bool) -> Ste:
    """Build the physical STE for a nested domain (V=0 in the vSTE means abort)."""
    cfg = FIELD_GET(STRTAB_STE_0_CFG, vste[0])
    if not vste[0] & STRTAB_STE_0_V:
        cfg = STRTAB_STE_0_CFG_ABORT
    if cfg == STRTAB_STE_0_CFG_S1_TRANS:
        return arm_smmu_make_nested_cd_table_ste(master, vste, s2, ats_enabled)
    if cfg == STRTAB_STE_0_CFG_BYPASS:
        return arm_smmu_make_s2_domain_ste(master, s2, ats_enabled)
    return arm_smmu_make_abort_ste()


# -- used / update-safe bits (arm_smmu_get_ste_used / _update_safe) ---------------------------
def arm_smmu_get_ste_used(ent: Qwords | Entry) -> Qwords:
    q = ent.q if isinstance(ent, Entry) else ent
    used = [0] * 8
    used[0] = STRTAB_STE_0_V
    if not q[0] & STRTAB_STE_0_V:
        return tuple(used)  # type: ignore[return-value]
    used[0] |= STRTAB_STE_0_CFG
    cfg = FIELD_GET(STRTAB_STE_0_CFG, q[0])
    if cfg & 1:  # stage 1 translates (S1_TRANS, NESTED)
        used[0] |= STRTAB_STE_0_S1FMT | STRTAB_STE_0_S1CTXPTR_MASK | STRTAB_STE_0_S1CDMAX
        used[1] |= (STRTAB_STE_1_S1DSS | STRTAB_STE_1_S1CIR | STRTAB_STE_1_S1COR
                    | STRTAB_STE_1_S1CSH | STRTAB_STE_1_S1STALLD | STRTAB_STE_1_STRW
                    | STRTAB_STE_1_EATS | STRTAB_STE_1_MEV)
        used[2] |= STRTAB_STE_2_S2VMID
        # SHCFG is only used when stage 1 is bypassed by S1DSS.
        if FIELD_GET(STRTAB_STE_1_S1DSS, q[1]) == STRTAB_STE_1_S1DSS_BYPASS:
            used[1] |= STRTAB_STE_1_SHCFG
    if cfg & 2:  # stage 2 translates (S2_TRANS, NESTED)
        used[1] |= (STRTAB_STE_1_S2FWB | STRTAB_STE_1_EATS | STRTAB_STE_1_SHCFG
                    | STRTAB_STE_1_MEV)
        used[2] |= (STRTAB_STE_2_S2VMID | STRTAB_STE_2_VTCR | STRTAB_STE_2_S2AA64
                    | STRTAB_STE_2_S2ENDI | STRTAB_STE_2_S2PTW | STRTAB_STE_2_S2S
                    | STRTAB_STE_2_S2R)
        used[3] |= STRTAB_STE_3_S2TTB_MASK
    if cfg == STRTAB_STE_0_CFG_BYPASS:
        used[1] |= STRTAB_STE_1_SHCFG
    return tuple(used)  # type: ignore[return-value]


def arm_smmu_get_ste_update_safe(cur: Qwords | Entry, target: Qwords | Entry) -> Qwords:
    """Bits whose change needs no ordering: MEV always; EATS_TRANS when neither side uses
    S1CHK or S2S (ATS is already off in the device while EATS changes)."""
    c = cur.q if isinstance(cur, Entry) else cur
    t = target.q if isinstance(target, Entry) else target
    safe = [0] * 8
    safe[1] |= STRTAB_STE_1_MEV
    s1chk = FIELD_PREP(STRTAB_STE_1_EATS, STRTAB_STE_1_EATS_S1CHK)
    if not (c[1] & s1chk or t[1] & s1chk or c[2] & STRTAB_STE_2_S2S
            or t[2] & STRTAB_STE_2_S2S):
        safe[1] |= FIELD_PREP(STRTAB_STE_1_EATS, STRTAB_STE_1_EATS_TRANS)
    return tuple(safe)  # type: ignore[return-value]


CFG_NAMES = {
    STRTAB_STE_0_CFG_ABORT: "ABORT",
    STRTAB_STE_0_CFG_BYPASS: "BYPASS",
    STRTAB_STE_0_CFG_S1_TRANS: "S1_TRANS",
    STRTAB_STE_0_CFG_S2_TRANS: "S2_TRANS",
    STRTAB_STE_0_CFG_NESTED: "NESTED",
}


def ste_summary(ste: Ste) -> str:
    if not ste.valid:
        return "V=0"
    return f"CFG={CFG_NAMES.get(ste.cfg, ste.cfg)} EATS={ste.eats}"

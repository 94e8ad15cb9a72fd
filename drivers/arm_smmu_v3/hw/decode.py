"""Decoding of STEs and CDs as the hardware reads them (QEMU's smmuv3 decode_ste/decode_cd).

Only the fields the configuration uses are looked at. An ILLEGAL combination is an
explicit error: :class:`SmmuEvent` with C_BAD_STE / C_BAD_CD, which the translation
pipeline turns into an event record. Page-table geometry is derived from the entry
(T0SZ, TG, SL0, PS/IPS) and expressed as a shared :mod:`iommu_core.pgtable` format, so
the one walker does the rest.
"""

from __future__ import annotations

import functools

import attrs

from drivers.arm_smmu_v3.entry import Qwords
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.regs import (
    CTXDESC_CD_0_A,
    CTXDESC_CD_0_AA64,
    CTXDESC_CD_0_ASID,
    CTXDESC_CD_0_ENDI,
    CTXDESC_CD_0_R,
    CTXDESC_CD_0_S,
    CTXDESC_CD_0_TCR_EPD0,
    CTXDESC_CD_0_TCR_HA,
    CTXDESC_CD_0_TCR_HD,
    CTXDESC_CD_0_TCR_IPS,
    CTXDESC_CD_0_TCR_T0SZ,
    CTXDESC_CD_0_TCR_TG0,
    CTXDESC_CD_0_V,
    CTXDESC_CD_1_TTB0_MASK,
    EVENT_NAMES,
    EVT_ID_BAD_CD_CONFIG,
    EVT_ID_BAD_STE_CONFIG,
    FIELD_GET,
    IDR0_STALL_MODEL_FORCE,
    IDR0_STALL_MODEL_NONE,
    IDR0_TTENDIAN_BE,
    OAS_BITS,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_BYPASS,
    STRTAB_STE_0_S1CDMAX,
    STRTAB_STE_0_S1CTXPTR_MASK,
    STRTAB_STE_0_S1FMT,
    STRTAB_STE_0_S1FMT_LINEAR,
    STRTAB_STE_0_V,
    STRTAB_STE_1_EATS,
    STRTAB_STE_1_EATS_S1CHK,
    STRTAB_STE_1_EATS_TRANS,
    STRTAB_STE_1_MEV,
    STRTAB_STE_1_S1DSS,
    STRTAB_STE_1_S1STALLD,
    STRTAB_STE_1_S2FWB,
    STRTAB_STE_1_STRW,
    STRTAB_STE_1_STRW_EL2,
    STRTAB_STE_1_STRW_NSEL1,
    STRTAB_STE_2_S2AA64,
    STRTAB_STE_2_S2ENDI,
    STRTAB_STE_2_S2R,
    STRTAB_STE_2_S2S,
    STRTAB_STE_2_S2VMID,
    STRTAB_STE_2_VTCR,
    STRTAB_STE_2_VTCR_S2PS,
    STRTAB_STE_2_VTCR_S2SL0,
    STRTAB_STE_2_VTCR_S2T0SZ,
    STRTAB_STE_2_VTCR_S2TG,
    STRTAB_STE_3_S2TTB_MASK,
)
from iommu_core.pgtable.formats import ArmLpaeFormat
from iommu_core.pgtable.formats.arm import TABLE_ATTRS, make_arm_lpae


class SmmuEvent(Exception):
    """A transaction that the SMMU terminates: the fields of its event record.

    ``record`` False: the configuration asked for no record (CD.R / STE.S2R clear).
    ``stall``: the faulting transaction may stall (CD.S / STE.S2S) instead of aborting.
    """

    def __init__(self, evt_id: int, detail: str = "", *, addr: int = 0, ipa: int = 0,
                 fetch_addr: int | None = None, s2: bool = False, cls: int = 0,
                 level: int | None = None, record: bool = True, stall: bool = False,
                 tt_read: bool = False) -> None:
        self.evt_id = evt_id
        self.detail = detail
        self.addr = addr
        self.ipa = ipa
        self.fetch_addr = fetch_addr
        self.s2 = s2
        self.cls = cls
        self.level = level
        self.record = record
        self.stall = stall
        self.tt_read = tt_read
        super().__init__(f"{self.name}: {detail}")

    @property
    def name(self) -> str:
        return EVENT_NAMES.get(self.evt_id, f"EVT_{self.evt_id:#x}")


def bad_ste(detail: str) -> SmmuEvent:
    return SmmuEvent(EVT_ID_BAD_STE_CONFIG, detail)


def bad_cd(detail: str) -> SmmuEvent:
    return SmmuEvent(EVT_ID_BAD_CD_CONFIG, detail)


TG_GRANULE = {0: 4096, 1: 65536, 2: 16384}  # TG0 / S2TG encodings


# -- page-table geometry from an entry -------------------------------------------------------
@functools.cache
def lpae_format(stage: int, granule: int, ias: int, oas: int, start_level: int,
                s2fwb: bool = False) -> ArmLpaeFormat:
    """The format the hardware walks: geometry from T0SZ/TG and (stage 2) SL0, with the
    start table concatenated when SL0 starts below what the input size needs."""
    pg_shift = granule.bit_length() - 1
    bpl = pg_shift - 3
    va_bits = ias - pg_shift
    levels = 4 - start_level
    top_bits = va_bits - bpl * (levels - 1)
    max_top = bpl + (4 if stage == 2 else 0)  # up to 16 concatenated S2 tables
    if levels < 1 or not 1 <= top_bits <= max_top:
        raise ValueError(f"start level {start_level} cannot resolve {ias} input bits")
    base = make_arm_lpae(1, granule=granule, ias=ias, oas=oas, hd=False, s2fwb=False,
                         coherent_walk=True)
    shifts = tuple(pg_shift + i * bpl for i in range(levels))
    bits = tuple([bpl] * (levels - 1) + [top_bits])
    sizes = tuple([granule] * (levels - 1) + [max(64, 8 << top_bits)])
    # Blocks the architecture decodes: 4K at levels 1-2, 16K at level 2, 64K at level 2
    # (and level 1 with a 52-bit output).
    arch_blocks = {4096: (1, 2), 16384: (2,), 65536: (1, 2) if oas > 48 else (2,)}[granule]
    leaf = tuple((1 << shifts[i]) if i == 0 or (3 - i) in arch_blocks else 0
                 for i in range(levels))
    pgsizes = 0
    for s in leaf:
        pgsizes |= s
    return attrs.evolve(
        base, name=f"arm_lpae_s{stage}", stage=stage, s2fwb=s2fwb, levels=levels,
        level_shift=shifts, level_bits=bits, table_size=sizes, leaf_sizes=leaf,
        pgsize_bitmap=pgsizes, start_level=start_level,
        concat=1 << max(0, top_bits - bpl), attr_or_mask=TABLE_ATTRS if stage == 1 else 0,
    )


def _effective_oas(cfg: SmmuHwConfig, ps: int, granule: int) -> int:
    bits = OAS_BITS[ps] if ps < len(OAS_BITS) else cfg.oas
    bits = min(bits, cfg.oas)
    if granule != 65536:
        bits = min(bits, 48)
    return bits


def _max_ias(cfg: SmmuHwConfig, granule: int, stage: int) -> int:
    if granule == 65536 and (cfg.oas == 52 if stage == 2 else cfg.vax):
        return 52
    return 48


# -- STE ---------------------------------------------------------------------------------------
@attrs.frozen(slots=True)
class S2Context:
    vmid: int
    fmt: ArmLpaeFormat
    ttb: int
    stall: bool  # S2S
    record: bool  # S2R
    fwb: bool


@attrs.frozen(slots=True)
class DecodedSte:
    sid: int
    raw: Qwords
    config: int
    s1: bool
    s2: bool
    s1fmt: int = 0
    s1ctxptr: int = 0
    s1cdmax: int = 0
    s1dss: int = 0
    s1stalld: bool = False
    el2: bool = False
    eats: int = 0
    mev: bool = False
    s2ctx: S2Context | None = None

    @property
    def abort(self) -> bool:
        return self.config == STRTAB_STE_0_CFG_ABORT

    @property
    def bypass(self) -> bool:
        return self.config == STRTAB_STE_0_CFG_BYPASS

    @property
    def vmid(self) -> int:
        """The VMID tagging this stream's TLB entries (S2VMID is read for S1 too)."""
        return FIELD_GET(STRTAB_STE_2_S2VMID, self.raw[2])


def decode_ste(cfg: SmmuHwConfig, sid: int, q: Qwords) -> DecodedSte:
    if not q[0] & STRTAB_STE_0_V:
        raise bad_ste("STE.V == 0")
    config = FIELD_GET(STRTAB_STE_0_CFG, q[0])
    if config in (1, 2, 3):
        raise bad_ste(f"reserved Config {config:#b}")
    if config in (STRTAB_STE_0_CFG_ABORT, STRTAB_STE_0_CFG_BYPASS):
        return DecodedSte(sid=sid, raw=q, config=config, s1=False, s2=False)
    s1, s2 = bool(config & 1), bool(config & 2)
    if s1 and not cfg.s1p:
        raise bad_ste("stage 1 is not implemented")
    if s2 and not cfg.s2p:
        raise bad_ste("stage 2 is not implemented")
    eats = FIELD_GET(STRTAB_STE_1_EATS, q[1]) if cfg.ats else 0
    if eats == 3:
        raise bad_ste("reserved EATS value 0b11")
    if eats == STRTAB_STE_1_EATS_S1CHK and not (s1 and s2):
        raise bad_ste("EATS=S1CHK needs a nested configuration")
    if s2 and q[2] & STRTAB_STE_2_S2S and eats == STRTAB_STE_1_EATS_TRANS:
        raise bad_ste("S2S with EATS=TRANS")
    fields: dict[str, object] = {"eats": eats, "mev": bool(q[1] & STRTAB_STE_1_MEV)}
    if s1:
        s1cdmax = FIELD_GET(STRTAB_STE_0_S1CDMAX, q[0])
        s1fmt = FIELD_GET(STRTAB_STE_0_S1FMT, q[0])
        if s1cdmax > cfg.ssidsize:
            raise bad_ste(f"S1CDMax {s1cdmax} exceeds SSIDSIZE {cfg.ssidsize}")
        if s1cdmax and s1fmt == 3:
            raise bad_ste("reserved S1Fmt 0b11")
        if s1cdmax and s1fmt != STRTAB_STE_0_S1FMT_LINEAR and not cfg.cd2l:
            raise bad_ste("2-level CD table without CD2L")
        s1dss = FIELD_GET(STRTAB_STE_1_S1DSS, q[1])
        if s1cdmax and s1dss == 3:
            raise bad_ste("reserved S1DSS 0b11")
        strw = FIELD_GET(STRTAB_STE_1_STRW, q[1])
        if strw not in (STRTAB_STE_1_STRW_NSEL1, STRTAB_STE_1_STRW_EL2) or (
                strw == STRTAB_STE_1_STRW_EL2 and not cfg.hyp):
            raise bad_ste(f"StreamWorld {strw} not supported")
        s1stalld = bool(q[1] & STRTAB_STE_1_S1STALLD)
        if s1stalld and cfg.stall_model == IDR0_STALL_MODEL_FORCE:
            raise bad_ste("S1STALLD with stall forced")
        fields.update(s1fmt=s1fmt if s1cdmax else 0, s1cdmax=s1cdmax, s1dss=s1dss,
                      s1ctxptr=q[0] & STRTAB_STE_0_S1CTXPTR_MASK, s1stalld=s1stalld,
                      el2=strw == STRTAB_STE_1_STRW_EL2)
    if s2:
        fields["s2ctx"] = _decode_s2(cfg, q)
    return DecodedSte(sid=sid, raw=q, config=config, s1=s1, s2=s2, **fields)  # type: ignore[arg-type]


def _decode_s2(cfg: SmmuHwConfig, q: Qwords) -> S2Context:
    if not q[2] & STRTAB_STE_2_S2AA64:
        raise bad_ste("AArch32 stage-2 tables are not implemented")
    # Only little-endian table walks are modelled.
    if q[2] & STRTAB_STE_2_S2ENDI:
        raise bad_ste("big-endian stage-2 tables")
    if cfg.ttendian == IDR0_TTENDIAN_BE:
        raise bad_ste("little-endian tables on a big-endian-only SMMU")
    vtcr = FIELD_GET(STRTAB_STE_2_VTCR, q[2])
    tg = FIELD_GET(STRTAB_STE_2_VTCR_S2TG, vtcr)
    granule = TG_GRANULE.get(tg)
    if granule is None or granule not in cfg.granules():
        raise bad_ste(f"stage-2 granule encoding {tg} not supported")
    ias = 64 - FIELD_GET(STRTAB_STE_2_VTCR_S2T0SZ, vtcr)
    if not 25 <= ias <= _max_ias(cfg, granule, 2):
        raise bad_ste(f"S2T0SZ gives an unsupported {ias}-bit IPA")
    sl0 = FIELD_GET(STRTAB_STE_2_VTCR_S2SL0, vtcr)
    # SL0 counts start levels backwards; the 4K encoding is offset by one.
    start = ({0: 2, 1: 1, 2: 0} if granule == 4096 else {0: 3, 1: 2, 2: 1}).get(sl0)
    if start is None:
        raise bad_ste(f"reserved S2SL0 {sl0}")
    oas = _effective_oas(cfg, FIELD_GET(STRTAB_STE_2_VTCR_S2PS, vtcr), granule)
    fwb = bool(q[1] & STRTAB_STE_1_S2FWB) and cfg.fwb
    try:
        fmt = lpae_format(2, granule, ias, oas, start, fwb)
    except ValueError as e:
        raise bad_ste(f"S2SL0/S2T0SZ inconsistent: {e}") from None
    stall = bool(q[2] & STRTAB_STE_2_S2S)
    if stall and cfg.stall_model == IDR0_STALL_MODEL_NONE:
        raise bad_ste("S2S without stall support")
    vmid = FIELD_GET(STRTAB_STE_2_S2VMID, q[2])
    if not cfg.vmid16:
        vmid &= 0xFF
    ttb = (q[3] & STRTAB_STE_3_S2TTB_MASK) & -fmt.table_size[-1]
    return S2Context(vmid=vmid, fmt=fmt, ttb=ttb, stall=stall,
                     record=bool(q[2] & STRTAB_STE_2_S2R), fwb=fwb)


# -- CD ----------------------------------------------------------------------------------------
@attrs.frozen(slots=True)
class DecodedCd:
    ssid: int
    raw: Qwords
    asid: int
    fmt: ArmLpaeFormat | None  # None: EPD0, every TTB0 walk faults
    ttb0: int
    ha: bool
    hd: bool
    stall: bool
    record: bool
    abort: bool


def decode_cd(cfg: SmmuHwConfig, ste: DecodedSte, ssid: int, q: Qwords) -> DecodedCd:
    q0 = q[0]
    if not q0 & CTXDESC_CD_0_V:
        raise bad_cd("CD.V == 0")
    if not q0 & CTXDESC_CD_0_AA64:
        raise bad_cd("AArch32 stage-1 tables are not implemented")
    if q0 & CTXDESC_CD_0_ENDI:
        raise bad_cd("big-endian stage-1 tables")
    stall = bool(q0 & CTXDESC_CD_0_S)
    if stall and (cfg.stall_model == IDR0_STALL_MODEL_NONE or ste.s1stalld):
        raise bad_cd("CD.S set where stalling is not allowed")
    if cfg.stall_model == IDR0_STALL_MODEL_FORCE:
        stall = True
    fmt = None
    ttb0 = 0
    epd0 = bool(q0 & CTXDESC_CD_0_TCR_EPD0)
    if not epd0:
        tg = FIELD_GET(CTXDESC_CD_0_TCR_TG0, q0)
        granule = TG_GRANULE.get(tg)
        if granule is None or granule not in cfg.granules():
            raise bad_cd(f"TG0 encoding {tg} not supported")
        ias = 64 - FIELD_GET(CTXDESC_CD_0_TCR_T0SZ, q0)
        if not 25 <= ias <= _max_ias(cfg, granule, 1):
            raise bad_cd(f"T0SZ gives an unsupported {ias}-bit input range")
        oas = _effective_oas(cfg, FIELD_GET(CTXDESC_CD_0_TCR_IPS, q0), granule)
        pg_shift = granule.bit_length() - 1
        levels = -(-(ias - pg_shift) // (pg_shift - 3))
        fmt = lpae_format(1, granule, ias, oas, 4 - levels)
        ttb0 = (q[1] & CTXDESC_CD_1_TTB0_MASK) & -fmt.table_size[-1]
    asid = FIELD_GET(CTXDESC_CD_0_ASID, q0)
    if not cfg.asid16:
        asid &= 0xFF
    return DecodedCd(ssid=ssid, raw=q, asid=asid, fmt=fmt, ttb0=ttb0,
                     ha=bool(q0 & CTXDESC_CD_0_TCR_HA) and cfg.httu >= 1,
                     hd=bool(q0 & CTXDESC_CD_0_TCR_HD) and cfg.httu >= 2,
                     stall=stall, record=bool(q0 & CTXDESC_CD_0_R),
                     abort=bool(q0 & CTXDESC_CD_0_A))

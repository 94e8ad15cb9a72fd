"""ARM VMSAv8-64 long-descriptor (LPAE) tables, stage 1 and stage 2, as io-pgtable-arm
builds them for the SMMUv3 (4K/16K/64K granules, 52-bit PA with 64K, concatenated S2
start tables)."""

from __future__ import annotations

import errno

import attrs

from iommu_core.errors import fail
from iommu_core.pgtable.formats.base import (
    EMPTY,
    INVALID,
    LEAF,
    TABLE,
    DescField,
    PtFormat,
    TableHwInfo,
    bit_mask,
    check_prot,
    lg2,
)
from iommu_core.prot import (
    IOMMU_CACHE,
    IOMMU_MMIO,
    IOMMU_NOEXEC,
    IOMMU_PRIV,
    IOMMU_READ,
    IOMMU_WRITE,
)

# -- descriptor bits (smmuv3.md §13.1) ----------------------------------------------------
VALID = 1 << 0
TYPE_TABLE = 1 << 1  # levels 0-2: table (else block); level 3: page
ATTRINDX_SHIFT = 2  # S1 AttrIndx[2:0]
MEMATTR_SHIFT = 2  # S2 MemAttr[3:0]
NS = 1 << 5
AP_UNPRIV = 1 << 6  # S1 AP[1]
AP_RDONLY = 1 << 7  # S1 AP[2]
S2AP_READ = 1 << 6
S2AP_WRITE = 1 << 7
SH_SHIFT = 8
SH_OS = 2 << SH_SHIFT
SH_IS = 3 << SH_SHIFT
AF = 1 << 10
NG = 1 << 11
DBM = 1 << 51
CONTIG = 1 << 52
PXN = 1 << 53  # S2: XN[0]
UXN = 1 << 54  # S2: XN[1]
XN = PXN | UXN
# Table descriptor attributes (stage 1 only; ignored by stage 2).
PXN_TABLE = 1 << 59
UXN_TABLE = 1 << 60
AP_TABLE_NO_EL0 = 1 << 61  # APTable[0]: no unprivileged access below
AP_TABLE_RDONLY = 1 << 62  # APTable[1]: no writes below
NS_TABLE = 1 << 63
TABLE_ATTRS = PXN_TABLE | UXN_TABLE | AP_TABLE_NO_EL0 | AP_TABLE_RDONLY | NS_TABLE

# MAIR indexes io-pgtable-arm programs (idx0 NC, idx1 WBRWA, idx2 device, idx3 iNC/oWB).
MAIR_IDX_NC = 0
MAIR_IDX_CACHE = 1
MAIR_IDX_DEV = 2
MAIR_IDX_INC_OCACHE = 3
MAIR = 0x44 | (0xFF << 8) | (0x04 << 16) | (0xF4 << 24)
# S2 MemAttr values.
MEMATTR_OIWB = 0xF
MEMATTR_NC = 0x5
MEMATTR_DEV = 0x1
MEMATTR_FWB_WB = 0x6

# TCR/VTCR encodings (io-pgtable-arm.h).
TG0 = {4096: 0, 65536: 1, 16384: 2}
PS_ENC = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5, 52: 6}
SH_NS_ENC, SH_OS_ENC, SH_IS_ENC = 0, 2, 3
RGN_NC, RGN_WBWA = 0, 1

_S2_MAX_CONCAT = 16
_ATTRINDX_NAMES = ("normal non-cacheable", "normal WBRWA", "device nGnRE", "inner NC outer WB")
_SH_NAMES = ("non-shareable", "reserved", "outer shareable", "inner shareable")
_MEMATTR_NAMES = {
    0x1: "device-nGnRE",
    0x5: "normal non-cacheable",
    0x6: "normal WB (FWB: forced)",
    0xF: "normal inner/outer WB",
}


@attrs.frozen(kw_only=True)
class ArmTcr:
    """The TCR (stage 1, for the CD) or VTCR (stage 2, for the STE) fields io-pgtable
    hands the driver (smmuv3.md §13.4), plus MAIR for stage 1."""

    tsz: int  # T0SZ / S2T0SZ = 64 - ias
    tg: int  # TG0 encoding
    ps: int  # IPS (S1) / PS (S2) encoding of oas
    sh: int
    irgn: int
    orgn: int
    sl0: int | None  # stage 2 only
    mair: int | None  # stage 1 only


@attrs.frozen(kw_only=True)
class ArmTableInfo(TableHwInfo):
    """TTBR/VTTBR (``root``) and the TCR/VTCR fields."""

    tcr: ArmTcr
    start_level: int


@attrs.frozen(kw_only=True)
class ArmLpaeFormat(PtFormat):
    stage: int
    #: io-pgtable quirk ARM_HD: writable leaves get DBM (HTTU dirty tracking).
    hd: bool
    #: quirk ARM_S2FWB: stage-2 MemAttr uses the FWB encodings.
    s2fwb: bool
    coherent_walk: bool
    #: ARM level number of the top table (4 - levels).
    start_level: int
    #: Concatenated start-level tables (stage 2), 1 when not concatenated.
    concat: int
    #: 64K granule with a 52-bit OA: PA[51:48] are held in descriptor bits [15:12].
    pa52: bool

    def arch_level(self, level: int) -> str:
        return f"L{3 - level}"

    # -- address packing ----------------------------------------------------------------------
    def _pack(self, pa: int) -> int:
        if self.pa52:
            return (pa & bit_mask(47, 16)) | ((pa >> 36) & 0xF000)
        return pa & bit_mask(47, 12)

    def _unpack(self, pte: int, shift: int) -> int:
        oa = pte & bit_mask(47, shift)
        if self.pa52:
            oa |= (pte & 0xF000) << 36
        return oa

    # -- codecs -------------------------------------------------------------------------------
    def prot_to_attrs(self, prot: int) -> int:
        check_prot(prot)
        pte = AF | (SH_IS if prot & IOMMU_CACHE else SH_OS)
        if prot & IOMMU_NOEXEC:
            pte |= XN
        if self.stage == 1:
            pte |= NG
            if prot & IOMMU_READ and not prot & IOMMU_WRITE:
                pte |= AP_RDONLY
            elif self.hd:
                pte |= DBM  # writable-dirty until dirty tracking cleans it
            if not prot & IOMMU_PRIV:
                pte |= AP_UNPRIV
            if prot & IOMMU_MMIO:
                idx = MAIR_IDX_DEV
            elif prot & IOMMU_CACHE:
                idx = MAIR_IDX_CACHE
            else:
                idx = MAIR_IDX_NC
            return pte | (idx << ATTRINDX_SHIFT)
        if prot & IOMMU_READ:
            pte |= S2AP_READ
        if prot & IOMMU_WRITE:
            pte |= S2AP_WRITE
            if self.hd:
                pte |= DBM
        if prot & IOMMU_MMIO:
            memattr = MEMATTR_DEV
        elif prot & IOMMU_CACHE:
            memattr = MEMATTR_FWB_WB if self.s2fwb else MEMATTR_OIWB
        else:
            memattr = MEMATTR_NC
        return pte | (memattr << MEMATTR_SHIFT)

    def make_leaf(self, oa: int, level: int, attrs_bits: int, pgsize: int) -> int:
        # Level 3 (our level 0) leaves are "page" descriptors 0b11, others "block" 0b01.
        return attrs_bits | (3 if level == 0 else 1) | self._pack(oa)

    def make_table(self, table_pa: int, level: int) -> int:
        return self._pack(table_pa) | VALID | TYPE_TABLE

    def classify(self, pte: int, level: int) -> int:
        if not pte & VALID:
            return EMPTY
        if level == 0:
            return LEAF if pte & TYPE_TABLE else INVALID
        if pte & TYPE_TABLE:
            return TABLE
        return LEAF if self.leaf_sizes[level] else INVALID

    def table_pa(self, pte: int) -> int:
        return self._unpack(pte, self.level_shift[0])

    def leaf_oa_size(self, pte: int, level: int) -> tuple[int, int]:
        shift = self.level_shift[level]
        return self._unpack(pte, shift), 1 << shift

    def leaf_prot(self, pte: int) -> int:
        if self.stage == 1:
            return IOMMU_READ | IOMMU_WRITE if (not pte & AP_RDONLY or pte & DBM) else IOMMU_READ
        prot = IOMMU_READ if pte & S2AP_READ else 0
        if pte & (S2AP_WRITE | DBM):
            prot |= IOMMU_WRITE
        return prot

    def leaf_perms(self, pte: int, acc: int) -> tuple[bool, bool, bool, bool]:
        if self.stage == 1:
            writable = not (pte & AP_RDONLY or acc & AP_TABLE_RDONLY)
            user = bool(pte & AP_UNPRIV) and not acc & AP_TABLE_NO_EL0
            executable = not (pte & XN or acc & (PXN_TABLE | UXN_TABLE))
            return True, writable, executable, user
        return bool(pte & S2AP_READ), bool(pte & S2AP_WRITE), not pte & XN, True

    # -- dirty (HTTU DBM): writable-clean = DBM with the write permission withheld ---------------
    def _wr_bits(self) -> tuple[int, int]:
        """(bits that mean writable-dirty, mask) for this stage."""
        if self.stage == 1:
            return DBM, DBM | AP_RDONLY
        return DBM | S2AP_WRITE, DBM | S2AP_WRITE

    def is_dirty(self, pte: int) -> bool:
        want, mask = self._wr_bits()
        return (pte & mask) == want

    def make_clean(self, pte: int) -> int:
        if not pte & DBM:
            return pte
        return pte | AP_RDONLY if self.stage == 1 else pte & ~S2AP_WRITE

    def make_dirty(self, pte: int) -> int:
        if not pte & DBM:
            return pte
        return pte & ~AP_RDONLY if self.stage == 1 else pte | S2AP_WRITE

    def write_needs_dirty_update(self, pte: int) -> bool:
        return bool(pte & DBM) and not self.is_dirty(pte)

    # -- hardware programming ------------------------------------------------------------------
    def tcr(self) -> ArmTcr:
        if self.coherent_walk:
            sh, irgn, orgn = SH_IS_ENC, RGN_WBWA, RGN_WBWA
        else:
            sh, irgn, orgn = SH_OS_ENC, RGN_NC, RGN_NC
        granule = self.granule
        if self.stage == 1:
            return ArmTcr(
                tsz=64 - self.ias,
                tg=TG0[granule],
                ps=PS_ENC[self.oas],
                sh=sh,
                irgn=irgn,
                orgn=orgn,
                sl0=None,
                mair=MAIR,
            )
        # SL0 counts start levels backwards; its 4K encoding is offset by one.
        sl = self.start_level + (1 if granule == 4096 else 0)
        return ArmTcr(
            tsz=64 - self.ias,
            tg=TG0[granule],
            ps=PS_ENC[self.oas],
            sh=sh,
            irgn=irgn,
            orgn=orgn,
            sl0=~sl & 3,
            mair=None,
        )

    def hw_info(self, root: int) -> ArmTableInfo:
        return ArmTableInfo(
            root=root, levels=self.levels, tcr=self.tcr(), start_level=self.start_level
        )

    # -- people -----------------------------------------------------------------------------------
    def describe_fields(self, pte: int, level: int) -> tuple[str, list[DescField]]:
        kind = self.classify(pte, level)
        if kind == EMPTY:
            return "invalid", [DescField(name="valid", value=0, meaning="no mapping")]
        if kind == INVALID:
            what = "reserved type at level 3" if level == 0 else "block not allowed here"
            return "reserved", [DescField(name="type", value=pte & 3, meaning=what)]
        if kind == TABLE:
            f = [
                DescField(name="type", value=3, meaning="table"),
                DescField(
                    name="next", value=self.table_pa(pte), meaning="next-level table address"
                ),
            ]
            if self.stage == 1:
                f += [
                    DescField(
                        name="APTable",
                        value=(pte >> 61) & 3,
                        meaning="bit0: no EL0 access below, bit1: read-only below",
                    ),
                    DescField(
                        name="UXNTable", value=(pte >> 60) & 1, meaning="unpriv execute-never below"
                    ),
                    DescField(
                        name="PXNTable", value=(pte >> 59) & 1, meaning="priv execute-never below"
                    ),
                    DescField(name="NSTable", value=(pte >> 63) & 1, meaning="non-secure below"),
                ]
            return "table", f
        oa, size = self.leaf_oa_size(pte, level)
        f = [DescField(name="type", value=pte & 3, meaning="page" if level == 0 else "block")]
        if self.stage == 1:
            idx = (pte >> ATTRINDX_SHIFT) & 7
            ap = (pte >> 6) & 3
            ap_text = ("RW, priv only", "RW", "RO, priv only", "RO")[ap]
            f += [
                DescField(
                    name="AttrIndx",
                    value=idx,
                    meaning=_ATTRINDX_NAMES[idx] if idx < 4 else "MAIR idx",
                ),
                DescField(name="NS", value=(pte >> 5) & 1, meaning="non-secure output"),
                DescField(name="AP", value=ap, meaning=ap_text),
            ]
        else:
            memattr = (pte >> MEMATTR_SHIFT) & 0xF
            s2ap = (pte >> 6) & 3
            f += [
                DescField(name="MemAttr", value=memattr, meaning=_MEMATTR_NAMES.get(memattr, "")),
                DescField(name="S2AP", value=s2ap, meaning=("none", "R", "W", "RW")[s2ap]),
            ]
        sh = (pte >> SH_SHIFT) & 3
        f += [
            DescField(name="SH", value=sh, meaning=_SH_NAMES[sh]),
            DescField(name="AF", value=(pte >> 10) & 1, meaning="access flag"),
        ]
        if self.stage == 1:
            f.append(
                DescField(name="nG", value=(pte >> 11) & 1, meaning="not global (ASID tagged)")
            )
        f += [
            DescField(name="OA", value=oa, meaning=f"output address, {size:#x} bytes"),
            DescField(name="DBM", value=(pte >> 51) & 1, meaning="dirty bit modifier"),
            DescField(name="Contig", value=(pte >> 52) & 1, meaning="contiguous hint"),
        ]
        if self.stage == 1:
            f += [
                DescField(name="PXN", value=(pte >> 53) & 1, meaning="priv execute-never"),
                DescField(name="UXN", value=(pte >> 54) & 1, meaning="unpriv execute-never"),
            ]
        else:
            f.append(DescField(name="XN", value=(pte >> 53) & 3, meaning="execute-never"))
        return ("page" if level == 0 else "block"), f


def _concat_mandatory(granule: int, start_level: int, ias: int, oas: int) -> bool:
    """arm_lpae_concat_mandatory(): when stage 2 must start one level lower."""
    if granule == 16384 and start_level == 0:
        return oas == 48 or ias == 48
    if granule == 4096 and start_level == 0:
        return oas in (40, 42)
    return granule == 16384 and start_level == 1 and oas == 40


def make_arm_lpae(
    stage: int,
    *,
    granule: int,
    ias: int,
    oas: int,
    hd: bool,
    s2fwb: bool,
    coherent_walk: bool,
) -> ArmLpaeFormat:
    if granule not in TG0:
        fail(errno.EINVAL, f"ARM LPAE granule must be 4K, 16K or 64K, not {granule:#x}")
    max_bits = 52 if granule == 65536 else 48
    if oas not in PS_ENC or oas > max_bits:
        fail(errno.EINVAL, f"unsupported ARM output size {oas} for granule {granule:#x}")
    if not 25 <= ias <= max_bits:
        fail(errno.EINVAL, f"unsupported ARM input size {ias} for granule {granule:#x}")
    if s2fwb and stage != 2:
        fail(errno.EINVAL, "S2FWB is a stage-2 quirk")
    pg_shift = lg2(granule)
    bpl = pg_shift - 3
    va_bits = ias - pg_shift
    levels = -(-va_bits // bpl)
    start_level = 4 - levels
    top_bits = va_bits - bpl * (levels - 1)
    concat = 1
    if stage == 2 and _concat_mandatory(granule, start_level, ias, oas):
        if (1 << top_bits) > _S2_MAX_CONCAT:
            fail(errno.EINVAL, "stage-2 concatenation needs more than 16 tables")
        concat = 1 << top_bits
        top_bits += bpl
        levels -= 1
        start_level += 1
    shifts = tuple(pg_shift + level * bpl for level in range(levels))
    bits = tuple([bpl] * (levels - 1) + [top_bits])
    sizes = tuple([granule] * (levels - 1) + [max(64, 8 << top_bits)])
    # Blocks io-pgtable allows: 4K: 2M, 1G; 16K: 32M; 64K: 512M (+4T with a 52-bit PA).
    block_levels = {4096: (1, 2), 16384: (1,), 65536: (1, 2) if oas > 48 else (1,)}[granule]
    leaf = tuple(
        (1 << shifts[level]) if level == 0 or level in block_levels else 0
        for level in range(levels)
    )
    pgsizes = 0
    for size in leaf:
        pgsizes |= size
    return ArmLpaeFormat(
        name=f"arm_lpae_s{stage}",
        params=(
            ("granule", granule),
            ("ias", ias),
            ("oas", oas),
            ("hd", int(hd)),
            ("s2fwb", int(s2fwb)),
            ("coherent_walk", int(coherent_walk)),
        ),
        levels=levels,
        level_shift=shifts,
        level_bits=bits,
        table_size=sizes,
        leaf_sizes=leaf,
        pgsize_bitmap=pgsizes,
        ias=ias,
        oas=oas,
        va_ranges=((0, (1 << ias) - 1),),
        dirty_tracking=hd,
        attr_or_mask=TABLE_ATTRS if stage == 1 else 0,
        accessed_leaf_bit=AF,
        access_flag_faults=True,
        stage=stage,
        hd=hd,
        s2fwb=s2fwb,
        coherent_walk=coherent_walk,
        start_level=start_level,
        concat=concat,
        pa52=granule == 65536 and oas == 52,
    )

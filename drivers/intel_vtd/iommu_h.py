"""VT-d architecture definitions shared by the driver and the hardware model, as
``drivers/iommu/intel/iommu.h`` and QEMU's ``intel_iommu_internal.h`` both carry them:
register offsets, CAP/ECAP fields, command/status bits, root/context entry layouts and
the invalidation descriptors (vtd_amd.md §A1-§A3, §A6).

The descriptor builders (``qi_desc_*``) are the driver's; the hardware model decodes the
same bit positions with :func:`field`. Golden tests check both against the specification.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

U64_MAX = (1 << 64) - 1
VTD_PAGE_SHIFT = 12
VTD_PAGE_SIZE = 1 << VTD_PAGE_SHIFT
VTD_PAGE_MASK = U64_MAX & ~(VTD_PAGE_SIZE - 1)
#: MAX_AGAW_PFN_WIDTH: the "everything" address mask of a flush (64 - 12).
MAX_AGAW_PFN_WIDTH = 52


def field(value: int, hi: int, lo: int) -> int:
    """Bits ``hi:lo`` of ``value``."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def put(hi: int, lo: int, v: int) -> int:
    """``v`` placed at bits ``hi:lo`` (masked to the field)."""
    return (v & ((1 << (hi - lo + 1)) - 1)) << lo


def genmask(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


# ---------------------------------------------------------------------------------------
# Register offsets (DMAR_*_REG)
# ---------------------------------------------------------------------------------------
DMAR_VER_REG = 0x00
DMAR_CAP_REG = 0x08
DMAR_ECAP_REG = 0x10
DMAR_GCMD_REG = 0x18
DMAR_GSTS_REG = 0x1C
DMAR_RTADDR_REG = 0x20
DMAR_CCMD_REG = 0x28
DMAR_FSTS_REG = 0x34
DMAR_FECTL_REG = 0x38
DMAR_FEDATA_REG = 0x3C
DMAR_FEADDR_REG = 0x40
DMAR_FEUADDR_REG = 0x44
DMAR_PMEN_REG = 0x64
DMAR_IQH_REG = 0x80
DMAR_IQT_REG = 0x88
DMAR_IQA_REG = 0x90
DMAR_ICS_REG = 0x9C
DMAR_IQER_REG = 0xB0
DMAR_IRTA_REG = 0xB8
DMAR_PQH_REG = 0xC0
DMAR_PQT_REG = 0xC8
DMAR_PQA_REG = 0xD0
DMAR_PRS_REG = 0xDC
DMAR_PECTL_REG = 0xE0
DMAR_PEDATA_REG = 0xE4
DMAR_PEADDR_REG = 0xE8
DMAR_PEUADDR_REG = 0xEC
#: Where this model puts the IOTLB register pair and the fault recording registers.
VTD_IRO = 0x50  # ECAP.IRO: IVA at 0x500, IOTLB at 0x508
VTD_FRO = 0x40  # CAP.FRO: first FRCD at 0x400
DMAR_REG_SIZE = 0x1000

# ---------------------------------------------------------------------------------------
# CAP_REG fields (hi, lo)
# ---------------------------------------------------------------------------------------
CAP_ND = (2, 0)
CAP_AFL = (3, 3)
CAP_RWBF = (4, 4)
CAP_PLMR = (5, 5)
CAP_PHMR = (6, 6)
CAP_CM = (7, 7)
CAP_SAGAW = (12, 8)
CAP_MGAW = (21, 16)
CAP_ZLR = (22, 22)
CAP_FRO = (33, 24)
CAP_SLLPS = (37, 34)
CAP_PSI = (39, 39)
CAP_NFR = (47, 40)
CAP_MAMV = (53, 48)
CAP_DWD = (54, 54)
CAP_DRD = (55, 55)
CAP_FL1GP = (56, 56)
CAP_PI = (59, 59)
CAP_FL5LP = (60, 60)
CAP_ECMDS = (61, 61)
CAP_ESIRTPS = (62, 62)
CAP_ESRTPS = (63, 63)

# ECAP_REG fields
ECAP_C = (0, 0)
ECAP_QI = (1, 1)
ECAP_DT = (2, 2)
ECAP_IR = (3, 3)
ECAP_EIM = (4, 4)
ECAP_PT = (6, 6)
ECAP_SC = (7, 7)
ECAP_IRO = (17, 8)
ECAP_MHMV = (23, 20)
ECAP_MTS = (25, 25)
ECAP_NEST = (26, 26)
ECAP_PRS = (29, 29)
ECAP_ERS = (30, 30)
ECAP_SRS = (31, 31)
ECAP_NWFS = (33, 33)
ECAP_EAFS = (34, 34)
ECAP_PSS = (39, 35)
ECAP_PASID = (40, 40)
ECAP_DIT = (41, 41)
ECAP_PDS = (42, 42)
ECAP_SMTS = (43, 43)
ECAP_SLADS = (45, 45)
ECAP_SLTS = (46, 46)
ECAP_FLTS = (47, 47)
ECAP_SMPWC = (48, 48)
ECAP_RPS = (49, 49)


def reg_field(reg: int, f: tuple[int, int]) -> int:
    return field(reg, f[0], f[1])


def reg_put(f: tuple[int, int], v: int) -> int:
    return put(f[0], f[1], v)


# Decoders named as iommu.h's cap_* / ecap_* macros (the driver's view).
def cap_ndoms(cap: int) -> int:
    return 1 << (4 + 2 * reg_field(cap, CAP_ND))


def cap_rwbf(cap: int) -> bool:
    return bool(reg_field(cap, CAP_RWBF))


def cap_caching_mode(cap: int) -> bool:
    return bool(reg_field(cap, CAP_CM))


def cap_sagaw(cap: int) -> int:
    return reg_field(cap, CAP_SAGAW)


def cap_mgaw(cap: int) -> int:
    return reg_field(cap, CAP_MGAW) + 1


def cap_fault_reg_offset(cap: int) -> int:
    return reg_field(cap, CAP_FRO) * 16


def cap_num_fault_regs(cap: int) -> int:
    return reg_field(cap, CAP_NFR) + 1


def cap_super_page_val(cap: int) -> int:
    return reg_field(cap, CAP_SLLPS)


def cap_pgsel_inv(cap: int) -> bool:
    return bool(reg_field(cap, CAP_PSI))


def cap_max_amask_val(cap: int) -> int:
    return reg_field(cap, CAP_MAMV)


def cap_write_drain(cap: int) -> bool:
    return bool(reg_field(cap, CAP_DWD))


def cap_read_drain(cap: int) -> bool:
    return bool(reg_field(cap, CAP_DRD))


def cap_fl1gp_support(cap: int) -> bool:
    return bool(reg_field(cap, CAP_FL1GP))


def cap_fl5lp_support(cap: int) -> bool:
    return bool(reg_field(cap, CAP_FL5LP))


def cap_esrtps(cap: int) -> bool:
    return bool(reg_field(cap, CAP_ESRTPS))


def ecap_coherent(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_C))


def ecap_qis(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_QI))


def ecap_dev_iotlb_support(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_DT))


def ecap_pass_through(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_PT))


def ecap_sc_support(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SC))


def ecap_iotlb_offset(ecap: int) -> int:
    return reg_field(ecap, ECAP_IRO) * 16


def ecap_nest(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_NEST))


def ecap_prs(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_PRS))


def ecap_srs(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SRS))


def ecap_eafs(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_EAFS))


def ecap_pss(ecap: int) -> int:
    return reg_field(ecap, ECAP_PSS)


def ecap_pasid(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_PASID))


def ecap_pds(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_PDS))


def ecap_smts(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SMTS))


def ecap_slads(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SLADS))


def ecap_slts(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SLTS))


def ecap_flts(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_FLTS))


def ecap_smpwc(ecap: int) -> bool:
    return bool(reg_field(ecap, ECAP_SMPWC))


# agaw <-> width (agaw 0/1/2/3 = 30/39/48/57 bits; levels = agaw + 2)
def agaw_to_width(agaw: int) -> int:
    return min(30 + agaw * 9, 64)


def agaw_to_level(agaw: int) -> int:
    return agaw + 2


def width_to_agaw(width: int) -> int:
    return -(-(width - 30) // 9)


# ---------------------------------------------------------------------------------------
# GCMD/GSTS, FSTS, FECTL, PRS, RTADDR, CCMD, IOTLB register bits
# ---------------------------------------------------------------------------------------
DMA_GCMD_TE = 1 << 31
DMA_GCMD_SRTP = 1 << 30
DMA_GCMD_SFL = 1 << 29
DMA_GCMD_EAFL = 1 << 28
DMA_GCMD_WBF = 1 << 27
DMA_GCMD_QIE = 1 << 26
DMA_GCMD_IRE = 1 << 25
DMA_GCMD_SIRTP = 1 << 24
DMA_GCMD_CFI = 1 << 23
DMA_GSTS_TES = DMA_GCMD_TE
DMA_GSTS_RTPS = DMA_GCMD_SRTP
DMA_GSTS_WBFS = DMA_GCMD_WBF
DMA_GSTS_QIES = DMA_GCMD_QIE
DMA_GSTS_IRES = DMA_GCMD_IRE
#: One-shot commands: their status bit reports completion, not a state.
GCMD_ONE_SHOT = DMA_GCMD_SRTP | DMA_GCMD_SFL | DMA_GCMD_WBF | DMA_GCMD_SIRTP

DMA_FSTS_PFO = 1 << 0
DMA_FSTS_PPF = 1 << 1
DMA_FSTS_IQE = 1 << 4
DMA_FSTS_ICE = 1 << 5
DMA_FSTS_ITE = 1 << 6
DMA_FSTS_PRO = 1 << 7
DMA_FSTS_W1C = DMA_FSTS_PFO | DMA_FSTS_IQE | DMA_FSTS_ICE | DMA_FSTS_ITE | DMA_FSTS_PRO


def dma_fsts_fault_record_index(s: int) -> int:
    return field(s, 15, 8)


DMA_FECTL_IM = 1 << 31
DMA_FECTL_IP = 1 << 30
DMA_PRS_PPR = 1 << 0
DMA_PRS_PRO = 1 << 1
DMA_RTADDR_SMT = 1 << 10  # TTM = 01b: scalable mode

DMA_CCMD_ICC = 1 << 63
DMA_CCMD_GLOBAL_INVL = 1 << 61
DMA_CCMD_DOMAIN_INVL = 2 << 61
DMA_CCMD_DEVICE_INVL = 3 << 61
DMA_CCMD_MASK_NOBIT = 0

DMA_TLB_IVT = 1 << 63
DMA_TLB_GLOBAL_FLUSH = 1 << 60
DMA_TLB_DSI_FLUSH = 2 << 60
DMA_TLB_PSI_FLUSH = 3 << 60
DMA_TLB_READ_DRAIN = 1 << 49
DMA_TLB_WRITE_DRAIN = 1 << 48


def dma_ccmd_sid(sid: int) -> int:
    return put(31, 16, sid)


def dma_ccmd_did(did: int) -> int:
    return put(15, 0, did)


def dma_ccmd_fm(fm: int) -> int:
    return put(33, 32, fm)


def dma_tlb_did(did: int) -> int:
    return put(47, 32, did)


# Fault recording register (16 bytes each): page address in the low qword; SID, PASID
# present in dword 2; reason, PASID, type and F in dword 3.
FRCD_F = 1 << 31  # of the upper dword (bit 127 of the record)
FRCD_T = 1 << 30  # 1 = read request
FRCD_PP = 1 << 31  # of dword 2: PASID present


# ---------------------------------------------------------------------------------------
# Root and context entries (128-bit; scalable-mode context entries are 256-bit, of which
# Linux writes the first 128)
# ---------------------------------------------------------------------------------------
ROOT_ENTRY_SIZE = 16
CONTEXT_ENTRY_SIZE = 16
SM_CONTEXT_ENTRY_SIZE = 32
# legacy context entry
CONTEXT_TT_MULTI_LEVEL = 0
CONTEXT_TT_DEV_IOTLB = 1
CONTEXT_TT_PASS_THROUGH = 2
# scalable-mode context entry (lo)
CONTEXT_P = 1 << 0
CONTEXT_FPD = 1 << 1
CONTEXT_DTE = 1 << 2
CONTEXT_PASIDE = 1 << 3
CONTEXT_PRE = 1 << 4
FLPT_DEFAULT_DID = 1
IDA_START_DID = 2


@attrs.frozen
class ContextEntry:
    """A context entry's first 128 bits (legacy or scalable mode): ``lo``, ``hi``."""

    lo: int = 0
    hi: int = 0

    # legacy readers
    @property
    def present(self) -> bool:
        return bool(self.lo & 1)

    @property
    def translation_type(self) -> int:
        return field(self.lo, 3, 2)

    @property
    def address_root(self) -> int:
        return self.lo & VTD_PAGE_MASK

    @property
    def address_width(self) -> int:
        return field(self.hi, 2, 0)

    @property
    def domain_id(self) -> int:
        return field(self.hi, 23, 8)

    # scalable-mode readers
    @property
    def pdts(self) -> int:
        return field(self.lo, 11, 9)

    @property
    def rid_pasid(self) -> int:
        return field(self.hi, 19, 0)


def context_legacy(slptptr: int, tt: int, aw: int, did: int) -> ContextEntry:
    """``domain_context_mapping_one`` (legacy): P, FPD=0, TT, SLPTPTR, AW, DID."""
    lo = CONTEXT_P | put(3, 2, tt) | (slptptr & VTD_PAGE_MASK)
    hi = put(2, 0, aw) | put(23, 8, did)
    return ContextEntry(lo, hi)


def context_sm(pasid_dir: int, pdts: int, dte: bool, paside: bool, pre: bool,
               rid_pasid: int = 0) -> ContextEntry:
    """``context_entry_set_pasid_table`` + ``intel_pasid_setup_sm_context``."""
    lo = (CONTEXT_P | (CONTEXT_DTE if dte else 0) | (CONTEXT_PASIDE if paside else 0)
          | (CONTEXT_PRE if pre else 0) | put(11, 9, pdts) | (pasid_dir & VTD_PAGE_MASK))
    return ContextEntry(lo, put(19, 0, rid_pasid))


# ---------------------------------------------------------------------------------------
# Invalidation queue descriptors (qw0 bits 3:0 = type)
# ---------------------------------------------------------------------------------------
QI_LENGTH = 256
QI_CC_TYPE = 0x1
QI_IOTLB_TYPE = 0x2
QI_DIOTLB_TYPE = 0x3
QI_IEC_TYPE = 0x4
QI_IWD_TYPE = 0x5
QI_EIOTLB_TYPE = 0x6
QI_PC_TYPE = 0x7
QI_DEIOTLB_TYPE = 0x8
QI_PGRP_RESP_TYPE = 0x9
QI_PSTRM_RESP_TYPE = 0xA

QI_DESC_NAMES = {
    QI_CC_TYPE: "context-cache", QI_IOTLB_TYPE: "iotlb", QI_DIOTLB_TYPE: "dev-iotlb",
    QI_IEC_TYPE: "iec", QI_IWD_TYPE: "wait", QI_EIOTLB_TYPE: "pasid-iotlb",
    QI_PC_TYPE: "pasid-cache", QI_DEIOTLB_TYPE: "pasid-dev-iotlb",
    QI_PGRP_RESP_TYPE: "page-group-response", QI_PSTRM_RESP_TYPE: "page-stream-response",
}

# descriptor status words (enum { QI_FREE, QI_IN_USE, QI_DONE, QI_ABORT })
QI_FREE = 0
QI_IN_USE = 1
QI_DONE = 2
QI_ABORT = 3

# granularities, as they sit in qw0 bits 5:4
QI_CC_GRAN_GLOBAL = 1
QI_CC_GRAN_DOMAIN = 2
QI_CC_GRAN_DEVICE = 3
QI_IOTLB_GRAN_GLOBAL = 1
QI_IOTLB_GRAN_DSI = 2
QI_IOTLB_GRAN_PSI = 3
QI_GRAN_NONG_PASID = 2
QI_GRAN_PSI_PASID = 3
QI_PC_ALL_PASIDS = 0
QI_PC_PASID_SEL = 1
QI_PC_GLOBAL = 3
QI_DEV_IOTLB_MAX_INVS = 32

# IWD bits
QI_IWD_STATUS_WRITE = 1 << 5
QI_IWD_FENCE = 1 << 6
QI_IWD_PRQ_DRAIN = 1 << 7

# page group response codes (QI_RESP_*)
QI_RESP_SUCCESS = 0x0
QI_RESP_INVALID = 0x1
QI_RESP_FAILURE = 0xF


class QiDesc(NamedTuple):
    """One invalidation-queue descriptor (128 bits; 256 with scalable mode): a plain
    tuple of its four 64-bit words, cheap enough to build one per flush."""

    qw0: int
    qw1: int = 0
    qw2: int = 0
    qw3: int = 0

    @property
    def type(self) -> int:
        return self.qw0 & 0xF

    def words(self) -> tuple[int, int, int, int]:
        return (self.qw0, self.qw1, self.qw2, self.qw3)

    def __str__(self) -> str:
        name = QI_DESC_NAMES.get(self.type, f"type{self.type:#x}")
        return f"{name} qw0={self.qw0:#x} qw1={self.qw1:#x}"


def qi_desc_cc(did: int, sid: int, fm: int, gran: int) -> QiDesc:
    """Context-cache invalidation (``QI_CC_*``)."""
    return QiDesc(put(49, 48, fm) | put(47, 32, sid) | put(31, 16, did) | put(5, 4, gran)
                  | QI_CC_TYPE)


def qi_desc_iotlb(cap: int, did: int, addr: int, size_order: int, gran: int) -> QiDesc:
    """IOTLB invalidation. The invalidation hint travels in bit 0 of ``addr`` (HEAD)."""
    ih = addr & 1
    qw0 = (put(31, 16, did) | (1 << 7 if cap_read_drain(cap) else 0)
           | (1 << 6 if cap_write_drain(cap) else 0) | put(5, 4, gran) | QI_IOTLB_TYPE)
    qw1 = (addr & VTD_PAGE_MASK) | put(6, 6, ih) | put(5, 0, size_order)
    return QiDesc(qw0, qw1)


def _pfsid(pfsid: int) -> int:
    return put(15, 12, pfsid & 0xF) | put(63, 52, (pfsid >> 4) & 0xFFF)


def qi_desc_dev_iotlb(sid: int, pfsid: int, qdep: int, addr: int, mask: int) -> QiDesc:
    """Device-TLB invalidation (no PASID): S=0 one page; S=1 the lowest clear address bit
    at or above bit 12 gives the size."""
    if mask:
        addr |= (1 << (VTD_PAGE_SHIFT + mask - 1)) - 1
        qw1 = (addr & VTD_PAGE_MASK) | 1
    else:
        qw1 = addr & VTD_PAGE_MASK
    if qdep >= QI_DEV_IOTLB_MAX_INVS:
        qdep = 0
    qw0 = put(47, 32, sid) | put(20, 16, qdep) | QI_DIOTLB_TYPE | _pfsid(pfsid)
    return QiDesc(qw0, qw1)


def qi_desc_piotlb(did: int, pasid: int, addr: int, size_order: int, ih: int) -> QiDesc:
    """PASID-based IOTLB, page-selective-within-PASID (G=3)."""
    qw0 = put(51, 32, pasid) | put(31, 16, did) | put(5, 4, QI_GRAN_PSI_PASID) | QI_EIOTLB_TYPE
    qw1 = (addr & VTD_PAGE_MASK) | put(6, 6, ih) | put(5, 0, size_order)
    return QiDesc(qw0, qw1)


def qi_desc_piotlb_all(did: int, pasid: int) -> QiDesc:
    """PASID-based IOTLB, all mappings of (DID, PASID) (G=2)."""
    return QiDesc(put(51, 32, pasid) | put(31, 16, did) | put(5, 4, QI_GRAN_NONG_PASID)
                  | QI_EIOTLB_TYPE)


def qi_desc_dev_iotlb_pasid(sid: int, pfsid: int, pasid: int, qdep: int, addr: int,
                            size_order: int) -> QiDesc:
    """PASID-based device-TLB invalidation: S (bit 11) plus the lowest-zero-bit size."""
    qw0 = (put(51, 32, pasid) | put(31, 16, sid) | put(8, 4, qdep) | QI_DEIOTLB_TYPE
           | _pfsid(pfsid))
    qw1 = addr & VTD_PAGE_MASK
    if size_order:
        qw1 |= genmask(size_order + VTD_PAGE_SHIFT - 1, VTD_PAGE_SHIFT)
        qw1 &= ~(1 << (VTD_PAGE_SHIFT + size_order - 1))
        qw1 |= 1 << 11
    return QiDesc(qw0, qw1 & U64_MAX)


def qi_desc_pasid_cache(did: int, pasid: int, gran: int) -> QiDesc:
    return QiDesc(put(51, 32, pasid) | put(31, 16, did) | put(5, 4, gran) | QI_PC_TYPE)


def qi_desc_wait(status_addr: int, data: int, drain: bool = False) -> QiDesc:
    qw0 = (put(63, 32, data) | QI_IWD_STATUS_WRITE | (QI_IWD_PRQ_DRAIN if drain else 0)
           | QI_IWD_TYPE)
    return QiDesc(qw0, status_addr)


def qi_desc_fence() -> QiDesc:
    """An invalidation wait with the fence flag and no status write (PRQ drain)."""
    return QiDesc(put(63, 32, QI_DONE) | QI_IWD_FENCE | QI_IWD_TYPE)


def qi_desc_iec(index: int, im: int, selective: bool) -> QiDesc:
    return QiDesc(put(47, 32, index) | put(31, 27, im) | put(4, 4, int(selective))
                  | QI_IEC_TYPE)


def qi_desc_page_response(rid: int, pasid: int, pasid_present: bool, code: int,
                          prg_index: int) -> QiDesc:
    """Page group response (``QI_PGRP_*``); Linux sets no LPIG/private data in qw1."""
    qw0 = (put(51, 32, pasid) | put(31, 16, rid) | put(15, 12, code)
           | put(4, 4, int(pasid_present)) | QI_PGRP_RESP_TYPE)
    return QiDesc(qw0, put(11, 3, prg_index))


# ---------------------------------------------------------------------------------------
# Page request descriptor (256 bits) in the page request queue
# ---------------------------------------------------------------------------------------
PRQ_ORDER = 4  # 64 KiB: 2048 descriptors of 32 bytes
PRQ_RING_MASK = (0x1000 << PRQ_ORDER) - 0x20
PRQ_DESC_SIZE = 32


@attrs.frozen
class PageReqDsc:
    """``struct page_req_dsc``."""

    qw0: int
    qw1: int
    qw2: int = 0
    qw3: int = 0

    @property
    def pasid_present(self) -> bool:
        return bool(self.qw0 >> 8 & 1)

    @property
    def priv_data_present(self) -> bool:
        return bool(self.qw0 >> 9 & 1)

    @property
    def rid(self) -> int:
        return field(self.qw0, 31, 16)

    @property
    def pasid(self) -> int:
        return field(self.qw0, 51, 32)

    @property
    def exe_req(self) -> bool:
        return bool(self.qw0 >> 52 & 1)

    @property
    def pm_req(self) -> bool:
        return bool(self.qw0 >> 53 & 1)

    @property
    def rd_req(self) -> bool:
        return bool(self.qw1 & 1)

    @property
    def wr_req(self) -> bool:
        return bool(self.qw1 >> 1 & 1)

    @property
    def lpig(self) -> bool:
        return bool(self.qw1 >> 2 & 1)

    @property
    def prg_index(self) -> int:
        return field(self.qw1, 11, 3)

    @property
    def addr(self) -> int:
        return self.qw1 & VTD_PAGE_MASK


def make_page_req_dsc(rid: int, pasid: int | None, addr: int, rd: bool, wr: bool,
                      exe: bool, pm: bool, lpig: bool, prg_index: int) -> PageReqDsc:
    qw0 = (1 | put(8, 8, int(pasid is not None)) | put(31, 16, rid)
           | put(51, 32, pasid or 0) | put(52, 52, int(exe)) | put(53, 53, int(pm)))
    qw1 = (int(rd) | put(1, 1, int(wr)) | put(2, 2, int(lpig)) | put(11, 3, prg_index)
           | (addr & VTD_PAGE_MASK))
    return PageReqDsc(qw0, qw1)

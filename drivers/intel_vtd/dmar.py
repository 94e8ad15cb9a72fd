"""Queued invalidation, register-based flushes and fault handling (``dmar.c``).

``qi_submit_sync`` copies descriptors into the invalidation queue in memory, appends an
invalidation-wait descriptor whose status write the driver polls, and moves IQT; an
invalid descriptor (IQE) is overwritten with the wait descriptor and reported as EINVAL,
as Linux does. ``dmar_fault`` is the fault interrupt: it drains the fault recording
registers into ``iommu.faults`` (Linux logs them).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw.faults import fault_text
from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from drivers.intel_vtd.iommu import IntelIommu

QI_BATCH_SIZE = 16
_POLL = 1000  # register polls before a timeout (hardware completes synchronously)


@attrs.define(eq=False)
class Qi:
    """``struct q_inval``."""

    desc: int  # physical address of the ring
    desc_order: int
    status: int  # physical page of the per-slot status words (u32 each)
    shift: int  # 4 (128-bit) or 5 (256-bit descriptors)
    free_head: int = 0


@attrs.frozen
class DmarFaultRecord:
    """One fault record read by ``dmar_fault`` (what Linux prints)."""

    source_id: int
    address: int
    reason: int
    is_read: bool
    pasid: int | None
    text: str

    def __str__(self) -> str:
        kind = "DMA Read" if self.is_read else "DMA Write"
        p = "NO_PASID" if self.pasid is None else f"PASID {self.pasid:#x}"
        bdf = f"{self.source_id >> 8:02x}:{self.source_id >> 3 & 0x1f:02x}.{self.source_id & 7}"
        return (f"[{kind} {p}] Request device [{bdf}] fault addr {self.address:#x} "
                f"[fault reason {self.reason:#04x}] {self.text}")


def _wait_bits(iommu: IntelIommu, reg: int, mask: int, want_set: bool, what: str) -> None:
    for _ in range(_POLL):
        v = iommu.reg.read32(reg)
        if bool(v & mask) == want_set:
            return
    raise IommuError(errno.ETIMEDOUT, f"{iommu.name}: {what} did not complete")


# ---------------------------------------------------------------------------------------
# Queued invalidation
# ---------------------------------------------------------------------------------------
def dmar_enable_qi(iommu: IntelIommu) -> None:
    """``dmar_enable_qi`` + ``__dmar_enable_qi``: 256 descriptors, 256-bit ones in
    scalable mode (IQA.DW and QS=1: two pages)."""
    sm = h.ecap_smts(iommu.ecap)
    order = 1 if sm else 0
    desc = iommu.alloc.alloc_pages(order)
    try:
        status = iommu.alloc.alloc_pages(0)
    except IommuError:
        iommu.alloc.free_pages(desc, order)
        raise
    iommu.qi = Qi(desc=desc, desc_order=order, status=status, shift=5 if sm else 4)
    iommu.reg.write64(h.DMAR_IQT_REG, 0)
    iommu.reg.write64(h.DMAR_IQA_REG, desc | ((1 << 11) | 1 if sm else 0))
    iommu.gcmd |= h.DMA_GCMD_QIE
    iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd)
    _wait_bits(iommu, h.DMAR_GSTS_REG, h.DMA_GSTS_QIES, True, "QI enable")


def dmar_disable_qi(iommu: IntelIommu) -> None:
    qi = iommu.qi
    if qi is None:
        return
    iommu.gcmd &= ~h.DMA_GCMD_QIE
    iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd)
    _wait_bits(iommu, h.DMAR_GSTS_REG, h.DMA_GSTS_QIES, False, "QI disable")
    iommu.alloc.free_pages(qi.desc, qi.desc_order)
    iommu.alloc.free_pages(qi.status, 0)
    iommu.qi = None


def _ring_write(iommu: IntelIommu, qi: Qi, index: int, words: list[int], per: int) -> None:
    """Descriptors (``per`` qwords each) into the ring from slot ``index``, wrapping."""
    room = (h.QI_LENGTH - index) * per
    iommu.mem.write_qwords(qi.desc + (index << qi.shift), words[:room])
    if len(words) > room:
        iommu.mem.write_qwords(qi.desc, words[room:])


def _status_write(iommu: IntelIommu, qi: Qi, index: int, count: int, value: int) -> None:
    """``desc_status`` of ``count`` slots from ``index`` (wrapping)."""
    first = min(count, h.QI_LENGTH - index)
    word = value.to_bytes(4, "little")
    iommu.mem.write(qi.status + index * 4, word * first)
    if count > first:
        iommu.mem.write(qi.status, word * (count - first))


def qi_submit_sync(iommu: IntelIommu, descs: list[h.QiDesc], drain: bool = False) -> None:
    """Queue ``descs`` plus a wait descriptor and poll its status word."""
    qi = iommu.qi
    if qi is None:
        raise IommuError(errno.ENODEV, f"{iommu.name}: queued invalidation is off")
    mem = iommu.mem
    count = len(descs)
    if count + 2 > h.QI_LENGTH:  # the batch, its wait descriptor, and the ring's gap
        raise IommuError(errno.EBUSY, f"{iommu.name}: invalidation queue full")
    if iommu.tracer.enabled:
        for d in descs:
            iommu.tracer.event("driver", "qi", f"{iommu.name} {d}")
    per = 4 if qi.shift == 5 else 2
    start = qi.free_head
    wait_index = (start + count) % h.QI_LENGTH
    status = qi.status + wait_index * 4
    wait = h.qi_desc_wait(status, h.QI_DONE, drain)
    _status_write(iommu, qi, start, count + 1, h.QI_IN_USE)
    _ring_write(iommu, qi, start, [w for d in (*descs, wait) for w in d[:per]], per)
    qi.free_head = (wait_index + 1) % h.QI_LENGTH
    iommu.reg.write64(h.DMAR_IQT_REG, qi.free_head << qi.shift)
    err = 0
    for _ in range(_POLL):
        if mem.read_u32(status) == h.QI_DONE:
            break
        if iommu.reg.read32(h.DMAR_FSTS_REG) & h.DMA_FSTS_IQE:
            # qi_check_fault: overwrite the bad descriptor with the wait descriptor,
            # clear IQE so the queue moves on, and fail the submission.
            head = iommu.reg.read64(h.DMAR_IQH_REG) >> qi.shift
            mem.write_qwords(qi.desc + (head << qi.shift), list(wait[:per]))
            iommu.reg.write32(h.DMAR_FSTS_REG, h.DMA_FSTS_IQE)
            err = errno.EINVAL
    else:
        raise IommuError(errno.ETIMEDOUT, f"{iommu.name}: invalidation wait timed out")
    _status_write(iommu, qi, start, count + 1, h.QI_FREE)
    if err:
        raise IommuError(err, f"{iommu.name}: invalid invalidation descriptor (IQE)")


@attrs.define(eq=False)
class QiBatch:
    """``struct qi_batch``: descriptors gathered for one unit, submitted together."""

    descs: list[h.QiDesc] = attrs.field(factory=list)


def qi_batch_add(iommu: IntelIommu, desc: h.QiDesc, batch: QiBatch) -> None:
    batch.descs.append(desc)
    if len(batch.descs) == QI_BATCH_SIZE:
        qi_batch_flush_descs(iommu, batch)


def qi_batch_flush_descs(iommu: IntelIommu | None, batch: QiBatch) -> None:
    if iommu is None or not batch.descs:
        return
    descs, batch.descs = batch.descs, []
    qi_submit_sync(iommu, descs)


# -- the flush helpers (qi_flush_* and the register-based __iommu_flush_*) -------------
def flush_context(iommu: IntelIommu, did: int, sid: int, fm: int, gran: int) -> None:
    """``iommu->flush.flush_context``: QI when enabled, else the CCMD register."""
    if iommu.qi is not None:
        qi_submit_sync(iommu, [h.qi_desc_cc(did, sid, fm, gran)])
        return
    val = h.DMA_CCMD_ICC | (gran << 61)
    if gran == h.QI_CC_GRAN_DOMAIN:
        val |= h.dma_ccmd_did(did)
    elif gran == h.QI_CC_GRAN_DEVICE:
        val |= h.dma_ccmd_did(did) | h.dma_ccmd_sid(sid) | h.dma_ccmd_fm(fm)
    iommu.reg.write64(h.DMAR_CCMD_REG, val)
    for _ in range(_POLL):
        if not iommu.reg.read64(h.DMAR_CCMD_REG) & h.DMA_CCMD_ICC:
            return
    raise IommuError(errno.ETIMEDOUT, f"{iommu.name}: context invalidation timed out")


def flush_iotlb(iommu: IntelIommu, did: int, addr: int, size_order: int, gran: int) -> None:
    """``iommu->flush.flush_iotlb``; ``addr`` bit 0 carries the invalidation hint."""
    if iommu.qi is not None:
        qi_submit_sync(iommu, [h.qi_desc_iotlb(iommu.cap, did, addr, size_order, gran)])
        return
    tlb = h.ecap_iotlb_offset(iommu.ecap)
    val = h.DMA_TLB_IVT | (gran << 60)
    if gran != h.QI_IOTLB_GRAN_GLOBAL:
        val |= h.dma_tlb_did(did)
    if gran == h.QI_IOTLB_GRAN_PSI:
        iommu.reg.write64(tlb, (addr & h.VTD_PAGE_MASK) | (addr & 1) << 6 | size_order)
    if h.cap_write_drain(iommu.cap):
        val |= h.DMA_TLB_WRITE_DRAIN
    iommu.reg.write64(tlb + 8, val)
    for _ in range(_POLL):
        v = iommu.reg.read64(tlb + 8)
        if not v & h.DMA_TLB_IVT:
            if not h.field(v, 58, 57):
                raise IommuError(errno.EIO, f"{iommu.name}: IOTLB flush failed")
            return
    raise IommuError(errno.ETIMEDOUT, f"{iommu.name}: IOTLB invalidation timed out")


def qi_flush_piotlb(iommu: IntelIommu, did: int, pasid: int, addr: int, npages: int,
                    ih: int) -> None:
    """``qi_flush_piotlb``: npages == -1 flushes every mapping of (DID, PASID)."""
    if npages == -1:
        desc = h.qi_desc_piotlb_all(did, pasid)
    else:
        mask = max(0, (npages - 1).bit_length())
        desc = h.qi_desc_piotlb(did, pasid, addr & ~((1 << (12 + mask)) - 1), mask, ih)
    qi_submit_sync(iommu, [desc])


def qi_flush_pasid_cache(iommu: IntelIommu, did: int, gran: int, pasid: int) -> None:
    qi_submit_sync(iommu, [h.qi_desc_pasid_cache(did, pasid, gran)])


def iommu_flush_write_buffer(iommu: IntelIommu) -> None:
    """Only units with CAP.RWBF need the write-buffer flush handshake."""
    if not h.cap_rwbf(iommu.cap):
        return
    iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd | h.DMA_GCMD_WBF)
    _wait_bits(iommu, h.DMAR_GSTS_REG, h.DMA_GSTS_WBFS, False, "write buffer flush")


# ---------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------
def dmar_fault(iommu: IntelIommu) -> None:
    """The fault interrupt: read every pending fault record, clear it, log it."""
    fsts = iommu.reg.read32(h.DMAR_FSTS_REG)
    if fsts & h.DMA_FSTS_PPF:
        fro = h.cap_fault_reg_offset(iommu.cap)
        nfr = h.cap_num_fault_regs(iommu.cap)
        i = h.dma_fsts_fault_record_index(fsts)
        for _ in range(nfr):
            rec = fro + 16 * i
            hi = iommu.reg.read32(rec + 12)
            if not hi & h.FRCD_F:
                break
            reason = hi & 0xFF
            sid_dw = iommu.reg.read32(rec + 8)
            addr = iommu.reg.read64(rec) & h.VTD_PAGE_MASK
            pasid = (hi >> 8) & 0xFFFFF if sid_dw & h.FRCD_PP else None
            iommu.reg.write32(rec + 12, h.FRCD_F)  # clear the record
            iommu.faults.append(DmarFaultRecord(sid_dw & 0xFFFF, addr, reason,
                                                bool(hi & h.FRCD_T), pasid, fault_text(reason)))
            if len(iommu.faults) > 1024:
                del iommu.faults[:512]
            i = (i + 1) % nfr
    iommu.reg.write32(h.DMAR_FSTS_REG, h.DMA_FSTS_PFO | h.DMA_FSTS_PPF | h.DMA_FSTS_PRO)

"""Page requests (``prq.c``): the page request queue, its interrupt thread, page group
responses and PASID drains.

The unit writes 256-bit page request descriptors at PQT and raises the PRQ interrupt;
``prq_event_thread`` reports each one to the core (``iommu_report_device_fault``), which
routes the group to the attached domain's fault handler (iommufd's fault queue). The
answer comes back through ``intel_iommu_page_response`` as a page group response
descriptor on the invalidation queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.intel_vtd import dmar
from drivers.intel_vtd import iommu_h as h
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID,
    IOMMU_FAULT_PERM_EXEC,
    IOMMU_FAULT_PERM_PRIV,
    IOMMU_FAULT_PERM_READ,
    IOMMU_FAULT_PERM_WRITE,
    PageRequest,
    PageResponse,
    PageResponseCode,
)

if TYPE_CHECKING:
    from drivers.intel_vtd.iommu import DeviceDomainInfo, IntelIommu
    from iommu_core.platform.bus import Device

#: Linux's intel_page_response() puts the iommu_page_response_code value straight into
#: QI_PGRP_RESP_CODE (FAILURE goes out as 2, not the PCIe 0xF of QI_RESP_FAILURE).
_RESP_CODE = {PageResponseCode.SUCCESS: int(PageResponseCode.SUCCESS),
              PageResponseCode.INVALID: int(PageResponseCode.INVALID),
              PageResponseCode.FAILURE: int(PageResponseCode.FAILURE)}


def intel_iommu_enable_prq(iommu: IntelIommu) -> None:
    iommu.prq = iommu.alloc.alloc_pages(h.PRQ_ORDER)
    irq = iommu.irqs.get("dmar-prq")
    if irq is not None:
        irq.request_irq(lambda: prq_event_thread(iommu))
    iommu.reg.write64(h.DMAR_PQH_REG, 0)
    iommu.reg.write64(h.DMAR_PQT_REG, 0)
    iommu.reg.write64(h.DMAR_PQA_REG, iommu.prq | h.PRQ_ORDER)
    iommu.reg.write32(h.DMAR_PECTL_REG, 0)  # unmask


def intel_iommu_finish_prq(iommu: IntelIommu) -> None:
    if not iommu.prq:
        return
    iommu.reg.write32(h.DMAR_PECTL_REG, h.DMA_FECTL_IM)
    iommu.reg.write64(h.DMAR_PQH_REG, 0)
    iommu.reg.write64(h.DMAR_PQT_REG, 0)
    iommu.reg.write64(h.DMAR_PQA_REG, 0)
    irq = iommu.irqs.get("dmar-prq")
    if irq is not None:
        irq.free_irq()
    iommu.alloc.free_pages(iommu.prq, h.PRQ_ORDER)
    iommu.prq = 0


def _read_desc(iommu: IntelIommu, off: int) -> h.PageReqDsc:
    q = iommu.mem.read_qwords(iommu.prq + off, 4)
    return h.PageReqDsc(q[0], q[1], q[2], q[3])


def prq_to_iommu_prot(req: h.PageReqDsc) -> int:
    prot = 0
    if req.rd_req:
        prot |= IOMMU_FAULT_PERM_READ
    if req.wr_req:
        prot |= IOMMU_FAULT_PERM_WRITE
    if req.exe_req:
        prot |= IOMMU_FAULT_PERM_EXEC
    if req.pm_req:
        prot |= IOMMU_FAULT_PERM_PRIV
    return prot


def _respond_bad(iommu: IntelIommu, req: h.PageReqDsc) -> None:
    """``handle_bad_prq_event``: the last request of a group still needs an answer."""
    if req.lpig:
        dmar.qi_submit_sync(iommu, [h.qi_desc_page_response(
            req.rid, req.pasid, req.pasid_present, h.QI_RESP_INVALID, req.prg_index)])


def prq_event_thread(iommu: IntelIommu) -> None:
    """Drain the page request queue (head to tail), then move PQH."""
    iommu.reg.write32(h.DMAR_PRS_REG, h.DMA_PRS_PPR)
    tail = iommu.reg.read64(h.DMAR_PQT_REG) & h.PRQ_RING_MASK
    head = iommu.reg.read64(h.DMAR_PQH_REG) & h.PRQ_RING_MASK
    while head != tail:
        req = _read_desc(iommu, head)
        head = (head + h.PRQ_DESC_SIZE) & h.PRQ_RING_MASK
        addr = req.addr
        canonical = addr >> 47 in (0, (1 << 17) - 1)
        if (not canonical or (req.pm_req and (req.rd_req or req.wr_req))
                or (req.exe_req and req.rd_req)):
            _respond_bad(iommu, req)
            continue
        if req.lpig and not req.rd_req and not req.wr_req:
            continue  # stop marker: no response
        info = iommu.devices.get(req.rid)
        if info is None or info.dev.iommu is None:
            _respond_bad(iommu, req)
            continue
        flags = 0
        if req.lpig:
            flags |= IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
        if req.pasid_present:
            flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID | IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID
        if iommu.tracer.enabled:
            iommu.tracer.event("driver", "prq", f"{iommu.name} rid {req.rid:#x} pasid "
                               f"{req.pasid} grp {req.prg_index} addr {addr:#x}")
        iommu.core.iommu_report_device_fault(info.dev, PageRequest(
            flags=flags, pasid=req.pasid, grpid=req.prg_index, perm=prq_to_iommu_prot(req),
            addr=addr))
    iommu.reg.write64(h.DMAR_PQH_REG, tail)
    if iommu.reg.read32(h.DMAR_PRS_REG) & h.DMA_PRS_PRO:
        # Overflow: the queue is empty now, so requests can be accepted again.
        head = iommu.reg.read64(h.DMAR_PQH_REG) & h.PRQ_RING_MASK
        tail = iommu.reg.read64(h.DMAR_PQT_REG) & h.PRQ_RING_MASK
        if head == tail:
            for info in iommu.devices.values():
                iommu.core.iopf_queue_discard_partial(info.dev)
            iommu.reg.write32(h.DMAR_PRS_REG, h.DMA_PRS_PRO)


def intel_iommu_page_response(dev: Device, evt: PageRequest, msg: PageResponse) -> None:
    from drivers.intel_vtd.iommu import dev_info

    info = dev_info(dev)
    # PASID and group index come from the request (``prm``), the code from the answer.
    desc = h.qi_desc_page_response(info.sid, evt.pasid, evt.pasid_valid,
                                   _RESP_CODE[msg.code], evt.grpid)
    dmar.qi_submit_sync(info.iommu, [desc])


def intel_drain_pasid_prq(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int) -> None:
    """``intel_iommu_drain_pasid_prq``: handle what the queue holds for the PASID, then
    fence the hardware (VT-d 7.10): a fenced wait, the PASID's IOTLB and device-TLB
    invalidations, and the wait with page-drain (PD); again while PRS.PRO is set."""
    from drivers.intel_vtd.iommu import DmarDomain

    if not info.iopf_refcount:
        return
    domain = info.domain
    did = (domain.domain_id_iommu(iommu) if isinstance(domain, DmarDomain)
           else h.FLPT_DEFAULT_DID)
    tail = iommu.reg.read64(h.DMAR_PQT_REG) & h.PRQ_RING_MASK
    head = iommu.reg.read64(h.DMAR_PQH_REG) & h.PRQ_RING_MASK
    if head != tail:
        prq_event_thread(iommu)  # the PRQ thread runs to completion here
    if pasid == IOMMU_NO_PASID:
        descs = [h.qi_desc_fence(), h.qi_desc_iotlb(iommu.cap, did, 0, 0, h.QI_IOTLB_GRAN_DSI),
                 h.qi_desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0,
                                     h.MAX_AGAW_PFN_WIDTH)]
    else:
        descs = [h.qi_desc_fence(), h.qi_desc_piotlb_all(did, pasid),
                 h.qi_desc_dev_iotlb_pasid(info.sid, info.pfsid, pasid, info.ats_qdep, 0,
                                           h.MAX_AGAW_PFN_WIDTH)]
    for _ in range(2):
        dmar.qi_submit_sync(iommu, descs, drain=True)
        if not iommu.reg.read32(h.DMAR_PRS_REG) & h.DMA_PRS_PRO:
            return
        prq_event_thread(iommu)  # clears PRO once the queue is empty

"""Peripheral Page Requests (drivers/iommu/amd/ppr.c): the PPR log, its interrupt
thread handing valid requests to the IOPF core, and COMPLETE_PPR_REQUEST responses."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from drivers.amd_vi.amd_iommu_types import (
    CONTROL_PPR_EN,
    CONTROL_PPRINT_EN,
    CONTROL_PPRLOG_EN,
    MMIO_PPR_HEAD_OFFSET,
    MMIO_PPR_LOG_OFFSET,
    MMIO_PPR_TAIL_OFFSET,
    MMIO_STATUS_OFFSET,
    MMIO_STATUS_PPR_INT_MASK,
    MMIO_STATUS_PPR_OVERFLOW_MASK,
    PPR_ENTRY_SIZE,
    PPR_FLAG_EXEC,
    PPR_FLAG_GN,
    PPR_FLAG_READ,
    PPR_FLAG_RVSD,
    PPR_FLAG_US,
    PPR_FLAG_WRITE,
    PPR_LOG_SIZE,
    PPR_LOG_SIZE_512,
    PPR_REQ_FAULT,
    ppr_devid,
    ppr_flags,
    ppr_pasid,
    ppr_req_type,
    ppr_tag,
)
from drivers.amd_vi.iommu import (
    IommuDevData,
    build_complete_ppr,
    dev_iommu_priv_get,
    iommu_queue_command,
)
from iommu_core.errors import IommuError
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
    from drivers.amd_vi.init import AmdIommu
    from iommu_core.platform.bus import Device


def amd_iommu_enable_ppr_log(iommu: AmdIommu) -> None:
    iommu.feature_enable(CONTROL_PPR_EN)
    iommu.mmio.write64(MMIO_PPR_LOG_OFFSET, iommu.ppr_log | PPR_LOG_SIZE_512)
    iommu.mmio.write32(MMIO_PPR_HEAD_OFFSET, 0)
    iommu.mmio.write32(MMIO_PPR_TAIL_OFFSET, 0)
    iommu.feature_enable(CONTROL_PPRINT_EN)
    iommu.feature_enable(CONTROL_PPRLOG_EN)


def amd_iommu_iopf_init(iommu: AmdIommu) -> None:
    iommu.iopf_queue = True


def amd_iommu_iopf_add_device(iommu: AmdIommu, dev_data: IommuDevData) -> None:
    """EINVAL without an IOPF queue (the unit has no PPR): the caller turns PRI off."""
    if not dev_data.pri_enabled:
        return
    if not iommu.iopf_queue:
        raise IommuError(errno.EINVAL, f"{iommu.name}: no IOPF queue")
    dev_data.ppr = True


def amd_iommu_iopf_remove_device(iommu: AmdIommu, dev_data: IommuDevData) -> None:
    iommu.core.iopf_queue_remove_device(dev_data.dev)
    dev_data.ppr = False


def ppr_flag_to_fault_perm(flag: int) -> int:
    perm = 0
    if flag & PPR_FLAG_READ:
        perm |= IOMMU_FAULT_PERM_READ
    if flag & PPR_FLAG_WRITE:
        perm |= IOMMU_FAULT_PERM_WRITE
    if flag & PPR_FLAG_EXEC:
        perm |= IOMMU_FAULT_PERM_EXEC
    if not flag & PPR_FLAG_US:
        perm |= IOMMU_FAULT_PERM_PRIV
    return perm


def amd_iommu_complete_ppr(dev: Device, pasid: int, status: int, tag: int) -> None:
    """GN (and the PASID) only when the device's domain is a v2 one, as 7.3 decides."""
    dev_data = dev_iommu_priv_get(dev)
    gn = dev_data.domain is not None and dev_data.domain.is_v2
    iommu_queue_command(dev_data.iommu, build_complete_ppr(
        dev_data.devid, pasid, status, tag, gn))


def amd_iommu_page_response(dev: Device, evt: PageRequest, resp: PageResponse) -> None:
    amd_iommu_complete_ppr(dev, resp.pasid, int(resp.code), resp.grpid)


def iommu_call_iopf_notifier(iommu: AmdIommu, raw: tuple[int, int]) -> None:
    if ppr_req_type(raw[0]) != PPR_REQ_FAULT:
        return
    dev_data = iommu.dev_data.get(ppr_devid(raw[0]))
    if dev_data is None:
        return
    flags = ppr_flags(raw[0])
    pasid = ppr_pasid(raw[0])
    tag = ppr_tag(raw[0])
    # GN=0 (no PASID) and reserved-bit requests are refused, as are PASID 0 and PASIDs
    # beyond the device: "nobody cared, abort".
    if (not flags & PPR_FLAG_GN or flags & PPR_FLAG_RVSD or pasid == 0
            or pasid >= dev_data.max_pasids):
        amd_iommu_complete_ppr(dev_data.dev, pasid, int(PageResponseCode.FAILURE),
                               tag & 0x1FF)
        return
    fl = IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID | IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
    if tag & 0x200:
        fl |= IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
    req = PageRequest(flags=fl, pasid=pasid, grpid=tag & 0x1FF,
                      perm=ppr_flag_to_fault_perm(flags), addr=raw[1] & ~0xFFF)
    iommu.core.iommu_report_device_fault(dev_data.dev, req)


def amd_iommu_poll_ppr_log(iommu: AmdIommu) -> None:
    """PPR interrupt thread: consume entries, zero them (erratum 733), move the head,
    then handle each."""
    if not iommu.ppr_log:
        return
    head = iommu.mmio.read32(MMIO_PPR_HEAD_OFFSET)
    tail = iommu.mmio.read32(MMIO_PPR_TAIL_OFFSET)
    mem = iommu.mem
    while head != tail:
        addr = iommu.ppr_log + head
        raw = (mem.read_u64(addr), mem.read_u64(addr + 8))
        mem.write(addr, bytes(PPR_ENTRY_SIZE))
        head = (head + PPR_ENTRY_SIZE) % PPR_LOG_SIZE
        iommu.mmio.write32(MMIO_PPR_HEAD_OFFSET, head)
        if iommu.tracer.enabled:
            iommu.tracer.event("driver", "ppr_request", f"{iommu.name} {raw[0]:#x} "
                               f"addr {raw[1]:#x}")
        iommu_call_iopf_notifier(iommu, raw)
    iommu.mmio.write32(MMIO_STATUS_OFFSET, MMIO_STATUS_PPR_INT_MASK
                       | MMIO_STATUS_PPR_OVERFLOW_MASK)

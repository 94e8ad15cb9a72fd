"""vIOMMU, vDEVICE and HW queue objects (drivers/iommu/iommufd/viommu.c and the
driver-facing helpers of driver.c).

A vIOMMU is a slice of one physical IOMMU given to a VM, sitting on a nest-parent paging
HWPT. Its driver part (``viommu.ops``, ``viommu.priv``) is filled by the driver's
``viommu_init``; iommufd implements what the driver may call back:
:meth:`IommufdViommuObj.find_dev`, ``get_vdev_id``, ``report_event``, ``alloc_mmap``.
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING

import attrs

from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import IommufdHwQueue, IommufdVdevice, IommufdViommu, UserData
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.access import (
    IommufdAccess,
    iommufd_access_attach_internal,
    iommufd_access_create_internal,
    iommufd_access_destroy,
    iommufd_access_pin_pages,
    iommufd_access_unpin_pages,
)
from iommufd.device import IommufdDevice, iommufd_get_device
from iommufd.hw_pagetable import IommufdHwptPaging
from iommufd.private import ULONG_MAX, IommufdCtx, IommufdObject, ObjType, Ucmd

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import Mmio
    from iommufd.eventq import IommufdVeventq


@attrs.frozen
class Immap:
    """``struct iommufd_mmap``: what a driver exposes through mmap of the fd: physical
    pages at ``pa``, or registers of ``mmio`` from offset ``pa`` in that window."""

    owner: IommufdObject
    offset: int
    pa: int
    length: int
    mmio: Mmio | None = None


class IommufdViommuObj(IommufdObject, IommufdViommu):
    """``struct iommufd_viommu``."""

    obj_type = ObjType.VIOMMU

    def __init__(self, ictx: IommufdCtx, hwpt: IommufdHwptPaging, iommu_dev: IommuDevice,
                 vtype: int) -> None:
        IommufdObject.__init__(self, ictx)
        assert hwpt.domain is not None
        IommufdViommu.__init__(self, iommu_dev, vtype, hwpt.domain)
        self.hwpt = hwpt
        hwpt.users += 1
        #: ``viommu->vdevs``: virt_id -> vDEVICE, or None for a slot reserved while the
        #: driver's ``vdevice_init`` runs (an xarray zero entry: occupied, reads as NULL).
        self.vdevs: dict[int, IommufdVdeviceObj | None] = {}
        self.veventqs: list[IommufdVeventq] = []
        self.inited = False

    # -- iommufd_driver.h helpers -----------------------------------------------------------
    def find_dev(self, vdev_id: int) -> Device | None:
        vdev = self.vdevs.get(vdev_id)
        return vdev.dev if vdev is not None else None

    def get_vdev_id(self, dev: Device) -> int | None:
        for virt_id, vdev in self.vdevs.items():
            if vdev is not None and vdev.dev is dev:
                return virt_id
        return None

    def find_veventq(self, vtype: int) -> IommufdVeventq | None:
        for q in self.veventqs:
            if q.type == vtype:
                return q
        return None

    def report_event(self, type: int, data: bytes) -> None:
        """``iommufd_viommu_report_event``: EOPNOTSUPP when no vEVENTQ of that type."""
        if not data:
            raise IommuError(errno.EINVAL, "empty vEVENT")
        q = self.find_veventq(type)
        if q is None:
            raise IommuError(errno.EOPNOTSUPP, f"no vEVENTQ of type {type:#x}")
        q.report(data)

    def alloc_mmap(self, base_pa: int, length: int, *, mmio: Mmio | None = None) -> int:
        """``iommufd_viommu_alloc_mmap``: the lowest free offset >= PAGE_SIZE."""
        if base_pa & (PAGE_SIZE - 1) or length & (PAGE_SIZE - 1) or not length:
            raise IommuError(errno.EINVAL, "mmap region not page aligned")
        self.ictx.subsys.kzalloc("struct iommufd_mmap")
        mmaps = self.ictx.mmaps
        start = PAGE_SIZE
        for off, immap in mmaps.items():
            if off - start >= length:
                break
            start = max(start, off + immap.length)
        if start + length - 1 > ULONG_MAX:
            raise IommuError(errno.ENOSPC, "no free mmap offset")
        mmaps[start] = Immap(self, start, base_pa, length, mmio)
        return start

    def destroy_mmap(self, offset: int) -> None:
        immap = self.ictx.mmaps.get(offset)
        if immap is not None and immap.owner is self:
            del self.ictx.mmaps[offset]

    def destroy(self) -> None:
        if self.inited and self.ops is not None:
            self.ops.destroy(self)
        for off in [o for o, m in self.ictx.mmaps.items() if m.owner is self]:
            del self.ictx.mmaps[off]
        self.hwpt.users -= 1
        self.vdevs.clear()


def iommufd_get_viommu(ictx: IommufdCtx, oid: int) -> IommufdViommuObj:
    return ictx.get_object(oid, IommufdViommuObj)


class IommufdVdeviceObj(IommufdObject, IommufdVdevice):
    """``struct iommufd_vdevice``."""

    obj_type = ObjType.VDEVICE

    def __init__(self, ictx: IommufdCtx, viommu: IommufdViommuObj, idev: IommufdDevice,
                 virt_id: int) -> None:
        IommufdObject.__init__(self, ictx)
        IommufdVdevice.__init__(self, viommu, idev.dev, virt_id)
        self.viommu_obj = viommu
        viommu.users += 1
        self.idev = idev
        idev.vdev = self
        self.inited = False

    def destroy(self) -> None:
        viommu = self.viommu_obj
        if self.inited and viommu.ops is not None:
            viommu.ops.vdevice_destroy(self)
        if viommu.vdevs.get(self.virt_id) is self:
            del viommu.vdevs[self.virt_id]
        viommu.users -= 1
        self.idev.vdev = None


class IommufdHwQueueObj(IommufdObject, IommufdHwQueue):
    """``struct iommufd_hw_queue``."""

    obj_type = ObjType.HW_QUEUE

    def __init__(self, ictx: IommufdCtx, viommu: IommufdViommuObj, qtype: int, index: int,
                 base_addr: int, length: int) -> None:
        IommufdObject.__init__(self, ictx)
        IommufdHwQueue.__init__(self, viommu, qtype, index, base_addr, length)
        self.viommu_obj = viommu
        self.access: IommufdAccess | None = None
        self.holds_viommu = False
        self.inited = False

    def depend(self, depended: IommufdHwQueue) -> None:
        """``iommufd_hw_queue_depend``: ``depended`` cannot go before this queue."""
        if depended is self or not isinstance(depended, IommufdHwQueueObj):
            raise IommuError(errno.EINVAL, "bad HW queue dependency")
        depended.users += 1

    def undepend(self, depended: IommufdHwQueue) -> None:
        if isinstance(depended, IommufdHwQueueObj):
            depended.users -= 1

    def destroy(self) -> None:
        viommu = self.viommu_obj
        if self.inited and viommu.ops is not None:
            viommu.ops.hw_queue_destroy(self)
        if self.access is not None:
            _hw_queue_destroy_access(self.access, self.base_addr, self.length)
            self.access = None
        if self.holds_viommu:
            viommu.users -= 1


def _hw_queue_destroy_access(access: IommufdAccess, base: int, length: int) -> None:
    aligned = base & ~(PAGE_SIZE - 1)
    total = (base - aligned + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    iommufd_access_unpin_pages(access, aligned, total)
    iommufd_access_destroy(access)


# ======================================================================================
# IOMMU_VIOMMU_ALLOC
# ======================================================================================
@traced("iommufd")
def iommufd_viommu_alloc_ioctl(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_viommu_alloc = ucmd.cmd
    if cmd.flags or cmd.type == uapi.IOMMU_VIOMMU_TYPE_DEFAULT:
        raise IommuError(errno.EOPNOTSUPP, "flags or type DEFAULT")
    ictx = ucmd.ictx
    idev = iommufd_get_device(ictx, cmd.dev_id)
    dev = idev.dev
    ops = dev.iommu.ops
    if not ops.implements("get_viommu_size") or not ops.implements("viommu_init"):
        raise IommuError(errno.EOPNOTSUPP, f"{ops.name} has no vIOMMU support")
    if not ops.get_viommu_size(dev, cmd.type):
        raise IommuError(errno.EOPNOTSUPP, f"{ops.name}: vIOMMU type {cmd.type:#x} "
                         "unsupported for this device")
    hwpt = ictx.get_object(cmd.hwpt_id, IommufdHwptPaging)
    if not hwpt.nest_parent:
        raise IommuError(errno.EINVAL, f"HWPT {hwpt.id} is not a nest parent")
    viommu = ictx.object_alloc(IommufdViommuObj, hwpt, dev.iommu.iommu_dev, cmd.type)
    viommu.obj_id = viommu.id
    user_data = UserData(ictx.current.uaccess, cmd.type, cmd.data_uptr, cmd.data_len)
    try:
        assert hwpt.domain is not None
        ops.viommu_init(viommu, hwpt.domain, user_data if cmd.data_len else None)
        viommu.inited = True
        if viommu.ops is None:
            raise IommuError(errno.EOPNOTSUPP, f"{ops.name} viommu_init set no ops")
        cmd.out_viommu_id = viommu.id
        ucmd.respond()
    except IommuError:
        ictx.object_abort_and_destroy(viommu)
        raise
    ictx.object_finalize(viommu)
    return 0


# ======================================================================================
# IOMMU_VDEVICE_ALLOC
# ======================================================================================
@traced("iommufd")
def iommufd_vdevice_alloc_ioctl(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_vdevice_alloc = ucmd.cmd
    if cmd.virt_id > ULONG_MAX:
        raise IommuError(errno.EINVAL, "virt_id too large")
    ictx = ucmd.ictx
    viommu = iommufd_get_viommu(ictx, cmd.viommu_id)
    idev = iommufd_get_device(ictx, cmd.dev_id)
    if viommu.iommu_dev is not idev.dev.iommu.iommu_dev:
        raise IommuError(errno.EINVAL, "device is behind another IOMMU than the vIOMMU")
    if idev.destroying:
        raise IommuError(errno.ENOENT, f"device {idev.id} is being unbound")
    if idev.vdev is not None:
        raise IommuError(errno.EEXIST, f"device {idev.id} already has a vDEVICE")
    vdev = ictx.object_alloc(IommufdVdeviceObj, viommu, idev, cmd.virt_id)
    try:
        # xa_insert of a zero entry: a used or reserved slot is EBUSY -> EEXIST. The slot
        # reads as NULL (find_dev, get_vdev_id) until vdevice_init accepts the vDEVICE.
        if cmd.virt_id in viommu.vdevs:
            raise IommuError(errno.EEXIST, f"virt_id {cmd.virt_id:#x} is already used")
        viommu.vdevs[cmd.virt_id] = None
        if viommu.ops is not None and viommu.ops.has("viommu_vdevice_init"):
            try:
                viommu.ops.vdevice_init(vdev)
            except IommuError:
                del viommu.vdevs[cmd.virt_id]  # xa_release
                raise
            vdev.inited = True
        viommu.vdevs[cmd.virt_id] = vdev  # xa_store
        cmd.out_vdevice_id = vdev.id
        ucmd.respond()
    except IommuError:
        ictx.object_abort_and_destroy(vdev)
        raise
    ictx.object_finalize(vdev)
    return 0


# ======================================================================================
# IOMMU_HW_QUEUE_ALLOC
# ======================================================================================
def _hw_queue_alloc_phys(ictx: IommufdCtx, viommu: IommufdViommuObj, iova: int, length: int
                         ) -> tuple[IommufdAccess, int]:
    """Pin the queue through an internal access on the parent's IOAS; the pages must be
    physically contiguous (EFAULT). Returns the access and the queue's physical base."""
    aligned = iova & ~(PAGE_SIZE - 1)
    offset = iova - aligned
    total = offset + length
    if total > ULONG_MAX or total + PAGE_SIZE - 1 > ULONG_MAX:
        raise IommuError(errno.ERANGE, "queue length overflows")
    npages = (total + PAGE_SIZE - 1) >> PAGE_SHIFT
    total = npages << PAGE_SHIFT
    if npages * 8 <= PAGE_SIZE:  # kvzalloc of the page array: vmalloc above a page
        ictx.subsys.kzalloc("the page array")
    access = iommufd_access_create_internal(ictx)
    try:
        iommufd_access_attach_internal(access, viommu.hwpt.ioas)
        pfns = iommufd_access_pin_pages(access, aligned, total, 0)
        try:
            for a, b in itertools.pairwise(pfns):
                if b != a + 1:
                    raise IommuError(errno.EFAULT, "queue pages are not contiguous")
        except IommuError:
            iommufd_access_unpin_pages(access, aligned, total)
            raise
    except IommuError:
        iommufd_access_destroy(access)
        raise
    return access, (pfns[0] << PAGE_SHIFT) + offset


@traced("iommufd")
def iommufd_hw_queue_alloc_ioctl(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_hw_queue_alloc = ucmd.cmd
    if cmd.flags or cmd.type == uapi.IOMMU_HW_QUEUE_TYPE_DEFAULT:
        raise IommuError(errno.EOPNOTSUPP, "flags or type DEFAULT")
    if not cmd.length:
        raise IommuError(errno.EINVAL, "zero length")
    if cmd.nesting_parent_iova + cmd.length - 1 > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "nesting_parent_iova + length overflows")
    ictx = ucmd.ictx
    viommu = iommufd_get_viommu(ictx, cmd.viommu_id)
    vops = viommu.ops
    if vops is None or not vops.has("viommu_get_hw_queue_size") or not vops.has(
            "viommu_hw_queue_init_phys"):
        raise IommuError(errno.EOPNOTSUPP, "this vIOMMU has no HW queues")
    if not vops.get_hw_queue_size(viommu, cmd.type):
        raise IommuError(errno.EOPNOTSUPP, f"HW queue type {cmd.type:#x} unsupported")
    q = ictx.object_alloc(IommufdHwQueueObj, viommu, cmd.type, cmd.index,
                          cmd.nesting_parent_iova, cmd.length)
    try:
        q.access, base_pa = _hw_queue_alloc_phys(ictx, viommu, cmd.nesting_parent_iova,
                                                 cmd.length)
        viommu.users += 1
        q.holds_viommu = True
        vops.hw_queue_init_phys(q, cmd.index, base_pa)
        q.inited = True
        cmd.out_hw_queue_id = q.id
        ucmd.respond()
    except IommuError:
        ictx.object_abort_and_destroy(q)
        raise
    ictx.object_finalize(q)
    return 0

"""HW page tables (drivers/iommu/iommufd/hw_pagetable.c): HWPT_PAGING objects (an iommu
paging domain kept in step with an IOAS) and HWPT_NESTED objects (a driver-defined
stage-1 on a nest-parent paging HWPT, directly or through a vIOMMU), and their ioctls:
HWPT_ALLOC, HWPT_SET_DIRTY_TRACKING, HWPT_GET_DIRTY_BITMAP, HWPT_INVALIDATE.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_COOKIE_IOMMUFD,
    IOMMU_DOMAIN_NESTED,
    IOMMU_DOMAIN_UNMANAGED,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import UserData, UserDataArray
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.private import IommufdCtx, IommufdObject, ObjType, Ucmd

if TYPE_CHECKING:
    from iommufd.device import IommufdDevice
    from iommufd.eventq import IommufdFault
    from iommufd.ioas import IommufdIoas
    from iommufd.viommu import IommufdViommuObj

#: Caps of HWPT_INVALIDATE (newest kernels).
IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX = 1 << 19

_PAGING_FLAGS = (uapi.IOMMU_HWPT_ALLOC_NEST_PARENT | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                 | uapi.IOMMU_HWPT_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID)
_NESTED_FLAGS = uapi.IOMMU_HWPT_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID


class IommufdHwPagetable(IommufdObject):
    """``struct iommufd_hw_pagetable``: what paging and nested HWPTs share."""

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.domain: IommuDomain | None = None
        self.fault: IommufdFault | None = None
        #: Allocated with IOMMU_HWPT_ALLOC_PASID: may be attached to a PASID.
        self.pasid_compat = False

    def _set_domain(self, domain: IommuDomain) -> None:
        self.domain = domain
        domain.cookie_type = IOMMU_COOKIE_IOMMUFD
        domain.cookie = self
        domain.label = domain.label or f"hwpt {self.id}"

    def _destroy_common(self) -> None:
        if self.domain is not None:
            self.ictx.core.iommu_domain_free(self.domain)
            self.domain = None
        if self.fault is not None:
            self.fault.users -= 1
            self.fault = None


class IommufdHwptPaging(IommufdHwPagetable):
    """``struct iommufd_hwpt_paging``."""

    obj_type = ObjType.HWPT_PAGING

    def __init__(self, ictx: IommufdCtx, ioas: IommufdIoas) -> None:
        super().__init__(ictx)
        self.ioas = ioas
        ioas.users += 1  # pairs with destroy
        self.auto_domain = False
        self.nest_parent = False
        self.enforce_cache_coherency = False
        self.in_ioas = False

    def destroy(self) -> None:
        if self.in_ioas:
            self.ioas.hwpt_list.remove(self)
            assert self.domain is not None
            self.ioas.iopt.iopt_table_remove_domain(self.domain)
            self.in_ioas = False
        self._destroy_common()
        self.ioas.users -= 1


class IommufdHwptNested(IommufdHwPagetable):
    """``struct iommufd_hwpt_nested``."""

    obj_type = ObjType.HWPT_NESTED

    def __init__(self, ictx: IommufdCtx, parent: IommufdHwptPaging,
                 viommu: IommufdViommuObj | None) -> None:
        super().__init__(ictx)
        self.parent = parent
        parent.users += 1
        self.viommu = viommu
        if viommu is not None:
            viommu.users += 1

    def destroy(self) -> None:
        self._destroy_common()
        self.parent.users -= 1
        if self.viommu is not None:
            self.viommu.users -= 1


def find_hwpt_paging(hwpt: IommufdHwPagetable) -> IommufdHwptPaging | None:
    """The paging HWPT whose IOAS backs ``hwpt`` (itself, or a nested one's parent)."""
    if isinstance(hwpt, IommufdHwptPaging):
        return hwpt
    if isinstance(hwpt, IommufdHwptNested):
        return hwpt.parent
    return None


def iommufd_hwpt_paging_enforce_cc(hwpt: IommufdHwptPaging) -> None:
    """A device that can enforce coherency only joins a domain that blocks no-snoop."""
    if hwpt.enforce_cache_coherency:
        return
    dom = hwpt.domain
    assert dom is not None
    hwpt.enforce_cache_coherency = dom.ops.enforce_cache_coherency(dom)
    if not hwpt.enforce_cache_coherency:
        raise IommuError(errno.EINVAL, f"{dom!r} cannot enforce cache coherency")


# ======================================================================================
# allocation
# ======================================================================================
@traced("iommufd", lambda ioas, idev, pasid, flags, immediate_attach, user_data:
        f"ioas {ioas.id} dev {idev.id} flags {flags:#x}")
def iommufd_hwpt_paging_alloc(ictx: IommufdCtx, ioas: IommufdIoas, idev: IommufdDevice,
                              pasid: int, flags: int, immediate_attach: bool,
                              user_data: UserData | None) -> IommufdHwptPaging:
    """A paging HWPT (unpublished) holding every mapping of ``ioas``. With
    ``immediate_attach`` the device is attached before the domain is filled."""
    from iommufd.device import iommufd_hw_pagetable_attach, iommufd_hw_pagetable_detach

    dev = idev.dev
    ops = dev.iommu.ops
    if (flags or user_data is not None) and not ops.implements("domain_alloc_paging_flags"):
        raise IommuError(errno.EOPNOTSUPP, f"{ops.name} takes no HWPT flags or data")
    if flags & ~_PAGING_FLAGS:
        raise IommuError(errno.EOPNOTSUPP, f"unknown HWPT flags {flags & ~_PAGING_FLAGS:#x}")
    if flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not ictx.core.device_iommu_capable(
            dev, IommuCap.DIRTY_TRACKING):
        raise IommuError(errno.EOPNOTSUPP, f"{dev.name} cannot track dirty pages")
    if flags & uapi.IOMMU_HWPT_FAULT_ID_VALID and flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT:
        raise IommuError(errno.EOPNOTSUPP, "a nest parent cannot take I/O page faults")

    hwpt = ictx.object_alloc(IommufdHwptPaging, ioas)
    hwpt.pasid_compat = bool(flags & uapi.IOMMU_HWPT_ALLOC_PASID)
    hwpt.nest_parent = bool(flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    attached = False
    try:
        domain = ictx.core.iommu_paging_domain_alloc_flags(
            dev, flags & ~uapi.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        hwpt._set_domain(domain)
        if domain.type != IOMMU_DOMAIN_UNMANAGED:
            raise IommuError(errno.EINVAL, f"driver returned a {domain.type_name} domain")
        if idev.enforce_cache_coherency:
            iommufd_hwpt_paging_enforce_cc(hwpt)
        if immediate_attach:
            iommufd_hw_pagetable_attach(hwpt, idev, pasid)
            attached = True
        ioas.iopt.iopt_table_add_domain(domain)
    except IommuError:
        if attached:
            iommufd_hw_pagetable_detach(idev, pasid, put=False)
        ictx.object_abort_and_destroy(hwpt)
        raise
    hwpt.in_ioas = True
    ioas.hwpt_list.append(hwpt)
    return hwpt


def _check_nested_domain(dom: IommuDomain) -> None:
    if dom.type != IOMMU_DOMAIN_NESTED:
        raise IommuError(errno.EOPNOTSUPP, f"driver returned a {dom.type_name} domain "
                         "for a nested HWPT")


@traced("iommufd", lambda parent, idev, flags, user_data:
        f"parent {parent.id} dev {idev.id} flags {flags:#x}")
def iommufd_hwpt_nested_alloc(ictx: IommufdCtx, parent: IommufdHwptPaging,
                              idev: IommufdDevice, flags: int, user_data: UserData
                              ) -> IommufdHwptNested:
    ops = idev.dev.iommu.ops
    if flags & ~_NESTED_FLAGS or not user_data.len or not ops.implements(
            "domain_alloc_nested"):
        raise IommuError(errno.EOPNOTSUPP, "nested HWPT: bad flags, no data or no "
                         "driver support")
    assert parent.domain is not None
    if parent.auto_domain or not parent.nest_parent or parent.domain.owner is not ops:
        raise IommuError(errno.EINVAL, f"HWPT {parent.id} is not a nest parent of "
                         f"{ops.name}")
    hwpt = ictx.object_alloc(IommufdHwptNested, parent, None)
    hwpt.pasid_compat = bool(flags & uapi.IOMMU_HWPT_ALLOC_PASID)
    try:
        dom = ops.domain_alloc_nested(idev.dev, parent.domain,
                                      flags & ~uapi.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        hwpt._set_domain(dom)
        _check_nested_domain(dom)
    except IommuError:
        ictx.object_abort_and_destroy(hwpt)
        raise
    return hwpt


@traced("iommufd", lambda flags, user_data: f"flags {flags:#x}")
def iommufd_viommu_alloc_hwpt_nested(viommu: IommufdViommuObj, flags: int,
                                     user_data: UserData) -> IommufdHwptNested:
    if flags & ~_NESTED_FLAGS:
        raise IommuError(errno.EOPNOTSUPP, f"unknown nested flags {flags:#x}")
    if not user_data.len:
        raise IommuError(errno.EOPNOTSUPP, "nested HWPT needs driver data")
    vops = viommu.ops
    if vops is None or not vops.has("viommu_alloc_domain_nested"):
        raise IommuError(errno.EOPNOTSUPP, "this vIOMMU cannot allocate nested domains")
    ictx = viommu.ictx
    hwpt = ictx.object_alloc(IommufdHwptNested, viommu.hwpt, viommu)
    hwpt.pasid_compat = bool(flags & uapi.IOMMU_HWPT_ALLOC_PASID)
    try:
        dom = vops.alloc_domain_nested(viommu, flags & ~uapi.IOMMU_HWPT_FAULT_ID_VALID,
                                       user_data)
        hwpt._set_domain(dom)
        _check_nested_domain(dom)
    except IommuError:
        ictx.object_abort_and_destroy(hwpt)
        raise
    return hwpt


# ======================================================================================
# IOMMU_HWPT_ALLOC
# ======================================================================================
@traced("iommufd")
def iommufd_hwpt_alloc(ucmd: Ucmd) -> int:
    from iommufd.device import iommufd_get_device
    from iommufd.eventq import IommufdFault, iommufd_fault_iopf_handler
    from iommufd.ioas import IommufdIoas
    from iommufd.viommu import IommufdViommuObj

    cmd: uapi.iommu_hwpt_alloc = ucmd.cmd
    ictx = ucmd.ictx
    if int(getattr(cmd, "__reserved")):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    if (cmd.data_type == uapi.IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0):
        raise IommuError(errno.EINVAL, "data_type and data_len disagree")
    user_data = UserData(ictx.current.uaccess, cmd.data_type, cmd.data_uptr, cmd.data_len)
    idev = iommufd_get_device(ictx, cmd.dev_id)
    pt_obj = ictx.objects.get(cmd.pt_id)
    if pt_obj is None:
        raise IommuError(errno.EINVAL, f"pt_id {cmd.pt_id} not found")
    hwpt: IommufdHwPagetable
    if isinstance(pt_obj, IommufdIoas):
        hwpt = iommufd_hwpt_paging_alloc(ictx, pt_obj, idev, 0, cmd.flags, False,
                                         user_data if user_data.len else None)
    elif isinstance(pt_obj, IommufdHwptPaging):
        hwpt = iommufd_hwpt_nested_alloc(ictx, pt_obj, idev, cmd.flags, user_data)
    elif isinstance(pt_obj, IommufdViommuObj):
        if pt_obj.iommu_dev is not idev.dev.iommu.iommu_dev:
            raise IommuError(errno.EINVAL, "device is behind another IOMMU than the vIOMMU")
        hwpt = iommufd_viommu_alloc_hwpt_nested(pt_obj, cmd.flags, user_data)
    else:
        raise IommuError(errno.EINVAL, f"pt_id {cmd.pt_id} is a {pt_obj.obj_type.value}")
    try:
        if cmd.flags & uapi.IOMMU_HWPT_FAULT_ID_VALID:
            fault = ictx.get_object(cmd.fault_id, IommufdFault)
            hwpt.fault = fault
            fault.users += 1
            assert hwpt.domain is not None
            hwpt.domain.iopf_handler = iommufd_fault_iopf_handler
        cmd.out_hwpt_id = hwpt.id
        ucmd.respond()
    except IommuError:
        ictx.object_abort_and_destroy(hwpt)
        raise
    ictx.object_finalize(hwpt)
    return 0


def iommufd_get_hwpt_paging(ictx: IommufdCtx, oid: int) -> IommufdHwptPaging:
    return ictx.get_object(oid, IommufdHwptPaging)


# ======================================================================================
# dirty tracking
# ======================================================================================
@traced("iommufd")
def iommufd_hwpt_set_dirty_tracking(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_hwpt_set_dirty_tracking = ucmd.cmd
    if cmd.flags & ~uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    hwpt = iommufd_get_hwpt_paging(ucmd.ictx, cmd.hwpt_id)
    assert hwpt.domain is not None
    hwpt.ioas.iopt.iopt_set_dirty_tracking(
        hwpt.domain, bool(cmd.flags & uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))
    return 0


@traced("iommufd")
def iommufd_hwpt_get_dirty_bitmap(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_hwpt_get_dirty_bitmap = ucmd.cmd
    if cmd.flags & ~uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or int(
            getattr(cmd, "__reserved")):
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x} or __reserved")
    ictx = ucmd.ictx
    hwpt = iommufd_get_hwpt_paging(ictx, cmd.hwpt_id)
    assert hwpt.domain is not None
    hwpt.ioas.iopt.iopt_read_and_clear_dirty_data(
        hwpt.domain, cmd.flags, cmd.iova, cmd.length, cmd.page_size, cmd.data,
        ictx.current.uaccess)
    return 0


# ======================================================================================
# IOMMU_HWPT_INVALIDATE
# ======================================================================================
@traced("iommufd")
def iommufd_hwpt_invalidate(ucmd: Ucmd) -> int:
    """Driver-format invalidation of a nested HWPT or a vIOMMU. ``entry_num`` is
    written back with the number of entries handled on every path."""
    from iommufd.viommu import IommufdViommuObj

    cmd: uapi.iommu_hwpt_invalidate = ucmd.cmd
    ictx = ucmd.ictx
    done = 0
    err: IommuError | None = None
    try:
        if int(getattr(cmd, "__reserved")):
            raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
        # Only a non-empty array is bounded: entry_num 0 ignores data_uptr/entry_len.
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len
                              or cmd.entry_len > PAGE_SIZE
                              or cmd.entry_num > IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX):
            raise IommuError(errno.EINVAL, "entries without data_uptr, or entry_len "
                             f"{cmd.entry_len} / entry_num {cmd.entry_num} out of bounds")
        array = UserDataArray(ictx.current.uaccess, cmd.data_type, cmd.data_uptr,
                              cmd.entry_len, cmd.entry_num)
        obj = ictx.get_any(cmd.hwpt_id)
        if isinstance(obj, IommufdHwptNested):
            dom = obj.domain
            assert dom is not None
            if not dom.ops.has("cache_invalidate_user"):
                raise IommuError(errno.EOPNOTSUPP, "no cache_invalidate_user")
            try:
                dom.ops.cache_invalidate_user(dom, array)
            finally:
                done = array.entry_num
        elif isinstance(obj, IommufdViommuObj):
            vops = obj.ops
            if vops is None or not vops.has("viommu_cache_invalidate"):
                raise IommuError(errno.EOPNOTSUPP, "no vIOMMU cache_invalidate")
            try:
                vops.cache_invalidate(obj, array)
            finally:
                done = array.entry_num
        else:
            raise IommuError(errno.EINVAL, f"object {cmd.hwpt_id} is a "
                             f"{obj.obj_type.value}, not a nested HWPT or vIOMMU")
    except IommuError as e:
        err = e
    cmd.entry_num = done
    try:
        ucmd.respond()
    except IommuError as e:
        raise IommuError(errno.EFAULT, "entry_num write-back faulted") from e
    if err is not None:
        raise err
    return 0

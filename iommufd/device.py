"""Devices bound to an iommufd (drivers/iommu/iommufd/device.c): bind/unbind with DMA
ownership, attach/replace/detach of the RID and of PASIDs to HWPTs or IOASes (automatic
domains), reserved regions moved into the IOAS, fault routing through attach handles,
and IOMMU_GET_HW_INFO.

Attachment is per (iommu group, PASID): the first device of a group attaches the group
in hardware, later ones only join, the last one to leave detaches it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from iommu_core.device import IommuCap, ResvType
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID, AttachHandle, IommuGroup
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.hw_pagetable import (
    IommufdHwPagetable,
    IommufdHwptNested,
    IommufdHwptPaging,
    find_hwpt_paging,
    iommufd_hwpt_paging_alloc,
    iommufd_hwpt_paging_enforce_cc,
)
from iommufd.private import IommufdCtx, IommufdObject, ObjType, Ucmd

if TYPE_CHECKING:
    from iommu_core.platform.bus import Device
    from iommufd.ioas import IommufdIoas
    from iommufd.viommu import IommufdVdeviceObj

MOCK_BUS = "mock"


def iommufd_selftest_is_mock_dev(dev: Device) -> bool:
    return dev.bus == MOCK_BUS


class IommufdAttach:
    """``struct iommufd_attach``: what one (group, PASID) is attached to."""

    __slots__ = ("devices", "hwpt")

    def __init__(self) -> None:
        self.hwpt: IommufdHwPagetable | None = None
        #: ``device_array``: idev id -> idev attached at this PASID.
        self.devices: dict[int, IommufdDevice] = {}


class IommufdGroup:
    """``struct iommufd_group``: iommufd's state for one iommu group in one context."""

    def __init__(self, ictx: IommufdCtx, group: IommuGroup) -> None:
        self.ictx = ictx
        self.group = group
        self.refs = 1
        #: ``pasid_attach``: PASID -> attachment.
        self.attach: dict[int, IommufdAttach] = {}
        self.sw_msi_start: int | None = None

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.ictx.groups.pop(self.group.id, None)


def iommufd_get_group(ictx: IommufdCtx, dev: Device) -> IommufdGroup:
    group = dev.iommu_group
    if group is None:
        raise IommuError(errno.ENODEV, f"{dev.name} has no iommu group")
    igroup = ictx.groups.get(group.id)
    if igroup is not None and igroup.group is group:
        igroup.refs += 1
        return igroup
    ictx.subsys.kzalloc("struct iommufd_group")
    igroup = IommufdGroup(ictx, group)
    ictx.groups[group.id] = igroup
    return igroup


class IommufdDevice(IommufdObject):
    """``struct iommufd_device``: a device bound to this context."""

    obj_type = ObjType.DEVICE

    def __init__(self, ictx: IommufdCtx, dev: Device, igroup: IommufdGroup) -> None:
        super().__init__(ictx)
        self.dev = dev
        self.igroup = igroup
        self.enforce_cache_coherency = ictx.core.device_iommu_capable(
            dev, IommuCap.ENFORCE_CACHE_COHERENCY)
        self.iopf_enabled = 0
        self.vdev: IommufdVdeviceObj | None = None
        self.destroying = False
        self.is_mock = iommufd_selftest_is_mock_dev(dev)

    def pre_destroy(self) -> None:
        """``iommufd_device_remove_vdev``: a vDEVICE of this device becomes a tombstone."""
        self.destroying = True
        vdev = self.vdev
        if vdev is not None and self.ictx.objects.get(vdev.id) is vdev:
            vdev.users += 1
            self.ictx.object_destroy_user(vdev, tombstone=True)

    def destroy(self) -> None:
        self.ictx.core.iommu_device_release_dma_owner(self.dev)
        self.igroup.put()
        if not self.is_mock:
            self.ictx.put()


def iommufd_get_device(ictx: IommufdCtx, oid: int) -> IommufdDevice:
    return ictx.get_object(oid, IommufdDevice)


# ======================================================================================
# bind / unbind
# ======================================================================================
@traced("iommufd", lambda dev: dev.name)
def iommufd_device_bind(ictx: IommufdCtx, dev: Device) -> IommufdDevice:
    """Take DMA ownership of ``dev`` for this context; the caller holds a reference until
    :func:`iommufd_device_unbind`."""
    core = ictx.core
    if not core.device_iommu_capable(dev, IommuCap.CACHE_COHERENCY):
        raise IommuError(errno.EINVAL, f"{dev.name}: IOMMU is not cache coherent")
    igroup = iommufd_get_group(ictx, dev)
    try:
        if not iommufd_selftest_is_mock_dev(dev) and not core.iommu_group_has_isolated_msi(
                igroup.group):
            raise IommuError(errno.EPERM, f"{dev.name}: MSI is not isolated")
        core.iommu_device_claim_dma_owner(dev, ictx)
    except IommuError:
        igroup.put()
        raise
    try:
        idev = ictx.object_alloc(IommufdDevice, dev, igroup)
    except IommuError:
        core.iommu_device_release_dma_owner(dev)
        igroup.put()
        raise
    if not idev.is_mock:
        ictx.get()  # mock devices live inside the context: no reference cycle
    idev.users += 1  # the binding driver's reference
    ictx.object_finalize(idev)
    return idev


@traced("iommufd")
def iommufd_device_unbind(idev: IommufdDevice) -> None:
    idev.ictx.object_destroy_user(idev)


# ======================================================================================
# attach helpers
# ======================================================================================
def _compatible_device(hwpt: IommufdHwPagetable, idev: IommufdDevice) -> bool:
    """A fault-capable HWPT cannot serve a PCI VF that has PRI (PRI is shared with the PF)."""
    dev = idev.dev
    return not (hwpt.fault is not None and dev.is_pci and dev.is_virtfn and dev.pri)


def iommufd_hwpt_pasid_compat(hwpt: IommufdHwPagetable, idev: IommufdDevice, pasid: int
                              ) -> None:
    igroup = idev.igroup
    if pasid == IOMMU_NO_PASID:
        if not hwpt.pasid_compat and any(p != IOMMU_NO_PASID for p in igroup.attach):
            raise IommuError(errno.EINVAL, "PASIDs are attached: the RID HWPT must be "
                             "PASID capable")
    else:
        if not hwpt.pasid_compat:
            raise IommuError(errno.EINVAL, f"HWPT {hwpt.id} was not allocated with "
                             "IOMMU_HWPT_ALLOC_PASID")
        rid = igroup.attach.get(IOMMU_NO_PASID)
        if rid is not None and rid.hwpt is not None and not rid.hwpt.pasid_compat:
            raise IommuError(errno.EINVAL, "the RID is attached to a non-PASID HWPT")


def iommufd_fault_iopf_enable(idev: IommufdDevice) -> None:
    dev = idev.dev
    if dev.is_pci and dev.is_virtfn and dev.pri:
        raise IommuError(errno.EINVAL, f"{dev.name}: PRI of a VF is shared with its PF")
    idev.iopf_enabled += 1


def iommufd_fault_iopf_disable(idev: IommufdDevice) -> None:
    if idev.iopf_enabled:
        idev.iopf_enabled -= 1


def _get_attach_handle(idev: IommufdDevice, pasid: int) -> AttachHandle | None:
    return idev.igroup.group.pasid_array.get(pasid)


def iommufd_device_attach_reserved_iova(idev: IommufdDevice, hwpt: IommufdHwptPaging
                                        ) -> None:
    """Reserve the device's reserved regions in the IOAS (EADDRINUSE on a collision).
    The SW-MSI window is only reserved: nothing in the simulation composes MSIs."""
    hwpt.ioas.iopt.iopt_table_enforce_dev_resv_regions(idev.dev)
    for r in idev.ictx.core.iommu_get_resv_regions(idev.dev):
        if r.type == ResvType.SW_MSI:
            idev.igroup.sw_msi_start = r.start


def _remove_rr(idev: IommufdDevice, hwpt: IommufdHwptPaging) -> None:
    hwpt.ioas.iopt.iopt_remove_reserved_iova(idev.dev)


def _hwpt_attach_device(hwpt: IommufdHwPagetable, idev: IommufdDevice, pasid: int) -> None:
    """``iommufd_hwpt_attach_device``: the hardware attach, with an attach handle."""
    if not _compatible_device(hwpt, idev):
        raise IommuError(errno.EINVAL, "fault-capable HWPT on a PCI VF with PRI")
    core = idev.ictx.core
    if hwpt.fault is not None:
        iommufd_fault_iopf_enable(idev)
    try:
        idev.ictx.subsys.kzalloc("struct iommufd_attach_handle")
        handle = AttachHandle(hwpt.domain, owner=idev)  # type: ignore[arg-type]
        assert hwpt.domain is not None
        if pasid == IOMMU_NO_PASID:
            core.iommu_attach_group_handle(hwpt.domain, idev.igroup.group, handle)
        else:
            core.iommu_attach_device_pasid(hwpt.domain, idev.dev, pasid, handle)
    except IommuError:
        if hwpt.fault is not None:
            iommufd_fault_iopf_disable(idev)
        raise


def _hwpt_detach_device(hwpt: IommufdHwPagetable, idev: IommufdDevice, pasid: int) -> None:
    from iommufd.eventq import iommufd_auto_response_faults

    core = idev.ictx.core
    handle = _get_attach_handle(idev, pasid)
    assert hwpt.domain is not None
    if pasid == IOMMU_NO_PASID:
        core.iommu_detach_group(hwpt.domain, idev.igroup.group)
    else:
        core.iommu_detach_device_pasid(hwpt.domain, idev.dev, pasid)
    iommufd_auto_response_faults(hwpt, handle)
    if hwpt.fault is not None:
        iommufd_fault_iopf_disable(idev)


def _hwpt_replace_device(idev: IommufdDevice, pasid: int, hwpt: IommufdHwPagetable,
                         old: IommufdHwPagetable) -> None:
    from iommufd.eventq import iommufd_auto_response_faults

    if not _compatible_device(hwpt, idev):
        raise IommuError(errno.EINVAL, "fault-capable HWPT on a PCI VF with PRI")
    core = idev.ictx.core
    old_handle = _get_attach_handle(idev, pasid)
    enabled = False
    if hwpt.fault is not None and old.fault is None:
        iommufd_fault_iopf_enable(idev)
        enabled = True
    try:
        idev.ictx.subsys.kzalloc("struct iommufd_attach_handle")
        handle = AttachHandle(hwpt.domain, owner=idev)  # type: ignore[arg-type]
        assert hwpt.domain is not None
        if pasid == IOMMU_NO_PASID:
            core.iommu_replace_group_handle(idev.igroup.group, hwpt.domain, handle)
        else:
            core.iommu_replace_device_pasid(hwpt.domain, idev.dev, pasid, handle)
    except IommuError:
        if enabled:
            iommufd_fault_iopf_disable(idev)
        raise
    if old.fault is not None:
        iommufd_auto_response_faults(old, old_handle)
        if hwpt.fault is None:
            iommufd_fault_iopf_disable(idev)


# ======================================================================================
# attach / detach / replace
# ======================================================================================
def iommufd_hw_pagetable_attach(hwpt: IommufdHwPagetable, idev: IommufdDevice, pasid: int
                                ) -> None:
    """Join ``idev`` to ``hwpt`` at ``pasid``; the first device of the group attaches
    the group in hardware. Takes a ``users`` reference on the HWPT per device."""
    hwpt_paging = find_hwpt_paging(hwpt)
    attach_resv = hwpt_paging is not None and pasid == IOMMU_NO_PASID
    igroup = idev.igroup
    attach = igroup.attach.get(pasid)
    new_attach = attach is None
    if attach is None:
        idev.ictx.subsys.kzalloc("struct iommufd_attach")
        attach = IommufdAttach()
    if idev.id in attach.devices:
        raise IommuError(errno.EBUSY, f"device {idev.id} is already attached at PASID {pasid}")
    old = attach.hwpt
    if old is not None and old is not hwpt:
        raise IommuError(errno.EINVAL, "another device of the group uses another HWPT")
    iommufd_hwpt_pasid_compat(hwpt, idev, pasid)
    if isinstance(hwpt, IommufdHwptPaging) and idev.enforce_cache_coherency:
        iommufd_hwpt_paging_enforce_cc(hwpt)
    if attach_resv:
        assert hwpt_paging is not None
        iommufd_device_attach_reserved_iova(idev, hwpt_paging)
    try:
        if not attach.devices:
            _hwpt_attach_device(hwpt, idev, pasid)
            attach.hwpt = hwpt
    except IommuError:
        if attach_resv:
            assert hwpt_paging is not None
            _remove_rr(idev, hwpt_paging)
        raise
    if new_attach:
        igroup.attach[pasid] = attach
    hwpt.users += 1
    attach.devices[idev.id] = idev


def iommufd_hw_pagetable_detach(idev: IommufdDevice, pasid: int, put: bool = True
                                ) -> IommufdHwPagetable | None:
    """Leave the attachment at ``pasid``; the last device detaches the group. Returns the
    HWPT whose reference the caller must put (None if nothing was attached)."""
    igroup = idev.igroup
    attach = igroup.attach.get(pasid)
    if attach is None or idev.id not in attach.devices:
        return None
    hwpt = attach.hwpt
    assert hwpt is not None
    del attach.devices[idev.id]
    if not attach.devices:
        _hwpt_detach_device(hwpt, idev, pasid)
        del igroup.attach[pasid]
    hwpt_paging = find_hwpt_paging(hwpt)
    if hwpt_paging is not None and pasid == IOMMU_NO_PASID:
        _remove_rr(idev, hwpt_paging)
    if not put:
        hwpt.users -= 1
    return hwpt


def iommufd_hw_pagetable_put(ictx: IommufdCtx, hwpt: IommufdHwPagetable) -> None:
    """Drop a device's reference; an automatic HWPT dies with its last device."""
    if isinstance(hwpt, IommufdHwptPaging) and hwpt.auto_domain:
        ictx.object_put_and_try_destroy(hwpt)
    else:
        hwpt.users -= 1


def iommufd_device_is_attached(idev: IommufdDevice, pasid: int) -> bool:
    attach = idev.igroup.attach.get(pasid)
    return attach is not None and idev.id in attach.devices


def _group_replace_reserved_iova(igroup: IommufdGroup, attach: IommufdAttach,
                                 hwpt: IommufdHwptPaging) -> None:
    old = find_hwpt_paging(attach.hwpt) if attach.hwpt is not None else None
    if old is not None and old.ioas is hwpt.ioas:
        return
    done = []
    try:
        for cur in attach.devices.values():
            hwpt.ioas.iopt.iopt_table_enforce_dev_resv_regions(cur.dev)
            done.append(cur)
    except IommuError:
        for cur in done:
            _remove_rr(cur, hwpt)
        raise


def iommufd_device_do_replace(idev: IommufdDevice, pasid: int, hwpt: IommufdHwPagetable
                              ) -> IommufdHwPagetable | None:
    """Switch (group, PASID) to ``hwpt`` without passing through blocking; returns the
    old HWPT whose reference the caller must put (None for a no-op)."""
    hwpt_paging = find_hwpt_paging(hwpt)
    attach_resv = hwpt_paging is not None and pasid == IOMMU_NO_PASID
    igroup = idev.igroup
    attach = igroup.attach.get(pasid)
    if attach is None:
        raise IommuError(errno.EINVAL, f"nothing is attached at PASID {pasid}")
    old = attach.hwpt
    assert old is not None
    if idev.id not in attach.devices:
        raise IommuError(errno.EINVAL, f"device {idev.id} is not attached at PASID {pasid}")
    if hwpt is old:
        return None
    iommufd_hwpt_pasid_compat(hwpt, idev, pasid)
    if isinstance(hwpt, IommufdHwptPaging) and idev.enforce_cache_coherency:
        iommufd_hwpt_paging_enforce_cc(hwpt)
    old_paging = find_hwpt_paging(old)
    moved_resv = attach_resv and (old_paging is None or hwpt_paging is None
                                  or old_paging.ioas is not hwpt_paging.ioas)
    if moved_resv:
        assert hwpt_paging is not None
        _group_replace_reserved_iova(igroup, attach, hwpt_paging)
    try:
        _hwpt_replace_device(idev, pasid, hwpt, old)
    except IommuError:
        if moved_resv:
            assert hwpt_paging is not None
            for cur in attach.devices.values():
                _remove_rr(cur, hwpt_paging)
        raise
    if old_paging is not None and pasid == IOMMU_NO_PASID and (
            hwpt_paging is None or old_paging.ioas is not hwpt_paging.ioas):
        for cur in attach.devices.values():
            _remove_rr(cur, old_paging)
    attach.hwpt = hwpt
    num = len(attach.devices)
    # The devices' references move to the new HWPT; the caller puts one on the old.
    hwpt.users += num
    if num > 1:
        old.users -= num - 1
    return old


def iommufd_device_do_attach(idev: IommufdDevice, pasid: int, hwpt: IommufdHwPagetable
                             ) -> IommufdHwPagetable | None:
    iommufd_hw_pagetable_attach(hwpt, idev, pasid)
    return None


AttachFn = Callable[[IommufdDevice, int, IommufdHwPagetable], IommufdHwPagetable | None]


def iommufd_device_auto_get_domain(idev: IommufdDevice, pasid: int, ioas: IommufdIoas,
                                   do_attach: AttachFn) -> tuple[int, IommufdHwPagetable | None]:
    """Reuse the first compatible automatic HWPT of the IOAS (EINVAL = incompatible, try
    the next), else allocate one (flags 0). Returns (hwpt id, HWPT to put)."""
    ictx = idev.ictx
    immediate = do_attach is iommufd_device_do_attach
    for hwpt in list(ioas.hwpt_list):
        if not hwpt.auto_domain:
            continue
        try:
            destroy = do_attach(idev, pasid, hwpt)
        except IommuError as e:
            if e.errno == errno.EINVAL:
                continue
            raise
        return hwpt.id, destroy
    new = iommufd_hwpt_paging_alloc(ictx, ioas, idev, pasid, 0, immediate, None)
    destroy = None
    if not immediate:
        try:
            destroy = do_attach(idev, pasid, new)
        except IommuError:
            ictx.object_abort_and_destroy(new)
            raise
    new.auto_domain = True
    ictx.object_finalize(new)
    return new.id, destroy


def iommufd_device_change_pt(idev: IommufdDevice, pasid: int, pt_id: int,
                             do_attach: AttachFn) -> int:
    from iommufd.ioas import IommufdIoas

    ictx = idev.ictx
    pt_obj = ictx.get_any(pt_id)
    if isinstance(pt_obj, IommufdHwptPaging | IommufdHwptNested):
        destroy = do_attach(idev, pasid, pt_obj)
    elif isinstance(pt_obj, IommufdIoas):
        pt_id, destroy = iommufd_device_auto_get_domain(idev, pasid, pt_obj, do_attach)
    else:
        raise IommuError(errno.EINVAL, f"object {pt_id} is a {pt_obj.obj_type.value}, "
                         "not an IOAS or HWPT")
    if destroy is not None:
        iommufd_hw_pagetable_put(ictx, destroy)
    return pt_id


@traced("iommufd", lambda pasid, pt_id: f"pasid {pasid} pt {pt_id}")
def iommufd_device_attach(idev: IommufdDevice, pasid: int, pt_id: int) -> int:
    """``iommufd_device_attach``: returns the HWPT id actually attached."""
    pt_id = iommufd_device_change_pt(idev, pasid, pt_id, iommufd_device_do_attach)
    idev.users += 1  # pairs with iommufd_device_detach
    return pt_id


@traced("iommufd", lambda pasid, pt_id: f"pasid {pasid} pt {pt_id}")
def iommufd_device_replace(idev: IommufdDevice, pasid: int, pt_id: int) -> int:
    return iommufd_device_change_pt(idev, pasid, pt_id, iommufd_device_do_replace)


@traced("iommufd", lambda pasid: f"pasid {pasid}")
def iommufd_device_detach(idev: IommufdDevice, pasid: int) -> None:
    hwpt = iommufd_hw_pagetable_detach(idev, pasid)
    if hwpt is None:
        return
    iommufd_hw_pagetable_put(idev.ictx, hwpt)
    idev.users -= 1


def iommufd_device_detach_all(idev: IommufdDevice) -> None:
    """Detach every PASID, then the RID (what unbinding drivers do)."""
    for pasid, attach in list(idev.igroup.attach.items()):
        if pasid != IOMMU_NO_PASID and idev.id in attach.devices:
            iommufd_device_detach(idev, pasid)
    iommufd_device_detach(idev, IOMMU_NO_PASID)


# ======================================================================================
# IOMMU_GET_HW_INFO
# ======================================================================================
@traced("iommufd")
def iommufd_get_hw_info(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_hw_info = ucmd.cmd
    if cmd.flags & ~uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    if any(getattr(cmd, "__reserved")):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    if not cmd.flags & uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        cmd.in_data_type = uapi.IOMMU_HW_INFO_TYPE_DEFAULT
    ictx = ucmd.ictx
    idev = iommufd_get_device(ictx, cmd.dev_id)
    dev = idev.dev
    ops = dev.iommu.ops
    if ops.implements("hw_info"):
        data, out_type = ops.hw_info(dev, cmd.in_data_type)
        if out_type == uapi.IOMMU_HW_INFO_TYPE_NONE:
            raise IommuError(errno.EOPNOTSUPP, f"{ops.name} hw_info returned type NONE")
        cmd.out_data_type = out_type
    else:
        cmd.out_data_type = uapi.IOMMU_HW_INFO_TYPE_NONE
        data = b""
    uaccess = ictx.current.uaccess
    copy_len = min(cmd.data_len, len(data))
    uaccess.copy_to_user(cmd.data_uptr, data[:copy_len])
    if copy_len < cmd.data_len:
        uaccess.clear_user(cmd.data_uptr + copy_len, cmd.data_len - copy_len)
    cmd.data_len = len(data)
    core = ictx.core
    caps = 0
    if core.device_iommu_capable(dev, IommuCap.DIRTY_TRACKING):
        caps |= uapi.IOMMU_HW_CAP_DIRTY_TRACKING
    if not core.device_iommu_capable(dev, IommuCap.PCI_ATS_SUPPORTED):
        caps |= uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    cmd.out_max_pasid_log2 = 0
    max_pasids = dev.iommu.max_pasids
    if max_pasids:
        cmd.out_max_pasid_log2 = max_pasids.bit_length() - 1
        if dev.is_pci:
            if dev.pasid_exec:
                caps |= uapi.IOMMU_HW_CAP_PCI_PASID_EXEC
            if dev.pasid_priv:
                caps |= uapi.IOMMU_HW_CAP_PCI_PASID_PRIV
    cmd.out_capabilities = caps
    ucmd.respond()
    return 0

"""VFIO device cdevs ``/dev/vfio/devices/vfioN`` (drivers/vfio/device_cdev.c and
drivers/vfio/iommufd.c): BIND_IOMMUFD, ATTACH_IOMMUFD_PT and DETACH_IOMMUFD_PT of a
vfio-pci device, the iommufd side of VFIO. Binding claims DMA ownership of the device
(through ``iommufd_device_bind``); closing the fd detaches the PASIDs, then the RID, and
unbinds.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.platform.files import File, VmRegion
from iommu_core.platform.uaccess import UserArg, copy_struct_from_user
from iommu_core.trace import traced
from iommufd import uapi, uapi_vfio
from iommufd.device import (
    IommufdDevice,
    iommufd_device_attach,
    iommufd_device_bind,
    iommufd_device_detach,
    iommufd_device_replace,
    iommufd_device_unbind,
)

if TYPE_CHECKING:
    from iommu_core.iommu import IommuCore
    from iommu_core.platform.bus import Device
    from iommu_core.trace import Tracer
    from iommufd.private import IommufdCtx

VFIO_CDEV_PREFIX = "/dev/vfio/devices/vfio"


class VfioDevice:
    """``struct vfio_device`` of a vfio-pci bound device."""

    def __init__(self, core: IommuCore, dev: Device, path: str) -> None:
        self.core = core
        self.tracer: Tracer = core.tracer
        self.dev = dev
        self.path = path
        self.open_count = 0
        self.idev: IommufdDevice | None = None
        self.ictx: IommufdCtx | None = None
        self.iommufd_attached = False
        #: PASIDs attached through ATTACH_IOMMUFD_PT (``vdev->pasids``).
        self.pasids: set[int] = set()

    # -- vfio_iommufd_physical_* -------------------------------------------------------------
    def attach_ioas(self, pt_id: int) -> int:
        assert self.idev is not None
        if self.iommufd_attached:
            return iommufd_device_replace(self.idev, IOMMU_NO_PASID, pt_id)
        pt_id = iommufd_device_attach(self.idev, IOMMU_NO_PASID, pt_id)
        self.iommufd_attached = True
        return pt_id

    def detach_ioas(self) -> None:
        if self.idev is None or not self.iommufd_attached:
            return
        iommufd_device_detach(self.idev, IOMMU_NO_PASID)
        self.iommufd_attached = False

    def pasid_attach_ioas(self, pasid: int, pt_id: int) -> int:
        assert self.idev is not None
        if pasid in self.pasids:
            return iommufd_device_replace(self.idev, pasid, pt_id)
        pt_id = iommufd_device_attach(self.idev, pasid, pt_id)
        self.pasids.add(pasid)
        return pt_id

    def pasid_detach_ioas(self, pasid: int) -> None:
        if self.idev is None or pasid not in self.pasids:
            return
        iommufd_device_detach(self.idev, pasid)
        self.pasids.discard(pasid)

    def unbind(self) -> None:
        for pasid in sorted(self.pasids):
            self.pasid_detach_ioas(pasid)
        self.detach_ioas()
        if self.idev is not None:
            iommufd_device_unbind(self.idev)
            self.idev = None


class VfioDeviceFile(File):
    """``struct vfio_device_file``: one open of the cdev."""

    def __init__(self, device: VfioDevice) -> None:
        self.device = device
        self.name = device.path
        self.tracer = device.tracer
        self.access_granted = False

    def ioctl(self, request: int, arg: UserArg) -> int:
        if request == uapi_vfio.VFIO_DEVICE_BIND_IOMMUFD:
            return self.bind_iommufd(arg)
        if not self.access_granted:
            raise IommuError(errno.EINVAL, f"{self.name} is not bound to an iommufd")
        if request == uapi_vfio.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            return self.attach_pt(arg)
        if request == uapi_vfio.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            return self.detach_pt(arg)
        raise IommuError(errno.ENOTTY, f"vfio-pci has no ioctl {request:#x}")

    def read(self, n: int) -> bytes:
        raise IommuError(errno.EINVAL, f"{self.name}: no readable region")

    def write(self, data: bytes) -> int:
        raise IommuError(errno.EINVAL, f"{self.name}: no writable region")

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool) -> VmRegion:
        raise IommuError(errno.EINVAL, f"{self.name}: no mappable region")

    # -- VFIO_DEVICE_BIND_IOMMUFD -----------------------------------------------------------
    @traced("iommufd", lambda arg: "")
    def bind_iommufd(self, arg: UserArg) -> int:
        from iommufd.main import IommufdFile

        st = uapi_vfio.vfio_device_bind_iommufd
        minsz = uapi.offsetofend(st, "out_devid")
        argsz = arg.get_u32(0)
        if argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {argsz} < {minsz}")
        bind = copy_struct_from_user(st, arg, argsz)
        if bind.iommufd < 0 or bind.flags & ~uapi_vfio.VFIO_DEVICE_BIND_FLAG_TOKEN:
            raise IommuError(errno.EINVAL, "bad iommufd or flags")
        device = self.device
        if self.access_granted:
            raise IommuError(errno.EINVAL, "already bound")
        task = device.core.platform.tasks.require_current()
        if bind.flags & uapi_vfio.VFIO_DEVICE_BIND_FLAG_TOKEN:
            task.uaccess.copy_from_user(bind.token_uuid_ptr, 16)
            # Neither a PF with VFs nor a VF of a vfio-pci PF: a token is wrong here.
            raise IommuError(errno.EINVAL, "VF token provided for a device that needs none")
        f = task.files.get(bind.iommufd)
        if not isinstance(f, IommufdFile):
            raise IommuError(errno.EBADFD, f"fd {bind.iommufd} is not an iommufd")
        if device.open_count:
            raise IommuError(errno.EINVAL, "device already opened through its cdev")
        ictx = f.ictx
        ictx.get()  # iommufd_ctx_from_fd
        try:
            idev = iommufd_device_bind(ictx, device.dev)
        except IommuError:
            ictx.put()
            raise
        device.idev = idev
        device.ictx = ictx
        device.open_count = 1
        try:
            arg.write(uapi.offsetof(st, "out_devid"), idev.id.to_bytes(4, "little"))
        except IommuError:
            self._close_device()
            raise
        self.access_granted = True
        return 0

    def _close_device(self) -> None:
        device = self.device
        device.unbind()
        device.open_count = 0
        if device.ictx is not None:
            ictx, device.ictx = device.ictx, None
            ictx.put()

    # -- VFIO_DEVICE_ATTACH/DETACH_IOMMUFD_PT -----------------------------------------------
    @traced("iommufd", lambda arg: "")
    def attach_pt(self, arg: UserArg) -> int:
        st = uapi_vfio.vfio_device_attach_iommufd_pt
        minsz = uapi.offsetofend(st, "pt_id")
        raw = arg.read(0, minsz)
        attach = uapi.from_bytes(st, raw)
        if attach.argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {attach.argsz} < {minsz}")
        if attach.flags & ~uapi_vfio.VFIO_DEVICE_ATTACH_PASID:
            raise IommuError(errno.EINVAL, f"unknown flags {attach.flags:#x}")
        pasid_op = bool(attach.flags & uapi_vfio.VFIO_DEVICE_ATTACH_PASID)
        if pasid_op:
            xend = uapi.offsetofend(st, "pasid")
            if attach.argsz < xend:
                raise IommuError(errno.EINVAL, f"argsz {attach.argsz} < {xend} for PASID")
            raw += arg.read(minsz, xend - minsz)
            attach = uapi.from_bytes(st, raw)
        device = self.device
        if pasid_op:
            pt_id = device.pasid_attach_ioas(attach.pasid, attach.pt_id)
        else:
            pt_id = device.attach_ioas(attach.pt_id)
        try:
            arg.write(uapi.offsetof(st, "pt_id"), pt_id.to_bytes(4, "little"))
        except IommuError:
            if pasid_op:
                device.pasid_detach_ioas(attach.pasid)
            else:
                device.detach_ioas()
            raise
        return 0

    @traced("iommufd", lambda arg: "")
    def detach_pt(self, arg: UserArg) -> int:
        st = uapi_vfio.vfio_device_detach_iommufd_pt
        minsz = uapi.offsetofend(st, "flags")
        raw = arg.read(0, minsz)
        detach = uapi.from_bytes(st, raw)
        if detach.argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {detach.argsz} < {minsz}")
        if detach.flags & ~uapi_vfio.VFIO_DEVICE_DETACH_PASID:
            raise IommuError(errno.EINVAL, f"unknown flags {detach.flags:#x}")
        if detach.flags & uapi_vfio.VFIO_DEVICE_DETACH_PASID:
            xend = uapi.offsetofend(st, "pasid")
            if detach.argsz < xend:
                raise IommuError(errno.EINVAL, f"argsz {detach.argsz} < {xend} for PASID")
            raw += arg.read(minsz, xend - minsz)
            detach = uapi.from_bytes(st, raw)
            self.device.pasid_detach_ioas(detach.pasid)
        else:
            self.device.detach_ioas()
        return 0

    def release(self) -> None:
        if self.access_granted:
            self.access_granted = False
            self._close_device()


def vfio_register_device(core: IommuCore, dev: Device) -> str:
    """Register ``dev`` with vfio-pci: its cdev ``/dev/vfio/devices/vfioN`` (N from 0)."""
    chrdevs = core.platform.chrdevs
    n = sum(1 for p in chrdevs if p.startswith(VFIO_CDEV_PREFIX))
    path = f"{VFIO_CDEV_PREFIX}{n}"
    device = VfioDevice(core, dev, path)
    chrdevs[path] = lambda t: VfioDeviceFile(device)
    return path


"""VFIO device cdevs ``/dev/vfio/devices/vfioN`` (drivers/vfio/device_cdev.c,
drivers/vfio/iommufd.c and the device file of drivers/vfio/vfio_main.c): BIND_IOMMUFD,
ATTACH_IOMMUFD_PT and DETACH_IOMMUFD_PT of a vfio-pci device, the iommufd side of VFIO;
then the device fd itself: its ioctls (FEATURE and GET_REGION_INFO here, the others in the
driver, :mod:`iommufd.vfio_pci_core`), read/write at the file position, pread/pwrite, mmap.
Binding claims DMA ownership of the device (through ``iommufd_device_bind``) and opens
the device (vfio-pci enables it); closing the fd closes the device (reset, restore), then
detaches the PASIDs, then the RID, and unbinds.
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
from iommufd.vfio_pci_core import VfioPciCoreDevice

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
        assert dev.pci is not None, f"{dev.name} is not a PCI function"
        #: The driver (``device->ops``): vfio-pci.
        self.ops = VfioPciCoreDevice(dev.pci, core.platform.tasks)
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
        device.core.platform.kzalloc("struct vfio_device_file")
        self.device = device
        self.name = device.path
        self.tracer = device.tracer
        self.access_granted = False
        #: ``file->f_pos``: where read(2)/write(2) go (offset 0 is BAR0's region).
        self.f_pos = 0

    # -- vfio_device_fops_unl_ioctl ---------------------------------------------------------
    def ioctl(self, request: int, arg: UserArg) -> int:
        if request == uapi_vfio.VFIO_DEVICE_BIND_IOMMUFD:
            return self.bind_iommufd(arg)
        self._check_access()
        self.device.ops.runtime_resume()  # vfio_device_pm_runtime_get
        if request == uapi_vfio.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            return self.attach_pt(arg)
        if request == uapi_vfio.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            return self.detach_pt(arg)
        if request == uapi_vfio.VFIO_DEVICE_FEATURE:
            return self.device_feature(arg)
        if request == uapi_vfio.VFIO_DEVICE_GET_REGION_INFO:
            return self.get_region_info(arg)
        return self.device.ops.ioctl(request, arg)

    def _check_access(self) -> None:
        """Everything but BIND waits for ``access_granted`` (EINVAL before)."""
        if not self.access_granted:
            raise IommuError(errno.EINVAL, f"{self.name} is not bound to an iommufd")

    @traced("vfio", lambda arg: "")
    def device_feature(self, arg: UserArg) -> int:
        """``vfio_ioctl_device_feature``: flag rules, then the core's migration and DMA
        logging features (vfio-pci has neither), then the driver's."""
        st = uapi_vfio.vfio_device_feature
        minsz = uapi.offsetofend(st, "flags")
        feature = uapi.from_bytes(st, arg.read(0, minsz))
        if feature.argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {feature.argsz} < {minsz}")
        flags = feature.flags
        get, set_, probe = (uapi_vfio.VFIO_DEVICE_FEATURE_GET, uapi_vfio.VFIO_DEVICE_FEATURE_SET,
                            uapi_vfio.VFIO_DEVICE_FEATURE_PROBE)
        if flags & ~(uapi_vfio.VFIO_DEVICE_FEATURE_MASK | get | set_ | probe):
            raise IommuError(errno.EINVAL, f"unknown flags {flags:#x}")
        if not flags & probe and flags & set_ and flags & get:
            raise IommuError(errno.EINVAL, "GET and SET together need PROBE")
        argsz = feature.argsz - minsz
        which = flags & uapi_vfio.VFIO_DEVICE_FEATURE_MASK
        if which in (uapi_vfio.VFIO_DEVICE_FEATURE_MIGRATION,
                     uapi_vfio.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                     uapi_vfio.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
                     uapi_vfio.VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                     uapi_vfio.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
                     uapi_vfio.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT):
            raise IommuError(errno.ENOTTY, f"{self.name}: no migration or DMA logging")
        if which == uapi_vfio.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2:
            # checked before the flags: migration_flags has no PRE_COPY
            raise IommuError(errno.EINVAL, f"{self.name}: no pre-copy migration")
        return self.device.ops.device_feature(flags, arg, minsz, argsz)

    @traced("vfio", lambda arg: "")
    def get_region_info(self, arg: UserArg) -> int:
        """``vfio_get_region_info``: the driver fills the region; no capability chain
        (the simulated functions have no MSI-X and no device-specific regions)."""
        st = uapi_vfio.vfio_region_info
        minsz = uapi.offsetofend(st, "offset")
        info = uapi.from_bytes(st, arg.read(0, minsz))
        if info.argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {info.argsz} < {minsz}")
        self.device.ops.get_region_info_caps(info)
        arg.write(0, uapi.struct_bytes(info)[:minsz])
        return 0

    # -- read/write/mmap (vfio_device_fops_*) -------------------------------------------------
    def read(self, n: int) -> bytes:
        got = self.pread(n, self.f_pos)
        self.f_pos += len(got)
        return got

    def write(self, data: bytes) -> int:
        done = self.pwrite(data, self.f_pos)
        self.f_pos += done
        return done

    def pread(self, n: int, offset: int) -> bytes:
        self._check_access()
        got = self.device.ops.rw(offset, n, None)
        assert isinstance(got, bytes)
        return got

    def pwrite(self, data: bytes, offset: int) -> int:
        self._check_access()
        return int(self.device.ops.rw(offset, len(data), data))

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool) -> VmRegion:
        self._check_access()
        return self.device.ops.mmap(length, offset, shared)

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
        try:
            device.ops.open_device()  # vfio_df_device_first_open: the driver's open
        except IommuError:
            iommufd_device_unbind(idev)
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
        """``vfio_df_device_last_close``: the driver closes the device, then iommufd
        lets it go."""
        device = self.device
        device.ops.close_device()
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


"""A small VMM scenario for the prototype, used by ``python -m examples.prototype_test_dev``
and the docs: two VT-d units, one without dirty tracking; a dirty-tracking HWPT tested
against a device on each unit, then attached where it fits; map_pages traced."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from examples.prototype_test_dev import install
from examples.prototype_test_dev.plugins import MapPagesLogger
from examples.prototype_test_dev.uapi import IOMMU_HWPT_TEST_DEV, iommu_hwpt_test_dev
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

DEV_A = "0000:10:00.0"  # behind dmar0 (dirty tracking)
DEV_B = "0000:30:00.0"  # behind dmar1 (no dirty tracking)
IOVA = 0x100_0000

CONFIG: dict[str, Any] = {
    "iommus": [{"name": "dmar0", "driver": "intel_vtd"},
               {"name": "dmar1", "driver": "intel_vtd", "dirty_tracking": False}],
    "devices": [{"name": DEV_A, "iommu": "dmar0"}, {"name": DEV_B, "iommu": "dmar1"}],
}


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


class Vmm:
    """iommufd + two bound VFIO devices + one IOAS, through the ioctl ABI only."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.fd = m.open("/dev/iommu")
        self.vfd: dict[str, int] = {}
        self.dev_id: dict[str, int] = {}
        for name in (DEV_A, DEV_B):
            vfd = m.open(m.vfio_cdev(name))
            bind = v.vfio_device_bind_iommufd(argsz=sz(v.vfio_device_bind_iommufd),
                                              iommufd=self.fd)
            m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
            self.vfd[name], self.dev_id[name] = vfd, int(bind.out_devid)
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)

    def hwpt_alloc(self, dev: str, flags: int = 0) -> int:
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id[dev], pt_id=self.ioas)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def test_dev(self, dev: str, hwpt: int) -> int:
        """IOMMU_HWPT_TEST_DEV: the errno an attach would give (0: it would work)."""
        t = iommu_hwpt_test_dev(size=sz(iommu_hwpt_test_dev), dev_id=self.dev_id[dev],
                                pt_id=hwpt)
        self.m.ioctl(self.fd, IOMMU_HWPT_TEST_DEV, t)
        return int(t.out_errno)

    def attach(self, dev: str, pt_id: int) -> None:
        at = v.vfio_device_attach_iommufd_pt(argsz=sz(v.vfio_device_attach_iommufd_pt),
                                             pt_id=pt_id)
        self.m.ioctl(self.vfd[dev], v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def map(self, va: int, length: int, iova: int) -> None:
        mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)


def main() -> None:
    m = Machine.from_config(CONFIG)
    proto = install(m)
    logger = MapPagesLogger(m.tracer)
    m.plugins.register(logger, driver="intel_vtd")
    vmm = Vmm(m)
    hwpt = vmm.hwpt_alloc(DEV_A, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    for dev in (DEV_A, DEV_B):
        err = vmm.test_dev(dev, hwpt)
        print(f"IOMMU_HWPT_TEST_DEV {dev} -> hwpt {hwpt}: "
              f"{'compatible' if not err else errno.errorcode[err]}")
    vmm.attach(DEV_A, hwpt)
    buf = m.mmap(8192)
    with m.trace() as tracer:
        vmm.map(buf, 8192, IOVA)
    print(tracer.render())
    proto.remove()
    m.shutdown()


if __name__ == "__main__":
    main()

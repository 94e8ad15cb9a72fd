"""IOMMU_IOAS_NOIOMMU_GET_PA (new in Linux 7.3: ``iommufd_ioas_noiommu_get_pa`` in
``ioas.c``, ``iopt_get_phys`` in ``io_pagetable.c``): the physical address behind an IOVA,
for a noiommu device doing unsafe DMA.

The simulated kernel is a distro x86_64 build: ``CONFIG_VFIO_NOIOMMU`` and
``CONFIG_VFIO_DEVICE_CDEV`` select ``CONFIG_IOMMUFD_NOIOMMU``, so the ioctl is compiled in
(not the EOPNOTSUPP stub). But ``vfio.enable_unsafe_noiommu_mode`` is off and every
simulated device sits behind an IOMMU, so no area is ever stored in a noiommu software
domain: once an IOVA is found mapped the answer is EOPNOTSUPP, as that kernel gives.
"""

from __future__ import annotations

import errno

from iommu_core.errors import IommuError
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.io_pagetable import IoPagetable
from iommufd.ioas import iommufd_get_ioas
from iommufd.private import ULONG_MAX, Ucmd


def iopt_get_phys(iopt: IoPagetable, iova: int, length: int) -> tuple[int, int]:
    """(physical address of ``iova``, contiguous bytes up to ``length``)."""
    if not length:
        raise IommuError(errno.EINVAL, "length must not be 0")
    area = iopt.area_first(iova, iova)
    if area is None or area.pages is None:
        raise IommuError(errno.ENOENT, f"IOVA {iova:#x} is not mapped")
    # The kernel walks iommu_iova_to_phys() of the area's storage domain only when that is
    # a noiommu (software) domain; none exists here (see the module docstring).
    raise IommuError(errno.EOPNOTSUPP, f"IOVA {iova:#x} is not stored in a noiommu domain")


@traced("iommufd")
def iommufd_ioas_noiommu_get_pa(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_noiommu_get_pa = ucmd.cmd
    # capable(CAP_SYS_RAWIO): the Machine's process is root (DESIGN.md); a task that drops
    # the capability (a future Task credential) gets EPERM.
    if not getattr(ucmd.ictx.current, "cap_sys_rawio", True):
        raise IommuError(errno.EPERM, "IOAS_NOIOMMU_GET_PA needs CAP_SYS_RAWIO")
    if cmd.flags or uapi.field_int(cmd, "__reserved"):
        raise IommuError(errno.EOPNOTSUPP, "flags and __reserved must be 0")
    if not cmd.length:
        raise IommuError(errno.EINVAL, "length must not be 0")
    if cmd.iova >= ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, f"iova {cmd.iova:#x} is ULONG_MAX")
    ioas = iommufd_get_ioas(ucmd.ictx, cmd.ioas_id)
    cmd.out_phys, cmd.length = iopt_get_phys(ioas.iopt, cmd.iova, cmd.length)
    ucmd.respond()
    return 0

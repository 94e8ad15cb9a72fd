"""The VFIO side of ``/dev/iommu`` (drivers/iommu/iommufd/vfio_compat.c).

:func:`iommufd_vfio_ioas` is IOMMU_VFIO_IOAS (GET/SET/CLEAR the compat IOAS).
:func:`iommufd_vfio_ioctl` is where every request with ``_IOC_NR < 0x80`` lands (the
legacy VFIO container ioctls: GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU, the type1
MAP/UNMAP/GET_INFO); they belong to the VFIO-container issue and answer ENOTTY here
until it lands, as an unknown request does in the kernel (-ENOIOCTLCMD).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.ioas import IommufdIoas, iommufd_get_ioas
from iommufd.private import IommufdCtx, Ucmd

if TYPE_CHECKING:
    from iommu_core.platform.uaccess import UserArg


def get_compat_ioas(ictx: IommufdCtx) -> IommufdIoas:
    if ictx.vfio_ioas is None:
        raise IommuError(errno.ENODEV, "no compat IOAS set")
    return ictx.vfio_ioas


@traced("iommufd")
def iommufd_vfio_ioas(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_vfio_ioas = ucmd.cmd
    if int(getattr(cmd, "__reserved")):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    ictx = ucmd.ictx
    if cmd.op == uapi.IOMMU_VFIO_IOAS_GET:
        cmd.ioas_id = get_compat_ioas(ictx).id
        ucmd.respond()
        return 0
    if cmd.op == uapi.IOMMU_VFIO_IOAS_SET:
        ictx.vfio_ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
        return 0
    if cmd.op == uapi.IOMMU_VFIO_IOAS_CLEAR:
        ictx.vfio_ioas = None
        return 0
    raise IommuError(errno.EOPNOTSUPP, f"unknown op {cmd.op}")


def iommufd_vfio_ioctl(ictx: IommufdCtx, request: int, arg: UserArg | int) -> int:
    """The VFIO type1 container ioctls on an iommufd (``nr < 0x80``): not provided by
    this module yet, so every one is -ENOIOCTLCMD, which the VFS reports as ENOTTY."""
    raise IommuError(errno.ENOTTY, f"ioctl {request:#x} is not an iommufd command (VFIO "
                     "container compatibility is not available)")

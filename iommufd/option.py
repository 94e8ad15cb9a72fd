"""IOMMU_OPTION (drivers/iommu/iommufd/main.c ``iommufd_option``): the global RLIMIT_MODE
option and the per-IOAS HUGE_PAGES option. Only ``val64`` is written back."""

from __future__ import annotations

import errno

from iommu_core.errors import IommuError
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.ioas import iommufd_ioas_option
from iommufd.private import ACCOUNT_MM, ACCOUNT_USER, IommufdCtx, Ucmd


def iommufd_option_rlimit_mode(cmd: uapi.iommu_option, ictx: IommufdCtx) -> None:
    """0: per-user accounting (io_uring style), 1: per-mm (VFIO compatible). Only root
    may change it, and only while the context holds no object at all."""
    if cmd.object_id:
        raise IommuError(errno.EOPNOTSUPP, "RLIMIT_MODE is global: object_id must be 0")
    if cmd.op == uapi.IOMMU_OPTION_OP_GET:
        cmd.val64 = 1 if ictx.account_mode == ACCOUNT_MM else 0
        return
    if cmd.op == uapi.IOMMU_OPTION_OP_SET:
        if not ictx.current.cap_sys_resource:
            raise IommuError(errno.EPERM, "RLIMIT_MODE needs CAP_SYS_RESOURCE")
        if not ictx.is_empty():
            raise IommuError(errno.EBUSY, "the context already holds objects")
        if cmd.val64 == 0:
            ictx.account_mode = ACCOUNT_USER
        elif cmd.val64 == 1:
            ictx.account_mode = ACCOUNT_MM
        else:
            raise IommuError(errno.EINVAL, f"RLIMIT_MODE value {cmd.val64} is not 0 or 1")
        return
    raise IommuError(errno.EOPNOTSUPP, f"unknown option op {cmd.op}")


@traced("iommufd")
def iommufd_option(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_option = ucmd.cmd
    if getattr(cmd, "__reserved"):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    if cmd.option_id == uapi.IOMMU_OPTION_RLIMIT_MODE:
        iommufd_option_rlimit_mode(cmd, ucmd.ictx)
    elif cmd.option_id == uapi.IOMMU_OPTION_HUGE_PAGES:
        iommufd_ioas_option(ucmd)
    else:
        raise IommuError(errno.EOPNOTSUPP, f"unknown option {cmd.option_id}")
    ucmd.respond_field("val64")
    return 0

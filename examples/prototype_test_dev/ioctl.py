"""The iommufd half: the ``IOMMU_HWPT_TEST_DEV`` handler (it would live in
hw_pagetable.c), registered at run time with ``iommufd_register_ioctl``."""

from __future__ import annotations

import errno

from examples.prototype_test_dev.core import has_test_dev, iommu_test_dev
from examples.prototype_test_dev.uapi import iommu_hwpt_test_dev
from iommu_core.errors import IommuError
from iommu_core.trace import traced
from iommufd.device import iommufd_get_device
from iommufd.hw_pagetable import IommufdHwPagetable
from iommufd.private import Ucmd


@traced("iommufd")
def iommufd_hwpt_test_dev(ucmd: Ucmd) -> int:
    cmd: iommu_hwpt_test_dev = ucmd.cmd
    if cmd.flags or getattr(cmd, "__reserved"):
        raise IommuError(errno.EOPNOTSUPP, "IOMMU_HWPT_TEST_DEV: flags or reserved set")
    ictx = ucmd.ictx
    idev = iommufd_get_device(ictx, cmd.dev_id)
    hwpt = ictx.get_object(cmd.pt_id, IommufdHwPagetable)
    if hwpt.domain is None:
        raise IommuError(errno.ENOENT, f"HWPT {cmd.pt_id} has no domain")
    if not has_test_dev(idev.dev):
        raise IommuError(errno.EOPNOTSUPP, f"{idev.dev.iommu.ops.name} cannot test an "
                         "attach (no test_dev)")
    try:
        iommu_test_dev(ictx.core, hwpt.domain, idev.dev)
        cmd.out_errno = 0
    except IommuError as e:
        cmd.out_errno = e.errno  # the answer, not a failure of the ioctl
    ucmd.respond()
    return 0

"""The prototype's uAPI: ``IOMMU_HWPT_TEST_DEV``.

PROTOTYPE, NOT UPSTREAM: no Linux kernel has this command. It takes the free command
number 0x9F (just below IOMMU_TEST_CMD at 0xA0, far from where upstream allocates next);
a real proposal would take the next free number in include/uapi/linux/iommufd.h.

.. code-block:: c

    /**
     * struct iommu_hwpt_test_dev - ioctl(IOMMU_HWPT_TEST_DEV)
     * @size: sizeof(struct iommu_hwpt_test_dev)
     * @flags: must be 0
     * @dev_id: the device to test
     * @pt_id: an IOMMU_HWPT_ALLOC'ed HWPT (paging or nested)
     * @out_errno: 0 if attaching @dev_id to @pt_id would succeed, else the errno
     *             the attach would fail with
     * @__reserved: must be 0
     *
     * Ask the device's IOMMU driver whether an attach would work, without attaching.
     * Fails with EOPNOTSUPP if the driver cannot answer.
     */
"""

from __future__ import annotations

import ctypes
from typing import Final

from iommufd.uapi import _IO, IOMMUFD_TYPE, IoctlDesc, UapiStruct, ioctl_op

IOMMUFD_CMD_HWPT_TEST_DEV: Final = 0x9F

_u32 = ctypes.c_uint32


class iommu_hwpt_test_dev(UapiStruct):
    size: int
    flags: int
    dev_id: int
    pt_id: int
    out_errno: int
    _fields_ = [("size", _u32), ("flags", _u32), ("dev_id", _u32), ("pt_id", _u32),
                ("out_errno", _u32), ("__reserved", _u32)]


IOMMU_HWPT_TEST_DEV: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_TEST_DEV)

#: Its row for the dispatcher: requests shorter than ``out_errno``'s end are EINVAL.
IOMMU_HWPT_TEST_DEV_IOCTL: Final[IoctlDesc] = ioctl_op(
    "IOMMU_HWPT_TEST_DEV", IOMMUFD_CMD_HWPT_TEST_DEV, iommu_hwpt_test_dev, "out_errno")

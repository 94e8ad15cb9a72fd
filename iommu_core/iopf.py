"""I/O page faults (drivers/iommu/io-pgfault.c): page requests, groups, responses.

A driver's PRI/stall handler reports each page request with
``IommuCore.iommu_report_device_fault``. Requests that are not the last of their group
are parked per device; the LAST_PAGE request completes the group, which goes to the
attached domain's ``iopf_handler``. Whoever handles it answers once with
``IommuCore.iopf_group_response``, which reaches the driver's ``page_response`` op.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from iommu_core.group import AttachHandle
    from iommu_core.platform.bus import Device

# struct iommu_fault_page_request flags
IOMMU_FAULT_PAGE_REQUEST_PASID_VALID = 1 << 0
IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE = 1 << 1
IOMMU_FAULT_PAGE_REQUEST_PRIV_DATA = 1 << 2
IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID = 1 << 3

# perm
IOMMU_FAULT_PERM_READ = 1 << 0
IOMMU_FAULT_PERM_WRITE = 1 << 1
IOMMU_FAULT_PERM_EXEC = 1 << 2
IOMMU_FAULT_PERM_PRIV = 1 << 3

IOMMU_FAULT_PAGE_REQ = 1


class PageResponseCode(enum.IntEnum):
    """``enum iommu_page_response_code``."""

    SUCCESS = 0
    INVALID = 1
    FAILURE = 2


@attrs.frozen
class PageRequest:
    """``struct iommu_fault_page_request``."""

    flags: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    private_data: tuple[int, int] = (0, 0)

    @property
    def last(self) -> bool:
        return bool(self.flags & IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE)

    @property
    def pasid_valid(self) -> bool:
        return bool(self.flags & IOMMU_FAULT_PAGE_REQUEST_PASID_VALID)


@attrs.frozen
class PageResponse:
    """``struct iommu_page_response``."""

    pasid: int
    grpid: int
    code: PageResponseCode


@attrs.define(eq=False)
class IopfGroup:
    """``struct iopf_group``: the partial requests of one group plus its last request."""

    dev: Device
    last: PageRequest
    faults: list[PageRequest]
    attach_handle: AttachHandle | None = None
    #: Owner's cookie (iommufd puts the response cookie here).
    cookie: Any = None
    responded: bool = False


@attrs.define(eq=False)
class FaultParam:
    """``struct iommu_fault_param``: per-device IOPF state."""

    partial: list[PageRequest] = attrs.field(factory=list)
    #: Groups handed to handlers and not yet answered.
    pending: list[IopfGroup] = attrs.field(factory=list)
    #: IOPF enable refcount (domains with a fault handler attached).
    users: int = 0

# mypy: disable-error-code="empty-body"
"""Selftest-only ops (CONFIG_IOMMUFD_TEST): what IOMMU_TEST_CMD asks the mock driver.

In Linux the mock driver and the test ioctl share drivers/iommu/iommufd/selftest.c; here
the mock is a driver plugin, so the test ioctl reaches its private state through these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iommu_core.hookspec import hookspec

if TYPE_CHECKING:
    from iommu_core.domain import IommuDomain
    from iommu_core.iommufd_driver import IommufdViommu
    from iommu_core.platform.bus import Device


@hookspec(firstresult=True)
def mock_domain_read_iotlb(domain: IommuDomain, iotlb_id: int) -> int:
    """The value of slot ``iotlb_id`` of a mock nested domain's IOTLB (MD_CHECK_IOTLB)."""


@hookspec(firstresult=True)
def mock_dev_read_cache(dev: Device, cache_id: int) -> int:
    """The value of slot ``cache_id`` of a mock device's cache (DEV_CHECK_CACHE)."""


@hookspec(firstresult=True)
def mock_domain_set_dirty(domain: IommuDomain, iova: int) -> bool:
    """Mark the PTE that maps ``iova`` dirty, as a device write would (DIRTY op).
    Return False if nothing maps ``iova``."""


@hookspec(firstresult=True)
def mock_domain_dirty_enabled(domain: IommuDomain) -> bool:
    """Whether dirty tracking is on for this mock paging domain."""


@hookspec(firstresult=True)
def mock_viommu_hw_queue_check(viommu: IommufdViommu) -> int:
    """Number of HW queues of a mock vIOMMU (diagnostics)."""


@hookspec(firstresult=True)
def mock_dev_trigger_vevent(dev: Device) -> bool:
    """Report one vEVENT ``{virt_id}`` of type IOMMU_VEVENTQ_TYPE_SELFTEST for ``dev`` to the
    vIOMMU whose nested domain it is attached to (TRIGGER_VEVENT), through
    ``viommu.report_event``. Return False when the device is not attached to a nested
    domain of a vIOMMU with a vDEVICE there."""

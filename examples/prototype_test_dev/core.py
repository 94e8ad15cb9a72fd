"""The core half of the prototype: ``iommu_test_dev`` (it would live in iommu.c).

The core checks what ``__iommu_group_set_domain_internal`` checks before calling any
driver (same driver, firmware 1:1 requirement), then asks the prototype op of every
device of the group. Nothing is attached.
"""

from __future__ import annotations

import errno

from iommu_core.domain import IOMMU_DOMAIN_BLOCKED, IommuDomain
from iommu_core.errors import IommuError
from iommu_core.iommu import IommuCore
from iommu_core.platform.bus import Device
from iommu_core.trace import traced

OP = "test_dev"


def has_test_dev(dev: Device) -> bool:
    return dev.iommu is not None and dev.iommu.ops.implements(OP)


@traced("core", lambda domain, dev: f"{domain.name} {dev.name}")
def iommu_test_dev(core: IommuCore, domain: IommuDomain, dev: Device) -> None:
    """Raise the errno attaching ``dev``'s group to ``domain`` would fail with; return if
    it would succeed. EOPNOTSUPP if a driver of the group has no ``test_dev``."""
    if dev.iommu is None or dev.iommu_group is None:
        raise IommuError(errno.ENODEV, f"{dev.name} is not behind a probed IOMMU")
    group = dev.iommu_group
    for d in group.devices:
        if not core.domain_iommu_ops_compatible(d, domain):
            raise IommuError(errno.EINVAL, f"{domain!r} belongs to another IOMMU driver")
        if d.iommu.require_direct and (domain.type == IOMMU_DOMAIN_BLOCKED
                                       or domain is group.blocking_domain):
            raise IommuError(errno.EINVAL, f"{d.name}: firmware requires a 1:1 mapping")
    for d in group.devices:
        d.iommu.ops.call(OP, domain=domain, dev=d)

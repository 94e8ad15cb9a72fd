"""``test_dev`` for two drivers, as plugins registered beside them.

Each answers with the same checks its ``attach_dev`` makes before it writes anything,
reusing the driver's own check functions (no driver file is edited).
"""

from __future__ import annotations

import errno

from drivers.intel_vtd.iommu import DmarDomain, dev_info, paging_domain_compatible
from drivers.mock.plugin import MockNestedDomain, MockPagingDomain, _mdev
from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.hookspec import hookimpl
from iommu_core.platform.bus import Device


class MockTestDev:
    """The selftest mock: a dirty-tracking domain needs a device that can track dirty
    pages; a nested domain of a vIOMMU needs the device's vDEVICE in that vIOMMU."""

    @hookimpl
    def test_dev(self, domain: IommuDomain, dev: Device) -> bool:
        mdev = _mdev(dev)
        if isinstance(domain, MockPagingDomain) and domain.dirty_ops and mdev.no_dirty:
            raise IommuError(errno.EINVAL, f"{dev.name} cannot take a dirty-tracking domain")
        if isinstance(domain, MockNestedDomain) and domain.viommu is not None and (
                domain.viommu.get_vdev_id(dev) is None):
            raise IommuError(errno.ENOENT, f"{dev.name} has no vDEVICE in the vIOMMU")
        return True


class IntelTestDev:
    """VT-d: ``paging_domain_compatible`` on the paging domain (or a nested domain's
    parent), exactly what ``intel_iommu_attach_device`` checks first."""

    @hookimpl
    def test_dev(self, domain: IommuDomain, dev: Device) -> bool:
        ops = dev.iommu.ops
        if domain is ops.identity_domain or domain is ops.blocked_domain:
            return True
        info = dev_info(dev)
        if not isinstance(domain, DmarDomain):
            raise IommuError(errno.EINVAL, f"{domain!r} is not a VT-d domain")
        if domain.kind == "nested":
            if not info.iommu.sm_supported:
                raise IommuError(errno.EOPNOTSUPP, f"{info.iommu.name}: nesting needs "
                                 "scalable mode")
            assert domain.s2_domain is not None
            paging_domain_compatible(domain.s2_domain, info)
        else:
            paging_domain_compatible(domain, info)
        return True


#: driver name -> its test_dev plugin.
TEST_DEV_PLUGINS: dict[str, type] = {"mock": MockTestDev, "intel_vtd": IntelTestDev}

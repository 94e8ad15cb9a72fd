# mypy: disable-error-code="empty-body"
"""The prototype op as a hook spec: ``iommu_domain_ops.test_dev``.

Added to a Machine's plugin host at run time (``PluginHost.add_hookspecs``); no file of
the core or of any driver changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iommu_core.hookspec import hookspec

if TYPE_CHECKING:
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device


@hookspec(firstresult=True)
def test_dev(domain: IommuDomain, dev: Device) -> bool:
    """Would ``attach_dev(domain, dev)`` succeed? Check, change nothing.

    Return True if it would; raise IommuError with the errno attach_dev would return
    (EINVAL: incompatible, ENOENT, ENOSPC...) if not. Must not touch the hardware, the
    device table or any cache: it is a question, not an attach.
    """

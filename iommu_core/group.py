"""``struct iommu_group``: the isolation unit; attach is group-wide."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device

IOMMU_NO_PASID = 0
IOMMU_FIRST_GLOBAL_PASID = 1
IOMMU_PASID_INVALID = -1


@attrs.define(eq=False)
class AttachHandle:
    """``struct iommu_attach_handle``: what a PASID (or the RID) is attached with."""

    domain: IommuDomain
    #: Owner data (iommufd stores its attach record / HWPT here).
    owner: Any = None


@attrs.define(eq=False)
class IommuGroup:
    id: int
    devices: list[Device] = attrs.field(factory=list)
    default_domain: IommuDomain | None = None
    #: The domain currently attached (RID).
    domain: IommuDomain | None = None
    blocking_domain: IommuDomain | None = None
    #: DMA API users (kernel drivers) and the user-space owner cookie.
    owner_cnt: int = 0
    owner: object = None
    #: pasid -> handle; index 0 holds the RID handle when attached with one.
    pasid_array: dict[int, AttachHandle] = attrs.field(factory=dict)
    name: str = ""

    def __repr__(self) -> str:
        return f"<IommuGroup {self.id} {[d.name for d in self.devices]}>"

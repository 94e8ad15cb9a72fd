"""``struct iommu_domain``: types, geometry, and the base class drivers extend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from iommu_core.plugin import DomainOps, IommuOps

# Domain feature bits and types (include/linux/iommu.h).
_IOMMU_DOMAIN_PAGING = 1 << 0
_IOMMU_DOMAIN_DMA_API = 1 << 1
_IOMMU_DOMAIN_PT = 1 << 2
_IOMMU_DOMAIN_DMA_FQ = 1 << 3
_IOMMU_DOMAIN_SVA = 1 << 4
_IOMMU_DOMAIN_PLATFORM = 1 << 5
_IOMMU_DOMAIN_NESTED = 1 << 6

IOMMU_DOMAIN_BLOCKED = 0
IOMMU_DOMAIN_IDENTITY = _IOMMU_DOMAIN_PT
IOMMU_DOMAIN_UNMANAGED = _IOMMU_DOMAIN_PAGING
IOMMU_DOMAIN_DMA = _IOMMU_DOMAIN_PAGING | _IOMMU_DOMAIN_DMA_API
IOMMU_DOMAIN_DMA_FQ = _IOMMU_DOMAIN_PAGING | _IOMMU_DOMAIN_DMA_API | _IOMMU_DOMAIN_DMA_FQ
IOMMU_DOMAIN_SVA = _IOMMU_DOMAIN_SVA
IOMMU_DOMAIN_PLATFORM = _IOMMU_DOMAIN_PLATFORM
IOMMU_DOMAIN_NESTED = _IOMMU_DOMAIN_NESTED

DOMAIN_TYPE_NAMES = {
    IOMMU_DOMAIN_BLOCKED: "BLOCKED",
    IOMMU_DOMAIN_IDENTITY: "IDENTITY",
    IOMMU_DOMAIN_UNMANAGED: "UNMANAGED",
    IOMMU_DOMAIN_DMA: "DMA",
    IOMMU_DOMAIN_DMA_FQ: "DMA_FQ",
    IOMMU_DOMAIN_SVA: "SVA",
    IOMMU_DOMAIN_PLATFORM: "PLATFORM",
    IOMMU_DOMAIN_NESTED: "NESTED",
}

# iommufd allocation flags as the core passes them to domain_alloc_paging_flags.
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3

# Who owns the domain's cookie (enum iommu_domain_cookie_type).
IOMMU_COOKIE_NONE = 0
IOMMU_COOKIE_DMA_IOVA = 1
IOMMU_COOKIE_DMA_MSI = 2
IOMMU_COOKIE_FAULT_HANDLER = 3
IOMMU_COOKIE_SVA = 4
IOMMU_COOKIE_IOMMUFD = 5


@attrs.define
class Geometry:
    """``struct iommu_domain_geometry``: the IOVA range the domain can translate."""

    aperture_start: int = 0
    aperture_end: int = 2**64 - 1
    force_aperture: bool = False


class IommuDomain:
    """A translation context. Drivers subclass it (as C embeds it: container_of).

    ``ops`` lists the domain ops this domain provides (the driver's ``iommu_domain_ops``
    struct for this kind of domain); ``dirty_ops`` is true when it has
    ``iommu_dirty_ops``. ``owner`` is the driver whose allocator made it.
    """

    def __init__(
        self,
        type: int,
        ops: DomainOps,
        *,
        pgsize_bitmap: int = 0,
        geometry: Geometry | None = None,
        dirty_ops: bool = False,
        name: str = "",
    ) -> None:
        self.type = type
        self.ops = ops
        self.owner: IommuOps = ops.iommu_ops
        self.pgsize_bitmap = pgsize_bitmap
        self.geometry = geometry or Geometry()
        self.dirty_ops = dirty_ops
        self.cookie_type = IOMMU_COOKIE_NONE
        #: The iommufd HWPT or other owner's cookie object.
        self.cookie: Any = None
        #: ``iopf_handler``: called with an IopfGroup when a page-request group completes.
        self.iopf_handler: Any = None
        #: Optional label for traces and graphs (e.g. "hwpt 3").
        self.label = name
        self.freed = False

    @property
    def is_paging(self) -> bool:
        return bool(self.type & _IOMMU_DOMAIN_PAGING)

    @property
    def is_nested(self) -> bool:
        return self.type == IOMMU_DOMAIN_NESTED

    @property
    def name(self) -> str:
        return self.label or self.type_name

    @property
    def type_name(self) -> str:
        return DOMAIN_TYPE_NAMES.get(self.type, hex(self.type))

    def __repr__(self) -> str:
        label = f" {self.label}" if self.label else ""
        return f"<{type(self).__name__} {self.type_name}{label} of {self.owner.name}>"

"""The typed facade around the teaching hooks of one driver (as
:class:`iommu_core.plugin.IommuOps` is around ``struct iommu_ops``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from iommu_core.describe.hw_info import HwInfoDesc
from iommu_core.describe.structure import Structure
from iommu_core.describe.teach import BenchDesc, GuestBuilder, ScenarioRef, VendorDesc
from iommu_core.describe.view import DeviceView, DomainView

if TYPE_CHECKING:
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import IommuHardware
    from iommu_core.platform.memory import PhysicalMemory
    from iommu_core.plugin import IommuOps

__all__ = ["DescribeOps"]


def _flat(parts: Any, kind: type) -> list[Any]:
    out: list[Any] = []
    for part in parts or ():
        for x in part or ():
            if not isinstance(x, kind):
                raise TypeError(f"expected {kind.__name__}, got {x!r}")
            out.append(x)
    return out


class DescribeOps:
    """What one driver says about its hardware. Every call works on a driver that
    implements none of the hooks (empty answers, the driver name as vendor name)."""

    def __init__(self, ops: IommuOps) -> None:
        self.ops = ops
        self.hook = ops.hook

    @property
    def driver(self) -> str:
        return self.ops.name

    def vendor(self) -> VendorDesc:
        if self.ops.implements("describe_vendor"):
            v = self.hook.describe_vendor()
            if isinstance(v, VendorDesc):
                return v
        return VendorDesc(name=self.ops.name, title=self.ops.name)

    def names(self) -> tuple[str, ...]:
        """Every spelling that selects this driver (lower case)."""
        v = self.vendor()
        out = [v.name.lower(), *(a.lower() for a in v.aliases), self.ops.name.lower()]
        return tuple(dict.fromkeys(out))

    def structures(self) -> list[Structure]:
        return _flat(self.hook.describe_structures(), Structure)

    def structure(self, name: str) -> Structure | None:
        for s in self.structures():
            if s.layout.name == name:
                return s
        return None

    def hw_info_descs(self) -> list[HwInfoDesc]:
        return _flat(self.hook.describe_hw_info(), HwInfoDesc)

    def hw_info(self, data_type: int) -> HwInfoDesc | None:
        """The description of hw_info data type ``data_type`` (None: not described)."""
        for d in self.hw_info_descs():
            if d.data_type == data_type:
                return d
        return None

    def device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
               pasid: int | None = None, iova: int | None = None) -> DeviceView:
        if not self.ops.implements("describe_device"):
            return DeviceView()
        view = self.hook.describe_device(unit=unit, mem=mem, dev=dev, pasid=pasid, iova=iova)
        return view if isinstance(view, DeviceView) else DeviceView()

    def domain(self, domain: IommuDomain) -> DomainView | None:
        if not self.ops.implements("describe_domain"):
            return None
        view = self.hook.describe_domain(domain=domain)
        return view if isinstance(view, DomainView) else None

    def guest_builders(self) -> list[GuestBuilder]:
        return _flat(self.hook.describe_guest_builders(), GuestBuilder)

    def guest_builder(self, name: str) -> GuestBuilder | None:
        for b in self.guest_builders():
            if b.name == name:
                return b
        return None

    def constants(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.hook.describe_constants():
            if not isinstance(part, Mapping):
                raise TypeError(f"describe_constants returned {part!r}")
            for k, v in part.items():
                out.setdefault(k, v)
        return out

    def scenarios(self) -> list[ScenarioRef]:
        return _flat(self.hook.describe_scenarios(), ScenarioRef)

    def tour(self) -> ScenarioRef | None:
        """The scenario that is this driver's tour (None: the driver has none)."""
        return next((s for s in self.scenarios() if s.tour), None)

    def bench(self) -> BenchDesc:
        """What the system bench needs from the driver (empty when it says nothing)."""
        if self.ops.implements("describe_bench"):
            b = self.hook.describe_bench()
            if isinstance(b, BenchDesc):
                return b
        return BenchDesc()

    def __repr__(self) -> str:
        return f"<DescribeOps {self.ops.name}>"

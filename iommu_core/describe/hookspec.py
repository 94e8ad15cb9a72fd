# mypy: disable-error-code="empty-body"
"""The teaching contract: what a driver tells the tools (decode, info, the tour, graph,
scenarios) about its hardware, as pluggy hook specs.

The kernel keeps a vendor's knowledge in the vendor's driver; so does iommu-sim. The
tools in :mod:`iommu_sim` know no vendor: they ask each driver through these hooks (via
the typed facade :class:`iommu_core.describe.ops.DescribeOps`), so a third-party
driver is decoded, shown by ``info``, toured and named in scenarios like the built-in
ones. Every hook is optional: a driver that implements none still works, it is only
less teachable.

Everything returned is plain data (:mod:`iommu_core.describe`) or a
:class:`~iommu_core.describe.structure.Structure` whose rules are the driver's. The
describing code may read the hardware model's configuration and run the model's own
checks (it is the vendor's debugger knowledge, not the driver); it never changes the
model, its caches or memory.

List-valued hooks are collected from every plugin of the driver (a prototype plugin can
add a structure); the others are ``firstresult``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from iommu_core.hookspec import hookspec

if TYPE_CHECKING:
    from iommu_core.describe.hw_info import HwInfoDesc
    from iommu_core.describe.structure import Structure
    from iommu_core.describe.teach import BenchDesc, GuestBuilder, ScenarioRef, VendorDesc
    from iommu_core.describe.view import DeviceView, DomainView
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import IommuHardware
    from iommu_core.platform.memory import PhysicalMemory


@hookspec(firstresult=True)
def describe_vendor() -> VendorDesc:
    """The driver's name for people (``"smmu"``, ``"ARM SMMUv3"``) and the spellings
    ``--vendor`` accepts. Without it the driver is known by its driver name."""


@hookspec
def describe_structures() -> list[Structure]:
    """The structures the driver can decode: its entries (STE, PASID entry, DTE...),
    commands, event records and registers (``iommu-sim decode --list``).

    Each has a :class:`~iommu_core.describe.structure.Layout` (name, width, fields with
    their bit ranges, meaning, value names and kernel macro) and a ``decode`` whose
    validity check runs the hardware model's rules against a unit's configuration. Give
    it :attr:`~iommu_core.describe.structure.Structure.golden` instances: the
    conformance kit checks the rules and the model agree on them.
    """


@hookspec
def describe_hw_info() -> list[HwInfoDesc]:
    """A description of each ``IOMMU_GET_HW_INFO`` data type the driver returns: the
    payload's registers field by field and the capabilities derived from them
    (``iommu-sim info``)."""


@hookspec(firstresult=True)
def describe_device(unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                    pasid: int | None, iova: int | None) -> DeviceView:
    """What the driver wrote for ``dev`` (at ``pasid``; None: requests without one), as the
    hardware ``unit`` finds it now: the entries it reads, in the order it reads them,
    each decoded. With ``iova``: also the walk the hardware would do for it, stage by
    stage (stage-2 walks of stage-1 descriptors included), built with
    :func:`iommu_core.describe.view.record_walk`.

    Read like a debugger: the unit's registers (reads without side effects) and ``mem``;
    never a cache, never a write. Tables as they are now, so a stale TLB shows.
    """


@hookspec(firstresult=True)
def describe_domain(domain: IommuDomain) -> DomainView:
    """What ``domain`` (one of this driver's) is to the hardware: its page tables (format,
    root, levels) and cache tags (ASID, VMID, DID, DomainID...)."""


@hookspec
def describe_guest_builders() -> list[GuestBuilder]:
    """Structures a guest's driver writes in guest RAM that a nested scenario can ask for
    (``guest_build = "cd"``), built by the driver's own code."""


@hookspec
def describe_constants() -> Mapping[str, int]:
    """The names a scenario may use in expressions: the driver's register and entry
    macros (``STRTAB_STE_0_V``, ``DTE_FLAG_GV``...), as the kernel spells them."""


@hookspec
def describe_scenarios() -> list[ScenarioRef]:
    """The scenario files the driver ships (``iommu-sim run --list``). The one marked
    ``tour`` is the driver's tour: its ``[chapters]`` are the steps of ``iommu-sim tour``
    for this vendor (see the docs on adding a chapter)."""


@hookspec(firstresult=True)
def describe_bench() -> BenchDesc:
    """What the system bench needs from the driver: unit options for its Machines and
    the driver's own measurements (see :class:`~iommu_core.describe.teach.BenchDesc`).
    Without it the bench measures the driver with its generic measurements only."""

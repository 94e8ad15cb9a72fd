"""Two more kinds of prototype plugin, beside the new op:

* :class:`NoDirtyCapability` overrides one op of one driver (``tryfirst``): registered
  for the mock only, it answers ``capable(DIRTY_TRACKING)`` with False and lets every
  other capability fall through to the driver (returning None continues the chain).
* :class:`MapPagesLogger` wraps an op (``wrapper=True``): every ``map_pages`` of the
  driver it is registered beside is logged, and shows up in ``Machine.trace()`` as a
  ``[driver] map_pages.logged`` event under the ``[driver] map_pages`` span.
"""

from __future__ import annotations

from collections.abc import Generator

import attrs

from iommu_core.device import IommuCap
from iommu_core.domain import IommuDomain
from iommu_core.hookspec import hookimpl
from iommu_core.platform.bus import Device
from iommu_core.prot import prot_str
from iommu_core.trace import Tracer


class NoDirtyCapability:
    """Prototype: "what if this IOMMU had no dirty tracking?" without editing it."""

    @hookimpl(tryfirst=True)
    def capable(self, dev: Device, cap: int) -> bool | None:
        return False if cap == IommuCap.DIRTY_TRACKING else None


@attrs.frozen
class MapRecord:
    domain: str
    iova: int
    paddr: int
    pgsize: int
    pgcount: int
    prot: int
    mapped: int


class MapPagesLogger:
    """A ``wrapper=True`` hook: runs around the driver's map_pages, sees its result."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.log: list[MapRecord] = []

    @hookimpl(wrapper=True)
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> Generator[None, int, int]:
        mapped = yield  # the driver's map_pages runs here (exceptions propagate)
        rec = MapRecord(domain.name, iova, paddr, pgsize, pgcount, prot, mapped)
        self.log.append(rec)
        if self.tracer.enabled:
            self.tracer.event("driver", "map_pages.logged",
                              f"{rec.domain} iova {iova:#x} -> pa {paddr:#x} "
                              f"{pgcount} x {pgsize:#x} {prot_str(prot)} = {mapped:#x}")
        return mapped

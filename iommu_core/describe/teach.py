"""How a driver introduces itself to the teaching tools: its name for people, the guest
structures it can build for nested scenarios, the scenario files it ships (its tour), and
what the system bench needs from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import attrs

from iommu_core.pgtable import IoPageTable

__all__ = ["BenchDesc", "GuestBuilder", "ScenarioRef", "VendorDesc"]


@attrs.frozen
class VendorDesc:
    """A driver's name for people and the spellings ``--vendor`` accepts."""

    #: The short name the tools print and accept (``"smmu"``).
    name: str
    #: The architecture, for headings (``"ARM SMMUv3"``).
    title: str = ""
    #: Other spellings (the driver name is always accepted).
    aliases: tuple[str, ...] = ()
    #: Its units exist for devices created on demand (the selftest mock): topology views
    #: leave out a unit with no device behind it.
    on_demand_units: bool = False


@attrs.frozen
class GuestBuilder:
    """A structure a guest's driver writes in guest RAM for a nested scenario, built by
    the vendor's own code (the guest runs the same driver).

    ``build(table, params)`` returns the bytes for the guest's stage-1 ``table`` (an
    :class:`~iommu_core.pgtable.IoPageTable` in guest memory); ``params`` are the integer
    parameters a scenario gives, among :attr:`params`.
    """

    name: str  # what a scenario names: guest_build = "cd"
    title: str  # what it writes, for narration: "its CD (arm_smmu_make_s1_cd)"
    build: Callable[[IoPageTable, Mapping[str, int]], bytes]
    params: tuple[str, ...] = ()
    doc: str = ""


@attrs.frozen
class ScenarioRef:
    """A scenario file a driver ships. ``tour``: its chapters are the driver's tour
    (``iommu-sim tour``); every shipped scenario runs with ``iommu-sim run NAME``."""

    name: str
    path: Path | Traversable
    tour: bool = False


#: ``make_machine(config)``: a Machine from a config mapping (drivers never import it).
MakeMachine = Callable[[Mapping[str, Any]], Any]


@attrs.frozen
class BenchDesc:
    """What a driver gives the system bench (``python -m iommu_sim.bench``).

    ``options``: the unit's Machine options in every bench Machine (a TLB large enough
    for the 65,536 pages the invalidation bench caches, say). ``run(make_machine,
    quick)``: the driver's own measurements through the Machine ABI (ioctls and DMA),
    for what needs the vendor's structures, such as ``nested_miss_vs_paging_miss`` (a
    guest's stage-1 table and the vendor's nested HWPT data); it returns figures by key,
    ratios measured in one process against a floor measured in the same run. ``keys``:
    the keys ``run`` returns; the bench takes them from the driver instead of measuring
    them itself.
    """

    options: Mapping[str, Any] = attrs.field(factory=dict)
    run: Callable[[MakeMachine, bool], Mapping[str, Any]] | None = None
    keys: tuple[str, ...] = ()

"""How a driver introduces itself to the teaching tools: its name for people, the guest
structures it can build for nested scenarios, and the scenario files it ships (its tour).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path

import attrs

from iommu_core.pgtable import IoPageTable

__all__ = ["GuestBuilder", "ScenarioRef", "VendorDesc"]


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

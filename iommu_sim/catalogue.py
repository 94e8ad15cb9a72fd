"""The drivers the tools know without a Machine (decode, the tour's vendor list,
scenario constants): the built-in ones and every installed driver package.

Each is asked through its teaching hooks (:class:`iommu_core.describe.DescribeOps`);
nothing here knows a vendor. A driver package that fails to load is left out (and named
in :attr:`Catalogue.broken`) so it cannot break the tools for the others. With
``IOMMU_SIM_ONLY_BUILTIN=1`` in the environment only the built-in drivers are known (the
docs' recorded output does not depend on what else is installed).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from importlib.metadata import entry_points

from iommu_core.describe import DescribeOps
from iommu_core.plugin import ENTRY_POINT_GROUP, PluginHost
from iommu_sim.builtin import builtin_drivers

__all__ = ["ONLY_BUILTIN", "Catalogue", "UnknownVendor", "catalogue", "describe_ops"]

#: Environment variable: set (non-empty), the tools know only the built-in drivers.
ONLY_BUILTIN = "IOMMU_SIM_ONLY_BUILTIN"


class UnknownVendor(LookupError):
    """No driver answers to that name."""


class Catalogue:
    """Drivers in a stable order: built-in first (in their registry order), then the
    installed ones by name."""

    def __init__(self, host: PluginHost, broken: dict[str, str] | None = None) -> None:
        self.host = host
        self.broken = dict(broken or {})
        self._ops = [DescribeOps(o) for o in host.drivers.values()]

    def __iter__(self) -> Iterator[DescribeOps]:
        return iter(self._ops)

    def find(self, name: str) -> DescribeOps:
        """The driver ``name`` is a spelling of (its vendor name, an alias, its driver
        name; any case)."""
        key = name.lower()
        for d in self._ops:
            if key in d.names():
                return d
        raise UnknownVendor(name)


def _load() -> Catalogue:
    host = PluginHost()
    broken: dict[str, str] = {}
    for name, plugin in builtin_drivers().items():
        host.register_driver(name, plugin)
    installed = [] if os.environ.get(ONLY_BUILTIN) else entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(installed, key=lambda e: e.name):
        if ep.name in host.drivers:
            continue
        try:
            host.register_driver(ep.name, ep.load())
        except Exception as e:  # a broken package must not break the tools
            broken[ep.name] = f"{type(e).__name__}: {e}"
    return Catalogue(host, broken)


@functools.cache
def catalogue() -> Catalogue:
    """The process-wide catalogue (loaded once)."""
    return _load()


def describe_ops(plugins: PluginHost, driver: str) -> DescribeOps:
    """The teaching facade of ``driver`` in a Machine's plugin host."""
    return DescribeOps(plugins.driver(driver))

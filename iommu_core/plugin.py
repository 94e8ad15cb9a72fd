"""The plugin host: one pluggy plugin manager per IOMMU driver, typed facades around
every hook call.

Why one manager per driver: Linux reaches a driver through ``dev->iommu->iommu_dev->ops``
or ``domain->ops``, never by asking every driver. Giving each driver its own manager
makes a hook call reach exactly that driver (O(1) in the number of installed drivers),
while plugins that wrap or override ops (tracing, fault injection, prototypes) are
registered into every manager, or into one driver's manager only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy
from pluggy import HookImpl, Result

from iommu_core import hookspec as _hookspec
from iommu_core import hookspec_selftest as _hookspec_selftest
from iommu_core.describe import hookspec as _hookspec_describe
from iommu_core.errors import IommuError
from iommu_core.hookspec import PROJECT

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice, ResvRegion
    from iommu_core.domain import IommuDomain
    from iommu_core.gather import IotlbGather
    from iommu_core.group import IommuGroup
    from iommu_core.iommu import IommuCore
    from iommu_core.iommufd_driver import (
        IommufdHwQueue,
        IommufdVdevice,
        IommufdViommu,
        UserData,
        UserDataArray,
    )
    from iommu_core.iopf import PageRequest, PageResponse
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import IommuHardware
    from iommu_core.platform.mm import MmStruct
    from iommu_core.platform.platform import IommuResources, Platform

ENTRY_POINT_GROUP = "iommu_sim.drivers"

IOMMU_OPS = (
    "capable", "hw_info", "domain_alloc_identity", "domain_alloc_paging_flags",
    "domain_alloc_paging", "domain_alloc_sva", "domain_alloc_nested", "probe_device",
    "release_device", "probe_finalize", "device_group", "get_resv_regions",
    "is_attach_deferred", "page_response", "def_domain_type", "get_viommu_size",
    "viommu_init",
)
DOMAIN_OPS = (
    "attach_dev", "set_dev_pasid", "map_pages", "unmap_pages", "flush_iotlb_all",
    "iotlb_sync_map", "iotlb_sync", "cache_invalidate_user", "iova_to_phys",
    "enforce_cache_coherency", "set_pgtable_quirks", "free",
)
DIRTY_OPS = ("set_dirty_tracking", "read_and_clear_dirty")
VIOMMU_OPS = (
    "viommu_destroy", "viommu_alloc_domain_nested", "viommu_cache_invalidate",
    "viommu_vdevice_init", "viommu_vdevice_destroy", "viommu_get_hw_queue_size",
    "viommu_hw_queue_init_phys", "viommu_hw_queue_destroy",
)

BeforeMonitor = Callable[[str, Sequence[HookImpl], Mapping[str, Any]], None]
AfterMonitor = Callable[[Result[Any], str, Sequence[HookImpl], Mapping[str, Any]], None]
Monitor = tuple[BeforeMonitor, AfterMonitor]


def _not_supported(driver: str, op: str) -> IommuError:
    return IommuError(errno.EOPNOTSUPP, f"driver {driver} does not implement {op}")


class IommuOps:
    """``struct iommu_ops`` of one driver: typed calls into its plugin manager.

    Also holds the static members of the C struct (set by the driver in
    ``iommu_driver_init``): ``identity_domain``, ``blocked_domain``, ``release_domain``,
    ``default_domain`` (a forced default type) and ``user_pasid_table``.
    """

    def __init__(self, name: str, pm: pluggy.PluginManager) -> None:
        self.name = name
        self.pm = pm
        self.hook = pm.hook
        self._impl_cache: dict[str, bool] = {}
        self.identity_domain: IommuDomain | None = None
        self.blocked_domain: IommuDomain | None = None
        self.release_domain: IommuDomain | None = None
        #: A forced default domain (``ops->default_domain``), e.g. a blocking one.
        self.default_domain: IommuDomain | None = None
        self.user_pasid_table = False

    # -- introspection -------------------------------------------------------------------
    def implements(self, op: str) -> bool:
        """True if some plugin of this driver implements ``op`` (not only wrappers)."""
        got = self._impl_cache.get(op)
        if got is None:
            caller = getattr(self.hook, op, None)
            got = caller is not None and any(
                not (impl.hookwrapper or impl.wrapper) for impl in caller.get_hookimpls()
            )
            self._impl_cache[op] = got
        return got

    def invalidate_cache(self) -> None:
        self._impl_cache.clear()

    def _call(self, op: str, **kwargs: Any) -> Any:
        if not self.implements(op):
            raise _not_supported(self.name, op)
        return getattr(self.hook, op)(**kwargs)

    def call(self, op: str, **kwargs: Any) -> Any:
        """Call any hook by name (for prototype hook specs added at run time)."""
        return self._call(op, **kwargs)

    def domain_ops(self, provided: Iterable[str]) -> DomainOps:
        """The ops table of one kind of domain of this driver (``iommu_domain_ops``)."""
        return DomainOps(self, frozenset(provided))

    def viommu_ops(self, provided: Iterable[str]) -> ViommuOps:
        return ViommuOps(self, frozenset(provided))

    # -- platform ------------------------------------------------------------------------
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> IommuHardware:
        hw: IommuHardware | None = self._call(
            "iommu_hw_create", name=name, options=options, platform=platform)
        if hw is None:
            raise IommuError(errno.ENODEV, f"driver {self.name} built no hardware for {name}")
        return hw

    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        iommu: IommuDevice | None = self._call("iommu_driver_probe", core=core, res=res)
        if iommu is None:
            raise IommuError(errno.ENODEV, f"driver {self.name} did not probe {res.name}")
        return iommu

    def iommu_driver_remove(self, iommu: IommuDevice) -> None:
        if self.implements("iommu_driver_remove"):
            self.hook.iommu_driver_remove(iommu=iommu)

    def iommufd_uapi_data_types(self) -> list[Any]:
        """Every uAPI data type this driver's plugins declare (flattened)."""
        out: list[Any] = []
        for part in self.hook.iommufd_uapi_data_types():
            out.extend(part or [])
        return out

    # -- iommu_ops -----------------------------------------------------------------------
    def capable(self, dev: Device, cap: int) -> bool:
        if not self.implements("capable"):
            return False
        return bool(self.hook.capable(dev=dev, cap=cap))

    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        res: tuple[bytes, int] = self._call("hw_info", dev=dev, data_type=data_type)
        return res

    def domain_alloc_identity(self, dev: Device) -> IommuDomain:
        return self._expect_domain("domain_alloc_identity",
                                   self._call("domain_alloc_identity", dev=dev))

    def domain_alloc_paging_flags(self, dev: Device, flags: int,
                                  user_data: UserData | None) -> IommuDomain:
        return self._expect_domain("domain_alloc_paging_flags", self._call(
            "domain_alloc_paging_flags", dev=dev, flags=flags, user_data=user_data))

    def domain_alloc_paging(self, dev: Device) -> IommuDomain:
        return self._expect_domain("domain_alloc_paging",
                                   self._call("domain_alloc_paging", dev=dev))

    def domain_alloc_sva(self, dev: Device, mm: MmStruct) -> IommuDomain:
        return self._expect_domain("domain_alloc_sva",
                                   self._call("domain_alloc_sva", dev=dev, mm=mm))

    def domain_alloc_nested(self, dev: Device, parent: IommuDomain, flags: int,
                            user_data: UserData) -> IommuDomain:
        return self._expect_domain("domain_alloc_nested", self._call(
            "domain_alloc_nested", dev=dev, parent=parent, flags=flags, user_data=user_data))

    def probe_device(self, dev: Device) -> IommuDevice:
        iommu: IommuDevice | None = self._call("probe_device", dev=dev)
        if iommu is None:
            raise IommuError(errno.ENODEV, f"{self.name} does not handle {dev.name}")
        return iommu

    def release_device(self, dev: Device) -> None:
        if self.implements("release_device"):
            self.hook.release_device(dev=dev)

    def probe_finalize(self, dev: Device) -> None:
        if self.implements("probe_finalize"):
            self.hook.probe_finalize(dev=dev)

    def device_group(self, dev: Device) -> IommuGroup:
        group: IommuGroup | None = self._call("device_group", dev=dev)
        if group is None:
            raise IommuError(errno.ENODEV, f"{self.name} gave no group for {dev.name}")
        return group

    def get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        if not self.implements("get_resv_regions"):
            return []
        return list(self.hook.get_resv_regions(dev=dev) or [])

    def is_attach_deferred(self, dev: Device) -> bool:
        return self.implements("is_attach_deferred") and bool(
            self.hook.is_attach_deferred(dev=dev))

    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> None:
        self._call("page_response", dev=dev, evt=evt, msg=msg)

    def def_domain_type(self, dev: Device) -> int:
        if not self.implements("def_domain_type"):
            return 0
        return int(self.hook.def_domain_type(dev=dev) or 0)

    def get_viommu_size(self, dev: Device, viommu_type: int) -> int:
        if not self.implements("get_viommu_size"):
            return 0
        return int(self.hook.get_viommu_size(dev=dev, viommu_type=viommu_type) or 0)

    def viommu_init(self, viommu: IommufdViommu, parent_domain: IommuDomain,
                    user_data: UserData | None) -> None:
        self._call("viommu_init", viommu=viommu, parent_domain=parent_domain,
                   user_data=user_data)

    def _expect_domain(self, op: str, dom: IommuDomain | None) -> IommuDomain:
        if dom is None:
            raise IommuError(errno.ENOMEM, f"{self.name}.{op} returned no domain")
        return dom

    def __repr__(self) -> str:
        return f"<IommuOps {self.name}>"


class _OpsTable:
    """An ops struct of one driver for one kind of object: ``provided`` names its
    non-NULL members; calling another fails with EOPNOTSUPP, as a NULL op does."""

    __slots__ = ("hook", "iommu_ops", "provided")
    KNOWN: tuple[str, ...] = ()
    WHAT = "ops"

    def __init__(self, iommu_ops: IommuOps, provided: frozenset[str]) -> None:
        unknown = provided - set(self.KNOWN)
        if unknown:
            raise ValueError(f"unknown {self.WHAT} {sorted(unknown)}")
        self.iommu_ops = iommu_ops
        self.hook = iommu_ops.hook
        self.provided = provided

    def has(self, op: str) -> bool:
        return op in self.provided and self.iommu_ops.implements(op)

    def _call(self, op: str, **kwargs: Any) -> Any:
        if not self.has(op):
            raise _not_supported(self.iommu_ops.name, f"{op} for this {self.WHAT[:-4]}")
        return getattr(self.hook, op)(**kwargs)


class DomainOps(_OpsTable):
    """``struct iommu_domain_ops`` (+ dirty ops) for one kind of domain."""

    __slots__ = ()
    KNOWN = DOMAIN_OPS + DIRTY_OPS
    WHAT = "domain ops"

    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> None:
        self._call("attach_dev", domain=domain, dev=dev, old=old)

    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> None:
        self._call("set_dev_pasid", domain=domain, dev=dev, pasid=pasid, old=old)

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        return int(self._call("map_pages", domain=domain, iova=iova, paddr=paddr,
                              pgsize=pgsize, pgcount=pgcount, prot=prot) or 0)

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        return int(self._call("unmap_pages", domain=domain, iova=iova, pgsize=pgsize,
                              pgcount=pgcount, gather=gather) or 0)

    def flush_iotlb_all(self, domain: IommuDomain) -> None:
        if self.has("flush_iotlb_all"):
            self.hook.flush_iotlb_all(domain=domain)

    def iotlb_sync_map(self, domain: IommuDomain, iova: int, size: int) -> None:
        if self.has("iotlb_sync_map"):
            self.hook.iotlb_sync_map(domain=domain, iova=iova, size=size)

    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> None:
        if self.has("iotlb_sync"):
            self.hook.iotlb_sync(domain=domain, gather=gather)

    def cache_invalidate_user(self, domain: IommuDomain, array: UserDataArray) -> None:
        self._call("cache_invalidate_user", domain=domain, array=array)

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        if not self.has("iova_to_phys"):
            return 0
        return int(self.hook.iova_to_phys(domain=domain, iova=iova) or 0)

    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        return self.has("enforce_cache_coherency") and bool(
            self.hook.enforce_cache_coherency(domain=domain))

    def set_pgtable_quirks(self, domain: IommuDomain, quirks: int) -> None:
        self._call("set_pgtable_quirks", domain=domain, quirks=quirks)

    def free(self, domain: IommuDomain) -> None:
        if self.has("free"):
            self.hook.free(domain=domain)

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None:
        self._call("set_dirty_tracking", domain=domain, enabled=enabled)

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> None:
        self._call("read_and_clear_dirty", domain=domain, iova=iova, size=size,
                   flags=flags, dirty=dirty)

    def __repr__(self) -> str:
        return f"<DomainOps {self.iommu_ops.name} {sorted(self.provided)}>"


class ViommuOps(_OpsTable):
    """``struct iommufd_viommu_ops`` for one kind of vIOMMU."""

    __slots__ = ()
    KNOWN = VIOMMU_OPS
    WHAT = "viommu ops"

    def destroy(self, viommu: IommufdViommu) -> None:
        if self.has("viommu_destroy"):
            self.hook.viommu_destroy(viommu=viommu)

    def alloc_domain_nested(self, viommu: IommufdViommu, flags: int, user_data: UserData
                            ) -> IommuDomain:
        dom: IommuDomain | None = self._call("viommu_alloc_domain_nested", viommu=viommu,
                                             flags=flags, user_data=user_data)
        if dom is None:
            raise IommuError(errno.ENOMEM, "alloc_domain_nested returned no domain")
        return dom

    def cache_invalidate(self, viommu: IommufdViommu, array: UserDataArray) -> None:
        self._call("viommu_cache_invalidate", viommu=viommu, array=array)

    def vdevice_init(self, vdev: IommufdVdevice) -> None:
        if self.has("viommu_vdevice_init"):
            self.hook.viommu_vdevice_init(vdev=vdev)

    def vdevice_destroy(self, vdev: IommufdVdevice) -> None:
        if self.has("viommu_vdevice_destroy"):
            self.hook.viommu_vdevice_destroy(vdev=vdev)

    def get_hw_queue_size(self, viommu: IommufdViommu, queue_type: int) -> int:
        if not self.has("viommu_get_hw_queue_size"):
            return 0
        return int(self.hook.viommu_get_hw_queue_size(viommu=viommu, queue_type=queue_type)
                   or 0)

    def hw_queue_init_phys(self, hw_queue: IommufdHwQueue, index: int, base_addr_pa: int
                           ) -> None:
        self._call("viommu_hw_queue_init_phys", hw_queue=hw_queue, index=index,
                   base_addr_pa=base_addr_pa)

    def hw_queue_destroy(self, hw_queue: IommufdHwQueue) -> None:
        if self.has("viommu_hw_queue_destroy"):
            self.hook.viommu_hw_queue_destroy(hw_queue=hw_queue)


class PluginHost:
    """All drivers and the plugins around them.

    * ``register_driver(name, plugin)``: a driver gets its own plugin manager.
    * ``register(plugin)``: a plugin beside every driver (present and future), e.g. a
      wrapper; ``register(plugin, driver="x")``: beside one driver only (override one op
      of one driver with ``tryfirst``).
    * ``add_hookspecs(module)``: a prototype op, callable with ``ops.call(name, ...)``.
    """

    def __init__(self) -> None:
        self.drivers: dict[str, IommuOps] = {}
        self._global: list[tuple[object, str | None]] = []
        self._extra_specs: list[ModuleType | type] = []
        self._monitors: list[Monitor] = []
        self._undo_monitors: list[Callable[[], None]] = []

    def _new_pm(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(_hookspec)
        pm.add_hookspecs(_hookspec_selftest)
        pm.add_hookspecs(_hookspec_describe)
        for spec in self._extra_specs:
            pm.add_hookspecs(spec)
        return pm

    def register_driver(self, name: str, plugin: object) -> IommuOps:
        if name in self.drivers:
            raise IommuError(errno.EEXIST, f"driver {name!r} is already registered")
        pm = self._new_pm()
        pm.register(plugin, name=f"{name}")
        for p, pname in self._global:
            pm.register(p, name=pname)
        pm.check_pending()
        ops = IommuOps(name, pm)
        self.drivers[name] = ops
        for before, after in self._monitors:
            self._undo_monitors.append(pm.add_hookcall_monitoring(before, after))
        pm.hook.iommu_driver_init(ops=ops)
        return ops

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load third-party (and installed in-tree) drivers; returns the new names."""
        loaded = []
        for ep in entry_points(group=group):
            if ep.name in self.drivers:
                continue
            self.register_driver(ep.name, ep.load())
            loaded.append(ep.name)
        return loaded

    def load_driver(self, name: str, group: str = ENTRY_POINT_GROUP) -> IommuOps:
        """The driver ``name``: already registered, or loaded from its entry point.

        Only the drivers a machine uses are imported, so a broken or half-installed
        third-party package cannot take down machines that do not use it.
        """
        ops = self.drivers.get(name)
        if ops is not None:
            return ops
        for ep in entry_points(group=group, name=name):
            try:
                plugin = ep.load()
            except ImportError as e:
                raise IommuError(errno.ENODEV, f"IOMMU driver {name!r} (entry point "
                                 f"{ep.value}) failed to import: {e}") from None
            return self.register_driver(name, plugin)
        raise IommuError(errno.ENODEV, f"no IOMMU driver named {name!r} (have: "
                         f"{', '.join(sorted(self.drivers)) or 'none'}; installed: "
                         f"{', '.join(sorted(ep.name for ep in entry_points(group=group)))})")

    def register(self, plugin: object, driver: str | None = None, name: str | None = None
                 ) -> None:
        if driver is not None:
            ops = self.driver(driver)
            ops.pm.register(plugin, name=name)
            ops.pm.check_pending()
            ops.invalidate_cache()
            return
        self._global.append((plugin, name))
        for ops in self.drivers.values():
            ops.pm.register(plugin, name=name)
            ops.pm.check_pending()
            ops.invalidate_cache()

    def unregister(self, plugin: object) -> None:
        self._global = [(p, n) for p, n in self._global if p is not plugin]
        for ops in self.drivers.values():
            if ops.pm.is_registered(plugin):
                ops.pm.unregister(plugin)
                ops.invalidate_cache()

    def add_hookspecs(self, module_or_class: ModuleType | type) -> None:
        self._extra_specs.append(module_or_class)
        for ops in self.drivers.values():
            ops.pm.add_hookspecs(module_or_class)
            ops.invalidate_cache()

    def check_pending(self) -> None:
        """Fail on hookimpls that match no hookspec (a typo in an op name)."""
        for ops in self.drivers.values():
            ops.pm.check_pending()

    def driver(self, name: str) -> IommuOps:
        try:
            return self.drivers[name]
        except KeyError:
            raise IommuError(errno.ENODEV, f"no IOMMU driver named {name!r} (have: "
                             f"{', '.join(sorted(self.drivers)) or 'none'})") from None

    # -- monitoring (tracing) ------------------------------------------------------------
    def add_monitor(self, before: BeforeMonitor, after: AfterMonitor) -> None:
        self._monitors.append((before, after))
        for ops in self.drivers.values():
            self._undo_monitors.append(ops.pm.add_hookcall_monitoring(before, after))

    def clear_monitors(self) -> None:
        for undo in reversed(self._undo_monitors):
            undo()
        self._undo_monitors.clear()
        self._monitors.clear()


__all__ = [
    "DIRTY_OPS",
    "DOMAIN_OPS",
    "IOMMU_OPS",
    "VIOMMU_OPS",
    "DomainOps",
    "IommuOps",
    "PluginHost",
    "ViommuOps",
    "_hookspec",
    "_hookspec_describe",
    "_hookspec_selftest",
]

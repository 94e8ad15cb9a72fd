"""A minimal simulated kernel around ONE driver, for the conformance kit.

Built from iommu_core alone (no iommufd, no Machine), so a third-party driver can be
checked against the core contract before anything else exists.
"""

from __future__ import annotations

import errno
import itertools
from importlib.metadata import entry_points
from typing import Any

from iommu_core.device import IommuDevice
from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.iommu import IommuCore
from iommu_core.iommufd_driver import UserData, UserDataArray
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import IommuHardware, device_dma_read, device_dma_write
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.platform.platform import Platform
from iommu_core.platform.uaccess import UserMemory
from iommu_core.platform.vma import SimMm
from iommu_core.plugin import ENTRY_POINT_GROUP, IommuOps, PluginHost
from iommu_core.testing import hookspec as kit_hookspec
from iommu_core.testing.nesting import GuestRam, KitVdevice, KitViommu
from iommu_core.testing.queues import KitHwQueue


def installed_drivers() -> dict[str, Any]:
    """Driver name -> entry point, for every driver installed in this environment."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_driver_plugin(name: str) -> object:
    ep = installed_drivers().get(name)
    if ep is None:
        raise LookupError(f"no installed IOMMU driver {name!r} (entry point group "
                          f"{ENTRY_POINT_GROUP}); installed: {sorted(installed_drivers())}")
    return ep.load()


class DriverEnv:
    """Platform + plugin host + core + one IOMMU unit of ``driver`` + a user process."""

    UNIT = "unit0"

    def __init__(self, driver: str, plugin: object | None = None,
                 options: dict[str, Any] | None = None,
                 extra_plugins: list[object] | tuple[object, ...] = (),
                 suite: str | None = None) -> None:
        self.driver = driver
        self.platform = Platform()
        self.host = PluginHost()
        self.ops: IommuOps = self.host.register_driver(
            driver, plugin if plugin is not None else load_driver_plugin(driver))
        # The kit's hooks first, so plugins answering them register cleanly.
        self.host.add_hookspecs(kit_hookspec)
        for p in extra_plugins:
            self.host.register(p, driver=driver)
        self.core = IommuCore(self.platform, self.host)
        if (options is None and suite is not None
                and self.ops.implements("conformance_unit_options")):
            # The unit a suite needs (a feature the hardware has only when configured).
            options = self.ops.call("conformance_unit_options", suite=suite)
        self.hw: IommuHardware = self.ops.iommu_hw_create(self.UNIT, dict(options or {}),
                                                          self.platform)
        res = self.platform.add_iommu(self.hw)
        self.iommu: IommuDevice = self.ops.iommu_driver_probe(self.core, res)
        self.mm = SimMm(self.platform.mem, self.platform.alloc)
        self.owner = object()
        #: Domains, vIOMMUs and HW queues, in creation order (torn down in reverse:
        #: children first).
        self._objects: list[IommuDomain | KitViommu | KitHwQueue] = []
        self._vdevs: list[KitVdevice] = []
        self._pins: list[list[tuple[int, int]]] = []
        self._next_dev = 1
        self._scratch: tuple[int, int] | None = None
        #: Optional features the driver claimed (set by the kit when it asks).
        self.features: dict[str, bool] | None = None

    @property
    def kernel_pages(self) -> int:
        return self.platform.alloc.in_use("kernel")

    def add_device(self, name: str | None = None, **options: Any) -> Device:
        if name is None:
            name = f"0000:00:{self._next_dev:02x}.0"
            self._next_dev += 1
        dev = make_pci_device(name, self.UNIT, **options)
        self.core.add_device(dev)
        return dev

    def claim(self, dev: Device) -> None:
        """User ownership, as VFIO bind does: the group goes to its blocking domain."""
        self.core.iommu_device_claim_dma_owner(dev, self.owner)

    def paging_domain(self, dev: Device, flags: int = 0) -> IommuDomain:
        dom = self.core.iommu_paging_domain_alloc_flags(dev, flags)
        self._objects.append(dom)
        return dom

    # -- iommufd's part, played by the kit -----------------------------------------------
    def user_buffer(self, data: bytes) -> int:
        """Copy ``data`` into a scratch area of user memory; its user address. Each call
        reuses the area (iommufd copies user data in during the call)."""
        need = max(PAGE_SIZE, (len(data) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if self._scratch is None or self._scratch[1] < need:
            if self._scratch is not None:
                self.mm.munmap(*self._scratch)
            self._scratch = (self.mm.mmap(need), need)
        va = self._scratch[0]
        self.mm.write(va, data)
        return va

    def user_data(self, data_type: int, data: bytes) -> UserData:
        """``struct iommu_user_data`` over ``data`` in user memory."""
        return UserData(UserMemory(self.mm), data_type, self.user_buffer(data), len(data))

    def user_data_array(self, data_type: int, entry_len: int, entries: bytes,
                        entry_num: int) -> UserDataArray:
        return UserDataArray(UserMemory(self.mm), data_type, self.user_buffer(entries),
                             entry_len, entry_num)

    def nested_domain(self, dev: Device, parent: IommuDomain, data_type: int, data: bytes,
                      flags: int = 0) -> IommuDomain:
        """``domain_alloc_nested`` as IOMMU_HWPT_ALLOC on a nest parent calls it."""
        dom = self.ops.domain_alloc_nested(dev, parent, flags, self.user_data(data_type, data))
        self._objects.append(dom)
        return dom

    def viommu_alloc(self, dev: Device, parent: IommuDomain, viommu_type: int,
                     data: bytes | None = None) -> KitViommu:
        """IOMMU_VIOMMU_ALLOC: ``get_viommu_size`` then ``viommu_init`` (EOPNOTSUPP if
        the driver does not build this type or sets no ops)."""
        ops = dev.iommu.ops
        if not ops.get_viommu_size(dev, viommu_type):
            raise IommuError(errno.EOPNOTSUPP, f"{ops.name}: vIOMMU type {viommu_type:#x} "
                             "unsupported")
        viommu = KitViommu(dev.iommu.iommu_dev, viommu_type, parent)
        user = self.user_data(viommu_type, data) if data else None
        ops.viommu_init(viommu, parent, user)
        viommu.inited = True
        self._objects.append(viommu)
        if viommu.ops is None:
            raise IommuError(errno.EOPNOTSUPP, f"{ops.name}: viommu_init set no ops")
        return viommu

    def vdevice_alloc(self, viommu: KitViommu, dev: Device, virt_id: int) -> KitVdevice:
        """IOMMU_VDEVICE_ALLOC: reserve the virt_id (it reads as unknown), run the
        driver's ``vdevice_init``, then publish the vDEVICE."""
        if virt_id in viommu.vdevs:
            raise IommuError(errno.EEXIST, f"virt_id {virt_id:#x} is already used")
        vdev = KitVdevice(viommu, dev, virt_id)
        viommu.vdevs[virt_id] = None
        try:
            if viommu.ops is not None and viommu.ops.has("viommu_vdevice_init"):
                viommu.ops.vdevice_init(vdev)
                vdev.inited = True
        except IommuError:
            del viommu.vdevs[virt_id]
            raise
        viommu.vdevs[virt_id] = vdev
        self._vdevs.append(vdev)
        return vdev

    def vdevice_destroy(self, vdev: KitVdevice) -> None:
        viommu = vdev.viommu
        assert isinstance(viommu, KitViommu)
        if vdev.inited and viommu.ops is not None:
            viommu.ops.vdevice_destroy(vdev)
            vdev.inited = False
        if viommu.vdevs.get(vdev.virt_id) is vdev:
            del viommu.vdevs[vdev.virt_id]
        if vdev in self._vdevs:
            self._vdevs.remove(vdev)

    def viommu_nested_domain(self, viommu: KitViommu, data_type: int, data: bytes,
                             flags: int = 0) -> IommuDomain:
        """IOMMU_HWPT_ALLOC on a vIOMMU: the vIOMMU's ``alloc_domain_nested``."""
        if viommu.ops is None:
            raise IommuError(errno.EOPNOTSUPP, "vIOMMU has no ops")
        dom = viommu.ops.alloc_domain_nested(viommu, flags, self.user_data(data_type, data))
        self._objects.append(dom)
        return dom

    def hw_queue_alloc(self, viommu: KitViommu, queue_type: int, index: int,
                       guest: GuestRam, gpa: int, length: int) -> KitHwQueue:
        """IOMMU_HW_QUEUE_ALLOC of ``length`` bytes at ``gpa`` of ``guest``: the type must
        be the vIOMMU's (EOPNOTSUPP), the pages behind the range physically contiguous
        (EFAULT), then the driver's ``hw_queue_init_phys``. A failure keeps nothing."""
        vops = viommu.ops
        if vops is None or not vops.get_hw_queue_size(viommu, queue_type):
            raise IommuError(errno.EOPNOTSUPP, f"HW queue type {queue_type:#x} unsupported")
        if not length:
            raise IommuError(errno.EINVAL, "zero length")
        first = gpa & ~(PAGE_SIZE - 1)
        spa = [guest.spa(p) for p in range(first, gpa + length, PAGE_SIZE)]
        if any(b != a + PAGE_SIZE for a, b in itertools.pairwise(spa)):
            raise IommuError(errno.EFAULT, "queue pages are not contiguous")
        hwq = KitHwQueue(viommu, queue_type, index, gpa, length)
        vops.hw_queue_init_phys(hwq, index, spa[0] + (gpa - first))
        hwq.inited = True
        self._objects.append(hwq)
        return hwq

    def hw_queue_destroy(self, hwq: KitHwQueue) -> None:
        """Destroy a HW queue; EBUSY while another queue depends on it (as iommufd's
        object users refuse it)."""
        if hwq.users:
            raise IommuError(errno.EBUSY, f"HW queue {hwq.index} has {hwq.users} dependents")
        if hwq in self._objects:
            self._objects.remove(hwq)
        viommu = hwq.viommu
        if hwq.inited and viommu.ops is not None:
            viommu.ops.hw_queue_destroy(hwq)
            hwq.inited = False

    def free(self, obj: IommuDomain | KitViommu | KitHwQueue) -> None:
        """Free a domain or destroy a vIOMMU or HW queue now (instead of at teardown)."""
        if isinstance(obj, KitHwQueue):
            self.hw_queue_destroy(obj)
            return
        if obj in self._objects:
            self._objects.remove(obj)
        if isinstance(obj, KitViommu):
            for vdev in [v for v in self._vdevs if v.viommu is obj]:
                self.vdevice_destroy(vdev)
            if obj.inited and obj.ops is not None:
                obj.ops.destroy(obj)
                obj.inited = False
        else:
            self.core.iommu_domain_free(obj)

    def user_pages(self, npages: int) -> tuple[int, list[int]]:
        """Pinned user memory: (user VA, physical frame numbers)."""
        va = self.mm.mmap(npages << PAGE_SHIFT)
        runs = self.mm.pin_user_pages(va, npages, True)
        self._pins.append(runs)
        return va, [pfn + i for pfn, n in runs for i in range(n)]

    def dma_read(self, dev: Device, iova: int, n: int, pasid: int | None = None) -> bytes:
        return device_dma_read(self.hw, self.platform.mem, dev, iova, n, pasid)

    def dma_write(self, dev: Device, iova: int, data: bytes, pasid: int | None = None
                  ) -> None:
        device_dma_write(self.hw, self.platform.mem, dev, iova, data, pasid)

    def teardown(self) -> None:
        """Detach and disown every device, destroy vDEVICEs, release the devices, free
        domains and vIOMMUs (children first), remove the driver, unpin user pages."""
        devices = list(self.platform.devices.values())
        for dev in devices:
            group = dev.iommu_group
            if dev.iommu is None or group is None or group.owner is None:
                continue
            for pasid, h in list(group.pasid_array.items()):
                if pasid:
                    self.core.iommu_detach_device_pasid(h.domain, dev, pasid)
            if group.domain is not None and group.domain not in (
                    group.blocking_domain, group.default_domain):
                self.core.iommu_detach_group(group.domain, group)
            while group.owner_cnt:
                self.core.iommu_device_release_dma_owner(dev)
        for vdev in list(self._vdevs):
            self.vdevice_destroy(vdev)
        for dev in devices:
            self.core.remove_device(dev)
        # Reverse creation order: nested domains before their vIOMMU and parent.
        for obj in reversed(list(self._objects)):
            self.free(obj)
        self.core.shutdown()
        for runs in self._pins:
            self.mm.unpin_user_pages(runs)
        self._pins.clear()
        self.mm.exit_mmap()


def expect_errno(err: int, fn: Any, *args: Any, **kwargs: Any) -> IommuError:
    try:
        fn(*args, **kwargs)
    except IommuError as e:
        if e.errno != err:
            raise AssertionError(f"expected {errno.errorcode[err]}, got {e}") from e
        return e
    raise AssertionError(f"expected {errno.errorcode[err]}, the call succeeded")

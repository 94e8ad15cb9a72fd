"""What the kit needs to check nesting and vIOMMUs generically.

Nested translation is vendor data all the way down: the user's stage-1 description (an
STE, a VT-d PASID-entry subset, an AMD guest DTE), the guest page-table format, the
invalidation entries. The kit cannot invent them, so a driver that wants its nesting and
vIOMMU suites run answers the kit hook ``conformance_nested_setup`` (see
:mod:`iommu_core.testing.hookspec`) with a :class:`NestedSetup`, built in the
:class:`GuestRam` the kit hands it.

The kit also stands in for iommufd's side of a vIOMMU (:class:`KitViommu`): the vDEVICE
table, vEVENT reporting and the mmap registry, so drivers can be checked with
``iommu_core`` alone.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import IommufdVdevice, IommufdViommu
from iommu_core.pgtable import IoPageTable
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import Mmio
    from iommu_core.testing.env import DriverEnv

#: Guest RAM starts here in guest-physical space (inside every driver's aperture, the
#: selftest mock's included: it starts at 16 MiB).
GPA_BASE = 0x100_0000
#: A guest IOVA inside every stage-1 format's input range (lower half, 30-bit aligned).
GIOVA = 0x4000_0000


class GuestRam:
    """Guest-physical memory of a VM: ``npages`` user pages mapped into the nest parent
    at ``gpa_base`` (GPA = parent IOVA), as a VMM maps guest RAM into its stage 2.

    The first ``data_pages`` pages are the kit's (DMA targets); the rest is handed out
    page by page through :meth:`alloc_page` / the ``TableMemory`` protocol, so the glue
    can build guest page tables with the shared page-table core::

        pt = IoPageTable(formats.x86_64(4), guest)      # a guest stage 1 in guest RAM
    """

    def __init__(self, env: DriverEnv, parent: IommuDomain, npages: int = 32,
                 data_pages: int = 4, gpa_base: int = GPA_BASE) -> None:
        if data_pages >= npages:
            raise ValueError("guest RAM needs room for tables")
        self.env = env
        self.parent = parent
        self.gpa_base = gpa_base
        self.npages = npages
        self.data_pages = data_pages
        self.va, self.pfns = env.user_pages(npages)
        rw = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE
        for i, pfn in enumerate(self.pfns):  # user frames need not be contiguous
            env.core.iommu_map(parent, gpa_base + (i << PAGE_SHIFT), pfn << PAGE_SHIFT,
                               PAGE_SIZE, rw)
        self._next = data_pages

    @property
    def size(self) -> int:
        return self.npages << PAGE_SHIFT

    def data_gpa(self, index: int) -> int:
        """GPA of the kit's data page ``index``."""
        if not 0 <= index < self.data_pages:
            raise IndexError(f"data page {index} of {self.data_pages}")
        return self.gpa_base + (index << PAGE_SHIFT)

    def _off(self, gpa: int, n: int) -> int:
        off = gpa - self.gpa_base
        if off < 0 or off + n > self.size:
            raise IommuError(errno.EFAULT, f"GPA {gpa:#x}+{n} outside guest RAM")
        return off

    def spa(self, gpa: int) -> int:
        """The system physical address behind ``gpa``."""
        off = self._off(gpa, 1)
        return (self.pfns[off >> PAGE_SHIFT] << PAGE_SHIFT) | (off & (PAGE_SIZE - 1))

    def read(self, gpa: int, n: int) -> bytes:
        return self.env.mm.read(self.va + self._off(gpa, n), n)

    def write(self, gpa: int, data: bytes) -> None:
        self.env.mm.write(self.va + self._off(gpa, len(data)), data)

    def alloc_page(self) -> int:
        """A zeroed guest page (for tables, context descriptors, queues)."""
        if self._next >= self.npages:
            raise IommuError(errno.ENOMEM, "guest RAM exhausted")
        gpa = self.gpa_base + (self._next << PAGE_SHIFT)
        self._next += 1
        self.write(gpa, bytes(PAGE_SIZE))
        return gpa

    # -- TableMemory protocol (addresses are GPAs) ---------------------------------------
    def alloc_table(self, size: int) -> int:
        if size > PAGE_SIZE:
            raise IommuError(errno.EINVAL, "guest tables are at most one page here")
        return self.alloc_page()

    def free_table(self, addr: int, size: int) -> None:
        """Guest pages go back with the guest; nothing to do."""

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, (value & (2**64 - 1)).to_bytes(8, "little"))


@attrs.frozen
class UserInvalidation:
    """A user invalidation request in the driver's format (an ``iommu_user_data_array``).

    ``via_viommu``: send it with the vIOMMU's ``cache_invalidate`` (an SMMU command
    queue, an AMD command); otherwise with the nested domain's ``cache_invalidate_user``.
    """

    data_type: int
    entry_len: int
    entries: bytes
    entry_num: int
    via_viommu: bool = False


@attrs.frozen
class NestedSetup:
    """The driver's answer to ``conformance_nested_setup``.

    * ``hwpt_data_type`` / ``hwpt_data``: the user data of a nested allocation
      (``domain_alloc_nested`` or the vIOMMU's ``alloc_domain_nested``) that makes the
      nested domain use ``stage1``.
    * ``stage1``: the guest's stage-1 table, built in the :class:`GuestRam` with the
      shared page-table core; the kit maps ``giova`` ranges in it. ``None`` says this
      driver's stage 1 does not translate (the selftest mock): then a guest IOVA is its
      GPA.
    * ``invalidate(iova, size)``: the user invalidation that makes a stage-1 change
      visible; ``None`` skips the stage-1 invalidation check.
    * ``viommu_type`` (0: none), ``viommu_data`` (the vIOMMU allocation's user data) and
      ``virt_id`` (the device's virtual ID): what the vIOMMU suite needs.
    """

    hwpt_data_type: int
    hwpt_data: bytes
    stage1: IoPageTable | None = None
    giova: int = GIOVA
    invalidate: Callable[[int, int], UserInvalidation] | None = None
    viommu_type: int = 0
    viommu_data: bytes | None = None
    virt_id: int = 0x10


@attrs.frozen
class MmapRegion:
    """What a vIOMMU exposes through mmap of the iommufd: RAM at ``pa``, or with
    ``mmio`` the registers of that window from offset ``pa``."""

    pa: int
    length: int
    mmio: Mmio | None = None


class KitViommu(IommufdViommu):
    """iommufd's half of a vIOMMU, played by the kit: the vDEVICE table (``find_dev``,
    ``get_vdev_id``), reported vEVENTs (kept in ``events``) and the mmap registry."""

    def __init__(self, iommu_dev: IommuDevice, type: int, parent: IommuDomain) -> None:
        super().__init__(iommu_dev, type, parent)
        #: virt_id -> vDEVICE; None while ``vdevice_init`` runs (a reserved slot).
        self.vdevs: dict[int, KitVdevice | None] = {}
        self.events: list[tuple[int, bytes]] = []
        #: mmap offset -> region (``iommufd_viommu_alloc_mmap``).
        self.mmaps: dict[int, MmapRegion] = {}
        self.inited = False

    def find_dev(self, vdev_id: int) -> Device | None:
        vdev = self.vdevs.get(vdev_id)
        return vdev.dev if vdev is not None else None

    def get_vdev_id(self, dev: Device) -> int | None:
        return next((k for k, v in self.vdevs.items() if v is not None and v.dev is dev),
                    None)

    def report_event(self, type: int, data: bytes) -> None:
        if not data:
            raise IommuError(errno.EINVAL, "empty vEVENT")
        self.events.append((type, bytes(data)))

    def alloc_mmap(self, base_pa: int, length: int, *, mmio: Mmio | None = None) -> int:
        if base_pa & (PAGE_SIZE - 1) or length & (PAGE_SIZE - 1) or not length:
            raise IommuError(errno.EINVAL, "mmap region not page aligned")
        # Past every live region (offset 0 stays unused, as in iommufd).
        offset = max((off + r.length for off, r in self.mmaps.items()), default=PAGE_SIZE)
        self.mmaps[offset] = MmapRegion(base_pa, length, mmio)
        return offset

    def destroy_mmap(self, offset: int) -> None:
        self.mmaps.pop(offset, None)


class KitVdevice(IommufdVdevice):
    """A vDEVICE: ``dev`` as the guest names it (``virt_id``) in one :class:`KitViommu`."""

    def __init__(self, viommu: KitViommu, dev: Device, virt_id: int) -> None:
        super().__init__(viommu, dev, virt_id)
        self.inited = False

__all__ = [
    "GIOVA",
    "GPA_BASE",
    "GuestRam",
    "KitVdevice",
    "KitViommu",
    "MmapRegion",
    "NestedSetup",
    "UserInvalidation",
]

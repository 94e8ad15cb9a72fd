"""What the kit needs to check HW queues generically (``IOMMU_HW_QUEUE_ALLOC``: a guest
queue the IOMMU hardware reads by itself, with no VMM trap per command).

The allocation rules are the same for every driver and need only numbers
(:class:`HwQueueSetup`). What a guest writes into its queue and how it rings the
hardware is vendor data all the way down (an SMMU command and a VCMDQ's PROD, an AMD
command and a guest tail pointer), so a driver whose hardware consumes its HW queues
hands the kit a :class:`GuestQueueDriver`: the few things a guest kernel does with the
queue, written against :class:`GuestHwQueue` (the queue's memory in guest RAM and the
page of registers the vIOMMU lets user space map). The kit then checks the rules any
such queue must obey (suite "hw_queue", :mod:`iommu_core.testing.hw_queue`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Protocol

import attrs

from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import IommufdHwQueue

if TYPE_CHECKING:
    from iommu_core.testing.env import DriverEnv
    from iommu_core.testing.nesting import GuestRam, KitViommu, MmapRegion


class KitHwQueue(IommufdHwQueue):
    """iommufd's half of a HW queue, played by the kit: dependencies between queues (a
    depended-on queue has users and cannot be destroyed first)."""

    def __init__(self, viommu: KitViommu, type: int, index: int, base_addr: int,
                 length: int) -> None:
        super().__init__(viommu, type, index, base_addr, length)
        self.users = 0
        self.inited = False

    def depend(self, depended: IommufdHwQueue) -> None:
        if depended is self or not isinstance(depended, KitHwQueue):
            raise IommuError(errno.EINVAL, "bad HW queue dependency")
        depended.users += 1

    def undepend(self, depended: IommufdHwQueue) -> None:
        if isinstance(depended, KitHwQueue):
            depended.users -= 1


class GuestHwQueue:
    """A HW queue as its guest sees it: ``length`` bytes at ``gpa`` of guest RAM, queue
    ``index`` of a vIOMMU, and the vIOMMU's mapped page (``read32`` / ``write32`` at
    offsets into it), which is what a VMM hands its guest."""

    def __init__(self, env: DriverEnv, guest: GuestRam, hwq: KitHwQueue, gpa: int,
                 region: MmapRegion | None) -> None:
        self.env = env
        self.guest = guest
        self.hwq = hwq
        self.gpa = gpa
        self.region = region
        #: The guest driver's own state (its PROD copy...), free for the glue to use.
        self.state: dict[str, int] = {}

    @property
    def index(self) -> int:
        return self.hwq.index

    @property
    def length(self) -> int:
        return self.hwq.length

    def _region(self, off: int) -> MmapRegion:
        r = self.region
        if r is None:
            raise IommuError(errno.ENXIO, "this vIOMMU exposes no page to map")
        if not 0 <= off <= r.length - 4:
            raise IommuError(errno.EFAULT, f"offset {off:#x} outside the mapped page")
        return r

    def read32(self, off: int) -> int:
        r = self._region(off)
        if r.mmio is not None:
            return r.mmio.read32(r.pa + off)
        return int.from_bytes(self.env.platform.mem.read(r.pa + off, 4), "little")

    def write32(self, off: int, value: int) -> None:
        r = self._region(off)
        if r.mmio is not None:
            r.mmio.write32(r.pa + off, value)
        else:
            self.env.platform.mem.write(r.pa + off, value.to_bytes(4, "little"))


class GuestQueueDriver(Protocol):
    """A guest kernel's use of its HW queue (the glue implements it per vendor)."""

    def enable(self, q: GuestHwQueue) -> None:
        """Whatever the guest does before its first command (enable the queue)."""

    def invalidate(self, q: GuestHwQueue, iova: int, size: int) -> None:
        """Write the guest's stage-1 invalidation of [iova, iova+size) and its completion
        wait into the queue, and ring the hardware through the mapped page."""

    def submit_illegal(self, q: GuestHwQueue, iova: int, size: int) -> None:
        """Write and ring a command this guest may not issue on this queue, one that would
        invalidate [iova, iova+size) (and more) if the hardware executed it."""

    def error(self, q: GuestHwQueue) -> bool:
        """Does the guest see its queue stopped on an error (the registers it reads)?"""

    def recover(self, q: GuestHwQueue) -> None:
        """What the guest's error handler does: skip the bad command, acknowledge, and
        let the queue run again."""


@attrs.frozen
class HwQueueSetup:
    """The driver's answer to ``conformance_hw_queue_setup``.

    * ``viommu_type`` / ``viommu_data``: the vIOMMU that has HW queues;
    * ``queue_type``: its HW queue type; ``length``: a length it accepts (at most a page,
      so guest RAM page by page is contiguous); ``max_queues``: the indices a vIOMMU has
      (0 .. max_queues - 1);
    * ``bad_lengths``: lengths the driver must refuse (EINVAL), each at most a page (the
      kit's guest RAM is contiguous page by page only); ``aligned``: the base must be
      aligned to the length (EINVAL otherwise);
    * ``virt_id``: the device's virtual ID in the vIOMMU;
    * ``guest``: the guest's side of the queue; None for a driver whose hardware does not
      read its queues (the selftest mock): the suite then checks allocation rules only.
    """

    viommu_type: int
    queue_type: int
    length: int
    max_queues: int = 1
    viommu_data: bytes | None = None
    bad_lengths: tuple[int, ...] = ()
    aligned: bool = False
    virt_id: int = 0x10
    guest: GuestQueueDriver | None = None


__all__ = ["GuestHwQueue", "GuestQueueDriver", "HwQueueSetup", "KitHwQueue"]

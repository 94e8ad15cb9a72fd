"""The AMD HW-vIOMMU (PROTOTYPE, not upstream): a guest's own command buffer consumed by
the unit, in the shape Linux 7.3 gives the Tegra241 CMDQV (tegra241-cmdqv.c).

* Probe: a unit whose firmware describes the two vIOMMU windows (resources ``vf`` and
  ``vfctl``, present with the Machine option ``"hw_viommu": true``) gets CONTROL.VIOMMU_EN;
  VIOMMU_INFO says how many GuestIDs it has.
* ``IOMMU_VIOMMU_ALLOC(IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE)``: an AMD vIOMMU (the nested
  domains, the gDomID -> hDomID map, the trapped invalidation all stay) plus a GuestID,
  zeroed Domain ID and Device ID maps, the guest's stage 2 (the nest parent's v1 table)
  in its VF Control page, GUEST_EN, and the guest's VF page registered for mmap on the
  iommufd (``out_vfmmio_mmap_offset/length``, as Tegra's VINTF page).
* Nested HWPT alloc: a new gDomID's hDomID goes into the Domain ID map; its last user's
  free takes it out before the hDomID is flushed and freed.
* vDEVICE: gDeviceID (virt_id) -> the device's DeviceID in the Device ID map.
* ``IOMMU_HW_QUEUE_ALLOC``: the guest's command buffer or event log at the host physical
  address iommufd pinned (unmapping it from the IOAS is EBUSY), length and alignment
  checked against what the unit's rings take.

From then on the guest moves its own tail: no ``IOMMU_HWPT_INVALIDATE``, no VMM trap; its
errors land in its own event log (the model: :mod:`drivers.amd_vi.hw.viommu`), and its
interrupt reaches the VMM as an ``IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE`` vEVENT.
"""

from __future__ import annotations

import contextlib
import errno
from typing import TYPE_CHECKING

from drivers.amd_vi.amd_iommu_types import (
    DTE_HOST_TRP,
    DTE_MODE_MASK,
    RING_BASE_ADDR_MASK,
    field_get,
    field_prep,
)
from drivers.amd_vi.iommu import ProtectionDomain
from drivers.amd_vi.nested import AmdViommu
from drivers.amd_vi.uapi import (
    IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE,
    IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE,
    IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE,
    IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
    iommu_vevent_amd_hw,
    iommu_viommu_amd_hw,
)
from drivers.amd_vi.viommu_regs import (
    CONTROL_VIOMMU_EN,
    GUEST_RING_MAX_LEN,
    GUEST_RING_MIN_LEN,
    MAP_ENTRY_SIZE,
    MAP_ENTRY_V,
    MAP_TABLE_BYTES,
    VF_CMD_HEAD,
    VF_CMD_TAIL,
    VF_EVT_HEAD,
    VF_EVT_TAIL,
    VF_PAGE,
    VF_STATUS,
    VFCTL_CMD_BUF,
    VFCTL_CMD_GPA,
    VFCTL_CONTROL,
    VFCTL_DEVID_MAP,
    VFCTL_DOMID_MAP,
    VFCTL_EVT_LOG,
    VFCTL_GPA_XLATE,
    VFCTL_GUEST_EN,
    VFCTL_INFO,
    VFCTL_INFO_GUESTS,
    VFCTL_INT_PENDING_64,
    vf_page,
)
from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.uaccess import struct_to_bytes

if TYPE_CHECKING:
    from drivers.amd_vi.init import AmdIommu
    from iommu_core.iommufd_driver import IommufdHwQueue, IommufdViommu, UserData
    from iommu_core.platform.dma import Mmio
    from iommu_core.platform.platform import IommuResources
    from iommu_core.plugin import IommuOps

AMD_HW_VIOMMU_OPS = ("viommu_destroy", "viommu_alloc_domain_nested", "viommu_cache_invalidate",
                     "viommu_vdevice_init", "viommu_vdevice_destroy",
                     "viommu_get_hw_queue_size", "viommu_hw_queue_init_phys",
                     "viommu_hw_queue_destroy")
#: HW queue type -> the VF Control register holding that ring, and its VF head/tail.
_QUEUE_REGS = {IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE: (VFCTL_CMD_BUF, VF_CMD_HEAD,
                                                          VF_CMD_TAIL),
               IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE: (VFCTL_EVT_LOG, VF_EVT_HEAD,
                                                          VF_EVT_TAIL)}
_MAP_ORDER = (MAP_TABLE_BYTES // PAGE_SIZE).bit_length() - 1


class AmdHwViommuUnit:
    """The HW-vIOMMU of one unit as the driver knows it: its windows and GuestIDs."""

    def __init__(self, iommu: AmdIommu, vf: Mmio, vfctl: Mmio) -> None:
        self.iommu = iommu
        self.vf = vf
        self.vfctl = vfctl
        self.num_guests = field_get(VFCTL_INFO_GUESTS, vfctl.read64(VFCTL_INFO))
        #: The vIOMMUs by GuestID (GuestID 0 is the hypervisor's).
        self.viommus: dict[int, AmdHwViommu | None] = {}

    def alloc_guest_id(self) -> int:
        for g in range(1, self.num_guests):
            if g not in self.viommus:
                self.viommus[g] = None  # reserved until the vIOMMU is set up
                return g
        raise IommuError(errno.ENOSPC, f"{self.iommu.name}: no free GuestID")

    def isr(self) -> None:
        """The unit's ``vf`` interrupt: each pending guest's status goes to its vIOMMU as a
        vEVENT, for the VMM to inject the guest's interrupt (dropped, EOPNOTSUPP, when the
        VMM has no vEVENTQ of the type: the guest's status still says it)."""
        for word in range((self.num_guests + 63) // 64):
            off = VFCTL_INT_PENDING_64(word)
            pending = self.vfctl.read64(off)
            if not pending:
                continue
            self.vfctl.write64(off, pending)  # W1C before reading the guests' status
            while pending:
                bit = (pending & -pending).bit_length() - 1
                pending &= pending - 1
                avi = self.viommus.get(64 * word + bit)
                if avi is None:
                    continue
                status = self.vf.read32(vf_page(avi.guest_id) + VF_STATUS)
                tracer = self.iommu.tracer
                if tracer.enabled:
                    tracer.event("driver", "amd_hw_viommu_isr", f"{self.iommu.name} guest "
                                 f"{avi.guest_id} status {status:#x}: vEVENT")
                data = iommu_vevent_amd_hw(status=status)
                with contextlib.suppress(IommuError):
                    avi.core.report_event(IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE,
                                          struct_to_bytes(data))

    def ctl_write(self, guest_id: int, reg: int, value: int) -> None:
        self.vfctl.write64(vf_page(guest_id) + reg, value)

    def vf_write(self, guest_id: int, reg: int, value: int) -> None:
        self.vf.write64(vf_page(guest_id) + reg, value)


class AmdHwViommu(AmdViommu):
    """An AMD vIOMMU with a GuestID: its maps are the unit's, its queues the guest's."""

    def __init__(self, core: IommufdViommu, iommu: AmdIommu, parent: ProtectionDomain,
                 unit: AmdHwViommuUnit) -> None:
        super().__init__(core, iommu, parent)
        self.unit = unit
        self.guest_id = 0
        self.domid_map = 0
        self.devid_map = 0
        self.mmap_offset = 0
        self.queues: dict[int, IommufdHwQueue] = {}

    def __repr__(self) -> str:
        return f"<AmdHwViommu guest {self.guest_id} gdomids {sorted(self.gdomid_array)}>"

    def _map_write(self, table: int, gid: int, value: int) -> None:
        self.iommu.mem.write(table + gid * MAP_ENTRY_SIZE, value.to_bytes(4, "little"))

    # The Domain ID map follows gdomid_array; the Device ID map the vDEVICEs.
    def domid_mapped(self, gdom_id: int, hdom_id: int) -> None:
        self._map_write(self.domid_map, gdom_id, MAP_ENTRY_V | hdom_id)

    def domid_unmapped(self, gdom_id: int) -> None:
        self._map_write(self.domid_map, gdom_id, 0)

    def devid_mapped(self, gdev_id: int, devid: int) -> None:
        self._map_write(self.devid_map, gdev_id, MAP_ENTRY_V | devid)

    def devid_unmapped(self, gdev_id: int) -> None:
        self._map_write(self.devid_map, gdev_id, 0)


def amd_hw_viommu_probe(iommu: AmdIommu, res: IommuResources) -> AmdHwViommuUnit | None:
    vf, vfctl = res.mmio.get("vf"), res.mmio.get("vfctl")
    if vf is None or vfctl is None:
        return None
    unit = AmdHwViommuUnit(iommu, vf, vfctl)
    irq = res.irqs.get("vf")
    if irq is not None:
        irq.request_irq(unit.isr)
    iommu.feature_enable(CONTROL_VIOMMU_EN)
    return unit


def amd_hw_viommu_supported(iommu: AmdIommu) -> bool:
    return iommu.hwv is not None


def amd_hw_viommu_init(ops: IommuOps, viommu: IommufdViommu, iommu: AmdIommu,
                       parent: ProtectionDomain, user_data: UserData | None) -> None:
    """``IOMMU_VIOMMU_ALLOC(AMD_HW_PROTOTYPE)``: the caller checked the parent; a failure
    leaves nothing behind."""
    unit = iommu.hwv
    if unit is None:
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name} has no HW-vIOMMU")
    if user_data is None:
        raise IommuError(errno.EINVAL, "a HW vIOMMU needs its data (out GuestID, mmap)")
    data = user_data.copy_struct(iommu_viommu_amd_hw, IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
                                 "out_vfmmio_mmap_length")
    assert parent.iop is not None
    iommu.platform.kzalloc("struct amd_iommu_viommu")
    avi = AmdHwViommu(viommu, iommu, parent, unit)
    alloc = iommu.alloc
    g = unit.alloc_guest_id()
    try:
        avi.domid_map = alloc.alloc_pages(_MAP_ORDER)
        try:
            avi.devid_map = alloc.alloc_pages(_MAP_ORDER)
        except IommuError:
            alloc.free_pages(avi.domid_map, _MAP_ORDER)
            raise
        try:
            avi.mmap_offset = viommu.alloc_mmap(vf_page(g), VF_PAGE, mmio=unit.vf)
            try:
                data.out_guest_id = g
                data.out_vfmmio_mmap_offset = avi.mmap_offset
                data.out_vfmmio_mmap_length = VF_PAGE
                user_data.respond_struct(data, "out_vfmmio_mmap_length")
            except IommuError:
                viommu.destroy_mmap(avi.mmap_offset)
                raise
        except IommuError:
            alloc.free_pages(avi.domid_map, _MAP_ORDER)
            alloc.free_pages(avi.devid_map, _MAP_ORDER)
            raise
    except IommuError:
        del unit.viommus[g]
        raise
    avi.guest_id = g
    unit.viommus[g] = avi
    mem = iommu.mem
    mem.write(avi.domid_map, bytes(MAP_TABLE_BYTES))
    mem.write(avi.devid_map, bytes(MAP_TABLE_BYTES))
    for reg in (VF_CMD_HEAD, VF_CMD_TAIL, VF_EVT_HEAD, VF_EVT_TAIL):
        unit.vf_write(g, reg, 0)
    unit.ctl_write(g, VFCTL_DOMID_MAP, avi.domid_map)
    unit.ctl_write(g, VFCTL_DEVID_MAP, avi.devid_map)
    unit.ctl_write(g, VFCTL_GPA_XLATE, (parent.iop.root & DTE_HOST_TRP)
                   | field_prep(DTE_MODE_MASK, parent.iop.levels))
    unit.ctl_write(g, VFCTL_CONTROL, VFCTL_GUEST_EN)
    parent.viommu_list.append(avi)
    viommu.priv = avi
    viommu.ops = ops.viommu_ops(AMD_HW_VIOMMU_OPS)
    if iommu.tracer.enabled:
        iommu.tracer.event("driver", "hw_viommu_init", f"{iommu.name} GuestID {g} "
                           f"mmap {avi.mmap_offset:#x}")


def amd_hw_viommu_destroy(avi: AmdHwViommu) -> None:
    """Off first, then every register the guest had, then its memory and its GuestID."""
    unit, g = avi.unit, avi.guest_id
    unit.ctl_write(g, VFCTL_CONTROL, 0)
    for reg in (VFCTL_CMD_BUF, VFCTL_EVT_LOG, VFCTL_DOMID_MAP, VFCTL_DEVID_MAP,
                VFCTL_GPA_XLATE, VFCTL_CMD_GPA):
        unit.ctl_write(g, reg, 0)
    for reg in (VF_CMD_HEAD, VF_CMD_TAIL, VF_EVT_HEAD, VF_EVT_TAIL):
        unit.vf_write(g, reg, 0)
    if avi.mmap_offset:
        avi.core.destroy_mmap(avi.mmap_offset)
        avi.mmap_offset = 0
    for table in (avi.domid_map, avi.devid_map):
        if table:
            avi.iommu.alloc.free_pages(table, _MAP_ORDER)
    avi.domid_map = avi.devid_map = 0
    unit.viommus.pop(g, None)


# ---------------------------------------------------------------------------------------
# HW queues: the guest's command buffer and event log
# ---------------------------------------------------------------------------------------
def hw_viommu_of(viommu: IommufdViommu) -> AmdHwViommu:
    avi = viommu.priv
    if not isinstance(avi, AmdHwViommu):
        raise IommuError(errno.EINVAL, "not an AMD HW vIOMMU")
    return avi


def amd_hw_viommu_get_hw_queue_size(viommu: IommufdViommu, queue_type: int) -> int:
    if not isinstance(viommu.priv, AmdHwViommu):
        return 0
    return 1 if queue_type in _QUEUE_REGS else 0


def amd_hw_viommu_hw_queue_init_phys(hw_queue: IommufdHwQueue, index: int,
                                     base_addr_pa: int) -> None:
    """Checks in this order: type, index, taken, length, alignment; then the ring's
    base and length code into the VF Control page, its pointers to 0."""
    avi = hw_viommu_of(hw_queue.viommu)
    regs = _QUEUE_REGS.get(hw_queue.type)
    if regs is None:
        raise IommuError(errno.EOPNOTSUPP, f"HW queue type {hw_queue.type:#x} is not AMD's")
    if index != 0:
        raise IommuError(errno.EINVAL, f"HW queue index {index}: a guest has one of each")
    if hw_queue.type in avi.queues:
        raise IommuError(errno.EEXIST, "the guest's queue of this type is already allocated")
    length = hw_queue.length
    if length & (length - 1) or not GUEST_RING_MIN_LEN <= length <= GUEST_RING_MAX_LEN:
        raise IommuError(errno.EINVAL, f"queue length {length:#x} is not a power of 2 in "
                         f"[{GUEST_RING_MIN_LEN:#x}, {GUEST_RING_MAX_LEN:#x}]")
    if base_addr_pa & ~RING_BASE_ADDR_MASK or hw_queue.base_addr & (PAGE_SIZE - 1):
        raise IommuError(errno.EINVAL, f"queue at {hw_queue.base_addr:#x} is not 4 KiB "
                         "aligned")
    ctl, head, tail = regs
    unit, g = avi.unit, avi.guest_id
    unit.vf_write(g, head, 0)
    unit.vf_write(g, tail, 0)
    if ctl == VFCTL_CMD_BUF:
        unit.ctl_write(g, VFCTL_CMD_GPA, hw_queue.base_addr)
    log2 = length.bit_length() - 1 - 4
    unit.ctl_write(g, ctl, base_addr_pa | (log2 << 56))
    avi.queues[hw_queue.type] = hw_queue
    hw_queue.priv = avi


def amd_hw_viommu_hw_queue_destroy(hw_queue: IommufdHwQueue) -> None:
    avi = hw_queue.priv
    if not isinstance(avi, AmdHwViommu) or avi.queues.get(hw_queue.type) is not hw_queue:
        return
    ctl, head, tail = _QUEUE_REGS[hw_queue.type]
    unit, g = avi.unit, avi.guest_id
    unit.ctl_write(g, ctl, 0)  # the unit no longer reads or writes that memory
    unit.vf_write(g, head, 0)
    unit.vf_write(g, tail, 0)
    if ctl == VFCTL_CMD_BUF:
        unit.ctl_write(g, VFCTL_CMD_GPA, 0)
    del avi.queues[hw_queue.type]
    hw_queue.priv = None


__all__ = [
    "AMD_HW_VIOMMU_OPS",
    "AmdHwViommu",
    "AmdHwViommuUnit",
    "amd_hw_viommu_destroy",
    "amd_hw_viommu_get_hw_queue_size",
    "amd_hw_viommu_hw_queue_destroy",
    "amd_hw_viommu_hw_queue_init_phys",
    "amd_hw_viommu_init",
    "amd_hw_viommu_probe",
    "amd_hw_viommu_supported",
    "hw_viommu_of",
]

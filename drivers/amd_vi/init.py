"""Probe and teardown of one AMD-Vi unit (drivers/iommu/amd/init.c) and its event-log
interrupt: read EFR/EFR2, allocate the Device Table, command buffer, event log and PPR
log, program the base registers, enable the unit in Linux's order, flush all caches."""

from __future__ import annotations

import collections
import errno
from typing import TYPE_CHECKING

from drivers.amd_vi.amd_iommu_types import (
    CMD_BUFFER_LEN,
    CONTROL_CMDBUF_EN,
    CONTROL_COHERENT_EN,
    CONTROL_EVT_INT_EN,
    CONTROL_EVT_LOG_EN,
    CONTROL_GCR3TRPMODE,
    CONTROL_GT_EN,
    CONTROL_INV_TIMEOUT,
    CONTROL_IOMMU_EN,
    CONTROL_PASSPW_EN,
    CONTROL_RESPASSPW_EN,
    DEV_TABLE_ENTRY_SIZE,
    DTE_FLAG_TV,
    DTE_FLAG_V,
    EVT_BUFFER_SIZE,
    EVT_LEN_MASK,
    FEATURE_GATS,
    FEATURE_GCR3TRPMODE,
    FEATURE_GLX,
    FEATURE_GT,
    FEATURE_HATS,
    FEATURE_PASMAX,
    MAX_DEV_TABLE_ENTRIES,
    MMIO_CMD_BUF_OFFSET,
    MMIO_CMD_HEAD_OFFSET,
    MMIO_CMD_TAIL_OFFSET,
    MMIO_CONTROL_OFFSET,
    MMIO_DEV_TABLE_OFFSET,
    MMIO_EVT_BUF_OFFSET,
    MMIO_EVT_HEAD_OFFSET,
    MMIO_EVT_TAIL_OFFSET,
    MMIO_EXT_FEATURES,
    MMIO_EXT_FEATURES2,
    MMIO_STATUS_EVT_INT_MASK,
    MMIO_STATUS_EVT_OVERFLOW_MASK,
    MMIO_STATUS_OFFSET,
    EventLogEntry,
    field_get,
)
from drivers.amd_vi.iommu import (
    AmdIommuDriver,
    IommuDevData,
    amd_iommu_flush_all_caches,
)
from iommu_core.device import IommuDevice
from iommu_core.errors import IommuError
from iommu_core.platform.dma import IrqLine, Mmio
from iommu_core.platform.memory import PAGE_SIZE

if TYPE_CHECKING:
    from drivers.amd_vi.hw_viommu import AmdHwViommuUnit
    from iommu_core.iommu import IommuCore
    from iommu_core.platform.platform import IommuResources

_DEV_TABLE_ORDER = 9  # 65536 DTEs x 32 bytes = 2 MiB
_CMD_BUF_ORDER = 1  # 8 KiB
_EVT_BUF_ORDER = 1
_PPR_LOG_ORDER = 1


class AmdIommu:
    """``struct amd_iommu``: one unit as the driver knows it."""

    def __init__(self, drv: AmdIommuDriver, core: IommuCore, res: IommuResources) -> None:
        self.drv = drv
        self.core = core
        self.name = res.name
        self.platform = core.platform
        self.mem = core.platform.mem
        self.alloc = core.platform.alloc
        self.tracer = core.platform.tracer
        if "regs" not in res.mmio:
            raise IommuError(errno.ENODEV, f"{res.name}: no register window")
        self.mmio: Mmio = res.mmio["regs"]
        self.irqs: dict[str, IrqLine] = dict(res.irqs)
        self.efr = 0
        self.efr2 = 0
        self.last_bdf = MAX_DEV_TABLE_ENTRIES - 1
        self.dev_table = 0
        self.cmd_buf = 0
        self.cmd_buf_tail = 0
        self.cmd_sem = 0
        self.cmd_sem_val = 0
        self.need_sync = False
        self.evt_buf = 0
        self.ppr_log = 0
        self.iopf_queue = False
        self.control = 0
        #: DeviceID -> per-device data of the devices behind this unit.
        self.dev_data: dict[int, IommuDevData] = {}
        #: Persistent IVHD DTE bits by DeviceID (none are described here).
        self.ivhd_dte_flags: dict[int, tuple[int, int, int, int]] = {}
        #: Event log records the interrupt handler consumed (iommu_print_event).
        self.events: collections.deque[EventLogEntry] = collections.deque(maxlen=1024)
        self.iommu_dev: IommuDevice | None = None
        #: The HW-vIOMMU (prototype), when the unit has one.
        self.hwv: AmdHwViommuUnit | None = None

    def __repr__(self) -> str:
        return f"<AmdIommu {self.name}>"

    # -- feature control (iommu_feature_enable / _disable) ------------------------------
    def feature_enable(self, bit: int) -> None:
        self.control |= 1 << bit
        self.mmio.write64(MMIO_CONTROL_OFFSET, self.control)

    def feature_disable(self, bit: int) -> None:
        self.control &= ~(1 << bit)
        self.mmio.write64(MMIO_CONTROL_OFFSET, self.control)

    @property
    def max_pasids(self) -> int:
        """``iommu->iommu.max_pasids`` = 2^(PASMAX + 1) - 1 (0 without PASID support)."""
        bits = self.max_pasid_bits
        return (1 << bits) - 1 if bits else 0

    @property
    def max_pasid_bits(self) -> int:
        """PASID width the unit supports for devices (0 when PASID is not supported)."""
        if not self.drv.pasid_supported():
            return 0
        return min(16, field_get(FEATURE_PASMAX, self.efr) + 1)


def _alloc(iommu: AmdIommu, order: int, done: list[tuple[int, int]]) -> int:
    pa = iommu.alloc.alloc_pages(order)
    done.append((pa, order))
    return pa


def init_device_table_dma(iommu: AmdIommu) -> None:
    """Every DTE valid with TV set and no permission: DMA from unknown devices aborts."""
    entry = (DTE_FLAG_V | DTE_FLAG_TV).to_bytes(8, "little") + bytes(24)
    n = iommu.last_bdf + 1
    iommu.mem.write(iommu.dev_table, entry * n)


def iommu_enable_command_buffer(iommu: AmdIommu) -> None:
    iommu.mmio.write64(MMIO_CMD_BUF_OFFSET, iommu.cmd_buf | CMD_BUFFER_LEN)
    iommu.mmio.write32(MMIO_CMD_HEAD_OFFSET, 0)
    iommu.mmio.write32(MMIO_CMD_TAIL_OFFSET, 0)
    iommu.cmd_buf_tail = 0
    iommu.feature_enable(CONTROL_CMDBUF_EN)


def iommu_enable_event_buffer(iommu: AmdIommu) -> None:
    iommu.mmio.write64(MMIO_EVT_BUF_OFFSET, iommu.evt_buf | EVT_LEN_MASK)
    iommu.mmio.write32(MMIO_EVT_HEAD_OFFSET, 0)
    iommu.mmio.write32(MMIO_EVT_TAIL_OFFSET, 0)
    iommu.feature_enable(CONTROL_EVT_LOG_EN)


def iommu_enable_gt(iommu: AmdIommu) -> None:
    if not iommu.efr & FEATURE_GT:
        return
    iommu.feature_enable(CONTROL_GT_EN)
    # "Always enable GCR3TRPMode when supported" (nesting series).
    if iommu.efr2 & FEATURE_GCR3TRPMODE:
        iommu.feature_enable(CONTROL_GCR3TRPMODE)


def amd_iommu_poll_events(iommu: AmdIommu) -> None:
    """Event-log interrupt thread: consume records head..tail, zero them (erratum 732),
    move the head, clear the interrupt status."""
    head = iommu.mmio.read32(MMIO_EVT_HEAD_OFFSET)
    tail = iommu.mmio.read32(MMIO_EVT_TAIL_OFFSET)
    while head != tail:
        raw = iommu.mem.read(iommu.evt_buf + head, 16)
        ev = EventLogEntry.from_bytes(raw)
        iommu.mem.write(iommu.evt_buf + head, bytes(16))
        iommu.events.append(ev)
        if iommu.tracer.enabled:
            iommu.tracer.event("driver", "iommu_print_event",
                               f"{iommu.name} {ev.name} devid {ev.devid:#x} "
                               f"domain/pasid {ev.domid_pasid:#x} addr {ev.address:#x} "
                               f"flags {ev.flags:#x}")
        head = (head + 16) % EVT_BUFFER_SIZE
        iommu.mmio.write32(MMIO_EVT_HEAD_OFFSET, head)
    iommu.mmio.write32(MMIO_STATUS_OFFSET, MMIO_STATUS_EVT_INT_MASK
                       | MMIO_STATUS_EVT_OVERFLOW_MASK)


def amd_iommu_probe(drv: AmdIommuDriver, core: IommuCore, res: IommuResources
                    ) -> IommuDevice:
    """``init_iommu_one`` + ``early_enable_iommu`` + ``iommu_device_register``."""
    from drivers.amd_vi.hw_viommu import amd_hw_viommu_probe
    from drivers.amd_vi.ppr import amd_iommu_enable_ppr_log, amd_iommu_poll_ppr_log

    iommu = AmdIommu(drv, core, res)
    iommu.efr = iommu.mmio.read64(MMIO_EXT_FEATURES)
    iommu.efr2 = iommu.mmio.read64(MMIO_EXT_FEATURES2)
    if not drv.iommus:
        drv.efr, drv.efr2 = iommu.efr, iommu.efr2
    else:  # the globals keep what every unit has
        drv.efr &= iommu.efr
        drv.efr2 &= iommu.efr2
    glx = field_get(FEATURE_GLX, iommu.efr)
    drv.max_glx_val = glx if drv.max_glx_val < 0 else min(drv.max_glx_val, glx)
    gats = field_get(FEATURE_GATS, drv.efr)
    drv.gpt_level = 5 if drv.CPU_HAS_LA57 and gats == 1 else 4
    drv.hpt_level = field_get(FEATURE_HATS, drv.efr) + 4

    allocated: list[tuple[int, int]] = []
    try:
        iommu.dev_table = _alloc(iommu, _DEV_TABLE_ORDER, allocated)
        iommu.cmd_buf = _alloc(iommu, _CMD_BUF_ORDER, allocated)
        iommu.cmd_sem = _alloc(iommu, 0, allocated)
        iommu.evt_buf = _alloc(iommu, _EVT_BUF_ORDER, allocated)
        if drv.gt_ppr_supported():
            iommu.ppr_log = _alloc(iommu, _PPR_LOG_ORDER, allocated)
    except IommuError:
        for pa, order in allocated:
            iommu.alloc.free_pages(pa, order)
        raise
    init_device_table_dma(iommu)

    # iommu_disable, iommu_init_flags
    iommu.control = 0
    iommu.mmio.write64(MMIO_CONTROL_OFFSET, 0)
    iommu.control = ((1 << CONTROL_COHERENT_EN) | (1 << CONTROL_PASSPW_EN)
                     | (1 << CONTROL_RESPASSPW_EN) | (4 << CONTROL_INV_TIMEOUT))
    iommu.mmio.write64(MMIO_CONTROL_OFFSET, iommu.control)
    # iommu_set_device_table: size in 4K pages - 1.
    size = (iommu.last_bdf + 1) * DEV_TABLE_ENTRY_SIZE
    iommu.mmio.write64(MMIO_DEV_TABLE_OFFSET, iommu.dev_table | ((size // PAGE_SIZE) - 1))
    iommu_enable_command_buffer(iommu)
    iommu_enable_event_buffer(iommu)
    iommu_enable_gt(iommu)
    if "evt" in iommu.irqs:
        iommu.irqs["evt"].request_irq(lambda: amd_iommu_poll_events(iommu))
        iommu.feature_enable(CONTROL_EVT_INT_EN)
    if iommu.ppr_log:
        from drivers.amd_vi.ppr import amd_iommu_iopf_init
        amd_iommu_enable_ppr_log(iommu)
        amd_iommu_iopf_init(iommu)
        if "ppr" in iommu.irqs:
            iommu.irqs["ppr"].request_irq(lambda: amd_iommu_poll_ppr_log(iommu))
    iommu.hwv = amd_hw_viommu_probe(iommu, res)
    iommu.feature_enable(CONTROL_IOMMU_EN)
    amd_iommu_flush_all_caches(iommu)

    iommu_dev = IommuDevice(res.name, drv.ops, iommu)
    iommu_dev.max_pasid_bits = iommu.max_pasid_bits
    iommu.iommu_dev = iommu_dev
    drv.iommus.append(iommu)
    try:
        core.iommu_device_register(iommu_dev)
    except IommuError:
        amd_iommu_remove(iommu)
        raise
    return iommu_dev


def amd_iommu_remove(iommu: AmdIommu) -> None:
    """Disable the unit, release its interrupts, free every page the probe allocated."""
    iommu.control = 0
    iommu.mmio.write64(MMIO_CONTROL_OFFSET, 0)
    iommu.hwv = None
    for line in iommu.irqs.values():
        line.free_irq()
    for pa, order in ((iommu.dev_table, _DEV_TABLE_ORDER), (iommu.cmd_buf, _CMD_BUF_ORDER),
                      (iommu.cmd_sem, 0), (iommu.evt_buf, _EVT_BUF_ORDER),
                      (iommu.ppr_log, _PPR_LOG_ORDER)):
        if pa:
            iommu.alloc.free_pages(pa, order)
    iommu.dev_table = iommu.cmd_buf = iommu.cmd_sem = iommu.evt_buf = iommu.ppr_log = 0
    if iommu in iommu.drv.iommus:
        iommu.drv.iommus.remove(iommu)

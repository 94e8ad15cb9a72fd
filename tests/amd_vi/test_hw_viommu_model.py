"""The HW-vIOMMU model alone (prototype), through its two register windows and memory:
register rules, when a guest's buffer runs, the map entries, the guest's event log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_INV_IOMMU_PAGES,
    CONTROL_CMDBUF_EN,
    CONTROL_EVT_INT_EN,
    CONTROL_EVT_LOG_EN,
    CONTROL_IOMMU_EN,
    EVENT_TYPE_ILL_CMD,
    MMIO_CONTROL_OFFSET,
    MMIO_STATUS_EVT_INT_MASK,
    MMIO_STATUS_EVT_OVERFLOW_MASK,
    EventLogEntry,
)
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from drivers.amd_vi.viommu_regs import (
    CONTROL_VIOMMU_EN,
    MAP_ENTRY_V,
    VF_CMD_HEAD,
    VF_CMD_TAIL,
    VF_CONTROL,
    VF_EVT_HEAD,
    VF_EVT_TAIL,
    VF_STATUS,
    VFCTL_CMD_BUF,
    VFCTL_CMD_GPA,
    VFCTL_CONTROL,
    VFCTL_DOMID_MAP,
    VFCTL_EVT_LOG,
    VFCTL_GUEST_EN,
    VFCTL_INFO,
    VFCTL_INT_PENDING_64,
    vf_page,
)
from iommu_core.testing.env import DriverEnv

from .conftest import make_env

G = 3  # a GuestID no driver uses here


class Unit:
    """The unit of a DriverEnv, with GuestID G programmed by hand: a 4 KiB command buffer
    and event log and a Domain ID map in kernel pages."""

    def __init__(self, env: DriverEnv) -> None:
        hw = env.hw
        assert isinstance(hw, AmdIommuHw) and hw.viommu is not None
        self.hw, self.v, self.mem = hw, hw.viommu, env.platform.mem
        alloc = env.platform.alloc
        self.cmd, self.evt = alloc.alloc_page(), alloc.alloc_page()
        self.domid_map = alloc.alloc_pages(6)
        self.pages = [(self.cmd, 0), (self.evt, 0), (self.domid_map, 6)]
        self.alloc = alloc
        for pa, order in self.pages:
            self.mem.write(pa, bytes(4096 << order))
        self.ctl(VFCTL_CMD_BUF, self.cmd | 8 << 56)
        self.ctl(VFCTL_EVT_LOG, self.evt | 8 << 56)
        self.ctl(VFCTL_DOMID_MAP, self.domid_map)
        self.ctl(VFCTL_CMD_GPA, 0x7000)
        self.tail = 0

    def free(self) -> None:
        for pa, order in self.pages:
            self.alloc.free_pages(pa, order)

    def ctl(self, reg: int, value: int) -> None:
        self.v.ctl_mmio.write64(vf_page(G) + reg, value)

    def vf(self, reg: int, value: int | None = None) -> int:
        if value is not None:
            self.v.vf_mmio.write32(vf_page(G) + reg, value)
        return self.v.vf_mmio.read32(vf_page(G) + reg)

    def submit(self, *cmds: tuple[int, int, int, int]) -> None:
        for c in cmds:
            self.mem.write(self.cmd + self.tail, b"".join(w.to_bytes(4, "little") for w in c))
            self.tail = (self.tail + 16) % 4096
        self.vf(VF_CMD_TAIL, self.tail)


@pytest.fixture
def u() -> Iterator[Unit]:
    env = make_env(hw_viommu=True)
    unit = Unit(env)
    yield unit
    unit.free()
    env.teardown()


NOP = (0, CMD_COMPL_WAIT << 28, 0, 0)


def test_info_and_windows(u: Unit) -> None:
    assert u.v.ctl_mmio.read64(VFCTL_INFO) == 16
    # GuestID 0 (the hypervisor's) and GuestIDs past the count have no page: RAZ/WI.
    for page in (0, 16, 17):
        u.v.vf_mmio.write32(vf_page(page) + VF_CONTROL, 0xFFFF_FFFF)
        assert u.v.vf_mmio.read32(vf_page(page) + VF_CONTROL) == 0
    u.v.ctl_mmio.write64(VFCTL_INFO, 1)
    assert u.v.ctl_mmio.read64(VFCTL_INFO) == 16


def test_guest_registers(u: Unit) -> None:
    u.vf(VF_CONTROL, 0xFFFF_FFFF)
    assert u.vf(VF_CONTROL) == (1 << 12) | (1 << 2) | (1 << 3) | (1 << 4)
    u.vf(VF_EVT_TAIL, 0x40)
    assert u.vf(VF_EVT_TAIL) == 0, "the event tail is the unit's"
    u.vf(VF_CMD_HEAD, 0xFFFF_FFFF)
    assert u.vf(VF_CMD_HEAD) == 0x7FFF0, "pointers are bits 18:4"


def test_runs_only_when_everything_is_on(u: Unit) -> None:
    u.vf(VF_CONTROL, 1 << CONTROL_CMDBUF_EN)
    u.submit(NOP)
    assert u.vf(VF_CMD_HEAD) == 0, "GUEST_EN off"
    u.ctl(VFCTL_CONTROL, VFCTL_GUEST_EN)
    assert u.vf(VF_CMD_HEAD) == 0x10, "enabling the guest runs what is pending"
    ctl = u.hw.regs[MMIO_CONTROL_OFFSET]
    u.hw.reg_write(MMIO_CONTROL_OFFSET, ctl & ~(1 << CONTROL_VIOMMU_EN))
    u.submit(NOP)
    assert u.vf(VF_CMD_HEAD) == 0x10, "VIOMMU_EN off"
    u.hw.reg_write(MMIO_CONTROL_OFFSET, ctl)
    assert u.vf(VF_CMD_HEAD) == 0x20
    u.hw.reg_write(MMIO_CONTROL_OFFSET, ctl & ~(1 << CONTROL_IOMMU_EN))
    u.submit(NOP)
    assert u.vf(VF_CMD_HEAD) == 0x20, "the unit off"
    u.hw.reg_write(MMIO_CONTROL_OFFSET, ctl)
    assert u.vf(VF_CMD_HEAD) == 0x30
    u.vf(VF_CONTROL, 0)
    u.submit(NOP)
    assert u.vf(VF_CMD_HEAD) == 0x30, "CMDBUF_EN off"
    u.vf(VF_CONTROL, 1 << CONTROL_CMDBUF_EN)
    assert u.vf(VF_CMD_HEAD) == 0x40


def test_domid_map_entry(u: Unit) -> None:
    u.ctl(VFCTL_CONTROL, VFCTL_GUEST_EN)
    u.vf(VF_CONTROL, (1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_EVT_LOG_EN))
    inv = (0, (CMD_INV_IOMMU_PAGES << 28) | 0x44, 0x1000, 0)
    u.mem.write(u.domid_map + 0x44 * 4, (0x1234).to_bytes(4, "little"))  # V clear
    n = len(u.hw.cmd_log)
    u.submit(inv)
    assert u.vf(VF_CMD_HEAD) == 0 and len(u.hw.cmd_log) == n
    ev = EventLogEntry.from_bytes(u.mem.read(u.evt, 16))
    assert (ev.type, ev.domid_pasid, ev.address) == (EVENT_TYPE_ILL_CMD, 0x44, 0x7000)
    u.mem.write(u.domid_map + 0x44 * 4, (MAP_ENTRY_V | 0x1234).to_bytes(4, "little"))
    u.vf(VF_CMD_TAIL, u.tail)  # ring again: the map is read per command
    assert u.vf(VF_CMD_HEAD) == 0x10
    assert u.hw.cmd_log[-1].data[1] & 0xFFFF == 0x1234


def test_event_log_full(u: Unit) -> None:
    u.ctl(VFCTL_CONTROL, VFCTL_GUEST_EN)
    u.vf(VF_CONTROL, (1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_EVT_LOG_EN))
    bad = (0, 0xF << 28, 0, 0)
    for _ in range(255):  # 256 slots, one always free
        u.submit(bad)
        u.vf(VF_CMD_HEAD, u.tail)
    assert u.vf(VF_EVT_TAIL) == 255 * 16
    assert not u.vf(VF_STATUS) & MMIO_STATUS_EVT_OVERFLOW_MASK
    u.submit(bad)
    assert u.vf(VF_EVT_TAIL) == 255 * 16
    st = u.vf(VF_STATUS)
    assert st & MMIO_STATUS_EVT_OVERFLOW_MASK and st & MMIO_STATUS_EVT_INT_MASK
    u.vf(VF_STATUS, MMIO_STATUS_EVT_OVERFLOW_MASK)
    assert u.vf(VF_STATUS) == MMIO_STATUS_EVT_INT_MASK, "W1C, bit by bit"
    u.vf(VF_EVT_HEAD, u.vf(VF_EVT_TAIL))
    u.submit(bad)
    assert u.vf(VF_EVT_TAIL) == 0


def test_no_event_log_no_record(u: Unit) -> None:
    u.ctl(VFCTL_CONTROL, VFCTL_GUEST_EN)
    u.vf(VF_CONTROL, 1 << CONTROL_CMDBUF_EN)
    u.submit((0, 0xF << 28, 0, 0))
    assert u.vf(VF_CMD_HEAD) == 0 and u.vf(VF_STATUS) == 0
    assert u.mem.read(u.evt, 16) == bytes(16)


def test_guest_interrupt_pending(u: Unit) -> None:
    u.ctl(VFCTL_CONTROL, VFCTL_GUEST_EN)
    u.vf(VF_CONTROL, (1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_EVT_LOG_EN)
         | (1 << CONTROL_EVT_INT_EN))
    irq = u.hw.irqs["vf"]
    fired: list[int] = []
    handler = irq.handler
    irq.request_irq(lambda: fired.append(u.v.ctl_mmio.read64(VFCTL_INT_PENDING_64(0))))
    try:
        u.submit((0, 0xF << 28, 0, 0))
        assert fired == [1 << G]
        u.v.ctl_mmio.write64(VFCTL_INT_PENDING_64(0), 1 << (G + 1))
        assert u.v.ctl_mmio.read64(VFCTL_INT_PENDING_64(0)) == 1 << G, "W1C, bit by bit"
        u.v.ctl_mmio.write64(VFCTL_INT_PENDING_64(0), 1 << G)
        assert u.v.ctl_mmio.read64(VFCTL_INT_PENDING_64(0)) == 0
    finally:
        if handler is not None:
            irq.request_irq(handler)

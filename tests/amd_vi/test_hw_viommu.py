"""The AMD HW-vIOMMU (prototype) through the Machine, ioctl ABI only (the hardware is read
for assertions): the vIOMMU type and its mmap'd VF page, the HW queues and their checks,
and a guest that invalidates through its own command buffer with no
IOMMU_HWPT_INVALIDATE; its errors in its own event log, and nothing of the host
invalidated by them."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest

from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_ALL,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOTLB_PAGES,
    CONTROL_CMDBUF_EN,
    CONTROL_EVT_INT_EN,
    EVENT_TYPE_ILL_CMD,
    EVENT_TYPE_IO_FAULT,
    MMIO_STATUS_COM_WAIT_INT_MASK,
    MMIO_STATUS_EVT_INT_MASK,
)
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from drivers.amd_vi.uapi import (
    IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE,
    IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE,
    IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
)
from drivers.amd_vi.viommu_regs import VF_CMD_TAIL, VF_CONTROL, VF_STATUS
from iommu_core.platform.vma import TASK_SIZE
from iommu_sim import Machine
from iommufd import uapi as u
from tests.fault_sweep import fail_nth_sweep

from .hwv_vmm import (
    CMDQ_GPA,
    GDEVID,
    GDOMID,
    GVA,
    NPAGES,
    PAGE,
    SEM_GPA,
    GuestCmdBuf,
    HwvVm,
    machine,
)

DEV = "0000:20:00.0"
DEV2 = "0000:21:00.0"


@pytest.fixture
def m() -> Iterator[Machine]:
    mach = machine(DEV, DEV2)
    yield mach
    mach.shutdown()
    assert mach.kernel_pages_in_use == 0


@pytest.fixture
def vm(m: Machine) -> HwvVm:
    return HwvVm(m, DEV)


def hw(m: Machine) -> AmdIommuHw:
    unit = m.platform.iommus["amdvi0"]
    assert isinstance(unit, AmdIommuHw)
    return unit


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)  # type: ignore[operator]
    return int(e.value.errno)


# -- the vIOMMU ---------------------------------------------------------------------------
def test_option_off_type_unsupported() -> None:
    mach = machine(DEV, hw_viommu=False)
    try:
        with pytest.raises(OSError) as e:
            HwvVm(mach, DEV)
        assert e.value.errno == errno.EOPNOTSUPP
        assert "vf" not in hw(mach).mmio
    finally:
        mach.shutdown()
    assert mach.kernel_pages_in_use == 0


def test_viommu_out_data_and_page(m: Machine, vm: HwvVm) -> None:
    other = HwvVm(m, DEV2)
    assert vm.guest_id >= 1 and other.guest_id >= 1 and vm.guest_id != other.guest_id
    assert vm.vf and other.vf
    # The page is the guest's registers: CONTROL reads back what the guest wrote.
    q = GuestCmdBuf(vm)
    assert q.reg(VF_CONTROL) & (1 << CONTROL_CMDBUF_EN)
    assert q.reg(VF_CMD_TAIL) == 0
    # Each VM's page is its own GuestID's: the other's CONTROL is untouched.
    assert m.mem_read(other.vf + VF_CONTROL, 4) == bytes(4)


def test_viommu_data_required(m: Machine) -> None:
    vm = HwvVm(m, DEV)
    assert errno_of(vm.viommu_alloc, IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE, 0) == errno.EINVAL
    assert errno_of(vm.viommu_alloc, IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE, 8) == errno.EINVAL


def test_guest_ids_run_out() -> None:
    mach = machine(DEV, DEV2, viommu_guests=2)
    try:
        HwvVm(mach, DEV)
        with pytest.raises(OSError) as e:
            HwvVm(mach, DEV2)
        assert e.value.errno == errno.ENOSPC
    finally:
        mach.shutdown()
    assert mach.kernel_pages_in_use == 0


# -- HW queues ----------------------------------------------------------------------------
def test_hw_queue_checks(vm: HwvVm) -> None:
    cmdq = IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE
    assert errno_of(vm.hw_queue, 0x1234, CMDQ_GPA) == errno.EOPNOTSUPP
    assert errno_of(vm.hw_queue, cmdq, CMDQ_GPA, PAGE, 1) == errno.EINVAL
    for bad in (16, 2048, 3 * PAGE):
        assert errno_of(vm.hw_queue, cmdq, CMDQ_GPA - 2 * PAGE, bad) == errno.EINVAL
    assert errno_of(vm.hw_queue, cmdq, CMDQ_GPA + 0x800, PAGE) == errno.EINVAL
    q = vm.hw_queue(cmdq, CMDQ_GPA)
    assert errno_of(vm.hw_queue, cmdq, CMDQ_GPA - PAGE) == errno.EEXIST
    # iommufd pinned the range: the VMM cannot take the page from under the hardware.
    assert errno_of(vm.unmap, CMDQ_GPA, PAGE) == errno.EBUSY
    # Two pages: one ring of 8 KiB.
    e = vm.hw_queue(IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE, CMDQ_GPA - 2 * PAGE, 2 * PAGE)
    vm.destroy(e)
    vm.destroy(q)
    vm.unmap(CMDQ_GPA, PAGE)


def test_hw_queue_on_plain_amd_viommu(m: Machine) -> None:
    vm = HwvVm(m, DEV, viommu_type=u.IOMMU_VIOMMU_TYPE_AMD)
    assert errno_of(vm.hw_queue, IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE,
                    CMDQ_GPA) == errno.EOPNOTSUPP


# -- the guest's own command buffer ---------------------------------------------------------
def test_guest_invalidation_no_vmm_trap(m: Machine, vm: HwvVm) -> None:
    _pt, _old, _new = vm.stale_guest()
    q = GuestCmdBuf(vm)
    before = len(hw(m).cmd_log)
    q.invalidate()
    assert m.dma_read(DEV, GVA, 4) == b"NEW!"
    # The unit executed the guest's command with the host DomainID in it.
    hdom = vm.hdomid()
    assert hdom != GDOMID
    run = hw(m).cmd_log[before:]
    assert [c.opcode for c in run] == [CMD_INV_IOMMU_PAGES]
    assert run[0].data[1] & 0xFFFF == hdom
    # COMPLETION_WAIT stored the guest's semaphore in guest RAM, at the GPA it named.
    assert vm.read_u64(SEM_GPA) == q.sem
    assert q.head == q.tail
    assert not q.events()


def test_completion_wait_interrupt_is_the_guests(m: Machine, vm: HwvVm) -> None:
    q = GuestCmdBuf(vm)
    cw = q.completion_wait()
    q.submit([(cw[0] | 2, cw[1], cw[2], cw[3])])  # I: interrupt
    assert q.reg(VF_STATUS) & MMIO_STATUS_COM_WAIT_INT_MASK
    host = m.core.iommus["amdvi0"].priv
    assert not host.events


def test_completion_wait_store_outside_guest_ram(m: Machine, vm: HwvVm) -> None:
    q = GuestCmdBuf(vm)
    q.submit([q.completion_wait(0x7000_0000)])  # no guest RAM there: nothing written
    (ev,) = q.events()
    assert ev.type == EVENT_TYPE_IO_FAULT and ev.address == 0x7000_0000
    assert q.head == q.tail  # the store failed; the buffer goes on


def test_guest_iotlb_invalidation(m: Machine, vm: HwvVm) -> None:
    q = GuestCmdBuf(vm)
    n = len(hw(m).iotlb_invalidations)
    q.invalidate_iotlb()
    (inv,) = list(hw(m).iotlb_invalidations)[n:]
    assert inv.devid == m.device(DEV).rid != GDEVID
    assert inv.first == GVA


@pytest.mark.parametrize("what", ["gdomid", "gdevid", "inv_all", "devtab"])
def test_refused_command_invalidates_nothing(m: Machine, vm: HwvVm, what: str) -> None:
    other = HwvVm(m, DEV2)
    other.stale_guest()
    vm.stale_guest()
    q = GuestCmdBuf(vm)
    before = len(hw(m).cmd_log)
    n_iotlb = len(hw(m).iotlb_invalidations)
    bad: tuple[int, ...]
    if what == "gdomid":  # a gDomID no nested domain of this VM has
        bad = (0, (CMD_INV_IOMMU_PAGES << 28) | 0x77, 0xFFFF_F003, 0x7FFF_FFFF)
    elif what == "gdevid":
        bad = (0x0200, (CMD_INV_IOTLB_PAGES << 28) | 0x0200, 0xFFFF_F001, 0x7FFF_FFFF)
    elif what == "inv_all":
        bad = (0, CMD_INV_ALL << 28, 0, 0)
    else:
        bad = (m.device(DEV2).rid, CMD_INV_DEV_ENTRY << 28, 0, 0)
    q.submit([bad, q.completion_wait()])
    (ev,) = q.events()
    assert ev.type == EVENT_TYPE_ILL_CMD
    assert ev.address == CMDQ_GPA  # the guest-physical address of the command
    if what == "gdomid":
        assert ev.domid_pasid == 0x77
    if what == "gdevid":
        assert ev.devid == 0x0200
    assert q.head == 0 and vm.read_u64(SEM_GPA) == 0  # stopped on it
    assert len(hw(m).cmd_log) == before and len(hw(m).iotlb_invalidations) == n_iotlb
    assert m.dma_read(DEV, GVA, 4) == b"OLD!"
    assert m.dma_read(DEV2, GVA, 4) == b"OLD!"
    assert not m.core.iommus["amdvi0"].priv.events  # nothing in the host's log
    # The guest skips it and goes on.
    q.skip()
    assert vm.read_u64(SEM_GPA) == q.sem
    q.invalidate()
    assert m.dma_read(DEV, GVA, 4) == b"NEW!"
    assert m.dma_read(DEV2, GVA, 4) == b"OLD!"
    assert not q.reg(VF_STATUS) & MMIO_STATUS_EVT_INT_MASK


def test_guest_interrupt_as_vevent(m: Machine, vm: HwvVm) -> None:
    """The guest's interrupt reaches its own VMM's vEVENTQ, and only that one."""
    other = HwvVm(m, DEV2)
    efd, efd_other = vm.veventq(), other.veventq()
    q = GuestCmdBuf(vm)
    q.submit([(0, CMD_INV_ALL << 28, 0, 0)])
    assert vm.vevents(efd) == [], "EVT_INT_EN off: the guest polls"
    q.events()
    q.skip()
    q.set_reg(VF_CONTROL, q.reg(VF_CONTROL) | (1 << CONTROL_EVT_INT_EN))
    q.submit([(0, CMD_INV_ALL << 28, 0, 0)])
    assert vm.vevents(efd) == [MMIO_STATUS_EVT_INT_MASK]
    q.events()
    q.skip()
    cw = q.completion_wait()
    q.submit([(cw[0] | 2, cw[1], cw[2], cw[3])])  # I, with COMWAIT_EN
    assert vm.vevents(efd) == [MMIO_STATUS_COM_WAIT_INT_MASK]
    assert other.vevents(efd_other) == []
    assert not m.core.iommus["amdvi0"].priv.events


def test_gdomid_unmapped_after_last_nested_domain(m: Machine, vm: HwvVm) -> None:
    _pt, _data, gcr3 = vm.guest_tables()
    nested = vm.nested(gcr3)
    q = GuestCmdBuf(vm)
    q.invalidate()
    assert not q.events()
    vm.destroy(nested)
    q.invalidate()
    (ev,) = q.events()
    assert ev.type == EVENT_TYPE_ILL_CMD and ev.domid_pasid == GDOMID


def test_destroyed_queue_is_not_read(m: Machine, vm: HwvVm) -> None:
    vm.stale_guest()
    q = GuestCmdBuf(vm)
    vm.destroy(q.cmdq)
    q.invalidate()
    assert m.dma_read(DEV, GVA, 4) == b"OLD!"
    vm.unmap(CMDQ_GPA, PAGE)  # no longer pinned


# -- failures and teardown ----------------------------------------------------------------------
def _flow(m: Machine) -> None:
    vm = HwvVm(m, DEV, area=NPAGES * PAGE)
    vm.stale_guest()
    q = GuestCmdBuf(vm)
    q.invalidate()
    assert m.dma_read(DEV, GVA, 4) == b"NEW!"


def test_fail_nth_sweep() -> None:
    """Every allocation of the flow (GuestID tables, the mmap, queue pins, nested
    domains) fails cleanly: an injected errno, nothing left behind."""
    def run(m: Machine, arm: Callable[[], None]) -> None:
        arm()
        _flow(m)

    def unmap_all(m: Machine, n: int) -> None:
        # The VF page's mapping holds the iommufd open past close_all, as in Linux.
        m.munmap(0, TASK_SIZE)

    assert fail_nth_sweep(lambda: machine(DEV), run, unmap_all) > 20


def test_destroy_paths_reach_no_point() -> None:
    m = machine(DEV)
    _flow(m)
    m.fail_nth = 1
    m.close_all()
    m.munmap(0, TASK_SIZE)
    assert m.fail_nth == 1
    assert m.kernel_pages_in_use == m.kernel_pages_baseline and m.mm.pinned_pages == 0
    m.shutdown()

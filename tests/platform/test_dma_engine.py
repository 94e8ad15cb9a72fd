"""The DMA engine behind BAR0 of every simulated PCI function, driven through VFIO alone
(pread/pwrite of the region, mmap, SET_IRQS): its register map, transfers through each
vendor's IOMMU on the path ``Machine.dma_read`` takes, faults with the IOMMU's own code and
where the IOMMU reports them, interrupts, and bad programming that changes nothing but the
error status."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from iommu_core.platform import dma_engine as E
from iommu_core.platform import pci as P
from iommu_core.platform.dma import DmaFault
from iommu_sim import Machine
from iommu_sim.dma_engine import DmaEngineError, DmaResult, VfioDmaEngine
from iommufd import uapi as u
from iommufd import uapi_vfio as vf
from tests.iommufd.test_vfio_pci import errno_of

DEV = "0000:00:01.0"
IOVA = 0x10000
VENDORS = ["arm_smmu_v3", "intel_vtd", "amd_vi"]
CFG = 7 << 40


class Vm:
    """One device behind one IOMMU, bound, attached to a paging HWPT over 4 pages of user
    memory at IOVA 0x10000; its engine enabled (Bus Master, MSI on an eventfd)."""

    def __init__(self, driver: str = "arm_smmu_v3", **dev_opts: Any) -> None:
        self.m = m = Machine.from_config({
            "iommus": [{"name": "u0", "driver": driver}],
            "devices": [{"name": DEV, "iommu": "u0", **dev_opts}]})
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = vf.vfio_device_bind_iommufd(argsz=24, iommufd=self.fd)
        m.ioctl(self.vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, bind)
        ioas = u.iommu_ioas_alloc(size=12)
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.mem = m.mmap(4 * 4096)
        m.ioctl(self.fd, u.IOMMU_IOAS_MAP, u.iommu_ioas_map(
            size=40, ioas_id=ioas.out_ioas_id, user_va=self.mem, length=4 * 4096, iova=IOVA,
            flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
            | u.IOMMU_IOAS_MAP_WRITEABLE))
        hwpt = u.iommu_hwpt_alloc(size=48, dev_id=bind.out_devid, pt_id=ioas.out_ioas_id)
        m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, hwpt)
        m.ioctl(self.vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                vf.vfio_device_attach_iommufd_pt(argsz=16, pt_id=hwpt.out_hwpt_id))
        self.eng = VfioDmaEngine(m, self.vfd)
        self.eng.enable()

    @property
    def pdev(self) -> P.PciFunction:
        pdev = self.m.device(DEV).pci
        assert pdev is not None
        return pdev

    @property
    def model(self) -> E.DmaEngine:
        ops = self.pdev.bars[0].ops  # type: ignore[union-attr]
        assert isinstance(ops, E.DmaEngine)
        return ops

    def close(self) -> None:
        self.eng.close()
        self.m.close(self.vfd)
        self.m.close(self.fd)
        self.m.shutdown()
        assert self.m.kernel_pages_in_use == 0


@pytest.fixture
def vm() -> Iterator[Vm]:
    v = Vm()
    yield v
    v.close()


def regs(v: Vm) -> bytes:
    """The register page as a driver reads it."""
    return v.m.pread(v.vfd, E.DMA_BUF_OFFSET, 0)


# -- the register map -----------------------------------------------------------------------
def test_register_map_at_power_on(vm: Vm) -> None:
    e = vm.eng
    assert e.read_reg(E.DMA_ID) == 0x0100_8E5A
    assert e.read_reg(E.DMA_BUF_SIZE_REG) == 0x1000
    for off in (E.DMA_CTRL, E.DMA_STATUS, E.DMA_IRQ_STATUS, E.DMA_COUNT, E.DMA_ERROR,
                E.DMA_PASID, E.DMA_CMD, E.DMA_IRQ_ACK):
        assert e.read_reg(off) == 0, hex(off)
    for off in (E.DMA_SRC, E.DMA_DST, E.DMA_LEN, E.DMA_ERR_ADDR):
        assert e.read_reg(off, 8) == 0, hex(off)
    page = regs(vm)
    assert page[0x100:] == bytes(0xF00) and page[0x10:0x20] == bytes(16)  # reserved
    assert page == vm.model.snapshot(0, E.DMA_BUF_OFFSET)  # the exec shadow's view
    assert e.buffer() == bytes(4096)
    assert e.read_reg(E.DMA_SCRATCH) == 0xFFFF_FFFF  # the inverse of 0


def test_register_widths_and_byte_enables(vm: Vm) -> None:
    e = vm.eng
    e.write_reg(E.DMA_SCRATCH, 0x1234_5678)
    assert e.read_reg(E.DMA_SCRATCH) == 0xEDCB_A987
    e.write_reg(E.DMA_SCRATCH + 1, 0xAA, 1)  # one byte of the stored value
    assert e.read_reg(E.DMA_SCRATCH) == 0xEDCB_55_87
    assert e.read_reg(E.DMA_SCRATCH + 2, 2) == 0xEDCB
    # 64-bit registers: whole, or by 32-bit halves, or by bytes
    e.write_reg(E.DMA_SRC, 0x1122_3344_5566_7788, 8)
    e.write_reg(E.DMA_SRC + 4, 0xCAFE_F00D)
    assert e.read_reg(E.DMA_SRC, 8) == 0xCAFE_F00D_5566_7788
    e.write_reg(E.DMA_SRC, 0x99, 1)
    assert e.read_reg(E.DMA_SRC, 8) == 0xCAFE_F00D_5566_7799
    # read-only and reserved registers ignore writes; PASID keeps its defined bits
    for off in (E.DMA_ID, E.DMA_STATUS, E.DMA_COUNT, E.DMA_ERROR, 0x10, 0x200, 0xFFC):
        before = e.read_reg(off)
        e.write_reg(off, 0xFFFF_FFFF)
        assert e.read_reg(off) == before, hex(off)
    e.write_reg(E.DMA_PASID, 0xFFFF_FFFF)
    assert e.read_reg(E.DMA_PASID) == E.DMA_PASID_VALID | E.DMA_PASID_MASK
    e.write_reg(E.DMA_CTRL, 0xFFFF_FFFF)
    assert e.read_reg(E.DMA_CTRL) == E.DMA_CTRL_PAUSE
    # the buffer: any width, any alignment
    vm.m.pwrite(vm.vfd, bytes(range(1, 16)), E.DMA_BUF_OFFSET + 0xFF1)
    assert e.buffer(0xFF0, 16) == bytes(range(16))


# -- transfers ----------------------------------------------------------------------------
@pytest.mark.parametrize("driver", VENDORS)
def test_transfers_take_the_path_of_machine_dma(driver: str) -> None:
    v = Vm(driver)
    m, e = v.m, v.eng
    m.mem_write(v.mem + 0x1230, b"user memory")
    assert e.dma_read(IOVA + 0x1230, 11) == b"user memory" == m.dma_read(DEV, IOVA + 0x1230, 11)
    # a transfer across a page boundary, from the buffer at an offset
    e.fill(0x700, b"x" * 0x20)
    r = e.run(0x700, IOVA + 0x1FF0, 0x20, from_device=True, irq=True)
    assert r.ok and str(r) == "done"
    assert m.mem_read(v.mem + 0x1FF0, 0x20) == b"x" * 0x20
    assert e.read_reg(E.DMA_COUNT) == 2
    assert e.read_reg(E.DMA_IRQ_STATUS) == E.DMA_IRQ_DONE and e.interrupts() == 1
    e.write_reg(E.DMA_IRQ_ACK, E.DMA_IRQ_DONE)
    assert e.read_reg(E.DMA_IRQ_STATUS) == 0 and e.interrupts() == 0
    v.close()


@pytest.mark.parametrize("driver", VENDORS)
def test_a_fault_carries_the_iommus_code_and_address(driver: str) -> None:
    v = Vm(driver)
    e = v.eng
    bad = IOVA + 0x9000
    with pytest.raises(DmaFault) as f:
        v.m.dma_read(DEV, bad, 4)
    assert f.value.code  # the hardware's number for its reason
    before = e.buffer()
    r = e.run(bad, 0, 4, irq=True)
    assert r.status == E.DMA_STATUS_ERROR and r.kind == E.ERR_FAULT
    assert r.code == f.value.code and r.err_addr == bad
    assert e.buffer() == before  # a faulting transfer moves nothing
    assert e.read_reg(E.DMA_IRQ_STATUS) == E.DMA_IRQ_ERROR and e.interrupts() == 1
    # a write whose second page faults writes nothing at all
    v.m.mem_write(v.mem + 0x3FF0, b"\xaa" * 16)
    r = e.run(0, IOVA + 0x3FF0, 0x20, from_device=True)
    assert r.kind == E.ERR_FAULT and r.err_addr == IOVA + 0x4000
    assert v.m.mem_read(v.mem + 0x3FF0, 16) == b"\xaa" * 16
    with pytest.raises(DmaEngineError) as err:
        e.dma_read(bad, 4)
    assert err.value.result.code == f.value.code
    # the next good START clears the error
    assert e.run(IOVA, 0, 4).ok and e.read_reg(E.DMA_ERROR) == 0
    v.close()


def test_bus_master_off_stops_the_engine(vm: Vm) -> None:
    e = vm.eng
    cmd = int.from_bytes(vm.m.pread(vm.vfd, 2, CFG + P.PCI_COMMAND), "little")
    vm.m.pwrite(vm.vfd, (cmd & ~P.PCI_COMMAND_MASTER).to_bytes(2, "little"),
                CFG + P.PCI_COMMAND)
    r = e.run(IOVA, 0, 4)
    assert r.kind == E.ERR_BUS_MASTER and r.status == E.DMA_STATUS_ERROR
    e.enable(msi=False)
    assert e.run(IOVA, 0, 4).ok


def test_pause_holds_a_transfer_busy(vm: Vm) -> None:
    e, m = vm.eng, vm.m
    m.mem_write(vm.mem, b"before")
    e.write_reg(E.DMA_CTRL, E.DMA_CTRL_PAUSE)
    r = e.run(IOVA, 0, 6, irq=True)
    assert r.busy and r.status == E.DMA_STATUS_BUSY and e.interrupts() == 0
    # the transfer was latched: changing the registers now does not change it
    e.write_reg(E.DMA_SRC, IOVA + 0x1000, 8)
    m.mem_write(vm.mem, b"after!")
    e.write_reg(E.DMA_CTRL, 0)
    assert e.result().ok and e.buffer(0, 6) == b"after!" and e.interrupts() == 1


# -- bad programming ----------------------------------------------------------------------
def _state(v: Vm) -> tuple[bytes, bytes, bytes, int]:
    page = bytearray(regs(v))
    page[E.DMA_STATUS:E.DMA_STATUS + 4] = bytes(4)
    page[E.DMA_ERROR:E.DMA_ERROR + 4] = bytes(4)
    return (bytes(page), v.eng.buffer(), v.m.mem_read(v.mem, 4 * 4096),
            v.pdev.cfg.read(P.PCI_STATUS, 2))


@pytest.mark.parametrize(("setup", "cmd", "kind"), [
    ({E.DMA_LEN: 0}, E.DMA_CMD_START, E.ERR_LENGTH),
    ({E.DMA_LEN: 0x1001}, E.DMA_CMD_START, E.ERR_LENGTH),
    ({E.DMA_LEN: 0x10, E.DMA_DST: 0xFF8}, E.DMA_CMD_START, E.ERR_LENGTH),
    ({E.DMA_LEN: 0x10, E.DMA_SRC: 0xFF8}, E.DMA_CMD_START | E.DMA_CMD_FROM_DEVICE,
     E.ERR_LENGTH),
    ({E.DMA_LEN: 0x10, E.DMA_DST: 1 << 40}, E.DMA_CMD_START, E.ERR_LENGTH),
    ({E.DMA_LEN: 0x10, E.DMA_SRC: (1 << 64) - 8}, E.DMA_CMD_START, E.ERR_LENGTH),
    ({E.DMA_LEN: 4}, E.DMA_CMD_START | 1 << 3, E.ERR_COMMAND),
    ({E.DMA_LEN: 4}, 1 << 31, E.ERR_COMMAND),
    ({E.DMA_LEN: 4, E.DMA_PASID: E.DMA_PASID_VALID | 0xFFFFF}, E.DMA_CMD_START, None),
])
def test_bad_programming_sets_the_error_and_nothing_else(setup: dict[int, int], cmd: int,
                                                         kind: int | None) -> None:
    v = Vm(pasid_bits=8)  # PASIDs 0-255
    e = v.eng
    e.write_reg(E.DMA_SRC, IOVA, 8)
    for off, val in setup.items():
        e.write_reg(off, val, 4 if off == E.DMA_PASID else 8)
    assert e.run(IOVA, 0x20, 4, irq=True).ok  # a DONE, a count and an IRQ status to keep
    assert e.interrupts() == 1
    for off, val in setup.items():
        e.write_reg(off, val, 4 if off == E.DMA_PASID else 8)
    before = _state(v)
    e.write_reg(E.DMA_CMD, cmd | E.DMA_CMD_IRQ)
    r = e.result()
    assert r.status == E.DMA_STATUS_DONE | E.DMA_STATUS_ERROR  # DONE as it was
    assert r.kind == (E.ERR_PASID if kind is None else kind) and r.code == 0
    assert _state(v) == before and e.interrupts() == 0  # no transfer, no interrupt
    v.close()


def test_start_while_busy_is_refused(vm: Vm) -> None:
    e = vm.eng
    e.write_reg(E.DMA_CTRL, E.DMA_CTRL_PAUSE)
    assert e.run(IOVA, 0, 4).busy
    pending = vm.model.pending
    count = e.read_reg(E.DMA_COUNT)
    e.write_reg(E.DMA_CMD, E.DMA_CMD_START | E.DMA_CMD_FROM_DEVICE)
    r = e.result()
    assert r.status == E.DMA_STATUS_BUSY | E.DMA_STATUS_ERROR and r.kind == E.ERR_BUSY
    assert vm.model.pending is pending and e.read_reg(E.DMA_COUNT) == count
    e.write_reg(E.DMA_CTRL, 0)  # the held transfer still runs, and says so
    assert e.result().ok and e.read_reg(E.DMA_COUNT) == count + 1


def test_a_pasid_the_function_lacks_is_refused() -> None:
    v = Vm(pasid_bits=0)
    r = v.eng.run(IOVA, 0, 4, pasid=0)
    assert r.kind == E.ERR_PASID and not r.busy
    v.close()


@settings(max_examples=40, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 0x1FFF), hs.sampled_from([1, 2, 4, 8]),
                          hs.integers(0, (1 << 64) - 1)), max_size=40))
def test_no_register_write_ever_fails(ops: list[tuple[int, int, int]]) -> None:
    # Any sequence of accesses: pwrite succeeds (no Python exception, no errno), and the
    # engine's invariants hold: STATUS has only its bits, BUSY exactly while a transfer is
    # held, an interrupt status only with a transfer that finished.
    v = Vm()
    model = v.model
    try:
        for off, size, value in ops:
            off -= off % size
            data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
            assert v.m.pwrite(v.vfd, data, off) == size
            status = v.eng.read_reg(E.DMA_STATUS)
            assert not status & ~7
            assert bool(status & E.DMA_STATUS_BUSY) == (model.pending is not None)
            assert not v.eng.read_reg(E.DMA_IRQ_STATUS) & ~3
            if v.eng.read_reg(E.DMA_IRQ_STATUS):
                assert model.count
    finally:
        v.close()


# -- interrupts -----------------------------------------------------------------------------
def _irq_set(v: Vm, index: int, flags: int, start: int = 0, count: int = 1,
             data: bytes = b"") -> int:
    arg = bytearray(vf.vfio_irq_set(argsz=20 + len(data), flags=flags, index=index,
                                    start=start, count=count)) + data
    return errno_of(v.m.ioctl, v.vfd, vf.VFIO_DEVICE_SET_IRQS, arg)


def test_masked_msi_is_pending_until_unmasked(vm: Vm) -> None:
    msi = vm.pdev.msi_cap
    mask = CFG + msi + P.PCI_MSI_MASK_64
    vm.m.pwrite(vm.vfd, (1).to_bytes(4, "little"), mask)
    assert vm.eng.run(IOVA, 0, 4, irq=True).ok
    assert vm.eng.interrupts() == 0
    assert vm.pdev.config_read(msi + P.PCI_MSI_PENDING_64, 4) == 1
    vm.m.pwrite(vm.vfd, (0).to_bytes(4, "little"), mask)
    assert vm.eng.interrupts() == 1
    assert vm.pdev.config_read(msi + P.PCI_MSI_PENDING_64, 4) == 0


def test_intx_is_level_and_auto_masked_until_unmask() -> None:
    v = Vm()
    m, e = v.m, v.eng
    trig = vf.VFIO_IRQ_SET_ACTION_TRIGGER
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_EVENTFD | trig,
                    data=(5).to_bytes(4, "little")) == errno.EINVAL  # MSI is in use
    e.close()
    assert _irq_set(v, vf.VFIO_PCI_MSI_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_NONE | trig,
                    count=0) == 0  # MSI off
    efd = m.eventfd()
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_EVENTFD | trig,
                    data=efd.to_bytes(4, "little")) == 0
    pdev = v.pdev
    assert not pdev.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    assert e.run(IOVA, 0, 4, irq=True).ok
    assert m.read(efd, 8) == (1).to_bytes(8, "little")
    # the handler masked the line (Interrupt Disable) while the device holds it
    assert pdev.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    assert pdev.config_read(P.PCI_STATUS, 2) & P.PCI_STATUS_INTERRUPT
    # unmask while still asserted: vfio signals again and stays masked
    unmask = vf.VFIO_IRQ_SET_DATA_NONE | vf.VFIO_IRQ_SET_ACTION_UNMASK
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, unmask) == 0
    assert m.read(efd, 8) == (1).to_bytes(8, "little")
    # the driver acknowledges: the device drops INTx; unmask now unmasks
    e.write_reg(E.DMA_IRQ_ACK, E.DMA_IRQ_DONE)
    assert not pdev.config_read(P.PCI_STATUS, 2) & P.PCI_STATUS_INTERRUPT
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, unmask) == 0
    assert not pdev.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    assert errno_of(m.read, efd, 8) == errno.EAGAIN
    # an unmask eventfd: writing it unmasks (an irqfd), as KVM's resampler would
    ufd = m.eventfd()
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_EVENTFD
                    | vf.VFIO_IRQ_SET_ACTION_UNMASK, data=ufd.to_bytes(4, "little")) == 0
    assert _irq_set(v, vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_EVENTFD
                    | vf.VFIO_IRQ_SET_ACTION_UNMASK, data=ufd.to_bytes(4, "little")) == (
        errno.EBUSY)
    assert e.run(IOVA, 0, 4, irq=True).ok
    assert m.read(efd, 8) == (1).to_bytes(8, "little")
    e.write_reg(E.DMA_IRQ_ACK, E.DMA_IRQ_DONE)
    m.write(ufd, (1).to_bytes(8, "little"))
    assert not pdev.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    assert errno_of(m.read, ufd, 8) == errno.EAGAIN  # the irqfd consumed it
    # the virtual Interrupt Disable masks vfio's INTx too
    cmd = int.from_bytes(m.pread(v.vfd, 2, CFG + P.PCI_COMMAND), "little")
    m.pwrite(v.vfd, (cmd | P.PCI_COMMAND_INTX_DISABLE).to_bytes(2, "little"),
             CFG + P.PCI_COMMAND)
    assert e.run(IOVA, 0, 4, irq=True).ok
    assert errno_of(m.read, efd, 8) == errno.EAGAIN
    m.close(efd)
    m.close(ufd)
    v.close()


def test_close_disables_interrupts_and_drops_the_eventfds(vm: Vm) -> None:
    m = vm.m
    task = m.task
    efd_file = task.files.get(vm.eng.eventfd)
    err = m.eventfd()
    err_file = task.files.get(err)
    assert _irq_set(vm, vf.VFIO_PCI_ERR_IRQ_INDEX, vf.VFIO_IRQ_SET_DATA_EVENTFD
                    | vf.VFIO_IRQ_SET_ACTION_TRIGGER, data=err.to_bytes(4, "little")) == 0
    assert efd_file.f_count == 2 and err_file.f_count == 2
    m.close(vm.vfd)
    assert efd_file.f_count == 1 and err_file.f_count == 1
    assert not vm.pdev.msi_enabled() and vm.pdev.msi_irq.handler is None
    assert vm.model.status == 0  # the function was reset
    vm.vfd = m.open(m.vfio_cdev(DEV))  # for the fixture's close
    m.close(err)


# -- mmap of BAR0 ----------------------------------------------------------------------------
def test_mapped_registers_are_the_device(vm: Vm) -> None:
    m = vm.m
    va = m.mmap(E.DMA_BAR_SIZE, vm.vfd, 0)
    m.mem_write(vm.mem + 0x40, b"mapped")
    m.mem_write(va + E.DMA_SRC, (IOVA + 0x40).to_bytes(8, "little"))
    m.mem_write(va + E.DMA_DST, (0x10).to_bytes(8, "little"))
    m.mem_write(va + E.DMA_LEN, (6).to_bytes(8, "little"))
    m.mem_write(va + E.DMA_CMD, E.DMA_CMD_START.to_bytes(4, "little"))
    assert m.mem_read(va + E.DMA_STATUS, 4) == E.DMA_STATUS_DONE.to_bytes(4, "little")
    assert m.mem_read(va + E.DMA_BUF_OFFSET + 0x10, 6) == b"mapped"
    m.munmap(va, E.DMA_BAR_SIZE)


def test_the_engine_dma_shows_in_the_call_tree(vm: Vm) -> None:
    with vm.m.trace() as t:
        assert vm.eng.run(IOVA, 0, 4).ok
    text = t.render()
    assert "dma_engine" in text and "read iova 0x10000 len 4" in text


def test_reset_returns_the_engine_to_power_on(vm: Vm) -> None:
    e = vm.eng
    e.fill(0, b"junk")
    assert e.run(IOVA, 0x10, 4).ok
    vm.m.ioctl(vm.vfd, vf.VFIO_DEVICE_RESET, 0)
    assert e.buffer(0, 0x20) == bytes(0x20) and e.read_reg(E.DMA_STATUS) == 0
    assert e.read_reg(E.DMA_COUNT) == 0 and e.read_reg(E.DMA_SRC, 8) == 0


def test_dma_result_text() -> None:
    r = DmaResult(E.DMA_STATUS_ERROR, E.ERR_FAULT | 0x10 << 16, 0x1000)
    assert str(r) == "status 0x4: fault, code 0x10 at 0x1000" and not r.ok


def test_a_device_config_can_leave_the_engine_out() -> None:
    m = Machine.from_config({"iommus": [{"name": "u0", "driver": "intel_vtd"}],
                             "devices": [{"name": DEV, "iommu": "u0", "dma_engine": False}]})
    assert m.device(DEV).bars == () and m.device(DEV).dma_engine is False
    with pytest.raises(OSError) as e:
        Machine.from_config({"iommus": [{"name": "u0", "driver": "intel_vtd"}],
                             "devices": [{"name": DEV, "iommu": "u0", "dma_engine": True,
                                          "bars": (P.PciBar(E.DmaEngine(m.device(DEV)),
                                                            0x1000),)}]})
    assert e.value.errno == errno.EINVAL
    m.shutdown()


def test_a_page_request_is_answered_then_the_transfer_restarted() -> None:
    # Nested on an SMMUv3 with ATS and PRI: the engine's read of a page the guest never
    # mapped becomes a page request on the fault fd, not an abort; the VMM answers it and
    # the program starts the transfer again.
    from tests.arm_smmu_v3.test_machine import GVA, RW, nested_setup
    from tests.arm_smmu_v3.vmm import Vmm

    vmm = Vmm()
    fault_id, ffd = vmm.fault_alloc()
    _parent, _viommu, nested, s1 = nested_setup(vmm, ats=True, fault_id=fault_id)
    vmm.attach(nested)
    eng = VfioDmaEngine(vmm.m, vmm.vfds[DEV])
    eng.enable()
    r = eng.run(GVA + 0x7000, 0, 5, irq=True)
    assert r.kind == E.ERR_PAGE_REQUEST and r.err_addr == GVA + 0x7000
    assert eng.interrupts() == 1
    pf = u.iommu_hwpt_pgfault.from_buffer_copy(vmm.m.read(ffd, 40))
    assert pf.addr == GVA + 0x7000 and pf.dev_id == vmm.dev_id
    vmm.m.mem_write(vmm.ram_va + 0x30000, b"paged")
    s1.map(GVA + 0x7000, 0x30000, 4096, RW)  # type: ignore[attr-defined]
    resp = u.iommu_hwpt_page_response(cookie=pf.cookie, code=u.IOMMUFD_PAGE_RESP_SUCCESS)
    vmm.m.write(ffd, bytes(resp))
    assert eng.dma_read(GVA + 0x7000, 5) == b"paged"
    eng.close()
    vmm.close()
    assert vmm.m.kernel_pages_in_use == 0


def test_a_reset_keeps_msi_working(vm: Vm) -> None:
    # pci_try_reset_function restores the MSI state vfio set up (pci_restore_msi_state)
    vm.m.ioctl(vm.vfd, vf.VFIO_DEVICE_RESET, 0)
    assert vm.pdev.msi_enabled()
    vm.eng.enable(msi=False)  # the reset restored Bus Master too; idempotent
    assert vm.eng.run(IOVA, 0, 4, irq=True).ok and vm.eng.interrupts() == 1

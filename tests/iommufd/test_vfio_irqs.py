"""VFIO_DEVICE_SET_IRQS as Linux 7.3 answers it (vfio_main.c's
``vfio_set_irqs_validate_and_prepare``, vfio_pci_intrs.c): the checks in order with their
errnos, eventfds taken and dropped like ``eventfd_ctx_fdget``/``eventfd_ctx_put``, the
loopback triggers, and what the function's MSI capability shows."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommu_core.platform import pci as P
from iommu_sim import Machine
from iommufd import uapi_vfio as vf

from .test_vfio_pci import DEV, Vfio, errno_of

INTX, MSI, MSIX, ERR, REQ = (vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_PCI_MSI_IRQ_INDEX,
                             vf.VFIO_PCI_MSIX_IRQ_INDEX, vf.VFIO_PCI_ERR_IRQ_INDEX,
                             vf.VFIO_PCI_REQ_IRQ_INDEX)
NONE, BOOL, EVENTFD = (vf.VFIO_IRQ_SET_DATA_NONE, vf.VFIO_IRQ_SET_DATA_BOOL,
                       vf.VFIO_IRQ_SET_DATA_EVENTFD)
MASK, UNMASK, TRIGGER = (vf.VFIO_IRQ_SET_ACTION_MASK, vf.VFIO_IRQ_SET_ACTION_UNMASK,
                         vf.VFIO_IRQ_SET_ACTION_TRIGGER)


@pytest.fixture
def v() -> Iterator[Vfio]:
    m = Machine.from_config({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                             "devices": [{"name": DEV, "iommu": "smmu0"}]})
    u = Vfio(m)
    yield u
    m.shutdown()
    assert m.kernel_pages_in_use == 0


def set_irqs(v: Vfio, index: int, flags: int, start: int = 0, count: int = 1,
             data: bytes = b"", argsz: int | None = None) -> int:
    arg = bytearray(vf.vfio_irq_set(argsz=20 + len(data) if argsz is None else argsz,
                                    flags=flags, index=index, start=start, count=count))
    return errno_of(v.m.ioctl, v.fd, vf.VFIO_DEVICE_SET_IRQS, arg + data)


def fd32(*fds: int) -> bytes:
    return b"".join(fd.to_bytes(4, "little", signed=True) for fd in fds)


def signals(v: Vfio, efd: int) -> int:
    try:
        return int.from_bytes(v.m.read(efd, 8), "little")
    except OSError as e:
        assert e.errno == errno.EAGAIN
        return 0


def test_header_checks_in_order(v: Vfio) -> None:
    efd = v.m.eventfd()
    ok = fd32(efd)
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=ok, argsz=19) == errno.EINVAL
    assert set_irqs(v, 5, EVENTFD | TRIGGER, data=ok) == errno.EINVAL  # index
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, start=1, count=0xFFFF_FFFE,
                    data=ok) == errno.EINVAL  # count >= U32_MAX - start
    assert set_irqs(v, MSI, EVENTFD | TRIGGER | 1 << 6, data=ok) == errno.EINVAL  # flags
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, start=1, data=ok) == errno.EINVAL  # range
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, count=2, data=ok + ok) == errno.EINVAL
    assert set_irqs(v, MSIX, NONE | TRIGGER, count=0) == errno.EINVAL  # no MSI-X vectors
    assert set_irqs(v, MSI, EVENTFD | BOOL | TRIGGER, data=ok) == errno.EINVAL  # two types
    assert set_irqs(v, MSI, TRIGGER, data=ok) == errno.EINVAL  # no type
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, argsz=23, data=ok[:3]) == errno.EINVAL
    # the data is read from user memory only after the checks
    assert errno_of(v.m.ioctl, v.fd, vf.VFIO_DEVICE_SET_IRQS, bytearray(12)) == errno.EFAULT
    short = bytearray(vf.vfio_irq_set(argsz=24, flags=EVENTFD | TRIGGER, index=MSI, count=1))
    assert errno_of(v.m.ioctl, v.fd, vf.VFIO_DEVICE_SET_IRQS, short) == errno.EFAULT
    # a valid header with no handler for the action: ENOTTY
    assert set_irqs(v, MSI, NONE | MASK) == errno.ENOTTY
    assert set_irqs(v, ERR, NONE | UNMASK) == errno.ENOTTY
    assert set_irqs(v, INTX, EVENTFD | TRIGGER | MASK, data=ok) == errno.ENOTTY  # two actions
    v.m.close(efd)


def test_msi_enable_signal_loopback_disable(v: Vfio) -> None:
    m, hw = v.m, v.hw
    efd = m.eventfd()
    assert set_irqs(v, MSI, NONE | TRIGGER) == errno.EINVAL  # not enabled yet
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(99)) == errno.EBADF
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(v.iommufd)) == errno.EINVAL
    assert not hw.msi_enabled()  # a failed enable leaves MSI off
    f = m.task.files.get(efd)
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(efd)) == 0
    assert f.f_count == 2 and hw.msi_enabled()
    assert hw.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE  # INTx off
    flags = hw.config_read(hw.msi_cap + P.PCI_MSI_FLAGS, 2)
    assert flags & P.PCI_MSI_FLAGS_ENABLE and not flags & P.PCI_MSI_FLAGS_QSIZE
    assert hw.config_read(hw.msi_cap + P.PCI_MSI_ADDRESS_LO, 4) == P.MSI_ADDRESS
    # what the user reads is virtual: its own (zero) address, the vectors vfio enabled
    assert v.cfg_read(0x50 + P.PCI_MSI_ADDRESS_LO, 4) == 0
    # loopback: DATA_NONE and DATA_BOOL trigger the eventfd
    assert set_irqs(v, MSI, NONE | TRIGGER) == 0 and signals(v, efd) == 1
    assert set_irqs(v, MSI, BOOL | TRIGGER, data=b"\0") == 0 and signals(v, efd) == 0
    assert set_irqs(v, MSI, BOOL | TRIGGER, data=b"\1") == 0 and signals(v, efd) == 1
    # another type while MSI is on: EINVAL
    assert set_irqs(v, INTX, EVENTFD | TRIGGER, data=fd32(efd)) == errno.EINVAL
    # a new eventfd replaces the old; -1 de-assigns the vector, MSI stays on
    efd2 = m.eventfd()
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(efd2)) == 0
    assert f.f_count == 1
    hw.raise_irq()
    assert signals(v, efd2) == 1 and signals(v, efd) == 0
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(-1)) == 0
    hw.raise_irq()
    assert signals(v, efd2) == 0 and hw.msi_enabled()
    # count 0 with DATA_NONE disables: MSI off, INTx back
    assert set_irqs(v, MSI, NONE | TRIGGER, count=0) == 0
    assert not hw.msi_enabled()
    assert not hw.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    m.close(efd)
    m.close(efd2)


def test_a_bad_eventfd_on_enable_leaves_nothing(v: Vfio) -> None:
    # vfio_msi_enable, then the vector's eventfd fails: MSI is disabled again
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(v.fd)) == errno.EINVAL
    assert not v.hw.msi_enabled() and v.hw.msi_irq.handler is None
    assert set_irqs(v, INTX, NONE | TRIGGER) == errno.EINVAL  # and no type is enabled


def test_intx_rules(v: Vfio) -> None:
    m, hw = v.m, v.hw
    efd = m.eventfd()
    for action in (MASK, UNMASK):
        assert set_irqs(v, INTX, NONE | action) == errno.EINVAL  # INTx not enabled
    assert set_irqs(v, INTX, NONE | TRIGGER) == errno.EINVAL
    assert set_irqs(v, INTX, EVENTFD | TRIGGER, data=fd32(efd)) == 0
    assert set_irqs(v, INTX, EVENTFD | MASK, data=fd32(efd)) == errno.ENOTTY  # "XXX"
    # loopback, mask (the function's Interrupt Disable), unmask
    assert set_irqs(v, INTX, NONE | TRIGGER) == 0 and signals(v, efd) == 1
    assert set_irqs(v, INTX, BOOL | MASK, data=b"\1") == 0
    assert hw.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    hw.raise_irq()
    assert signals(v, efd) == 0  # masked: the level waits
    assert set_irqs(v, INTX, NONE | UNMASK) == 0  # still asserted: sent again, stays masked
    assert signals(v, efd) == 1
    hw.lower_irq()
    assert set_irqs(v, INTX, NONE | UNMASK) == 0
    assert not hw.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE
    assert set_irqs(v, MSI, EVENTFD | TRIGGER, data=fd32(efd)) == errno.EINVAL  # INTx on
    # the eventfd can be swapped for none (-1) and INTx disabled
    assert set_irqs(v, INTX, EVENTFD | TRIGGER, data=fd32(-1)) == 0
    assert set_irqs(v, INTX, NONE | TRIGGER, count=0) == 0
    assert hw.intx_irq.handler is None
    m.close(efd)


def test_a_virtual_function_has_no_intx() -> None:
    m = Machine.from_config({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                             "devices": [{"name": DEV, "iommu": "smmu0", "is_virtfn": True}]})
    u = Vfio(m)
    efd = m.eventfd()
    assert set_irqs(u, INTX, EVENTFD | TRIGGER, data=fd32(efd)) == errno.EINVAL  # count 0
    assert set_irqs(u, MSI, EVENTFD | TRIGGER, data=fd32(efd)) == 0
    m.shutdown()


@pytest.mark.parametrize("index", [ERR, REQ])
def test_err_and_req_triggers(v: Vfio, index: int) -> None:
    m = v.m
    efd = m.eventfd()
    assert set_irqs(v, index, NONE | TRIGGER) == errno.EINVAL  # nothing to signal
    assert set_irqs(v, index, EVENTFD | TRIGGER, count=0) == errno.EINVAL
    assert set_irqs(v, index, EVENTFD | TRIGGER, data=fd32(-2)) == errno.EINVAL
    assert set_irqs(v, index, EVENTFD | TRIGGER, data=fd32(efd)) == 0
    assert set_irqs(v, index, NONE | TRIGGER) == 0 and signals(v, efd) == 1
    assert set_irqs(v, index, BOOL | TRIGGER, data=b"\1") == 0 and signals(v, efd) == 1
    assert set_irqs(v, index, BOOL | TRIGGER, count=0) == errno.EINVAL
    assert set_irqs(v, index, NONE | TRIGGER, count=0) == 0  # removes it
    assert set_irqs(v, index, NONE | TRIGGER) == errno.EINVAL
    assert m.task.files.get(efd).f_count == 1
    m.close(efd)


def test_eventfd_as_eventfd2_says() -> None:
    from iommu_core.platform.eventfd import EFD_NONBLOCK, EFD_SEMAPHORE

    m = Machine.from_config({"iommus": [], "devices": []})
    assert errno_of(m.eventfd, 0, 1 << 5) == errno.EINVAL
    efd = m.eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK)
    assert m.poll(efd) & 1
    assert [m.read(efd, 8) for _ in range(3)] == [(1).to_bytes(8, "little")] * 3
    assert errno_of(m.read, efd, 8) == errno.EAGAIN and errno_of(m.read, efd, 7) == errno.EINVAL
    assert m.write(efd, (5).to_bytes(8, "little")) == 8
    assert errno_of(m.write, efd, b"\xff" * 8) == errno.EINVAL
    assert errno_of(m.write, efd, (2**64 - 6).to_bytes(8, "little")) == errno.EAGAIN
    assert errno_of(m.write, efd, b"\1") == errno.EINVAL
    assert errno_of(m.pread, efd, 8, 0) == errno.ESPIPE
    plain = m.eventfd()
    assert not m.poll(plain) & 1 and m.poll(plain) & 4
    m.write(plain, (7).to_bytes(8, "little"))
    assert m.read(plain, 16) == (7).to_bytes(8, "little")  # the whole count, once
    m.shutdown()

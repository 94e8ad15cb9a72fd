"""vfio-pci interrupts (``drivers/vfio/pci/vfio_pci_intrs.c``): VFIO_DEVICE_SET_IRQS.

The device's interrupts reach user space as eventfd signals: INTx (level, auto-masked with
the function's Interrupt Disable until the user unmasks it), MSI (one vector, an edge per
message), and the ERR and REQ triggers (which only the user's loopback ever fires here: no
AER, no device request). MSI-X does not exist on the simulated function, so its count is
0 and every SET_IRQS on it is EINVAL. The checks and errnos are 7.3's, in its order.

An unmask irqfd (ACTION_UNMASK with DATA_EVENTFD) is watched on the Machine's own eventfds
(a write to it unmasks); a program's eventfd under ``iommu-sim exec`` is accepted but never
watched.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform import pci as P
from iommu_core.platform.eventfd import EventFd, eventfd_ctx_fdget
from iommu_core.platform.files import POLLIN, File
from iommufd import uapi_vfio as vf

if TYPE_CHECKING:
    from iommufd.vfio_pci_core import VfioPciCoreDevice

U32_MAX = 0xFFFF_FFFF


class VfioPciIrqCtx:
    """``struct vfio_pci_irq_ctx``: one vector's trigger eventfd (and INTx's mask state and
    unmask irqfd)."""

    __slots__ = ("masked", "trigger", "unmask")

    def __init__(self) -> None:
        self.trigger: File | None = None
        self.masked = False
        self.unmask: Virqfd | None = None


class Virqfd:
    """``struct virqfd``: an eventfd the user signals to make the kernel act (unmask
    INTx); each wakeup consumes the counter. Only the Machine's eventfds wake it."""

    def __init__(self, eventfd: File, handler: Callable[[], int],
                 thread: Callable[[], None]) -> None:
        self.eventfd = eventfd
        self.handler = handler
        self.thread = thread
        if isinstance(eventfd, EventFd):
            eventfd.waiters.append(self.wakeup)
        if eventfd.poll() & POLLIN:  # an event already pending: as if we had not missed it
            self.wakeup()

    def wakeup(self) -> None:
        if isinstance(self.eventfd, EventFd):
            self.eventfd.do_read()
        if self.handler() > 0:
            self.thread()

    def release(self) -> None:
        if isinstance(self.eventfd, EventFd) and self.wakeup in self.eventfd.waiters:
            self.eventfd.waiters.remove(self.wakeup)
        self.eventfd.fput()


def _is_intx(vdev: VfioPciCoreDevice) -> bool:
    return vdev.irq_type == vf.VFIO_PCI_INTX_IRQ_INDEX


def _is_irq_none(vdev: VfioPciCoreDevice) -> bool:
    return vdev.irq_type not in (vf.VFIO_PCI_INTX_IRQ_INDEX, vf.VFIO_PCI_MSI_IRQ_INDEX,
                                 vf.VFIO_PCI_MSIX_IRQ_INDEX)


def _eventfd(vdev: VfioPciCoreDevice, fd: int) -> File:
    return eventfd_ctx_fdget(vdev.tasks.require_current().files, fd)


# -- INTx -----------------------------------------------------------------------------------
def vfio_send_intx_eventfd(vdev: VfioPciCoreDevice) -> None:
    ctx = vdev.ctx.get(0)
    if _is_intx(vdev) and not vdev.virq_disabled and ctx is not None and ctx.trigger:
        ctx.trigger.eventfd_signal()


def vfio_pci_intx_mask(vdev: VfioPciCoreDevice) -> bool:
    """``__vfio_pci_intx_mask``; True if the masked state changed. Without INTx in use the
    physical Interrupt Disable just follows the virtual one."""
    if not _is_intx(vdev):
        if vdev.pci_2_3:
            P.pci_intx(vdev.pdev, False)
        return False
    ctx = vdev.ctx[0]
    if ctx.masked:
        return False
    P.pci_intx(vdev.pdev, False)
    ctx.masked = True
    return True


def vfio_pci_intx_unmask_handler(vdev: VfioPciCoreDevice) -> int:
    """> 0 when the interrupt is still pending and must be sent again."""
    if not _is_intx(vdev):
        if vdev.pci_2_3:
            P.pci_intx(vdev.pdev, True)
        return 0
    ctx = vdev.ctx[0]
    ret = 0
    if ctx.masked and not vdev.virq_disabled:
        if not P.pci_check_and_unmask_intx(vdev.pdev):
            ret = 1
        ctx.masked = ret > 0
    return ret


def vfio_pci_intx_unmask(vdev: VfioPciCoreDevice) -> None:
    if vfio_pci_intx_unmask_handler(vdev) > 0:
        vfio_send_intx_eventfd(vdev)


def _vfio_intx_handler(vdev: VfioPciCoreDevice) -> None:
    ctx = vdev.ctx.get(0)
    if ctx is not None and not ctx.masked and P.pci_check_and_mask_intx(vdev.pdev):
        ctx.masked = True
        vfio_send_intx_eventfd(vdev)


def vfio_intx_enable(vdev: VfioPciCoreDevice, trigger: File | None) -> None:
    if not _is_irq_none(vdev):
        raise IommuError(errno.EINVAL, "another interrupt type is enabled")
    pdev = vdev.pdev
    if not pdev.irq:
        raise IommuError(errno.ENODEV, f"{pdev.name} has no INTx")
    ctx = vdev.ctx[0] = VfioPciIrqCtx()
    ctx.trigger = trigger
    ctx.masked = vdev.virq_disabled
    vdev.irq_type = vf.VFIO_PCI_INTX_IRQ_INDEX
    P.pci_intx(pdev, not ctx.masked)
    pdev.intx_irq.request_irq(lambda: _vfio_intx_handler(vdev))


def vfio_intx_set_signal(vdev: VfioPciCoreDevice, trigger: File | None) -> None:
    ctx = vdev.ctx[0]
    old, ctx.trigger = ctx.trigger, trigger
    if old is not None:
        old.fput()


def vfio_intx_disable(vdev: VfioPciCoreDevice) -> None:
    ctx = vdev.ctx.pop(0, None)
    if ctx is not None:
        if ctx.unmask is not None:
            ctx.unmask.release()
        vdev.pdev.intx_irq.free_irq()
        if ctx.trigger is not None:
            ctx.trigger.fput()
    vdev.irq_type = vf.VFIO_PCI_NUM_IRQS


# -- MSI --------------------------------------------------------------------------------------
def vfio_msi_enable(vdev: VfioPciCoreDevice, nvec: int, msix: bool) -> None:
    if not _is_irq_none(vdev):
        raise IommuError(errno.EINVAL, "another interrupt type is enabled")
    P.pci_alloc_irq_vectors(vdev.pdev, 1, nvec, P.PCI_IRQ_MSIX if msix else P.PCI_IRQ_MSI)
    vdev.irq_type = vf.VFIO_PCI_MSIX_IRQ_INDEX if msix else vf.VFIO_PCI_MSI_IRQ_INDEX
    if not msix:
        vdev.msi_qmax = (nvec * 2 - 1).bit_length() - 1  # log2 of the vectors


def vfio_msi_set_vector_signal(vdev: VfioPciCoreDevice, vector: int, fd: int,
                               msix: bool) -> None:
    ctx = vdev.ctx.pop(vector, None)
    if ctx is not None:
        vdev.pdev.msi_irq.free_irq()
        if ctx.trigger is not None:
            ctx.trigger.fput()
    if fd < 0:
        return
    trigger = _eventfd(vdev, fd)
    ctx = vdev.ctx[vector] = VfioPciIrqCtx()
    ctx.trigger = trigger
    vdev.pdev.msi_irq.request_irq(trigger.eventfd_signal)


def vfio_msi_set_block(vdev: VfioPciCoreDevice, start: int, count: int,
                       fds: list[int] | None, msix: bool) -> None:
    done = start
    try:
        for i in range(count):
            vfio_msi_set_vector_signal(vdev, start + i, fds[i] if fds else -1, msix)
            done += 1
    except IommuError:
        for j in range(start, done):
            vfio_msi_set_vector_signal(vdev, j, -1, msix)
        raise


def vfio_msi_disable(vdev: VfioPciCoreDevice, msix: bool) -> None:
    for vector in sorted(vdev.ctx):
        vfio_msi_set_vector_signal(vdev, vector, -1, msix)
    P.pci_free_irq_vectors(vdev.pdev)
    if vdev.nointx:
        P.pci_intx(vdev.pdev, False)
    vdev.irq_type = vf.VFIO_PCI_NUM_IRQS


# -- the ioctl's handlers -------------------------------------------------------------------
def _fd(data: bytes, i: int = 0) -> int:
    return int.from_bytes(data[4 * i : 4 * i + 4], "little", signed=True)


def _now(flags: int, data: bytes, i: int = 0) -> bool:
    """DATA_NONE, or DATA_BOOL with entry ``i`` true: act on it now."""
    return bool(flags & vf.VFIO_IRQ_SET_DATA_NONE
                or (flags & vf.VFIO_IRQ_SET_DATA_BOOL and data[i]))


def _intx_one(vdev: VfioPciCoreDevice, start: int, count: int, what: str) -> None:
    if not _is_intx(vdev) or start != 0 or count != 1:
        raise IommuError(errno.EINVAL, f"INTx {what} needs INTx enabled, start 0, count 1")


def vfio_pci_set_intx_unmask(vdev: VfioPciCoreDevice, start: int, count: int, flags: int,
                             data: bytes) -> int:
    _intx_one(vdev, start, count, "unmask")
    if _now(flags, data):
        vfio_pci_intx_unmask(vdev)
    elif flags & vf.VFIO_IRQ_SET_DATA_EVENTFD:
        ctx = vdev.ctx[0]
        fd = _fd(data)
        if fd >= 0:
            efd = _eventfd(vdev, fd)
            if ctx.unmask is not None:
                efd.fput()
                raise IommuError(errno.EBUSY, "an unmask eventfd is already set")
            ctx.unmask = Virqfd(efd, lambda: vfio_pci_intx_unmask_handler(vdev),
                                lambda: vfio_send_intx_eventfd(vdev))
            return 0
        if ctx.unmask is not None:
            ctx.unmask.release()
            ctx.unmask = None
    return 0


def vfio_pci_set_intx_mask(vdev: VfioPciCoreDevice, start: int, count: int, flags: int,
                           data: bytes) -> int:
    _intx_one(vdev, start, count, "mask")
    if _now(flags, data):
        vfio_pci_intx_mask(vdev)
    elif flags & vf.VFIO_IRQ_SET_DATA_EVENTFD:
        raise IommuError(errno.ENOTTY, "a mask eventfd is not implemented (as in Linux)")
    return 0


def vfio_pci_set_intx_trigger(vdev: VfioPciCoreDevice, start: int, count: int, flags: int,
                              data: bytes) -> int:
    if _is_intx(vdev) and not count and flags & vf.VFIO_IRQ_SET_DATA_NONE:
        vfio_intx_disable(vdev)
        return 0
    if not (_is_intx(vdev) or _is_irq_none(vdev)) or start != 0 or count != 1:
        raise IommuError(errno.EINVAL, "INTx trigger needs start 0, count 1 and no MSI")
    if flags & vf.VFIO_IRQ_SET_DATA_EVENTFD:
        fd = _fd(data)
        trigger = _eventfd(vdev, fd) if fd >= 0 else None
        try:
            if _is_intx(vdev):
                vfio_intx_set_signal(vdev, trigger)
            else:
                vfio_intx_enable(vdev, trigger)
        except IommuError:
            if trigger is not None:
                trigger.fput()
            raise
        return 0
    if not _is_intx(vdev):
        raise IommuError(errno.EINVAL, "INTx is not enabled")
    if _now(flags, data):
        vfio_send_intx_eventfd(vdev)
    return 0


def vfio_pci_set_msi_trigger(vdev: VfioPciCoreDevice, index: int, start: int, count: int,
                             flags: int, data: bytes) -> int:
    msix = index == vf.VFIO_PCI_MSIX_IRQ_INDEX
    if vdev.irq_type == index and not count and flags & vf.VFIO_IRQ_SET_DATA_NONE:
        vfio_msi_disable(vdev, msix)
        return 0
    if not (vdev.irq_type == index or _is_irq_none(vdev)):
        raise IommuError(errno.EINVAL, "another interrupt type is enabled")
    if flags & vf.VFIO_IRQ_SET_DATA_EVENTFD:
        fds = [_fd(data, i) for i in range(count)]
        if vdev.irq_type == index:
            vfio_msi_set_block(vdev, start, count, fds, msix)
            return 0
        vfio_msi_enable(vdev, start + count, msix)
        try:
            vfio_msi_set_block(vdev, start, count, fds, msix)
        except IommuError:
            vfio_msi_disable(vdev, msix)
            raise
        return 0
    if vdev.irq_type != index:
        raise IommuError(errno.EINVAL, "MSI is not enabled")
    for i in range(start, start + count):
        ctx = vdev.ctx.get(i)
        if ctx is None or ctx.trigger is None:
            continue
        if _now(flags, data, i - start):
            ctx.trigger.eventfd_signal()
    return 0


def _replace(vdev: VfioPciCoreDevice, which: str, new: File | None) -> None:
    """``vfio_pci_eventfd_replace_locked``."""
    old = getattr(vdev, which)
    setattr(vdev, which, new)
    if old is not None:
        old.fput()


def vfio_pci_set_ctx_trigger_single(vdev: VfioPciCoreDevice, which: str, count: int,
                                    flags: int, data: bytes) -> int:
    cur: File | None = getattr(vdev, which)
    if flags & vf.VFIO_IRQ_SET_DATA_NONE:
        if cur is None:
            raise IommuError(errno.EINVAL, "no eventfd set")
        if count:
            cur.eventfd_signal()
            return 0
        _replace(vdev, which, None)
        return 0
    if flags & vf.VFIO_IRQ_SET_DATA_BOOL:
        if not count:
            raise IommuError(errno.EINVAL, "count 0 with DATA_BOOL")
        if data[0] and cur is not None:
            cur.eventfd_signal()
        return 0
    if flags & vf.VFIO_IRQ_SET_DATA_EVENTFD:
        if not count:
            raise IommuError(errno.EINVAL, "count 0 with DATA_EVENTFD")
        fd = _fd(data)
        if fd == -1:
            _replace(vdev, which, None)
            return 0
        if fd >= 0:
            _replace(vdev, which, _eventfd(vdev, fd))
            return 0
    raise IommuError(errno.EINVAL, "bad eventfd")


def vfio_pci_set_irqs_ioctl(vdev: VfioPciCoreDevice, flags: int, index: int, start: int,
                            count: int, data: bytes) -> int:
    """``vfio_pci_set_irqs_ioctl``: the handler of (index, action); ENOTTY for none."""
    action = flags & vf.VFIO_IRQ_SET_ACTION_TYPE_MASK
    if index == vf.VFIO_PCI_INTX_IRQ_INDEX:
        if action == vf.VFIO_IRQ_SET_ACTION_MASK:
            return vfio_pci_set_intx_mask(vdev, start, count, flags, data)
        if action == vf.VFIO_IRQ_SET_ACTION_UNMASK:
            return vfio_pci_set_intx_unmask(vdev, start, count, flags, data)
        if action == vf.VFIO_IRQ_SET_ACTION_TRIGGER:
            return vfio_pci_set_intx_trigger(vdev, start, count, flags, data)
    elif index in (vf.VFIO_PCI_MSI_IRQ_INDEX, vf.VFIO_PCI_MSIX_IRQ_INDEX):
        if action == vf.VFIO_IRQ_SET_ACTION_TRIGGER:
            return vfio_pci_set_msi_trigger(vdev, index, start, count, flags, data)
    elif (index in (vf.VFIO_PCI_ERR_IRQ_INDEX, vf.VFIO_PCI_REQ_IRQ_INDEX)
          and action == vf.VFIO_IRQ_SET_ACTION_TRIGGER):
        if start != 0 or count > 1:
            raise IommuError(errno.EINVAL, "one trigger at subindex 0")
        which = "err_trigger" if index == vf.VFIO_PCI_ERR_IRQ_INDEX else "req_trigger"
        return vfio_pci_set_ctx_trigger_single(vdev, which, count, flags, data)
    raise IommuError(errno.ENOTTY, f"no action {action:#x} for interrupt index {index}")


def vfio_set_irqs_validate_and_prepare(hdr: vf.vfio_irq_set, num_irqs: int,
                                       max_irq_type: int) -> int:
    """``vfio_set_irqs_validate_and_prepare``: the size of the data that follows."""
    minsz = vf.VFIO_IRQ_SET_MINSZ
    if (hdr.argsz < minsz or hdr.index >= max_irq_type or hdr.count >= U32_MAX - hdr.start
            or hdr.flags & ~(vf.VFIO_IRQ_SET_DATA_TYPE_MASK
                             | vf.VFIO_IRQ_SET_ACTION_TYPE_MASK)):
        raise IommuError(errno.EINVAL, "bad argsz, index, range or flags")
    if hdr.start >= num_irqs or hdr.start + hdr.count > num_irqs:
        raise IommuError(errno.EINVAL, f"[{hdr.start}, +{hdr.count}) is outside the "
                         f"{num_irqs} interrupts of index {hdr.index}")
    size = {vf.VFIO_IRQ_SET_DATA_NONE: 0, vf.VFIO_IRQ_SET_DATA_BOOL: 1,
            vf.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(hdr.flags & vf.VFIO_IRQ_SET_DATA_TYPE_MASK)
    if size is None:
        raise IommuError(errno.EINVAL, "not exactly one data type")
    if size and hdr.argsz - minsz < hdr.count * size:
        raise IommuError(errno.EINVAL, f"argsz {hdr.argsz} holds fewer than {hdr.count} "
                         "entries")
    return hdr.count * size

"""vfio-pci (``drivers/vfio/pci/vfio_pci.c``, ``vfio_pci_core.c``, ``vfio_pci_rdwr.c``):
the driver half of a VFIO device bound to a simulated PCI function. Enable at open (reset,
saved state, the virtual config space), disable at close (interrupts off, reset and
restore); the device ioctls GET_INFO, GET_IRQ_INFO, SET_IRQS (:mod:`iommufd.vfio_pci_intrs`)
and RESET; the region info of the config space and the BARs; region reads and writes at
``index << 40``; mmap of a BAR (its registers mapped into the process); the driver's device
features.

As the kernel, vfio-pci here has no migration and no DMA logging (no ``mig_ops``, no
``log_ops``: those features are ENOTTY), and answers ENOTTY to the ioctls it does not
simulate yet: IOEVENTFD and the hot-reset pair.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform import pci as P
from iommu_core.platform.eventfd import eventfd_ctx_fdget
from iommu_core.platform.files import File, PfnRegion
from iommu_core.platform.pci import (
    PciFunction,
    PciSavedState,
    pci_restore_state,
    pci_save_state,
    pci_set_power_state,
    pci_try_reset_function,
)
from iommu_core.platform.uaccess import UserArg
from iommufd import uapi
from iommufd import uapi_vfio as vf
from iommufd.vfio_pci_config import VfioPciConfig
from iommufd.vfio_pci_intrs import (
    VfioPciIrqCtx,
    vfio_pci_set_irqs_ioctl,
    vfio_set_irqs_validate_and_prepare,
)

if TYPE_CHECKING:
    from iommu_core.platform.task import TaskTable

PAGE_SIZE = 4096


def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> bool:
    """``vfio_check_feature``: False for a successful PROBE, True to go on with GET/SET."""
    if flags & (vf.VFIO_DEVICE_FEATURE_GET | vf.VFIO_DEVICE_FEATURE_SET) & ~supported_ops:
        raise IommuError(errno.EINVAL, "GET/SET not supported by this feature")
    if flags & vf.VFIO_DEVICE_FEATURE_PROBE:
        return False
    if not flags & (vf.VFIO_DEVICE_FEATURE_GET | vf.VFIO_DEVICE_FEATURE_SET):
        raise IommuError(errno.EINVAL, "neither GET nor SET without PROBE")
    if argsz < minsz:
        raise IommuError(errno.EINVAL, f"feature data {argsz} < {minsz} bytes")
    return True


class VfioPciCoreDevice:
    """``struct vfio_pci_core_device`` of one simulated function."""

    def __init__(self, pdev: PciFunction, tasks: TaskTable) -> None:
        self.pdev = pdev
        #: The processes; a call's fds are ``current``'s.
        self.tasks = tasks
        self.config: VfioPciConfig | None = None
        self.reset_works = False
        self.pci_saved_state: PciSavedState | None = None
        self.needs_reset = True
        self.nointx = False  # vfio_pci_nointx(): only some Intel NICs
        self.pci_2_3 = False
        self.virq_disabled = False
        self.irq_type = vf.VFIO_PCI_NUM_IRQS  # no interrupt mode set
        self.msi_qmax = 0
        self.msix_bar = 0xFF
        self.has_dyn_msix = False
        self.has_vga = False  # class is not VGA
        self.num_regions = 0  # no device-specific regions
        self.pm_runtime_engaged = False
        #: ``pm_wake_eventfd_ctx``: signalled when an access wakes the device.
        self.pm_wake_eventfd: File | None = None
        #: Interrupt contexts by vector (``vdev->ctx``), and the ERR/REQ eventfds.
        self.ctx: dict[int, VfioPciIrqCtx] = {}
        self.err_trigger: File | None = None
        self.req_trigger: File | None = None
        #: ``barmap[]``: the BARs this open requested (pci_request_selected_regions).
        self.barmap = [False] * P.PCI_STD_NUM_BARS
        self.bar_mmap_supported = [False] * P.PCI_STD_NUM_BARS

    @property
    def vconfig(self) -> VfioPciConfig:
        assert self.config is not None, "vfio-pci device not open"
        return self.config

    # -- open / close ----------------------------------------------------------------------
    def open_device(self) -> None:
        """``vfio_pci_open_device``: ``vfio_pci_core_enable`` + ``finish_enable``."""
        pdev = self.pdev
        cmd = pdev.config_read(P.PCI_COMMAND, 2)
        pdev.config_write(P.PCI_COMMAND, 2, cmd & ~P.PCI_COMMAND_MASTER)  # pci_clear_master
        self._pci_enable_device()
        try:
            pci_try_reset_function(pdev)
            self.reset_works = True
        except IommuError as e:
            if e.errno == errno.EAGAIN:
                raise
            self.reset_works = False
        self.pci_saved_state = pci_save_state(pdev)
        self.pci_2_3 = self._pci_intx_mask_supported()
        cmd = pdev.config_read(P.PCI_COMMAND, 2)
        if self.pci_2_3 and cmd & P.PCI_COMMAND_INTX_DISABLE:
            pdev.config_write(P.PCI_COMMAND, 2, cmd & ~P.PCI_COMMAND_INTX_DISABLE)
        self.config = VfioPciConfig(self)
        self.msix_bar = 0xFF  # no MSI-X capability
        self.barmap = [b is not None and pdev.bar_start[i] != 0
                       for i, b in enumerate(pdev.bars)]
        self.bar_mmap_supported = self._probe_mmaps()

    def _probe_mmaps(self) -> list[bool]:
        """``vfio_pci_probe_mmaps``: a memory BAR of a page or more can be mmapped; a
        smaller one too when it starts a page that no other BAR shares (the rest of the
        page is reserved for it)."""
        pdev = self.pdev
        out = [False] * P.PCI_STD_NUM_BARS
        for i, b in enumerate(pdev.bars):
            start = pdev.bar_start[i]
            if b is None or not start:
                continue
            if b.size >= PAGE_SIZE:
                out[i] = True
            elif not start % PAGE_SIZE:
                page = range(start, start + PAGE_SIZE)
                out[i] = not any(j != i and pdev.bar_start[j] in page
                                 for j in range(P.PCI_STD_NUM_BARS))
        return out

    def _pci_enable_device(self) -> None:
        """``pci_enable_device``: D0, and decoding of the BARs it has."""
        pdev = self.pdev
        pci_set_power_state(pdev, P.PCI_D0)
        cmd = pdev.config_read(P.PCI_COMMAND, 2)
        if any(b is not None for b in pdev.bars):
            cmd |= P.PCI_COMMAND_MEMORY
        pdev.config_write(P.PCI_COMMAND, 2, cmd)

    def _pci_intx_mask_supported(self) -> bool:
        """``pci_intx_mask_supported``: does INTx Disable stick when written?"""
        pdev = self.pdev
        orig = pdev.config_read(P.PCI_COMMAND, 2)
        pdev.config_write(P.PCI_COMMAND, 2, orig ^ P.PCI_COMMAND_INTX_DISABLE)
        new = pdev.config_read(P.PCI_COMMAND, 2)
        pdev.config_write(P.PCI_COMMAND, 2, orig)
        return bool((new ^ orig) & P.PCI_COMMAND_INTX_DISABLE)

    def close_device(self) -> None:
        """``vfio_pci_core_close_device`` -> ``vfio_pci_core_disable``: stop DMA, reset,
        and put back the config space saved at open."""
        pdev = self.pdev
        self._runtime_pm_exit()
        self.vfio_pci_set_power_state(P.PCI_D0)
        cmd = pdev.config_read(P.PCI_COMMAND, 2)
        pdev.config_write(P.PCI_COMMAND, 2, cmd & ~P.PCI_COMMAND_MASTER)
        with contextlib.suppress(IommuError):  # ENOTTY when no interrupt is enabled
            vfio_pci_set_irqs_ioctl(self, vf.VFIO_IRQ_SET_DATA_NONE
                                    | vf.VFIO_IRQ_SET_ACTION_TRIGGER, self.irq_type, 0, 0, b"")
        self.irq_type = vf.VFIO_PCI_NUM_IRQS
        self.virq_disabled = False
        self.config = None
        self.barmap = [False] * P.PCI_STD_NUM_BARS
        self.needs_reset = True
        saved, self.pci_saved_state = self.pci_saved_state, None
        pdev.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_INTX_DISABLE)
        if self.reset_works:  # __pci_reset_function_locked: the FLR alone
            devctl = pdev.pcie_cap + P.PCI_EXP_DEVCTL
            pdev.config_write(devctl, 2, pdev.config_read(devctl, 2) | P.PCI_EXP_DEVCTL_BCR_FLR)
            self.needs_reset = False
        if saved is not None:
            pci_restore_state(pdev, saved)
        cmd = pdev.config_read(P.PCI_COMMAND, 2)  # pci_disable_device: bus master off
        pdev.config_write(P.PCI_COMMAND, 2, cmd & ~P.PCI_COMMAND_MASTER)
        for which in ("err_trigger", "req_trigger"):  # vfio_pci_core_close_device
            f = getattr(self, which)
            setattr(self, which, None)
            if f is not None:
                f.fput()

    # -- power and reset -------------------------------------------------------------------
    def vfio_pci_set_power_state(self, state: int) -> None:
        """The function keeps its state across D3hot (No_Soft_Reset), so no save/restore;
        D1/D2 are not supported and the request is dropped."""
        with contextlib.suppress(IommuError):
            pci_set_power_state(self.pdev, state)

    def lock_and_set_power_state(self, state: int) -> None:
        """``vfio_lock_and_set_power_state``: a PowerState write to the PM capability."""
        self.vfio_pci_set_power_state(state)

    def try_reset_function(self) -> None:
        """A reset the user asked for through the virtual FLR bit; errors are ignored."""
        with contextlib.suppress(IommuError):
            pci_try_reset_function(self.pdev)

    def memory_enabled(self) -> bool:
        """``__vfio_pci_memory_enabled``: D0, and the user's (virtual) memory enable."""
        cmd = self.vconfig.vget(P.PCI_COMMAND, 2)
        return self.pdev.current_state < P.PCI_D3HOT and (
            self.pdev.no_command_memory or bool(cmd & P.PCI_COMMAND_MEMORY))

    # -- ioctls (vfio_pci_core_ioctl) ------------------------------------------------------
    def ioctl(self, request: int, arg: UserArg) -> int:
        if request == vf.VFIO_DEVICE_GET_INFO:
            return self.ioctl_get_info(arg)
        if request == vf.VFIO_DEVICE_GET_IRQ_INFO:
            return self.ioctl_get_irq_info(arg)
        if request == vf.VFIO_DEVICE_SET_IRQS:
            return self.ioctl_set_irqs(arg)
        if request == vf.VFIO_DEVICE_RESET:
            return self.ioctl_reset()
        raise IommuError(errno.ENOTTY, f"vfio-pci: ioctl {request:#x} is not simulated")

    def ioctl_set_irqs(self, arg: UserArg) -> int:
        """``vfio_pci_ioctl_set_irqs``: the header, its checks, the data, the action."""
        minsz = vf.VFIO_IRQ_SET_MINSZ
        hdr = uapi.from_bytes(vf.vfio_irq_set, arg.read(0, minsz))
        num = self.get_irq_count(hdr.index)
        size = vfio_set_irqs_validate_and_prepare(hdr, num, vf.VFIO_PCI_NUM_IRQS)
        data = arg.read(minsz, size) if size else b""
        return vfio_pci_set_irqs_ioctl(self, hdr.flags, hdr.index, hdr.start, hdr.count,
                                       data)

    def ioctl_get_info(self, arg: UserArg) -> int:
        st = vf.vfio_device_info
        minsz = uapi.offsetofend(st, "num_irqs")
        info = uapi.from_bytes(st, arg.read(0, minsz))
        if info.argsz < minsz:
            raise IommuError(errno.EINVAL, f"argsz {info.argsz} < {minsz}")
        minsz = min(info.argsz, ctypes.sizeof(st))
        info.flags = vf.VFIO_DEVICE_FLAGS_PCI
        if self.reset_works:
            info.flags |= vf.VFIO_DEVICE_FLAGS_RESET
        info.num_regions = vf.VFIO_PCI_NUM_REGIONS + self.num_regions
        info.num_irqs = vf.VFIO_PCI_NUM_IRQS
        # No capability: no zPCI (x86), and the function is no AtomicOp completer.
        arg.write(0, uapi.struct_bytes(info)[:minsz])
        return 0

    def get_region_info_caps(self, info: vf.vfio_region_info) -> None:
        """``vfio_pci_ioctl_get_region_info``: fill ``info`` for ``info.index``."""
        pdev = self.pdev
        index = info.index
        if index == vf.VFIO_PCI_CONFIG_REGION_INDEX:
            info.offset = vf.VFIO_PCI_INDEX_TO_OFFSET(index)
            info.size = pdev.cfg_size
            info.flags = vf.VFIO_REGION_INFO_FLAG_READ | vf.VFIO_REGION_INFO_FLAG_WRITE
        elif index <= vf.VFIO_PCI_BAR5_REGION_INDEX:
            bar = pdev.bars[index]
            info.offset = vf.VFIO_PCI_INDEX_TO_OFFSET(index)
            info.size = bar.size if bar is not None and pdev.bar_start[index] else 0
            info.flags = 0
            if info.size:
                info.flags = vf.VFIO_REGION_INFO_FLAG_READ | vf.VFIO_REGION_INFO_FLAG_WRITE
                if self.bar_mmap_supported[index]:
                    info.flags |= vf.VFIO_REGION_INFO_FLAG_MMAP
        elif index == vf.VFIO_PCI_ROM_REGION_INDEX:
            info.offset = vf.VFIO_PCI_INDEX_TO_OFFSET(index)
            info.flags = info.size = 0  # no ROM BAR, no shadow ROM
        elif index == vf.VFIO_PCI_VGA_REGION_INDEX:
            raise IommuError(errno.EINVAL, "not a VGA device")
        else:
            raise IommuError(errno.EINVAL, f"no region {index}")

    def ioctl_get_irq_info(self, arg: UserArg) -> int:
        st = vf.vfio_irq_info
        minsz = uapi.offsetofend(st, "count")
        info = uapi.from_bytes(st, arg.read(0, minsz))
        if info.argsz < minsz or info.index >= vf.VFIO_PCI_NUM_IRQS:
            raise IommuError(errno.EINVAL, f"argsz {info.argsz} < {minsz} or bad index "
                             f"{info.index}")
        info.flags = vf.VFIO_IRQ_INFO_EVENTFD
        info.count = self.get_irq_count(info.index)
        if info.index == vf.VFIO_PCI_INTX_IRQ_INDEX:
            info.flags |= vf.VFIO_IRQ_INFO_MASKABLE | vf.VFIO_IRQ_INFO_AUTOMASKED
        elif info.index != vf.VFIO_PCI_MSIX_IRQ_INDEX or not self.has_dyn_msix:
            info.flags |= vf.VFIO_IRQ_INFO_NORESIZE
        arg.write(0, uapi.struct_bytes(info)[:minsz])
        return 0

    def get_irq_count(self, irq_type: int) -> int:
        pdev = self.pdev
        if irq_type == vf.VFIO_PCI_INTX_IRQ_INDEX:
            return 1 if self.vconfig.vconfig[P.PCI_INTERRUPT_PIN] else 0
        if irq_type == vf.VFIO_PCI_MSI_IRQ_INDEX:
            if not pdev.msi_cap:
                return 0
            flags = pdev.config_read(pdev.msi_cap + P.PCI_MSI_FLAGS, 2)
            return 1 << ((flags & P.PCI_MSI_FLAGS_QMASK) >> 1)
        if irq_type == vf.VFIO_PCI_MSIX_IRQ_INDEX:
            if not pdev.msix_cap:
                return 0
            flags = pdev.config_read(pdev.msix_cap + P.PCI_MSIX_FLAGS, 2)
            return (flags & P.PCI_MSIX_FLAGS_QSIZE) + 1
        if irq_type in (vf.VFIO_PCI_ERR_IRQ_INDEX, vf.VFIO_PCI_REQ_IRQ_INDEX):
            return 1
        return 0

    def ioctl_reset(self) -> int:
        """``vfio_pci_ioctl_reset``: a function reset; the config space the user set is
        put back (``pci_try_reset_function`` saves and restores it), the device's own
        state (its BAR registers) is not."""
        if not self.reset_works:
            raise IommuError(errno.EINVAL, "device has no working reset")
        self.vfio_pci_set_power_state(P.PCI_D0)
        pci_try_reset_function(self.pdev)
        return 0

    # -- device features (vfio_pci_core_ioctl_feature) --------------------------------------
    def device_feature(self, flags: int, arg: UserArg, data: int, argsz: int) -> int:
        """The feature's ``argsz`` bytes of data start at offset ``data`` of ``arg``."""
        feature = flags & vf.VFIO_DEVICE_FEATURE_MASK
        if feature in (vf.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
                       vf.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT):
            if vfio_check_feature(flags, argsz, vf.VFIO_DEVICE_FEATURE_SET, 0):
                if feature == vf.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT:
                    self._runtime_pm_exit()
                else:
                    self._runtime_pm_entry()
            return 0
        if feature == vf.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
            st = vf.vfio_device_low_power_entry_with_wakeup
            if vfio_check_feature(flags, argsz, vf.VFIO_DEVICE_FEATURE_SET,
                                  ctypes.sizeof(st)):
                entry = uapi.from_bytes(st, arg.read(data, ctypes.sizeof(st)))
                if entry.wakeup_eventfd < 0:
                    raise IommuError(errno.EINVAL, "negative wakeup eventfd")
                efd = eventfd_ctx_fdget(self.tasks.require_current().files,
                                        entry.wakeup_eventfd)
                try:
                    self._runtime_pm_entry(efd)
                except IommuError:
                    efd.fput()
                    raise
            return 0
        if feature == vf.VFIO_DEVICE_FEATURE_DMA_BUF:
            return self._feature_dma_buf(flags, arg, data, argsz)
        # PCI_VF_TOKEN: not a PF with SR-IOV (no vf_token); ZPCI_ERROR: not s390.
        raise IommuError(errno.ENOTTY, f"vfio-pci has no device feature {feature}")

    def _runtime_pm_entry(self, wake: File | None = None) -> None:
        if self.pm_runtime_engaged:
            raise IommuError(errno.EINVAL, "low power already entered")
        self.pm_runtime_engaged = True
        self.pm_wake_eventfd = wake

    def _runtime_pm_exit(self) -> None:
        """``__vfio_pci_runtime_pm_exit``."""
        if self.pm_runtime_engaged:
            self.pm_runtime_engaged = False
            wake, self.pm_wake_eventfd = self.pm_wake_eventfd, None
            if wake is not None:
                wake.fput()

    def runtime_resume(self) -> None:
        """An access through the device fd wakes a suspended device
        (``vfio_pci_core_runtime_resume``): with a wakeup eventfd it is signalled and low
        power ends; without, the device suspends again after the access."""
        if self.pm_runtime_engaged and self.pm_wake_eventfd is not None:
            self.pm_wake_eventfd.eventfd_signal()
            self._runtime_pm_exit()

    def _feature_dma_buf(self, flags: int, arg: UserArg, data: int, argsz: int) -> int:
        """``vfio_pci_core_feature_dma_buf`` (CONFIG_VFIO_PCI_DMABUF, as distro kernels
        build it): a dma-buf of BAR ranges, for BARs the open requested."""
        st = vf.vfio_device_feature_dma_buf
        size = ctypes.sizeof(st)
        if not vfio_check_feature(flags, argsz, vf.VFIO_DEVICE_FEATURE_GET, size):
            return 0
        req = uapi.from_bytes(st, arg.read(data, size))
        if not req.nr_ranges or req.flags:
            raise IommuError(errno.EINVAL, "nr_ranges 0 or flags set")
        if req.region_index >= vf.VFIO_PCI_ROM_REGION_INDEX or not self.barmap[
                req.region_index]:
            raise IommuError(errno.ENODEV, f"region {req.region_index} is no requested BAR")
        raise IommuError(errno.EOPNOTSUPP, "dma-buf export of BAR ranges is not simulated")

    # -- region access (vfio_pci_rw) ---------------------------------------------------------
    def rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """Read ``count`` bytes (``data`` None) or write ``data`` at the fd offset ``pos``:
        the bytes read or the count written (short at a region's end)."""
        if data is not None:
            count = len(data)
        if not count:
            return b"" if data is None else 0
        index = vf.VFIO_PCI_OFFSET_TO_INDEX(pos)
        if index >= vf.VFIO_PCI_NUM_REGIONS + self.num_regions:
            raise IommuError(errno.EINVAL, f"no region {index}")
        self.runtime_resume()
        if index == vf.VFIO_PCI_CONFIG_REGION_INDEX:
            return self.vconfig.rw(pos, count, data)
        if index == vf.VFIO_PCI_ROM_REGION_INDEX:
            if data is not None:
                raise IommuError(errno.EINVAL, "the ROM is read-only")
            raise IommuError(errno.EINVAL, "no ROM")
        if index <= vf.VFIO_PCI_BAR5_REGION_INDEX:
            return self.bar_rw(index, pos & vf.VFIO_PCI_OFFSET_MASK, count, data)
        raise IommuError(errno.EINVAL, "not a VGA device")  # vfio_pci_vga_rw: !has_vga

    def bar_rw(self, bar: int, pos: int, count: int, data: bytes | None) -> bytes | int:
        """``vfio_pci_bar_rw`` + ``vfio_pci_core_do_io_rw``: the widest aligned accesses
        up to 8 bytes, each checked against the memory enable (EIO when off)."""
        pdev = self.pdev
        b = pdev.bars[bar]
        if b is None or not pdev.bar_start[bar]:
            raise IommuError(errno.EINVAL, f"BAR{bar} is not implemented")
        if pos >= b.size:
            raise IommuError(errno.EINVAL, f"offset {pos:#x} past BAR{bar}")
        if not self.barmap[bar]:
            raise IommuError(errno.ENODEV, f"BAR{bar} not requested")
        count = min(count, b.size - pos)
        out = bytearray()
        done = 0
        while done < count:
            left, off = count - done, pos + done
            n = next(w for w in (8, 4, 2, 1) if left >= w and not off % w)
            if not self.memory_enabled():
                raise IommuError(errno.EIO, f"BAR{bar}: memory decode disabled")
            if data is None:
                out += pdev.bar_read(bar, off, n).to_bytes(n, "little")
            else:
                pdev.bar_write(bar, off, n, int.from_bytes(data[done:done + n], "little"))
            done += n
        return bytes(out) if data is None else done

    def mmap(self, length: int, offset: int, shared: bool) -> PfnRegion:
        """``vfio_pci_core_mmap``: its checks in order, then the BAR's registers mapped
        VM_PFNMAP (loads and stores are memory requests to the function)."""
        index = offset >> vf.VFIO_PCI_OFFSET_SHIFT
        if index >= vf.VFIO_PCI_NUM_REGIONS + self.num_regions:
            raise IommuError(errno.EINVAL, f"no region {index}")
        if not shared:
            raise IommuError(errno.EINVAL, "device regions need MAP_SHARED")
        if index >= vf.VFIO_PCI_ROM_REGION_INDEX:
            raise IommuError(errno.EINVAL, f"region {index} cannot be mmapped")
        if not self.bar_mmap_supported[index]:
            raise IommuError(errno.EINVAL, f"BAR{index} cannot be mmapped")
        bar = self.pdev.bars[index]
        assert bar is not None
        phys_len = (bar.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        req_start = offset & vf.VFIO_PCI_OFFSET_MASK
        req_len = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if req_start + req_len > phys_len:
            raise IommuError(errno.EINVAL, f"[{req_start:#x}, +{req_len:#x}) is past BAR{index}"
                             f" ({phys_len:#x} bytes)")
        if not self.barmap[index]:
            raise IommuError(errno.EBUSY, f"BAR{index} not requested")
        return PfnRegion(pa=self.pdev.bar_start[index] + req_start,
                         mmio=self.pdev.bar_window(index), mmio_offset=req_start)

"""vfio-pci's config space virtualization (``drivers/vfio/pci/vfio_pci_config.c``).

The user reads and writes the device's config space through the config region
(``VFIO_PCI_CONFIG_REGION_INDEX << 40`` of the device fd). Each byte belongs to the basic
header, a capability, or nothing (unassigned); permission tables say per bit what is
*virtualized* (served from ``vconfig``, this open's copy) and what is *writable* (other
writes are dropped). Unassigned bytes pass straight to the hardware, as in the kernel.

What the user sees differs from the hardware where vfio-pci says so: BARs read back
sized from ``vconfig``; the capability chain hides PASID (and every capability vfio does
not know) by re-linking ``next``; MSI flags show the vectors vfio enabled, and MSI
address/data are virtual; PM state changes, the FLR bit and MRRS are trapped and done by
the host; ATS and PRI are read-only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform import pci as P
from iommufd import uapi_vfio as vf
from iommufd.vfio_pci_intrs import vfio_pci_intx_mask, vfio_pci_intx_unmask

if TYPE_CHECKING:
    from iommufd.vfio_pci_core import VfioPciCoreDevice

PCI_CAP_ID_BASIC = 0  # the header, as a fake capability
PCI_CAP_ID_INVALID = 0xFF  # unassigned: raw access
PCI_CAP_ID_INVALID_VIRT = 0xFE  # unassigned: virtualized access
ALL_VIRT = 0xFFFF_FFFF
ALL_WRITE = 0xFFFF_FFFF

#: ``pci_cap_length``: 0 hides the capability, 0xFF is variable. Only the capabilities a
#: simulated function can have are listed; any other is hidden (length 0).
PCI_CAP_LENGTH = {
    PCI_CAP_ID_BASIC: P.PCI_STD_HEADER_SIZEOF,
    P.PCI_CAP_ID_PM: P.PCI_PM_SIZEOF,
    P.PCI_CAP_ID_MSI: 0xFF,
    P.PCI_CAP_ID_EXP: 0xFF,
    P.PCI_CAP_ID_MSIX: 12,
}
#: ``pci_ext_cap_length`` likewise; PASID is 0 ("not yet"): vfio-pci hides it.
PCI_EXT_CAP_LENGTH = {
    P.PCI_EXT_CAP_ID_ATS: P.PCI_EXT_CAP_ATS_SIZEOF,
    P.PCI_EXT_CAP_ID_PRI: P.PCI_EXT_CAP_PRI_SIZEOF,
    P.PCI_EXT_CAP_ID_PASID: 0,
}

ReadFn = Callable[["VfioPciConfig", int, int, "PermBits", int], int]
WriteFn = Callable[["VfioPciConfig", int, int, "PermBits", int, int], int]


class PermBits:
    """``struct perm_bits``: per-bit virt/write masks of one capability, and its handlers."""

    __slots__ = ("readfn", "virt", "write", "writefn")

    def __init__(self, size: int = 0, readfn: ReadFn | None = None,
                 writefn: WriteFn | None = None) -> None:
        size = (size + 3) & ~3  # round_up(size, 4): accesses may run past a short cap
        self.virt = bytearray(size)
        self.write = bytearray(size)
        self.readfn = readfn if readfn is not None else (
            vfio_default_config_read if size else None)
        self.writefn = writefn if writefn is not None else (
            vfio_default_config_write if size else None)

    def set(self, off: int, size: int, virt: int, write: int) -> None:
        """``p_setb/p_setw/p_setd``."""
        self.virt[off:off + size] = (virt & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        self.write[off:off + size] = (write & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def virt_mask(self, off: int, count: int) -> int:
        return int.from_bytes(self.virt[off:off + count], "little")

    def write_mask(self, off: int, count: int) -> int:
        return int.from_bytes(self.write[off:off + count], "little")


def _mask(count: int) -> int:
    return (1 << (8 * count)) - 1


# -- the generic handlers -------------------------------------------------------------------
def vfio_default_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                             offset: int) -> int:
    val = vc.vget(pos, count)
    virt = perm.virt_mask(offset, count)
    if virt != _mask(count):  # some bits come from the hardware
        phys = vc.pdev.config_read(pos, count)
        val = (phys & ~virt) | (val & virt)
    return val


def vfio_default_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                              offset: int, val: int) -> int:
    write = perm.write_mask(offset, count)
    if not write:
        return count  # drop: no writable bits
    virt = perm.virt_mask(offset, count)
    if write & virt:
        cur = vc.vget(pos, count)
        vc.vset(pos, count, (cur & ~(write & virt)) | (val & write & virt))
    if write & ~virt:
        phys = vc.pdev.config_read(pos, count)
        phys = (phys & ~(write & ~virt)) | (val & write & ~virt)
        vc.pdev.config_write(pos, count, phys & _mask(count))
    return count


def vfio_direct_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                            offset: int) -> int:
    """Hardware, except the capability ids and next pointers (vfio may re-link them)."""
    val = vc.pdev.config_read(pos, count)
    if pos >= P.PCI_CFG_SPACE_SIZE:
        if offset < 4:
            val = vc.vget(pos, count)
    elif pos >= P.PCI_STD_HEADER_SIZEOF:
        if offset == P.PCI_CAP_LIST_ID and count > 1:
            n = min(P.PCI_CAP_FLAGS, count)
            val = (val & ~_mask(n)) | vc.vget(pos, n)
        elif offset == P.PCI_CAP_LIST_NEXT:
            val = (val & ~0xFF) | vc.vget(pos, 1)
    return val


def vfio_raw_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                         offset: int) -> int:
    return vc.pdev.config_read(pos, count)


def vfio_raw_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> int:
    vc.pdev.config_write(pos, count, val)
    return count


def vfio_virt_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                          offset: int) -> int:
    return vc.vget(pos, count)


def vfio_virt_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                           offset: int, val: int) -> int:
    vc.vset(pos, count, val)
    return count


# -- the basic header -----------------------------------------------------------------------
def _is_bar(offset: int) -> bool:
    return (P.PCI_BASE_ADDRESS_0 <= offset < P.PCI_BASE_ADDRESS_5 + 4
            or P.PCI_ROM_ADDRESS <= offset < P.PCI_ROM_ADDRESS + 4)


def vfio_basic_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                           offset: int) -> int:
    if _is_bar(offset):
        vc.bar_fixup()
    val = vfio_default_config_read(vc, pos, count, perm, offset)
    if offset == P.PCI_COMMAND and vc.pdev.no_command_memory:
        val |= vc.vget(P.PCI_COMMAND, 2) & P.PCI_COMMAND_MEMORY
    return val


def vfio_basic_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                            offset: int, val: int) -> int:
    pdev = vc.pdev
    new_cmd = 0
    if offset == P.PCI_COMMAND:
        phys_cmd = pdev.config_read(P.PCI_COMMAND, 2)
        virt_cmd = vc.vget(P.PCI_COMMAND, 2)
        new_cmd = val & 0xFFFF
        new_mem, new_io = new_cmd & P.PCI_COMMAND_MEMORY, new_cmd & P.PCI_COMMAND_IO
        # Enabling what we think is enabled while the hardware has it off: the device was
        # reset behind our back; put the BARs back first.
        if ((new_mem and virt_cmd & P.PCI_COMMAND_MEMORY
             and not phys_cmd & P.PCI_COMMAND_MEMORY and not pdev.no_command_memory)
                or (new_io and virt_cmd & P.PCI_COMMAND_IO and not phys_cmd & P.PCI_COMMAND_IO)
                or vc.need_bar_restore()):
            vc.bar_restore()
    count = vfio_default_config_write(vc, pos, count, perm, offset, val)
    if offset == P.PCI_COMMAND:
        mask = P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_IO
        vc.vset(P.PCI_COMMAND, 2, (vc.vget(P.PCI_COMMAND, 2) & ~mask) | (new_cmd & mask))
    if P.PCI_COMMAND <= offset <= P.PCI_COMMAND + 1:
        # Emulated INTx disable: the virtual bit masks and unmasks vfio's INTx.
        disable = bool(vc.vget(P.PCI_COMMAND, 2) & P.PCI_COMMAND_INTX_DISABLE)
        if disable and not vc.vdev.virq_disabled:
            vc.vdev.virq_disabled = True
            vfio_pci_intx_mask(vc.vdev)
        elif not disable and vc.vdev.virq_disabled:
            vc.vdev.virq_disabled = False
            vfio_pci_intx_unmask(vc.vdev)
    if _is_bar(offset):
        vc.bardirty = True
    return count


def _basic_perm() -> PermBits:
    p = PermBits(P.PCI_STD_HEADER_SIZEOF, vfio_basic_config_read, vfio_basic_config_write)
    p.set(P.PCI_VENDOR_ID, 2, ALL_VIRT, 0)  # VFs read 0xffff: vfio shows the real ids
    p.set(P.PCI_DEVICE_ID, 2, ALL_VIRT, 0)
    p.set(P.PCI_COMMAND, 2, P.PCI_COMMAND_INTX_DISABLE, ALL_WRITE)
    p.set(P.PCI_STATUS, 2, P.PCI_STATUS_CAP_LIST, 0)
    p.set(P.PCI_CACHE_LINE_SIZE, 1, 0, ALL_WRITE)
    p.set(P.PCI_LATENCY_TIMER, 1, 0, ALL_WRITE)
    p.set(P.PCI_BIST, 1, 0, ALL_WRITE)
    for off in range(P.PCI_BASE_ADDRESS_0, P.PCI_BASE_ADDRESS_5 + 4, 4):
        p.set(off, 4, ALL_VIRT, ALL_WRITE)
    p.set(P.PCI_ROM_ADDRESS, 4, ALL_VIRT, ALL_WRITE)
    p.set(P.PCI_CAPABILITY_LIST, 1, ALL_VIRT, 0)
    p.set(P.PCI_INTERRUPT_LINE, 1, ALL_VIRT, ALL_WRITE)
    p.set(P.PCI_INTERRUPT_PIN, 1, ALL_VIRT, 0)
    return p


# -- Power Management -------------------------------------------------------------------
def vfio_pm_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                         offset: int, val: int) -> int:
    count = vfio_default_config_write(vc, pos, count, perm, offset, val)
    if offset == P.PCI_PM_CTRL:
        vc.vdev.lock_and_set_power_state(val & P.PCI_PM_CTRL_STATE_MASK)
    return count


def _pm_perm() -> PermBits:
    p = PermBits(P.PCI_PM_SIZEOF, writefn=vfio_pm_config_write)
    p.set(P.PCI_CAP_LIST_NEXT, 1, ALL_VIRT, 0)
    p.set(P.PCI_PM_PMC, 2, P.PCI_PM_CAP_PME_MASK, 0)
    pme = P.PCI_PM_CTRL_PME_ENABLE | P.PCI_PM_CTRL_PME_STATUS
    p.set(P.PCI_PM_CTRL, 4, pme, ~(pme | P.PCI_PM_CTRL_STATE_MASK))
    return p


# -- PCI Express -------------------------------------------------------------------------
def vfio_exp_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> int:
    ctrl = pos - offset + P.PCI_EXP_DEVCTL
    readrq = vc.vget(ctrl, 2) & P.PCI_EXP_DEVCTL_READRQ
    count = vfio_default_config_write(vc, pos, count, perm, offset, val)
    if vc.vget(ctrl, 2) & P.PCI_EXP_DEVCTL_BCR_FLR:
        # Virtualized FLR: always reads 0; a capable function gets a function reset.
        vc.vset(ctrl, 2, vc.vget(ctrl, 2) & ~P.PCI_EXP_DEVCTL_BCR_FLR)
        cap = vc.pdev.config_read(pos - offset + P.PCI_EXP_DEVCAP, 4)
        if cap & P.PCI_EXP_DEVCAP_FLR:
            vc.vdev.try_reset_function()
    new = vc.vget(ctrl, 2) & P.PCI_EXP_DEVCTL_READRQ
    if readrq != new:
        # MRRS goes to the hardware, no lower than the function's MPS (pcie_set_readrq).
        rq = max(128 << (new >> 12), vc.pcie_get_mps())
        if rq <= 4096:  # pcie_set_readrq refuses the reserved encodings
            hw = vc.pdev.config_read(ctrl, 2) & ~P.PCI_EXP_DEVCTL_READRQ
            vc.pdev.config_write(ctrl, 2, hw | ((rq.bit_length() - 8) << 12))
    return count


def _exp_perm() -> PermBits:
    p = PermBits(P.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2, writefn=vfio_exp_config_write)
    p.set(P.PCI_CAP_LIST_NEXT, 1, ALL_VIRT, 0)
    p.set(P.PCI_EXP_DEVCTL, 2, P.PCI_EXP_DEVCTL_BCR_FLR | P.PCI_EXP_DEVCTL_PAYLOAD
          | P.PCI_EXP_DEVCTL_READRQ, ~P.PCI_EXP_DEVCTL_PHANTOM)
    p.set(P.PCI_EXP_DEVCTL2, 2, 0, ~P.PCI_EXP_DEVCTL2_ARI)
    return p


# -- MSI ---------------------------------------------------------------------------------
def vfio_msi_config_read(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                         offset: int) -> int:
    if offset <= P.PCI_MSI_FLAGS <= offset + count:
        # Meant to show Multiple Message Capable as vfio enabled it (msi_qmax); 7.3 updates
        # the word at the capability start (its ID byte, which reads from the hardware),
        # so the user sees the flags vfio last wrote. Kept as the kernel has it.
        start = vc.find_cap_start(pos)
        flags = vc.vget(start, 2) & ~P.PCI_MSI_FLAGS_QMASK
        vc.vset(start, 2, flags | (vc.vdev.msi_qmax << 1))
    return vfio_default_config_read(vc, pos, count, perm, offset)


def vfio_msi_config_write(vc: VfioPciConfig, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> int:
    count = vfio_default_config_write(vc, pos, count, perm, offset, val)
    if offset <= P.PCI_MSI_FLAGS <= offset + count:
        start = vc.find_cap_start(pos)
        flags = vc.vget(start + P.PCI_MSI_FLAGS, 2)
        if vc.vdev.irq_type != vf.VFIO_PCI_MSI_IRQ_INDEX:
            flags &= ~P.PCI_MSI_FLAGS_ENABLE  # MSI is enabled through SET_IRQS only
        if (flags & P.PCI_MSI_FLAGS_QSIZE) >> 4 > vc.vdev.msi_qmax:
            flags = (flags & ~P.PCI_MSI_FLAGS_QSIZE) | (vc.vdev.msi_qmax << 4)
        vc.vset(start + P.PCI_MSI_FLAGS, 2, flags)
        vc.pdev.config_write(start + P.PCI_MSI_FLAGS, 2, flags)
    return count


def _msi_perm(length: int, flags: int) -> PermBits:
    p = PermBits(length, vfio_msi_config_read, vfio_msi_config_write)
    p.set(P.PCI_CAP_LIST_NEXT, 1, ALL_VIRT, 0)
    p.set(P.PCI_MSI_FLAGS, 1, ALL_VIRT, ALL_WRITE)  # the upper byte is reserved
    p.set(P.PCI_MSI_ADDRESS_LO, 4, ALL_VIRT, ALL_WRITE)
    if flags & P.PCI_MSI_FLAGS_64BIT:
        p.set(P.PCI_MSI_ADDRESS_HI, 4, ALL_VIRT, ALL_WRITE)
        p.set(P.PCI_MSI_DATA_64, 2, ALL_VIRT, ALL_WRITE)
        if flags & P.PCI_MSI_FLAGS_MASKBIT:
            p.set(P.PCI_MSI_MASK_64, 4, 0, ALL_WRITE)
            p.set(P.PCI_MSI_PENDING_64, 4, 0, ALL_WRITE)
    else:
        p.set(P.PCI_MSI_DATA_32, 2, ALL_VIRT, ALL_WRITE)
        if flags & P.PCI_MSI_FLAGS_MASKBIT:
            p.set(P.PCI_MSI_MASK_32, 4, 0, ALL_WRITE)
            p.set(P.PCI_MSI_PENDING_32, 4, 0, ALL_WRITE)
    return p


#: The shared tables (``vfio_pci_init_perm_bits``): every capability not listed reads
#: directly from the hardware with its id/next virtualized and drops writes.
DIRECT_RO_PERMS = PermBits(readfn=vfio_direct_config_read)
CAP_PERMS: dict[int, PermBits] = {PCI_CAP_ID_BASIC: _basic_perm(), P.PCI_CAP_ID_PM: _pm_perm(),
                                  P.PCI_CAP_ID_EXP: _exp_perm()}
ECAP_PERMS: dict[int, PermBits] = {}
UNASSIGNED_PERMS = PermBits(readfn=vfio_raw_config_read, writefn=vfio_raw_config_write)
VIRT_PERMS = PermBits(readfn=vfio_virt_config_read, writefn=vfio_virt_config_write)


class VfioPciConfig:
    """``vdev->vconfig`` + ``vdev->pci_config_map`` + ``msi_perm``: one open's view of the
    config space, built by :meth:`init` (``vfio_config_init``) at open."""

    def __init__(self, vdev: VfioPciCoreDevice) -> None:
        self.vdev = vdev
        self.pdev = vdev.pdev
        size = self.pdev.cfg_size
        self.map = bytearray([PCI_CAP_ID_BASIC]) * P.PCI_STD_HEADER_SIZEOF + bytearray(
            [PCI_CAP_ID_INVALID]) * (size - P.PCI_STD_HEADER_SIZEOF)
        self.vconfig = bytearray(size)
        self.msi_perm: PermBits | None = None
        self.extended_caps = False
        self.bardirty = True
        self.rbar: list[int] = []
        self._init()

    # -- vconfig access --------------------------------------------------------------------
    def vget(self, pos: int, count: int) -> int:
        return int.from_bytes(self.vconfig[pos:pos + count], "little")

    def vset(self, pos: int, count: int, val: int) -> None:
        self.vconfig[pos:pos + count] = (val & _mask(count)).to_bytes(count, "little")

    def _fill(self, pos: int, size: int) -> None:
        """``vfio_fill_vconfig_bytes``: copy the hardware, in the widest aligned reads."""
        end = pos + size
        while pos < end:
            n = 4 if end - pos >= 4 and not pos % 4 else 2 if end - pos >= 2 and not pos % 2 else 1
            self.vset(pos, n, self.pdev.config_read(pos, n))
            pos += n

    # -- vfio_config_init ----------------------------------------------------------------
    def _init(self) -> None:
        pdev = self.pdev
        self._fill(0, P.PCI_STD_HEADER_SIZEOF)
        self.rbar = [self.vget(off, 4) for off in range(P.PCI_BASE_ADDRESS_0,
                                                        P.PCI_BASE_ADDRESS_5 + 4, 4)]
        self.rbar.append(self.vget(P.PCI_ROM_ADDRESS, 4))
        if pdev.is_virtfn:
            self.vset(P.PCI_VENDOR_ID, 2, pdev.vendor)
            self.vset(P.PCI_DEVICE_ID, 2, pdev.device)
            self.vconfig[P.PCI_INTERRUPT_PIN] = 0
        if pdev.no_command_memory:
            self.vset(P.PCI_COMMAND, 2, self.vget(P.PCI_COMMAND, 2) | P.PCI_COMMAND_MEMORY)
        if self.vdev.nointx or not pdev.irq:
            self.vconfig[P.PCI_INTERRUPT_PIN] = 0
        self._cap_init()
        self._ecap_init()

    def _cap_len(self, cap: int, pos: int) -> int:
        if cap == P.PCI_CAP_ID_MSI:
            flags = self.pdev.config_read(pos + P.PCI_MSI_FLAGS, 2)
            length = 10 + (4 if flags & P.PCI_MSI_FLAGS_64BIT else 0) + (
                10 if flags & P.PCI_MSI_FLAGS_MASKBIT else 0)
            if self.msi_perm is None:
                self.msi_perm = _msi_perm(length, flags)
            return length
        if cap == P.PCI_CAP_ID_EXP:
            if self.pdev.cfg_size > P.PCI_CFG_SPACE_SIZE:
                self.extended_caps = self.pdev.config_read(P.PCI_CFG_SPACE_SIZE, 4) != 0
            flags = self.pdev.config_read(pos + P.PCI_EXP_FLAGS, 2)
            rc_end = (flags & P.PCI_EXP_FLAGS_TYPE) >> 4 == P.PCI_EXP_TYPE_RC_END
            if flags & P.PCI_EXP_FLAGS_VERS == 1:
                return 0xC if rc_end else 20  # PCI_CAP_EXP_ENDPOINT_SIZEOF_V1
            return 0x2C if rc_end else P.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2
        return 0

    def _cap_init(self) -> None:
        """``vfio_cap_init``: walk the standard list, hiding what vfio does not know."""
        pdev = self.pdev
        if not pdev.config_read(P.PCI_STATUS, 2) & P.PCI_STATUS_CAP_LIST:
            return
        pos = pdev.config_read(P.PCI_CAPABILITY_LIST, 1)
        prev = P.PCI_CAPABILITY_LIST
        loops = (P.PCI_CFG_SPACE_SIZE - P.PCI_STD_HEADER_SIZEOF) // P.PCI_CAP_SIZEOF
        caps = 0
        while pos and loops:
            loops -= 1
            cap = pdev.config_read(pos, 1)
            nxt = pdev.config_read(pos + P.PCI_CAP_LIST_NEXT, 1)
            length = PCI_CAP_LENGTH.get(cap, 0) if cap else 0
            if length == 0xFF:
                length = self._cap_len(cap, pos)
            if not length:
                self.vconfig[prev] = nxt  # hide it
                pos = nxt
                continue
            self.map[pos:pos + length] = bytes([cap]) * length
            self._fill(pos, length)
            if cap == P.PCI_CAP_ID_PM:
                pmc, ctrl = pos + P.PCI_PM_PMC, pos + P.PCI_PM_CTRL
                self.vset(pmc, 2, self.vget(pmc, 2) & ~P.PCI_PM_CAP_PME_MASK)
                self.vset(ctrl, 2, self.vget(ctrl, 2) & ~(P.PCI_PM_CTRL_PME_ENABLE
                                                          | P.PCI_PM_CTRL_PME_STATUS))
            prev = pos + P.PCI_CAP_LIST_NEXT
            pos = nxt
            caps += 1
        if not caps:
            self.vset(P.PCI_STATUS, 2, self.vget(P.PCI_STATUS, 2) & ~P.PCI_STATUS_CAP_LIST)

    def _ecap_init(self) -> None:
        """``vfio_ecap_init``: a hidden capability is skipped by re-linking its
        predecessor, or, first in the list, kept as an anchor with id and version 0."""
        if not self.extended_caps:
            return
        pdev = self.pdev
        epos = P.PCI_CFG_SPACE_SIZE
        prev: int | None = None
        loops = (pdev.cfg_size - P.PCI_CFG_SPACE_SIZE) // P.PCI_CAP_SIZEOF
        ecaps = 0
        while loops and epos >= P.PCI_CFG_SPACE_SIZE:
            loops -= 1
            header = pdev.config_read(epos, 4)
            ecap = P.PCI_EXT_CAP_ID(header)
            length = PCI_EXT_CAP_LENGTH.get(ecap, 0)
            hidden = False
            if not length:
                if prev is not None:
                    epos = P.PCI_EXT_CAP_NEXT(header)
                    self.vset(prev, 4, (self.vget(prev, 4) & ~(0xFFC << 20)) | (epos << 20))
                    continue
                length, hidden = P.PCI_CAP_SIZEOF, True
            self.map[epos:epos + length] = bytes([ecap & 0xFF]) * length  # memset: a u8
            self._fill(epos, length)
            if hidden:
                self.vset(epos, 4, self.vget(epos, 4) & (0xFFC << 20))
            else:
                ecaps += 1
            prev = epos
            epos = P.PCI_EXT_CAP_NEXT(header)
        if not ecaps:
            self.vset(P.PCI_CFG_SPACE_SIZE, 4, 0)

    # -- BARs --------------------------------------------------------------------------------
    def bar_fixup(self) -> None:
        """``vfio_bar_fixup``: the virtual BARs answer sizing like hardware would."""
        if not self.bardirty:
            return
        pdev = self.pdev
        i = 0
        while i < P.PCI_STD_NUM_BARS:
            off = P.PCI_BASE_ADDRESS_0 + 4 * i
            bar = pdev.bars[i]
            if bar is None or not pdev.bar_start[i]:
                self.vset(off, 4, 0)  # unmapped by the host = unimplemented to the user
                i += 1
                continue
            mask = ~(bar.size - 1)
            self.vset(off, 4, (self.vget(off, 4) & mask) | bar.flags)
            if bar.mem64:
                self.vset(off + 4, 4, self.vget(off + 4, 4) & (mask >> 32))
                i += 1
            i += 1
        self.vset(P.PCI_ROM_ADDRESS, 4, 0)  # no ROM BAR and no shadow ROM
        self.bardirty = False

    def need_bar_restore(self) -> bool:
        for i, rbar in enumerate(self.rbar[:P.PCI_STD_NUM_BARS]):
            if rbar and self.pdev.config_read(P.PCI_BASE_ADDRESS_0 + 4 * i, 4) != rbar:
                return True
        return False

    def bar_restore(self) -> None:
        """``vfio_bar_restore``: the real BARs back after a reset we did not see."""
        if self.pdev.is_virtfn:
            return
        for i, rbar in enumerate(self.rbar[:P.PCI_STD_NUM_BARS]):
            self.pdev.config_write(P.PCI_BASE_ADDRESS_0 + 4 * i, 4, rbar)
        self.pdev.config_write(P.PCI_ROM_ADDRESS, 4, self.rbar[P.PCI_STD_NUM_BARS])
        if self.vdev.nointx:
            cmd = self.pdev.config_read(P.PCI_COMMAND, 2)
            self.pdev.config_write(P.PCI_COMMAND, 2, cmd | P.PCI_COMMAND_INTX_DISABLE)

    def pcie_get_mps(self) -> int:
        devctl = self.pdev.config_read(self.pdev.pcie_cap + P.PCI_EXP_DEVCTL, 2)
        return 128 << ((devctl & P.PCI_EXP_DEVCTL_PAYLOAD) >> 5)

    # -- access --------------------------------------------------------------------------
    def find_cap_start(self, pos: int) -> int:
        cap = self.map[pos]
        if cap == PCI_CAP_ID_BASIC:
            return 0
        base = P.PCI_CFG_SPACE_SIZE if pos >= P.PCI_CFG_SPACE_SIZE else P.PCI_STD_HEADER_SIZEOF
        while pos - 1 >= base and self.map[pos - 1] == cap:
            pos -= 1
        return pos

    def _remaining_dword(self, pos: int) -> int:
        cap = self.map[pos]
        i = 1
        while (pos + i) % 4 and self.map[pos + i] == cap:
            i += 1
        return i

    def rw_single(self, pos: int, count: int, data: bytes | None) -> tuple[int, bytes]:
        """``vfio_pci_config_rw_single``: one aligned chunk within one capability.
        Returns (bytes done, what was read)."""
        if pos < 0 or pos >= self.pdev.cfg_size or pos + count > self.pdev.cfg_size:
            raise IommuError(errno.EFAULT, f"config access {count}@{pos:#x} outside the "
                             "config space")
        count = min(count, self._remaining_dword(pos))
        count = 4 if count >= 4 and not pos % 4 else 2 if count >= 2 and not pos % 2 else 1
        cap_id = self.map[pos]
        cap_start = 0
        perm: PermBits | None
        if cap_id == PCI_CAP_ID_INVALID:
            perm, cap_start = UNASSIGNED_PERMS, pos
        elif cap_id == PCI_CAP_ID_INVALID_VIRT:
            perm, cap_start = VIRT_PERMS, pos
        elif pos >= P.PCI_CFG_SPACE_SIZE:
            perm = ECAP_PERMS.get(cap_id, DIRECT_RO_PERMS)
            cap_start = self.find_cap_start(pos)
        else:
            perm = self.msi_perm if cap_id == P.PCI_CAP_ID_MSI else CAP_PERMS.get(
                cap_id, DIRECT_RO_PERMS)
            if cap_id > PCI_CAP_ID_BASIC:
                cap_start = self.find_cap_start(pos)
        assert perm is not None
        offset = pos - cap_start
        if data is not None:
            if perm.writefn is None:
                return count, b""
            val = int.from_bytes(data[:count], "little")
            return perm.writefn(self, pos, count, perm, offset, val), b""
        val = perm.readfn(self, pos, count, perm, offset) if perm.readfn else 0
        return count, (val & _mask(count)).to_bytes(count, "little")

    def rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """``vfio_pci_config_rw``: the bytes read, or the count written."""
        pos &= vf.VFIO_PCI_OFFSET_MASK
        out = bytearray()
        done = 0
        while count:
            n, got = self.rw_single(pos, count, None if data is None else data[done:])
            out += got
            count -= n
            done += n
            pos += n
        return bytes(out) if data is None else done

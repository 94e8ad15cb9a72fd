"""A PCI Express function as hardware: its configuration space, its BARs, its power state
and Function Level Reset, plus the few PCI-core routines that drive them (save/restore
around a reset, as ``drivers/pci/pci.c`` does).

Every simulated PCI device is the same function of the project's own (not a PCI-SIG
assignment; absent from the pci.ids database):

* vendor :data:`PCI_VENDOR_ID_IOMMU_SIM` ``0x8e5a``, device :data:`PCI_DEVICE_ID_IOMMU_SIM`
  ``0x0001``, revision 1, class ``0x088000`` (system peripheral, other), header type 0;
* standard capabilities: Power Management (D0/D3hot, No_Soft_Reset), MSI (64-bit, per-vector
  masking, one vector), PCI Express v2 endpoint (FLR capable);
* extended capabilities as the Machine config gives them (:class:`~.bus.Device`): ATS at
  0x100 (``ats``), PRI (``pri``), PASID (``pasid_bits``, ``pasid_exec``, ``pasid_priv``),
  chained in that order;
* INTx pin A (none for a VF), and the BARs its model declares (:class:`PciBar`; by default
  BAR0 is the DMA engine of :mod:`~iommu_core.platform.dma_engine`). A VF reads
  vendor/device 0xffff and has no Memory Space Enable, as SR-IOV says.

A device model raises its interrupt with :meth:`PciFunction.raise_irq`: an MSI when MSI is
enabled (the vector's Pending bit while it is masked), else INTx pin A, level-triggered
until :meth:`PciFunction.lower_irq`, shown in Status.Interrupt and held back by Command's
Interrupt Disable. The host sees them on :attr:`PciFunction.msi_irq` and
:attr:`PciFunction.intx_irq`.

Registers behave as the PCI Express base specification defines them: read-only bits keep
their value, RW1C bits clear when written with 1, reserved space reads 0 and ignores writes.
"""

from __future__ import annotations

import abc
import errno
from typing import TYPE_CHECKING

import attrs

from iommu_core.errors import IommuError
from iommu_core.platform.dma import IrqLine, Mmio

if TYPE_CHECKING:
    from iommu_core.platform.bus import Device

# -- include/uapi/linux/pci_regs.h (the names the kernel uses) ------------------------------
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096
PCI_STD_HEADER_SIZEOF = 64
PCI_STD_NUM_BARS = 6
PCI_ROM_RESOURCE = 6

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS = 0x06
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_STATUS_ERROR_BITS = 0xF900  # the RW1C error bits: parity, aborts, SERR
PCI_CLASS_REVISION = 0x08
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BIST = 0x0F
PCI_BASE_ADDRESS_0 = 0x10
PCI_BASE_ADDRESS_5 = 0x24
PCI_BASE_ADDRESS_SPACE_IO = 0x01
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_ROM_ADDRESS_ENABLE = 0x01
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_CAP_LIST_ID = 0
PCI_CAP_LIST_NEXT = 1
PCI_CAP_FLAGS = 2
PCI_CAP_SIZEOF = 4
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11

PCI_PM_PMC = 2
PCI_PM_CAP_PME_MASK = 0xF800
PCI_PM_CAP_D1 = 0x0200
PCI_PM_CAP_D2 = 0x0400
PCI_PM_CTRL = 4
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 0x0008
PCI_PM_CTRL_PME_ENABLE = 0x0100
PCI_PM_CTRL_PME_STATUS = 0x8000
PCI_PM_SIZEOF = 8
PCI_D0, PCI_D1, PCI_D2, PCI_D3HOT = 0, 1, 2, 3

PCI_MSI_FLAGS = 2
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_FLAGS_MASKBIT = 0x0100
PCI_MSI_ADDRESS_LO = 4
PCI_MSI_ADDRESS_HI = 8
PCI_MSI_DATA_32 = 8
PCI_MSI_DATA_64 = 12
PCI_MSI_MASK_32 = 12
PCI_MSI_MASK_64 = 16
PCI_MSI_PENDING_32 = 16
PCI_MSI_PENDING_64 = 20

PCI_MSIX_FLAGS = 2
PCI_MSIX_FLAGS_QSIZE = 0x07FF

PCI_EXP_FLAGS = 2
PCI_EXP_FLAGS_VERS = 0x000F
PCI_EXP_FLAGS_TYPE = 0x00F0
PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_DEVCAP = 4
PCI_EXP_DEVCAP_PAYLOAD = 0x00000007
PCI_EXP_DEVCAP_EXT_TAG = 0x00000020
PCI_EXP_DEVCAP_RBER = 0x00008000
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCTL = 8
PCI_EXP_DEVCTL_CERE = 0x0001
PCI_EXP_DEVCTL_NFERE = 0x0002
PCI_EXP_DEVCTL_FERE = 0x0004
PCI_EXP_DEVCTL_URRE = 0x0008
PCI_EXP_DEVCTL_RELAX_EN = 0x0010
PCI_EXP_DEVCTL_PAYLOAD = 0x00E0
PCI_EXP_DEVCTL_EXT_TAG = 0x0100
PCI_EXP_DEVCTL_PHANTOM = 0x0200
PCI_EXP_DEVCTL_NOSNOOP_EN = 0x0800
PCI_EXP_DEVCTL_READRQ = 0x7000
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_EXP_DEVSTA = 10
PCI_EXP_LNKCAP = 12
PCI_EXP_LNKCTL = 16
PCI_EXP_LNKCTL_ASPMC = 0x0003
PCI_EXP_LNKCTL_CCC = 0x0040
PCI_EXP_LNKCTL_ES = 0x0080
PCI_EXP_LNKSTA = 18
PCI_EXP_DEVCAP2 = 36
PCI_EXP_DEVCAP2_ATOMIC_COMP32 = 0x00000080
PCI_EXP_DEVCAP2_ATOMIC_COMP64 = 0x00000100
PCI_EXP_DEVCAP2_ATOMIC_COMP128 = 0x00000200
PCI_EXP_DEVCTL2 = 40
PCI_EXP_DEVCTL2_COMP_TIMEOUT = 0x000F
PCI_EXP_DEVCTL2_COMP_TMOUT_DIS = 0x0010
PCI_EXP_DEVCTL2_ARI = 0x0020
PCI_EXP_LNKCAP2 = 44
PCI_EXP_LNKCTL2 = 48
PCI_EXP_LNKSTA2 = 50
PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 0x3C

PCI_EXT_CAP_ID_ATS = 0x0F
PCI_EXT_CAP_ID_PRI = 0x13
PCI_EXT_CAP_ID_PASID = 0x1B
PCI_ATS_CAP = 0x04
PCI_ATS_CAP_PAGE_ALIGNED = 0x0020
PCI_ATS_CTRL = 0x06
PCI_ATS_CTRL_ENABLE = 0x8000
PCI_ATS_CTRL_STU = 0x001F
PCI_EXT_CAP_ATS_SIZEOF = 8
PCI_PRI_CTRL = 0x04
PCI_PRI_CTRL_ENABLE = 0x0001
PCI_PRI_CTRL_RESET = 0x0002
PCI_PRI_STATUS = 0x06
PCI_PRI_STATUS_RF = 0x0001
PCI_PRI_STATUS_UPRGI = 0x0002
PCI_PRI_STATUS_STOPPED = 0x0100
PCI_PRI_STATUS_PASID = 0x8000
PCI_PRI_MAX_REQ = 0x08
PCI_PRI_ALLOC_REQ = 0x0C
PCI_EXT_CAP_PRI_SIZEOF = 16
PCI_PASID_CAP = 0x04
PCI_PASID_CAP_EXEC = 0x0002
PCI_PASID_CAP_PRIV = 0x0004
PCI_PASID_CTRL = 0x06
PCI_PASID_CTRL_ENABLE = 0x0001
PCI_PASID_CTRL_EXEC = 0x0002
PCI_PASID_CTRL_PRIV = 0x0004
PCI_EXT_CAP_PASID_SIZEOF = 8


def PCI_EXT_CAP_ID(header: int) -> int:
    return header & 0xFFFF


def PCI_EXT_CAP_NEXT(header: int) -> int:
    return (header >> 20) & 0xFFC


# -- the function's identity ---------------------------------------------------------------
PCI_VENDOR_ID_IOMMU_SIM = 0x8E5A
PCI_DEVICE_ID_IOMMU_SIM = 0x0001
PCI_CLASS_SYSTEM_OTHER = 0x0880
#: What the function's PRI capability can have outstanding (Outstanding Page Request
#: Capacity) and its ATS Invalidate Queue Depth (0 = 32).
PRI_MAX_REQUESTS = 256

# The layout of every simulated function's config space.
PM_CAP = 0x40
MSI_CAP = 0x50
EXP_CAP = 0x70
EXT_CAP_STRIDE = 0x10
#: INTx: pin A, routed by firmware to this line (``pdev->irq``).
INTX_LINE = 0x0B


class PciBarOps(Mmio):
    """What a memory BAR decodes: the device's register block (or memory) behind it. One
    access of 1, 2, 4 or 8 bytes at its natural alignment (a TLP and its byte enables);
    never raises for a bad value: a device ignores what it does not understand."""

    @abc.abstractmethod
    def read(self, offset: int, size: int) -> int: ...

    @abc.abstractmethod
    def write(self, offset: int, size: int, value: int) -> None: ...

    #: Offsets of registers whose writes start work (doorbells): a mapping of the BAR that
    #: replays stores in bulk (``iommu-sim exec``) writes them after the others.
    doorbells: frozenset[int] = frozenset()

    def reset(self) -> None:
        """Function Level Reset: back to the power-on state."""

    def snapshot(self, offset: int, n: int) -> bytes:
        """The ``n`` bytes from ``offset`` as 32-bit reads would return them (reads have no
        side effects); models override it with something faster."""
        return b"".join(self.read(o, 4).to_bytes(4, "little") for o in range(offset,
                                                                             offset + n, 4))

    def read32(self, offset: int) -> int:
        return self.read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.write(offset, 4, value)

    def read64(self, offset: int) -> int:
        return self.read(offset, 8)

    def write64(self, offset: int, value: int) -> None:
        self.write(offset, 8, value)


@attrs.frozen
class PciBar:
    """A memory BAR: ``size`` bytes (a power of two, at least 16) decoded by ``ops``."""

    ops: PciBarOps
    size: int
    mem64: bool = False
    prefetch: bool = False

    def __attrs_post_init__(self) -> None:
        if self.size < 16 or self.size & (self.size - 1):
            raise IommuError(errno.EINVAL, f"BAR size {self.size:#x} is not a power of two "
                             ">= 16")

    @property
    def flags(self) -> int:
        """The BAR register's read-only low bits."""
        return ((PCI_BASE_ADDRESS_MEM_TYPE_64 if self.mem64 else 0)
                | (PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetch else 0))


class PciConfigSpace:
    """The register file: values, writable bits, write-1-to-clear bits, power-on values."""

    __slots__ = ("data", "power_on", "rw", "rw1c")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.rw = bytearray(size)
        self.rw1c = bytearray(size)
        self.power_on = b""

    def __len__(self) -> int:
        return len(self.data)

    def define(self, off: int, size: int, value: int, rw: int = 0, rw1c: int = 0) -> None:
        """Build time: a register's power-on value and its writable / RW1C bits."""
        self.data[off:off + size] = value.to_bytes(size, "little")
        self.rw[off:off + size] = rw.to_bytes(size, "little")
        self.rw1c[off:off + size] = rw1c.to_bytes(size, "little")

    def read(self, off: int, size: int) -> int:
        return int.from_bytes(self.data[off:off + size], "little")

    def write(self, off: int, size: int, value: int) -> None:
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            old = self.data[off + i]
            new = (old & ~self.rw[off + i]) | (b & self.rw[off + i])
            self.data[off + i] = new & ~(b & self.rw1c[off + i]) & 0xFF

    def reset(self, keep: dict[int, tuple[int, int]]) -> None:
        """Back to the power-on values, except the bits ``keep`` names (offset -> (size,
        mask)) which a Function Level Reset leaves alone."""
        kept = {off: (size, mask, self.read(off, size)) for off, (size, mask) in keep.items()}
        self.data[:] = self.power_on
        for off, (size, mask, value) in kept.items():
            cur = self.read(off, size)
            self.data[off:off + size] = ((cur & ~mask) | (value & mask)).to_bytes(size, "little")


class PciFunction:
    """One PCI Express function (``struct pci_dev`` on the hardware side): config space,
    BARs, D-state. ``config_read``/``config_write`` are the bus's configuration requests
    (``pci_read_config_*`` / ``pci_user_*_config_*``); ``bar_read``/``bar_write`` its memory
    requests."""

    def __init__(self, dev: Device, bars: tuple[PciBar | None, ...] = (),
                 bar_base: int = 0xE000_0000) -> None:
        self.name = dev.name
        self.is_virtfn = dev.is_virtfn
        self.cfg_size = PCI_CFG_SPACE_EXP_SIZE
        self.vendor = PCI_VENDOR_ID_IOMMU_SIM
        self.device = PCI_DEVICE_ID_IOMMU_SIM
        bars = tuple(bars) + (None,) * (PCI_STD_NUM_BARS - len(bars))
        if len(bars) != PCI_STD_NUM_BARS:
            raise IommuError(errno.EINVAL, f"{dev.name}: more than {PCI_STD_NUM_BARS} BARs")
        self.bars: tuple[PciBar | None, ...] = bars
        #: ``pci_resource_start`` of each BAR (firmware's assignment; 0 = none).
        self.bar_start = [0] * PCI_STD_NUM_BARS
        self.pm_cap, self.msi_cap, self.pcie_cap, self.msix_cap = PM_CAP, MSI_CAP, EXP_CAP, 0
        #: ``pdev->irq``: the routed INTx line (0 = none).
        self.irq = 0 if dev.is_virtfn else INTX_LINE
        self.no_command_memory = dev.is_virtfn
        self.current_state = PCI_D0
        self.ext_caps: dict[int, int] = {}  # ext cap id -> offset
        #: The function's interrupts as the host's interrupt controller delivers them:
        #: its MSI vector and INTx pin A (``request_irq`` on them).
        self.msi_irq = IrqLine(f"{dev.name}-msi")
        self.intx_irq = IrqLine(f"{dev.name}-intx")
        #: The device holds INTx asserted (level), whether or not Interrupt Disable lets it
        #: through.
        self.intx_level = False
        self._intx_asserted = False
        self.cfg = PciConfigSpace(self.cfg_size)
        self._build(dev)
        self.cfg.power_on = bytes(self.cfg.data)
        self._assign_resources(bar_base)

    # -- construction ------------------------------------------------------------------
    def _build(self, dev: Device) -> None:
        c = self.cfg
        vf = dev.is_virtfn
        ident = 0xFFFF_FFFF if vf else (self.device << 16) | self.vendor
        c.define(PCI_VENDOR_ID, 4, ident)
        cmd_rw = (PCI_COMMAND_MASTER | PCI_COMMAND_PARITY | PCI_COMMAND_SERR
                  | PCI_COMMAND_INTX_DISABLE | (0 if vf else PCI_COMMAND_MEMORY))
        c.define(PCI_COMMAND, 2, 0, rw=cmd_rw)
        c.define(PCI_STATUS, 2, PCI_STATUS_CAP_LIST, rw1c=PCI_STATUS_ERROR_BITS)
        c.define(PCI_CLASS_REVISION, 4, (PCI_CLASS_SYSTEM_OTHER << 16) | 0x01)
        c.define(PCI_CACHE_LINE_SIZE, 1, 0, rw=0xFF)
        for i, bar in enumerate(self.bars):
            if bar is None:
                continue
            off = PCI_BASE_ADDRESS_0 + 4 * i
            mask = ~(bar.size - 1)
            c.define(off, 4, bar.flags, rw=mask & 0xFFFF_FFF0)
            if bar.mem64:
                if i + 1 >= PCI_STD_NUM_BARS or self.bars[i + 1] is not None:
                    raise IommuError(errno.EINVAL, f"{dev.name}: 64-bit BAR{i} has no upper "
                                     "half")
                c.define(off + 4, 4, 0, rw=(mask >> 32) & 0xFFFF_FFFF)
        c.define(PCI_SUBSYSTEM_VENDOR_ID, 4, ident)
        c.define(PCI_CAPABILITY_LIST, 1, PM_CAP)
        c.define(PCI_INTERRUPT_LINE, 1, 0, rw=0xFF)
        c.define(PCI_INTERRUPT_PIN, 1, 0 if vf else 1)
        # Power Management v3: D0 and D3hot only, no PME, state kept across D3hot.
        c.define(PM_CAP, 2, (MSI_CAP << 8) | PCI_CAP_ID_PM)
        c.define(PM_CAP + PCI_PM_PMC, 2, 0x0003)
        c.define(PM_CAP + PCI_PM_CTRL, 2, PCI_PM_CTRL_NO_SOFT_RESET, rw=PCI_PM_CTRL_STATE_MASK)
        # MSI: 64-bit, per-vector masking, one vector (Multiple Message Capable 0).
        c.define(MSI_CAP, 2, (EXP_CAP << 8) | PCI_CAP_ID_MSI)
        c.define(MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT,
                 rw=PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        c.define(MSI_CAP + PCI_MSI_ADDRESS_LO, 4, 0, rw=0xFFFF_FFFC)
        c.define(MSI_CAP + PCI_MSI_ADDRESS_HI, 4, 0, rw=0xFFFF_FFFF)
        c.define(MSI_CAP + PCI_MSI_DATA_64, 2, 0, rw=0xFFFF)
        c.define(MSI_CAP + PCI_MSI_MASK_64, 4, 0, rw=0x1)
        # PCI Express v2, endpoint: MPS 256, extended tags, FLR.
        c.define(EXP_CAP, 2, PCI_CAP_ID_EXP)
        c.define(EXP_CAP + PCI_EXP_FLAGS, 2, (PCI_EXP_TYPE_ENDPOINT << 4) | 2)
        c.define(EXP_CAP + PCI_EXP_DEVCAP, 4, 1 | PCI_EXP_DEVCAP_EXT_TAG | PCI_EXP_DEVCAP_RBER
                 | PCI_EXP_DEVCAP_FLR)
        devctl_rw = (PCI_EXP_DEVCTL_CERE | PCI_EXP_DEVCTL_NFERE | PCI_EXP_DEVCTL_FERE
                     | PCI_EXP_DEVCTL_URRE | PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_PAYLOAD
                     | PCI_EXP_DEVCTL_EXT_TAG | PCI_EXP_DEVCTL_NOSNOOP_EN
                     | PCI_EXP_DEVCTL_READRQ)
        c.define(EXP_CAP + PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN
                 | (2 << 12), rw=devctl_rw)
        c.define(EXP_CAP + PCI_EXP_DEVSTA, 2, 0, rw1c=0x000F)
        c.define(EXP_CAP + PCI_EXP_LNKCAP, 4, (4 << 4) | 4)  # x4, 16 GT/s
        c.define(EXP_CAP + PCI_EXP_LNKCTL, 2, 0,
                 rw=PCI_EXP_LNKCTL_ASPMC | PCI_EXP_LNKCTL_CCC | PCI_EXP_LNKCTL_ES)
        c.define(EXP_CAP + PCI_EXP_LNKSTA, 2, (4 << 4) | 4)
        c.define(EXP_CAP + PCI_EXP_DEVCAP2, 4, 0x1F)  # completion timeout ranges A-D, disable
        c.define(EXP_CAP + PCI_EXP_DEVCTL2, 2, 0,
                 rw=PCI_EXP_DEVCTL2_COMP_TIMEOUT | PCI_EXP_DEVCTL2_COMP_TMOUT_DIS)
        c.define(EXP_CAP + PCI_EXP_LNKCAP2, 4, 0x1E)  # 2.5 to 16 GT/s
        c.define(EXP_CAP + PCI_EXP_LNKCTL2, 2, 4, rw=0x000F)
        self._build_ext_caps(dev)

    def _build_ext_caps(self, dev: Device) -> None:
        c = self.cfg
        caps: list[tuple[int, int]] = []  # (id, version)
        if dev.ats:
            caps.append((PCI_EXT_CAP_ID_ATS, 1))
        if dev.pri:
            caps.append((PCI_EXT_CAP_ID_PRI, 1))
        if dev.pasid_bits:
            caps.append((PCI_EXT_CAP_ID_PASID, 1))
        pos = PCI_CFG_SPACE_SIZE
        for i, (cap, ver) in enumerate(caps):
            nxt = pos + EXT_CAP_STRIDE if i + 1 < len(caps) else 0
            c.define(pos, 4, (nxt << 20) | (ver << 16) | cap)
            self.ext_caps[cap] = pos
            if cap == PCI_EXT_CAP_ID_ATS:
                c.define(pos + PCI_ATS_CAP, 2, PCI_ATS_CAP_PAGE_ALIGNED)
                c.define(pos + PCI_ATS_CTRL, 2, 0, rw=PCI_ATS_CTRL_ENABLE | PCI_ATS_CTRL_STU)
            elif cap == PCI_EXT_CAP_ID_PRI:
                c.define(pos + PCI_PRI_CTRL, 2, 0, rw=PCI_PRI_CTRL_ENABLE)
                status = PCI_PRI_STATUS_STOPPED | (PCI_PRI_STATUS_PASID if dev.pasid_bits else 0)
                c.define(pos + PCI_PRI_STATUS, 2, status,
                         rw1c=PCI_PRI_STATUS_RF | PCI_PRI_STATUS_UPRGI)
                c.define(pos + PCI_PRI_MAX_REQ, 4, PRI_MAX_REQUESTS)
                c.define(pos + PCI_PRI_ALLOC_REQ, 4, 0, rw=0xFFFF_FFFF)
            else:
                cap_bits = (((dev.pasid_bits - 1) & 0x1F) << 8
                            | (PCI_PASID_CAP_EXEC if dev.pasid_exec else 0)
                            | (PCI_PASID_CAP_PRIV if dev.pasid_priv else 0))
                ctrl_rw = (PCI_PASID_CTRL_ENABLE
                           | (PCI_PASID_CTRL_EXEC if dev.pasid_exec else 0)
                           | (PCI_PASID_CTRL_PRIV if dev.pasid_priv else 0))
                c.define(pos + PCI_PASID_CAP, 2, cap_bits)
                c.define(pos + PCI_PASID_CTRL, 2, 0, rw=ctrl_rw)
            pos += EXT_CAP_STRIDE

    def _assign_resources(self, base: int) -> None:
        """Firmware enumeration: BAR addresses (naturally aligned, from ``base``) and the
        INTx line."""
        addr = base
        for i, bar in enumerate(self.bars):
            if bar is None:
                continue
            addr = (addr + bar.size - 1) & ~(bar.size - 1)
            self.bar_start[i] = addr
            off = PCI_BASE_ADDRESS_0 + 4 * i
            self.cfg.write(off, 4, addr & 0xFFFF_FFFF)
            if bar.mem64:
                self.cfg.write(off + 4, 4, addr >> 32)
            addr += bar.size
        self.cfg.write(PCI_INTERRUPT_LINE, 1, self.irq)

    # -- configuration requests ----------------------------------------------------------
    def _check(self, off: int, size: int) -> None:
        if size not in (1, 2, 4) or off & (size - 1) or off < 0 or off + size > self.cfg_size:
            raise IommuError(errno.EINVAL, f"{self.name}: bad config access {size}@{off:#x}")

    def config_read(self, off: int, size: int) -> int:
        self._check(off, size)
        return self.cfg.read(off, size)

    def config_write(self, off: int, size: int, value: int) -> None:
        self._check(off, size)
        cfg = self.cfg
        pm_ctrl = self.pm_cap + PCI_PM_CTRL
        devctl = self.pcie_cap + PCI_EXP_DEVCTL
        flr = (off <= devctl + 1 < off + size
               and (value >> (8 * (devctl + 1 - off))) & (PCI_EXP_DEVCTL_BCR_FLR >> 8))
        was_masked = self._msi_masked()
        cfg.write(off, size, value)
        if off < PCI_COMMAND + 2 and off + size > PCI_COMMAND:
            self._update_intx()
        if was_masked and not self._msi_masked() and self._msi_pending():
            self._msi_send()  # unmasked with a message pending: it goes now
        if off <= pm_ctrl < off + size:
            state = (value >> (8 * (pm_ctrl - off))) & PCI_PM_CTRL_STATE_MASK
            self._set_d_state(state)
        pri = self.ext_caps.get(PCI_EXT_CAP_ID_PRI)
        if pri is not None and off <= pri + PCI_PRI_CTRL < off + size and (
                (value >> (8 * (pri + PCI_PRI_CTRL - off))) & PCI_PRI_CTRL_RESET):
            # PRI Reset: clear the status, the allocation is the software's to redo.
            cfg.write(pri + PCI_PRI_STATUS, 2, PCI_PRI_STATUS_RF | PCI_PRI_STATUS_UPRGI)
        if flr:
            self.flr()

    def _set_d_state(self, state: int) -> None:
        """A PowerState write: D1/D2 are not supported, so the write is discarded."""
        c = self.cfg
        ctrl = self.pm_cap + PCI_PM_CTRL
        if state in (PCI_D1, PCI_D2):
            state = self.current_state
        self.current_state = state
        c.data[ctrl] = (c.data[ctrl] & ~PCI_PM_CTRL_STATE_MASK) | state

    # -- interrupts -----------------------------------------------------------------------
    def msi_enabled(self) -> bool:
        return bool(self.msi_cap and self.cfg.read(self.msi_cap + PCI_MSI_FLAGS, 2)
                    & PCI_MSI_FLAGS_ENABLE)

    def _msi_masked(self) -> bool:
        return bool(self.msi_cap and self.cfg.read(self.msi_cap + PCI_MSI_MASK_64, 4) & 1)

    def _msi_pending(self) -> bool:
        return bool(self.msi_cap and self.cfg.read(self.msi_cap + PCI_MSI_PENDING_64, 4) & 1)

    def _set_msi_pending(self, on: bool) -> None:
        off = self.msi_cap + PCI_MSI_PENDING_64
        self.cfg.data[off] = (self.cfg.data[off] & ~1) | int(on)

    def _msi_send(self) -> None:
        """The message is written; with no handler on the vector it is lost (spurious),
        not kept: MSI is an edge."""
        self._set_msi_pending(False)
        if self.msi_irq.handler is not None:
            self.msi_irq.assert_irq()

    def _update_intx(self) -> None:
        """Status.Interrupt follows the device's level; the pin is asserted while Interrupt
        Disable is clear, and a newly asserted pin interrupts."""
        c = self.cfg
        status = c.read(PCI_STATUS, 2) & ~PCI_STATUS_INTERRUPT
        c.data[PCI_STATUS:PCI_STATUS + 2] = (
            status | (PCI_STATUS_INTERRUPT if self.intx_level else 0)).to_bytes(2, "little")
        asserted = self.intx_level and not c.read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE
        if asserted and not self._intx_asserted:
            self._intx_asserted = True
            self.intx_irq.assert_irq()
        elif not asserted:
            self._intx_asserted = False
            self.intx_irq.pending = False

    def raise_irq(self) -> None:
        """The device signals its interrupt: an MSI (Pending while masked) when MSI is
        enabled and the function is in D0, else INTx asserted until :meth:`lower_irq`. A
        function without a routed INTx pin (a VF) and MSI off signals nothing."""
        if self.msi_enabled():
            if self.current_state != PCI_D0:
                return
            if self._msi_masked():
                self._set_msi_pending(True)
            else:
                self._msi_send()
            return
        if self.irq:
            self.intx_level = True
            self._update_intx()

    def lower_irq(self) -> None:
        """The device deasserts INTx (MSI is an edge: nothing to lower)."""
        if self.intx_level:
            self.intx_level = False
            self._update_intx()

    # -- memory requests ------------------------------------------------------------------
    def memory_decode(self) -> bool:
        """The function answers memory requests: D0 and Memory Space Enable (a VF has no
        MSE: the PF's SR-IOV control decides)."""
        cmd = self.cfg.read(PCI_COMMAND, 2)
        return self.current_state == PCI_D0 and (self.no_command_memory
                                                 or bool(cmd & PCI_COMMAND_MEMORY))

    def bar_read(self, bar: int, off: int, size: int) -> int:
        """A read of BAR ``bar``; without decode it is an Unsupported Request (all ones)."""
        b = self.bars[bar]
        if b is None or not self.memory_decode():
            return (1 << (8 * size)) - 1
        return b.ops.read(off, size)

    def bar_write(self, bar: int, off: int, size: int, value: int) -> None:
        b = self.bars[bar]
        if b is not None and self.memory_decode():
            b.ops.write(off, size, value)

    # -- reset ----------------------------------------------------------------------------
    def flr(self) -> None:
        """Function Level Reset: registers to their power-on values (Max_Payload_Size and
        the link's ASPM/CCC/ES stay, PCIe r6.0 6.6.2), D0, and the device's state."""
        e = self.pcie_cap
        self.cfg.reset({e + PCI_EXP_DEVCTL: (2, PCI_EXP_DEVCTL_PAYLOAD),
                        e + PCI_EXP_LNKCTL: (2, PCI_EXP_LNKCTL_ASPMC | PCI_EXP_LNKCTL_CCC
                                             | PCI_EXP_LNKCTL_ES)})
        self.current_state = PCI_D0
        self.intx_level = False
        self._update_intx()
        for bar in self.bars:
            if bar is not None:
                bar.ops.reset()

    def bus_master(self) -> bool:
        """Bus Master Enable: the function may issue memory requests (its DMA)."""
        return bool(self.cfg.read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER)

    def bar_window(self, bar: int) -> PciBarWindow:
        """BAR ``bar`` as an :class:`~iommu_core.platform.dma.Mmio` (what a CPU mapping of
        the BAR reaches: memory requests to the function)."""
        return PciBarWindow(self, bar)


class PciBarWindow(Mmio):
    """A mapping of one BAR: loads and stores become memory requests to the function
    (all ones and dropped without memory decode, as a real mapping would see them)."""

    def __init__(self, pdev: PciFunction, bar: int) -> None:
        self.pdev = pdev
        self.bar = bar
        b = pdev.bars[bar]
        self.ops = b.ops if b is not None else None

    @property
    def doorbells(self) -> frozenset[int]:
        return self.ops.doorbells if self.ops is not None else frozenset()

    def _size(self) -> int:
        b = self.pdev.bars[self.bar]
        return b.size if b is not None else 0

    def read32(self, offset: int) -> int:
        if offset + 4 > self._size():  # the rest of a small BAR's page decodes nothing
            return 0xFFFF_FFFF
        return self.pdev.bar_read(self.bar, offset, 4)

    def write32(self, offset: int, value: int) -> None:
        if offset + 4 <= self._size():
            self.pdev.bar_write(self.bar, offset, 4, value)

    def snapshot(self, offset: int, n: int) -> bytes:
        if self.ops is None or not self.pdev.memory_decode():
            return b"\xff" * n
        inside = max(0, min(n, self._size() - offset))
        return self.ops.snapshot(offset, inside) + b"\xff" * (n - inside)


# -- the PCI core (drivers/pci/pci.c) -------------------------------------------------------
@attrs.frozen
class PciSavedState:
    """``pci_save_state``: the config registers ``pci_restore_state`` writes back."""

    regs: tuple[tuple[int, int, int], ...]  # (offset, size, value)


def pci_save_state(pdev: PciFunction) -> PciSavedState:
    regs = [(off, 4, pdev.config_read(off, 4)) for off in range(4, PCI_STD_HEADER_SIZEOF, 4)]
    e = pdev.pcie_cap
    regs += [(e + r, 2, pdev.config_read(e + r, 2))
             for r in (PCI_EXP_DEVCTL, PCI_EXP_LNKCTL, PCI_EXP_DEVCTL2, PCI_EXP_LNKCTL2)]
    for cap, ctrl in ((PCI_EXT_CAP_ID_ATS, PCI_ATS_CTRL), (PCI_EXT_CAP_ID_PRI, PCI_PRI_CTRL),
                      (PCI_EXT_CAP_ID_PASID, PCI_PASID_CTRL)):
        pos = pdev.ext_caps.get(cap)
        if pos is not None:
            regs.append((pos + ctrl, 2, pdev.config_read(pos + ctrl, 2)))
    pri = pdev.ext_caps.get(PCI_EXT_CAP_ID_PRI)
    if pri is not None:
        regs.append((pri + PCI_PRI_ALLOC_REQ, 4, pdev.config_read(pri + PCI_PRI_ALLOC_REQ, 4)))
    if pdev.msi_cap:  # pci_restore_msi_state: the message and mask, then the control
        m = pdev.msi_cap
        regs += [(m + r, n, pdev.config_read(m + r, n))
                 for r, n in ((PCI_MSI_ADDRESS_LO, 4), (PCI_MSI_ADDRESS_HI, 4),
                              (PCI_MSI_DATA_64, 2), (PCI_MSI_MASK_64, 4), (PCI_MSI_FLAGS, 2))]
    return PciSavedState(tuple(regs))


def pci_restore_state(pdev: PciFunction, saved: PciSavedState) -> None:
    """Write back what differs (``pci_restore_config_dword``); the FLR bit is never set in
    a saved DEVCTL, and RW1C status bits it carries are clear after a reset anyway."""
    for off, size, value in saved.regs:
        if pdev.config_read(off, size) != value:
            pdev.config_write(off, size, value)


def pci_reset_supported(pdev: PciFunction) -> bool:
    """A reset method exists: PCIe FLR (``pcie_has_flr``)."""
    return bool(pdev.config_read(pdev.pcie_cap + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR)


def pci_try_reset_function(pdev: PciFunction) -> None:
    """``pci_try_reset_function``: save, disable (INTx off, D0), FLR, restore."""
    if not pci_reset_supported(pdev):
        raise IommuError(errno.ENOTTY, f"{pdev.name}: no reset method")
    pci_set_power_state(pdev, PCI_D0)
    saved = pci_save_state(pdev)
    pdev.config_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE)
    devctl = pdev.pcie_cap + PCI_EXP_DEVCTL
    pdev.config_write(devctl, 2, pdev.config_read(devctl, 2) | PCI_EXP_DEVCTL_BCR_FLR)
    pci_restore_state(pdev, saved)


def pci_set_power_state(pdev: PciFunction, state: int) -> None:
    """``pci_set_power_state`` for D0/D3hot; D1/D2 are not supported (EIO)."""
    if state in (PCI_D1, PCI_D2):
        raise IommuError(errno.EIO, f"{pdev.name}: D{state} not supported")
    if pdev.current_state == state:
        return
    ctrl = pdev.pm_cap + PCI_PM_CTRL
    pdev.config_write(ctrl, 2, (pdev.config_read(ctrl, 2) & ~PCI_PM_CTRL_STATE_MASK) | state)


# -- MSI and INTx (drivers/pci/msi, drivers/pci/pci.c) -------------------------------------
PCI_IRQ_INTX = 1 << 0
PCI_IRQ_MSI = 1 << 1
PCI_IRQ_MSIX = 1 << 2
#: The message the host's MSI domain writes: the x86 interrupt window and a vector.
MSI_ADDRESS = 0xFEE0_0000
MSI_DATA = 0x4021


def pci_msi_vec_count(pdev: PciFunction) -> int:
    if not pdev.msi_cap:
        return 0
    flags = pdev.config_read(pdev.msi_cap + PCI_MSI_FLAGS, 2)
    return 1 << ((flags & PCI_MSI_FLAGS_QMASK) >> 1)


def pci_alloc_irq_vectors(pdev: PciFunction, min_vecs: int, max_vecs: int, flags: int) -> int:
    """``pci_alloc_irq_vectors`` for MSI (the function has no MSI-X): program the message,
    turn INTx off and MSI on; the number of vectors. ERANGE for max < min, ENOSPC when the
    function cannot give ``min_vecs``, EINVAL when MSI is already on."""
    if max_vecs < min_vecs:
        raise IommuError(errno.ERANGE, f"max {max_vecs} < min {min_vecs} vectors")
    if not flags & PCI_IRQ_MSI or pci_msi_vec_count(pdev) < min_vecs:
        raise IommuError(errno.ENOSPC, f"{pdev.name}: no {min_vecs} MSI vectors")
    if pdev.msi_enabled():
        raise IommuError(errno.EINVAL, f"{pdev.name}: MSI already enabled")
    nvec = min(pci_msi_vec_count(pdev), max_vecs)
    cap = pdev.msi_cap
    pdev.config_write(cap + PCI_MSI_ADDRESS_LO, 4, MSI_ADDRESS)
    pdev.config_write(cap + PCI_MSI_ADDRESS_HI, 4, 0)
    pdev.config_write(cap + PCI_MSI_DATA_64, 2, MSI_DATA)
    pci_intx(pdev, False)  # pci_intx_for_msi
    flags_now = pdev.config_read(cap + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_QSIZE
    pdev.config_write(cap + PCI_MSI_FLAGS, 2, flags_now | PCI_MSI_FLAGS_ENABLE)
    return nvec


def pci_free_irq_vectors(pdev: PciFunction) -> None:
    """``pci_free_irq_vectors``: MSI off, INTx back on (``pci_intx_for_msi``)."""
    if pdev.msi_enabled():
        cap = pdev.msi_cap
        pdev.config_write(cap + PCI_MSI_FLAGS, 2,
                          pdev.config_read(cap + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_ENABLE)
        pci_intx(pdev, True)


def pci_intx(pdev: PciFunction, enable: bool) -> None:
    """``pci_intx``: clear (enable) or set Interrupt Disable."""
    cmd = pdev.config_read(PCI_COMMAND, 2)
    new = cmd & ~PCI_COMMAND_INTX_DISABLE if enable else cmd | PCI_COMMAND_INTX_DISABLE
    if new != cmd:
        pdev.config_write(PCI_COMMAND, 2, new)


def _pci_check_and_set_intx_mask(pdev: PciFunction, mask: bool) -> bool:
    """Mask only with an interrupt pending, unmask only without: False otherwise."""
    pending = bool(pdev.config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT)
    if mask != pending:
        return False
    pci_intx(pdev, not mask)
    return True


def pci_check_and_mask_intx(pdev: PciFunction) -> bool:
    """``pci_check_and_mask_intx``: mask INTx if this function is the one interrupting."""
    return _pci_check_and_set_intx_mask(pdev, True)


def pci_check_and_unmask_intx(pdev: PciFunction) -> bool:
    """``pci_check_and_unmask_intx``: unmask INTx unless an interrupt is still pending."""
    return _pci_check_and_set_intx_mask(pdev, False)

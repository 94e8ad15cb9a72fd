"""The SMMUv3 register file: pages 0 and 1 of the MMIO window (smmuv3.md §1).

Reads and writes land here and take effect at once, as the architecture's handshakes
allow: CR0ACK and IRQ_CTRLACK follow CR0 / IRQ_CTRL, a GBPA update completes
immediately, and a CMDQ_PROD write makes the SMMU consume the queue before the write
returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_AIDR,
    ARM_SMMU_CMDQ_BASE,
    ARM_SMMU_CMDQ_CONS,
    ARM_SMMU_CMDQ_PROD,
    ARM_SMMU_CR0,
    ARM_SMMU_CR0ACK,
    ARM_SMMU_CR1,
    ARM_SMMU_CR2,
    ARM_SMMU_EVTQ_BASE,
    ARM_SMMU_EVTQ_CONS,
    ARM_SMMU_EVTQ_IRQ_CFG0,
    ARM_SMMU_EVTQ_IRQ_CFG1,
    ARM_SMMU_EVTQ_IRQ_CFG2,
    ARM_SMMU_EVTQ_PROD,
    ARM_SMMU_GBPA,
    ARM_SMMU_GERROR,
    ARM_SMMU_GERROR_IRQ_CFG0,
    ARM_SMMU_GERROR_IRQ_CFG1,
    ARM_SMMU_GERROR_IRQ_CFG2,
    ARM_SMMU_GERRORN,
    ARM_SMMU_IDR0,
    ARM_SMMU_IDR1,
    ARM_SMMU_IDR2,
    ARM_SMMU_IDR3,
    ARM_SMMU_IDR4,
    ARM_SMMU_IDR5,
    ARM_SMMU_IIDR,
    ARM_SMMU_IRQ_CTRL,
    ARM_SMMU_IRQ_CTRLACK,
    ARM_SMMU_MMIO_SIZE,
    ARM_SMMU_PAGE1,
    ARM_SMMU_PRIQ_BASE,
    ARM_SMMU_PRIQ_CONS,
    ARM_SMMU_PRIQ_IRQ_CFG0,
    ARM_SMMU_PRIQ_IRQ_CFG1,
    ARM_SMMU_PRIQ_IRQ_CFG2,
    ARM_SMMU_PRIQ_PROD,
    ARM_SMMU_STRTAB_BASE,
    ARM_SMMU_STRTAB_BASE_CFG,
)
from iommu_core.platform.dma import Mmio

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware

#: 64-bit registers (a 32-bit access reaches one half).
_REG64 = frozenset({
    ARM_SMMU_GERROR_IRQ_CFG0, ARM_SMMU_STRTAB_BASE, ARM_SMMU_CMDQ_BASE,
    ARM_SMMU_EVTQ_BASE, ARM_SMMU_EVTQ_IRQ_CFG0, ARM_SMMU_PRIQ_BASE, ARM_SMMU_PRIQ_IRQ_CFG0,
})
#: Plain storage registers without side effects.
_STORED = frozenset({
    ARM_SMMU_CR1, ARM_SMMU_CR2, ARM_SMMU_GERROR_IRQ_CFG0, ARM_SMMU_GERROR_IRQ_CFG1,
    ARM_SMMU_GERROR_IRQ_CFG2, ARM_SMMU_EVTQ_IRQ_CFG0, ARM_SMMU_EVTQ_IRQ_CFG1,
    ARM_SMMU_EVTQ_IRQ_CFG2, ARM_SMMU_PRIQ_IRQ_CFG0, ARM_SMMU_PRIQ_IRQ_CFG1,
    ARM_SMMU_PRIQ_IRQ_CFG2,
})

REG_NAMES = {
    ARM_SMMU_IDR0: "IDR0", ARM_SMMU_IDR1: "IDR1", ARM_SMMU_IDR2: "IDR2",
    ARM_SMMU_IDR3: "IDR3", ARM_SMMU_IDR4: "IDR4", ARM_SMMU_IDR5: "IDR5",
    ARM_SMMU_IIDR: "IIDR", ARM_SMMU_AIDR: "AIDR", ARM_SMMU_CR0: "CR0",
    ARM_SMMU_CR0ACK: "CR0ACK", ARM_SMMU_CR1: "CR1", ARM_SMMU_CR2: "CR2",
    ARM_SMMU_GBPA: "GBPA", ARM_SMMU_IRQ_CTRL: "IRQ_CTRL",
    ARM_SMMU_IRQ_CTRLACK: "IRQ_CTRLACK", ARM_SMMU_GERROR: "GERROR",
    ARM_SMMU_GERRORN: "GERRORN", ARM_SMMU_GERROR_IRQ_CFG0: "GERROR_IRQ_CFG0",
    ARM_SMMU_STRTAB_BASE: "STRTAB_BASE", ARM_SMMU_STRTAB_BASE_CFG: "STRTAB_BASE_CFG",
    ARM_SMMU_CMDQ_BASE: "CMDQ_BASE", ARM_SMMU_CMDQ_PROD: "CMDQ_PROD",
    ARM_SMMU_CMDQ_CONS: "CMDQ_CONS", ARM_SMMU_EVTQ_BASE: "EVTQ_BASE",
    ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD: "EVTQ_PROD",
    ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_CONS: "EVTQ_CONS", ARM_SMMU_PRIQ_BASE: "PRIQ_BASE",
    ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_PROD: "PRIQ_PROD",
    ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_CONS: "PRIQ_CONS",
}

_M32 = 0xFFFF_FFFF


class SmmuRegs(Mmio):
    """The MMIO window of one SMMU (128 KiB: page 0 and page 1)."""

    size = ARM_SMMU_MMIO_SIZE

    def __init__(self, hw: SmmuV3Hardware) -> None:
        self.hw = hw
        self.stored: dict[int, int] = {}

    # -- 64-bit registers ------------------------------------------------------------------
    def _read_reg64(self, off: int) -> int:
        hw = self.hw
        if off == ARM_SMMU_STRTAB_BASE:
            return hw.strtab_base
        if off == ARM_SMMU_CMDQ_BASE:
            return hw.cmdq.base_reg
        if off == ARM_SMMU_EVTQ_BASE:
            return hw.evtq.base_reg
        if off == ARM_SMMU_PRIQ_BASE:
            return hw.priq.base_reg
        return self.stored.get(off, 0)

    def _write_reg64(self, off: int, value: int) -> None:
        hw = self.hw
        if off == ARM_SMMU_STRTAB_BASE:
            hw.strtab_base = value
            hw.config_changed()
        elif off == ARM_SMMU_CMDQ_BASE:
            hw.cmdq.base_reg = value
        elif off == ARM_SMMU_EVTQ_BASE:
            hw.evtq.base_reg = value
        elif off == ARM_SMMU_PRIQ_BASE:
            hw.priq.base_reg = value
        else:
            self.stored[off] = value

    def read64(self, offset: int) -> int:
        if offset in _REG64:
            return self._read_reg64(offset)
        return super().read64(offset)

    def write64(self, offset: int, value: int) -> None:
        if offset in _REG64:
            self.hw.trace_reg(offset, value)
            self._write_reg64(offset, value & 0xFFFF_FFFF_FFFF_FFFF)
            return
        super().write64(offset, value)

    # -- 32-bit accesses ---------------------------------------------------------------------
    def read32(self, offset: int) -> int:
        hw = self.hw
        cfg = hw.cfg
        base = offset & ~7
        if base in _REG64:
            v = self._read_reg64(base)
            return (v >> 32) & _M32 if offset & 4 else v & _M32
        match offset:
            case 0x00:
                return cfg.idr0
            case 0x04:
                return cfg.idr1
            case 0x08:
                return cfg.idr2
            case 0x0C:
                return cfg.idr3
            case 0x10:
                return cfg.idr4
            case 0x14:
                return cfg.idr5
            case 0x18:
                return cfg.iidr
            case 0x1C:
                return cfg.aidr
            case 0x20:
                return hw.cr0
            case 0x24:
                return hw.cr0ack
            case 0x44:
                return hw.gbpa
            case 0x50:
                return hw.irq_ctrl
            case 0x54:
                return hw.irq_ctrlack
            case 0x60:
                return hw.gerror
            case 0x64:
                return hw.gerrorn
            case 0x88:
                return hw.strtab_base_cfg
            case 0x98:
                return hw.cmdq.prod
            case 0x9C:
                return hw.cmdq.cons
        if offset == ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD:
            return hw.evtq.prod
        if offset == ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_CONS:
            return hw.evtq.cons
        if offset == ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_PROD:
            return hw.priq.prod
        if offset == ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_CONS:
            return hw.priq.cons
        return self.stored.get(offset, 0)  # RAZ elsewhere

    def write32(self, offset: int, value: int) -> None:
        hw = self.hw
        value &= _M32
        base = offset & ~7
        if base in _REG64:
            old = self._read_reg64(base)
            new = (old & _M32) | (value << 32) if offset & 4 else (old & ~_M32) | value
            hw.trace_reg(offset, value)
            self._write_reg64(base, new)
            return
        hw.trace_reg(offset, value)
        if offset == ARM_SMMU_CR0:
            hw.write_cr0(value)
        elif offset == ARM_SMMU_GBPA:
            hw.write_gbpa(value)
        elif offset == ARM_SMMU_IRQ_CTRL:
            hw.irq_ctrl = value
            hw.irq_ctrlack = value
        elif offset == ARM_SMMU_GERRORN:
            hw.write_gerrorn(value)
        elif offset == ARM_SMMU_STRTAB_BASE_CFG:
            hw.strtab_base_cfg = value
            hw.config_changed()
        elif offset == ARM_SMMU_CMDQ_PROD:
            hw.write_cmdq_prod(value)
        elif offset == ARM_SMMU_CMDQ_CONS:
            hw.cmdq.cons = value  # software may only move it while CMDQEN is off
        elif offset == ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD:
            hw.evtq.prod = value
        elif offset == ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_CONS:
            hw.evtq.cons = value
        elif offset == ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_PROD:
            hw.priq.prod = value
        elif offset == ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_CONS:
            hw.priq.cons = value
        elif offset in _STORED:
            self.stored[offset] = value
        # Everything else (ID registers, ACKs, GERROR) is read-only: writes are ignored.

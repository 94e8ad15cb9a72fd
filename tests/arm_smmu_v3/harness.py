"""Test harnesses: the whole driver on a DriverEnv, and a bare SMMU programmed by hand
(registers, tables and queues written directly, as firmware or a unit test would) to
check the hardware model on its own."""

from __future__ import annotations

from typing import Any

from drivers.arm_smmu_v3.cmdq import (
    Cmd,
    arm_smmu_make_cmd_cfgi_all,
    arm_smmu_make_cmd_sync,
    arm_smmu_make_cmd_tlbi,
)
from drivers.arm_smmu_v3.device import ArmSmmuDevice
from drivers.arm_smmu_v3.entry import Entry
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware
from drivers.arm_smmu_v3.master import ArmSmmuMaster, master_of
from drivers.arm_smmu_v3.plugin import plugin
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_CMDQ_BASE,
    ARM_SMMU_CMDQ_CONS,
    ARM_SMMU_CMDQ_PROD,
    ARM_SMMU_CR0,
    ARM_SMMU_EVTQ_BASE,
    ARM_SMMU_EVTQ_CONS,
    ARM_SMMU_EVTQ_PROD,
    ARM_SMMU_IRQ_CTRL,
    ARM_SMMU_PAGE1,
    ARM_SMMU_PRIQ_BASE,
    ARM_SMMU_STRTAB_BASE,
    ARM_SMMU_STRTAB_BASE_CFG,
    CMDQ_SYNC_0_CS_SEV,
    CR0_ATSCHK,
    CR0_CMDQEN,
    CR0_EVTQEN,
    CR0_PRIQEN,
    CR0_SMMUEN,
    FIELD_PREP,
    IRQ_CTRL_EVTQ_IRQEN,
    IRQ_CTRL_GERROR_IRQEN,
    Q_BASE_LOG2SIZE,
    STRTAB_BASE_CFG_FMT,
    STRTAB_BASE_CFG_LOG2SIZE,
    STRTAB_BASE_CFG_SPLIT,
    STRTAB_L1_DESC_SPAN,
)
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import device_dma_read, device_dma_write
from iommu_core.platform.platform import Platform
from iommu_core.testing.env import DriverEnv


def driver_env(**options: Any) -> DriverEnv:
    return DriverEnv("arm_smmu_v3", plugin, options)


def smmu_of(env: DriverEnv) -> ArmSmmuDevice:
    smmu = env.iommu.priv
    assert isinstance(smmu, ArmSmmuDevice)
    return smmu


def hw_of(env: DriverEnv) -> SmmuV3Hardware:
    assert isinstance(env.hw, SmmuV3Hardware)
    return env.hw


def master(dev: Device) -> ArmSmmuMaster:
    return master_of(dev)


def tlbi_va(op: int, addr: int, *, asid: int = 0, vmid: int = 0, leaf: bool = True,
            tg: int = 0, ttl: int = 0, num: int = 0, scale: int = 0) -> Cmd:
    """A TLBI by address (NH_VA, NH_VAA, EL2_VA, S2_IPA) with its range fields."""
    q0 = arm_smmu_make_cmd_tlbi(op, asid, vmid)[0] | num << 12 | scale << 20
    return q0, int(leaf) | ttl << 8 | tg << 10 | (addr & ~0xFFF)


class BareSmmu:
    """An SMMU with no driver: the test writes registers, STEs, CDs and commands."""

    def __init__(self, linear: bool = True, sid_bits: int = 8, **options: Any) -> None:
        self.platform = Platform()
        self.mem = self.platform.mem
        self.alloc = self.platform.alloc
        self.cfg = SmmuHwConfig.from_options(options)
        self.hw = SmmuV3Hardware("bare0", self.cfg, self.platform)
        self.regs = self.hw.regs
        self.events: list[tuple[int, ...]] = []
        self.gerrors = 0
        # Queues: 256 commands, 128 events.
        self.cmdq = self.alloc.alloc_pages(0)
        self.evtq = self.alloc.alloc_pages(0)
        self.cmd_prod = 0
        self.regs.write64(ARM_SMMU_CMDQ_BASE, self.cmdq | FIELD_PREP(Q_BASE_LOG2SIZE, 8))
        self.regs.write32(ARM_SMMU_CMDQ_PROD, 0)
        self.regs.write32(ARM_SMMU_CMDQ_CONS, 0)
        self.regs.write64(ARM_SMMU_EVTQ_BASE, self.evtq | FIELD_PREP(Q_BASE_LOG2SIZE, 7))
        self.regs.write64(ARM_SMMU_PRIQ_BASE, self.alloc.alloc_pages(0)
                          | FIELD_PREP(Q_BASE_LOG2SIZE, 7))
        self.linear = linear
        if linear:
            self.strtab = self.alloc.alloc_pages(max(0, sid_bits + 6 - 12))
            self.regs.write64(ARM_SMMU_STRTAB_BASE, self.strtab)
            self.regs.write32(ARM_SMMU_STRTAB_BASE_CFG,
                              FIELD_PREP(STRTAB_BASE_CFG_LOG2SIZE, sid_bits))
        else:
            self.strtab = self.alloc.alloc_pages(0)  # 512 L1 descriptors
            self.regs.write64(ARM_SMMU_STRTAB_BASE, self.strtab)
            self.regs.write32(ARM_SMMU_STRTAB_BASE_CFG,
                              FIELD_PREP(STRTAB_BASE_CFG_FMT, 1)
                              | FIELD_PREP(STRTAB_BASE_CFG_LOG2SIZE, 16)
                              | FIELD_PREP(STRTAB_BASE_CFG_SPLIT, 8))
        self.hw.irqs["evtq"].request_irq(self._evtq_irq)
        self.hw.irqs["gerror"].request_irq(self._gerror_irq)
        self.evt_cons = 0
        self.regs.write32(ARM_SMMU_IRQ_CTRL, IRQ_CTRL_EVTQ_IRQEN | IRQ_CTRL_GERROR_IRQEN)
        self.regs.write32(ARM_SMMU_CR0, CR0_CMDQEN | CR0_EVTQEN | CR0_PRIQEN | CR0_ATSCHK
                          | CR0_SMMUEN)
        self.cmd(arm_smmu_make_cmd_cfgi_all())

    # -- the "driver" side of this harness --------------------------------------------------
    def _evtq_irq(self) -> None:
        prod = self.regs.read32(ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD)
        while (self.evt_cons & 0xFF) != (prod & 0xFF):
            slot = self.evtq + (self.evt_cons & 0x7F) * 32
            self.events.append(tuple(self.mem.read_u64(slot + 8 * i) for i in range(4)))
            self.evt_cons = (self.evt_cons + 1) & 0xFF
        self.regs.write32(ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_CONS, self.evt_cons)

    def _gerror_irq(self) -> None:
        self.gerrors += 1

    def cmd_raw(self, q0: int, q1: int, sync: bool = True) -> None:
        cmds = [(q0, q1)]
        if sync:
            cmds.append(arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_SEV, 0))
        for c in cmds:
            self.mem.write_qwords(self.cmdq + (self.cmd_prod & 0xFF) * 16, c)
            self.cmd_prod = (self.cmd_prod + 1) & 0x1FF
        self.regs.write32(ARM_SMMU_CMDQ_PROD, self.cmd_prod)

    def cmd(self, cmd: Cmd, sync: bool = True) -> None:
        self.cmd_raw(*cmd, sync=sync)

    def ste_addr(self, sid: int) -> int:
        if self.linear:
            return self.strtab + sid * 64
        l1 = self.strtab + (sid >> 8) * 8
        desc = self.mem.read_u64(l1)
        if not desc:
            l2 = self.alloc.alloc_pages(2)
            self.mem.write_u64(l1, FIELD_PREP(STRTAB_L1_DESC_SPAN, 9) | l2)
            desc = self.mem.read_u64(l1)
        return (desc & ~0x3F) + (sid & 0xFF) * 64

    def write_ste(self, sid: int, ste: Entry | tuple[int, ...]) -> None:
        q = ste.q if isinstance(ste, Entry) else tuple(ste) + (0,) * (8 - len(ste))
        self.mem.write_qwords(self.ste_addr(sid), q)

    def write_cd(self, addr: int, cd: Entry | tuple[int, ...]) -> None:
        q = cd.q if isinstance(cd, Entry) else tuple(cd) + (0,) * (8 - len(cd))
        self.mem.write_qwords(addr, q)

    def table(self, stage: int, **kw: Any) -> IoPageTable:
        fmt = formats.arm_lpae_s1(**kw) if stage == 1 else formats.arm_lpae_s2(**kw)
        return IoPageTable(fmt, PhysTableMemory(self.mem, self.alloc))

    def device(self, sid: int, name: str = "0000:00:01.0", **options: Any) -> Device:
        return make_pci_device(name, "bare0", stream_id=sid, **options)

    def read(self, dev: Device, iova: int, n: int, pasid: int | None = None) -> bytes:
        return device_dma_read(self.hw, self.mem, dev, iova, n, pasid)

    def write(self, dev: Device, iova: int, data: bytes, pasid: int | None = None) -> None:
        device_dma_write(self.hw, self.mem, dev, iova, data, pasid)

    def event_ids(self) -> list[int]:
        return [e[0] & 0xFF for e in self.events]

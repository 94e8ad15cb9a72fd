"""One SMMUv3 instance as the driver sees it (``struct arm_smmu_device``): probe (ID
register parsing, errata), the reset sequence, queues, the stream table, interrupt
handlers, ASID/VMID allocation and the masters behind it (smmuv3.md §1, §2, §9)."""

from __future__ import annotations

import collections
import contextlib
import errno
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.cmdq import (
    ArmSmmuCmdq,
    ArmSmmuQueue,
    Cmd,
    arm_smmu_make_cmd_cfgi_all,
    arm_smmu_make_cmd_op,
    arm_smmu_make_cmd_pri_resp,
)
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_CR0,
    ARM_SMMU_CR0ACK,
    ARM_SMMU_CR1,
    ARM_SMMU_CR2,
    ARM_SMMU_EVTQ_BASE,
    ARM_SMMU_EVTQ_CONS,
    ARM_SMMU_EVTQ_IRQ_CFG0,
    ARM_SMMU_EVTQ_PROD,
    ARM_SMMU_FEAT_2_LVL_CDTAB,
    ARM_SMMU_FEAT_2_LVL_STRTAB,
    ARM_SMMU_FEAT_ATS,
    ARM_SMMU_FEAT_ATTR_TYPES_OVR,
    ARM_SMMU_FEAT_BBML2,
    ARM_SMMU_FEAT_BTM,
    ARM_SMMU_FEAT_COHERENCY,
    ARM_SMMU_FEAT_HA,
    ARM_SMMU_FEAT_HD,
    ARM_SMMU_FEAT_HYP,
    ARM_SMMU_FEAT_MSI,
    ARM_SMMU_FEAT_NESTING,
    ARM_SMMU_FEAT_PRI,
    ARM_SMMU_FEAT_RANGE_INV,
    ARM_SMMU_FEAT_S2FWB,
    ARM_SMMU_FEAT_SEV,
    ARM_SMMU_FEAT_STALL_FORCE,
    ARM_SMMU_FEAT_STALLS,
    ARM_SMMU_FEAT_TRANS_S1,
    ARM_SMMU_FEAT_TRANS_S2,
    ARM_SMMU_FEAT_TT_BE,
    ARM_SMMU_FEAT_TT_LE,
    ARM_SMMU_FEAT_VAX,
    ARM_SMMU_GBPA,
    ARM_SMMU_GERROR,
    ARM_SMMU_GERROR_IRQ_CFG0,
    ARM_SMMU_GERRORN,
    ARM_SMMU_IDR0,
    ARM_SMMU_IDR1,
    ARM_SMMU_IDR3,
    ARM_SMMU_IDR5,
    ARM_SMMU_IIDR,
    ARM_SMMU_IRQ_CTRL,
    ARM_SMMU_IRQ_CTRLACK,
    ARM_SMMU_OPT_CMDQ_FORCE_SYNC,
    ARM_SMMU_OPT_MSIPOLL,
    ARM_SMMU_OPT_TEGRA241_CMDQV,
    ARM_SMMU_PAGE1,
    ARM_SMMU_PRIQ_BASE,
    ARM_SMMU_PRIQ_CONS,
    ARM_SMMU_PRIQ_IRQ_CFG0,
    ARM_SMMU_PRIQ_PROD,
    ARM_SMMU_SH_ISH,
    ARM_SMMU_STRTAB_BASE,
    ARM_SMMU_STRTAB_BASE_CFG,
    CMDQ_BATCH_ENTRIES,
    CMDQ_MAX_SZ_SHIFT,
    CMDQ_OP_TLBI_EL2_ALL,
    CMDQ_OP_TLBI_NSNH_ALL,
    CR0_ATSCHK,
    CR0_CMDQEN,
    CR0_EVTQEN,
    CR0_PRIQEN,
    CR0_SMMUEN,
    CR1_CACHE_WB,
    CR1_QUEUE_IC,
    CR1_QUEUE_OC,
    CR1_QUEUE_SH,
    CR1_TABLE_IC,
    CR1_TABLE_OC,
    CR1_TABLE_SH,
    CR2_PTM,
    CR2_RECINVSID,
    EVENT_NAMES,
    EVTQ_0_ID,
    EVTQ_0_SID,
    EVTQ_0_SSID,
    EVTQ_0_SSV,
    EVTQ_1_S2,
    EVTQ_1_STAG,
    EVTQ_1_STALL,
    EVTQ_ENT_DWORDS,
    EVTQ_FORWARDED_IDS,
    EVTQ_MAX_SZ_SHIFT,
    FIELD_GET,
    FIELD_PREP,
    GBPA_ABORT,
    GBPA_UPDATE,
    GERROR_CMDQ_ERR,
    GERROR_ERR_MASK,
    IDR0_ASID16,
    IDR0_ATS,
    IDR0_CD2L,
    IDR0_COHACC,
    IDR0_HTTU,
    IDR0_HTTU_ACCESS,
    IDR0_HTTU_ACCESS_DIRTY,
    IDR0_HYP,
    IDR0_MSI,
    IDR0_PRI,
    IDR0_S1P,
    IDR0_S2P,
    IDR0_SEV,
    IDR0_ST_LVL,
    IDR0_ST_LVL_2LVL,
    IDR0_STALL_MODEL,
    IDR0_STALL_MODEL_FORCE,
    IDR0_STALL_MODEL_STALL,
    IDR0_TTENDIAN,
    IDR0_TTENDIAN_BE,
    IDR0_TTENDIAN_LE,
    IDR0_TTENDIAN_MIXED,
    IDR0_TTF,
    IDR0_TTF_AARCH32_64,
    IDR0_TTF_AARCH64,
    IDR0_VMID16,
    IDR1_ATTR_TYPES_OVR,
    IDR1_CMDQS,
    IDR1_EVTQS,
    IDR1_PRIQS,
    IDR1_QUEUES_PRESET,
    IDR1_REL,
    IDR1_SIDSIZE,
    IDR1_SSIDSIZE,
    IDR1_TABLES_PRESET,
    IDR3_BBM,
    IDR3_FWB,
    IDR3_RIL,
    IDR5_GRAN4K,
    IDR5_GRAN16K,
    IDR5_GRAN64K,
    IDR5_OAS,
    IDR5_STALL_MAX,
    IDR5_VAX,
    IDR5_VAX_52_BIT,
    IIDR_IMPLEMENTER,
    IIDR_IMPLEMENTER_ARM,
    IIDR_PRODUCTID,
    IIDR_PRODUCTID_ARM_MMU_600,
    IIDR_PRODUCTID_ARM_MMU_700,
    IIDR_REVISION,
    IIDR_VARIANT,
    IRQ_CTRL_EVTQ_IRQEN,
    IRQ_CTRL_GERROR_IRQEN,
    IRQ_CTRL_PRIQ_IRQEN,
    OAS_BITS,
    PRI_RESP_DENY,
    PRIQ_0_PERM_EXEC,
    PRIQ_0_PERM_PRIV,
    PRIQ_0_PERM_READ,
    PRIQ_0_PERM_WRITE,
    PRIQ_0_PRG_LAST,
    PRIQ_0_SID,
    PRIQ_0_SSID,
    PRIQ_0_SSID_V,
    PRIQ_1_ADDR_MASK,
    PRIQ_1_PRG_IDX,
    PRIQ_ENT_DWORDS,
    PRIQ_MAX_SZ_SHIFT,
    Q_OVERFLOW_FLAG,
    STRTAB_BASE_ADDR_MASK,
    STRTAB_BASE_CFG_FMT,
    STRTAB_BASE_CFG_FMT_2LVL,
    STRTAB_BASE_CFG_FMT_LINEAR,
    STRTAB_BASE_CFG_LOG2SIZE,
    STRTAB_BASE_CFG_SPLIT,
    STRTAB_BASE_RA,
    STRTAB_L1_DESC_L2PTR_MASK,
    STRTAB_L1_DESC_SPAN,
    STRTAB_MAX_L1_ENTRIES,
    STRTAB_SPLIT,
    STRTAB_STE_DWORDS,
    EVTQ_1_InD,
    EVTQ_1_PnU,
    EVTQ_1_RnW,
)
from drivers.arm_smmu_v3.ste import arm_smmu_make_abort_ste
from iommu_core.device import IommuDevice
from iommu_core.errors import IommuError
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    IOMMU_FAULT_PERM_EXEC,
    IOMMU_FAULT_PERM_PRIV,
    IOMMU_FAULT_PERM_READ,
    IOMMU_FAULT_PERM_WRITE,
    PageRequest,
)

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.impl import ArmSmmuImplOps
    from drivers.arm_smmu_v3.master import ArmSmmuMaster
    from iommu_core.iommu import IommuCore
    from iommu_core.platform.dma import Mmio
    from iommu_core.platform.platform import IommuResources
    from iommu_core.plugin import IommuOps

#: The CPU the simulated kernel runs on: 48-bit VA, little-endian, no VHE.
VA_BITS = 48
PAGE_SIZE = 4096


def _order(size: int) -> int:
    return max(0, (size - 1).bit_length() - 12)


class IdAllocator:
    """Lowest-free id in [lo, hi] (xa_alloc / ida_alloc_range)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.used: set[int] = set()

    def alloc(self, max_id: int | None = None) -> int:
        """The lowest free id, at most ``max_id`` when given (ida_alloc_max)."""
        hi = self.hi if max_id is None else min(self.hi, max_id)
        i = self.lo
        while i in self.used:
            i += 1
        if i > hi:
            raise IommuError(errno.ENOSPC, f"no free id in [{self.lo}, {hi}]")
        self.used.add(i)
        return i

    def free(self, i: int) -> None:
        self.used.discard(i)


class ArmSmmuDevice:
    """``struct arm_smmu_device``."""

    def __init__(self, core: IommuCore, res: IommuResources, ops: IommuOps) -> None:
        self.core = core
        self.name = res.name
        self.ops = ops
        self.mmio: Mmio = res.mmio["regs"]
        self.irqs = res.irqs
        self.platform = core.platform
        self.mem = core.platform.mem
        self.alloc = core.platform.alloc
        self.tracer = core.platform.tracer
        self.features = 0
        self.options = 0
        #: vIOMMU guest commands validated as the posted series does (firmware option).
        self.vsmmu_strict_cmds = bool(res.firmware.get("vsmmu_strict_cmds", False))
        self.res = res
        #: ``smmu->impl_ops``: an implementation extension (Tegra241 CMDQV), or None.
        self.impl_ops: ArmSmmuImplOps | None = None
        self.ias = 0
        self.oas = 0
        self.asid_bits = 8
        self.vmid_bits = 8
        self.ssid_bits = 0
        self.sid_bits = 0
        self.pgsize_bitmap = 0
        self.iidr = 0
        self.evtq_max_stalls = 0
        self.coherent = False
        self.strtab_base = 0
        self.strtab_order = 0
        self.strtab_cfg = 0
        self.num_l1_ents = 0
        #: 2-level stream table: L2 table address per L1 index (0 = none).
        self.l1_desc: list[int] = []
        #: StreamID -> master (``smmu->streams``).
        self.streams: dict[int, ArmSmmuMaster] = {}
        self.asid_ids = IdAllocator(1, 0xFF)
        self.vmid_ids = IdAllocator(1, 0xFF)
        #: dev_err/dev_info lines of the interrupt handlers, newest last.
        self.log: collections.deque[str] = collections.deque(maxlen=512)
        #: Events read from the EVTQ (decoded), newest last.
        self.events: collections.deque[tuple[int, int, int, int]] = collections.deque(
            maxlen=512)
        self.iommu: IommuDevice | None = None

    # ==================================================================================
    # Command queues
    # ==================================================================================
    def get_cmdq(self, cmd: Cmd) -> ArmSmmuCmdq:
        """``arm_smmu_get_cmdq``: an implementation's queue if it takes ``cmd``, else the
        SMMU's own."""
        if self.impl_ops is not None:
            q = self.impl_ops.get_secondary_cmdq(cmd)
            if q is not None:
                return q
        return self.cmdq

    def issue_cmd(self, cmd: Cmd, sync: bool = False) -> None:
        """``arm_smmu_cmdq_issue_cmd`` / ``_with_sync``: on the queue that takes it."""
        self.get_cmdq(cmd).issue_cmd(cmd, sync)

    # ==================================================================================
    # Registers
    # ==================================================================================
    def readl(self, off: int) -> int:
        return self.mmio.read32(off)

    def writel(self, off: int, value: int) -> None:
        self.mmio.write32(off, value)

    def writeq(self, off: int, value: int) -> None:
        self.mmio.write64(off, value)

    def write_reg_sync(self, value: int, reg_off: int, ack_off: int) -> None:
        """``arm_smmu_write_reg_sync``: write, then poll the ACK register."""
        self.writel(reg_off, value)
        if self.readl(ack_off) != value:
            raise IommuError(errno.ETIMEDOUT, f"{self.name}: register {reg_off:#x} not "
                             "acknowledged")

    def update_gbpa(self, set_bits: int, clr: int) -> None:
        gbpa = self.readl(ARM_SMMU_GBPA)
        gbpa = (gbpa & ~clr) | set_bits
        self.writel(ARM_SMMU_GBPA, gbpa | GBPA_UPDATE)
        if self.readl(ARM_SMMU_GBPA) & GBPA_UPDATE:
            raise IommuError(errno.ETIMEDOUT, "GBPA not responding to update")

    # ==================================================================================
    # Probe: ID registers (arm_smmu_device_hw_probe)
    # ==================================================================================
    def hw_probe(self) -> None:
        reg = self.readl(ARM_SMMU_IDR0)
        f = 0
        if FIELD_GET(IDR0_ST_LVL, reg) == IDR0_ST_LVL_2LVL:
            f |= ARM_SMMU_FEAT_2_LVL_STRTAB
        if reg & IDR0_CD2L:
            f |= ARM_SMMU_FEAT_2_LVL_CDTAB
        endian = FIELD_GET(IDR0_TTENDIAN, reg)
        if endian == IDR0_TTENDIAN_MIXED:
            f |= ARM_SMMU_FEAT_TT_LE | ARM_SMMU_FEAT_TT_BE
        elif endian == IDR0_TTENDIAN_LE:
            f |= ARM_SMMU_FEAT_TT_LE
        elif endian == IDR0_TTENDIAN_BE:
            f |= ARM_SMMU_FEAT_TT_BE
        else:
            raise IommuError(errno.ENXIO, "unknown/unsupported TT endianness!")
        if not f & ARM_SMMU_FEAT_TT_LE:  # the simulated CPU is little-endian
            raise IommuError(errno.ENXIO, "unsupported TT endianness for this CPU")
        if reg & IDR0_PRI:
            f |= ARM_SMMU_FEAT_PRI
        if reg & IDR0_ATS:
            f |= ARM_SMMU_FEAT_ATS
        if reg & IDR0_SEV:
            f |= ARM_SMMU_FEAT_SEV
        if reg & IDR0_MSI:
            f |= ARM_SMMU_FEAT_MSI
            if reg & IDR0_COHACC:
                self.options |= ARM_SMMU_OPT_MSIPOLL
        if reg & IDR0_HYP:
            f |= ARM_SMMU_FEAT_HYP  # no VHE on this CPU: never FEAT_E2H
        httu = FIELD_GET(IDR0_HTTU, reg)
        if httu == IDR0_HTTU_ACCESS_DIRTY:
            f |= ARM_SMMU_FEAT_HD | ARM_SMMU_FEAT_HA
        elif httu == IDR0_HTTU_ACCESS:
            f |= ARM_SMMU_FEAT_HA
        stall = FIELD_GET(IDR0_STALL_MODEL, reg)
        if stall == IDR0_STALL_MODEL_FORCE:
            f |= ARM_SMMU_FEAT_STALL_FORCE | ARM_SMMU_FEAT_STALLS
        elif stall == IDR0_STALL_MODEL_STALL:
            f |= ARM_SMMU_FEAT_STALLS
        if reg & IDR0_S1P:
            f |= ARM_SMMU_FEAT_TRANS_S1
        if reg & IDR0_S2P:
            f |= ARM_SMMU_FEAT_TRANS_S2
        if not reg & (IDR0_S1P | IDR0_S2P):
            raise IommuError(errno.ENXIO, "no translation support!")
        ttf = FIELD_GET(IDR0_TTF, reg)
        if ttf == IDR0_TTF_AARCH32_64:
            self.ias = 40
        elif ttf != IDR0_TTF_AARCH64:
            raise IommuError(errno.ENXIO, "AArch64 table format not supported!")
        self.asid_bits = 16 if reg & IDR0_ASID16 else 8
        self.vmid_bits = 16 if reg & IDR0_VMID16 else 8
        # Firmware (DT dma-coherent / IORT COHACC override) agrees with IDR0.COHACC here.
        self.coherent = bool(reg & IDR0_COHACC)
        if self.coherent:
            f |= ARM_SMMU_FEAT_COHERENCY

        reg = self.readl(ARM_SMMU_IDR1)
        if reg & (IDR1_TABLES_PRESET | IDR1_QUEUES_PRESET | IDR1_REL):
            raise IommuError(errno.ENXIO, "embedded implementation not supported")
        if reg & IDR1_ATTR_TYPES_OVR:
            f |= ARM_SMMU_FEAT_ATTR_TYPES_OVR
        self.cmdq_shift = min(FIELD_GET(IDR1_CMDQS, reg), CMDQ_MAX_SZ_SHIFT)
        if self.cmdq_shift <= CMDQ_BATCH_ENTRIES.bit_length() - 1:
            raise IommuError(errno.ENXIO, "command queue size <= 64 entries not supported")
        self.evtq_shift = min(FIELD_GET(IDR1_EVTQS, reg), EVTQ_MAX_SZ_SHIFT)
        self.priq_shift = min(FIELD_GET(IDR1_PRIQS, reg), PRIQ_MAX_SZ_SHIFT)
        self.ssid_bits = FIELD_GET(IDR1_SSIDSIZE, reg)
        self.sid_bits = FIELD_GET(IDR1_SIDSIZE, reg)
        if self.sid_bits <= STRTAB_SPLIT:
            f &= ~ARM_SMMU_FEAT_2_LVL_STRTAB

        reg = self.readl(ARM_SMMU_IDR3)
        if reg & IDR3_RIL:
            f |= ARM_SMMU_FEAT_RANGE_INV
        if reg & IDR3_FWB:
            f |= ARM_SMMU_FEAT_S2FWB
        if FIELD_GET(IDR3_BBM, reg) == 2:
            f |= ARM_SMMU_FEAT_BBML2

        reg = self.readl(ARM_SMMU_IDR5)
        self.evtq_max_stalls = FIELD_GET(IDR5_STALL_MAX, reg)
        if FIELD_GET(IDR5_VAX, reg) == IDR5_VAX_52_BIT:
            f |= ARM_SMMU_FEAT_VAX
        pg = 0
        if reg & IDR5_GRAN64K:
            pg |= 0x10000 | 0x2000_0000
        if reg & IDR5_GRAN16K:
            pg |= 0x4000 | 0x200_0000
        if reg & IDR5_GRAN4K:
            pg |= 0x1000 | 0x20_0000 | 0x4000_0000
        oas_enc = FIELD_GET(IDR5_OAS, reg)
        if oas_enc < len(OAS_BITS):
            self.oas = OAS_BITS[oas_enc]
        else:
            self.oas = 48
            self.log.append("unknown output address size. Truncating to 48-bit")
        if self.oas == 52:
            pg |= 1 << 42
        self.pgsize_bitmap = pg
        self.ias = max(self.ias, self.oas)

        if f & ARM_SMMU_FEAT_TRANS_S1 and f & ARM_SMMU_FEAT_TRANS_S2:
            f |= ARM_SMMU_FEAT_NESTING
        self.features = f
        self.device_iidr_probe()
        self.asid_ids = IdAllocator(1, (1 << self.asid_bits) - 1)
        self.vmid_ids = IdAllocator(1, (1 << self.vmid_bits) - 1)

    def device_iidr_probe(self) -> None:
        """Errata selected by the implementation (arm_smmu_device_iidr_probe)."""
        reg = self.readl(ARM_SMMU_IIDR)
        self.iidr = reg
        if FIELD_GET(IIDR_IMPLEMENTER, reg) != IIDR_IMPLEMENTER_ARM:
            return
        product = FIELD_GET(IIDR_PRODUCTID, reg)
        variant = FIELD_GET(IIDR_VARIANT, reg)
        revision = FIELD_GET(IIDR_REVISION, reg)
        if product == IIDR_PRODUCTID_ARM_MMU_600:
            if variant == 0 and revision <= 2:  # erratum 1076982
                self.features &= ~ARM_SMMU_FEAT_SEV
            if variant < 2:  # erratum 1209401
                self.features &= ~ARM_SMMU_FEAT_NESTING
        elif product == IIDR_PRODUCTID_ARM_MMU_700:
            self.features &= ~ARM_SMMU_FEAT_BTM  # erratum 2812531
            self.options |= ARM_SMMU_OPT_CMDQ_FORCE_SYNC
            self.features &= ~ARM_SMMU_FEAT_NESTING  # erratum 2268618

    # ==================================================================================
    # Structures (arm_smmu_init_structures)
    # ==================================================================================
    def init_structures(self) -> None:
        self.cmdq = ArmSmmuCmdq(self, self.cmdq_shift)
        self.evtq = ArmSmmuQueue(self, "evtq", EVTQ_ENT_DWORDS, self.evtq_shift,
                                 ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD,
                                 ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_CONS, ARM_SMMU_EVTQ_BASE)
        self.priq: ArmSmmuQueue | None = None
        if self.features & ARM_SMMU_FEAT_PRI:
            self.priq = ArmSmmuQueue(self, "priq", PRIQ_ENT_DWORDS, self.priq_shift,
                                     ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_PROD,
                                     ARM_SMMU_PAGE1 + ARM_SMMU_PRIQ_CONS, ARM_SMMU_PRIQ_BASE)
        if self.features & ARM_SMMU_FEAT_2_LVL_STRTAB:
            self._init_strtab_2lvl()
        else:
            self._init_strtab_linear()

    def _init_strtab_2lvl(self) -> None:
        last_sid_idx = ((1 << self.sid_bits) - 1) >> STRTAB_SPLIT
        self.num_l1_ents = min(last_sid_idx + 1, STRTAB_MAX_L1_ENTRIES)
        size = self.num_l1_ents * 8
        self.strtab_order = _order(size)
        self.strtab_base = self.alloc.alloc_pages(self.strtab_order)
        self.l1_desc = [0] * self.num_l1_ents
        log2 = (self.num_l1_ents - 1).bit_length() + STRTAB_SPLIT
        if log2 < self.sid_bits:
            self.log.append(f"2-level strtab only covers {log2}/{self.sid_bits} bits of SID")
        self.strtab_cfg = (FIELD_PREP(STRTAB_BASE_CFG_FMT, STRTAB_BASE_CFG_FMT_2LVL)
                           | FIELD_PREP(STRTAB_BASE_CFG_LOG2SIZE, log2)
                           | FIELD_PREP(STRTAB_BASE_CFG_SPLIT, STRTAB_SPLIT))

    def _init_strtab_linear(self) -> None:
        n = 1 << self.sid_bits
        size = n * STRTAB_STE_DWORDS * 8
        self.strtab_order = _order(size)
        self.strtab_base = self.alloc.alloc_pages(self.strtab_order)
        self._init_initial_stes(self.strtab_base, n)
        self.strtab_cfg = (FIELD_PREP(STRTAB_BASE_CFG_FMT, STRTAB_BASE_CFG_FMT_LINEAR)
                           | FIELD_PREP(STRTAB_BASE_CFG_LOG2SIZE, self.sid_bits))

    def _init_initial_stes(self, base: int, n: int) -> None:
        """Abort STEs, written directly: the table is not live for these SIDs yet."""
        abort = arm_smmu_make_abort_ste().q
        image = b"".join(x.to_bytes(8, "little") for x in abort)
        self.mem.write(base, image * n)

    def init_l2_strtab(self, sid: int) -> None:
        """Allocate the level-2 table of ``sid`` (arm_smmu_init_l2_strtab)."""
        idx = sid >> STRTAB_SPLIT
        if self.l1_desc[idx]:
            return
        size = 1 << (STRTAB_SPLIT + 6)
        l2 = self.alloc.alloc_pages(_order(size))
        self._init_initial_stes(l2, 1 << STRTAB_SPLIT)
        self.l1_desc[idx] = l2
        # The L1 descriptor goes in with one 64-bit store.
        self.mem.write_u64(self.strtab_base + idx * 8,
                           FIELD_PREP(STRTAB_L1_DESC_SPAN, STRTAB_SPLIT + 1)
                           | (l2 & STRTAB_L1_DESC_L2PTR_MASK))

    def get_step_for_sid(self, sid: int) -> int:
        if self.features & ARM_SMMU_FEAT_2_LVL_STRTAB:
            l2 = self.l1_desc[sid >> STRTAB_SPLIT]
            return l2 + ((sid & ((1 << STRTAB_SPLIT) - 1)) << 6)
        return self.strtab_base + (sid << 6)

    def sid_in_range(self, sid: int) -> bool:
        if self.features & ARM_SMMU_FEAT_2_LVL_STRTAB:
            return (sid >> STRTAB_SPLIT) < self.num_l1_ents
        return sid < (1 << self.sid_bits)

    # ==================================================================================
    # Reset (arm_smmu_device_reset)
    # ==================================================================================
    def device_disable(self) -> None:
        self.write_reg_sync(0, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)

    def reset(self) -> None:
        reg = self.readl(ARM_SMMU_CR0)
        if reg & CR0_SMMUEN:
            self.log.append("SMMU currently enabled! Resetting...")
            self.update_gbpa(GBPA_ABORT, 0)
        self.device_disable()
        self.writel(ARM_SMMU_CR1, FIELD_PREP(CR1_TABLE_SH, ARM_SMMU_SH_ISH)
                    | FIELD_PREP(CR1_TABLE_OC, CR1_CACHE_WB)
                    | FIELD_PREP(CR1_TABLE_IC, CR1_CACHE_WB)
                    | FIELD_PREP(CR1_QUEUE_SH, ARM_SMMU_SH_ISH)
                    | FIELD_PREP(CR1_QUEUE_OC, CR1_CACHE_WB)
                    | FIELD_PREP(CR1_QUEUE_IC, CR1_CACHE_WB))
        cr2 = CR2_PTM | CR2_RECINVSID
        self.writel(ARM_SMMU_CR2, cr2)
        self.writeq(ARM_SMMU_STRTAB_BASE, STRTAB_BASE_RA
                    | (self.strtab_base & STRTAB_BASE_ADDR_MASK))
        self.writel(ARM_SMMU_STRTAB_BASE_CFG, self.strtab_cfg)
        # Command queue.
        self.writeq(self.cmdq.base_off, self.cmdq.q_base)
        self.writel(self.cmdq.prod_off, self.cmdq.prod)
        self.writel(self.cmdq.cons_off, self.cmdq.cons)
        enables = CR0_CMDQEN
        self.write_reg_sync(enables, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)
        # Invalidate any cached configuration and TLB entries.
        self.issue_cmd(arm_smmu_make_cmd_cfgi_all(), sync=True)
        if self.features & ARM_SMMU_FEAT_HYP:
            self.issue_cmd(arm_smmu_make_cmd_op(CMDQ_OP_TLBI_EL2_ALL), sync=True)
        self.issue_cmd(arm_smmu_make_cmd_op(CMDQ_OP_TLBI_NSNH_ALL), sync=True)
        # Event queue.
        self.writeq(self.evtq.base_off, self.evtq.q_base)
        self.writel(self.evtq.prod_off, self.evtq.prod)
        self.writel(self.evtq.cons_off, self.evtq.cons)
        enables |= CR0_EVTQEN
        self.write_reg_sync(enables, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)
        if self.priq is not None:
            self.writeq(self.priq.base_off, self.priq.q_base)
            self.writel(self.priq.prod_off, self.priq.prod)
            self.writel(self.priq.cons_off, self.priq.cons)
            enables |= CR0_PRIQEN
            self.write_reg_sync(enables, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)
        if self.features & ARM_SMMU_FEAT_ATS:
            enables |= CR0_ATSCHK
            self.write_reg_sync(enables, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)
        self.setup_irqs()
        enables |= CR0_SMMUEN
        self.write_reg_sync(enables, ARM_SMMU_CR0, ARM_SMMU_CR0ACK)

    def setup_irqs(self) -> None:
        self.write_reg_sync(0, ARM_SMMU_IRQ_CTRL, ARM_SMMU_IRQ_CTRLACK)
        # Wired interrupts: MSI address registers stay 0.
        self.writeq(ARM_SMMU_GERROR_IRQ_CFG0, 0)
        self.writeq(ARM_SMMU_EVTQ_IRQ_CFG0, 0)
        self.irqs["evtq"].request_irq(self.evtq_thread)
        self.irqs["gerror"].request_irq(self.gerror_handler)
        irqen = IRQ_CTRL_EVTQ_IRQEN | IRQ_CTRL_GERROR_IRQEN
        if self.priq is not None:
            self.writeq(ARM_SMMU_PRIQ_IRQ_CFG0, 0)
            self.irqs["priq"].request_irq(self.priq_thread)
            irqen |= IRQ_CTRL_PRIQ_IRQEN
        self.write_reg_sync(irqen, ARM_SMMU_IRQ_CTRL, ARM_SMMU_IRQ_CTRLACK)

    # ==================================================================================
    # Probe / remove
    # ==================================================================================
    def impl_probe(self) -> None:
        """``arm_smmu_impl_probe``: firmware names a companion CMDQV (ACPI NVDA200C, DT
        "nvidia,cmdqv")."""
        if self.res.firmware.get("tegra241_cmdqv"):
            from drivers.arm_smmu_v3.tegra241_cmdqv import tegra241_cmdqv_probe

            self.options |= ARM_SMMU_OPT_TEGRA241_CMDQV
            self.impl_ops = tegra241_cmdqv_probe(self, self.res)

    def probe(self) -> IommuDevice:
        self.impl_probe()
        self.hw_probe()
        self.init_structures()
        if self.impl_ops is not None:
            self.impl_ops.init_structures()
        self.reset()
        if self.impl_ops is not None:
            self.impl_ops.device_reset()
        iommu = IommuDevice(self.name, self.ops, priv=self)
        iommu.max_pasid_bits = self.ssid_bits
        self.iommu = iommu
        self.core.iommu_device_register(iommu)
        return iommu

    def remove(self) -> None:
        """``arm_smmu_device_remove``: disable, free IRQs, queues and tables."""
        if self.iommu is not None and self.iommu.registered:
            self.core.iommu_device_unregister(self.iommu)
        if self.impl_ops is not None:
            self.impl_ops.device_disable()
        with contextlib.suppress(IommuError):
            self.device_disable()
        self.writel(ARM_SMMU_IRQ_CTRL, 0)
        for line in self.irqs.values():
            line.free_irq()
        self.cmdq.free()
        self.evtq.free()
        if self.priq is not None:
            self.priq.free()
        l2order = _order(1 << (STRTAB_SPLIT + 6))
        for l2 in self.l1_desc:
            if l2:
                self.alloc.free_pages(l2, l2order)
        self.l1_desc = []
        self.alloc.free_pages(self.strtab_base, self.strtab_order)
        self.strtab_base = 0
        if self.impl_ops is not None:
            self.impl_ops.device_remove()
            self.impl_ops = None

    # ==================================================================================
    # Interrupt handlers
    # ==================================================================================
    def _queue_remove_raw(self, q: ArmSmmuQueue) -> tuple[int, ...] | None:
        if q.idx(q.prod) == q.idx(q.cons) and q.wrp(q.prod) == q.wrp(q.cons):
            return None
        slot = q.slot(q.cons)
        ent = tuple(self.mem.read_u64(slot + 8 * i) for i in range(q.ent_dwords))
        q.cons = q.inc(q.cons)
        self.writel(q.cons_off, q.cons)
        return ent

    def _sync_prod_in(self, q: ArmSmmuQueue) -> bool:
        """Re-read PROD; True if the SMMU reported an overflow since we last looked."""
        prod = self.readl(q.prod_off)
        overflow = bool((prod ^ q.prod) & Q_OVERFLOW_FLAG)
        q.prod = prod
        return overflow

    def _sync_cons_ovf(self, q: ArmSmmuQueue) -> None:
        ovf = q.prod & Q_OVERFLOW_FLAG
        q.cons = (q.cons & ~Q_OVERFLOW_FLAG) | ovf
        self.writel(q.cons_off, q.cons)

    def evtq_thread(self) -> None:
        q = self.evtq
        while True:
            if self._sync_prod_in(q):
                self.log.append("EVTQ overflow detected -- events lost")
            ent = self._queue_remove_raw(q)
            while ent is not None:
                evt = (ent[0], ent[1], ent[2], ent[3])
                self.events.append(evt)
                self.handle_event(evt)
                ent = self._queue_remove_raw(q)
            if q.idx(q.prod) == q.idx(q.cons):
                break
        self._sync_cons_ovf(q)

    def handle_event(self, evt: tuple[int, int, int, int]) -> None:
        """``arm_smmu_handle_event``: stall faults become IOPF page requests; stage-1
        events of a master attached to a nested domain go to its vIOMMU."""
        evt_id = FIELD_GET(EVTQ_0_ID, evt[0])
        sid = FIELD_GET(EVTQ_0_SID, evt[0])
        master = self.streams.get(sid)
        name = EVENT_NAMES.get(evt_id, f"{evt_id:#x}")
        if evt_id in (0x10, 0x11, 0x12, 0x13) and evt[1] & EVTQ_1_STALL and master:
            if evt[1] & EVTQ_1_S2:
                self.log.append(f"stage-2 stall event {name} for SID {sid:#x}")
            else:
                perm = IOMMU_FAULT_PERM_READ if evt[1] & EVTQ_1_RnW else IOMMU_FAULT_PERM_WRITE
                if evt[1] & EVTQ_1_InD:
                    perm |= IOMMU_FAULT_PERM_EXEC
                if evt[1] & EVTQ_1_PnU:
                    perm |= IOMMU_FAULT_PERM_PRIV
                flags = IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
                pasid = 0
                if evt[0] & EVTQ_0_SSV:
                    flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
                    pasid = FIELD_GET(EVTQ_0_SSID, evt[0])
                req = PageRequest(flags=flags, pasid=pasid,
                                  grpid=FIELD_GET(EVTQ_1_STAG, evt[1]), perm=perm,
                                  addr=evt[2])
                self.core.iommu_report_device_fault(master.dev, req)
                return
        if (master is not None and master.vmaster is not None and evt_id in EVTQ_FORWARDED_IDS
                and not evt[1] & EVTQ_1_S2):
            from drivers.arm_smmu_v3.iommufd import arm_vmaster_report_event

            if arm_vmaster_report_event(master.vmaster, evt):
                return
        self.log.append(f"event {evt_id:#04x} ({name}) received: "
                        + " ".join(f"{x:#018x}" for x in evt))

    def priq_thread(self) -> None:
        q = self.priq
        assert q is not None
        while True:
            if self._sync_prod_in(q):
                self.log.append("PRIQ overflow detected -- requests lost")
            ent = self._queue_remove_raw(q)
            while ent is not None:
                self.handle_ppr(ent[0], ent[1])
                ent = self._queue_remove_raw(q)
            if q.idx(q.prod) == q.idx(q.cons):
                break
        self._sync_cons_ovf(q)

    def handle_ppr(self, q0: int, q1: int) -> None:
        """A PRI page request: to the IOPF core when the master has PRI enabled for a
        fault-capable domain, else answered DENY (mainline's "unexpected PRI")."""
        sid = FIELD_GET(PRIQ_0_SID, q0)
        ssv = bool(q0 & PRIQ_0_SSID_V)
        ssid = FIELD_GET(PRIQ_0_SSID, q0) if ssv else 0
        last = bool(q0 & PRIQ_0_PRG_LAST)
        grpid = FIELD_GET(PRIQ_1_PRG_IDX, q1)
        master = self.streams.get(sid)
        if master is not None and master.pri_enabled:
            perm = 0
            if q0 & PRIQ_0_PERM_READ:
                perm |= IOMMU_FAULT_PERM_READ
            if q0 & PRIQ_0_PERM_WRITE:
                perm |= IOMMU_FAULT_PERM_WRITE
            if q0 & PRIQ_0_PERM_EXEC:
                perm |= IOMMU_FAULT_PERM_EXEC
            if q0 & PRIQ_0_PERM_PRIV:
                perm |= IOMMU_FAULT_PERM_PRIV
            flags = (IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE if last else 0) | (
                IOMMU_FAULT_PAGE_REQUEST_PASID_VALID if ssv else 0)
            self.core.iommu_report_device_fault(master.dev, PageRequest(
                flags=flags, pasid=ssid, grpid=grpid, perm=perm, addr=q1 & PRIQ_1_ADDR_MASK))
            return
        self.log.append(f"unexpected PRI request received: sid {sid:#x}.{ssid:#x} "
                        f"[{grpid}{'L' if last else ''}] iova {q1 & PRIQ_1_ADDR_MASK:#x}")
        if last:
            self.issue_cmd(arm_smmu_make_cmd_pri_resp(sid, ssid, ssv, grpid,
                                                           PRI_RESP_DENY))

    def gerror_handler(self) -> None:
        gerror = self.readl(ARM_SMMU_GERROR)
        gerrorn = self.readl(ARM_SMMU_GERRORN)
        active = gerror ^ gerrorn
        if not active & GERROR_ERR_MASK:
            return
        self.log.append(f"unexpected global error reported ({active:#010x}), this could "
                        "be serious")
        if active & GERROR_CMDQ_ERR:
            self.cmdq.skip_err()
        self.writel(ARM_SMMU_GERRORN, gerror)

    # -- helpers -------------------------------------------------------------------------
    @property
    def nesting(self) -> bool:
        return bool(self.features & ARM_SMMU_FEAT_NESTING)

    def feature_names(self) -> list[str]:
        from drivers.arm_smmu_v3.regs import FEATURE_NAMES

        return [n for i, n in enumerate(FEATURE_NAMES) if self.features & (1 << i)]

    def stu(self) -> int:
        """Smallest Translation Unit: log2 of the smallest supported granule."""
        pg = self.pgsize_bitmap
        return (pg & -pg).bit_length() - 1

    def __repr__(self) -> str:
        return f"<ArmSmmuDevice {self.name}>"


__all__ = ["PAGE_SIZE", "VA_BITS", "ArmSmmuDevice", "IdAllocator"]


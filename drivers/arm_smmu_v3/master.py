"""Per-device state (``struct arm_smmu_master``), its CD table, and the STE / CD writers
that drive :func:`~drivers.arm_smmu_v3.writer.arm_smmu_write_entry` against the tables
in memory with real CFGI + CMD_SYNC syncs."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import attrs

from drivers.arm_smmu_v3.cd import Cd, arm_smmu_get_cd_used
from drivers.arm_smmu_v3.cmdq import (
    CmdqBatch,
    arm_smmu_make_cmd_cfgi_cd,
    arm_smmu_make_cmd_cfgi_ste,
    arm_smmu_make_cmd_prefetch_cfg,
)
from drivers.arm_smmu_v3.entry import ZERO_QWORDS, Entry, Qwords
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_2_LVL_CDTAB,
    ARM_SMMU_OPT_SKIP_PREFETCH,
    CTXDESC_CD_0_V,
    CTXDESC_CD_DWORDS,
    CTXDESC_L1_DESC_L2PTR_MASK,
    CTXDESC_L1_DESC_V,
    CTXDESC_L2_ENTRIES,
    FIELD_GET,
    NUM_ENTRY_QWORDS,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_0_S1FMT_64K_L2,
    STRTAB_STE_0_S1FMT_LINEAR,
    STRTAB_STE_1_EATS,
    STRTAB_STE_1_EATS_TRANS,
)
from drivers.arm_smmu_v3.ste import Ste, arm_smmu_get_ste_update_safe, arm_smmu_get_ste_used
from drivers.arm_smmu_v3.writer import EntryWriter, arm_smmu_write_entry
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.platform.bus import Device

#: Firmware "dma-can-stall" for non-PCI masters (IORT/DT): a stall-capable device.
DMA_CAN_STALL = "dma_can_stall"

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.device import ArmSmmuDevice
    from drivers.arm_smmu_v3.iommufd import ArmVsmmu


class MemEntrySlot:
    """A 64-byte entry in simulated memory, written one 64-bit store at a time."""

    __slots__ = ("label", "pa", "smmu")

    def __init__(self, smmu: ArmSmmuDevice, pa: int, label: str) -> None:
        self.smmu = smmu
        self.pa = pa
        self.label = label

    def __getitem__(self, i: int) -> int:
        return self.smmu.mem.read_u64(self.pa + 8 * i)

    def __setitem__(self, i: int, value: int) -> None:
        tracer = self.smmu.tracer
        if tracer.enabled:
            tracer.event("driver", f"write {self.label} q{i}", f"{value:#018x}")
        self.smmu.mem.write_u64(self.pa + 8 * i, value)

    def read(self) -> Qwords:
        r = self.smmu.mem.read_u64
        return tuple(r(self.pa + 8 * i) for i in range(NUM_ENTRY_QWORDS))  # type: ignore[return-value]


@attrs.define(eq=False)
class ArmSmmuCdTable:
    """``struct arm_smmu_ctx_desc_cfg``."""

    cdtab_dma: int = 0
    cdtab_order: int = 0
    s1fmt: int = STRTAB_STE_0_S1FMT_LINEAR
    s1cdmax: int = 0
    num_l1_ents: int = 0
    #: 2-level: the L2 leaf table address per L1 index (0 = none yet).
    l1_desc: list[int] = attrs.field(factory=list)
    used_ssids: int = 0
    in_ste: bool = False

    @property
    def allocated(self) -> bool:
        return self.cdtab_dma != 0


@attrs.define(eq=False)
class VMaster:
    """``struct arm_smmu_vmaster``: where this master's events go in a vIOMMU."""

    vsmmu: ArmVsmmu
    vsid: int


@attrs.define(eq=False)
class ArmSmmuMaster:
    """``struct arm_smmu_master``."""

    smmu: ArmSmmuDevice
    dev: Device
    streams: tuple[int, ...]
    cd_table: ArmSmmuCdTable = attrs.field(factory=ArmSmmuCdTable)
    ssid_bits: int = 0
    stall_enabled: bool = False
    ats_enabled: bool = False
    ste_ats_enabled: bool = False
    pri_enabled: bool = False
    iopf_refcount: int = 0
    vmaster: VMaster | None = None

    @property
    def canwbs(self) -> bool:
        return bool(self.dev.canwbs)

    def __repr__(self) -> str:
        return f"<ArmSmmuMaster {self.dev.name} sids {self.streams}>"


# -- the writers ----------------------------------------------------------------------------
class ArmSmmuSteWriter(EntryWriter):
    """``struct arm_smmu_ste_writer``: a sync is CFGI_STE(sid, leaf) + CMD_SYNC."""

    def __init__(self, master: ArmSmmuMaster, sid: int) -> None:
        self.master = master
        self.sid = sid

    def get_used(self, entry: Qwords) -> Qwords:
        return arm_smmu_get_ste_used(entry)

    def get_update_safe(self, cur: Qwords, target: Qwords) -> Qwords:
        return arm_smmu_get_ste_update_safe(cur, target)

    def sync(self) -> None:
        self.master.smmu.issue_cmd(arm_smmu_make_cmd_cfgi_ste(self.sid, True), sync=True)


class ArmSmmuCdWriter(EntryWriter):
    """``struct arm_smmu_cd_writer``: a sync is CFGI_CD(sid, ssid, leaf) for every SID of
    the master, then one CMD_SYNC."""

    def __init__(self, master: ArmSmmuMaster, ssid: int) -> None:
        self.master = master
        self.ssid = ssid

    def get_used(self, entry: Qwords) -> Qwords:
        return arm_smmu_get_cd_used(entry)

    def sync(self) -> None:
        arm_smmu_sync_cd(self.master, self.ssid, True)


def arm_smmu_sync_cd(master: ArmSmmuMaster, ssid: int, leaf: bool) -> None:
    batch = CmdqBatch(master.smmu)
    for sid in master.streams:
        batch.add_cmd(arm_smmu_make_cmd_cfgi_cd(sid, ssid, leaf))
    batch.submit()


def arm_smmu_write_ste(master: ArmSmmuMaster, sid: int, target: Ste) -> None:
    smmu = master.smmu
    slot = MemEntrySlot(smmu, smmu.get_step_for_sid(sid), f"STE[{sid:#x}]")
    arm_smmu_write_entry(ArmSmmuSteWriter(master, sid), slot, target)
    # It's likely that we'll want to use the new STE soon.
    if not smmu.options & ARM_SMMU_OPT_SKIP_PREFETCH:
        smmu.issue_cmd(arm_smmu_make_cmd_prefetch_cfg(sid))


def arm_smmu_install_ste_for_dev(master: ArmSmmuMaster, target: Ste) -> None:
    master.cd_table.in_ste = FIELD_GET(STRTAB_STE_0_CFG, target[0]) == STRTAB_STE_0_CFG_S1_TRANS
    master.ste_ats_enabled = FIELD_GET(STRTAB_STE_1_EATS, target[1]) == STRTAB_STE_1_EATS_TRANS
    seen: set[int] = set()
    for sid in master.streams:
        if sid in seen:  # bridged PCI devices may have duplicated IDs
            continue
        seen.add(sid)
        arm_smmu_write_ste(master, sid, target)


def arm_smmu_read_ste(master: ArmSmmuMaster, sid: int | None = None) -> Ste:
    """The STE as it is in memory (for people and tests)."""
    smmu = master.smmu
    pa = smmu.get_step_for_sid(master.streams[0] if sid is None else sid)
    return Ste(MemEntrySlot(smmu, pa, "").read())


# -- CD tables -------------------------------------------------------------------------------
def arm_smmu_ssids_in_use(cd_table: ArmSmmuCdTable) -> bool:
    return cd_table.used_ssids > 0


def _order(size: int) -> int:
    return max(0, (size - 1).bit_length() - 12)


def arm_smmu_alloc_cd_tables(master: ArmSmmuMaster) -> None:
    smmu = master.smmu
    cd_table = master.cd_table
    cd_table.s1cdmax = master.ssid_bits
    max_contexts = 1 << cd_table.s1cdmax
    if not smmu.features & ARM_SMMU_FEAT_2_LVL_CDTAB or max_contexts <= CTXDESC_L2_ENTRIES:
        cd_table.s1fmt = STRTAB_STE_0_S1FMT_LINEAR
        cd_table.num_l1_ents = max_contexts
        l1size = max_contexts * (CTXDESC_CD_DWORDS << 3)
        cd_table.l1_desc = []
    else:
        smmu.platform.kzalloc("cd_table->l2.l2ptrs")
        cd_table.s1fmt = STRTAB_STE_0_S1FMT_64K_L2
        cd_table.num_l1_ents = -(-max_contexts // CTXDESC_L2_ENTRIES)
        cd_table.l1_desc = [0] * cd_table.num_l1_ents
        l1size = cd_table.num_l1_ents * 8
    cd_table.cdtab_order = _order(l1size)
    cd_table.cdtab_dma = smmu.alloc.alloc_pages(cd_table.cdtab_order)


def arm_smmu_free_cd_tables(master: ArmSmmuMaster) -> None:
    smmu = master.smmu
    cd_table = master.cd_table
    l2order = _order(CTXDESC_L2_ENTRIES * (CTXDESC_CD_DWORDS << 3))
    for l2 in cd_table.l1_desc:
        if l2:
            smmu.alloc.free_pages(l2, l2order)
    cd_table.l1_desc = []
    if cd_table.cdtab_dma:
        smmu.alloc.free_pages(cd_table.cdtab_dma, cd_table.cdtab_order)
    cd_table.cdtab_dma = 0
    cd_table.used_ssids = 0


def arm_smmu_get_cd_ptr(master: ArmSmmuMaster, ssid: int) -> int | None:
    cd_table = master.cd_table
    if not cd_table.allocated:
        return None
    if cd_table.s1fmt == STRTAB_STE_0_S1FMT_LINEAR:
        return cd_table.cdtab_dma + ssid * (CTXDESC_CD_DWORDS << 3)
    l2 = cd_table.l1_desc[ssid // CTXDESC_L2_ENTRIES]
    if not l2:
        return None
    return l2 + (ssid % CTXDESC_L2_ENTRIES) * (CTXDESC_CD_DWORDS << 3)


def arm_smmu_alloc_cd_ptr(master: ArmSmmuMaster, ssid: int) -> int:
    """The CD slot for ``ssid``, allocating the table and leaf on demand (ENOMEM)."""
    smmu = master.smmu
    cd_table = master.cd_table
    if not cd_table.allocated:
        arm_smmu_alloc_cd_tables(master)
    if cd_table.s1fmt == STRTAB_STE_0_S1FMT_64K_L2:
        idx = ssid // CTXDESC_L2_ENTRIES
        if not cd_table.l1_desc[idx]:
            l2 = smmu.alloc.alloc_pages(_order(CTXDESC_L2_ENTRIES * (CTXDESC_CD_DWORDS << 3)))
            cd_table.l1_desc[idx] = l2
            smmu.mem.write_u64(cd_table.cdtab_dma + idx * 8,
                               (l2 & CTXDESC_L1_DESC_L2PTR_MASK) | CTXDESC_L1_DESC_V)
            # An invalid L1CD can be cached.
            arm_smmu_sync_cd(master, ssid, False)
    ptr = arm_smmu_get_cd_ptr(master, ssid)
    if ptr is None:
        raise IommuError(errno.ENOMEM, "no CD slot")
    return ptr


def arm_smmu_write_cd_entry(master: ArmSmmuMaster, ssid: int, cdptr: int, target: Entry
                            ) -> None:
    slot = MemEntrySlot(master.smmu, cdptr, f"CD[{master.streams[0]:#x}.{ssid}]")
    target_valid = bool(target[0] & CTXDESC_CD_0_V)
    cur_valid = bool(slot[0] & CTXDESC_CD_0_V)
    if ssid != IOMMU_NO_PASID and cur_valid != target_valid:
        master.cd_table.used_ssids += -1 if cur_valid else 1
    arm_smmu_write_entry(ArmSmmuCdWriter(master, ssid), slot, target)


def arm_smmu_clear_cd(master: ArmSmmuMaster, ssid: int) -> None:
    if not master.cd_table.allocated:
        return
    cdptr = arm_smmu_get_cd_ptr(master, ssid)
    if cdptr is None:
        return
    arm_smmu_write_cd_entry(master, ssid, cdptr, Cd(ZERO_QWORDS))


def arm_smmu_read_cd(master: ArmSmmuMaster, ssid: int) -> Cd | None:
    ptr = arm_smmu_get_cd_ptr(master, ssid)
    if ptr is None:
        return None
    return Cd(MemEntrySlot(master.smmu, ptr, "").read())


def master_of(dev: Device) -> ArmSmmuMaster:
    di: Any = dev.iommu
    if di is None or not isinstance(di.priv, ArmSmmuMaster):
        raise IommuError(errno.ENODEV, f"{dev.name} is not behind an SMMUv3")
    m: ArmSmmuMaster = di.priv
    return m


# -- probe / release (arm_smmu_probe_device / arm_smmu_release_device) ----------------------
def arm_smmu_probe_device(smmu: ArmSmmuDevice, dev: Device) -> ArmSmmuMaster:
    from drivers.arm_smmu_v3.regs import (
        ARM_SMMU_FEAT_2_LVL_STRTAB,
        ARM_SMMU_FEAT_STALL_FORCE,
        ARM_SMMU_FEAT_STALLS,
        CTXDESC_LINEAR_CDMAX,
    )
    from iommu_core.platform.ats import pci_enable_pasid

    sids = tuple(dev.stream_ids) or (dev.rid,)
    for sid in sids:
        if not smmu.sid_in_range(sid):
            raise IommuError(errno.ERANGE, f"{dev.name}: StreamID {sid:#x} out of range")
        other = smmu.streams.get(sid)
        if other is not None and other.dev is not dev:
            raise IommuError(errno.EINVAL, f"aliasing StreamID {sid:#x} (from {dev.name}) "
                             "unsupported")
    smmu.platform.kzalloc("struct arm_smmu_master")
    smmu.platform.kzalloc("master->streams")  # arm_smmu_insert_master
    master = ArmSmmuMaster(smmu=smmu, dev=dev, streams=sids)
    if smmu.features & ARM_SMMU_FEAT_2_LVL_STRTAB:
        for sid in sids:
            smmu.init_l2_strtab(sid)
    for sid in sids:
        smmu.streams[sid] = master
    if dev.pasid_bits and smmu.ssid_bits:
        if dev.is_pci:
            pci_enable_pasid(dev)
        master.ssid_bits = min(smmu.ssid_bits, dev.pasid_bits)
    if not smmu.features & ARM_SMMU_FEAT_2_LVL_CDTAB:
        master.ssid_bits = min(master.ssid_bits, CTXDESC_LINEAR_CDMAX)
    if (smmu.features & ARM_SMMU_FEAT_STALLS and dev.props.get(DMA_CAN_STALL)) or (
            smmu.features & ARM_SMMU_FEAT_STALL_FORCE):
        master.stall_enabled = True
    dev.iommu.priv = master
    return master


def arm_smmu_release_device(master: ArmSmmuMaster) -> None:
    from iommu_core.platform.ats import pci_disable_pasid

    smmu = master.smmu
    if master.iopf_refcount:
        smmu.log.append(f"{master.dev.name}: released with IOPF still enabled")
    if master.dev.is_pci:
        pci_disable_pasid(master.dev)
    master.ssid_bits = 0
    for sid in master.streams:
        if smmu.streams.get(sid) is master:
            del smmu.streams[sid]
    if master.cd_table.allocated:
        arm_smmu_free_cd_tables(master)

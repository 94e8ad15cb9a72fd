"""Domains: S1 and S2 paging (with nest parents and dirty tracking), the static identity
and blocked domains, PASID attach through CD tables, the attach prepare/commit sequence
with its ATS ordering, and TLB/ATC invalidation (smmuv3.md §10, §11)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import attrs

from drivers.arm_smmu_v3.cd import Cd, S1Cfg, Tcr, arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.cmdq import (
    Cmd,
    CmdqBatch,
    arm_smmu_make_cmd_atc_inv,
    arm_smmu_make_cmd_atc_inv_all,
    arm_smmu_make_cmd_tlbi,
)
from drivers.arm_smmu_v3.master import (
    ArmSmmuMaster,
    arm_smmu_alloc_cd_ptr,
    arm_smmu_clear_cd,
    arm_smmu_install_ste_for_dev,
    arm_smmu_ssids_in_use,
    arm_smmu_write_cd_entry,
    master_of,
)
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_ATS,
    ARM_SMMU_FEAT_COHERENCY,
    ARM_SMMU_FEAT_E2H,
    ARM_SMMU_FEAT_HD,
    ARM_SMMU_FEAT_NESTING,
    ARM_SMMU_FEAT_PRI,
    ARM_SMMU_FEAT_RANGE_INV,
    ARM_SMMU_FEAT_S2FWB,
    ARM_SMMU_FEAT_TRANS_S1,
    ARM_SMMU_FEAT_VAX,
    CMDQ_OP_TLBI_EL2_ASID,
    CMDQ_OP_TLBI_EL2_VA,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
    CMDQ_TLBI_0_NUM,
    CMDQ_TLBI_0_SCALE,
    CMDQ_TLBI_1_LEAF,
    CMDQ_TLBI_RANGE_NUM_MAX,
    CTXDESC_CD_0_ASID,
    FIELD_PREP,
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1DSS_SSID0,
    STRTAB_STE_1_S1DSS_TERMINATE,
)
from drivers.arm_smmu_v3.ste import (
    S2Cfg,
    Ste,
    Vtcr,
    arm_smmu_make_abort_ste,
    arm_smmu_make_bypass_ste,
    arm_smmu_make_cdtable_ste,
    arm_smmu_make_s2_domain_ste,
)
from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
    IOMMU_DOMAIN_IDENTITY,
    IOMMU_DOMAIN_NESTED,
    IOMMU_DOMAIN_UNMANAGED,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
    Geometry,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.pgtable.formats import ArmLpaeFormat, ArmTableInfo
from iommu_core.platform.ats import (
    pci_ats_supported,
    pci_disable_ats,
    pci_disable_pri,
    pci_enable_ats,
    pci_enable_pri,
)
from iommu_core.platform.bus import Device

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.device import ArmSmmuDevice
    from iommu_core.iommufd_driver import UserData
    from iommu_core.plugin import IommuOps

ARM_SMMU_DOMAIN_S1 = 1
ARM_SMMU_DOMAIN_S2 = 2
VA_BITS = 48
PAGE_SIZE = 4096

PAGING_OPS = ("attach_dev", "set_dev_pasid", "map_pages", "unmap_pages", "flush_iotlb_all",
              "iotlb_sync", "iova_to_phys", "enforce_cache_coherency", "free")
DIRTY_OPS = ("set_dirty_tracking", "read_and_clear_dirty")


@attrs.define(eq=False)
class MasterDomain:
    """``struct arm_smmu_master_domain``: one (master, SSID) attached to a domain."""

    master: ArmSmmuMaster
    ssid: int
    nested_ats_flush: bool = False
    using_iopf: bool = False


class ArmSmmuStaticDomain(IommuDomain):
    """The driver's static identity and blocked domains."""


class ArmSmmuDomain(IommuDomain):
    """``struct arm_smmu_domain``: a paging domain, stage 1 or stage 2."""

    def __init__(self, ops: IommuOps, smmu: ArmSmmuDevice, stage: int, *, nest_parent: bool,
                 dirty: bool) -> None:
        self.smmu = smmu
        self.stage = stage
        self.nest_parent = nest_parent
        self.dirty = dirty
        self.asid = 0
        self.vmid = 0
        self.enforce_cc = False
        self.devices: list[MasterDomain] = []
        self.nr_ats_masters = 0
        self.pgtbl = _finalise_pgtable(smmu, stage, nest_parent, dirty)
        fmt = self.pgtbl.fmt
        provided = PAGING_OPS + (DIRTY_OPS if dirty else ())
        super().__init__(IOMMU_DOMAIN_UNMANAGED, ops.domain_ops(provided),
                         pgsize_bitmap=fmt.pgsize_bitmap,
                         geometry=Geometry(0, (1 << fmt.ias) - 1, True), dirty_ops=dirty)
        try:
            if stage == ARM_SMMU_DOMAIN_S1:
                self.asid = smmu.asid_ids.alloc()
            else:
                # VMID 0 is reserved for stage-1 bypass STEs.
                self.vmid = smmu.vmid_ids.alloc()
        except IommuError:
            self.pgtbl.free()
            raise

    # What the make functions take from the io-pgtable configuration.
    def s1_cfg(self) -> S1Cfg:
        return arm_lpae_s1_cfg(self.pgtbl, self.asid, self.dirty)

    def s2_cfg(self) -> S2Cfg:
        return arm_lpae_s2_cfg(self.pgtbl, self.vmid)

    def __repr__(self) -> str:
        kind = "S1 asid" if self.stage == ARM_SMMU_DOMAIN_S1 else "S2 vmid"
        ident = self.asid if self.stage == ARM_SMMU_DOMAIN_S1 else self.vmid
        np = " nest-parent" if self.nest_parent else ""
        return f"<ArmSmmuDomain {self.type_name} {kind} {ident}{np}>"


def arm_lpae_s1_cfg(pgtbl: IoPageTable, asid: int, hd: bool = False) -> S1Cfg:
    """The CD inputs of a stage-1 table (``arm_lpae_s1_cfg``: TTBR, TCR, MAIR)."""
    info = pgtbl.hw_info
    assert isinstance(info, ArmTableInfo)
    t = info.tcr
    return S1Cfg(asid=asid, ttbr=info.root,
                 tcr=Tcr(tsz=t.tsz, tg=t.tg, irgn=t.irgn, orgn=t.orgn, sh=t.sh, ips=t.ps),
                 mair=t.mair or 0, hd=hd)


def arm_lpae_s2_cfg(pgtbl: IoPageTable, vmid: int) -> S2Cfg:
    """The STE inputs of a stage-2 table (``arm_lpae_s2_cfg``: VTTBR, VTCR, S2FWB)."""
    info = pgtbl.hw_info
    assert isinstance(info, ArmTableInfo)
    t = info.tcr
    fmt = pgtbl.fmt
    assert isinstance(fmt, ArmLpaeFormat)
    return S2Cfg(vmid=vmid, vttbr=info.root,
                 vtcr=Vtcr(tsz=t.tsz, sl=t.sl0 or 0, irgn=t.irgn, orgn=t.orgn, sh=t.sh,
                           tg=t.tg, ps=t.ps),
                 s2fwb=fmt.s2fwb)


def _granule(pgsize_bitmap: int) -> int:
    """io-pgtable's granule choice: PAGE_SIZE if supported, else the largest below it,
    else the smallest above it."""
    if pgsize_bitmap & PAGE_SIZE:
        return PAGE_SIZE
    below = pgsize_bitmap & (PAGE_SIZE - 1)
    if below:
        return 1 << (below.bit_length() - 1)
    above = pgsize_bitmap & ~(PAGE_SIZE - 1)
    return above & -above


def _finalise_pgtable(smmu: ArmSmmuDevice, stage: int, nest_parent: bool, dirty: bool
                      ) -> IoPageTable:
    granule = _granule(smmu.pgsize_bitmap)
    coherent = bool(smmu.features & ARM_SMMU_FEAT_COHERENCY)
    cap = 52 if granule == 65536 else 48
    if stage == ARM_SMMU_DOMAIN_S1:
        ias = min(52 if smmu.features & ARM_SMMU_FEAT_VAX else 48, VA_BITS, cap)
        fmt = formats.arm_lpae_s1(granule, ias, min(smmu.ias, cap), hd=dirty,
                                  coherent_walk=coherent)
    else:
        s2fwb = bool(smmu.features & ARM_SMMU_FEAT_S2FWB) and nest_parent
        fmt = formats.arm_lpae_s2(granule, min(smmu.ias, cap), min(smmu.oas, cap), s2fwb=s2fwb,
                                  coherent_walk=coherent)
    return IoPageTable(fmt.with_pgsizes(smmu.pgsize_bitmap),
                       PhysTableMemory(smmu.mem, smmu.alloc))


# ==================================================================================
# Allocation and free
# ==================================================================================
def arm_smmu_domain_alloc_paging_flags(ops: IommuOps, dev: Device, flags: int,
                                       user_data: UserData | None) -> ArmSmmuDomain:
    master = master_of(dev)
    smmu = master.smmu
    paging_flags = (IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID
                    | IOMMU_HWPT_ALLOC_NEST_PARENT)
    if flags & ~paging_flags or user_data is not None:
        raise IommuError(errno.EOPNOTSUPP, f"unsupported paging flags {flags:#x} or data")
    dirty = False
    if flags == 0:
        stage = ARM_SMMU_DOMAIN_S1 if smmu.features & ARM_SMMU_FEAT_TRANS_S1 \
            else ARM_SMMU_DOMAIN_S2
        nest_parent = False
    elif flags == IOMMU_HWPT_ALLOC_NEST_PARENT:
        if not smmu.features & ARM_SMMU_FEAT_NESTING:
            raise IommuError(errno.EOPNOTSUPP, f"{smmu.name} does not support nesting")
        stage, nest_parent = ARM_SMMU_DOMAIN_S2, True
    elif flags in (IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                   IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID,
                   IOMMU_HWPT_ALLOC_PASID):
        if not smmu.features & ARM_SMMU_FEAT_TRANS_S1:
            raise IommuError(errno.EOPNOTSUPP, "PASID and dirty tracking need stage 1")
        stage, nest_parent = ARM_SMMU_DOMAIN_S1, False
        dirty = bool(flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    else:
        raise IommuError(errno.EOPNOTSUPP, f"unsupported flag combination {flags:#x}")
    if dirty and not arm_smmu_dbm_capable(smmu):
        raise IommuError(errno.EOPNOTSUPP, "no HTTU dirty state support")
    smmu.platform.kzalloc("struct arm_smmu_domain")
    return ArmSmmuDomain(ops, smmu, stage, nest_parent=nest_parent, dirty=dirty)


def arm_smmu_domain_free_paging(domain: ArmSmmuDomain) -> None:
    domain.pgtbl.free()
    if domain.stage == ARM_SMMU_DOMAIN_S1:
        domain.smmu.asid_ids.free(domain.asid)
    elif domain.vmid:
        domain.smmu.vmid_ids.free(domain.vmid)


def arm_smmu_dbm_capable(smmu: ArmSmmuDevice) -> bool:
    want = ARM_SMMU_FEAT_HD | ARM_SMMU_FEAT_COHERENCY
    return smmu.features & want == want


def arm_smmu_capable(dev: Device, cap: int) -> bool:
    master = master_of(dev)
    smmu = master.smmu
    if cap == IommuCap.CACHE_COHERENCY:
        return bool(smmu.features & ARM_SMMU_FEAT_COHERENCY)
    if cap == IommuCap.ENFORCE_CACHE_COHERENCY:
        return master.canwbs
    if cap in (IommuCap.NOEXEC, IommuCap.DEFERRED_FLUSH):
        return True
    if cap == IommuCap.DIRTY_TRACKING:
        return arm_smmu_dbm_capable(smmu)
    if cap == IommuCap.PCI_ATS_SUPPORTED:
        return arm_smmu_ats_supported(master)
    return False


# ==================================================================================
# Attach: prepare / install / commit
# ==================================================================================
def arm_smmu_ats_supported(master: ArmSmmuMaster) -> bool:
    dev = master.dev
    if not master.smmu.features & ARM_SMMU_FEAT_ATS or not dev.rc_ats:
        return False
    return pci_ats_supported(dev)


def arm_smmu_pri_supported(master: ArmSmmuMaster) -> bool:
    return bool(master.smmu.features & ARM_SMMU_FEAT_PRI) and master.dev.is_pci \
        and master.dev.pri


def to_smmu_domain_devices(domain: IommuDomain | None) -> ArmSmmuDomain | None:
    """The domain whose device list tracks this attachment (for invalidations)."""
    if domain is None:
        return None
    if isinstance(domain, ArmSmmuDomain):
        return domain
    if domain.type == IOMMU_DOMAIN_NESTED:
        from drivers.arm_smmu_v3.iommufd import ArmSmmuNestedDomain

        if isinstance(domain, ArmSmmuNestedDomain):
            return domain.vsmmu.s2_parent
    return None


def _nested_ats_flush(domain: IommuDomain | None) -> bool:
    if domain is not None and domain.type == IOMMU_DOMAIN_NESTED:
        return bool(getattr(domain, "enable_ats", False))
    return False


@attrs.define(eq=False)
class AttachState:
    """``struct arm_smmu_attach_state``."""

    master: ArmSmmuMaster
    ssid: int
    old_domain: IommuDomain | None = None
    cd_needs_ats: bool = False
    disable_ats: bool = False
    ats_enabled: bool = False
    vmaster: Any = None
    master_domain: MasterDomain | None = None


def arm_smmu_find_master_domain(domain: ArmSmmuDomain, master: ArmSmmuMaster, ssid: int,
                                nested_ats_flush: bool) -> MasterDomain | None:
    for md in domain.devices:
        if md.master is master and md.ssid == ssid and md.nested_ats_flush == nested_ats_flush:
            return md
    return None


def arm_smmu_attach_prepare(state: AttachState, new_domain: IommuDomain) -> None:
    """Decide ATS, put the master on the new domain's list, enable IOPF, and start
    turning ATS off if it goes (the device first, before the STE)."""
    master = state.master
    smmu_domain = to_smmu_domain_devices(new_domain)
    if smmu_domain is not None or state.cd_needs_ats:
        # ATS cannot be used with bypass/abort STEs: only with page tables.
        state.ats_enabled = not state.disable_ats and arm_smmu_ats_supported(master)
    if smmu_domain is not None:
        if smmu_domain.enforce_cc and not master.canwbs:
            raise IommuError(errno.EINVAL, f"{master.dev.name} cannot enforce cache "
                             "coherency (no CANWBS)")
        if new_domain.type == IOMMU_DOMAIN_NESTED:
            from drivers.arm_smmu_v3.iommufd import arm_smmu_attach_prepare_vmaster

            state.vmaster = arm_smmu_attach_prepare_vmaster(state, new_domain)
        md = MasterDomain(master, state.ssid, nested_ats_flush=_nested_ats_flush(new_domain))
        if new_domain.iopf_handler is not None:
            arm_smmu_enable_iopf(master, md)
        # Both the old and the new domain are on the list until commit: both send
        # ATC invalidations to the master meanwhile.
        if state.ats_enabled:
            smmu_domain.nr_ats_masters += 1
        smmu_domain.devices.append(md)
        state.master_domain = md
    if not state.ats_enabled and master.ats_enabled:
        # The config write turning ATS off must land before the STE generates UR.
        if master.pri_enabled:
            pci_disable_pri(master.dev)
            master.pri_enabled = False
        pci_disable_ats(master.dev)


def arm_smmu_attach_commit(state: AttachState) -> None:
    master = state.master
    if state.ssid == IOMMU_NO_PASID:
        master.vmaster = state.vmaster  # arm_smmu_attach_commit_vmaster()
    if state.ats_enabled and not master.ats_enabled:
        arm_smmu_enable_ats(master)
    elif state.ats_enabled and master.ats_enabled:
        # The translation changed: flush the ATC for this SSID.
        arm_smmu_atc_inv_master(master, state.ssid)
    elif not state.ats_enabled and master.ats_enabled:
        arm_smmu_atc_inv_master(master, IOMMU_NO_PASID)  # the whole ATC
    arm_smmu_remove_master_domain(master, state.old_domain, state.ssid)
    master.ats_enabled = state.ats_enabled
    arm_smmu_update_pri(master)


def arm_smmu_remove_master_domain(master: ArmSmmuMaster, domain: IommuDomain | None,
                                  ssid: int) -> None:
    smmu_domain = to_smmu_domain_devices(domain)
    if smmu_domain is None:
        return
    md = arm_smmu_find_master_domain(smmu_domain, master, ssid, _nested_ats_flush(domain))
    if md is None:
        return
    smmu_domain.devices.remove(md)
    if master.ats_enabled:
        smmu_domain.nr_ats_masters -= 1
    if md.using_iopf:
        arm_smmu_disable_iopf(master, md)


# -- IOPF: stall or PRI ------------------------------------------------------------------
def arm_smmu_enable_iopf(master: ArmSmmuMaster, md: MasterDomain) -> None:
    """Devices that can neither stall nor use PRI have device-specific fault handling:
    not a failure."""
    if not (master.stall_enabled or arm_smmu_pri_supported(master)):
        return
    master.iopf_refcount += 1
    md.using_iopf = True


def arm_smmu_disable_iopf(master: ArmSmmuMaster, md: MasterDomain) -> None:
    md.using_iopf = False
    master.iopf_refcount -= 1
    if master.iopf_refcount == 0:
        master.smmu.core.iopf_queue_remove_device(master.dev)


def arm_smmu_update_pri(master: ArmSmmuMaster) -> None:
    """PRI is on while a fault-capable domain is attached and ATS is enabled."""
    want = (master.iopf_refcount > 0 and master.ats_enabled
            and arm_smmu_pri_supported(master))
    if want and not master.pri_enabled:
        pci_enable_pri(master.dev)
        master.pri_enabled = True
    elif not want and master.pri_enabled:
        pci_disable_pri(master.dev)
        master.pri_enabled = False


# -- ATS -----------------------------------------------------------------------------------
def arm_smmu_enable_ats(master: ArmSmmuMaster) -> None:
    # ATC invalidation of PASID 0 flushes the entire ATC.
    arm_smmu_atc_inv_master(master, IOMMU_NO_PASID)
    pci_enable_ats(master.dev, master.smmu.stu())


def arm_smmu_atc_inv_to_cmd(sid: int, ssid: int, iova: int, size: int) -> Cmd:
    """One power-of-two aligned ATC_INV covering [iova, iova+size) (0: everything).
    Without a PASID the invalidation also hits PASID-tagged entries."""
    if not size:
        return arm_smmu_make_cmd_atc_inv_all(sid, ssid)
    page_start = iova >> 12
    page_end = (iova + size - 1) >> 12
    log2_span = (page_start ^ page_end).bit_length()
    page_start &= ~((1 << log2_span) - 1)
    return arm_smmu_make_cmd_atc_inv(sid, ssid, page_start << 12, log2_span)


def arm_smmu_atc_inv_master(master: ArmSmmuMaster, ssid: int) -> None:
    batch = CmdqBatch(master.smmu)
    for sid in master.streams:
        batch.add_cmd(arm_smmu_make_cmd_atc_inv_all(sid, ssid))
    batch.submit()


def arm_smmu_atc_inv_domain(domain: ArmSmmuDomain, iova: int, size: int) -> None:
    smmu = domain.smmu
    if not smmu.features & ARM_SMMU_FEAT_ATS or not domain.nr_ats_masters:
        return
    batch = CmdqBatch(smmu)
    for md in domain.devices:
        master = md.master
        if not master.ats_enabled:
            continue
        for sid in master.streams:
            if md.nested_ats_flush:
                # A nest parent changed: the guest's ATC entries derive from it, flush all.
                batch.add_cmd(arm_smmu_make_cmd_atc_inv_all(sid, IOMMU_NO_PASID))
            else:
                batch.add_cmd(arm_smmu_atc_inv_to_cmd(sid, md.ssid, iova, size))
    batch.submit()


# -- TLB -----------------------------------------------------------------------------------
def arm_smmu_tlb_inv_asid(smmu: ArmSmmuDevice, asid: int) -> None:
    op = (CMDQ_OP_TLBI_EL2_ASID if smmu.features & ARM_SMMU_FEAT_E2H
          else CMDQ_OP_TLBI_NH_ASID)
    smmu.issue_cmd(arm_smmu_make_cmd_tlbi(op, asid, 0), sync=True)


def arm_smmu_tlb_inv_context(domain: ArmSmmuDomain) -> None:
    smmu = domain.smmu
    if domain.stage == ARM_SMMU_DOMAIN_S1:
        arm_smmu_tlb_inv_asid(smmu, domain.asid)
    else:
        smmu.issue_cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_S12_VMALL, 0, domain.vmid),
                            sync=True)
    arm_smmu_atc_inv_domain(domain, 0, 0)


def arm_smmu_cmdq_batch_add_range(smmu: ArmSmmuDevice, batch: CmdqBatch, cmd: Cmd, leaf: bool,
                                  iova: int, size: int, granule: int, tg: int) -> None:
    """The range TLBIs of [iova, iova+size): with RIL one command per 5-bit chunk of the
    page count (TG/TTL/NUM/SCALE), else one per ``granule``. ``tg`` is log2 of the leaf
    page size; ``cmd`` carries the opcode, ASID and VMID."""
    if not size:
        return
    end = iova + size
    num_pages = 0
    inv_range = granule
    ttl = tg_enc = 0
    data0 = cmd[0]
    ril = bool(smmu.features & ARM_SMMU_FEAT_RANGE_INV)
    if ril:
        num_pages = size >> tg
        tg_enc = (tg - 10) // 2  # page size 12, 14, 16 (log2) -> TG 1, 2, 3
        if leaf:
            ttl = 4 - ((granule.bit_length() - 1 - 3) // (tg - 3))
        elif (num_pages & CMDQ_TLBI_RANGE_NUM_MAX) == 1:
            num_pages += 1  # avoid a range command with both scale and num zero
    fields1 = (CMDQ_TLBI_1_LEAF if leaf else 0) | (ttl << 8) | (tg_enc << 10)
    add = batch.add_cmd
    while iova < end:
        if ril:
            scale = (num_pages & -num_pages).bit_length() - 1
            num = (num_pages >> scale) & CMDQ_TLBI_RANGE_NUM_MAX
            data0 = (cmd[0] | FIELD_PREP(CMDQ_TLBI_0_NUM, num - 1)
                     | FIELD_PREP(CMDQ_TLBI_0_SCALE, scale & 0x1F))
            inv_range = num << (scale + tg)
            num_pages -= num << scale
        add((data0, fields1 | (iova & ~0xFFF)))
        iova += inv_range


def arm_smmu_tlb_inv_range_domain(iova: int, size: int, granule: int, leaf: bool,
                                  domain: ArmSmmuDomain) -> None:
    smmu = domain.smmu
    if domain.stage == ARM_SMMU_DOMAIN_S1:
        op = CMDQ_OP_TLBI_EL2_VA if smmu.features & ARM_SMMU_FEAT_E2H else CMDQ_OP_TLBI_NH_VA
        cmd = arm_smmu_make_cmd_tlbi(op, domain.asid, 0)
    else:
        cmd = arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_S2_IPA, 0, domain.vmid)
    pg = domain.pgsize_bitmap
    batch = CmdqBatch(smmu)
    arm_smmu_cmdq_batch_add_range(smmu, batch, cmd, leaf, iova, size, granule,
                                  (pg & -pg).bit_length() - 1)
    batch.submit()
    if domain.nest_parent:
        # Combined stage 1+2 entries derived from this S2 are tagged by its VMID.
        smmu.issue_cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ALL, 0, domain.vmid),
                            sync=True)
    arm_smmu_atc_inv_domain(domain, iova, size)


# -- domain ops ------------------------------------------------------------------------------
def arm_smmu_map_pages(domain: ArmSmmuDomain, iova: int, paddr: int, pgsize: int,
                       pgcount: int, prot: int) -> int:
    return domain.pgtbl.map_pages(iova, paddr, pgsize, pgcount, prot)


def arm_smmu_unmap_pages(domain: ArmSmmuDomain, iova: int, pgsize: int, pgcount: int,
                         gather: IotlbGather) -> int:
    # iommu_iotlb_gather_add_page(): flush first if the page size changes or the
    # range would be disjoint.
    if (gather.pgsize and gather.pgsize != pgsize) or gather.is_disjoint(iova, pgsize * pgcount):
        arm_smmu_iotlb_sync(domain, gather)
        gather.reset()
    done = domain.pgtbl.unmap_pages(iova, pgsize, pgcount, gather)
    if done:
        gather.pgsize = pgsize
    return done


def arm_smmu_iotlb_sync(domain: ArmSmmuDomain, gather: IotlbGather) -> None:
    if gather.start <= gather.end and gather.pgsize:
        # Emptied tables are freed below: invalidate non-leaf (walk cache) too.
        leaf = not gather.freelist
        arm_smmu_tlb_inv_range_domain(gather.start, gather.end - gather.start + 1,
                                      gather.pgsize, leaf, domain)
    domain.pgtbl.release_freelist(gather)


def arm_smmu_flush_iotlb_all(domain: ArmSmmuDomain) -> None:
    arm_smmu_tlb_inv_context(domain)


def arm_smmu_enforce_cache_coherency(domain: ArmSmmuDomain) -> bool:
    ok = all(md.master.canwbs for md in domain.devices)
    domain.enforce_cc = ok
    return ok


def arm_smmu_read_and_clear_dirty(domain: ArmSmmuDomain, iova: int, size: int, flags: int,
                                  dirty: Any) -> None:
    domain.pgtbl.read_and_clear_dirty(iova, size, flags, dirty.record)


# ==================================================================================
# RID attach
# ==================================================================================
def arm_smmu_attach_dev(domain: ArmSmmuDomain, dev: Device, old: IommuDomain | None) -> None:
    master = master_of(dev)
    smmu = master.smmu
    if domain.smmu is not smmu:
        raise IommuError(errno.EINVAL, f"{domain!r} belongs to {domain.smmu.name}")
    cdptr = 0
    if domain.stage == ARM_SMMU_DOMAIN_S1:
        cdptr = arm_smmu_alloc_cd_ptr(master, IOMMU_NO_PASID)
    elif arm_smmu_ssids_in_use(master.cd_table):
        raise IommuError(errno.EBUSY, f"{dev.name} has PASIDs attached")
    state = AttachState(master=master, ssid=IOMMU_NO_PASID, old_domain=old)
    arm_smmu_attach_prepare(state, domain)
    if domain.stage == ARM_SMMU_DOMAIN_S1:
        arm_smmu_write_cd_entry(master, IOMMU_NO_PASID, cdptr,
                                arm_smmu_make_s1_cd(master, domain.s1_cfg()))
        target = arm_smmu_make_cdtable_ste(master, state.ats_enabled, STRTAB_STE_1_S1DSS_SSID0)
        arm_smmu_install_ste_for_dev(master, target)
    else:
        target = arm_smmu_make_s2_domain_ste(master, domain.s2_cfg(), state.ats_enabled)
        arm_smmu_install_ste_for_dev(master, target)
        arm_smmu_clear_cd(master, IOMMU_NO_PASID)
    arm_smmu_attach_commit(state)


def arm_smmu_attach_dev_ste(domain: IommuDomain, old: IommuDomain | None, dev: Device,
                            ste: Ste, s1dss: int) -> None:
    master = master_of(dev)
    state = AttachState(master=master, ssid=IOMMU_NO_PASID, old_domain=old)
    if arm_smmu_ssids_in_use(master.cd_table):
        # PASIDs keep using the CD table: keep it, and assume they use ATS.
        state.cd_needs_ats = True
        arm_smmu_attach_prepare(state, domain)
        ste = arm_smmu_make_cdtable_ste(master, state.ats_enabled, s1dss)
    else:
        arm_smmu_attach_prepare(state, domain)
    arm_smmu_install_ste_for_dev(master, ste)
    arm_smmu_attach_commit(state)
    arm_smmu_clear_cd(master, IOMMU_NO_PASID)


def arm_smmu_attach_dev_identity(domain: IommuDomain, dev: Device, old: IommuDomain | None
                                 ) -> None:
    master = master_of(dev)
    arm_smmu_master_clear_vmaster(master)
    arm_smmu_attach_dev_ste(domain, old, dev, arm_smmu_make_bypass_ste(master.smmu),
                            STRTAB_STE_1_S1DSS_BYPASS)


def arm_smmu_attach_dev_blocked(domain: IommuDomain, dev: Device, old: IommuDomain | None
                                ) -> None:
    master = master_of(dev)
    arm_smmu_master_clear_vmaster(master)
    arm_smmu_attach_dev_ste(domain, old, dev, arm_smmu_make_abort_ste(),
                            STRTAB_STE_1_S1DSS_TERMINATE)


def arm_smmu_master_clear_vmaster(master: ArmSmmuMaster) -> None:
    master.vmaster = None


# ==================================================================================
# PASID attach
# ==================================================================================
def _sid_domain(dev: Device) -> IommuDomain | None:
    group = dev.iommu_group
    return group.domain if group is not None else None


def arm_smmu_update_ste(master: ArmSmmuMaster, sid_domain: IommuDomain | None,
                        ats_enabled: bool) -> None:
    if master.cd_table.in_ste and master.ste_ats_enabled == ats_enabled:
        return
    s1dss = STRTAB_STE_1_S1DSS_TERMINATE
    if sid_domain is not None and sid_domain.type == IOMMU_DOMAIN_IDENTITY:
        s1dss = STRTAB_STE_1_S1DSS_BYPASS
    # A cdtable STE with the RID's IDENTITY/BLOCKED behaviour in S1DSS: hitless.
    arm_smmu_install_ste_for_dev(master, arm_smmu_make_cdtable_ste(master, ats_enabled, s1dss))


def arm_smmu_set_pasid(master: ArmSmmuMaster, domain: ArmSmmuDomain, pasid: int, cd: Cd,
                       old: IommuDomain | None) -> None:
    sid_domain = _sid_domain(master.dev)
    if domain.smmu is not master.smmu:
        raise IommuError(errno.EINVAL, f"{domain!r} belongs to another SMMU")
    if not master.cd_table.in_ste and (sid_domain is None or sid_domain.type not in (
            IOMMU_DOMAIN_IDENTITY, IOMMU_DOMAIN_BLOCKED)):
        raise IommuError(errno.EINVAL, "the RID domain is not IDENTITY/BLOCKED and no CD "
                         "table is installed")
    cdptr = arm_smmu_alloc_cd_ptr(master, pasid)
    state = AttachState(master=master, ssid=pasid, old_domain=old)
    arm_smmu_attach_prepare(state, domain)
    # Fix up the ASID under the lock in case it changed.
    cd = cd.with_qword(0, (cd[0] & ~CTXDESC_CD_0_ASID) | FIELD_PREP(CTXDESC_CD_0_ASID,
                                                                     domain.asid))
    arm_smmu_write_cd_entry(master, pasid, cdptr, cd)
    arm_smmu_update_ste(master, sid_domain, state.ats_enabled)
    arm_smmu_attach_commit(state)


def arm_smmu_s1_set_dev_pasid(domain: ArmSmmuDomain, dev: Device, pasid: int,
                              old: IommuDomain | None) -> None:
    master = master_of(dev)
    if domain.smmu is not master.smmu:
        raise IommuError(errno.EINVAL, f"{domain!r} belongs to another SMMU")
    if domain.stage != ARM_SMMU_DOMAIN_S1:
        raise IommuError(errno.EINVAL, "only stage-1 domains can be attached to a PASID")
    arm_smmu_set_pasid(master, domain, pasid, arm_smmu_make_s1_cd(master, domain.s1_cfg()),
                       old)


def arm_smmu_blocking_set_dev_pasid(domain: IommuDomain, dev: Device, pasid: int,
                                    old: IommuDomain | None) -> None:
    master = master_of(dev)
    arm_smmu_clear_cd(master, pasid)
    if master.ats_enabled:
        arm_smmu_atc_inv_master(master, pasid)
    arm_smmu_remove_master_domain(master, old, pasid)
    # When the last PASID goes, downgrade the STE by re-attaching the RID domain.
    if not arm_smmu_ssids_in_use(master.cd_table):
        sid_domain = _sid_domain(dev)
        if sid_domain is not None and sid_domain.type in (IOMMU_DOMAIN_IDENTITY,
                                                          IOMMU_DOMAIN_BLOCKED):
            sid_domain.ops.attach_dev(sid_domain, dev, sid_domain)


__all__ = [
    "ARM_SMMU_DOMAIN_S1",
    "ARM_SMMU_DOMAIN_S2",
    "ArmSmmuDomain",
    "ArmSmmuStaticDomain",
    "AttachState",
    "MasterDomain",
]

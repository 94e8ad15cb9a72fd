"""The driver against the hardware model, through the IOMMU core: probe and reset, ID
register parsing with errata, the stream/CD tables it builds, paging domains (S1, S2,
nest parent, dirty), identity/blocked, PASIDs, ATS ordering and ATC invalidation, range
invalidation with and without RIL, cache coherency, stall and PRI page faults."""

from __future__ import annotations

import errno

import pytest

from drivers.arm_smmu_v3.domain import ArmSmmuDomain
from drivers.arm_smmu_v3.master import DMA_CAN_STALL, arm_smmu_read_cd, arm_smmu_read_ste
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_FEAT_2_LVL_CDTAB,
    ARM_SMMU_FEAT_2_LVL_STRTAB,
    ARM_SMMU_FEAT_NESTING,
    ARM_SMMU_FEAT_SEV,
    ARM_SMMU_OPT_CMDQ_FORCE_SYNC,
    ARM_SMMU_OPT_MSIPOLL,
    FIELD_GET,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_BYPASS,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_0_CFG_S2_TRANS,
    STRTAB_STE_0_S1FMT_64K_L2,
    STRTAB_STE_0_S1FMT_LINEAR,
    STRTAB_STE_1_EATS_TRANS,
    STRTAB_STE_1_S1DSS,
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1DSS_SSID0,
    STRTAB_STE_1_S2FWB,
)
from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import AttachHandle
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.ats import PCI_ATS_ENABLED, PCI_PRI_ENABLED
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv, expect_errno

from .harness import driver_env, hw_of, master, smmu_of

RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE
IOVA = 0x10_0000


@pytest.fixture
def env() -> DriverEnv:
    e = driver_env()
    yield e
    e.teardown()
    assert e.kernel_pages == 0


def owned(env: DriverEnv, **options: object) -> Device:
    dev = env.add_device(**options)
    env.claim(dev)
    return dev


def mapped(env: DriverEnv, dev: Device, flags: int = 0, npages: int = 4
           ) -> tuple[ArmSmmuDomain, list[int]]:
    dom = env.paging_domain(dev, flags)
    assert isinstance(dom, ArmSmmuDomain)
    _va, pfns = env.user_pages(npages)
    for i, pfn in enumerate(pfns):
        env.core.iommu_map(dom, IOVA + i * 4096, pfn << 12, 4096, RW)
    return dom, pfns


def attach(env: DriverEnv, dev: Device, dom: object) -> None:
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)  # type: ignore[arg-type]


# -- probe ---------------------------------------------------------------------------------
def test_probe_features_and_reset(env: DriverEnv) -> None:
    smmu = smmu_of(env)
    hw = hw_of(env)
    assert smmu.features & ARM_SMMU_FEAT_NESTING
    assert smmu.options & ARM_SMMU_OPT_MSIPOLL
    assert (smmu.ias, smmu.oas, smmu.asid_bits, smmu.vmid_bits, smmu.ssid_bits) == (
        48, 48, 16, 16, 20)
    assert smmu.pgsize_bitmap == 0x1000 | 0x4000 | 0x10000 | 0x20_0000 | 0x200_0000 \
        | 0x2000_0000 | 0x4000_0000
    assert hw.cr0 & 0x1F == 0x1F  # SMMUEN, PRIQEN, EVTQEN, CMDQEN, ATSCHK
    # The reset sequence invalidated everything once.
    for name in ("CFGI_ALL", "TLBI_EL2_ALL", "TLBI_NSNH_ALL"):
        assert hw.cmd.counts[name] == 1
    assert env.iommu.max_pasid_bits == 20


@pytest.mark.parametrize(("options", "sev", "nesting", "force_sync"), [
    ({"implementer": 0x43B, "product": 0x483, "variant": 0, "revision": 2}, False, False,
     False),
    ({"implementer": 0x43B, "product": 0x483, "variant": 2, "revision": 0}, True, True, False),
    ({"implementer": 0x43B, "product": 0x487}, True, False, True),
    ({}, True, True, False),
])
def test_iidr_errata(options: dict[str, int], sev: bool, nesting: bool,
                     force_sync: bool) -> None:
    env = driver_env(**options)
    smmu = smmu_of(env)
    assert bool(smmu.features & ARM_SMMU_FEAT_SEV) == sev
    assert bool(smmu.features & ARM_SMMU_FEAT_NESTING) == nesting
    assert bool(smmu.options & ARM_SMMU_OPT_CMDQ_FORCE_SYNC) == force_sync
    dev = env.add_device()
    if not nesting:
        expect_errno(errno.EOPNOTSUPP, env.paging_domain, dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    env.teardown()


def test_small_sid_space_uses_linear_tables() -> None:
    env = driver_env(sidsize=8, cd2l=False, ssidsize=16)
    smmu = smmu_of(env)
    assert not smmu.features & (ARM_SMMU_FEAT_2_LVL_STRTAB | ARM_SMMU_FEAT_2_LVL_CDTAB)
    dev = owned(env, pasid_bits=16)
    assert master(dev).ssid_bits == 10  # capped at CTXDESC_LINEAR_CDMAX
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    env.platform.mem.write(pfns[0] << 12, b"linear")
    assert env.dma_read(dev, IOVA, 6) == b"linear"
    ste = arm_smmu_read_ste(master(dev))
    assert ste.cfg == STRTAB_STE_0_CFG_S1_TRANS
    assert master(dev).cd_table.s1fmt == STRTAB_STE_0_S1FMT_LINEAR
    env.teardown()
    assert env.kernel_pages == 0


def test_sid_out_of_range_erange() -> None:
    env = driver_env(sidsize=8)
    expect_errno(errno.ERANGE, env.add_device, stream_id=0x1FF)
    env.teardown()


def test_probe_refuses_bad_hardware() -> None:
    # A command queue of 64 entries or fewer cannot hold a batch plus its sync.
    with pytest.raises(IommuError) as ei:
        driver_env(cmdqs=6)
    assert ei.value.errno == errno.ENXIO


def test_leak_check_after_teardown() -> None:
    env = driver_env()
    base = env.kernel_pages
    assert base > 0  # queues, stream table
    dev = owned(env)
    dom, _ = mapped(env, dev, IOMMU_HWPT_ALLOC_PASID)
    attach(env, dev, dom)
    env.core.iommu_attach_device_pasid(dom, dev, 0x801)
    env.teardown()
    assert env.kernel_pages == 0


# -- domains -------------------------------------------------------------------------------
def test_default_domain_is_s1_dma(env: DriverEnv) -> None:
    dev = env.add_device()
    dom = dev.iommu_group.domain
    assert isinstance(dom, ArmSmmuDomain) and dom.stage == 1 and dom.asid >= 1
    ste = arm_smmu_read_ste(master(dev))
    assert ste.cfg == STRTAB_STE_0_CFG_S1_TRANS
    assert FIELD_GET(STRTAB_STE_1_S1DSS, ste[1]) == STRTAB_STE_1_S1DSS_SSID0
    cd = arm_smmu_read_cd(master(dev), 0)
    assert cd is not None and cd.valid and cd.asid == dom.asid


def test_alloc_flags_and_errnos() -> None:
    env = driver_env()
    dev = env.add_device()
    np = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert isinstance(np, ArmSmmuDomain) and np.stage == 2 and np.nest_parent
    assert np.pgtbl.fmt.s2fwb  # type: ignore[attr-defined]
    d = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID)
    assert isinstance(d, ArmSmmuDomain) and d.dirty and d.dirty_ops
    for bad in (IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID, 1 << 2, 1 << 9):
        expect_errno(errno.EOPNOTSUPP, env.paging_domain, dev, bad)
    env.teardown()
    env = driver_env(httu=1)
    dev = env.add_device()
    expect_errno(errno.EOPNOTSUPP, env.paging_domain, dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert not env.core.device_iommu_capable(dev, IommuCap.DIRTY_TRACKING)
    env.teardown()
    env = driver_env(s1p=False)
    dev = env.add_device()
    dom = dev.iommu_group.domain
    assert isinstance(dom, ArmSmmuDomain) and dom.stage == 2
    expect_errno(errno.EOPNOTSUPP, env.paging_domain, dev, IOMMU_HWPT_ALLOC_PASID)
    env.teardown()


def test_asid_vmid_allocation(env: DriverEnv) -> None:
    dev = env.add_device()
    a = [env.paging_domain(dev) for _ in range(3)]
    asids = [x.asid for x in a]  # type: ignore[attr-defined]
    assert len(set(asids)) == 3 and 0 not in asids
    v = [env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT) for _ in range(2)]
    assert [x.vmid for x in v] == [1, 2]  # type: ignore[attr-defined]
    env.core.iommu_domain_free(v[0])
    again = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert again.vmid == 1  # type: ignore[attr-defined]  # lowest free VMID


def test_s2_nest_parent_ste_has_s2fwb_and_fwb_ptes(env: DriverEnv) -> None:
    dev = owned(env, ats=False)
    dom, pfns = mapped(env, dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    attach(env, dev, dom)
    ste = arm_smmu_read_ste(master(dev))
    assert ste.cfg == STRTAB_STE_0_CFG_S2_TRANS and ste[1] & STRTAB_STE_1_S2FWB
    leaf = next(dom.pgtbl.iter_leaves(IOVA, IOVA))
    assert (leaf.desc >> 2) & 0xF == 0x6  # MemAttr: forced write-back
    env.platform.mem.write(pfns[1] << 12, b"s2")
    assert env.dma_read(dev, IOVA + 4096, 2) == b"s2"


def test_unmap_is_invisible_until_iotlb_sync(env: DriverEnv) -> None:
    dev = owned(env, ats=False)
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    env.platform.mem.write(pfns[0] << 12, b"old")
    assert env.dma_read(dev, IOVA, 3) == b"old"
    gather = IotlbGather()
    assert env.core.iommu_unmap_fast(dom, IOVA, 4096, gather) == 4096
    assert env.dma_read(dev, IOVA, 3) == b"old"  # TLB still holds it
    env.core.iommu_iotlb_sync(dom, gather)
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 3)
    assert ei.value.reason == "F_TRANSLATION"
    assert smmu_of(env).events[-1][0] & 0xFF == 0x10


@pytest.mark.parametrize("ril", [True, False])
def test_range_invalidation_with_and_without_ril(ril: bool) -> None:
    env = driver_env(ril=ril)
    dev = owned(env, ats=False)
    dom, _ = mapped(env, dev, npages=64)
    attach(env, dev, dom)
    for i in range(64):
        env.dma_read(dev, IOVA + i * 4096, 1)
    hw = hw_of(env)
    before = hw.cmd.counts.get("TLBI_NH_VA", 0)
    env.core.iommu_unmap(dom, IOVA, 33 * 4096)
    issued = hw.cmd.counts.get("TLBI_NH_VA", 0) - before
    # With RIL: 33 pages = 1 << 0 + 1 << 5 -> two commands; without: one per page.
    assert issued == (2 if ril else 33)
    for i in range(64):
        if i < 33:
            with pytest.raises(DmaFault):
                env.dma_read(dev, IOVA + i * 4096, 1)
        else:
            env.dma_read(dev, IOVA + i * 4096, 1)
    env.teardown()


def test_identity_and_blocked(env: DriverEnv) -> None:
    dev = owned(env, ats=False)
    assert arm_smmu_read_ste(master(dev)).cfg == STRTAB_STE_0_CFG_ABORT
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, 0x1000, 1)
    assert ei.value.reason == "ABORT"
    ops = env.ops
    assert ops.identity_domain is not None
    attach(env, dev, ops.identity_domain)
    assert arm_smmu_read_ste(master(dev)).cfg == STRTAB_STE_0_CFG_BYPASS
    _va, pfns = env.user_pages(1)
    env.platform.mem.write(pfns[0] << 12, b"1:1")
    assert env.dma_read(dev, pfns[0] << 12, 3) == b"1:1"


# -- PASID ---------------------------------------------------------------------------------
def test_pasid_attach_two_level_cd_and_downgrade(env: DriverEnv) -> None:
    dev = owned(env, ats=False)
    m = master(dev)
    dom, pfns = mapped(env, dev, IOMMU_HWPT_ALLOC_PASID)
    env.platform.mem.write(pfns[2] << 12, b"pasid")
    # RID blocked: the STE becomes a CD-table STE with S1DSS=TERMINATE.
    env.core.iommu_attach_device_pasid(dom, dev, 0x12345)
    ste = arm_smmu_read_ste(m)
    assert ste.cfg == STRTAB_STE_0_CFG_S1_TRANS and m.cd_table.s1fmt == STRTAB_STE_0_S1FMT_64K_L2
    assert FIELD_GET(STRTAB_STE_1_S1DSS, ste[1]) == 0  # TERMINATE
    assert env.dma_read(dev, IOVA + 2 * 4096, 5, pasid=0x12345) == b"pasid"
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 1)
    assert ei.value.reason == "F_STREAM_DISABLED"
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 1, pasid=7)
    assert ei.value.reason == "C_BAD_CD"  # leaf 0 exists (CD 0 was used), CD 7 is invalid
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 1, pasid=0x40000)
    assert ei.value.reason == "C_BAD_SUBSTREAMID"  # no leaf table for L1 index 256
    # The RID cannot take an S2 domain while PASIDs are in use.
    s2 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    expect_errno(errno.EBUSY, attach, env, dev, s2)
    # Identity on the RID keeps the CD table, with S1DSS=BYPASS.
    attach(env, dev, env.ops.identity_domain)
    assert FIELD_GET(STRTAB_STE_1_S1DSS, arm_smmu_read_ste(m)[1]) == STRTAB_STE_1_S1DSS_BYPASS
    env.core.iommu_detach_device_pasid(dom, dev, 0x12345)
    assert m.cd_table.used_ssids == 0
    assert arm_smmu_read_ste(m).cfg == STRTAB_STE_0_CFG_BYPASS  # downgraded


def test_pasid_needs_s1_domain(env: DriverEnv) -> None:
    dev = owned(env)
    s2 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    expect_errno(errno.EINVAL, env.core.iommu_attach_device_pasid, s2, dev, 5)


# -- ATS -----------------------------------------------------------------------------------
def test_ats_ordering_and_atc_invalidation(env: DriverEnv) -> None:
    dev = owned(env)
    m = master(dev)
    assert not dev.props.get(PCI_ATS_ENABLED)  # blocked: ATS off
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    assert m.ats_enabled and dev.props[PCI_ATS_ENABLED] and dom.nr_ats_masters == 1
    assert FIELD_GET(0x3 << 28, arm_smmu_read_ste(m)[1]) == STRTAB_STE_1_EATS_TRANS
    env.platform.mem.write(pfns[0] << 12, b"ats")
    assert env.dma_read(dev, IOVA, 3) == b"ats"
    hw = hw_of(env)
    assert hw.atc.count(m.streams[0]) == 1  # the endpoint cached the translation
    env.core.iommu_unmap(dom, IOVA, 4096)
    assert hw.atc.count(m.streams[0]) == 0  # the unmap sent ATC_INV
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 1)
    assert ei.value.detail.get("ats")
    # Back to blocked: ATS goes off in the device before the STE turns abort.
    attach(env, dev, env.ops.blocked_domain)
    assert not m.ats_enabled and not dev.props[PCI_ATS_ENABLED] and dom.nr_ats_masters == 0


def test_stale_atc_without_atc_inv(env: DriverEnv) -> None:
    """A driver that invalidated only the TLB leaves the endpoint's ATC stale."""
    dev = owned(env)
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    env.platform.mem.write(pfns[0] << 12, b"A")
    assert env.dma_read(dev, IOVA, 1) == b"A"
    gather = IotlbGather()
    env.core.iommu_unmap_fast(dom, IOVA, 4096, gather)
    dom.pgtbl.release_freelist(gather)
    from drivers.arm_smmu_v3.domain import arm_smmu_tlb_inv_asid

    arm_smmu_tlb_inv_asid(dom.smmu, dom.asid)  # TLB only, no ATC_INV
    assert env.dma_read(dev, IOVA, 1) == b"A"  # served from the ATC


def test_ats_disable_ends_the_stale_atc_hit(env: DriverEnv) -> None:
    """The DMA hit the model published from an ATC entry goes when the endpoint clears
    ATS Enable: the next access is untranslated and finds the TLB invalidated."""
    from drivers.arm_smmu_v3.domain import arm_smmu_tlb_inv_asid
    from iommu_core.platform.ats import pci_disable_ats

    dev = owned(env)
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    env.platform.mem.write(pfns[0] << 12, b"A")
    assert env.dma_read(dev, IOVA, 1) == b"A"
    assert hw_of(env).dma_hits[(dev, None)]  # published: the next read is a dict hit
    gather = IotlbGather()
    env.core.iommu_unmap_fast(dom, IOVA, 4096, gather)
    dom.pgtbl.release_freelist(gather)
    arm_smmu_tlb_inv_asid(dom.smmu, dom.asid)
    assert env.dma_read(dev, IOVA, 1) == b"A"  # still the stale ATC
    pci_disable_ats(dev)
    assert (dev, None) not in hw_of(env).dma_hits
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 1)
    assert not ei.value.detail.get("ats")


def test_no_ats_when_root_complex_lacks_it(env: DriverEnv) -> None:
    dev = owned(env, rc_ats=False)
    dom, _ = mapped(env, dev)
    attach(env, dev, dom)
    assert not master(dev).ats_enabled
    assert not env.core.device_iommu_capable(dev, IommuCap.PCI_ATS_SUPPORTED)


# -- coherency, dirty tracking -------------------------------------------------------------
def test_enforce_cache_coherency_canwbs(env: DriverEnv) -> None:
    good = owned(env)
    bad = owned(env, canwbs=False)
    assert env.core.device_iommu_capable(good, IommuCap.ENFORCE_CACHE_COHERENCY)
    assert not env.core.device_iommu_capable(bad, IommuCap.ENFORCE_CACHE_COHERENCY)
    dom, _ = mapped(env, good)
    attach(env, good, dom)
    assert dom.ops.enforce_cache_coherency(dom)
    expect_errno(errno.EINVAL, attach, env, bad, dom)
    dom2, _ = mapped(env, bad)
    attach(env, bad, dom2)
    assert not dom2.ops.enforce_cache_coherency(dom2)


def test_dirty_tracking_httu(env: DriverEnv) -> None:
    dev = owned(env, ats=False)
    dom, _ = mapped(env, dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    attach(env, dev, dom)
    seen: list[int] = []

    class Rec:
        has_bitmap = True  # a real bitmap, not the clear-only pass

        def record(self, iova: int, length: int) -> None:
            seen.append(iova)

    dom.ops.set_dirty_tracking(dom, True)
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, Rec())  # start clean
    seen.clear()
    env.dma_read(dev, IOVA, 4)
    env.dma_write(dev, IOVA + 4096, b"d")
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, Rec())
    assert seen == [IOVA + 4096]
    # Cleaning needs a TLB flush, or a cached writable entry hides later writes.
    env.core.iommu_flush_iotlb_all(dom)
    seen.clear()
    env.dma_write(dev, IOVA + 4096, b"e")
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, Rec())
    assert seen == [IOVA + 4096]


# -- I/O page faults -----------------------------------------------------------------------
def _fault_domain(env: DriverEnv, dev: Device) -> tuple[ArmSmmuDomain, list[IopfGroup]]:
    dom, _ = mapped(env, dev, npages=1)
    groups: list[IopfGroup] = []
    dom.iopf_handler = groups.append
    attach(env, dev, dom)
    dev.iommu_group.pasid_array[0] = AttachHandle(dom)
    return dom, groups


def test_pri_page_request_and_response(env: DriverEnv) -> None:
    dev = owned(env)
    dom, groups = _fault_domain(env, dev)
    assert dev.props[PCI_PRI_ENABLED] and master(dev).pri_enabled
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA + 0x10_0000, 4)
    assert ei.value.page_request
    hw = hw_of(env)
    assert len(groups) == 1 and hw.prg_outstanding
    req = groups[0].last
    assert req.addr == IOVA + 0x10_0000 and req.last
    _va, pfns = env.user_pages(1)
    env.core.iommu_map(dom, IOVA + 0x10_0000, pfns[0] << 12, 4096, RW)
    env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
    assert not hw.prg_outstanding and hw.prg_responses[-1][3] == 2  # PRI_RESP SUCC
    env.platform.mem.write(pfns[0] << 12, b"paged")
    assert env.dma_read(dev, IOVA + 0x10_0000, 5) == b"paged"  # the retry works
    attach(env, dev, env.ops.blocked_domain)
    assert not dev.props[PCI_PRI_ENABLED]


def test_unexpected_pri_is_denied(env: DriverEnv) -> None:
    dev = owned(env)
    dom, _ = mapped(env, dev)
    attach(env, dev, dom)
    from iommu_core.platform.ats import pci_enable_pri

    pci_enable_pri(dev)  # the device asks without the driver having set up IOPF
    with pytest.raises(DmaFault):
        env.dma_read(dev, IOVA + 0x20_0000, 1)
    hw = hw_of(env)
    assert hw.prg_responses[-1][3] == 0  # DENY
    assert any("unexpected PRI" in line for line in smmu_of(env).log)


def test_stall_iopf_resume(env: DriverEnv) -> None:
    from iommu_core.platform.bus import Device as Dev

    plat = Dev(name="stall0", bus="platform", stream_ids=(0x40,), pasid_bits=0, ats=False,
               pri=False, iommu_name=env.UNIT, props={DMA_CAN_STALL: True})
    env.core.add_device(plat)
    env.claim(plat)
    m = master(plat)
    assert m.stall_enabled
    dom, groups = _fault_domain(env, plat)
    cd = arm_smmu_read_cd(m, 0)
    assert cd is not None and cd[0] & (1 << 44)  # CD.S
    with pytest.raises(DmaFault) as ei:
        env.dma_write(plat, IOVA + 0x30_0000, b"x")
    assert ei.value.page_request and ei.value.detail["stag"] in hw_of(env).stalled
    assert len(groups) == 1 and groups[0].last.grpid == ei.value.detail["stag"]
    env.core.iopf_group_response(groups[0], PageResponseCode.INVALID)
    assert hw_of(env).resumed[-1][2] == 2  # RESUME with ABORT


# -- command queue completion and errors, tracing ------------------------------------------
@pytest.mark.parametrize("msi", [True, False])
def test_cmd_sync_completion_msi_or_cons(msi: bool) -> None:
    env = driver_env(msi=msi)
    smmu = smmu_of(env)
    assert bool(smmu.options & ARM_SMMU_OPT_MSIPOLL) == msi
    dev = owned(env)
    dom, pfns = mapped(env, dev)
    attach(env, dev, dom)
    assert smmu.cmdq.syncs > 3
    env.teardown()


def test_illegal_command_is_skipped_by_the_gerror_handler(env: DriverEnv) -> None:
    smmu = smmu_of(env)
    hw = hw_of(env)
    # An opcode the SMMU does not know: CONS.ERR=ILL, GERROR, the handler replaces it
    # with a CMD_SYNC and acknowledges; the batch's own CMD_SYNC then completes.
    smmu.cmdq.issue_cmdlist([(0x7F, 0), (0x10, 0)], True)
    assert smmu.cmdq.errors and smmu.cmdq.errors[-1][0] == 1
    assert "Illegal command" in smmu.cmdq.errors[-1][1]
    assert hw.cmd.counts["TLBI_NH_ALL"] >= 1  # the queue went on after the bad one
    assert any("global error" in line for line in smmu.log)


def test_tracing_shows_driver_and_hardware(env: DriverEnv) -> None:
    tracer = env.platform.tracer
    tracer.start()
    dev = owned(env, ats=False)
    dom, _ = mapped(env, dev)
    attach(env, dev, dom)
    env.dma_read(dev, IOVA, 1)
    tracer.stop()
    text = tracer.render()
    assert "[driver] write STE" in text and "[driver] cmdq CFGI_STE" in text
    assert "CMD_CFGI_STE" in text and "walk S1" in text and "write CMDQ_PROD" in text


def test_device_without_stream_ids_is_not_a_python_error(env: DriverEnv) -> None:
    from iommu_core.platform.bus import Device as Dev

    d = Dev(name="nosid", bus="platform", rid=0x77, stream_ids=(), iommu_name=env.UNIT,
            pasid_bits=0)
    env.core.add_device(d)
    assert master(d).streams == (0x77,)
    with pytest.raises(DmaFault):
        env.dma_read(d, 0x1234_0000, 1)

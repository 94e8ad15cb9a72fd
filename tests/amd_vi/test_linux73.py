"""The AMD-Vi paths iommufd reaches, as Linux 7.3 has them (issue #20): one test per
difference the audit fixed. The deliberate departures are listed in docs/amd_vi.rst."""

from __future__ import annotations

import pytest

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_COMPLETE_PPR,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
    CMD_INV_IOTLB_PAGES,
    CMD_INV_IRT,
    IommuCmd,
)
from drivers.amd_vi.iommu import dev_iommu_priv_get, read_dte
from iommu_core.device import IommuCap
from iommu_core.domain import IOMMU_HWPT_ALLOC_PASID
from iommu_core.group import AttachHandle
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.testing.env import DriverEnv

from .conftest import Nesting, gdte_for, make_env, mapped_device


def _cmds_after(env: DriverEnv, n: int) -> list[IommuCmd]:
    return list(env.hw.cmd_log)[n:]  # type: ignore[attr-defined]


def _ops(cmds: list[IommuCmd]) -> list[int]:
    return [c.opcode for c in cmds]


def test_set_dte_entry_flushes_the_old_domid_after_the_dte(env: DriverEnv) -> None:
    """set_dte_entry(): amd_iommu_update_dte() (the 256-bit write with its INV_DEV_ENTRY,
    then device_flush_dte and a wait), and only then the DomainID the old DTE held."""
    dev = env.add_device(pasid_bits=0)
    env.claim(dev)
    n = Nesting(env, dev, npages=4)
    nd = n.alloc_nested(gdte_for(0x1000, 0x21))
    env.core.iommu_group_replace_domain(dev.iommu_group, nd)
    hdom = nd.hdom_id
    assert read_dte(env.iommu.priv, dev.rid).domid == hdom  # type: ignore[attr-defined]
    start = len(env.hw.cmd_log)  # type: ignore[attr-defined]
    env.core.iommu_group_replace_domain(dev.iommu_group, n.parent)
    cmds = _cmds_after(env, start)
    ops = _ops(cmds)
    old = [i for i, c in enumerate(cmds) if c.opcode == CMD_INV_IOMMU_PAGES
           and c.data[1] & 0xFFFF == hdom]
    assert old, "the old DomainID is flushed"
    dte_flushes = [i for i, op in enumerate(ops) if op == CMD_INV_DEV_ENTRY]
    assert len(dte_flushes) >= 2 and max(dte_flushes) < old[0]
    flush = cmds[old[0]]
    assert flush.data[2] & CMD_INV_IOMMU_PAGES_PDE_MASK and ops[old[0] + 1] == CMD_COMPL_WAIT
    n.teardown()


def _pages_flags(env: DriverEnv, n: int) -> list[int]:
    return [c.data[2] & 7 for c in _cmds_after(env, n) if c.opcode == CMD_INV_IOMMU_PAGES]


def test_pde_bit_only_when_tables_are_freed(env: DriverEnv) -> None:
    """amd_iommu_iotlb_sync(): INVALIDATE_IOMMU_PAGES carries PDE only if the unmap
    freed page-table pages (flush-all always does)."""
    dev, dom = mapped_device(env, 0x10_0000)
    start = len(env.hw.cmd_log)  # type: ignore[attr-defined]
    env.core.iommu_unmap(dom, 0x10_0000, PAGE_SIZE)  # the leaf table keeps a page
    assert _pages_flags(env, start) == [0]  # S=0 (one page), PDE=0, GN=0
    start = len(env.hw.cmd_log)  # type: ignore[attr-defined]
    env.core.iommu_unmap(dom, 0x10_1000, PAGE_SIZE)  # the last page: tables freed
    assert all(f & CMD_INV_IOMMU_PAGES_PDE_MASK for f in _pages_flags(env, start))
    start = len(env.hw.cmd_log)  # type: ignore[attr-defined]
    dom.ops.flush_iotlb_all(dom)
    assert _pages_flags(env, start) == [CMD_INV_IOMMU_PAGES_PDE_MASK | 1]


def _ppr_roundtrip(env: DriverEnv, dev: Device, rid_flags: int | None) -> bool:
    """A page request at PASID 5 answered SUCCESS; the GN bit of COMPLETE_PPR."""
    env.claim(dev)
    if rid_flags is not None:
        rid = env.paging_domain(dev, rid_flags)
        env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    else:
        env.core.iommu_group_replace_domain(dev.iommu_group, dev.iommu.ops.identity_domain)
    pd = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    groups: list[IopfGroup] = []
    pd.iopf_handler = groups.append
    env.core.iommu_attach_device_pasid(pd, dev, 5, AttachHandle(pd))
    with pytest.raises(DmaFault) as f:
        env.dma_read(dev, 0x7000, 4, pasid=5)
    assert f.value.page_request and len(groups) == 1
    env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
    resp = env.hw.ppr_responses[-1]  # type: ignore[attr-defined]
    env.core.iommu_detach_device_pasid(pd, dev, 5)
    return bool(resp.gn)


def test_complete_ppr_gn_follows_the_rid_domain(env: DriverEnv) -> None:
    """amd_iommu_complete_ppr(): GN = pdom_is_v2_pgtbl_mode(dev_data->domain), whatever
    the request carried: set under a v2 RID domain, clear under the identity domain."""
    assert _ppr_roundtrip(env, env.add_device(), IOMMU_HWPT_ALLOC_PASID)
    assert not _ppr_roundtrip(env, env.add_device(), None)


def test_no_ats_without_gt_and_ppr() -> None:
    """iommu_init_device() reads the device's ATS/PRI/PASID capabilities only when the
    unit has GT and PPR: without them ATS is never enabled (no DTE.IOTLB, no ATS cap)."""
    for ppr, ats in ((True, True), (False, False)):
        env = make_env(ppr=ppr)
        try:
            dev = env.add_device(pasid_bits=0)
            env.claim(dev)
            dom = env.paging_domain(dev)
            env.core.iommu_group_replace_domain(dev.iommu_group, dom)
            assert read_dte(env.iommu.priv, dev.rid).iotlb is ats  # type: ignore[attr-defined]
            assert dev_iommu_priv_get(dev).ats_enabled is ats
            assert env.ops.capable(dev, IommuCap.PCI_ATS_SUPPORTED) is ats
        finally:
            env.teardown()


def test_detach_answers_page_requests_before_the_dte_goes(env: DriverEnv) -> None:
    """detach_device(): the device leaves the IOPF queue (outstanding groups answered)
    before its capabilities go and the blocked DTE is written."""
    dev = env.add_device()
    env.claim(dev)
    rid = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    rid.iopf_handler = lambda g: None  # never answers
    env.core.iommu_attach_group_handle(rid, dev.iommu_group, AttachHandle(rid))
    pd = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    pd.iopf_handler = lambda g: None
    env.core.iommu_attach_device_pasid(pd, dev, 5, AttachHandle(pd))
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0x7000, 4, pasid=5)
    env.core.iommu_detach_device_pasid(pd, dev, 5)
    start = len(env.hw.cmd_log)  # type: ignore[attr-defined]
    env.core.iommu_detach_group(rid, dev.iommu_group)
    ops = _ops(_cmds_after(env, start))
    assert CMD_COMPLETE_PPR in ops and CMD_INV_DEV_ENTRY in ops
    assert ops.index(CMD_COMPLETE_PPR) < ops.index(CMD_INV_DEV_ENTRY)


def test_flush_all_caches_without_ia() -> None:
    """amd_iommu_flush_all_caches() without EFR.IA: every DTE, every interrupt remapping
    table, every DomainID's pages with PDE, each batch followed by a completion wait."""
    env = make_env(ia=False)
    try:
        log = list(env.hw.cmd_log)  # type: ignore[attr-defined]
        tail = log[-3:]
        assert _ops(tail) == [CMD_INV_IOMMU_PAGES, CMD_INV_IOMMU_PAGES, CMD_COMPL_WAIT]
        assert all(c.data[2] & CMD_INV_IOMMU_PAGES_PDE_MASK for c in tail[:2])
        assert not tail[0].data[2] & CMD_INV_IOMMU_PAGES_GN_MASK
        assert env.hw.stats["INVALIDATE_INTERRUPT_TABLE"] >= 1 << 16  # type: ignore[attr-defined]
        assert CMD_INV_IRT not in _ops(tail) and CMD_INV_IOTLB_PAGES not in _ops(tail)
    finally:
        env.teardown()

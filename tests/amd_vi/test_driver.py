"""The driver through the IOMMU core: DTE write ordering, allocation flags and errnos,
dirty tracking, GCR3/PASID attach, PPR to the IOPF core and back, hw_info."""

from __future__ import annotations

import errno
import struct

import pytest

from drivers.amd_vi.amd_iommu_types import FEATURE_GT, GCR3_VALID, DevTableEntry
from drivers.amd_vi.iommu import dev_iommu_priv_get, get_gcr3_pte, read_dte
from iommu_core.domain import (
    IOMMU_DOMAIN_IDENTITY,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
)
from iommu_core.group import AttachHandle
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.testing.env import DriverEnv, expect_errno
from iommufd.uapi import IOMMU_VIOMMU_TYPE_AMD

from .conftest import RW, make_env


def _dte(env: DriverEnv, dev: object) -> DevTableEntry:
    return read_dte(env.iommu.priv, dev.rid)  # type: ignore[attr-defined]


def test_default_domains(env: DriverEnv) -> None:
    pasid_dev = env.add_device()
    plain = env.add_device(pasid_bits=0, ats=False)
    assert pasid_dev.iommu_group.default_domain.type == IOMMU_DOMAIN_IDENTITY
    d = _dte(env, pasid_dev)
    assert d.gv and not d.giov and d.mode == 0, "identity + PASID: GCR3 table, no GIoV"
    assert plain.iommu_group.default_domain.type != IOMMU_DOMAIN_IDENTITY
    p = _dte(env, plain)
    assert p.tv and p.ir and p.iw and not p.gv and p.mode == 4 and not p.iotlb
    assert p.domid == plain.iommu_group.default_domain.id  # type: ignore[attr-defined]


def test_update_dte256_order(env: DriverEnv) -> None:
    dev = env.add_device()
    dd = dev_iommu_priv_get(dev)
    log = dd.dte_write_log
    setting = ["upper", "lower", "flush"]  # V/GV written last
    clearing = ["lower", "upper", "flush"]  # V/GV written first
    log.clear()
    env.claim(dev)  # identity + GCR3 (GV=1) -> cleared (detach), then the blocked DTE
    assert log == clearing + setting
    v1 = env.paging_domain(dev)
    log.clear()
    env.core.iommu_group_replace_domain(dev.iommu_group, v1)
    assert log == setting  # from the blocked DTE (GV=0): nothing to detach
    v2 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_group_replace_domain(dev.iommu_group, v2)
    d = _dte(env, dev)
    assert d.gv and d.giov and d.domid == dd.gcr3_info.domid
    log.clear()
    env.core.iommu_group_replace_domain(dev.iommu_group, v1)
    assert log == clearing + setting  # GV=1 -> cleared first, then v1
    assert env.hw.stats["INVALIDATE_DEVTAB_ENTRY"] >= 8


@pytest.mark.parametrize("flags,options,err", [
    (1 << 30, {}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_ALLOC_DIRTY_TRACKING, {}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_ALLOC_NEST_PARENT, {}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_NEST_PARENT, {"gcr3trpmode": False}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_NEST_PARENT, {"giosup": False}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_DIRTY_TRACKING, {"hdsup": False}, errno.EOPNOTSUPP),
    (IOMMU_HWPT_ALLOC_PASID, {"ppr": False}, errno.EOPNOTSUPP),
])
def test_alloc_flags_errnos(flags: int, options: dict[str, object], err: int) -> None:
    env = make_env(**options)
    try:
        dev = env.add_device()
        expect_errno(err, env.paging_domain, dev, flags)
    finally:
        env.teardown()
    assert env.kernel_pages == 0


def test_hatdis_falls_back_to_v2() -> None:
    env = make_env(hats=3)
    try:
        dev = env.add_device()
        dom = env.paging_domain(dev)
        assert dom.pd_mode == "v2"  # type: ignore[attr-defined]
    finally:
        env.teardown()


def test_dirty_tracking_sets_had(env: DriverEnv) -> None:
    dev = env.add_device(pasid_bits=0)
    env.claim(dev)
    dom = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    assert _dte(env, dev).had == 0
    dom.ops.set_dirty_tracking(dom, True)
    assert _dte(env, dev).had == 3
    dom.ops.set_dirty_tracking(dom, False)
    assert _dte(env, dev).had == 0

    class Rec:
        has_bitmap = True  # a real bitmap, not the clear-only pass

        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def record(self, iova: int, n: int) -> None:
            self.seen.append((iova, n))

    # 7.3's generic read_and_clear_dirty reads with tracking off too (nothing is dirty)
    rec = Rec()
    dom.ops.read_and_clear_dirty(dom, 0, PAGE_SIZE, 0, rec)
    assert rec.seen == []


def test_pasid_attach_writes_gcr3(env: DriverEnv) -> None:
    dev = env.add_device()
    env.claim(dev)
    rid = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    pd = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    env.core.iommu_attach_device_pasid(pd, dev, 600)
    dd = dev_iommu_priv_get(dev)
    pte = get_gcr3_pte(dd, 600, False)
    assert pte is not None
    assert env.platform.mem.read_u64(pte) == pd.iop.root | GCR3_VALID  # type: ignore[attr-defined]
    env.core.iommu_detach_device_pasid(pd, dev, 600)
    assert env.platform.mem.read_u64(pte) == 0
    # A v1 RID domain keeps no GCR3 table: PASID attach is refused.
    v1 = env.paging_domain(dev)
    env.core.iommu_group_replace_domain(dev.iommu_group, v1)
    expect_errno(errno.EINVAL, env.core.iommu_attach_device_pasid, pd, dev, 7)


def test_ppr_to_iopf_and_response(env: DriverEnv) -> None:
    dev = env.add_device()
    env.claim(dev)
    rid = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    pd = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    groups: list[IopfGroup] = []
    pd.iopf_handler = groups.append
    env.core.iommu_attach_device_pasid(pd, dev, 5, AttachHandle(pd))
    assert _dte(env, dev).ppr, "PRI-capable device on a GCR3 DTE gets PPR"
    with pytest.raises(DmaFault) as f:
        env.dma_write(dev, 0x7000, b"x", pasid=5)
    assert f.value.page_request
    assert len(groups) == 1
    req = groups[0].last
    assert (req.pasid, req.addr, req.last) == (5, 0x7000, True)
    va, pfns = env.user_pages(1)
    env.core.iommu_map(pd, 0x7000, pfns[0] * PAGE_SIZE, PAGE_SIZE, RW)
    env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
    resp = env.hw.ppr_responses[-1]
    assert (resp.devid, resp.pasid, resp.tag, resp.status, resp.gn) == (
        dev.rid, 5, req.grpid, 0, True)
    env.dma_write(dev, 0x7000, b"x", pasid=5)  # the retry succeeds
    assert env.mm.read(va, 1) == b"x"
    env.core.iommu_detach_device_pasid(pd, dev, 5)


def test_ppr_without_pasid_is_refused(env: DriverEnv) -> None:
    """A DMA without PASID never becomes a page request (Linux refuses PASID 0)."""
    dev = env.add_device()
    env.claim(dev)
    rid = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    with pytest.raises(DmaFault) as f:
        env.dma_read(dev, 0x7000, 4)
    assert not f.value.page_request and f.value.reason == "IO_PAGE_FAULT"
    assert env.iommu.priv.events[-1].name == "IO_PAGE_FAULT"


def test_hw_info_and_viommu_size(env: DriverEnv) -> None:
    dev = env.add_device()
    blob, typ = env.ops.hw_info(dev, 0)
    efr, efr2 = struct.unpack("<QQ", blob)
    assert typ == 4 and efr & FEATURE_GT and efr == env.hw.features.efr()
    assert efr2 == env.hw.features.efr2()
    expect_errno(errno.EOPNOTSUPP, env.ops.hw_info, dev, 1)
    assert env.ops.get_viommu_size(dev, IOMMU_VIOMMU_TYPE_AMD) > 0
    assert env.ops.get_viommu_size(dev, 1) == 0


def test_unmap_flushes_hdomids_of_viommus(env: DriverEnv) -> None:
    """A nest parent's unmap reaches its own DomainID and every hDomID (B8)."""
    from .conftest import Nesting, gdte_for
    dev = env.add_device()
    env.claim(dev)
    n = Nesting(env, dev, npages=4)
    nd = n.alloc_nested(gdte_for(0x1000, 0x21))
    before = len(env.hw.cmd_log)
    env.core.iommu_unmap(n.parent, 0, PAGE_SIZE)
    domids = {c.data[1] & 0xFFFF for c in list(env.hw.cmd_log)[before:] if c.opcode == 3}
    # No device sits on the parent itself, so only the hDomID needs the flush.
    assert nd.hdom_id in domids
    n.teardown()


def test_tracing_shows_the_hardware_layer(env: DriverEnv) -> None:
    from .conftest import Nesting, gdte_for
    env.platform.tracer.start()
    dev = env.add_device()
    env.claim(dev)
    n = Nesting(env, dev, npages=8)
    pt = n.guest_pt()
    pt.map(0x1000, n.ram.alloc_page(), PAGE_SIZE, RW)
    nd = n.alloc_nested(gdte_for(n.gcr3_table({0: pt.root}), 7))
    env.core.iommu_group_replace_domain(dev.iommu_group, nd)
    env.dma_read(dev, 0x1000, 4)
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0x9000, 4)
    env.platform.tracer.stop()
    text = env.platform.tracer.render()
    for word in ("mmio_write", "INVALIDATE_DEVTAB_ENTRY", "COMPLETION_WAIT", "dte_fetch",
                 "walk_v2", "walk_v1", "event_log", "update_dte256", "iommu_print_event"):
        assert word in text, word
    n.teardown()

"""Nested translation through the AMD vIOMMU at the core level (the ioctl-level version
lives in test_machine.py): gDTE validation, gDomID -> hDomID sharing, the nested DTE, DMA
through guest GCR3/v2 tables in guest RAM, staleness until the prototype invalidation,
S2 changes visible at once, and isolation as a property."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.amd_vi.amd_iommu_types import CMD_INV_IOMMU_PAGES_GN_MASK as GN
from drivers.amd_vi.amd_iommu_types import DTE_FLAG_GV, DTE_FLAG_V, DevTableEntry
from drivers.amd_vi.iommu import build_inv_iommu_pages, dev_iommu_priv_get, read_dte
from drivers.amd_vi.uapi import IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE
from iommu_core.domain import IOMMU_DOMAIN_NESTED
from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import UserDataArray
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.uaccess import UserMemory
from iommu_core.testing.env import DriverEnv, expect_errno

from .conftest import RW, Nesting, gdte_for, make_env

GVA = 0x40_0000


def _setup(env: DriverEnv) -> tuple[Any, Nesting]:
    dev = env.add_device()
    env.claim(dev)
    return dev, Nesting(env, dev)


def _guest(n: Nesting, gdomid: int = 0x33) -> tuple[Any, int, int]:
    """Guest v2 table mapping GVA -> a data page; GCR3[0] -> it. Returns (table, data
    GPA, gcr3 GPA)."""
    pt = n.guest_pt()
    data = n.ram.alloc_page()
    pt.map(GVA, data, PAGE_SIZE, RW)
    gcr3 = n.gcr3_table({0: pt.root})
    return pt, data, gcr3


def _invalidate(n: Nesting, cmds: list[tuple[int, int, int, int]]) -> UserDataArray:
    va = n.env.mm.mmap(PAGE_SIZE)
    raw = b"".join(w.to_bytes(4, "little") for c in cmds for w in c)
    n.env.mm.write(va, raw)
    arr = UserDataArray(UserMemory(n.env.mm), IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, va,
                        16, len(cmds))
    assert n.viommu.ops is not None
    try:
        n.viommu.ops.cache_invalidate(n.viommu, arr)
    finally:
        n.env.mm.munmap(va, PAGE_SIZE)
    return arr


def test_nested_dma_lands_on_guest_bytes(env: DriverEnv) -> None:
    dev, n = _setup(env)
    _pt, data, gcr3 = _guest(n)
    ndom = n.alloc_nested(gdte_for(gcr3, 0x33))
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    n.ram.write(data + 0x10, b"guest bytes")
    assert env.dma_read(dev, GVA + 0x10, 11) == b"guest bytes"
    env.dma_write(dev, GVA + 0x100, b"from device")
    assert n.ram.read(data + 0x100, 11) == b"from device"
    dte = read_dte(env.iommu.priv, dev.rid)
    assert dte.domid == ndom.hdom_id != 0x33, "the DTE carries the hDomID, not the gDomID"
    assert dte.mode == n.parent.iop.levels and dte.host_pt_root == n.parent.iop.root
    assert dte.gcr3_root == gcr3 and dte.gv and dte.giov
    n.teardown()


def test_same_gdomid_shares_hdomid(env: DriverEnv) -> None:
    _dev, n = _setup(env)
    _pt, _data, gcr3 = _guest(n)
    a = n.alloc_nested(gdte_for(gcr3, 0x33))
    b = n.alloc_nested(gdte_for(gcr3, 0x33))
    c = n.alloc_nested(gdte_for(gcr3, 0x44))
    assert a.hdom_id == b.hdom_id != c.hdom_id
    assert n.viommu.priv.gdomid_array[0x33].users == 2
    env.core.iommu_domain_free(a)
    assert n.viommu.priv.gdomid_array[0x33].users == 1
    env.core.iommu_domain_free(b)
    assert 0x33 not in n.viommu.priv.gdomid_array
    assert a.hdom_id not in env.ops.identity_domain.drv.pdom_ids.used
    n.nested = [c]
    n.teardown()


@pytest.mark.parametrize("mutate,err", [
    (lambda g: g.__setitem__(0, g[0] | (1 << 9)), errno.EINVAL),  # Mode != 0
    (lambda g: g.__setitem__(0, g[0] | 0x1234_5000), errno.EINVAL),  # host TRP
    (lambda g: g.__setitem__(0, g[0] | (3 << 56)), errno.EINVAL),  # GLX = 3
    (lambda g: g.__setitem__(2, 2 << 54), errno.EINVAL),  # GPT level 2
    (lambda g: g.__setitem__(2, 1 << 54), errno.EOPNOTSUPP),  # 5-level, no LA57
    (lambda g: g.__setitem__(1, g[1] & 0xFFFF) or g.__setitem__(0, DTE_FLAG_V | DTE_FLAG_GV),
     errno.EINVAL),  # GV with no GCR3 root
])
def test_bad_gdte_rejected(env: DriverEnv, mutate: Any, err: int) -> None:
    _dev, n = _setup(env)
    g = gdte_for(0x8000_3000, 0x33)
    mutate(g)
    expect_errno(err, n.alloc_nested, g)
    assert not n.viommu.priv.gdomid_array, "a refused gDTE leaves no gDomID mapping"
    n.teardown()


def test_gdte_v0_without_root_accepted(env: DriverEnv) -> None:
    """Final mainline rule: the GCR3 root is needed only when both V and GV are set."""
    dev, n = _setup(env)
    ndom = n.alloc_nested([DTE_FLAG_GV | 0, 0x33, 0, 0])
    assert ndom.type == IOMMU_DOMAIN_NESTED
    assert n.viommu.priv.gdomid_array[0x33].users == 1, "the gDomID got its hDomID"
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    dte = read_dte(env.iommu.priv, dev.rid)
    assert dte.domid == ndom.hdom_id != 0x33 and dte.gv and dte.gcr3_root == 0
    n.teardown()


def test_wrong_data_type_and_length(env: DriverEnv) -> None:
    _dev, n = _setup(env)
    ud = n.user_data(gdte_for(0x3000, 1))
    ud.type = 1
    assert n.viommu.ops is not None
    expect_errno(errno.EOPNOTSUPP, n.viommu.ops.alloc_domain_nested, n.viommu, 0, ud)
    expect_errno(errno.EINVAL, n.viommu.ops.alloc_domain_nested, n.viommu, 0,
                 n.user_data(gdte_for(0x3000, 1), length=16))
    n.teardown()


def test_guest_pte_change_stale_until_prototype_invalidation(env: DriverEnv) -> None:
    dev, n = _setup(env)
    pt, data, gcr3 = _guest(n)
    ndom = n.alloc_nested(gdte_for(gcr3, 0x33))
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    other = n.ram.alloc_page()
    n.ram.write(data, b"OLD!")
    n.ram.write(other, b"NEW!")
    assert env.dma_read(dev, GVA, 4) == b"OLD!"
    pt.map(GVA + PAGE_SIZE, data, PAGE_SIZE, RW)  # keeps the leaf table: a leaf change
    pt.unmap(GVA, PAGE_SIZE)
    pt.map(GVA, other, PAGE_SIZE, RW)
    assert env.dma_read(dev, GVA, 4) == b"OLD!", "no invalidation yet: the IOTLB is stale"
    # The guest's INVALIDATE_IOMMU_PAGES (GN=1, PASID 0, its gDomID) through the vIOMMU.
    arr = _invalidate(n, [build_inv_iommu_pages(GVA, GVA + PAGE_SIZE - 1, 0x33, 0, GN).data])
    assert arr.entry_num == 1
    assert env.dma_read(dev, GVA, 4) == b"NEW!"
    last = [c for c in env.hw.cmd_log if c.opcode == 3][-2:]
    assert any(c.data[1] & 0xFFFF == ndom.hdom_id for c in last), "gDomID became hDomID"
    n.teardown()


def test_s2_unmap_visible_immediately(env: DriverEnv) -> None:
    dev, n = _setup(env)
    _pt, data, gcr3 = _guest(n)
    ndom = n.alloc_nested(gdte_for(gcr3, 0x33))
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    assert env.dma_read(dev, GVA, 4) == bytes(4)
    env.core.iommu_unmap(n.parent, data, PAGE_SIZE)  # the VMM takes the page away
    with pytest.raises(DmaFault) as f:
        env.dma_read(dev, GVA, 4)
    assert f.value.reason == "IO_PAGE_FAULT" and f.value.detail["stage"] == "host"
    n.teardown()


def test_prototype_invalidation_errors(env: DriverEnv) -> None:
    dev, n = _setup(env)
    n.viommu.vdevs[0x0800] = dev
    good = build_inv_iommu_pages(0, (1 << 64) - 1, 0x33, 0, 0).data
    compl = (0x1009, 0x1000_0000, 0, 0)  # COMPLETION_WAIT is not forwarded
    with pytest.raises(IommuError) as e:
        _invalidate(n, [good, good, compl, good])
    assert e.value.errno == errno.EIO
    # Unknown vDeviceID for INVALIDATE_DEVTAB_ENTRY -> EIO after one good entry.
    with pytest.raises(IommuError):
        _invalidate(n, [good, (0x0900, 0x2000_0000, 0, 0)])
    # Known vDeviceID: rewritten to the physical DeviceID.
    _invalidate(n, [(0x0800, 0x2000_0000, 0, 0)])
    assert env.hw.cmd_log[-2].data[0] == dev.rid
    # Reserved bits -> EIO.
    with pytest.raises(IommuError):
        _invalidate(n, [(0, 0x3000_0033, 0x8, 0)])
    n.teardown()


def test_prototype_entry_num_on_error(env: DriverEnv) -> None:
    _dev, n = _setup(env)
    good = build_inv_iommu_pages(0, (1 << 64) - 1, 0x33, 0, 0).data
    va = env.mm.mmap(PAGE_SIZE)
    raw = b"".join(w.to_bytes(4, "little") for c in (good, good, (0, 0x8000_0000, 0, 0))
                   for w in c)
    env.mm.write(va, raw)
    arr = UserDataArray(UserMemory(env.mm), IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, va,
                        16, 3)
    assert n.viommu.ops is not None
    expect_errno(errno.EIO, n.viommu.ops.cache_invalidate, n.viommu, arr)
    assert arr.entry_num == 2
    arr = UserDataArray(UserMemory(env.mm), 1, va, 16, 3)
    expect_errno(errno.EINVAL, n.viommu.ops.cache_invalidate, n.viommu, arr)
    assert arr.entry_num == 0
    n.teardown()


# -- isolation ---------------------------------------------------------------------------
_u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def _guest_world(draw: st.DrawFn) -> dict[str, Any]:
    """A guest that builds a valid GCR3/v2 setup or not, then may scribble valid-looking
    or garbage entries anywhere in its RAM, and hands over a (possibly mangled) gDTE."""
    flips = draw(st.one_of(st.just([]), st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 63)), min_size=1, max_size=3)))
    return {
        "valid": draw(st.sampled_from([True, True, False])),
        "glx": draw(st.sampled_from([0, 0, 0, 1, 2, 3])),
        "gdte_random": draw(st.one_of(st.none(), st.none(), st.none(),
                                      st.lists(_u64, min_size=4, max_size=4))),
        "flips": flips,
        "writes": draw(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 511),
                                          st.one_of(_u64, st.integers(0, 40).map(
                                              lambda p: (p << 12) | 0x67))),
                                max_size=8)),
        "dmas": draw(st.lists(st.tuples(
            st.sampled_from([None, None, 0, 1, 511, 512, 70000]),
            st.one_of(st.integers(GVA, GVA + 0xFFF), st.integers(GVA, GVA + 0xFFF),
                      _u64, st.integers(0, 1 << 32)),
            st.booleans()), min_size=1, max_size=6)),
    }


#: How many generated DMAs went through (the property is not vacuous).
_through = {"ok": 0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=_guest_world())
def test_isolation_property(world: dict[str, Any]) -> None:
    """Whatever the guest writes, a nested DMA only reaches pages the nest parent maps;
    failures are DmaFaults or errnos, never other exceptions."""
    env = make_env()
    try:
        dev, n = _setup(env)
        gcr3 = 0x8000_3000
        if world["valid"]:
            _pt, _data, gcr3 = _guest(n)
        gdte = world["gdte_random"] or gdte_for(gcr3, 0x33, glx=world["glx"])
        for word, bit in world["flips"]:
            gdte[word] ^= 1 << bit
        for page, idx, val in world["writes"]:
            n.ram.write_u64(page * PAGE_SIZE + 8 * idx, val)
        try:
            ndom = n.alloc_nested(gdte)
        except IommuError:
            n.teardown()
            return
        env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
        allowed = set(n.ram.pfns)
        for pasid, iova, write in world["dmas"]:
            try:
                pa = env.hw.dma_translate(dev, pasid, iova, 2 if write else 1)
            except DmaFault:
                continue
            assert pa >> 12 in allowed, f"DMA reached {pa:#x} outside the parent's pages"
            _through["ok"] += 1
        n.teardown()
    finally:
        env.teardown()
    assert env.kernel_pages == 0


def test_isolation_property_was_exercised() -> None:
    """Runs after the property test (file order): some generated DMAs did translate."""
    assert _through["ok"] > 0


def test_nested_attach_refused_with_pasids(env: DriverEnv) -> None:
    from iommu_core.domain import IOMMU_HWPT_ALLOC_PASID
    dev = env.add_device()
    env.claim(dev)
    v2 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_group_replace_domain(dev.iommu_group, v2)
    n = Nesting(env, dev)
    nd = n.alloc_nested(gdte_for(0x3000, 5))
    expect_errno(errno.EINVAL, env.core.iommu_group_replace_domain, dev.iommu_group, nd)
    assert DevTableEntry(read_dte(env.iommu.priv, dev.rid).data).giov, "old DTE kept"
    assert dev_iommu_priv_get(dev).nested is None
    n.teardown()

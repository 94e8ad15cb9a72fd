"""The driver conformance suite: what every IOMMU driver plugin must do.

Each test runs once per selected driver (fixture ``iommu_driver``). Optional features are
checked only where the driver claims them (see :func:`driver_features`); a driver that
claims a feature and fails it fails the kit, and the message names the rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_PASID,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import AttachHandle
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv

RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE
IOVA = 0x100_0000  # inside every driver's aperture (the mock's starts here)


def driver_features(env: DriverEnv, dev: Device) -> dict[str, bool]:
    """The optional features a driver claims, from its ops and capabilities."""
    ops = env.ops
    blocked = ops.blocked_domain
    return {
        "pasid": bool(dev.iommu.max_pasids) and blocked is not None
        and blocked.ops.has("set_dev_pasid"),
        "dirty_tracking": ops.capable(dev, IommuCap.DIRTY_TRACKING),
        "nesting": ops.implements("domain_alloc_nested")
        or ops.implements("viommu_alloc_domain_nested"),
        "viommu": ops.implements("get_viommu_size") and ops.implements("viommu_init"),
        "pri": dev.pri and ops.implements("page_response"),
        "identity": ops.identity_domain is not None
        or ops.implements("domain_alloc_identity"),
    }


@pytest.fixture
def env(iommu_driver: str, iommu_extra_plugins: list[object]) -> Iterator[DriverEnv]:
    e = DriverEnv(iommu_driver, extra_plugins=iommu_extra_plugins)
    yield e
    e.teardown()
    assert e.kernel_pages == 0, (
        f"[{iommu_driver}] rule: after teardown every kernel page is freed; "
        f"{e.kernel_pages} pages leaked")


def _owned_device(env: DriverEnv) -> Device:
    dev = env.add_device()
    env.claim(dev)
    return dev


def _mapped_domain(env: DriverEnv, dev: Device, npages: int = 4, flags: int = 0,
                   iova: int = IOVA) -> tuple[IommuDomain, int, list[int]]:
    dom = env.paging_domain(dev, flags)
    va, pfns = env.user_pages(npages)
    for i, pfn in enumerate(pfns):
        env.core.iommu_map(dom, iova + i * PAGE_SIZE, pfn * PAGE_SIZE, PAGE_SIZE, RW)
    return dom, va, pfns


def test_probe_device(env: DriverEnv) -> None:
    dev = env.add_device()
    assert dev.iommu is not None, "rule: probe_device takes the device (dev.iommu set)"
    group = dev.iommu_group
    assert group is not None and dev in group.devices, "rule: device_group gives a group"
    assert group.domain is group.default_domain is not None, (
        "rule: a probed device sits on its group's default domain")


def test_paging_domain_alloc(env: DriverEnv) -> None:
    dev = env.add_device()
    dom = env.paging_domain(dev)
    assert dom.is_paging
    assert dom.pgsize_bitmap, "rule: a paging domain has a non-empty pgsize_bitmap"
    for op in ("attach_dev", "map_pages", "unmap_pages", "iova_to_phys"):
        assert dom.ops.has(op), f"rule: a paging domain provides {op}"


def test_map_unmap_iova_to_phys(env: DriverEnv) -> None:
    dev = env.add_device()
    dom, _va, pfns = _mapped_domain(env, dev, npages=3)
    for i, pfn in enumerate(pfns):
        got = env.core.iommu_iova_to_phys(dom, IOVA + i * PAGE_SIZE + 0x10)
        assert got == pfn * PAGE_SIZE + 0x10, "rule: iova_to_phys returns the mapped address"
    gather = IotlbGather()
    n = env.core.iommu_unmap_fast(dom, IOVA, 3 * PAGE_SIZE, gather)
    env.core.iommu_iotlb_sync(dom, gather)
    assert n == 3 * PAGE_SIZE, "rule: unmap_pages reports the bytes it unmapped"
    assert env.core.iommu_iova_to_phys(dom, IOVA) == 0, "rule: unmapped IOVA reads as 0"


def test_blocked_domain_faults(env: DriverEnv) -> None:
    dev = _owned_device(env)
    with pytest.raises(DmaFault):
        env.dma_read(dev, IOVA, 8)
    assert dev.iommu_group.domain is dev.iommu_group.blocking_domain


def test_dma_reads_what_user_wrote(env: DriverEnv) -> None:
    dev = _owned_device(env)
    dom, va, _ = _mapped_domain(env, dev, npages=2)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(2 * PAGE_SIZE))
    env.mm.write(va, pattern)
    got = env.dma_read(dev, IOVA, len(pattern))
    assert got == pattern, "rule: a DMA read through the domain returns what user space wrote"
    env.dma_write(dev, IOVA + 100, b"written by the device")
    assert env.mm.read(va + 100, 21) == b"written by the device", (
        "rule: a DMA write lands in the user's page")


def test_unmap_then_dma_faults(env: DriverEnv) -> None:
    dev = _owned_device(env)
    dom, _va, _ = _mapped_domain(env, dev, npages=1)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    env.dma_read(dev, IOVA, 4)  # warm any TLB
    env.core.iommu_unmap(dom, IOVA, PAGE_SIZE)
    with pytest.raises(DmaFault):
        env.dma_read(dev, IOVA, 4)
        pytest.fail("rule: after iommu_unmap (and its iotlb_sync) a DMA to the IOVA faults; "
                    "a stale TLB entry was used")


def test_replace_domain(env: DriverEnv) -> None:
    dev = _owned_device(env)
    a, va_a, _ = _mapped_domain(env, dev, npages=1)
    b, va_b, _ = _mapped_domain(env, dev, npages=1)
    env.mm.write(va_a, b"AAAA")
    env.mm.write(va_b, b"BBBB")
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, a)
    assert env.dma_read(dev, IOVA, 4) == b"AAAA"
    env.core.iommu_group_replace_domain(group, b)
    assert env.dma_read(dev, IOVA, 4) == b"BBBB", (
        "rule: after a replace the device translates through the new domain")


def test_pasid_attach(env: DriverEnv) -> None:
    dev = _owned_device(env)
    if not driver_features(env, dev)["pasid"]:
        pytest.skip(f"{env.driver} does not claim PASID support for this device")
    rid, va_r, _ = _mapped_domain(env, dev, npages=1, flags=IOMMU_HWPT_ALLOC_PASID)
    pd, va_p, _ = _mapped_domain(env, dev, npages=1, flags=IOMMU_HWPT_ALLOC_PASID)
    env.mm.write(va_r, b"RID!")
    env.mm.write(va_p, b"PAS5")
    env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    env.core.iommu_attach_device_pasid(pd, dev, 5)
    assert env.dma_read(dev, IOVA, 4, pasid=5) == b"PAS5", (
        "rule: DMA tagged with a PASID uses the domain attached to that PASID")
    assert env.dma_read(dev, IOVA, 4) == b"RID!", (
        "rule: DMA without PASID keeps using the RID domain")
    env.core.iommu_detach_device_pasid(pd, dev, 5)
    with pytest.raises(DmaFault):
        env.dma_read(dev, IOVA, 4, pasid=5)
        pytest.fail("rule: a detached PASID blocks DMA")


def test_dirty_tracking(env: DriverEnv) -> None:
    dev = _owned_device(env)
    if not driver_features(env, dev)["dirty_tracking"]:
        pytest.skip(f"{env.driver} does not claim dirty tracking for this device")
    dom, _va, _ = _mapped_domain(env, dev, npages=4, flags=IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert dom.dirty_ops, "rule: a DIRTY_TRACKING domain has dirty ops"
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    dom.ops.set_dirty_tracking(dom, True)

    class Record:
        def __init__(self) -> None:
            self.pages: set[int] = set()

        def record(self, iova: int, length: int) -> None:
            for a in range(iova & ~(PAGE_SIZE - 1), iova + length, PAGE_SIZE):
                self.pages.add(a)

    first = Record()
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * PAGE_SIZE, 0, first)
    env.dma_write(dev, IOVA + 2 * PAGE_SIZE + 8, b"dirty")
    env.dma_read(dev, IOVA + PAGE_SIZE, 8)
    rec = Record()
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * PAGE_SIZE, 0, rec)
    assert IOVA + 2 * PAGE_SIZE in rec.pages, "rule: a DMA write marks its page dirty"
    assert IOVA + PAGE_SIZE not in rec.pages, "rule: a DMA read does not mark a page dirty"
    again = Record()
    dom.ops.read_and_clear_dirty(dom, IOVA, 4 * PAGE_SIZE, 0, again)
    assert not again.pages, "rule: read_and_clear_dirty clears what it reported"


def test_page_request(env: DriverEnv) -> None:
    dev = _owned_device(env)
    if not driver_features(env, dev)["pri"]:
        pytest.skip(f"{env.driver} does not claim PRI for this device")
    dom, _va, _ = _mapped_domain(env, dev, npages=1)
    groups: list[IopfGroup] = []
    dom.iopf_handler = groups.append
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, dom)
    group.pasid_array[0] = AttachHandle(dom)
    try:
        env.dma_read(dev, IOVA + 0x10_0000, 4)
    except DmaFault as f:
        if not f.page_request:
            pytest.skip(f"{env.driver}: this configuration aborts instead of issuing PRI")
    else:
        pytest.fail("rule: a DMA to an unmapped IOVA does not succeed")
    assert len(groups) == 1, "rule: a page request reaches the domain's iopf_handler"
    env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
    assert groups[0].responded


def test_incompatible_flags_rejected(env: DriverEnv) -> None:
    dev = env.add_device()
    try:
        env.paging_domain(dev, 1 << 30)
    except IommuError as e:
        assert e.errno == 95, f"rule: unknown allocation flags give EOPNOTSUPP, got {e}"
    else:
        pytest.fail("rule: unknown allocation flags are refused")

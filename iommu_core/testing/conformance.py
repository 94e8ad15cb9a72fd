"""The driver conformance suite: what every IOMMU driver plugin must do.

Each test runs once per selected driver (fixture ``iommu_driver``). Optional features are
checked only where the driver claims them (see :func:`driver_features`); a driver that
claims a feature and fails it fails the kit, and the message names the rule. Every test
carries ``@pytest.mark.iommu_feature(name)`` ("core" for the rules every driver obeys),
which the kit's terminal summary uses to report, per driver, the features claimed and
the suites that ran, passed, failed or were skipped.

The nesting and vIOMMU suites need vendor data (the user's stage-1 description, the
guest table format, invalidation entries): the driver provides it through the kit hook
``conformance_nested_setup`` (:mod:`iommu_core.testing.hookspec`); without it those
suites skip and say so.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_DOMAIN_NESTED,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
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
from iommu_core.testing.nesting import GuestRam, KitViommu, NestedSetup
from iommu_core.testing.report import record_claims

pytestmark = pytest.mark.iommu_feature("core")

RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE
#: Implementing any of these makes a driver "describe" itself (the teaching hooks).
DESCRIBE_HOOKS = ("describe_structures", "describe_hw_info", "describe_device",
                  "describe_domain")
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
        "hw_queue": ops.implements("viommu_get_hw_queue_size")
        and ops.implements("viommu_hw_queue_init_phys"),
        "pri": dev.pri and ops.implements("page_response"),
        "identity": ops.identity_domain is not None
        or ops.implements("domain_alloc_identity"),
        "describe": any(ops.implements(h) for h in DESCRIBE_HOOKS),
    }


def claims(env: DriverEnv, dev: Device) -> dict[str, bool]:
    """:func:`driver_features` for ``dev``, remembered for the kit's summary."""
    feats = driver_features(env, dev)
    env.features = feats
    return feats


def require(env: DriverEnv, dev: Device, feature: str) -> None:
    """Skip unless the driver claims ``feature`` for ``dev``."""
    if not claims(env, dev)[feature]:
        pytest.skip(f"{env.driver} does not claim {feature} for this device")


@pytest.fixture
def env(iommu_driver: str, iommu_extra_plugins: list[object],
        request: pytest.FixtureRequest) -> Iterator[DriverEnv]:
    marker = request.node.get_closest_marker("iommu_feature")
    suite = str(marker.args[0]) if marker is not None and marker.args else "core"
    e = DriverEnv(iommu_driver, extra_plugins=iommu_extra_plugins, suite=suite)
    yield e
    if e.features is not None:
        record_claims(request.config, iommu_driver, e.features)
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


def dma_read(env: DriverEnv, dev: Device, iova: int, n: int, rule: str,
             pasid: int | None = None) -> bytes:
    """A device read that must be translated: a fault fails the test with ``rule``."""
    try:
        return env.dma_read(dev, iova, n, pasid)
    except DmaFault as f:
        pytest.fail(f"rule: {rule}; the DMA faulted: {f}")


def dma_write(env: DriverEnv, dev: Device, iova: int, data: bytes, rule: str,
              pasid: int | None = None) -> None:
    try:
        env.dma_write(dev, iova, data, pasid)
    except DmaFault as f:
        pytest.fail(f"rule: {rule}; the DMA faulted: {f}")


def dma_faults(env: DriverEnv, dev: Device, iova: int, rule: str,
               pasid: int | None = None) -> DmaFault:
    """A device read that must fault; success fails the test with ``rule``."""
    try:
        env.dma_read(dev, iova, 4, pasid)
    except DmaFault as f:
        return f
    pytest.fail(f"rule: {rule}; the DMA at {iova:#x} succeeded")


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
    assert dev.iommu_group.domain is dev.iommu_group.blocking_domain
    f = dma_faults(env, dev, IOVA, "a user-owned group sits on its blocking domain, "
                   "which blocks every DMA")
    assert f.reason, "rule: a DMA fault carries the hardware's reason"


def test_dma_reads_what_user_wrote(env: DriverEnv) -> None:
    dev = _owned_device(env)
    dom, va, _ = _mapped_domain(env, dev, npages=2)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(2 * PAGE_SIZE))
    env.mm.write(va, pattern)
    rule = "a DMA read through the domain returns what user space wrote"
    got = dma_read(env, dev, IOVA, len(pattern), rule)
    assert got == pattern, f"rule: {rule}"
    dma_write(env, dev, IOVA + 100, b"written by the device",
              "a DMA write through the domain lands in the user's page")
    assert env.mm.read(va + 100, 21) == b"written by the device", (
        "rule: a DMA write lands in the user's page")


def test_unmap_then_dma_faults(env: DriverEnv) -> None:
    dev = _owned_device(env)
    dom, _va, _ = _mapped_domain(env, dev, npages=1)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    dma_read(env, dev, IOVA, 4, "a DMA to a mapped IOVA is translated")  # warm any TLB
    env.core.iommu_unmap(dom, IOVA, PAGE_SIZE)
    dma_faults(env, dev, IOVA, "after iommu_unmap (and its iotlb_sync) a DMA to the IOVA "
               "faults; a stale TLB entry was used")


def test_replace_domain(env: DriverEnv) -> None:
    dev = _owned_device(env)
    a, va_a, _ = _mapped_domain(env, dev, npages=1)
    b, va_b, _ = _mapped_domain(env, dev, npages=1)
    env.mm.write(va_a, b"AAAA")
    env.mm.write(va_b, b"BBBB")
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, a)
    rule = "after a replace the device translates through the new domain"
    assert dma_read(env, dev, IOVA, 4, rule) == b"AAAA", f"rule: {rule}"
    env.core.iommu_group_replace_domain(group, b)
    assert dma_read(env, dev, IOVA, 4, rule) == b"BBBB", f"rule: {rule}"


@pytest.mark.iommu_feature("pasid")
def test_pasid_attach(env: DriverEnv) -> None:
    dev = _owned_device(env)
    require(env, dev, "pasid")
    rid, va_r, _ = _mapped_domain(env, dev, npages=1, flags=IOMMU_HWPT_ALLOC_PASID)
    pd, va_p, _ = _mapped_domain(env, dev, npages=1, flags=IOMMU_HWPT_ALLOC_PASID)
    env.mm.write(va_r, b"RID!")
    env.mm.write(va_p, b"PAS5")
    env.core.iommu_group_replace_domain(dev.iommu_group, rid)
    env.core.iommu_attach_device_pasid(pd, dev, 5)
    rule = "DMA tagged with a PASID uses the domain attached to that PASID"
    assert dma_read(env, dev, IOVA, 4, rule, pasid=5) == b"PAS5", f"rule: {rule}"
    rule = "DMA without PASID keeps using the RID domain"
    assert dma_read(env, dev, IOVA, 4, rule) == b"RID!", f"rule: {rule}"
    env.core.iommu_detach_device_pasid(pd, dev, 5)
    dma_faults(env, dev, IOVA, "a detached PASID blocks DMA", pasid=5)


@pytest.mark.iommu_feature("dirty_tracking")
def test_dirty_tracking(env: DriverEnv) -> None:
    dev = _owned_device(env)
    require(env, dev, "dirty_tracking")
    dom, _va, _ = _mapped_domain(env, dev, npages=4, flags=IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert dom.dirty_ops, "rule: a DIRTY_TRACKING domain has dirty ops"
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    dom.ops.set_dirty_tracking(dom, True)

    class Record:
        has_bitmap = True  # a real bitmap, not the clear-only pass

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


def _page_request_by_dma(env: DriverEnv, dev: Device, pasid: int | None,
                         groups: list[IopfGroup]) -> bool:
    """Attach a fault-capable domain (to the RID, or to ``pasid`` beside a PASID-capable
    RID domain) and DMA to an unmapped IOVA: did the hardware send a page request?"""
    flags = 0 if pasid is None else IOMMU_HWPT_ALLOC_PASID
    dom, _va, _ = _mapped_domain(env, dev, npages=1, flags=flags)
    dom.iopf_handler = groups.append
    group = dev.iommu_group
    if pasid is None:
        env.core.iommu_group_replace_domain(group, dom)
        group.pasid_array[0] = AttachHandle(dom)
    else:
        rid, _va, _ = _mapped_domain(env, dev, npages=1, flags=flags)
        env.core.iommu_group_replace_domain(group, rid)
        env.core.iommu_attach_device_pasid(dom, dev, pasid)
    try:
        env.dma_read(dev, IOVA + 0x10_0000, 4, pasid)
    except DmaFault as f:
        return f.page_request
    pytest.fail("rule: a DMA to an unmapped IOVA does not succeed")


@pytest.mark.iommu_feature("pri")
def test_page_request(env: DriverEnv) -> None:
    dev = _owned_device(env)
    feats = claims(env, dev)
    require(env, dev, "pri")
    groups: list[IopfGroup] = []
    # A driver may send page requests only for PASID-tagged DMA on a PASID-capable
    # domain (AMD-Vi enables PRI only for a v2 "SVA capable" domain, 7.3 amd/iommu.c
    # attach_device): the kit tries the RID, then a PASID.
    by_dma = _page_request_by_dma(env, dev, None, groups) or (
        feats["pasid"] and _page_request_by_dma(env, dev, 5, groups))
    # Hardware that sends none from a DMA: the platform's own way, if the driver gives
    # the kit one (the mock: the selftest's TRIGGER_IOPF).
    if not by_dma and not (env.ops.implements("conformance_page_request") and env.ops.call(
            "conformance_page_request", env=env, dev=dev, iova=IOVA + 0x10_0000)):
        pytest.skip(f"{env.driver} claims pri but its hardware issues no page request "
                        "from a DMA and it gives the kit no conformance_page_request")
    assert len(groups) == 1, "rule: a page request reaches the domain's iopf_handler"
    env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
    assert groups[0].responded


def test_incompatible_flags_rejected(env: DriverEnv) -> None:
    dev = env.add_device()
    try:
        env.paging_domain(dev, 1 << 30)
    except IommuError as e:
        assert e.errno == errno.EOPNOTSUPP, (
            f"rule: unknown allocation flags give EOPNOTSUPP, got {e}")
    else:
        pytest.fail("rule: unknown allocation flags are refused")


def test_unclaimed_features_refused(env: DriverEnv) -> None:
    """A driver that does not claim a feature must refuse to set it up, with EOPNOTSUPP
    (so iommufd reports it to user space instead of failing later)."""
    dev = env.add_device()
    feats = claims(env, dev)
    checks = {"dirty_tracking": IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
              "nesting": IOMMU_HWPT_ALLOC_NEST_PARENT}
    unclaimed = {name: flag for name, flag in checks.items() if not feats[name]}
    if not unclaimed:
        pytest.skip(f"{env.driver} claims {', '.join(checks)}: nothing to refuse")
    for name, flag in unclaimed.items():
        try:
            env.paging_domain(dev, flag)
        except IommuError as e:
            assert e.errno == errno.EOPNOTSUPP, (
                f"rule: without {name}, allocation flag {flag:#x} gives EOPNOTSUPP, got {e}")
        else:
            pytest.fail(f"rule: a driver that does not claim {name} refuses allocation "
                        f"flag {flag:#x}")


@pytest.mark.iommu_feature("identity")
def test_identity_domain(env: DriverEnv) -> None:
    dev = _owned_device(env)
    require(env, dev, "identity")
    ident = env.ops.identity_domain
    if ident is None:
        ident = env.ops.domain_alloc_identity(dev)
        env._objects.append(ident)
    va, pfns = env.user_pages(1)
    env.mm.write(va + 0x40, b"identity")
    env.core.iommu_group_replace_domain(dev.iommu_group, ident)
    pa = pfns[0] * PAGE_SIZE + 0x40
    rule = "an IDENTITY domain passes DMA through untranslated (IOVA = physical address)"
    assert dma_read(env, dev, pa, 8, rule) == b"identity", f"rule: {rule}"


# ---------------------------------------------------------------------------------------
# Nesting and vIOMMU (test data from the kit hook conformance_nested_setup)
# ---------------------------------------------------------------------------------------
def guest_setup(env: DriverEnv, feature: str, hook: str
                ) -> tuple[Device, IommuDomain, GuestRam, Any]:
    """An owned device, a NEST_PARENT domain with guest RAM, and the driver's answer to
    the kit hook ``hook`` for them (the test skips without one)."""
    dev = _owned_device(env)
    require(env, dev, feature)
    try:
        parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    except IommuError as e:
        pytest.fail(f"rule: a driver that claims {feature} allocates NEST_PARENT paging "
                    f"domains; got {e}")
    guest = GuestRam(env, parent)
    if not env.ops.implements(hook):
        pytest.skip(f"{env.driver} claims {feature} but gives the kit no test data "
                    f"(kit hook {hook})")
    data = env.ops.call(hook, env=env, dev=dev, guest=guest)
    if data is None:
        pytest.skip(f"{env.driver}: {hook} has no data for {dev.name}")
    return dev, parent, guest, data


def _nesting(env: DriverEnv, feature: str
             ) -> tuple[Device, IommuDomain, GuestRam, NestedSetup]:
    dev, parent, guest, setup = guest_setup(env, feature, "conformance_nested_setup")
    assert isinstance(setup, NestedSetup)
    return dev, parent, guest, setup


def _guest_iova(setup: NestedSetup, guest: GuestRam) -> int:
    # Without a translating stage 1 (the selftest mock) a guest IOVA is its GPA.
    return setup.giova if setup.stage1 is not None else guest.data_gpa(0)


def _guest_map(setup: NestedSetup, giova: int, gpa: int, size: int) -> None:
    if setup.stage1 is not None:
        setup.stage1.map(giova, gpa, size, RW)


def _alloc_nested(env: DriverEnv, dev: Device, parent: IommuDomain, setup: NestedSetup
                  ) -> tuple[IommuDomain, KitViommu | None]:
    """A nested domain the way user space would get one: IOMMU_HWPT_ALLOC on the parent,
    or, for drivers that nest only through a vIOMMU, on a vIOMMU with a vDEVICE."""
    if env.ops.implements("domain_alloc_nested"):
        dom = env.nested_domain(dev, parent, setup.hwpt_data_type, setup.hwpt_data)
        viommu = None
    else:
        if not setup.viommu_type:
            pytest.skip(f"{env.driver} nests only through a vIOMMU and its test data has "
                        "no viommu_type")
        viommu = env.viommu_alloc(dev, parent, setup.viommu_type, setup.viommu_data)
        env.vdevice_alloc(viommu, dev, setup.virt_id)
        dom = env.viommu_nested_domain(viommu, setup.hwpt_data_type, setup.hwpt_data)
    assert dom.type == IOMMU_DOMAIN_NESTED, (
        f"rule: a nested allocation returns a NESTED domain, got {dom.type_name}")
    return dom, viommu


def _check_nested_dma(env: DriverEnv, dev: Device, guest: GuestRam, giova: int) -> None:
    """DMA at ``giova`` (mapped to data pages 0 and 1) sees and writes guest RAM."""
    pattern = bytes((i * 13 + 5) & 0xFF for i in range(PAGE_SIZE + 64))
    guest.write(guest.data_gpa(0), pattern)
    rule = "a DMA through a NESTED domain walks the guest stage 1, then the parent stage 2"
    assert dma_read(env, dev, giova, len(pattern), rule) == pattern, f"rule: {rule}"
    rule = "a DMA write through a NESTED domain lands in guest RAM"
    dma_write(env, dev, giova + PAGE_SIZE + 0x100, b"nested write", rule)
    assert guest.read(guest.data_gpa(1) + 0x100, 12) == b"nested write", f"rule: {rule}"


@pytest.mark.iommu_feature("nesting")
def test_nest_parent_domain(env: DriverEnv) -> None:
    dev = _owned_device(env)
    require(env, dev, "nesting")
    try:
        parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    except IommuError as e:
        pytest.fail(f"rule: a driver that claims nesting allocates NEST_PARENT paging "
                    f"domains; got {e}")
    assert parent.is_paging, "rule: a NEST_PARENT domain is a paging domain"
    va, pfns = env.user_pages(1)
    env.mm.write(va, b"S2ok")
    env.core.iommu_map(parent, IOVA, pfns[0] * PAGE_SIZE, PAGE_SIZE, RW)
    assert env.core.iommu_iova_to_phys(parent, IOVA) == pfns[0] * PAGE_SIZE
    env.core.iommu_group_replace_domain(dev.iommu_group, parent)
    rule = "a NEST_PARENT domain translates like any paging domain when attached directly"
    assert dma_read(env, dev, IOVA, 4, rule) == b"S2ok", f"rule: {rule}"


@pytest.mark.iommu_feature("nesting")
def test_nested_translation(env: DriverEnv) -> None:
    dev, parent, guest, setup = _nesting(env, "nesting")
    giova = _guest_iova(setup, guest)
    _guest_map(setup, giova, guest.data_gpa(0), 2 * PAGE_SIZE)
    nested, _viommu = _alloc_nested(env, dev, parent, setup)
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, nested)
    _check_nested_dma(env, dev, guest, giova)
    what = "stage 1" if setup.stage1 is not None else "nest parent"
    dma_faults(env, dev, giova + 0x100_0000,
               f"a guest IOVA the {what} does not map faults")
    env.core.iommu_unmap(parent, guest.data_gpa(1), PAGE_SIZE)
    dma_faults(env, dev, giova + PAGE_SIZE, "unmapping a page from the nest parent removes "
               "it from nested translations (the parent's invalidation covers them)")
    env.core.iommu_group_replace_domain(group, group.blocking_domain)


@pytest.mark.iommu_feature("nesting")
def test_nested_stage1_invalidation(env: DriverEnv) -> None:
    dev, parent, guest, setup = _nesting(env, "nesting")
    if setup.stage1 is None or setup.invalidate is None:
        pytest.skip(f"{env.driver}: no translating stage 1 or no invalidation in the "
                    "test data")
    giova = setup.giova
    old, new = guest.data_gpa(0), guest.data_gpa(2)
    guest.write(old, b"OLD!")
    guest.write(new, b"NEW!")
    setup.stage1.map(giova, old, PAGE_SIZE, RW)
    nested, viommu = _alloc_nested(env, dev, parent, setup)
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, nested)
    rule = "a DMA through a NESTED domain walks the guest stage 1, then the parent stage 2"
    assert dma_read(env, dev, giova, 4, rule) == b"OLD!", f"rule: {rule}"
    setup.stage1.unmap(giova, PAGE_SIZE)
    setup.stage1.map(giova, new, PAGE_SIZE, RW)
    inv = setup.invalidate(giova, PAGE_SIZE)
    arr = env.user_data_array(inv.data_type, inv.entry_len, inv.entries, inv.entry_num)
    if inv.via_viommu:
        if viommu is None:
            viommu = env.viommu_alloc(dev, parent, setup.viommu_type, setup.viommu_data)
            env.vdevice_alloc(viommu, dev, setup.virt_id)
        assert viommu.ops is not None
        viommu.ops.cache_invalidate(viommu, arr)
    else:
        nested.ops.cache_invalidate_user(nested, arr)
    assert arr.entry_num == inv.entry_num, (
        f"rule: a user invalidation reports every entry it handled ({arr.entry_num} of "
        f"{inv.entry_num})")
    rule = "after the user's stage-1 invalidation a DMA uses the new guest mapping"
    assert dma_read(env, dev, giova, 4, rule) == b"NEW!", f"rule: {rule}"
    env.core.iommu_group_replace_domain(group, group.blocking_domain)


@pytest.mark.iommu_feature("viommu")
def test_viommu_unknown_type(env: DriverEnv) -> None:
    dev = env.add_device()
    require(env, dev, "viommu")
    assert env.ops.get_viommu_size(dev, 0xFFFF_FFFE) == 0, (
        "rule: get_viommu_size is 0 for a vIOMMU type the driver does not know")


@pytest.mark.iommu_feature("viommu")
def test_viommu_nested_translation(env: DriverEnv) -> None:
    dev, parent, guest, setup = _nesting(env, "viommu")
    if not setup.viommu_type:
        pytest.skip(f"{env.driver}: the test data has no viommu_type")
    assert env.ops.get_viommu_size(dev, setup.viommu_type) > 0, (
        f"rule: get_viommu_size is non-zero for a supported type {setup.viommu_type:#x}")
    try:
        viommu = env.viommu_alloc(dev, parent, setup.viommu_type, setup.viommu_data)
    except IommuError as e:
        pytest.fail(f"rule: viommu_init builds a supported vIOMMU and sets its ops; got {e}")
    vdev = env.vdevice_alloc(viommu, dev, setup.virt_id)
    giova = _guest_iova(setup, guest)
    _guest_map(setup, giova, guest.data_gpa(0), 2 * PAGE_SIZE)
    nested = env.viommu_nested_domain(viommu, setup.hwpt_data_type, setup.hwpt_data)
    assert nested.type == IOMMU_DOMAIN_NESTED, (
        "rule: a vIOMMU's alloc_domain_nested returns a NESTED domain")
    group = dev.iommu_group
    env.core.iommu_group_replace_domain(group, nested)
    _check_nested_dma(env, dev, guest, giova)
    env.core.iommu_group_replace_domain(group, group.blocking_domain)
    # Destroy in iommufd's order; the env fixture checks nothing leaked.
    env.free(nested)
    env.vdevice_destroy(vdev)
    env.free(viommu)

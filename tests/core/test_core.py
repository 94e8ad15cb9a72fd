"""The IOMMU core's rules (iommu.c): ownership, attach, PASID, map, IOPF, dispatch."""

from __future__ import annotations

import errno

import pytest

from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import AttachHandle
from iommu_core.hookspec import hookimpl
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    IopfGroup,
    PageRequest,
    PageResponseCode,
)
from iommu_core.platform.bus import Device, make_pci_device
from tests.core.fake_driver import FakeDriver, make_core


def errno_of(fn, *a, **k) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(IommuError) as ei:
        fn(*a, **k)
    return ei.value.errno


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    drv = FakeDriver()
    core, ops = make_core(drv)
    dev = make_pci_device("0000:00:01.0", "fake0", pasid_bits=8)
    core.add_device(dev)
    return core, drv, dev


def test_probe_puts_device_on_default_domain(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    g = dev.iommu_group
    assert g.domain is g.default_domain and g.default_domain.is_paging
    assert dev.iommu.max_pasids == 1 << 8


def test_dma_ownership(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    owner = object()
    core.iommu_device_claim_dma_owner(dev, owner)
    g = dev.iommu_group
    assert g.domain is g.blocking_domain is drv.ops.blocked_domain
    assert errno_of(core.iommu_device_claim_dma_owner, dev, object()) == errno.EPERM
    core.iommu_device_claim_dma_owner(dev, owner)  # same owner shares
    assert errno_of(core.iommu_device_use_default_domain, dev) == errno.EBUSY
    core.iommu_device_release_dma_owner(dev)
    assert g.owner is owner
    core.iommu_device_release_dma_owner(dev)
    assert g.owner is None and g.domain is g.default_domain


def test_attach_replace_and_incompatible(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    core.iommu_device_claim_dma_owner(dev, object())
    a = core.iommu_paging_domain_alloc_flags(dev)
    b = core.iommu_paging_domain_alloc_flags(dev)
    g = dev.iommu_group
    core.iommu_attach_group(a, g)
    assert errno_of(core.iommu_attach_group, b, g) == errno.EBUSY
    core.iommu_group_replace_domain(g, b)
    assert g.domain is b
    other = FakeDriver("other")
    core2, ops2 = make_core(other)
    d2 = make_pci_device("0000:00:02.0", "other0")
    core2.add_device(d2)
    foreign = core2.iommu_paging_domain_alloc_flags(d2)
    assert errno_of(core.iommu_group_replace_domain, g, foreign) == errno.EINVAL
    assert g.domain is b


def test_group_attach_rolls_back(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, _ = setup
    d1 = make_pci_device("0000:00:03.0", "fake0")
    d2 = make_pci_device("0000:00:03.1", "fake0")
    d1.props["iommu_group"] = d2.props["iommu_group"] = "g"
    core.add_device(d1)
    core.add_device(d2)
    assert d1.iommu_group is d2.iommu_group
    core.iommu_group_claim_dma_owner(d1.iommu_group, "vfio")
    dom = core.iommu_paging_domain_alloc_flags(d1)
    drv.fail_attach.add(d2.name)
    assert errno_of(core.iommu_group_replace_domain, d1.iommu_group, dom) == errno.EINVAL
    assert d1.iommu_group.domain is d1.iommu_group.blocking_domain
    # d1 was moved back to the blocking domain
    assert drv.calls[-1][1][0] is d1.iommu_group.blocking_domain


def test_require_direct_refuses_blocking(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, _ = setup
    d = make_pci_device("0000:00:04.0", "fake0", require_direct=True)
    core.add_device(d)
    assert errno_of(core.iommu_device_claim_dma_owner, d, object()) == errno.EINVAL


def test_pasid_rules(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    core.iommu_device_claim_dma_owner(dev, object())
    a = core.iommu_paging_domain_alloc_flags(dev)
    b = core.iommu_paging_domain_alloc_flags(dev)
    assert errno_of(core.iommu_attach_device_pasid, a, dev, 0) == errno.EINVAL
    assert errno_of(core.iommu_attach_device_pasid, a, dev, 256) == errno.EINVAL
    core.iommu_attach_device_pasid(a, dev, 7)
    assert errno_of(core.iommu_attach_device_pasid, b, dev, 7) == errno.EBUSY
    assert errno_of(core.iommu_replace_device_pasid, b, dev, 9,
                    AttachHandle(b)) == errno.EINVAL
    drv.fail_pasid.add(7)
    assert errno_of(core.iommu_replace_device_pasid, b, dev, 7,
                    AttachHandle(b)) == errno.ENOMEM
    assert dev.iommu_group.pasid_array[7].domain is a  # kept the old domain
    drv.fail_pasid.clear()
    core.iommu_replace_device_pasid(b, dev, 7, AttachHandle(b))
    assert drv.pasid_state[(dev.name, 7)] is b
    core.iommu_detach_device_pasid(b, dev, 7)
    assert (dev.name, 7) not in drv.pasid_state and 7 not in dev.iommu_group.pasid_array


def test_pasid_needs_pasid_capable_device(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, _ = setup
    d = make_pci_device("0000:00:05.0", "fake0", pasid_bits=0)
    core.add_device(d)
    dom = core.iommu_paging_domain_alloc_flags(d)
    assert errno_of(core.iommu_attach_device_pasid, dom, d, 1) == errno.EINVAL


@pytest.mark.parametrize(("iova", "paddr", "size", "expect"), [
    (0x0, 0x0, 0x1000, [(0, 0x1000, 1)]),
    (0x0, 0x0, 0x400000, [(0, 0x200000, 2)]),
    (0x1000, 0x1000, 0x400000, [(0x1000, 0x1000, 511), (0x200000, 0x200000, 1),
                                (0x400000, 0x1000, 1)]),
])
def test_iommu_map_page_sizes(setup, iova: int, paddr: int, size: int,  # type: ignore[no-untyped-def]
                              expect: list[tuple[int, int, int]]) -> None:
    core, drv, dev = setup
    dom = core.iommu_paging_domain_alloc_flags(dev)
    core.iommu_map(dom, iova, paddr, size, 3)
    assert [c[1] for c in drv.calls if c[0] == "map_pages"] == expect
    assert core.iommu_unmap(dom, iova, size) == size


def test_iommu_map_errors(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    dom = core.iommu_paging_domain_alloc_flags(dev)
    assert errno_of(core.iommu_map, dom, 0x800, 0, 0x1000, 3) == errno.EINVAL
    assert errno_of(core.iommu_map, drv.ops.blocked_domain, 0, 0, 0x1000, 3) == errno.EINVAL


def test_gather_add_page_syncs_on_disjoint() -> None:
    g = IotlbGather()
    synced: list[tuple[int, int]] = []
    g.add_page(0x1000, 0x1000, lambda x: synced.append((x.start, x.end)))
    g.add_page(0x2000, 0x1000, lambda x: synced.append((x.start, x.end)))
    assert not synced and (g.start, g.end) == (0x1000, 0x2FFF)
    g.add_page(0x9000, 0x1000, lambda x: synced.append((x.start, x.end)))
    assert synced == [(0x1000, 0x2FFF)] and (g.start, g.end) == (0x9000, 0x9FFF)


def _req(grpid: int, last: bool, pasid: int | None = None) -> PageRequest:
    flags = IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE if last else 0
    if pasid is not None:
        flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
    return PageRequest(flags=flags, pasid=pasid or 0, grpid=grpid, perm=1, addr=0x1000)


def test_iopf_groups_and_single_response(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    core.iommu_device_claim_dma_owner(dev, object())
    dom = core.iommu_paging_domain_alloc_flags(dev)
    got: list[IopfGroup] = []
    dom.iopf_handler = got.append
    core.iommu_replace_group_handle(dev.iommu_group, dom, AttachHandle(dom))
    core.iommu_report_device_fault(dev, _req(3, False))
    core.iommu_report_device_fault(dev, _req(4, False))
    assert not got and not drv.responses
    core.iommu_report_device_fault(dev, _req(3, True))
    assert len(got) == 1 and len(got[0].faults) == 2
    core.iopf_group_response(got[0], PageResponseCode.SUCCESS)
    core.iopf_group_response(got[0], PageResponseCode.INVALID)
    assert [r.code for r in drv.responses] == [PageResponseCode.SUCCESS]


def test_iopf_without_handler_is_answered_invalid(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    core.iommu_report_device_fault(dev, _req(1, True, pasid=5))
    assert [r.code for r in drv.responses] == [PageResponseCode.INVALID]


def test_unimplemented_op_is_eopnotsupp(setup) -> None:  # type: ignore[no-untyped-def]
    core, drv, dev = setup
    assert errno_of(dev.iommu.ops.hw_info, dev, 0) == errno.EOPNOTSUPP
    dom = core.iommu_paging_domain_alloc_flags(dev)
    assert errno_of(dom.ops.cache_invalidate_user, dom, None) == errno.EOPNOTSUPP


def test_override_one_op_of_one_driver() -> None:
    a, b = FakeDriver("a"), FakeDriver("b")
    core, ops = make_core(a, b)
    da = make_pci_device("0000:00:01.0", "a0")
    db = make_pci_device("0000:00:02.0", "b0")
    core.add_device(da)
    core.add_device(db)

    class Override:
        @hookimpl(tryfirst=True)
        def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
            return 0xABC000

    core.plugins.register(Override(), driver="a")
    doma = core.iommu_paging_domain_alloc_flags(da)
    domb = core.iommu_paging_domain_alloc_flags(db)
    assert core.iommu_iova_to_phys(doma, 0x1000) == 0xABC000
    assert core.iommu_iova_to_phys(domb, 0x1000) == 0


def test_prototype_hookspec() -> None:
    drv = FakeDriver()
    core, ops = make_core(drv)

    class Spec:
        from iommu_core.hookspec import hookspec

        @hookspec(firstresult=True)
        def test_dev(self, domain: IommuDomain, dev: Device) -> bool:  # type: ignore[empty-body]
            """Would attaching ``dev`` to ``domain`` work?"""

    class Impl:
        @hookimpl
        def test_dev(self, domain: IommuDomain, dev: Device) -> bool:
            return dev.name.endswith(".0")

    core.plugins.add_hookspecs(Spec)
    o = ops["fake"]
    assert errno_of(o.call, "test_dev", domain=None, dev=None) == errno.EOPNOTSUPP
    core.plugins.register(Impl(), driver="fake")
    d = make_pci_device("0000:00:01.0", "fake0")
    assert o.call("test_dev", domain=None, dev=d) is True


def test_check_pending_catches_typos() -> None:
    from pluggy import PluginValidationError

    from iommu_core.plugin import PluginHost

    class Typo:
        @hookimpl
        def atach_dev(self, domain: IommuDomain, dev: Device) -> None:
            pass

    with pytest.raises(PluginValidationError):
        PluginHost().register_driver("typo", Typo())


def test_tracing_records_layers(setup) -> None:  # type: ignore[no-untyped-def]
    from iommu_core.trace import hook_tracing_monitor

    core, drv, dev = setup
    tracer = core.tracer
    core.iommu_device_claim_dma_owner(dev, object())
    assert tracer.roots == []  # off: nothing recorded
    core.plugins.add_monitor(*hook_tracing_monitor(tracer))
    tracer.start()
    dom = core.iommu_paging_domain_alloc_flags(dev)
    core.iommu_group_replace_domain(dev.iommu_group, dom)
    tracer.stop()
    core.plugins.clear_monitors()
    names = [(r.layer, r.name) for r in tracer.roots]
    assert ("core", "iommu_paging_domain_alloc_flags") in names
    replace = next(r for r in tracer.roots if r.name == "iommu_group_replace_domain")
    assert [(c.layer, c.name) for c in replace.children] == [("driver", "attach_dev")]
    assert "attach_dev" in tracer.render()

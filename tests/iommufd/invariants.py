"""Whole-state invariants of the iommufd objects, checked from the inside (these tests
may look at internals; the selftest port may not)."""

from __future__ import annotations

from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_sim import Machine
from iommufd.access import IommufdAccess
from iommufd.device import IommufdDevice
from iommufd.eventq import IommufdFault, IommufdVeventq
from iommufd.hw_pagetable import IommufdHwPagetable, IommufdHwptNested, IommufdHwptPaging
from iommufd.ioas import IommufdIoas
from iommufd.main import IommufdFile
from iommufd.pages import IoptPages
from iommufd.private import IommufdCtx, IommufdObject
from iommufd.viommu import IommufdHwQueueObj, IommufdVdeviceObj, IommufdViommuObj


def ictx_of(m: Machine, fd: int) -> IommufdCtx:
    f = m.task.files.get(fd)
    assert isinstance(f, IommufdFile)
    return f.ictx


def expected_users(ictx: IommufdCtx) -> dict[int, int]:
    """``users`` each live object should have, derived from the object graph."""
    objs = [o for o in ictx.objects.values() if o is not None]
    exp: dict[int, int] = {id(o): 1 for o in objs}

    def ref(o: IommufdObject | None) -> None:
        if o is not None and id(o) in exp:
            exp[id(o)] += 1

    accesses: list[IommufdAccess] = [o for o in objs if isinstance(o, IommufdAccess)]
    for o in objs:
        if isinstance(o, IommufdHwptPaging):
            ref(o.ioas)
        if isinstance(o, IommufdHwptNested):
            ref(o.parent)
            ref(o.viommu)
        if isinstance(o, IommufdHwPagetable):
            ref(o.fault)
        if isinstance(o, IommufdViommuObj):
            ref(o.hwpt)
        if isinstance(o, IommufdVdeviceObj):
            ref(o.viommu_obj)
        if isinstance(o, IommufdVeventq):
            ref(o.viommu)
            if o.file is not None:
                ref(o)
        if isinstance(o, IommufdFault) and o.file is not None:
            ref(o)
        if isinstance(o, IommufdHwQueueObj):
            if o.holds_viommu:
                ref(o.viommu_obj)
            prev = getattr(o.priv, "prev", None)
            if isinstance(prev, IommufdHwQueueObj):
                ref(prev)
            if o.access is not None:
                accesses.append(o.access)
        if isinstance(o, IommufdDevice | IommufdAccess) and not getattr(o, "internal", False):
            ref(o)  # the binding driver / creator
    for acc in accesses:
        ref(acc.ioas)
    for igroup in ictx.groups.values():
        for attach in igroup.attach.values():
            for idev in attach.devices.values():
                ref(attach.hwpt)
                ref(idev)
    return exp


def check_ictx(m: Machine, ictx: IommufdCtx) -> None:
    """Refcounts match the graph; every area is in every domain of its IOAS at the
    right physical address; pins equal the pages held by areas and accesses."""
    exp = expected_users(ictx)
    for o in ictx.objects.values():
        if o is not None:
            assert o.users == exp[id(o)], f"{o!r}: users {o.users}, expected {exp[id(o)]}"
    core = ictx.core
    for o in ictx.objects.values():
        if not isinstance(o, IommufdIoas):
            continue
        iopt = o.iopt
        hwpt_domains = {id(h.domain) for h in o.hwpt_list}
        assert {id(d) for d in iopt.domains} == hwpt_domains
        prev_last = -1
        for area in iopt.areas.values():
            assert area.iova > prev_last, "areas overlap"
            prev_last = area.last
            if area.pages is None:
                continue
            assert area.storage == bool(iopt.domains)
            assert area.iova % iopt.iova_alignment == 0
            for iova in {area.iova, area.last & ~(PAGE_SIZE // 2 - 1), area.last}:
                byte = area.start_byte_of(iova)
                pfn = area.pages.pinned.get(byte >> PAGE_SHIFT)
                for dom in iopt.domains:
                    assert pfn is not None
                    want = (pfn << PAGE_SHIFT) | (byte & (PAGE_SIZE - 1))
                    assert core.iommu_iova_to_phys(dom, iova) == want, (
                        f"{area!r} iova {iova:#x} not mapped in {dom!r}")


def held_pages(m: Machine, ictxs: list[IommufdCtx]) -> int:
    seen: dict[int, IoptPages] = {}
    for ictx in ictxs:
        for o in ictx.objects.values():
            if isinstance(o, IommufdIoas):
                for area in o.iopt.areas.values():
                    if area.pages is not None:
                        seen[id(area.pages)] = area.pages
    return sum(p.users.total() for p in seen.values())

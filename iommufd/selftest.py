"""IOMMU_TEST_CMD (drivers/iommu/iommufd/selftest.c, the iommufd half): the operations
the kernel selftest uses to create mock devices, look inside mock domains and drive
accesses, faults and events. The mock IOMMU itself is a driver plugin
(``drivers/mock``); this module reaches its private state only through the selftest
hook specs (:mod:`iommu_core.hookspec_selftest`).

Not ported: DMABUF_GET, DMABUF_REVOKE and MD_CHECK_DMABUF (the simulation has no dma-buf
exporter); they answer EOPNOTSUPP like an unknown op.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from iommu_core.domain import IOMMU_DOMAIN_UNMANAGED, IommuDomain
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    PageRequest,
)
from iommu_core.platform.bus import Device
from iommu_core.platform.dma_buf import DmaBuf, DmaBufExporter
from iommu_core.platform.files import File
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.trace import traced
from iommufd import uapi_selftest as st
from iommufd.access import (
    IOMMUFD_ACCESS_RW_SLOW_PATH,
    IOMMUFD_ACCESS_RW_WRITE,
    IommufdAccess,
    iommufd_access_attach,
    iommufd_access_create,
    iommufd_access_destroy,
    iommufd_access_pin_pages,
    iommufd_access_replace,
    iommufd_access_rw,
    iommufd_access_unpin_pages,
)
from iommufd.device import (
    MOCK_BUS,
    IommufdDevice,
    iommufd_device_attach,
    iommufd_device_bind,
    iommufd_device_detach,
    iommufd_device_detach_all,
    iommufd_device_replace,
    iommufd_device_unbind,
    iommufd_get_device,
)
from iommufd.hw_pagetable import IommufdHwPagetable, IommufdHwptNested, IommufdHwptPaging
from iommufd.ioas import iommufd_get_ioas, iommufd_test_syz_conv_iova
from iommufd.private import ULONG_MAX, IommufdCtx, IommufdObject, ObjType, Ucmd

MOCK_DRIVER = "mock"
#: Requester IDs of mock devices start here (a private bus of the mock IOMMU).
_MOCK_RID_BASE = 0x8000
#: ACCESS_PAGES / ACCESS_RW refuse more than this (kvzalloc guard).
_ACCESS_MAX = 16 * 1024 * 1024


# ======================================================================================
# mock devices (SELFTEST objects)
# ======================================================================================
class SelftestObj(IommufdObject):
    """``struct selftest_obj`` of TYPE_IDEV: a mock device bound to this context."""

    obj_type = ObjType.SELFTEST

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.mock_dev: Device | None = None
        self.idev: IommufdDevice | None = None

    def destroy(self) -> None:
        if self.idev is not None:
            iommufd_device_detach_all(self.idev)
            iommufd_device_unbind(self.idev)
            self.idev = None
        if self.mock_dev is not None:
            mock_dev_destroy(self.ictx, self.mock_dev)
            self.mock_dev = None


def _mock_iommu_name(ictx: IommufdCtx) -> str:
    for name, iommu in ictx.core.iommus.items():
        if iommu.ops.name == MOCK_DRIVER:
            return name
    raise IommuError(errno.ENODEV, "no mock IOMMU (CONFIG_IOMMUFD_TEST driver) registered")


def mock_dev_create(ictx: IommufdCtx, dev_flags: int) -> Device:
    """``mock_dev_create``: a device on the mock bus behind the mock IOMMU."""
    if dev_flags & ~(st.MOCK_FLAGS_DEVICE_NO_DIRTY | st.MOCK_FLAGS_DEVICE_PASID):
        raise IommuError(errno.EINVAL, f"unknown mock device flags {dev_flags:#x}")
    ictx.subsys.kzalloc("struct mock_dev")
    core = ictx.core
    iommu_name = _mock_iommu_name(ictx)
    used = {d.rid for d in core.platform.devices.values() if d.iommu_name == iommu_name}
    rid = _MOCK_RID_BASE
    while rid in used:
        rid += 1
    if rid > 0xFFFF:
        raise IommuError(errno.ENOSPC, "no free mock requester ID")
    subsys = ictx.subsys
    name = f"mock{subsys.mock_dev_seq}"
    subsys.mock_dev_seq += 1
    pasid = bool(dev_flags & st.MOCK_FLAGS_DEVICE_PASID)
    dev = Device(name=name, bus=MOCK_BUS, rid=rid, stream_ids=(rid,),
                 pasid_bits=st.MOCK_PASID_WIDTH if pasid else 0, ats=False, pri=False,
                 rc_ats=False, iommu_name=iommu_name, props={"mock_flags": dev_flags})
    core.iommu_mock_device_add(dev)
    return dev


def mock_dev_destroy(ictx: IommufdCtx, dev: Device) -> None:
    ictx.core.remove_device(dev)


def _get_selftest_obj(ictx: IommufdCtx, oid: int) -> SelftestObj:
    sobj = ictx.get_object(oid, SelftestObj)
    if sobj.idev is None:
        raise IommuError(errno.EINVAL, f"selftest object {oid} has no device")
    return sobj


@traced("iommufd", lambda cmd: f"pt {cmd.id}")
def iommufd_test_mock_domain(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    ictx = ucmd.ictx
    dev_flags = 0
    if cmd.op == st.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS:
        dev_flags = cmd.mock_domain_flags.dev_flags
    sobj = ictx.object_alloc(SelftestObj)
    try:
        sobj.mock_dev = mock_dev_create(ictx, dev_flags)
        try:
            idev = iommufd_device_bind(ictx, sobj.mock_dev)
            try:
                pt_id = iommufd_device_attach(idev, IOMMU_NO_PASID, cmd.id)
                try:
                    cmd.mock_domain.out_hwpt_id = pt_id
                    cmd.mock_domain.out_stdev_id = sobj.id
                    cmd.mock_domain.out_idev_id = idev.id
                    ucmd.respond()
                except IommuError:
                    iommufd_device_detach(idev, IOMMU_NO_PASID)
                    raise
            except IommuError:
                iommufd_device_unbind(idev)
                raise
        except IommuError:
            mock_dev_destroy(ictx, sobj.mock_dev)
            sobj.mock_dev = None
            raise
    except IommuError:
        ictx.object_abort(sobj)
        raise
    sobj.idev = idev
    ictx.object_finalize(sobj)
    return 0


def iommufd_test_mock_domain_replace(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    sobj = _get_selftest_obj(ucmd.ictx, cmd.id)
    assert sobj.idev is not None
    cmd.mock_domain_replace.pt_id = iommufd_device_replace(
        sobj.idev, IOMMU_NO_PASID, cmd.mock_domain_replace.pt_id)
    ucmd.respond()
    return 0


# ======================================================================================
# reserved ranges and mock page-table checks
# ======================================================================================
def iommufd_test_add_reserved(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    start, length = cmd.add_reserved.start, cmd.add_reserved.length
    if not length:
        raise IommuError(errno.EINVAL, "zero length")
    last = start + length - 1
    if last > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "start + length overflows")
    ioas = iommufd_get_ioas(ucmd.ictx, cmd.id)
    ioas.iopt.iopt_reserve_iova(start, last, None)
    return 0


def _get_md_pagetable(ictx: IommufdCtx, oid: int) -> IommuDomain:
    hwpt = ictx.get_object(oid, IommufdHwptPaging)
    dom = hwpt.domain
    if dom is None or dom.type != IOMMU_DOMAIN_UNMANAGED or dom.owner.name != MOCK_DRIVER:
        raise IommuError(errno.EINVAL, f"HWPT {oid} is not a mock paging domain")
    return dom


def iommufd_test_md_check_pa(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    ictx = ucmd.ictx
    dom = _get_md_pagetable(ictx, cmd.id)
    iova, length, uptr = cmd.check_map.iova, cmd.check_map.length, cmd.check_map.uptr
    bm = dom.pgsize_bitmap
    pg = bm & -bm
    if iova % pg or length % pg or uptr % pg or uptr + length > ULONG_MAX:
        raise IommuError(errno.EINVAL, f"iova/length/uptr not {pg:#x} aligned")
    mm = ictx.current.mm
    core = ictx.core
    while length:
        # get_user_pages_fast faults the page in
        pa = (mm.get_user_page(uptr) << PAGE_SHIFT) | (uptr & (PAGE_SIZE - 1))
        if core.iommu_iova_to_phys(dom, iova) != pa:
            raise IommuError(errno.EINVAL, f"iova {iova:#x} does not map va {uptr:#x}")
        iova += pg
        uptr += pg
        length -= pg
    return 0


def iommufd_test_md_check_refs(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    length, uptr, refs = cmd.check_refs.length, cmd.check_refs.uptr, cmd.check_refs.refs
    if length % PAGE_SIZE or uptr % PAGE_SIZE:
        raise IommuError(errno.EINVAL, "length or uptr not page aligned")
    mm = ucmd.ictx.current.mm
    alloc = mm.alloc
    # get_user_pages_fast of every page, then each page's count: by runs (a page whose
    # count differs is looked at alone); page by page when one is missing, so that the
    # pages before it are checked first, as the kernel does
    npages = length // PAGE_SIZE
    runs: Iterable[tuple[int, int]]
    try:
        runs = mm.get_user_pages(uptr, npages)
    except IommuError:
        runs = ((mm.get_user_page(uptr + (i << PAGE_SHIFT)), 1) for i in range(npages))
    va = uptr
    for pfn, n in runs:
        for s, e, pins in alloc.pin_spans(pfn, n):
            if pins == refs:
                continue
            for p in range(s, e):
                at = va + ((p - pfn) << PAGE_SHIFT)
                if not mm.is_compound(at):
                    raise IommuError(errno.EIO, f"page at {at:#x} has {pins} pins, "
                                     f"expected {refs}")
        va += n << PAGE_SHIFT
    return 0


def _call_mock(dev_or_dom_ops: Any, op: str, **kwargs: Any) -> Any:
    if dev_or_dom_ops.name != MOCK_DRIVER:
        raise IommuError(errno.EINVAL, "not a mock object")
    return dev_or_dom_ops.call(op, **kwargs)


def iommufd_test_md_check_iotlb(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    hwpt = ucmd.ictx.get_object(cmd.id, IommufdHwptNested)
    dom = hwpt.domain
    assert dom is not None
    if dom.owner.name != MOCK_DRIVER:
        raise IommuError(errno.EINVAL, f"HWPT {cmd.id} is not a mock nested domain")
    idx, want = cmd.check_iotlb.id, cmd.check_iotlb.iotlb
    if idx > st.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX or _call_mock(
            dom.owner, "mock_domain_read_iotlb", domain=dom, iotlb_id=idx) != want:
        raise IommuError(errno.EINVAL, f"iotlb[{idx}] != {want:#x}")
    return 0


def iommufd_test_dev_check_cache(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    idev = iommufd_get_device(ucmd.ictx, cmd.id)
    dev = idev.dev
    idx, want = cmd.check_dev_cache.id, cmd.check_dev_cache.cache
    if idx > st.MOCK_DEV_CACHE_ID_MAX or _call_mock(
            dev.iommu.ops, "mock_dev_read_cache", dev=dev, cache_id=idx) != want:
        raise IommuError(errno.EINVAL, f"cache[{idx}] != {want:#x}")
    return 0


def iommufd_test_dirty(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    d = cmd.dirty
    if not d.page_size or not d.length or d.iova % d.page_size or d.length % d.page_size \
            or not d.uptr:
        raise IommuError(errno.EINVAL, "bad dirty range")
    ictx = ucmd.ictx
    dom = _get_md_pagetable(ictx, cmd.id)
    ops = dom.owner
    if not dom.dirty_ops or not ops.call("mock_domain_dirty_enabled", domain=dom):
        raise IommuError(errno.EINVAL, "dirty tracking is not enabled")
    nbits = d.length // d.page_size
    bitmap = ictx.current.uaccess.copy_from_user(d.uptr, (nbits + 7) // 8)
    bits = int.from_bytes(bitmap, "little") & ((1 << nbits) - 1)
    count = 0
    while bits:
        low = bits & -bits
        i = low.bit_length() - 1
        bits ^= low
        ops.call("mock_domain_set_dirty", domain=dom, iova=d.iova + i * d.page_size)
        count += 1
    d.out_nr_dirty = count
    ucmd.respond()
    return 0


# ======================================================================================
# faults and events
# ======================================================================================
def iommufd_test_trigger_iopf(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    t = cmd.trigger_iopf
    idev = iommufd_get_device(ucmd.ictx, t.dev_id)
    flags = IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
    if t.pasid != IOMMU_NO_PASID:
        flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
    req = PageRequest(flags=flags, pasid=t.pasid, grpid=t.grpid, perm=t.perm, addr=t.addr)
    ucmd.ictx.core.iommu_report_device_fault(idev.dev, req)
    return 0


def iommufd_test_trigger_vevent(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    idev = iommufd_get_device(ucmd.ictx, cmd.trigger_vevent.dev_id)
    dev = idev.dev
    if not _call_mock(dev.iommu.ops, "mock_dev_trigger_vevent", dev=dev):
        raise IommuError(errno.ENOENT, f"device {idev.id} is not attached to a nested "
                         "domain of a vIOMMU with a vDEVICE")
    return 0


# ======================================================================================
# PASID
# ======================================================================================
def iommufd_test_pasid_attach(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    sobj = _get_selftest_obj(ucmd.ictx, cmd.id)
    assert sobj.idev is not None
    p = cmd.pasid_attach
    p.pt_id = iommufd_device_attach(sobj.idev, p.pasid, p.pt_id)
    try:
        ucmd.respond()
    except IommuError:
        iommufd_device_detach(sobj.idev, p.pasid)
        raise
    return 0


def iommufd_test_pasid_replace(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    sobj = _get_selftest_obj(ucmd.ictx, cmd.id)
    assert sobj.idev is not None
    p = cmd.pasid_replace
    p.pt_id = iommufd_device_replace(sobj.idev, p.pasid, p.pt_id)
    ucmd.respond()
    return 0


def iommufd_test_pasid_detach(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    sobj = _get_selftest_obj(ucmd.ictx, cmd.id)
    assert sobj.idev is not None
    iommufd_device_detach(sobj.idev, cmd.pasid_detach.pasid)
    return 0


def iommufd_test_pasid_check_hwpt(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    ictx = ucmd.ictx
    sobj = _get_selftest_obj(ictx, cmd.id)
    assert sobj.mock_dev is not None
    group = sobj.mock_dev.iommu_group
    handle = group.pasid_array.get(cmd.pasid_check.pasid) if group is not None else None
    attached = handle.domain if handle is not None else None
    if not cmd.pasid_check.hwpt_id:
        if attached is not None:
            raise IommuError(errno.EINVAL, "something is attached at this PASID")
        return 0
    obj = ictx.get_any(cmd.pasid_check.hwpt_id)
    if not isinstance(obj, IommufdHwPagetable) or attached is not obj.domain:
        raise IommuError(errno.EINVAL, "the PASID is not attached to that HWPT")
    return 0


# ======================================================================================
# access objects (emulated devices with an fd)
# ======================================================================================
@attrs.frozen
class _SelftestAccessItem:
    """``struct selftest_access_item``: one ACCESS_PAGES pin."""

    id: int
    iova: int
    length: int


class SelftestAccess(File):
    """``struct selftest_access`` and its fd: closing it unpins and destroys the access."""

    name = "[iommufd_test_staccess]"

    def __init__(self, needs_pin_pages: bool) -> None:
        self.needs_pin_pages = needs_pin_pages
        self.access: IommufdAccess | None = None
        self.items: list[_SelftestAccessItem] = []
        self.next_id = 0

    # iommufd_access_ops
    def unmap(self, data: Any, iova: int, length: int) -> None:
        """Drop every pinned item overlapping [iova, iova+length)."""
        last = iova + length - 1
        for item in list(self.items):
            if iova > item.iova + item.length - 1 or last < item.iova:
                continue
            self.items.remove(item)
            assert self.access is not None
            iommufd_access_unpin_pages(self.access, item.iova, item.length)

    def release(self) -> None:
        if self.access is not None:
            self.unmap(None, 0, ULONG_MAX)
            iommufd_access_destroy(self.access)
            self.access = None


class _PinOps:
    """The two access ops tables: with and without ``needs_pin_pages``."""

    def __init__(self, staccess: SelftestAccess) -> None:
        self.staccess = staccess
        self.needs_pin_pages = staccess.needs_pin_pages

    def unmap(self, data: Any, iova: int, length: int) -> None:
        self.staccess.unmap(data, iova, length)


def kvzalloc(ictx: IommufdCtx, size: int, site: str) -> None:
    """``kvzalloc``: above a page a failed kmalloc falls back to vmalloc, so only
    allocations up to PAGE_SIZE can fail (ENOMEM)."""
    if size <= PAGE_SIZE:
        ictx.subsys.kzalloc(site)


def _access_get(ictx: IommufdCtx, fd: int) -> SelftestAccess:
    f = ictx.current.files.get(fd) if fd in ictx.current.files else None
    if not isinstance(f, SelftestAccess) or f.access is None:
        raise IommuError(errno.EBADFD, f"fd {fd} is not a selftest access")
    return f


def iommufd_test_create_access(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    flags = cmd.create_access.flags
    if flags & ~st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise IommuError(errno.EOPNOTSUPP, f"unknown access flags {flags:#x}")
    ictx = ucmd.ictx
    ictx.subsys.kzalloc("struct selftest_access")
    ictx.subsys.kzalloc("anon_inode_getfile")
    staccess = SelftestAccess(bool(flags & st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    files = ictx.current.files
    fdno = files.get_unused_fd()
    try:
        access = iommufd_access_create(ictx, _PinOps(staccess), staccess)
    except IommuError:
        files.put_unused_fd(fdno)
        raise
    try:
        iommufd_access_attach(access, cmd.id)
        cmd.create_access.out_access_fd = fdno
        ucmd.respond()
    except IommuError:
        files.put_unused_fd(fdno)
        iommufd_access_destroy(access)
        raise
    staccess.access = access
    files.fd_install(fdno, staccess)
    return 0


def iommufd_test_access_item_destroy(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    staccess = _access_get(ucmd.ictx, cmd.id)
    item_id = cmd.destroy_access_pages.access_pages_id
    for item in staccess.items:
        if item.id == item_id:
            staccess.items.remove(item)
            assert staccess.access is not None
            iommufd_access_unpin_pages(staccess.access, item.iova, item.length)
            return 0
    raise IommuError(errno.ENOENT, f"no access item {item_id}")


def _syz_iova(staccess: SelftestAccess, iova: int) -> int:
    access = staccess.access
    if access is None or access.ioas is None:
        return 0
    return iommufd_test_syz_conv_iova(access.ioas, iova)


def iommufd_test_access_pages(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    a = cmd.access_pages
    if a.length > _ACCESS_MAX:
        raise IommuError(errno.ENOMEM, "length above 16 MiB")
    if a.flags & ~(st.MOCK_FLAGS_ACCESS_WRITE | st.MOCK_FLAGS_ACCESS_SYZ):
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {a.flags:#x}")
    ictx = ucmd.ictx
    staccess = _access_get(ictx, cmd.id)
    if not staccess.needs_pin_pages:
        raise IommuError(errno.EOPNOTSUPP, "this access cannot pin pages")
    iova = a.iova
    if a.flags & st.MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_iova(staccess, iova)
    access = staccess.access
    assert access is not None
    npages = (((iova + a.length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
              - (iova & ~(PAGE_SIZE - 1))) // PAGE_SIZE
    kvzalloc(ictx, npages * 8, "the page array")
    pfns = iommufd_access_pin_pages(access, iova, a.length,
                                    a.flags & st.MOCK_FLAGS_ACCESS_WRITE)
    try:
        if a.uptr:
            mm = ictx.current.mm
            va = a.uptr - (iova % PAGE_SIZE)
            for i, pfn in enumerate(pfns):
                if mm.get_user_page(va + i * PAGE_SIZE) != pfn:
                    raise IommuError(errno.EBADE, f"pinned page {i} is not the user's page")
        ictx.subsys.kzalloc("struct selftest_access_item")
        item = _SelftestAccessItem(staccess.next_id, iova, a.length)
        a.out_access_pages_id = item.id
        ucmd.respond()
    except IommuError:
        iommufd_access_unpin_pages(access, iova, a.length)
        raise
    staccess.next_id += 1
    staccess.items.append(item)
    return 0


def iommufd_test_access_rw(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    a = cmd.access_rw
    if a.length > _ACCESS_MAX:
        raise IommuError(errno.ENOMEM, "length above 16 MiB")
    if a.flags & ~(st.MOCK_ACCESS_RW_WRITE | st.MOCK_ACCESS_RW_SLOW_PATH
                   | st.MOCK_FLAGS_ACCESS_SYZ):
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {a.flags:#x}")
    ictx = ucmd.ictx
    staccess = _access_get(ictx, cmd.id)
    kvzalloc(ictx, a.length, "the bounce buffer")
    uaccess = ictx.current.uaccess
    write = bool(a.flags & st.MOCK_ACCESS_RW_WRITE)
    tmp = bytearray(uaccess.copy_from_user(a.uptr, a.length)) if write else None
    iova = a.iova
    if a.flags & st.MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_iova(staccess, iova)
    access = staccess.access
    assert access is not None
    flags = IOMMUFD_ACCESS_RW_WRITE if write else 0
    if a.flags & st.MOCK_ACCESS_RW_SLOW_PATH:
        flags |= IOMMUFD_ACCESS_RW_SLOW_PATH
    data = iommufd_access_rw(access, iova, tmp, a.length, flags)
    if not write:
        uaccess.copy_to_user(a.uptr, data)
    return 0


def iommufd_test_access_replace_ioas(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    staccess = _access_get(ucmd.ictx, cmd.id)
    assert staccess.access is not None
    iommufd_access_replace(staccess.access, cmd.access_replace_ioas.ioas_id)
    return 0


def iommufd_test_memory_limit(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    limit = cmd.memory_limit.limit
    if limit < 12:
        raise IommuError(errno.EINVAL, "temporary memory limit below 12 bytes")
    ucmd.ictx.subsys.temp_memory_limit = limit
    return 0


# ======================================================================================
# dispatch
# ======================================================================================
# ======================================================================================
# dma-buf exporter
# ======================================================================================
class _TestDmaBuf(DmaBufExporter):
    """``struct iommufd_test_dma_buf``: zeroed kernel memory, revocable."""

    def __init__(self, core: Any, length: int) -> None:
        self.alloc = core.platform.alloc
        self.length = length
        self.order = max(0, (length // PAGE_SIZE - 1).bit_length())
        self.pa = self.alloc.alloc_pages(self.order, "kernel")  # kzalloc(len)
        self.revoked = False

    def iommufd_map(self) -> tuple[int, int]:
        """``iommufd_test_dma_buf_iommufd_map``."""
        if self.revoked:
            raise IommuError(errno.ENODEV, "the dma-buf is revoked")
        return self.pa, self.length

    def release(self) -> None:
        self.alloc.free_pages(self.pa, self.order)


def iommufd_test_dmabuf_get(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    """A dma-buf of ``length`` bytes (page aligned, at most 512 pages) as a new fd.

    The ioctl returns the fd, as the selftest (iommufd_utils.h ``_test_cmd_get_dmabuf``)
    reads it; 7.3-rc7's ``iommufd_test_dmabuf_get`` installs it and returns 0, which the
    selftest cannot use (docs/selftest_status.rst)."""
    length = (cmd.dmabuf_get.length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if length == 0 or length > PAGE_SIZE * 512:
        raise IommuError(errno.EINVAL, f"dma-buf length {cmd.dmabuf_get.length:#x}")
    ictx = ucmd.ictx
    if ictx.subsys.should_fail():  # kzalloc of the private struct
        raise IommuError(errno.ENOMEM, "fail-nth: dma-buf allocation")
    buf = DmaBuf(_TestDmaBuf(ictx.core, length), length)
    try:
        return ictx.current.files.install(buf)
    except IommuError:
        buf.fput()
        raise


def iommufd_test_dmabuf_revoke(ucmd: Ucmd, cmd: st.iommu_test_cmd) -> int:
    fd = cmd.dmabuf_revoke.dmabuf_fd
    files = ucmd.ictx.current.files
    buf = files.get(fd)  # dma_buf_get: EBADF, then EINVAL for another kind of file
    if not isinstance(buf, DmaBuf):
        raise IommuError(errno.EINVAL, f"fd {fd} is not a dma-buf")
    if not isinstance(buf.exporter, _TestDmaBuf):
        raise IommuError(errno.EOPNOTSUPP, "not the selftest's dma-buf")
    buf.exporter.revoked = bool(cmd.dmabuf_revoke.revoked)
    buf.invalidate_mappings()
    return 0


_OPS: dict[int, Callable[[Ucmd, st.iommu_test_cmd], int]] = {
    st.IOMMU_TEST_OP_ADD_RESERVED: iommufd_test_add_reserved,
    st.IOMMU_TEST_OP_MOCK_DOMAIN: iommufd_test_mock_domain,
    st.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: iommufd_test_mock_domain,
    st.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: iommufd_test_mock_domain_replace,
    st.IOMMU_TEST_OP_MD_CHECK_MAP: iommufd_test_md_check_pa,
    st.IOMMU_TEST_OP_MD_CHECK_REFS: iommufd_test_md_check_refs,
    st.IOMMU_TEST_OP_MD_CHECK_IOTLB: iommufd_test_md_check_iotlb,
    st.IOMMU_TEST_OP_DEV_CHECK_CACHE: iommufd_test_dev_check_cache,
    st.IOMMU_TEST_OP_CREATE_ACCESS: iommufd_test_create_access,
    st.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: iommufd_test_access_item_destroy,
    st.IOMMU_TEST_OP_ACCESS_PAGES: iommufd_test_access_pages,
    st.IOMMU_TEST_OP_ACCESS_RW: iommufd_test_access_rw,
    st.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: iommufd_test_access_replace_ioas,
    st.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: iommufd_test_memory_limit,
    st.IOMMU_TEST_OP_DIRTY: iommufd_test_dirty,
    st.IOMMU_TEST_OP_TRIGGER_IOPF: iommufd_test_trigger_iopf,
    st.IOMMU_TEST_OP_TRIGGER_VEVENT: iommufd_test_trigger_vevent,
    st.IOMMU_TEST_OP_PASID_ATTACH: iommufd_test_pasid_attach,
    st.IOMMU_TEST_OP_PASID_REPLACE: iommufd_test_pasid_replace,
    st.IOMMU_TEST_OP_PASID_DETACH: iommufd_test_pasid_detach,
    st.IOMMU_TEST_OP_PASID_CHECK_HWPT: iommufd_test_pasid_check_hwpt,
    st.IOMMU_TEST_OP_DMABUF_GET: iommufd_test_dmabuf_get,
    st.IOMMU_TEST_OP_DMABUF_REVOKE: iommufd_test_dmabuf_revoke,
}


@traced("iommufd")
def iommufd_test(ucmd: Ucmd) -> int:
    cmd: st.iommu_test_cmd = ucmd.cmd
    fn = _OPS.get(cmd.op)
    if fn is None:
        raise IommuError(errno.EOPNOTSUPP, f"unknown IOMMU_TEST_CMD op {cmd.op}")
    return fn(ucmd, cmd)


"""The iommufd selftest mock IOMMU driver (drivers/iommu/iommufd/selftest.c, driver half)
as a driver plugin.

It behaves as the kernel's mock does for every iommufd ioctl (see
reference/selftest_catalog.md §2.5), and it really drives :mod:`drivers.mock.hw`: paging
domains are ``mock``-format page tables (2 KiB granule) the hardware walks, attach writes
device-table or PASID-table entries, unmap invalidates the IOTLB by domain ID, dirty
tracking sets the HAD bit so device writes dirty the leaf descriptors.

Per-device state (``MockDev``) hangs off ``dev.iommu.priv``, per-unit state
(``MockIommu``) off ``IommuDevice.priv``; the plugin object itself holds nothing, so one
instance serves every Machine.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs

import iommufd.uapi as uapi
import iommufd.uapi_selftest as st
from drivers.mock import hw as mhw
from drivers.mock.describe import MockDescribe
from iommu_core.device import IommuCap, IommuDevice
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
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
from iommu_core.group import IommuGroup
from iommu_core.hookspec import hookimpl
from iommu_core.iommu import IommuCore
from iommu_core.iommufd_driver import (
    IommufdHwQueue,
    IommufdViommu,
    UserData,
    UserDataArray,
)
from iommu_core.iopf import PageRequest, PageResponse
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.platform import IommuResources, Platform
from iommu_core.plugin import IommuOps

#: Page-table levels of every mock domain: 2K, 1M and 512M leaves, a 38-bit IOVA space.
MOCK_LEVELS = 3

BLOCKED_OPS = ("attach_dev", "set_dev_pasid")
PAGING_OPS = ("attach_dev", "set_dev_pasid", "map_pages", "unmap_pages", "iova_to_phys",
              "iotlb_sync", "flush_iotlb_all", "free")
DIRTY_OPS = ("set_dirty_tracking", "read_and_clear_dirty")
NESTED_OPS = ("attach_dev", "set_dev_pasid", "cache_invalidate_user", "free")
VIOMMU_OPS = ("viommu_destroy", "viommu_alloc_domain_nested", "viommu_cache_invalidate",
              "viommu_get_hw_queue_size", "viommu_hw_queue_init_phys",
              "viommu_hw_queue_destroy")

_KNOWN_OPTIONS = {"iotlb_size"}


# ======================================================================================
# driver state
# ======================================================================================
class MockIommu:
    """``struct mock_iommu_device``: one unit, its registers and its tables."""

    def __init__(self, core: IommuCore, res: IommuResources, ops: IommuOps) -> None:
        self.core = core
        self.regs = res.mmio["regs"]
        self.mem = core.platform.mem
        self.alloc = core.platform.alloc
        self.table_mem = PhysTableMemory(self.mem, self.alloc)
        self.ops = ops
        if self.regs.read32(mhw.REG_ID) != mhw.MOCK_ID:
            raise IommuError(errno.ENODEV, f"{res.name}: not a mock IOMMU")
        cap = self.regs.read32(mhw.REG_CAP)
        self.pasid_bits = cap & 0x1F
        self.dirty = bool(cap & mhw.CAP_DIRTY)
        self.dt = self.alloc.alloc_pages(mhw.DT_ORDER)
        self._dids: set[int] = set()
        #: (rid, pasid or -1) -> domain programmed there (for HAD updates).
        self.contexts: dict[tuple[int, int], IommuDomain] = {}
        self.regs.write64(mhw.REG_DT_BASE, self.dt)
        self.regs.write32(mhw.REG_CTRL, mhw.CTRL_EN)
        self.iommu = IommuDevice(res.name, ops, self)
        self.iommu.max_pasid_bits = self.pasid_bits

    # -- invalidation --------------------------------------------------------------------
    def inv(self, kind: int, did: int = 0, arg: int = 0) -> None:
        self.regs.write64(mhw.REG_INV_ARG, arg)
        self.regs.write32(mhw.REG_INV_CMD, kind | (did << 16))

    # -- ids ------------------------------------------------------------------------------
    def alloc_did(self) -> int:
        did = 1
        while did in self._dids:
            did += 1
        if did > 0xFFFF:
            raise IommuError(errno.ENOSPC, "no free mock domain ID")
        self._dids.add(did)
        return did

    def free_did(self, did: int) -> None:
        self._dids.discard(did)

    # -- device table ---------------------------------------------------------------------
    def dte_addr(self, rid: int) -> int:
        return self.dt + rid * mhw.DTE_SIZE

    def remove(self) -> None:
        self.regs.write32(mhw.REG_CTRL, 0)
        self.alloc.free_pages(self.dt, mhw.DT_ORDER)


class MockDev:
    """``struct mock_dev``: the mock's per-device state."""

    def __init__(self, mock: MockIommu, dev: Device) -> None:
        self.mock = mock
        self.flags = int(dev.props.get("mock_flags", 0))
        self.cache = [st.IOMMU_TEST_DEV_CACHE_DEFAULT] * st.MOCK_DEV_CACHE_NUM
        self.pasid_1024_fake_error = False
        self.viommu: IommufdViommu | None = None
        self.vdev_id = 0
        #: PASID directory (32 KiB) and its leaf tables: index -> [page, entries used].
        self.pasid_dir = 0
        self.pasid_tables: dict[int, list[int]] = {}

    @property
    def no_dirty(self) -> bool:
        return bool(self.flags & st.MOCK_FLAGS_DEVICE_NO_DIRTY)


class MockBlockedDomain(IommuDomain):
    """``mock_blocking_domain``: default, blocked and release domain (no DMA)."""


class MockPagingDomain(IommuDomain):
    """``struct mock_iommu_domain``: a mock-format page table."""

    def __init__(self, mock: MockIommu, ops: IommuOps, no_dirty: bool, pagetable_type: int
                 ) -> None:
        provided = PAGING_OPS + (() if no_dirty else DIRTY_OPS)
        pt = IoPageTable(formats.mock(levels=MOCK_LEVELS), mock.table_mem)
        fmt = pt.fmt
        if pagetable_type == st.MOCK_IOMMUPT_HUGE:
            # Huge mode: user space only maps huge pages; PAGE_SIZE keeps iommufd happy.
            bitmap = st.MOCK_HUGE_PAGE_SIZE | PAGE_SIZE
            geo = Geometry(0, (1 << fmt.ias) - 1, True)
        else:
            bitmap = 0
            for shift in fmt.level_shift:
                bitmap |= 1 << shift
            bitmap &= fmt.pgsize_bitmap
            geo = Geometry(st.MOCK_APERTURE_START, st.MOCK_APERTURE_LAST, True)
        super().__init__(IOMMU_DOMAIN_UNMANAGED, ops.domain_ops(provided),
                         pgsize_bitmap=bitmap, geometry=geo, dirty_ops=not no_dirty)
        self.mock = mock
        self.pt = pt
        try:
            self.did = mock.alloc_did()
        except IommuError:
            pt.free()
            raise
        self.dirty_tracking = False


class MockNestedDomain(IommuDomain):
    """``struct mock_iommu_domain_nested``: a fake stage 1 with a 4-slot IOTLB; DMA goes
    through the parent's page table (the mock has no stage-1 walker)."""

    def __init__(self, ops: IommuOps, parent: MockPagingDomain, iotlb: int,
                 viommu: IommufdViommu | None) -> None:
        super().__init__(IOMMU_DOMAIN_NESTED, ops.domain_ops(NESTED_OPS))
        self.parent = parent
        self.viommu = viommu
        self.iotlb = [iotlb] * st.MOCK_NESTED_DOMAIN_IOTLB_NUM


class MockViommu:
    """``struct mock_viommu``."""

    def __init__(self, s2_parent: MockPagingDomain) -> None:
        self.s2_parent = s2_parent
        self.page = 0
        self.mmap_offset = 0
        self.hw_queue: list[IommufdHwQueue | None] = [None] * st.IOMMU_TEST_HW_QUEUE_MAX


@attrs.frozen
class MockHwQueue:
    """``struct mock_hw_queue``: its index and the queue it depends on."""

    index: int
    prev: IommufdHwQueue | None


def _mdev(dev: Device) -> MockDev:
    priv = dev.iommu.priv
    if not isinstance(priv, MockDev):
        raise IommuError(errno.ENODEV, f"{dev.name} is not a mock device")
    return priv


def _paging_of(domain: IommuDomain) -> MockPagingDomain | None:
    if isinstance(domain, MockPagingDomain):
        return domain
    if isinstance(domain, MockNestedDomain):
        return domain.parent
    return None


def _ctx_q0(domain: IommuDomain) -> tuple[int, int]:
    """The context entry (q0, root) that makes the hardware use ``domain``."""
    paging = _paging_of(domain)
    if paging is None:
        return mhw.make_ctx_q0(mhw.MODE_ABORT), 0
    return mhw.make_ctx_q0(mhw.MODE_TRANSLATE, MOCK_LEVELS, paging.did,
                           paging.dirty_tracking), paging.pt.root


def _program_rid(mock: MockIommu, dev: Device, domain: IommuDomain) -> None:
    mdev = _mdev(dev)
    q0, root = _ctx_q0(domain)
    if mdev.pasid_dir:
        q0 |= mhw.CTX_PASID_EN
    addr = mock.dte_addr(dev.rid)
    mock.mem.write_qwords(addr, (q0, root, mdev.pasid_dir, 0))
    mock.contexts[(dev.rid, -1)] = domain
    mock.inv(mhw.INV_DEVICE, arg=dev.rid)


def _pasid_slot(mock: MockIommu, mdev: MockDev, pasid: int, create: bool) -> int:
    """Address of the PASID entry, allocating its leaf table on demand (0 if absent)."""
    if not mdev.pasid_dir:
        return 0
    idx = pasid >> 8
    ent = mdev.pasid_tables.get(idx)
    if ent is None:
        if not create:
            return 0
        page = mock.alloc.alloc_page()
        ent = mdev.pasid_tables[idx] = [page, 0]
        mock.mem.write_u64(mdev.pasid_dir + (idx << 3), page | mhw.PTR_V)
    return ent[0] + (pasid & 0xFF) * mhw.PASID_ENTRY_SIZE


def _program_pasid(mock: MockIommu, dev: Device, pasid: int, domain: IommuDomain) -> None:
    mdev = _mdev(dev)
    blocked = _paging_of(domain) is None
    slot = _pasid_slot(mock, mdev, pasid, create=not blocked)
    if not slot:
        if not blocked:
            raise IommuError(errno.EINVAL, f"{dev.name} has no PASID table")
        return
    idx = pasid >> 8
    table = mdev.pasid_tables[idx]
    old_valid = bool(mock.mem.read_u64(slot) & mhw.CTX_V)
    if blocked:
        mock.mem.write_qwords(slot, (0, 0))
        mock.contexts.pop((dev.rid, pasid), None)
        if old_valid:
            table[1] -= 1
    else:
        q0, root = _ctx_q0(domain)
        mock.mem.write_qwords(slot, (q0, root))
        mock.contexts[(dev.rid, pasid)] = domain
        if not old_valid:
            table[1] += 1
    mock.inv(mhw.INV_PASID, arg=dev.rid | (pasid << 16))
    if not table[1]:
        # The last PASID of this leaf went away: unlink the leaf, then free it.
        mock.mem.write_u64(mdev.pasid_dir + (idx << 3), 0)
        mock.inv(mhw.INV_DEVICE, arg=dev.rid)
        mock.alloc.free_page(table[0])
        del mdev.pasid_tables[idx]


def _reprogram_domain(mock: MockIommu, paging: MockPagingDomain) -> None:
    """Rewrite every context using ``paging`` (directly or as a nested parent)."""
    platform_devs = {d.rid: d for d in mock.core.platform.devices.values()
                     if d.iommu is not None and d.iommu.iommu_dev is mock.iommu}
    for (rid, pasid), dom in list(mock.contexts.items()):
        if _paging_of(dom) is not paging or rid not in platform_devs:
            continue
        dev = platform_devs[rid]
        if pasid < 0:
            _program_rid(mock, dev, dom)
        else:
            _program_pasid(mock, dev, pasid, dom)


def _free_pasid_tables(mock: MockIommu, mdev: MockDev) -> None:
    for page, _n in mdev.pasid_tables.values():
        mock.alloc.free_page(page)
    mdev.pasid_tables.clear()
    if mdev.pasid_dir:
        mock.alloc.free_pages(mdev.pasid_dir, 3)
        mdev.pasid_dir = 0


def _mock_of_ops(core: IommuCore, plugin: object) -> IommuOps:
    for ops in core.plugins.drivers.values():
        if ops.pm.is_registered(plugin):
            return ops
    raise IommuError(errno.ENODEV, "mock driver plugin is not registered")


# ======================================================================================
# the plugin
# ======================================================================================
class MockDriver(MockDescribe):
    """Hook implementations of the mock driver (stateless; see the module docstring)."""

    # -- platform -----------------------------------------------------------------------
    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> IommuHardware:
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise IommuError(errno.EINVAL, f"mock: unknown options {sorted(unknown)}")
        return mhw.MockIommuHw(name, platform.mem, platform.tracer,
                               iotlb_size=int(options.get("iotlb_size", 256)))

    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        blocked = MockBlockedDomain(IOMMU_DOMAIN_BLOCKED, ops.domain_ops(BLOCKED_OPS),
                                    name="mock-blocking")
        ops.blocked_domain = blocked
        ops.default_domain = blocked
        ops.user_pasid_table = True

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        mock = MockIommu(core, res, _mock_of_ops(core, self))
        core.iommu_device_register(mock.iommu)
        return mock.iommu

    @hookimpl
    def iommu_driver_remove(self, iommu: IommuDevice) -> bool:
        mock: MockIommu = iommu.priv
        mock.remove()
        return True

    # -- iommu_ops -------------------------------------------------------------------------
    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        iommu: IommuDevice = dev.iommu.iommu_dev
        mock: MockIommu = iommu.priv
        if not 0 <= dev.rid <= 0xFFFF:
            raise IommuError(errno.ENODEV, f"{dev.name}: bad requester ID")
        if any(d is not dev and d.rid == dev.rid and d.iommu is not None
               and d.iommu.iommu_dev is iommu for d in mock.core.platform.devices.values()):
            raise IommuError(errno.EEXIST, f"{dev.name}: requester ID {dev.rid:#x} in use")
        mdev = MockDev(mock, dev)
        if dev.iommu.max_pasids:
            # PASID-capable devices get their PASID directory for their lifetime.
            mdev.pasid_dir = mock.alloc.alloc_pages(3)
        dev.iommu.priv = mdev
        return iommu

    @hookimpl
    def release_device(self, dev: Device) -> bool:
        mdev = _mdev(dev)
        mock = mdev.mock
        mock.mem.write_qwords(mock.dte_addr(dev.rid), (0, 0, 0, 0))
        mock.inv(mhw.INV_DEVICE, arg=dev.rid)
        for key in [k for k in mock.contexts if k[0] == dev.rid]:
            del mock.contexts[key]
        _free_pasid_tables(mock, mdev)
        dev.iommu.priv = None
        return True

    @hookimpl
    def device_group(self, dev: Device) -> IommuGroup:
        mock: MockIommu = dev.iommu.iommu_dev.priv
        if dev.is_pci:
            return mock.core.pci_device_group(dev)
        return mock.core.generic_device_group(dev)

    @hookimpl
    def capable(self, dev: Device, cap: int) -> bool:
        if cap == IommuCap.CACHE_COHERENCY:
            return True
        if cap == IommuCap.DIRTY_TRACKING:
            mdev = _mdev(dev)
            return mdev.mock.dirty and not mdev.no_dirty
        return False

    @hookimpl
    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        if data_type not in (uapi.IOMMU_HW_INFO_TYPE_DEFAULT, st.IOMMU_HW_INFO_TYPE_SELFTEST):
            raise IommuError(errno.EOPNOTSUPP, f"mock: hw_info type {data_type:#x}")
        mock = _mdev(dev).mock
        mock.core.platform.kzalloc("struct iommu_test_hw_info")
        info = st.iommu_test_hw_info(flags=0, test_reg=mock.regs.read32(mhw.REG_TEST))
        return uapi.struct_bytes(info), st.IOMMU_HW_INFO_TYPE_SELFTEST

    @hookimpl
    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
        mock = _mdev(dev).mock
        mock.regs.write64(mhw.REG_PRI_RESP,
                          (msg.grpid << 32) | ((msg.pasid & 0xFFFFF) << 8) | int(msg.code))
        return True

    # -- domain allocation -------------------------------------------------------------------
    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: UserData | None
                                  ) -> IommuDomain:
        mdev = _mdev(dev)
        allowed = (IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_NEST_PARENT
                   | IOMMU_HWPT_ALLOC_PASID)
        no_dirty = mdev.no_dirty or not mdev.mock.dirty
        if flags & ~allowed or (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING and no_dirty):
            raise IommuError(errno.EOPNOTSUPP, f"mock: paging flags {flags:#x}")
        pagetable_type = st.MOCK_IOMMUPT_DEFAULT
        if user_data is not None:
            if user_data.type not in (st.IOMMU_HWPT_DATA_SELFTEST, uapi.IOMMU_HWPT_DATA_NONE):
                raise IommuError(errno.EOPNOTSUPP, f"mock: data type {user_data.type:#x}")
            cfg = user_data.copy_struct(st.iommu_hwpt_selftest, st.IOMMU_HWPT_DATA_SELFTEST,
                                        "iotlb")
            pagetable_type = cfg.pagetable_type
        if pagetable_type not in (st.MOCK_IOMMUPT_DEFAULT, st.MOCK_IOMMUPT_HUGE):
            raise IommuError(errno.EOPNOTSUPP, f"mock: pagetable_type {pagetable_type}")
        ops: IommuOps = dev.iommu.ops
        # selftest.c (generic-pt mock): dirty_ops only when DIRTY_TRACKING was asked for,
        # so an automatic (flags 0) domain can be shared with a NO_DIRTY device.
        with_dirty = bool(flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        mdev.mock.core.platform.kzalloc("struct mock_iommu_domain")
        return MockPagingDomain(mdev.mock, ops, not with_dirty, pagetable_type)

    @hookimpl
    def domain_alloc_nested(self, dev: Device, parent: IommuDomain, flags: int,
                            user_data: UserData) -> IommuDomain:
        if flags & ~IOMMU_HWPT_ALLOC_PASID:
            raise IommuError(errno.EOPNOTSUPP, f"mock: nested flags {flags:#x}")
        if not isinstance(parent, MockPagingDomain):
            raise IommuError(errno.EINVAL, "mock: parent is not a mock paging domain")
        return _alloc_nested(dev.iommu.ops, parent, user_data, None)

    # -- domain ops -----------------------------------------------------------------------
    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        mdev = _mdev(dev)
        if domain.dirty_ops and mdev.no_dirty:
            raise IommuError(errno.EINVAL, f"{dev.name} cannot take a dirty-tracking domain")
        new_viommu = None
        vdev_id = 0
        if isinstance(domain, MockNestedDomain) and domain.viommu is not None:
            new_viommu = domain.viommu
            got = new_viommu.get_vdev_id(dev)
            if got is None:
                raise IommuError(errno.ENOENT, f"{dev.name} has no vDEVICE in the vIOMMU")
            vdev_id = got
        _program_rid(mdev.mock, dev, domain)
        mdev.viommu = new_viommu
        mdev.vdev_id = vdev_id
        return True

    @hookimpl
    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> bool:
        mdev = _mdev(dev)
        armed = mdev.pasid_1024_fake_error
        if pasid == st.IOMMU_TEST_PASID_RESERVED:
            # The first attach at 1024 arms a failure of the next one (replace test);
            # detaching disarms it.
            if domain.type == IOMMU_DOMAIN_BLOCKED:
                armed = False
            elif armed:
                mdev.pasid_1024_fake_error = False
                raise IommuError(errno.ENOMEM, "mock: injected set_dev_pasid failure")
            else:
                armed = True
        _program_pasid(mdev.mock, dev, pasid, domain)
        mdev.pasid_1024_fake_error = armed
        return True

    @hookimpl
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int) -> int:
        assert isinstance(domain, MockPagingDomain)
        return domain.pt.map_pages(iova, paddr, pgsize, pgcount, prot)

    @hookimpl
    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        assert isinstance(domain, MockPagingDomain)
        return domain.pt.unmap_pages(iova, pgsize, pgcount, gather)

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> bool:
        assert isinstance(domain, MockPagingDomain)
        domain.mock.inv(mhw.INV_DID, did=domain.did)
        domain.pt.release_freelist(gather)
        return True

    @hookimpl
    def flush_iotlb_all(self, domain: IommuDomain) -> bool:
        paging = _paging_of(domain)
        if paging is not None:
            paging.mock.inv(mhw.INV_DID, did=paging.did)
        return True

    @hookimpl
    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        assert isinstance(domain, MockPagingDomain)
        return domain.pt.iova_to_phys(iova)

    @hookimpl
    def free(self, domain: IommuDomain) -> bool:
        if isinstance(domain, MockPagingDomain):
            domain.mock.inv(mhw.INV_DID, did=domain.did)
            domain.pt.free()
            domain.mock.free_did(domain.did)
        return True

    @hookimpl
    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> bool:
        assert isinstance(domain, MockPagingDomain)
        if enabled and not domain.dirty_ops:
            raise IommuError(errno.EINVAL, "mock: domain has no dirty tracking")
        if domain.dirty_tracking != enabled:
            domain.dirty_tracking = enabled
            _reprogram_domain(domain.mock, domain)
        return True

    @hookimpl
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> bool:
        assert isinstance(domain, MockPagingDomain)
        domain.pt.read_and_clear_dirty(iova, size, flags, dirty.record)
        return True

    @hookimpl
    def cache_invalidate_user(self, domain: IommuDomain, array: UserDataArray) -> bool:
        assert isinstance(domain, MockNestedDomain)
        processed = 0
        try:
            if array.type != st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST:
                raise IommuError(errno.EINVAL, f"mock: invalidation type {array.type:#x}")
            for i in range(array.entry_num):
                inv = array.copy_entry(st.iommu_hwpt_invalidate_selftest,
                                       st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, "iotlb_id")
                if inv.flags & ~st.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise IommuError(errno.EOPNOTSUPP, f"mock: flags {inv.flags:#x}")
                if inv.iotlb_id > st.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX:
                    raise IommuError(errno.EINVAL, f"mock: iotlb_id {inv.iotlb_id}")
                if inv.flags & st.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    domain.iotlb = [0] * st.MOCK_NESTED_DOMAIN_IOTLB_NUM
                else:
                    domain.iotlb[inv.iotlb_id] = 0
                processed += 1
        finally:
            array.entry_num = processed
        return True

    # -- vIOMMU ----------------------------------------------------------------------------
    @hookimpl
    def get_viommu_size(self, dev: Device, viommu_type: int) -> int:
        return 1 if viommu_type == st.IOMMU_VIOMMU_TYPE_SELFTEST else 0

    @hookimpl
    def viommu_init(self, viommu: IommufdViommu, parent_domain: IommuDomain,
                    user_data: UserData | None) -> bool:
        if not isinstance(parent_domain, MockPagingDomain):
            raise IommuError(errno.EINVAL, "mock: vIOMMU parent is not a mock domain")
        ops = viommu.iommu_dev.ops
        mock: MockIommu = viommu.iommu_dev.priv
        mv = MockViommu(parent_domain)
        if user_data is not None:
            data = user_data.copy_struct(st.iommu_viommu_selftest,
                                         st.IOMMU_VIOMMU_TYPE_SELFTEST, "out_data")
            mv.page = mock.alloc.alloc_pages(1)
            try:
                mv.mmap_offset = viommu.alloc_mmap(mv.page, 2 * PAGE_SIZE)
                try:
                    mock.mem.write_u32(mv.page, data.in_data)  # loopback through the page
                    data.out_data = data.in_data
                    data.out_mmap_length = 2 * PAGE_SIZE
                    data.out_mmap_offset = mv.mmap_offset
                    user_data.respond_struct(data, "out_data")
                except IommuError:
                    viommu.destroy_mmap(mv.mmap_offset)
                    raise
            except IommuError:
                mock.alloc.free_pages(mv.page, 1)
                raise
        viommu.priv = mv
        viommu.ops = ops.viommu_ops(VIOMMU_OPS)
        return True

    @hookimpl
    def viommu_destroy(self, viommu: IommufdViommu) -> bool:
        mv: MockViommu = viommu.priv
        if mv.page:
            viommu.destroy_mmap(mv.mmap_offset)
            mock: MockIommu = viommu.iommu_dev.priv
            mock.alloc.free_pages(mv.page, 1)
            mv.page = 0
        return True

    @hookimpl
    def viommu_alloc_domain_nested(self, viommu: IommufdViommu, flags: int,
                                   user_data: UserData) -> IommuDomain:
        if flags & ~IOMMU_HWPT_ALLOC_PASID:
            raise IommuError(errno.EOPNOTSUPP, f"mock: nested flags {flags:#x}")
        mv: MockViommu = viommu.priv
        return _alloc_nested(viommu.iommu_dev.ops, mv.s2_parent, user_data, viommu)

    @hookimpl
    def viommu_cache_invalidate(self, viommu: IommufdViommu, array: UserDataArray) -> bool:
        if array.entry_num == 0 and array.type == st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST:
            return True
        done = 0
        try:
            cmds = array.copy_full_array(st.iommu_viommu_invalidate_selftest,
                                         st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST)
            for cur in cmds:
                if cur.flags & ~st.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise IommuError(errno.EOPNOTSUPP, f"mock: flags {cur.flags:#x}")
                if cur.cache_id > st.MOCK_DEV_CACHE_ID_MAX:
                    raise IommuError(errno.EINVAL, f"mock: cache_id {cur.cache_id}")
                dev = viommu.find_dev(cur.vdev_id)
                if dev is None:
                    raise IommuError(errno.EINVAL, f"mock: no vDEVICE {cur.vdev_id:#x}")
                mdev = _mdev(dev)
                if cur.flags & st.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    mdev.cache = [0] * st.MOCK_DEV_CACHE_NUM
                else:
                    mdev.cache[cur.cache_id] = 0
                done += 1
        finally:
            array.entry_num = done
        return True

    @hookimpl
    def viommu_get_hw_queue_size(self, viommu: IommufdViommu, queue_type: int) -> int:
        return 1 if queue_type == st.IOMMU_HW_QUEUE_TYPE_SELFTEST else 0

    @hookimpl
    def viommu_hw_queue_init_phys(self, hw_queue: IommufdHwQueue, index: int,
                                  base_addr_pa: int) -> bool:
        viommu = hw_queue.viommu
        mv: MockViommu = viommu.priv
        if index >= st.IOMMU_TEST_HW_QUEUE_MAX:
            raise IommuError(errno.EINVAL, f"mock: HW queue index {index}")
        if mv.hw_queue[index] is not None:
            raise IommuError(errno.EEXIST, f"mock: HW queue {index} exists")
        prev = None
        if index:
            prev = mv.hw_queue[index - 1]
            if prev is None:
                raise IommuError(errno.EIO, f"mock: HW queue {index - 1} must exist first")
        mock: MockIommu = viommu.iommu_dev.priv
        # Catch a core that converted the address wrongly.
        if base_addr_pa != mock.core.iommu_iova_to_phys(mv.s2_parent, hw_queue.base_addr):
            raise IommuError(errno.EFAULT, "mock: queue address does not match the parent")
        if prev is not None:
            hw_queue.depend(prev)
        hw_queue.priv = MockHwQueue(index, prev)
        mv.hw_queue[index] = hw_queue
        return True

    @hookimpl
    def viommu_hw_queue_destroy(self, hw_queue: IommufdHwQueue) -> bool:
        mq: MockHwQueue | None = hw_queue.priv
        if mq is None:
            return True
        mv: MockViommu = hw_queue.viommu.priv
        mv.hw_queue[mq.index] = None
        if mq.prev is not None:
            hw_queue.undepend(mq.prev)
        hw_queue.priv = None
        return True

    # -- selftest hooks ----------------------------------------------------------------------
    @hookimpl
    def mock_domain_read_iotlb(self, domain: IommuDomain, iotlb_id: int) -> int | None:
        if isinstance(domain, MockNestedDomain):
            return domain.iotlb[iotlb_id]
        return None

    @hookimpl
    def mock_dev_read_cache(self, dev: Device, cache_id: int) -> int:
        return _mdev(dev).cache[cache_id]

    @hookimpl
    def mock_domain_set_dirty(self, domain: IommuDomain, iova: int) -> bool:
        assert isinstance(domain, MockPagingDomain)
        try:
            domain.pt.set_dirty(iova)
        except IommuError:
            return False
        return True

    @hookimpl
    def mock_domain_dirty_enabled(self, domain: IommuDomain) -> bool:
        return isinstance(domain, MockPagingDomain) and domain.dirty_tracking

    @hookimpl
    def mock_viommu_hw_queue_check(self, viommu: IommufdViommu) -> int:
        mv: MockViommu = viommu.priv
        return sum(q is not None for q in mv.hw_queue)

    @hookimpl
    def mock_dev_trigger_vevent(self, dev: Device) -> bool:
        mdev = _mdev(dev)
        if mdev.viommu is None or not mdev.vdev_id:
            return False
        event = st.iommu_viommu_event_selftest(virt_id=mdev.vdev_id)
        mdev.viommu.report_event(st.IOMMU_VEVENTQ_TYPE_SELFTEST, uapi.struct_bytes(event))
        return True


def _alloc_nested(ops: IommuOps, parent: MockPagingDomain, user_data: UserData,
                  viommu: IommufdViommu | None) -> MockNestedDomain:
    if user_data.type != st.IOMMU_HWPT_DATA_SELFTEST:
        raise IommuError(errno.EOPNOTSUPP, f"mock: nested data type {user_data.type:#x}")
    cfg = user_data.copy_struct(st.iommu_hwpt_selftest, st.IOMMU_HWPT_DATA_SELFTEST, "iotlb")
    parent.mock.core.platform.kzalloc("struct mock_iommu_domain_nested")
    return MockNestedDomain(ops, parent, cfg.iotlb, viommu)


plugin = MockDriver()

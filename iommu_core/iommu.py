"""The IOMMU core (drivers/iommu/iommu.c + io-pgfault.c): device probe, groups, default
domains, DMA ownership, attach/replace, PASID attach, map/unmap, reserved regions and
I/O page-fault routing. Names and errnos follow the kernel's functions.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
from typing import TYPE_CHECKING, Any

from iommu_core.device import DevIommu, IommuCap, IommuDevice, ResvRegion, ResvType
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
    IOMMU_DOMAIN_DMA,
    IOMMU_DOMAIN_IDENTITY,
    IOMMU_DOMAIN_NESTED,
    IOMMU_DOMAIN_UNMANAGED,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import IOMMU_NO_PASID, AttachHandle, IommuGroup
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    FaultParam,
    IopfGroup,
    PageRequest,
    PageResponse,
    PageResponseCode,
)
from iommu_core.plugin import IommuOps, PluginHost
from iommu_core.trace import traced

if TYPE_CHECKING:
    from iommu_core.iommufd_driver import UserData
    from iommu_core.platform.bus import Device
    from iommu_core.platform.platform import Platform


def _dev(dev: Device, *a: Any, **k: Any) -> str:
    return dev.name


def _dom_grp(domain: IommuDomain, group: IommuGroup, *a: Any, **k: Any) -> str:
    return f"{domain.name} group {group.id}"


def _dom_dev_pasid(domain: IommuDomain, dev: Device, pasid: int, *a: Any, **k: Any) -> str:
    return f"{domain.name} {dev.name} pasid {pasid}"


def _map_args(domain: IommuDomain, iova: int, paddr: int, size: int, *a: Any, **k: Any
              ) -> str:
    return f"{domain.name} iova {iova:#x} -> pa {paddr:#x} size {size:#x}"


def _unmap_args(domain: IommuDomain, iova: int, size: int, *a: Any, **k: Any) -> str:
    return f"{domain.name} iova {iova:#x} size {size:#x}"


class IommuCore:
    """The kernel's IOMMU core for one Machine."""

    def __init__(self, platform: Platform, plugins: PluginHost | None = None) -> None:
        self.platform = platform
        self.plugins = plugins or PluginHost()
        self.tracer = platform.tracer
        self.iommus: dict[str, IommuDevice] = {}
        self.groups: dict[int, IommuGroup] = {}
        self._group_ids = itertools.count(0)
        #: "passthrough" (iommu.passthrough=1) or "translated"; strict invalidation.
        self.default_passthrough = False

    # ===================================================================================
    # Registration and probe
    # ===================================================================================
    def iommu_device_register(self, iommu: IommuDevice) -> None:
        """``iommu_device_register``: publish the unit, then probe the devices behind it."""
        if iommu.name in self.iommus:
            raise IommuError(errno.EEXIST, f"IOMMU {iommu.name} already registered")
        self.iommus[iommu.name] = iommu
        iommu.registered = True
        for dev in list(self.platform.devices.values()):
            if dev.iommu_name == iommu.name and dev.iommu is None:
                self.probe_device(dev)

    def iommu_device_unregister(self, iommu: IommuDevice) -> None:
        for dev in list(self.platform.devices.values()):
            if dev.iommu is not None and dev.iommu.iommu_dev is iommu:
                self.release_device(dev)
        self.iommus.pop(iommu.name, None)
        iommu.registered = False

    def add_device(self, dev: Device) -> None:
        """Hot-plug: put ``dev`` on the platform and probe it (the bus notifier)."""
        self.platform.add_device(dev)
        if dev.iommu_name in self.iommus:
            try:
                self.probe_device(dev)
            except IommuError:
                self.platform.remove_device(dev)
                raise

    def iommu_mock_device_add(self, dev: Device) -> None:
        """``iommu_mock_device_add``: the fwspec, then ``device_add``, whose bus notifier
        probes the device. The notifier ignores a probe failure (``iommu_bus_notifier``
        returns NOTIFY_DONE): the device is then simply not behind an IOMMU."""
        self.platform.kzalloc("struct iommu_fwspec")
        self.platform.add_device(dev)
        if dev.iommu_name in self.iommus:
            with contextlib.suppress(IommuError):
                self.probe_device(dev)

    def remove_device(self, dev: Device) -> None:
        if dev.iommu is not None:
            self.release_device(dev)
        self.platform.remove_device(dev)

    @traced("core", _dev)
    def probe_device(self, dev: Device) -> None:
        """``__iommu_probe_device``: driver probe, group, default domain, finalize."""
        iommu = self.iommus.get(dev.iommu_name)
        if iommu is None:
            raise IommuError(errno.ENODEV, f"{dev.name}: IOMMU {dev.iommu_name} not present")
        ops = iommu.ops
        self.platform.kzalloc("struct dev_iommu")  # dev_iommu_get
        max_pasids = 0
        if dev.pasid_bits and iommu.max_pasid_bits:
            max_pasids = 1 << min(dev.pasid_bits, iommu.max_pasid_bits)
        dev.iommu = DevIommu(iommu_dev=iommu, max_pasids=max_pasids,
                             require_direct=dev.require_direct, fault_param=FaultParam())
        try:
            got = ops.probe_device(dev)
            if got is not iommu:
                raise IommuError(errno.ENODEV, f"{dev.name} probed by another unit")
        except IommuError:
            dev.iommu = None
            raise
        try:
            group = ops.device_group(dev)
            self.platform.kzalloc("struct group_device")  # iommu_group_alloc_device
            group.devices.append(dev)
            dev.iommu_group = group
            self.groups[group.id] = group
            self._setup_default_domain(group, dev)
        except IommuError:
            self._drop_from_group(dev)
            ops.release_device(dev)
            dev.iommu = None
            raise
        ops.probe_finalize(dev)

    @traced("core", _dev)
    def release_device(self, dev: Device) -> None:
        """``iommu_release_device``: park the device, let the driver go, leave the group."""
        if dev.iommu is None:
            return
        ops = dev.iommu.ops
        group = dev.iommu_group
        if group is not None:
            for pasid, handle in list(group.pasid_array.items()):
                if pasid != IOMMU_NO_PASID:
                    self._remove_dev_pasid(dev, pasid, handle.domain)
            self.iopf_queue_remove_device(dev)
            release = ops.release_domain or ops.blocked_domain
            if dev.require_direct and ops.identity_domain is not None:
                release = ops.identity_domain
            if release is not None and len(group.devices) == 1:
                with contextlib.suppress(IommuError), self.platform.nofail():
                    release.ops.attach_dev(release, dev, group.domain)
        ops.release_device(dev)
        self._drop_from_group(dev)
        dev.iommu = None

    def _drop_from_group(self, dev: Device) -> None:
        group: IommuGroup | None = dev.iommu_group
        if group is None:
            return
        if dev in group.devices:
            group.devices.remove(dev)
        dev.iommu_group = None
        if not group.devices:
            for dom in (group.default_domain, group.blocking_domain):
                if dom is not None:
                    self.iommu_domain_free(dom)
            group.default_domain = group.blocking_domain = group.domain = None
            self.groups.pop(group.id, None)

    # -- groups --------------------------------------------------------------------------
    def iommu_group_alloc(self, name: str = "") -> IommuGroup:
        self.platform.kzalloc("struct iommu_group")
        gid = next(self._group_ids)
        return IommuGroup(id=gid, name=name or str(gid))

    def generic_device_group(self, dev: Device) -> IommuGroup:
        return self.iommu_group_alloc()

    generic_single_device_group = generic_device_group

    def pci_device_group(self, dev: Device) -> IommuGroup:
        """Devices that cannot be isolated from each other share a group. The platform
        says so with the ``iommu_group`` device property (an alias name)."""
        alias = dev.props.get("iommu_group")
        if alias is not None:
            for other in self.platform.devices.values():
                g = other.iommu_group
                if g is not None and other is not dev and other.props.get(
                        "iommu_group") == alias and other.iommu_name == dev.iommu_name:
                    return g  # type: ignore[no-any-return]
        return self.iommu_group_alloc()

    # -- default domain ------------------------------------------------------------------
    def _default_domain_type(self, dev: Device) -> int:
        ops = dev.iommu.ops
        if ops.default_domain is not None:
            return int(ops.default_domain.type)
        t = ops.def_domain_type(dev)
        if t:
            return int(t)
        if dev.require_direct and ops.identity_domain is not None:
            return IOMMU_DOMAIN_IDENTITY
        return IOMMU_DOMAIN_IDENTITY if self.default_passthrough else IOMMU_DOMAIN_DMA

    def _setup_default_domain(self, group: IommuGroup, dev: Device) -> None:
        """``iommu_setup_default_domain``: the first device chooses; later devices join."""
        ops = dev.iommu.ops
        if group.default_domain is None:
            dtype = self._default_domain_type(dev)
            if ops.default_domain is not None:
                dom = ops.default_domain
            elif dtype == IOMMU_DOMAIN_IDENTITY:
                dom = ops.identity_domain or ops.domain_alloc_identity(dev)
            else:
                dom = self._paging_domain_alloc(dev, 0, None, dtype)
            group.default_domain = dom
        dom = group.default_domain
        assert dom is not None
        if dom.is_paging:
            self._create_direct_mappings(dom, dev)
        if group.domain is None:
            dom.ops.attach_dev(dom, dev, None)
            group.domain = dom
        elif not ops.is_attach_deferred(dev):
            group.domain.ops.attach_dev(group.domain, dev, None)

    def _create_direct_mappings(self, domain: IommuDomain, dev: Device) -> None:
        """``iommu_create_device_direct_mappings``: 1:1 map IOMMU_RESV_DIRECT regions."""
        for r in self.iommu_get_resv_regions(dev):
            if r.type not in (ResvType.DIRECT, ResvType.DIRECT_RELAXABLE):
                continue
            pg = self._min_pgsize(domain)
            start = r.start & ~(pg - 1)
            end = (r.start + r.length + pg - 1) & ~(pg - 1)
            for addr in range(start, end, pg):
                if self.iommu_iova_to_phys(domain, addr) == 0:
                    self.iommu_map(domain, addr, addr, pg, r.prot)

    # ===================================================================================
    # Domain allocation and free
    # ===================================================================================
    def _paging_domain_alloc(self, dev: Device, flags: int, user_data: UserData | None,
                             dtype: int) -> IommuDomain:
        ops: IommuOps = dev.iommu.ops
        if ops.implements("domain_alloc_paging_flags"):
            dom = ops.domain_alloc_paging_flags(dev, flags, user_data)
        elif flags == 0 and user_data is None and ops.implements("domain_alloc_paging"):
            dom = ops.domain_alloc_paging(dev)
        else:
            raise IommuError(errno.EOPNOTSUPP,
                             f"{ops.name} cannot allocate a paging domain with flags {flags:#x}")
        dom.type = dtype
        return dom

    @traced("core", lambda dev, flags=0, user_data=None: f"{dev.name} flags {flags:#x}")
    def iommu_paging_domain_alloc_flags(self, dev: Device, flags: int = 0,
                                        user_data: UserData | None = None) -> IommuDomain:
        """``iommu_paging_domain_alloc_flags``: an UNMANAGED paging domain for ``dev``."""
        self._need_iommu(dev)
        return self._paging_domain_alloc(dev, flags, user_data, IOMMU_DOMAIN_UNMANAGED)

    def iommu_domain_free(self, domain: IommuDomain) -> None:
        """``iommu_domain_free``: static identity/blocked domains are never freed."""
        ops = domain.owner
        if domain in (ops.identity_domain, ops.blocked_domain, ops.release_domain,
                      ops.default_domain) or domain.freed:
            return
        domain.freed = True
        domain.ops.free(domain)

    def _need_iommu(self, dev: Device) -> DevIommu:
        if dev.iommu is None:
            raise IommuError(errno.ENODEV, f"{dev.name} is not behind a probed IOMMU")
        di: DevIommu = dev.iommu
        return di

    # ===================================================================================
    # DMA ownership
    # ===================================================================================
    def iommu_device_use_default_domain(self, dev: Device) -> None:
        """A kernel driver binds: refused while a user owns the group (EBUSY)."""
        group = dev.iommu_group
        if group is None:
            return
        if group.owner is not None or group.domain is not group.default_domain or any(
                p != IOMMU_NO_PASID for p in group.pasid_array):
            raise IommuError(errno.EBUSY, f"group {group.id} is in use by a user owner")
        group.owner_cnt += 1

    def iommu_device_unuse_default_domain(self, dev: Device) -> None:
        group = dev.iommu_group
        if group is not None and group.owner_cnt and group.owner is None:
            group.owner_cnt -= 1

    def _get_blocking_domain(self, group: IommuGroup, dev: Device) -> IommuDomain:
        if group.blocking_domain is None:
            ops = dev.iommu.ops
            if ops.blocked_domain is not None:
                group.blocking_domain = ops.blocked_domain
            else:  # old drivers: an empty paging domain blocks everything
                group.blocking_domain = self._paging_domain_alloc(
                    dev, 0, None, IOMMU_DOMAIN_UNMANAGED)
        return group.blocking_domain

    @traced("core", lambda dev, owner: dev.name)
    def iommu_device_claim_dma_owner(self, dev: Device, owner: object) -> None:
        """``iommu_device_claim_dma_owner``: user ownership puts the group on its blocking
        domain. Another owner: EPERM; a kernel user or PASIDs attached: EBUSY/EPERM."""
        if owner is None:
            raise IommuError(errno.EINVAL, "an owner cookie is required")
        self._need_iommu(dev)
        group = dev.iommu_group
        if group.owner_cnt:
            if group.owner is not owner:
                raise IommuError(errno.EPERM, f"group {group.id} has another DMA owner")
            group.owner_cnt += 1
            return
        self._take_dma_ownership(group, dev, owner)
        group.owner_cnt = 1

    def iommu_group_claim_dma_owner(self, group: IommuGroup, owner: object) -> None:
        if group.owner_cnt:
            raise IommuError(errno.EPERM, f"group {group.id} already has a DMA owner")
        self._take_dma_ownership(group, group.devices[0], owner)
        group.owner_cnt = 1

    def _take_dma_ownership(self, group: IommuGroup, dev: Device, owner: object) -> None:
        if group.domain is not group.default_domain or any(
                p != IOMMU_NO_PASID for p in group.pasid_array):
            raise IommuError(errno.EBUSY, f"group {group.id} is not on its default domain")
        blocking = self._get_blocking_domain(group, dev)
        self._group_set_domain(group, blocking)
        group.owner = owner

    @traced("core", _dev)
    def iommu_device_release_dma_owner(self, dev: Device) -> None:
        group = dev.iommu_group
        if group is None or not group.owner_cnt:
            return
        group.owner_cnt -= 1
        if group.owner_cnt:
            return
        group.owner = None
        group.pasid_array.pop(IOMMU_NO_PASID, None)
        if group.default_domain is not None:
            self._group_set_domain(group, group.default_domain, force=True)

    iommu_group_release_dma_owner = iommu_device_release_dma_owner

    # ===================================================================================
    # Attach / replace (RID)
    # ===================================================================================
    @staticmethod
    def domain_iommu_ops_compatible(dev: Device, domain: IommuDomain) -> bool:
        ops = dev.iommu.ops
        return domain.owner is ops or domain in (ops.identity_domain, ops.blocked_domain)

    def _group_set_domain(self, group: IommuGroup, new: IommuDomain, force: bool = False
                          ) -> None:
        """``__iommu_group_set_domain_internal``: attach every device; on failure put back
        the devices already moved, so the group stays on its old domain."""
        old = group.domain
        if old is new:
            return
        for dev in group.devices:
            if not self.domain_iommu_ops_compatible(dev, new):
                raise IommuError(errno.EINVAL, f"{new!r} belongs to another IOMMU driver")
            if dev.iommu.require_direct and (
                    new.type == IOMMU_DOMAIN_BLOCKED or new is group.blocking_domain):
                raise IommuError(errno.EINVAL, f"{dev.name}: firmware has requested this "
                                 "device have a 1:1 IOMMU mapping")
        if force:
            # __iommu_group_set_domain_nofail: returning to the default or blocking
            # domain cannot fail; a device that does is left and the others go on
            with self.platform.nofail():
                for dev in group.devices:
                    with contextlib.suppress(IommuError):
                        new.ops.attach_dev(new, dev, old)
            group.domain = new
            return
        done: list[Device] = []
        try:
            for dev in group.devices:
                new.ops.attach_dev(new, dev, old)
                done.append(dev)
        except IommuError:
            for dev in done:
                if old is not None:
                    with contextlib.suppress(IommuError):
                        old.ops.attach_dev(old, dev, new)
            raise
        group.domain = new

    @traced("core", _dom_grp)
    def iommu_attach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """``iommu_attach_group``: only from the default or blocking domain (else EBUSY)."""
        if group.domain not in (group.default_domain, group.blocking_domain):
            raise IommuError(errno.EBUSY, f"group {group.id} is already attached to "
                             f"{group.domain!r}")
        self._group_set_domain(group, domain)

    @traced("core", lambda group, domain: f"group {group.id} -> {domain.name}")
    def iommu_group_replace_domain(self, group: IommuGroup, domain: IommuDomain) -> None:
        """``iommu_group_replace_domain``: hitless switch for a user-owned group."""
        if group.owner is None:
            raise IommuError(errno.EINVAL, f"group {group.id} is not user owned")
        self._group_set_domain(group, domain)

    def iommu_attach_group_handle(self, domain: IommuDomain, group: IommuGroup,
                                  handle: AttachHandle) -> None:
        """``iommu_attach_group_handle``: attach and record the handle at IOMMU_NO_PASID
        (where fault routing finds it)."""
        if IOMMU_NO_PASID in group.pasid_array:
            raise IommuError(errno.EBUSY, f"group {group.id} RID already has a handle")
        handle.domain = domain
        self.iommu_attach_group(domain, group)
        group.pasid_array[IOMMU_NO_PASID] = handle

    def iommu_replace_group_handle(self, group: IommuGroup, domain: IommuDomain,
                                   handle: AttachHandle) -> None:
        handle.domain = domain
        self.iommu_group_replace_domain(group, domain)
        group.pasid_array[IOMMU_NO_PASID] = handle

    @traced("core", _dom_grp)
    def iommu_detach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """``iommu_detach_group``: back to the blocking domain if user owned, else default."""
        if group.domain is not domain:
            return
        group.pasid_array.pop(IOMMU_NO_PASID, None)
        target = group.blocking_domain if group.owner is not None else group.default_domain
        if target is not None:
            self._group_set_domain(group, target, force=True)

    iommu_detach_group_handle = iommu_detach_group

    def iommu_attach_handle_get(self, group: IommuGroup, pasid: int, type: int = 0
                                ) -> AttachHandle:
        """``iommu_attach_handle_get``: ENOENT if none; EBUSY if of another domain type."""
        handle = group.pasid_array.get(pasid)
        if handle is None:
            raise IommuError(errno.ENOENT, f"nothing attached at pasid {pasid}")
        if type and handle.domain.type != type:
            raise IommuError(errno.EBUSY, "attached domain is of another type")
        return handle

    # ===================================================================================
    # PASID attach
    # ===================================================================================
    def _pasid_checks(self, domain: IommuDomain, dev: Device, pasid: int) -> IommuGroup:
        di = self._need_iommu(dev)
        ops = di.ops
        blocked = ops.blocked_domain
        if not domain.ops.has("set_dev_pasid") or blocked is None or not blocked.ops.has(
                "set_dev_pasid"):
            raise IommuError(errno.EOPNOTSUPP, f"{ops.name}: {domain!r} cannot be "
                             "attached to a PASID")
        if not self.domain_iommu_ops_compatible(dev, domain) or pasid == IOMMU_NO_PASID:
            raise IommuError(errno.EINVAL, "incompatible domain or PASID 0")
        if pasid < 0 or di.max_pasids == 0:
            raise IommuError(errno.EINVAL, f"{dev.name} does not support PASID {pasid}")
        group: IommuGroup = dev.iommu_group
        for d in group.devices:
            mp = d.iommu.max_pasids
            if mp > 0 and pasid >= mp:
                raise IommuError(errno.EINVAL, f"PASID {pasid} exceeds {d.name}'s "
                                 f"{mp} PASIDs")
        return group

    def _set_group_pasid(self, domain: IommuDomain, group: IommuGroup, pasid: int,
                         old: IommuDomain | None) -> None:
        done: list[Device] = []
        try:
            for d in group.devices:
                if d.iommu.max_pasids > 0:
                    domain.ops.set_dev_pasid(domain, d, pasid, old)
                    done.append(d)
        except IommuError:
            for d in done:
                if old is not None:
                    try:
                        old.ops.set_dev_pasid(old, d, pasid, domain)
                        continue
                    except IommuError:
                        pass
                self._remove_dev_pasid(d, pasid, domain)
            raise

    def _remove_dev_pasid(self, dev: Device, pasid: int, domain: IommuDomain) -> None:
        """``iommu_remove_dev_pasid``: the blocked domain takes the PASID (cannot fail)."""
        blocked = dev.iommu.ops.blocked_domain
        if blocked is not None and blocked.ops.has("set_dev_pasid"):
            with self.platform.nofail():
                blocked.ops.set_dev_pasid(blocked, dev, pasid, domain)

    @traced("core", _dom_dev_pasid)
    def iommu_attach_device_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                                  handle: AttachHandle | None = None) -> None:
        """``iommu_attach_device_pasid``: EBUSY if the PASID is already in use."""
        group = self._pasid_checks(domain, dev, pasid)
        if pasid in group.pasid_array:
            raise IommuError(errno.EBUSY, f"PASID {pasid} is already attached")
        handle = handle or AttachHandle(domain)
        handle.domain = domain
        self._set_group_pasid(domain, group, pasid, None)
        group.pasid_array[pasid] = handle

    @traced("core", _dom_dev_pasid)
    def iommu_replace_device_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                                   handle: AttachHandle) -> None:
        """``iommu_replace_device_pasid``: EINVAL if nothing is attached at ``pasid``;
        on failure the PASID keeps its old domain."""
        group = self._pasid_checks(domain, dev, pasid)
        cur = group.pasid_array.get(pasid)
        if cur is None:
            raise IommuError(errno.EINVAL, f"PASID {pasid} is not attached")
        old = cur.domain
        if old is not domain:
            self._set_group_pasid(domain, group, pasid, old)
        handle.domain = domain
        group.pasid_array[pasid] = handle

    @traced("core", _dom_dev_pasid)
    def iommu_detach_device_pasid(self, domain: IommuDomain, dev: Device, pasid: int
                                  ) -> None:
        group = dev.iommu_group
        if group is None or pasid not in group.pasid_array:
            return
        for d in group.devices:
            if d.iommu.max_pasids > 0:
                self._remove_dev_pasid(d, pasid, domain)
        del group.pasid_array[pasid]
        self.iopf_flush_dev(dev, pasid)

    # ===================================================================================
    # Map / unmap
    # ===================================================================================
    @staticmethod
    def _min_pgsize(domain: IommuDomain) -> int:
        bm = domain.pgsize_bitmap
        return bm & -bm

    @staticmethod
    def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int
                     ) -> tuple[int, int]:
        """``iommu_pgsize``: the largest page size fitting alignment and size, and how
        many of them fit before the next larger size could be used."""
        addr_merge = paddr | iova
        pgsizes = pgsize_bitmap & ((1 << size.bit_length()) - 1)
        if addr_merge:
            pgsizes &= (addr_merge & -addr_merge) * 2 - 1
        pgsize = 1 << (pgsizes.bit_length() - 1)
        count = size // pgsize
        bigger = pgsize_bitmap & ~((pgsize << 1) - 1)
        if bigger:
            nxt = bigger & -bigger
            if (iova ^ paddr) & (nxt - 1) == 0:
                offset = nxt - (addr_merge & (nxt - 1))
                if offset + nxt <= size:
                    count = offset // pgsize
        return pgsize, count

    @traced("core", _map_args)
    def iommu_map(self, domain: IommuDomain, iova: int, paddr: int, size: int, prot: int
                  ) -> None:
        """``iommu_map``: all or nothing; EINVAL for misalignment or a non-paging domain."""
        if not domain.is_paging:
            raise IommuError(errno.EINVAL, f"{domain!r} is not a paging domain")
        if not domain.ops.has("map_pages") or domain.pgsize_bitmap == 0:
            raise IommuError(errno.ENODEV, f"{domain!r} cannot map")
        min_pg = self._min_pgsize(domain)
        if (iova | paddr | size) & (min_pg - 1):
            raise IommuError(errno.EINVAL, f"unaligned map iova {iova:#x} pa {paddr:#x} size "
                             f"{size:#x} (min page {min_pg:#x})")
        if size == 0:
            raise IommuError(errno.EINVAL, "zero-size map")
        orig_iova, orig_size = iova, size
        try:
            while size:
                pgsize, count = self.iommu_pgsize(domain.pgsize_bitmap, iova, paddr, size)
                mapped = domain.ops.map_pages(domain, iova, paddr, pgsize, count, prot)
                if mapped == 0:
                    raise IommuError(errno.EINVAL, f"map_pages mapped nothing at {iova:#x}")
                iova += mapped
                paddr += mapped
                size -= mapped
        except IommuError:
            if orig_size - size:
                self.iommu_unmap(domain, orig_iova, orig_size - size)
            raise
        domain.ops.iotlb_sync_map(domain, orig_iova, orig_size)

    def iommu_unmap_fast(self, domain: IommuDomain, iova: int, size: int,
                         gather: IotlbGather) -> int:
        """``__iommu_unmap``: returns bytes unmapped; ``iova + ret`` is where it stopped."""
        if not domain.is_paging or not domain.ops.has("unmap_pages"):
            return 0
        min_pg = self._min_pgsize(domain)
        if (iova | size) & (min_pg - 1):
            return 0
        unmapped = 0
        while unmapped < size:
            pgsize, count = self.iommu_pgsize(domain.pgsize_bitmap, iova, iova,
                                              size - unmapped)
            n = domain.ops.unmap_pages(domain, iova, pgsize, count, gather)
            if not n:
                break
            iova += n
            unmapped += n
        return unmapped

    @traced("core", _unmap_args)
    def iommu_unmap(self, domain: IommuDomain, iova: int, size: int) -> int:
        gather = IotlbGather()
        n = self.iommu_unmap_fast(domain, iova, size, gather)
        self.iommu_iotlb_sync(domain, gather)
        return n

    def iommu_iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> None:
        if gather.queued:
            return
        if gather.start < gather.end or gather.freelist:
            domain.ops.iotlb_sync(domain, gather)
        gather.reset()

    def iommu_flush_iotlb_all(self, domain: IommuDomain) -> None:
        domain.ops.flush_iotlb_all(domain)

    def iommu_iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        if domain.type == IOMMU_DOMAIN_IDENTITY:
            return iova
        if domain.type == IOMMU_DOMAIN_BLOCKED:
            return 0
        return domain.ops.iova_to_phys(domain, iova)

    # ===================================================================================
    # Capabilities, reserved regions, coherency
    # ===================================================================================
    def device_iommu_capable(self, dev: Device, cap: IommuCap) -> bool:
        if dev.iommu is None:
            return False
        return bool(dev.iommu.ops.capable(dev, int(cap)))

    def iommu_get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        if dev.iommu is None:
            return []
        return list(dev.iommu.ops.get_resv_regions(dev))

    def iommu_get_group_resv_regions(self, group: IommuGroup) -> list[ResvRegion]:
        out: list[ResvRegion] = []
        for d in group.devices:
            out.extend(r for r in self.iommu_get_resv_regions(d) if r not in out)
        return sorted(out, key=lambda r: (r.start, r.length))

    def iommu_group_has_isolated_msi(self, group: IommuGroup) -> bool:
        return True

    # ===================================================================================
    # I/O page faults (io-pgfault.c)
    # ===================================================================================
    def _find_fault_handler(self, dev: Device, req: PageRequest) -> AttachHandle | None:
        group = dev.iommu_group
        if group is None:
            return None
        handle: AttachHandle | None
        if req.flags & IOMMU_FAULT_PAGE_REQUEST_PASID_VALID:
            handle = group.pasid_array.get(req.pasid)
            if handle is None:
                if not dev.iommu.ops.user_pasid_table:
                    return None
                # Faults for any PASID go through the NESTED domain attached to the RID.
                handle = group.pasid_array.get(IOMMU_NO_PASID)
                if handle is None or handle.domain.type != IOMMU_DOMAIN_NESTED:
                    return None
        else:
            handle = group.pasid_array.get(IOMMU_NO_PASID)
        if handle is None or handle.domain.iopf_handler is None:
            return None
        return handle

    @traced("core", lambda dev, req: f"{dev.name} pasid {req.pasid} grp {req.grpid} "
            f"addr {req.addr:#x}{' LAST' if req.last else ''}")
    def iommu_report_device_fault(self, dev: Device, req: PageRequest) -> None:
        """``iommu_report_device_fault``: park partial requests; the last request of a group
        goes to the domain's iopf_handler; no handler -> the core answers INVALID."""
        handle = self._find_fault_handler(dev, req)
        fp = dev.iommu.fault_param if dev.iommu is not None else None
        if handle is None or fp is None:
            if dev.iommu is not None and dev.iommu.ops.implements("page_response"):
                dev.iommu.ops.page_response(
                    dev, req, PageResponse(req.pasid, req.grpid, PageResponseCode.INVALID))
            return
        if not req.last:
            fp.partial.append(req)
            return
        mine = [f for f in fp.partial if f.grpid == req.grpid]
        fp.partial = [f for f in fp.partial if f.grpid != req.grpid]
        group = IopfGroup(dev=dev, last=req, faults=[*mine, req], attach_handle=handle)
        fp.pending.append(group)
        try:
            handle.domain.iopf_handler(group)
        except IommuError:
            self.iopf_group_response(group, PageResponseCode.FAILURE)

    def iopf_group_response(self, group: IopfGroup, code: PageResponseCode) -> None:
        """``iopf_group_response``: answer the group once; later answers are ignored."""
        if group.responded:
            return
        group.responded = True
        dev = group.dev
        fp = dev.iommu.fault_param if dev.iommu is not None else None
        if fp is not None and group in fp.pending:
            fp.pending.remove(group)
        if dev.iommu is not None:
            last = group.last
            dev.iommu.ops.page_response(dev, last, PageResponse(last.pasid, last.grpid, code))

    def iopf_queue_discard_partial(self, dev: Device) -> None:
        if dev.iommu is not None and dev.iommu.fault_param is not None:
            dev.iommu.fault_param.partial.clear()

    def iopf_flush_dev(self, dev: Device, pasid: int | None = None) -> None:
        """Drop partial requests (of one PASID) before the PASID is reused."""
        fp = dev.iommu.fault_param if dev.iommu is not None else None
        if fp is not None:
            fp.partial = [f for f in fp.partial if pasid is not None and f.pasid != pasid]

    def iopf_queue_remove_device(self, dev: Device) -> None:
        """Answer every outstanding group INVALID before the device goes."""
        fp = dev.iommu.fault_param if dev.iommu is not None else None
        if fp is None:
            return
        for group in list(fp.pending):
            self.iopf_group_response(group, PageResponseCode.INVALID)
        fp.partial.clear()

    # ===================================================================================
    # Teardown
    # ===================================================================================
    def shutdown(self) -> None:
        """Release every device and remove every driver (machine power-off)."""
        for dev in list(self.platform.devices.values()):
            if dev.iommu is not None:
                self.release_device(dev)
        for iommu in list(self.iommus.values()):
            iommu.ops.iommu_driver_remove(iommu)
            self.iommus.pop(iommu.name, None)

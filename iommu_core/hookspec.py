# mypy: disable-error-code="empty-body"
"""The driver contract: every op an IOMMU driver plugin may implement, as pluggy hook specs.

This mirrors ``struct iommu_ops``, ``struct iommu_domain_ops``, ``struct iommu_dirty_ops``
and ``struct iommufd_viommu_ops`` of include/linux/iommu.h and include/linux/iommufd.h,
plus the platform hooks that create a hardware model and probe the driver on it.

Each driver lives in its own plugin manager (see :mod:`iommu_core.plugin`), so calling a
hook reaches exactly the driver that owns the device or the domain; tracing, fault
injection and prototype plugins are registered beside it and wrap or override ops.
Every op is ``firstresult``: the first non-None answer wins, so a ``tryfirst`` plugin can
override one op of one driver. An op the driver does not implement fails with
EOPNOTSUPP in the typed facade, never silently.

Errors: raise :class:`iommu_core.errors.IommuError` with the errno Linux returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice, ResvRegion
    from iommu_core.dirty import IommuDirtyBitmap
    from iommu_core.domain import IommuDomain
    from iommu_core.gather import IotlbGather
    from iommu_core.group import IommuGroup
    from iommu_core.iommu import IommuCore
    from iommu_core.iommufd_driver import (
        IommufdHwQueue,
        IommufdVdevice,
        IommufdViommu,
        UserData,
        UserDataArray,
    )
    from iommu_core.iopf import PageRequest, PageResponse
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import IommuHardware
    from iommu_core.platform.mm import MmStruct
    from iommu_core.platform.platform import IommuResources, Platform

PROJECT = "iommu_sim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------
# Platform: hardware model creation and the driver's platform probe/remove.
# ---------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def iommu_hw_create(name: str, options: dict[str, Any], platform: Platform) -> IommuHardware:
    """Build the hardware model of one IOMMU instance named ``name``.

    ``options`` are the Machine config options of that instance (features to turn off,
    errata to select). Unknown options must fail with IommuError(EINVAL). The model
    exposes only registers (``mmio``), interrupt lines (``irqs``) and ``dma_translate``.
    """


@hookspec(firstresult=True)
def iommu_driver_probe(core: IommuCore, res: IommuResources) -> IommuDevice:
    """The driver's platform probe (``arm_smmu_device_probe``, ``intel_iommu_init``...).

    Map the registers in ``res``, read the ID registers, reset the unit, allocate its
    tables and queues from the kernel page allocator, request its interrupts, and
    register the unit with ``core.iommu_device_register``. Return the IommuDevice.
    """


@hookspec(firstresult=True)
def iommu_driver_remove(iommu: IommuDevice) -> bool:
    """Tear the unit down (disable translation, free tables and queues). Return True."""


@hookspec
def iommu_driver_init(ops: Any) -> None:
    """Called once when the driver is loaded with its :class:`IommuOps` facade, to set
    the static members of its ``iommu_ops``: ``identity_domain``, ``blocked_domain``,
    ``release_domain``, ``default_domain``, ``user_pasid_table``."""


@hookspec
def iommufd_uapi_data_types() -> list[Any]:
    """The uAPI data types this driver adds (``iommufd.uapi.DataType`` entries: hwpt
    data, hw_info, invalidation entries, vIOMMU / vEVENTQ / HW queue types).

    iommufd registers them when it starts, so a third-party driver (or a prototype of a
    new uAPI) can add payloads without editing the uAPI module. A value already taken in
    its kind is refused with a clear error.
    """


# ---------------------------------------------------------------------------------------
# struct iommu_ops
# ---------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def capable(dev: Device, cap: int) -> bool:
    """``capable``: does the IOMMU provide capability ``cap`` (an IommuCap) for ``dev``?"""


@hookspec(firstresult=True)
def hw_info(dev: Device, data_type: int) -> tuple[bytes, int]:
    """``hw_info``: the vendor info blob for IOMMU_GET_HW_INFO and its type.

    ``data_type`` is the requested ``iommu_hw_info_type`` (0 = DEFAULT, the driver picks);
    an unsupported requested type must fail with EOPNOTSUPP.
    """


@hookspec(firstresult=True)
def domain_alloc_identity(dev: Device) -> IommuDomain:
    """``domain_alloc_identity``: an IDENTITY domain when the static one cannot be used."""


@hookspec(firstresult=True)
def domain_alloc_paging_flags(dev: Device, flags: int, user_data: UserData | None
                              ) -> IommuDomain:
    """``domain_alloc_paging_flags``: a paging domain for ``dev`` with iommufd
    ``IOMMU_HWPT_ALLOC_*`` flags (NEST_PARENT, DIRTY_TRACKING, PASID) and optional driver
    data. Unsupported flags or data: EOPNOTSUPP."""


@hookspec(firstresult=True)
def domain_alloc_paging(dev: Device) -> IommuDomain:
    """``domain_alloc_paging``: the same with no flags and no data (implement only one)."""


@hookspec(firstresult=True)
def domain_alloc_sva(dev: Device, mm: MmStruct) -> IommuDomain:
    """``domain_alloc_sva``: a domain sharing the CPU page table of ``mm``."""


@hookspec(firstresult=True)
def domain_alloc_nested(dev: Device, parent: IommuDomain, flags: int, user_data: UserData
                        ) -> IommuDomain:
    """``domain_alloc_nested``: a NESTED domain (user stage 1) on a NEST_PARENT domain."""


@hookspec(firstresult=True)
def probe_device(dev: Device) -> IommuDevice:
    """``probe_device``: take ``dev`` under this IOMMU (return the unit) or refuse it with
    ENODEV. Store per-device driver state in ``dev.iommu.priv``."""


@hookspec(firstresult=True)
def release_device(dev: Device) -> bool:
    """``release_device``: drop the device (it has been parked on the release domain)."""


@hookspec(firstresult=True)
def probe_finalize(dev: Device) -> bool:
    """``probe_finalize``: after group and default-domain setup."""


@hookspec(firstresult=True)
def device_group(dev: Device) -> IommuGroup:
    """``device_group``: choose the group, usually ``core.pci_device_group(dev)``,
    ``core.generic_device_group(dev)`` or ``core.generic_single_device_group(dev)``."""


@hookspec(firstresult=True)
def get_resv_regions(dev: Device) -> list[ResvRegion]:
    """``get_resv_regions``: the device's reserved regions (MSI windows, RMRR, ...)."""


@hookspec(firstresult=True)
def is_attach_deferred(dev: Device) -> bool:
    """``is_attach_deferred``: defer the default-domain attach to driver probe."""


@hookspec(firstresult=True)
def page_response(dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
    """``page_response``: send the response to a page request group to the hardware
    (SMMU CMD_PRI_RESP / CMD_RESUME, VT-d page group response, AMD COMPLETE_PPR)."""


@hookspec(firstresult=True)
def def_domain_type(dev: Device) -> int:
    """``def_domain_type``: force IDENTITY or DMA for ``dev``, or 0 for the policy."""


@hookspec(firstresult=True)
def get_viommu_size(dev: Device, viommu_type: int) -> int:
    """``get_viommu_size``: non-zero if this driver can build a vIOMMU of ``viommu_type``
    for ``dev`` (the size of its vIOMMU struct in C); 0 = unsupported (EOPNOTSUPP)."""


@hookspec(firstresult=True)
def viommu_init(viommu: IommufdViommu, parent_domain: IommuDomain,
                user_data: UserData | None) -> bool:
    """``viommu_init``: initialise the driver part of ``viommu`` on ``viommu.iommu_dev``,
    tied to the nest-parent domain; set ``viommu.ops`` and ``viommu.priv``."""


# ---------------------------------------------------------------------------------------
# struct iommu_domain_ops (+ iommu_dirty_ops). ``domain.ops`` lists which a domain has.
# ---------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def attach_dev(domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
    """``attach_dev``: make ``dev`` translate its RID traffic through ``domain``.

    Errnos are part of the contract: EINVAL (incompatible; the caller may try another
    domain, so do not log), ENOMEM, ENOSPC (non-memory resource), EBUSY (cannot change
    now), ENODEV (device specific). On failure the device keeps ``old``.
    """


@hookspec(firstresult=True)
def set_dev_pasid(domain: IommuDomain, dev: Device, pasid: int, old: IommuDomain | None
                  ) -> bool:
    """``set_dev_pasid``: set or replace the domain of one PASID; on error the PASID keeps
    its old configuration. The blocked domain's op detaches the PASID."""


@hookspec(firstresult=True)
def map_pages(domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
              prot: int) -> int:
    """``map_pages``: map up to ``pgcount`` pages of one size; return bytes mapped.
    On failure, raise and leave nothing of this call mapped."""


@hookspec(firstresult=True)
def unmap_pages(domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                gather: IotlbGather) -> int:
    """``unmap_pages``: unmap up to ``pgcount`` pages; return bytes unmapped (may stop
    early; never splits a large page). Queue the invalidation in ``gather``."""


@hookspec(firstresult=True)
def flush_iotlb_all(domain: IommuDomain) -> bool:
    """``flush_iotlb_all``: synchronous full invalidation of the domain."""


@hookspec(firstresult=True)
def iotlb_sync_map(domain: IommuDomain, iova: int, size: int) -> bool:
    """``iotlb_sync_map``: make fresh mappings visible (caching mode / non-coherent)."""


@hookspec(firstresult=True)
def iotlb_sync(domain: IommuDomain, gather: IotlbGather) -> bool:
    """``iotlb_sync``: invalidate what ``gather`` accumulated, then free its tables."""


@hookspec(firstresult=True)
def cache_invalidate_user(domain: IommuDomain, array: UserDataArray) -> bool:
    """``cache_invalidate_user`` (NESTED domains): process the user's array of
    driver-format invalidation requests; set ``array.entry_num`` to the number handled,
    also when raising."""


@hookspec(firstresult=True)
def iova_to_phys(domain: IommuDomain, iova: int) -> int:
    """``iova_to_phys``: software walk; 0 when not mapped."""


@hookspec(firstresult=True)
def enforce_cache_coherency(domain: IommuDomain) -> bool:
    """``enforce_cache_coherency``: block no-snoop; return False if impossible."""


@hookspec(firstresult=True)
def set_pgtable_quirks(domain: IommuDomain, quirks: int) -> bool:
    """``set_pgtable_quirks``."""


@hookspec(firstresult=True)
def free(domain: IommuDomain) -> bool:
    """``free``: release the domain and everything it allocated."""


@hookspec(firstresult=True)
def set_dirty_tracking(domain: IommuDomain, enabled: bool) -> bool:
    """``iommu_dirty_ops.set_dirty_tracking``: start or stop hardware dirty tracking."""


@hookspec(firstresult=True)
def read_and_clear_dirty(domain: IommuDomain, iova: int, size: int, flags: int,
                         dirty: IommuDirtyBitmap) -> bool:
    """``iommu_dirty_ops.read_and_clear_dirty``: for each dirty leaf in the range call
    ``dirty.record(iova, length)``; clear the dirty state unless IOMMU_DIRTY_NO_CLEAR.
    ``dirty.has_bitmap`` is False for iommufd's clear-before-enable pass."""


# ---------------------------------------------------------------------------------------
# struct iommufd_viommu_ops (viommu.ops lists which a vIOMMU has).
# ---------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def viommu_destroy(viommu: IommufdViommu) -> bool:
    """``destroy``: free the driver part of the vIOMMU."""


@hookspec(firstresult=True)
def viommu_alloc_domain_nested(viommu: IommufdViommu, flags: int, user_data: UserData
                               ) -> IommuDomain:
    """``alloc_domain_nested``: a NESTED domain on the vIOMMU's parent from user data."""


@hookspec(firstresult=True)
def viommu_cache_invalidate(viommu: IommufdViommu, array: UserDataArray) -> bool:
    """``cache_invalidate``: process the guest's invalidation commands; set
    ``array.entry_num`` to the number handled, also when raising."""


@hookspec(firstresult=True)
def viommu_vdevice_init(vdev: IommufdVdevice) -> bool:
    """``vdevice_init``: bind a virtual device id to a physical device (vSID -> SID)."""


@hookspec(firstresult=True)
def viommu_vdevice_destroy(vdev: IommufdVdevice) -> bool:
    """``vdevice destroy``: undo ``viommu_vdevice_init``."""


@hookspec(firstresult=True)
def viommu_get_hw_queue_size(viommu: IommufdViommu, queue_type: int) -> int:
    """``get_hw_queue_size``: non-zero if HW queues of ``queue_type`` are supported."""


@hookspec(firstresult=True)
def viommu_hw_queue_init_phys(hw_queue: IommufdHwQueue, index: int, base_addr_pa: int
                              ) -> bool:
    """``hw_queue_init_phys``: set up a guest queue at physical ``base_addr_pa``."""


@hookspec(firstresult=True)
def viommu_hw_queue_destroy(hw_queue: IommufdHwQueue) -> bool:
    """Destroy a HW queue."""

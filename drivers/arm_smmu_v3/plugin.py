"""The hook glue: ``struct iommu_ops`` / ``iommu_domain_ops`` / viommu ops of the SMMUv3
driver as pluggy hook implementations (``arm_smmu_ops`` in arm-smmu-v3.c).

Every domain hook of this driver's plugin manager reaches this plugin for any of its
domains; the kind of domain selects the implementation, as the per-kind ops structs do
in C. Void ops return True.
"""

from __future__ import annotations

import errno
from typing import Any

from drivers.arm_smmu_v3 import domain as d
from drivers.arm_smmu_v3 import iommufd as nest
from drivers.arm_smmu_v3.cmdq import arm_smmu_make_cmd_pri_resp, arm_smmu_make_cmd_resume
from drivers.arm_smmu_v3.describe import SmmuDescribe
from drivers.arm_smmu_v3.device import ArmSmmuDevice
from drivers.arm_smmu_v3.hw.cmdqv import CmdqvConfig
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware
from drivers.arm_smmu_v3.master import (
    ArmSmmuMaster,
    arm_smmu_probe_device,
    arm_smmu_release_device,
    master_of,
)
from drivers.arm_smmu_v3.regs import (
    CMDQ_RESUME_0_RESP_ABORT,
    CMDQ_RESUME_0_RESP_RETRY,
    PRI_RESP_DENY,
    PRI_RESP_FAIL,
    PRI_RESP_SUCC,
)
from drivers.arm_smmu_v3.tegra241_cmdqv import Tegra241Vintf, vintf_of
from iommu_core.device import MSI_IOVA_BASE, MSI_IOVA_LENGTH, IommuDevice, ResvRegion, ResvType
from iommu_core.domain import IOMMU_DOMAIN_BLOCKED, IOMMU_DOMAIN_IDENTITY, IommuDomain
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import IommuGroup
from iommu_core.hookspec import hookimpl
from iommu_core.iommu import IommuCore
from iommu_core.iommufd_driver import (
    IommufdHwQueue,
    IommufdVdevice,
    IommufdViommu,
    UserData,
    UserDataArray,
)
from iommu_core.iopf import PageRequest, PageResponse, PageResponseCode
from iommu_core.platform.bus import Device
from iommu_core.platform.platform import IommuResources, Platform
from iommu_core.plugin import IommuOps
from iommu_core.prot import IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_WRITE

DRIVER_NAME = "arm_smmu_v3"
#: Machine options that are not hardware but what the driver is told (firmware / kernel
#: parameters): ``vsmmu_strict_cmds`` selects the vIOMMU invalidation of the posted,
#: unmerged series (see :func:`~drivers.arm_smmu_v3.iommufd.arm_vsmmu_cache_invalidate`).
FIRMWARE_OPTIONS = ("vsmmu_strict_cmds",)


def _smmu_of(dev: Device) -> ArmSmmuDevice:
    smmu = dev.iommu.iommu_dev.priv if dev.iommu is not None else None
    if not isinstance(smmu, ArmSmmuDevice):
        raise IommuError(errno.ENODEV, f"{dev.name} is not behind an SMMUv3")
    return smmu


class ArmSmmuV3Plugin(SmmuDescribe):
    """The SMMUv3 driver. One instance serves every Machine: all state lives in the
    objects the hooks are called with (the IommuOps, the unit, devices, domains)."""

    # -- platform ------------------------------------------------------------------------
    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        ops.identity_domain = d.ArmSmmuStaticDomain(
            IOMMU_DOMAIN_IDENTITY, ops.domain_ops(["attach_dev"]), name="smmu identity")
        blocked = d.ArmSmmuStaticDomain(
            IOMMU_DOMAIN_BLOCKED, ops.domain_ops(["attach_dev", "set_dev_pasid"]),
            name="smmu blocked")
        ops.blocked_domain = blocked
        ops.release_domain = blocked
        # A nested domain's stage 1 owns the PASID table: faults of any PASID are
        # reported through the RID's nested domain.
        ops.user_pasid_table = True

    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> SmmuV3Hardware:
        opts = dict(options)
        firmware = {}
        for key in FIRMWARE_OPTIONS:
            if key in opts:
                value = opts.pop(key)
                if not isinstance(value, bool):
                    raise IommuError(errno.EINVAL, f"option {key} must be a bool, not "
                                     f"{value!r}")
                firmware[key] = value
        # A companion Tegra241 CMDQV: hardware beside the SMMU, and the firmware node
        # (ACPI NVDA200C / DT "nvidia,cmdqv") that tells the driver it is there.
        cmdqv = CmdqvConfig.from_option(opts.pop("tegra241_cmdqv", False))
        if cmdqv is not None:
            firmware["tegra241_cmdqv"] = True
        hw = SmmuV3Hardware(name, SmmuHwConfig.from_options(opts), platform, cmdqv)
        hw.firmware = firmware
        return hw

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        ops = next((o for o in core.plugins.drivers.values() if o.pm.is_registered(self)),
                   None)
        if ops is None:
            raise IommuError(errno.ENODEV, "the SMMUv3 plugin is not a registered driver")
        if "regs" not in res.mmio:
            raise IommuError(errno.ENODEV, f"{res.name}: no register window")
        return ArmSmmuDevice(core, res, ops).probe()

    @hookimpl
    def iommu_driver_remove(self, iommu: IommuDevice) -> bool:
        smmu = iommu.priv
        if isinstance(smmu, ArmSmmuDevice):
            smmu.remove()
        return True

    # -- iommu_ops -----------------------------------------------------------------------
    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        smmu = _smmu_of(dev)
        arm_smmu_probe_device(smmu, dev)
        assert smmu.iommu is not None
        return smmu.iommu

    @hookimpl
    def release_device(self, dev: Device) -> bool:
        if dev.iommu is not None and isinstance(dev.iommu.priv, ArmSmmuMaster):
            arm_smmu_release_device(dev.iommu.priv)
        return True

    @hookimpl
    def device_group(self, dev: Device) -> IommuGroup:
        core = _smmu_of(dev).core
        return core.pci_device_group(dev) if dev.is_pci else core.generic_device_group(dev)

    @hookimpl
    def get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        return [ResvRegion(MSI_IOVA_BASE, MSI_IOVA_LENGTH, IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO,
                           ResvType.SW_MSI)]

    @hookimpl
    def capable(self, dev: Device, cap: int) -> bool:
        return d.arm_smmu_capable(dev, cap)

    @hookimpl
    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        return nest.arm_smmu_hw_info(dev, data_type)

    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: UserData | None
                                  ) -> IommuDomain:
        return d.arm_smmu_domain_alloc_paging_flags(dev.iommu.ops, dev, flags, user_data)

    @hookimpl
    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
        master = master_of(dev)
        smmu = master.smmu
        sid = master.streams[0]
        if master.stall_enabled:
            resp = (CMDQ_RESUME_0_RESP_RETRY if msg.code == PageResponseCode.SUCCESS
                    else CMDQ_RESUME_0_RESP_ABORT)
            smmu.issue_cmd(arm_smmu_make_cmd_resume(sid, evt.grpid, resp))
        elif d.arm_smmu_pri_supported(master):
            code = {PageResponseCode.SUCCESS: PRI_RESP_SUCC,
                    PageResponseCode.INVALID: PRI_RESP_DENY,
                    PageResponseCode.FAILURE: PRI_RESP_FAIL}[msg.code]
            smmu.issue_cmd(arm_smmu_make_cmd_pri_resp(
                sid, evt.pasid if evt.pasid_valid else 0, evt.pasid_valid, evt.grpid, code),
                sync=True)
        return True

    @hookimpl
    def get_viommu_size(self, dev: Device, viommu_type: int) -> int:
        return nest.arm_smmu_get_viommu_size(dev, viommu_type)

    @hookimpl
    def viommu_init(self, viommu: IommufdViommu, parent_domain: IommuDomain,
                    user_data: UserData | None) -> bool:
        nest.arm_vsmmu_init(viommu.iommu_dev.ops, viommu, parent_domain, user_data)
        return True

    # -- iommu_domain_ops ----------------------------------------------------------------
    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        if isinstance(domain, d.ArmSmmuDomain):
            d.arm_smmu_attach_dev(domain, dev, old)
        elif isinstance(domain, nest.ArmSmmuNestedDomain):
            nest.arm_smmu_attach_dev_nested(domain, dev, old)
        elif domain.type == IOMMU_DOMAIN_IDENTITY:
            d.arm_smmu_attach_dev_identity(domain, dev, old)
        elif domain.type == IOMMU_DOMAIN_BLOCKED:
            d.arm_smmu_attach_dev_blocked(domain, dev, old)
        else:
            raise IommuError(errno.EINVAL, f"cannot attach {domain!r}")
        return True

    @hookimpl
    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> bool:
        if isinstance(domain, d.ArmSmmuDomain):
            d.arm_smmu_s1_set_dev_pasid(domain, dev, pasid, old)
        elif domain.type == IOMMU_DOMAIN_BLOCKED:
            d.arm_smmu_blocking_set_dev_pasid(domain, dev, pasid, old)
        else:
            raise IommuError(errno.EINVAL, f"{domain!r} cannot be attached to a PASID")
        return True

    @hookimpl
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        return d.arm_smmu_map_pages(_paging(domain), iova, paddr, pgsize, pgcount, prot)

    @hookimpl
    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        return d.arm_smmu_unmap_pages(_paging(domain), iova, pgsize, pgcount, gather)

    @hookimpl
    def flush_iotlb_all(self, domain: IommuDomain) -> bool:
        d.arm_smmu_flush_iotlb_all(_paging(domain))
        return True

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> bool:
        d.arm_smmu_iotlb_sync(_paging(domain), gather)
        return True

    @hookimpl
    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        return _paging(domain).pgtbl.iova_to_phys(iova)

    @hookimpl
    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        return d.arm_smmu_enforce_cache_coherency(_paging(domain))

    @hookimpl
    def free(self, domain: IommuDomain) -> bool:
        if isinstance(domain, d.ArmSmmuDomain):
            d.arm_smmu_domain_free_paging(domain)
        return True

    @hookimpl
    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> bool:
        # HTTU dirty state is always on for these domains; iommufd clears the bits first.
        _paging(domain)
        return True

    @hookimpl
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> bool:
        d.arm_smmu_read_and_clear_dirty(_paging(domain), iova, size, flags, dirty)
        return True

    # -- iommufd_viommu_ops --------------------------------------------------------------
    @hookimpl
    def viommu_alloc_domain_nested(self, viommu: IommufdViommu, flags: int,
                                   user_data: UserData) -> IommuDomain:
        return nest.arm_vsmmu_alloc_domain_nested(viommu.iommu_dev.ops, viommu, flags,
                                                  user_data)

    @hookimpl
    def viommu_cache_invalidate(self, viommu: IommufdViommu, array: UserDataArray) -> bool:
        nest.arm_vsmmu_cache_invalidate(viommu, array)
        return True

    @hookimpl
    def viommu_vdevice_init(self, vdev: IommufdVdevice) -> bool:
        vintf = vdev.viommu.priv
        if isinstance(vintf, Tegra241Vintf):
            vintf.cmdqv.vintf_init_vsid(vdev)
        else:
            nest.arm_vsmmu_vdevice_init(vdev)
        return True

    @hookimpl
    def viommu_destroy(self, viommu: IommufdViommu) -> bool:
        vintf = viommu.priv
        if isinstance(vintf, Tegra241Vintf):
            vintf.cmdqv.destroy_vintf_user(viommu)
        viommu.priv = None
        return True

    # -- the Tegra241 CMDQV vIOMMU's own ops (only its viommu.ops list them) ----------------
    @hookimpl
    def viommu_vdevice_destroy(self, vdev: IommufdVdevice) -> bool:
        vintf_of(vdev.viommu).cmdqv.vintf_destroy_vsid(vdev)
        return True

    @hookimpl
    def viommu_get_hw_queue_size(self, viommu: IommufdViommu, queue_type: int) -> int:
        return vintf_of(viommu).cmdqv.vintf_get_vcmdq_size(queue_type)

    @hookimpl
    def viommu_hw_queue_init_phys(self, hw_queue: IommufdHwQueue, index: int,
                                  base_addr_pa: int) -> bool:
        vintf_of(hw_queue.viommu).cmdqv.vintf_alloc_lvcmdq_user(hw_queue, index, base_addr_pa)
        return True

    @hookimpl
    def viommu_hw_queue_destroy(self, hw_queue: IommufdHwQueue) -> bool:
        vintf_of(hw_queue.viommu).cmdqv.vintf_destroy_lvcmdq_user(hw_queue)
        return True


def _paging(domain: IommuDomain) -> d.ArmSmmuDomain:
    if not isinstance(domain, d.ArmSmmuDomain):
        raise IommuError(errno.EOPNOTSUPP, f"{domain!r} is not an SMMUv3 paging domain")
    return domain


plugin = ArmSmmuV3Plugin()

"""The iommufd-facing ops (drivers/iommu/amd/iommufd.c): hw_info, the AMD vIOMMU on a nest
parent, vDEVICEs, and the prototype guest invalidation.

Prototype (not upstream): HWPT_INVALIDATE on an AMD vIOMMU takes raw guest command-buffer
commands (``IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE``). The VMM traps the guest's
command buffer and forwards the invalidations; the driver rewrites the guest IDs to host
IDs (gDomID -> hDomID through the vIOMMU map; vDeviceID -> DeviceID through the vDEVICE)
and queues them on the physical command buffer. It is also the worked example of
prototyping a driver op: a data type registered from the plugin, one viommu op.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOTLB_PAGES,
    CMD_NAMES,
    IommuCmd,
    genmask,
)
from drivers.amd_vi.hw_viommu import (
    AmdHwViommu,
    amd_hw_viommu_destroy,
    amd_hw_viommu_init,
    amd_hw_viommu_supported,
)
from drivers.amd_vi.iommu import (
    IommuDevData,
    ProtectionDomain,
    dev_iommu_priv_get,
    iommu_completion_wait,
    iommu_queue_command,
)
from drivers.amd_vi.nested import AmdViommu
from drivers.amd_vi.uapi import (
    IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE,
    IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
    iommu_viommu_amd_invalidate,
)
from iommu_core.errors import IommuError
from iommu_core.platform.uaccess import struct_to_bytes
from iommufd.uapi import (
    IOMMU_HW_INFO_TYPE_AMD,
    IOMMU_HW_INFO_TYPE_DEFAULT,
    IOMMU_VIOMMU_TYPE_AMD,
    iommu_hw_info_amd,
    iommu_viommu_amd,
)

if TYPE_CHECKING:
    from iommu_core.iommufd_driver import (
        IommufdVdevice,
        IommufdViommu,
        UserData,
        UserDataArray,
    )
    from iommu_core.platform.bus import Device

AMD_VIOMMU_OPS = ("viommu_destroy", "viommu_alloc_domain_nested", "viommu_cache_invalidate",
                  "viommu_vdevice_init", "viommu_vdevice_destroy")

# Reserved fields of the accepted guest commands (must be zero).
_RSVD_INV_PAGES = (genmask(31, 20), genmask(27, 16), genmask(11, 3), 0)
_RSVD_INV_IOTLB = (0, genmask(27, 24), genmask(11, 3) | (1 << 1), 0)
_RSVD_INV_DTE = (genmask(31, 16), genmask(27, 0), genmask(31, 0), genmask(31, 0))


def amd_iommufd_hw_info(dev: Device, data_type: int) -> tuple[bytes, int]:
    if data_type not in (IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_AMD):
        raise IommuError(errno.EOPNOTSUPP, f"hw_info type {data_type} is not AMD")
    drv = dev_iommu_priv_get(dev).iommu.drv
    info = iommu_hw_info_amd(efr=drv.efr, efr2=drv.efr2)
    return struct_to_bytes(info), IOMMU_HW_INFO_TYPE_AMD


def amd_iommufd_get_viommu_size(dev: Device, viommu_type: int) -> int:
    """AMD-tree behaviour: only IOMMU_VIOMMU_TYPE_AMD (vtd_amd.md B9.4). No feature check
    (unlike SMMUv3): without GT/GIOSUP/GCR3TRPMODE no nest parent exists, so the core
    fails on the HWPT (EINVAL), as Linux does. The prototype HW type only on a unit with
    the HW-vIOMMU (else 0: EOPNOTSUPP, as Tegra's type without a CMDQV)."""
    dev_data = dev_iommu_priv_get(dev)
    if viommu_type == IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE:
        return 128 if amd_hw_viommu_supported(dev_data.iommu) else 0
    if viommu_type != IOMMU_VIOMMU_TYPE_AMD:
        return 0
    return 64  # sizeof(struct amd_iommu_viommu), any non-zero value


def amd_iommufd_viommu_init(viommu: IommufdViommu, parent: object,
                            user_data: UserData | None) -> None:
    iommu = viommu.iommu_dev.priv
    from drivers.amd_vi.init import AmdIommu
    if not isinstance(iommu, AmdIommu):
        raise IommuError(errno.EINVAL, "not an AMD IOMMU")
    if (not isinstance(parent, ProtectionDomain) or parent.pd_mode != "v1"
            or parent.iop is None or parent.drv is not iommu.drv):
        raise IommuError(errno.EINVAL, "the parent must be an AMD v1 nest-parent domain")
    if viommu.type == IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE:
        amd_hw_viommu_init(iommu.drv.ops, viommu, iommu, parent, user_data)
        return
    if user_data is not None:
        data = user_data.copy_struct(iommu_viommu_amd, IOMMU_VIOMMU_TYPE_AMD, "reserved")
        if data.reserved:
            raise IommuError(errno.EOPNOTSUPP, "iommu_viommu_amd.reserved must be 0")
    avi = AmdViommu(viommu, iommu, parent)
    parent.viommu_list.append(avi)
    viommu.priv = avi
    viommu.ops = iommu.drv.ops.viommu_ops(AMD_VIOMMU_OPS)


def amd_iommufd_viommu_destroy(viommu: IommufdViommu) -> None:
    avi = viommu.priv
    if isinstance(avi, AmdHwViommu):
        amd_hw_viommu_destroy(avi)
    if isinstance(avi, AmdViommu):
        if avi in avi.parent.viommu_list:
            avi.parent.viommu_list.remove(avi)
        avi.gdomid_array.clear()
    viommu.priv = None


def amd_iommufd_vdevice_init(vdev: IommufdVdevice) -> None:
    """The vDeviceID is the guest's 16-bit DeviceID (BDF)."""
    if not 0 <= vdev.virt_id <= 0xFFFF:
        raise IommuError(errno.EINVAL, f"vDeviceID {vdev.virt_id:#x} is not 16-bit")
    dev_data = dev_iommu_priv_get(vdev.dev)
    avi = vdev.viommu.priv
    if isinstance(avi, AmdViommu):
        avi.devid_mapped(vdev.virt_id, dev_data.devid)
    vdev.priv = dev_data


def amd_iommufd_vdevice_destroy(vdev: IommufdVdevice) -> None:
    avi = vdev.viommu.priv
    if vdev.priv is not None and isinstance(avi, AmdViommu):
        avi.devid_unmapped(vdev.virt_id)
    vdev.priv = None


# ---------------------------------------------------------------------------------------
# Prototype: guest command-buffer invalidations
# ---------------------------------------------------------------------------------------
def _check_rsvd(d: tuple[int, ...], rsvd: tuple[int, int, int, int], what: str) -> None:
    for i in range(4):
        if d[i] & rsvd[i]:
            raise IommuError(errno.EIO, f"{what}: reserved bits {d[i] & rsvd[i]:#x} set in "
                             f"word {i}")


def _vdev_lookup(avi: AmdViommu, vdevid: int, what: str) -> IommuDevData:
    dev = avi.core.find_dev(vdevid)
    if dev is None:
        raise IommuError(errno.EIO, f"{what}: no vDEVICE with vDeviceID {vdevid:#x}")
    dev_data = dev_iommu_priv_get(dev)
    if dev_data.iommu is not avi.iommu:
        raise IommuError(errno.EIO, f"{what}: vDeviceID {vdevid:#x} is behind another unit")
    return dev_data


def amd_viommu_convert_cmd(avi: AmdViommu, raw: tuple[int, int, int, int]
                           ) -> IommuCmd | None:
    """A guest command rewritten for the host command buffer; None = nothing to do."""
    d0, d1, d2, d3 = raw
    op = (d1 >> 28) & 0xF
    name = CMD_NAMES.get(op, f"opcode {op:#x}")
    if op == CMD_INV_IOMMU_PAGES:
        _check_rsvd(raw, _RSVD_INV_PAGES, name)
        info = avi.gdomid_array.get(d1 & 0xFFFF)
        if info is None:
            return None  # no nested domain uses this gDomID: nothing can be cached
        return IommuCmd((d0, (d1 & ~0xFFFF) | info.hdom_id, d2, d3))
    if op == CMD_INV_IOTLB_PAGES:
        _check_rsvd(raw, _RSVD_INV_IOTLB, name)
        if (d0 & 0xFFFF) != (d1 & 0xFFFF):
            raise IommuError(errno.EIO, f"{name}: the two DeviceID fields differ")
        dev_data = _vdev_lookup(avi, d0 & 0xFFFF, name)
        if not dev_data.ats_enabled:
            raise IommuError(errno.EIO, f"{name}: {dev_data.dev.name} has no ATS enabled")
        devid = dev_data.devid
        gn = d2 & CMD_INV_IOMMU_PAGES_GN_MASK
        n0 = devid | ((dev_data.ats_qdep & 0xFF) << 24) | ((d0 & genmask(23, 16)) if gn else 0)
        n1 = (d1 & ~0xFFFF & ~genmask(23, 16)) | devid | ((d1 & genmask(23, 16)) if gn else 0)
        return IommuCmd((n0, n1, d2, d3))
    if op == CMD_INV_DEV_ENTRY:
        _check_rsvd(raw, _RSVD_INV_DTE, name)
        dev_data = _vdev_lookup(avi, d0 & 0xFFFF, name)
        return IommuCmd((dev_data.devid, d1, d2, d3))
    raise IommuError(errno.EIO, f"{name} is not a guest invalidation command")


def amd_viommu_cache_invalidate(viommu: IommufdViommu, array: UserDataArray) -> None:
    """Convert the whole batch, stopping at the first bad entry; issue what converted,
    wait for completion, and report the number handled in ``array.entry_num``."""
    avi = viommu.priv
    n = array.entry_num
    array.entry_num = 0
    if not isinstance(avi, AmdViommu):
        raise IommuError(errno.EINVAL, "not an AMD vIOMMU")
    if array.type != IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE:
        raise IommuError(errno.EINVAL, f"invalidation data type {array.type:#x} is not "
                         "AMD_PROTOTYPE")
    if n == 0:
        return
    array.entry_num = n  # the copy helper reads the count from here
    try:
        entries = array.copy_full_array(iommu_viommu_amd_invalidate,
                                        IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE)
    finally:
        array.entry_num = 0
    cmds: list[IommuCmd | None] = []
    err: IommuError | None = None
    for e in entries:
        try:
            cmds.append(amd_viommu_convert_cmd(avi, (int(e.cmd[0]), int(e.cmd[1]),
                                                     int(e.cmd[2]), int(e.cmd[3]))))
        except IommuError as x:
            err = x
            break
    iommu = avi.iommu
    for cmd in cmds:
        if cmd is not None:
            iommu_queue_command(iommu, cmd)
    iommu_completion_wait(iommu)
    array.entry_num = len(cmds)
    if err is not None:
        raise err

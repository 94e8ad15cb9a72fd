"""SMMUv3's setup for the measurements of issue #14: the Machine, the stage-1 format and
the nested setup (:mod:`iommu_core.benchkit` measures).

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a stage-1
  paging domain attached and 65,536 distinct pages in the TLB (a TLB large enough to
  hold them: :data:`OPTIONS`) over the same with nothing cached;
* ``nested_miss_vs_paging_miss``: a DMA that misses the TLB through a nested domain (a
  guest's stage-1 table and CD in guest RAM, its vSTE on a vIOMMU over a nest parent)
  over one through a plain stage-1 paging domain, each reading fresh pages of warm
  tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in the LPAE stage-1
  format.

The device has ATS off, so a miss is the SMMU's own walk, not an ATS translation
request. ``run(make_machine)`` returns all three; the system bench takes the nested one
from here (:data:`BENCH`'s ``desc``).
"""

from __future__ import annotations

import ctypes
from typing import Any

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from drivers.arm_smmu_v3.describe.guest import guest_smmu_cd
from drivers.arm_smmu_v3.regs import (
    FIELD_PREP,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_0_V,
    STRTAB_STE_1_S1DSS,
    STRTAB_STE_1_S1DSS_SSID0,
)
from iommu_core import benchkit as kit
from iommu_core.pgtable import IoPageTable, formats

DEV = "0000:00:01.0"
VSID = 0x42
ASID = 1
#: The stage-1 format the paging domains use, for the page-table floor.
S1_FORMAT = formats.arm_lpae_s1(4096, 48, 48)
#: The unit in every bench Machine: a TLB that holds the 65,536 pages the invalidation
#: bench caches (the default 8,192 would evict most of them).
OPTIONS: dict[str, Any] = {"tlb_entries": 131072}


def machine_config(**options: Any) -> dict[str, Any]:
    return {"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3", **OPTIONS, **options}],
            "devices": [{"name": DEV, "iommu": "smmu0", "ats": False}]}


RIG = kit.Rig(machine_config(), DEV, kit.Uapi(u, v))


def nested_setup(m: kit.MachineLike, data_pages: int) -> None:
    """The guest maps GVA page i to its RAM page i with 4 KiB leaves and writes its CD
    (the driver's own arm_smmu_make_s1_cd); the VMM maps guest RAM at IOVA = IPA in a
    nest parent, makes a vIOMMU with the device's vSID, and attaches the device to the
    nested domain of the guest's vSTE (S1_TRANS, S1ContextPtr = the CD)."""
    vmm = kit.Vmm(m, RIG)
    ram_va, ram = kit.guest_ram(vmm, data_pages)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, parent, VSID)
    cd_ipa = ram.alloc_table(kit.PAGE)
    s1 = IoPageTable(S1_FORMAT.with_pgsizes(kit.PAGE), ram)
    s1.map(kit.GVA, 0, data_pages * kit.PAGE, kit.RW)
    m.mem_write(ram_va + cd_ipa, guest_smmu_cd(s1, {"asid": ASID}))
    vste = (STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_S1_TRANS) | cd_ipa,
            FIELD_PREP(STRTAB_STE_1_S1DSS, STRTAB_STE_1_S1DSS_SSID0))
    data = bytes(u.iommu_hwpt_arm_smmuv3(ste=(ctypes.c_uint64 * 2)(*vste)))
    vmm.attach(vmm.hwpt_alloc(viommu, 0, data, u.IOMMU_HWPT_DATA_ARM_SMMUV3))


BENCH = kit.VendorBench(RIG, S1_FORMAT, nested_setup)
inval_cached_ratio = BENCH.inval_cached_ratio
nested_miss_vs_paging_miss = BENCH.nested_miss_vs_paging_miss
map_unmap_4k_vs_pgtable = BENCH.map_unmap_4k_vs_pgtable
run = BENCH.run

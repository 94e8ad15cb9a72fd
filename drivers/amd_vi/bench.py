"""AMD-Vi's setup for the measurements of issue #14: the Machine, the v1 format and the
nested setup (:mod:`iommu_core.benchkit` measures).

The figures:

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a v1
  paging domain attached and 65,536 distinct pages cached (warmed by DMA reads over a
  256 MiB mapping in 4 KiB IOPTEs) over the same with nothing cached;
* ``nested_miss_vs_paging_miss``: a DMA that misses the IOTLB through a nested domain
  (guest DTE with a GCR3 table and a v2 table, on an AMD vIOMMU over a v1 nest parent)
  over one through a plain v1 paging domain, each reading fresh pages of warm tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in the v1 format.

Each takes ``make_machine(config)`` (``iommu_sim.Machine.from_config``; the driver
layer does not import the Machine) and returns a dict of figures; ``run(make_machine)``
returns all of them (``python -m iommu_sim.bench`` builds on it).
"""

from __future__ import annotations

from typing import Any

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from drivers.amd_vi.amd_iommu_types import (
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_V,
    GCR3_VALID,
    dte_gcr3_fields,
)
from iommu_core import benchkit as kit
from iommu_core.pgtable import IoPageTable, formats

DEV = "0000:00:03.0"
GDOMID = 7
#: The v1 format the paging domains use (4 levels), for the page-table floor.
V1_FORMAT = formats.amd_v1(4)


def machine_config(**options: Any) -> dict[str, Any]:
    return {"iommus": [{"name": "amdvi0", "driver": "amd_vi", **options}],
            "devices": [{"name": DEV, "iommu": "amdvi0"}]}


RIG = kit.Rig(machine_config(), DEV, kit.Uapi(u, v))


def nested_setup(m: kit.MachineLike, data_pages: int) -> None:
    """The guest maps GVA page i to its RAM page i with a 4-level v2 table at PASID 0 of
    a one-level GCR3 table; the VMM maps guest RAM at IOVA = GPA in a v1 nest parent,
    under an AMD vIOMMU with the device's vDEVICE; the device's nested domain holds the
    guest DTE."""
    vmm = kit.Vmm(m, RIG)
    _, ram = kit.guest_ram(vmm, data_pages)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(u.IOMMU_VIOMMU_TYPE_AMD, parent, virt_id=0x0100)
    s1 = IoPageTable(formats.x86_64(4).with_pgsizes(kit.PAGE), ram)
    s1.map(kit.GVA, 0, data_pages * kit.PAGE, kit.RW)
    gcr3 = ram.alloc_table(kit.PAGE)
    ram.write_u64(gcr3, s1.root | GCR3_VALID)
    d0, d1 = dte_gcr3_fields(gcr3)
    gdte = (DTE_FLAG_V | DTE_FLAG_GV | DTE_FLAG_GIOV | d0, d1 | GDOMID, 0, 0)
    vmm.attach(vmm.hwpt_alloc(viommu, 0, b"".join(w.to_bytes(8, "little") for w in gdte),
                              u.IOMMU_HWPT_DATA_AMD_GUEST))


BENCH = kit.VendorBench(RIG, V1_FORMAT, nested_setup)
inval_cached_ratio = BENCH.inval_cached_ratio
nested_miss_vs_paging_miss = BENCH.nested_miss_vs_paging_miss
map_unmap_4k_vs_pgtable = BENCH.map_unmap_4k_vs_pgtable
run = BENCH.run

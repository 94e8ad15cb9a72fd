"""VT-d's setup for the measurements of issue #14: the Machine, the first-stage format
and the nested setup (:mod:`iommu_core.benchkit` measures).

The figures:

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a
  first-stage paging domain attached and 65,536 distinct pages cached (warmed by DMA
  reads over a 256 MiB mapping in 4 KiB IOPTEs: IOTLB, requester view and the device's
  ATC) over the same with nothing cached;
* ``nested_miss_vs_paging_miss``: a DMA that misses the IOTLB through a nested domain
  (a 4-level guest first stage on a nest parent) over one through a plain paging
  domain, each reading fresh pages of warm tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in the first-stage
  format.

Each takes ``make_machine(config)`` (``iommu_sim.Machine.from_config``; the driver
layer does not import the Machine) and returns a dict of figures; ``run(make_machine)``
returns all of them (``python -m iommu_sim.bench`` builds on it).
"""

from __future__ import annotations

from typing import Any

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from iommu_core import benchkit as kit
from iommu_core.pgtable import IoPageTable, formats

DEV = "0000:00:02.0"
#: The first-stage format the paging domains use, for the page-table floor.
FS_FORMAT = formats.x86_64(4, oas=52)


def machine_config(**options: Any) -> dict[str, Any]:
    return {"iommus": [{"name": "dmar0", "driver": "intel_vtd", **options}],
            "devices": [{"name": DEV, "iommu": "dmar0"}]}


RIG = kit.Rig(machine_config(), DEV, kit.Uapi(u, v))


def nested_setup(m: kit.MachineLike, data_pages: int) -> None:
    """The guest maps GVA page i to its RAM page i with a 4-level first stage; the VMM
    maps guest RAM at IOVA = GPA in a nest parent; the device is attached to the nested
    domain at its RID."""
    vmm = kit.Vmm(m, RIG)
    _, ram = kit.guest_ram(vmm, data_pages)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    # 4 KiB leaves only (an aligned run would otherwise take 2 MiB pages)
    s1 = IoPageTable(FS_FORMAT.with_pgsizes(kit.PAGE), ram)
    s1.map(kit.GVA, 0, data_pages * kit.PAGE, kit.RW)
    data = u.iommu_hwpt_vtd_s1(pgtbl_addr=s1.root, addr_width=48)
    vmm.attach(vmm.hwpt_alloc(parent, 0, bytes(data), u.IOMMU_HWPT_DATA_VTD_S1))


BENCH = kit.VendorBench(RIG, FS_FORMAT, nested_setup)
inval_cached_ratio = BENCH.inval_cached_ratio
nested_miss_vs_paging_miss = BENCH.nested_miss_vs_paging_miss
map_unmap_4k_vs_pgtable = BENCH.map_unmap_4k_vs_pgtable
run = BENCH.run

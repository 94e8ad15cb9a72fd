"""SMMUv3 measurements for the system bench (``python -m iommu_sim.bench``), through a
Machine's ioctl ABI and DMA only (the driver layer does not import the Machine: the bench
passes ``make_machine(config)``).

* ``nested_miss_vs_paging_miss``: a DMA that misses the TLB through a nested domain (a
  guest's stage-1 table in guest RAM, the guest's vSTE on a vIOMMU over a nest parent)
  over one through a plain stage-1 paging domain, each reading pages never read before
  through warm tables; the two Machines' repetitions in alternation.

The device has ATS off, so a miss is the SMMU's own walk (not an ATS translation
request); both Machines are alike but for the domain.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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
from iommu_core.describe import BenchDesc
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.timing import best_of_runs

DEV = "0000:00:01.0"
PAGE = 4096
RW = IOMMU_READ | IOMMU_WRITE
#: Repetitions of the miss measurements; each reads fresh pages.
REPS = 16
GVA = 1 << 32
VSID = 0x42
ASID = 1
#: The unit in every bench Machine: a TLB that holds the 65,536 pages the invalidation
#: bench caches (the default 8,192 would evict most of them).
OPTIONS: Mapping[str, Any] = {"tlb_entries": 131072}


class MachineLike(Protocol):
    """What the measurements use of ``iommu_sim.Machine``."""

    def open(self, path: str) -> int: ...
    def vfio_cdev(self, device: str) -> str: ...
    def ioctl(self, fd: int, request: int, buf: Any = None) -> int: ...
    def mmap(self, length: int) -> int: ...
    def mem_write(self, va: int, data: bytes) -> None: ...
    def mem_read(self, va: int, n: int) -> bytes: ...
    def dma_read(self, dev: str, iova: int, n: int, pasid: int | None = None) -> bytes: ...
    def shutdown(self) -> None: ...


MakeMachine = Callable[[Mapping[str, Any]], Any]


def machine_config() -> dict[str, Any]:
    return {"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3", **OPTIONS}],
            "devices": [{"name": DEV, "iommu": "smmu0", "ats": False}]}


def _sz(s: Any) -> int:
    return ctypes.sizeof(s)


class Vmm:
    """iommufd, the VFIO device bound to it, one IOAS."""

    def __init__(self, m: MachineLike) -> None:
        self.m = m
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = v.vfio_device_bind_iommufd(argsz=_sz(v.vfio_device_bind_iommufd), iommufd=self.fd)
        m.ioctl(self.vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = int(bind.out_devid)
        ioas = u.iommu_ioas_alloc(size=_sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)
        self.scratch = m.mmap(PAGE)

    def map(self, va: int, length: int, iova: int) -> None:
        mp = u.iommu_ioas_map(size=_sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   data_type: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=_sz(u.iommu_hwpt_alloc), flags=flags, dev_id=self.dev_id,
                               pt_id=pt_id, data_type=data_type, data_len=len(data),
                               data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def viommu_alloc(self, parent: int) -> int:
        a = u.iommu_viommu_alloc(size=_sz(u.iommu_viommu_alloc),
                                 type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, dev_id=self.dev_id,
                                 hwpt_id=parent)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, a)
        return int(a.out_viommu_id)

    def vdevice_alloc(self, viommu: int, virt_id: int) -> None:
        a = u.iommu_vdevice_alloc(size=_sz(u.iommu_vdevice_alloc), viommu_id=viommu,
                                  dev_id=self.dev_id, virt_id=virt_id)
        self.m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, a)

    def attach(self, pt_id: int) -> None:
        at = v.vfio_device_attach_iommufd_pt(argsz=_sz(v.vfio_device_attach_iommufd_pt),
                                             pt_id=pt_id)
        self.m.ioctl(self.vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)


class GuestTables:
    """Guest RAM as the page-table core's TableMemory (addresses are IPAs), tables handed
    out from ``first_table``."""

    def __init__(self, m: MachineLike, ram_va: int, first_table: int) -> None:
        self.m = m
        self.ram_va = ram_va
        self._next = first_table

    def alloc_table(self, size: int) -> int:
        ipa = self._next
        self._next += max(PAGE, size)
        self.m.mem_write(self.ram_va + ipa, bytes(max(PAGE, size)))
        return ipa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, ipa: int) -> int:
        return int.from_bytes(self.m.mem_read(self.ram_va + ipa, 8), "little")

    def write_u64(self, ipa: int, value: int) -> None:
        self.m.mem_write(self.ram_va + ipa, value.to_bytes(8, "little"))


def _cold_reads(m: MachineLike, base: int, per_rep: int) -> Callable[[int], int]:
    """Repetition ``rep`` reads pages never read before (a TLB miss each); repetition
    -1, run here, warms the tables and the configuration caches."""
    def run(rep: int) -> int:
        first = base + (rep + 1) * per_rep * PAGE
        for i in range(per_rep):
            m.dma_read(DEV, first + i * PAGE, 64)
        return per_rep
    run(-1)
    return run


def paging_misses(m: MachineLike, per_rep: int) -> Callable[[int], int]:
    """A stage-1 paging domain over 4 KiB leaves: user memory in 512 KiB mappings (below
    the 2 MiB a huge page needs) touched last page first, so no two neighbours are
    physically contiguous."""
    vmm = Vmm(m)
    vmm.attach(vmm.ioas)
    pages = (REPS + 1) * per_rep
    iova = 0
    for first in range(0, pages, 128):
        n = min(128, pages - first)
        va = m.mmap(n * PAGE)
        for i in range(n - 1, -1, -1):
            m.mem_write(va + i * PAGE, b"\1")
        vmm.map(va, n * PAGE, iova)
        iova += n * PAGE
    return _cold_reads(m, 0, per_rep)


def nested_misses(m: MachineLike, per_rep: int) -> Callable[[int], int]:
    """The guest maps GVA page i to its RAM page i with 4 KiB leaves; the VMM maps guest
    RAM at IOVA = IPA in a nest parent; the device is attached to the nested domain made
    from the guest's vSTE (its CD written by the driver's own arm_smmu_make_s1_cd)."""
    vmm = Vmm(m)
    data_pages = (REPS + 1) * per_rep
    tables = 64
    ram = m.mmap((data_pages + tables) * PAGE)
    for i in range(data_pages):  # data in every page, as the paging setup has
        m.mem_write(ram + i * PAGE, b"\1")
    vmm.map(ram, (data_pages + tables) * PAGE, 0)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(parent)
    vmm.vdevice_alloc(viommu, VSID)
    cd_ipa = data_pages * PAGE
    s1 = IoPageTable(formats.arm_lpae_s1(4096, 48, 48).with_pgsizes(PAGE),
                     GuestTables(m, ram, cd_ipa + PAGE))
    s1.map(GVA, 0, data_pages * PAGE, RW)
    m.mem_write(ram + cd_ipa, guest_smmu_cd(s1, {"asid": ASID}))
    vste = (STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_S1_TRANS) | cd_ipa,
            FIELD_PREP(STRTAB_STE_1_S1DSS, STRTAB_STE_1_S1DSS_SSID0))
    data = bytes(u.iommu_hwpt_arm_smmuv3(ste=(ctypes.c_uint64 * 2)(*vste)))
    vmm.attach(vmm.hwpt_alloc(viommu, 0, data, u.IOMMU_HWPT_DATA_ARM_SMMUV3))
    return _cold_reads(m, GVA, per_rep)


def nested_miss_vs_paging_miss(make_machine: MakeMachine, per_rep: int = 256
                               ) -> dict[str, float]:
    """Both setups on their own Machines, their repetitions in alternation."""
    machines = [make_machine(machine_config()) for _ in range(2)]
    try:
        p, n = best_of_runs([paging_misses(machines[0], per_rep),
                             nested_misses(machines[1], per_rep)], REPS)
        return {"nested_miss_vs_paging_miss": n / p, "paging_miss_us": p * 1e6,
                "nested_miss_us": n * 1e6}
    finally:
        for m in machines:
            m.shutdown()


def run(make_machine: MakeMachine, quick: bool = False) -> dict[str, float]:
    return nested_miss_vs_paging_miss(make_machine, per_rep=64 if quick else 256)


BENCH = BenchDesc(options=OPTIONS, run=run, keys=("nested_miss_vs_paging_miss",))

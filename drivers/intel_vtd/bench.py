"""VT-d measurements of issue #14, as ratios measured in one process through a Machine's
ioctl ABI and DMA only: GC paused, the two sides of a ratio in alternation, best of 7
repetitions (the misses: best of 15 short ones, each over fresh pages).

Each function takes ``make_machine(config)`` (``iommu_sim.Machine.from_config``; the
driver layer does not import the Machine) and returns a dict of figures:

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a paging
  domain attached and 65,536 distinct pages cached (warmed by DMA reads over a 256 MiB
  mapping) over the same with nothing cached;
* ``nested_miss_vs_paging_miss``: a DMA that misses the IOTLB through a nested domain
  (guest first stage on a nest parent) over one through a plain paging domain, each
  walking fresh pages of warm tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in the same format.

``run(make_machine)`` returns all of them (``python -m iommu_sim.bench`` builds on it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.timing import best_interleaved, best_of_runs, best_per_call

DEV = "0000:00:02.0"
PAGE = 4096
RW = IOMMU_READ | IOMMU_WRITE
#: Repetitions of the miss measurements (short ones: the best of many sees the least
#: interference from other load); each needs fresh pages.
REPS = 16
SMALL_IOVA = 1 << 40  # the measured 4 KiB map lives far from anything else


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


MakeMachine = Callable[[dict[str, Any]], MachineLike]


def scattered_memory(m: MachineLike, npages: int) -> list[tuple[int, int]]:
    """User memory in 512 KiB mappings (below the 2 MiB that transparent huge pages
    need) whose pages are touched last to first, so no two neighbours are physically
    contiguous and every IOPTE mapping them is a 4 KiB leaf: [(va, pages)]."""
    chunks = []
    for first in range(0, npages, 128):
        n = min(128, npages - first)
        va = m.mmap(n * PAGE)
        for i in range(n - 1, -1, -1):
            m.mem_write(va + i * PAGE, b"\1")
        chunks.append((va, n))
    return chunks


def machine_config(**options: Any) -> dict[str, Any]:
    return {"iommus": [{"name": "dmar0", "driver": "intel_vtd", **options}],
            "devices": [{"name": DEV, "iommu": "dmar0"}]}


class Vmm:
    """iommufd, one VFIO device bound to it, one IOAS."""

    def __init__(self, m: MachineLike) -> None:
        self.m = m
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = v.vfio_device_bind_iommufd(argsz=ctypes.sizeof(v.vfio_device_bind_iommufd),
                                          iommufd=self.fd)
        m.ioctl(self.vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = int(bind.out_devid)
        ioas = u.iommu_ioas_alloc(size=ctypes.sizeof(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)
        self.scratch = m.mmap(PAGE)
        self._map = u.iommu_ioas_map(size=ctypes.sizeof(u.iommu_ioas_map), ioas_id=self.ioas,
                                     flags=u.IOMMU_IOAS_MAP_FIXED_IOVA
                                     | u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE)
        self._unmap = u.iommu_ioas_unmap(size=ctypes.sizeof(u.iommu_ioas_unmap),
                                         ioas_id=self.ioas)

    def map(self, va: int, length: int, iova: int) -> None:
        mp = self._map
        mp.user_va, mp.length, mp.iova = va, length, iova
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def map_scattered(self, chunks: list[tuple[int, int]], iova: int) -> None:
        for va, n in chunks:
            self.map(va, n * PAGE, iova)
            iova += n * PAGE

    def unmap(self, iova: int, length: int) -> None:
        um = self._unmap
        um.iova, um.length = iova, length
        self.m.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, um)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   data_type: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=ctypes.sizeof(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id, pt_id=pt_id, data_type=data_type,
                               data_len=len(data), data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def attach(self, pt_id: int) -> None:
        at = v.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(v.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        self.m.ioctl(self.vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)


class GuestTables:
    """Guest RAM as the page-table core's TableMemory: the guest's first-stage tables,
    written through the VMM's mapping of guest RAM (addresses are GPAs)."""

    def __init__(self, m: MachineLike, ram_va: int, first_table_gpa: int) -> None:
        self.m = m
        self.ram_va = ram_va
        self._next = first_table_gpa

    def alloc_table(self, size: int) -> int:
        gpa = self._next
        self._next += PAGE
        self.m.mem_write(self.ram_va + gpa, bytes(PAGE))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.m.mem_read(self.ram_va + gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.m.mem_write(self.ram_va + gpa, value.to_bytes(8, "little"))


# =======================================================================================
# The measurements
# =======================================================================================
def _map_unmap_op(vmm: Vmm, va: int) -> Callable[[], None]:
    def op() -> None:
        vmm.map(va, PAGE, SMALL_IOVA)
        vmm.unmap(SMALL_IOVA, PAGE)
    return op


def pgtable_map_unmap_4k_op() -> Callable[[], None]:
    """The floor: the first-stage format's own map_pages + unmap_pages of 4 KiB."""
    mem = PhysicalMemory()
    pt = IoPageTable(formats.x86_64(4, oas=52), PhysTableMemory(mem, PageAllocator(mem)))
    pt.map_pages(SMALL_IOVA + (1 << 30), 0x1000_0000, PAGE, 1, RW)  # upper levels exist

    def op() -> None:
        pt.map_pages(SMALL_IOVA, 0x2000_0000, PAGE, 1, RW)
        pt.unmap_pages(SMALL_IOVA, PAGE, 1, IotlbGather())
    return op


def inval_cached_ratio(make_machine: MakeMachine, cached: int = 65536, number: int = 50
                       ) -> dict[str, float]:
    """4 KiB map + unmap with ``cached`` pages in the IOTLB (and the device's ATC) over
    the same with nothing cached: two Machines set up alike, one warmed by DMA reads,
    measured in alternation."""
    machines = [make_machine(machine_config()) for _ in range(2)]
    try:
        ops = []
        for warm, m in enumerate(machines):
            vmm = Vmm(m)
            vmm.attach(vmm.ioas)
            vmm.map_scattered(scattered_memory(m, cached), 0)
            small = m.mmap(PAGE)
            if warm:
                for i in range(cached):
                    m.dma_read(DEV, i * PAGE, 64)
            op = _map_unmap_op(vmm, small)
            best_per_call(op, number, 1)  # the IOAS's first-use costs out of the way
            ops.append(op)
        empty, full = best_interleaved(ops, number)
        return {"inval_cached_ratio": full / empty, "map_unmap_4k_empty_us": empty * 1e6,
                "map_unmap_4k_cached_us": full * 1e6}
    finally:
        for m in machines:
            m.shutdown()


def map_unmap_4k_vs_pgtable(make_machine: MakeMachine, number: int = 200
                            ) -> dict[str, float]:
    """The two measured in alternation."""
    m = make_machine(machine_config())
    try:
        vmm = Vmm(m)
        vmm.attach(vmm.ioas)
        op = _map_unmap_op(vmm, m.mmap(PAGE))
        best_per_call(op, number, 1)
        ioctl, floor = best_interleaved([op, pgtable_map_unmap_4k_op()], [number, 10 * number])
        return {"map_unmap_4k_vs_pgtable": ioctl / floor, "map_unmap_4k_us": ioctl * 1e6,
                "pgtable_map_unmap_4k_us": floor * 1e6}
    finally:
        m.shutdown()


def _cold_reads(m: MachineLike, base: int, per_rep: int) -> Callable[[int], int]:
    """Repetition ``rep`` DMA-reads pages never read before (each one an IOTLB miss);
    repetition -1, run here, warms the tables."""
    def run(rep: int) -> int:
        first = base + (rep + 1) * per_rep * PAGE
        for i in range(per_rep):
            m.dma_read(DEV, first + i * PAGE, 64)
        return per_rep
    run(-1)
    return run


def paging_misses(m: MachineLike, per_rep: int = 256) -> Callable[[int], int]:
    """A plain (first-stage) paging domain over 4 KiB IOPTEs."""
    vmm = Vmm(m)
    vmm.attach(vmm.ioas)
    vmm.map_scattered(scattered_memory(m, REPS * per_rep), 0)
    return _cold_reads(m, 0, per_rep)


GVA = 1 << 32


def nested_misses(m: MachineLike, per_rep: int = 256) -> Callable[[int], int]:
    """The guest maps GVA page i to its RAM page i with a 4-level first stage; the VMM
    maps guest RAM at IOVA = GPA in a nest parent; the device is attached to the nested
    domain at its RID."""
    vmm = Vmm(m)
    data_pages = REPS * per_rep
    tables = 64
    ram = m.mmap((data_pages + tables) * PAGE)
    for i in range(data_pages):  # data in every page, as the paging setup has
        m.mem_write(ram + i * PAGE, b"\1")
    vmm.map(ram, (data_pages + tables) * PAGE, 0)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    # 4 KiB leaves only (an aligned run would otherwise take 2 MiB pages)
    s1 = IoPageTable(formats.x86_64(4, oas=52).with_pgsizes(PAGE),
                     GuestTables(m, ram, data_pages * PAGE))
    s1.map(GVA, 0, data_pages * PAGE, RW)
    data = u.iommu_hwpt_vtd_s1(pgtbl_addr=s1.root, addr_width=48)
    nested = vmm.hwpt_alloc(parent, 0, bytes(data), u.IOMMU_HWPT_DATA_VTD_S1)
    vmm.attach(nested)
    return _cold_reads(m, GVA, per_rep)


def nested_miss_vs_paging_miss(make_machine: MakeMachine, per_rep: int = 256
                               ) -> dict[str, float]:
    """Both setups on their own Machines, their repetitions in alternation."""
    machines = [make_machine(machine_config()) for _ in range(2)]
    try:
        p, n = best_of_runs([paging_misses(machines[0], per_rep),
                             nested_misses(machines[1], per_rep)], REPS - 1)
        return {"nested_miss_vs_paging_miss": n / p, "paging_miss_us": p * 1e6,
                "nested_miss_us": n * 1e6}
    finally:
        for m in machines:
            m.shutdown()


def run(make_machine: MakeMachine, quick: bool = False) -> dict[str, float]:
    out: dict[str, float] = {}
    out.update(inval_cached_ratio(make_machine, cached=8192 if quick else 65536,
                                  number=20 if quick else 50))
    out.update(nested_miss_vs_paging_miss(make_machine, per_rep=64 if quick else 256))
    out.update(map_unmap_4k_vs_pgtable(make_machine, number=50 if quick else 200))
    return out

"""AMD-Vi measurements of issue #14, as ratios measured in one process through a
Machine's ioctl ABI and DMA only: GC paused, the two sides of a ratio in alternation,
best of 7 repetitions (the misses: best of 15 short ones, each over fresh pages).

Each function takes ``make_machine(config)`` (``iommu_sim.Machine.from_config``; the
driver layer does not import the Machine) and returns a dict of figures:

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a v1
  paging domain attached and 65,536 distinct pages cached (warmed by DMA reads over a
  256 MiB mapping) over the same with nothing cached;
* ``nested_miss_vs_paging_miss``: a DMA that misses the IOTLB through a nested domain
  (guest DTE with a GCR3 table and a v2 table, on an AMD vIOMMU over a v1 nest parent)
  over one through a plain v1 paging domain, each walking fresh pages of warm tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in the v1 format.

``run(make_machine)`` returns all of them (``python -m iommu_sim.bench`` builds on it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from drivers.amd_vi.amd_iommu_types import (
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_V,
    GCR3_VALID,
    dte_gcr3_fields,
)
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.timing import best_interleaved, best_of_runs, best_per_call

DEV = "0000:00:03.0"
PAGE = 4096
RW = IOMMU_READ | IOMMU_WRITE
#: Repetitions of the miss measurements (short ones: the best of many sees the least
#: interference from other load); each needs fresh pages.
REPS = 16
SMALL_IOVA = 1 << 40  # the measured 4 KiB map lives far from anything else
GVA = 1 << 32
GDOMID = 7


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
    return {"iommus": [{"name": "amdvi0", "driver": "amd_vi", **options}],
            "devices": [{"name": DEV, "iommu": "amdvi0"}]}


class Vm:
    """A VMM's view: iommufd with the device bound, one IOAS, and (for nesting) a
    vIOMMU with the device's vDEVICE."""

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
        self.mp = u.iommu_ioas_map(size=ctypes.sizeof(u.iommu_ioas_map), ioas_id=self.ioas,
                                   flags=u.IOMMU_IOAS_MAP_FIXED_IOVA
                                   | u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE)
        self.um = u.iommu_ioas_unmap(size=ctypes.sizeof(u.iommu_ioas_unmap), ioas_id=self.ioas)

    def map_unmap(self, va: int, length: int, iova: int, unmap: bool) -> None:
        self.mp.user_va, self.mp.length, self.mp.iova = va, length, iova
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, self.mp)
        if unmap:
            self.um.iova, self.um.length = iova, length
            self.m.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, self.um)

    def map_scattered(self, chunks: list[tuple[int, int]]) -> None:
        iova = 0
        for va, n in chunks:
            self.map_unmap(va, n * PAGE, iova, False)
            iova += n * PAGE

    def alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
              data_type: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        self.m.mem_write(self.scratch, data or b"\0")
        a = u.iommu_hwpt_alloc(size=ctypes.sizeof(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id, pt_id=pt_id, data_type=data_type,
                               data_len=len(data), data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def viommu(self, parent: int) -> int:
        va = u.iommu_viommu_alloc(size=ctypes.sizeof(u.iommu_viommu_alloc),
                                  type=u.IOMMU_VIOMMU_TYPE_AMD, dev_id=self.dev_id,
                                  hwpt_id=parent)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, va)
        vd = u.iommu_vdevice_alloc(size=ctypes.sizeof(u.iommu_vdevice_alloc),
                                   viommu_id=va.out_viommu_id, dev_id=self.dev_id,
                                   virt_id=0x0100)
        self.m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, vd)
        return int(va.out_viommu_id)

    def attach(self, pt_id: int) -> None:
        at = v.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(v.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        self.m.ioctl(self.vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)


class GuestRam:
    """Guest RAM (GPA 0 up) seen through the VMM's mapping; a bump allocator hands out
    the guest's table pages (the page-table core's TableMemory)."""

    def __init__(self, m: MachineLike, va: int, tables_from: int) -> None:
        self.m, self.va, self._next = m, va, tables_from

    def alloc_table(self, size: int) -> int:
        gpa, self._next = self._next, self._next + PAGE
        self.m.mem_write(self.va + gpa, bytes(PAGE))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.m.mem_read(self.va + gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.m.mem_write(self.va + gpa, value.to_bytes(8, "little"))


# =======================================================================================
# The measurements
# =======================================================================================
def _map_unmap_op(vm: Vm, va: int) -> Callable[[], None]:
    return lambda: vm.map_unmap(va, PAGE, SMALL_IOVA, True)


def pgtable_map_unmap_4k_op() -> Callable[[], None]:
    """The floor: the v1 format's own map_pages + unmap_pages of 4 KiB."""
    mem = PhysicalMemory()
    pt = IoPageTable(formats.amd_v1(4), PhysTableMemory(mem, PageAllocator(mem)))
    pt.map_pages(SMALL_IOVA + (1 << 30), 0x1000_0000, PAGE, 1, RW)  # upper levels exist

    def op() -> None:
        pt.map_pages(SMALL_IOVA, 0x2000_0000, PAGE, 1, RW)
        pt.unmap_pages(SMALL_IOVA, PAGE, 1, IotlbGather())
    return op


def inval_cached_ratio(make_machine: MakeMachine, cached: int = 65536, number: int = 50
                       ) -> dict[str, float]:
    """4 KiB map + unmap with ``cached`` pages in the IOTLB over the same with nothing
    cached: two Machines set up alike, one warmed by DMA reads, measured in
    alternation."""
    machines = [make_machine(machine_config()) for _ in range(2)]
    try:
        ops = []
        for warm, m in enumerate(machines):
            vm = Vm(m)
            vm.attach(vm.ioas)
            vm.map_scattered(scattered_memory(m, cached))
            small = m.mmap(PAGE)
            if warm:
                for i in range(cached):
                    m.dma_read(DEV, i * PAGE, 64)
            op = _map_unmap_op(vm, small)
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
        vm = Vm(m)
        vm.attach(vm.ioas)
        op = _map_unmap_op(vm, m.mmap(PAGE))
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
    """A plain v1 paging domain over 4 KiB IOPTEs."""
    vm = Vm(m)
    vm.attach(vm.ioas)
    vm.map_scattered(scattered_memory(m, REPS * per_rep))
    return _cold_reads(m, 0, per_rep)


def nested_misses(m: MachineLike, per_rep: int = 256) -> Callable[[int], int]:
    """The guest maps GVA page i to its RAM page i with a 4-level v2 table at PASID 0 of
    a one-level GCR3 table; the VMM maps guest RAM at IOVA = GPA in a v1 nest parent."""
    vm = Vm(m)
    data_pages = REPS * per_rep
    total = data_pages + 64
    ram_va = m.mmap(total * PAGE)
    for i in range(data_pages):  # data in every page, as the paging setup has
        m.mem_write(ram_va + i * PAGE, b"\1")
    vm.map_unmap(ram_va, total * PAGE, 0, False)
    parent = vm.alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vm.viommu(parent)
    ram = GuestRam(m, ram_va, data_pages * PAGE)
    s1 = IoPageTable(formats.x86_64(4).with_pgsizes(PAGE), ram)
    s1.map(GVA, 0, data_pages * PAGE, RW)
    gcr3 = ram.alloc_table(PAGE)
    ram.write_u64(gcr3, s1.root | GCR3_VALID)
    d0, d1 = dte_gcr3_fields(gcr3)
    gdte = (DTE_FLAG_V | DTE_FLAG_GV | DTE_FLAG_GIOV | d0, d1 | GDOMID, 0, 0)
    nested = vm.alloc(viommu, 0, b"".join(w.to_bytes(8, "little") for w in gdte),
                      u.IOMMU_HWPT_DATA_AMD_GUEST)
    vm.attach(nested)
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

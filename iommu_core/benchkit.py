"""The measurements of issue #14 (ratios through a Machine's ioctl ABI and DMA only),
vendor-neutral: a driver's ``bench`` module (``drivers/intel_vtd/bench.py``,
``drivers/amd_vi/bench.py``) names its Machine, device and page-table format and builds
its nested setup; this module measures.

Every figure is a ratio of two timings in one process (GC paused, the two sides in
alternation, best of several repetitions; see :mod:`iommu_core.timing`):

* ``inval_cached_ratio``: a 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` with a paging
  domain attached and ``cached`` distinct pages cached (DMA reads over a mapping of
  ``cached`` pages in 4 KiB IOPTEs) over the same on a Machine with nothing cached
  (:func:`inval_by_occupancy`: the same at several numbers of pages cached);
* ``nested_miss_vs_paging_miss``: a DMA that misses the IOTLB through a nested domain over
  one through a plain paging domain, each reading fresh pages of warm tables;
* ``map_unmap_4k_vs_pgtable``: the 4 KiB map + unmap through ``m.ioctl`` over the
  page-table core's own ``map_pages`` + ``unmap_pages`` of 4 KiB in a given format, at
  the same IOVA of an otherwise empty table (both sides build and free the tables below
  the root).

The Machine comes from the caller's ``make_machine(config)`` and the iommufd uAPI
modules are handed in (:class:`Uapi`): the core sits below both. The system bench
(``python -m iommu_sim.bench``) measures every driver with these and asks each one for
its nested setup (:meth:`VendorBench.desc`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from iommu_core.describe.teach import BenchDesc
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable, PhysTableMemory
from iommu_core.pgtable.formats.base import PtFormat
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.timing import best_interleaved, best_of_runs, best_per_call

PAGE = 4096
RW = IOMMU_READ | IOMMU_WRITE
#: Repetitions of the miss measurements (short ones: the best of many sees the least
#: interference from other load); each needs fresh pages.
REPS = 16
SMALL_IOVA = 1 << 40  # the measured 4 KiB map lives far from anything else
#: Where a populated measurement keeps a page mapped: beside the measured one's leaf table.
NEIGHBOUR = 2 << 20
#: Where the pages the invalidation measurements cache are mapped: above every vendor's
#: reserved ranges (the SMMU's MSI window sits at 128 MiB, x86's below 4 GiB).
WARM_IOVA = 1 << 32
#: Where a nested setup's guest maps its data.
GVA = 1 << 32


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


class Uapi(NamedTuple):
    """The iommufd and VFIO uAPI modules (``iommufd.uapi``, ``iommufd.uapi_vfio``)."""

    iommufd: ModuleType
    vfio: ModuleType


class Rig(NamedTuple):
    """One vendor's setup: its Machine config (one IOMMU, ``dev`` behind it) and uAPI."""

    config: dict[str, Any]
    dev: str
    uapi: Uapi


def unit_rig(driver: str, uapi: Uapi, options: dict[str, Any] | None = None,
             dev_options: dict[str, Any] | None = None, dev: str = "0000:00:01.0") -> Rig:
    """A Machine of one unit of ``driver`` (with ``options``) and one PCI device behind
    it (with ``dev_options``)."""
    return Rig({"iommus": [{"name": "iommu0", "driver": driver, **(options or {})}],
                "devices": [{"name": dev, "iommu": "iommu0", **(dev_options or {})}]},
               dev, uapi)


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


class Vmm:
    """A VMM's view: iommufd with the device bound, one IOAS."""

    def __init__(self, m: MachineLike, rig: Rig) -> None:
        self.u, self.vf = u, vf = rig.uapi
        self.m = m
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(rig.dev))
        bind = vf.vfio_device_bind_iommufd(argsz=ctypes.sizeof(vf.vfio_device_bind_iommufd),
                                           iommufd=self.fd)
        m.ioctl(self.vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, bind)
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
        self.m.ioctl(self.fd, self.u.IOMMU_IOAS_MAP, mp)

    def map_scattered(self, chunks: list[tuple[int, int]], iova: int = 0) -> None:
        for va, n in chunks:
            self.map(va, n * PAGE, iova)
            iova += n * PAGE

    def unmap(self, iova: int, length: int) -> None:
        um = self._unmap
        um.iova, um.length = iova, length
        self.m.ioctl(self.fd, self.u.IOMMU_IOAS_UNMAP, um)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   data_type: int = 0) -> int:
        u = self.u
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=ctypes.sizeof(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id, pt_id=pt_id, data_type=data_type,
                               data_len=len(data), data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def viommu_alloc(self, viommu_type: int, parent: int, virt_id: int) -> int:
        """A vIOMMU over the nest parent and the device's vDEVICE with ``virt_id``."""
        u = self.u
        va = u.iommu_viommu_alloc(size=ctypes.sizeof(u.iommu_viommu_alloc),
                                  type=viommu_type, dev_id=self.dev_id, hwpt_id=parent)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, va)
        vd = u.iommu_vdevice_alloc(size=ctypes.sizeof(u.iommu_vdevice_alloc),
                                   viommu_id=va.out_viommu_id, dev_id=self.dev_id,
                                   virt_id=virt_id)
        self.m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, vd)
        return int(va.out_viommu_id)

    def attach(self, pt_id: int) -> None:
        vf = self.vf
        at = vf.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(vf.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        self.m.ioctl(self.vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)


class GuestRam:
    """Guest RAM (GPA 0 up) seen through the VMM's mapping of it at ``ram_va``, as the
    page-table core's TableMemory: a bump allocator from ``tables_from`` hands out the
    guest's table pages (addresses are GPAs)."""

    def __init__(self, m: MachineLike, ram_va: int, tables_from: int) -> None:
        self.m, self.ram_va, self._next = m, ram_va, tables_from

    def alloc_table(self, size: int) -> int:
        gpa, self._next = self._next, self._next + PAGE
        self.m.mem_write(self.ram_va + gpa, bytes(PAGE))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.m.mem_read(self.ram_va + gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.m.mem_write(self.ram_va + gpa, value.to_bytes(8, "little"))


def guest_ram(vmm: Vmm, data_pages: int, tables: int = 64) -> tuple[int, GuestRam]:
    """Guest RAM of ``data_pages`` pages of data (each written, as the paging setup's
    are) and ``tables`` pages for the guest's tables, mapped at IOVA = GPA in the IOAS:
    (its user address, the guest's table memory)."""
    m = vmm.m
    ram_va = m.mmap((data_pages + tables) * PAGE)
    for i in range(data_pages):
        m.mem_write(ram_va + i * PAGE, b"\1")
    vmm.map(ram_va, (data_pages + tables) * PAGE, 0)
    return ram_va, GuestRam(m, ram_va, data_pages * PAGE)


# =======================================================================================
# The measurements
# =======================================================================================
def map_unmap_op(vmm: Vmm, va: int, iova: int = SMALL_IOVA) -> Callable[[], None]:
    """The measured operation: map the 4 KiB at ``va`` at ``iova``, unmap it."""
    def op() -> None:
        vmm.map(va, PAGE, iova)
        vmm.unmap(iova, PAGE)
    return op


def pgtable_map_unmap_4k_op(fmt: PtFormat, iova: int = SMALL_IOVA, populated: bool = False
                            ) -> Callable[[], None]:
    """The floor: the format's own map_pages + unmap_pages of 4 KiB (in its smallest
    pages if they are smaller) at ``iova`` of an empty table, as the measured domain has
    it (``populated``: with a page mapped 2 MiB above, so the tables above the leaf
    table stay), with an IOTLB gather; the tables in simulated memory."""
    mem = PhysicalMemory()
    pt = IoPageTable(fmt, PhysTableMemory(mem, PageAllocator(mem)))
    pgsize = PAGE if fmt.pgsize_bitmap & PAGE else fmt.pgsize_bitmap & -fmt.pgsize_bitmap
    count = PAGE // pgsize
    if populated:
        pt.map_pages(iova + NEIGHBOUR, 0x3000_0000, pgsize, count, RW)

    def op() -> None:
        pt.map_pages(iova, 0x2000_0000, pgsize, count, RW)
        pt.unmap_pages(iova, pgsize, count, IotlbGather())
    return op


def paging_vmm(m: MachineLike, rig: Rig) -> Vmm:
    vmm = Vmm(m, rig)
    vmm.attach(vmm.ioas)
    return vmm


def inval_by_occupancy(make_machine: MakeMachine, rig: Rig, levels: Sequence[int],
                       number: int = 50, reps: int = 7) -> list[tuple[int, float, float]]:
    """4 KiB map + unmap with each number of pages of ``levels`` cached (in increasing
    order, warmed step by step by DMA reads over a mapping of the largest) and on a
    Machine set up alike with nothing cached, the two measured in alternation at each
    step: [(pages, seconds cached, seconds empty)]."""
    machines = [make_machine(rig.config) for _ in range(2)]
    top = max(levels)
    try:
        ops = []
        for m in machines:
            vmm = paging_vmm(m, rig)
            vmm.map_scattered(scattered_memory(m, top), WARM_IOVA)
            op = map_unmap_op(vmm, m.mmap(PAGE))
            best_per_call(op, number, 1)  # the IOAS's first-use costs out of the way
            ops.append(op)
        out = []
        warm, done = machines[1], 0
        for pages in sorted(levels):
            for i in range(done, pages):
                warm.dma_read(rig.dev, WARM_IOVA + i * PAGE, 64)
            done = pages
            empty, full = best_interleaved(ops, number, reps)
            out.append((pages, full, empty))
        return out
    finally:
        for m in machines:
            m.shutdown()


def inval_cached_ratio(make_machine: MakeMachine, rig: Rig, cached: int = 65536,
                       number: int = 50) -> dict[str, float]:
    """4 KiB map + unmap with ``cached`` pages cached over the same with nothing
    cached (:func:`inval_by_occupancy` at one step)."""
    ((_, full, empty),) = inval_by_occupancy(make_machine, rig, (cached,), number)
    return {"inval_cached_ratio": full / empty, "map_unmap_4k_empty_us": empty * 1e6,
            "map_unmap_4k_cached_us": full * 1e6}


def map_unmap_vs_floor(vmm: Vmm, fmt: PtFormat, iova: int = SMALL_IOVA, number: int = 200,
                       reps: int = 7, populated: bool = False) -> dict[str, float]:
    """On ``vmm`` (a paging domain attached): the two measured in alternation (the floor
    ten times as often: it is short). ``populated``: both with a page mapped
    :data:`NEIGHBOUR` above (the upper tables stay; the pair costs less, the iommufd
    part the same), its key ``map_unmap_4k_vs_pgtable_populated``."""
    if populated:
        vmm.map(vmm.m.mmap(PAGE), PAGE, iova + NEIGHBOUR)
    op = map_unmap_op(vmm, vmm.m.mmap(PAGE), iova)
    best_per_call(op, number, 1)
    ioctl, floor = best_interleaved([op, pgtable_map_unmap_4k_op(fmt, iova, populated)],
                                    [number, 10 * number], reps)
    suffix = "_populated" if populated else ""
    return {f"map_unmap_4k_vs_pgtable{suffix}": ioctl / floor,
            f"map_unmap_4k{suffix}_us": ioctl * 1e6,
            f"pgtable_map_unmap_4k{suffix}_us": floor * 1e6}


def map_unmap_4k_vs_pgtable(make_machine: MakeMachine, rig: Rig, fmt: PtFormat,
                            number: int = 200) -> dict[str, float]:
    m = make_machine(rig.config)
    try:
        return map_unmap_vs_floor(paging_vmm(m, rig), fmt, SMALL_IOVA, number)
    finally:
        m.shutdown()


def cold_reads(m: MachineLike, dev: str, base: int, per_rep: int) -> Callable[[int], int]:
    """Repetition ``rep`` DMA-reads ``per_rep`` pages from ``base`` on never read before
    (each one an IOTLB miss); repetition -1, run here, warms the tables."""
    def run(rep: int) -> int:
        first = base + (rep + 1) * per_rep * PAGE
        for i in range(per_rep):
            m.dma_read(dev, first + i * PAGE, 64)
        return per_rep
    run(-1)
    return run


def paging_misses(m: MachineLike, rig: Rig, per_rep: int = 256) -> Callable[[int], int]:
    """A plain paging domain over 4 KiB IOPTEs."""
    paging_vmm(m, rig).map_scattered(scattered_memory(m, REPS * per_rep))
    return cold_reads(m, rig.dev, 0, per_rep)


#: A vendor's nested setup: on a fresh Machine, guest data at GVA page i for
#: ``data_pages`` pages, the device attached to the nested domain (to read them at GVA).
NestedSetup = Callable[[MachineLike, int], None]


def nested_miss_vs_paging_miss(make_machine: MakeMachine, rig: Rig, nested: NestedSetup,
                               per_rep: int = 256) -> dict[str, float]:
    """Both setups on their own Machines, their repetitions in alternation."""
    machines = [make_machine(rig.config) for _ in range(2)]
    try:
        nested(machines[1], REPS * per_rep)
        p, n = best_of_runs([paging_misses(machines[0], rig, per_rep),
                             cold_reads(machines[1], rig.dev, GVA, per_rep)], REPS - 1)
        return {"nested_miss_vs_paging_miss": n / p, "paging_miss_us": p * 1e6,
                "nested_miss_us": n * 1e6}
    finally:
        for m in machines:
            m.shutdown()


class VendorBench:
    """One vendor's measurements: its rig, the format its paging domains use (the
    page-table floor) and its nested setup. A driver's ``bench`` module exports the
    bound methods."""

    def __init__(self, rig: Rig, fmt: PtFormat, nested: NestedSetup) -> None:
        self.rig, self.fmt, self.nested = rig, fmt, nested

    def inval_cached_ratio(self, make_machine: MakeMachine, cached: int = 65536,
                           number: int = 50) -> dict[str, float]:
        return inval_cached_ratio(make_machine, self.rig, cached, number)

    def nested_miss_vs_paging_miss(self, make_machine: MakeMachine, per_rep: int = 256
                                   ) -> dict[str, float]:
        return nested_miss_vs_paging_miss(make_machine, self.rig, self.nested, per_rep)

    def map_unmap_4k_vs_pgtable(self, make_machine: MakeMachine, number: int = 200
                                ) -> dict[str, float]:
        return map_unmap_4k_vs_pgtable(make_machine, self.rig, self.fmt, number)

    def run(self, make_machine: MakeMachine, quick: bool = False) -> dict[str, float]:
        """All three (``quick``: fewer pages and calls)."""
        out: dict[str, float] = {}
        out.update(self.inval_cached_ratio(make_machine, 8192 if quick else 65536,
                                           20 if quick else 50))
        out.update(self.nested_miss_vs_paging_miss(make_machine, 64 if quick else 256))
        out.update(self.map_unmap_4k_vs_pgtable(make_machine, 50 if quick else 200))
        return out

    def desc(self, options: dict[str, Any] | None = None) -> BenchDesc:
        """What the system bench takes from this vendor (its ``describe_bench``): the
        nested-miss ratio, which needs the vendor's nested setup (the bench measures the
        rest the same way for every driver), and the unit ``options`` its Machines
        need."""
        def nested(make_machine: Callable[[Any], Any], quick: bool) -> dict[str, float]:
            return self.nested_miss_vs_paging_miss(make_machine, 64 if quick else 256)

        return BenchDesc(options=dict(options or {}), run=nested,
                         keys=("nested_miss_vs_paging_miss",))

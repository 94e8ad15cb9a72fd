"""Performance ratios measured through the Machine ABI, for any driver.

Every figure is a ratio of two timings taken in the same process (the cyclic GC paused,
best of N, the two contenders measured in turns), never an absolute time; the system
bench (``python -m iommu_sim.bench``) builds on these definitions. Run one driver's set
with::

    python -m iommu_sim.perf --driver arm_smmu_v3 [--option tlb_entries=131072] [--quick]

* ``map_unmap_4k_vs_pgtable``: one 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP`` through
  ``m.ioctl`` with a paging domain attached / the page-table core's own map_pages +
  unmap_pages of 4 KiB (materialised tables in simulated memory) at the same IOVA.
* ``inval_cached_ratio``: the same ioctl pair with ``pages`` distinct 4 KiB pages cached
  in the IOMMU (warmed by one DMA read per page over a mapping of ``pages`` pages) /
  the pair on an identical Machine with nothing cached. ``leaf`` 2 MiB lets the mapping
  use block leaves; 4 KiB forces 4 KiB leaves (misaligned), so the TLB holds one entry
  per page.
* ``dma_hit``: DMA reads and writes that hit the IOMMU's caches / a dict lookup and a
  copy of as many bytes (:func:`dma_floor`).
* ``ioctl_noop``: ``IOMMU_OPTION`` get through ``m.ioctl`` / a Python function call with
  the same arguments.

The page-table floor uses the format of the domain the device is attached to (as the
driver's ``describe_domain`` names it), so every vendor is compared with its own tables.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iommu_core.describe import DescribeOps
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.pgtable.formats.base import PtFormat
from iommu_core.pgtable.memory import PhysTableMemory
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_sim.machine import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

SZ_4K = 4096
SZ_2M = 1 << 21
DEV = "0000:00:01.0"
#: Where the measured 4 KiB map+unmap goes: away from the warmed mapping.
PROBE_IOVA = 1 << 40
WARM_IOVA = 1 << 32


SZ_1G = 1 << 30
RW = IOMMU_READ | IOMMU_WRITE


def best_of(fn: Callable[[], object], n: int, reps: int = 7) -> float:
    """Seconds per call of ``fn``: the best of ``reps`` runs of ``n`` calls, GC paused."""
    return best_of_each([fn], n, reps)[0]


def best_of_each(fns: Sequence[Callable[[], object]], n: int, reps: int = 7) -> list[float]:
    """:func:`best_of` for several functions, their runs interleaved so that a burst of
    load on a shared machine hits all of them alike."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        best = [float("inf")] * len(fns)
        for _ in range(reps):
            for i, fn in enumerate(fns):
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - t) / n)
        return best
    finally:
        if was:
            gc.enable()


def _sz(s: Any) -> int:
    return ctypes.sizeof(s)


class Rig:
    """One Machine: an IOMMU of ``driver`` (with ``options``), one PCI device (with
    ``dev_options``) bound to an iommufd and attached to an IOAS (a paging domain), or
    with ``nest_parent`` to a nest-parent HWPT of the IOAS."""

    def __init__(self, driver: str, options: Mapping[str, Any] | None = None,
                 dev_options: Mapping[str, Any] | None = None, *,
                 nest_parent: bool = False) -> None:
        self.m = m = Machine.from_config({
            "iommus": [{"name": "iommu0", "driver": driver, **(options or {})}],
            "devices": [{"name": DEV, "iommu": "iommu0", **(dev_options or {})}]})
        self.fd = m.open("/dev/iommu")
        vfd = m.open(m.vfio_cdev(DEV))
        bind = v.vfio_device_bind_iommufd(argsz=_sz(v.vfio_device_bind_iommufd),
                                          iommufd=self.fd)
        m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        ioas = u.iommu_ioas_alloc(size=_sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = pt_id = int(ioas.out_ioas_id)
        if nest_parent:
            a = u.iommu_hwpt_alloc(size=_sz(u.iommu_hwpt_alloc), dev_id=int(bind.out_devid),
                                   pt_id=self.ioas, flags=u.IOMMU_HWPT_ALLOC_NEST_PARENT)
            m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
            pt_id = int(a.out_hwpt_id)
        at = v.vfio_device_attach_iommufd_pt(argsz=_sz(v.vfio_device_attach_iommufd_pt),
                                             pt_id=pt_id)
        m.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def usable_iova(self, want: int = PROBE_IOVA, length: int = SZ_2M) -> int:
        """``want`` if the IOAS allows ``[want, want+length)`` now, else the first
        2 MiB-aligned address of the largest allowed range that fits."""
        m = self.m
        buf = m.mmap(SZ_4K)
        q = u.iommu_ioas_iova_ranges(size=_sz(u.iommu_ioas_iova_ranges), ioas_id=self.ioas,
                                     num_iovas=SZ_4K // _sz(u.iommu_iova_range),
                                     allowed_iovas=buf)
        m.ioctl(self.fd, u.IOMMU_IOAS_IOVA_RANGES, q)
        raw = m.mem_read(buf, int(q.num_iovas) * _sz(u.iommu_iova_range))
        m.munmap(buf, SZ_4K)
        ranges = [(int.from_bytes(raw[i : i + 8], "little"),
                   int.from_bytes(raw[i + 8 : i + 16], "little"))
                  for i in range(0, len(raw), 16)]
        if any(s <= want and want + length - 1 <= e for s, e in ranges):
            return want
        s, e = max(ranges, key=lambda r: r[1] - r[0])
        iova = (s + SZ_2M - 1) & -SZ_2M
        if iova + length - 1 > e:
            raise ValueError(f"no {length:#x} bytes of IOVA space to bench in")
        return iova

    def unmap(self, iova: int, length: int) -> None:
        um = u.iommu_ioas_unmap(size=_sz(u.iommu_ioas_unmap), ioas_id=self.ioas, iova=iova,
                                length=length)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, um)

    def domain_format(self) -> PtFormat | None:
        """The format of the tables of the device's domain, as its driver describes them
        (None if it does not)."""
        dev = self.m.platform.devices[DEV]
        group = dev.iommu_group
        domain = group.domain if group is not None else None
        unit = self.m.core.iommus.get(dev.iommu_name)
        if domain is None or unit is None:
            return None
        view = DescribeOps(unit.ops).domain(domain)
        if view is None or not view.tables:
            return None
        ref = view.tables[-1]  # the table the device's addresses go through first
        if ref.fmt not in formats.names():
            return None
        try:
            return formats.get(ref.fmt, levels=ref.levels)
        except IommuError:  # a format without a levels parameter
            return formats.get(ref.fmt)

    def map(self, va: int, iova: int, length: int) -> None:
        mp = u.iommu_ioas_map(size=_sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def map_unmap_4k(self, iova: int | None = None) -> Callable[[], None]:
        """The measured operation: map 4 KiB of user memory at ``iova`` (by default
        :meth:`usable_iova`), unmap it."""
        m, fd = self.m, self.fd
        if iova is None:
            iova = self.usable_iova()
        va = m.mmap(SZ_4K)
        mp = u.iommu_ioas_map(size=_sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=SZ_4K, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        um = u.iommu_ioas_unmap(size=_sz(u.iommu_ioas_unmap), ioas_id=self.ioas, iova=iova,
                                length=SZ_4K)
        ioctl, MAP, UNMAP = m.ioctl, u.IOMMU_IOAS_MAP, u.IOMMU_IOAS_UNMAP

        def op() -> None:
            ioctl(fd, MAP, mp)
            ioctl(fd, UNMAP, um)

        return op

    def warm(self, pages: int, leaf: int = SZ_2M) -> None:
        """Map ``pages`` pages and read one byte of each by DMA, so the IOMMU caches a
        translation for every one (misaligned by 4 KiB when ``leaf`` is 4 KiB)."""
        self.touch(self.warm_area(pages, leaf), 0, pages)

    def warm_area(self, pages: int, leaf: int = SZ_2M) -> int:
        """Map ``pages`` pages for :meth:`touch` (misaligned by 4 KiB when ``leaf`` is
        4 KiB, so every IOPTE is a 4 KiB leaf); returns its IOVA."""
        skew = 0 if leaf == SZ_2M else SZ_4K
        length = pages * SZ_4K
        va = self.m.mmap(length + SZ_2M)
        va = ((va + SZ_2M - 1) & -SZ_2M) + skew
        self.map(va, WARM_IOVA + skew, length)
        return WARM_IOVA + skew

    def touch(self, iova: int, first: int, last: int) -> None:
        """Read one byte of pages ``[first, last)`` at ``iova`` by DMA: each is cached."""
        read = self.m.dma_read
        for p in range(first, last):
            read(DEV, iova + p * SZ_4K, 1)


def pgtable_map_unmap_4k(fmt: PtFormat | None = None,
                         iova: int = PROBE_IOVA) -> Callable[[], None]:
    """The floor: the page-table core's map_pages + unmap_pages of one 4 KiB page (in
    the format's smallest pages if they are smaller), with its tables in simulated
    memory and an IOTLB gather, as a driver's unmap has."""
    mem = PhysicalMemory()
    fmt = fmt or formats.arm_lpae_s1(4096, 48, 48)
    pt = IoPageTable(fmt, PhysTableMemory(mem, PageAllocator(mem)))
    pa = 0x1234_5000
    pgsize = SZ_4K if fmt.pgsize_bitmap & SZ_4K else fmt.pgsize_bitmap & -fmt.pgsize_bitmap
    count = SZ_4K // pgsize
    map_pages, unmap_pages = pt.map_pages, pt.unmap_pages

    def op() -> None:
        map_pages(iova, pa, pgsize, count, RW)
        unmap_pages(iova, pgsize, count, IotlbGather())

    return op


def map_unmap_4k_vs_pgtable(driver: str, options: Mapping[str, Any] | None = None,
                            fmt: PtFormat | None = None, n: int = 300,
                            reps: int = 7) -> dict[str, Any]:
    """The floor's format: ``fmt``, else that of the device's domain."""
    rig = Rig(driver, options)
    fmt = fmt or rig.domain_format()
    iova = rig.usable_iova()
    op, floor = rig.map_unmap_4k(iova), pgtable_map_unmap_4k(fmt, iova)
    best_of_each([op], max(1, n // 10), 1)  # first-use costs out of the way
    ioctl_s, floor_s = best_of_each([op, floor], n, reps)
    rig.m.shutdown()
    return {"map_unmap_4k_vs_pgtable": ioctl_s / floor_s, "map_unmap_4k_us": ioctl_s * 1e6,
            "pgtable_map_unmap_4k_us": floor_s * 1e6,
            "pgtable_format": fmt.name if fmt is not None else "arm_lpae_s1"}


def inval_cached_ratio(driver: str, options: Mapping[str, Any] | None = None,
                       dev_options: Mapping[str, Any] | None = None, pages: int = 65536,
                       leaf: int = SZ_2M, n: int = 100, reps: int = 7) -> dict[str, float]:
    """Two Machines alike but for the warmed one, measured in turns."""
    empty, cached = Rig(driver, options, dev_options), Rig(driver, options, dev_options)
    cached.warm(pages, leaf)
    empty_s, cached_s = best_of_each([empty.map_unmap_4k(), cached.map_unmap_4k()], n, reps)
    empty.m.shutdown()
    cached.m.shutdown()
    return {"inval_cached_ratio": cached_s / empty_s, "map_unmap_4k_empty_us": empty_s * 1e6,
            "map_unmap_4k_cached_us": cached_s * 1e6}


def inval_by_occupancy(driver: str, options: Mapping[str, Any] | None = None,
                       dev_options: Mapping[str, Any] | None = None,
                       levels: tuple[int, ...] = (1024, 8192, 65536), leaf: int = SZ_4K,
                       n: int = 100, reps: int = 7) -> list[tuple[int, float, float]]:
    """The 4 KiB map+unmap pair at each number of cached pages in ``levels`` (warmed
    step by step on one Machine), each against an identical Machine with nothing
    cached, measured in turns: [(pages, cached us, empty us)]."""
    empty, cached = Rig(driver, options, dev_options), Rig(driver, options, dev_options)
    base = cached.warm_area(max(levels), leaf)
    empty.warm_area(max(levels), leaf)  # the same mappings, never read
    ops = [empty.map_unmap_4k(), cached.map_unmap_4k()]
    best_of_each(ops, max(1, n // 10), 1)
    out = []
    done = 0
    for pages in levels:
        cached.touch(base, done, pages)
        done = pages
        empty_s, cached_s = best_of_each(ops, n, reps)
        out.append((pages, cached_s * 1e6, empty_s * 1e6))
    empty.m.shutdown()
    cached.m.shutdown()
    return out


def dma_floor(pages: int = 4) -> tuple[Callable[[str, int, int], bytes],
                                        Callable[[str, int, bytes], None]]:
    """The DMA floors: one dict lookup (page -> frame) and one copy of the bytes moved,
    called like ``dma_read``/``dma_write`` (a device name, an address, a length/data)."""
    tlb = {p: bytearray(SZ_4K) for p in range(pages)}

    def read(dev: str, iova: int, n: int) -> bytes:
        f = tlb[iova >> 12]
        o = iova & 0xFFF
        return f[o : o + n]  # type: ignore[return-value]  # a bytearray: one copy

    def write(dev: str, iova: int, data: bytes) -> None:
        f = tlb[iova >> 12]
        o = iova & 0xFFF
        f[o : o + len(data)] = data

    return read, write


def dma_hit(driver: str, options: Mapping[str, Any] | None = None, n: int = 200,
            reps: int = 15) -> dict[str, float]:
    """DMA that hits the IOMMU's caches (warmed by the same accesses) against
    :func:`dma_floor`, all measured in turns: 64 B and 4 KiB reads, a 64 B read across
    two pages, a 64 B write."""
    rig = Rig(driver, options)
    m = rig.m
    va = m.mmap(SZ_2M)
    m.mem_write(va, bytes(range(256)) * (3 * SZ_4K // 256))
    base = rig.usable_iova()
    rig.map(va, base, SZ_2M)
    r, w = m.dma_read, m.dma_write
    data = bytes(64)
    fr, fw = dma_floor()
    fns: list[Callable[[], object]] = [
        lambda: r(DEV, base + 64, 64), lambda: fr(DEV, 64, 64),
        lambda: r(DEV, base, SZ_4K), lambda: fr(DEV, SZ_4K, SZ_4K),
        lambda: r(DEV, base + SZ_4K - 32, 64),
        lambda: w(DEV, base + 128, data), lambda: fw(DEV, 128, data)]
    for fn in fns:  # warm: every access below hits
        fn()
    t = best_of_each(fns, n, reps)
    m.shutdown()
    return {"dma_hit_vs_floor": t[0] / t[1], "dma_hit_4k_vs_floor": t[2] / t[3],
            "dma_cross_page_vs_floor": t[4] / t[1], "dma_write_hit_vs_floor": t[5] / t[6],
            "dma_hit_64_us": t[0] * 1e6, "dma_hit_4k_us": t[2] * 1e6,
            "floor_64_us": t[1] * 1e6, "floor_4k_us": t[3] * 1e6}


def ioctl_noop(driver: str = "mock", n: int = 300, reps: int = 15) -> dict[str, float]:
    """``IOMMU_OPTION`` (RLIMIT_MODE get) through ``m.ioctl`` with the struct as a ctypes
    object, as a bytearray and as a user address, against a Python call with the same
    arguments, all in turns."""
    rig = Rig(driver)
    m, fd = rig.m, rig.fd
    opt = u.iommu_option(size=_sz(u.iommu_option), option_id=u.IOMMU_OPTION_RLIMIT_MODE,
                         op=u.IOMMU_OPTION_OP_GET)
    raw = bytearray(bytes(opt))
    ptr = m.mmap(SZ_4K)
    m.mem_write(ptr, bytes(opt))
    ioctl, OPT = m.ioctl, u.IOMMU_OPTION

    def call(fd: int, request: int, buf: Any) -> int:
        return 0

    t = best_of_each([lambda: call(fd, OPT, opt), lambda: ioctl(fd, OPT, opt),
                      lambda: ioctl(fd, OPT, raw), lambda: ioctl(fd, OPT, ptr)], n, reps)
    m.shutdown()
    return {"ioctl_noop_vs_call": t[1] / t[0], "ioctl_noop_bytearray_vs_call": t[2] / t[0],
            "ioctl_noop_va_vs_call": t[3] / t[0], "ioctl_noop_us": t[1] * 1e6,
            "ioctl_noop_va_us": t[3] * 1e6, "call_us": t[0] * 1e6}


def map_cost(driver: str, gib: int, options: Mapping[str, Any] | None = None,
             reps: int = 3) -> float:
    """Seconds of one ``IOMMU_IOAS_MAP`` of ``gib`` GiB of fresh anonymous memory
    (transparent huge pages, pinned by the map) with a paging domain attached: the best
    of ``reps``, each on memory never mapped before (its unmap and munmap not timed)."""
    rig = Rig(driver, options)
    m = rig.m
    length = gib * SZ_1G
    iova = rig.usable_iova(1 << 40, length)
    best = float("inf")
    for _ in range(reps):
        va = m.mmap(length)
        gc.collect()
        t0 = time.perf_counter()
        rig.map(va, iova, length)
        best = min(best, time.perf_counter() - t0)
        rig.unmap(iova, length)
        m.munmap(va, length)
    m.shutdown()
    return best


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m iommu_sim.perf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", default="arm_smmu_v3")
    ap.add_argument("--option", action="append", default=[], type=_option,
                    help="an IOMMU Machine option, KEY=JSON (repeatable)")
    ap.add_argument("--quick", action="store_true", help="4,096 cached pages, fewer runs")
    args = ap.parse_args(argv)
    options = dict(args.option)
    pages = 4096 if args.quick else 65536
    reps = 3 if args.quick else 7
    out: dict[str, Any] = {"driver": args.driver, "options": options}
    out.update(map_unmap_4k_vs_pgtable(args.driver, options, reps=reps))
    for name, leaf, dev in (("2m_leaves", SZ_2M, {}), ("4k_leaves", SZ_4K, {}),
                            ("4k_leaves_no_ats", SZ_4K, {"ats": False})):
        r = inval_cached_ratio(args.driver, options, dev, pages=pages, leaf=leaf, reps=reps)
        out[name] = r
    out["inval_cached_ratio"] = max(out[k]["inval_cached_ratio"]
                                    for k in ("2m_leaves", "4k_leaves", "4k_leaves_no_ats"))
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

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


def best_of(fn: Callable[[], object], n: int, reps: int = 7) -> float:
    """Seconds per call of ``fn``: the best of ``reps`` runs of ``n`` calls, GC paused."""
    return best_of_each([fn], n, reps)[0]


def best_of_each(fns: list[Callable[[], object]], n: int, reps: int = 7) -> list[float]:
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
    ``dev_options``) bound to an iommufd and attached to an IOAS (a paging domain)."""

    def __init__(self, driver: str, options: Mapping[str, Any] | None = None,
                 dev_options: Mapping[str, Any] | None = None) -> None:
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
        self.ioas = int(ioas.out_ioas_id)
        at = v.vfio_device_attach_iommufd_pt(argsz=_sz(v.vfio_device_attach_iommufd_pt),
                                             pt_id=self.ioas)
        m.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def map(self, va: int, iova: int, length: int) -> None:
        mp = u.iommu_ioas_map(size=_sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def map_unmap_4k(self, iova: int = PROBE_IOVA) -> Callable[[], None]:
        """The measured operation: map 4 KiB of user memory at ``iova``, unmap it."""
        m, fd = self.m, self.fd
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
        skew = 0 if leaf == SZ_2M else SZ_4K
        length = pages * SZ_4K
        va = self.m.mmap(length + SZ_2M)
        va = ((va + SZ_2M - 1) & -SZ_2M) + skew
        self.map(va, WARM_IOVA + skew, length)
        read = self.m.dma_read
        for p in range(pages):
            read(DEV, WARM_IOVA + skew + p * SZ_4K, 1)


def pgtable_map_unmap_4k(fmt: PtFormat | None = None,
                         iova: int = PROBE_IOVA) -> Callable[[], None]:
    """The floor: the page-table core's map_pages + unmap_pages of one 4 KiB page, with
    its tables in simulated memory."""
    mem = PhysicalMemory()
    pt = IoPageTable(fmt or formats.arm_lpae_s1(4096, 48, 48),
                     PhysTableMemory(mem, PageAllocator(mem)))
    pa = 0x1234_5000
    map_pages, unmap_pages, prot = pt.map_pages, pt.unmap_pages, IOMMU_READ | IOMMU_WRITE

    def op() -> None:
        map_pages(iova, pa, SZ_4K, 1, prot)
        unmap_pages(iova, SZ_4K, 1)

    return op


def map_unmap_4k_vs_pgtable(driver: str, options: Mapping[str, Any] | None = None,
                            fmt: PtFormat | None = None, n: int = 300,
                            reps: int = 7) -> dict[str, float]:
    rig = Rig(driver, options)
    op, floor = rig.map_unmap_4k(), pgtable_map_unmap_4k(fmt)
    ioctl_s, floor_s = best_of_each([op, floor], n, reps)
    rig.m.shutdown()
    return {"map_unmap_4k_vs_pgtable": ioctl_s / floor_s, "map_unmap_4k_us": ioctl_s * 1e6,
            "pgtable_map_unmap_4k_us": floor_s * 1e6}


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

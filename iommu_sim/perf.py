"""Performance ratios measured through the Machine ABI, for any driver by name: the
measurements of :mod:`iommu_core.benchkit` on a Machine of one unit of the driver, and
the ones that need nothing of a vendor (DMA hits, a do-nothing ioctl, big maps).

Every figure is a ratio of two timings taken in the same process (the cyclic GC paused,
best of N, the two contenders measured in turns; :mod:`iommu_core.timing`), never an
absolute time; the system bench (``python -m iommu_sim.bench``) is built from these. One
driver's map and invalidation ratios, with unit options, as JSON::

    python -m iommu_sim.perf --driver arm_smmu_v3 [--option tlb_entries=131072] [--quick]

* ``map_unmap_4k_vs_pgtable``: one 4 KiB ``IOMMU_IOAS_MAP`` + ``IOMMU_IOAS_UNMAP``
  through ``m.ioctl`` with a paging domain attached / the page-table core's own
  map_pages + unmap_pages of 4 KiB at the same IOVA of an empty table, in the format of
  the domain (as the driver's ``describe_domain`` names it); ``..._populated``: both
  with a page mapped 2 MiB above (the upper tables stay).
* ``inval_cached_ratio``: the same ioctl pair with ``pages`` distinct 4 KiB pages cached
  in the IOMMU (one DMA read per page of a mapping in 4 KiB IOPTEs) / the pair on an
  identical Machine with nothing cached; :func:`inval_by_occupancy` at several numbers
  of pages.
* ``dma_hit``: DMA reads and writes that hit the IOMMU's caches / a dict lookup and a
  copy of as many bytes (:func:`dma_floor`).
* ``ioctl_noop``: ``IOMMU_OPTION`` get through ``m.ioctl`` / a Python function call with
  the same arguments.
* ``map_cost``: one ``IOMMU_IOAS_MAP`` of many GiB with a domain attached.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

import iommufd.uapi as u
import iommufd.uapi_vfio as v
from iommu_core import benchkit as kit
from iommu_core import timing
from iommu_core.describe import DescribeOps
from iommu_core.errors import IommuError
from iommu_core.pgtable import formats
from iommu_core.pgtable.formats.base import PtFormat
from iommu_sim.machine import Machine

SZ_4K = 4096
SZ_2M = 1 << 21
SZ_1G = 1 << 30
DEV = "0000:00:01.0"
UAPI = kit.Uapi(u, v)


def unit_rig(driver: str, options: Mapping[str, Any] | None = None,
             dev_options: Mapping[str, Any] | None = None) -> kit.Rig:
    return kit.unit_rig(driver, UAPI, dict(options or {}), dict(dev_options or {}), DEV)


class Rig(kit.Vmm):
    """One Machine: a unit of ``driver`` (with ``options``), one PCI device (with
    ``dev_options``) bound to an iommufd and attached to an IOAS (a paging domain), or
    with ``nest_parent`` to a nest-parent HWPT of the IOAS."""

    def __init__(self, driver: str, options: Mapping[str, Any] | None = None,
                 dev_options: Mapping[str, Any] | None = None, *,
                 nest_parent: bool = False) -> None:
        rig = unit_rig(driver, options, dev_options)
        super().__init__(Machine.from_config(rig.config), rig)
        self.m: Machine = self.m
        pt = self.ioas
        if nest_parent:
            pt = self.hwpt_alloc(self.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.attach(pt)

    def usable_iova(self, want: int = kit.SMALL_IOVA, length: int = SZ_2M) -> int:
        """``want`` if the IOAS allows ``[want, want+length)`` now, else the first
        2 MiB-aligned address of the largest allowed range that fits."""
        m = self.m
        buf = m.mmap(SZ_4K)
        q = u.iommu_ioas_iova_ranges(size=ctypes.sizeof(u.iommu_ioas_iova_ranges),
                                     ioas_id=self.ioas,
                                     num_iovas=SZ_4K // ctypes.sizeof(u.iommu_iova_range),
                                     allowed_iovas=buf)
        m.ioctl(self.fd, u.IOMMU_IOAS_IOVA_RANGES, q)
        raw = m.mem_read(buf, int(q.num_iovas) * ctypes.sizeof(u.iommu_iova_range))
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


def map_unmap_4k_vs_pgtable(driver: str, options: Mapping[str, Any] | None = None,
                            fmt: PtFormat | None = None, n: int = 200,
                            reps: int = 7) -> dict[str, Any]:
    """The floor's format: ``fmt``, else that of the device's domain."""
    rig = Rig(driver, options)
    try:
        fmt = fmt or rig.domain_format() or formats.arm_lpae_s1()
        iova = rig.usable_iova(length=2 * kit.NEIGHBOUR)
        out: dict[str, Any] = kit.map_unmap_vs_floor(rig, fmt, iova, n, reps)
        out.update(kit.map_unmap_vs_floor(rig, fmt, iova, n, reps, populated=True))
        out["pgtable_format"] = fmt.name
        return out
    finally:
        rig.m.shutdown()


def inval_by_occupancy(driver: str, options: Mapping[str, Any] | None = None,
                       dev_options: Mapping[str, Any] | None = None,
                       levels: tuple[int, ...] = (1024, 8192, 65536), n: int = 50,
                       reps: int = 7) -> list[tuple[int, float, float]]:
    """[(pages cached, map+unmap us with them, us with nothing cached)]."""
    series = kit.inval_by_occupancy(Machine.from_config,
                                    unit_rig(driver, options, dev_options), levels, n, reps)
    return [(p, full * 1e6, empty * 1e6) for p, full, empty in series]


def inval_cached_ratio(driver: str, options: Mapping[str, Any] | None = None,
                       dev_options: Mapping[str, Any] | None = None, pages: int = 65536,
                       n: int = 50) -> dict[str, float]:
    return kit.inval_cached_ratio(Machine.from_config, unit_rig(driver, options, dev_options),
                                  pages, n)


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
    try:
        va = m.mmap(SZ_2M)
        m.mem_write(va, bytes(range(256)) * (3 * SZ_4K // 256))
        base = rig.usable_iova()
        rig.map(va, SZ_2M, base)
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
        t = timing.best_interleaved(fns, n, reps)
    finally:
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
    try:
        opt = u.iommu_option(size=ctypes.sizeof(u.iommu_option),
                             option_id=u.IOMMU_OPTION_RLIMIT_MODE, op=u.IOMMU_OPTION_OP_GET)
        raw = bytearray(bytes(opt))
        ptr = m.mmap(SZ_4K)
        m.mem_write(ptr, bytes(opt))
        ioctl, OPT = m.ioctl, u.IOMMU_OPTION

        def call(fd: int, request: int, buf: Any) -> int:
            return 0

        t = timing.best_interleaved([lambda: call(fd, OPT, opt), lambda: ioctl(fd, OPT, opt),
                                     lambda: ioctl(fd, OPT, raw), lambda: ioctl(fd, OPT, ptr)],
                                    n, reps)
    finally:
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
    try:
        length = gib * SZ_1G
        iova = rig.usable_iova(1 << 40, length)
        best = float("inf")
        for _ in range(reps):
            va = m.mmap(length)
            gc.collect()
            t0 = timing.clock()
            rig.map(va, length, iova)
            best = min(best, timing.clock() - t0)
            rig.unmap(iova, length)
            m.munmap(va, length)
    finally:
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
    out: dict[str, Any] = {"driver": args.driver, "options": options}
    out.update(map_unmap_4k_vs_pgtable(args.driver, options, reps=3 if args.quick else 7))
    for name, dev in (("ats", {}), ("no_ats", {"ats": False})):
        out[name] = inval_cached_ratio(args.driver, options, dev, pages=pages)
    out["inval_cached_ratio"] = max(out[k]["inval_cached_ratio"] for k in ("ats", "no_ats"))
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

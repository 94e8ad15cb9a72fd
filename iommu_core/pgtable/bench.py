"""Page-table core benchmark: ``python -m iommu_core.pgtable.bench --json [--quick]``.

One run measures, side by side on the same random workload (N non-adjacent 4 KiB maps,
N lookups at random offsets, N unmaps, each phase in a fresh random order):

* the interval map alone (``ops_per_s``) and materialised as ARM LPAE S1 4K radix
  tables in simulated memory (``materialised_ops_per_s``);
* an intervaltree-based map doing the same work (``vs_intervaltree`` = its time / ours);
* a bare SortedDict doing only insert, floor lookup and delete (``vs_sorteddict_floor`` =
  our time / its time): the floor of any SortedDict-based map;
* memory per mapping, and a dict-per-4K-page map's memory over ours for 2 MiB mappings;
* ``scaling`` = per-op cost at the largest N / at N = 1e3.

Times are the best of a few repetitions (more at small N), with the cyclic GC paused
during timed phases for every contender alike (as ``timeit`` does). The slow comparisons
(intervaltree, materialised) stop at N = 1e5. Progress goes to stderr, the JSON object
(with ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from sortedcontainers import SortedDict

from iommu_core import timing
from iommu_core.pgtable import formats
from iommu_core.pgtable.intervals import IntervalMap
from iommu_core.pgtable.memory import PhysTableMemory
from iommu_core.pgtable.table import IoPageTable
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

SZ_4K = 4096
SZ_2M = 1 << 21
RW = IOMMU_READ | IOMMU_WRITE
PGSIZES = SZ_4K | SZ_2M | (1 << 30)
IOVA_SLOTS_LG2 = 23  # 4K pages at 8K strides over 2^36 bytes: never adjacent

Workload = tuple[list[int], list[int], list[int], list[int]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_workload(n: int, seed: int = 1) -> Workload:
    """(map iovas, paddrs, lookup addresses, unmap iovas) for N non-adjacent 4K pages."""
    rng = random.Random(seed)
    iovas = [s << 13 for s in rng.sample(range(1 << IOVA_SLOTS_LG2), n)]
    paddrs = [rng.randrange(1 << 28) << 12 for _ in range(n)]
    lookups = [iova + rng.randrange(SZ_4K) for iova in iovas]
    rng.shuffle(lookups)
    unmaps = list(iovas)
    rng.shuffle(unmaps)
    return iovas, paddrs, lookups, unmaps


class _Contender:
    """One implementation: map, lookup, unmap over a workload."""

    name = ""

    def reset(self) -> None:
        raise NotImplementedError

    def run(self, w: Workload) -> None:
        raise NotImplementedError


class Ours(_Contender):
    name = "interval_map"

    def reset(self) -> None:
        self.m = IntervalMap(PGSIZES, ((0, (1 << 48) - 1),), 52)

    def run(self, w: Workload) -> None:
        iovas, paddrs, lookups, unmaps = w
        map_pages, to_phys, unmap_pages = self.m.map_pages, self.m.iova_to_phys, self.m.unmap_pages
        for iova, pa in zip(iovas, paddrs, strict=True):
            map_pages(iova, pa, SZ_4K, 1, RW)
        for x in lookups:
            if not to_phys(x):
                raise AssertionError("lookup missed")
        for iova in unmaps:
            unmap_pages(iova, SZ_4K, 1)


class Materialised(_Contender):
    name = "materialised"

    def reset(self) -> None:
        mem = PhysicalMemory()
        self.alloc = PageAllocator(mem)
        self.pt = IoPageTable(formats.arm_lpae_s1(4096, 48, 48), PhysTableMemory(mem, self.alloc))

    def run(self, w: Workload) -> None:
        iovas, paddrs, lookups, unmaps = w
        pt = self.pt
        map_pages, to_phys, unmap_pages = pt.map_pages, pt.iova_to_phys, pt.unmap_pages
        for iova, pa in zip(iovas, paddrs, strict=True):
            map_pages(iova, pa, SZ_4K, 1, RW)
        for x in lookups:
            if not to_phys(x):
                raise AssertionError("lookup missed")
        for iova in unmaps:
            unmap_pages(iova, SZ_4K, 1)
        if pt.table_count != 1:
            raise AssertionError("tables left behind")


class IntervalTreeMap(_Contender):
    """The same contract on intervaltree: overlap check, insert, point query, remove."""

    name = "intervaltree"

    def reset(self) -> None:
        from intervaltree import IntervalTree  # type: ignore[import-untyped]  # bench only

        self.t = IntervalTree()

    def run(self, w: Workload) -> None:
        iovas, paddrs, lookups, unmaps = w
        t = self.t
        for iova, pa in zip(iovas, paddrs, strict=True):
            # overlap() is intervaltree's O(log n + m) query (overlaps() scans the table).
            if t.overlap(iova, iova + SZ_4K):
                raise AssertionError("overlap")
            t.addi(iova, iova + SZ_4K, (pa, RW, SZ_4K))
        for x in lookups:
            hits = t.at(x)
            if not hits:
                raise AssertionError("lookup missed")
            iv = next(iter(hits))
            _ = iv.data[0] + (x - iv.begin)
        for iova in unmaps:
            t.remove(next(iter(t.at(iova))))


class SortedDictFloor(_Contender):
    """Bare SortedDict: insert, floor lookup (bisect + key at index), delete."""

    name = "sorteddict_floor"

    def reset(self) -> None:
        self.sd: SortedDict[int, tuple[int, int, int, int]] = SortedDict()

    def run(self, w: Workload) -> None:
        iovas, paddrs, lookups, unmaps = w
        sd = self.sd
        keys = sd.keys()
        bisect_right = sd.bisect_right
        for iova, pa in zip(iovas, paddrs, strict=True):
            sd[iova] = (iova + SZ_4K - 1, pa, RW, SZ_4K)
        for x in lookups:
            k = keys[bisect_right(x) - 1]
            _ = sd[k][1] + (x - k)
        for iova in unmaps:
            del sd[iova]


def _time(c: _Contender, w: Workload, reps: int) -> float:
    """Best wall time of ``reps`` runs, GC paused during each."""
    best = float("inf")
    for _ in range(reps):
        c.reset()
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            c.run(w)
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


def _reps(n: int) -> int:
    return max(1, min(15, 30_000 // n))


def _bytes_of(build: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = build()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del obj
    return after - before


def bytes_per_mapping(n: int) -> float:
    iovas, paddrs, _, _ = make_workload(n, seed=7)

    def build() -> object:
        m = IntervalMap(PGSIZES, ((0, (1 << 48) - 1),), 52)
        for iova, pa in zip(iovas, paddrs, strict=True):
            m.map_pages(iova, pa, SZ_4K, 1, RW)
        return m

    return _bytes_of(build) / n


def dict_per_page_ratio(nmaps: int) -> tuple[float, int, int]:
    """(ratio, dict bytes, our bytes) for ``nmaps`` non-adjacent 2 MiB mappings made of
    4K pages: a dict holding one entry per 4K page against the interval map."""
    rng = random.Random(3)
    bases = [s * 2 * SZ_2M for s in rng.sample(range(1 << 20), nmaps)]
    paddrs = [rng.randrange(1 << 16) * SZ_2M for _ in range(nmaps)]

    def build_ours() -> object:
        m = IntervalMap(PGSIZES, ((0, (1 << 48) - 1),), 52)
        for iova, pa in zip(bases, paddrs, strict=True):
            m.map_pages(iova, pa, SZ_4K, SZ_2M // SZ_4K, RW)
        return m

    def build_dict() -> object:
        d: dict[int, tuple[int, int]] = {}
        for iova, pa in zip(bases, paddrs, strict=True):
            for off in range(0, SZ_2M, SZ_4K):
                d[iova + off] = (pa + off, RW)
        return d

    ours = _bytes_of(build_ours)
    theirs = _bytes_of(build_dict)
    return theirs / ours, theirs, ours


def run(sizes: Sequence[int], slow_max: int, mem_n: int, nmaps_2m: int) -> dict[str, Any]:
    """Every figure of the page-table bench (the heap alive before it frozen)."""
    with timing.frozen_heap():
        return _run(sizes, slow_max, mem_n, nmaps_2m)


def _run(sizes: Sequence[int], slow_max: int, mem_n: int, nmaps_2m: int) -> dict[str, Any]:
    ours, mat, itree, floor = Ours(), Materialised(), IntervalTreeMap(), SortedDictFloor()
    per_op: dict[int, float] = {}
    floor_per_op: dict[int, float] = {}
    ops: dict[str, float] = {}
    mat_ops: dict[str, float] = {}
    vs_it: dict[str, float] = {}
    vs_floor: dict[str, float] = {}
    t_start = time.perf_counter()
    for n in sizes:
        w = make_workload(n)
        reps = _reps(n)
        t_ours = _time(ours, w, reps)
        per_op[n] = t_ours / (3 * n)
        ops[str(n)] = round(3 * n / t_ours)
        t_floor = _time(floor, w, reps)
        floor_per_op[n] = t_floor / (3 * n)
        vs_floor[str(n)] = round(t_ours / t_floor, 3)
        line = f"N={n}: ours {per_op[n] * 1e6:.2f} us/op, floor x{vs_floor[str(n)]}"
        if n <= slow_max:
            t_mat = _time(mat, w, max(1, reps // 3))
            mat_ops[str(n)] = round(3 * n / t_mat)
            t_it = _time(itree, w, max(1, reps // 3))
            vs_it[str(n)] = round(t_it / t_ours, 2)
            line += f", materialised {t_mat / (3 * n) * 1e6:.2f} us/op"
            line += f", intervaltree x{vs_it[str(n)]}"
        log(line)
    log(f"memory: {mem_n} 4K mappings; {nmaps_2m} 2M mappings vs dict-per-page")
    bpm = bytes_per_mapping(mem_n)
    ratio, dict_bytes, our_bytes = dict_per_page_ratio(nmaps_2m)
    small, large = min(sizes), max(sizes)
    return {
        "ops_per_s": ops,
        "materialised_ops_per_s": mat_ops,
        "vs_intervaltree": vs_it,
        "vs_intervaltree_min": min(vs_it.values()),
        "vs_sorteddict_floor": vs_floor,
        "vs_sorteddict_floor_max": max(vs_floor.values()),
        "bytes_per_mapping": round(bpm, 1),
        "dict_per_page_memory_ratio": round(ratio, 1),
        "scaling": round(per_op[large] / per_op[small], 3),
        "us_per_op": {str(n): round(t * 1e6, 3) for n, t in per_op.items()},
        "floor_scaling": round(floor_per_op[large] / floor_per_op[small], 3),
        "notes": {
            "workload": "N non-adjacent 4K maps, N lookups at random offsets, N unmaps; "
            "ops_per_s = 3N / best time",
            "materialised_format": "arm_lpae_s1(granule=4096, ias=48, oas=48) in PhysTableMemory",
            "slow_comparisons_max_n": slow_max,
            "floor": "SortedDict: d[k]=v; keys[bisect_right(x)-1], d[k]; del d[k]",
            "bytes_per_mapping_n": mem_n,
            "dict_per_page": f"{nmaps_2m} x 2 MiB mappings of 4K pages: dict {dict_bytes} B, "
            f"interval map {our_bytes} B (tracemalloc)",
            "scaling": f"per-op time at N={large} / at N={small}; floor_scaling: the same "
            "ratio for the bare SortedDict (memory-hierarchy cost of random access)",
            "gc": "paused during timed phases, for every contender",
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - t_start, 1),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="CI smoke: N up to 1e4")
    args = ap.parse_args(argv)
    if args.quick:
        result = run([1_000, 10_000], slow_max=10_000, mem_n=10_000, nmaps_2m=64)
    else:
        sizes = [1_000, 10_000, 100_000, 1_000_000]
        result = run(sizes, slow_max=100_000, mem_n=100_000, nmaps_2m=256)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

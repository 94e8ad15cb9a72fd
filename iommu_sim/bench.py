"""The system bench: ``python -m iommu_sim.bench [--quick] [--json] [--tib] [--svg FILE]``.

Every figure is a ratio of two timings taken in the same process, in turns, with the
cyclic GC paused, the best of several repetitions (:mod:`iommu_sim.perf` defines them),
against a floor measured in the same run; never an absolute time. Per driver where it
applies (``arm_smmu_v3``, ``intel_vtd``, ``amd_vi``, and the selftest ``mock`` where its
small IOTLB makes sense); a target holds for the worst driver.

=============================  =========================================================
key                            ratio
=============================  =========================================================
dma_hit_vs_floor               64 B ``m.dma_read`` that hits the IOMMU's caches / one
                               dict lookup and a 64 B copy
dma_hit_4k_vs_floor            the same for 4 KiB
inval_cached_ratio             4 KiB IOAS_MAP+UNMAP with 65,536 pages cached (one per
                               4 KiB leaf) / the same with none
nested_miss_vs_paging_miss     a DMA missing the TLB through a nested domain / through a
                               paging domain (the driver's own measurement)
map_unmap_4k_vs_pgtable        4 KiB IOAS_MAP+UNMAP through ``m.ioctl`` / the page-table
                               core's map_pages+unmap_pages in the domain's format
ioctl_noop_vs_call             IOMMU_OPTION get through ``m.ioctl`` / a Python call
map_scaling                    per-GiB time of IOAS_MAP with a domain attached at 64 GiB
                               / at 1 GiB
rss_kib_per_gib_mapped         RSS growth per GiB IOAS-mapped with a domain attached
                               (64 GiB, in a process of its own)
=============================  =========================================================

The page-table core's bench (:mod:`iommu_core.pgtable.bench`) runs too; its keys are under
``pgtable``. ``--tib`` adds the 1 TiB scenario: THP-backed guest RAM IOAS_MAP'd with a
nest-parent domain attached, then a DMA at its last page (time and RSS, one process per
driver). ``--quick`` (CI) keeps every key at smaller sizes and fewer repetitions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from iommu_core import timing
from iommu_core.describe import BenchDesc
from iommu_core.pgtable import bench as pgtable_bench
from iommu_sim import perf
from iommu_sim.catalogue import UnknownVendor, catalogue
from iommu_sim.machine import Machine

DRIVERS = ("arm_smmu_v3", "intel_vtd", "amd_vi", "mock")
#: Drivers whose caches can hold the 65,536 pages the invalidation bench caches (the
#: selftest mock's IOTLB has 256 entries).
CACHE_DRIVERS = ("arm_smmu_v3", "intel_vtd", "amd_vi")
GIB = 1 << 30


@attrs.frozen
class Target:
    key: str
    meaning: str
    limit: float
    #: "each": one value per driver, the worst must meet the limit; "one": one value.
    scope: str = "each"


TARGETS = (
    Target("dma_hit_vs_floor", "64 B TLB-hit m.dma_read / dict lookup + 64 B copy", 5),
    Target("dma_hit_4k_vs_floor", "4 KiB hit / dict lookup + 4 KiB copy", 3),
    Target("inval_cached_ratio", "4 KiB map+unmap with 65,536 pages cached / with none",
           1.5),
    Target("nested_miss_vs_paging_miss", "nested TLB miss / paging TLB miss", 2),
    Target("map_unmap_4k_vs_pgtable", "4 KiB IOAS_MAP+UNMAP via m.ioctl / page-table "
           "map+unmap", 6),
    Target("ioctl_noop_vs_call", "IOMMU_OPTION get via m.ioctl / bare Python call", 40,
           "one"),
    Target("map_scaling", "per-GiB cost of IOAS_MAP at 64 GiB / at 1 GiB", 1.5),
    Target("rss_kib_per_gib_mapped", "RSS growth (KiB) per GiB IOAS-mapped, 64 GiB run",
           64),
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@attrs.frozen
class Sizes:
    """How much each measurement does (``--quick`` or full)."""

    reps: int
    dma_n: int
    map_n: int
    inval_levels: tuple[int, ...]
    inval_no_ats: bool
    map_gib: tuple[int, ...]
    map_reps: int
    rss_gib: int
    pgtable: dict[str, Any]
    #: What the drivers' own measurements are told (their quick sizes).
    quick: bool = False


QUICK = Sizes(reps=7, dma_n=200, map_n=60, inval_levels=(4096,), inval_no_ats=False,
              map_gib=(1, 64), map_reps=2, rss_gib=64,
              pgtable={"sizes": [1_000, 10_000], "slow_max": 10_000, "mem_n": 10_000,
                       "nmaps_2m": 64}, quick=True)
FULL = Sizes(reps=15, dma_n=300, map_n=150, inval_levels=(1024, 4096, 16384, 65536),
             inval_no_ats=True, map_gib=(1, 4, 16, 64), map_reps=3, rss_gib=64,
             pgtable={"sizes": [1_000, 10_000, 100_000, 1_000_000], "slow_max": 100_000,
                      "mem_n": 100_000, "nmaps_2m": 256})


def bench_desc(driver: str) -> BenchDesc:
    """What ``driver`` tells the bench (its unit options, its own measurements)."""
    for d in catalogue():
        if d.driver == driver:
            return d.bench()
    raise UnknownVendor(driver)


def _make_machine(config: Mapping[str, Any]) -> Machine:
    return Machine.from_config(config)


# -- the measurements -----------------------------------------------------------------------
def measure_driver(driver: str, sz: Sizes) -> dict[str, Any]:
    """Every per-driver figure: {key: value} plus series for the plot."""
    desc = bench_desc(driver)
    opts = dict(desc.options)
    own = set(desc.keys)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    out.update(perf.dma_hit(driver, opts, n=sz.dma_n, reps=sz.reps))
    if "map_unmap_4k_vs_pgtable" not in own:
        out.update(perf.map_unmap_4k_vs_pgtable(driver, opts, n=sz.map_n, reps=sz.reps))
    if driver in CACHE_DRIVERS and "inval_cached_ratio" not in own:
        series = perf.inval_by_occupancy(driver, opts, levels=sz.inval_levels,
                                         n=sz.map_n, reps=sz.reps)
        out["occupancy_us"] = [[p, c, e] for p, c, e in series]
        pages, cached, empty = series[-1]
        worst = cached / empty
        if sz.inval_no_ats:
            r = perf.inval_cached_ratio(driver, opts, {"ats": False}, pages=pages,
                                        n=sz.map_n)
            out["inval_cached_ratio_no_ats"] = r["inval_cached_ratio"]
            worst = max(worst, r["inval_cached_ratio"])
        out["inval_cached_ratio"] = worst
        out["inval_cached_pages"] = pages
    if driver in CACHE_DRIVERS:
        # Small maps are cheap and noisy: more runs of them.
        per_gib = {g: perf.map_cost(driver, g, opts, reps=sz.map_reps if g >= 16
                                    else max(9, sz.map_reps)) / g
                   for g in sz.map_gib}
        out["map_ms_per_gib"] = {str(g): t * 1e3 for g, t in per_gib.items()}
        out["map_scaling"] = per_gib[max(per_gib)] / per_gib[min(per_gib)]
        out.update(rss_child(driver, sz.rss_gib))
    if desc.run is not None:
        out.update(desc.run(_make_machine, sz.quick))
    out["seconds"] = time.perf_counter() - t0
    return out


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kib() -> int:
    """This process's resident set now (KiB), from /proc; the peak where there is none."""
    rss = _status_kib("VmRSS")
    return _peak_kib() if rss is None else rss


def _peak_kib() -> int:
    """This process's peak resident set (KiB): VmHWM, its own address space's. Not
    ``ru_maxrss`` where there is /proc: Linux carries the forking process's peak over
    exec, so a bench child would report its parent's."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _child(args: list[str]) -> dict[str, Any]:
    """Run ``python -m iommu_sim.bench ARGS`` in a process of its own (an RSS measurement
    must not see this one's memory); its JSON answer."""
    proc = subprocess.run([sys.executable, "-m", "iommu_sim.bench", *args],
                          capture_output=True, text=True, check=False,
                          cwd=os.getcwd(), env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode:
        raise RuntimeError(f"bench child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def rss_child(driver: str, gib: int) -> dict[str, Any]:
    r = _child(["--child-rss", driver, str(gib)])
    return {"rss_kib_per_gib_mapped": r["grown_kib"] / gib, "rss_run": r}


def child_rss(driver: str, gib: int) -> dict[str, Any]:
    """In the child: RSS before and after one IOAS_MAP of ``gib`` GiB with a paging
    domain attached (the memory THP-backed, pinned by the map)."""
    opts = dict(bench_desc(driver).options)
    rig = perf.Rig(driver, opts)
    m = rig.m
    length = gib * GIB
    iova = rig.usable_iova(1 << 40, length)
    va = m.mmap(length)
    gc.collect()
    before = _rss_kib()
    t0 = time.perf_counter()
    rig.map(va, length, iova)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = _rss_kib()
    return {"driver": driver, "gib": gib, "rss_before_kib": before, "rss_after_kib": after,
            "grown_kib": after - before, "peak_kib": _peak_kib(), "map_seconds": seconds}


def child_tib(driver: str, gib: int = 1024) -> dict[str, Any]:
    """In the child: ``gib`` GiB (1 TiB) of THP-backed guest RAM IOAS_MAP'd with a
    nest-parent domain attached, then a DMA at its last page: seconds and RSS."""
    t_start = time.perf_counter()
    opts = dict(bench_desc(driver).options)
    rig = perf.Rig(driver, opts, nest_parent=True)
    m = rig.m
    length = gib * GIB
    iova = rig.usable_iova(1 << 40, length)
    before = _rss_kib()
    t0 = time.perf_counter()
    va = m.mmap(length)
    last = length - perf.SZ_4K
    m.mem_write(va + last, b"the last page of guest RAM")
    rig.map(va, length, iova)
    map_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    data = m.dma_read(perf.DEV, iova + last, 26)
    dma_s = time.perf_counter() - t1
    if data != b"the last page of guest RAM":
        raise AssertionError(f"DMA at the last page read {data!r}")
    gc.collect()
    return {"driver": driver, "gib": gib, "map_seconds": map_s, "dma_seconds": dma_s,
            "seconds": time.perf_counter() - t_start, "rss_before_kib": before,
            "rss_kib": _rss_kib(), "peak_kib": _peak_kib()}


def tib_child(driver: str) -> dict[str, Any]:
    return _child(["--child-tib", driver])


def run(drivers: Sequence[str] = DRIVERS, quick: bool = False, tib: bool = False,
        pgtable: bool = True, sizes: Sizes | None = None) -> dict[str, Any]:
    """The whole bench: {"targets", "drivers", "all", "pgtable", "tib", "notes"}
    (``sizes``: other than the quick or full ones)."""
    with timing.frozen_heap():
        return _run(drivers, quick, tib, pgtable, sizes or (QUICK if quick else FULL))


def _run(drivers: Sequence[str], quick: bool, tib: bool, pgtable: bool,
         sz: Sizes) -> dict[str, Any]:
    t_start = time.perf_counter()
    per: dict[str, dict[str, Any]] = {}
    for d in drivers:
        log(f"bench: {d}")
        per[d] = measure_driver(d, sz)
    log("bench: ioctl")
    shared = perf.ioctl_noop(drivers[0], n=sz.dma_n, reps=sz.reps)
    out: dict[str, Any] = {"quick": quick, "drivers": per, "all": shared}
    if pgtable:
        log("bench: page-table core")
        out["pgtable"] = pgtable_bench.run(**sz.pgtable)
    if tib:
        out["tib"] = {}
        for d in drivers:
            if d in CACHE_DRIVERS:
                log(f"bench: 1 TiB, {d}")
                out["tib"][d] = tib_child(d)
    out["targets"] = verdicts(out)
    out["notes"] = {"python": platform.python_version(), "machine": platform.machine(),
                    "cpus": os.cpu_count(), "reps": sz.reps,
                    "seconds": round(time.perf_counter() - t_start, 1)}
    return out


def verdicts(result: Mapping[str, Any]) -> dict[str, Any]:
    """Each target: the values, the worst, pass or fail (None: nothing measured it)."""
    out: dict[str, Any] = {}
    for t in TARGETS:
        if t.scope == "one":
            vals = {"all": result["all"][t.key]} if t.key in result["all"] else {}
        else:
            vals = {d: r[t.key] for d, r in result["drivers"].items() if t.key in r}
        worst = max(vals.values()) if vals else None
        out[t.key] = {"meaning": t.meaning, "target": t.limit, "values": vals,
                      "worst": worst, "pass": None if worst is None else worst <= t.limit}
    return out


# -- output ---------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}"


def table(result: Mapping[str, Any]) -> str:
    """The targets as a table: one column per driver, the target, the verdict."""
    drivers = list(result["drivers"])
    head = ["key", *drivers, "target", ""]
    rows = [head]
    for t in TARGETS:
        v = result["targets"][t.key]
        cells = ([_fmt(v["values"].get("all"))] + [""] * (len(drivers) - 1)
                 if t.scope == "one" else [_fmt(v["values"].get(d)) for d in drivers])
        verdict = "-" if v["pass"] is None else ("pass" if v["pass"] else "FAIL")
        rows.append([t.key, *cells, f"<= {t.limit:g}", verdict])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extra = []
    a = result["all"]
    extra.append(f"ioctl with a user-VA argument: {_fmt(a['ioctl_noop_va_vs_call'])}x a call "
                 f"({a['ioctl_noop_va_vs_call'] / a['ioctl_noop_vs_call']:.1f}x the struct "
                 "path)")
    for d, r in result["drivers"].items():
        if "dma_cross_page_vs_floor" in r:
            extra.append(f"{d}: 64 B across a page {_fmt(r['dma_cross_page_vs_floor'])}x, "
                         f"64 B write hit {_fmt(r['dma_write_hit_vs_floor'])}x the floor")
        if "map_unmap_4k_vs_pgtable_populated" in r:
            extra.append(f"{d}: map+unmap with the upper tables present "
                         f"{_fmt(r['map_unmap_4k_vs_pgtable_populated'])}x the page table's")
    if "pgtable" in result:
        p = result["pgtable"]
        extra.append(f"page-table core: vs intervaltree >= {p['vs_intervaltree_min']}x, "
                     f"vs SortedDict floor <= {p['vs_sorteddict_floor_max']}x, "
                     f"{p['bytes_per_mapping']} B/mapping, scaling {p['scaling']}")
    for d, r in result.get("tib", {}).items():
        extra.append(f"1 TiB ({d}): IOAS_MAP {r['map_seconds']:.1f} s, DMA at the last page "
                     f"{r['dma_seconds'] * 1e3:.1f} ms, peak RSS {r['peak_kib'] / 1024:.0f} MiB")
    failed = [k for k, v in result["targets"].items() if v["pass"] is False]
    extra.append(f"{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed
                                                        else ""))
    return "\n".join([*lines, "", *extra]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m iommu_sim.bench",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="CI: smaller sizes, fewer runs")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--tib", action="store_true", help="also the 1 TiB nested-parent run")
    ap.add_argument("--driver", action="append", choices=DRIVERS,
                    help="only this driver (repeatable; default: all)")
    ap.add_argument("--no-pgtable", action="store_true", help="skip the page-table bench")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if a target is missed (the default only reports it)")
    ap.add_argument("--wall", action="store_true",
                    help="time by the wall clock (default: this process's CPU time, which "
                    "keeps other processes' load out of the ratios)")
    ap.add_argument("--svg", metavar="FILE", help="draw the figures' plot into FILE")
    ap.add_argument("--plot", metavar="JSON", help="draw --svg from a saved --json result "
                    "instead of measuring")
    ap.add_argument("--child-rss", nargs=2, metavar=("DRIVER", "GIB"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--child-tib", metavar="DRIVER", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_rss:
        print(json.dumps(child_rss(args.child_rss[0], int(args.child_rss[1]))))
        return 0
    if args.child_tib:
        print(json.dumps(child_tib(args.child_tib)))
        return 0
    if args.plot:
        with open(args.plot, encoding="utf-8") as f:
            result = json.load(f)
    else:
        clock = timing.clock
        timing.clock = time.perf_counter if args.wall else time.process_time
        try:
            result = run(tuple(args.driver or DRIVERS), args.quick, args.tib,
                         not args.no_pgtable)
        finally:
            timing.clock = clock
        result["notes"]["clock"] = "wall" if args.wall else "cpu"
    if args.svg:
        from iommu_sim.draw.plot import bench_plot

        with open(args.svg, "w", encoding="utf-8") as f:
            f.write(bench_plot(result).to_string())
    if args.json:
        print(json.dumps(result, indent=1))
    elif not args.plot:
        print(table(result), end="")
    missed = any(v["pass"] is False for v in result["targets"].values())
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``iommu-sim tour``: a VMM's flow on each vendor, explained layer by layer.

The tour runs the shipped scenario ``iommu_sim/scenarios/tour_<driver>.toml`` of each
vendor on the default Machine (so every step is also checked by ``iommu-sim run``), with
tracing on, and for each step it shows:

* the call: the ioctl and its struct (inputs, outputs), a DMA, a read of the fault fd...;
* the layered call tree it caused (user -> iommufd -> core -> driver -> hw);
* the structures the driver wrote: the STE/CD, the context and PASID entries, the
  DTE/GCR3 entry of the device, decoded field by field, changed fields marked;
* for a DMA, the walk the hardware does through the tables as they are now (or that it
  did not walk at all: an IOTLB hit, which is how a stale entry shows).

Chapters (``--step``): ``paging``, ``nested``, ``stale``, ``pasid``, ``fault`` (or 1-5).
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any

import attrs

from iommu_core.platform.dma import DmaFault
from iommu_core.trace import TraceNode
from iommu_sim.introspect import ConfigEntry, device_config, translation_walk
from iommu_sim.machine import Machine
from iommu_sim.render import fmt_value, name_ioctls, paint, render_tree, tree_layers, wrap
from iommu_sim.scenario import Runner, Scenario, Step, StepResult, builtin_scenarios, load
from iommu_sim.uapi_index import find_ioctl

__all__ = ["CHAPTERS", "VENDORS", "TourError", "run_tour", "tour_records"]

#: Tour vendors: driver name -> aliases accepted by --vendor.
VENDORS = {
    "arm_smmu_v3": ("smmu", "arm", "smmuv3", "arm_smmu_v3"),
    "intel_vtd": ("vtd", "intel", "intel_vtd"),
    "amd_vi": ("amd", "amdvi", "amd_vi"),
}
CHAPTERS = ("paging", "nested", "stale", "pasid", "fault")


class TourError(ValueError):
    """A bad --vendor or --step."""


def resolve_vendors(names: Iterable[str] | None) -> list[str]:
    if not names:
        return list(VENDORS)
    out = []
    for n in names:
        for drv, aliases in VENDORS.items():
            if n.lower() in aliases:
                out.append(drv)
                break
        else:
            raise TourError(f"unknown vendor {n!r} (one of: smmu, vtd, amd)")
    return out


def resolve_chapters(names: Iterable[str] | None) -> list[str]:
    if not names:
        return list(CHAPTERS)
    out = []
    for n in names:
        if n.isdigit() and 1 <= int(n) <= len(CHAPTERS):
            out.append(CHAPTERS[int(n) - 1])
        elif n in CHAPTERS:
            out.append(n)
        else:
            raise TourError(f"unknown step {n!r} (1-{len(CHAPTERS)} or one of "
                            f"{', '.join(CHAPTERS)})")
    return out


def tour_scenario(driver: str) -> Scenario:
    return load(builtin_scenarios()[f"tour_{driver}"])


# ---------------------------------------------------------------------------------------
# One step's record
# ---------------------------------------------------------------------------------------
@attrs.define
class TourStep:
    index: int
    chapter: str
    title: str
    say: str
    action: str
    call: str
    call_fields: dict[str, Any]
    result: str
    ok: bool
    error: str
    trace: list[TraceNode]
    structures: list[tuple[ConfigEntry, ConfigEntry | None]]
    walk: list[Any]
    tlb_hit: bool | None
    shown: bool
    brief: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "chapter": self.chapter, "title": self.title,
            "say": self.say, "action": self.action, "call": self.call,
            "call_fields": self.call_fields, "result": self.result, "ok": self.ok,
            "error": self.error, "shown": self.shown,
            "trace": [n.to_dict() for n in self.trace],
            "layers": tree_layers(self.trace),
            "structures": [dict(new.to_dict(old.decoded if old else None),
                                new=old is None) for new, old in self.structures],
            "walk": [st.to_dict() for st in self.walk],
            "tlb_hit": self.tlb_hit,
        }


def _arg_text(step: Step, name: str, value: Any) -> str:
    raw = step.spec.get("args", {}).get(name)
    v = fmt_value(value)
    if isinstance(raw, str) and raw.strip() != v:
        return f"{name}={raw} ({v})"
    return f"{name}={v}"


def _describe_call(runner: Runner, res: StepResult) -> tuple[str, dict[str, Any], str]:
    """(one-line call, its fields for JSON, its result) of a step."""
    step = res.step
    s = step.spec
    a = step.action
    err = res.error
    if a == "ioctl":
        desc = find_ioctl(runner.string(step, step.arg))
        obj = res.struct
        fields: dict[str, Any] = {}
        ins, outs = [], []
        if obj is not None:
            for f in type(obj)._fields_:
                name = f[0]
                v = getattr(obj, name)
                if isinstance(v, ctypes.Array):
                    v = list(v)
                if isinstance(v, ctypes.Structure | ctypes.Union):
                    continue
                fields[name] = v
                if name.startswith("out_") or (name in ("entry_num",) and "expect" in s):
                    outs.append(f"{name}={fmt_value(v)}")
                elif v and name not in ("size", "argsz"):
                    ins.append(_arg_text(step, name, v) if not isinstance(v, list)
                               else f"{name}={[fmt_value(x) for x in v]}")
        fd = runner.value(step, s.get("fd", "iommufd"))
        call = (f"ioctl(fd {fd}, {desc.name} = {desc.request:#x}, struct "
                f"{desc.struct.__name__} {{{', '.join(ins)}}})")
        if "payload" in s:
            data = runner.data(step, s["payload"])
            call += f"\n    payload at data_uptr: {data.hex(' ', 8)}"
        result = ("-> " + ", ".join(outs)) if outs and err is None else (
            "-> 0" if err is None else "")
        return call, fields, result
    if a in ("dma_read", "dma_write"):
        dev = runner.string(step, step.arg)
        iova = runner.int_value(step, s.get("iova", 0))
        p = f", pasid {runner.int_value(step, s['pasid'])}" if "pasid" in s else ""
        if a == "dma_read":
            n = runner.int_value(step, s.get("len", 1))
            call = f"{dev}: DMA read {n} bytes at IOVA {iova:#x}{p}"
            result = f"-> {res.value!r}" if isinstance(res.value, bytes) else ""
        else:
            call = f"{dev}: DMA write {runner.data(step, s)!r} at IOVA {iova:#x}{p}"
            result = "-> done" if err is None else ""
        return call, {"device": dev, "iova": iova}, result
    if a == "read":
        call = f"read(fd {runner.value(step, step.arg)})"
        if isinstance(res.value, ctypes.Structure):
            body = ", ".join(f"{f[0]}={fmt_value(getattr(res.value, f[0]))}"
                             for f in type(res.value)._fields_
                             if not isinstance(getattr(res.value, f[0]), ctypes.Array)
                             and getattr(res.value, f[0]))
            return call, {}, f"-> struct {type(res.value).__name__} {{{body}}}"
        return call, {}, f"-> {res.value!r}"
    if a == "write":
        data = runner.data(step, s)
        what = f"struct {s['struct']}" if "struct" in s else f"{len(data)} bytes"
        body = ", ".join(
            f"{k}={v} ({fmt_value(runner.value(step, v))})" if isinstance(v, str)
            else f"{k}={fmt_value(v)}" for k, v in s.get("fields", {}).items())
        call = f"write(fd {runner.value(step, step.arg)}, {what} {{{body}}})"
        return call, {}, f"-> {res.value}"
    if a == "open":
        return f"open({runner.string(step, step.arg)})", {}, f"-> fd {res.value}"
    return f"{a} {step.arg}", {}, ""


def _has_hw_walk(nodes: Sequence[TraceNode]) -> bool:
    return any(n.layer == "hw" or _has_hw_walk(n.children) for n in nodes)


# ---------------------------------------------------------------------------------------
# Running a vendor's tour
# ---------------------------------------------------------------------------------------
def _tracked(runner: Runner, machine: Machine, driver: str) -> list[str]:
    """The scenario's devices behind this vendor's IOMMUs."""
    mine = {n for n, d in machine.iommus.items() if d == driver}
    devs = []
    for v in runner.scenario.vars.values():
        if isinstance(v, str) and machine.devices.get(v) in mine and v not in devs:
            devs.append(v)
    return devs


def _pasids(step: Step, runner: Runner) -> set[int]:
    s = step.spec
    out = set()
    if "pasid" in s:
        out.add(runner.int_value(step, s["pasid"]))
    p = s.get("args", {}).get("pasid")
    if p is not None:
        out.add(runner.int_value(step, p))
    return out


def tour_records(driver: str, chapters: Sequence[str]) -> tuple[Scenario, list[TourStep],
                                                                float]:
    """Run ``driver``'s tour; return the records of every step of the chosen chapters
    (steps of earlier chapters run too, unrecorded: they build the state)."""
    sc = tour_scenario(driver)
    t0 = time.perf_counter()
    runner = Runner(sc, trace=True)
    m = runner.machine
    devs = _tracked(runner, m, driver)
    keys: list[tuple[str, int | None]] = [(d, None) for d in devs]
    snap: dict[tuple[str, int | None], list[ConfigEntry]] = {
        k: device_config(m, k[0], k[1]) for k in keys}
    last = max((CHAPTERS.index(c) for c in chapters), default=len(CHAPTERS) - 1)
    records: list[TourStep] = []
    try:
        for step in sc.steps:
            if step.chapter in CHAPTERS and CHAPTERS.index(step.chapter) > last:
                break
            for p in _pasids(step, runner):
                for d in devs:
                    if (d, p) not in snap:
                        keys.append((d, p))
                        snap[(d, p)] = device_config(m, d, p)
            res = runner.run_step(step)
            if step.chapter not in chapters:
                for k in keys:
                    snap[k] = device_config(m, k[0], k[1])
                continue
            name_ioctls(res.trace)
            structures: list[tuple[ConfigEntry, ConfigEntry | None]] = []
            for k in keys:
                now = device_config(m, k[0], k[1])
                before = {e.label: e for e in snap[k]}
                for e in now:
                    old = before.get(e.label)
                    if (old is None or old.decoded.words != e.decoded.words) and not any(
                            e.label == s[0].label and e.addr == s[0].addr for s in structures):
                        structures.append((e, old))
                snap[k] = now
            walk: list[Any] = []
            tlb_hit = None
            if step.action in ("dma_read", "dma_write"):
                dev = runner.string(step, step.arg)
                iova = runner.int_value(step, step.spec.get("iova", 0))
                pasid = (runner.int_value(step, step.spec["pasid"]) if "pasid" in step.spec
                         else None)
                walk = translation_walk(m, dev, iova, pasid)
                tlb_hit = res.error is None and not _has_hw_walk(res.trace)
            call, fields, result = _describe_call(runner, res)
            err = ""
            if isinstance(res.error, DmaFault):
                err = (f"DmaFault {res.error.reason}"
                       + (" (page request)" if res.error.page_request else ""))
            elif isinstance(res.error, OSError):
                err = f"OSError {res.error.errno}: {res.error.strerror}"
            records.append(TourStep(
                index=step.index, chapter=step.chapter, title=step.title, say=step.say,
                action=step.action, call=call, call_fields=fields, result=result,
                ok=True, error=err, trace=res.trace, structures=structures, walk=walk,
                tlb_hit=tlb_hit, shown=bool(step.spec.get("show", False)),
                brief=_brief(runner, step)))
    finally:
        runner.close()
    return sc, records, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------
def _brief(runner: Runner, step: Step) -> str:
    """One line for a step the tour does not detail."""
    s = step.spec
    a = step.action
    v = runner.value
    try:
        if a == "guest_map":
            return (f"guest: {step.arg} maps {v(step, s['iova']):#x} -> GPA "
                    f"{v(step, s['gpa']):#x}")
        if a == "guest_unmap":
            return f"guest: {step.arg} unmaps {v(step, s['iova']):#x}"
        if a == "guest_table":
            return f"guest: a {step.arg} table {step.spec.get('as', '')} in guest RAM"
        if a == "guest_write":
            return f"guest: writes {len(runner.data(step, s))} bytes at GPA {v(step, s['gpa']):#x}"
        if a == "guest_cd":
            return f"guest: writes its CD (arm_smmu_make_s1_cd) at GPA {v(step, s['gpa']):#x}"
        if a == "guest_ram":
            return "guest: RAM is the VMM's mapping at IOVA = GPA"
        if a == "mmap":
            return f"mmap({v(step, step.arg):#x})"
        if a == "mem_write":
            return f"VMM writes {runner.data(step, s)!r} to user memory"
        if a == "mem_read":
            return f"VMM reads user memory at {v(step, step.arg):#x}"
    except Exception:  # a summary must never fail the tour
        pass
    return ""


def _print_step(r: TourStep, out: IO[str], color: bool) -> None:
    if not r.shown:
        line = f"  · {r.title or r.brief or r.call}"
        out.write(paint(line, "dim", color) + "\n")
        return
    head = r.title or (r.call.split(",")[1].split("=")[0].strip() if r.action == "ioctl"
                       else r.action)
    out.write("\n" + paint(f"▶ {head}", "title", color) + "\n")
    if r.say:
        out.write(wrap(r.say, "  ") + "\n")
    out.write(paint("  call:", "title", color) + f" {r.call}\n")
    if r.result:
        out.write(f"        {r.result}\n")
    if r.error:
        out.write(paint(f"        => {r.error} (expected)", "error", color) + "\n")
    if r.trace:
        out.write(paint("  call tree:", "title", color) + "\n")
        out.write(render_tree(r.trace, color=color, indent="    ") + "\n")
    for new, old in r.structures:
        where = f" @ {new.addr:#x}" + (f" ({new.note})" if new.note else "")
        head = ("changed" if old is not None and old.addr == new.addr else
                "now in use")
        out.write(paint(f"  {new.label}{where} {head}:", "title", color) + "\n")
        out.write(new.decoded.render(old.decoded if old else None, color=color, compact=True,
                                     indent="    ") + "\n")
    if r.tlb_hit:
        out.write(paint("  no walk: the IOMMU answered from its TLB. The tables now say:",
                        "changed", color) + "\n")
    elif r.walk:
        out.write(paint("  hardware walk:", "title", color) + "\n")
    for st in r.walk:
        out.write(st.render("    ") + "\n")


def run_tour(vendors: Sequence[str] | None = None, steps: Sequence[str] | None = None,
             color: bool = False, as_json: bool = False, out: IO[str] | None = None) -> int:
    import sys

    out = out or sys.stdout
    drivers = resolve_vendors(vendors)
    chapters = resolve_chapters(steps)
    doc: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for drv in drivers:
        sc, records, elapsed = tour_records(drv, chapters)
        if as_json:
            doc.append({"vendor": drv, "scenario": sc.name, "description": sc.description,
                        "chapters": {c: sc.chapters.get(c, c) for c in chapters},
                        "elapsed_s": round(elapsed, 3),
                        "steps": [r.to_dict() for r in records]})
            continue
        bar = "═" * 92
        out.write(paint(bar, "dim", color) + "\n")
        out.write(paint(f"iommu-sim tour: {drv}", "title", color) + "\n")
        out.write(wrap(sc.description, "  ") + "\n")
        chapter = ""
        for r in records:
            if r.chapter != chapter:
                chapter = r.chapter
                n = CHAPTERS.index(chapter) + 1 if chapter in CHAPTERS else 0
                out.write("\n" + paint(f"── {drv} step {n}/{len(CHAPTERS)}: {chapter} — "
                                       f"{sc.chapters.get(chapter, '')}", "title", color)
                          + "\n")
            _print_step(r, out, color)
        out.write("\n")
    if as_json:
        out.write(json.dumps({"tour": doc, "elapsed_s": round(time.perf_counter() - t_all, 3)},
                             indent=1) + "\n")
    else:
        out.write(paint(f"tour done in {time.perf_counter() - t_all:.2f} s "
                        f"({', '.join(drivers)}; steps: {', '.join(chapters)})", "dim", color)
                  + "\n")
    return 0

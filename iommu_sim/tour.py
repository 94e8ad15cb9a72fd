"""``iommu-sim tour``: a VMM's flow on each vendor, explained layer by layer.

The tour of a driver is the scenario file it ships marked as its tour (hook
``describe_scenarios``; the built-in ones are ``drivers/<vendor>/describe/tour_*.toml``),
run on its Machine (so every step is also checked by ``iommu-sim run``) with tracing on.
For each step it shows:

* the call: the ioctl and its struct (inputs, outputs), a DMA, a read of the fault fd...;
* the layered call tree it caused (user -> iommufd -> core -> driver -> hw);
* the structures the driver wrote for the scenario's devices, as the driver describes
  them (hook ``describe_device``: an STE and CD, a PASID entry, a DTE...), decoded field
  by field, changed fields marked;
* for a DMA, the walk the hardware does through the tables as they are now (or that it
  did not walk at all: an IOTLB hit, which is how a stale entry shows).

The steps of the tour (``--step``) are the ``[chapters]`` of the vendor's tour scenario,
in order (the built-in tours share :data:`CHAPTERS`). Adding a chapter is adding it to
``[chapters]`` and giving it ``[[step]]``s (``show = true`` for the ones printed in
full): nothing here changes.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

import attrs

from iommu_core.platform.dma import DmaFault
from iommu_core.trace import TraceNode
from iommu_sim.catalogue import UnknownVendor, catalogue
from iommu_sim.decode import render
from iommu_sim.introspect import (
    ConfigEntry,
    device_config,
    entry_to_dict,
    render_walk,
    translation_walk,
    walk_to_dict,
)
from iommu_sim.machine import Machine
from iommu_sim.render import fmt_value, paint, render_tree, tree_layers, wrap
from iommu_sim.scenario import Runner, Scenario, Step, StepResult, chapter_ids, load
from iommu_sim.uapi_index import find_ioctl

__all__ = ["CHAPTERS", "TourError", "TourStep", "run_tour", "summary_rows", "tour_records",
           "tour_vendors"]

#: The chapters the built-in tours share, in order (a driver's tour may have others).
CHAPTERS = ("paging", "nested", "stale", "pasid", "fault")


class TourError(ValueError):
    """A bad --vendor or --step."""


def tour_vendors() -> dict[str, str]:
    """Driver name -> vendor name, for every known driver that ships a tour."""
    return {d.driver: d.vendor().name for d in catalogue() if d.tour() is not None}


def resolve_vendors(names: Iterable[str] | None) -> list[str]:
    tours = tour_vendors()
    if not names:
        return list(tours)
    out = []
    for n in names:
        try:
            drv = catalogue().find(n).driver
        except UnknownVendor:
            drv = ""
        if drv not in tours:
            raise TourError(f"unknown vendor {n!r} (one of: {', '.join(tours.values())})")
        out.append(drv)
    return out


def tour_scenario(driver: str) -> Scenario:
    ref = catalogue().find(driver).tour()
    if ref is None:
        raise TourError(f"{driver} has no tour")
    return load(str(ref.path))


def resolve_chapters(names: Iterable[str] | None, tours: Mapping[str, Sequence[str]]
                     ) -> dict[str, list[str]]:
    """The chapters to show of each vendor's tour (``tours``: driver -> its chapters):
    a name selects that chapter where a tour has it, a number the n-th chapter."""
    out: dict[str, list[str]] = {drv: [] for drv in tours}
    if not names:
        return {drv: list(ch) for drv, ch in tours.items()}
    every = list(dict.fromkeys(c for ch in tours.values() for c in ch))
    most = max((len(ch) for ch in tours.values()), default=0)
    for n in names:
        if n.isdigit() and 1 <= int(n) <= most:
            for drv, ch in tours.items():
                if int(n) <= len(ch) and ch[int(n) - 1] not in out[drv]:
                    out[drv].append(ch[int(n) - 1])
        elif n in every:
            for drv, ch in tours.items():
                if n in ch and n not in out[drv]:
                    out[drv].append(n)
        else:
            raise TourError(f"unknown step {n!r} (1-{most} or one of {', '.join(every)})")
    return out


# ---------------------------------------------------------------------------------------
# One step's record
# ---------------------------------------------------------------------------------------
@attrs.define
class TourStep:
    """One step of a tour as it ran: the call, its call tree, the entries it changed (new,
    previous), and for a DMA the walk and the entries that led to it."""

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
    #: For a DMA: the entries the hardware read before the walk (the walk picture's start).
    walk_entries: list[ConfigEntry] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "chapter": self.chapter, "title": self.title,
            "say": self.say, "action": self.action, "call": self.call,
            "call_fields": self.call_fields, "result": self.result, "ok": self.ok,
            "error": self.error, "shown": self.shown,
            "trace": [n.to_dict() for n in self.trace],
            "layers": tree_layers(self.trace),
            "structures": [dict(entry_to_dict(new, old.decoded if old else None),
                                new=old is None) for new, old in self.structures],
            "walk": [walk_to_dict(st) for st in self.walk],
            "walk_entries": [entry_to_dict(e) for e in self.walk_entries],
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
    if a in ("pread", "pwrite"):
        return _describe_rw(runner, res)
    if a == "open":
        return f"open({runner.string(step, step.arg)})", {}, f"-> fd {res.value}"
    if a in ("mem_read", "mem_write"):
        # User memory, or registers when the address is in a mapped register page.
        addr = runner.int_value(step, step.arg)
        where = f"{step.arg} ({addr:#x})"
        if a == "mem_read":
            got = res.value.hex(" ") if isinstance(res.value, bytes) else ""
            return f"load {where}", {"address": addr}, f"-> {got}" if got else ""
        data = runner.data(step, s)
        return f"store {data.hex(' ')} at {where}", {"address": addr}, ""
    return f"{a} {step.arg}", {}, ""


def _describe_rw(runner: Runner, res: StepResult) -> tuple[str, dict[str, Any], str]:
    """pread/pwrite at an offset of a file (a device's registers through its region)."""
    step = res.step
    s = step.spec
    fd = runner.value(step, step.arg)
    raw_off = s.get("offset", 0)
    off = runner.int_value(step, raw_off)
    where = f"{raw_off} = {off:#x}" if isinstance(raw_off, str) else f"{off:#x}"
    fields = {"fd": fd, "offset": off}
    words = next((k for k in ("u64", "u32", "u16") if k in s), None)
    if step.action == "pwrite":
        if words is not None:
            vals = [f"{x} ({fmt_value(runner.int_value(step, x))})" if isinstance(x, str)
                    else fmt_value(x) for x in s[words]]
            what = f"{words} {{{', '.join(vals)}}}"
        else:
            what = repr(runner.data(step, s))
        return f"pwrite(fd {fd}, {what}, offset {where})", fields, f"-> {res.value}"
    n = runner.int_value(step, s.get("len", 4))
    got = res.value if isinstance(res.value, bytes) else b""
    width = 8 if "expect_u64" in s else 4 if "expect_u32" in s else 0
    if width:
        vals = [hex(int.from_bytes(got[i : i + width], "little"))
                for i in range(0, len(got), width)]
        shown = f"{{{', '.join(vals)}}}"
    else:
        shown = repr(got)
    return f"pread(fd {fd}, {n}, offset {where})", fields, f"-> {shown}"


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
    order = list(chapter_ids(sc))
    t0 = time.perf_counter()
    runner = Runner(sc, trace=True)
    m = runner.machine
    devs = _tracked(runner, m, driver)
    keys: list[tuple[str, int | None]] = [(d, None) for d in devs]
    snap: dict[tuple[str, int | None], list[ConfigEntry]] = {
        k: device_config(m, k[0], k[1]) for k in keys}
    last = max((order.index(c) for c in chapters if c in order), default=len(order) - 1)
    records: list[TourStep] = []
    try:
        for step in sc.steps:
            if step.chapter in order and order.index(step.chapter) > last:
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
            walk_entries: list[ConfigEntry] = []
            tlb_hit = None
            if step.action in ("dma_read", "dma_write"):
                dev = runner.string(step, step.arg)
                iova = runner.int_value(step, step.spec.get("iova", 0))
                pasid = (runner.int_value(step, step.spec["pasid"]) if "pasid" in step.spec
                         else None)
                walk = translation_walk(m, dev, iova, pasid)
                walk_entries = device_config(m, dev, pasid)
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
                brief=_brief(runner, step), walk_entries=walk_entries))
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
        if a == "guest_build":
            what = runner.guest_builder(step, runner.string(step, step.arg)).title
            return f"guest: writes {what} at GPA {v(step, s['gpa']):#x}"
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
        out.write(render(new.decoded, old.decoded if old else None, color=color, compact=True,
                         indent="    ") + "\n")
    if r.tlb_hit:
        out.write(paint("  no walk: the IOMMU answered from its TLB. The tables now say:",
                        "changed", color) + "\n")
    elif r.walk:
        out.write(paint("  hardware walk:", "title", color) + "\n")
    for st in r.walk:
        out.write(render_walk(st, "    ") + "\n")


def summary_rows(done: Sequence[tuple[str, Sequence[str], Sequence[TourStep]]]
                 ) -> list[list[str]]:
    """One row per vendor toured: its steps, and what they did (header row first)."""
    rows = [["vendor", "steps", "ioctls", "DMAs", "faults", "entries written"]]
    for drv, chapters, records in done:
        rows.append([drv, " ".join(chapters),
                     str(sum(r.action == "ioctl" for r in records)),
                     str(sum(r.action in ("dma_read", "dma_write") for r in records)),
                     str(sum(r.error.startswith("DmaFault") for r in records)),
                     str(sum(len(r.structures) for r in records))])
    return rows


def _summary_text(rows: list[list[str]], color: bool) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [paint("summary", "title", color)]
    for k, r in enumerate(rows):
        line = "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        lines.append(paint(line.rstrip(), "dim", color) if k == 0 else line.rstrip())
    lines.append("  more: --vendor V --step S (one step), --json, --html FILE (pictures)")
    return "\n".join(lines)


def run_tour(vendors: Sequence[str] | None = None, steps: Sequence[str] | None = None,
             color: bool = False, as_json: bool = False, out: IO[str] | None = None,
             html: str | None = None) -> int:
    """Print the tour (or its JSON); ``html``: write the tour's page to that file instead
    and print where."""
    import sys

    out = out or sys.stdout
    drivers = resolve_vendors(vendors)
    tours = {drv: list(chapter_ids(tour_scenario(drv))) for drv in drivers}
    selected = resolve_chapters(steps, tours)
    doc: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    shown: list[str] = []
    done: list[tuple[str, Sequence[str], Sequence[TourStep]]] = []
    pages: list[tuple[str, Scenario, Sequence[str], Sequence[TourStep]]] = []
    for drv in drivers:
        chapters = selected[drv]
        if not chapters:
            continue  # this vendor's tour has none of the chosen steps
        shown.append(drv)
        order = tours[drv]
        sc, records, elapsed = tour_records(drv, chapters)
        done.append((drv, chapters, records))
        if html is not None:
            pages.append((drv, sc, order, records))
            continue
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
                n = order.index(chapter) + 1 if chapter in order else 0
                out.write("\n" + paint(f"── {drv} step {n}/{len(order)}: {chapter} — "
                                       f"{sc.chapters.get(chapter, '')}", "title", color)
                          + "\n")
            _print_step(r, out, color)
        out.write("\n")
    if html is not None:
        from pathlib import Path

        from iommu_sim.draw.html import tour_page

        Path(html).write_text(tour_page(pages, summary_rows(done)), encoding="utf-8")
        n = sum(len(recs) for _, _, recs in done)
        out.write(f"wrote {html}: {len(pages)} vendor(s), {n} steps\n")
        return 0
    if as_json:
        out.write(json.dumps({"tour": doc, "elapsed_s": round(time.perf_counter() - t_all, 3)},
                             indent=1) + "\n")
    else:
        out.write(paint("═" * 92, "dim", color) + "\n")
        out.write(_summary_text(summary_rows(done), color) + "\n")
        steps_shown = list(dict.fromkeys(c for d in shown for c in selected[d]))
        out.write(paint(f"tour done in {time.perf_counter() - t_all:.2f} s "
                        f"({', '.join(shown)}; steps: {', '.join(steps_shown)})", "dim", color)
                  + "\n")
    return 0

"""Read-only views of what a driver programmed, for teaching: the structures the hardware
will use for a device (an STE and CD, a context and PASID entry, a DTE and GCR3 entry...)
and the table walk it would do, as the driver describes them
(:meth:`iommu_core.describe.DescribeOps.device`).

Everything the drivers read is what a debugger on real hardware could read: the unit's
registers (reads without side effects) and physical memory. Nothing changes (no accessed
or dirty bit is set by a walk), and caches are *not* consulted: a walk shows what the
tables say now, which is what makes a stale IOTLB entry visible next to it.

Renderers for the values (text and JSON) are here too; the values themselves
(:class:`~iommu_core.describe.ConfigEntry`, :class:`~iommu_core.describe.WalkStage`) are
plain data any other renderer can draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iommu_core.describe import (
    ConfigEntry,
    Decoded,
    DeviceView,
    DomainView,
    WalkLevel,
    WalkStage,
)
from iommu_core.domain import IommuDomain
from iommu_core.platform.bus import Device
from iommu_sim.catalogue import describe_ops
from iommu_sim.decode import from_dict as decoded_from_dict
from iommu_sim.decode import to_dict as decoded_to_dict
from iommu_sim.machine import Machine

__all__ = ["ConfigEntry", "WalkStage", "device_config", "domain_view", "entry_from_dict",
           "entry_to_dict", "render_walk", "translation_walk", "walk_from_dict",
           "walk_to_dict"]


def _view(machine: Machine, device: str | Device, pasid: int | None, iova: int | None
          ) -> DeviceView:
    dev = device if isinstance(device, Device) else machine.device(device)
    driver = machine.iommus.get(dev.iommu_name)
    if driver is None:
        return DeviceView()
    ops = describe_ops(machine.plugins, driver)
    try:
        return ops.device(machine.platform.iommus[dev.iommu_name], machine.platform.mem, dev,
                          pasid, iova)
    except LookupError:  # a table address outside memory: nothing to show
        return DeviceView()


def device_config(machine: Machine, device: str | Device, pasid: int | None = None
                  ) -> list[ConfigEntry]:
    """The structures the IOMMU reads for ``device`` (and ``pasid``), as in memory now."""
    return list(_view(machine, device, pasid, None).entries)


def translation_walk(machine: Machine, device: str | Device, iova: int,
                     pasid: int | None = None) -> list[WalkStage]:
    """The walk the IOMMU would do for ``iova`` now, stage by stage, level by level."""
    return list(_view(machine, device, pasid, iova).walk)


def domain_view(machine: Machine, domain: IommuDomain) -> DomainView | None:
    """What ``domain`` is to its hardware (tables, tags), as its driver describes it."""
    return describe_ops(machine.plugins, domain.owner.name).domain(domain)


# -- JSON (both ways: a recorded trace is drawn again from it) -------------------------------
def entry_to_dict(e: ConfigEntry, previous: Decoded | None = None) -> dict[str, Any]:
    d = {"label": e.label, "addr": e.addr, **decoded_to_dict(e.decoded, previous)}
    if e.note:
        d["note"] = e.note
    if e.table:
        d["table"], d["index"] = e.table, e.index
    if e.guest_addr is not None:
        d["guest_addr"] = e.guest_addr
    if e.stage2 is not None:
        d["stage2"] = walk_to_dict(e.stage2)
    return d


def entry_from_dict(d: Mapping[str, Any]) -> ConfigEntry:
    s2 = d.get("stage2")
    return ConfigEntry(d["label"], int(d["addr"]), decoded_from_dict(d), d.get("note", ""),
                       int(d.get("table", 0)), int(d.get("index", 0)), d.get("guest_addr"),
                       walk_from_dict(s2) if s2 else None)


def walk_to_dict(st: WalkStage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": st.label, "format": st.fmt, "root": st.root, "input": st.input,
        "result": st.result, "output": st.output,
        "levels": [_level_dict(lv) for lv in st.levels]}
    if st.fault:
        out["fault"] = st.fault
    if st.output is not None:
        out.update(page_size=st.page_size, readable=st.readable, writable=st.writable)
    if st.stage2_fault is not None:
        out["stage2_fault"] = walk_to_dict(st.stage2_fault)
    return out


def _level_dict(lv: WalkLevel) -> dict[str, Any]:
    d: dict[str, Any] = {"level": lv.level, "addr": lv.addr, "desc": lv.desc, "text": lv.text,
                         "level_num": lv.level_num, "kind": lv.kind, "table": lv.table,
                         "index": lv.index, "input_hi": lv.input_hi, "input_lo": lv.input_lo}
    if lv.stage2 is not None:
        d["stage2"] = walk_to_dict(lv.stage2)
    return d


def walk_from_dict(d: Mapping[str, Any]) -> WalkStage:
    levels = tuple(
        WalkLevel(lv["level"], int(lv["addr"]), int(lv["desc"]), lv.get("text", ""),
                  int(lv.get("level_num", 0)), lv.get("kind", ""), int(lv.get("table", 0)),
                  int(lv.get("index", 0)), int(lv.get("input_hi", 0)),
                  int(lv.get("input_lo", 0)),
                  walk_from_dict(lv["stage2"]) if lv.get("stage2") else None)
        for lv in d.get("levels", ()))
    s2f = d.get("stage2_fault")
    return WalkStage(d["label"], d.get("format", ""), int(d["root"]), int(d["input"]), levels,
                     d.get("result", ""), d.get("output"), d.get("fault", ""),
                     int(d.get("page_size", 0)), bool(d.get("readable", False)),
                     bool(d.get("writable", False)), walk_from_dict(s2f) if s2f else None)


def render_walk(st: WalkStage, indent: str = "") -> str:
    lines = [f"{indent}{st.label}: {st.input:#x} via root {st.root:#x}"]
    for lv in st.levels:
        lines.append(f"{indent}  {lv.level:<5} @ {lv.addr:#014x} = {lv.desc:#018x}  {lv.text}")
    lines.append(f"{indent}  => {st.result}")
    return "\n".join(lines)

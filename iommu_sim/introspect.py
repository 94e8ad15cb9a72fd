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

from typing import Any

from iommu_core.describe import ConfigEntry, Decoded, DeviceView, DomainView, WalkStage
from iommu_core.domain import IommuDomain
from iommu_core.platform.bus import Device
from iommu_sim.catalogue import describe_ops
from iommu_sim.decode import to_dict as decoded_to_dict
from iommu_sim.machine import Machine

__all__ = ["ConfigEntry", "WalkStage", "device_config", "domain_view", "entry_to_dict",
           "render_walk", "translation_walk", "walk_to_dict"]


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


# -- renderers ----------------------------------------------------------------------------------
def entry_to_dict(e: ConfigEntry, previous: Decoded | None = None) -> dict[str, Any]:
    d = {"label": e.label, "addr": e.addr, **decoded_to_dict(e.decoded, previous)}
    if e.note:
        d["note"] = e.note
    return d


def walk_to_dict(st: WalkStage) -> dict[str, Any]:
    return {"label": st.label, "format": st.fmt, "root": st.root, "input": st.input,
            "result": st.result, "output": st.output,
            "levels": [{"level": lv.level, "addr": lv.addr, "desc": lv.desc, "text": lv.text}
                       for lv in st.levels]}


def render_walk(st: WalkStage, indent: str = "") -> str:
    lines = [f"{indent}{st.label}: {st.input:#x} via root {st.root:#x}"]
    for lv in st.levels:
        lines.append(f"{indent}  {lv.level:<5} @ {lv.addr:#014x} = {lv.desc:#018x}  {lv.text}")
    lines.append(f"{indent}  => {st.result}")
    return "\n".join(lines)

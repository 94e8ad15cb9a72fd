"""The layer figure of the architecture page: the layers a call crosses, top to bottom,
in the colours the call tree gives them, with the boundaries between them (what crosses
each one) and the tools beside the stack.

The layers and boundaries are the design's (``DESIGN.md``); the driver boxes are the
in-tree drivers (``iommu_sim.builtin.IN_TREE``) plus the slot a third-party package
fills through the ``iommu_sim.drivers`` entry point.
"""

from __future__ import annotations

from iommu_sim.builtin import IN_TREE
from iommu_sim.draw.svg import LAYER_COLORS, Svg, fit

__all__ = ["layers_svg"]

MARGIN = 14.0
STACK_W = 760.0
TOOLS_W = 210.0
ROW_H = 58.0
GAP = 34.0

#: (trace layer, package, what it is, what it holds).
_ROWS = (
    ("user", "user space", "a VMM, a test, the CLI, a Linux program under exec",
     "Machine: open, ioctl, read, write, mmap, memfd, fork; a device's DMA"),
    ("iommufd", "iommufd/", "the ioctl ABI of include/uapi/linux/iommufd.h",
     "IOAS, HWPT, DEVICE, ACCESS, FAULT, VIOMMU, VDEVICE, VEVENTQ; VFIO cdev and "
     "container"),
    ("core", "iommu_core/", "drivers/iommu/iommu.c and friends",
     "hook specs, plugin host, groups, domains, attach/PASID, IOTLB gather, IOPF, "
     "page-table core, tracing"),
    ("driver", "drivers/", "one pluggy plugin per vendor", ""),
    ("hw", "hardware models", "what the driver programs, walked as the spec says",
     "registers, tables in memory, command queues, caches and IOTLBs, the walker"),
)

#: What crosses the boundary under each row.
_BOUNDARIES = (
    "system calls: errors are OSError(errno); a DMA that faults raises DmaFault",
    "iommu_core calls and hooks (iommufd never imports a vendor driver)",
    "hook specs: iommu_ops, domain_ops, viommu ops, the teaching hooks",
    "only registers, memory the driver allocated, and queues (the model never calls "
    "the driver)",
)


def layers_svg(*, ids: str = "layers") -> Svg:
    drivers = [d for d in IN_TREE if d != "mock"] + ["mock", "your driver (entry point)"]
    height = MARGIN * 2 + 26 + len(_ROWS) * ROW_H + (len(_ROWS) - 1) * GAP + 64
    width = MARGIN * 3 + STACK_W + TOOLS_W
    svg = Svg(width, height, ids=ids, title="iommu-sim layers",
              desc="user space, iommufd, iommu_core, drivers, hardware models, platform")
    svg.text(MARGIN, MARGIN + 14, "Layers call down, never up", cls="title")
    y = MARGIN + 28
    x = MARGIN
    tops = []
    for i, (layer, name, what, holds) in enumerate(_ROWS):
        color = LAYER_COLORS[layer]
        style = f"fill:{color};fill-opacity:0.08;stroke:{color};stroke-width:1.5"
        tops.append(y)
        if layer == "driver":
            _boxes(svg, x, y, drivers, style, color, "[driver]")
        elif layer == "hw":
            _boxes(svg, x, y, [f"{d} model" if "entry" not in d else "its model"
                               for d in drivers], style, color, "[hw]")
        else:
            svg.rect(x, y, STACK_W, ROW_H, style=style, rx=6)
            svg.text(x + 10, y + 18, f"[{layer}] {name}", cls="b", style=f"fill:{color}")
            svg.text(x + 10 + len(f"[{layer}] {name}") * 6.71 + 12, y + 18,
                     fit(what, STACK_W - 240), cls="muted")
            svg.text(x + 10, y + 40, fit(holds, STACK_W - 20))
        if i < len(_BOUNDARIES):
            by = y + ROW_H
            svg.line(x + 60, by + 2, x + 60, by + GAP - 2, arrow=True)
            svg.text(x + 72, by + GAP / 2 + 4, fit(_BOUNDARIES[i], STACK_W - 80, 9),
                     cls="small muted")
        y += ROW_H + GAP
    # The platform under everything.
    py = y - GAP + 12
    svg.rect(x, py, STACK_W, 40, cls="panel", rx=6)
    svg.text(x + 10, py + 17, "platform", cls="b")
    svg.text(x + 10, py + 32, fit("physical memory, page allocator, tasks and their address "
                                  "spaces, buses, DMA-capable devices", STACK_W - 20, 9),
             cls="small")
    # The tools beside the stack: they use the Machine and ask the drivers.
    tx = MARGIN * 2 + STACK_W
    th = tops[-1] + ROW_H - tops[0]
    svg.rect(tx, tops[0], TOOLS_W, th, cls="panel", rx=6)
    svg.text(tx + 10, tops[0] + 18, "iommu_sim tools", cls="b")
    lines = ("tour, trace, exec, run", "decode, info, graph", "pictures (this one too)", "",
             "know no vendor: each", "driver describes its", "structures, hw_info,",
             "entries and walks", "through the teaching", "hooks")
    for k, ln in enumerate(lines):
        svg.text(tx + 10, tops[0] + 40 + 15 * k, ln, cls="small")
    svg.line(tx, tops[0] + ROW_H / 2, x + STACK_W + 2, tops[0] + ROW_H / 2, cls="edge",
             arrow=True)
    svg.line(tx, tops[3] + ROW_H / 2, x + STACK_W + 2, tops[3] + ROW_H / 2, cls="edge-s2",
             arrow=True)
    svg.text(tx + 8, tops[3] + ROW_H / 2 - 4, "describe_*", cls="small muted")
    return svg


def _boxes(svg: Svg, x: float, y: float, names: list[str], style: str, color: str,
           tag: str) -> None:
    n = len(names)
    gap = 10.0
    w = (STACK_W - gap * (n - 1)) / n
    for i, name in enumerate(names):
        bx = x + i * (w + gap)
        third = "entry" in name or name == "its model"
        svg.rect(bx, y, w, ROW_H, style=style + (";stroke-dasharray:5 3" if third else ""),
                 rx=6)
        svg.text(bx + 8, y + 18, tag, cls="small", style=f"fill:{color}")
        svg.text(bx + 8, y + 38, fit(name, w - 16), cls="b" if not third else "muted")

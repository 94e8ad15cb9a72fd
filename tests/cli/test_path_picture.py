"""The swimlane picture of a call tree (iommu_sim.draw.path): one box per node in its
layer's lane, in call order, an arrow from each call to what it caused, alike runs
folded."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from iommu_core.trace import TraceNode
from iommu_sim.draw.path import path_svg

NS = "{http://www.w3.org/2000/svg}"


def tree() -> list[TraceNode]:
    hw = [TraceNode("hw", "CMD", f"#{i}") for i in range(9)]
    drv = TraceNode("driver", "op", "", [TraceNode("driver", "cmdq", "x"), *hw])
    return [TraceNode("user", "ioctl", "X", [TraceNode("iommufd", "handler", "", [drv])])]


def test_boxes_lanes_and_arrows() -> None:
    svg = path_svg(tree(), title="t")
    root = ET.fromstring(svg.to_string().split("?>", 1)[1])
    texts = [t.text or "" for t in root.iter(f"{NS}text")]
    assert texts[:2] == ["t", "[user] user space"]
    boxes = [t for t in texts if t and not t.startswith("[") and t != "t"]
    # user, iommufd, driver op, driver cmdq, 2 hw, the fold, the last hw: call order
    assert boxes[:4] == ["ioctl X", "handler", "op", "cmdq x"]
    assert boxes[4:7] == ["CMD #0", "CMD #1", "… 6 more CMD"]
    assert boxes[7] == "CMD #8"
    paths = [p.get("d", "") for p in root.iter(f"{NS}path") if p.get("marker-end")]
    assert len(paths) == len(boxes) - 1  # every box but the root has its caller's arrow
    # Each box sits in its layer's lane: x grows with the layer.
    xs = {}
    for r in root.iter(f"{NS}rect"):
        st = r.get("style", "")
        m = re.search(r"stroke:(#[0-9a-f]+)", st)
        if m and "fill:#ffffff" in st:
            xs.setdefault(m.group(1), set()).add(float(r.get("x", 0)))
    lefts = sorted(min(v) for v in xs.values())
    assert len(lefts) == 4 and lefts == sorted(set(lefts))  # user < iommufd < driver < hw


def test_row_limit_and_empty() -> None:
    svg = path_svg(tree(), max_rows=3).to_string()
    assert "more calls and events not drawn" in svg
    assert "(nothing recorded)" in path_svg([]).to_string()

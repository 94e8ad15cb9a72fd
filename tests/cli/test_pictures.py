"""The pictures: bit-field diagrams, page walks, the object graph and its layout, the layer
figure and the HTML pages, drawn from the drivers' descriptions; the JSON they are drawn
again from; the TracedMachine that records what a trace page shows."""

from __future__ import annotations

import ctypes
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core.describe import Decoded, DecodedField, unknown_bits
from iommu_core.trace import TraceNode
from iommu_sim.builtin import IN_TREE
from iommu_sim.cli import main
from iommu_sim.decode import decode, describe_pte, from_dict, kinds, to_dict
from iommu_sim.draw.bitfield import bitfield_svg, problem_fields
from iommu_sim.draw.html import tour_page, trace_page, tree_html
from iommu_sim.draw.layers import layers_svg
from iommu_sim.draw.layout import LayoutEdge, LayoutNode, layered
from iommu_sim.draw.walk import walk_svg
from iommu_sim.graph import build_graph, to_svg
from iommu_sim.introspect import entry_from_dict, entry_to_dict, walk_from_dict, walk_to_dict
from iommu_sim.scenario import Runner, builtin_scenarios, load
from iommu_sim.tour import tour_records, tour_scenario
from iommu_sim.traced import TracedMachine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

SVG = "{http://www.w3.org/2000/svg}"
NESTED_STE = [0x100f, 0x0000100002080002, 0x044d359000000001, 0x100102000]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.split("?>", 1)[1] if svg.startswith("<?xml") else svg)


def groups(root: ET.Element) -> dict[str, ET.Element]:
    """Each field's group, by its tooltip's first word."""
    out = {}
    for g in root.iter(f"{SVG}g"):
        t = g.find(f"{SVG}title")
        if t is not None and t.text and " [" in t.text:
            out.setdefault(t.text.split(" ", 1)[0], g)
    return out


def rect_class(g: ET.Element) -> set[str]:
    r = g.find(f"{SVG}rect")
    assert r is not None
    return set(r.get("class", "").split())


# -- bit-field diagrams ---------------------------------------------------------------------
def test_every_field_is_drawn_over_its_bits() -> None:
    d = decode("ste", NESTED_STE)
    root = parse(bitfield_svg(d).to_string())
    drawn = groups(root)
    cell = 896 / 64
    x0 = 12 + 58
    for f in d.fields:
        assert f.hi is not None and f.lo is not None
        g = drawn[f.name]
        title = g.find(f"{SVG}title").text  # type: ignore[union-attr]
        assert title.startswith(f"{f.name} [{f.bits}] = ")
        rect = g.find(f"{SVG}rect")
        assert rect is not None
        if f.hi // 64 == f.lo // 64:  # in one word: its box spans exactly its bits
            base = (f.lo // 64) * 64
            assert float(rect.get("x", 0)) == pytest.approx(x0 + (base + 63 - f.hi) * cell,
                                                            abs=0.06)
            assert float(rect.get("width", 0)) == pytest.approx((f.hi - f.lo + 1) * cell,
                                                                abs=0.06)


def test_changed_unused_and_named_fields_are_marked() -> None:
    old = decode("ste", [0x100b])
    new = decode("ste", [0x100b, 0x20000000])  # EATS=S1CHK: refused outside nesting
    root = parse(bitfield_svg(new, old).to_string())
    drawn = groups(root)
    changed = new.changed(old)
    assert changed == {"EATS"}
    assert {n for n, g in drawn.items() if "f-ch" in rect_class(g)} == changed
    assert {n for n, g in drawn.items() if "f-unused" in rect_class(g)} == {
        f.name for f in new.fields if not f.used}
    assert problem_fields(new) == {"EATS": [1]}
    assert {n for n, g in drawn.items() if "f-bad" in rect_class(g)} == {"EATS"}
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any(t.startswith("✖ 1  C_BAD_STE: EATS=S1CHK") for t in texts)


def test_set_reserved_bits_are_red_cells() -> None:
    s = dict(kinds())["ste"][0][1]
    words = [0x1, 1 << 20 | 1 << 30]  # word 1 bits 84 and 94: 94 is STRW, 84 is reserved
    d = s.decode(words)
    fields = s.layout.fields_for(words[0] | words[1] << 64)
    want = unknown_bits(fields, words[0] | words[1] << 64, 512)
    assert want == 1 << 84
    root = parse(bitfield_svg(d).to_string())
    red = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "rsv-set"
           and r.find(f"{SVG}title") is not None]  # (not the legend's swatch)
    assert [r.find(f"{SVG}title").text for r in red] == [  # type: ignore[union-attr]
        "bit 84: reserved, set"]


def test_problem_fields_match_whole_names() -> None:
    fields = tuple(DecodedField(n, "0", 0, "", hi=i, lo=i) for i, n in enumerate(
        ("V", "VMID", "S2TTB", "MODE")))
    d = Decoded("x", "", (0,), 64, fields, problems=(
        "VMID 3 is out of range", "MODE 7 is reserved (V must be 1)", "S2TTB_HI set"))
    assert problem_fields(d) == {"VMID": [1], "MODE": [2], "V": [2]}


def test_diagrams_are_deterministic_and_distinct_per_id() -> None:
    d = decode("pasid-entry", [0x1001820c9, 0x1800002, 0x60000])
    a, b = bitfield_svg(d, ids="x1").to_string(), bitfield_svg(d, ids="x1").to_string()
    assert a == b
    assert bitfield_svg(d, ids="x2").to_string(standalone=False).count("<style>") == 0


def test_decode_svg_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ste.svg"
    assert main(["decode", "ste", *map(hex, NESTED_STE), "--svg", str(out), "--no-color"]) == 0
    assert "STE: Config=NESTED" in capsys.readouterr().out  # the text is still printed
    root = parse(out.read_text())
    assert set(groups(root)) == {f.name for f in decode("ste", NESTED_STE).fields}
    # several PTEs: one file, one diagram each
    assert main(["decode", "pte", "0x100828025", "0x0", "--format", "x86_64", "--svg",
                 str(out)]) == 0
    root = parse(out.read_text())
    assert len(root.findall(f"{SVG}svg")) == 2


# -- PTE bit positions, found by flipping bits ----------------------------------------------
def test_pte_fields_have_the_architectures_bits() -> None:
    x86 = {f.name: f.bits for f in describe_pte(0x8000000100828067, "x86_64").fields}
    assert x86 == {"P": "0", "RW": "1", "US": "2", "PWT": "3", "PCD": "4", "A": "5", "D": "6",
                   "PAT": "7", "G": "8", "OA": "51:12", "XD": "63"}
    arm = {f.name: f.bits for f in describe_pte(0x0040000100006f43, "arm_lpae_s1").fields}
    assert arm["AF"] == "10" and arm["OA"] == "47:12" and arm["AP"] == "7:6"
    block = {f.name: f.bits for f in describe_pte(0x40000701, "arm_lpae_s1", 2).fields}
    assert block["OA"] == "47:30"  # a 1G block: the output address is bits 47:30 only
    block = {f.name: f.bits for f in describe_pte(0x40000701, "arm_lpae_s1", 1).fields}
    assert block["OA"] == "47:21"  # a 2M block


@settings(max_examples=40, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.sampled_from(["x86_64", "arm_lpae_s1", "amd_v1",
                                                       "vtd_ss", "arm_lpae_s2"]))
def test_a_pte_fields_bits_change_its_value(value: int, fmt: str) -> None:
    d = describe_pte(value, fmt)
    for f in d.fields:
        if f.hi is None or f.lo is None:
            continue
        flipped = describe_pte(value ^ (1 << f.lo), fmt)
        names = {g.name: g.value for g in flipped.fields}
        assert names.get(f.name) != f.value or flipped.summary != d.summary


# -- walks ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nested() -> dict[str, Any]:
    out = {}
    for drv in ("arm_smmu_v3", "intel_vtd", "amd_vi"):
        _, records, _ = tour_records(drv, ["nested"])
        out[drv] = next(r for r in records if r.walk)
    return out


@pytest.mark.parametrize("drv", ["arm_smmu_v3", "intel_vtd", "amd_vi"])
def test_nested_walk_shows_every_level_and_its_stage2(drv: str, nested: dict[str, Any]
                                                      ) -> None:
    r = nested[drv]
    root = parse(walk_svg(r.walk, r.walk_entries).to_string())
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    s1 = r.walk[0]
    for lv in s1.levels:
        assert f"{lv.level} table @ {lv.table:#x}" in texts
        assert f"[{lv.index:#x}] {lv.desc:#018x}" in texts
        assert f"bits {lv.input_hi}:{lv.input_lo}" in texts
    boxes = [x for x in root.iter(f"{SVG}rect") if x.get("class") == "s2box"]
    assert len(boxes) == sum(lv.stage2 is not None for lv in s1.levels) == len(s1.levels)
    for stage in r.walk:
        assert stage.output is not None and f"{stage.output:#x}" in texts
    for e in r.walk_entries:
        assert e.label in texts


def test_a_fault_and_a_tlb_hit_are_drawn_as_such() -> None:
    sc = tour_scenario("arm_smmu_v3")
    _, records, _ = tour_records("arm_smmu_v3", ["paging", "stale"])
    fault = next(r for r in records if r.walk and r.walk[-1].output is None)
    root = parse(walk_svg(fault.walk).to_string())
    assert any(x.get("class") == "fault" for x in root.iter(f"{SVG}rect"))
    hit = next(r for r in records if r.tlb_hit)
    texts = [t.text or "" for t in parse(walk_svg(hit.walk, tlb_hit=True).to_string()).iter(
        f"{SVG}text")]
    assert any(t.startswith("no walk: the IOMMU answered from its TLB") for t in texts)
    assert sc.chapters


# -- the graph and its layout -----------------------------------------------------------------
def test_graph_svg_draws_every_object_and_reference() -> None:
    r = Runner(load(builtin_scenarios()["tour_arm_smmu_v3"]))
    try:
        for _ in r.steps():
            pass
        g = build_graph(r.machine, entries=True)
    finally:
        r.close()
    root = parse(to_svg(g))
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    for n in g.nodes.values():
        assert n.label.split("\n")[0] in texts
    paths = [p for p in root.iter(f"{SVG}path") if p.get("class", "").startswith("edge")]
    assert len(paths) == len(g.edges)
    assert g._repr_svg_() == to_svg(g)


def _overlap(a: Any, b: Any) -> bool:
    return (a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height
            and b.y < a.y + a.height)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
    st.lists(st.sampled_from(["a", "b", "k"]), min_size=n, max_size=n),
    st.lists(st.integers(20, 160), min_size=n, max_size=n))))
def test_layout_places_boxes_apart_and_routes_between_them(
        case: tuple[int, list[tuple[int, int]], list[str], list[int]]) -> None:
    n, pairs, clusters, widths = case
    nodes = [LayoutNode(f"n{i}", widths[i], 20 + i % 3 * 14, clusters[i]) for i in range(n)]
    edges = [LayoutEdge(f"n{a}", f"n{b}") for a, b in pairs]
    lay = layered(nodes, edges, ["a", "b", "k"], stages=[["a", "b"], ["k"]])
    assert lay == layered(nodes, edges, ["a", "b", "k"], stages=[["a", "b"], ["k"]])
    placed = list(lay.nodes.values())
    assert sorted(p.id for p in placed) == sorted(x.id for x in nodes)
    for i, a in enumerate(placed):
        assert a.x >= 0 and a.y >= 0 and a.x + a.width <= lay.width
        for b in placed[i + 1:]:
            assert not _overlap(a, b), (a, b)
    # the kernel stage ("k") comes after the others, column-wise
    first = [p for p in placed if nodes[int(p.id[1:])].cluster != "k"]
    kernel = [p for p in placed if nodes[int(p.id[1:])].cluster == "k"]
    if first and kernel:
        assert max(p.rank for p in first) < min(p.rank for p in kernel)
    for r in lay.edges:
        a, b = lay.nodes[r.src], lay.nodes[r.dst]
        ends = {r.points[0], r.points[-1]}
        assert any(x in (a.x, a.x + a.width) for x, _ in ends)
        assert any(x in (b.x, b.x + b.width) for x, _ in ends)
    for cl, (x, y, w, h) in lay.clusters.items():
        for p in placed:
            if nodes[int(p.id[1:])].cluster == cl:
                assert x <= p.x and p.x + p.width <= x + w and y <= p.y <= y + h


def test_layer_figure_names_every_in_tree_driver() -> None:
    texts = [t.text or "" for t in parse(layers_svg().to_string()).iter(f"{SVG}text")]
    for drv in IN_TREE:
        assert drv in texts and f"{drv} model" in texts


# -- JSON both ways --------------------------------------------------------------------------
def test_decoded_round_trips_through_json() -> None:
    for kind, found in kinds().items():
        for _drv, struct in found:
            for golden in struct.golden:
                d = struct.decode(golden.words)
                assert from_dict(json.loads(json.dumps(to_dict(d)))) == d, kind


def test_walks_and_entries_round_trip(nested: dict[str, Any]) -> None:
    for r in nested.values():
        for stage in r.walk:
            assert walk_from_dict(json.loads(json.dumps(walk_to_dict(stage)))) == stage
        for e in r.walk_entries:
            assert entry_from_dict(json.loads(json.dumps(entry_to_dict(e)))) == e


def test_trace_nodes_round_trip_with_their_data() -> None:
    node = TraceNode("user", "ioctl", "pid 7 fd 3 IOMMU_IOAS_MAP", [
        TraceNode("iommufd", "iommufd_ioas_map", result="0")], result="0",
        data={"walk": []})
    doc = json.loads(json.dumps(node.to_dict()))
    assert TraceNode.from_dict(doc).to_dict() == node.to_dict()
    tagged = TraceNode.from_dict({**doc, "pid": 7})  # a recorder's own key is kept
    assert tagged.data == {"walk": [], "pid": 7}


# -- the TracedMachine and the pages -----------------------------------------------------------
DEV = "0000:00:01.0"


def _vmm(m: TracedMachine) -> None:
    fd = m.open("/dev/iommu")
    vfd = m.open(m.vfio_cdev(DEV))
    m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, v.vfio_device_bind_iommufd(
        argsz=ctypes.sizeof(v.vfio_device_bind_iommufd), iommufd=fd))
    ioas = u.iommu_ioas_alloc(size=ctypes.sizeof(u.iommu_ioas_alloc))
    m.ioctl(fd, u.IOMMU_IOAS_ALLOC, ioas)
    buf = m.mmap(0x1000)
    m.mem_write(buf, b"pictures")
    m.ioctl(fd, u.IOMMU_IOAS_MAP, u.iommu_ioas_map(
        size=ctypes.sizeof(u.iommu_ioas_map), ioas_id=ioas.out_ioas_id, user_va=buf,
        length=0x1000, iova=0x40000,
        flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE))
    m.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, v.vfio_device_attach_iommufd_pt(
        argsz=ctypes.sizeof(v.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id))
    assert m.dma_read(DEV, 0x40000, 8) == b"pictures"


def test_traced_machine_records_changes_and_walks() -> None:
    with TracedMachine.default(views=True) as m:
        with m.trace() as tracer:
            _vmm(m)
        roots = tracer.roots
        assert [n.layer for n in roots] == ["user"] * len(roots)  # describing is not traced
        attach = roots[-2]
        assert attach.detail.endswith("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
        labels = [e["entry"]["label"] for e in attach.data["entries"]]  # type: ignore[index]
        assert "STE[0x8]" in labels
        ste = next(e for e in attach.data["entries"]  # type: ignore[index]
                   if e["entry"]["label"] == "STE[0x8]")
        assert ste["previous"] is not None and ste["same_place"]
        dma = roots[-1]
        assert dma.result == '70 69 63 74 75 72 65 73 "pictures"'
        walk = [walk_from_dict(w) for w in dma.data["walk"]]  # type: ignore[index]
        assert walk and walk[-1].output is not None and walk[0].input == 0x40000
        assert dma.data["tlb_hit"] is False  # type: ignore[index]
        page = trace_page([n.to_dict() for n in roots])
        assert page == trace_page(roots)  # from JSON or from nodes, the same page
        # a diagram per changed entry, a walk per DMA
        assert page.count("<svg") == sum(len((n.data or {}).get("entries", ())) + (
            "walk" in (n.data or {})) for n in roots)


def test_untraced_traced_machine_is_a_machine() -> None:
    with TracedMachine.default(views=True) as m:
        _vmm(m)
        assert m.tracer.roots == []


def test_tree_html_folds_runs_but_keeps_every_node() -> None:
    nodes = [TraceNode("core", "iommu_map", f"iova {i:#x}") for i in range(10)]
    html = tree_html([TraceNode("user", "ioctl", "x", nodes)])
    assert html.count("<li>") == 12  # the root, ten calls, the fold's own line
    assert "… 7 more [core] iommu_map" in html
    for i in range(10):
        assert f"iova {i:#x}" in html


class _Balance(HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [val for k, val in attrs if k == "id" and val]
        if tag not in self.VOID and not tag.endswith("/"):
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [val for k, val in attrs if k == "id" and val]

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_tour_page_is_balanced_with_unique_ids(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.html"
    assert main(["tour", "--vendor", "smmu", "--step", "nested", "--html", str(out)]) == 0
    sc, records, _ = tour_records("arm_smmu_v3", ["nested"])
    assert capsys.readouterr().out == f"wrote {out}: 1 vendor(s), {len(records)} steps\n"
    page = out.read_text()
    p = _Balance()
    p.feed(page)
    p.close()
    assert p.stack == []
    assert len(p.ids) == len(set(p.ids))
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page and "https://" not in page
    shown = [r for r in records if r.shown]
    want = sum(len(r.structures) for r in shown) + sum(
        1 for r in shown if r.walk or r.tlb_hit is not None)
    assert page.count("<svg") == want
    assert tour_page([("arm_smmu_v3", sc, ["paging", "nested"], records)]).count("<svg") == want
    assert re.search(r"<h2 id=\"t-arm_smmu_v3\">", page)

"""``iommu-sim graph``: DOT and Mermaid that parse (balanced, every edge between defined
nodes) with the expected nodes, after a scenario built iommufd objects."""

from __future__ import annotations

import json
import re

import pytest

from iommu_sim.cli import main
from iommu_sim.graph import build_graph, to_dot, to_mermaid
from iommu_sim.machine import Machine
from iommu_sim.scenario import Runner, builtin_scenarios, load


@pytest.fixture(scope="module")
def smmu_graph() -> tuple[str, str]:
    r = Runner(load(builtin_scenarios()["tour_arm_smmu_v3"]))
    for _ in r.steps():
        pass
    g = build_graph(r.machine)
    out = to_dot(g), to_mermaid(g)
    r.close()
    return out


def dot_nodes_edges(dot: str) -> tuple[set[str], list[tuple[str, str]]]:
    nodes = set(re.findall(r"^\s+(\w+) \[label=", dot, re.M))
    edges = re.findall(r"^\s+(\w+) -> (\w+)", dot, re.M)
    return nodes, edges


def test_dot_parses(smmu_graph: tuple[str, str]) -> None:
    dot, _ = smmu_graph
    assert dot.startswith("digraph iommu_sim {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    nodes, edges = dot_nodes_edges(dot)
    assert {"iommu_smmu0", "dev_0000_00_01_0", "dev_0000_00_02_0", "group_0"} <= nodes
    for a, b in edges:
        assert a in nodes and b in nodes, (a, b)
    labels = set(re.findall(r'label="([A-Z_]+) \d+', dot))
    assert {"IOAS", "HWPT_PAGING", "HWPT_NESTED", "DEVICE", "VIOMMU", "VDEVICE",
            "FAULT"} <= labels
    assert re.search(r'-> \w+ \[label="pasid 5"\]', dot)  # the PASID attach
    assert "subgraph cluster_kernel" in dot and "subgraph cluster_iommufd_3" in dot


def test_mermaid_parses(smmu_graph: tuple[str, str]) -> None:
    _, mm = smmu_graph
    lines = mm.splitlines()
    assert lines[0] == "flowchart LR"
    assert sum(ln.strip().startswith("subgraph ") for ln in lines) == sum(
        ln.strip() == "end" for ln in lines) == 2
    defined = set(re.findall(r"^\s{4}(\w+)[\[\(\{/]", mm, re.M))
    edges = re.findall(r"^\s{2}(\w+) -->(?:\|[^|]*\|)? (\w+)$", mm, re.M)
    assert edges
    for a, b in edges:
        assert a in defined and b in defined, (a, b)
    assert "VIOMMU 5" in mm and '-->|"viommu"|' in mm


def test_default_machine_topology() -> None:
    m = Machine.default()
    try:
        g = build_graph(m)
    finally:
        m.shutdown()
    kinds = {n.kind for n in g.nodes.values()}
    assert kinds == {"iommu", "device", "group", "domain"}
    assert sum(n.kind == "device" for n in g.nodes.values()) == 6
    assert not any(n.cluster != "kernel" for n in g.nodes.values())


def test_cli_graph(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--format", "mermaid", "--scenario", "tour_amd_vi"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR") and "VIOMMU" in out
    assert main(["graph", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes"] and doc["edges"]
    assert main(["graph", "--scenario", "no_such"]) == 2  # bad input: a usage error


def test_entries_show_what_each_device_reads() -> None:
    r = Runner(load(builtin_scenarios()["tour_arm_smmu_v3"]))
    try:
        for _ in r.steps():
            pass
        plain = build_graph(r.machine)
        g = build_graph(r.machine, entries=True)
    finally:
        r.close()
    assert not any(n.kind == "entry" for n in plain.nodes.values())
    entries = {n.id: n.label for n in g.nodes.values() if n.kind == "entry"}
    # The nested device: its STE, then the guest's CD it points to.
    ste = entries["dev_0000_00_01_0_entry0"]
    assert ste.startswith("STE[0x8]") and "Config=NESTED" in ste
    assert entries["dev_0000_00_01_0_entry1"].startswith("CD[0]")
    edges = {(e.src, e.dst): e.label for e in g.edges}
    assert edges[("dev_0000_00_01_0", "dev_0000_00_01_0_entry0")] == "reads"
    assert edges[("dev_0000_00_01_0_entry0", "dev_0000_00_01_0_entry1")] == "points to"
    # Every vendor's devices show their chain, and domains their tables and tags.
    assert any(v.startswith("PASID entry 0") for v in entries.values())
    assert any(v.startswith("DTE[0x2000]") for v in entries.values())
    doms = [n.label for n in g.nodes.values() if n.kind == "domain"]
    assert any("stage 1: arm_lpae_s1 @" in d and "ASID" in d for d in doms)
    assert any("first stage: x86_64 @" in d and "DID on dmar0" in d for d in doms)
    nodes, edge_list = dot_nodes_edges(to_dot(g))
    assert all(a in nodes and b in nodes for a, b in edge_list)

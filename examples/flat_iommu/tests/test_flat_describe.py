"""FlatIOMMU is teachable: installed, iommu-sim's tools know it without a line of
iommu-sim changed. ``decode`` has its structures, ``info`` decodes its hw_info, ``tour
--vendor flat`` runs its tour, ``run`` its scenario, and its constants work in scenario
expressions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from iommu_core.describe import DescribeOps
from iommu_core.plugin import PluginHost
from iommu_sim.cli import main
from iommu_sim.decode import decode
from iommu_sim.expr import evaluate
from iommu_sim.info import hw_info
from iommu_sim.machine import Machine
from iommu_sim.tour import run_tour

from flat_iommu import spec
from flat_iommu.describe import FlatDte
from flat_iommu.plugin import plugin
from flat_iommu.uapi import IOMMU_HW_INFO_TYPE_FLAT

TOUR = Path(__file__).resolve().parents[1] / "flat_iommu" / "tour_flat_iommu.toml"
CONFIG = {"iommus": [{"name": "flat0", "driver": "flat_iommu"}],
          "devices": [{"name": "0000:00:03.0", "iommu": "flat0"}]}


def test_decode_lists_and_decodes_the_dte(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--list"]) == 0
    rows = {tuple(line.split()[:2]) for line in capsys.readouterr().out.splitlines()}
    assert {("flat-dte", "flat"), ("cmd", "flat"), ("event", "flat")} <= rows
    dte = spec.Dte(valid=True, mode=spec.DteMode.TRANSLATE, levels=4, did=7, root=0x12_3000)
    d = decode("flat-dte", dte.encode())
    assert (d.value("MODE"), d.value("DID"), d.value("ROOT")) == (2, 7, 0x12_3000)
    assert d.field("MODE").text == "TRANSLATE" and d.valid
    bad = decode("flat-dte", spec.Dte(valid=True, mode=spec.DteMode.TRANSLATE, levels=3,
                                      did=7, root=0x1000).encode())
    assert bad.refused and "F_DTE_BAD" in bad.problems[0]
    cmd = spec.build_inv_iotlb(5, 0x40_0000, 3)
    d = decode("cmd", [cmd.q0, cmd.q1], vendor="flat")
    assert d.summary == "INV_IOTLB" and (d.value("DID"), d.value("NPAGES"),
                                         d.value("ADDR")) == (5, 3, 0x40_0000)


def test_the_dte_rules_are_the_models() -> None:
    s = FlatDte()
    for levels in range(8):
        for had in (False, True):
            words = spec.Dte(valid=True, mode=spec.DteMode.TRANSLATE, had=had, levels=levels,
                             did=1, root=0x1000).encode()
            verdict = s.model_verdict(s.pad(words), None)
            assert verdict is not None and s.rules_refuse(words) != verdict.accepted


def test_info_decodes_the_hw_info() -> None:
    m = Machine.from_config(CONFIG)
    try:
        (info,) = hw_info(m)
    finally:
        m.shutdown()
    assert info.data_type == "IOMMU_HW_INFO_TYPE_FLAT" and info.data_len == 16
    assert dict(info.registers["CAP"]) == {"RID_BITS": 16, "DIRTY": 1}
    assert dict(info.registers["ID"]) == {"ID": spec.FLAT_ID}
    assert info.summary["dirty tracking"] == "DTE.HAD"
    assert info.summary["granules"] == "4K/2M/1G"


def test_tour_shows_the_dte_and_the_walk() -> None:
    out = io.StringIO()
    assert run_tour(["flat"], None, as_json=True, out=out) == 0
    (rec,) = json.loads(out.getvalue())["tour"]
    assert rec["vendor"] == "flat_iommu" and list(rec["chapters"]) == ["paging", "dirty"]
    attach = next(s for s in rec["steps"] if "ATTACH" in s["call"])
    (dte,) = attach["structures"]
    assert dte["kind"] == "FlatIOMMU DTE" and dte["summary"].startswith("TRANSLATE")
    changed = {f["name"] for f in dte["fields"] if f["changed"]}
    assert {"MODE", "LEVELS", "DID", "ROOT"} <= changed
    read = next(s for s in rec["steps"] if s["action"] == "dma_read" and not s["error"])
    assert read["walk"][0]["output"] is not None and len(read["walk"][0]["levels"]) == 4
    dirty = next(s for s in rec["steps"] if "SET_DIRTY_TRACKING" in s["call"])
    assert any(f["name"] == "HAD" and f["changed"] for f in dirty["structures"][0]["fields"])


def test_tour_scenario_runs_and_names_its_constants(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    assert main(["run", "tour_flat_iommu"]) == 0
    assert "PASS tour_flat_iommu" in capsys.readouterr().out
    assert evaluate("IOMMU_HW_INFO_TYPE_FLAT", {}) == IOMMU_HW_INFO_TYPE_FLAT
    assert evaluate("DTE_V | CTRL_TE", {}) == spec.DTE_V | spec.CTRL_TE


def test_hooks_answer_without_iommu_sim() -> None:
    ops = DescribeOps(PluginHost().register_driver("flat_iommu", plugin))
    assert ops.vendor().name == "flat" and "flat_iommu" in ops.names()
    assert ops.hw_info(IOMMU_HW_INFO_TYPE_FLAT) is not None
    tour = ops.tour()
    assert tour is not None and Path(str(tour.path)) == TOUR

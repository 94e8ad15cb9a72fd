"""iommu_sim.perf runs for any driver and reports its ratios (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from iommu_sim import perf


@pytest.mark.parametrize("driver", ["arm_smmu_v3", "intel_vtd", "amd_vi"])
def test_ratios_are_measured(driver: str) -> None:
    r = perf.inval_cached_ratio(driver, pages=32, leaf=perf.SZ_4K, n=2, reps=1)
    assert set(r) == {"inval_cached_ratio", "map_unmap_4k_empty_us", "map_unmap_4k_cached_us"}
    assert all(v > 0 for v in r.values())
    m = perf.map_unmap_4k_vs_pgtable(driver, n=2, reps=1)
    assert m["map_unmap_4k_vs_pgtable"] > 0


def test_warm_caches_one_translation_per_page() -> None:
    rig = perf.Rig("arm_smmu_v3", {"tlb_entries": 64}, {"ats": False})
    rig.warm(48, leaf=perf.SZ_4K)
    hw = rig.m.platform.iommus["iommu0"]
    assert hw.tlb.count == 48 and len(hw.fast) == 48  # type: ignore[attr-defined]
    rig.m.shutdown()


def test_cli_prints_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                         ) -> None:
    calls: list[str] = []

    def fake(*args: object, **kw: object) -> dict[str, float]:
        calls.append(str(args[0]))
        return {"inval_cached_ratio": 1.0, "map_unmap_4k_vs_pgtable": 2.0}

    monkeypatch.setattr(perf, "inval_cached_ratio", fake)
    monkeypatch.setattr(perf, "map_unmap_4k_vs_pgtable", fake)
    assert perf.main(["--driver", "amd_vi", "--option", "x=1", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["options"] == {"x": 1} and out["inval_cached_ratio"] == 1.0
    assert calls == ["amd_vi"] * 4

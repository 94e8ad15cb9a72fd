"""iommu_sim.perf runs for any driver and reports its ratios (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from iommu_sim import perf


@pytest.mark.parametrize("driver", ["arm_smmu_v3", "intel_vtd", "amd_vi"])
def test_ratios_are_measured(driver: str) -> None:
    r = perf.inval_cached_ratio(driver, pages=32, n=2)
    assert set(r) == {"inval_cached_ratio", "map_unmap_4k_empty_us", "map_unmap_4k_cached_us"}
    assert all(v > 0 for v in r.values())
    m = perf.map_unmap_4k_vs_pgtable(driver, n=2, reps=1)
    assert m["map_unmap_4k_vs_pgtable"] > 0


def test_the_floor_uses_the_domains_format() -> None:
    got = {d: perf.map_unmap_4k_vs_pgtable(d, n=1, reps=1)["pgtable_format"]
           for d in ("arm_smmu_v3", "intel_vtd", "amd_vi", "mock")}
    assert got == {"arm_smmu_v3": "arm_lpae_s1", "intel_vtd": "x86_64", "amd_vi": "amd_v1",
                   "mock": "mock"}


def test_occupancy_steps_cache_one_translation_per_page() -> None:
    series = perf.inval_by_occupancy("arm_smmu_v3", {"tlb_entries": 64}, {"ats": False},
                                     levels=(16, 48), n=1, reps=1)
    assert [p for p, _c, _e in series] == [16, 48]
    assert all(c > 0 and e > 0 for _p, c, e in series)


def test_dma_and_ioctl_ratios() -> None:
    d = perf.dma_hit("mock", n=2, reps=1)
    assert {"dma_hit_vs_floor", "dma_hit_4k_vs_floor", "dma_cross_page_vs_floor",
            "dma_write_hit_vs_floor"} <= set(d)
    i = perf.ioctl_noop(n=2, reps=1)
    assert i["ioctl_noop_vs_call"] > 0 and i["ioctl_noop_va_vs_call"] > 0
    assert perf.map_cost("amd_vi", 1, reps=1) > 0


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
    assert calls == ["amd_vi"] * 3

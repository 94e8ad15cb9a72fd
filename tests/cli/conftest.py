"""Fixtures for the CLI tests: the tour's JSON of each vendor, run once per session."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from iommu_sim.tour import run_tour


def tour_json(vendor: str, *steps: str) -> dict[str, Any]:
    out = io.StringIO()
    assert run_tour([vendor], list(steps) or None, as_json=True, out=out) == 0
    doc = json.loads(out.getvalue())
    assert len(doc["tour"]) == 1
    rec: dict[str, Any] = doc["tour"][0]
    return rec


@pytest.fixture(scope="session")
def tours() -> dict[str, dict[str, Any]]:
    return {v: tour_json(v) for v in ("smmu", "vtd", "amd")}

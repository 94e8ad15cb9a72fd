"""The kit's suites on the in-tree drivers, with the conformance glue of glue.py injected
through the kit's ``iommu_extra_plugins`` fixture."""

from __future__ import annotations

import pytest

from tests.plugin_kit.glue import GLUE


@pytest.fixture
def iommu_extra_plugins(iommu_driver: str) -> list[object]:
    glue = GLUE.get(iommu_driver)
    return [glue] if glue is not None else []

"""A pytest plugin for your own tests of code that uses iommu-sim: a ready ``machine``.

Registered under ``pytest11``, so an installed iommu-sim provides it to every test run::

    def test_dma(machine):                    # the default Machine, shut down afterwards
        fd = machine.open("/dev/iommu")
        ...

    @pytest.mark.machine({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                          "devices": [{"name": "0000:00:01.0", "iommu": "smmu0"}]})
    def test_one_smmu(machine):               # a Machine of this config
        ...

A module or conftest may instead override the ``machine_config`` fixture (None: the
default Machine). After the test the Machine shuts down: every task exits, every file
closes, the kernel frees what it allocated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from iommu_sim.machine import Machine

__all__ = ["machine", "machine_config"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "machine(config): the Machine config the test's machine fixture is built "
        "from (iommus, devices; see Machine.from_config)")


@pytest.fixture
def machine_config() -> Mapping[str, Any] | None:
    """The config of the ``machine`` fixture (override it; None: ``Machine.default()``)."""
    return None


@pytest.fixture
def machine(request: pytest.FixtureRequest, machine_config: Mapping[str, Any] | None
            ) -> Iterator[Machine]:
    """A fresh Machine for the test (``@pytest.mark.machine(config)`` or the
    ``machine_config`` fixture choose its config)."""
    marker = request.node.get_closest_marker("machine")
    config = marker.args[0] if marker is not None and marker.args else machine_config
    m = Machine.default() if config is None else Machine.from_config(config)
    try:
        yield m
    finally:
        m.shutdown()

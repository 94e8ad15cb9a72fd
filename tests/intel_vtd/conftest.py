"""Fixtures for the VT-d tests: a one-unit simulated kernel (the conformance kit's
DriverEnv) with the leak check after every test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.intel_vtd.plugin import plugin
from iommu_core.testing.env import DriverEnv

MakeEnv = Callable[..., DriverEnv]


@pytest.fixture
def make_env() -> Iterator[MakeEnv]:
    envs: list[DriverEnv] = []

    def make(**options: Any) -> DriverEnv:
        env = DriverEnv("intel_vtd", plugin=plugin, options=options)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.teardown()
        assert env.kernel_pages == 0, "kernel pages leaked"


@pytest.fixture
def env(make_env: MakeEnv) -> DriverEnv:
    return make_env()

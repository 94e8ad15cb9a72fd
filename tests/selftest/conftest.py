"""Shared fixtures of the selftest port: a fresh Machine (the kernel runs each test in a
fresh fork) with the global 64 KiB ``buffer``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iommu_sim import Machine
from tests.selftest.utils import alloc_buffer, new_machine


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = new_machine()
    yield m
    m.shutdown()


@pytest.fixture
def buffer(machine: Machine) -> int:
    return alloc_buffer(machine)



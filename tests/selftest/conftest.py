"""Shared fixtures of the selftest port: a fresh Machine (the kernel runs each test in a
fresh fork) with the global 64 KiB ``buffer``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iommu_sim import Machine
from tests.selftest.utils import BUFFER_SIZE, alloc_buffer, memfd_mmap, new_machine


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = new_machine()
    yield m
    m.shutdown()


@pytest.fixture
def buffer(machine: Machine) -> int:
    return alloc_buffer(machine)




@pytest.fixture
def mfd_buffer(machine: Machine) -> tuple[int, int]:
    """The selftest's global ``mfd`` and ``mfd_buffer``: a 64 KiB memfd, mapped shared."""
    return memfd_mmap(machine, BUFFER_SIZE)

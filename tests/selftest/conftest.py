"""Shared fixtures of the selftest port: a fresh Machine (the kernel runs each test in a
fresh fork) with the global 64 KiB ``buffer``."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommu_sim import Machine
from tests.selftest.utils import Iommufd, alloc_buffer, new_machine, vf


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = new_machine()
    yield m
    m.shutdown()


@pytest.fixture
def buffer(machine: Machine) -> int:
    return alloc_buffer(machine)


def vfio_compat_available(t: Iommufd) -> bool:
    """The legacy VFIO container ioctls on /dev/iommu belong to another issue; the
    tests that use them skip (and say so) until they answer."""
    try:
        t.m.ioctl(t.fd, vf.VFIO_GET_API_VERSION, 0)
    except OSError as e:
        if e.errno == errno.ENOTTY:
            return False
        raise
    return True


def skip_without_vfio_compat(t: Iommufd) -> None:
    if not vfio_compat_available(t):
        pytest.skip("VFIO container compatibility of /dev/iommu is not implemented yet "
                    "(VFIO_GET_API_VERSION answers ENOTTY)")

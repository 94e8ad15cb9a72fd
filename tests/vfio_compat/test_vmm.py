"""A type1 VMM on /dev/vfio/vfio: real VFIO devices behind every vendor's IOMMU doing DMA
through the container's mappings, memlock accounting of the VFIO node, and the
documentation page's example."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iommu_sim import DmaFault, Machine
from tests.fault_sweep import fail_nth_sweep
from tests.selftest.utils import (
    PAGE_SIZE,
    expect_errno,
    uapi,
    vf,
)
from tests.vfio_compat.helpers import Container, bind_attach

PS = PAGE_SIZE
IOVA = 1 << 24  # inside every aperture, the mock's included
VENDORS = [("mock", "0000:00:03.0", 0), ("arm_smmu_v3", "0000:00:01.0", 1),
           ("intel_vtd", "0000:10:00.0", 1), ("amd_vi", "0000:20:00.0", 1)]


@pytest.mark.parametrize(("driver", "dev", "cc"), VENDORS, ids=[v[0] for v in VENDORS])
@pytest.mark.parametrize("version", [vf.VFIO_TYPE1v2_IOMMU, vf.VFIO_TYPE1_IOMMU],
                         ids=["v2", "v1"])
def test_type1_vmm_dma(driver: str, dev: str, cc: int, version: int) -> None:
    m = Machine.from_config({"iommus": [{"name": "io0", "driver": driver}],
                             "devices": [{"name": dev, "iommu": "io0"}]})
    c = Container(m, "/dev/vfio/vfio")
    ioas = c.ioas_alloc()
    vfd = bind_attach(m, c.fd, dev, ioas)
    c.compat_set(ioas)
    assert c.check_extension(vf.VFIO_DMA_CC_IOMMU) == cc
    c.set_iommu(version)
    ram = m.mmap(16 * PS)
    for i in range(16):
        m.mem_write(ram + i * PS, bytes([i]) * 8)
    c.map_dma(ram, IOVA, 16 * PS)
    assert m.dma_read(dev, IOVA + 5 * PS, 8) == bytes([5]) * 8
    m.dma_write(dev, IOVA + 6 * PS, b"from dev")
    assert m.mem_read(ram + 6 * PS, 8) == b"from dev"
    if version == vf.VFIO_TYPE1_IOMMU:
        assert c.unmap_dma(IOVA + 5 * PS, PS) == PS
        with pytest.raises(DmaFault):
            m.dma_read(dev, IOVA + 5 * PS, 8)
        assert m.dma_read(dev, IOVA + 4 * PS, 8) == bytes([4]) * 8
        assert m.dma_read(dev, IOVA + 6 * PS, 8) == b"from dev"
    else:
        with expect_errno(errno.ENOENT):
            c.unmap_dma(IOVA + 5 * PS, PS)
        assert m.dma_read(dev, IOVA + 5 * PS, 8) == bytes([5]) * 8
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == (
        15 * PS if version == vf.VFIO_TYPE1_IOMMU else 16 * PS)
    with pytest.raises(DmaFault):
        m.dma_read(dev, IOVA + 4 * PS, 8)
    m.close(vfd)
    m.close(c.fd)
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    m.shutdown()


def test_vfio_node_accounting() -> None:
    """/dev/vfio/vfio charges the process's locked_vm (RLIMIT_MODE 1), /dev/iommu the
    user (0); the two limits are separate counters, each at RLIMIT_MEMLOCK."""
    m = Machine.from_config({"iommus": [], "devices": []})
    m.task.cap_ipc_lock = False  # an unprivileged VMM: pins count against the limit
    m.task.rlimit_memlock = 16 * PS
    vfio, dev_iommu = Container(m, "/dev/vfio/vfio"), Container(m, "/dev/iommu")
    assert vfio.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == 1
    assert dev_iommu.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == 0
    bufs = [m.mmap(17 * PS) for _ in range(3)]
    ioas = vfio.ioas_alloc()
    vfio.mock_domain(ioas)  # with a domain a map pins (and charges) at once
    vfio.compat_set(ioas)
    vfio.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    vfio.map_dma(bufs[0], IOVA, 16 * PS)
    with expect_errno(errno.ENOMEM):
        vfio.map_dma(bufs[0] + 16 * PS, IOVA + 16 * PS, PS)
    ioas2 = dev_iommu.ioas_alloc()
    dev_iommu.mock_domain(ioas2)
    dev_iommu.map_fixed(ioas2, bufs[1], 16 * PS, IOVA)  # the user counter is apart
    with expect_errno(errno.ENOMEM):
        dev_iommu.map_fixed(ioas2, bufs[1] + 16 * PS, PS, IOVA + 16 * PS)
    # A third context selecting MM accounting shares the process's counter.
    mm = Container(m, "/dev/iommu")
    mm.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_SET, 0, 1)
    ioas3 = mm.ioas_alloc()
    mm.mock_domain(ioas3)
    with expect_errno(errno.ENOMEM):
        mm.map_fixed(ioas3, bufs[2], PS, IOVA)
    assert vfio.unmap_dma(IOVA, 16 * PS) == 16 * PS
    mm.map_fixed(ioas3, bufs[2], 16 * PS, IOVA)
    # The VFIO node is an empty context: it may switch to per-user accounting.
    fresh = Container(m, "/dev/vfio/vfio")
    fresh.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_SET, 0, 0)
    assert fresh.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == 0
    for t in (vfio, dev_iommu, mm, fresh):
        m.close(t.fd)
    m.shutdown()


def test_vfio_node_is_an_iommufd() -> None:
    """Each open is a new context with the whole iommufd ioctl set."""
    m = Machine.from_config({"iommus": [], "devices": []})
    a, b = Container(m, "/dev/vfio/vfio"), Container(m, "/dev/vfio/vfio")
    assert a.ioas_alloc() == 1 and b.ioas_alloc() == 1
    a.compat_set(1)
    with expect_errno(errno.ENODEV):
        b.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET)
    with expect_errno(errno.ENOTTY):  # past the table and not a container ioctl
        a.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, 0xFF), bytearray(8))
    m.close(a.fd)
    m.close(b.fd)
    m.shutdown()


def doc_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "vfio_compat.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    return ["\n".join(line[3:] for line in b.splitlines()) for b in blocks]


def test_doc_example_runs() -> None:
    """docs/vfio_compat.rst: the same DMA through IOMMU_IOAS_MAP and VFIO_IOMMU_MAP_DMA."""
    blocks = doc_blocks()
    assert len(blocks) == 3
    ns: dict[str, Any] = {}
    for code in blocks:
        exec(compile(code, "docs/vfio_compat.rst", "exec"), ns)
    m: Machine = ns["m"]
    m.close(ns["vfd"])
    m.close(ns["container"])
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    m.shutdown()


@pytest.mark.parametrize(("driver", "dev", "cc"), VENDORS, ids=[v[0] for v in VENDORS])
def test_fail_nth_type1_flow(driver: str, dev: str, cc: int) -> None:
    """The model of iommufd_fail_nth.c over a type1 VMM on /dev/vfio/vfio with a real
    VFIO device behind each vendor's IOMMU (``Machine.fail_nth``)."""

    def make() -> Machine:
        return Machine.from_config({"iommus": [{"name": "io0", "driver": driver}],
                                    "devices": [{"name": dev, "iommu": "io0"}]})

    def flow(m: Machine, arm: Callable[[], None]) -> None:
        buf = m.mmap(16 * PS)
        arm()
        c = Container(m, "/dev/vfio/vfio")
        ioas = c.ioas_alloc()
        bind_attach(m, c.fd, dev, ioas)
        c.compat_set(ioas)
        c.set_iommu(vf.VFIO_TYPE1_IOMMU)
        c.map_dma(buf, IOVA, 16 * PS)
        assert c.unmap_dma(IOVA + 3 * PS, 2 * PS) == 2 * PS
        c.map_dma(buf + 3 * PS, IOVA + 3 * PS, PS)
        m.dma_write(dev, IOVA + 3 * PS, b"dma")
        assert m.mem_read(buf + 3 * PS, 3) == b"dma"

    assert fail_nth_sweep(make, flow) > 20

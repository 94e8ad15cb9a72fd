"""FIXTURE(vfio_compat_mock_domain) of tools/testing/selftests/iommu/iommufd.c: the VFIO
type1 container ioctls on /dev/iommu (iommufd/vfio_compat.py), over a mock domain, for
type1 v2 and v1."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    BUFFER_SIZE,
    HUGEPAGE_SIZE,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    PAGE_SIZE,
    Iommufd,
    expect_errno,
    sz,
    teardown_iommufd,
    uapi,
    vf,
)


@dataclass
class CompatFixture:
    t: Iommufd
    m: Machine
    buffer: int
    ioas_id: int
    version: int


class Test_vfio_compat_mock_domain:
    @pytest.fixture(params=["Ver1v2", "Ver1v0"])
    def f(self, machine: Machine, buffer: int, request: pytest.FixtureRequest
          ) -> Iterator[CompatFixture]:
        version = vf.VFIO_TYPE1v2_IOMMU if request.param == "Ver1v2" else vf.VFIO_TYPE1_IOMMU
        t = Iommufd(machine)
        f = CompatFixture(t, machine, buffer, t.ioas_alloc(), version)
        t.mock_domain(f.ioas_id)
        cmd = uapi.iommu_vfio_ioas(size=sz(uapi.iommu_vfio_ioas), ioas_id=f.ioas_id,
                                   op=uapi.IOMMU_VFIO_IOAS_SET)
        t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        machine.ioctl(t.fd, vf.VFIO_SET_IOMMU, version)
        yield f
        teardown_iommufd(machine, t.fd, buffer)

    def test_simple_close(self, f: CompatFixture) -> None:
        pass

    def test_option_huge_pages(self, f: CompatFixture) -> None:
        val = f.t.huge_pages(f.ioas_id)
        assert val == (0 if f.version == vf.VFIO_TYPE1_IOMMU else 1)

    def test_get_info(self, f: CompatFixture) -> None:
        t, m = f.t, f.m
        info_t = vf.vfio_iommu_type1_info

        def get_info(argsz: int) -> bytes:
            m.mem_write(f.buffer, b"\xaa" * BUFFER_SIZE)
            m.mem_write(f.buffer, argsz.to_bytes(4, "little"))
            t.m.ioctl(t.fd, vf.VFIO_IOMMU_GET_INFO, f.buffer)
            raw = m.mem_read(f.buffer, BUFFER_SIZE)
            assert raw[argsz:] == b"\xaa" * (BUFFER_SIZE - argsz), "wrote past argsz"
            return raw

        flags = vf.VFIO_IOMMU_INFO_PGSIZES | vf.VFIO_IOMMU_INFO_CAPS
        # Pre-cap ABI
        raw = get_info(16)
        info = uapi.from_bytes(info_t, raw[:16] + bytes(sz(info_t) - 16))
        assert info.iova_pgsizes != 0
        assert info.flags == flags
        # Read the cap chain size
        raw = get_info(sz(info_t))
        info = uapi.from_bytes(info_t, raw[: sz(info_t)])
        assert info.flags == flags and info.cap_offset == 0
        needed = info.argsz
        assert needed > sz(info_t)
        for argsz in range(sz(info_t), needed):
            raw = get_info(argsz)
            info = uapi.from_bytes(info_t, raw[: sz(info_t)])
            assert info.flags == flags
            off = info.cap_offset
            last = 0
            while off:
                assert last < off < argsz
                hdr = uapi.from_bytes(vf.vfio_info_cap_header, raw[off : off + 8])
                if hdr.id == vf.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                    cap = uapi.from_bytes(vf.vfio_iommu_type1_info_cap_iova_range,
                                          raw[off:argsz])
                    assert hdr.version == 1 and cap.nr_iovas == 1
                    rng = uapi.from_bytes(vf.vfio_iova_range, raw[off + 16 : off + 32])
                    assert (rng.start, rng.end) == (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
                elif hdr.id == vf.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                    assert hdr.version == 1
                    assert sz(vf.vfio_iommu_type1_info_dma_avail) == 12
                else:
                    pytest.fail(f"unexpected capability {hdr.id}")
                last, off = off, hdr.next

    def test_map(self, f: CompatFixture) -> None:
        t = f.t
        rnd = random.Random(2)
        dma_map = vf.vfio_iommu_type1_dma_map(
            argsz=sz(vf.vfio_iommu_type1_dma_map),
            flags=vf.VFIO_DMA_MAP_FLAG_READ | vf.VFIO_DMA_MAP_FLAG_WRITE,
            vaddr=f.buffer, size=BUFFER_SIZE, iova=MOCK_APERTURE_START)
        unmap = vf.vfio_iommu_type1_dma_unmap(argsz=sz(vf.vfio_iommu_type1_dma_unmap),
                                              size=BUFFER_SIZE, iova=MOCK_APERTURE_START)
        t.ioctl(vf.VFIO_IOMMU_MAP_DMA, dma_map)
        t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
        assert unmap.size == BUFFER_SIZE
        # Unmap of empty is success
        t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
        # UNMAP_FLAG_ALL requires 0 iova/size
        t.ioctl(vf.VFIO_IOMMU_MAP_DMA, dma_map)
        unmap.flags = vf.VFIO_DMA_UNMAP_FLAG_ALL
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
        unmap.iova = unmap.size = 0
        t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
        assert unmap.size == BUFFER_SIZE
        # Small pages
        for i in range(BUFFER_SIZE // PAGE_SIZE):
            dma_map.iova = MOCK_APERTURE_START + i * PAGE_SIZE
            dma_map.vaddr = f.buffer + i * PAGE_SIZE
            dma_map.size = PAGE_SIZE
            t.ioctl(vf.VFIO_IOMMU_MAP_DMA, dma_map)
        order = list(range(BUFFER_SIZE // PAGE_SIZE))
        rnd.shuffle(order)
        unmap.flags = 0
        unmap.size = PAGE_SIZE
        for i in order:
            unmap.iova = MOCK_APERTURE_START + i * PAGE_SIZE
            t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)

    def test_huge_map(self, f: CompatFixture) -> None:
        """hugetlbfs in the kernel; a THP-backed anonymous mapping here."""
        t, m = f.t, f.m
        size = 2 * HUGEPAGE_SIZE
        buf = m.mmap(size)
        m.mem_write(buf, bytes(size))
        dma_map = vf.vfio_iommu_type1_dma_map(
            argsz=sz(vf.vfio_iommu_type1_dma_map),
            flags=vf.VFIO_DMA_MAP_FLAG_READ | vf.VFIO_DMA_MAP_FLAG_WRITE,
            vaddr=buf, size=size, iova=MOCK_APERTURE_START)
        t.ioctl(vf.VFIO_IOMMU_MAP_DMA, dma_map)
        unmap = vf.vfio_iommu_type1_dma_unmap(argsz=sz(vf.vfio_iommu_type1_dma_unmap))
        chunk = size // 16
        order = list(range(16))
        random.Random(3).shuffle(order)
        for i in order:
            unmap.iova = MOCK_APERTURE_START + i * chunk
            unmap.size = chunk
            if f.version == vf.VFIO_TYPE1_IOMMU:
                t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
            else:
                with expect_errno(errno.ENOENT):
                    t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, unmap)
        m.munmap(buf, size)

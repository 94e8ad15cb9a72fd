"""Type1 (v1) unmap inside a mapping: VFIO_SET_IOMMU(VFIO_TYPE1_IOMMU) turns huge pages
off and every unmap first cuts the areas at both ends of its range (iopt_cut_iova); the
parts keep their pins and page-table entries. Checked through the mock's CHECK_MAP /
CHECK_REFS and the iommufd API on the same IOAS (which sees the cuts)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    BUFFER_SIZE,
    MOCK_APERTURE_START,
    PAGE_SIZE,
    U64_MAX,
    alloc_buffer,
    expect_errno,
    new_machine,
    st,
    teardown_iommufd,
    vf,
)
from tests.vfio_compat.helpers import Container

AS = MOCK_APERTURE_START
PS = PAGE_SIZE


@dataclass
class V1:
    m: Machine
    c: Container
    buffer: int
    ioas: int
    hwpt: int


@pytest.fixture(params=["/dev/iommu", "/dev/vfio/vfio"])
def v1(request: pytest.FixtureRequest) -> Iterator[V1]:
    """Type1 v1 on a mock domain, the 64 KiB buffer mapped at AS."""
    m = new_machine()
    buffer = alloc_buffer(m)
    c = Container(m, request.param)
    ioas = c.ioas_alloc()
    _, hwpt, _ = c.mock_domain(ioas)
    c.compat_set(ioas)
    c.set_iommu(vf.VFIO_TYPE1_IOMMU)
    c.map_dma(buffer, AS, BUFFER_SIZE)
    yield V1(m, c, buffer, ioas, hwpt)
    teardown_iommufd(m, c.fd, buffer)  # every part's pins are released on close
    m.shutdown()


def assert_mapped(t: V1, pages: set[int]) -> None:
    """Exactly ``pages`` (indexes of the buffer) are mapped and pinned once."""
    for i in range(BUFFER_SIZE // PS):
        if i in pages:
            t.c.check_map(t.hwpt, AS + i * PS, PS, t.buffer + i * PS)
            t.c.check_refs(t.buffer + i * PS, PS, 1)
        else:
            with expect_errno(errno.EINVAL):
                t.c.check_map(t.hwpt, AS + i * PS, PS, t.buffer + i * PS)
            t.c.check_refs(t.buffer + i * PS, PS, 0)


def test_unmap_inside(v1: V1) -> None:
    c = v1.c
    assert c.unmap_dma(AS + 5 * PS, PS) == PS
    assert_mapped(v1, set(range(16)) - {5})
    # Across the cut and into the right part.
    assert c.unmap_dma(AS + 8 * PS, 4 * PS) == 4 * PS
    assert_mapped(v1, set(range(16)) - {5, 8, 9, 10, 11})
    # The cuts are real areas now: IOMMU_IOAS_UNMAP may remove a part exactly...
    assert c.unmap(v1.ioas, AS, 5 * PS) == 5 * PS
    # ...but still not inside one (it never cuts).
    with expect_errno(errno.ENOENT):
        c.unmap(v1.ioas, AS + 12 * PS, PS)
    # A range over holes and parts: the parts inside go (pages 6, 7), the one sticking
    # out is cut (12, 13 go; 14, 15 stay).
    assert c.unmap_dma(AS, 14 * PS) == 4 * PS
    assert_mapped(v1, {14, 15})
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == 2 * PS


def test_unmap_across_areas(v1: V1) -> None:
    """A range over the end of one mapping and the start of the next cuts both."""
    c = v1.c
    assert c.unmap_dma(AS, BUFFER_SIZE) == BUFFER_SIZE
    c.map_dma(v1.buffer, AS, 8 * PS)
    c.map_dma(v1.buffer + 8 * PS, AS + 8 * PS, 8 * PS)
    assert c.unmap_dma(AS + 6 * PS, 4 * PS) == 4 * PS
    assert_mapped(v1, set(range(16)) - {6, 7, 8, 9})


def test_refused_cut_changes_nothing(v1: V1) -> None:
    c = v1.c
    cmd = vf.vfio_iommu_type1_dma_unmap()
    # The end cut (after AS + 0x1fff) is fine, the start cut (before AS + 0x800) is not
    # aligned to the IOAS (PAGE_SIZE without huge pages): EINVAL, and the end cut is
    # undone. A refused cut is reported before the unmap: size is not written back.
    with expect_errno(errno.EINVAL):
        c.unmap_dma(AS + 0x800, 0x1800, cmd=cmd)
    assert cmd.size == 0x1800
    with expect_errno(errno.ENOENT):  # still one area: no cut at AS + 0x2000 survived
        c.unmap(v1.ioas, AS, 2 * PS)
    assert_mapped(v1, set(range(16)))


def test_failed_unmap_after_cuts_changes_nothing(v1: V1) -> None:
    """Both cuts succeed (the end wraps to AS + 4 pages - 1), then the unmap itself is
    EOVERFLOW: the cuts are joined again and size comes back 0."""
    c = v1.c
    cmd = vf.vfio_iommu_type1_dma_unmap()
    with expect_errno(errno.EOVERFLOW):
        c.unmap_dma(AS + 8 * PS, (1 << 64) - 4 * PS, cmd=cmd)
    assert cmd.size == 0
    with expect_errno(errno.EINVAL):  # size 0: the cut before AS + 8 pages is undone too
        c.unmap_dma(AS + 8 * PS, 0, cmd=cmd)
    for iova, length in ((AS, 4 * PS), (AS, 8 * PS), (AS + 8 * PS, 8 * PS)):
        with expect_errno(errno.ENOENT):
            c.unmap(v1.ioas, iova, length)
    assert_mapped(v1, set(range(16)))


def test_access_pins_block_cuts(v1: V1) -> None:
    """Access pins cannot be split: EINVAL while an access holds pages of the area."""
    c = v1.c
    afd = c.access_create(v1.ioas, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    item = c.access_pin(afd, AS, PS, v1.buffer)
    with expect_errno(errno.EINVAL):
        c.unmap_dma(AS + 5 * PS, PS)
    c.access_unpin(afd, item)
    assert c.unmap_dma(AS + 5 * PS, PS) == PS
    assert_mapped(v1, set(range(16)) - {5})
    v1.m.close(afd)


def test_no_cut_before_iova_0() -> None:
    """An IOAS with no domain has no reserved range: a v1 unmap at IOVA 0 cuts only at its
    end; one that ends at U64_MAX has no end cut to make (the last byte is an area's last).
    """
    m = new_machine()
    buffer = alloc_buffer(m)
    c = Container(m, "/dev/vfio/vfio")
    c.compat_set(c.ioas_alloc())
    c.set_iommu(vf.VFIO_TYPE1_IOMMU)
    c.map_dma(buffer, 0, BUFFER_SIZE)
    assert c.unmap_dma(0, PS) == PS
    c.map_dma(buffer, U64_MAX + 1 - BUFFER_SIZE, BUFFER_SIZE)
    with expect_errno(errno.EINVAL):  # ends a byte short: a cut at U64_MAX - 1 is unaligned
        c.unmap_dma(PS, U64_MAX - PS)
    assert c.unmap_dma(PS, U64_MAX + 1 - PS) == 2 * BUFFER_SIZE - PS
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == 0
    teardown_iommufd(m, c.fd, buffer)
    m.shutdown()


def test_cuts_follow_huge_pages(v1: V1) -> None:
    """Cutting is keyed on the IOAS having huge pages off, not on the type set: v2 after
    v1 leaves them off (and v1 unmaps); HUGE_PAGES=1 (allowed with mappings) makes
    unmap strict again."""
    c = v1.c
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    assert c.huge_pages(v1.ioas) == 0
    assert c.unmap_dma(AS + 5 * PS, PS) == PS
    c.huge_pages(v1.ioas, 1)
    with expect_errno(errno.ENOENT):
        c.unmap_dma(AS + 8 * PS, PS)
    assert_mapped(v1, set(range(16)) - {5})

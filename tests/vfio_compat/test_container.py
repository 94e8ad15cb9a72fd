"""The VFIO type1 container ioctls of iommufd (vfio_compat.c), request by request, with
Linux's errno for every refused case; on /dev/iommu and on /dev/vfio/vfio."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    BUFFER_SIZE,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    PAGE_SIZE,
    U64_MAX,
    alloc_buffer,
    expect_errno,
    new_machine,
    teardown_iommufd,
    uapi,
    vf,
)
from tests.vfio_compat.helpers import INFO_SZ, MAP_SZ, RW, UNMAP_SZ, Container

AS = MOCK_APERTURE_START
PATHS = ["/dev/iommu", "/dev/vfio/vfio"]


@dataclass
class Ctx:
    m: Machine
    c: Container
    buffer: int
    ioas: int
    hwpt: int


@pytest.fixture(params=PATHS)
def ct(request: pytest.FixtureRequest) -> Iterator[Ctx]:
    """A container with a compat IOAS holding one mock domain (type not set yet)."""
    m = new_machine()
    buffer = alloc_buffer(m)
    c = Container(m, request.param)
    ioas = c.ioas_alloc()
    _, hwpt, _ = c.mock_domain(ioas)
    c.compat_set(ioas)
    yield Ctx(m, c, buffer, ioas, hwpt)
    teardown_iommufd(m, c.fd, buffer)
    m.shutdown()


@pytest.fixture(params=PATHS)
def bare(request: pytest.FixtureRequest) -> Iterator[Container]:
    """A container with no compat IOAS."""
    m = new_machine()
    c = Container(m, request.param)
    yield c
    m.shutdown()


# ======================================================================================
# without a compat IOAS
# ======================================================================================
def test_no_compat_ioas(bare: Container) -> None:
    c = bare
    assert c.m.ioctl(c.fd, vf.VFIO_GET_API_VERSION) == vf.VFIO_API_VERSION == 0
    assert c.check_extension(vf.VFIO_TYPE1v2_IOMMU) == 1
    with expect_errno(errno.ENODEV):  # DMA_CC_IOMMU looks at the IOAS
        c.check_extension(vf.VFIO_DMA_CC_IOMMU)
    for t in (vf.VFIO_TYPE1_IOMMU, vf.VFIO_TYPE1v2_IOMMU):
        with expect_errno(errno.ENODEV):
            c.set_iommu(t)
    with expect_errno(errno.EINVAL):  # the type is checked first
        c.set_iommu(vf.VFIO_TYPE1_NESTING_IOMMU)
    with expect_errno(errno.ENODEV):
        c.ioctl(vf.VFIO_IOMMU_GET_INFO, vf.vfio_iommu_type1_info(argsz=INFO_SZ))
    with expect_errno(errno.ENODEV):
        c.map_dma(0x1000, AS, PAGE_SIZE)
    with expect_errno(errno.ENODEV):
        c.unmap_dma(AS, PAGE_SIZE)
    with expect_errno(errno.ENODEV):
        c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL)


def test_compat_ioas_destroyed(bare: Container) -> None:
    c = bare
    ioas = c.ioas_alloc()
    c.compat_set(ioas)
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    c.destroy(ioas)  # the compat IOAS may be destroyed; the container loses it
    with expect_errno(errno.ENODEV):
        c.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET)
    with expect_errno(errno.ENODEV):
        c.map_dma(0x1000, AS, PAGE_SIZE)


# ======================================================================================
# VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU
# ======================================================================================
EXTENSIONS = {
    vf.VFIO_TYPE1_IOMMU: 1,
    vf.VFIO_SPAPR_TCE_IOMMU: 0,
    vf.VFIO_TYPE1v2_IOMMU: 1,
    vf.VFIO_EEH: 0,
    vf.VFIO_TYPE1_NESTING_IOMMU: 0,  # retired: nesting is a nest-parent HWPT now
    vf.VFIO_SPAPR_TCE_v2_IOMMU: 0,
    vf.VFIO_NOIOMMU_IOMMU: 1,  # CONFIG_VFIO_NOIOMMU
    vf.VFIO_UNMAP_ALL: 1,
    vf.VFIO_UPDATE_VADDR: 0,
    0: 0,
    11: 0,
    U64_MAX: 0,
}


def test_check_extension(ct: Ctx) -> None:
    c = ct.c
    for ext, want in EXTENSIONS.items():
        assert c.check_extension(ext) == want, ext
    # The mock domain does not enforce cache coherency (no ENFORCE_CACHE_COHERENCY cap).
    assert c.check_extension(vf.VFIO_DMA_CC_IOMMU) == 0
    # An IOAS with no paging HWPT: nothing to contradict it.
    c.compat_set(c.ioas_alloc())
    assert c.check_extension(vf.VFIO_DMA_CC_IOMMU) == 1


def test_type1_nesting_refused(ct: Ctx) -> None:
    c = ct.c
    assert c.check_extension(vf.VFIO_TYPE1_NESTING_IOMMU) == 0
    with expect_errno(errno.EINVAL):
        c.set_iommu(vf.VFIO_TYPE1_NESTING_IOMMU)
    assert c.huge_pages(ct.ioas) == 1  # nothing changed
    assert c.set_iommu(vf.VFIO_TYPE1v2_IOMMU) == 0


def test_set_iommu(ct: Ctx) -> None:
    c = ct.c
    for bad in (0, vf.VFIO_SPAPR_TCE_IOMMU, vf.VFIO_TYPE1_NESTING_IOMMU,
                vf.VFIO_SPAPR_TCE_v2_IOMMU, vf.VFIO_NOIOMMU_IOMMU, vf.VFIO_UNMAP_ALL, U64_MAX):
        with expect_errno(errno.EINVAL):
            c.set_iommu(bad)
    assert c.set_iommu(vf.VFIO_TYPE1v2_IOMMU) == 0
    assert c.huge_pages(ct.ioas) == 1
    assert c.set_iommu(vf.VFIO_TYPE1_IOMMU) == 0  # v1 turns huge pages off
    assert c.huge_pages(ct.ioas) == 0
    assert c.set_iommu(vf.VFIO_TYPE1_IOMMU) == 0  # again: nothing records the type
    assert c.set_iommu(vf.VFIO_TYPE1v2_IOMMU) == 0  # v2 does not turn them back on
    assert c.huge_pages(ct.ioas) == 0


def test_set_type1_after_mapping(ct: Ctx) -> None:
    """v1 cannot disable huge pages once a domain holds mappings: EINVAL, no change."""
    c = ct.c
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    c.map_dma(ct.buffer, AS, BUFFER_SIZE)
    with expect_errno(errno.EINVAL):
        c.set_iommu(vf.VFIO_TYPE1_IOMMU)
    assert c.huge_pages(ct.ioas) == 1
    c.check_map(ct.hwpt, AS, BUFFER_SIZE, ct.buffer)
    assert c.unmap_dma(AS, BUFFER_SIZE) == BUFFER_SIZE
    c.set_iommu(vf.VFIO_TYPE1_IOMMU)  # an empty IOAS may switch
    assert c.huge_pages(ct.ioas) == 0


def test_by_value_requests(ct: Ctx) -> None:
    """CHECK_EXTENSION and SET_IOMMU read the argument itself; a buffer's address is no
    extension number. GET_API_VERSION ignores its argument."""
    c, m = ct.c, ct.m
    assert m.ioctl(c.fd, vf.VFIO_CHECK_EXTENSION, bytearray(8)) == 0
    with expect_errno(errno.EINVAL):
        m.ioctl(c.fd, vf.VFIO_SET_IOMMU, bytearray(8))
    assert m.ioctl(c.fd, vf.VFIO_CHECK_EXTENSION, -1) == 0  # unsigned long: U64_MAX
    assert m.ioctl(c.fd, vf.VFIO_GET_API_VERSION, bytearray(4)) == 0
    assert m.ioctl(c.fd, vf.VFIO_GET_API_VERSION, 0x1234) == 0


def test_request_matching(ct: Ctx) -> None:
    c = ct.c
    for req in (vf.VFIO_IOMMU_DIRTY_PAGES,  # dirty tracking is an HWPT ioctl on iommufd
                vf.VFIO_IOMMU_ENABLE, vf.VFIO_GROUP_GET_STATUS,
                uapi._IO(uapi.IOMMUFD_TYPE, vf.VFIO_BASE - 1),
                uapi._IOW(uapi.IOMMUFD_TYPE, vf.VFIO_BASE + 13, MAP_SZ),  # other size bits
                uapi._IO("x", vf.VFIO_BASE)):  # another type byte
        with expect_errno(errno.ENOTTY):
            c.ioctl(req, bytearray(64))


# ======================================================================================
# VFIO_IOMMU_MAP_DMA
# ======================================================================================
def test_map_dma_errors(ct: Ctx) -> None:
    c, buf = ct.c, ct.buffer
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    with expect_errno(errno.EINVAL):
        c.map_dma(buf, AS, PAGE_SIZE, argsz=MAP_SZ - 1)
    for flags in (vf.VFIO_DMA_MAP_FLAG_VADDR, RW | vf.VFIO_DMA_MAP_FLAG_VADDR, 1 << 31):
        with expect_errno(errno.EINVAL):
            c.map_dma(buf, AS, PAGE_SIZE, flags)
    with expect_errno(errno.EINVAL):
        c.map_dma(buf, AS, 0)
    with expect_errno(errno.EINVAL):  # IOVA not aligned to the IOAS
        c.map_dma(buf, AS + 0x400, PAGE_SIZE)  # the mock granule is 2 KiB
    with expect_errno(errno.EINVAL):  # size not aligned
        c.map_dma(buf, AS, PAGE_SIZE + 1)
    with expect_errno(errno.EINVAL):  # outside the mock aperture: reserved
        c.map_dma(buf, 0, PAGE_SIZE)
    with expect_errno(errno.EINVAL):
        c.map_dma(buf, MOCK_APERTURE_LAST + 1 - PAGE_SIZE, 2 * PAGE_SIZE)
    with expect_errno(errno.EOVERFLOW):  # vaddr + size wraps
        c.map_dma(U64_MAX - PAGE_SIZE + 1, AS, 2 * PAGE_SIZE)
    with expect_errno(errno.EOVERFLOW):  # iova + size wraps
        c.map_dma(buf, U64_MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE)
    with expect_errno(errno.EINVAL):  # no access at all: the domain refuses the IOPTEs
        c.map_dma(buf, AS, PAGE_SIZE, flags=0)
    with expect_errno(errno.EFAULT):
        c.ioctl(vf.VFIO_IOMMU_MAP_DMA, None)
    with expect_errno(errno.EFAULT):  # the kernel copies minsz (32) bytes
        c.ioctl(vf.VFIO_IOMMU_MAP_DMA, bytearray(bytes(vf.vfio_iommu_type1_dma_map(
            argsz=MAP_SZ, flags=RW, vaddr=buf, iova=AS, size=PAGE_SIZE)))[:24])
    # None of that left anything behind.
    c.check_refs(buf, BUFFER_SIZE, 0)
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == 0
    # A longer argsz with anything past minsz is fine: only minsz bytes are read.
    big = bytearray(64)
    big[:MAP_SZ] = bytes(vf.vfio_iommu_type1_dma_map(argsz=64, flags=RW, vaddr=buf,
                                                     iova=AS, size=BUFFER_SIZE))
    big[MAP_SZ:] = b"\xff" * (64 - MAP_SZ)
    c.ioctl(vf.VFIO_IOMMU_MAP_DMA, big)
    c.check_map(ct.hwpt, AS, BUFFER_SIZE, buf)
    c.check_refs(buf, BUFFER_SIZE, 1)
    with expect_errno(errno.EEXIST):
        c.map_dma(buf, AS + PAGE_SIZE, PAGE_SIZE)
    c.map_dma(buf, AS + BUFFER_SIZE, PAGE_SIZE, flags=vf.VFIO_DMA_MAP_FLAG_READ)
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == BUFFER_SIZE + PAGE_SIZE


# ======================================================================================
# VFIO_IOMMU_UNMAP_DMA
# ======================================================================================
def test_unmap_dma_errors(ct: Ctx) -> None:
    c, buf = ct.c, ct.buffer
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    c.map_dma(buf, AS, BUFFER_SIZE)
    cmd = vf.vfio_iommu_type1_dma_unmap()
    with expect_errno(errno.EINVAL):
        c.unmap_dma(AS, BUFFER_SIZE, argsz=UNMAP_SZ - 1, cmd=cmd)
    for flags in (vf.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, vf.VFIO_DMA_UNMAP_FLAG_VADDR,
                  vf.VFIO_DMA_UNMAP_FLAG_ALL | vf.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                  1 << 31):
        with expect_errno(errno.EINVAL):
            c.unmap_dma(AS, BUFFER_SIZE, flags, cmd=cmd)
        assert cmd.size == BUFFER_SIZE  # rejected before the unmap: nothing written
    for iova, size in ((AS, 0), (0, PAGE_SIZE)):
        with expect_errno(errno.EINVAL):  # ALL takes no range
            c.unmap_dma(iova, size, vf.VFIO_DMA_UNMAP_FLAG_ALL, cmd=cmd)
        assert cmd.size == size
    # Failures of the unmap itself write back size = bytes unmapped = 0.
    with expect_errno(errno.EINVAL):
        c.unmap_dma(AS, 0, cmd=cmd)
    with expect_errno(errno.ENOENT):  # type1v2 cannot unmap inside a mapping
        c.unmap_dma(AS, PAGE_SIZE, cmd=cmd)
    assert cmd.size == 0
    with expect_errno(errno.ENOENT):  # nor a range that cuts its end
        c.unmap_dma(AS + PAGE_SIZE, BUFFER_SIZE, cmd=cmd)
    with expect_errno(errno.EOVERFLOW):
        c.unmap_dma(AS, U64_MAX, cmd=cmd)
    assert cmd.size == 0
    with expect_errno(errno.EFAULT):
        c.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, None)
    c.check_map(ct.hwpt, AS, BUFFER_SIZE, buf)  # still all there
    c.check_refs(buf, BUFFER_SIZE, 1)
    # An empty range is success with size 0, as in type1 (IOMMU_IOAS_UNMAP: ENOENT).
    assert c.unmap_dma(AS + BUFFER_SIZE, PAGE_SIZE) == 0
    with expect_errno(errno.ENOENT):
        c.unmap(ct.ioas, AS + BUFFER_SIZE, PAGE_SIZE)
    # A range covering whole mappings (and holes) removes them.
    c.map_dma(buf, AS + 2 * BUFFER_SIZE, PAGE_SIZE)
    assert c.unmap_dma(AS, 4 * BUFFER_SIZE) == BUFFER_SIZE + PAGE_SIZE
    c.check_refs(buf, BUFFER_SIZE, 0)


def test_unmap_all(ct: Ctx) -> None:
    c, buf = ct.c, ct.buffer
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == 0  # empty: success
    for i in range(3):
        c.map_dma(buf + i * PAGE_SIZE, AS + i * 2 * PAGE_SIZE, PAGE_SIZE)
    assert c.unmap_dma(0, 0, vf.VFIO_DMA_UNMAP_FLAG_ALL) == 3 * PAGE_SIZE
    c.check_refs(buf, BUFFER_SIZE, 0)


# ======================================================================================
# VFIO_IOMMU_GET_INFO
# ======================================================================================
def _cap_chain(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """(offset, id, version, bytes up to the next cap) along the chain."""
    info = uapi.from_bytes(vf.vfio_iommu_type1_info, raw)
    out = []
    off = info.cap_offset
    while off:
        hdr = uapi.from_bytes(vf.vfio_info_cap_header, raw[off : off + 8])
        end = hdr.next or info.argsz
        out.append((off, hdr.id, hdr.version, raw[off:end]))
        assert hdr.next == 0 or hdr.next > off
        off = hdr.next
    return out


def test_get_info_chain(ct: Ctx) -> None:
    c, buf = ct.c, ct.buffer
    c.set_iommu(vf.VFIO_TYPE1v2_IOMMU)
    with expect_errno(errno.EINVAL):
        c.get_info(15, buf)
    raw = c.get_info(INFO_SZ, buf)
    info = uapi.from_bytes(vf.vfio_iommu_type1_info, raw)
    # DMA_AVAIL (12 bytes, padded to 16) + IOVA_RANGE (16 + one 16-byte range).
    assert info.argsz == INFO_SZ + 16 + 32 == 72
    assert info.flags == vf.VFIO_IOMMU_INFO_PGSIZES | vf.VFIO_IOMMU_INFO_CAPS
    # The mock's 2 KiB granule folds into PAGE_SIZE; its larger sizes stay.
    assert info.iova_pgsizes & (PAGE_SIZE - 1) == 0 and info.iova_pgsizes & PAGE_SIZE
    raw = c.get_info(info.argsz, buf)
    assert raw[72:] == b"\xaa" * (4096 - 72)
    chain = _cap_chain(raw)
    assert [(off, cid, ver) for off, cid, ver, _ in chain] == [
        (24, vf.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1),
        (40, vf.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1)]
    avail = uapi.from_bytes(vf.vfio_iommu_type1_info_dma_avail, chain[0][3])
    assert avail.avail == 0xFFFF_FFFF
    raw = c.get_info(72, buf, zero=False)
    assert raw[36:40] == b"\xaa" * 4  # DMA_AVAIL's padding is not written
    iova = uapi.from_bytes(vf.vfio_iommu_type1_info_cap_iova_range, chain[1][3])
    assert (iova.nr_iovas, iova.reserved) == (1, 0)
    rng = uapi.from_bytes(vf.vfio_iova_range, chain[1][3][16:32])
    assert (rng.start, rng.end) == (AS, MOCK_APERTURE_LAST)
    # A reserved range in the aperture splits the IOVA space: one more range, 16 more
    # bytes needed.
    c.add_reserved(ct.ioas, AS + 0x10_0000, 0x10_0000)
    needed = uapi.from_bytes(vf.vfio_iommu_type1_info, c.get_info(INFO_SZ, buf)).argsz
    assert needed == 88
    iova_cap = _cap_chain(c.get_info(needed, buf))[1][3]
    ranges = [uapi.from_bytes(vf.vfio_iova_range, iova_cap[16 + 16 * i : 32 + 16 * i])
              for i in range(2)]
    assert [(r.start, r.end) for r in ranges] == [
        (AS, AS + 0x10_0000 - 1), (AS + 0x20_0000, MOCK_APERTURE_LAST)]
    # Room for the first range only: it is written, the header (count unknown) is not.
    raw = c.get_info(72, buf, zero=False)
    assert raw[56:72] == iova_cap[16:32] and raw[40:56] == b"\xaa" * 16
    assert uapi.from_bytes(vf.vfio_iommu_type1_info, raw).cap_offset == 0


def test_get_info_every_argsz(ct: Ctx) -> None:
    """Whatever argsz says, nothing is written past it; ``cap_offset`` only when the whole
    chain fitted; a capability is written only when it fits, and linked only then."""
    c, buf = ct.c, ct.buffer
    full = c.get_info(72, buf, zero=False)
    for argsz in range(16, 72 + 16):
        raw = c.get_info(argsz, buf, zero=False)
        assert raw[argsz:] == b"\xaa" * (4096 - argsz), argsz
        info = uapi.from_bytes(vf.vfio_iommu_type1_info, raw[: min(argsz, INFO_SZ)])
        assert info.argsz == 72 and info.flags == 3
        assert info.cap_offset == (INFO_SZ if argsz >= 72 else 0)
        if argsz < INFO_SZ:
            continue
        # DMA_AVAIL (24..36) is there iff it fits; its next (28..32) points on iff the
        # IOVA cap's start (40) is within argsz.
        dma = raw[24:36]
        if argsz >= 36:
            assert dma[:4] == full[24:28] and dma[8:] == full[32:36]
            assert dma[4:8] == (full[28:32] if argsz >= 40 else bytes(4))
        else:
            assert dma == b"\xaa" * 12
        # IOVA_RANGE (40..72): its one range needs all 32 bytes, so all or nothing.
        assert raw[40:72] == (full[40:72] if argsz >= 72 else b"\xaa" * 32)


def test_get_info_buffer_arg(ct: Ctx) -> None:
    """A buffer of exactly argsz bytes: the kernel never writes past argsz (a write past
    the buffer would fault); input flags and cap_offset are ignored."""
    c = ct.c
    for argsz in (16, 20, INFO_SZ, 40, 71, 72):
        arg = bytearray(b"\xee" * argsz)
        arg[:4] = argsz.to_bytes(4, "little")
        c.ioctl(vf.VFIO_IOMMU_GET_INFO, arg)
        info = uapi.from_bytes(vf.vfio_iommu_type1_info, arg)
        assert info.argsz == 72 and info.flags == 3
        if argsz >= INFO_SZ:
            assert info.cap_offset == (INFO_SZ if argsz == 72 else 0) and info.pad == 0


def test_get_info_page_sizes(bare: Container) -> None:
    """No domain: every size from PAGE_SIZE up, then the IOAS alignment as a floor."""
    c = bare
    c.compat_set(c.ioas_alloc())
    raw = bytearray(INFO_SZ)
    raw[:4] = INFO_SZ.to_bytes(4, "little")
    c.ioctl(vf.VFIO_IOMMU_GET_INFO, raw)
    assert uapi.from_bytes(vf.vfio_iommu_type1_info, raw).iova_pgsizes == (
        U64_MAX & ~(PAGE_SIZE - 1))

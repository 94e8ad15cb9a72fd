"""Geometry and golden descriptor encodings, checked against numbers worked out by hand
from the architecture specifications (field by field in the comments)."""

from __future__ import annotations

import errno

import pytest
from pgtable_cases import FORMAT_CASES, RW, Env

from iommu_core.errors import IommuError
from iommu_core.pgtable import PtFormat, formats
from iommu_core.pgtable.formats import EMPTY, INVALID, LEAF, TABLE
from iommu_core.prot import (
    IOMMU_CACHE,
    IOMMU_MMIO,
    IOMMU_NOEXEC,
    IOMMU_PRIV,
    IOMMU_READ,
    IOMMU_WRITE,
)

SZ_4K, SZ_16K, SZ_64K = 1 << 12, 1 << 14, 1 << 16
SZ_2M, SZ_32M, SZ_512M, SZ_1G = 1 << 21, 1 << 25, 1 << 29, 1 << 30


def leaf(fmt: PtFormat, oa: int, pgsize: int, prot: int) -> int:
    level, _ = fmt.leaf_level(pgsize)
    return fmt.make_leaf(oa, level, fmt.prot_to_attrs(prot), pgsize)


# -- ARM geometry: smmuv3.md §13.3 example table ---------------------------------------------
@pytest.mark.parametrize(
    (
        "stage",
        "granule",
        "ias",
        "oas",
        "levels",
        "start",
        "top_entries",
        "concat",
        "t0sz",
        "tg",
        "sl0",
    ),
    [
        (1, SZ_4K, 48, 48, 4, 0, 512, 1, 16, 0, None),
        (1, SZ_16K, 48, 48, 4, 0, 2, 1, 16, 2, None),
        (1, SZ_64K, 48, 48, 3, 1, 64, 1, 16, 1, None),
        (2, SZ_4K, 48, 48, 4, 0, 512, 1, 16, 0, 2),
        (2, SZ_4K, 40, 40, 3, 1, 1024, 2, 24, 0, 1),
        (2, SZ_4K, 44, 44, 4, 0, 32, 1, 20, 0, 2),
        (2, SZ_16K, 48, 48, 3, 1, 4096, 2, 16, 2, 2),
        (2, SZ_64K, 48, 48, 3, 1, 64, 1, 16, 1, 2),
        (2, SZ_64K, 52, 52, 3, 1, 1024, 1, 12, 1, 2),
    ],
)
def test_arm_geometry(
    stage: int,
    granule: int,
    ias: int,
    oas: int,
    levels: int,
    start: int,
    top_entries: int,
    concat: int,
    t0sz: int,
    tg: int,
    sl0: int | None,
) -> None:
    fmt = (formats.arm_lpae_s1 if stage == 1 else formats.arm_lpae_s2)(granule, ias, oas)
    assert fmt.levels == levels
    assert fmt.start_level == start
    assert 1 << fmt.level_bits[fmt.top_level] == top_entries
    assert fmt.concat == concat
    assert fmt.table_size[fmt.top_level] == max(64, 8 * top_entries)
    tcr = fmt.tcr()
    assert (tcr.tsz, tcr.tg, tcr.sl0) == (t0sz, tg, sl0)
    # PS/IPS encoding of the output size: 40 -> 2, 44 -> 4, 48 -> 5, 52 -> 6.
    assert tcr.ps == {40: 2, 44: 4, 48: 5, 52: 6}[oas]
    # Coherent walk: inner shareable, WBWA both ways.
    assert (tcr.sh, tcr.irgn, tcr.orgn) == (3, 1, 1)
    if stage == 1:
        assert tcr.mair == 0xF404FF44  # idx0 0x44 NC, idx1 0xff WBRWA, idx2 0x04 dev, idx3 0xf4
    else:
        assert tcr.mair is None


def test_arm_tcr_non_coherent() -> None:
    tcr = formats.arm_lpae_s1(coherent_walk=False).tcr()
    assert (tcr.sh, tcr.irgn, tcr.orgn) == (2, 0, 0)  # outer shareable, non-cacheable


def test_arm_pgsize_bitmaps() -> None:
    assert formats.arm_lpae_s1(SZ_4K).pgsize_bitmap == SZ_4K | SZ_2M | SZ_1G
    assert formats.arm_lpae_s1(SZ_16K).pgsize_bitmap == SZ_16K | SZ_32M
    assert formats.arm_lpae_s1(SZ_64K).pgsize_bitmap == SZ_64K | SZ_512M
    # 4 TB blocks only with a 52-bit output address.
    assert formats.arm_lpae_s1(SZ_64K, 52, 52).pgsize_bitmap == SZ_64K | SZ_512M | (1 << 42)
    # A 32-bit stage 2 (3 levels from level 1) still has 1G blocks at its top.
    assert formats.arm_lpae_s2(SZ_4K, 32, 40).pgsize_bitmap & SZ_1G


@pytest.mark.parametrize(
    "kwargs",
    [
        {"granule": 8192},
        {"oas": 50},
        {"oas": 52},  # 52-bit needs the 64K granule
        {"ias": 49},
        {"ias": 20},
    ],
)
def test_arm_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(IommuError) as e:
        formats.arm_lpae_s1(**kwargs)
    assert e.value.errno == errno.EINVAL


# -- ARM stage 1 descriptors -----------------------------------------------------------------
def test_arm_s1_page_rw_cached() -> None:
    fmt = formats.arm_lpae_s1()
    # Level-3 page: type 0b11 (0x3) | AttrIndx=1 WBRWA (1<<2 = 0x4) | AP[2:1]=0b01 RW at
    # EL0 and EL1 (AP[1] = bit 6, 0x40) | SH=0b11 inner (0x300) | AF (0x400) | nG (0x800)
    # | OA 0x8000_1000.
    assert leaf(fmt, 0x8000_1000, SZ_4K, RW | IOMMU_CACHE) == 0x0000_0000_8000_1F47


def test_arm_s1_block_ro_noexec() -> None:
    fmt = formats.arm_lpae_s1()
    # Level-2 block: type 0b01 | AttrIndx=0 NC | AP=0b11 RO at EL0/EL1 (0xC0) | SH=0b10
    # outer (0x200) | AF | nG | UXN+PXN (bits 54, 53: 0x0060_0000_0000_0000) | OA 0x4020_0000.
    assert leaf(fmt, 0x4020_0000, SZ_2M, IOMMU_READ | IOMMU_NOEXEC) == 0x0060_0000_4020_0EC1


def test_arm_s1_1g_block_mmio_priv() -> None:
    fmt = formats.arm_lpae_s1()
    # Level-1 block: type 0b01 | AttrIndx=2 device (0x8) | AP=0b00 RW, EL1 only | SH=OS
    # (0x200) | AF (0x400) | nG (0x800) | OA 0x1_4000_0000.
    assert leaf(fmt, 0x1_4000_0000, SZ_1G, RW | IOMMU_MMIO | IOMMU_PRIV) == 0x0000_0001_4000_0E09


def test_arm_s1_hd_dbm() -> None:
    fmt = formats.arm_lpae_s1(hd=True)
    # As the RW cached page plus DBM (bit 51): writable-dirty as mapped.
    pte = leaf(fmt, 0x8000_1000, SZ_4K, RW | IOMMU_CACHE)
    assert pte == 0x0008_0000_8000_1F47
    assert fmt.is_dirty(pte)
    clean = fmt.make_clean(pte)
    assert clean == pte | 0x80  # AP[2] read-only: writable-clean
    assert not fmt.is_dirty(clean) and fmt.write_needs_dirty_update(clean)
    # Read-only mappings get AP[2] and no DBM.
    assert leaf(fmt, 0x8000_1000, SZ_4K, IOMMU_READ) & (1 << 51) == 0


def test_arm_16k_and_64k_pages() -> None:
    # 16K granule, level-2 32M block, RW cached: type 0b01 | 0x4 | 0x40 | 0x300 | 0x400 |
    # 0x800 = 0xF45 | OA 0x2_0200_0000.
    assert (
        leaf(formats.arm_lpae_s1(SZ_16K), 0x2_0200_0000, SZ_32M, RW | IOMMU_CACHE) == 0x2_0200_0F45
    )
    # 64K granule page, RW cached: 0xF47 | OA 0x1234_0000.
    assert leaf(formats.arm_lpae_s1(SZ_64K), 0x1234_0000, SZ_64K, RW | IOMMU_CACHE) == 0x1234_0F47


def test_arm_64k_52bit_pa() -> None:
    fmt = formats.arm_lpae_s1(SZ_64K, 52, 52)
    # PA 0xF_0000_0001_0000: PA[51:48] = 0xF goes to descriptor bits [15:12] (0xF000),
    # PA[47:16] stays (0x1_0000); attributes 0xF47 as the RW cached page.
    oa = 0x000F_0000_0001_0000
    pte = leaf(fmt, oa, SZ_64K, RW | IOMMU_CACHE)
    assert pte == 0x0000_0000_0001_FF47
    assert fmt.leaf_oa_size(pte, 0) == (oa, SZ_64K)
    table = fmt.make_table(0x000A_0000_0002_0000, 1)
    assert table == 0x0000_0000_0002_A003  # next-table PA packed the same way | 0b11
    assert fmt.table_pa(table) == 0x000A_0000_0002_0000


def test_arm_table_descriptor() -> None:
    fmt = formats.arm_lpae_s1()
    # Table descriptor: next-level table PA | 0b11, no attributes.
    assert fmt.make_table(0x1_2345_6000, 2) == 0x1_2345_6003
    assert fmt.classify(0x1_2345_6003, 2) == TABLE
    # Level 3: 0b01 is reserved (no page), 0b11 is a page.
    assert fmt.classify(0x1_2345_6001, 0) == INVALID
    assert fmt.classify(0x1_2345_6003, 0) == LEAF
    # 4K granule: no level-0 (512G) blocks.
    assert fmt.classify(0x80_0000_0401, 3) == INVALID
    assert fmt.classify(0, 1) == EMPTY


# -- ARM stage 2 -------------------------------------------------------------------------------
def test_arm_s2_page_rw_cached() -> None:
    fmt = formats.arm_lpae_s2()
    # S2 4K-granule level-3 page with S2AP=RW (bits 7:6 = 0b11, 0xC0), MemAttr=0xF normal
    # inner/outer WB (bits 5:2, 0x3C), AF (0x400), SH=inner (0x300), type 0b11 -> 0x7FF,
    # OA 0x1_2345_6000.
    assert leaf(fmt, 0x1_2345_6000, SZ_4K, RW | IOMMU_CACHE) == 0x0000_0001_2345_67FF


def test_arm_s2_variants() -> None:
    fmt = formats.arm_lpae_s2()
    # Read-only, not cached: S2AP=0b01 (0x40) | MemAttr=0x5 NC (0x14) | SH=OS (0x200) | AF
    # | type 0b11 = 0x657.
    assert leaf(fmt, 0x5000, SZ_4K, IOMMU_READ) == 0x5657
    # MMIO, RW, NOEXEC 2M block: S2AP 0xC0 | MemAttr=0x1 device (0x4) | SH=OS | AF | XN
    # (bits 54:53) | type 0b01 = 0x0060_0000_0000_06C5 | OA 0x20_0000.
    assert leaf(fmt, SZ_2M, SZ_2M, RW | IOMMU_MMIO | IOMMU_NOEXEC) == 0x0060_0000_0020_06C5
    # S2FWB cached: MemAttr=0x6 force WB (0x18): 0x7DB.
    fwb = formats.arm_lpae_s2(s2fwb=True)
    assert leaf(fwb, 0x6000, SZ_4K, RW | IOMMU_CACHE) == 0x67DB


# -- x86-64 ------------------------------------------------------------------------------------
def test_x86_64_descriptors() -> None:
    fmt = formats.x86_64(4)
    # 4K PTE RW: P (0x1) | RW (0x2) | U/S (0x4) | A (0x20) | D (0x40) = 0x67 | OA.
    assert leaf(fmt, 0x1234_5000, SZ_4K, RW) == 0x1234_5067
    # 2M PDE read-only: P | U/S | A | PS (0x80) = 0xA5, no RW, no D.
    assert leaf(fmt, 0x4000_0000, SZ_2M, IOMMU_READ) == 0x4000_00A5
    # 1G PDPTE RW: 0x67 | PS = 0xE7; NOEXEC does not set XD (Linux never does).
    assert leaf(fmt, 0x80_4000_0000, SZ_1G, RW | IOMMU_NOEXEC) == 0x80_4000_00E7
    # Table: P | RW | U/S | A = 0x27.
    assert fmt.make_table(0x7_0000_1000, 3) == 0x7_0000_1027
    # PS at PML4 is reserved; in a 4K PTE bit 7 is PAT, still a page.
    assert fmt.classify(0x1000_00A7, 3) == INVALID
    assert fmt.classify(0x1000_00A7, 0) == LEAF
    assert fmt.classify(0x1000_0026, 2) == EMPTY


def test_x86_64_geometry() -> None:
    f4, f5 = formats.x86_64(4), formats.x86_64(5)
    assert (f4.levels, f4.ias, f5.levels, f5.ias) == (4, 48, 5, 57)
    assert f4.va_ranges == ((0, (1 << 47) - 1),)
    se = formats.x86_64(4, sign_extend=True)
    assert se.va_ranges == ((0, (1 << 47) - 1), ((1 << 64) - (1 << 47), (1 << 64) - 1))
    assert f4.pgsize_bitmap == SZ_4K | SZ_2M | SZ_1G
    assert [f4.arch_level(lv) for lv in range(4)] == ["PTE", "PDE", "PDPTE", "PML4E"]


# -- VT-d second stage ---------------------------------------------------------------------------
def test_vtd_ss_descriptors() -> None:
    fmt = formats.vtd_ss(4)
    # 4K RW: R (bit 0) | W (bit 1) = 0x3, no present bit.
    assert leaf(fmt, 0x1234_5000, SZ_4K, RW) == 0x1234_5003
    # 2M read-only superpage: R | PS (bit 7) = 0x81.
    assert leaf(fmt, 0x4020_0000, SZ_2M, IOMMU_READ) == 0x4020_0081
    # 1G write-only superpage: W | PS = 0x82.
    assert leaf(fmt, 0x4000_0000, SZ_1G, IOMMU_WRITE) == 0x4000_0082
    # Snoop-enforcing domain: SNP (bit 11) on every leaf: 0x803.
    assert leaf(formats.vtd_ss(4, snp=True), 0x5000, SZ_4K, RW) == 0x5803
    # Table: R | W.
    assert fmt.make_table(0x9000, 1) == 0x9003
    # Present iff R|W: A/D alone (bits 8, 9) are not present.
    assert fmt.classify(0x300, 0) == EMPTY
    # SSADE: D is bit 9, A bit 8.
    assert fmt.make_dirty(0x5003) == 0x5203 and fmt.is_dirty(0x5203)


def test_vtd_ss_hw_info() -> None:
    for levels, aw in ((3, 1), (4, 2), (5, 3)):
        info = formats.vtd_ss(levels).hw_info(0x1000)
        assert (info.levels, info.aw) == (levels, aw)  # type: ignore[attr-defined]


# -- AMD v1 --------------------------------------------------------------------------------------
def test_amd_v1_default_pages() -> None:
    fmt = formats.amd_v1(4)
    # 4K RW: PR (bit 0) | NextLevel=0 | FC (bit 60) | IR (61) | IW (62) = 0x7000..0001 | OA.
    assert leaf(fmt, 0x1234_5000, SZ_4K, RW) == 0x7000_0000_1234_5001
    # 2M default page at level 2 (1-based): same bits, OA 0x4020_0000; read-only drops IW.
    assert leaf(fmt, 0x4020_0000, SZ_2M, IOMMU_READ) == 0x3000_0000_4020_0001
    # Table entry at level 2 pointing to a level-1 table: PR | NextLevel=1 (0x200) | IR |
    # IW (tables always grant both; FC is a leaf bit).
    assert fmt.make_table(0x8_0000_3000, 1) == 0x6000_0008_0000_3201


def test_amd_v1_non_default_sizes() -> None:
    fmt = formats.amd_v1(4)
    # 8K: NextLevel=7 (0xE00) at level 1, address bit 12 = 0 (no ones below bit 13-1),
    # replicated in 2 slots; S = 2^(1 + first zero of pte|0xfff) = 2^13.
    pte8k = leaf(fmt, 0x1234_4000, 1 << 13, RW)
    assert pte8k == 0x7000_0000_1234_4E01
    assert fmt.leaf_level(1 << 13) == (0, 2)
    assert fmt.leaf_oa_size(pte8k, 0) == (0x1234_4000, 1 << 13)
    # 16K: bit 12 = 1, bit 13 = 0 -> 0x...9E01, 4 slots.
    assert leaf(fmt, 0x1234_8000, 1 << 14, RW) == 0x7000_0000_1234_9E01
    assert fmt.leaf_level(1 << 14) == (0, 4)
    # 1M: bits 18:12 = 1 (0x7F000), bit 19 = 0; 256 slots at level 1.
    assert leaf(fmt, 0x4010_0000, 1 << 20, RW) == 0x7000_0000_4017_FE01
    assert fmt.leaf_level(1 << 20) == (0, 256)
    # 4M at level 2: bit 21 = 0, bits 20:12 ones; 2 slots of 2M.
    assert fmt.leaf_level(1 << 22) == (1, 2)
    assert fmt.leaf_oa_size(leaf(fmt, 0x4040_0000, 1 << 22, RW), 1) == (0x4040_0000, 1 << 22)


def test_amd_v1_pgsize_bitmap() -> None:
    # Every power of two from 4K, except 512G (hardware bug), up to half the VA space
    # for Mode 4 (48-bit): 2^12..2^47 without 2^39.
    fmt = formats.amd_v1(4)
    assert fmt.pgsize_bitmap == ((1 << 48) - (1 << 12)) & ~(1 << 39)
    # Mode 6: the top level holds no leaves; sizes stop at 2^51.
    assert formats.amd_v1(6).pgsize_bitmap == ((1 << 52) - (1 << 12)) & ~(1 << 39)
    assert formats.amd_v1(6).ias == 64
    assert formats.amd_v1(4).hw_info(0x1000).mode == 4  # type: ignore[attr-defined]


def test_amd_v1_next_level_rules() -> None:
    fmt = formats.amd_v1(4)
    # A table entry must name the next level; skipping is not modelled.
    assert fmt.classify(0x6000_0000_0000_3201, 1) == TABLE
    assert fmt.classify(0x6000_0000_0000_3401, 1) == INVALID  # NextLevel 2 at level 2
    assert fmt.classify(0x6000_0000_0000_3001, 1) == LEAF  # NextLevel 0: a 2M page
    # The 6-level top cannot hold leaves.
    assert formats.amd_v1(6).classify(0x7000_0000_0000_0001, 5) == INVALID


# -- mock ----------------------------------------------------------------------------------------
def test_mock_descriptors() -> None:
    fmt = formats.mock(3)
    assert fmt.level_shift == (11, 20, 29)  # 2K, 1M, 512M entries; tables 512 x 8 B
    assert fmt.table_size == (4096, 4096, 4096)
    assert fmt.dirty_tracking
    # 2K page RW: PR | IR | IW (no FC) | (OA >> 11) << 12: 0x1234_5800 -> 0x2468_B000.
    assert leaf(fmt, 0x1234_5800, 1 << 11, RW) == 0x6000_0000_2468_B001
    # 1M default page at level 2: 0x4010_0000 >> 11 = 0x8_0200 -> 0x8020_0000.
    assert leaf(fmt, 0x4010_0000, 1 << 20, RW) == 0x6000_0000_8020_0001
    # 4K is a non-default size: NextLevel 7, 2 slots, field bit 0 = 0.
    assert leaf(fmt, 0x1234_5000, SZ_4K, RW) == 0x6000_0000_2468_AE01
    assert fmt.leaf_level(SZ_4K) == (0, 2)
    # D is bit 6.
    assert fmt.make_dirty(0x6000_0000_2468_B001) == 0x6000_0000_2468_B041


# -- every format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_round_trip_every_size(case: str) -> None:
    """Every page size at its level decodes back to the OA and size it encodes."""
    fmt = FORMAT_CASES[case]()
    sizes = [1 << b for b in range(64) if fmt.pgsize_bitmap >> b & 1]
    for size in sizes:
        level, nrep = fmt.leaf_level(size)
        assert size == nrep << fmt.level_shift[level]
        oa = (1 << (fmt.oas - 1)) & -size if size < 1 << (fmt.oas - 1) else 0
        pte = fmt.make_leaf(oa, level, fmt.prot_to_attrs(RW), size)
        assert fmt.classify(pte, level) == LEAF
        assert fmt.leaf_oa_size(pte, level) == (oa, size)
    for level in range(1, fmt.levels):
        t = fmt.make_table(0x1_0000_0000, level)
        assert fmt.classify(t, level) == TABLE
        assert fmt.table_pa(t) == 0x1_0000_0000


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_prot_without_access_is_rejected(case: str) -> None:
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    with pytest.raises(IommuError) as e:
        pt.map_pages(fmt.va_ranges[0][0], 0, fmt.granule, 1, IOMMU_CACHE)
    assert e.value.errno == errno.EINVAL
    pt.free()
    assert env.leaked() == 0


def test_registry() -> None:
    assert formats.names() == ["amd_v1", "arm_lpae_s1", "arm_lpae_s2", "mock", "vtd_ss", "x86_64"]
    assert formats.get("arm_lpae_s1", granule=16384) == formats.arm_lpae_s1(16384)
    assert formats.get("x86_64", levels=5).levels == 5
    with pytest.raises(IommuError) as e:
        formats.get("nope")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(IommuError) as e:
        formats.get("vtd_ss", bogus=1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(IommuError) as e:
        formats.register("mock", formats.mock)
    assert e.value.errno == errno.EEXIST
    formats.register("riscv_sv39_test", lambda: formats.vtd_ss(3))
    try:
        assert formats.get("riscv_sv39_test").levels == 3
    finally:
        formats._REGISTRY.pop("riscv_sv39_test")


def test_with_pgsizes() -> None:
    fmt = formats.mock(3).with_pgsizes((1 << 11) | (1 << 20))
    assert fmt.pgsize_bitmap == (1 << 11) | (1 << 20)
    assert fmt.leaf_sizes == formats.mock(3).leaf_sizes  # hardware decode unchanged
    with pytest.raises(IommuError):
        formats.x86_64().with_pgsizes(1 << 13)

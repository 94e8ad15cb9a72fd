"""Dirty tracking on the real descriptors, and describe()."""

from __future__ import annotations

import errno

import pytest
from pgtable_cases import RW, Env

from iommu_core.errors import IommuError
from iommu_core.pgtable import Access, describe, formats
from iommu_core.prot import IOMMU_CACHE, IOMMU_DIRTY_NO_CLEAR, IOMMU_READ

SZ_2K, SZ_4K, SZ_1M, SZ_2M = 1 << 11, 1 << 12, 1 << 20, 1 << 21

DIRTY_FORMATS = {
    "mock": formats.mock(3),
    "amd_v1": formats.amd_v1(4),
    "vtd_ss": formats.vtd_ss(4),
    "x86_64": formats.x86_64(4),
    "arm_s1_hd": formats.arm_lpae_s1(hd=True),
}


def collect(pt: object, iova: int, size: int, flags: int = 0) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pt.read_and_clear_dirty(iova, size, flags, lambda i, n: out.append((i, n)))  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("name", sorted(DIRTY_FORMATS))
def test_read_and_clear_dirty(name: str) -> None:
    fmt = DIRTY_FORMATS[name]
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    base = 64 * SZ_2M
    pt.map_pages(base, 0x1_0000_0000, g, 8, RW)
    collect(pt, base, 8 * g)  # x86 and ARM HD map writable leaves dirty: start clean
    assert collect(pt, base, 8 * g) == []
    for i in (1, 4, 5):
        pt.set_dirty(base + i * g + 3)
    assert collect(pt, base, 8 * g, IOMMU_DIRTY_NO_CLEAR) == [(base + i * g, g) for i in (1, 4, 5)]
    assert collect(pt, base + 4 * g, g) == [(base + 4 * g, g)]  # only the asked range
    assert collect(pt, base, 8 * g) == [(base + g, g), (base + 5 * g, g)]
    assert collect(pt, base, 8 * g) == []
    # A hardware write through the walker dirties the leaf as set_dirty does.
    r = pt.walk(base + 7 * g, Access.WRITE, set_dirty=True)
    assert r.ok and r.dirty  # type: ignore[union-attr]
    assert collect(pt, base, 8 * g) == [(base + 7 * g, g)]
    with pytest.raises(IommuError) as e:
        pt.set_dirty(base + 9 * g)
    assert e.value.errno == errno.ENOENT
    pt.free()
    assert env.leaked() == 0


def test_mock_huge_pages_dirty_whole() -> None:
    """The selftest rule: a write to any byte of a 1 MiB mock PTE dirties all of it."""
    fmt = formats.mock(3).with_pgsizes(SZ_2K | SZ_1M)
    env = Env()
    pt = env.table(fmt)
    pt.map(SZ_1M * 16, SZ_1M * 32, 2 * SZ_1M, RW)
    pt.set_dirty(SZ_1M * 17 + 0x7FF)
    assert collect(pt, SZ_1M * 16, 2 * SZ_1M) == [(SZ_1M * 17, SZ_1M)]
    pt.free()
    assert env.leaked() == 0


def test_amd_replicated_dirty() -> None:
    """A non-default AMD page is dirty if any of its slots is; cleaning clears them all."""
    env = Env()
    pt = env.table(formats.amd_v1(4))
    pt.map_pages(0x40_0000, 0x80_0000, 1 << 16, 1, RW)  # 16 replicated slots
    r = pt.walk(0x40_F000, Access.WRITE, set_dirty=True)  # hardware marks the last slot
    assert r.ok and r.dirty  # type: ignore[union-attr]
    assert collect(pt, 0, 1 << 30) == [(0x40_0000, 1 << 16)]
    leaf = next(pt.iter_leaves())
    assert all(not env.mem.read_u64(leaf.desc_addr + 8 * k) & (1 << 6) for k in range(16))
    pt.free()


def test_no_dirty_bit() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s1())  # no HTTU: no dirty state in the descriptors
    with pytest.raises(IommuError) as e:
        collect(pt, 0, SZ_4K)
    assert e.value.errno == errno.EOPNOTSUPP
    pt.free()


def test_describe() -> None:
    fmt = formats.arm_lpae_s1()
    pte = fmt.make_leaf(0x8000_1000, 0, fmt.prot_to_attrs(RW | IOMMU_CACHE), SZ_4K)
    d = describe(pte, fmt, 0)
    assert d.kind == "page" and d.level == "L3"
    assert [f.name for f in d.fields][:4] == ["type", "AttrIndx", "NS", "AP"]
    assert d.field("AttrIndx").meaning == "normal WBRWA"
    assert d.field("AP").meaning == "RW"
    assert d.field("OA").value == 0x8000_1000
    line = str(d)
    assert "\n" not in line and line.startswith("arm_lpae_s1 L3 page 0x0000000080001f47:")
    assert "SH=3" in line and "OA=0x80001000" in line
    assert "inner shareable" in d.long()
    t = describe(fmt.make_table(0x1234_5000, 2), fmt, 2)
    assert t.kind == "table" and t.field("next").value == 0x1234_5000 and t.level == "L1"
    assert describe(0, fmt, 1).kind == "invalid"
    # One per family, decoded from a golden value.
    x = describe(0x4000_00A5, formats.x86_64(), 1)
    assert (x.kind, x.level, x.field("PS").value, x.field("RW").value) == ("page", "PDE", 1, 0)
    v = describe(0x5803, formats.vtd_ss(), 0)
    assert (v.field("SNP").value, v.field("OA").value) == (1, 0x5000)
    a = describe(0x7000_0000_1234_9E01, formats.amd_v1(), 0)
    assert a.field("NextLevel").value == 7 and a.field("OA").meaning.endswith("0x4000 bytes")
    s2 = describe(0x0000_0001_2345_67FF, formats.arm_lpae_s2(), 0)
    assert s2.field("S2AP").meaning == "RW" and s2.field("MemAttr").value == 0xF
    m = describe(0x6000_0000_2468_B001, formats.mock(), 0)
    assert m.field("OA").value == 0x1234_5800 and m.level == "L1"
    ro = fmt.make_leaf(0x5000, 0, fmt.prot_to_attrs(IOMMU_READ), SZ_4K)
    assert describe(ro, fmt, 0).field("AP").meaning == "RO"

"""x86-64 paging (VT-d first stage, AMD v2 guest tables) and the VT-d second-stage format
(vtd_amd.md §A5, §B7)."""

from __future__ import annotations

import errno
from typing import ClassVar

import attrs

from iommu_core.errors import fail
from iommu_core.pgtable.formats.base import (
    EMPTY,
    INVALID,
    LEAF,
    TABLE,
    U64_MAX,
    DescField,
    PtFormat,
    TableHwInfo,
    bit_mask,
    check_prot,
)
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

_SZ_4K, _SZ_2M, _SZ_1G = 1 << 12, 1 << 21, 1 << 30
_ADDR = bit_mask(51, 12)

# -- x86-64 bits ----------------------------------------------------------------------------
X86_P = 1 << 0
X86_RW = 1 << 1
X86_US = 1 << 2
X86_PWT = 1 << 3
X86_PCD = 1 << 4
X86_A = 1 << 5
X86_D = 1 << 6
X86_PS = 1 << 7  # PDE/PDPTE; in a 4K PTE this bit is PAT
X86_G = 1 << 8
X86_XD = 1 << 63

# -- VT-d second-stage bits --------------------------------------------------------------------
SS_R = 1 << 0
SS_W = 1 << 1
SS_PS = 1 << 7
SS_A = 1 << 8
SS_D = 1 << 9
SS_SNP = 1 << 11

_X86_LEVEL_NAMES = ("PTE", "PDE", "PDPTE", "PML4E", "PML5E")


def _radix_4k(levels: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Shifts, index bits and table sizes of a 4 KiB / 512-entry radix tree."""
    return (
        tuple(12 + 9 * level for level in range(levels)),
        (9,) * levels,
        (4096,) * levels,
    )


@attrs.frozen(kw_only=True)
class _PaeLikeFormat(PtFormat):
    """What x86-64 and VT-d second-stage entries share: 4 KiB tables of 512 entries,
    the address in bits 51:12, a page-size bit ending the walk at 2M/1G; they differ in
    what makes an entry present."""

    PRESENT: ClassVar[int] = 0
    PS: ClassVar[int] = 0

    def classify(self, pte: int, level: int) -> int:
        if not pte & self.PRESENT:
            return EMPTY
        if level == 0:
            return LEAF
        if pte & self.PS:
            return LEAF if self.leaf_sizes[level] else INVALID
        return TABLE

    def table_pa(self, pte: int) -> int:
        return pte & _ADDR

    def leaf_oa_size(self, pte: int, level: int) -> tuple[int, int]:
        shift = self.level_shift[level]
        return pte & bit_mask(51, shift), 1 << shift


@attrs.frozen(kw_only=True)
class X86TableInfo(TableHwInfo):
    """CR3-like pointer (VT-d FSPTPTR, AMD GCR3 table root) and the paging depth."""


@attrs.frozen(kw_only=True)
class X86_64Format(_PaeLikeFormat):
    """x86-64 4/5-level paging as Linux builds it for IOMMUs: every entry P|U|A, writable
    leaves RW|D, tables P|RW|U|A, PS for 2M/1G leaves, XD never set."""

    PRESENT: ClassVar[int] = X86_P
    PS: ClassVar[int] = X86_PS

    def arch_level(self, level: int) -> str:
        return _X86_LEVEL_NAMES[level]

    def prot_to_attrs(self, prot: int) -> int:
        check_prot(prot)
        bits = X86_P | X86_US | X86_A
        if prot & IOMMU_WRITE:
            bits |= X86_RW | X86_D
        return bits

    def make_leaf(self, oa: int, level: int, attrs_bits: int, pgsize: int) -> int:
        return attrs_bits | (X86_PS if level else 0) | oa

    def make_table(self, table_pa: int, level: int) -> int:
        return table_pa | X86_P | X86_RW | X86_US | X86_A

    def leaf_prot(self, pte: int) -> int:
        return IOMMU_READ | (IOMMU_WRITE if pte & X86_RW else 0)

    def leaf_perms(self, pte: int, acc: int) -> tuple[bool, bool, bool, bool]:
        return (
            True,
            bool(acc & pte & X86_RW),
            not (acc | pte) & X86_XD,
            bool(acc & pte & X86_US),
        )

    def is_dirty(self, pte: int) -> bool:
        return bool(pte & X86_D)

    def make_clean(self, pte: int) -> int:
        return pte & ~X86_D

    def make_dirty(self, pte: int) -> int:
        return pte | X86_D

    def hw_info(self, root: int) -> X86TableInfo:
        return X86TableInfo(root=root, levels=self.levels)

    def describe_fields(self, pte: int, level: int) -> tuple[str, list[DescField]]:
        kind = self.classify(pte, level)
        if kind == EMPTY:
            return "not-present", [DescField(name="P", value=0, meaning="not present")]
        if kind == INVALID:
            return "reserved", [DescField(name="PS", value=1, meaning="no page this size here")]
        f = [
            DescField(name="P", value=1, meaning="present"),
            DescField(name="RW", value=(pte >> 1) & 1, meaning="writable"),
            DescField(name="US", value=(pte >> 2) & 1, meaning="user accessible"),
            DescField(name="PWT", value=(pte >> 3) & 1, meaning="write-through"),
            DescField(name="PCD", value=(pte >> 4) & 1, meaning="cache disable"),
            DescField(name="A", value=(pte >> 5) & 1, meaning="accessed"),
        ]
        if kind == TABLE:
            f.append(DescField(name="next", value=self.table_pa(pte), meaning="next-level table"))
        else:
            oa, size = self.leaf_oa_size(pte, level)
            f += [
                DescField(name="D", value=(pte >> 6) & 1, meaning="dirty"),
                DescField(
                    name="PS" if level else "PAT",
                    value=(pte >> 7) & 1,
                    meaning="large page" if level else "PAT index bit",
                ),
                DescField(name="G", value=(pte >> 8) & 1, meaning="global"),
                DescField(name="OA", value=oa, meaning=f"output address, {size:#x} bytes"),
            ]
        f.append(DescField(name="XD", value=pte >> 63, meaning="execute disable"))
        return ("table" if kind == TABLE else "page"), f


@attrs.frozen(kw_only=True)
class VtdSsTableInfo(TableHwInfo):
    """SSPTPTR (``root``) and the address-width field AW (1: 39-bit, 2: 48, 3: 57)."""

    aw: int


@attrs.frozen(kw_only=True)
class VtdSsFormat(_PaeLikeFormat):
    """VT-d second stage: R/W, PS for superpages, A/D (SSADE), SNP. No present bit: an
    entry is present iff R|W."""

    PRESENT: ClassVar[int] = SS_R | SS_W
    PS: ClassVar[int] = SS_PS

    snp: bool

    def arch_level(self, level: int) -> str:
        return f"SL{level + 1}"

    def prot_to_attrs(self, prot: int) -> int:
        check_prot(prot)
        bits = SS_SNP if self.snp else 0
        if prot & IOMMU_READ:
            bits |= SS_R
        if prot & IOMMU_WRITE:
            bits |= SS_W
        return bits

    def make_leaf(self, oa: int, level: int, attrs_bits: int, pgsize: int) -> int:
        return attrs_bits | (SS_PS if level else 0) | oa

    def make_table(self, table_pa: int, level: int) -> int:
        return table_pa | SS_R | SS_W

    def leaf_prot(self, pte: int) -> int:
        return (IOMMU_READ if pte & SS_R else 0) | (IOMMU_WRITE if pte & SS_W else 0)

    def leaf_perms(self, pte: int, acc: int) -> tuple[bool, bool, bool, bool]:
        readable = bool(acc & pte & SS_R)
        return readable, bool(acc & pte & SS_W), readable, True

    def is_dirty(self, pte: int) -> bool:
        return bool(pte & SS_D)

    def make_clean(self, pte: int) -> int:
        return pte & ~SS_D

    def make_dirty(self, pte: int) -> int:
        return pte | SS_D

    def hw_info(self, root: int) -> VtdSsTableInfo:
        return VtdSsTableInfo(root=root, levels=self.levels, aw=self.levels - 2)

    def describe_fields(self, pte: int, level: int) -> tuple[str, list[DescField]]:
        kind = self.classify(pte, level)
        if kind == EMPTY:
            return "not-present", [
                DescField(name="RW", value=0, meaning="neither R nor W: not present")
            ]
        if kind == INVALID:
            return "reserved", [
                DescField(name="PS", value=1, meaning="no superpage this size here")
            ]
        f = [
            DescField(name="R", value=pte & 1, meaning="read"),
            DescField(name="W", value=(pte >> 1) & 1, meaning="write"),
        ]
        if kind == TABLE:
            f.append(DescField(name="A", value=(pte >> 8) & 1, meaning="accessed (SSADE)"))
            f.append(DescField(name="next", value=self.table_pa(pte), meaning="next-level table"))
            return "table", f
        oa, size = self.leaf_oa_size(pte, level)
        f += [
            DescField(name="PS", value=(pte >> 7) & 1, meaning="superpage"),
            DescField(name="A", value=(pte >> 8) & 1, meaning="accessed (SSADE)"),
            DescField(name="D", value=(pte >> 9) & 1, meaning="dirty (SSADE)"),
            DescField(name="SNP", value=(pte >> 11) & 1, meaning="snoop"),
            DescField(name="OA", value=oa, meaning=f"output address, {size:#x} bytes"),
        ]
        return "page", f


def make_x86_64(*, levels: int, oas: int, sign_extend: bool) -> X86_64Format:
    if levels not in (4, 5):
        fail(errno.EINVAL, f"x86-64 paging has 4 or 5 levels, not {levels}")
    if not 32 <= oas <= 52:
        fail(errno.EINVAL, f"x86-64 output size {oas} out of range")
    shifts, bits, sizes = _radix_4k(levels)
    ias = 12 + 9 * levels
    half = 1 << (ias - 1)
    # Sign-extended tables take both canonical halves; otherwise Linux keeps to the lower
    # half so one table serves requests with and without PASID (vtd_amd.md §A5.2, §B7).
    ranges = ((0, half - 1), (U64_MAX + 1 - half, U64_MAX)) if sign_extend else ((0, half - 1),)
    leaf = (_SZ_4K, _SZ_2M, _SZ_1G) + (0,) * (levels - 3)
    return X86_64Format(
        name="x86_64",
        params=(("levels", levels), ("oas", oas), ("sign_extend", int(sign_extend))),
        levels=levels,
        level_shift=shifts,
        level_bits=bits,
        table_size=sizes,
        leaf_sizes=leaf,
        pgsize_bitmap=_SZ_4K | _SZ_2M | _SZ_1G,
        ias=ias,
        oas=oas,
        va_ranges=ranges,
        sign_extend=sign_extend,
        dirty_tracking=True,
        attr_and_mask=X86_RW | X86_US,
        attr_or_mask=X86_XD,
        accessed_table_bit=X86_A,
        accessed_leaf_bit=X86_A,
    )


def make_vtd_ss(*, levels: int, oas: int, snp: bool) -> VtdSsFormat:
    if levels not in (3, 4, 5):
        fail(errno.EINVAL, f"VT-d second stage has 3, 4 or 5 levels, not {levels}")
    if not 32 <= oas <= 52:
        fail(errno.EINVAL, f"VT-d output size {oas} out of range")
    shifts, bits, sizes = _radix_4k(levels)
    ias = 12 + 9 * levels
    leaf = (_SZ_4K, _SZ_2M, _SZ_1G) + (0,) * (levels - 3)
    return VtdSsFormat(
        name="vtd_ss",
        params=(("levels", levels), ("oas", oas), ("snp", int(snp))),
        levels=levels,
        level_shift=shifts,
        level_bits=bits,
        table_size=sizes,
        leaf_sizes=leaf,
        pgsize_bitmap=_SZ_4K | _SZ_2M | _SZ_1G,
        ias=ias,
        oas=oas,
        va_ranges=((0, (1 << ias) - 1),),
        dirty_tracking=True,
        attr_and_mask=SS_R | SS_W,
        accessed_table_bit=SS_A,
        accessed_leaf_bit=SS_A,
        snp=snp,
    )

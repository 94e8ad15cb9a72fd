"""AMD-Vi v1 host page tables (vtd_amd.md §B6; generic_pt ``amdv1.h``) and the iommufd
selftest ``mock`` variant of the same encoding with a 2 KiB granule."""

from __future__ import annotations

import errno

import attrs

from iommu_core.errors import fail
from iommu_core.pgtable.formats.base import (
    EMPTY,
    INVALID,
    LEAF,
    TABLE,
    DescField,
    PtFormat,
    TableHwInfo,
    bit_mask,
    check_prot,
    lg2,
)
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

PR = 1 << 0
A = 1 << 5  # accessed, hardware-set when DTE.HAD enables it
D = 1 << 6  # host dirty
NL_SHIFT = 9
NL_MASK = 7 << NL_SHIFT
NL_DEFAULT = 0  # leaf of this level's default size
NL_SIZE = 7  # leaf of a non-default size encoded in the address field
U = 1 << 59
FC = 1 << 60
IR = 1 << 61
IW = 1 << 62
_FIELD_MASK = (1 << 40) - 1  # address field, bits 51:12
_SZ_512G = 1 << 39


def _ffz(x: int) -> int:
    """Index of the lowest zero bit."""
    return ((x + 1) & ~x).bit_length() - 1


@attrs.frozen(kw_only=True)
class AmdV1TableInfo(TableHwInfo):
    """DTE Host Page Table Root Pointer (``root``) and Mode (= number of levels)."""

    mode: int


@attrs.frozen(kw_only=True)
class AmdV1Format(PtFormat):
    """AMD v1: NextLevel-typed entries, IR/IW AND-ed along the walk, page sizes that are not
    a level's default encoded by NextLevel=7 and a run of ones in the address field, the
    leaf replicated over the slots it spans."""

    #: lg2 of the address unit of the OA field: 12 (AMD), 11 (the selftest mock).
    gran_shift: int
    #: FC (force coherent) on every leaf, as Linux sets it.
    force_coherent: bool
    #: Highest level that can hold a leaf (the 6-level top cannot).
    max_leaf_level: int

    def arch_level(self, level: int) -> str:
        return f"L{level + 1}"

    def _field(self, pa: int) -> int:
        return ((pa >> self.gran_shift) & _FIELD_MASK) << 12

    def prot_to_attrs(self, prot: int) -> int:
        check_prot(prot)
        bits = FC if self.force_coherent else 0
        if prot & IOMMU_READ:
            bits |= IR
        if prot & IOMMU_WRITE:
            bits |= IW
        return bits

    def make_leaf(self, oa: int, level: int, attrs_bits: int, pgsize: int) -> int:
        field = oa >> self.gran_shift
        if pgsize == 1 << self.level_shift[level]:
            return PR | attrs_bits | (field << 12)
        # Non-default size: low address bits set up to (size/granule)/2 - 1, next bit 0.
        field |= (1 << (lg2(pgsize) - self.gran_shift - 1)) - 1
        return PR | attrs_bits | (NL_SIZE << NL_SHIFT) | ((field & _FIELD_MASK) << 12)

    def make_table(self, table_pa: int, level: int) -> int:
        # IR/IW are AND-ed along the walk, so tables grant both and leaves decide.
        return PR | (level << NL_SHIFT) | self._field(table_pa) | IR | IW

    def _size_lg2(self, pte: int, level: int) -> int:
        if (pte >> NL_SHIFT) & 7 == NL_SIZE:
            return self.gran_shift + _ffz((pte >> 12) & _FIELD_MASK) + 1
        return self.level_shift[level]

    def classify(self, pte: int, level: int) -> int:
        if not pte & PR:
            return EMPTY
        nl = (pte >> NL_SHIFT) & 7
        if nl in (NL_DEFAULT, NL_SIZE):
            if level > self.max_leaf_level:
                return INVALID
            if nl == NL_SIZE:
                # A replicated leaf spans 2..256 slots of its table.
                span = self._size_lg2(pte, level) - self.level_shift[level]
                if not 1 <= span <= 8:
                    return INVALID
            return LEAF
        # Level skipping is not modelled: Linux never skips and treats it as not found.
        return TABLE if nl == level and level else INVALID

    def table_pa(self, pte: int) -> int:
        return ((pte >> 12) & _FIELD_MASK) << self.gran_shift

    def leaf_oa_size(self, pte: int, level: int) -> tuple[int, int]:
        size_lg2 = self._size_lg2(pte, level)
        field = (pte >> 12) & _FIELD_MASK
        field &= ~((1 << (size_lg2 - self.gran_shift)) - 1)
        return field << self.gran_shift, 1 << size_lg2

    def leaf_prot(self, pte: int) -> int:
        return (IOMMU_READ if pte & IR else 0) | (IOMMU_WRITE if pte & IW else 0)

    def leaf_perms(self, pte: int, acc: int) -> tuple[bool, bool, bool, bool]:
        readable = bool(acc & pte & IR)
        return readable, bool(acc & pte & IW), readable, True

    def is_dirty(self, pte: int) -> bool:
        return bool(pte & D)

    def make_clean(self, pte: int) -> int:
        return pte & ~D

    def make_dirty(self, pte: int) -> int:
        return pte | D

    def hw_info(self, root: int) -> AmdV1TableInfo:
        return AmdV1TableInfo(root=root, levels=self.levels, mode=self.levels)

    def describe_fields(self, pte: int, level: int) -> tuple[str, list[DescField]]:
        kind = self.classify(pte, level)
        nl = (pte >> NL_SHIFT) & 7
        if kind == EMPTY:
            return "not-present", [DescField(name="PR", value=0, meaning="not present")]
        head = [
            DescField(name="PR", value=1, meaning="present"),
            DescField(name="A", value=(pte >> 5) & 1, meaning="accessed"),
        ]
        if kind == INVALID:
            return "reserved", [
                *head,
                DescField(name="NextLevel", value=nl, meaning="not valid here"),
            ]
        if kind == TABLE:
            return "table", [
                *head,
                DescField(name="NextLevel", value=nl, meaning=f"points to a level-{nl} table"),
                DescField(name="next", value=self.table_pa(pte), meaning="next-level table"),
                DescField(name="IR", value=(pte >> 61) & 1, meaning="read allowed below"),
                DescField(name="IW", value=(pte >> 62) & 1, meaning="write allowed below"),
            ]
        oa, size = self.leaf_oa_size(pte, level)
        return "page", [
            *head,
            DescField(name="D", value=(pte >> 6) & 1, meaning="dirty"),
            DescField(
                name="NextLevel",
                value=nl,
                meaning="non-default page size" if nl == NL_SIZE else "default page size",
            ),
            DescField(name="OA", value=oa, meaning=f"output address, {size:#x} bytes"),
            DescField(name="U", value=(pte >> 59) & 1, meaning="ATS untranslated only"),
            DescField(name="FC", value=(pte >> 60) & 1, meaning="force coherent"),
            DescField(name="IR", value=(pte >> 61) & 1, meaning="read"),
            DescField(name="IW", value=(pte >> 62) & 1, meaning="write"),
        ]


def make_amd_v1(
    *,
    name: str,
    levels: int,
    oas: int,
    gran_shift: int,
    max_top_level: int,
    force_coherent: bool,
) -> AmdV1Format:
    if not 1 <= levels <= max_top_level + 1:
        fail(errno.EINVAL, f"{name} has 1 to {max_top_level + 1} levels, not {levels}")
    if not 32 <= oas <= 52:
        fail(errno.EINVAL, f"{name} output size {oas} out of range")
    shifts = tuple(gran_shift + 9 * level for level in range(levels))
    ias = min(64, gran_shift + 9 * levels)
    bits = tuple(min(9, ias - s) for s in shifts)
    max_leaf_level = min(levels - 1, max_top_level - 1)
    # Every power of two from the level's entry size up to half its table, below 2^52;
    # 512 GiB is excluded (hardware bug); nothing at or above the output size.
    leaf = tuple(
        (bit_mask(min(51, s + 8), s) & ~_SZ_512G & ((1 << oas) - 1))
        if level <= max_leaf_level
        else 0
        for level, s in enumerate(shifts)
    )
    pgsizes = 0
    for sizes in leaf:
        pgsizes |= sizes
    params: tuple[tuple[str, int], ...] = (("levels", levels), ("oas", oas))
    return AmdV1Format(
        name=name,
        params=params,
        levels=levels,
        level_shift=shifts,
        level_bits=bits,
        table_size=(4096,) * levels,
        leaf_sizes=leaf,
        pgsize_bitmap=pgsizes,
        ias=ias,
        oas=oas,
        va_ranges=((0, (1 << ias) - 1),),
        dirty_tracking=True,
        attr_and_mask=IR | IW,
        accessed_table_bit=A,
        accessed_leaf_bit=A,
        gran_shift=gran_shift,
        force_coherent=force_coherent,
        max_leaf_level=max_leaf_level,
    )

"""What every page-table format provides: geometry as data, and small codecs.

A format is a frozen value: the radix geometry (levels, index bits, table sizes, which
levels may hold leaves of which sizes, input/output address widths) plus the encoders and
decoders of its descriptors. The table manager (:mod:`iommu_core.pgtable.table`), the
walker (:mod:`iommu_core.pgtable.walk`) and :func:`~iommu_core.pgtable.describe.describe`
are written once against this interface.

Levels are numbered as in generic_pt: level 0 holds the smallest leaves (ARM level 3,
x86/VT-d/AMD "level 1"); ``levels - 1`` is the top table. :meth:`PtFormat.arch_level`
gives the architecture's own name for a level.
"""

from __future__ import annotations

import errno

import attrs

from iommu_core.errors import fail
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

U64_MAX = (1 << 64) - 1

#: Entry kinds returned by :meth:`PtFormat.classify`.
EMPTY = 0  # not present
TABLE = 1  # points to a next-level table
LEAF = 2  # maps an output address (page or block)
INVALID = 3  # present but a reserved encoding at this level: hardware faults on it

KIND_NAMES = ("empty", "table", "leaf", "invalid")


def bit_mask(hi: int, lo: int) -> int:
    """GENMASK_ULL(hi, lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def lg2(x: int) -> int:
    return x.bit_length() - 1


@attrs.frozen(kw_only=True)
class DescField:
    """One named field of a descriptor, for people (see :func:`describe`)."""

    name: str
    value: int
    meaning: str = ""

    def __str__(self) -> str:
        v = f"{self.value:#x}" if self.value > 9 else str(self.value)
        return f"{self.name}={v}"


@attrs.frozen(kw_only=True)
class TableHwInfo:
    """What a driver programs into hardware to point it at a table."""

    root: int
    levels: int


@attrs.frozen(kw_only=True)
class PtFormat:
    """A page-table format: geometry as data plus descriptor codecs.

    Subclasses (one per architecture family) implement the codec methods. Everything is
    immutable, so a format is hashable and may be shared by any number of tables.
    """

    #: Registry name (``"arm_lpae_s1"``...).
    name: str
    #: The factory parameters, for display and equality.
    params: tuple[tuple[str, int], ...]
    levels: int
    #: lg2 of the span of one entry at each level (index 0 = leaf-most level).
    level_shift: tuple[int, ...]
    #: Index bits of a table at each level (the top level may differ).
    level_bits: tuple[int, ...]
    #: Bytes of one table at each level.
    table_size: tuple[int, ...]
    #: Bitmap of the leaf sizes hardware decodes at each level.
    leaf_sizes: tuple[int, ...]
    #: Page sizes software maps with (Linux ``pgsize_bitmap``); a subset of the leaf sizes.
    pgsize_bitmap: int
    #: Input (IOVA) bits the table translates, and output address bits.
    ias: int
    oas: int
    #: Valid IOVA ranges (first, last), inclusive: one, or two for sign-extended formats.
    va_ranges: tuple[tuple[int, int], ...]
    sign_extend: bool = False
    #: The format has a hardware dirty bit (read_and_clear_dirty works).
    dirty_tracking: bool = False
    #: Walker support: table attribute bits AND-ed / OR-ed into ``WalkResult.attrs``.
    attr_and_mask: int = 0
    attr_or_mask: int = 0
    #: Accessed bits hardware sets in table and leaf entries (0: none).
    accessed_table_bit: int = 0
    accessed_leaf_bit: int = 0
    #: Leaves without the accessed bit fault unless hardware updates it (ARM AF).
    access_flag_faults: bool = False

    # -- geometry ---------------------------------------------------------------------------
    @property
    def top_level(self) -> int:
        return self.levels - 1

    @property
    def granule(self) -> int:
        """The smallest leaf size."""
        return 1 << self.level_shift[0]

    def index(self, iova: int, level: int) -> int:
        return (iova >> self.level_shift[level]) & ((1 << self.level_bits[level]) - 1)

    def va_ok(self, first: int, last: int | None = None) -> bool:
        """Whether [first, last] lies inside one valid IOVA range."""
        if last is None:
            last = first
        return any(lo <= first and last <= hi for lo, hi in self.va_ranges)

    def leaf_level(self, pgsize: int) -> tuple[int, int]:
        """(level, replicated entries) that hold one leaf of ``pgsize``.

        Replication > 1 only for AMD v1 non-default page sizes.
        """
        for level in range(self.top_level, -1, -1):
            if self.leaf_sizes[level] & pgsize:
                return level, pgsize >> self.level_shift[level]
        fail(errno.EINVAL, f"{self.name}: no level holds {pgsize:#x} pages")

    def arch_level(self, level: int) -> str:
        """The architecture's name for a level (``"L3"``, ``"PML4"``...)."""
        return f"L{level}"

    def with_pgsizes(self, bitmap: int) -> PtFormat:
        """The same format with software page sizes restricted to ``bitmap``
        (a driver without 1G support, the mock's 2K-only domains...)."""
        new = self.pgsize_bitmap & bitmap
        if not new:
            fail(errno.EINVAL, f"{self.name}: no page size left in {bitmap:#x}")
        return attrs.evolve(self, pgsize_bitmap=new)

    def hw_info(self, root: int) -> TableHwInfo:
        return TableHwInfo(root=root, levels=self.levels)

    def describe_name(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name}({args})"

    # -- codecs (per family) ----------------------------------------------------------------
    def prot_to_attrs(self, prot: int) -> int:
        """Leaf attribute bits for IOMMU_* ``prot`` (no type, size or address bits)."""
        raise NotImplementedError

    def make_leaf(self, oa: int, level: int, attrs_bits: int, pgsize: int) -> int:
        """The descriptor of a leaf (each replicated slot holds the same value)."""
        raise NotImplementedError

    def make_table(self, table_pa: int, level: int) -> int:
        """The descriptor at ``level`` pointing to a table of ``level - 1``."""
        raise NotImplementedError

    def classify(self, pte: int, level: int) -> int:
        """EMPTY, TABLE, LEAF or INVALID."""
        raise NotImplementedError

    def table_pa(self, pte: int) -> int:
        raise NotImplementedError

    def leaf_oa_size(self, pte: int, level: int) -> tuple[int, int]:
        """(output address of the leaf's first byte, leaf size)."""
        raise NotImplementedError

    def leaf_prot(self, pte: int) -> int:
        """The IOMMU_READ/WRITE bits a leaf grants (what ``prot`` survived encoding)."""
        raise NotImplementedError

    def leaf_perms(self, pte: int, acc: int) -> tuple[bool, bool, bool, bool]:
        """(readable, writable, executable, user) of a leaf, given the table attributes
        accumulated on the way down (``WalkResult.attrs``)."""
        raise NotImplementedError

    # -- dirty tracking -----------------------------------------------------------------------
    def is_dirty(self, pte: int) -> bool:
        return False

    def make_clean(self, pte: int) -> int:
        return pte

    def make_dirty(self, pte: int) -> int:
        """What a hardware write does to the leaf when it updates dirty state."""
        return pte

    def write_needs_dirty_update(self, pte: int) -> bool:
        """A write is only permitted once hardware marks the leaf dirty (ARM DBM
        writable-clean); without hardware dirty update it is a permission fault."""
        return False

    # -- people -------------------------------------------------------------------------------
    def describe_fields(self, pte: int, level: int) -> tuple[str, list[DescField]]:
        """(kind word, ordered fields) of a descriptor at ``level``."""
        raise NotImplementedError


def check_prot(prot: int) -> None:
    """Every format rejects a mapping that grants nothing (Linux: -EINVAL)."""
    if not prot & (IOMMU_READ | IOMMU_WRITE):
        fail(errno.EINVAL, "mapping needs IOMMU_READ or IOMMU_WRITE")

"""The one table walker every hardware model (and any tool reading tables) uses.

:func:`walk` translates one address through real descriptors in memory, the way the
hardware does on a TLB miss: checks, permission and access-flag faults, and optional
accessed/dirty updates written back to memory. :func:`iter_leaves` enumerates the leaves
of a range (dumps, dirty tracking, tests).

Nesting: ``table_xlate`` maps the address of every descriptor fetched (the table
pointers of a stage-1 table are stage-2 input addresses) to the address to read.
It may raise; the walker lets the exception through.

Paging-structure caches: ``start`` resumes a walk at a table a cache remembered (its
level, the address to read, the table attributes accumulated above it), and
``on_table`` reports every table the walk descends into, so a model can fill its cache.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import attrs

from iommu_core.pgtable.formats.base import LEAF, TABLE, PtFormat

ReadU64 = Callable[[int], int]
WriteU64 = Callable[[int, int], None]
FaultReason = Literal["translation", "address_size", "access_flag", "permission"]


class Access(enum.IntEnum):
    READ = 1
    WRITE = 2
    EXEC = 4


@attrs.frozen(kw_only=True)
class WalkResult:
    """A successful translation.

    ``level`` uses the format's numbering (0 = smallest pages; ``fmt.arch_level(level)``
    gives the architecture's name). ``readable``/``writable``/``executable`` are the
    effective permissions (table restrictions included), ``user`` whether unprivileged
    requests may use the page. ``writable`` is False for an ARM DBM writable-clean page
    (a write needs a dirty update first). ``attrs`` is the table attributes accumulated
    on the way down: x86 RW/US AND-ed and XD OR-ed; VT-d SS R/W AND-ed; AMD IR/IW AND-ed;
    ARM S1 APTable/UXNTable/PXNTable/NSTable OR-ed (bits at their descriptor positions).
    """

    ok: ClassVar[bool] = True
    iova: int
    oa: int
    page_size: int
    level: int
    desc_addr: int  # where the leaf descriptor was read (after table_xlate)
    desc: int  # its value, including any accessed/dirty update
    readable: bool
    writable: bool
    executable: bool
    user: bool
    dirty: bool
    attrs: int

    @property
    def page_base(self) -> int:
        return self.iova & -self.page_size

    @property
    def oa_base(self) -> int:
        return self.oa & -self.page_size


@attrs.frozen(kw_only=True)
class WalkFault:
    """A failed translation: the level and descriptor where the walk stopped
    (``desc_addr``/``desc`` None when the input address itself is out of range)."""

    ok: ClassVar[bool] = False
    iova: int
    level: int
    reason: FaultReason
    desc_addr: int | None
    desc: int | None
    access: Access


def walk(
    fmt: PtFormat,
    read_u64: ReadU64,
    root: int,
    iova: int,
    *,
    access: Access = Access.READ,
    privileged: bool = False,
    set_accessed: bool = False,
    set_dirty: bool = False,
    write_u64: WriteU64 | None = None,
    table_xlate: Callable[[int], int] | None = None,
    start: tuple[int, int, int] | None = None,
    on_table: Callable[[int, int, int], None] | None = None,
) -> WalkResult | WalkFault:
    """Translate ``iova`` through the table at ``root``.

    ``set_accessed``/``set_dirty`` model hardware A/D update (x86 A/D; VT-d SS A/D under
    SSADE; AMD v1 A/D under DTE.HAD; ARM HTTU: AF under HA, DBM writable-clean ->
    writable-dirty under HD); they need ``write_u64``. Without ``set_accessed`` an ARM
    leaf with AF=0 is an access-flag fault.

    ``start`` = (level, table, attrs): begin at that level's table, read at ``table``
    (not passed through ``table_xlate``), with ``attrs`` accumulated above it.
    ``on_table(level, next_table, attrs)`` is called for each table descriptor followed
    at ``level`` (``next_table`` as the descriptor holds it, ``attrs`` including it).
    """
    if (set_accessed or set_dirty) and write_u64 is None:
        raise ValueError("accessed/dirty updates need write_u64")
    level = fmt.levels - 1
    lo, hi = fmt.va_ranges[0]
    if not (lo <= iova <= hi or fmt.va_ok(iova)):
        return WalkFault(
            iova=iova, level=level, reason="translation", desc_addr=None, desc=None, access=access
        )
    shifts = fmt.level_shift
    bits = fmt.level_bits
    oa_limit_shift = fmt.oas
    acc = fmt.attr_and_mask
    or_mask = fmt.attr_or_mask
    not_and = ~fmt.attr_and_mask
    a_table = fmt.accessed_table_bit if set_accessed else 0
    touched: list[tuple[int, int]] = []
    classify, table_pa = fmt.classify, fmt.table_pa
    table = root
    xlate = table_xlate
    if start is not None:
        level, table, acc = start
        xlate = None  # the cached table address is the one to read
    while True:
        addr = table + (((iova >> shifts[level]) & ((1 << bits[level]) - 1)) << 3)
        if xlate is not None:
            addr = xlate(addr)
        xlate = table_xlate
        pte = read_u64(addr)
        kind = classify(pte, level)
        if kind == TABLE:
            nxt = table_pa(pte)
            if nxt >> oa_limit_shift:
                return WalkFault(
                    iova=iova,
                    level=level,
                    reason="address_size",
                    desc_addr=addr,
                    desc=pte,
                    access=access,
                )
            acc = (acc & (pte | not_and)) | (pte & or_mask)
            if a_table and not pte & a_table:
                touched.append((addr, pte | a_table))
            if on_table is not None:
                on_table(level, nxt, acc)
            table = nxt
            level -= 1
            continue
        if kind != LEAF:
            return WalkFault(
                iova=iova,
                level=level,
                reason="translation",
                desc_addr=addr,
                desc=pte,
                access=access,
            )
        break
    oa_base, size = fmt.leaf_oa_size(pte, level)
    if oa_base >> oa_limit_shift:
        return WalkFault(
            iova=iova, level=level, reason="address_size", desc_addr=addr, desc=pte, access=access
        )
    new = pte
    af = fmt.accessed_leaf_bit
    if af and not pte & af:
        if set_accessed:
            new |= af
        elif fmt.access_flag_faults:
            return WalkFault(
                iova=iova,
                level=level,
                reason="access_flag",
                desc_addr=addr,
                desc=pte,
                access=access,
            )
    if access is Access.WRITE and set_dirty and fmt.write_needs_dirty_update(new):
        new = fmt.make_dirty(new)  # HTTU: writable-clean becomes writable-dirty
    readable, writable, executable, user = fmt.leaf_perms(new, acc)
    if (
        (not privileged and not user)
        or (access is Access.READ and not readable)
        or (access is Access.WRITE and not writable)
        or (access is Access.EXEC and not executable)
    ):
        return WalkFault(
            iova=iova, level=level, reason="permission", desc_addr=addr, desc=pte, access=access
        )
    if access is Access.WRITE and set_dirty:
        new = fmt.make_dirty(new)
    if write_u64 is not None:
        for taddr, tval in touched:
            write_u64(taddr, tval)
        if new != pte:
            write_u64(addr, new)
    return WalkResult(
        iova=iova,
        oa=oa_base + (iova & (size - 1)),
        page_size=size,
        level=level,
        desc_addr=addr,
        desc=new,
        readable=readable,
        writable=writable,
        executable=executable,
        user=user,
        dirty=fmt.is_dirty(new),
        attrs=acc,
    )


@attrs.frozen(kw_only=True)
class Leaf:
    """One leaf found in a table: ``iova`` and ``oa`` of its first byte, its size, and
    its descriptor (the first of ``nrep`` replicated slots for AMD non-default sizes)."""

    iova: int
    oa: int
    size: int
    level: int
    desc_addr: int
    desc: int
    nrep: int


def iter_leaves(
    fmt: PtFormat,
    read_u64: ReadU64,
    root: int,
    first: int = 0,
    last: int = (1 << 64) - 1,
    *,
    table_xlate: Callable[[int], int] | None = None,
) -> Iterator[Leaf]:
    """Leaves intersecting [first, last] in IOVA order, read from the tables.

    Malformed entries and table pointers are skipped (the walker reports them)."""
    for lo, hi in fmt.va_ranges:
        lo, hi = max(lo, first), min(hi, last)
        if lo <= hi:
            yield from _iter_level(fmt, read_u64, table_xlate, root, fmt.levels - 1, lo, hi)


def _iter_level(
    fmt: PtFormat,
    read_u64: ReadU64,
    xlate: Callable[[int], int] | None,
    table: int,
    level: int,
    first: int,
    last: int,
) -> Iterator[Leaf]:
    shift = fmt.level_shift[level]
    nbits = fmt.level_bits[level]
    mask = (1 << nbits) - 1
    span = 1 << shift
    va = first
    while va <= last:
        idx = (va >> shift) & mask
        addr = table + (idx << 3)
        if xlate is not None:
            addr = xlate(addr)
        pte = read_u64(addr)
        kind = fmt.classify(pte, level)
        item = va & -span
        if kind == TABLE:
            yield from _iter_level(
                fmt, read_u64, xlate, fmt.table_pa(pte), level - 1, va, min(last, item + span - 1)
            )
            va = item + span
        elif kind == LEAF:
            oa, size = fmt.leaf_oa_size(pte, level)
            nrep = max(1, size >> shift)
            start = va & -size
            if nrep > 1 and idx & (nrep - 1):
                # Entered a replicated leaf past its first slot: report it from the first.
                first_idx = idx & ~(nrep - 1)
                addr = table + (first_idx << 3)
                if xlate is not None:
                    addr = xlate(addr)
                pte = read_u64(addr)
            yield Leaf(
                iova=start, oa=oa, size=size, level=level, desc_addr=addr, desc=pte, nrep=nrep
            )
            va = start + size
        else:
            va = item + span

"""A domain's page table: the interval map plus the real radix tables in memory.

Every ``map_pages``/``unmap_pages`` updates both, so hardware models walking the
descriptors see exactly what the interval map says (and the dirty/accessed bits they set
live in the descriptors). A driver uses it like this::

    pt = IoPageTable(formats.arm_lpae_s1(), PhysTableMemory(mem, page_alloc))
    program(pt.hw_info)                      # root, levels, TCR fields...
    pt.map(iova, paddr, size, IOMMU_READ | IOMMU_WRITE)
    gather = IotlbGather()
    pt.unmap(iova, size, gather)             # freed tables go to gather.freelist
    flush_iotlb(gather); pt.release_freelist(gather)
    pt.free()
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from iommu_core.errors import IommuError, fail
from iommu_core.gather import IotlbGather
from iommu_core.pgtable.formats.base import EMPTY, LEAF, TABLE, PtFormat, TableHwInfo
from iommu_core.pgtable.intervals import IntervalMap, Mapping
from iommu_core.pgtable.memory import TableMemory, table_order
from iommu_core.pgtable.pgsize import iommu_pgsize
from iommu_core.pgtable.walk import Access, Leaf, WalkFault, WalkResult, iter_leaves, walk
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.prot import IOMMU_DIRTY_NO_CLEAR


class IoPageTable:
    """Interval map + radix tables of format ``fmt`` in ``mem``, kept in step."""

    __slots__ = ("_imap", "_level", "_read", "_used", "_write", "fmt", "mem", "root")

    def __init__(self, fmt: PtFormat, mem: TableMemory) -> None:
        self.fmt = fmt
        self.mem = mem
        self._read = mem.read_u64
        self._write = mem.write_u64
        self._imap = IntervalMap(fmt.pgsize_bitmap, fmt.va_ranges, fmt.oas)
        #: Live tables: present entries (replicated slots counted each) and level.
        self._used: dict[int, int] = {}
        self._level: dict[int, int] = {}
        self.root = self._alloc(fmt.top_level)

    # -- what drivers program ------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return self.fmt.levels

    @property
    def pgsize_bitmap(self) -> int:
        return self.fmt.pgsize_bitmap

    @property
    def ias(self) -> int:
        return self.fmt.ias

    @property
    def oas(self) -> int:
        return self.fmt.oas

    @property
    def hw_info(self) -> TableHwInfo:
        """Root and format fields (ARM TCR/VTCR, VT-d AW, AMD Mode...)."""
        return self.fmt.hw_info(self.root)

    @property
    def intervals(self) -> IntervalMap:
        """The interval map (read it; change it only through this table)."""
        return self._imap

    @property
    def table_count(self) -> int:
        return len(self._used)

    # -- table pages ---------------------------------------------------------------------------
    def _alloc(self, level: int) -> int:
        addr = self.mem.alloc_table(self.fmt.table_size[level])
        self._used[addr] = 0
        self._level[addr] = level
        return addr

    def _table_for(self, va: int, level: int) -> int:
        """The table holding ``level`` entries for ``va``, creating missing tables."""
        fmt = self.fmt
        shifts, bits = fmt.level_shift, fmt.level_bits
        read = self._read
        table = self.root
        lvl = fmt.levels - 1
        while lvl > level:
            addr = table + (((va >> shifts[lvl]) & ((1 << bits[lvl]) - 1)) << 3)
            pte = read(addr)
            kind = fmt.classify(pte, lvl)
            if kind == TABLE:
                table = fmt.table_pa(pte)
            elif kind == EMPTY:
                new = self._alloc(lvl - 1)
                self._write(addr, fmt.make_table(new, lvl))
                self._used[table] += 1
                table = new
            else:
                # The interval map refused overlaps, so only foreign writes get here.
                fail(errno.EADDRINUSE, f"unexpected descriptor {pte:#x} at {addr:#x}")
            lvl -= 1
        return table

    def _clear(
        self, table: int, level: int, start: int, end: int, freed: list[tuple[int, int]]
    ) -> None:
        """Clear the leaves of [start, end) under ``table`` (whole leaves only) and unlink
        tables that become empty, appending them to ``freed`` as (address, level)."""
        fmt = self.fmt
        read, write, used = self._read, self._write, self._used
        shift = fmt.level_shift[level]
        span = 1 << shift
        mask = (1 << fmt.level_bits[level]) - 1
        va = start
        while va < end:
            idx = (va >> shift) & mask
            addr = table + (idx << 3)
            pte = read(addr)
            kind = fmt.classify(pte, level)
            item = va & -span
            if kind == LEAF:
                size = fmt.leaf_oa_size(pte, level)[1]
                nrep = size >> shift
                if nrep > 1:  # AMD non-default size: clear every replicated slot
                    addr -= (idx & (nrep - 1)) << 3
                    for k in range(nrep):
                        write(addr + (k << 3), 0)
                else:
                    write(addr, 0)
                used[table] -= nrep
                va = (va & -size) + size
                continue
            if kind == TABLE:
                child = fmt.table_pa(pte)
                self._clear(child, level - 1, va, min(end, item + span), freed)
                if not used[child]:
                    write(addr, 0)
                    used[table] -= 1
                    del used[child]
                    del self._level[child]
                    freed.append((child, level - 1))
            va = item + span

    def _release(self, freed: list[tuple[int, int]], gather: IotlbGather | None) -> None:
        sizes = self.fmt.table_size
        for addr, level in freed:
            if gather is not None:
                # Walkers may still hold the table until the IOTLB flush: defer.
                gather.add_freed_table(addr, table_order(sizes[level]))
            else:
                self.mem.free_table(addr, sizes[level])

    # -- map / unmap ---------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int) -> int:
        """Map ``pgcount`` pages of ``pgsize`` (one descriptor per page, or the replicated
        slots of an AMD non-default size); returns the bytes mapped. Errors as
        :class:`IntervalMap`; a failed call (ENOMEM included) changes nothing."""
        if not self._used:
            fail(errno.EINVAL, "page table already freed")
        fmt = self.fmt
        attrs_bits = fmt.prot_to_attrs(prot)
        size = self._imap.map_pages(iova, paddr, pgsize, pgcount, prot)
        level, nrep = fmt.leaf_level(pgsize)
        shift = fmt.level_shift[level]
        entries = 1 << fmt.level_bits[level]
        write, used, make_leaf = self._write, self._used, fmt.make_leaf
        va, pa, end = iova, paddr, iova + size
        try:
            while va < end:
                table = self._table_for(va, level)
                idx = (va >> shift) & (entries - 1)
                n = min((end - va) // pgsize, (entries - idx) // nrep)
                addr = table + (idx << 3)
                for _ in range(n):
                    pte = make_leaf(pa, level, attrs_bits, pgsize)
                    for _ in range(nrep):
                        write(addr, pte)
                        addr += 8
                    pa += pgsize
                used[table] += n * nrep
                va += n * pgsize
        except BaseException:
            # Undo: leaves written so far and tables created on the failing path.
            freed: list[tuple[int, int]] = []
            self._clear(self.root, fmt.levels - 1, iova, min(end, va + pgsize), freed)
            self._release(freed, None)
            self._imap.unmap_pages(iova, pgsize, pgcount)
            raise
        return size

    def unmap_pages(
        self, iova: int, pgsize: int, pgcount: int, gather: IotlbGather | None = None
    ) -> int:
        """Unmap up to ``pgsize * pgcount`` bytes from ``iova`` (whole leaves, stopping at
        a hole); returns the bytes unmapped. With a ``gather`` the range is added to it and
        emptied tables go to ``gather.freelist`` (free them with :meth:`release_freelist`
        after the IOTLB flush); without one they are freed at once."""
        done = self._imap.unmap_pages(iova, pgsize, pgcount, gather)
        if done:
            freed: list[tuple[int, int]] = []
            self._clear(self.root, self.fmt.levels - 1, iova, iova + done, freed)
            if freed:
                self._release(freed, gather)
        return done

    def map(self, iova: int, paddr: int, size: int, prot: int) -> int:
        """``iommu_map()``: split into the largest page sizes alignment allows; on failure
        unmap what was mapped and re-raise. Returns ``size``."""
        min_pg = self.fmt.pgsize_bitmap & -self.fmt.pgsize_bitmap
        if (iova | paddr | size) & (min_pg - 1):
            fail(
                errno.EINVAL,
                f"iova {iova:#x} paddr {paddr:#x} size {size:#x} not {min_pg:#x} aligned",
            )
        done = 0
        while done < size:
            pgsize, count = iommu_pgsize(
                self.fmt.pgsize_bitmap, iova + done, paddr + done, size - done
            )
            try:
                done += self.map_pages(iova + done, paddr + done, pgsize, count, prot)
            except IommuError:
                if done:
                    self.unmap(iova, done)
                raise
        return done

    def unmap(self, iova: int, size: int, gather: IotlbGather | None = None) -> int:
        """``iommu_unmap()``: returns the bytes unmapped (more than ``size`` if it ends
        inside a large page; less if it hits a hole; 0 if unaligned)."""
        min_pg = self.fmt.pgsize_bitmap & -self.fmt.pgsize_bitmap
        if (iova | size) & (min_pg - 1):
            return 0
        done = 0
        while done < size:
            pgsize, count = iommu_pgsize(
                self.fmt.pgsize_bitmap, iova + done, iova + done, size - done
            )
            n = self.unmap_pages(iova + done, pgsize, count, gather)
            if not n:
                break
            done += n
        return done

    def release_freelist(self, gather: IotlbGather) -> None:
        """Free the tables an unmap deferred to ``gather`` (after the IOTLB flush)."""
        for addr, order in gather.freelist:
            self.mem.free_table(addr, PAGE_SIZE << order)
        gather.freelist.clear()

    def free(self) -> None:
        """Free every table (the domain is gone). Tables still on a gather's freelist
        belong to that gather: release it first."""
        sizes = self.fmt.table_size
        for addr, level in self._level.items():
            self.mem.free_table(addr, sizes[level])
        self._level.clear()
        self._used.clear()
        self._imap.clear()

    # -- lookups -------------------------------------------------------------------------------
    def iova_to_phys(self, iova: int) -> int:
        """Output address for ``iova``, 0 when unmapped (the interval map answers)."""
        return self._imap.iova_to_phys(iova)

    def iter_mappings(self, first: int = 0, last: int = (1 << 64) - 1) -> Iterator[Mapping]:
        return self._imap.iter_range(first, last)

    def iter_leaves(self, first: int = 0, last: int = (1 << 64) - 1) -> Iterator[Leaf]:
        """Leaves as the descriptors in memory hold them."""
        return iter_leaves(self.fmt, self._read, self.root, first, last)

    def walk(
        self,
        iova: int,
        access: Access = Access.READ,
        *,
        privileged: bool = False,
        set_accessed: bool = False,
        set_dirty: bool = False,
    ) -> WalkResult | WalkFault:
        """What the hardware would find for ``iova`` (see :func:`walk`)."""
        return walk(
            self.fmt,
            self._read,
            self.root,
            iova,
            access=access,
            privileged=privileged,
            set_accessed=set_accessed,
            set_dirty=set_dirty,
            write_u64=self._write,
        )

    # -- dirty tracking ------------------------------------------------------------------------
    def read_and_clear_dirty(
        self, iova: int, size: int, flags: int, record: Callable[[int, int], None]
    ) -> None:
        """Call ``record(leaf_iova, leaf_size)`` for every dirty leaf intersecting
        [iova, iova+size) and clean it, unless ``flags`` has IOMMU_DIRTY_NO_CLEAR.
        A replicated AMD leaf is dirty if any of its slots is."""
        fmt = self.fmt
        if not fmt.dirty_tracking:
            fail(errno.EOPNOTSUPP, f"{fmt.name} has no dirty bit")
        if size <= 0:
            return
        clear = not flags & IOMMU_DIRTY_NO_CLEAR
        read, write = self._read, self._write
        for leaf in iter_leaves(fmt, read, self.root, iova, iova + size - 1):
            dirty = False
            for k in range(leaf.nrep):
                addr = leaf.desc_addr + (k << 3)
                pte = leaf.desc if k == 0 else read(addr)
                if fmt.is_dirty(pte):
                    dirty = True
                    if clear:
                        write(addr, fmt.make_clean(pte))
            if dirty:
                record(leaf.iova, leaf.size)

    def set_dirty(self, iova: int) -> None:
        """Mark the leaf mapping ``iova`` dirty as a hardware write would (the selftest's
        IOMMU_TEST_OP_DIRTY); ENOENT if ``iova`` is unmapped."""
        for leaf in iter_leaves(self.fmt, self._read, self.root, iova, iova):
            slot = leaf.desc_addr + (((iova - leaf.iova) * leaf.nrep // leaf.size) << 3)
            self._write(slot, self.fmt.make_dirty(self._read(slot)))
            return
        fail(errno.ENOENT, f"iova {iova:#x} not mapped")

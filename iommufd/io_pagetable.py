"""``struct io_pagetable`` (drivers/iommu/iommufd/io_pagetable.c): the IOVA space of an
IOAS and its replication into every attached paging domain.

* ``areas``: the mappings, non-overlapping, each a slice of an :class:`IoptPages`;
  an area is never split by unmap.
* ``reserved``: ranges no mapping may use (domain apertures, device reserved regions,
  the selftest's ADD_RESERVED), each with an owner; they may overlap each other.
* ``allowed``: optional user list of ranges the IOVA allocator must stay inside.
* ``domains``: every paging domain of every HWPT on this IOAS. Each area is mapped into
  each domain through ``IommuCore.iommu_map``; pages are pinned once per area.
"""

from __future__ import annotations

import bisect
import errno
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedDict

from iommu_core.device import ResvType
from iommu_core.dirty import IommuDirtyBitmap
from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.platform.mm import HPAGE_SIZE
from iommu_core.prot import IOMMU_DIRTY_NO_CLEAR, IOMMU_WRITE
from iommu_core.trace import traced
from iommufd.pages import AddressType, IoptPages
from iommufd.private import ULONG_MAX

if TYPE_CHECKING:
    from iommu_core.iommu import IommuCore
    from iommu_core.platform.bus import Device
    from iommu_core.trace import Tracer
    from iommufd.access import IommufdAccess

#: ``iopt_alloc_iova`` searches [PAGE_SIZE, ULONG_MAX - PAGE_SIZE].
_ALLOC_FIRST = PAGE_SIZE
_ALLOC_LAST = ULONG_MAX - PAGE_SIZE
#: The largest automatic alignment: THP is built in, so HPAGE_SIZE.
_MAX_ALIGNMENT = HPAGE_SIZE


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


class IoptArea:
    """``struct iopt_area``: [iova, last] mapping bytes of ``pages`` from ``start_byte``."""

    __slots__ = ("iommu_prot", "iova", "last", "num_accesses", "num_locks", "page_offset",
                 "pages", "pages_first", "pages_last", "prevent_access", "start_byte",
                 "storage")

    def __init__(self, iova: int, last: int, pages: IoptPages, start_byte: int,
                 iommu_prot: int) -> None:
        self.iova = iova
        self.last = last
        #: None while the area is being created (pages not yet published).
        self.pages: IoptPages | None = None
        self.start_byte = start_byte
        self.page_offset = start_byte % PAGE_SIZE
        self.pages_first = start_byte >> PAGE_SHIFT
        self.pages_last = (start_byte + last - iova) >> PAGE_SHIFT
        self.iommu_prot = iommu_prot
        #: The area holds its pages because domains map it (``storage_domain``).
        self.storage = False
        self.num_accesses = 0
        self.num_locks = 0
        self.prevent_access = False

    @property
    def length(self) -> int:
        return self.last - self.iova + 1

    def iova_to_index(self, iova: int) -> int:
        return (self.start_byte + iova - self.iova) >> PAGE_SHIFT

    def start_byte_of(self, iova: int) -> int:
        """``iopt_area_start_byte``: offset in ``pages`` of ``iova``."""
        return self.start_byte + iova - self.iova

    def __repr__(self) -> str:
        return f"<IoptArea {self.iova:#x}-{self.last:#x}>"


class IoPagetable:
    """``struct io_pagetable``."""

    def __init__(self, core: IommuCore) -> None:
        self.core = core
        self.tracer: Tracer = core.tracer
        self.platform = core.platform
        self.areas: SortedDict[int, IoptArea] = SortedDict()
        #: Sorted (start, last, seq, owner) entries; may overlap.
        self.reserved: list[tuple[int, int, int, object]] = []
        self._resv_seq = itertools.count()
        self.allowed: SortedDict[int, int] = SortedDict()
        self.domains: list[IommuDomain] = []
        #: ``access_list`` (xa_limit_16b): id -> access.
        self.accesses: dict[int, IommufdAccess] = {}
        self.iova_alignment = 1
        self.disable_large_pages = False

    def kzalloc(self, site: str) -> None:
        self.platform.kzalloc(site)

    def should_fail(self, site: str) -> bool:
        """``iommufd_should_fail``."""
        task = self.platform.tasks.current
        return task is not None and task.fail_nth != 0 and self.platform.should_fail(
            "iommufd", site)

    # ======================================================================================
    # interval queries
    # ======================================================================================
    def area_iter(self, first: int, last: int) -> Iterator[IoptArea]:
        """``iopt_area_iter_first/next``: areas intersecting [first, last], ascending."""
        areas = self.areas
        idx = areas.bisect_right(first) - 1
        if idx < 0 or areas.peekitem(idx)[1].last < first:
            idx += 1
        keys = areas.keys()
        while idx < len(keys):
            area = areas[keys[idx]]
            if area.iova > last:
                return
            yield area
            idx += 1

    def area_first(self, first: int, last: int) -> IoptArea | None:
        return next(self.area_iter(first, last), None)

    def reserved_first(self, first: int, last: int) -> tuple[int, int, int, object] | None:
        hi = bisect.bisect_right(self.reserved, (last, ULONG_MAX, ULONG_MAX))
        for r in self.reserved[:hi]:
            if r[1] >= first:
                return r
        return None

    def allowed_first(self, first: int, last: int) -> tuple[int, int] | None:
        allowed = self.allowed
        idx = allowed.bisect_right(last) - 1
        if idx >= 0:
            start, alast = allowed.peekitem(idx)
            if alast >= first:
                return start, alast
        return None

    def contig_areas(self, first: int, last: int
                     ) -> Iterator[tuple[IoptArea, int, int]]:
        """``iopt_for_each_contig_area``: (area, cur_iova, cur_last) while the areas
        cover [first, last] without a hole. Check :meth:`contig_done` afterwards."""
        cur = first
        for area in self.area_iter(first, last):
            if area.iova > cur or area.pages is None:
                return
            end = min(last, area.last)
            yield area, cur, end
            if end == last:
                return
            cur = end + 1

    # ======================================================================================
    # reserved / allowed ranges
    # ======================================================================================
    def iopt_reserve_iova(self, start: int, last: int, owner: object) -> None:
        """Reserve [start, last]: EADDRINUSE if a mapping or an allowed range is there."""
        if self.area_first(start, last) is not None or self.allowed_first(start, last):
            raise IommuError(errno.EADDRINUSE, f"[{start:#x}, {last:#x}] is mapped or allowed")
        self.kzalloc("struct iopt_reserved")
        bisect.insort(self.reserved, (start, last, next(self._resv_seq), owner))

    def iopt_remove_reserved_iova(self, owner: object) -> None:
        self.reserved = [r for r in self.reserved if r[3] is not owner]

    def iopt_set_allow_iova(self, ranges: list[tuple[int, int]]) -> None:
        """Replace the allowed list atomically; EADDRINUSE if one hits a reservation."""
        for start, last in ranges:
            if self.reserved_first(start, last) is not None:
                raise IommuError(errno.EADDRINUSE, f"allowed range [{start:#x}, {last:#x}] "
                                 "intersects a reserved range")
        self.allowed = SortedDict(ranges)

    def iopt_table_enforce_dev_resv_regions(self, dev: Device) -> None:
        """Reserve the device's reserved regions (owner: the device). All or nothing."""
        if self.should_fail("iopt_table_enforce_dev_resv_regions"):
            raise IommuError(errno.EINVAL, "fail-nth: reserved regions")
        try:
            for r in self.core.iommu_get_resv_regions(dev):
                if r.type == ResvType.DIRECT_RELAXABLE:
                    continue
                self.iopt_reserve_iova(r.start, r.last, dev)
        except IommuError:
            self.iopt_remove_reserved_iova(dev)
            raise

    # ======================================================================================
    # IOVA allocation
    # ======================================================================================
    @staticmethod
    def _check_range(start: int, last: int, length: int, align: int, page_offset: int
                     ) -> int | None:
        """``__alloc_iova_check_range``: the aligned start inside [start, last] or None."""
        aligned = start + align - 1
        if aligned > ULONG_MAX:
            return None
        aligned = (aligned & ~(align - 1)) | page_offset
        if aligned >= last or last - aligned < length - 1:
            return None
        return aligned

    def _used_holes(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Holes of (reserved + areas) inside [lo, hi], ascending."""
        spans = [(r[0], r[1]) for r in self.reserved if r[0] <= hi and r[1] >= lo]
        spans += [(a.iova, a.last) for a in self.area_iter(lo, hi)]
        spans.sort()
        cur = lo
        for s, e in spans:
            if s > cur:
                yield cur, min(s - 1, hi)
            if e >= cur:
                cur = e + 1
            if cur > hi:
                return
        if cur <= hi:
            yield cur, hi

    def iopt_alloc_iova(self, addr: int, length: int) -> int:
        """First fit, ascending, keeping the alignment ``addr`` has (up to HPAGE_SIZE)."""
        page_offset = addr % PAGE_SIZE
        if length == 0 or length >= ULONG_MAX // 2:
            raise IommuError(errno.EOVERFLOW, f"length {length:#x} too large to allocate")
        if not addr:
            align = _roundup_pow_of_two(length)
        else:
            align = min(_roundup_pow_of_two(length), addr & -addr)
        align = min(align, _MAX_ALIGNMENT)
        if align < self.iova_alignment:
            raise IommuError(errno.EINVAL, f"alignment {align:#x} below the IOAS's "
                             f"{self.iova_alignment:#x}")
        if self.allowed:
            windows = [(max(s, _ALLOC_FIRST), min(e, _ALLOC_LAST))
                       for s, e in self._allowed_spans() if e >= _ALLOC_FIRST
                       and s <= _ALLOC_LAST]
        else:
            windows = [(_ALLOC_FIRST, _ALLOC_LAST)]
        for ws, we in windows:
            if we - ws < length - 1:
                continue
            start = self._check_range(ws, we, length, align, page_offset)
            if start is None:
                continue
            for hs, he in self._used_holes(start, we):
                if he - hs < length - 1:
                    continue
                got = self._check_range(hs, he, length, align, page_offset)
                if got is not None:
                    return got
        raise IommuError(errno.ENOSPC, f"no free IOVA range of {length:#x} bytes")

    def _allowed_spans(self) -> list[tuple[int, int]]:
        """The allowed ranges as ``interval_tree_for_each_span`` sees them: touching
        ranges merge into one span (the list never overlaps)."""
        spans: list[tuple[int, int]] = []
        for start, last in self.allowed.items():
            if spans and spans[-1][1] + 1 == start:
                spans[-1] = (spans[-1][0], last)
            else:
                spans.append((start, last))
        return spans

    def iopt_check_iova(self, iova: int, length: int) -> None:
        if iova & (self.iova_alignment - 1):
            raise IommuError(errno.EINVAL, f"iova {iova:#x} not aligned to "
                             f"{self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "iova + length overflows")
        if self.reserved_first(iova, last) is not None:
            raise IommuError(errno.EINVAL, f"[{iova:#x}, {last:#x}] hits a reserved range")
        if self.area_first(iova, last) is not None:
            raise IommuError(errno.EEXIST, f"[{iova:#x}, {last:#x}] is already mapped")

    # ======================================================================================
    # domain replication
    # ======================================================================================
    def _runs(self, area: IoptArea, first: int, last: int) -> Iterator[tuple[int, int, int]]:
        """(iova, paddr, size) physically contiguous runs of area pages [first, last]."""
        assert area.pages is not None
        end_byte = area.start_byte + area.length
        small = self.disable_large_pages
        run_iova = run_pa = run_size = 0
        for idx, pfn, n in area.pages.pfn_runs(first, last):
            lo = max(area.start_byte, idx << PAGE_SHIFT)
            hi = min(end_byte, (idx + n) << PAGE_SHIFT)
            iova = area.iova + lo - area.start_byte
            pa = (pfn << PAGE_SHIFT) + lo - (idx << PAGE_SHIFT)
            if small:  # one IOPTE a page
                while lo < hi:
                    step = min(hi, (lo | (PAGE_SIZE - 1)) + 1) - lo
                    yield iova, pa, step
                    iova, pa, lo = iova + step, pa + step, lo + step
                continue
            if run_size and run_pa + run_size == pa and run_iova + run_size == iova:
                run_size += hi - lo
                continue
            if run_size:
                yield run_iova, run_pa, run_size
            run_iova, run_pa, run_size = iova, pa, hi - lo
        if run_size:
            yield run_iova, run_pa, run_size

    def _map_area(self, area: IoptArea, domain: IommuDomain) -> None:
        """``iopt_area_fill_domain``: map the (held) pages of the area; all or nothing.
        A dma-buf area is tracked so that a revoke can unmap it (and maps nothing once
        revoked)."""
        pages = area.pages
        assert pages is not None
        if pages.type is AddressType.DMABUF:
            core = self.core
            def revoke() -> None:
                core.iommu_unmap(domain, area.iova, area.length)

            pages.dmabuf_track((id(area), id(domain)), revoke)
            if pages.dmabuf_revoked:
                return
        done = 0
        try:
            for iova, pa, size in self._runs(area, area.pages_first, area.pages_last):
                self.core.iommu_map(domain, iova, pa, size, area.iommu_prot)
                done += size
        except IommuError:
            if done:
                self.core.iommu_unmap(domain, area.iova, done)
            pages.dmabuf_untrack((id(area), id(domain)))
            raise

    def _unmap_area(self, area: IoptArea, domain: IommuDomain) -> None:
        pages = area.pages
        if pages is not None and pages.type is AddressType.DMABUF:
            pages.dmabuf_untrack((id(area), id(domain)))
            if pages.dmabuf_revoked:
                return
        self.core.iommu_unmap(domain, area.iova, area.length)

    def _pfn_reader_init(self) -> None:
        """``pfn_reader_init``'s batch (``temp_kmalloc``): a fault point, ENOMEM."""
        if self.should_fail("temp_kmalloc batch"):
            raise IommuError(errno.ENOMEM, "fail-nth: temp_kmalloc of the pfn batch")

    def _hold_area(self, area: IoptArea) -> None:
        assert area.pages is not None
        area.pages.add_users(area.pages_first, area.pages_last)
        area.storage = True

    def _release_area(self, area: IoptArea) -> None:
        assert area.pages is not None
        area.pages.remove_users(area.pages_first, area.pages_last)
        area.storage = False

    def _fill_domains_area(self, area: IoptArea) -> None:
        """``iopt_area_fill_domains``: a new area goes into every domain (pinning once)."""
        if not self.domains:
            return
        self._pfn_reader_init()
        self._hold_area(area)
        done: list[IommuDomain] = []
        try:
            for dom in self.domains:
                self._map_area(area, dom)
                done.append(dom)
        except IommuError:
            for dom in done:
                self._unmap_area(area, dom)
            self._release_area(area)
            raise

    def _unfill_domains_area(self, area: IoptArea) -> None:
        """``iopt_area_unfill_domains``."""
        if not area.storage:
            return
        for dom in self.domains:
            self._unmap_area(area, dom)
        self._release_area(area)

    @traced("iommufd", lambda domain: domain.name)
    def iopt_table_add_domain(self, domain: IommuDomain) -> None:
        """Map every area into a new domain, reserve outside its aperture, raise the
        IOVA alignment. All or nothing."""
        if domain in self.domains:
            raise IommuError(errno.EEXIST, "domain already in this IOAS")
        bm = domain.pgsize_bitmap
        new_align = max(bm & -bm, self.iova_alignment)
        if new_align > PAGE_SIZE:
            raise IommuError(errno.EINVAL, f"domain page size {bm & -bm:#x} > PAGE_SIZE")
        if new_align != self.iova_alignment:
            self.iopt_check_iova_alignment(new_align)
        geo = domain.geometry
        try:
            if geo.aperture_start != 0:
                self.iopt_reserve_iova(0, geo.aperture_start - 1, domain)
            if geo.aperture_end != ULONG_MAX:
                self.iopt_reserve_iova(geo.aperture_end + 1, ULONG_MAX, domain)
            self._fill_domain(domain)
        except IommuError:
            self.iopt_remove_reserved_iova(domain)
            raise
        self.iova_alignment = new_align
        self.domains.append(domain)

    def _fill_domain(self, domain: IommuDomain) -> None:
        first_domain = not self.domains
        done: list[IoptArea] = []
        try:
            for area in list(self.areas.values()):
                if area.pages is None:
                    continue
                self._pfn_reader_init()
                if first_domain:
                    self._hold_area(area)
                try:
                    self._map_area(area, domain)
                except IommuError:
                    if first_domain:
                        self._release_area(area)
                    raise
                done.append(area)
        except IommuError:
            for area in done:
                self._unmap_area(area, domain)
                if first_domain:
                    self._release_area(area)
            raise

    @traced("iommufd", lambda domain: domain.name)
    def iopt_table_remove_domain(self, domain: IommuDomain) -> None:
        if domain not in self.domains:
            return
        self.domains.remove(domain)
        last_domain = not self.domains
        for area in list(self.areas.values()):
            if area.pages is None or not area.storage:
                continue
            self._unmap_area(area, domain)
            if last_domain:
                self._release_area(area)
        self.iopt_remove_reserved_iova(domain)
        self.iopt_calculate_iova_alignment()

    # ======================================================================================
    # alignment and huge pages
    # ======================================================================================
    def iopt_check_iova_alignment(self, new_alignment: int) -> None:
        mask = new_alignment - 1
        for area in self.areas.values():
            if (area.iova & mask) or (area.length & mask) or (area.page_offset & mask):
                raise IommuError(errno.EADDRINUSE, f"{area!r} is not aligned to "
                                 f"{new_alignment:#x}")

    def iopt_calculate_iova_alignment(self) -> None:
        new = PAGE_SIZE if self.disable_large_pages else 1
        for dom in self.domains:
            bm = dom.pgsize_bitmap
            new = max(new, bm & -bm)
        for acc in self.accesses.values():
            new = max(new, acc.iova_alignment)
        if new > self.iova_alignment:
            self.iopt_check_iova_alignment(new)
        self.iova_alignment = new

    def iopt_disable_large_pages(self) -> None:
        if self.disable_large_pages:
            return
        if self.domains and self.areas:
            raise IommuError(errno.EINVAL, "domains already have pages mapped")
        self.disable_large_pages = True
        try:
            self.iopt_calculate_iova_alignment()
        except IommuError:
            self.disable_large_pages = False
            raise

    def iopt_enable_large_pages(self) -> None:
        self.disable_large_pages = False
        self.iopt_calculate_iova_alignment()

    # ======================================================================================
    # accesses
    # ======================================================================================
    def iopt_add_access(self, access: IommufdAccess) -> int:
        new_id = 0
        while new_id in self.accesses:
            new_id += 1
        if new_id >= 1 << 16:
            raise IommuError(errno.ENOSPC, "too many accesses on this IOAS")
        self.accesses[new_id] = access
        try:
            self.iopt_calculate_iova_alignment()
        except IommuError:
            del self.accesses[new_id]
            raise
        return new_id

    def iopt_remove_access(self, list_id: int) -> None:
        self.accesses.pop(list_id, None)
        self.iopt_calculate_iova_alignment()

    # ======================================================================================
    # map / unmap
    # ======================================================================================
    @traced("iommufd", lambda elms, length, iova, prot, alloc:
            f"len {length:#x} iova {iova:#x}{' auto' if alloc else ''}")
    def iopt_map_pages(self, elms: list[tuple[IoptPages, int, int]], length: int, iova: int,
                       iommu_prot: int, alloc_iova: bool) -> int:
        """Create one area per (pages, start_byte, length) element at ``iova`` (or an
        allocated IOVA), fill every domain, publish. Returns the IOVA. All or nothing;
        the caller keeps its references on the pages on failure."""
        for _ in elms:
            self.kzalloc("struct iopt_area")
        if (length & (self.iova_alignment - 1)) or not length:
            raise IommuError(errno.EINVAL, f"length {length:#x} not a multiple of "
                             f"{self.iova_alignment:#x}")
        if alloc_iova:
            pages, start_byte, _ = elms[0]
            iova = self.iopt_alloc_iova(pages.uptr + start_byte, length)
        else:
            self.iopt_check_iova(iova, length)
        created: list[IoptArea] = []
        try:
            cur = iova
            for pages, start_byte, elen in elms:
                created.append(self._insert_area(pages, cur, start_byte, elen, iommu_prot))
                cur += elen
            filled: list[IoptArea] = []
            try:
                for area, (pages, _sb, _len) in zip(created, elms, strict=False):
                    area.pages = pages
                    self._fill_domains_area(area)
                    filled.append(area)
            except IommuError:
                for area in filled:
                    self._unfill_domains_area(area)
                raise
        except IommuError:
            for area in created:
                self.areas.pop(area.iova, None)
                area.pages = None
            raise
        for pages, _sb, _len in elms:
            pages.get()  # the area's reference
        return iova

    def _insert_area(self, pages: IoptPages, iova: int, start_byte: int, length: int,
                     iommu_prot: int) -> IoptArea:
        """``iopt_insert_area``: reserve the IOVA range with a not-yet-published area."""
        if (iommu_prot & IOMMU_WRITE) and not pages.writable:
            raise IommuError(errno.EPERM, "writable mapping of pages mapped read-only")
        if (start_byte % PAGE_SIZE) & (self.iova_alignment - 1):
            raise IommuError(errno.EINVAL, f"user address offset {start_byte % PAGE_SIZE:#x} "
                             f"not aligned to {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX or start_byte + length - 1 > ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "area end overflows")
        area = IoptArea(iova, last, pages, start_byte, iommu_prot)
        if area.pages_last >= pages.npages:
            raise IommuError(errno.EOVERFLOW, "area past the end of its pages")
        self.areas[iova] = area
        return area

    def iopt_get_pages(self, iova: int, length: int) -> list[tuple[IoptPages, int, int]]:
        """``iopt_get_pages``: (pages, start_byte, length) covering [iova, iova+length)
        across contiguous areas (taking a reference on each pages). ENOENT on a hole."""
        if not length:
            raise IommuError(errno.EINVAL, "zero length")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "iova + length overflows")
        out: list[tuple[IoptPages, int, int]] = []
        end = iova - 1
        for area, cur, e in self.contig_areas(iova, last):
            assert area.pages is not None
            self.kzalloc("struct iopt_pages_list")
            out.append((area.pages, area.start_byte_of(cur), e - cur + 1))
            end = e
        if end != last:
            raise IommuError(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
        return out

    def _remove_area(self, area: IoptArea) -> None:
        pages = area.pages
        assert pages is not None
        self._unfill_domains_area(area)
        del self.areas[area.iova]
        area.pages = None
        pages.put()

    @traced("iommufd", lambda start, last, notify: f"[{start:#x}, {last:#x}]")
    def iopt_unmap_iova_range(self, start: int, last: int,
                              notify: Callable[[int, int], None]) -> int:
        """Remove every area inside [start, last]; returns bytes removed. ENOENT if an
        area sticks out of the range or none is there; EBUSY for an area pinned by an
        internal access. Checked before anything changes, so a failure removes nothing.
        ``notify(iova, length)`` runs the access unmap callbacks for pinned areas."""
        victims = list(self.area_iter(start, last))
        if not victims:
            raise IommuError(errno.ENOENT, f"nothing mapped in [{start:#x}, {last:#x}]")
        for area in victims:
            if area.pages is None or area.num_locks:
                raise IommuError(errno.EBUSY, f"{area!r} is busy")
            if area.iova < start or area.last > last:
                raise IommuError(errno.ENOENT, f"{area!r} is not fully inside "
                                 f"[{start:#x}, {last:#x}] (areas are never split)")
        if any(a.num_accesses for a in victims) and any(
                acc.internal for acc in self.accesses.values()):
            raise IommuError(errno.EBUSY, "an internal access pins pages of this IOAS")
        for area in victims:
            if area.num_accesses:
                area.prevent_access = True
                notify(area.iova, area.length)
                if area.num_accesses:
                    area.prevent_access = False
                    raise IommuError(errno.EDEADLK, f"an access did not unpin {area!r}")
        unmapped = 0
        for area in victims:
            self._remove_area(area)
            unmapped += area.length
        return unmapped

    def iopt_unmap_all(self, notify: Callable[[int, int], None]) -> int:
        try:
            return self.iopt_unmap_iova_range(0, ULONG_MAX, notify)
        except IommuError as e:
            if e.errno == errno.ENOENT:
                return 0
            raise

    # ======================================================================================
    # VFIO type1 v1 unmap: cutting areas (iopt_area_split / iopt_cut_iova)
    # ======================================================================================
    def iopt_area_split(self, area: IoptArea, iova: int) -> tuple[IoptArea, IoptArea] | None:
        """Split ``area`` so that ``iova`` is the last byte of the left part; both parts
        keep the same pages (and the same domain mappings). None when ``iova`` is the
        area's first or last byte (nothing to do, as in the kernel)."""
        if iova in (area.iova, area.last):
            return None
        pages = area.pages
        if pages is None or area.prevent_access:
            raise IommuError(errno.EBUSY, f"{area!r} is being mapped or unmapped")
        new_start = iova + 1
        mask = self.iova_alignment - 1
        if new_start & mask or area.start_byte_of(new_start) & mask:
            raise IommuError(errno.EINVAL, f"cut at {new_start:#x} not aligned to "
                             f"{self.iova_alignment:#x}")
        # Access pins are not tracked per area finely enough to be split.
        if area.num_accesses:
            raise IommuError(errno.EINVAL, f"{area!r} has access pins")
        # A domain filled with large pages may hold one IOPTE across the cut.
        if area.storage and not self.disable_large_pages:
            raise IommuError(errno.EINVAL, f"{area!r} may be mapped with large pages")
        lhs = IoptArea(area.iova, iova, pages, area.start_byte, area.iommu_prot)
        rhs = IoptArea(new_start, area.last, pages, area.start_byte_of(new_start),
                       area.iommu_prot)
        for part in (lhs, rhs):
            part.pages = pages
            part.storage = area.storage
        self.areas[lhs.iova] = lhs  # replaces ``area`` (same key)
        self.areas[rhs.iova] = rhs
        pages.get()  # rhs's reference; lhs inherits the area's
        return lhs, rhs

    def iopt_cut_iova(self, iovas: list[int]) -> list[tuple[IoptArea, IoptArea, IoptArea]]:
        """``iopt_cut_iova``: split the area holding each of ``iovas`` after that byte.
        Returns (area, lhs, rhs) per split made, for :meth:`iopt_uncut_iova`. A refused
        cut undoes the earlier ones (the kernel keeps them) so a failure changes nothing."""
        cuts: list[tuple[IoptArea, IoptArea, IoptArea]] = []
        try:
            for iova in iovas:
                area = self.area_first(iova, iova)
                if area is None:
                    continue
                parts = self.iopt_area_split(area, iova)
                if parts is not None:
                    cuts.append((area, *parts))
        except IommuError:
            self.iopt_uncut_iova(cuts)
            raise
        return cuts

    def iopt_uncut_iova(self, cuts: list[tuple[IoptArea, IoptArea, IoptArea]]) -> None:
        """Join the splits of :meth:`iopt_cut_iova` again (latest first), for a caller
        whose next step failed. The parts must still be in the table, unpinned."""
        for area, lhs, rhs in reversed(cuts):
            assert self.areas.get(lhs.iova) is lhs and self.areas.get(rhs.iova) is rhs
            del self.areas[rhs.iova]
            self.areas[area.iova] = area
            pages = rhs.pages
            assert pages is not None
            lhs.pages = rhs.pages = None
            pages.put()

    def iopt_destroy_table(self, notify: Callable[[int, int], None]) -> None:
        self.iopt_unmap_all(notify)
        self.reserved.clear()
        self.allowed.clear()

    # ======================================================================================
    # access pins
    # ======================================================================================
    def iopt_area_add_access(self, area: IoptArea, first: int, last: int) -> list[int]:
        assert area.pages is not None
        self.kzalloc("struct iopt_pages_access")
        area.pages.add_users(first, last, access=True)
        area.num_accesses += 1
        return area.pages.pfns_of(first, last)

    def iopt_area_remove_access(self, area: IoptArea, first: int, last: int) -> None:
        assert area.pages is not None
        area.pages.remove_users(first, last)
        area.num_accesses -= 1

    # ======================================================================================
    # dirty tracking
    # ======================================================================================
    def iopt_set_dirty_tracking(self, domain: IommuDomain, enable: bool) -> None:
        if not domain.dirty_ops:
            raise IommuError(errno.EOPNOTSUPP, f"{domain!r} has no dirty tracking")
        if enable:
            # Start from a clean snapshot: clear the dirty bits already set.
            dirty = IommuDirtyBitmap()
            for area in self.areas.values():
                if area.pages is not None:
                    domain.ops.read_and_clear_dirty(domain, area.iova, area.length, 0, dirty)
            self.core.iommu_iotlb_sync(domain, dirty.gather)
        domain.ops.set_dirty_tracking(domain, enable)

    def iopt_read_and_clear_dirty_data(self, domain: IommuDomain, flags: int, iova: int,
                                       length: int, page_size: int, uptr: int,
                                       uaccess: Any) -> None:
        """GET_DIRTY_BITMAP: ``iommufd_check_iova_range`` then set the bits of dirty pages
        in the user bitmap (the kernel only sets bits); holes are skipped."""
        if length == 0 and iova:
            raise IommuError(errno.EOVERFLOW, "iova + length - 1 overflows")
        last = (iova + length - 1) & ULONG_MAX
        if iova + length - 1 > ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "iova + length - 1 overflows")
        end = (last + 1) & ULONG_MAX
        mask = self.iova_alignment - 1
        if (iova & mask) or (end & mask):
            raise IommuError(errno.EINVAL, f"range not aligned to the IOAS's {mask + 1:#x}")
        if not page_size:
            raise IommuError(errno.EINVAL, "page_size is 0")
        if (iova & (page_size - 1)) or (end & (page_size - 1)):
            raise IommuError(errno.EINVAL, f"range not aligned to page_size {page_size:#x}")
        if not domain.dirty_ops or not domain.ops.has("read_and_clear_dirty"):
            raise IommuError(errno.EOPNOTSUPP, f"{domain!r} cannot read dirty bits")
        if length == 0:
            raise IommuError(errno.ENOMEM, "a bitmap of 2^64 bytes")
        dirty = IommuDirtyBitmap(iova, length, page_size)
        # The kernel maps the user bitmap as it goes; check it is there before clearing.
        uaccess.mm.check_range(uptr, (dirty.nbits + 7) // 8)
        for cur, stop in self._area_spans(iova, last):
            domain.ops.read_and_clear_dirty(domain, cur, stop - cur + 1, flags, dirty)
        if not flags & IOMMU_DIRTY_NO_CLEAR:
            self.core.iommu_iotlb_sync(domain, dirty.gather)
        dirty.write_back(uaccess, uptr)

    def _area_spans(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        for area in self.area_iter(first, last):
            if area.pages is not None:
                yield max(first, area.iova), min(last, area.last)

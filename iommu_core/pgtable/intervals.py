"""The sorted-interval map that holds a domain's mappings.

``[iova, last] -> (paddr, prot, pgsize)`` in a :class:`~sortedcontainers.SortedDict` keyed
by ``iova``. Intervals never overlap; a new mapping that continues its neighbour (same
prot and leaf size, contiguous output) is merged into it, so memory follows the number
of intervals, not pages. Lookup, map and unmap cost O(log n) (plus the intervals an unmap
crosses).

The operations follow the Linux page-table contract (io-pgtable / generic_pt):

* ``map_pages`` maps ``pgcount`` pages of one supported size and returns the bytes mapped.
  Errors, checked before anything changes: no READ/WRITE, a size not in
  ``pgsize_bitmap`` or ``pgcount < 1``, iova/paddr not aligned to ``pgsize`` -> EINVAL;
  a range outside the input address space or an output beyond ``oas`` -> ERANGE (what
  generic_pt returns; io-pgtable-arm said EINVAL); any overlap -> EADDRINUSE.
* ``unmap_pages`` never splits a leaf: a range that starts at a leaf and ends inside it
  removes the whole leaf and counts its size. It stops at the first hole and returns the
  bytes removed so far (0 when ``iova`` is unmapped, outside the address space, or in the
  middle of a leaf, where generic_pt fails with EINVAL and returns 0).
* ``iova_to_phys`` returns 0 for an unmapped address, like Linux.
"""

from __future__ import annotations

import errno
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
from sortedcontainers import SortedDict

from iommu_core.errors import IommuError
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

if TYPE_CHECKING:
    from iommu_core.gather import IotlbGather

U64_MAX = (1 << 64) - 1

#: (last, paddr, prot, pgsize): plain tuples keep the per-interval footprint small.
_Entry = tuple[int, int, int, int]

#: Plain dict store/delete on the SortedDict: a value update needs no sorted-list work,
#: and the positional insert/delete below maintain the key list themselves.
_dict_set: Callable[[Any, int, _Entry], None] = dict.__setitem__
_dict_del: Callable[[Any, int], None] = dict.__delitem__
_RW = IOMMU_READ | IOMMU_WRITE

# The key-list internals used below (sortedcontainers 2.x); fail at import, not later.
_KEYLIST_ATTRS = ("_maxes", "_lists", "_load", "_index", "_len", "_expand", "_delete")
if not all(hasattr(SortedDict()._list, a) for a in _KEYLIST_ATTRS):  # type: ignore[attr-defined]
    raise ImportError("iommu_core.pgtable needs sortedcontainers 2.x (SortedList internals)")


@attrs.frozen
class Mapping:
    """One interval of the map: ``[iova, last]`` -> ``paddr``, made of ``pgsize`` leaves."""

    iova: int
    last: int
    paddr: int
    prot: int
    pgsize: int

    @property
    def size(self) -> int:
        return self.last - self.iova + 1


def _err(err: int, msg: str) -> IommuError:
    return IommuError(err, msg)


class IntervalMap:
    """A domain's IOVA -> physical mappings as coalesced intervals.

    ``pgsize_bitmap``: page sizes ``map_pages`` accepts. ``va_ranges``: valid IOVA
    ranges (first, last), inclusive. ``oas``: output address bits.
    """

    __slots__ = (
        "_keys",
        "_lists",
        "_map",
        "_maxes",
        "_one_range",
        "_va_last",
        "oa_limit",
        "pgsize_bitmap",
        "va_ranges",
    )

    def __init__(
        self,
        pgsize_bitmap: int,
        va_ranges: tuple[tuple[int, int], ...] = ((0, U64_MAX),),
        oas: int = 64,
    ) -> None:
        self._map: SortedDict[int, _Entry] = SortedDict()
        # The SortedDict's key list, used at the level of its sublists: one bisect per
        # operation finds the neighbours *and* the slot to insert or delete at, where the
        # public API would bisect again (and floor lookups by index cost twice as much).
        # SortedList creates _maxes/_lists once and only mutates them in place.
        self._keys: Any = self._map._list  # type: ignore[attr-defined]
        self._maxes: list[int] = self._keys._maxes
        self._lists: list[list[int]] = self._keys._lists
        self.pgsize_bitmap = pgsize_bitmap
        self.va_ranges = va_ranges
        self._one_range = len(va_ranges) == 1 and va_ranges[0][0] == 0
        self._va_last = va_ranges[0][1]
        self.oa_limit = 1 << oas

    def _insert_at(self, pos: int, j: int, key: int, value: _Entry) -> None:
        """Insert a new key at sublist ``pos``, index ``j`` (from bisect_right): what
        SortedList.add does after its own bisect."""
        maxes, keys = self._maxes, self._keys
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
        else:
            if pos == len(maxes):
                pos -= 1
                sub = self._lists[pos]
                sub.append(key)
                maxes[pos] = key
            else:
                sub = self._lists[pos]
                sub.insert(j, key)
            if len(sub) > keys._load << 1 or keys._index:
                keys._expand(pos)  # split the sublist / keep the positional index
        keys._len += 1
        _dict_set(self._map, key, value)

    def _delete_at(self, pos: int, idx: int, key: int) -> None:
        """Delete ``key``, found at sublist ``pos``, index ``idx``: SortedList.remove
        after its bisect (the short path when no merge or index update is due)."""
        keys = self._keys
        sub = self._lists[pos]
        if len(sub) > (keys._load >> 1) + 1 and not keys._index:
            del sub[idx]
            keys._len -= 1
            self._maxes[pos] = sub[-1]
        else:
            keys._delete(pos, idx)
        _dict_del(self._map, key)

    # -- lookups ------------------------------------------------------------------------------
    def _floor(self, x: int) -> int | None:
        """The greatest interval start <= x."""
        maxes = self._maxes
        pos = bisect_right(maxes, x)
        if pos == len(maxes):
            return maxes[-1] if maxes else None
        sub = self._lists[pos]
        j = bisect_right(sub, x)
        if j:
            return sub[j - 1]
        return maxes[pos - 1] if pos else None

    def lookup(self, iova: int) -> Mapping | None:
        """The interval containing ``iova``."""
        key = self._floor(iova)
        if key is None:
            return None
        last, pa, prot, pg = self._map[key]
        return Mapping(key, last, pa, prot, pg) if iova <= last else None

    def leaf_at(self, iova: int) -> Mapping | None:
        """The single leaf page containing ``iova`` (an interval of one page)."""
        m = self.lookup(iova)
        if m is None:
            return None
        start = iova & -m.pgsize
        return Mapping(start, start + m.pgsize - 1, m.paddr + (start - m.iova), m.prot, m.pgsize)

    def iova_to_phys(self, iova: int) -> int:
        """Output address of ``iova``; 0 when unmapped (as Linux reports it)."""
        maxes = self._maxes
        pos = bisect_right(maxes, iova)
        if pos == len(maxes):
            if not maxes:
                return 0
            key = maxes[-1]
        else:
            sub = self._lists[pos]
            j = bisect_right(sub, iova)
            if j:
                key = sub[j - 1]
            elif pos:
                key = maxes[pos - 1]
            else:
                return 0
        e = self._map[key]
        return e[1] + (iova - key) if iova <= e[0] else 0

    def iter_range(self, first: int = 0, last: int = U64_MAX) -> Iterator[Mapping]:
        """Intervals intersecting [first, last], in IOVA order (not clipped)."""
        m = self._map
        start = self._floor(first)
        if start is None or m[start][0] < first:
            start = first
        for key in m.irange(minimum=start, maximum=last):
            e = m[key]
            yield Mapping(key, e[0], e[1], e[2], e[3])

    def __iter__(self) -> Iterator[Mapping]:
        return self.iter_range()

    def __len__(self) -> int:
        """Number of intervals (not pages)."""
        return len(self._map)

    @property
    def mapped_bytes(self) -> int:
        """Bytes mapped (walks every interval: O(intervals))."""
        return sum(e[0] - k + 1 for k, e in self._map.items())

    def clear(self) -> None:
        self._map.clear()

    # -- checks -------------------------------------------------------------------------------
    def check_map(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int) -> int:
        """Every map_pages check, nothing changed; returns the byte length."""
        if not prot & _RW:
            raise _err(errno.EINVAL, "mapping needs IOMMU_READ or IOMMU_WRITE")
        if pgsize <= 0 or pgsize & (pgsize - 1) or not pgsize & self.pgsize_bitmap:
            raise _err(errno.EINVAL, f"page size {pgsize:#x} not in {self.pgsize_bitmap:#x}")
        if (iova | paddr) & (pgsize - 1):
            raise _err(errno.EINVAL, f"iova {iova:#x} / paddr {paddr:#x} not {pgsize:#x} aligned")
        if pgcount < 1:
            raise _err(errno.EINVAL, "pgcount must be at least 1")
        size = pgsize * pgcount
        last = iova + size - 1
        if self._one_range:
            if last > self._va_last:
                raise _err(errno.ERANGE, f"iova range {iova:#x}+{size:#x} beyond the table")
        elif not any(lo <= iova and last <= hi for lo, hi in self.va_ranges):
            raise _err(errno.ERANGE, f"iova range {iova:#x}+{size:#x} outside the table")
        if paddr + size > self.oa_limit:
            raise _err(errno.ERANGE, f"output {paddr:#x}+{size:#x} beyond the output size")
        return size

    # -- map / unmap --------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int) -> int:
        """Map ``pgcount`` pages of ``pgsize``; returns the bytes mapped (see module doc)."""
        # Fast screen; check_map() names the error (or accepts a second VA range).
        if (
            not prot & _RW
            or pgsize & (pgsize - 1)
            or not pgsize & self.pgsize_bitmap
            or (iova | paddr) & (pgsize - 1)
            or pgcount < 1
        ):
            self.check_map(iova, paddr, pgsize, pgcount, prot)
        size = pgsize * pgcount
        last = iova + size - 1
        if last > self._va_last or paddr + size > self.oa_limit or not self._one_range:
            self.check_map(iova, paddr, pgsize, pgcount, prot)
        m = self._map
        # Neighbours: prev = greatest start <= iova, nxt = smallest start > iova.
        maxes = self._maxes
        pos = bisect_right(maxes, iova)
        j = 0
        prev: int | None
        nxt: int | None
        if pos == len(maxes):
            prev = maxes[-1] if maxes else None
            nxt = None
        else:
            sub = self._lists[pos]
            j = bisect_right(sub, iova)
            nxt = sub[j]
            prev = sub[j - 1] if j else (maxes[pos - 1] if pos else None)
        pe: _Entry | None = None
        if prev is not None:
            pe = m[prev]
            if pe[0] >= iova:
                raise _err(errno.EADDRINUSE, f"iova {iova:#x} already mapped")
        if nxt is not None and nxt <= last:
            raise _err(errno.EADDRINUSE, f"iova {nxt:#x} already mapped")
        # Coalesce with the neighbours this mapping continues (same prot and leaf size,
        # contiguous output): the map stays one interval per run, not per page.
        joined_next = False
        if nxt is not None and nxt == last + 1:
            ne = m[nxt]
            if ne[3] == pgsize and ne[2] == prot and ne[1] == paddr + size:
                del m[nxt]
                last = ne[0]
                joined_next = True
        if (
            prev is not None
            and pe is not None
            and pe[0] + 1 == iova
            and pe[3] == pgsize
            and pe[2] == prot
            and pe[1] + (iova - prev) == paddr
        ):
            _dict_set(m, prev, (last, pe[1], prot, pgsize))
        elif joined_next:
            m[iova] = (last, paddr, prot, pgsize)  # the deletion moved the slot
        else:
            self._insert_at(pos, j, iova, (last, paddr, prot, pgsize))
        return size

    def unmap_pages(
        self, iova: int, pgsize: int, pgcount: int, gather: IotlbGather | None = None
    ) -> int:
        """Unmap up to ``pgsize * pgcount`` bytes from ``iova``; returns the bytes removed
        (whole leaves; stops at a hole). The range is added to ``gather``."""
        size = pgsize * pgcount
        if size <= 0:
            return 0
        m = self._map
        # Floor search, keeping where the key sits for a positional delete.
        maxes = self._maxes
        pos = bisect_right(maxes, iova)
        if pos == len(maxes):
            if not maxes:
                return 0
            pos -= 1
            idx = len(self._lists[pos]) - 1
        else:
            idx = bisect_right(self._lists[pos], iova) - 1
            if idx < 0:
                if not pos:
                    return 0
                pos -= 1
                idx = len(self._lists[pos]) - 1
        key = self._lists[pos][idx]
        e = m[key]
        if e[0] < iova or (iova - key) & (e[3] - 1):
            return 0  # a hole, or the middle of a leaf
        end = iova + size
        if key == iova and e[0] - e[3] < end - 1 <= e[0]:
            # The common case: exactly one whole interval (its last leaf may be cut).
            self._delete_at(pos, idx, key)
            done = e[0] + 1 - iova
            if gather is not None:
                gather.add_range(iova, done)
            return done
        cur = iova
        while True:
            last, pa, prot, pg = e
            # Removal ends at a leaf boundary: a leaf is never split.
            cut = min(last + 1, (end + pg - 1) & -pg)
            if key < cur:
                _dict_set(m, key, (cur - 1, pa, prot, pg))
            elif pos >= 0:
                self._delete_at(pos, idx, key)  # (pos, idx) is where the floor search found it
            else:
                del m[key]
            pos = -1  # later keys were not located by the search
            if cut <= last:
                m[cut] = (last, pa + (cut - key), prot, pg)
            cur = cut
            if cur >= end:
                break
            nxt = m.get(cur)
            if nxt is None:
                break  # a hole: stop, report what was done
            key, e = cur, nxt
        done = cur - iova
        if gather is not None:
            gather.add_range(iova, done)
        return done

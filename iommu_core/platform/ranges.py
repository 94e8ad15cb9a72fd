"""Integer ranges with values: the bookkeeping that lets memory be tracked by runs, not
pages (populated pages of an object, pin counts, frame ownership, pinned page indexes).

A :class:`RangeMap` maps disjoint half-open ranges ``[start, end)`` of integers to values.
Two kinds of value:

* *constant* (``linear=False``): every integer of the run has the same value (a tag, a
  count); touching runs with equal values coalesce;
* *linear* (``linear=True``): the value is an integer base and position ``i`` of the run
  ``[s, e)`` has value ``base + (i - s)`` (a page index -> frame number map); runs coalesce
  when the bases continue each other.

Every operation costs O(log n + k) for n runs and k runs touched; memory is per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedDict

V = TypeVar("V")


class RangeMap(Generic[V]):
    """Disjoint ``[start, end) -> value`` runs, coalesced."""

    __slots__ = ("_hint", "_linear", "_runs")

    def __init__(self, linear: bool = False) -> None:
        self._runs: SortedDict[int, tuple[int, Any]] = SortedDict()
        self._linear = linear
        #: The run :meth:`get` found last, (start, end, value): repeated lookups in one
        #: run (small copies from one page) skip the search. Every update clears it.
        self._hint: tuple[int, int, Any] | None = None

    # -- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of runs (not of integers covered)."""
        return len(self._runs)

    def __bool__(self) -> bool:
        return bool(self._runs)

    def get(self, point: int, default: V | None = None) -> V | None:
        """The value at ``point`` (for a linear map, the value of that position)."""
        h = self._hint
        if h is None or not h[0] <= point < h[1]:
            runs = self._runs
            idx = runs.bisect_right(point) - 1
            if idx < 0:
                return default
            s, (e, v) = runs.peekitem(idx)
            if point >= e:
                return default
            h = self._hint = (s, e, v)
        return h[2] + (point - h[0]) if self._linear else h[2]  # type: ignore[no-any-return]

    def run_at(self, point: int) -> tuple[int, int, V] | None:
        """The run holding ``point``: (start, end, value at start)."""
        runs = self._runs
        idx = runs.bisect_right(point) - 1
        if idx < 0:
            return None
        s, (e, v) = runs.peekitem(idx)
        return (s, e, v) if point < e else None

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int, V]]:
        """Runs intersecting ``[start, end)``, clipped to it, in order: (s, e, value at s)."""
        if start >= end:
            return
        runs = self._runs
        idx = runs.bisect_right(start) - 1
        if idx < 0:
            idx = 0
        keys = runs.keys()
        n = len(keys)
        linear = self._linear
        while idx < n:
            s = keys[idx]
            if s >= end:
                break
            e, v = runs[s]
            idx += 1
            if e <= start:
                continue
            cs, ce = max(s, start), min(e, end)
            yield cs, ce, (v + (cs - s) if linear else v)

    def runs(self, first: int, count: int) -> list[tuple[int, int, V | None]]:
        """``[first, first+count)`` as consecutive runs: (start, length, value at start, or
        None for a hole)."""
        out: list[tuple[int, int, V | None]] = []
        pos = first
        for s, e, v in self.overlapping(first, first + count):
            if s > pos:
                out.append((pos, s - pos, None))
            out.append((s, e - s, v))
            pos = e
        if pos < first + count:
            out.append((pos, first + count - pos, None))
        return out

    def gaps(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Sub-ranges of ``[start, end)`` no run covers, in order."""
        pos = start
        for s, e, _v in self.overlapping(start, end):
            if s > pos:
                yield pos, s
            pos = e
        if pos < end:
            yield pos, end

    def covered(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` some run covers."""
        return sum(e - s for s, e, _v in self.overlapping(start, end))

    def items(self) -> Iterator[tuple[int, int, V]]:
        for s, (e, v) in self._runs.items():
            yield s, e, v

    def total(self) -> int:
        """Integers covered by all runs."""
        return sum(e - s for s, (e, _v) in self._runs.items())

    # -- updates ------------------------------------------------------------------------
    def _cut(self, point: int) -> None:
        """Make ``point`` a run boundary (split the run straddling it)."""
        self._hint = None
        runs = self._runs
        idx = runs.bisect_right(point) - 1
        if idx < 0:
            return
        s, (e, v) = runs.peekitem(idx)
        if s < point < e:
            runs[s] = (point, v)
            runs[point] = (e, v + (point - s) if self._linear else v)

    def _merge_at(self, point: int) -> None:
        """Coalesce the runs ending and starting at ``point`` if their values continue."""
        self._hint = None
        runs = self._runs
        right = runs.get(point)
        if right is None:
            return
        idx = runs.index(point)
        if idx == 0:
            return
        ls, (le, lv) = runs.peekitem(idx - 1)
        if le != point:
            return
        re_, rv = right
        if (lv + (le - ls) == rv) if self._linear else (lv == rv):
            del runs[point]
            runs[ls] = (re_, lv)

    def remove(self, start: int, end: int) -> list[tuple[int, int, V]]:
        """Forget ``[start, end)``; returns the pieces that were there."""
        self._hint = None
        if start >= end:
            return []
        self._cut(start)
        self._cut(end)
        runs = self._runs
        gone: list[tuple[int, int, V]] = []
        for s in list(runs.irange(start, end - 1)):
            e, v = runs.pop(s)
            gone.append((s, e, v))
        return gone

    def set(self, start: int, end: int, value: V) -> None:
        """``[start, end) -> value`` (for a linear map, ``value`` is the value at ``start``),
        replacing what was there."""
        if start >= end:
            return
        self.remove(start, end)
        self._hint = None
        self._runs[start] = (end, value)
        self._merge_at(end)
        self._merge_at(start)

    def add(self, start: int, end: int, delta: int) -> list[tuple[int, int, int]]:
        """Counters (a constant map of ints): add ``delta`` over ``[start, end)``; runs that
        reach 0 are removed. Returns the pieces whose count reached 0 (as (s, e, 0))."""
        if start >= end or not delta:
            return []
        if self._linear:
            raise TypeError("add() is for counter maps")
        self._hint = None
        self._cut(start)
        self._cut(end)
        runs = self._runs
        pieces: list[tuple[int, int, int]] = []
        pos = start
        for s in list(runs.irange(start, end - 1)):
            e, v = runs[s]
            if s > pos:
                pieces.append((pos, s, 0))
            pieces.append((s, e, v))
            pos = e
        if pos < end:
            pieces.append((pos, end, 0))
        zeroed: list[tuple[int, int, int]] = []
        for s, e, v in pieces:
            nv = v + delta
            if nv:
                runs[s] = (e, nv)
            else:
                runs.pop(s, None)
                zeroed.append((s, e, 0))
        for s, e, _v in pieces:
            self._merge_at(e)
            self._merge_at(s)
        return zeroed

    def clear(self) -> None:
        self._hint = None
        self._runs.clear()

    def copy(self) -> RangeMap[V]:
        out: RangeMap[V] = RangeMap(self._linear)
        out._runs = self._runs.copy()
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"[{s:#x},{e:#x})->{v!r}" for s, e, v in self.items())
        return f"RangeMap({inner})"

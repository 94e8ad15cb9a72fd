"""The SMMU's caches: configuration (STE, CD, L1CD) and the TLB, plus the endpoints' ATCs.

Entries stay until the matching invalidation command removes them (or capacity evicts
the oldest, which the architecture permits at any time): a driver that forgets to
invalidate sees the stale translation.

TLB entries are tagged ``(stages, vmid, asid)``: ``stages`` 1 (stage 1 only), 2 (stage 2
only) or 3 (a combined nested stage-1+2 entry); stage-2 only entries have no ASID, and a
stage-1 leaf with nG=0 is global (matches any ASID). A leaf of any size is one entry; it
is indexed by the 4 KiB pages that have been looked up through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.decode import DecodedCd, DecodedSte

STAGE1 = 1
STAGE2 = 2
NESTED = 3
NO_ASID = -1
GLOBAL_ASID = -2
#: The VMID used to tag EL2 (E2H, STRW=EL2) stage-1 entries.
EL2_VMID = -1
PAGE_SHIFT = 12

Tag = tuple[int, int, int]

# Permission bits of an entry (a subset of the platform's ACCESS_* bits).
PERM_R = 1
PERM_W = 2
PERM_X = 4


class TlbEntry:
    """One cached leaf: ``va`` .. ``va + size`` -> ``pa``, with permissions.

    ``user``: unprivileged accesses allowed. ``writable_clean``: the leaf is DBM
    writable-clean (a write must walk to set the dirty state)."""

    __slots__ = ("pa", "perms", "size", "user", "va")

    def __init__(self, va: int, size: int, pa: int, perms: int, user: bool) -> None:
        self.va = va
        self.size = size
        self.pa = pa
        self.perms = perms
        self.user = user

    def intersects(self, start: int, end: int) -> bool:
        return self.va < end and start < self.va + self.size

    def __repr__(self) -> str:
        return (f"<TlbEntry va {self.va:#x} size {self.size:#x} pa {self.pa:#x} "
                f"perms {self.perms}{' user' if self.user else ''}>")


class Tlb:
    """The SMMU TLB."""

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self.tags: dict[Tag, dict[int, TlbEntry]] = {}
        self.count = 0
        #: Statistics (tests and the tour read them).
        self.hits = 0
        self.misses = 0

    def lookup(self, tag: Tag, va: int) -> TlbEntry | None:
        page = va >> PAGE_SHIFT
        pages = self.tags.get(tag)
        e = pages.get(page) if pages is not None else None
        if e is None and tag[2] >= 0:
            pages = self.tags.get((tag[0], tag[1], GLOBAL_ASID))
            e = pages.get(page) if pages is not None else None
        if e is None:
            self.misses += 1
        else:
            self.hits += 1
        return e

    def insert(self, tag: Tag, va: int, entry: TlbEntry) -> None:
        if self.count >= self.capacity:
            self._evict_one()
        pages = self.tags.setdefault(tag, {})
        page = va >> PAGE_SHIFT
        if page not in pages:
            self.count += 1
        pages[page] = entry

    def _evict_one(self) -> None:
        for tag, pages in self.tags.items():
            if pages:
                del pages[next(iter(pages))]
                self.count -= 1
                if not pages:
                    del self.tags[tag]
                return

    def invalidate(self, match: Callable[[Tag], bool], start: int = 0,
                   end: int = 1 << 64) -> int:
        """Drop entries whose tag matches and whose leaf intersects [start, end)."""
        dropped = 0
        whole = start == 0 and end >= 1 << 64
        for tag in [t for t in self.tags if match(t)]:
            pages = self.tags[tag]
            if whole:
                dropped += len(pages)
                del self.tags[tag]
                continue
            gone = [p for p, e in pages.items() if e.intersects(start, end)]
            for p in gone:
                del pages[p]
            dropped += len(gone)
            if not pages:
                del self.tags[tag]
        self.count -= dropped
        return dropped

    def clear(self) -> int:
        n = self.count
        self.tags.clear()
        self.count = 0
        return n

    def entries(self) -> list[tuple[Tag, int, TlbEntry]]:
        return [(t, p << PAGE_SHIFT, e) for t, pages in self.tags.items()
                for p, e in pages.items()]


class ConfigCache:
    """Cached STEs, CDs and level-1 CD descriptors, indexed by StreamID (CDs are local to
    the StreamID that located them, spec 4.3.3)."""

    def __init__(self) -> None:
        self.ste: dict[int, DecodedSte] = {}
        self.cd: dict[int, dict[int, DecodedCd]] = {}
        #: (sid) -> {l1 index: L2 table address or None for an invalid descriptor}.
        self.l1cd: dict[int, dict[int, int | None]] = {}

    def inv_ste(self, sid: int) -> None:
        """CMD_CFGI_STE: the STE and every CD/L1CD cached through it."""
        self.ste.pop(sid, None)
        self.cd.pop(sid, None)
        self.l1cd.pop(sid, None)

    def inv_ste_range(self, first: int, last: int) -> None:
        for sid in [s for s in self.ste if first <= s <= last]:
            del self.ste[sid]
        for sid in [s for s in self.cd if first <= s <= last]:
            del self.cd[sid]
        for sid in [s for s in self.l1cd if first <= s <= last]:
            del self.l1cd[sid]

    def inv_cd(self, sid: int, ssid: int, leaf: bool, l1_index: int | None) -> None:
        cds = self.cd.get(sid)
        if cds is not None:
            cds.pop(ssid, None)
        if not leaf and l1_index is not None:
            l1 = self.l1cd.get(sid)
            if l1 is not None:
                l1.pop(l1_index, None)

    def inv_cd_all(self, sid: int) -> None:
        self.cd.pop(sid, None)
        self.l1cd.pop(sid, None)

    def clear(self) -> None:
        self.ste.clear()
        self.cd.clear()
        self.l1cd.clear()


class Atc:
    """The Address Translation Caches of the ATS endpoints behind this SMMU, by StreamID.

    Filled by ATS Translation Completions; emptied only by ATC invalidation (CMD_ATC_INV
    forwarded to the endpoint) or by the endpoint disabling ATS."""

    def __init__(self) -> None:
        #: sid -> {(ssid or -1, page): (pa page base, perms)}
        self.by_sid: dict[int, dict[tuple[int, int], tuple[int, int]]] = {}

    def lookup(self, sid: int, ssid: int, va: int) -> tuple[int, int] | None:
        d = self.by_sid.get(sid)
        return d.get((ssid, va >> PAGE_SHIFT)) if d is not None else None

    def insert(self, sid: int, ssid: int, va: int, pa_page: int, perms: int) -> None:
        self.by_sid.setdefault(sid, {})[(ssid, va >> PAGE_SHIFT)] = (pa_page, perms)

    def invalidate(self, sid: int, ssid: int | None, start: int, end: int) -> int:
        """Drop [start, end) for one SSID (-1 = no PASID), or for every SSID when
        ``ssid`` is None (an invalidation without PASID drops PASID entries too)."""
        d = self.by_sid.get(sid)
        if not d:
            return 0
        lo, hi = start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        gone = [k for k in d if (ssid is None or k[0] == ssid) and lo <= k[1] <= hi]
        for k in gone:
            del d[k]
        return len(gone)

    def drop_sid(self, sid: int) -> None:
        self.by_sid.pop(sid, None)

    def count(self, sid: int | None = None) -> int:
        if sid is None:
            return sum(len(d) for d in self.by_sid.values())
        return len(self.by_sid.get(sid, {}))

"""The SMMU's caches: configuration (STE, CD, L1CD), the TLB, the endpoints' ATCs and the
model's fast path.

Entries stay until the matching invalidation command removes them (or capacity evicts
the oldest TLB entry, which the architecture permits at any time): a driver that forgets
to invalidate sees the stale translation.

Every cache is indexed by what the commands name, so an invalidation touches only the
entries it removes, never what else the caches happen to hold:

* TLB entries are tagged ``(stages, vmid, asid)``: ``stages`` 1 (stage 1 only), 2 (stage
  2 only) or 3 (a combined nested stage-1+2 entry); stage-2 only entries have no ASID,
  and a stage-1 leaf with nG=0 is global (matches any ASID). Tags are indexed by VMID;
  inside a tag, one entry per leaf, found by the 4 KiB pages looked up through it and
  by its (size, address) for range invalidation.
* ATC entries by StreamID, then SSID, then page.
* The fast path (StreamID, SSID, page, ATS) -> (page, permissions) is derived from one TLB
  or ATC entry and the StreamID's configuration, and dropped with either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.decode import DecodedCd, DecodedSte
    from iommu_core.platform.bus import Device

STAGE1 = 1
STAGE2 = 2
NESTED = 3
NO_ASID = -1
GLOBAL_ASID = -2
#: The VMID used to tag EL2 (E2H, STRW=EL2) stage-1 entries.
EL2_VMID = -1
PAGE_SHIFT = 12
_ALL = 1 << 64

Tag = tuple[int, int, int]
#: (StreamID, SSID or None, page, endpoint ATS enabled)
FastKey = tuple[int, "int | None", int, bool]

# Permission bits of an entry (a subset of the platform's ACCESS_* bits).
PERM_R = 1
PERM_W = 2
PERM_X = 4


class TlbEntry:
    """One cached leaf: ``va`` .. ``va + size`` -> ``pa``, with permissions.

    ``user``: unprivileged accesses allowed. Once cached, ``tag`` is its tag, ``pages``
    the 4 KiB pages that found it and ``fast`` the fast-path keys derived from it."""

    __slots__ = ("fast", "pa", "pages", "perms", "size", "tag", "user", "va")

    def __init__(self, va: int, size: int, pa: int, perms: int, user: bool) -> None:
        self.va = va
        self.size = size
        self.pa = pa
        self.perms = perms
        self.user = user
        self.tag: Tag | None = None
        self.pages: list[int] = []
        self.fast: set[FastKey] | None = None

    def __repr__(self) -> str:
        return (f"<TlbEntry va {self.va:#x} size {self.size:#x} pa {self.pa:#x} "
                f"perms {self.perms}{' user' if self.user else ''}>")


#: A published hit map's key: (device, SSID or None), as the platform's DMA path asks.
HitKey = tuple["Device", "int | None"]


class FastPath(dict[FastKey, tuple[int, int]]):
    """The model's shortcut for DMA that hits: (sid, ssid, page, ATS) -> (page, allowed
    ACCESS_* bits). A plain dict for the hit path; the index says which keys derive from
    which StreamID and context (``(sid, ssid)``), so a configuration invalidation drops
    just those.

    The entries a device's DMA found are also published per (device, SSID) in
    :attr:`hits` (the model's ``dma_hits``, which the platform's DMA path reads): a
    subset of this dict, dropped with it. A device's map is published from one
    (StreamID, ATS) context; a change of the endpoint's state (ATS Enable) drops it."""

    __slots__ = ("_pub", "_pub_of", "by_ctx", "by_sid", "hits")

    def __init__(self) -> None:
        super().__init__()
        self.by_ctx: dict[tuple[int, int | None], dict[FastKey, None]] = {}
        self.by_sid: dict[int, set[int | None]] = {}
        self.hits: dict[HitKey, dict[int, tuple[int, int]]] = {}
        #: Published key -> the (StreamID, ATS) its entries derive from.
        self._pub: dict[HitKey, tuple[int, bool]] = {}
        #: (sid, ssid, ATS) -> the published keys holding entries of that context.
        self._pub_of: dict[tuple[int, int | None, bool], set[HitKey]] = {}

    def add(self, key: FastKey, value: tuple[int, int], src: TlbEntry | None,
            dev: Device | None = None) -> None:
        self[key] = value
        ctx = (key[0], key[1])
        keys = self.by_ctx.get(ctx)
        if keys is None:
            keys = self.by_ctx[ctx] = {}
            self.by_sid.setdefault(key[0], set()).add(key[1])
        keys[key] = None
        if src is not None:
            if src.fast is None:
                src.fast = set()
            src.fast.add(key)
        if dev is not None:
            sid, ssid, page, ats = key
            hk = (dev, ssid)
            pub = self._pub.get(hk)
            if pub is None or pub[0] != sid or pub[1] != ats:
                if pub is not None:
                    self._unpublish(hk)
                self._pub[hk] = (sid, ats)
                self._pub_of.setdefault((sid, ssid, ats), set()).add(hk)
                self.hits[hk] = {page: value}
            else:
                self.hits[hk][page] = value

    def _unpublish(self, hk: HitKey) -> None:
        sid, ats = self._pub.pop(hk)
        del self.hits[hk]
        ctx = (sid, hk[1], ats)
        keys = self._pub_of[ctx]
        keys.discard(hk)
        if not keys:
            del self._pub_of[ctx]

    def drop(self, keys: Iterable[FastKey]) -> None:
        """Keys whose source went; a key re-derived since from another source goes too,
        which only costs a walk."""
        pub_of = self._pub_of
        for key in keys:
            if self.pop(key, None) is not None:
                ctx = self.by_ctx.get((key[0], key[1]))
                if ctx is not None:
                    ctx.pop(key, None)
                if pub_of:
                    for hk in pub_of.get((key[0], key[1], key[3]), ()):
                        self.hits[hk].pop(key[2], None)

    def drop_ctx(self, sid: int, ssid: int | None) -> None:
        if self._pub_of:
            for ats in (False, True):
                for hk in list(self._pub_of.get((sid, ssid, ats), ())):
                    self._unpublish(hk)
        keys = self.by_ctx.pop((sid, ssid), None)
        if keys is None:
            return
        ssids = self.by_sid.get(sid)
        if ssids is not None:
            ssids.discard(ssid)
            if not ssids:
                del self.by_sid[sid]
        for key in keys:
            self.pop(key, None)

    def drop_sid(self, sid: int) -> None:
        for ssid in list(self.by_sid.get(sid, ())):
            self.drop_ctx(sid, ssid)

    def drop_sids(self, first: int, last: int) -> None:
        """Every StreamID in [first, last], visiting whichever is fewer: the range or the
        StreamIDs with entries."""
        if last - first + 1 <= len(self.by_sid):
            sids: Iterable[int] = [s for s in range(first, last + 1) if s in self.by_sid]
        else:
            sids = [s for s in self.by_sid if first <= s <= last]
        for sid in sids:
            self.drop_sid(sid)

    def drop_device(self, dev: Device) -> None:
        """What was published for ``dev`` (its endpoint state changed)."""
        for hk in [hk for hk in self._pub if hk[0] is dev]:
            self._unpublish(hk)

    def clear(self) -> None:
        super().clear()
        self.by_ctx.clear()
        self.by_sid.clear()
        self.hits.clear()
        self._pub.clear()
        self._pub_of.clear()


class _Space:
    """The entries of one tag: by 4 KiB page, and by leaf size then leaf address."""

    __slots__ = ("leaves", "pages")

    def __init__(self) -> None:
        self.pages: dict[int, TlbEntry] = {}
        self.leaves: dict[int, dict[int, list[TlbEntry]]] = {}

    def in_range(self, start: int, end: int) -> list[TlbEntry]:
        """Entries intersecting [start, end): per leaf size, the aligned addresses of the
        range or the cached leaves of that size, whichever is fewer."""
        out: list[TlbEntry] = []
        for size, bucket in self.leaves.items():
            first = start & -size
            if (end - first + size - 1) // size <= len(bucket):
                for va in range(first, end, size):
                    hit = bucket.get(va)
                    if hit is not None:
                        out.extend(hit)
            else:
                for va, entries in bucket.items():
                    if va < end and start < va + size:
                        out.extend(entries)
        return out

    def entries(self) -> Iterator[TlbEntry]:
        for bucket in self.leaves.values():
            for entries in bucket.values():
                yield from entries


class Tlb:
    """The SMMU TLB: ``capacity`` leaves, the oldest evicted first."""

    def __init__(self, fast: FastPath, capacity: int = 8192) -> None:
        self.capacity = capacity
        self.fast = fast
        self.tags: dict[Tag, _Space] = {}
        self.by_vmid: dict[int, set[Tag]] = {}
        #: Every cached entry, oldest first (eviction order).
        self._order: dict[TlbEntry, None] = {}
        #: Statistics (tests and the tour read them).
        self.hits = 0
        self.misses = 0

    @property
    def count(self) -> int:
        return len(self._order)

    def lookup(self, tag: Tag, va: int) -> TlbEntry | None:
        page = va >> PAGE_SHIFT
        sp = self.tags.get(tag)
        e = sp.pages.get(page) if sp is not None else None
        if e is None and tag[2] >= 0:
            sp = self.tags.get((tag[0], tag[1], GLOBAL_ASID))
            e = sp.pages.get(page) if sp is not None else None
        if e is None:
            self.misses += 1
        else:
            self.hits += 1
        return e

    def insert(self, tag: Tag, va: int, entry: TlbEntry) -> TlbEntry:
        """Cache ``entry`` for the page of ``va``; returns the cached entry (an equal
        translation of the same leaf already cached is reused: one entry per leaf)."""
        page = va >> PAGE_SHIFT
        sp = self.tags.get(tag)
        cached = None
        if sp is not None:
            bucket = sp.leaves.get(entry.size)
            same_leaf = bucket.get(entry.va) if bucket is not None else None
            if same_leaf:
                for e in same_leaf:
                    if e.pa == entry.pa and e.perms == entry.perms and e.user == entry.user:
                        cached = e
                        break
            old = sp.pages.get(page)
            if old is not None and old is not cached:
                del sp.pages[page]
                old.pages.remove(page)
                if not old.pages:
                    self._remove(old)
        if cached is None:
            order = self._order
            if len(order) >= self.capacity:
                self._remove(next(iter(order)))
            sp = self.tags.get(tag)
            if sp is None:
                sp = self._new_space(tag)
            bucket = sp.leaves.get(entry.size)
            if bucket is None:
                bucket = sp.leaves[entry.size] = {}
            same_leaf = bucket.get(entry.va)
            if same_leaf is None:
                bucket[entry.va] = [entry]
            else:
                same_leaf.append(entry)
            entry.tag = tag
            order[entry] = None
            cached = entry
        assert sp is not None
        pages = sp.pages
        if pages.get(page) is not cached:
            pages[page] = cached
            cached.pages.append(page)
        return cached

    def _new_space(self, tag: Tag) -> _Space:
        sp = self.tags[tag] = _Space()
        self.by_vmid.setdefault(tag[1], set()).add(tag)
        return sp

    def _remove(self, e: TlbEntry) -> None:
        tag = e.tag
        assert tag is not None
        sp = self.tags[tag]
        for p in e.pages:
            if sp.pages.get(p) is e:
                del sp.pages[p]
        e.pages = []
        bucket = sp.leaves[e.size]
        same = bucket[e.va]
        same.remove(e)
        if not same:
            del bucket[e.va]
            if not bucket:
                del sp.leaves[e.size]
                if not sp.leaves:
                    self._drop_space(tag)
        del self._order[e]
        if e.fast:
            self.fast.drop(e.fast)
            e.fast = None

    def _drop_space(self, tag: Tag) -> None:
        del self.tags[tag]
        tags = self.by_vmid[tag[1]]
        tags.discard(tag)
        if not tags:
            del self.by_vmid[tag[1]]

    # -- invalidation: by what the commands name ---------------------------------------------
    def _drop_tag(self, tag: Tag) -> int:
        sp = self.tags.get(tag)
        if sp is None:
            return 0
        gone = list(sp.entries())
        for e in gone:
            del self._order[e]
            if e.fast:
                self.fast.drop(e.fast)
                e.fast = None
            e.pages = []
        self._drop_space(tag)
        return len(gone)

    def tags_of(self, vmid: int) -> list[Tag]:
        return list(self.by_vmid.get(vmid, ()))

    def invalidate_tags(self, tags: Iterable[Tag], start: int = 0, end: int = _ALL) -> int:
        """Drop the entries of ``tags`` whose leaf intersects [start, end)."""
        dropped = 0
        whole = start == 0 and end >= _ALL
        for tag in tags:
            if whole:
                dropped += self._drop_tag(tag)
                continue
            sp = self.tags.get(tag)
            if sp is None:
                continue
            for e in sp.in_range(start, end):
                self._remove(e)
                dropped += 1
        return dropped

    def clear(self) -> int:
        n = self.count
        for tag in list(self.tags):
            self._drop_tag(tag)
        return n

    def entries(self) -> list[tuple[Tag, int, TlbEntry]]:
        return [(t, p << PAGE_SHIFT, e) for t, sp in self.tags.items()
                for p, e in sp.pages.items()]


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
        for cache in (self.ste, self.cd, self.l1cd):
            if last - first + 1 <= len(cache):
                sids: Iterable[int] = [s for s in range(first, last + 1) if s in cache]
            else:
                sids = [s for s in cache if first <= s <= last]
            for sid in sids:
                del cache[sid]

    def inv_cd(self, sid: int, ssid: int, leaf: bool) -> None:
        """CMD_CFGI_CD: the CD; without Leaf the L1CDs of the StreamID too (invalidating
        more L1CDs than the one named is permitted)."""
        cds = self.cd.get(sid)
        if cds is not None:
            cds.pop(ssid, None)
        if not leaf:
            self.l1cd.pop(sid, None)

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
    forwarded to the endpoint) or by the endpoint disabling ATS. Fast-path entries built
    from an ATC entry go with it."""

    def __init__(self, fast: FastPath) -> None:
        self.fast = fast
        #: sid -> ssid (-1: no PASID) -> page -> (pa page base, perms)
        self.by_sid: dict[int, dict[int, dict[int, tuple[int, int]]]] = {}

    def lookup(self, sid: int, ssid: int, va: int) -> tuple[int, int] | None:
        d = self.by_sid.get(sid)
        pages = d.get(ssid) if d is not None else None
        return pages.get(va >> PAGE_SHIFT) if pages is not None else None

    def insert(self, sid: int, ssid: int, va: int, pa_page: int, perms: int) -> None:
        pages = self.by_sid.setdefault(sid, {}).setdefault(ssid, {})
        page = va >> PAGE_SHIFT
        if pages.get(page) is not None:  # replaced: what was derived from it goes
            self.fast.drop(((sid, None if ssid < 0 else ssid, page, True),))
        pages[page] = (pa_page, perms)

    def invalidate(self, sid: int, ssid: int | None, start: int, end: int) -> int:
        """Drop [start, end) for one SSID (-1 = no PASID), or for every SSID when
        ``ssid`` is None (an invalidation without PASID drops PASID entries too)."""
        d = self.by_sid.get(sid)
        if not d:
            return 0
        lo, hi = start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        dropped = 0
        for s in list(d) if ssid is None else [ssid]:
            pages = d.get(s)
            if pages is None:
                continue
            if hi - lo + 1 <= len(pages):
                gone = [p for p in range(lo, hi + 1) if p in pages]
            else:
                gone = [p for p in pages if lo <= p <= hi]
            fssid = None if s < 0 else s
            for p in gone:
                del pages[p]
                self.fast.drop(((sid, fssid, p, True),))
            dropped += len(gone)
            if not pages:
                del d[s]
        if not d:
            del self.by_sid[sid]
        return dropped

    def drop_sid(self, sid: int) -> None:
        self.invalidate(sid, None, 0, _ALL)

    def count(self, sid: int | None = None) -> int:
        if sid is None:
            return sum(len(p) for d in self.by_sid.values() for p in d.values())
        return sum(len(p) for p in self.by_sid.get(sid, {}).values())

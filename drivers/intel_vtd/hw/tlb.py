"""The unit's translation caches (VT-d 6.2.3/6.2.4), indexed by what invalidation
descriptors name, so an invalidation costs what it removes.

The caches:

* the IOTLB: per tag (DID, PASID, PGTT) the cached leaves, keyed by page-size class,
  input page and privilege;
* the paging-structure caches: first stage (tag (DID, PASID, PGTT); for nested entries
  the table address is the second stage's output) and second stage (tag DID), keyed by
  table level and input prefix, each remembering the next table and the attributes
  accumulated above it;
* the requester view (``fast``): what a request of (source id, PASID, privilege) for a
  page resolves to, found with one dict lookup. Entries are either IOTLB entries seen
  through the cached context and PASID entries (a memo: dropping one only costs a
  refill) or the device's own ATC entries (architectural: only device-TLB
  invalidations drop them). Reverse indices lead invalidations to them;
* what the platform's DMA path reads (``hits``, the unit's ``dma_hits``): the
  requester view's unprivileged entries a device's DMA made, per (device, PASID), each
  dropped with the requester entry it copies.

Every entry stays, stale or not, until the invalidation the specification says drops
it (or the unit runs out of room and forgets everything).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iommu_core.platform.bus import Device

# A cached translation (IOTLB entry, or a device ATC entry when ``atc``):
# (page PA, allowed accesses, DID, PASID, kind, first vpn, last vpn, atc). An IOTLB
# entry's page PA is that of its first vpn; a requester-view entry's, that of its vpn.
E_PA, E_ALLOWED, E_DID, E_PASID, E_KIND, E_FIRST, E_LAST, E_ATC = range(8)
TlbEntry = tuple[int, int, int, int, int, int, int, bool]
Tag = tuple[int, int, int]  # (DID, PASID, PGTT)
FastKey = tuple[int, int, int]  # (source id, PASID key, vpn)
#: A paging-structure cache entry: (table address to read, attributes above it, the
#: table's input (guest) address, second stage lets it be written).
PscEntry = tuple[int, int, int, bool]
#: A published map's key: (device, PASID or None), as the platform's DMA path asks.
HitKey = tuple["Device", "int | None"]

#: vpn shift of each IOTLB page-size class (4 KiB, 2 MiB, 1 GiB).
CLASS_SHIFT = (0, 9, 18)
_CLASS_OF_PAGES = {1: 0, 1 << 9: 1, 1 << 18: 2}


def size_class(e: TlbEntry) -> int:
    return _CLASS_OF_PAGES[e[E_LAST] - e[E_FIRST] + 1]


def psc_key(vpn: int, level: int) -> int:
    """The key of the level-``level`` table holding ``vpn`` (9 index bits a level)."""
    return (vpn >> (9 * (level + 1))) << 3 | level


def _lowest(psc: dict[int, PscEntry] | None, vpn: int, top: int
            ) -> tuple[int, PscEntry] | None:
    """The lowest level below ``top`` whose table on the way to ``vpn`` ``psc`` holds."""
    if psc:
        for level in range(top):
            pe = psc.get(psc_key(vpn, level))
            if pe is not None:
                return level, pe
    return None


def _range_keys(d: Mapping[int, object], first: int, last: int, shift: int, low: int,
                lowbits: int, variants: Iterable[int]) -> list[int]:
    """Keys ``(idx << 3) | low | v`` of ``d`` with ``idx`` in [first >> shift,
    last >> shift]: by probing when the range is the smaller, else by a scan."""
    lo, hi = first >> shift, last >> shift
    if (hi - lo + 1) * 2 <= len(d):
        return [k for idx in range(lo, hi + 1) for v in variants
                if (k := idx << 3 | low | v) in d]
    return [k for k in d if k & lowbits == low and lo <= k >> 3 <= hi]


class VtdCaches:
    """IOTLB, paging-structure caches and the requester view of one unit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.iotlb: dict[Tag, dict[int, TlbEntry]] = {}
        self.iotlb_count = 0
        self._tags_of_did: dict[int, set[Tag]] = {}
        self.fs_psc: dict[Tag, dict[int, PscEntry]] = {}
        self._fs_tags_of_did: dict[int, set[Tag]] = {}
        self.ss_psc: dict[int, dict[int, PscEntry]] = {}
        self.fast: dict[FastKey, TlbEntry] = {}
        #: IOTLB entry (tag, key) -> the requester entries seen through it
        self._fast_of_entry: dict[tuple[Tag, int], list[FastKey]] = {}
        #: (source id, PASID key) -> its requester entries that are IOTLB views
        self._fast_of_req: dict[tuple[int, int], dict[FastKey, None]] = {}
        #: (source id, PASID) -> ATC entries by (page-size class, input page)
        self._atc: dict[tuple[int, int], dict[int, list[FastKey]]] = {}
        self._atc_pasids: dict[int, set[int]] = {}
        #: (device, PASID) -> {vpn: (page PA, allowed)}: copies of unprivileged
        #: requester entries, for the devices whose DMA made them
        self.hits: dict[HitKey, dict[int, tuple[int, int]]] = {}
        #: (source id, PASID key) -> the published maps copying its requester entries
        self._hits_of_req: dict[tuple[int, int], dict[HitKey, None]] = {}

    # ===================================================================================
    # Lookup and fill
    # ===================================================================================
    def iotlb_get(self, tag: Tag, vpn: int, priv: int) -> tuple[TlbEntry | None, int]:
        """The cached leaf for ``vpn`` (smallest page size first) and its key."""
        t = self.iotlb.get(tag)
        if t is None:
            return None, 0
        for c, s in enumerate(CLASS_SHIFT):
            k = (vpn >> s) << 3 | c << 1 | priv
            e = t.get(k)
            if e is not None:
                return e, k
        return None, 0

    def iotlb_put(self, tag: Tag, e: TlbEntry, priv: int) -> int:
        if self.iotlb_count >= self.capacity:
            self.forget_all()
        c = size_class(e)
        k = (e[E_FIRST] >> CLASS_SHIFT[c]) << 3 | c << 1 | priv
        t = self.iotlb.get(tag)
        if t is None:
            t = self.iotlb[tag] = {}
            self._tags_of_did.setdefault(tag[0], set()).add(tag)
        if k not in t:
            self.iotlb_count += 1
        t[k] = e
        return k

    def publish(self, dev: Device, pasid: int | None, fk: FastKey) -> None:
        """Copy the requester entry ``fk`` (``dev``'s request, unprivileged) into
        ``dev``'s published map."""
        e = self.fast[fk]
        hk = (dev, pasid)
        pub = self.hits.get(hk)
        if pub is None:
            pub = self.hits[hk] = {}
        pub[fk[2]] = (e[E_PA], e[E_ALLOWED])
        self._hits_of_req.setdefault((fk[0], fk[1]), {})[hk] = None

    def _unpublish(self, fk: FastKey) -> None:
        hks = self._hits_of_req.get((fk[0], fk[1]))
        if hks:
            for hk in hks:
                self.hits[hk].pop(fk[2], None)

    def drop_published(self, dev: Device) -> None:
        """What was published for ``dev`` (it left, or its endpoint state changed)."""
        for hk in [hk for hk in self.hits if hk[0] is dev]:
            del self.hits[hk]
        for req, hks in list(self._hits_of_req.items()):
            for hk in [hk for hk in hks if hk[0] is dev]:
                del hks[hk]
            if not hks:
                del self._hits_of_req[req]

    def fast_put(self, fk: FastKey, e: TlbEntry, tag: Tag, key: int) -> None:
        """A requester entry that is the IOTLB entry (tag, key) seen from ``fk``."""
        if len(self.fast) >= self.capacity:
            self.forget_requesters()
        elif fk in self.fast:
            self._unpublish(fk)  # replaced: copies of the old one go
        self.fast[fk] = e
        self._fast_of_entry.setdefault((tag, key), []).append(fk)
        req = self._fast_of_req.get((fk[0], fk[1]))
        if req is None:
            req = self._fast_of_req[(fk[0], fk[1])] = {}
        req[fk] = None

    def atc_put(self, fk: FastKey, e: TlbEntry) -> None:
        """An entry of the device's own translation cache (``e[E_ATC]`` set)."""
        if len(self.fast) >= self.capacity:
            self.forget_requesters()
        elif fk in self.fast:
            self._unpublish(fk)
        self.fast[fk] = e
        c = size_class(e)
        sid, pasid = fk[0], e[E_PASID]
        idx = self._atc.get((sid, pasid))
        if idx is None:
            idx = self._atc[(sid, pasid)] = {}
            self._atc_pasids.setdefault(sid, set()).add(pasid)
        idx.setdefault((e[E_FIRST] >> CLASS_SHIFT[c]) << 3 | c << 1, []).append(fk)

    def fs_psc_get(self, tag: Tag, vpn: int, top: int) -> tuple[int, PscEntry] | None:
        """The lowest cached first-stage table on the way to ``vpn``."""
        return _lowest(self.fs_psc.get(tag), vpn, top)

    def fs_psc_put(self, tag: Tag, key: int, pe: PscEntry) -> None:
        psc = self.fs_psc.get(tag)
        if psc is None:
            psc = self.fs_psc[tag] = {}
            self._fs_tags_of_did.setdefault(tag[0], set()).add(tag)
        psc[key] = pe

    def ss_psc_get(self, did: int, vpn: int, top: int) -> tuple[int, PscEntry] | None:
        """The lowest cached second-stage table on the way to ``vpn``."""
        return _lowest(self.ss_psc.get(did), vpn, top)

    def ss_psc_put(self, did: int, key: int, pe: PscEntry) -> None:
        psc = self.ss_psc.get(did)
        if psc is None:
            psc = self.ss_psc[did] = {}
        psc[key] = pe

    # ===================================================================================
    # Dropping
    # ===================================================================================
    def _fast_gone(self, fks: Iterable[FastKey]) -> None:
        """Requester entries that were IOTLB views go (ATC entries stay)."""
        fast = self.fast
        for fk in fks:
            e = fast.get(fk)
            if e is not None and not e[E_ATC]:
                del fast[fk]
                req = self._fast_of_req.get((fk[0], fk[1]))
                if req is not None:
                    req.pop(fk, None)
                self._unpublish(fk)

    def _entry_gone(self, tag: Tag, key: int) -> None:
        self.iotlb_count -= 1
        fks = self._fast_of_entry.pop((tag, key), None)
        if fks:
            self._fast_gone(fks)

    def drop_tag(self, tag: Tag) -> None:
        t = self.iotlb.pop(tag, None)
        if t is None:
            return
        self._tags_of_did[tag[0]].discard(tag)
        for k in t:
            self._entry_gone(tag, k)

    def drop_tag_range(self, tag: Tag, first: int, last: int) -> None:
        """IOTLB entries of ``tag`` whose page overlaps vpns [first, last]."""
        t = self.iotlb.get(tag)
        if t is None:
            return
        for c, s in enumerate(CLASS_SHIFT):
            for k in _range_keys(t, first, last, s, c << 1, 0b110, (0, 1)):
                del t[k]
                self._entry_gone(tag, k)
        if not t:
            del self.iotlb[tag]
            self._tags_of_did[tag[0]].discard(tag)

    def tags_of_did(self, did: int) -> list[Tag]:
        return list(self._tags_of_did.get(did, ()))

    def fs_tags_of_did(self, did: int) -> list[Tag]:
        return list(self._fs_tags_of_did.get(did, ()))

    def drop_fs_psc(self, tag: Tag, first: int | None = None, last: int = 0) -> None:
        """First-stage paging-structure entries of ``tag`` (covering [first, last])."""
        if first is None:
            if self.fs_psc.pop(tag, None) is not None:
                self._fs_tags_of_did[tag[0]].discard(tag)
            return
        psc = self.fs_psc.get(tag)
        if psc:
            _drop_psc_range(psc, first, last)

    def drop_ss_psc(self, did: int, first: int | None = None, last: int = 0) -> None:
        if first is None:
            self.ss_psc.pop(did, None)
            return
        psc = self.ss_psc.get(did)
        if psc:
            _drop_psc_range(psc, first, last)

    def drop_atc(self, sid: int, pasid: int | None, first: int, last: int) -> None:
        """The device's ATC entries (of ``pasid``, or all) overlapping [first, last]."""
        pasids = [pasid] if pasid is not None else list(self._atc_pasids.get(sid, ()))
        fast = self.fast
        for p in pasids:
            idx = self._atc.get((sid, p))
            if not idx:
                continue
            for c, s in enumerate(CLASS_SHIFT):
                for k in _range_keys(idx, first, last, s, c << 1, 0b110, (0,)):
                    for fk in idx.pop(k):
                        e = fast.get(fk)
                        if e is not None and e[E_ATC]:
                            del fast[fk]
                            self._unpublish(fk)

    def drop_requester(self, sid: int, pasids: Iterable[int] | None = None,
                       atc: bool = False) -> None:
        """IOTLB views of ``sid``'s requests (those with the PASID keys of ``pasids``,
        or all), and with ``atc`` its ATC entries too."""
        reqs = [r for r in self._fast_of_req if r[0] == sid] if pasids is None else [
            (sid, pk) for p in pasids for pk in (p << 1, p << 1 | 1, -2, -1)]
        for r in reqs:
            req = self._fast_of_req.pop(r, None)
            if req:
                self._fast_gone(list(req))
        if atc:
            for p in self._atc_pasids.pop(sid, ()):
                for fks in self._atc.pop((sid, p), {}).values():
                    for fk in fks:
                        if self.fast.pop(fk, None) is not None:
                            self._unpublish(fk)

    def forget_translations(self) -> None:
        """Global invalidation: the IOTLB and every paging-structure cache."""
        self.iotlb.clear()
        self.iotlb_count = 0
        self._tags_of_did.clear()
        self.fs_psc.clear()
        self._fs_tags_of_did.clear()
        self.ss_psc.clear()
        self._fast_of_entry.clear()
        for req in self._fast_of_req.values():
            self._fast_gone(list(req))
        self._fast_of_req.clear()

    def forget_requesters(self) -> None:
        """The requester view, ATC entries included (translation disabled, or full)."""
        self.fast.clear()
        self._fast_of_entry.clear()
        self._fast_of_req.clear()
        self._atc.clear()
        self._atc_pasids.clear()
        self.hits.clear()
        self._hits_of_req.clear()

    def forget_all(self) -> None:
        self.forget_translations()
        self.forget_requesters()


def _drop_psc_range(psc: dict[int, PscEntry], first: int, last: int) -> None:
    """Paging-structure entries whose table maps part of vpns [first, last]."""
    for level in range(5):
        s = 9 * (level + 1)
        for k in _range_keys(psc, first, last, s, level, 0b111, (0,)):
            del psc[k]

"""The indexed caches of the SMMU model against a naive reference, as a property.

Random sequences of TLB fills, ATC fills, fast-path derivations and commands (every
TLBI, ATC_INV and CFGI the model executes, decoded by the real command engine) run on
the model and on a reference that keeps one entry per cached page and invalidates by
scanning everything with the command's predicate (the model's behaviour before its
caches were indexed). After every step:

* the TLB and the ATCs hold exactly what the reference holds (stale entries survive
  until the invalidation that names them, none survives it);
* every fast-path entry still has its source: the TLB or ATC entry it came from is
  cached with the same translation, and no configuration invalidation of its
  StreamID/SSID happened since it was made;
* the TLB's indexes agree with each other and the capacity holds;
* what the fast path published for the DMA path (``dma_hits``, per device and SSID) is a
  subset of the fast path for the device's StreamID and its ATS state now: a change of
  the endpoint's ATS Enable drops the device's published map.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware
from drivers.arm_smmu_v3.hw.tlb import GLOBAL_ASID, NESTED, NO_ASID, STAGE1, STAGE2, TlbEntry
from iommu_core.platform.ats import PCI_ATS_ENABLED
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.platform import Platform

PAGE = 4096
VMIDS = (1, 2)
ASIDS = (5, 6)
SIDS = (1, 2)
SSIDS: tuple[int | None, ...] = (None, 0, 1)
TAGS = ([(s, v, a) for s in (STAGE1, NESTED) for v in VMIDS for a in (*ASIDS, GLOBAL_ASID)]
        + [(STAGE2, v, NO_ASID) for v in VMIDS])
SIZES = (PAGE, 4 * PAGE, 512 * PAGE)
NPAGES = 16  # the VA window: 64 KiB, inside one 2 MiB leaf: entries collide
_ALL = 1 << 64

Translation = tuple[int, int, int, int]  # leaf va, size, pa, perms


class Reference:
    """One entry per (tag, page), invalidated by predicate over everything."""

    def __init__(self) -> None:
        self.tlb: dict[tuple[tuple[int, int, int], int], Translation] = {}
        self.atc: dict[tuple[int, int, int], tuple[int, int]] = {}

    def tlb_invalidate(self, match: Any, start: int = 0, end: int = _ALL) -> None:
        for key, (va, size, _pa, _p) in list(self.tlb.items()):
            if match(key[0]) and va < end and start < va + size:
                del self.tlb[key]

    def atc_invalidate(self, sid: int, ssid: int | None, start: int, end: int) -> None:
        lo, hi = start >> 12, (end - 1) >> 12
        for key in list(self.atc):
            if key[0] == sid and (ssid is None or key[1] == ssid) and lo <= key[2] <= hi:
                del self.atc[key]


def _range(q0: int, q1: int, addr: int) -> tuple[int, int]:
    tg = (q1 >> 10) & 3
    if not tg:
        return addr, addr + 1
    num = ((q0 >> 12) & 0x1F) + 1
    scale = (q0 >> 20) & 0x1F
    return addr, addr + (num << (scale + {1: 12, 2: 14, 3: 16}[tg]))


def tlbi_command(name: str, vmid: int, asid: int, a: int, rng: tuple[int, int, int]
                 ) -> tuple[tuple[int, int], Callable[[tuple[int, int, int]], bool], int, int]:
    """The command and, for the reference, the predicate over tags and [start, end)."""
    tg, scale, num = rng
    q1 = a | (tg << 10) | (3 << 8 if tg else 0) | 1  # TTL=3: never reserved
    q0 = num << 12 | scale << 20 if tg else 0
    s1 = (STAGE1, NESTED)
    whole = (0, _ALL)
    if name == "NH_ALL":
        return (0x10 | vmid << 32, 0), lambda t: t[0] in s1 and t[1] == vmid, *whole
    if name == "NH_ASID":
        return ((0x11 | vmid << 32 | asid << 48, 0),
                lambda t: t[0] in s1 and t[1] == vmid and t[2] == asid, *whole)
    if name == "NH_VA":
        return ((0x12 | q0 | vmid << 32 | asid << 48, q1),
                lambda t: t[0] in s1 and t[1] == vmid and t[2] in (asid, GLOBAL_ASID),
                *_range(q0, q1, a))
    if name == "NH_VAA":
        return ((0x13 | q0 | vmid << 32, q1), lambda t: t[0] in s1 and t[1] == vmid,
                *_range(q0, q1, a))
    if name == "S2_IPA":
        return ((0x2A | q0 | vmid << 32, q1), lambda t: t[0] == STAGE2 and t[1] == vmid,
                *_range(q0, q1, a))
    if name == "S12_VMALL":
        return (0x28 | vmid << 32, 0), lambda t: t[1] == vmid, *whole
    return (0x30, 0), lambda t: True, *whole  # NSNH_ALL


# -- operations --------------------------------------------------------------------------
tlb_fill = st.tuples(st.just("tlb"), st.sampled_from(TAGS), st.integers(0, NPAGES - 1),
                     st.sampled_from(SIZES), st.integers(0, 3), st.sampled_from((1, 3, 7)))
atc_fill = st.tuples(st.just("atc"), st.sampled_from(SIDS), st.sampled_from((-1, 0, 1)),
                     st.integers(0, NPAGES - 1), st.integers(0, 3))
# A fast-path entry from the n-th cached TLB (or ATC) entry, for a StreamID and SSID
# (published for the StreamID's device when its ATS state is the entry's).
fast = st.tuples(st.just("fast"), st.sampled_from(SIDS), st.sampled_from(SSIDS),
                 st.integers(0, 1 << 16), st.booleans())
# The endpoint of a StreamID turns ATS on or off.
flip = st.tuples(st.just("flip"), st.sampled_from(SIDS))
addr = st.integers(0, NPAGES - 1).map(lambda p: p * PAGE)
rng = st.one_of(st.just((0, 0, 0)),  # TG=0: one address
                st.tuples(st.integers(1, 3), st.integers(0, 5), st.integers(0, 7)),
                st.tuples(st.integers(1, 3), st.integers(0, 31), st.integers(0, 31)))
tlbi = st.tuples(st.just("tlbi"), st.sampled_from(
    ["NH_ALL", "NH_ASID", "NH_VA", "NH_VAA", "S2_IPA", "S12_VMALL", "NSNH_ALL"]),
    st.sampled_from(VMIDS), st.sampled_from(ASIDS), addr, rng)
atc_inv = st.tuples(st.just("atc_inv"), st.sampled_from(SIDS), st.sampled_from(SSIDS),
                    st.booleans(), addr, st.one_of(st.integers(0, 4), st.integers(0, 52)))
cfgi = st.tuples(st.just("cfgi"), st.sampled_from(["STE", "CD", "CD_ALL", "ALL", "STE_RANGE"]),
                 st.sampled_from(SIDS), st.integers(0, 1), st.booleans())
ops = st.lists(st.one_of(tlb_fill, tlb_fill, atc_fill, atc_fill, fast, fast, fast, tlbi,
                         atc_inv, cfgi, cfgi, flip), min_size=10, max_size=60)


def run(seq: list[tuple[Any, ...]], capacity: int) -> None:
    hw = SmmuV3Hardware("p0", SmmuHwConfig(tlb_entries=capacity), Platform())
    devs = {sid: make_pci_device(f"0000:00:0{sid}.0", "p0", stream_id=sid) for sid in SIDS}
    for d in devs.values():
        d.props.on_change = functools.partial(hw.device_changed, d)
    ref = Reference()
    #: fast key -> (what it was derived from, still valid per the reference)
    sources: dict[tuple[Any, ...], tuple[str, Any]] = {}
    dead: set[tuple[Any, ...]] = set()
    for op in seq:
        kind = op[0]
        if kind == "tlb":
            _, tag, page, size, pa_sel, perms = op
            va = page * PAGE
            e = TlbEntry(va & -size, size, (pa_sel << 30) + (va & -size), perms, True)
            hw.tlb.insert(tag, va, e)
            ref.tlb[(tag, page)] = (e.va, e.size, e.pa, e.perms)
        elif kind == "atc":
            _, sid, ssid, page, pa_sel = op
            hw.atc.insert(sid, ssid, page * PAGE, pa_sel << 30, 3)
            ref.atc[(sid, ssid, page)] = (pa_sel << 30, 3)
        elif kind == "fast":
            _, sid, ssid, nth, from_atc = op
            if from_atc and ref.atc:
                asid_, assid, page = sorted(ref.atc)[nth % len(ref.atc)]
                hit = hw.atc.lookup(asid_, assid, page * PAGE)
                assert hit is not None
                key = (asid_, None if assid < 0 else assid, page, True)
                hw.fast.add(key, (hit[0], hit[1] | 8), None, _dev(devs, asid_, True))
                sources[key] = ("atc", (asid_, assid, page, hit))
                dead.discard(key)
            elif not from_atc and ref.tlb:
                tag, page = sorted(ref.tlb)[nth % len(ref.tlb)]
                e = hw.tlb.tags[tag].pages.get(page) if tag in hw.tlb.tags else None
                if e is not None:  # (evicted when the capacity is small)
                    key = (sid, ssid, page, False)
                    hw.fast.add(key, (e.pa, e.perms | 8), e, _dev(devs, sid, False))
                    sources[key] = ("tlb", (tag, page, (e.va, e.size, e.pa, e.perms)))
                    dead.discard(key)
        elif kind == "flip":
            d = devs[op[1]]
            d.props[PCI_ATS_ENABLED] = not d.props.get(PCI_ATS_ENABLED, False)
        elif kind == "tlbi":
            cmd, match, lo, hi = tlbi_command(*op[1:])
            assert hw.cmd.execute(*cmd, 0) == 0, (op, cmd)
            ref.tlb_invalidate(match, lo, hi)
        elif kind == "atc_inv":
            _, sid, ssid, glob, a, size = op
            q0 = 0x40 | sid << 32 | (ssid or 0) << 12 | (1 << 11 if ssid is not None else 0)
            q0 |= 1 << 9 if glob else 0
            assert hw.cmd.execute(q0, a | size, 0) == 0
            if size == 52:
                start, end = 0, _ALL
            else:
                start = a & ~((1 << (size + 12)) - 1)
                end = start + (1 << (size + 12))
            ref.atc_invalidate(sid, None if glob or ssid is None else ssid, start, end)
        else:
            _, name, sid, ssid, leaf = op
            if name == "STE":
                assert hw.cmd.execute(0x03 | sid << 32, int(leaf), 0) == 0
                gone = {k for k in sources if k[0] == sid}
            elif name == "CD":
                assert hw.cmd.execute(0x05 | sid << 32 | ssid << 12, int(leaf), 0) == 0
                gone = {k for k in sources if k[0] == sid and (
                    not leaf or k[1] == ssid or (ssid == 0 and k[1] is None))}
            elif name == "CD_ALL":
                assert hw.cmd.execute(0x06 | sid << 32, 0, 0) == 0
                gone = {k for k in sources if k[0] == sid}
            elif name == "STE_RANGE":  # SIDs 0-1 or 2-3
                assert hw.cmd.execute(0x04 | sid << 32, 0, 0) == 0
                gone = {k for k in sources if k[0] >> 1 == sid >> 1}
            else:
                assert hw.cmd.execute(0x04, 31, 0) == 0
                gone = set(sources)
            dead |= gone
        check(hw, ref, sources, dead, capacity)
        check_published(hw)


def _dev(devs: dict[int, Device], sid: int, ats: bool) -> Device | None:
    """The device that made a fast-path entry of ``sid`` with ATS ``ats``: the one behind
    the StreamID if its ATS state is that (the model only publishes what it found for
    the device's DMA)."""
    d = devs[sid]
    return d if bool(d.props.get(PCI_ATS_ENABLED, False)) == ats else None


def check_published(hw: SmmuV3Hardware) -> None:
    fast = hw.fast
    assert hw.dma_hits is fast.hits
    for (dev, ssid), pages in fast.hits.items():
        sid, ats = fast._pub[(dev, ssid)]
        assert sid == dev.stream_ids[0]
        assert ats == bool(dev.props.get(PCI_ATS_ENABLED, False)), (dev, ssid)
        assert (dev, ssid) in fast._pub_of[(sid, ssid, ats)]
        for page, value in pages.items():
            assert fast.get((sid, ssid, page, ats)) == value, (dev, ssid, page)
    assert sum(len(v) for v in fast._pub_of.values()) == len(fast._pub) == len(fast.hits)


def check(hw: SmmuV3Hardware, ref: Reference, sources: dict[tuple[Any, ...], tuple[str, Any]],
          dead: set[tuple[Any, ...]], capacity: int) -> None:
    tlb = hw.tlb
    got = {(tag, page): (e.va, e.size, e.pa, e.perms)
           for tag, sp in tlb.tags.items() for page, e in sp.pages.items()}
    if capacity >= len(SIZES) * len(TAGS) * NPAGES:
        assert got == ref.tlb
    else:  # eviction only loses entries, never invents or resurrects one
        assert got.items() <= ref.tlb.items()
    assert tlb.count <= capacity
    # Indexes: every cached entry is found by its leaf and by each of its pages.
    for tag, sp in tlb.tags.items():
        assert sp.pages and sp.leaves, tag
        for bucket_size, bucket in sp.leaves.items():
            for va, entries in bucket.items():
                for e in entries:
                    assert e.tag == tag and e.size == bucket_size and e.va == va
                    assert e.pages and all(sp.pages[p] is e for p in e.pages)
    assert sum(1 for sp in tlb.tags.values() for _ in sp.entries()) == tlb.count
    atc = {(sid, ssid, page): v for sid, d in hw.atc.by_sid.items()
           for ssid, pages in d.items() for page, v in pages.items()}
    assert atc == ref.atc
    for key in hw.fast:
        assert key not in dead, key
        kind, src = sources[key]
        if kind == "tlb":
            # Its source entry is still cached (for this page or another of its leaf).
            tag, page, tr = src
            assert any(t == tag and v == tr for (t, _p), v in ref.tlb.items()), key
        else:
            sid, ssid, page, hit = src
            assert atc.get((sid, ssid, page)) == hit, key


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Corners a random search reaches rarely: CFGI_CD of SSID 0 also covers substream-less
# traffic; a one-page ATC_INV; a range TLBI starting inside a cached block.
CORNERS: list[list[tuple[Any, ...]]] = [
    [("tlb", TAGS[0], 3, PAGE, 0, 3), ("fast", 1, None, 0, False), ("cfgi", "CD", 1, 0, True)],
    [("atc", 1, -1, 5, 1), ("atc", 1, -1, 6, 1), ("atc_inv", 1, None, False, 5 * PAGE, 0)],
    [("tlb", TAGS[0], 3, 4 * PAGE, 0, 3), ("fast", 1, 0, 0, False),
     ("tlbi", "NH_VA", TAGS[0][1], TAGS[0][2], 3 * PAGE, (1, 0, 0))],
]


@SETTINGS
@given(ops)
@example(CORNERS[0])
@example(CORNERS[1])
@example(CORNERS[2])
def test_indexed_caches_match_the_reference(seq: list[tuple[Any, ...]]) -> None:
    run(seq, capacity=1 << 20)


@SETTINGS
@given(ops, st.integers(1, 6))
def test_eviction_never_resurrects(seq: list[tuple[Any, ...]], capacity: int) -> None:
    run(seq, capacity)

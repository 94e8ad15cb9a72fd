"""The mock IOMMU's hardware: a small but complete translation unit.

What the driver sees (and all it sees):

* registers (:class:`MockRegs`, little-endian, 32-bit accesses; 64-bit ones are two):

  ======  =========  ===================================================================
  offset  name       meaning
  ======  =========  ===================================================================
  0x00    ID         RO ``0x4D4F434B`` ("MOCK")
  0x04    CAP        RO bits 4:0 PASID width, bit 8 dirty tracking, bits 15:12 max levels
  0x08    CTRL       RW bit 0 EN (translation on; off = every DMA is aborted)
  0x0c    TEST       RO ``0xDEADBEEF`` (what GET_HW_INFO reports as ``test_reg``)
  0x10    DT_BASE    RW u64: physical address of the device table
  0x20    INV_CMD    WO u32: bits 3:0 type (1 ALL, 2 DID, 3 DEVICE, 4 PASID), bits 31:16
                     DID; executes the invalidation when written
  0x28    INV_ARG    RW u64: DEVICE: RID; PASID: RID | PASID << 16
  0x30    INV_DONE   RO u32: invalidations completed
  0x38    PRI_RESP   WO u64: page response ``grpid << 32 | pasid << 8 | code``
  0x40    FAULTS     RO u32: DMA faults recorded
  ======  =========  ===================================================================

* memory the driver allocated and programmed:

  - a flat **device table** of 65536 32-byte **DTEs** (2 MiB) indexed by requester ID;
  - a **DTE** (4 qwords): q0 ``bit 0 V``, ``bits 2:1 MODE`` (0 abort, 1 bypass,
    2 translate), ``bit 3 HAD`` (set dirty bits on writes), ``bit 4 PASID_EN``,
    ``bits 10:8`` page-table levels, ``bits 31:16`` domain ID; q1 page-table root;
    q2 PASID directory;
  - a 2-level **PASID table**: the directory is 4096 pointers (32 KiB) indexed by
    ``pasid >> 8``; a leaf page holds 256 16-byte entries (q0 as DTE q0, q1 root);
  - the **page tables** themselves, in the ``mock`` format (AMD v1 encoding, 2 KiB
    granule), walked with the shared :func:`iommu_core.pgtable.walk`.

Caches keep stale entries until the driver invalidates them: the DTE and PASID-entry
caches, and a small IOTLB tagged by domain ID. With HAD set, a write marks the leaf
descriptor dirty in memory (also on an IOTLB hit).
"""

from __future__ import annotations

from typing import Any

from iommu_core.pgtable import Access, WalkFault, formats, walk
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import ACCESS_WRITE, DmaFault, IommuHardware, Mmio
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.trace import Tracer

GRANULE = 2048
_GRANULE_SHIFT = 11

MOCK_ID = 0x4D4F434B
TEST_REGVAL = 0xDEADBEEF
PASID_BITS = 20
MAX_LEVELS = 4

REG_ID = 0x00
REG_CAP = 0x04
REG_CTRL = 0x08
REG_TEST = 0x0C
REG_DT_BASE = 0x10
REG_INV_CMD = 0x20
REG_INV_ARG = 0x28
REG_INV_DONE = 0x30
REG_PRI_RESP = 0x38
REG_FAULTS = 0x40

CAP_DIRTY = 1 << 8
CTRL_EN = 1 << 0

INV_ALL = 1
INV_DID = 2
INV_DEVICE = 3
INV_PASID = 4

# DTE / PASID entry q0
CTX_V = 1 << 0
CTX_MODE_SHIFT = 1
MODE_ABORT = 0
MODE_BYPASS = 1
MODE_TRANSLATE = 2
CTX_HAD = 1 << 3
CTX_PASID_EN = 1 << 4
CTX_LEVELS_SHIFT = 8
CTX_DID_SHIFT = 16
PTR_V = 1 << 0
ADDR_MASK = ((1 << 52) - 1) & ~0xFFF

DTE_SIZE = 32
DT_ENTRIES = 1 << 16
DT_ORDER = 9  # 65536 x 32 bytes = 2 MiB
PASID_ENTRY_SIZE = 16
PASIDS_PER_TABLE = 256
PASID_DIR_ENTRIES = 1 << (PASID_BITS - 8)

#: (mode, root, levels, did, had); None for a context that faults, with its reason.
_Ctx = tuple[int, int, int, int, bool]


def make_ctx_q0(mode: int, levels: int = 0, did: int = 0, had: bool = False,
                pasid_en: bool = False) -> int:
    q0 = CTX_V | (mode << CTX_MODE_SHIFT) | (levels << CTX_LEVELS_SHIFT) | (
        did << CTX_DID_SHIFT)
    if had:
        q0 |= CTX_HAD
    if pasid_en:
        q0 |= CTX_PASID_EN
    return q0


class MockRegs(Mmio):
    """The register window; writes with side effects go to the hardware."""

    def __init__(self, hw: MockIommuHw) -> None:
        self.hw = hw
        self.r: dict[int, int] = {}

    def read32(self, offset: int) -> int:
        hw = self.hw
        if offset == REG_ID:
            return MOCK_ID
        if offset == REG_CAP:
            return PASID_BITS | CAP_DIRTY | (MAX_LEVELS << 12)
        if offset == REG_TEST:
            return TEST_REGVAL
        if offset == REG_INV_DONE:
            return hw.inv_done & 0xFFFF_FFFF
        if offset == REG_FAULTS:
            return len(hw.faults) & 0xFFFF_FFFF
        return self.r.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        if offset in (REG_ID, REG_CAP, REG_TEST, REG_INV_DONE, REG_FAULTS):
            return  # read-only
        self.r[offset] = value & 0xFFFF_FFFF
        if offset == REG_INV_CMD:
            self.hw.invalidate(value, self.read64(REG_INV_ARG))
        elif offset == REG_PRI_RESP + 4:
            self.hw.page_response(self.read64(REG_PRI_RESP))
        elif offset == REG_CTRL:
            self.hw.set_enabled(bool(value & CTRL_EN))


class MockIommuHw(IommuHardware):
    """The mock unit: registers, caches, and the translation path."""

    granule = GRANULE

    def __init__(self, name: str, mem: PhysicalMemory, tracer: Tracer,
                 iotlb_size: int = 256) -> None:
        self.name = name
        self.mem = mem
        self.tracer = tracer
        self.regs = MockRegs(self)
        self.mmio: dict[str, Mmio] = {"regs": self.regs}
        self.irqs = {}
        self.iotlb_size = iotlb_size
        #: (rid, pasid or -1, iova >> 11) -> (page base, perm, leaf address, had, did).
        self.iotlb: dict[tuple[int, int, int], tuple[int, int, int, bool, int]] = {}
        #: The IOTLB as the DMA path reads it, by 4 KiB page: (device, pasid) -> {page:
        #: (base, perm)} for each page whose two granules the IOTLB holds, contiguous,
        #: after a device's DMA found them (without write permission when HAD: a write
        #: hit marks the leaf dirty); dropped with either granule's entry.
        self.dma_hits: dict[tuple[Device, int | None], dict[int, tuple[int, int]]] = {}
        #: (rid, pasid or -1, page) -> the published map holding that page.
        self._published: dict[tuple[int, int, int], dict[int, tuple[int, int]]] = {}
        self.dte_cache: dict[int, tuple[int, int, int, int]] = {}
        self.pasid_cache: dict[tuple[int, int], tuple[int, int]] = {}
        self.inv_done = 0
        self.enabled = False
        self.faults: list[DmaFault] = []
        self.page_responses: list[int] = []

    # -- register side effects -----------------------------------------------------------
    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        self._flush_all()

    def _flush_all(self) -> None:
        self.iotlb.clear()
        self.dma_hits.clear()
        self._published.clear()
        self.dte_cache.clear()
        self.pasid_cache.clear()

    def _drop(self, keys: list[tuple[int, int, int]]) -> None:
        """IOTLB entries, and what was published from them."""
        published = self._published
        for k in keys:
            del self.iotlb[k]
            pub = published.pop((k[0], k[1], k[2] >> 1), None)
            if pub is not None:
                pub.pop(k[2] >> 1, None)

    def invalidate(self, cmd: int, arg: int) -> None:
        kind = cmd & 0xF
        if kind == INV_ALL:
            self._flush_all()
        elif kind == INV_DID:
            did = (cmd >> 16) & 0xFFFF
            self._drop([k for k, v in self.iotlb.items() if v[4] == did])
        elif kind == INV_DEVICE:
            rid = arg & 0xFFFF
            self.dte_cache.pop(rid, None)
            for pk in [pk for pk in self.pasid_cache if pk[0] == rid]:
                del self.pasid_cache[pk]
            self._drop([k for k in self.iotlb if k[0] == rid])
        elif kind == INV_PASID:
            rid, pasid = arg & 0xFFFF, (arg >> 16) & 0xFFFFF
            self.pasid_cache.pop((rid, pasid), None)
            self._drop([k for k in self.iotlb if k[0] == rid and k[1] == pasid])
        if self.tracer.enabled:
            self.tracer.event("hw", "invalidate", f"{self.name} cmd {cmd:#x} arg {arg:#x}")
        self.inv_done += 1

    def page_response(self, value: int) -> None:
        self.page_responses.append(value)

    # -- translation ------------------------------------------------------------------------
    def _fault(self, dev: Device, iova: int, pasid: int | None, access: int, reason: str,
               **detail: Any) -> DmaFault:
        f = DmaFault(dev.name, iova, pasid, access, reason, {"rid": dev.rid, **detail})
        self.faults.append(f)
        if self.tracer.enabled:
            self.tracer.event("hw", "fault", str(f))
        return f

    def _dte(self, rid: int) -> tuple[int, int, int, int]:
        dte = self.dte_cache.get(rid)
        if dte is None:
            base = self.regs.read64(REG_DT_BASE) & ADDR_MASK
            if not base or rid >= DT_ENTRIES:
                dte = (0, 0, 0, 0)
            else:
                raw = self.mem.read_qwords(base + rid * DTE_SIZE, 4)
                dte = (raw[0], raw[1], raw[2], raw[3])
            self.dte_cache[rid] = dte
        return dte

    def _pasid_entry(self, rid: int, pasid_dir: int, pasid: int) -> tuple[int, int]:
        ent = self.pasid_cache.get((rid, pasid))
        if ent is None:
            mem = self.mem
            ptr = mem.read_u64((pasid_dir & ADDR_MASK) + ((pasid >> 8) << 3))
            if not ptr & PTR_V:
                ent = (0, 0)
            else:
                raw = mem.read_qwords((ptr & ADDR_MASK) + (pasid & 0xFF) * PASID_ENTRY_SIZE,
                                      2)
                ent = (raw[0], raw[1])
            self.pasid_cache[(rid, pasid)] = ent
        return ent

    def _context(self, dev: Device, pasid: int | None, iova: int, access: int) -> _Ctx:
        rid = dev.rid
        q0, q1, q2, _q3 = self._dte(rid)
        if not q0 & CTX_V:
            raise self._fault(dev, iova, pasid, access, "DTE_INVALID")
        if pasid is not None:
            if not q0 & CTX_PASID_EN or pasid >> PASID_BITS:
                raise self._fault(dev, iova, pasid, access, "PASID_DISABLED")
            q0, q1 = self._pasid_entry(rid, q2, pasid)
            if not q0 & CTX_V:
                raise self._fault(dev, iova, pasid, access, "PASID_INVALID")
        mode = (q0 >> CTX_MODE_SHIFT) & 3
        levels = (q0 >> CTX_LEVELS_SHIFT) & 7
        did = (q0 >> CTX_DID_SHIFT) & 0xFFFF
        return mode, q1 & ADDR_MASK, levels, did, bool(q0 & CTX_HAD)

    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        key = (dev.rid, -1 if pasid is None else pasid, iova >> _GRANULE_SHIFT)
        hit = self.iotlb.get(key)
        if hit is not None:
            base, perm, leaf, had, _did = hit
            if not access & 3 & ~perm:
                if had and access & ACCESS_WRITE:
                    self._mark_dirty(leaf)
                return base | (iova & (GRANULE - 1))
        return self._translate_slow(dev, pasid, iova, access, key)

    def _publish(self, dev: Device, pasid: int | None, key: tuple[int, int, int]) -> None:
        """Publish the 4 KiB page of ``key``'s granule if the IOTLB holds both its
        granules, physically contiguous."""
        rid, p, g = key
        lo, hi = self.iotlb.get((rid, p, g & ~1)), self.iotlb.get((rid, p, g | 1))
        if lo is None or hi is None or lo[0] & 0xFFF or hi[0] != lo[0] + GRANULE:
            return
        perm = lo[1] & hi[1]
        if lo[3] or hi[3]:
            perm &= ~ACCESS_WRITE
        pub = self.dma_hits.get((dev, pasid))
        if pub is None:
            pub = self.dma_hits[(dev, pasid)] = {}
        pk = (rid, p, g >> 1)
        old = self._published.get(pk)
        if old is not None and old is not pub:
            old.pop(g >> 1, None)  # another device with this RID found it before
        pub[g >> 1] = (lo[0], perm)
        self._published[pk] = pub

    def detach_device(self, dev: Device) -> None:
        for hk in [hk for hk in self.dma_hits if hk[0] is dev]:
            pub = self.dma_hits.pop(hk)
            for page in pub:
                k = (dev.rid, -1 if hk[1] is None else hk[1], page)
                if self._published.get(k) is pub:
                    del self._published[k]

    def _mark_dirty(self, leaf: int) -> None:
        fmt = formats.mock()
        pte = self.mem.read_u64(leaf)
        if not fmt.is_dirty(pte):
            self.mem.write_u64(leaf, fmt.make_dirty(pte))

    def _translate_slow(self, dev: Device, pasid: int | None, iova: int, access: int,
                        key: tuple[int, int, int]) -> int:
        if not self.enabled:
            raise self._fault(dev, iova, pasid, access, "IOMMU_DISABLED")
        mode, root, levels, did, had = self._context(dev, pasid, iova, access)
        if mode == MODE_BYPASS:
            return iova
        if mode != MODE_TRANSLATE or not levels or levels > MAX_LEVELS:
            raise self._fault(dev, iova, pasid, access, "ABORT" if mode == MODE_ABORT
                              else "BAD_CONTEXT")
        write = bool(access & ACCESS_WRITE)
        res = walk(formats.mock(levels=levels), self.mem.read_u64, root, iova,
                   access=Access.WRITE if write else Access.READ, privileged=True,
                   set_dirty=had and write, write_u64=self.mem.write_u64)
        if isinstance(res, WalkFault):
            raise self._fault(dev, iova, pasid, access, f"IO_PAGE_FAULT_{res.reason.upper()}",
                              level=res.level, did=did)
        perm = (1 if res.readable else 0) | (2 if res.writable else 0)
        if len(self.iotlb) >= self.iotlb_size:
            self._drop([next(iter(self.iotlb))])
        base = res.oa & ~(GRANULE - 1)
        self.iotlb[key] = (base, perm, res.desc_addr, had, did)
        self._publish(dev, pasid, key)
        if self.tracer.enabled:
            self.tracer.event("hw", "walk", f"{dev.name} iova {iova:#x} -> {res.oa:#x} "
                              f"did {did} level {res.level}")
        return res.oa

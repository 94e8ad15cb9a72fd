"""A VT-d remapping unit, modelled the way QEMU's ``hw/i386/intel_iommu.c`` is.

* Register file from a :class:`VtdConfig` (VER/CAP/ECAP), with GCMD/GSTS handshakes
  (TE, SRTP, QIE, WBF), register-based CCMD/IOTLB invalidation, fault recording
  registers and the page request queue registers.
* The invalidation queue is consumed from memory, synchronously, when IQT is written.
* Root table -> legacy or scalable-mode context entry -> PASID directory -> 512-bit
  PASID entry, decoded from memory with the architecture's fault reasons.
* Caches that stay stale until the right descriptor arrives: the context cache (by
  source id), the PASID cache (tagged by DID and PASID), the IOTLB (by DID, PASID and
  page; first-stage, second-stage, nested and pass-through entries), and each ATS
  device's translation cache (dropped only by device-TLB invalidations).
* ``dma_translate``: one dict lookup on a hit; on a miss, the shared
  :func:`iommu_core.pgtable.walk` for the first stage (x86-64, 4/5 levels) and the
  second stage (VT-d SS), with ``table_xlate`` for nesting. Faults go to the fault
  recording registers (or to the page request queue), then raise :class:`DmaFault`.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw import faults as fr
from drivers.intel_vtd.hw.config import VtdConfig
from drivers.intel_vtd.hw.tlb import (
    E_ALLOWED,
    E_FIRST,
    E_PA,
    PscEntry,
    TlbEntry,
    VtdCaches,
    psc_key,
)
from iommu_core.pgtable import formats
from iommu_core.pgtable.formats.x86 import SS_D, X86_A, X86_D
from iommu_core.pgtable.walk import Access, WalkFault, WalkResult, walk
from iommu_core.platform.ats import PCI_ATS_ENABLED, PCI_PRI_ENABLED
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import (
    ACCESS_EXEC,
    ACCESS_PRIV,
    ACCESS_READ,
    ACCESS_WRITE,
    DmaFault,
    IommuHardware,
    IrqLine,
    Mmio,
)
from iommu_core.platform.platform import Platform

# PGTT values; also the "kind" of a cached translation
PGTT_FL = 1
PGTT_SL = 2
PGTT_NESTED = 3
PGTT_PT = 4
KIND_NAMES = {PGTT_FL: "first-stage", PGTT_SL: "second-stage", PGTT_NESTED: "nested",
              PGTT_PT: "pass-through"}

X86_EA = 1 << 10  # extended accessed (EAFE)
_PAGE = 0xFFF
#: Entries each cache holds before the unit forgets them all (a full IOTLB).
TLB_CAPACITY = 1 << 17
_RWX = ACCESS_READ | ACCESS_WRITE | ACCESS_EXEC


class VtdFault(Exception):
    """A translation failed with fault reason ``code`` (internal to the model)."""

    def __init__(self, code: int, addr: int, **detail: Any) -> None:
        super().__init__(code)
        self.code = code
        self.addr = addr
        self.detail = detail


@attrs.frozen(slots=True)
class CtxInfo:
    """A decoded, valid context entry (what the context cache holds)."""

    sm: bool
    fpd: bool
    # legacy
    tt: int = 0
    slptptr: int = 0
    aw: int = 0
    did: int = 0
    # scalable mode
    pasid_dir: int = 0
    pdts: int = 0
    dte: bool = False
    paside: bool = False
    pre: bool = False
    rid_pasid: int = 0


@attrs.frozen(slots=True)
class PeInfo:
    """A decoded, valid scalable-mode PASID entry (what the PASID cache holds)."""

    did: int
    pgtt: int
    fpd: bool
    aw: int
    ssptptr: int
    ssade: bool
    pwsnp: bool
    pgsnp: bool
    fsptptr: int
    fspm: int
    sre: bool
    wpe: bool
    eafe: bool


class VtdMmio(Mmio):
    """The unit's 4 KiB register window."""

    def __init__(self, hw: VtdHardware) -> None:
        self.hw = hw

    def read32(self, offset: int) -> int:
        return self.hw.reg_read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.hw.reg_write(offset, value, 4)

    def read64(self, offset: int) -> int:
        return self.hw.reg_read(offset, 8)

    def write64(self, offset: int, value: int) -> None:
        self.hw.reg_write(offset, value, 8)


class VtdHardware(IommuHardware):
    """One DMA remapping hardware unit (DRHD)."""

    granule = 4096

    def __init__(self, name: str, config: VtdConfig, platform: Platform) -> None:
        self.name = name
        self.cfg = config
        self.platform = platform
        self.mem = platform.mem
        self.tracer = platform.tracer
        self.cap = config.cap()
        self.ecap = config.ecap()
        self.irqs = {"dmar-fault": IrqLine(f"{name}-fault"), "dmar-prq": IrqLine(f"{name}-prq")}
        self.mmio = {"regs": VtdMmio(self)}
        self.csr = bytearray(h.DMAR_REG_SIZE)
        self.wmask = bytearray(h.DMAR_REG_SIZE)
        self.w1cmask = bytearray(h.DMAR_REG_SIZE)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._define_registers()
        # latched state
        self.root = 0
        self.root_sm = False
        self.iq_base = 0
        self.iq_dw = False
        self.iq_size = 0
        self.fault_index = 0
        self._te = False  # GSTS.TES, read on every translation
        # caches
        self.ctx_cache: dict[int, CtxInfo] = {}
        self.pasid_cache: dict[tuple[int, int], PeInfo] = {}
        #: (sid, PASID) of the PASID-cache entries tagged with each DID
        self._pasid_cache_of_did: dict[int, set[tuple[int, int]]] = {}
        self.caches = VtdCaches(TLB_CAPACITY)
        #: The requester view (source id, PASID key, page) -> entry: ``caches.fast``.
        self.fast = self.caches.fast
        #: Its unprivileged entries as the platform's DMA path reads them.
        self.dma_hits = self.caches.hits
        # the device side of PRI: next group index and the responses received
        self._prg_next: dict[int, int] = {}
        self.page_responses: list[dict[str, int | bool]] = []
        #: Every descriptor consumed, oldest first (bounded; the words as read): the tour
        #: and tests read it.
        self.desc_log: collections.deque[tuple[int, ...]] = collections.deque(
            maxlen=4096)
        self.stats = {"walks": 0, "descriptors": 0, "faults": 0, "page_requests": 0}
        self._fs_fmt = {lv: formats.x86_64(lv, oas=52, sign_extend=True) for lv in (4, 5)}
        self._ss_fmt = {lv: formats.vtd_ss(lv, oas=52) for lv in (3, 4, 5)}

    # ===================================================================================
    # Register file
    # ===================================================================================
    def _define(self, off: int, size: int, val: int, wmask: int, w1c: int = 0,
                handler: Callable[[], None] | None = None) -> None:
        self.csr[off:off + size] = val.to_bytes(size, "little")
        self.wmask[off:off + size] = wmask.to_bytes(size, "little")
        self.w1cmask[off:off + size] = w1c.to_bytes(size, "little")
        if handler is not None:
            self._handlers[off] = handler

    def _define_registers(self) -> None:
        m64, m32 = (1 << 64) - 1, 0xFFFF_FFFF
        self._define(h.DMAR_VER_REG, 4, self.cfg.version, 0)
        self._define(h.DMAR_CAP_REG, 8, self.cap, 0)
        self._define(h.DMAR_ECAP_REG, 8, self.ecap, 0)
        self._define(h.DMAR_GCMD_REG, 4, 0, m32, handler=self._handle_gcmd)
        self._define(h.DMAR_GSTS_REG, 4, 0, 0)
        self._define(h.DMAR_RTADDR_REG, 8, 0, h.VTD_PAGE_MASK | (3 << 10))
        self._define(h.DMAR_CCMD_REG, 8, 0, m64 & ~(3 << 59), handler=self._handle_ccmd)
        self._define(h.DMAR_FSTS_REG, 4, 0, 0, w1c=h.DMA_FSTS_W1C, handler=self._handle_fsts)
        self._define(h.DMAR_FECTL_REG, 4, h.DMA_FECTL_IM, h.DMA_FECTL_IM,
                     handler=self._handle_fectl)
        self._define(h.DMAR_FEDATA_REG, 4, 0, m32)
        self._define(h.DMAR_FEADDR_REG, 4, 0, m32)
        self._define(h.DMAR_FEUADDR_REG, 4, 0, m32)
        self._define(h.DMAR_PMEN_REG, 4, 0, 1 << 31)
        self._define(h.DMAR_IQH_REG, 8, 0, 0)
        self._define(h.DMAR_IQT_REG, 8, 0, h.genmask(18, 4), handler=self._handle_iqt)
        self._define(h.DMAR_IQA_REG, 8, 0, h.VTD_PAGE_MASK | (1 << 11) | 7)
        self._define(h.DMAR_ICS_REG, 4, 0, 0, w1c=1)
        self._define(h.DMAR_IQER_REG, 8, 0, 0)
        self._define(h.DMAR_PQH_REG, 8, 0, h.genmask(18, 5))
        self._define(h.DMAR_PQT_REG, 8, 0, 0)
        self._define(h.DMAR_PQA_REG, 8, 0, h.VTD_PAGE_MASK | 7)
        self._define(h.DMAR_PRS_REG, 4, 0, 0, w1c=h.DMA_PRS_PPR | h.DMA_PRS_PRO)
        self._define(h.DMAR_PECTL_REG, 4, h.DMA_FECTL_IM, h.DMA_FECTL_IM,
                     handler=self._handle_pectl)
        for off in (h.DMAR_PEDATA_REG, h.DMAR_PEADDR_REG, h.DMAR_PEUADDR_REG):
            self._define(off, 4, 0, m32)
        iro = h.VTD_IRO * 16
        self._define(iro, 8, 0, h.VTD_PAGE_MASK | 0x7F)  # IVA
        self._define(iro + 8, 8, 0, m64 & ~(3 << 57), handler=self._handle_iotlb_reg)
        fro = h.VTD_FRO * 16
        for i in range(self.cfg.nfr):
            # F (bit 127) is write-1-to-clear; the rest is read-only
            self._define(fro + 16 * i, 16, 0, 0, w1c=1 << 127, handler=self._handle_frcd)

    def _get(self, off: int, size: int) -> int:
        return int.from_bytes(self.csr[off:off + size], "little")

    def _set(self, off: int, size: int, val: int) -> None:
        self.csr[off:off + size] = (val & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def reg_read(self, off: int, size: int) -> int:
        if off < 0 or off + size > h.DMAR_REG_SIZE:
            return 0
        return self._get(off, size)

    def reg_write(self, off: int, value: int, size: int) -> None:
        if off < 0 or off + size > h.DMAR_REG_SIZE:
            return
        if self.tracer.enabled:
            self.tracer.event("hw", "mmio write", f"{self.name} [{off:#05x}] <- {value:#x}")
        old = self._get(off, size)
        wm = int.from_bytes(self.wmask[off:off + size], "little")
        w1c = int.from_bytes(self.w1cmask[off:off + size], "little")
        new = ((old & ~wm) | (value & wm)) & ~(value & w1c)
        self._set(off, size, new)
        # A register's action runs on a write to any of its bytes (QEMU runs CCMD and
        # IOTLB on the high half; the driver here writes whole registers).
        base = off if off in self._handlers else off & ~7
        if base in self._handlers:
            self._handlers[base]()
        elif (off & ~15) in self._handlers:
            self._handlers[off & ~15]()

    def _irq(self, ctl_off: int, line: str) -> None:
        """Signal an event: pending (IP) if masked, else the interrupt."""
        ctl = self._get(ctl_off, 4)
        if ctl & h.DMA_FECTL_IM:
            self._set(ctl_off, 4, ctl | h.DMA_FECTL_IP)
        else:
            self.irqs[line].assert_irq()

    def _handle_fectl(self) -> None:
        self._unmask(h.DMAR_FECTL_REG, "dmar-fault")

    def _handle_pectl(self) -> None:
        self._unmask(h.DMAR_PECTL_REG, "dmar-prq")

    def _unmask(self, off: int, line: str) -> None:
        ctl = self._get(off, 4)
        if not ctl & h.DMA_FECTL_IM and ctl & h.DMA_FECTL_IP:
            self._set(off, 4, ctl & ~h.DMA_FECTL_IP)
            self.irqs[line].assert_irq()

    # -- GCMD ---------------------------------------------------------------------------
    def _handle_gcmd(self) -> None:
        cmd = self._get(h.DMAR_GCMD_REG, 4)
        sts = self._get(h.DMAR_GSTS_REG, 4)
        if cmd & h.DMA_GCMD_SRTP:
            rta = self._get(h.DMAR_RTADDR_REG, 8)
            self.root = rta & h.VTD_PAGE_MASK
            self.root_sm = bool(rta & h.DMA_RTADDR_SMT) and bool(self.cfg.scalable_mode)
            sts |= h.DMA_GSTS_RTPS
            if self.cfg.esrtps:
                self._drop_all()
        if (cmd ^ sts) & h.DMA_GCMD_QIE:
            if cmd & h.DMA_GCMD_QIE and self.cfg.queued_invalidation:
                iqa = self._get(h.DMAR_IQA_REG, 8)
                self.iq_base = iqa & h.VTD_PAGE_MASK
                self.iq_dw = bool(iqa & (1 << 11))
                self.iq_size = 4096 << (iqa & 7)
                self._set(h.DMAR_IQH_REG, 8, 0)
                sts |= h.DMA_GSTS_QIES
            elif not cmd & h.DMA_GCMD_QIE:
                sts &= ~h.DMA_GSTS_QIES
        if cmd & h.DMA_GCMD_TE:
            sts |= h.DMA_GSTS_TES
        else:
            if sts & h.DMA_GSTS_TES:
                self.caches.forget_requesters()  # requests pass untranslated now
            sts &= ~h.DMA_GSTS_TES
        if cmd & h.DMA_GCMD_IRE:
            sts |= h.DMA_GSTS_IRES
        else:
            sts &= ~h.DMA_GSTS_IRES
        # WBF completes at once: WBFS never stays set.
        self._set(h.DMAR_GSTS_REG, 4, sts & ~h.DMA_GSTS_WBFS)
        self._te = bool(sts & h.DMA_GSTS_TES)

    @property
    def translation_enabled(self) -> bool:
        return self._te

    # -- register-based invalidation ----------------------------------------------------
    def _handle_ccmd(self) -> None:
        v = self._get(h.DMAR_CCMD_REG, 8)
        if not v & h.DMA_CCMD_ICC:
            return
        gran = h.field(v, 62, 61)
        self._inv_context(gran, h.field(v, 15, 0), h.field(v, 31, 16), h.field(v, 33, 32))
        self._set(h.DMAR_CCMD_REG, 8, (v & ~h.DMA_CCMD_ICC & ~(3 << 59)) | (gran << 59))

    def _handle_iotlb_reg(self) -> None:
        off = h.VTD_IRO * 16
        v = self._get(off + 8, 8)
        if not v & h.DMA_TLB_IVT:
            return
        gran = h.field(v, 61, 60)
        iva = self._get(off, 8)
        ok = self._inv_iotlb(gran, h.field(v, 47, 32), iva & h.VTD_PAGE_MASK, iva & 0x3F,
                             iva >> 6 & 1)
        self._set(off + 8, 8, (v & ~h.DMA_TLB_IVT & ~(3 << 57)) | ((gran if ok else 0) << 57))

    # -- faults -------------------------------------------------------------------------
    def _handle_fsts(self) -> None:
        # Clearing IQE lets the queue resume from IQH (the driver fixed the descriptor).
        if not self._get(h.DMAR_FSTS_REG, 4) & h.DMA_FSTS_IQE:
            self._process_queue()

    def _handle_frcd(self) -> None:
        fro = h.VTD_FRO * 16
        pending = any(self._get(fro + 16 * i + 12, 4) & h.FRCD_F for i in range(self.cfg.nfr))
        if not pending:
            self._set(h.DMAR_FSTS_REG, 4, self._get(h.DMAR_FSTS_REG, 4) & ~h.DMA_FSTS_PPF)

    def _record_fault(self, sid: int, addr: int, code: int, access: int,
                      pasid: int | None) -> bool:
        """Write a fault record (primary fault logging); False if it was dropped."""
        fsts = self._get(h.DMAR_FSTS_REG, 4)
        if fsts & h.DMA_FSTS_PFO:
            return False
        fro = h.VTD_FRO * 16
        i = self.fault_index
        rec = fro + 16 * i
        if self._get(rec + 12, 4) & h.FRCD_F:
            self._set(h.DMAR_FSTS_REG, 4, fsts | h.DMA_FSTS_PFO)
            self._irq(h.DMAR_FECTL_REG, "dmar-fault")
            return False
        self._set(rec, 8, addr & h.VTD_PAGE_MASK)
        self._set(rec + 8, 4, (sid & 0xFFFF) | (h.FRCD_PP if pasid is not None else 0))
        t = h.FRCD_T if not access & ACCESS_WRITE else 0
        self._set(rec + 12, 4, (code & 0xFF) | ((pasid or 0) & 0xFFFFF) << 8 | t | h.FRCD_F)
        self.fault_index = (i + 1) % self.cfg.nfr
        if not fsts & h.DMA_FSTS_PPF:
            fsts = (fsts & ~h.genmask(15, 8)) | (i << 8) | h.DMA_FSTS_PPF
            self._set(h.DMAR_FSTS_REG, 4, fsts)
            self._irq(h.DMAR_FECTL_REG, "dmar-fault")
        return True

    # ===================================================================================
    # Invalidation queue
    # ===================================================================================
    def _handle_iqt(self) -> None:
        self._process_queue()

    def _process_queue(self) -> None:
        if not self._get(h.DMAR_GSTS_REG, 4) & h.DMA_GSTS_QIES:
            return
        if self._get(h.DMAR_FSTS_REG, 4) & h.DMA_FSTS_IQE:
            return
        shift = 5 if self.iq_dw else 4
        tail = self._get(h.DMAR_IQT_REG, 8) & h.genmask(18, 4)
        if self.iq_dw and tail & 0x10:
            self._iq_error(1)  # IQT not aligned to a 256-bit descriptor
            return
        head = self._get(h.DMAR_IQH_REG, 8)
        if head == tail:
            return
        # Fetch what software queued (up to the ring's end; the rest after wrapping)
        # in one read, then execute in order.
        per = 4 if self.iq_dw else 2
        end = tail if tail > head else self.iq_size
        words = self.mem.read_qwords(self.iq_base + head, ((end - head) >> shift) * per)
        if tail < head and tail:
            words += self.mem.read_qwords(self.iq_base, (tail >> shift) * per)
        log = self.desc_log
        for i in range(0, len(words), per):
            w = words[i:i + per] if per == 4 else (words[i], words[i + 1], 0, 0)
            log.append(w)
            if not self._process_desc(*w):
                self._iq_error(2)
                return
            head = (head + (1 << shift)) % self.iq_size
            self._set(h.DMAR_IQH_REG, 8, head)

    def _iq_error(self, iqei: int) -> None:
        self._set(h.DMAR_IQER_REG, 8, iqei)
        self._set(h.DMAR_FSTS_REG, 4, self._get(h.DMAR_FSTS_REG, 4) | h.DMA_FSTS_IQE)
        self._irq(h.DMAR_FECTL_REG, "dmar-fault")

    def _process_desc(self, q0: int, q1: int, q2: int, q3: int) -> bool:
        """Execute one descriptor; False if it is invalid (IQE)."""
        self.stats["descriptors"] += 1
        if self.tracer.enabled:
            self.tracer.event("hw", "qi", f"{self.name} {h.QiDesc(q0, q1, q2, q3)}")
        t = q0 & 0xF
        sm = self.cfg.scalable_mode
        if q2 or q3 or q0 & 0xE00:  # reserved, or type bits 6:4
            return False
        if t == h.QI_CC_TYPE:
            self._inv_context(h.field(q0, 5, 4), h.field(q0, 31, 16), h.field(q0, 47, 32),
                              h.field(q0, 49, 48))
            return h.field(q0, 5, 4) != 0
        if t == h.QI_IOTLB_TYPE:
            return self._inv_iotlb(h.field(q0, 5, 4), h.field(q0, 31, 16),
                                   q1 & h.VTD_PAGE_MASK, q1 & 0x3F, q1 >> 6 & 1)
        if t == h.QI_DIOTLB_TYPE:
            self._inv_devtlb(h.field(q0, 47, 32), None, q1 & h.VTD_PAGE_MASK, bool(q1 & 1))
            return True
        if t == h.QI_IEC_TYPE:
            return True  # no interrupt remapping modelled: nothing cached
        if t == h.QI_IWD_TYPE:
            if q0 & h.QI_IWD_STATUS_WRITE:
                self.mem.write_u32(q1 & ~3, h.field(q0, 63, 32))
            return True
        if not sm and t in (h.QI_EIOTLB_TYPE, h.QI_PC_TYPE, h.QI_DEIOTLB_TYPE):
            return False
        if t == h.QI_EIOTLB_TYPE:
            gran = h.field(q0, 5, 4)
            if gran not in (h.QI_GRAN_NONG_PASID, h.QI_GRAN_PSI_PASID):
                return False
            self._inv_piotlb(h.field(q0, 31, 16), h.field(q0, 51, 32),
                             None if gran == h.QI_GRAN_NONG_PASID else q1 & h.VTD_PAGE_MASK,
                             q1 & 0x3F, q1 >> 6 & 1)
            return True
        if t == h.QI_PC_TYPE:
            gran = h.field(q0, 5, 4)
            if gran == 2:
                return False
            self._inv_pasid_cache(gran, h.field(q0, 31, 16), h.field(q0, 51, 32))
            return True
        if t == h.QI_DEIOTLB_TYPE:
            self._inv_devtlb(h.field(q0, 31, 16), h.field(q0, 51, 32), q1 & h.VTD_PAGE_MASK,
                             bool(q1 >> 11 & 1))
            return True
        if t == h.QI_PGRP_RESP_TYPE:
            if not self.cfg.page_requests:
                return False
            self.page_responses.append({
                "rid": h.field(q0, 31, 16), "pasid_present": bool(q0 >> 4 & 1),
                "pasid": h.field(q0, 51, 32), "code": h.field(q0, 15, 12),
                "prg_index": h.field(q1, 11, 3)})
            return True
        return False

    # -- what each invalidation drops (VT-d 6.5.2) -------------------------------------
    def _drop_all(self) -> None:
        self.ctx_cache.clear()
        self.pasid_cache.clear()
        self._pasid_cache_of_did.clear()
        self.caches.forget_translations()

    def _inv_context(self, gran: int, did: int, sid: int, fm: int) -> None:
        sm = self.root_sm
        if gran == h.QI_CC_GRAN_DEVICE:
            # FM masks the low function bits of the source id
            low = {0: 0, 1: 4, 2: 6, 3: 7}[fm]
            cand = {sid & ~low | f for f in range(8) if not f & ~low}
            hit = [s for s in cand if s in self.ctx_cache]
        elif gran == h.QI_CC_GRAN_DOMAIN and not sm:
            hit = [s for s, c in self.ctx_cache.items() if c.did == did]
        else:  # global; domain-selective in scalable mode (context entries carry no DID)
            hit = list(self.ctx_cache)
        for s in hit:
            del self.ctx_cache[s]
            self.caches.drop_requester(s)  # its requests resolved through the entry

    def _inv_iotlb(self, gran: int, did: int, addr: int, am: int, ih: int) -> bool:
        """IOTLB invalidation (type 2 / register). Global: everything. Otherwise the DID's
        second-stage, pass-through and nested entries (in scalable mode first-stage ones
        are the PASID-based IOTLB's): all (DSI) or the pages (PSI; nested entries all the
        same: the unit cannot tell which depend on the range). Paging-structure caches:
        the DID's second-stage entries (PSI: those covering the range, none with IH);
        every nested first-stage entry of the DID (it holds second-stage output)."""
        if gran == h.QI_IOTLB_GRAN_PSI and (am > h.cap_max_amask_val(self.cap)
                                            or not h.cap_pgsel_inv(self.cap)):
            return False
        if gran not in (1, 2, 3):
            return False
        c = self.caches
        if gran == h.QI_IOTLB_GRAN_GLOBAL:
            c.forget_translations()
            return True
        sm = self.cfg.scalable_mode
        first = (addr >> 12) & ~((1 << am) - 1)
        last = first + (1 << am) - 1
        for tag in c.tags_of_did(did):
            if sm and tag[2] == PGTT_FL:
                continue
            if gran == h.QI_IOTLB_GRAN_DSI or tag[2] == PGTT_NESTED:
                c.drop_tag(tag)
            else:
                c.drop_tag_range(tag, first, last)
        if gran == h.QI_IOTLB_GRAN_DSI:
            c.drop_ss_psc(did)
        elif not ih:
            c.drop_ss_psc(did, first, last)
        for tag in c.fs_tags_of_did(did):
            if tag[2] == PGTT_NESTED:
                c.drop_fs_psc(tag)
        return True

    def _inv_piotlb(self, did: int, pasid: int, addr: int | None, am: int, ih: int) -> None:
        """PASID-based IOTLB (type 6): first-stage, nested and pass-through entries of
        (DID, PASID), all or those overlapping 2^AM pages at ``addr``; their first-stage
        paging-structure entries with them (PSI: those covering the range, none with
        IH)."""
        c = self.caches
        first = (addr or 0) >> 12 & ~((1 << am) - 1)
        last = first + (1 << am) - 1
        for kind in (PGTT_FL, PGTT_NESTED, PGTT_PT):
            tag = (did, pasid, kind)
            if addr is None:
                c.drop_tag(tag)
                c.drop_fs_psc(tag)
            else:
                c.drop_tag_range(tag, first, last)
                if not ih:
                    c.drop_fs_psc(tag, first, last)

    def _inv_pasid_cache(self, gran: int, did: int, pasid: int) -> None:
        if gran == h.QI_PC_GLOBAL:
            hit = list(self.pasid_cache)
        else:
            hit = [k for k in self._pasid_cache_of_did.get(did, ())
                   if gran == h.QI_PC_ALL_PASIDS or k[1] == pasid]
        for k in hit:
            pe = self.pasid_cache.pop(k)
            self._pasid_cache_of_did[pe.did].discard(k)
            # requests resolved through that PASID entry
            self.caches.drop_requester(k[0], (k[1],))

    def _inv_devtlb(self, sid: int, pasid: int | None, addr: int, size_bit: bool) -> None:
        """Device-TLB invalidation: the device drops its ATC entries in the range. Without
        a PASID it drops them for every PASID (as a PCIe invalidation without prefix)."""
        if size_bit:
            b = 12
            while b < 64 and addr >> b & 1:
                b += 1
            size = 1 << min(b + 1, 64)
        else:
            size = 4096
        first = (addr & ~(size - 1)) >> 12
        self.caches.drop_atc(sid, pasid, first, first + (size >> 12) - 1)

    # ===================================================================================
    # Page request queue (the PRI side of the unit)
    # ===================================================================================
    def _post_page_request(self, dev: Device, pasid: int | None, iova: int, access: int
                           ) -> int | None:
        pqa = self._get(h.DMAR_PQA_REG, 8)
        base = pqa & h.VTD_PAGE_MASK
        if not base:
            return None
        prs = self._get(h.DMAR_PRS_REG, 4)
        if prs & h.DMA_PRS_PRO:
            return None
        size = 4096 << (pqa & 7)
        head = self._get(h.DMAR_PQH_REG, 8) & (size - 1) & ~0x1F
        tail = self._get(h.DMAR_PQT_REG, 8) & (size - 1) & ~0x1F
        if (tail + h.PRQ_DESC_SIZE) % size == head:
            self._set(h.DMAR_PRS_REG, 4, prs | h.DMA_PRS_PRO)
            return None
        idx = self._prg_next.get(dev.rid, 0)
        self._prg_next[dev.rid] = (idx + 1) & 0x1FF
        dsc = h.make_page_req_dsc(dev.rid, pasid, iova, bool(access & (ACCESS_READ | ACCESS_EXEC)),
                                  bool(access & ACCESS_WRITE), bool(access & ACCESS_EXEC),
                                  bool(access & ACCESS_PRIV), True, idx)
        self.mem.write_qwords(base + tail, [dsc.qw0, dsc.qw1, dsc.qw2, dsc.qw3])
        self._set(h.DMAR_PQT_REG, 8, (tail + h.PRQ_DESC_SIZE) % size)
        self._set(h.DMAR_PRS_REG, 4, prs | h.DMA_PRS_PPR)
        self.stats["page_requests"] += 1
        self._irq(h.DMAR_PECTL_REG, "dmar-prq")
        return idx

    # ===================================================================================
    # Translation
    # ===================================================================================
    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        key = (dev.rid, (-2 if pasid is None else pasid << 1) | (access >> 3 & 1), iova >> 12)
        e = self.fast.get(key)
        if e is not None and e[1] & access & _RWX == access & _RWX:
            return e[0] | (iova & _PAGE)
        return self._translate_slow(dev, pasid, iova, access, key)

    def _translate_slow(self, dev: Device, pasid: int | None, iova: int, access: int,
                        key: tuple[int, int, int]) -> int:
        if not self._te:
            return iova  # DMA remapping off: untranslated
        sid = dev.rid
        priv = bool(access & ACCESS_PRIV)
        need = access & _RWX
        fpd = pre = dte = False  # what the fault path needs to know, as far as decoded
        try:
            ctx = self.ctx_cache.get(sid) or self._lookup_context(sid)
            fpd, pre, dte = ctx.fpd, ctx.pre, ctx.dte or ctx.tt == 1
            if self.root_sm:
                pasid_eff, pe = self._lookup_pasid(sid, ctx, pasid)
                fpd = fpd or pe.fpd
                did, kind = pe.did, pe.pgtt
                if kind in (PGTT_FL, PGTT_NESTED):
                    if priv and not pe.sre:
                        raise VtdFault(fr.VTD_FR_SM_SRE_CLEAR, iova)
                    if access & ACCESS_EXEC:
                        raise VtdFault(fr.VTD_FR_SM_ERE_CLEAR, iova)  # ERE never set (no ERS)
            else:
                if pasid is not None:
                    raise VtdFault(fr.VTD_FR_RTADDR_INV_TTM, iova)
                pasid_eff, pe, did = 0, None, ctx.did
                kind = PGTT_PT if ctx.tt == h.CONTEXT_TT_PASS_THROUGH else PGTT_SL
            tag = (did, pasid_eff, kind)
            caches = self.caches
            e, tkey = caches.iotlb_get(tag, iova >> 12, int(priv))
            if e is None or e[E_ALLOWED] & need != need:
                e = self._walk(ctx, pe, kind, did, pasid_eff, iova, need, priv)
                tkey = caches.iotlb_put(tag, e, int(priv))
        except VtdFault as f:
            self._fault(dev, pasid, iova, access, f, fpd, pre, dte)
        # A leaf holds the output of its first page; the requester view one page's.
        pa = e[E_PA] + (((iova >> 12) - e[E_FIRST]) << 12)
        if dte and dev.ats and dev.props.get(PCI_ATS_ENABLED):
            caches.atc_put(key, (pa, e[1], e[2], e[3], e[4], e[5], e[6], True))
        else:
            caches.fast_put(key, e if pa == e[E_PA] else (pa, *e[1:]), tag, tkey)
        if not priv:
            self._watch(dev)
            caches.publish(dev, pasid, key)
        return pa | (iova & _PAGE)

    def _fault(self, dev: Device, pasid: int | None, iova: int, access: int, f: VtdFault,
               fpd: bool, pre: bool, dte: bool) -> NoReturn:
        self.stats["faults"] += 1
        name = fr.fault_name(f.code)
        detail: dict[str, Any] = {"code": f.code, "sid": dev.rid, "text": fr.fault_text(f.code),
                                  **f.detail}
        if self.tracer.enabled:
            self.tracer.event("hw", "fault", f"{self.name} {dev.name} {iova:#x} {name}")
        if (pre and dte and dev.pri and dev.props.get(PCI_PRI_ENABLED)
                and dev.props.get(PCI_ATS_ENABLED) and f.code in fr.RECOVERABLE):
            idx = self._post_page_request(dev, pasid, iova, access)
            if idx is not None:
                detail["prg_index"] = idx
                raise DmaFault(dev.name, iova, pasid, access, name, detail, page_request=True,
                               code=f.code)
        detail["recorded"] = (not fpd
                              and self._record_fault(dev.rid, iova, f.code, access, pasid))
        raise DmaFault(dev.name, iova, pasid, access, name, detail, code=f.code)

    # -- configuration decode -----------------------------------------------------------
    def _lookup_context(self, sid: int) -> CtxInfo:
        ctx = self.ctx_cache.get(sid)
        if ctx is None:
            ctx = self._read_context(sid)
            self.ctx_cache[sid] = ctx
        return ctx

    def _read_context(self, sid: int) -> CtxInfo:
        bus, devfn = sid >> 8, sid & 0xFF
        lo, hi = self.mem.read_qwords(self.root + bus * h.ROOT_ENTRY_SIZE, 2)
        if self.root_sm:
            re = lo if devfn < 0x80 else hi
            if not re & 1:
                raise VtdFault(fr.VTD_FR_SM_ROOT_ENTRY_P, 0)
            if re & 0xFFE:
                raise VtdFault(fr.VTD_FR_SM_ROOT_ENTRY_RSVD, 0)
            addr = (re & h.VTD_PAGE_MASK) + (devfn & 0x7F) * h.SM_CONTEXT_ENTRY_SIZE
            c0, c1, c2, c3 = self.mem.read_qwords(addr, 4)
            if not c0 & h.CONTEXT_P:
                raise VtdFault(fr.VTD_FR_SM_CONTEXT_ENTRY_P, 0)
            if c0 & h.genmask(8, 5) or c1 & h.genmask(63, 20) or c2 or c3:
                raise VtdFault(fr.VTD_FR_SM_CONTEXT_ENTRY_RSVD, 0)
            dte = bool(c0 & h.CONTEXT_DTE)
            if dte and not h.ecap_dev_iotlb_support(self.ecap):
                raise VtdFault(fr.VTD_FR_SM_CONTEXT_ENTRY_INV, 0)
            if c0 & h.CONTEXT_PRE and not h.ecap_prs(self.ecap):
                raise VtdFault(fr.VTD_FR_SM_CONTEXT_ENTRY_INV, 0)
            return CtxInfo(sm=True, fpd=bool(c0 & h.CONTEXT_FPD), pasid_dir=c0 & h.VTD_PAGE_MASK,
                           pdts=h.field(c0, 11, 9), dte=dte, paside=bool(c0 & h.CONTEXT_PASIDE),
                           pre=bool(c0 & h.CONTEXT_PRE), rid_pasid=h.field(c1, 19, 0))
        if not lo & 1:
            raise VtdFault(fr.VTD_FR_ROOT_ENTRY_P, 0)
        if lo & 0xFFE or hi:
            raise VtdFault(fr.VTD_FR_ROOT_ENTRY_RSVD, 0)
        c0, c1 = self.mem.read_qwords((lo & h.VTD_PAGE_MASK) + devfn * h.CONTEXT_ENTRY_SIZE, 2)
        ce = h.ContextEntry(c0, c1)
        if not ce.present:
            raise VtdFault(fr.VTD_FR_CONTEXT_ENTRY_P, 0)
        if c0 & h.genmask(11, 4) or c1 & (h.genmask(7, 3) | h.genmask(63, 24)):
            raise VtdFault(fr.VTD_FR_CONTEXT_ENTRY_RSVD, 0)
        tt = ce.translation_type
        if (tt == 3 or (tt == h.CONTEXT_TT_DEV_IOTLB and not h.ecap_dev_iotlb_support(self.ecap))
                or (tt == h.CONTEXT_TT_PASS_THROUGH and not h.ecap_pass_through(self.ecap))
                or (tt != h.CONTEXT_TT_PASS_THROUGH
                    and not h.cap_sagaw(self.cap) >> ce.address_width & 1)):
            raise VtdFault(fr.VTD_FR_CONTEXT_ENTRY_INV, 0)
        return CtxInfo(sm=False, fpd=bool(c0 & 2), tt=tt, slptptr=ce.address_root,
                       aw=ce.address_width, did=ce.domain_id)

    def _lookup_pasid(self, sid: int, ctx: CtxInfo, pasid: int | None
                      ) -> tuple[int, PeInfo]:
        if pasid is None:
            p = ctx.rid_pasid
        else:
            if not ctx.paside:
                raise VtdFault(fr.VTD_FR_SM_PASIDE_CLEAR, 0)
            p = pasid
        if p >> (ctx.pdts + 7 + 6):
            raise VtdFault(fr.VTD_FR_SM_PASID_BEYOND_MAX, 0)
        pe = self.pasid_cache.get((sid, p))
        if pe is None:
            pe = self._read_pasid_entry(ctx, p)
            self.pasid_cache[(sid, p)] = pe
            self._pasid_cache_of_did.setdefault(pe.did, set()).add((sid, p))
        return p, pe

    def _read_pasid_entry(self, ctx: CtxInfo, pasid: int) -> PeInfo:
        pde = self.mem.read_u64(ctx.pasid_dir + (pasid >> 6) * 8)
        if not pde & 1:
            raise VtdFault(fr.VTD_FR_PASID_DIR_ENTRY_P, 0)
        if pde & 0xFFC:
            raise VtdFault(fr.VTD_FR_PASID_DIR_ENTRY_RSVD, 0)
        v = self.mem.read_qwords((pde & h.VTD_PAGE_MASK) + (pasid & 0x3F) * 64, 8)
        if self.tracer.enabled:
            self.tracer.event("hw", "pasid entry", f"{self.name} pasid {pasid} "
                              + " ".join(f"{w:#x}" for w in v[:3]))
        if not v[0] & 1:
            raise VtdFault(fr.VTD_FR_PASID_ENTRY_P, 0)
        cap, ecap = self.cap, self.ecap
        pgtt = h.field(v[0], 8, 6)
        aw = h.field(v[0], 4, 2)
        fspm = h.field(v[2], 3, 2)
        ssade, sre, eafe = bool(v[0] >> 9 & 1), bool(v[2] & 1), bool(v[2] >> 7 & 1)
        pgsnp = bool(v[1] >> 24 & 1)
        if (v[0] & (h.genmask(11, 10) | 1 << 5) or v[1] & h.genmask(63, 25)
                or v[1] & h.genmask(22, 16) or v[2] & (h.genmask(11, 8) | 0b1000010)
                or any(v[3:]) or fspm > 1 or (sre and not h.ecap_srs(ecap))
                or (eafe and not h.ecap_eafs(ecap)) or (ssade and not h.ecap_slads(ecap))
                or (pgsnp and not h.ecap_sc_support(ecap))):
            raise VtdFault(fr.VTD_FR_PASID_ENTRY_RSVD, 0)
        supported = {PGTT_FL: h.ecap_flts(ecap), PGTT_SL: h.ecap_slts(ecap),
                     PGTT_NESTED: h.ecap_nest(ecap), PGTT_PT: h.ecap_pass_through(ecap)}
        if not supported.get(pgtt, False):
            raise VtdFault(fr.VTD_FR_PASID_TABLE_ENTRY_INV, 0)
        if pgtt in (PGTT_SL, PGTT_NESTED) and not h.cap_sagaw(cap) >> aw & 1:
            raise VtdFault(fr.VTD_FR_PASID_TABLE_ENTRY_INV, 0)
        if pgtt in (PGTT_FL, PGTT_NESTED) and fspm == 1 and not h.cap_fl5lp_support(cap):
            raise VtdFault(fr.VTD_FR_PASID_TABLE_ENTRY_INV, 0)
        return PeInfo(did=h.field(v[1], 15, 0), pgtt=pgtt, fpd=bool(v[0] >> 1 & 1), aw=aw,
                      ssptptr=v[0] & h.VTD_PAGE_MASK, ssade=ssade, pwsnp=bool(v[1] >> 23 & 1),
                      pgsnp=pgsnp, fsptptr=v[2] & h.VTD_PAGE_MASK, fspm=fspm, sre=sre,
                      wpe=bool(v[2] >> 4 & 1), eafe=eafe)

    # -- walks --------------------------------------------------------------------------
    def _walk(self, ctx: CtxInfo, pe: PeInfo | None, kind: int, did: int, pasid: int,
              iova: int, need: int, priv: bool) -> TlbEntry:
        self.stats["walks"] += 1
        vpn = iova >> 12
        if kind == PGTT_PT:
            limit = 1 << (h.cap_mgaw(self.cap) if pe is None else 52)
            if iova >= limit:
                raise VtdFault(fr.VTD_FR_SM_BEYOND_HW_MAX if pe else fr.VTD_FR_ADDR_BEYOND_MGAW,
                               iova)
            return (iova & ~_PAGE, _RWX, did, pasid, kind, vpn, vpn, False)
        if kind == PGTT_SL:
            if pe is None:
                root, aw, ssade = ctx.slptptr, ctx.aw, False
            else:
                root, aw, ssade = pe.ssptptr, pe.aw, pe.ssade
            oa, allowed, base, size, _w = self._walk_ss(did, root, aw, ssade, iova, need,
                                                        pe is not None)
            # The leaf's output: the page of its first input page.
            return ((oa - (iova - base)) & ~_PAGE, allowed, did, pasid, kind, base >> 12,
                    (base + size - 1) >> 12, False)
        assert pe is not None
        oa, allowed, base, size = self._walk_fs(pe, did, pasid, kind, iova, need, priv)
        if kind == PGTT_NESTED:
            base, size = iova & ~_PAGE, 4096  # combined entries are cached per page
        return ((oa - (iova - base)) & ~_PAGE, allowed, did, pasid, kind, base >> 12,
                (base + size - 1) >> 12, False)

    def _walk_ss(self, did: int, root: int, aw: int, ssade: bool, addr: int, need: int,
                 sm: bool, stage1_fetch: int = 0) -> tuple[int, int, int, int, bool]:
        """Second-stage walk, from the lowest table the DID's paging-structure cache
        holds. Returns (output address, accesses allowed without a further walk, input
        page base, leaf size, leaf writable). ``stage1_fetch`` (nested): 1 = the FS root
        table, 2 = another FS entry: SS permission failures become 0x75/0x76."""
        fmt = self._ss_fmt[aw + 2]
        write = need & ACCESS_WRITE
        caches = self.caches
        vpn = addr >> 12
        hit = caches.ss_psc_get(did, vpn, fmt.levels - 1)
        tables: list[tuple[int, int, int]] = []
        r = walk(fmt, self.mem.read_u64, root, addr,
                 access=Access.WRITE if write else Access.READ, privileged=True,
                 set_accessed=ssade, set_dirty=ssade,
                 write_u64=self.mem.write_u64 if ssade else None,
                 start=None if hit is None else (hit[0], hit[1][0], hit[1][1]),
                 on_table=None if hit is not None and not hit[0] else
                 lambda lv, nxt, acc: tables.append((lv, nxt, acc)))
        if self.tracer.enabled:
            self.tracer.event("hw", "walk", f"{self.name} SS {addr:#x} -> {_walk_str(r)}")
        if isinstance(r, WalkFault):
            if r.desc is None:
                code = fr.VTD_FR_SM_BEYOND_HW_MAX if sm else fr.VTD_FR_ADDR_BEYOND_MGAW
            elif r.reason == "address_size":
                code = fr.VTD_FR_SS_ADDR_BEYOND_MAX if sm else fr.VTD_FR_PAGING_ENTRY_RSVD
            elif r.reason == "translation" and r.desc & 3:
                code = fr.VTD_FR_SS_PAGING_ENTRY_RSVD if sm else fr.VTD_FR_PAGING_ENTRY_RSVD
            elif r.reason == "translation" and r.level != 0 and sm:
                code = fr.VTD_FR_SS_PAGING_ENTRY_RW  # a non-present paging-structure entry
            elif sm:
                code = fr.VTD_FR_SM_WRITE if write else fr.VTD_FR_SM_READ
            else:
                code = fr.VTD_FR_WRITE if write else fr.VTD_FR_READ
            if stage1_fetch and code in (fr.VTD_FR_SS_PAGING_ENTRY_RW, fr.VTD_FR_SM_READ):
                code = (fr.VTD_FR_FS_NESTED_PML4_READ if stage1_fetch == 1
                        else fr.VTD_FR_FS_NESTED_ENTRY_READ)
            raise VtdFault(code, addr, level=r.level, stage=2)
        sllps = h.cap_super_page_val(self.cap)
        if (r.page_size == 1 << 21 and not sllps & 1) or (r.page_size == 1 << 30
                                                          and not sllps & 2):
            raise VtdFault(fr.VTD_FR_SS_PAGING_ENTRY_RSVD if sm else fr.VTD_FR_PAGING_ENTRY_RSVD,
                           addr, level=r.level, stage=2)
        for lv, nxt, acc in tables:
            caches.ss_psc_put(did, psc_key(vpn, lv - 1), (nxt, acc, nxt, True))
        w_ok = r.writable and (not ssade or bool(r.desc & SS_D))
        allowed = ACCESS_READ | ACCESS_EXEC | (ACCESS_WRITE if w_ok else 0)
        return r.oa, allowed, r.page_base, r.page_size, r.writable

    def _walk_fs(self, pe: PeInfo, did: int, pasid: int, kind: int, iova: int, need: int,
                 priv: bool) -> tuple[int, int, int, int]:
        """First-stage walk from the lowest table the (DID, PASID) paging-structure cache
        holds. Nested: every FS table address is a GPA the second stage translates (the
        cache keeps the translated address); A/D updates of FS entries are writes
        through that translation; the output goes through the second stage."""
        nested = kind == PGTT_NESTED
        levels = 5 if pe.fspm == 1 else 4
        top = 12 + 9 * levels - 1
        hi = iova >> top
        if hi not in (0, (1 << (64 - top)) - 1):
            raise VtdFault(fr.VTD_FR_FS_NON_CANONICAL, iova)
        fmt = self._fs_fmt[levels]
        read_u64, write_u64 = self.mem.read_u64, self.mem.write_u64
        caches = self.caches
        tag = (did, pasid, kind)
        vpn = iova >> 12
        hit = caches.fs_psc_get(tag, vpn, levels - 1)
        #: FS table page PA -> (its GPA page, SS writable); nested walks only
        gpa_of: dict[int, tuple[int, bool]] = {}
        fetches = [0]
        if hit is not None:
            fetches[0] = 1  # the root was fetched when the cached entry was made
            if nested:
                gpa_of[hit[1][0] >> 12] = (hit[1][2], hit[1][3])
        errata = self.cfg.errata_772415 and pe.pwsnp

        def xlate(gpa: int) -> int:
            fetches[0] += 1
            pa, _a, _b, _s, writable = self._walk_ss(did, pe.ssptptr, pe.aw, pe.ssade, gpa,
                                                     ACCESS_READ, True,
                                                     1 if fetches[0] == 1 else 2)
            gpa_of[pa >> 12] = (gpa & ~_PAGE, writable)
            return pa

        def write_fs(pa: int, val: int) -> None:
            if pe.eafe and val & X86_A:
                val |= X86_EA
            if nested:
                gpa, writable = gpa_of[pa >> 12]
                if writable:  # an ordinary write through the second stage (SS D too)
                    self._walk_ss(did, pe.ssptptr, pe.aw, pe.ssade, gpa | (pa & _PAGE),
                                  ACCESS_WRITE, True, 2)
                elif not errata:
                    raise VtdFault(fr.VTD_FR_FS_NESTED_ENTRY_WRITE, iova, stage=2)
                # else SPR17 erratum 772415: the A/D update lands in a page the second
                # stage maps read-only.
            write_u64(pa, val)

        tables: list[tuple[int, int, int]] = []
        r = walk(fmt, read_u64, pe.fsptptr, iova, access=Access.READ, privileged=True,
                 set_accessed=True, write_u64=write_fs, table_xlate=xlate if nested else None,
                 start=None if hit is None else (hit[0], hit[1][0], hit[1][1]),
                 on_table=None if hit is not None and not hit[0] else
                 lambda lv, nxt, acc: tables.append((lv, nxt, acc)))
        if self.tracer.enabled:
            self.tracer.event("hw", "walk", f"{self.name} FS{levels} {iova:#x} -> "
                              f"{_walk_str(r)}")
        if isinstance(r, WalkFault):
            if r.desc is None or r.reason == "address_size":
                code = fr.VTD_FR_FS_PAGING_ENTRY_RSVD
            elif not r.desc & 1:
                code = fr.VTD_FR_FS_PAGING_ENTRY_P
            else:
                code = fr.VTD_FR_FS_PAGING_ENTRY_RSVD
            raise VtdFault(code, iova, level=r.level, stage=1)
        if r.page_size == 1 << 30 and not h.cap_fl1gp_support(self.cap):
            raise VtdFault(fr.VTD_FR_FS_PAGING_ENTRY_RSVD, iova, level=r.level, stage=1)
        self._fill_fs_psc(tag, vpn, tables, nested, gpa_of)
        if not priv and not r.user:
            raise VtdFault(fr.VTD_FR_FS_PAGING_ENTRY_US, iova, stage=1)
        # Supervisor writes ignore R/W unless WPE (like CR0.WP=0).
        w_perm = r.writable or (priv and not pe.wpe)
        if need & ACCESS_WRITE:
            if not w_perm:
                raise VtdFault(fr.VTD_FR_SM_WRITE, iova, stage=1)
            if not r.desc & X86_D:
                write_fs(r.desc_addr, r.desc | X86_D)
        allowed = ACCESS_READ | ACCESS_EXEC
        if w_perm and (need & ACCESS_WRITE or r.desc & X86_D):
            allowed |= ACCESS_WRITE
        if not nested:
            return r.oa, allowed, r.page_base, r.page_size
        pa, s2_allowed, _b, _s, _w = self._walk_ss(did, pe.ssptptr, pe.aw, pe.ssade, r.oa,
                                                   need & ACCESS_WRITE or ACCESS_READ, True)
        return pa, allowed & s2_allowed, r.page_base, r.page_size

    def _fill_fs_psc(self, tag: tuple[int, int, int], vpn: int,
                     tables: list[tuple[int, int, int]], nested: bool,
                     gpa_of: dict[int, tuple[int, bool]]) -> None:
        """Cache the tables a successful walk went through (nested: the address the
        second stage gave for each, found again by its GPA)."""
        if not tables:
            return
        hpa_of = {g: (pa, w) for pa, (g, w) in gpa_of.items()} if nested else {}
        for lv, nxt, acc in tables:
            if nested:
                page = nxt & ~_PAGE
                got = hpa_of.get(page)
                if got is None:
                    continue  # not fetched (the walk ended above it)
                entry: PscEntry = (got[0] << 12 | (nxt & _PAGE), acc, page, got[1])
            else:
                entry = (nxt, acc, nxt, True)
            self.caches.fs_psc_put(tag, psc_key(vpn, lv - 1), entry)

    # -- the platform's wiring ----------------------------------------------------------
    def detach_device(self, dev: Device) -> None:
        self.caches.drop_requester(dev.rid, atc=True)
        self.caches.drop_published(dev)

    def device_changed(self, dev: Device) -> None:
        """The endpoint's state changed: what was published for it goes, and with ATS
        Enable clear its ATC holds nothing it may use (PCIe: the function stops using
        cached translations)."""
        self.caches.drop_published(dev)
        if not dev.props.get(PCI_ATS_ENABLED):
            self.caches.drop_requester(dev.rid, atc=True)

    def _watch(self, dev: Device) -> None:
        """Publishing for ``dev``: hear of its endpoint state changes even when it was
        not wired through the platform (a device a test made by hand)."""
        if dev.props.on_change is None:
            dev.props.on_change = functools.partial(self.device_changed, dev)


def _walk_str(r: WalkResult | WalkFault) -> str:
    if isinstance(r, WalkFault):
        return f"fault {r.reason} at level {r.level}"
    return f"{r.oa:#x} ({r.page_size:#x} page, desc {r.desc:#x})"


def vtd_hw_create(name: str, options: dict[str, Any], platform: Platform) -> VtdHardware:
    return VtdHardware(name, VtdConfig.from_options(options), platform)


__all__ = ["VtdFault", "VtdHardware", "vtd_hw_create"]

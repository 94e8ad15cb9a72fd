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

from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw import faults as fr
from drivers.intel_vtd.hw.config import VtdConfig
from iommu_core.pgtable import formats
from iommu_core.pgtable.formats.x86 import SS_D, X86_A, X86_D
from iommu_core.pgtable.walk import Access, WalkFault, WalkResult, walk
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
#: The device's PCI ATS / PRI capability enable bits (its config space, which the
#: driver writes with pci_enable_ats / pci_enable_pri): without them the device neither
#: caches translations nor sends page requests.
PCI_ATS_ENABLED = "pci_ats_enabled"
PCI_PRI_ENABLED = "pci_pri_enabled"
_PAGE = 0xFFF
_TLB_CAPACITY = 1 << 16
_RWX = ACCESS_READ | ACCESS_WRITE | ACCESS_EXEC

# A cached translation (IOTLB entry, or a device ATC entry when ``atc``):
# (page PA, allowed accesses, DID, PASID, kind, first vpn, last vpn, atc)
E_PA, E_ALLOWED, E_DID, E_PASID, E_KIND, E_FIRST, E_LAST, E_ATC = range(8)
TlbEntry = tuple[int, int, int, int, int, int, int, bool]


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
        # caches
        self.ctx_cache: dict[int, CtxInfo] = {}
        self.pasid_cache: dict[tuple[int, int], PeInfo] = {}
        self.iotlb: dict[tuple[int, int, int, bool], TlbEntry] = {}
        #: The translation fast path: (source id, PASID key, page) -> entry. Non-ATC
        #: entries mirror the IOTLB for this requester; ATC entries are the device's own.
        self.fast: dict[tuple[int, int, int], TlbEntry] = {}
        # the device side of PRI: next group index and the responses received
        self._prg_next: dict[int, int] = {}
        self.page_responses: list[dict[str, int | bool]] = []
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
                self.fast.clear()  # requests pass untranslated from now on
            sts &= ~h.DMA_GSTS_TES
        if cmd & h.DMA_GCMD_IRE:
            sts |= h.DMA_GSTS_IRES
        else:
            sts &= ~h.DMA_GSTS_IRES
        # WBF completes at once: WBFS never stays set.
        self._set(h.DMAR_GSTS_REG, 4, sts & ~h.DMA_GSTS_WBFS)

    @property
    def translation_enabled(self) -> bool:
        return bool(self._get(h.DMAR_GSTS_REG, 4) & h.DMA_GSTS_TES)

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
        ok = self._inv_iotlb(gran, h.field(v, 47, 32), iva & h.VTD_PAGE_MASK, iva & 0x3F)
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
        while head != tail:
            addr = self.iq_base + head
            n = 4 if self.iq_dw else 2
            words = self.mem.read_qwords(addr, n) + (0,) * (4 - n)
            desc = h.QiDesc(*words)
            if not self._process_desc(desc):
                self._iq_error(2)
                return
            head = (head + (1 << shift)) % self.iq_size
            self._set(h.DMAR_IQH_REG, 8, head)

    def _iq_error(self, iqei: int) -> None:
        self._set(h.DMAR_IQER_REG, 8, iqei)
        self._set(h.DMAR_FSTS_REG, 4, self._get(h.DMAR_FSTS_REG, 4) | h.DMA_FSTS_IQE)
        self._irq(h.DMAR_FECTL_REG, "dmar-fault")

    def _process_desc(self, d: h.QiDesc) -> bool:
        """Execute one descriptor; False if it is invalid (IQE)."""
        self.stats["descriptors"] += 1
        if self.tracer.enabled:
            self.tracer.event("hw", "qi", f"{self.name} {d}")
        t = d.type
        q0, q1 = d.qw0, d.qw1
        sm = self.cfg.scalable_mode
        if d.qw2 or d.qw3 or q0 & h.genmask(11, 9):  # reserved, or type bits 6:4
            return False
        if t == h.QI_CC_TYPE:
            self._inv_context(h.field(q0, 5, 4), h.field(q0, 31, 16), h.field(q0, 47, 32),
                              h.field(q0, 49, 48))
            return h.field(q0, 5, 4) != 0
        if t == h.QI_IOTLB_TYPE:
            return self._inv_iotlb(h.field(q0, 5, 4), h.field(q0, 31, 16),
                                   q1 & h.VTD_PAGE_MASK, q1 & 0x3F)
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
                             q1 & 0x3F)
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
                "prg_index": h.field(q1, 11, 3), "lpig": bool(q1 >> 2 & 1)})
            return True
        return False

    # -- what each invalidation drops ---------------------------------------------------
    def _drop_fast(self, pred: Callable[[tuple[int, int, int], TlbEntry], bool]) -> None:
        for k in [k for k, e in self.fast.items() if pred(k, e)]:
            del self.fast[k]

    def _drop_all(self) -> None:
        self.ctx_cache.clear()
        self.pasid_cache.clear()
        self.iotlb.clear()
        self._drop_fast(lambda k, e: not e[E_ATC])

    def _inv_context(self, gran: int, did: int, sid: int, fm: int) -> None:
        sm = self.root_sm
        if gran == h.QI_CC_GRAN_DEVICE:
            # FM masks the low function bits of the source id
            mask = 0xFFFF & ~{0: 0, 1: 4, 2: 6, 3: 7}[fm]
            hit = [s for s in self.ctx_cache if s & mask == sid & mask]
        elif gran == h.QI_CC_GRAN_DOMAIN and not sm:
            hit = [s for s, c in self.ctx_cache.items() if c.did == did]
        else:  # global; domain-selective in scalable mode (context entries carry no DID)
            hit = list(self.ctx_cache)
        for s in hit:
            del self.ctx_cache[s]
        sids = set(hit)
        self._drop_fast(lambda k, e: not e[E_ATC] and k[0] in sids)

    def _inv_iotlb(self, gran: int, did: int, addr: int, am: int) -> bool:
        """IOTLB invalidation (type 2 / register): second-stage, pass-through and nested
        translations of the DID (nested ones regardless of the address: they cannot be
        matched to a second-stage range); first-stage ones only by a global flush."""
        if gran == h.QI_IOTLB_GRAN_PSI and (am > h.cap_max_amask_val(self.cap)
                                            or not h.cap_pgsel_inv(self.cap)):
            return False
        if gran not in (1, 2, 3):
            return False
        sm = self.cfg.scalable_mode
        first = (addr >> 12) & ~((1 << am) - 1)
        last = first + (1 << am) - 1

        def match(e: TlbEntry) -> bool:
            if gran == h.QI_IOTLB_GRAN_GLOBAL:
                return True
            if e[E_DID] != did or (sm and e[E_KIND] == PGTT_FL):
                return False
            if gran == h.QI_IOTLB_GRAN_DSI or e[E_KIND] == PGTT_NESTED:
                return True
            return e[E_FIRST] <= last and first <= e[E_LAST]

        self._drop_iotlb(match)
        return True

    def _inv_piotlb(self, did: int, pasid: int, addr: int | None, am: int) -> None:
        """PASID-based IOTLB (type 6): first-stage, nested and pass-through translations
        of (DID, PASID), all or those overlapping 2^AM pages at ``addr``."""
        first = (addr or 0) >> 12 & ~((1 << am) - 1)
        last = first + (1 << am) - 1

        def match(e: TlbEntry) -> bool:
            if e[E_DID] != did or e[E_PASID] != pasid or e[E_KIND] == PGTT_SL:
                return False
            return addr is None or (e[E_FIRST] <= last and first <= e[E_LAST])

        self._drop_iotlb(match)

    def _drop_iotlb(self, match: Callable[[TlbEntry], bool]) -> None:
        for k in [k for k, e in self.iotlb.items() if match(e)]:
            del self.iotlb[k]
        self._drop_fast(lambda k, e: not e[E_ATC] and match(e))

    def _inv_pasid_cache(self, gran: int, did: int, pasid: int) -> None:
        def match(pe: PeInfo, p: int) -> bool:
            if gran == h.QI_PC_GLOBAL:
                return True
            return pe.did == did and (gran == h.QI_PC_ALL_PASIDS or p == pasid)

        hit = [k for k, pe in self.pasid_cache.items() if match(pe, k[1])]
        for k in hit:
            del self.pasid_cache[k]
        gone = set(hit)
        # fast entries were derived from those PASID entries
        self._drop_fast(lambda k, e: not e[E_ATC] and (k[0], e[E_PASID]) in gone)

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
        last = first + (size >> 12) - 1
        self._drop_fast(lambda k, e: bool(e[E_ATC]) and k[0] == sid
                        and (pasid is None or e[E_PASID] == pasid)
                        and e[E_FIRST] <= last and first <= e[E_LAST])

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
        if not self.translation_enabled:
            return iova  # DMA remapping off: untranslated
        sid = dev.rid
        priv = bool(access & ACCESS_PRIV)
        need = access & _RWX
        state: dict[str, Any] = {"fpd": False, "pre": False, "dte": False}
        try:
            ctx = self._lookup_context(sid)
            state.update(fpd=ctx.fpd, pre=ctx.pre, dte=ctx.dte or ctx.tt == 1)
            if self.root_sm:
                pasid_eff, pe = self._lookup_pasid(sid, ctx, pasid)
                state["fpd"] = ctx.fpd or pe.fpd
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
            tkey = (did, pasid_eff, iova >> 12, priv)
            e = self.iotlb.get(tkey)
            if e is None or e[E_ALLOWED] & need != need:
                e = self._walk(ctx, pe, kind, did, pasid_eff, iova, need, priv)
                if len(self.iotlb) >= _TLB_CAPACITY:
                    self.iotlb.clear()
                self.iotlb[tkey] = e
        except VtdFault as f:
            self._fault(dev, pasid, iova, access, f, state)
        if state["dte"] and dev.ats and dev.props.get(PCI_ATS_ENABLED):
            e = (e[0], e[1], e[2], e[3], e[4], e[5], e[6], True)
        if len(self.fast) >= _TLB_CAPACITY:
            self.fast.clear()
        self.fast[key] = e
        return e[E_PA] | (iova & _PAGE)

    def _fault(self, dev: Device, pasid: int | None, iova: int, access: int, f: VtdFault,
               state: dict[str, Any]) -> NoReturn:
        self.stats["faults"] += 1
        name = fr.fault_name(f.code)
        detail: dict[str, Any] = {"code": f.code, "sid": dev.rid, "text": fr.fault_text(f.code),
                                  **f.detail}
        if self.tracer.enabled:
            self.tracer.event("hw", "fault", f"{self.name} {dev.name} {iova:#x} {name}")
        if (state["pre"] and state["dte"] and dev.pri and dev.props.get(PCI_PRI_ENABLED)
                and dev.props.get(PCI_ATS_ENABLED) and f.code in fr.RECOVERABLE):
            idx = self._post_page_request(dev, pasid, iova, access)
            if idx is not None:
                detail["prg_index"] = idx
                raise DmaFault(dev.name, iova, pasid, access, name, detail, page_request=True,
                               code=f.code)
        detail["recorded"] = (not state["fpd"]
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
            oa, allowed, base, size, _w = self._walk_ss(root, aw, ssade, iova, need,
                                                        pe is not None)
            return (oa & ~_PAGE, allowed, did, pasid, kind, base >> 12,
                    (base + size - 1) >> 12, False)
        assert pe is not None
        oa, allowed, base, size = self._walk_fs(pe, iova, need, priv, kind == PGTT_NESTED)
        if kind == PGTT_NESTED:
            base, size = iova & ~_PAGE, 4096  # combined entries are cached per page
        return (oa & ~_PAGE, allowed, did, pasid, kind, base >> 12, (base + size - 1) >> 12,
                False)

    def _walk_ss(self, root: int, aw: int, ssade: bool, addr: int, need: int, sm: bool,
                 stage1_fetch: int = 0) -> tuple[int, int, int, int, bool]:
        """Second-stage walk. Returns (output address, accesses allowed without a further
        walk, input page base, leaf size, leaf writable). ``stage1_fetch`` (nested): 1 = the FS root
        table, 2 = another FS entry: SS permission failures become 0x75/0x76."""
        fmt = self._ss_fmt[aw + 2]
        write = need & ACCESS_WRITE
        r = walk(fmt, self.mem.read_u64, root, addr,
                 access=Access.WRITE if write else Access.READ, privileged=True,
                 set_accessed=ssade, set_dirty=ssade,
                 write_u64=self.mem.write_u64 if ssade else None)
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
        w_ok = r.writable and (not ssade or bool(r.desc & SS_D))
        allowed = ACCESS_READ | ACCESS_EXEC | (ACCESS_WRITE if w_ok else 0)
        return r.oa, allowed, r.page_base, r.page_size, r.writable

    def _walk_fs(self, pe: PeInfo, iova: int, need: int, priv: bool, nested: bool
                 ) -> tuple[int, int, int, int]:
        levels = 5 if pe.fspm == 1 else 4
        top = 12 + 9 * levels - 1
        hi = iova >> top
        if hi not in (0, (1 << (64 - top)) - 1):
            raise VtdFault(fr.VTD_FR_FS_NON_CANONICAL, iova)
        fmt = self._fs_fmt[levels]
        read_u64, write_u64 = self.mem.read_u64, self.mem.write_u64
        # Nested: every FS table address is a GPA translated by the second stage; A/D
        # updates of FS entries are writes through that translation.
        gpa_of: dict[int, tuple[int, bool]] = {}  # FS table page PA -> (GPA, SS writable)
        fetches = [0]
        errata = self.cfg.errata_772415 and pe.pwsnp

        def xlate(gpa: int) -> int:
            fetches[0] += 1
            pa, _a, _b, _s, writable = self._walk_ss(pe.ssptptr, pe.aw, pe.ssade, gpa,
                                                     ACCESS_READ, True,
                                                     1 if fetches[0] == 1 else 2)
            gpa_of[pa >> 12] = (gpa, writable)
            return pa

        def write_fs(pa: int, val: int) -> None:
            if pe.eafe and val & X86_A:
                val |= X86_EA
            if nested:
                gpa, writable = gpa_of[pa >> 12]
                if writable:  # an ordinary write through the second stage (SS D too)
                    self._walk_ss(pe.ssptptr, pe.aw, pe.ssade, gpa, ACCESS_WRITE, True, 2)
                elif not errata:
                    raise VtdFault(fr.VTD_FR_FS_NESTED_ENTRY_WRITE, iova, stage=2)
                # else SPR17 erratum 772415: the A/D update lands in a page the second
                # stage maps read-only.
            write_u64(pa, val)

        r = walk(fmt, read_u64, pe.fsptptr, iova, access=Access.READ, privileged=True,
                 set_accessed=True, write_u64=write_fs, table_xlate=xlate if nested else None)
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
        pa, s2_allowed, _b, _s, _w = self._walk_ss(pe.ssptptr, pe.aw, pe.ssade, r.oa,
                                                   need & ACCESS_WRITE or ACCESS_READ, True)
        return pa, allowed & s2_allowed, r.page_base, r.page_size

    # -- the platform's wiring ----------------------------------------------------------
    def detach_device(self, dev: Device) -> None:
        self._drop_fast(lambda k, e: k[0] == dev.rid)


def _walk_str(r: WalkResult | WalkFault) -> str:
    if isinstance(r, WalkFault):
        return f"fault {r.reason} at level {r.level}"
    return f"{r.oa:#x} ({r.page_size:#x} page, desc {r.desc:#x})"


def vtd_hw_create(name: str, options: dict[str, Any], platform: Platform) -> VtdHardware:
    return VtdHardware(name, VtdConfig.from_options(options), platform)


__all__ = ["VtdFault", "VtdHardware", "vtd_hw_create"]

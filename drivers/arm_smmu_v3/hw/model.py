"""The SMMUv3 hardware model: registers, queues in memory, caches, the translation
pipeline, ATS/PRI endpoints and stalls.

It never calls the driver: it writes event and PRI records into the queues the driver
programmed and asserts an interrupt line; the platform runs whatever handler the driver
requested. Faults raise :class:`~iommu_core.platform.dma.DmaFault` after the record is
in memory.
"""

from __future__ import annotations

import functools
from typing import Any, NoReturn

from drivers.arm_smmu_v3.hw.cmdq import CommandEngine
from drivers.arm_smmu_v3.hw.cmdqv import CmdqvConfig, Tegra241CmdqvHw
from drivers.arm_smmu_v3.hw.cmdqv_regs import CmdqvRegs
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.decode import SmmuEvent
from drivers.arm_smmu_v3.hw.queues import HwQueue, consume_commands, event_record, pri_record
from drivers.arm_smmu_v3.hw.regs import REG_NAMES, SmmuRegs
from drivers.arm_smmu_v3.hw.tlb import PERM_W, Atc, ConfigCache, FastPath, Tlb
from drivers.arm_smmu_v3.hw.translate import EVT_ABORT, Translator, perm_ok, walk_access
from drivers.arm_smmu_v3.regs import (
    CMDQ_CONS_ERR,
    CMDQ_ENT_DWORDS,
    CR0_ATSCHK,
    CR0_CMDQEN,
    CR0_EVTQEN,
    CR0_PRIQEN,
    CR0_SMMUEN,
    EVENT_NAMES,
    EVT_ID_BAD_ATS_TREQ,
    EVT_ID_TRANSL_FORBIDDEN,
    EVTQ_ENT_DWORDS,
    FIELD_PREP,
    GBPA_ABORT,
    GBPA_UPDATE,
    GERROR_CMDQ_ERR,
    IRQ_CTRL_EVTQ_IRQEN,
    IRQ_CTRL_GERROR_IRQEN,
    IRQ_CTRL_PRIQ_IRQEN,
    PRI_RESP_SUCC,
    PRIQ_ENT_DWORDS,
    Q_OVERFLOW_FLAG,
    STRTAB_STE_1_EATS_S1CHK,
)
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

_PAGE_MASK = 0xFFF
#: Translation fault IDs that may stall or turn into a PRI page request.
_XLATE_FAULTS = frozenset({0x10, 0x11, 0x12, 0x13})


class SmmuV3Hardware(IommuHardware):
    """One SMMUv3 (``iommu_hw_create`` builds it from the Machine options)."""

    granule = 4096

    def __init__(self, name: str, cfg: SmmuHwConfig, platform: Platform,
                 cmdqv: CmdqvConfig | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.platform = platform
        # Control state (reset values).
        self.cr0 = 0
        self.cr0ack = 0
        self.gbpa = 0
        self.irq_ctrl = 0
        self.irq_ctrlack = 0
        self.gerror = 0
        self.gerrorn = 0
        self.strtab_base = 0
        self.strtab_base_cfg = 0
        self.cmdq = HwQueue("cmdq", CMDQ_ENT_DWORDS, cfg.cmdqs)
        self.evtq = HwQueue("evtq", EVTQ_ENT_DWORDS, cfg.evtqs)
        self.priq = HwQueue("priq", PRIQ_ENT_DWORDS, cfg.priqs)
        self._cmdq_error = False
        self._cmdq_busy = False
        # Caches.
        #: The fast path: (sid, ssid, page, endpoint ATS on) -> (pa page, allowed ACCESS_*
        #: bits). Derived from one TLB or ATC entry and the StreamID's configuration, and
        #: dropped with either; the ATS bit keeps ATC-derived entries from outliving ATS
        #: Enable.
        self.fast = FastPath()
        self.dma_hits = self.fast.hits
        self.ccache = ConfigCache()
        self.tlb = Tlb(self.fast, cfg.tlb_entries)
        self.atc = Atc(self.fast)
        # Endpoint-visible state: stalled transactions and page request groups.
        self._next_stag = 0
        self.stalled: dict[int, tuple[int, int | None, int, int]] = {}
        self.resumed: list[tuple[int, int, int]] = []
        self._next_prgi: dict[int, int] = {}
        self.prg_outstanding: dict[tuple[int, int], tuple[int | None, int, int]] = {}
        self.prg_responses: list[tuple[int, int | None, int, int]] = []
        #: Records written to the event queue (and dropped ones), for inspection.
        self.events_recorded = 0
        self.events_dropped = 0
        self.regs = SmmuRegs(self)
        self.mmio: dict[str, Mmio] = {"regs": self.regs}
        self.irqs: dict[str, IrqLine] = {n: IrqLine(f"{name}-{n}")
                                         for n in ("evtq", "priq", "gerror")}
        self.cmd = CommandEngine(self)
        self.xlate = Translator(self)
        #: The Tegra241 CMDQV beside this SMMU (Machine option ``tegra241_cmdqv``): its
        #: own register window and interrupt, the SMMU's command engine.
        self.cmdqv: Tegra241CmdqvHw | None = None
        if cmdqv is not None:
            irq = IrqLine(f"{name}-cmdqv")
            self.irqs["cmdqv"] = irq
            self.cmdqv = Tegra241CmdqvHw(self, cmdqv, irq)
            self.mmio["cmdqv"] = CmdqvRegs(self.cmdqv)

    # ==================================================================================
    # Registers
    # ==================================================================================
    def trace_reg(self, offset: int, value: int) -> None:
        tracer = self.platform.tracer
        if tracer.enabled:
            tracer.event("hw", f"{self.name} write {REG_NAMES.get(offset, hex(offset))}",
                         f"{value:#x}")

    def config_changed(self) -> None:
        """A register change that can alter every translation (SMMUEN, GBPA, STRTAB)."""
        self.fast_flush()

    def write_cr0(self, value: int) -> None:
        old = self.cr0
        self.cr0 = value
        self.cr0ack = value  # the update handshake completes at once
        if (old ^ value) & (CR0_SMMUEN | CR0_ATSCHK):
            self.config_changed()
        if value & CR0_CMDQEN and not old & CR0_CMDQEN:
            self._consume_cmdq()

    def write_gbpa(self, value: int) -> None:
        if value & GBPA_UPDATE:
            self.gbpa = value & ~GBPA_UPDATE
            self.config_changed()

    def write_gerrorn(self, value: int) -> None:
        self.gerrorn = value
        if self._cmdq_error and not (self.gerror ^ self.gerrorn) & GERROR_CMDQ_ERR:
            # Acknowledged: resume from CONS (software replaced the bad command).
            self._cmdq_error = False
            self.cmdq.cons &= ~CMDQ_CONS_ERR
            self._consume_cmdq()

    def write_cmdq_prod(self, value: int) -> None:
        self.cmdq.prod = value
        self._consume_cmdq()

    # ==================================================================================
    # Queues
    # ==================================================================================
    def _consume_cmdq(self) -> None:
        """Execute commands from CONS to PROD, reading each contiguous run of slots in
        one access; stop at the first error (CONS stays on it, CONS.ERR says why)."""
        if self._cmdq_busy or self._cmdq_error or not self.cr0 & CR0_CMDQEN:
            return
        q = self.cmdq
        self._cmdq_busy = True
        try:
            error = consume_commands(q, q.base, q.log2size, self.platform.mem.read,
                                     self.cmd.execute)
        finally:
            self._cmdq_busy = False
        if error:
            self._cmdq_error = True
            q.cons = (q.cons & ~CMDQ_CONS_ERR) | FIELD_PREP(CMDQ_CONS_ERR, error)
            self._raise_gerror(GERROR_CMDQ_ERR)

    def _raise_gerror(self, bit: int) -> None:
        if (self.gerror ^ self.gerrorn) & bit:
            return  # already active
        self.gerror ^= bit
        if self.irq_ctrl & IRQ_CTRL_GERROR_IRQEN:
            self.irqs["gerror"].assert_irq()

    def _produce(self, q: HwQueue, enable: int, irqen: int, irq: str,
                 record: tuple[int, ...]) -> bool:
        if not self.cr0 & enable:
            return False
        if q.full():
            # Records are lost: flip OVFLG, unless an earlier overflow is not yet
            # acknowledged (CONS.OVACKFLG != PROD.OVFLG).
            if not (q.prod ^ q.cons) & Q_OVERFLOW_FLAG:
                q.prod ^= Q_OVERFLOW_FLAG
            return False
        self.platform.mem.write_qwords(q.slot(q.prod), record)
        q.prod = q.inc(q.prod)
        if self.irq_ctrl & irqen:
            self.irqs[irq].assert_irq()
        return True

    def record_event(self, record: tuple[int, int, int, int]) -> None:
        tracer = self.platform.tracer
        if tracer.enabled:
            tracer.event("hw", f"{self.name} EVTQ <- {EVENT_NAMES.get(record[0] & 0xFF, '?')}",
                         " ".join(f"{x:#x}" for x in record))
        if self._produce(self.evtq, CR0_EVTQEN, IRQ_CTRL_EVTQ_IRQEN, "evtq", record):
            self.events_recorded += 1
        else:
            self.events_dropped += 1

    def page_request(self, sid: int, ssid: int | None, iova: int, access: int) -> int:
        grpid = self._next_prgi.get(sid, 0)
        self._next_prgi[sid] = (grpid + 1) & 0x1FF
        rec = pri_record(sid, ssid, iova & ~_PAGE_MASK, grpid,
                         read=not access & ACCESS_WRITE or bool(access & ACCESS_READ),
                         write=bool(access & ACCESS_WRITE), exe=bool(access & ACCESS_EXEC),
                         priv=bool(access & ACCESS_PRIV))
        self.prg_outstanding[(sid, grpid)] = (ssid, iova, access)
        tracer = self.platform.tracer
        if tracer.enabled:
            tracer.event("hw", f"{self.name} PRIQ <- page request", f"sid {sid:#x} grp {grpid} "
                         f"addr {iova:#x}")
        if not self._produce(self.priq, CR0_PRIQEN, IRQ_CTRL_PRIQ_IRQEN, "priq", rec):
            # PRI queue full or off: the SMMU answers the group itself with success.
            self.prg_response(sid, ssid, grpid, PRI_RESP_SUCC)
        return grpid

    # -- responses (commands) -------------------------------------------------------------
    def prg_response(self, sid: int, ssid: int | None, grpid: int, resp: int) -> None:
        self.prg_outstanding.pop((sid, grpid), None)
        self.prg_responses.append((sid, ssid, grpid, resp))

    def resume(self, sid: int, stag: int, resp: int) -> None:
        st = self.stalled.get(stag)
        if st is None or st[0] != sid:
            return
        del self.stalled[stag]
        self.resumed.append((sid, stag, resp))

    # ==================================================================================
    # Caches
    # ==================================================================================
    def fast_flush(self) -> None:
        if self.fast:
            self.fast.clear()

    def attach_device(self, dev: Device) -> None:
        pass

    def detach_device(self, dev: Device) -> None:
        for sid in dev.stream_ids or (dev.rid,):
            self.atc.drop_sid(sid)
            self.fast.drop_sid(sid)
        self.fast.drop_device(dev)

    def device_changed(self, dev: Device) -> None:
        # The published map of a device holds one ATS state's translations.
        self.fast.drop_device(dev)

    def _watch(self, dev: Device) -> None:
        """Publishing for ``dev``: hear of its endpoint state changes even when it was
        not wired through the platform (a device a test made by hand)."""
        if dev.props.on_change is None:
            dev.props.on_change = functools.partial(self.device_changed, dev)

    # ==================================================================================
    # DMA
    # ==================================================================================
    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        sids = dev.stream_ids
        hit = self.fast.get((sids[0] if sids else dev.rid, pasid, iova >> 12,
                             dev.props.get(PCI_ATS_ENABLED, False)))
        if hit is not None and not access & ~hit[1]:
            return hit[0] | (iova & _PAGE_MASK)
        return self._translate_slow(dev, pasid, iova, access)

    def _sid(self, dev: Device) -> int:
        return dev.stream_ids[0] if dev.stream_ids else dev.rid

    def _translate_slow(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        if not self.cr0 & CR0_SMMUEN:
            if self.gbpa & GBPA_ABORT:
                raise DmaFault(dev.name, iova, pasid, access, "GBPA_ABORT",
                               {"smmu": self.name})
            return iova
        sid = self._sid(dev)
        if dev.props.get(PCI_ATS_ENABLED):
            return self._ats(dev, sid, pasid, iova, access)
        try:
            e = self.xlate.translate(sid, pasid, iova, access)
            if not perm_ok(e, access):
                # A TLB entry is only returned when it permits the access.
                raise AssertionError("translate returned an entry without permission")
        except SmmuEvent as ev:
            self._fault(dev, sid, pasid, iova, access, ev)
        pa = e.pa + (iova - e.va)
        if e.user:
            self._watch(dev)
            self.fast.add((sid, pasid, iova >> 12, False), (pa & ~_PAGE_MASK,
                                                            e.perms | ACCESS_PRIV),
                          e if e.tag is not None else None, dev)
        return pa

    def _fault(self, dev: Device, sid: int, ssid: int | None, iova: int, access: int,
               ev: SmmuEvent, record: bool = True) -> NoReturn:
        stall = ev.stall and ev.evt_id in _XLATE_FAULTS
        stag = 0
        if stall:
            stag = self._next_stag
            self._next_stag = (stag + 1) & 0xFFFF
            self.stalled[stag] = (sid, ssid, iova, access)
        rec = event_record(ev.evt_id, sid, ssid, addr=ev.addr or iova, ipa=ev.ipa,
                           fetch_addr=ev.fetch_addr, rnw=not access & ACCESS_WRITE,
                           ind=bool(access & ACCESS_EXEC), pnu=bool(access & ACCESS_PRIV),
                           s2=ev.s2, cls=ev.cls, stall=stall, stag=stag, tt_read=ev.tt_read)
        if ev.evt_id != EVT_ABORT and record and (ev.record or stall):
            self.record_event(rec)
        detail: dict[str, Any] = {
            "smmu": self.name, "event_id": ev.evt_id, "sid": sid, "ssid": ssid,
            "stage": 2 if ev.s2 else 1, "class": ev.cls, "ipa": ev.ipa, "level": ev.level,
            "record": rec, "why": ev.detail,
        }
        if stall:
            detail["stag"] = stag
        raise DmaFault(dev.name, iova, ssid, access,
                       "ABORT" if ev.evt_id == EVT_ABORT else ev.name, detail,
                       page_request=stall, code=ev.evt_id)

    # -- ATS: the endpoint's ATC, translation requests and translated transactions ----------
    def _ats(self, dev: Device, sid: int, ssid: int | None, iova: int, access: int) -> int:
        key = -1 if ssid is None else ssid
        hit = self.atc.lookup(sid, key, iova)
        need = access & 7
        if hit is not None and not need & ~hit[1]:
            return self._translated(dev, sid, ssid, iova, access, hit[0], hit[1])
        # ATS Translation Request (read-only, or read/write for a write).
        try:
            ste = self.xlate.get_ste(sid)
        except SmmuEvent as ev:
            self._fault(dev, sid, ssid, iova, access, ev)
        if not ste.eats or ste.abort or ste.bypass:
            self._fault(dev, sid, ssid, iova, access,
                        SmmuEvent(EVT_ID_BAD_ATS_TREQ, "ATS translation request refused "
                                  "(EATS=0)", addr=iova))
        try:
            e = self.xlate.translate(sid, ssid, iova, access,
                                     s1_only=ste.eats == STRTAB_STE_1_EATS_S1CHK)
        except SmmuEvent as ev:
            if ev.evt_id not in _XLATE_FAULTS:
                self._fault(dev, sid, ssid, iova, access, ev)  # configuration errors
            # Translation failures are reported to the endpoint only, never as events.
            if dev.props.get(PCI_PRI_ENABLED) and self.cfg.pri:
                grpid = self.page_request(sid, ssid, iova, access)
                raise DmaFault(dev.name, iova, ssid, access, ev.name,
                               {"smmu": self.name, "ats": True, "pri": True, "grpid": grpid,
                                "event_id": ev.evt_id, "sid": sid, "why": ev.detail},
                               page_request=True, code=ev.evt_id) from None
            raise DmaFault(dev.name, iova, ssid, access, ev.name,
                           {"smmu": self.name, "ats": True, "event_id": ev.evt_id, "sid": sid,
                            "why": ev.detail}, code=ev.evt_id) from None
        # Only what the request asked for is granted (no write for a read-only request).
        perms = e.perms if access & ACCESS_WRITE else e.perms & ~PERM_W
        pa_page = (e.pa + (iova - e.va)) & ~_PAGE_MASK
        self.atc.insert(sid, key, iova, pa_page, perms)
        return self._translated(dev, sid, ssid, iova, access, pa_page, perms)

    def _translated(self, dev: Device, sid: int, ssid: int | None, iova: int, access: int,
                    addr_page: int, perms: int) -> int:
        """A Translated transaction from the endpoint's ATC."""
        if self.cr0 & CR0_ATSCHK:
            try:
                ste = self.xlate.get_ste(sid)
            except SmmuEvent as ev:
                self._fault(dev, sid, ssid, iova, access, ev)
            if not ste.eats:
                self._fault(dev, sid, ssid, iova, access,
                            SmmuEvent(EVT_ID_TRANSL_FORBIDDEN, "translated traffic with "
                                      "EATS=0", addr=addr_page | (iova & _PAGE_MASK)))
            if ste.eats == STRTAB_STE_1_EATS_S1CHK and ste.s2ctx is not None:
                # Split-stage ATS: the ATC holds IPAs; stage 2 still applies.
                ipa = addr_page | (iova & _PAGE_MASK)
                try:
                    return self.xlate.s2_walk(ste.s2ctx, ipa, walk_access(access), ipa).oa
                except SmmuEvent as ev:
                    self._fault(dev, sid, ssid, iova, access, ev)
        # Derived from the ATC entry (ATC_INV drops it) and the STE (ATSCHK).
        self._watch(dev)
        self.fast.add((sid, ssid, iova >> 12, True), (addr_page, perms | ACCESS_PRIV), None,
                      dev)
        return addr_page | (iova & _PAGE_MASK)

    # -- introspection for people (the tour, tests) ----------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "tlb_entries": self.tlb.count, "tlb_hits": self.tlb.hits,
            "tlb_misses": self.tlb.misses, "cached_stes": len(self.ccache.ste),
            "commands": dict(self.cmd.counts), "events_recorded": self.events_recorded,
            "events_dropped": self.events_dropped, "atc_entries": self.atc.count(),
            **({"cmdqv": self.cmdqv.stats()} if self.cmdqv is not None else {}),
        }


__all__ = ["SmmuV3Hardware"]

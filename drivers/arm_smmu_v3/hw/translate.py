"""The translation pipeline: StreamID -> STE -> (SSID) CD -> stage-1 walk -> stage-2 walk.

Each stage is the shared :func:`iommu_core.pgtable.walk` over the descriptors in memory.
In a nested configuration every stage-1 table access and the CD fetch are stage-2 input
addresses: they go through :meth:`Translator.s2_xlate` (the walker's ``table_xlate``),
and a stage-2 fault on them is reported as a stage-2 event of class TT or CD.

Results are cached: STEs/CDs in the configuration cache, leaves in the TLB (stage 1 only,
stage 2 only, or combined nested entries), until an invalidation command removes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.entry import Qwords
from drivers.arm_smmu_v3.hw.decode import (
    DecodedCd,
    DecodedSte,
    S2Context,
    SmmuEvent,
    decode_cd,
    decode_ste,
)
from drivers.arm_smmu_v3.hw.tlb import (
    EL2_VMID,
    GLOBAL_ASID,
    NESTED,
    NO_ASID,
    PERM_R,
    PERM_W,
    PERM_X,
    STAGE1,
    STAGE2,
    TlbEntry,
)
from drivers.arm_smmu_v3.regs import (
    CTXDESC_L1_DESC_L2PTR_MASK,
    CTXDESC_L1_DESC_V,
    EVT_ID_ACCESS_FAULT,
    EVT_ID_ADDR_SIZE_FAULT,
    EVT_ID_BAD_STREAMID_CONFIG,
    EVT_ID_BAD_SUBSTREAMID_CONFIG,
    EVT_ID_CD_FETCH_FAULT,
    EVT_ID_PERMISSION_FAULT,
    EVT_ID_STE_FETCH_FAULT,
    EVT_ID_STREAM_DISABLED_FAULT,
    EVT_ID_TRANSLATION_FAULT,
    EVTQ_1_CLASS_CD,
    EVTQ_1_CLASS_IN,
    EVTQ_1_CLASS_TT,
    FIELD_GET,
    STRTAB_BASE_ADDR_MASK,
    STRTAB_BASE_CFG_FMT,
    STRTAB_BASE_CFG_FMT_2LVL,
    STRTAB_BASE_CFG_LOG2SIZE,
    STRTAB_BASE_CFG_SPLIT,
    STRTAB_L1_DESC_L2PTR_MASK,
    STRTAB_L1_DESC_SPAN,
    STRTAB_STE_0_S1FMT_64K_L2,
    STRTAB_STE_0_S1FMT_LINEAR,
    STRTAB_STE_1_S1DSS_SSID0,
    STRTAB_STE_1_S1DSS_TERMINATE,
)
from iommu_core.pgtable.walk import Access, WalkFault, WalkResult, walk
from iommu_core.platform.dma import ACCESS_EXEC, ACCESS_PRIV, ACCESS_WRITE

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware

#: The pseudo event of an abort STE: the transaction is terminated, nothing recorded.
EVT_ABORT = 0

_FAULT_IDS = {
    "translation": EVT_ID_TRANSLATION_FAULT,
    "address_size": EVT_ID_ADDR_SIZE_FAULT,
    "access_flag": EVT_ID_ACCESS_FAULT,
    "permission": EVT_ID_PERMISSION_FAULT,
}
_NG = 1 << 11  # stage-1 leaf "not global"
PAGE = 4096


def walk_access(access: int) -> Access:
    if access & ACCESS_WRITE:
        return Access.WRITE
    if access & ACCESS_EXEC:
        return Access.EXEC
    return Access.READ


def perm_ok(e: TlbEntry, access: int) -> bool:
    if access & 7 & ~e.perms:
        return False
    return bool(access & ACCESS_PRIV) or e.user


def _perms(readable: bool, writable: bool, executable: bool) -> int:
    return (PERM_R if readable else 0) | (PERM_W if writable else 0) | (
        PERM_X if executable else 0)


class Translator:
    """The SMMU's translation logic for one instance."""

    def __init__(self, hw: SmmuV3Hardware) -> None:
        self.hw = hw
        self.cfg = hw.cfg
        self.mem = hw.platform.mem
        self.read_u64 = self.mem.read_u64
        self.pa_limit = 1 << min(hw.platform.mem.phys_bits, hw.cfg.oas)
        self.tracer = hw.platform.tracer

    def _read_entry(self, addr: int) -> Qwords:
        r = self.read_u64
        return (r(addr), r(addr + 8), r(addr + 16), r(addr + 24), r(addr + 32),
                r(addr + 40), r(addr + 48), r(addr + 56))

    def _trace(self, what: str, detail: str) -> None:
        self.tracer.event("hw", f"{self.hw.name} {what}", detail)

    # -- configuration fetch ---------------------------------------------------------------------
    def ste_addr(self, sid: int) -> int:
        hw = self.hw
        base = hw.strtab_base & STRTAB_BASE_ADDR_MASK
        cfg_reg = hw.strtab_base_cfg
        log2size = min(FIELD_GET(STRTAB_BASE_CFG_LOG2SIZE, cfg_reg), self.cfg.sidsize)
        if sid >> log2size:
            raise SmmuEvent(EVT_ID_BAD_STREAMID_CONFIG, f"SID {sid:#x} beyond the stream table")
        if FIELD_GET(STRTAB_BASE_CFG_FMT, cfg_reg) == STRTAB_BASE_CFG_FMT_2LVL:
            split = FIELD_GET(STRTAB_BASE_CFG_SPLIT, cfg_reg)
            if split not in (6, 8, 10):
                raise SmmuEvent(EVT_ID_BAD_STREAMID_CONFIG, f"reserved SPLIT {split}")
            l1 = base + ((sid >> split) << 3)
            if l1 >= self.pa_limit:
                raise SmmuEvent(EVT_ID_STE_FETCH_FAULT, "L1STD beyond the PA space",
                                fetch_addr=l1)
            desc = self.read_u64(l1)
            span = FIELD_GET(STRTAB_L1_DESC_SPAN, desc)
            l2idx = sid & ((1 << split) - 1)
            if span == 0 or span > split + 1 or l2idx >> (span - 1):
                raise SmmuEvent(EVT_ID_BAD_STREAMID_CONFIG,
                                f"no level-2 stream table for SID {sid:#x} (span {span})")
            addr = (desc & STRTAB_L1_DESC_L2PTR_MASK) + (l2idx << 6)
        else:
            addr = base + (sid << 6)
        if addr + 64 > self.pa_limit:
            raise SmmuEvent(EVT_ID_STE_FETCH_FAULT, "STE beyond the PA space", fetch_addr=addr)
        return addr

    def get_ste(self, sid: int) -> DecodedSte:
        cached = self.hw.ccache.ste.get(sid)
        if cached is not None:
            return cached
        addr = self.ste_addr(sid)
        q = self._read_entry(addr)
        ste = decode_ste(self.cfg, sid, q)
        if self.tracer.enabled:
            self._trace("fetch STE", f"SID {sid:#x} @ {addr:#x}: "
                        + " ".join(f"{x:#x}" for x in q[:4]))
        self.hw.ccache.ste[sid] = ste
        return ste

    def prefetch(self, sid: int) -> None:
        with contextlib.suppress(SmmuEvent):  # prefetch never reports
            self.get_ste(sid)

    def _config_addr(self, ste: DecodedSte, addr: int, cls: int, input_addr: int) -> int:
        """A CD-table address: an IPA when stage 2 translates (nested), else a PA."""
        if ste.s2ctx is not None:
            return self.s2_xlate(ste.s2ctx, addr, cls, input_addr)
        if addr + 64 > self.pa_limit:
            raise SmmuEvent(EVT_ID_CD_FETCH_FAULT, "CD beyond the PA space", fetch_addr=addr)
        return addr

    def get_cd(self, ste: DecodedSte, idx: int, input_addr: int) -> DecodedCd:
        cc = self.hw.ccache
        cds = cc.cd.get(ste.sid)
        if cds is not None:
            hit = cds.get(idx)
            if hit is not None:
                return hit
        ptr = ste.s1ctxptr
        if ste.s1cdmax == 0:
            ipa = ptr
        elif ste.s1fmt == STRTAB_STE_0_S1FMT_LINEAR:
            ipa = ptr + (idx << 6)
        else:
            split = 10 if ste.s1fmt == STRTAB_STE_0_S1FMT_64K_L2 else 6
            l1idx = idx >> split
            l1cache = cc.l1cd.setdefault(ste.sid, {})
            if l1idx in l1cache:
                l2 = l1cache[l1idx]
            else:
                daddr = self._config_addr(ste, ptr + (l1idx << 3), EVTQ_1_CLASS_CD, input_addr)
                desc = self.read_u64(daddr)
                l2 = desc & CTXDESC_L1_DESC_L2PTR_MASK if desc & CTXDESC_L1_DESC_V else None
                l1cache[l1idx] = l2  # invalid L1 descriptors are cached too
            if l2 is None:
                raise SmmuEvent(EVT_ID_BAD_SUBSTREAMID_CONFIG,
                                f"L1CD {l1idx} is invalid (SSID {idx})")
            ipa = l2 + ((idx & ((1 << split) - 1)) << 6)
        addr = self._config_addr(ste, ipa, EVTQ_1_CLASS_CD, input_addr)
        q = self._read_entry(addr)
        cd = decode_cd(self.cfg, ste, idx, q)
        if self.tracer.enabled:
            self._trace("fetch CD", f"SID {ste.sid:#x} SSID {idx} @ {addr:#x}")
        cc.cd.setdefault(ste.sid, {})[idx] = cd
        return cd

    # -- stage 2 -----------------------------------------------------------------------------
    def s2_xlate(self, s2: S2Context, ipa: int, cls: int, input_addr: int) -> int:
        """Translate a table/CD address (a read) through stage 2, via the TLB: a cached
        stage-2 leaf makes a nested walk cost reads, not stage-2 walks."""
        tlb = self.hw.tlb
        tag = (STAGE2, s2.vmid, NO_ASID)
        e = tlb.lookup(tag, ipa)
        if e is not None and e.perms & PERM_R:
            return e.pa + (ipa - e.va)
        r = walk(s2.fmt, self.read_u64, s2.ttb, ipa, access=Access.READ, privileged=True)
        if isinstance(r, WalkFault):
            raise SmmuEvent(_FAULT_IDS[r.reason], f"stage 2 on {ipa:#x} ({r.reason})",
                            addr=input_addr, ipa=ipa, s2=True, cls=cls, level=r.level,
                            record=s2.record, stall=s2.stall, tt_read=True)
        tlb.insert(tag, ipa, TlbEntry(r.page_base, r.page_size, r.oa_base,
                                      _perms(r.readable, r.writable, r.executable), True))
        return r.oa

    def s2_desc_write(self, s2: S2Context, ipa: int, input_addr: int) -> None:
        """HTTU updating a stage-1 descriptor at ``ipa`` is a stage-2 write: without
        stage-2 write permission it is a stage-2 fault of class TT on a write (TTRnW=0)
        and the descriptor stays as it was."""
        tlb = self.hw.tlb
        tag = (STAGE2, s2.vmid, NO_ASID)
        e = tlb.lookup(tag, ipa)
        if e is not None and e.perms & PERM_W:
            return
        r = walk(s2.fmt, self.read_u64, s2.ttb, ipa, access=Access.WRITE, privileged=True)
        if isinstance(r, WalkFault):
            raise SmmuEvent(_FAULT_IDS[r.reason], f"stage 2 on the HTTU update of the "
                            f"descriptor at {ipa:#x} ({r.reason})", addr=input_addr,
                            ipa=ipa, s2=True, cls=EVTQ_1_CLASS_TT, level=r.level,
                            record=s2.record, stall=s2.stall, tt_read=False)
        tlb.insert(tag, ipa, TlbEntry(r.page_base, r.page_size, r.oa_base,
                                      _perms(r.readable, r.writable, r.executable), True))

    # -- the whole translation -----------------------------------------------------------------
    def translate(self, sid: int, ssid: int | None, iova: int, access: int,
                  s1_only: bool = False) -> TlbEntry:
        """The leaf (possibly combined nested) translating ``iova``. Raises SmmuEvent."""
        ste = self.get_ste(sid)
        if ste.abort:
            raise SmmuEvent(EVT_ABORT, "STE.Config is abort", addr=iova, record=False)
        if ste.bypass:
            if ssid is not None:
                raise SmmuEvent(EVT_ID_BAD_SUBSTREAMID_CONFIG, "SSID on a bypass stream")
            return TlbEntry(iova & -PAGE, PAGE, iova & -PAGE, PERM_R | PERM_W | PERM_X, True)
        cd: DecodedCd | None = None
        if ste.s1:
            if ssid is not None:
                if not ste.s1cdmax or ssid >> ste.s1cdmax:
                    raise SmmuEvent(EVT_ID_BAD_SUBSTREAMID_CONFIG, f"SSID {ssid} out of range",
                                    addr=iova)
                if ssid == 0 and ste.s1dss == STRTAB_STE_1_S1DSS_SSID0:
                    # CD 0 is reserved for substream-less traffic (spec 7.3.7).
                    raise SmmuEvent(EVT_ID_STREAM_DISABLED_FAULT,
                                    "SSID 0 with S1DSS=SSID0", addr=iova)
                cd = self.get_cd(ste, ssid, iova)
            elif ste.s1cdmax == 0 or ste.s1dss == STRTAB_STE_1_S1DSS_SSID0:
                cd = self.get_cd(ste, 0, iova)
            elif ste.s1dss == STRTAB_STE_1_S1DSS_TERMINATE:
                raise SmmuEvent(EVT_ID_STREAM_DISABLED_FAULT,
                                "no SSID and S1DSS=TERMINATE", addr=iova)
            # else S1DSS=BYPASS: stage 1 bypassed for substream-less traffic
        elif ssid is not None:
            raise SmmuEvent(EVT_ID_BAD_SUBSTREAMID_CONFIG, "SSID without stage 1", addr=iova)
        s2 = ste.s2ctx
        if cd is None and s2 is None:
            return TlbEntry(iova & -PAGE, PAGE, iova & -PAGE, PERM_R | PERM_W | PERM_X, True)
        tlb = self.hw.tlb
        if cd is not None:
            vmid = s2.vmid if s2 is not None else (EL2_VMID if ste.el2 else ste.vmid)
            tag = (NESTED if s2 is not None else STAGE1, vmid, cd.asid)
        else:
            assert s2 is not None
            tag = (STAGE2, s2.vmid, NO_ASID)
        if not s1_only:
            e = tlb.lookup(tag, iova)
            if e is not None and perm_ok(e, access):
                return e
        waccess = walk_access(access)
        if cd is not None:
            s1 = self._s1_walk(ste, cd, iova, access, waccess)
            ipa, size, perms, user, is_global = s1
            if s1_only or s2 is None:
                entry = TlbEntry(iova & -size, size, ipa & -size, perms, user)
                if s1_only:
                    return entry
                return tlb.insert((tag[0], tag[1], GLOBAL_ASID) if is_global else tag, iova,
                                  entry)
        else:
            ipa, size, perms, user, is_global = iova, 1 << 64, 7, True, False
        assert s2 is not None
        r = self.s2_walk(s2, ipa, waccess, iova)
        s2perms = _perms(r.readable, r.writable, r.executable)
        if cd is not None:
            # Cache the stage-2 leaf too: later table walks may reuse it.
            tlb.insert((STAGE2, s2.vmid, NO_ASID), ipa,
                       TlbEntry(r.page_base, r.page_size, r.oa_base, s2perms, True))
        size = min(size, r.page_size)
        pa = r.oa
        entry = TlbEntry(iova & -size, size, (pa - (iova & (size - 1))) & -size,
                         perms & s2perms, user)
        return tlb.insert((tag[0], tag[1], GLOBAL_ASID) if is_global else tag, iova, entry)

    def s2_walk(self, s2: S2Context, ipa: int, waccess: Access, input_addr: int) -> WalkResult:
        """The stage-2 walk of a data access (class IN)."""
        r = walk(s2.fmt, self.read_u64, s2.ttb, ipa, access=waccess, privileged=True)
        if self.tracer.enabled:
            self._trace("walk S2", f"vmid {s2.vmid} ipa {ipa:#x}: "
                        + (f"fault {r.reason}" if isinstance(r, WalkFault)
                           else f"-> {r.oa:#x}"))
        if isinstance(r, WalkFault):
            raise SmmuEvent(_FAULT_IDS[r.reason], f"stage 2 on IPA {ipa:#x} ({r.reason})",
                            addr=input_addr, ipa=ipa, s2=True, cls=EVTQ_1_CLASS_IN,
                            level=r.level, record=s2.record, stall=s2.stall)
        return r

    def _s1_walk(self, ste: DecodedSte, cd: DecodedCd, iova: int, access: int,
                 waccess: Access) -> tuple[int, int, int, bool, bool]:
        if cd.fmt is None:
            raise SmmuEvent(EVT_ID_TRANSLATION_FAULT, "TTB0 walks disabled (EPD0)", addr=iova,
                            cls=EVTQ_1_CLASS_IN, record=cd.record, stall=cd.stall)
        s2 = ste.s2ctx
        update = cd.ha or cd.hd
        xlate: Callable[[int], int] | None = None
        writer: Callable[[int, int], None] | None = self.mem.write_u64 if update else None
        if s2 is not None and not update:
            # Nested: every table address is an IPA.
            def xlate(a: int) -> int:
                return self.s2_xlate(s2, a, EVTQ_1_CLASS_TT, iova)
        elif s2 is not None:
            # ... and an A/D update of a descriptor is a write through stage 2 (the
            # table's PA page -> its IPA page).
            ipa_of: dict[int, int] = {}
            mem_write = self.mem.write_u64

            def xlate(a: int) -> int:
                pa = self.s2_xlate(s2, a, EVTQ_1_CLASS_TT, iova)
                ipa_of[pa >> 12] = a & -PAGE
                return pa

            def write_through_s2(pa: int, val: int) -> None:
                self.s2_desc_write(s2, ipa_of[pa >> 12] | (pa & (PAGE - 1)), iova)
                mem_write(pa, val)

            writer = write_through_s2
        r = walk(cd.fmt, self.read_u64, cd.ttb0, iova, access=waccess,
                 privileged=bool(access & ACCESS_PRIV), set_accessed=cd.ha,
                 set_dirty=cd.hd, write_u64=writer, table_xlate=xlate)
        if self.tracer.enabled:
            self._trace("walk S1", f"asid {cd.asid} iova {iova:#x}: "
                        + (f"fault {r.reason}" if isinstance(r, WalkFault)
                           else f"-> {r.oa:#x}"))
        if isinstance(r, WalkFault):
            raise SmmuEvent(_FAULT_IDS[r.reason], f"stage 1 on {iova:#x} ({r.reason})",
                            addr=iova, cls=EVTQ_1_CLASS_IN, level=r.level, record=cd.record,
                            stall=cd.stall)
        return (r.oa, r.page_size, _perms(r.readable, r.writable, r.executable), r.user,
                not r.desc & _NG)


__all__ = ["EVT_ABORT", "Translator", "perm_ok", "walk_access"]

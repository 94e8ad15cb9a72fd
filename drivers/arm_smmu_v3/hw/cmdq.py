"""The command queue consumer: every opcode of smmuv3.md §8 as the SMMU executes it.

``execute`` returns a CERROR code: 0 for success, CERROR_ILL for a command the SMMU
cannot execute: an unknown opcode, a command for a feature it does not implement, a
Reserved field value, or a bit set outside the fields the command defines for this
implementation (RES0 fields, SSec on the Non-secure queue (spec 4.1.6), substream fields
without substreams, the upper ASID/VMID bits of 8-bit ASIDs/VMIDs, range fields without
RIL). The architecture leaves a non-zero RES0 field CONSTRAINED UNPREDICTABLE; this
model takes the strict choice, so software that sets one sees CERROR_ILL.

Each command invalidates exactly what it names, through the indexed caches of
:mod:`~drivers.arm_smmu_v3.hw.tlb`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.tlb import EL2_VMID, GLOBAL_ASID, NESTED, NO_ASID, STAGE1, STAGE2
from drivers.arm_smmu_v3.regs import (
    ATC_INV_SIZE_ALL,
    CMDQ_0_OP,
    CMDQ_0_SSV,
    CMDQ_ATC_0_GLOBAL,
    CMDQ_ATC_0_SID,
    CMDQ_ATC_0_SSID,
    CMDQ_ATC_1_ADDR_MASK,
    CMDQ_ATC_1_SIZE,
    CMDQ_CFGI_0_SID,
    CMDQ_CFGI_0_SSID,
    CMDQ_CFGI_1_LEAF,
    CMDQ_CFGI_1_RANGE,
    CMDQ_ERR_CERROR_ILL_IDX,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_ALL,
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_CFGI_CD_ALL,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_NAMES,
    CMDQ_OP_PREFETCH_CFG,
    CMDQ_OP_PRI_RESP,
    CMDQ_OP_RESUME,
    CMDQ_OP_TLBI_EL2_ALL,
    CMDQ_OP_TLBI_EL2_ASID,
    CMDQ_OP_TLBI_EL2_VA,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_NH_VAA,
    CMDQ_OP_TLBI_NSNH_ALL,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
    CMDQ_PREFETCH_0_SID,
    CMDQ_PRI_0_SID,
    CMDQ_PRI_0_SSID,
    CMDQ_PRI_1_GRPID,
    CMDQ_PRI_1_RESP,
    CMDQ_RESUME_0_RESP,
    CMDQ_RESUME_0_SID,
    CMDQ_RESUME_1_STAG,
    CMDQ_SYNC_0_CS,
    CMDQ_SYNC_0_CS_IRQ,
    CMDQ_SYNC_0_MSH,
    CMDQ_SYNC_0_MSIATTR,
    CMDQ_SYNC_0_MSIDATA,
    CMDQ_SYNC_1_MSIADDR_MASK,
    CMDQ_TLBI_0_ASID,
    CMDQ_TLBI_0_NUM,
    CMDQ_TLBI_0_SCALE,
    CMDQ_TLBI_0_VMID,
    CMDQ_TLBI_1_IPA_MASK,
    CMDQ_TLBI_1_LEAF,
    CMDQ_TLBI_1_TG,
    CMDQ_TLBI_1_TTL,
    CMDQ_TLBI_1_VA_MASK,
    FIELD_GET,
    FIELD_PREP,
    IDR0_STALL_MODEL_NONE,
)

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware

ILL = CMDQ_ERR_CERROR_ILL_IDX
_TG_SHIFT = {1: 12, 2: 14, 3: 16}
_ALL = 1 << 64
_RANGE_0 = CMDQ_TLBI_0_NUM | CMDQ_TLBI_0_SCALE
_RANGE_1 = CMDQ_TLBI_1_TG | CMDQ_TLBI_1_TTL


def command_fields(cfg: SmmuHwConfig) -> dict[int, tuple[int, int]]:
    """Per opcode, the bits of each qword the command defines on this implementation's
    Non-secure queue; anything else is RES0 (or SSec) and CERROR_ILL."""
    ssid = cfg.ssidsize > 0
    asid = FIELD_PREP(CMDQ_TLBI_0_ASID, (1 << (16 if cfg.asid16 else 8)) - 1)
    vmid = FIELD_PREP(CMDQ_TLBI_0_VMID, (1 << (16 if cfg.vmid16 else 8)) - 1)
    rng0, rng1 = (_RANGE_0, _RANGE_1) if cfg.ril else (0, 0)
    sub = CMDQ_0_SSV | CMDQ_CFGI_0_SSID if ssid else 0
    va1 = CMDQ_TLBI_1_LEAF | rng1 | CMDQ_TLBI_1_VA_MASK
    op = CMDQ_0_OP
    return {
        CMDQ_OP_PREFETCH_CFG: (op | sub | CMDQ_PREFETCH_0_SID, 0),
        CMDQ_OP_CFGI_STE: (op | CMDQ_CFGI_0_SID, CMDQ_CFGI_1_LEAF),
        CMDQ_OP_CFGI_ALL: (op | CMDQ_CFGI_0_SID, CMDQ_CFGI_1_RANGE),
        CMDQ_OP_CFGI_CD: (op | (CMDQ_CFGI_0_SSID if ssid else 0) | CMDQ_CFGI_0_SID,
                          CMDQ_CFGI_1_LEAF),
        CMDQ_OP_CFGI_CD_ALL: (op | CMDQ_CFGI_0_SID, 0),
        CMDQ_OP_TLBI_NH_ALL: (op | vmid, 0),
        CMDQ_OP_TLBI_NH_ASID: (op | vmid | asid, 0),
        CMDQ_OP_TLBI_NH_VA: (op | rng0 | vmid | asid, va1),
        CMDQ_OP_TLBI_NH_VAA: (op | rng0 | vmid, va1),
        CMDQ_OP_TLBI_EL2_ALL: (op, 0),
        CMDQ_OP_TLBI_EL2_ASID: (op | asid, 0),
        CMDQ_OP_TLBI_EL2_VA: (op | rng0 | asid, va1),
        CMDQ_OP_TLBI_S12_VMALL: (op | vmid, 0),
        CMDQ_OP_TLBI_S2_IPA: (op | rng0 | vmid, CMDQ_TLBI_1_LEAF | rng1 | CMDQ_TLBI_1_IPA_MASK),
        CMDQ_OP_TLBI_NSNH_ALL: (op, 0),
        CMDQ_OP_ATC_INV: (op | (sub | CMDQ_ATC_0_GLOBAL if ssid else 0) | CMDQ_ATC_0_SID,
                          CMDQ_ATC_1_SIZE | CMDQ_ATC_1_ADDR_MASK),
        CMDQ_OP_PRI_RESP: (op | sub | CMDQ_PRI_0_SID, CMDQ_PRI_1_GRPID | CMDQ_PRI_1_RESP),
        CMDQ_OP_RESUME: (op | CMDQ_RESUME_0_RESP | CMDQ_RESUME_0_SID, CMDQ_RESUME_1_STAG),
        CMDQ_OP_CMD_SYNC: (op | CMDQ_SYNC_0_CS | CMDQ_SYNC_0_MSH | CMDQ_SYNC_0_MSIATTR
                           | CMDQ_SYNC_0_MSIDATA, CMDQ_SYNC_1_MSIADDR_MASK),
    }


def range_reserved(q0: int, q1: int) -> bool:
    """The Reserved encodings of the range fields (RIL): NUM/SCALE/TTL with TG=0,
    TTL=0b01 with a 16K granule (needs IDR5.DS, not implemented), and TG!=0 with
    NUM=SCALE=TTL=0."""
    rng = bool(q0 & _RANGE_0)
    ttl = (q1 >> 8) & 3  # CMDQ_TLBI_1_TTL
    tg = (q1 >> 10) & 3  # CMDQ_TLBI_1_TG
    if not tg:
        return rng or bool(ttl)
    if tg == 2 and ttl == 1:
        return True
    return not rng and not ttl


class CommandEngine:
    """Executes one 128-bit command against the model's caches and endpoints."""

    def __init__(self, hw: SmmuV3Hardware) -> None:
        self.hw = hw
        self.cfg = hw.cfg
        self.tlb = hw.tlb
        self.fields = command_fields(hw.cfg)
        self.ops: dict[int, Callable[[int, int, int], int]] = {
            CMDQ_OP_PREFETCH_CFG: self._prefetch_cfg,
            CMDQ_OP_CFGI_STE: self._cfgi_ste,
            CMDQ_OP_CFGI_ALL: self._cfgi_ste_range,
            CMDQ_OP_CFGI_CD: self._cfgi_cd,
            CMDQ_OP_CFGI_CD_ALL: self._cfgi_cd_all,
            CMDQ_OP_TLBI_NH_ALL: self._tlbi_nh_all,
            CMDQ_OP_TLBI_NH_ASID: self._tlbi_nh_asid,
            CMDQ_OP_TLBI_NH_VA: self._tlbi_nh_va,
            CMDQ_OP_TLBI_NH_VAA: self._tlbi_nh_va,
            CMDQ_OP_TLBI_EL2_ALL: self._tlbi_el2_all,
            CMDQ_OP_TLBI_EL2_ASID: self._tlbi_el2_asid,
            CMDQ_OP_TLBI_EL2_VA: self._tlbi_el2_va,
            CMDQ_OP_TLBI_S12_VMALL: self._tlbi_s12_vmall,
            CMDQ_OP_TLBI_S2_IPA: self._tlbi_s2_ipa,
            CMDQ_OP_TLBI_NSNH_ALL: self._tlbi_nsnh_all,
            CMDQ_OP_ATC_INV: self._atc_inv,
            CMDQ_OP_PRI_RESP: self._pri_resp,
            CMDQ_OP_RESUME: self._resume,
            CMDQ_OP_CMD_SYNC: self._cmd_sync,
        }
        #: opcode -> (handler, qword 0 fields, qword 1 fields, name)
        self.table = {op: (fn, *self.fields[op], CMDQ_OP_NAMES[op])
                      for op, fn in self.ops.items()}
        self.tracer = hw.platform.tracer
        #: Per-opcode counts of executed commands (tests and the tour read them).
        self.counts: dict[str, int] = {}

    def execute(self, q0: int, q1: int, slot: int) -> int:
        op = q0 & CMDQ_0_OP
        if self.tracer.enabled:
            self.tracer.event("hw", f"{self.hw.name} CMD_"
                              f"{CMDQ_OP_NAMES.get(op, f'OP_{op:#x}')}", f"{q0:#018x} {q1:#018x}")
        ent = self.table.get(op)
        if ent is None:
            return ILL
        handler, m0, m1, name = ent
        if q0 & ~m0 or q1 & ~m1:
            return ILL
        err = handler(q0, q1, slot)
        if not err:
            counts = self.counts
            counts[name] = counts.get(name, 0) + 1
        return err

    # -- configuration ---------------------------------------------------------------------
    def _prefetch_cfg(self, q0: int, q1: int, slot: int) -> int:
        self.hw.xlate.prefetch(FIELD_GET(CMDQ_PREFETCH_0_SID, q0))
        return 0

    def _cfgi_ste(self, q0: int, q1: int, slot: int) -> int:
        # Leaf only narrows which L1 stream table descriptors go; they are not cached.
        sid = FIELD_GET(CMDQ_CFGI_0_SID, q0)
        self.hw.ccache.inv_ste(sid)
        self.hw.fast.drop_sid(sid)
        return 0

    def _cfgi_ste_range(self, q0: int, q1: int, slot: int) -> int:
        rng = FIELD_GET(CMDQ_CFGI_1_RANGE, q1)
        if rng == 31:  # CMD_CFGI_ALL
            self.hw.ccache.clear()
            self.hw.fast.clear()
            return 0
        span = 1 << (rng + 1)
        first = FIELD_GET(CMDQ_CFGI_0_SID, q0) & ~(span - 1)
        self.hw.ccache.inv_ste_range(first, first + span - 1)
        self.hw.fast.drop_sids(first, first + span - 1)
        return 0

    def _cfgi_cd(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        sid = FIELD_GET(CMDQ_CFGI_0_SID, q0)
        ssid = FIELD_GET(CMDQ_CFGI_0_SSID, q0)
        leaf = bool(q1 & CMDQ_CFGI_1_LEAF)
        self.hw.ccache.inv_cd(sid, ssid, leaf)
        fast = self.hw.fast
        if not leaf:
            fast.drop_sid(sid)  # the L1CDs went: any SSID's translation may change
            return 0
        fast.drop_ctx(sid, ssid)
        if ssid == 0:
            fast.drop_ctx(sid, None)  # CD 0 also serves substream-less traffic
        return 0

    def _cfgi_cd_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        sid = FIELD_GET(CMDQ_CFGI_0_SID, q0)
        self.hw.ccache.inv_cd_all(sid)
        self.hw.fast.drop_sid(sid)
        return 0

    # -- TLB -------------------------------------------------------------------------------
    def _vmid(self, q0: int) -> int:
        return FIELD_GET(CMDQ_TLBI_0_VMID, q0)

    def _asid(self, q0: int) -> int:
        return FIELD_GET(CMDQ_TLBI_0_ASID, q0)

    def _range(self, q0: int, q1: int, addr: int) -> tuple[int, int] | None:
        """[start, end) of a TLBI by address: one address, or (NUM+1) << SCALE granules;
        None for a Reserved range encoding."""
        if not self.cfg.ril:
            return addr, addr + 1
        if range_reserved(q0, q1):
            return None
        tg = (q1 >> 10) & 3  # CMDQ_TLBI_1_TG
        if tg == 0:
            return addr, addr + 1
        num = ((q0 >> 12) & 0x1F) + 1  # CMDQ_TLBI_0_NUM
        scale = (q0 >> 20) & 0x1F  # CMDQ_TLBI_0_SCALE
        return addr, addr + (num << (scale + _TG_SHIFT[tg]))

    def _tlbi_nh_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        tlb = self.tlb
        tlb.invalidate_tags(t for t in tlb.tags_of(self._vmid(q0)) if t[0] & STAGE1)
        return 0

    def _tlbi_nh_asid(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        vmid, asid = self._vmid(q0), self._asid(q0)
        self.tlb.invalidate_tags([(STAGE1, vmid, asid), (NESTED, vmid, asid)])
        return 0

    def _tlbi_nh_va(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        rng = self._range(q0, q1, q1 & CMDQ_TLBI_1_VA_MASK)
        if rng is None:
            return ILL
        vmid = self._vmid(q0)
        tlb = self.tlb
        if q0 & CMDQ_0_OP == CMDQ_OP_TLBI_NH_VAA:
            tags = [t for t in tlb.tags_of(vmid) if t[0] & STAGE1]
        else:
            asid = self._asid(q0)
            tags = [(s, vmid, a) for s in (STAGE1, NESTED) for a in (asid, GLOBAL_ASID)]
        tlb.invalidate_tags(tags, *rng)
        return 0

    def _tlbi_el2_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        self.tlb.invalidate_tags(self.tlb.tags_of(EL2_VMID))
        return 0

    def _tlbi_el2_asid(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        self.tlb.invalidate_tags([(STAGE1, EL2_VMID, self._asid(q0))])
        return 0

    def _tlbi_el2_va(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        rng = self._range(q0, q1, q1 & CMDQ_TLBI_1_VA_MASK)
        if rng is None:
            return ILL
        asid = self._asid(q0)
        self.tlb.invalidate_tags([(STAGE1, EL2_VMID, asid), (STAGE1, EL2_VMID, GLOBAL_ASID)],
                                 *rng)
        return 0

    def _tlbi_s12_vmall(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s2p:
            return ILL
        self.tlb.invalidate_tags(self.tlb.tags_of(self._vmid(q0)))
        return 0

    def _tlbi_s2_ipa(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s2p:
            return ILL
        rng = self._range(q0, q1, q1 & CMDQ_TLBI_1_IPA_MASK)
        if rng is None:
            return ILL
        # Only stage-2 entries: combined stage 1+2 entries need TLBI_NH_* / S12_VMALL.
        self.tlb.invalidate_tags([(STAGE2, self._vmid(q0), NO_ASID)], *rng)
        return 0

    def _tlbi_nsnh_all(self, q0: int, q1: int, slot: int) -> int:
        tlb = self.tlb
        tlb.invalidate_tags([t for t in tlb.tags if t[1] != EL2_VMID])
        return 0

    # -- ATS / PRI / stall -----------------------------------------------------------------
    def _atc_inv(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.ats:
            return ILL
        size = FIELD_GET(CMDQ_ATC_1_SIZE, q1)
        if size > ATC_INV_SIZE_ALL:
            return ILL
        sid = FIELD_GET(CMDQ_ATC_0_SID, q0)
        ssid: int | None
        if q0 & CMDQ_ATC_0_GLOBAL or not q0 & CMDQ_0_SSV:
            ssid = None  # without a PASID the invalidation covers every PASID too
        else:
            ssid = FIELD_GET(CMDQ_ATC_0_SSID, q0)
        if size == ATC_INV_SIZE_ALL:
            start, end = 0, _ALL
        else:
            span = 1 << (size + 12)
            start = (q1 & CMDQ_ATC_1_ADDR_MASK) & ~(span - 1)
            end = start + span
        self.hw.atc.invalidate(sid, ssid, start, end)
        return 0

    def _pri_resp(self, q0: int, q1: int, slot: int) -> int:
        if not (self.cfg.ats and self.cfg.pri):
            return ILL
        resp = FIELD_GET(CMDQ_PRI_1_RESP, q1)
        if resp == 3:
            return ILL
        sid = FIELD_GET(CMDQ_PRI_0_SID, q0)
        ssid = FIELD_GET(CMDQ_PRI_0_SSID, q0) if q0 & CMDQ_0_SSV else None
        self.hw.prg_response(sid, ssid, FIELD_GET(CMDQ_PRI_1_GRPID, q1), resp)
        return 0

    def _resume(self, q0: int, q1: int, slot: int) -> int:
        if self.cfg.stall_model == IDR0_STALL_MODEL_NONE:
            return ILL
        resp = FIELD_GET(CMDQ_RESUME_0_RESP, q0)
        if resp == 3:
            return ILL
        self.hw.resume(FIELD_GET(CMDQ_RESUME_0_SID, q0), FIELD_GET(CMDQ_RESUME_1_STAG, q1),
                       resp)
        return 0

    def _cmd_sync(self, q0: int, q1: int, slot: int) -> int:
        cs = (q0 >> 12) & 3  # CMDQ_SYNC_0_CS
        if cs == 3:
            return ILL
        if cs == CMDQ_SYNC_0_CS_IRQ and self.cfg.msi:
            # Completion signalled by an MSI write of MSIDATA to MSIADDR.
            self.hw.platform.mem.write_u32(q1 & CMDQ_SYNC_1_MSIADDR_MASK, q0 >> 32)
        return 0


__all__ = ["ILL", "CommandEngine", "command_fields", "range_reserved"]

"""The command queue consumer: every opcode of smmuv3.md §8 as the SMMU executes it.

``execute`` returns a CERROR code: 0 for success, CERROR_ILL for a command the SMMU
cannot execute (unknown opcode, a feature it does not implement, a reserved encoding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.hw.tlb import EL2_VMID, GLOBAL_ASID, STAGE2, Tag
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
    CMDQ_SYNC_0_MSIDATA,
    CMDQ_SYNC_1_MSIADDR_MASK,
    CMDQ_TLBI_0_ASID,
    CMDQ_TLBI_0_NUM,
    CMDQ_TLBI_0_SCALE,
    CMDQ_TLBI_0_VMID,
    CMDQ_TLBI_1_IPA_MASK,
    CMDQ_TLBI_1_TG,
    CMDQ_TLBI_1_VA_MASK,
    FIELD_GET,
    IDR0_STALL_MODEL_NONE,
)

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware

ILL = CMDQ_ERR_CERROR_ILL_IDX
_TG_SHIFT = {1: 12, 2: 14, 3: 16}
_ALL = 1 << 64


class CommandEngine:
    """Executes one 128-bit command against the model's caches and endpoints."""

    def __init__(self, hw: SmmuV3Hardware) -> None:
        self.hw = hw
        self.cfg = hw.cfg
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
        #: Per-opcode counts of executed commands (tests and the tour read them).
        self.counts: dict[str, int] = {}

    def execute(self, q0: int, q1: int, slot: int) -> int:
        op = q0 & CMDQ_0_OP
        handler = self.ops.get(op)
        name = CMDQ_OP_NAMES.get(op, f"OP_{op:#x}")
        tracer = self.hw.platform.tracer
        if tracer.enabled:
            tracer.event("hw", f"{self.hw.name} CMD_{name}", f"{q0:#018x} {q1:#018x}")
        if handler is None:
            return ILL
        err = handler(q0, q1, slot)
        if not err:
            self.counts[name] = self.counts.get(name, 0) + 1
            if op not in (CMDQ_OP_CMD_SYNC, CMDQ_OP_PREFETCH_CFG, CMDQ_OP_PRI_RESP,
                          CMDQ_OP_RESUME):
                self.hw.fast_flush()
        return err

    # -- configuration ---------------------------------------------------------------------
    def _prefetch_cfg(self, q0: int, q1: int, slot: int) -> int:
        self.hw.xlate.prefetch(FIELD_GET(CMDQ_PREFETCH_0_SID, q0))
        return 0

    def _cfgi_ste(self, q0: int, q1: int, slot: int) -> int:
        # Leaf only narrows which L1 stream table descriptors go; they are not cached.
        self.hw.ccache.inv_ste(FIELD_GET(CMDQ_CFGI_0_SID, q0))
        return 0

    def _cfgi_ste_range(self, q0: int, q1: int, slot: int) -> int:
        rng = FIELD_GET(CMDQ_CFGI_1_RANGE, q1)
        if rng == 31:  # CMD_CFGI_ALL
            self.hw.ccache.clear()
            return 0
        span = 1 << (rng + 1)
        first = FIELD_GET(CMDQ_CFGI_0_SID, q0) & ~(span - 1)
        self.hw.ccache.inv_ste_range(first, first + span - 1)
        return 0

    def _cfgi_cd(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        sid = FIELD_GET(CMDQ_CFGI_0_SID, q0)
        ssid = FIELD_GET(CMDQ_CFGI_0_SSID, q0)
        leaf = bool(q1 & CMDQ_CFGI_1_LEAF)
        cc = self.hw.ccache
        cc.inv_cd(sid, ssid, leaf, None)
        if not leaf:
            cc.l1cd.pop(sid, None)  # over-invalidation of L1CDs is permitted
        return 0

    def _cfgi_cd_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        self.hw.ccache.inv_cd_all(FIELD_GET(CMDQ_CFGI_0_SID, q0))
        return 0

    # -- TLB ---------------------------------------------------------------------------------
    def _vmid(self, q0: int) -> int:
        vmid = FIELD_GET(CMDQ_TLBI_0_VMID, q0)
        return vmid if self.cfg.vmid16 else vmid & 0xFF

    def _asid(self, q0: int) -> int:
        asid = FIELD_GET(CMDQ_TLBI_0_ASID, q0)
        return asid if self.cfg.asid16 else asid & 0xFF

    def _range(self, q0: int, q1: int, addr: int) -> tuple[int, int]:
        """[start, end) of a range TLBI: one address, or (NUM+1) << SCALE granules."""
        tg = FIELD_GET(CMDQ_TLBI_1_TG, q1) if self.cfg.ril else 0
        if tg == 0:
            return addr, addr + 1
        shift = _TG_SHIFT[tg]
        num = FIELD_GET(CMDQ_TLBI_0_NUM, q0) + 1
        scale = FIELD_GET(CMDQ_TLBI_0_SCALE, q0)
        return addr, addr + (num << (scale + shift))

    def _tlbi_nh_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        vmid = self._vmid(q0)
        self.hw.tlb.invalidate(lambda t: bool(t[0] & 1) and t[1] == vmid)
        return 0

    def _tlbi_nh_asid(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        vmid, asid = self._vmid(q0), self._asid(q0)
        self.hw.tlb.invalidate(lambda t: bool(t[0] & 1) and t[1] == vmid and t[2] == asid)
        return 0

    def _tlbi_nh_va(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s1p:
            return ILL
        vmid = self._vmid(q0)
        start, end = self._range(q0, q1, q1 & CMDQ_TLBI_1_VA_MASK)
        match: Callable[[Tag], bool]
        if q0 & CMDQ_0_OP == CMDQ_OP_TLBI_NH_VAA:
            match = lambda t: bool(t[0] & 1) and t[1] == vmid  # noqa: E731
        else:
            asid = self._asid(q0)
            match = lambda t: (bool(t[0] & 1) and t[1] == vmid  # noqa: E731
                               and t[2] in (asid, GLOBAL_ASID))
        self.hw.tlb.invalidate(match, start, end)
        return 0

    def _tlbi_el2_all(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        self.hw.tlb.invalidate(lambda t: t[1] == EL2_VMID)
        return 0

    def _tlbi_el2_asid(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        asid = self._asid(q0)
        self.hw.tlb.invalidate(lambda t: t[1] == EL2_VMID and t[2] == asid)
        return 0

    def _tlbi_el2_va(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.hyp:
            return ILL
        asid = self._asid(q0)
        start, end = self._range(q0, q1, q1 & CMDQ_TLBI_1_VA_MASK)
        self.hw.tlb.invalidate(lambda t: t[1] == EL2_VMID and t[2] in (asid, GLOBAL_ASID),
                               start, end)
        return 0

    def _tlbi_s12_vmall(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s2p:
            return ILL
        vmid = self._vmid(q0)
        self.hw.tlb.invalidate(lambda t: t[1] == vmid)
        return 0

    def _tlbi_s2_ipa(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.s2p:
            return ILL
        vmid = self._vmid(q0)
        start, end = self._range(q0, q1, q1 & CMDQ_TLBI_1_IPA_MASK)
        # Only stage-2 entries: combined stage 1+2 entries need TLBI_NH_* / S12_VMALL.
        self.hw.tlb.invalidate(lambda t: t[0] == STAGE2 and t[1] == vmid, start, end)
        return 0

    def _tlbi_nsnh_all(self, q0: int, q1: int, slot: int) -> int:
        self.hw.tlb.invalidate(lambda t: t[1] != EL2_VMID)
        return 0

    # -- ATS / PRI / stall ---------------------------------------------------------------------
    def _atc_inv(self, q0: int, q1: int, slot: int) -> int:
        if not self.cfg.ats:
            return ILL
        sid = FIELD_GET(CMDQ_ATC_0_SID, q0)
        size = FIELD_GET(CMDQ_ATC_1_SIZE, q1)
        ssid: int | None
        if q0 & CMDQ_ATC_0_GLOBAL or not q0 & CMDQ_0_SSV:
            ssid = None  # without a PASID the invalidation covers every PASID too
        else:
            ssid = FIELD_GET(CMDQ_ATC_0_SSID, q0)
        if size >= ATC_INV_SIZE_ALL:
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
        self.hw.resume(FIELD_GET(CMDQ_RESUME_0_SID, q0), FIELD_GET(CMDQ_RESUME_1_STAG, q1),
                       FIELD_GET(CMDQ_RESUME_0_RESP, q0))
        return 0

    def _cmd_sync(self, q0: int, q1: int, slot: int) -> int:
        cs = FIELD_GET(CMDQ_SYNC_0_CS, q0)
        if cs == 3:
            return ILL
        if cs == CMDQ_SYNC_0_CS_IRQ and self.cfg.msi:
            # Completion signalled by an MSI write of MSIDATA to MSIADDR.
            self.hw.platform.mem.write_u32(q1 & CMDQ_SYNC_1_MSIADDR_MASK,
                                           FIELD_GET(CMDQ_SYNC_0_MSIDATA, q0))
        return 0


__all__ = ["ILL", "CommandEngine"]

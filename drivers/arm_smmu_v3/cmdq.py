"""Commands and the command queue, the driver's side (arm_smmu_cmdq_*).

Commands are frozen values (``struct arm_smmu_cmdq_ent``) encoded by
:func:`arm_smmu_cmdq_build_cmd` into the 128-bit format the SMMU reads from memory.
The queue lives in memory the driver allocated; issuing writes the commands at PROD,
then the PROD register; a CMD_SYNC completes either by the SMMU's MSI write over the
sync command itself (option MSIPOLL) or by CONS moving past it.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_CMDQ_BASE,
    ARM_SMMU_CMDQ_CONS,
    ARM_SMMU_CMDQ_PROD,
    ARM_SMMU_MEMATTR_OIWB,
    ARM_SMMU_OPT_CMDQ_FORCE_SYNC,
    ARM_SMMU_OPT_MSIPOLL,
    ARM_SMMU_SH_ISH,
    CMDQ_0_OP,
    CMDQ_0_SSV,
    CMDQ_ATC_0_GLOBAL,
    CMDQ_ATC_0_SID,
    CMDQ_ATC_0_SSID,
    CMDQ_ATC_1_ADDR_MASK,
    CMDQ_ATC_1_SIZE,
    CMDQ_BATCH_ENTRIES,
    CMDQ_CFGI_0_SID,
    CMDQ_CFGI_0_SSID,
    CMDQ_CFGI_1_LEAF,
    CMDQ_CFGI_1_RANGE,
    CMDQ_CONS_ERR,
    CMDQ_ENT_DWORDS,
    CMDQ_ERR_CERROR_ABT_IDX,
    CMDQ_ERR_CERROR_ATC_INV_IDX,
    CMDQ_ERR_CERROR_ILL_IDX,
    CMDQ_ERR_CERROR_NONE_IDX,
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
    CMDQ_SYNC_0_CS_SEV,
    CMDQ_SYNC_0_MSH,
    CMDQ_SYNC_0_MSIATTR,
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
    PRI_RESP_DENY,
    PRI_RESP_FAIL,
    PRI_RESP_SUCC,
    Q_BASE_ADDR_MASK,
    Q_BASE_LOG2SIZE,
    Q_BASE_RWA,
    U64,
)
from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.device import ArmSmmuDevice

Cmd = tuple[int, int]


@attrs.frozen(kw_only=True)
class CmdqEnt:
    """``struct arm_smmu_cmdq_ent``: an opcode and the fields of its union member."""

    opcode: int
    substream_valid: bool = False
    sid: int = 0
    ssid: int = 0
    leaf: bool = False
    span: int = 0  # cfgi range
    asid: int = 0
    vmid: int = 0
    num: int = 0
    scale: int = 0
    ttl: int = 0
    tg: int = 0
    addr: int = 0
    size: int = 0
    global_: bool = False
    grpid: int = 0
    resp: int = 0
    stag: int = 0
    msiaddr: int = 0

    def __str__(self) -> str:
        return CMDQ_OP_NAMES.get(self.opcode, f"OP_{self.opcode:#x}")


def arm_smmu_cmdq_build_cmd(ent: CmdqEnt) -> Cmd:
    """Encode ``ent``; an unknown opcode is -ENOENT ("ignoring unknown CMDQ opcode")."""
    op = ent.opcode
    q0 = FIELD_PREP(CMDQ_0_OP, op)
    q1 = 0
    if op in (CMDQ_OP_TLBI_EL2_ALL, CMDQ_OP_TLBI_NSNH_ALL):
        pass
    elif op == CMDQ_OP_PREFETCH_CFG:
        q0 |= FIELD_PREP(CMDQ_PREFETCH_0_SID, ent.sid)
    elif op in (CMDQ_OP_CFGI_CD, CMDQ_OP_CFGI_STE):
        if op == CMDQ_OP_CFGI_CD:
            q0 |= FIELD_PREP(CMDQ_CFGI_0_SSID, ent.ssid)
        q0 |= FIELD_PREP(CMDQ_CFGI_0_SID, ent.sid)
        q1 |= FIELD_PREP(CMDQ_CFGI_1_LEAF, int(ent.leaf))
    elif op == CMDQ_OP_CFGI_CD_ALL:
        q0 |= FIELD_PREP(CMDQ_CFGI_0_SID, ent.sid)
    elif op == CMDQ_OP_CFGI_ALL:
        q1 |= FIELD_PREP(CMDQ_CFGI_1_RANGE, 31)  # cover the whole SID range
    elif op in (CMDQ_OP_TLBI_NH_VA, CMDQ_OP_TLBI_EL2_VA):
        if op == CMDQ_OP_TLBI_NH_VA:
            q0 |= FIELD_PREP(CMDQ_TLBI_0_VMID, ent.vmid)
        q0 |= (FIELD_PREP(CMDQ_TLBI_0_NUM, ent.num) | FIELD_PREP(CMDQ_TLBI_0_SCALE, ent.scale)
               | FIELD_PREP(CMDQ_TLBI_0_ASID, ent.asid))
        q1 |= (FIELD_PREP(CMDQ_TLBI_1_LEAF, int(ent.leaf)) | FIELD_PREP(CMDQ_TLBI_1_TTL, ent.ttl)
               | FIELD_PREP(CMDQ_TLBI_1_TG, ent.tg) | (ent.addr & CMDQ_TLBI_1_VA_MASK))
    elif op == CMDQ_OP_TLBI_S2_IPA:
        q0 |= (FIELD_PREP(CMDQ_TLBI_0_NUM, ent.num) | FIELD_PREP(CMDQ_TLBI_0_SCALE, ent.scale)
               | FIELD_PREP(CMDQ_TLBI_0_VMID, ent.vmid))
        q1 |= (FIELD_PREP(CMDQ_TLBI_1_LEAF, int(ent.leaf)) | FIELD_PREP(CMDQ_TLBI_1_TTL, ent.ttl)
               | FIELD_PREP(CMDQ_TLBI_1_TG, ent.tg) | (ent.addr & CMDQ_TLBI_1_IPA_MASK))
    elif op == CMDQ_OP_TLBI_NH_ASID:
        q0 |= FIELD_PREP(CMDQ_TLBI_0_ASID, ent.asid) | FIELD_PREP(CMDQ_TLBI_0_VMID, ent.vmid)
    elif op in (CMDQ_OP_TLBI_NH_ALL, CMDQ_OP_TLBI_S12_VMALL):
        q0 |= FIELD_PREP(CMDQ_TLBI_0_VMID, ent.vmid)
    elif op == CMDQ_OP_TLBI_EL2_ASID:
        q0 |= FIELD_PREP(CMDQ_TLBI_0_ASID, ent.asid)
    elif op == CMDQ_OP_ATC_INV:
        q0 |= (FIELD_PREP(CMDQ_0_SSV, int(ent.substream_valid))
               | FIELD_PREP(CMDQ_ATC_0_GLOBAL, int(ent.global_))
               | FIELD_PREP(CMDQ_ATC_0_SSID, ent.ssid) | FIELD_PREP(CMDQ_ATC_0_SID, ent.sid))
        q1 |= FIELD_PREP(CMDQ_ATC_1_SIZE, ent.size) | (ent.addr & CMDQ_ATC_1_ADDR_MASK)
    elif op == CMDQ_OP_PRI_RESP:
        q0 |= (FIELD_PREP(CMDQ_0_SSV, int(ent.substream_valid))
               | FIELD_PREP(CMDQ_PRI_0_SSID, ent.ssid) | FIELD_PREP(CMDQ_PRI_0_SID, ent.sid))
        q1 |= FIELD_PREP(CMDQ_PRI_1_GRPID, ent.grpid)
        if ent.resp not in (PRI_RESP_DENY, PRI_RESP_FAIL, PRI_RESP_SUCC):
            raise IommuError(errno.EINVAL, f"bad PRI response {ent.resp}")
        q1 |= FIELD_PREP(CMDQ_PRI_1_RESP, ent.resp)
    elif op == CMDQ_OP_RESUME:
        q0 |= FIELD_PREP(CMDQ_RESUME_0_SID, ent.sid) | FIELD_PREP(CMDQ_RESUME_0_RESP, ent.resp)
        q1 |= FIELD_PREP(CMDQ_RESUME_1_STAG, ent.stag)
    elif op == CMDQ_OP_CMD_SYNC:
        if ent.msiaddr:
            q0 |= FIELD_PREP(CMDQ_SYNC_0_CS, CMDQ_SYNC_0_CS_IRQ)
            q1 |= ent.msiaddr & CMDQ_SYNC_1_MSIADDR_MASK
        else:
            q0 |= FIELD_PREP(CMDQ_SYNC_0_CS, CMDQ_SYNC_0_CS_SEV)
        q0 |= (FIELD_PREP(CMDQ_SYNC_0_MSH, ARM_SMMU_SH_ISH)
               | FIELD_PREP(CMDQ_SYNC_0_MSIATTR, ARM_SMMU_MEMATTR_OIWB))
    else:
        raise IommuError(errno.ENOENT, f"ignoring unknown CMDQ opcode {op:#x}")
    return q0 & U64, q1 & U64


CERROR_NAMES = {
    CMDQ_ERR_CERROR_NONE_IDX: "No error",
    CMDQ_ERR_CERROR_ILL_IDX: "Illegal command",
    CMDQ_ERR_CERROR_ABT_IDX: "Abort on command fetch",
    CMDQ_ERR_CERROR_ATC_INV_IDX: "ATC invalidate timeout",
}


class ArmSmmuQueue:
    """A queue's memory and the driver's copy of PROD/CONS (``struct arm_smmu_queue``)."""

    def __init__(self, smmu: ArmSmmuDevice, name: str, ent_dwords: int, max_n_shift: int,
                 prod_off: int, cons_off: int, base_off: int) -> None:
        self.smmu = smmu
        self.name = name
        self.ent_dwords = ent_dwords
        self.max_n_shift = max_n_shift
        self.prod_off, self.cons_off, self.base_off = prod_off, cons_off, base_off
        size = (1 << max_n_shift) * ent_dwords * 8
        self.order = max(0, (size - 1).bit_length() - 12)
        self.base_dma = smmu.alloc.alloc_pages(self.order)
        self.q_base = Q_BASE_RWA | (self.base_dma & Q_BASE_ADDR_MASK) | FIELD_PREP(
            Q_BASE_LOG2SIZE, max_n_shift)
        self.prod = 0
        self.cons = 0

    def free(self) -> None:
        self.smmu.alloc.free_pages(self.base_dma, self.order)

    # index arithmetic (Q_IDX / Q_WRP / Q_OVF)
    def idx(self, v: int) -> int:
        return v & ((1 << self.max_n_shift) - 1)

    def wrp(self, v: int) -> int:
        return v & (1 << self.max_n_shift)

    def inc(self, v: int, n: int = 1) -> int:
        mask = (1 << (self.max_n_shift + 1)) - 1
        return (v & ~mask & 0x7FFF_FFFF) | ((v + n) & mask)

    def slot(self, v: int) -> int:
        return self.base_dma + self.idx(v) * self.ent_dwords * 8

    def space(self) -> int:
        """Free slots given the driver's prod and cons."""
        n = 1 << self.max_n_shift
        if self.wrp(self.prod) == self.wrp(self.cons):
            return n - (self.idx(self.prod) - self.idx(self.cons))
        return self.idx(self.cons) - self.idx(self.prod)

    def consumed(self, prod: int) -> bool:
        """queue_consumed(): has CONS moved past ``prod``?"""
        c = self.cons
        if self.wrp(c) == self.wrp(prod):
            return self.idx(c) > self.idx(prod)
        return self.idx(c) <= self.idx(prod)


class ArmSmmuCmdq(ArmSmmuQueue):
    """The command queue (``struct arm_smmu_cmdq``)."""

    def __init__(self, smmu: ArmSmmuDevice, max_n_shift: int) -> None:
        super().__init__(smmu, "cmdq", CMDQ_ENT_DWORDS, max_n_shift, ARM_SMMU_CMDQ_PROD,
                         ARM_SMMU_CMDQ_CONS, ARM_SMMU_CMDQ_BASE)
        #: What the driver issued (tests and the tour read these).
        self.issued: dict[str, int] = {}
        self.syncs = 0
        self.errors: list[tuple[int, str]] = []

    def _read_cons(self) -> None:
        self.cons = self.smmu.mmio.read32(self.cons_off) & ~CMDQ_CONS_ERR

    def issue_cmdlist(self, cmds: Sequence[Cmd], sync: bool) -> None:
        """``arm_smmu_cmdq_issue_cmdlist``: write the commands (+ a CMD_SYNC) at PROD,
        publish PROD, and wait for the sync."""
        smmu = self.smmu
        mem = smmu.mem
        n = len(cmds) + (1 if sync else 0)
        if n == 0:
            return
        self._read_cons()
        if self.space() < n:
            raise IommuError(errno.ETIMEDOUT, "CMDQ timeout: no space (is the SMMU running?)")
        prod = self.prod
        tracer = smmu.tracer
        for q0, q1 in cmds:
            mem.write_qwords(self.slot(prod), (q0, q1))
            name = CMDQ_OP_NAMES.get(q0 & CMDQ_0_OP, "?")
            self.issued[name] = self.issued.get(name, 0) + 1
            if tracer.enabled:
                tracer.event("driver", f"cmdq {name}", f"{q0:#x} {q1:#x}")
            prod = self.inc(prod)
        sync_prod = prod
        if sync:
            msiaddr = self.slot(prod) if smmu.options & ARM_SMMU_OPT_MSIPOLL else 0
            q0, q1 = arm_smmu_cmdq_build_cmd(CmdqEnt(opcode=CMDQ_OP_CMD_SYNC, msiaddr=msiaddr))
            mem.write_qwords(self.slot(prod), (q0, q1))
            self.syncs += 1
            if tracer.enabled:
                tracer.event("driver", "cmdq CMD_SYNC", "MSI poll" if msiaddr else "SEV")
            prod = self.inc(prod)
        self.prod = prod
        smmu.mmio.write32(self.prod_off, prod)
        if sync:
            self._poll_sync(sync_prod, msiaddr)

    def _poll_sync(self, sync_prod: int, msiaddr: int) -> None:
        if msiaddr:
            # The SMMU signals completion by writing MSIDATA (0) over the command.
            if self.smmu.mem.read_u32(msiaddr) == 0:
                return
        else:
            self._read_cons()
            if self.consumed(sync_prod):
                return
        raise IommuError(errno.ETIMEDOUT, "CMD_SYNC timeout")

    def issue_cmd(self, ent: CmdqEnt, sync: bool = False) -> None:
        self.issue_cmdlist([arm_smmu_cmdq_build_cmd(ent)], sync)

    def skip_err(self) -> None:
        """``arm_smmu_cmdq_skip_err``: called from the GERROR handler. An illegal command
        is replaced with a CMD_SYNC so the SMMU can resume."""
        cons = self.smmu.mmio.read32(self.cons_off)
        idx = FIELD_GET(CMDQ_CONS_ERR, cons)
        slot = self.slot(cons & ~CMDQ_CONS_ERR)
        bad = (self.smmu.mem.read_u64(slot), self.smmu.mem.read_u64(slot + 8))
        self.errors.append((idx, f"CMDQ error (cons {cons:#010x}): "
                            f"{CERROR_NAMES.get(idx, 'Unknown')} cmd {bad[0]:#x} {bad[1]:#x}"))
        if idx == CMDQ_ERR_CERROR_ATC_INV_IDX:
            return  # the SMMU retries the CMD_SYNC after an ATC invalidation timeout
        if idx == CMDQ_ERR_CERROR_ABT_IDX:
            return  # retry the fetch
        self.smmu.mem.write_qwords(slot, arm_smmu_cmdq_build_cmd(
            CmdqEnt(opcode=CMDQ_OP_CMD_SYNC)))


class CmdqBatch:
    """``struct arm_smmu_cmdq_batch``: up to 64 commands, submitted with one CMD_SYNC."""

    def __init__(self, smmu: ArmSmmuDevice) -> None:
        self.smmu = smmu
        self.cmds: list[Cmd] = []

    def add(self, ent: CmdqEnt) -> None:
        cmdq = self.smmu.cmdq
        force_sync = bool(self.smmu.options & ARM_SMMU_OPT_CMDQ_FORCE_SYNC)
        if len(self.cmds) == CMDQ_BATCH_ENTRIES - 1 and force_sync:
            cmdq.issue_cmdlist(self.cmds, True)
            self.cmds = []
        if len(self.cmds) == CMDQ_BATCH_ENTRIES:
            cmdq.issue_cmdlist(self.cmds, False)
            self.cmds = []
        self.cmds.append(arm_smmu_cmdq_build_cmd(ent))

    def submit(self) -> None:
        self.smmu.cmdq.issue_cmdlist(self.cmds, True)
        self.cmds = []


__all__ = [
    "CMDQ_OP_CFGI_ALL",
    "CMDQ_OP_CFGI_CD",
    "CMDQ_OP_CFGI_CD_ALL",
    "CMDQ_OP_CFGI_STE",
    "CMDQ_OP_PRI_RESP",
    "CMDQ_OP_RESUME",
    "ArmSmmuCmdq",
    "ArmSmmuQueue",
    "Cmd",
    "CmdqBatch",
    "CmdqEnt",
    "arm_smmu_cmdq_build_cmd",
]

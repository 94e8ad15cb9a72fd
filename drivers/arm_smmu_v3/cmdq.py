"""Commands and the command queue, the driver's side (arm_smmu_cmdq_*).

A command is encoded once, by an ``arm_smmu_make_cmd_*`` builder, into the two qwords
(``struct arm_smmu_cmd``) the SMMU reads from memory; batches and the queue copy them
as they are. The queue lives in memory the driver allocated; issuing writes the commands at PROD,
then the PROD register; a CMD_SYNC completes either by the SMMU's MSI write over the
sync command itself (option MSIPOLL) or by CONS moving past it.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_CMDQ_BASE,
    ARM_SMMU_CMDQ_CONS,
    ARM_SMMU_CMDQ_PROD,
    ARM_SMMU_MEMATTR_OIWB,
    ARM_SMMU_OPT_CMDQ_FORCE_SYNC,
    ARM_SMMU_OPT_MSIPOLL,
    ARM_SMMU_SH_ISH,
    ATC_INV_SIZE_ALL,
    CMDQ_0_OP,
    CMDQ_0_SSV,
    CMDQ_ATC_0_SID,
    CMDQ_ATC_0_SSID,
    CMDQ_ATC_1_ADDR_MASK,
    CMDQ_ATC_1_SIZE,
    CMDQ_BATCH_ENTRIES,
    CMDQ_CFGI_0_SID,
    CMDQ_CFGI_0_SSID,
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
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_NAMES,
    CMDQ_OP_PREFETCH_CFG,
    CMDQ_OP_PRI_RESP,
    CMDQ_OP_RESUME,
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
    CMDQ_SYNC_0_CS_NONE,
    CMDQ_SYNC_0_CS_SEV,
    CMDQ_SYNC_0_MSH,
    CMDQ_SYNC_0_MSIATTR,
    CMDQ_SYNC_1_MSIADDR_MASK,
    CMDQ_TLBI_0_ASID,
    CMDQ_TLBI_0_VMID,
    FIELD_GET,
    FIELD_PREP,
    Q_BASE_ADDR_MASK,
    Q_BASE_LOG2SIZE,
    Q_BASE_RWA,
)
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.device import ArmSmmuDevice
    from iommu_core.platform.dma import Mmio

#: ``struct arm_smmu_cmd``: the two encoded qwords, built once and copied into the queue.
Cmd = tuple[int, int]

def arm_smmu_make_cmd_op(op: int) -> Cmd:
    return FIELD_PREP(CMDQ_0_OP, op), 0


def arm_smmu_make_cmd_cfgi_all() -> Cmd:
    return CMDQ_OP_CFGI_ALL, FIELD_PREP(CMDQ_CFGI_1_RANGE, 31)  # the whole SID range


def arm_smmu_make_cmd_prefetch_cfg(sid: int) -> Cmd:
    return CMDQ_OP_PREFETCH_CFG | FIELD_PREP(CMDQ_PREFETCH_0_SID, sid), 0


def arm_smmu_make_cmd_cfgi_ste(sid: int, leaf: bool) -> Cmd:
    return CMDQ_OP_CFGI_STE | FIELD_PREP(CMDQ_CFGI_0_SID, sid), int(leaf)


def arm_smmu_make_cmd_cfgi_cd(sid: int, ssid: int, leaf: bool) -> Cmd:
    return (CMDQ_OP_CFGI_CD | FIELD_PREP(CMDQ_CFGI_0_SID, sid)
            | FIELD_PREP(CMDQ_CFGI_0_SSID, ssid), int(leaf))


def arm_smmu_make_cmd_resume(sid: int, stag: int, resp: int) -> Cmd:
    return (CMDQ_OP_RESUME | FIELD_PREP(CMDQ_RESUME_0_SID, sid)
            | FIELD_PREP(CMDQ_RESUME_0_RESP, resp), FIELD_PREP(CMDQ_RESUME_1_STAG, stag))


def arm_smmu_make_cmd_pri_resp(sid: int, ssid: int, ssv: bool, grpid: int, resp: int) -> Cmd:
    return (CMDQ_OP_PRI_RESP | (CMDQ_0_SSV if ssv else 0) | FIELD_PREP(CMDQ_PRI_0_SID, sid)
            | FIELD_PREP(CMDQ_PRI_0_SSID, ssid),
            FIELD_PREP(CMDQ_PRI_1_GRPID, grpid) | FIELD_PREP(CMDQ_PRI_1_RESP, resp))


def arm_smmu_make_cmd_atc_inv(sid: int, ssid: int, addr: int, size: int) -> Cmd:
    """Without a PASID (``IOMMU_NO_PASID``) SSV is clear."""
    return (CMDQ_OP_ATC_INV | (CMDQ_0_SSV if ssid != IOMMU_NO_PASID else 0)
            | FIELD_PREP(CMDQ_ATC_0_SSID, ssid) | FIELD_PREP(CMDQ_ATC_0_SID, sid),
            FIELD_PREP(CMDQ_ATC_1_SIZE, size) | (addr & CMDQ_ATC_1_ADDR_MASK))


def arm_smmu_make_cmd_atc_inv_all(sid: int, ssid: int) -> Cmd:
    return arm_smmu_make_cmd_atc_inv(sid, ssid, 0, ATC_INV_SIZE_ALL)


def arm_smmu_make_cmd_sync(cs: int, msiaddr: int) -> Cmd:
    return (CMDQ_OP_CMD_SYNC | FIELD_PREP(CMDQ_SYNC_0_CS, cs)
            | FIELD_PREP(CMDQ_SYNC_0_MSH, ARM_SMMU_SH_ISH)
            | FIELD_PREP(CMDQ_SYNC_0_MSIATTR, ARM_SMMU_MEMATTR_OIWB),
            msiaddr & CMDQ_SYNC_1_MSIADDR_MASK)


def arm_smmu_make_cmd_tlbi(op: int, asid: int, vmid: int) -> Cmd:
    """A TLBI: opcode, ASID and VMID; sized variants get their range fields from
    :func:`arm_smmu_cmdq_batch_add_range`."""
    return (op | FIELD_PREP(CMDQ_TLBI_0_ASID, asid) | FIELD_PREP(CMDQ_TLBI_0_VMID, vmid), 0)


_SYNC_NONE_0 = arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_NONE, 0)[0]
_SYNC_IRQ_0 = arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_IRQ, 0)[0]
_SYNC_SEV_0 = arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_SEV, 0)[0]
#: Little-endian packers of 0..130 qwords: a full batch and its CMD_SYNC.
_PACKERS = tuple(struct.Struct(f"<{i}Q") for i in range(2 * (CMDQ_BATCH_ENTRIES + 1) + 1))


def _packer(nwords: int) -> struct.Struct:
    return _PACKERS[nwords] if nwords < len(_PACKERS) else struct.Struct(f"<{nwords}Q")


CERROR_NAMES = {
    CMDQ_ERR_CERROR_NONE_IDX: "No error",
    CMDQ_ERR_CERROR_ILL_IDX: "Illegal command",
    CMDQ_ERR_CERROR_ABT_IDX: "Abort on command fetch",
    CMDQ_ERR_CERROR_ATC_INV_IDX: "ATC invalidate timeout",
}


class ArmSmmuQueue:
    """A queue's memory and the driver's copy of PROD/CONS (``struct arm_smmu_queue``)."""

    def __init__(self, smmu: ArmSmmuDevice, name: str, ent_dwords: int, max_n_shift: int,
                 prod_off: int, cons_off: int, base_off: int, mmio: Mmio | None = None
                 ) -> None:
        self.smmu = smmu
        self.name = name
        #: The register window holding PROD/CONS/BASE (the SMMU's, or an extension's).
        self.mmio: Mmio = mmio if mmio is not None else smmu.mmio
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

    def __init__(self, smmu: ArmSmmuDevice, max_n_shift: int, *, name: str = "cmdq",
                 mmio: Mmio | None = None, prod_off: int = ARM_SMMU_CMDQ_PROD,
                 cons_off: int = ARM_SMMU_CMDQ_CONS, base_off: int = ARM_SMMU_CMDQ_BASE,
                 busy_polling: bool = False) -> None:
        super().__init__(smmu, name, CMDQ_ENT_DWORDS, max_n_shift, prod_off, cons_off,
                         base_off, mmio)
        #: ``arm_smmu_cmdq_needs_busy_polling``: CMD_SYNC with CS=NONE, completion read
        #: from CONS (a queue whose hardware signals no MSI).
        self.busy_polling = busy_polling
        #: ``cmdq->supports_cmd``: None takes every command.
        self.supports_cmd: Callable[[Cmd], bool] | None = None
        #: CMD_SYNCs issued and command errors seen (tests and the tour read these).
        self.syncs = 0
        self.errors: list[tuple[int, str]] = []

    def supports(self, cmd: Cmd) -> bool:
        """``arm_smmu_cmdq_supports_cmd``."""
        return self.supports_cmd is None or self.supports_cmd(cmd)

    def _read_cons(self) -> None:
        self.cons = self.mmio.read32(self.cons_off) & ~CMDQ_CONS_ERR

    def _write_entries(self, prod: int, words: list[int]) -> None:
        """``arm_smmu_cmdq_write_entries``: one copy per contiguous run of slots."""
        write = self.smmu.mem.write
        nwords = len(words)
        idx = prod & ((1 << self.max_n_shift) - 1)
        first = min(nwords, ((1 << self.max_n_shift) - idx) << 1)
        write(self.base_dma + (idx << 4), _packer(first).pack(*words[:first]))
        if first < nwords:  # wrapped
            write(self.base_dma, _packer(nwords - first).pack(*words[first:]))

    def issue_cmdlist(self, cmds: Sequence[Cmd], sync: bool) -> None:
        """``arm_smmu_cmdq_issue_cmdlist``: write the commands (+ a CMD_SYNC) at PROD,
        publish PROD, and wait for the sync. A sync that does not complete is
        ETIMEDOUT."""
        smmu = self.smmu
        n = len(cmds)
        total = n + 1 if sync else n
        if not total:
            return
        shift = self.max_n_shift
        wrap_mask = (2 << shift) - 1
        mmio = self.mmio
        self.cons = cons = mmio.read32(self.cons_off) & ~CMDQ_CONS_ERR
        prod = self.prod
        if (1 << shift) - ((prod - cons) & wrap_mask) < total:
            raise IommuError(errno.ETIMEDOUT, "CMDQ timeout: no space (is the SMMU running?)")
        words = [w for cmd in cmds for w in cmd]
        tracer = smmu.tracer
        if tracer.enabled:
            for q0, q1 in cmds:
                tracer.event("driver", f"{self.name} {CMDQ_OP_NAMES.get(q0 & CMDQ_0_OP, '?')}",
                             f"{q0:#x} {q1:#x}")
        msiaddr = 0
        sync_prod = (prod & ~wrap_mask & 0x7FFF_FFFF) | ((prod + n) & wrap_mask)
        if sync:
            # arm_smmu_cmdq_build_sync_cmd(): busy polling (CS=NONE), MSI-poll on the
            # sync's own slot, else SEV.
            if self.busy_polling:
                words += (_SYNC_NONE_0, 0)
            elif smmu.options & ARM_SMMU_OPT_MSIPOLL:
                msiaddr = self.base_dma + ((sync_prod & ((1 << shift) - 1)) << 4)
                words += (_SYNC_IRQ_0, msiaddr)
            else:
                words += (_SYNC_SEV_0, 0)
            self.syncs += 1
            if tracer.enabled:
                how = "busy poll" if self.busy_polling else "MSI poll" if msiaddr else "SEV"
                tracer.event("driver", f"{self.name} CMD_SYNC", how)
        self._write_entries(prod, words)
        self.prod = prod = (prod & ~wrap_mask & 0x7FFF_FFFF) | ((prod + total) & wrap_mask)
        mmio.write32(self.prod_off, prod)
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

    def issue_cmd(self, cmd: Cmd, sync: bool = False) -> None:
        """``arm_smmu_cmdq_issue_cmd`` / ``_with_sync``."""
        self.issue_cmdlist((cmd,), sync)

    def skip_err(self) -> None:
        """``__arm_smmu_cmdq_skip_err``: called from the GERROR handler. An illegal
        command is logged and replaced with a CMD_SYNC so the SMMU can resume; an
        abort on fetch is retried, an ATC invalidation timeout repeats the CMD_SYNC."""
        cons = self.mmio.read32(self.cons_off)
        idx = FIELD_GET(CMDQ_CONS_ERR, cons)
        self.smmu.log.append(f"CMDQ error (cons {cons:#010x}): "
                             f"{CERROR_NAMES.get(idx, 'Unknown')}")
        if idx in (CMDQ_ERR_CERROR_ABT_IDX, CMDQ_ERR_CERROR_NONE_IDX,
                   CMDQ_ERR_CERROR_ATC_INV_IDX):
            self.errors.append((idx, CERROR_NAMES.get(idx, "Unknown")))
            return
        slot = self.slot(cons & ~CMDQ_CONS_ERR)
        bad = (self.smmu.mem.read_u64(slot), self.smmu.mem.read_u64(slot + 8))
        self.smmu.log.append(f"skipping command in error state: {bad[0]:#018x} {bad[1]:#018x}")
        self.errors.append((idx, f"CMDQ error (cons {cons:#010x}): "
                            f"{CERROR_NAMES.get(idx, 'Unknown')} cmd {bad[0]:#x} {bad[1]:#x}"))
        cs = CMDQ_SYNC_0_CS_NONE if self.busy_polling else CMDQ_SYNC_0_CS_SEV
        self.smmu.mem.write_qwords(slot, arm_smmu_make_cmd_sync(cs, 0))


class CmdqBatch:
    """``struct arm_smmu_cmdq_batch``: up to 64 commands for one queue (the one
    ``arm_smmu_get_cmdq`` picks for the first), submitted with one CMD_SYNC."""

    __slots__ = ("cmdq", "cmds", "force_sync", "smmu")

    def __init__(self, smmu: ArmSmmuDevice) -> None:
        self.smmu = smmu
        self.cmds: list[Cmd] = []
        self.cmdq: ArmSmmuCmdq | None = None
        self.force_sync = bool(smmu.options & ARM_SMMU_OPT_CMDQ_FORCE_SYNC)

    def add_cmd(self, cmd: Cmd) -> None:
        """``arm_smmu_cmdq_batch_add_cmd``: the batch goes out first, with a sync, when
        its queue does not take ``cmd`` (or after 63 commands under erratum 2812531),
        without one when it is full."""
        cmds = self.cmds
        cmdq = self.cmdq
        if cmdq is None:
            cmdq = self.cmdq = self.smmu.get_cmdq(cmd)
        if not cmdq.supports(cmd) or (self.force_sync
                                      and len(cmds) == CMDQ_BATCH_ENTRIES - 1):
            cmdq.issue_cmdlist(cmds, True)
            cmds = self.cmds = []
            cmdq = self.cmdq = self.smmu.get_cmdq(cmd)
        if len(cmds) == CMDQ_BATCH_ENTRIES:
            cmdq.issue_cmdlist(cmds, False)
            cmds = self.cmds = []
            cmdq = self.cmdq = self.smmu.get_cmdq(cmd)
        cmds.append(cmd)

    def submit(self) -> None:
        """``arm_smmu_cmdq_batch_submit``."""
        (self.cmdq or self.smmu.cmdq).issue_cmdlist(self.cmds, True)
        self.cmds = []


__all__ = [
    "ArmSmmuCmdq",
    "ArmSmmuQueue",
    "Cmd",
    "CmdqBatch",
    "arm_smmu_make_cmd_atc_inv",
    "arm_smmu_make_cmd_atc_inv_all",
    "arm_smmu_make_cmd_cfgi_all",
    "arm_smmu_make_cmd_cfgi_cd",
    "arm_smmu_make_cmd_cfgi_ste",
    "arm_smmu_make_cmd_op",
    "arm_smmu_make_cmd_prefetch_cfg",
    "arm_smmu_make_cmd_pri_resp",
    "arm_smmu_make_cmd_resume",
    "arm_smmu_make_cmd_sync",
    "arm_smmu_make_cmd_tlbi",
]

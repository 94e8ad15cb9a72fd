"""The Tegra241 CMDQV hardware model: virtual command queues (VCMDQs) consumed from
memory by the SMMU's own command engine, grouped into virtual interfaces (VINTFs).

* A VCMDQ is a command queue like the SMMU's: BASE (page 1), CONS/PROD, CONFIG.EN and
  STATUS.ENABLED, GERROR/GERRORN (page 0). Writing PROD of an enabled VCMDQ makes the
  CMDQV consume it at once, through the SMMU's :class:`~drivers.arm_smmu_v3.hw.cmdq.
  CommandEngine` (so a command invalidates exactly what it does on the main queue).
* CMDQ_ALLOC maps a global VCMDQ to (VINTF, logical index); a VINTF's pages show its
  logical VCMDQs (LVCMDQs). Only an allocated VCMDQ of an enabled VINTF of an enabled
  CMDQV runs.
* A VINTF owned by the hypervisor (CONFIG.HYP_OWN, the host kernel's VINTF0) may issue
  any command. A guest VINTF (HYP_OWN=0) may issue only TLBI_NH_ASID, TLBI_NH_VA,
  ATC_INV and CMD_SYNC (the set Linux's ``tegra241_guest_vcmdq_supports_cmd`` sends
  there); the hardware puts the VINTF's VMID in every TLBI and replaces an ATC_INV's
  StreamID through the VINTF's SID_MATCH/SID_REPLACE pairs. Any other opcode, or a SID no
  enabled SID_MATCH names, is CERROR_ILL: nothing of it executes.
* A command error stops the VCMDQ with CONS.ERR set and GERROR toggled, sets the
  VCMDQ's bit in CMDQ_ERR_MAP, its logical bit in the VINTF's LVCMDQ_ERR_MAP and the
  VINTF's bit in VINTF_ERR_MAP, and raises the CMDQV interrupt (edge: once per error).
  Writing GERRORN = GERROR acknowledges it and the queue resumes at CONS.
* CMD_SYNC on a VCMDQ completes by CONS moving past it: VCMDQs signal no MSI (Linux
  polls them, ``arm_smmu_cmdq_needs_busy_polling``); an MSI address a guest writes is
  never used.

Choices the public description (the Linux driver) leaves open are this model's, and
the safe ones: an unmatched SID and an unsupported opcode are both CERROR_ILL, a VCMDQ
that no CMDQ_ALLOC maps to an enabled VINTF does not run, and CONS is writable only
while the VCMDQ is disabled.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import attrs

from drivers.arm_smmu_v3.hw.queues import consume_commands
from drivers.arm_smmu_v3.regs import (
    CMDQ_0_OP,
    CMDQ_ATC_0_SID,
    CMDQ_ERR_CERROR_ILL_IDX,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_NAMES,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_SYNC_0_CS,
    CMDQ_TLBI_0_VMID,
    FIELD_GET,
    FIELD_PREP,
)
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    CMDQV_CMDQ_ALLOC_LVCMDQ,
    CMDQV_CMDQ_ALLOC_VINTF,
    CMDQV_CMDQ_ALLOCATED,
    CMDQV_EN,
    CMDQV_NUM_SID_PER_VM_LOG2,
    CMDQV_NUM_VCMDQ_LOG2,
    CMDQV_NUM_VINTF_LOG2,
    CMDQV_VER,
    LVCMDQ_ERR_MAP_NUM_64,
    VCMDQ_ADDR,
    VCMDQ_CONS_ERR,
    VCMDQ_EN,
    VCMDQ_GERROR_CMDQ_ERR,
    VCMDQ_LOG2SIZE,
    VINTF_EN,
    VINTF_HYP_OWN,
    VINTF_MAX_SIDS,
    VINTF_SID_MATCH_ENABLE,
    VINTF_SID_MATCH_VIRT_SID,
    VINTF_VMID,
)
from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware
    from iommu_core.platform.dma import IrqLine

ILL = CMDQ_ERR_CERROR_ILL_IDX
#: What a guest-owned VCMDQ executes (tegra241_guest_vcmdq_supports_cmd, and the CMD_SYNC
#: every batch ends with).
GUEST_OPS = frozenset({CMDQ_OP_TLBI_NH_ASID, CMDQ_OP_TLBI_NH_VA, CMDQ_OP_ATC_INV,
                       CMDQ_OP_CMD_SYNC})
_SYNC_CS_RESERVED = 3
_U32 = 0xFFFF_FFFF
def _count_option(name: str, value: object, lo: int, hi: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi
            or value & (value - 1)):
        raise IommuError(errno.EINVAL, f"tegra241_cmdqv.{name} must be a power of 2 in "
                         f"[{lo}, {hi}], not {value!r}")
    return value.bit_length() - 1


@attrs.frozen(kw_only=True)
class CmdqvConfig:
    """What one CMDQV implements (its PARAM register). NVIDIA does not publish Grace's
    numbers; the defaults are a mid-size implementation: 16 VINTFs, 64 VCMDQs (4 per
    VINTF), 16 StreamID pairs per VINTF."""

    log2_vintfs: int = 4
    log2_vcmdqs: int = 6
    log2_sids: int = 4
    version: int = 1

    @classmethod
    def from_option(cls, value: object) -> CmdqvConfig | None:
        """The Machine option ``tegra241_cmdqv``: false (none), true (the defaults) or a
        table of counts ``{vintfs, vcmdqs, sids_per_vintf}``, each a power of two."""
        if value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise IommuError(errno.EINVAL, f"option tegra241_cmdqv must be a bool or a table, "
                             f"not {value!r}")
        unknown = set(value) - {"vintfs", "vcmdqs", "sids_per_vintf"}
        if unknown:
            raise IommuError(errno.EINVAL, f"tegra241_cmdqv: unknown keys {sorted(unknown)}")
        d = cls()
        vintfs = _count_option("vintfs", value.get("vintfs", 1 << d.log2_vintfs), 1, 64)
        vcmdqs = _count_option("vcmdqs", value.get("vcmdqs", 1 << d.log2_vcmdqs), 1, 128)
        sids = _count_option("sids_per_vintf", value.get("sids_per_vintf", 1 << d.log2_sids),
                             1, VINTF_MAX_SIDS)
        if vcmdqs < vintfs:
            raise IommuError(errno.EINVAL, "tegra241_cmdqv: fewer VCMDQs than VINTFs")
        return cls(log2_vintfs=vintfs, log2_vcmdqs=vcmdqs, log2_sids=sids)

    @property
    def num_vintfs(self) -> int:
        return 1 << self.log2_vintfs

    @property
    def num_vcmdqs(self) -> int:
        return 1 << self.log2_vcmdqs

    @property
    def num_sids(self) -> int:
        return 1 << self.log2_sids

    @property
    def param(self) -> int:
        return (FIELD_PREP(CMDQV_NUM_SID_PER_VM_LOG2, self.log2_sids)
                | FIELD_PREP(CMDQV_NUM_VINTF_LOG2, self.log2_vintfs)
                | FIELD_PREP(CMDQV_NUM_VCMDQ_LOG2, self.log2_vcmdqs)
                | FIELD_PREP(CMDQV_VER, self.version))


class Vcmdq:
    """One global VCMDQ: its registers, and whether it is consuming right now."""

    __slots__ = ("alloc", "base", "busy", "cons", "cons_indx_base", "enabled", "error",
                 "gerror", "gerrorn", "idx", "prod")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        #: CMDQ_ALLOC: VINTF, logical index, ALLOCATED.
        self.alloc = 0
        self.base = 0
        self.cons_indx_base = 0
        self.cons = 0
        self.prod = 0
        self.enabled = False
        self.gerror = 0
        self.gerrorn = 0
        #: CERROR of the command CONS stops at (0: none; kept in CONS.ERR too).
        self.error = 0
        self.busy = False

    @property
    def in_error(self) -> bool:
        return bool((self.gerror ^ self.gerrorn) & VCMDQ_GERROR_CMDQ_ERR)

    @property
    def allocated(self) -> bool:
        return bool(self.alloc & CMDQV_CMDQ_ALLOCATED)

    @property
    def vintf(self) -> int:
        return FIELD_GET(CMDQV_CMDQ_ALLOC_VINTF, self.alloc)

    @property
    def lidx(self) -> int:
        return FIELD_GET(CMDQV_CMDQ_ALLOC_LVCMDQ, self.alloc)


class Vintf:
    """One virtual interface: CONFIG (EN, VMID, HYP_OWN) and its StreamID pairs."""

    __slots__ = ("config", "idx", "sid_match", "sid_replace")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.config = 0
        self.sid_match = [0] * VINTF_MAX_SIDS
        self.sid_replace = [0] * VINTF_MAX_SIDS

    @property
    def enabled(self) -> bool:
        return bool(self.config & VINTF_EN)

    @property
    def hyp_own(self) -> bool:
        return bool(self.config & VINTF_HYP_OWN)

    @property
    def vmid(self) -> int:
        return FIELD_GET(VINTF_VMID, self.config)

    def replace_sid(self, vsid: int, nsids: int) -> int | None:
        """The physical StreamID an enabled SID_MATCH pair gives ``vsid``, if any."""
        want = FIELD_PREP(VINTF_SID_MATCH_VIRT_SID, vsid) | VINTF_SID_MATCH_ENABLE
        if vsid > FIELD_GET(VINTF_SID_MATCH_VIRT_SID, VINTF_SID_MATCH_VIRT_SID):
            return None
        for s in range(nsids):
            if self.sid_match[s] == want:
                return self.sid_replace[s]
        return None


class Tegra241CmdqvHw:
    """The CMDQV beside one SMMU. The register window (:mod:`~drivers.arm_smmu_v3.hw.
    cmdqv_regs`) calls the ``write_*`` methods; nothing here calls a driver."""

    def __init__(self, smmu: SmmuV3Hardware, cfg: CmdqvConfig, irq: IrqLine) -> None:
        self.smmu = smmu
        self.cfg = cfg
        self.irq = irq
        self.mem = smmu.platform.mem
        self.tracer = smmu.platform.tracer
        self.config = 0
        self.vintf_int_mask = 0
        self.vintfs = [Vintf(i) for i in range(cfg.num_vintfs)]
        self.vcmdqs = [Vcmdq(q) for q in range(cfg.num_vcmdqs)]
        #: (VINTF, logical index) -> global VCMDQ, for the allocated ones.
        self._lmap: dict[tuple[int, int], Vcmdq] = {}
        #: Commands executed and refused, per VCMDQ (tests and the tour read these).
        self.executed = [0] * cfg.num_vcmdqs
        self.refused = [0] * cfg.num_vcmdqs

    @property
    def enabled(self) -> bool:
        return bool(self.config & CMDQV_EN)

    # -- mapping -----------------------------------------------------------------------------
    def lvcmdq(self, vintf: int, lidx: int) -> Vcmdq | None:
        """The VCMDQ a VINTF page shows at logical index ``lidx`` (None: RAZ/WI)."""
        return self._lmap.get((vintf, lidx))

    def lvcmdqs(self) -> list[tuple[int, int]]:
        """Every (VINTF, logical index) an allocated VCMDQ backs."""
        return list(self._lmap)

    def write_cmdq_alloc(self, q: int, value: int) -> None:
        vq = self.vcmdqs[q]
        vq.alloc = value & (CMDQV_CMDQ_ALLOC_VINTF | CMDQV_CMDQ_ALLOC_LVCMDQ
                            | CMDQV_CMDQ_ALLOCATED)
        lmap: dict[tuple[int, int], Vcmdq] = {}
        for other in self.vcmdqs:
            if other.allocated and other.vintf < self.cfg.num_vintfs:
                lmap.setdefault((other.vintf, other.lidx), other)
        self._lmap = lmap
        self.consume(vq)

    def owner(self, vq: Vcmdq) -> Vintf | None:
        """The VINTF ``vq`` works for, when it is allocated to one."""
        if not vq.allocated or vq.vintf >= self.cfg.num_vintfs:
            return None
        return self.vintfs[vq.vintf]

    # -- configuration -------------------------------------------------------------------------
    def write_config(self, value: int) -> None:
        was = self.enabled
        self.config = value & CMDQV_EN
        if self.enabled and not was:
            for vq in self.vcmdqs:
                self.consume(vq)

    def write_vintf_config(self, v: int, value: int) -> None:
        vintf = self.vintfs[v]
        was = vintf.enabled
        vintf.config = value & (VINTF_HYP_OWN | VINTF_VMID | VINTF_EN)
        if vintf.enabled and not was:
            for vq in self._lmap.values():
                if vq.vintf == v:
                    self.consume(vq)

    def write_vcmdq_config(self, vq: Vcmdq, value: int) -> None:
        was = vq.enabled
        vq.enabled = bool(value & VCMDQ_EN)
        if vq.enabled and not was:
            self.consume(vq)

    def write_prod(self, vq: Vcmdq, value: int) -> None:
        vq.prod = value & _U32
        self.consume(vq)

    def write_cons(self, vq: Vcmdq, value: int) -> None:
        # Software owns CONS only while the queue is off.
        if not vq.enabled:
            vq.cons = value & ~VCMDQ_CONS_ERR & _U32

    def write_gerrorn(self, vq: Vcmdq, value: int) -> None:
        active = vq.in_error
        vq.gerrorn = value & _U32
        if active and not vq.in_error:
            # Acknowledged: software fixed or replaced the command at CONS.
            vq.error = 0
            self.consume(vq)

    # -- error maps ----------------------------------------------------------------------------
    def lvcmdq_err_map(self, v: int) -> int:
        """128 bits: logical VCMDQ l of VINTF ``v`` is in error."""
        out = 0
        for (vi, lidx), vq in self._lmap.items():
            if vi == v and vq.in_error and lidx < 64 * LVCMDQ_ERR_MAP_NUM_64:
                out |= 1 << lidx
        return out

    def cmdq_err_map(self) -> int:
        out = 0
        for vq in self.vcmdqs:
            if vq.in_error:
                out |= 1 << vq.idx
        return out

    def vintf_err_map(self) -> int:
        out = 0
        for (vi, _l), vq in self._lmap.items():
            if vq.in_error:
                out |= 1 << vi
        return out

    # -- the consumer ----------------------------------------------------------------------------
    def _log2size(self, vq: Vcmdq) -> int:
        # A LOG2SIZE above the SMMU's IDR1.CMDQS is treated as that maximum.
        return min(vq.base & VCMDQ_LOG2SIZE, self.smmu.cfg.cmdqs)

    def consume(self, vq: Vcmdq) -> None:
        """Execute ``vq`` from CONS to PROD; stop at the first error."""
        vintf = self.owner(vq)
        if (vq.busy or vq.in_error or not vq.enabled or vintf is None or not vintf.enabled
                or not self.enabled):
            return
        vq.busy = True
        try:
            error = consume_commands(
                vq, vq.base & VCMDQ_ADDR, self._log2size(vq), self.mem.read,
                lambda q0, q1, slot: self.execute(vq, vintf, q0, q1, slot))
        finally:
            vq.busy = False
        if error:
            self._raise_error(vq, error)

    def execute(self, vq: Vcmdq, vintf: Vintf, q0: int, q1: int, slot: int) -> int:
        """One command of ``vq``: the VINTF's checks and replacements, then the SMMU's
        command engine. Returns the CERROR (0: done)."""
        op = q0 & CMDQ_0_OP
        tracer = self.tracer
        if tracer.enabled:
            tracer.event("hw", f"{self.smmu.name} VCMDQ{vq.idx} (VINTF{vintf.idx}) "
                         f"{CMDQ_OP_NAMES.get(op, f'OP_{op:#x}')}", f"{q0:#018x} {q1:#018x}")
        if not vintf.hyp_own:
            if op not in GUEST_OPS:
                return self._refuse(vq, f"opcode {op:#x} is not a guest VCMDQ command")
            if op != CMDQ_OP_CMD_SYNC and op != CMDQ_OP_ATC_INV:
                q0 = (q0 & ~CMDQ_TLBI_0_VMID) | FIELD_PREP(CMDQ_TLBI_0_VMID, vintf.vmid)
            elif op == CMDQ_OP_ATC_INV:
                vsid = FIELD_GET(CMDQ_ATC_0_SID, q0)
                sid = vintf.replace_sid(vsid, self.cfg.num_sids)
                if sid is None:
                    return self._refuse(vq, f"ATC_INV names SID {vsid:#x}, not one of the "
                                        "VINTF's")
                q0 = (q0 & ~CMDQ_ATC_0_SID) | FIELD_PREP(CMDQ_ATC_0_SID, sid)
        if op == CMDQ_OP_CMD_SYNC:
            # Completion is CONS moving past it: no MSI, no SEV from a VCMDQ.
            m0, m1 = self.smmu.cmd.fields[CMDQ_OP_CMD_SYNC]
            if q0 & ~m0 or q1 & ~m1 or FIELD_GET(CMDQ_SYNC_0_CS, q0) == _SYNC_CS_RESERVED:
                return self._refuse(vq, "malformed CMD_SYNC")
            self.executed[vq.idx] += 1
            return 0
        err = self.smmu.cmd.execute(q0, q1, slot)
        if err:
            self.refused[vq.idx] += 1
        else:
            self.executed[vq.idx] += 1
        return err

    def _refuse(self, vq: Vcmdq, why: str) -> int:
        self.refused[vq.idx] += 1
        if self.tracer.enabled:
            self.tracer.event("hw", f"{self.smmu.name} VCMDQ{vq.idx} CERROR_ILL", why)
        return ILL

    def _raise_error(self, vq: Vcmdq, cerror: int) -> None:
        vq.error = cerror
        vq.gerror ^= VCMDQ_GERROR_CMDQ_ERR
        vintf = self.owner(vq)
        if vintf is not None and self.vintf_int_mask >> vintf.idx & 1:
            return  # masked: the maps say it, no interrupt
        if self.tracer.enabled:  # what the interrupt's handler does shows under it
            with self.tracer.span("hw", f"{self.smmu.name} CMDQV interrupt",
                                  f"VCMDQ{vq.idx} CERROR {cerror}"):
                self.irq.assert_irq()
        else:
            self.irq.assert_irq()

    # -- registers as bytes (a mapped page shown to a program) --------------------------------
    def cons_reg(self, vq: Vcmdq) -> int:
        return (vq.cons & ~VCMDQ_CONS_ERR) | FIELD_PREP(VCMDQ_CONS_ERR, vq.error)

    def stats(self) -> dict[str, Any]:
        return {"executed": sum(self.executed), "refused": sum(self.refused),
                "in_error": [vq.idx for vq in self.vcmdqs if vq.in_error]}


__all__ = ["GUEST_OPS", "CmdqvConfig", "Tegra241CmdqvHw", "Vcmdq", "Vintf"]

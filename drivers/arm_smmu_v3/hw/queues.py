"""The hardware side of the circular queues (CMDQ consumer, EVTQ and PRIQ producers) and the
event / PRI record encodings (smmuv3.md §1.4, §9.2).

PROD and CONS hold an index in their low ``log2size`` bits and a wrap bit above it; the
queue is empty when they are equal and full when only the wrap bits differ. The EVTQ
and PRIQ PROD registers also carry an overflow flag (bit 31) the SMMU toggles when it
had to drop a record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from drivers.arm_smmu_v3.regs import (
    EVTQ_0_ID,
    EVTQ_0_SID,
    EVTQ_0_SSID,
    EVTQ_0_SSV,
    EVTQ_1_CLASS,
    EVTQ_1_S2,
    EVTQ_1_STAG,
    EVTQ_1_STALL,
    EVTQ_1_TT_READ,
    EVTQ_3_FETCH_ADDR,
    EVTQ_3_IPA,
    FIELD_PREP,
    PRIQ_0_PERM_EXEC,
    PRIQ_0_PERM_PRIV,
    PRIQ_0_PERM_READ,
    PRIQ_0_PERM_WRITE,
    PRIQ_0_PRG_LAST,
    PRIQ_0_SID,
    PRIQ_0_SSID,
    PRIQ_0_SSID_V,
    PRIQ_1_ADDR_MASK,
    PRIQ_1_PRG_IDX,
    Q_BASE_ADDR_MASK,
    Q_BASE_LOG2SIZE,
    Q_OVERFLOW_FLAG,
    U64,
    EVTQ_1_InD,
    EVTQ_1_PnU,
    EVTQ_1_RnW,
)


class ConsProd(Protocol):
    """A command queue's CONS and PROD, as the consumer reads and moves them."""

    cons: int
    prod: int


_UNPACKERS: dict[int, struct.Struct] = {}


def _unpacker(ncmds: int) -> struct.Struct:
    """Unpacks ``ncmds`` commands (two little-endian qwords each)."""
    u = _UNPACKERS.get(ncmds)
    if u is None:
        u = _UNPACKERS[ncmds] = struct.Struct(f"<{2 * ncmds}Q")
    return u


def consume_commands(q: ConsProd, base: int, log2size: int, read: Callable[[int, int], bytes],
                     execute: Callable[[int, int, int], int]) -> int:
    """Execute the commands of ``q`` from CONS to PROD (``execute(q0, q1, slot address)``
    returns a CERROR, 0 for done), reading each contiguous run of slots in one access and
    moving CONS past what ran; PROD is read again after every run (a command may lead to
    a new one). Stops at the first error, CONS on the failed command; returns the CERROR
    (0: the queue is empty). The SMMU's command queue and the CMDQV's VCMDQs share it."""
    size = 1 << log2size
    wrap_mask = (size << 1) - 1
    error = 0
    while not error:
        cons, prod = q.cons, q.prod
        if (cons ^ prod) & wrap_mask == 0:
            break
        idx = cons & (size - 1)
        pidx = prod & (size - 1)
        n = pidx - idx if pidx > idx else size - idx
        words = _unpacker(n).unpack(read(base + (idx << 4), n << 4))
        done = 0
        for i in range(0, 2 * n, 2):
            error = execute(words[i], words[i + 1], base + ((idx + done) << 4))
            if error:
                break
            done += 1
        q.cons = (cons & ~wrap_mask & 0xFFFF_FFFF) | ((cons + done) & wrap_mask)
    return error


class HwQueue:
    """One queue as the SMMU sees it: BASE, PROD and CONS registers."""

    __slots__ = ("base_reg", "cons", "ent_dwords", "max_log2", "name", "prod")

    def __init__(self, name: str, ent_dwords: int, max_log2: int) -> None:
        self.name = name
        self.ent_dwords = ent_dwords
        self.max_log2 = max_log2
        self.base_reg = 0
        self.prod = 0
        self.cons = 0

    @property
    def log2size(self) -> int:
        # A LOG2SIZE above what IDR1 advertises is treated as the maximum.
        return min(self.base_reg & Q_BASE_LOG2SIZE, self.max_log2)

    @property
    def base(self) -> int:
        return self.base_reg & Q_BASE_ADDR_MASK

    def _mask(self) -> int:
        return (1 << (self.log2size + 1)) - 1  # index + wrap

    def idx(self, v: int) -> int:
        return v & ((1 << self.log2size) - 1)

    def wrap(self, v: int) -> int:
        return (v >> self.log2size) & 1

    def empty(self) -> bool:
        m = self._mask()
        return (self.prod & m) == (self.cons & m)

    def full(self) -> bool:
        return (self.idx(self.prod) == self.idx(self.cons)
                and self.wrap(self.prod) != self.wrap(self.cons))

    def slot(self, v: int) -> int:
        return self.base + self.idx(v) * self.ent_dwords * 8

    def inc(self, v: int) -> int:
        """v + 1 in index+wrap arithmetic, keeping the bits above (overflow flag)."""
        m = self._mask()
        return (v & ~m & 0xFFFF_FFFF) | ((v + 1) & m)


def event_record(evt_id: int, sid: int, ssid: int | None, *, addr: int = 0, ipa: int = 0,
                 fetch_addr: int | None = None, rnw: bool = True, ind: bool = False,
                 pnu: bool = False, s2: bool = False, cls: int = 0, stall: bool = False,
                 stag: int = 0, tt_read: bool = False) -> tuple[int, int, int, int]:
    """A 32-byte event record (``evt[0..3]``)."""
    q0 = FIELD_PREP(EVTQ_0_ID, evt_id) | FIELD_PREP(EVTQ_0_SID, sid)
    if ssid is not None:
        q0 |= EVTQ_0_SSV | FIELD_PREP(EVTQ_0_SSID, ssid)
    q1 = (FIELD_PREP(EVTQ_1_STAG, stag) | (EVTQ_1_STALL if stall else 0)
          | (EVTQ_1_PnU if pnu else 0) | (EVTQ_1_InD if ind else 0)
          | (EVTQ_1_RnW if rnw else 0) | (EVTQ_1_S2 if s2 else 0)
          | FIELD_PREP(EVTQ_1_CLASS, cls) | (EVTQ_1_TT_READ if tt_read else 0))
    q3 = (fetch_addr & EVTQ_3_FETCH_ADDR) if fetch_addr is not None else (ipa & EVTQ_3_IPA)
    if evt_id in (0x02, 0x04, 0x0A):
        # C_BAD_STREAMID / C_BAD_STE / C_BAD_CD: StreamID, SSV, SubstreamID; the rest
        # is RES0 (SMMUv3 spec 7.3.3, 7.3.5, 7.3.11).
        return q0, 0, 0, 0
    if evt_id == 0x06:
        # F_STREAM_DISABLED records the StreamID only (7.3.7).
        return q0 & (EVTQ_0_ID | EVTQ_0_SID), 0, 0, 0
    if evt_id == 0x08:
        # C_BAD_SUBSTREAMID: the SubstreamID is always valid, bit 11 is RES0 (7.3.9).
        return q0 & ~EVTQ_0_SSV, 0, 0, 0
    return q0, q1, addr & U64, q3


def pri_record(sid: int, ssid: int | None, addr: int, grpid: int, *, read: bool,
               write: bool, exe: bool = False, priv: bool = False, last: bool = True
               ) -> tuple[int, int]:
    """A 16-byte PRI queue entry: one page request of a page request group."""
    q0 = FIELD_PREP(PRIQ_0_SID, sid)
    if ssid is not None:
        q0 |= PRIQ_0_SSID_V | FIELD_PREP(PRIQ_0_SSID, ssid)
    q0 |= ((PRIQ_0_PERM_READ if read else 0) | (PRIQ_0_PERM_WRITE if write else 0)
           | (PRIQ_0_PERM_EXEC if exe else 0) | (PRIQ_0_PERM_PRIV if priv else 0)
           | (PRIQ_0_PRG_LAST if last else 0))
    q1 = FIELD_PREP(PRIQ_1_PRG_IDX, grpid) | (addr & PRIQ_1_ADDR_MASK)
    return q0, q1


OVERFLOW = Q_OVERFLOW_FLAG

"""The Tegra241 CMDQV register window: which register an offset is, for reads and writes
(:mod:`drivers.arm_smmu_v3.tegra241_cmdqv_regs` has the layout).

Unimplemented offsets read as zero and ignore writes, as do the LVCMDQ slots of a VINTF
page that no allocated VCMDQ backs: a VINTF page only ever reaches that VINTF's queues.
Every register is 32 bits wide; the 64-bit ones (VINTF_ERR_MAP, LVCMDQ_ERR_MAP, BASE,
CONS_INDX_BASE) are pairs of words.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    CMDQV_CMDQ_ERR_MAP_NUM,
    CMDQV_ENABLED,
    SZ_64K,
    SZ_128K,
    TEGRA241_CMDQV_CMDQ_ALLOC_BASE,
    TEGRA241_CMDQV_CMDQ_ERR_MAP_BASE,
    TEGRA241_CMDQV_CONFIG,
    TEGRA241_CMDQV_PARAM,
    TEGRA241_CMDQV_STATUS,
    TEGRA241_CMDQV_VINTF_ERR_MAP,
    TEGRA241_CMDQV_VINTF_INT_MASK,
    TEGRA241_VCMDQ_BASE,
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_CONS_INDX_BASE,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PAGE0_BASE,
    TEGRA241_VCMDQ_PAGE1_BASE,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STATUS,
    TEGRA241_VCMDQ_STRIDE,
    TEGRA241_VINTF_BASE,
    TEGRA241_VINTF_CONFIG,
    TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE,
    TEGRA241_VINTF_PAGE_BASE,
    TEGRA241_VINTF_SID_MATCH_BASE,
    TEGRA241_VINTF_SID_REPLACE_BASE,
    TEGRA241_VINTF_STATUS,
    TEGRA241_VINTF_STRIDE,
    VCMDQ_ENABLED,
    VINTF_ENABLED,
    cmdqv_mmio_size,
)
from iommu_core.platform.dma import Mmio

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.hw.cmdqv import Tegra241CmdqvHw, Vcmdq

_U32 = 0xFFFF_FFFF
_PAGE0_REGS = (TEGRA241_VCMDQ_CONS, TEGRA241_VCMDQ_PROD, TEGRA241_VCMDQ_CONFIG,
               TEGRA241_VCMDQ_STATUS, TEGRA241_VCMDQ_GERROR, TEGRA241_VCMDQ_GERRORN)
_PAGE1_REGS = (TEGRA241_VCMDQ_BASE, TEGRA241_VCMDQ_BASE + 4, TEGRA241_VCMDQ_CONS_INDX_BASE,
               TEGRA241_VCMDQ_CONS_INDX_BASE + 4)
_PAGE0_NAMES = {TEGRA241_VCMDQ_CONS: "CONS", TEGRA241_VCMDQ_PROD: "PROD",
                TEGRA241_VCMDQ_CONFIG: "CONFIG", TEGRA241_VCMDQ_GERRORN: "GERRORN"}


def _word(v: int, off: int) -> int:
    """The 32-bit half of a 64-bit value ``off`` (0 or 4) selects."""
    return (v >> 32) & _U32 if off & 4 else v & _U32


def _set_word(old: int, off: int, value: int) -> int:
    if off & 4:
        return (old & _U32) | (value << 32)
    return (old & ~_U32) | value


class CmdqvRegs(Mmio):
    """The CMDQV's MMIO window (resource "cmdqv" of the SMMU unit)."""

    def __init__(self, cmdqv: Tegra241CmdqvHw) -> None:
        self.cmdqv = cmdqv
        cfg = cmdqv.cfg
        self.size = cmdqv_mmio_size(cfg.num_vintfs)
        self._vintf_end = TEGRA241_VINTF_BASE + TEGRA241_VINTF_STRIDE * cfg.num_vintfs
        self._alloc_end = TEGRA241_CMDQV_CMDQ_ALLOC_BASE + 4 * cfg.num_vcmdqs

    # -- decode ------------------------------------------------------------------------------
    def _queue(self, off: int) -> tuple[Vcmdq | None, int, int]:
        """(VCMDQ, page 0 or 1, register offset) for an offset in a VCMDQ or VINTF page."""
        c = self.cmdqv
        if off < TEGRA241_VINTF_PAGE_BASE:
            page = (off - TEGRA241_VCMDQ_PAGE0_BASE) // SZ_64K
            rel = off - TEGRA241_VCMDQ_PAGE0_BASE - page * SZ_64K
            q = rel // TEGRA241_VCMDQ_STRIDE
            vq = c.vcmdqs[q] if q < len(c.vcmdqs) else None
        else:
            rel = off - TEGRA241_VINTF_PAGE_BASE
            vintf, rel = divmod(rel, SZ_128K)
            page, rel = divmod(rel, SZ_64K)
            vq = c.lvcmdq(vintf, rel // TEGRA241_VCMDQ_STRIDE)
        return vq, page, rel % TEGRA241_VCMDQ_STRIDE

    # -- reads -------------------------------------------------------------------------------
    def read32(self, offset: int) -> int:
        off = offset & ~3
        if off < 0 or off >= self.size:
            return 0
        if off < TEGRA241_VCMDQ_PAGE0_BASE:
            return self._read_config(off)
        vq, page, reg = self._queue(off)
        if vq is None:
            return 0
        c = self.cmdqv
        if page == 0:
            if reg == TEGRA241_VCMDQ_CONS:
                return c.cons_reg(vq)
            if reg == TEGRA241_VCMDQ_PROD:
                return vq.prod
            if reg == TEGRA241_VCMDQ_CONFIG:
                return int(vq.enabled)
            if reg == TEGRA241_VCMDQ_STATUS:
                return VCMDQ_ENABLED if vq.enabled else 0
            if reg == TEGRA241_VCMDQ_GERROR:
                return vq.gerror
            if reg == TEGRA241_VCMDQ_GERRORN:
                return vq.gerrorn
            return 0
        if reg in (TEGRA241_VCMDQ_BASE, TEGRA241_VCMDQ_BASE + 4):
            return _word(vq.base, reg)
        if reg in (TEGRA241_VCMDQ_CONS_INDX_BASE, TEGRA241_VCMDQ_CONS_INDX_BASE + 4):
            return _word(vq.cons_indx_base, reg)
        return 0

    def _read_config(self, off: int) -> int:
        c = self.cmdqv
        if off == TEGRA241_CMDQV_CONFIG:
            return c.config
        if off == TEGRA241_CMDQV_PARAM:
            return c.cfg.param
        if off == TEGRA241_CMDQV_STATUS:
            return CMDQV_ENABLED if c.enabled else 0
        if off in (TEGRA241_CMDQV_VINTF_ERR_MAP, TEGRA241_CMDQV_VINTF_ERR_MAP + 4):
            return _word(c.vintf_err_map(), off - TEGRA241_CMDQV_VINTF_ERR_MAP)
        if off in (TEGRA241_CMDQV_VINTF_INT_MASK, TEGRA241_CMDQV_VINTF_INT_MASK + 4):
            return _word(c.vintf_int_mask, off - TEGRA241_CMDQV_VINTF_INT_MASK)
        m = (off - TEGRA241_CMDQV_CMDQ_ERR_MAP_BASE) // 4
        if off >= TEGRA241_CMDQV_CMDQ_ERR_MAP_BASE and m < CMDQV_CMDQ_ERR_MAP_NUM:
            return (c.cmdq_err_map() >> (32 * m)) & _U32
        if TEGRA241_CMDQV_CMDQ_ALLOC_BASE <= off < self._alloc_end:
            return c.vcmdqs[(off - TEGRA241_CMDQV_CMDQ_ALLOC_BASE) // 4].alloc
        if TEGRA241_VINTF_BASE <= off < self._vintf_end:
            v, reg = divmod(off - TEGRA241_VINTF_BASE, TEGRA241_VINTF_STRIDE)
            vintf = c.vintfs[v]
            if reg == TEGRA241_VINTF_CONFIG:
                return vintf.config
            if reg == TEGRA241_VINTF_STATUS:
                return VINTF_ENABLED if vintf.enabled else 0
            s = (reg - TEGRA241_VINTF_SID_MATCH_BASE) // 4
            if reg >= TEGRA241_VINTF_SID_MATCH_BASE and s < c.cfg.num_sids:
                return vintf.sid_match[s]
            s = (reg - TEGRA241_VINTF_SID_REPLACE_BASE) // 4
            if reg >= TEGRA241_VINTF_SID_REPLACE_BASE and s < c.cfg.num_sids:
                return vintf.sid_replace[s]
            rel = reg - TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE
            if 0 <= rel < 16:
                return (c.lvcmdq_err_map(v) >> (8 * rel)) & _U32
        return 0

    # -- writes ------------------------------------------------------------------------------
    def write32(self, offset: int, value: int) -> None:
        off = offset & ~3
        value &= _U32
        if off < 0 or off >= self.size:
            return
        c = self.cmdqv
        tracer = c.tracer
        if tracer.enabled:
            tracer.event("hw", f"{c.smmu.name} CMDQV write {self.reg_name(off)}", f"{value:#x}")
        if off < TEGRA241_VCMDQ_PAGE0_BASE:
            self._write_config(off, value)
            return
        vq, page, reg = self._queue(off)
        if vq is None:
            return
        if page == 0:
            if reg == TEGRA241_VCMDQ_PROD:
                c.write_prod(vq, value)
            elif reg == TEGRA241_VCMDQ_CONS:
                c.write_cons(vq, value)
            elif reg == TEGRA241_VCMDQ_CONFIG:
                c.write_vcmdq_config(vq, value)
            elif reg == TEGRA241_VCMDQ_GERRORN:
                c.write_gerrorn(vq, value)
            return  # STATUS and GERROR are read-only
        if reg in (TEGRA241_VCMDQ_BASE, TEGRA241_VCMDQ_BASE + 4):
            vq.base = _set_word(vq.base, reg, value)
        elif reg in (TEGRA241_VCMDQ_CONS_INDX_BASE, TEGRA241_VCMDQ_CONS_INDX_BASE + 4):
            vq.cons_indx_base = _set_word(vq.cons_indx_base, reg, value)

    def _write_config(self, off: int, value: int) -> None:
        c = self.cmdqv
        if off == TEGRA241_CMDQV_CONFIG:
            c.write_config(value)
        elif off in (TEGRA241_CMDQV_VINTF_INT_MASK, TEGRA241_CMDQV_VINTF_INT_MASK + 4):
            c.vintf_int_mask = _set_word(c.vintf_int_mask, off - TEGRA241_CMDQV_VINTF_INT_MASK,
                                         value)
        elif TEGRA241_CMDQV_CMDQ_ALLOC_BASE <= off < self._alloc_end:
            c.write_cmdq_alloc((off - TEGRA241_CMDQV_CMDQ_ALLOC_BASE) // 4, value)
        elif TEGRA241_VINTF_BASE <= off < self._vintf_end:
            v, reg = divmod(off - TEGRA241_VINTF_BASE, TEGRA241_VINTF_STRIDE)
            vintf = c.vintfs[v]
            if reg == TEGRA241_VINTF_CONFIG:
                c.write_vintf_config(v, value)
                return
            s = (reg - TEGRA241_VINTF_SID_MATCH_BASE) // 4
            if reg >= TEGRA241_VINTF_SID_MATCH_BASE and s < c.cfg.num_sids:
                vintf.sid_match[s] = value
                return
            s = (reg - TEGRA241_VINTF_SID_REPLACE_BASE) // 4
            if reg >= TEGRA241_VINTF_SID_REPLACE_BASE and s < c.cfg.num_sids:
                vintf.sid_replace[s] = value

    # -- a page as bytes (a register page mapped into a program) ------------------------------
    def _candidates(self, lo: int, hi: int) -> Iterator[int]:
        """Offsets in [lo, hi) of every register that can read non-zero."""
        c = self.cmdqv
        if lo < TEGRA241_VCMDQ_PAGE0_BASE:
            yield from (TEGRA241_CMDQV_CONFIG, TEGRA241_CMDQV_PARAM, TEGRA241_CMDQV_STATUS)
            yield from range(TEGRA241_CMDQV_VINTF_ERR_MAP,
                             TEGRA241_CMDQV_CMDQ_ERR_MAP_BASE + 4 * CMDQV_CMDQ_ERR_MAP_NUM, 4)
            yield from range(TEGRA241_CMDQV_CMDQ_ALLOC_BASE, self._alloc_end, 4)
            for v in range(c.cfg.num_vintfs):
                b = TEGRA241_VINTF_BASE + TEGRA241_VINTF_STRIDE * v
                yield from (b + TEGRA241_VINTF_CONFIG, b + TEGRA241_VINTF_STATUS)
                yield from range(b + TEGRA241_VINTF_SID_MATCH_BASE,
                                 b + TEGRA241_VINTF_SID_MATCH_BASE + 4 * c.cfg.num_sids, 4)
                yield from range(b + TEGRA241_VINTF_SID_REPLACE_BASE,
                                 b + TEGRA241_VINTF_SID_REPLACE_BASE + 4 * c.cfg.num_sids, 4)
                yield from range(b + TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE,
                                 b + TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE + 16, 4)
        for vq in c.vcmdqs:
            for page, regs in ((TEGRA241_VCMDQ_PAGE0_BASE, _PAGE0_REGS),
                               (TEGRA241_VCMDQ_PAGE1_BASE, _PAGE1_REGS)):
                b = page + TEGRA241_VCMDQ_STRIDE * vq.idx
                if b + TEGRA241_VCMDQ_STRIDE > lo and b < hi:
                    yield from (b + r for r in regs)
        for v, lidx in c.lvcmdqs():
            for page, regs in ((0, _PAGE0_REGS), (SZ_64K, _PAGE1_REGS)):
                b = TEGRA241_VINTF_PAGE_BASE + SZ_128K * v + page + TEGRA241_VCMDQ_STRIDE * lidx
                if b + TEGRA241_VCMDQ_STRIDE > lo and b < hi:
                    yield from (b + r for r in regs)

    def snapshot(self, base: int, n: int) -> bytes:
        """``n`` bytes of registers from ``base``, as word reads would give them (what
        ``iommu_sim.exec`` shows a program that mapped a page), at the cost of the
        registers that exist rather than of the page's words."""
        out = bytearray(n)
        for off in self._candidates(base, base + n):
            if base <= off and off + 4 <= base + n:
                v = self.read32(off)
                if v:
                    struct.pack_into("<I", out, off - base, v)
        return bytes(out)

    # -- names (traces) ----------------------------------------------------------------------
    def reg_name(self, off: int) -> str:
        if off < TEGRA241_VCMDQ_PAGE0_BASE:
            if TEGRA241_CMDQV_CMDQ_ALLOC_BASE <= off < self._alloc_end:
                return f"CMDQ_ALLOC({(off - TEGRA241_CMDQV_CMDQ_ALLOC_BASE) // 4})"
            if TEGRA241_VINTF_BASE <= off < self._vintf_end:
                v, reg = divmod(off - TEGRA241_VINTF_BASE, TEGRA241_VINTF_STRIDE)
                if reg == TEGRA241_VINTF_CONFIG:
                    return f"VINTF{v} CONFIG"
                if TEGRA241_VINTF_SID_MATCH_BASE <= reg < TEGRA241_VINTF_SID_REPLACE_BASE:
                    return f"VINTF{v} SID_MATCH({(reg - TEGRA241_VINTF_SID_MATCH_BASE) // 4})"
                if TEGRA241_VINTF_SID_REPLACE_BASE <= reg < TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE:
                    return (f"VINTF{v} SID_REPLACE"
                            f"({(reg - TEGRA241_VINTF_SID_REPLACE_BASE) // 4})")
            return {TEGRA241_CMDQV_CONFIG: "CONFIG"}.get(off, f"{off:#x}")
        if off < TEGRA241_VINTF_PAGE_BASE:
            page = (off - TEGRA241_VCMDQ_PAGE0_BASE) // SZ_64K
            rel = off - TEGRA241_VCMDQ_PAGE0_BASE - page * SZ_64K
            q, reg = divmod(rel, TEGRA241_VCMDQ_STRIDE)
            name = _PAGE0_NAMES.get(reg, f"{reg:#x}") if page == 0 else (
                "BASE" if reg < 8 else "CONS_INDX_BASE")
            return f"VCMDQ{q} {name}"
        vintf, rel = divmod(off - TEGRA241_VINTF_PAGE_BASE, SZ_128K)
        page, rel = divmod(rel, SZ_64K)
        lidx, reg = divmod(rel, TEGRA241_VCMDQ_STRIDE)
        name = _PAGE0_NAMES.get(reg, f"{reg:#x}") if page == 0 else (
            "BASE" if reg < 8 else "CONS_INDX_BASE")
        return f"VINTF{vintf} LVCMDQ{lidx} {name}"


__all__ = ["CmdqvRegs"]

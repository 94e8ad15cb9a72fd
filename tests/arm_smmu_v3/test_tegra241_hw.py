"""The Tegra241 CMDQV model on its own, driven through its register window as the Linux
driver lays it out: reset values, the logical-to-global VCMDQ mapping, when a VCMDQ
runs, what a guest VINTF may issue and what the hardware replaces, the error maps and
their interrupt, and the register snapshot a mapped page shows a program."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.arm_smmu_v3.hw.cmdqv import CmdqvConfig, Tegra241CmdqvHw
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.hw.model import SmmuV3Hardware
from drivers.arm_smmu_v3.hw.tlb import NESTED, TlbEntry
from drivers.arm_smmu_v3.regs import (
    CMDQ_ERR_CERROR_ILL_IDX,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_SYNC_0_CS_IRQ,
    FIELD_PREP,
)
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    CMDQV_CMDQ_ALLOC_LVCMDQ,
    CMDQV_CMDQ_ALLOC_VINTF,
    CMDQV_CMDQ_ALLOCATED,
    CMDQV_EN,
    TEGRA241_CMDQV_CMDQ_ALLOC,
    TEGRA241_CMDQV_CMDQ_ERR_MAP,
    TEGRA241_CMDQV_CONFIG,
    TEGRA241_CMDQV_PARAM,
    TEGRA241_CMDQV_STATUS,
    TEGRA241_CMDQV_VINTF_ERR_MAP,
    TEGRA241_CMDQV_VINTF_INT_MASK,
    TEGRA241_VCMDQ_BASE,
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PAGE0,
    TEGRA241_VCMDQ_PAGE1,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STATUS,
    TEGRA241_VINTF,
    TEGRA241_VINTF_CONFIG,
    TEGRA241_VINTF_LVCMDQ_ERR_MAP_64,
    TEGRA241_VINTF_SID_MATCH,
    TEGRA241_VINTF_SID_REPLACE,
    TEGRA241_VINTF_STATUS,
    VINTF_EN,
    VINTF_HYP_OWN,
    VINTF_SID_MATCH_ENABLE,
    VINTF_VMID,
    TEGRA241_VINTFi_LVCMDQ_PAGE0,
    TEGRA241_VINTFi_LVCMDQ_PAGE1,
    TEGRA241_VINTFi_PAGE0,
)
from iommu_core.platform.dma import Mmio
from iommu_core.platform.platform import Platform

QBASE = 0x4000_0000  # where the tests put queues in physical memory
N = 16  # entries per queue (log2size 4)


class Rig:
    """An SMMU model with a CMDQV of 4 VINTFs x 2 LVCMDQs and 4 SID pairs; no driver."""

    def __init__(self) -> None:
        self.platform = Platform()
        cfg = CmdqvConfig.from_option({"vintfs": 4, "vcmdqs": 8, "sids_per_vintf": 4})
        self.hw = SmmuV3Hardware("smmu0", SmmuHwConfig(), self.platform, cfg)
        assert self.hw.cmdqv is not None
        self.cmdqv: Tegra241CmdqvHw = self.hw.cmdqv
        self.regs: Mmio = self.hw.mmio["cmdqv"]
        self.irqs = 0
        self.hw.irqs["cmdqv"].request_irq(self._irq)
        self.mem = self.platform.mem
        self.prod: dict[tuple[int, int], int] = {}

    def _irq(self) -> None:
        self.irqs += 1

    def r(self, off: int) -> int:
        return self.regs.read32(off)

    def w(self, off: int, v: int) -> None:
        self.regs.write32(off, v)

    def vintf(self, v: int, vmid: int, hyp: bool = False) -> None:
        self.w(TEGRA241_VINTF(v) + TEGRA241_VINTF_CONFIG, FIELD_PREP(VINTF_VMID, vmid)
               | (VINTF_HYP_OWN if hyp else 0) | VINTF_EN)

    def queue(self, q: int, v: int, lidx: int, enable: bool = True) -> int:
        """Map global VCMDQ ``q`` to (v, lidx) at QBASE + q pages; its VINTF page0."""
        self.w(TEGRA241_CMDQV_CMDQ_ALLOC(q), FIELD_PREP(CMDQV_CMDQ_ALLOC_VINTF, v)
               | FIELD_PREP(CMDQV_CMDQ_ALLOC_LVCMDQ, lidx) | CMDQV_CMDQ_ALLOCATED)
        self.regs.write64(TEGRA241_VINTFi_LVCMDQ_PAGE1(v, lidx) + TEGRA241_VCMDQ_BASE,
                          (QBASE + q * 4096) | 4)
        if enable:
            self.w(TEGRA241_VINTFi_LVCMDQ_PAGE0(v, lidx) + TEGRA241_VCMDQ_CONFIG, 1)
        return TEGRA241_VINTFi_LVCMDQ_PAGE0(v, lidx)

    def submit(self, q: int, v: int, lidx: int, cmds: list[tuple[int, int]]) -> None:
        prod = self.prod.get((v, lidx), 0)
        for q0, q1 in cmds:
            self.mem.write_qwords(QBASE + q * 4096 + (prod % N) * 16, (q0, q1))
            prod = (prod + 1) % (2 * N)
        self.prod[(v, lidx)] = prod
        self.w(TEGRA241_VINTFi_LVCMDQ_PAGE0(v, lidx) + TEGRA241_VCMDQ_PROD, prod)

    def tlb_entry(self, vmid: int, asid: int, va: int) -> None:
        self.hw.tlb.insert((NESTED, vmid, asid), va, TlbEntry(va, 4096, 0x9000_0000, 3, True))

    def cached(self, vmid: int, asid: int, va: int) -> bool:
        sp = self.hw.tlb.tags.get((NESTED, vmid, asid))
        return sp is not None and (va >> 12) in sp.pages


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.w(TEGRA241_CMDQV_CONFIG, CMDQV_EN)
    return r


def test_reset_values_and_param() -> None:
    r = Rig()
    assert r.r(TEGRA241_CMDQV_PARAM) == (2 << 12) | (2 << 8) | (3 << 4) | 1
    assert r.r(TEGRA241_CMDQV_CONFIG) == 0 and r.r(TEGRA241_CMDQV_STATUS) == 0
    r.w(TEGRA241_CMDQV_CONFIG, CMDQV_EN | 0xF0)  # reserved bits do not stick
    assert r.r(TEGRA241_CMDQV_CONFIG) == CMDQV_EN and r.r(TEGRA241_CMDQV_STATUS) == 1
    r.w(TEGRA241_CMDQV_PARAM, 0)  # read-only
    assert r.r(TEGRA241_CMDQV_PARAM) != 0
    # Beyond the implemented VINTFs, VCMDQs and SID pairs: RAZ/WI.
    for off in (TEGRA241_VINTF(4) + TEGRA241_VINTF_CONFIG, TEGRA241_CMDQV_CMDQ_ALLOC(8),
                TEGRA241_VINTF(0) + TEGRA241_VINTF_SID_MATCH(4), 0x50, 0xFFF0):
        r.w(off, 0xFFFF_FFFF)
        assert r.r(off) == 0, hex(off)


def test_vintf_page_shows_the_mapped_vcmdq(rig: Rig) -> None:
    page0 = TEGRA241_VINTFi_LVCMDQ_PAGE0(2, 1)
    # Not allocated: the logical slot is empty.
    rig.w(page0 + TEGRA241_VCMDQ_PROD, 5)
    assert rig.r(page0 + TEGRA241_VCMDQ_PROD) == 0
    # Global VCMDQ 6 as VINTF2's LVCMDQ1: the same registers through both pages.
    rig.queue(6, 2, 1, enable=False)
    rig.w(page0 + TEGRA241_VCMDQ_PROD, 5)
    assert rig.r(TEGRA241_VCMDQ_PAGE0(6) + TEGRA241_VCMDQ_PROD) == 5
    assert rig.regs.read64(TEGRA241_VCMDQ_PAGE1(6) + TEGRA241_VCMDQ_BASE) == QBASE + 6 * 4096 | 4
    # Other VINTFs' pages do not reach it.
    for v, lidx in ((1, 1), (2, 0), (3, 1)):
        assert rig.r(TEGRA241_VINTFi_LVCMDQ_PAGE0(v, lidx) + TEGRA241_VCMDQ_PROD) == 0
    # Unmapped again: gone from the VINTF page, still there globally.
    rig.w(TEGRA241_CMDQV_CMDQ_ALLOC(6), rig.r(TEGRA241_CMDQV_CMDQ_ALLOC(6))
          & ~CMDQV_CMDQ_ALLOCATED)
    assert rig.r(page0 + TEGRA241_VCMDQ_PROD) == 0
    assert rig.r(TEGRA241_VCMDQ_PAGE0(6) + TEGRA241_VCMDQ_PROD) == 5


def test_a_vcmdq_runs_only_when_everything_is_enabled() -> None:
    r = Rig()
    r.vintf(1, vmid=7)
    page0 = r.queue(2, 1, 0)
    r.tlb_entry(7, 3, 0x5000)
    r.submit(2, 1, 0, [(CMDQ_OP_TLBI_NH_VA | 3 << 48, 0x5000 | 1)])
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 0 and r.cached(7, 3, 0x5000)  # CMDQV off
    r.w(TEGRA241_CMDQV_CONFIG, CMDQV_EN)  # enabling the CMDQV runs what is pending
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 1 and not r.cached(7, 3, 0x5000)
    r.w(TEGRA241_VINTF(1) + TEGRA241_VINTF_CONFIG, 0)
    assert r.r(TEGRA241_VINTF(1) + TEGRA241_VINTF_STATUS) == 0
    r.tlb_entry(7, 3, 0x5000)
    r.submit(2, 1, 0, [(CMDQ_OP_TLBI_NH_VA | 3 << 48, 0x5000 | 1)])
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 1 and r.cached(7, 3, 0x5000)  # VINTF off
    r.vintf(1, vmid=7)
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 2 and not r.cached(7, 3, 0x5000)
    r.w(page0 + TEGRA241_VCMDQ_CONFIG, 0)
    assert r.r(page0 + TEGRA241_VCMDQ_STATUS) == 0
    # CONS is software's while the queue is off.
    r.w(page0 + TEGRA241_VCMDQ_CONS, 0)
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 0
    r.w(page0 + TEGRA241_VCMDQ_CONFIG, 1)
    r.w(page0 + TEGRA241_VCMDQ_CONS, 1)  # ignored while enabled
    assert r.r(page0 + TEGRA241_VCMDQ_CONS) == 2  # re-ran both commands from 0


def test_guest_vintf_vmid_and_opcodes(rig: Rig) -> None:
    rig.vintf(1, vmid=7)
    rig.queue(2, 1, 0)
    for vmid in (7, 8):
        rig.tlb_entry(vmid, 3, 0x5000)
    # The guest names VMID 8: the hardware uses the VINTF's 7.
    rig.submit(2, 1, 0, [(CMDQ_OP_TLBI_NH_VA | 3 << 48 | 8 << 32, 0x5000 | 1),
                         (CMDQ_OP_CMD_SYNC, 0)])
    assert not rig.cached(7, 3, 0x5000) and rig.cached(8, 3, 0x5000)
    rig.tlb_entry(7, 3, 0x5000)
    rig.submit(2, 1, 0, [(CMDQ_OP_TLBI_NH_ASID | 3 << 48 | 8 << 32, 0)])
    assert not rig.cached(7, 3, 0x5000) and rig.cached(8, 3, 0x5000)
    # A hypervisor-owned VINTF takes the VMID as written.
    rig.vintf(0, vmid=0, hyp=True)
    rig.queue(0, 0, 0)
    rig.submit(0, 0, 0, [(CMDQ_OP_TLBI_NH_ALL | 8 << 32, 0)])
    assert not rig.cached(8, 3, 0x5000)


@pytest.mark.parametrize("cmd", [
    (CMDQ_OP_TLBI_NH_ALL, 0), (0x2A, 0), (0x03, 0), (0x7F, 0),  # not guest commands
    (CMDQ_OP_TLBI_NH_VA | 1 << 10, 0),  # a RES0 bit: the SMMU's own checks still apply
    (CMDQ_OP_CMD_SYNC | 3 << 12, 0),  # CS = reserved
    (CMDQ_OP_ATC_INV | 0x99 << 32, 52),  # a SID no SID_MATCH names
])
def test_guest_refusals_raise_the_error_maps(rig: Rig, cmd: tuple[int, int]) -> None:
    rig.vintf(3, vmid=9)
    rig.queue(7, 3, 1)
    page0 = TEGRA241_VINTFi_LVCMDQ_PAGE0(3, 1)
    rig.tlb_entry(9, 3, 0x5000)
    rig.submit(7, 3, 1, [(CMDQ_OP_CMD_SYNC, 0), cmd, (CMDQ_OP_TLBI_NH_ASID | 3 << 48, 0)])
    assert rig.r(page0 + TEGRA241_VCMDQ_CONS) == CMDQ_ERR_CERROR_ILL_IDX << 24 | 1
    assert rig.r(page0 + TEGRA241_VCMDQ_GERROR) ^ rig.r(page0 + TEGRA241_VCMDQ_GERRORN) == 1
    assert rig.cached(9, 3, 0x5000), "nothing after the bad command ran"
    assert rig.regs.read64(TEGRA241_VINTF(3) + TEGRA241_VINTF_LVCMDQ_ERR_MAP_64(0)) == 1 << 1
    assert rig.regs.read64(TEGRA241_CMDQV_VINTF_ERR_MAP) == 1 << 3
    assert rig.r(TEGRA241_CMDQV_CMDQ_ERR_MAP(0)) == 1 << 7
    assert rig.irqs == 1
    # More PROD writes do nothing while the error stands, and raise no new interrupt.
    rig.submit(7, 3, 1, [(CMDQ_OP_CMD_SYNC, 0)])
    assert rig.r(page0 + TEGRA241_VCMDQ_CONS) & 0xFF == 1 and rig.irqs == 1
    # The guest replaces the command and acknowledges: the queue resumes.
    rig.mem.write_qwords(QBASE + 7 * 4096 + 16, (CMDQ_OP_CMD_SYNC, 0))
    rig.w(page0 + TEGRA241_VCMDQ_GERRORN, rig.r(page0 + TEGRA241_VCMDQ_GERROR))
    assert rig.r(page0 + TEGRA241_VCMDQ_CONS) == 4
    assert not rig.cached(9, 3, 0x5000)
    assert rig.regs.read64(TEGRA241_CMDQV_VINTF_ERR_MAP) == 0
    assert rig.r(TEGRA241_CMDQV_CMDQ_ERR_MAP(0)) == 0


def test_sid_pairs_replace_atc_inv_sids(rig: Rig) -> None:
    rig.vintf(1, vmid=7)
    rig.queue(2, 1, 0)
    base = TEGRA241_VINTF(1)
    rig.w(base + TEGRA241_VINTF_SID_REPLACE(2), 0x100)
    rig.w(base + TEGRA241_VINTF_SID_MATCH(2), 0x42 << 1 | VINTF_SID_MATCH_ENABLE)
    rig.w(base + TEGRA241_VINTF_SID_REPLACE(3), 0x200)
    rig.w(base + TEGRA241_VINTF_SID_MATCH(3), 0x43 << 1)  # not enabled
    for sid in (0x42, 0x43, 0x100, 0x200):
        rig.hw.atc.insert(sid, -1, 0x5000, 0x9000_0000, 1)
    rig.submit(2, 1, 0, [(CMDQ_OP_ATC_INV | 0x42 << 32, 52)])
    assert rig.hw.atc.count(0x100) == 0
    assert all(rig.hw.atc.count(s) == 1 for s in (0x42, 0x43, 0x200))
    rig.submit(2, 1, 0, [(CMDQ_OP_ATC_INV | 0x43 << 32, 52)])
    assert rig.r(TEGRA241_VINTFi_LVCMDQ_PAGE0(1, 0) + TEGRA241_VCMDQ_CONS) >> 24 == 1
    assert rig.hw.atc.count(0x200) == 1


def test_cmd_sync_signals_no_msi(rig: Rig) -> None:
    rig.vintf(1, vmid=7)
    rig.queue(2, 1, 0)
    target = 0x7000_0000  # a host page a guest's MSI address could name
    rig.mem.write(target, b"\xAA" * 8)
    rig.submit(2, 1, 0, [(CMDQ_OP_CMD_SYNC | CMDQ_SYNC_0_CS_IRQ << 12, target)])
    assert rig.r(TEGRA241_VINTFi_LVCMDQ_PAGE0(1, 0) + TEGRA241_VCMDQ_CONS) == 1
    assert rig.mem.read(target, 8) == b"\xAA" * 8


def test_int_mask_keeps_the_maps_but_not_the_interrupt(rig: Rig) -> None:
    rig.vintf(1, vmid=7)
    rig.queue(2, 1, 0)
    rig.w(TEGRA241_CMDQV_VINTF_INT_MASK, 1 << 1)
    rig.submit(2, 1, 0, [(CMDQ_OP_TLBI_NH_ALL, 0)])
    assert rig.irqs == 0 and rig.regs.read64(TEGRA241_CMDQV_VINTF_ERR_MAP) == 1 << 1


# -- what a mapped page shows a program -------------------------------------------------------
OFFSETS = st.one_of(
    st.integers(0, 0x2FF).map(lambda o: o * 4),
    st.integers(0, 3).flatmap(lambda v: st.integers(0, 0x3F).map(
        lambda o: TEGRA241_VINTF(v) + 4 * o)),
    st.integers(0, 7).flatmap(lambda q: st.integers(0, 7).map(
        lambda o: TEGRA241_VCMDQ_PAGE0(q) + 4 * o)),
    st.integers(0, 7).flatmap(lambda q: st.integers(0, 3).map(
        lambda o: TEGRA241_VCMDQ_PAGE1(q) + 4 * o)),
    st.tuples(st.integers(0, 3), st.integers(0, 1), st.integers(0, 0xF)).map(
        lambda t: TEGRA241_VINTFi_PAGE0(t[0]) + 0x80 * t[1] + 4 * t[2]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=st.lists(st.tuples(OFFSETS, st.integers(0, 0xFFFF_FFFF)), max_size=40),
       page=st.sampled_from([0, 0x1000, 0x10000, 0x20000] + [TEGRA241_VINTFi_PAGE0(v)
                                                             for v in range(4)]),
       length=st.sampled_from([0x100, 0x1000]))
def test_snapshot_is_what_word_reads_give(writes: list[tuple[int, int]], page: int,
                                          length: int) -> None:
    r = Rig()
    for off, v in writes:
        r.w(off, v)
    snap = r.regs.snapshot(page, length)  # type: ignore[attr-defined]
    words = b"".join(r.r(page + o).to_bytes(4, "little") for o in range(0, length, 4))
    assert snap == words

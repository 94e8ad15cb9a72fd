"""The hardware model on its own (QEMU-style model tests): registers, stream and CD
tables decoded from memory, illegal configurations, the caches and their invalidation
commands, the command queue's error handshake, and the event queue."""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.arm_smmu_v3.cmdq import (
    arm_smmu_make_cmd_cfgi_cd,
    arm_smmu_make_cmd_cfgi_ste,
    arm_smmu_make_cmd_resume,
    arm_smmu_make_cmd_sync,
    arm_smmu_make_cmd_tlbi,
)
from drivers.arm_smmu_v3.hw.config import SmmuHwConfig
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_CMDQ_CONS,
    ARM_SMMU_CR0,
    ARM_SMMU_CR0ACK,
    ARM_SMMU_EVTQ_PROD,
    ARM_SMMU_GBPA,
    ARM_SMMU_GERROR,
    ARM_SMMU_GERRORN,
    ARM_SMMU_IDR0,
    ARM_SMMU_IDR1,
    ARM_SMMU_IDR3,
    ARM_SMMU_IDR5,
    ARM_SMMU_IIDR,
    ARM_SMMU_PAGE1,
    CMDQ_CONS_ERR,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
    CMDQ_SYNC_0_CS_IRQ,
    CMDQ_SYNC_0_CS_SEV,
    CR0_SMMUEN,
    CTXDESC_CD_0_TCR_TG0,
    CTXDESC_CD_0_V,
    EVTQ_0_SSV,
    EVTQ_1_CLASS,
    EVTQ_1_S2,
    EVTQ_1_STALL,
    FIELD_GET,
    FIELD_PREP,
    GBPA_ABORT,
    GBPA_UPDATE,
    GERROR_CMDQ_ERR,
    IDR0_HTTU,
    IDR0_S1P,
    IDR0_S2P,
    IDR1_SSIDSIZE,
    IDR3_FWB,
    IDR3_RIL,
    IDR5_OAS,
    Q_OVERFLOW_FLAG,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_S1FMT_64K_L2,
    STRTAB_STE_1_EATS,
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1DSS_TERMINATE,
    STRTAB_STE_1_STRW,
    STRTAB_STE_2_S2S,
    STRTAB_STE_2_VTCR,
)
from drivers.arm_smmu_v3.ste import arm_smmu_make_abort_ste, arm_smmu_make_bypass_ste
from iommu_core.errors import IommuError
from iommu_core.platform.dma import DmaFault
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE

from .harness import BareSmmu, tlbi_va
from .hwutil import cdtable_ste, nested_stream, page, s1_cd, s1_stream, s2_ste

RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE


def fault(fn: object, *args: object) -> DmaFault:
    with pytest.raises(DmaFault) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value


# -- ID registers and control handshakes ----------------------------------------------------
def test_id_registers_follow_options() -> None:
    b = BareSmmu()
    r = b.regs
    assert r.read32(ARM_SMMU_IDR0) & (IDR0_S1P | IDR0_S2P) == IDR0_S1P | IDR0_S2P
    assert FIELD_GET(IDR0_HTTU, r.read32(ARM_SMMU_IDR0)) == 2
    assert FIELD_GET(IDR1_SSIDSIZE, r.read32(ARM_SMMU_IDR1)) == 20
    assert r.read32(ARM_SMMU_IDR3) & (IDR3_RIL | IDR3_FWB) == IDR3_RIL | IDR3_FWB
    assert FIELD_GET(IDR5_OAS, r.read32(ARM_SMMU_IDR5)) == 5  # 48 bits
    small = BareSmmu(s1p=False, httu=0, ssidsize=5, ril=False, oas=40,
                     implementer=0x43B, product=0x487)
    assert not small.regs.read32(ARM_SMMU_IDR0) & IDR0_S1P
    assert FIELD_GET(IDR1_SSIDSIZE, small.regs.read32(ARM_SMMU_IDR1)) == 5
    assert not small.regs.read32(ARM_SMMU_IDR3) & IDR3_RIL
    assert FIELD_GET(IDR5_OAS, small.regs.read32(ARM_SMMU_IDR5)) == 2
    assert small.regs.read32(ARM_SMMU_IIDR) == (0x487 << 20) | 0x43B


@pytest.mark.parametrize("options", [{"bogus": 1}, {"oas": 47}, {"s1p": "yes"},
                                     {"s1p": False, "s2p": False}, {"ssidsize": 21}])
def test_bad_options_einval(options: dict[str, object]) -> None:
    with pytest.raises(IommuError) as ei:
        SmmuHwConfig.from_options(options)
    assert ei.value.errno == errno.EINVAL


def test_cr0_ack_and_gbpa() -> None:
    b = BareSmmu()
    b.regs.write32(ARM_SMMU_CR0, 0)
    assert b.regs.read32(ARM_SMMU_CR0ACK) == 0
    dev = b.device(1)
    # SMMU disabled: GBPA decides. Bypass by default, abort once updated.
    assert b.read(dev, 0x1234_5000, 4) == bytes(4)
    b.regs.write32(ARM_SMMU_GBPA, GBPA_ABORT)  # no UPDATE bit: ignored
    assert b.read(dev, 0x1234_5000, 4) == bytes(4)
    b.regs.write32(ARM_SMMU_GBPA, GBPA_ABORT | GBPA_UPDATE)
    assert not b.regs.read32(ARM_SMMU_GBPA) & GBPA_UPDATE
    assert fault(b.read, dev, 0x1000, 4).reason == "GBPA_ABORT"


# -- stream table --------------------------------------------------------------------------
def test_linear_stream_table_abort_bypass_and_bad_sid() -> None:
    b = BareSmmu(sid_bits=8)
    b.write_ste(1, arm_smmu_make_abort_ste())
    b.write_ste(2, arm_smmu_make_bypass_ste(_feat()))
    f = fault(b.read, b.device(1), 0x1000, 4)
    assert f.reason == "ABORT" and b.events == []  # abort config records nothing
    pa = page(b, 0x5A)
    assert b.read(b.device(2), pa, 2) == b"\x5a\x5a"  # bypass
    assert fault(b.read, b.device(0x300), 0, 4).reason == "C_BAD_STREAMID"
    assert fault(b.read, b.device(3), 0, 4).reason == "C_BAD_STE"  # V=0
    assert b.event_ids() == [0x02, 0x04]
    assert FIELD_GET(0xFFFFFFFF << 32, b.events[0][0]) == 0x300  # the SID is in the record


def test_two_level_stream_table() -> None:
    b = BareSmmu(linear=False)
    b.write_ste(0x1234, arm_smmu_make_bypass_ste(_feat()))
    assert b.read(b.device(0x1234), 0x2000, 1) == b"\0"
    # No level-2 table for this SID: C_BAD_STREAMID.
    assert fault(b.read, b.device(0x4321), 0x2000, 1).reason == "C_BAD_STREAMID"


def _feat() -> object:
    from .hwutil import _Smmu

    return _Smmu()


@pytest.mark.parametrize(("what", "mutate"), [
    ("reserved config", lambda q: (q[0] & ~STRTAB_STE_0_CFG) | FIELD_PREP(STRTAB_STE_0_CFG, 1)),
    ("S2S with EATS=TRANS", None),
    ("bad S2 granule", None),
    ("S1CDMax above SSIDSIZE", None),
    ("EL2 stream world", None),
])
def test_illegal_ste_is_c_bad_ste(what: str, mutate: object) -> None:
    b = BareSmmu(hyp=False, gran16k=False, ssidsize=4)
    s2pt = b.table(2, granule=4096, ias=48, oas=48)
    ste = s2_ste(s2pt, vmid=3)
    q = list(ste.q)
    if what == "reserved config":
        q[0] = mutate(q)  # type: ignore[operator]
    elif what == "S2S with EATS=TRANS":
        q[1] |= FIELD_PREP(STRTAB_STE_1_EATS, 1)
        q[2] |= STRTAB_STE_2_S2S
    elif what == "bad S2 granule":
        q[2] = (q[2] & ~(3 << 46)) | (2 << 46)  # 16K, not implemented here
    elif what == "S1CDMax above SSIDSIZE":
        q = list(cdtable_ste(page(b), s1cdmax=5).q)
    else:
        q = list(cdtable_ste(page(b)).q)
        q[1] |= FIELD_PREP(STRTAB_STE_1_STRW, 2)
    b.write_ste(7, tuple(q))
    assert fault(b.read, b.device(7), 0x1000, 4).reason == "C_BAD_STE", what
    assert b.event_ids() == [0x04]


# -- stage 1 through CDs -------------------------------------------------------------------
def test_stage1_translation_and_tlb_hit_is_fast() -> None:
    b = BareSmmu()
    pt, _ = s1_stream(b, 1)
    pa = page(b)
    b.mem.write(pa + 8, b"stage1!")
    pt.map(0x40_0000, pa, 4096, RW)
    dev = b.device(1)
    assert b.read(dev, 0x40_0008, 7) == b"stage1!"
    misses = b.hw.tlb.misses
    b.write(dev, 0x40_0010, b"again")
    assert b.read(dev, 0x40_0010, 5) == b"again"
    # The second and third accesses hit the fast path: no TLB lookup, no walk.
    assert b.hw.tlb.misses == misses
    assert (1, None, 0x400, False) in b.hw.fast


def test_s1dss_and_substreams() -> None:
    b = BareSmmu()
    pt = b.table(1)
    pa = page(b, 0x11)
    pt.map(0x1000, pa, 4096, RW)
    cdtab = b.alloc.alloc_pages(0)  # 64 CDs
    for ssid in (0, 3):
        b.write_cd(cdtab + ssid * 64, s1_cd(pt, 9))
    dev = b.device(4)
    for s1dss, rid_result in ((STRTAB_STE_1_S1DSS_TERMINATE, "F_STREAM_DISABLED"),
                              (STRTAB_STE_1_S1DSS_BYPASS, "bypass"),
                              (2, "translate")):  # SSID0
        b.write_ste(4, cdtable_ste(cdtab, s1cdmax=6, s1dss=s1dss))
        b.cmd(arm_smmu_make_cmd_cfgi_ste(4, True))
        if rid_result == "bypass":
            assert b.read(dev, pa, 1) == b"\x11"  # stage 1 bypassed: IOVA = PA
        elif rid_result == "translate":
            assert b.read(dev, 0x1000, 1) == b"\x11"
            # With S1DSS=SSID0, SSID 0 itself is reserved for substream-less traffic:
            # F_STREAM_DISABLED (SMMUv3 spec 7.3.7).
            assert fault(b.read, dev, 0x1000, 1, 0).reason == "F_STREAM_DISABLED"
        else:
            assert fault(b.read, dev, 0x1000, 1).reason == rid_result
        assert b.read(dev, 0x1000, 1, 3) == b"\x11"  # SSID 3 uses CD 3
    assert fault(b.read, dev, 0x1000, 1, 64).reason == "C_BAD_SUBSTREAMID"  # >= 2^S1CDMax
    assert fault(b.read, dev, 0x1000, 1, 5).reason == "C_BAD_CD"  # CD 5 is invalid
    last = b.events[-1]
    assert last[0] & EVTQ_0_SSV and FIELD_GET(0xFFFFF << 12, last[0]) == 5


def test_two_level_cd_table_and_cached_invalid_l1cd() -> None:
    b = BareSmmu()
    pt = b.table(1)
    pa = page(b, 0x22)
    pt.map(0x1000, pa, 4096, RW)
    l1 = b.alloc.alloc_pages(0)
    b.write_ste(2, cdtable_ste(l1, s1cdmax=12, s1fmt=STRTAB_STE_0_S1FMT_64K_L2))
    dev = b.device(2)
    ssid = 0x805  # L1 index 2
    assert fault(b.read, dev, 0x1000, 1, ssid).reason == "C_BAD_SUBSTREAMID"
    leaf = b.alloc.alloc_pages(4)
    b.write_cd(leaf + (ssid & 0x3FF) * 64, s1_cd(pt, 7))
    b.mem.write_u64(l1 + 2 * 8, leaf | 1)
    # The invalid L1 descriptor is cached until a non-leaf CFGI_CD.
    assert fault(b.read, dev, 0x1000, 1, ssid).reason == "C_BAD_SUBSTREAMID"
    b.cmd(arm_smmu_make_cmd_cfgi_cd(2, ssid, True))
    assert fault(b.read, dev, 0x1000, 1, ssid).reason == "C_BAD_SUBSTREAMID"
    b.cmd(arm_smmu_make_cmd_cfgi_cd(2, ssid, False))
    assert b.read(dev, 0x1000, 1, ssid) == b"\x22"


def test_illegal_cd_is_c_bad_cd() -> None:
    b = BareSmmu(gran16k=False)
    pt, cdtab = s1_stream(b, 1)
    q = list(s1_cd(pt, 1).q)
    q[0] = (q[0] & ~CTXDESC_CD_0_TCR_TG0) | FIELD_PREP(CTXDESC_CD_0_TCR_TG0, 2)  # 16K
    b.write_cd(cdtab, tuple(q))
    assert fault(b.read, b.device(1), 0, 4).reason == "C_BAD_CD"


# -- caches keep stale entries until the right invalidation -------------------------------
def test_tlb_stale_until_tlbi() -> None:
    b = BareSmmu()
    pt, _ = s1_stream(b, 1, asid=5)
    old, new = page(b, 0xAA), page(b, 0xBB)
    pt.map(0x10_0000, old, 4096, RW)
    dev = b.device(1)
    assert b.read(dev, 0x10_0000, 1) == b"\xaa"
    pt.unmap(0x10_0000, 4096)
    pt.map(0x10_0000, new, 4096, RW)
    assert b.read(dev, 0x10_0000, 1) == b"\xaa"  # stale: no invalidation yet
    b.cmd(tlbi_va(CMDQ_OP_TLBI_NH_VA, 0x10_0000, asid=6))
    assert b.read(dev, 0x10_0000, 1) == b"\xaa"  # another ASID's invalidation
    b.cmd(tlbi_va(CMDQ_OP_TLBI_NH_VA, 0x10_0000, asid=5))
    assert b.read(dev, 0x10_0000, 1) == b"\xbb"
    pt.unmap(0x10_0000, 4096)
    b.cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ASID, 5, 0))
    assert fault(b.read, dev, 0x10_0000, 1).reason == "F_TRANSLATION"


def test_range_tlbi_num_scale() -> None:
    b = BareSmmu()
    pt, _ = s1_stream(b, 1, asid=5)
    pages = [page(b, i + 1) for i in range(8)]
    for i, pa in enumerate(pages):
        pt.map(0x20_0000 + i * 4096, pa, 4096, RW)
    dev = b.device(1)
    for i in range(8):
        assert b.read(dev, 0x20_0000 + i * 4096, 1) == bytes([i + 1])
    pt.unmap(0x20_0000, 8 * 4096)
    # TG=4K, SCALE=1, NUM=1: (1+1) << 1 = 4 pages from 0x202000.
    b.cmd(tlbi_va(CMDQ_OP_TLBI_NH_VA, 0x20_2000, asid=5, tg=1, scale=1, num=1))
    for i in range(8):
        if 2 <= i < 6:
            assert fault(b.read, dev, 0x20_0000 + i * 4096, 1).reason == "F_TRANSLATION"
        else:
            assert b.read(dev, 0x20_0000 + i * 4096, 1) == bytes([i + 1])


def test_config_caches_stale_until_cfgi() -> None:
    b = BareSmmu()
    pt, cdtab = s1_stream(b, 1, asid=5)
    pa = page(b, 0x33)
    pt.map(0x1000, pa, 4096, RW)
    dev = b.device(1)
    assert b.read(dev, 0x1000, 1) == b"\x33"
    b.write_cd(cdtab, (0,) * 8)  # CD invalid in memory, still cached
    b.cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ALL, 0, 0))
    assert b.read(dev, 0x1000, 1) == b"\x33"
    b.cmd(arm_smmu_make_cmd_cfgi_cd(1, 0, True))
    assert fault(b.read, dev, 0x1000, 1).reason == "C_BAD_CD"
    b.write_ste(1, arm_smmu_make_abort_ste())
    assert fault(b.read, dev, 0x1000, 1).reason == "C_BAD_CD"  # old STE still cached
    b.cmd(arm_smmu_make_cmd_cfgi_ste(1, True))
    assert fault(b.read, dev, 0x1000, 1).reason == "ABORT"


# -- command queue -------------------------------------------------------------------------
def test_illegal_command_stops_queue_until_gerrorn() -> None:
    b = BareSmmu(s1p=False)
    cons0 = b.regs.read32(ARM_SMMU_CMDQ_CONS)
    # CFGI_CD with no stage 1: CERROR_ILL.
    b.cmd(arm_smmu_make_cmd_cfgi_cd(1, 0, False))
    cons = b.regs.read32(ARM_SMMU_CMDQ_CONS)
    assert FIELD_GET(CMDQ_CONS_ERR, cons) == 1
    assert (cons & 0x1FF) == (cons0 & 0x1FF)  # stopped at the bad command
    active = b.regs.read32(ARM_SMMU_GERROR) ^ b.regs.read32(ARM_SMMU_GERRORN)
    assert active & GERROR_CMDQ_ERR and b.gerrors == 1
    # Software replaces it with a CMD_SYNC and acknowledges: the SMMU resumes.
    slot = b.cmdq + (cons & 0xFF) * 16
    b.mem.write_qwords(slot, arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_SEV, 0))
    b.regs.write32(ARM_SMMU_GERRORN, b.regs.read32(ARM_SMMU_GERROR))
    cons = b.regs.read32(ARM_SMMU_CMDQ_CONS)
    assert FIELD_GET(CMDQ_CONS_ERR, cons) == 0 and (cons & 0x1FF) == b.cmd_prod


def test_unknown_opcode_is_illegal() -> None:
    b = BareSmmu()
    b.cmd_raw(0x7F, 0)
    assert FIELD_GET(CMDQ_CONS_ERR, b.regs.read32(ARM_SMMU_CMDQ_CONS)) == 1


def test_cmd_sync_msi_completion() -> None:
    b = BareSmmu()
    slot = b.cmdq + (b.cmd_prod & 0xFF) * 16
    b.cmd(arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_IRQ, slot), sync=False)
    # The MSI write (MSIDATA = 0) lands over the command's first word.
    assert b.mem.read_u32(slot) == 0


def test_event_queue_overflow_flag() -> None:
    b = BareSmmu(evtqs=7)
    b.hw.irqs["evtq"].free_irq()  # nobody consumes events
    dev = b.device(9)
    for _ in range(130):
        with pytest.raises(DmaFault):
            b.read(dev, 0, 1)
    prod = b.regs.read32(ARM_SMMU_PAGE1 + ARM_SMMU_EVTQ_PROD)
    assert prod & Q_OVERFLOW_FLAG
    assert b.hw.events_recorded == 128 and b.hw.events_dropped == 2


# -- stage 2 and nesting ---------------------------------------------------------------------
def test_stage2_and_tlbi_s2_ipa() -> None:
    b = BareSmmu()
    s2 = b.table(2)
    pa = page(b, 0x44)
    s2.map(0x8000_0000, pa, 4096, RW)
    b.write_ste(3, s2_ste(s2, vmid=7))
    dev = b.device(3)
    assert b.read(dev, 0x8000_0000, 1) == b"\x44"
    s2.unmap(0x8000_0000, 4096)
    assert b.read(dev, 0x8000_0000, 1) == b"\x44"
    b.cmd(tlbi_va(CMDQ_OP_TLBI_S2_IPA, 0x8000_0000, vmid=7))
    f = fault(b.read, dev, 0x8000_0000, 1)
    assert f.reason == "F_TRANSLATION" and f.detail["stage"] == 2
    assert b.events[-1][1] & EVTQ_1_S2


def test_nested_translation_goes_through_stage2() -> None:
    b = BareSmmu()
    s1, s2, ram = nested_stream(b)
    # Guest maps VA 0x1000 -> IPA of guest page 15.
    s1.map(0x1000, 0x4000_0000 + 15 * 4096, 4096, RW)  # type: ignore[attr-defined]
    b.mem.write(ram + 15 * 4096, b"nested")
    dev = b.device(5)
    assert b.read(dev, 0x1000, 6) == b"nested"
    # Guest VA mapped to an IPA the host never mapped: stage-2 fault, class IN.
    s1.map(0x2000, 0x9000_0000, 4096, RW)  # type: ignore[attr-defined]
    f = fault(b.read, dev, 0x2000, 1)
    assert f.reason == "F_TRANSLATION" and f.detail["stage"] == 2
    assert FIELD_GET(EVTQ_1_CLASS, b.events[-1][1]) == 2
    # The host's S2 unmap is invisible to the combined entry until TLBI_NH_ALL/S12_VMALL.
    s2.unmap(0x4000_0000 + 15 * 4096, 4096)  # type: ignore[attr-defined]
    b.cmd(tlbi_va(CMDQ_OP_TLBI_S2_IPA, 0x4000_0000 + 15 * 4096, vmid=9))
    assert b.read(dev, 0x1000, 6) == b"nested"
    b.cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ALL, 0, 9))
    assert fault(b.read, dev, 0x1000, 1).detail["stage"] == 2


def test_nested_cd_fetch_and_table_walk_faults_are_stage2() -> None:
    b = BareSmmu()
    s1, s2, ram = nested_stream(b)
    dev = b.device(5)
    # Unmap the guest page that holds an S1 table: the walk faults at stage 2, class TT.
    s1.map(0x1000, 0x4000_0000 + 15 * 4096, 4096, RW)  # type: ignore[attr-defined]
    s2.unmap(0x4000_0000 + 1 * 4096, 4096)  # type: ignore[attr-defined]  # S1 root table
    f = fault(b.read, dev, 0x1000, 1)
    assert f.detail["stage"] == 2 and FIELD_GET(EVTQ_1_CLASS, b.events[-1][1]) == 1
    # Unmap the CD page; invalidate everything: class CD.
    s2.unmap(0x4000_0000, 4096)  # type: ignore[attr-defined]
    b.cmd(arm_smmu_make_cmd_cfgi_ste(5, False))
    b.cmd(arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_S12_VMALL, 0, 9))
    f = fault(b.read, dev, 0x1000, 1)
    assert f.detail["stage"] == 2 and FIELD_GET(EVTQ_1_CLASS, b.events[-1][1]) == 0


# -- HTTU, permissions, address size ---------------------------------------------------------
def test_httu_dirty_and_permission() -> None:
    from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats

    b = BareSmmu()
    # A table with the ARM_HD quirk: writable leaves carry DBM.
    dbm = IoPageTable(formats.arm_lpae_s1(hd=True), PhysTableMemory(b.mem, b.alloc))
    cdtab = b.alloc.alloc_pages(0)
    b.write_cd(cdtab, s1_cd(dbm, 5, hd=True))
    b.write_ste(1, cdtable_ste(cdtab))
    pa = page(b)
    dbm.map(0x3000, pa, 4096, RW)
    dbm.read_and_clear_dirty(0x3000, 4096, 0, lambda i, n: None)  # writable-clean now
    dev = b.device(1)
    b.read(dev, 0x3000, 1)
    seen: list[int] = []
    dbm.read_and_clear_dirty(0x3000, 4096, 0, lambda i, n: seen.append(i))
    assert seen == []  # a read leaves it clean
    b.write(dev, 0x3000, b"d")  # misses the fast path: the walk sets the dirty state
    dbm.read_and_clear_dirty(0x3000, 4096, 0, lambda i, n: seen.append(i))
    assert seen == [0x3000]
    ro = page(b)
    dbm.map(0x4000, ro, 4096, IOMMU_READ)
    f = fault(b.write, dev, 0x4000, b"x")
    assert f.reason == "F_PERMISSION"


def test_stall_model_records_stall_and_resume() -> None:
    b = BareSmmu()
    pt, _ = s1_stream(b, 1, stall=True)
    dev = b.device(1)
    f = fault(b.read, dev, 0x5000, 1)
    assert f.page_request and f.reason == "F_TRANSLATION"
    evt = b.events[-1]
    assert evt[1] & EVTQ_1_STALL
    stag = evt[1] & 0xFFFF
    assert stag in b.hw.stalled

    b.cmd(arm_smmu_make_cmd_resume(1, stag, 1))
    assert stag not in b.hw.stalled and b.hw.resumed == [(1, stag, 1)]


def test_regs_smmuen_toggle_flushes_fast_path() -> None:
    b = BareSmmu()
    b.write_ste(1, arm_smmu_make_bypass_ste(_feat()))
    dev = b.device(1)
    b.read(dev, 0x1000, 1)
    assert b.hw.fast
    b.regs.write32(ARM_SMMU_CR0, b.regs.read32(ARM_SMMU_CR0) & ~CR0_SMMUEN)
    assert not b.hw.fast


def test_vtcr_field_is_decoded() -> None:
    """The S2 walk follows VTCR: a 40-bit IPA with concatenated start tables."""
    b = BareSmmu()
    s2 = b.table(2, granule=4096, ias=40, oas=40)
    assert s2.fmt.concat == 2  # type: ignore[attr-defined]
    pa = page(b, 0x66)
    s2.map(0xFF_0000_0000 - 0x1000, pa, 4096, RW)
    ste = s2_ste(s2, vmid=2)
    assert FIELD_GET(STRTAB_STE_2_VTCR, ste[2]) & 0x3F == 24
    b.write_ste(6, ste)
    assert b.read(b.device(6), 0xFF_0000_0000 - 0x1000, 1) == b"\x66"
    assert fault(b.read, b.device(6), 1 << 40, 1).reason == "F_TRANSLATION"


def test_cd_valid_bit_constant() -> None:
    assert CTXDESC_CD_0_V == 1 << 31


# -- any entry the hardware reads gives a translation or an architected fault -------------
_Q = st.integers(0, (1 << 64) - 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ste=st.lists(_Q, min_size=4, max_size=4), cd=st.lists(_Q, min_size=4, max_size=4),
       keep_valid=st.booleans(), pasid=st.sampled_from([None, 0, 1, 5]),
       iova=st.integers(0, (1 << 49) - 1), write=st.booleans())
def test_garbage_entries_only_fault(ste: list[int], cd: list[int], keep_valid: bool,
                                    pasid: int | None, iova: int, write: bool) -> None:
    b = BareSmmu()
    pt = b.table(1)
    cdtab = b.alloc.alloc_pages(0)
    pt.map(0x1000, page(b), 4096, RW)
    good_cd = s1_cd(pt, 3).q
    good_ste = cdtable_ste(cdtab, s1cdmax=2).q
    if keep_valid:  # mostly-sane entries with garbage in some fields
        ste = [good_ste[i] ^ (ste[i] & (0xFF << (8 * (i + 1)))) for i in range(4)]
        cd = [good_cd[i] ^ (cd[i] & (0xFFFF << (4 * i))) for i in range(4)]
    b.write_ste(1, tuple(ste))
    b.write_cd(cdtab, tuple(cd))
    b.write_cd(cdtab + 64, tuple(cd))
    dev = b.device(1)
    try:
        if write:
            b.write(dev, iova, b"z", pasid)
        else:
            b.read(dev, iova, 1, pasid)
    except DmaFault as f:
        assert f.reason in ("ABORT", "C_BAD_STE", "C_BAD_CD", "C_BAD_SUBSTREAMID",
                            "F_STREAM_DISABLED", "F_TRANSLATION", "F_ADDR_SIZE", "F_ACCESS",
                            "F_PERMISSION", "F_CD_FETCH", "C_BAD_STREAMID")


@pytest.mark.parametrize("ha", [False, True])
def test_access_flag_fault_or_hardware_update(ha: bool) -> None:
    b = BareSmmu()
    pt, _ = s1_stream(b, 1, hd=ha)  # hd=True sets CD.HA|HD
    pt.map(0x7000, page(b), 4096, RW)
    leaf = next(pt.iter_leaves(0x7000, 0x7000))
    b.mem.write_u64(leaf.desc_addr, leaf.desc & ~(1 << 10))  # clear AF
    dev = b.device(1)
    if ha:
        b.read(dev, 0x7000, 1)
        assert b.mem.read_u64(leaf.desc_addr) & (1 << 10)  # the SMMU set AF
    else:
        assert fault(b.read, dev, 0x7000, 1).reason == "F_ACCESS"


def test_output_beyond_ips_is_addr_size_fault() -> None:
    from drivers.arm_smmu_v3.regs import CTXDESC_CD_0_TCR_IPS

    b = BareSmmu()
    pt, cdtab = s1_stream(b, 1)
    pa = page(b)
    assert pa >= 1 << 32  # RAM starts at 4 GiB
    pt.map(0x1000, pa, 4096, RW)
    q = list(s1_cd(pt, 5).q)
    q[0] &= ~CTXDESC_CD_0_TCR_IPS  # IPS = 32 bits
    b.write_cd(cdtab, tuple(q))
    assert fault(b.read, b.device(1), 0x1000, 1).reason == "F_ADDR_SIZE"
    assert b.event_ids()[-1] == 0x11

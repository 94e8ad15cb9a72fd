"""Golden encodings: PASID entries (every PGTT), context entries, invalidation
descriptors and CAP/ECAP, computed here from the specification's field positions
(absolute bit numbers of vtd_amd.md §A2-§A6), then decoded back by the hardware model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd import pasid
from drivers.intel_vtd.hw.config import VtdConfig
from drivers.intel_vtd.hw.intel_iommu import VtdHardware
from iommu_core.platform.platform import Platform
from iommufd.uapi import IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_WPE


def spec_entry(nbits: int, fields: dict[tuple[int, int], int]) -> tuple[int, ...]:
    """An entry from {(hi, lo) absolute bit range: value}, split in 64-bit words."""
    v = 0
    for (hi, lo), x in fields.items():
        assert x < 1 << (hi - lo + 1), (hi, lo, x)
        v |= x << lo
    return tuple((v >> (64 * i)) & (2**64 - 1) for i in range(nbits // 64))


CFG = VtdConfig()


def fake_iommu(**over: object) -> SimpleNamespace:
    cfg = VtdConfig(**over)  # type: ignore[arg-type]
    return SimpleNamespace(name="dmar-test", cap=cfg.cap(), ecap=cfg.ecap(), agaw=2)


def fake_s2(root: int, agaw: int = 2, dirty: bool = False, snoop: bool = False,
            coherent: bool = True) -> SimpleNamespace:
    return SimpleNamespace(pgtable=SimpleNamespace(root=root), agaw=agaw,
                           dirty_tracking=dirty, force_snooping=snoop,
                           iommu_coherency=coherent)


# PASID entry fields (absolute bits, §A4.1)
P, FPD, AW, PGTT, SSADE, SSPTPTR = (0, 0), (1, 1), (4, 2), (8, 6), (9, 9), (63, 12)
DID, PWSNP, PGSNP = (79, 64), (87, 87), (88, 88)
SRE, FSPM, WPE, EAFE, FSPTPTR = (128, 128), (131, 130), (132, 132), (135, 135), (191, 140)


class TestPasidEntryGolden:
    def test_first_stage(self) -> None:
        pe = pasid.pasid_pte_config_first_level(
            fake_iommu(), 0x1_2345_6000, 0x42, pasid.PASID_FLAG_PWSNP)  # type: ignore[arg-type]
        assert pe.val == spec_entry(512, {P: 1, AW: 2, PGTT: 1, DID: 0x42, PWSNP: 1,
                                          FSPTPTR: 0x1_2345_6000 >> 12})

    def test_first_stage_5level_snoop(self) -> None:
        flags = pasid.PASID_FLAG_FL5LP | pasid.PASID_FLAG_PAGE_SNOOP
        pe = pasid.pasid_pte_config_first_level(fake_iommu(), 0x7000, 9,
                                                flags)  # type: ignore[arg-type]
        assert pe.val == spec_entry(512, {P: 1, AW: 2, PGTT: 1, DID: 9, PGSNP: 1, FSPM: 1,
                                          FSPTPTR: 7})

    def test_second_stage_with_ssade(self) -> None:
        pe = pasid.pasid_pte_config_second_level(
            fake_iommu(), fake_s2(0xABC000, agaw=3, dirty=True), 0x1234)  # type: ignore[arg-type]
        assert pe.val == spec_entry(512, {P: 1, AW: 3, PGTT: 2, SSADE: 1, DID: 0x1234,
                                          PWSNP: 1, SSPTPTR: 0xABC})

    def test_pass_through(self) -> None:
        pe = pasid.pasid_pte_config_pass_through(fake_iommu(), 1)  # type: ignore[arg-type]
        assert pe.val == spec_entry(512, {P: 1, AW: 2, PGTT: 4, DID: 1, PWSNP: 1})

    def test_nested_all_flags(self) -> None:
        flags = IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_WPE | IOMMU_VTD_S1_EAFE
        pe = pasid.pasid_pte_config_nestd(fake_iommu(), flags, 0x5555_5123, 57,  # type: ignore[arg-type]
                                          fake_s2(0x9000, dirty=True, snoop=True), 77)
        assert pe.val == spec_entry(512, {
            P: 1, AW: 2, PGTT: 3, SSADE: 1, SSPTPTR: 9, DID: 77, PWSNP: 1, PGSNP: 1,
            SRE: 1, FSPM: 1, WPE: 1, EAFE: 1, FSPTPTR: 0x5555_5})  # low 12 bits dropped

    def test_nested_wpe_without_sre_is_ignored(self) -> None:
        pe = pasid.pasid_pte_config_nestd(fake_iommu(), IOMMU_VTD_S1_WPE, 0x3000, 48,  # type: ignore[arg-type]
                                          fake_s2(0x9000), 5)
        assert pe.val == spec_entry(512, {P: 1, AW: 2, PGTT: 3, SSPTPTR: 9, DID: 5, PWSNP: 1,
                                          FSPTPTR: 3})

    @pytest.mark.parametrize(("aw", "flags", "over"), [
        (39, 0, {}), (0, 0, {}), (57, 0, {"fl5lp": False}),
        (48, IOMMU_VTD_S1_SRE, {"supervisor_requests": False}),
        (48, IOMMU_VTD_S1_EAFE, {"extended_access_flag": False}),
    ])
    def test_nested_checks(self, aw: int, flags: int, over: dict[str, bool]) -> None:
        with pytest.raises(Exception) as e:
            pasid.pasid_pte_config_nestd(fake_iommu(**over), flags, 0, aw,  # type: ignore[arg-type]
                                         fake_s2(0x9000), 5)
        assert getattr(e.value, "errno", None) == 22

    def test_hardware_decodes_every_pgtt(self) -> None:
        """The model reads back what the driver wrote, field for field."""
        plat = Platform()
        hw = VtdHardware("dmar-g", CFG, plat)
        ctx = SimpleNamespace(pasid_dir=0x10_0000, pdts=7)
        plat.mem.write_u64(0x10_0000, 0x20_0000 | 1)  # PDE 0 -> PASID table
        flags = IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_EAFE
        entries = {
            1: pasid.pasid_pte_config_first_level(fake_iommu(), 0x3000, 11,  # type: ignore[arg-type]
                                                  pasid.PASID_FLAG_FL5LP),
            2: pasid.pasid_pte_config_second_level(fake_iommu(), fake_s2(0x4000, 2, True), 12),  # type: ignore[arg-type]
            3: pasid.pasid_pte_config_nestd(fake_iommu(), flags, 0x5000, 48, fake_s2(0x6000),  # type: ignore[arg-type]
                                            13),
            4: pasid.pasid_pte_config_pass_through(fake_iommu(), 1),  # type: ignore[arg-type]
        }
        for i, (pgtt, pe) in enumerate(entries.items()):
            plat.mem.write_qwords(0x20_0000 + 64 * i, list(pe.val))
            got = hw._read_pasid_entry(ctx, i)  # type: ignore[arg-type]
            assert got.pgtt == pgtt and got.did == pe.domain_id
        one = hw._read_pasid_entry(ctx, 0)  # type: ignore[arg-type]
        assert (one.fsptptr, one.fspm) == (0x3000, 1)
        two = hw._read_pasid_entry(ctx, 1)  # type: ignore[arg-type]
        assert (two.ssptptr, two.aw, two.ssade) == (0x4000, 2, True)
        three = hw._read_pasid_entry(ctx, 2)  # type: ignore[arg-type]
        assert (three.fsptptr, three.ssptptr, three.sre, three.eafe, three.wpe) == (
            0x5000, 0x6000, True, True, False)


class TestContextGolden:
    def test_legacy(self) -> None:
        ce = h.context_legacy(0x12_3456_7000, h.CONTEXT_TT_DEV_IOTLB, 2, 0xBEEF)
        assert (ce.lo, ce.hi) == spec_entry(128, {(0, 0): 1, (3, 2): 1,
                                                  (63, 12): 0x12_3456_7, (66, 64): 2,
                                                  (87, 72): 0xBEEF})

    def test_scalable(self) -> None:
        ce = h.context_sm(0x88_0000, 7, dte=True, paside=True, pre=True)
        assert (ce.lo, ce.hi) == spec_entry(128, {(0, 0): 1, (2, 2): 1, (3, 3): 1, (4, 4): 1,
                                                  (11, 9): 7, (63, 12): 0x880})
        assert pasid.context_get_sm_pds(pasid.PasidTable(0, 5, 1 << 20)) == 7
        assert pasid.context_get_sm_pds(pasid.PasidTable(0, 0, 1 << 15)) == 2


class TestDescriptorGolden:
    def test_context_cache(self) -> None:
        d = h.qi_desc_cc(0x1234, 0x0810, 3, h.QI_CC_GRAN_DEVICE)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 1, (5, 4): 3, (31, 16): 0x1234,
                                                  (47, 32): 0x0810, (49, 48): 3})

    def test_iotlb_psi_with_drains_and_ih(self) -> None:
        d = h.qi_desc_iotlb(CFG.cap(), 0x77, 0x4_0000 | 1, 3, h.QI_IOTLB_GRAN_PSI)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 2, (5, 4): 3, (6, 6): 1, (7, 7): 1,
                                                  (31, 16): 0x77, (127, 76): 0x40,
                                                  (70, 70): 1, (69, 64): 3})

    def test_dev_iotlb_sizes(self) -> None:
        d = h.qi_desc_dev_iotlb(0x0810, 0xABCD, 8, 0x4_0000, 2)  # 16 KiB at 0x40000
        assert (d.qw0, d.qw1) == spec_entry(128, {
            (3, 0): 3, (15, 12): 0xD, (20, 16): 8, (47, 32): 0x0810, (63, 52): 0xABC,
            (127, 76): 0x41, (64, 64): 1})
        # bit 12 set, bit 13 clear: 16 KiB; one page: S=0; qdep >= 32 becomes 0
        one = h.qi_desc_dev_iotlb(1, 1, 32, 0x5000, 0)
        assert one.qw1 == 0x5000 and h.field(one.qw0, 20, 16) == 0
        whole = h.qi_desc_dev_iotlb(1, 1, 1, 0, 52)
        assert whole.qw1 == ((1 << 63) - 1) & ~0xFFF | 1  # bits 62:12 set: everything

    def test_iec(self) -> None:
        d = h.qi_desc_iec(0x1F0, 5, True)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 4, (4, 4): 1, (31, 27): 5,
                                                  (47, 32): 0x1F0})

    def test_wait(self) -> None:
        d = h.qi_desc_wait(0x1_0000_0040, h.QI_DONE, drain=True)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 5, (5, 5): 1, (7, 7): 1,
                                                  (63, 32): 2, (127, 64): 0x1_0000_0040})

    def test_piotlb(self) -> None:
        d = h.qi_desc_piotlb(0x33, 0xF_FFFF, 0x20_0000, 9, 1)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 6, (5, 4): 3, (31, 16): 0x33,
                                                  (51, 32): 0xF_FFFF, (127, 76): 0x200,
                                                  (70, 70): 1, (69, 64): 9})
        a = h.qi_desc_piotlb_all(0x33, 5)
        assert (a.qw0, a.qw1) == spec_entry(128, {(3, 0): 6, (5, 4): 2, (31, 16): 0x33,
                                                  (51, 32): 5})

    def test_pasid_cache(self) -> None:
        d = h.qi_desc_pasid_cache(0x99, 0x123, h.QI_PC_PASID_SEL)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 7, (5, 4): 1, (31, 16): 0x99,
                                                  (51, 32): 0x123})

    def test_pasid_dev_iotlb(self) -> None:
        d = h.qi_desc_dev_iotlb_pasid(0x0810, 0x1234, 0x42, 31, 0x8_0000, 3)  # 32 KiB
        assert (d.qw0, d.qw1) == spec_entry(128, {
            (3, 0): 8, (8, 4): 31, (15, 12): 4, (31, 16): 0x0810, (51, 32): 0x42,
            (63, 52): 0x123, (127, 76): 0x83, (75, 75): 1})

    def test_page_group_response(self) -> None:
        d = h.qi_desc_page_response(0x0810, 0x77, True, h.QI_RESP_FAILURE, 0x1AB)
        assert (d.qw0, d.qw1) == spec_entry(128, {(3, 0): 9, (4, 4): 1, (15, 12): 0xF,
                                                  (31, 16): 0x0810, (51, 32): 0x77,
                                                  (75, 67): 0x1AB})

    def test_page_request_descriptor_roundtrip(self) -> None:
        d = h.make_page_req_dsc(0x0810, 5, 0x7F00_1000, rd=True, wr=True, exe=False,
                                pm=True, lpig=True, prg_index=300)
        assert (d.qw0, d.qw1) == spec_entry(128, {(7, 0): 1, (8, 8): 1, (31, 16): 0x0810,
                                                  (51, 32): 5, (53, 53): 1, (64, 64): 1,
                                                  (65, 65): 1, (66, 66): 1, (75, 67): 300,
                                                  (127, 76): 0x7F001})
        assert (d.rid, d.pasid, d.addr, d.prg_index, d.lpig, d.pm_req) == (
            0x0810, 5, 0x7F00_1000, 300, True, True)


class TestCapEcapGolden:
    def test_defaults(self) -> None:
        cap = spec_entry(64, {(2, 0): 6, (12, 8): 0b100, (21, 16): 47, (33, 24): 0x40,
                              (37, 34): 0b11, (39, 39): 1, (47, 40): 7, (53, 48): 18,
                              (54, 54): 1, (55, 55): 1, (56, 56): 1, (60, 60): 1})[0]
        ecap = spec_entry(64, {(0, 0): 1, (1, 1): 1, (2, 2): 1, (6, 6): 1, (7, 7): 1,
                               (17, 8): 0x50, (23, 20): 0xF, (26, 26): 1, (29, 29): 1,
                               (31, 31): 1, (34, 34): 1, (39, 35): 19, (40, 40): 1,
                               (42, 42): 1, (43, 43): 1, (45, 45): 1, (46, 46): 1,
                               (47, 47): 1, (48, 48): 1})[0]
        assert (CFG.cap(), CFG.ecap()) == (cap, ecap)
        assert h.cap_ndoms(cap) == 65536 and h.cap_mgaw(cap) == 48
        assert h.cap_fault_reg_offset(cap) == 0x400 and h.cap_num_fault_regs(cap) == 8
        assert h.ecap_iotlb_offset(ecap) == 0x500 and h.ecap_pss(ecap) == 19

    def test_feature_options_clear_bits(self) -> None:
        cfg = VtdConfig(nesting=False, dirty_tracking=False, page_requests=False,
                        pasid_bits=0)
        e = cfg.ecap()
        assert not (h.ecap_nest(e) or h.ecap_slads(e) or h.ecap_prs(e) or h.ecap_pasid(e))
        assert h.ecap_smts(e) and h.ecap_flts(e)

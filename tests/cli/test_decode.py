"""``iommu-sim decode`` on the drivers' golden vectors (tests/<vendor>/test_golden.py): the
documented field values come out, the SMMU used-bit rule marks the right fields, and bad
combinations are flagged."""

from __future__ import annotations

import json

import pytest

from drivers.amd_vi import iommu as amd
from drivers.arm_smmu_v3 import regs as r
from iommu_sim.cli import main
from iommu_sim.decode import DecodeError, decode, describe_pte
from tests.arm_smmu_v3.test_golden import GOLDEN, USED
from tests.intel_vtd.test_golden import (
    AW,
    DID,
    EAFE,
    FSPM,
    FSPTPTR,
    PGSNP,
    PGTT,
    PWSNP,
    SRE,
    SSADE,
    SSPTPTR,
    WPE,
    P,
    spec_entry,
)


def values(d: object) -> dict[str, int]:
    return {f.name: f.value for f in d.fields}  # type: ignore[attr-defined]


# -- SMMUv3 -------------------------------------------------------------------------------------
def test_ste_golden_fields() -> None:
    d = decode("ste", GOLDEN["cdtable_ssid0_ats"])
    v = values(d)
    assert (v["V"], v["CFG"], v["S1FMT"], v["S1CDMAX"]) == (1, 5, 2, 31)
    assert v["S1CTXPTR"] == 0xF0F0F0F0F0F0F0EB & r.STRTAB_STE_0_S1CTXPTR_MASK
    assert (v["S1DSS"], v["EATS"], v["S1STALLD"], v["STRW"]) == (2, 1, 1, 0)
    assert d.field("CFG").text == "S1_TRANS" and d.field("EATS").text == "TRANS"
    assert d.summary.startswith("Config=S1_TRANS")
    # The golden vector's fake CD table has 2^31 CDs: more than the default SSIDSIZE.
    assert any("S1CDMax 31 exceeds SSIDSIZE 20" in p for p in d.problems)


def test_ste_s2_golden_fields_and_used_bits() -> None:
    d = decode("ste", GOLDEN["s2_ats"])
    v = values(d)
    assert (v["CFG"], v["S2VMID"], v["S2TTB"]) == (6, 0, 0x000DBEEFDEADBEE0)
    assert (v["S2T0SZ"], v["S2SL0"], v["S2TG"], v["S2PS"]) == (4, 3, 2, 1)
    assert v["S2AA64"] == v["S2PTW"] == v["S2R"] == 1 and v["SHCFG"] == 1
    used = USED["s2_ats"]
    for f in d.fields:
        lo, hi = (int(x) for x in reversed(f.bits.split(":"))) if ":" in f.bits else (
            int(f.bits), int(f.bits))
        mask = ((1 << (hi - lo + 1)) - 1) << (lo % 64)
        assert f.used == bool(used[lo // 64] & mask), f.name
    assert not d.field("S1CTXPTR").used and d.field("S2TTB").used


@pytest.mark.parametrize("name", ["abort", "bypass", "nested_bypass_ats"])
def test_ste_configs(name: str) -> None:
    d = decode("ste", GOLDEN[name])
    want = {"abort": "ABORT", "bypass": "BYPASS", "nested_bypass_ats": "NESTED"}[name]
    assert d.field("CFG").text == want


def test_cd_golden_fields() -> None:
    d = decode("cd", GOLDEN["s1_cd_1997"])
    v = values(d)
    assert (v["ASID"], v["V"], v["AA64"], v["R"], v["A"], v["ASET"]) == (1997, 1, 1, 1, 1, 1)
    assert (v["T0SZ"], v["TG0"], v["IPS"]) == (4, 2, 1)
    assert v["TTB0"] == 0x000DBEEFDEADBEE0 and v["MAIR"] == 0x0ABCDEF012345678


@pytest.mark.parametrize(("words", "problem"), [
    # EATS = S1CHK only makes sense for a nested STE
    ((r.STRTAB_STE_0_V | 5 << 1 | 0x1000, r.FIELD_PREP(r.STRTAB_STE_1_EATS, 2)), "S1CHK"),
    ((r.STRTAB_STE_0_V | 1 << 1, 0), "reserved Config"),
    ((r.STRTAB_STE_0_V | 6 << 1, 0, 0, 0x1000), "AArch32"),  # S2 without S2AA64
])
def test_ste_bad_combinations(words: tuple[int, ...], problem: str) -> None:
    d = decode("ste", words)
    assert not d.valid and any(problem in p and "C_BAD_STE" in p for p in d.problems)


def test_cd_bad_granule() -> None:
    q0 = r.CTXDESC_CD_0_V | r.CTXDESC_CD_0_AA64 | 16 | r.FIELD_PREP(r.CTXDESC_CD_0_TCR_TG0, 3)
    d = decode("cd", [q0, 0x1000])
    assert any("TG0 encoding 3" in p for p in d.problems)


def test_smmu_commands() -> None:
    d = decode("cmd", [r.CMDQ_OP_TLBI_NH_VA | r.FIELD_PREP(r.CMDQ_TLBI_0_ASID, 3),
                       0x7F00_0000_0000 | r.CMDQ_TLBI_1_LEAF], vendor="smmu")
    assert d.summary == "TLBI_NH_VA"
    assert (d.value("ASID"), d.value("LEAF"), d.value("ADDR")) == (3, 1, 0x7F00_0000_0000)
    d = decode("cmd", [r.CMDQ_OP_CFGI_CD | 0x42 << 32 | r.CMDQ_0_SSV | 5 << 12, 1],
               vendor="arm")
    assert (d.value("SID"), d.value("SSID"), d.value("SSV"), d.value("LEAF")) == (0x42, 5, 1, 1)
    assert not decode("cmd", [0x99, 0], vendor="smmu").valid


# -- VT-d ------------------------------------------------------------------------------------------
def test_pasid_entry_golden_nested_all_flags() -> None:
    words = spec_entry(512, {P: 1, AW: 2, PGTT: 3, SSADE: 1, SSPTPTR: 9, DID: 77, PWSNP: 1,
                             PGSNP: 1, SRE: 1, FSPM: 1, WPE: 1, EAFE: 1, FSPTPTR: 0x5_5555})
    d = decode("pasid-entry", words)
    v = values(d)
    assert (v["P"], v["AW"], v["PGTT"], v["DID"]) == (1, 2, 3, 77)
    assert (v["SSPTPTR"], v["FSPTPTR"]) == (0x9000, 0x5555_5000)
    assert v["SSADE"] == v["PWSNP"] == v["PGSNP"] == v["SRE"] == v["WPE"] == v["EAFE"] == 1
    assert v["FSPM"] == 1 and d.field("FSPM").text == "5-level"
    assert d.field("PGTT").text == "NESTED" and d.valid


def test_pasid_entry_first_stage_marks_second_stage_fields_unused() -> None:
    words = spec_entry(512, {P: 1, AW: 2, PGTT: 1, DID: 0x42, PWSNP: 1,
                             FSPTPTR: 0x1_2345_6000 >> 12})
    d = decode("pasid-entry", words)
    assert d.value("FSPTPTR") == 0x1_2345_6000 and d.valid
    assert d.field("FSPTPTR").used and not d.field("SSPTPTR").used


@pytest.mark.parametrize(("fields", "problem"), [
    ({P: 1, PGTT: 5, DID: 1}, "PGTT 5 is reserved"),
    ({P: 1, PGTT: 2, AW: 3, DID: 1, SSPTPTR: 1}, "not in CAP.SAGAW"),
    ({P: 1, PGTT: 1, DID: 1}, "FSPTPTR is 0"),
    ({P: 1, PGTT: 4, DID: 1, (200, 200): 1}, "reserved bits"),
])
def test_pasid_entry_bad(fields: dict[tuple[int, int], int], problem: str) -> None:
    d = decode("pasid-entry", spec_entry(512, fields))
    assert any(problem in p for p in d.problems), d.problems


def test_context_entries_golden() -> None:
    sm = spec_entry(128, {(0, 0): 1, (2, 2): 1, (3, 3): 1, (4, 4): 1, (11, 9): 7,
                          (63, 12): 0x880})
    d = decode("context-entry", sm)
    assert (d.value("PDTS"), d.value("PASIDDIRPTR"), d.value("PRE")) == (7, 0x88_0000, 1)
    assert d.valid
    bad = decode("context-entry", [sm[0] & ~(1 << 2), 0])  # PRE without DTE
    assert any("PRE needs DTE" in p for p in bad.problems)
    leg = spec_entry(128, {(0, 0): 1, (3, 2): 1, (63, 12): 0x12_3456_7, (66, 64): 2,
                           (87, 72): 0xBEEF})
    d = decode("context-entry-legacy", leg)
    assert (d.value("TT"), d.value("SLPTPTR"), d.value("AW"), d.value("DID")) == (
        1, 0x12_3456_7000, 2, 0xBEEF)
    assert d.field("TT").text == "DEV_IOTLB"


def test_vtd_descriptors() -> None:
    from drivers.intel_vtd import iommu_h as h

    d = decode("cmd", list(h.qi_desc_piotlb(0x33, 0xF_FFFF, 0x20_0000, 9, 1).words()),
               vendor="vtd")
    assert d.summary == "pasid-iotlb"
    assert (d.value("DID"), d.value("PASID"), d.value("AM"), d.value("IH"),
            d.value("ADDR")) == (0x33, 0xF_FFFF, 9, 1, 0x20_0000)


# -- AMD-Vi --------------------------------------------------------------------------------------
def test_dte_golden_gcr3() -> None:
    d = decode("dte", [0x79D0_0000_0000_0003, 0x1001_468A_0007, 0, 0])
    v = values(d)
    assert v["GCR3 root"] == 0x1_2345_6000 and v["GLX"] == 1 and v["DomainID"] == 7
    assert v["GV"] == v["GIoV"] == v["PPR"] == 1 and v["Mode"] == 0
    assert v["IR"] == v["IW"] == v["I"] == 1
    assert d.valid


def test_dte_golden_nested() -> None:
    d = decode("dte", [0x6CD0_0001_0040_0803, 0x801_0000_0009, 0, 0])
    v = values(d)
    assert (v["Mode"], v["HostPtr"], v["DomainID"]) == (4, 0x1_0040_0000, 9)
    assert v["GCR3 root"] == 0x8000_3000 and v["GV"] == 1 and v["GIoV"] == 1
    assert "v1 Mode 4" in d.summary and "GCR3 table 0x80003000" in d.summary


@pytest.mark.parametrize(("words", "problem"), [
    ([0x3 | 7 << 9 | 0x1000, 0], "Mode 7 is reserved"),
    ([0x3 | 1 << 55, 0], "GCR3 table root is 0"),
    ([0x3 | 4 << 9, 0], "null host page-table root"),
])
def test_dte_bad(words: list[int], problem: str) -> None:
    assert any(problem in p for p in decode("dte", words).problems)


@pytest.mark.parametrize(("cmd", "want"), [
    (lambda: amd.build_inv_iommu_pages(0x1234_5000, 0x1234_5FFF, 5, 0, 2),  # PDE
     {"DomainID": 5, "ADDR": 0x1234_5000, "S": 0, "PDE": 1, "GN": 0}),
    (lambda: amd.build_inv_iotlb_pages(0x2008, 32, 0, (1 << 64) - 1, 0x1234, True),
     {"DeviceID": 0x2008, "Maxpend": 32, "PASID[15:8]": 0x12, "PASID[7:0]": 0x34, "GN": 1,
      "S": 1}),
    (lambda: amd.build_complete_ppr(0x2008, 5, 1, 0x1A, True),
     {"DeviceID": 0x2008, "PASID": 5, "GN": 1, "Status": 1, "Tag": 0x1A}),
    (lambda: amd.build_completion_wait(0x1_0000_5008, 0x1_0000_0002),
     {"S": 1, "ADDR": 0x1_0000_5008, "DATA": 0x1_0000_0002}),
    (lambda: amd.build_inv_dte(0x2008), {"DeviceID": 0x2008}),
])
def test_amd_command_golden(cmd: object, want: dict[str, int]) -> None:
    d = decode("cmd", list(cmd().data), vendor="amd")  # type: ignore[operator]
    assert {k: d.value(k) for k in want} == want and d.valid


def test_gcr3_entry() -> None:
    d = decode("gcr3", [0x60001])
    assert d.value("V") == 1 and d.value("CR3") == 0x60000 and d.valid
    assert not decode("gcr3", [0x60001 | 1 << 60]).valid


# -- PTEs and errors -------------------------------------------------------------------------------
def test_pte_formats() -> None:
    d = describe_pte(0x1234067, "x86_64")
    assert d.value("OA") == 0x1234000 and d.value("D") == 1
    d = describe_pte(0x0040_0001_0000_6F43, "arm_lpae_s1", 0)
    assert d.value("AF") == 1 and d.value("OA") == 0x1_0000_6000
    with pytest.raises(DecodeError):
        describe_pte(0, "no_such_format")


def test_decode_errors() -> None:
    with pytest.raises(DecodeError, match="ambiguous"):
        decode("cmd", [0])
    with pytest.raises(DecodeError, match="unknown kind"):
        decode("frobnicate", [0])
    with pytest.raises(DecodeError, match="at most 4"):
        decode("dte", [0] * 5)
    with pytest.raises(DecodeError, match="not a vtd"):
        decode("ste", [0], vendor="vtd")


# -- the command line ----------------------------------------------------------------------------
def test_cli_decode_text_json_strict(capsys: pytest.CaptureFixture[str]) -> None:
    words = [f"{w:#x}" for w in GOLDEN["cdtable_ssid0_ats"][:2]]
    assert main(["decode", "ste", *words, "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "CFG" in out and "S1_TRANS" in out and "!! C_BAD_STE" in out
    assert main(["decode", "ste", *words, "--strict"]) == 1
    capsys.readouterr()
    assert main(["decode", "dte", "79d0000000000003", "00001001468a0007", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "DTE" and doc["problems"] == []
    assert {f["name"]: f["value"] for f in doc["fields"]}["GCR3 root"] == 0x1_2345_6000
    assert main(["decode", "cmd", "0", "0x30000005", "0x12345002", "0", "--vendor", "amd"]) == 0
    assert "INVALIDATE_IOMMU_PAGES" in capsys.readouterr().out
    assert main(["decode", "cmd", "0"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["decode", "pte", "0x1234067", "--format", "x86_64"]) == 0
    assert "OA" in capsys.readouterr().out
    assert main(["decode", "pte", "0x1"]) == 2
    assert main(["decode", "ste", "zz"]) == 2

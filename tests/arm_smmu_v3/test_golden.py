"""The golden vectors of smmuv3.md §5.8: the make functions produce these exact qwords, and
the used-bit rule these exact masks."""

from __future__ import annotations

import pytest

from drivers.arm_smmu_v3.entry import Entry
from drivers.arm_smmu_v3.regs import (
    STRTAB_STE_0_NESTING_ALLOWED,
    STRTAB_STE_1_NESTING_ALLOWED,
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1DSS_SSID0,
)
from drivers.arm_smmu_v3.ste import (
    arm_smmu_get_ste_used,
    arm_smmu_make_abort_ste,
    arm_smmu_make_bypass_ste,
)

from .kunit_fixtures import FakeSmmu, Feat, make_cdtable_ste, make_s1_cd, make_s2_ste

SSID0 = STRTAB_STE_1_S1DSS_SSID0
BYP = STRTAB_STE_1_S1DSS_BYPASS

GOLDEN: dict[str, tuple[int, int, int, int]] = {
    "abort": (0x0000000000000001, 0, 0, 0),
    "bypass": (0x0000000000000009, 0x0000100000000000, 0, 0),
    "cdtable_ssid0_ats": (0xF800F0F0F0F0F0EB, 0x00000000180000D6, 0, 0),
    "cdtable_bypass_ats": (0xF800F0F0F0F0F0EB, 0x00001000180000D5, 0, 0),
    "cdtable_ssid0_stall": (0xF800F0F0F0F0F0EB, 0x00000000000000D6, 0, 0),
    "s2_ats": (0x000000000000000D, 0x0000100010000000, 0x0449B6C400000000,
               0x000DBEEFDEADBEE0),
    "s2_stall": (0x000000000000000D, 0x0000100000000000, 0x0649B6C400000000,
                 0x000DBEEFDEADBEE0),
    "nested_bypass_ats": (0xF800F0F0F0F0F0EF, 0x00001000180800D5, 0x0449B6C400000000,
                          0x000DBEEFDEADBEE0),
    "s1_cd_1997": (0x07CDE201C0003684, 0x000DBEEFDEADBEE0, 0, 0x0ABCDEF012345678),
    "s1_cd_778": (0x030AE201C0003684, 0x000DBEEFDEADBEE0, 0, 0x0ABCDEF012345678),
}


def build(name: str) -> Entry:
    return {
        "abort": arm_smmu_make_abort_ste,
        "bypass": lambda: arm_smmu_make_bypass_ste(FakeSmmu()),
        "cdtable_ssid0_ats": lambda: make_cdtable_ste(SSID0, feat=Feat.ATS),
        "cdtable_bypass_ats": lambda: make_cdtable_ste(BYP, feat=Feat.ATS),
        "cdtable_ssid0_stall": lambda: make_cdtable_ste(SSID0, feat=Feat.STALL),
        "s2_ats": lambda: make_s2_ste(Feat.ATS),
        "s2_stall": lambda: make_s2_ste(Feat.STALL),
        "nested_bypass_ats": lambda: make_cdtable_ste(BYP, feat=Feat.ATS | Feat.NESTED),
        "s1_cd_1997": lambda: make_s1_cd(1997),
        "s1_cd_778": lambda: make_s1_cd(778),
    }[name]()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_vector(name: str) -> None:
    e = build(name)
    assert e.q[:4] == GOLDEN[name]
    assert e.q[4:] == (0, 0, 0, 0)


USED: dict[str, tuple[int, int, int, int]] = {
    "bypass": (0xF, 0x0000300000000000, 0, 0),
    "abort": (0xF, 0, 0, 0),
    "cdtable_ssid0_ats": (0xF80FFFFFFFFFFFFF, 0x00000000F80800FF, 0xFFFF, 0),
    "s2_ats": (0xF, 0x0000300032080000, 0x065FFFFF0000FFFF, 0x000FFFFFFFFFFFF0),
    "nested_bypass_ats": (0xF80FFFFFFFFFFFFF, 0x00003000FA0800FF, 0x065FFFFF0000FFFF,
                          0x000FFFFFFFFFFFF0),
}


@pytest.mark.parametrize("name", sorted(USED))
def test_used_masks(name: str) -> None:
    used = arm_smmu_get_ste_used(build(name))
    assert used[:4] == USED[name]
    assert used[4:] == (0, 0, 0, 0)


def test_nesting_allowed_masks() -> None:
    assert STRTAB_STE_0_NESTING_ALLOWED == 0xF80FFFFFFFFFFFFF
    assert STRTAB_STE_1_NESTING_ALLOWED == 0x380000FF


def test_entry_memory_image_roundtrip() -> None:
    e = build("s2_ats")
    assert type(e).from_bytes(bytes(e)) == e
    assert len(bytes(e)) == 64

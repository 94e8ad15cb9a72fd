"""arm-smmu-v3-test.c reproduced: every STE/CD transition of the kernel's KUnit suite, with
the same sync counts and hitless verdicts (smmuv3.md §6.4, §7), run through the driver's
one writer (drivers/arm_smmu_v3/writer.py)."""

from __future__ import annotations

import pytest

from drivers.arm_smmu_v3.cd import arm_smmu_get_cd_used
from drivers.arm_smmu_v3.entry import ZERO_QWORDS, Entry, Qwords
from drivers.arm_smmu_v3.regs import (
    STRTAB_STE_1_S1DSS_BYPASS,
    STRTAB_STE_1_S1DSS_SSID0,
)
from drivers.arm_smmu_v3.ste import (
    Ste,
    arm_smmu_get_ste_update_safe,
    arm_smmu_get_ste_used,
    arm_smmu_make_abort_ste,
    arm_smmu_make_bypass_ste,
)
from drivers.arm_smmu_v3.writer import EntryWriter, arm_smmu_write_entry

from .kunit_fixtures import (
    FakeSmmu,
    Feat,
    make_cdtable_ste,
    make_s1_cd,
    make_s2_ste,
    make_sva_cd,
    make_sva_release_cd,
)

SSID0 = STRTAB_STE_1_S1DSS_SSID0
S1DSS_BYPASS = STRTAB_STE_1_S1DSS_BYPASS
SMMU = FakeSmmu()
ABORT = arm_smmu_make_abort_ste()
BYPASS = arm_smmu_make_bypass_ste(SMMU)
ZERO_CD = Entry(ZERO_QWORDS)


class KunitWriter(EntryWriter):
    """The test writer: its sync checks the entry is equivalent to the initial or the
    target entry on the bits the *current* entry uses, and notes when q0 == 0."""

    def __init__(self, kind: str, entry: list[int], init: Qwords, target: Qwords,
                 update_safe: bool = True) -> None:
        self.kind = kind
        self.entry = entry
        self.init = init
        self.target = target
        self.update_safe = update_safe
        self.num_syncs = 0
        self.invalid_entry_written = False
        self.trace: list[list[int]] = []
        self._last = list(entry)

    def get_used(self, entry: Qwords) -> Qwords:
        if self.kind == "ste":
            return arm_smmu_get_ste_used(entry)
        return arm_smmu_get_cd_used(entry)

    def get_update_safe(self, cur: Qwords, target: Qwords) -> Qwords:
        if self.kind == "ste" and self.update_safe:
            return arm_smmu_get_ste_update_safe(cur, target)
        return ZERO_QWORDS

    def _differs(self, cur: Qwords, other: Qwords) -> bool:
        used = self.get_used(cur)
        safe = self.get_update_safe(cur, other)
        return any((cur[i] & used[i] & ~safe[i]) != (other[i] & used[i] & ~safe[i])
                   for i in range(8))

    def sync(self) -> None:
        self.num_syncs += 1
        self.trace.append([i for i in range(8) if self.entry[i] != self._last[i]])
        self._last = list(self.entry)
        cur: Qwords = tuple(self.entry)  # type: ignore[assignment]
        if cur[0] == 0:
            self.invalid_entry_written = True
            return
        # Hardware may observe the entry at any sync: it must mean init or target.
        assert not (self._differs(cur, self.init) and self._differs(cur, self.target)), (
            f"sync {self.num_syncs} observed an entry that is neither: "
            f"{' '.join(f'{x:016x}' for x in cur)}")


def expect_transition(kind: str, cur: Entry, target: Entry, num_syncs: int, hitless: bool,
                      trace: list[list[int]] | None = None, update_safe: bool = True) -> None:
    entry = list(cur.q)
    w = KunitWriter(kind, entry, cur.q, target.q, update_safe)
    arm_smmu_write_entry(w, entry, target)
    assert w.invalid_entry_written == (not hitless)
    assert w.num_syncs == num_syncs
    assert tuple(entry) == target.q
    if trace is not None:
        assert w.trace == trace


def ste(cur: Ste, target: Ste, n: int, hitless: bool = True,
        trace: list[list[int]] | None = None) -> None:
    expect_transition("ste", cur, target, n, hitless, trace)


def cdtable(s1dss: int, feat: Feat = Feat.ATS, dma: int | None = None) -> Ste:
    if dma is None:
        return make_cdtable_ste(s1dss, feat=feat)
    return make_cdtable_ste(s1dss, dma, feat)


# -- the 24 entry cases, in the kernel's order --------------------------------------------------
def test_01_write_ste_test_bypass_to_abort() -> None:
    ste(BYPASS, ABORT, 2, trace=[[0], [1]])


def test_02_write_ste_test_abort_to_bypass() -> None:
    ste(ABORT, BYPASS, 2, trace=[[1], [0]])


def test_03_write_ste_test_cdtable_to_abort() -> None:
    ste(cdtable(SSID0), ABORT, 2, trace=[[0], [1]])


def test_04_write_ste_test_abort_to_cdtable() -> None:
    ste(ABORT, cdtable(SSID0), 2, trace=[[1], [0]])


def test_05_write_ste_test_cdtable_to_bypass() -> None:
    ste(cdtable(SSID0), BYPASS, 3, trace=[[1], [0], [1]])


def test_06_write_ste_test_bypass_to_cdtable() -> None:
    ste(BYPASS, cdtable(SSID0), 3, trace=[[1], [0], [1]])


def test_07_write_ste_test_cdtable_s1dss_change() -> None:
    a, b = cdtable(SSID0), cdtable(S1DSS_BYPASS)
    ste(a, b, 1, trace=[[1]])
    ste(b, a, 1, trace=[[1]])


def test_08_write_ste_test_s1dssbypass_to_stebypass() -> None:
    ste(cdtable(S1DSS_BYPASS), BYPASS, 2, trace=[[0], [1]])


def test_09_write_ste_test_stebypass_to_s1dssbypass() -> None:
    ste(BYPASS, cdtable(S1DSS_BYPASS), 2, trace=[[1], [0]])


def test_10_write_ste_test_s2_to_abort() -> None:
    ste(make_s2_ste(Feat.ATS), ABORT, 2, trace=[[0], [1, 2, 3]])


def test_11_write_ste_test_abort_to_s2() -> None:
    ste(ABORT, make_s2_ste(Feat.ATS), 2, trace=[[1, 2, 3], [0]])


def test_12_write_ste_test_s2_to_bypass() -> None:
    ste(make_s2_ste(Feat.ATS), BYPASS, 2, trace=[[0], [1, 2, 3]])


def test_13_write_ste_test_bypass_to_s2() -> None:
    ste(BYPASS, make_s2_ste(Feat.ATS), 2, trace=[[1, 2, 3], [0]])


def test_14_write_ste_test_s1_to_s2() -> None:
    ste(cdtable(SSID0), make_s2_ste(Feat.ATS), 3, trace=[[1, 2, 3], [0], [1]])


def test_15_write_ste_test_s2_to_s1() -> None:
    ste(make_s2_ste(Feat.ATS), cdtable(SSID0), 3, trace=[[1], [0], [1, 2, 3]])


def test_16_write_ste_test_non_hitless() -> None:
    # Changing the CD table pointer and S1DSS together touches used bits of q0 and q1.
    a = cdtable(SSID0)
    b = cdtable(S1DSS_BYPASS, dma=0x4B4B4B4B4B)
    ste(a, b, 3, hitless=False, trace=[[0], [1], [0]])


def test_17_write_cd_test_s1_clear() -> None:
    cd = make_s1_cd(1997)
    expect_transition("cd", ZERO_CD, cd, 2, hitless=False, trace=[[1, 3], [0]])
    expect_transition("cd", cd, ZERO_CD, 2, hitless=False, trace=[[0], [1, 3]])


def test_18_write_cd_test_s1_change_asid() -> None:
    a, b = make_s1_cd(778), make_s1_cd(1997)
    expect_transition("cd", a, b, 1, hitless=True, trace=[[0]])
    expect_transition("cd", b, a, 1, hitless=True, trace=[[0]])


def test_19_write_ste_test_s1_to_s2_stall() -> None:
    ste(cdtable(SSID0, Feat.STALL), make_s2_ste(Feat.STALL), 3)


def test_20_write_ste_test_s2_to_s1_stall() -> None:
    ste(make_s2_ste(Feat.STALL), cdtable(SSID0, Feat.STALL), 3)


def test_21_write_ste_test_nested_s1dssbypass_to_s1bypass() -> None:
    # "An additional sync to unset ignored bits: EATS and MEV".
    nested = cdtable(S1DSS_BYPASS, Feat.ATS | Feat.NESTED)
    ste(nested, make_s2_ste(Feat.NONE), 3, trace=[[1], [0], [1]])


def test_22_write_ste_test_nested_s1bypass_to_s1dssbypass() -> None:
    nested = cdtable(S1DSS_BYPASS, Feat.ATS | Feat.NESTED)
    ste(make_s2_ste(Feat.NONE), nested, 2, trace=[[1], [0]])


def test_23_write_cd_test_sva_clear() -> None:
    cd = make_sva_cd(1997)
    expect_transition("cd", ZERO_CD, cd, 2, hitless=False)
    expect_transition("cd", cd, ZERO_CD, 2, hitless=False)


def test_24_write_cd_test_sva_release() -> None:
    sva, release = make_sva_cd(1997), make_sva_release_cd(1997)
    expect_transition("cd", sva, release, 2, hitless=True, trace=[[0], [1]])
    expect_transition("cd", release, sva, 2, hitless=True, trace=[[1], [0]])


# -- what the update-safe bits buy (smmuv3.md §14): older kernels break these updates ---------
@pytest.mark.parametrize(("forward", "syncs_with"), [(True, 3), (False, 2)])
def test_nested_transitions_without_update_safe_are_breaking(forward: bool,
                                                             syncs_with: int) -> None:
    nested = cdtable(S1DSS_BYPASS, Feat.ATS | Feat.NESTED)
    s2 = make_s2_ste(Feat.NONE)
    cur, target = (nested, s2) if forward else (s2, nested)
    expect_transition("ste", cur, target, syncs_with, hitless=True)
    expect_transition("ste", cur, target, 3, hitless=False, trace=[[0], [1], [0]],
                      update_safe=False)


def test_writer_rejects_target_with_unused_bits() -> None:
    # An abort STE with a stray S2TTB: the driver built an entry that is not canonical.
    bad = ABORT.with_qword(3, 0x1000)
    with pytest.raises(AssertionError):
        expect_transition("ste", BYPASS, bad, 2, hitless=True)


def test_writer_same_entry_no_sync() -> None:
    expect_transition("ste", BYPASS, BYPASS, 0, hitless=True, trace=[])

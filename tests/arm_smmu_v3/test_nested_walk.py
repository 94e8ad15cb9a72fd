"""The nested walk: a stage-1 table access is a stage-2 access, for reads (table fetches,
whose stage-2 translations the TLB keeps) and for writes (HTTU updates of a guest
descriptor). Issue #12 item 7 and the stage-2 caching rules of issue #14."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.arm_smmu_v3.cmdq import (
    Cmd,
    arm_smmu_make_cmd_atc_inv_all,
    arm_smmu_make_cmd_cfgi_all,
    arm_smmu_make_cmd_cfgi_cd,
    arm_smmu_make_cmd_cfgi_ste,
    arm_smmu_make_cmd_op,
    arm_smmu_make_cmd_tlbi,
)
from drivers.arm_smmu_v3.hw import translate
from drivers.arm_smmu_v3.regs import (
    CMDQ_OP_CFGI_CD_ALL,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_NH_VAA,
    CMDQ_OP_TLBI_NSNH_ALL,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
    CTXDESC_CD_0_TCR_HA,
)
from iommu_core.pgtable.walk import WalkResult, walk
from iommu_sim import DmaFault
from iommufd import uapi as u

from .harness import BareSmmu, tlbi_va
from .hwutil import GUEST_IPA, nested_stream, page
from .vmm import CD_GPA, DEV, VSID, Vmm, guest_vste

AF = 1 << 10  # stage-1 leaf Access Flag
GVA = 0x7F00_0000_0000
RW = 3


# ==========================================================================================
# HTTU through stage 2 (issue #12 item 7)
# ==========================================================================================
@pytest.fixture
def vmm() -> Iterator[Vmm]:
    vm = Vmm(area=0x10000)  # guest RAM in 64 KiB IOAS areas
    yield vm
    vm.close()


def _guest_with_af_clear(vm: Vmm) -> int:
    """A nested guest with HTTU (CD.HA) whose leaf for GVA has AF=0; returns the GPA of
    that leaf descriptor."""
    parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vm.viommu_alloc(parent)
    vm.vdevice_alloc(viommu, VSID)
    s1 = vm.guest_s1()
    cd = vm.guest_cd(s1, asid=3)
    vm.ram.write(CD_GPA, (cd.q[0] | CTXDESC_CD_0_TCR_HA).to_bytes(8, "little"))
    s1.map(GVA, 0x10000, 4096, RW)
    r = walk(s1.fmt, vm.ram.read_u64, s1.root, GVA)
    assert isinstance(r, WalkResult)
    vm.ram.write_u64(r.desc_addr, r.desc & ~AF)
    vm.attach(vm.nested(viommu, guest_vste()))
    return r.desc_addr


def test_httu_af_update_through_a_read_only_stage2_faults(vmm: Vmm) -> None:
    desc_gpa = _guest_with_af_clear(vmm)
    desc = vmm.ram.read_u64(desc_gpa)
    area = desc_gpa & ~0xFFFF
    # The VMM maps the 64 KiB holding the guest's leaf table read-only.
    vmm.unmap(area, 0x10000)
    vmm.map(vmm.ram_va + area, 0x10000, area, u.IOMMU_IOAS_MAP_READABLE)
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 4)
    f = ei.value
    assert f.reason == "F_PERMISSION" and f.detail["stage"] == 2
    assert f.detail["class"] == 1 and f.detail["ipa"] == desc_gpa  # CLASS=TT
    evt = f.detail["record"]
    assert evt[0] & 0xFF == 0x13
    assert evt[1] >> 39 & 1 and evt[1] >> 40 & 3 == 1  # S2, CLASS=TT
    assert not evt[1] >> 44 & 1  # TTRnW=0: the fault was on a write of the table
    assert evt[1] >> 35 & 1  # RnW=1: the transaction itself was a read
    assert evt[2] == GVA and evt[3] & ~0xFFF == desc_gpa & ~0xFFF
    assert vmm.ram.read_u64(desc_gpa) == desc  # AF still clear: nothing was written
    # Writable again: the same DMA sets AF in the guest's descriptor.
    vmm.unmap(area, 0x10000)
    vmm.map(vmm.ram_va + area, 0x10000, area)
    assert vmm.m.dma_read(DEV, GVA, 4) == bytes(4)
    assert vmm.ram.read_u64(desc_gpa) == desc | AF


def test_httu_af_update_through_writable_stage2(vmm: Vmm) -> None:
    desc_gpa = _guest_with_af_clear(vmm)
    desc = vmm.ram.read_u64(desc_gpa)
    vmm.m.dma_read(DEV, GVA, 4)
    assert vmm.ram.read_u64(desc_gpa) == desc | AF


def _two_pages_af_clear_on_second(b: BareSmmu) -> tuple[Any, Any, int, int, int]:
    """Nested with HTTU; GVA 0x1000 (AF=1) and 0x2000 (AF=0) share a leaf table.
    Returns (stage 1, stage 2, RAM PA, leaf descriptor IPA of 0x2000, its value)."""
    s1, s2, ram = nested_stream(b, ha=True)
    data = GUEST_IPA + 15 * 4096
    s1.map(0x1000, data, 4096, RW)
    s1.map(0x2000, data, 4096, RW)
    r = walk(s1.fmt, s1.mem.read_u64, s1.root, 0x2000)
    assert isinstance(r, WalkResult)
    s1.mem.write_u64(r.desc_addr, r.desc & ~AF)
    return s1, s2, ram, r.desc_addr, r.desc & ~AF


def _table_read_only(b: BareSmmu, s2: Any, ram: int, table_ipa: int) -> None:
    s2.unmap(table_ipa, 4096)
    s2.map(table_ipa, ram + table_ipa - GUEST_IPA, 4096, 1)


def test_httu_update_needs_stage2_write_even_with_the_table_cached() -> None:
    """The fetch caches the table page's read-only stage-2 translation; the HTTU write
    is still checked for stage-2 write permission and faults."""
    b = BareSmmu()
    s1, s2, ram, desc_ipa, desc = _two_pages_af_clear_on_second(b)
    _table_read_only(b, s2, ram, desc_ipa & ~0xFFF)
    b.cmd(tlbi_va(CMDQ_OP_TLBI_S2_IPA, desc_ipa, vmid=9))
    dev = b.device(5)
    assert b.read(dev, 0x1000, 1) == b"\0"  # AF already set: a read-only walk is fine
    with pytest.raises(DmaFault) as ei:
        b.read(dev, 0x2000, 1)
    assert ei.value.reason == "F_PERMISSION" and ei.value.detail["class"] == 1
    assert s1.mem.read_u64(desc_ipa) == desc


def test_httu_write_uses_a_stale_writable_stage2_entry_until_invalidated() -> None:
    """The host makes the table page read-only without TLBI_S2_IPA: the cached
    writable stage-2 translation still lets the update through (stale, as the
    architecture allows); after the invalidation the update faults."""
    b = BareSmmu()
    s1, s2, ram, desc_ipa, desc = _two_pages_af_clear_on_second(b)
    dev = b.device(5)
    b.read(dev, 0x1000, 1)  # caches the table page's read-write stage-2 translation
    _table_read_only(b, s2, ram, desc_ipa & ~0xFFF)
    b.read(dev, 0x2000, 1)
    assert s1.mem.read_u64(desc_ipa) == desc | AF  # through the stale entry
    s1.mem.write_u64(desc_ipa, desc)
    b.cmd(tlbi_va(CMDQ_OP_TLBI_S2_IPA, desc_ipa, vmid=9))
    b.cmd(tlbi_va(CMDQ_OP_TLBI_NH_VA, 0x2000, asid=3, vmid=9))
    with pytest.raises(DmaFault) as ei:
        b.read(dev, 0x2000, 1)
    assert ei.value.reason == "F_PERMISSION" and ei.value.detail["stage"] == 2
    assert s1.mem.read_u64(desc_ipa) == desc


# ==========================================================================================
# A nested TLB miss reuses the cached stage-2 translations of the table pages
# ==========================================================================================
@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The stage (1 or 2) of every table walk the SMMU model starts."""
    seen: list[int] = []

    def counting(fmt: Any, *args: Any, **kw: Any) -> Any:
        seen.append(fmt.stage)
        return walk(fmt, *args, **kw)

    monkeypatch.setattr(translate, "walk", counting)
    return seen


def test_nested_miss_walks_stage2_once(walks: list[int]) -> None:
    b = BareSmmu()
    s1, _s2, _ram = nested_stream(b)
    for i in range(4):
        s1.map(0x1000 * (i + 1), GUEST_IPA + (12 + i) * 4096, 4096, RW)
    dev = b.device(5)
    b.read(dev, 0x1000, 1)
    first = list(walks)
    # The first miss translates the CD page and every table level through stage 2.
    assert first.count(2) >= 5 and first.count(1) == 1
    for i in range(1, 4):
        walks.clear()
        b.read(dev, 0x1000 * (i + 1), 1)
        # Later misses: one stage-1 walk over cached table translations, and the
        # stage-2 walk of the output IPA only.
        assert walks == [1, 2], i


# -- which invalidations drop the cached stage-2 translation of a table page --------------
VMID, ASID, SID = 9, 3, 5


def _stale_table_translation(b: BareSmmu) -> tuple[Callable[[], bytes], int]:
    """The host moves the guest page holding the leaf table to a copy in which GVA
    0x2000 points elsewhere, without invalidating. Returns a probe (drop the combined
    entry for 0x2000 with TLBI_NH_VA, which never touches stage-2 entries, then read it:
    b"\\x22" through the old table, b"\\x33" through the new) and the table's IPA."""
    s1, s2, ram = nested_stream(b, vmid=VMID, sid=SID)
    for i, fill in ((12, 0x11), (13, 0x22), (14, 0x33)):
        b.mem.fill(ram + i * 4096, fill, 4096)
    s1.map(0x1000, GUEST_IPA + 12 * 4096, 4096, RW)
    s1.map(0x2000, GUEST_IPA + 13 * 4096, 4096, RW)
    dev = b.device(SID)
    assert b.read(dev, 0x1000, 1) == b"\x11"
    r = walk(s1.fmt, s1.mem.read_u64, s1.root, 0x2000)
    assert isinstance(r, WalkResult)
    table_ipa = r.desc_addr & ~0xFFF
    moved = page(b)
    b.mem.write(moved, b.mem.read(ram + table_ipa - GUEST_IPA, 4096))
    slot = moved + (r.desc_addr & 0xFFF)
    b.mem.write_u64(slot, (r.desc & ~0xFFFF_FFFF_F000) | (GUEST_IPA + 14 * 4096))
    s2.unmap(table_ipa, 4096)
    s2.map(table_ipa, moved, 4096, RW)

    def probe() -> bytes:
        b.cmd(tlbi_va(CMDQ_OP_TLBI_NH_VA, 0x2000, asid=ASID, vmid=VMID))
        return b.read(dev, 0x2000, 1)

    return probe, table_ipa


KEEP: dict[str, Callable[[int], Cmd]] = {
    "TLBI_NH_ALL": lambda ipa: arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ALL, 0, VMID),
    "TLBI_NH_ASID": lambda ipa: arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_NH_ASID, ASID, VMID),
    "TLBI_NH_VA of the table IPA": lambda ipa: tlbi_va(CMDQ_OP_TLBI_NH_VA, ipa, asid=ASID,
                                                       vmid=VMID),
    "TLBI_NH_VAA of the table IPA": lambda ipa: tlbi_va(CMDQ_OP_TLBI_NH_VAA, ipa, vmid=VMID),
    "TLBI_S2_IPA of another IPA": lambda ipa: tlbi_va(CMDQ_OP_TLBI_S2_IPA, ipa + 0x1000,
                                                      vmid=VMID),
    "TLBI_S2_IPA of another VMID": lambda ipa: tlbi_va(CMDQ_OP_TLBI_S2_IPA, ipa,
                                                       vmid=VMID + 1),
    "TLBI_S12_VMALL of another VMID": lambda ipa: arm_smmu_make_cmd_tlbi(
        CMDQ_OP_TLBI_S12_VMALL, 0, VMID + 1),
    "CFGI_STE": lambda ipa: arm_smmu_make_cmd_cfgi_ste(SID, True),
    "CFGI_CD": lambda ipa: arm_smmu_make_cmd_cfgi_cd(SID, 0, False),
    "CFGI_CD_ALL": lambda ipa: (CMDQ_OP_CFGI_CD_ALL | SID << 32, 0),
    "CFGI_ALL": lambda ipa: arm_smmu_make_cmd_cfgi_all(),
    "ATC_INV": lambda ipa: arm_smmu_make_cmd_atc_inv_all(SID, 0),
}
DROP: dict[str, Callable[[int], Cmd]] = {
    "TLBI_S2_IPA": lambda ipa: tlbi_va(CMDQ_OP_TLBI_S2_IPA, ipa, vmid=VMID),
    "TLBI_S2_IPA range": lambda ipa: tlbi_va(CMDQ_OP_TLBI_S2_IPA, ipa - 0x1000, vmid=VMID,
                                             tg=1, num=3, ttl=3),  # 4 pages
    "TLBI_S2_IPA non-leaf": lambda ipa: tlbi_va(CMDQ_OP_TLBI_S2_IPA, ipa, vmid=VMID,
                                                leaf=False),
    "TLBI_S12_VMALL": lambda ipa: arm_smmu_make_cmd_tlbi(CMDQ_OP_TLBI_S12_VMALL, 0, VMID),
    "TLBI_NSNH_ALL": lambda ipa: arm_smmu_make_cmd_op(CMDQ_OP_TLBI_NSNH_ALL),
}


@pytest.mark.parametrize("name", sorted(KEEP))
def test_stage2_table_translation_survives(name: str) -> None:
    """A missing parent invalidation leaves the stale walk visible: these commands do
    not name the stage-2 entry, so the walk still reads the old table."""
    b = BareSmmu()
    probe, table_ipa = _stale_table_translation(b)
    assert probe() == b"\x22"
    b.cmd(KEEP[name](table_ipa))
    assert probe() == b"\x22", name
    assert b.event_ids() == []


@pytest.mark.parametrize("name", sorted(DROP))
def test_stage2_table_translation_dropped(name: str) -> None:
    b = BareSmmu()
    probe, table_ipa = _stale_table_translation(b)
    assert probe() == b"\x22"
    b.cmd(DROP[name](table_ipa))
    assert probe() == b"\x33", name

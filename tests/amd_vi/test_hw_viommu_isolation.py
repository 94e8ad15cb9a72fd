"""Isolation through the AMD HW-vIOMMU (prototype), as a property: whatever a guest writes
into its command buffer (any commands, valid or garbage, naming anyone's IDs and any
completion-wait address) and into the VF page its VMM mapped (any register, any value, in
any order, with or without stepping over errors), it cannot invalidate, read or reach
anything of another VM or of the host:

* another VM's stale translation stays stale, and every cached translation, page
  directory, GCR3 entry and DTE the unit holds outside the guest's own hDomIDs stays,
  exactly; a device IOTLB invalidation only ever names the guest's own device;
* no physical page outside the guest's own RAM changes (no completion-wait store, no
  event record);
* no register of another GuestID changes, nor the hypervisor's page of its own, and its
  own page reads back nothing but its pointers and its status and control bits;
* nothing lands in the host's event log, nor in another VM's vEVENTQ; every failure is
  an errno.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_COMPLETE_PPR,
    CMD_INV_ALL,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOTLB_PAGES,
    CMD_INV_IRT,
)
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from drivers.amd_vi.hw.viommu import AmdViommuHw
from drivers.amd_vi.viommu_regs import (
    VF_CMD_HEAD,
    VF_CMD_TAIL,
    VF_CONTROL,
    VF_EVT_HEAD,
    VF_EVT_TAIL,
    VF_PAGE,
    VF_STATUS,
)

from .hwv_vmm import GDEVID, GDOMID, GVA, NPAGES, PAGE, GuestCmdBuf, HwvVm, machine

DEV_A, DEV_B, HOST_DEV = "0000:20:00.0", "0000:21:00.0", "0000:22:00.0"
U32 = st.integers(0, 0xFFFF_FFFF)
ALLOWED = (CMD_INV_IOMMU_PAGES, CMD_INV_IOTLB_PAGES, CMD_COMPL_WAIT)
OTHER = (CMD_INV_ALL, CMD_INV_DEV_ENTRY, CMD_INV_IRT, CMD_COMPLETE_PPR, 0, 0xF)
#: IDs aimed at everyone: the guest's own, the hDomIDs and DeviceIDs of the others (the
#: unit numbers them from 1; the devices are 0x2000, 0x2100, 0x2200), garbage.
DOMIDS = (GDOMID, 1, 2, 3, 4, 0x77, 0xFFFF)
DEVIDS = (GDEVID, 0x2000, 0x2100, 0x2200, 0x0200, 0xFFFF)


@st.composite
def commands(draw: st.DrawFn) -> tuple[int, ...]:
    kind = draw(st.sampled_from(["allowed", "allowed", "allowed", "other", "garbage"]))
    if kind == "garbage":
        return tuple(draw(U32) for _ in range(4))
    op = draw(st.sampled_from(ALLOWED if kind == "allowed" else OTHER))
    d2 = draw(st.sampled_from([GVA | 3, 0xFFFF_F003, 0xFFFF_F001, 7, draw(U32)]))
    d3 = draw(st.sampled_from([0, 0x7FFF_FFFF, draw(U32)]))
    if op == CMD_COMPL_WAIT:
        # Store anywhere: the guest's RAM, beyond it, any physical-looking address.
        addr = draw(st.sampled_from([0x3D000, NPAGES * PAGE, 0x1000_0000,
                                     draw(st.integers(0, (1 << 52) - 1))])) & ~7
        return ((addr & 0xFFFF_FFF8) | draw(st.integers(0, 3)),
                (op << 28) | (addr >> 32 & 0xFFFFF), draw(U32), draw(U32))
    pasid = draw(st.sampled_from([0, 1, draw(st.integers(0, 0xFFFFF))]))
    if op == CMD_INV_IOTLB_PAGES:
        dev = draw(st.sampled_from(DEVIDS))
        return (dev | (pasid >> 8 & 0xFF) << 16, (op << 28) | (pasid & 0xFF) << 16 | dev,
                d2, d3)
    dom = draw(st.sampled_from(DOMIDS)) if op != CMD_INV_DEV_ENTRY else 0
    dev = draw(st.sampled_from(DEVIDS))
    return (pasid if op == CMD_INV_IOMMU_PAGES else dev, (op << 28) | dom, d2, d3)


REGS = (VF_CMD_HEAD, VF_CMD_TAIL, VF_EVT_HEAD, VF_EVT_TAIL, VF_STATUS, VF_CONTROL)


@st.composite
def actions(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["cmds", "cmds", "reg", "reg", "any", "skip"]))
        if kind == "cmds":
            out.append(("cmds", draw(st.lists(commands(), min_size=1, max_size=6))))
        elif kind == "reg":
            out.append(("reg", draw(st.sampled_from(REGS)) + draw(st.sampled_from([0, 4])),
                        draw(st.sampled_from([0, 0x10, 0x1000, 0xFFF0, 0x7_FFF0, 0x1014,
                                              draw(U32)]))))
        elif kind == "any":
            out.append(("reg", draw(st.integers(0, VF_PAGE // 4 - 1)) * 4, draw(U32)))
        else:
            out.append(("skip",))
    return out


def _frames(mem: Any, skip: set[int]) -> dict[int, bytes]:
    return {pfn: hashlib.blake2b(bytes(f), digest_size=16).digest()
            for pfn, f in mem.frames.items() if pfn not in skip}


def _caches(hw: AmdIommuHw, own: set[int]) -> tuple[Any, ...]:
    """What the unit caches outside the hDomIDs ``own`` (tags carry the DomainID in their
    low 16 bits)."""
    def keep(cache: dict[int, Any]) -> dict[int, Any]:
        return {t: (dict(v) if isinstance(v, dict) else v) for t, v in cache.items()
                if t & 0xFFFF not in own}

    return (keep(hw._iotlb), keep(hw._host_pde), keep(hw._guest_pde), keep(hw._gcr3),
            dict(hw._dte_cache))


def _regs(v: AmdViommuHw, guest: int) -> list[Any]:
    """Every GuestID's registers but the guest's own VF page."""
    return [(g.guest_id, dict(g.ctl), None if g.guest_id == guest else (dict(g.vf), g.gcontrol))
            for g in v.guests]


def _page_shows_only_its_own(page: bytes) -> None:
    """What the guest can read: its pointers (byte offsets into its 512 KiB at most
    rings), its status and control bits, zeros elsewhere; never an address of the host."""
    words = {off: int.from_bytes(page[off:off + 4], "little") for off in range(0, VF_PAGE, 4)}
    for off, w in words.items():
        if off in (VF_CMD_HEAD, VF_CMD_TAIL, VF_EVT_HEAD, VF_EVT_TAIL):
            assert w < 1 << 19 and not w & 15, f"pointer {off:#x} reads {w:#x}"
        elif off == VF_STATUS:
            assert not w & ~0b111, f"status reads {w:#x}"
        elif off == VF_CONTROL:
            assert not w & ~((1 << 12) | 0b11100), f"control reads {w:#x}"
        else:
            assert w == 0, f"offset {off:#x} of the guest's page reads {w:#x}"


def run_guest(acts: list[tuple[Any, ...]]) -> None:
    m = machine(DEV_A, DEV_B, HOST_DEV)
    try:
        hw = m.platform.iommus["amdvi0"]
        assert isinstance(hw, AmdIommuHw) and hw.viommu is not None
        # The host's own DMA: a device on a paging domain of its own iommufd.
        host = HwvVm(m, HOST_DEV)
        host.attach(host.parent)
        for off in range(0, 8 * PAGE, PAGE):
            m.dma_read(HOST_DEV, off, 1)
        a, b = HwvVm(m, DEV_A), HwvVm(m, DEV_B)  # both use gDomID 0x33, gDeviceID 0x100
        a.stale_guest()
        b.stale_guest()
        efd_b = b.veventq()
        q = GuestCmdBuf(a)
        own = {a.hdomid()}
        guest_a = {m.mm.va_to_pa(a.ram + off) >> 12 for off in range(0, NPAGES * PAGE, PAGE)}
        host_events = len(m.core.iommus["amdvi0"].priv.events)
        n_iotlb = len(hw.iotlb_invalidations)
        before = (_frames(m.platform.mem, guest_a), _caches(hw, own),
                  _regs(hw.viommu, a.guest_id))
        for act in acts:
            try:
                if act[0] == "cmds":
                    q.submit(act[1])
                elif act[0] == "reg":
                    m.mem_write(a.vf + act[1], int(act[2]).to_bytes(4, "little"))
                else:
                    q.skip()
            except OSError:
                pass  # an errno is an acceptable answer; nothing else is
        after = (_frames(m.platform.mem, guest_a), _caches(hw, own),
                 _regs(hw.viommu, a.guest_id))
        changed = {p for p in set(before[0]) | set(after[0])
                   if before[0].get(p) != after[0].get(p)}
        assert not changed, f"the guest's commands wrote outside its RAM: {sorted(changed)[:4]}"
        assert before[1] == after[1], "the guest invalidated something of another VM or the host"
        assert before[2] == after[2], "the guest changed registers not its own"
        assert {i.devid for i in list(hw.iotlb_invalidations)[n_iotlb:]} <= {
            m.device(DEV_A).rid}, "a device IOTLB invalidation reached another device"
        assert len(m.core.iommus["amdvi0"].priv.events) == host_events
        assert b.vevents(efd_b) == [], "VM B's VMM heard A's guest interrupt"
        _page_shows_only_its_own(m.mem_read(a.vf, VF_PAGE))
        assert m.dma_read(DEV_B, GVA, 4) == b"OLD!", "VM B's stale entry went"
    finally:
        m.shutdown()
    assert m.kernel_pages_in_use == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions())
def test_a_guest_command_buffer_reaches_nothing_of_others(acts: list[tuple[Any, ...]]
                                                          ) -> None:
    run_guest(acts)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions())
def test_a_guest_command_buffer_reaches_nothing_of_others_long(
        acts: list[tuple[Any, ...]]) -> None:
    run_guest(acts)


def test_the_property_can_fail() -> None:
    """Without the guest checks and the maps a guest's INVALIDATE_IOMMU_ALL reaches
    everyone: seen."""
    orig = AmdViommuHw.execute

    def leaky(self: AmdViommuHw, gs: Any, d: tuple[int, ...]) -> bool:
        return self.hw.exec_cmd(d)

    AmdViommuHw.execute = leaky  # type: ignore[method-assign]
    try:
        with pytest.raises(AssertionError, match="invalidated something"):
            run_guest([("cmds", [(0, CMD_INV_ALL << 28, 0, 0)])])
    finally:
        AmdViommuHw.execute = orig  # type: ignore[method-assign]


def test_the_property_sees_a_stray_store() -> None:
    """A completion-wait store not translated through the guest's stage 2 lands on a
    host page: seen."""
    orig = AmdViommuHw.gpa_to_spa

    def untranslated(self: AmdViommuHw, gs: Any, gpa: int) -> int:
        return gpa

    AmdViommuHw.gpa_to_spa = untranslated  # type: ignore[method-assign]
    try:
        with pytest.raises(AssertionError, match="outside its RAM"):
            run_guest([("cmds", [((0x1000 | 1), CMD_COMPL_WAIT << 28, 0xDEAD, 0)])])
    finally:
        AmdViommuHw.gpa_to_spa = orig  # type: ignore[method-assign]

"""Isolation through the Tegra241 CMDQV, as a property: whatever a guest writes into its
VCMDQs (any commands, valid or garbage) and into the VINTF page its VMM mapped (any
register, any value, in any order, with or without recovering from errors), it cannot
invalidate, read or reach anything of another VM or of the host:

* another VM's stale translation stays stale and the host's cached translations and ATC
  entries all stay, exactly (nothing outside the guest's VMID and SIDs is invalidated);
* no physical page outside the guest's own RAM changes (no MSI write, no command effect);
* no register of another VINTF, and no VINTF configuration or SID pair (its own
  included), changes;
* every failure is an errno, never another exception.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.arm_smmu_v3.hw.cmdqv import Tegra241CmdqvHw
from drivers.arm_smmu_v3.regs import (
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_ALL,
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_PREFETCH_CFG,
    CMDQ_OP_TLBI_EL2_ALL,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_NH_VAA,
    CMDQ_OP_TLBI_NSNH_ALL,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
)
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    SZ_64K,
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VINTF,
    TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE,
    TEGRA241_VINTF_STRIDE,
    TEGRA241_VINTFi_PAGE0,
)
from iommufd import uapi as u

from .cmdqv_vmm import ASID, CmdqvVmm, GuestVcmdq
from .vmm import DEV, GUEST, PAGE, VSID, guest_vste

DEV2 = "0000:00:02.0"
HOST_DEV = "0000:00:03.0"
GVA = 0x7F00_0000_0000
OLD, NEW = 0x10000, 0x20000
QGPAS = (0x30000, 0x31000)

U64 = st.integers(0, (1 << 64) - 1)
ALLOWED = (CMDQ_OP_TLBI_NH_VA, CMDQ_OP_TLBI_NH_ASID, CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC)
OTHER = (CMDQ_OP_TLBI_NH_ALL, CMDQ_OP_TLBI_NH_VAA, CMDQ_OP_TLBI_S12_VMALL,
         CMDQ_OP_TLBI_S2_IPA, CMDQ_OP_TLBI_NSNH_ALL, CMDQ_OP_TLBI_EL2_ALL, CMDQ_OP_CFGI_STE,
         CMDQ_OP_CFGI_ALL, CMDQ_OP_CFGI_CD, CMDQ_OP_PREFETCH_CFG)


@st.composite
def commands(draw: st.DrawFn, sids: tuple[int, ...]) -> tuple[int, int]:
    kind = draw(st.sampled_from(["allowed", "allowed", "allowed", "other", "garbage"]))
    if kind == "garbage":
        return draw(U64), draw(U64)
    op = draw(st.sampled_from(ALLOWED if kind == "allowed" else OTHER))
    # Fields aimed at the others: their ASID, any VMID, their SIDs, CS=IRQ syncs.
    q0 = op | draw(st.sampled_from([ASID, ASID, draw(st.integers(0, 0xFFFF))])) << 48
    q0 |= draw(st.sampled_from([0, 0, draw(st.integers(0, 0xFFFF))])) << 32
    if op in (CMDQ_OP_ATC_INV, CMDQ_OP_CFGI_CD, CMDQ_OP_CFGI_STE, CMDQ_OP_PREFETCH_CFG):
        q0 = op | draw(st.sampled_from(sids)) << 32
    if op == CMDQ_OP_CMD_SYNC:
        q0 = op | draw(st.integers(0, 3)) << 12
    q1 = draw(st.sampled_from([GVA | 1, 52, 0, 31, draw(U64)]))
    return q0, q1


REGS = (TEGRA241_VCMDQ_CONS, TEGRA241_VCMDQ_PROD, TEGRA241_VCMDQ_CONFIG,
        TEGRA241_VCMDQ_GERROR, TEGRA241_VCMDQ_GERRORN)


@st.composite
def actions(draw: st.DrawFn, sids: tuple[int, ...]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["cmds", "cmds", "reg", "reg", "any", "recover"]))
        lidx = draw(st.integers(0, 3))
        if kind == "cmds":
            out.append(("cmds", draw(st.integers(0, 1)),
                        draw(st.lists(commands(sids), min_size=1, max_size=6))))
        elif kind == "reg":
            out.append(("reg", 0x80 * lidx + draw(st.sampled_from(REGS)),
                        draw(st.sampled_from([0, 1, 2, 0x1F, draw(st.integers(0, 2**32 - 1))]))))
        elif kind == "any":
            out.append(("reg", draw(st.integers(0, SZ_64K // 4 - 1)) * 4,
                        draw(st.integers(0, 2**32 - 1))))
        else:
            out.append(("recover", draw(st.integers(0, 1))))
    return out


def _frames(mem: object, skip: set[int]) -> dict[int, bytes]:
    frames = mem.frames  # type: ignore[attr-defined]
    return {pfn: hashlib.blake2b(bytes(f), digest_size=16).digest()
            for pfn, f in frames.items() if pfn not in skip}


def _caches(hw: object, vmid: int, sid: int) -> tuple[object, object]:
    """Every cached translation but those of ``vmid``, and every ATC but ``sid``'s."""
    tlb = {tag: sorted((e.va, e.size, e.pa, e.perms) for e in sp.entries())
           for tag, sp in hw.tlb.tags.items() if tag[1] != vmid}  # type: ignore[attr-defined]
    atc = {s: repr(d) for s, d in hw.atc.by_sid.items() if s != sid}  # type: ignore[attr-defined]
    return tlb, atc


def run_guest(acts: list[tuple[object, ...]]) -> None:
    vm = CmdqvVmm((DEV, DEV2, HOST_DEV), dev_opts={DEV: {"ats": True}})
    m = vm.m
    try:
        # The host's own DMA: a paging domain, translations cached.
        host = vm.hwpt_alloc(vm.ioas, dev_id=vm.dev_ids[HOST_DEV])
        vm.attach(host, HOST_DEV)
        for off in range(0, 8 * PAGE, PAGE):
            m.dma_read(HOST_DEV, off, 1)
        vms = []
        for dev in (DEV, DEV2):
            parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT,
                                   dev_id=vm.dev_ids[dev])
            viommu, off, length = vm.viommu_cmdqv(parent, dev_id=vm.dev_ids[dev])
            vm.vdevice_alloc(viommu, VSID, dev_id=vm.dev_ids[dev])
            vms.append((dev, parent, viommu, m.mmap(length, vm.fd, off)))
        s1 = vm.guest_s1()  # one guest table for both: same GVA, same ASID
        vm.guest_cd(s1, asid=ASID)
        for dev, _parent, viommu, _va in vms:
            vm.attach(vm.nested(viommu, guest_vste(), dev_id=vm.dev_ids[dev]), dev)
        vm.ram.write(OLD, b"OLD!")
        vm.ram.write(NEW, b"NEW!")
        s1.map(GVA, OLD, PAGE, 3)
        for dev in (DEV, DEV2):
            assert m.dma_read(dev, GVA, 4) == b"OLD!"
        s1.unmap(GVA, PAGE)
        s1.map(GVA, NEW, PAGE, 3)  # stale in both VMs now
        _dev, _parent, viommu_a, vintf_a = vms[0]
        queues = []
        for i, gpa in enumerate(QGPAS):
            vm.hw_queue(viommu_a, i, gpa)
            q = GuestVcmdq(vm, vintf_a, i, gpa)
            q.enable()
            queues.append(q)

        hw = m.platform.iommus["smmu0"]
        cmdqv = hw.cmdqv  # type: ignore[attr-defined]
        assert isinstance(cmdqv, Tegra241CmdqvHw)
        a_vintf = next(v for v in cmdqv.vintfs if v.idx and v.sid_replace[0] == m.device(
            DEV).rid)
        sid_a = m.device(DEV).rid
        for dev in (DEV, DEV2, HOST_DEV):  # what the endpoints' ATCs hold
            hw.atc.insert(m.device(dev).rid, -1, GVA, 0x1234_5000, 1)  # type: ignore[attr-defined]
        regs = hw.mmio["cmdqv"]
        # Other VINTFs: their pages and all their registers; the guest's own VINTF: its
        # configuration and SID pairs (its error map is its own business).
        watched = [(TEGRA241_VINTFi_PAGE0(v.idx), SZ_64K) for v in cmdqv.vintfs
                   if v.idx != a_vintf.idx]
        watched += [(TEGRA241_VINTF(v.idx), TEGRA241_VINTF_STRIDE if v.idx != a_vintf.idx
                     else TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE) for v in cmdqv.vintfs]
        guest_a = {m.mm.va_to_pa(vm.ram_va + off) >> 12 for off in range(0, GUEST, PAGE)}

        def regs_now() -> list[bytes]:
            return [regs.snapshot(b, n) for b, n in watched]  # type: ignore[attr-defined]

        before = (_frames(m.platform.mem, guest_a), _caches(hw, a_vintf.vmid, sid_a),
                  regs_now())
        for act in acts:
            try:
                if act[0] == "cmds":
                    q = queues[act[1]]  # type: ignore[index]
                    q.submit(act[2])  # type: ignore[arg-type]
                elif act[0] == "reg":
                    m.mem_write(vintf_a + act[1], int(act[2]).to_bytes(4, "little"))  # type: ignore[call-overload]
                else:
                    queues[act[1]].recover()  # type: ignore[index]
            except OSError:
                pass  # an errno is an acceptable answer; nothing else is
        after = (_frames(m.platform.mem, guest_a), _caches(hw, a_vintf.vmid, sid_a),
                 regs_now())
        changed = {p for p in set(before[0]) | set(after[0])
                   if before[0].get(p) != after[0].get(p)}
        assert not changed, f"the guest's commands wrote outside its RAM: {sorted(changed)[:4]}"
        assert before[1] == after[1], "the guest invalidated something of another VM or the host"
        assert before[2] == after[2], "the guest changed another VINTF or a VINTF's config"
        assert m.dma_read(DEV2, GVA, 4) == b"OLD!", "VM B's stale entry went"
    finally:
        vm.close()
    assert m.kernel_pages_in_use == 0


def _sids() -> tuple[int, ...]:
    # VSID (the guest's own), VSID + 1 (unmapped), the physical SIDs of every device.
    return (VSID, VSID + 1, 0x8, 0x10, 0x18, 0xFFFFF, 1 << 20)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions(_sids()))
def test_a_guest_vcmdq_reaches_nothing_of_others(acts: list[tuple[object, ...]]) -> None:
    run_guest(acts)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions(_sids()))
def test_a_guest_vcmdq_reaches_nothing_of_others_long(acts: list[tuple[object, ...]]) -> None:
    run_guest(acts)


def test_the_property_can_fail() -> None:
    """Without the VINTF's checks a guest's TLBI_NSNH_ALL reaches everyone: seen."""
    orig = Tegra241CmdqvHw.execute

    def leaky(self: Tegra241CmdqvHw, vq: object, vintf: object, q0: int, q1: int,
              slot: int) -> int:
        return self.smmu.cmd.execute(q0, q1, slot)  # no checks, no replacement

    Tegra241CmdqvHw.execute = leaky  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(AssertionError, match="invalidated something"):
            run_guest([("cmds", 0, [(CMDQ_OP_TLBI_NSNH_ALL, 0), (CMDQ_OP_CMD_SYNC, 0)])])
    finally:
        Tegra241CmdqvHw.execute = orig  # type: ignore[method-assign]

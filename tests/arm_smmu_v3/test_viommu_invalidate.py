"""IOMMU_HWPT_INVALIDATE on an SMMUv3 vIOMMU, line by line against Linux 7.3
(arm-smmu-v3-iommufd.c arm_vsmmu_cache_invalidate / arm_vsmmu_convert_user_cmd,
include/linux/iommu.h iommu_copy_struct_from_full_user_array), through the ioctl ABI.

7.3 looks only at the opcode and the vSID; every other bit reaches the command queue
and the SMMU model judges it by the specification (CERROR_ILL). The stricter behaviour of
the posted series "iommufd: Iterate the cache invalidation array in the core" (v6) is
the Machine option ``vsmmu_strict_cmds``; each rule below is checked under both."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from drivers.arm_smmu_v3.regs import ARM_SMMU_CMDQ_CONS, ARM_SMMU_CR0, CR0_CMDQEN
from iommufd import uapi as u

from .test_spec_audit import (
    ACCEPTED,
    ATC_INV,
    CFGI_CD,
    CFGI_CD_ALL,
    GVA,
    NH_ALL,
    NH_ASID,
    NH_VA,
    NH_VAA,
    NSNH_ALL,
    Guest,
    bits,
    err_of,
    master_of,
)
from .vmm import PAGE, VSID, Vmm

STRICT = "posted-v6"
VARIANTS = ("7.3", STRICT)
ILL = 1  # CMDQ_CONS.ERR: CERROR_ILL


def make_vm(variant: str, **options: object) -> Vmm:
    return Vmm(vsmmu_strict_cmds=variant == STRICT, **options)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def vmm(variant: str) -> Iterator[Vmm]:
    vm = make_vm(variant)
    yield vm
    vm.close()


def result(g: Guest, *cmds: tuple[int, int]) -> tuple[int, int, int]:
    """(errno or 0, entry_num read back, commands the SMMU refused with CERROR_ILL)."""
    cmdq = master_of(g.vm).smmu.cmdq
    before = len(cmdq.errors)
    try:
        err, n = 0, int(g.inv(*cmds).entry_num)
    except OSError as e:
        err, n = int(e.errno or 0), int(e.inv.entry_num)  # type: ignore[attr-defined]
    return err, n, sum(1 for idx, _ in cmdq.errors[before:] if idx == ILL)


def refused(variant: str, n: int = 1, done: int = 0) -> tuple[int, int, int]:
    """What a command 7.3 forwards and the SMMU finds illegal looks like: success with
    every entry counted, the GERROR handler having skipped it; the posted series
    refuses it with EIO before it is issued."""
    return (0, n, 1) if variant == "7.3" else (errno.EIO, done, 0)


OK = (0, 1, 0)


# ==========================================================================================
# The array: iommu_copy_struct_from_full_user_array
# ==========================================================================================
def test_empty_array(vmm: Vmm, variant: str) -> None:
    """7.3: EINVAL for entry_num 0 (after the type check), entry_num 0 read back; the
    posted series answers the probe 0."""
    g = Guest(vmm)
    assert result(g) == ((errno.EINVAL, 0, 0) if variant == "7.3" else (0, 0, 0))
    inv = u.iommu_hwpt_invalidate(size=32, hwpt_id=g.viommu, data_uptr=vmm.scratch,
                                  data_type=u.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                                  entry_len=16, entry_num=0)
    assert err_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == errno.EINVAL
    assert inv.entry_num == 0


def test_copy_rules(vmm: Vmm) -> None:
    g = Guest(vmm)
    inv = u.iommu_hwpt_invalidate(size=32, hwpt_id=g.viommu, data_uptr=vmm.scratch,
                                  data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                                  entry_len=8, entry_num=1)
    vmm.m.mem_write(vmm.scratch, NH_ALL.to_bytes(8, "little"))
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv)  # short entries are zero-filled
    assert inv.entry_num == 1
    # Longer entries need an all-zero tail; a bad one fails the copy: nothing converted.
    inv.entry_len, inv.entry_num = 24, 2
    vmm.m.mem_write(vmm.scratch, NH_ALL.to_bytes(24, "little") + bytes(16) + b"\1" + bytes(7))
    assert err_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == errno.E2BIG
    assert inv.entry_num == 0
    # A data pointer past the user's memory is EFAULT, entry_num 0.
    inv.entry_len, inv.entry_num, inv.data_uptr = 16, 2, 1 << 46
    assert err_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == errno.EFAULT
    assert inv.entry_num == 0


def test_whole_array_is_copied_before_anything_converts() -> None:
    """7.3 copies every entry before converting the first: an E2BIG in the last entry
    fails the call with nothing issued, a bad opcode before it notwithstanding."""
    vm = make_vm("7.3")
    g = Guest(vm)
    inv = u.iommu_hwpt_invalidate(size=32, hwpt_id=g.viommu, data_uptr=vm.scratch,
                                  data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                                  entry_len=24, entry_num=2)
    vm.m.mem_write(vm.scratch, (0x03).to_bytes(24, "little") + bytes(16) + b"\1" + bytes(7))
    assert err_of(vm.m.ioctl, vm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == errno.E2BIG
    assert inv.entry_num == 0
    vm.close()


# ==========================================================================================
# arm_vsmmu_convert_user_cmd: opcodes, VMID and SID rewriting, vSID lookup
# ==========================================================================================
def test_only_the_accepted_opcodes_pass(vmm: Vmm) -> None:
    g = Guest(vmm)
    for op in range(256):
        cmd = (op | VSID << 32, 0) if op in (ATC_INV, CFGI_CD, CFGI_CD_ALL) else (op, 0)
        if op in ACCEPTED:
            assert result(g, cmd) == OK, hex(op)
        else:
            assert result(g, cmd) == (errno.EIO, 0, 0), hex(op)


def test_unknown_vsid_is_eio(vmm: Vmm, variant: str) -> None:
    g = Guest(vmm)
    for op in (ATC_INV, CFGI_CD, CFGI_CD_ALL):
        assert result(g, (op | 0x99 << 32, 0)) == (errno.EIO, 0, 0)
        # 7.3: entry_num is the index of the failing entry, converted ones before it
        # counted though never issued; the posted series counts issued batches only.
        assert result(g, (NH_ALL, 0), (op | 0x99 << 32, 0)) == (
            errno.EIO, 1 if variant == "7.3" else 0, 0)


def test_vmid_is_the_vsmmus_whatever_the_guest_writes(vmm: Vmm) -> None:
    g = Guest(vmm)
    g.attach()
    for cmd in [(NH_ALL | 0x1234 << 32, 0), (NSNH_ALL, 0), (NH_ASID | 3 << 48 | 0x77 << 32, 0),
                (NH_VA | 3 << 48 | 0xFFFF << 32, GVA | 1), (NH_VAA, GVA)]:
        g.stale_setup()
        assert g.where() == "stale"
        g.inv(cmd)
        assert g.where() == "fresh", hex(cmd[0])
        g.s1.unmap(GVA, PAGE)
        g.inv((NSNH_ALL, 0))


def test_wrong_asid_leaves_a_stale_translation(vmm: Vmm) -> None:
    g = Guest(vmm)
    g.attach()
    g.stale_setup()
    g.inv((NH_VA | 4 << 48, GVA | 1), (NH_ASID | 4 << 48, 0), (NH_VA | 3 << 48, GVA + PAGE))
    assert g.where() == "stale"
    g.inv((NH_VA | 3 << 48, GVA))
    assert g.where() == "fresh"


def test_vsid_becomes_the_physical_sid(vmm: Vmm) -> None:
    from iommu_sim import DmaFault

    from .vmm import CD_GPA, DEV

    g = Guest(vmm)
    g.attach()
    g.map(GVA, 0x10000)
    vmm.m.dma_read(DEV, GVA, 1)
    vmm.ram.write(CD_GPA, bytes(64))  # the guest clears CD 0
    g.inv((NH_ALL, 0))
    vmm.m.dma_read(DEV, GVA, 1)  # still cached
    g.inv((CFGI_CD_ALL | VSID << 32, 0))
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 1)
    assert ei.value.reason == "C_BAD_CD"


# ==========================================================================================
# Other bits: 7.3 forwards them, the SMMU decides (CERROR_ILL); the posted series: EIO
# ==========================================================================================
# (base command, q0 bits the SMMU defines, q1 bits it defines, q0 bits the driver rewrites)
SID = bits(63, 32)
RULES: dict[str, tuple[tuple[int, int], int, int, int]] = {
    # Range fields with TG=4K and TTL=3 in the base: OR-ing any TG/TTL/NUM/SCALE bit
    # keeps a legal encoding.
    "NH_VA": ((NH_VA | 5 << 48, 0x1234_5000 | 1 << 10 | 3 << 8),
              bits(16, 12) | bits(24, 20) | bits(63, 32), 1 | bits(11, 8) | bits(63, 12), 0),
    "NH_VAA": ((NH_VAA, 0x1234_5000 | 1 << 10 | 3 << 8),
               bits(16, 12) | bits(24, 20) | bits(47, 32), 1 | bits(11, 8) | bits(63, 12), 0),
    "NH_ASID": ((NH_ASID | 5 << 48, 0), bits(63, 32), 0, 0),
    "NH_ALL": ((NH_ALL, 0), bits(47, 32), 0, 0),
    "NSNH_ALL": ((NSNH_ALL, 0), 0, 0, 0),
    "ATC_INV": ((ATC_INV | VSID << 32, 0x4000_0000), 1 << 9 | 1 << 11 | bits(31, 12),
                bits(5, 0) | bits(63, 12), SID),
    "CFGI_CD": ((CFGI_CD | VSID << 32, 0), bits(31, 12), 1, SID),
    "CFGI_CD_ALL": ((CFGI_CD_ALL | VSID << 32, 0), 0, 0, SID),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_reserved_bits_of_each_opcode(vmm: Vmm, variant: str, name: str) -> None:
    """Every bit the SMMU does not define for the opcode (RES0, SSec on the Non-secure
    queue) is CERROR_ILL at the SMMU under 7.3, EIO in the driver under the posted
    series. NSNH_ALL is rebuilt from scratch by the 7.3 conversion: its stray bits never
    reach the queue."""
    g = Guest(vmm)
    (q0, q1), ok0, ok1, skip0 = RULES[name]
    assert result(g, (q0, q1)) == OK
    bad = OK if name == "NSNH_ALL" and variant == "7.3" else refused(variant)
    for b in range(8, 64):
        if skip0 >> b & 1:
            continue
        assert result(g, (q0 | 1 << b, q1)) == (OK if ok0 >> b & 1 else bad), (name, "q0", b)
    for b in range(64):
        assert result(g, (q0, q1 | 1 << b)) == (OK if ok1 >> b & 1 else bad), (name, "q1", b)


TG4K, TG16K, TG64K = 1 << 10, 2 << 10, 3 << 10


@pytest.mark.parametrize("op", [NH_VA, NH_VAA])
@pytest.mark.parametrize(("q0", "q1", "ok"), [
    (0, 0x5000, True),  # no range: one address
    (1 << 12, 0x5000, False),  # NUM with TG=0: RES0
    (1 << 20, 0x5000, False),  # SCALE with TG=0
    (0, 0x5000 | 1 << 8, False),  # TTL with TG=0
    (0, 0x5000 | TG4K, False),  # TG!=0 with NUM=SCALE=TTL=0: reserved
    (0, 0x5000 | TG4K | 1 << 8, True),
    (3 << 12, 0x5000 | TG64K, True),
    (0, 0x5000 | TG16K | 1 << 8, False),  # TTL=1 with 16K needs IDR5.DS
    (0, 0x5000 | TG16K | 2 << 8, True),
    (1 << 25, 0x5000 | TG4K | 3 << 8, False),  # SCALE > 31 needs DS
])
def test_range_encodings(vmm: Vmm, variant: str, op: int, q0: int, q1: int, ok: bool) -> None:
    g = Guest(vmm)
    cmd = (op | q0 | (5 << 48 if op == NH_VA else 0), q1)
    assert result(g, cmd) == (OK if ok else refused(variant))


@pytest.mark.parametrize(("options", "legal", "illegal"), [
    # Range fields need IDR3.RIL.
    ({"ril": False}, [(NH_VA, 0x5000 | 1)], [(NH_VA, 0x5000 | TG4K | 3 << 8),
                                               (NH_VAA | 1 << 12, 0x5000)]),
    # 8-bit ASIDs: ASID[15:8] is RES0.
    ({"asid16": False}, [(NH_ASID | 0xFF << 48, 0)], [(NH_ASID | 0x100 << 48, 0),
                                                      (NH_VA | 0x100 << 48, 0x5000)]),
    # No substreams: SSID (and SSV, Global) are RES0.
    ({"ssidsize": 0}, [(CFGI_CD | VSID << 32, 1), (ATC_INV | VSID << 32, 52)],
     [(CFGI_CD | VSID << 32 | 1 << 12, 1), (ATC_INV | VSID << 32 | 1 << 11, 52)]),
    # An ATC_INV Size above 52 is Reserved.
    ({}, [(ATC_INV | VSID << 32, 52)], [(ATC_INV | VSID << 32, 53)]),
    # ATC_INV without ATS: 7.3 does not check FEAT_ATS; the SMMU finds it illegal.
    ({"ats": False}, [], [(ATC_INV | VSID << 32, 52)]),
])
def test_fields_of_features_the_smmu_lacks(variant: str, options: dict[str, object],
                                           legal: list[tuple[int, int]],
                                           illegal: list[tuple[int, int]]) -> None:
    vm = make_vm(variant, **options)
    g = Guest(vm)
    for cmd in legal:
        assert result(g, cmd) == OK, cmd
    for cmd in illegal:
        assert result(g, cmd) == refused(variant), cmd
    vm.close()


def test_an_illegal_command_is_skipped_and_the_rest_runs() -> None:
    """7.3: the GERROR handler (__arm_smmu_cmdq_skip_err) logs the illegal command and
    replaces it with a CMD_SYNC; the queue resumes, the batch's own CMD_SYNC completes
    and user space gets 0 with every entry counted. The commands after the illegal one
    ran: the stale translation is gone."""
    vm = make_vm("7.3")
    g = Guest(vm)
    g.attach()
    g.stale_setup()
    smmu = master_of(vm).smmu
    counts = dict(vm.m.platform.iommus["smmu0"].cmd.counts)  # type: ignore[attr-defined]
    cmds = [(NH_ALL | 1 << 10, 0), (NH_VA | 3 << 48, GVA | 1)]  # SSec set: CERROR_ILL
    assert result(g, *cmds) == (0, 2, 1)
    assert g.where() == "fresh"
    log = "\n".join(smmu.log)
    assert "Illegal command" in log and "skipping command in error state" in log
    after = vm.m.platform.iommus["smmu0"].cmd.counts  # type: ignore[attr-defined]
    assert after.get("TLBI_NH_ALL", 0) == counts.get("TLBI_NH_ALL", 0)  # never executed
    assert after["TLBI_NH_VA"] == counts.get("TLBI_NH_VA", 0) + 1
    assert smmu.readl(ARM_SMMU_CMDQ_CONS) >> 24 & 0x7F == 0  # the error was cleared
    vm.close()


# ==========================================================================================
# Batching and entry_num on a failure in the middle
# ==========================================================================================
def test_batches_of_63_each_with_a_sync(vmm: Vmm) -> None:
    g = Guest(vmm)
    cmdq = master_of(vmm).smmu.cmdq
    before = cmdq.syncs
    assert g.inv(*[(NH_ALL, 0)] * 130).entry_num == 130
    assert cmdq.syncs - before == 3  # 63 + 63 + 4


@pytest.mark.parametrize(("flush_at", "bad_at", "entry_num", "result"), [
    # 7.3: entry_num counts the entries converted before the bad one, issued or not;
    # the posted series counts the entries of the batches already issued.
    (0, 1, (1, 0), "stale"),  # the batch holding the bad entry is never issued
    (5, 62, (62, 0), "stale"),
    (5, 63, (63, 63), "fresh"),  # the first batch went out before the second failed
    (62, 70, (70, 63), "fresh"),
    (65, 70, (70, 63), "stale"),
    (65, 126, (126, 126), "fresh"),
])
def test_bad_entry_in_the_middle(vmm: Vmm, variant: str, flush_at: int, bad_at: int,
                                 entry_num: tuple[int, int], result: str) -> None:
    g = Guest(vmm)
    g.attach()
    g.stale_setup()
    cmds = [(NH_ASID | 9 << 48, 0)] * 130
    cmds[flush_at] = (NH_VA | 3 << 48, GVA | 1)
    cmds[bad_at] = (0x03, 0)  # CFGI_STE: not the guest's
    assert g.inv_err(*cmds) == (errno.EIO, entry_num[variant != "7.3"])
    assert g.where() == result


def test_a_sync_that_fails(vmm: Vmm, variant: str) -> None:
    """The command queue stops (CR0.CMDQEN cleared): the CMD_SYNC of the first batch
    times out. 7.3 steps ``cur`` back by one: entry_num is the index of the batch's last
    entry (2 of 3); the posted series counts no entry of a batch that failed."""
    g = Guest(vmm)
    smmu = master_of(vmm).smmu
    cr0 = smmu.readl(ARM_SMMU_CR0)
    smmu.writel(ARM_SMMU_CR0, cr0 & ~CR0_CMDQEN)
    try:
        assert g.inv_err(*[(NH_ALL, 0)] * 3) == (errno.ETIMEDOUT,
                                                 2 if variant == "7.3" else 0)
    finally:
        smmu.writel(ARM_SMMU_CR0, cr0)

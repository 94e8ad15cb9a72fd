"""The Tegra241 CMDQV through the Machine, ioctl ABI only, as QEMU's smmuv3-accel uses it:
GET_HW_INFO(TEGRA241_CMDQV), a CMDQV vIOMMU and the mmap of its VINTF page, vDEVICEs as
SID pairs, HW queues with the kernel's checks, and a guest that invalidates through its
own VCMDQ with no IOMMU_HWPT_INVALIDATE; its errors as vEVENTs; the host's own commands
through VINTF0."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from drivers.arm_smmu_v3.hw.cmdqv import Tegra241CmdqvHw
from drivers.arm_smmu_v3.regs import (
    CMDQ_ERR_CERROR_ILL_IDX,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_S12_VMALL,
    CMDQ_TLBI_0_VMID,
)
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STATUS,
    TEGRA241_VINTF,
    TEGRA241_VINTF_SID_MATCH,
    TEGRA241_VINTF_SID_REPLACE,
    VINTF_SID_MATCH_ENABLE,
)
from iommu_core.hookspec import hookimpl
from iommu_sim import DmaFault
from iommufd import uapi as u

from .cmdqv_vmm import ASID, SYNC, CmdqvVmm, GuestVcmdq, tlbi_va
from .vmm import DEV, PAGE, VSID, guest_vste, sz

GVA = 0x7F00_0000_0000
OLD, NEW, NEWER = 0x10000, 0x20000, 0x28000
QGPA = 0x30000
DEV2 = "0000:00:02.0"


@pytest.fixture
def vmm() -> Iterator[CmdqvVmm]:
    vm = CmdqvVmm()
    yield vm
    vm.close()
    assert vm.m.kernel_pages_in_use == 0


def cmdqv_hw(vmm: CmdqvVmm, smmu: str = "smmu0") -> Tegra241CmdqvHw:
    hw = vmm.m.platform.iommus[smmu].cmdqv  # type: ignore[attr-defined]
    assert isinstance(hw, Tegra241CmdqvHw)
    return hw


class Guest:
    """The VM: nest parent, CMDQV vIOMMU with its VINTF page mapped, the device as VSID,
    the guest's stage 1 and CD, attached; its VCMDQ 0 in guest RAM, enabled."""

    def __init__(self, vmm: CmdqvVmm, dev: str = DEV, queue: bool = True) -> None:
        self.vmm = vmm
        dev_id = vmm.dev_ids[dev]
        self.parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT, dev_id=dev_id)
        self.viommu, off, length = vmm.viommu_cmdqv(self.parent, dev_id=dev_id)
        self.vintf = vmm.m.mmap(length, vmm.fd, off)
        self.vdev = vmm.vdevice_alloc(self.viommu, VSID, dev_id=dev_id)
        self.s1 = vmm.guest_s1()
        vmm.guest_cd(self.s1, asid=ASID)
        self.nested = vmm.nested(self.viommu, guest_vste(), dev_id=dev_id)
        vmm.attach(self.nested, dev)
        self.dev = dev
        for gpa, text in ((OLD, b"OLD!"), (NEW, b"NEW!"), (NEWER, b"NWR!")):
            vmm.ram.write(gpa, text)
        self.s1.map(GVA, OLD, PAGE, 3)
        if queue:
            self.hwq = vmm.hw_queue(self.viommu, 0, QGPA)
            self.q = GuestVcmdq(vmm, self.vintf, 0, QGPA)
            self.q.enable()

    def read(self) -> bytes:
        return self.vmm.m.dma_read(self.dev, GVA, 4)

    def remap(self, gpa: int) -> None:
        self.s1.unmap(GVA, PAGE)
        self.s1.map(GVA, gpa, PAGE, 3)


class CountInvalidate:
    """Counts the driver's vIOMMU cache_invalidate (the VMM-trapped path)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True, tryfirst=True)
    def viommu_cache_invalidate(self, viommu: object, array: object) -> object:
        self.calls += 1
        return (yield)


# -- GET_HW_INFO ------------------------------------------------------------------------------
def test_hw_info_tegra241_cmdqv(vmm: CmdqvVmm) -> None:
    info = u.iommu_hw_info_tegra241_cmdqv()
    hi = u.iommu_hw_info(size=sz(u.iommu_hw_info), dev_id=vmm.dev_id, data_len=sz(info),
                         data_uptr=vmm.scratch, flags=u.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                         in_data_type=u.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV)
    vmm.m.ioctl(vmm.fd, u.IOMMU_GET_HW_INFO, hi)
    got = u.iommu_hw_info_tegra241_cmdqv.from_buffer_copy(vmm.m.mem_read(vmm.scratch, 8))
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV and hi.data_len == 8
    # 64 VCMDQs over 16 VINTFs: 4 per VINTF; 16 SID pairs; PARAM.VER 1.
    assert (got.flags, got.version, got.log2vcmdqs, got.log2vsids) == (0, 1, 2, 4)
    # The default type is still the SMMU's.
    hi, _ = vmm.hw_info()
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3


def test_no_cmdqv_no_tegra_types() -> None:
    vm = CmdqvVmm(cmdqv=False)
    try:
        with pytest.raises(OSError) as e:
            vm.hw_info(u.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV)
        assert e.value.errno == errno.EOPNOTSUPP
        parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        with pytest.raises(OSError) as e:
            vm.viommu_cmdqv(parent)
        assert e.value.errno == errno.EOPNOTSUPP
        # The SMMU's own vIOMMU has no HW queues.
        viommu = vm.viommu_alloc(parent)
        with pytest.raises(OSError) as e:
            vm.hw_queue(viommu, 0, QGPA)
        assert e.value.errno == errno.EOPNOTSUPP
    finally:
        vm.close()


def test_option_is_checked() -> None:
    for bad in ("yes", {"vintfs": 3}, {"vcmdqs": 2, "vintfs": 4}, {"sids": 2}):
        with pytest.raises(OSError) as e:
            CmdqvVmm(cmdqv=bad)
        assert e.value.errno == errno.EINVAL


# -- the vIOMMU and its page ------------------------------------------------------------------
def test_viommu_needs_its_data(vmm: CmdqvVmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    for data_len in (0, 8, 24):
        with pytest.raises(OSError) as e:
            vmm.viommu_cmdqv(parent, data_len=data_len)
        assert e.value.errno == errno.EINVAL
    viommu, off, length = vmm.viommu_cmdqv(parent)
    assert length == 0x10000 and off and not off & (PAGE - 1)
    # Only exactly the VINTF page maps, only shared, never executable.
    for ln, o, kw, err in ((PAGE, off, {}, errno.ENXIO), (length, off + PAGE, {}, errno.ENXIO),
                           (length, off, {"shared": False}, errno.EINVAL),
                           (length, off, {"prot_exec": True}, errno.EPERM)):
        with pytest.raises(OSError) as e:
            vmm.m.mmap(ln, vmm.fd, o, **kw)
        assert e.value.errno == err
    va = vmm.m.mmap(length, vmm.fd, off)
    # The mapping holds the vIOMMU; registers are not pages: they cannot be pinned.
    with pytest.raises(OSError) as e:
        vmm.destroy(viommu)
    assert e.value.errno == errno.EBUSY
    with pytest.raises(OSError) as e:
        vmm.map(va, PAGE, 0x200_0000)
    assert e.value.errno == errno.EFAULT
    vmm.m.munmap(va, length)
    vmm.destroy(viommu)


def test_vintfs_run_out_and_come_back() -> None:
    vm = CmdqvVmm(cmdqv={"vintfs": 2, "vcmdqs": 4})  # VINTF0 is the host's: one for VMs
    try:
        parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        viommu, _off, _len = vm.viommu_cmdqv(parent)
        with pytest.raises(OSError) as e:
            vm.viommu_cmdqv(parent)
        assert e.value.errno == errno.ENOSPC
        vm.destroy(viommu)
        vm.destroy(vm.viommu_cmdqv(parent)[0])
    finally:
        vm.close()
    assert vm.m.kernel_pages_in_use == 0


def test_vdevice_is_a_sid_pair(vmm: CmdqvVmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu, _off, _len = vmm.viommu_cmdqv(parent)
    with pytest.raises(OSError) as e:
        vmm.vdevice_alloc(viommu, 1 << 20)  # wider than VIRT_SID
    assert e.value.errno == errno.EINVAL
    vdev = vmm.vdevice_alloc(viommu, VSID)
    hw = cmdqv_hw(vmm)
    vintf = next(v for v in hw.vintfs if v.idx and v.enabled)
    mmio = vmm.m.platform.iommus["smmu0"].mmio["cmdqv"]
    base = TEGRA241_VINTF(vintf.idx)
    sid = vmm.m.device(DEV).rid
    assert mmio.read32(base + TEGRA241_VINTF_SID_MATCH(0)) == VSID << 1 | VINTF_SID_MATCH_ENABLE
    assert mmio.read32(base + TEGRA241_VINTF_SID_REPLACE(0)) == sid
    vmm.destroy(vdev)
    assert mmio.read32(base + TEGRA241_VINTF_SID_MATCH(0)) == 0
    assert mmio.read32(base + TEGRA241_VINTF_SID_REPLACE(0)) == 0


def test_sid_pairs_run_out() -> None:
    vm = CmdqvVmm((DEV, DEV2), cmdqv={"sids_per_vintf": 1})
    try:
        parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        viommu, _off, _len = vm.viommu_cmdqv(parent)
        vdev = vm.vdevice_alloc(viommu, VSID)
        with pytest.raises(OSError) as e:
            vm.vdevice_alloc(viommu, VSID + 1, dev_id=vm.dev_ids[DEV2])
        assert e.value.errno == errno.ENOSPC
        vm.destroy(vdev)
        vm.vdevice_alloc(viommu, VSID + 1, dev_id=vm.dev_ids[DEV2])
    finally:
        vm.close()


# -- HW queue allocation: the kernel's checks, in its order ----------------------------------
def test_hw_queue_checks(vmm: CmdqvVmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu, _off, _len = vmm.viommu_cmdqv(parent)

    def refused(err: int, *args: object, **kw: object) -> None:
        with pytest.raises(OSError) as e:
            vmm.hw_queue(viommu, *args, **kw)  # type: ignore[arg-type]
        assert e.value.errno == err, e.value

    refused(errno.EOPNOTSUPP, 0, QGPA, type=u.IOMMU_HW_QUEUE_TYPE_DEFAULT)
    refused(errno.EOPNOTSUPP, 0, QGPA, type=7)
    refused(errno.EINVAL, 0, QGPA, length=0)
    refused(errno.EOVERFLOW, 0, (1 << 64) - PAGE, length=2 * PAGE)
    refused(errno.ENOENT, 0, 0x4000_0000)  # not mapped in the IOAS
    refused(errno.EINVAL, 4, QGPA)  # 4 LVCMDQs per VINTF
    refused(errno.EIO, 1, QGPA)  # LVCMDQ 0 first
    for length in (16, 48, 96):  # a power of 2 in [32, 256 entries * 16]
        refused(errno.EINVAL, 0, QGPA, length=length)
    # Longer than IDR1.CMDQS allows: in a huge page, so that it is contiguous.
    huge = vmm.m.mmap(0x20_0000)
    vmm.map(huge, 0x20_0000, 0x20_0000)
    refused(errno.EINVAL, 0, 0x20_0000, length=2 * PAGE)
    refused(errno.EINVAL, 0, 0x20_0800, length=PAGE)  # aligned to its length
    q0 = vmm.hw_queue(viommu, 0, QGPA + 0x800, length=0x800)
    refused(errno.EEXIST, 0, QGPA)
    q1 = vmm.hw_queue(viommu, 1, QGPA + 32, length=32)
    # Queues go in descending order; the vIOMMU and the pinned IOAS range stay.
    for obj in (q0, viommu):
        with pytest.raises(OSError) as e:
            vmm.destroy(obj)
        assert e.value.errno == errno.EBUSY
    with pytest.raises(OSError) as e:
        vmm.unmap(0, 0x10_0000)
    assert e.value.errno == errno.EBUSY
    vmm.destroy(q1)
    vmm.destroy(q0)
    vmm.unmap(0, 0x10_0000)


def test_hw_queue_pages_must_be_contiguous() -> None:
    vm = CmdqvVmm(cmdqs=10)  # 16 KiB queues
    try:
        parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        viommu, _off, _len = vm.viommu_cmdqv(parent)
        # Two guest pages next to each other in the IOAS, not in physical memory.
        pages = []
        for _ in range(3):
            va = vm.m.mmap(PAGE)
            vm.m.mem_write(va, b"x")
            pages.append((vm.m.mm.va_to_pa(va), va))
        pages.sort()
        (pa0, va0), (_pa1, _va1), (pa2, va2) = pages
        assert pa2 != pa0 + PAGE
        vm.map(va2, PAGE, 0x800_0000)
        vm.map(va0, PAGE, 0x800_1000)
        with pytest.raises(OSError) as e:
            vm.hw_queue(viommu, 0, 0x800_0000, length=2 * PAGE)
        assert e.value.errno == errno.EFAULT
        # In a huge page the same length is fine.
        huge = vm.m.mmap(0x20_0000)
        vm.map(huge, 0x20_0000, 0x20_0000)
        vm.destroy(vm.hw_queue(viommu, 0, 0x20_0000, length=4 * PAGE))
    finally:
        vm.close()
    assert vm.m.kernel_pages_in_use == 0


# -- the accelerated path ---------------------------------------------------------------------
def test_guest_invalidates_through_its_vcmdq(vmm: CmdqvVmm) -> None:
    spy = CountInvalidate()
    vmm.m.plugins.register(spy, driver="arm_smmu_v3")
    g = Guest(vmm)
    hw = cmdqv_hw(vmm)
    assert g.read() == b"OLD!"
    g.remap(NEW)
    assert g.read() == b"OLD!", "the SMMU keeps the guest's translation until invalidated"
    before = dict(hw.smmu.cmd.counts)
    g.q.submit([tlbi_va(GVA), SYNC])
    assert g.q.cons == 2 and not g.q.error()
    assert g.read() == b"NEW!"
    assert spy.calls == 0, "no IOMMU_HWPT_INVALIDATE, no driver call"
    assert hw.smmu.cmd.counts["TLBI_NH_VA"] == before.get("TLBI_NH_VA", 0) + 1
    assert hw.smmu.stats()["cmdqv"]["in_error"] == []
    assert spy.calls == 0


def test_small_queue_wraps(vmm: CmdqvVmm) -> None:
    g = Guest(vmm, queue=False)
    hwq = vmm.hw_queue(g.viommu, 0, QGPA, length=64)  # 4 entries: wraps every 2 rounds
    q = GuestVcmdq(vmm, g.vintf, 0, QGPA, length=64)
    q.enable()
    for i in range(9):
        gpa = NEWER if i % 2 == 0 else NEW
        g.remap(gpa)
        q.submit([(CMDQ_OP_TLBI_NH_ASID | ASID << 48, 0), SYNC])
        assert g.read() == (b"NWR!" if gpa == NEWER else b"NEW!")
        assert q.cons == q.prod
    assert q.prod == 18 % 8  # 18 commands: twice round the queue and its wrap bit
    vmm.destroy(hwq)


def test_the_vintf_vmid_replaces_the_guests(vmm: CmdqvVmm) -> None:
    g = Guest(vmm)
    g.read()
    g.remap(NEW)
    # Whatever VMID the guest writes, the TLBI is the VINTF's.
    q0, q1 = tlbi_va(GVA)
    g.q.submit([(q0 | CMDQ_TLBI_0_VMID & (0x1234 << 32), q1), SYNC])
    assert g.read() == b"NEW!"


def test_illegal_command_is_the_guests_error_and_a_vevent(vmm: CmdqvVmm) -> None:
    g = Guest(vmm)
    efd = vmm.veventq_cmdqv(g.viommu)
    g.read()
    g.remap(NEW)
    for bad in ((CMDQ_OP_TLBI_NH_ALL, 0), (CMDQ_OP_TLBI_S12_VMALL, 0),
                (CMDQ_OP_CFGI_CD | VSID << 32, 0), (0x7F, 0)):
        g.q.submit([bad, SYNC])
        assert g.q.error() == CMDQ_ERR_CERROR_ILL_IDX
        assert g.q.cons & 0xFFFF == (g.q.prod - 2) & 0x1FF  # stopped on it
        assert g.read() == b"OLD!", "nothing of the refused command executed"
        _seq, err_map = vmm.read_cmdqv_vevent(efd)
        assert err_map == 1 << 0  # LVCMDQ 0 of this VINTF
        g.q.recover()
        assert not g.q.error() and g.q.cons == g.q.prod
    g.q.submit([tlbi_va(GVA), SYNC])
    assert g.read() == b"NEW!"


def test_atc_inv_names_the_vintfs_sids_only() -> None:
    vm = CmdqvVmm(dev_opts={DEV: {"ats": True}})
    try:
        g = Guest(vm)
        hw = vm.m.platform.iommus["smmu0"]
        sid = vm.m.device(DEV).rid
        other = sid + 1
        hw.atc.insert(sid, -1, GVA, 0x1234_5000, 1)  # type: ignore[attr-defined]
        hw.atc.insert(other, -1, GVA, 0x1234_5000, 1)  # type: ignore[attr-defined]
        atc_all = 52
        # A vSID with no SID pair: refused, no ATC touched.
        g.q.submit([(CMDQ_OP_ATC_INV | (VSID + 1) << 32, atc_all), SYNC])
        assert g.q.error() == CMDQ_ERR_CERROR_ILL_IDX
        g.q.recover()
        assert hw.atc.count(sid) == 1 and hw.atc.count(other) == 1  # type: ignore[attr-defined]
        # The guest's own vSID: the device's ATC, and only it.
        g.q.submit([(CMDQ_OP_ATC_INV | VSID << 32, atc_all), SYNC])
        assert not g.q.error()
        assert hw.atc.count(sid) == 0 and hw.atc.count(other) == 1  # type: ignore[attr-defined]
        # The physical SID in the command means nothing to the VINTF.
        g.q.submit([(CMDQ_OP_ATC_INV | other << 32, atc_all), SYNC])
        assert g.q.error() == CMDQ_ERR_CERROR_ILL_IDX
        assert hw.atc.count(other) == 1  # type: ignore[attr-defined]
    finally:
        vm.close()


def test_one_vm_cannot_invalidate_another() -> None:
    vm = CmdqvVmm((DEV, DEV2))
    try:
        a = Guest(vm, DEV)
        b = Guest(vm, DEV2, queue=False)
        hwq_b = vm.hw_queue(b.viommu, 0, QGPA + PAGE)
        qb = GuestVcmdq(vm, b.vintf, 0, QGPA + PAGE)
        qb.enable()
        for g in (a, b):
            assert g.read() == b"OLD!"
        # Both guests point GVA elsewhere; only A invalidates (same ASID in both).
        a.remap(NEW)
        b.remap(NEW)
        a.q.submit([tlbi_va(GVA), (CMDQ_OP_TLBI_NH_ASID | ASID << 48, 0), SYNC])
        assert a.read() == b"NEW!"
        assert b.read() == b"OLD!", "A's commands carry A's VMID"
        qb.submit([tlbi_va(GVA), SYNC])
        assert b.read() == b"NEW!"
        # A's VINTF page shows only A's queues: B's registers are not there.
        assert a.q.reg(TEGRA241_VCMDQ_PROD) == a.q.prod
        assert GuestVcmdq(vm, a.vintf, 1, 0).reg(TEGRA241_VCMDQ_PROD) == 0
        vm.destroy(hwq_b)
    finally:
        vm.close()


def test_destroyed_queue_is_not_read(vmm: CmdqvVmm) -> None:
    g = Guest(vmm)
    g.read()
    g.remap(NEW)
    vmm.destroy(g.hwq)
    # The slot reads as zero and ignores stores: the queue memory is the guest's again.
    assert g.q.reg(TEGRA241_VCMDQ_STATUS) == 0
    g.q.submit([tlbi_va(GVA), SYNC])
    assert g.q.reg(TEGRA241_VCMDQ_PROD) == 0 and g.q.reg(TEGRA241_VCMDQ_CONS) == 0
    assert g.read() == b"OLD!"
    vmm.unmap(0, 0x10_0000)  # the queue's pages are free to go


def test_guest_enables_a_new_queue_and_disables_it(vmm: CmdqvVmm) -> None:
    g = Guest(vmm, queue=False)
    hwq = vmm.hw_queue(g.viommu, 0, QGPA)
    q = GuestVcmdq(vmm, g.vintf, 0, QGPA)
    assert q.reg(TEGRA241_VCMDQ_STATUS) == 0  # configured, not enabled: the guest's call
    g.read()
    g.remap(NEW)
    q.submit([tlbi_va(GVA), SYNC])
    assert q.cons == 0 and g.read() == b"OLD!"  # not running yet
    q.enable()
    assert q.cons == 2 and g.read() == b"NEW!"
    q.set_reg(TEGRA241_VCMDQ_CONFIG, 0)
    # CONS belongs to software while disabled.
    q.set_reg(TEGRA241_VCMDQ_CONS, 0)
    assert q.cons == 0
    vmm.destroy(hwq)


def test_dma_fault_is_not_a_queue_error(vmm: CmdqvVmm) -> None:
    g = Guest(vmm)
    with pytest.raises(DmaFault):
        vmm.m.dma_read(DEV, GVA + 0x10_0000, 4)
    assert not g.q.error()


# -- the host's own commands: VINTF0 ----------------------------------------------------------
def test_host_commands_go_through_vintf0(vmm: CmdqvVmm) -> None:
    hw = cmdqv_hw(vmm)
    smmu = vmm.m.core.iommus["smmu0"].priv
    main_prod = smmu.cmdq.prod
    before = hw.executed[0]
    hwpt = vmm.hwpt_alloc(vmm.ioas)
    vmm.attach(hwpt)
    assert vmm.m.dma_read(DEV, 0x1000, 1) is not None
    vmm.unmap(0, 0x10_0000)  # TLBIs and CFGIs of the host
    assert hw.executed[0] > before, "the host's commands ran on VINTF0's LVCMDQ 0"
    assert smmu.cmdq.prod == main_prod, "nothing went to the SMMU's own queue"
    with pytest.raises(DmaFault):
        vmm.m.dma_read(DEV, 0x1000, 1)


def test_host_vcmdq_error_is_skipped_by_the_isr(vmm: CmdqvVmm) -> None:
    smmu = vmm.m.core.iommus["smmu0"].priv
    cmdq = smmu.get_cmdq((CMDQ_OP_TLBI_NH_ASID, 0))
    assert cmdq is not smmu.cmdq and cmdq.busy_polling
    cmdq.issue_cmd((0x7F, 0), sync=True)  # an opcode the SMMU does not know
    assert any("skipping command in error state" in line for line in smmu.log)
    assert cmdq.errors and cmdq.errors[-1][0] == CMDQ_ERR_CERROR_ILL_IDX
    cmdq.issue_cmd((CMDQ_OP_TLBI_NH_ASID, 0), sync=True)  # and it runs on


def test_vintf_page_outlives_close_and_teardown_is_clean(vmm: CmdqvVmm) -> None:
    g = Guest(vmm)
    fd = vmm.fd
    vmm.m.close(vmm.vfds[DEV])
    vmm.m.close(fd)
    # The mapping holds the iommufd: the guest can still read its registers.
    assert g.q.reg(TEGRA241_VCMDQ_CONS) == 0
    vmm.m.munmap(g.vintf, 0x10000)

"""The iommufd nesting rules at the driver boundary (the hooks iommufd calls), with a
minimal vIOMMU object standing in for iommufd: vSTE validation and its errnos, the
nested STE, attach rules, invalidation conversion and entry_num, vEVENT forwarding."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator

import pytest

from drivers.arm_smmu_v3.domain import ArmSmmuDomain
from drivers.arm_smmu_v3.iommufd import ArmSmmuNestedDomain, arm_smmu_validate_vste
from drivers.arm_smmu_v3.master import arm_smmu_read_ste
from drivers.arm_smmu_v3.regs import (
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_CFGI_CD_ALL,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_OP_TLBI_NH_VAA,
    CMDQ_OP_TLBI_NSNH_ALL,
    CMDQ_OP_TLBI_S2_IPA,
    CMDQ_OP_TLBI_S12_VMALL,
    FIELD_GET,
    STRTAB_STE_0_CFG,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_NESTED,
    STRTAB_STE_0_CFG_S2_TRANS,
    STRTAB_STE_1_EATS,
    STRTAB_STE_1_MEV,
)
from iommu_core.domain import IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_FAULT_ID_VALID
from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import IommufdVdevice, IommufdViommu, UserData, UserDataArray
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.uaccess import UserMemory
from iommu_core.testing.env import DriverEnv, expect_errno
from iommufd.uapi import (
    IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    IOMMU_HW_INFO_TYPE_INTEL_VTD,
    IOMMU_HWPT_DATA_ARM_SMMUV3,
    IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
    IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
    iommu_hw_info_arm_smmuv3,
)

from .harness import driver_env, hw_of, master, smmu_of

V, CFG_ABORT, CFG_BYPASS, CFG_S1 = 1, 0 << 1, 4 << 1, 5 << 1


class FakeViommu(IommufdViommu):
    """What iommufd provides to the driver: vSID lookups and the vEVENT queue."""

    def __init__(self, env: DriverEnv, parent: ArmSmmuDomain) -> None:
        super().__init__(env.iommu, IOMMU_VIOMMU_TYPE_ARM_SMMUV3, parent)
        self.vdevs: dict[int, Device] = {}
        self.vevents: list[bytes] = []
        self.has_veventq = True

    def find_dev(self, vdev_id: int) -> Device | None:
        return self.vdevs.get(vdev_id)

    def get_vdev_id(self, dev: Device) -> int | None:
        return next((v for v, d in self.vdevs.items() if d is dev), None)

    def report_event(self, type: int, data: bytes) -> None:
        if not self.has_veventq:
            raise IommuError(errno.EOPNOTSUPP, "no vEVENTQ")
        self.vevents.append(data)


class Nest:
    def __init__(self) -> None:
        self.env = driver_env()
        env = self.env
        self.dev = env.add_device()
        env.claim(self.dev)
        self.s2 = env.paging_domain(self.dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert isinstance(self.s2, ArmSmmuDomain)
        ops = env.ops
        assert ops.get_viommu_size(self.dev, IOMMU_VIOMMU_TYPE_ARM_SMMUV3) > 0
        self.viommu = FakeViommu(env, self.s2)
        ops.viommu_init(self.viommu, self.s2, None)
        assert self.viommu.ops is not None
        self.vops = self.viommu.ops
        self.umem = UserMemory(env.mm)
        self.ubuf = env.mm.mmap(1 << 16)

    def vdevice(self, dev: Device, vsid: int) -> None:
        self.vops.vdevice_init(IommufdVdevice(self.viommu, dev, vsid))
        self.viommu.vdevs[vsid] = dev

    def nested(self, q0: int, q1: int = 0, flags: int = 0) -> ArmSmmuNestedDomain:
        data = q0.to_bytes(8, "little") + q1.to_bytes(8, "little")
        self.env.mm.write(self.ubuf, data)
        dom = self.vops.alloc_domain_nested(
            self.viommu, flags, UserData(self.umem, IOMMU_HWPT_DATA_ARM_SMMUV3, self.ubuf, 16))
        assert isinstance(dom, ArmSmmuNestedDomain)
        return dom

    def invalidate(self, cmds: list[tuple[int, int]], entry_len: int = 16,
                   data_type: int = IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3) -> UserDataArray:
        raw = b"".join(q0.to_bytes(8, "little") + q1.to_bytes(8, "little")
                       + bytes(entry_len - 16) for q0, q1 in cmds)
        self.env.mm.write(self.ubuf, raw or b"\0")
        arr = UserDataArray(self.umem, data_type, self.ubuf, entry_len, len(cmds))
        self.vops.cache_invalidate(self.viommu, arr)
        return arr


@pytest.fixture
def nest() -> Iterator[Nest]:
    n = Nest()
    yield n
    n.env.teardown()
    assert n.env.kernel_pages == 0


# -- hw_info and vIOMMU allocation ---------------------------------------------------------
def test_hw_info_raw_registers(nest: Nest) -> None:
    blob, typ = nest.env.ops.hw_info(nest.dev, 0)
    assert typ == IOMMU_HW_INFO_TYPE_ARM_SMMUV3 and len(blob) == 40
    info = iommu_hw_info_arm_smmuv3.from_buffer_copy(blob)
    cfg = hw_of(nest.env).cfg
    assert list(info.idr) == [cfg.idr0, cfg.idr1, cfg.idr2, cfg.idr3, cfg.idr4, cfg.idr5]
    assert (info.iidr, info.aidr, info.flags) == (cfg.iidr, cfg.aidr, 0)
    expect_errno(errno.EOPNOTSUPP, nest.env.ops.hw_info, nest.dev, IOMMU_HW_INFO_TYPE_INTEL_VTD)


@pytest.mark.parametrize(("options", "dev_opts", "ok"), [
    ({}, {}, True),
    ({}, {"canwbs": False}, True),  # S2FWB covers it
    ({"fwb": False}, {"canwbs": False}, False),
    ({"fwb": False}, {}, True),
    ({"s1p": False}, {}, False),
    ({"implementer": 0x43B, "product": 0x487}, {}, False),  # MMU-700: no nesting
])
def test_viommu_size_rules(options: dict[str, object], dev_opts: dict[str, object],
                           ok: bool) -> None:
    env = driver_env(**options)
    dev = env.add_device(**dev_opts)
    assert (env.ops.get_viommu_size(dev, IOMMU_VIOMMU_TYPE_ARM_SMMUV3) > 0) == ok
    assert env.ops.get_viommu_size(dev, 2) == 0  # Tegra type: no implementation hook
    env.teardown()


def test_viommu_init_needs_a_nest_parent_of_this_smmu(nest: Nest) -> None:
    plain = nest.env.paging_domain(nest.dev)
    v = FakeViommu(nest.env, plain)  # type: ignore[arg-type]
    expect_errno(errno.EINVAL, nest.env.ops.viommu_init, v, plain, None)
    assert nest.viommu.priv.vmid == nest.s2.vmid  # the vSMMU shares the parent's VMID


# -- vSTE validation -----------------------------------------------------------------------
@pytest.mark.parametrize(("q0", "q1", "err"), [
    (V | CFG_S1 | (1 << 52), 0, errno.EIO),  # outside the q0 mask
    (V | CFG_S1, 1 << 19, errno.EIO),  # MEV is not the guest's
    (V | (6 << 1), 0, errno.EIO),  # S2_TRANS
    (V | (7 << 1), 0, errno.EIO),  # NESTED
    (V | (1 << 1), 0, errno.EIO),  # reserved config
    (V | CFG_S1, 2 << 28, errno.EIO),  # EATS=S1CHK
    (V | CFG_S1, 3 << 28, errno.EIO),
])
def test_invalid_vste_eio(nest: Nest, q0: int, q1: int, err: int) -> None:
    expect_errno(err, nest.nested, q0, q1)


def test_vste_v0_is_abort_and_flags(nest: Nest) -> None:
    assert arm_smmu_validate_vste((0xFFFF_FFFF_FFFF_FFFE, 0xFFFF)) == ((0, 0), False)
    d = nest.nested(V | CFG_S1 | 0x4000_0000, (1 << 28) | 0x1)
    assert d.enable_ats and not d.ste[1] & (3 << 28)  # EATS stripped, remembered
    assert not nest.nested(V | CFG_BYPASS, 1 << 28).enable_ats  # EATS only with S1
    nest.nested(V | CFG_ABORT, flags=IOMMU_HWPT_FAULT_ID_VALID)  # fault id: allowed
    expect_errno(errno.EOPNOTSUPP, nest.nested, V, 0, 1 << 0)
    # Wrong data type and short data are the copy helper's EINVAL.
    nest.env.mm.write(nest.ubuf, bytes(16))
    expect_errno(errno.EINVAL, nest.vops.alloc_domain_nested, nest.viommu, 0,
                 UserData(nest.umem, 1, nest.ubuf, 16))
    expect_errno(errno.EINVAL, nest.vops.alloc_domain_nested, nest.viommu, 0,
                 UserData(nest.umem, IOMMU_HWPT_DATA_ARM_SMMUV3, nest.ubuf, 8))


# -- nested STEs and attach ----------------------------------------------------------------
def test_nested_ste_construction_and_attach(nest: Nest) -> None:
    env, dev = nest.env, nest.dev
    nest.vdevice(dev, 0x99)
    d = nest.nested(V | CFG_S1 | 0x8000_0000 | (3 << 59), 0x2 | (1 << 28))  # SSID0, ATS
    env.core.iommu_group_replace_domain(dev.iommu_group, d)
    ste = arm_smmu_read_ste(master(dev))
    assert FIELD_GET(STRTAB_STE_0_CFG, ste[0]) == STRTAB_STE_0_CFG_NESTED
    assert ste[0] & 0x000F_FFFF_FFFF_FFC0 == 0x8000_0000  # the guest's CD table IPA
    assert ste[1] & STRTAB_STE_1_MEV and FIELD_GET(STRTAB_STE_1_EATS, ste[1]) == 1
    s2_ste = nest.s2.s2_cfg()
    assert ste[2] & 0xFFFF == s2_ste.vmid and ste[3] == s2_ste.vttbr & ~0xF
    m = master(dev)
    assert m.ats_enabled and m.vmaster is not None and m.vmaster.vsid == 0x99
    # The master is tracked by the S2 parent with nested_ats_flush.
    assert any(md.nested_ats_flush for md in nest.s2.devices)
    byp = nest.nested(V | CFG_BYPASS)
    env.core.iommu_group_replace_domain(dev.iommu_group, byp)
    ste = arm_smmu_read_ste(m)
    assert FIELD_GET(STRTAB_STE_0_CFG, ste[0]) == STRTAB_STE_0_CFG_S2_TRANS and not m.ats_enabled
    abort = nest.nested(0)
    env.core.iommu_group_replace_domain(dev.iommu_group, abort)
    assert FIELD_GET(STRTAB_STE_0_CFG, arm_smmu_read_ste(m)[0]) == STRTAB_STE_0_CFG_ABORT


def test_nested_attach_rules(nest: Nest) -> None:
    env, dev = nest.env, nest.dev
    d = nest.nested(V | CFG_S1 | 0x8000_0000)
    # A translating vSTE needs a vDEVICE; bypass/abort do not.
    expect_errno(errno.ENOENT, env.core.iommu_group_replace_domain, dev.iommu_group, d)
    env.core.iommu_group_replace_domain(dev.iommu_group, nest.nested(V | CFG_BYPASS))
    assert master(dev).vmaster is None
    # A second SMMU's device cannot attach to this vSMMU's nested domain.
    other = driver_env()
    odev = other.add_device()
    other.claim(odev)
    with pytest.raises(IommuError) as ei:
        d.ops.attach_dev(d, odev, None)
    assert ei.value.errno == errno.EINVAL
    other.teardown()


def test_vdevice_needs_single_sid(nest: Nest) -> None:
    two = nest.env.add_device(stream_ids=(0x300, 0x301))
    expect_errno(errno.EOPNOTSUPP, nest.vops.vdevice_init, IommufdVdevice(nest.viommu, two, 7))


# -- invalidation through the vIOMMU -------------------------------------------------------
def test_invalidation_conversion(nest: Nest) -> None:
    nest.vdevice(nest.dev, 0x42)
    psid = master(nest.dev).streams[0]
    cmdq = smmu_of(nest.env).cmdq
    hw = hw_of(nest.env)
    seen: list[tuple[int, int]] = []
    orig = hw.cmd.execute

    def spy(q0: int, q1: int, slot: int) -> int:
        seen.append((q0, q1))
        return orig(q0, q1, slot)

    hw.cmd.execute = spy  # type: ignore[method-assign]
    vmid = nest.s2.vmid
    cmds = [
        (CMDQ_OP_TLBI_NSNH_ALL, 0),
        (CMDQ_OP_TLBI_NH_VA | (0x123 << 32) | (9 << 48), 0x5000),
        (CMDQ_OP_TLBI_NH_VAA, 0x6000),
        (CMDQ_OP_TLBI_NH_ASID | (9 << 48), 0),
        (CMDQ_OP_TLBI_NH_ALL, 0),
        (CMDQ_OP_CFGI_CD | (0x42 << 32) | (3 << 12), 1),
        (CMDQ_OP_CFGI_CD_ALL | (0x42 << 32), 0),
        (CMDQ_OP_ATC_INV | (0x42 << 32), 52),
    ]
    arr = nest.invalidate(cmds)
    assert arr.entry_num == len(cmds)
    got = [c for c in seen if c[0] & 0xFF != CMDQ_OP_CMD_SYNC]
    assert got[0] == (CMDQ_OP_TLBI_NH_ALL | (vmid << 32), 0)  # NSNH_ALL -> NH_ALL(VMID)
    assert got[1] == (CMDQ_OP_TLBI_NH_VA | (vmid << 32) | (9 << 48), 0x5000)
    assert got[2][0] >> 32 & 0xFFFF == vmid and got[3][0] >> 32 & 0xFFFF == vmid
    for c in got[5:]:
        assert c[0] >> 32 == psid  # vSID -> physical SID
    assert cmdq.errors == []


@pytest.mark.parametrize("bad", [CMDQ_OP_CFGI_STE, CMDQ_OP_TLBI_S2_IPA, CMDQ_OP_TLBI_S12_VMALL,
                                 CMDQ_OP_CMD_SYNC, 0x20, 0x7F])
def test_rejected_opcode_eio_with_entry_num(nest: Nest, bad: int) -> None:
    """7.3 arm_vsmmu_convert_user_cmd: another opcode is EIO; ``entry_num`` is the
    index of the bad entry, although the two before it were converted, not issued."""
    cmds = [(CMDQ_OP_TLBI_NH_ALL, 0), (CMDQ_OP_TLBI_NH_ALL, 0), (bad, 0),
            (CMDQ_OP_TLBI_NH_ALL, 0)]
    syncs = smmu_of(nest.env).cmdq.syncs
    arr = UserDataArray(nest.umem, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, nest.ubuf, 16, 4)
    raw = b"".join(q0.to_bytes(8, "little") + q1.to_bytes(8, "little") for q0, q1 in cmds)
    nest.env.mm.write(nest.ubuf, raw)
    expect_errno(errno.EIO, nest.vops.cache_invalidate, nest.viommu, arr)
    assert arr.entry_num == 2
    assert smmu_of(nest.env).cmdq.syncs == syncs  # nothing reached the queue
    # An empty array: iommu_copy_struct_from_full_user_array says EINVAL, entry_num 0.
    arr = UserDataArray(nest.umem, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, nest.ubuf, 16, 0)
    expect_errno(errno.EINVAL, nest.vops.cache_invalidate, nest.viommu, arr)
    assert arr.entry_num == 0


def test_unknown_vsid_eio(nest: Nest) -> None:
    with pytest.raises(IommuError) as ei:
        nest.invalidate([(CMDQ_OP_CFGI_CD | (0x55 << 32), 0)])
    assert ei.value.errno == errno.EIO


def test_invalidation_array_copy_rules(nest: Nest) -> None:
    # Longer entries need an all-zero tail (E2BIG otherwise); short ones are zero-filled.
    assert nest.invalidate([(CMDQ_OP_TLBI_NH_ALL, 0)], entry_len=24).entry_num == 1
    nest.env.mm.write(nest.ubuf, bytes(16) + b"\x01" + bytes(7))
    arr = UserDataArray(nest.umem, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, nest.ubuf, 24, 1)
    expect_errno(errno.E2BIG, nest.vops.cache_invalidate, nest.viommu, arr)
    expect_errno(errno.EINVAL, nest.invalidate, [(CMDQ_OP_TLBI_NH_ALL, 0)], 16, 0)


def test_batches_of_63(nest: Nest) -> None:
    cmdq = smmu_of(nest.env).cmdq
    before = cmdq.syncs
    assert nest.invalidate([(CMDQ_OP_TLBI_NH_ALL, 0)] * 130).entry_num == 130
    assert cmdq.syncs - before == 3  # 63 + 63 + 4, each chunk with its CMD_SYNC


# -- vEVENTs ---------------------------------------------------------------------------------
def test_stage1_fault_forwarded_with_vsid(nest: Nest) -> None:
    env, dev = nest.env, nest.dev
    nest.vdevice(dev, 0x77)
    # A guest CD table at an IPA the parent maps: CD 0 invalid -> C_BAD_CD (S2 bit 0).
    _va, pfns = env.user_pages(1)
    env.core.iommu_map(nest.s2, 0x8000_0000, pfns[0] << 12, 4096, 3)
    d = nest.nested(V | CFG_S1 | 0x8000_0000)
    env.core.iommu_group_replace_domain(dev.iommu_group, d)
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0x1000, 4)
    assert len(nest.viommu.vevents) == 1
    evt = [int.from_bytes(nest.viommu.vevents[0][i:i + 8], "little") for i in range(0, 32, 8)]
    assert evt[0] & 0xFF == 0x0A and evt[0] >> 32 == 0x77
    # Stage-2 faults stay in the host: an unmapped CD table IPA.
    d2 = nest.nested(V | CFG_S1 | 0x9000_0000)
    env.core.iommu_group_replace_domain(dev.iommu_group, d2)
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0x1000, 4)
    assert len(nest.viommu.vevents) == 1
    assert any("event 0x10" in line for line in smmu_of(env).log)
    # Without a vEVENTQ the driver just logs.
    nest.viommu.has_veventq = False
    env.core.iommu_group_replace_domain(dev.iommu_group, d)
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0x1000, 4)
    assert len(nest.viommu.vevents) == 1


def test_ctypes_sizes() -> None:
    assert ctypes.sizeof(iommu_hw_info_arm_smmuv3) == 40

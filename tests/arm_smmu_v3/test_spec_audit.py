"""Rule-by-rule audit of the SMMUv3 driver and model against smmuv3.md and uapi.md §7/§10,
through the Machine's ioctl ABI wherever a rule is observable there (hw_info IDRs, errnos,
DMA and DmaFault, vEVENTQ records, entry_num), at driver level otherwise.

Every expected value below is written from the reference, not from the driver's
constants, so a drifted constant fails here."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.arm_smmu_v3.master import ArmSmmuMaster, arm_smmu_read_cd, arm_smmu_read_ste
from drivers.arm_smmu_v3.ste import S2Cfg, Vtcr, arm_smmu_make_nested_domain_ste
from iommu_core.domain import IOMMU_HWPT_ALLOC_PASID
from iommu_core.testing.env import expect_errno
from iommu_sim import DmaFault
from iommufd import uapi as u
from iommufd import uapi_vfio as v

from .hwutil import FakeMaster
from .kunit_fixtures import Feat, make_s2_ste
from .test_nesting_rules import Nest
from .vmm import CD_GPA, DEV, GUEST, PAGE, VSID, Vmm, guest_vste

DEV2 = "0000:00:02.0"
RW, RO = 3, 1
GVA = 0x7F00_0000_0000
# Opcodes (smmuv3.md §8.2), written out rather than imported.
NH_ALL, NH_ASID, NH_VA, NH_VAA = 0x10, 0x11, 0x12, 0x13
NSNH_ALL, ATC_INV, CFGI_CD, CFGI_CD_ALL = 0x30, 0x40, 0x05, 0x06
ACCEPTED = {NH_ALL, NH_ASID, NH_VA, NH_VAA, NSNH_ALL, ATC_INV, CFGI_CD, CFGI_CD_ALL}
# vSTE masks (smmuv3.md §3.1).
ALLOWED0 = 0xF80F_FFFF_FFFF_FFFF
ALLOWED1 = 0x3800_00FF
V, CFG_S1, CFG_BYPASS = 1, 5 << 1, 4 << 1


def bits(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def field(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def err_of(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno is not None
    return ei.value.errno


def master_of(vm: Vmm, dev: str = DEV) -> ArmSmmuMaster:
    m = vm.m.device(dev).iommu.priv
    assert isinstance(m, ArmSmmuMaster)
    return m


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    vm = Vmm()
    yield vm
    vm.close()


class Guest:
    """A nested setup over ``vm``: nest parent, vIOMMU, vDEVICE, guest S1 + CD 0."""

    def __init__(self, vm: Vmm, *, vdevice: bool = True, asid: int = 3) -> None:
        self.vm = vm
        self.parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.viommu = vm.viommu_alloc(self.parent)
        if vdevice:
            vm.vdevice_alloc(self.viommu, VSID)
        self.s1 = vm.guest_s1()
        self.asid = asid
        self.cd = vm.guest_cd(self.s1, asid=asid)

    def attach(self, vste: tuple[int, int] | None = None) -> int:
        h = self.vm.nested(self.viommu, guest_vste() if vste is None else vste)
        self.vm.attach(h)
        return h

    def map(self, gva: int, gpa: int, prot: int = RW) -> None:
        self.s1.map(gva, gpa, PAGE, prot)

    def remap(self, gva: int, gpa: int) -> None:
        self.s1.unmap(gva, PAGE)
        self.map(gva, gpa)

    def inv(self, *cmds: tuple[int, int]) -> u.iommu_hwpt_invalidate:
        return self.vm.invalidate(self.viommu, list(cmds))

    def inv_err(self, *cmds: tuple[int, int]) -> tuple[int, int]:
        with pytest.raises(OSError) as ei:
            self.vm.invalidate(self.viommu, list(cmds))
        return int(ei.value.errno or 0), int(ei.value.inv.entry_num)  # type: ignore[attr-defined]

    def stale_setup(self) -> None:
        """GVA cached -> GPA 0x10000 while the guest tables say 0x20000."""
        self.map(GVA, 0x10000)
        self.vm.m.dma_write(DEV, GVA, b"old")
        self.remap(GVA, 0x20000)

    def where(self) -> str:
        """Which guest page the next DMA to GVA lands in."""
        m, ram = self.vm.m, self.vm.ram_va
        m.mem_write(ram + 0x10000, b"\0\0\0")
        m.mem_write(ram + 0x20000, b"\0\0\0")
        m.dma_write(DEV, GVA, b"new")
        return "stale" if m.mem_read(ram + 0x10000, 3) == b"new" else "fresh"


def vevents(vm: Vmm, fd: int) -> list[tuple[int, int, int, int]]:
    data = vm.m.read(fd, 4096)
    out = []
    while data:
        hdr = u.iommufd_vevent_header.from_buffer_copy(data[:8])
        assert hdr.flags == 0
        out.append(tuple(int.from_bytes(data[8 + i:16 + i], "little")
                         for i in range(0, 32, 8)))
        data = data[40:]
    return out  # type: ignore[return-value]


# ==========================================================================================
# §1.2 / §12.2: the default feature configuration, as the raw IDRs hw_info returns
# ==========================================================================================
def test_hw_info_is_the_raw_registers_of_the_default_config(vmm: Vmm) -> None:
    hi, info = vmm.hw_info()
    hw = vmm.m.platform.iommus["smmu0"]
    regs = hw.regs  # type: ignore[attr-defined]
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3 and hi.data_len == 40
    assert list(info.idr) == [regs.read32(4 * i) for i in range(6)]
    assert (info.iidr, info.aidr, info.flags) == (regs.read32(0x18), regs.read32(0x1C), 0)
    idr0, idr1, idr3, idr5 = info.idr[0], info.idr[1], info.idr[3], info.idr[5]
    assert field(idr0, 28, 27) == 1  # ST_LEVEL: 2-level stream table
    assert idr0 & 1 << 19 and idr0 & 1 << 18 and idr0 & 1 << 12  # CD2L, VMID16, ASID16
    assert idr0 & 1 << 16 and idr0 & 1 << 10  # PRI, ATS
    assert field(idr0, 7, 6) == 2  # HTTU: access flag + dirty state
    assert field(idr0, 3, 2) == 2 and idr0 & 3 == 3  # TTF AArch64, S1P + S2P
    assert idr0 & 1 << 4 and field(idr0, 22, 21) in (0, 2)  # COHACC, LE walks
    assert field(idr1, 10, 6) == 20 and field(idr1, 5, 0) >= 16  # SSIDSIZE, SIDSIZE
    assert idr3 & 1 << 8 and idr3 & 1 << 10  # FWB, RIL
    assert idr5 & 0x70 == 0x70 and field(idr5, 2, 0) == 5  # 4K/16K/64K, OAS 48
    assert info.aidr & 0xFF >= 2  # SMMUv3.2: RIL and FWB exist from 3.2
    assert hi.out_max_pasid_log2 == 20
    # What the driver derived from them (smmuv3.md §1.2).
    smmu = master_of(vmm).smmu
    assert (smmu.asid_bits, smmu.vmid_bits, smmu.ssid_bits, smmu.oas, smmu.ias) == (
        16, 16, 20, 48, 48)
    assert smmu.pgsize_bitmap == (0x1000 | 0x20_0000 | 0x4000_0000 | 0x4000 | 0x200_0000
                                  | 0x1_0000 | 0x2000_0000)
    names = set(smmu.feature_names())
    assert {"2_LVL_STRTAB", "2_LVL_CDTAB", "TRANS_S1", "TRANS_S2", "NESTING", "ATS", "PRI",
            "HA", "HD", "S2FWB", "RANGE_INV", "COHERENCY", "STALLS"} <= names


def test_hw_info_follows_options() -> None:
    vm = Vmm(ats=False, pri=False, ril=False, fwb=False, httu=0, asid16=False, vmid16=False,
             ssidsize=8, gran16k=False, oas=44, cd2l=False, st_lvl=False, s2p=False)
    _hi, info = vm.hw_info()
    idr0 = info.idr[0]
    assert not idr0 & (1 << 10 | 1 << 16 | 1 << 19 | 1 << 18 | 1 << 12 | 1)
    assert field(idr0, 28, 27) == 0 and field(idr0, 7, 6) == 0 and idr0 & 2
    assert field(info.idr[1], 10, 6) == 8
    assert not info.idr[3] & (1 << 8 | 1 << 10)
    assert info.idr[5] & 0x70 == 0x50 and field(info.idr[5], 2, 0) == 4
    assert "NESTING" not in master_of(vm).smmu.feature_names()
    vm.close()


@pytest.mark.parametrize(("in_type", "err"), [
    (u.IOMMU_HW_INFO_TYPE_DEFAULT, 0), (u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 0),
    (u.IOMMU_HW_INFO_TYPE_INTEL_VTD, errno.EOPNOTSUPP),
])
def test_hw_info_requested_type(vmm: Vmm, in_type: int, err: int) -> None:
    if err:
        assert err_of(vmm.hw_info, in_type) == err
    else:
        assert vmm.hw_info(in_type)[0].out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3


# ==========================================================================================
# §4-§5, §10.2: what a paging attach writes (the STE and CD 0 words)
# ==========================================================================================
@pytest.mark.parametrize("dirty", [False, True])
def test_s1_paging_attach_ste_and_cd_words(vmm: Vmm, dirty: bool) -> None:
    vmm.attach(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if dirty else 0))
    m = master_of(vmm)
    dom = vmm.m.device(DEV).iommu_group.domain
    ct = m.cd_table
    # 20 SSID bits: a 2-level CD table (64K leaves of 1024 CDs).
    assert (ct.s1cdmax, ct.s1fmt) == (20, 2)
    ste = arm_smmu_read_ste(m)
    assert ste[0] == V | CFG_S1 | 2 << 4 | (ct.cdtab_dma & bits(51, 6)) | 20 << 59
    # S1DSS=SSID0, S1CIR=S1COR=WBRA, S1CSH=ISH, S1STALLD (stalls supported, master does not
    # stall), EATS=TRANS (ATS), STRW=NSEL1; S2VMID 0.
    assert ste[1] == 2 | 1 << 2 | 1 << 4 | 3 << 6 | 1 << 27 | 1 << 28
    assert ste.q[2:] == (0,) * 6
    cd = arm_smmu_read_cd(m, 0)
    assert cd is not None
    asid = dom.asid
    assert 1 <= asid < 1 << 16
    q0 = (16 | 0 << 6 | 1 << 8 | 1 << 10 | 3 << 12  # T0SZ 48-bit, TG0 4K, WBWA, ISH
          | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 41  # EPD1, V, IPS 48-bit, AA64
          | 1 << 45 | 1 << 46 | 1 << 47 | asid << 48)  # R, A, ASET, ASID
    if dirty:
        q0 |= 1 << 42 | 1 << 43  # HD, HA
    assert cd.q == (q0, dom.pgtbl.hw_info.root & bits(51, 4), 0, 0xF404FF44, 0, 0, 0, 0)


def test_pasid_attach_uses_the_cd_of_that_ssid(vmm: Vmm) -> None:
    m = vmm.m
    ioas2 = u.iommu_ioas_alloc(size=12)
    m.ioctl(vmm.fd, u.IOMMU_IOAS_ALLOC, ioas2)
    va2 = m.mmap(PAGE)
    m.mem_write(va2, b"pasid")
    m.mem_write(vmm.ram_va, b"rid")
    mp = u.iommu_ioas_map(size=40, ioas_id=ioas2.out_ioas_id, user_va=va2, length=PAGE, iova=0,
                          flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                          | u.IOMMU_IOAS_MAP_WRITEABLE)
    m.ioctl(vmm.fd, u.IOMMU_IOAS_MAP, mp)
    vmm.attach(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_PASID))
    pdom = vmm.hwpt_alloc(int(ioas2.out_ioas_id), u.IOMMU_HWPT_ALLOC_PASID)
    vmm.attach(pdom, pasid=5)
    assert m.dma_read(DEV, 0, 3) == b"rid" and m.dma_read(DEV, 0, 5, pasid=5) == b"pasid"
    # An invalid CD in a present leaf is C_BAD_CD; an invalid L1 descriptor (no leaf for
    # SSIDs 1024-2047 yet) is C_BAD_SUBSTREAMID.
    for pasid, reason in ((6, "C_BAD_CD"), (1023, "C_BAD_CD"), (1024, "C_BAD_SUBSTREAMID")):
        with pytest.raises(DmaFault) as ei:
            m.dma_read(DEV, 0, 1, pasid=pasid)
        assert ei.value.reason == reason, pasid
    dt = v.vfio_device_detach_iommufd_pt(argsz=12, flags=v.VFIO_DEVICE_DETACH_PASID, pasid=5)
    m.ioctl(vmm.vfds[DEV], v.VFIO_DEVICE_DETACH_IOMMUFD_PT, dt)
    with pytest.raises(DmaFault) as ei:
        m.dma_read(DEV, 0, 1, pasid=5)
    assert ei.value.reason == "C_BAD_CD"
    assert m.dma_read(DEV, 0, 3) == b"rid"


# ==========================================================================================
# §10.1: paging domain allocation flags and errnos
# ==========================================================================================
NP, DIRTY, PASID = (u.IOMMU_HWPT_ALLOC_NEST_PARENT, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                    u.IOMMU_HWPT_ALLOC_PASID)


@pytest.mark.parametrize(("options", "flags", "err", "cfg"), [
    ({}, 0, 0, 5), ({}, NP, 0, 6), ({}, DIRTY, 0, 5), ({}, PASID, 0, 5),
    ({}, DIRTY | PASID, 0, 5),
    ({}, NP | DIRTY, errno.EOPNOTSUPP, 0), ({}, NP | PASID, errno.EOPNOTSUPP, 0),
    ({"s1p": False}, 0, 0, 6),  # no stage 1: a plain S2 domain
    ({"s1p": False}, NP, errno.EOPNOTSUPP, 0),  # no nesting
    ({"s1p": False}, PASID, errno.EOPNOTSUPP, 0),
    ({"s1p": False}, DIRTY, errno.EOPNOTSUPP, 0),
    ({"s2p": False}, NP, errno.EOPNOTSUPP, 0),
    ({"httu": 1}, DIRTY, errno.EOPNOTSUPP, 0),  # no HTTU dirty state
])
def test_paging_alloc_flags(options: dict[str, Any], flags: int, err: int,
                            cfg: int) -> None:
    vm = Vmm(**options)
    if err:
        assert err_of(vm.hwpt_alloc, vm.ioas, flags) == err
    else:
        vm.attach(vm.hwpt_alloc(vm.ioas, flags))
        ste = arm_smmu_read_ste(master_of(vm))
        assert ste.cfg == cfg
        if cfg == 6:
            # S2FWB only for a nest parent on FWB hardware (smmuv3.md §10.1, §10.4).
            assert bool(ste[1] >> 25 & 1) == bool(flags & NP)
            assert ste[2] & 0xFFFF != 0  # VMID 0 is reserved
    vm.close()


def test_paging_alloc_refuses_driver_data(vmm: Vmm) -> None:
    assert err_of(vmm.hwpt_alloc, vmm.ioas, 0, bytes(16),
                  u.IOMMU_HWPT_DATA_ARM_SMMUV3) == errno.EOPNOTSUPP


# ==========================================================================================
# §12.3: vIOMMU size rules
# ==========================================================================================
@pytest.mark.parametrize(("options", "canwbs", "err"), [
    ({}, True, 0),
    ({}, False, 0),  # S2FWB keeps the guest from making memory non-cacheable
    ({"fwb": False}, True, 0),  # CANWBS alone is enough
    ({"fwb": False}, False, errno.EOPNOTSUPP),
    ({"implementer": 0x43B, "product": 0x487}, True, errno.EOPNOTSUPP),  # MMU-700
    ({"implementer": 0x43B, "product": 0x483, "variant": 1}, True, errno.EOPNOTSUPP),
    ({"implementer": 0x43B, "product": 0x483, "variant": 2}, True, 0),
])
def test_viommu_alloc_rules(options: dict[str, Any], canwbs: bool, err: int) -> None:
    vm = Vmm(dev_opts={DEV: {"canwbs": canwbs}}, **options)
    # The size query comes first: a plain HWPT is enough to see EOPNOTSUPP.
    hwpt = vm.hwpt_alloc(vm.ioas, 0 if err else u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    if err:
        assert err_of(vm.viommu_alloc, hwpt) == err
    else:
        vm.viommu_alloc(hwpt)
    vm.close()


def test_viommu_type_and_parent_rules(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert err_of(vmm.viommu_alloc, parent, type=2) == errno.EOPNOTSUPP  # Tegra: no impl
    assert err_of(vmm.viommu_alloc, vmm.hwpt_alloc(vmm.ioas)) == errno.EINVAL


def test_viommu_on_another_smmus_nest_parent_einval() -> None:
    vm = Vmm((DEV, DEV2), placement={DEV2: "smmu1"})
    parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert err_of(vm.viommu_alloc, parent, vm.dev_ids[DEV2]) == errno.EINVAL
    vm.close()


# ==========================================================================================
# §12.5: vSTE validation
# ==========================================================================================
def test_every_vste_bit_outside_the_masks_is_eio(vmm: Vmm) -> None:
    g = Guest(vmm, vdevice=False)
    for b in range(64):
        if not ALLOWED0 >> b & 1:
            assert err_of(vmm.nested, g.viommu, (V | CFG_S1 | 1 << b, 0)) == errno.EIO, b
        if not ALLOWED1 >> b & 1:
            assert err_of(vmm.nested, g.viommu, (V | CFG_S1, 1 << b)) == errno.EIO, b
    # Every allowed field at once is accepted (EATS=1; S1FMT=3 is the HW's to refuse).
    vmm.nested(g.viommu, (ALLOWED0 & ~bits(3, 1) | CFG_S1, ALLOWED1 & ~bits(29, 28) | 1 << 28))


@pytest.mark.parametrize("cfg", range(8))
@pytest.mark.parametrize("eats", range(4))
def test_vste_config_and_eats_values(vmm: Vmm, cfg: int, eats: int) -> None:
    g = Guest(vmm, vdevice=False)
    vste = (V | cfg << 1, eats << 28)
    if cfg in (0, 4, 5) and eats in (0, 1):
        vmm.nested(g.viommu, vste)
    else:
        assert err_of(vmm.nested, g.viommu, vste) == errno.EIO
    # V=0: everything else is ignored, the result is an abort STE.
    vmm.nested(g.viommu, (cfg << 1 | 0xFFFF_0000, eats << 28 | 0xFFFF_FF00))


@pytest.mark.parametrize("vste", [(0, 0), (0xFFFF_FFFF_FFFF_FFFE, (1 << 64) - 1), (V, 0)])
def test_invalid_or_abort_vste_installs_an_abort_ste(vmm: Vmm, vste: tuple[int, int]) -> None:
    g = Guest(vmm, vdevice=False)
    g.attach(vste)
    assert arm_smmu_read_ste(master_of(vmm)).q == (1, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, 0x1000, 1)
    assert ei.value.reason == "ABORT"


# ==========================================================================================
# §5.7: the nested STE, bit for bit
# ==========================================================================================
@pytest.mark.parametrize("ats", [False, True])
def test_nested_ste_fields(vmm: Vmm, ats: bool) -> None:
    g = Guest(vmm)
    vq0 = V | CFG_S1 | CD_GPA | 4 << 59  # linear table of 16 CDs at a guest IPA
    vq1 = 1 | 1 << 2 | 1 << 4 | 3 << 6 | 1 << 27 | (1 << 28 if ats else 0)
    g.attach((vq0, vq1))
    m = master_of(vmm)
    ste = arm_smmu_read_ste(m)
    assert m.vmaster is not None and m.vmaster.vsid == VSID
    parent = m.vmaster.vsmmu.s2_parent
    s2 = parent.s2_cfg()
    assert ste[0] == V | 7 << 1 | CD_GPA | 4 << 59  # CFG=NESTED, the guest's S1 fields
    eats = 1 << 28 if ats else 0
    # Guest S1DSS/S1CIR/S1COR/S1CSH/S1STALLD, MEV, EATS per ATS, S2FWB, SHCFG=incoming.
    assert ste[1] == (vq1 & ~bits(29, 28)) | 1 << 19 | eats | 1 << 25 | 1 << 44
    vtcr = 16 | 2 << 6 | 1 << 8 | 1 << 10 | 3 << 12 | 0 << 14 | 5 << 16
    assert ste[2] == s2.vmid | vtcr << 32 | 1 << 51 | 1 << 54 | 1 << 58  # S2AA64 S2PTW S2R
    assert s2.vmid == parent.vmid != 0 and ste[3] == s2.vttbr & bits(51, 4)
    assert ste.q[4:] == (0, 0, 0, 0)
    assert m.ats_enabled == ats and bool(vmm.m.device(DEV).props.get("pci.ats_enabled")) == ats
    # The same words as the make function over the parent (smmuv3.md §5.7).
    assert ste == arm_smmu_make_nested_domain_ste(m, (vq0, vq1 & ~bits(29, 28)), s2, ats)


def test_nested_golden_vector() -> None:
    """§5.8 "nested (test form) S1DSS=BYPASS, ATS" from the driver's nested make."""
    s2 = make_s2_ste(Feat.ATS)  # the KUnit S2 inputs
    cfg = S2Cfg(vmid=0, vttbr=0xDAEDBEEFDEADBEEF,
                vtcr=Vtcr(tsz=4, sl=3, irgn=2, orgn=1, sh=3, tg=2, ps=1))
    vste = (0xF800F0F0F0F0F0EB, 0x080000D5)
    ste = arm_smmu_make_nested_domain_ste(FakeMaster(), vste, cfg, True)
    assert ste.q[:4] == (0xF800F0F0F0F0F0EF, 0x00001000180800D5, 0x0449B6C400000000,
                         0x000DBEEFDEADBEE0)
    assert ste.q[2:] == s2.q[2:]


def test_bypass_vste_is_the_parents_s2_ste_without_ats(vmm: Vmm) -> None:
    g = Guest(vmm, vdevice=False)
    g.attach((V | CFG_BYPASS, 1 << 28))  # EATS only counts with CFG=S1_TRANS
    m = master_of(vmm)
    ste = arm_smmu_read_ste(m)
    assert ste.cfg == 6 and field(ste[1], 29, 28) == 0 and not m.ats_enabled
    assert m.vmaster is None  # no vDEVICE: no event forwarding


# ==========================================================================================
# §12.6: nested attach rules
# ==========================================================================================
def test_translating_vste_needs_a_vdevice_abort_bypass_do_not(vmm: Vmm) -> None:
    g = Guest(vmm, vdevice=False)
    assert err_of(g.attach) == errno.ENOENT
    g.attach((V | CFG_BYPASS, 0))
    g.attach((V, 0))
    g.attach((0, 0))


def test_nested_domain_of_another_smmu_einval() -> None:
    vm = Vmm((DEV, DEV2), placement={DEV2: "smmu1"})
    g = Guest(vm)
    h = vm.nested(g.viommu, (V | CFG_BYPASS, 0))
    assert err_of(vm.attach, h, DEV2) == errno.EINVAL
    # Allocating a nested HWPT of this vIOMMU for the other SMMU's device: EINVAL too.
    assert err_of(vm.nested, g.viommu, (V, 0), dev_id=vm.dev_ids[DEV2]) == errno.EINVAL
    vm.close()


def test_nested_attach_with_pasids_in_use_ebusy() -> None:
    """Not reachable through iommufd (a nested SMMUv3 HWPT is never PASID-compatible, so
    iommufd refuses first with EINVAL); the driver's own rule at the hook."""
    n = Nest()
    env, dev = n.env, n.dev
    s1 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
    env.core.iommu_attach_device_pasid(s1, dev, 5)
    n.vdevice(dev, 0x42)
    d = n.nested(V | CFG_BYPASS)
    expect_errno(errno.EBUSY, d.ops.attach_dev, d, dev, None)
    env.core.iommu_detach_device_pasid(s1, dev, 5)
    env.core.iommu_group_replace_domain(dev.iommu_group, d)
    assert arm_smmu_read_ste(master_of_env(dev)).cfg == 6
    env.teardown()
    assert env.kernel_pages == 0


def master_of_env(dev: Any) -> ArmSmmuMaster:
    m = dev.iommu.priv
    assert isinstance(m, ArmSmmuMaster)
    return m


def test_vdevice_needs_a_single_streamid() -> None:
    vm = Vmm(dev_opts={DEV: {"stream_ids": (0x10, 0x11)}})
    g = Guest(vm, vdevice=False)
    assert err_of(vm.vdevice_alloc, g.viommu, VSID) == errno.EOPNOTSUPP
    vm.close()


# ==========================================================================================
# §9 / §12.8: events that reach the vEVENTQ, with the vSID
# ==========================================================================================
def test_forwarded_events_carry_the_vsid(vmm: Vmm) -> None:
    g = Guest(vmm)
    efd = vmm.veventq_alloc(g.viommu)
    psid = master_of(vmm).streams[0]
    assert psid != VSID

    def fault(expect: str, **dma: Any) -> tuple[int, int, int, int]:
        with pytest.raises(DmaFault) as ei:
            if dma.pop("write", False):
                vmm.m.dma_write(DEV, dma.pop("iova", GVA), b"x", **dma)
            else:
                vmm.m.dma_read(DEV, dma.pop("iova", GVA), 4, **dma)
        assert ei.value.reason == expect
        rec = ei.value.detail["record"]
        got = vevents(vmm, efd)
        assert len(got) == 1, expect
        evt = got[0]
        assert evt[0] >> 32 == VSID and rec[0] >> 32 == psid  # only the SID changes
        assert evt[0] & bits(31, 0) == rec[0] & bits(31, 0) and evt[1:] == tuple(rec[1:])
        return evt

    g.attach()
    # 0x10 F_TRANSLATION, stage 1, a read.
    evt = fault("F_TRANSLATION")
    assert evt[0] & 0xFF == 0x10 and evt[2] == GVA and evt[1] >> 35 & 1 and not evt[1] >> 39 & 1
    # 0x12 F_ACCESS: a guest leaf with AF = 0 and no HTTU in the guest's CD (HA = 0).
    from iommu_core.pgtable.walk import WalkResult, walk

    g.map(GVA + 2 * PAGE, 0x30000)
    leaf = walk(g.s1.fmt, vmm.ram.read_u64, g.s1.hw_info.root, GVA + 2 * PAGE)
    assert isinstance(leaf, WalkResult)
    vmm.ram.write_u64(leaf.desc_addr, leaf.desc & ~(1 << 10))
    assert fault("F_ACCESS", iova=GVA + 2 * PAGE)[0] & 0xFF == 0x12
    # 0x13 F_PERMISSION: a write to a read-only stage-1 page (RnW = 0).
    g.map(GVA, 0x10000, RO)
    evt = fault("F_PERMISSION", write=True)
    assert evt[0] & 0xFF == 0x13 and not evt[1] >> 35 & 1
    # 0x08 C_BAD_SUBSTREAMID: a PASID with S1CDMax = 0. The SubstreamID is recorded, with
    # no SSV qualifier (bit 11 RES0), and nothing else (spec 7.3.9).
    evt = fault("C_BAD_SUBSTREAMID", pasid=3)
    assert evt[0] & 0xFFF == 0x08 and field(evt[0], 31, 12) == 3 and evt[1:] == (0, 0, 0)
    # 0x11 F_ADDR_SIZE: the guest CD's IPS is 32 bits, the output is above 4 GiB.
    g.map(GVA + PAGE, 1 << 32)
    vmm.ram.write(CD_GPA, (g.cd[0] & ~bits(34, 32)).to_bytes(8, "little"))
    g.inv((CFGI_CD | VSID << 32, 1))
    evt = fault("F_ADDR_SIZE", iova=GVA + PAGE)
    assert evt[0] & 0xFF == 0x11
    # 0x0a C_BAD_CD: the guest invalidates CD 0.
    vmm.ram.write(CD_GPA, bytes(64))
    g.inv((CFGI_CD | VSID << 32, 1))
    evt = fault("C_BAD_CD")  # StreamID, SSV, SubstreamID; RES0 elsewhere (7.3.11)
    assert evt[0] & 0xFFF == 0x0A and evt[1:] == (0, 0, 0)
    # 0x06 F_STREAM_DISABLED: S1CDMax=2, S1DSS=TERMINATE, no PASID: StreamID only (7.3.7).
    g.attach((V | CFG_S1 | CD_GPA | 2 << 59, 0))
    evt = fault("F_STREAM_DISABLED")
    assert evt[0] & 0xFFFF_FFFF == 0x06 and evt[1:] == (0, 0, 0)
    # 0x04 C_BAD_STE: the guest's S1CDMax (21) exceeds SSIDSIZE (20) (7.3.5).
    g.attach((V | CFG_S1 | CD_GPA | 21 << 59, 0))
    evt = fault("C_BAD_STE")
    assert evt[0] & 0xFFF == 0x04 and evt[1:] == (0, 0, 0)


def test_stage2_faults_stay_in_the_host(vmm: Vmm) -> None:
    g = Guest(vmm)
    efd = vmm.veventq_alloc(g.viommu)
    g.attach()
    g.map(GVA, GUEST + PAGE)  # an IPA the VMM never mapped
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 4)
    assert ei.value.reason == "F_TRANSLATION" and ei.value.detail["stage"] == 2
    rec = ei.value.detail["record"]
    assert rec[1] >> 39 & 1 and field(rec[3], 51, 12) << 12 == GUEST + PAGE  # S2, IPA
    assert field(rec[1], 41, 40) == 2 and rec[2] == GVA  # CLASS=IN, input address
    assert vevents(vmm, efd) == []
    assert any("event 0x10" in line for line in master_of(vmm).smmu.log)


def extra_area(vm: Vmm, iova: int, pages: int) -> tuple[int, Any]:
    """``pages`` of process memory mapped at ``iova`` of the IOAS as their own area (so
    they can be unmapped alone), and a GuestRam that allocates tables from them."""
    from .vmm import GuestRam

    va = vm.m.mmap(pages * PAGE)
    vm.map(va, pages * PAGE, iova)
    ram = GuestRam(lambda g, n: vm.m.mem_read(va + g - iova, n),
                   lambda g, d: vm.m.mem_write(va + g - iova, d), iova + pages * PAGE,
                   table_pages=pages)
    return va, ram


def ioas_unmap(vm: Vmm, iova: int, length: int) -> None:
    unmap = u.iommu_ioas_unmap(size=24, ioas_id=vm.ioas, iova=iova, length=length)
    vm.m.ioctl(vm.fd, u.IOMMU_IOAS_UNMAP, unmap)


def test_stage1_table_walk_goes_through_stage2(vmm: Vmm) -> None:
    """The guest's table walk reads IPAs: when the VMM unmaps the guest page holding the
    stage-1 tables, the walk takes a stage-2 fault of class TT, kept in the host."""
    from iommu_core.pgtable import IoPageTable, formats

    g = Guest(vmm)
    efd = vmm.veventq_alloc(g.viommu)
    _va, tram = extra_area(vmm, GUEST, 8)
    s1 = IoPageTable(formats.arm_lpae_s1(4096, 48, 48), tram)
    vmm.guest_cd(s1, asid=3)
    g.attach()
    s1.map(GVA, 0x10000, PAGE, RW)
    vmm.m.mem_write(vmm.ram_va + 0x10000, b"ipa")
    assert vmm.m.dma_read(DEV, GVA, 3) == b"ipa"
    ioas_unmap(vmm, GUEST, 8 * PAGE)  # the kernel invalidates the nested TLB entries too
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 3)
    d = ei.value.detail
    assert (ei.value.reason, d["stage"], d["class"]) == ("F_TRANSLATION", 2, 1)  # TT
    assert GUEST <= d["ipa"] < GUEST + 8 * PAGE
    assert vevents(vmm, efd) == []


def test_cd_fetch_goes_through_stage2(vmm: Vmm) -> None:
    g = Guest(vmm)
    g.attach((V | CFG_S1 | (GUEST + PAGE), 0))  # the CD table at an unmapped IPA
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 1)
    d = ei.value.detail
    assert (ei.value.reason, d["stage"], d["class"], d["ipa"]) == (
        "F_TRANSLATION", 2, 0, GUEST + PAGE)  # CLASS=CD


# ==========================================================================================
# §10.3: ATS and PRI
# ==========================================================================================
@pytest.mark.parametrize(("options", "dev_opts", "ats"), [
    ({}, {}, True),
    ({"ats": False}, {}, False),
    ({}, {"rc_ats": False}, False),  # firmware: root complex without ATS
    ({}, {"ats": False}, False),  # the endpoint has no ATS capability
])
def test_ats_rules_for_a_paging_attach(options: dict[str, Any],
                                       dev_opts: dict[str, Any], ats: bool) -> None:
    vm = Vmm(dev_opts={DEV: dev_opts}, **options)
    vm.attach(vm.hwpt_alloc(vm.ioas))
    props = vm.m.device(DEV).props
    ste = arm_smmu_read_ste(master_of(vm))
    assert bool(props.get("pci.ats_enabled")) == ats == (field(ste[1], 29, 28) == 1)
    if ats:
        assert props.get("pci.ats_stu") == 12  # log2 of the smallest page size
    vm.detach()  # blocked: an abort STE never has ATS
    assert not props.get("pci.ats_enabled") and arm_smmu_read_ste(master_of(vm)).cfg == 0
    vm.close()


def test_pri_only_with_a_fault_capable_domain(vmm: Vmm) -> None:
    props = vmm.m.device(DEV).props
    vmm.attach(vmm.hwpt_alloc(vmm.ioas))
    assert props.get("pci.ats_enabled") and not props.get("pci.pri_enabled")
    fault_id, _ffd = vmm.fault_alloc()
    vmm.attach(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id))
    assert props.get("pci.pri_enabled")
    vmm.attach(vmm.hwpt_alloc(vmm.ioas))
    assert not props.get("pci.pri_enabled") and props.get("pci.ats_enabled")


# ==========================================================================================
# §11: the kernel's own invalidations (nest parent)
# ==========================================================================================
def test_ioas_unmap_under_a_nested_domain_invalidates(vmm: Vmm) -> None:
    """A nest parent unmap: TLBI_S2_IPA, TLBI_NH_ALL for the VMID (combined entries) and a
    full ATC_INV for a device whose guest enabled ATS; no stale translation remains."""
    g = Guest(vmm)
    g.attach(guest_vste(ats=True))
    va, _ram = extra_area(vmm, GUEST, 1)
    vmm.m.mem_write(va, b"s2")
    g.map(GVA, GUEST)
    hw = vmm.m.platform.iommus["smmu0"]
    assert vmm.m.dma_read(DEV, GVA, 2) == b"s2"  # in the TLB and the endpoint's ATC
    counts = dict(hw.cmd.counts)  # type: ignore[attr-defined]
    ioas_unmap(vmm, GUEST, PAGE)
    after = hw.cmd.counts  # type: ignore[attr-defined]
    for op in ("TLBI_S2_IPA", "TLBI_NH_ALL", "ATC_INV"):
        assert after.get(op, 0) > counts.get(op, 0), op
    with pytest.raises(DmaFault):
        vmm.m.dma_read(DEV, GVA, 2)


# ==========================================================================================
# §8.2: command encodings (driver level: what the driver writes in the queue)
# ==========================================================================================
def test_command_encodings() -> None:
    """7.3's arm_smmu_make_cmd_* builders and the range loop of
    arm_smmu_cmdq_batch_add_range, bit for bit."""
    from drivers.arm_smmu_v3 import cmdq as c

    addr = 0xFFF0_1234_5678_9000
    assert c.arm_smmu_make_cmd_prefetch_cfg(0x1234) == (0x01 | 0x1234 << 32, 0)
    assert c.arm_smmu_make_cmd_cfgi_ste(5, True) == (0x03 | 5 << 32, 1)
    assert c.arm_smmu_make_cmd_cfgi_all() == (0x04, 31)  # the whole SID range
    assert c.arm_smmu_make_cmd_cfgi_cd(5, 0xABCDE, True) == (0x05 | 0xABCDE << 12 | 5 << 32, 1)
    assert c.arm_smmu_make_cmd_op(0x06) == (0x06, 0)
    assert c.arm_smmu_make_cmd_tlbi(0x10, 0, 7) == (0x10 | 7 << 32, 0)
    assert c.arm_smmu_make_cmd_tlbi(0x11, 9, 7) == (0x11 | 7 << 32 | 9 << 48, 0)
    assert c.arm_smmu_make_cmd_op(0x20) == (0x20, 0)
    assert c.arm_smmu_make_cmd_tlbi(0x28, 0, 7) == (0x28 | 7 << 32, 0)
    assert c.arm_smmu_make_cmd_op(0x30) == (0x30, 0)
    assert c.arm_smmu_make_cmd_atc_inv(0x99, 0x54321, addr, 52) == (
        0x40 | 1 << 11 | 0x54321 << 12 | 0x99 << 32, 52 | addr)
    assert c.arm_smmu_make_cmd_atc_inv_all(0x99, 0) == (0x40 | 0x99 << 32, 52)  # no SSV
    assert c.arm_smmu_make_cmd_pri_resp(0x99, 3, True, 0x1FF, 2) == (
        0x41 | 1 << 11 | 3 << 12 | 0x99 << 32, 0x1FF | 2 << 12)
    assert c.arm_smmu_make_cmd_resume(0x99, 0xBEEF, 1) == (0x44 | 1 << 12 | 0x99 << 32, 0xBEEF)
    # CMD_SYNC: MSH=ISH, MSIATTR=OIWB; CS=SEV, or CS=IRQ with an MSI address.
    assert c.arm_smmu_make_cmd_sync(2, 0) == (0x46 | 2 << 12 | 3 << 22 | 0xF << 24, 0)
    assert c.arm_smmu_make_cmd_sync(1, 0x8000_1040) == (0x46 | 1 << 12 | 3 << 22 | 0xF << 24,
                                                        0x8000_1040)


class _Batch:
    def __init__(self) -> None:
        self.cmds: list[tuple[int, int]] = []

    def add_cmd(self, cmd: tuple[int, int]) -> None:
        self.cmds.append(cmd)


@pytest.mark.parametrize(("ril", "leaf", "iova", "size", "granule", "expect"), [
    # RIL, leaf 4K pages: TTL=3, one command per 5-bit chunk of the page count.
    (True, True, 0x10_0000, 3 * 4096, 4096, [(2 << 12 | 0 << 20, 0x10_0000)]),
    (True, True, 0x10_0000, 33 * 4096, 4096,
     [(0 << 12 | 0 << 20, 0x10_0000), (0 << 12 | 5 << 20, 0x10_1000)]),
    # Non-leaf one page: two pages (SCALE=1), so NUM=SCALE=TTL=0 (Reserved) never goes out.
    (True, False, 0x10_0000, 4096, 4096, [(0 << 12 | 1 << 20, 0x10_0000)]),
    # Without RIL: one command per granule, no range fields.
    (False, True, 0x10_0000, 2 * 4096, 4096, [(0, 0x10_0000), (0, 0x10_1000)]),
])
def test_range_tlbi_commands(ril: bool, leaf: bool, iova: int, size: int, granule: int,
                             expect: list[tuple[int, int]]) -> None:
    from drivers.arm_smmu_v3.cmdq import arm_smmu_make_cmd_tlbi
    from drivers.arm_smmu_v3.domain import arm_smmu_cmdq_batch_add_range
    from drivers.arm_smmu_v3.regs import ARM_SMMU_FEAT_RANGE_INV

    class Smmu:
        features = ARM_SMMU_FEAT_RANGE_INV if ril else 0

    batch = _Batch()
    cmd = arm_smmu_make_cmd_tlbi(NH_VA, 9, 0)
    arm_smmu_cmdq_batch_add_range(Smmu(), batch, cmd, leaf, iova, size,  # type: ignore[arg-type]
                                  granule, 12)
    fields1 = (1 if leaf else 0) | ((3 << 8 | 1 << 10) if ril and leaf else 0) | (
        1 << 10 if ril and not leaf else 0)
    assert batch.cmds == [(cmd[0] | e0, fields1 | a) for e0, a in expect]


def test_invalidate_targets(vmm: Vmm) -> None:
    g = Guest(vmm)
    nested = vmm.nested(g.viommu, (V | CFG_BYPASS, 0))
    for hwpt, err in ((nested, errno.EOPNOTSUPP),  # SMMUv3: no per-HWPT user invalidation
                      (g.parent, errno.EINVAL)):  # a paging HWPT
        inv = u.iommu_hwpt_invalidate(size=32, hwpt_id=hwpt, data_uptr=vmm.scratch,
                                      data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                                      entry_len=16, entry_num=1)
        vmm.m.mem_write(vmm.scratch, NH_ALL.to_bytes(16, "little"))
        assert err_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == err
        assert inv.entry_num == 0

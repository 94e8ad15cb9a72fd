"""The VFIO device fd after BIND_IOMMUFD, as a VMM uses it: VFIO_DEVICE_GET_INFO,
GET_REGION_INFO, GET_IRQ_INFO, RESET and DEVICE_FEATURE with Linux 7.3's rules and
errnos (vfio_main.c, vfio_pci_core.c), and the config space region through pread/pwrite
with vfio_pci_config.c's virtualization. Machine contract only, plus the device's
hardware (``m.device(name).pci``) to check what reached it."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from iommu_core.platform import pci as P
from iommu_sim import Machine
from iommufd import uapi_vfio as vf
from tests.core.test_pci import RamBar

DEV = "0000:00:01.0"
CFG = vf.VFIO_PCI_INDEX_TO_OFFSET(vf.VFIO_PCI_CONFIG_REGION_INDEX)
FEAT = vf.VFIO_DEVICE_FEATURE
GET, SET, PROBE = (vf.VFIO_DEVICE_FEATURE_GET, vf.VFIO_DEVICE_FEATURE_SET,
                   vf.VFIO_DEVICE_FEATURE_PROBE)


def errno_of(fn: Any, *args: Any, **kw: Any) -> int:
    try:
        fn(*args, **kw)
    except OSError as e:
        return int(e.errno or 0)
    return 0


class Vfio:
    """One Machine, /dev/iommu and the cdev of one device, bound."""

    def __init__(self, m: Machine, dev: str = DEV, bind: bool = True) -> None:
        self.m = m
        self.dev = dev
        self.iommufd = m.open("/dev/iommu")
        self.fd = m.open(m.vfio_cdev(dev))
        if bind:
            self.bind()

    @property
    def hw(self) -> P.PciFunction:
        pdev = self.m.device(self.dev).pci
        assert pdev is not None
        return pdev

    def bind(self) -> None:
        b = vf.vfio_device_bind_iommufd(argsz=24, iommufd=self.iommufd)
        self.m.ioctl(self.fd, vf.VFIO_DEVICE_BIND_IOMMUFD, b)

    def info(self, argsz: int = 24) -> vf.vfio_device_info:
        info = vf.vfio_device_info(argsz=argsz)
        self.m.ioctl(self.fd, vf.VFIO_DEVICE_GET_INFO, info)
        return info

    def region(self, index: int, argsz: int = 32) -> vf.vfio_region_info:
        r = vf.vfio_region_info(argsz=argsz, index=index)
        self.m.ioctl(self.fd, vf.VFIO_DEVICE_GET_REGION_INFO, r)
        return r

    def irq(self, index: int, argsz: int = 16) -> vf.vfio_irq_info:
        q = vf.vfio_irq_info(argsz=argsz, index=index)
        self.m.ioctl(self.fd, vf.VFIO_DEVICE_GET_IRQ_INFO, q)
        return q

    def feature(self, flags: int, data: bytes = b"", argsz: int | None = None) -> int:
        buf = bytearray(vf.vfio_device_feature(argsz=8 + len(data) if argsz is None else argsz,
                                               flags=flags)) + bytearray(data)
        return errno_of(self.m.ioctl, self.fd, FEAT, buf)

    def cfg_read(self, off: int, n: int) -> int:
        return int.from_bytes(self.m.pread(self.fd, n, CFG + off), "little")

    def cfg_write(self, off: int, n: int, value: int) -> int:
        return self.m.pwrite(self.fd, value.to_bytes(n, "little"), CFG + off)

    def close(self) -> None:
        self.m.close(self.fd)
        self.m.close(self.iommufd)


@pytest.fixture
def m() -> Iterator[Machine]:
    machine = Machine.default()
    yield machine
    machine.shutdown()
    assert machine.kernel_pages_in_use == 0


@pytest.fixture
def v(m: Machine) -> Vfio:
    return Vfio(m)


def bar_machine(*bars: P.PciBar | None, **opts: Any) -> Machine:
    return Machine.from_config({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                                "devices": [{"name": DEV, "iommu": "smmu0",
                                             "bars": tuple(bars), **opts}]})


# -- before BIND_IOMMUFD -----------------------------------------------------------------------
def test_everything_but_bind_is_einval_before_bind(m: Machine) -> None:
    # vfio_main.c: !df->access_granted -> EINVAL for ioctl, read, write and mmap
    u = Vfio(m, bind=False)
    for req, arg in ((vf.VFIO_DEVICE_GET_INFO, vf.vfio_device_info(argsz=24)),
                     (vf.VFIO_DEVICE_GET_REGION_INFO, vf.vfio_region_info(argsz=32, index=7)),
                     (vf.VFIO_DEVICE_GET_IRQ_INFO, vf.vfio_irq_info(argsz=16)),
                     (vf.VFIO_DEVICE_RESET, 0), (vf.VFIO_DEVICE_SET_IRQS, 0),
                     (FEAT, vf.vfio_device_feature(argsz=8, flags=PROBE)), (0x3BFF, 0)):
        assert errno_of(m.ioctl, u.fd, req, arg) == errno.EINVAL, hex(req)
    assert errno_of(m.pread, u.fd, 4, CFG) == errno.EINVAL
    assert errno_of(m.pwrite, u.fd, b"\0\0", CFG + 4) == errno.EINVAL
    assert errno_of(m.read, u.fd, 4) == errno.EINVAL
    assert errno_of(m.write, u.fd, b"\0") == errno.EINVAL
    assert errno_of(m.mmap, 4096, u.fd, CFG) == errno.EINVAL
    u.bind()
    assert u.info().flags & vf.VFIO_DEVICE_FLAGS_PCI
    u.close()


def test_pread_pwrite_at_the_syscall_boundary(m: Machine) -> None:
    # ksys_pread64: pos < 0 is EINVAL before the fd; a file without pread is ESPIPE
    u = Vfio(m)
    assert errno_of(m.pread, 99, 4, -1) == errno.EINVAL
    assert errno_of(m.pread, 99, 4, 0) == errno.EBADF
    assert errno_of(m.pread, u.iommufd, 4, 0) == errno.ESPIPE
    assert errno_of(m.pwrite, u.iommufd, b"x", 0) == errno.ESPIPE
    assert errno_of(m.pread, u.iommufd, -1, 0) == errno.ESPIPE  # the op is checked first
    assert errno_of(m.pread, u.fd, -1, CFG) == errno.EINVAL  # count above SSIZE_MAX
    assert errno_of(m.pread, u.fd, 4, 1 << 63) == errno.EINVAL  # a negative loff_t
    assert errno_of(m.pread, u.fd, 16, (1 << 63) - 8) == errno.EINVAL  # pos + count overflows
    assert errno_of(m.pwrite, u.fd, object(), CFG) == errno.EFAULT
    assert errno_of(m.pread, u.fd, 4, "x") == errno.EINVAL
    assert m.pread(u.fd, 0, CFG) == b""
    assert m.pwrite(u.fd, b"", 0) == 0
    u.close()


# -- GET_INFO, GET_REGION_INFO, GET_IRQ_INFO -------------------------------------------------
def test_get_info(v: Vfio) -> None:
    info = v.info()
    assert info.flags == vf.VFIO_DEVICE_FLAGS_PCI | vf.VFIO_DEVICE_FLAGS_RESET
    assert (info.num_regions, info.num_irqs, info.cap_offset, info.argsz) == (9, 5, 0, 24)
    # minsz = offsetofend(num_irqs): the reply is min(argsz, sizeof) bytes
    buf = bytearray(vf.vfio_device_info(argsz=16))[:16] + b"\xaa" * 8
    v.m.ioctl(v.fd, vf.VFIO_DEVICE_GET_INFO, buf)
    assert buf[16:] == b"\xaa" * 8 and buf[4:16] == bytes(info)[4:16]
    big = bytearray(vf.vfio_device_info(argsz=64, cap_offset=7)) + b"\xbb" * 40
    v.m.ioctl(v.fd, vf.VFIO_DEVICE_GET_INFO, big)
    assert big[16:24] == bytes(8) and big[24:] == b"\xbb" * 40  # no capability chain
    assert errno_of(v.info, 15) == errno.EINVAL
    assert errno_of(v.m.ioctl, v.fd, vf.VFIO_DEVICE_GET_INFO, bytearray(12)) == errno.EFAULT


def test_get_region_info(v: Vfio) -> None:
    rw = vf.VFIO_REGION_INFO_FLAG_READ | vf.VFIO_REGION_INFO_FLAG_WRITE
    cfg = v.region(vf.VFIO_PCI_CONFIG_REGION_INDEX)
    assert (cfg.flags, cfg.size, cfg.offset, cfg.cap_offset) == (rw, 4096, 7 << 40, 0)
    bar0 = v.region(vf.VFIO_PCI_BAR0_REGION_INDEX)  # the DMA engine: 8 KiB, mmap-able
    assert (bar0.flags, bar0.size, bar0.offset, bar0.cap_offset) == (
        rw | vf.VFIO_REGION_INFO_FLAG_MMAP, 0x2000, 0, 0)
    for i in range(1, vf.VFIO_PCI_BAR5_REGION_INDEX + 1):  # no other BAR
        r = v.region(i)
        assert (r.flags, r.size, r.offset) == (0, 0, i << 40)
    rom = v.region(vf.VFIO_PCI_ROM_REGION_INDEX)
    assert (rom.flags, rom.size, rom.offset) == (0, 0, 6 << 40)
    for bad in (vf.VFIO_PCI_VGA_REGION_INDEX, vf.VFIO_PCI_NUM_REGIONS, 0xFFFF_FFFF):
        assert errno_of(v.region, bad) == errno.EINVAL
    assert errno_of(v.region, 7, 31) == errno.EINVAL
    buf = bytearray(vf.vfio_region_info(argsz=48, index=7)) + b"\xcc" * 16
    v.m.ioctl(v.fd, vf.VFIO_DEVICE_GET_REGION_INFO, buf)
    assert buf[32:] == b"\xcc" * 16  # copy_to_user(arg, &info, minsz)
    assert errno_of(v.m.ioctl, v.fd, vf.VFIO_DEVICE_GET_REGION_INFO, bytearray(24)) == (
        errno.EFAULT)


def test_get_irq_info(v: Vfio) -> None:
    noresize = vf.VFIO_IRQ_INFO_EVENTFD | vf.VFIO_IRQ_INFO_NORESIZE
    want = {vf.VFIO_PCI_INTX_IRQ_INDEX: (vf.VFIO_IRQ_INFO_EVENTFD | vf.VFIO_IRQ_INFO_MASKABLE
                                         | vf.VFIO_IRQ_INFO_AUTOMASKED, 1),
            vf.VFIO_PCI_MSI_IRQ_INDEX: (noresize, 1),  # 64-bit MSI, one vector
            vf.VFIO_PCI_MSIX_IRQ_INDEX: (noresize, 0),  # no MSI-X capability
            vf.VFIO_PCI_ERR_IRQ_INDEX: (noresize, 1), vf.VFIO_PCI_REQ_IRQ_INDEX: (noresize, 1)}
    for index, (flags, count) in want.items():
        q = v.irq(index)
        assert (q.flags, q.count, q.index, q.argsz) == (flags, count, index, 16), index
    assert errno_of(v.irq, vf.VFIO_PCI_NUM_IRQS) == errno.EINVAL
    assert errno_of(v.irq, 0, 15) == errno.EINVAL


def test_virtual_function_has_no_intx_and_shows_its_ids() -> None:
    m = Machine.from_config({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                             "devices": [{"name": DEV, "iommu": "smmu0", "is_virtfn": True}]})
    u = Vfio(m)
    assert u.irq(vf.VFIO_PCI_INTX_IRQ_INDEX).count == 0
    assert u.hw.config_read(P.PCI_VENDOR_ID, 4) == 0xFFFF_FFFF
    assert u.cfg_read(P.PCI_VENDOR_ID, 4) == 0x0001_8E5A  # vfio virtualizes the ids
    assert u.cfg_read(P.PCI_INTERRUPT_PIN, 1) == 0
    assert u.cfg_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_MEMORY  # no MSE: shown enabled
    m.shutdown()


# -- the config space region ---------------------------------------------------------------
def _vfio_ext_caps(v: Vfio) -> list[tuple[int, int, int]]:
    out, pos = [], 0x100
    while True:
        header = v.cfg_read(pos, 4)
        out.append((P.PCI_EXT_CAP_ID(header), (header >> 16) & 0xF, pos))
        pos = P.PCI_EXT_CAP_NEXT(header)
        if not pos:
            return out


def test_config_space_reads_the_function(v: Vfio) -> None:
    hw = v.hw
    assert v.cfg_read(0, 4) == 0x0001_8E5A and v.cfg_read(8, 4) == 0x0880_0001
    assert v.cfg_read(P.PCI_CAPABILITY_LIST, 1) == 0x40
    chain, pos = [], 0x40
    while pos:
        chain.append((v.cfg_read(pos, 1), pos))
        pos = v.cfg_read(pos + 1, 1)
    assert chain == [(P.PCI_CAP_ID_PM, 0x40), (P.PCI_CAP_ID_MSI, 0x50), (P.PCI_CAP_ID_EXP, 0x70)]
    for off, n in ((0x70 + P.PCI_EXP_DEVCAP, 4), (0x70 + P.PCI_EXP_DEVCTL, 2),
                   (0x50 + P.PCI_MSI_FLAGS, 2), (0x110 + P.PCI_PRI_MAX_REQ, 4)):
        assert v.cfg_read(off, n) == hw.config_read(off, n)
    # PASID is hidden (pci_ext_cap_length 0): PRI's next skips it; its bytes read raw.
    assert [(c, p) for c, _, p in _vfio_ext_caps(v)] == [(P.PCI_EXT_CAP_ID_ATS, 0x100),
                                                          (P.PCI_EXT_CAP_ID_PRI, 0x110)]
    assert P.PCI_EXT_CAP_NEXT(hw.config_read(0x110, 4)) == 0x120
    assert v.cfg_read(0x120, 8) == int.from_bytes(hw.cfg.data[0x120:0x128], "little")
    assert len(v.m.pread(v.fd, 4096, CFG)) == 4096


@pytest.mark.parametrize(("opts", "want"), [
    ({"ats": False, "pri": False}, [(0, 0, 0x100)]),  # PASID first: kept as an anchor
    ({"pri": False}, [(P.PCI_EXT_CAP_ID_ATS, 1, 0x100)]),
    ({"pasid_bits": 0}, [(P.PCI_EXT_CAP_ID_ATS, 1, 0x100), (P.PCI_EXT_CAP_ID_PRI, 1, 0x110)]),
    ({"ats": False, "pri": False, "pasid_bits": 0}, [(0, 0, 0x100)]),
])
def test_extended_capability_chain_as_vfio_shows_it(opts: dict[str, Any],
                                                    want: list[tuple[int, int, int]]) -> None:
    m = bar_machine(**opts)
    u = Vfio(m)
    assert _vfio_ext_caps(u) == want
    if opts.get("pasid_bits", 20) and not opts.get("ats", True):
        assert u.cfg_read(0x100, 4) == 0  # id/version/next of the hidden PASID: 0
        assert u.hw.config_read(0x100, 4) & 0xFFFF == P.PCI_EXT_CAP_ID_PASID
    m.shutdown()


def test_config_writes_follow_the_permission_tables(v: Vfio) -> None:
    hw = v.hw
    v.cfg_write(P.PCI_VENDOR_ID, 4, 0)  # read-only, dropped
    assert v.cfg_read(0, 4) == 0x0001_8E5A
    # BARs and the ROM are virtual: BAR0 sizes as the 8 KiB it is, an absent BAR to 0.
    assert v.cfg_write(P.PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF) == 4
    assert v.cfg_read(P.PCI_BASE_ADDRESS_0, 4) == 0xFFFF_E000
    assert hw.config_read(P.PCI_BASE_ADDRESS_0, 4) == hw.bar_start[0]
    assert v.cfg_write(P.PCI_BASE_ADDRESS_0 + 4, 4, 0xFFFF_FFFF) == 4
    assert v.cfg_read(P.PCI_BASE_ADDRESS_0 + 4, 4) == 0 and v.cfg_read(P.PCI_ROM_ADDRESS, 4) == 0
    # COMMAND: INTx Disable is virtual, the rest goes to the hardware; with no INTx in use
    # the physical bit follows the virtual one (vfio_pci_intx_mask/unmask).
    v.cfg_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MASTER | P.PCI_COMMAND_INTX_DISABLE)
    assert hw.config_read(P.PCI_COMMAND, 2) == (P.PCI_COMMAND_MASTER
                                                | P.PCI_COMMAND_INTX_DISABLE)
    assert v.cfg_read(P.PCI_COMMAND, 2) == P.PCI_COMMAND_MASTER | P.PCI_COMMAND_INTX_DISABLE
    v.cfg_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MASTER)
    assert hw.config_read(P.PCI_COMMAND, 2) == P.PCI_COMMAND_MASTER
    # Interrupt line: virtual. Cache line size: the hardware's.
    v.cfg_write(P.PCI_INTERRUPT_LINE, 1, 0x42)
    v.cfg_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    assert v.cfg_read(P.PCI_INTERRUPT_LINE, 1) == 0x42
    assert hw.config_read(P.PCI_INTERRUPT_LINE, 1) == P.INTX_LINE
    assert hw.config_read(P.PCI_CACHE_LINE_SIZE, 1) == 0x10
    # ATS and PRI are read-only to the user; the hidden PASID capability is raw.
    ats = 0x100 + P.PCI_ATS_CTRL
    v.cfg_write(ats, 2, P.PCI_ATS_CTRL_ENABLE)
    assert hw.config_read(ats, 2) == 0 and v.cfg_read(ats, 2) == 0
    v.cfg_write(0x110 + P.PCI_PRI_CTRL, 2, P.PCI_PRI_CTRL_ENABLE)
    assert hw.config_read(0x110 + P.PCI_PRI_CTRL, 2) == 0
    v.cfg_write(0x120 + P.PCI_PASID_CTRL, 2, P.PCI_PASID_CTRL_ENABLE)
    assert hw.config_read(0x120 + P.PCI_PASID_CTRL, 2) == P.PCI_PASID_CTRL_ENABLE
    # Unassigned space goes straight to the hardware (which implements nothing there).
    assert v.cfg_write(0x48, 4, 0xFFFF_FFFF) == 4 and v.cfg_read(0x48, 4) == 0


def test_msi_capability_is_virtualized(v: Vfio) -> None:
    hw, msi = v.hw, 0x50
    v.cfg_write(msi + P.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_0000)
    v.cfg_write(msi + P.PCI_MSI_DATA_64, 2, 0x4041)
    assert v.cfg_read(msi + P.PCI_MSI_ADDRESS_LO, 4) == 0xFEE0_0000
    assert hw.config_read(msi + P.PCI_MSI_ADDRESS_LO, 4) == 0  # the host programs MSI
    # Enable is only through SET_IRQS; queue size is capped to what vfio enabled.
    v.cfg_write(msi + P.PCI_MSI_FLAGS, 2, P.PCI_MSI_FLAGS_ENABLE | 0x30)
    assert not hw.config_read(msi + P.PCI_MSI_FLAGS, 2) & (P.PCI_MSI_FLAGS_ENABLE | 0x70)
    assert not v.cfg_read(msi + P.PCI_MSI_FLAGS, 2) & (P.PCI_MSI_FLAGS_ENABLE | 0x70)
    v.cfg_write(msi + P.PCI_MSI_MASK_64, 4, 1)  # the mask bits are the hardware's
    assert hw.config_read(msi + P.PCI_MSI_MASK_64, 4) == 1


def test_pcie_devctl_mps_virtual_mrrs_floored_flr_trapped(v: Vfio) -> None:
    hw, devctl = v.hw, 0x70 + P.PCI_EXP_DEVCTL
    v.cfg_write(devctl, 2, (v.cfg_read(devctl, 2) & ~P.PCI_EXP_DEVCTL_PAYLOAD) | (2 << 5))
    assert hw.config_read(devctl, 2) & P.PCI_EXP_DEVCTL_PAYLOAD == 0  # MPS is virtual
    assert v.cfg_read(devctl, 2) & P.PCI_EXP_DEVCTL_PAYLOAD == 2 << 5
    v.cfg_write(devctl, 2, v.cfg_read(devctl, 2) & ~P.PCI_EXP_DEVCTL_READRQ)  # MRRS 128
    assert hw.config_read(devctl, 2) & P.PCI_EXP_DEVCTL_READRQ == 0  # >= MPS (128)
    v.cfg_write(devctl, 2, v.cfg_read(devctl, 2) | (3 << 12))  # MRRS 1024
    assert hw.config_read(devctl, 2) & P.PCI_EXP_DEVCTL_READRQ == 3 << 12
    v.cfg_write(devctl, 2, v.cfg_read(devctl, 2) | P.PCI_EXP_DEVCTL_PHANTOM)  # not writable
    assert not v.cfg_read(devctl, 2) & P.PCI_EXP_DEVCTL_PHANTOM
    v.cfg_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    v.cfg_write(devctl, 2, v.cfg_read(devctl, 2) | P.PCI_EXP_DEVCTL_BCR_FLR)
    assert not v.cfg_read(devctl, 2) & P.PCI_EXP_DEVCTL_BCR_FLR  # reads 0
    assert hw.config_read(P.PCI_CACHE_LINE_SIZE, 1) == 0x10  # reset, then restored


def test_pm_state_changes_are_done_by_the_host(v: Vfio) -> None:
    hw, ctrl = v.hw, 0x40 + P.PCI_PM_CTRL
    v.cfg_write(ctrl, 2, P.PCI_D3HOT)
    assert hw.current_state == P.PCI_D3HOT
    assert v.cfg_read(ctrl, 2) & P.PCI_PM_CTRL_STATE_MASK == P.PCI_D3HOT
    v.cfg_write(ctrl, 2, P.PCI_D1)  # unsupported: dropped
    assert hw.current_state == P.PCI_D3HOT
    v.cfg_write(ctrl, 2, P.PCI_D0)
    assert hw.current_state == P.PCI_D0


def test_config_access_bounds_and_chunks(v: Vfio) -> None:
    m, fd = v.m, v.fd
    full = m.pread(fd, 256, CFG)
    assert m.pread(fd, 3, CFG + 1) == full[1:4]
    assert m.pread(fd, 7, CFG + 0x3D) == full[0x3D:0x44]  # across header and PM cap
    assert errno_of(m.pread, fd, 2, CFG + 4095) == errno.EFAULT
    assert errno_of(m.pread, fd, 1, CFG + 4096) == errno.EFAULT
    assert errno_of(m.pwrite, fd, b"\0\0", CFG + 4095) == errno.EFAULT
    # Other regions: no BAR past BAR0, no ROM, no VGA, nothing past index 8.
    for index in (1, 5, 6, 8, 9, 0x7F_FFFF):
        assert errno_of(m.pread, fd, 4, index << 40) == errno.EINVAL, index
    assert errno_of(m.pwrite, fd, b"\0", 6 << 40) == errno.EINVAL  # the ROM is read-only
    # read(2)/write(2) use the file position: 0 is BAR0's region, the DMA engine's ID.
    assert m.read(fd, 4) == (0x0100_8E5A).to_bytes(4, "little")
    assert errno_of(m.pread, fd, 4, 0x2000) == errno.EINVAL  # past BAR0


@settings(max_examples=60, deadline=None)
@given(ops=hs.lists(hs.tuples(hs.integers(0, 4095), hs.integers(1, 16), hs.booleans(),
                              hs.binary(min_size=16, max_size=16)), max_size=25))
def test_config_space_invariants(ops: list[tuple[int, int, bool, bytes]]) -> None:
    # Whatever the user writes: only OSError comes back, the identity and the capability
    # structure the host relies on stay, and any byte range reads as its aligned bytes.
    m = Machine.from_config({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                             "devices": [{"name": DEV, "iommu": "smmu0"}]})
    u = Vfio(m)
    try:
        for off, n, write, data in ops:
            n = min(n, 4096 - off)
            if write:
                assert u.m.pwrite(u.fd, data[:n], CFG + off) == n
            else:
                assert u.m.pread(u.fd, n, CFG + off) == u.m.pread(u.fd, 4096, CFG)[off:off + n]
        hw = u.hw
        assert hw.config_read(0, 4) == 0x0001_8E5A and u.cfg_read(0, 4) == 0x0001_8E5A
        assert hw.config_read(P.PCI_CAPABILITY_LIST, 1) == 0x40
        assert hw.config_read(0x40, 2) == 0x5001 and hw.config_read(0x50, 2) == 0x7005
        assert u.cfg_read(P.PCI_CAPABILITY_LIST, 1) == 0x40
        assert u.info().num_regions == 9
    finally:
        m.shutdown()


# -- RESET, close -------------------------------------------------------------------------
def test_reset_keeps_config_and_resets_the_device() -> None:
    ram = RamBar(0x1000)
    m = bar_machine(P.PciBar(ram, 0x1000))
    u = Vfio(m)
    assert ram.resets == 1  # the reset at open (vfio_pci_core_enable)
    u.cfg_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_MASTER)
    u.cfg_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    m.pwrite(u.fd, b"state", 0)
    m.ioctl(u.fd, vf.VFIO_DEVICE_RESET, 0)
    assert ram.resets == 2 and m.pread(u.fd, 5, 0) == bytes(5)
    assert u.hw.config_read(P.PCI_COMMAND, 2) == P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_MASTER
    assert u.hw.config_read(P.PCI_CACHE_LINE_SIZE, 1) == 0x10
    u.cfg_write(0x40 + P.PCI_PM_CTRL, 2, P.PCI_D3HOT)
    m.ioctl(u.fd, vf.VFIO_DEVICE_RESET, 0)
    assert u.hw.current_state == P.PCI_D0  # reset wakes it first
    u.close()
    m.shutdown()


def test_close_resets_and_restores_the_open_time_state(m: Machine) -> None:
    u = Vfio(m)
    hw = u.hw
    at_open = bytes(hw.cfg.data)
    u.cfg_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    u.cfg_write(P.PCI_INTERRUPT_LINE, 1, 0x42)
    u.cfg_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MASTER)
    u.close()
    assert bytes(hw.cfg.data) == at_open
    again = Vfio(m)  # a fresh vconfig
    assert again.cfg_read(P.PCI_INTERRUPT_LINE, 1) == P.INTX_LINE
    again.close()


# -- DEVICE_FEATURE --------------------------------------------------------------------------
def test_device_feature_flag_rules(v: Vfio) -> None:
    lp = vf.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    assert v.feature(PROBE | lp, argsz=7) == errno.EINVAL
    assert errno_of(v.m.ioctl, v.fd, FEAT, bytearray(4)) == errno.EFAULT
    assert v.feature(PROBE | lp | (1 << 19)) == errno.EINVAL  # unknown flag bit
    assert v.feature(GET | SET | lp) == errno.EINVAL  # GET and SET without PROBE
    assert v.feature(PROBE | GET | SET | lp) == errno.EINVAL  # a probe of an unsupported GET
    assert v.feature(PROBE | SET | lp) == 0
    assert v.feature(PROBE | lp) == 0
    assert v.feature(lp) == errno.EINVAL  # neither GET nor SET


@pytest.mark.parametrize("feature", [
    vf.VFIO_DEVICE_FEATURE_MIGRATION, vf.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    vf.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, vf.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    vf.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, vf.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
    vf.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, vf.VFIO_DEVICE_FEATURE_BUS_MASTER,
    vf.VFIO_DEVICE_FEATURE_ZPCI_ERROR, 14, 0xFFFF])
def test_features_this_device_lacks_are_enotty(v: Vfio, feature: int) -> None:
    # no mig_ops, no log_ops, no vf_token (not an SR-IOV PF), not s390, unknown ids
    for flags in (PROBE, PROBE | GET, PROBE | SET, GET, SET):
        assert v.feature(flags | feature, bytes(64)) == errno.ENOTTY


def test_precopy_info_v2_needs_pre_copy_migration(v: Vfio) -> None:
    # checked before vfio_check_feature: EINVAL even for a bare probe
    assert v.feature(PROBE | vf.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2) == errno.EINVAL


def test_low_power_entry_and_exit(v: Vfio) -> None:
    entry, leave = vf.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, vf.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
    assert v.feature(GET | entry) == errno.EINVAL  # SET only
    assert v.feature(SET | entry) == 0
    assert v.feature(SET | entry) == errno.EINVAL  # already engaged
    assert v.cfg_read(0, 4) == 0x0001_8E5A  # an access wakes the device
    assert v.feature(SET | leave) == 0 and v.feature(SET | leave) == 0
    assert v.feature(SET | entry) == 0


def test_low_power_entry_with_wakeup_needs_an_eventfd(v: Vfio) -> None:
    wake = vf.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP

    def arg(fd: int) -> bytes:
        return bytes(vf.vfio_device_low_power_entry_with_wakeup(wakeup_eventfd=fd))

    assert v.feature(PROBE | SET | wake) == 0
    assert v.feature(SET | wake, arg(3)[:4]) == errno.EINVAL  # argsz below 8
    assert v.feature(SET | wake, arg(-1)) == errno.EINVAL
    assert v.feature(SET | wake, arg(99)) == errno.EBADF
    assert v.feature(SET | wake, arg(v.iommufd)) == errno.EINVAL  # not an eventfd
    # With an eventfd: the next access through the device fd wakes the device and
    # signals it, once; low power is over.
    efd = v.m.eventfd()
    assert v.feature(SET | wake, arg(efd)) == 0
    assert v.feature(SET | wake, arg(efd)) == 0  # the ioctl itself woke it first
    assert v.m.read(efd, 8) == (1).to_bytes(8, "little")
    v.cfg_read(0, 4)
    assert v.m.read(efd, 8) == (1).to_bytes(8, "little")
    v.cfg_read(0, 4)
    assert errno_of(v.m.read, efd, 8) == errno.EAGAIN
    v.m.close(efd)  # the device holds no reference any more


def test_dma_buf_feature_rules(v: Vfio) -> None:
    dmabuf = vf.VFIO_DEVICE_FEATURE_DMA_BUF

    def req(index: int = 0, nr: int = 1, flags: int = 0) -> bytes:
        head = vf.vfio_device_feature_dma_buf(region_index=index, nr_ranges=nr, flags=flags)
        return bytes(head) + bytes(vf.vfio_region_dma_range(offset=0, length=4096))

    assert v.feature(PROBE | GET | dmabuf) == 0
    assert v.feature(PROBE | SET | dmabuf) == errno.EINVAL
    assert v.feature(GET | dmabuf, req()[:15]) == errno.EINVAL
    assert v.feature(GET | dmabuf, req(nr=0)) == errno.EINVAL
    assert v.feature(GET | dmabuf, req(flags=1)) == errno.EINVAL
    for index in (1, 5, vf.VFIO_PCI_ROM_REGION_INDEX, vf.VFIO_PCI_CONFIG_REGION_INDEX):
        assert v.feature(GET | dmabuf, req(index)) == errno.ENODEV  # no such BAR
    assert v.feature(GET | dmabuf, req(0)) == errno.EOPNOTSUPP  # BAR0: export not simulated


# -- a function with a BAR (the region model a device's registers plug into) ---------------
def test_bar_regions_read_and_write_the_device() -> None:
    ram = RamBar(0x1000)
    m = bar_machine(None, None, P.PciBar(ram, 0x1000, mem64=True, prefetch=True))
    u = Vfio(m)
    r2, r3 = u.region(2), u.region(3)
    assert (r2.flags, r2.size, r2.offset) == (
        vf.VFIO_REGION_INFO_FLAG_READ | vf.VFIO_REGION_INFO_FLAG_WRITE
        | vf.VFIO_REGION_INFO_FLAG_MMAP, 0x1000, 2 << 40)
    assert (r3.flags, r3.size) == (0, 0)  # the upper half of the 64-bit BAR
    # The virtual BAR sizes like the hardware would.
    u.cfg_write(P.PCI_BASE_ADDRESS_0 + 8, 4, 0xFFFF_FFFF)
    assert u.cfg_read(P.PCI_BASE_ADDRESS_0 + 8, 4) == 0xFFFF_F000 | 0xC
    assert u.hw.config_read(P.PCI_BASE_ADDRESS_0 + 8, 4) == u.hw.bar_start[2] | 0xC
    # pci_enable_device turned memory decode on at open; with it off an access is EIO.
    assert u.cfg_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_MEMORY
    u.cfg_write(P.PCI_COMMAND, 2, 0)
    assert errno_of(m.pread, u.fd, 4, 2 << 40) == errno.EIO
    assert errno_of(m.pwrite, u.fd, b"x", 2 << 40) == errno.EIO
    # Accesses are the widest naturally aligned ones, up to 8 bytes.
    u.cfg_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY)
    ram.log.clear()
    assert m.pwrite(u.fd, bytes(range(1, 16)), (2 << 40) + 1) == 15
    assert ram.log == [(1, 1, True), (2, 2, True), (4, 4, True), (8, 8, True)]
    assert m.pread(u.fd, 16, 2 << 40) == bytes(range(16))
    assert m.pread(u.fd, 64, (2 << 40) + 0xFF8) == ram.mem[0xFF8:]  # short at the end
    assert errno_of(m.pread, u.fd, 1, (2 << 40) + 0x1000) == errno.EINVAL
    assert errno_of(m.pread, u.fd, 4, 3 << 40) == errno.EINVAL
    # mmap: vfio_pci_core_mmap's checks (MAP_SHARED, a BAR, inside it), then the BAR's
    # bytes are loads and stores.
    for off, n, shared in ((2 << 40, 4096, False), (7 << 40, 4096, True),
                           (9 << 40, 4096, True), (3 << 40, 4096, True),
                           (2 << 40, 8192, True), ((2 << 40) + 4096, 4096, True)):
        assert errno_of(m.mmap, n, u.fd, off, shared=shared) == errno.EINVAL, (off, n)
    va = m.mmap(4096, u.fd, 2 << 40)
    assert m.mem_read(va, 16) == bytes(range(16))
    m.mem_write(va + 0x100, b"stored")
    assert ram.mem[0x100:0x106] == b"stored"
    u.cfg_write(P.PCI_COMMAND, 2, 0)  # no decode: all ones, stores dropped
    assert m.mem_read(va, 4) == b"\xff" * 4
    m.munmap(va, 4096)
    u.close()
    m.shutdown()


def test_struct_sizes() -> None:
    sizes = {vf.vfio_device_info: 24, vf.vfio_region_info: 32, vf.vfio_irq_info: 16,
             vf.vfio_device_feature: 8, vf.vfio_device_feature_dma_buf: 16}
    assert {k: ctypes.sizeof(k) for k in sizes} == sizes

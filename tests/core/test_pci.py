"""The PCI function as hardware (iommu_core.platform.pci): identity and capabilities from
the Machine config, register semantics (read-only, RW1C, reserved), BAR sizing, D-states,
Function Level Reset, and the PCI core's save/restore around a reset."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from iommu_core.errors import IommuError
from iommu_core.platform import pci as P
from iommu_core.platform.bus import make_pci_device


class RamBar(P.PciBarOps):
    """Device memory behind a BAR, logging every access (offset, size, write?)."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.log: list[tuple[int, int, bool]] = []
        self.resets = 0

    def read(self, offset: int, size: int) -> int:
        self.log.append((offset, size, False))
        return int.from_bytes(self.mem[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append((offset, size, True))
        self.mem[offset:offset + size] = value.to_bytes(size, "little")

    def reset(self) -> None:
        self.mem[:] = bytes(len(self.mem))
        self.resets += 1


class Registers(P.PciBarOps):
    """A register block that reads 0 and ignores writes."""

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def fn(**opts: Any) -> P.PciFunction:
    dev = make_pci_device("0000:00:01.0", "x", **opts)
    assert dev.pci is not None
    return dev.pci


def ext_caps(pdev: P.PciFunction) -> list[tuple[int, int]]:
    out, pos = [], P.PCI_CFG_SPACE_SIZE
    while pos:
        header = pdev.config_read(pos, 4)
        if not header:
            break
        out.append((P.PCI_EXT_CAP_ID(header), pos))
        pos = P.PCI_EXT_CAP_NEXT(header)
    return out


def std_caps(pdev: P.PciFunction) -> list[tuple[int, int]]:
    out, pos = [], pdev.config_read(P.PCI_CAPABILITY_LIST, 1)
    while pos:
        out.append((pdev.config_read(pos, 1), pos))
        pos = pdev.config_read(pos + 1, 1)
    return out


def test_identity_of_the_project_function() -> None:
    p = fn()
    assert p.config_read(P.PCI_VENDOR_ID, 2) == 0x8E5A
    assert p.config_read(P.PCI_DEVICE_ID, 2) == 0x0001
    assert p.config_read(P.PCI_CLASS_REVISION, 4) == 0x0880_0001
    assert p.config_read(P.PCI_HEADER_TYPE, 1) == 0
    assert p.config_read(P.PCI_SUBSYSTEM_VENDOR_ID, 4) == 0x0001_8E5A
    assert p.config_read(P.PCI_STATUS, 2) & P.PCI_STATUS_CAP_LIST
    assert std_caps(p) == [(P.PCI_CAP_ID_PM, 0x40), (P.PCI_CAP_ID_MSI, 0x50),
                           (P.PCI_CAP_ID_EXP, 0x70)]
    assert p.config_read(P.PCI_INTERRUPT_PIN, 1) == 1  # INTA
    assert p.config_read(P.PCI_INTERRUPT_LINE, 1) == P.INTX_LINE  # firmware routed it
    exp = p.config_read(0x70 + P.PCI_EXP_FLAGS, 2)
    assert exp & P.PCI_EXP_FLAGS_VERS == 2 and (exp & P.PCI_EXP_FLAGS_TYPE) >> 4 == 0
    assert p.config_read(0x70 + P.PCI_EXP_DEVCAP, 4) & P.PCI_EXP_DEVCAP_FLR


@pytest.mark.parametrize(("opts", "want"), [
    ({}, [P.PCI_EXT_CAP_ID_ATS, P.PCI_EXT_CAP_ID_PRI, P.PCI_EXT_CAP_ID_PASID]),
    ({"pri": False}, [P.PCI_EXT_CAP_ID_ATS, P.PCI_EXT_CAP_ID_PASID]),
    ({"ats": False, "pri": False}, [P.PCI_EXT_CAP_ID_PASID]),
    ({"pasid_bits": 0}, [P.PCI_EXT_CAP_ID_ATS, P.PCI_EXT_CAP_ID_PRI]),
    ({"ats": False, "pri": False, "pasid_bits": 0}, []),
])
def test_extended_capabilities_follow_the_device_config(opts: dict[str, Any],
                                                        want: list[int]) -> None:
    p = fn(**opts)
    caps = ext_caps(p)
    assert [c for c, _ in caps] == want
    assert [pos for _, pos in caps] == [0x100 + 0x10 * i for i in range(len(want))]
    if not want:
        assert p.config_read(0x100, 4) == 0  # no extended capability at all


@pytest.mark.parametrize(("bits", "exec_", "priv"), [(20, False, False), (5, True, True),
                                                     (1, True, False)])
def test_pasid_capability_reports_width_exec_priv(bits: int, exec_: bool, priv: bool) -> None:
    p = fn(pasid_bits=bits, pasid_exec=exec_, pasid_priv=priv)
    pos = p.ext_caps[P.PCI_EXT_CAP_ID_PASID]
    cap = p.config_read(pos + P.PCI_PASID_CAP, 2)
    assert (cap >> 8) & 0x1F == bits - 1  # Max PASID Width encodes bits - 1
    assert bool(cap & P.PCI_PASID_CAP_EXEC) == exec_ and bool(cap & P.PCI_PASID_CAP_PRIV) == priv
    # Enable is writable; EXEC/PRIV enables only where supported.
    p.config_write(pos + P.PCI_PASID_CTRL, 2, 0x7)
    ctrl = p.config_read(pos + P.PCI_PASID_CTRL, 2)
    assert ctrl == 1 | (2 if exec_ else 0) | (4 if priv else 0)


def test_pri_status_reflects_pasid_and_reset_clears_it() -> None:
    p = fn()
    pos = p.ext_caps[P.PCI_EXT_CAP_ID_PRI]
    status = p.config_read(pos + P.PCI_PRI_STATUS, 2)
    assert status & P.PCI_PRI_STATUS_PASID and status & P.PCI_PRI_STATUS_STOPPED
    assert not fn(pasid_bits=0).config_read(pos + P.PCI_PRI_STATUS, 2) & P.PCI_PRI_STATUS_PASID
    assert p.config_read(pos + P.PCI_PRI_MAX_REQ, 4) == P.PRI_MAX_REQUESTS
    p.config_write(pos + P.PCI_PRI_MAX_REQ, 4, 1)  # capacity is read-only
    assert p.config_read(pos + P.PCI_PRI_MAX_REQ, 4) == P.PRI_MAX_REQUESTS
    p.config_write(pos + P.PCI_PRI_ALLOC_REQ, 4, 32)
    assert p.config_read(pos + P.PCI_PRI_ALLOC_REQ, 4) == 32


def test_read_only_rw1c_and_reserved_registers() -> None:
    p = fn()
    p.config_write(P.PCI_VENDOR_ID, 4, 0)
    assert p.config_read(P.PCI_VENDOR_ID, 4) == 0x0001_8E5A
    p.config_write(P.PCI_COMMAND, 2, 0xFFFF)
    assert p.config_read(P.PCI_COMMAND, 2) == (P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_MASTER
                                              | P.PCI_COMMAND_PARITY | P.PCI_COMMAND_SERR
                                              | P.PCI_COMMAND_INTX_DISABLE)
    # The error bits of STATUS are write-1-to-clear.
    p.cfg.data[P.PCI_STATUS + 1] |= 0x20  # received master abort, as hardware would set
    p.config_write(P.PCI_STATUS, 2, 0)
    assert p.config_read(P.PCI_STATUS, 2) & 0x2000
    p.config_write(P.PCI_STATUS, 2, 0xFFFF)
    assert p.config_read(P.PCI_STATUS, 2) == P.PCI_STATUS_CAP_LIST
    for off in (0x48, 0xAC, 0xFC, 0x130, 0xFFC):  # between and after capabilities
        p.config_write(off, 4, 0xFFFF_FFFF)
        assert p.config_read(off, 4) == 0
    with pytest.raises(IommuError) as ei:
        p.config_read(2, 4)  # misaligned
    assert ei.value.errno == errno.EINVAL


def test_bar_sizing_and_decode() -> None:
    ram = RamBar(0x1000)
    p = fn(bars=(P.PciBar(ram, 0x1000), None, P.PciBar(Registers(), 1 << 33, mem64=True,
                                                       prefetch=True)))
    assert p.bar_start[0] and p.bar_start[2] and not p.bar_start[1]
    assert p.config_read(P.PCI_BASE_ADDRESS_0, 4) == p.bar_start[0]
    p.config_write(P.PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF)  # sizing
    assert p.config_read(P.PCI_BASE_ADDRESS_0, 4) == 0xFFFF_F000
    p.config_write(P.PCI_BASE_ADDRESS_0 + 4, 4, 0xFFFF_FFFF)  # absent BAR1 stays 0
    assert p.config_read(P.PCI_BASE_ADDRESS_0 + 4, 4) == 0
    p.config_write(P.PCI_BASE_ADDRESS_0 + 8, 4, 0xFFFF_FFFF)
    p.config_write(P.PCI_BASE_ADDRESS_0 + 12, 4, 0xFFFF_FFFF)
    assert p.config_read(P.PCI_BASE_ADDRESS_0 + 8, 4) == 0x0000_000C  # 8 GiB: low all 0
    assert p.config_read(P.PCI_BASE_ADDRESS_0 + 12, 4) == 0xFFFF_FFFE
    # No memory decode until Memory Space Enable: an Unsupported Request reads all ones.
    assert p.bar_read(0, 0, 4) == 0xFFFF_FFFF and not ram.log
    p.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY)
    p.bar_write(0, 8, 4, 0x1234_5678)
    assert p.bar_read(0, 8, 2) == 0x5678 and ram.log == [(8, 4, True), (8, 2, False)]


def test_d3hot_stops_decode_and_d1_d2_writes_are_discarded() -> None:
    ram = RamBar(0x1000)
    p = fn(bars=(P.PciBar(ram, 0x1000),))
    p.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY)
    ctrl = P.PM_CAP + P.PCI_PM_CTRL
    for state in (P.PCI_D1, P.PCI_D2):
        p.config_write(ctrl, 2, state)
        assert p.config_read(ctrl, 2) & P.PCI_PM_CTRL_STATE_MASK == P.PCI_D0
    p.config_write(ctrl, 2, P.PCI_D3HOT)
    assert p.current_state == P.PCI_D3HOT and not p.memory_decode()
    assert p.bar_read(0, 0, 4) == 0xFFFF_FFFF
    assert p.config_read(ctrl, 2) & P.PCI_PM_CTRL_NO_SOFT_RESET
    P.pci_set_power_state(p, P.PCI_D0)
    assert p.memory_decode()  # No_Soft_Reset: the command register survived D3hot


def test_flr_resets_registers_and_device_state() -> None:
    ram = RamBar(0x1000)
    p = fn(bars=(P.PciBar(ram, 0x1000),))
    ats = p.ext_caps[P.PCI_EXT_CAP_ID_ATS] + P.PCI_ATS_CTRL
    devctl = P.EXP_CAP + P.PCI_EXP_DEVCTL
    p.config_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    p.config_write(ats, 2, P.PCI_ATS_CTRL_ENABLE | 3)
    p.config_write(devctl, 2, p.config_read(devctl, 2) | (1 << 5))  # MPS 256
    p.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY)
    p.bar_write(0, 0, 8, 0xAB)
    p.config_write(devctl, 2, p.config_read(devctl, 2) | P.PCI_EXP_DEVCTL_BCR_FLR)
    assert ram.resets == 1 and ram.mem[0] == 0
    assert p.config_read(P.PCI_CACHE_LINE_SIZE, 1) == 0
    assert p.config_read(ats, 2) == 0
    assert p.config_read(P.PCI_COMMAND, 2) == 0 and p.config_read(P.PCI_BASE_ADDRESS_0, 4) == 0
    assert p.config_read(devctl, 2) & P.PCI_EXP_DEVCTL_PAYLOAD == 1 << 5  # MPS survives
    assert not p.config_read(devctl, 2) & P.PCI_EXP_DEVCTL_BCR_FLR  # reads 0


def test_pci_try_reset_function_restores_what_software_set() -> None:
    ram = RamBar(0x1000)
    p = fn(bars=(P.PciBar(ram, 0x1000),))
    ats = p.ext_caps[P.PCI_EXT_CAP_ID_ATS] + P.PCI_ATS_CTRL
    p.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_MASTER)
    p.config_write(P.PCI_CACHE_LINE_SIZE, 1, 0x10)
    p.config_write(ats, 2, P.PCI_ATS_CTRL_ENABLE)
    p.bar_write(0, 0, 4, 0xFEED)
    before = bytes(p.cfg.data)
    P.pci_try_reset_function(p)
    assert ram.resets == 1 and p.bar_read(0, 0, 4) == 0  # the device's state is gone
    assert bytes(p.cfg.data) == before  # the config space is back


def test_virtual_function_identity() -> None:
    p = fn(is_virtfn=True)
    assert p.config_read(P.PCI_VENDOR_ID, 4) == 0xFFFF_FFFF
    assert p.config_read(P.PCI_INTERRUPT_PIN, 1) == 0 and p.irq == 0
    p.config_write(P.PCI_COMMAND, 2, P.PCI_COMMAND_MEMORY)
    assert not p.config_read(P.PCI_COMMAND, 2) & P.PCI_COMMAND_MEMORY
    assert p.no_command_memory and p.memory_decode()


def test_bad_bars_are_refused() -> None:
    with pytest.raises(IommuError) as ei:
        P.PciBar(Registers(), 24)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(IommuError) as ei:
        fn(bars=(None,) * 5 + (P.PciBar(Registers(), 16, mem64=True),))
    assert ei.value.errno == errno.EINVAL

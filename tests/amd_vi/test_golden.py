"""Golden encodings: DTEs the driver builds and commands it queues, bit for bit against
vectors worked out by hand from vtd_amd.md B3/B4/B8 (not from the code under test)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from drivers.amd_vi import iommu as amd
from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_IOMMU_PAGES_GN_MASK as GN,
)
from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_IOMMU_PAGES_PDE_MASK as PDE,
)
from drivers.amd_vi.amd_iommu_types import (
    U64,
    DevTableEntry,
    EventLogEntry,
    IommuCmd,
    PprLogEntry,
)
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from drivers.amd_vi.nested import set_dte_nested


def _dev_data(*, ats: bool = True, ppr: bool = False, v2: bool = False, gcr3: int = 0,
              glx: int = 0, gcr3_domid: int = 0, gpt_level: int = 4) -> Any:
    drv = SimpleNamespace(gpt_level=gpt_level)
    iommu = SimpleNamespace(drv=drv, ivhd_dte_flags={})
    domain = SimpleNamespace(is_v2=v2)
    return SimpleNamespace(
        devid=0x2008, iommu=iommu, ats_enabled=ats, ppr=ppr, domain=domain,
        gcr3_info=amd.Gcr3TblInfo(gcr3_tbl=gcr3, glx=glx, domid=gcr3_domid))


def test_blocked_dte_is_v_only() -> None:
    assert amd.amd_iommu_make_clear_dte(_dev_data()) == [0x1, 0, 0, 0]


def test_identity_dte() -> None:
    new = amd.amd_iommu_make_clear_dte(dd := _dev_data())
    amd.set_dte_passthrough(dd, SimpleNamespace(id=1), new)  # type: ignore[arg-type]
    assert new == [0x6000_0000_0000_0003, 0x1_0000_0001, 0, 0]


@pytest.mark.parametrize("dirty,d0", [(False, 0x6000_0001_0020_3803),
                                      (True, 0x6000_0001_0020_3983)])
def test_v1_dte(dirty: bool, d0: int) -> None:
    dd = _dev_data()
    new = amd.amd_iommu_make_clear_dte(dd)
    dom = SimpleNamespace(dirty_tracking=dirty)
    amd.amd_iommu_set_dte_v1(dd, dom, 5, 0x1_0020_3000, 4, new)  # type: ignore[arg-type]
    assert new == [d0, 0x1_0000_0005, 0, 0]


def test_v1_dte_without_ats() -> None:
    dd = _dev_data(ats=False)
    new = amd.amd_iommu_make_clear_dte(dd)
    amd.amd_iommu_set_dte_v1(dd, SimpleNamespace(dirty_tracking=False),  # type: ignore[arg-type]
                             5, 0x1_0020_3000, 4, new)
    assert new[1] == 0x5


def test_gcr3_dte() -> None:
    dd = _dev_data(ppr=True, v2=True, gcr3=0x1_2345_6000, glx=1, gcr3_domid=7)
    new = amd.amd_iommu_make_clear_dte(dd)
    amd.set_dte_gcr3_table(dd, new)
    assert new == [0x79D0_0000_0000_0003, 0x1001_468A_0007, 0, 0]
    dte = DevTableEntry(new)
    assert dte.gcr3_root == 0x1_2345_6000 and dte.glx == 1 and dte.domid == 7
    assert dte.gv and dte.giov and dte.ppr and dte.mode == 0


def test_gcr3_dte_five_level_guest() -> None:
    dd = _dev_data(v2=False, gcr3=0x1_2345_6000, gcr3_domid=7, gpt_level=5)
    new = amd.amd_iommu_make_clear_dte(dd)
    amd.set_dte_gcr3_table(dd, new)
    assert new[2] == 1 << 54  # GPT level 1 = 5-level
    assert not new[0] & (1 << 54)  # identity + PASID: no GIoV


def test_nested_dte() -> None:
    gdte = (0x0CD0_0000_0000_0001, 0x800_0000_0033, 0, 0)
    assert DevTableEntry(gdte).gcr3_root == 0x8000_3000
    parent = SimpleNamespace(iop=SimpleNamespace(root=0x1_0040_0000, levels=4),
                             dirty_tracking=False)
    ndom = SimpleNamespace(viommu=SimpleNamespace(parent=parent), hdom_id=9, gdte=gdte)
    new = set_dte_nested(None, ndom, _dev_data())  # type: ignore[arg-type]
    assert new == [0x6CD0_0001_0040_0803, 0x801_0000_0009, 0, 0]


# -- commands --------------------------------------------------------------------------
@pytest.mark.parametrize("cmd,words", [
    (lambda: amd.build_completion_wait(0x1_0000_5008, 0x1_0000_0002),
     (0x0000_5009, 0x1000_0001, 0x2, 0x1)),
    (lambda: amd.build_inv_dte(0x2008), (0x2008, 0x2000_0000, 0, 0)),
    (lambda: amd.build_inv_iommu_pages(0x1234_5000, 0x1234_5FFF, 5, 0, 0),
     (0, 0x3000_0005, 0x1234_5000, 0)),
    (lambda: amd.build_inv_iommu_pages(0x20_0000, 0x3F_FFFF, 5, 0, PDE),
     (0, 0x3000_0005, 0x002F_F003, 0)),
    (lambda: amd.build_inv_iommu_pages(0, U64, 5, 0, PDE),
     (0, 0x3000_0005, 0xFFFF_F003, 0x7FFF_FFFF)),
    (lambda: amd.build_inv_iommu_pages(0x4000, 0x4FFF, 9, 0x12345, GN | PDE),
     (0x12345, 0x3000_0009, 0x4006, 0)),
    (lambda: amd.build_inv_iommu_pages(0x4000, 0x5FFF, 9, 0x12345, GN),
     (0x12345, 0x3000_0009, 0x4005, 0)),
    (lambda: amd.build_inv_iotlb_pages(0x2008, 32, 0, U64, 0x1234, True),
     (0x2012_2008, 0x4034_2008, 0xFFFF_F005, 0x7FFF_FFFF)),
    (lambda: amd.build_complete_ppr(0x2008, 5, 1, 0x1A, True),
     (0x2008, 0x7000_0005, 0x4, 0x101A)),
    (lambda: amd.build_inv_all(), (0, 0x8000_0000, 0, 0)),
])
def test_command_encoding(cmd: Any, words: tuple[int, ...]) -> None:
    c = cmd()
    assert c.data == words
    assert IommuCmd.from_bytes(c.to_bytes()) == c


@pytest.mark.parametrize("start,size", [(0x1234_5000, 0x1000), (0x20_0000, 0x20_0000),
                                        (0x1000, 0x3000), (0xFFF_F000, 0x2000),
                                        (0, 1 << 64), (0x7_0000_0000, 0x1_0000_0000)])
def test_inv_address_covers_range(start: int, size: int) -> None:
    """What the hardware decodes from build_inv_address is the smallest naturally
    aligned range covering [start, start + size)."""
    inv = amd.build_inv_address(start, start + size - 1)
    first, last = AmdIommuHw.inv_range(inv & 0xFFFF_FFFF, inv >> 32)
    assert first <= start and start + size - 1 <= last
    span = last - first + 1
    assert span & (span - 1) == 0 and first % span == 0
    assert span == 0x1000 or span < 2 * 2 ** (start ^ (start + size - 1)).bit_length()


def test_event_and_ppr_records() -> None:
    ev = EventLogEntry.make(2, 0x2008, 0x1_2345, 0x20, 0xDEAD_B000)
    assert ev.data == (0x1_2008, 0x2020_2345, 0xDEAD_B000, 0)
    assert (ev.type, ev.devid, ev.domid_pasid, ev.flags, ev.address) == (
        2, 0x2008, 0x1_2345, 0x20, 0xDEAD_B000)
    p = PprLogEntry.make(0x2008, 0x1_2345, 0x205, 0x124, 0x7000)
    from drivers.amd_vi.amd_iommu_types import ppr_devid, ppr_flags, ppr_pasid, ppr_tag
    assert p.raw[0] == 0x1124_0605_2345_2008
    assert (ppr_devid(p.raw[0]), ppr_pasid(p.raw[0]), ppr_tag(p.raw[0]),
            ppr_flags(p.raw[0])) == (0x2008, 0x1_2345, 0x205, 0x124)

"""Isolation as a property: whatever ``iommu_hwpt_vtd_s1`` and whatever first-stage
tables a guest gives (valid or garbage), a nested DMA never reaches a physical page
outside the nest parent's mappings, and the hardware's table walks touch only guest RAM
and the kernel's own IOMMU structures. Failures are DmaFault or an errno, never another
exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.intel_vtd.hw.intel_iommu import VtdHardware
from drivers.intel_vtd.plugin import plugin
from iommu_core.errors import IommuError
from iommu_core.platform.dma import ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE, DmaFault
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv

from .test_nested import GUEST_PAGES, Guest

RW = IOMMU_READ | IOMMU_WRITE
TABLE_PAGES = 16
TABLE_BASE = (GUEST_PAGES - TABLE_PAGES) * 4096
U64 = 2**64 - 1


class RecordingMem:
    """The hardware's view of memory, recording every page it touches."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self._mem = mem
        self.pages: set[int] = set()
        self.written: set[int] = set()

    def _r(self, pa: int, n: int = 8) -> None:
        self.pages.update(range(pa >> 12, ((pa + n - 1) >> 12) + 1))

    def _w(self, pa: int, n: int = 8) -> None:
        self._r(pa, n)
        self.written.update(range(pa >> 12, ((pa + n - 1) >> 12) + 1))

    def read(self, pa: int, n: int) -> bytes:
        self._r(pa, n)
        return self._mem.read(pa, n)

    def read_u64(self, pa: int) -> int:
        self._r(pa)
        return self._mem.read_u64(pa)

    def read_u32(self, pa: int) -> int:
        self._r(pa, 4)
        return self._mem.read_u32(pa)

    def read_qwords(self, pa: int, count: int) -> tuple[int, ...]:
        self._r(pa, 8 * count)
        return self._mem.read_qwords(pa, count)

    def write_u64(self, pa: int, v: int) -> None:
        self._w(pa)
        self._mem.write_u64(pa, v)

    def write_u32(self, pa: int, v: int) -> None:
        self._w(pa, 4)
        self._mem.write_u32(pa, v)

    def write_qwords(self, pa: int, vals: Any) -> None:
        self._w(pa, 8 * len(vals))
        self._mem.write_qwords(pa, vals)

    def write(self, pa: int, data: Any) -> None:
        self._w(pa, len(data))
        self._mem.write(pa, data)


pte_bits = st.one_of(
    st.integers(0, U64),
    # a PTE-looking value pointing anywhere in (and past) guest RAM, random low bits
    st.builds(lambda page, low, xd: (page << 12) | low | (xd << 63),
              st.integers(0, 3 * GUEST_PAGES), st.integers(0, 0xFFF), st.integers(0, 1)),
)
GIOVA = 0x7EFF_FFF0_0000
s1_configs = st.fixed_dictionaries({
    # mostly valid configurations, so that DMA gets through the guest table
    "flags": st.one_of(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 7]), st.integers(0, U64)),
    "addr_width": st.sampled_from([48] * 6 + [57, 39, 0, 2**32 - 1]),
    "pgtbl": st.one_of(st.none(), st.none(), st.none(), st.integers(0, U64),
                       st.integers(0, 2 * GUEST_PAGES * 4096)),
})
iovas = st.one_of(
    st.builds(lambda i, off: GIOVA + i * 4096 + off, st.integers(0, 5), st.integers(0, 4095)),
    st.builds(lambda i, off: GIOVA + i * 4096 + off, st.integers(0, 5), st.integers(0, 4095)),
    st.integers(0, U64), st.integers(0, 1 << 48), st.sampled_from([0, 0x1000]))
dmas = st.lists(st.tuples(iovas, st.sampled_from([ACCESS_READ, ACCESS_WRITE,
                                                  ACCESS_READ | ACCESS_PRIV]),
                          st.sampled_from([None, 0, 3])), min_size=1, max_size=8)
garbages = st.one_of(st.just([]), st.lists(
    st.tuples(st.integers(0, TABLE_PAGES * 512 - 1), pte_bits), max_size=40))


def run_case(cfg: dict[str, Any], garbage: list[tuple[int, int]],
             ops: list[tuple[int, int, int | None]], options: dict[str, Any]) -> None:
    env = DriverEnv("intel_vtd", plugin=plugin, options=options)
    try:
        g = Guest(env, env.add_device())
        secret_va, secret = env.user_pages(1)  # user memory the guest must never reach
        env.mm.write(secret_va, b"S" * 4096)
        for i in range(4):
            g.s1.map(GIOVA + i * 4096, 0x1000 * (i + 1), 4096, RW)
        for slot, val in garbage:
            g.ram.write_u64(TABLE_BASE + slot * 8, val)
        guest_pages = set(g.pfns)
        hw = env.hw
        assert isinstance(hw, VtdHardware)
        try:
            nested = g.nested(IOMMU_PASID_FLAG, s1_flags=cfg["flags"],
                              addr_width=cfg["addr_width"], pgtbl=cfg["pgtbl"])
            env.core.iommu_attach_group(nested, g.dev.iommu_group)
            env.core.iommu_attach_device_pasid(nested, g.dev, 3)
        except IommuError:
            return
        rec = RecordingMem(env.platform.mem)
        hw.mem = rec  # type: ignore[assignment]
        try:
            for iova, access, pasid in ops:
                try:
                    pa = hw.dma_translate(g.dev, pasid, iova, access)
                except DmaFault:
                    continue
                assert pa >> 12 in guest_pages, f"DMA reached {pa:#x} outside guest RAM"
        finally:
            hw.mem = env.platform.mem
        alloc = env.platform.alloc
        for page in rec.pages:
            assert page in guest_pages or alloc.tag_of(page << 12) == "kernel", (
                f"walk touched page {page:#x}")
        assert secret[0] not in rec.pages
        assert env.mm.read(secret_va, 4096) == b"S" * 4096
    finally:
        env.teardown()
        assert env.kernel_pages == 0


IOMMU_PASID_FLAG = 1 << 3  # IOMMU_HWPT_ALLOC_PASID


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=s1_configs, garbage=garbages, ops=dmas)
def test_nested_dma_stays_in_guest_ram(cfg: dict[str, Any], garbage: list[tuple[int, int]],
                                       ops: list[tuple[int, int, int | None]]) -> None:
    run_case(cfg, garbage, ops, {})


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=s1_configs,
       garbage=st.lists(st.tuples(st.integers(0, TABLE_PAGES * 512 - 1), pte_bits),
                        max_size=120),
       ops=dmas, errata=st.booleans(), five=st.booleans())
def test_nested_dma_stays_in_guest_ram_long(cfg: dict[str, Any],
                                            garbage: list[tuple[int, int]],
                                            ops: list[tuple[int, int, int | None]],
                                            errata: bool, five: bool) -> None:
    opts: dict[str, Any] = {"errata_772415": errata}
    if five:
        opts.update(sagaw=0b01100, mgaw=57)
    run_case(cfg, garbage, ops, opts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=s1_configs, garbage=garbages, ops=dmas)
def test_nested_dma_through_the_abi(cfg: dict[str, Any], garbage: list[tuple[int, int]],
                                    ops: list[tuple[int, int, int | None]]) -> None:
    """The same property through the ioctl ABI: a marker page the VMM never mapped is
    never read or written by the device, whatever the guest does."""
    from iommufd import uapi as u

    from .test_iommufd import DEV, GUEST, Vmm, guest_table

    vmm = Vmm()
    try:
        m = vmm.m
        secret = m.mmap(4096)
        m.mem_write(secret, b"S" * 4096)
        parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        root = guest_table(vmm, {GIOVA + i * 4096: 0x1000 * (i + 1) for i in range(4)})
        for slot, val in garbage:
            vmm.ram.write_u64(GUEST - 32 * 4096 + slot % (32 * 512) * 8, val)
        try:
            nested = vmm.nested(parent, root if cfg["pgtbl"] is None else cfg["pgtbl"],
                                cfg["flags"], cfg["addr_width"])
            vmm.attach(nested)
            vmm.attach(nested, pasid=3)
        except OSError:
            return
        for iova, access, pasid in ops:
            try:
                if access & ACCESS_WRITE:
                    m.dma_write(DEV, iova, b"W" * 16, pasid=pasid)
                else:
                    assert b"S" * 16 not in m.dma_read(DEV, iova, 16, pasid=pasid)
            except DmaFault:
                pass
        assert m.mem_read(secret, 4096) == b"S" * 4096
    finally:
        vmm.close()
        assert vmm.m.kernel_pages_in_use == 0

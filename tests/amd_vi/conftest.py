"""Fixtures: one AMD-Vi unit in a minimal kernel (iommu_core.testing.DriverEnv), guest
RAM for nesting tests, and a stand-in for iommufd's vIOMMU object."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from drivers.amd_vi.amd_iommu_types import (
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_V,
    GCR3_VALID,
    dte_gcr3_fields,
)
from drivers.amd_vi.plugin import plugin
from iommu_core.domain import IOMMU_HWPT_ALLOC_NEST_PARENT
from iommu_core.iommufd_driver import IommufdViommu, UserData
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.platform.bus import Device
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.uaccess import UserMemory
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv
from iommufd.uapi import IOMMU_HWPT_DATA_AMD_GUEST, IOMMU_VIOMMU_TYPE_AMD

RW = IOMMU_READ | IOMMU_WRITE


def make_env(**options: Any) -> DriverEnv:
    return DriverEnv("amd_vi", plugin=plugin, options=options)


def mapped_device(env: DriverEnv, iova: int, npages: int = 2) -> tuple[Device, Any]:
    """A device without PASIDs on a v1 paging domain mapping ``npages`` user pages at
    ``iova``: (device, domain)."""
    dev = env.add_device(pasid_bits=0)
    env.claim(dev)
    dom = env.paging_domain(dev)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    _va, pfns = env.user_pages(npages)
    for i, pfn in enumerate(pfns):
        env.core.iommu_map(dom, iova + i * PAGE_SIZE, pfn * PAGE_SIZE, PAGE_SIZE, RW)
    return dev, dom


@pytest.fixture
def env() -> Iterator[DriverEnv]:
    e = make_env()
    yield e
    e.teardown()
    assert e.kernel_pages == 0, f"{e.kernel_pages} kernel pages leaked"


class FakeViommu(IommufdViommu):
    """iommufd's side of a vIOMMU: the vDEVICE table."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.vdevs: dict[int, Device] = {}

    def find_dev(self, vdev_id: int) -> Device | None:
        return self.vdevs.get(vdev_id)

    def get_vdev_id(self, dev: Device) -> int | None:
        return next((k for k, v in self.vdevs.items() if v is dev), None)


class GuestRam:
    """Guest-physical memory [0, npages * 4K) backed by user pages mapped into a nest
    parent at GPA = IOVA; the guest writes its own tables here."""

    def __init__(self, env: DriverEnv, parent: Any, npages: int) -> None:
        self.env = env
        self.va, self.pfns = env.user_pages(npages)
        self.npages = npages
        for i, pfn in enumerate(self.pfns):
            env.core.iommu_map(parent, i * PAGE_SIZE, pfn * PAGE_SIZE, PAGE_SIZE, RW)
        self._next = 0

    def alloc_page(self) -> int:
        gpa = self._next * PAGE_SIZE
        self._next += 1
        return gpa

    def write(self, gpa: int, data: bytes) -> None:
        self.env.mm.write(self.va + gpa, data)

    def read(self, gpa: int, n: int) -> bytes:
        return self.env.mm.read(self.va + gpa, n)

    def write_u64(self, gpa: int, v: int) -> None:
        self.write(gpa, v.to_bytes(8, "little"))

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    # TableMemory for guest tables built with the shared page-table core.
    def alloc_table(self, size: int) -> int:
        return self.alloc_page()

    def free_table(self, addr: int, size: int) -> None:
        pass

    def spa(self, gpa: int) -> int:
        return self.pfns[gpa // PAGE_SIZE] * PAGE_SIZE + gpa % PAGE_SIZE


def gdte_for(gcr3_gpa: int, gdomid: int, *, glx: int = 0, giov: bool = True) -> list[int]:
    d0, d1 = dte_gcr3_fields(gcr3_gpa)
    w0 = DTE_FLAG_V | DTE_FLAG_GV | d0 | (glx << 56) | (DTE_FLAG_GIOV if giov else 0)
    return [w0, d1 | gdomid, 0, 0]


class Nesting:
    """A nest parent with guest RAM, an AMD vIOMMU on it, and helpers to allocate nested
    domains from guest DTEs (what iommufd does for IOMMU_HWPT_ALLOC on a vIOMMU)."""

    def __init__(self, env: DriverEnv, dev: Device, npages: int = 32) -> None:
        self.env = env
        self.dev = dev
        self.parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.ram = GuestRam(env, self.parent, npages)
        self.viommu = FakeViommu(env.iommu, IOMMU_VIOMMU_TYPE_AMD, self.parent)
        env.ops.viommu_init(self.viommu, self.parent, None)
        self.nested: list[Any] = []
        self._scratch = env.mm.mmap(PAGE_SIZE)

    def guest_pt(self) -> IoPageTable:
        return IoPageTable(formats.x86_64(4), self.ram)  # type: ignore[arg-type]

    def gcr3_table(self, entries: dict[int, int]) -> int:
        """A one-level guest GCR3 table {pasid: guest CR3 GPA}; returns its GPA."""
        t = self.ram.alloc_page()
        for pasid, cr3 in entries.items():
            self.ram.write_u64(t + 8 * pasid, cr3 | GCR3_VALID)
        return t

    def user_data(self, gdte: list[int] | tuple[int, ...], length: int = 32) -> UserData:
        raw = b"".join(w.to_bytes(8, "little") for w in gdte)
        self.env.mm.write(self._scratch, raw[:length])
        return UserData(UserMemory(self.env.mm), IOMMU_HWPT_DATA_AMD_GUEST, self._scratch,
                        length)

    def alloc_nested(self, gdte: list[int] | tuple[int, ...]) -> Any:
        assert self.viommu.ops is not None
        ndom = self.viommu.ops.alloc_domain_nested(self.viommu, 0, self.user_data(gdte))
        self.nested.append(ndom)
        return ndom

    def teardown(self) -> None:
        group = self.dev.iommu_group
        self.env.core.iommu_group_replace_domain(group, group.blocking_domain)
        for nd in self.nested:
            self.env.core.iommu_domain_free(nd)
        assert self.viommu.ops is not None
        self.viommu.ops.destroy(self.viommu)



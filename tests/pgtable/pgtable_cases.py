"""Shared cases for the page-table tests: every format variant, and table fixtures."""

from __future__ import annotations

from collections.abc import Callable

from iommu_core.pgtable import IoPageTable, PhysTableMemory, PtFormat, formats
from iommu_core.pgtable.formats import ArmLpaeFormat
from iommu_core.platform.files import FileTable
from iommu_core.platform.platform import Platform
from iommu_core.platform.task import Task
from iommu_core.platform.vma import SimMm
from iommu_core.prot import IOMMU_NOEXEC, IOMMU_READ, IOMMU_WRITE

#: Every format family with the parameter variants that change the geometry.
FORMAT_CASES: dict[str, Callable[[], PtFormat]] = {
    "arm_s1_4k_48": lambda: formats.arm_lpae_s1(4096, 48, 48),
    "arm_s1_16k_48": lambda: formats.arm_lpae_s1(16384, 48, 48),
    "arm_s1_64k_48": lambda: formats.arm_lpae_s1(65536, 48, 48),
    "arm_s1_64k_52": lambda: formats.arm_lpae_s1(65536, 52, 52),
    "arm_s2_4k_40_concat": lambda: formats.arm_lpae_s2(4096, 40, 40),
    "arm_s2_4k_48": lambda: formats.arm_lpae_s2(4096, 48, 48),
    "arm_s2_16k_48_concat": lambda: formats.arm_lpae_s2(16384, 48, 48),
    "arm_s2_64k_48": lambda: formats.arm_lpae_s2(65536, 48, 48),
    "x86_64_4": lambda: formats.x86_64(4),
    "x86_64_5": lambda: formats.x86_64(5),
    "x86_64_4_sign_extended": lambda: formats.x86_64(4, sign_extend=True),
    "vtd_ss_3": lambda: formats.vtd_ss(3),
    "vtd_ss_4": lambda: formats.vtd_ss(4),
    "vtd_ss_5": lambda: formats.vtd_ss(5),
    "amd_v1_3": lambda: formats.amd_v1(3),
    "amd_v1_4": lambda: formats.amd_v1(4),
    "amd_v1_6": lambda: formats.amd_v1(6),
    "mock_3": lambda: formats.mock(3),
    "mock_5": lambda: formats.mock(5),
}

RW = IOMMU_READ | IOMMU_WRITE


class Env:
    """Simulated memory, a page allocator and helpers to make tables in them; a task is
    ``current`` so that its fail-nth reaches the allocator."""

    def __init__(self) -> None:
        self.platform = Platform(phys_bits=52)
        self.mem = self.platform.mem
        self.alloc = self.platform.alloc
        tasks = self.platform.tasks
        self.task = tasks.add(Task(tasks.alloc_pid(), SimMm(self.mem, self.alloc),
                                   FileTable()))
        tasks.current = self.task
        self.baseline = self.alloc.in_use()

    def table(self, fmt: PtFormat) -> IoPageTable:
        return IoPageTable(fmt, PhysTableMemory(self.mem, self.alloc))

    def leaked(self) -> int:
        return self.alloc.in_use() - self.baseline


def expected_perms(fmt: PtFormat, prot: int) -> tuple[bool, bool, bool]:
    """(readable, writable, executable) a leaf mapped with ``prot`` must give, from the
    architecture rules (not from our encoder)."""
    r, w = bool(prot & IOMMU_READ), bool(prot & IOMMU_WRITE)
    nx = bool(prot & IOMMU_NOEXEC)
    if isinstance(fmt, ArmLpaeFormat):
        if fmt.stage == 1:
            return True, w, not nx  # every valid S1 leaf is readable; W-only maps RW
        return r, w, not nx
    if fmt.name == "x86_64":
        return True, w, True  # no read-disable; Linux never sets XD
    return r, w, r  # VT-d SS, AMD v1, mock: no separate execute control


def va_base(fmt: PtFormat) -> int:
    """Where tests map: the start of the last IOVA range (the upper half when
    sign-extended), past page 0."""
    lo = fmt.va_ranges[-1][0]
    return lo


def pa_base(fmt: PtFormat, span: int) -> int:
    """An output base high in the output space, so high address bits get exercised."""
    top = 1 << fmt.oas
    base = 1 << (fmt.oas - 1)
    while base + span > top:
        base >>= 1
    return base & -span if span & (span - 1) == 0 else base

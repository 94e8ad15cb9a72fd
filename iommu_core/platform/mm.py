"""The process address space (``struct mm_struct``) as the kernel layers see it: user
memory access (copy_from_user/copy_to_user), get/pin_user_pages and the pinned/locked
accounting. Two address spaces implement it: :class:`iommu_core.platform.vma.SimMm`, a
simulated one, and, under ``iommu-sim exec``, a real program's.

Pins are kept per frame by the page allocator (``struct page``), so a pinned page
outlives its mapping and its process, and is freed with the last unpin.
"""

from __future__ import annotations

import abc
import errno

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator, PfnRun

HPAGE_SHIFT = 21
HPAGE_SIZE = 1 << HPAGE_SHIFT
#: 4 KiB pages in a transparent huge page.
HPAGE_NR = HPAGE_SIZE >> 12
#: Top of the mmap area (grows down), as on x86_64.
MMAP_TOP = 0x7F00_0000_0000
TASK_SIZE = 1 << 47


def efault(va: int) -> IommuError:
    return IommuError(errno.EFAULT, f"bad user address {va:#x}")


class MmStruct(abc.ABC):
    """One process's address space, as GUP and uaccess see it."""

    def __init__(self, mem: PhysicalMemory, alloc: PageAllocator) -> None:
        self.mem = mem
        self.alloc = alloc
        #: Accounting, in pages, as /proc/<pid>/status VmPin / VmLck show it.
        self.pinned_vm = 0
        self.locked_vm = 0
        #: ``mm_users``: 0 once the process that owned it is gone.
        self.users = 1

    @property
    def alive(self) -> bool:
        """``mmget_not_zero``: can pages still be looked up in this address space?"""
        return self.users > 0

    # -- uaccess --------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, va: int, n: int) -> bytes:
        """``copy_from_user``: EFAULT if any byte is not mapped readable."""

    @abc.abstractmethod
    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        """``copy_to_user``: EFAULT (nothing written) if any byte is not mapped writable."""

    @abc.abstractmethod
    def check_range(self, va: int, n: int) -> None:
        """EFAULT unless ``[va, va+n)`` is entirely mapped (no side effects)."""

    # -- GUP ------------------------------------------------------------------------------
    @abc.abstractmethod
    def pin_user_pages(self, va: int, npages: int, write: bool) -> list[PfnRun]:
        """``pin_user_pages(FOLL_LONGTERM)`` of ``npages`` from page-aligned ``va``: the
        frames, as runs, each pinned once. All or nothing: EFAULT pins nothing (memory
        that cannot be pinned, such as a VM_PFNMAP mapping, is EFAULT too)."""

    @abc.abstractmethod
    def get_user_page(self, va: int, write: bool = False) -> int:
        """``get_user_pages_fast`` of one page: its frame number, faulting it in."""

    def get_user_pages(self, va: int, npages: int, write: bool = False) -> list[PfnRun]:
        """``get_user_pages`` (no pin) of ``npages`` from page-aligned ``va``: the frames,
        as runs, faulting them in (EFAULT if one is not there)."""
        runs: list[PfnRun] = []
        for i in range(npages):
            pfn = self.get_user_page(va + (i << PAGE_SHIFT), write)
            if runs and runs[-1][0] + runs[-1][1] == pfn:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((pfn, 1))
        return runs

    @abc.abstractmethod
    def is_compound(self, va: int) -> bool:
        """Is the page at ``va`` part of a huge (compound) page?"""

    @property
    def pinned_pages(self) -> int:
        """Pins held on frames of this machine (the leak check after a teardown)."""
        return self.alloc.pin_total()

    def unpin_user_pages(self, runs: list[PfnRun]) -> None:
        for pfn, n in runs:
            self.alloc.unpin(pfn, n)

    def page_pin_count(self, va: int) -> int:
        """Pins held on the page now mapped at ``va`` (``page_ref_count`` / the GUP bias)."""
        return self.alloc.pin_count(self.get_user_page(va))

    def dup_mmap(self) -> MmStruct:
        """fork(2)'s copy of this address space. Only a simulated one can be copied here;
        a real program's is copied by the real kernel."""
        raise IommuError(errno.ENOSYS, "this address space cannot be copied")

    def exit_mmap(self) -> None:
        """The owner is gone: unmap everything (pinned pages stay until unpinned)."""
        self.users = 0

"""The process (``struct task_struct``): its address space, files and credentials."""

from __future__ import annotations

from iommu_core.platform.files import FileTable
from iommu_core.platform.mm import MmStruct
from iommu_core.platform.uaccess import UserMemory

RLIM_INFINITY = 2**64 - 1


class Task:
    """The simulated user process (a VMM). The simulated kernel runs it as root."""

    __slots__ = ("cap_ipc_lock", "cap_sys_resource", "files", "mm", "pid", "rlimit_memlock",
                 "uaccess")

    def __init__(self, mm: MmStruct, pid: int = 1000) -> None:
        self.pid = pid
        self.mm = mm
        self.files = FileTable()
        self.uaccess = UserMemory(mm)
        self.cap_sys_resource = True
        self.cap_ipc_lock = True
        #: RLIMIT_MEMLOCK in bytes.
        self.rlimit_memlock = RLIM_INFINITY

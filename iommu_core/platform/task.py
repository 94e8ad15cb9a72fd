"""Processes (``struct task_struct``): pid, address space, fd table and credentials; the
task table and ``current``, the task whose system call the kernel is running.

Every system call entry sets :attr:`TaskTable.current`; kernel code that Linux writes
with ``current`` (copy_from_user, pin accounting, fd installation, fail-nth) asks it.
A simulated task (the Python ``Machine``) and a real program's process under ``iommu-sim
exec`` are both tasks; ``fork`` and ``exit`` follow fork(2) and exit(2).
"""

from __future__ import annotations

import errno
from typing import Any

from iommu_core.errors import IommuError
from iommu_core.platform.files import FileTable
from iommu_core.platform.mm import MmStruct
from iommu_core.platform.uaccess import UserMemory

RLIM_INFINITY = 2**64 - 1
#: RLIMIT_MEMLOCK of a fresh distro login (8 MiB since Linux 5.16).
MLOCK_LIMIT_DEFAULT = 8 << 20
PID_MAX = 4_194_304


class Task:
    """A process. The simulated kernel runs it as root (all capabilities)."""

    def __init__(self, pid: int, mm: MmStruct, files: Any, parent: Task | None = None
                 ) -> None:
        self.pid = pid
        self.mm = mm
        #: The fd table (a :class:`FileTable`, or a real program's under exec).
        self.files: FileTable = files
        self.parent = parent
        self.uid = 0
        self.cap_sys_resource = True
        self.cap_ipc_lock = True
        #: RLIMIT_MEMLOCK in bytes.
        self.rlimit_memlock = RLIM_INFINITY
        #: ``current->fail_nth``: the Nth fault-injection point from now fails (0: off).
        self.fail_nth = 0
        self.exited = False
        self.exit_code = 0

    @property
    def tgid(self) -> int:
        return self.pid

    @property
    def uaccess(self) -> UserMemory:
        return UserMemory(self.mm)

    def __repr__(self) -> str:
        return f"<Task {self.pid}{' (exited)' if self.exited else ''}>"


class TaskTable:
    """The machine's processes by pid, and ``current``."""

    def __init__(self, first_pid: int = 1000) -> None:
        self.tasks: dict[int, Task] = {}
        self._next_pid = first_pid
        self.current: Task | None = None

    def alloc_pid(self) -> int:
        pid = self._next_pid
        while pid in self.tasks:
            pid += 1
            if pid >= PID_MAX:
                pid = 300
        self._next_pid = pid + 1
        return pid

    def add(self, task: Task) -> Task:
        if task.pid in self.tasks:
            raise IommuError(errno.EEXIST, f"pid {task.pid} is taken")
        self.tasks[task.pid] = task
        return task

    def remove(self, task: Task) -> None:
        if self.tasks.get(task.pid) is task:
            del self.tasks[task.pid]
        if self.current is task:
            self.current = None

    def get(self, pid: int) -> Task | None:
        return self.tasks.get(pid)

    def require_current(self) -> Task:
        t = self.current
        if t is None:
            raise IommuError(errno.ESRCH, "no current task")
        return t


def copy_process(table: TaskTable, parent: Task) -> Task:
    """fork(2): a new task with a copy of the parent's address space and a copy of its fd
    table naming the same open files; ``fail_nth`` is not inherited."""
    mm = parent.mm.dup_mmap()
    child = Task(table.alloc_pid(), mm, parent.files.fork(), parent)
    child.uid = parent.uid
    child.cap_sys_resource = parent.cap_sys_resource
    child.cap_ipc_lock = parent.cap_ipc_lock
    child.rlimit_memlock = parent.rlimit_memlock
    return table.add(child)


def do_exit(table: TaskTable, task: Task, code: int = 0) -> None:
    """exit(2): the address space goes (``exit_mm``), then the files (``exit_files``),
    whose last references release their objects in the exiting task's context."""
    if task.exited:
        return
    task.exited = True
    task.exit_code = code
    prev = table.current
    table.current = task
    try:
        task.mm.exit_mmap()
        task.files.close_all()
    finally:
        table.current = None if prev is task else prev
        table.remove(task)

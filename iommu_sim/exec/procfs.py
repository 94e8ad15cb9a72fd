"""The kernel pseudo-files a program may ask the Machine's kernel: ``/proc/<pid>/status``
(VmPin, VmLck), ``/proc/<pid>/task/<tid>/fail-nth`` and the fault-injection knobs of
``/sys/kernel/debug``, answering as a CONFIG_IOMMUFD_TEST, CONFIG_FAULT_INJECTION distro
kernel would."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile

from iommu_core.errors import IommuError
from iommu_core.platform.fault_inject import FaultAttrs, kstrtouint
from iommu_core.platform.files import POLLIN, File
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.task import Task

_STATUS = re.compile(r"^/proc/(\d+)/(?:task/(\d+)/)?status$")
_FAIL_NTH = re.compile(r"^/proc/(\d+)/task/(\d+)/fail-nth$")
DEBUGFS = "/sys/kernel/debug"
#: What ``/sys/kernel/debug`` holds for fault injection (failslab, fail_page_alloc). The
#: Machine injects whatever the GFP flags (``ignore-gfp-*`` N, what the fail_nth selftest
#: writes); ``min-order`` is the Machine's (:class:`FaultAttrs`).
_DEBUGFS_FILES = {
    "failslab": {"probability": "0", "interval": "1", "times": "1", "space": "0",
                 "verbose": "2", "ignore-gfp-wait": "N", "cache-filter": "N",
                 "task-filter": "N"},
    "fail_page_alloc": {"probability": "0", "interval": "1", "times": "1", "space": "0",
                        "verbose": "2", "ignore-gfp-wait": "N", "ignore-gfp-highmem": "N",
                        "min-order": "{min_order}", "task-filter": "N"},
}


def status_with_accounting(real: str, pinned_pages: int, locked_pages: int) -> str:
    """``/proc/<pid>/status`` with VmLck and VmPin as the Machine accounts them."""
    kb = PAGE_SIZE // 1024
    out = []
    for line in real.splitlines(keepends=True):
        if line.startswith("VmLck:"):
            line = f"VmLck:\t{locked_pages * kb:8d} kB\n"
        elif line.startswith("VmPin:"):
            line = f"VmPin:\t{pinned_pages * kb:8d} kB\n"
        out.append(line)
    return "".join(out)


def match_status(path: str) -> int | None:
    """The pid whose status ``path`` is (``/proc/<pid>[/task/<tid>]/status``)."""
    m = _STATUS.match(path)
    return None if m is None else int(m.group(1))


def match_fail_nth(path: str) -> int | None:
    """The tid whose fail-nth ``path`` is."""
    m = _FAIL_NTH.match(path)
    return None if m is None else int(m.group(2))


class FailNthFile(File):
    """``/proc/<pid>/task/<tid>/fail-nth`` (fs/proc/base.c): write N and the Nth fault
    point the thread reaches fails; read back what is left (0: it fired)."""

    name = "fail-nth"

    def __init__(self, task: Task) -> None:
        self.task = task

    def read(self, n: int) -> bytes:
        return self.pread(n, 0)

    def pread(self, n: int, offset: int) -> bytes:
        if self.task.exited:
            raise IommuError(errno.ESRCH, f"task {self.task.pid} has exited")
        text = f"{self.task.fail_nth}\n".encode()
        return text[offset : offset + n]

    def write(self, data: bytes) -> int:
        return self.pwrite(data, 0)

    def pwrite(self, data: bytes, offset: int) -> int:
        """``proc_fail_nth_write``: the offset is ignored; EINVAL/ERANGE as
        ``kstrtouint_from_user`` answers; ESRCH once the task is gone."""
        n = kstrtouint(data)
        if self.task.exited:
            raise IommuError(errno.ESRCH, f"task {self.task.pid} has exited")
        self.task.fail_nth = n
        return len(data)

    def poll(self) -> int:
        return POLLIN


class DebugFs:
    """A directory standing for ``/sys/kernel/debug``: the fault-injection knobs, as
    regular files the program reads and writes natively."""

    def __init__(self, attrs: FaultAttrs) -> None:
        self.root = tempfile.mkdtemp(prefix="iommu-sim-debugfs-")
        for d, files in _DEBUGFS_FILES.items():
            os.makedirs(os.path.join(self.root, d))
            for name, value in files.items():
                with open(os.path.join(self.root, d, name), "w") as f:
                    f.write(value.format(min_order=attrs.page_min_order) + "\n")

    def translate(self, path: str) -> str | None:
        """Our path for a path under ``/sys/kernel/debug`` (None if it is not one)."""
        if path == DEBUGFS or path == DEBUGFS + "/":
            return self.root
        if path.startswith(DEBUGFS + "/"):
            return os.path.join(self.root, path[len(DEBUGFS) + 1 :])
        return None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

"""eventfd (fs/eventfd.c): a 64-bit counter as a file, the way a driver tells user space
that an interrupt happened (VFIO's SET_IRQS, irqfds).

:class:`EventFd` is the Machine's own eventfd (``Machine.eventfd``); under ``iommu-sim exec``
a program's eventfd is a real one, signalled by writing to it. Kernel code holds either
through :func:`eventfd_ctx_fdget`, which takes a reference on the file as
``eventfd_ctx_fdget`` does, and signals it with :meth:`File.eventfd_signal`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform.files import POLLIN, POLLOUT, POLLRDNORM, File

if TYPE_CHECKING:
    from iommu_core.platform.files import FileTable

EFD_SEMAPHORE = 0o1
EFD_NONBLOCK = 0o4000  # O_NONBLOCK
EFD_CLOEXEC = 0o2000000  # O_CLOEXEC
_EFD_FLAGS = EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC
POLLERR = 0x008
ULLONG_MAX = (1 << 64) - 1


class EventFd(File):
    """``struct eventfd_ctx`` and its file. A read that would block is EAGAIN even without
    EFD_NONBLOCK: the Python Machine has one thread, nothing could ever wake it."""

    name = "anon_inode:[eventfd]"

    def __init__(self, initval: int = 0, flags: int = 0) -> None:
        if flags & ~_EFD_FLAGS:
            raise IommuError(errno.EINVAL, f"unknown eventfd flags {flags:#x}")
        self.count = initval
        self.flags = flags
        #: Kernel waiters woken on every write and signal (an irqfd's ``wait_queue``).
        self.waiters: list[Callable[[], None]] = []

    def is_eventfd(self) -> bool:
        return True

    def read(self, n: int) -> bytes:
        if n < 8:
            raise IommuError(errno.EINVAL, f"an eventfd read needs 8 bytes, not {n}")
        if not self.count:
            raise IommuError(errno.EAGAIN, "the eventfd counter is 0")
        return self.do_read().to_bytes(8, "little")

    def do_read(self) -> int:
        """``eventfd_ctx_do_read``: take the counter (1 of it for a semaphore)."""
        value = 1 if self.flags & EFD_SEMAPHORE and self.count else self.count
        self.count -= value
        return value

    def _wake(self) -> None:
        for w in list(self.waiters):
            if self.count:
                w()

    def write(self, data: bytes) -> int:
        if len(data) < 8:
            raise IommuError(errno.EINVAL, f"an eventfd write needs 8 bytes, not {len(data)}")
        value = int.from_bytes(data[:8], "little")
        if value == ULLONG_MAX:
            raise IommuError(errno.EINVAL, "0xffffffffffffffff cannot be added")
        if ULLONG_MAX - self.count <= value:
            raise IommuError(errno.EAGAIN, "the eventfd counter would overflow")
        self.count += value
        self._wake()
        return 8

    def poll(self) -> int:
        mask = 0
        if self.count:
            mask |= POLLIN | POLLRDNORM
        if self.count == ULLONG_MAX:
            mask |= POLLERR
        if self.count < ULLONG_MAX - 1:
            mask |= POLLOUT
        return mask

    def eventfd_signal(self, n: int = 1) -> None:
        """``eventfd_signal``: the counter saturates at ULLONG_MAX (the kernel warns)."""
        self.count = min(ULLONG_MAX, self.count + n)
        self._wake()


def eventfd_ctx_fdget(files: FileTable, fd: int) -> File:
    """``eventfd_ctx_fdget``: the eventfd ``fd`` names, with a reference the caller drops
    with ``fput`` (``eventfd_ctx_put``). EBADF for no such fd, EINVAL for another file."""
    f = files.get(fd)
    if not f.is_eventfd():
        raise IommuError(errno.EINVAL, f"fd {fd} is not an eventfd")
    f.get_file()
    return f

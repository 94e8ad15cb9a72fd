"""File descriptors: character-device nodes, open files and the process's fd table."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from iommu_core.platform.task import Task
    from iommu_core.platform.uaccess import UserArg

POLLIN = 0x001
POLLOUT = 0x004
POLLRDNORM = 0x040


class File:
    """An open file (``struct file`` + its ``file_operations``). Subclasses override the
    operations they support; the others fail as the VFS fails them."""

    name = "file"

    def ioctl(self, request: int, arg: UserArg) -> int:
        raise IommuError(errno.ENOTTY, f"{self.name} has no ioctl {request:#x}")

    def ioctl_by_value(self, request: int, value: int) -> int:
        """An ioctl whose argument is a plain integer (e.g. VFIO_CHECK_EXTENSION)."""
        raise IommuError(errno.ENOTTY, f"{self.name} has no ioctl {request:#x}")

    def read(self, n: int) -> bytes:
        raise IommuError(errno.EINVAL, f"{self.name} is not readable")

    def write(self, data: bytes) -> int:
        raise IommuError(errno.EINVAL, f"{self.name} is not writable")

    def pread(self, n: int, offset: int) -> bytes:
        """``pread(2)`` at ``offset``; a file without it (no FMODE_PREAD) is ESPIPE."""
        raise IommuError(errno.ESPIPE, f"{self.name} has no pread")

    def pwrite(self, data: bytes, offset: int) -> int:
        """``pwrite(2)`` at ``offset``; a file without it (no FMODE_PWRITE) is ESPIPE."""
        raise IommuError(errno.ESPIPE, f"{self.name} has no pwrite")

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool
             ) -> tuple[int, Callable[[], None]]:
        """Map device memory: returns its physical base and a callback run when the
        mapping goes away (``vm_ops->close``)."""
        raise IommuError(errno.ENODEV, f"{self.name} cannot be mmapped")

    def poll(self) -> int:
        return 0

    def release(self) -> None:
        """Last close."""


Opener = Callable[["Task"], File]


class FileTable:
    """A process's descriptors: lowest free number first, from 3 (0-2 are stdio)."""

    __slots__ = ("_files", "chrdevs")

    def __init__(self) -> None:
        self._files: dict[int, File] = {}
        #: Device nodes: path -> opener (registered by the subsystems that own them).
        self.chrdevs: dict[str, Opener] = {}

    def install(self, f: File) -> int:
        fd = 3
        while fd in self._files:
            fd += 1
        self._files[fd] = f
        return fd

    def get(self, fd: int) -> File:
        f = self._files.get(fd) if isinstance(fd, int) else None
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        return f

    def close(self, fd: int) -> None:
        f = self._files.pop(fd, None) if isinstance(fd, int) else None
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        f.release()

    def open_fds(self) -> list[int]:
        return sorted(self._files)

    def __contains__(self, fd: int) -> bool:
        return fd in self._files

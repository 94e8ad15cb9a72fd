"""Open files and fd tables (``struct file``, ``struct files_struct``).

An open file is reference counted like ``f_count``: every fd that names it (in any task:
fds are shared across fork and dup), every mapping of it (``vma->vm_file``) and every
kernel object that keeps it (``get_file``) holds one reference; the last :meth:`File.fput`
runs :meth:`File.release`. So closing a file that is still mapped releases nothing until
the munmap, as in Linux.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from iommu_core.platform.dma import Mmio
    from iommu_core.platform.task import Task
    from iommu_core.platform.uaccess import UserArg

POLLIN = 0x001
POLLOUT = 0x004
POLLRDNORM = 0x040

#: Default RLIMIT_NOFILE soft limit of a distro shell.
NR_OPEN_DEFAULT = 1024


# -- what a file's mmap hands the address space --------------------------------------------
@attrs.frozen
class PfnRegion:
    """``remap_pfn_range``/``io_remap_pfn_range``: physical pages (``pa``) or device
    registers (``mmio`` at ``mmio_offset``) mapped VM_PFNMAP: never pinnable, never
    copied on write. ``open``/``close`` are the ``vm_operations_struct`` callbacks, run
    for every VMA that comes (fork, split) and goes (munmap, exit)."""

    pa: int = 0
    mmio: Mmio | None = None
    mmio_offset: int = 0
    open: Callable[[], None] | None = None
    close: Callable[[], None] | None = None


@attrs.frozen
class PageCacheRegion:
    """A mapping of a file's page cache (shmem, memfd): ``pgoff`` is the file page the
    mapping starts at."""

    obj: Any  # iommu_core.platform.shmem.ShmemObject
    pgoff: int


VmRegion = PfnRegion | PageCacheRegion


class File:
    """An open file (``struct file`` + its ``file_operations``). Subclasses override the
    operations they support; the others fail as the VFS fails them."""

    name = "file"
    #: ``f_count``: fds, mappings and kernel holders.
    f_count: int = 1
    released: bool = False

    # -- references ---------------------------------------------------------------------
    def get_file(self) -> None:
        if self.released:
            raise IommuError(errno.EBADF, f"{self.name} is already released")
        self.f_count += 1

    def fput(self) -> None:
        """Drop one reference; the last one releases the file."""
        self.f_count -= 1
        if self.f_count == 0 and not self.released:
            self.released = True
            self.release()

    # -- file_operations ----------------------------------------------------------------
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
        """``pread64``: a file without FMODE_PREAD is ESPIPE."""
        raise IommuError(errno.ESPIPE, f"{self.name} is not seekable")

    def pwrite(self, data: bytes, offset: int) -> int:
        raise IommuError(errno.ESPIPE, f"{self.name} is not seekable")

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool) -> VmRegion:
        """What the mapping shows. Raises the file's errno if it cannot be mapped."""
        raise IommuError(errno.ENODEV, f"{self.name} cannot be mmapped")

    def poll(self) -> int:
        return 0

    def is_eventfd(self) -> bool:
        """``file->f_op == &eventfd_fops`` (what ``eventfd_ctx_fileget`` checks)."""
        return False

    def eventfd_signal(self, n: int = 1) -> None:
        """Add ``n`` to an eventfd's counter (a device interrupt); anything else is not
        an eventfd (``eventfd_ctx_fdget``: EINVAL)."""
        raise IommuError(errno.EINVAL, f"{self.name} is not an eventfd")

    def pin_folios(self, start: int, end: int) -> list[tuple[int, int]]:
        """``memfd_pin_folios``: pin the page-cache pages holding bytes ``[start, end]``,
        allocating missing ones; runs of (pfn, count). Only shmem and hugetlbfs files
        have such pages: anything else is EINVAL."""
        raise IommuError(errno.EINVAL, f"{self.name} is not a shmem or hugetlbfs file")

    def release(self) -> None:
        """Last reference gone (``file_operations.release``)."""


Opener = Callable[["Task"], File]


class FileTable:
    """A task's descriptors (``files_struct``): the lowest free number first.

    ``get_unused_fd``/``fd_install``/``put_unused_fd`` reserve a number before the file
    is ready, as the kernel does when it writes an fd into an ioctl's response first.
    """

    __slots__ = ("_reserved", "chrdevs", "fdt", "nofile")

    def __init__(self, chrdevs: dict[str, Opener] | None = None,
                 first_fd: int = 3) -> None:
        #: The open files by number (``files->fdt``); read it, change it through the
        #: methods.
        self.fdt: dict[int, File] = {}
        #: Numbers taken by get_unused_fd and not yet installed; 0-2 are stdio.
        self._reserved: set[int] = set(range(first_fd))
        #: Device nodes: path -> opener (shared by every task of one machine).
        self.chrdevs: dict[str, Opener] = {} if chrdevs is None else chrdevs
        self.nofile = NR_OPEN_DEFAULT

    def get_unused_fd(self) -> int:
        fd = 0
        while fd in self.fdt or fd in self._reserved:
            fd += 1
        if fd >= self.nofile:
            raise IommuError(errno.EMFILE, "too many open files")
        self._reserved.add(fd)
        return fd

    def put_unused_fd(self, fd: int) -> None:
        self._reserved.discard(fd)

    def fd_install(self, fd: int, f: File) -> None:
        """Install ``f`` at a reserved number; the table takes the caller's reference."""
        self._reserved.discard(fd)
        self.fdt[fd] = f

    def install(self, f: File) -> int:
        """``get_unused_fd`` + ``fd_install``; the table takes the caller's reference."""
        fd = self.get_unused_fd()
        self.fd_install(fd, f)
        return fd

    def get(self, fd: int) -> File:
        """The file behind ``fd`` (borrowed for the syscall; ``get_file`` to keep it)."""
        f = self.fdt.get(fd) if isinstance(fd, int) else None
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        return f

    def close(self, fd: int) -> None:
        f = self.fdt.pop(fd, None) if isinstance(fd, int) else None
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        f.fput()

    def dup(self, fd: int, newfd: int | None = None) -> int:
        f = self.get(fd)
        if newfd is None:
            newfd = self.get_unused_fd()
        elif newfd in self.fdt:
            self.close(newfd)
        f.get_file()
        self.fd_install(newfd, f)
        return newfd

    def fork(self) -> FileTable:
        """``dup_fd``: a copy naming the same open files."""
        child = FileTable(self.chrdevs, first_fd=0)
        child._reserved = {fd for fd in self._reserved if fd < 3}
        child.nofile = self.nofile
        for fd, f in self.fdt.items():
            f.get_file()
            child.fdt[fd] = f
        return child

    def close_all(self) -> None:
        """``exit_files``: every descriptor is closed."""
        for fd in sorted(self.fdt):
            f = self.fdt.pop(fd)
            f.fput()

    def open_fds(self) -> list[int]:
        return sorted(self.fdt)

    def __contains__(self, fd: object) -> bool:
        return fd in self.fdt

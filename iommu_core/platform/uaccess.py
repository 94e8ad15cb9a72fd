"""User memory access at the syscall boundary: copy_from_user, copy_to_user,
copy_struct_from_user, and the ioctl argument (a buffer, or a user pointer)."""

from __future__ import annotations

import ctypes
import errno
from typing import TypeVar

from iommu_core.errors import IommuError
from iommu_core.platform.mm import MmStruct

T = TypeVar("T", bound=ctypes.Structure | ctypes.Union)


class UserArg:
    """The ``arg`` of an ioctl: bytes the user passed, read and written at offsets.

    Either a buffer object (bytearray or ctypes struct, updated in place) or a user
    virtual address in the process memory (an int; 0 is NULL). Out-of-range accesses
    are EFAULT, as a fault in copy_from_user is.
    """

    __slots__ = ("_buf", "_mm", "va")

    def __init__(self, mm: MmStruct, buf: memoryview | None = None, va: int = 0) -> None:
        self._mm = mm
        self._buf = buf
        self.va = va

    @classmethod
    def from_object(cls, mm: MmStruct, obj: object) -> UserArg:
        if obj is None:
            return cls(mm, None, 0)
        if isinstance(obj, bool):
            raise IommuError(errno.EFAULT, "ioctl argument is not a buffer or an address")
        if isinstance(obj, int):
            return cls(mm, None, obj)
        try:
            mv = memoryview(obj)  # type: ignore[arg-type]
        except TypeError:
            raise IommuError(errno.EFAULT, f"ioctl argument of type {type(obj).__name__} "
                             "is not a buffer") from None
        if mv.readonly:
            raise IommuError(errno.EFAULT, "ioctl argument buffer is read-only")
        return cls(mm, mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)

    @property
    def is_null(self) -> bool:
        return self._buf is None and self.va == 0

    def read(self, off: int, n: int) -> bytes:
        if self._buf is None:
            if self.va == 0:
                raise IommuError(errno.EFAULT, "NULL ioctl argument")
            return self._mm.read(self.va + off, n)
        if off < 0 or off + n > len(self._buf):
            raise IommuError(errno.EFAULT, f"read of {n} bytes at +{off} is past the "
                             f"{len(self._buf)}-byte argument")
        return bytes(self._buf[off : off + n])

    def write(self, off: int, data: bytes) -> None:
        if self._buf is None:
            if self.va == 0:
                raise IommuError(errno.EFAULT, "NULL ioctl argument")
            self._mm.write(self.va + off, data)
            return
        if off < 0 or off + len(data) > len(self._buf):
            raise IommuError(errno.EFAULT, f"write of {len(data)} bytes at +{off} is past "
                             f"the {len(self._buf)}-byte argument")
        self._buf[off : off + len(data)] = data

    def get_u32(self, off: int = 0) -> int:
        """``get_user(u32)``."""
        return int.from_bytes(self.read(off, 4), "little")


def copy_struct_from_user(ktype: type[T], arg: UserArg, usize: int, off: int = 0) -> T:
    """``copy_struct_from_user``: short user structs are zero-extended; a longer one must
    have an all-zero tail beyond the kernel's size (else E2BIG)."""
    ksize = ctypes.sizeof(ktype)
    if usize > ksize:
        tail = arg.read(off + ksize, usize - ksize)
        if any(tail):
            raise IommuError(errno.E2BIG, f"{usize - ksize} trailing bytes past the "
                             f"{ksize}-byte struct are not zero")
    data = arg.read(off, min(usize, ksize))
    obj = ktype()
    ctypes.memmove(ctypes.addressof(obj), data, len(data))
    return obj


def struct_to_bytes(obj: ctypes.Structure | ctypes.Union) -> bytes:
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


def struct_from_bytes(ktype: type[T], data: bytes) -> T:
    """A struct from ``data``, zero-filled when short, truncated when long."""
    obj = ktype()
    n = min(len(data), ctypes.sizeof(ktype))
    ctypes.memmove(ctypes.addressof(obj), data, n)
    return obj


def copy_to_user_struct(arg: UserArg, obj: ctypes.Structure | ctypes.Union, usize: int) -> None:
    """Write back ``min(usize, sizeof)`` bytes (iommufd_ucmd_respond)."""
    arg.write(0, struct_to_bytes(obj)[: min(usize, ctypes.sizeof(obj))])


class UserMemory:
    """``copy_from_user``/``copy_to_user`` on pointers found inside ioctl structs."""

    __slots__ = ("mm",)

    def __init__(self, mm: MmStruct) -> None:
        self.mm = mm

    def copy_from_user(self, uptr: int, n: int) -> bytes:
        if n == 0:
            return b""
        if uptr == 0:
            raise IommuError(errno.EFAULT, "NULL user pointer")
        return self.mm.read(uptr, n)

    def copy_to_user(self, uptr: int, data: bytes) -> None:
        if not data:
            return
        if uptr == 0:
            raise IommuError(errno.EFAULT, "NULL user pointer")
        self.mm.write(uptr, data)

    def clear_user(self, uptr: int, n: int) -> None:
        self.copy_to_user(uptr, bytes(n))

"""User memory access at the syscall boundary: copy_from_user, copy_to_user,
copy_struct_from_user, and the ioctl argument (a buffer, or a user pointer)."""

from __future__ import annotations

import ctypes
import errno
import struct
from typing import Any, TypeVar, cast

from iommu_core.errors import IommuError
from iommu_core.platform.mm import MmStruct

T = TypeVar("T", bound=ctypes.Structure | ctypes.Union)


_U32 = struct.Struct("<I")
_BYTES: dict[int, struct.Struct] = {}


def _bytes_struct(n: int) -> struct.Struct:
    """``n`` raw bytes as one struct item: unpack_from/pack_into copy them out of or
    into any buffer (a ctypes struct too) without a view or a slice object."""
    st = _BYTES.get(n)
    if st is None:
        st = _BYTES[n] = struct.Struct(f"{n}s")
    return st


_CTYPES = (ctypes.Structure, ctypes.Union, ctypes.Array)
#: ctypes struct/union/array types seen as ioctl arguments -> their size.
_CTYPE_SIZE: dict[type, int] = {}


class UserArg:
    """The ``arg`` of an ioctl: bytes the user passed, read and written at offsets.

    Either a buffer object (bytearray or ctypes struct, updated in place) or a user
    virtual address in the process memory (an int; 0 is NULL). Out-of-range accesses
    are EFAULT, as a fault in copy_from_user is.
    """

    __slots__ = ("_buf", "_len", "_mm", "va")

    def __init__(self, mm: MmStruct, buf: Any = None, va: int = 0, size: int = -1) -> None:
        """``buf``: a writable buffer (bytearray, ctypes object, flat byte view) of
        ``size`` bytes (found when not given)."""
        self._mm = mm
        self._buf = buf
        self._len = size if size >= 0 or buf is None else memoryview(buf).nbytes
        self.va = va

    @classmethod
    def from_object(cls, mm: MmStruct, obj: object) -> UserArg:
        t = type(obj)
        size = _CTYPE_SIZE.get(t)
        if size is not None:  # a ctypes object: writable, no view needed
            return cls(mm, obj, 0, size)
        if t is int:
            return cls(mm, None, obj)  # type: ignore[arg-type]
        if obj is None:
            return cls(mm, None, 0)
        if t is bytearray:
            return cls(mm, obj, 0, len(obj))  # type: ignore[arg-type]
        if isinstance(obj, _CTYPES):
            size = _CTYPE_SIZE[t] = ctypes.sizeof(obj)
            return cls(mm, obj, 0, size)
        if isinstance(obj, bool):
            raise IommuError(errno.EFAULT, "ioctl argument is not a buffer or an address")
        if isinstance(obj, int):
            return cls(mm, None, int(obj))
        try:
            mv = memoryview(obj)  # type: ignore[arg-type]
        except TypeError:
            raise IommuError(errno.EFAULT, f"ioctl argument of type {type(obj).__name__} "
                             "is not a buffer") from None
        if mv.readonly:
            raise IommuError(errno.EFAULT, "ioctl argument buffer is read-only")
        return cls(mm, obj if t is bytearray else
                   mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)

    @property
    def is_null(self) -> bool:
        return self._buf is None and self.va == 0

    def read(self, off: int, n: int) -> bytes:
        buf = self._buf
        if buf is None:
            if self.va == 0:
                raise IommuError(errno.EFAULT, "NULL ioctl argument")
            return self._mm.read(self.va + off, n)
        if off < 0 or n < 0 or off + n > self._len:
            raise IommuError(errno.EFAULT, f"read of {n} bytes at +{off} is past the "
                             f"{self._len}-byte argument")
        st = _BYTES.get(n) or _bytes_struct(n)
        return st.unpack_from(buf, off)[0]  # type: ignore[no-any-return]

    def write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        if buf is None:
            if self.va == 0:
                raise IommuError(errno.EFAULT, "NULL ioctl argument")
            self._mm.write(self.va + off, data)
            return
        n = len(data)
        if off < 0 or off + n > self._len:
            raise IommuError(errno.EFAULT, f"write of {n} bytes at +{off} is past "
                             f"the {self._len}-byte argument")
        st = _BYTES.get(n) or _bytes_struct(n)
        st.pack_into(buf, off, data if type(data) is not memoryview else data.tobytes())

    def write_field(self, obj: Any, field: str) -> None:
        """Copy one field of the kernel's struct ``obj`` to the same place of the
        argument (a response that writes back one member)."""
        buf = self._buf
        if type(buf) is type(obj):  # the user's struct is the kernel's: same layout
            setattr(buf, field, getattr(obj, field))
            return
        off, st = field_loc(type(obj), field)
        if buf is not None and off >= 0 and off + st.size <= self._len:
            st.pack_into(buf, off, *st.unpack_from(obj, off))
            return
        self.write(off, st.unpack_from(obj, off)[0])

    def get_u32(self, off: int = 0) -> int:
        """``get_user(u32)``."""
        buf = self._buf
        if buf is not None and off >= 0 and off + 4 <= self._len:
            return _U32.unpack_from(buf, off)[0]  # type: ignore[no-any-return]
        return int.from_bytes(self.read(off, 4), "little")

    def copy_struct(self, ktype: type[T], usize: int) -> T | None:
        """The struct at offset 0 when the user's copy is exactly ``ktype`` and in a
        buffer (one copy, no bounds left to check); None otherwise."""
        buf = self._buf
        if buf is not None and usize == ctypes.sizeof(ktype) and usize <= self._len:
            return cast(T, ktype.from_buffer_copy(buf))
        return None

    def sized_struct(self, ktype: type[T], ksize: int) -> tuple[int, T | None]:
        """The leading ``u32 size`` (EFAULT if unreadable), and the struct when the
        user's copy is exactly ``ktype`` (``ksize`` bytes) in a buffer: the start of an
        extensible ioctl in one call."""
        buf = self._buf
        if buf is not None and self._len >= 4:
            usize: int = _U32.unpack_from(buf, 0)[0]
            if usize == ksize and usize <= self._len:
                return usize, cast(T, ktype.from_buffer_copy(buf))
            return usize, None
        return self.get_u32(0), None


def copy_struct_from_user(ktype: type[T], arg: UserArg, usize: int, off: int = 0) -> T:
    """``copy_struct_from_user``: short user structs are zero-extended; a longer one must
    have an all-zero tail beyond the kernel's size (else E2BIG)."""
    if not off:
        obj = arg.copy_struct(ktype, usize)
        if obj is not None:
            return obj
    ksize = ctypes.sizeof(ktype)
    if usize > ksize:
        tail = arg.read(off + ksize, usize - ksize)
        if any(tail):
            raise IommuError(errno.E2BIG, f"{usize - ksize} trailing bytes past the "
                             f"{ksize}-byte struct are not zero")
    data = arg.read(off, min(usize, ksize))
    if len(data) == ksize:
        return cast(T, ktype.from_buffer_copy(data))
    obj = ktype()
    ctypes.memmove(ctypes.addressof(obj), data, len(data))
    return obj


def struct_to_bytes(obj: ctypes.Structure | ctypes.Union) -> bytes:
    return bytes(obj)


def struct_from_bytes(ktype: type[T], data: bytes) -> T:
    """A struct from ``data``, zero-filled when short, truncated when long."""
    obj = ktype()
    n = min(len(data), ctypes.sizeof(ktype))
    ctypes.memmove(ctypes.addressof(obj), data, n)
    return obj


def field_loc(ktype: type, field: str) -> tuple[int, struct.Struct]:
    """(offset, a struct copying its bytes) of one field of ``ktype``."""
    key = (ktype, field)
    loc = _FIELDS.get(key)
    if loc is None:
        desc = getattr(ktype, field)
        loc = _FIELDS[key] = (desc.offset, _bytes_struct(desc.size))
    return loc


_FIELDS: dict[tuple[type, str], tuple[int, struct.Struct]] = {}


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

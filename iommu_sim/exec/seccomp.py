"""The host kernel interfaces exec stands on, from pure Python (ctypes): a seccomp filter
with a user-notification listener, the notification ioctls, pidfds and cross-process
memory access. Nothing here knows the Machine."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterable

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# syscall(2) and ioctl(2) are variadic: every integer argument is passed as a full long,
# or its upper half is whatever the register held.
_L = ctypes.c_long
_ONE = _L(1)
_ZERO = _L(0)

# x86_64 system call numbers of the host interfaces used here.
SYS_seccomp = 317
SYS_pidfd_open = 434
SYS_pidfd_getfd = 438
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF_0000
SECCOMP_RET_USER_NOTIF = 0x7FC0_0000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2
SECCOMP_IOCTL_NOTIF_RECV = 0xC050_2100
SECCOMP_IOCTL_NOTIF_SEND = 0xC018_2101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x4008_2102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x4018_2103
AUDIT_ARCH_X86_64 = 0xC000_003E
X32_SYSCALL_BIT = 0x4000_0000

# BPF
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


class SeccompData(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int32), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class SeccompNotif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", SeccompData)]


class SeccompNotifResp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


class SeccompNotifAddfd(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("flags", ctypes.c_uint32),
                ("srcfd", ctypes.c_uint32), ("newfd", ctypes.c_uint32),
                ("newfd_flags", ctypes.c_uint32)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def notify_filter(nrs: Iterable[int]) -> ctypes.Array[_SockFilter]:
    """A filter sending the x86-64 system calls ``nrs`` to the listener and allowing the
    rest (and every call of another ABI)."""
    nrs = sorted(set(nrs))
    prog: list[tuple[int, int, int, int]] = [
        (_BPF_LD_W_ABS, 0, 0, 4),                           # arch
        (_BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_BPF_LD_W_ABS, 0, 0, 0),                           # nr
        (_BPF_JGE_K, len(nrs), 0, X32_SYSCALL_BIT),         # x32: to the ALLOW
    ]
    n = len(nrs)
    for i, nr in enumerate(nrs):
        # match: jump to the NOTIFY return after the remaining tests and the ALLOW
        prog.append((_BPF_JEQ_K, n - i, 0, nr))
    prog.append((_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append((_BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF))
    arr = (_SockFilter * len(prog))(*[_SockFilter(*p) for p in prog])
    return arr


def install_filter(prog: ctypes.Array[_SockFilter]) -> int:
    """In the process to be watched: install ``prog``; the listener fd."""
    fprog = _SockFprog(len(prog), ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    if os.geteuid() != 0 and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _err("prctl(PR_SET_NO_NEW_PRIVS)")
    fd = _syscall(_L(SYS_seccomp), _L(SECCOMP_SET_MODE_FILTER),
                  _L(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(fprog))
    if fd < 0:
        raise _err("seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)")
    return int(fd)


def notif_sizes() -> tuple[int, int, int]:
    sizes = (ctypes.c_uint16 * 3)()
    if _syscall(_L(SYS_seccomp), _L(SECCOMP_GET_NOTIF_SIZES), _L(0), ctypes.byref(sizes)) != 0:
        raise _err("seccomp(SECCOMP_GET_NOTIF_SIZES)")
    return sizes[0], sizes[1], sizes[2]


class Listener:
    """The supervisor's end of the filter: receive, answer, add fds."""

    __slots__ = ("_notif", "_resp", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._notif = SeccompNotif()
        self._resp = SeccompNotifResp()

    def recv(self) -> SeccompNotif | None:
        """The next notification (None if the target went away before it was read)."""
        n = self._notif
        ctypes.memset(ctypes.addressof(n), 0, ctypes.sizeof(n))
        if _libc.ioctl(self.fd, _L(SECCOMP_IOCTL_NOTIF_RECV), ctypes.byref(n)) != 0:
            e = ctypes.get_errno()
            if e in (errno.ENOENT, errno.EINTR):
                return None
            raise OSError(e, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(e)}")
        return n

    def send(self, nid: int, val: int = 0, error: int = 0, cont: bool = False) -> None:
        """Answer: ``val`` (or ``-error``), or let the kernel run the call."""
        r = self._resp
        r.id = nid
        r.val = 0 if (error or cont) else val
        r.error = -error if error else 0
        r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
        if _libc.ioctl(self.fd, _L(SECCOMP_IOCTL_NOTIF_SEND), ctypes.byref(r)) != 0:
            e = ctypes.get_errno()
            if e != errno.ENOENT:  # the target was killed meanwhile
                raise OSError(e, f"SECCOMP_IOCTL_NOTIF_SEND: {os.strerror(e)}")

    def id_valid(self, nid: int) -> bool:
        v = ctypes.c_uint64(nid)
        return bool(_libc.ioctl(self.fd, _L(SECCOMP_IOCTL_NOTIF_ID_VALID), ctypes.byref(v)) == 0)

    def addfd(self, nid: int, srcfd: int, newfd: int | None = None, cloexec: bool = False,
              send: bool = False) -> int:
        """Install ``srcfd`` into the target: at ``newfd`` if given, else the lowest free
        number; ``send`` also answers the call with that number. The target's fd."""
        a = SeccompNotifAddfd()
        a.id = nid
        a.srcfd = srcfd
        a.flags = (SECCOMP_ADDFD_FLAG_SETFD if newfd is not None else 0) | (
            SECCOMP_ADDFD_FLAG_SEND if send else 0)
        a.newfd = newfd or 0
        a.newfd_flags = os.O_CLOEXEC if cloexec else 0
        fd = _libc.ioctl(self.fd, _L(SECCOMP_IOCTL_NOTIF_ADDFD), ctypes.byref(a))
        if fd < 0:
            raise _err("SECCOMP_IOCTL_NOTIF_ADDFD")
        return int(fd)


def pidfd_open(pid: int) -> int:
    fd = _syscall(_L(SYS_pidfd_open), _L(pid), _L(0))
    if fd < 0:
        raise _err(f"pidfd_open({pid})")
    return int(fd)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A duplicate of the target's fd in this process (the same open file)."""
    fd = _syscall(_L(SYS_pidfd_getfd), _L(pidfd), _L(targetfd), _L(0))
    if fd < 0:
        raise _err(f"pidfd_getfd(fd {targetfd})")
    return int(fd)


#: One local and one remote iovec, reused by every call (the supervisor is one thread).
_LOCAL = _Iovec()
_REMOTE = _Iovec()
_LOCAL_P = ctypes.byref(_LOCAL)
_REMOTE_P = ctypes.byref(_REMOTE)
#: A scratch buffer for small transfers (ioctl structs), grown on demand.
_SCRATCH = ctypes.create_string_buffer(4096)


def _vm_rw(nr: int, pid: int, addr: int, n: int) -> None:
    """One process_vm_readv/writev of ``n`` bytes between the scratch buffer and ``addr``."""
    _LOCAL.base = ctypes.addressof(_SCRATCH)
    _LOCAL.len = n
    _REMOTE.base = addr
    _REMOTE.len = n
    got = _syscall(_L(nr), _L(pid), _LOCAL_P, _ONE, _REMOTE_P, _ONE, _ZERO)
    if got != n:
        raise _err("process_vm_rw") if got < 0 else OSError(errno.EFAULT, "short transfer")


def _scratch(n: int) -> None:
    global _SCRATCH
    if n > len(_SCRATCH):
        _SCRATCH = ctypes.create_string_buffer(max(n, 2 * len(_SCRATCH)))


def vm_read(pid: int, addr: int, n: int) -> bytes:
    """``process_vm_readv``: all ``n`` bytes at ``addr`` in ``pid``, or OSError (EFAULT
    for a hole, ESRCH for a process that is gone)."""
    if n == 0:
        return b""
    _scratch(n)
    _vm_rw(SYS_process_vm_readv, pid, addr, n)
    return ctypes.string_at(_SCRATCH, n)


def vm_write(pid: int, addr: int, data: bytes | bytearray | memoryview) -> None:
    """``process_vm_writev`` (respects page protection: a read-only page is EFAULT)."""
    n = len(data)
    if n == 0:
        return
    _scratch(n)
    ctypes.memmove(_SCRATCH, bytes(data), n)
    _vm_rw(SYS_process_vm_writev, pid, addr, n)


def read_iovecs(pid: int, addr: int, count: int) -> list[tuple[int, int]]:
    """A ``struct iovec`` array in ``pid``: (base, len) pairs."""
    raw = vm_read(pid, addr, 16 * count)
    return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(count)]


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_char * 112)]


def fs_type(fd: int) -> int:
    """``fstatfs(fd).f_type``: the filesystem's magic number (0 if it cannot be read)."""
    sfs = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(sfs)) != 0:
        return 0
    return int(sfs.f_type) & 0xFFFF_FFFF

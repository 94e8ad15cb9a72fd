"""The exec supervisor: one handler per watched system call, the program's processes as
tasks of the Machine, and the loop that serves them (see docs/exec.rst).

A handler returns what to do with the call: :data:`CONTINUE` (the real kernel runs it),
an int (the call returns it), an :class:`IommuError` or ``OSError`` turned into ``-errno``,
or :data:`SENT` when it already answered (an fd installed with ADDFD's SEND flag).
"""

from __future__ import annotations

import errno
import os
import select
import sys
import traceback
from collections.abc import Callable
from typing import Any

from iommu_core.errors import IommuError
from iommu_core.platform.files import File, PfnRegion
from iommu_core.platform.task import Task
from iommu_core.platform.uaccess import UserArg
from iommu_sim.exec.files import Exported, ExportTable, HostFile, RemoteFiles
from iommu_sim.exec.procfs import (
    DebugFs,
    FailNthFile,
    match_fail_nth,
    match_status,
    status_with_accounting,
)
from iommu_sim.exec.remote_mm import HostWindows, MapsEntry, RemoteMm, read_maps
from iommu_sim.exec.seccomp import (
    Listener,
    SeccompNotif,
    pidfd_getfd,
    pidfd_open,
    read_iovecs,
    vm_read,
    vm_write,
)

# x86_64 system call numbers
NR = {
    "read": 0, "write": 1, "open": 2, "mmap": 9, "munmap": 11, "brk": 12, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "mremap": 25, "madvise": 28,
    "shmdt": 67, "execve": 59, "creat": 85, "exit_group": 231, "openat": 257,
    "preadv": 295, "pwritev": 296, "execveat": 322, "preadv2": 327, "pwritev2": 328,
    "openat2": 437,
}

CONTINUE = object()
SENT = object()

AT_FDCWD = -100
MAP_SHARED = 0x01
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
PROT_EXEC = 0x4
MADV_DISCARDING = {4, 8, 9, 24}  # DONTNEED, FREE, REMOVE, DONTNEED_LOCKED
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
#: VFS ioctls the kernel handles before the file's own ioctl.
_VFS_IOCTLS = {0x5451, 0x5450, 0x5421, 0x5452, 0x5460}  # FIOCLEX FIONCLEX FIONBIO FIOASYNC FIOQSIZE
_MAX_RW = 0x7FFF_F000


def _host_bounding() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << 64) - 1


#: The capabilities this host lets any process have.
HOST_CAP_BOUNDING = _host_bounding()


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _s32(v: int) -> int:
    v &= 0xFFFF_FFFF
    return v - (1 << 32) if v >= 1 << 31 else v


class ExecTask(Task):
    """A thread of the program: its process's address space and fd table; credentials
    read from ``/proc`` when the kernel asks."""

    def __init__(self, tid: int, proc: Proc) -> None:
        self.proc = proc
        super().__init__(tid, proc.mm, proc.files)

    @property
    def tgid(self) -> int:
        return self.proc.tgid

    def _status(self, key: str) -> str:
        try:
            with open(f"/proc/{self.proc.tgid}/status") as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""

    def _cap(self, bit: int) -> bool:
        """A capability the process holds; one this host withholds from every process
        (not in its bounding set) counts as held by a root program, as on the distro box
        the Machine models."""
        eff = self._status("CapEff:")
        if eff and int(eff, 16) >> bit & 1:
            return True
        return not HOST_CAP_BOUNDING >> bit & 1 and self.uid == 0

    @property
    def cap_ipc_lock(self) -> bool:
        return self._cap(14)

    @cap_ipc_lock.setter
    def cap_ipc_lock(self, _v: bool) -> None:
        pass  # the real process's capabilities decide

    @property
    def cap_sys_resource(self) -> bool:
        return self._cap(24)

    @cap_sys_resource.setter
    def cap_sys_resource(self, _v: bool) -> None:
        pass

    @property
    def rlimit_memlock(self) -> int:
        try:
            with open(f"/proc/{self.proc.tgid}/limits") as f:
                for line in f:
                    if line.startswith("Max locked memory"):
                        soft = line.split()[3]
                        return (1 << 64) - 1 if soft == "unlimited" else int(soft)
        except OSError:
            pass
        return 0

    @rlimit_memlock.setter
    def rlimit_memlock(self, _v: int) -> None:
        pass

    @property
    def uid(self) -> int:
        u = self._status("Uid:")
        return int(u.split()[0]) if u else 0

    @uid.setter
    def uid(self, _v: int) -> None:
        pass


class Proc:
    """A process of the program (a thread group)."""

    def __init__(self, sup: Supervisor, tgid: int) -> None:
        self.tgid = tgid
        self.pidfd = pidfd_open(tgid)
        self.mm = sup.new_mm(tgid)
        self.files = RemoteFiles(sup.platform.chrdevs, sup, tgid)
        self.threads: dict[int, ExecTask] = {}
        #: Mappings of Machine regions: (start, end) -> region; and mmaps not yet placed.
        self.region_vmas: dict[tuple[int, int], PfnRegion] = {}
        self.pending: list[tuple[tuple[int, int], int, int, PfnRegion]] = []


class Supervisor:
    """Serves the program's watched system calls from a Machine."""

    def __init__(self, machine: Any, listener: Listener) -> None:
        self.machine = machine
        self.platform = machine.platform
        self.tasks = self.platform.tasks
        self.listener = listener
        self.exports = ExportTable(self.platform.mem)
        self.exports.holders = lambda: list(self.procs)
        self.windows = HostWindows(self.platform.alloc)
        self.debugfs = DebugFs(self.platform.fault_attrs)
        self.procs: dict[int, Proc] = {}
        self.tid_tgid: dict[int, int] = {}
        self.nid = 0
        #: System calls served so far (a process's mappings hold still within one).
        self.epoch = 0
        self._borrowed: list[File] = []
        self.handlers: dict[int, Callable[[ExecTask, SeccompNotif], Any]] = {
            NR["open"]: self.sys_open, NR["openat"]: self.sys_openat,
            NR["openat2"]: self.sys_openat2, NR["creat"]: self.sys_creat,
            NR["ioctl"]: self.sys_ioctl,
            NR["read"]: self.sys_read, NR["write"]: self.sys_write,
            NR["pread64"]: self.sys_pread64, NR["pwrite64"]: self.sys_pwrite64,
            NR["readv"]: self.sys_readv, NR["writev"]: self.sys_writev,
            NR["preadv"]: self.sys_preadv, NR["pwritev"]: self.sys_pwritev,
            NR["preadv2"]: self.sys_preadv, NR["pwritev2"]: self.sys_pwritev,
            NR["mmap"]: self.sys_mmap, NR["munmap"]: self.sys_munmap,
            NR["mremap"]: self.sys_mremap, NR["madvise"]: self.sys_madvise,
            NR["brk"]: self.sys_brk, NR["shmdt"]: self.sys_shmdt,
            NR["execve"]: self.sys_execve, NR["execveat"]: self.sys_execve,
            NR["exit_group"]: self.sys_exit_group,
        }
        #: Counts per syscall name, for the closing summary.
        self.stats: dict[str, int] = {}

    # -- tasks ------------------------------------------------------------------------------
    def new_mm(self, tgid: int) -> RemoteMm:
        return RemoteMm(self.platform.mem, self.platform.alloc, tgid, self.windows,
                        self._is_device_file, lambda: self.epoch)

    def _is_device_file(self, e: MapsEntry) -> bool:
        return any(ex.key[1] == e.inode for ex in self.exports.by_key.values()
                   if ex.kind == "tmpfs")

    def _tgid_of(self, tid: int) -> int | None:
        tgid = self.tid_tgid.get(tid)
        if tgid is not None:
            return tgid
        try:
            with open(f"/proc/{tid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        tgid = int(line.split()[1])
                        break
        except OSError:
            return None
        if tgid is not None:
            self.tid_tgid[tid] = tgid
        return tgid

    def task_of(self, tid: int) -> ExecTask | None:
        tgid = self._tgid_of(tid)
        if tgid is None:
            return None
        proc = self.procs.get(tgid)
        if proc is None:
            try:
                proc = self.procs[tgid] = Proc(self, tgid)
            except OSError:
                return None
            self._adopt_regions(proc)
        t = proc.threads.get(tid)
        if t is None:
            t = proc.threads[tid] = ExecTask(tid, proc)
            old = self.tasks.get(tid)
            if old is not None:
                self.tasks.remove(old)
            self.tasks.add(t)
        return t

    def _adopt_regions(self, proc: Proc) -> None:
        """A new process (a fork) maps Machine regions its parent mapped: each mapping is
        one more user of its region (``vm_ops->open``)."""
        inodes = {ex.key[1]: ex for ex in self.exports.by_key.values() if ex.regions}
        if not inodes:
            return
        for e in read_maps(proc.tgid):
            ex = inodes.get(e.inode)
            if ex is None or e.offset not in ex.regions:
                continue
            region = ex.regions[e.offset][1]
            if region.open is not None:
                region.open()
            proc.region_vmas[(e.start, e.end)] = region

    def proc_died(self, proc: Proc) -> None:
        """The process is gone (exit, signal): its address space goes; its regions'
        mappings with it."""
        proc.mm.exit_mmap()
        self._close_regions(proc, everything=True)
        for tid, t in proc.threads.items():
            self.tasks.remove(t)
            self.tid_tgid.pop(tid, None)
        self.procs.pop(proc.tgid, None)
        os.close(proc.pidfd)

    # -- Machine files as fds -----------------------------------------------------------------
    def install_file(self, f: File, fd: int | None, cloexec: bool = True,
                     send: bool = False) -> int:
        """Export ``f`` (taking the caller's reference) into the calling process at ``fd``
        (or the lowest free number)."""
        mappable = type(f).mmap is not File.mmap
        ex, src = self.exports.export(f, mappable)
        try:
            return self.listener.addfd(self.nid, src, fd, cloexec=cloexec, send=send)
        except OSError:
            self.exports._forget(ex)
            f.fput()
            raise IommuError(errno.EMFILE, "could not install the fd") from None
        finally:
            os.close(src)

    def fget(self, tgid: int, fd: int) -> File | None:
        """``fget``: the Machine file ``fd`` names, or the real file wrapped (borrowed for
        this system call)."""
        ex = self.exports.lookup(tgid, fd)
        if ex is not None:
            return ex.file
        proc = self.procs.get(tgid)
        if proc is None:
            return None
        try:
            dup = pidfd_getfd(proc.pidfd, fd)
        except OSError:
            return None
        hf = HostFile(dup, self.windows)
        self._borrowed.append(hf)
        return hf

    def _lookup(self, task: ExecTask, fd: int) -> Exported | None:
        return self.exports.lookup(task.pid, _s32(fd)) if _s32(fd) >= 0 else None

    # -- the loop ---------------------------------------------------------------------------
    def handle(self, n: SeccompNotif) -> None:
        nid = n.id
        self.nid = nid
        self.epoch += 1
        self.exports.sync_registers()
        task = self.task_of(n.pid)
        handler = self.handlers.get(n.data.nr)
        if task is None or handler is None:
            self.listener.send(nid, cont=True)
            return
        self.tasks.current = task
        try:
            res = handler(task, n)
        except IommuError as e:
            res = e
        except OSError as e:
            res = IommuError(e.errno or errno.EIO, str(e))
        except Exception as e:  # the simulator never crashes because of the program
            print(f"iommu-sim exec: internal error in syscall {n.data.nr}: {e}",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            res = IommuError(errno.EIO, "internal error")
        finally:
            self.tasks.current = None
            for f in self._borrowed:
                f.fput()
            self._borrowed.clear()
        if res is CONTINUE:
            self.listener.send(nid, cont=True)
        elif res is SENT:
            pass
        elif isinstance(res, IommuError):
            self.listener.send(nid, error=res.errno)
        else:
            self.listener.send(nid, val=int(res))
        self.tick()

    def tick(self) -> bool:
        """Between system calls: registers the program stored to take effect, fds whose
        files became readable become readable. True while registers are mapped (the loop
        then keeps ticking)."""
        mapped = self.exports.sync_registers()
        self.exports.sync_tokens()
        return mapped

    def reap(self, ready: dict[int, int] | None = None) -> None:
        """Process what happened since the last call: files released, processes gone.
        ``ready``: what a poll of :meth:`watch_fds` said (else this polls them)."""
        if ready is None:
            p = select.poll()
            for fd in self.watch_fds():
                p.register(fd, select.POLLIN | select.POLLERR)
            ready = dict(p.poll(0))
        if not ready:
            return
        released = list(self.exports.poll_releases(ready))
        if released:
            # A mapping holds its file, so a file's last reference goes after its
            # mappings: those of a process whose address space went (exit_mmap) or
            # changed close first (vm_ops->close), even before its pidfd says it died.
            for proc in list(self.procs.values()):
                self._close_vanished_regions(proc)
        for ex in released:
            ex.file.fput()
        self.windows.gc()
        for proc in list(self.procs.values()):
            if proc.pidfd in ready:
                self.proc_died(proc)

    def watch_fds(self) -> list[int]:
        return [*self.exports.watch_fds(), *(p.pidfd for p in self.procs.values())]

    def close(self) -> None:
        for proc in list(self.procs.values()):
            self.proc_died(proc)
        self.reap()
        for ex in list(self.exports.by_key.values()):
            self.exports._forget(ex)
            ex.file.fput()
        self.exports.close()
        self.windows.close_all()
        self.debugfs.close()

    # -- helpers ----------------------------------------------------------------------------
    def _path(self, task: ExecTask, dirfd: int, addr: int) -> str:
        raw = b""
        while len(raw) < 4096:
            try:
                chunk = vm_read(task.pid, addr + len(raw), 256 - (addr + len(raw)) % 256)
            except OSError:
                if not raw:
                    raise IommuError(errno.EFAULT, "bad path pointer") from None
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                raw += chunk[:nul]
                break
            raw += chunk
        path = os.fsdecode(raw)
        if not path.startswith("/"):
            base = (f"/proc/{task.pid}/cwd" if _s32(dirfd) == AT_FDCWD
                    else f"/proc/{task.pid}/fd/{_s32(dirfd)}")
            try:
                path = os.path.join(os.readlink(base), path)
            except OSError:
                return path
        path = os.path.normpath(path)
        if path == "/proc/self" or path.startswith("/proc/self/"):
            path = f"/proc/{task.tgid}" + path[len("/proc/self"):]
        elif path == "/proc/thread-self" or path.startswith("/proc/thread-self/"):
            path = f"/proc/{task.tgid}/task/{task.pid}" + path[len("/proc/thread-self"):]
        return path

    def _open(self, task: ExecTask, dirfd: int, addr: int, flags: int, mode: int) -> Any:
        path = self._path(task, dirfd, addr)
        cloexec = bool(flags & os.O_CLOEXEC)
        f = self.platform.open_chrdev(path, task)
        if f is not None:
            self.install_file(f, None, cloexec, send=True)
            return SENT
        pid = match_status(path)
        if pid is not None and (proc := self.procs.get(pid)) is not None:
            with open(path) as fh:
                text = status_with_accounting(fh.read(), proc.mm.pinned_vm, proc.mm.locked_vm)
            return self._install_host(_memfd_with(text), cloexec)
        tid = match_fail_nth(path)
        if tid is not None:
            target = self.task_of(tid)
            if target is not None and target.tgid == int(path.split("/")[2]):
                self.install_file(FailNthFile(target), None, cloexec, send=True)
                return SENT
        ours = self.debugfs.translate(path)
        if ours is not None:
            try:
                fd = os.open(ours, (flags & ~os.O_CLOEXEC) | os.O_CLOEXEC, mode)
            except OSError as e:
                return IommuError(e.errno or errno.ENOENT, str(e))
            return self._install_host(fd, cloexec)
        return CONTINUE

    def _install_host(self, fd: int, cloexec: bool) -> Any:
        try:
            self.listener.addfd(self.nid, fd, None, cloexec=cloexec, send=True)
        finally:
            os.close(fd)
        return SENT

    # -- open ------------------------------------------------------------------------------
    def sys_open(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        return self._open(task, AT_FDCWD, a[0], a[1], a[2])

    def sys_openat(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        return self._open(task, a[0], a[1], a[2], a[3])

    def sys_openat2(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        how = vm_read(task.pid, a[2], 16) if a[3] >= 16 else bytes(16)
        flags = int.from_bytes(how[:8], "little")
        mode = int.from_bytes(how[8:16], "little")
        return self._open(task, a[0], a[1], flags, mode)

    def sys_creat(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        return self._open(task, AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1])

    # -- ioctl -----------------------------------------------------------------------------
    def sys_ioctl(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        ex = self._lookup(task, a[0])
        if ex is None:
            return CONTINUE
        request = a[1] & 0xFFFF_FFFF
        if request in _VFS_IOCTLS:
            return CONTINUE
        f = ex.file
        tracer = self.platform.tracer
        by_value: frozenset[int] = getattr(f, "by_value_ioctls", frozenset())
        if tracer.enabled:
            with tracer.span("user", "ioctl",
                             f"pid {task.pid} fd {_s32(a[0])} request {request:#x}") as node:
                rc = self._ioctl(task, f, request, a[2], by_value)
                node.result = str(rc)
                return rc
        return self._ioctl(task, f, request, a[2], by_value)

    def _ioctl(self, task: ExecTask, f: File, request: int, arg: int,
               by_value: frozenset[int]) -> int:
        self.stats["ioctl"] = self.stats.get("ioctl", 0) + 1
        if request in by_value:
            return int(f.ioctl_by_value(request, arg))
        return int(f.ioctl(request, UserArg(task.mm, None, arg)))

    # -- read and write ---------------------------------------------------------------------
    def _read_into(self, task: ExecTask, ex: Exported, fd: int,
                   iov: list[tuple[int, int]], offset: int | None) -> int:
        total = min(sum(ln for _b, ln in iov), _MAX_RW)
        data = ex.file.read(total) if offset is None else ex.file.pread(total, offset)
        pos = 0
        for base, ln in iov:
            if pos >= len(data):
                break
            piece = data[pos : pos + ln]
            vm_write(task.pid, base, piece)
            pos += len(piece)
        if ex.kind == "pipe":
            self.exports.drain(ex, task.proc.pidfd, fd)
        return len(data)

    def _write_from(self, task: ExecTask, ex: Exported, iov: list[tuple[int, int]],
                    offset: int | None) -> int:
        data = b"".join(vm_read(task.pid, b, ln) for b, ln in iov if ln)[:_MAX_RW]
        return int(ex.file.write(data) if offset is None else ex.file.pwrite(data, offset))

    def _rw(self, task: ExecTask, n: SeccompNotif, write: bool, vector: bool,
            positioned: bool) -> Any:
        a = n.data.args
        ex = self._lookup(task, a[0])
        if ex is None:
            return CONTINUE
        iov = read_iovecs(task.pid, a[1], a[2]) if vector else [(a[1], a[2])]
        offset = None
        if positioned:
            offset = _s64(a[3]) if not vector else _s64(a[3] | (a[4] << 32))
            if offset < 0:
                return IommuError(errno.EINVAL, "negative offset")
        if write:
            return self._write_from(task, ex, iov, offset)
        return self._read_into(task, ex, _s32(a[0]), iov, offset)

    def sys_read(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, False, False, False)

    def sys_write(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, True, False, False)

    def sys_pread64(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, False, False, True)

    def sys_pwrite64(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, True, False, True)

    def sys_readv(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, False, True, False)

    def sys_writev(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, True, True, False)

    def sys_preadv(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, False, True, True)

    def sys_pwritev(self, task: ExecTask, n: SeccompNotif) -> Any:
        return self._rw(task, n, True, True, True)

    # -- memory -----------------------------------------------------------------------------
    def sys_mmap(self, task: ExecTask, n: SeccompNotif) -> Any:
        addr, length, prot, flags, fd, off = n.data.args
        proc = task.proc
        if flags & MAP_FIXED and not flags & MAP_FIXED_NOREPLACE:
            proc.mm.forget(addr, addr + length)
            self._close_regions(proc, addr, addr + length)
        ex = None if flags & MAP_ANONYMOUS else self._lookup(task, fd)
        if ex is None:
            return CONTINUE
        shared = flags & MAP_SHARED_VALIDATE in (MAP_SHARED, MAP_SHARED_VALIDATE)
        region = ex.file.mmap(length, off, shared, bool(prot & PROT_EXEC))
        if not isinstance(region, PfnRegion) or ex.kind != "tmpfs":
            if isinstance(region, PfnRegion) and region.close is not None:
                region.close()
            return IommuError(errno.ENODEV, "this mapping cannot be shown to a program")
        if region.mmio is not None:
            self.exports.back_registers(ex, off, length, region)
        else:
            self.exports.back_region(ex, off, length, region)
        proc.pending.append((ex.key, off, (length + 4095) & ~4095, region))
        return CONTINUE

    def _place_pending(self, proc: Proc) -> None:
        """Find where the kernel put the Machine regions mapped since the last look."""
        if not proc.pending:
            return
        placed = set(proc.region_vmas)
        for e in read_maps(proc.tgid):
            for i, (key, off, length, region) in enumerate(proc.pending):
                if (e.inode == key[1] and e.offset == off and e.end - e.start == length
                        and (e.start, e.end) not in placed):
                    proc.region_vmas[(e.start, e.end)] = region
                    placed.add((e.start, e.end))
                    del proc.pending[i]
                    break

    def _close_regions(self, proc: Proc, start: int = 0, end: int = 1 << 64,
                       everything: bool = False) -> None:
        """The mappings of Machine regions inside [start, end) go (``vm_ops->close``)."""
        if not everything:
            self._place_pending(proc)
        for (s, e), region in list(proc.region_vmas.items()):
            if everything or (start <= s and e <= end):
                del proc.region_vmas[(s, e)]
                if region.close is not None:
                    region.close()
        if everything:
            for *_x, region in proc.pending:
                if region.close is not None:
                    region.close()
            proc.pending.clear()

    def _close_vanished_regions(self, proc: Proc) -> None:
        """Close the Machine regions ``proc`` no longer maps (all of them once its address
        space is gone)."""
        if not proc.region_vmas and not proc.pending:
            return
        self._place_pending(proc)
        maps = read_maps(proc.tgid)
        live = {(e.start, e.end) for e in maps}
        for span, region in list(proc.region_vmas.items()):
            if span not in live:
                del proc.region_vmas[span]
                if region.close is not None:
                    region.close()
        if not maps:
            self._close_regions(proc, everything=True)

    def sys_munmap(self, task: ExecTask, n: SeccompNotif) -> Any:
        addr, length = n.data.args[0], n.data.args[1]
        task.proc.mm.forget(addr, addr + length)
        self._close_regions(task.proc, addr, addr + length)
        return CONTINUE

    def sys_mremap(self, task: ExecTask, n: SeccompNotif) -> Any:
        old, oldlen, newlen, flags = n.data.args[:4]
        if flags & (MREMAP_MAYMOVE | MREMAP_FIXED):
            task.proc.mm.forget(old, old + oldlen)
        elif newlen < oldlen:
            task.proc.mm.forget(old + newlen, old + oldlen)
        return CONTINUE

    def sys_madvise(self, task: ExecTask, n: SeccompNotif) -> Any:
        addr, length, advice = n.data.args[:3]
        if advice in MADV_DISCARDING:
            task.proc.mm.forget(addr, addr + length)
        return CONTINUE

    def sys_brk(self, task: ExecTask, n: SeccompNotif) -> Any:
        new = n.data.args[0]
        if new:
            for e in read_maps(task.tgid):
                if e.path == "[heap]" and new < e.end:
                    task.proc.mm.forget((new + 4095) & ~4095, e.end)
        return CONTINUE

    def sys_shmdt(self, task: ExecTask, n: SeccompNotif) -> Any:
        addr = n.data.args[0]
        for e in read_maps(task.tgid):
            if e.start == addr:
                task.proc.mm.forget(e.start, e.end)
        return CONTINUE

    # -- process lifetime ---------------------------------------------------------------------
    def sys_execve(self, task: ExecTask, n: SeccompNotif) -> Any:
        a = n.data.args
        try:
            path = self._path(task, a[0] if n.data.nr == NR["execveat"] else AT_FDCWD,
                              a[1] if n.data.nr == NR["execveat"] else a[0])
        except IommuError:
            return CONTINUE
        if not os.access(path, os.X_OK):
            return CONTINUE  # it will fail: the address space stays
        proc = task.proc
        proc.mm.exit_mmap()
        self._close_regions(proc, everything=True)
        proc.mm = self.new_mm(proc.tgid)
        for t in proc.threads.values():
            t.mm = proc.mm
        return CONTINUE

    def sys_exit_group(self, task: ExecTask, n: SeccompNotif) -> Any:
        task.proc.mm.forget(0, 1 << 47)  # copy pinned private pages while they are there
        return CONTINUE


def _memfd_with(text: str) -> int:
    fd = os.memfd_create("status", os.MFD_CLOEXEC)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd

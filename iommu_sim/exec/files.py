"""Machine files as real file descriptors of the program, and the program's fds as the
simulated kernel sees them.

A Machine file the program holds is *exported* as a real open file: a regular file in a
private tmpfs directory when it can be mmapped, else the read end of a pipe. The program's
references to that real open file (fds in any process, mappings) together hold one
reference to the Machine file, dropped when the real open file is released: a pipe's last
reader going raises POLLERR on the supervisor's write end; a tmpfs file's last reference
going is an inotify ``IN_CLOSE`` (confirmed by looking for holders, since any close of any
open of the file raises it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import select
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from iommu_core.errors import IommuError
from iommu_core.platform.files import POLLIN, File, FileTable, PfnRegion
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_sim.exec.seccomp import pidfd_getfd

if TYPE_CHECKING:
    from iommu_core.platform.memory import PhysicalMemory
    from iommu_sim.exec.remote_mm import HostWindows

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_IN_CLOSE = 0x8 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
_IN_NONBLOCK = os.O_NONBLOCK


class Exported:
    """One Machine file as a real open file of the program."""

    def __init__(self, file: File, key: tuple[int, int], kind: str) -> None:
        self.file = file
        self.key = key
        self.kind = kind  # "pipe" or "tmpfs"
        #: pipe: the supervisor's write end (POLLERR when the last reader goes)
        self.write_fd = -1
        self.token = False
        #: tmpfs: the file's name and the supervisor's own open of it (for mappings)
        self.name = ""
        self.own_fd = -1
        #: Regions mapped through this file: offset -> (host mapping, region).
        self.regions: dict[int, tuple[mmap.mmap, PfnRegion]] = {}
        #: Register blocks mapped through this file, by offset.
        self.shadows: dict[int, RegisterShadow] = {}
        self.released = False


class RegisterShadow:
    """Device registers (an ``Mmio``) mapped into the program: a shared page the program
    loads from and stores to, synced by the supervisor at each watched system call and
    every tick (~2 ms) while it is mapped.

    A sync replays the 32-bit words the program changed since the last sync as register
    writes, in address order except that the block's doorbells (``mmio.doorbells``: a
    DMA engine's command) go last, so a program that fills in a buffer and the transfer's
    registers and then rings the doorbell is replayed in that order. Then the words whose
    register value differs from the page are written back, and only those: a store the
    program makes meanwhile to any other word is kept for the next sync. So a store takes
    effect within a tick, a load sees the registers as of the last sync (reads have no side
    effects), and a word stored twice between two syncs is written once, with its last
    value."""

    def __init__(self, mmio: Any, base: int, host: mmap.mmap) -> None:
        self.mmio = mmio
        self.base = base
        self.host = host
        self.view = memoryview(host)
        n = len(self.view)
        self.doorbells = {o - base for o in getattr(mmio, "doorbells", ())
                          if base <= o < base + n}
        self.last = self._registers()
        self.view[:] = self.last

    def _registers(self) -> bytes:
        n = len(self.view)
        snap = getattr(self.mmio, "snapshot", None)
        if snap is not None:
            data = bytes(snap(self.base, n))
            if len(data) == n:
                return data
        return b"".join(self.mmio.read32(self.base + o).to_bytes(4, "little")
                        for o in range(0, n, 4))

    @staticmethod
    def _diff(a: bytes, b: bytes, start: int = 0, end: int = -1, chunk: int = 512
              ) -> list[int]:
        """Offsets of the 32-bit words that differ in [start, end), ascending: equal
        chunks are skipped whole, differing ones searched in smaller chunks."""
        end = len(a) if end < 0 else end
        if chunk <= 4:
            return [o for o in range(start, end, 4) if a[o : o + 4] != b[o : o + 4]]
        out = []
        for base in range(start, end, chunk):
            top = min(base + chunk, end)
            if a[base:top] != b[base:top]:
                out += RegisterShadow._diff(a, b, base, top, chunk // 8)
        return out

    def sync(self) -> None:
        cur = bytes(self.view)
        if cur != self.last:
            changed = self._diff(cur, self.last)
            write32 = self.mmio.write32
            for o in [o for o in changed if o not in self.doorbells] + [
                    o for o in changed if o in self.doorbells]:
                write32(self.base + o, int.from_bytes(cur[o : o + 4], "little"))
        regs = self._registers()
        if regs != cur:
            for a, b in _word_runs(self._diff(regs, cur)):
                self.view[a:b] = regs[a:b]
        self.last = regs


def _word_runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Ascending word offsets as [start, end) runs of consecutive words."""
    runs: list[tuple[int, int]] = []
    for o in offsets:
        if runs and runs[-1][1] == o:
            runs[-1] = (runs[-1][0], o + 4)
        else:
            runs.append((o, o + 4))
    return runs


class ExportTable:
    """Every exported Machine file, by the identity (st_dev, st_ino) of its real file."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem
        self.dir = tempfile.mkdtemp(prefix="iommu-sim-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.by_key: dict[tuple[int, int], Exported] = {}
        #: Register blocks mapped into the program (0: nothing to sync).
        self.nshadows = 0
        self._by_name: dict[str, Exported] = {}
        self._by_write_fd: dict[int, Exported] = {}
        self._seq = 0
        self.inotify = _libc.inotify_init1(_IN_NONBLOCK | os.O_CLOEXEC)
        if self.inotify < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.inotify, self.dir.encode(), _IN_CLOSE) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        #: Returns the pids that may hold a file (the watched processes).
        self.holders: Callable[[], Iterable[int]] = lambda: ()

    # -- export ---------------------------------------------------------------------------
    def export(self, file: File, mappable: bool) -> tuple[Exported, int]:
        """A new real open file for ``file``; returns it and an fd of the supervisor naming
        that open file, to install in the program and then close."""
        if mappable:
            self._seq += 1
            name = f"{self._seq}-{file.name.strip('/').replace('/', '-')}"
            path = os.path.join(self.dir, name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            st = os.fstat(fd)
            ex = Exported(file, (st.st_dev, st.st_ino), "tmpfs")
            ex.name = name
            ex.own_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self._by_name[name] = ex
        else:
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(w, False)
            st = os.fstat(r)
            ex = Exported(file, (st.st_dev, st.st_ino), "pipe")
            ex.write_fd = w
            self._by_write_fd[w] = ex
            fd = r
        self.by_key[ex.key] = ex
        return ex, fd

    def lookup(self, tid: int, fd: int) -> Exported | None:
        """The exported file the program's ``fd`` names, if it names one."""
        try:
            st = os.stat(f"/proc/{tid}/fd/{fd}")
        except OSError:
            return None
        return self.by_key.get((st.st_dev, st.st_ino))

    # -- mappings of a tmpfs-backed file ---------------------------------------------------
    def back_region(self, ex: Exported, offset: int, length: int, region: PfnRegion) -> None:
        """Make the file's pages [offset, offset+length) be the region's frames: their
        contents move into the file and the simulation uses the file's pages from now on."""
        length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if os.fstat(ex.own_fd).st_size < offset + length:
            os.ftruncate(ex.own_fd, offset + length)
        old = ex.regions.get(offset)
        if old is not None and len(old[0]) >= length and old[1].pa == region.pa:
            return
        host = mmap.mmap(ex.own_fd, length, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        mv = memoryview(host)
        for i in range(length >> PAGE_SHIFT):
            self.mem.rebind_frame((region.pa >> PAGE_SHIFT) + i,
                                  mv[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
        ex.regions[offset] = (host, region)

    def back_registers(self, ex: Exported, offset: int, length: int, region: PfnRegion
                       ) -> None:
        """Make the file's pages [offset, offset+length) show the region's registers."""
        length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if os.fstat(ex.own_fd).st_size < offset + length:
            os.ftruncate(ex.own_fd, offset + length)
        old = ex.shadows.get(offset)
        if old is not None:
            if len(old.view) >= length:
                return
            old.sync()  # a longer mapping of the same registers: one page set, grown
            old.view.release()
        host = mmap.mmap(ex.own_fd, length, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        ex.shadows[offset] = RegisterShadow(region.mmio, region.mmio_offset, host)
        ex.regions[offset] = (host, region)
        self.nshadows += 1

    def sync_registers(self) -> bool:
        """Replay the program's register stores; True if any register block is mapped."""
        if not self.nshadows:
            return False
        any_shadow = False
        for ex in list(self.by_key.values()):
            for sh in ex.shadows.values():
                any_shadow = True
                sh.sync()
        return any_shadow

    # -- readiness --------------------------------------------------------------------------
    def sync_tokens(self) -> None:
        """A pipe-backed file is readable exactly when its Machine file has data: keep one
        byte in the pipe then."""
        for ex in self._by_write_fd.values():
            if ex.token or ex.released:
                continue
            if ex.file.poll() & POLLIN:
                try:
                    os.write(ex.write_fd, b"\0")
                    ex.token = True
                except OSError:
                    pass

    def drain(self, ex: Exported, pidfd: int, fd: int) -> None:
        """After a read that emptied the file: take the byte out of the pipe again."""
        if not ex.token or ex.file.poll() & POLLIN:
            return
        try:
            dup = pidfd_getfd(pidfd, fd)
        except OSError:
            return
        try:
            r, _w, _x = select.select([dup], [], [], 0)
            if r:
                os.read(dup, 1)
            ex.token = False
        finally:
            os.close(dup)

    # -- release ----------------------------------------------------------------------------
    def watch_fds(self) -> list[int]:
        return [self.inotify, *self._by_write_fd]

    def poll_releases(self, ready: dict[int, int] | None = None) -> list[Exported]:
        """Exported files whose real open file is gone (each reported once). ``ready``:
        what a poll of :meth:`watch_fds` just said (else this polls them itself)."""
        if ready is None:
            p = select.poll()
            for fd in self.watch_fds():
                p.register(fd, select.POLLIN | select.POLLERR)
            ready = dict(p.poll(0))
        gone = [self._by_write_fd[w] for w, ev in ready.items()
                if w in self._by_write_fd and ev & (select.POLLERR | select.POLLHUP)]
        names: set[str] = set()
        while self.inotify in ready:
            try:
                data = os.read(self.inotify, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            off = 0
            while off < len(data):
                _wd, _mask, _cookie, ln = struct.unpack_from("iIII", data, off)
                names.add(data[off + 16 : off + 16 + ln].rstrip(b"\0").decode())
                off += 16 + ln
        candidates = [self._by_name[n] for n in names if n in self._by_name]
        if candidates:
            held = self._held_keys({ex.key for ex in candidates})
            gone += [ex for ex in candidates if ex.key not in held]
        for ex in gone:
            self._forget(ex)
        return gone

    def _held_keys(self, keys: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of ``keys`` some watched process still holds (an fd or a mapping)."""
        held: set[tuple[int, int]] = set()
        inodes = {k[1]: k for k in keys}
        for pid in self.holders():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in keys:
                    held.add((st.st_dev, st.st_ino))
            try:
                with open(f"/proc/{pid}/maps") as f:
                    for line in f:
                        parts = line.split(None, 5)
                        if len(parts) > 4 and int(parts[4]) in inodes:
                            held.add(inodes[int(parts[4])])
            except OSError:
                continue
        return held

    def _forget(self, ex: Exported) -> None:
        ex.released = True
        self.by_key.pop(ex.key, None)
        if ex.kind == "pipe":
            self._by_write_fd.pop(ex.write_fd, None)
            os.close(ex.write_fd)
        else:
            self._by_name.pop(ex.name, None)
            for sh in ex.shadows.values():
                sh.view.release()
            self.nshadows -= len(ex.shadows)
            ex.shadows.clear()
            for host, _region in ex.regions.values():
                if _region.mmio is not None:
                    continue
                pa = _region.pa
                n = len(host) >> PAGE_SHIFT
                for i in range(n):  # the frames are the simulation's own again
                    f = self.mem.frames.get((pa >> PAGE_SHIFT) + i)
                    if isinstance(f, memoryview) and f.obj is host:
                        self.mem.frames[(pa >> PAGE_SHIFT) + i] = bytearray(f)
                        f.release()
            ex.regions.clear()
            os.close(ex.own_fd)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, ex.name))

    def close(self) -> None:
        for ex in list(self.by_key.values()):
            self._forget(ex)
        os.close(self.inotify)
        shutil.rmtree(self.dir, ignore_errors=True)


class HostFile(File):
    """A real file of the program handed to the kernel (``fget`` of an fd that is not a
    Machine file): a memfd mapped with IOMMU_IOAS_MAP_FILE, say."""

    def __init__(self, fd: int, windows: HostWindows) -> None:
        self.fd = fd
        self.windows = windows
        try:
            self.name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            self.name = f"fd {fd}"

    def pin_folios(self, start: int, end: int) -> list[tuple[int, int]]:
        from iommu_sim.exec.remote_mm import HUGETLBFS_MAGIC, TMPFS_MAGIC
        from iommu_sim.exec.seccomp import fs_type

        if fs_type(self.fd) not in (TMPFS_MAGIC, HUGETLBFS_MAGIC):
            raise IommuError(errno.EINVAL, f"{self.name} is not a shmem or hugetlbfs file")
        if start < 0 or start > end:
            raise IommuError(errno.EINVAL, "bad file range")
        if end >= os.fstat(self.fd).st_size:
            raise IommuError(errno.EINVAL, f"byte {end:#x} is past the end of {self.name}")
        w = self.windows.window(lambda: os.dup(self.fd))
        first = start >> PAGE_SHIFT
        pfn, n = w.pfns(first, (end >> PAGE_SHIFT) - first + 1)
        self.windows.alloc.pin(pfn, n)
        return [(pfn, n)]

    def is_eventfd(self) -> bool:
        return self.name == "anon_inode:[eventfd]"

    def eventfd_signal(self, n: int = 1) -> None:
        """Add ``n`` to the program's eventfd (a device interrupt delivered to it)."""
        with contextlib.suppress(OSError):
            os.write(self.fd, n.to_bytes(8, "little"))

    def release(self) -> None:
        os.close(self.fd)


class RemoteFiles(FileTable):
    """A watched process's fd table as the kernel sees it (``current->files``): numbers
    are the real process's; installing a Machine file exports it."""

    def __init__(self, chrdevs: dict[str, Any], sup: Any, tgid: int) -> None:
        super().__init__(chrdevs, first_fd=0)
        self.sup = sup
        self.tgid = tgid

    def _used(self) -> set[int]:
        try:
            return {int(n) for n in os.listdir(f"/proc/{self.tgid}/fd")}
        except OSError:
            return set()

    def get_unused_fd(self) -> int:
        used = self._used() | self._reserved
        fd = 0
        while fd in used:
            fd += 1
        if fd >= self.nofile:
            raise IommuError(errno.EMFILE, "too many open files")
        self._reserved.add(fd)
        return fd

    def fd_install(self, fd: int, f: File) -> None:
        self._reserved.discard(fd)
        self.sup.install_file(f, fd)

    def install(self, f: File) -> int:
        fd = self.get_unused_fd()
        self.fd_install(fd, f)
        return fd

    def get(self, fd: int) -> File:
        f: File | None = (self.sup.fget(self.tgid, fd) if isinstance(fd, int) and fd >= 0
                          else None)
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        return f

    def __contains__(self, fd: object) -> bool:
        return isinstance(fd, int) and fd >= 0 and os.path.lexists(
            f"/proc/{self.tgid}/fd/{fd}")

    def close(self, fd: int) -> None:
        raise IommuError(errno.EOPNOTSUPP, "the program's fds are closed by the program")

    def open_fds(self) -> list[int]:
        return sorted(self._used())

    def close_all(self) -> None:
        """The real kernel closes the program's fds."""

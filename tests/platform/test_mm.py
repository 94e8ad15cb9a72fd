"""The simulated address space against a per-page model: private and shared anonymous
memory, memfd mappings (shared and copy-on-write), munmap, fork, exit and pins, through
the Machine's contract and the GUP interface iommufd uses."""

from __future__ import annotations

import errno

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommu_sim import Machine

PAGE = 4096
Cell = bytearray  # one page of content, shared by whoever shares the page


def machine() -> Machine:
    return Machine.from_config({"iommus": [], "devices": []})


class MmModel(RuleBasedStateMachine):
    """Tasks map, write, fork, pin and exit; every page reads what the model says and a
    pinned frame always holds its page's content, mapped or not."""

    def __init__(self) -> None:
        super().__init__()
        self.root = machine()
        #: task index -> (Machine handle, {va page: (cell, kind)}); kind: "priv",
        #: "shared", or ("cow", file cells, file page) for a private file mapping.
        self.tasks: list[tuple[Machine, dict[int, tuple[Cell, object]]]] = [(self.root, {})]
        self.files: list[tuple[int, list[Cell]]] = []  # (fd in root, page cells)
        self.pins: list[tuple[list[tuple[int, int]], list[Cell]]] = []

    def _task(self, i: int) -> tuple[Machine, dict[int, tuple[Cell, object]]]:
        return self.tasks[i % len(self.tasks)]

    # -- mappings -------------------------------------------------------------------------
    @rule(t=st.integers(0, 3), npages=st.integers(1, 4), shared=st.booleans())
    def mmap_anon(self, t: int, npages: int, shared: bool) -> None:
        m, pages = self._task(t)
        va = m.mmap(npages * PAGE, shared=shared)
        for k in range(npages):
            pages[va + k * PAGE] = (bytearray(PAGE), "shared" if shared else "priv")

    @rule(npages=st.integers(1, 3))
    def memfd(self, npages: int) -> None:
        fd = self.root.memfd_create("f")
        self.root.ftruncate(fd, npages * PAGE)
        self.files.append((fd, [bytearray(PAGE) for _ in range(npages)]))

    @precondition(lambda self: self.files)
    @rule(t=st.integers(0, 3), f=st.integers(0, 9), shared=st.booleans())
    def mmap_file(self, t: int, f: int, shared: bool) -> None:
        fd, cells = self.files[f % len(self.files)]
        m, pages = self._task(t)
        if m is not self.root:
            return  # the memfd fds live in the root's table (a child forked earlier
            # may not have them)
        va = m.mmap(len(cells) * PAGE, fd, 0, shared=shared)
        for k, c in enumerate(cells):
            pages[va + k * PAGE] = (c, "shared") if shared else (c, ("cow", cells, k))

    @precondition(lambda self: any(p for _m, p in self.tasks))
    @rule(t=st.integers(0, 3), pick=st.integers(0, 99))
    def munmap(self, t: int, pick: int) -> None:
        m, pages = self._task(t)
        if not pages:
            return
        va = sorted(pages)[pick % len(pages)]
        m.munmap(va, PAGE)
        del pages[va]

    # -- contents -------------------------------------------------------------------------
    @precondition(lambda self: any(p for _m, p in self.tasks))
    @rule(t=st.integers(0, 3), pick=st.integers(0, 99), off=st.integers(0, PAGE - 8),
          data=st.binary(min_size=1, max_size=8))
    def write(self, t: int, pick: int, off: int, data: bytes) -> None:
        m, pages = self._task(t)
        if not pages:
            return
        va = sorted(pages)[pick % len(pages)]
        cell, kind = pages[va]
        if isinstance(kind, tuple):  # first write to a private file page: own copy
            cell = bytearray(cell)
            pages[va] = (cell, "priv")
        m.mem_write(va + off, data)
        cell[off : off + len(data)] = data

    @precondition(lambda self: self.files)
    @rule(f=st.integers(0, 9), off=st.integers(0, PAGE - 8),
          data=st.binary(min_size=1, max_size=8))
    def pwrite(self, f: int, off: int, data: bytes) -> None:
        fd, cells = self.files[f % len(self.files)]
        self.root.pwrite(fd, data, off)
        cells[0][off : off + len(data)] = data

    # -- tasks ----------------------------------------------------------------------------
    @precondition(lambda self: len(self.tasks) < 4)
    @rule(t=st.integers(0, 3))
    def fork(self, t: int) -> None:
        m, pages = self._task(t)
        child = m.fork()
        copy: dict[int, tuple[Cell, object]] = {}
        for va, (cell, kind) in pages.items():
            copy[va] = (bytearray(cell), "priv") if kind == "priv" else (cell, kind)
        self.tasks.append((child, copy))

    @precondition(lambda self: len(self.tasks) > 1)
    @rule(t=st.integers(1, 3))
    def exit(self, t: int) -> None:
        i = 1 + (t - 1) % (len(self.tasks) - 1)
        m, _pages = self.tasks.pop(i)
        m.exit()
        with pytest.raises(OSError) as e:
            m.mem_read(0x1000, 1)
        assert e.value.errno == errno.ESRCH

    # -- pins -----------------------------------------------------------------------------
    @precondition(lambda self: any(p for _m, p in self.tasks))
    @rule(t=st.integers(0, 3), pick=st.integers(0, 99))
    def pin(self, t: int, pick: int) -> None:
        m, pages = self._task(t)
        if not pages:
            return
        va = sorted(pages)[pick % len(pages)]
        cell, kind = pages[va]
        if isinstance(kind, tuple):  # a long-term pin unshares a private file page
            cell = bytearray(cell)
            pages[va] = (cell, "priv")
        runs = m.mm.pin_user_pages(va, 1, True)
        self.pins.append((runs, [cell]))

    @precondition(lambda self: self.pins)
    @rule(pick=st.integers(0, 99))
    def unpin(self, pick: int) -> None:
        runs, _cells = self.pins.pop(pick % len(self.pins))
        self.root.mm.unpin_user_pages(runs)

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def pages_read_the_model(self) -> None:
        for m, pages in self.tasks:
            for va, (cell, kind) in pages.items():
                if isinstance(kind, tuple):
                    cell = kind[1][kind[2]]  # type: ignore[index]
                assert m.mem_read(va, PAGE) == bytes(cell), f"task {m.pid} page {va:#x}"

    @invariant()
    def pinned_frames_hold_their_page(self) -> None:
        mem = self.root.platform.mem
        for runs, cells in self.pins:
            (pfn, _n), = runs
            assert mem.read(pfn * PAGE, PAGE) == bytes(cells[0])

    def teardown(self) -> None:
        for runs, _c in self.pins:
            self.root.mm.unpin_user_pages(runs)
        self.root.shutdown()
        alloc = self.root.platform.alloc
        assert alloc.in_use("user") == 0, "user pages leaked"
        assert alloc.pin_total() == 0


TestMmModel = MmModel.TestCase
TestMmModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


# -- behaviours one at a time ------------------------------------------------------------------
def test_pinned_page_outlives_munmap_and_exit() -> None:
    m = machine()
    child = m.fork()
    va = child.mmap(PAGE)
    child.mem_write(va, b"pinned")
    runs = child.mm.pin_user_pages(va, 1, True)
    child.munmap(va, PAGE)
    child.exit()
    (pfn, _n), = runs
    assert m.platform.mem.read(pfn * PAGE, 6) == b"pinned"
    assert m.platform.alloc.in_use("user") == 1  # orphaned, held by the pin
    m.mm.unpin_user_pages(runs)
    assert m.platform.alloc.in_use("user") == 0


def test_a_gone_mm_cannot_be_pinned() -> None:
    m = machine()
    child = m.fork()
    va = child.mmap(PAGE)
    mm = child.mm
    child.exit()
    with pytest.raises(Exception) as e:
        mm.pin_user_pages(va, 1, False)
    assert getattr(e.value, "errno", None) == errno.EFAULT


def test_fork_shares_files_and_shared_memory_copies_private() -> None:
    m = machine()
    priv = m.mmap(PAGE)
    shared = m.mmap(PAGE, shared=True)
    m.mem_write(priv, b"p")
    m.mem_write(shared, b"s")
    fd = m.memfd_create("f")
    child = m.fork()
    assert child.pid != m.pid
    child.mem_write(priv, b"P")
    child.mem_write(shared, b"S")
    assert m.mem_read(priv, 1) == b"p" and child.mem_read(priv, 1) == b"P"
    assert m.mem_read(shared, 1) == b"S"
    # the fd table is a copy naming the same open file: one offset, one file
    child.write(fd, b"hello")
    assert m.pread(fd, 5, 0) == b"hello"
    m.close(fd)
    assert child.read(fd, 5) == b""  # the child's fd still names the file (offset 5)
    child.exit()
    m.shutdown()


def test_memfd_mapping_sees_the_file_and_truncate_zeroes_the_tail() -> None:
    m = machine()
    fd = m.memfd_create("buffer")
    m.ftruncate(fd, 2 * PAGE)
    va = m.mmap(2 * PAGE, fd, 0)
    m.pwrite(fd, b"abc", PAGE + 10)
    assert m.mem_read(va + PAGE + 10, 3) == b"abc"
    m.mem_write(va, b"xyz")
    assert m.pread(fd, 3, 0) == b"xyz"
    m.ftruncate(fd, PAGE + 11)
    assert m.pread(fd, 10, PAGE + 8) == b"\x00\x00a"
    assert m.mem_read(va + PAGE + 10, 3) == b"a\x00\x00"
    with pytest.raises(OSError) as e:
        m.ftruncate(fd, -1)
    assert e.value.errno == errno.EINVAL


def test_errors_at_the_boundary() -> None:
    m = machine()
    with pytest.raises(OSError) as e:
        m.pread(99, 1, 0)
    assert e.value.errno == errno.EBADF
    fd = m.memfd_create("x")
    with pytest.raises(OSError) as e:
        m.pread(fd, 1, -1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        m.memfd_create("x", 0x1000)
    assert e.value.errno == errno.EINVAL
    iommufd = m.open("/dev/iommu")
    with pytest.raises(OSError) as e:
        m.pread(iommufd, 1, 0)
    assert e.value.errno == errno.ESPIPE
    with pytest.raises(OSError) as e:
        m.ftruncate(iommufd, 0)
    assert e.value.errno == errno.EINVAL


def test_small_copies_see_munmap_and_splits() -> None:
    """A copy inside one page takes the short path (the VMA found last, the run found
    last): an unmapped page faults at once, a split VMA keeps its other part."""
    m = machine()
    va = m.mmap(3 * PAGE)
    for i in range(3):
        m.mem_write(va + i * PAGE + 8, bytes([i + 1]) * 4)
    assert m.mem_read(va + PAGE + 8, 4) == b"\2" * 4
    m.munmap(va + PAGE, PAGE)  # the middle goes: the VMA splits around it
    for op in (lambda: m.mem_read(va + PAGE + 8, 4), lambda: m.mem_write(va + PAGE, b"x")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EFAULT
    assert m.mem_read(va + 8, 4) == b"\1" * 4
    assert m.mem_read(va + 2 * PAGE + 8, 4) == b"\3" * 4
    m.mem_write(va + 2 * PAGE + 8, b"zz")
    assert m.mem_read(va + 2 * PAGE + 8, 4) == b"zz\3\3"
    m.munmap(va, 3 * PAGE)
    with pytest.raises(OSError) as e:
        m.mem_read(va + 8, 4)
    assert e.value.errno == errno.EFAULT
    va2 = m.mmap(PAGE)  # a new mapping reads zeros, never the old frames
    assert m.mem_read(va2, 8) == bytes(8)


def test_terabyte_of_thp_costs_runs_not_pages() -> None:
    m = machine()
    size = 1 << 40
    va = m.mmap(size)
    runs = m.mm.pin_user_pages(va, size // PAGE, True)
    assert len(runs) == 1  # one populated, physically contiguous run of THPs
    assert m.mm.is_compound(va + size - PAGE)
    m.mem_write(va + size - PAGE, b"end")
    assert m.platform.mem.read((runs[0][0] << 12) + size - PAGE, 3) == b"end"
    m.mm.unpin_user_pages(runs)
    m.munmap(va, size)
    assert m.platform.alloc.in_use("user") == 0

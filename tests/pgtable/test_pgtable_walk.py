"""The generic walker: results, faults, hardware A/D updates, nesting."""

from __future__ import annotations

import pytest
from pgtable_cases import FORMAT_CASES, RW, Env, expected_perms, pa_base, va_base

from iommu_core.pgtable import (
    Access,
    IoPageTable,
    PhysTableMemory,
    WalkFault,
    WalkResult,
    formats,
    walk,
)
from iommu_core.pgtable.formats import amd, arm, x86
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.prot import IOMMU_CACHE, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE

SZ_4K, SZ_2M = 1 << 12, 1 << 21


def ok(r: WalkResult | WalkFault) -> WalkResult:
    assert isinstance(r, WalkResult), r
    return r


def fault(r: WalkResult | WalkFault) -> WalkFault:
    assert isinstance(r, WalkFault), r
    return r


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_walk_every_format(case: str) -> None:
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    va = va_base(fmt) + 64 * g
    pa = pa_base(fmt, g)
    for prot in (RW, IOMMU_READ, IOMMU_WRITE, IOMMU_READ | IOMMU_NOEXEC):
        pt.map_pages(va, pa, g, 1, prot)
        readable, writable, executable = expected_perms(fmt, prot)
        res = pt.walk(va + 8, Access.READ, privileged=True)
        if readable:
            r = ok(res)
            assert (r.oa, r.page_size, r.level) == (pa + 8, g, 0)
            assert r.desc_addr and r.desc == env.mem.read_u64(r.desc_addr)
            assert (r.readable, r.writable, r.executable) == (readable, writable, executable)
        else:
            assert fault(res).reason == "permission"
        wres = pt.walk(va, Access.WRITE, privileged=True)
        assert isinstance(wres, WalkResult) == writable
        if not writable:
            assert fault(wres).reason == "permission" and fault(wres).level == 0
        pt.unmap_pages(va, g, 1)
    # Unmapped: translation fault at the level where the walk found nothing.
    f = fault(pt.walk(va))
    assert f.reason == "translation" and f.level == fmt.top_level and f.desc == 0
    pt.map_pages(va, pa, g, 1, RW)
    f = fault(pt.walk(va + g))
    assert f.reason == "translation" and f.level == 0
    # Outside the input range: no descriptor read at all.
    if fmt.ias < 64:
        f = fault(pt.walk(1 << fmt.ias))
        assert f.reason == "translation" and f.desc_addr is None
    pt.free()
    assert env.leaked() == 0


def _table_entry_addrs(pt: IoPageTable, iova: int) -> list[int]:
    """Descriptor addresses of the table entries on the walk to ``iova`` (top first)."""
    fmt, read = pt.fmt, pt.mem.read_u64
    table, out = pt.root, []
    for level in range(fmt.top_level, 0, -1):
        addr = table + fmt.index(iova, level) * 8
        pte = read(addr)
        if fmt.classify(pte, level) != formats.TABLE:
            break
        out.append(addr)
        table = fmt.table_pa(pte)
    return out


def test_x86_user_supervisor_and_rw_are_anded() -> None:
    env = Env()
    pt = env.table(formats.x86_64(4))
    pt.map_pages(0x40_0000, 0x9000_0000, SZ_4K, 1, RW)
    pml4e = _table_entry_addrs(pt, 0x40_0000)[0]
    env.mem.write_u64(pml4e, env.mem.read_u64(pml4e) & ~x86.X86_US)
    f = fault(pt.walk(0x40_0000))  # unprivileged request: U/S clear above
    assert f.reason == "permission"
    r = ok(pt.walk(0x40_0000, privileged=True))
    assert not r.user and r.writable and r.attrs & x86.X86_RW and not r.attrs & x86.X86_US
    env.mem.write_u64(pml4e, env.mem.read_u64(pml4e) & ~x86.X86_RW | x86.X86_US)
    assert fault(pt.walk(0x40_0000, Access.WRITE)).reason == "permission"
    assert not ok(pt.walk(0x40_0000)).writable
    env.mem.write_u64(pml4e, env.mem.read_u64(pml4e) | x86.X86_XD)
    assert fault(pt.walk(0x40_0000, Access.EXEC)).reason == "permission"
    pt.free()


def test_x86_accessed_dirty_update() -> None:
    env = Env()
    pt = env.table(formats.x86_64(4))
    pt.map_pages(0x20_0000, 0x40_0000, SZ_2M, 1, RW)
    tables = _table_entry_addrs(pt, 0x20_0000)
    leaf = next(pt.iter_leaves())
    for addr in [*tables, leaf.desc_addr]:  # as if Linux had not preset A/D
        env.mem.write_u64(addr, env.mem.read_u64(addr) & ~(x86.X86_A | x86.X86_D))
    r = ok(pt.walk(0x20_0010, Access.READ))
    assert not r.dirty and not r.desc & x86.X86_A  # no update asked: memory untouched
    r = ok(pt.walk(0x20_0010, Access.READ, set_accessed=True, set_dirty=True))
    assert r.desc & x86.X86_A and not r.desc & x86.X86_D  # a read sets A only
    assert all(env.mem.read_u64(a) & x86.X86_A for a in tables)
    r = ok(pt.walk(0x20_0010, Access.WRITE, set_accessed=True, set_dirty=True))
    assert r.dirty and env.mem.read_u64(leaf.desc_addr) & x86.X86_D
    pt.free()


def test_vtd_ss_ssade_and_permissions() -> None:
    env = Env()
    pt = env.table(formats.vtd_ss(4))
    pt.map_pages(0x1000, 0x2000, SZ_4K, 1, IOMMU_READ)
    r = ok(pt.walk(0x1000, set_accessed=True))
    assert r.desc & x86.SS_A and not r.dirty
    assert fault(pt.walk(0x1000, Access.WRITE, set_dirty=True)).reason == "permission"
    assert not env.mem.read_u64(r.desc_addr) & x86.SS_D  # a faulting write marks nothing
    pt.map_pages(0x3000, 0x4000, SZ_4K, 1, RW)
    r = ok(pt.walk(0x3000, Access.WRITE, set_accessed=True, set_dirty=True))
    assert r.dirty and r.desc & x86.SS_D
    pt.free()


def test_amd_v1_ir_iw_anded() -> None:
    env = Env()
    pt = env.table(formats.amd_v1(3))
    pt.map_pages(0x4000_0000, 0x8000_0000, 1 << 16, 1, RW)  # a 64K non-default page
    leaf = next(pt.iter_leaves())
    assert leaf.nrep == 16
    r = ok(pt.walk(0x4000_ABCD, Access.WRITE))
    assert r.oa == 0x8000_ABCD and r.page_size == 1 << 16
    assert r.desc_addr == leaf.desc_addr + 10 * 8  # the slot the address falls in
    top = _table_entry_addrs(pt, 0x4000_0000)[0]
    env.mem.write_u64(top, env.mem.read_u64(top) & ~amd.IW)
    assert fault(pt.walk(0x4000_0000, Access.WRITE)).reason == "permission"
    r = ok(pt.walk(0x4000_0000))
    assert r.readable and not r.writable and r.attrs == amd.IR
    r = ok(pt.walk(0x4000_0000, set_accessed=True))
    assert r.desc & amd.A
    pt.free()


def test_arm_access_flag() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s1())
    pt.map_pages(0x1000, 0x5000, SZ_4K, 1, RW)
    leaf = next(pt.iter_leaves())
    env.mem.write_u64(leaf.desc_addr, leaf.desc & ~arm.AF)  # as a guest might leave it
    f = fault(pt.walk(0x1000))
    assert (f.reason, f.level, f.desc_addr) == ("access_flag", 0, leaf.desc_addr)
    r = ok(pt.walk(0x1000, set_accessed=True))  # HTTU HA
    assert env.mem.read_u64(leaf.desc_addr) & arm.AF and r.desc & arm.AF
    pt.free()


def test_arm_s1_permissions_and_aptable() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s1())
    pt.map_pages(0x1000, 0x5000, SZ_4K, 1, IOMMU_READ)
    pt.map_pages(0x2000, 0x6000, SZ_4K, 1, RW | IOMMU_PRIV)
    pt.map_pages(0x3000, 0x7000, SZ_4K, 1, RW | IOMMU_NOEXEC)
    assert fault(pt.walk(0x1000, Access.WRITE)).reason == "permission"
    assert fault(pt.walk(0x2000)).reason == "permission"  # privileged-only page
    r = ok(pt.walk(0x2000, Access.WRITE, privileged=True))
    assert not r.user and r.writable
    assert fault(pt.walk(0x3000, Access.EXEC)).reason == "permission"
    assert ok(pt.walk(0x1000, Access.EXEC)).executable
    # APTable[1] in a table descriptor makes everything below read-only.
    l0 = _table_entry_addrs(pt, 0x3000)[0]
    env.mem.write_u64(l0, env.mem.read_u64(l0) | arm.AP_TABLE_RDONLY)
    assert fault(pt.walk(0x3000, Access.WRITE)).reason == "permission"
    assert ok(pt.walk(0x3000)).attrs == arm.AP_TABLE_RDONLY
    pt.free()


@pytest.mark.parametrize("stage", [1, 2])
def test_arm_httu_dirty(stage: int) -> None:
    fmt = formats.arm_lpae_s1(hd=True) if stage == 1 else formats.arm_lpae_s2(hd=True)
    env = Env()
    pt = env.table(fmt)
    pt.map_pages(SZ_2M, 0x4000_0000, SZ_2M, 1, RW | IOMMU_CACHE)
    assert ok(pt.walk(SZ_2M, Access.WRITE)).dirty  # mapped writable-dirty
    seen: list[tuple[int, int]] = []
    pt.read_and_clear_dirty(0, 1 << 30, 0, lambda i, s: seen.append((i, s)))
    assert seen == [(SZ_2M, SZ_2M)]
    # Writable-clean: a write without HD is a permission fault...
    r = ok(pt.walk(SZ_2M + 5))
    assert not r.writable and not r.dirty
    assert fault(pt.walk(SZ_2M, Access.WRITE)).reason == "permission"
    # ... and with HD the hardware makes it writable-dirty.
    r = ok(pt.walk(SZ_2M, Access.WRITE, set_dirty=True))
    assert r.writable and r.dirty
    seen.clear()
    pt.read_and_clear_dirty(0, 1 << 30, 0, lambda i, s: seen.append((i, s)))
    assert seen == [(SZ_2M, SZ_2M)]
    pt.free()


def test_address_size_faults() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s2(4096, 40, 40))
    pt.map_pages(0x1000, 0x2000, SZ_4K, 1, RW)
    leaf = next(pt.iter_leaves())
    env.mem.write_u64(leaf.desc_addr, leaf.desc | (1 << 44))  # OA bit above the 40-bit OAS
    f = fault(pt.walk(0x1000))
    assert (f.reason, f.level) == ("address_size", 0)
    tables = _table_entry_addrs(pt, 0x1000)
    env.mem.write_u64(tables[0], env.mem.read_u64(tables[0]) | (1 << 42))
    f = fault(pt.walk(0x1000))
    assert (f.reason, f.level, f.desc_addr) == ("address_size", 2, tables[0])
    env.mem.write_u64(tables[0], env.mem.read_u64(tables[0]) & ~(1 << 42))
    pt.free()


def test_sign_extended_upper_half() -> None:
    env = Env()
    fmt = formats.x86_64(4, sign_extend=True)
    pt = env.table(fmt)
    upper = (1 << 64) - (1 << 47)
    pt.map_pages(upper + SZ_2M, 0x1_0000_0000, SZ_2M, 1, RW)
    r = ok(pt.walk(upper + SZ_2M + 0x123))
    assert r.oa == 0x1_0000_0123
    assert [leaf.iova for leaf in pt.iter_leaves()] == [upper + SZ_2M]
    # The same low 48 bits without the sign extension is a different (empty) address.
    assert fault(pt.walk((upper + SZ_2M) & ((1 << 48) - 1))).reason == "translation"
    assert fault(pt.walk(1 << 47)).desc_addr is None  # non-canonical
    pt.free()
    assert env.leaked() == 0


# -- nesting: a guest stage-1 table in guest RAM, behind a stage-2 table ---------------------------
class S2Fault(Exception):
    pass


class GuestRam:
    """A VMM's TableMemory: guest-physical table pages backed by host pages that an S2
    table maps (as a VMM building guest tables in guest RAM would)."""

    def __init__(self, s2: IoPageTable, mem: PhysicalMemory, alloc: PageAllocator) -> None:
        self.s2, self.mem, self.alloc = s2, mem, alloc
        self.next_ipa = 0x8000_0000
        self.backing: dict[int, int] = {}

    def xlate(self, ipa: int) -> int:
        r = walk(self.s2.fmt, self.mem.read_u64, self.s2.root, ipa)
        if not isinstance(r, WalkResult):
            raise S2Fault(r)
        return r.oa

    def alloc_table(self, size: int) -> int:
        size = max(size, SZ_4K)
        ipa = self.next_ipa
        self.next_ipa += size
        hpa = self.alloc.alloc_pages((size // SZ_4K).bit_length() - 1, "user")
        self.s2.map(ipa, hpa, size, RW)
        self.backing[ipa] = hpa
        return ipa

    def free_table(self, addr: int, size: int) -> None:
        size = max(size, SZ_4K)
        assert self.s2.unmap(addr, size) == size
        self.alloc.free_pages(self.backing.pop(addr), (size // SZ_4K).bit_length() - 1)

    def read_u64(self, addr: int) -> int:
        return self.mem.read_u64(self.xlate(addr))

    def write_u64(self, addr: int, value: int) -> None:
        self.mem.write_u64(self.xlate(addr), value)


@pytest.mark.parametrize(
    ("s1", "s2"),
    [
        (formats.arm_lpae_s1(), formats.arm_lpae_s2(4096, 40, 40)),
        (formats.x86_64(4), formats.vtd_ss(4)),
        (formats.x86_64(5), formats.amd_v1(4)),
    ],
    ids=["arm", "vtd", "amd"],
)
def test_nested_table_xlate(s1: formats.PtFormat, s2: formats.PtFormat) -> None:
    env = Env()
    user_before = env.alloc.in_use("user")
    s2pt = IoPageTable(s2, PhysTableMemory(env.mem, env.alloc))
    guest = GuestRam(s2pt, env.mem, env.alloc)
    s1pt = IoPageTable(s1, guest)  # the guest's table: addresses are IPAs
    # Guest data page at IPA 0x1_0000_0000, host page behind it.
    host_data = env.alloc.alloc_pages(0, "user")
    s2pt.map(0x1_0000_0000, host_data, SZ_4K, RW)
    s1pt.map(0x7000_0000, 0x1_0000_0000, SZ_4K, RW)
    fetched: list[int] = []

    def xlate(ipa: int) -> int:
        fetched.append(ipa)
        return guest.xlate(ipa)

    r = ok(walk(s1, env.mem.read_u64, s1pt.root, 0x7000_0123, table_xlate=xlate))
    assert r.oa == 0x1_0000_0123  # stage-1 output: an IPA ...
    assert ok(walk(s2, env.mem.read_u64, s2pt.root, r.oa)).oa == host_data + 0x123  # ... then S2
    assert len(fetched) == s1.levels and all(ipa >= 0x8000_0000 for ipa in fetched)
    assert r.desc_addr == guest.xlate(fetched[-1])  # the host address actually read
    # A stage-2 fault on a table fetch is the translator's: the walker lets it through.
    s2pt.unmap(fetched[-1] & -SZ_4K, SZ_4K)
    with pytest.raises(S2Fault):
        walk(s1, env.mem.read_u64, s1pt.root, 0x7000_0123, table_xlate=guest.xlate)
    s2pt.map(fetched[-1] & -SZ_4K, guest.backing[fetched[-1] & -SZ_4K], SZ_4K, RW)
    s1pt.free()
    s2pt.unmap(0x1_0000_0000, SZ_4K)
    env.alloc.free_pages(host_data, 0)
    s2pt.free()
    assert env.leaked() == 0 and env.alloc.in_use("user") == user_before


def test_malformed_entries_fault() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s1())
    pt.map_pages(0x1000, 0x5000, SZ_4K, 1, RW)
    leaf = next(pt.iter_leaves())
    env.mem.write_u64(leaf.desc_addr, leaf.desc & ~2)  # level 3 type 0b01: reserved
    assert fault(pt.walk(0x1000)).reason == "translation"
    env.mem.write_u64(leaf.desc_addr, leaf.desc)
    pt.free()
    x = env.table(formats.x86_64(4))
    x.map_pages(0x1000, 0x5000, SZ_4K, 1, RW)
    pml4e = _table_entry_addrs(x, 0x1000)[0]
    env.mem.write_u64(pml4e, env.mem.read_u64(pml4e) | x86.X86_PS)  # PS in a PML4E
    f = fault(x.walk(0x1000))
    assert (f.reason, f.level) == ("translation", 3)
    env.mem.write_u64(pml4e, env.mem.read_u64(pml4e) & ~x86.X86_PS)
    x.free()
    assert env.leaked() == 0


def test_walk_needs_write_for_updates() -> None:
    env = Env()
    pt = env.table(formats.x86_64(4))
    with pytest.raises(ValueError):
        walk(pt.fmt, env.mem.read_u64, pt.root, 0, set_accessed=True)
    pt.free()


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_walk_resumes_at_a_reported_table(case: str) -> None:
    """``on_table`` reports each table the walk descends into; resuming with ``start``
    at any of them gives the same translation, reading only the levels below."""
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    va = va_base(fmt) + 64 * g
    pt.map_pages(va, pa_base(fmt, g), g, 1, RW)
    seen: list[tuple[int, int, int]] = []
    full = ok(walk(fmt, env.mem.read_u64, pt.root, va + 8, privileged=True,
                   on_table=lambda lv, nxt, acc: seen.append((lv, nxt, acc))))
    assert [lv for lv, _, _ in seen] == list(range(fmt.levels - 1, 0, -1))
    for lv, nxt, acc in seen:
        reads: list[int] = []

        def read(addr: int, reads: list[int] = reads) -> int:
            reads.append(addr)
            return env.mem.read_u64(addr)

        again = ok(walk(fmt, read, pt.root, va + 8, privileged=True, start=(lv - 1, nxt, acc)))
        assert (again.oa, again.page_size, again.desc_addr, again.attrs) == (
            full.oa, full.page_size, full.desc_addr, full.attrs)
        assert len(reads) == lv  # the levels below the resumed table only

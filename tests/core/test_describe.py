"""The teaching contract's machinery (iommu_core.describe): bit fields and layouts, the
generic decode, the side-effect-free recording walk (nesting included), page-size text,
and the facade's answers for a driver that describes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iommu_core.describe import (
    BitField,
    DescribeOps,
    Golden,
    Layout,
    Problem,
    Structure,
    Variant,
    Verdict,
    join_words,
    mask_field,
    record_walk,
    sizes_text,
)
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.plugin import PluginHost
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from tests.core.fake_driver import FakeDriver

LAYOUT = Layout(
    name="toy", title="toy entry", category="entry", words=2,
    fields=(BitField("V", 0, 0, "valid"), BitField("MODE", 2, 1, "mode", {1: "ONE"}),
            BitField("ADDR", 63, 12, "address", addr=True),
            BitField("TAG", 79, 64, "tag")))
CMD = Layout(
    name="toy-cmd", title="toy command", category="command", words=1, word_bits=32,
    fields=(BitField("OP", 3, 0, "opcode", {1: "A", 2: "B"}),), selector="OP",
    variants=(Variant("A", (1,), (BitField("X", 15, 8, "x"),)),
              Variant("B", (2,), (BitField("Y", 31, 16, "y"),))))


class Toy(Structure):
    layout = LAYOUT
    golden = (Golden("ok", (1,)), Golden("mode3", (7,), valid=False))

    def used(self, words: tuple[int, ...], unit: Any) -> frozenset[str]:
        return frozenset({"V", "MODE"}) if words[0] & 1 else frozenset({"V"})

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        out = []
        if values["MODE"] == 3:
            out.append(Problem("MODE 3 is reserved"))
        if values["V"] and not values["ADDR"]:
            out.append(Problem("no address", hw=False))
        return out

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict:
        if (words[0] >> 1) & 3 == 3 or words[1] >> 20:
            return Verdict(False, "the model refuses it")
        return Verdict(True)


def test_bitfields_from_masks_and_numbers() -> None:
    f = mask_field("S2TTB", 3, ((1 << 52) - 1) & ~0xF, addr=True)
    assert (f.hi, f.lo, f.bits, f.width) == (64 * 3 + 51, 64 * 3 + 4, "243:196", 48)
    v = join_words((0, 0, 0, 0x1234_5670), 64)
    assert f.raw(v) == 0x123_4567 and f.get(v) == 0x1234_5670  # an address stays in place
    assert BitField("X", 5, 5).bits == "5"
    with pytest.raises(ValueError):
        mask_field("none", 0, 0)


def test_decode_assembles_fields_problems_and_verdict() -> None:
    d = Toy().decode([0x1234_5003, 0x42], vendor="toy")
    assert (d.value("V"), d.value("MODE"), d.value("ADDR"), d.value("TAG")) == (
        1, 1, 0x1234_5000, 0x42)
    assert d.field("MODE").text == "ONE" and d.field("MODE").used
    assert not d.field("ADDR").used  # the subclass says which fields are read
    assert (d.field("TAG").hi, d.field("TAG").lo) == (79, 64)
    assert d.valid and not d.refused and d.vendor == "toy" and d.structure == "toy"
    advisory = Toy().decode([1])
    assert advisory.problems == ("no address",) and not advisory.refused
    bad = Toy().decode([7])
    assert bad.refused and bad.problems[0] == "MODE 3 is reserved"
    # A refusal only the model makes is reported too.
    model_only = Toy().decode([0x1001, 1 << 20])
    assert model_only.refused and model_only.problems == ("the model refuses it",)
    with pytest.raises(ValueError, match="at most 2 words"):
        Toy().decode([0, 0, 0])


def test_variants_follow_the_selector() -> None:
    s = Structure(CMD)
    a = s.decode([0x1 | 0x7F << 8])
    assert a.variant == "A" and a.summary == "A" and [f.name for f in a.fields] == ["OP", "X"]
    b = s.decode([0x2 | 0xBEEF << 16])
    assert b.variant == "B" and b.value("Y") == 0xBEEF
    assert s.decode([0xF]).variant == "" and [f.name for f in s.decode([0xF]).fields] == ["OP"]


@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=2))
def test_fields_reassemble_the_bits_they_cover(words: list[int]) -> None:
    d = Toy().decode(words)
    value = join_words(d.words, 64)
    back = 0
    for f in d.fields:
        assert f.lo is not None
        raw = f.value >> (f.lo % 64) if LAYOUT.field(f.name).addr else f.value
        back |= raw << f.lo
    known = sum(f.mask for f in LAYOUT.fields)
    assert back == value & known


def test_changed_fields() -> None:
    a = Toy().decode([1, 1])
    b = Toy().decode([3, 1])
    assert b.changed(a) == {"MODE"} and b.changed(None) == set()


def test_sizes_text() -> None:
    assert sizes_text(0x4020_1000) == "4K/2M/1G"
    assert sizes_text(formats.amd_v1(6).pgsize_bitmap) == "4K..256G/1T..2P"
    assert sizes_text(0x1000 | 0x2000) == "4K/8K"


class _Ram:
    """Physical memory for tables: a dict of qwords and a bump allocator."""

    def __init__(self, base: int) -> None:
        self.mem: dict[int, int] = {}
        self.next = base

    def alloc_table(self, size: int) -> int:
        addr = self.next
        self.next += max(size, 4096)
        return addr

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, addr: int) -> int:
        return self.mem.get(addr, 0)

    def write_u64(self, addr: int, value: int) -> None:
        self.mem[addr] = value


def test_record_walk_levels_indexes_and_leaf() -> None:
    ram = _Ram(0x10_0000)
    pt = IoPageTable(formats.x86_64(4), ram)
    pt.map(0x7F_1234_5000, 0x9000, 0x1000, IOMMU_READ | IOMMU_WRITE)
    before = dict(ram.mem)
    st_ = record_walk("s1", pt.fmt, pt.root, 0x7F_1234_5678, ram.read_u64)
    assert ram.mem == before, "a recorded walk sets no accessed or dirty bit"
    assert st_.output == 0x9678 and st_.page_size == 0x1000 and st_.readable
    assert [lv.level_num for lv in st_.levels] == [3, 2, 1, 0]
    assert st_.levels[0].table == pt.root and st_.levels[-1].kind == "page"
    for lv in st_.levels:
        assert lv.index == (0x7F_1234_5678 >> lv.input_lo) & ((1 << (lv.input_hi - lv.input_lo
                                                                       + 1)) - 1)
        assert lv.addr == lv.table + lv.index * 8 and lv.stage2 is None
    miss = record_walk("s1", pt.fmt, pt.root, 0x1000, ram.read_u64)
    assert miss.output is None and miss.fault.startswith("translation")


def test_record_walk_nested_keeps_each_stage2_walk() -> None:
    host = _Ram(0x100_0000)
    s2 = IoPageTable(formats.vtd_ss(4), host)
    guest = _Ram(0x2_0000)  # the guest's tables, at GPAs 0x20000...
    s1 = IoPageTable(formats.x86_64(4), guest)
    s1.map(0x4000, 0x8000, 0x1000, IOMMU_READ)
    for gpa in range(0x2_0000, guest.next, 0x1000):  # guest RAM = host + 0x40_0000
        s2.map(gpa, gpa + 0x40_0000, 0x1000, IOMMU_READ | IOMMU_WRITE)
    for gpa, v in guest.mem.items():
        host.mem[gpa + 0x40_0000] = v

    def s2_walk(gpa: int) -> Any:
        return record_walk("s2", s2.fmt, s2.root, gpa, host.read_u64)

    st_ = record_walk("s1", s1.fmt, s1.root, 0x4000, host.read_u64, s2_walk)
    assert st_.output == 0x8000
    for lv in st_.levels:
        assert lv.stage2 is not None and lv.stage2.output == lv.addr
        assert lv.stage2.input == lv.table + lv.index * 8  # the GPA of the descriptor
    # A table the guest placed outside what stage 2 maps faults the walk at stage 2.
    s1.map(0x40_0000_0000, 0x9000, 0x1000, IOMMU_READ)  # new tables, not mapped at S2
    for gpa, v in guest.mem.items():
        host.mem[gpa + 0x40_0000] = v
    bad = record_walk("s1", s1.fmt, s1.root, 0x40_0000_0000, host.read_u64, s2_walk)
    assert bad.output is None and "does not translate at stage 2" in bad.result
    assert bad.stage2_fault is not None and bad.stage2_fault.output is None


def test_a_driver_that_describes_nothing() -> None:
    ops = PluginHost().register_driver("fake", FakeDriver())
    d = DescribeOps(ops)
    assert d.vendor().name == "fake" and d.names() == ("fake",)
    assert d.structures() == [] and d.hw_info(1) is None and d.tour() is None
    assert d.guest_builders() == [] and d.constants() == {}
    assert d.domain(object()) is None  # type: ignore[arg-type]

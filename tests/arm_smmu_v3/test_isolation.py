"""Isolation, as a property: whatever vSTE, CD and stage-1 tables a guest writes (valid or
garbage), a nested DMA never reaches a physical page outside the IOAS mappings of its
nest parent, the SMMU writes nothing outside guest RAM but its own queues, and every
failure is a DMA fault or an errno, never another exception."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.arm_smmu_v3.regs import (
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_CFGI_CD_ALL,
    CMDQ_OP_TLBI_NH_ALL,
    CMDQ_OP_TLBI_NSNH_ALL,
    STRTAB_STE_0_NESTING_ALLOWED,
    STRTAB_STE_1_NESTING_ALLOWED,
)
from iommu_core.platform.dma import ACCESS_READ, ACCESS_WRITE, DmaFault
from iommufd import uapi as u

from .vmm import CD_GPA, DEV, GUEST, PAGE, VSID, Vmm, guest_vste

U64 = st.integers(0, (1 << 64) - 1)
GPA_IN = st.integers(0, GUEST // PAGE - 1).map(lambda p: p * PAGE)
GPA_ANY = st.one_of(GPA_IN, st.integers(0, (1 << 48) - 1).map(lambda a: a & ~0xFFF))


@st.composite
def vstes(draw: st.DrawFn) -> tuple[int, int]:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "structured", "garbage"]))
    if kind == "garbage":
        return draw(U64), draw(U64)
    if kind == "valid":
        q0, q1 = guest_vste()
        if draw(st.booleans()):  # one more (maybe legal) field change
            q0 ^= 1 << draw(st.integers(0, 63))
        return q0, q1
    cfg = draw(st.sampled_from([0, 4, 5, 5, 5, draw(st.integers(0, 7))]))
    q0 = (draw(st.sampled_from([1, 1, 1, 0])) | cfg << 1 | draw(st.integers(0, 3)) << 4
          | (draw(st.sampled_from([CD_GPA, CD_GPA, draw(GPA_ANY)])) & ~0x3F)
          | draw(st.sampled_from([0, 0, 1, draw(st.integers(0, 31))])) << 59)
    q1 = draw(st.integers(0, 0xFF)) | draw(st.integers(0, 1)) << 27 | draw(
        st.integers(0, 3)) << 28
    if draw(st.booleans()):
        q0 &= STRTAB_STE_0_NESTING_ALLOWED
        q1 &= STRTAB_STE_1_NESTING_ALLOWED
    return q0, q1


SLOT = st.integers(0, 15)


@st.composite
def guests(draw: st.DrawFn) -> dict[str, object]:
    maps = draw(st.lists(st.tuples(SLOT, st.one_of(GPA_IN, GPA_IN, GPA_ANY)), max_size=8))
    # Most DMAs go where the guest mapped something.
    slots = st.sampled_from([m[0] for m in maps]) if maps else SLOT
    dma_slot = st.one_of(slots, slots, slots, SLOT)
    return {
        "vste": draw(vstes()),
        "cd": draw(st.sampled_from(["valid", "valid", "valid", "garbage", "mutated"])),
        "cd_garbage": draw(st.lists(U64, min_size=8, max_size=8)),
        "cd_mutation": (draw(st.integers(0, 63)), draw(U64)),
        "maps": maps,
        "pokes": draw(st.one_of(st.just([]), st.lists(
            st.tuples(st.integers(0, 16 * 512 - 1), U64), max_size=4))),
        "dmas": draw(st.lists(st.tuples(dma_slot, st.booleans(),
                                        st.sampled_from([None] * 6 + [0, 1])),
                              min_size=1, max_size=10)),
        "inval": draw(st.lists(st.sampled_from(
            [CMDQ_OP_TLBI_NH_ALL, CMDQ_OP_TLBI_NSNH_ALL, CMDQ_OP_CFGI_CD, CMDQ_OP_CFGI_CD_ALL,
             0x03, 0x2A]), max_size=3)),
        "ats": draw(st.booleans()),
    }


GVA = 0x5555_0000_0000


def _snapshot(mem: object, skip: set[int]) -> dict[int, bytes]:
    frames = mem.frames  # type: ignore[attr-defined]
    return {pfn: hashlib.blake2b(bytes(f), digest_size=16).digest()
            for pfn, f in frames.items() if pfn not in skip}


def run_guest(g: dict[str, object]) -> None:
    vmm = Vmm()
    m = vmm.m
    try:
        parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        viommu = vmm.viommu_alloc(parent)
        vmm.vdevice_alloc(viommu, VSID)
        s1 = vmm.guest_s1()
        cd = vmm.guest_cd(s1, asid=1)
        if g["cd"] == "garbage":
            vmm.ram.write(CD_GPA, b"".join(x.to_bytes(8, "little")
                                           for x in g["cd_garbage"]))  # type: ignore[union-attr]
        elif g["cd"] == "mutated":
            bit, val = g["cd_mutation"]  # type: ignore[misc]
            q = list(cd.q)
            q[bit % 4] ^= val
            vmm.ram.write(CD_GPA, b"".join(x.to_bytes(8, "little") for x in q))
        for slot, gpa in g["maps"]:  # type: ignore[attr-defined]
            try:
                s1.map(GVA + slot * PAGE, gpa, PAGE, 3)
            except Exception as e:  # the guest's own table library refusing is fine
                assert type(e).__name__ == "IommuError"
        for idx, val in g["pokes"]:  # type: ignore[attr-defined]
            # Garbage descriptors anywhere in the guest's table area.
            vmm.ram.write(GUEST - 64 * PAGE + idx * 8, val.to_bytes(8, "little"))
        q0, q1 = g["vste"]  # type: ignore[misc]
        if g["ats"]:
            q1 |= 1 << 28
        try:
            nested = vmm.nested(viommu, (q0, q1))
            vmm.attach(nested)
        except OSError as e:
            assert e.errno in (5, 2, 22, 16, 95)  # EIO, ENOENT, EINVAL, EBUSY, EOPNOTSUPP
            return
        if g["inval"]:
            try:
                vmm.invalidate(viommu, [(op | (VSID << 32 if op in (5, 6) else 0), 0)
                                        for op in g["inval"]])  # type: ignore[attr-defined]
            except OSError as e:
                assert e.errno == 5
        hw = m.platform.iommus["smmu0"]
        dev = m.device(DEV)
        allowed = {m.mm.va_to_pa(vmm.ram_va + off) >> 12 for off in range(0, GUEST, PAGE)}
        smmu = m.core.iommus["smmu0"].priv
        queues = set()
        for q in (smmu.cmdq, smmu.evtq, smmu.priq):
            base = q.base_dma >> 12
            queues |= set(range(base, base + (1 << q.order)))
        before = _snapshot(m.platform.mem, allowed | queues)
        for slot, write, pasid in g["dmas"]:  # type: ignore[attr-defined]
            iova = GVA + slot * PAGE + 8
            try:
                pa = hw.dma_translate(dev, pasid, iova, ACCESS_WRITE if write else ACCESS_READ)
            except DmaFault:
                continue
            assert pa >> 12 in allowed, f"DMA escaped to {pa:#x}"
            if write:
                m.dma_write(DEV, iova, b"w", pasid)
            else:
                m.dma_read(DEV, iova, 1, pasid)
        after = _snapshot(m.platform.mem, allowed | queues)
        changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
        assert not changed, f"the SMMU wrote outside guest RAM: {sorted(changed)[:4]}"
    finally:
        vmm.close()
    assert m.kernel_pages_in_use == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guests())
def test_nested_dma_never_escapes_the_nest_parent(g: dict[str, object]) -> None:
    run_guest(g)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guests())
def test_nested_dma_never_escapes_the_nest_parent_long(g: dict[str, object]) -> None:
    run_guest(g)

"""Read-only views of what a driver programmed, for teaching: the STE/CD, context/PASID
entry or DTE/GCR3 entry the hardware will use for a device, and the table walk it would do.

Everything here reads what a debugger on real hardware could read: the IOMMU's base
registers (through its MMIO window: reads have no side effects) and physical memory. It
never calls a driver or a hardware model's internals, and it changes nothing (no accessed
or dirty bits are set by its walks). Caches are *not* consulted: a walk shows what the
tables say now, which is what makes a stale IOTLB entry visible next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from iommu_core.pgtable import Access, PtFormat, WalkFault, WalkResult, describe, formats, walk
from iommu_core.platform.bus import Device
from iommu_sim.decode import (
    DRIVER_VENDOR,
    Decoded,
    decode_cd,
    decode_context_entry,
    decode_dte,
    decode_gcr3,
    decode_pasid_entry,
    decode_ste,
)
from iommu_sim.machine import Machine

__all__ = ["ConfigEntry", "WalkLevel", "WalkStage", "device_config", "translation_walk"]


@attrs.frozen
class ConfigEntry:
    """One structure the hardware reads for a device: where it is and what it says."""

    label: str  # "STE[0x8]", "PASID entry 42", "DTE[0x2000]"...
    addr: int
    decoded: Decoded
    note: str = ""

    def to_dict(self, previous: Decoded | None = None) -> dict[str, Any]:
        d = {"label": self.label, "addr": self.addr, **self.decoded.to_dict(previous)}
        if self.note:
            d["note"] = self.note
        return d


@attrs.frozen
class WalkLevel:
    level: str
    addr: int
    desc: int
    text: str


@attrs.frozen
class WalkStage:
    label: str  # "stage 1 (guest table, arm_lpae_s1)"
    fmt: str
    root: int
    input: int
    levels: tuple[WalkLevel, ...]
    result: str
    output: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "format": self.fmt, "root": self.root,
                "input": self.input, "result": self.result, "output": self.output,
                "levels": [{"level": lv.level, "addr": lv.addr, "desc": lv.desc,
                            "text": lv.text} for lv in self.levels]}

    def render(self, indent: str = "") -> str:
        lines = [f"{indent}{self.label}: {self.input:#x} via root {self.root:#x}"]
        for lv in self.levels:
            lines.append(f"{indent}  {lv.level:<5} @ {lv.addr:#014x} = {lv.desc:#018x}  "
                         f"{lv.text}")
        lines.append(f"{indent}  => {self.result}")
        return "\n".join(lines)


class _Mem:
    def __init__(self, machine: Machine) -> None:
        self.mem = machine.platform.mem

    def u64(self, pa: int) -> int:
        return self.mem.read_u64(pa)

    def qwords(self, pa: int, n: int) -> tuple[int, ...]:
        return tuple(self.mem.read_u64(pa + 8 * i) for i in range(n))


def _vendor(machine: Machine, dev: Device) -> str:
    return DRIVER_VENDOR.get(machine.iommus.get(dev.iommu_name, ""), "")


def _regs(machine: Machine, dev: Device) -> Any:
    return machine.platform.iommus[dev.iommu_name].mmio["regs"]


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk(label: str, fmt: PtFormat, root: int, iova: int, read: Callable[[int], int],
          xlate: Callable[[int], int] | None = None) -> WalkStage:
    """Walk ``iova`` without side effects, recording each descriptor read."""
    seen: list[tuple[int, int]] = []

    def rec(pa: int) -> int:
        v = read(pa)
        seen.append((pa, v))
        return v

    try:
        r: WalkResult | WalkFault | None = walk(fmt, rec, root, iova, access=Access.READ,
                                                privileged=True, table_xlate=xlate)
    except LookupError as e:  # a table address that stage 2 does not map
        r = None
        why = str(e)
    levels = []
    for i, (pa, v) in enumerate(seen):
        lvl = fmt.levels - 1 - i
        d = describe(v, fmt, lvl)
        body = " ".join(str(f) for f in d.fields if f.value)
        levels.append(WalkLevel(d.level, pa, v, _short(f"{d.kind}: {body}" if body else d.kind)))
    if r is None:
        return WalkStage(label, fmt.name, root, iova, tuple(levels), f"fault: {why}", None)
    if isinstance(r, WalkFault):
        return WalkStage(label, fmt.name, root, iova, tuple(levels),
                         f"fault: {r.reason} at {fmt.arch_level(r.level)}", None)
    assert isinstance(r, WalkResult)
    perm = ("r" if r.readable else "-") + ("w" if r.writable else "-")
    return WalkStage(label, fmt.name, root, iova, tuple(levels),
                     f"{r.oa:#x} ({r.page_size:#x} page, {perm})", r.oa)


def _xlate_through(stage: Callable[[int], int | None]) -> Callable[[int], int]:
    def x(addr: int) -> int:
        out = stage(addr)
        if out is None:
            raise LookupError(f"{addr:#x} does not translate at stage 2")
        return out
    return x


# =========================================================================================
# ARM SMMUv3
# =========================================================================================
def _smmu_ste_addr(machine: Machine, dev: Device) -> tuple[int, int]:
    from drivers.arm_smmu_v3 import regs as r

    regs = _regs(machine, dev)
    base = regs.read64(r.ARM_SMMU_STRTAB_BASE) & r.STRTAB_BASE_ADDR_MASK
    cfg = regs.read32(r.ARM_SMMU_STRTAB_BASE_CFG)
    sid = dev.stream_ids[0] if dev.stream_ids else dev.rid
    if r.FIELD_GET(r.STRTAB_BASE_CFG_FMT, cfg) == r.STRTAB_BASE_CFG_FMT_2LVL:
        split = r.FIELD_GET(r.STRTAB_BASE_CFG_SPLIT, cfg)
        l1 = machine.platform.mem.read_u64(base + ((sid >> split) << 3))
        if not r.FIELD_GET(r.STRTAB_L1_DESC_SPAN, l1):
            return sid, 0
        return sid, (l1 & r.STRTAB_L1_DESC_L2PTR_MASK) + ((sid & ((1 << split) - 1)) << 6)
    return sid, base + (sid << 6)


def _smmu(machine: Machine, dev: Device, pasid: int | None, iova: int | None
          ) -> tuple[list[ConfigEntry], list[WalkStage]]:
    from drivers.arm_smmu_v3 import regs as r
    from drivers.arm_smmu_v3.hw.decode import SmmuEvent
    from drivers.arm_smmu_v3.hw.decode import decode_cd as hw_cd
    from drivers.arm_smmu_v3.hw.decode import decode_ste as hw_ste

    mem = _Mem(machine)
    hwcfg = machine.platform.iommus[dev.iommu_name].cfg  # type: ignore[attr-defined]
    sid, addr = _smmu_ste_addr(machine, dev)
    if not addr:
        return [], []
    q = mem.qwords(addr, 8)
    entries = [ConfigEntry(f"STE[{sid:#x}]", addr, decode_ste(q))]
    stages: list[WalkStage] = []
    try:
        ste = hw_ste(hwcfg, sid, q)  # type: ignore[arg-type]
    except SmmuEvent:
        return entries, stages
    s2 = ste.s2ctx

    def s2_out(ipa: int) -> int | None:
        assert s2 is not None
        res = walk(s2.fmt, mem.u64, s2.ttb, ipa, access=Access.READ, privileged=True)
        return None if isinstance(res, WalkFault) else res.oa

    # Without a PASID the SMMU reads CD 0 only when S1DSS says SSID0 (or there is one CD).
    if ste.s1 and (pasid is not None or not ste.s1cdmax
                   or ste.s1dss == r.STRTAB_STE_1_S1DSS_SSID0):
        ssid = pasid or 0
        ptr = ste.s1ctxptr
        if ste.s1cdmax and ste.s1fmt == r.STRTAB_STE_0_S1FMT_LINEAR:
            cd_ipa: int | None = ptr + (ssid << 6)
        elif ste.s1cdmax:
            split = 10 if ste.s1fmt == r.STRTAB_STE_0_S1FMT_64K_L2 else 6
            l1_at = ptr + ((ssid >> split) << 3)
            l1_pa = s2_out(l1_at) if s2 is not None else l1_at
            desc = mem.u64(l1_pa) if l1_pa is not None else 0
            cd_ipa = ((desc & r.CTXDESC_L1_DESC_L2PTR_MASK)
                      + ((ssid & ((1 << split) - 1)) << 6)) if desc & 1 else None
        else:
            cd_ipa = ptr
        if cd_ipa is not None:
            cd_pa = s2_out(cd_ipa) if s2 is not None else cd_ipa
            if cd_pa is not None:
                cq = mem.qwords(cd_pa, 8)
                note = (f"in guest memory: IPA {cd_ipa:#x} -> PA {cd_pa:#x}"
                        if s2 is not None else "")
                entries.append(ConfigEntry(f"CD[{ssid}]", cd_pa, decode_cd(cq), note))
                if iova is not None:
                    try:
                        cd = hw_cd(hwcfg, ste, ssid, cq)  # type: ignore[arg-type]
                    except SmmuEvent:
                        return entries, stages
                    if cd.fmt is not None:
                        st = _walk(f"stage 1 ({'guest ' if s2 else ''}table, ASID {cd.asid})",
                                   cd.fmt, cd.ttb0, iova, mem.u64,
                                   _xlate_through(s2_out) if s2 is not None else None)
                        stages.append(st)
                        iova = st.output
    if s2 is not None and iova is not None:
        stages.append(_walk(f"stage 2 (VMID {s2.vmid})", s2.fmt, s2.ttb, iova, mem.u64))
    return entries, stages


# =========================================================================================
# Intel VT-d (scalable mode)
# =========================================================================================
def _vtd(machine: Machine, dev: Device, pasid: int | None, iova: int | None
         ) -> tuple[list[ConfigEntry], list[WalkStage]]:
    from drivers.intel_vtd import iommu_h as h

    mem = _Mem(machine)
    rta = _regs(machine, dev).read64(h.DMAR_RTADDR_REG)
    root = rta & h.VTD_PAGE_MASK
    bus, devfn = dev.rid >> 8, dev.rid & 0xFF
    lo, hi = mem.qwords(root + bus * h.ROOT_ENTRY_SIZE, 2)
    entries: list[ConfigEntry] = []
    stages: list[WalkStage] = []
    if not rta & h.DMA_RTADDR_SMT:
        return entries, stages  # legacy mode: not what Linux uses with scalable hardware
    re = lo if devfn < 0x80 else hi
    if not re & 1:
        return entries, stages
    caddr = (re & h.VTD_PAGE_MASK) + (devfn & 0x7F) * h.SM_CONTEXT_ENTRY_SIZE
    ctx = decode_context_entry(mem.qwords(caddr, 4))
    entries.append(ConfigEntry(f"context entry {dev.rid:#06x}", caddr, ctx))
    if not ctx.value("P"):
        return entries, stages
    p = ctx.value("RID_PASID") if pasid is None else pasid
    pde = mem.u64(ctx.value("PASIDDIRPTR") + (p >> 6) * 8)
    if not pde & 1:
        return entries, stages
    paddr = (pde & h.VTD_PAGE_MASK) + (p & 0x3F) * 64
    pe = decode_pasid_entry(mem.qwords(paddr, 8))
    label = f"PASID entry {p}" + (" (RID_PASID)" if pasid is None else "")
    entries.append(ConfigEntry(label, paddr, pe))
    if iova is None or not pe.value("P"):
        return entries, stages
    pgtt, aw = pe.value("PGTT"), pe.value("AW")
    ss_fmt = formats.vtd_ss(aw + 2)
    ss_root = pe.value("SSPTPTR")

    def ss_out(gpa: int) -> int | None:
        res = walk(ss_fmt, mem.u64, ss_root, gpa, access=Access.READ, privileged=True)
        return None if isinstance(res, WalkFault) else res.oa

    out: int | None = iova
    if pgtt in (1, 3):
        fs_fmt = formats.x86_64(5 if pe.value("FSPM") else 4, oas=52)
        nested = pgtt == 3
        st = _walk(f"first stage ({'guest ' if nested else ''}table, DID {pe.value('DID')})",
                   fs_fmt, pe.value("FSPTPTR"), iova, mem.u64,
                   _xlate_through(ss_out) if nested else None)
        stages.append(st)
        out = st.output
    if pgtt in (2, 3) and out is not None:
        stages.append(_walk("second stage", ss_fmt, ss_root, out, mem.u64))
    return entries, stages


# =========================================================================================
# AMD-Vi
# =========================================================================================
def _amd(machine: Machine, dev: Device, pasid: int | None, iova: int | None
         ) -> tuple[list[ConfigEntry], list[WalkStage]]:
    from drivers.amd_vi import amd_iommu_types as t

    mem = _Mem(machine)
    dtb = _regs(machine, dev).read64(t.MMIO_DEV_TABLE_OFFSET)
    base = dtb & t.RING_BASE_ADDR_MASK
    nent = ((dtb & t.DEV_TABLE_SIZE_MASK) + 1) * 4096 // t.DEV_TABLE_ENTRY_SIZE
    devid = dev.rid
    entries: list[ConfigEntry] = []
    stages: list[WalkStage] = []
    if devid >= nent or not base:
        return entries, stages
    daddr = base + devid * t.DEV_TABLE_ENTRY_SIZE
    w = mem.qwords(daddr, 4)
    dte = decode_dte(w)
    entries.append(ConfigEntry(f"DTE[{devid:#06x}]", daddr, dte))
    v, tv, mode, gv = (dte.value("V"), dte.value("TV"), dte.value("Mode"), dte.value("GV"))
    if not (v and tv):
        return entries, stages
    host_fmt = formats.amd_v1(mode) if mode else None
    host_root = dte.value("HostPtr")

    def host_out(gpa: int) -> int | None:
        assert host_fmt is not None
        res = walk(host_fmt, mem.u64, host_root, gpa, access=Access.READ, privileged=True)
        return None if isinstance(res, WalkFault) else res.oa

    guest = pasid is not None or (gv and dte.value("GIoV"))
    out: int | None = iova
    if guest and gv:
        p = pasid or 0
        glx = dte.value("GLX")
        table: int | None = dte.value("GCR3 root")
        nested = mode != 0
        entry = 0
        eaddr = 0
        for level in range(glx, -1, -1):
            assert table is not None
            eaddr_in = table + ((p >> (9 * level)) & 0x1FF) * 8
            pa = host_out(eaddr_in) if nested else eaddr_in
            if pa is None:
                table = None
                break
            eaddr = pa
            entry = mem.u64(pa)
            table = entry & t.GCR3_ADDR_MASK if entry & t.GCR3_VALID else None
            if table is None:
                break
        note = "in guest memory (GCR3 root is a GPA)" if nested else ""
        if eaddr:
            entries.append(ConfigEntry(f"GCR3[{p}]", eaddr, decode_gcr3([entry]), note))
        if iova is None or table is None:
            return entries, stages
        fmt = formats.x86_64(5 if dte.value("GPT_LEVEL") else 4, sign_extend=True)
        st = _walk(f"guest (v2) table, PASID {p}", fmt, table, iova, mem.u64,
                   _xlate_through(host_out) if nested else None)
        stages.append(st)
        out = st.output
        if not nested:
            return entries, stages
    if iova is not None and host_fmt is not None and out is not None:
        stages.append(_walk(f"host (v1) table, Mode {mode}", host_fmt, host_root, out, mem.u64))
    return entries, stages


_VENDORS: dict[str, Callable[[Machine, Device, int | None, int | None],
                             tuple[list[ConfigEntry], list[WalkStage]]]] = {
    "smmu": _smmu, "vtd": _vtd, "amd": _amd,
}


def _run(machine: Machine, device: str | Device, pasid: int | None, iova: int | None
         ) -> tuple[list[ConfigEntry], list[WalkStage]]:
    dev = device if isinstance(device, Device) else machine.device(device)
    fn = _VENDORS.get(_vendor(machine, dev))
    if fn is None:
        return [], []
    try:
        return fn(machine, dev, pasid, iova)
    except LookupError:
        return [], []


def device_config(machine: Machine, device: str | Device, pasid: int | None = None
                  ) -> list[ConfigEntry]:
    """The structures the IOMMU reads for ``device`` (and ``pasid``), as in memory now."""
    return _run(machine, device, pasid, None)[0]


def translation_walk(machine: Machine, device: str | Device, iova: int,
                     pasid: int | None = None) -> list[WalkStage]:
    """The walk the IOMMU would do for ``iova`` now, stage by stage, level by level."""
    return _run(machine, device, pasid, iova)[1]

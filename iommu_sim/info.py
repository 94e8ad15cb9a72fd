"""``iommu-sim info``: each IOMMU's ``IOMMU_GET_HW_INFO``, decoded, side by side.

For every (non-mock) IOMMU of the Machine, a device behind it is bound to iommufd and
asked for its hardware information through the ioctl ABI, as a VMM does before it builds
a vIOMMU. The vendor payload (SMMUv3 IDR registers, VT-d CAP/ECAP, AMD EFR/EFR2) is
decoded with the drivers' own register definitions, and a few capabilities a VMM cares
about are derived from it so the vendors can be compared on one table.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Sequence
from typing import IO, Any

import attrs

from iommu_sim.machine import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

__all__ = ["HwInfo", "hw_info", "render_info"]


@attrs.define
class HwInfo:
    iommu: str
    driver: str
    device: str
    data_type: str
    data_len: int
    max_pasid_log2: int
    capabilities: list[str]
    #: register name -> [(field, value)]
    registers: dict[str, list[tuple[str, int]]]
    #: comparable capabilities: name -> text
    summary: dict[str, str]
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"iommu": self.iommu, "driver": self.driver, "device": self.device,
                "data_type": self.data_type, "data_len": self.data_len,
                "max_pasid_log2": self.max_pasid_log2, "capabilities": self.capabilities,
                "registers": {k: dict(fv) for k, fv in self.registers.items()},
                "summary": self.summary, "error": self.error}


def _bits(value: int, fields: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(name, FIELD_GET(mask, value)) for per-register masks."""
    out = []
    for name, mask in fields:
        lo = (mask & -mask).bit_length() - 1
        out.append((name, (value & mask) >> lo))
    return out


#: Suffixes of the enumerated values that sit beside the field masks in regs.py.
_ENUM_SUFFIXES = ("_AARCH64", "_AARCH32_64", "_2LVL", "_STALL", "_NONE", "_FORCE", "_MIXED",
                  "_LE", "_BE", "_ACCESS", "_ACCESS_DIRTY", "_52_BIT", "_ARM", "_MMU_600",
                  "_MMU_700")


def _masks(module: Any, prefix: str) -> list[tuple[str, int]]:
    """The field masks ``PREFIX_NAME`` of a register (the SMMU's ``IDR0_*``...)."""
    return [(n[len(prefix):], m) for n, m in vars(module).items()
            if n.startswith(prefix) and isinstance(m, int) and not isinstance(m, bool)
            and m > 0 and not n.endswith(_ENUM_SUFFIXES)]


def _smmu(data: bytes) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    from drivers.arm_smmu_v3 import regs as r

    info = u.iommu_hw_info_arm_smmuv3.from_buffer_copy(data.ljust(
        ctypes.sizeof(u.iommu_hw_info_arm_smmuv3), b"\0"))
    idr = list(info.idr)
    regs = {f"IDR{i}": _bits(idr[i], _masks(r, f"IDR{i}_")) for i in (0, 1, 3, 5)}
    regs["IIDR"] = _bits(info.iidr, _masks(r, "IIDR_"))
    regs["AIDR"] = [("ArchMinorRev", info.aidr & 0xF)]
    g = dict(regs["IDR0"])
    g1 = dict(regs["IDR1"])
    g5 = dict(regs["IDR5"])
    grans = [s for s, k in (("4K", "GRAN4K"), ("16K", "GRAN16K"), ("64K", "GRAN64K"))
             if g5.get(k)]
    summary = {
        "stage 1 / first stage": "yes" if g.get("S1P") else "no",
        "stage 2 / second stage": "yes" if g.get("S2P") else "no",
        "nesting": "yes (vIOMMU)" if g.get("S1P") and g.get("S2P") else "no",
        "PASID bits": str(g1.get("SSIDSIZE", 0)),
        "ATS": "yes" if g.get("ATS") else "no",
        "page requests": "PRI" if g.get("PRI") else "no",
        "dirty tracking": "HTTU" if g.get("HTTU", 0) >= 2 else "no",
        "output address bits": str(r.OAS_BITS[g5.get("OAS", 0)]) if g5.get("OAS", 0) < 7
        else "?",
        "granules": "/".join(grans),
    }
    return regs, summary


def _vtd(data: bytes) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    from drivers.intel_vtd import iommu_h as h

    info = u.iommu_hw_info_vtd.from_buffer_copy(data.ljust(ctypes.sizeof(u.iommu_hw_info_vtd),
                                                           b"\0"))

    def fields(prefix: str, value: int) -> list[tuple[str, int]]:
        out = []
        for n, f in vars(h).items():
            if n.startswith(prefix) and isinstance(f, tuple) and len(f) == 2:
                out.append((n[len(prefix):], h.field(value, f[0], f[1])))
        return out

    regs = {"CAP": fields("CAP_", info.cap_reg), "ECAP": fields("ECAP_", info.ecap_reg),
            "flags": [("ERRATA_772415_SPR17",
                       int(bool(info.flags & u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17)))]}
    cap, ecap = info.cap_reg, info.ecap_reg
    summary = {
        "stage 1 / first stage": "yes" if h.ecap_flts(ecap) else "no",
        "stage 2 / second stage": "yes" if h.ecap_slts(ecap) else "no",
        "nesting": "yes (nest parent)" if h.ecap_nest(ecap) else "no",
        "PASID bits": str(h.ecap_pss(ecap) + 1) if h.ecap_pasid(ecap) else "0",
        "ATS": "yes" if h.ecap_dev_iotlb_support(ecap) else "no",
        "page requests": "PRS" if h.ecap_prs(ecap) else "no",
        "dirty tracking": "SSADS" if h.ecap_slads(ecap) else "no",
        "output address bits": str(h.cap_mgaw(cap)),
        "granules": "4K" + ("/2M" if h.cap_super_page_val(cap) & 1 else "")
        + ("/1G" if h.cap_super_page_val(cap) & 2 else ""),
    }
    return regs, summary


def _amd(data: bytes) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    from drivers.amd_vi import amd_iommu_types as t

    info = u.iommu_hw_info_amd.from_buffer_copy(data.ljust(ctypes.sizeof(u.iommu_hw_info_amd),
                                                           b"\0"))
    efr1 = [(n[8:], m) for n, m in vars(t).items() if n.startswith("FEATURE_")
            and isinstance(m, int) and n not in _EFR2]
    efr2 = [(n[8:], vars(t)[n]) for n in _EFR2 if n in vars(t)]
    regs = {"EFR": _bits(info.efr, efr1), "EFR2": _bits(info.efr2, efr2)}
    e = dict(regs["EFR"])
    e2 = dict(regs["EFR2"])
    summary = {
        "stage 1 / first stage": "v2 (GT)" if e.get("GT") else "no",
        "stage 2 / second stage": f"v1 ({e.get('HATS', 0) + 4} levels)"
        if e.get("HATS", 3) != 3 else "no",
        "nesting": "yes (vIOMMU)" if e.get("GT") and e.get("GIOSUP") and e2.get("GCR3TRPMODE")
        else "no",
        "PASID bits": str(e.get("PASMAX", 0) + 1) if e.get("GT") else "0",
        "ATS": "yes",
        "page requests": "PPR" if e.get("PPR") else "no",
        "dirty tracking": "HD" if e.get("HDSUP") else "no",
        "output address bits": "52",
        "granules": "4K..512G (v1 any power of 2)",
    }
    return regs, summary


_EFR2 = ("FEATURE_SEVSNPIO_SUP", "FEATURE_GCR3TRPMODE", "FEATURE_SNPAVICSUP",
         "FEATURE_NUM_INT_REMAP_SUP", "FEATURE_HT_RANGE_IGNORE")
_DECODERS: dict[int, Callable[[bytes], tuple[dict[str, list[tuple[str, int]]],
                                              dict[str, str]]]] = {
    u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3: _smmu,
    u.IOMMU_HW_INFO_TYPE_INTEL_VTD: _vtd,
    u.IOMMU_HW_INFO_TYPE_AMD: _amd,
}
_CAPS = {u.IOMMU_HW_CAP_DIRTY_TRACKING: "DIRTY_TRACKING",
         u.IOMMU_HW_CAP_PCI_PASID_EXEC: "PCI_PASID_EXEC",
         u.IOMMU_HW_CAP_PCI_PASID_PRIV: "PCI_PASID_PRIV",
         u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: "PCI_ATS_NOT_SUPPORTED"}


def hw_info(machine: Machine) -> list[HwInfo]:
    """IOMMU_GET_HW_INFO of one device behind each IOMMU (mock excluded)."""
    out: list[HwInfo] = []
    fd = machine.open("/dev/iommu")
    buf = machine.mmap(4096)
    try:
        for name, driver in machine.iommus.items():
            devs = [d for d, unit in machine.devices.items() if unit == name]
            if driver == "mock" or not devs:
                continue
            dev = devs[0]
            vfd = machine.open(machine.vfio_cdev(dev))
            try:
                bind = v.vfio_device_bind_iommufd(argsz=ctypes.sizeof(v.vfio_device_bind_iommufd),
                                                  iommufd=fd)
                machine.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
                hi = u.iommu_hw_info(size=ctypes.sizeof(u.iommu_hw_info), dev_id=bind.out_devid,
                                     data_len=256, data_uptr=buf)
                machine.ioctl(fd, u.IOMMU_GET_HW_INFO, hi)
                data = machine.mem_read(buf, hi.data_len)
                dt = u.find_data_type(u.DataKind.HW_INFO, hi.out_data_type)
                dec = _DECODERS.get(hi.out_data_type)
                regs, summary = dec(data) if dec else ({}, {})
                caps = [n for bit, n in _CAPS.items() if hi.out_capabilities & bit]
                out.append(HwInfo(name, driver, dev, dt.name if dt else str(hi.out_data_type),
                                  hi.data_len, hi.out_max_pasid_log2, caps, regs, summary))
            except OSError as e:
                out.append(HwInfo(name, driver, dev, "", 0, 0, [], {}, {}, error=str(e)))
            finally:
                machine.close(vfd)
    finally:
        machine.close(fd)
        machine.munmap(buf, 4096)
    return out


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_info(infos: list[HwInfo], as_json: bool = False, registers: bool = True,
                out: IO[str] | None = None) -> None:
    import sys

    out = out or sys.stdout
    if as_json:
        out.write(json.dumps([i.to_dict() for i in infos], indent=1) + "\n")
        return
    head = ["", *[f"{i.iommu} ({i.driver})" for i in infos]]
    rows = [head,
            ["device asked", *[i.device for i in infos]],
            ["out_data_type", *[i.data_type or i.error for i in infos]],
            ["data_len", *[str(i.data_len) for i in infos]],
            ["out_max_pasid_log2", *[str(i.max_pasid_log2) for i in infos]],
            ["out_capabilities", *[" ".join(i.capabilities) or "-" for i in infos]]]
    keys: list[str] = []
    for i in infos:
        keys += [k for k in i.summary if k not in keys]
    rows += [[k, *[i.summary.get(k, "-") for i in infos]] for k in keys]
    out.write("IOMMU_GET_HW_INFO on one bound device per IOMMU\n\n")
    out.write(_table(rows) + "\n")
    if not registers:
        return
    for i in infos:
        out.write(f"\n{i.iommu} ({i.driver}): {i.data_type} payload\n")
        for reg, fields in i.registers.items():
            body = " ".join(f"{n}={x:#x}" if x > 9 else f"{n}={x}" for n, x in fields)
            out.write(f"  {reg:<5} {body}\n")

"""``iommu-sim info``: each IOMMU's ``IOMMU_GET_HW_INFO``, decoded, side by side.

For every IOMMU of the Machine with a device behind it, the device is bound to iommufd
and asked for its hardware information through the ioctl ABI, as a VMM does before it
builds a vIOMMU. The driver's description of the payload
(:meth:`iommu_core.describe.DescribeOps.hw_info`) decodes it register by register and
derives the capabilities a VMM cares about, so the vendors can be compared on one table.
"""

from __future__ import annotations

import ctypes
import json
from typing import IO, Any

import attrs

from iommu_sim.catalogue import describe_ops
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


_CAPS = {u.IOMMU_HW_CAP_DIRTY_TRACKING: "DIRTY_TRACKING",
         u.IOMMU_HW_CAP_PCI_PASID_EXEC: "PCI_PASID_EXEC",
         u.IOMMU_HW_CAP_PCI_PASID_PRIV: "PCI_PASID_PRIV",
         u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: "PCI_ATS_NOT_SUPPORTED"}


def hw_info(machine: Machine) -> list[HwInfo]:
    """IOMMU_GET_HW_INFO of one (PCI) device behind each IOMMU that has one."""
    out: list[HwInfo] = []
    fd = machine.open("/dev/iommu")
    buf = machine.mmap(4096)
    try:
        for name, driver in machine.iommus.items():
            devs = [d for d, unit in machine.devices.items() if unit == name]
            if not devs:
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
                desc = describe_ops(machine.plugins, driver).hw_info(hi.out_data_type)
                regs: dict[str, list[tuple[str, int]]] = {}
                summary: dict[str, str] = {}
                if desc is not None:
                    dec = desc.decode(data)
                    regs = {r.name: list(r.fields) for r in dec.registers}
                    summary = dict(dec.summary)
                type_name = dt.name if dt else desc.name if desc else str(hi.out_data_type)
                caps = [n for bit, n in _CAPS.items() if hi.out_capabilities & bit]
                out.append(HwInfo(name, driver, dev, type_name, hi.data_len,
                                  hi.out_max_pasid_log2, caps, regs, summary))
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

"""A driver's ``IOMMU_GET_HW_INFO`` payload, described field by field.

The payload of each ``iommu_hw_info_type`` is a set of registers (SMMUv3 IDR0-5, VT-d
CAP/ECAP, AMD EFR/EFR2...). :class:`HwInfoDesc` names them, each with its
:class:`~iommu_core.describe.structure.Layout` (so a register is decoded and drawn like
any other structure), and derives from them the capabilities a VMM compares across
vendors (:data:`SUMMARY_KEYS`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs

from iommu_core.describe.structure import Layout, fmt_value

__all__ = ["SUMMARY_KEYS", "HwInfoDecoded", "HwInfoDesc", "RegisterValue", "sizes_text",
           "unpack"]

_S = TypeVar("_S", bound=Any)


def unpack(struct: type[_S], data: bytes) -> _S:
    """The payload ``data`` as a ``struct`` (a ctypes uAPI struct), zero-extended when the
    kernel returned less (an older, shorter struct) and cut when it returned more."""
    n = ctypes.sizeof(struct)
    buf: _S = struct.from_buffer_copy(data[:n].ljust(n, b"\0"))
    return buf

#: The capabilities ``iommu-sim info`` compares side by side, in its row order. A driver
#: answers the ones that apply (and may add its own, shown after these).
SUMMARY_KEYS = (
    "stage 1 / first stage",
    "stage 2 / second stage",
    "nesting",
    "PASID bits",
    "ATS",
    "page requests",
    "dirty tracking",
    "output address bits",
    "granules",
)


@attrs.frozen
class RegisterValue:
    """One register of the payload and its fields' values (in the layout's order)."""

    name: str
    value: int
    layout: Layout
    fields: tuple[tuple[str, int], ...]


@attrs.frozen
class HwInfoDecoded:
    data_type: int
    name: str  # the uAPI constant ("IOMMU_HW_INFO_TYPE_ARM_SMMUV3")
    registers: tuple[RegisterValue, ...]
    #: (key, text) per capability, :data:`SUMMARY_KEYS` first.
    summary: tuple[tuple[str, str], ...]


class HwInfoDesc:
    """The description of one hw_info data type. Subclass: set :attr:`data_type`,
    :attr:`name` and :attr:`layouts`; implement :meth:`register_values` (the payload's
    registers) and :meth:`summarize`."""

    data_type: int
    name: str
    #: Every register of the payload, in payload order.
    layouts: tuple[Layout, ...] = ()

    def register_values(self, data: bytes) -> Sequence[tuple[Layout, int]]:
        """Each register of ``data`` (the payload as returned; zero-extended to the
        struct's size by the caller when shorter) with its value."""
        raise NotImplementedError

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> Mapping[str, str]:
        """The capabilities, from {register: {field: value}}."""
        return {}

    def decode(self, data: bytes) -> HwInfoDecoded:
        regs = []
        for lay, value in self.register_values(data):
            fields = tuple((f.name, f.get(value)) for f in lay.fields)
            regs.append(RegisterValue(lay.title, value, lay, fields))
        summary = self.summarize({r.name: dict(r.fields) for r in regs})
        keys = [k for k in SUMMARY_KEYS if k in summary]
        keys += [k for k in summary if k not in SUMMARY_KEYS]
        return HwInfoDecoded(self.data_type, self.name, tuple(regs),
                             tuple((k, summary[k]) for k in keys))


def _size(n: int) -> str:
    for unit, shift in (("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and not n & ((1 << shift) - 1):
            return f"{n >> shift}{unit}"
    return fmt_value(n)


def sizes_text(bitmap: int) -> str:
    """Page sizes of a bitmap as people write them: ``4K/2M/1G``; runs of three or more
    powers of two as ``4K..256G``."""
    sizes = [1 << b for b in range(bitmap.bit_length()) if bitmap >> b & 1]
    runs: list[list[int]] = []
    for s in sizes:
        if runs and runs[-1][-1] * 2 == s:
            runs[-1].append(s)
        else:
            runs.append([s])
    parts: list[str] = []
    for r in runs:
        if len(r) >= 3:
            parts.append(f"{_size(r[0])}..{_size(r[-1])}")
        else:
            parts.extend(_size(s) for s in r)
    return "/".join(parts)

"""The feature configuration of one AMD-Vi unit, and the EFR/EFR2 values it implies.

Defaults model a current full-featured part (v1 and v2 tables, GT, GIoV, GCR3TRPMode, PPR,
host access/dirty, 16-bit PASIDs, 6-level host tables). Machine options turn features
off; an unknown option or a bad value is EINVAL.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs

from drivers.amd_vi.amd_iommu_types import (
    FEATURE_EPHSUP,
    FEATURE_GA,
    FEATURE_GATS,
    FEATURE_GCR3TRPMODE,
    FEATURE_GIOSUP,
    FEATURE_GLX,
    FEATURE_GT,
    FEATURE_HASUP,
    FEATURE_HATS,
    FEATURE_HDSUP,
    FEATURE_IA,
    FEATURE_NUM_INT_REMAP_SUP,
    FEATURE_NX,
    FEATURE_PASMAX,
    FEATURE_PC,
    FEATURE_PPR,
    FEATURE_PREFETCH,
    FEATURE_X2APIC,
    field_prep,
)
from iommu_core.errors import IommuError


@attrs.frozen(kw_only=True)
class AmdViFeatures:
    """What the unit implements. Booleans are EFR/EFR2 feature bits; numbers are fields."""

    gt: bool = True  # guest translation (GCR3 tables, v2)
    giosup: bool = True  # guest I/O protection (GIoV)
    gcr3trpmode: bool = True  # EFR2: GCR3 table root pointer is a GPA (nesting)
    ppr: bool = True  # peripheral page requests
    hdsup: bool = True  # host dirty (DTE.HAD = 0b11)
    hasup: bool = True  # host access bit
    ephsup: bool = True  # enhanced PPR handling
    ia: bool = True  # INVALIDATE_IOMMU_ALL
    pasmax: int = 15  # max PASID = 2^(pasmax+1) - 1
    glx: int = 1  # largest DTE.GLX supported
    gats: int = 1  # 1: 5-level guest tables supported
    hats: int = 2  # max host levels = hats + 4; 3 = host translation disabled
    hw_viommu: bool = False  # the HW-vIOMMU (PROTOTYPE): guest command buffers
    viommu_guests: int = 16  # GuestIDs of the HW-vIOMMU, 0 (the hypervisor's) included

    def __attrs_post_init__(self) -> None:
        for name, lo, hi in (("pasmax", 0, 19), ("glx", 0, 2), ("gats", 0, 1), ("hats", 0, 3),
                             ("viommu_guests", 2, 4096)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise IommuError(errno.EINVAL, f"amd_vi option {name}={v!r} outside "
                                 f"{lo}..{hi}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AmdViFeatures:
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise IommuError(errno.EINVAL, f"unknown amd_vi options {sorted(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        for f in attrs.fields(cls):
            if f.name in options and f.type == "bool" and not isinstance(options[f.name], bool):
                raise IommuError(errno.EINVAL, f"amd_vi option {f.name} must be a bool")
        return cls(**options)

    @property
    def max_host_levels(self) -> int:
        return 0 if self.hats == 3 else self.hats + 4

    @property
    def max_pasid(self) -> int:
        return (1 << (self.pasmax + 1)) - 1

    def efr(self) -> int:
        """The Extended Feature Register value."""
        v = FEATURE_PREFETCH | FEATURE_X2APIC | FEATURE_NX | FEATURE_GA | FEATURE_PC
        for flag, bit in ((self.ppr, FEATURE_PPR), (self.gt, FEATURE_GT),
                          (self.ia, FEATURE_IA), (self.giosup, FEATURE_GIOSUP),
                          (self.hasup, FEATURE_HASUP), (self.ephsup, FEATURE_EPHSUP),
                          (self.hdsup, FEATURE_HDSUP)):
            if flag:
                v |= bit
        v |= field_prep(FEATURE_HATS, self.hats) | field_prep(FEATURE_GATS, self.gats)
        v |= field_prep(FEATURE_GLX, self.glx) | field_prep(FEATURE_PASMAX, self.pasmax)
        return v

    def efr2(self) -> int:
        """The Extended Feature 2 Register value."""
        v = field_prep(FEATURE_NUM_INT_REMAP_SUP, 1)
        if self.gcr3trpmode:
            v |= FEATURE_GCR3TRPMODE
        return v

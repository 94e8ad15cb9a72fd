"""Page-table formats and their registry.

Each factory returns an immutable (hashable, cached) :class:`PtFormat`; equal
parameters give equal formats::

    from iommu_core.pgtable import formats
    fmt = formats.arm_lpae_s1(granule=4096, ias=48, oas=48)
    fmt = formats.get("vtd_ss", levels=4)

Drivers outside iommu_core add their own formats with :func:`register` (the core never
imports them).
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from iommu_core.errors import fail
from iommu_core.pgtable.formats.amd import AmdV1Format, AmdV1TableInfo, make_amd_v1
from iommu_core.pgtable.formats.arm import ArmLpaeFormat, ArmTableInfo, ArmTcr, make_arm_lpae
from iommu_core.pgtable.formats.base import (
    EMPTY,
    INVALID,
    LEAF,
    TABLE,
    DescField,
    PtFormat,
    TableHwInfo,
)
from iommu_core.pgtable.formats.x86 import (
    VtdSsFormat,
    VtdSsTableInfo,
    X86_64Format,
    X86TableInfo,
    make_vtd_ss,
    make_x86_64,
)

__all__ = [
    "EMPTY",
    "INVALID",
    "LEAF",
    "TABLE",
    "AmdV1Format",
    "AmdV1TableInfo",
    "ArmLpaeFormat",
    "ArmTableInfo",
    "ArmTcr",
    "DescField",
    "PtFormat",
    "TableHwInfo",
    "VtdSsFormat",
    "VtdSsTableInfo",
    "X86TableInfo",
    "X86_64Format",
    "amd_v1",
    "arm_lpae_s1",
    "arm_lpae_s2",
    "get",
    "mock",
    "names",
    "register",
    "vtd_ss",
    "x86_64",
]


@functools.cache
def arm_lpae_s1(
    granule: int = 4096,
    ias: int = 48,
    oas: int = 48,
    *,
    hd: bool = False,
    coherent_walk: bool = True,
) -> ArmLpaeFormat:
    """ARM LPAE stage 1 (SMMUv3 CD tables). ``hd``: the ARM_HD quirk (DBM, HTTU dirty)."""
    return make_arm_lpae(
        1, granule=granule, ias=ias, oas=oas, hd=hd, s2fwb=False, coherent_walk=coherent_walk
    )


@functools.cache
def arm_lpae_s2(
    granule: int = 4096,
    ias: int = 48,
    oas: int = 48,
    *,
    s2fwb: bool = False,
    hd: bool = False,
    coherent_walk: bool = True,
) -> ArmLpaeFormat:
    """ARM LPAE stage 2 (SMMUv3 STE S2 tables), with concatenated start tables where the
    architecture requires them. ``hd`` models HTTU dirty on S2 (Linux uses it on S1 only)."""
    return make_arm_lpae(
        2, granule=granule, ias=ias, oas=oas, hd=hd, s2fwb=s2fwb, coherent_walk=coherent_walk
    )


@functools.cache
def x86_64(levels: int = 4, *, oas: int = 52, sign_extend: bool = False) -> X86_64Format:
    """x86-64 paging: VT-d first stage and AMD v2 (guest) tables."""
    return make_x86_64(levels=levels, oas=oas, sign_extend=sign_extend)


@functools.cache
def vtd_ss(levels: int = 4, *, oas: int = 48, snp: bool = False) -> VtdSsFormat:
    """VT-d second stage (``levels`` = AGAW + 2); ``snp`` sets SNP on every leaf."""
    return make_vtd_ss(levels=levels, oas=oas, snp=snp)


@functools.cache
def amd_v1(levels: int = 4, *, oas: int = 52) -> AmdV1Format:
    """AMD-Vi v1 host tables; ``levels`` is the DTE Mode (1..6)."""
    return make_amd_v1(
        name="amd_v1", levels=levels, oas=oas, gran_shift=12, max_top_level=5, force_coherent=True
    )


@functools.cache
def mock(levels: int = 3, *, oas: int = 51) -> AmdV1Format:
    """The iommufd selftest's format: AMD v1 encoding with a 2 KiB granule (level sizes
    2K, 1M, 512M...; tables still 512 x 8 B), up to 5 levels, with the AMD dirty bit."""
    return make_amd_v1(
        name="mock", levels=levels, oas=oas, gran_shift=11, max_top_level=4, force_coherent=False
    )


_REGISTRY: dict[str, Callable[..., PtFormat]] = {
    "arm_lpae_s1": arm_lpae_s1,
    "arm_lpae_s2": arm_lpae_s2,
    "x86_64": x86_64,
    "vtd_ss": vtd_ss,
    "amd_v1": amd_v1,
    "mock": mock,
}


def register(name: str, factory: Callable[..., PtFormat], *, replace: bool = False) -> None:
    """Add a format factory (the hook for formats living outside iommu_core)."""
    if name in _REGISTRY and not replace:
        fail(errno.EEXIST, f"page-table format {name!r} already registered")
    _REGISTRY[name] = factory


def get(name: str, **params: int) -> PtFormat:
    """The format ``name`` built with ``params`` (EINVAL for bad parameters)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        fail(errno.ENOENT, f"no page-table format {name!r}")
    try:
        return factory(**params)
    except TypeError as e:
        fail(errno.EINVAL, f"{name}: {e}")


def names() -> list[str]:
    return sorted(_REGISTRY)

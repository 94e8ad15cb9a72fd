"""The guest side of nesting: the CD a guest's SMMUv3 driver writes for its stage-1
table. Guest and host run the same driver code, so the CD comes from the driver's own
``arm_smmu_make_s1_cd`` with what it reads from a master, as a guest has it."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from drivers.arm_smmu_v3.cd import arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.domain import arm_lpae_s1_cfg
from iommu_core.describe import GuestBuilder
from iommu_core.pgtable import IoPageTable


@attrs.frozen
class _GuestSmmu:
    features: int = 0


@attrs.frozen
class _GuestCdTable:
    cdtab_dma: int = 0
    s1fmt: int = 0
    s1cdmax: int = 0


@attrs.frozen
class GuestMaster:
    """What ``arm_smmu_make_s1_cd`` reads from a master, as a guest driver has it."""

    smmu: _GuestSmmu = attrs.field(factory=_GuestSmmu)
    cd_table: _GuestCdTable = attrs.field(factory=_GuestCdTable)
    stall_enabled: bool = False


def guest_smmu_cd(pt: IoPageTable, params: Mapping[str, int]) -> bytes:
    """The 64-byte CD for stage-1 table ``pt`` (a guest table: its root is an IPA)."""
    return bytes(arm_smmu_make_s1_cd(GuestMaster(), arm_lpae_s1_cfg(pt, params.get("asid", 0))))


GUEST_BUILDERS = (
    GuestBuilder("cd", "its CD (arm_smmu_make_s1_cd)", guest_smmu_cd, ("asid",),
                 "the guest's context descriptor for its stage-1 table"),
)

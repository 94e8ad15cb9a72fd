"""``struct arm_smmu_impl_ops``: what an SMMUv3 implementation extension adds to the
driver (Linux 7.3 arm-smmu-v3.h). The only one today is NVIDIA's Tegra241 CMDQV
(:mod:`drivers.arm_smmu_v3.tegra241_cmdqv`).

Each method's default is that op being absent, so the driver calls them unconditionally
where the kernel tests ``smmu->impl_ops && smmu->impl_ops->op``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.cmdq import ArmSmmuCmdq, Cmd
    from iommu_core.domain import IommuDomain
    from iommu_core.iommufd_driver import IommufdViommu, UserData
    from iommu_core.plugin import IommuOps


class ArmSmmuImplOps:
    """The ops of one implementation instance (it knows its SMMU)."""

    #: Short name, for logs and describe output.
    name = "impl"

    # -- in-kernel use -------------------------------------------------------------------
    def init_structures(self) -> None:
        """End of ``arm_smmu_init_structures``: the implementation's own queues."""

    def device_reset(self) -> None:
        """End of ``arm_smmu_device_reset``, once the SMMU is enabled."""

    def device_disable(self) -> None:
        """Before the SMMU is disabled (shutdown, remove)."""

    def device_remove(self) -> None:
        """Last of the driver's removal: free what ``init_structures`` allocated."""

    def get_secondary_cmdq(self, cmd: Cmd) -> ArmSmmuCmdq | None:
        """A queue of the implementation for ``cmd``; None: the SMMU's own."""
        return None

    # -- user-space use ------------------------------------------------------------------
    def hw_info(self, data_type: int) -> tuple[bytes, int]:
        """``IOMMU_GET_HW_INFO`` of a type other than the SMMU's."""
        raise IommuError(errno.EOPNOTSUPP, f"hw_info type {data_type} not supported")

    def get_viommu_size(self, viommu_type: int) -> int:
        """Non-zero for a vIOMMU type the implementation builds."""
        return 0

    def vsmmu_init(self, ops: IommuOps, viommu: IommufdViommu, parent: IommuDomain,
                   user_data: UserData | None) -> None:
        """Build the vIOMMU of such a type: set ``viommu.priv`` (an ``ArmVsmmu``) and
        ``viommu.ops``."""
        raise IommuError(errno.EOPNOTSUPP, f"vIOMMU type {viommu.type} not supported")


__all__ = ["ArmSmmuImplOps"]

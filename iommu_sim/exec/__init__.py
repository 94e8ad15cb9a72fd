"""``iommu-sim exec``: real programs against a Machine (see docs/exec.rst)."""

from iommu_sim.exec.run import HostUnsupported, check_host, exec_program

__all__ = ["HostUnsupported", "check_host", "exec_program"]

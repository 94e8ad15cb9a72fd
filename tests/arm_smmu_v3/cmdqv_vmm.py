"""A VMM with a Tegra241 CMDQV vIOMMU, ioctl ABI only, and its guest's VCMDQ: what QEMU's
smmuv3-accel does with a CMDQV (a VINTF page mapped into the guest, VCMDQs in guest RAM)
and what the guest's tegra241-cmdqv driver then does by itself."""

from __future__ import annotations

from typing import Any

from drivers.arm_smmu_v3.regs import CMDQ_OP_CMD_SYNC, CMDQ_OP_TLBI_NH_VA
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STATUS,
    TEGRA241_VCMDQ_STRIDE,
    VCMDQ_CONS_ERR,
    VCMDQ_EN,
)
from iommufd import uapi as u

from .vmm import PAGE, Vmm, sz

ASID = 3


def qwords(cmds: list[tuple[int, int]]) -> bytes:
    return b"".join(q0.to_bytes(8, "little") + q1.to_bytes(8, "little") for q0, q1 in cmds)


def tlbi_va(va: int, asid: int = ASID) -> tuple[int, int]:
    return CMDQ_OP_TLBI_NH_VA | (asid << 48), va | 1  # leaf


SYNC = (CMDQ_OP_CMD_SYNC, 0)


class CmdqvVmm(Vmm):
    """:class:`Vmm` on SMMUs with a CMDQV (options go to every SMMU)."""

    def __init__(self, *args: Any, cmdqv: object = True, **options: Any) -> None:
        super().__init__(*args, tegra241_cmdqv=cmdqv, **options)

    def viommu_cmdqv(self, parent: int, dev_id: int | None = None, data_len: int = 16
                     ) -> tuple[int, int, int]:
        """IOMMU_VIOMMU_ALLOC(TEGRA241_CMDQV): (viommu id, mmap offset, mmap length)."""
        self.m.mem_write(self.scratch, bytes(u.iommu_viommu_tegra241_cmdqv()))
        a = u.iommu_viommu_alloc(size=sz(u.iommu_viommu_alloc),
                                 type=u.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
                                 dev_id=self.dev_id if dev_id is None else dev_id,
                                 hwpt_id=parent, data_len=data_len,
                                 data_uptr=self.scratch if data_len else 0)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, a)
        out = u.iommu_viommu_tegra241_cmdqv.from_buffer_copy(self.m.mem_read(self.scratch, 16))
        return int(a.out_viommu_id), int(out.out_vintf_mmap_offset), int(
            out.out_vintf_mmap_length)

    def hw_queue(self, viommu: int, index: int, gpa: int, length: int = PAGE,
                 type: int = u.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV) -> int:
        a = u.iommu_hw_queue_alloc(size=sz(u.iommu_hw_queue_alloc), viommu_id=viommu,
                                   type=type, index=index, nesting_parent_iova=gpa,
                                   length=length)
        self.m.ioctl(self.fd, u.IOMMU_HW_QUEUE_ALLOC, a)
        return int(a.out_hw_queue_id)

    def destroy(self, obj: int) -> None:
        self.m.ioctl(self.fd, u.IOMMU_DESTROY, u.iommu_destroy(size=sz(u.iommu_destroy),
                                                               id=obj))

    def veventq_cmdqv(self, viommu: int, depth: int = 8) -> int:
        a = u.iommu_veventq_alloc(size=sz(u.iommu_veventq_alloc), viommu_id=viommu,
                                  type=u.IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
                                  veventq_depth=depth)
        self.m.ioctl(self.fd, u.IOMMU_VEVENTQ_ALLOC, a)
        return int(a.out_veventq_fd)

    def read_cmdqv_vevent(self, efd: int) -> tuple[int, int]:
        """One TEGRA241_CMDQV vEVENT: (sequence, the 128-bit LVCMDQ error map)."""
        raw = self.m.read(efd, 8 + sz(u.iommu_vevent_tegra241_cmdqv))
        hdr = u.iommufd_vevent_header.from_buffer_copy(raw[:8])
        ev = u.iommu_vevent_tegra241_cmdqv.from_buffer_copy(raw[8:])
        return int(hdr.sequence), int(ev.lvcmdq_err_map[0]) | int(ev.lvcmdq_err_map[1]) << 64


class GuestVcmdq:
    """The guest's logical VCMDQ ``lidx``: ``length`` bytes of guest RAM at ``gpa``, its
    registers in the VINTF page the VMM mapped at ``vintf`` (a user address)."""

    def __init__(self, vmm: Vmm, vintf: int, lidx: int, gpa: int, length: int = PAGE) -> None:
        self.vmm = vmm
        self.vintf = vintf
        self.lidx = lidx
        self.gpa = gpa
        self.n = length // 16
        self.prod = 0

    def reg(self, off: int) -> int:
        return int.from_bytes(self.vmm.m.mem_read(
            self.vintf + TEGRA241_VCMDQ_STRIDE * self.lidx + off, 4), "little")

    def set_reg(self, off: int, value: int) -> None:
        self.vmm.m.mem_write(self.vintf + TEGRA241_VCMDQ_STRIDE * self.lidx + off,
                             value.to_bytes(4, "little"))

    def enable(self) -> None:
        self.set_reg(TEGRA241_VCMDQ_CONFIG, VCMDQ_EN)
        assert self.reg(TEGRA241_VCMDQ_STATUS) & 1

    def submit(self, cmds: list[tuple[int, int]]) -> None:
        """Write the commands at PROD in guest RAM, then store the new PROD."""
        for cmd in cmds:
            self.vmm.ram.write(self.gpa + (self.prod & (self.n - 1)) * 16, qwords([cmd]))
            self.prod = (self.prod + 1) & (2 * self.n - 1)
        self.set_reg(TEGRA241_VCMDQ_PROD, self.prod)

    @property
    def cons(self) -> int:
        return self.reg(TEGRA241_VCMDQ_CONS)

    def error(self) -> int:
        """CONS.ERR while GERROR != GERRORN, else 0."""
        if not (self.reg(TEGRA241_VCMDQ_GERROR) ^ self.reg(TEGRA241_VCMDQ_GERRORN)) & 1:
            return 0
        return (self.cons & VCMDQ_CONS_ERR) >> 24

    def recover(self) -> None:
        """The guest's __arm_smmu_cmdq_skip_err: a CMD_SYNC over the bad command, ack."""
        slot = (self.cons & ~VCMDQ_CONS_ERR) & (self.n - 1)
        self.vmm.ram.write(self.gpa + slot * 16, qwords([SYNC]))
        self.set_reg(TEGRA241_VCMDQ_GERRORN, self.reg(TEGRA241_VCMDQ_GERROR))

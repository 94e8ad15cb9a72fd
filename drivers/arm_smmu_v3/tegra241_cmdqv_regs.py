"""NVIDIA Tegra241 CMDQV (Command Queue Virtualization) register space: offsets and fields
(the defines at the top of Linux 7.3 tegra241-cmdqv.c).

NVIDIA publishes no specification of this extension; the Linux driver is the public
description of the registers, and these numbers follow it. Pure data, imported by both
the driver (:mod:`drivers.arm_smmu_v3.tegra241_cmdqv`) and the hardware model
(:mod:`drivers.arm_smmu_v3.hw.cmdqv`).

The window is four kinds of 64 KiB pages: the global configuration page (CMDQV config,
VCMDQ allocation, the VINTFs), VCMDQ page 0 (CONS/PROD/CONFIG/STATUS/GERROR of every
global VCMDQ) and page 1 (their BASE), then two pages per VINTF showing page 0 and page 1
of the VCMDQs mapped to that VINTF, by logical index. The VMM maps a VINTF's page 0 into
its guest: that is all a guest ever reaches.
"""

from __future__ import annotations

from typing import Final

from drivers.arm_smmu_v3.regs import BIT, GENMASK

SZ_64K: Final = 0x1_0000
SZ_128K: Final = 0x2_0000

# -- the register pages -----------------------------------------------------------------
TEGRA241_CMDQV_CONFIG_BASE: Final = 0
TEGRA241_CMDQV_CONFIG_SIZE: Final = SZ_64K
TEGRA241_VCMDQ_PAGE0_BASE: Final = TEGRA241_CMDQV_CONFIG_BASE + SZ_64K
TEGRA241_VCMDQ_PAGE1_BASE: Final = TEGRA241_VCMDQ_PAGE0_BASE + SZ_64K
TEGRA241_VINTF_PAGE_BASE: Final = TEGRA241_VCMDQ_PAGE1_BASE + SZ_64K

# -- CMDQV global registers ---------------------------------------------------------------
TEGRA241_CMDQV_CONFIG: Final = 0x0000
CMDQV_EN = BIT(0)

TEGRA241_CMDQV_PARAM: Final = 0x0004
CMDQV_NUM_SID_PER_VM_LOG2 = GENMASK(15, 12)
CMDQV_NUM_VINTF_LOG2 = GENMASK(11, 8)
CMDQV_NUM_VCMDQ_LOG2 = GENMASK(7, 4)
CMDQV_VER = GENMASK(3, 0)

TEGRA241_CMDQV_STATUS: Final = 0x0008
CMDQV_ENABLED = BIT(0)

#: 64 bits (two words, not 64-bit aligned): bit v = VINTF v has an LVCMDQ in error.
TEGRA241_CMDQV_VINTF_ERR_MAP: Final = 0x0014
TEGRA241_CMDQV_VINTF_INT_MASK: Final = 0x001C
#: Four words: bit q of the 128 = global VCMDQ q in error.
TEGRA241_CMDQV_CMDQ_ERR_MAP_BASE: Final = 0x0024
CMDQV_CMDQ_ERR_MAP_NUM: Final = 4


def TEGRA241_CMDQV_CMDQ_ERR_MAP(m: int) -> int:
    return 0x0024 + 0x4 * m


TEGRA241_CMDQV_CMDQ_ALLOC_BASE: Final = 0x0200


def TEGRA241_CMDQV_CMDQ_ALLOC(q: int) -> int:
    return 0x0200 + 0x4 * q


CMDQV_CMDQ_ALLOC_VINTF = GENMASK(20, 15)
CMDQV_CMDQ_ALLOC_LVCMDQ = GENMASK(7, 1)
CMDQV_CMDQ_ALLOCATED = BIT(0)

# -- VINTF registers (in the configuration page) ----------------------------------------------
TEGRA241_VINTF_BASE: Final = 0x1000
TEGRA241_VINTF_STRIDE: Final = 0x100


def TEGRA241_VINTF(v: int) -> int:
    return 0x1000 + 0x100 * v


TEGRA241_VINTF_CONFIG: Final = 0x0000
VINTF_HYP_OWN = BIT(17)
VINTF_VMID = GENMASK(16, 1)
VINTF_EN = BIT(0)

TEGRA241_VINTF_STATUS: Final = 0x0004
VINTF_STATUS = GENMASK(3, 1)
VINTF_ENABLED = BIT(0)

TEGRA241_VINTF_SID_MATCH_BASE: Final = 0x0040
TEGRA241_VINTF_SID_REPLACE_BASE: Final = 0x0080
#: SID_MATCH / SID_REPLACE pairs a VINTF has room for (the register space holds 16).
VINTF_MAX_SIDS: Final = 16


def TEGRA241_VINTF_SID_MATCH(s: int) -> int:
    return 0x0040 + 0x4 * s


VINTF_SID_MATCH_VIRT_SID = GENMASK(20, 1)
VINTF_SID_MATCH_ENABLE = BIT(0)


def TEGRA241_VINTF_SID_REPLACE(s: int) -> int:
    return 0x0080 + 0x4 * s


TEGRA241_VINTF_LVCMDQ_ERR_MAP_BASE: Final = 0x00C0


def TEGRA241_VINTF_LVCMDQ_ERR_MAP_64(m: int) -> int:
    return 0x00C0 + 0x8 * m


LVCMDQ_ERR_MAP_NUM_64: Final = 2

# -- VCMDQ registers -------------------------------------------------------------------------
TEGRA241_VCMDQ_STRIDE: Final = 0x80


def TEGRA241_VCMDQ_PAGE0(q: int) -> int:
    return TEGRA241_VCMDQ_PAGE0_BASE + 0x80 * q


TEGRA241_VCMDQ_CONS: Final = 0x00000
VCMDQ_CONS_ERR = GENMASK(30, 24)
TEGRA241_VCMDQ_PROD: Final = 0x00004
TEGRA241_VCMDQ_CONFIG: Final = 0x00008
VCMDQ_EN = BIT(0)
TEGRA241_VCMDQ_STATUS: Final = 0x0000C
VCMDQ_ENABLED = BIT(0)
TEGRA241_VCMDQ_GERROR: Final = 0x00010
TEGRA241_VCMDQ_GERRORN: Final = 0x00014
#: The GERROR bit a command error toggles (as the SMMU's GERROR.CMDQ_ERR).
VCMDQ_GERROR_CMDQ_ERR = BIT(0)


def TEGRA241_VCMDQ_PAGE1(q: int) -> int:
    return TEGRA241_VCMDQ_PAGE1_BASE + 0x80 * q


VCMDQ_ADDR = GENMASK(47, 5)
VCMDQ_LOG2SIZE = GENMASK(4, 0)
TEGRA241_VCMDQ_BASE: Final = 0x00000
TEGRA241_VCMDQ_CONS_INDX_BASE: Final = 0x00008


# -- VINTF logical-VCMDQ pages ------------------------------------------------------------------
def TEGRA241_VINTFi_PAGE0(i: int) -> int:
    return TEGRA241_VINTF_PAGE_BASE + SZ_128K * i


def TEGRA241_VINTFi_PAGE1(i: int) -> int:
    return TEGRA241_VINTFi_PAGE0(i) + SZ_64K


def TEGRA241_VINTFi_LVCMDQ_PAGE0(i: int, q: int) -> int:
    return TEGRA241_VINTFi_PAGE0(i) + 0x80 * q


def TEGRA241_VINTFi_LVCMDQ_PAGE1(i: int, q: int) -> int:
    return TEGRA241_VINTFi_PAGE1(i) + 0x80 * q


def cmdqv_mmio_size(num_vintfs: int) -> int:
    """The register window: the three global pages and two pages per VINTF."""
    return TEGRA241_VINTF_PAGE_BASE + SZ_128K * num_vintfs

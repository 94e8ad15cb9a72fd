"""AMD HW-vIOMMU (PROTOTYPE, not upstream): the register windows and map-table entries
shared by the driver (:mod:`drivers.amd_vi.hw_viommu`) and the hardware model
(:mod:`drivers.amd_vi.hw.viommu`). Pure data.

What follows the AMD IOMMU specification's vIOMMU chapter: per-guest state keyed by a
GuestID; a guest command buffer and event log in guest memory with head/tail pointers
the guest moves itself; a per-guest Domain ID map (gDomID -> hDomID) and Device ID map
(gDeviceID -> hDeviceID) in memory; a VF MMIO page per guest that the VMM maps into the
guest and a VF Control MMIO page per guest only the hypervisor reaches; CONTROL bit 53
(VIOMMU_EN, the AMD development tree's name) turns the feature on.

What is this simulator's own (the spec's layout is not reproduced; none of these offsets
is AMD's): both windows are arrays of 4 KiB pages indexed by GuestID, GuestID 0 is the
hypervisor's (page 0 of the control window holds the global VIOMMU_INFO); the guest
page's registers sit at the low 12 bits of their host counterparts (command head/tail,
event head/tail, status: host 0x2000..0x2020) plus a guest CONTROL at 0x28; the buffers
are given by host physical address (IOMMU_HW_QUEUE_ALLOC pins them, as for Tegra's
VCMDQ) while a COMPLETION_WAIT store address stays guest-physical and goes through the
guest's stage 2 (the nest parent table the control page names); a map entry is 32 bits,
bit 31 valid, bits 15:0 the host ID.
"""

from __future__ import annotations

from typing import Final

from drivers.amd_vi.amd_iommu_types import genmask

VF_PAGE: Final = 0x1000

#: CONTROL (MMIO 0x18): the unit runs guest command buffers (AMD tree: VIOMMU_EN).
CONTROL_VIOMMU_EN: Final = 53

# -- VF MMIO: one page per GuestID, mapped into that guest -------------------------------
VF_CMD_HEAD: Final = 0x000
VF_CMD_TAIL: Final = 0x008
VF_EVT_HEAD: Final = 0x010
VF_EVT_TAIL: Final = 0x018  # read-only to the guest
VF_STATUS: Final = 0x020  # EVT_OVERFLOW / EVT_INT / COM_WAIT_INT as the host's, W1C
VF_CONTROL: Final = 0x028  # CMDBUF_EN, EVT_LOG_EN, COMWAIT_EN at the host's bit numbers

# -- VF Control MMIO: page 0 global, page GuestID the hypervisor's view of that guest -----
#: Page 0: bits 15:0 the number of GuestIDs (GuestID 0 included, never a guest's).
VFCTL_INFO: Final = 0x000
VFCTL_INFO_GUESTS: Final = genmask(15, 0)

#: Page 0: guests with an interrupt pending, bit g of word g // 64 (write 1 to clear). A
#: guest's interrupt (an event record with its EVT_INT_EN, a COMPLETION_WAIT with I and its
#: COMWAIT_EN) sets its bit and raises the unit's "vf" line; the hypervisor tells the VMM.
VFCTL_INT_PENDING: Final = 0x100


def VFCTL_INT_PENDING_64(i: int) -> int:
    return VFCTL_INT_PENDING + 8 * i


VFCTL_CONTROL: Final = 0x000
VFCTL_GUEST_EN: Final = 1 << 0  # vImuEn: the guest's page and queues are live
#: Guest command buffer / event log: host physical base (51:12) | length code (59:56), the
#: encoding of the host's Command Buffer Base and Event Log Base registers.
VFCTL_CMD_BUF: Final = 0x008
VFCTL_EVT_LOG: Final = 0x010
#: Domain ID map and Device ID map: host physical base of 64 Ki 32-bit entries (256 KiB).
VFCTL_DOMID_MAP: Final = 0x018
VFCTL_DEVID_MAP: Final = 0x020
#: The guest's stage 2 for the guest-physical addresses a command carries: the nest
#: parent's v1 root (51:12) and Mode (11:9), as in a DTE.
VFCTL_GPA_XLATE: Final = 0x028
#: Guest-physical address of the command buffer: what an event names for a command.
VFCTL_CMD_GPA: Final = 0x030

VF_REG_NAMES: Final = {VF_CMD_HEAD: "CMD_HEAD", VF_CMD_TAIL: "CMD_TAIL",
                      VF_EVT_HEAD: "EVT_HEAD", VF_EVT_TAIL: "EVT_TAIL", VF_STATUS: "STATUS",
                      VF_CONTROL: "CONTROL"}
VFCTL_REG_NAMES: Final = {VFCTL_CONTROL: "CONTROL", VFCTL_CMD_BUF: "CMD_BUF",
                         VFCTL_EVT_LOG: "EVT_LOG", VFCTL_DOMID_MAP: "DOMID_MAP",
                         VFCTL_DEVID_MAP: "DEVID_MAP", VFCTL_GPA_XLATE: "GPA_XLATE",
                         VFCTL_CMD_GPA: "CMD_GPA"}

MAP_ENTRIES: Final = 1 << 16
MAP_ENTRY_SIZE: Final = 4
MAP_TABLE_BYTES: Final = MAP_ENTRIES * MAP_ENTRY_SIZE
MAP_ENTRY_V: Final = 1 << 31
MAP_ENTRY_ID: Final = genmask(15, 0)

#: Ring length codes a guest buffer may use: 2^8 .. 2^15 entries of 16 bytes.
GUEST_RING_MIN_LEN: Final = 1 << (8 + 4)
GUEST_RING_MAX_LEN: Final = 1 << (15 + 4)


def vf_page(guest_id: int) -> int:
    return guest_id * VF_PAGE


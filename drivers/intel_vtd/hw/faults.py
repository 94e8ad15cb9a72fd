"""VT-d fault reason codes (vtd_amd.md §A13), named as QEMU's ``VTD_FR_*``.

The hardware model records the code in a fault recording register; the driver's fault
handler turns it back into the text of Linux's ``dma_fault_reasons`` tables.
"""

from __future__ import annotations

# legacy mode
VTD_FR_ROOT_ENTRY_P = 0x01
VTD_FR_CONTEXT_ENTRY_P = 0x02
VTD_FR_CONTEXT_ENTRY_INV = 0x03
VTD_FR_ADDR_BEYOND_MGAW = 0x04
VTD_FR_WRITE = 0x05
VTD_FR_READ = 0x06
VTD_FR_PAGING_ENTRY_INV = 0x07
VTD_FR_ROOT_TABLE_INV = 0x08
VTD_FR_CONTEXT_TABLE_INV = 0x09
VTD_FR_ROOT_ENTRY_RSVD = 0x0A
VTD_FR_CONTEXT_ENTRY_RSVD = 0x0B
VTD_FR_PAGING_ENTRY_RSVD = 0x0C
# scalable mode
VTD_FR_RTADDR_INV_TTM = 0x31
VTD_FR_SM_ROOT_ENTRY_P = 0x39
VTD_FR_SM_ROOT_ENTRY_RSVD = 0x3A
VTD_FR_SM_CONTEXT_ENTRY_P = 0x41
VTD_FR_SM_CONTEXT_ENTRY_RSVD = 0x42
VTD_FR_SM_CONTEXT_ENTRY_INV = 0x43
VTD_FR_SM_DTE_CLEAR = 0x44
VTD_FR_SM_PASIDE_CLEAR = 0x45
VTD_FR_SM_PASID_BEYOND_MAX = 0x46
VTD_FR_SM_PRE_CLEAR = 0x47
VTD_FR_PASID_DIR_ENTRY_P = 0x51
VTD_FR_PASID_DIR_ENTRY_RSVD = 0x52
VTD_FR_PASID_ENTRY_P = 0x59
VTD_FR_PASID_ENTRY_RSVD = 0x5A
VTD_FR_PASID_TABLE_ENTRY_INV = 0x5B
VTD_FR_SM_ERE_CLEAR = 0x5C
VTD_FR_SM_SRE_CLEAR = 0x5D
VTD_FR_FS_PAGING_ENTRY_INV = 0x70
VTD_FR_FS_PAGING_ENTRY_P = 0x71
VTD_FR_FS_PAGING_ENTRY_RSVD = 0x72
VTD_FR_FS_PML4_ACCESS = 0x73
VTD_FR_FS_NESTED_BEYOND_MGAW = 0x74
VTD_FR_FS_NESTED_PML4_READ = 0x75
VTD_FR_FS_NESTED_ENTRY_READ = 0x76
VTD_FR_FS_NESTED_ENTRY_WRITE = 0x77
VTD_FR_SS_PAGING_ENTRY_INV = 0x78
VTD_FR_SS_PAGING_ENTRY_RW = 0x79
VTD_FR_SS_PAGING_ENTRY_RSVD = 0x7A
VTD_FR_SS_PTR_INV = 0x7B
VTD_FR_FS_NON_CANONICAL = 0x80
VTD_FR_FS_PAGING_ENTRY_US = 0x81
VTD_FR_SM_NO_EXECUTE = 0x82
VTD_FR_SM_BEYOND_HW_MAX = 0x83
VTD_FR_SS_ADDR_BEYOND_MAX = 0x84
VTD_FR_SM_WRITE = 0x85
VTD_FR_SM_READ = 0x86

FAULT_NAMES: dict[int, str] = {
    v: k for k, v in dict(globals()).items() if k.startswith("VTD_FR_") and isinstance(v, int)
}

#: The text of Linux's dma_fault_reasons / dma_fault_reasons_sm tables (dmar.c).
FAULT_TEXT: dict[int, str] = {
    0x00: "Software",
    0x01: "Present bit in root entry is clear",
    0x02: "Present bit in context entry is clear",
    0x03: "Invalid context entry",
    0x04: "Access beyond MGAW",
    0x05: "PTE Write access is not set",
    0x06: "PTE Read access is not set",
    0x07: "Next page table ptr is invalid",
    0x08: "Root table address invalid",
    0x09: "Context table ptr is invalid",
    0x0A: "non-zero reserved fields in RTP",
    0x0B: "non-zero reserved fields in CTP",
    0x0C: "non-zero reserved fields in PTE",
    0x0D: "PCE for translation request specifies blocking",
    0x30: "SM: Invalid Root Table Address",
    0x31: "SM: TTM 0 for request with PASID",
    0x32: "SM: TTM 0 for page group request",
    0x38: "SM: Root Entry Table Access error",
    0x39: "SM: Present bit in Root Entry is clear",
    0x3A: "SM: Non-zero reserved field set in Root Entry",
    0x40: "SM: Context Entry Table Access error",
    0x41: "SM: Present bit in Context Entry is clear",
    0x42: "SM: Non-zero reserved field set in the Context Entry",
    0x43: "SM: Invalid Context Entry",
    0x44: "SM: DTE field in Context Entry is clear",
    0x45: "SM: PASID Enable field in Context Entry is clear",
    0x46: "SM: PASID is larger than the max in Context Entry",
    0x47: "SM: PRE field in Context-Entry is clear",
    0x48: "SM: RID_PASID field error in Context-Entry",
    0x50: "SM: PASID Directory Entry Table Access error",
    0x51: "SM: Present bit in Directory Entry is clear",
    0x52: "SM: Non-zero reserved field set in PASID Directory Entry",
    0x58: "SM: PASID Table Entry Access error",
    0x59: "SM: Present bit in PASID Table Entry is clear",
    0x5A: "SM: Non-zero reserved field set in PASID Table Entry",
    0x5B: "SM: Invalid Scalable-Mode PASID Table Entry",
    0x5C: "SM: ERE field is clear in PASID Table Entry",
    0x5D: "SM: SRE field is clear in PASID Table Entry",
    0x70: "SM: First-level Paging Entry access error",
    0x71: "SM: Present bit in first-level paging entry is clear",
    0x72: "SM: Non-zero reserved field set in first-level paging entry",
    0x73: "SM: Error attempting to access first-level PML4 entry",
    0x74: "SM: First-level entry address beyond MGAW in Nested translation",
    0x75: "SM: Read permission error in first-level PML4 entry in Nested translation",
    0x76: "SM: Read permission error in first-level paging entry in Nested translation",
    0x77: "SM: Write permission error in first-level paging entry in Nested translation",
    0x78: "SM: Second-level entry address beyond the max",
    0x79: "SM: Read/Write permission error in second-level paging entry",
    0x7A: "SM: Non-zero reserved field set in second-level paging entry",
    0x7B: "SM: Invalid second-level page table pointer",
    0x7C: "SM: A/D bit update needed in second-level entry when set up in no snoop",
    0x80: "SM: Address in first-level translation is not canonical",
    0x81: "SM: U/S set 0 for first-level translation with user privilege",
    0x82: "SM: No execute permission for request with PASID and ER=1",
    0x83: "SM: Address beyond the DMA hardware max",
    0x84: "SM: Second-level entry address beyond the max",
    0x85: "SM: No write permission due to first-level or second-level",
    0x86: "SM: No read permission due to first-level or second-level",
    0x87: "SM: Invalid address-interrupt address",
    0x90: "SM: A/D bit update needed in first-level entry when set up in no snoop",
}

#: Conditions a page request can resolve (the translation is missing or lacks a right).
RECOVERABLE = frozenset({VTD_FR_FS_PAGING_ENTRY_P, VTD_FR_SS_PAGING_ENTRY_RW, VTD_FR_SM_WRITE,
                         VTD_FR_SM_READ, VTD_FR_FS_NESTED_ENTRY_READ,
                         VTD_FR_FS_NESTED_PML4_READ})


def fault_name(code: int) -> str:
    return FAULT_NAMES.get(code, f"VTD_FR_{code:#04x}")


def fault_text(code: int) -> str:
    return FAULT_TEXT.get(code, "Unknown")

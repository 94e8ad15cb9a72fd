/* An SMMUv3 guest's side of nesting: the CD and vSTE its arm-smmu-v3 driver writes for a
 * 48-bit, 4 KiB-granule LPAE stage-1 table in guest RAM, and the commands it issues. */
#ifndef SMMU_GUEST_H
#define SMMU_GUEST_H
#include "dma.h"

/* The CD a guest's arm_smmu_make_s1_cd() writes for a 48-bit, 4 KiB-granule table */
#define CD0_T0SZ(x)	((uint64_t)(x))
#define CD0_IRGN0_WBWA	(1ull << 8)
#define CD0_ORGN0_WBWA	(1ull << 10)
#define CD0_SH0_ISH	(3ull << 12)
#define CD0_EPD1	(1ull << 30)
#define CD0_V		(1ull << 31)
#define CD0_IPS_48	(5ull << 32)
#define CD0_AA64	(1ull << 41)
#define CD0_R		(1ull << 45)
#define CD0_A		(1ull << 46)
#define CD0_ASET	(1ull << 47)
#define CD0_ASID(x)	((uint64_t)(x) << 48)
#define MAIR		0xf404ff44ull
/* The guest's STE: V, Config = S1_TRANS, S1ContextPtr; S1DSS = SSID0 */
#define STE0_V		1ull
#define STE0_CFG_S1	(5ull << 1)
#define STE1_S1DSS_SSID0 (2ull << 0)
#define CMDQ_OP_TLBI_NH_ALL 0x10ull
#define CMDQ_OP_TLBI_NH_VA 0x12ull
#define CMDQ_OP_CMD_SYNC 0x46ull
#define CMDQ_TLBI_1_LEAF 1ull

/* The guest maps va -> pa in a new stage-1 table and writes its CD at cd_gpa for ASID
 * asid; returns the vSTE pointing at it, and the GPA of va's leaf in *leaf. */
static inline struct iommu_hwpt_arm_smmuv3 smmu_guest_s1(struct guest *g, uint64_t cd_gpa,
							 uint64_t va, uint64_t pa,
							 uint64_t asid, uint64_t *leaf)
{
	uint64_t root = guest_page(g);
	*leaf = guest_map(g, root, va, pa, LPAE_TABLE, LPAE_PAGE);
	uint64_t *cd = guest_u64(g, cd_gpa);
	cd[0] = CD0_T0SZ(16) | CD0_IRGN0_WBWA | CD0_ORGN0_WBWA | CD0_SH0_ISH | CD0_EPD1 |
		CD0_V | CD0_IPS_48 | CD0_AA64 | CD0_R | CD0_A | CD0_ASET | CD0_ASID(asid);
	cd[1] = root;
	cd[3] = MAIR;
	struct iommu_hwpt_arm_smmuv3 ste = {
		.ste = { STE0_V | STE0_CFG_S1 | cd_gpa, STE1_S1DSS_SSID0 } };
	return ste;
}
#endif

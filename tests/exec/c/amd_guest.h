/* An AMD-Vi guest's side of nesting: the v2 (x86-64) table, GCR3 table and DTE its
 * amd_iommu driver writes in guest RAM, and the command that invalidates one page. */
#ifndef AMD_GUEST_H
#define AMD_GUEST_H
#include "dma.h"

/* The guest's DTE: V, GV, GIoV, its GCR3 table root, its DomainID */
#define DTE0_V		(1ull << 0)
#define DTE0_GIOV	(1ull << 54)
#define DTE0_GV		(1ull << 55)
#define DTE0_GCR3_14_12(a) ((((a) >> 12) & 7) << 58)
#define DTE1_GCR3_30_15(a) ((((a) >> 15) & 0xffff) << 16)
#define DTE1_GCR3_51_31(a) (((a) >> 31) << 43)
#define CMD_COMPL_WAIT		1u
#define CMD_INV_IOMMU_PAGES	3u
#define CMD_INV_ALL		8u
#define CMD_INV_IOMMU_PAGES_PDE (1u << 1)
#define CMD_INV_IOMMU_PAGES_GN	(1u << 2)
#define CMD_COMPL_WAIT_STORE	(1u << 0)

/* The guest maps va -> pa in a new v2 table, points GCR3[PASID 0] at gcr3_gpa to it and
 * returns its DTE with DomainID gdomid; *leaf is the GPA of va's PTE. */
static inline struct iommu_hwpt_amd_guest amd_guest_dte(struct guest *g, uint64_t gcr3_gpa,
							uint64_t va, uint64_t pa,
							uint16_t gdomid, uint64_t *leaf)
{
	uint64_t root = guest_page(g);
	*leaf = guest_map(g, root, va, pa, X86_TABLE, X86_PAGE);
	*guest_u64(g, gcr3_gpa) = root | 1;  /* the guest CR3, valid */
	struct iommu_hwpt_amd_guest dte = { .dte = {
		DTE0_V | DTE0_GV | DTE0_GIOV | DTE0_GCR3_14_12(gcr3_gpa),
		DTE1_GCR3_30_15(gcr3_gpa) | DTE1_GCR3_51_31(gcr3_gpa) | gdomid, 0, 0 } };
	return dte;
}

/* INVALIDATE_IOMMU_PAGES of one page of the guest's DomainID, PASID 0, with PDE (the
 * guest may have freed and remade tables) */
static inline void amd_inv_page(uint32_t cmd[4], uint64_t va, uint16_t gdomid)
{
	cmd[0] = 0;
	cmd[1] = CMD_INV_IOMMU_PAGES << 28 | gdomid;
	cmd[2] = (uint32_t)va | CMD_INV_IOMMU_PAGES_GN | CMD_INV_IOMMU_PAGES_PDE;
	cmd[3] = (uint32_t)(va >> 32);
}
#endif

/* Nesting on AMD-Vi, the device doing the DMA: a nest parent (the v1 host table) over guest
 * RAM, an AMD vIOMMU and a vDEVICE, a guest v2 (x86-64) table and GCR3 table in guest RAM,
 * a nested HWPT from the guest's DTE. The device reads and writes through both stages; the
 * guest moves its page and the device still reads the old one (the IOTLB) until the VMM
 * forwards the guest's INVALIDATE_IOMMU_PAGES through the vIOMMU (a prototype data type:
 * AMD nesting through a vIOMMU is not upstream in Linux 7.3). */
#include "dma.h"

#define GUEST	0x80000ull		/* 512 KiB of guest RAM at IOVA = GPA 0 */
#define GVA	0x400000ull		/* a guest I/O virtual address (v2 table input) */
#define GCR3_GPA 0x1000ull
#define GDOMID	0x33
#define VDEVID	0x100
#define IOMMU_VIOMMU_TYPE_AMD 3				/* the simulator's prototype */
#define IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE 0x80000003u
/* The guest's DTE: V, GV, GIoV, its GCR3 table root, its DomainID */
#define DTE0_V		(1ull << 0)
#define DTE0_GIOV	(1ull << 54)
#define DTE0_GV		(1ull << 55)
#define DTE0_GCR3_14_12(a) ((((a) >> 12) & 7) << 58)
#define DTE1_GCR3_30_15(a) ((((a) >> 15) & 0xffff) << 16)
#define DTE1_GCR3_51_31(a) (((a) >> 31) << 43)
#define CMD_INV_IOMMU_PAGES 3u
#define CMD_INV_IOMMU_PAGES_PDE (1u << 1)
#define CMD_INV_IOMMU_PAGES_GN	(1u << 2)

static uint32_t viommu;

static void invalidate(struct vmm *v, uint64_t va)
{
	uint32_t cmd[4] = { 0, CMD_INV_IOMMU_PAGES << 28 | GDOMID,
			    (uint32_t)va | CMD_INV_IOMMU_PAGES_GN | CMD_INV_IOMMU_PAGES_PDE,
			    (uint32_t)(va >> 32) };
	hwpt_invalidate(v->fd, viommu, IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, cmd,
			sizeof(cmd), 1);
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);
	viommu = viommu_alloc(v.fd, IOMMU_VIOMMU_TYPE_AMD, v.d.devid, nest_parent(&v));
	vdevice_alloc(v.fd, viommu, v.d.devid, VDEVID);

	uint64_t root = guest_page(&v.g);
	uint64_t leaf = guest_map(&v.g, root, GVA, 0x5000, X86_TABLE, X86_PAGE);
	*guest_u64(&v.g, GCR3_GPA) = root | 1;  /* GCR3[PASID 0]: the guest CR3, valid */
	struct iommu_hwpt_amd_guest dte = { .dte = {
		DTE0_V | DTE0_GV | DTE0_GIOV | DTE0_GCR3_14_12(GCR3_GPA),
		DTE1_GCR3_30_15(GCR3_GPA) | DTE1_GCR3_51_31(GCR3_GPA) | GDOMID, 0, 0 } };
	uint32_t nested = hwpt_alloc(v.fd, v.d.devid, viommu, 0, IOMMU_HWPT_DATA_AMD_GUEST,
				     &dte, sizeof(dte));
	dev_attach(&v.d, nested);
	dev_enable(&v.d);

	nested_stale_flow(&v, GVA, leaf, X86_PAGE, 0x5000, 0x9000, invalidate);
	CHECK(dev_fault(&v.d, GVA + 0x200000) == 2);  /* IO_PAGE_FAULT */

	vmm_end(&v);
	printf("dma_nested_amd ok\n");
	return 0;
}

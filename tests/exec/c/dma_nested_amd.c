/* Nesting on AMD-Vi, the device doing the DMA: a nest parent (the v1 host table) over guest
 * RAM, an AMD vIOMMU and a vDEVICE, a guest v2 (x86-64) table and GCR3 table in guest RAM,
 * a nested HWPT from the guest's DTE. The device reads and writes through both stages; the
 * guest moves its page and the device still reads the old one (the IOTLB) until the VMM
 * forwards the guest's INVALIDATE_IOMMU_PAGES through the vIOMMU (a prototype data type:
 * AMD nesting through a vIOMMU is not upstream in Linux 7.3). */
#include "amd_guest.h"

#define GUEST	0x80000ull		/* 512 KiB of guest RAM at IOVA = GPA 0 */
#define GVA	0x400000ull		/* a guest I/O virtual address (v2 table input) */
#define GCR3_GPA 0x1000ull
#define GDOMID	0x33
#define VDEVID	0x100
#define IOMMU_VIOMMU_TYPE_AMD 3				/* the simulator's prototype */
#define IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE 0x80000003u

static uint32_t viommu;

static void invalidate(struct vmm *v, uint64_t va)
{
	uint32_t cmd[4];
	amd_inv_page(cmd, va, GDOMID);
	hwpt_invalidate(v->fd, viommu, IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, cmd,
			sizeof(cmd), 1);
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);
	viommu = viommu_alloc(v.fd, IOMMU_VIOMMU_TYPE_AMD, v.d.devid, nest_parent(&v));
	vdevice_alloc(v.fd, viommu, v.d.devid, VDEVID);

	uint64_t leaf;
	struct iommu_hwpt_amd_guest dte = amd_guest_dte(&v.g, GCR3_GPA, GVA, 0x5000, GDOMID,
							&leaf);
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

/* Nesting on Intel VT-d, the device doing the DMA: a nest parent (second stage) over guest
 * RAM, a guest first-stage (x86-64) table in guest RAM, a nested HWPT from its root. The
 * device reads and writes through both stages; the guest moves its page and the device
 * still reads the old one (the IOTLB) until the VMM forwards the guest's invalidation
 * through IOMMU_HWPT_INVALIDATE on the nested HWPT. */
#include "dma.h"

#define GUEST	0x80000ull		/* 512 KiB of guest RAM at IOVA = GPA 0 */
#define GIOVA	0x7efffff00000ull	/* a guest I/O virtual address (first-stage input) */

static uint32_t nested;

static void invalidate(struct vmm *v, uint64_t va)
{
	struct iommu_hwpt_vtd_s1_invalidate inv = { .addr = va, .npages = 1,
						    .flags = IOMMU_VTD_INV_FLAGS_LEAF };
	hwpt_invalidate(v->fd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, &inv, sizeof(inv), 1);
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);
	uint32_t parent = nest_parent(&v);
	uint64_t root = guest_page(&v.g);
	uint64_t leaf = guest_map(&v.g, root, GIOVA, 0x5000, X86_TABLE, X86_PAGE);
	struct iommu_hwpt_vtd_s1 s1 = { .pgtbl_addr = root, .addr_width = 48 };
	nested = hwpt_alloc(v.fd, v.d.devid, parent, 0, IOMMU_HWPT_DATA_VTD_S1, &s1, sizeof(s1));
	dev_attach(&v.d, nested);
	dev_enable(&v.d);

	nested_stale_flow(&v, GIOVA, leaf, X86_PAGE, 0x5000, 0x9000, invalidate);
	CHECK(dev_fault(&v.d, GIOVA + 0x200000) != 0);  /* the first-stage fault reason */

	vmm_end(&v);
	printf("dma_nested_vtd ok\n");
	return 0;
}

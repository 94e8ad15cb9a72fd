/* Nesting on Intel VT-d, the device doing the DMA: a nest parent (second stage) over guest
 * RAM, a guest first-stage (x86-64) table in guest RAM, a nested HWPT from its root. The
 * device reads through both stages; the guest moves its page and the device still reads
 * the old one (the IOTLB) until the VMM forwards the guest's invalidation through
 * IOMMU_HWPT_INVALIDATE on the nested HWPT. */
#include "dma.h"

#define GUEST	0x80000ull		/* 512 KiB of guest RAM at IOVA = GPA 0 */
#define GIOVA	0x7efffff00000ull	/* a guest I/O virtual address (first-stage input) */

int main(int argc, char **argv)
{
	const char *cdev = argc > 1 ? argv[1] : "/dev/vfio/devices/vfio0";
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	struct dev d;
	dev_bind(&d, cdev, fd);
	uint32_t ioas = ioas_alloc(fd);
	struct guest g = { .size = GUEST, .next = GUEST };
	g.ram = mmap(NULL, GUEST, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(g.ram != MAP_FAILED);
	CHECK(map_fixed(fd, ioas, g.ram, GUEST, 0) == 0);
	uint32_t parent = hwpt_alloc(fd, d.devid, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT,
				     IOMMU_HWPT_DATA_NONE, NULL, 0);

	uint64_t root = guest_page(&g);
	uint64_t leaf = guest_map(&g, root, GIOVA, 0x5000, X86_TABLE, X86_PAGE);
	strcpy((char *)g.ram + 0x5000, "guest data at GPA 0x5000");
	struct iommu_hwpt_vtd_s1 s1 = { .pgtbl_addr = root, .addr_width = 48 };
	uint32_t nested = hwpt_alloc(fd, d.devid, parent, 0, IOMMU_HWPT_DATA_VTD_S1, &s1,
				     sizeof(s1));
	dev_attach(&d, nested);
	dev_enable(&d);

	CHECK(strcmp(dev_read(&d, GIOVA, 25), "guest data at GPA 0x5000") == 0);
	dev_write(&d, GIOVA + 0x100, "from the device", 16);
	CHECK(strcmp((char *)g.ram + 0x5100, "from the device") == 0);

	strcpy((char *)g.ram + 0x9000, "the guest's new page....");
	*guest_u64(&g, leaf) = 0x9000 | X86_PAGE;
	CHECK(strcmp(dev_read(&d, GIOVA, 25), "guest data at GPA 0x5000") == 0);

	struct iommu_hwpt_vtd_s1_invalidate inv = { .addr = GIOVA, .npages = 1,
						    .flags = IOMMU_VTD_INV_FLAGS_LEAF };
	hwpt_invalidate(fd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, &inv, sizeof(inv), 1);
	CHECK(strcmp(dev_read(&d, GIOVA, 25), "the guest's new page....") == 0);

	CHECK(dma_run(&d, GIOVA + 0x200000, 0, 8, 0) == DMA_STATUS_ERROR);
	CHECK(DMA_ERR_KIND(rd32(&d, DMA_ERROR)) == ERR_FAULT && DMA_ERR_CODE(rd32(&d, DMA_ERROR)));

	dev_close(&d);
	close(fd);
	printf("dma_nested_vtd ok\n");
	return 0;
}

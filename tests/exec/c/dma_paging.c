/* The DMA engine through VFIO alone: bind, an IOAS holding the program's memory, a paging
 * HWPT, then the device reads and writes that memory through the IOMMU, programmed through
 * its mapped registers, its completion an MSI on an eventfd. A fault and bad programming
 * show in the status registers. Runs on any vendor: argv[1] is the device's cdev. */
#include "dma.h"

#define IOVA 0x100000ull

int main(int argc, char **argv)
{
	struct vmm vm;
	vmm_start(&vm, argc, argv, 16 * 4096, IOVA);
	struct dev *d = &vm.d;
	char *mem = (char *)vm.g.ram;
	strcpy(mem + 0x3000, "written by the program");
	char *heap = aligned_alloc(4096, 2 * 4096);  /* private memory, pinned as well */
	CHECK(heap != NULL);
	memset(heap, 0, 2 * 4096);
	CHECK(map_fixed(vm.fd, vm.ioas, heap, 2 * 4096, 2 * IOVA) == 0);
	uint32_t hwpt = hwpt_alloc(vm.fd, d->devid, vm.ioas, 0, IOMMU_HWPT_DATA_NONE, NULL, 0);
	dev_attach(d, hwpt);
	dev_enable(d);

	/* liveness: the register is the device's, not the page's */
	wr32(d, DMA_SCRATCH, 0x12345678);
	uint32_t v;
	CHECK(pread(d->fd, &v, 4, DMA_SCRATCH) == 4 && v == ~0x12345678u);

	/* memory -> buffer, buffer -> memory (shared and private): the program sees it */
	CHECK(strcmp(dev_read(d, IOVA + 0x3000, 23), "written by the program") == 0);
	dev_write(d, IOVA + 0x4010, "written by the device", 22);
	CHECK(strcmp(mem + 0x4010, "written by the device") == 0);
	dev_write(d, 2 * IOVA + 0x1008, "into the heap", 14);
	CHECK(strcmp(heap + 0x1008, "into the heap") == 0);

	/* the same through pread/pwrite of the region: no mapping needed */
	uint64_t src = IOVA + 0x3000, dst = 0x40, n = 7;
	uint32_t cmd = DMA_CMD_START, st;
	CHECK(pwrite(d->fd, &src, 8, DMA_SRC) == 8 && pwrite(d->fd, &dst, 8, DMA_DST) == 8);
	CHECK(pwrite(d->fd, &n, 8, DMA_LEN) == 8 && pwrite(d->fd, &cmd, 4, DMA_CMD) == 4);
	char got[8] = {0};
	CHECK(pread(d->fd, &st, 4, DMA_STATUS) == 4 && st == DMA_STATUS_DONE);
	CHECK(pread(d->fd, got, 7, DMA_BUF + 0x40) == 7 && memcmp(got, "written", 7) == 0);
	uint64_t efd_count;
	CHECK(read(d->efd, &efd_count, 8) == -1 && errno == EAGAIN);  /* no IRQ was asked */

	/* an IOVA nothing maps: the IOMMU refuses, the status says why and where */
	uint32_t count = rd32(d, DMA_COUNT);
	CHECK(dev_fault(d, 0x900000) != 0);
	CHECK(rd32(d, DMA_COUNT) == count + 1);

	/* bad programming: a length past the buffer is refused and nothing else happens */
	wr64(d, DMA_SRC, IOVA);
	wr64(d, DMA_LEN, 0x1001);
	wr32(d, DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ);
	CHECK(pread(d->fd, &st, 4, DMA_STATUS) == 4 && st == DMA_STATUS_ERROR);
	CHECK(DMA_ERR_KIND(rd32(d, DMA_ERROR)) == ERR_LENGTH);
	CHECK(rd32(d, DMA_COUNT) == count + 1);
	CHECK(read(d->efd, &efd_count, 8) == -1 && errno == EAGAIN);

	vmm_end(&vm);
	printf("dma_paging ok\n");
	return 0;
}

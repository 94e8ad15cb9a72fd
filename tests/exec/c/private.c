/* Private memory (heap, stack, MAP_PRIVATE anonymous) is user memory too: pinned, mapped,
 * read and written by the emulated device, and a pinned page unmapped by the program keeps
 * its contents for the device. */
#include "sim.h"

static void roundtrip(int fd, int afd, uint32_t ioas, uint32_t hwpt, char *page, uint64_t iova)
{
	strcpy(page, "private data");
	CHECK(map_fixed(fd, ioas, page, 4096, iova) == 0);
	CHECK(check_map(fd, hwpt, iova, page, 4096) == 0);
	char got[16] = {0};
	CHECK(access_rw(fd, afd, iova, got, 13, 0) == 0 && strcmp(got, "private data") == 0);
	CHECK(access_rw(fd, afd, iova + 100, "dma", 4, 1) == 0);
	CHECK(strcmp(page + 100, "dma") == 0);
}

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd), hwpt;
	mock_domain(fd, ioas, NULL, &hwpt, NULL);
	int afd = access_create(fd, ioas);
	char *anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *heap = aligned_alloc(4096, 4096);
	static char __attribute__((aligned(4096))) bss[4096];
	char __attribute__((aligned(4096))) stack[4096];
	CHECK(anon != MAP_FAILED && heap);
	roundtrip(fd, afd, ioas, hwpt, anon, MOCK_APERTURE_START);
	roundtrip(fd, afd, ioas, hwpt, heap, MOCK_APERTURE_START + 0x10000);
	roundtrip(fd, afd, ioas, hwpt, bss, MOCK_APERTURE_START + 0x20000);
	roundtrip(fd, afd, ioas, hwpt, stack, MOCK_APERTURE_START + 0x30000);
	/* unmapped by the program, the pinned page stays the device's, with its contents: the
	 * CPU path through the user mapping now faults (as copy_from_user does in Linux), the
	 * slow path through the pinned page does not */
	CHECK(munmap(anon, 4096) == 0);
	char got[16] = {0};
	CHECK(access_rw(fd, afd, MOCK_APERTURE_START, got, 13, 0) == -1 && errno == EFAULT);
	CHECK(access_rw_flags(fd, afd, MOCK_APERTURE_START, got, 13,
			      MOCK_ACCESS_RW_SLOW_PATH) == 0);
	CHECK(strcmp(got, "private data") == 0);
	/* a new mapping at the same address is a new page, not the pinned one */
	char *again = mmap(anon, 4096, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	CHECK(again == anon && again[0] == 0);
	CHECK(access_rw_flags(fd, afd, MOCK_APERTURE_START + 200, "x", 2,
			      MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH) == 0);
	CHECK(again[200] == 0);
	/* read-only memory cannot be mapped writable */
	char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map_fixed(fd, ioas, ro, 4096, MOCK_APERTURE_START + 0x40000) == -1 &&
	      errno == EFAULT);
	printf("private ok\n");
	return 0;
}

/* A paging flow: map the program's own shared memory into a mock domain, check the domain
 * maps the program's pages, then read and write them through the IOAS. */
#include "sim.h"

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd), hwpt;
	mock_domain(fd, ioas, NULL, &hwpt, NULL);
	size_t len = 4 * 4096;
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	strcpy(buf, "written by the program");
	CHECK(map_fixed(fd, ioas, buf, len, MOCK_APERTURE_START) == 0);
	CHECK(check_map(fd, hwpt, MOCK_APERTURE_START, buf, len) == 0);
	CHECK(check_refs(fd, buf, len, 1) == 0);
	int afd = access_create(fd, ioas);
	char got[64] = {0};
	CHECK(access_rw(fd, afd, MOCK_APERTURE_START, got, 23, 0) == 0);
	CHECK(strcmp(got, "written by the program") == 0);
	/* the device writes: the program sees it at once */
	CHECK(access_rw(fd, afd, MOCK_APERTURE_START + 4096 + 7, "from the device", 16, 1) == 0);
	CHECK(strcmp(buf + 4096 + 7, "from the device") == 0);
	/* a bad pointer is EFAULT, nothing else */
	errno = 0;
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8) == -1 && errno == EFAULT);
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, NULL) == -1 && errno == EFAULT);
	close(afd);
	close(fd);
	/* the last close released every pin */
	fd = open("/dev/iommu", O_RDWR);
	CHECK(check_refs(fd, buf, len, 0) == 0);
	printf("paging ok\n");
	return 0;
}

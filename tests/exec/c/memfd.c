/* IOMMU_IOAS_MAP_FILE of the program's own memfd: the domain maps the file's pages, the
 * same pages the program's mapping of the memfd shows. */
#include "sim.h"

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd), hwpt;
	mock_domain(fd, ioas, NULL, &hwpt, NULL);
	int mfd = memfd_create("guest-ram", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, 8 * 4096) == 0);
	char *buf = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(buf != MAP_FAILED);
	struct iommu_ioas_map_file mf = { .size = sizeof(mf), .ioas_id = ioas, .fd = mfd,
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE, .start = 4096,
		.length = 4 * 4096 };
	CHECK(ioctl(fd, IOMMU_IOAS_MAP_FILE, &mf) == 0);
	CHECK(check_map(fd, hwpt, mf.iova, buf + 4096, 4 * 4096) == 0);
	/* past the end of the file: EINVAL when the pages are pinned */
	mf.start = 8 * 4096; mf.length = 4096;
	CHECK(ioctl(fd, IOMMU_IOAS_MAP_FILE, &mf) == -1 && errno == EINVAL);
	/* a file with no page cache (a pipe): accepted by MAP, refused when pinned */
	int p[2];
	CHECK(pipe(p) == 0);
	mf.fd = p[0]; mf.start = 0;
	CHECK(ioctl(fd, IOMMU_IOAS_MAP_FILE, &mf) == -1 && errno == EINVAL);
	printf("memfd ok\n");
	return 0;
}

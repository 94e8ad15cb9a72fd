/* 100 children share the iommufd; some exit, some are killed mid-flight, some abort: the
 * Machine stays consistent and the parent's view is intact. */
#include "sim.h"

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd);
	mock_domain(fd, ioas, NULL, NULL, NULL);
	char *buf = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			 -1, 0);
	CHECK(buf != MAP_FAILED);
	pid_t kids[100];
	int ready[2];
	CHECK(pipe(ready) == 0);
	for (int i = 0; i < 100; i++) {
		kids[i] = fork();
		CHECK(kids[i] >= 0);
		if (kids[i] == 0) {
			int own = open("/dev/iommu", O_RDWR);
			CHECK(own >= 0);
			uint32_t mine = ioas_alloc(own);
			mock_domain(own, mine, NULL, NULL, NULL);
			CHECK(map_fixed(own, mine, buf + (i % 64) * 4096, 4096,
					MOCK_APERTURE_START) == 0);
			CHECK(map_fixed(fd, ioas, buf + (i % 64) * 4096, 4096,
					MOCK_APERTURE_START + (uint64_t)(i + 1) * 0x10000) == 0);
			/* mapped: only now may the parent kill this child */
			CHECK(write(ready[1], "m", 1) == 1);
			if (i % 3 == 1)
				abort();
			if (i % 3 == 2)
				for (;;) pause();
			_exit(0);
		}
	}
	close(ready[1]);
	for (int n = 0; n < 100; n++) {
		char c;
		CHECK(read(ready[0], &c, 1) == 1);
	}
	for (int i = 0; i < 100; i++) {
		if (i % 3 == 2)
			kill(kids[i], SIGKILL);
		int st;
		CHECK(waitpid(kids[i], &st, 0) == kids[i]);
	}
	/* every child's mapping in the shared IOAS is there: an area a mapping, each pinning
	 * its page (children i and i + 64 mapped the same page: two pins); what the children
	 * pinned through their own iommufd went with them */
	CHECK(check_refs(fd, buf, 36 * 4096, 2) == 0);
	CHECK(check_refs(fd, buf + 36 * 4096, 28 * 4096, 1) == 0);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .length = UINT64_MAX };
	CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 100 * 4096);
	CHECK(check_refs(fd, buf, 64 * 4096, 0) == 0);
	printf("stress ok\n");
	return 0;
}

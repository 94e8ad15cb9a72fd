/* fork and fd inheritance: one open file, two processes; the file lives until its last
 * holder goes, and a child's mapping pins the child's memory. */
#include "sim.h"

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd);
	int p[2], q[2];  /* child -> parent, parent -> child */
	CHECK(pipe(p) == 0 && pipe(q) == 0);
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		/* the inherited fd names the same iommufd */
		uint32_t mine = ioas_alloc(fd);
		CHECK(write(p[1], &mine, sizeof(mine)) == sizeof(mine));
		char c;
		CHECK(read(q[0], &c, 1) == 1);  /* the parent has closed its fd now */
		struct iommu_destroy d = { .size = sizeof(d), .id = ioas };
		CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0);  /* still alive through this fd */
		_exit(0);
	}
	uint32_t theirs;
	CHECK(read(p[0], &theirs, sizeof(theirs)) == sizeof(theirs));
	struct iommu_destroy d = { .size = sizeof(d), .id = theirs };
	CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0);  /* the child's object, same table */
	CHECK(close(fd) == 0);
	CHECK(write(q[1], "x", 1) == 1);
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	printf("fork ok\n");
	return 0;
}

/* A process that dies holding pins, by abort() or SIGKILL: everything it held is
 * released, and the Machine serves the next process as if nothing happened. */
#include "sim.h"

static char *buf;
#define LEN (4 * 4096)

static void pin_and_die(int how)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd);
	mock_domain(fd, ioas, NULL, NULL, NULL);
	CHECK(map_fixed(fd, ioas, buf, LEN, MOCK_APERTURE_START) == 0);
	CHECK(check_refs(fd, buf, LEN, 1) == 0);
	if (how == 0)
		abort();
	for (;;)
		pause();  /* the parent kills us */
}

int main(void)
{
	buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	for (int how = 0; how < 2; how++) {
		pid_t child = fork();
		CHECK(child >= 0);
		if (child == 0)
			pin_and_die(how);
		int st;
		if (how == 1) {
			usleep(200000);
			kill(child, SIGKILL);
		}
		CHECK(waitpid(child, &st, 0) == child && WIFSIGNALED(st));
		int fd = open("/dev/iommu", O_RDWR);
		CHECK(fd >= 0);
		CHECK(check_refs(fd, buf, LEN, 0) == 0);
		close(fd);
	}
	printf("crash ok\n");
	return 0;
}

/* /proc/self/task/<tid>/fail-nth against the Machine: the proc file's parsing and errnos,
 * a point that fires (and reads back 0), and a sweep of a small flow that ends once a
 * run reaches no armed point. */
#include "sim.h"

static char left[32];

static const char *nth_read(int nth)
{
	memset(left, 0, sizeof(left));
	CHECK(pread(nth, left, sizeof(left) - 1, 0) > 0);
	return left;
}

static int nth_write(int nth, const char *s)
{
	return pwrite(nth, s, strlen(s), 0);
}

/* open, an IOAS, a mock domain, a map: 0 or the errno of the first failure */
static int flow(void *buf)
{
	uint32_t ioas, stdev, hwpt, idev;
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		return errno;
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &a) ? errno : 0;
	ioas = a.out_ioas_id;
	if (!rc) {
		struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN,
					    .id = ioas };
		rc = ioctl(fd, IOMMU_TEST_CMD, &c) ? errno : 0;
		stdev = c.mock_domain.out_stdev_id;
		hwpt = c.mock_domain.out_hwpt_id;
		idev = c.mock_domain.out_idev_id;
		(void)stdev; (void)hwpt; (void)idev;
	}
	if (!rc && map_fixed(fd, ioas, buf, 16 * 4096, MOCK_APERTURE_START))
		rc = errno;
	close(fd);
	return rc;
}

int main(void)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid());
	int nth = open(path, O_RDWR);
	CHECK(nth >= 0);
	CHECK(strcmp(nth_read(nth), "0\n") == 0);

	/* kstrtouint_from_user */
	CHECK(nth_write(nth, "abc") == -1 && errno == EINVAL);
	CHECK(nth_write(nth, "-1") == -1 && errno == EINVAL);
	CHECK(nth_write(nth, "7x") == -1 && errno == EINVAL);
	CHECK(nth_write(nth, "0x") == -1 && errno == EINVAL);
	CHECK(nth_write(nth, "4294967296") == -1 && errno == ERANGE);
	CHECK(nth_write(nth, "99999999999999999999999") == -1 && errno == ERANGE);
	CHECK(nth_write(nth, "12\n") == 3 && strcmp(nth_read(nth), "12\n") == 0);
	CHECK(nth_write(nth, "010") == 3 && strcmp(nth_read(nth), "8\n") == 0);
	CHECK(nth_write(nth, "+0x1f") == 5 && strcmp(nth_read(nth), "31\n") == 0);
	CHECK(nth_write(nth, "4294967295") == 10);

	/* the 3rd point of open(/dev/iommu) is the iommufd_ctx: ENOMEM, and it fired */
	CHECK(nth_write(nth, "3") == 1);
	CHECK(open("/dev/iommu", O_RDWR) == -1 && errno == ENOMEM);
	CHECK(strcmp(nth_read(nth), "0\n") == 0);
	CHECK(nth_write(nth, "4") == 1);
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0 && strcmp(nth_read(nth), "1\n") == 0);
	CHECK(nth_write(nth, "0") == 1);
	close(fd);

	/* the selftest's sweep */
	void *buf = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	memset(buf, 0x5a, 16 * 4096);
	CHECK(flow(buf) == 0);
	unsigned int n;
	int failed = 0;
	for (n = 1;; n++) {
		char num[16];
		CHECK(n < 1000);
		snprintf(num, sizeof(num), "%u", n);
		CHECK(nth_write(nth, num) == (int)strlen(num));
		int rc = flow(buf);
		const char *l = nth_read(nth);
		CHECK(nth_write(nth, "0") == 1);
		if (strcmp(l, "0\n") != 0) {
			CHECK(rc == 0);
			break;
		}
		CHECK(rc == ENOMEM || rc == ENOENT || rc == EFAULT || rc == EINVAL);
		failed++;
		int cfd = open("/dev/iommu", O_RDWR);  /* nothing the failed run pinned stays */
		CHECK(cfd >= 0 && check_refs(cfd, buf, 16 * 4096, 0) == 0);
		close(cfd);
	}
	CHECK(failed > 15);
	printf("fail_nth ok (%d points)\n", failed);
	return 0;
}

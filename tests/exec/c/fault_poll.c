/* A fault fd is a real fd: poll() wakes when the Machine queues a fault, even a fault
 * another process's ioctl caused. */
#include "sim.h"

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	uint32_t ioas = ioas_alloc(fd), stdev, hwpt, idev;
	mock_domain(fd, ioas, &stdev, &hwpt, &idev);
	struct iommu_hwpt_alloc parent = { .size = sizeof(parent), .dev_id = idev,
		.pt_id = ioas, .flags = IOMMU_HWPT_ALLOC_NEST_PARENT };
	CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &parent) == 0);
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == 0);
	int ffd = fa.out_fault_fd;
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc nested = { .size = sizeof(nested), .dev_id = idev,
		.pt_id = parent.out_hwpt_id, .flags = IOMMU_HWPT_FAULT_ID_VALID,
		.fault_id = fa.out_fault_id, .data_type = IOMMU_HWPT_DATA_SELFTEST,
		.data_len = sizeof(data), .data_uptr = (uintptr_t)&data };
	CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &nested) == 0);
	struct iommu_test_cmd rep = { .size = sizeof(rep), .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
		.id = stdev, .mock_domain_replace = { .pt_id = nested.out_hwpt_id } };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &rep) == 0);

	struct pollfd pfd = { .fd = ffd, .events = POLLIN };
	CHECK(poll(&pfd, 1, 0) == 0);  /* nothing queued */
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		/* blocks in the real kernel until the parent's ioctl queues a fault */
		CHECK(poll(&pfd, 1, 10000) == 1 && (pfd.revents & POLLIN));
		struct iommu_hwpt_pgfault f;
		CHECK(read(ffd, &f, sizeof(f)) == sizeof(f));
		CHECK(f.addr == 0xdeadbeaf && f.dev_id == idev);
		struct iommu_hwpt_page_response r = { .cookie = f.cookie,
						      .code = IOMMUFD_PAGE_RESP_SUCCESS };
		CHECK(write(ffd, &r, sizeof(r)) == sizeof(r));
		CHECK(poll(&pfd, 1, 0) == 0);  /* drained */
		_exit(0);
	}
	usleep(100000);
	struct iommu_test_cmd trig = { .size = sizeof(trig), .op = IOMMU_TEST_OP_TRIGGER_IOPF,
		.trigger_iopf = { .dev_id = idev, .pasid = 1, .grpid = 2,
			.perm = IOMMU_PGFAULT_PERM_READ, .addr = 0xdeadbeaf } };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &trig) == 0);
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	printf("fault_poll ok\n");
	return 0;
}

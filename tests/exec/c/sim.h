/* Small helpers for the exec tests: check, and the iommufd calls they make. */
#ifndef SIM_H
#define SIM_H
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include "iommufd_test.h"

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: CHECK(%s) failed: errno %d (%s)\n", __FILE__, __LINE__, \
		#cond, errno, strerror(errno)); exit(1); } } while (0)

static inline uint32_t ioas_alloc(int fd)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c) };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &c) == 0);
	return c.out_ioas_id;
}

static inline void mock_domain(int fd, uint32_t ioas, uint32_t *stdev, uint32_t *hwpt,
			       uint32_t *idev)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN,
				    .id = ioas };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &c) == 0);
	if (stdev) *stdev = c.mock_domain.out_stdev_id;
	if (hwpt) *hwpt = c.mock_domain.out_hwpt_id;
	if (idev) *idev = c.mock_domain.out_idev_id;
}

static inline int map_fixed(int fd, uint32_t ioas, void *va, size_t len, uint64_t iova)
{
	struct iommu_ioas_map c = { .size = sizeof(c), .ioas_id = ioas,
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.user_va = (uintptr_t)va, .length = len, .iova = iova };
	return ioctl(fd, IOMMU_IOAS_MAP, &c);
}

static inline int check_map(int fd, uint32_t hwpt, uint64_t iova, void *va, size_t len)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MD_CHECK_MAP,
		.id = hwpt, .check_map = { .iova = iova, .length = len,
					   .uptr = (uintptr_t)va } };
	return ioctl(fd, IOMMU_TEST_CMD, &c);
}

static inline int check_refs(int fd, void *va, size_t len, unsigned int refs)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MD_CHECK_REFS,
		.check_refs = { .length = len, .uptr = (uintptr_t)va, .refs = refs } };
	return ioctl(fd, IOMMU_TEST_CMD, &c);
}

static inline int access_create(int fd, uint32_t ioas)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_CREATE_ACCESS,
				    .id = ioas };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &c) == 0);
	return c.create_access.out_access_fd;
}

/* A CPU copy through the IOAS (the mock's emulated device); the slow path goes through
 * the pinned pages instead of the user mapping */
static inline int access_rw_flags(int fd, int afd, uint64_t iova, void *buf, size_t len,
				  unsigned int flags)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_ACCESS_RW,
		.id = afd, .access_rw = { .iova = iova, .length = len, .uptr = (uintptr_t)buf,
					  .flags = flags } };
	return ioctl(fd, IOMMU_TEST_CMD, &c);
}

static inline int access_rw(int fd, int afd, uint64_t iova, void *buf, size_t len, int wr)
{
	return access_rw_flags(fd, afd, iova, buf, len, wr ? MOCK_ACCESS_RW_WRITE : 0);
}
#endif

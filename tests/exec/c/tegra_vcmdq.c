/* A VMM and its guest on an SMMUv3 with a Tegra241 CMDQV, as QEMU's smmuv3-accel runs
 * one: the VMM maps the vIOMMU's VINTF page and the guest's VCMDQ lives in guest RAM; the
 * guest then invalidates by writing commands into its queue and storing PROD through the
 * page, with no IOMMU_HWPT_INVALIDATE. A refused command stops the queue with CONS.ERR,
 * the VMM gets the LVCMDQ error map as a vEVENT, the guest skips the command and goes on.
 *
 * argv: the VFIO cdev, a pipe fd to ask the test for a DMA at GVA, the pipe fd of the
 * answer (the 4 bytes the device read): the device's DMA is the test's to do. */
#include <linux/vfio.h>
#include "sim.h"

#define RAM		0x100000UL	/* guest RAM: GPA 0 .. 1 MiB at IOVA 0 */
#define CD_GPA		0x1000UL
#define OLD_GPA		0x10000UL
#define NEW_GPA		0x20000UL
#define QUEUE_GPA	0x30000UL
#define QUEUE_LEN	4096UL
#define PT_GPA		0x80000UL	/* 4 table pages: L0 .. L3 */
#define GVA		0x7f0000000000UL
#define VSID		0x42
#define ASID		3UL

/* SMMUv3 architecture fields the guest driver writes (Linux arm-smmu-v3.h names). */
#define STRTAB_STE_0_V			(1UL << 0)
#define STRTAB_STE_0_CFG_S1_TRANS	(5UL << 1)
#define STRTAB_STE_1_S1DSS_SSID0	(2UL << 0)
#define STRTAB_STE_1_S1C_WBRA		1UL
#define STRTAB_STE_1_S1CSH_ISH		(3UL << 6)
#define CTXDESC_CD_0_TCR_T0SZ(x)	((unsigned long)(x) << 0)
#define CTXDESC_CD_0_TCR_IRGN0_WBWA	(1UL << 8)
#define CTXDESC_CD_0_TCR_ORGN0_WBWA	(1UL << 10)
#define CTXDESC_CD_0_TCR_SH0_ISH	(3UL << 12)
#define CTXDESC_CD_0_TCR_EPD1		(1UL << 30)
#define CTXDESC_CD_0_V			(1UL << 31)
#define CTXDESC_CD_0_TCR_IPS_48		(5UL << 32)
#define CTXDESC_CD_0_AA64		(1UL << 41)
#define CTXDESC_CD_0_R			(1UL << 45)
#define CTXDESC_CD_0_A			(1UL << 46)
#define CTXDESC_CD_0_ASET		(1UL << 47)
#define CTXDESC_CD_0_ASID(x)		((unsigned long)(x) << 48)
#define ARM_LPAE_MAIR			0xf404ff44UL	/* the kernel's MAIR_EL1 */
#define LPAE_TABLE			3UL
/* A page: AP = EL0 read/write, outer shareable, AF, nG (as io-pgtable-arm writes it) */
#define LPAE_PAGE_RW			(3UL | 1UL << 6 | 2UL << 8 | 1UL << 10 | 1UL << 11)
#define CMDQ_OP_TLBI_NH_ALL		0x10UL
#define CMDQ_OP_TLBI_NH_VA		0x12UL
#define CMDQ_OP_CMD_SYNC		0x46UL

/* Tegra241 CMDQV LVCMDQ page-0 registers (tegra241-cmdqv.c) */
#define VCMDQ_CONS	(0x00 / 4)
#define VCMDQ_PROD	(0x04 / 4)
#define VCMDQ_CONFIG	(0x08 / 4)
#define VCMDQ_STATUS	(0x0c / 4)
#define VCMDQ_GERROR	(0x10 / 4)
#define VCMDQ_GERRORN	(0x14 / 4)
#define VCMDQ_CONS_ERR(c) (((c) >> 24) & 0x7f)

static int req_fd, resp_fd;
static uint8_t *ram;
static volatile uint32_t *vcmdq;	/* LVCMDQ 0 in the mapped VINTF page */

static void dma(char *out)
{
	CHECK(write(req_fd, "r", 1) == 1);
	CHECK(read(resp_fd, out, 4) == 4);
}

static void expect_dma(const char *want)
{
	char got[5] = { 0 };

	dma(got);
	if (memcmp(got, want, 4)) {
		fprintf(stderr, "DMA at GVA read %s, expected %s\n", got, want);
		exit(1);
	}
}

/* Registers show up within a tick (docs/exec.rst: polled MMIO): poll like a driver. */
static int wait_for(int reg, uint32_t mask, uint32_t want)
{
	for (int i = 0; i < 5000; i++) {
		if ((vcmdq[reg] & mask) == want)
			return 1;
		usleep(1000);
	}
	return 0;
}

static uint32_t prod;

static void submit(const uint64_t (*cmds)[2], int n)
{
	for (int i = 0; i < n; i++) {
		memcpy(ram + QUEUE_GPA + (prod % (QUEUE_LEN / 16)) * 16, cmds[i], 16);
		prod = (prod + 1) % (2 * QUEUE_LEN / 16);
	}
	vcmdq[VCMDQ_PROD] = prod;
}

static void pte(unsigned long table, int level, unsigned long desc)
{
	unsigned long idx = (GVA >> (39 - 9 * level)) & 511;

	memcpy(ram + table + idx * 8, &desc, 8);
}

int main(int argc, char **argv)
{
	CHECK(argc == 4);
	req_fd = atoi(argv[2]);
	resp_fd = atoi(argv[3]);
	int fd = open("/dev/iommu", O_RDWR);
	int vfd = open(argv[1], O_RDWR);
	CHECK(fd >= 0 && vfd >= 0);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };
	CHECK(ioctl(vfd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0);
	uint32_t dev_id = bind.out_devid, ioas = ioas_alloc(fd);

	/* What the CMDQV offers a VM */
	struct iommu_hw_info_tegra241_cmdqv cinfo;
	struct iommu_hw_info hi = { .size = sizeof(hi), .dev_id = dev_id,
		.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE, .data_len = sizeof(cinfo),
		.data_uptr = (uintptr_t)&cinfo, .in_data_type = IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV };
	CHECK(ioctl(fd, IOMMU_GET_HW_INFO, &hi) == 0);
	CHECK(hi.out_data_type == IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV && cinfo.log2vcmdqs >= 1);

	/* Guest RAM, shared memory of this process, at IOVA = GPA */
	ram = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(ram != MAP_FAILED);
	CHECK(map_fixed(fd, ioas, ram, RAM, 0) == 0);
	struct iommu_hwpt_alloc parent = { .size = sizeof(parent), .dev_id = dev_id,
		.pt_id = ioas, .flags = IOMMU_HWPT_ALLOC_NEST_PARENT };
	CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &parent) == 0);

	/* The CMDQV vIOMMU; its VINTF page mapped (QEMU maps it into the guest) */
	struct iommu_viommu_tegra241_cmdqv vdata = { 0 };
	struct iommu_viommu_alloc va = { .size = sizeof(va),
		.type = IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, .dev_id = dev_id,
		.hwpt_id = parent.out_hwpt_id, .data_len = sizeof(vdata),
		.data_uptr = (uintptr_t)&vdata };
	CHECK(ioctl(fd, IOMMU_VIOMMU_ALLOC, &va) == 0);
	CHECK(vdata.out_vintf_mmap_length == 0x10000);
	volatile uint32_t *vintf = mmap(NULL, vdata.out_vintf_mmap_length,
					PROT_READ | PROT_WRITE, MAP_SHARED, fd,
					vdata.out_vintf_mmap_offset);
	CHECK(vintf != MAP_FAILED);
	vcmdq = vintf;
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = va.out_viommu_id,
		.dev_id = dev_id, .virt_id = VSID };
	CHECK(ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd) == 0);
	struct iommu_veventq_alloc vq = { .size = sizeof(vq), .viommu_id = va.out_viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, .veventq_depth = 4 };
	CHECK(ioctl(fd, IOMMU_VEVENTQ_ALLOC, &vq) == 0);

	/* The guest: a stage-1 table mapping GVA to OLD, a CD, its vSTE */
	memcpy(ram + OLD_GPA, "OLD!", 4);
	memcpy(ram + NEW_GPA, "NEW!", 4);
	for (int l = 0; l < 3; l++)
		pte(PT_GPA + l * 4096UL, l, (PT_GPA + (l + 1) * 4096UL) | LPAE_TABLE);
	pte(PT_GPA + 3 * 4096UL, 3, OLD_GPA | LPAE_PAGE_RW);
	uint64_t cd[8] = {
		CTXDESC_CD_0_TCR_T0SZ(16) | CTXDESC_CD_0_TCR_IRGN0_WBWA |
		CTXDESC_CD_0_TCR_ORGN0_WBWA | CTXDESC_CD_0_TCR_SH0_ISH | CTXDESC_CD_0_TCR_EPD1 |
		CTXDESC_CD_0_V | CTXDESC_CD_0_TCR_IPS_48 | CTXDESC_CD_0_AA64 | CTXDESC_CD_0_R |
		CTXDESC_CD_0_A | CTXDESC_CD_0_ASET | CTXDESC_CD_0_ASID(ASID),
		PT_GPA, 0, ARM_LPAE_MAIR };
	memcpy(ram + CD_GPA, cd, sizeof(cd));
	struct iommu_hwpt_arm_smmuv3 vste = { .ste = {
		STRTAB_STE_0_V | STRTAB_STE_0_CFG_S1_TRANS | CD_GPA,
		STRTAB_STE_1_S1DSS_SSID0 | STRTAB_STE_1_S1C_WBRA << 2 | STRTAB_STE_1_S1C_WBRA << 4 |
		STRTAB_STE_1_S1CSH_ISH } };
	struct iommu_hwpt_alloc nested = { .size = sizeof(nested), .dev_id = dev_id,
		.pt_id = va.out_viommu_id, .data_type = IOMMU_HWPT_DATA_ARM_SMMUV3,
		.data_len = sizeof(vste), .data_uptr = (uintptr_t)&vste };
	CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &nested) == 0);
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at),
		.pt_id = nested.out_hwpt_id };
	CHECK(ioctl(vfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0);

	/* The guest's VCMDQ: memory in guest RAM, LVCMDQ 0 of the VINTF */
	struct iommu_hw_queue_alloc hq = { .size = sizeof(hq), .viommu_id = va.out_viommu_id,
		.type = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, .index = 0,
		.nesting_parent_iova = QUEUE_GPA, .length = QUEUE_LEN };
	CHECK(ioctl(fd, IOMMU_HW_QUEUE_ALLOC, &hq) == 0);
	/* The queue's range is held: it cannot leave the IOAS */
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = ioas, .iova = 0,
		.length = RAM };
	CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &um) == -1 && errno == EBUSY);

	vcmdq[VCMDQ_CONFIG] = 1;	/* the guest enables its queue */
	CHECK(wait_for(VCMDQ_STATUS, 1, 1));

	/* Stale until the guest's own TLBI_NH_VA */
	expect_dma("OLD!");
	pte(PT_GPA + 3 * 4096UL, 3, NEW_GPA | LPAE_PAGE_RW);
	expect_dma("OLD!");
	const uint64_t inval[2][2] = { { CMDQ_OP_TLBI_NH_VA | ASID << 48, GVA | 1 },
				       { CMDQ_OP_CMD_SYNC, 0 } };
	submit(inval, 2);
	CHECK(wait_for(VCMDQ_CONS, 0xffff, 2));
	expect_dma("NEW!");

	/* A command a guest VCMDQ refuses: the queue stops on it, the VMM hears of it */
	memcpy(ram + OLD_GPA, "OLD!", 4);
	pte(PT_GPA + 3 * 4096UL, 3, OLD_GPA | LPAE_PAGE_RW);
	const uint64_t bad[2][2] = { { CMDQ_OP_TLBI_NH_ALL, 0 }, { CMDQ_OP_CMD_SYNC, 0 } };
	submit(bad, 2);
	CHECK(wait_for(VCMDQ_GERROR, 1, 1));
	CHECK(vcmdq[VCMDQ_GERRORN] == 0 && VCMDQ_CONS_ERR(vcmdq[VCMDQ_CONS]) == 1);
	CHECK((vcmdq[VCMDQ_CONS] & 0xffff) == 2);
	struct pollfd pfd = { .fd = vq.out_veventq_fd, .events = POLLIN };
	CHECK(poll(&pfd, 1, 5000) == 1);
	struct {
		struct iommufd_vevent_header hdr;
		struct iommu_vevent_tegra241_cmdqv ev;
	} event;
	CHECK(read(vq.out_veventq_fd, &event, sizeof(event)) == sizeof(event));
	CHECK(event.ev.lvcmdq_err_map[0] == 1 && event.ev.lvcmdq_err_map[1] == 0);
	expect_dma("NEW!");	/* nothing of the refused command ran */

	/* The guest's error handler: a CMD_SYNC over the bad command, then acknowledge */
	const uint64_t sync[2] = { CMDQ_OP_CMD_SYNC, 0 };
	memcpy(ram + QUEUE_GPA + 2 * 16, sync, 16);
	vcmdq[VCMDQ_GERRORN] = vcmdq[VCMDQ_GERROR];
	CHECK(wait_for(VCMDQ_CONS, 0x7fffffff, 4));
	submit(inval, 2);
	CHECK(wait_for(VCMDQ_CONS, 0xffff, 6));
	expect_dma("OLD!");

	/* Queues go before their vIOMMU, then the range may leave the IOAS */
	struct iommu_destroy d = { .size = sizeof(d), .id = hq.out_hw_queue_id };
	CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0);
	CHECK(vcmdq[VCMDQ_STATUS] == 0 || wait_for(VCMDQ_STATUS, 1, 0));
	CHECK(write(req_fd, "q", 1) == 1);
	printf("tegra_vcmdq ok\n");
	return 0;
}

/* A VMM and its guest on an SMMUv3 with a Tegra241 CMDQV, as QEMU's smmuv3-accel runs
 * one, the device doing the DMA (docs/dma_engine.rst): the VMM maps the vIOMMU's VINTF
 * page and the guest's VCMDQ lives in guest RAM; the guest then invalidates by writing
 * commands into its queue and storing PROD through the page, with no
 * IOMMU_HWPT_INVALIDATE. A refused command stops the queue with CONS.ERR, the VMM gets
 * the LVCMDQ error map as a vEVENT, the guest skips the command and goes on. */
#include "smmu_guest.h"

#define GUEST		0x100000ull	/* 1 MiB of guest RAM at IOVA = GPA 0 */
#define GVA		0x7f0000000000ull
#define CD_GPA		0x1000ull
#define QUEUE_GPA	0x30000ull
#define QUEUE_LEN	4096u
#define VSID		0x42
#define ASID		3ull

/* Tegra241 CMDQV LVCMDQ page-0 registers (tegra241-cmdqv.c), in 32-bit words */
#define VCMDQ_CONS	(0x00 / 4)
#define VCMDQ_PROD	(0x04 / 4)
#define VCMDQ_CONFIG	(0x08 / 4)
#define VCMDQ_STATUS	(0x0c / 4)
#define VCMDQ_GERROR	(0x10 / 4)
#define VCMDQ_GERRORN	(0x14 / 4)
#define VCMDQ_CONS_ERR(c) (((c) >> 24) & 0x7f)
#define CERROR_ILL	1

static volatile uint32_t *vcmdq;	/* LVCMDQ 0 in the mapped VINTF page */
static uint32_t prod;

/* Registers show up within a tick (docs/exec.rst): poll them like a driver. */
static int wait_for(int reg, uint32_t mask, uint32_t want)
{
	for (int i = 0; i < 5000; i++) {
		if ((vcmdq[reg] & mask) == want)
			return 1;
		usleep(1000);
	}
	return 0;
}

/* The guest's queue write: the commands at PROD in its RAM, then PROD through the page */
static void submit(struct vmm *v, const uint64_t (*cmds)[2], int n)
{
	for (int i = 0; i < n; i++) {
		memcpy(v->g.ram + QUEUE_GPA + (prod % (QUEUE_LEN / 16)) * 16, cmds[i], 16);
		prod = (prod + 1) % (2 * QUEUE_LEN / 16);
	}
	vcmdq[VCMDQ_PROD] = prod;
}

/* What the guest does instead of an exit to the VMM: TLBI_NH_VA + CMD_SYNC in its queue */
static void invalidate(struct vmm *v, uint64_t va)
{
	const uint64_t cmds[2][2] = { { CMDQ_OP_TLBI_NH_VA | ASID << 48, va | CMDQ_TLBI_1_LEAF },
				      { CMDQ_OP_CMD_SYNC, 0 } };
	submit(v, cmds, 2);
	CHECK(wait_for(VCMDQ_CONS, 0x7fffffff, prod));
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);

	/* What the CMDQV offers a VM */
	struct iommu_hw_info_tegra241_cmdqv cinfo;
	struct iommu_hw_info hi = { .size = sizeof(hi), .dev_id = v.d.devid,
		.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE, .data_len = sizeof(cinfo),
		.data_uptr = (uintptr_t)&cinfo, .in_data_type = IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV };
	CHECK(ioctl(v.fd, IOMMU_GET_HW_INFO, &hi) == 0);
	CHECK(hi.out_data_type == IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV && cinfo.log2vcmdqs >= 1);

	/* The CMDQV vIOMMU on the nest parent; its VINTF page mapped (QEMU maps it into the
	 * guest), a vDEVICE (a SID pair), a vEVENTQ for the CMDQV's error reports */
	struct iommu_viommu_tegra241_cmdqv vdata = { 0 };
	struct iommu_viommu_alloc va = { .size = sizeof(va),
		.type = IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, .dev_id = v.d.devid,
		.hwpt_id = nest_parent(&v), .data_len = sizeof(vdata),
		.data_uptr = (uintptr_t)&vdata };
	CHECK(ioctl(v.fd, IOMMU_VIOMMU_ALLOC, &va) == 0);
	CHECK(vdata.out_vintf_mmap_length == 0x10000);
	vcmdq = mmap(NULL, vdata.out_vintf_mmap_length, PROT_READ | PROT_WRITE, MAP_SHARED,
		     v.fd, vdata.out_vintf_mmap_offset);
	CHECK(vcmdq != MAP_FAILED);
	vdevice_alloc(v.fd, va.out_viommu_id, v.d.devid, VSID);
	struct iommu_veventq_alloc eq = { .size = sizeof(eq), .viommu_id = va.out_viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, .veventq_depth = 4 };
	CHECK(ioctl(v.fd, IOMMU_VEVENTQ_ALLOC, &eq) == 0);

	/* The guest: a stage-1 table mapping GVA -> GPA 0x10000, its CD, its vSTE */
	uint64_t leaf;
	struct iommu_hwpt_arm_smmuv3 ste = smmu_guest_s1(&v.g, CD_GPA, GVA, 0x10000, ASID,
							 &leaf);
	dev_attach(&v.d, hwpt_alloc(v.fd, v.d.devid, va.out_viommu_id, 0,
				    IOMMU_HWPT_DATA_ARM_SMMUV3, &ste, sizeof(ste)));
	dev_enable(&v.d);

	/* The guest's VCMDQ: one page of its RAM, LVCMDQ 0 of the VINTF; the guest enables
	 * it. The queue's range is held: it cannot leave the IOAS while the queue exists. */
	struct iommu_hw_queue_alloc hq = { .size = sizeof(hq), .viommu_id = va.out_viommu_id,
		.type = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, .index = 0,
		.nesting_parent_iova = QUEUE_GPA, .length = QUEUE_LEN };
	CHECK(ioctl(v.fd, IOMMU_HW_QUEUE_ALLOC, &hq) == 0);
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = v.ioas, .length = GUEST };
	CHECK(ioctl(v.fd, IOMMU_IOAS_UNMAP, &um) == -1 && errno == EBUSY);
	vcmdq[VCMDQ_CONFIG] = 1;
	CHECK(wait_for(VCMDQ_STATUS, 1, 1));

	/* Stale until the guest's own TLBI_NH_VA: no IOMMU_HWPT_INVALIDATE */
	nested_stale_flow(&v, GVA, leaf, LPAE_PAGE, 0x10000, 0x20000, invalidate);

	/* A command a guest VCMDQ refuses: the queue stops on it, the VMM hears of it */
	*guest_u64(&v.g, leaf) = 0x10000 | LPAE_PAGE;
	const uint64_t bad[2][2] = { { CMDQ_OP_TLBI_NH_ALL, 0 }, { CMDQ_OP_CMD_SYNC, 0 } };
	uint32_t at = prod;
	submit(&v, bad, 2);
	CHECK(wait_for(VCMDQ_GERROR, 1, 1));
	CHECK(vcmdq[VCMDQ_GERRORN] == 0 && VCMDQ_CONS_ERR(vcmdq[VCMDQ_CONS]) == CERROR_ILL);
	CHECK((vcmdq[VCMDQ_CONS] & 0xffff) == at);
	struct pollfd p = { .fd = eq.out_veventq_fd, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1);
	struct { struct iommufd_vevent_header h; struct iommu_vevent_tegra241_cmdqv e; } ev;
	CHECK(read(eq.out_veventq_fd, &ev, sizeof(ev)) == sizeof(ev));
	CHECK(ev.e.lvcmdq_err_map[0] == 1 && ev.e.lvcmdq_err_map[1] == 0);
	/* nothing of the refused command ran: still the new page */
	CHECK(strcmp(dev_read(&v.d, GVA, 21), "the guest's new page") == 0);

	/* The guest's error handler: a CMD_SYNC over the bad command, then acknowledge */
	const uint64_t sync[2] = { CMDQ_OP_CMD_SYNC, 0 };
	memcpy(v.g.ram + QUEUE_GPA + at * 16, sync, 16);
	vcmdq[VCMDQ_GERRORN] = vcmdq[VCMDQ_GERROR];
	CHECK(wait_for(VCMDQ_CONS, 0x7fffffff, prod));
	invalidate(&v, GVA);
	CHECK(strcmp(dev_read(&v.d, GVA, 21), "the guest's old page") == 0);

	/* The queue goes before its vIOMMU; the program exits with the VINTF page mapped */
	struct iommu_destroy d = { .size = sizeof(d), .id = hq.out_hw_queue_id };
	CHECK(ioctl(v.fd, IOMMU_DESTROY, &d) == 0);
	CHECK(wait_for(VCMDQ_STATUS, 1, 0));
	close(eq.out_veventq_fd);
	printf("tegra_vcmdq ok\n");
	return 0;
}

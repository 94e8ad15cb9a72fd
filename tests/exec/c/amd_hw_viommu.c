/* A VMM and its guest on an AMD-Vi unit with the HW-vIOMMU (a prototype: no kernel has
 * it), the device doing the DMA (docs/dma_engine.rst): the VMM maps the vIOMMU's VF page
 * and the guest's command buffer and event log live in guest RAM; the guest then
 * invalidates by writing INVALIDATE_IOMMU_PAGES and COMPLETION_WAIT into its buffer and
 * storing its tail through the page, with no IOMMU_HWPT_INVALIDATE. A command a guest may
 * not issue stops the buffer and lands in the guest's own event log, the VMM hears of it
 * as a vEVENT, the guest steps over it and goes on. */
#include "amd_guest.h"

#define GUEST		0x80000ull	/* 512 KiB of guest RAM at IOVA = GPA 0 */
#define GVA		0x400000ull
#define GCR3_GPA	0x1000ull
#define CMDBUF_GPA	0x40000ull
#define EVTLOG_GPA	0x41000ull
#define SEM_GPA		0x42000ull
#define RING_LEN	4096u
#define GDOMID		0x33
#define VDEVID		0x100
/* The simulator's prototype uAPI (drivers/amd_vi/uapi.py) */
#define IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE	0x80000003u
#define IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE	0x80000003u
#define IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE 0x80000003u
#define IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE 0x80000004u
struct iommu_viommu_amd_hw {
	uint32_t out_guest_id;
	uint32_t __reserved;
	uint64_t out_vfmmio_mmap_offset;
	uint64_t out_vfmmio_mmap_length;
};
struct iommu_vevent_amd_hw {
	uint32_t status;
	uint32_t __reserved;
};
/* The guest's VF page (drivers/amd_vi/viommu_regs.py), in 32-bit words */
#define VF_CMD_HEAD	(0x00 / 4)
#define VF_CMD_TAIL	(0x08 / 4)
#define VF_EVT_HEAD	(0x10 / 4)
#define VF_EVT_TAIL	(0x18 / 4)
#define VF_STATUS	(0x20 / 4)
#define VF_CONTROL	(0x28 / 4)
#define CONTROL_EVT_LOG_EN (1u << 2)
#define CONTROL_EVT_INT_EN (1u << 3)
#define CONTROL_CMDBUF_EN  (1u << 12)
#define STATUS_EVT_INT	(1u << 1)
#define EVENT_ILLEGAL_COMMAND	5u

static volatile uint32_t *vf;	/* the guest's VF page */
static uint32_t tail, sem;

/* Registers show up within a tick (docs/exec.rst): poll them like a driver. */
static int wait_for(int reg, uint32_t mask, uint32_t want)
{
	for (int i = 0; i < 5000; i++) {
		if ((vf[reg] & mask) == want)
			return 1;
		usleep(1000);
	}
	return 0;
}

/* The guest's buffer write: the commands at its tail in its RAM, then the tail */
static void submit(struct vmm *v, uint32_t (*cmds)[4], int n)
{
	for (int i = 0; i < n; i++) {
		memcpy(v->g.ram + CMDBUF_GPA + tail, cmds[i], 16);
		tail = (tail + 16) % RING_LEN;
	}
	vf[VF_CMD_TAIL] = tail;
}

/* What the guest does instead of an exit to the VMM: INVALIDATE_IOMMU_PAGES of its own
 * DomainID, then COMPLETION_WAIT storing its semaphore (a GPA) */
static void invalidate(struct vmm *v, uint64_t va)
{
	sem++;
	uint32_t cmds[2][4] = { { 0 },
		{ (uint32_t)SEM_GPA | CMD_COMPL_WAIT_STORE, CMD_COMPL_WAIT << 28, sem, 0 } };
	amd_inv_page(cmds[0], va, GDOMID);
	submit(v, cmds, 2);
	CHECK(wait_for(VF_CMD_HEAD, 0xffffffff, tail));
	CHECK(*guest_u64(&v->g, SEM_GPA) == sem);
}

static uint32_t hw_queue(struct vmm *v, uint32_t viommu, uint32_t type, uint64_t gpa)
{
	struct iommu_hw_queue_alloc hq = { .size = sizeof(hq), .viommu_id = viommu,
		.type = type, .index = 0, .nesting_parent_iova = gpa, .length = RING_LEN };
	CHECK(ioctl(v->fd, IOMMU_HW_QUEUE_ALLOC, &hq) == 0);
	return hq.out_hw_queue_id;
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);

	/* The HW vIOMMU on the nest parent: a GuestID; its VF page mapped (the VMM maps it
	 * into the guest), a vDEVICE (a Device ID map entry), a vEVENTQ for the guest's
	 * interrupts */
	struct iommu_viommu_amd_hw vdata = { 0 };
	struct iommu_viommu_alloc va = { .size = sizeof(va),
		.type = IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE, .dev_id = v.d.devid,
		.hwpt_id = nest_parent(&v), .data_len = sizeof(vdata),
		.data_uptr = (uintptr_t)&vdata };
	CHECK(ioctl(v.fd, IOMMU_VIOMMU_ALLOC, &va) == 0);
	CHECK(vdata.out_guest_id >= 1 && vdata.out_vfmmio_mmap_length == 0x1000);
	vf = mmap(NULL, vdata.out_vfmmio_mmap_length, PROT_READ | PROT_WRITE, MAP_SHARED,
		  v.fd, vdata.out_vfmmio_mmap_offset);
	CHECK(vf != MAP_FAILED);
	vdevice_alloc(v.fd, va.out_viommu_id, v.d.devid, VDEVID);
	struct iommu_veventq_alloc eq = { .size = sizeof(eq), .viommu_id = va.out_viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE, .veventq_depth = 4 };
	CHECK(ioctl(v.fd, IOMMU_VEVENTQ_ALLOC, &eq) == 0);

	/* The guest: a v2 table mapping GVA -> GPA 0x5000, its GCR3 table, its DTE (a new
	 * gDomID: a Domain ID map entry) */
	uint64_t leaf;
	struct iommu_hwpt_amd_guest dte = amd_guest_dte(&v.g, GCR3_GPA, GVA, 0x5000, GDOMID,
							&leaf);
	dev_attach(&v.d, hwpt_alloc(v.fd, v.d.devid, va.out_viommu_id, 0,
				    IOMMU_HWPT_DATA_AMD_GUEST, &dte, sizeof(dte)));
	dev_enable(&v.d);

	/* The guest's command buffer and event log: a page of its RAM each, held: they
	 * cannot leave the IOAS while the queues exist. The guest enables them. */
	uint32_t cmdq = hw_queue(&v, va.out_viommu_id, IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE,
				 CMDBUF_GPA);
	hw_queue(&v, va.out_viommu_id, IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE, EVTLOG_GPA);
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = v.ioas, .length = GUEST };
	CHECK(ioctl(v.fd, IOMMU_IOAS_UNMAP, &um) == -1 && errno == EBUSY);
	vf[VF_CONTROL] = CONTROL_CMDBUF_EN | CONTROL_EVT_LOG_EN | CONTROL_EVT_INT_EN;
	CHECK(wait_for(VF_CONTROL, CONTROL_CMDBUF_EN, CONTROL_CMDBUF_EN));

	/* Stale until the guest's own INVALIDATE_IOMMU_PAGES: no IOMMU_HWPT_INVALIDATE */
	nested_stale_flow(&v, GVA, leaf, X86_PAGE, 0x5000, 0x9000, invalidate);

	/* A command a guest may not issue: the buffer stops on it, the record is in the
	 * guest's event log, the VMM hears of the guest's interrupt */
	*guest_u64(&v.g, leaf) = 0x5000 | X86_PAGE;
	uint32_t bad[1][4] = { { 0, CMD_INV_ALL << 28, 0, 0 } };
	uint32_t at = tail;
	submit(&v, bad, 1);
	CHECK(wait_for(VF_STATUS, STATUS_EVT_INT, STATUS_EVT_INT));
	CHECK(vf[VF_CMD_HEAD] == at && vf[VF_EVT_TAIL] == 16);
	const uint32_t *rec = (const uint32_t *)(v.g.ram + EVTLOG_GPA);
	CHECK(rec[1] >> 28 == EVENT_ILLEGAL_COMMAND && rec[2] == CMDBUF_GPA + at);
	struct pollfd p = { .fd = eq.out_veventq_fd, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1);
	struct { struct iommufd_vevent_header h; struct iommu_vevent_amd_hw e; } ev;
	CHECK(read(eq.out_veventq_fd, &ev, sizeof(ev)) == sizeof(ev));
	CHECK(ev.e.status & STATUS_EVT_INT);
	/* nothing of the refused command ran: still the new page */
	CHECK(strcmp(dev_read(&v.d, GVA, 21), "the guest's new page") == 0);

	/* The guest's event handler: consume the log, clear the status, step over the
	 * command; its buffer runs again */
	vf[VF_EVT_HEAD] = vf[VF_EVT_TAIL];
	vf[VF_STATUS] = STATUS_EVT_INT;
	vf[VF_CMD_HEAD] = (at + 16) % RING_LEN;
	invalidate(&v, GVA);
	CHECK(strcmp(dev_read(&v.d, GVA, 21), "the guest's old page") == 0);

	/* The command buffer goes before its vIOMMU; the program exits with the VF page
	 * mapped */
	struct iommu_destroy d = { .size = sizeof(d), .id = cmdq };
	CHECK(ioctl(v.fd, IOMMU_DESTROY, &d) == 0);
	close(eq.out_veventq_fd);
	printf("amd_hw_viommu ok\n");
	return 0;
}

/* Nesting on an ARM SMMUv3, the device doing the DMA: a nest parent over guest RAM, a
 * vIOMMU and a vDEVICE, a guest stage-1 table and CD in guest RAM, a nested HWPT from the
 * guest's vSTE. The device reads and writes through both stages; the guest moves its page
 * and the device still reads the old one (the SMMU's TLB) until the VMM forwards the
 * guest's TLBI_NH_VA through IOMMU_HWPT_INVALIDATE on the vIOMMU. A stage-1 fault reaches
 * the device's status and the vIOMMU's vEVENTQ. */
#include "smmu_guest.h"

#define GUEST	0x100000ull		/* 1 MiB of guest RAM at IOVA = GPA 0 */
#define GVA	0x7f0000000000ull	/* a guest I/O virtual address (stage-1 input) */
#define CD_GPA	0x1000ull
#define ASID	3
#define VSID	0x42

static uint32_t viommu;

static void invalidate(struct vmm *v, uint64_t va)
{
	struct iommu_viommu_arm_smmuv3_invalidate inv = {
		.cmd = { CMDQ_OP_TLBI_NH_VA | ((uint64_t)ASID << 48), va | CMDQ_TLBI_1_LEAF } };
	hwpt_invalidate(v->fd, viommu, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &inv,
			sizeof(inv), 1);
}

int main(int argc, char **argv)
{
	struct vmm v;
	vmm_start(&v, argc, argv, GUEST, 0);
	viommu = viommu_alloc(v.fd, IOMMU_VIOMMU_TYPE_ARM_SMMUV3, v.d.devid, nest_parent(&v));
	vdevice_alloc(v.fd, viommu, v.d.devid, VSID);

	/* the guest: a stage-1 table mapping GVA -> GPA 0x10000, and its CD */
	uint64_t leaf;
	struct iommu_hwpt_arm_smmuv3 ste = smmu_guest_s1(&v.g, CD_GPA, GVA, 0x10000, ASID,
							 &leaf);
	uint32_t nested = hwpt_alloc(v.fd, v.d.devid, viommu, 0, IOMMU_HWPT_DATA_ARM_SMMUV3,
				     &ste, sizeof(ste));
	dev_attach(&v.d, nested);
	dev_enable(&v.d);

	nested_stale_flow(&v, GVA, leaf, LPAE_PAGE, 0x10000, 0x20000, invalidate);

	/* a GVA the guest never mapped: F_TRANSLATION in the device's status and, as the SMMU
	 * reports it, an event for the guest (its vSID) on the vIOMMU's vEVENTQ */
	struct iommu_veventq_alloc q = { .size = sizeof(q), .viommu_id = viommu,
		.type = IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, .veventq_depth = 16 };
	CHECK(ioctl(v.fd, IOMMU_VEVENTQ_ALLOC, &q) == 0);
	CHECK(dev_fault(&v.d, GVA + 0x200000) == 0x10);
	struct pollfd p = { .fd = q.out_veventq_fd, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1);
	struct { struct iommufd_vevent_header h; struct iommu_vevent_arm_smmuv3 e; } ev;
	CHECK(read(q.out_veventq_fd, &ev, sizeof(ev)) == sizeof(ev));
	CHECK((ev.e.evt[0] & 0xff) == 0x10 && ev.e.evt[0] >> 32 == VSID);
	CHECK(ev.e.evt[2] == GVA + 0x200000);
	close(q.out_veventq_fd);

	vmm_end(&v);
	printf("dma_nested_smmu ok\n");
	return 0;
}

/* A VFIO user driver for the simulated PCI function's DMA engine (docs/dma_engine.rst),
 * with the iommufd calls a VMM makes around it and a guest's page tables for nesting. */
#ifndef DMA_H
#define DMA_H
#include "sim.h"
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>

/* BAR0 of every simulated PCI function */
#define DMA_BAR_SIZE	0x2000
#define DMA_ID		0x000
#define DMA_SCRATCH	0x004
#define DMA_CTRL	0x00c
#define DMA_CTRL_PAUSE	(1u << 0)
#define DMA_STATUS	0x020
#define DMA_STATUS_BUSY	 (1u << 0)
#define DMA_STATUS_DONE	 (1u << 1)
#define DMA_STATUS_ERROR (1u << 2)
#define DMA_IRQ_STATUS	0x024
#define DMA_IRQ_ACK	0x028
#define DMA_COUNT	0x02c
#define DMA_ERROR	0x030
#define DMA_ERR_KIND(e)	((e) & 0xff)
#define DMA_ERR_CODE(e)	((e) >> 16)
#define DMA_ERR_ADDR	0x038
#define DMA_SRC		0x080
#define DMA_DST		0x088
#define DMA_LEN		0x090
#define DMA_CMD		0x098
#define DMA_CMD_START	 (1u << 0)
#define DMA_CMD_FROM_DEV (1u << 1)
#define DMA_CMD_IRQ	 (1u << 2)
#define DMA_PASID	0x0a0
#define DMA_BUF		0x1000
#define ERR_FAULT	1
#define ERR_LENGTH	6

struct dev {
	int fd;			/* the VFIO device cdev */
	int efd;		/* the eventfd MSI signals */
	uint32_t devid;
	volatile uint8_t *bar;	/* BAR0, mmapped */
};

static inline uint32_t rd32(struct dev *d, unsigned int off)
{
	return *(volatile uint32_t *)(d->bar + off);
}

static inline void wr32(struct dev *d, unsigned int off, uint32_t v)
{
	*(volatile uint32_t *)(d->bar + off) = v;
}

static inline void wr64(struct dev *d, unsigned int off, uint64_t v)
{
	*(volatile uint64_t *)(d->bar + off) = v;
}

/* Open the device's cdev and bind it to the iommufd. */
static inline void dev_bind(struct dev *d, const char *cdev, int iommufd)
{
	d->fd = open(cdev, O_RDWR);
	CHECK(d->fd >= 0);
	struct vfio_device_bind_iommufd b = { .argsz = sizeof(b), .iommufd = iommufd };
	CHECK(ioctl(d->fd, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);
	d->devid = b.out_devid;
}

static inline void dev_attach(struct dev *d, uint32_t pt_id)
{
	struct vfio_device_attach_iommufd_pt a = { .argsz = sizeof(a), .pt_id = pt_id };
	CHECK(ioctl(d->fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a) == 0);
}

/* Map BAR0, let the function master DMA, and route its MSI to an eventfd. */
static inline void dev_enable(struct dev *d)
{
	struct vfio_region_info r = { .argsz = sizeof(r), .index = VFIO_PCI_BAR0_REGION_INDEX };
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r) == 0);
	CHECK(r.size == DMA_BAR_SIZE && (r.flags & VFIO_REGION_INFO_FLAG_MMAP));
	d->bar = mmap(NULL, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, r.offset);
	CHECK(d->bar != MAP_FAILED);
	CHECK(rd32(d, DMA_ID) == 0x01008e5a);

	struct vfio_region_info c = { .argsz = sizeof(c),
				      .index = VFIO_PCI_CONFIG_REGION_INDEX };
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &c) == 0);
	uint16_t cmd;
	CHECK(pread(d->fd, &cmd, 2, c.offset + PCI_COMMAND) == 2);
	cmd |= PCI_COMMAND_MASTER;
	CHECK(pwrite(d->fd, &cmd, 2, c.offset + PCI_COMMAND) == 2);

	struct vfio_irq_info q = { .argsz = sizeof(q), .index = VFIO_PCI_MSI_IRQ_INDEX };
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_IRQ_INFO, &q) == 0 && q.count == 1);
	d->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(d->efd >= 0);
	struct { struct vfio_irq_set s; int32_t fd; } irq = {
		.s = { .argsz = sizeof(irq), .index = VFIO_PCI_MSI_IRQ_INDEX, .count = 1,
		       .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER },
		.fd = d->efd };
	CHECK(ioctl(d->fd, VFIO_DEVICE_SET_IRQS, &irq) == 0);
}

/* Program one transfer through the mapped registers, ring the doorbell, wait for the
 * completion interrupt; returns STATUS. */
static inline uint32_t dma_run(struct dev *d, uint64_t src, uint64_t dst, uint32_t len,
			       uint32_t dir)
{
	wr64(d, DMA_SRC, src);
	wr64(d, DMA_DST, dst);
	wr64(d, DMA_LEN, len);
	wr32(d, DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ | dir);
	struct pollfd p = { .fd = d->efd, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1);
	uint64_t n;
	CHECK(read(d->efd, &n, 8) == 8 && n == 1);
	wr32(d, DMA_IRQ_ACK, rd32(d, DMA_IRQ_STATUS));
	return rd32(d, DMA_STATUS);
}

/* The device reads len bytes at iova into its buffer; returns the buffer. */
static inline const char *dev_read(struct dev *d, uint64_t iova, uint32_t len)
{
	CHECK(dma_run(d, iova, 0, len, 0) == DMA_STATUS_DONE);
	return (const char *)(d->bar + DMA_BUF);
}

/* The device writes data at iova, from its buffer. */
static inline void dev_write(struct dev *d, uint64_t iova, const void *data, uint32_t len)
{
	memcpy((void *)(d->bar + DMA_BUF + 0x800), data, len);
	CHECK(dma_run(d, 0x800, iova, len, DMA_CMD_FROM_DEV) == DMA_STATUS_DONE);
}

static inline void dev_close(struct dev *d)
{
	munmap((void *)d->bar, DMA_BAR_SIZE);
	close(d->efd);
	close(d->fd);
}

/* -- the VMM's side of nesting -------------------------------------------------------- */
static inline uint32_t hwpt_alloc(int fd, uint32_t dev_id, uint32_t pt_id, uint32_t flags,
				  uint32_t type, void *data, uint32_t len)
{
	struct iommu_hwpt_alloc a = { .size = sizeof(a), .flags = flags, .dev_id = dev_id,
		.pt_id = pt_id, .data_type = type, .data_len = len,
		.data_uptr = (uintptr_t)data };
	CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &a) == 0);
	return a.out_hwpt_id;
}

static inline uint32_t viommu_alloc(int fd, uint32_t type, uint32_t dev_id, uint32_t parent)
{
	struct iommu_viommu_alloc a = { .size = sizeof(a), .type = type, .dev_id = dev_id,
					.hwpt_id = parent };
	CHECK(ioctl(fd, IOMMU_VIOMMU_ALLOC, &a) == 0);
	return a.out_viommu_id;
}

static inline void vdevice_alloc(int fd, uint32_t viommu, uint32_t dev_id, uint64_t virt_id)
{
	struct iommu_vdevice_alloc a = { .size = sizeof(a), .viommu_id = viommu,
					 .dev_id = dev_id, .virt_id = virt_id };
	CHECK(ioctl(fd, IOMMU_VDEVICE_ALLOC, &a) == 0);
}

static inline void hwpt_invalidate(int fd, uint32_t id, uint32_t type, void *entries,
				   uint32_t len, uint32_t num)
{
	struct iommu_hwpt_invalidate c = { .size = sizeof(c), .hwpt_id = id, .data_type = type,
		.data_uptr = (uintptr_t)entries, .entry_len = len, .entry_num = num };
	CHECK(ioctl(fd, IOMMU_HWPT_INVALIDATE, &c) == 0 && c.entry_num == num);
}

/* -- the guest: its RAM is the VMM's mapping at IOVA = GPA ------------------------------ */
struct guest {
	uint8_t *ram;
	uint64_t size;
	uint64_t next;		/* the next free table page (GPA), from the top */
};

static inline uint64_t guest_page(struct guest *g)
{
	g->next -= 4096;
	memset(g->ram + g->next, 0, 4096);
	return g->next;
}

static inline uint64_t *guest_u64(struct guest *g, uint64_t gpa)
{
	return (uint64_t *)(g->ram + gpa);
}

/* A 4-level, 4 KiB-page table (ARM LPAE stage 1 with a 48-bit input, or x86-64): map
 * va -> pa with the format's table and leaf descriptor bits; returns the leaf's GPA. */
static inline uint64_t guest_map(struct guest *g, uint64_t root, uint64_t va, uint64_t pa,
				 uint64_t table_bits, uint64_t leaf_bits)
{
	uint64_t table = root;
	for (int shift = 39; shift > 12; shift -= 9) {
		uint64_t *e = guest_u64(g, table + 8 * ((va >> shift) & 511));
		if (!*e)
			*e = guest_page(g) | table_bits;
		table = *e & 0x000ffffffffff000ull;
	}
	uint64_t leaf = table + 8 * ((va >> 12) & 511);
	*guest_u64(g, leaf) = pa | leaf_bits;
	return leaf;
}

/* -- a VMM: /dev/iommu, the device bound (argv[1], by default vfio0), an IOAS and `size`
 * bytes of shared memory mapped in it at `iova` (guest RAM at IOVA = GPA when 0) ---------- */
struct vmm {
	int fd;
	struct dev d;
	uint32_t ioas;
	struct guest g;
};

static inline void vmm_start(struct vmm *v, int argc, char **argv, uint64_t size,
			     uint64_t iova)
{
	v->fd = open("/dev/iommu", O_RDWR);
	CHECK(v->fd >= 0);
	dev_bind(&v->d, argc > 1 ? argv[1] : "/dev/vfio/devices/vfio0", v->fd);
	v->ioas = ioas_alloc(v->fd);
	v->g.size = v->g.next = size;
	v->g.ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(v->g.ram != MAP_FAILED);
	CHECK(map_fixed(v->fd, v->ioas, v->g.ram, size, iova) == 0);
}

/* A nest parent over the IOAS: the stage the VMM owns */
static inline uint32_t nest_parent(struct vmm *v)
{
	return hwpt_alloc(v->fd, v->d.devid, v->ioas, IOMMU_HWPT_ALLOC_NEST_PARENT,
			  IOMMU_HWPT_DATA_NONE, NULL, 0);
}

static inline void vmm_end(struct vmm *v)
{
	dev_close(&v->d);
	close(v->fd);
	munmap(v->g.ram, v->g.size);
}

/* Nested, attached and enabled: the device reads and writes `va` through the guest's
 * table, whose leaf for it (at GPA `leaf`) maps `old_gpa`; the guest moves the page to
 * `new_gpa` without telling the IOMMU and the device still reads the old one, until
 * `invalidate` forwards the guest's invalidation. */
static inline void nested_stale_flow(struct vmm *v, uint64_t va, uint64_t leaf,
				     uint64_t page_bits, uint64_t old_gpa, uint64_t new_gpa,
				     void (*invalidate)(struct vmm *v, uint64_t va))
{
	char *ram = (char *)v->g.ram;
	strcpy(ram + old_gpa, "the guest's old page");
	CHECK(strcmp(dev_read(&v->d, va, 21), "the guest's old page") == 0);
	dev_write(&v->d, va + 0x100, "from the device", 16);
	CHECK(strcmp(ram + old_gpa + 0x100, "from the device") == 0);
	strcpy(ram + new_gpa, "the guest's new page");
	*guest_u64(&v->g, leaf) = new_gpa | page_bits;
	CHECK(strcmp(dev_read(&v->d, va, 21), "the guest's old page") == 0);  /* the IOTLB */
	invalidate(v, va);
	CHECK(strcmp(dev_read(&v->d, va, 21), "the guest's new page") == 0);
}

/* A transfer from `va`, which nothing maps: an IOMMU fault; returns its code. */
static inline uint32_t dev_fault(struct dev *d, uint64_t va)
{
	CHECK(dma_run(d, va, 0, 8, 0) == DMA_STATUS_ERROR);
	uint32_t e = rd32(d, DMA_ERROR);
	CHECK(DMA_ERR_KIND(e) == ERR_FAULT && *(volatile uint64_t *)(d->bar + DMA_ERR_ADDR) == va);
	return DMA_ERR_CODE(e);
}

/* ARM LPAE stage 1: table = valid|table; page = valid|page, AP[1] (EL0), SH outer, AF, nG */
#define LPAE_TABLE	0x3ull
#define LPAE_PAGE	0xe43ull
/* x86-64: table = P|RW|US|A; page = P|RW|US|A|D */
#define X86_TABLE	0x27ull
#define X86_PAGE	0x67ull
#endif

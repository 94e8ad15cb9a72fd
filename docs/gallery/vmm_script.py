"""A VMM in a dozen lines: bind, map 8 KiB of user memory, attach, one DMA."""
# ruff: noqa: F821 - iommu-sim trace gives the script `machine` and `sizeof`
from iommufd import uapi as u
from iommufd import uapi_vfio as v

DEV = "0000:10:00.0"                       # behind the VT-d unit of the default Machine
fd = machine.open("/dev/iommu")
vfd = machine.open(machine.vfio_cdev(DEV))
bind = v.vfio_device_bind_iommufd(argsz=sizeof(v.vfio_device_bind_iommufd), iommufd=fd)
machine.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
ioas = u.iommu_ioas_alloc(size=sizeof(u.iommu_ioas_alloc))
machine.ioctl(fd, u.IOMMU_IOAS_ALLOC, ioas)
buf = machine.mmap(0x2000)
machine.mem_write(buf, b"hello")
machine.ioctl(fd, u.IOMMU_IOAS_MAP, u.iommu_ioas_map(
    size=sizeof(u.iommu_ioas_map), ioas_id=ioas.out_ioas_id, user_va=buf, length=0x2000,
    iova=0x10000, flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE))
machine.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, v.vfio_device_attach_iommufd_pt(
    argsz=sizeof(v.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id))
assert machine.dma_read(DEV, 0x10000, 5) == b"hello"

"""A type1 container on a Machine, through the ioctl ABI only: the selftest helpers
(:class:`tests.selftest.utils.Iommufd`) plus the VFIO container ioctls."""

from __future__ import annotations

from iommu_sim import Machine
from tests.selftest.utils import Iommufd, sz, uapi, vf

RW = vf.VFIO_DMA_MAP_FLAG_READ | vf.VFIO_DMA_MAP_FLAG_WRITE
MAP_SZ = sz(vf.vfio_iommu_type1_dma_map)
UNMAP_SZ = sz(vf.vfio_iommu_type1_dma_unmap)
INFO_SZ = sz(vf.vfio_iommu_type1_info)
PCI = "0000:00:03.0"


class Container(Iommufd):
    """An iommufd opened as ``path`` (``/dev/iommu`` or the VFIO container node)."""

    def __init__(self, m: Machine, path: str = "/dev/iommu") -> None:
        super().__init__(m, m.open(path))

    def vfio_ioas(self, op: int, ioas: int = 0) -> int:
        cmd = uapi.iommu_vfio_ioas(size=sz(uapi.iommu_vfio_ioas), ioas_id=ioas, op=op)
        self.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        return int(cmd.ioas_id)

    def compat_set(self, ioas: int) -> None:
        self.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, ioas)

    def check_extension(self, ext: int) -> int:
        return self.m.ioctl(self.fd, vf.VFIO_CHECK_EXTENSION, ext)

    def set_iommu(self, iommu_type: int) -> int:
        return self.m.ioctl(self.fd, vf.VFIO_SET_IOMMU, iommu_type)

    def map_dma(self, vaddr: int, iova: int, size: int, flags: int = RW,
                argsz: int = MAP_SZ) -> vf.vfio_iommu_type1_dma_map:
        cmd = vf.vfio_iommu_type1_dma_map(argsz=argsz, flags=flags, vaddr=vaddr, iova=iova,
                                          size=size)
        self.ioctl(vf.VFIO_IOMMU_MAP_DMA, cmd)
        return cmd

    def unmap_dma(self, iova: int, size: int, flags: int = 0, argsz: int = UNMAP_SZ,
                  cmd: vf.vfio_iommu_type1_dma_unmap | None = None) -> int:
        """UNMAP_DMA; returns ``size`` as written back. Pass ``cmd`` to see it after a
        failure."""
        if cmd is None:
            cmd = vf.vfio_iommu_type1_dma_unmap()
        cmd.argsz, cmd.flags, cmd.iova, cmd.size = argsz, flags, iova, size
        self.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, cmd)
        return int(cmd.size)

    def get_info(self, argsz: int, buf: int, zero: bool = True, span: int = 4096) -> bytes:
        """GET_INFO into user memory at ``buf`` pre-filled with 0xAA, zero up to ``argsz``
        as in the selftest (``zero=False``: only ``argsz`` is set); the ``span`` bytes
        read back."""
        self.m.mem_write(buf, b"\xaa" * span)
        self.m.mem_write(buf, argsz.to_bytes(4, "little") + bytes(max(0, argsz - 4) * zero))
        self.ioctl(vf.VFIO_IOMMU_GET_INFO, buf)
        return self.m.mem_read(buf, span)


def mock_machine(devices: int = 1) -> Machine:
    """The selftest mock IOMMU with ``devices`` PCI devices behind it (for device DMA)."""
    return Machine.from_config({
        "iommus": [{"name": "mock0", "driver": "mock"}],
        "devices": [{"name": f"0000:00:{3 + i:02x}.0", "iommu": "mock0"}
                    for i in range(devices)]})


def bind_attach(m: Machine, fd: int, dev: str, pt_id: int) -> int:
    """Bind ``dev``'s VFIO cdev to ``fd`` and attach it to ``pt_id``; the cdev fd."""
    vfd = m.open(m.vfio_cdev(dev))
    bind = vf.vfio_device_bind_iommufd(argsz=sz(vf.vfio_device_bind_iommufd), iommufd=fd)
    m.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, bind)
    at = vf.vfio_device_attach_iommufd_pt(argsz=sz(vf.vfio_device_attach_iommufd_pt),
                                          pt_id=pt_id)
    m.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)
    return vfd

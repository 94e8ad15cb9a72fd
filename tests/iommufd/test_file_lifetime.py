"""An open file lives as long as something holds it: fds in any task and mappings.
Closing /dev/iommu while its vIOMMU page is mapped returns 0 and releases nothing until
the munmap (issue: it used to be EBUSY with three pages leaked)."""

from __future__ import annotations

from iommu_sim import Machine
from tests.selftest.utils import PAGE_SIZE, Iommufd, mock_viommu_region


def test_close_while_mapped_releases_at_munmap() -> None:
    m = Machine.from_config({"iommus": [], "devices": []})
    base = m.kernel_pages_in_use
    t = Iommufd(m)
    length, offset, in_data = mock_viommu_region(t)
    va = m.mmap(length, t.fd, offset)
    m.close(t.fd)  # the mapping holds the file: nothing is released yet
    assert int.from_bytes(m.mem_read(va, 4), "little") == in_data
    assert m.kernel_pages_in_use > base
    m.munmap(va, length)  # the last reference: the context and its objects go
    assert m.kernel_pages_in_use == base


def test_fork_shares_the_mapping_and_the_file() -> None:
    m = Machine.from_config({"iommus": [], "devices": []})
    base = m.kernel_pages_in_use
    t = Iommufd(m)
    length, offset, in_data = mock_viommu_region(t)
    va = m.mmap(length, t.fd, offset)
    child = m.fork()
    m.munmap(va, length)
    m.close(t.fd)
    # the child's fd and its copy of the mapping still hold everything
    assert int.from_bytes(child.mem_read(va, 4), "little") == in_data
    assert m.kernel_pages_in_use > base
    child.exit()
    assert m.kernel_pages_in_use == base
    assert PAGE_SIZE == 4096

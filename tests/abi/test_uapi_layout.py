"""The uAPI modules against the kernel ABI, with every expected number written literally.

Sources of the numbers: reference/uapi.md §1.1, §1.2, §3, §4 and §11;
reference/selftest_catalog.md §2.1-§2.4; include/uapi/linux/vfio.h (torvalds/linux
@02256acf1e81; container layouts and numbers also compiled with gcc against v6.1
<linux/vfio.h>). Nothing here is derived from the code under test.
"""

from __future__ import annotations

import ctypes
import inspect
from typing import Any

import pytest

from iommufd import uapi, uapi_selftest, uapi_vfio
from iommufd.uapi import DataKind, DataTypeError, DataTypeRegistry, UnknownDataType

# ---------------------------------------------------------------------------------------
# Layouts: struct -> (sizeof, {field: (offset, size)})
# Anonymous unions are flattened into their members; the members of iommu_test_cmd's
# union are dotted ("dirty.iova"), with offsets absolute in the 72-byte struct.
# ---------------------------------------------------------------------------------------

U = "__reserved"

LAYOUT: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    # uapi.md §3.1
    "iommu_destroy": (8, {"size": (0, 4), "id": (4, 4)}),
    "iommu_ioas_alloc": (12, {"size": (0, 4), "flags": (4, 4), "out_ioas_id": (8, 4)}),
    "iommu_iova_range": (16, {"start": (0, 8), "last": (8, 8)}),
    "iommu_ioas_iova_ranges": (32, {
        "size": (0, 4), "ioas_id": (4, 4), "num_iovas": (8, 4), U: (12, 4),
        "allowed_iovas": (16, 8), "out_iova_alignment": (24, 8)}),
    "iommu_ioas_allow_iovas": (24, {
        "size": (0, 4), "ioas_id": (4, 4), "num_iovas": (8, 4), U: (12, 4),
        "allowed_iovas": (16, 8)}),
    "iommu_ioas_map": (40, {
        "size": (0, 4), "flags": (4, 4), "ioas_id": (8, 4), U: (12, 4), "user_va": (16, 8),
        "length": (24, 8), "iova": (32, 8)}),
    # Linux 7.3 include/uapi/linux/iommufd.h
    "iommu_ioas_noiommu_get_pa": (40, {
        "size": (0, 4), "flags": (4, 4), "ioas_id": (8, 4), U: (12, 4),
        "iova": (16, 8), "length": (24, 8), "out_phys": (32, 8)}),
    "iommu_ioas_map_file": (40, {
        "size": (0, 4), "flags": (4, 4), "ioas_id": (8, 4), "fd": (12, 4), "start": (16, 8),
        "length": (24, 8), "iova": (32, 8)}),
    "iommu_ioas_copy": (40, {
        "size": (0, 4), "flags": (4, 4), "dst_ioas_id": (8, 4), "src_ioas_id": (12, 4),
        "length": (16, 8), "dst_iova": (24, 8), "src_iova": (32, 8)}),
    "iommu_ioas_unmap": (24, {
        "size": (0, 4), "ioas_id": (4, 4), "iova": (8, 8), "length": (16, 8)}),
    "iommu_option": (24, {
        "size": (0, 4), "option_id": (4, 4), "op": (8, 2), U: (10, 2), "object_id": (12, 4),
        "val64": (16, 8)}),
    "iommu_vfio_ioas": (12, {"size": (0, 4), "ioas_id": (4, 4), "op": (8, 2), U: (10, 2)}),
    "iommu_hwpt_alloc": (48, {
        "size": (0, 4), "flags": (4, 4), "dev_id": (8, 4), "pt_id": (12, 4),
        "out_hwpt_id": (16, 4), U: (20, 4), "data_type": (24, 4), "data_len": (28, 4),
        "data_uptr": (32, 8), "fault_id": (40, 4), "__reserved2": (44, 4)}),
    "iommu_hw_info": (40, {
        "size": (0, 4), "flags": (4, 4), "dev_id": (8, 4), "data_len": (12, 4),
        "data_uptr": (16, 8), "in_data_type": (24, 4), "out_data_type": (24, 4),
        "out_max_pasid_log2": (28, 1), U: (29, 3), "out_capabilities": (32, 8)}),
    "iommu_hwpt_set_dirty_tracking": (16, {
        "size": (0, 4), "flags": (4, 4), "hwpt_id": (8, 4), U: (12, 4)}),
    "iommu_hwpt_get_dirty_bitmap": (48, {
        "size": (0, 4), "hwpt_id": (4, 4), "flags": (8, 4), U: (12, 4), "iova": (16, 8),
        "length": (24, 8), "page_size": (32, 8), "data": (40, 8)}),
    "iommu_hwpt_invalidate": (32, {
        "size": (0, 4), "hwpt_id": (4, 4), "data_uptr": (8, 8), "data_type": (16, 4),
        "entry_len": (20, 4), "entry_num": (24, 4), U: (28, 4)}),
    "iommu_fault_alloc": (16, {
        "size": (0, 4), "flags": (4, 4), "out_fault_id": (8, 4), "out_fault_fd": (12, 4)}),
    "iommu_viommu_alloc": (40, {
        "size": (0, 4), "flags": (4, 4), "type": (8, 4), "dev_id": (12, 4), "hwpt_id": (16, 4),
        "out_viommu_id": (20, 4), "data_len": (24, 4), U: (28, 4), "data_uptr": (32, 8)}),
    "iommu_vdevice_alloc": (24, {
        "size": (0, 4), "viommu_id": (4, 4), "dev_id": (8, 4), "out_vdevice_id": (12, 4),
        "virt_id": (16, 8)}),
    "iommu_ioas_change_process": (8, {"size": (0, 4), U: (4, 4)}),
    "iommu_veventq_alloc": (32, {
        "size": (0, 4), "flags": (4, 4), "viommu_id": (8, 4), "type": (12, 4),
        "veventq_depth": (16, 4), "out_veventq_id": (20, 4), "out_veventq_fd": (24, 4),
        U: (28, 4)}),
    "iommu_hw_queue_alloc": (40, {
        "size": (0, 4), "flags": (4, 4), "viommu_id": (8, 4), "type": (12, 4), "index": (16, 4),
        "out_hw_queue_id": (20, 4), "nesting_parent_iova": (24, 8), "length": (32, 8)}),
    # uapi.md §3.2
    "iommu_hwpt_pgfault": (40, {
        "flags": (0, 4), "dev_id": (4, 4), "pasid": (8, 4), "grpid": (12, 4), "perm": (16, 4),
        U: (20, 4), "addr": (24, 8), "length": (32, 4), "cookie": (36, 4)}),
    "iommu_hwpt_page_response": (8, {"cookie": (0, 4), "code": (4, 4)}),
    "iommufd_vevent_header": (8, {"flags": (0, 4), "sequence": (4, 4)}),
    "iommu_vevent_arm_smmuv3": (32, {"evt": (0, 32)}),
    "iommu_vevent_tegra241_cmdqv": (16, {"lvcmdq_err_map": (0, 16)}),
    # uapi.md §3.3
    "iommu_hwpt_vtd_s1": (24, {
        "flags": (0, 8), "pgtbl_addr": (8, 8), "addr_width": (16, 4), U: (20, 4)}),
    "iommu_hwpt_arm_smmuv3": (16, {"ste": (0, 16)}),
    "iommu_hwpt_amd_guest": (32, {"dte": (0, 32)}),
    "iommu_hw_info_vtd": (24, {"flags": (0, 4), U: (4, 4), "cap_reg": (8, 8), "ecap_reg": (16, 8)}),
    "iommu_hw_info_arm_smmuv3": (40, {
        "flags": (0, 4), U: (4, 4), "idr": (8, 24), "iidr": (32, 4), "aidr": (36, 4)}),
    "iommu_hw_info_tegra241_cmdqv": (8, {
        "flags": (0, 4), "version": (4, 1), "log2vcmdqs": (5, 1), "log2vsids": (6, 1),
        U: (7, 1)}),
    "iommu_hw_info_amd": (16, {"efr": (0, 8), "efr2": (8, 8)}),
    "iommu_hwpt_vtd_s1_invalidate": (24, {
        "addr": (0, 8), "npages": (8, 8), "flags": (16, 4), U: (20, 4)}),
    "iommu_viommu_arm_smmuv3_invalidate": (16, {"cmd": (0, 16)}),
    "iommu_viommu_tegra241_cmdqv": (16, {
        "out_vintf_mmap_offset": (0, 8), "out_vintf_mmap_length": (8, 8)}),
    "iommu_viommu_amd": (4, {"reserved": (0, 4)}),
    # uapi.md §1.2 / §9: VFIO cdev
    "vfio_device_bind_iommufd": (24, {
        "argsz": (0, 4), "flags": (4, 4), "iommufd": (8, 4), "out_devid": (12, 4),
        "token_uuid_ptr": (16, 8)}),
    "vfio_device_attach_iommufd_pt": (16, {
        "argsz": (0, 4), "flags": (4, 4), "pt_id": (8, 4), "pasid": (12, 4)}),
    "vfio_device_detach_iommufd_pt": (12, {"argsz": (0, 4), "flags": (4, 4), "pasid": (8, 4)}),
    # vfio.h (Linux 7.3): the device fd's ioctls and vfio-pci's features
    "vfio_device_info": (24, {
        "argsz": (0, 4), "flags": (4, 4), "num_regions": (8, 4), "num_irqs": (12, 4),
        "cap_offset": (16, 4), "pad": (20, 4)}),
    "vfio_device_info_cap_pci_atomic_comp": (16, {
        "header": (0, 8), "flags": (8, 4), "reserved": (12, 4)}),
    "vfio_region_info": (32, {
        "argsz": (0, 4), "flags": (4, 4), "index": (8, 4), "cap_offset": (12, 4),
        "size": (16, 8), "offset": (24, 8)}),
    "vfio_region_info_cap_type": (16, {"header": (0, 8), "type": (8, 4), "subtype": (12, 4)}),
    "vfio_irq_info": (16, {"argsz": (0, 4), "flags": (4, 4), "index": (8, 4), "count": (12, 4)}),
    "vfio_irq_set": (20, {"argsz": (0, 4), "flags": (4, 4), "index": (8, 4), "start": (12, 4),
                          "count": (16, 4)}),
    "vfio_device_feature": (8, {"argsz": (0, 4), "flags": (4, 4)}),
    "vfio_device_low_power_entry_with_wakeup": (8, {"wakeup_eventfd": (0, 4),
                                                    "reserved": (4, 4)}),
    "vfio_region_dma_range": (16, {"offset": (0, 8), "length": (8, 8)}),
    "vfio_device_feature_dma_buf": (16, {
        "region_index": (0, 4), "open_flags": (4, 4), "flags": (8, 4), "nr_ranges": (12, 4)}),
    # vfio.h: legacy container API
    "vfio_info_cap_header": (8, {"id": (0, 2), "version": (2, 2), "next": (4, 4)}),
    "vfio_group_status": (8, {"argsz": (0, 4), "flags": (4, 4)}),
    "vfio_iommu_type1_info": (24, {
        "argsz": (0, 4), "flags": (4, 4), "iova_pgsizes": (8, 8), "cap_offset": (16, 4),
        "pad": (20, 4)}),
    "vfio_iova_range": (16, {"start": (0, 8), "end": (8, 8)}),
    "vfio_iommu_type1_info_cap_iova_range": (16, {
        "header": (0, 8), "nr_iovas": (8, 4), "reserved": (12, 4)}),
    "vfio_iommu_type1_info_cap_migration": (32, {
        "header": (0, 8), "flags": (8, 4), "pgsize_bitmap": (16, 8),
        "max_dirty_bitmap_size": (24, 8)}),
    "vfio_iommu_type1_info_dma_avail": (12, {"header": (0, 8), "avail": (8, 4)}),
    "vfio_iommu_type1_dma_map": (32, {
        "argsz": (0, 4), "flags": (4, 4), "vaddr": (8, 8), "iova": (16, 8), "size": (24, 8)}),
    "vfio_bitmap": (24, {"pgsize": (0, 8), "size": (8, 8), "data": (16, 8)}),
    "vfio_iommu_type1_dma_unmap": (24, {
        "argsz": (0, 4), "flags": (4, 4), "iova": (8, 8), "size": (16, 8)}),
    "vfio_iommu_type1_dirty_bitmap": (8, {"argsz": (0, 4), "flags": (4, 4)}),
    "vfio_iommu_type1_dirty_bitmap_get": (40, {"iova": (0, 8), "size": (8, 8), "bitmap": (16, 24)}),
    # selftest_catalog.md §2.1
    "iommu_test_cmd": (72, {
        "size": (0, 4), "op": (4, 4), "id": (8, 4), U: (12, 4),
        "add_reserved.start": (16, 8), "add_reserved.length": (24, 8),
        "mock_domain.out_stdev_id": (16, 4), "mock_domain.out_hwpt_id": (20, 4),
        "mock_domain.out_idev_id": (24, 4),
        "mock_domain_flags.out_stdev_id": (16, 4), "mock_domain_flags.out_hwpt_id": (20, 4),
        "mock_domain_flags.out_idev_id": (24, 4), "mock_domain_flags.dev_flags": (28, 4),
        "mock_domain_replace.pt_id": (16, 4),
        "check_map.iova": (16, 8), "check_map.length": (24, 8), "check_map.uptr": (32, 8),
        "check_refs.length": (16, 8), "check_refs.uptr": (24, 8), "check_refs.refs": (32, 4),
        "create_access.out_access_fd": (16, 4), "create_access.flags": (20, 4),
        "destroy_access_pages.access_pages_id": (16, 4),
        "access_pages.flags": (16, 4), "access_pages.out_access_pages_id": (20, 4),
        "access_pages.iova": (24, 8), "access_pages.length": (32, 8),
        "access_pages.uptr": (40, 8),
        "access_rw.iova": (16, 8), "access_rw.length": (24, 8), "access_rw.uptr": (32, 8),
        "access_rw.flags": (40, 4),
        "memory_limit.limit": (16, 4),
        "access_replace_ioas.ioas_id": (16, 4),
        "dirty.flags": (16, 4), "dirty.iova": (24, 8), "dirty.length": (32, 8),
        "dirty.page_size": (40, 8), "dirty.uptr": (48, 8), "dirty.out_nr_dirty": (56, 8),
        "check_iotlb.id": (16, 4), "check_iotlb.iotlb": (20, 4),
        "trigger_iopf.dev_id": (16, 4), "trigger_iopf.pasid": (20, 4),
        "trigger_iopf.grpid": (24, 4), "trigger_iopf.perm": (28, 4),
        "trigger_iopf.addr": (32, 8),
        "check_dev_cache.id": (16, 4), "check_dev_cache.cache": (20, 4),
        "trigger_vevent.dev_id": (16, 4),
        "pasid_attach.pasid": (16, 4), "pasid_attach.pt_id": (20, 4),
        "pasid_replace.pasid": (16, 4), "pasid_replace.pt_id": (20, 4),
        "pasid_detach.pasid": (16, 4),
        "pasid_check.pasid": (16, 4), "pasid_check.hwpt_id": (20, 4),
        "dmabuf_get.length": (16, 4), "dmabuf_get.open_flags": (20, 4),
        "dmabuf_revoke.dmabuf_fd": (16, 4), "dmabuf_revoke.revoked": (20, 4),
        "check_dmabuf.dmabuf_fd": (16, 4), "check_dmabuf.iova": (24, 8),
        "check_dmabuf.length": (32, 8), "check_dmabuf.offset": (40, 8),
        "last": (64, 4)}),
    # selftest_catalog.md §2.4
    "iommu_test_hw_info": (8, {"flags": (0, 4), "test_reg": (4, 4)}),
    "iommu_hwpt_selftest": (8, {"iotlb": (0, 4), "pagetable_type": (4, 4)}),
    "iommu_hwpt_invalidate_selftest": (8, {"flags": (0, 4), "iotlb_id": (4, 4)}),
    "iommu_viommu_selftest": (24, {
        "in_data": (0, 4), "out_data": (4, 4), "out_mmap_offset": (8, 8),
        "out_mmap_length": (16, 8)}),
    "iommu_viommu_invalidate_selftest": (12, {"flags": (0, 4), "vdev_id": (4, 4),
                                              "cache_id": (8, 4)}),
    "iommu_viommu_event_selftest": (4, {"virt_id": (0, 4)}),
}

#: Helper types that only exist because ctypes needs a named type for a C anonymous
#: union or an unnamed struct inside one; covered through their parent's layout.
INTERNAL = {"iommu_hw_info_data_type", "iommu_test_cmd_union"}

MODULES = (uapi, uapi_vfio, uapi_selftest)


def _find(name: str) -> Any:
    for mod in MODULES:
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AssertionError(f"struct {name} is missing")


def _flatten(ctype: Any, prefix: str = "", base: int = 0) -> dict[str, tuple[int, int]]:
    """Leaf fields: anonymous members expanded in place, iommu_test_cmd union members
    expanded as dotted names; arrays and other nested structs are one field."""
    out: dict[str, tuple[int, int]] = {}
    anon = getattr(ctype, "_anonymous_", ())
    for name, ftype, *_ in ctype._fields_:
        desc = getattr(ctype, name)
        off = base + desc.offset
        if name in anon:
            out.update(_flatten(ftype, prefix, off))
        elif ftype.__name__.startswith("iommu_test_cmd_"):
            out.update(_flatten(ftype, f"{prefix}{name}.", off))
        else:
            out[prefix + name] = (off, desc.size)
    return out


def _all_structs() -> set[str]:
    names = set()
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, ctypes.Structure | ctypes.Union)
                    and obj.__module__ == mod.__name__
                    and obj not in (uapi.UapiStruct, uapi.UapiUnion)):
                names.add(name)
    return names


def test_every_struct_is_checked() -> None:
    members = {n for n in _all_structs() if n.startswith("iommu_test_cmd_")}
    assert _all_structs() - members - INTERNAL == set(LAYOUT)


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_layout(name: str) -> None:
    size, fields = LAYOUT[name]
    ctype = _find(name)
    assert ctypes.sizeof(ctype) == size, name
    assert _flatten(ctype) == fields


def test_layout_helpers_match() -> None:
    assert uapi.offsetof(uapi.iommu_hw_info, "out_data_type") == 24
    assert uapi.offsetofend(uapi.iommu_hw_info, "in_data_type") == 28
    assert uapi.offsetofend(uapi.iommu_hw_info, "__reserved") == 32
    assert uapi.fieldsize(uapi.iommu_hw_info_arm_smmuv3, "idr") == 24
    assert uapi.offsetof(uapi_selftest.iommu_test_cmd, "dirty.out_nr_dirty") == 56
    assert uapi.offsetofend(uapi_selftest.iommu_test_cmd, "last") == 68
    assert uapi.offsetofend(uapi_vfio.vfio_iommu_type1_dirty_bitmap_get, "bitmap.data") == 40
    with pytest.raises(AttributeError):
        uapi.offsetof(uapi.iommu_destroy, "nope")


def test_little_endian_bytes_and_round_trip() -> None:
    m = uapi.iommu_ioas_map(size=40, flags=6, ioas_id=2, user_va=0x1122334455667788,
                            length=0x1000, iova=0xABC)
    raw = uapi.struct_bytes(m)
    assert len(raw) == 40
    assert raw[:16] == bytes.fromhex("28000000" "06000000" "02000000" "00000000")
    assert raw[16:24] == bytes.fromhex("8877665544332211")
    back = uapi.from_bytes(uapi.iommu_ioas_map, raw)
    assert (back.user_va, back.iova, uapi.field_int(back, "__reserved")) == (
        0x1122334455667788, 0xABC, 0)


def test_from_bytes_zero_fills_and_truncates() -> None:
    short = uapi.from_bytes(uapi.iommu_hw_info, bytes.fromhex("20000000" "01000000" "05000000"))
    assert (short.size, short.flags, short.dev_id, short.data_len, short.out_capabilities) == (
        32, 1, 5, 0, 0)
    long = uapi.from_bytes(uapi.iommu_destroy, bytes(range(1, 13)))
    assert (long.size, long.id) == (0x04030201, 0x08070605)
    assert uapi.from_bytes(uapi.iommu_destroy, b"").id == 0
    assert uapi.from_bytes(uapi.iommu_destroy, bytearray(b"\x08\0\0\0\x07")).id == 7
    hw = uapi.iommu_hw_info()
    hw.in_data_type = 0xFEEDBEEF
    assert hw.out_data_type == 0xFEEDBEEF
    assert uapi.struct_bytes(hw)[24:28] == bytes.fromhex("efbeedfe")


def test_selftest_union_is_shared() -> None:
    cmd = uapi_selftest.iommu_test_cmd(size=72, op=2)
    cmd.mock_domain.out_hwpt_id = 9
    assert cmd.pasid_attach.pt_id == 9
    assert uapi.struct_bytes(cmd)[20:24] == bytes.fromhex("09000000")


# ---------------------------------------------------------------------------------------
# Requests and the command table (uapi.md §1.1, §1.2; vfio.h)
# ---------------------------------------------------------------------------------------

#: name -> (nr, request, struct, sizeof, min_size)  (uapi.md §1.1)
IOCTLS = {
    "IOMMU_DESTROY": (0x80, 0x3B80, "iommu_destroy", 8, 8),
    "IOMMU_IOAS_ALLOC": (0x81, 0x3B81, "iommu_ioas_alloc", 12, 12),
    "IOMMU_IOAS_ALLOW_IOVAS": (0x82, 0x3B82, "iommu_ioas_allow_iovas", 24, 24),
    "IOMMU_IOAS_COPY": (0x83, 0x3B83, "iommu_ioas_copy", 40, 40),
    "IOMMU_IOAS_IOVA_RANGES": (0x84, 0x3B84, "iommu_ioas_iova_ranges", 32, 32),
    "IOMMU_IOAS_MAP": (0x85, 0x3B85, "iommu_ioas_map", 40, 40),
    "IOMMU_IOAS_UNMAP": (0x86, 0x3B86, "iommu_ioas_unmap", 24, 24),
    "IOMMU_OPTION": (0x87, 0x3B87, "iommu_option", 24, 24),
    "IOMMU_VFIO_IOAS": (0x88, 0x3B88, "iommu_vfio_ioas", 12, 12),
    "IOMMU_HWPT_ALLOC": (0x89, 0x3B89, "iommu_hwpt_alloc", 48, 24),
    "IOMMU_GET_HW_INFO": (0x8A, 0x3B8A, "iommu_hw_info", 40, 32),
    "IOMMU_HWPT_SET_DIRTY_TRACKING": (0x8B, 0x3B8B, "iommu_hwpt_set_dirty_tracking", 16, 16),
    "IOMMU_HWPT_GET_DIRTY_BITMAP": (0x8C, 0x3B8C, "iommu_hwpt_get_dirty_bitmap", 48, 48),
    "IOMMU_HWPT_INVALIDATE": (0x8D, 0x3B8D, "iommu_hwpt_invalidate", 32, 32),
    "IOMMU_FAULT_QUEUE_ALLOC": (0x8E, 0x3B8E, "iommu_fault_alloc", 16, 16),
    "IOMMU_IOAS_MAP_FILE": (0x8F, 0x3B8F, "iommu_ioas_map_file", 40, 40),
    "IOMMU_VIOMMU_ALLOC": (0x90, 0x3B90, "iommu_viommu_alloc", 40, 24),
    "IOMMU_VDEVICE_ALLOC": (0x91, 0x3B91, "iommu_vdevice_alloc", 24, 24),
    "IOMMU_IOAS_CHANGE_PROCESS": (0x92, 0x3B92, "iommu_ioas_change_process", 8, 8),
    "IOMMU_VEVENTQ_ALLOC": (0x93, 0x3B93, "iommu_veventq_alloc", 32, 28),
    "IOMMU_HW_QUEUE_ALLOC": (0x94, 0x3B94, "iommu_hw_queue_alloc", 40, 40),
    "IOMMU_IOAS_NOIOMMU_GET_PA": (0x95, 0x3B95, "iommu_ioas_noiommu_get_pa", 40, 40),
}


def test_ioctl_table() -> None:
    assert [op.name for op in uapi.IOMMUFD_IOCTLS] == list(IOCTLS)
    for op in uapi.IOMMUFD_IOCTLS:
        nr, request, struct, size, min_size = IOCTLS[op.name]
        assert (op.nr, op.request, op.struct.__name__, op.size, op.min_size) == (
            nr, request, struct, size, min_size), op.name
        assert getattr(uapi, op.name) == request
        assert uapi.IOMMUFD_IOCTLS_BY_NR[nr] is op
        assert uapi.IOMMUFD_IOCTLS_BY_NAME[op.name] is op
    assert sorted(uapi.IOMMUFD_IOCTLS_BY_NR) == list(range(0x80, 0x96))


def test_cmd_numbers() -> None:
    assert uapi.IOMMUFD_TYPE == 0x3B
    assert uapi.IOMMUFD_CMD_BASE == 0x80
    expected = {
        "DESTROY": 0x80, "IOAS_ALLOC": 0x81, "IOAS_ALLOW_IOVAS": 0x82, "IOAS_COPY": 0x83,
        "IOAS_IOVA_RANGES": 0x84, "IOAS_MAP": 0x85, "IOAS_UNMAP": 0x86, "OPTION": 0x87,
        "VFIO_IOAS": 0x88, "HWPT_ALLOC": 0x89, "GET_HW_INFO": 0x8A,
        "HWPT_SET_DIRTY_TRACKING": 0x8B, "HWPT_GET_DIRTY_BITMAP": 0x8C,
        "HWPT_INVALIDATE": 0x8D, "FAULT_QUEUE_ALLOC": 0x8E, "IOAS_MAP_FILE": 0x8F,
        "VIOMMU_ALLOC": 0x90, "VDEVICE_ALLOC": 0x91, "IOAS_CHANGE_PROCESS": 0x92,
        "VEVENTQ_ALLOC": 0x93, "HW_QUEUE_ALLOC": 0x94, "IOAS_NOIOMMU_GET_PA": 0x95,
    }
    for name, nr in expected.items():
        assert getattr(uapi, f"IOMMUFD_CMD_{name}") == nr, name
    assert uapi.IOMMU_IOAS_NOIOMMU_GET_PA == 0x3B95


def test_selftest_ioctl() -> None:
    assert uapi_selftest.IOMMU_TEST_CMD == 0x3BA0
    op = uapi_selftest.IOMMU_TEST_IOCTL
    assert (op.nr, op.request, op.size, op.min_size) == (0xA0, 0x3BA0, 72, 68)


def test_vfio_requests() -> None:
    v = uapi_vfio
    assert (v.VFIO_TYPE, v.VFIO_BASE, v.VFIO_API_VERSION) == (0x3B, 100, 0)
    expected = {
        "VFIO_GET_API_VERSION": 0x3B64, "VFIO_CHECK_EXTENSION": 0x3B65,
        "VFIO_SET_IOMMU": 0x3B66, "VFIO_GROUP_GET_STATUS": 0x3B67,
        "VFIO_GROUP_SET_CONTAINER": 0x3B68, "VFIO_GROUP_UNSET_CONTAINER": 0x3B69,
        "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A, "VFIO_IOMMU_GET_INFO": 0x3B70,
        "VFIO_IOMMU_MAP_DMA": 0x3B71, "VFIO_IOMMU_UNMAP_DMA": 0x3B72,
        "VFIO_IOMMU_ENABLE": 0x3B73, "VFIO_IOMMU_DISABLE": 0x3B74,
        "VFIO_IOMMU_DIRTY_PAGES": 0x3B75,
        "VFIO_DEVICE_GET_INFO": 0x3B6B, "VFIO_DEVICE_GET_REGION_INFO": 0x3B6C,
        "VFIO_DEVICE_GET_IRQ_INFO": 0x3B6D, "VFIO_DEVICE_SET_IRQS": 0x3B6E,
        "VFIO_DEVICE_RESET": 0x3B6F, "VFIO_DEVICE_FEATURE": 0x3B75,
        # uapi.md §1.2
        "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76, "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
    }
    for name, request in expected.items():
        assert getattr(v, name) == request, name


def test_vfio_tables() -> None:
    # (request, struct, sizeof, kernel minsz)
    expected = {
        "VFIO_IOMMU_GET_INFO": (0x3B70, "vfio_iommu_type1_info", 24, 16),
        "VFIO_IOMMU_MAP_DMA": (0x3B71, "vfio_iommu_type1_dma_map", 32, 32),
        "VFIO_IOMMU_UNMAP_DMA": (0x3B72, "vfio_iommu_type1_dma_unmap", 24, 24),
        "VFIO_IOMMU_DIRTY_PAGES": (0x3B75, "vfio_iommu_type1_dirty_bitmap", 8, 8),
        "VFIO_DEVICE_BIND_IOMMUFD": (0x3B76, "vfio_device_bind_iommufd", 24, 16),
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT": (0x3B77, "vfio_device_attach_iommufd_pt", 16, 12),
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": (0x3B78, "vfio_device_detach_iommufd_pt", 12, 8),
    }
    ops = uapi_vfio.VFIO_CONTAINER_IOCTLS + uapi_vfio.VFIO_CDEV_IOCTLS
    assert [op.name for op in ops] == list(expected)
    for op in ops:
        assert (op.request, op.struct.__name__, op.size, op.min_size) == expected[op.name]
        assert uapi_vfio.VFIO_IOCTLS_BY_REQUEST[op.request] is op


def test_vfio_device_table() -> None:
    # (request, struct, sizeof, minsz of vfio_main.c / vfio_pci_core.c)
    expected = {
        "VFIO_DEVICE_GET_INFO": (0x3B6B, "vfio_device_info", 24, 16),
        "VFIO_DEVICE_GET_REGION_INFO": (0x3B6C, "vfio_region_info", 32, 32),
        "VFIO_DEVICE_GET_IRQ_INFO": (0x3B6D, "vfio_irq_info", 16, 16),
        "VFIO_DEVICE_SET_IRQS": (0x3B6E, "vfio_irq_set", 20, 20),
        "VFIO_DEVICE_FEATURE": (0x3B75, "vfio_device_feature", 8, 8),
    }
    assert {op.name: (op.request, op.struct.__name__, op.size, op.min_size)
            for op in uapi_vfio.VFIO_DEVICE_IOCTLS} == expected


def test_ioc_helpers() -> None:
    # Numbers computed by gcc from <linux/ioctl.h> (x86_64).
    assert uapi._IO(";", 0x80) == 0x3B80
    assert uapi._IO(0x3B, 118) == 0x3B76
    assert uapi._IOR("Q", 3, 24) == 0x80185103
    assert uapi._IOW("Q", 3, 24) == 0x40185103
    assert uapi._IOWR("Q", 3, uapi.iommu_vdevice_alloc) == 0xC0185103
    assert uapi._IOC(0, ";", 0xA0, 0) == 0x3BA0
    cmd = 0xC0185103
    assert (uapi._IOC_DIR(cmd), uapi._IOC_TYPE(cmd), uapi._IOC_NR(cmd), uapi._IOC_SIZE(cmd)) == (
        3, ord("Q"), 3, 24)
    with pytest.raises(ValueError):
        uapi._IO(";", 0x100)
    with pytest.raises(ValueError):
        uapi._IOR(";", 1, 1 << 14)


# ---------------------------------------------------------------------------------------
# Enums and flags (uapi.md §4, §1.2; vfio.h; selftest_catalog.md §2.2-§2.3)
# ---------------------------------------------------------------------------------------

ENUMS = {
    # iommufd_ioas_map_flags
    "IOMMU_IOAS_MAP_FIXED_IOVA": 1, "IOMMU_IOAS_MAP_WRITEABLE": 2,
    "IOMMU_IOAS_MAP_READABLE": 4,
    # iommufd_option / iommufd_option_ops
    "IOMMU_OPTION_RLIMIT_MODE": 0, "IOMMU_OPTION_HUGE_PAGES": 1,
    "IOMMU_OPTION_OP_SET": 0, "IOMMU_OPTION_OP_GET": 1,
    # iommufd_vfio_ioas_op
    "IOMMU_VFIO_IOAS_GET": 0, "IOMMU_VFIO_IOAS_SET": 1, "IOMMU_VFIO_IOAS_CLEAR": 2,
    # iommufd_hwpt_alloc_flags
    "IOMMU_HWPT_ALLOC_NEST_PARENT": 1, "IOMMU_HWPT_ALLOC_DIRTY_TRACKING": 2,
    "IOMMU_HWPT_FAULT_ID_VALID": 4, "IOMMU_HWPT_ALLOC_PASID": 8,
    # iommu_hwpt_vtd_s1_flags
    "IOMMU_VTD_S1_SRE": 1, "IOMMU_VTD_S1_EAFE": 2, "IOMMU_VTD_S1_WPE": 4,
    # iommu_hwpt_data_type
    "IOMMU_HWPT_DATA_NONE": 0, "IOMMU_HWPT_DATA_VTD_S1": 1, "IOMMU_HWPT_DATA_ARM_SMMUV3": 2,
    "IOMMU_HWPT_DATA_AMD_GUEST": 3,
    # hw_info flags
    "IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17": 1,
    "IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI": 1,
    # iommu_hw_info_type
    "IOMMU_HW_INFO_TYPE_NONE": 0, "IOMMU_HW_INFO_TYPE_DEFAULT": 0,
    "IOMMU_HW_INFO_TYPE_INTEL_VTD": 1, "IOMMU_HW_INFO_TYPE_ARM_SMMUV3": 2,
    "IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV": 3, "IOMMU_HW_INFO_TYPE_AMD": 4,
    # iommufd_hw_capabilities
    "IOMMU_HW_CAP_DIRTY_TRACKING": 1, "IOMMU_HW_CAP_PCI_PASID_EXEC": 2,
    "IOMMU_HW_CAP_PCI_PASID_PRIV": 4, "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED": 8,
    # iommufd_hw_info_flags
    "IOMMU_HW_INFO_FLAG_INPUT_TYPE": 1,
    # dirty tracking
    "IOMMU_HWPT_DIRTY_TRACKING_ENABLE": 1, "IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR": 1,
    # iommu_hwpt_invalidate_data_type / vtd invalidate flags
    "IOMMU_HWPT_INVALIDATE_DATA_VTD_S1": 0, "IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3": 1,
    "IOMMU_VTD_INV_FLAGS_LEAF": 1,
    # page faults
    "IOMMU_PGFAULT_FLAGS_PASID_VALID": 1, "IOMMU_PGFAULT_FLAGS_LAST_PAGE": 2,
    "IOMMU_PGFAULT_PERM_READ": 1, "IOMMU_PGFAULT_PERM_WRITE": 2, "IOMMU_PGFAULT_PERM_EXEC": 4,
    "IOMMU_PGFAULT_PERM_PRIV": 8,
    "IOMMUFD_PAGE_RESP_SUCCESS": 0, "IOMMUFD_PAGE_RESP_INVALID": 1,
    # iommu_viommu_type
    "IOMMU_VIOMMU_TYPE_DEFAULT": 0, "IOMMU_VIOMMU_TYPE_ARM_SMMUV3": 1,
    "IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV": 2, "IOMMU_VIOMMU_TYPE_AMD": 3,
    # vEVENTQ
    "IOMMU_VEVENTQ_FLAG_LOST_EVENTS": 1,
    "IOMMU_VEVENTQ_TYPE_DEFAULT": 0, "IOMMU_VEVENTQ_TYPE_ARM_SMMUV3": 1,
    "IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV": 2,
    # iommu_hw_queue_type
    "IOMMU_HW_QUEUE_TYPE_DEFAULT": 0, "IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV": 1,
}

VFIO_CONSTANTS = {
    "VFIO_DEVICE_BIND_FLAG_TOKEN": 1, "VFIO_DEVICE_ATTACH_PASID": 1,
    "VFIO_DEVICE_DETACH_PASID": 1,
    "VFIO_TYPE1_IOMMU": 1, "VFIO_SPAPR_TCE_IOMMU": 2, "VFIO_TYPE1v2_IOMMU": 3,
    "VFIO_DMA_CC_IOMMU": 4, "VFIO_EEH": 5, "VFIO_TYPE1_NESTING_IOMMU": 6,
    "__VFIO_RESERVED_TYPE1_NESTING_IOMMU": 6, "VFIO_SPAPR_TCE_v2_IOMMU": 7,
    "VFIO_NOIOMMU_IOMMU": 8, "VFIO_UNMAP_ALL": 9, "VFIO_UPDATE_VADDR": 10,
    "VFIO_DMA_MAP_FLAG_READ": 1, "VFIO_DMA_MAP_FLAG_WRITE": 2, "VFIO_DMA_MAP_FLAG_VADDR": 4,
    "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP": 1, "VFIO_DMA_UNMAP_FLAG_ALL": 2,
    "VFIO_DMA_UNMAP_FLAG_VADDR": 4,
    "VFIO_IOMMU_INFO_PGSIZES": 1, "VFIO_IOMMU_INFO_CAPS": 2,
    "VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE": 1, "VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION": 2,
    "VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL": 3,
    "VFIO_IOMMU_DIRTY_PAGES_FLAG_START": 1, "VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP": 2,
    "VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP": 4,
    "VFIO_GROUP_FLAGS_VIABLE": 1, "VFIO_GROUP_FLAGS_CONTAINER_SET": 2,
    "VFIO_DEVICE_FLAGS_RESET": 1, "VFIO_DEVICE_FLAGS_PCI": 2, "VFIO_DEVICE_FLAGS_CAPS": 0x80,
    "VFIO_REGION_INFO_FLAG_READ": 1, "VFIO_REGION_INFO_FLAG_WRITE": 2,
    "VFIO_REGION_INFO_FLAG_MMAP": 4, "VFIO_REGION_INFO_FLAG_CAPS": 8,
    "VFIO_REGION_INFO_CAP_TYPE": 2, "VFIO_REGION_INFO_CAP_MSIX_MAPPABLE": 3,
    "VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP": 5,
    "VFIO_IRQ_INFO_EVENTFD": 1, "VFIO_IRQ_INFO_MASKABLE": 2, "VFIO_IRQ_INFO_AUTOMASKED": 4,
    "VFIO_IRQ_INFO_NORESIZE": 8,
    "VFIO_IRQ_SET_DATA_NONE": 1, "VFIO_IRQ_SET_DATA_BOOL": 2, "VFIO_IRQ_SET_DATA_EVENTFD": 4,
    "VFIO_IRQ_SET_ACTION_MASK": 8, "VFIO_IRQ_SET_ACTION_UNMASK": 0x10,
    "VFIO_IRQ_SET_ACTION_TRIGGER": 0x20, "VFIO_IRQ_SET_DATA_TYPE_MASK": 7,
    "VFIO_IRQ_SET_ACTION_TYPE_MASK": 0x38,
    "VFIO_PCI_BAR0_REGION_INDEX": 0, "VFIO_PCI_ROM_REGION_INDEX": 6,
    "VFIO_PCI_CONFIG_REGION_INDEX": 7, "VFIO_PCI_VGA_REGION_INDEX": 8,
    "VFIO_PCI_NUM_REGIONS": 9, "VFIO_PCI_INTX_IRQ_INDEX": 0, "VFIO_PCI_MSI_IRQ_INDEX": 1,
    "VFIO_PCI_MSIX_IRQ_INDEX": 2, "VFIO_PCI_ERR_IRQ_INDEX": 3, "VFIO_PCI_REQ_IRQ_INDEX": 4,
    "VFIO_PCI_NUM_IRQS": 5, "VFIO_PCI_OFFSET_SHIFT": 40,
    "VFIO_DEVICE_FEATURE_MASK": 0xFFFF, "VFIO_DEVICE_FEATURE_GET": 1 << 16,
    "VFIO_DEVICE_FEATURE_SET": 1 << 17, "VFIO_DEVICE_FEATURE_PROBE": 1 << 18,
    "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN": 0, "VFIO_DEVICE_FEATURE_MIGRATION": 1,
    "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE": 2, "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY": 3,
    "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP": 4,
    "VFIO_DEVICE_FEATURE_LOW_POWER_EXIT": 5, "VFIO_DEVICE_FEATURE_DMA_LOGGING_START": 6,
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP": 7, "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT": 8,
    "VFIO_DEVICE_FEATURE_MIG_DATA_SIZE": 9, "VFIO_DEVICE_FEATURE_BUS_MASTER": 10,
    "VFIO_DEVICE_FEATURE_DMA_BUF": 11, "VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2": 12,
    "VFIO_DEVICE_FEATURE_ZPCI_ERROR": 13,
}

SELFTEST_CONSTANTS = {
    "IOMMU_TEST_OP_ADD_RESERVED": 1, "IOMMU_TEST_OP_MOCK_DOMAIN": 2,
    "IOMMU_TEST_OP_MD_CHECK_MAP": 3, "IOMMU_TEST_OP_MD_CHECK_REFS": 4,
    "IOMMU_TEST_OP_CREATE_ACCESS": 5, "IOMMU_TEST_OP_DESTROY_ACCESS_PAGES": 6,
    "IOMMU_TEST_OP_ACCESS_PAGES": 7, "IOMMU_TEST_OP_ACCESS_RW": 8,
    "IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT": 9, "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE": 10,
    "IOMMU_TEST_OP_ACCESS_REPLACE_IOAS": 11, "IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS": 12,
    "IOMMU_TEST_OP_DIRTY": 13, "IOMMU_TEST_OP_MD_CHECK_IOTLB": 14,
    "IOMMU_TEST_OP_TRIGGER_IOPF": 15, "IOMMU_TEST_OP_DEV_CHECK_CACHE": 16,
    "IOMMU_TEST_OP_TRIGGER_VEVENT": 17, "IOMMU_TEST_OP_PASID_ATTACH": 18,
    "IOMMU_TEST_OP_PASID_REPLACE": 19, "IOMMU_TEST_OP_PASID_DETACH": 20,
    "IOMMU_TEST_OP_PASID_CHECK_HWPT": 21, "IOMMU_TEST_OP_DMABUF_GET": 22,
    "IOMMU_TEST_OP_DMABUF_REVOKE": 23, "IOMMU_TEST_OP_MD_CHECK_DMABUF": 24,
    "MOCK_APERTURE_START": 0x0100_0000, "MOCK_APERTURE_LAST": 0x7FFF_FFFF,
    "MOCK_PAGE_SIZE": 2048, "MOCK_HUGE_PAGE_SIZE": 1 << 20,
    "MOCK_IOMMUPT_DEFAULT": 0, "MOCK_IOMMUPT_HUGE": 1, "MOCK_IOMMUPT_AMDV1": 2,
    "MOCK_FLAGS_ACCESS_WRITE": 1, "MOCK_FLAGS_ACCESS_SYZ": 1 << 16,
    "MOCK_ACCESS_RW_WRITE": 1, "MOCK_ACCESS_RW_SLOW_PATH": 4,
    "MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES": 1,
    "MOCK_FLAGS_DEVICE_NO_DIRTY": 1, "MOCK_FLAGS_DEVICE_HUGE_IOVA": 2,
    "MOCK_FLAGS_DEVICE_PASID": 4,
    "MOCK_NESTED_DOMAIN_IOTLB_ID_MAX": 3, "MOCK_NESTED_DOMAIN_IOTLB_NUM": 4,
    "MOCK_DEV_CACHE_ID_MAX": 3, "MOCK_DEV_CACHE_NUM": 4,
    "IOMMU_TEST_PASID_RESERVED": 1024, "MOCK_PASID_WIDTH": 20,
    "IOMMU_HW_INFO_TYPE_SELFTEST": 0xFEEDBEEF, "IOMMU_HW_INFO_SELFTEST_REGVAL": 0xDEADBEEF,
    "IOMMU_HWPT_DATA_SELFTEST": 0xDEAD, "IOMMU_TEST_IOTLB_DEFAULT": 0x0BADBEEF,
    "IOMMU_TEST_DEV_CACHE_DEFAULT": 0x00BADDAD,
    "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST": 0xDEADBEEF,
    "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID": 0x0DADBEEF,
    "IOMMU_TEST_INVALIDATE_FLAG_ALL": 1,
    "IOMMU_VIOMMU_TYPE_SELFTEST": 0xDEADBEEF,
    "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST": 0xDEADBEEF,
    "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID": 0x0DADBEEF,
    "IOMMU_VEVENTQ_TYPE_SELFTEST": 0xBEEFBEEF,
    "IOMMU_HW_QUEUE_TYPE_SELFTEST": 0xDEADBEEF, "IOMMU_TEST_HW_QUEUE_MAX": 2,
    "IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX": 1 << 19, "VEVENTQ_MAX_DEPTH": 1 << 19,
}


@pytest.mark.parametrize(("module", "table"), [
    (uapi, ENUMS), (uapi_vfio, VFIO_CONSTANTS), (uapi_selftest, SELFTEST_CONSTANTS)])
def test_constants(module: Any, table: dict[str, int]) -> None:
    wrong = {n: getattr(module, n, None) for n, v in table.items()
             if getattr(module, n, None) != v}
    assert not wrong


# ---------------------------------------------------------------------------------------
# Data type registry
# ---------------------------------------------------------------------------------------

#: (kind, value) -> (name, struct, min_len): upstream and selftest types.
REGISTERED = {
    ("hwpt_data", 0): ("IOMMU_HWPT_DATA_NONE", None, 0),
    ("hwpt_data", 1): ("IOMMU_HWPT_DATA_VTD_S1", "iommu_hwpt_vtd_s1", 24),
    ("hwpt_data", 2): ("IOMMU_HWPT_DATA_ARM_SMMUV3", "iommu_hwpt_arm_smmuv3", 16),
    ("hwpt_data", 3): ("IOMMU_HWPT_DATA_AMD_GUEST", "iommu_hwpt_amd_guest", 32),
    ("hwpt_data", 0xDEAD): ("IOMMU_HWPT_DATA_SELFTEST", "iommu_hwpt_selftest", 4),
    ("hw_info", 0): ("IOMMU_HW_INFO_TYPE_NONE", None, 0),
    ("hw_info", 1): ("IOMMU_HW_INFO_TYPE_INTEL_VTD", "iommu_hw_info_vtd", 24),
    ("hw_info", 2): ("IOMMU_HW_INFO_TYPE_ARM_SMMUV3", "iommu_hw_info_arm_smmuv3", 40),
    ("hw_info", 3): ("IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV", "iommu_hw_info_tegra241_cmdqv", 8),
    ("hw_info", 4): ("IOMMU_HW_INFO_TYPE_AMD", "iommu_hw_info_amd", 16),
    ("hw_info", 0xFEEDBEEF): ("IOMMU_HW_INFO_TYPE_SELFTEST", "iommu_test_hw_info", 8),
    ("hwpt_invalidate", 0): ("IOMMU_HWPT_INVALIDATE_DATA_VTD_S1",
                             "iommu_hwpt_vtd_s1_invalidate", 24),
    ("hwpt_invalidate", 0xDEADBEEF): ("IOMMU_HWPT_INVALIDATE_DATA_SELFTEST",
                                      "iommu_hwpt_invalidate_selftest", 8),
    ("viommu_invalidate", 1): ("IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3",
                               "iommu_viommu_arm_smmuv3_invalidate", 0),
    ("viommu_invalidate", 0xDEADBEEF): ("IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST",
                                        "iommu_viommu_invalidate_selftest", 0),
    ("viommu", 0): ("IOMMU_VIOMMU_TYPE_DEFAULT", None, 0),
    ("viommu", 1): ("IOMMU_VIOMMU_TYPE_ARM_SMMUV3", None, 0),
    ("viommu", 2): ("IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV", "iommu_viommu_tegra241_cmdqv", 16),
    ("viommu", 3): ("IOMMU_VIOMMU_TYPE_AMD", "iommu_viommu_amd", 4),
    ("viommu", 0xDEADBEEF): ("IOMMU_VIOMMU_TYPE_SELFTEST", "iommu_viommu_selftest", 8),
    ("veventq", 0): ("IOMMU_VEVENTQ_TYPE_DEFAULT", None, 0),
    ("veventq", 1): ("IOMMU_VEVENTQ_TYPE_ARM_SMMUV3", "iommu_vevent_arm_smmuv3", 32),
    ("veventq", 2): ("IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV", "iommu_vevent_tegra241_cmdqv", 16),
    ("veventq", 0xBEEFBEEF): ("IOMMU_VEVENTQ_TYPE_SELFTEST", "iommu_viommu_event_selftest", 4),
    ("hw_queue", 0): ("IOMMU_HW_QUEUE_TYPE_DEFAULT", None, 0),
    ("hw_queue", 1): ("IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV", None, 0),
    ("hw_queue", 0xDEADBEEF): ("IOMMU_HW_QUEUE_TYPE_SELFTEST", None, 0),
}


def test_registry_prepopulated() -> None:
    got = {(e.kind.value, e.value): (e.name, None if e.struct is None else e.struct.__name__,
                                     e.min_len) for e in uapi.DATA_TYPES}
    # Drivers may add types through the iommufd_uapi_data_types hook (e.g. the AMD
    # prototype); the upstream ones must all be there, unchanged.
    assert {k: v for k, v in got.items() if k in REGISTERED} == REGISTERED
    entry = uapi.lookup_data_type(DataKind.HWPT_DATA, 1)
    assert entry.struct is uapi.iommu_hwpt_vtd_s1 and entry.size == 24
    assert uapi.find_data_type("veventq", 7) is None
    assert ("hw_info", 4) in uapi.DATA_TYPES
    assert [e.value for e in uapi.data_types("hwpt_data")] == [0, 1, 2, 3, 0xDEAD]
    assert uapi.DATA_TYPES.lookup_name("viommu", "IOMMU_VIOMMU_TYPE_AMD").value == 3


def test_registry_register_lookup_unregister() -> None:
    class my_hwpt(ctypes.LittleEndianStructure):
        _fields_ = [("root", ctypes.c_uint64), ("levels", ctypes.c_uint32),
                    ("pad", ctypes.c_uint32)]

    entry = uapi.register_data_type("hwpt_data", "IOMMU_HWPT_DATA_MY_IOMMU", 0x1000, my_hwpt,
                                    min_len=12)
    try:
        assert uapi.lookup_data_type("hwpt_data", 0x1000) is entry
        assert (entry.kind, entry.min_len, entry.size) == (DataKind.HWPT_DATA, 12, 16)
        # The same number in another kind is a different type.
        other = uapi.register_data_type("viommu", "MY_VIOMMU", 0x1000, None)
        assert uapi.unregister_data_type("viommu", 0x1000) is other
    finally:
        assert uapi.unregister_data_type("hwpt_data", 0x1000) is entry
    assert uapi.find_data_type("hwpt_data", 0x1000) is None
    with pytest.raises(UnknownDataType, match="0x1000"):
        uapi.lookup_data_type("hwpt_data", 0x1000)


def test_registry_refuses_duplicates() -> None:
    reg = uapi.DATA_TYPES.copy()
    with pytest.raises(DataTypeError, match=r"0x1 is already registered as IOMMU_HWPT_DATA_VTD_S1"):
        reg.register("hwpt_data", "IOMMU_HWPT_DATA_OTHER", 1, uapi.iommu_hwpt_vtd_s1)
    with pytest.raises(DataTypeError, match="IOMMU_HWPT_DATA_VTD_S1"):
        reg.register("hwpt_data", "IOMMU_HWPT_DATA_VTD_S1", 1, uapi.iommu_hwpt_vtd_s1, 24)
    with pytest.raises(DataTypeError, match="name IOMMU_HW_INFO_TYPE_AMD"):
        reg.register("hw_info", "IOMMU_HW_INFO_TYPE_AMD", 0x77, uapi.iommu_hw_info_amd)
    with pytest.raises(DataTypeError, match="0xdeadbeef"):
        reg.register("viommu", "X", 0xDEADBEEF, None)
    # the failed attempts changed nothing
    assert len(reg) == len(uapi.DATA_TYPES)


def test_registry_validates_arguments() -> None:
    reg = DataTypeRegistry()
    with pytest.raises(DataTypeError, match="unknown data kind"):
        reg.register("page_table", "X", 1, None)
    with pytest.raises(DataTypeError, match="__u32"):
        reg.register("hwpt_data", "X", 1 << 32, None)
    with pytest.raises(DataTypeError, match="__u32"):
        reg.register("hwpt_data", "X", -1, None)
    with pytest.raises(DataTypeError, match="ctypes"):
        reg.register("hwpt_data", "X", 1, int)  # type: ignore[arg-type]
    with pytest.raises(DataTypeError, match="min_len"):
        reg.register("hwpt_data", "X", 1, uapi.iommu_hwpt_vtd_s1, 25)
    with pytest.raises(DataTypeError, match="non-empty"):
        reg.register("hwpt_data", "", 1, None)
    assert len(reg) == 0
    e = reg.register(DataKind.VEVENTQ, "Y", 9, uapi.iommu_vevent_arm_smmuv3)
    assert e.min_len == 32 and reg.types("veventq") == (e,)


def test_selftest_registration_is_idempotent() -> None:
    reg = DataTypeRegistry()
    uapi_selftest.register_selftest_types(reg)
    uapi_selftest.register_selftest_types(reg)
    assert len(reg) == 7
    assert reg.lookup("hwpt_invalidate", 0xDEADBEEF).struct is (
        uapi_selftest.iommu_hwpt_invalidate_selftest)
    assert reg.lookup("viommu_invalidate", 0xDEADBEEF).struct is (
        uapi_selftest.iommu_viommu_invalidate_selftest)

"""The iommufd selftest ABI (``drivers/iommu/iommufd/iommufd_test.h``, CONFIG_IOMMUFD_TEST).

``IOMMU_TEST_CMD`` drives the mock IOMMU driver; the mock's payload types use numbers
chosen not to collide with any upstream type. This ABI is selftest-private and changes
between kernels; this is the newest form found (see reference/selftest_catalog.md §0, §2):

* ``iommufd_test.h`` at Aarav90-cpu/linux-kotlin@a663adb68e0e (2026 code, generic-pt mock:
  ``MOCK_PAGE_SIZE`` 2048, ``iommu_hwpt_selftest.pagetable_type``, ops up to
  ``DMABUF_REVOKE``), cross-checked with ziuziakowska/linux@392448cb0f3e and
  torvalds/linux@20896914da8a (v6.17 era);
* ``IOMMU_TEST_OP_MD_CHECK_DMABUF`` and ``check_dmabuf``: jgunthorpe/linux@7815c190f793
  (maintainer dev tree only);
* ``MOCK_IOMMUPT_AMDV1``: present on one side of a merge conflict only;
* ``MOCK_FLAGS_DEVICE_HUGE_IOVA``: v6.18 and older (the newest mock rejects it).

Importing this module registers the selftest data types in :data:`iommufd.uapi.DATA_TYPES`
(the simulated kernel is always built with CONFIG_IOMMUFD_TEST).
"""

from __future__ import annotations

import ctypes
from typing import Final

from iommufd.uapi import (
    _IO,
    DATA_TYPES,
    IOMMUFD_CMD_BASE,
    IOMMUFD_TYPE,
    DataKind,
    DataTypeRegistry,
    IoctlDesc,
    PayloadStruct,
    UapiStruct,
    UapiUnion,
    ioctl_op,
    offsetofend,
)

_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

# --- IOMMU_TEST_CMD ops -------------------------------------------------------------------

IOMMU_TEST_OP_ADD_RESERVED: Final = 1
IOMMU_TEST_OP_MOCK_DOMAIN: Final = 2
IOMMU_TEST_OP_MD_CHECK_MAP: Final = 3
IOMMU_TEST_OP_MD_CHECK_REFS: Final = 4
IOMMU_TEST_OP_CREATE_ACCESS: Final = 5
IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: Final = 6
IOMMU_TEST_OP_ACCESS_PAGES: Final = 7
IOMMU_TEST_OP_ACCESS_RW: Final = 8
IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: Final = 9
IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: Final = 10
IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: Final = 11
IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: Final = 12
IOMMU_TEST_OP_DIRTY: Final = 13
IOMMU_TEST_OP_MD_CHECK_IOTLB: Final = 14
IOMMU_TEST_OP_TRIGGER_IOPF: Final = 15
IOMMU_TEST_OP_DEV_CHECK_CACHE: Final = 16
IOMMU_TEST_OP_TRIGGER_VEVENT: Final = 17
IOMMU_TEST_OP_PASID_ATTACH: Final = 18
IOMMU_TEST_OP_PASID_REPLACE: Final = 19
IOMMU_TEST_OP_PASID_DETACH: Final = 20
IOMMU_TEST_OP_PASID_CHECK_HWPT: Final = 21
IOMMU_TEST_OP_DMABUF_GET: Final = 22
IOMMU_TEST_OP_DMABUF_REVOKE: Final = 23
IOMMU_TEST_OP_MD_CHECK_DMABUF: Final = 24  # maintainer dev tree only

# --- constants ----------------------------------------------------------------------------

# Mock page-table types (iommu_hwpt_selftest.pagetable_type)
MOCK_IOMMUPT_DEFAULT: Final = 0
MOCK_IOMMUPT_HUGE: Final = 1
MOCK_IOMMUPT_AMDV1: Final = 2  # one side of a merge conflict only

# True for MOCK_IOMMUPT_DEFAULT
MOCK_APERTURE_START: Final = 1 << 24
MOCK_APERTURE_LAST: Final = (1 << 31) - 1
MOCK_PAGE_SIZE: Final = 2048
MOCK_HUGE_PAGE_SIZE: Final = 512 * MOCK_PAGE_SIZE

MOCK_FLAGS_ACCESS_WRITE: Final = 1 << 0
MOCK_FLAGS_ACCESS_SYZ: Final = 1 << 16

MOCK_ACCESS_RW_WRITE: Final = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH: Final = 1 << 2

MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: Final = 1 << 0

MOCK_FLAGS_DEVICE_NO_DIRTY: Final = 1 << 0
MOCK_FLAGS_DEVICE_HUGE_IOVA: Final = 1 << 1  # v6.18 and older only
MOCK_FLAGS_DEVICE_PASID: Final = 1 << 2

MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: Final = 3
MOCK_NESTED_DOMAIN_IOTLB_NUM: Final = 4

MOCK_DEV_CACHE_ID_MAX: Final = 3
MOCK_DEV_CACHE_NUM: Final = 4

#: The PASID on which the mock injects a set_dev_pasid failure (replace test).
IOMMU_TEST_PASID_RESERVED: Final = 1024

#: Mock device/IOMMU PASID width.
MOCK_PASID_WIDTH: Final = 20

IOMMU_HW_INFO_TYPE_SELFTEST: Final = 0xFEEDBEEF
IOMMU_HW_INFO_SELFTEST_REGVAL: Final = 0xDEADBEEF

IOMMU_HWPT_DATA_SELFTEST: Final = 0xDEAD
IOMMU_TEST_IOTLB_DEFAULT: Final = 0x0BADBEEF
IOMMU_TEST_DEV_CACHE_DEFAULT: Final = 0x00BADDAD

IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: Final = 0xDEADBEEF
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: Final = 0x0DADBEEF

IOMMU_TEST_INVALIDATE_FLAG_ALL: Final = 1 << 0

IOMMU_VIOMMU_TYPE_SELFTEST: Final = 0xDEADBEEF

IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: Final = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: Final = 0x0DADBEEF

IOMMU_VEVENTQ_TYPE_SELFTEST: Final = 0xBEEFBEEF

IOMMU_HW_QUEUE_TYPE_SELFTEST: Final = 0xDEADBEEF
IOMMU_TEST_HW_QUEUE_MAX: Final = 2

# Test-local bounds in iommufd.c mirroring the kernel's caps (newest kernels).
IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX: Final = 1 << 19
VEVENTQ_MAX_DEPTH: Final = 1 << 19

# --- struct iommu_test_cmd ----------------------------------------------------------------


class iommu_test_cmd_add_reserved(UapiStruct):
    start: int
    length: int
    _fields_ = [("start", _u64), ("length", _u64)]


class iommu_test_cmd_mock_domain(UapiStruct):
    out_stdev_id: int
    out_hwpt_id: int
    out_idev_id: int
    _fields_ = [("out_stdev_id", _u32), ("out_hwpt_id", _u32), ("out_idev_id", _u32)]


class iommu_test_cmd_mock_domain_flags(UapiStruct):
    out_stdev_id: int
    out_hwpt_id: int
    out_idev_id: int
    dev_flags: int
    _fields_ = [
        ("out_stdev_id", _u32),
        ("out_hwpt_id", _u32),
        ("out_idev_id", _u32),
        ("dev_flags", _u32),
    ]


class iommu_test_cmd_mock_domain_replace(UapiStruct):
    pt_id: int
    _fields_ = [("pt_id", _u32)]


class iommu_test_cmd_check_map(UapiStruct):
    iova: int
    length: int
    uptr: int
    _fields_ = [("iova", _u64), ("length", _u64), ("uptr", _u64)]


class iommu_test_cmd_check_refs(UapiStruct):
    length: int
    uptr: int
    refs: int
    _fields_ = [("length", _u64), ("uptr", _u64), ("refs", _u32)]


class iommu_test_cmd_create_access(UapiStruct):
    out_access_fd: int
    flags: int
    _fields_ = [("out_access_fd", _u32), ("flags", _u32)]


class iommu_test_cmd_destroy_access_pages(UapiStruct):
    access_pages_id: int
    _fields_ = [("access_pages_id", _u32)]


class iommu_test_cmd_access_pages(UapiStruct):
    flags: int
    out_access_pages_id: int
    iova: int
    length: int
    uptr: int
    _fields_ = [
        ("flags", _u32),
        ("out_access_pages_id", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("uptr", _u64),
    ]


class iommu_test_cmd_access_rw(UapiStruct):
    iova: int
    length: int
    uptr: int
    flags: int
    _fields_ = [("iova", _u64), ("length", _u64), ("uptr", _u64), ("flags", _u32)]


class iommu_test_cmd_memory_limit(UapiStruct):
    limit: int
    _fields_ = [("limit", _u32)]


class iommu_test_cmd_access_replace_ioas(UapiStruct):
    ioas_id: int
    _fields_ = [("ioas_id", _u32)]


class iommu_test_cmd_dirty(UapiStruct):
    flags: int
    iova: int
    length: int
    page_size: int
    uptr: int
    out_nr_dirty: int
    _fields_ = [
        ("flags", _u32),
        ("iova", _u64),  # 4 bytes of padding before it, as in C
        ("length", _u64),
        ("page_size", _u64),
        ("uptr", _u64),
        ("out_nr_dirty", _u64),
    ]


class iommu_test_cmd_check_iotlb(UapiStruct):
    id: int
    iotlb: int
    _fields_ = [("id", _u32), ("iotlb", _u32)]


class iommu_test_cmd_trigger_iopf(UapiStruct):
    dev_id: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    _fields_ = [
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("addr", _u64),
    ]


class iommu_test_cmd_check_dev_cache(UapiStruct):
    id: int
    cache: int
    _fields_ = [("id", _u32), ("cache", _u32)]


class iommu_test_cmd_trigger_vevent(UapiStruct):
    dev_id: int
    _fields_ = [("dev_id", _u32)]


class iommu_test_cmd_pasid_attach(UapiStruct):
    """Also ``pasid_replace``; ``iommu_test_cmd.id`` is the stdev id."""

    pasid: int
    pt_id: int
    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class iommu_test_cmd_pasid_replace(UapiStruct):
    pasid: int
    pt_id: int
    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class iommu_test_cmd_pasid_detach(UapiStruct):
    pasid: int
    _fields_ = [("pasid", _u32)]


class iommu_test_cmd_pasid_check(UapiStruct):
    pasid: int
    hwpt_id: int
    _fields_ = [("pasid", _u32), ("hwpt_id", _u32)]


class iommu_test_cmd_dmabuf_get(UapiStruct):
    length: int
    open_flags: int
    _fields_ = [("length", _u32), ("open_flags", _u32)]


class iommu_test_cmd_dmabuf_revoke(UapiStruct):
    dmabuf_fd: int
    revoked: int
    _fields_ = [("dmabuf_fd", _s32), ("revoked", _u32)]


class iommu_test_cmd_check_dmabuf(UapiStruct):
    """Maintainer dev tree only (``IOMMU_TEST_OP_MD_CHECK_DMABUF``)."""

    dmabuf_fd: int
    iova: int
    length: int
    offset: int
    _fields_ = [("dmabuf_fd", _s32), ("iova", _u64), ("length", _u64), ("offset", _u64)]


class iommu_test_cmd_union(UapiUnion):
    """The anonymous union of ``struct iommu_test_cmd`` (48 bytes, at offset 16)."""

    add_reserved: iommu_test_cmd_add_reserved
    mock_domain: iommu_test_cmd_mock_domain
    mock_domain_flags: iommu_test_cmd_mock_domain_flags
    mock_domain_replace: iommu_test_cmd_mock_domain_replace
    check_map: iommu_test_cmd_check_map
    check_refs: iommu_test_cmd_check_refs
    create_access: iommu_test_cmd_create_access
    destroy_access_pages: iommu_test_cmd_destroy_access_pages
    access_pages: iommu_test_cmd_access_pages
    access_rw: iommu_test_cmd_access_rw
    memory_limit: iommu_test_cmd_memory_limit
    access_replace_ioas: iommu_test_cmd_access_replace_ioas
    dirty: iommu_test_cmd_dirty
    check_iotlb: iommu_test_cmd_check_iotlb
    trigger_iopf: iommu_test_cmd_trigger_iopf
    check_dev_cache: iommu_test_cmd_check_dev_cache
    trigger_vevent: iommu_test_cmd_trigger_vevent
    pasid_attach: iommu_test_cmd_pasid_attach
    pasid_replace: iommu_test_cmd_pasid_replace
    pasid_detach: iommu_test_cmd_pasid_detach
    pasid_check: iommu_test_cmd_pasid_check
    dmabuf_get: iommu_test_cmd_dmabuf_get
    dmabuf_revoke: iommu_test_cmd_dmabuf_revoke
    check_dmabuf: iommu_test_cmd_check_dmabuf
    _fields_ = [
        ("add_reserved", iommu_test_cmd_add_reserved),
        ("mock_domain", iommu_test_cmd_mock_domain),
        ("mock_domain_flags", iommu_test_cmd_mock_domain_flags),
        ("mock_domain_replace", iommu_test_cmd_mock_domain_replace),
        ("check_map", iommu_test_cmd_check_map),
        ("check_refs", iommu_test_cmd_check_refs),
        ("create_access", iommu_test_cmd_create_access),
        ("destroy_access_pages", iommu_test_cmd_destroy_access_pages),
        ("access_pages", iommu_test_cmd_access_pages),
        ("access_rw", iommu_test_cmd_access_rw),
        ("memory_limit", iommu_test_cmd_memory_limit),
        ("access_replace_ioas", iommu_test_cmd_access_replace_ioas),
        ("dirty", iommu_test_cmd_dirty),
        ("check_iotlb", iommu_test_cmd_check_iotlb),
        ("trigger_iopf", iommu_test_cmd_trigger_iopf),
        ("check_dev_cache", iommu_test_cmd_check_dev_cache),
        ("trigger_vevent", iommu_test_cmd_trigger_vevent),
        ("pasid_attach", iommu_test_cmd_pasid_attach),
        ("pasid_replace", iommu_test_cmd_pasid_replace),
        ("pasid_detach", iommu_test_cmd_pasid_detach),
        ("pasid_check", iommu_test_cmd_pasid_check),
        ("dmabuf_get", iommu_test_cmd_dmabuf_get),
        ("dmabuf_revoke", iommu_test_cmd_dmabuf_revoke),
        ("check_dmabuf", iommu_test_cmd_check_dmabuf),
    ]


class iommu_test_cmd(UapiStruct):
    """``struct iommu_test_cmd`` (72 bytes; ``last`` marks the minimum size, 68).

    The union members are reached directly, as in C: ``cmd.mock_domain.out_hwpt_id``.
    """

    size: int
    op: int
    id: int
    add_reserved: iommu_test_cmd_add_reserved
    mock_domain: iommu_test_cmd_mock_domain
    mock_domain_flags: iommu_test_cmd_mock_domain_flags
    mock_domain_replace: iommu_test_cmd_mock_domain_replace
    check_map: iommu_test_cmd_check_map
    check_refs: iommu_test_cmd_check_refs
    create_access: iommu_test_cmd_create_access
    destroy_access_pages: iommu_test_cmd_destroy_access_pages
    access_pages: iommu_test_cmd_access_pages
    access_rw: iommu_test_cmd_access_rw
    memory_limit: iommu_test_cmd_memory_limit
    access_replace_ioas: iommu_test_cmd_access_replace_ioas
    dirty: iommu_test_cmd_dirty
    check_iotlb: iommu_test_cmd_check_iotlb
    trigger_iopf: iommu_test_cmd_trigger_iopf
    check_dev_cache: iommu_test_cmd_check_dev_cache
    trigger_vevent: iommu_test_cmd_trigger_vevent
    pasid_attach: iommu_test_cmd_pasid_attach
    pasid_replace: iommu_test_cmd_pasid_replace
    pasid_detach: iommu_test_cmd_pasid_detach
    pasid_check: iommu_test_cmd_pasid_check
    dmabuf_get: iommu_test_cmd_dmabuf_get
    dmabuf_revoke: iommu_test_cmd_dmabuf_revoke
    check_dmabuf: iommu_test_cmd_check_dmabuf
    last: int
    _anonymous_ = ("_u",)
    _fields_ = [
        ("size", _u32),
        ("op", _u32),
        ("id", _u32),
        ("__reserved", _u32),
        ("_u", iommu_test_cmd_union),
        ("last", _u32),
    ]


IOMMU_TEST_CMD: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)

#: The command's table row (``min_size = offsetofend(iommu_test_cmd, last)`` = 68).
IOMMU_TEST_IOCTL: Final[IoctlDesc] = ioctl_op(
    "IOMMU_TEST_CMD", IOMMUFD_CMD_BASE + 32, iommu_test_cmd, "last")

# --- payload structs ----------------------------------------------------------------------


class iommu_test_hw_info(UapiStruct):
    """GET_HW_INFO data of type ``IOMMU_HW_INFO_TYPE_SELFTEST``."""

    flags: int
    test_reg: int
    _fields_ = [("flags", _u32), ("test_reg", _u32)]


class iommu_hwpt_selftest(UapiStruct):
    """HWPT_ALLOC data of type ``IOMMU_HWPT_DATA_SELFTEST`` (8 bytes newest, 4 before;
    minimum length 4)."""

    iotlb: int
    pagetable_type: int
    _fields_ = [("iotlb", _u32), ("pagetable_type", _u32)]


class iommu_hwpt_invalidate_selftest(UapiStruct):
    """Nested-HWPT invalidation entry (``IOMMU_HWPT_INVALIDATE_DATA_SELFTEST``)."""

    flags: int
    iotlb_id: int
    _fields_ = [("flags", _u32), ("iotlb_id", _u32)]


class iommu_viommu_selftest(UapiStruct):
    """VIOMMU_ALLOC data of type ``IOMMU_VIOMMU_TYPE_SELFTEST`` (minimum length 8)."""

    in_data: int
    out_data: int
    out_mmap_offset: int
    out_mmap_length: int
    _fields_ = [
        ("in_data", _u32),
        ("out_data", _u32),
        ("out_mmap_offset", _u64),
        ("out_mmap_length", _u64),
    ]


class iommu_viommu_invalidate_selftest(UapiStruct):
    """vIOMMU invalidation entry (``IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST``)."""

    flags: int
    vdev_id: int
    cache_id: int
    _fields_ = [("flags", _u32), ("vdev_id", _u32), ("cache_id", _u32)]


class iommu_viommu_event_selftest(UapiStruct):
    """vEVENT payload (``IOMMU_VEVENTQ_TYPE_SELFTEST``) after the 8-byte header."""

    virt_id: int
    _fields_ = [("virt_id", _u32)]


# --- data type registration ---------------------------------------------------------------

_SELFTEST_TYPES: Final[tuple[tuple[DataKind, str, int, PayloadStruct | None, int], ...]] = (
    (DataKind.HWPT_DATA, "IOMMU_HWPT_DATA_SELFTEST", IOMMU_HWPT_DATA_SELFTEST,
     iommu_hwpt_selftest, offsetofend(iommu_hwpt_selftest, "iotlb")),
    (DataKind.HW_INFO, "IOMMU_HW_INFO_TYPE_SELFTEST", IOMMU_HW_INFO_TYPE_SELFTEST,
     iommu_test_hw_info, ctypes.sizeof(iommu_test_hw_info)),
    (DataKind.HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST",
     IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, iommu_hwpt_invalidate_selftest,
     offsetofend(iommu_hwpt_invalidate_selftest, "iotlb_id")),
    # Copied with the full-array helper: no minimum entry length.
    (DataKind.VIOMMU_INVALIDATE, "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST",
     IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, iommu_viommu_invalidate_selftest, 0),
    (DataKind.VIOMMU, "IOMMU_VIOMMU_TYPE_SELFTEST", IOMMU_VIOMMU_TYPE_SELFTEST,
     iommu_viommu_selftest, offsetofend(iommu_viommu_selftest, "out_data")),
    (DataKind.VEVENTQ, "IOMMU_VEVENTQ_TYPE_SELFTEST", IOMMU_VEVENTQ_TYPE_SELFTEST,
     iommu_viommu_event_selftest, ctypes.sizeof(iommu_viommu_event_selftest)),
    (DataKind.HW_QUEUE, "IOMMU_HW_QUEUE_TYPE_SELFTEST", IOMMU_HW_QUEUE_TYPE_SELFTEST, None, 0),
)


def register_selftest_types(registry: DataTypeRegistry = DATA_TYPES) -> None:
    """Register the mock driver's data types in ``registry``. Entries already present
    with identical contents are left alone; a conflicting entry raises
    :class:`iommufd.uapi.DataTypeError`."""
    for kind, name, value, struct, min_len in _SELFTEST_TYPES:
        held = registry.find(kind, value)
        if (held is not None and held.name == name and held.struct is struct
                and held.min_len == min_len):
            continue
        registry.register(kind, name, value, struct, min_len)


register_selftest_types()

"""The VFIO type1 container API served by iommufd (drivers/iommu/iommufd/vfio_compat.c).

An unmodified VMM that speaks the legacy container API runs on iommufd: every request
with ``_IOC_NR < 0x80`` on ``/dev/iommu`` lands in :func:`iommufd_vfio_ioctl`, and
``/dev/vfio/vfio`` is the same file (iommufd's fops, registered by
:func:`iommufd_vfio_misc_register`) opened with process (MM) memlock accounting, as
VFIO charges it. The full iommufd ioctl set stays available on both.

The container ioctls have no IOAS id in their ABI: they act on the *compat IOAS*, which
IOMMU_VFIO_IOAS sets, reads and clears; without one they are ENODEV (VFIO fails them when
no group is attached). The kernel also creates a compat IOAS when a VFIO *group* joins
the container; the simulated machine has no group nodes, only device cdevs, so a VMM
allocates an IOAS, attaches its devices and SETs it.

* VFIO_GET_API_VERSION: VFIO_API_VERSION (0).
* VFIO_CHECK_EXTENSION (by value): 1 for TYPE1, TYPE1v2, UNMAP_ALL and (CONFIG_VFIO_NOIOMMU)
  NOIOMMU; DMA_CC_IOMMU = every paging HWPT of the compat IOAS enforces coherency (ENODEV
  without an IOAS); 0 for the retired TYPE1_NESTING (superseded by nest-parent HWPTs),
  UPDATE_VADDR and anything else.
* VFIO_SET_IOMMU (by value): TYPE1 or TYPE1v2, else EINVAL; ENODEV without an IOAS. TYPE1
  (v1) may unmap inside a mapping: it disables huge pages on the IOAS (EINVAL once domains
  hold mappings) and every v1 unmap first cuts the areas at its ends. Nothing records the
  type: setting it again, or the other one, repeats those steps.
* VFIO_IOMMU_GET_INFO: page sizes and a capability chain (DMA_AVAIL, then IOVA_RANGE),
  each capability 8-byte aligned; ``argsz`` comes back as the size the whole chain needs,
  ``cap_offset`` is set only when all of it fitted; nothing is written past ``argsz``.
* VFIO_IOMMU_MAP_DMA: READ/WRITE only (VADDR: EINVAL), always at the given IOVA.
* VFIO_IOMMU_UNMAP_DMA: ALL (with iova = size = 0) or a range; an empty range succeeds
  with size 0; GET_DIRTY_BITMAP and VADDR are EINVAL (the bitmap ABI is obsoleted by
  IOMMU_HWPT_GET_DIRTY_BITMAP). ``size`` is written back, also when the unmap fails.
* VFIO_IOMMU_DIRTY_PAGES and anything else: ENOTTY.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.uaccess import UserArg
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from iommu_core.trace import traced
from iommufd import uapi
from iommufd import uapi_vfio as vf
from iommufd.ioas import IommufdIoas, _reserved_holes, iommufd_get_ioas, iopt_map_user_pages
from iommufd.private import ACCOUNT_MM, ULONG_MAX, IommufdCtx, IommufdSubsys, Ucmd

if TYPE_CHECKING:
    from iommu_core.platform.files import Opener
    from iommufd.main import IommufdFile

#: The misc device iommufd registers in place of VFIO's container (VFIO_MINOR).
VFIO_CONTAINER_PATH: Final = "/dev/vfio/vfio"

#: The simulated kernel is a distribution build: VFIO no-IOMMU support is compiled in.
#: Only a no-IOMMU *group* could select it, so SET_IOMMU(NOIOMMU) is always EINVAL here.
CONFIG_VFIO_NOIOMMU: Final = True

_MINSZ: Final = {op.name: op.min_size for op in vf.VFIO_CONTAINER_IOCTLS}
_INFO_SIZE: Final = ctypes.sizeof(vf.vfio_iommu_type1_info)
_CAP_IOVA_SIZE: Final = ctypes.sizeof(vf.vfio_iommu_type1_info_cap_iova_range)
_RANGE_SIZE: Final = ctypes.sizeof(vf.vfio_iova_range)
_CAP_NEXT: Final = 4  # offsetof(struct vfio_info_cap_header, next): after u16 id, version
_U32_MAX: Final = 0xFFFF_FFFF

S = TypeVar("S", bound=ctypes.Structure)


def get_compat_ioas(ictx: IommufdCtx) -> IommufdIoas:
    if ictx.vfio_ioas is None:
        raise IommuError(errno.ENODEV, "no compat IOAS (IOMMU_VFIO_IOAS SET one first)")
    return ictx.vfio_ioas


@traced("iommufd")
def iommufd_vfio_ioas(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_vfio_ioas = ucmd.cmd
    if int(getattr(cmd, "__reserved")):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    ictx = ucmd.ictx
    if cmd.op == uapi.IOMMU_VFIO_IOAS_GET:
        cmd.ioas_id = get_compat_ioas(ictx).id
        ucmd.respond()
        return 0
    if cmd.op == uapi.IOMMU_VFIO_IOAS_SET:
        ictx.vfio_ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
        return 0
    if cmd.op == uapi.IOMMU_VFIO_IOAS_CLEAR:
        ictx.vfio_ioas = None
        return 0
    raise IommuError(errno.EOPNOTSUPP, f"unknown op {cmd.op}")


def _copy_from_user(arg: UserArg, struct: type[S], minsz: int) -> S:
    """``copy_from_user(&s, arg, minsz)``: exactly ``minsz`` bytes, the rest zero."""
    return uapi.from_bytes(struct, arg.read(0, minsz))


# ======================================================================================
# VFIO_IOMMU_MAP_DMA / VFIO_IOMMU_UNMAP_DMA
# ======================================================================================
@traced("iommufd")
def iommufd_vfio_map_dma(ictx: IommufdCtx, arg: UserArg) -> int:
    minsz = _MINSZ["VFIO_IOMMU_MAP_DMA"]
    dma_map = _copy_from_user(arg, vf.vfio_iommu_type1_dma_map, minsz)
    supported = vf.VFIO_DMA_MAP_FLAG_READ | vf.VFIO_DMA_MAP_FLAG_WRITE
    if dma_map.argsz < minsz:
        raise IommuError(errno.EINVAL, f"argsz {dma_map.argsz} below {minsz}")
    if dma_map.flags & ~supported:
        # VADDR (vaddr update across exec) cannot be implemented safely on iommufd.
        raise IommuError(errno.EINVAL, f"unsupported map flags {dma_map.flags:#x}")
    iommu_prot = IOMMU_CACHE
    if dma_map.flags & vf.VFIO_DMA_MAP_FLAG_READ:
        iommu_prot |= IOMMU_READ
    if dma_map.flags & vf.VFIO_DMA_MAP_FLAG_WRITE:
        iommu_prot |= IOMMU_WRITE
    ioas = get_compat_ioas(ictx)
    # Accounting follows the context: MM when opened as /dev/vfio/vfio or after
    # IOMMU_OPTION RLIMIT_MODE=1, per user otherwise. Type1 maps at the given IOVA.
    iopt_map_user_pages(ictx, ioas, dma_map.iova, dma_map.vaddr, dma_map.size, iommu_prot,
                        False)
    return 0


def iopt_unmap_iova(ioas: IommufdIoas, iova: int, length: int) -> int:
    """``iopt_unmap_iova``: bytes unmapped; an empty range is success (0 bytes) as in
    type1 (IOMMU_IOAS_UNMAP turns 0 into ENOENT itself)."""
    if not length:
        raise IommuError(errno.EINVAL, "zero size")
    last = iova + length - 1
    if last > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "iova + size overflows")
    iopt = ioas.iopt
    if iopt.area_first(iova, last) is None:
        return 0
    return iopt.iopt_unmap_iova_range(iova, last, ioas.notify_unmap)


@traced("iommufd")
def iommufd_vfio_unmap_dma(ictx: IommufdCtx, arg: UserArg) -> int:
    minsz = _MINSZ["VFIO_IOMMU_UNMAP_DMA"]
    unmap = _copy_from_user(arg, vf.vfio_iommu_type1_dma_unmap, minsz)
    if unmap.argsz < minsz:
        raise IommuError(errno.EINVAL, f"argsz {unmap.argsz} below {minsz}")
    if unmap.flags & ~vf.VFIO_DMA_UNMAP_FLAG_ALL:
        # GET_DIRTY_BITMAP is obsoleted by HWPT dirty tracking; VADDR is unsafe.
        raise IommuError(errno.EINVAL, f"unsupported unmap flags {unmap.flags:#x}")
    ioas = get_compat_ioas(ictx)
    iopt = ioas.iopt
    failure: IommuError | None = None
    unmapped = 0
    if unmap.flags & vf.VFIO_DMA_UNMAP_FLAG_ALL:
        if unmap.iova or unmap.size:
            raise IommuError(errno.EINVAL, "UNMAP_ALL needs iova and size 0")
        try:
            unmapped = iopt.iopt_unmap_all(ioas.notify_unmap)
        except IommuError as e:
            failure = e
    else:
        cuts = []
        if iopt.disable_large_pages:
            # Type1 v1: cut the areas at both ends of the range (no cut before IOVA 0),
            # as the C does, in unsigned long arithmetic.
            iovas = [(unmap.iova + unmap.size - 1) & ULONG_MAX]
            if unmap.iova:
                iovas.append(unmap.iova - 1)
            cuts = iopt.iopt_cut_iova(iovas)
        try:
            unmapped = iopt_unmap_iova(ioas, unmap.iova, unmap.size)
        except IommuError as e:
            iopt.iopt_uncut_iova(cuts)  # a failed call leaves the areas as they were
            failure = e
    # The kernel reports the bytes unmapped (0 on failure: nothing was) either way.
    unmap.size = unmapped
    arg.write(0, uapi.struct_bytes(unmap)[:minsz])
    if failure is not None:
        raise failure
    return 0


# ======================================================================================
# VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU
# ======================================================================================
def iommufd_vfio_cc_iommu(ictx: IommufdCtx) -> int:
    """DMA_CC_IOMMU: 1 when every paging HWPT of the compat IOAS enforces coherency."""
    ioas = get_compat_ioas(ictx)
    return int(all(h.enforce_cache_coherency for h in ioas.hwpt_list))


@traced("iommufd", lambda ext: f"{ext:#x}")
def iommufd_vfio_check_extension(ictx: IommufdCtx, ext: int) -> int:
    if ext in (vf.VFIO_TYPE1_IOMMU, vf.VFIO_TYPE1v2_IOMMU, vf.VFIO_UNMAP_ALL):
        return 1
    if ext == vf.VFIO_NOIOMMU_IOMMU:
        return int(CONFIG_VFIO_NOIOMMU)
    if ext == vf.VFIO_DMA_CC_IOMMU:
        return iommufd_vfio_cc_iommu(ictx)
    # __VFIO_RESERVED_TYPE1_NESTING_IOMMU: retired, nesting is a nest-parent HWPT now.
    # VFIO_UPDATE_VADDR: no safe way to implement it. Everything else: unknown.
    return 0


@traced("iommufd", lambda iommu_type: f"{iommu_type:#x}")
def iommufd_vfio_set_iommu(ictx: IommufdCtx, iommu_type: int) -> int:
    if iommu_type not in (vf.VFIO_TYPE1_IOMMU, vf.VFIO_TYPE1v2_IOMMU):
        raise IommuError(errno.EINVAL, f"IOMMU type {iommu_type} is not TYPE1 or TYPE1v2")
    # VFIO fails SET_IOMMU while no group is attached.
    ioas = get_compat_ioas(ictx)
    if iommu_type == vf.VFIO_TYPE1_IOMMU:
        # v1 may unmap inside a mapping; a huge IOPTE cannot be split, so use none.
        ioas.iopt.iopt_disable_large_pages()
    return 0


# ======================================================================================
# VFIO_IOMMU_GET_INFO
# ======================================================================================
def iommufd_get_pagesizes(ioas: IommufdIoas) -> int:
    """The page sizes every domain supports, sub-page sizes folded into PAGE_SIZE (as
    ``vfio_update_pgsize_bitmap``), at least the IOAS's alignment."""
    iopt = ioas.iopt
    bitmap = ULONG_MAX
    for domain in iopt.domains:
        bitmap &= domain.pgsize_bitmap
    if bitmap & (PAGE_SIZE - 1):
        bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
    return max(bitmap, iopt.iova_alignment)


def iommufd_fill_cap_iova(ioas: IommufdIoas, arg: UserArg, off: int, avail: int) -> int:
    """The IOVA_RANGE capability at ``off``: the holes of the reserved ranges. Writes
    each range, then the header, only while they fit in ``avail``; returns its size."""
    nr_iovas = 0
    for start, last in _reserved_holes(ioas.iopt):
        if avail >= _CAP_IOVA_SIZE + (nr_iovas + 1) * _RANGE_SIZE:
            rng = vf.vfio_iova_range(start=start, end=last)
            arg.write(off + _CAP_IOVA_SIZE + nr_iovas * _RANGE_SIZE, uapi.struct_bytes(rng))
        nr_iovas += 1
    size = _CAP_IOVA_SIZE + nr_iovas * _RANGE_SIZE
    if avail >= size:
        cap = vf.vfio_iommu_type1_info_cap_iova_range(nr_iovas=nr_iovas)
        cap.header.id = vf.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
        cap.header.version = 1
        arg.write(off, uapi.struct_bytes(cap))
    return size


def iommufd_fill_cap_dma_avail(ioas: IommufdIoas, arg: UserArg, off: int, avail: int) -> int:
    """DMA_AVAIL: iommufd limits by memory, not by a count; U32_MAX (not VFIO's U16_MAX,
    too small for s390 QEMU)."""
    cap = vf.vfio_iommu_type1_info_dma_avail(avail=_U32_MAX)
    cap.header.id = vf.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
    cap.header.version = 1
    raw = uapi.struct_bytes(cap)
    if avail >= len(raw):
        arg.write(off, raw)
    return len(raw)


_FILL_CAPS: Final[tuple[Callable[[IommufdIoas, UserArg, int, int], int], ...]] = (
    iommufd_fill_cap_dma_avail,
    iommufd_fill_cap_iova,
)


@traced("iommufd")
def iommufd_vfio_iommu_get_info(ictx: IommufdCtx, arg: UserArg) -> int:
    minsz = _MINSZ["VFIO_IOMMU_GET_INFO"]
    info = _copy_from_user(arg, vf.vfio_iommu_type1_info, minsz)
    argsz = info.argsz
    if argsz < minsz:
        raise IommuError(errno.EINVAL, f"argsz {argsz} below {minsz}")
    ioas = get_compat_ioas(ictx)
    info.flags = vf.VFIO_IOMMU_INFO_PGSIZES
    info.iova_pgsizes = iommufd_get_pagesizes(ioas)
    info.cap_offset = 0
    total = _INFO_SIZE
    last_cap = -1
    for fill in _FILL_CAPS:
        avail = argsz - total if argsz > total else 0
        cap_size = (fill(ioas, arg, total, avail) + 7) & ~7  # ALIGN(cap_size, u64)
        # Link the previous capability once its own bytes fitted.
        if last_cap >= 0 and argsz >= total:
            arg.write(last_cap + _CAP_NEXT, total.to_bytes(4, "little"))
        last_cap = total
        total += cap_size
    # A short buffer gets some capabilities, no cap_offset, and the size it needs.
    if argsz >= total:
        info.cap_offset = _INFO_SIZE
    info.argsz = total
    info.flags |= vf.VFIO_IOMMU_INFO_CAPS
    arg.write(0, uapi.struct_bytes(info)[: min(argsz, _INFO_SIZE)])
    return 0


# ======================================================================================
# dispatch and /dev/vfio/vfio
# ======================================================================================
def _arg_value(arg: UserArg | int) -> int:
    """The ``unsigned long`` argument of a by-value request. A buffer argument has no user
    address in the simulation; 0 stands for it (it matches no type or extension either)."""
    if isinstance(arg, int):
        return arg & ULONG_MAX
    return arg.va & ULONG_MAX


_PTR_IOCTLS: Final[dict[int, Callable[[IommufdCtx, UserArg], int]]] = {
    vf.VFIO_IOMMU_GET_INFO: iommufd_vfio_iommu_get_info,
    vf.VFIO_IOMMU_MAP_DMA: iommufd_vfio_map_dma,
    vf.VFIO_IOMMU_UNMAP_DMA: iommufd_vfio_unmap_dma,
}


def iommufd_vfio_ioctl(ictx: IommufdCtx, request: int, arg: UserArg | int) -> int:
    """Every iommufd request outside the iommufd table: the VFIO container ioctls, each
    matched on its full request number; the rest (VFIO_IOMMU_DIRTY_PAGES included) is
    -ENOIOCTLCMD, which the VFS reports as ENOTTY."""
    if request == vf.VFIO_GET_API_VERSION:
        return vf.VFIO_API_VERSION
    if request == vf.VFIO_SET_IOMMU:
        return iommufd_vfio_set_iommu(ictx, _arg_value(arg))
    if request == vf.VFIO_CHECK_EXTENSION:
        return iommufd_vfio_check_extension(ictx, _arg_value(arg))
    handler = _PTR_IOCTLS.get(request)
    if handler is None:
        raise IommuError(errno.ENOTTY, f"ioctl {request:#x} is neither an iommufd nor a "
                         "VFIO container command")
    if isinstance(arg, int):
        arg = UserArg(ictx.current.mm, None, arg & ULONG_MAX)
    return handler(ictx, arg)


def iommufd_vfio_misc_register(subsys: IommufdSubsys, chrdevs: dict[str, Opener],
                               fops: Callable[[IommufdSubsys], IommufdFile]) -> None:
    """``misc_register(&vfio_misc_dev)`` (CONFIG_IOMMUFD_VFIO_CONTAINER): /dev/vfio/vfio
    opens iommufd's file; ``iommufd_fops_open`` sees the VFIO node and selects MM
    accounting (RLIMIT_MODE reads 1) so limits behave as under VFIO."""

    def vfio_misc_open(t: object) -> IommufdFile:
        f = fops(subsys)
        f.ictx.account_mode = ACCOUNT_MM
        f.name = VFIO_CONTAINER_PATH
        return f

    chrdevs[VFIO_CONTAINER_PATH] = vfio_misc_open

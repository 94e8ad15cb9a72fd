"""Event queues (drivers/iommu/iommufd/eventq.c, the report half of driver.c):

* FAULT objects and their ``[iommufd-pgfault]`` fd. The core hands each completed page
  request group to :func:`iommufd_fault_iopf_handler` (the ``iopf_handler`` of every HWPT
  allocated with a fault); ``read`` delivers whole groups as ``iommu_hwpt_pgfault``
  records with a cookie, ``write`` takes ``iommu_hwpt_page_response`` records and answers
  the group through ``IommuCore.iopf_group_response`` (which reaches the driver's
  ``page_response``). Groups still queued or unanswered are answered INVALID when their
  attachment goes away or the FAULT object is destroyed.
* vEVENTQ objects and their ``[iommufd-viommu-event]`` fd: driver events reported with
  ``viommu.report_event`` become ``header + payload`` records with a sequence number; a
  full queue keeps one LOST_EVENTS header at its tail.
"""

from __future__ import annotations

import ctypes
import errno
from collections import deque
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.files import POLLIN, POLLOUT, POLLRDNORM, File
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.private import IommufdCtx, IommufdObject, ObjType, Ucmd

if TYPE_CHECKING:
    from iommu_core.group import AttachHandle
    from iommufd.hw_pagetable import IommufdHwPagetable
    from iommufd.viommu import IommufdViommuObj

_PGFAULT_SIZE = ctypes.sizeof(uapi.iommu_hwpt_pgfault)
_RESPONSE_SIZE = ctypes.sizeof(uapi.iommu_hwpt_page_response)
_HDR_SIZE = ctypes.sizeof(uapi.iommufd_vevent_header)
_INT_MAX = (1 << 31) - 1
#: Upper bound of veventq_depth (newest kernels).
IOMMU_VEVENTQ_MAX_DEPTH = 1 << 19


class IommufdEventq(IommufdObject):
    """``struct iommufd_eventq``: the object half of an event fd."""

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.file: EventqFile | None = None

    def init_file(self, name: str) -> EventqFile:
        """``iommufd_eventq_init``: the fd holds the context and a user of the object
        (``anon_inode_getfile`` allocates the file: ENOMEM)."""
        self.ictx.subsys.kzalloc("anon_inode_getfile")
        f = EventqFile(self, name)
        self.file = f
        self.ictx.get()
        self.users += 1
        return f

    def drop_file(self) -> None:
        if self.file is not None:
            self.file.eventq = None
            self.file = None
            self.users -= 1
            self.ictx.put()

    def read(self, count: int) -> bytes:
        raise IommuError(errno.EINVAL, "not readable")

    def write(self, data: bytes) -> int:
        raise IommuError(errno.EINVAL, "not writable")

    def poll(self) -> int:
        return 0


class EventqFile(File):
    """An anon-inode event fd; closing it drops its references."""

    def __init__(self, eventq: IommufdEventq, name: str) -> None:
        self.eventq: IommufdEventq | None = eventq
        self.name = name

    def _q(self) -> IommufdEventq:
        if self.eventq is None:
            raise IommuError(errno.EBADF, f"{self.name} is closed")
        return self.eventq

    def read(self, n: int) -> bytes:
        return self._q().read(n)

    def write(self, data: bytes) -> int:
        return self._q().write(data)

    def poll(self) -> int:
        return self._q().poll()

    def release(self) -> None:
        if self.eventq is not None:
            self.eventq.drop_file()


# ======================================================================================
# FAULT
# ======================================================================================
class IommufdFault(IommufdEventq):
    """``struct iommufd_fault``."""

    obj_type = ObjType.FAULT

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.deliver: deque[IopfGroup] = deque()
        #: cookie -> group delivered to user space and not yet answered.
        self.response: dict[int, IopfGroup] = {}

    def _alloc_cookie(self) -> int:
        c = 1
        while c in self.response:
            c += 1
        if c > 0xFFFF_FFFF:
            raise IommuError(errno.EBUSY, "no free fault cookie")
        return c

    def read(self, count: int) -> bytes:
        if count % _PGFAULT_SIZE:
            raise IommuError(errno.ESPIPE, f"read size {count} is not a multiple of "
                             f"{_PGFAULT_SIZE}")
        out = bytearray()
        while self.deliver:
            group = self.deliver[0]
            if len(out) >= count or len(group.faults) * _PGFAULT_SIZE > count - len(out):
                break
            self.deliver.popleft()
            cookie = self._alloc_cookie()
            group.cookie = cookie
            self.response[cookie] = group
            handle: AttachHandle | None = group.attach_handle
            idev = handle.owner if handle is not None else None
            dev_id = idev.id if idev is not None else 0
            for req in group.faults:
                rec = uapi.iommu_hwpt_pgfault(flags=req.flags, dev_id=dev_id, pasid=req.pasid,
                                              grpid=req.grpid, perm=req.perm, addr=req.addr,
                                              length=0, cookie=cookie)
                out += uapi.struct_bytes(rec)
        return bytes(out)

    def write(self, data: bytes) -> int:
        if len(data) % _RESPONSE_SIZE:
            raise IommuError(errno.ESPIPE, f"write size {len(data)} is not a multiple of "
                             f"{_RESPONSE_SIZE}")
        done = 0
        err: IommuError | None = None
        core = self.ictx.core
        while done < len(data):
            resp = uapi.from_bytes(uapi.iommu_hwpt_page_response,
                                   data[done : done + _RESPONSE_SIZE])
            if resp.code not in (uapi.IOMMUFD_PAGE_RESP_SUCCESS,
                                 uapi.IOMMUFD_PAGE_RESP_INVALID):
                err = IommuError(errno.EINVAL, f"bad response code {resp.code}")
                break
            group = self.response.pop(resp.cookie, None)
            if group is None:
                err = IommuError(errno.EINVAL, f"unknown cookie {resp.cookie}")
                break
            core.iopf_group_response(group, PageResponseCode(resp.code))
            done += _RESPONSE_SIZE
        if done == 0 and err is not None:
            raise err
        return done

    def poll(self) -> int:
        return POLLOUT | ((POLLIN | POLLRDNORM) if self.deliver else 0)

    def destroy(self) -> None:
        core = self.ictx.core
        while self.deliver:
            core.iopf_group_response(self.deliver.popleft(), PageResponseCode.INVALID)
        for cookie in list(self.response):
            core.iopf_group_response(self.response.pop(cookie), PageResponseCode.INVALID)


def iommufd_fault_iopf_handler(group: IopfGroup) -> None:
    """The ``iopf_handler`` of a fault-capable HWPT: queue the group for user space."""
    handle = group.attach_handle
    assert handle is not None
    hwpt: IommufdHwPagetable = handle.domain.cookie
    fault = hwpt.fault
    if fault is None:
        raise IommuError(errno.EOPNOTSUPP, "HWPT has no fault queue")
    fault.deliver.append(group)


def iommufd_auto_response_faults(hwpt: IommufdHwPagetable, handle: AttachHandle | None
                                 ) -> None:
    """Answer INVALID every group of ``handle`` still queued or awaiting a response."""
    fault = hwpt.fault
    if fault is None or handle is None:
        return
    core = fault.ictx.core
    for group in [g for g in fault.deliver if g.attach_handle is handle]:
        fault.deliver.remove(group)
        core.iopf_group_response(group, PageResponseCode.INVALID)
    for cookie, group in list(fault.response.items()):
        if group.attach_handle is handle:
            del fault.response[cookie]
            core.iopf_group_response(group, PageResponseCode.INVALID)


@traced("iommufd")
def iommufd_fault_alloc(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_fault_alloc = ucmd.cmd
    if cmd.flags:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    ictx = ucmd.ictx
    fault = ictx.object_alloc(IommufdFault)
    files = ictx.current.files
    try:
        f = fault.init_file("[iommufd-pgfault]")
    except IommuError:
        ictx.object_abort_and_destroy(fault)
        raise
    try:
        fdno = files.get_unused_fd()
    except IommuError:
        fault.drop_file()
        ictx.object_abort_and_destroy(fault)
        raise
    cmd.out_fault_id = fault.id
    cmd.out_fault_fd = fdno
    try:
        ucmd.respond()
    except IommuError:
        files.put_unused_fd(fdno)
        fault.drop_file()
        ictx.object_abort_and_destroy(fault)
        raise
    ictx.object_finalize(fault)
    files.fd_install(fdno, f)
    return 0


# ======================================================================================
# vEVENTQ
# ======================================================================================
class _Vevent:
    __slots__ = ("data", "flags", "sequence")

    def __init__(self, data: bytes, flags: int = 0) -> None:
        self.data = data
        self.flags = flags
        self.sequence = 0


class IommufdVeventq(IommufdEventq):
    """``struct iommufd_veventq``."""

    obj_type = ObjType.VEVENTQ

    def __init__(self, ictx: IommufdCtx, viommu: IommufdViommuObj, type: int, depth: int
                 ) -> None:
        super().__init__(ictx)
        self.viommu = viommu
        viommu.users += 1
        self.type = type
        self.depth = depth
        self.deliver: deque[_Vevent] = deque()
        self.num_events = 0
        self.sequence = 0
        self.lost_events_header = _Vevent(b"", uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS)
        self.listed = False

    def report(self, data: bytes) -> None:
        """``iommufd_viommu_report_event`` for this queue."""
        if self.num_events == self.depth:
            vevent = self.lost_events_header
        else:
            vevent = _Vevent(bytes(data))
            self.num_events += 1
        # The LOST header leaves the tail when anything (even itself) is queued after it.
        if self.deliver and self.deliver[-1] is self.lost_events_header:
            self.deliver.pop()
        self.deliver.append(vevent)
        vevent.sequence = self.sequence
        self.sequence = (self.sequence + 1) & _INT_MAX

    def read(self, count: int) -> bytes:
        """Newest kernels (the selftest that also bounds veventq_depth): a count below
        the 8-byte header is EINVAL even on an empty queue, and so is a count that cannot
        hold the first record; otherwise whole records are returned, possibly none. (The
        older eventq.c returned 0 in both cases; see uapi.md §7 vs selftest_catalog §4.7.)"""
        if count < _HDR_SIZE:
            raise IommuError(errno.EINVAL, f"read size {count} is below the "
                             f"{_HDR_SIZE}-byte header")
        out = bytearray()
        while self.deliver:
            cur = self.deliver[0]
            room = count - len(out)
            if room < _HDR_SIZE:
                break
            lost = cur is self.lost_events_header
            if not lost and _HDR_SIZE + len(cur.data) > room:
                if not out:
                    raise IommuError(errno.EINVAL, f"read size {count} cannot hold the "
                                     f"next {_HDR_SIZE + len(cur.data)}-byte event")
                break
            hdr = uapi.iommufd_vevent_header(flags=cur.flags, sequence=cur.sequence)
            out += uapi.struct_bytes(hdr) + cur.data
            self.deliver.popleft()
            if not lost:
                self.num_events -= 1
        return bytes(out)

    def write(self, data: bytes) -> int:
        raise IommuError(errno.EINVAL, "a vEVENTQ fd is read-only")

    def poll(self) -> int:
        return (POLLIN | POLLRDNORM) if self.deliver else 0

    def destroy(self) -> None:
        if self.listed:
            self.viommu.veventqs.remove(self)
            self.listed = False
        self.deliver.clear()
        self.viommu.users -= 1


@traced("iommufd")
def iommufd_veventq_alloc(ucmd: Ucmd) -> int:
    from iommufd.viommu import iommufd_get_viommu

    cmd: uapi.iommu_veventq_alloc = ucmd.cmd
    if cmd.flags or int(getattr(cmd, "__reserved")) or (
            cmd.type == uapi.IOMMU_VEVENTQ_TYPE_DEFAULT):
        raise IommuError(errno.EOPNOTSUPP, "flags, __reserved or type DEFAULT")
    if not cmd.veventq_depth or cmd.veventq_depth > IOMMU_VEVENTQ_MAX_DEPTH:
        raise IommuError(errno.EINVAL, f"bad veventq_depth {cmd.veventq_depth}")
    ictx = ucmd.ictx
    viommu = iommufd_get_viommu(ictx, cmd.viommu_id)
    if viommu.find_veventq(cmd.type) is not None:
        raise IommuError(errno.EEXIST, f"vIOMMU {viommu.id} already has a vEVENTQ of type "
                         f"{cmd.type:#x}")
    q = ictx.object_alloc(IommufdVeventq, viommu, cmd.type, cmd.veventq_depth)
    viommu.veventqs.append(q)
    q.listed = True
    files = ictx.current.files
    try:
        f = q.init_file("[iommufd-viommu-event]")
    except IommuError:
        ictx.object_abort_and_destroy(q)
        raise
    try:
        fdno = files.get_unused_fd()
    except IommuError:
        q.drop_file()
        ictx.object_abort_and_destroy(q)
        raise
    cmd.out_veventq_id = q.id
    cmd.out_veventq_fd = fdno
    try:
        ucmd.respond()
    except IommuError:
        files.put_unused_fd(fdno)
        q.drop_file()
        ictx.object_abort_and_destroy(q)
        raise
    ictx.object_finalize(q)
    files.fd_install(fdno, f)
    return 0

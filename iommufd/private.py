"""The object model shared by every iommufd module (``iommufd_private.h`` + the object
half of ``main.c``): object types, the per-open context with its id table, the ioctl
command being executed, and the per-Machine subsystem state.

Object lifetime follows the kernel exactly:

* ``users`` starts at 1 (the table's own reference). Every object that points at another
  holds a ``users`` reference on it; a driver that hands out an object (VFIO's device,
  an access) holds one more until it destroys it.
* An id is *reserved* at allocation (it reads as "not found") and *published* at
  finalize; an aborted allocation frees it again. Ids are the lowest free number from 1.
* ``IOMMU_DESTROY`` removes an object only when ``users == 1`` (else EBUSY).
* Closing the iommufd destroys every object leaf-first: repeatedly destroy all objects
  whose ``users`` is 1 until the table is empty.
"""

from __future__ import annotations

import enum
import errno
import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, TypeVar

from iommu_core.errors import IommuError
from iommu_core.platform.uaccess import UserArg, copy_to_user_struct

if TYPE_CHECKING:
    from sortedcontainers import SortedDict

    from iommu_core.iommu import IommuCore
    from iommu_core.platform.files import File
    from iommu_core.platform.task import Task
    from iommu_core.trace import Tracer
    from iommufd.device import IommufdGroup
    from iommufd.ioas import IommufdIoas

#: ``IOPT_PAGES_ACCOUNT_*``: how pinned pages are charged against RLIMIT_MEMLOCK.
ACCOUNT_NONE = 0
ACCOUNT_USER = 1
ACCOUNT_MM = 2

#: xa_limit_31b: the largest object id.
_MAX_ID = (1 << 31) - 1


class ObjType(enum.Enum):
    """``enum iommufd_object_type``."""

    DEVICE = "device"
    HWPT_PAGING = "hwpt_paging"
    HWPT_NESTED = "hwpt_nested"
    IOAS = "ioas"
    ACCESS = "access"
    FAULT = "fault"
    VIOMMU = "viommu"
    VDEVICE = "vdevice"
    VEVENTQ = "veventq"
    HW_QUEUE = "hw_queue"
    SELFTEST = "selftest"


class IommufdObject:
    """``struct iommufd_object``: one entry of the context's table.

    Subclasses set ``obj_type`` and override :meth:`destroy` (``ops->destroy``: drop the
    references this object holds) and, when allocation can fail half way, :meth:`abort`.
    """

    obj_type: ClassVar[ObjType]

    def __init__(self, ictx: IommufdCtx) -> None:
        self.ictx = ictx
        self.id = 0
        #: ``refcount_t users``: 1 for the table, +1 for every holder.
        self.users = 1
        self.published = False

    @property
    def tracer(self) -> Tracer:
        return self.ictx.tracer

    def destroy(self) -> None:
        """Release what this object holds (called once it is out of the table)."""

    def abort(self) -> None:
        """Undo a failed allocation (``ops->abort``; default: the destroy)."""
        self.destroy()

    def pre_destroy(self) -> None:
        """``ops->pre_destroy``: revoke references others hold *to* this object before
        it goes (the idev tombstones its vDEVICE here)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id {self.id} users {self.users}>"


ObjT = TypeVar("ObjT", bound=IommufdObject)
P = ParamSpec("P")


class IommufdSubsys:
    """Per-Machine iommufd state (what is global in the kernel module)."""

    def __init__(self, core: IommuCore) -> None:
        self.core = core
        #: ``user_struct.locked_vm`` by uid, in pages (ACCOUNT_USER).
        self.user_locked_vm: dict[int, int] = {}
        #: The selftest's temporary memory limit: sizes the pinning batch (bytes).
        self.temp_memory_limit = 65536
        self.mock_dev_seq = 0

    @property
    def current(self) -> Task:
        """The task whose system call is running (``current``)."""
        return self.core.platform.tasks.require_current()

    def should_fail(self, site: str = "") -> bool:
        """``iommufd_should_fail``: a fault-injection point of iommufd's own (the caller
        picks the errno, as each kernel call site does)."""
        task = self.core.platform.tasks.current
        return task is not None and task.fail_nth != 0 and self.core.platform.should_fail(
            "iommufd", site)

    def kzalloc(self, site: str) -> None:
        """A kzalloc iommufd makes here: a failslab point (ENOMEM)."""
        self.core.platform.kzalloc(site)


class IommufdCtx:
    """``struct iommufd_ctx``: one open of ``/dev/iommu``."""

    def __init__(self, subsys: IommufdSubsys) -> None:
        from sortedcontainers import SortedDict

        subsys.kzalloc("struct iommufd_ctx")  # iommufd_fops_open
        self.subsys = subsys
        self.core: IommuCore = subsys.core
        self.tracer: Tracer = subsys.core.tracer
        #: id -> object; None marks a reserved (allocating) id or a tombstone.
        self.objects: dict[int, IommufdObject | None] = {}
        self._free_ids: list[int] = []
        self._next_id = 1
        self.account_mode = ACCOUNT_USER
        self.vfio_ioas: IommufdIoas | None = None
        #: iommu group id -> iommufd's per-group state.
        self.groups: dict[int, IommufdGroup] = {}
        #: mmap offset -> region registered by a driver (``mt_mmap``).
        self.mmaps: SortedDict[int, Any] = SortedDict()
        #: The open ``/dev/iommu`` this context is (``ictx->file``); None for a context
        #: that tests drive directly, whose references are counted here instead.
        self.file: File | None = None
        self.file_refs = 1
        self.released = False

    @property
    def current(self) -> Task:
        """The task whose system call is running (``current``)."""
        return self.core.platform.tasks.require_current()

    # -- file references (iommufd_ctx_get / iommufd_ctx_put) ------------------------------
    def get(self) -> None:
        """``iommufd_ctx_get``: a reference on the iommufd file."""
        if self.file is not None:
            self.file.get_file()
        else:
            self.file_refs += 1

    def put(self) -> None:
        if self.file is not None:
            self.file.fput()
            return
        self.file_refs -= 1
        if self.file_refs == 0:
            self.release()

    # -- ids --------------------------------------------------------------------------------
    def _alloc_id(self) -> int:
        if self._free_ids:
            return heapq.heappop(self._free_ids)
        if self._next_id > _MAX_ID:
            raise IommuError(errno.ENOSPC, "no free object id")
        nid = self._next_id
        self._next_id += 1
        return nid

    def _free_id(self, oid: int) -> None:
        del self.objects[oid]
        heapq.heappush(self._free_ids, oid)

    # -- allocation -------------------------------------------------------------------------
    def object_alloc(self, cls: Callable[Concatenate[IommufdCtx, P], ObjT], *args: P.args,
                     **kwargs: P.kwargs) -> ObjT:
        """``iommufd_object_alloc``: kzalloc the object (ENOMEM: nothing is made) and
        reserve an id (it reads as "not found" until :meth:`object_finalize`); then
        ``cls(self, *args, **kwargs)`` fills it in, taking its references."""
        self.subsys.kzalloc(cls.__name__)
        oid = self._alloc_id()  # xa_alloc: its node allocation retries, never fails here
        try:
            obj = cls(self, *args, **kwargs)
        except BaseException:
            heapq.heappush(self._free_ids, oid)
            raise
        self.objects[oid] = None
        obj.id = oid
        return obj

    def object_finalize(self, obj: IommufdObject) -> None:
        """``iommufd_object_finalize``: publish the object."""
        self.objects[obj.id] = obj
        obj.published = True

    def object_abort(self, obj: IommufdObject) -> None:
        """``iommufd_object_abort``: free the id of an object that was never published
        and holds nothing."""
        if obj.id and obj.id in self.objects and not obj.published:
            self._free_id(obj.id)
        obj.id = 0

    def object_abort_and_destroy(self, obj: IommufdObject) -> None:
        """``iommufd_object_abort_and_destroy``: undo what the allocation took, free the id."""
        obj.abort()
        self.object_abort(obj)

    # -- lookup -----------------------------------------------------------------------------
    def get_object(self, oid: int, otype: type[ObjT]) -> ObjT:
        """``iommufd_get_object``: missing, reserved, tombstoned or of another type: ENOENT
        (and a fault-injection point, ENOENT too)."""
        if self.subsys.should_fail("iommufd_get_object"):
            raise IommuError(errno.ENOENT, "fail-nth: iommufd_get_object")
        obj = self.objects.get(oid)
        if obj is None or not isinstance(obj, otype):
            raise IommuError(errno.ENOENT, f"no {otype.obj_type.value} object with id {oid}"
                             if hasattr(otype, "obj_type") else f"no object with id {oid}")
        return obj

    def get_any(self, oid: int) -> IommufdObject:
        if self.subsys.should_fail("iommufd_get_object"):
            raise IommuError(errno.ENOENT, "fail-nth: iommufd_get_object")
        obj = self.objects.get(oid)
        if obj is None:
            raise IommuError(errno.ENOENT, f"no object with id {oid}")
        return obj

    # -- removal ----------------------------------------------------------------------------
    def object_remove(self, oid: int) -> None:
        """``IOMMU_DESTROY``: ENOENT if absent; EBUSY unless nothing else holds it."""
        obj = self.objects.get(oid)
        if obj is None:
            raise IommuError(errno.ENOENT, f"no object with id {oid}")
        if obj.users != 1:
            raise IommuError(errno.EBUSY, f"object {oid} ({obj.obj_type.value}) is in use "
                             f"({obj.users - 1} references)")
        self._remove(obj, tombstone=False)

    def _remove(self, obj: IommufdObject, tombstone: bool) -> None:
        obj.users = 0
        if tombstone:
            self.objects[obj.id] = None  # the id stays taken until close
        else:
            self._free_id(obj.id)
        if self.vfio_ioas is obj:
            self.vfio_ioas = None
        obj.destroy()

    def object_destroy_user(self, obj: IommufdObject, tombstone: bool = False) -> None:
        """``iommufd_object_destroy_user``/``_tombstone_user``: the driver that holds the
        extra reference destroys the object. Its users must then be exactly the table."""
        obj.pre_destroy()
        obj.users -= 1
        if self.objects.get(obj.id) is not obj or obj.users != 1:
            obj.users += 1
            raise IommuError(errno.EBUSY, f"{obj!r} is still referenced")
        self._remove(obj, tombstone)

    def object_put_and_try_destroy(self, obj: IommufdObject) -> None:
        """Drop a reference; destroy the object if only the table holds it now (the
        automatic HWPT when its last device leaves)."""
        obj.users -= 1
        if obj.users == 1 and self.objects.get(obj.id) is obj:
            self._remove(obj, tombstone=False)

    def is_empty(self) -> bool:
        """``xa_empty(&ictx->objects)``: reserved ids and tombstones count."""
        return not self.objects

    # -- close ------------------------------------------------------------------------------
    def release(self) -> None:
        """``iommufd_fops_release``: destroy every object leaf-first."""
        if self.released:
            return
        self.released = True
        while True:
            live = [o for o in self.objects.values() if o is not None]
            if not live:
                break
            destroyed = 0
            for obj in live:
                if self.objects.get(obj.id) is not obj or obj.users != 1:
                    continue
                destroyed += 1
                self._remove(obj, tombstone=False)
            if not destroyed:
                raise IommuError(errno.EBUSY, "iommufd close: reference cycle among "
                                 f"{[o for o in self.objects.values() if o is not None]}")
        self.objects.clear()  # tombstones
        self._free_ids.clear()
        self._next_id = 1


class Ucmd:
    """``struct iommufd_ucmd``: the ioctl being executed."""

    __slots__ = ("arg", "cmd", "ictx", "tracer", "user_size")

    def __init__(self, ictx: IommufdCtx, arg: UserArg, user_size: int, cmd: Any) -> None:
        self.ictx = ictx
        self.arg = arg
        self.user_size = user_size
        self.cmd = cmd
        self.tracer = ictx.tracer

    def respond(self) -> None:
        """``iommufd_ucmd_respond``: copy back ``min(size, sizeof)`` bytes (EFAULT)."""
        copy_to_user_struct(self.arg, self.cmd, self.user_size)

    def respond_field(self, field: str) -> None:
        """Copy back one field only (IOMMU_OPTION writes just ``val64``)."""
        self.arg.write_field(self.cmd, field)


ULONG_MAX = (1 << 64) - 1

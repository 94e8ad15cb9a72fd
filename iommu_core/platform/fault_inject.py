"""Fault injection by count (lib/fault-inject.c ``should_fail_ex``, mm/failslab.c,
mm/fail_page_alloc.c and iommufd's ``fail_iommufd``): the per-task ``fail-nth`` of
``/proc/<pid>/task/<tid>/fail-nth``.

Writing N arms the task: every fault-injection point it reaches while the count is not
zero decrements it, and the point that brings it to zero fails. Reading gives what is
left (0 once a point fired). Only ``current`` counts: work done on behalf of nobody
(a device's DMA, a page request) reaches no point. The kinds of points:

``slab``
    a kmalloc/kzalloc/kmem_cache_alloc the kernel makes at that place (failslab); the
    call site fails with ENOMEM (the simulation's Python object stands for the memory).
``page``
    a kernel page allocation of order >= :attr:`FaultAttrs.page_min_order`
    (fail_page_alloc): page tables, queues, device and PASID tables.
``iommufd``
    ``iommufd_should_fail()``: iommufd's own points, whose errno is the call site's
    (ENOENT for an object lookup, EFAULT for a pin, ENOMEM for accounting...).

Allocations that retry or fall back when they fail (xarray nodes, whose failed GFP_NOWAIT
attempt ``__xas_nomem`` repeats with GFP_KERNEL; ``temp_kmalloc``'s first try; the
backup buffers of the unmap paths) cannot make a call fail under fail-nth: they are not
points here. User pages (anonymous and shmem faults) are not points either: a fault
that finds no page is the OOM killer's business, not an errno.
"""

from __future__ import annotations

import errno

from iommu_core.errors import IommuError

SLAB = "slab"
PAGE = "page"
IOMMUFD = "iommufd"

#: ``unsigned int fail_nth``.
FAIL_NTH_MAX = 0xFFFF_FFFF
_U64_MAX = (1 << 64) - 1
#: ``kstrtouint_from_user`` copies at most this much (sign, 64 binary digits, newline).
_KSTRTOX_BUF = 1 + 64 + 1


class FaultAttrs:
    """The machine's fault-injection knobs (debugfs ``failslab/``, ``fail_page_alloc/``).

    ``page_min_order`` is 0: every kernel page is a point, page-table pages included.
    (Linux boots with fail_page_alloc ``min-order`` 1; set 1 here to match it.)"""

    __slots__ = ("page_min_order",)

    def __init__(self) -> None:
        self.page_min_order = 0


def kstrtouint(data: bytes) -> int:
    """``kstrtouint_from_user(buf, count, 0, &n)``: an optional ``+``, a C literal in
    base 0 (``0x`` hex, leading ``0`` octal), one optional trailing newline. Nothing
    to parse or trailing junk: EINVAL; above ``UINT_MAX``: ERANGE."""
    s = bytes(data[: _KSTRTOX_BUF]).split(b"\0", 1)[0]
    if s.startswith(b"+"):
        s = s[1:]
    base = 10
    if s[:1] == b"0":
        if s[1:2] in (b"x", b"X") and s[2:3] and s[2:3] in b"0123456789abcdefABCDEF":
            base, s = 16, s[2:]
        else:
            base = 8
    digits = b"0123456789abcdef"[:base]
    value = 0
    n = 0
    overflow = False
    for c in s.lower():
        d = digits.find(bytes((c,)))
        if d < 0:
            break
        value = value * base + d
        overflow |= value > _U64_MAX
        n += 1
    if overflow:
        raise IommuError(errno.ERANGE, "fail-nth: number too large")
    if n == 0:
        raise IommuError(errno.EINVAL, f"fail-nth: {bytes(data[:20])!r} is not a number")
    rest = s[n:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise IommuError(errno.EINVAL, f"fail-nth: trailing {rest[:20]!r}")
    if value > FAIL_NTH_MAX:
        raise IommuError(errno.ERANGE, f"fail-nth: {value} is above UINT_MAX")
    return value


def check_fail_nth(n: object) -> int:
    """A count for ``fail-nth`` given as a Python int, with the errnos of the proc file:
    not an integer, or negative (kstrtouint takes no ``-``): EINVAL; above UINT_MAX:
    ERANGE."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise IommuError(errno.EINVAL, f"fail-nth: {n!r} is not an unsigned integer")
    if n > FAIL_NTH_MAX:
        raise IommuError(errno.ERANGE, f"fail-nth: {n} is above UINT_MAX")
    return n

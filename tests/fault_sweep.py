"""The fail-nth sweep (``TEST_FAIL_NTH`` of iommufd_fail_nth.c) for the tests' own flows:
N = 1, 2, ... until a run reaches no armed point, each run on a fresh Machine."""

from __future__ import annotations

import errno
from collections.abc import Callable

from iommu_sim import Machine

#: What an injected point answers: allocations ENOMEM, an object lookup ENOENT, a pin
#: EFAULT, the reserved-region and access checks EINVAL (and binding a device whose
#: probe failed, as the bus notifier swallows that failure).
INJECTED_ERRNOS = {errno.ENOMEM, errno.ENOENT, errno.EFAULT, errno.EINVAL}


def fail_nth_sweep(make: Callable[[], Machine],
                   flow: Callable[[Machine, Callable[[], None]], None],
                   after: Callable[[Machine, int], None] | None = None,
                   limit: int = 500) -> int:
    """Run ``flow(m, arm)`` on ``make()`` with its N-th point failing (from where it calls
    ``arm()``), for N = 1, 2, ... until a run completes with the count unspent. A failing
    run must fail with an injected errno *because the armed point fired*; after each run
    ``after(m, n)`` checks what it wants, then closing every fd must give back every
    kernel page and pin. Returns how many runs failed."""
    n = 0
    while True:
        n += 1
        assert n < limit, "the flow never ran out of fault points"
        m = make()

        def arm(m: Machine = m, n: int = n) -> None:
            m.fail_nth = n

        try:
            flow(m, arm)
        except OSError as e:
            assert e.errno in INJECTED_ERRNOS, f"N={n}: {e!r}"
            assert m.fail_nth == 0, f"N={n}: {e!r} without the armed point firing"
            done = False
        else:
            done = m.fail_nth != 0
        m.fail_nth = 0
        if after is not None:
            after(m, n)
        m.close_all()
        assert m.mm.pinned_pages == 0, f"N={n}: pages left pinned"
        assert m.kernel_pages_in_use == m.kernel_pages_baseline, (
            f"N={n}: {m.kernel_pages_in_use - m.kernel_pages_baseline} kernel pages leaked")
        m.shutdown()
        if done:
            return n - 1

"""The conformance kit's ``hw_queue`` suite: what any driver with HW queues
(``IOMMU_HW_QUEUE_ALLOC``, viommu ops ``get_hw_queue_size`` + ``hw_queue_init_phys``)
must do.

Allocation rules, for every such driver (numbers from the kit hook
``conformance_hw_queue_setup``):

* a queue type the vIOMMU does not know has size 0;
* an index beyond the vIOMMU's queues is EINVAL, a taken one EEXIST, and an index whose
  predecessor does not exist is EIO (queues come in ascending order);
* a queue depends on its predecessor, so iommufd refuses to destroy the predecessor
  first (descending order);
* a length the driver cannot use, or a base not aligned to it when it must be, is
  EINVAL; a refused allocation leaves nothing behind (the index is free again);
* destroying everything frees every kernel page (the ``env`` fixture).

Rules for hardware that reads its queues (the setup has a ``guest`` driver):

* a guest's invalidation written into its queue and rung through the vIOMMU's mapped
  page makes the hardware drop the stale translation, with no call into the driver;
* a command the guest may not issue stops the queue with an error the guest sees, and
  invalidates nothing; once the guest recovers, the queue runs again;
* once the queue is destroyed, the hardware no longer acts on that memory.
"""

# ruff: noqa: F811 - the tests take the kit's ``env`` fixture, imported for pytest to find
from __future__ import annotations

import errno

import pytest

from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.testing.conformance import (  # noqa: F401 - env: the kit's fixture
    RW,
    env,
    guest_setup,
)
from iommu_core.testing.env import DriverEnv, expect_errno
from iommu_core.testing.nesting import GuestRam, KitViommu, NestedSetup
from iommu_core.testing.queues import GuestHwQueue, HwQueueSetup, KitHwQueue

#: Per test, not per module: a project imports the tests into modules of its own.
HW_QUEUE = pytest.mark.iommu_feature("hw_queue")


def _setup(env: DriverEnv) -> tuple[Device, IommuDomain, GuestRam, HwQueueSetup]:
    dev, parent, guest, setup = guest_setup(env, "hw_queue", "conformance_hw_queue_setup")
    assert isinstance(setup, HwQueueSetup)
    return dev, parent, guest, setup


def _viommu(env: DriverEnv, dev: Device, parent: IommuDomain, setup: HwQueueSetup
            ) -> KitViommu:
    try:
        viommu = env.viommu_alloc(dev, parent, setup.viommu_type, setup.viommu_data)
    except IommuError as e:
        pytest.fail(f"rule: the vIOMMU type with HW queues ({setup.viommu_type:#x}) can be "
                    f"allocated; got {e}")
    env.vdevice_alloc(viommu, dev, setup.virt_id)
    return viommu


def _queue_gpa(guest: GuestRam, setup: HwQueueSetup) -> int:
    if setup.length > PAGE_SIZE:
        pytest.fail("kit data: a HW queue length of at most one page, please")
    return guest.alloc_page()


@HW_QUEUE
def test_hw_queue_unknown_type(env: DriverEnv) -> None:
    dev, parent, _guest, setup = _setup(env)
    viommu = _viommu(env, dev, parent, setup)
    assert viommu.ops is not None
    assert viommu.ops.get_hw_queue_size(viommu, setup.queue_type) > 0, (
        "rule: get_hw_queue_size is non-zero for the vIOMMU's queue type")
    assert viommu.ops.get_hw_queue_size(viommu, 0xFFFF_FFFE) == 0, (
        "rule: get_hw_queue_size is 0 for a queue type the vIOMMU does not know")


@HW_QUEUE
def test_hw_queue_index_rules(env: DriverEnv) -> None:
    dev, parent, guest, setup = _setup(env)
    viommu = _viommu(env, dev, parent, setup)
    n = setup.max_queues
    gpas = [_queue_gpa(guest, setup) for _ in range(min(n, 3) + 1)]
    qt, length = setup.queue_type, setup.length
    expect_errno(errno.EINVAL, env.hw_queue_alloc, viommu, qt, n, guest, gpas[0], length)
    if n > 1:
        expect_errno(errno.EIO, env.hw_queue_alloc, viommu, qt, 1, guest, gpas[1], length)
    queues: list[KitHwQueue] = []
    for i in range(min(n, 3)):
        try:
            queues.append(env.hw_queue_alloc(viommu, qt, i, guest, gpas[i], length))
        except IommuError as e:
            pytest.fail(f"rule: queue {i} can be allocated once queues 0..{i - 1} exist; "
                        f"got {e}")
    expect_errno(errno.EEXIST, env.hw_queue_alloc, viommu, qt, 0, guest, gpas[-1], length)
    if len(queues) > 1:
        assert queues[0].users, ("rule: a queue depends on the one before it, so it cannot "
                                 "be destroyed first (hw_queue->depend)")
        expect_errno(errno.EBUSY, env.hw_queue_destroy, queues[0])
    for q in reversed(queues):
        env.hw_queue_destroy(q)
    assert not any(q.users for q in queues), (
        "rule: destroying a queue drops its dependency on the one before it")
    # Everything went: index 0 is free again.
    env.hw_queue_destroy(env.hw_queue_alloc(viommu, qt, 0, guest, gpas[0], length))


@HW_QUEUE
def test_hw_queue_bad_arguments(env: DriverEnv) -> None:
    dev, parent, guest, setup = _setup(env)
    viommu = _viommu(env, dev, parent, setup)
    gpa = _queue_gpa(guest, setup)
    qt = setup.queue_type
    for bad in setup.bad_lengths:
        e = expect_errno(errno.EINVAL, env.hw_queue_alloc, viommu, qt, 0, guest, gpa, bad)
        assert str(e), "rule: a refused length says why"
    if setup.aligned and setup.length > 4:
        expect_errno(errno.EINVAL, env.hw_queue_alloc, viommu, qt, 0, guest,
                     gpa + setup.length // 2, setup.length)
    try:
        q = env.hw_queue_alloc(viommu, qt, 0, guest, gpa, setup.length)
    except IommuError as e:
        pytest.fail(f"rule: a refused allocation leaves nothing behind (index 0 is free); "
                    f"got {e}")
    env.hw_queue_destroy(q)


# ---------------------------------------------------------------------------------------
# Hardware that reads the queue
# ---------------------------------------------------------------------------------------
def _read(env: DriverEnv, dev: Device, iova: int) -> bytes:
    try:
        return env.dma_read(dev, iova, 4)
    except DmaFault as f:
        pytest.fail(f"rule: a DMA through the nested domain translates; it faulted: {f}")


def _guest_queue(env: DriverEnv) -> tuple[Device, GuestRam, NestedSetup, HwQueueSetup,
                                          GuestHwQueue]:
    """A device attached to a nested domain on a vIOMMU with one guest queue enabled."""
    dev, parent, guest, setup = _setup(env)
    if setup.guest is None:
        pytest.skip(f"{env.driver}: its hardware does not read its HW queues (no guest "
                    "driver in the test data)")
    if not env.ops.implements("conformance_nested_setup"):
        pytest.skip(f"{env.driver}: no nesting test data (conformance_nested_setup)")
    nested: NestedSetup | None = env.ops.call("conformance_nested_setup", env=env, dev=dev,
                                              guest=guest)
    if nested is None or nested.stage1 is None:
        pytest.skip(f"{env.driver}: no translating guest stage 1 in the nesting data")
    viommu = _viommu(env, dev, parent, setup)
    dom = env.viommu_nested_domain(viommu, nested.hwpt_data_type, nested.hwpt_data)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    gpa = _queue_gpa(guest, setup)
    hwq = env.hw_queue_alloc(viommu, setup.queue_type, 0, guest, gpa, setup.length)
    region = next(iter(viommu.mmaps.values()), None)
    q = GuestHwQueue(env, guest, hwq, gpa, region)
    setup.guest.enable(q)
    return dev, guest, nested, setup, q


def _remap(nested: NestedSetup, giova: int, gpa: int) -> None:
    assert nested.stage1 is not None
    nested.stage1.unmap(giova, PAGE_SIZE)
    nested.stage1.map(giova, gpa, PAGE_SIZE, RW)


@HW_QUEUE
def test_hw_queue_guest_invalidation(env: DriverEnv) -> None:
    dev, guest, nested, setup, q = _guest_queue(env)
    assert setup.guest is not None and nested.stage1 is not None
    giova = nested.giova
    pages = [guest.data_gpa(i) for i in range(3)]
    for i, gpa in enumerate(pages):
        guest.write(gpa, f"PG{i}!".encode()[:4])
    nested.stage1.map(giova, pages[0], PAGE_SIZE, RW)
    assert _read(env, dev, giova) == b"PG0!"
    _remap(nested, giova, pages[1])
    if _read(env, dev, giova) != b"PG0!":
        pytest.skip(f"{env.driver}: the model keeps no stale translation, so a queue's "
                    "invalidation cannot be seen")
    setup.guest.invalidate(q, giova, PAGE_SIZE)
    assert _read(env, dev, giova) == b"PG1!", (
        "rule: the guest's invalidation through its HW queue drops the stale translation "
        "(no call into the driver)")
    # A command the guest may not issue: refused, seen, and nothing invalidated.
    _remap(nested, giova, pages[2])
    assert _read(env, dev, giova) == b"PG1!"
    setup.guest.submit_illegal(q, giova, PAGE_SIZE)
    assert setup.guest.error(q), (
        "rule: a command the guest may not issue stops its queue with an error it sees")
    assert _read(env, dev, giova) == b"PG1!", (
        "rule: a refused guest command invalidates nothing")
    setup.guest.recover(q)
    assert not setup.guest.error(q), "rule: the guest's recovery clears the error"
    setup.guest.invalidate(q, giova, PAGE_SIZE)
    assert _read(env, dev, giova) == b"PG2!", (
        "rule: after the guest's recovery its queue runs again")


@HW_QUEUE
def test_hw_queue_destroyed_queue_is_not_read(env: DriverEnv) -> None:
    dev, guest, nested, setup, q = _guest_queue(env)
    assert setup.guest is not None and nested.stage1 is not None
    giova = nested.giova
    guest.write(guest.data_gpa(0), b"OLD!")
    guest.write(guest.data_gpa(1), b"NEW!")
    nested.stage1.map(giova, guest.data_gpa(0), PAGE_SIZE, RW)
    assert _read(env, dev, giova) == b"OLD!"
    _remap(nested, giova, guest.data_gpa(1))
    if _read(env, dev, giova) != b"OLD!":
        pytest.skip(f"{env.driver}: the model keeps no stale translation, so a queue's "
                    "invalidation cannot be seen")
    env.hw_queue_destroy(q.hwq)
    setup.guest.invalidate(q, giova, PAGE_SIZE)
    assert _read(env, dev, giova) == b"OLD!", (
        "rule: a destroyed HW queue is not read: ringing it invalidates nothing")

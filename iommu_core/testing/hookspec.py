# mypy: disable-error-code="empty-body"
"""The conformance kit's own hooks: test data a driver may provide for optional suites.

They are declared here, not in :mod:`iommu_core.hookspec`, because they are part of the
kit, not of the driver contract: :class:`~iommu_core.testing.env.DriverEnv` adds them
with ``PluginHost.add_hookspecs`` before any plugin is registered beside the driver.

A driver answers them either

* in its own plugin, marked optional so that a Machine (which does not know the kit's
  hooks) still accepts the plugin::

      @hookimpl(optionalhook=True)
      def conformance_nested_setup(self, env, dev, guest): ...

* or in a separate glue plugin the test project hands to the kit through the
  ``iommu_extra_plugins`` fixture (how the in-tree drivers' glue in
  ``tests/plugin_kit`` works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iommu_core.hookspec import hookspec

if TYPE_CHECKING:
    from iommu_core.platform.bus import Device
    from iommu_core.testing.env import DriverEnv
    from iommu_core.testing.nesting import GuestRam, NestedSetup
    from iommu_core.testing.queues import HwQueueSetup


@hookspec(firstresult=True)
def conformance_nested_setup(env: DriverEnv, dev: Device, guest: GuestRam
                             ) -> NestedSetup | None:
    """Test data for the nesting and vIOMMU suites on ``dev``.

    ``guest`` is guest RAM already mapped into a NEST_PARENT domain of ``dev``'s driver
    (``guest.parent``). Build the guest's stage-1 table in it (empty: the kit maps what it
    needs) and return the user data that makes a nested domain use that table, with the
    invalidation and vIOMMU details (:class:`~iommu_core.testing.nesting.NestedSetup`).
    Return None for a device this driver cannot nest.
    """


@hookspec(firstresult=True)
def conformance_page_request(env: DriverEnv, dev: Device, iova: int) -> bool | None:
    """Make ``dev`` send a page request for a read of ``iova``, for a driver whose
    hardware model issues none from a DMA (the selftest mock, whose page requests come
    from IOMMU_TEST_OP_TRIGGER_IOPF). Report it the way that platform does and return
    True; None if this driver has no such way.
    """


@hookspec(firstresult=True)
def conformance_unit_options(suite: str) -> dict[str, Any] | None:
    """Machine options of the IOMMU unit the kit builds for a test of ``suite`` (e.g.
    ``"hw_queue"``), for a feature the hardware has only when configured so (the SMMUv3's
    Tegra241 CMDQV). None: the unit's defaults."""


@hookspec(firstresult=True)
def conformance_hw_queue_setup(env: DriverEnv, dev: Device, guest: GuestRam
                               ) -> HwQueueSetup | None:
    """Test data for the HW-queue suite on ``dev``: the vIOMMU and queue types, the
    lengths the driver accepts and refuses and, for hardware that reads its queues, the
    guest's side of one (:class:`~iommu_core.testing.queues.HwQueueSetup`). ``guest`` is
    guest RAM in a NEST_PARENT domain, as for ``conformance_nested_setup``. None: this
    driver has no HW queue for ``dev``.
    """

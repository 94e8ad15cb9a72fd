"""The kit hook ``conformance_nested_setup`` answered from inside a driver plugin: marked
``optionalhook`` it does not upset a plain plugin host (a Machine), and the kit finds it."""

from __future__ import annotations

from typing import Any

import pytest
from pluggy import PluginValidationError

from drivers.mock.plugin import MockDriver
from iommu_core.hookspec import hookimpl
from iommu_core.plugin import PluginHost
from iommu_core.testing import DriverEnv, GuestRam, NestedSetup
from iommu_core.testing import conformance as kit
from iommufd import uapi_selftest as st


class MockWithTestData(MockDriver):
    """The mock driver shipping its own conformance test data."""

    @hookimpl(optionalhook=True)
    def conformance_nested_setup(self, env: DriverEnv, dev: Any, guest: GuestRam
                                 ) -> NestedSetup:
        data = st.iommu_hwpt_selftest(iotlb=st.IOMMU_TEST_IOTLB_DEFAULT)
        return NestedSetup(st.IOMMU_HWPT_DATA_SELFTEST, bytes(data))


class Misspelt(MockDriver):
    @hookimpl(optionalhook=True)
    def conformance_nested_setup(self, env: DriverEnv, device: Any, guest: GuestRam
                                 ) -> NestedSetup | None:
        return None


def test_optional_kit_hook_is_fine_without_the_kit() -> None:
    host = PluginHost()
    host.register_driver("mock", MockWithTestData())
    host.check_pending()  # a Machine does exactly this: no PluginValidationError


def test_kit_finds_the_hook_in_the_driver_plugin() -> None:
    env = DriverEnv("mock", plugin=MockWithTestData())
    try:
        assert env.ops.implements("conformance_nested_setup")
        try:
            kit.test_nested_translation(env)  # with the driver's own data
        except pytest.skip.Exception as e:
            pytest.fail(f"the nesting suite skipped: {e}")
    finally:
        env.teardown()
    assert env.kernel_pages == 0


def test_kit_checks_the_hook_signature() -> None:
    with pytest.raises(PluginValidationError):
        DriverEnv("mock", plugin=Misspelt())

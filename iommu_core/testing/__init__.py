"""The driver conformance kit, a pytest plugin.

Run it against every installed driver (entry point group ``iommu_sim.drivers``)::

    pytest -p iommu_core.testing                      # all installed drivers
    pytest -p iommu_core.testing --iommu-driver=mine  # one driver

The plugin is also registered under ``pytest11``; it only adds the suite when asked
(``-p iommu_core.testing``, ``--iommu-driver`` or ``--iommu-conformance``), so it stays
out of unrelated test runs. A project can also import the tests from
:mod:`iommu_core.testing.conformance` into a test module of its own.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from iommu_core.testing.env import DriverEnv, expect_errno, installed_drivers

__all__ = ["DriverEnv", "expect_errno", "installed_drivers"]

_KIT = pathlib.Path(__file__).with_name("conformance.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iommu-sim conformance")
    group.addoption("--iommu-driver", action="append", default=[],
                    help="driver(s) to check (default: every installed driver)")
    group.addoption("--iommu-conformance", action="store_true", default=False,
                    help="add the conformance suite to this run")


def _requested(config: pytest.Config) -> bool:
    args = list(config.invocation_params.args)
    explicit = any(a == "iommu_core.testing" or a == "-piommu_core.testing" for a in args)
    return bool(explicit or config.getoption("iommu_driver")
                or config.getoption("iommu_conformance"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "iommu_driver" in metafunc.fixturenames:
        names = metafunc.config.getoption("iommu_driver") or sorted(installed_drivers())
        metafunc.parametrize("iommu_driver", names)


@pytest.fixture
def iommu_extra_plugins() -> list[object]:
    """Plugins registered beside the driver under test (override to inject one)."""
    return []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if not _requested(config) or any(
            pathlib.Path(str(i.path)) == _KIT for i in items):
        return
    module = pytest.Module.from_parent(session, path=_KIT)
    new: list[Any] = list(session.genitems(module))
    items.extend(new)

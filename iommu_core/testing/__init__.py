"""The driver conformance kit, a pytest plugin.

Run it against one installed driver (entry point group ``iommu_sim.drivers``), or all::

    pytest --iommu-driver=mine        # one driver (repeat the option for more)
    pytest --iommu-conformance        # every installed driver

The plugin is registered under ``pytest11``, so an installed iommu-sim loads it; it adds
the suite only when asked (``--iommu-driver``, ``--iommu-conformance`` or ``-p
iommu_core.testing``), so it stays out of unrelated test runs. A kit test's id, as pytest
prints it, runs that test again (``pytest '/path/to/iommu_core/testing/conformance.py::
test_replace_domain[mine]' --iommu-driver=mine``). An ``--iommu-driver`` that is not
installed is a usage error. A project can also import the tests from
:mod:`iommu_core.testing.conformance` into a test module of its own (and choose the
drivers with ``pytestmark = pytest.mark.iommu_drivers("a", "b")``).

After the run the kit prints, per driver, the optional features it claims and which
feature suites ran, failed or were skipped (section "iommu-sim conformance").

Fixtures a project may override: ``iommu_extra_plugins`` (plugins registered beside the
driver under test: glue answering the kit hooks, or a deliberately broken op).
"""

from __future__ import annotations

import pathlib
from collections.abc import Generator
from typing import Any

import pytest

from iommu_core.testing.env import DriverEnv, expect_errno, installed_drivers
from iommu_core.testing.nesting import GuestRam, NestedSetup, UserInvalidation
from iommu_core.testing.queues import GuestHwQueue, GuestQueueDriver, HwQueueSetup
from iommu_core.testing.report import record_report, setup_report, summary_lines

__all__ = [
    "DriverEnv",
    "GuestHwQueue",
    "GuestQueueDriver",
    "GuestRam",
    "HwQueueSetup",
    "NestedSetup",
    "UserInvalidation",
    "expect_errno",
    "installed_drivers",
]

#: The kit's test modules: the driver contract, then the teaching contract.
_KIT = (pathlib.Path(__file__).resolve().with_name("conformance.py"),
        pathlib.Path(__file__).resolve().with_name("hw_queue.py"),
        pathlib.Path(__file__).resolve().with_name("describe.py"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iommu-sim conformance")
    group.addoption("--iommu-driver", action="append", default=[],
                    help="driver(s) to check (default: every installed driver)")
    group.addoption("--iommu-conformance", action="store_true", default=False,
                    help="add the conformance suite to this run")


def pytest_configure(config: pytest.Config) -> None:
    wanted = config.getoption("iommu_driver", default=[]) or []
    if wanted:
        have = installed_drivers()
        missing = [d for d in wanted if d not in have]
        if missing:
            raise pytest.UsageError(
                f"--iommu-driver: no installed IOMMU driver {', '.join(map(repr, missing))} "
                f"(installed: {', '.join(sorted(have)) or 'none'})")
    config.addinivalue_line(
        "markers", "iommu_feature(name): the conformance suite a test belongs to "
        "(core, pasid, dirty_tracking, nesting, viommu, hw_queue, pri, identity, describe)")
    config.addinivalue_line(
        "markers", "iommu_drivers(*names): run these conformance tests for these drivers "
        "only (instead of --iommu-driver / every installed driver)")
    setup_report(config)


def _requested(config: pytest.Config) -> bool:
    args = list(config.invocation_params.args)
    explicit = any(a == "iommu_core.testing" or a == "-piommu_core.testing" for a in args)
    return bool(explicit or config.getoption("iommu_driver")
                or config.getoption("iommu_conformance"))


def _kit_paths_given(config: pytest.Config) -> bool:
    """Whether the command line names a kit module itself (a test id printed by an
    earlier run): then exactly what it names runs."""
    base = pathlib.Path(str(config.invocation_params.dir))
    for a in config.invocation_params.args:
        if a.startswith("-"):
            continue
        path = pathlib.Path(a.split("::", 1)[0])
        try:
            if (base / path).resolve() in _KIT:
                return True
        except OSError:
            continue
    return False


def _nodeid(path: pathlib.Path, rootpath: pathlib.Path) -> str:
    """A kit module's test ids start with its path relative to the rootdir, as any test's
    do, or (installed, outside it) its absolute path: either runs the test again when
    given back to pytest."""
    try:
        return path.relative_to(rootpath.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "iommu_driver" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("iommu_drivers")
        if marker is not None:
            names = [str(a) for a in marker.args]
        else:
            names = metafunc.config.getoption("iommu_driver") or sorted(installed_drivers())
        metafunc.parametrize("iommu_driver", names)


@pytest.fixture
def iommu_extra_plugins() -> list[object]:
    """Plugins registered beside the driver under test (override to inject one)."""
    return []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if not _requested(config) or _kit_paths_given(config):
        return
    have = {pathlib.Path(str(i.path)) for i in items}
    for path in _KIT:
        if path in have:
            continue
        module = pytest.Module.from_parent(session, path=path,
                                           nodeid=_nodeid(path, config.rootpath))
        new: list[Any] = list(session.genitems(module))
        items.extend(new)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    record_report(item, report)
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    lines = summary_lines(config)
    if not lines:
        return
    terminalreporter.section("iommu-sim conformance")
    for line in lines:
        terminalreporter.write_line(line)

"""The pytest plugins as a user meets them: the kit is asked for with ``--iommu-driver``
alone, a driver that is not installed is one usage error, a test id the kit prints runs
that test again, and ``iommu_sim.testing`` gives users' own tests a ``machine``."""

from __future__ import annotations

import re

import pytest


def test_unknown_driver_is_one_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--iommu-driver=nope", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [ln for ln in result.stderr.lines if ln.strip()]
    assert len(err) == 1, result.stderr.str()
    assert "no installed IOMMU driver 'nope'" in err[0] and "mock" in err[0]
    assert "setup" not in result.stdout.str().lower()


def test_driver_option_alone_runs_the_kit(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--iommu-driver=mock", "-p", "no:cacheprovider",
                                "-k", "test_replace_domain or test_structure_layouts")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*iommu-sim conformance*", "  core *ran*1 passed*"])


def test_printed_kit_test_id_runs_that_test_again(pytester: pytest.Pytester) -> None:
    first = pytester.runpytest("--iommu-driver=mock", "-p", "no:cacheprovider", "-rA",
                               "-k", "test_replace_domain")
    assert first.ret == pytest.ExitCode.OK
    (line,) = [ln for ln in first.stdout.lines if ln.startswith("PASSED ")]
    test_id = line.split()[1]
    assert re.search(r"conformance\.py::test_replace_domain\[mock\]$", test_id), test_id
    again = pytester.runpytest(test_id, "-p", "no:cacheprovider", "-rA")
    assert again.ret == pytest.ExitCode.OK, again.stdout.str()
    again.assert_outcomes(passed=1)  # that test, not the whole kit
    assert any("test_replace_domain[mock]" in ln for ln in again.stdout.lines
               if ln.startswith("PASSED "))


MACHINE_TESTS = '''
import pytest
from iommu_sim import Machine

SEEN = []

def test_default_machine(machine):
    assert isinstance(machine, Machine)
    assert set(machine.iommus.values()) >= {"arm_smmu_v3", "intel_vtd", "amd_vi"}
    fd = machine.open("/dev/iommu")
    assert fd >= 0
    SEEN.append(machine)

@pytest.mark.machine({"iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
                      "devices": [{"name": "0000:00:01.0", "iommu": "smmu0"}]})
def test_marked_config(machine):
    assert machine.devices == {"0000:00:01.0": "smmu0"}

def test_the_last_machine_was_shut_down():
    # shutdown closed its files and freed what its kernel allocated
    assert SEEN and SEEN[0].kernel_pages_in_use == 0
'''

CONFIG_FIXTURE = '''
import pytest

@pytest.fixture
def machine_config():
    return {"iommus": [{"name": "dmar0", "driver": "intel_vtd"}],
            "devices": [{"name": "0000:10:00.0", "iommu": "dmar0"}]}

def test_overridden(machine):
    assert machine.iommus["dmar0"] == "intel_vtd"
'''


def test_machine_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mine=MACHINE_TESTS)
    result = pytester.runpytest("-p", "iommu_sim.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_machine_config_fixture_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cfg=CONFIG_FIXTURE)
    result = pytester.runpytest("-p", "iommu_sim.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)

"""The kit must catch broken drivers: run it (pytester) on drivers with a deliberately
broken op injected through ``iommu_extra_plugins`` and check it fails naming the rule."""

from __future__ import annotations

import pytest

FORGETFUL_MAP = '''
import pytest
from iommu_core.hookspec import hookimpl


class ForgetfulMap:
    """map_pages that reports success without writing a single descriptor."""

    @hookimpl(tryfirst=True)
    def map_pages(self, domain, iova, paddr, pgsize, pgcount, prot):
        return pgsize * pgcount


@pytest.fixture
def iommu_extra_plugins():
    return [ForgetfulMap()]
'''

SKIPPED_NESTED_FLUSH = '''
import pytest
from iommu_core.hookspec import hookimpl
from tests.plugin_kit.glue import VtdGlue


class NoNestedFlush:
    """cache_invalidate_user that claims every entry and flushes nothing."""

    @hookimpl(tryfirst=True)
    def cache_invalidate_user(self, domain, array):
        return True


@pytest.fixture
def iommu_extra_plugins():
    return [VtdGlue(), NoNestedFlush()]
'''


def test_kit_fails_a_driver_that_forgets_to_map(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FORGETFUL_MAP)
    result = pytester.runpytest("-p", "iommu_core.testing", "--iommu-driver=mock",
                                "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    # The failures name the rules the broken op violates...
    assert "rule: iova_to_phys returns the mapped address" in out
    assert "rule: a DMA read through the domain returns what user space wrote" in out
    # ...and the summary reports the core suite as failed for this driver.
    result.stdout.fnmatch_lines(["*iommu-sim conformance*", "mock: claims *",
                                 "  core *FAILED*"])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 4, outcomes


def test_same_kit_passes_the_unbroken_driver(pytester: pytest.Pytester) -> None:
    # The control: without the injected plugin the same run passes, so the failures
    # above come from the broken op, not from the harness.
    result = pytester.runpytest("-p", "iommu_core.testing", "--iommu-driver=mock",
                                "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["  core *ran*"])


def test_kit_fails_a_driver_that_skips_the_nested_flush(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SKIPPED_NESTED_FLUSH)
    result = pytester.runpytest("-p", "iommu_core.testing", "--iommu-driver=intel_vtd",
                                "-p", "no:cacheprovider", "-k", "nested")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*rule: after the user's stage-1 invalidation a DMA uses the new guest mapping*"])
    result.stdout.fnmatch_lines(["  nesting *FAILED*1 passed, 1 failed*"])

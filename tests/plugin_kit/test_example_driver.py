"""The out-of-tree example driver (examples/flat_iommu) as a new user meets it: installed
as its own package, found through its ``iommu_sim.drivers`` entry point, its own tests
and the conformance kit run in its directory with the README's command.

The package is installed (editable) once per environment. Several checkouts may share an
environment, so the commands run with this checkout's code first on the path (its
iommu-sim and its example), whichever checkout the installed metadata points at: the
entry point names a module, not a file."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from importlib import metadata

import pytest

from iommu_core.testing import installed_drivers

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flat_iommu"
DIST = "iommu-sim-flat-iommu"


def _installed() -> bool:
    """Installed as an editable checkout of the example (this one or another)."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        return False
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    path = pathlib.Path(url.removeprefix("file://"))
    return bool(url) and path.name == EXAMPLE.name and (path / "pyproject.toml").exists()


def _env() -> dict[str, str]:
    """This checkout's iommu-sim and example first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(EXAMPLE), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


@pytest.fixture(scope="session")
def flat_iommu_installed() -> None:
    """``pip install -e examples/flat_iommu --no-deps`` once, if it is not there yet."""
    if not _installed():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(EXAMPLE)],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert _installed()


def test_entry_point_is_discovered(flat_iommu_installed: None) -> None:
    ep = installed_drivers().get("flat_iommu")
    assert ep is not None, sorted(installed_drivers())
    assert ep.value == "flat_iommu.plugin:plugin"


def test_example_passes_its_tests_and_the_kit(flat_iommu_installed: None) -> None:
    # Exactly the README's command, in the example's directory, in a fresh interpreter
    # (the editable install is only importable from a new process).
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "iommu_core.testing",
         "--iommu-driver=flat_iommu", "-p", "no:cacheprovider"],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=300, env=_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The example's own tests ran...
    assert "tests/test_flat_hw.py" in out and "tests/test_flat_driver.py" in out, out
    assert "tests/test_flat_describe.py" in out, out
    # ...and the kit's suites ran on the driver, reporting what it claims.
    assert "flat_iommu: claims dirty_tracking, identity, describe" in out, out
    for line in ("core            ran", "dirty_tracking  ran", "identity        ran",
                 "nesting         skipped", "describe        ran"):
        assert line in out, out

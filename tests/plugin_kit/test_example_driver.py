"""The out-of-tree example driver (examples/flat_iommu) as a new user meets it: a package
of its own, found through its ``iommu_sim.drivers`` entry point, its own tests and the
conformance kit run in its directory with the README's command.

Nothing is installed into the environment running this suite: the example is put on the
path of a fresh interpreter together with a ``.dist-info`` written from its
``pyproject.toml``, which is what ``importlib.metadata`` reads when it finds an
installed package's entry points. This checkout's iommu-sim comes first on that path,
whatever else the environment has installed."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flat_iommu"


def _dist_info(site: pathlib.Path) -> pathlib.Path:
    """The metadata ``pip install`` would write for the example: its name, version and
    entry points (from its pyproject.toml), in ``site``."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                   f"Version: {version}\n")
    lines = []
    for group, eps in project.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    return dist


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment for a subprocess in which the example is importable and its
    entry point registered; this checkout's iommu-sim first."""
    site = tmp_path_factory.mktemp("example-site")
    _dist_info(site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(EXAMPLE), str(site), *filter(None, [env.get("PYTHONPATH", "")])])
    env.pop("IOMMU_SIM_ONLY_BUILTIN", None)
    return env


def test_entry_point_is_discovered(example_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from iommu_core.testing import installed_drivers; "
         "ep = installed_drivers()['flat_iommu']; print(ep.value); "
         "import flat_iommu; print(flat_iommu.__file__)"],
        capture_output=True, text=True, timeout=120, env=example_env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    value, where = proc.stdout.split()
    assert value == "flat_iommu.plugin:plugin"
    assert pathlib.Path(where).is_relative_to(EXAMPLE)  # this checkout's example


def readme_test_command() -> list[str]:
    text = (EXAMPLE / "README.md").read_text()
    block = text.split("## Install and test", 1)[1]
    (cmd,) = [ln for ln in re.findall(r"```sh\n(.*?)```", block, re.S)[0].splitlines()
              if "pytest" in ln]
    return cmd.split()


def test_example_passes_its_tests_and_the_kit(example_env: dict[str, str]) -> None:
    # Exactly the README's command, in the example's directory, in a fresh interpreter.
    cmd = readme_test_command()
    assert cmd[:3] == ["python", "-m", "pytest"] and "-p" not in cmd, cmd
    proc = subprocess.run([sys.executable, *cmd[1:], "-p", "no:cacheprovider"],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
                          env=example_env)
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

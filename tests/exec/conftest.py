"""Compile the exec tests' C programs (and find the kernel's own selftests) once.

The programs include Linux 7.3's uAPI headers and the selftest ABI header
(``iommufd_test.h``), from the tree ``../shared/linux-7.3/fetch.sh`` extracts (or
``$IOMMU_SIM_LINUX``); without a C compiler or those headers the tests are skipped and say
why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def linux_tree() -> Path | None:
    root = Path(os.environ.get("IOMMU_SIM_LINUX",
                               Path.home() / ".cache/iommu-sim/linux-7.3"))
    ok = ((root / "usr/include/linux/iommufd.h").exists()
          and (root / "drivers/iommu/iommufd/iommufd_test.h").exists())
    return root if ok else None


@pytest.fixture(scope="session")
def cprog(tmp_path_factory: pytest.TempPathFactory) -> object:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler: the exec tests compile small C programs")
    tree = linux_tree()
    if tree is None:
        pytest.skip("no Linux 7.3 uAPI headers: run ../shared/linux-7.3/fetch.sh "
                    "(or set IOMMU_SIM_LINUX)")
    out = tmp_path_factory.mktemp("cprog")

    def build(name: str) -> Path:
        exe = out / name
        if not exe.exists():
            subprocess.run([cc, "-O1", "-Wall", "-Werror", "-D_GNU_SOURCE",
                            "-isystem", str(tree / "usr/include"),
                            "-I", str(tree / "drivers/iommu/iommufd"),
                            "-o", str(exe), str(HERE / "c" / f"{name}.c")], check=True)
        return exe

    return build

"""Real programs against a Machine: small C programs of our own, run through
``iommu-sim exec``; each checks itself and exits 0, and the Machine is left as it was."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from iommu_sim import Machine
from iommu_sim.exec import HostUnsupported, exec_program

PROGRAMS = ["paging", "private", "fork", "fault_poll", "crash", "memfd", "stress",
            "fail_nth"]
DEV = "0000:00:01.0"
VENDORS = ["arm_smmu_v3", "intel_vtd", "amd_vi"]
#: Programs that make the device DMA (its DMA engine, through VFIO): the paging flow on
#: every vendor, nesting through guest tables (stale until the guest's invalidation) on
#: each vendor.
DMA_PROGRAMS = [("dma_paging", v) for v in VENDORS] + [
    ("dma_nested_smmu", "arm_smmu_v3"), ("dma_nested_vtd", "intel_vtd"),
    ("dma_nested_amd", "amd_vi")]


def run(cprog: Callable[[str], Path], name: str, driver: str = "", **kw: object
        ) -> tuple[Machine, int]:
    """Run program ``name`` on a Machine with no IOMMU but the mock, or with one unit of
    ``driver`` and one device behind it (its cdev: /dev/vfio/devices/vfio0)."""
    iommus = [{"name": "u0", "driver": driver}] if driver else []
    devices = [{"name": DEV, "iommu": "u0"}] if driver else []
    m = Machine.from_config({"iommus": iommus, "devices": devices})
    try:
        code = exec_program(m, str(cprog(name)), [], **kw)  # type: ignore[arg-type]
    except HostUnsupported as e:
        pytest.skip(str(e))
    return m, code


@pytest.mark.parametrize(("name", "driver"), [(p, "") for p in PROGRAMS] + DMA_PROGRAMS)
def test_program(cprog: Callable[[str], Path], name: str, driver: str,
                 capfd: pytest.CaptureFixture[str]) -> None:
    m, code = run(cprog, name, driver)
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert f"{name} ok" in out
    assert "internal error" not in err
    # every kernel page and pin the program caused is gone with it
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    assert m.platform.alloc.pin_total() == 0
    if driver:  # the last close reset the function: its engine idle, interrupts off
        pdev = m.device(DEV).pci
        assert pdev is not None and not pdev.msi_enabled() and not pdev.bus_master()
        assert pdev.msi_irq.handler is None
        engine = pdev.bars[0].ops  # type: ignore[union-attr]
        assert engine.status == 0 and engine.buf == bytes(4096)


def test_trace_records_the_programs_ioctls(cprog: Callable[[str], Path], tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.json"
    _m, code = run(cprog, "paging", trace=trace)
    capfd.readouterr()
    assert code == 0
    text = trace.read_text()
    assert '"layer": "user"' in text and "pid " in text and "iopt_map_pages" in text


def test_exit_status_and_missing_program(capfd: pytest.CaptureFixture[str]) -> None:
    m = Machine.from_config({"iommus": [], "devices": []})
    try:
        assert exec_program(m, "/bin/sh", ["-c", "exit 7"]) == 7
        assert exec_program(m, "/bin/sh", ["-c", "kill -9 $$"]) == 128 + 9
        assert exec_program(m, "/no/such/program", []) == 127
    except HostUnsupported as e:
        pytest.skip(str(e))
    assert "/no/such/program" in capfd.readouterr().err


def test_cli_says_what_is_wrong_in_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "iommu_sim", "exec"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no program" in r.stderr


def test_tegra_vcmdq_program(cprog: Callable[[str], Path],
                             capfd: pytest.CaptureFixture[str]) -> None:
    """A C VMM and guest invalidate through a Tegra241 VCMDQ (tests/exec/c/tegra_vcmdq.c),
    the device's DMA engine showing stale and fresh; the program exits with the VINTF page
    still mapped."""
    m = Machine.from_config({"iommus": [{"name": "u0", "driver": "arm_smmu_v3",
                                         "tegra241_cmdqv": True}],
                             "devices": [{"name": DEV, "iommu": "u0"}]})
    try:
        code = exec_program(m, str(cprog("tegra_vcmdq")), [])
    except HostUnsupported as e:
        pytest.skip(str(e))
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert "tegra_vcmdq ok" in out and "internal error" not in err
    cmdqv = m.platform.iommus["u0"].cmdqv  # type: ignore[attr-defined]
    assert cmdqv is not None and sum(cmdqv.refused) == 1 and sum(cmdqv.executed) > 4
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    assert m.platform.alloc.pin_total() == 0

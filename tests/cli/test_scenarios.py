"""Scenario files: every shipped scenario passes under ``run``; a wrong expectation fails
with a message naming the step and what differed; the format's checks and expressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iommu_sim.cli import main
from iommu_sim.expr import ExprError, evaluate
from iommu_sim.scenario import ScenarioError, ScenarioFailed, builtin_scenarios, load, run

SHIPPED = builtin_scenarios()

HEAD = """
name = "mini"
[machine]
iommus = [{ name = "dmar0", driver = "intel_vtd" }]
devices = [{ name = "0000:10:00.0", iommu = "dmar0" }]
[vars]
DEV = "0000:10:00.0"

[[step]]
open = "/dev/iommu"
as = "iommufd"
[[step]]
open = "vfio:{DEV}"
as = "vfio"
[[step]]
title = "bind"
ioctl = "VFIO_DEVICE_BIND_IOMMUFD"
fd = "vfio"
args = { iommufd = "iommufd" }
capture = { dev_id = "out_devid" }
[[step]]
ioctl = "IOMMU_IOAS_ALLOC"
capture = { ioas = "out_ioas_id" }
[[step]]
mmap = 0x2000
as = "buf"
[[step]]
mem_write = "buf"
text = "hello"
[[step]]
ioctl = "IOMMU_IOAS_MAP"
args = { ioas_id = "ioas", user_va = "buf", length = 0x2000, iova = 0x10000, flags = "7" }
[[step]]
ioctl = "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
fd = "vfio"
args = { pt_id = "ioas" }
"""


def run_text(text: str) -> None:
    run(load("mini.toml", text))


def test_shipped_scenarios_exist() -> None:
    assert {"tour_arm_smmu_v3", "tour_intel_vtd", "tour_amd_vi"} <= set(SHIPPED)
    for path in SHIPPED.values():
        sc = load(path)
        assert sc.steps and sc.description


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_scenario_passes_under_run(name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", name, "--no-color"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PASS {load(SHIPPED[name]).name}")


def test_mini_scenario_passes_and_captures() -> None:
    text = HEAD + """
[[step]]
dma_read = "{DEV}"
iova = 0x10000
len = 5
expect = "hello"
[[step]]
check = "dev_id == 1 and ioas == 2"
"""
    results = run(load("mini.toml", text))
    assert results[-2].value == b"hello"
    assert results[2].struct.out_devid == 1


def test_wrong_bytes_expectation_fails_clearly() -> None:
    text = HEAD + """
[[step]]
title = "the device reads"
dma_read = "{DEV}"
iova = 0x10000
len = 5
expect = "HELLO"
"""
    with pytest.raises(ScenarioFailed) as e:
        run_text(text)
    msg = str(e.value)
    assert "step 9" in msg and "'the device reads'" in msg
    assert "expected b'HELLO', got b'hello'" in msg


def test_wrong_errno_and_unexpected_success_fail_clearly() -> None:
    wrong = HEAD + """
[[step]]
ioctl = "IOMMU_HWPT_ALLOC"
args = { dev_id = "dev_id", pt_id = 999 }
expect_errno = "ENOENT"
"""
    # Linux's iommufd_hwpt_alloc() answers EINVAL for an unknown pt_id
    with pytest.raises(ScenarioFailed, match="expected errno ENOENT, got EINVAL"):
        run_text(wrong)
    success = HEAD + """
[[step]]
ioctl = "IOMMU_HWPT_ALLOC"
args = { dev_id = "dev_id", pt_id = "ioas" }
expect_errno = "EINVAL"
"""
    with pytest.raises(ScenarioFailed, match="expected errno EINVAL, but it succeeded"):
        run_text(success)
    unexpected = HEAD + """
[[step]]
ioctl = "IOMMU_HWPT_ALLOC"
args = { dev_id = "dev_id", pt_id = 999 }
"""
    with pytest.raises(ScenarioFailed, match="failed with EINVAL: pt_id 999"):
        run_text(unexpected)


def test_fault_expectations() -> None:
    ok = HEAD + """
[[step]]
dma_read = "{DEV}"
iova = 0x900000
expect_fault = true
"""
    run_text(ok)
    missing = HEAD + """
[[step]]
dma_read = "{DEV}"
iova = 0x10000
expect_fault = "VTD_FR_FS_PAGING_ENTRY_P"
"""
    with pytest.raises(ScenarioFailed, match="expected fault VTD_FR_FS_PAGING_ENTRY_P, but "
                       "the DMA succeeded"):
        run_text(missing)
    unexpected = HEAD + """
[[step]]
dma_read = "{DEV}"
iova = 0x900000
"""
    with pytest.raises(ScenarioFailed, match="unexpected DMA fault"):
        run_text(unexpected)


def test_ioctl_field_expectation() -> None:
    text = HEAD + """
[[step]]
ioctl = "IOMMU_HWPT_ALLOC"
args = { dev_id = "dev_id", pt_id = "ioas" }
expect = { out_hwpt_id = 42 }
"""
    with pytest.raises(ScenarioFailed, match=r"expected out_hwpt_id == 0x2a, got"):
        run_text(text)


def test_cli_run_reports_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(HEAD + """
[[step]]
mem_read = "buf"
len = 5
expect = "bye!!"
""")
    assert main(["run", str(f), "--no-color"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL mini: step 9") and "expected b'bye!!', got b'hello'" in out
    assert main(["run", str(f), "--json"]) == 1
    (rep,) = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and rep["passed"] == 8 and "bye" in rep["failure"]
    assert main(["run", str(tmp_path / "nope.toml")]) == 2


def test_cli_run_verbose_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tour_intel_vtd", "-v", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "ok   3 bind the device to iommufd" in out
    assert "(expected: DmaFault" in out
    assert main(["run", "--list"]) == 0
    assert "tour_amd_vi" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "match"), [
    ("[[step]]\nfrobnicate = 1\n", "needs exactly one action"),
    ("[[step]]\nopen = '/dev/iommu'\nmmap = 1\n", "needs exactly one action"),
    ("[[step]]\nopen = '/dev/iommu'\nlen = 3\n", "unknown keys"),
    ("oops = 1\n", "unknown top-level keys"),
    ("[chapters]\na = 'A'\n[[step]]\nchapter = 'b'\nopen = '/dev/iommu'\n", r"not in \[chapters\]"),
    ("[[step\n", "mini.toml"),
])
def test_format_errors(text: str, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        load("mini.toml", text)


def test_expressions() -> None:
    assert evaluate("IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE", {}) == 5
    assert evaluate("FIELD_PREP(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_S1_TRANS)", {}) == 0xA
    assert evaluate("GENMASK(3, 1) | BIT(0)", {}) == 0xF
    assert evaluate("x.y + 1", {"x": type("S", (), {"y": 2})()}) == 3
    for bad in ("__import__('os')", "x._secret", "open('f')", "[1, 2]", "lambda: 1", "1 +"):
        with pytest.raises(ExprError):
            evaluate(bad, {"x": object()})
    with pytest.raises(ExprError, match="unknown name"):
        evaluate("NOT_A_CONSTANT", {})

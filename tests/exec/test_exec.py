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


def run(cprog: Callable[[str], Path], name: str, **kw: object) -> tuple[Machine, int]:
    m = Machine.from_config({"iommus": [], "devices": []})
    try:
        code = exec_program(m, str(cprog(name)), [], **kw)  # type: ignore[arg-type]
    except HostUnsupported as e:
        pytest.skip(str(e))
    return m, code


@pytest.mark.parametrize("name", PROGRAMS)
def test_program(cprog: Callable[[str], Path], name: str,
                 capfd: pytest.CaptureFixture[str]) -> None:
    m, code = run(cprog, name)
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert f"{name} ok" in out
    assert "internal error" not in err
    # every kernel page and pin the program caused is gone with it
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    assert m.platform.alloc.pin_total() == 0


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

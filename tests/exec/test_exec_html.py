"""``iommu-sim exec --html``: the program's call tree drawn as a page, from the trace it
records (the same page ``trace_page`` draws from a ``--trace`` file)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from iommu_sim.cli import main
from iommu_sim.draw.html import trace_page
from iommu_sim.exec import HostUnsupported, check_host


def test_exec_html_is_the_trace_drawn(cprog: Callable[[str], Path], tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    try:
        check_host()
    except HostUnsupported as e:
        pytest.skip(str(e))
    prog = cprog("paging")
    page, trace = tmp_path / "p.html", tmp_path / "p.json"
    assert main(["exec", "--html", str(page), "--trace", str(trace), "--", str(prog)]) == 0
    capfd.readouterr()
    html = page.read_text()
    assert html == trace_page(trace, title=f"iommu-sim exec {prog}")
    # every ioctl of the program, named, with its pid
    ioctls = re.findall(r"\[user\] ioctl</span> pid (\d+) fd \d+ (IOMMU_\w+)", html)
    assert ioctls and {name for _, name in ioctls} >= {"IOMMU_IOAS_ALLOC", "IOMMU_IOAS_MAP"}
    assert len({pid for pid, _ in ioctls}) == 1
    # without --trace the page is still written (the trace is recorded aside)
    other = tmp_path / "q.html"
    assert main(["exec", "--html", str(other), "--", str(prog)]) == 0
    capfd.readouterr()
    assert other.read_text().count("[user] ioctl</span>") == len(ioctls)

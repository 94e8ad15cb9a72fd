"""The pages and pictures in a real browser: headless Chromium (Debian's ``chromium``)
loads each one; nothing is logged as an error, every SVG has a size, and a screenshot is
not blank. Skipped, saying why, where no Chromium is installed (``apt-get install
chromium``; ``.ci/run`` installs it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from iommu_sim.cli import main
from tests.browser.chromium import Browser, find_chromium, ink_fraction

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = find_chromium()

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium installed (Debian: apt-get install "
    "chromium); the pages are checked without a browser in tests/cli/test_pictures.py")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fresh output of the commands that draw (not the committed gallery)."""
    d = tmp_path_factory.mktemp("pictures")
    out = {name: d / name for name in (
        "tour.html", "trace.html", "ste_bad.svg", "graph.svg", "pte.svg")}
    runs = [
        ["tour", "--vendor", "smmu", "--step", "nested", "--html", str(out["tour.html"])],
        ["trace", str(ROOT / "docs" / "gallery" / "vmm_script.py"), "--html",
         str(out["trace.html"])],
        ["decode", "ste", "0x100b", "0x20000000", "--svg", str(out["ste_bad.svg"])],
        ["graph", "--scenario", "tour_intel_vtd", "--format", "svg", "-o",
         str(out["graph.svg"])],
        ["decode", "pte", "0x100828025", "0", "--format", "x86_64", "--svg",
         str(out["pte.svg"])],
    ]
    for argv in runs:
        assert main(argv) == 0, argv
    out["layers.svg"] = ROOT / "docs" / "gallery" / "layers.svg"
    out["walk.svg"] = ROOT / "docs" / "gallery" / "walk_amd_nested.svg"
    return out


SIZES = """JSON.stringify(Array.from(document.querySelectorAll('svg')).map(s => {
  const r = s.getBoundingClientRect(); return [r.width, r.height]; }))"""


@pytest.mark.parametrize("name", ["tour.html", "trace.html", "ste_bad.svg", "graph.svg",
                                  "pte.svg", "layers.svg", "walk.svg"])
def test_page_loads_cleanly_and_draws(name: str, browser: Browser,
                                      pictures: dict[str, Path]) -> None:
    browser.events.clear()
    browser.open(pictures[name])
    sizes = json.loads(browser.evaluate(SIZES))
    assert sizes, "no SVG on the page"
    assert all(w > 0 and h > 0 for w, h in sizes), sizes
    png = browser.screenshot()
    assert ink_fraction(png) > 0.01, "the screenshot is blank"
    assert browser.errors() == []


def test_tour_page_figures_and_folds(browser: Browser, pictures: dict[str, Path]) -> None:
    browser.events.clear()
    browser.open(pictures["tour.html"])
    count = browser.evaluate("document.querySelectorAll('figure svg').length")
    assert count == pictures["tour.html"].read_text().count("<figure>")
    # a folded run of calls opens on a click and shows what it hid
    shown = browser.evaluate("""(() => {
        const d = document.querySelector('details:not([open])');
        const li = d.querySelector('ul li');
        const before = li.checkVisibility();
        d.querySelector('summary').click();
        return [before, li.checkVisibility(), li.textContent]; })()""")
    assert shown[:2] == [False, True], shown
    assert shown[2].startswith("[core] iommu_map")
    assert browser.errors() == []

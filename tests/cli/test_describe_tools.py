"""The tools know no vendor: iommu_sim imports no driver (but the built-in list), and a
driver the tools have never heard of is decoded, listed, named in expressions and toured
as soon as the catalogue has it; a broken package is left out; the AMD granules come
from EFR."""

from __future__ import annotations

import ast
import io
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import iommu_sim.catalogue as cat
from drivers.arm_smmu_v3 import regs as r
from iommu_core.describe import (
    BitField,
    GuestBuilder,
    Layout,
    Problem,
    Structure,
    VendorDesc,
)
from iommu_core.hookspec import hookimpl
from iommu_core.plugin import PluginHost
from iommu_sim import expr
from iommu_sim.builtin import builtin_drivers
from iommu_sim.cli import main
from iommu_sim.decode import DecodeError, decode
from iommu_sim.info import hw_info
from iommu_sim.machine import Machine
from iommu_sim.scenario import ScenarioFailed, load, run
from iommu_sim.tour import TourError, resolve_chapters, run_tour
from tests.core.fake_driver import FakeDriver

ROOT = Path(__file__).resolve().parents[2]


def test_iommu_sim_imports_no_driver_but_the_builtin_list() -> None:
    offenders = []
    for path in sorted((ROOT / "iommu_sim").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] == "drivers"]
        if path.name != "builtin.py" and '"drivers.' in path.read_text():
            offenders.append(f"{path.name}: names a driver module")
    assert offenders == []


# -- a driver iommu-sim has never heard of -----------------------------------------------------
TOY = Layout(name="toy-entry", title="toy entry", category="entry", words=1,
             fields=(BitField("V", 0, 0, "valid"), BitField("COLOUR", 3, 1, "colour",
                                                             {7: "RESERVED"})))
TOY_CMD = Layout(name="cmd", title="toy command", category="command", words=1,
                 fields=(BitField("OP", 7, 0, "opcode"),))


class ToyEntry(Structure):
    layout = TOY

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> list[Problem]:
        return [Problem("COLOUR 7 is reserved")] if values["COLOUR"] == 7 else []


class ToyDriver(FakeDriver):
    """The core's fake driver, made teachable."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VendorDesc("toy", "Toy IOMMU", aliases=("toyiommu",))

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return [ToyEntry(), Structure(TOY_CMD)]

    @hookimpl
    def describe_constants(self) -> Mapping[str, int]:
        return {"TOY_COLOUR_RED": 2 << 1}

    @hookimpl
    def describe_guest_builders(self) -> list[GuestBuilder]:
        return [GuestBuilder("toy-root", "its root pointer", lambda pt, p: pt.root.to_bytes(
            8, "little"), ("shift",))]


@pytest.fixture
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def load() -> cat.Catalogue:
        host = PluginHost()
        for name, plugin in builtin_drivers().items():
            host.register_driver(name, plugin)
        host.register_driver("toy_iommu", ToyDriver())
        return cat.Catalogue(host)

    monkeypatch.setattr(cat, "_load", load)
    cat.catalogue.cache_clear()
    expr.constants.cache_clear()
    yield
    cat.catalogue.cache_clear()
    expr.constants.cache_clear()


def test_a_new_driver_is_decoded_listed_and_named(toy_installed: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = decode("toy-entry", [0xF])
    assert d.kind == "toy entry" and d.field("COLOUR").text == "RESERVED" and d.refused
    assert d.vendor == "toy"
    with pytest.raises(DecodeError, match=r"ambiguous: give --vendor smmu\|vtd\|amd\|toy"):
        decode("cmd", [0])
    assert decode("cmd", [0x12], vendor="toyiommu").kind == "toy command"
    assert decode("cmd", [r.CMDQ_OP_CMD_SYNC], vendor="arm").summary == "CMD_SYNC"
    with pytest.raises(DecodeError, match="not a toy structure"):
        decode("ste", [0], vendor="toy")
    assert main(["decode", "--list"]) == 0
    assert any(line.split()[:2] == ["toy-entry", "toy"]
               for line in capsys.readouterr().out.splitlines())
    assert expr.evaluate("TOY_COLOUR_RED | 1", {}) == 5


def test_a_broken_package_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint("broken_iommu", "no_such_module_anywhere:plugin", "iommu_sim.drivers")
    monkeypatch.setattr(cat, "entry_points", lambda group: [ep])
    monkeypatch.delenv(cat.ONLY_BUILTIN, raising=False)
    c = cat._load()
    assert "broken_iommu" in c.broken and "ModuleNotFoundError" in c.broken["broken_iommu"]
    assert [d.driver for d in c] == list(builtin_drivers())


def test_resolve_chapters_per_vendor() -> None:
    tours = {"a": ["paging", "nested", "stale"], "b": ["paging", "dirty"]}
    assert resolve_chapters(None, tours) == tours
    assert resolve_chapters(["2"], tours) == {"a": ["nested"], "b": ["dirty"]}
    assert resolve_chapters(["3"], tours) == {"a": ["stale"], "b": []}
    assert resolve_chapters(["dirty", "paging"], tours) == {"a": ["paging"],
                                                           "b": ["dirty", "paging"]}
    with pytest.raises(TourError, match=r"1-3 or one of paging, nested, stale, dirty"):
        resolve_chapters(["fault"], tours)


GUEST_SCENARIO = """
name = "guest"
vendor = "arm_smmu_v3"
[machine]
iommus = [{ name = "smmu0", driver = "arm_smmu_v3" }]
devices = [{ name = "0000:00:01.0", iommu = "smmu0" }]
[[step]]
mmap = 0x100000
as = "ram"
[[step]]
guest_ram = "ram"
size = 0x100000
as = "guest"
[[step]]
guest_table = "arm_lpae_s1"
as = "s1"
[[step]]
guest_build = "%s"
table = "s1"
gpa = 0x1000
params = { %s = 3 }
"""


def test_guest_build_uses_the_vendors_builder() -> None:
    (*_, res) = run(load("ok", GUEST_SCENARIO % ("cd", "asid")))
    cd = bytes(res.value)
    assert len(cd) == 64 and r.FIELD_GET(r.CTXDESC_CD_0_ASID,
                                         int.from_bytes(cd[:8], "little")) == 3
    with pytest.raises(ScenarioFailed, match=r"no driver of this machine builds a guest 'gcr3'"):
        run(load("no", GUEST_SCENARIO % ("gcr3", "asid")))
    with pytest.raises(ScenarioFailed, match=r"takes no parameter \['vmid'\]"):
        run(load("param", GUEST_SCENARIO % ("cd", "vmid")))


def test_tour_lists_the_vendors_that_have_a_tour() -> None:
    with pytest.raises(TourError, match=r"one of: smmu, vtd, amd"):
        run_tour(["nosuch"], None, out=io.StringIO())


@pytest.mark.parametrize(("options", "granules"), [
    ({}, "v1 4K..256G/1T..2P, v2 4K/2M/1G"),
    ({"hats": 0, "gt": False}, "v1 4K..256G/1T..128T"),
    ({"hats": 3}, "v2 4K/2M/1G"),
])
def test_amd_granules_come_from_efr(options: dict[str, Any], granules: str) -> None:
    m = Machine.from_config({"iommus": [{"name": "a", "driver": "amd_vi", **options}],
                             "devices": [{"name": "0000:20:00.0", "iommu": "a"}]})
    try:
        (info,) = hw_info(m)
    finally:
        m.shutdown()
    assert info.summary["granules"] == granules
    efr = dict(info.registers["EFR"])
    assert efr["HATS"] == options.get("hats", 2) and efr["GT"] == int(options.get("gt", True))

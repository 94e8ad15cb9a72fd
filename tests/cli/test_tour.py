"""The tour, per vendor and per step, in JSON mode: structural assertions on what each step
shows (the ioctl, the layers of its call tree, the structures the driver wrote, the walk)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from iommu_sim.cli import main
from iommu_sim.tour import CHAPTERS, run_tour

from .conftest import tour_json

VENDORS = ("smmu", "vtd", "amd")
DRIVER = {"smmu": "arm_smmu_v3", "vtd": "intel_vtd", "amd": "amd_vi"}
ENTRY = {"smmu": "STE", "vtd": "PASID entry", "amd": "DTE"}
ALL_LAYERS = {"user", "iommufd", "core", "driver", "hw"}


def steps(rec: dict[str, Any], chapter: str) -> list[dict[str, Any]]:
    return [s for s in rec["steps"] if s["chapter"] == chapter]


def ioctl_steps(rec: dict[str, Any], chapter: str, name: str) -> list[dict[str, Any]]:
    return [s for s in steps(rec, chapter) if s["action"] == "ioctl" and f" {name} =" in s["call"]]


def dmas(rec: dict[str, Any], chapter: str) -> list[dict[str, Any]]:
    return [s for s in steps(rec, chapter) if s["action"] in ("dma_read", "dma_write")]


def structure(step: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [x for x in step["structures"] if x["kind"].startswith(kind)]
    assert found, f"step {step['index']} shows no {kind}"
    first: dict[str, Any] = found[0]
    return first


def field(struct: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in struct["fields"] if f["name"] == name)


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_chapter_runs_and_is_described(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    assert rec["vendor"] == DRIVER[vendor]
    # The shared chapters first; a driver may add its own (the SMMU's "accel").
    assert list(rec["chapters"])[:len(CHAPTERS)] == list(CHAPTERS)
    for ch in rec["chapters"]:
        shown = [s for s in steps(rec, ch) if s["shown"]]
        assert shown, ch
        assert all(s["ok"] for s in steps(rec, ch))
        assert all(s["title"] or s["call"] for s in shown)


@pytest.mark.parametrize("vendor", VENDORS)
def test_paging(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    (attach,) = ioctl_steps(rec, "paging", "VFIO_DEVICE_ATTACH_IOMMUFD_PT")
    # iommufd -> core -> driver -> hardware, from one ioctl (VT-d: a not-present -> present
    # PASID entry needs no invalidation without caching mode, so no hardware command)
    want = ALL_LAYERS - ({"hw"} if vendor == "vtd" else set())
    assert want <= set(attach["layers"])
    assert attach["trace"][0]["layer"] == "user"
    assert "VFIO_DEVICE_ATTACH_IOMMUFD_PT" in attach["trace"][0]["detail"]
    entry = structure(attach, ENTRY[vendor])
    assert not entry["new"] and any(f["changed"] for f in entry["fields"])
    assert not entry["problems"]
    ok, fault = dmas(rec, "paging")
    assert ok["result"].startswith("-> b'hello from user memory'")
    assert ok["tlb_hit"] is False and ok["walk"] and ok["walk"][-1]["output"]
    assert "hw" in ok["layers"]
    assert fault["error"].startswith("DmaFault")
    assert fault["walk"][-1]["result"].startswith("fault")
    alloc = ioctl_steps(rec, "paging", "IOMMU_HWPT_ALLOC")[0]
    assert "out_hwpt_id" in alloc["result"] and alloc["call_fields"]["pt_id"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_nested(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    parent = ioctl_steps(rec, "nested", "IOMMU_HWPT_ALLOC")[0]
    assert parent["call_fields"]["flags"] & 1  # IOMMU_HWPT_ALLOC_NEST_PARENT
    if vendor == "vtd":
        assert not ioctl_steps(rec, "nested", "IOMMU_VIOMMU_ALLOC")  # no vIOMMU on VT-d
    else:
        assert ioctl_steps(rec, "nested", "IOMMU_VIOMMU_ALLOC")
        assert ioctl_steps(rec, "nested", "IOMMU_VDEVICE_ALLOC")
    attach = ioctl_steps(rec, "nested", "VFIO_DEVICE_ATTACH_IOMMUFD_PT")[-1]
    e = structure(attach, ENTRY[vendor])
    if vendor == "smmu":
        assert field(e, "CFG")["text"] == "NESTED" and field(e, "CFG")["changed"]
        assert field(e, "S1CTXPTR")["value"] == 0x1000  # the guest's CD table (an IPA)
        cd = structure(attach, "CD")
        assert "guest memory" in cd["note"]
    elif vendor == "vtd":
        assert field(e, "PGTT")["value"] == 3 and field(e, "PGTT")["changed"]
        assert field(e, "FSPTPTR")["changed"]
    else:
        assert field(e, "GV")["value"] == 1 and field(e, "Mode")["value"] == 4
        assert field(e, "GCR3 root")["value"] == 0x1000
        assert "guest memory" in structure(attach, "GCR3")["note"]
    (dma,) = dmas(rec, "nested")
    assert len(dma["walk"]) == 2  # stage 1 (guest table) then stage 2
    s1, s2 = dma["walk"]
    assert s1["output"] == s2["input"]
    assert len(s1["levels"]) == 4 and s1["levels"][-1]["text"].startswith("page")


@pytest.mark.parametrize("vendor", VENDORS)
def test_stale_until_invalidation(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    before, after = dmas(rec, "stale")
    inv = ioctl_steps(rec, "stale", "IOMMU_HWPT_INVALIDATE")
    assert len(inv) == 1 and "entry_num=1" in inv[0]["result"]
    assert before["index"] < inv[0]["index"] < after["index"]
    # The stale read: served from the TLB (no hardware walk) with the old data, while the
    # tables already point elsewhere.
    assert before["tlb_hit"] is True and "hw" not in before["layers"]
    assert "guest data" in before["result"]
    assert after["tlb_hit"] is False and "new page" in after["result"]
    assert before["walk"][-1]["output"] == after["walk"][-1]["output"]
    assert "hw" in inv[0]["layers"]  # the invalidation reaches the hardware's queue


@pytest.mark.parametrize("vendor", VENDORS)
def test_pasid_attach(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    attach = next(s for s in ioctl_steps(rec, "pasid", "VFIO_DEVICE_ATTACH_IOMMUFD_PT")
                  if s["call_fields"]["flags"] & 1)  # VFIO_DEVICE_ATTACH_PASID
    pasid = attach["call_fields"]["pasid"]
    labels = [x["label"] for x in attach["structures"]]
    want = {"smmu": f"CD[{pasid}]", "vtd": f"PASID entry {pasid}", "amd": f"GCR3[{pasid}]"}
    assert want[vendor] in labels
    (dma,) = dmas(rec, "pasid")
    assert dma["result"].startswith("-> b'") and dma["walk"]
    assert f"pasid {pasid}" in dma["call"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_fault_delivered_and_answered(tours: dict[str, Any], vendor: str) -> None:
    rec = tours[vendor]
    assert ioctl_steps(rec, "fault", "IOMMU_FAULT_QUEUE_ALLOC")
    first, *_, last = dmas(rec, "fault")
    assert "page request" in first["error"]
    read = next(s for s in steps(rec, "fault") if s["action"] == "read")
    assert "iommu_hwpt_pgfault" in read["result"] and "cookie=" in read["result"]
    write = next(s for s in steps(rec, "fault") if s["action"] == "write")
    assert write["trace"] and write["trace"][0]["layer"] == "user"
    assert {"driver", "hw"} <= set(write["layers"])  # the response reaches the hardware
    assert (last["error"] == "" and last["result"].startswith("-> b'paged'")) or (
        last["action"] == "dma_write" and last["result"] == "-> done")


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_step_alone(tours: dict[str, Any], vendor: str, chapter: str) -> None:
    """``--step`` runs the earlier chapters quietly and records only the one asked for,
    identical (in structure) to the same chapter of the full run."""
    rec = tour_json(vendor, str(CHAPTERS.index(chapter) + 1))
    assert list(rec["chapters"]) == [chapter]
    assert {s["chapter"] for s in rec["steps"]} == {chapter}
    full = steps(tours[vendor], chapter)
    assert [s["index"] for s in rec["steps"]] == [s["index"] for s in full]
    assert [s["layers"] for s in rec["steps"]] == [s["layers"] for s in full]
    assert [[x["label"] for x in s["structures"]] for s in rec["steps"]] == [
        [x["label"] for x in s["structures"]] for s in full]


def test_text_output_color_and_plain() -> None:
    plain = io.StringIO()
    run_tour(["amd"], ["paging"], color=False, out=plain)
    text = plain.getvalue()
    assert "\x1b[" not in text
    assert "▶ attach the device" in text and "DTE[0x2000]" in text
    assert "[user] ioctl fd" in text and "VFIO_DEVICE_ATTACH_IOMMUFD_PT" in text
    assert re.search(r"\*\S+ +\[", text)  # a changed field is marked
    colored = io.StringIO()
    run_tour(["amd"], ["paging"], color=True, out=colored)
    assert "\x1b[" in colored.getvalue()


def test_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tour", "--vendor", "smmu", "--step", "pasid", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "step 4/6: pasid" in out and "\x1b[" not in out
    assert main(["tour", "--vendor", "nvidia"]) == 2
    assert "unknown vendor" in capsys.readouterr().err
    assert main(["tour", "--step", "9"]) == 2

"""``iommu-sim trace SCRIPT``: the call tree of a user script shows every layer; JSON
output; ``main(machine)``; a plugin that overrides one driver op shows up in the tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iommu_sim.cli import main

SCRIPT = '''
from iommufd import uapi as u, uapi_vfio as v
DEV = "0000:00:01.0"
fd = machine.open("/dev/iommu")
vfd = machine.open(machine.vfio_cdev(DEV))
bind = v.vfio_device_bind_iommufd(argsz=sizeof(v.vfio_device_bind_iommufd), iommufd=fd)
machine.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
ioas = u.iommu_ioas_alloc(size=sizeof(u.iommu_ioas_alloc))
machine.ioctl(fd, u.IOMMU_IOAS_ALLOC, ioas)
buf = machine.mmap(0x2000)
machine.mem_write(buf, b"traced")
machine.ioctl(fd, u.IOMMU_IOAS_MAP, u.iommu_ioas_map(
    size=sizeof(u.iommu_ioas_map), ioas_id=ioas.out_ioas_id, user_va=buf, length=0x2000,
    iova=0x10000, flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE))
at = v.vfio_device_attach_iommufd_pt(argsz=sizeof(v.vfio_device_attach_iommufd_pt),
                                     pt_id=ioas.out_ioas_id)
machine.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)
assert machine.dma_read(DEV, 0x10000, 6) == b"traced"
'''

PLUGIN = '''
from iommu_core.hookspec import hookimpl

class CountMaps:
    """Override map_pages of the SMMU driver: count, then let the driver do it."""
    calls = 0

    @hookimpl(wrapper=True, tryfirst=True)
    def map_pages(self, domain, iova, paddr, pgsize, pgcount, prot):
        CountMaps.calls += 1
        machine.tracer.event("driver", "prototype map_pages", f"call {CountMaps.calls}")
        return (yield)

def main(machine):
    machine.plugins.register(CountMaps(), driver="arm_smmu_v3")
'''


def layers(nodes: list[dict[str, object]]) -> set[str]:
    out: set[str] = set()
    for n in nodes:
        out.add(str(n["layer"]))
        out |= layers(n.get("children", []))  # type: ignore[arg-type]
    return out


def test_trace_shows_every_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "s.py"
    s.write_text(SCRIPT)
    assert main(["trace", str(s), "--no-color"]) == 0
    out = capsys.readouterr().out
    for layer in ("[user] ioctl", "[iommufd]", "[core]", "[driver]", "[hw]"):
        assert layer in out
    assert "VFIO_DEVICE_ATTACH_IOMMUFD_PT" in out and "[user] dma_read" in out
    j = tmp_path / "t.json"
    assert main(["trace", str(s), "--json", str(j)]) == 0
    doc = json.loads(j.read_text())
    assert [n["layer"] for n in doc] == ["user"] * len(doc)
    assert layers(doc) == {"user", "iommufd", "core", "driver", "hw"}


def test_trace_main_and_plugin_override(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "p.py"
    s.write_text(PLUGIN + SCRIPT.replace("\n", "\n    ").replace(
        "\n    from iommufd", "\ndef later(machine):\n    from iommufd") +
        "\n\n_orig = main\ndef main(machine):\n    _orig(machine)\n    later(machine)\n")
    assert main(["trace", str(s), "--no-color", "--no-fold"]) == 0
    out = capsys.readouterr().out
    assert "[driver] prototype map_pages call 1" in out
    assert out.index("[driver] map_pages") < out.index("prototype map_pages")


def test_trace_failing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "bad.py"
    s.write_text('machine.open("/dev/iommu")\nmachine.ioctl(3, 0x3b89, bytearray(4))\n')
    assert main(["trace", str(s), "--no-color"]) == 1
    cap = capsys.readouterr()
    assert "[user] ioctl fd 3 IOMMU_HWPT_ALLOC" in cap.out
    # The script's own traceback: its file and line, the failing call, the error.
    assert "the script failed:" in cap.err
    assert f'File "{s}", line 2, in <module>' in cap.err
    assert "machine.ioctl(3, 0x3b89, bytearray(4))" in cap.err
    assert cap.err.rstrip().endswith("OSError: [Errno 22] IOMMU_HWPT_ALLOC: size 0 below the "
                                     "minimum 24")
    assert "runpy" not in cap.err and "iommu_sim/cli.py" not in cap.err

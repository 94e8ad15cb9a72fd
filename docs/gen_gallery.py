"""Regenerate the recorded CLI output and the pictures the docs include (``docs/gallery/``)
and the ioctl table of the uAPI reference (``docs/uapi_ioctls.inc``).

Run from the repository root after changing the CLI, a driver or the tour::

    python docs/gen_gallery.py            # rewrite the files
    python docs/gen_gallery.py --check    # exit 1 if any file is out of date (the recorded
                                          # output differs from what the code prints now)

The outputs are committed (text, SVG, HTML): the docs build runs no simulation.
``--check`` is how a change that must not alter the output proves it: it compares every
file byte for byte: ``decode`` (text and bit-field diagrams), ``info``, every step of every
built-in tour, each vendor's walk pictures, ``trace`` (text and page), ``graph`` (DOT,
Mermaid, SVG), the tour page of one chapter, the architecture's layer figure, and the
system bench's table and plot (redrawn from the recorded ``bench.json``, never
re-measured).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The recorded output shows the built-in drivers only, whatever else is installed.
os.environ["IOMMU_SIM_ONLY_BUILTIN"] = "1"

GALLERY = ROOT / "docs" / "gallery"
IOCTL_TABLE = ROOT / "docs" / "uapi_ioctls.inc"
MODULES = ROOT / "docs" / "modules.inc"
PACKAGES = ("iommu_sim", "iommufd", "iommu_core", "drivers")

#: The script the gallery traces (also shown in the docs).
TRACE_SCRIPT = '''\
"""A VMM in a dozen lines: bind, map 8 KiB of user memory, attach, one DMA."""
# ruff: noqa: F821 - iommu-sim trace gives the script `machine` and `sizeof`
from iommufd import uapi as u
from iommufd import uapi_vfio as v

DEV = "0000:10:00.0"                       # behind the VT-d unit of the default Machine
fd = machine.open("/dev/iommu")
vfd = machine.open(machine.vfio_cdev(DEV))
bind = v.vfio_device_bind_iommufd(argsz=sizeof(v.vfio_device_bind_iommufd), iommufd=fd)
machine.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
ioas = u.iommu_ioas_alloc(size=sizeof(u.iommu_ioas_alloc))
machine.ioctl(fd, u.IOMMU_IOAS_ALLOC, ioas)
buf = machine.mmap(0x2000)
machine.mem_write(buf, b"hello")
machine.ioctl(fd, u.IOMMU_IOAS_MAP, u.iommu_ioas_map(
    size=sizeof(u.iommu_ioas_map), ioas_id=ioas.out_ioas_id, user_va=buf, length=0x2000,
    iova=0x10000, flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE))
machine.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, v.vfio_device_attach_iommufd_pt(
    argsz=sizeof(v.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id))
assert machine.dma_read(DEV, 0x10000, 5) == b"hello"
'''


def cli(*argv: str) -> str:
    from iommu_sim.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(argv))
    if rc not in (0, 1):
        raise SystemExit(f"iommu-sim {' '.join(argv)} exited {rc}")
    # The timing line differs from run to run; the docs keep the rest.
    return "".join(ln for ln in buf.getvalue().splitlines(keepends=True)
                   if not ln.startswith("tour done in"))


def cli_file(*argv: str, flag: str) -> str:
    """The file ``iommu-sim ARGV FLAG FILE`` writes (``--svg``, ``--html``, ``-o``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cli(*argv, flag, str(out))
        return out.read_text(encoding="utf-8")


#: The vendors of the tour, as the gallery names them.
VENDORS = {"smmu": "arm_smmu_v3", "vtd": "intel_vtd", "amd": "amd_vi"}


def walk_pictures() -> dict[str, Callable[[], str]]:
    """Each vendor's walk of the first DMA of its paging and nested chapters, with the
    entries that led to it."""
    out: dict[str, Callable[[], str]] = {}

    def make(driver: str, chapter: str) -> str:
        from iommu_sim.draw.walk import walk_svg
        from iommu_sim.tour import tour_records

        _, records, _ = tour_records(driver, [chapter])
        r = next(r for r in records if r.chapter == chapter and r.walk)
        return walk_svg(r.walk, r.walk_entries, tlb_hit=bool(r.tlb_hit),
                        title=f"{driver}, {chapter}: {r.title or r.call}").to_string()

    for short, driver in VENDORS.items():
        for chapter in ("paging", "nested"):
            out[f"walk_{short}_{chapter}.svg"] = (
                lambda d=driver, c=chapter: make(d, c))
    return out


#: The invalidation paths (docs/invalidation_paths.rst): picture -> the tour step that
#: takes that path (driver, chapter, the step's title).
PATHS = {
    "path_trapped.svg": ("arm_smmu_v3", "stale", "the guest's TLBI_NH_VA, through the vIOMMU"),
    "path_tegra_vcmdq.svg": ("arm_smmu_v3", "accel", "the guest stores PROD = 2"),
    "path_tegra_vcmdq_error.svg": ("arm_smmu_v3", "accel", "the guest stores PROD = 4"),
    "path_amd_hw_viommu.svg": ("amd_vi", "accel", "the guest stores its tail = 0x20"),
    "path_amd_hw_viommu_error.svg": ("amd_vi", "accel", "the guest stores its tail = 0x30"),
}


def path_pictures() -> dict[str, Callable[[], str]]:
    """Each invalidation path, drawn from the call tree of its tour step."""

    def make(driver: str, chapter: str, title: str) -> str:
        from iommu_sim.draw.path import path_svg
        from iommu_sim.tour import tour_records

        _, records, _ = tour_records(driver, [chapter])
        r = next(r for r in records if r.chapter == chapter and r.title == title)
        return path_svg(r.trace, title=f"{driver}, {chapter}: {title}").to_string()

    return {name: (lambda a=args: make(*a)) for name, args in PATHS.items()}


def layers_picture() -> str:
    from iommu_sim.draw.layers import layers_svg

    return layers_svg().to_string()


def ioctl_table() -> str:
    from iommufd import uapi, uapi_selftest, uapi_vfio

    rows = [("ioctl", "nr", "request", "struct", "sizeof", "min size (last member)")]
    for table in (uapi.IOMMUFD_IOCTLS, (uapi_selftest.IOMMU_TEST_IOCTL,),
                  uapi_vfio.VFIO_CDEV_IOCTLS, uapi_vfio.VFIO_DEVICE_IOCTLS,
                  uapi_vfio.VFIO_CONTAINER_IOCTLS):
        for d in table:
            rows.append((f"``{d.name}``", f"{d.nr:#04x}", f"``{d.request:#06x}``",
                         f":class:`~{d.struct.__module__}.{d.struct.__name__}`",
                         str(ctypes.sizeof(d.struct)), f"{d.min_size} (``{d.last}``)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    sep = "  ".join("=" * w for w in widths)
    lines = [".. Generated by docs/gen_gallery.py from iommufd.uapi: do not edit.", "", sep,
             "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)).rstrip(), sep]
    for r in rows[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.append(sep)
    return "\n".join(lines) + "\n"


def _summary(path: Path) -> str:
    """The first paragraph of a module's docstring, as plain reST text (roles become
    literals: the modules' own pages resolve their references)."""
    import ast
    import re

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    para = doc.strip().split("\n\n", 1)[0]
    para = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: f"``{m[1]}``", para)
    return " ".join(para.split()) or "(no docstring)"


def module_index() -> str:
    """A target and a summary for every module of the packages that no other page
    documents with ``automodule``, so a reference to any module resolves."""
    import re

    documented = set()
    for page in (ROOT / "docs").glob("*.rst"):
        documented |= set(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), re.M))
    lines = [".. Generated by docs/gen_gallery.py from the package tree: do not edit.", ""]
    for pkg in PACKAGES:
        lines += [f"``{pkg}``", "-" * (len(pkg) + 4), ""]
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name in documented:
                continue
            lines += [f".. py:module:: {name}", "", f"``{name}``", f"   {_summary(path)}", ""]
    return "\n".join(lines)


def bench_pictures() -> dict[str, Callable[[], str]]:
    """The system bench's table and plot, drawn from the result recorded in
    ``bench.json`` (``python -m iommu_sim.bench --tib --json``): the bench is measured
    once by hand; regenerating (and ``--check``) only redraws, so timing noise never
    makes a file out of date."""
    import json

    from iommu_sim import bench
    from iommu_sim.draw.plot import bench_plot

    def result() -> Any:
        return json.loads((GALLERY / "bench.json").read_text(encoding="utf-8"))

    return {"bench.txt": lambda: bench.table(result()),
            "bench.svg": lambda: bench_plot(result()).to_string()}


def gallery() -> dict[str, Callable[[], str]]:
    script = GALLERY / "vmm_script.py"
    out: dict[str, Callable[[], str]] = {}
    for vendor in ("smmu", "vtd", "amd"):
        for step in ("paging", "nested", "stale", "pasid", "fault"):
            out[f"tour_{vendor}_{step}.txt"] = (
                lambda v=vendor, s=step: cli("tour", "--vendor", v, "--step", s, "--no-color"))
    decodes = {
        "ste": ("ste", "0x100f", "0x0000100002080002", "0x044d359000000001", "0x100102000"),
        "ste_bad": ("ste", "0x100b", "0x20000000"),
        "pasid_entry": ("pasid-entry", "0x1001820c9", "0x1800002", "0x60000"),
        "dte": ("dte", "0x64c0000100183803", "0x100000005"),
        "cmd": ("cmd", "0x3000000000012", "0x7f0000000001", "--vendor", "smmu"),
        "pte": ("pte", "0x0040000100006f43", "--format", "arm_lpae_s1"),
    }
    for name, argv in decodes.items():
        out[f"decode_{name}.txt"] = lambda a=argv: cli("decode", *a, "--no-color")
        out[f"decode_{name}.svg"] = lambda a=argv: cli_file("decode", *a, "--no-color",
                                                            flag="--svg")
    out["decode_list.txt"] = lambda: cli("decode", "--list")
    out["info.txt"] = lambda: cli("info")
    out["vmm_script.py"] = lambda: TRACE_SCRIPT
    out["trace.txt"] = lambda: cli("trace", str(script), "--no-color")
    out["trace.html"] = lambda: cli_file("trace", str(script), flag="--html")
    out["graph.dot"] = lambda: cli("graph", "--scenario", "tour_arm_smmu_v3", "--format", "dot")
    out["graph.mmd"] = lambda: cli("graph", "--scenario", "tour_arm_smmu_v3", "--format",
                                   "mermaid")
    out["graph.svg"] = lambda: cli("graph", "--scenario", "tour_arm_smmu_v3", "--format",
                                   "svg")
    out.update(walk_pictures())
    out.update(path_pictures())
    out["tour_smmu_nested.html"] = lambda: cli_file("tour", "--vendor", "smmu", "--step",
                                                    "nested", flag="--html")
    out["layers.svg"] = layers_picture
    out.update(bench_pictures())
    return out


def _stale(path: Path, text: str) -> bool:
    return not path.exists() or path.read_text(encoding="utf-8") != text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true",
                    help="only check that the ioctl table and the gallery are current")
    args = ap.parse_args()
    table = ioctl_table()
    modules = module_index()
    if args.check:
        stale = [IOCTL_TABLE] if _stale(IOCTL_TABLE, table) else []
        stale += [MODULES] if _stale(MODULES, modules) else []
        stale += [GALLERY / name for name, make in gallery().items()
                  if _stale(GALLERY / name, make())]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/gen_gallery.py")
        return 1 if stale else 0
    IOCTL_TABLE.write_text(table, encoding="utf-8")
    MODULES.write_text(modules, encoding="utf-8")
    GALLERY.mkdir(exist_ok=True)
    for name, make in gallery().items():  # vmm_script.py comes before trace.txt
        (GALLERY / name).write_text(make(), encoding="utf-8")
        print(f"wrote docs/gallery/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

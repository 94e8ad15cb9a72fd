"""The ``iommu-sim`` command line: ``python -m iommu_sim <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iommu_sim.machine import Machine


def cmd_tour(args: argparse.Namespace) -> int:
    m = Machine.default()
    try:
        print("iommu-sim tour: the default Machine")
        print()
        for name, driver in m.iommus.items():
            print(f"IOMMU {name}  driver={driver}")
            for dev, unit in m.devices.items():
                if unit != name:
                    continue
                d = m.device(dev)
                g = d.iommu_group
                dom = g.domain if g is not None else None
                print(f"  {dev}  group {g.id if g else '-'}  domain {dom!r}  "
                      f"vfio {m.vfio_cdev(dev)}")
        return 0
    finally:
        m.shutdown()


def cmd_info(args: argparse.Namespace) -> int:
    m = Machine.default()
    try:
        for name, driver in m.iommus.items():
            print(f"{name}: {driver}")
        return 0
    finally:
        m.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iommu-sim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tour", help="a guided run of the default Machine")
    t.set_defaults(func=cmd_tour)
    i = sub.add_parser("info", help="each IOMMU's driver and capabilities")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    sys.stdout.flush()
    return rc

"""The ``iommu-sim`` command line: ``python -m iommu_sim <command>``.

Commands::

    tour     a VMM's flow on each vendor, layer by layer (the guided tour)
    decode   a structure a driver describes (STE, PASID entry, DTE, command...) or a PTE
    info     each IOMMU's IOMMU_GET_HW_INFO, decoded, side by side
    trace    run a Python script against a Machine and print (or save) its call tree
    graph    the iommufd object graph and device/group/domain topology (DOT or Mermaid)
    run      run scenario files (TOML) and check their expectations
    exec     run a real Linux program against a Machine (docs/exec.rst)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iommu_sim.render import name_ioctls, paint, render_tree, want_color

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def _color(args: argparse.Namespace) -> bool:
    flag = None
    if getattr(args, "no_color", False):
        flag = False
    elif getattr(args, "color", False):
        flag = True
    return want_color(flag)


def _add_color(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-color", action="store_true", help="plain text")
    g.add_argument("--color", action="store_true", help="ANSI colour even when piped")


# -- tour ---------------------------------------------------------------------------------
def cmd_tour(args: argparse.Namespace) -> int:
    from iommu_sim.tour import TourError, run_tour

    try:
        return run_tour(args.vendor, args.step, color=_color(args) and not args.json,
                        as_json=args.json)
    except TourError as e:
        print(f"iommu-sim tour: {e}", file=sys.stderr)
        return EXIT_USAGE


# -- decode ---------------------------------------------------------------------------------
def _words(items: Sequence[str]) -> list[int]:
    out = []
    for it in items:
        for tok in it.replace(",", " ").split():
            out.append(int(tok.replace("_", ""), 16))
    return out


def cmd_decode(args: argparse.Namespace) -> int:
    from iommu_sim.decode import DecodeError, decode, describe_pte, listing, render, to_dict

    if args.list:
        rows = [("kind", "vendor", "category", "size", "structure"), *listing()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
        return EXIT_OK
    if not args.kind:
        print("iommu-sim decode: give a kind (iommu-sim decode --list shows them)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        words = _words(args.hex)
    except ValueError as e:
        print(f"iommu-sim decode: not a hex word: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not words:
        print("iommu-sim decode: give at least one hex word (low word first)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.kind == "pte":
            if not args.format:
                print("iommu-sim decode pte: --format is needed (amd_v1, arm_lpae_s1, "
                      "arm_lpae_s2, mock, vtd_ss, x86_64)", file=sys.stderr)
                return EXIT_USAGE
            params = dict(p.split("=", 1) for p in args.param)
            d = [describe_pte(w, args.format, args.level,
                              **{k: int(v, 0) for k, v in params.items()}) for w in words]
        else:
            kind = f"{args.kind}-legacy" if args.legacy else args.kind
            d = [decode(kind, words, args.vendor)]
    except DecodeError as e:
        print(f"iommu-sim decode: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps([to_dict(x) for x in d], indent=1))
    else:
        print("\n\n".join(render(x, color=_color(args)) for x in d))
    return EXIT_FAIL if args.strict and any(not x.valid for x in d) else EXIT_OK


# -- info ---------------------------------------------------------------------------------------
def _machine(args: argparse.Namespace) -> Any:
    from iommu_sim.machine import Machine

    cfg = getattr(args, "config", None)
    if not cfg:
        return Machine.default()
    import tomllib

    text = Path(cfg).read_text(encoding="utf-8")
    doc = json.loads(text) if cfg.endswith(".json") else tomllib.loads(text)
    doc = doc.get("machine", doc)
    return Machine.from_config(doc)


def cmd_info(args: argparse.Namespace) -> int:
    from iommu_sim.info import hw_info, render_info

    m = _machine(args)
    try:
        render_info(hw_info(m), as_json=args.json, registers=not args.brief)
    finally:
        m.shutdown()
    return EXIT_OK


# -- trace ----------------------------------------------------------------------------------------
def cmd_trace(args: argparse.Namespace) -> int:
    from iommu_sim.script import run_script

    m = _machine(args)
    status = EXIT_OK
    try:
        with m.trace() as tracer:
            try:
                run_script(args.script, m)
            except Exception as e:  # report the script's error after its trace
                status = EXIT_FAIL
                err = f"{type(e).__name__}: {e}"
            else:
                err = ""
        roots = tracer.roots
        name_ioctls(roots)
        if args.json:
            doc = [r.to_dict() for r in roots]
            if args.json == "-":
                print(json.dumps(doc, indent=1))
            else:
                Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
                print(f"{len(roots)} top-level calls written to {args.json}")
        else:
            print(render_tree(roots, color=_color(args), fold=not args.no_fold))
        if err:
            print(paint(f"iommu-sim trace: the script failed: {err}", "error",
                        _color(args)), file=sys.stderr)
    finally:
        m.shutdown()
    return status


# -- graph --------------------------------------------------------------------------------------
def _scenario_path(name: str) -> Path:
    from iommu_sim.scenario import builtin_scenarios

    p = Path(name)
    if p.exists():
        return p
    shipped = builtin_scenarios()
    key = name[:-5] if name.endswith(".toml") else name
    if key in shipped:
        return shipped[key]
    raise FileNotFoundError(f"no scenario file {name!r} (shipped: {', '.join(shipped)})")


def cmd_graph(args: argparse.Namespace) -> int:
    from iommu_sim.graph import build_graph, to_dot, to_mermaid
    from iommu_sim.machine import Machine
    from iommu_sim.scenario import Runner, ScenarioError, ScenarioFailed, load
    from iommu_sim.script import run_script

    runner = None
    try:
        if args.scenario:
            runner = Runner(load(_scenario_path(args.scenario)))
            for _ in runner.steps():
                pass
            m = runner.machine
        else:
            m = _machine(args)
        if args.script:
            run_script(args.script, m)
    except (FileNotFoundError, ScenarioError, ScenarioFailed) as e:
        print(f"iommu-sim graph: {e}", file=sys.stderr)
        if runner is not None:
            runner.close()
        return EXIT_FAIL
    try:
        g = build_graph(m, kernel=not args.iommufd_only, entries=args.entries)
        text = {"dot": to_dot, "mermaid": to_mermaid}.get(args.format)
        out = text(g) if text else json.dumps(g.to_dict(), indent=1) + "\n"
        if args.output:
            Path(args.output).write_text(out, encoding="utf-8")
        else:
            sys.stdout.write(out)
    finally:
        if isinstance(m, Machine):
            m.shutdown()
    return EXIT_OK


# -- run ------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from iommu_sim.scenario import (
        Runner,
        ScenarioError,
        ScenarioFailed,
        builtin_scenarios,
        load,
    )

    color = _color(args)
    if args.list:
        for name, path in builtin_scenarios().items():
            sc = load(path)
            print(f"{name:<24} {sc.description.splitlines()[0] if sc.description else ''}")
        return EXIT_OK
    if not args.files:
        print("iommu-sim run: give scenario files (or --list)", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    report = []
    for f in args.files:
        try:
            sc = load(_scenario_path(f))
        except (FileNotFoundError, ScenarioError) as e:
            print(f"iommu-sim run: {e}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        runner = Runner(sc, trace=args.trace)
        done = 0
        failure = ""
        try:
            for res in runner.steps():
                done += 1
                if args.verbose or args.trace:
                    mark = paint("ok", "ok", color)
                    what = res.step.title or f"{res.step.action} {res.step.arg}"
                    extra = ""
                    if res.error is not None:
                        extra = f" (expected: {type(res.error).__name__} {res.error})"
                    print(f"  {mark} {res.step.index:>3} {what}{extra}")
                    if args.trace and res.trace:
                        print(render_tree(res.trace, color=color, indent="        "))
        except ScenarioFailed as e:
            failure = str(e)
            status = EXIT_FAIL
        finally:
            runner.close()
        report.append({"scenario": sc.name, "path": str(sc.path), "steps": len(sc.steps),
                       "passed": done, "ok": not failure, "failure": failure})
        if not args.json:
            if failure:
                print(paint(f"FAIL {sc.name}: {failure}", "error", color))
            else:
                print(paint(f"PASS {sc.name}", "ok", color) + f" ({done} steps)")
    if args.json:
        print(json.dumps(report, indent=1))
    return status


# -- the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iommu-sim", description="The Linux IOMMU stack, simulated layer by layer.",
        epilog="Run 'iommu-sim COMMAND --help' for a command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("tour", help="a VMM's flow on each vendor, layer by layer",
                       description="Boot the default Machine and walk a VMM's flow on each "
                       "vendor: paging domain, nesting, a stale guest table until the "
                       "invalidation, a PASID attach, an I/O page fault.")
    t.add_argument("--vendor", action="append", metavar="V",
                   help="smmu, vtd or amd (repeatable; default: all)")
    t.add_argument("--step", action="append", metavar="S",
                   help="paging, nested, stale, pasid, fault or 1-5 (repeatable; "
                   "default: all)")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    _add_color(t)
    t.set_defaults(func=cmd_tour)

    d = sub.add_parser("decode", help="decode a hardware structure field by field",
                       description="Decode words (hex, low word first) as a hardware "
                       "structure; invalid combinations are flagged.")
    d.add_argument("kind", nargs="?", help="a structure the drivers describe (ste, "
                   "pasid-entry, dte, cmd...: see --list) or pte")
    d.add_argument("hex", nargs="*", help="the words, low word first (64-bit; 32-bit for "
                   "structures of 32-bit words, such as an AMD command)")
    d.add_argument("--list", action="store_true", help="the structures the drivers describe")
    d.add_argument("--vendor", help="the driver, for a kind several have (cmd, event)")
    d.add_argument("--format", help="pte: the page-table format (x86_64, arm_lpae_s1...)")
    d.add_argument("--level", type=int, default=0, help="pte: the level (0 = leaf pages)")
    d.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="pte: a format parameter (levels=5, granule=0x10000...)")
    d.add_argument("--legacy", action="store_true",
                   help="the structure's legacy form (context-entry: legacy mode)")
    d.add_argument("--strict", action="store_true", help="exit 1 if the entry is invalid")
    d.add_argument("--json", action="store_true")
    _add_color(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="each IOMMU's hw_info and capabilities side by side")
    i.add_argument("--json", action="store_true")
    i.add_argument("--brief", action="store_true", help="leave out the register fields")
    i.add_argument("--config", help="a Machine config (TOML or JSON; default Machine)")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("trace", help="run a script against a Machine and show its call tree",
                       description="The script gets a ready 'machine' (and may define "
                       "main(machine)); everything it does is traced.")
    r.add_argument("script")
    r.add_argument("--json", metavar="FILE", help="write the call tree as JSON ('-': stdout)")
    r.add_argument("--config", help="a Machine config (TOML or JSON; default Machine)")
    r.add_argument("--no-fold", action="store_true", help="do not fold long runs of calls")
    _add_color(r)
    r.set_defaults(func=cmd_trace)

    g = sub.add_parser("graph", help="the iommufd object graph and device/group/domain "
                       "topology")
    g.add_argument("--format", choices=["dot", "mermaid", "json"], default="dot")
    g.add_argument("--scenario", help="run this scenario first (file or shipped name)")
    g.add_argument("--script", help="run this script first")
    g.add_argument("--config", help="a Machine config (TOML or JSON; default Machine)")
    g.add_argument("--iommufd-only", action="store_true", help="only iommufd's objects")
    g.add_argument("--entries", action="store_true", help="also the entries the hardware "
                   "reads for each device and each domain's tables (as the drivers "
                   "describe them)")
    g.add_argument("-o", "--output", help="write to a file")
    g.set_defaults(func=cmd_graph)

    n = sub.add_parser("run", help="run scenario files and check their expectations")
    n.add_argument("files", nargs="*", help="scenario files or shipped names")
    n.add_argument("--list", action="store_true", help="list the shipped scenarios")
    n.add_argument("-v", "--verbose", action="store_true", help="a line per step")
    n.add_argument("--trace", action="store_true", help="each step's call tree")
    n.add_argument("--json", action="store_true", help="a JSON report")
    _add_color(n)
    n.set_defaults(func=cmd_run)

    x = sub.add_parser("exec", help="run a real Linux program against a Machine",
                       description="Run PROGRAM so that its /dev/iommu, /dev/vfio/* and the "
                       "kernel pseudo-files the iommufd selftests use are the Machine's, "
                       "and its memory is the user memory (docs/exec.rst).")
    x.add_argument("--config", metavar="FILE", help="Machine config (TOML or JSON); "
                   "default: the default Machine")
    x.add_argument("--trace", metavar="FILE", help="write the layered call tree as JSON")
    x.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    x.set_defaults(func=cmd_exec)
    return p


# -- exec --------------------------------------------------------------------------------
def cmd_exec(args: argparse.Namespace) -> int:
    from iommu_sim.exec import HostUnsupported, exec_program

    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        print("iommu-sim exec: no program given (iommu-sim exec -- PROGRAM [ARGS...])",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        machine = _machine(args)
    except (OSError, ValueError) as e:
        print(f"iommu-sim exec: {args.config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return exec_program(machine, program[0], program[1:],
                            trace=Path(args.trace) if args.trace else None)
    except HostUnsupported as e:
        print(f"iommu-sim exec: {e}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:  # `iommu-sim tour | head`
        sys.stderr.close()
        return EXIT_OK
    sys.stdout.flush()
    return rc

"""The ``iommu-sim`` command line: ``python -m iommu_sim <command>``.

Commands::

    tour     a VMM's flow on each vendor, layer by layer (the guided tour)
    decode   a structure a driver describes (STE, PASID entry, DTE, command...) or a PTE
    info     each IOMMU's IOMMU_GET_HW_INFO, decoded, side by side
    trace    run a Python script against a Machine and print (or save) its call tree
    graph    the iommufd object graph and device/group/domain topology (DOT, Mermaid, SVG)
    run      run scenario files (TOML) and check their expectations
    exec     run a real Linux program against a Machine (docs/exec.rst)

Bad input (a missing file, a bad config, an unknown name) is one line on stderr and exit
status 2, never a traceback; a failed check is exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iommu_sim.render import paint, render_tree, want_color

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: ``main`` prints it as one line and exits 2."""


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
                        as_json=args.json, html=args.html)
    except TourError as e:
        raise UsageError(str(e)) from None


# -- decode ---------------------------------------------------------------------------------
def _words(items: Sequence[str]) -> list[int]:
    out = []
    for it in items:
        for tok in it.replace(",", " ").split():
            try:
                w = int(tok.replace("_", ""), 16)
            except ValueError:
                raise UsageError(f"not a hex word: {tok!r}") from None
            if w < 0:
                raise UsageError(f"a word cannot be negative: {tok}")
            out.append(w)
    return out


def _write_svgs(path: str, svgs: Sequence[Any]) -> None:
    from iommu_sim.draw.svg import stack

    Path(path).write_text((svgs[0] if len(svgs) == 1 else stack(list(svgs))).to_string(),
                          encoding="utf-8")


def cmd_decode(args: argparse.Namespace) -> int:
    from iommu_sim.decode import DecodeError, decode, describe_pte, listing, render, to_dict

    if args.list:
        rows = [("kind", "vendor", "category", "size", "structure"), *listing()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
        return EXIT_OK
    if not args.kind:
        raise UsageError("give a kind (iommu-sim decode --list shows them)")
    words = _words(args.hex)
    if not words:
        raise UsageError("give at least one hex word (low word first)")
    try:
        if args.kind == "pte":
            if not args.format:
                raise UsageError("pte: --format is needed (amd_v1, arm_lpae_s1, "
                                 "arm_lpae_s2, mock, vtd_ss, x86_64)")
            params = {}
            for p in args.param:
                k, eq, v = p.partition("=")
                try:
                    params[k] = int(v, 0)
                except ValueError:
                    raise UsageError(f"--param {p!r}: give NAME=INTEGER") from None
                if not eq:
                    raise UsageError(f"--param {p!r}: give NAME=INTEGER")
            d = [describe_pte(w, args.format, args.level, **params) for w in words]
        else:
            kind = f"{args.kind}-legacy" if args.legacy else args.kind
            d = [decode(kind, words, args.vendor)]
    except (DecodeError, TypeError) as e:
        raise UsageError(str(e)) from None
    if args.svg:
        from iommu_sim.draw.bitfield import bitfield_svg

        _write_svgs(args.svg, [bitfield_svg(x, ids=f"bf{i}") for i, x in enumerate(d)])
    if args.json:
        print(json.dumps([to_dict(x) for x in d], indent=1))
    else:
        print("\n\n".join(render(x, color=_color(args)) for x in d))
    return EXIT_FAIL if args.strict and any(not x.valid for x in d) else EXIT_OK


# -- info ---------------------------------------------------------------------------------------
def _machine(args: argparse.Namespace, cls: Any = None, **kwargs: Any) -> Any:
    """The Machine of ``--config`` (TOML or JSON; a scenario's ``[machine]`` table works
    too), else the default one; ``cls``: a Machine subclass."""
    import tomllib

    from iommu_sim.machine import Machine

    cls = cls or Machine
    cfg = getattr(args, "config", None)
    if not cfg:
        return cls.default(**kwargs)
    try:
        text = Path(cfg).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--config {cfg}: {e.strerror or e}") from None
    try:
        doc = json.loads(text) if cfg.endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        what = "JSON" if cfg.endswith(".json") else "TOML"
        raise UsageError(f"--config {cfg}: not valid {what}: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--config {cfg}: expected a table of iommus and devices")
    doc = doc.get("machine", doc)
    try:
        return cls.from_config(doc, **kwargs)
    except OSError as e:
        raise UsageError(f"--config {cfg}: {e.strerror or e}") from None


def cmd_info(args: argparse.Namespace) -> int:
    from iommu_sim.info import hw_info, render_info

    m = _machine(args)
    try:
        render_info(hw_info(m), as_json=args.json, registers=not args.brief)
    finally:
        m.shutdown()
    return EXIT_OK


# -- trace ----------------------------------------------------------------------------------------
def _filter(args: argparse.Namespace) -> Any:
    from iommu_sim.trace_filter import TraceFilter

    try:
        return TraceFilter.parse(args.layer or (), args.match or (), args.depth)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _script(path: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"no script {path!r}")
    return path


def cmd_trace(args: argparse.Namespace) -> int:
    from iommu_sim.script import run_script, script_traceback
    from iommu_sim.traced import TracedMachine

    script = _script(args.script)
    flt = _filter(args)
    m = _machine(args, TracedMachine, views=bool(args.html))
    status = EXIT_OK
    err = ""
    try:
        with m.trace() as tracer:
            try:
                run_script(script, m)
            except Exception as e:  # report the script's error after its trace
                status = EXIT_FAIL
                err = script_traceback(e, script)
        roots = flt.apply(tracer.roots)
        color = _color(args)
        if args.json:
            doc = [r.to_dict() for r in roots]
            if args.json == "-":
                print(json.dumps(doc, indent=1))
            else:
                Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
                print(f"{len(roots)} top-level calls written to {args.json}")
        if args.html:
            from iommu_sim.draw.html import trace_page

            page = trace_page(roots, title=f"iommu-sim trace {Path(script).name}")
            Path(args.html).write_text(page, encoding="utf-8")
            print(f"{len(roots)} top-level calls drawn in {args.html}")
        if not args.json and not args.html:
            print(render_tree(roots, color=color, fold=not args.no_fold))
        if err:
            sys.stdout.flush()
            print(paint("iommu-sim trace: the script failed:", "error", color),
                  file=sys.stderr)
            print(err.rstrip(), file=sys.stderr)
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
    from iommu_sim.graph import build_graph, to_dot, to_mermaid, to_svg
    from iommu_sim.scenario import Runner, ScenarioError, ScenarioFailed, load
    from iommu_sim.script import run_script, script_error_line

    runner = None
    m = None
    try:
        if args.scenario:
            try:
                runner = Runner(load(_scenario_path(args.scenario)))
                for _ in runner.steps():
                    pass
            except (FileNotFoundError, ScenarioError, ScenarioFailed) as e:
                raise UsageError(str(e)) from None
            m = runner.machine
        else:
            m = _machine(args)
        if args.script:
            script = _script(args.script)
            try:
                run_script(script, m)
            except Exception as e:
                raise UsageError(f"the script failed: {script_error_line(e, script)}"
                                 ) from None
        g = build_graph(m, kernel=not args.iommufd_only, entries=args.entries)
        text = {"dot": to_dot, "mermaid": to_mermaid, "svg": to_svg}.get(args.format)
        out = text(g) if text else json.dumps(g.to_dict(), indent=1) + "\n"
        if args.output:
            Path(args.output).write_text(out, encoding="utf-8")
        else:
            sys.stdout.write(out)
    finally:
        if runner is not None:
            runner.close()
        elif m is not None:
            m.shutdown()
    return EXIT_OK


# -- run ------------------------------------------------------------------------------------------
def _step_title(runner: Any, step: Any) -> str:
    """The step's title, or its action and argument, with ``{NAME}`` variables filled in."""
    text = step.title or f"{step.action} {step.arg}"
    try:
        return str(runner.string(step, text))
    except Exception:  # a variable the step has not defined yet: show it as written
        return str(text)


def cmd_run(args: argparse.Namespace) -> int:
    import textwrap

    from iommu_sim.scenario import (
        Runner,
        ScenarioError,
        ScenarioFailed,
        builtin_scenarios,
        load,
    )

    color = _color(args)
    if args.list:
        shipped = builtin_scenarios()
        width = max((len(n) for n in shipped), default=0) + 2
        for name, path in shipped.items():
            text = " ".join(load(path).description.split())
            print(textwrap.fill(text, 92, initial_indent=name.ljust(width),
                                subsequent_indent=" " * width, break_on_hyphens=False,
                                break_long_words=False))
        return EXIT_OK
    if not args.files:
        raise UsageError("give scenario files (or --list)")
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
                    what = _step_title(runner, res.step)
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
    from iommu_sim import KERNEL, __version__

    p = argparse.ArgumentParser(
        prog="iommu-sim", description="The Linux IOMMU stack, simulated layer by layer.",
        epilog="Run 'iommu-sim COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version",
                   version=f"iommu-sim {__version__} (follows Linux {KERNEL})")
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
    t.add_argument("--html", metavar="FILE", help="write one self-contained page with "
                   "pictures (bit-field diagrams, walks) instead")
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
    d.add_argument("--svg", metavar="FILE", help="also draw the structure's bit-field "
                   "diagram in FILE")
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
    r.add_argument("--html", metavar="FILE", help="write one self-contained page: each call's "
                   "tree, the entries it changed, each DMA's walk")
    r.add_argument("--config", help="a Machine config (TOML or JSON; default Machine)")
    r.add_argument("--no-fold", action="store_true", help="do not fold long runs of calls")
    r.add_argument("--layer", action="append", metavar="L[,L]",
                   help="show only these layers (user, iommufd, core, driver, hw)")
    r.add_argument("--match", action="append", metavar="GLOB",
                   help="show only calls whose name (or an identifier in their detail, "
                   "such as an ioctl's name) matches, e.g. 'map_*'")
    r.add_argument("--depth", type=int, metavar="N", help="show N levels (1: the top-level "
                   "calls)")
    _add_color(r)
    r.set_defaults(func=cmd_trace)

    g = sub.add_parser("graph", help="the iommufd object graph and device/group/domain "
                       "topology")
    g.add_argument("--format", choices=["dot", "mermaid", "json", "svg"], default="dot",
                   help="dot (default), mermaid, json, or svg (drawn here, no Graphviz)")
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
    x.add_argument("--html", metavar="FILE", help="write the call tree as one page (each "
                   "ioctl with its pid, its call tree)")
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
        raise UsageError("no program given (iommu-sim exec -- PROGRAM [ARGS...])")
    machine = _machine(args)
    with tempfile.TemporaryDirectory() as tmp:
        # --html draws the recorded trace: record one (to --trace FILE, or aside).
        trace = Path(args.trace) if args.trace else (
            Path(tmp) / "trace.json" if args.html else None)
        try:
            rc = exec_program(machine, program[0], program[1:], trace=trace)
        except HostUnsupported as e:
            raise UsageError(str(e)) from None
        if args.html and trace is not None:
            from iommu_sim.draw.html import trace_page

            page = trace_page(trace, title=f"iommu-sim exec {' '.join(program)}")
            Path(args.html).write_text(page, encoding="utf-8")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except UsageError as e:
        sys.stdout.flush()
        print(f"iommu-sim {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `iommu-sim tour | head`
        sys.stderr.close()
        return EXIT_OK
    sys.stdout.flush()
    return rc

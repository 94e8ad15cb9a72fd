"""Text output for the CLI: ANSI colour (off unless asked or on a terminal, and never with
``NO_COLOR``), and call trees rendered with long runs of identical calls folded."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from typing import IO, Any

from iommu_core.trace import TraceNode

#: The trace layers' colours (as iommu_core.trace uses them) and a few for the CLI.
COLORS = {"user": "1;37", "iommufd": "36", "core": "33", "driver": "32", "hw": "35",
          "error": "31", "title": "1", "dim": "2", "changed": "1;33", "ok": "32"}


def want_color(flag: bool | None, stream: IO[str] | None = None) -> bool:
    """``flag`` if given; else colour only on a terminal and without ``NO_COLOR``."""
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):
        return False
    s = stream or sys.stdout
    return bool(getattr(s, "isatty", lambda: False)())


def paint(text: str, style: str, color: bool) -> str:
    return f"\x1b[{COLORS.get(style, style)}m{text}\x1b[0m" if color else text


def wrap(text: str, indent: str = "", width: int = 92) -> str:
    return textwrap.fill(" ".join(text.split()), width=width, initial_indent=indent,
                         subsequent_indent=indent)


def fold_runs(children: Sequence[TraceNode], keep: int = 2, min_run: int = 5
          ) -> list[TraceNode | tuple[int, str]]:
    """Runs of ``min_run`` or more siblings with the same layer and name keep their first
    ``keep`` and last one; the rest become a ``(count, name)`` marker."""
    out: list[TraceNode | tuple[int, str]] = []
    i = 0
    while i < len(children):
        j = i
        c = children[i]
        while (j + 1 < len(children) and children[j + 1].layer == c.layer
               and children[j + 1].name == c.name):
            j += 1
        run = j - i + 1
        if run >= min_run:
            out.extend(children[i:i + keep])
            out.append((run - keep - 1, f"[{c.layer}] {c.name}"))
            out.append(children[j])
        else:
            out.extend(children[i:j + 1])
        i = j + 1
    return out


def render_tree(roots: Sequence[TraceNode], color: bool = False, fold: bool = True,
                indent: str = "", max_depth: int = 64) -> str:
    """The layered call tree, one node a line, as ``Tracer.render`` draws it."""
    lines: list[str] = []

    def walk(node: TraceNode | tuple[int, str], prefix: str, last: bool, depth: int) -> None:
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        if isinstance(node, tuple):
            lines.append(indent + prefix + branch + paint(f"… {node[0]} more {node[1]}", "dim",
                                                           color))
            return
        text = f"[{node.layer}] {node.name}"
        if node.detail:
            text += f" {node.detail}"
        if node.result:
            text += f" -> {node.result}"
        line = indent + prefix + branch + paint(text, node.layer, color)
        if node.error:
            line += " " + paint(f"!! {node.error}", "error", color)
        lines.append(line)
        if depth >= max_depth:
            return
        ext = "" if depth == 0 else ("   " if last else "│  ")
        kids: Sequence[TraceNode | tuple[int, str]] = (
            fold_runs(node.children) if fold else node.children)
        for i, c in enumerate(kids):
            walk(c, prefix + ext, i == len(kids) - 1, depth + 1)

    for r in roots:
        walk(r, "", True, 0)
    return "\n".join(lines)


def name_ioctl(node: TraceNode) -> None:
    """Replace ``request 0x3b89`` in a user-layer ioctl span by the request's name (the
    Tracer calls it for every new span once :func:`install` ran)."""
    if node.layer != "user" or node.name != "ioctl" or "request 0x" not in node.detail:
        return
    from iommu_sim.uapi_index import ioctl_names_by_request

    head, _, rest = node.detail.rpartition("request ")
    num, _, tail = rest.partition(" ")
    try:
        name = ioctl_names_by_request().get(int(num, 16))
    except ValueError:
        name = None
    if name:
        node.detail = f"{head}{name}" + (f" {tail}" if tail else "")


def name_ioctls(nodes: Sequence[TraceNode]) -> None:
    """:func:`name_ioctl` over a recorded tree (one recorded before :func:`install`, or
    read back from JSON)."""
    for n in nodes:
        name_ioctl(n)
        name_ioctls(n.children)


def _trace_html(roots: Sequence[TraceNode]) -> str:
    from iommu_sim.draw.html import tree_html
    from iommu_sim.draw.svg import LAYER_COLORS

    css = "".join(f".l-{k}{{color:{v}}}" for k, v in LAYER_COLORS.items())
    return (f"<style>{css} ul.tree{{list-style:none;padding-left:16px;font-family:monospace;"
            f"font-size:12px}} ul.tree.top{{padding-left:0}}</style>{tree_html(roots)}")


def install() -> None:
    """Name ioctls in every trace as it is recorded, and show a trace in a notebook as a
    foldable call tree."""
    from iommu_core.trace import add_user_namer, set_html_renderer

    add_user_namer(name_ioctl)
    set_html_renderer(_trace_html)


def tree_layers(roots: Sequence[TraceNode]) -> list[str]:
    """The layers a call tree passes through, in order of first appearance."""
    seen: list[str] = []

    def walk(n: TraceNode) -> None:
        if n.layer not in seen:
            seen.append(n.layer)
        for c in n.children:
            walk(c)

    for r in roots:
        walk(r)
    return seen


def count_nodes(roots: Sequence[TraceNode]) -> int:
    return sum(1 + count_nodes(r.children) for r in roots)


def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return repr(v)
    return str(v) if 0 <= v < 10 else hex(v)

"""One self-contained HTML page (inline SVG and CSS, no script, no network) for a tour or a
recorded trace: each step's call, its call tree (folded like the terminal's, unfolded on a
click), the entries it changed as bit-field diagrams with the changed fields highlighted,
and the walk of each DMA.

* :func:`trace_page` draws a recorded trace: the Tracer's JSON (``iommu-sim trace
  --json``, ``exec --trace``), a list of :class:`~iommu_core.trace.TraceNode`, or a file.
  What a :class:`~iommu_sim.traced.TracedMachine` with ``views=True`` adds to a span
  (entries, walk) is drawn; other keys of a span's data (a ``pid``) are shown as tags.
* :func:`tour_page` draws ``iommu-sim tour``'s records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iommu_core.describe import ConfigEntry, Decoded, WalkStage
from iommu_core.trace import TraceNode
from iommu_sim.decode import from_dict as decoded_from_dict
from iommu_sim.draw.bitfield import bitfield_svg
from iommu_sim.draw.svg import LAYER_COLORS, STYLE, esc
from iommu_sim.draw.walk import walk_svg
from iommu_sim.introspect import entry_from_dict, walk_from_dict
from iommu_sim.render import fold_runs

if TYPE_CHECKING:
    from iommu_sim.scenario import Scenario
    from iommu_sim.tour import TourStep

__all__ = ["Page", "tour_page", "trace_page", "tree_html"]

_CSS = """\
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1b1f24;background:#ffffff}
header{padding:14px 24px;border-bottom:1px solid #d0d7de;background:#f6f8fa}
header h1{font-size:20px;margin:0 0 4px}
header p{margin:2px 0;color:#57606a}
main{padding:4px 24px 40px}
h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:22px 0 6px}
h4{font-size:14px;margin:0 0 4px}
pre,code,.tree,.call,.brief{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;
font-size:12px}
.step{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:12px 0;
background:#ffffff}
.say{margin:2px 0 8px;max-width:60em}
.brief{color:#57606a;margin:3px 0 3px 8px}
.call{background:#f6f8fa;padding:6px 8px;border-radius:4px;white-space:pre-wrap;
overflow-wrap:anywhere;margin:4px 0}
.result{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;
margin:0 0 6px 8px}
.expected{color:#cf222e}
ul.tree{list-style:none;margin:0;padding-left:16px;border-left:1px dotted #d0d7de}
ul.tree.top{padding-left:0;border-left:0}
.tree summary{cursor:pointer}
.tree li{white-space:nowrap}
.res,.fold{color:#57606a}
.err{color:#cf222e}
.tag{display:inline-block;background:#ddf4ff;border-radius:8px;padding:0 6px;
font-size:11px;margin-right:4px}
figure{margin:10px 0;overflow-x:auto}
figcaption{font-weight:600;margin-bottom:4px}
figure svg{display:block}
nav ul{margin:4px 0;padding-left:18px}
table.summary{border-collapse:collapse;margin:8px 0}
table.summary td,table.summary th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
""" + "".join(f".l-{k}{{color:{v}}}\n" for k, v in LAYER_COLORS.items()) + (
    ".l-user{font-weight:bold}\n")


class Page:
    """A page being written: sections of HTML and a table of contents; its figures get ids
    in order, so the same input gives the same bytes."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []
        self.toc: list[tuple[int, str, str]] = []
        self._fig = 0

    def add(self, html: str) -> None:
        self.parts.append(html)

    def heading(self, level: int, text: str, anchor: str) -> None:
        self.toc.append((level, anchor, text))
        self.add(f'<h{level} id="{esc(anchor)}">{esc(text)}</h{level}>')

    def figure(self, svg_text: str, caption: str) -> None:
        self.add(f"<figure><figcaption>{esc(caption)}</figcaption>{svg_text}</figure>")

    def next_id(self) -> str:
        self._fig += 1
        return f"f{self._fig}"

    def to_string(self) -> str:
        nav = ""
        if self.toc:
            top = min(lv for lv, _, _ in self.toc)
            items = "".join(f'<li style="margin-left:{(lv - top) * 14}px">'
                            f'<a href="#{esc(a)}">{esc(t)}</a></li>' for lv, a, t in self.toc)
            nav = f"<nav><ul>{items}</ul></nav>"
        sub = f"<p>{esc(self.subtitle)}</p>" if self.subtitle else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{esc(self.title)}</title>\n<style>\n{_CSS}{STYLE}</style>\n</head>\n"
                f"<body>\n<header><h1>{esc(self.title)}</h1>{sub}{nav}</header>\n<main>\n"
                + "\n".join(self.parts) + "\n</main>\n</body>\n</html>\n")


# ---------------------------------------------------------------------------------------
# Call trees
# ---------------------------------------------------------------------------------------
def _tags(node: TraceNode) -> str:
    data = node.data or {}
    tags = [f"{k} {v}" for k, v in data.items()
            if isinstance(v, str | int | float) and not isinstance(v, bool)]
    return "".join(f'<span class="tag">{esc(t)}</span>' for t in tags)


def _line(node: TraceNode) -> str:
    text = f'{_tags(node)}<span class="l-{esc(node.layer)}">[{esc(node.layer)}] ' \
           f"{esc(node.name)}</span>"
    if node.detail:
        text += " " + esc(node.detail)
    if node.result:
        text += f' <span class="res">-&gt; {esc(node.result)}</span>'
    if node.error:
        text += f' <span class="err">!! {esc(node.error)}</span>'
    return text


def tree_html(nodes: Sequence[TraceNode], fold: bool = True, top: bool = True,
              fold_here: bool | None = None) -> str:
    """A call tree as nested lists: every node with children opens and closes; runs of
    identical calls are folded as in the terminal (the folded ones a click away)."""
    out: list[str] = []
    pos = 0  # fold_runs keeps the order and accounts for every node once
    here = fold if fold_here is None else fold_here
    for item in (fold_runs(nodes) if here else list(nodes)):
        if isinstance(item, tuple):
            count, what = item
            hidden = nodes[pos:pos + count]
            pos += count
            inner = tree_html(hidden, fold, top=False, fold_here=False)
            out.append(f'<li><details><summary class="fold">… {count} more {esc(what)}'
                       f"</summary>{inner}</details></li>")
            continue
        pos += 1
        if item.children:
            out.append(f"<li><details open><summary>{_line(item)}</summary>"
                       f"{tree_html(item.children, fold, top=False)}</details></li>")
        else:
            out.append(f"<li>{_line(item)}</li>")
    cls = "tree top" if top else "tree"
    return f'<ul class="{cls}">' + "".join(out) + "</ul>"


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------
def _entry_figure(page: Page, entry: ConfigEntry, previous: Decoded | None,
                  same_place: bool) -> None:
    where = f" @ {entry.addr:#x}" + (f" ({entry.note})" if entry.note else "")
    head = "changed" if previous is not None and same_place else "now in use"
    svg = bitfield_svg(entry.decoded, previous, ids=page.next_id(),
                       title=f"{entry.label}: {entry.decoded.summary}")
    page.figure(svg.to_string(standalone=False), f"{entry.label}{where} {head}")


def _walk_figure(page: Page, walk: Sequence[WalkStage], entries: Sequence[ConfigEntry],
                 tlb_hit: bool, what: str) -> None:
    svg = walk_svg(walk, entries, tlb_hit=tlb_hit, ids=page.next_id(), title=what)
    page.figure(svg.to_string(standalone=False),
                "no walk: a TLB hit (the tables now say)" if tlb_hit else "hardware walk")


# ---------------------------------------------------------------------------------------
# A recorded trace
# ---------------------------------------------------------------------------------------
def _load(trace: Sequence[TraceNode] | Sequence[Mapping[str, Any]] | str | Path
          ) -> list[TraceNode]:
    if isinstance(trace, str | Path):
        doc = json.loads(Path(trace).read_text(encoding="utf-8"))
        return [TraceNode.from_dict(d) for d in doc]
    return [n if isinstance(n, TraceNode) else TraceNode.from_dict(n) for n in trace]


def trace_page(trace: Sequence[TraceNode] | Sequence[Mapping[str, Any]] | str | Path, *,
               title: str = "iommu-sim trace", subtitle: str = "",
               fold: bool = True) -> str:
    """The page of a recorded trace: one section per top-level call.

    ``trace`` is the Tracer's JSON (a list of node dicts, as ``TraceNode.to_dict`` and
    ``iommu-sim trace --json`` write it; or the path of such a file) or the nodes
    themselves. Returns the HTML text."""
    roots = _load(trace)
    page = Page(title, subtitle or f"{len(roots)} top-level calls")
    if not roots:
        page.add("<p>Nothing was traced.</p>")
    for k, node in enumerate(roots, 1):
        page.add(f'<article class="step" id="c{k}">')
        page.add(f"<h4>{_line(node)}</h4>")
        if node.children:
            page.add(tree_html(node.children, fold))
        _node_figures(page, node)
        page.add("</article>")
    return page.to_string()


def _node_figures(page: Page, node: TraceNode) -> None:
    data = node.data or {}
    for item in data.get("entries", ()):
        prev = item.get("previous")
        _entry_figure(page, entry_from_dict(item["entry"]),
                      decoded_from_dict(prev) if prev else None,
                      bool(item.get("same_place", True)))
    if data.get("walk") is not None and (data["walk"] or node.error == ""):
        _walk_figure(page, [walk_from_dict(w) for w in data["walk"]],
                     [entry_from_dict(e) for e in data.get("walk_entries", ())],
                     bool(data.get("tlb_hit")), f"{node.name} {node.detail}")


# ---------------------------------------------------------------------------------------
# The tour
# ---------------------------------------------------------------------------------------
def tour_page(tours: Iterable[tuple[str, Scenario, Sequence[str], Sequence[TourStep]]],
              summary: Sequence[Sequence[str]] = ()) -> str:
    """The tour's page: per driver (``(driver, its tour scenario, its chapters in order,
    the recorded steps)``) every chapter, each step as ``iommu-sim tour`` prints it, with
    pictures; ``summary`` rows (header first) end it."""
    page = Page("iommu-sim tour", "A VMM's flow on each vendor, from the ioctl to the bits "
                "the driver wrote and the walk the hardware did.")
    for drv, sc, order, records in tours:
        page.heading(2, f"{drv}", f"t-{drv}")
        page.add(f"<p>{esc(sc.description)}</p>")
        chapter = ""
        for r in records:
            if r.chapter != chapter:
                chapter = r.chapter
                n = order.index(chapter) + 1 if chapter in order else 0
                page.heading(3, f"step {n}/{len(order)}: {chapter} — "
                             f"{sc.chapters.get(chapter, '')}", f"t-{drv}-{chapter}")
            _tour_step(page, r)
    if summary:
        page.heading(2, "summary", "summary")
        head, *rows = summary
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                       for row in rows)
        page.add('<table class="summary"><tr>' + "".join(f"<th>{esc(c)}</th>" for c in head)
                 + f"</tr>{body}</table>")
    return page.to_string()


def _tour_step(page: Page, r: TourStep) -> None:
    if not r.shown:
        page.add(f'<div class="brief">· {esc(r.title or r.brief or r.call)}</div>')
        return
    page.add('<article class="step">')
    page.add(f"<h4>▶ {esc(r.title or r.action)}</h4>")
    if r.say:
        page.add(f'<p class="say">{esc(r.say)}</p>')
    page.add(f'<div class="call">{esc(r.call)}</div>')
    if r.result:
        page.add(f'<div class="result">{esc(r.result)}</div>')
    if r.error:
        page.add(f'<div class="result expected">=&gt; {esc(r.error)} (expected)</div>')
    if r.trace:
        page.add(tree_html(r.trace))
    for new, old in r.structures:
        _entry_figure(page, new, old.decoded if old else None,
                      old is not None and old.addr == new.addr)
    if r.walk or r.tlb_hit is not None:
        _walk_figure(page, r.walk, r.walk_entries, bool(r.tlb_hit), r.call)
    page.add("</article>")

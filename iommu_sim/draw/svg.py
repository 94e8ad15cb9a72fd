"""SVG primitives the pictures share: a canvas that collects elements, text escaped for
XML, a text-width estimate for the monospace font, and one stylesheet.

Output is deterministic: numbers are printed with at most one decimal, elements in the
order they were added, ids from a caller-chosen prefix (so several pictures inlined in one
HTML page never share an id). No external binary and no font file: sizes come from the
monospace advance width, which every browser's monospace font is close to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from html import escape

__all__ = ["CHAR_W", "LAYER_COLORS", "LEVEL_COLORS", "STYLE", "Svg", "esc", "fit", "num",
           "stack", "text_width"]

#: Font size (px) of ordinary text and the advance of one monospace character at it.
FONT = 11.0
CHAR_W = 0.61 * FONT

#: The call tree's layer colours (as the terminal paints them), on a light background.
LAYER_COLORS = {"user": "#24292f", "iommufd": "#0e7490", "core": "#a16207",
                "driver": "#15803d", "hw": "#a21caf", "error": "#cf222e"}

#: Colours of the levels of a walk (the address bits that index a level and its table).
LEVEL_COLORS = ("#2563eb", "#0891b2", "#16a34a", "#ca8a04", "#9333ea", "#db2777")

#: The stylesheet of every picture (inlined in a standalone SVG; once per HTML page).
STYLE = """\
.isim text{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:11px;fill:#1b1f24}
.isim .small{font-size:9px}
.isim .title{font-size:13px;font-weight:bold}
.isim .b{font-weight:bold}
.isim .muted{fill:#57606a}
.isim .bad{fill:#cf222e}
.isim .ok{fill:#15803d}
.isim .frame{fill:#ffffff;stroke:#57606a;stroke-width:1}
.isim .panel{fill:#f6f8fa;stroke:#d0d7de;stroke-width:1}
.isim .f{fill:#ffffff;stroke:#57606a;stroke-width:1}
.isim .f-set{fill:#dbeafe}
.isim .f-ch{fill:#fde68a;stroke:#b45309;stroke-width:2}
.isim .f-unused{fill:#f3f4f6;stroke:#8c959f;stroke-dasharray:3 2}
.isim .f-bad{fill:#fee2e2;stroke:#cf222e;stroke-width:2.5}
.isim .rsv{fill:#eaeef2;stroke:#d0d7de;stroke-width:0.5}
.isim .rsv-set{fill:#cf222e}
.isim .edge{fill:none;stroke:#57606a;stroke-width:1.2}
.isim .edge-x{fill:none;stroke:#0e7490;stroke-width:1;stroke-dasharray:5 3;opacity:0.8}
.isim .edge-s2{fill:none;stroke:#9333ea;stroke-width:1;stroke-dasharray:4 2}
.isim .edge-bad{fill:none;stroke:#cf222e;stroke-width:1.5}
.isim .label-bg{fill:#ffffff;opacity:0.85}
.isim .slot{fill:#fff8c5;stroke:#9a6700;stroke-width:1.5}
.isim .leaf{fill:#dafbe1;stroke:#1a7f37;stroke-width:1.5}
.isim .fault{fill:#ffebe9;stroke:#cf222e;stroke-width:1.5}
.isim .s2box{fill:#fbefff;stroke:#9333ea;stroke-width:1;stroke-dasharray:4 2}
"""


def esc(text: str) -> str:
    """``text`` safe inside an XML element or attribute."""
    return escape(text, quote=True)


def num(v: float) -> str:
    """A coordinate as printed: at most one decimal, no trailing ``.0``."""
    r = round(v, 1)
    return str(int(r)) if r == int(r) else f"{r:.1f}"


def text_width(text: str, size: float = FONT) -> float:
    """The width of ``text`` in the monospace font at ``size`` px."""
    return len(text) * 0.61 * size


def fit(text: str, width: float, size: float = FONT) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` px; "" if not even one character
    and the ellipsis fit."""
    n = int(width // (0.61 * size))
    if len(text) <= n:
        return text
    return text[: n - 1] + "…" if n >= 2 else ""


def _attrs(attrs: Mapping[str, object]) -> str:
    out = []
    for k, v in attrs.items():
        if v is None or v == "":
            continue
        val = num(v) if isinstance(v, float | int) and not isinstance(v, bool) else str(v)
        out.append(f' {k.rstrip("_").replace("_", "-")}="{esc(val)}"')
    return "".join(out)


class Svg:
    """A picture being drawn. ``ids`` prefixes every id it defines (arrow markers), so the
    pictures of one HTML page stay distinct."""

    def __init__(self, width: float, height: float, *, ids: str = "p", title: str = "",
                 desc: str = "") -> None:
        self.width = width
        self.height = height
        self.ids = ids
        self.title = title
        self.desc = desc
        self._body: list[str] = []
        self._markers: dict[str, str] = {}

    # -- elements ------------------------------------------------------------------------
    def add(self, element: str) -> None:
        self._body.append(element)

    def rect(self, x: float, y: float, w: float, h: float, cls: str = "", rx: float = 0,
             tip: str = "", **attrs: object) -> None:
        a = _attrs({"x": x, "y": y, "width": w, "height": h, "rx": rx or None,
                    "class": cls, **attrs})
        self.add(f"<rect{a}><title>{esc(tip)}</title></rect>" if tip else f"<rect{a}/>")

    def text(self, x: float, y: float, text: str, cls: str = "", anchor: str = "",
             rotate: bool = False, tip: str = "", **attrs: object) -> None:
        """Text with its baseline at ``y`` (``rotate``: reads bottom to top, starting at
        (x, y))."""
        a = _attrs({"x": x, "y": y, "class": cls, "text-anchor": anchor or None,
                    "transform": f"rotate(-90 {num(x)} {num(y)})" if rotate else None,
                    **attrs})
        body = esc(text) + (f"<title>{esc(tip)}</title>" if tip else "")
        self.add(f"<text{a}>{body}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str = "edge",
             arrow: bool = False, **attrs: object) -> None:
        a = _attrs({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class": cls,
                    "marker-end": self._arrow(cls) if arrow else None, **attrs})
        self.add(f"<line{a}/>")

    def path(self, d: str, cls: str = "edge", arrow: bool = False, **attrs: object) -> None:
        a = _attrs({"d": d, "class": cls, "marker-end": self._arrow(cls) if arrow else None,
                    **attrs})
        self.add(f"<path{a}/>")

    def polygon(self, points: list[tuple[float, float]], cls: str = "", tip: str = "",
                **attrs: object) -> None:
        pts = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        a = _attrs({"points": pts, "class": cls, **attrs})
        self.add(f"<polygon{a}><title>{esc(tip)}</title></polygon>" if tip
                 else f"<polygon{a}/>")

    @contextmanager
    def group(self, cls: str = "", tip: str = "", **attrs: object) -> Iterator[None]:
        self.add(f"<g{_attrs({'class': cls, **attrs})}>"
                 + (f"<title>{esc(tip)}</title>" if tip else ""))
        yield
        self.add("</g>")

    def _arrow(self, cls: str) -> str:
        """The id of an arrowhead coloured like edges of class ``cls``."""
        color = {"edge-s2": "#9333ea", "edge-bad": "#cf222e", "edge-x": "#0e7490"}.get(
            cls, "#57606a")
        mid = f"{self.ids}-arrow-{cls}"
        if mid not in self._markers:
            self._markers[mid] = (
                f'<marker id="{esc(mid)}" viewBox="0 0 10 10" refX="9" refY="5" '
                f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
                f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
        return f"url(#{mid})"

    # -- output --------------------------------------------------------------------------
    def to_string(self, standalone: bool = True) -> str:
        """The picture as SVG: ``standalone`` (a file) carries the XML declaration and the
        stylesheet; inline (in an HTML page that has :data:`STYLE`) it does not."""
        w, h = num(self.width), num(self.height)
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="isim" width="{w}" '
                f'height="{h}" viewBox="0 0 {w} {h}" role="img"')
        parts = []
        if standalone:
            parts.append('<?xml version="1.0" encoding="UTF-8"?>')
        parts.append(head + (f' aria-label="{esc(self.title)}"' if self.title else "") + ">")
        if self.title:
            parts.append(f"<title>{esc(self.title)}</title>")
        if self.desc:
            parts.append(f"<desc>{esc(self.desc)}</desc>")
        if standalone:
            parts.append(f"<style>\n{STYLE}</style>")
        if self._markers:
            parts.append("<defs>" + "".join(self._markers[k] for k in sorted(self._markers))
                         + "</defs>")
        parts.append(f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>')
        parts.extend(self._body)
        parts.append("</svg>")
        return "\n".join(parts) + "\n"

    def __str__(self) -> str:
        return self.to_string()


def stack(pictures: list[Svg], gap: float = 12.0) -> Svg:
    """Several pictures one under the other, as one (each keeps its own ids)."""
    width = max((p.width for p in pictures), default=0.0)
    out = Svg(width, 0, ids="stack", title="; ".join(p.title for p in pictures))
    y = 0.0
    for p in pictures:
        inner = p.to_string(standalone=False)
        _, _, rest = inner.partition(">")
        out.add(f'<svg x="0" y="{num(y)}" width="{num(p.width)}" height="{num(p.height)}" '
                f'viewBox="0 0 {num(p.width)} {num(p.height)}">{rest}')
        y += p.height + gap
    out.height = max(y - gap, 0.0)
    return out

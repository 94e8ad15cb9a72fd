"""Tracing: the layered call tree of one operation, from the ioctl down to the hardware.

Off by default. When off, a traced call costs one attribute test: :func:`traced` checks
``tracer.enabled`` and calls straight through; hardware models test the same flag before
building an event. Driver hooks are traced by pluggy call monitoring, installed only
while tracing is on.
"""

from __future__ import annotations

import functools
import html
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, Protocol, TypeVar

import attrs

LAYERS = ("user", "iommufd", "core", "driver", "hw")

#: Functions that name what only a layer above knows (iommu_sim names ioctl request
#: numbers): each is called with every new user-layer span and may rewrite its detail.
_USER_NAMERS: list[Callable[[TraceNode], None]] = []


def add_user_namer(fn: Callable[[TraceNode], None]) -> None:
    """Register ``fn`` to name new user-layer spans (idempotent)."""
    if fn not in _USER_NAMERS:
        _USER_NAMERS.append(fn)


#: How a notebook shows a trace: a layer above registers its HTML call tree; without one
#: it is the text tree in a ``<pre>``.
_HTML_RENDERER: list[Callable[[Sequence[TraceNode]], str]] = []


def set_html_renderer(fn: Callable[[Sequence[TraceNode]], str]) -> None:
    _HTML_RENDERER[:] = [fn]
_COLORS = {"user": "1;37", "iommufd": "36", "core": "33", "driver": "32", "hw": "35",
           "error": "31"}

P = ParamSpec("P")
R = TypeVar("R")


@attrs.define(eq=False)
class TraceNode:
    layer: str
    name: str
    detail: str = ""
    children: list[TraceNode] = attrs.field(factory=list)
    result: str = ""
    error: str = ""
    t_ns: int = 0
    #: What a recorder above the core adds to a span (JSON-ready: the entries a call
    #: changed, a DMA's walk, a process id); None when nothing was added.
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layer": self.layer, "name": self.name}
        if self.detail:
            d["detail"] = self.detail
        if self.result:
            d["result"] = self.result
        if self.error:
            d["error"] = self.error
        if self.data:
            d["data"] = self.data
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceNode:
        """The node :meth:`to_dict` wrote (keys other than its own go to :attr:`data`, so a
        recorder's tags, such as a process id, survive)."""
        own = {"layer", "name", "detail", "result", "error", "data", "children"}
        data = dict(d.get("data") or {})
        data.update({k: v for k, v in d.items() if k not in own})
        return cls(str(d.get("layer", "")), str(d.get("name", "")), str(d.get("detail", "")),
                   [cls.from_dict(c) for c in d.get("children", ())],
                   str(d.get("result", "")), str(d.get("error", "")), data=data or None)


def _short(v: Any, limit: int = 60) -> str:
    s = hex(v) if isinstance(v, int) and not isinstance(v, bool) and v > 9 else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Tracer:
    """Records nested spans into a tree. One per Machine (``platform.tracer``)."""

    def __init__(self) -> None:
        self.enabled = False
        self.roots: list[TraceNode] = []
        self._stack: list[TraceNode] = []
        self.max_nodes = 200_000
        self._count = 0
        self._paused = False

    def start(self) -> None:
        self.enabled = True

    def stop(self) -> None:
        self.enabled = False

    def clear(self) -> None:
        self.roots = []
        self._stack = []
        self._count = 0

    def _add(self, node: TraceNode) -> None:
        self._count += 1
        if self._count > self.max_nodes:
            return
        (self._stack[-1].children if self._stack else self.roots).append(node)

    def here(self) -> list[TraceNode]:
        """The list the next node joins: the open span's children, or the roots."""
        return self._stack[-1].children if self._stack else self.roots

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside (a tool reading the state between two traced calls)."""
        was = self.enabled
        self.enabled, self._paused = False, True
        try:
            yield
        finally:
            self.enabled, self._paused = was, False

    def push(self, layer: str, name: str, detail: str = "") -> TraceNode:
        node = TraceNode(layer, name, detail, t_ns=time.perf_counter_ns())
        if self._paused:
            return node  # neither in the tree nor on the stack: pop ignores it
        if layer == "user":
            for namer in _USER_NAMERS:
                namer(node)
        self._add(node)
        self._stack.append(node)
        return node

    def pop(self, node: TraceNode, result: Any = None, error: BaseException | None = None
            ) -> None:
        if result is not None:
            node.result = _short(result)
        if error is not None:
            node.error = str(error)
        if self._stack and self._stack[-1] is node:
            self._stack.pop()
        elif node in self._stack:
            del self._stack[self._stack.index(node):]

    @contextmanager
    def span(self, layer: str, name: str, detail: str = "") -> Iterator[TraceNode]:
        node = self.push(layer, name, detail)
        try:
            yield node
        except BaseException as e:
            self.pop(node, error=e)
            raise
        self.pop(node)

    def event(self, layer: str, name: str, detail: str = "") -> None:
        """A leaf: a register write, a queued command, a table write."""
        if self.enabled:
            self._add(TraceNode(layer, name, detail, t_ns=time.perf_counter_ns()))

    # -- output --------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps([r.to_dict() for r in self.roots], indent=1)

    def render(self, color: bool = False, max_depth: int = 64) -> str:
        lines: list[str] = []

        def paint(layer: str, text: str) -> str:
            return f"\x1b[{_COLORS.get(layer, '0')}m{text}\x1b[0m" if color else text

        def walk(node: TraceNode, prefix: str, last: bool, depth: int) -> None:
            branch = "" if depth == 0 else ("└─ " if last else "├─ ")
            text = f"[{node.layer}] {node.name}"
            if node.detail:
                text += f" {node.detail}"
            if node.result:
                text += f" -> {node.result}"
            line = prefix + branch + paint(node.layer, text)
            if node.error:
                line += " " + paint("error", f"!! {node.error}")
            lines.append(line)
            if depth >= max_depth:
                return
            ext = "" if depth == 0 else ("   " if last else "│  ")
            for i, c in enumerate(node.children):
                walk(c, prefix + ext, i == len(node.children) - 1, depth + 1)

        for r in self.roots:
            walk(r, "", True, 0)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if _HTML_RENDERER:
            return _HTML_RENDERER[0](self.roots)
        return f"<pre>{html.escape(self.render())}</pre>"


class HasTracer(Protocol):
    tracer: Tracer


def traced(layer: str, fmt: Callable[..., str] | None = None
           ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a method of an object with a ``tracer`` attribute: a span per call while
    tracing is on; a plain call-through otherwise."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer: Tracer = args[0].tracer  # type: ignore[attr-defined]
            if not tracer.enabled:
                return fn(*args, **kwargs)
            detail = fmt(*args[1:], **kwargs) if fmt else ""
            node = tracer.push(layer, name, detail)
            try:
                res = fn(*args, **kwargs)
            except BaseException as e:
                tracer.pop(node, error=e)
                raise
            tracer.pop(node, result=res)
            return res

        return wrapper

    return deco


def _arg_str(v: Any) -> str:
    name = getattr(v, "name", None)
    if isinstance(name, str):
        return name
    return _short(v, 24)


def hook_tracing_monitor(tracer: Tracer) -> tuple[
        Callable[[str, Sequence[Any], Mapping[str, Any]], None],
        Callable[[Any, str, Sequence[Any], Mapping[str, Any]], None]]:
    """pluggy call monitors that record every driver hook call as a ``driver`` span."""
    nodes: list[TraceNode] = []

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        detail = " ".join(f"{k}={_arg_str(v)}" for k, v in kwargs.items()
                          if k not in ("platform", "core", "options"))
        nodes.append(tracer.push("driver", hook_name, detail))

    def after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]
              ) -> None:
        node = nodes.pop()
        exc = getattr(outcome, "exception", None)
        res = None if exc is not None else getattr(outcome, "get_result", lambda: None)()
        tracer.pop(node, result=res if isinstance(res, (int, str)) else None, error=exc)

    return before, after

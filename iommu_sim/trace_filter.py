"""Filters for a recorded call tree, like QEMU's ``-trace``: which layers, which names
(glob patterns), how deep (``iommu-sim trace --layer hw,driver --match 'map_*' --depth 3``).

A node the filter drops is not simply cut: its shown descendants take its place under its
nearest shown ancestor, so ``--layer hw`` lists every hardware event under the top-level
call that caused it. Depth counts in the recorded tree (1: the top-level calls).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import attrs

from iommu_core.trace import LAYERS, TraceNode

__all__ = ["TraceFilter"]


def _names(node: TraceNode) -> list[str]:
    """What a pattern is matched against: the node's name and the identifiers of its
    detail (an ioctl's name, a command's name: ``IOMMU_IOAS_MAP``, ``CMD_CFGI_STE``)."""
    return [node.name, *(t for t in node.detail.split() if t.isidentifier())]


@attrs.frozen
class TraceFilter:
    #: Layers shown (empty: all).
    layers: frozenset[str] = frozenset()
    #: Glob patterns; a node is shown if one matches (empty: all).
    match: tuple[str, ...] = ()
    #: Levels shown (None: all).
    depth: int | None = None

    @classmethod
    def parse(cls, layers: Iterable[str] = (), match: Iterable[str] = (),
              depth: int | None = None) -> TraceFilter:
        """From command-line values (each may be comma-separated); ValueError for an
        unknown layer or a depth below 1."""
        ls = {x.strip() for item in layers for x in item.split(",") if x.strip()}
        bad = sorted(ls - set(LAYERS))
        if bad:
            raise ValueError(f"unknown layer {', '.join(bad)} (layers: {', '.join(LAYERS)})")
        pats = tuple(x.strip() for item in match for x in item.split(",") if x.strip())
        if depth is not None and depth < 1:
            raise ValueError(f"--depth must be at least 1, not {depth}")
        return cls(frozenset(ls), pats, depth)

    @property
    def active(self) -> bool:
        return bool(self.layers or self.match or self.depth is not None)

    def shows(self, node: TraceNode) -> bool:
        if self.layers and node.layer not in self.layers:
            return False
        return not self.match or any(fnmatch.fnmatchcase(n, p) for n in _names(node)
                                     for p in self.match)

    def apply(self, roots: Sequence[TraceNode]) -> list[TraceNode]:
        """The filtered tree (new nodes; the recorded tree is not changed)."""
        if not self.active:
            return list(roots)
        return self._apply(roots, 1)

    def _apply(self, nodes: Sequence[TraceNode], depth: int) -> list[TraceNode]:
        out: list[TraceNode] = []
        if self.depth is not None and depth > self.depth:
            return out
        for n in nodes:
            kids = self._apply(n.children, depth + 1)
            if self.shows(n):
                out.append(attrs.evolve(n, children=kids))
            else:
                out.extend(kids)
        return out

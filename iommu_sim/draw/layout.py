"""A layered (Sugiyama-style) layout of a directed graph, left to right: what ``dot`` does
for the object graph, small enough to need no external binary.

1. cycles are broken by reversing the back edges of a depth-first search;
2. each node's rank (column) is its longest path from a source (or the node's minimum
   rank, if more);
3. an edge spanning several ranks gets a dummy node in each rank between, so it is routed
   around the nodes rather than through them;
4. the nodes of a rank are ordered by the barycentre of their neighbours, sweeping left
   and right a few times;
5. coordinates: ranks are columns as wide as their widest node.

Each cluster is laid out so, as a horizontal band of its own; the bands are stacked in
the order given, and an edge between two clusters runs from one band to the other.

Deterministic: ties keep insertion order.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import attrs

__all__ = ["Layout", "LayoutEdge", "LayoutNode", "Placed", "Routed", "layered"]

RANK_GAP = 70.0
NODE_GAP = 16.0
BAND_GAP = 36.0
BAND_PAD = 26.0  # room for the cluster's title
SWEEPS = 6


@attrs.frozen
class LayoutNode:
    """A box to place: its size and cluster."""

    id: str
    width: float
    height: float
    cluster: str = ""
    #: The leftmost rank the node may take (nodes of a kind in one column).
    min_rank: int = 0


@attrs.frozen
class LayoutEdge:
    """A directed edge between two nodes."""

    src: str
    dst: str


@attrs.frozen
class Placed:
    """A node's box: (x, y) is its top-left corner."""

    id: str
    x: float
    y: float
    width: float
    height: float
    rank: int


@attrs.frozen
class Routed:
    """An edge as points from the source's side to the destination's side."""

    src: str
    dst: str
    points: tuple[tuple[float, float], ...]
    #: Between two clusters.
    between: bool = False


@attrs.frozen
class Layout:
    """The result: every box placed, every edge routed, the clusters' boxes."""

    nodes: dict[str, Placed]
    edges: tuple[Routed, ...]
    #: cluster -> (x, y, width, height) of its band's box.
    clusters: dict[str, tuple[float, float, float, float]]
    width: float
    height: float


def _ranks(ids: list[str], edges: list[tuple[str, str]], low: dict[str, int]
           ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Longest-path ranks over the edges with cycles broken; the edges as oriented."""
    out: dict[str, list[str]] = {i: [] for i in ids}
    for s, d in edges:
        out[s].append(d)
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    for root in ids:  # iterative DFS: 1 = on the stack, 2 = done
        if root in state:
            continue
        stack = [(root, iter(out[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(out[nxt])))
    oriented = [(d, s) if (s, d) in back else (s, d) for s, d in edges if s != d]
    preds: dict[str, list[str]] = {i: [] for i in ids}
    for s, d in oriented:
        preds[d].append(s)
    rank: dict[str, int] = {}

    def r(n: str) -> int:
        stack = [n]
        while stack:
            cur = stack[-1]
            todo = [p for p in preds[cur] if p not in rank]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            rank[cur] = max([rank[p] + 1 for p in preds[cur]] + [low.get(cur, 0)])
        return rank[n]

    for i in ids:
        r(i)
    return rank, oriented


def layered(nodes: Sequence[LayoutNode], edges: Sequence[LayoutEdge],
            clusters: Sequence[str] = (), stages: Sequence[Sequence[str]] = ()) -> Layout:
    """Lay out the graph. ``clusters``: their order (top to bottom within a column);
    ``stages``: groups of clusters whose columns come one group after the other (the
    objects of iommufd, then the kernel's), each group ranked on its own edges."""
    by_id = {n.id: n for n in nodes}
    pairs = list(dict.fromkeys((e.src, e.dst) for e in edges
                               if e.src in by_id and e.dst in by_id and e.src != e.dst))
    corder = list(clusters) + [c for c in dict.fromkeys(n.cluster for n in nodes)
                               if c not in clusters]
    stage_of = {c: i for i, group in enumerate(stages) for c in group}
    nstages = max(stage_of.values(), default=-1) + 1
    rank: dict[str, int] = {}
    offset = 0
    starts: set[int] = set()  # the first column of each later stage
    for st in range(max(nstages, 1)):
        if offset:
            starts.add(offset)
        mine = [n.id for n in nodes if stage_of.get(n.cluster, nstages) == st
                or (st == nstages - 1 and n.cluster not in stage_of) or not stages]
        mine = [i for i in mine if i not in rank]
        inside = set(mine)
        local, _ = _ranks(mine, [(a, b) for a, b in pairs if a in inside and b in inside],
                          {i: by_id[i].min_rank for i in mine})
        for nid in mine:
            rank[nid] = local[nid] + offset
        offset = max(rank.values(), default=-1) + 1
    cluster_of = {n.id: n.cluster for n in nodes}
    size = {n.id: (n.width, n.height) for n in nodes}
    chains: dict[tuple[str, str], list[str]] = {}
    adj: list[tuple[str, str]] = []
    dummies: list[str] = []
    for s, d in pairs:  # a dummy node in every rank a long edge crosses
        a, b = (s, d) if rank[s] <= rank[d] else (d, s)
        chain = [a]
        for k in range(rank[a] + 1, rank[b]):
            dummy = f"\0{a}\0{b}\0{k}"
            if dummy not in rank:
                rank[dummy] = k
                size[dummy] = (0.0, 6.0)
                # In the columns of b's stage it belongs with b, before them with a.
                b_start = max((r for r in starts if r <= rank[b]), default=0)
                cluster_of[dummy] = cluster_of[a] if k < b_start else cluster_of[b]
                dummies.append(dummy)
            chain.append(dummy)
        chain.append(b)
        chains[(s, d)] = chain
        adj.extend(pairwise(chain))
    nranks = max(rank.values(), default=-1) + 1
    cols: list[list[str]] = [[] for _ in range(nranks)]
    for n in [*by_id, *dummies]:  # insertion order: real nodes, then dummies
        cols[rank[n]].append(n)
    up: dict[str, list[str]] = {n: [] for n in rank}
    down: dict[str, list[str]] = {n: [] for n in rank}
    for a, b in adj:
        if rank[a] != rank[b]:
            down[a].append(b)
            up[b].append(a)

    def cl_index(n: str) -> int:
        return corder.index(cluster_of[n]) if cluster_of[n] in corder else len(corder)

    cols = [sorted(col, key=lambda n: (cl_index(n), col.index(n))) for col in cols]
    for sweep in range(SWEEPS):
        pos = {n: float(i) for col in cols for i, n in enumerate(col)}
        nbrs = up if sweep % 2 == 0 else down
        rng = range(1, nranks) if sweep % 2 == 0 else range(nranks - 2, -1, -1)
        for c in rng:
            keyed = []
            for i, n in enumerate(cols[c]):
                near = [pos[m] for m in nbrs[n]]
                keyed.append((cl_index(n), sum(near) / len(near) if near else pos[n], i, n))
            cols[c] = [k[-1] for k in sorted(keyed)]
            pos.update({n: float(i) for i, n in enumerate(cols[c])})

    # Coordinates: columns left to right, each centred on the tallest.
    col_w = [max((size[n][0] for n in col), default=0.0) for col in cols]
    col_h = [sum(size[n][1] + NODE_GAP for n in col) - NODE_GAP for col in cols]
    height = max(col_h, default=0.0)
    placed: dict[str, Placed] = {}
    x = 12.0
    for c, col in enumerate(cols):
        if c in starts:
            x += BAND_GAP
        y = BAND_PAD + (height - col_h[c]) / 2
        for n in col:
            w, h = size[n]
            placed[n] = Placed(n, x + (col_w[c] - w) / 2, y, w, h, c)
            y += h + NODE_GAP
        x += col_w[c] + RANK_GAP
    routed = []
    for s, d in pairs:
        chain = chains[(s, d)]
        pts = []
        for i, n in enumerate(chain):
            p = placed[n]
            cy = p.y + p.height / 2
            if i == 0:
                pts.append((p.x + p.width, cy))
            elif i == len(chain) - 1:
                pts.append((p.x, cy))
            else:
                pts.append((p.x + p.width / 2, cy))
        if chain[0] != s:
            pts.reverse()
        routed.append(Routed(s, d, tuple(pts), between=cluster_of[s] != cluster_of[d]))
    real = {n: p for n, p in placed.items() if n in by_id}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for cl in corder:
        ps = [p for p in real.values() if cluster_of[p.id] == cl]
        if ps:
            x0 = min(p.x for p in ps) - 12
            y0 = min(p.y for p in ps) - BAND_PAD
            boxes[cl] = (x0, y0, max(p.x + p.width for p in ps) + 12 - x0,
                         max(p.y + p.height for p in ps) + 12 - y0)
    width = max((p.x + p.width for p in real.values()), default=0.0) + 12
    return Layout(real, tuple(routed), boxes, width, BAND_PAD + height + 12)


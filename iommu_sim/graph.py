"""``iommu-sim graph``: the Machine's topology and iommufd object graph, as Graphviz DOT or
Mermaid.

Two clusters: the kernel's view (IOMMU units, devices, IOMMU groups and the domain each
group or PASID is attached to) and, per open ``/dev/iommu``, iommufd's objects (IOAS,
HWPT_PAGING, HWPT_NESTED, DEVICE, VIOMMU, VDEVICE, FAULT, VEVENTQ, ACCESS) with the
references between them, and the edges that tie both views together (an iommufd DEVICE
is a kernel device; a HWPT owns a domain). With ``entries``, also what the hardware reads
for each device (the chain of entries its driver describes: STE -> CD, context entry ->
PASID entry, DTE -> GCR3 entry...) and each domain's tables and tags, as the drivers
describe them. Read-only: nothing is allocated or changed.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from iommu_sim.catalogue import describe_ops
from iommu_sim.introspect import device_config, domain_view
from iommu_sim.machine import Machine

__all__ = ["Edge", "Graph", "Node", "build_graph", "to_dot", "to_mermaid", "to_svg"]


@attrs.define
class Node:
    """An object or a piece of topology. ``label``: its lines, separated by newlines."""

    id: str
    label: str
    kind: str  # iommu, device, group, domain, ioas, hwpt_paging, ...
    cluster: str


@attrs.define
class Edge:
    """A reference from ``src`` to ``dst`` (``label``: what it is, "attached", "ioas"...)."""

    src: str
    dst: str
    label: str = ""


@attrs.define
class Graph:
    """Nodes by id (in the order added), edges, and the clusters' titles."""

    nodes: dict[str, Node] = attrs.field(factory=dict)
    edges: list[Edge] = attrs.field(factory=list)
    clusters: dict[str, str] = attrs.field(factory=dict)  # id -> title

    def add(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id

    def edge(self, src: str, dst: str, label: str = "") -> None:
        if src in self.nodes and dst in self.nodes:
            e = Edge(src, dst, label)
            if e not in self.edges:
                self.edges.append(e)

    def to_dict(self) -> dict[str, Any]:
        """For JSON: labels are plain text (lines separated by newlines)."""
        return {"clusters": self.clusters,
                "nodes": [attrs.asdict(n) for n in self.nodes.values()],
                "edges": [attrs.asdict(e) for e in self.edges]}

    def _repr_svg_(self) -> str:
        return to_svg(self)


def _sid(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _domain_node(g: Graph, dom: Any, ids: dict[int, str], machine: Machine | None = None
                 ) -> str:
    key = id(dom)
    if key not in ids:
        ids[key] = f"dom_{len(ids) + 1}"
        kind = getattr(dom, "type_name", "domain")
        label = f"domain {getattr(dom, 'name', '?')}"
        if kind and kind not in label:
            label += f"\n{kind}"
        view = domain_view(machine, dom) if machine is not None else None
        if view is not None:
            for t in view.tables:
                label += f"\n{t.label}: {t.fmt} @ {t.root:#x}"
            if view.tags:
                label += "\n" + " ".join(f"{k} {v:#x}" for k, v in view.tags)
        g.add(Node(ids[key], label, "domain", "kernel"))
    return ids[key]


def _entries(g: Graph, machine: Machine, dev: Any, dn: str) -> None:
    """The chain of entries the hardware reads for ``dev``, as its driver describes it."""
    prev, label = dn, "reads"
    for i, e in enumerate(device_config(machine, dev)):
        en = g.add(Node(f"{dn}_entry{i}", f"{e.label}\n{e.decoded.summary}", "entry",
                        "kernel"))
        g.edge(prev, en, label)
        prev, label = en, "points to"


def build_graph(machine: Machine, kernel: bool = True, entries: bool = False) -> Graph:
    g = Graph()
    g.clusters["kernel"] = "kernel: IOMMU core"
    doms: dict[int, str] = {}
    core = machine.core
    views = machine if entries else None
    if kernel:
        on_demand = {drv: describe_ops(machine.plugins, drv).vendor().on_demand_units
                     for drv in set(machine.iommus.values())}
        for name, drv in machine.iommus.items():
            if on_demand[drv] and not any(d.iommu_name == name
                                          for d in machine.platform.devices.values()):
                continue  # a unit for devices made on demand, none made yet
            g.add(Node(f"iommu_{_sid(name)}", f"{name}\n{drv}", "iommu", "kernel"))
        for gid, grp in sorted(core.groups.items()):
            gn = g.add(Node(f"group_{gid}", f"group {gid}", "group", "kernel"))
            for dev in grp.devices:
                dn = g.add(Node(f"dev_{_sid(dev.name)}", dev.name, "device", "kernel"))
                g.edge(gn, dn, "member")
                g.edge(dn, f"iommu_{_sid(dev.iommu_name)}", "behind")
                if entries:
                    _entries(g, machine, dev, dn)
            if grp.domain is not None:
                g.edge(gn, _domain_node(g, grp.domain, doms, views), "attached")
            for pasid, handle in sorted(grp.pasid_array.items()):
                if pasid and getattr(handle, "domain", None) is not None:
                    g.edge(gn, _domain_node(g, handle.domain, doms, views), f"pasid {pasid}")
    for fd in machine.task.files.open_fds():
        f = machine.task.files.get(fd)
        ictx = getattr(f, "ictx", None)
        if ictx is None or not hasattr(ictx, "objects"):
            continue
        cl = f"iommufd_{fd}"
        g.clusters[cl] = f"iommufd (fd {fd})"
        _iommufd_objects(g, ictx, cl, doms, views)
    return g


def _oid(cl: str, obj: Any) -> str:
    return f"{cl}_obj{getattr(obj, 'id', 0)}"


def _iommufd_objects(g: Graph, ictx: Any, cl: str, doms: dict[int, str],
                     machine: Machine | None) -> None:
    objs = [o for o in ictx.objects.values() if o is not None]
    for o in objs:
        t = getattr(getattr(o, "obj_type", None), "name", type(o).__name__)
        label = f"{t} {o.id}"
        dev = getattr(o, "dev", None)
        if t == "DEVICE" and dev is not None:
            label += f"\n{dev.name}"
        if t == "HWPT_PAGING" and bool(getattr(o, "nest_parent", False)):
            label += "\nnest parent"
        if t == "VDEVICE":
            label += f"\nvirt_id {getattr(o, 'virt_id', 0):#x}"
        g.add(Node(_oid(cl, o), label, f"iommufd_{t.lower()}", cl))
    for o in objs:
        me = _oid(cl, o)
        t = getattr(getattr(o, "obj_type", None), "name", "")
        ref = {"HWPT_PAGING": [("ioas", "ioas"), ("fault", "fault")],
               "HWPT_NESTED": [("parent", "parent"), ("viommu", "viommu"), ("fault", "fault")],
               "VIOMMU": [("hwpt", "parent")],
               "VDEVICE": [("viommu_obj", "viommu"), ("idev", "device")],
               "VEVENTQ": [("viommu", "viommu")],
               "ACCESS": [("ioas", "ioas")]}.get(t, [])
        for attr, label in ref:
            other: Any = getattr(o, attr, None)
            if other is not None and getattr(other, "id", None):
                g.edge(me, _oid(cl, other), label)
        dom = getattr(o, "domain", None)
        if t.startswith("HWPT") and dom is not None:
            g.edge(me, _domain_node(g, dom, doms, machine), "domain")
        if t == "DEVICE":
            dev = getattr(o, "dev", None)
            if dev is not None:
                g.edge(me, f"dev_{_sid(dev.name)}", "binds")
            igroup = getattr(o, "igroup", None)
            for pasid, att in sorted(getattr(igroup, "attach", {}).items()):
                hwpt = getattr(att, "hwpt", None)
                devs = getattr(att, "devices", {})
                if hwpt is not None and (not devs or o.id in devs or o in devs.values()):
                    g.edge(me, _oid(cl, hwpt), "attached" if not pasid else f"pasid {pasid}")


# -- output -------------------------------------------------------------------------------------
_DOT_SHAPES = {"iommu": "box3d", "device": "component", "group": "folder", "domain": "box",
               "entry": "record",
               "iommufd_ioas": "cylinder", "iommufd_hwpt_paging": "box",
               "iommufd_hwpt_nested": "box", "iommufd_device": "ellipse",
               "iommufd_viommu": "hexagon", "iommufd_vdevice": "ellipse",
               "iommufd_fault": "note", "iommufd_veventq": "note"}


def _q(s: str) -> str:
    """A DOT string: quotes and backslashes escaped, line breaks as ``\\n``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(g: Graph, name: str = "iommu_sim") -> str:
    lines = [f"digraph {name} {{", "  rankdir=LR;", '  node [fontname="monospace"];']
    for cl, title in g.clusters.items():
        members = [n for n in g.nodes.values() if n.cluster == cl]
        if not members:
            continue
        lines.append(f"  subgraph cluster_{cl} {{")
        lines.append(f"    label={_q(title)};")
        for n in members:
            shape = _DOT_SHAPES.get(n.kind, "ellipse")
            lines.append(f"    {n.id} [label={_q(n.label)}, shape={shape}];")
        lines.append("  }")
    for e in g.edges:
        lab = f" [label={_q(e.label)}]" if e.label else ""
        lines.append(f"  {e.src} -> {e.dst}{lab};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mq(s: str) -> str:
    return '"' + s.replace('"', "'").replace("\n", "<br/>") + '"'


_MERMAID_SHAPES = {"iommufd_ioas": ("[(", ")]"), "iommufd_viommu": ("{{", "}}"),
                   "group": ("[/", "/]"), "iommu": ("[[", "]]")}


def to_mermaid(g: Graph) -> str:
    lines = ["flowchart LR"]
    for cl, title in g.clusters.items():
        members = [n for n in g.nodes.values() if n.cluster == cl]
        if not members:
            continue
        lines.append(f"  subgraph {cl} [{_mq(title)}]")
        for n in members:
            open_, close = _MERMAID_SHAPES.get(n.kind, ("[", "]"))
            lines.append(f"    {n.id}{open_}{_mq(n.label)}{close}")
        lines.append("  end")
    for e in g.edges:
        if e.label:
            lines.append(f"  {e.src} -->|{_mq(e.label)}| {e.dst}")
        else:
            lines.append(f"  {e.src} --> {e.dst}")
    return "\n".join(lines) + "\n"


def to_svg(g: Graph, standalone: bool = True, title: str = "") -> str:
    """The graph drawn as SVG (no Graphviz needed)."""
    from iommu_sim.draw.graph import graph_svg

    return graph_svg(g, title=title).to_string(standalone)

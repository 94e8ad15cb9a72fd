"""A Machine whose ``[user]`` trace lines say what each call returned: the ioctl's result,
the first bytes a DMA read or wrote. With ``views=True`` each call also records what it
changed in the entries the hardware reads (every device, and every PASID the calls
name) and, for a DMA, the walk the hardware does and the entries that led to it: what
``trace --html`` draws.

Only the ``[user]`` spans of a traced run gain anything: untraced calls go straight to the
:class:`~iommu_sim.machine.Machine`'s own methods. The extras are plain JSON in the span's
:attr:`~iommu_core.trace.TraceNode.data` (see :func:`iommu_sim.draw.html.trace_page`):

* ``entries``: ``[{"entry": <entry dict>, "previous": <decoded dict or null>}]``;
* ``walk``: ``[<walk dict>]``, ``walk_entries``: ``[<entry dict>]``, ``tlb_hit``: bool.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

from iommu_core.describe import ConfigEntry
from iommu_core.plugin import PluginHost
from iommu_core.trace import TraceNode
from iommu_sim.decode import to_dict as decoded_to_dict
from iommu_sim.introspect import device_config, entry_to_dict, translation_walk, walk_to_dict
from iommu_sim.machine import Machine

__all__ = ["TracedMachine", "first_bytes"]

#: How many bytes of a DMA the trace shows.
SHOWN_BYTES = 8


def first_bytes(data: bytes | bytearray | memoryview, n: int = SHOWN_BYTES) -> str:
    """``68 65 6c 6c 6f "hello"``: the first ``n`` bytes in hex, as text when printable,
    and the length when there are more."""
    b = bytes(data[:n])
    out = b.hex(" ")
    if b and all(32 <= c < 127 for c in b):
        out += ' "' + b.decode("ascii").replace('"', '\\"') + '"'
    if len(data) > n:
        out += f" ... ({len(data)} bytes)"
    return out or "(none)"


def _has_hw(nodes: list[TraceNode]) -> bool:
    return any(n.layer == "hw" or _has_hw(n.children) for n in nodes)


class TracedMachine(Machine):
    """A :class:`~iommu_sim.machine.Machine` for tracing tools (``trace``, the tour,
    ``run --trace``, ``exec --trace``)."""

    def __init__(self, config: Mapping[str, Any], plugins: PluginHost | None = None, *,
                 views: bool = False) -> None:
        super().__init__(config, plugins)
        #: Record the entries each call changed and each DMA's walk.
        self.views = views
        self._snap: dict[tuple[str, int | None], list[ConfigEntry]] = {}

    # -- the recorded calls --------------------------------------------------------------
    def ioctl(self, fd: int, request: int, buf: Any = None) -> int:
        tracer = self.platform.tracer
        if not tracer.enabled:
            return super().ioctl(fd, request, buf)
        pasid = getattr(buf, "pasid", None) if isinstance(buf, ctypes.Structure) else None
        here, n = self._before(pasid if isinstance(pasid, int) else None)
        try:
            r = super().ioctl(fd, request, buf)
        except BaseException:
            self._after(here, n, None)
            raise
        self._after(here, n, str(r))
        return r

    def dma_read(self, dev: Any, iova: int, n: int, pasid: int | None = None) -> bytes:
        tracer = self.platform.tracer
        if not tracer.enabled:
            return super().dma_read(dev, iova, n, pasid)
        here, k = self._before(pasid)
        try:
            data = super().dma_read(dev, iova, n, pasid)
        except BaseException:
            self._after(here, k, None, dma=(dev, iova, pasid))
            raise
        self._after(here, k, first_bytes(data), dma=(dev, iova, pasid))
        return data

    def dma_write(self, dev: Any, iova: int, data: bytes | bytearray,
                  pasid: int | None = None) -> None:
        tracer = self.platform.tracer
        if not tracer.enabled:
            super().dma_write(dev, iova, data, pasid)
            return
        here, k = self._before(pasid)
        shown = first_bytes(memoryview(data).cast("B")) if isinstance(
            data, bytes | bytearray | memoryview) else ""
        try:
            super().dma_write(dev, iova, data, pasid)
        except BaseException:
            self._after(here, k, None, dma=(dev, iova, pasid), detail=f"data {shown}")
            raise
        self._after(here, k, "written", dma=(dev, iova, pasid), detail=f"data {shown}")

    def fork(self) -> Machine:
        """``fork(2)``: the child task's calls are recorded too (Machine.fork makes a plain
        Machine sharing this one's state; it becomes a TracedMachine like its parent)."""
        return super().fork()

    # -- recording -------------------------------------------------------------------------
    def _devices(self) -> list[str]:
        return list(self.platform.devices)

    def _before(self, pasid: int | None) -> tuple[list[TraceNode], int]:
        here = self.platform.tracer.here()
        if self.views:
            keys: list[tuple[str, int | None]] = [(d, None) for d in self._devices()]
            if pasid is not None and pasid >= 0:
                keys += [(d, pasid) for d in self._devices()]
            for k in keys:
                if k not in self._snap:
                    self._snap[k] = self._config(k)
        return here, len(here)

    def _config(self, key: tuple[str, int | None]) -> list[ConfigEntry]:
        try:
            with self.platform.tracer.paused():  # the describing is not part of the trace
                return device_config(self, key[0], key[1])
        except (OSError, LookupError):
            return []

    def _after(self, here: list[TraceNode], n: int, result: str | None, *,
               dma: tuple[Any, int, int | None] | None = None, detail: str = "") -> None:
        node = here[n] if len(here) > n and here[n].layer == "user" else None
        if node is None:
            return
        if result is not None:
            node.result = result
        if detail:
            node.detail = f"{node.detail} {detail}"
        if not self.views:
            return
        data: dict[str, Any] = {}
        changed = self._changed()
        if changed:
            data["entries"] = changed
        if dma is not None:
            dev, iova, pasid = dma
            name = dev if isinstance(dev, str) else getattr(dev, "name", str(dev))
            try:
                with self.platform.tracer.paused():
                    walk = translation_walk(self, name, iova, pasid)
                    chain = device_config(self, name, pasid)
            except (OSError, LookupError):
                walk, chain = [], []
            data["walk"] = [walk_to_dict(st) for st in walk]
            data["walk_entries"] = [entry_to_dict(e) for e in chain]
            data["tlb_hit"] = node.error == "" and not _has_hw(node.children)
        if data:
            node.data = {**(node.data or {}), **data}

    def _changed(self) -> list[dict[str, Any]]:
        """The entries that differ from the last snapshot (each once), newest state."""
        out: list[dict[str, Any]] = []
        seen: set[tuple[int, str]] = set()  # one entry under two keys (RID and PASID 0)
        for key in list(self._snap) + [(d, None) for d in self._devices()
                                       if (d, None) not in self._snap]:
            now = self._config(key)
            before = {e.label: e for e in self._snap.get(key, [])}
            for e in now:
                old = before.get(e.label)
                if old is not None and old.decoded.words == e.decoded.words:
                    continue
                if (e.addr, e.decoded.kind) in seen:
                    continue
                seen.add((e.addr, e.decoded.kind))
                out.append({"entry": entry_to_dict(e),
                            "previous": decoded_to_dict(old.decoded) if old else None,
                            "same_place": old is not None and old.addr == e.addr})
            self._snap[key] = now
        return out

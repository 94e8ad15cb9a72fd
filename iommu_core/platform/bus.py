"""Buses and DMA-capable devices: what firmware tables (IORT, DMAR, IVRS) describe."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from iommu_core.errors import IommuError

if TYPE_CHECKING:
    from iommu_core.platform.dma import DmaPort
    from iommu_core.platform.pci import PciFunction

_BDF = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def parse_bdf(name: str) -> tuple[int, int] | None:
    """``"0000:00:01.0"`` -> (segment, requester ID), or None if not a BDF name."""
    m = _BDF.match(name)
    if not m:
        return None
    seg, bus, dev, fn = (int(g, 16) for g in m.groups())
    if dev > 0x1F:
        return None
    return seg, (bus << 8) | (dev << 3) | fn


class DeviceProps(dict[str, Any]):
    """A device's properties: bus flags and the endpoint's own state (the capability
    control bits a driver sets in its config space: ATS Enable, PRI Enable...).

    A change calls ``on_change`` (the IOMMU unit the device sits behind: what it
    derived from the old state, such as translations through the device's ATC, goes)."""

    __slots__ = ("on_change",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def __setitem__(self, key: str, value: Any) -> None:
        old = self.get(key, _ABSENT)
        super().__setitem__(key, value)
        if old is _ABSENT or old != value:
            self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def pop(self, key: str, *default: Any) -> Any:
        had = key in self
        v = super().pop(key, *default)
        if had:
            self._changed()
        return v

    def popitem(self) -> tuple[str, Any]:
        kv = super().popitem()
        self._changed()
        return kv

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __ior__(self, other: Any) -> DeviceProps:  # type: ignore[override,misc]
        self.update(other)
        return self


_ABSENT = object()


def _props(value: Any) -> DeviceProps:
    return value if isinstance(value, DeviceProps) else DeviceProps(value)


@attrs.define(eq=False)
class Device:
    """A device that can master DMA (``struct device`` plus its PCI capabilities).

    ``stream_ids`` are the firmware master IDs the IOMMU sees (``iommu_fwspec->ids``):
    for PCI behind an SMMUv3 the StreamID defaults to the requester ID; VT-d and AMD-Vi
    use the requester ID itself.
    """

    name: str
    bus: str = "pci"  # "pci", "platform", or a private bus such as "mock"
    segment: int = 0
    rid: int = 0
    stream_ids: tuple[int, ...] = ()
    pasid_bits: int = 20  # 0 = no PASID capability
    pasid_exec: bool = False
    pasid_priv: bool = False
    ats: bool = True
    pri: bool = True
    is_virtfn: bool = False
    #: Root complex / firmware flags (IOMMU_FWSPEC_PCI_RC_ATS / _CANWBS).
    rc_ats: bool = True
    canwbs: bool = True
    #: Firmware asked for 1:1 mappings of its direct regions (RMRR/IORT RMR).
    require_direct: bool = False
    untrusted: bool = False
    #: The BARs of a PCI function: :class:`~iommu_core.platform.pci.PciBar` or None each,
    #: from BAR0. By default BAR0 is the DMA engine and there is no other.
    bars: tuple[Any, ...] = ()
    #: The DMA engine (:mod:`~iommu_core.platform.dma_engine`) at BAR0: None (the default)
    #: means yes unless the config gives its own ``bars``.
    dma_engine: bool | None = None
    #: Bus-specific extra properties (e.g. selftest device flags) and the endpoint's
    #: capability control state.
    props: DeviceProps = attrs.field(factory=DeviceProps, converter=_props)
    #: Name of the IOMMU hardware instance this device sits behind (the wiring).
    iommu_name: str = ""
    #: Set by the IOMMU core at probe: ``struct dev_iommu`` and the group.
    iommu: Any = None
    iommu_group: Any = None
    #: The PCI function's hardware (config space, BARs), for PCI devices.
    pci: PciFunction | None = None
    #: Where the device's own memory requests go (wired by the platform).
    dma_port: DmaPort | None = None

    @property
    def is_pci(self) -> bool:
        return self.bus == "pci"

    @property
    def max_pasids(self) -> int:
        return (1 << self.pasid_bits) if self.pasid_bits else 0

    def __repr__(self) -> str:
        return f"<Device {self.name}>"


def make_pci_device(name: str, iommu_name: str, **options: Any) -> Device:
    """A PCI device from its BDF name; options override the defaults (full-featured)."""
    bdf = parse_bdf(name)
    if bdf is None:
        raise IommuError(errno.EINVAL, f"{name!r} is not a PCI name like 0000:00:01.0")
    seg, rid = bdf
    known = {f.name for f in attrs.fields(Device)} - {"name", "iommu", "iommu_group", "pci",
                                                       "dma_port"}
    unknown = set(options) - known - {"stream_id"}
    if unknown:
        raise IommuError(errno.EINVAL, f"unknown device options: {sorted(unknown)}")
    sid = options.pop("stream_id", None)
    if "stream_ids" not in options:
        options["stream_ids"] = (rid,) if sid is None else (int(sid),)
    else:
        options["stream_ids"] = tuple(options["stream_ids"])
    from iommu_core.platform.dma_engine import DMA_BAR_SIZE, DmaEngine
    from iommu_core.platform.pci import PciBar, PciFunction

    dev = Device(name=name, segment=seg, rid=rid, iommu_name=iommu_name, **options)
    bars = tuple(dev.bars)
    engine = dev.dma_engine
    if engine is None:
        engine = not bars
    elif engine and bars and bars[0] is not None:
        raise IommuError(errno.EINVAL, f"{name}: BAR0 is the DMA engine's, the config gives "
                         "another")
    dev.dma_engine = bool(engine)
    if engine:
        bars = (PciBar(DmaEngine(dev), DMA_BAR_SIZE), *bars[1:])
    dev.bars = bars
    dev.pci = PciFunction(dev, bars)
    return dev

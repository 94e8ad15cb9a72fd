"""dma-buf (drivers/dma-buf): a buffer one driver exports as a file and others import.

Only what an importer mapping the buffer for DMA needs: the exporter hands out the
buffer's physical range (``iommufd_map``, the phys-based private interconnect iommufd
uses) and can *revoke* it, which tells every attached importer to drop its mappings
(``dma_buf_invalidate_mappings``) — a revoked buffer must not be reachable by DMA.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from iommu_core.platform.files import File


class DmaBufExporter(abc.ABC):
    """``struct dma_buf_ops`` of the exporting driver."""

    @abc.abstractmethod
    def iommufd_map(self) -> tuple[int, int]:
        """The buffer's (physical address, length); raises (ENODEV once revoked,
        EOPNOTSUPP for an exporter that offers no physical range)."""

    def release(self) -> None:  # noqa: B027 - exporters with nothing to free
        """The last reference to the buffer is gone."""


class DmaBufAttachment:
    """``struct dma_buf_attachment`` of a dynamic importer."""

    __slots__ = ("dmabuf", "invalidate_mappings", "pinned")

    def __init__(self, dmabuf: DmaBuf, invalidate_mappings: Callable[[], None]) -> None:
        self.dmabuf = dmabuf
        #: ``importer_ops->invalidate_mappings``.
        self.invalidate_mappings = invalidate_mappings
        self.pinned = False


class DmaBuf(File):
    """A dma-buf and its file (``dma_buf_fd``)."""

    name = "dmabuf"

    def __init__(self, exporter: DmaBufExporter, size: int) -> None:
        self.exporter = exporter
        self.size = size
        self.attachments: list[DmaBufAttachment] = []

    def attach(self, invalidate_mappings: Callable[[], None]) -> DmaBufAttachment:
        """``dma_buf_dynamic_attach``: the attachment holds a reference to the buffer."""
        att = DmaBufAttachment(self, invalidate_mappings)
        self.get_file()
        self.attachments.append(att)
        return att

    def detach(self, att: DmaBufAttachment) -> None:
        """``dma_buf_detach`` + ``dma_buf_put``."""
        if att in self.attachments:
            self.attachments.remove(att)
            self.fput()

    def invalidate_mappings(self) -> None:
        """``dma_buf_invalidate_mappings``: every importer drops its mappings now."""
        for att in list(self.attachments):
            att.invalidate_mappings()

    def release(self) -> None:
        self.exporter.release()

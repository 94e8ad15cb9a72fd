"""Sparse, page-granular, little-endian simulated physical memory.

A frame is created on first write; reads of a never-written frame return zeros and
allocate nothing, so zero-filled memory costs nothing until written. A frame's storage is
any writable buffer of 4 KiB: a ``memoryview`` of a ``bytearray`` of our own (a slice of a
view copies once, into the bytes a reader gets), a ``bytearray``, or a view of memory
that lives elsewhere — a page of a file mapped into this process (a program's shared memory under
``iommu-sim exec``), or a proxy of a page in another process. Such outside memory is
attached as a *window* over a range of frame numbers; a frame of a window is looked up on
first access and then cached like any other.
"""

from __future__ import annotations

from typing import Any, Protocol

from iommu_core.platform.ranges import RangeMap

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

_ZERO_PAGE = bytes(PAGE_SIZE)


def as_bytes(piece: Any) -> bytes:
    """A piece sliced from a frame, as bytes (one copy from a view)."""
    try:
        return piece.tobytes()  # type: ignore[no-any-return]
    except AttributeError:
        return bytes(piece)


class FrameWindow(Protocol):
    """Memory outside the simulation that backs a range of frames."""

    def frame_buffer(self, pfn: int) -> Any:
        """A writable 4 KiB buffer (supports slice get/set) holding frame ``pfn``."""


class PhysicalMemory:
    """Physical address space: frame number -> 4 KiB writable buffer.

    Hardware models and drivers (through memory they allocated) both use this object: it
    is the bus.
    """

    __slots__ = ("frames", "phys_bits", "windows")

    def __init__(self, phys_bits: int = 48) -> None:
        #: pfn -> storage (``bytearray`` or a writable buffer of a window).
        self.frames: dict[int, Any] = {}
        self.phys_bits = phys_bits
        #: Outside memory: pfn runs -> the window that backs them.
        self.windows: RangeMap[FrameWindow] = RangeMap()

    # -- whole frames -------------------------------------------------------------------
    def _lookup(self, pfn: int) -> Any:
        """The frame's storage if it has any (a window's frame is cached on first use)."""
        f = self.frames.get(pfn)
        if f is None and self.windows:
            w = self.windows.get(pfn)
            if w is not None:
                f = self.frames[pfn] = w.frame_buffer(pfn)
        return f

    def frame(self, pfn: int) -> Any:
        """The frame's storage, created zeroed if absent (for writers)."""
        f = self._lookup(pfn)
        if f is None:
            f = self.frames[pfn] = memoryview(bytearray(PAGE_SIZE))
        return f

    def clear_frames(self, pfn: int, count: int = 1) -> None:
        """Forget frames (they read as zero again): used when pages are freed."""
        frames = self.frames
        if count <= len(frames):
            for p in range(pfn, pfn + count):
                frames.pop(p, None)
        else:
            for p in [p for p in frames if pfn <= p < pfn + count]:
                del frames[p]

    def attach_window(self, pfn: int, count: int, window: FrameWindow) -> None:
        """Back frames ``[pfn, pfn+count)`` by ``window`` (their old contents are dropped)."""
        self.clear_frames(pfn, count)
        self.windows.set(pfn, pfn + count, window)

    def detach_window(self, pfn: int, count: int) -> None:
        """Stop backing ``[pfn, pfn+count)`` by outside memory; they read as zero again."""
        self.windows.remove(pfn, pfn + count)
        self.clear_frames(pfn, count)

    def rebind_frame(self, pfn: int, storage: Any) -> None:
        """Move frame ``pfn`` into ``storage`` (a writable 4 KiB buffer), keeping its
        contents: from now on the simulation and whoever else sees ``storage`` share it."""
        old = self._lookup(pfn)
        storage[0:PAGE_SIZE] = _ZERO_PAGE if old is None else bytes(old[0:PAGE_SIZE])
        self.frames[pfn] = storage

    # -- bulk access --------------------------------------------------------------------
    def read(self, pa: int, n: int) -> bytes:
        off = pa & PAGE_MASK
        if off + n <= PAGE_SIZE:
            f = self.frames.get(pa >> PAGE_SHIFT)
            if f is None:
                f = self._lookup(pa >> PAGE_SHIFT)
                if f is None:
                    return bytes(n)
            return as_bytes(f[off : off + n])
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE_SIZE - (pa & PAGE_MASK))
            f = self._lookup(pa >> PAGE_SHIFT)
            o = pa & PAGE_MASK
            out += _ZERO_PAGE[:chunk] if f is None else f[o : o + chunk]
            pa += chunk
            n -= chunk
        return bytes(out)

    def write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        pos = 0
        n = len(mv)
        while pos < n:
            o = pa & PAGE_MASK
            chunk = min(n - pos, PAGE_SIZE - o)
            self.frame(pa >> PAGE_SHIFT)[o : o + chunk] = mv[pos : pos + chunk]
            pa += chunk
            pos += chunk

    def fill(self, pa: int, value: int, n: int) -> None:
        self.write(pa, bytes([value]) * n)

    def copy_frames(self, dst_pfn: int, src_pfn: int, count: int) -> None:
        """Copy ``count`` frames; frames never written stay unwritten (cost: what is
        written, not the range)."""
        frames = self.frames
        if count <= len(frames) or self.windows:
            for i in range(count):
                f = self._lookup(src_pfn + i)
                if f is not None:
                    self.frame(dst_pfn + i)[0:PAGE_SIZE] = bytes(f[0:PAGE_SIZE])
            return
        for p in [p for p in frames if src_pfn <= p < src_pfn + count]:
            frames[dst_pfn + (p - src_pfn)] = memoryview(bytearray(frames[p][0:PAGE_SIZE]))

    # -- little-endian scalars (naturally aligned accesses never cross a frame) ----------
    def read_u32(self, pa: int) -> int:
        f = self.frames.get(pa >> PAGE_SHIFT)
        if f is None:
            f = self._lookup(pa >> PAGE_SHIFT)
            if f is None:
                return 0
        o = pa & PAGE_MASK
        return int.from_bytes(f[o : o + 4], "little")

    def read_u64(self, pa: int) -> int:
        f = self.frames.get(pa >> PAGE_SHIFT)
        if f is None:
            f = self._lookup(pa >> PAGE_SHIFT)
            if f is None:
                return 0
        o = pa & PAGE_MASK
        return int.from_bytes(f[o : o + 8], "little")

    def write_u32(self, pa: int, value: int) -> None:
        o = pa & PAGE_MASK
        self.frame(pa >> PAGE_SHIFT)[o : o + 4] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    def write_u64(self, pa: int, value: int) -> None:
        o = pa & PAGE_MASK
        self.frame(pa >> PAGE_SHIFT)[o : o + 8] = (value & (2**64 - 1)).to_bytes(8, "little")

    def read_qwords(self, pa: int, count: int) -> tuple[int, ...]:
        """``count`` consecutive little-endian u64 (an STE, a CD, a PASID entry, a DTE)."""
        raw = self.read(pa, 8 * count)
        return tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 8 * count, 8))

    def write_qwords(self, pa: int, values: tuple[int, ...] | list[int]) -> None:
        self.write(pa, b"".join((v & (2**64 - 1)).to_bytes(8, "little") for v in values))

"""Sparse, page-granular, little-endian simulated physical memory."""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

_ZERO_PAGE = bytes(PAGE_SIZE)


class PhysicalMemory:
    """Physical address space: frame number -> 4 KiB ``bytearray``, created on first write.

    Reads of never-written frames return zeros without allocating. Hardware models and
    drivers (through memory they allocated) both use this object: it is the bus.
    """

    __slots__ = ("frames", "phys_bits")

    def __init__(self, phys_bits: int = 48) -> None:
        self.frames: dict[int, bytearray] = {}
        self.phys_bits = phys_bits

    # -- whole frames -------------------------------------------------------------------
    def frame(self, pfn: int) -> bytearray:
        """The frame's backing store, created zeroed if absent (for writers)."""
        f = self.frames.get(pfn)
        if f is None:
            f = self.frames[pfn] = bytearray(PAGE_SIZE)
        return f

    def clear_frames(self, pfn: int, count: int = 1) -> None:
        """Forget frames (they read as zero again): used when pages are freed."""
        for p in range(pfn, pfn + count):
            self.frames.pop(p, None)

    # -- bulk access --------------------------------------------------------------------
    def read(self, pa: int, n: int) -> bytes:
        off = pa & PAGE_MASK
        if off + n <= PAGE_SIZE:
            f = self.frames.get(pa >> PAGE_SHIFT)
            return bytes(n) if f is None else bytes(f[off : off + n])
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE_SIZE - (pa & PAGE_MASK))
            f = self.frames.get(pa >> PAGE_SHIFT)
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

    # -- little-endian scalars (naturally aligned accesses never cross a frame) ----------
    def read_u32(self, pa: int) -> int:
        f = self.frames.get(pa >> PAGE_SHIFT)
        if f is None:
            return 0
        o = pa & PAGE_MASK
        return int.from_bytes(f[o : o + 4], "little")

    def read_u64(self, pa: int) -> int:
        f = self.frames.get(pa >> PAGE_SHIFT)
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

"""The 64-byte table entry (8 little-endian qwords) shared by STEs and CDs, as a value.

Entries are frozen values: the make functions build a target, the writer moves the
in-memory slot towards it one 64-bit store at a time. ``attrs.evolve`` or
:meth:`Entry.with_qword` derive a changed copy.
"""

from __future__ import annotations

from typing import Self

import attrs

from drivers.arm_smmu_v3.regs import NUM_ENTRY_QWORDS, U64

Qwords = tuple[int, int, int, int, int, int, int, int]
ZERO_QWORDS: Qwords = (0, 0, 0, 0, 0, 0, 0, 0)


def _to_qwords(v: object) -> Qwords:
    if not isinstance(v, tuple | list) or len(v) != NUM_ENTRY_QWORDS:
        raise ValueError(f"an entry is {NUM_ENTRY_QWORDS} qwords, got {v!r}")
    q = tuple(int(x) & U64 for x in v)
    return q  # type: ignore[return-value]


@attrs.frozen(slots=True)
class Entry:
    """Eight qwords. ``entry[i]`` is qword i; ``bytes(entry)`` its memory image."""

    q: Qwords = attrs.field(default=ZERO_QWORDS, converter=_to_qwords)

    def __getitem__(self, i: int) -> int:
        return self.q[i]

    def __len__(self) -> int:
        return NUM_ENTRY_QWORDS

    def __bytes__(self) -> bytes:
        return b"".join(x.to_bytes(8, "little") for x in self.q)

    def with_qword(self, i: int, value: int) -> Self:
        q = list(self.q)
        q[i] = value & U64
        return attrs.evolve(self, q=tuple(q))

    def set_bits(self, i: int, bits: int) -> Self:
        return self.with_qword(i, self.q[i] | bits)

    def clear_bits(self, i: int, bits: int) -> Self:
        return self.with_qword(i, self.q[i] & ~bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls(tuple(int.from_bytes(data[i * 8 : i * 8 + 8], "little")
                         for i in range(NUM_ENTRY_QWORDS)))

    def hex(self) -> str:
        return " ".join(f"{x:016x}" for x in self.q)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

"""The hitless entry writer (``arm_smmu_write_entry``), shared by STEs and CDs.

Hardware reads an entry with only 64-bit single-copy atomicity and ignores the fields
the current configuration does not use. So the writer first fills every ignored bit
with its target value, then flips the configuration with one 64-bit store of the single
"critical" qword, then clears what the new configuration no longer uses; each step is
followed by a sync (a configuration-cache invalidation). When more than one qword's
used bits must change the update cannot be hitless: V is cleared first (smmuv3.md §6).
"""

from __future__ import annotations

import abc
from typing import Protocol

from drivers.arm_smmu_v3.entry import ZERO_QWORDS, Entry, Qwords
from drivers.arm_smmu_v3.regs import NUM_ENTRY_QWORDS, U64


class EntrySlot(Protocol):
    """Where the entry lives: qword reads and single 64-bit stores (a list, or memory)."""

    def __getitem__(self, i: int) -> int: ...

    def __setitem__(self, i: int, value: int) -> None: ...


class EntryWriter(abc.ABC):
    """``struct arm_smmu_entry_writer`` + its ops."""

    @abc.abstractmethod
    def get_used(self, entry: Qwords) -> Qwords:
        """Bits the hardware reads for the configuration ``entry`` describes."""

    def get_update_safe(self, cur: Qwords, target: Qwords) -> Qwords:
        """Bits whose change needs no ordering (none for CDs)."""
        return ZERO_QWORDS

    @abc.abstractmethod
    def sync(self) -> None:
        """Make the hardware drop its cached copy of the entry (CFGI_* + CMD_SYNC)."""


def _read(entry: EntrySlot) -> Qwords:
    return tuple(entry[i] for i in range(NUM_ENTRY_QWORDS))  # type: ignore[return-value]


def arm_smmu_entry_qword_diff(writer: EntryWriter, entry: Qwords, target: Qwords,
                              unused_update: list[int]) -> int:
    """Fill ``unused_update`` with the entry where every bit the current configuration
    ignores (or may safely change) already has its target value; return the bitmap of
    qwords whose *used* bits still differ."""
    cur_used = writer.get_used(entry)
    target_used = writer.get_used(target)
    safe = writer.get_update_safe(entry, target)
    used_qword_diff = 0
    for i in range(NUM_ENTRY_QWORDS):
        s = safe[i] & target_used[i] & cur_used[i]
        if target[i] & ~target_used[i]:
            raise AssertionError(f"target qword {i} sets unused bits "
                                 f"{target[i] & ~target_used[i]:#x}")  # a driver bug
        cu = cur_used[i] & ~s & U64
        unused_update[i] = (entry[i] & cu) | (target[i] & ~cu & U64)
        if (unused_update[i] & target_used[i]) != target[i]:
            used_qword_diff |= 1 << i
    return used_qword_diff


def entry_set(writer: EntryWriter, entry: EntrySlot, target: Qwords | list[int], start: int,
              length: int) -> bool:
    """Store qwords [start, start+len) that differ, one 64-bit store each; one sync if
    anything changed."""
    changed = False
    for i in range(start, start + length):
        if entry[i] != target[i]:
            entry[i] = target[i]
            changed = True
    if changed:
        writer.sync()
    return changed


def arm_smmu_write_entry(writer: EntryWriter, entry: EntrySlot, target: Entry | Qwords
                         ) -> None:
    tq: Qwords = target.q if isinstance(target, Entry) else target
    unused_update = [0] * NUM_ENTRY_QWORDS
    used_qword_diff = arm_smmu_entry_qword_diff(writer, _read(entry), tq, unused_update)
    if used_qword_diff and used_qword_diff & (used_qword_diff - 1) == 0:
        # One qword holds every used bit that changes: a single store switches
        # the configuration (hitless).
        critical = used_qword_diff.bit_length() - 1
        unused_update[critical] = entry[critical]
        entry_set(writer, entry, unused_update, 0, NUM_ENTRY_QWORDS)
        entry_set(writer, entry, tq, critical, 1)
        entry_set(writer, entry, tq, 0, NUM_ENTRY_QWORDS)
    elif used_qword_diff:
        # At least two qwords must change together: break the entry (V=0), write all
        # qwords but 0, then qword 0.
        unused_update[0] = 0
        entry_set(writer, entry, unused_update, 0, 1)
        entry_set(writer, entry, tq, 1, NUM_ENTRY_QWORDS - 1)
        entry_set(writer, entry, tq, 0, 1)
    else:
        # No used bit changes: only ignored (or update-safe) bits move.
        entry_set(writer, entry, tq, 0, NUM_ENTRY_QWORDS)

"""What a driver wrote and how its hardware walks, as plain data for renderers.

* :class:`ConfigEntry` - one structure the IOMMU reads for a device (an STE, a PASID
  entry, a DTE...): where it is, in which table at which index, and its decoded value;
* :class:`WalkStage` / :class:`WalkLevel` - a table walk level by level: the table, the
  index and the input-address bits that chose it, the descriptor read and, for a stage-1
  table in guest memory, the stage-2 walk that found each descriptor;
* :class:`DeviceView` - both for one device (and PASID, and address);
* :class:`DomainView` - the tables and tags of one domain.

A renderer draws a configuration chain or a page-walk picture from these values alone.
:func:`record_walk` is the walk drivers use to build them: the shared walker, without
side effects (no accessed or dirty bit is set), recording every descriptor read.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from iommu_core.describe.structure import Decoded
from iommu_core.pgtable import Access, PtFormat, WalkFault, WalkResult, describe, walk

__all__ = [
    "ConfigEntry",
    "DeviceView",
    "DomainView",
    "TableRef",
    "WalkLevel",
    "WalkStage",
    "record_walk",
]


@attrs.frozen
class ConfigEntry:
    """One structure the hardware reads for a device: where it is and what it says."""

    label: str  # "STE[0x8]", "PASID entry 42", "DTE[0x2000]"...
    addr: int  # physical address
    decoded: Decoded
    note: str = ""
    #: The table it is an entry of (0: not in a table) and its index there.
    table: int = 0
    index: int = 0
    #: In guest memory: the guest-physical address, and the stage-2 walk that found it.
    guest_addr: int | None = None
    stage2: WalkStage | None = None


@attrs.frozen
class WalkLevel:
    """One descriptor a walk read."""

    level: str  # the architecture's name ("L1", "PML4"...)
    addr: int  # where it was read (physical)
    desc: int
    text: str  # the descriptor decoded, in one line
    level_num: int = 0  # the format's numbering: 0 = smallest pages
    kind: str = ""  # "table", "page", "block", "invalid"...
    #: The table as the walk addressed it (a guest-physical address under nesting) and
    #: the index in it, chosen by input-address bits ``input_hi``:``input_lo``.
    table: int = 0
    index: int = 0
    input_hi: int = 0
    input_lo: int = 0
    #: Nesting: the stage-2 walk that translated this descriptor's address.
    stage2: WalkStage | None = None


@attrs.frozen
class WalkStage:
    """A walk through one stage's table."""

    label: str  # "stage 1 (guest table, ASID 3)"
    fmt: str  # the page-table format's name
    root: int
    input: int
    levels: tuple[WalkLevel, ...]
    result: str  # "0x1000 (0x1000 page, r-)" or "fault: ..."
    output: int | None
    fault: str = ""  # the reason, when the walk failed
    page_size: int = 0
    readable: bool = False
    writable: bool = False
    #: Nesting: the stage-2 walk of a table address that did not translate.
    stage2_fault: WalkStage | None = None


@attrs.frozen
class DeviceView:
    """The structures the IOMMU reads for a device, and (given an address) its walk."""

    entries: tuple[ConfigEntry, ...] = ()
    walk: tuple[WalkStage, ...] = ()


@attrs.frozen
class TableRef:
    """One page table of a domain."""

    label: str  # "stage 1", "second stage", "v1 host table"...
    fmt: str
    root: int
    levels: int


@attrs.frozen
class DomainView:
    """What a domain is to the hardware: its tables and the tags caches use."""

    kind: str  # "paging (stage 1)", "nested", ...
    tables: tuple[TableRef, ...] = ()
    #: Cache tags and identifiers: {"ASID": 3}, {"DID": 7}, {"DomainID": 0x10}...
    tags: tuple[tuple[str, int], ...] = ()


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_walk(label: str, fmt: PtFormat, root: int, iova: int, read: Callable[[int], int],
                stage2: Callable[[int], WalkStage] | None = None) -> WalkStage:
    """Walk ``iova`` like the hardware (privileged read), recording each level, changing
    nothing. ``stage2`` (nesting) walks the address of every descriptor fetched; a table
    address it cannot translate ends the walk with a fault."""
    seen: list[tuple[int, int]] = []
    addressed: list[tuple[int, WalkStage | None]] = []
    failed: list[WalkStage] = []

    def rec(pa: int) -> int:
        v = read(pa)
        seen.append((pa, v))
        return v

    def xlate(addr: int) -> int:
        assert stage2 is not None
        st = stage2(addr)
        if st.output is None:
            failed.append(st)
            raise LookupError(f"{addr:#x} does not translate at stage 2")
        addressed.append((addr, st))
        return st.output

    def plain(addr: int) -> int:
        addressed.append((addr, None))
        return addr

    try:
        r: WalkResult | WalkFault | None = walk(
            fmt, rec, root, iova, access=Access.READ, privileged=True,
            table_xlate=xlate if stage2 is not None else plain)
    except LookupError as e:  # a table address that stage 2 does not map
        r = None
        why = str(e)
    levels = []
    for i, (pa, v) in enumerate(seen):
        lvl = fmt.levels - 1 - i
        d = describe(v, fmt, lvl)
        body = " ".join(str(f) for f in d.fields if f.value)
        at, s2 = addressed[i]
        index = fmt.index(iova, lvl)
        lo = fmt.level_shift[lvl]
        levels.append(WalkLevel(d.level, pa, v, _short(f"{d.kind}: {body}" if body else d.kind),
                                level_num=lvl, kind=d.kind, table=at - index * 8, index=index,
                                input_hi=lo + fmt.level_bits[lvl] - 1, input_lo=lo, stage2=s2))
    s2_fault = failed[0] if failed else None
    if r is None:
        return WalkStage(label, fmt.name, root, iova, tuple(levels), f"fault: {why}", None,
                         fault=why, stage2_fault=s2_fault)
    if isinstance(r, WalkFault):
        why = f"{r.reason} at {fmt.arch_level(r.level)}"
        return WalkStage(label, fmt.name, root, iova, tuple(levels), f"fault: {why}", None,
                         fault=why)
    perm = ("r" if r.readable else "-") + ("w" if r.writable else "-")
    return WalkStage(label, fmt.name, root, iova, tuple(levels),
                     f"{r.oa:#x} ({r.page_size:#x} page, {perm})", r.oa,
                     page_size=r.page_size, readable=r.readable, writable=r.writable)

"""Hardware structures as data: the bit fields of an entry, a command, an event record or a
register, and the same structure decoded from words.

A driver describes each structure it can teach as a :class:`Layout` (name, width, fields;
for a command, one :class:`Variant` per opcode) and a :class:`Structure`, whose
:meth:`~Structure.decode` turns words into a :class:`Decoded` value. What is generic (pad
and join the words, cut the fields, mark the ones this configuration does not read,
assemble the result) is done here; what only the vendor knows (which fields a
configuration reads, the validity rules, a one-line summary) is a method the driver's
subclass overrides.

Bit numbers are absolute over the little-endian structure: bit 64 is bit 0 of the second
64-bit word, as the VT-d and AMD specifications number them (an SMMU ``GENMASK`` of word
``n`` becomes ``64 * n + hi`` : ``64 * n + lo``, see :func:`mask_field`). Everything here
is plain data a renderer can draw from (a bit-field diagram needs only a
:class:`Layout`); nothing renders text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import attrs

__all__ = [
    "CATEGORIES",
    "BitField",
    "Decoded",
    "DecodedField",
    "Golden",
    "Layout",
    "Problem",
    "Structure",
    "Variant",
    "Verdict",
    "fmt_value",
    "join_words",
    "mask_field",
    "module_constants",
    "unknown_bits",
    "unused_notes",
]

#: What a structure is, for listings and pictures.
CATEGORIES = ("entry", "command", "event", "register")


def _frozen_map(m: Mapping[int, str] | None) -> Mapping[int, str]:
    return MappingProxyType(dict(m or {}))


def fmt_value(v: int) -> str:
    """How the tools print a field value: decimal below 10, hex above."""
    return str(v) if v < 10 else hex(v)


def join_words(words: Sequence[int], bits: int) -> int:
    """The words (low word first) as one little-endian integer."""
    v = 0
    for i, w in enumerate(words):
        v |= (w & ((1 << bits) - 1)) << (bits * i)
    return v


@attrs.frozen(hash=False)
class BitField:
    """One field: ``hi``:``lo`` absolute bit numbers, inclusive."""

    name: str
    hi: int
    lo: int
    meaning: str = ""
    #: Names of encoded values (``{5: "S1_TRANS"}``).
    values: Mapping[int, str] = attrs.field(factory=dict, converter=_frozen_map)
    #: An address: the value keeps its bits in place within their 64-bit word
    #: (``raw << lo % 64``), as the kernel masks an address field rather than shifting it.
    addr: bool = False
    #: The kernel name a reader greps for (a macro, a setter).
    kernel: str = ""

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """The field's bits over the whole structure."""
        return ((1 << self.width) - 1) << self.lo

    @property
    def bits(self) -> str:
        return f"{self.hi}" if self.hi == self.lo else f"{self.hi}:{self.lo}"

    def raw(self, value: int) -> int:
        """The field's bits of ``value`` (the structure as one integer), shifted down."""
        return (value >> self.lo) & ((1 << self.width) - 1)

    def get(self, value: int) -> int:
        """The field's value as a reader sees it (an address in place)."""
        x = self.raw(value)
        return x << (self.lo % 64) if self.addr else x


def mask_field(name: str, word: int, mask: int, meaning: str = "",
               values: Mapping[int, str] | None = None, *, addr: bool = False,
               kernel: str = "", word_bits: int = 64) -> BitField:
    """A field from a per-word mask (an SMMU ``GENMASK`` of word ``word``)."""
    if mask <= 0:
        raise ValueError(f"{name}: empty mask")
    lo = (mask & -mask).bit_length() - 1
    hi = mask.bit_length() - 1
    return BitField(name, word_bits * word + hi, word_bits * word + lo, meaning, values or {},
                    addr, kernel)


@attrs.frozen(hash=False)
class Variant:
    """The fields a structure has when its selector field holds one of ``match`` (the
    operands of one command opcode, the record of one event type)."""

    name: str
    match: tuple[int, ...]
    fields: tuple[BitField, ...] = ()


@attrs.frozen(hash=False)
class Layout:
    """A structure's static description: everything a bit-field diagram needs."""

    #: The kind a user names (``iommu-sim decode ste``): lower case, dashes.
    name: str
    #: What a decoded value is called (``"STE"``, ``"context entry (scalable)"``).
    title: str
    #: One of :data:`CATEGORIES`.
    category: str
    #: Number of words and their size: the structure is ``words * word_bits`` bits.
    words: int
    word_bits: int = 64
    #: The fields every instance has, in the order they are shown.
    fields: tuple[BitField, ...] = ()
    #: The name of the field (in ``fields``) that selects a :class:`Variant`.
    selector: str = ""
    variants: tuple[Variant, ...] = ()
    #: One line for listings.
    doc: str = ""
    #: The kernel's name for the structure (``struct arm_smmu_ste``).
    kernel: str = ""

    @property
    def width(self) -> int:
        return self.words * self.word_bits

    def field(self, name: str) -> BitField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def variant_for(self, value: int) -> Variant | None:
        """The variant the selector of ``value`` (the structure as one integer) picks."""
        if not self.selector:
            return None
        sel = self.field(self.selector).raw(value)
        for v in self.variants:
            if sel in v.match:
                return v
        return None

    def fields_for(self, value: int) -> tuple[BitField, ...]:
        v = self.variant_for(value)
        return self.fields + v.fields if v is not None else self.fields


@attrs.frozen
class DecodedField:
    """One field of a decoded structure. ``hi``/``lo`` are None for a value the driver
    assembles from several fields (the AMD GCR3 root, in three pieces)."""

    name: str
    bits: str
    value: int
    meaning: str
    text: str = ""  # the name of the value (an enum)
    used: bool = True  # read by the hardware in this configuration
    kernel: str = ""
    hi: int | None = None
    lo: int | None = None


@attrs.frozen
class Decoded:
    """A structure decoded from words: its fields, what is wrong with it, a summary."""

    kind: str  # the layout's title
    summary: str
    words: tuple[int, ...]
    word_bits: int
    fields: tuple[DecodedField, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: The layout's name and the driver's vendor name, the variant picked (if any).
    structure: str = ""
    vendor: str = ""
    variant: str = ""
    #: True if the hardware refuses the structure (a problem is not always a refusal: a
    #: legal entry may still do nothing useful).
    refused: bool = False

    def field(self, name: str) -> DecodedField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def value(self, name: str) -> int:
        return self.field(name).value

    @property
    def valid(self) -> bool:
        return not self.problems

    def changed(self, previous: Decoded | None) -> set[str]:
        """Names of the fields whose value differs from ``previous`` (same kind)."""
        if previous is None or previous.kind != self.kind:
            return set()
        old = {f.name: f.value for f in previous.fields}
        return {f.name for f in self.fields if old.get(f.name, 0) != f.value}


@attrs.frozen
class Problem:
    """Something wrong with a structure. ``hw``: the hardware refuses it (a configuration
    error, an illegal command); False: legal, but it cannot do what it seems to want."""

    text: str
    hw: bool = True


@attrs.frozen
class Verdict:
    """The hardware model's own answer for a structure."""

    accepted: bool
    reason: str = ""


@attrs.frozen
class Golden:
    """A reference instance (from the specification, the kernel's KUnit vectors, the tour)
    with the verdict the hardware gives it; the conformance kit checks the driver's
    rules and the hardware model against it."""

    name: str
    words: tuple[int, ...]
    valid: bool = True


class Structure:
    """A structure a driver can decode. Subclass it, set :attr:`layout` (and
    :attr:`golden`), override the methods the vendor's rules need. As it is,
    ``Structure(layout)`` decodes a structure every encoding of which is valid (an ID
    register).

    ``unit`` is a hardware model instance of the driver (its configuration decides what
    is valid), or None for the driver's default configuration.
    """

    layout: Layout
    golden: ClassVar[tuple[Golden, ...]] = ()

    def __init__(self, layout: Layout | None = None) -> None:
        if layout is not None:
            self.layout = layout

    # -- what a vendor overrides -----------------------------------------------------------
    def used(self, words: tuple[int, ...], unit: Any) -> frozenset[str] | None:
        """Names of the fields the hardware reads in this configuration (None: all)."""
        return None

    def check(self, words: tuple[int, ...], values: Mapping[str, int], unit: Any
              ) -> Sequence[Problem]:
        """The validity rules, in the order the hardware applies them."""
        return ()

    def model_verdict(self, words: tuple[int, ...], unit: Any) -> Verdict | None:
        """Run the hardware model's own check on the structure (None: this structure has
        no model check). :meth:`decode` reports a refusal the rules missed; the kit checks
        that the rules and the model agree on :attr:`golden`."""
        return None

    def summary(self, words: tuple[int, ...], values: Mapping[str, int],
                fields: Sequence[DecodedField]) -> str:
        """One line: the variant's name, else the layout's description."""
        v = self.layout.variant_for(join_words(words, self.layout.word_bits))
        return v.name if v is not None else self.layout.doc

    def notes(self, words: tuple[int, ...], fields: Sequence[DecodedField], unit: Any
              ) -> Sequence[str]:
        return ()

    def finish(self, words: tuple[int, ...], fields: list[DecodedField]) -> list[DecodedField]:
        """Add fields assembled from others (default: none)."""
        return fields

    # -- generic ---------------------------------------------------------------------------
    def pad(self, words: Sequence[int]) -> tuple[int, ...]:
        """``words`` zero-extended to the structure's size; more words is a ValueError."""
        n = self.layout.words
        if len(words) > n:
            raise ValueError(f"{self.layout.name} has at most {n} words, got {len(words)}")
        return tuple(list(words) + [0] * (n - len(words)))

    def rules_refuse(self, words: Sequence[int], unit: Any = None) -> bool:
        """Whether :meth:`check` alone finds a problem the hardware refuses."""
        q = self.pad(words)
        return any(p.hw for p in self.check(q, self._values(q), unit))

    def _values(self, q: tuple[int, ...]) -> dict[str, int]:
        fields = self._fields(q, None)
        return {f.name: f.value for f in fields}

    def _fields(self, q: tuple[int, ...], used: frozenset[str] | None) -> list[DecodedField]:
        lay = self.layout
        v = join_words(q, lay.word_bits)
        out = []
        for d in lay.fields_for(v):
            x = d.get(v)
            out.append(DecodedField(d.name, d.bits, x, d.meaning, d.values.get(x, ""),
                                    True if used is None else d.name in used, d.kernel,
                                    d.hi, d.lo))
        return self.finish(q, out)

    def decode(self, words: Sequence[int], unit: Any = None, vendor: str = "") -> Decoded:
        q = self.pad(words)
        lay = self.layout
        fields = self._fields(q, self.used(q, unit))
        values = {f.name: f.value for f in fields}
        problems = list(self.check(q, values, unit))
        if not any(p.hw for p in problems):
            verdict = self.model_verdict(q, unit)
            if verdict is not None and not verdict.accepted:
                problems.append(Problem(verdict.reason))
        var = lay.variant_for(join_words(q, lay.word_bits))
        return Decoded(kind=lay.title, summary=self.summary(q, values, fields), words=q,
                       word_bits=lay.word_bits, fields=tuple(fields),
                       problems=tuple(p.text for p in problems),
                       notes=tuple(self.notes(q, fields, unit)), structure=lay.name,
                       vendor=vendor, variant=var.name if var is not None else "",
                       refused=any(p.hw for p in problems))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.layout.name}>"


# -- helpers for the notes vendors write -------------------------------------------------------
def unused_notes(fields: Iterable[DecodedField], by: str) -> list[str]:
    """``"X = 5 is set but not used by <by>"`` for each set field the hardware ignores."""
    return [f"{f.name} = {fmt_value(f.value)} is set but not used by {by}"
            for f in fields if f.value and not f.used]


def unknown_bits(fields: Iterable[BitField], value: int, nbits: int) -> int:
    """The set bits of ``value`` outside every field."""
    known = 0
    for d in fields:
        known |= d.mask
    return value & ~known & ((1 << nbits) - 1)


def module_constants(*modules: Any, keep: Callable[[str], bool] | None = None
                     ) -> dict[str, int]:
    """The upper-case integer names of ``modules`` (the kernel's macros), first wins."""
    out: dict[str, int] = {}
    for mod in modules:
        for name, val in vars(mod).items():
            if (name[:1].isupper() and name.upper() == name and isinstance(val, int)
                    and not isinstance(val, bool) and (keep is None or keep(name))):
                out.setdefault(name, val)
    return out

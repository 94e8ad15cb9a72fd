"""Descriptors decoded for people: ordered named fields with their meaning."""

from __future__ import annotations

import attrs

from iommu_core.pgtable.formats.base import DescField, PtFormat


@attrs.frozen(kw_only=True)
class Description:
    """A decoded descriptor. ``str()`` is one line; :meth:`long` one field per line."""

    fmt_name: str
    level: str  # the architecture's level name
    kind: str  # "table", "page", "block", "invalid"...
    value: int
    fields: tuple[DescField, ...]

    def field(self, name: str) -> DescField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def __str__(self) -> str:
        body = " ".join(str(f) for f in self.fields)
        return f"{self.fmt_name} {self.level} {self.kind} {self.value:#018x}: {body}"

    def long(self) -> str:
        lines = [f"{self.fmt_name} {self.level} {self.kind} {self.value:#018x}"]
        width = max((len(f.name) for f in self.fields), default=0)
        for f in self.fields:
            lines.append(f"  {f.name:<{width}} = {f.value:#x}  {f.meaning}".rstrip())
        return "\n".join(lines)


def describe(descriptor: int, fmt: PtFormat, level: int) -> Description:
    """Decode ``descriptor`` found at ``level`` (0 = smallest pages) of a ``fmt`` table."""
    kind, fields = fmt.describe_fields(descriptor, level)
    return Description(
        fmt_name=fmt.name,
        level=fmt.arch_level(level),
        kind=kind,
        value=descriptor,
        fields=tuple(fields),
    )
